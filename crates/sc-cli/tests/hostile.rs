//! Hostile clients against `socketcluster serve` and `socketcluster store` (issue 21, item 7):
//! every attack of the issue, scaled down, bounded in time and count, on 127.0.0.1 only (the
//! attackers bind other 127.x.y.z source addresses to be other clients), while a healthy client
//! invokes `echo` every 100 ms (`ECHO` on the store).
//!
//! Each test starts its own server with a config of short timeouts and small limits, runs one
//! attack, and checks: the healthy client never fails and its worst latency stays under 250 ms;
//! the server's RSS stays under [`PEAK_MARGIN_KIB`] above the RSS before the attack and comes
//! back within [`AFTER_MARGIN_KIB`] after it; the attacker gets the documented error or close
//! code. The tests take turns ([`SERIAL`]), so that no attack slows another's healthy client,
//! and each prints one row of the table:
//!
//! ```text
//! cargo test -p sc-cli --test hostile -- --nocapture
//! hostile | slowloris | rss before 15.9 MiB | peak 19.4 MiB | after 17.5 MiB | worst echo 0.9 ms (25 echoes, 20 during the 2.0 s attack) | attacker saw: 200/200 closed after 2.00-2.01 s
//! ```
//!
//! The quick attacks are repeated in rounds for at least [`MIN_ATTACK`] (at most
//! [`MAX_ROUNDS`]), so that the healthy client's echoes overlap them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_websockets::{ClientBuilder, Message};

const BIN: &str = env!("CARGO_BIN_EXE_socketcluster");

/// How much the server's RSS may grow during an attack, over its RSS before it. The servers
/// are debug builds; a correct one stays well under this in every attack here (its queues and
/// buffers are bounded at a few MiB each), while each scaled-down attack makes the server
/// before the fixes hold over 100 MiB (each test's comment says how), so the bound tells them
/// apart.
const PEAK_MARGIN_KIB: u64 = 64 * 1024;
/// How close to the RSS before the attack the server must come back once the attack's
/// connections are closed (awaited up to [`SETTLE`]).
const AFTER_MARGIN_KIB: u64 = 16 * 1024;
/// How long the RSS may take to come back.
const SETTLE: Duration = Duration::from_secs(10);
/// The healthy client's worst acceptable echo round trip; a reply later than this is a failure.
const ECHO_LIMIT: Duration = Duration::from_millis(250);
/// How often the healthy client invokes `echo`.
const ECHO_EVERY: Duration = Duration::from_millis(100);
/// `http_header_timeout_ms` of every test server (the default is 10 s).
const HEADER_TIMEOUT: Duration = Duration::from_millis(2000);
/// The server's config path.
const WS_PATH: &str = "/socketcluster/";
/// The least time a quick attack is repeated for (in rounds, at most [`MAX_ROUNDS`]), so that
/// the healthy client's echoes overlap it.
const MIN_ATTACK: Duration = Duration::from_secs(1);
const MAX_ROUNDS: usize = 100;
/// `outbound_queue_bytes` in [`slow_reader`].
const SLOW_QUEUE: usize = 4 << 20;
/// The store's secret in [`store_unauthenticated`].
const STORE_SECRET: &str = "hostile-store-secret";
/// The store's `--auth-timeout-ms` in [`store_unauthenticated`].
const STORE_AUTH_TIMEOUT: Duration = Duration::from_millis(1000);
/// The `--auth-key` in [`token_exp_never`].
const AUTH_KEY: &str = "hostile-auth-key";
/// The healthy client's address; attackers use others.
const HEALTHY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// One attack at a time: the healthy client's latency is the server's, not the other tests'.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// The server processes
// ---------------------------------------------------------------------------------------------

/// A `socketcluster serve` or `socketcluster store` process, killed when dropped.
struct Server {
    _child: Child,
    pid: u32,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sc-hostile-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `socketcluster ARGS` and waits for its line starting with `prefix` (its address
/// follows); the rest of its output is drained.
async fn start(name: &str, dir: PathBuf, args: &[&str], prefix: &str) -> Server {
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("SC_AUTH_KEY")
        .env_remove("SC_STORE_SECRET")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{name}: no listening line within 10 s"))
        .unwrap()
        .unwrap_or_else(|| {
            let err = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            panic!("{name}: the server exited: {err}")
        });
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let rest = line
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{name}: unexpected line {line:?}"));
    let rest = rest.strip_prefix("ws://").unwrap_or(rest);
    let addr = rest.split('/').next().unwrap().parse().unwrap();
    Server {
        _child: child,
        pid,
        addr,
        dir,
    }
}

/// `socketcluster serve --port 0 --config FILE ARGS`, FILE's `[worker]` section holding the
/// short header timeout and `worker` (more `key = value` lines).
async fn serve(name: &str, worker: &str, args: &[&str]) -> Server {
    let dir = scratch_dir(name);
    let config = dir.join("sc.toml");
    std::fs::write(
        &config,
        format!(
            "[worker]\nhttp_header_timeout_ms = {}\n{worker}\n",
            HEADER_TIMEOUT.as_millis()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let all = [&["serve", "--port", "0", "--config", &config][..], args].concat();
    start(name, dir, &all, "socketcluster listening on ").await
}

/// The server's RSS in KiB, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("the server (pid {pid}) is gone: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Samples the RSS every 50 ms on a thread of its own, keeping the largest.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                peak = peak.max(rss_kib(pid));
                if flag.load(Ordering::Acquire) {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler { stop, thread }
    }

    fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap()
    }
}

/// `GET /stats` of a `serve` process: `{"clients":N,"pending":N,"engineio_sessions":N}`.
async fn stats(addr: SocketAddr) -> Value {
    let mut s = tcp_from(HEALTHY_IP, addr, None).await.unwrap();
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let res = read_response(&mut s, &mut buf).await.unwrap();
    assert_eq!(res.status, 200, "{res:?}");
    serde_json::from_str(&res.body).unwrap()
}

/// Polls `/stats` every 50 ms until `done` holds (true) or `within` passes (false).
async fn stats_until(addr: SocketAddr, within: Duration, done: impl Fn(&Value) -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done(&stats(addr).await) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The healthy client
// ---------------------------------------------------------------------------------------------

/// What the healthy client talks to.
#[derive(Clone)]
enum Target {
    /// `serve`: a WebSocket client invoking `echo`.
    Serve(SocketAddr),
    /// `store`: a RESP client that sent `AUTH secret`, sending `ECHO`.
    Store(SocketAddr, String),
}

#[derive(Debug, Default)]
struct HealthReport {
    echoes: u64,
    worst: Duration,
    failures: Vec<String>,
}

impl HealthReport {
    /// Records one round trip: its latency, or why it failed (`Err((why, fatal))`).
    fn record(&mut self, r: Result<Duration, (String, bool)>, count: &AtomicU64) -> bool {
        match r {
            Ok(latency) => {
                self.echoes += 1;
                self.worst = self.worst.max(latency);
                count.fetch_add(1, Ordering::AcqRel);
                true
            }
            Err((why, fatal)) => {
                self.failures.push(why);
                !fatal
            }
        }
    }
}

/// The healthy client on a thread and runtime of its own (the attack's tasks do not delay it).
struct Healthy {
    stop: oneshot::Sender<()>,
    echoes: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<HealthReport>,
}

impl Healthy {
    fn start(target: Target) -> Self {
        let (stop, stopped) = oneshot::channel();
        let echoes = Arc::new(AtomicU64::new(0));
        let count = echoes.clone();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    match target {
                        Target::Serve(addr) => healthy_ws(addr, stopped, count).await,
                        Target::Store(addr, secret) => {
                            healthy_resp(addr, &secret, stopped, count).await
                        }
                    }
                })
        });
        Healthy {
            stop,
            echoes,
            thread,
        }
    }

    /// Waits until it has had 5 replies (at most 10 s).
    async fn warmed_up(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.echoes.load(Ordering::Acquire) < 5 {
            if Instant::now() >= deadline || self.thread.is_finished() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn stop(self) -> HealthReport {
        let _ = self.stop.send(());
        self.thread.join().unwrap()
    }
}

async fn healthy_ws(
    addr: SocketAddr,
    mut stop: oneshot::Receiver<()>,
    count: Arc<AtomicU64>,
) -> HealthReport {
    let mut report = HealthReport::default();
    let url = format!("ws://{addr}{WS_PATH}");
    let builder = ClientBuilder::new().uri(&url).unwrap();
    let mut ws = match tokio::time::timeout(Duration::from_secs(5), builder.connect()).await {
        Ok(Ok((ws, _))) => ws,
        other => {
            report.failures.push(format!("connect: {other:?}"));
            return report;
        }
    };
    let hello = json!({"event":"#handshake","data":{"authToken":null},"cid":1}).to_string();
    if let Err(e) = ws.send(Message::text(hello)).await {
        report.failures.push(format!("handshake: {e}"));
        return report;
    }
    let mut tick = tokio::time::interval(ECHO_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cid = 1u64;
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        cid += 1;
        let sent = Instant::now();
        let frame = format!(r#"{{"event":"echo","data":{cid},"cid":{cid}}}"#);
        let result = match ws.send(Message::text(frame)).await {
            Err(e) => Err((format!("echo {cid}: send failed: {e}"), true)),
            Ok(()) => loop {
                let next = tokio::time::timeout_at((sent + ECHO_LIMIT).into(), ws.next()).await;
                let m = match next {
                    Err(_) => {
                        break Err((format!("echo {cid}: no reply within {ECHO_LIMIT:?}"), false));
                    }
                    Ok(None) => break Err((format!("echo {cid}: connection ended"), true)),
                    Ok(Some(Err(e))) => break Err((format!("echo {cid}: {e}"), true)),
                    Ok(Some(Ok(m))) => m,
                };
                if let Some((code, reason)) = m.as_close() {
                    let code = u16::from(code);
                    break Err((format!("echo {cid}: closed {code} {reason}"), true));
                }
                let Some(text) = m.as_text() else { continue };
                if text.is_empty() {
                    // The server's ping.
                    if let Err(e) = ws.send(Message::text(String::new())).await {
                        break Err((format!("pong: {e}"), true));
                    }
                    continue;
                }
                let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                if v["rid"] == cid {
                    if v["data"] == cid {
                        break Ok(sent.elapsed());
                    }
                    break Err((format!("echo {cid}: wrong reply {v}"), false));
                }
            },
        };
        if !report.record(result, &count) {
            break;
        }
    }
    report
}

async fn healthy_resp(
    addr: SocketAddr,
    secret: &str,
    mut stop: oneshot::Receiver<()>,
    count: Arc<AtomicU64>,
) -> HealthReport {
    let mut report = HealthReport::default();
    let mut s = match tcp_from(HEALTHY_IP, addr, None).await {
        Ok(s) => s,
        Err(e) => {
            report.failures.push(format!("connect: {e}"));
            return report;
        }
    };
    let mut buf = Vec::new();
    let auth = resp_command(&[b"AUTH", secret.as_bytes()]);
    let authed = async {
        s.write_all(&auth).await?;
        expect_bytes(&mut s, &mut buf, b"+OK\r\n").await
    };
    match tokio::time::timeout(Duration::from_secs(5), authed).await {
        Ok(Ok(true)) => {}
        other => {
            report.failures.push(format!("AUTH: {other:?} {buf:?}"));
            return report;
        }
    }
    let mut tick = tokio::time::interval(ECHO_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        n += 1;
        let word = format!("echo-{n}");
        let expected = format!("${}\r\n{word}\r\n", word.len());
        let sent = Instant::now();
        let round = async {
            s.write_all(&resp_command(&[b"ECHO", word.as_bytes()]))
                .await?;
            expect_bytes(&mut s, &mut buf, expected.as_bytes()).await
        };
        let result = match tokio::time::timeout(ECHO_LIMIT, round).await {
            Ok(Ok(true)) => Ok(sent.elapsed()),
            Ok(Ok(false)) => Err((format!("ECHO {n}: wrong reply {buf:?}"), true)),
            Ok(Err(e)) => Err((format!("ECHO {n}: {e}"), true)),
            // The reply may be half read: the stream is out of step from here.
            Err(_) => Err((format!("ECHO {n}: no reply within {ECHO_LIMIT:?}"), true)),
        };
        if !report.record(result, &count) {
            break;
        }
    }
    report
}

/// A RESP array of bulk strings.
fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads until `buf` holds as many bytes as `expected`; whether they are those (and drops them).
async fn expect_bytes(s: &mut TcpStream, buf: &mut Vec<u8>, expected: &[u8]) -> io::Result<bool> {
    while buf.len() < expected.len() {
        read_more(s, buf).await?;
    }
    let same = buf.get(..expected.len()) == Some(expected);
    if same {
        buf.drain(..expected.len());
    }
    Ok(same)
}

// ---------------------------------------------------------------------------------------------
// The harness: before, during and after one attack
// ---------------------------------------------------------------------------------------------

/// What the attacker saw (for the table) and what was not as documented.
#[derive(Debug, Default)]
struct Outcome {
    saw: String,
    problems: Vec<String>,
}

impl Outcome {
    fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.problems.push(problem());
        }
    }
}

