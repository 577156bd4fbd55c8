//! [`Balancer`], the tower service that proxies each request or WebSocket upgrade to a worker.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sc_worker::{AddrSlot, PeerAddr};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::metrics::{BalancerMetrics, Metrics, OpenTunnel};
use crate::route::{route_sid, session_cookie, tag_open_packet};
use crate::tunnel;
use crate::workers::{Worker, WorkerSet};

/// An error inside a response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of the balancer's responses.
pub type Body = BoxBody<Bytes, BoxError>;

/// Marks a request that came over TLS (the accept loop of [`serve`](crate::serve) puts it in
/// the request's extensions), so the worker is told `X-Forwarded-Proto: https`.
#[derive(Debug, Clone, Copy)]
pub struct Secure;

/// The largest engine.io handshake response the balancer reads to tag its session id.
const HANDSHAKE_MAX: usize = 64 * 1024;
/// How long a connection to a worker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of a [`Balancer`].
#[derive(Debug, Clone)]
pub struct BalancerConfig {
    /// The path of the engine.io endpoint on the workers (default `/engine.io/`): handshake
    /// responses on it get the worker's tag in their session id.
    pub engineio_path: String,
    /// Route new connections by the session cookie of this name (`n/<app>/ssid`), so the tabs
    /// of one browser share a worker while it is up; `None` (the default): least-loaded.
    pub affinity_cookie: Option<String>,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            engineio_path: "/engine.io/".to_owned(),
            affinity_cookie: None,
        }
    }
}

/// The balancer: a tower service that proxies HTTP/1.1 requests and WebSocket upgrades to a set
/// of workers. Cheap to clone.
///
/// A request that carries an engine.io `sid` goes to the worker whose tag the id carries (a
/// session id the balancer handed out); any other goes to the least-loaded healthy worker, or by
/// session cookie with [`BalancerConfig::affinity_cookie`]. A worker that refuses a connection is
/// taken out of routing at once and a request without a body is retried on another. Every
/// request reaches the worker with `X-Forwarded-For` (the client's address from [`PeerAddr`];
/// headers the client sent itself are dropped) and `X-Forwarded-Proto`.
///
/// It counts what it does ([`metrics`](Self::metrics)); take
/// [`metrics_handle`](Self::metrics_handle) before wrapping it in layers to read the counts
/// while it serves.
#[derive(Clone, Debug)]
pub struct Balancer {
    inner: Arc<Inner>,
}

struct Inner {
    workers: WorkerSet,
    client: Client<HttpConnector, Body>,
    config: BalancerConfig,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("workers", &self.workers)
            .field("config", &self.config)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl Balancer {
    /// A balancer over `workers` with the default options.
    pub fn new(workers: WorkerSet) -> Self {
        Self::with_config(workers, BalancerConfig::default())
    }

    /// A balancer over `workers`.
    pub fn with_config(workers: WorkerSet, config: BalancerConfig) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(http);
        Balancer {
            inner: Arc::new(Inner {
                workers,
                client,
                config,
                metrics: Arc::new(Metrics::new()),
            }),
        }
    }

    /// The workers this balancer routes to (add and remove them at run time).
    pub fn workers(&self) -> &WorkerSet {
        &self.inner.workers
    }

    /// What this balancer and its clones have done so far (see [`BalancerMetrics`]).
    pub fn metrics(&self) -> BalancerMetrics {
        self.inner.metrics.snapshot()
    }

    /// The live counters of this balancer and its clones, to read while the balancer serves
    /// (inside layers, moved into [`serve`](crate::serve)).
    ///
    /// ```
    /// use sc_balancer::{Balancer, BalancerMetrics, WorkerSet};
    ///
    /// # fn main() -> Result<(), sc_balancer::WorkerError> {
    /// let balancer = Balancer::new(WorkerSet::new(["127.0.0.1:8001"])?);
    /// let metrics = balancer.metrics_handle();
    /// // ... wrap `balancer` in layers and serve it; meanwhile:
    /// assert_eq!(metrics.snapshot(), BalancerMetrics::default());
    /// # Ok(()) }
    /// ```
    pub fn metrics_handle(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }
}

