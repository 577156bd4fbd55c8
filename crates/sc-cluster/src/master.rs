//! The master: reserves the ports, starts the children (stores, then workers, then balancers),
//! respawns whichever dies, tells the balancers which workers are up, and handles the signals:
//! SIGTERM/SIGINT drain and stop, SIGUSR2 restarts the workers one at a time, SIGHUP reloads the
//! balancers' certificate.

use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, mpsc, watch};

use crate::config::{ClusterConfig, StoreKind};
use crate::manage::{Metrics, Status as ManagedStatus};
use crate::net::Reservation;
use crate::proto::{ChildSpec, Command, ROLE_ENV, Report, Role, say};
use crate::registry;

/// The shortest wait before respawning a process that keeps crashing.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// How long a process that ignores `stop` gets after the drain timeout before it is killed.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long the master waits for each balancer to acknowledge a command before going on.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a child is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    Stopping,
    Backoff,
    Stopped,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Backoff => "backoff",
            Phase::Stopped => "stopped",
        }
    }
}

/// What others wait on: the phase, and how many times the child became ready and exited.
#[derive(Debug, Clone, Copy)]
struct Status {
    phase: Phase,
    pid: Option<u32>,
    readies: u64,
    exits: u64,
    restarts: u64,
}

/// One child's place: its role, id and address stay; the process behind it changes.
struct Slot {
    role: Role,
    id: usize,
    addr: SocketAddr,
    spec: String,
    status: watch::Sender<Status>,
    stdin: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    /// Set before a `stop` that should be followed by a respawn (rolling restart).
    restart: AtomicBool,
    kill: Notify,
    /// Commands the child has carried out (`done ...` lines): a balancer's acknowledgements.
    done: watch::Sender<u64>,
}

impl Slot {
    fn name(&self) -> String {
        format!("{} {}", self.role, self.id)
    }

    fn send(&self, c: Command) -> bool {
        self.stdin
            .lock()
            .as_ref()
            .is_some_and(|tx| tx.send(c).is_ok())
    }

    fn status(&self) -> Status {
        *self.status.borrow()
    }

    fn done(&self) -> u64 {
        *self.done.borrow()
    }

    /// Waits until the child carried out more than `seen` commands, at most `timeout`; false
    /// on timeout or when it is gone.
    async fn done_after(&self, seen: u64, timeout: Duration) -> bool {
        let mut rx = self.done.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|d| *d > seen)).await,
            Ok(Ok(_))
        )
    }

    /// Waits until the child has become ready more than `readies` times; `Err` if it exited
    /// more than `exits` times first, or on timeout.
    async fn ready_after(&self, seen: Status, timeout: Duration) -> Result<(), String> {
        let mut rx = self.status.subscribe();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| s.readies > seen.readies || s.exits > seen.exits),
        )
        .await;
        match waited {
            Err(_) => Err(format!("{} was not ready within {timeout:?}", self.name())),
            Ok(Err(_)) => Err(format!("{} is gone", self.name())),
            Ok(Ok(s)) if s.readies > seen.readies => Ok(()),
            Ok(Ok(_)) => Err(format!("{} exited before it was ready", self.name())),
        }
    }

    /// Waits until the child has exited more than `exits` times.
    async fn exited_after(&self, exits: u64) {
        let mut rx = self.status.subscribe();
        let _ = rx.wait_for(|s| s.exits > exits).await;
    }

    /// Asks the child to drain and exit; kills it if it is still there after `drain` plus a
    /// grace period. Returns once it exited.
    async fn stop(&self, drain: Duration) {
        let seen = self.status();
        if seen.pid.is_none() {
            return;
        }
        self.status.send_modify(|s| s.phase = Phase::Stopping);
        self.send(Command::Stop);
        let exited = self.exited_after(seen.exits);
        tokio::pin!(exited);
        if tokio::time::timeout(drain + KILL_GRACE, &mut exited)
            .await
            .is_err()
        {
            tracing::warn!("{} did not stop within {drain:?}: killing it", self.name());
            loop {
                self.kill.notify_waiters();
                if tokio::time::timeout(Duration::from_millis(200), &mut exited)
                    .await
                    .is_ok()
                {
                    break;
                }
            }
        }
    }
}

