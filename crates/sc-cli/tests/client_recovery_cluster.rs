//! Missed-message recovery (issue 19) across the failures of a cluster: `sc-client` through the
//! balancer of `socketcluster run` (two workers, one store process, a `[[worker.history]]` rule
//! for `rec-*`), while a publisher connected straight to the other worker publishes one message
//! a millisecond:
//!
//! - kill -9 of the worker the subscriber is on (found by asking each worker's `GET /stats`):
//!   the subscriber reconnects by itself and ends with every message once, in order, no gap;
//! - kill -9 of the store process, which the master respawns with an empty history (a new
//!   epoch): the subscriber stays connected and gets a `Gap` naming the new epoch, then every
//!   message of the new epoch; every message published after the notice arrived arrives.
//!
//! The two tests take turns ([`SERIAL`]): each runs a cluster of four processes (the debug
//! binary cargo built) on a shared machine. Each prints its figures (`cluster recovery` lines):
//! `cargo test -p sc-cli --test client_recovery_cluster -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../sc-client/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{AUTH_KEY, WAIT};
use futures_util::StreamExt as _;
use parking_lot::Mutex;
use sc_client::{ChannelEvent, Client, ConnectionEvent, Position};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

const BIN: &str = env!("CARGO_BIN_EXE_socketcluster");

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Channels `rec-*` keep 10,000 messages for 5 minutes. A child that dies 100 ms after its
/// start is respawned at once (the default 2 s would count the tests' kills, a moment after the
/// cluster started, as a crash loop and wait 100 ms first).
const CONFIG: &str = r#"
stable_after_ms = 100

[[worker.history]]
channel = "rec-*"
max_len = 10000
max_age_ms = 300000
"#;

/// The publisher's pace.
const PACE: Duration = Duration::from_millis(1);
/// Messages published in the worker-kill test, and the one after which the worker is killed.
const TOTAL: u64 = 1_000;
const KILL_AT: u64 = 300;
/// In the store test: messages published before the kill, and after the gap notice arrived.
const BEFORE: u64 = 300;
const AFTER: u64 = 1_000;
/// How long a failure may take to be noticed and repaired.
const RECOVER: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// A child of the master, as `GET /health` lists it.
#[derive(Debug, Clone)]
struct ChildInfo {
    role: String,
    id: u64,
    pid: u32,
    addr: String,
    state: String,
}

/// The master's output: stdout lines in order (`child ready ...`, `child exited ...`), each with
/// when it arrived, and the children's log lines (stderr).
#[derive(Default)]
struct Output {
    stdout: Mutex<Vec<(String, Instant)>>,
    stderr: Mutex<Vec<String>>,
    changed: Notify,
}

impl Output {
    fn push(&self, stdout: bool, line: String) {
        if stdout {
            self.stdout.lock().push((line, Instant::now()));
        } else {
            self.stderr.lock().push(line);
        }
        self.changed.notify_waiters();
    }

    /// The first stdout line at index `from` or later that `want` accepts, and when it arrived;
    /// waits up to `limit`.
    async fn wait_line(
        &self,
        from: usize,
        limit: Duration,
        want: impl Fn(&str) -> bool,
    ) -> (String, Instant) {
        let found = timeout(limit, async {
            loop {
                let changed = self.changed.notified();
                if let Some(line) = self.stdout.lock().iter().skip(from).find(|l| want(&l.0)) {
                    return line.clone();
                }
                changed.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "no such line of the master within {limit:?}\n{}",
                self.tail()
            )
        })
    }

    fn mark(&self) -> usize {
        self.stdout.lock().len()
    }

    /// The pids `child ready` lines named.
    fn child_pids(&self) -> Vec<u32> {
        self.stdout
            .lock()
            .iter()
            .filter_map(|l| ready_line(&l.0).map(|(_, _, pid)| pid))
            .collect()
    }

    /// The last lines of both streams, for failure messages.
    fn tail(&self) -> String {
        let out: Vec<String> = self.stdout.lock().iter().map(|l| l.0.clone()).collect();
        let err = self.stderr.lock();
        let last = |v: &[String]| v[v.len().saturating_sub(30)..].join("\n");
        format!("--- stdout\n{}\n--- stderr\n{}", last(&out), last(&err))
    }

    /// The children's warnings and errors (what the server said went wrong), at most `n`.
    fn warnings(&self, n: usize) -> Vec<String> {
        self.stderr
            .lock()
            .iter()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .take(n)
            .cloned()
            .collect()
    }
}