/// Runs `attack` against the server `pid` while the healthy client talks to `target`, prints
/// the table row, and asserts the bounds, the healthy client's latency and the attack's own
/// checks.
async fn under_attack<F>(name: &str, pid: u32, target: Target, attack: F)
where
    F: Future<Output = Outcome>,
{
    let healthy = Healthy::start(target);
    let warm = healthy.warmed_up().await;
    if !warm {
        panic!(
            "{name}: the healthy client did not get going: {:?}",
            healthy.stop()
        );
    }
    let before = rss_kib(pid);
    let sampler = Sampler::start(pid);
    let started = Instant::now();
    let echoes_before = healthy.echoes.load(Ordering::Acquire);
    let outcome = attack.await;
    let during = healthy.echoes.load(Ordering::Acquire) - echoes_before;
    let took = started.elapsed();
    let peak = sampler.peak().max(before);
    // The attack's connections are closed: wait (bounded) for the memory to come back.
    let deadline = Instant::now() + SETTLE;
    let after = loop {
        let now = rss_kib(pid);
        if now <= before + AFTER_MARGIN_KIB || Instant::now() >= deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let health = healthy.stop();
    println!(
        "hostile | {name:<24} | rss before {:.1} MiB | peak {:.1} MiB | after {:.1} MiB | worst echo {:.1} ms ({} echoes, {during} during the {:.1} s attack) | attacker saw: {}",
        mib(before),
        mib(peak),
        mib(after),
        health.worst.as_secs_f64() * 1000.0,
        health.echoes,
        took.as_secs_f64(),
        outcome.saw
    );
    let mut problems = outcome.problems;
    if peak > before + PEAK_MARGIN_KIB {
        problems.push(format!(
            "peak RSS {:.1} MiB is over {:.1} MiB before + {} MiB",
            mib(peak),
            mib(before),
            PEAK_MARGIN_KIB / 1024
        ));
    }
    if after > before + AFTER_MARGIN_KIB {
        problems.push(format!(
            "RSS {:.1} MiB {SETTLE:?} after the attack is over {:.1} MiB before + {} MiB",
            mib(after),
            mib(before),
            AFTER_MARGIN_KIB / 1024
        ));
    }
    if health.worst >= ECHO_LIMIT {
        problems.push(format!(
            "the healthy client's worst echo took {:?}",
            health.worst
        ));
    }
    for f in &health.failures {
        problems.push(format!("the healthy client failed: {f}"));
    }
    assert!(problems.is_empty(), "{name}:\n  {}", problems.join("\n  "));
}

/// Counts of kinds of answers, shown as `kind ×n, kind ×n`.
#[derive(Debug, Default)]
struct Tally(BTreeMap<String, usize>);

impl Tally {
    fn add(&mut self, kind: impl Into<String>) {
        *self.0.entry(kind.into()).or_default() += 1;
    }

    fn get(&self, kind: &str) -> usize {
        self.0.get(kind).copied().unwrap_or(0)
    }

    fn merge(&mut self, other: Tally) {
        for (k, n) in other.0 {
            *self.0.entry(k).or_default() += n;
        }
    }

    fn total(&self) -> usize {
        self.0.values().sum()
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// Whether a quick attack started at `started` is due another round after `done` rounds.
fn another_round(started: Instant, done: usize) -> bool {
    done == 0 || (done < MAX_ROUNDS && started.elapsed() < MIN_ATTACK)
}

/// A source address of its own for round `round` of attacker `n` (so that repeated rounds do
/// not meet the per-address limits, which other tests attack).
fn attacker_ip(n: u8, round: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 100 + u8::try_from(round).unwrap(), n)
}

/// What an upgrade attempt got, for a message.
fn upgrade_result(r: &io::Result<Result<RawWs, HttpResponse>>) -> String {
    match r {
        Ok(Ok(_)) => "101".to_owned(),
        Ok(Err(res)) => format!("{} {}", res.status, res.body),
        Err(e) => format!("error {e}"),
    }
}

/// `min-max s` of some durations.
fn span(ds: &[Duration]) -> String {
    let min = ds.iter().min().copied().unwrap_or_default();
    let max = ds.iter().max().copied().unwrap_or_default();
    format!("{:.2}-{:.2} s", min.as_secs_f64(), max.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Raw clients: TCP from a chosen address, HTTP, WebSocket frames
// ---------------------------------------------------------------------------------------------

/// A TCP connection from `src` (any 127.x.y.z) to `to`, with a receive buffer of `rcvbuf`
/// bytes if given.
async fn tcp_from(src: Ipv4Addr, to: SocketAddr, rcvbuf: Option<u32>) -> io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    s.bind(SocketAddr::from((src, 0)))?;
    s.connect(to).await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Appends what `s` has to `buf`; an end of stream is an error.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(64 * 1024);
    match s.read_buf(buf).await? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

/// An HTTP response as a client saw it.
#[derive(Debug)]
struct HttpResponse {
    status: u16,
    body: String,
}

/// Reads one HTTP response (bytes past it stay in `buf`: a WebSocket's first frames, or the
/// next response); a server that does not answer within 5 s is an error, not a hang.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<HttpResponse> {
    tokio::time::timeout(Duration::from_secs(5), read_response_now(s, buf))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP response within 5 s",
            ))
        })
}