/// Whether `req` asks for a protocol upgrade (a WebSocket, in practice).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

impl Service<Request<Incoming>> for Balancer {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.handle(req).await) })
    }
}

/// Where a request goes.
enum Target {
    /// To the worker that owns its engine.io session.
    Session(Arc<Worker>),
    /// A new connection: any healthy worker.
    Any,
}

impl Inner {
    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        // Route.
        let target = match req.uri().query().map(route_sid) {
            None | Some(Ok(None)) => Target::Any,
            Some(Err(())) => return session_unknown(),
            Some(Ok(Some(route))) => {
                let Some(w) = self.workers.by_tag(route.tag).filter(|w| w.is_healthy()) else {
                    return session_unknown();
                };
                let path = req.uri().path();
                let pq = format!("{path}?{}", route.query);
                match Uri::try_from(pq) {
                    Ok(uri) => *req.uri_mut() = uri,
                    Err(_) => return session_unknown(),
                }
                Target::Session(w)
            }
        };
        forwarded_headers(&mut req);
        if is_upgrade(&req) {
            self.upgrade(req, target).await
        } else {
            self.request(req, target).await
        }
    }

    /// A worker for a new connection, avoiding those that failed already.
    fn pick(&self, headers: &HeaderMap, failed: &[Arc<Worker>]) -> Option<Arc<Worker>> {
        if let Some(name) = &self.config.affinity_cookie {
            let key = headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|h| session_cookie(h, name));
            if let Some(key) = key {
                return self.workers.by_affinity(key, failed);
            }
        }
        self.workers.least_loaded(failed)
    }

    /// [`pick`](Self::pick), counting a retry when a worker failed already.
    fn pick_again(&self, headers: &HeaderMap, failed: &[Arc<Worker>]) -> Option<Arc<Worker>> {
        let w = self.pick(headers, failed)?;
        if !failed.is_empty() {
            self.metrics.retry();
        }
        Some(w)
    }

    /// `502`: the worker chosen could not take the request.
    fn bad_gateway(&self) -> Response<Body> {
        self.metrics.bad_gateway();
        plain(StatusCode::BAD_GATEWAY, "Worker unavailable")
    }

    /// `503`: no worker can take the request.
    fn no_worker(&self) -> Response<Body> {
        self.metrics.bad_gateway();
        plain(StatusCode::SERVICE_UNAVAILABLE, "No worker available")
    }

    fn worker_down(w: &Worker, error: &dyn std::fmt::Display) {
        if w.set_healthy(false) {
            tracing::warn!(worker = %w.addr(), %error, "worker failed a new connection: taken out of routing");
        }
    }

    async fn request(&self, req: Request<Incoming>, target: Target) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let handshake = matches!(target, Target::Any)
            && parts.method == Method::GET
            && parts.uri.path() == self.config.engineio_path;
        // A request without a body can be sent again to another worker.
        let bodyless = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
            && parts
                .headers
                .get(header::CONTENT_LENGTH)
                .is_none_or(|v| v.as_bytes() == b"0")
            && !parts.headers.contains_key(header::TRANSFER_ENCODING);
        // Only a new connection without a body is sent again: only then are the headers kept.
        let retryable = matches!(target, Target::Any) && bodyless;
        let mut body = Some(body.map_err(BoxError::from).boxed());
        let mut failed = Vec::new();
        loop {
            let w = match &target {
                Target::Session(w) => w.clone(),
                Target::Any => match self.pick_again(&parts.headers, &failed) {
                    Some(w) => w,
                    None => return self.no_worker(),
                },
            };
            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let Ok(uri) = Uri::try_from(format!("http://{}{pq}", w.socket_addr())) else {
                return plain(StatusCode::BAD_REQUEST, "Bad request target");
            };
            let mut out = Request::new(match body.take() {
                Some(b) => b,
                None => Empty::new().map_err(BoxError::from).boxed(),
            });
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = uri;
            *out.headers_mut() = if retryable {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            let _load = w.hold();
            match self.client.request(out).await {
                Ok(resp) => {
                    let (mut rparts, rbody) = resp.into_parts();
                    strip_hop_by_hop(&mut rparts.headers);
                    if handshake && rparts.status == StatusCode::OK {
                        return match tag_handshake(rparts, rbody, w.tag()).await {
                            Some(r) => {
                                self.metrics.request();
                                r
                            }
                            None => self.bad_gateway(),
                        };
                    }
                    self.metrics.request();
                    return Response::from_parts(rparts, rbody.map_err(BoxError::from).boxed());
                }
                Err(e) if e.is_connect() => {
                    Self::worker_down(&w, &e);
                    if matches!(target, Target::Session(_)) {
                        return session_unknown();
                    }
                    if !retryable {
                        return self.bad_gateway();
                    }
                    failed.push(w);
                }
                Err(e) => {
                    tracing::debug!(worker = %w.addr(), error = %e, "proxied request failed");
                    // A new connection's request without a body, lost before an answer (a
                    // worker dying with it in its backlog): another worker can take it.
                    if !retryable {
                        return self.bad_gateway();
                    }
                    Self::worker_down(&w, &e);
                    failed.push(w);
                }
            }
        }
    }

    async fn upgrade(&self, mut req: Request<Incoming>, target: Target) -> Response<Body> {
        let client_upgrade = hyper::upgrade::on(&mut req);
        let slot = req.extensions_mut().remove::<SlotCell>();
        let (parts, _body) = req.into_parts();
        let mut failed = Vec::new();
        let (w, load, mut resp) = loop {
            let w = match &target {
                Target::Session(w) => w.clone(),
                Target::Any => match self.pick_again(&parts.headers, &failed) {
                    Some(w) => w,
                    None => return self.no_worker(),
                },
            };
            // Counted from the choice on, so a burst of new connections sees the ones still
            // connecting and spreads evenly.
            let load = w.hold();
            match open_upgrade(&w, &parts).await {
                Ok(resp) => break (w, load, resp),
                // Refused, or accepted and closed before an answer (a worker dying with the
                // connection in its backlog). Nothing reached the application: another worker
                // can take it, and this one gets no new traffic until a probe succeeds.
                Err(e) => Self::worker_down(&w, &e),
            }
            if matches!(target, Target::Session(_)) {
                return session_unknown();
            }
            failed.push(w);
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Refused by the worker (origin, limits, auth): its answer goes to the client.
            self.metrics.request();
            return resp.map(|b| b.map_err(BoxError::from).boxed());
        }
        let worker_upgrade = hyper::upgrade::on(&mut resp);
        let worker = w.clone();
        // Counted before the client sees the `101`.
        let open = self.metrics.upgrade();
        // The task lives as long as the WebSocket: what its future holds, every idle proxied
        // connection holds. The type-dependent parts (downcasts, a TLS client's tunnel) are done
        // in plain functions or boxed, so the common case (plain TCP) stays small.
        tokio::spawn(async move {
            let _held = (load, slot);
            let Ok(worker_side) = worker_upgrade.await.map(worker_io) else {
                return;
            };
            let Some((w_io, w_early)) = worker_side else {
                return;
            };
            let Ok(upgraded) = client_upgrade.await else {
                return;
            };
            let end = match client_io(upgraded, w_io, w_early, open) {
                ClientIo::Tcp(c_io, c_early, w_io, w_early, open) => {
                    tunnel::run(c_io, c_early, w_io, w_early, open).await
                }
                ClientIo::Boxed(tunnel) => tunnel.await,
            };
            if end != tunnel::End::Closed {
                tracing::debug!(worker = %worker.addr(), ?end, "worker connection lost under a client's WebSocket");
            }
        });
        let mut client_resp = Response::new(Empty::new().map_err(BoxError::from).boxed());
        *client_resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *client_resp.headers_mut() = std::mem::take(resp.headers_mut());
        client_resp
    }
}

