//! The example's binary as a cluster: its own route and procedures through the balancer, session
//! data that survives `kill -9` of the worker that holds the socket, the respawn on the same
//! address, `/health` and `/metrics`, and SIGTERM draining to exit 0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_websockets::{ClientBuilder, Message};

const WAIT: Duration = Duration::from_secs(60);

struct Running {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    port: u16,
    manage: u16,
}

impl Running {
    async fn start() -> Running {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cluster-app"))
            .args(["--port", "0", "--management-port", "0", "--workers", "2"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut running = Running {
            child,
            lines,
            port: 0,
            manage: 0,
        };
        let line = running
            .wait_line(|l| l.starts_with("socketcluster cluster listening on "))
            .await;
        // socketcluster cluster listening on http://127.0.0.1:P/ (management http://127.0.0.1:M/)
        let ports: Vec<u16> = line
            .split("127.0.0.1:")
            .skip(1)
            .map(|rest| rest.split('/').next().unwrap().parse().unwrap())
            .collect();
        running.port = ports[0];
        running.manage = ports[1];
        running
    }

    async fn wait_line(&mut self, want: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                if want(&line) {
                    return line;
                }
            }
            panic!("the cluster's stdout ended");
        });
        found.await.expect("no such line in time")
    }

    async fn health(&self) -> Value {
        let (_, _, body) = http_get(self.manage, "/health", None).await;
        serde_json::from_str(&body).unwrap()
    }
}

/// A GET over a fresh connection: (status, headers, body).
async fn http_get(port: u16, path: &str, cookie: Option<&str>) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{cookie}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

type Ws =
    tokio_websockets::WebSocketStream<tokio_websockets::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(port: u16, cookie: &str) -> Ws {
    let uri = format!("ws://127.0.0.1:{port}/socketcluster/");
    let (mut ws, _) = ClientBuilder::new()
        .uri(&uri)
        .unwrap()
        .add_header("cookie".try_into().unwrap(), cookie.try_into().unwrap())
        .unwrap()
        .connect()
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"event": "#handshake", "data": {}, "cid": 1}).to_string(),
    ))
    .await
    .unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["rid"], 1, "{reply}");
    ws
}

/// The next JSON message, answering pings on the way; `None` when the socket closed.
async fn next_json(ws: &mut Ws) -> Value {
    try_next_json(ws).await.expect("the socket closed")
}

async fn try_next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no message in time");
        let msg = match msg {
            Some(Ok(m)) => m,
            _ => return None,
        };
        if msg.is_close() {
            return None;
        }
        let Some(text) = msg.as_text() else { continue };
        if text.is_empty() {
            ws.send(Message::text(String::new())).await.unwrap();
            continue;
        }
        return Some(serde_json::from_str(text).unwrap());
    }
}

async fn invoke(ws: &mut Ws, event: &str, cid: u64) -> Value {
    ws.send(Message::text(
        json!({"event": event, "cid": cid}).to_string(),
    ))
    .await
    .unwrap();
    loop {
        let v = next_json(ws).await;
        if v["rid"] == cid {
            assert!(v.get("error").is_none(), "{v}");
            return v["data"].clone();
        }
    }
}

fn kill(pid: u64, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_runs_as_a_cluster_and_outlives_a_worker() {
    let mut cluster = Running::start().await;

    let health = cluster.health().await;
    assert_eq!(health["status"], "ok", "{health}");
    let roles: Vec<&str> = health["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["store", "worker", "worker", "balancer"]);

    // The app's own route, through the balancer; it sets the session cookie.
    let (status, head, body) = http_get(cluster.port, "/hello", None).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from worker "), "{body}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();

    let mut ws = connect(cluster.port, &cookie).await;
    let who = invoke(&mut ws, "whoami", 2).await;
    assert_eq!(invoke(&mut ws, "visit", 3).await, 1);
    assert_eq!(invoke(&mut ws, "visit", 4).await, 2);
    let who = who.as_str().unwrap().to_owned();
    let pid: u64 = who.rsplit(' ').next().unwrap().parse().unwrap();
    let id = who.split(' ').nth(1).unwrap().to_owned();

    // kill -9 the worker that holds the socket: the balancer closes it with 4000, the master
    // respawns the worker on the same id, the session's data is still in the store.
    kill(pid, "-9");
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(m)) if m.is_close() => return m.as_close().map(|(c, _)| u16::from(c)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(close, Some(4000));
    cluster
        .wait_line(|l| l.starts_with(&format!("child ready role=worker id={id} ")))
        .await;
    let mut ws = connect(cluster.port, &cookie).await;
    assert_eq!(
        invoke(&mut ws, "visit", 2).await,
        3,
        "the session's data survived"
    );

    let restarts = tokio::time::timeout(WAIT, async {
        loop {
            let (_, _, text) = http_get(cluster.manage, "/metrics", None).await;
            let key = format!("sc_restarts_total{{role=\"worker\",id=\"{id}\"}} ");
            if let Some(v) = text.lines().find_map(|l| l.strip_prefix(&key)) {
                return v.trim().to_owned();
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(restarts, "1");

    // SIGTERM: the worker closes the socket with a code the client reconnects on, and the
    // master exits 0 once everything drained.
    kill(u64::from(cluster.child.id().unwrap()), "-TERM");
    let mut code = None;
    while let Some(v) = tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
        if let Ok(m) = v
            && let Some((c, _)) = m.as_close()
        {
            code = Some(u16::from(c));
            break;
        }
    }
    assert_eq!(code, Some(4000));
    cluster.wait_line(|l| l == "cluster stopped").await;
    let status = tokio::time::timeout(WAIT, cluster.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}
