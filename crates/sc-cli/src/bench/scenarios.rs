//! The scenarios. Each connection is driven by one task that owns its socket; frames are
//! encoded straight into the connection's write buffer and written once per batch.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::proto::{Incoming, Protocol, field_u64, json_string, parse_u64};
use super::stats::{CpuWindow, Report, SharedLatency, cpu_time_fine, round1, round2, rss_kib};
use super::ws::{Conn, Target};
use super::{Common, ConnsArgs, EchoArgs, FanoutArgs, PingArgs, RateArgs};

/// Shared counters the progress line shows.
#[derive(Debug, Default)]
struct Progress {
    ops: AtomicU64,
    conns: AtomicU64,
    errors: AtomicU64,
}

/// Resolves the target and fills in the common report fields.
async fn setup(c: &Common, scenario: &str) -> Result<(Target, Report), String> {
    let url = c
        .url
        .clone()
        .unwrap_or_else(|| c.protocol.default_url().to_owned());
    if !c.protocol.supports(scenario) {
        return Err(format!(
            "--protocol {} drives a bare echo server: it has no `{scenario}` (use echo, rate or conns, or fanout against its --broadcast mode)",
            c.protocol.name()
        ));
    }
    let target = Target::resolve(&url, c.protocol.extra_query()).await?;
    let mut r = Report::new(scenario);
    r.set("protocol", Value::from(c.protocol.name()));
    r.set("url", Value::from(url));
    Ok((target, r))
}

/// Opens one connection and completes the handshake.
/// A refused TCP connection is tried again (5 times, 200 ms apart): a server that has just
/// started, or whose accept queue overflowed, may refuse a few.
async fn open(target: &Target, proto: Protocol, source: Option<IpAddr>) -> Result<Conn, String> {
    open_with(target, proto, source, "")
        .await
        .map(|(conn, _)| conn)
}

/// [`open`] with `extra` request header lines; returns the 101's head too.
async fn open_with(
    target: &Target,
    proto: Protocol,
    source: Option<IpAddr>,
    extra: &str,
) -> Result<(Conn, String), String> {
    let mut tries = 0;
    let (mut conn, head) = loop {
        match Conn::connect_with(target, source, extra).await {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("connect to {}: {e}", target.addr)),
        }
    };
    proto.handshake(&mut conn).await?;
    Ok((conn, head))
}