async fn read_response_now(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<HttpResponse> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(s, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad response head {head:?}")))?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let mut body = Vec::new();
    if status == 101 || status == 204 || status == 304 {
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(io::Error::other)?;
        while buf.len() < len {
            read_more(s, buf).await?;
        }
        body = buf.drain(..len).collect();
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                read_more(s, buf).await?;
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .map_err(io::Error::other)?;
            while buf.len() < line_end + 2 + size + 2 {
                read_more(s, buf).await?;
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    } else {
        while read_more(s, buf).await.is_ok() {}
        body = std::mem::take(buf);
    }
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET {WS_PATH} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A WebSocket frame from the server.
#[derive(Debug)]
struct Frame {
    op: u8,
    payload: Vec<u8>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// A close frame with this code (none if it had no payload).
    Close(Option<u16>),
    /// End of stream without a close frame.
    Eof,
    /// A read error (a reset).
    Error(io::ErrorKind),
    /// Still open at the deadline.
    Open,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Close(Some(c)) => write!(f, "close {c}"),
            Ended::Close(None) => f.write_str("close without code"),
            Ended::Eof => f.write_str("dropped (EOF)"),
            Ended::Error(k) => write!(f, "dropped ({k:?})"),
            Ended::Open => f.write_str("still open"),
        }
    }
}

/// What a socket received until it ended.
#[derive(Debug)]
struct Received {
    ended: Ended,
    /// Non-empty text messages (replies, events, publishes).
    messages: usize,
    bytes: usize,
}

/// A WebSocket client written on a raw TCP stream: the attacker sends what a library would
/// refuse to (any close code, frames of any size, nothing at all) and reads only when it wants.
/// It masks with the key 0 (a valid key that leaves the payload as it is, so large payloads are
/// not copied).
struct RawWs {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Upgrades `s`; a refusal is the server's HTTP response.
    async fn upgrade(
        mut s: TcpStream,
        addr: SocketAddr,
    ) -> io::Result<Result<RawWs, HttpResponse>> {
        s.write_all(upgrade_request(addr).as_bytes()).await?;
        let mut buf = Vec::new();
        let res = read_response(&mut s, &mut buf).await?;
        if res.status != 101 {
            return Ok(Err(res));
        }
        Ok(Ok(RawWs { s, buf }))
    }

    /// Connects from `src`, upgrades and sends `#handshake` with `token`; the handshake reply.
    async fn open(
        src: Ipv4Addr,
        addr: SocketAddr,
        rcvbuf: Option<u32>,
        token: Value,
    ) -> Result<(RawWs, Value), String> {
        let s = tcp_from(src, addr, rcvbuf)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut ws = RawWs::upgrade(s, addr)
            .await
            .map_err(|e| format!("upgrade: {e}"))?
            .map_err(|r| format!("upgrade refused: {r:?}"))?;
        let hello = json!({"event":"#handshake","data":{"authToken":token},"cid":1});
        ws.text(&hello.to_string())
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let reply = ws.reply(1, Duration::from_secs(5)).await?;
        Ok((ws, reply))
    }

    fn frame_bytes(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut head = vec![0x80 | op];
        let len = payload.len();
        if len < 126 {
            head.push(0x80 | len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            head.push(0x80 | 126);
            head.extend_from_slice(&len.to_be_bytes());
        } else {
            head.push(0x80 | 127);
            head.extend_from_slice(&(len as u64).to_be_bytes());
        }
        head.extend_from_slice(&[0, 0, 0, 0]);
        head
    }

    async fn send(&mut self, op: u8, payload: &[u8]) -> io::Result<()> {
        let head = Self::frame_bytes(op, payload);
        if payload.len() < 4096 {
            let mut all = head;
            all.extend_from_slice(payload);
            self.s.write_all(&all).await
        } else {
            self.s.write_all(&head).await?;
            self.s.write_all(payload).await
        }
    }

    async fn text(&mut self, t: &str) -> io::Result<()> {
        self.send(0x1, t.as_bytes()).await
    }

    async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.send(0x8, &payload).await
    }

    /// The next frame; `None` at the end of the stream (a partial frame included).
    async fn frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some((header, len)) = frame_len(&self.buf)
                && self.buf.len() >= header + len
            {
                let op = self.buf[0] & 0x0f;
                let payload = self.buf[header..header + len].to_vec();
                self.buf.drain(..header + len);
                return Ok(Some(Frame { op, payload }));
            }
            match read_more(&mut self.s, &mut self.buf).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next JSON message (pings answered on the way), or how the connection ended.
    async fn json(&mut self) -> Result<Value, Ended> {
        loop {
            match self.frame().await {
                Ok(Some(f)) if f.op == 0x1 && f.payload.is_empty() => {
                    let _ = self.text("").await;
                }
                Ok(Some(f)) if f.op == 0x1 => {
                    return Ok(serde_json::from_slice(&f.payload).unwrap_or(Value::Null));
                }
                Ok(Some(f)) if f.op == 0x8 => return Err(Ended::Close(close_code(&f.payload))),
                Ok(Some(_)) => {}
                Ok(None) => return Err(Ended::Eof),
                Err(e) => return Err(Ended::Error(e.kind())),
            }
        }
    }

    /// The reply to `cid` (other messages skipped), within `within`.
    async fn reply(&mut self, cid: u64, within: Duration) -> Result<Value, String> {
        let wait = async {
            loop {
                match self.json().await {
                    Ok(v) if v["rid"] == cid => return Ok(v),
                    Ok(_) => {}
                    Err(ended) => return Err(format!("{ended} before the reply to {cid}")),
                }
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .unwrap_or_else(|_| Err(format!("no reply to {cid} within {within:?}")))
    }

    /// Reads (answering pings and the server's close) until the connection ends or `within`
    /// passes.
    async fn until_end(&mut self, within: Duration) -> Received {
        let mut got = Received {
            ended: Ended::Open,
            messages: 0,
            bytes: 0,
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let f = match tokio::time::timeout_at(deadline, self.frame()).await {
                Err(_) => return got,
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => {
                    got.ended = Ended::Eof;
                    return got;
                }
                Ok(Err(e)) => {
                    got.ended = Ended::Error(e.kind());
                    return got;
                }
            };
            got.bytes += f.payload.len();
            match f.op {
                0x8 => {
                    // Answer the close, as a client does (the server may already be gone).
                    let _ = self.send(0x8, &f.payload).await;
                    got.ended = Ended::Close(close_code(&f.payload));
                    return got;
                }
                0x1 if f.payload.is_empty() => {
                    let _ = self.text("").await;
                }
                0x0..=0x2 => got.messages += 1,
                _ => {}
            }
        }
    }
}

/// The header length and payload length of the frame at the start of `buf`, if its header is
/// complete (server frames are not masked).
fn frame_len(buf: &[u8]) -> Option<(usize, usize)> {
    let b1 = *buf.get(1)?;
    let masked = if b1 & 0x80 != 0 { 4 } else { 0 };
    let (header, len) = match b1 & 0x7f {
        126 => (
            4,
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
        ),
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (10, usize::try_from(u64::from_be_bytes(b)).ok()?)
        }
        n => (2, usize::from(n)),
    };
    Some((header + masked, len))
}

fn close_code(payload: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]))
}

/// A TCP connection's end as its reader sees it: when, and the bytes it got before.
async fn await_close(s: &mut TcpStream, within: Duration) -> (Option<Duration>, usize) {
    let start = Instant::now();
    let mut got = 0;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + within).into(), s.read(&mut chunk)).await {
            Err(_) => return (None, got),
            Ok(Ok(0) | Err(_)) => return (Some(start.elapsed()), got),
            Ok(Ok(n)) => got += n,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Slowloris
// ---------------------------------------------------------------------------------------------

/// Before: 500 connections sending one header byte every 2 s stayed open for ever. Now:
/// `http_header_timeout_ms` closes a connection that has not sent a whole request head in
/// time, however busy it keeps. 200 connections send a header byte every 500 ms; each must be
/// closed at the header timeout (2 s here), not later (the server before the fix: still open at
/// the deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris() {
    let _turn = SERIAL.lock().await;
    let server = serve("slowloris", "", &[]).await;
    let addr = server.addr;
    under_attack(
        "slowloris",
        server.pid,
        Target::Serve(addr),
        slowloris_attack(addr),
    )
    .await;
}

