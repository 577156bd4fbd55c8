//! A WebSocket echo server on sc-worker's own framing ([`WsStream`]), for the Autobahn test
//! suite: `scripts/autobahn` runs the fuzzing client against it.
//!
//! ```text
//! cargo run --release -p sc-worker --example autobahn_echo -- [PORT] [--max-payload BYTES]
//! ```
//!
//! It listens on 127.0.0.1:PORT (0, the default, picks a free port) and prints
//! `listening on 127.0.0.1:PORT` once it accepts connections. hyper answers the upgrade request
//! (any path); the connection then runs on [`WsStream`], which echoes text as text and binary as
//! binary. Text is checked to be UTF-8 here, on the whole message, as the SocketCluster socket
//! does (the framing leaves it to its caller): invalid text fails the connection with 1007.
//! `--max-payload` (64 MiB by default) is the longest message accepted (longer: 1009).

#![allow(clippy::print_stdout, reason = "prints the port it listens on")]

use std::convert::Infallible;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming as Body;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sc_worker::transport::{Incoming, Transport, TransportError, WsStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// How long the server waits for the client's close after its own.
const SHUTDOWN: Duration = Duration::from_secs(5);

const USAGE: &str = "usage: autobahn_echo [PORT] [--max-payload BYTES]";

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let usage = || std::io::Error::new(std::io::ErrorKind::InvalidInput, USAGE);
    let mut port = 0u16;
    let mut max_payload = 64 << 20;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--max-payload" {
            let value = args.next().ok_or_else(usage)?;
            max_payload = value.parse().map_err(|_| usage())?;
        } else {
            port = arg.parse().map_err(|_| usage())?;
        }
    }
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |req| async move { upgrade(req, max_payload) });
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                eprintln!("connection: {e}");
            }
        });
    }
}

/// Answers a WebSocket upgrade request with 101 and spawns the echo on the upgraded connection.
fn upgrade(mut req: Request<Body>, max_payload: usize) -> Result<Response<String>, Infallible> {
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version_13 = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (true, true, Some(key)) = (
        is_upgrade,
        version_13,
        headers.get(header::SEC_WEBSOCKET_KEY),
    ) else {
        let mut res = Response::new("a WebSocket echo server\n".to_owned());
        *res.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(res);
    };
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => echo(TokioIo::new(upgraded), max_payload).await,
            Err(e) => eprintln!("upgrade: {e}"),
        }
    });
    let mut res = Response::new(String::new());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SERVER,
        HeaderValue::from_static("sc-worker-autobahn-echo"),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(res)
}

/// Echoes every message until either side closes or fails the connection.
async fn echo<S>(io: S, max_payload: usize)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ws = WsStream::new(io, Bytes::new(), max_payload);
    loop {
        match poll_fn(|cx| ws.poll_recv(cx)).await {
            Ok(Incoming::Text(text)) => {
                if std::str::from_utf8(&text).is_err() {
                    ws.close(1007, "invalid UTF-8 in a text message");
                    break;
                }
                ws.send(text);
            }
            Ok(Incoming::Binary(data)) => ws.send_binary(data),
            Ok(Incoming::Closed(..)) => break,
            // A ping (its pong is queued) or a pong.
            Ok(_) => {}
            Err(TransportError::Protocol(code, reason)) => {
                ws.close(code, &reason);
                break;
            }
            // The connection dropped: nothing more can be sent.
            Err(_) => return,
        }
        if ws.has_pending() && poll_fn(|cx| ws.poll_flush(cx)).await.is_err() {
            return;
        }
    }
    let _ = tokio::time::timeout(SHUTDOWN, ws.shutdown()).await;
}
