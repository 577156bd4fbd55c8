//! Limits against hostile or broken clients: a slow or idle HTTP client is closed after the
//! header timeout, channel names have a length limit, invalid close codes fail the connection
//! with 1002, and a token whose dates are not numbers is invalid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Client, WAIT, start, upgrade_stream};
use sc_worker::{Config, ScServer, ScServerBuilder};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn app(cfg: Config) -> ScServerBuilder {
    ScServer::builder()
        .config(cfg)
        .auth_key("limits-key")
        .procedure("echo", |req| async move { Ok(req.data) })
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the server did not close the connection")
        .unwrap_or_default();
    out
}

#[tokio::test]
async fn slow_and_idle_http_clients_are_closed_after_the_header_timeout() {
    let server = start(app(Config {
        http_header_timeout_ms: 200,
        ..Config::default()
    }))
    .await;
    // Connects and sends nothing.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    read_to_close(&mut idle).await;
    // Sends part of a request head, then stalls (slowloris).
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_to_close(&mut slow).await;
    // A kept-alive connection: answered, then closed once idle.
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut kept).await;
    assert!(got.starts_with(b"HTTP/1.1 404"), "{got:?}");
    // An upgraded socket is no longer HTTP: the timeout does not apply to it.
    let (mut c, _) = Client::connect(&server).await;
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(600), c.next_raw())
            .await
            .is_err(),
        "the socket stays open and quiet"
    );
    assert_eq!(c.invoke("echo", json!(1), 2).await["data"], 1);
}

#[tokio::test]
async fn channel_names_over_the_limit_are_refused() {
    let server = start(app(Config {
        max_channel_name: 16,
        ..Config::default()
    }))
    .await;
    let (mut c, _) = Client::connect(&server).await;
    let ok = "c".repeat(16);
    let long = "c".repeat(17);
    assert_eq!(
        c.invoke("#subscribe", json!({"channel": ok}), 2).await,
        json!({"rid":2})
    );
    let r = c.invoke("#subscribe", json!({"channel": long}), 3).await;
    assert_eq!(r["error"]["name"], "InvalidActionError");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit is 16"),
        "{r}"
    );
    let r = c
        .invoke("#publish", json!({"channel": long, "data": 1}), 4)
        .await;
    assert_eq!(r["error"]["name"], "InvalidActionError");
    assert_eq!(server.handle.subscriber_count(&long), 0);
    assert_eq!(server.handle.subscriber_count(&ok), 1);
}

/// A masked client frame with `opcode`.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [3u8, 1, 4, 1];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The first four bytes the server sends: a close frame's header and code.
async fn close_head(s: &mut TcpStream) -> [u8; 4] {
    let mut head = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("no close frame")
        .unwrap();
    head
}

#[tokio::test]
async fn an_invalid_close_code_fails_the_connection_with_1002() {
    let server = start(app(Config::default())).await;
    for code in [0u16, 1005, 1006, 1016, 2999, 5000] {
        let mut s = upgrade_stream(server.addr, "/socketcluster/", "").await;
        s.write_all(&frame(8, &code.to_be_bytes())).await.unwrap();
        let got = close_head(&mut s).await;
        assert_eq!(got, [0x88, got[1], 0x03, 0xEA], "{code}: {got:?}");
    }
    // A valid one is echoed.
    let mut s = upgrade_stream(server.addr, "/socketcluster/", "").await;
    s.write_all(&frame(8, &4000u16.to_be_bytes()))
        .await
        .unwrap();
    let got = read_to_close(&mut s).await;
    assert_eq!(got[..4], [0x88, 2, 0x0F, 0xA0], "{got:?}");
}

#[tokio::test]
async fn a_signed_token_whose_dates_are_not_numbers_is_invalid() {
    let server = start(app(Config::default())).await;
    let key = jsonwebtoken::EncodingKey::from_secret(b"limits-key");
    let never = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"username": "eve", "exp": "never"}),
        &key,
    )
    .unwrap();
    let mut c = Client::open(&server).await;
    let reply = c.handshake(Some(&never)).await;
    assert_eq!(reply["data"]["isAuthenticated"], false);
    assert_eq!(reply["data"]["authError"]["name"], "AuthTokenInvalidError");
    assert_eq!(reply["data"]["authError"]["message"], "invalid exp value");
    let r = c.invoke("#authenticate", Value::String(never), 2).await;
    assert_eq!(r["error"]["name"], "AuthTokenInvalidError");
}

/// The status of a plain `GET path` (with `extra` header lines) on a new connection; `None`
/// when the server closed it without answering.
async fn try_get_status(addr: std::net::SocketAddr, path: &str, extra: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n");
    // The server may close a refused connection before the request is written.
    let _ = s.write_all(req.as_bytes()).await;
    let got = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    text.split(' ').nth(1).and_then(|s| s.parse().ok())
}

async fn get_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    try_get_status(addr, path, "")
        .await
        .expect("no HTTP response")
}