async fn slowloris_attack(addr: SocketAddr) -> Outcome {
    const CONNS: usize = 200;
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let tasks: Vec<_> = (0..CONNS)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = tcp_from(attacker, addr, None).await.unwrap();
                let opened = Instant::now();
                let head = b"GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nX-Slow: ";
                let mut chunk = [0u8; 1024];
                let mut sent = 0;
                let deadline = opened + HEADER_TIMEOUT + Duration::from_secs(3);
                loop {
                    let byte = head.get(sent).copied().unwrap_or(b'a');
                    if s.write_all(&[byte]).await.is_err() {
                        return Some(opened.elapsed());
                    }
                    sent += 1;
                    let pause = tokio::time::sleep(Duration::from_millis(500));
                    tokio::select! {
                        r = s.read(&mut chunk) => match r {
                            Ok(0) | Err(_) => return Some(opened.elapsed()),
                            // The server may answer before closing; keep reading.
                            Ok(_) => {}
                        },
                        () = pause => {}
                    }
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
            })
        })
        .collect();
    let mut out = Outcome::default();
    let mut closed = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Some(d) => closed.push(d),
            None => out.problems.push(format!(
                "a slowloris connection is still open {:?} after it opened",
                HEADER_TIMEOUT + Duration::from_secs(3)
            )),
        }
    }
    out.problems.dedup();
    let early = closed
        .iter()
        .filter(|d| **d < HEADER_TIMEOUT - Duration::from_millis(200))
        .count();
    out.check(early == 0, || {
        format!("{early} connections closed well before the header timeout")
    });
    out.saw = format!("{}/{CONNS} closed after {}", closed.len(), span(&closed));
    out
}

// ---------------------------------------------------------------------------------------------
// 2. Idle TCP connections
// ---------------------------------------------------------------------------------------------

/// Before: bare TCP connections that send nothing took every file handle (20,000). Now the
/// header timeout closes them. 300 idle connections, each closed at 2 s with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp() {
    let _turn = SERIAL.lock().await;
    let server = serve("idle_tcp", "", &[]).await;
    let addr = server.addr;
    under_attack(
        "idle_tcp",
        server.pid,
        Target::Serve(addr),
        idle_tcp_attack(addr),
    )
    .await;
}

async fn idle_tcp_attack(addr: SocketAddr) -> Outcome {
    const CONNS: usize = 300;
    let attacker = Ipv4Addr::new(127, 0, 0, 3);
    let tasks: Vec<_> = (0..CONNS)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = tcp_from(attacker, addr, None).await.unwrap();
                await_close(&mut s, HEADER_TIMEOUT + Duration::from_secs(3)).await
            })
        })
        .collect();
    let mut out = Outcome::default();
    let mut closed = Vec::new();
    let mut open = 0;
    let mut bytes = 0;
    for t in tasks {
        let (when, got) = t.await.unwrap();
        bytes += got;
        match when {
            Some(d) => closed.push(d),
            None => open += 1,
        }
    }
    out.check(open == 0, || {
        format!("{open} idle connections still open after 5 s")
    });
    let early = closed
        .iter()
        .filter(|d| **d < HEADER_TIMEOUT - Duration::from_millis(200))
        .count();
    out.check(early == 0, || {
        format!("{early} idle connections closed well before the header timeout")
    });
    out.saw = format!(
        "{}/{CONNS} closed after {}, {bytes} bytes",
        closed.len(),
        span(&closed)
    );
    out
}

/// `address_tcp_limit`: TCP connections from one peer address over the limit are closed at
/// once, with nothing written; another address is still served. 300 idle connections from one
/// address against a limit of 100: 200 closed at once, 100 at the header timeout (the server
/// before: all 300 held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_per_address_limit() {
    let _turn = SERIAL.lock().await;
    let server = serve("tcp_per_address_limit", "address_tcp_limit = 100", &[]).await;
    let addr = server.addr;
    under_attack(
        "tcp_per_address_limit",
        server.pid,
        Target::Serve(addr),
        tcp_per_address_limit_attack(addr),
    )
    .await;
}

async fn tcp_per_address_limit_attack(addr: SocketAddr) -> Outcome {
    const CONNS: usize = 300;
    const LIMIT: usize = 100;
    let attacker = Ipv4Addr::new(127, 0, 0, 4);
    let (connected_tx, mut connected) = tokio::sync::mpsc::channel(CONNS);
    let tasks: Vec<_> = (0..CONNS)
        .map(|_| {
            let connected_tx = connected_tx.clone();
            tokio::spawn(async move {
                let mut s = tcp_from(attacker, addr, None).await.unwrap();
                let _ = connected_tx.send(()).await;
                await_close(&mut s, HEADER_TIMEOUT + Duration::from_secs(3)).await
            })
        })
        .collect();
    drop(connected_tx);
    tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..CONNS {
            connected.recv().await.expect("a connect task failed");
        }
    })
    .await
    .expect("the attacker's connections did not open within 10 s");
    // The attacker's address is full; another one is served.
    let other = tcp_from(Ipv4Addr::new(127, 0, 0, 5), addr, None)
        .await
        .unwrap();
    let other = RawWs::upgrade(other, addr).await;
    let other_ok = matches!(other, Ok(Ok(_)));
    let mut out = Outcome::default();
    out.check(other_ok, || {
        format!(
            "another address while one was at its TCP limit: {}",
            upgrade_result(&other)
        )
    });
    let (mut at_once, mut at_timeout, mut other_times) = (Vec::new(), Vec::new(), Vec::new());
    let mut open = 0;
    let mut bytes = 0;
    for t in tasks {
        let (when, got) = t.await.unwrap();
        bytes += got;
        match when {
            None => open += 1,
            // At accept, well before the header timeout: a connect the kernel's accept queue
            // delayed (a SYN retransmitted after 1 s) is accepted, and closed, that much later.
            Some(d) if d < HEADER_TIMEOUT - Duration::from_millis(500) => at_once.push(d),
            Some(d) if d >= HEADER_TIMEOUT - Duration::from_millis(200) => at_timeout.push(d),
            Some(d) => other_times.push(d),
        }
    }
    out.check(at_once.len() == CONNS - LIMIT, || {
        format!(
            "{} of {CONNS} connections closed at once, expected {}",
            at_once.len(),
            CONNS - LIMIT
        )
    });
    out.check(at_timeout.len() == LIMIT, || {
        format!(
            "{} connections held until the header timeout, expected {LIMIT}",
            at_timeout.len()
        )
    });
    out.check(other_times.is_empty() && open == 0, || {
        format!(
            "{open} still open, {} closed at other times ({})",
            other_times.len(),
            span(&other_times)
        )
    });
    out.check(bytes == 0, || {
        format!("the refused connections got {bytes} bytes")
    });
    out.saw = format!(
        "{} closed at once ({}), {} closed after {}, {bytes} bytes; another address upgraded: {other_ok}",
        at_once.len(),
        span(&at_once),
        at_timeout.len(),
        span(&at_timeout)
    );
    out
}

// ---------------------------------------------------------------------------------------------
// 3. Many WebSockets from one address
// ---------------------------------------------------------------------------------------------

/// Before: 19,987 WebSocket connections accepted from one address. Now
/// `address_connection_limit`: upgrades over it get HTTP 429 `Too many connections from this
/// address`. One address opens 250 sockets against a limit of 200 (200 × 101, 50 × 429) and
/// keeps trying for a second (429 each time); another address is served meanwhile; 20 sockets
/// closed give their places back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_connection_limit() {
    let _turn = SERIAL.lock().await;
    let server = serve(
        "address_connection_limit",
        "address_connection_limit = 200\naddress_connect_burst = 1000",
        &[],
    )
    .await;
    let addr = server.addr;
    under_attack(
        "address_connection_limit",
        server.pid,
        Target::Serve(addr),
        address_connection_limit_attack(addr),
    )
    .await;
}

