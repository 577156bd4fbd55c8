//! Two `socketcluster serve` processes sharing channels through `--store`: a cluster of two
//! `socketcluster store` processes, and Redis at 127.0.0.1:6379 (started by `scripts/test`; the
//! test fails without it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

const BIN: &str = env!("CARGO_BIN_EXE_socketcluster");
const WAIT: Duration = Duration::from_secs(10);
const MESSAGES: u64 = 500;

/// Runs `socketcluster ARGS` and returns the child with the address of its first stdout line
/// (the text after `prefix`).
async fn spawn(args: &[&str], prefix: &str) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("SC_AUTH_KEY")
        .env_remove("SC_STORE_SECRET")
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
    let rest = line
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_owned();
    (child, rest)
}

async fn serve(store: &str) -> (Child, String) {
    spawn(
        &["serve", "--port", "0", "--store", store],
        "socketcluster listening on ",
    )
    .await
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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
        let m = tokio::time::timeout(WAIT, ws.next())
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

/// The `data` of the next `#publish` that is not a probe.
async fn next_publish(ws: &mut Ws) -> Value {
    loop {
        let v = next(ws).await;
        if v["event"] == "#publish" && v["data"]["data"].get("probe").is_none() {
            return v["data"].clone();
        }
    }
}

async fn invoke(ws: &mut Ws, event: &str, data: Value, cid: u64) -> Value {
    send(ws, json!({"event": event, "data": data, "cid": cid})).await;
    loop {
        let v = next(ws).await;
        if v["rid"] == cid {
            assert!(v.get("error").is_none(), "{v}");
            return v;
        }
    }
}

/// `PUBLISH channel message` on one RESP node, by hand: the number of subscribers it reached.
async fn raw_publish(node: &str, channel: &str, message: &str) -> i64 {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(node))
        .await
        .unwrap()
        .unwrap();
    let mut cmd = b"*3\r\n$7\r\nPUBLISH\r\n".to_vec();
    for arg in [channel, message] {
        cmd.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    s.write_all(&cmd).await.unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "store closed the connection");
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(reply).unwrap();
    text.trim_start_matches(':').trim_end().parse().unwrap()
}

/// Subscribers reached by a publish on `channel`, over every node.
async fn store_subscribers(nodes: &[String], channel: &str) -> i64 {
    let mut n = 0;
    for node in nodes {
        n += raw_publish(node, channel, "").await;
    }
    n
}

/// A client of server A and one of server B share a channel through `store`.
async fn two_serve_processes(store: &str, nodes: &[String]) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let channel = format!("sc-cli-test:{}:{nanos}", std::process::id());
    let (_a, url_a) = serve(store).await;
    let (_b, url_b) = serve(store).await;
    let mut ca = connect(&url_a).await;
    let mut cb = connect(&url_b).await;
    invoke(&mut ca, "#subscribe", json!({ "channel": channel }), 2).await;
    invoke(&mut cb, "#subscribe", json!({ "channel": channel }), 2).await;

    // A process acknowledges #subscribe before the store has confirmed the subscription:
    // publish probes until both clients got one.
    let mut ready = [false, false];
    for k in 0..100 {
        send(
            &mut cb,
            json!({"event":"#publish","data":{"channel":channel,"data":{"probe":k}}}),
        )
        .await;
        for (i, ws) in [&mut ca, &mut cb].into_iter().enumerate() {
            while !ready[i] {
                match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
                    Ok(Some(Ok(m))) => {
                        let Some(t) = m.as_text() else { continue };
                        if t.is_empty() {
                            ws.send(Message::text(String::new())).await.unwrap();
                        } else if t.contains("\"probe\"") {
                            ready[i] = true;
                        }
                    }
                    Ok(other) => panic!("socket ended: {other:?}"),
                    Err(_) => break,
                }
            }
        }
        if ready == [true, true] {
            break;
        }
    }
    assert_eq!(
        ready,
        [true, true],
        "the store subscriptions never became ready"
    );
    assert_eq!(store_subscribers(nodes, &channel).await, 2);
    // That publish had no data: both clients get it once.
    for ws in [&mut ca, &mut cb] {
        assert_eq!(next_publish(ws).await, json!({ "channel": channel }));
    }

    // 500 publishes by the client of B: in order, exactly once, at A and back at B.
    for i in 0..MESSAGES {
        send(
            &mut cb,
            json!({"event":"#publish","data":{"channel":channel,"data":i}}),
        )
        .await;
    }
    send(
        &mut cb,
        json!({"event":"#publish","data":{"channel":channel,"data":"end"}}),
    )
    .await;
    for ws in [&mut ca, &mut cb] {
        for i in 0..MESSAGES {
            assert_eq!(next_publish(ws).await["data"], json!(i));
        }
        assert_eq!(next_publish(ws).await["data"], json!("end"));
    }

    // The last local subscribers leave: both processes drop their store subscription.
    invoke(&mut ca, "#unsubscribe", json!(channel), 4).await;
    invoke(&mut cb, "#unsubscribe", json!(channel), 4).await;
    let mut reached = -1;
    for _ in 0..250 {
        reached = store_subscribers(nodes, &channel).await;
        if reached == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reached, 0, "a process kept its store subscription");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_processes_share_channels_through_a_store_cluster() {
    let (_s1, n1) = spawn(&["store", "--port", "0"], "store listening on ").await;
    let (_s2, n2) = spawn(&["store", "--port", "0"], "store listening on ").await;
    let store = format!("sc://{n1},{n2}");
    two_serve_processes(&store, &[n1, n2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_processes_share_channels_through_redis() {
    assert!(
        TcpStream::connect("127.0.0.1:6379").await.is_ok(),
        "Redis must listen on 127.0.0.1:6379 (scripts/test starts it)"
    );
    two_serve_processes("redis://127.0.0.1:6379", &["127.0.0.1:6379".to_owned()]).await;
}

#[tokio::test]
async fn bad_store_flags_exit_64() {
    for bad in ["127.0.0.1:6379", "sc://", "http://a:1"] {
        let out = Command::new(BIN)
            .args(["serve", "--port", "0", "--store", bad])
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--store"));
    }
}
