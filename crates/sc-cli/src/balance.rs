//! `socketcluster balance`: the balancer process, the front door of a cluster. It proxies every
//! request and WebSocket upgrade to the workers given with `--worker`, terminates TLS, filters
//! client addresses and caps connections per address. Several processes may share one port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use sc_balancer::tls::{ReloadableAcceptor, TlsFiles};
use sc_balancer::{
    AddressLimitLayer, Balancer, BalancerConfig, IpFilterLayer, ServeOptions, WorkerSet,
    bind_reuseport, serve,
};
use tower_layer::Layer;

use crate::{EXIT_CONFIG, print_line};

/// Options of `socketcluster balance`.
#[derive(Debug, Args)]
#[deny(missing_docs)]
pub(crate) struct BalanceArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port to listen on (SO_REUSEPORT: several balancer processes may share it)
    #[arg(long, default_value_t = 8000)]
    pub(crate) port: u16,
    /// A worker to route to, HOST:PORT (repeat for several; at least one). Every balancer of
    /// a cluster must list the workers in the same spelling: a session id carries a tag made
    /// from it
    #[arg(long = "worker", value_name = "HOST:PORT", required = true)]
    pub(crate) workers: Vec<String>,
    /// Certificate chain (PEM) to serve https:// and wss:// with (needs --tls-key)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 RSA, SEC1 EC, or encrypted PKCS#8 with
    /// --tls-key-passphrase). SIGHUP reads the certificate and key again
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Passphrase of an encrypted --tls-key
    #[arg(long, env = "SC_TLS_KEY_PASSPHRASE", hide_env_values = true)]
    pub(crate) tls_key_passphrase: Option<String>,
    /// Only clients from these blocks (CIDR; repeat) are served; others get 403
    #[arg(long = "allow", value_name = "CIDR")]
    pub(crate) allow: Vec<String>,
    /// Clients from these blocks (CIDR; repeat) get 403
    #[arg(long = "deny", value_name = "CIDR")]
    pub(crate) deny: Vec<String>,
    /// WebSockets open at once per client address (IPv6 per /64); 0 = no limit
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub(crate) address_connection_limit: usize,
    /// New WebSockets and engine.io sessions per second per client address, after a burst of
    /// --address-connect-burst; 0 = no limit
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub(crate) address_connect_rate: u32,
    /// The burst of --address-connect-rate
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub(crate) address_connect_burst: u32,
    /// TCP connections open at once per client address; 0 = no limit
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub(crate) address_tcp_limit: usize,
    /// Route new connections by the session cookie (`n/<app-name>/ssid`) instead of by load, so
    /// the tabs of one browser share a worker
    #[arg(long)]
    pub(crate) cookie_affinity: bool,
    /// The app name of the session cookie (as `serve`'s `worker.app_name`)
    #[arg(long, default_value = "socketcluster")]
    pub(crate) app_name: String,
    /// Milliseconds between health probes of every worker (a TCP connect)
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub(crate) health_interval_ms: u64,
    /// Threads; 0 = one per core this process may run on. One (the default) on a
    /// single-threaded runtime is what measured best: for more cores, run one `balance` process
    /// per core on the same port (SO_REUSEPORT)
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) threads: usize,
}

/// The `balance` subcommand. Call it outside any tokio runtime.
pub(crate) fn run(args: BalanceArgs) -> ExitCode {
    let usage = |m: String| {
        eprintln!("error: {m}");
        ExitCode::from(EXIT_CONFIG)
    };
    let ip = match crate::serve::host_ip(&args.host) {
        Ok(ip) => ip,
        Err(crate::serve::ConfigProblem(m)) => return usage(m),
    };
    let addr = SocketAddr::new(ip, args.port);
    if args.health_interval_ms == 0 {
        return usage("--health-interval-ms must be greater than 0".to_owned());
    }
    let filter = match IpFilterLayer::new(&args.allow, &args.deny) {
        Ok(f) => f,
        Err(e) => return usage(format!("--allow/--deny: {e}")),
    };
    crate::init_tracing();
    let runtime = match crate::serve::runtime_for(crate::serve::thread_count(args.threads)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(balance(args, addr, filter)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn balance(args: BalanceArgs, addr: SocketAddr, filter: IpFilterLayer) -> Result<(), String> {
    let workers = WorkerSet::new(&args.workers).map_err(|e| e.to_string())?;
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(
            ReloadableAcceptor::new(TlsFiles {
                cert,
                key,
                passphrase: args.tls_key_passphrase,
            })
            .map_err(|e| e.to_string())?,
        ),
        _ => None,
    };
    let listener = bind_reuseport(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let _probes = workers.spawn_health_checks(Duration::from_millis(args.health_interval_ms));
    let config = BalancerConfig {
        affinity_cookie: args
            .cookie_affinity
            .then(|| format!("n/{}/ssid", args.app_name)),
        ..BalancerConfig::default()
    };
    let service = filter.layer(
        AddressLimitLayer::new(
            args.address_connection_limit,
            args.address_connect_rate,
            args.address_connect_burst,
        )
        .layer(Balancer::with_config(workers, config)),
    );
    if let Some(tls) = tls.clone() {
        tokio::spawn(reload_on_sighup(tls));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    print_line(&format!(
        "socketcluster balancer listening on {scheme}://{local}/ (workers: {})",
        args.workers.join(", ")
    ));
    let options = ServeOptions {
        tls,
        address_tcp_limit: args.address_tcp_limit,
    };
    serve(listener, service, options, crate::serve::shutdown_signal()).await;
    tracing::info!("balancer stopped");
    Ok(())
}

/// Reads the certificate and key again on every SIGHUP; a failure keeps the old ones.
async fn reload_on_sighup(tls: ReloadableAcceptor) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the certificate will not be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: certificate and key reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: reload failed, the previous certificate stays")
            }
        }
    }
}