/// The master's state, shared by the supervisors, the signal loop and the management port.
pub(crate) struct Master {
    config: ClusterConfig,
    /// The binary every child runs, resolved once at start: a deploy that replaces the file
    /// takes effect at the next respawn, and a missing file is a clear error then.
    exe: std::path::PathBuf,
    slots: Vec<Arc<Slot>>,
    stopping: watch::Sender<bool>,
    rolling: AtomicBool,
    metrics: Metrics,
    /// Workers of other hosts the balancers route to (several hosts on one Redis).
    remote: Mutex<Vec<SocketAddr>>,
}

impl Master {
    fn of(&self, role: Role) -> impl Iterator<Item = &Arc<Slot>> {
        self.slots.iter().filter(move |s| s.role == role)
    }

    fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    fn tell_balancers(&self, c: &Command) {
        for b in self.of(Role::Balancer) {
            b.send(c.clone());
        }
    }

    /// Tells every balancer and waits (at most `timeout`) until each running one said it did it.
    async fn tell_balancers_and_wait(&self, c: &Command, timeout: Duration) {
        let seen: Vec<(Arc<Slot>, u64)> = self
            .of(Role::Balancer)
            .map(|b| (b.clone(), b.done()))
            .collect();
        self.tell_balancers(c);
        let waits = seen.iter().map(|(b, d)| async move {
            if b.status().phase == Phase::Running && !b.done_after(*d, timeout).await {
                tracing::warn!(
                    "{} did not acknowledge {:?} within {timeout:?}",
                    b.name(),
                    c
                );
            }
        });
        futures_util::future::join_all(waits).await;
    }
}

impl registry::Deployment for Master {
    fn local_workers(&self) -> Vec<(SocketAddr, bool)> {
        self.of(Role::Worker)
            .map(|s| (s.addr, s.status().phase == Phase::Running))
            .collect()
    }

    fn balancers(&self) -> Vec<(usize, u64, bool)> {
        self.of(Role::Balancer)
            .map(|s| {
                let st = s.status();
                (s.id, st.readies, st.phase == Phase::Running)
            })
            .collect()
    }

    fn tell_balancer(&self, id: usize, c: Command) {
        if let Some(b) = self.of(Role::Balancer).find(|s| s.id == id) {
            b.send(c);
        }
    }

    fn set_remote(&self, remote: Vec<SocketAddr>) {
        *self.remote.lock() = remote;
    }

    fn stopping(&self) -> bool {
        self.is_stopping()
    }
}

impl ManagedStatus for Master {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn health(&self) -> (bool, String) {
        let children: Vec<serde_json::Value> = self
            .slots
            .iter()
            .map(|s| {
                let st = s.status();
                serde_json::json!({
                    "role": s.role.as_str(),
                    "id": s.id,
                    "pid": st.pid,
                    "state": st.phase.as_str(),
                    "restarts": st.restarts,
                    "addr": s.addr.to_string(),
                })
            })
            .collect();
        let all_running = self
            .slots
            .iter()
            .all(|s| s.status().phase == Phase::Running);
        let status = if self.is_stopping() {
            "stopping"
        } else if all_running {
            "ok"
        } else {
            "degraded"
        };
        let remote: Vec<String> = self.remote.lock().iter().map(ToString::to_string).collect();
        let body =
            serde_json::json!({ "status": status, "children": children, "remote_workers": remote });
        (all_running && !self.is_stopping(), format!("{body}\n"))
    }
}

