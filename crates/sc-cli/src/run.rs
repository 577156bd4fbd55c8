//! `socketcluster run`: the cluster on one machine (balancers, workers and store processes under
//! a master), serving the demo app. Options: the defaults, then the config file, then the
//! environment and flags. The launcher itself is the `sc-cluster` library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use sc_cluster::{BoxError, Cluster, ClusterConfig, Worker, WorkerApp};
use tower_layer::Layer;

use crate::{EXIT_CONFIG, print_line};

/// Options of `socketcluster run`.
#[derive(Debug, Args)]
#[deny(missing_docs)]
pub(crate) struct RunArgs {
    /// TOML config file (`socketcluster run --print-config` prints every option with its
    /// default); flags and the environment override it
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the default config file, every option commented, and exit
    #[arg(long)]
    print_config: bool,
    /// Address the balancers listen on [default: 127.0.0.1]
    #[arg(long)]
    host: Option<String>,
    /// Port the balancers share; 0 picks a free one [default: 8000]
    #[arg(long)]
    port: Option<u16>,
    /// Worker processes; 0 = one per core [default: 0]
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// In-memory store processes (unused with --store redis://) [default: 1]
    #[arg(long, value_name = "N")]
    stores: Option<usize>,
    /// Balancer processes sharing the port [default: 1]
    #[arg(long, value_name = "N")]
    balancers: Option<usize>,
    /// `embedded` (the store processes) or `redis://HOST:PORT[,HOST:PORT...]` (a Redis, or any
    /// master of a Redis Cluster) [default: embedded]
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Secret of the store (AUTH); a random one for embedded stores when unset
    #[arg(long, env = "SC_STORE_SECRET", hide_env_values = true)]
    store_secret: Option<String>,
    /// Secret that signs auth tokens, shared by every worker; random per cluster when unset
    #[arg(long, env = "SC_AUTH_KEY", hide_env_values = true)]
    auth_key: Option<String>,
    /// Address the workers listen on and other hosts reach them at (several hosts sharing a
    /// Redis store) [default: 127.0.0.1]
    #[arg(long)]
    worker_host: Option<String>,
    /// Name of a deployment of several hosts sharing the Redis --store: their balancers route to
    /// every host's workers [default: none, this host alone]
    #[arg(long, value_name = "NAME")]
    deployment: Option<String>,
    /// Address of the management port (`/health`, `/metrics`) [default: 127.0.0.1]
    #[arg(long)]
    management_host: Option<String>,
    /// The management port; 0 picks a free one [default: 8001]
    #[arg(long)]
    management_port: Option<u16>,
    /// Threads of each worker process; 0 = one per core [default: 1]
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
    /// Threads of each balancer process; 0 = one per core [default: 1]
    #[arg(long, value_name = "N")]
    balancer_threads: Option<usize>,
    /// Milliseconds a draining process has before it is killed [default: 10000]
    #[arg(long, value_name = "MS")]
    drain_timeout_ms: Option<u64>,
    /// PEM certificate chain: the balancers terminate TLS (with --tls-key)
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Passphrase of an encrypted --tls-key
    #[arg(long, env = "SC_TLS_KEY_PASSPHRASE", hide_env_values = true)]
    tls_key_passphrase: Option<String>,
    /// Where the demo page finds its browser builds [default: web/node_modules]
    #[arg(long, value_name = "DIR")]
    demo_assets: Option<PathBuf>,
}

/// Merges the defaults, the file, the environment and the flags.
fn resolve(args: RunArgs) -> Result<ClusterConfig, String> {
    let mut cfg = match &args.config {
        Some(path) => ClusterConfig::from_file(path).map_err(|e| e.to_string())?,
        None => ClusterConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => {$(
            if let Some(v) = args.$field {
                cfg.$field = v;
            }
        )*};
    }
    set!(
        host,
        port,
        workers,
        stores,
        balancers,
        store,
        worker_host,
        management_host,
        management_port,
        worker_threads,
        balancer_threads,
        drain_timeout_ms
    );
    if args.store_secret.is_some() {
        cfg.store_secret = args.store_secret;
    }
    if args.auth_key.is_some() {
        cfg.auth_key = args.auth_key;
    }
    if args.deployment.is_some() {
        cfg.deployment = args.deployment;
    }
    if args.tls_cert.is_some() {
        cfg.tls.cert = args.tls_cert;
    }
    if args.tls_key.is_some() {
        cfg.tls.key = args.tls_key;
    }
    if args.tls_key_passphrase.is_some() {
        cfg.tls.passphrase = args.tls_key_passphrase;
    }
    if let Some(dir) = args.demo_assets {
        cfg.app.insert(
            DEMO_ASSETS.to_owned(),
            toml::Value::String(dir.to_string_lossy().into_owned()),
        );
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// The `[app]` key of the demo page's browser builds.
const DEMO_ASSETS: &str = "demo_assets";

/// The `run` subcommand. Call it outside any tokio runtime.
pub(crate) fn run(args: RunArgs) -> ExitCode {
    if sc_cluster::is_child() {
        // A process the master started: the spec comes on stdin, not from these flags.
        return Cluster::new(ClusterConfig::default())
            .worker(demo_worker)
            .run();
    }
    if args.print_config {
        print_line(ClusterConfig::commented_toml().trim_end());
        return ExitCode::SUCCESS;
    }
    match resolve(args) {
        Ok(cfg) => Cluster::new(cfg).worker(demo_worker).run(),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The demo app as a cluster worker: the same handlers, page and `/stats` as `serve`.
fn demo_worker(worker: Worker) -> Result<WorkerApp, BoxError> {
    let assets = worker
        .app_config()
        .get(DEMO_ASSETS)
        .and_then(toml::Value::as_str)
        .unwrap_or("web/node_modules");
    let assets = Arc::new(crate::demo::DemoAssets::load(std::path::Path::new(assets)));
    let (layer, handle) = crate::demo::app(worker.builder()).build_layer()?;
    let service = handle
        .session_layer()
        .layer(layer.layer(crate::demo::Stats::new(
            layer.clone(),
            handle.clone(),
            assets,
        )));
    tokio::spawn(crate::trim::after_churn(handle.clone()));
    Ok(WorkerApp::new(service, handle))
}
