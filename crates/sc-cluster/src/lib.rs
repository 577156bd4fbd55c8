//! The SocketCluster launcher: one binary that runs as a whole cluster on a machine.
//!
//! [`Cluster::run`] in a plain start is the **master**: it starts store, worker and balancer
//! processes by executing its own binary again (same arguments, a role in the environment),
//! respawns whichever dies, drains on SIGTERM, restarts the workers one at a time on SIGUSR2 and
//! serves `/health` and Prometheus `/metrics` on a management port. In a process the master
//! started, the same call runs that process's role and returns when it ends. So a user's binary
//! with its own worker logic is a cluster as it stands:
//!
//! ```no_run
//! use sc_cluster::{Cluster, ClusterConfig, WorkerApp};
//!
//! fn main() -> std::process::ExitCode {
//!     Cluster::new(ClusterConfig::default())
//!         .worker(|worker| {
//!             let (layer, handle) = worker
//!                 .builder()
//!                 .procedure("echo", |req| async move { Ok(req.data) })
//!                 .build_layer()?;
//!             let app = axum::Router::new()
//!                 .route("/", axum::routing::get(|| async { "hello" }))
//!                 .layer(layer)
//!                 .layer(handle.session_layer());
//!             Ok(WorkerApp::new(app, handle))
//!         })
//!         .run()
//! }
//! ```
//!
//! Call [`Cluster::run`] first thing in `main`: a child runs it too, and anything before it
//! runs once per process.
//!
//! Processes: the master reserves every port for the cluster's life, so a respawned process
//! binds the same address (a worker keeps its engine.io routing tag, a store its place in the
//! workers' shard map). Workers share channels and session data through the store processes
//! (or Redis with `store = "redis://…"`), so a worker's death costs its clients one reconnect
//! and nothing else. See `crates/sc-cluster/README.md` for the signals, the management port and
//! what survives which crash.

mod child;
mod config;
mod docs;
mod logging;
mod manage;
mod master;
mod net;
mod proto;
mod registry;

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tower::Layer;
use tower::util::BoxCloneService;

use sc_worker::{ScHandle, ScServerBuilder};

pub use config::{BalancerOptions, ClusterConfig, ConfigError, TlsOptions};
pub use proto::Role;

/// An error a worker function returns; it ends the worker process (and the master reports it).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The exit code of a process whose options are wrong (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

type WorkerFn = dyn Fn(Worker) -> Result<WorkerApp, BoxError> + Send + Sync;

/// A cluster: its config and the worker function every worker process runs.
pub struct Cluster {
    config: ClusterConfig,
    app: Arc<WorkerFn>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A cluster with `config`, whose workers serve a SocketCluster endpoint with no handlers
    /// until [`worker`](Self::worker) gives them an app.
    pub fn new(config: ClusterConfig) -> Self {
        Cluster {
            config,
            app: Arc::new(|w: Worker| {
                let (layer, handle) = w.builder().build_layer()?;
                let not_found = tower::service_fn(|_req: Request<Incoming>| async {
                    let mut res = Response::new(http_body_util::Full::<Bytes>::default());
                    *res.status_mut() = http::StatusCode::NOT_FOUND;
                    Ok::<_, Infallible>(res)
                });
                let service = handle.session_layer().layer(layer.layer(not_found));
                Ok(WorkerApp::new(service, handle))
            }),
        }
    }

    /// The function each worker process runs once at its start: it receives a [`Worker`] (a
    /// builder already given the cluster's config, auth key and store) and returns what the
    /// worker serves. It runs inside the worker's tokio runtime, so it may spawn tasks.
    pub fn worker<F>(mut self, f: F) -> Self
    where
        F: Fn(Worker) -> Result<WorkerApp, BoxError> + Send + Sync + 'static,
    {
        self.app = Arc::new(f);
        self
    }

    /// The config the master will run with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Runs the master, or in a process the master started, that process's role. Returns the
    /// exit code for `main`: 0 after a clean stop (SIGTERM or SIGINT), [`EXIT_CONFIG`] for bad
    /// options, 1 for any other failure (printed on stderr).
    pub fn run(self) -> ExitCode {
        match std::env::var(proto::ROLE_ENV) {
            Ok(role) => child::run(&role, self.app),
            Err(_) => master::run(self.config),
        }
    }
}

/// Whether this process is a child that a master started (it has a role to run).
pub fn is_child() -> bool {
    std::env::var_os(proto::ROLE_ENV).is_some()
}

/// What a worker function receives: the worker's id and a builder set up for the cluster.
#[derive(Debug, Clone)]
pub struct Worker {
    id: usize,
    config: sc_worker::Config,
    auth_key: String,
    store: Arc<dyn sc_store::Store>,
    app_config: toml::Table,
}

impl Worker {
    /// This worker's id, 0 to `workers - 1`; a respawned worker keeps it.
    pub fn id(&self) -> usize {
        self.id
    }

    /// A server builder with the cluster's worker config, its shared auth key and its store.
    pub fn builder(&self) -> ScServerBuilder {
        sc_worker::ScServer::builder()
            .config(self.config.clone())
            .auth_key(&self.auth_key)
            .store(self.store.clone())
    }

    /// The `[app]` table of the config: the app's own options.
    pub fn app_config(&self) -> &toml::Table {
        &self.app_config
    }
}

/// The body of a worker's responses.
pub type WorkerBody = UnsyncBoxBody<Bytes, BoxError>;

/// What a worker serves: an HTTP service (an axum `Router`, or any tower service with the
/// SocketCluster layer inside) and the handle of its SocketCluster server, which the worker uses
/// to drain and to report its counters.
pub struct WorkerApp {
    pub(crate) service: BoxCloneService<Request<Incoming>, Response<WorkerBody>, Infallible>,
    pub(crate) handle: ScHandle,
}

impl std::fmt::Debug for WorkerApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerApp").finish_non_exhaustive()
    }
}

impl WorkerApp {
    /// `service` answers every request the balancers pass to this worker; `handle` is the
    /// handle of the server inside it.
    pub fn new<S, B>(service: S, handle: ScHandle) -> Self
    where
        S: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let service = tower::ServiceExt::map_response(service, |res: Response<B>| {
            res.map(|b| b.map_err(Into::into).boxed_unsync())
        });
        WorkerApp {
            service: BoxCloneService::new(service),
            handle,
        }
    }
}
