//! A child process: reads its [`ChildSpec`] from stdin, runs its role (store, worker or
//! balancer), says `ready`, reports its counters every second, and obeys the master's commands
//! until `stop` (drain, then exit 0) or the end of stdin (the master is gone: exit at once).

use std::io::BufRead;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tower::Layer;

use crate::config::per_core;
use crate::proto::{ChildSpec, Command, Role, say};
use crate::{Worker, WorkerApp, WorkerFn};

/// How often a child reports its counters.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// The close code of a draining worker's sockets: socketcluster-client reconnects on it at
/// once (to another worker, through the balancer).
const DRAIN_CODE: u16 = sc_worker::RESTART;

/// Runs the role named by the environment; the spec comes on stdin.
pub(crate) fn run(role: &str, app: Arc<WorkerFn>) -> ExitCode {
    let Some(role) = Role::parse(role) else {
        eprintln!(
            "error: {} is {role:?}: expected store, worker or balancer",
            crate::proto::ROLE_ENV
        );
        return ExitCode::from(crate::EXIT_CONFIG);
    };
    let stdin = std::io::stdin();
    let mut first = String::new();
    if let Err(e) = stdin.lock().read_line(&mut first) {
        eprintln!("error: cannot read the spec from the master: {e}");
        return ExitCode::FAILURE;
    }
    let spec: ChildSpec = match serde_json::from_str(&first) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: this process was started as a cluster {role} but got no valid spec on \
                 stdin ({e}); only `socketcluster run` (or a Cluster's master) starts children"
            );
            return ExitCode::from(crate::EXIT_CONFIG);
        }
    };
    crate::logging::init(false);
    let commands = read_commands();
    let result = match role {
        Role::Store => store(spec, commands),
        Role::Worker => worker(spec, &*app, commands),
        Role::Balancer => balancer(spec, commands),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn say_stats(stats: &impl serde::Serialize) {
    if let Ok(json) = serde_json::to_string(stats) {
        say(&format!("stats {json}"));
    }
}

/// The master's commands, read by a thread of their own; `None` at the end of stdin.
fn read_commands() -> mpsc::UnboundedReceiver<Option<Command>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("sc-cluster stdin".to_owned())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match Command::parse(&line) {
                    Some(c) => {
                        if tx.send(Some(c)).is_err() {
                            return;
                        }
                    }
                    None => tracing::warn!(line, "unknown command from the master"),
                }
            }
            let _ = tx.send(None);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot read the master's commands");
    }
    rx
}

/// The master is gone: nothing may outlive it.
#[allow(
    clippy::exit,
    reason = "a child whose master died ends at once, whatever it runs"
)]
fn orphaned() -> ! {
    tracing::warn!("the master is gone: exiting");
    std::process::exit(1)
}

/// Waits for `stop` (or SIGTERM); the end of stdin ends the process.
async fn until_stop(commands: &mut mpsc::UnboundedReceiver<Option<Command>>) {
    let term = sigterm();
    tokio::pin!(term);
    loop {
        tokio::select! {
            c = commands.recv() => match c {
                Some(Some(Command::Stop)) => return,
                Some(Some(other)) => tracing::debug!(?other, "command ignored by this role"),
                Some(None) | None => orphaned(),
            },
            () = &mut term => return,
        }
    }
}

/// Resolves on SIGTERM (a service manager may send it to every process of the cluster at once:
/// each then drains as on `stop`). SIGINT, SIGHUP and SIGUSR2 are the master's to handle: a child
/// ignores them, so a signal sent to the whole group does not kill it. Call within a runtime.
async fn sigterm() {
    use tokio::signal::unix::{SignalKind, signal};
    for kind in [
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::user_defined2(),
    ] {
        // Once tokio handles a signal, its default action (ending the process) is gone for good.
        if let Err(e) = signal(kind) {
            tracing::warn!(error = %e, ?kind, "cannot ignore a signal");
        }
    }
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
            tracing::info!("SIGTERM: draining");
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
        }
    }
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match per_core(threads) {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

type Result<T> = std::result::Result<T, String>;

fn store(spec: ChildSpec, mut commands: mpsc::UnboundedReceiver<Option<Command>>) -> Result<()> {
    let listener = crate::net::listen(spec.addr)
        .map_err(|e| format!("cannot listen on {}: {e}", spec.addr))?;
    let config = sc_store::server::ServerConfig {
        secret: spec.store_secret.clone(),
        ..sc_store::server::ServerConfig::default()
    };
    let stats = config.stats.clone();
    std::thread::Builder::new()
        .name("sc-cluster stats".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(STATS_EVERY);
                say_stats(&stats.snapshot());
            }
        })
        .map_err(|e| format!("cannot start the stats thread: {e}"))?;
    say(&format!("ready {}", spec.addr));
    sc_store::server::run_until(listener, config, async move {
        until_stop(&mut commands).await;
    })
    .map_err(|e| format!("store server: {e}"))
}

