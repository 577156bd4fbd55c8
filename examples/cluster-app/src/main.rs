//! A cluster of the app's own: `cluster-app [--port P] [--management-port M] [--workers N]`
//! starts the master, which runs this same binary as one store, N workers (default: one per
//! core) and one balancer. Each worker serves:
//!
//! - `GET /hello`: `hello from worker ID`, an ordinary axum route;
//! - `/socketcluster/`: the procedures `whoami` (the worker's id and process id) and `visit`
//!   (counts the calls of this session in its session data, which lives in the store processes
//!   and so survives a worker's crash).
//!
//! SIGTERM drains and stops the cluster; SIGUSR2 restarts the workers one at a time.

use std::process::ExitCode;

use axum::Router;
use axum::routing::get;
use sc_cluster::{BoxError, Cluster, ClusterConfig, Worker, WorkerApp};
use sc_worker::ScError;

/// The app's worker: what each worker process serves.
fn app(worker: Worker) -> Result<WorkerApp, BoxError> {
    let id = worker.id();
    let (layer, handle) = worker
        .builder()
        .procedure("whoami", move |_req| async move {
            Ok(format!("worker {id} pid {}", std::process::id()))
        })
        .procedure("visit", |req| {
            let session = req.socket.session();
            async move {
                let n: u64 = match session.get("visits").await? {
                    Some(d) => d
                        .parse()
                        .map_err(|_| ScError::new("BadData", "visits is not a number"))?,
                    None => 0,
                };
                session.set("visits", n + 1).await?;
                Ok(n + 1)
            }
        })
        .build_layer()?;
    let router = Router::new()
        .route(
            "/hello",
            get(move || async move { format!("hello from worker {id}") }),
        )
        .layer(layer)
        .layer(handle.session_layer());
    Ok(WorkerApp::new(router, handle))
}

/// `--port`, `--management-port` and `--workers` over the defaults.
fn config() -> Result<ClusterConfig, String> {
    let mut config = ClusterConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag} {v}: not a number"))
        };
        match flag.as_str() {
            "--port" => config.port = u16::try_from(number(&value)?).map_err(|e| e.to_string())?,
            "--management-port" => {
                config.management_port =
                    u16::try_from(number(&value)?).map_err(|e| e.to_string())?;
            }
            "--workers" => {
                config.workers = usize::try_from(number(&value)?).map_err(|e| e.to_string())?;
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(config)
}

fn main() -> ExitCode {
    // In a process the master started, the config comes from the master: parse nothing.
    if sc_cluster::is_child() {
        return Cluster::new(ClusterConfig::default()).worker(app).run();
    }
    match config() {
        Ok(config) => Cluster::new(config).worker(app).run(),
        Err(e) => {
            eprintln!(
                "error: {e}\nusage: cluster-app [--port P] [--management-port M] [--workers N]"
            );
            ExitCode::from(sc_cluster::EXIT_CONFIG)
        }
    }
}