/// Opens `n` connections, `limit` at a time, each followed by `after` (e.g. a subscribe).
async fn open_many(
    target: &Target,
    proto: Protocol,
    n: usize,
    progress: &Arc<Progress>,
) -> Result<Vec<Conn>, String> {
    let sem = Arc::new(Semaphore::new(200));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (sem, target, progress) = (sem.clone(), target.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
            let c = open(&target, proto, None).await?;
            progress.conns.fetch_add(1, Relaxed);
            Ok::<_, String>(c)
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(conns)
}

/// Prints a progress line on stderr every second until `stop` is set.
fn spawn_progress(
    name: &'static str,
    quiet: bool,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    unit: &'static str,
) -> Option<JoinHandle<()>> {
    if quiet {
        return None;
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    Some(tokio::spawn(async move {
        let start = Instant::now();
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        while !stop.load(Relaxed) {
            tick.tick().await;
            let ops = progress.ops.load(Relaxed);
            let line = format!(
                "[{name}] {:>4.0}s  {:>9} {unit}/s  conns {}  errors {}",
                start.elapsed().as_secs_f64(),
                ops - last,
                progress.conns.load(Relaxed),
                progress.errors.load(Relaxed),
            );
            last = ops;
            if tty {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        }
        if tty {
            eprintln!();
        }
    }))
}

/// The measured window.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    to: Instant,
}

impl Window {
    fn new(c: &Common) -> Window {
        let from = Instant::now() + c.warmup;
        Window {
            from,
            to: from + c.duration,
        }
    }

    #[inline]
    fn contains(&self, t: Instant) -> bool {
        t >= self.from && t < self.to
    }
}

/// Waits until the window starts, then returns the CPU reading taken at that moment.
async fn cpu_at_start(w: Window, pid: Option<u32>) -> CpuWindow {
    tokio::time::sleep_until(w.from).await;
    CpuWindow::start(pid)
}

fn echo_payload(size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size + 2);
    p.push(b'"');
    p.extend((0..size).map(|i| b'a' + (i % 26) as u8));
    p.push(b'"');
    p
}

/// What one echo or rate worker measured.
#[derive(Debug)]
struct EchoStats {
    lat: SharedLatency,
    replies: u64,
    sent: u64,
    errors: u64,
    unanswered: u64,
}

impl EchoStats {
    fn new(lat: SharedLatency) -> Self {
        EchoStats {
            lat,
            replies: 0,
            sent: 0,
            errors: 0,
            unanswered: 0,
        }
    }
}

/// Requests in flight, oldest first (replies normally come in order).
#[derive(Debug, Default)]
struct InFlight(VecDeque<(u64, Instant)>);

impl InFlight {
    fn take(&mut self, id: u64) -> Option<Instant> {
        if self.0.front().map(|f| f.0) == Some(id) {
            return self.0.pop_front().map(|f| f.1);
        }
        let i = self.0.binary_search_by_key(&id, |f| f.0).ok()?;
        self.0.remove(i).map(|f| f.1)
    }
}

/// `bench echo`.
pub(super) async fn echo(a: EchoArgs) -> Result<Report, String> {
    let c = &a.common;
    let (target, mut r) = setup(c, "echo").await?;
    if a.connections == 0 || a.in_flight == 0 {
        return Err("--connections and --in-flight must be at least 1".to_owned());
    }
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pr = spawn_progress("echo", c.quiet, progress.clone(), stop.clone(), "rt");
    let conns = open_many(&target, c.protocol, a.connections, &progress).await?;
    let w = Window::new(c);
    let payload: Arc<[u8]> = echo_payload(a.payload).into();
    let lat = SharedLatency::new();
    let mut tasks = Vec::new();
    for conn in conns {
        let (payload, progress) = (payload.clone(), progress.clone());
        let (proto, k) = (c.protocol, a.in_flight);
        tasks.push(tokio::spawn(echo_worker(
            conn,
            proto,
            w,
            k,
            payload,
            progress,
            lat.clone(),
        )));
    }
    if !a.no_busy_poll {
        // A task that is always ready keeps the runtime from sleeping in epoll_wait: it
        // polls the sockets (epoll_wait with a zero timeout) between tasks instead.
        tokio::spawn(async move {
            while Instant::now() < w.to {
                tokio::task::yield_now().await;
            }
        });
    }
    let cpu = cpu_at_start(w, c.server_pid).await;
    tokio::time::sleep_until(w.to).await;
    let mut errors = 0;
    let mut replies_in_window = 0;
    let used = cpu.end();
    for t in tasks {
        let s = t.await.map_err(|e| e.to_string())??;
        errors += s.errors;
        replies_in_window += s.replies;
    }
    stop.store(true, Relaxed);
    let secs = c.duration.as_secs_f64();
    r.num("connections", a.connections);
    r.num("in_flight", a.in_flight);
    r.num("payload_bytes", a.payload);
    r.set("busy_poll", (!a.no_busy_poll).into());
    r.num("duration_s", secs);
    r.num("round_trips", replies_in_window);
    r.num("rt_per_s", (replies_in_window as f64 / secs).round());
    lat.snapshot().report(&mut r, "");
    r.num("errors", errors);
    used.report(&mut r, c.duration, replies_in_window, "rt");
    if let Some(p) = pr {
        let _ = p.await;
    }
    Ok(r)
}

async fn echo_worker(
    mut conn: Conn,
    proto: Protocol,
    w: Window,
    k: usize,
    payload: Arc<[u8]>,
    progress: Arc<Progress>,
    lat: SharedLatency,
) -> Result<EchoStats, String> {
    let mut s = EchoStats::new(lat);
    let mut next_id = proto.first_id();
    let mut inflight = InFlight::default();
    let start = Instant::now();
    for _ in 0..k {
        proto.invoke(&mut conn.out, "echo", &payload, next_id);
        inflight.0.push_back((next_id, start));
        next_id += 1;
    }
    conn.flush().await.map_err(|e| e.to_string())?;
    let deadline = tokio::time::sleep_until(w.to);
    tokio::pin!(deadline);
    // Once polled, the deadline's waker stays registered until it fires: it is polled again only
    // then, not on every read (that poll was 5% of the generator's work at 100 x 1).
    let mut deadline_armed = false;
    loop {
        tokio::select! {
            biased;
            r = conn.read_more() => r.map_err(|e| e.to_string())?,
            () = std::future::poll_fn(|cx| {
                if deadline_armed && !deadline.is_elapsed() {
                    return std::task::Poll::Pending;
                }
                let poll = deadline.as_mut().poll(cx);
                deadline_armed = poll.is_pending();
                poll
            }) => break,
        }
        let now = Instant::now();
        let mut n = 0;
        conn.drain_frames(|msg, out| {
            if let Incoming::Reply { id, error, .. } = proto.classify(msg, out)
                && let Some(sent) = inflight.take(id)
            {
                if w.contains(now) {
                    s.lat.record(now - sent);
                    s.replies += 1;
                    if error {
                        s.errors += 1;
                    }
                }
                n += 1;
                proto.invoke(out, "echo", &payload, next_id);
                inflight.0.push_back((next_id, now));
                next_id += 1;
            }
        })
        .map_err(|e| e.to_string())?;
        progress.ops.fetch_add(n, Relaxed);
        conn.flush().await.map_err(|e| e.to_string())?;
    }
    s.sent = next_id - proto.first_id();
    s.unanswered = inflight.0.len() as u64;
    Ok(s)
}

/// `bench rate`.
pub(super) async fn rate(a: RateArgs) -> Result<Report, String> {
    let c = &a.common;
    let (target, mut r) = setup(c, "rate").await?;
    if a.connections == 0 || a.rate == 0 {
        return Err("--connections and --rate must be at least 1".to_owned());
    }
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pr = spawn_progress("rate", c.quiet, progress.clone(), stop.clone(), "rt");
    let conns = open_many(&target, c.protocol, a.connections, &progress).await?;
    let w = Window::new(c);
    let payload: Arc<[u8]> = echo_payload(a.payload).into();
    let period = Duration::from_secs_f64(1.0 / a.rate as f64);
    let n = conns.len();
    let t0 = Instant::now();
    let lat = SharedLatency::new();
    let mut tasks = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let (payload, progress) = (payload.clone(), progress.clone());
        let first = t0 + period.mul_f64(i as f64 / n as f64);
        let proto = c.protocol;
        let drain = a.drain;
        tasks.push(tokio::spawn(rate_worker(
            conn,
            proto,
            w,
            first,
            period,
            drain,
            payload,
            progress,
            lat.clone(),
        )));
    }
    let cpu = cpu_at_start(w, c.server_pid).await;
    tokio::time::sleep_until(w.to).await;
    let used = cpu.end();
    let (mut replies, mut sent, mut errors, mut unanswered) = (0, 0, 0, 0);
    for t in tasks {
        let s = t.await.map_err(|e| e.to_string())??;
        replies += s.replies;
        sent += s.sent;
        errors += s.errors;
        unanswered += s.unanswered;
    }
    stop.store(true, Relaxed);
    let secs = c.duration.as_secs_f64();
    r.num("connections", a.connections);
    r.num("rate_per_conn", a.rate);
    r.num("payload_bytes", a.payload);
    r.num("duration_s", secs);
    r.num("target_per_s", a.rate * a.connections as u64);
    r.num("sent_per_s", (sent as f64 / secs).round());
    r.num("replies_per_s", (replies as f64 / secs).round());
    lat.snapshot().report(&mut r, "");
    r.num("errors", errors);
    r.num("unanswered", unanswered);
    used.report(&mut r, c.duration, replies, "rt");
    if let Some(p) = pr {
        let _ = p.await;
    }
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
async fn rate_worker(
    mut conn: Conn,
    proto: Protocol,
    w: Window,
    first: Instant,
    period: Duration,
    drain: Duration,
    payload: Arc<[u8]>,
    progress: Arc<Progress>,
    lat: SharedLatency,
) -> Result<EchoStats, String> {
    let mut s = EchoStats::new(lat);
    let mut next_id = proto.first_id();
    let mut inflight = InFlight::default();
    let mut next = first;
    let tick = tokio::time::sleep_until(next);
    tokio::pin!(tick);
    let hard_stop = tokio::time::sleep_until(w.to + drain);
    tokio::pin!(hard_stop);
    loop {
        tokio::select! {
            biased;
            r = conn.read_more() => {
                r.map_err(|e| e.to_string())?;
                let now = Instant::now();
                let mut n = 0;
                conn.drain_frames(|msg, out| {
                    if let Incoming::Reply { id, error, .. } = proto.classify(msg, out)
                        && let Some(sched) = inflight.take(id) {
                            if w.contains(sched) {
                                s.lat.record(now - sched);
                                s.replies += 1;
                                if error {
                                    s.errors += 1;
                                }
                            }
                            n += 1;
                        }
                })
                .map_err(|e| e.to_string())?;
                progress.ops.fetch_add(n, Relaxed);
            }
            () = &mut tick, if next < w.to => {
                let now = Instant::now();
                while next <= now && next < w.to {
                    proto.invoke(&mut conn.out, "echo", &payload, next_id);
                    inflight.0.push_back((next_id, next));
                    if w.contains(next) {
                        s.sent += 1;
                    }
                    next_id += 1;
                    next += period;
                }
                tick.as_mut().reset(next);
            }
            () = &mut hard_stop => break,
        }
        conn.flush().await.map_err(|e| e.to_string())?;
        if next >= w.to && inflight.0.is_empty() {
            break;
        }
    }
    s.unanswered = inflight.0.iter().filter(|f| w.contains(f.1)).count() as u64;
    Ok(s)
}

/// `bench ping`.
pub(super) async fn ping(a: PingArgs) -> Result<Report, String> {
    let c = &a.common;
    let (target, mut r) = setup(c, "ping").await?;
    if a.connections == 0 || a.rate == 0 {
        return Err("--connections and --rate must be at least 1".to_owned());
    }
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pr = spawn_progress("ping", c.quiet, progress.clone(), stop.clone(), "ping");
    let conns = open_many(&target, c.protocol, a.connections, &progress).await?;
    let w = Window::new(c);
    let period = Duration::from_secs_f64(1.0 / a.rate as f64);
    let n = conns.len();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let first = t0 + period.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(ping_worker(
            conn,
            c.protocol,
            w,
            first,
            period,
            progress.clone(),
        )));
    }
    let cpu = cpu_at_start(w, c.server_pid).await;
    tokio::time::sleep_until(w.to).await;
    let mut sent_window = 0;
    let used = cpu.end();
    let (mut sent, mut counted, mut wrong) = (0, 0, 0);
    for t in tasks {
        let (s, in_window, got) = t.await.map_err(|e| e.to_string())??;
        sent += s;
        sent_window += in_window;
        counted += got;
        if got != s {
            wrong += 1;
        }
    }
    stop.store(true, Relaxed);
    let secs = c.duration.as_secs_f64();
    r.num("connections", a.connections);
    r.num("rate_per_conn", a.rate);
    r.num("duration_s", secs);
    r.num("target_per_s", a.rate * a.connections as u64);
    r.num("pings_per_s", (sent_window as f64 / secs).round());
    r.num("sent", sent);
    r.num("counted", counted);
    r.num("sockets_miscounted", wrong);
    r.set("exact", Value::from(wrong == 0));
    used.report(&mut r, c.duration, sent_window, "ping");
    if let Some(p) = pr {
        let _ = p.await;
    }
    Ok(r)
}