async fn address_connection_limit_attack(addr: SocketAddr) -> Outcome {
    const OPEN: usize = 250;
    const MOST: usize = 5000;
    const LIMIT: usize = 200;
    const BODY: &str = "Too many connections from this address";
    let attacker = Ipv4Addr::new(127, 0, 0, 6);
    let mut held = Vec::new();
    let mut tally = Tally::default();
    let mut out = Outcome::default();
    let started = Instant::now();
    let mut tries = 0;
    while tries < OPEN || (tries < MOST && started.elapsed() < MIN_ATTACK) {
        tries += 1;
        let s = tcp_from(attacker, addr, None).await.unwrap();
        let r = RawWs::upgrade(s, addr).await;
        tally.add(upgrade_result(&r));
        if let Ok(Ok(ws)) = r {
            held.push(ws);
        }
    }
    let refused = format!("429 {BODY}");
    out.check(
        tally.get("101") == LIMIT && tally.get(&refused) == tries - LIMIT,
        || {
            format!(
                "expected 101 ×{LIMIT}, {refused} ×{}; got {tally}",
                tries - LIMIT
            )
        },
    );
    // Another address is not affected.
    let other = tcp_from(Ipv4Addr::new(127, 0, 0, 7), addr, None)
        .await
        .unwrap();
    let other = RawWs::upgrade(other, addr).await;
    out.check(matches!(other, Ok(Ok(_))), || {
        format!("another address got {}", upgrade_result(&other))
    });
    // Closing sockets gives their places back.
    held.truncate(LIMIT - 20);
    let freed = Instant::now();
    let mut reused = None;
    while freed.elapsed() < Duration::from_secs(5) {
        let s = tcp_from(attacker, addr, None).await.unwrap();
        if let Ok(Ok(ws)) = RawWs::upgrade(s, addr).await {
            held.push(ws);
            reused = Some(freed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out.check(reused.is_some(), || {
        "no upgrade accepted within 5 s after 20 sockets closed".to_owned()
    });
    drop(held);
    out.saw = format!(
        "{tally}; another address 101; a closed socket's place reused after {:.0} ms",
        reused.unwrap_or_default().as_secs_f64() * 1000.0
    );
    out
}

/// `address_connect_rate` / `address_connect_burst`: new sockets from one address beyond the
/// burst and the rate get HTTP 429 `Connection rate limit exceeded`, however few are open.
/// Upgrades, each closed at once, for 1.5 s, against a burst of 50 and 20 a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_connect_rate() {
    let _turn = SERIAL.lock().await;
    let server = serve(
        "address_connect_rate",
        "address_connection_limit = 0\naddress_connect_rate = 20\naddress_connect_burst = 50",
        &[],
    )
    .await;
    let addr = server.addr;
    under_attack(
        "address_connect_rate",
        server.pid,
        Target::Serve(addr),
        address_connect_rate_attack(addr),
    )
    .await;
}

async fn address_connect_rate_attack(addr: SocketAddr) -> Outcome {
    const BURST: usize = 50;
    const RATE: f64 = 20.0;
    const MOST: usize = 5000;
    const BODY: &str = "Connection rate limit exceeded";
    let attacker = Ipv4Addr::new(127, 0, 0, 8);
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut tries = 0;
    while tries < MOST && started.elapsed() < Duration::from_millis(1500) {
        tries += 1;
        let s = tcp_from(attacker, addr, None).await.unwrap();
        tally.add(upgrade_result(&RawWs::upgrade(s, addr).await));
    }
    let took = started.elapsed().as_secs_f64();
    let mut out = Outcome::default();
    let ok = tally.get("101");
    let refused = tally.get(&format!("429 {BODY}"));
    // The bucket: 50 at once, then 20 a second (half of that at least, the timing being
    // the test's).
    let most = BURST + (RATE * took).ceil() as usize + 1;
    let least = BURST + (RATE / 2.0 * took) as usize;
    out.check(ok >= least && ok <= most, || {
        format!("{ok} accepted in {took:.2} s; expected {least}..={most}")
    });
    out.check(refused >= 1 && ok + refused == tries, || {
        format!("expected only 101 and 429 {BODY}; got {tally}")
    });
    let other = tcp_from(Ipv4Addr::new(127, 0, 0, 9), addr, None)
        .await
        .unwrap();
    let other = RawWs::upgrade(other, addr).await;
    out.check(matches!(other, Ok(Ok(_))), || {
        format!("another address got {}", upgrade_result(&other))
    });
    out.saw = format!("{tally} in {took:.2} s; another address 101");
    out
}

// ---------------------------------------------------------------------------------------------
// 4. engine.io session flood
// ---------------------------------------------------------------------------------------------

/// One keep-alive connection from `src` sending `n` engine.io opens one after the other
/// (reconnecting if the server closes it); the answers, by kind.
async fn eio_opens(src: Ipv4Addr, addr: SocketAddr, n: usize) -> Tally {
    let request =
        format!("GET /engine.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut tally = Tally::default();
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    for _ in 0..n {
        if conn.is_none() {
            match tcp_from(src, addr, None).await {
                Ok(s) => conn = Some((s, Vec::new())),
                Err(e) => {
                    tally.add(format!("connect error {:?}", e.kind()));
                    continue;
                }
            }
        }
        let (s, buf) = conn.as_mut().unwrap();
        let answer = async {
            s.write_all(request.as_bytes()).await?;
            read_response(s, buf).await
        };
        match tokio::time::timeout(Duration::from_secs(5), answer).await {
            Ok(Ok(r)) if r.status == 200 && r.body.starts_with("0{\"sid\"") => {
                tally.add("200 open")
            }
            Ok(Ok(r)) => tally.add(format!("{} {}", r.status, r.body)),
            Ok(Err(e)) => {
                tally.add(format!("error {:?}", e.kind()));
                conn = None;
            }
            Err(_) => {
                tally.add("no answer in 5 s");
                conn = None;
            }
        }
    }
    tally
}

/// Before: 40 keep-alive connections looping engine.io opens for 30 s opened 298,000 sessions
/// (RSS 5 MB to 4.7 GB, about 16 KB a session, not given back). Now: the per-address limits
/// apply to engine.io opens (429) and `engineio_max_sessions` to all (503). 7,800 opens on 22
/// keep-alive connections: one address alone (limit 300 → 429), then ten addresses (the
/// server's 1,000 sessions → 503). Unlimited, 7,800 sessions would be about 120 MiB, over the
/// bound. Abandoned sessions are reclaimed by the heartbeat (1.5 s here).
///
/// glibc's allocator keeps about 21 KB per ended session; `serve` gives it back with
/// `malloc_trim` once enough sockets closed (sc-cli `trim.rs`), which the "after" bound checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engineio_session_flood() {
    let _turn = SERIAL.lock().await;
    let server = serve(
        "engineio_session_flood",
        "engineio_max_sessions = 1000\naddress_connection_limit = 300\naddress_connect_burst = 2000\n\
         address_connect_rate = 1000\nengineio_ping_interval_ms = 500\nengineio_ping_timeout_ms = 1000",
        &[],
    )
    .await;
    let addr = server.addr;
    under_attack(
        "engineio_session_flood",
        server.pid,
        Target::Serve(addr),
        engineio_session_flood_attack(addr),
    )
    .await;
}

async fn engineio_session_flood_attack(addr: SocketAddr) -> Outcome {
    const MAX_SESSIONS: u64 = 1000;
    const ADDRESS_LIMIT: usize = 300;
    let mut out = Outcome::default();
    // Watch the server's session count throughout.
    let watching = Arc::new(AtomicBool::new(true));
    let most = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (watching, most) = (watching.clone(), most.clone());
        tokio::spawn(async move {
            while watching.load(Ordering::Acquire) {
                let n = stats(addr).await["engineio_sessions"].as_u64().unwrap_or(0);
                most.fetch_max(n, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // One address, two connections, 400 opens each.
    let one = Ipv4Addr::new(127, 0, 1, 1);
    let a: Vec<_> = (0..2)
        .map(|_| tokio::spawn(eio_opens(one, addr, 400)))
        .collect();
    let mut phase_a = Tally::default();
    for t in a {
        phase_a.merge(t.await.unwrap());
    }
    let too_many = "429 Too many connections from this address";
    let (opened, refused) = (phase_a.get("200 open"), phase_a.get(too_many));
    out.check(
        opened <= ADDRESS_LIMIT && refused >= 1 && opened + refused == 800,
        || format!("one address: expected at most {ADDRESS_LIMIT} opens, the rest {too_many}; got {phase_a}"),
    );
    // Ten addresses, two connections each, 350 opens each.
    let b: Vec<_> = (1..=10u8)
        .flat_map(|i| (0..2).map(move |_| Ipv4Addr::new(127, 0, 2, i)))
        .map(|src| tokio::spawn(eio_opens(src, addr, 350)))
        .collect();
    let mut phase_b = Tally::default();
    for t in b {
        phase_b.merge(t.await.unwrap());
    }
    watching.store(false, Ordering::Release);
    watcher.await.unwrap();
    let full = "503 Too many engine.io sessions";
    let expected_kinds = [
        "200 open",
        full,
        too_many,
        "429 Connection rate limit exceeded",
    ];
    let unexpected: usize = phase_b
        .0
        .iter()
        .filter(|(k, _)| !expected_kinds.contains(&k.as_str()))
        .map(|(_, n)| n)
        .sum();
    out.check(
        phase_b.get(full) >= 1 && unexpected == 0 && phase_b.total() == 7000,
        || format!("ten addresses: expected 200, some {full} and 429s only; got {phase_b}"),
    );
    let most = most.load(Ordering::Acquire);
    out.check(most <= MAX_SESSIONS, || {
        format!("{most} engine.io sessions at once, over {MAX_SESSIONS}")
    });
    // The abandoned sessions are reclaimed.
    let reclaim = Instant::now();
    let reclaimed = stats_until(addr, Duration::from_secs(10), |s| {
        s["engineio_sessions"] == 0
    })
    .await;
    out.check(reclaimed, || {
        "engine.io sessions not reclaimed within 10 s".to_owned()
    });
    out.saw = format!(
        "one address: {phase_a}; ten addresses: {phase_b}; at most {most} sessions, all reclaimed {:.1} s later",
        reclaim.elapsed().as_secs_f64()
    );
    out
}

// ---------------------------------------------------------------------------------------------
// 5. Channel names
// ---------------------------------------------------------------------------------------------

/// Before: 1,000 `#subscribe` with 2 MB channel names pinned 3.9 GB. Now names over
/// `max_channel_name` (1024) are answered with `InvalidActionError`, and a message over
/// `max_payload` closes the socket with 1009. 4 sockets × 25 subscribes (and a publish) with
/// 1 MB names: the server before kept 100 MB of names, over the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_channel_names() {
    let _turn = SERIAL.lock().await;
    let server = serve(
        "huge_channel_names",
        "max_channel_name = 1024\nmax_payload = 2097152",
        &[],
    )
    .await;
    let addr = server.addr;
    under_attack(
        "huge_channel_names",
        server.pid,
        Target::Serve(addr),
        huge_channel_names_attack(addr),
    )
    .await;
}

async fn huge_channel_names_attack(addr: SocketAddr) -> Outcome {
    const SOCKETS: usize = 4;
    const SUBSCRIBES: u64 = 25;
    let attacker = Ipv4Addr::new(127, 0, 0, 10);
    let tasks: Vec<_> = (0..SOCKETS)
        .map(|i| tokio::spawn(long_names(attacker, addr, i, SUBSCRIBES)))
        .collect();
    let mut out = Outcome::default();
    let mut errors = Tally::default();
    let mut ends = Tally::default();
    for t in tasks {
        let (e, ended, problems) = t.await.unwrap();
        errors.merge(e);
        ends.add(ended.to_string());
        out.problems.extend(problems);
    }
    let expected = SOCKETS * SUBSCRIBES as usize;
    let refused = errors.get("InvalidActionError");
    let publish_refused = errors.get("publish: InvalidActionError");
    out.check(refused == expected && publish_refused == SOCKETS, || {
        format!("expected InvalidActionError ×{expected}, publish: InvalidActionError ×{SOCKETS}; got {errors}")
    });
    out.check(ends.get("close 1009") == SOCKETS, || {
        format!("a 3 MiB message: expected close 1009 ×{SOCKETS}; got {ends}")
    });
    out.saw = format!("{errors}; 3 MiB message: {ends}");
    out
}

/// One socket of [`huge_channel_names`]: `subscribes` subscribes and a publish with 1 MB channel
/// names, a short name (accepted), then a 3 MiB message. The error names of the replies, how
/// the socket ended, and what went wrong on the way.
async fn long_names(
    src: Ipv4Addr,
    addr: SocketAddr,
    i: usize,
    subscribes: u64,
) -> (Tally, Ended, Vec<String>) {
    let mut problems = Vec::new();
    let mut errors = Tally::default();
    let error_name = |r: &Value| r["error"]["name"].as_str().unwrap_or("no error").to_owned();
    let (mut ws, _) = RawWs::open(src, addr, None, Value::Null).await.unwrap();
    let long = "n".repeat(1_000_000);
    for k in 0..subscribes {
        let cid = 2 + k;
        let channel = format!("{long}{i}-{k}");
        let sub = json!({"event":"#subscribe","data":{"channel":channel},"cid":cid});
        ws.text(&sub.to_string()).await.unwrap();
        match ws.reply(cid, Duration::from_secs(10)).await {
            Ok(r) => errors.add(error_name(&r)),
            Err(e) => problems.push(e),
        }
    }
    let cid = 2 + subscribes;
    let publish = json!({"event":"#publish","data":{"channel":long,"data":1},"cid":cid});
    ws.text(&publish.to_string()).await.unwrap();
    match ws.reply(cid, Duration::from_secs(10)).await {
        Ok(r) => errors.add(format!("publish: {}", error_name(&r))),
        Err(e) => problems.push(e),
    }
    // A short name still works on the same socket.
    let cid = cid + 1;
    let sub = json!({"event":"#subscribe","data":{"channel":format!("short{i}")},"cid":cid});
    ws.text(&sub.to_string()).await.unwrap();
    match ws.reply(cid, Duration::from_secs(10)).await {
        Ok(r) if r.get("error").is_none() => {}
        Ok(r) => problems.push(format!("a short channel name was refused: {r}")),
        Err(e) => problems.push(e),
    }
    // Over max_payload: closed with 1009.
    let big = format!(r#"{{"event":"x","data":"{}"}}"#, "b".repeat(3 << 20));
    let _ = ws.text(&big).await;
    let end = ws.until_end(Duration::from_secs(10)).await;
    (errors, end.ended, problems)
}

/// `socket_channel_bytes`: the total of one socket's channel names is bounded (64 KiB): sockets
/// subscribe 70 names of 1000 bytes each; the first 65 are accepted, the rest get
/// `InvalidActionError`; an unsubscribe gives the bytes back. 10 sockets a round, for a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_channel_bytes() {
    let _turn = SERIAL.lock().await;
    let server = serve(
        "socket_channel_bytes",
        "socket_channel_bytes = 65536\nmax_channel_name = 1024\nsocket_channel_limit = 1000",
        &[],
    )
    .await;
    let addr = server.addr;
    under_attack(
        "socket_channel_bytes",
        server.pid,
        Target::Serve(addr),
        socket_channel_bytes_attack(addr),
    )
    .await;
}

async fn socket_channel_bytes_attack(addr: SocketAddr) -> Outcome {
    const SOCKETS: usize = 10;
    const NAMES: u64 = 70;
    const FIT: usize = 65536 / 1000;
    let mut out = Outcome::default();
    let mut accepted = Tally::default();
    let mut refused = Tally::default();
    let started = Instant::now();
    let mut rounds = 0;
    while another_round(started, rounds) {
        let attacker = attacker_ip(11, rounds);
        rounds += 1;
        let tasks: Vec<_> = (0..SOCKETS)
            .map(|i| {
                tokio::spawn(async move {
                    let mut problems = Vec::new();
                    let (mut ws, _) = RawWs::open(attacker, addr, None, Value::Null)
                        .await
                        .unwrap();
                    let name = |k: u64| format!("{i:03}-{k:03}-{}", "c".repeat(992));
                    let mut accepted = 0;
                    let mut refused = Tally::default();
                    for k in 0..NAMES {
                        let cid = 2 + k;
                        let sub =
                            json!({"event":"#subscribe","data":{"channel":name(k)},"cid":cid});
                        ws.text(&sub.to_string()).await.unwrap();
                        match ws.reply(cid, Duration::from_secs(10)).await {
                            Ok(r) if r.get("error").is_none() => accepted += 1,
                            Ok(r) => {
                                refused.add(r["error"]["name"].as_str().unwrap_or("?").to_owned())
                            }
                            Err(e) => problems.push(e),
                        }
                    }
                    // Unsubscribing gives the bytes back.
                    let unsub = json!({"event":"#unsubscribe","data":name(0)});
                    ws.text(&unsub.to_string()).await.unwrap();
                    let cid = 2 + NAMES;
                    let sub =
                        json!({"event":"#subscribe","data":{"channel":name(NAMES)},"cid":cid});
                    ws.text(&sub.to_string()).await.unwrap();
                    let again = ws.reply(cid, Duration::from_secs(10)).await;
                    if !matches!(&again, Ok(r) if r.get("error").is_none()) {
                        problems.push(format!(
                            "a subscribe after an unsubscribe was refused: {again:?}"
                        ));
                    }
                    (accepted, refused, problems)
                })
            })
            .collect();
        for t in tasks {
            let (a, r, problems) = t.await.unwrap();
            accepted.add(format!("{a} accepted"));
            refused.merge(r);
            out.problems.extend(problems);
        }
    }
    let sockets = rounds * SOCKETS;
    let over = sockets * (NAMES as usize - FIT);
    out.check(
            accepted.get(&format!("{FIT} accepted")) == sockets
                && refused.get("InvalidActionError") == over,
            || {
                format!(
                    "expected {FIT} accepted per socket and InvalidActionError ×{over}; got {accepted}; {refused}"
                )
            },
        );
    out.saw = format!(
        "{sockets} sockets: {accepted}, then {refused}; accepted again after an unsubscribe"
    );
    out
}

// ---------------------------------------------------------------------------------------------
// 6. Slow reader
// ---------------------------------------------------------------------------------------------

/// The bytes the kernel may buffer for one socket towards a subscriber: the server's send
/// buffer (at most `tcp_wmem`'s maximum) and the subscriber's receive buffer.
fn kernel_buffers(rcvbuf: u32) -> usize {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2).and_then(|n| n.parse().ok()))
        .unwrap_or(4 << 20);
    // The kernel doubles a requested buffer size.
    wmem_max + 2 * rcvbuf as usize
}

/// Before: a subscriber that stopped reading, fed 1 MB publishes, grew the server to 3.06 GB.
/// Now the bytes queued for a socket are bounded (`outbound_queue_bytes`, 4 MiB here): over it
/// the socket is closed with 4100, its queue dropped, the close frame written if the socket
/// takes it in time, else the connection dropped.
///
/// A probe subscriber stops reading while it gets enough 1 MiB publishes to fill the kernel's
/// buffers and its queue twice over, then reads again at once: it must get fewer publishes than
/// were sent, then the close frame 4100. Four sink subscribers never read while each gets 32
/// MiB: the server must drop them (they never take a close frame). The server before kept all
/// 140 MiB queued, over the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader() {
    let _turn = SERIAL.lock().await;
    let server = serve(
        "slow_reader",
        &format!("outbound_queue_bytes = {SLOW_QUEUE}"),
        &[],
    )
    .await;
    let addr = server.addr;
    under_attack(
        "slow_reader",
        server.pid,
        Target::Serve(addr),
        slow_reader_attack(addr),
    )
    .await;
}

async fn slow_reader_attack(addr: SocketAddr) -> Outcome {
    const MSG: usize = 1 << 20;
    const SINKS: usize = 4;
    const SINK_MSGS: usize = 32;
    const RCVBUF: u32 = 64 * 1024;
    let probe_msgs = (SLOW_QUEUE + kernel_buffers(RCVBUF)).div_ceil(MSG) + 2;
    let attacker = Ipv4Addr::new(127, 0, 0, 12);
    let mut out = Outcome::default();
    let clients_before = stats(addr).await["clients"].as_u64().unwrap();
    let subscriber = |channel: String| async move {
        let (mut ws, _) = RawWs::open(attacker, addr, Some(RCVBUF), Value::Null)
            .await
            .unwrap();
        ws.text(&json!({"event":"#subscribe","data":{"channel":channel},"cid":2}).to_string())
            .await
            .unwrap();
        let r = ws.reply(2, Duration::from_secs(5)).await.unwrap();
        assert!(r.get("error").is_none(), "{r}");
        ws
    };
    let mut probe = subscriber("slow/probe".to_owned()).await;
    let mut sinks = Vec::new();
    for i in 0..SINKS {
        sinks.push(subscriber(format!("slow/sink{i}")).await);
    }
    let (mut publisher, _) = RawWs::open(Ipv4Addr::new(127, 0, 0, 13), addr, None, Value::Null)
        .await
        .unwrap();
    let payload = "p".repeat(MSG);
    let mut cid = 1;
    let mut publish = async |channel: &str| -> Result<(), String> {
        cid += 1;
        let frame = format!(
            r##"{{"event":"#publish","data":{{"channel":"{channel}","data":"{payload}"}},"cid":{cid}}}"##
        );
        publisher.text(&frame).await.map_err(|e| e.to_string())?;
        let r = publisher.reply(cid, Duration::from_secs(10)).await?;
        match r.get("error") {
            None => Ok(()),
            Some(e) => Err(format!("publish refused: {e}")),
        }
    };
    // The probe: past its limit for sure, then it reads again at once.
    let started = Instant::now();
    for _ in 0..probe_msgs {
        if let Err(e) = publish("slow/probe").await {
            out.problems.push(e);
            break;
        }
    }
    let probe_fed = started.elapsed();
    let probe_reads = tokio::spawn(async move { probe.until_end(Duration::from_secs(10)).await });
    // The sinks: 32 MiB each, never read.
    'feed: for _ in 0..SINK_MSGS {
        for i in 0..SINKS {
            if let Err(e) = publish(&format!("slow/sink{i}")).await {
                out.problems.push(e);
                break 'feed;
            }
        }
    }
    let probe = probe_reads.await.unwrap();
    out.check(probe.ended == Ended::Close(Some(4100)), || {
        format!(
            "the probe subscriber: expected close 4100, saw {} after {} publishes",
            probe.ended, probe.messages
        )
    });
    out.check(probe.messages < probe_msgs, || {
        format!(
            "the probe subscriber got all {} of {probe_msgs} publishes",
            probe.messages
        )
    });
    // The sinks are dropped by the server (its client count goes back) although they never
    // read; then they read what the kernel held, and the end.
    let expected = clients_before + 1;
    let dropped = stats_until(addr, Duration::from_secs(10), |s| s["clients"] == expected).await;
    out.check(dropped, || {
        "the sinks were still counted as clients 10 s after the publishes".to_owned()
    });
    let mut sink_ends = Tally::default();
    let mut sink_msgs = Vec::new();
    for mut sink in sinks {
        let got = sink.until_end(Duration::from_secs(5)).await;
        let ok = matches!(
            got.ended,
            Ended::Eof | Ended::Error(_) | Ended::Close(Some(4100))
        );
        out.check(ok && got.messages < SINK_MSGS, || {
            format!(
                "a sink: {} after {} of {SINK_MSGS} publishes",
                got.ended, got.messages
            )
        });
        sink_ends.add(got.ended.to_string());
        sink_msgs.push(got.messages.to_string());
    }
    drop(publisher);
    out.saw = format!(
        "probe: {} after {} of {probe_msgs} publishes (fed in {:.1} s); sinks: {sink_ends} after {} of {SINK_MSGS}",
        probe.ended,
        probe.messages,
        probe_fed.as_secs_f64(),
        sink_msgs.join("/"),
    );
    out
}

// ---------------------------------------------------------------------------------------------
// 7. Unauthenticated store clients
// ---------------------------------------------------------------------------------------------

/// Before: the store buffered up to 32 MiB per connection before `AUTH`: 40 clients held 1.28
/// GB. Now a connection that has not authenticated may send only small requests, else it gets
/// `-ERR ...` and is closed. Each round, 10 clients announce a 32 MiB bulk and send it (the
/// store before: 320 MiB buffered, over the bound) and 10 send a request larger than the store
/// allows that is never complete (`*10` and nine 16,000-byte bulks); rounds for a second.
/// Meanwhile 50 clients send nothing: `--auth-timeout-ms` (1 s here) closes them with `-ERR`.
/// The healthy client sends `ECHO` after `AUTH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unauthenticated() {
    let _turn = SERIAL.lock().await;
    let dir = scratch_dir("store_unauthenticated");
    let server = start(
        "store_unauthenticated",
        dir,
        &[
            "store",
            "--port",
            "0",
            "--secret",
            STORE_SECRET,
            "--auth-timeout-ms",
            &STORE_AUTH_TIMEOUT.as_millis().to_string(),
        ],
        "store listening on ",
    )
    .await;
    let addr = server.addr;
    let target = Target::Store(addr, STORE_SECRET.to_owned());
    under_attack(
        "store_unauthenticated",
        server.pid,
        target,
        store_unauthenticated_attack(addr),
    )
    .await;
}