/// `(role, id, pid)` of a `child ready role=R id=N pid=P addr=A` line.
fn ready_line(line: &str) -> Option<(String, u64, u32)> {
    let rest = line.strip_prefix("child ready ")?;
    let mut role = None;
    let mut id = None;
    let mut pid = None;
    for field in rest.split(' ') {
        match field.split_once('=') {
            Some(("role", v)) => role = Some(v.to_owned()),
            Some(("id", v)) => id = v.parse().ok(),
            Some(("pid", v)) => pid = v.parse().ok(),
            _ => {}
        }
    }
    Some((role?, id?, pid?))
}

/// `socketcluster run` with two workers, one store process and one balancer on ports of its
/// choosing. Dropped, it kills the master and every child it named that still runs our binary.
struct Cluster {
    master: Child,
    /// The balancer's port.
    port: u16,
    management: String,
    out: Arc<Output>,
    config: PathBuf,
}

impl Cluster {
    async fn start(name: &str) -> Cluster {
        let config = std::env::temp_dir().join(format!(
            "sc-recovery-cluster-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&config, CONFIG).unwrap();
        let mut master = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--management-port", "0"])
            .args(["--workers", "2", "--stores", "1", "--balancers", "1"])
            .args(["--auth-key", AUTH_KEY])
            .env_remove("SC_AUTH_KEY")
            .env_remove("SC_STORE_SECRET")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let out = Arc::new(Output::default());
        spawn_lines(master.stdout.take().unwrap(), out.clone(), true);
        spawn_lines(master.stderr.take().unwrap(), out.clone(), false);
        let mut cluster = Cluster {
            master,
            port: 0,
            management: String::new(),
            out,
            config,
        };
        // socketcluster cluster listening on http://H:P/ (management http://H:M/)
        let (line, _) = cluster
            .out
            .wait_line(0, Duration::from_secs(60), |l| {
                l.starts_with("socketcluster cluster listening on ")
            })
            .await;
        let addrs: Vec<&str> = line
            .split("http://")
            .skip(1)
            .map(|s| s.split('/').next().unwrap())
            .collect();
        assert_eq!(addrs.len(), 2, "{line}");
        cluster.port = addrs[0].rsplit(':').next().unwrap().parse().unwrap();
        cluster.management = addrs[1].to_owned();
        cluster
    }

    /// The balancer's URL.
    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// `GET /health`: the children, each running.
    async fn health(&self) -> Vec<ChildInfo> {
        let (status, body) = http_get(&self.management, "/health").await;
        assert_eq!(status, 200, "GET /health: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| ChildInfo {
                role: c["role"].as_str().unwrap().to_owned(),
                id: c["id"].as_u64().unwrap(),
                pid: u32::try_from(c["pid"].as_u64().unwrap()).unwrap(),
                addr: c["addr"].as_str().unwrap().to_owned(),
                state: c["state"].as_str().unwrap().to_owned(),
            })
            .collect()
    }

    /// The running children of `role`, by id.
    async fn children(&self, role: &str) -> Vec<ChildInfo> {
        let mut v: Vec<ChildInfo> = self
            .health()
            .await
            .into_iter()
            .filter(|c| c.role == role)
            .collect();
        v.sort_by_key(|c| c.id);
        for c in &v {
            assert_eq!(c.state, "running", "{c:?}");
        }
        v
    }

    /// The sockets open on each worker (`GET /stats` of the worker itself, not through the
    /// balancer), asked again until `want` accepts them (at most `WAIT`).
    async fn clients(&self, workers: &[ChildInfo], want: impl Fn(&[u64]) -> bool) -> Vec<u64> {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut counts = Vec::new();
            for w in workers {
                let (status, body) = http_get(&w.addr, "/stats").await;
                assert_eq!(status, 200, "GET /stats of worker {}: {body}", w.id);
                let v: Value = serde_json::from_str(&body).unwrap();
                counts.push(v["clients"].as_u64().unwrap());
            }
            if want(&counts) {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "clients per worker: {counts:?}, not as expected"
            );
        }
    }