/// Sends pings on schedule until the window ends, then reads the server's count (retrying while
/// it is still below what was sent, for up to 5 s). Returns (sent, sent in window, counted).
async fn ping_worker(
    mut conn: Conn,
    proto: Protocol,
    w: Window,
    first: Instant,
    period: Duration,
    progress: Arc<Progress>,
) -> Result<(u64, u64, u64), String> {
    const PING: &[u8] = b"{\"param\":\"pong\"}";
    let (mut sent, mut in_window) = (0u64, 0u64);
    let mut next = first;
    let tick = tokio::time::sleep_until(next);
    tokio::pin!(tick);
    while next < w.to {
        tokio::select! {
            biased;
            r = conn.read_more() => {
                r.map_err(|e| e.to_string())?;
                conn.drain_frames(|msg, out| { proto.classify(msg, out); })
                    .map_err(|e| e.to_string())?;
            }
            () = &mut tick => {
                let now = Instant::now();
                let before = sent;
                while next <= now && next < w.to {
                    proto.transmit(&mut conn.out, "ping", PING);
                    sent += 1;
                    if w.contains(next) {
                        in_window += 1;
                    }
                    next += period;
                }
                progress.ops.fetch_add(sent - before, Relaxed);
                tick.as_mut().reset(next);
            }
        }
        conn.flush().await.map_err(|e| e.to_string())?;
    }
    let give_up = Instant::now() + Duration::from_secs(5);
    let mut id = proto.first_id();
    loop {
        proto.invoke(&mut conn.out, "count", b"null", id);
        conn.flush().await.map_err(|e| e.to_string())?;
        let mut got = None;
        let fut = async {
            while got.is_none() {
                conn.read_more().await.map_err(|e| e.to_string())?;
                conn.drain_frames(|msg, out| {
                    if let Incoming::Reply { id: rid, body, .. } = proto.classify(msg, out)
                        && rid == id
                    {
                        got = Some(reply_number(proto, body));
                    }
                })
                .map_err(|e| e.to_string())?;
                conn.flush().await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| "no reply to `count` within 10 s".to_owned())??;
        let count = got.flatten().unwrap_or(0);
        if count >= sent || Instant::now() >= give_up {
            conn.close().await;
            return Ok((sent, in_window, count));
        }
        id += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The number a reply carries: `{"rid":N,"data":5}` or `43N[5]`.
fn reply_number(proto: Protocol, body: &[u8]) -> Option<u64> {
    match proto {
        Protocol::Sc => field_u64(body, b"\"data\":"),
        Protocol::WsEcho => None,
        Protocol::Socketio => {
            let at = body.iter().position(|&b| b == b'[')?;
            let (v, used) = parse_u64(&body[at + 1..]);
            (used > 0).then_some(v)
        }
    }
}

/// Which sequence numbers one subscriber has seen.
#[derive(Debug, Default)]
struct SeqTracker {
    /// One past the highest sequence number seen.
    next: u64,
    /// Gaps below `next`: start -> end (exclusive).
    gaps: BTreeMap<u64, u64>,
    received: u64,
    dups: u64,
    reordered: u64,
}

impl SeqTracker {
    fn observe(&mut self, seq: u64) {
        self.received += 1;
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            self.gaps.insert(self.next, seq);
            self.next = seq + 1;
        } else if self.fill(seq) {
            self.reordered += 1;
        } else {
            self.dups += 1;
        }
    }

    /// Removes `seq` from the gaps; false when it was not missing (a duplicate).
    fn fill(&mut self, seq: u64) -> bool {
        let Some((&a, &b)) = self.gaps.range(..=seq).next_back() else {
            return false;
        };
        if seq >= b {
            return false;
        }
        self.gaps.remove(&a);
        if a < seq {
            self.gaps.insert(a, seq);
        }
        if seq + 1 < b {
            self.gaps.insert(seq + 1, b);
        }
        true
    }

    fn lost(&self, total: u64) -> u64 {
        self.gaps.iter().map(|(a, b)| b - a).sum::<u64>() + total.saturating_sub(self.next)
    }
}

/// What one subscriber measured.
#[derive(Debug)]
struct SubStats {
    seq: SeqTracker,
    lat: SharedLatency,
    in_window: u64,
    /// Why the server closed this subscriber early, if it did.
    closed: Option<String>,
}

/// `bench fanout`.
pub(super) async fn fanout(a: FanoutArgs) -> Result<Report, String> {
    let c = &a.common;
    let (target, mut r) = setup(c, "fanout").await?;
    if a.subscribers == 0 || a.publish_rate == 0 {
        return Err("--subscribers and --publish-rate must be at least 1".to_owned());
    }
    let proto = c.protocol;
    // With --url2, subscribers 0, 2, 4, … go there: half of them (rounded up), all of one.
    let target2 = match &a.url2 {
        Some(url2) => {
            r.set("url2", Value::from(url2.clone()));
            r.num("subscribers_on_url2", a.subscribers.div_ceil(2));
            Some(Target::resolve(url2, proto.extra_query()).await?)
        }
        None => None,
    };
    let progress = Arc::new(Progress::default());
    let stop_progress = Arc::new(AtomicBool::new(false));
    let pr = spawn_progress(
        "fanout",
        c.quiet,
        progress.clone(),
        stop_progress.clone(),
        "deliveries",
    );
    // Subscribers: connect and subscribe, 200 at a time.
    let sem = Arc::new(Semaphore::new(200));
    let mut opening = Vec::new();
    for i in 0..a.subscribers {
        let on = match &target2 {
            Some(t2) if i % 2 == 0 => t2,
            _ => &target,
        };
        let (sem, target, progress, channel) =
            (sem.clone(), on.clone(), progress.clone(), a.channel.clone());
        opening.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
            let mut conn = open(&target, proto, None).await?;
            subscribe_one(&mut conn, proto, &channel, proto.first_id()).await?;
            progress.conns.fetch_add(1, Relaxed);
            Ok::<_, String>(conn)
        }));
    }
    let mut subs = Vec::with_capacity(a.subscribers);
    for t in opening {
        subs.push(t.await.map_err(|e| e.to_string())??);
    }
    let mut publisher = open(&target, proto, None).await?;
    let w = Window::new(c);
    let t0 = Instant::now();
    let lat = SharedLatency::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let heads: Arc<Vec<AtomicU64>> = Arc::new((0..subs.len()).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::new();
    for (i, conn) in subs.into_iter().enumerate() {
        let (progress, heads, stop) = (progress.clone(), heads.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(subscriber(
            conn,
            proto,
            w,
            t0,
            i,
            heads,
            stop,
            progress,
            lat.clone(),
        )));
    }
    // The publisher runs in this task.
    let chan = json_string(&a.channel);
    let period = Duration::from_secs_f64(1.0 / a.publish_rate as f64);
    let mut seq: u64 = 0;
    let mut next = t0;
    let mut cpu = None;
    let (mut cpu2, mut cpu_store) = (None, None);
    let tick = tokio::time::sleep_until(next);
    tokio::pin!(tick);
    let win_start = tokio::time::sleep_until(w.from);
    tokio::pin!(win_start);
    let mut published_in_window = 0u64;
    while next < w.to {
        tokio::select! {
            biased;
            () = &mut win_start, if cpu.is_none() => {
                cpu = Some(CpuWindow::start(c.server_pid));
                cpu2 = Some(CpuWindow::start(a.server2_pid));
                cpu_store = a.store_pid.and_then(cpu_time_fine);
            }
            r = publisher.read_more() => {
                r.map_err(|e| e.to_string())?;
                publisher.drain_frames(|m, out| { proto.classify(m, out); })
                    .map_err(|e| e.to_string())?;
            }
            () = &mut tick => {
                let now = Instant::now();
                while next <= now && next < w.to {
                    let t_us = (next - t0).as_micros() as u64;
                    proto.publish_with(&mut publisher.out, &chan, |b| {
                        let mut n = itoa::Buffer::new();
                        b.extend_from_slice(b"{\"seq\":");
                        b.extend_from_slice(n.format(seq).as_bytes());
                        b.extend_from_slice(b",\"t\":");
                        b.extend_from_slice(n.format(t_us).as_bytes());
                        b.push(b'}');
                    });
                    if w.contains(next) {
                        published_in_window += 1;
                    }
                    seq += 1;
                    next += period;
                }
                tick.as_mut().reset(next);
            }
        }
        publisher.flush().await.map_err(|e| e.to_string())?;
    }
    let used = cpu.unwrap_or_else(|| CpuWindow::start(c.server_pid)).end();
    let used2 = cpu2.map(|w| w.end());
    let used_store = cpu_store
        .zip(a.store_pid.and_then(cpu_time_fine))
        .map(|(from, to)| to.saturating_sub(from));
    let total = seq;
    // Drain: wait until every subscriber has seen the last publish, or --drain passes.
    let drain_end = Instant::now() + a.drain;
    let mut drained = false;
    while Instant::now() < drain_end {
        if heads.iter().all(|h| h.load(Relaxed) >= total) {
            drained = true;
            break;
        }
        // Keep answering the server's pings on the publisher meanwhile.
        let _ = tokio::time::timeout(Duration::from_millis(20), publisher.read_more()).await;
        let _ = publisher.drain_frames(|m, out| {
            proto.classify(m, out);
        });
        let _ = publisher.flush().await;
    }
    let _ = stop_tx.send(true);
    let (mut lost, mut dups, mut reordered, mut received, mut in_window) = (0, 0, 0, 0, 0);
    let mut subs_with_loss = 0;
    let (mut closed, mut close_reason) = (0u64, None);
    for t in tasks {
        let s = t.await.map_err(|e| e.to_string())??;
        if let Some(why) = s.closed {
            closed += 1;
            close_reason.get_or_insert(why);
        }
        let l = s.seq.lost(total);
        if l > 0 {
            subs_with_loss += 1;
        }
        lost += l;
        dups += s.seq.dups;
        reordered += s.seq.reordered;
        received += s.seq.received;
        in_window += s.in_window;
    }
    stop_progress.store(true, Relaxed);
    publisher.close().await;
    let secs = c.duration.as_secs_f64();
    r.num("subscribers", a.subscribers);
    r.num("publish_rate", a.publish_rate);
    r.num("duration_s", secs);
    r.num(
        "target_deliveries_per_s",
        a.publish_rate * a.subscribers as u64,
    );
    r.num(
        "publishes_per_s",
        (published_in_window as f64 / secs).round(),
    );
    r.num("deliveries_per_s", (in_window as f64 / secs).round());
    let lat = lat.snapshot();
    lat.report(&mut r, "");
    r.num("published", total);
    r.num("expected_deliveries", total * a.subscribers as u64);
    r.num("received", received);
    r.num("lost", lost);
    r.num("duplicated", dups);
    r.num("order_violations", reordered);
    r.num("subscribers_with_loss", subs_with_loss);
    r.num("subscribers_closed", closed);
    if let Some(why) = close_reason {
        r.set("close_reason", Value::from(why));
    }
    r.set("drained", Value::from(drained));
    r.num("latency_samples", lat.len());
    used.report(&mut r, c.duration, in_window, "delivery");
    let per =
        |d: Duration| (d.as_secs_f64() * 1e6 / in_window.max(1) as f64 * 100.0).round() / 100.0;
    if let Some(d) = used2.and_then(|u| u.server()) {
        r.num("server2_cpu_pct", round1(d.as_secs_f64() / secs * 100.0));
        r.num("server2_cpu_us_per_delivery", per(d));
    }
    if let Some(d) = used_store {
        // From schedstat (ns), not 10 ms ticks: the store works a few ms a second here.
        r.num("store_cpu_pct", round2(d.as_secs_f64() / secs * 100.0));
        r.num(
            "store_cpu_us_per_delivery",
            (d.as_secs_f64() * 1e6 / in_window.max(1) as f64 * 1000.0).round() / 1000.0,
        );
        r.num(
            "store_cpu_us_per_publish",
            round2(d.as_secs_f64() * 1e6 / published_in_window.max(1) as f64),
        );
    }
    if let Some(p) = pr {
        let _ = p.await;
    }
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
async fn subscriber(
    mut conn: Conn,
    proto: Protocol,
    w: Window,
    t0: Instant,
    index: usize,
    heads: Arc<Vec<AtomicU64>>,
    mut stop: watch::Receiver<bool>,
    progress: Arc<Progress>,
    lat: SharedLatency,
) -> Result<SubStats, String> {
    let mut s = SubStats {
        seq: SeqTracker::default(),
        lat,
        in_window: 0,
        closed: None,
    };
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = conn.read_more() => if let Err(e) = r {
                s.closed = Some(e.to_string());
            },
        }
        let now = Instant::now();
        let mut n = 0;
        let in_win = w.contains(now);
        let drained = conn.drain_frames(|m, out| {
            if let Incoming::Publish(body) = proto.classify(m, out)
                && let Some(seq) = field_u64(body, b"\"seq\":")
            {
                s.seq.observe(seq);
                n += 1;
                if in_win {
                    s.in_window += 1;
                    if let Some(t) = field_u64(body, b"\"t\":") {
                        s.lat
                            .record(now.saturating_duration_since(t0 + Duration::from_micros(t)));
                    }
                }
            }
        });
        if let Err(e) = drained {
            // A close frame says more than the end of the stream after it.
            s.closed = Some(e.to_string());
        }
        progress.ops.fetch_add(n, Relaxed);
        if s.closed.is_none()
            && let Err(e) = conn.flush().await
        {
            s.closed = Some(e.to_string());
        }
        if let Some(h) = heads.get(index) {
            // A closed subscriber will get nothing more: the drain does not wait for it.
            h.store(
                if s.closed.is_some() {
                    u64::MAX
                } else {
                    s.seq.next
                },
                Relaxed,
            );
        }
        if s.closed.is_some() {
            progress.errors.fetch_add(1, Relaxed);
            break;
        }
    }
    Ok(s)
}