/// Connects to `w` and sends it the client's upgrade request (`parts`, with the forwarded
/// headers); the worker's answer, `101` or a refusal.
async fn open_upgrade(
    w: &Worker,
    parts: &http::request::Parts,
) -> Result<Response<Incoming>, String> {
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(w.socket_addr())).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("connect timed out".to_owned()),
        };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("connection lost before the answer: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut out = Request::new(Empty::new());
    *out.method_mut() = parts.method.clone();
    *out.uri_mut() = parts
        .uri
        .path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from);
    *out.headers_mut() = parts.headers.clone();
    sender
        .send_request(out)
        .await
        .map_err(|e| format!("connection lost before the answer: {e}"))
}

/// The worker's side of an upgraded connection: its TCP stream and the bytes read past the
/// response head.
fn worker_io(upgraded: hyper::upgrade::Upgraded) -> Option<(TcpStream, Bytes)> {
    let parts = upgraded.downcast::<TokioIo<TcpStream>>().ok()?;
    Some((parts.io.into_inner(), parts.read_buf))
}

/// A tunnel, by the type of the client's connection.
enum ClientIo {
    /// Plain TCP (run in the task itself): client stream and early bytes, worker's the same,
    /// and the tunnel's place in the metrics.
    Tcp(TcpStream, Bytes, TcpStream, Bytes, OpenTunnel),
    /// TLS or another connection: its tunnel, boxed.
    Boxed(Pin<Box<dyn Future<Output = tunnel::End> + Send>>),
}