/// Runs the master until SIGTERM/SIGINT; the exit code for `main`.
pub(crate) fn run(config: ClusterConfig) -> ExitCode {
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(crate::EXIT_CONFIG);
    }
    crate::logging::init(true);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(master(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn master(config: ClusterConfig) -> Result<(), String> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let reserve = |addr: SocketAddr, what: &str| {
        Reservation::new(addr)
            .map_err(|e| format!("cannot reserve a port for {what} ({addr}): {e}"))
    };
    let store_kind = config.store_kind().map_err(|e| e.to_string())?;
    let mut held = Vec::new();
    let mut plan: Vec<(Role, usize, SocketAddr)> = Vec::new();
    if store_kind == StoreKind::Embedded {
        for id in 0..config.stores {
            let r = reserve(loopback, "a store")?;
            plan.push((Role::Store, id, r.addr()));
            held.push(r);
        }
    }
    let worker_ip = SocketAddr::new(config.worker_ip().map_err(|e| e.to_string())?, 0);
    for id in 0..config.worker_count() {
        let r = reserve(worker_ip, "a worker")?;
        plan.push((Role::Worker, id, r.addr()));
        held.push(r);
    }
    let front = config.balancer_addr().map_err(|e| e.to_string())?;
    let front = reserve(front, "the balancers")
        .map_err(|e| format!("{e}: is another server on that port? (--port)"))?;
    let front_addr = front.addr();
    for id in 0..config.balancers {
        plan.push((Role::Balancer, id, front_addr));
    }
    held.push(front);
    let manage_addr = config.management_addr().map_err(|e| e.to_string())?;
    let manage = tokio::net::TcpListener::bind(manage_addr)
        .await
        .map_err(|e| format!("cannot listen on the management port {manage_addr}: {e}"))?;
    let manage_addr = manage.local_addr().map_err(|e| e.to_string())?;

    // With Redis, the hosts sharing it act as one deployment: the master lists its workers
    // there (the registry) and, without an auth key of its own, shares the first master's.
    let shared = match (&store_kind, &config.deployment) {
        (StoreKind::Redis(nodes), Some(_)) => {
            let mut rc = sc_worker::sc_store::RespConfig::new(nodes.clone());
            rc.secret = config.store_secret.clone();
            let store = sc_worker::sc_store::RespStore::connect(rc)
                .await
                .map_err(|e| format!("cannot reach the store: {e}"))?;
            Some(Arc::new(store) as Arc<dyn sc_worker::sc_store::Store>)
        }
        _ => None,
    };
    let auth_key = match (&config.auth_key, &shared) {
        (Some(k), _) => k.clone(),
        (None, Some(store)) => shared_auth_key(&**store, &config).await?,
        (None, None) => {
            tracing::info!("no auth key given: the workers share a random one");
            random_secret()
        }
    };
    let (store_nodes, store_secret) = match &store_kind {
        StoreKind::Embedded => (
            plan.iter()
                .filter(|(r, ..)| *r == Role::Store)
                .map(|(_, _, a)| a.to_string())
                .collect(),
            Some(config.store_secret.clone().unwrap_or_else(random_secret)),
        ),
        StoreKind::Redis(nodes) => (nodes.clone(), config.store_secret.clone()),
    };
    let workers: Vec<SocketAddr> = plan
        .iter()
        .filter(|(r, ..)| *r == Role::Worker)
        .map(|(_, _, a)| *a)
        .collect();

    let metrics = Metrics::new();
    let mut slots = Vec::new();
    for &(role, id, addr) in &plan {
        let spec = ChildSpec {
            role,
            id,
            addr,
            config: config.clone(),
            auth_key: auth_key.clone(),
            store_secret: store_secret.clone(),
            store_nodes: store_nodes.clone(),
            workers: workers.clone(),
        };
        let spec = serde_json::to_string(&spec).map_err(|e| e.to_string())? + "\n";
        metrics.register_child(role, id);
        slots.push(Arc::new(Slot {
            role,
            id,
            addr,
            spec,
            status: watch::Sender::new(Status {
                phase: Phase::Starting,
                pid: None,
                readies: 0,
                exits: 0,
                restarts: 0,
            }),
            stdin: Mutex::new(None),
            restart: AtomicBool::new(false),
            kill: Notify::new(),
            done: watch::Sender::new(0),
        }));
    }
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this program's own binary to start the children: {e}"))?;
    let master = Arc::new(Master {
        exe,
        config: config.clone(),
        slots,
        stopping: watch::Sender::new(false),
        rolling: AtomicBool::new(false),
        metrics,
        remote: Mutex::new(Vec::new()),
    });

    // Stores first (workers connect to them), then workers, then the front door.
    let start_timeout = Duration::from_millis(config.start_timeout_ms);
    for role in [Role::Store, Role::Worker, Role::Balancer] {
        let mut waits = Vec::new();
        for slot in master.of(role) {
            let seen = slot.status();
            tokio::spawn(supervise(master.clone(), slot.clone()));
            waits.push((slot.clone(), seen));
        }
        for (slot, seen) in waits {
            if let Err(e) = slot.ready_after(seen, start_timeout).await {
                stop_all(&master).await;
                return Err(format!(
                    "the cluster did not start: {e} (see its log above)"
                ));
            }
        }
    }
    tokio::spawn(crate::manage::serve(manage, master.clone()));
    if let Some(store) = &shared {
        tokio::spawn(registry::run(
            master.clone(),
            store.clone(),
            registry::key(&config, "workers"),
        ));
    }
    let scheme = if config.tls.cert.is_some() {
        "https"
    } else {
        "http"
    };
    say(&format!(
        "socketcluster cluster listening on {scheme}://{} (management http://{manage_addr}/)",
        shown(front_addr) + "/"
    ));
    tracing::info!(
        workers = workers.len(),
        stores = master.of(Role::Store).count(),
        balancers = config.balancers,
        "cluster running"
    );

    signals(&master).await?;
    if let Some(store) = &shared {
        // Other hosts stop routing to these workers before they drain.
        registry::withdraw(&*master, &**store, &registry::key(&config, "workers")).await;
    }
    stop_all(&master).await;
    drop(held);
    say("cluster stopped");
    Ok(())
}

/// The auth key every master on the Redis store shares: the first one any of them put there
/// (a list, so that two masters starting at once agree on the first).
async fn shared_auth_key(
    store: &dyn sc_worker::sc_store::Store,
    config: &ClusterConfig,
) -> Result<String, String> {
    let key_of = registry::key(config, "auth-key");
    let err =
        |e: sc_worker::sc_store::Error| format!("cannot share the auth key on the store: {e}");
    // Masters starting at the same time may both add one: the first stays the key.
    if store.list_count(&key_of).await.map_err(err)? == 0 {
        store
            .list_add(&key_of, random_secret().into())
            .await
            .map_err(err)?;
    }
    let first = store.list_range(&key_of, 0, 0).await.map_err(err)?;
    let key = first
        .first()
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| !k.is_empty())
        .ok_or("the auth key on the store is unreadable")?
        .to_owned();
    tracing::info!("no auth key given: sharing the deployment's key on the store");
    Ok(key)
}

