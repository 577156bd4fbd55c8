//! The `socketcluster` binary: flags, config file, exit codes, the listening line, the demo app
//! and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

const BIN: &str = env!("CARGO_BIN_EXE_socketcluster");
const WAIT: Duration = Duration::from_secs(10);

struct Server {
    child: Child,
    url: String,
}

/// Starts `socketcluster serve --port 0 ARGS` and reads the listening line.
async fn serve(args: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(["--port", "0"])
        .args(args)
        .env_remove("SC_AUTH_KEY")
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
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with('/'),
        "{url}"
    );
    Server { child, url }
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

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
    let reply = next(&mut ws).await;
    assert_eq!(reply["rid"], 1);
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(t) = m.as_text().filter(|t| !t.is_empty()) {
            return serde_json::from_str(t).unwrap();
        }
    }
}

async fn reply(ws: &mut Ws, cid: u64) -> Value {
    loop {
        let v = next(ws).await;
        if v["rid"] == cid {
            return v;
        }
    }
}

async fn run(args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        WAIT,
        Command::new(BIN)
            .args(args)
            .env_remove("SC_AUTH_KEY")
            .output(),
    )
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn bad_flags_and_config_exit_64() {
    for args in [
        &["serve", "--port", "not-a-port"][..],
        &["serve", "--no-such-flag"],
        &["serve", "--host", "not an ip"],
        &["serve", "--auth-key", ""],
        &["serve", "--config", "/nonexistent/sc.toml"],
        &["serve", "--threads", "5000"],
    ] {
        let out = run(args).await;
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    let dir = std::env::temp_dir().join(format!("sc-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[worker]\nping_interval_ms = 40000\n").unwrap();
    let out = run(&["serve", "--config", bad.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ping_interval_ms"));
    // The proxy options are checked before anything binds.
    for (args, needle) in [
        (
            &["serve", "--trusted-proxy", "10.0.0.0/33"][..],
            "10.0.0.0/33",
        ),
        (&["serve", "--proxy-protocol"], "trusted_proxies"),
    ] {
        let out = run(args).await;
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// `--threads N` starts N threads that serve sockets (one: everything on the main thread), and
/// the demo app works the same on each.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn threads_sets_how_many_threads_serve() {
    for (threads, expected) in [("1", 1), ("3", 4)] {
        let mut server = serve(&["--threads", threads]).await;
        let pid = server.child.id().unwrap();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count();
        assert_eq!(
            tasks, expected,
            "--threads {threads}: threads of the process"
        );
        let mut ws = connect(&server.url).await;
        send(
            &mut ws,
            json!({"event":"echo","data":{"n":threads},"cid":2}),
        )
        .await;
        assert_eq!(
            reply(&mut ws, 2).await,
            json!({"rid":2,"data":{"n":threads}})
        );
        send(
            &mut ws,
            json!({"event":"#subscribe","data":{"channel":"c"},"cid":3}),
        )
        .await;
        assert!(reply(&mut ws, 3).await.get("error").is_none());
        send(
            &mut ws,
            json!({"event":"#publish","data":{"channel":"c","data":7}}),
        )
        .await;
        loop {
            let v = next(&mut ws).await;
            if v["event"] == "#publish" {
                assert_eq!(v["data"], json!({"channel":"c","data":7}));
                break;
            }
        }
        server.child.kill().await.unwrap();
    }
}

#[tokio::test]
async fn busy_port_exits_non_zero_with_a_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = run(&["serve", "--port", &port]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
}

#[tokio::test]
async fn gen_config_round_trips_through_serve() {
    let out = run(&["gen-config"]).await;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("max_payload = 2097152"));
    let dir = std::env::temp_dir().join(format!("sc-cli-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sc.toml");
    // The file sets the path; the --port 0 flag overrides its port.
    std::fs::write(&file, text.replace("/socketcluster/", "/custom/")).unwrap();
    let server = serve(&["--config", file.to_str().unwrap()]).await;
    assert!(server.url.ends_with("/custom/"), "{}", server.url);
    let mut ws = connect(&server.url).await;
    send(&mut ws, json!({"event":"echo","data":"cfg","cid":2})).await;
    assert_eq!(reply(&mut ws, 2).await["data"], "cfg");
}

#[tokio::test]
async fn demo_app_and_shared_auth_key() {
    let a = serve(&["--auth-key", "shared"]).await;
    assert!(a.url.ends_with("/socketcluster/"), "{}", a.url);
    let mut ws = connect(&a.url).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"event":"greet","data":"hello world"})
    );
    send(&mut ws, json!({"event":"ping"})).await;
    send(&mut ws, json!({"event":"count","cid":2})).await;
    assert_eq!(reply(&mut ws, 2).await, json!({"rid":2,"data":1}));
    send(&mut ws, json!({"event":"fail","cid":3})).await;
    let r = reply(&mut ws, 3).await;
    assert_eq!(
        (&r["error"]["name"], &r["error"]["message"]),
        (&json!("BadRequest"), &json!("fail requested"))
    );
    send(
        &mut ws,
        json!({"event":"#subscribe","data":{"channel":"private/x"},"cid":4}),
    )
    .await;
    let r = reply(&mut ws, 4).await;
    assert_eq!(r["error"]["name"], "ForbiddenError");
    assert_eq!(
        r["error"]["message"],
        "private channel requires authentication"
    );
    send(
        &mut ws,
        json!({"event":"login","data":{"username":"ann"},"cid":5}),
    )
    .await;
    let token = loop {
        let v = next(&mut ws).await;
        if v["event"] == "#setAuthToken" {
            break v["data"]["token"].as_str().unwrap().to_owned();
        }
    };
    send(
        &mut ws,
        json!({"event":"#subscribe","data":{"channel":"private/x"},"cid":6}),
    )
    .await;
    assert_eq!(reply(&mut ws, 6).await, json!({"rid":6}));
    send(
        &mut ws,
        json!({"event":"serverPublish","data":{"channel":"private/x","data":7},"cid":7}),
    )
    .await;
    let mut got = [next(&mut ws).await, next(&mut ws).await];
    got.sort_by_key(|v| v.get("rid").is_some());
    assert_eq!(
        got[0],
        json!({"event":"#publish","data":{"channel":"private/x","data":7}})
    );
    assert_eq!(got[1], json!({"rid":7}));

    // Another process with the same key accepts the token.
    let b = serve(&["--auth-key", "shared"]).await;
    let (mut wb, _) = ClientBuilder::new()
        .uri(&b.url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    send(
        &mut wb,
        json!({"event":"#handshake","data":{"authToken":token},"cid":1}),
    )
    .await;
    let r = reply(&mut wb, 1).await;
    assert_eq!(r["data"]["isAuthenticated"], true);
    send(&mut wb, json!({"event":"whoami","cid":2})).await;
    assert_eq!(reply(&mut wb, 2).await["data"]["username"], "ann");
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_0() {
    let mut server = serve(&[]).await;
    let mut ws = connect(&server.url).await;
    let pid = server.child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let code = loop {
        let m = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        match m {
            Some(Ok(m)) if m.is_close() => break m.as_close().map(|(c, _)| u16::from(c)),
            Some(Ok(_)) => {}
            _ => break None,
        }
    };
    assert_eq!(code, Some(1001));
    let exit = tokio::time::timeout(WAIT, server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
