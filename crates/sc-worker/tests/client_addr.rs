//! The client's address on sockets and HTTP requests: the TCP peer, or what a trusted proxy
//! forwarded (`X-Forwarded-For`, `Forwarded`, PROXY protocol); never a header from anyone else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::task::{Context, Poll};

use common::{Client, TestServer, WAIT};
use http::{Request, Response};
use sc_worker::{ClientAddr, Config, ScServer, ScServerBuilder};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn app(trusted: &[&str], proxy_protocol: bool) -> ScServerBuilder {
    ScServer::builder()
        .config(Config {
            trusted_proxies: trusted.iter().map(|s| (*s).to_owned()).collect(),
            proxy_protocol,
            ..Config::default()
        })
        .procedure_sync("addr", |req| {
            Ok(req
                .socket
                .client_addr()
                .map_or(Value::Null, |a| a.to_string().into()))
        })
        .procedure_sync("cookie", |req| {
            Ok(req
                .socket
                .request()
                .cookie("sid")
                .map_or(Value::Null, Value::from))
        })
}

/// The app behind the layer: answers every request with the client address it was given.
#[derive(Clone)]
struct ShowAddr;

impl<B> tower_service::Service<Request<B>> for ShowAddr {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let addr = req
            .extensions()
            .get::<ClientAddr>()
            .map_or("none".to_owned(), |a| a.0.to_string());
        std::future::ready(Ok(Response::new(addr)))
    }
}

async fn start(builder: ScServerBuilder) -> TestServer {
    let (layer, handle) = builder.build_layer().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sc_worker::serve(
        listener,
        layer.service(ShowAddr),
        handle.clone(),
    ));
    TestServer { addr, handle }
}

async fn addr_of(c: &mut Client) -> Value {
    c.invoke("addr", Value::Null, 9).await["data"].clone()
}

/// A plain GET with `headers`; returns the body.
async fn get(server: &TestServer, prefix: &[u8], headers: &str) -> String {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(prefix).await.unwrap();
    let req = format!("GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_trusted_proxy_gives_the_client_address_and_others_are_ignored() {
    let xff = [("x-forwarded-for", "198.51.100.7, 203.0.113.9")];
    // Trusted proxy (the test connects from 127.0.0.1): the rightmost untrusted address.
    let trusted = start(app(&["127.0.0.1", "203.0.113.0/24"], false)).await;
    let mut c = Client::connect_with(&trusted, &xff).await;
    assert_eq!(addr_of(&mut c).await, "198.51.100.7");
    let mut c =
        Client::connect_with(&trusted, &[("forwarded", "for=\"[2001:db8::5]:4711\"")]).await;
    assert_eq!(addr_of(&mut c).await, "2001:db8::5");
    // No header: the proxy itself.
    let (mut c, _) = Client::connect(&trusted).await;
    assert_eq!(addr_of(&mut c).await, "127.0.0.1");
    // Ordinary HTTP requests carry it too.
    assert_eq!(
        get(&trusted, b"", "X-Forwarded-For: 192.0.2.44\r\n").await,
        "192.0.2.44"
    );

    // Untrusted peer: its headers are ignored.
    let untrusted = start(app(&["10.0.0.0/8"], false)).await;
    let mut c = Client::connect_with(&untrusted, &xff).await;
    assert_eq!(addr_of(&mut c).await, "127.0.0.1");
    assert_eq!(
        get(&untrusted, b"", "X-Forwarded-For: 192.0.2.44\r\n").await,
        "127.0.0.1"
    );
    let untrusted = start(app(&[], false)).await;
    let mut c = Client::connect_with(&untrusted, &[("forwarded", "for=192.0.2.1")]).await;
    assert_eq!(addr_of(&mut c).await, "127.0.0.1");
}

#[tokio::test]
async fn the_upgrade_request_headers_and_cookies_are_on_the_socket() {
    let server = start(app(&[], false)).await;
    let mut c = Client::connect_with(&server, &[("cookie", "theme=dark; sid=s3cr3t")]).await;
    assert_eq!(c.invoke("cookie", Value::Null, 2).await["data"], "s3cr3t");
}

#[tokio::test]
async fn proxy_protocol_from_a_trusted_proxy_gives_the_client_address() {
    let server = start(app(&["127.0.0.1"], true)).await;
    // v1 before an HTTP request.
    assert_eq!(
        get(
            &server,
            b"PROXY TCP4 198.51.100.20 127.0.0.1 40000 8000\r\n",
            "X-Forwarded-For: 192.0.2.1\r\n"
        )
        .await,
        "198.51.100.20",
        "the PROXY header wins over forwarding headers"
    );
    // v2 (TCP6) before a WebSocket upgrade.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x21, 0, 36]);
    let src: std::net::Ipv6Addr = "2001:db8::77".parse().unwrap();
    v2.extend_from_slice(&src.octets());
    v2.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    v2.extend_from_slice(&40001u16.to_be_bytes());
    v2.extend_from_slice(&8000u16.to_be_bytes());
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&v2).await.unwrap();
    let (ws, _) = tokio_websockets::ClientBuilder::new()
        .uri(&format!("ws://{}/socketcluster/", server.addr))
        .unwrap()
        .connect_on(tokio_websockets::MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let mut c = Client {
        ws,
        auto_pong: false,
    };
    c.handshake(None).await;
    assert_eq!(addr_of(&mut c).await, "2001:db8::77");
    // A trusted proxy that sends no PROXY header is dropped.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "no response without a PROXY header");
}

#[test]
fn proxy_protocol_needs_trusted_proxies() {
    let e = app(&[], true).build_layer().unwrap_err();
    assert!(e.to_string().contains("trusted_proxies"), "{e}");
}