    /// SIGKILL to `child` (the pid /health gave, checked against the last `child ready` line of
    /// its slot).
    fn kill(&self, child: &ChildInfo) -> Instant {
        let last = self
            .out
            .stdout
            .lock()
            .iter()
            .rev()
            .filter_map(|l| ready_line(&l.0))
            .find(|(role, id, _)| *role == child.role && *id == child.id)
            .map(|(_, _, pid)| pid);
        assert_eq!(
            last,
            Some(child.pid),
            "{child:?}: not the pid of its last start"
        );
        let pid = rustix::process::Pid::from_raw(i32::try_from(child.pid).unwrap()).unwrap();
        let at = Instant::now();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        at
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.master.start_kill();
        // The children exit when the master's end closes their stdin; any that has not yet
        // (and still runs our binary: the pid was not reused) is killed.
        let ours = std::fs::canonicalize(BIN).ok();
        for pid in self.out.child_pids() {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            if exe.is_some()
                && exe == ours
                && let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Reads `stream` line by line into `out`.
fn spawn_lines(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    out: Arc<Output>,
    stdout: bool,
) {
    let mut lines = BufReader::new(stream).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            out.push(stdout, line);
        }
    });
}

/// `GET path` from `addr` (HTTP/1.1, one request): the status and the body.
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    timeout(WAIT, async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
                let len = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                });
                if len.is_some_and(|len| body.len() >= len) || (n == 0 && len.is_none()) {
                    return (status, body.to_owned());
                }
            }
            assert!(
                n > 0,
                "GET {path} of {addr}: the connection ended early: {text}"
            );
        }
    })
    .await
    .unwrap_or_else(|_| panic!("GET {path} of {addr} timed out"))
}

// ---------------------------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------------------------

/// Publishes `{"n":n}` for n = 1, 2, ... to its channel, one every [`PACE`], until `end` (which
/// may be lowered while it runs; the last one with an acknowledgement). `published` counts them;
/// the task returns when the last one was acknowledged, and its `n`.
struct Publisher {
    published: Arc<AtomicU64>,
    end: Arc<AtomicU64>,
    task: JoinHandle<(Instant, u64)>,
}

impl Publisher {
    /// Starts publishing; `at` is told when `at.0` messages were published.
    fn start(
        client: Client,
        channel: &str,
        end: u64,
        mut at: Option<(u64, oneshot::Sender<()>)>,
    ) -> Publisher {
        let published = Arc::new(AtomicU64::new(0));
        let end = Arc::new(AtomicU64::new(end));
        let channel = channel.to_owned();
        let (count, stop) = (published.clone(), end.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PACE);
            let mut n = 0;
            loop {
                tick.tick().await;
                n += 1;
                if n >= stop.load(Ordering::Acquire) {
                    timeout(WAIT, client.invoke_publish(&channel, &json!({ "n": n })))
                        .await
                        .unwrap()
                        .unwrap();
                    count.store(n, Ordering::Release);
                    return (Instant::now(), n);
                }
                client.publish(&channel, &json!({ "n": n })).unwrap();
                count.store(n, Ordering::Release);
                if at.as_ref().is_some_and(|(k, _)| *k == n)
                    && let Some((_, tx)) = at.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        Publisher {
            published,
            end,
            task,
        }
    }

    fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }
}

/// What the subscriber saw, with when it saw it and how many messages were published by then.
#[derive(Debug)]
enum Seen {
    Message { n: u64, position: Option<Position> },
    Gap,
    Notice(Value),
    Closed(u16),
    Open,
    Other(String),
}

#[derive(Debug)]
struct Log {
    seen: Seen,
    at: Instant,
    published: u64,
}