async fn store_unauthenticated_attack(addr: SocketAddr) -> Outcome {
    const EACH: usize = 10;
    const BULK: usize = 32 << 20;
    let mut out = Outcome::default();
    let mut replies = Tally::default();
    let mut most_written = 0;
    let idle: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = tcp_from(attacker_ip(18, 0), addr, None).await.unwrap();
                let opened = Instant::now();
                let mut got = Vec::new();
                let ended = loop {
                    let wait = Duration::from_secs(5);
                    match tokio::time::timeout(wait, s.read_buf(&mut got)).await {
                        Err(_) => break None,
                        Ok(Ok(0) | Err(_)) => break Some(opened.elapsed()),
                        Ok(Ok(_)) => {}
                    }
                };
                (String::from_utf8_lossy(&got).into_owned(), ended)
            })
        })
        .collect();
    let started = Instant::now();
    let mut rounds = 0;
    while another_round(started, rounds) {
        let attacker = attacker_ip(14, rounds);
        rounds += 1;
        let tasks: Vec<_> = (0..2 * EACH)
            .map(|i| tokio::spawn(unauthenticated(attacker, addr, i % 2 == 0, BULK)))
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let (reply, ended, written) = t.await.unwrap();
            let big = i % 2 == 0;
            out.check(reply.starts_with("-ERR") && ended != Ended::Open, || {
                let what = if big { "32 MiB bulk" } else { "large request" };
                format!("an unauthenticated client ({what}) got {reply:?}, then {ended}")
            });
            if big {
                most_written = most_written.max(written);
                out.check(written < BULK / 2, || {
                    format!("the store read {written} bytes of an unauthenticated 32 MiB bulk")
                });
            }
            let ended = match ended {
                Ended::Eof | Ended::Error(_) => "closed".to_owned(),
                e => e.to_string(),
            };
            replies.add(format!("{} then {ended}", reply.trim_end()));
        }
    }
    let mut idle_closed = Vec::new();
    let mut idle_replies = Tally::default();
    for t in idle {
        let (reply, ended) = t.await.unwrap();
        let in_time = ended.is_some_and(|d| {
            d >= STORE_AUTH_TIMEOUT - Duration::from_millis(100) && d < STORE_AUTH_TIMEOUT * 3
        });
        out.check(reply.starts_with("-ERR") && in_time, || {
            format!("an idle unauthenticated client got {reply:?}, closed after {ended:?}")
        });
        idle_closed.extend(ended);
        idle_replies.add(reply.trim_end().to_owned());
    }
    out.problems.dedup();
    out.saw = format!(
        "{} clients: {replies}; at most {:.1} MiB of a 32 MiB bulk written; 50 idle: {idle_replies}, closed after {}",
        rounds * 2 * EACH,
        most_written as f64 / 1_048_576.0,
        span(&idle_closed)
    );
    out
}

