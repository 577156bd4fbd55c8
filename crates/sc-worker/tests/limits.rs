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
