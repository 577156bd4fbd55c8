//! The management port: `GET /health` (the children, as JSON) and `GET /metrics` (Prometheus
//! text, from the counters every child reports each second, with `prometheus-client`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::proto::Role;

/// The labels of every per-process series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    role: &'static str,
    id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// How a child's reported field is exported: (role, field, metric, kind, help). A metric named
/// by several rows is one family with the role in its labels.
const EXPORTS: &[(Role, &str, &str, Kind, &str)] = &[
    (
        Role::Worker,
        "sockets_open",
        "connections",
        Kind::Gauge,
        CONNECTIONS_HELP,
    ),
    (
        Role::Store,
        "connections_open",
        "connections",
        Kind::Gauge,
        CONNECTIONS_HELP,
    ),
    (
        Role::Balancer,
        "tunnels_open",
        "connections",
        Kind::Gauge,
        CONNECTIONS_HELP,
    ),
    (
        Role::Worker,
        "sockets_opened",
        "sockets_opened",
        Kind::Counter,
        "Sockets opened (handshakes completed)",
    ),
    (
        Role::Worker,
        "messages_in",
        "messages_in",
        Kind::Counter,
        "SocketCluster messages received from clients",
    ),
    (
        Role::Worker,
        "messages_out",
        "messages_out",
        Kind::Counter,
        "SocketCluster messages written to clients",
    ),
    (
        Role::Worker,
        "publishes",
        "publishes",
        Kind::Counter,
        "Publishes accepted (from clients and the server)",
    ),
    (
        Role::Worker,
        "deliveries",
        "deliveries",
        Kind::Counter,
        "Publish messages handed to subscriber sockets",
    ),
    (
        Role::Worker,
        "store_ops",
        "store_operations",
        Kind::Counter,
        "Operations sent to the store (publish, subscribe, session data)",
    ),
    (
        Role::Worker,
        "store_errors",
        "store_errors",
        Kind::Counter,
        "Store operations that failed",
    ),
    (
        Role::Worker,
        "queue_drops",
        "queue_drops",
        Kind::Counter,
        "Messages dropped or sockets closed because a socket's outbound queue was full",
    ),
    (
        Role::Store,
        "connections_total",
        "store_connections_opened",
        Kind::Counter,
        "Connections the store accepted",
    ),
    (
        Role::Store,
        "commands",
        "store_commands",
        Kind::Counter,
        "Commands the store executed",
    ),
    (
        Role::Store,
        "publishes",
        "store_publishes",
        Kind::Counter,
        "PUBLISH commands the store executed",
    ),
    (
        Role::Store,
        "deliveries",
        "store_deliveries",
        Kind::Counter,
        "Messages the store wrote to its subscribers",
    ),
    (
        Role::Store,
        "keys",
        "store_keys",
        Kind::Gauge,
        "Keys the store holds",
    ),
    (
        Role::Balancer,
        "requests",
        "balancer_requests",
        Kind::Counter,
        "HTTP requests proxied",
    ),
    (
        Role::Balancer,
        "upgrades",
        "balancer_upgrades",
        Kind::Counter,
        "WebSocket upgrades proxied",
    ),
    (
        Role::Balancer,
        "worker_lost",
        "balancer_worker_lost",
        Kind::Counter,
        "Clients closed with 4000 because their worker's connection ended",
    ),
    (
        Role::Balancer,
        "bad_gateway",
        "balancer_bad_gateway",
        Kind::Counter,
        "Requests no worker could take (502/503)",
    ),
    (
        Role::Balancer,
        "retries",
        "balancer_retries",
        Kind::Counter,
        "Requests sent again to another worker",
    ),
];

const CONNECTIONS_HELP: &str =
    "Connections open: sockets (worker), store clients (store), proxied WebSockets (balancer)";

enum Series {
    Counter(Family<Labels, Counter>),
    Gauge(Family<Labels, Gauge>),
}

/// The cluster's metrics: the families, and the last value each child reported per counter
/// (a child reports totals since its own start; the exported counter adds the differences, so
/// it keeps counting across a respawn).
pub(crate) struct Metrics {
    registry: Registry,
    series: HashMap<&'static str, Series>,
    restarts: Family<Labels, Counter>,
    last: Mutex<HashMap<(Role, usize, &'static str), u64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("sc");
        let mut series = HashMap::new();
        for &(_, _, name, kind, help) in EXPORTS {
            if series.contains_key(name) {
                continue;
            }
            let s = match kind {
                Kind::Counter => {
                    let f = Family::<Labels, Counter>::default();
                    registry.register(name, help, f.clone());
                    Series::Counter(f)
                }
                Kind::Gauge => {
                    let f = Family::<Labels, Gauge>::default();
                    registry.register(name, help, f.clone());
                    Series::Gauge(f)
                }
            };
            series.insert(name, s);
        }
        let restarts = Family::<Labels, Counter>::default();
        registry.register(
            "restarts",
            "Times the master respawned a process that died (a rolling restart is not counted)",
            restarts.clone(),
        );
        Metrics {
            registry,
            series,
            restarts,
            last: Mutex::new(HashMap::new()),
        }
    }

