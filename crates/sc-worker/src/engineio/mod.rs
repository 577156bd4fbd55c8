//! The engine.io endpoint (EIO v4, long-polling and WebSocket, with upgrades) at
//! [`Config::engineio_path`](crate::Config::engineio_path), and the browser module at
//! [`ENGINEIO_SCRIPT_PATH`](crate::ENGINEIO_SCRIPT_PATH).
//!
//! engineioxide runs the engine.io sessions. Each session is a transport of its own
//! (`transport::EioTransport`: engine.io messages in, frames out as engine.io messages) run by
//! the same socket task as a WebSocket connection, so handlers, middleware, auth, the exchange
//! and the limits are the WebSocket endpoint's by construction.
//!
//! Engine.io has no close codes, so a close travels in-band as one message
//! `#close:{"code":<u16>,"reason":"<text>"}` ([`CLOSE_PREFIX`]) before the engine.io close, in
//! both directions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use engineioxide::config::EngineIoConfig;
use engineioxide::handler::EngineIoHandler;
use engineioxide::service::EngineIoService;
use engineioxide::{DisconnectReason, Socket, Str};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tower_service::Service;

use crate::limits::AddrSlot;
use crate::middleware::HandshakeWsAction;
use crate::request::RequestBody;
use crate::request::{ClientAddr, HandshakeRequest};
use crate::state::ServerInner;

mod transport;

use transport::{EioTransport, Session, close_after_grace, close_message};

/// The path at which the worker serves the browser module `socketcluster-engineio.js`.
pub const ENGINEIO_SCRIPT_PATH: &str = "/socketcluster-engineio.js";

/// The in-band close message: `#close:` followed by `{"code":<u16>,"reason":"<text>"}`.
pub const CLOSE_PREFIX: &str = sc_protocol::encode::INBAND_CLOSE_PREFIX;

const SCRIPT: &str = include_str!("socketcluster-engineio.js");

/// A boxed response future of the endpoint.
pub(crate) type EioFuture = Pin<Box<dyn Future<Output = Response<String>> + Send>>;

/// The engine.io endpoint of one server.
pub(crate) struct Endpoint {
    svc: EngineIoService<Handler>,
    handler: Arc<Handler>,
    path: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("path", &self.path)
            .finish()
    }
}

impl Endpoint {
    /// The endpoint of `server`, or `None` when its config switches engine.io off.
    pub(crate) fn new(server: &Arc<ServerInner>) -> Option<Arc<Endpoint>> {
        let cfg = &server.cfg;
        if !cfg.engineio {
            return None;
        }
        let path = cfg.engineio_path.clone();
        let eio_cfg = EngineIoConfig::builder()
            .req_path(path.trim_end_matches('/').to_owned())
            .ping_interval(Duration::from_millis(cfg.engineio_ping_interval_ms))
            .ping_timeout(Duration::from_millis(cfg.engineio_ping_timeout_ms))
            .max_payload(cfg.engineio_max_payload as u64)
            .max_buffer_size(cfg.outbound_queue.max(16))
            .ws_max_message_size(cfg.max_payload.saturating_add(16))
            .build();
        let handler = Arc::new(Handler {
            server: server.clone(),
            sessions: AtomicUsize::new(0),
            grace: Duration::from_millis(
                cfg.engineio_ping_interval_ms + cfg.engineio_ping_timeout_ms,
            ),
        });
        let svc = EngineIoService::with_config(handler.clone(), eio_cfg);
        Some(Arc::new(Endpoint { svc, handler, path }))
    }

    /// Open engine.io sessions.
    pub(crate) fn sessions(&self) -> usize {
        self.handler.sessions.load(Ordering::Acquire)
    }

    /// Whether this endpoint answers `path`: the engine.io path (with or without its trailing
    /// slash) and the browser module.
    pub(crate) fn handles(&self, path: &str) -> bool {
        path == ENGINEIO_SCRIPT_PATH || path == self.path || path == self.path.trim_end_matches('/')
    }

