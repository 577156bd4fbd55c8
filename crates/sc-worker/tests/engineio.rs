//! The engine.io endpoint from a raw HTTP client: long-polling sessions run the same socket state
//! machine (handshake, invokes, `handshake_ws` middleware and its extensions, disconnection
//! codes), the in-band close, abandoned sessions reclaimed, and the endpoint switches.
#![cfg(feature = "engineio")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use sc_worker::{Blocked, Config, ScError, ScHandle, ScLayer, ScServer, ScServerBuilder};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Tag(String);

struct Server {
    addr: SocketAddr,
    layer: ScLayer,
    handle: ScHandle,
}

async fn start(builder: ScServerBuilder) -> Server {
    let (layer, handle) = builder.build_layer().expect("valid config");
    let svc = layer.service(sc_worker::NotFound);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sc_worker::serve(listener, svc, handle.clone()));
    Server {
        addr,
        layer,
        handle,
    }
}

fn app() -> ScServerBuilder {
    ScServer::builder()
        .auth_key("test-key")
        .on_connection(|s| {
            s.transmit("greet", "hello").unwrap();
        })
        .procedure("echo", |req| async move { Ok(req.data) })
        .procedure("tag", |req| async move {
            Ok(req
                .socket
                .get::<Tag>()
                .map_or(Value::Null, |t| Value::String(t.0)))
        })
        .handshake_ws(|mut action| async move {
            let headers = &action.request.headers;
            if headers.contains_key("x-block") {
                return Err(Blocked::error(ScError::new("AuthError", "blocked here")));
            }
            if let Some(v) = headers.get("x-tag") {
                let tag = Tag(v.to_str().unwrap().to_owned());
                action.extensions.insert(tag);
            }
            Ok(action)
        })
}

/// One HTTP/1.1 request on its own connection; returns the status and the body.
async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (len, rest) = s.split_once("\r\n").unwrap();
        let len = usize::from_str_radix(len.trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.push_str(&rest[..len]);
        s = &rest[len + 2..];
    }
}

const POLL: &str = "/engine.io/?EIO=4&transport=polling";

/// Opens a polling session; returns the sid and the open packet.
async fn open(addr: SocketAddr, headers: &str) -> (String, Value) {
    let (status, body) = request(addr, "GET", POLL, headers, "").await;
    assert_eq!(status, 200, "{body}");
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    (open["sid"].as_str().unwrap().to_owned(), open)
}

async fn post(addr: SocketAddr, sid: &str, packets: &[String]) {
    let body = packets.join("\u{1e}");
    let (status, text) = request(addr, "POST", &format!("{POLL}&sid={sid}"), "", &body).await;
    assert_eq!(status, 200, "{text}");
}

/// Polls until `n` message packets arrived; answers engine.io pings.
async fn messages(addr: SocketAddr, sid: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, async {
        while out.len() < n {
            let (status, body) = request(addr, "GET", &format!("{POLL}&sid={sid}"), "", "").await;
            assert_eq!(status, 200, "{body}");
            for packet in body.split('\u{1e}') {
                match packet.as_bytes().first() {
                    Some(b'4') => out.push(packet[1..].to_owned()),
                    Some(b'2') => post(addr, sid, &["3".to_owned()]).await,
                    _ => {}
                }
            }
        }
    })
    .await
    .expect("messages in time");
    out
}

fn msg(v: &Value) -> String {
    format!("4{v}")
}

fn handshake() -> String {
    msg(&json!({"event": "#handshake", "data": {"authToken": null}, "cid": 1}))
}