/// Raises the soft open-files limit to the hard one; returns the new soft limit.
fn raise_nofile() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current
}

/// `bench conns`.
pub(super) async fn conns(a: ConnsArgs) -> Result<Report, String> {
    let c = &a.common;
    let (target, mut r) = setup(c, "conns").await?;
    let limit = raise_nofile();
    // Leave room for the runtime's own descriptors and stdio.
    let cap = limit.map(|l| l.saturating_sub(64) as usize);
    let want = if a.count == "max" {
        cap.ok_or("--count max: the open-files limit is unknown")?
    } else {
        a.count
            .parse::<usize>()
            .map_err(|_| format!("--count must be a number or max, not {:?}", a.count))?
    };
    let n = match cap {
        Some(cap) if want > cap => {
            eprintln!(
                "note: opening {cap} connections, not {want}: this process may open {} files \
                 (ulimit -Hn); raise the hard limit to open more",
                limit.unwrap_or(0)
            );
            cap
        }
        _ => want,
    };
    if a.per_source == 0 || a.concurrency == 0 {
        return Err("--per-source and --concurrency must be at least 1".to_owned());
    }
    let spread = target.addr.ip().is_loopback() && target.addr.is_ipv4();
    let proto = c.protocol;
    let rss_before = c.server_pid.and_then(rss_kib);
    let progress = Arc::new(Progress::default());
    let stop_progress = Arc::new(AtomicBool::new(false));
    let pr = spawn_progress(
        "conns",
        c.quiet,
        progress.clone(),
        stop_progress.clone(),
        "opened",
    );
    let sem = Arc::new(Semaphore::new(a.concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(1024);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        // 127.0.1.1, 127.0.1.2, ...: a new source address every --per-source connections.
        let source = spread.then(|| {
            IpAddr::V4(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(127, 0, 1, 1)) + (i / a.per_source) as u32,
            ))
        });
        let (sem, target, progress, ready, mut stop) = (
            sem.clone(),
            target.clone(),
            progress.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let conn = tokio::time::timeout(Duration::from_secs(30), open(&target, proto, source))
                .await
                .unwrap_or_else(|_| Err("connect and handshake took over 30 s".to_owned()));
            drop(permit);
            let mut conn = match conn {
                Ok(c) => {
                    progress.conns.fetch_add(1, Relaxed);
                    progress.ops.fetch_add(1, Relaxed);
                    let _ = ready.send(Ok(())).await;
                    c
                }
                Err(e) => {
                    progress.errors.fetch_add(1, Relaxed);
                    let _ = ready.send(Err(e)).await;
                    return;
                }
            };
            drop(ready);
            // Hold: answer heartbeats until told to stop.
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    r = conn.read_more() => {
                        if r.is_err() {
                            progress.conns.fetch_sub(1, Relaxed);
                            return;
                        }
                        if conn.drain_frames(|m, out| { proto.classify(m, out); }).is_err()
                            || conn.flush().await.is_err()
                        {
                            progress.conns.fetch_sub(1, Relaxed);
                            return;
                        }
                    }
                }
            }
            conn.close().await;
        }));
    }
    drop(ready_tx);
    let (mut ok, mut failed, mut first_err) = (0u64, 0u64, None);
    while let Some(res) = ready_rx.recv().await {
        match res {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                first_err.get_or_insert(e);
            }
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(a.hold).await;
    let held = progress.conns.load(Relaxed);
    let rss_after = c.server_pid.and_then(rss_kib);
    r.num("requested", want);
    r.num("attempted", n);
    r.num("opened", ok);
    r.num("held", held);
    r.num("failed", failed);
    if let Some(e) = first_err {
        r.set("first_error", Value::from(e));
    }
    if let Some(l) = limit {
        r.num("nofile_limit", l);
    }
    r.num("open_s", round1(open_s));
    r.num("conns_per_s", (ok as f64 / open_s.max(1e-9)).round());
    if let (Some(b), Some(af)) = (rss_before, rss_after) {
        r.num("server_rss_before_kib", b);
        r.num("server_rss_after_kib", af);
        let per = if held == 0 {
            0.0
        } else {
            af.saturating_sub(b) as f64 / held as f64
        };
        r.num("server_kib_per_conn", round1(per));
    }
    if let Some(own) = rss_kib(std::process::id()) {
        r.num("gen_rss_kib", own);
    }
    let _ = stop_tx.send(true);
    stop_progress.store(true, Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    if let Some(p) = pr {
        let _ = p.await;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_tracker_counts_loss_dups_and_reorders() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 3, 2, 2, 5, 6, 6] {
            t.observe(s);
        }
        // 4 and 7 (of 0..8) never came; 2 came late once and once more as a duplicate.
        assert_eq!(t.lost(8), 2);
        assert_eq!(t.reordered, 1);
        assert_eq!(t.dups, 2);
        assert_eq!(t.received, 8);
    }

    #[test]
    fn in_flight_takes_out_of_order() {
        let now = Instant::now();
        let mut f = InFlight::default();
        for id in 1..=4 {
            f.0.push_back((id, now));
        }
        assert!(f.take(3).is_some());
        assert!(f.take(1).is_some());
        assert!(f.take(3).is_none());
        assert_eq!(f.0.len(), 2);
    }
}

