//! Test harness: a server on 127.0.0.1:0 and a raw WebSocket client speaking SocketCluster frames.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sc_worker::{ScHandle, ScServerBuilder};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ScHandle,
}

pub async fn start(builder: ScServerBuilder) -> TestServer {
    let (layer, handle) = builder.build_layer().expect("valid config");
    let svc = layer.service(sc_worker::NotFound);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sc_worker::serve(listener, svc, handle.clone()));
    TestServer { addr, handle }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Answer `''` pings automatically while waiting for other frames.
    pub auto_pong: bool,
}

impl Client {
    pub async fn open(server: &TestServer) -> Client {
        Self::open_path(server.addr, "/socketcluster/")
            .await
            .unwrap()
    }

    pub async fn open_path(
        addr: SocketAddr,
        path: &str,
    ) -> Result<Client, tokio_websockets::Error> {
        let uri = format!("ws://{addr}{path}");
        let (ws, _) = ClientBuilder::new().uri(&uri).unwrap().connect().await?;
        Ok(Client {
            ws,
            auto_pong: false,
        })
    }

    /// Opens with extra request headers and completes the handshake.
    pub async fn connect_with(server: &TestServer, headers: &[(&'static str, &str)]) -> Client {
        let mut builder = ClientBuilder::new()
            .uri(&format!("ws://{}/socketcluster/", server.addr))
            .unwrap();
        for (name, value) in headers {
            builder = builder
                .add_header(
                    http::HeaderName::from_static(name),
                    http::HeaderValue::from_str(value).unwrap(),
                )
                .unwrap();
        }
        let (ws, _) = builder.connect().await.unwrap();
        let mut c = Client {
            ws,
            auto_pong: false,
        };
        c.handshake(None).await;
        c
    }

    /// Opens and completes the handshake; returns the client and the reply's `data`.
    pub async fn connect(server: &TestServer) -> (Client, Value) {
        let mut c = Self::open(server).await;
        let reply = c.handshake(None).await;
        (c, reply["data"].clone())
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send(&v.to_string()).await;
    }

    /// The next text frame (pings included), or `None` when the socket closed.
    pub async fn next_raw(&mut self) -> Option<String> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")?;
            let m = m.ok()?;
            if m.is_close() {
                continue;
            }
            if let Some(t) = m.as_text() {
                if (t.is_empty() || t == "#1") && self.auto_pong {
                    self.send(if t.is_empty() { "" } else { "#2" }).await;
                    continue;
                }
                return Some(t.to_owned());
            }
        }
    }

    /// The next JSON frame, skipping pings.
    pub async fn next(&mut self) -> Value {
        loop {
            let t = self.next_raw().await.expect("socket closed");
            if t.is_empty() || t == "#1" {
                continue;
            }
            return serde_json::from_str(&t).unwrap();
        }
    }

    /// The next JSON frame matching `pred`, skipping others.
    pub async fn next_matching(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.next().await;
            if pred(&v) {
                return v;
            }
        }
    }

    pub async fn handshake(&mut self, token: Option<&str>) -> Value {
        self.send_json(json!({"event":"#handshake","data":{"authToken":token},"cid":1}))
            .await;
        let reply = self.next_matching(|v| v["rid"] == 1).await;
        self.auto_pong = true;
        reply
    }

    pub async fn invoke(&mut self, event: &str, data: Value, cid: u64) -> Value {
        self.send_json(json!({"event":event,"data":data,"cid":cid}))
            .await;
        self.next_matching(|v| v["rid"] == cid).await
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the close");
            match m {
                Some(Ok(m)) if m.is_close() => {
                    return m.as_close().map_or(1005, |(c, _)| u16::from(c));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return 1006,
            }
        }
    }
}

/// Sends a raw HTTP upgrade request and returns the status code.
pub async fn upgrade_status(addr: SocketAddr, path: &str, extra_headers: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    read_status(&mut s, addr, path, extra_headers).await
}

/// Upgrades a raw TCP stream (expects 101) and returns it, open.
pub async fn upgrade_stream(addr: SocketAddr, path: &str, extra_headers: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_status(&mut s, addr, path, extra_headers).await, 101);
    s
}

/// A connection `serve` accepted and answered (a 404), kept alive: once a shutdown began,
/// `serve` accepts no new connection, but this one still carries requests.
pub async fn kept_alive(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /other/ HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    while !got.ends_with(b"Not Found\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed before the response");
        got.extend_from_slice(&buf[..n]);
    }
    s
}

/// Sends an upgrade request on `s` and returns the response's status code.
pub async fn read_status(
    s: &mut TcpStream,
    addr: SocketAddr,
    path: &str,
    extra_headers: &str,
) -> u16 {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed before the response");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}
