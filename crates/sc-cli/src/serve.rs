//! `socketcluster serve`: options (defaults, then the config file, then env and flags), the
//! listener, and the run loop with graceful shutdown on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use sc_worker::{Config as WorkerConfig, ScServer};

/// Options of `socketcluster serve`.
#[derive(Debug, Args)]
#[deny(missing_docs)]
pub(crate) struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1]
    #[arg(long)]
    pub(crate) host: Option<String>,
    /// Port to listen on; 0 picks a free one [default: 8000]
    #[arg(long)]
    pub(crate) port: Option<u16>,
    /// Secret that signs auth tokens (HS256); every process with the same key accepts the
    /// others' tokens. Without it a random key is made per process
    #[arg(long, env = "SC_AUTH_KEY", hide_env_values = true)]
    pub(crate) auth_key: Option<String>,
    /// TOML config file (see `socketcluster gen-config`); flags override it
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Where channels are shared with other processes: `local` (in-process only),
    /// `sc://HOST:PORT[,HOST:PORT...]` (store processes run by `socketcluster store`) or
    /// `redis://HOST:PORT[/DB]` (one Redis; several comma-separated are sharded like store
    /// processes; any master of a Redis Cluster, whose other masters are then found). Every
    /// process must list the same nodes in the same spelling [default: local]
    #[arg(long, value_name = "URL")]
    pub(crate) store: Option<String>,
    /// Secret sent with AUTH to the store nodes (`socketcluster store --secret`, or Redis's
    /// requirepass)
    #[arg(long, env = "SC_STORE_SECRET", hide_env_values = true)]
    pub(crate) store_secret: Option<String>,
    /// Threads that serve sockets; 0 starts one per core this process may run on (see
    /// `taskset`). Several make a work-stealing pool; one (1, or 0 on one core) runs everything
    /// on a single-threaded runtime [default: 0]
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<usize>,
    /// Where the demo page at `/` finds the browser builds it loads (socketcluster-client,
    /// engine.io-client): a `node_modules` directory, as `npm ci --prefix web` makes it
    /// [default: web/node_modules]
    #[arg(long, value_name = "DIR")]
    pub(crate) demo_assets: Option<PathBuf>,
    /// A proxy in front of the server (`10.0.0.0/8`, `127.0.0.1`, `::1`; repeat for several):
    /// from these peers only, the client's address is taken from `Forwarded` /
    /// `X-Forwarded-For` (or the PROXY protocol header). Replaces `worker.trusted_proxies` of
    /// the config file [default: none]
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub(crate) trusted_proxies: Vec<String>,
    /// Read a PROXY protocol header (v1 or v2, as HAProxy's `send-proxy` writes it) at the start
    /// of every connection from a trusted proxy (needs --trusted-proxy)
    #[arg(long)]
    pub(crate) proxy_protocol: bool,
}

/// Where `serve` shares channels: parsed from `--store` / `store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreSpec {
    /// In-process only.
    Local,
    /// RESP nodes (store processes or Redis), as passed to `RespConfig::new`.
    Resp(Vec<String>),
}

impl StoreSpec {
    /// Parses `local`, `sc://A,B` or `redis://A[,B]`.
    pub(crate) fn parse(text: &str) -> Result<Self, ConfigProblem> {
        let text = text.trim();
        if text.is_empty() || text == "local" {
            return Ok(StoreSpec::Local);
        }
        let bad = |why: &str| {
            ConfigProblem(format!(
                "--store {text:?}: {why} (expected local, sc://HOST:PORT[,HOST:PORT...] or \
                 redis://HOST:PORT[,HOST:PORT...])"
            ))
        };
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("missing scheme"))?;
        let parts: Vec<&str> = rest.split(',').map(str::trim).collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("empty node"));
        }
        match scheme {
            "sc" => {
                for p in &parts {
                    if p.contains('/') || p.contains('@') || p.rsplit_once(':').is_none() {
                        return Err(bad("a node is HOST:PORT"));
                    }
                }
                Ok(StoreSpec::Resp(parts.into_iter().map(Into::into).collect()))
            }
            "redis" => Ok(StoreSpec::Resp(
                parts.into_iter().map(|p| format!("redis://{p}")).collect(),
            )),
            _ => Err(bad("unknown scheme")),
        }
    }
}

/// The config file: listener, auth key and the worker's options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// Address to listen on.
    pub(crate) host: String,
    /// Port to listen on.
    pub(crate) port: u16,
    /// Token signing secret (prefer `--auth-key` or `SC_AUTH_KEY`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_key: Option<String>,
    /// Where channels are shared: `local`, `sc://HOST:PORT,...` or `redis://HOST:PORT,...`.
    pub(crate) store: String,
    /// Secret for the store nodes (prefer `--store-secret` or `SC_STORE_SECRET`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) store_secret: Option<String>,
    /// Threads that serve sockets; 0 = one per core this process may run on.
    pub(crate) threads: usize,
    /// Where the demo page finds its browser builds (`npm ci --prefix web` installs them).
    pub(crate) demo_assets: PathBuf,
    /// The server's options and limits.
    pub(crate) worker: WorkerConfig,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            host: "127.0.0.1".to_owned(),
            port: 8000,
            auth_key: None,
            store: "local".to_owned(),
            store_secret: None,
            threads: 0,
            demo_assets: PathBuf::from("web/node_modules"),
            worker: WorkerConfig::default(),
        }
    }
}