/// The session cookie (`name=value`) a 101 response set: the one whose name ends in `/ssid`.
fn session_cookie(head: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim().split(';').next().unwrap_or_default())
        .find(|pair| {
            pair.split_once('=')
                .is_some_and(|(n, _)| n.ends_with("/ssid"))
        })
        .map(str::to_owned)
}

/// Subscribes `conn` to `channel` (invoke `id`) and waits for the reply (10 s at most).
async fn subscribe_one(
    conn: &mut Conn,
    proto: Protocol,
    channel: &str,
    id: u64,
) -> Result<(), String> {
    proto.subscribe(&mut conn.out, channel, id);
    conn.flush().await.map_err(|e| e.to_string())?;
    let fut = async {
        loop {
            conn.read_more().await.map_err(|e| e.to_string())?;
            let mut done = None;
            conn.drain_frames(|m, out| {
                if let Incoming::Reply {
                    id: rid,
                    error,
                    body,
                } = proto.classify(m, out)
                    && rid == id
                {
                    done = Some((error, String::from_utf8_lossy(body).into_owned()));
                }
            })
            .map_err(|e| e.to_string())?;
            conn.flush().await.map_err(|e| e.to_string())?;
            match done {
                Some((false, _)) => return Ok(()),
                Some((true, body)) => return Err(format!("subscribe to {channel} failed: {body}")),
                None => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "no reply to the subscribe within 10 s".to_owned())?
}

/// What one session's pair of tabs measured.
#[derive(Debug)]
struct PairStats {
    seq: SeqTracker,
    sent: u64,
    in_window: u64,
    errors: u64,
    closed: Option<String>,
}

/// `bench session`.
pub(super) async fn session(a: super::SessionArgs) -> Result<Report, String> {
    use super::SessionMode;
    let c = &a.common;
    if c.protocol != Protocol::Sc {
        return Err("bench session drives a SocketCluster server (--protocol sc)".to_owned());
    }
    let (target1, mut r) = setup(c, "session").await?;
    let url2 = a
        .url2
        .clone()
        .or_else(|| c.url.clone())
        .unwrap_or_else(|| Protocol::Sc.default_url().to_owned());
    let target2 = Target::resolve(&url2, "").await?;
    if a.sessions == 0 || a.rate == 0 {
        return Err("--sessions and --rate must be at least 1".to_owned());
    }
    r.set("url2", Value::from(url2));
    let mode = a.mode;
    r.set(
        "mode",
        Value::from(match mode {
            SessionMode::Session => "session",
            SessionMode::Channel => "channel",
        }),
    );
    let progress = Arc::new(Progress::default());
    let stop_progress = Arc::new(AtomicBool::new(false));
    let pr = spawn_progress(
        "session",
        c.quiet,
        progress.clone(),
        stop_progress.clone(),
        "deliveries",
    );
    // The pairs: tab 1 gets the session cookie from its 101, tab 2 presents it to the other
    // worker. 100 pairs at a time.
    let sem = Arc::new(Semaphore::new(100));
    let mut opening = Vec::new();
    for i in 0..a.sessions {
        let (sem, t1, t2, progress) = (
            sem.clone(),
            target1.clone(),
            target2.clone(),
            progress.clone(),
        );
        opening.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
            let (mut tab1, head) = open_with(&t1, Protocol::Sc, None, "").await?;
            let extra = match mode {
                SessionMode::Session => {
                    let cookie = session_cookie(&head).ok_or_else(|| {
                        "the server set no session cookie on the 101 (is its session layer on?)"
                            .to_owned()
                    })?;
                    format!("Cookie: {cookie}\r\n")
                }
                SessionMode::Channel => String::new(),
            };
            let (mut tab2, _) = open_with(&t2, Protocol::Sc, None, &extra).await?;
            if mode == SessionMode::Channel {
                let channel = format!("bench/session/{i}");
                subscribe_one(&mut tab1, Protocol::Sc, &channel, 2).await?;
                subscribe_one(&mut tab2, Protocol::Sc, &channel, 2).await?;
            }
            progress.conns.fetch_add(2, Relaxed);
            Ok::<_, String>((tab1, tab2))
        }));
    }
    let mut pairs = Vec::with_capacity(a.sessions);
    for t in opening {
        pairs.push(t.await.map_err(|e| e.to_string())??);
    }
    let w = Window::new(c);
    let t0 = Instant::now();
    let lat = SharedLatency::new();
    let stop_at = w.to + a.drain;
    let period = Duration::from_secs_f64(1.0 / a.rate as f64);
    let n = pairs.len();
    let mut tasks = Vec::with_capacity(n);
    for (i, (tab1, tab2)) in pairs.into_iter().enumerate() {
        // Spread the pairs' schedules over one period.
        let start = t0 + period.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(pair(
            tab1,
            tab2,
            i,
            mode,
            (start, period, w, t0, stop_at),
            progress.clone(),
            lat.clone(),
        )));
    }
    let cpu1 = cpu_at_start(w, c.server_pid).await;
    let cpu2 = CpuWindow::start(a.server2_pid);
    let cpu_store = CpuWindow::start(a.store_pid);
    tokio::time::sleep_until(w.to).await;
    let (used1, used2, used_store) = (cpu1.end(), cpu2.end(), cpu_store.end());
    let (mut sent, mut lost, mut dups, mut reordered, mut received, mut in_window) =
        (0, 0, 0, 0, 0, 0);
    let (mut errors, mut closed, mut close_reason) = (0u64, 0u64, None);
    for t in tasks {
        let s = t.await.map_err(|e| e.to_string())??;
        if let Some(why) = s.closed {
            closed += 1;
            close_reason.get_or_insert(why);
        }
        lost += s.seq.lost(s.sent);
        dups += s.seq.dups;
        reordered += s.seq.reordered;
        received += s.seq.received;
        in_window += s.in_window;
        sent += s.sent;
        errors += s.errors;
    }
    stop_progress.store(true, Relaxed);
    let secs = c.duration.as_secs_f64();
    r.num("sessions", a.sessions);
    r.num("rate_per_session", a.rate);
    r.num("duration_s", secs);
    r.num("target_emits_per_s", a.rate * a.sessions as u64);
    r.num("deliveries_per_s", (in_window as f64 / secs).round());
    let lat = lat.snapshot();
    lat.report(&mut r, "");
    r.num("emitted", sent);
    r.num("received", received);
    r.num("lost", lost);
    r.num("duplicated", dups);
    r.num("order_violations", reordered);
    r.num("error_replies", errors);
    r.num("pairs_closed", closed);
    if let Some(why) = close_reason {
        r.set("close_reason", Value::from(why));
    }
    r.num("latency_samples", lat.len());
    used1.report(&mut r, c.duration, in_window, "delivery");
    let per =
        |d: Duration| (d.as_secs_f64() * 1e6 / in_window.max(1) as f64 * 100.0).round() / 100.0;
    if let Some(d) = used2.server() {
        r.num("server2_cpu_pct", round1(d.as_secs_f64() / secs * 100.0));
        r.num("server2_cpu_us_per_delivery", per(d));
    }
    if let Some(d) = used_store.server() {
        r.num("store_cpu_pct", round1(d.as_secs_f64() / secs * 100.0));
        r.num("store_cpu_us_per_emit", per(d));
    }
    if let Some(p) = pr {
        let _ = p.await;
    }
    Ok(r)
}

