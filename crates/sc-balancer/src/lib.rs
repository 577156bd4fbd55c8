//! The SocketCluster front door: a reverse proxy that spreads HTTP requests and WebSocket
//! upgrades over a set of workers, terminates TLS, and runs balancer middleware.
//!
//! - [`Balancer`] is a tower service: each request or upgrade goes to a worker, with
//!   `X-Forwarded-For` and `X-Forwarded-Proto` (workers trust them from the balancer only:
//!   `socketcluster serve --trusted-proxy`). After a `101` the bytes flow both ways through a
//!   [`tunnel`] that holds no buffer while idle and follows the worker's WebSocket frames.
//! - Routing needs no sticky cookie and no shared table: a new connection goes to the
//!   least-loaded healthy worker (or by session cookie, [`BalancerConfig::affinity_cookie`]);
//!   an engine.io request with a `sid` goes to the worker whose tag the id carries (the balancer
//!   adds the tag to the id when the session opens), decided per request, so keep-alive
//!   connections that carry several sessions and several balancer processes behind one port
//!   route correctly.
//! - [`WorkerSet`]: workers added and removed at run time, health probes, a worker that refuses
//!   a connection taken out at once.
//! - A worker crash: the balancer closes each client WebSocket of that worker itself with
//!   [`tunnel::WORKER_LOST`] (4000), on which socketcluster-client reconnects at once.
//! - Middleware: [`IpFilterLayer`], [`AddressLimitLayer`], or any tower layer of the app's.
//! - Metrics: [`Balancer::metrics_handle`] counts requests, upgrades, open tunnels, clients
//!   closed with 4000, 502/503 answers and retries ([`BalancerMetrics`]).
//! - [`serve`]: the listener (`SO_REUSEPORT`, [`bind_reuseport`]), TLS termination
//!   ([`tls::ReloadableAcceptor`]: PEM files, encrypted PKCS#8 keys, reload without dropping
//!   connections).
//!
//! ```no_run
//! use sc_balancer::{Balancer, IpFilterLayer, ServeOptions, WorkerSet, bind_reuseport, serve};
//! use tower_layer::Layer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let workers = WorkerSet::new(["127.0.0.1:8001", "127.0.0.1:8002"])?;
//! let _probes = workers.spawn_health_checks(std::time::Duration::from_secs(1));
//! let service = IpFilterLayer::new(Vec::<String>::new(), ["10.66.0.0/16"])?.layer(Balancer::new(workers));
//! let listener = bind_reuseport("127.0.0.1:8000".parse()?)?;
//! serve(listener, service, ServeOptions::default(), std::future::pending()).await;
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod metrics;
mod middleware;
mod proxy;
mod route;
mod server;
pub mod tls;
pub mod tunnel;
mod workers;

pub use metrics::{BalancerMetrics, Metrics};
pub use middleware::{
    AddressLimit, AddressLimitLayer, InvalidBlocks, IpBlocks, IpFilter, IpFilterLayer, Refusable,
};
pub use proxy::{Balancer, BalancerConfig, Body, BoxError, Secure, is_upgrade};
pub use server::{ServeOptions, bind_reuseport, serve};
pub use workers::{Worker, WorkerError, WorkerSet};
