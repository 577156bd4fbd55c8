//! The cluster's options: [`ClusterConfig`], its TOML file, and the checks that turn a bad value
//! into a [`ConfigError`] before any process starts.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use sc_worker::Config as WorkerConfig;

/// Everything the master needs to run a cluster on one machine. [`Default`] is a complete,
/// working cluster: one balancer on `127.0.0.1:8000`, one worker per core, one store process.
///
/// The TOML file has the same shape; [`ClusterConfig::commented_toml`] prints the defaults with
/// a comment on every option.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// Address the balancers listen on.
    pub host: String,
    /// Port the balancers share (`SO_REUSEPORT`); 0 picks a free one.
    pub port: u16,
    /// Worker processes; 0 starts one per core this process may run on.
    pub workers: usize,
    /// Store processes (in-memory, sharded by key); ignored when `store` is a Redis URL.
    pub stores: usize,
    /// Balancer processes, all on `port`.
    pub balancers: usize,
    /// `embedded` (the store processes above) or `redis://HOST:PORT[,HOST:PORT...]` (a Redis, or
    /// any master of a Redis Cluster: the client finds the others).
    pub store: String,
    /// Secret of the store nodes (AUTH). For embedded stores a random one is made when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_secret: Option<String>,
    /// Secret that signs auth tokens, shared by every worker. A random one per cluster when
    /// unset (tokens then do not survive a restart of the master).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_key: Option<String>,
    /// Address the workers listen on, and the one other hosts reach them at: this host's
    /// address on the network between the hosts of a `deployment`, `127.0.0.1` on one machine.
    pub worker_host: String,
    /// The name of a deployment of several hosts sharing a Redis `store`: the masters with the
    /// same name list their workers on Redis and their balancers route to every worker of every
    /// host (an engine.io session goes on through any host's balancer); without an `auth_key`
    /// they share the first master's. Unset: this host alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Address of the management port (`/health`, `/metrics`).
    pub management_host: String,
    /// The management port; 0 picks a free one.
    pub management_port: u16,
    /// Threads of each worker process; 0 = one per core.
    pub worker_threads: usize,
    /// Threads of each balancer process; 0 = one per core.
    pub balancer_threads: usize,
    /// Milliseconds a draining process has to close its sockets and answer its invokes before
    /// it is killed (SIGTERM, rolling restart).
    pub drain_timeout_ms: u64,
    /// Longest wait before respawning a process that keeps crashing, in milliseconds (the first
    /// respawn is immediate; each crash within `stable_after_ms` of its start doubles the wait).
    pub restart_backoff_max_ms: u64,
    /// A process that ran this long (milliseconds) before it died is respawned at once again.
    pub stable_after_ms: u64,
    /// Milliseconds a child has to report that it is ready before it counts as failed.
    pub start_timeout_ms: u64,
    /// Milliseconds the rolling restart (SIGUSR2) waits after a worker is back before it drains
    /// the next one, so that the clients it moved have settled.
    pub rolling_restart_pause_ms: u64,
    /// The balancers' own options.
    pub balancer: BalancerOptions,
    /// TLS at the balancers: both `cert` and `key` turn it on.
    pub tls: TlsOptions,
    /// The workers' options and limits (the same as `socketcluster serve`'s `[worker]`).
    pub worker: WorkerConfig,
    /// Options for the app's own worker function, as free-form TOML (the demo app reads
    /// `demo_assets` here).
    pub app: toml::Table,
}

/// The balancers' options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BalancerOptions {
    /// Client networks let in (CIDR); empty lets everyone in.
    pub allow: Vec<String>,
    /// Client networks turned away (CIDR), checked before `allow`.
    pub deny: Vec<String>,
    /// Connections (WebSockets and polling requests) open at once from one client address.
    pub address_connection_limit: usize,
    /// New connections per second from one client address, sustained.
    pub address_connect_rate: u32,
    /// New connections from one client address in a burst above the rate.
    pub address_connect_burst: u32,
    /// TCP connections open at once from one client address.
    pub address_tcp_limit: usize,
    /// Route a browser's new connections by its session cookie (rendezvous hashing), so its
    /// tabs share a worker; without it the least-loaded worker takes each.
    pub cookie_affinity: bool,
    /// Milliseconds between health probes of each worker.
    pub health_interval_ms: u64,
}

impl Default for BalancerOptions {
    fn default() -> Self {
        BalancerOptions {
            allow: Vec::new(),
            deny: Vec::new(),
            address_connection_limit: 4096,
            address_connect_rate: 100,
            address_connect_burst: 2000,
            address_tcp_limit: 8192,
            cookie_affinity: false,
            health_interval_ms: 1000,
        }
    }
}

/// TLS termination at the balancers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsOptions {
    /// PEM certificate chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 RSA, SEC1 EC, or encrypted PKCS#8 with `passphrase`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Passphrase of an encrypted key (prefer the `SC_TLS_KEY_PASSPHRASE` environment variable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            host: "127.0.0.1".to_owned(),
            port: 8000,
            workers: 0,
            stores: 1,
            balancers: 1,
            store: "embedded".to_owned(),
            store_secret: None,
            auth_key: None,
            worker_host: "127.0.0.1".to_owned(),
            deployment: None,
            management_host: "127.0.0.1".to_owned(),
            management_port: 8001,
            worker_threads: 1,
            balancer_threads: 1,
            drain_timeout_ms: 10_000,
            restart_backoff_max_ms: 10_000,
            stable_after_ms: 2_000,
            start_timeout_ms: 30_000,
            rolling_restart_pause_ms: 1_000,
            balancer: BalancerOptions::default(),
            tls: TlsOptions::default(),
            worker: WorkerConfig::default(),
            app: toml::Table::new(),
        }
    }
}