fn shown(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        SocketAddr::V4(a) => a.to_string(),
    }
}

/// Handles signals until SIGTERM or SIGINT.
async fn signals(master: &Arc<Master>) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen =
        |k: SignalKind, name: &str| signal(k).map_err(|e| format!("cannot listen for {name}: {e}"));
    let mut term = listen(SignalKind::terminate(), "SIGTERM")?;
    let mut int = listen(SignalKind::interrupt(), "SIGINT")?;
    let mut usr2 = listen(SignalKind::user_defined2(), "SIGUSR2")?;
    let mut hup = listen(SignalKind::hangup(), "SIGHUP")?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); return Ok(()); }
            _ = usr2.recv() => {
                if master.rolling.swap(true, Ordering::AcqRel) {
                    tracing::warn!("SIGUSR2: a rolling restart is already under way");
                } else {
                    tokio::spawn(rolling_restart(master.clone()));
                }
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: the balancers reload their certificate");
                master.tell_balancers(&Command::Reload);
            }
        }
    }
}

/// Restarts the workers one at a time: the balancers stop sending it new traffic, it drains
/// (its clients reconnect at once to the others), a new process takes its place and the
/// balancers route to it again; then the next.
async fn rolling_restart(master: Arc<Master>) {
    let drain = Duration::from_millis(master.config.drain_timeout_ms);
    let start_timeout = Duration::from_millis(master.config.start_timeout_ms);
    let pause = Duration::from_millis(master.config.rolling_restart_pause_ms);
    let workers: Vec<Arc<Slot>> = master.of(Role::Worker).cloned().collect();
    tracing::info!(workers = workers.len(), "SIGUSR2: rolling restart");
    let mut restarted = 0;
    for slot in &workers {
        if master.is_stopping() {
            break;
        }
        let seen = slot.status();
        if seen.phase != Phase::Running {
            tracing::info!(
                "{} is not running: skipped (it is being respawned)",
                slot.name()
            );
            continue;
        }
        if restarted > 0 {
            // The last worker's clients reconnect to the others: let them settle before the next
            // worker drains, so no client is closed twice in a row.
            tokio::time::sleep(pause).await;
        }
        // The worker gets no new connection from here: no client is sent to a worker that is
        // about to close it.
        master
            .tell_balancers_and_wait(&Command::Remove(slot.addr.to_string()), ACK_TIMEOUT)
            .await;
        slot.restart.store(true, Ordering::Release);
        slot.stop(drain).await;
        // Its successor may be ready already: count from before the stop, that exit included.
        let planned = Status {
            exits: seen.exits + 1,
            ..seen
        };
        if let Err(e) = slot.ready_after(planned, start_timeout).await {
            tracing::error!("rolling restart: {e}; stopping the rolling restart here");
            break;
        }
        restarted += 1;
    }
    say(&format!("rolling restart done ({restarted} workers)"));
    master.rolling.store(false, Ordering::Release);
}