/// One session's two tabs: tab 1 sends on its schedule until the window ends; tab 2's
/// deliveries are checked (sequence) and timed (from the scheduled send) until every one
/// arrived or `stop_at`.
async fn pair(
    mut tab1: Conn,
    mut tab2: Conn,
    index: usize,
    mode: super::SessionMode,
    (start, period, w, t0, stop_at): (Instant, Duration, Window, Instant, Instant),
    progress: Arc<Progress>,
    lat: SharedLatency,
) -> Result<PairStats, String> {
    let mut s = PairStats {
        seq: SeqTracker::default(),
        sent: 0,
        in_window: 0,
        errors: 0,
        closed: None,
    };
    let channel = json_string(&format!("bench/session/{index}"));
    let mut next = start;
    let mut id: u64 = 3;
    let tick = tokio::time::sleep_until(next);
    tokio::pin!(tick);
    let end = tokio::time::sleep_until(stop_at);
    tokio::pin!(end);
    loop {
        if next >= w.to && s.seq.next >= s.sent && s.seq.lost(s.sent) == 0 {
            break;
        }
        tokio::select! {
            biased;
            () = &mut end => break,
            r = tab2.read_more() => {
                if let Err(e) = r {
                    s.closed = Some(e.to_string());
                    break;
                }
                let now = Instant::now();
                let in_win = w.contains(now);
                let mut got = 0;
                let drained = tab2.drain_frames(|m, out| {
                    let body = match (mode, Protocol::Sc.classify(m, out)) {
                        (super::SessionMode::Channel, Incoming::Publish(b)) => b,
                        (super::SessionMode::Session, _) if m.starts_with(b"{\"event\":\"m\"") => m,
                        _ => return,
                    };
                    if let Some(seq) = field_u64(body, b"\"seq\":") {
                        s.seq.observe(seq);
                        got += 1;
                        if in_win {
                            s.in_window += 1;
                            if let Some(t) = field_u64(body, b"\"t\":") {
                                lat.record(now.saturating_duration_since(t0 + Duration::from_micros(t)));
                            }
                        }
                    }
                });
                progress.ops.fetch_add(got, Relaxed);
                if let Err(e) = drained {
                    s.closed = Some(e.to_string());
                    break;
                }
            }
            r = tab1.read_more() => {
                if let Err(e) = r {
                    s.closed = Some(e.to_string());
                    break;
                }
                let mut errors = 0;
                let drained = tab1.drain_frames(|m, out| {
                    if let Incoming::Reply { error: true, .. } = Protocol::Sc.classify(m, out) {
                        errors += 1;
                    }
                });
                s.errors += errors;
                if let Err(e) = drained {
                    s.closed = Some(e.to_string());
                    break;
                }
            }
            () = &mut tick, if next < w.to => {
                let now = Instant::now();
                while next <= now && next < w.to {
                    let t_us = (next - t0).as_micros() as u64;
                    let mut nb = itoa::Buffer::new();
                    let mut data = Vec::with_capacity(96);
                    match mode {
                        super::SessionMode::Session => data.extend_from_slice(b"{\"event\":\"m\",\"data\":"),
                        super::SessionMode::Channel => {
                            data.extend_from_slice(b"{\"channel\":");
                            data.extend_from_slice(channel.as_bytes());
                            data.extend_from_slice(b",\"data\":");
                        }
                    }
                    data.extend_from_slice(b"{\"seq\":");
                    data.extend_from_slice(nb.format(s.sent).as_bytes());
                    data.extend_from_slice(b",\"t\":");
                    data.extend_from_slice(nb.format(t_us).as_bytes());
                    data.extend_from_slice(b"}}");
                    let event = match mode {
                        super::SessionMode::Session => "sessionEmit",
                        super::SessionMode::Channel => "#publish",
                    };
                    Protocol::Sc.invoke(&mut tab1.out, event, &data, id);
                    id += 1;
                    s.sent += 1;
                    next += period;
                }
                tick.as_mut().reset(next);
            }
        }
        for conn in [&mut tab1, &mut tab2] {
            if let Err(e) = conn.flush().await {
                s.closed = Some(e.to_string());
            }
        }
        if s.closed.is_some() {
            break;
        }
    }
    if s.closed.is_some() {
        progress.errors.fetch_add(1, Relaxed);
    }
    tab1.close().await;
    tab2.close().await;
    Ok(s)
}