/// A config value the cluster cannot run with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub(crate) String);

/// Upper bound of each process count: far above a machine's cores, low enough to catch a typo.
const MAX_PROCESSES: usize = 1024;

/// Where channels and sessions are shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreKind {
    /// The cluster's own store processes.
    Embedded,
    /// Redis nodes, as `redis://` URLs for `RespConfig`.
    Redis(Vec<String>),
}

impl ClusterConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Self::from_toml(&text)
            .map_err(|e| ConfigError(format!("invalid config file {}: {e}", path.display())))
    }

    /// Parses TOML over the defaults.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.to_string()))
    }

    /// Checks every value; [`crate::Cluster::run`] calls it before starting anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        self.balancer_addr()?;
        self.management_addr()?;
        if self.worker_ip()?.is_unspecified() {
            return bad(format!(
                "worker_host {:?} is no address to reach the workers at: give this host's own (127.0.0.1 on one machine)",
                self.worker_host
            ));
        }
        if self.port != 0 && self.port == self.management_port && self.host == self.management_host
        {
            return bad(format!(
                "port and management_port are both {}: give the management port another",
                self.port
            ));
        }
        for (name, n, min) in [
            ("workers", self.workers, 0),
            ("balancers", self.balancers, 1),
            ("worker_threads", self.worker_threads, 0),
            ("balancer_threads", self.balancer_threads, 0),
        ] {
            if n < min || n > MAX_PROCESSES {
                return bad(format!(
                    "{name} must be between {min} and {MAX_PROCESSES}, not {n}"
                ));
            }
        }
        if let Some(d) = &self.deployment {
            if d.is_empty()
                || d.len() > 64
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return bad(format!(
                    "deployment must be 1 to 64 letters, digits, '-', '_' or '.': {d:?}"
                ));
            }
            if self.store_kind()? == StoreKind::Embedded {
                return bad(
                    "a deployment of several hosts needs a Redis store they share (store = \"redis://...\")"
                        .to_owned(),
                );
            }
        }
        match self.store_kind()? {
            StoreKind::Embedded if self.stores == 0 || self.stores > MAX_PROCESSES => {
                return bad(format!(
                    "stores must be between 1 and {MAX_PROCESSES} with the embedded store, not {}",
                    self.stores
                ));
            }
            _ => {}
        }
        for (name, v) in [
            ("drain_timeout_ms", self.drain_timeout_ms),
            ("start_timeout_ms", self.start_timeout_ms),
            (
                "balancer.health_interval_ms",
                self.balancer.health_interval_ms,
            ),
        ] {
            if v == 0 {
                return bad(format!("{name} must be greater than 0"));
            }
        }
        if self.auth_key.as_deref() == Some("") || self.store_secret.as_deref() == Some("") {
            return bad("auth_key and store_secret must not be empty when given".to_owned());
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) | (None, Some(_)) => {
                return bad("tls needs both cert and key".to_owned());
            }
            _ => {}
        }
        sc_balancer::IpFilterLayer::new(&self.balancer.allow, &self.balancer.deny)
            .map_err(|e| ConfigError(format!("balancer.allow/deny: {e}")))?;
        self.worker
            .validate()
            .map_err(|e| ConfigError(format!("invalid worker config: {e}")))?;
        Ok(())
    }

    /// The number of worker processes: `workers`, or one per core.
    pub fn worker_count(&self) -> usize {
        per_core(self.workers)
    }

    pub(crate) fn balancer_addr(&self) -> Result<SocketAddr, ConfigError> {
        Ok(SocketAddr::new(host_ip("host", &self.host)?, self.port))
    }

    pub(crate) fn worker_ip(&self) -> Result<IpAddr, ConfigError> {
        host_ip("worker_host", &self.worker_host)
    }

    pub(crate) fn management_addr(&self) -> Result<SocketAddr, ConfigError> {
        Ok(SocketAddr::new(
            host_ip("management_host", &self.management_host)?,
            self.management_port,
        ))
    }

    pub(crate) fn store_kind(&self) -> Result<StoreKind, ConfigError> {
        let text = self.store.trim();
        if text.is_empty() || text == "embedded" {
            return Ok(StoreKind::Embedded);
        }
        let bad = || {
            ConfigError(format!(
                "store {text:?}: expected embedded or redis://HOST:PORT[,HOST:PORT...]"
            ))
        };
        let rest = text.strip_prefix("redis://").ok_or_else(bad)?;
        let nodes: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .map(|n| n.strip_prefix("redis://").unwrap_or(n))
            .map(|n| format!("redis://{n}"))
            .collect();
        if nodes.iter().any(|n| n == "redis://") {
            return Err(bad());
        }
        Ok(StoreKind::Redis(nodes))
    }

    /// The defaults as TOML, with a comment on every option: what `--print-config` prints.
    pub fn commented_toml() -> String {
        let defaults = toml::Table::try_from(Self::default()).unwrap_or_default();
        crate::docs::commented_defaults(&defaults)
    }
}

/// `n`, with 0 meaning one per core this process may run on.
pub(crate) fn per_core(n: usize) -> usize {
    match n {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// An IPv4 or IPv6 address (brackets allowed) or `localhost`.
pub(crate) fn host_ip(name: &str, host: &str) -> Result<IpAddr, ConfigError> {
    match host.trim_start_matches('[').trim_end_matches(']') {
        "localhost" => Ok(IpAddr::from([127, 0, 0, 1])),
        h => h.parse().map_err(|_| {
            ConfigError(format!(
                "{name} must be an IP address (or localhost), not {host:?}"
            ))
        }),
    }
}