/// One unauthenticated store client: a `bulk`-byte SET (`big`), or a never complete request of
/// nine 16,000-byte bulks. What it read, how the connection ended, and the bytes of the bulk
/// it could write.
async fn unauthenticated(
    src: Ipv4Addr,
    addr: SocketAddr,
    big: bool,
    bulk: usize,
) -> (String, Ended, usize) {
    let s = tcp_from(src, addr, None).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk)).await {
                Err(_) => break Ended::Open,
                Ok(Ok(0)) => break Ended::Eof,
                Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => break Ended::Error(e.kind()),
            }
        };
        (String::from_utf8_lossy(&got).into_owned(), ended)
    });
    let (head, chunk, chunks, tail) = if big {
        let head = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${bulk}\r\n");
        let chunk = vec![b'x'; 256 * 1024];
        (head, chunk, bulk / (256 * 1024), &b"\r\n"[..])
    } else {
        let mut chunk = b"$16000\r\n".to_vec();
        chunk.extend_from_slice(&[b'y'; 16000]);
        chunk.extend_from_slice(b"\r\n");
        ("*10\r\n".to_owned(), chunk, 9, &b""[..])
    };
    let mut written = 0;
    let mut sent = wr.write_all(head.as_bytes()).await;
    for _ in 0..chunks {
        if sent.is_err() {
            break;
        }
        sent = wr.write_all(&chunk).await;
        if sent.is_ok() {
            written += chunk.len();
        }
    }
    if sent.is_ok() {
        let _ = wr.write_all(tail).await;
    }
    let (reply, ended) = reader.await.unwrap();
    (reply, ended, written)
}