#[tokio::test]
async fn a_polling_session_runs_the_socket() {
    let s = start(app()).await;
    let (sid, open) = open(s.addr, "X-Tag: blue\r\n").await;
    assert_eq!(open["upgrades"], json!(["websocket"]));
    assert_eq!(open["pingInterval"], 25000);
    assert_eq!(open["pingTimeout"], 20000);
    assert_eq!(open["maxPayload"], 1_000_000);
    let big = "é".repeat(60_000);
    post(
        s.addr,
        &sid,
        &[
            handshake(),
            msg(&json!({"event": "echo", "data": big, "cid": 2})),
            msg(&json!({"event": "tag", "cid": 3})),
        ],
    )
    .await;
    let got: Vec<Value> = messages(s.addr, &sid, 4)
        .await
        .iter()
        .map(|m| serde_json::from_str(m).unwrap())
        .collect();
    assert_eq!(got[0]["rid"], 1);
    assert!(got[0]["data"]["id"].is_string());
    assert_eq!(got[1], json!({"event": "greet", "data": "hello"}));
    assert_eq!(got[2], json!({"rid": 2, "data": big}));
    // The handshake_ws middleware saw the request that opened the session.
    assert_eq!(got[3], json!({"rid": 3, "data": "blue"}));
    assert_eq!(s.handle.clients_count(), 1);
    assert_eq!(s.layer.engineio_sessions(), 1);
}

#[tokio::test]
async fn handshake_ws_middleware_blocks_with_401() {
    let s = start(app()).await;
    let (status, body) = request(s.addr, "GET", POLL, "X-Block: 1\r\n", "").await;
    assert_eq!(status, 401);
    assert_eq!(body, "blocked here");
    assert_eq!(s.layer.engineio_sessions(), 0);
}

#[tokio::test]
async fn close_codes_travel_in_band_both_ways() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = start(app().on_disconnection(move |_, code, reason| {
        tx.send((code, reason.to_owned())).unwrap();
    }))
    .await;

    // Server → client: a #handshake without cid is closed with 4008.
    let (sid, _) = open(s.addr, "").await;
    post(
        s.addr,
        &sid,
        &[msg(&json!({"event": "#handshake", "data": {}}))],
    )
    .await;
    let got = messages(s.addr, &sid, 1).await;
    let close: Value =
        serde_json::from_str(got[0].strip_prefix(sc_worker::CLOSE_PREFIX).unwrap()).unwrap();
    assert_eq!(close["code"], 4008);

    // Client → server: the code reaches the disconnection handler.
    let (sid, _) = open(s.addr, "").await;
    post(s.addr, &sid, &[handshake()]).await;
    messages(s.addr, &sid, 2).await;
    post(
        s.addr,
        &sid,
        &[
            format!(
                "4{}{}",
                sc_worker::CLOSE_PREFIX,
                json!({"code": 4567, "reason": "bye"})
            ),
            "1".to_owned(),
        ],
    )
    .await;
    let (code, reason) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((code, reason.as_str()), (4567, "bye"));
}