    /// Answers a request for which [`handles`](Self::handles) is true.
    pub(crate) fn call<B: RequestBody>(&self, req: Request<B>) -> EioFuture {
        if req.uri().path() == ENGINEIO_SCRIPT_PATH {
            return Box::pin(std::future::ready(script(&req)));
        }
        let req = match self.check(req) {
            Ok(req) => req,
            Err(res) => return Box::pin(std::future::ready(res)),
        };
        let server = self.handler.server.clone();
        let mut svc = self.svc.clone();
        Box::pin(async move {
            let req = match admit(&server, req).await {
                Ok(req) => req,
                Err(res) => return res,
            };
            let res = match svc.call(req).await {
                Ok(res) => res,
                Err(e) => match e {},
            };
            let (parts, body) = res.into_parts();
            let bytes = match body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => match e {},
            };
            let text = match String::from_utf8(Vec::from(bytes)) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
            Response::from_parts(parts, text)
        })
    }

    /// The checks of a WebSocket upgrade, for a request that opens a session (no `sid`):
    /// origin (403), shutdown, the connection and session limits (503) and the address's
    /// limits (429). An admitted request carries its [`Reservation`]: the session is counted
    /// from here, so concurrent opens cannot go past a limit. The `handshake_ws` middleware
    /// runs next ([`admit`]).
    #[allow(clippy::result_large_err)]
    fn check<B>(&self, mut req: Request<B>) -> Result<Request<B>, Response<String>> {
        if !opens_session(&req) {
            return Ok(req);
        }
        let server = &self.handler.server;
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok());
        if !server.cfg.origin_allowed(origin) {
            return Err(plain(
                StatusCode::FORBIDDEN,
                "Origin not allowed".to_owned(),
            ));
        }
        let max = server.cfg.engineio_max_sessions;
        if self
            .handler
            .sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many engine.io sessions".to_owned(),
            ));
        }
        let client = req.extensions().get::<ClientAddr>().map(|a| a.0);
        match server.count_connection(client) {
            Ok(slot) => {
                req.extensions_mut()
                    .insert(Reserved(Arc::new(Mutex::new(Some(Reservation {
                        handler: self.handler.clone(),
                        slot: Some(slot),
                    })))));
                Ok(req)
            }
            Err(refusal) => {
                self.handler.sessions.fetch_sub(1, Ordering::AcqRel);
                Err(plain(refusal.status(), refusal.message().to_owned()))
            }
        }
    }
}

/// A session counted when the request that opens it was admitted: one of
/// `engineio_max_sessions`, one of `max_connections` and the client address's place. `on_connect`
/// takes it; dropped unused (the middleware blocked the request, or engine.io refused it), it
/// gives all three back.
struct Reservation {
    handler: Arc<Handler>,
    slot: Option<AddrSlot>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.slot.take().is_some() {
            self.handler
                .server
                .connections
                .fetch_sub(1, Ordering::AcqRel);
            self.handler.sessions.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The [`Reservation`] in a request's extensions, taken once.
#[derive(Clone)]
struct Reserved(Arc<Mutex<Option<Reservation>>>);

/// Whether `req` opens a session (it has no `sid`).
fn opens_session<B>(req: &Request<B>) -> bool {
    req.uri()
        .query()
        .is_none_or(|q| !q.split('&').any(|kv| kv.starts_with("sid=")))
}

/// Runs the `handshake_ws` middleware on a request that opens a session (401 on a block). What
/// it made of the request and of the socket's extensions travels to `on_connect` in the
/// request's extensions.
#[allow(clippy::result_large_err)]
async fn admit<B>(server: &ServerInner, req: Request<B>) -> Result<Request<B>, Response<String>> {
    if server.mw.handshake_ws.is_empty() || !opens_session(&req) {
        return Ok(req);
    }
    let (mut parts, body) = req.into_parts();
    let action = HandshakeWsAction {
        request: HandshakeRequest::copy_from(&parts),
        extensions: http::Extensions::new(),
    };
    match server.mw.handshake_ws.run(action).await {
        Ok(action) => {
            parts
                .extensions
                .insert(Pending(Arc::new(Mutex::new(Some(action)))));
            Ok(Request::from_parts(parts, body))
        }
        Err(b) => Err(plain(StatusCode::UNAUTHORIZED, b.into_http_message())),
    }
}

fn plain(status: StatusCode, body: String) -> Response<String> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn script<B>(req: &Request<B>) -> Response<String> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed\n".to_owned(),
        );
    }
    let mut res = Response::new(SCRIPT.to_owned());
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// What the `handshake_ws` middleware made of the request that opened a session, taken once
/// by `on_connect`.
#[derive(Clone)]
struct Pending(Arc<Mutex<Option<HandshakeWsAction>>>);