/// Drains and stops everything: the balancers stop accepting, the workers close their sockets
/// with a code that makes clients reconnect (elsewhere) and answer their invokes, then the
/// balancers end with their last tunnels, then the stores.
async fn stop_all(master: &Arc<Master>) {
    master.stopping.send_replace(true);
    let drain = Duration::from_millis(master.config.drain_timeout_ms);
    let balancers: Vec<_> = master.of(Role::Balancer).cloned().collect();
    let workers: Vec<_> = master.of(Role::Worker).cloned().collect();
    let stores: Vec<_> = master.of(Role::Store).cloned().collect();
    let front = tokio::spawn(async move {
        futures_util::future::join_all(balancers.iter().map(|b| b.stop(drain))).await;
    });
    futures_util::future::join_all(workers.iter().map(|w| w.stop(drain))).await;
    let _ = front.await;
    futures_util::future::join_all(stores.iter().map(|s| s.stop(drain))).await;
}

fn describe(status: &std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "unknown".to_owned(),
        },
        Err(e) => e.to_string(),
    }
}

/// Runs one slot's processes for the cluster's life: spawn, feed, watch, respawn.
async fn supervise(master: Arc<Master>, slot: Arc<Slot>) {
    let stable_after = Duration::from_millis(master.config.stable_after_ms);
    let backoff_max = Duration::from_millis(master.config.restart_backoff_max_ms).max(BACKOFF_MIN);
    let mut backoff = Duration::ZERO;
    let mut stopping = master.stopping.subscribe();
    loop {
        if master.is_stopping() {
            break;
        }
        let started = Instant::now();
        let status = match spawn(&master, &slot) {
            Ok(mut child) => tokio::select! {
                s = child.wait() => s,
                () = slot.kill.notified() => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            },
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", master.exe.display()),
            )),
        };
        let desc = describe(&status);
        let pid = slot
            .status()
            .pid
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        *slot.stdin.lock() = None;
        master.metrics.gone(slot.role, slot.id);
        say(&format!(
            "child exited role={} id={} pid={pid} status={desc}",
            slot.role, slot.id
        ));
        if slot.role == Role::Worker && !master.is_stopping() {
            master.tell_balancers(&Command::Remove(slot.addr.to_string()));
        }
        let planned = slot.restart.swap(false, Ordering::AcqRel);
        let stop_now = master.is_stopping();
        slot.status.send_modify(|s| {
            s.exits += 1;
            s.pid = None;
            s.phase = if stop_now {
                Phase::Stopped
            } else {
                Phase::Starting
            };
            if !stop_now && !planned {
                s.restarts += 1;
            }
        });
        if stop_now {
            break;
        }
        if planned {
            tracing::info!(
                "{} stopped for the rolling restart: starting its successor",
                slot.name()
            );
            backoff = Duration::ZERO;
            continue;
        }
        master.metrics.restarted(slot.role, slot.id);
        backoff = if started.elapsed() >= stable_after {
            Duration::ZERO
        } else {
            (backoff * 2).clamp(BACKOFF_MIN, backoff_max)
        };
        if backoff.is_zero() {
            tracing::warn!("{} died ({desc}): respawning it", slot.name());
            continue;
        }
        tracing::warn!(
            "{} died ({desc}) {:?} after its start: crash loop, respawning in {backoff:?}",
            slot.name(),
            started.elapsed()
        );
        slot.status.send_modify(|s| s.phase = Phase::Backoff);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    }
    slot.status.send_modify(|s| s.phase = Phase::Stopped);
}