/// Prints the defaults as TOML.
pub(crate) fn gen_config() -> Result<String, String> {
    let body = toml::to_string_pretty(&FileConfig::default()).map_err(|e| e.to_string())?;
    Ok(format!(
        "# socketcluster serve --config FILE; flags and SC_AUTH_KEY override these values.\n\
         # auth_key = \"a long random secret\"\n\
         # store: local, sc://127.0.0.1:6380,127.0.0.1:6381 or redis://127.0.0.1:6379\n{body}"
    ))
}

/// A problem with the options: exit code 64.
#[derive(Debug)]
pub(crate) struct ConfigProblem(pub(crate) String);

/// Merges defaults, file, env and flags, and checks the result.
pub(crate) fn resolve(args: ServeArgs) -> Result<FileConfig, ConfigProblem> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigProblem(format!("cannot read config file {}: {e}", path.display()))
            })?;
            toml::from_str::<FileConfig>(&text).map_err(|e| {
                ConfigProblem(format!("invalid config file {}: {e}", path.display()))
            })?
        }
        None => FileConfig::default(),
    };
    if let Some(h) = args.host {
        cfg.host = h;
    }
    if let Some(p) = args.port {
        cfg.port = p;
    }
    if let Some(k) = args.auth_key {
        cfg.auth_key = Some(k);
    }
    if let Some(s) = args.store {
        cfg.store = s;
    }
    if let Some(s) = args.store_secret {
        cfg.store_secret = Some(s);
    }
    if let Some(dir) = &args.demo_assets {
        cfg.demo_assets = dir.clone();
    }
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    if !args.trusted_proxies.is_empty() {
        cfg.worker.trusted_proxies = args.trusted_proxies;
    }
    if args.proxy_protocol {
        cfg.worker.proxy_protocol = true;
    }
    if cfg.threads > MAX_THREADS {
        return Err(ConfigProblem(format!(
            "--threads {} is more than {MAX_THREADS}",
            cfg.threads
        )));
    }
    StoreSpec::parse(&cfg.store)?;
    if cfg.auth_key.as_deref() == Some("") {
        return Err(ConfigProblem("--auth-key must not be empty".to_owned()));
    }
    cfg.worker
        .validate()
        .map_err(|e| ConfigProblem(format!("invalid worker config: {e}")))?;
    addr(&cfg)?;
    Ok(cfg)
}

/// Upper bound for `threads`: far above any core count, low enough to catch a typo.
const MAX_THREADS: usize = 1024;

impl FileConfig {
    /// The number of threads to start: `threads`, or one per core this process may run on.
    pub(crate) fn thread_count(&self) -> usize {
        thread_count(self.threads)
    }

    /// The runtime `serve` runs on: a single-threaded one (no work stealing, nothing to steal
    /// from) when there is one thread (`--threads 1`, or one CPU available, e.g. under
    /// `taskset -c 0`), else a work-stealing pool of `thread_count` threads.
    pub(crate) fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        runtime_for(self.thread_count())
    }
}

