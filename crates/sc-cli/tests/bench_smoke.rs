//! A short smoke run of `socketcluster bench` against `socketcluster serve`: the JSON output
//! parses, the echo has throughput, the fan-out loses nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_socketcluster");

/// A one-second echo run: 4 connections × 2 in flight.
const SHORT_ECHO: [&str; 9] = [
    "echo",
    "--duration",
    "1s",
    "--warmup",
    "200ms",
    "-c",
    "4",
    "-k",
    "2",
];

/// The server, killed on drop.
struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Serve {
    serve_with(&[])
}

/// `serve` with `extra` arguments.
fn serve_with(extra: &[&str]) -> Serve {
    let mut args = vec![
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--auth-key",
        "smoke",
    ];
    args.extend_from_slice(extra);
    announced(&args, "socketcluster listening on ")
}

/// The binary run with `args`, and what its first line says after `prefix` (its address).
fn announced(args: &[&str], prefix: &str) -> Serve {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    Serve { child, url }
}

fn bench(server: &Serve, args: &[&str]) -> Value {
    let pid = server.child.id().to_string();
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .args([
            "--url",
            &server.url,
            "--json",
            "--quiet",
            "--server-pid",
            &pid,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn echo_and_fanout() {
    let server = serve();

    let echo = bench(&server, &SHORT_ECHO);
    assert_eq!(echo["scenario"], "echo");
    assert!(echo["rt_per_s"].as_f64().unwrap() > 0.0, "{echo}");
    assert_eq!(echo["errors"], 0, "{echo}");
    assert!(echo["p99_us"].as_f64().unwrap() > 0.0, "{echo}");
    assert!(echo["server_cpu_us_per_rt"].is_number(), "{echo}");

    let fanout = bench(
        &server,
        &[
            "fanout",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "-s",
            "5",
            "-p",
            "50",
        ],
    );
    assert_eq!(fanout["scenario"], "fanout");
    assert!(fanout["published"].as_u64().unwrap() > 0, "{fanout}");
    assert_eq!(
        fanout["received"].as_u64().unwrap(),
        fanout["expected_deliveries"].as_u64().unwrap(),
        "{fanout}"
    );
    assert_eq!(fanout["lost"], 0, "{fanout}");
    assert_eq!(fanout["duplicated"], 0, "{fanout}");
    assert_eq!(fanout["order_violations"], 0, "{fanout}");
    assert!(
        fanout["deliveries_per_s"].as_f64().unwrap() > 0.0,
        "{fanout}"
    );

    let ping = bench(
        &server,
        &[
            "ping",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "-c",
            "3",
            "-r",
            "50",
        ],
    );
    assert_eq!(ping["exact"], true, "{ping}");
    assert!(ping["sent"].as_u64().unwrap() > 0, "{ping}");
}

/// A bare WebSocket echo server (no protocol) on a thread of its own; returns its URL.
fn bare_echo_server() -> String {
    use futures_util::{SinkExt, StreamExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok((_, mut ws)) = tokio_websockets::ServerBuilder::new().accept(tcp).await
                    else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    url
}

/// `--protocol ws-echo` takes each echoed invoke as its reply, and refuses the scenarios a bare
/// echo server cannot run.
#[test]
fn ws_echo_protocol_measures_a_bare_echo_server() {
    let url = bare_echo_server();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("bench")
            .args(args)
            .args(["--protocol", "ws-echo", "--url", &url, "--json", "--quiet"])
            .output()
            .unwrap()
    };
    let out = run(&SHORT_ECHO);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echo: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(echo["protocol"], "ws-echo");
    assert!(echo["round_trips"].as_u64().unwrap() > 0, "{echo}");
    assert_eq!(echo["errors"], 0, "{echo}");
    assert!(echo["p50_us"].as_f64().unwrap() > 0.0, "{echo}");

    let out = run(&["ping", "--duration", "1s", "-c", "2", "-r", "10"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bare echo server"), "{err}");
}

/// `fanout --url2`: the subscribers split over two servers sharing channels through a store
/// process (every other one on --url2, the publisher on --url), nothing lost; the store's CPU is
/// reported with --store-pid. With -s 1 the only subscriber is on --url2 (the cross-node echo).
#[test]
fn fanout_across_two_servers() {
    let store = announced(
        &["store", "--host", "127.0.0.1", "--port", "0"],
        "store listening on ",
    );
    let url = format!("sc://{}", store.url);
    let (a, b) = (
        serve_with(&["--store", &url]),
        serve_with(&["--store", &url]),
    );
    let store_pid = store.child.id().to_string();
    for (subs, on_url2) in [("6", 3), ("1", 1)] {
        let out = Command::new(BIN)
            .args([
                "bench",
                "fanout",
                "--duration",
                "1s",
                "--warmup",
                "200ms",
                "-s",
                subs,
                "-p",
                "50",
            ])
            .args(["--url", &a.url, "--url2", &b.url, "--store-pid", &store_pid])
            .args(["--json", "--quiet"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(r["subscribers_on_url2"], on_url2, "{r}");
        assert!(r["published"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["received"], r["expected_deliveries"], "{r}");
        assert_eq!(r["lost"], 0, "{r}");
        assert_eq!(r["duplicated"], 0, "{r}");
        assert!(r["store_cpu_us_per_delivery"].is_number(), "{r}");
    }
}