fn client_io(
    upgraded: hyper::upgrade::Upgraded,
    w_io: TcpStream,
    w_early: Bytes,
    open: OpenTunnel,
) -> ClientIo {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(p) => return ClientIo::Tcp(p.io.into_inner(), p.read_buf, w_io, w_early, open),
        Err(u) => u,
    };
    match upgraded.downcast::<TokioIo<tunnel::TlsStream>>() {
        Ok(p) => ClientIo::Boxed(Box::pin(tunnel::run(
            p.io.into_inner(),
            p.read_buf,
            w_io,
            w_early,
            open,
        ))),
        Err(u) => ClientIo::Boxed(Box::pin(tunnel::run(
            TokioIo::new(u),
            Bytes::new(),
            w_io,
            w_early,
            open,
        ))),
    }
}

/// The place in an address's count that an upgrade holds for as long as its tunnel is open
/// (put in the request's extensions by [`AddressLimitLayer`](crate::AddressLimitLayer)).
#[derive(Debug, Clone)]
pub(crate) struct SlotCell(
    #[expect(dead_code, reason = "held for its drop, which gives the place back")]
    pub(crate)  Arc<AddrSlot>,
);

/// Reads a whole engine.io handshake response and tags its session id; `None` when it cannot be
/// read.
async fn tag_handshake(
    mut parts: http::response::Parts,
    body: Incoming,
    tag: &str,
) -> Option<Response<Body>> {
    let bytes = match Limited::new(body, HANDSHAKE_MAX).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            tracing::debug!(error = %e, "engine.io handshake response unreadable");
            return None;
        }
    };
    let bytes = match tag_open_packet(&bytes, tag) {
        Some(tagged) => tagged,
        None => bytes,
    };
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Some(Response::from_parts(
        parts,
        Full::new(bytes).map_err(BoxError::from).boxed(),
    ))
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Replaces whatever forwarding headers the client sent by the balancer's own: the client is
/// the TCP peer (the balancer is the front door).
fn forwarded_headers<B>(req: &mut Request<B>) {
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    let secure = req.extensions().get::<Secure>().is_some();
    let h = req.headers_mut();
    h.remove(FORWARDED);
    h.remove(X_FORWARDED_HOST);
    match peer {
        Some(ip) => {
            h.insert(X_FORWARDED_FOR, ip_value(ip));
        }
        None => {
            h.remove(X_FORWARDED_FOR);
        }
    }
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if secure { "https" } else { "http" }),
    );
}

fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 @ std::net::IpAddr::V4(_) => v4,
    };
    HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Drops the headers that belong to one connection (RFC 9110 §7.6.1), and those the
/// `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        h.remove(n);
    }
}

/// A plain-text response.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(BoxError::from)
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// engine.io's answer to a session it does not know (the client opens a new one).
fn session_unknown() -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(
            br#"{"code":1,"message":"Session ID unknown"}"#,
        ))
        .map_err(BoxError::from)
        .boxed(),
    );
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