/// `threads`, with 0 meaning one per core this process may run on.
pub(crate) fn thread_count(threads: usize) -> usize {
    match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// A single-threaded runtime for one thread, else a work-stealing pool of `threads`.
pub(crate) fn runtime_for(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

fn addr(cfg: &FileConfig) -> Result<SocketAddr, ConfigProblem> {
    Ok(SocketAddr::new(host_ip(&cfg.host)?, cfg.port))
}

/// The IP address of `--host`: an IPv4 or IPv6 address (brackets allowed) or `localhost`.
pub(crate) fn host_ip(host: &str) -> Result<std::net::IpAddr, ConfigProblem> {
    match host.trim_start_matches('[').trim_end_matches(']') {
        "localhost" => Ok(std::net::IpAddr::from([127, 0, 0, 1])),
        h => h.parse().map_err(|_| {
            ConfigProblem(format!(
                "--host must be an IP address (or localhost), not {host:?}"
            ))
        }),
    }
}

/// The accept queue of the listener: a burst of connections (a balancer reconnecting the
/// clients of a lost worker, say) waits in it instead of being dropped and retried by the
/// client's kernel a second later. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (`SO_REUSEADDR`, so a restart does not wait for old connections) with the
/// backlog of [`LISTEN_BACKLOG`] (std's default is 128).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds, prints the listening line and serves until SIGINT/SIGTERM.
pub(crate) async fn run(cfg: FileConfig) -> Result<(), String> {
    let addr = addr(&cfg).map_err(|e| e.0)?;
    let mut builder = ScServer::builder().config(cfg.worker.clone());
    match &cfg.auth_key {
        Some(k) => builder = builder.auth_key(k),
        None => tracing::warn!(
            "no --auth-key given: using a random key, so tokens will not survive a restart \
             and other processes will reject them"
        ),
    }
    match StoreSpec::parse(&cfg.store).map_err(|e| e.0)? {
        StoreSpec::Local => {}
        StoreSpec::Resp(nodes) => {
            let mut rc = sc_store::RespConfig::new(nodes);
            rc.secret = cfg.store_secret.clone();
            let store = sc_store::RespStore::connect(rc)
                .await
                .map_err(|e| store_failure(cfg.store_secret.is_some(), &e))?;
            tracing::info!(store = %cfg.store, "channels are shared through the store");
            builder = builder.store(std::sync::Arc::new(store));
        }
    }
    let (layer, handle) = crate::demo::app(builder)
        .build_layer()
        .map_err(|e| format!("invalid config: {e}"))?;
    // Sessions shared by every tab of a browser: the session cookie on every response.
    let service = handle
        .session_layer()
        .service(layer.service(crate::demo::Stats::new(
            layer.clone(),
            handle.clone(),
            std::sync::Arc::new(crate::demo::DemoAssets::load(&cfg.demo_assets)),
        )));
    let listener = listen(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let shown = match local {
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        SocketAddr::V4(a) => a.to_string(),
    };
    crate::print_line(&format!(
        "socketcluster listening on ws://{shown}{}",
        cfg.worker.path
    ));
    tracing::info!(addr = %local, path = %cfg.worker.path, threads = cfg.thread_count(), "serving");

    let server = tokio::spawn(sc_worker::serve(listener, service, handle.clone()));
    tokio::spawn(crate::trim::after_churn(handle.clone()));
    shutdown_signal().await;
    tracing::info!("shutting down");
    handle.shutdown(Duration::from_secs(5)).await;
    let _ = server.await;
    Ok(())
}

/// The startup error of a store that [`sc_store::RespStore::connect`] could not use: which node,
/// why (the store's own reply, or the OS error), and what to change. `serve` never goes on
/// without its store.
fn store_failure(secret_given: bool, e: &sc_store::Error) -> String {
    // `RespStore` masks a password in a node's URL; `store` may hold one, so it is not shown.
    let node = match e.node() {
        Some(node) => format!("store node {node}"),
        None => "the store given by --store".to_owned(),
    };
    let cause = match e {
        sc_store::Error::Node { source, .. } => &**source,
        e => e,
    };
    if let sc_store::Error::Auth(reply) = cause {
        // NOAUTH: we sent no secret; WRONGPASS (or `ERR invalid password`): a wrong one.
        let fix = if reply.contains("without any password configured") {
            "the store has no secret: drop --store-secret (or SC_STORE_SECRET, or store_secret \
             in the config file), or start the store with one"
        } else if reply.starts_with("NOAUTH") || (!secret_given && !reply.starts_with("WRONGPASS"))
        {
            "give the store's secret with --store-secret SECRET (or SC_STORE_SECRET, or \
             store_secret in the config file)"
        } else {
            "--store-secret (or SC_STORE_SECRET, or store_secret in the config file, or the \
             password of a redis:// URL) must be the store's secret (`socketcluster store \
             --secret`, or Redis's requirepass)"
        };
        return format!("{node} refused our credentials ({reply}): {fix}");
    }
    if let sc_store::Error::Connection(source) = cause {
        return format!(
            "cannot reach {node}: {}: check that the store is running there and that --store \
             (or store in the config file) names it",
            causes(&**source)
        );
    }
    format!(
        "cannot use {node}: {}: check that --store (or store in the config file) names a store \
         (`socketcluster store`) or Redis",
        causes(cause)
    )
}

/// `e` and its sources, joined with ": ", each text once.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ").replace('\n', " ")
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::StoreSpec;

    #[test]
    fn store_specs() {
        assert_eq!(StoreSpec::parse("local").ok(), Some(StoreSpec::Local));
        assert_eq!(
            StoreSpec::parse("sc://127.0.0.1:6380,127.0.0.1:6381").ok(),
            Some(StoreSpec::Resp(vec![
                "127.0.0.1:6380".into(),
                "127.0.0.1:6381".into()
            ]))
        );
        assert_eq!(
            StoreSpec::parse("redis://127.0.0.1:6379").ok(),
            Some(StoreSpec::Resp(vec!["redis://127.0.0.1:6379".into()]))
        );
        for bad in [
            "127.0.0.1:6379",
            "sc://",
            "sc://a:1,",
            "sc://host",
            "http://a:1",
        ] {
            assert!(StoreSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