/// Starts the slot's process: the same binary with the same arguments, the role in the
/// environment, the spec on stdin; its own process group (a terminal's Ctrl-C reaches only the
/// master, which drains the children in order).
fn spawn(master: &Arc<Master>, slot: &Arc<Slot>) -> std::io::Result<tokio::process::Child> {
    let mut child = tokio::process::Command::new(&master.exe)
        .args(std::env::args_os().skip(1))
        .env(ROLE_ENV, slot.role.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(std::io::Error::other("the child's pipes are missing"));
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
    let spec = slot.spec.clone();
    tokio::spawn(async move {
        if stdin.write_all(spec.as_bytes()).await.is_err() {
            return;
        }
        while let Some(c) = rx.recv().await {
            if stdin.write_all(c.line().as_bytes()).await.is_err() {
                return;
            }
        }
        // The master dropped the sender: the child reads the end of its stdin.
    });
    *slot.stdin.lock() = Some(tx);
    slot.status.send_modify(|s| {
        s.pid = pid;
        s.phase = Phase::Starting;
    });
    let prefix = format!("[{} {}] ", slot.role, slot.id);
    tokio::spawn(forward_stderr(prefix, stderr));
    tokio::spawn(read_reports(master.clone(), slot.clone(), stdout));
    Ok(child)
}

async fn forward_stderr(prefix: String, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("{prefix}{line}");
    }
}

async fn read_reports(master: Arc<Master>, slot: Arc<Slot>, stdout: tokio::process::ChildStdout) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match Report::parse(&line) {
            Some(Report::Ready(addr)) => {
                let pid = slot.status().pid.unwrap_or(0);
                slot.status.send_modify(|s| {
                    s.readies += 1;
                    s.phase = Phase::Running;
                });
                say(&format!(
                    "child ready role={} id={} pid={pid} addr={addr}",
                    slot.role, slot.id
                ));
                if slot.role == Role::Worker && !master.is_stopping() {
                    master.tell_balancers(&Command::Add(slot.addr.to_string()));
                }
            }
            Some(Report::Stats(fields)) => master.metrics.update(slot.role, slot.id, &fields),
            Some(Report::Done) => slot.done.send_modify(|d| *d += 1),
            None => eprintln!("[{} {}] {line}", slot.role, slot.id),
        }
    }
}