fn worker(
    spec: ChildSpec,
    app: &WorkerFn,
    mut commands: mpsc::UnboundedReceiver<Option<Command>>,
) -> Result<()> {
    let rt = runtime(spec.config.worker_threads)
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let mut rc = sc_store::RespConfig::new(spec.store_nodes.clone());
        rc.secret = spec.store_secret.clone();
        let store = sc_store::RespStore::connect(rc)
            .await
            .map_err(|e| format!("cannot reach the store: {e}"))?;
        let mut config = spec.config.worker.clone();
        // This host's balancers connect from this machine (from its worker_host address when
        // that is not loopback): their X-Forwarded-For names the client. Other hosts'
        // balancers are trusted only when `trusted_proxies` names them (docs/deploy.md).
        let own = spec.addr.ip().to_string();
        for local in ["127.0.0.1", "::1", own.as_str()] {
            if !config.trusted_proxies.iter().any(|p| p == local) {
                config.trusted_proxies.push(local.to_owned());
            }
        }
        let worker = Worker {
            id: spec.id,
            config,
            auth_key: spec.auth_key.clone(),
            store: Arc::new(store),
            app_config: spec.config.app.clone(),
        };
        let WorkerApp { service, handle } =
            app(worker).map_err(|e| format!("the worker function failed: {e}"))?;
        let listener = crate::net::listen(spec.addr)
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| format!("cannot listen on {}: {e}", spec.addr))?;
        let server = tokio::spawn(sc_worker::serve(listener, service, handle.clone()));
        let reporter = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATS_EVERY);
            loop {
                tick.tick().await;
                say_stats(&reporter.metrics());
            }
        });
        say(&format!("ready {}", spec.addr));
        until_stop(&mut commands).await;
        tracing::info!("draining");
        let drain = Duration::from_millis(spec.config.drain_timeout_ms);
        handle
            .shutdown_with(DRAIN_CODE, "Worker is draining", drain)
            .await;
        let _ = server.await;
        say_stats(&handle.metrics());
        Ok(())
    })
}

fn balancer(spec: ChildSpec, mut commands: mpsc::UnboundedReceiver<Option<Command>>) -> Result<()> {
    let cfg = &spec.config;
    let rt = runtime(cfg.balancer_threads).map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let cfg = &spec.config;
        let addrs: Vec<String> = spec.workers.iter().map(ToString::to_string).collect();
        let workers = sc_balancer::WorkerSet::new(&addrs).map_err(|e| format!("workers: {e}"))?;
        let tls = match (&cfg.tls.cert, &cfg.tls.key) {
            (Some(cert), Some(key)) => Some(
                sc_balancer::tls::ReloadableAcceptor::new(sc_balancer::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    passphrase: cfg.tls.passphrase.clone(),
                })
                .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        let (service, metrics) = balancer_service(workers.clone(), cfg)?;
        let listener = crate::net::listen(spec.addr)
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| format!("cannot listen on {}: {e}", spec.addr))?;
        let _probes =
            workers.spawn_health_checks(Duration::from_millis(cfg.balancer.health_interval_ms));
        let reporter = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATS_EVERY);
            loop {
                tick.tick().await;
                say_stats(&reporter.snapshot());
            }
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let control = workers.clone();
        let reload = tls.clone();
        tokio::spawn(async move {
            let mut stop_tx = Some(stop_tx);
            let term = sigterm();
            tokio::pin!(term);
            loop {
                let command = tokio::select! {
                    c = commands.recv() => c,
                    () = &mut term, if stop_tx.is_some() => Some(Some(Command::Stop)),
                };
                match command {
                    Some(Some(Command::Stop)) => {
                        if let Some(tx) = stop_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Some(Some(Command::Add(a))) => {
                        match control.add(&a) {
                            Ok(_) => tracing::info!(worker = %a, "routing to worker"),
                            Err(e) => tracing::debug!(worker = %a, error = %e, "add"),
                        }
                        say(&format!("done add {a}"));
                    }
                    Some(Some(Command::Remove(a))) => {
                        if control.remove(&a) {
                            tracing::info!(worker = %a, "no new traffic to worker");
                        }
                        // The master drains the worker only after every balancer said this.
                        say(&format!("done remove {a}"));
                    }
                    Some(Some(Command::Reload)) => match &reload {
                        Some(tls) => match tls.reload() {
                            Ok(()) => tracing::info!("certificate and key reloaded"),
                            Err(e) => tracing::error!(
                                error = %e,
                                "reload failed, the previous certificate stays"
                            ),
                        },
                        None => tracing::debug!("reload: no TLS"),
                    },
                    Some(None) | None => orphaned(),
                }
            }
        });
        let options = sc_balancer::ServeOptions {
            tls,
            address_tcp_limit: cfg.balancer.address_tcp_limit,
        };
        say(&format!("ready {}", spec.addr));
        sc_balancer::serve(listener, service, options, async {
            let _ = stop_rx.await;
        })
        .await;
        // No new connections; the tunnels end as the workers close their sockets.
        tracing::info!("draining");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.drain_timeout_ms);
        while metrics.snapshot().tunnels_open > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        say_stats(&metrics.snapshot());
        Ok(())
    })
}

/// What a cluster's balancer serves.
type FrontDoor = sc_balancer::IpFilter<sc_balancer::AddressLimit<sc_balancer::Balancer>>;

/// The balancer service of a cluster (the address filter and the per-address caps around the
/// proxy) and its metrics.
pub(crate) fn balancer_service(
    workers: sc_balancer::WorkerSet,
    cfg: &crate::ClusterConfig,
) -> Result<(FrontDoor, Arc<sc_balancer::Metrics>)> {
    let b = &cfg.balancer;
    let filter = sc_balancer::IpFilterLayer::new(&b.allow, &b.deny)
        .map_err(|e| format!("balancer.allow/deny: {e}"))?;
    let config = sc_balancer::BalancerConfig {
        affinity_cookie: b
            .cookie_affinity
            .then(|| format!("n/{}/ssid", cfg.worker.app_name)),
        engineio_path: cfg.worker.engineio_path.clone(),
    };
    let proxy = sc_balancer::Balancer::with_config(workers, config);
    let metrics = proxy.metrics_handle();
    let service = filter.layer(
        sc_balancer::AddressLimitLayer::new(
            b.address_connection_limit,
            b.address_connect_rate,
            b.address_connect_burst,
        )
        .layer(proxy),
    );
    Ok((service, metrics))
}