/// The subscriber's channel events, its connection events and its `#gap` notices, forwarded as
/// they come (each stamped) so that the test reads them in its own time.
fn follow(
    subscriber: &Client,
    mut ch: sc_client::Channel,
    published: Arc<AtomicU64>,
) -> mpsc::UnboundedReceiver<Log> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut events = subscriber.events();
    let mut notices = subscriber.receiver("#gap");
    tokio::spawn(async move {
        loop {
            let seen = tokio::select! {
                ev = ch.next() => match ev {
                    Some(ChannelEvent::Message(m)) => {
                        let v: Value = m.json().unwrap();
                        Seen::Message { n: v["n"].as_u64().unwrap(), position: m.position().cloned() }
                    }
                    Some(ChannelEvent::Gap) => Seen::Gap,
                    Some(other) => Seen::Other(format!("{other:?}")),
                    None => return,
                },
                ev = events.next() => match ev {
                    Some(ConnectionEvent::Closed { code, .. }) => Seen::Closed(code.0),
                    Some(ConnectionEvent::Open { .. }) => Seen::Open,
                    Some(_) => continue,
                    None => return,
                },
                notice = notices.recv() => match notice {
                    Some(m) => Seen::Notice(m.json().unwrap()),
                    None => return,
                },
            };
            let log = Log {
                seen,
                at: Instant::now(),
                published: published.load(Ordering::Acquire),
            };
            if tx.send(log).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads the log into `into` until `stop` accepts an entry, and returns that entry's index;
/// fails after `limit`.
async fn read_until(
    log: &mut mpsc::UnboundedReceiver<Log>,
    into: &mut Vec<Log>,
    limit: Duration,
    what: &str,
    stop: impl Fn(&Seen) -> bool,
) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let entry = timeout(
            deadline.saturating_duration_since(Instant::now()),
            log.recv(),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: not seen within {limit:?}; last seen: {:?}",
                into.last()
            )
        })
        .expect("the subscriber's log ended");
        let done = stop(&entry.seen);
        into.push(entry);
        if done {
            return into.len() - 1;
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// The subscriber through the balancer on `channel`, subscribed; the worker it is on and the
/// other one; a publisher connected straight to the other worker.
async fn subscriber_and_publisher(
    cluster: &Cluster,
    channel: &str,
) -> (
    Client,
    sc_client::Channel,
    Position,
    ChildInfo,
    ChildInfo,
    Client,
) {
    let workers = cluster.children("worker").await;
    assert_eq!(workers.len(), 2);
    let subscriber = Client::builder(&cluster.url()).connect().await.unwrap();
    let mut ch = subscriber.subscribe(channel);
    timeout(WAIT, ch.wait_subscribed()).await.unwrap().unwrap();
    let start = ch
        .position()
        .expect("the subscribe reply carries a position");
    assert_eq!(start.offset, 0, "a new channel starts at offset 0");
    // The worker with the one socket open is the subscriber's.
    let counts = cluster
        .clients(&workers, |c| c.iter().sum::<u64>() == 1)
        .await;
    let on = usize::from(counts[1] == 1);
    let (on, other) = (workers[on].clone(), workers[1 - on].clone());
    let publisher = Client::builder(&format!("ws://{}", other.addr))
        .connect()
        .await
        .unwrap();
    let both = cluster.clients(&workers, |c| c == [1, 1]).await;
    assert_eq!(both, [1, 1]);
    (subscriber, ch, start, on, other, publisher)
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_subscribers_worker_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start("worker").await;
    let channel = "rec-worker-kill";
    let (subscriber, ch, start, on, other, publisher) =
        subscriber_and_publisher(&cluster, channel).await;
    let epoch = start.epoch;

    let (kill_tx, kill_rx) = oneshot::channel();
    let pubs = Publisher::start(publisher.clone(), channel, TOTAL, Some((KILL_AT, kill_tx)));
    let mut log = follow(&subscriber, ch, pubs.published.clone());
    let started = Instant::now();
    timeout(WAIT, kill_rx).await.unwrap().unwrap();
    let mark = cluster.out.mark();
    let killed = cluster.kill(&on);
    let published_at_kill = pubs.published();

    let mut seen = Vec::new();
    let closed = read_until(&mut log, &mut seen, RECOVER, "the close", |s| {
        matches!(s, Seen::Closed(_))
    })
    .await;
    let opened = read_until(&mut log, &mut seen, RECOVER, "the reconnect", |s| {
        matches!(s, Seen::Open)
    })
    .await;
    read_until(
        &mut log,
        &mut seen,
        RECOVER,
        "the last message",
        |s| matches!(s, Seen::Message { n, .. } if *n == TOTAL),
    )
    .await;
    let published_by = timeout(WAIT, pubs.task).await.unwrap().unwrap().0 - started;
    // Nothing after the last one but what is published next: no duplicate, no late arrival.
    timeout(
        WAIT,
        publisher.invoke_publish(channel, &json!({ "n": TOTAL + 1 })),
    )
    .await
    .unwrap()
    .unwrap();
    read_until(
        &mut log,
        &mut seen,
        WAIT,
        "the message after the last",
        |s| matches!(s, Seen::Message { n, .. } if *n == TOTAL + 1),
    )
    .await;
    // Where it reconnected, and the killed worker's respawn.
    let (respawn, respawned) = cluster
        .out
        .wait_line(mark, RECOVER, |l| {
            ready_line(l).is_some_and(|(r, id, _)| r == "worker" && id == on.id)
        })
        .await;
    let workers = cluster.children("worker").await;
    let counts = cluster
        .clients(&workers, |c| c.iter().sum::<u64>() == 2)
        .await;

    // Every message once, in order, at its offset of the one epoch; no gap of any kind.
    let mut messages = Vec::new();
    for entry in &seen {
        match &entry.seen {
            Seen::Message { n, position } => messages.push((*n, position.clone(), entry.at)),
            Seen::Other(event) => panic!("unexpected on the channel: {event}"),
            Seen::Gap | Seen::Notice(_) => panic!("unexpected on the channel: {entry:?}"),
            Seen::Closed(_) | Seen::Open => {}
        }
    }
    let ns: Vec<u64> = messages.iter().map(|m| m.0).collect();
    let want: Vec<u64> = (1..=TOTAL + 1).collect();
    if ns != want {
        let first = ns
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(ns.len().min(want.len()));
        panic!(
            "{} messages, expected 1..={} once each in order; first difference at index {first}: {:?}",
            ns.len(),
            TOTAL + 1,
            &ns[first.saturating_sub(2)..(first + 3).min(ns.len())]
        );
    }
    for (n, position, _) in &messages {
        assert_eq!(
            position.as_ref(),
            Some(&Position::new(*n, &*epoch)),
            "message {n}"
        );
    }
    let Seen::Closed(code) = seen[closed].seen else {
        unreachable!()
    };
    assert_eq!(
        code, 4000,
        "the balancer closes a lost worker's clients with 4000"
    );

    let open = &seen[opened];
    let before_close = seen[..closed]
        .iter()
        .filter(|e| matches!(e.seen, Seen::Message { .. }))
        .count();
    // Caught up: every message published before the reconnect received.
    let caught_up = messages
        .iter()
        .find(|m| m.0 == open.published.max(1))
        .map(|m| m.2)
        .unwrap();
    let all = messages.iter().find(|m| m.0 == TOTAL).unwrap().2;
    println!(
        "cluster recovery (worker kill -9): worker {} (pid {}) killed after {published_at_kill} of {TOTAL} publishes \
         (1/ms, publisher on worker {}); {before_close} received before the 4000 close {} after the kill; \
         reconnected {} after the kill with {} published; those caught up {} after the kill; all {TOTAL} {} after it \
         (publishing took {}); worker {} respawned ({respawn}) {} after the kill; sockets per worker now {counts:?}; \
         {} messages, 0 lost, 0 duplicated, 0 gaps",
        on.id,
        on.pid,
        other.id,
        ms(seen[closed].at - killed),
        ms(open.at - killed),
        open.published,
        ms(caught_up - killed),
        ms(all - killed),
        ms(published_by),
        on.id,
        ms(respawned - killed),
        messages.len(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_store_gives_a_gap_then_the_new_epoch() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start("store").await;
    let channel = "rec-store-kill";
    let (subscriber, ch, start, on, other, publisher) =
        subscriber_and_publisher(&cluster, channel).await;
    let old_epoch = start.epoch;
    let store = cluster.children("store").await.remove(0);

    let pubs = Publisher::start(publisher.clone(), channel, u64::MAX, None);
    let mut log = follow(&subscriber, ch, pubs.published.clone());
    let mut seen = Vec::new();
    read_until(
        &mut log,
        &mut seen,
        WAIT,
        "the messages before the kill",
        |s| matches!(s, Seen::Message { n, .. } if *n == BEFORE),
    )
    .await;
    let mark = cluster.out.mark();
    let killed = cluster.kill(&store);
    let published_at_kill = pubs.published();

    let gap = read_until(&mut log, &mut seen, RECOVER, "the Gap", |s| {
        matches!(s, Seen::Gap)
    })
    .await;
    let published_at_gap = seen[gap].published;
    pubs.end.store(published_at_gap + AFTER, Ordering::Release);
    let (_, end) = timeout(RECOVER, pubs.task).await.unwrap().unwrap();
    read_until(
        &mut log,
        &mut seen,
        RECOVER,
        "the last message",
        |s| matches!(s, Seen::Message { n, .. } if *n == end),
    )
    .await;
    // Nothing after the last one but what is published next.
    timeout(
        WAIT,
        publisher.invoke_publish(channel, &json!({ "n": end + 1 })),
    )
    .await
    .unwrap()
    .unwrap();
    read_until(
        &mut log,
        &mut seen,
        WAIT,
        "the message after the last",
        |s| matches!(s, Seen::Message { n, .. } if *n == end + 1),
    )
    .await;
    let (respawn, respawned) = cluster
        .out
        .wait_line(mark, RECOVER, |l| {
            ready_line(l).is_some_and(|(r, _, _)| r == "store")
        })
        .await;

    // The notice: with the new epoch.
    let notices: Vec<&Value> = seen
        .iter()
        .filter_map(|e| match &e.seen {
            Seen::Notice(v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(notices.len(), 1, "one #gap notice: {notices:?}");
    let notice = notices[0];
    assert_eq!(notice["channel"], channel, "{notice}");
    let new_epoch = notice["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("the #gap of a recorded channel names the epoch: {notice}"))
        .to_owned();
    let from = notice["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("the #gap of a recorded channel has an offset: {notice}"));
    assert_ne!(new_epoch, old_epoch, "the store restart made a new epoch");

    // The channel: messages of the old epoch at offsets 1, 2, ...; one Gap; then messages of
    // the new epoch at offsets from+1, from+2, ...: none of the new epoch lost.
    let mut old = Vec::new();
    let mut new = Vec::new();
    let mut gaps = 0;
    for entry in &seen {
        match &entry.seen {
            Seen::Message { n, position } => {
                let p = position
                    .clone()
                    .unwrap_or_else(|| panic!("message {n} has no position"));
                if gaps == 0 {
                    old.push((*n, p, entry.at));
                } else {
                    new.push((*n, p, entry.at));
                }
            }
            Seen::Gap => gaps += 1,
            Seen::Other(event) => panic!("unexpected on the channel: {event}"),
            Seen::Closed(_) | Seen::Open => {
                panic!("the subscriber's connection stays up: {entry:?}")
            }
            Seen::Notice(_) => {}
        }
    }
    assert_eq!(gaps, 1, "one Gap on the channel");
    for (i, (n, p, _)) in old.iter().enumerate() {
        let i = i as u64 + 1;
        assert_eq!(
            (*n, p),
            (i, &Position::new(i, &*old_epoch)),
            "message {i} of the old epoch"
        );
    }
    assert!(!new.is_empty());
    for (i, (n, p, _)) in new.iter().enumerate() {
        let want = Position::new(from + i as u64 + 1, &*new_epoch);
        assert_eq!(p, &want, "message {n}, the {}th after the gap", i + 1);
    }
    let ns: Vec<u64> = old.iter().chain(&new).map(|m| m.0).collect();
    assert!(
        ns.windows(2).all(|w| w[0] < w[1]),
        "messages out of order or duplicated"
    );
    // Every message published after the notice arrived is there.
    let after: Vec<u64> = new
        .iter()
        .map(|m| m.0)
        .filter(|n| *n > published_at_gap)
        .collect();
    let missing: Vec<u64> = (published_at_gap + 1..=end + 1)
        .filter(|n| after.binary_search(n).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of the messages published after the gap notice arrived are missing: {:?}...; \
         the server's warnings: {:#?}",
        missing.len(),
        &missing[..missing.len().min(10)],
        cluster.out.warnings(20)
    );

    let last_old = old.last().map_or(0, |m| m.0);
    let first_new = new[0].0;
    let first_new_at = new[0].2;
    let gap_at = seen[gap].at;
    let lost = match first_new - last_old - 1 {
        0 => "none lost: those published meanwhile were recorded in the new epoch".to_owned(),
        n => format!(
            "{n} published meanwhile (n = {}..={}) lost, covered by the gap",
            last_old + 1,
            first_new - 1
        ),
    };
    println!(
        "cluster recovery (store kill -9): store (pid {}) killed after {published_at_kill} publishes (1/ms, subscriber \
         on worker {}, publisher on worker {}); store respawned ({respawn}) {} after the kill; epoch {old_epoch:?} -> {new_epoch:?}; \
         the Gap {} after the kill ({notice}), with {published_at_gap} published; the first message of the new epoch \
         (n = {first_new}, offset {}) {} after the kill; {} messages of the old epoch received (last n = {last_old}), \
         {lost}; {} of the new epoch, every one of the {} published after the notice arrived; the server's \
         warnings: {:?}",
        store.pid,
        on.id,
        other.id,
        ms(respawned - killed),
        ms(gap_at - killed),
        new[0].1.offset,
        ms(first_new_at - killed),
        old.len(),
        new.len(),
        end + 1 - published_at_gap,
        cluster.out.warnings(8),
    );
}