#[tokio::test]
async fn sockets_per_address_are_capped_with_429_and_given_back_on_close() {
    let server = start(app(Config {
        address_connection_limit: 2,
        trusted_proxies: vec!["127.0.0.1".into()],
        ..Config::default()
    }))
    .await;
    let from = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    let a = upgrade_stream(server.addr, "/socketcluster/", &from("192.0.2.1")).await;
    let _b = upgrade_stream(server.addr, "/socketcluster/", &from("192.0.2.1")).await;
    assert_eq!(
        common::upgrade_status(server.addr, "/socketcluster/", &from("192.0.2.1")).await,
        429
    );
    // An engine.io session counts the same: over the limit for 192.0.2.1, fine for the proxy's
    // own address.
    let eio = "/engine.io/?EIO=4&transport=polling";
    assert_eq!(
        try_get_status(server.addr, eio, &from("192.0.2.1")).await,
        Some(429)
    );
    assert_eq!(get_status(server.addr, eio).await, 200);
    // Another client address behind the same proxy has its own count.
    let _c = upgrade_stream(server.addr, "/socketcluster/", &from("192.0.2.2")).await;
    // A closed socket gives its place back.
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = common::upgrade_status(server.addr, "/socketcluster/", &from("192.0.2.1")).await;
        if s == 101 {
            break;
        }
        assert_eq!(s, 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was not given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn new_sockets_per_address_are_rate_limited_with_429() {
    let server = start(app(Config {
        address_connect_rate: 1,
        address_connect_burst: 3,
        ..Config::default()
    }))
    .await;
    for _ in 0..3 {
        drop(upgrade_stream(server.addr, "/socketcluster/", "").await);
    }
    // The burst is spent (closing sockets does not refill it): WebSocket and engine.io alike.
    assert_eq!(
        common::upgrade_status(server.addr, "/socketcluster/", "").await,
        429
    );
    assert_eq!(
        get_status(server.addr, "/engine.io/?EIO=4&transport=polling").await,
        429
    );
}

#[tokio::test]
async fn engine_io_sessions_are_capped() {
    let server = start(app(Config {
        engineio_max_sessions: 2,
        ..Config::default()
    }))
    .await;
    for _ in 0..2 {
        assert_eq!(
            get_status(server.addr, "/engine.io/?EIO=4&transport=polling").await,
            200
        );
    }
    assert_eq!(
        get_status(server.addr, "/engine.io/?EIO=4&transport=polling").await,
        503
    );
}

#[tokio::test]
async fn tcp_connections_per_peer_are_capped_at_accept() {
    let server = start(app(Config {
        address_tcp_limit: 2,
        ..Config::default()
    }))
    .await;
    let _a = TcpStream::connect(server.addr).await.unwrap();
    let _b = TcpStream::connect(server.addr).await.unwrap();
    let mut c = TcpStream::connect(server.addr).await.unwrap();
    // Closed at once, nothing written.
    assert!(read_to_close(&mut c).await.is_empty());
    drop(_a);
    // The place is given back once the server sees the close.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match try_get_status(server.addr, "/nothing", "").await {
            Some(status) => {
                assert_eq!(status, 404);
                break;
            }
            // Still counted: closed at accept.
            None => assert!(
                tokio::time::Instant::now() < deadline,
                "the place was not given back"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn subscriptions_are_capped_in_name_bytes() {
    let server = start(app(Config {
        socket_channel_bytes: 100,
        ..Config::default()
    }))
    .await;
    let (mut c, _) = Client::connect(&server).await;
    let name = |i: u8| format!("{}{i}", "n".repeat(39));
    for (cid, i) in [(2, 0u8), (3, 1)] {
        assert_eq!(
            c.invoke("#subscribe", json!({"channel": name(i)}), cid)
                .await,
            json!({"rid": cid})
        );
    }
    let r = c.invoke("#subscribe", json!({"channel": name(2)}), 4).await;
    assert_eq!(r["error"]["name"], "InvalidActionError");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("100 bytes"),
        "{r}"
    );
    // Unsubscribing frees the bytes.
    c.invoke("#unsubscribe", json!(name(0)), 5).await;
    assert_eq!(
        c.invoke("#subscribe", json!({"channel": name(2)}), 6).await,
        json!({"rid": 6})
    );
}

#[tokio::test]
async fn a_socket_over_the_inbound_rate_is_closed_with_4429() {
    let server = start(app(Config {
        inbound_rate_messages: 5,
        ..Config::default()
    }))
    .await;
    let (mut c, _) = Client::connect(&server).await;
    for cid in 2..20 {
        c.send_json(json!({"event": "echo", "data": 1, "cid": cid}))
            .await;
    }
    assert_eq!(c.closed().await, sc_worker::RATE_LIMITED);
}

#[tokio::test]
async fn a_reader_that_stops_is_cut_off_by_bytes_with_a_4100_close_frame() {
    let server = start(app(Config {
        outbound_queue_bytes: 1 << 20,
        ..Config::default()
    }))
    .await;
    let (mut c, reply) = Client::connect(&server).await;
    let id = reply["id"].as_str().unwrap().to_owned();
    let socket = server.handle.socket(&id).unwrap();
    // The client reads nothing: transmits pile up in the kernel's buffers, then in the socket's
    // queue, until it holds more than 1 MiB.
    let big = "x".repeat(100 * 1024);
    let mut sent = 0usize;
    while socket.transmit("big", big.as_str()).is_ok() {
        sent += 1;
        assert!(sent < 2000, "never cut off");
        tokio::task::yield_now().await;
    }
    // The client reads again: what was written, then the close frame.
    assert_eq!(c.closed().await, sc_worker::SLOW_CONSUMER);
    assert!(!socket.is_open());
}
