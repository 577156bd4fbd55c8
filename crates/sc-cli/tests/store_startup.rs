//! `socketcluster serve --store` checks its store before it listens: a store that refuses our
//! credentials (no secret, a wrong one) or cannot be reached is a startup error naming the node,
//! the cause and what to change, with a non-zero exit within 5 s. Against a `socketcluster store
//! --secret` and against a redis-server with `requirepass` started by the test.
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
/// How long `serve` may take to give up on a store it cannot use.
const STARTUP_LIMIT: Duration = Duration::from_secs(5);
const SECRET: &str = "s3cret-for-tests";

/// Reads `child`'s stdout until a line containing `needle` (panics on end of output or after
/// `WAIT`) and returns that line.
async fn wait_for_line(child: &mut Child, needle: &str) -> String {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("output ended before a line with {needle:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no line with {needle:?} within {WAIT:?}"));
    // Keep draining, so that the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found
}

fn socketcluster(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SC_AUTH_KEY")
        .env_remove("SC_STORE_SECRET")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A `socketcluster store --port 0 ARGS` process and its address.
async fn store(args: &[&str]) -> (Child, String) {
    let mut child = socketcluster(&[&["store", "--port", "0"][..], args].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut child, "store listening on ").await;
    let addr = line.strip_prefix("store listening on ").unwrap().to_owned();
    (child, addr)
}

/// A port on 127.0.0.1 that nothing listens on now (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server of the test's own on a free port, with `--requirepass SECRET`, nothing saved
/// to disk. Killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    async fn start() -> Self {
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--requirepass", SECRET, "--save", "", "--appendonly", "no"])
            .args(["--loglevel", "notice", "--logfile", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed");
        wait_for_line(&mut child, "Ready to accept connections").await;
        Redis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Runs `serve --port 0 --store STORE ARGS`, which must exit non-zero within `STARTUP_LIMIT`
/// without ever listening; returns its stderr.
async fn serve_fails(store: &str, args: &[&str]) -> String {
    let started = Instant::now();
    let out = tokio::time::timeout(
        STARTUP_LIMIT,
        socketcluster(&[&["serve", "--port", "0", "--store", store][..], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("serve --store {store} {args:?} still running after 5 s"))
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(
        !stderr.contains("channels are shared through the store"),
        "{stderr}"
    );
    assert!(stderr.contains("error: "), "{stderr}");
    assert!(!stderr.contains(SECRET), "the secret is printed: {stderr}");
    assert!(started.elapsed() < STARTUP_LIMIT);
    stderr
}

/// Asserts that `stderr` says `node` refused our credentials with `reply`, and tells how to fix it
/// (`fix`).
fn assert_refused(stderr: &str, node: &str, reply: &str, fix: &str) {
    for part in [
        &format!("store node {node} "),
        "refused our credentials",
        reply,
        "--store-secret",
        "SC_STORE_SECRET",
        fix,
    ] {
        assert!(stderr.contains(part), "{part:?} missing from {stderr}");
    }
}

const NO_SECRET_FIX: &str = "give the store's secret with --store-secret SECRET";
const WRONG_SECRET_FIX: &str = "must be the store's secret";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Starts `serve --port 0 --store STORE ARGS`, which must print its listening line; returns
/// the process and its URL.
async fn serve(store: &str, args: &[&str]) -> (Child, String) {
    let mut child =
        socketcluster(&[&["serve", "--port", "0", "--store", store][..], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let line = wait_for_line(&mut child, "socketcluster listening on ").await;
    let url = line
        .strip_prefix("socketcluster listening on ")
        .unwrap()
        .to_owned();
    (child, url)
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next JSON frame within `limit` (pings are answered and skipped), or `None`.
async fn next_within(ws: &mut Ws, limit: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.ok()?;
        let m = m.expect("socket ended").unwrap();
        let Some(t) = m.as_text() else { continue };
        if t.is_empty() {
            ws.send(Message::text(String::new())).await.unwrap();
            continue;
        }
        return Some(serde_json::from_str(t).unwrap());
    }
}

/// Connects to `url`, subscribes a channel and publishes on it until a publish comes back
/// through the store (the process acknowledges `#subscribe` before the store confirmed it).
async fn publish_goes_through(url: &str) {
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
    let channel = format!("store-startup:{}", std::process::id());
    send(
        &mut ws,
        json!({"event":"#subscribe","data":{"channel":channel},"cid":2}),
    )
    .await;
    for k in 0..100 {
        send(
            &mut ws,
            json!({"event":"#publish","data":{"channel":channel,"data":{"probe":k}}}),
        )
        .await;
        while let Some(v) = next_within(&mut ws, Duration::from_millis(100)).await {
            assert!(v.get("error").is_none(), "{v}");
            if v["event"] == "#publish" && v["data"]["channel"] == channel.as_str() {
                return;
            }
        }
    }
    panic!("no publish came back through the store");
}

#[tokio::test]
async fn serve_without_the_store_secret_exits_naming_the_cause() {
    let (_store, addr) = store(&["--secret", SECRET]).await;
    let stderr = serve_fails(&format!("sc://{addr}"), &[]).await;
    assert_refused(&stderr, &addr, "NOAUTH", NO_SECRET_FIX);
}

#[tokio::test]
async fn serve_with_a_wrong_store_secret_exits_naming_the_cause() {
    let (_store, addr) = store(&["--secret", SECRET]).await;
    let stderr = serve_fails(&format!("sc://{addr}"), &["--store-secret", "wrong"]).await;
    assert_refused(&stderr, &addr, "WRONGPASS", WRONG_SECRET_FIX);
}

/// One node of two refuses: `serve` names that one.
#[tokio::test]
async fn serve_names_the_node_of_a_cluster_that_refuses() {
    let (_good, good) = store(&["--secret", SECRET]).await;
    let (_bad, bad) = store(&["--secret", "another"]).await;
    let stderr = serve_fails(&format!("sc://{good},{bad}"), &["--store-secret", SECRET]).await;
    assert_refused(&stderr, &bad, "WRONGPASS", WRONG_SECRET_FIX);
    assert!(!stderr.contains(&format!("store node {good} ")), "{stderr}");
}

#[tokio::test]
async fn serve_with_a_secret_for_a_store_without_one_exits_naming_the_cause() {
    let (_store, addr) = store(&[]).await;
    let stderr = serve_fails(&format!("sc://{addr}"), &["--store-secret", SECRET]).await;
    assert_refused(
        &stderr,
        &addr,
        "without any password configured",
        "the store has no secret",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_the_store_secret_shares_channels() {
    let (_store, addr) = store(&["--secret", SECRET]).await;
    let (_serve, url) = serve(&format!("sc://{addr}"), &["--store-secret", SECRET]).await;
    publish_goes_through(&url).await;
}

#[tokio::test]
async fn serve_with_an_unreachable_store_exits_naming_the_address() {
    let addr = format!("127.0.0.1:{}", free_port());
    let stderr = serve_fails(&format!("sc://{addr}"), &[]).await;
    for part in [
        &format!("cannot reach store node {addr}: "),
        "Connection refused",
        "--store",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from {stderr}");
    }
}

/// A node that accepts connections but never answers: `serve` gives up within 5 s.
#[tokio::test]
async fn serve_with_a_store_that_never_answers_exits_within_5_s() {
    // Connections complete in the kernel's backlog; nothing ever reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let stderr = serve_fails(&format!("sc://{addr}"), &[]).await;
    for part in [
        &format!("cannot reach store node {addr}: "),
        "no answer within",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from {stderr}");
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_against_redis_with_requirepass() {
    let redis = Redis::start().await;
    let url = redis.url();
    let node = url.as_str();

    let stderr = serve_fails(node, &[]).await;
    assert_refused(&stderr, node, "NOAUTH", NO_SECRET_FIX);

    let stderr = serve_fails(node, &["--store-secret", "wrong"]).await;
    assert_refused(&stderr, node, "WRONGPASS", WRONG_SECRET_FIX);

    // The password in the URL is masked in the message.
    let with_password = format!("redis://:wrong-in-url@127.0.0.1:{}", redis.port);
    let stderr = serve_fails(&with_password, &[]).await;
    assert!(!stderr.contains("wrong-in-url"), "{stderr}");
    assert!(
        stderr.contains(&format!("redis://:***@127.0.0.1:{}", redis.port)),
        "{stderr}"
    );

    let (serve, ws_url) = serve(node, &["--store-secret", SECRET]).await;
    publish_goes_through(&ws_url).await;
    drop(serve);
    redis.stop().await;
}