#[tokio::test]
async fn abandoned_sessions_are_reclaimed_after_the_ping_timeout() {
    let cfg = Config {
        engineio_ping_interval_ms: 100,
        engineio_ping_timeout_ms: 300,
        ..Config::default()
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = start(app().config(cfg).on_disconnection(move |_, code, _| {
        tx.send(code).unwrap();
    }))
    .await;
    for _ in 0..20 {
        let (sid, _) = open(s.addr, "").await;
        post(s.addr, &sid, &[handshake()]).await;
    }
    // Nobody polls again: every session misses its pong and its socket is closed with 4001.
    for _ in 0..20 {
        let code = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(code, 4001);
    }
    // The engine.io session is gone before its socket is closed.
    assert_eq!(s.layer.engineio_sessions(), 0);
}

#[tokio::test]
async fn each_endpoint_can_be_switched_off() {
    let no_eio = start(app().config(Config {
        engineio: false,
        ..Config::default()
    }))
    .await;
    assert_eq!(request(no_eio.addr, "GET", POLL, "", "").await.0, 404);
    assert_eq!(
        request(no_eio.addr, "GET", sc_worker::ENGINEIO_SCRIPT_PATH, "", "")
            .await
            .0,
        404
    );

    let no_ws = start(app().config(Config {
        websocket: false,
        ..Config::default()
    }))
    .await;
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (status, _) = request(no_ws.addr, "GET", "/socketcluster/", upgrade, "").await;
    assert_eq!(status, 404);
    let (_, open) = open(no_ws.addr, "").await;
    assert!(open["sid"].is_string());
    let (status, body) = request(no_ws.addr, "GET", sc_worker::ENGINEIO_SCRIPT_PATH, "", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("EngineIoWebSocket"));
}

#[test]
fn the_two_paths_must_differ() {
    let cfg = Config {
        engineio_path: "/socketcluster/".to_owned(),
        ..Config::default()
    };
    assert!(cfg.validate().is_err());
}

#[tokio::test]
async fn a_polling_client_that_stops_fetching_is_a_slow_consumer() {
    let cfg = Config {
        outbound_queue: 8,
        ping_interval_ms: 100,
        ping_timeout_ms: 500,
        ..Config::default()
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = start(app().config(cfg).on_disconnection(move |_, code, _| {
        tx.send(code).unwrap();
    }))
    .await;
    let (sid, _) = open(s.addr, "").await;
    post(
        s.addr,
        &sid,
        &[
            handshake(),
            msg(&json!({"event": "#subscribe", "data": {"channel": "busy"}, "cid": 2})),
        ],
    )
    .await;
    let got = messages(s.addr, &sid, 3).await;
    assert!(got.iter().any(|m| m == r#"{"rid":2}"#), "{got:?}");
    // The client stops polling while the channel keeps publishing.
    let payload = "p".repeat(100);
    for _ in 0..5000 {
        s.handle.publish("busy", payload.as_str()).unwrap();
    }
    let code = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, sc_worker::SLOW_CONSUMER);
}

/// One request on a kept-alive connection (which `serve` keeps serving after a shutdown began,
/// when it accepts no new ones); returns the status and the body.
async fn request_on(
    s: &mut TcpStream,
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &str,
) -> (u16, String) {
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let rest = &raw[end + 4..];
                if head.contains("transfer-encoding: chunked") {
                    if rest.ends_with(b"0\r\n\r\n") {
                        let body = dechunk(std::str::from_utf8(rest).unwrap());
                        return (head, body);
                    }
                } else {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if rest.len() >= len {
                        return (head, String::from_utf8(rest[..len].to_vec()).unwrap());
                    }
                }
            }
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the response");
            raw.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .map(|(head, body)| (head.split(' ').nth(1).unwrap().parse().unwrap(), body))
    .expect("response in time")
}

/// `shutdown_with` closes an engine.io polling session with the chosen code, in band.
#[tokio::test]
async fn shutdown_with_closes_a_polling_session_with_the_chosen_code() {
    let s = start(app()).await;
    let (sid, _) = open(s.addr, "").await;
    post(s.addr, &sid, &[handshake()]).await;
    messages(s.addr, &sid, 2).await;
    // A connection the server has accepted (it answered a message posted on it).
    let mut http = TcpStream::connect(s.addr).await.unwrap();
    let target = format!("{POLL}&sid={sid}");
    let nothing = msg(&json!({"event": "nothing"}));
    assert_eq!(
        request_on(&mut http, s.addr, "POST", &target, &nothing)
            .await
            .0,
        200
    );
    tokio::time::timeout(
        WAIT,
        s.handle
            .shutdown_with(sc_worker::RESTART, "Server is restarting", WAIT),
    )
    .await
    .unwrap();
    assert_eq!(s.handle.clients_count(), 0);
    let (status, body) = request_on(&mut http, s.addr, "GET", &target, "").await;
    assert_eq!(status, 200, "{body}");
    let close = body
        .split('\u{1e}')
        .find_map(|p| p.strip_prefix('4')?.strip_prefix(sc_worker::CLOSE_PREFIX))
        .unwrap_or_else(|| panic!("no in-band close in {body:?}"));
    let close: Value = serde_json::from_str(close).unwrap();
    assert_eq!(
        close,
        json!({"code": sc_worker::RESTART, "reason": "Server is restarting"})
    );
}