// ---------------------------------------------------------------------------------------------
// 8. Invalid close codes
// ---------------------------------------------------------------------------------------------

/// Before: close frames with invalid codes were echoed. Now the server fails the connection with
/// 1002. Each invalid code three times a round (and the valid 1000 and 4000, still echoed),
/// rounds for a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_close_codes() {
    let _turn = SERIAL.lock().await;
    let server = serve("invalid_close_codes", "", &[]).await;
    let addr = server.addr;
    under_attack(
        "invalid_close_codes",
        server.pid,
        Target::Serve(addr),
        invalid_close_codes_attack(addr),
    )
    .await;
}

async fn invalid_close_codes_attack(addr: SocketAddr) -> Outcome {
    const INVALID: [u16; 9] = [0, 999, 1004, 1006, 1016, 1100, 2000, 2999, 5000];
    const VALID: [u16; 2] = [1000, 4000];
    let mut out = Outcome::default();
    let mut answers = Tally::default();
    let started = Instant::now();
    let mut rounds = 0;
    while another_round(started, rounds) {
        let attacker = attacker_ip(15, rounds);
        rounds += 1;
        let tasks: Vec<_> = INVALID
            .iter()
            .chain(&VALID)
            .flat_map(|&code| (0..3).map(move |_| code))
            .map(|code| {
                tokio::spawn(async move {
                    let (mut ws, _) = RawWs::open(attacker, addr, None, Value::Null)
                        .await
                        .unwrap();
                    ws.close(code, "bye").await.unwrap();
                    (code, ws.until_end(Duration::from_secs(5)).await.ended)
                })
            })
            .collect();
        for t in tasks {
            let (code, ended) = t.await.unwrap();
            let valid = VALID.contains(&code);
            let expected = if valid { code } else { 1002 };
            out.check(ended == Ended::Close(Some(expected)), || {
                format!("close {code}: expected close {expected}, saw {ended}")
            });
            let kind = if valid {
                format!("{code} →")
            } else {
                "invalid →".to_owned()
            };
            answers.add(format!("{kind} {ended}"));
        }
    }
    out.saw = answers.to_string();
    out
}

// ---------------------------------------------------------------------------------------------
// 9. A token that never expires
// ---------------------------------------------------------------------------------------------

fn sign(payload: &Value, key: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        payload,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

/// Before: a correctly signed token with `"exp":"never"` was accepted. Now a token whose `exp`,
/// `nbf` or `iat` is not a number is invalid: the handshake says `isAuthenticated:false` with
/// an `authError`, and `whoami` sees no token. Each such token 20 times a round, rounds for a
/// second; a token signed the same way with numbers is accepted (the key is right).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exp_never() {
    let _turn = SERIAL.lock().await;
    let server = serve("token_exp_never", "", &["--auth-key", AUTH_KEY]).await;
    let addr = server.addr;
    under_attack(
        "token_exp_never",
        server.pid,
        Target::Serve(addr),
        token_exp_never_attack(addr),
    )
    .await;
}

async fn token_exp_never_attack(addr: SocketAddr) -> Outcome {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut out = Outcome::default();
    let good = sign(
        &json!({"username":"ann","iat":now,"exp":now + 3600}),
        AUTH_KEY,
    );
    let (mut ws, reply) = RawWs::open(attacker_ip(16, 0), addr, None, json!(good))
        .await
        .unwrap();
    out.check(reply["data"]["isAuthenticated"] == true, || {
        format!("a good token was refused: {reply}")
    });
    ws.text(r#"{"event":"whoami","cid":2}"#).await.unwrap();
    let who = ws.reply(2, Duration::from_secs(5)).await;
    out.check(
        matches!(&who, Ok(r) if r["data"]["username"] == "ann"),
        || format!("a good token: whoami {who:?}"),
    );
    let bad = [
        json!({"username":"eve","exp":"never"}),
        json!({"username":"eve","iat":now,"exp":now + 3600,"nbf":"never"}),
        json!({"username":"eve","iat":"never","exp":now + 3600}),
    ];
    let tokens: Vec<(Value, String)> = bad
        .into_iter()
        .map(|p| {
            let t = sign(&p, AUTH_KEY);
            (p, t)
        })
        .collect();
    let mut seen = Tally::default();
    let started = Instant::now();
    let mut rounds = 0;
    while another_round(started, rounds) {
        let attacker = attacker_ip(16, rounds);
        rounds += 1;
        let tasks: Vec<_> = tokens
            .iter()
            .flat_map(|t| (0..20).map(move |_| t.clone()))
            .map(|(payload, token)| {
                tokio::spawn(async move {
                    let (mut ws, reply) = RawWs::open(attacker, addr, None, json!(token))
                        .await
                        .unwrap();
                    ws.text(r#"{"event":"whoami","cid":2}"#).await.unwrap();
                    let who = ws.reply(2, Duration::from_secs(5)).await;
                    (payload, reply, who)
                })
            })
            .collect();
        for t in tasks {
            let (payload, reply, who) = t.await.unwrap();
            let data = &reply["data"];
            out.check(
                data["isAuthenticated"] == false && data["authError"].is_object(),
                || format!("token {payload}: handshake reply {reply}"),
            );
            out.check(matches!(&who, Ok(r) if r["data"].is_null()), || {
                format!("token {payload}: whoami {who:?}")
            });
            let err = data["authError"]["name"].as_str().unwrap_or("no authError");
            seen.add(format!("isAuthenticated {} {err}", data["isAuthenticated"]));
        }
    }
    out.saw = format!("{seen}; a good token accepted");
    out
}

// ---------------------------------------------------------------------------------------------
// 10. Inbound flood
// ---------------------------------------------------------------------------------------------

/// `inbound_rate_messages` / `inbound_rate_bytes` (100 messages and 1 MiB a second here): a
/// socket over either is closed with 4429. Each round, 10 sockets send 1,000 small messages at
/// once and 10 send three 600 KiB messages; rounds for a second. The healthy client's 10
/// echoes a second are under both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_flood() {
    let _turn = SERIAL.lock().await;
    let server = serve(
        "inbound_flood",
        "inbound_rate_messages = 100\ninbound_rate_bytes = 1048576",
        &[],
    )
    .await;
    let addr = server.addr;
    under_attack(
        "inbound_flood",
        server.pid,
        Target::Serve(addr),
        inbound_flood_attack(addr),
    )
    .await;
}

async fn inbound_flood_attack(addr: SocketAddr) -> Outcome {
    const EACH: usize = 10;
    let mut out = Outcome::default();
    let mut seen = Tally::default();
    let started = Instant::now();
    let mut rounds = 0;
    while another_round(started, rounds) {
        let attacker = attacker_ip(17, rounds);
        rounds += 1;
        let tasks: Vec<_> = (0..2 * EACH)
            .map(|i| {
                tokio::spawn(async move {
                    let (mut ws, _) = RawWs::open(attacker, addr, None, Value::Null)
                        .await
                        .unwrap();
                    if i % 2 == 0 {
                        let mut burst = Vec::new();
                        for _ in 0..1000 {
                            let m = br#"{"event":"ping"}"#;
                            burst.extend_from_slice(&RawWs::frame_bytes(0x1, m));
                            burst.extend_from_slice(m);
                        }
                        let _ = ws.s.write_all(&burst).await;
                    } else {
                        let big =
                            format!(r#"{{"event":"ping","data":"{}"}}"#, "z".repeat(600 << 10));
                        for _ in 0..3 {
                            if ws.text(&big).await.is_err() {
                                break;
                            }
                        }
                    }
                    (i % 2 == 0, ws.until_end(Duration::from_secs(5)).await.ended)
                })
            })
            .collect();
        for t in tasks {
            let (messages, ended) = t.await.unwrap();
            let what = if messages {
                "1000 messages"
            } else {
                "3 × 600 KiB"
            };
            out.check(ended == Ended::Close(Some(4429)), || {
                format!("{what}: expected close 4429, saw {ended}")
            });
            seen.add(format!("{what} → {ended}"));
        }
    }
    out.saw = seen.to_string();
    out
}
