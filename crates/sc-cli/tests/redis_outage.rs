//! Redis stopped for 10 s under load, then started again on the same port: two
//! `socketcluster serve` processes sharing channels and sessions through it keep serving what
//! needs no store, answer what needs it with a clear error meanwhile, re-subscribe by
//! themselves, tell every subscriber of the channel with a `#gap` notice, and deliver in order
//! again. The test starts its own `redis-server` on a free port (the Debian package; CI
//! installs it), so the shared one at 6379 is not disturbed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

const BIN: &str = env!("CARGO_BIN_EXE_socketcluster");
const WAIT: Duration = Duration::from_secs(10);
const OUTAGE: Duration = Duration::from_secs(10);
const SUBSCRIBERS: usize = 20;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `redis-server` on `port`, once it accepts connections.
async fn redis(port: u16) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server is not installed (apt-get install redis-server)");
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

async fn serve(store: &str) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--port", "0", "--store", store])
        .env_remove("SC_AUTH_KEY")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = line
        .strip_prefix("socketcluster listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_owned();
    (child, url)
}

async fn connect(url: &str) -> Ws {
    let (mut ws, _) = ClientBuilder::new()
        .uri(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    send(
        &mut ws,
        json!({"event":"#handshake","data":{"authToken":null},"cid":1}),
    )
    .await;
    assert_eq!(next(&mut ws).await["rid"], 1);
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next JSON frame; pings are answered and skipped.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT + OUTAGE, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .unwrap()
            .unwrap();
        let Some(t) = m.as_text() else { continue };
        if t.is_empty() {
            ws.send(Message::text(String::new())).await.unwrap();
            continue;
        }
        return serde_json::from_str(t).unwrap();
    }
}

async fn invoke(ws: &mut Ws, event: &str, data: Value, cid: u64) -> Value {
    send(ws, json!({"event": event, "data": data, "cid": cid})).await;
    loop {
        let v = next(ws).await;
        if v["rid"] == cid {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_under_load_gives_errors_then_a_gap_then_delivery_again() {
    let port = free_port();
    let mut server = redis(port).await;
    let store = format!("redis://127.0.0.1:{port}");
    let (_a, url_a) = serve(&store).await;
    let (_b, url_b) = serve(&store).await;

    let mut subs = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut ws = connect(&url_a).await;
        let r = invoke(&mut ws, "#subscribe", json!({"channel": "outage"}), 2).await;
        assert!(r.get("error").is_none(), "{r}");
        subs.push(ws);
    }
    let mut tab = connect(&url_a).await;
    let r = invoke(&mut tab, "sessionSet", json!({"key": "k", "value": 1}), 2).await;
    assert!(r.get("error").is_none(), "{r}");

    // The load: a publish every 5 ms from server B, for the whole test.
    let publisher = tokio::spawn({
        let url = url_b.clone();
        async move {
            let mut ws = connect(&url).await;
            // Bounded: 20,000 publishes (100 s) is more than the test takes.
            for n in 0u64..20_000 {
                send(
                    &mut ws,
                    json!({"event": "#publish", "data": {"channel": "outage", "data": {"n": n}}}),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let last_n = |v: &Value| v["data"]["data"]["n"].as_u64();
    // Delivery before the outage.
    for ws in &mut subs {
        let v = next(ws).await;
        assert_eq!(v["event"], "#publish", "{v}");
    }

    server.kill().await.unwrap();
    let down = Instant::now();
    // Meanwhile: what needs the store fails with a clear error, within the ack timeout, and
    // what does not is served as before.
    let t = Instant::now();
    let r = invoke(&mut tab, "sessionSet", json!({"key": "k", "value": 2}), 3).await;
    let err = r
        .get("error")
        .unwrap_or_else(|| panic!("sessionSet succeeded without a store: {r}"));
    println!(
        "sessionSet during the outage: error after {} ms: {err}",
        t.elapsed().as_millis()
    );
    let r = invoke(&mut tab, "sessionId", Value::Null, 4).await;
    assert!(r["data"].is_string(), "{r}");

    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    let _server = redis(port).await;
    let up = Instant::now();
    println!("redis down for {} ms", down.elapsed().as_millis());

    // Every subscriber: a `#gap` notice for the channel, then publishes again, in order.
    let mut gap_ms = Vec::new();
    for ws in &mut subs {
        let mut prev: Option<u64> = None;
        loop {
            let v = next(ws).await;
            if v["event"] == "#gap" {
                assert_eq!(v["data"], json!({"channel": "outage"}));
                gap_ms.push(up.elapsed().as_millis());
                break;
            }
            if let Some(n) = last_n(&v) {
                assert!(
                    prev.is_none_or(|p| n > p),
                    "out of order: {n} after {prev:?}"
                );
                prev = Some(n);
            }
        }
        let v = loop {
            let v = next(ws).await;
            if v["event"] == "#publish" {
                break v;
            }
        };
        let mut prev = last_n(&v).unwrap();
        for _ in 0..20 {
            let v = next(ws).await;
            if let Some(n) = last_n(&v) {
                assert!(n > prev, "out of order after the gap: {n} after {prev}");
                prev = n;
            }
        }
    }
    gap_ms.sort_unstable();
    println!(
        "{} subscribers got #gap, {} to {} ms after redis was back, then publishes in order",
        gap_ms.len(),
        gap_ms[0],
        gap_ms[gap_ms.len() - 1]
    );
    // The store serves again (the command connection may need a moment).
    let deadline = Instant::now() + WAIT;
    let mut cid = 10;
    loop {
        let r = invoke(&mut tab, "sessionGet", json!({"key": "k"}), cid).await;
        if r.get("error").is_none() {
            println!("sessionGet after the outage: {r}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store did not come back: {r}"
        );
        cid += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publisher.abort();
}