/// The engine.io handler: one socket per session.
struct Handler {
    server: Arc<ServerInner>,
    sessions: AtomicUsize,
    /// How long a client has to close its session after the in-band close.
    grace: Duration,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("sessions", &self.sessions)
            .finish()
    }
}

impl EngineIoHandler for Handler {
    type Data = Session;

    fn on_connect(self: Arc<Self>, socket: Arc<Socket<Session>>) {
        let reserved = socket
            .req_parts
            .extensions
            .get::<Reserved>()
            .and_then(|r| r.0.lock().take())
            .and_then(|mut r| r.slot.take());
        let action = socket
            .req_parts
            .extensions
            .get::<Pending>()
            .and_then(|p| p.0.lock().take())
            .unwrap_or_else(|| HandshakeWsAction {
                request: HandshakeRequest::copy_from(&socket.req_parts),
                extensions: http::Extensions::new(),
            });
        let counted = match reserved {
            Some(slot) => Ok(slot),
            // Every opening request passes `Endpoint::check`; count here if one did not.
            None => {
                self.sessions.fetch_add(1, Ordering::AcqRel);
                self.server.count_connection(action.request.client_addr)
            }
        };
        let slot = match counted {
            Ok(slot) => slot,
            Err(refusal) => {
                let _ = socket.emit(close_message(1013, refusal.message()));
                tokio::spawn(close_after_grace(socket, self.grace));
                return;
            }
        };
        let cfg = &self.server.cfg;
        let rx = socket
            .data
            .open(4 * cfg.engineio_max_payload.max(cfg.max_payload));
        tracing::debug!(sid = %socket.id, transport = ?socket.transport_type(), "engine.io session opened");
        let stall = Duration::from_millis(cfg.ping_timeout_ms);
        let transport = EioTransport::new(socket, rx, stall, self.grace, cfg.outbound_queue_bytes);
        tokio::spawn(crate::conn::run(
            transport,
            self.server.clone(),
            action.request,
            action.extensions,
            slot,
        ));
    }

    fn on_disconnect(&self, socket: Arc<Socket<Session>>, reason: DisconnectReason) {
        self.sessions.fetch_sub(1, Ordering::AcqRel);
        tracing::debug!(sid = %socket.id, ?reason, "engine.io session closed");
        let code = socket.data.close.lock().take().or(match reason {
            DisconnectReason::TransportClose => Some((1000, String::new())),
            DisconnectReason::HeartbeatTimeout => Some((4001, "Client pong timed out".to_owned())),
            DisconnectReason::ClosingServer => Some((1001, "Server is shutting down".to_owned())),
            DisconnectReason::MultipleHttpPollingError
            | DisconnectReason::PacketParsingError
            | DisconnectReason::TransportError => None,
        });
        socket.data.end(code);
    }

    fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<Socket<Session>>) {
        match sc_protocol::encode::parse_inband_close(&msg) {
            Some(close) => socket.data.end(Some(close)),
            None => socket.data.send(msg),
        }
    }

    fn on_binary(self: &Arc<Self>, data: Bytes, socket: Arc<Socket<Session>>) {
        // The WebSocket endpoint reads a binary frame as text too.
        let text = String::from_utf8_lossy(&data).into_owned();
        socket.data.send(Str::from(text));
    }
}