    fn labels(role: Role, id: usize) -> Labels {
        Labels {
            role: role.as_str(),
            id: id.to_string(),
        }
    }

    /// A child's report: totals since its start, and gauges.
    pub(crate) fn update(&self, role: Role, id: usize, fields: &[(String, u64)]) {
        let labels = Self::labels(role, id);
        let mut last = self.last.lock();
        for (field, value) in fields {
            let Some(&(_, _, name, _, _)) =
                EXPORTS.iter().find(|(r, f, ..)| *r == role && f == field)
            else {
                continue;
            };
            match self.series.get(name) {
                Some(Series::Counter(f)) => {
                    let seen = last.entry((role, id, name)).or_insert(0);
                    // Smaller than before: a new process whose exit we have not seen yet.
                    let delta = value.checked_sub(*seen).unwrap_or(*value);
                    f.get_or_create(&labels).inc_by(delta);
                    *seen = *value;
                }
                Some(Series::Gauge(f)) => {
                    f.get_or_create(&labels)
                        .set(i64::try_from(*value).unwrap_or(i64::MAX));
                }
                None => {}
            }
        }
    }

    /// A child ended: its next process counts from 0, and its gauges read 0 until it reports.
    pub(crate) fn gone(&self, role: Role, id: usize) {
        let labels = Self::labels(role, id);
        self.last
            .lock()
            .retain(|(r, i, _), _| !(*r == role && *i == id));
        for (r, _, name, kind, _) in EXPORTS {
            if *r == role
                && *kind == Kind::Gauge
                && let Some(Series::Gauge(f)) = self.series.get(name)
            {
                f.get_or_create(&labels).set(0);
            }
        }
    }

    /// The master respawned a child that died.
    pub(crate) fn restarted(&self, role: Role, id: usize) {
        self.restarts.get_or_create(&Self::labels(role, id)).inc();
    }

    /// Makes every series of the child's role exist at 0, so a scrape sees them all before the
    /// child's first report and the restart count before its first restart.
    pub(crate) fn register_child(&self, role: Role, id: usize) {
        let labels = Self::labels(role, id);
        let _ = self.restarts.get_or_create(&labels);
        for (r, _, name, ..) in EXPORTS {
            match self.series.get(name) {
                Some(Series::Counter(f)) if *r == role => {
                    let _ = f.get_or_create(&labels);
                }
                Some(Series::Gauge(f)) if *r == role => {
                    let _ = f.get_or_create(&labels);
                }
                _ => {}
            }
        }
    }

    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Serves the management port until the process ends.
/// What the management port shows: the master's state.
pub(crate) trait Status: Send + Sync + 'static {
    /// Whether every child runs, and the children as JSON.
    fn health(&self) -> (bool, String);
    /// The registry of `/metrics`.
    fn metrics(&self) -> &Metrics;
}

pub(crate) async fn serve<M: Status>(listener: tokio::net::TcpListener, master: Arc<M>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let master = master.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let master = master.clone();
                async move { Ok::<_, Infallible>(answer(&*master, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer<B>(master: &impl Status, req: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &'static str, body: String| {
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(kind),
        );
        res
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /health or /metrics\n".to_owned(),
        );
    }
    match req.uri().path() {
        "/health" => {
            let (healthy, body) = master.health();
            let status = if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", body)
        }
        "/metrics" => match master.metrics().encode() {
            Ok(text) => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "cannot encode the metrics\n".to_owned(),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: GET /health or /metrics\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counters_keep_counting_across_a_respawn() {
        let m = Metrics::new();
        let f = |n: u64| {
            vec![
                ("messages_in".to_owned(), n),
                ("sockets_open".to_owned(), 3),
            ]
        };
        m.update(Role::Worker, 0, &f(10));
        m.update(Role::Worker, 0, &f(25));
        let key = r#"sc_messages_in_total{role="worker",id="0"}"#;
        assert_eq!(sample(&m.encode().unwrap(), key), Some(25.0));
        m.gone(Role::Worker, 0);
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, r#"sc_connections{role="worker",id="0"}"#),
            Some(0.0)
        );
        m.update(Role::Worker, 0, &f(4));
        assert_eq!(sample(&m.encode().unwrap(), key), Some(29.0));
        // A report of a new process before its predecessor's exit was seen.
        m.update(Role::Worker, 0, &f(1));
        assert_eq!(sample(&m.encode().unwrap(), key), Some(30.0));
        m.restarted(Role::Worker, 0);
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, r#"sc_restarts_total{role="worker",id="0"}"#),
            Some(1.0)
        );
        assert!(text.contains("# TYPE sc_messages_in counter"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn unknown_fields_and_roles_are_ignored() {
        let m = Metrics::new();
        m.update(
            Role::Store,
            1,
            &[("nonsense".to_owned(), 5), ("commands".to_owned(), 7)],
        );
        let text = m.encode().unwrap();
        assert!(!text.contains("nonsense"));
        assert_eq!(
            sample(&text, r#"sc_store_commands_total{role="store",id="1"}"#),
            Some(7.0)
        );
    }
}
