//! The engine.io endpoint (EIO v4, long-polling and WebSocket, with upgrades) at
//! [`Config::engineio_path`](crate::Config::engineio_path), and the browser module at
//! [`ENGINEIO_SCRIPT_PATH`](crate::ENGINEIO_SCRIPT_PATH).
//!
//! engineioxide runs the engine.io sessions. Each session is bridged to the same socket state
//! machine that serves a WebSocket connection: an in-memory duplex pipe carries WebSocket frames,
//! the server side runs [`conn::run`](crate::conn::run) exactly as for an upgraded connection, and
//! the other side (a WebSocket client in this module) turns every engine.io message into one text
//! frame and every text frame into one engine.io message. Handlers, middleware, auth, the exchange
//! and the limits are therefore the WebSocket endpoint's by construction.
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
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tower_service::Service;

use crate::server::ServerInner;
use crate::service::RequestBody;

mod frame;

/// The path at which the worker serves the browser module `socketcluster-engineio.js`.
pub const ENGINEIO_SCRIPT_PATH: &str = "/socketcluster-engineio.js";

/// The in-band close message: `#close:` followed by `{"code":<u16>,"reason":"<text>"}`.
pub const CLOSE_PREFIX: &str = "#close:";

const SCRIPT: &str = include_str!("socketcluster-engineio.js");

/// Capacity of the in-memory pipe between a session and its socket, per direction.
const PIPE_BYTES: usize = 64 * 1024;

/// Read and write buffers of the bridge side of the pipe (larger reads and writes bypass them).
const BUF_BYTES: usize = 1024;

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
        let req = match self.admit(req) {
            Ok(req) => req,
            Err(res) => return Box::pin(std::future::ready(res)),
        };
        let fut = self.svc.clone().call(req);
        Box::pin(async move {
            let res = match fut.await {
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
    /// origin (403), shutdown and connection limit (503), `handshake_ws` middleware (401). The
    /// extensions the middleware made travel to the socket in the request.
    #[allow(clippy::result_large_err)]
    fn admit<B>(&self, req: Request<B>) -> Result<Request<B>, Response<String>> {
        let opens = req
            .uri()
            .query()
            .is_none_or(|q| !q.split('&').any(|kv| kv.starts_with("sid=")));
        if !opens {
            return Ok(req);
        }
        let server = &self.handler.server;
        let (mut parts, body) = req.into_parts();
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok());
        if !server.cfg.origin_allowed(origin) {
            return Err(plain(
                StatusCode::FORBIDDEN,
                "Origin not allowed".to_owned(),
            ));
        }
        if server.shutting_down.load(Ordering::Acquire) {
            return Err(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "Server is shutting down".to_owned(),
            ));
        }
        if server.connections.load(Ordering::Acquire) >= server.cfg.max_connections {
            return Err(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many connections".to_owned(),
            ));
        }
        let mut ext = http::Extensions::new();
        if let Some(mw) = &server.mw.handshake_ws
            && let Err(b) = mw(&parts, &mut ext)
        {
            let message = b.0.map(|e| e.message).unwrap_or_else(|| {
                "The handshakeWS AGAction was blocked by handshake middleware".to_owned()
            });
            return Err(plain(StatusCode::UNAUTHORIZED, message));
        }
        parts
            .extensions
            .insert(PendingExt(Arc::new(Mutex::new(Some(ext)))));
        Ok(Request::from_parts(parts, body))
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

/// The `handshake_ws` extensions of a new session, taken once by `on_connect`.
#[derive(Clone)]
struct PendingExt(Arc<Mutex<Option<http::Extensions>>>);

/// The engine.io handler: one bridged socket per session.
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

/// What the engine.io side hands to the bridge.
enum Inbound {
    Text(Str),
    /// The session ended: close the socket with this code (`None`: drop the pipe, 1006).
    Close(Option<(u16, String)>),
}

/// Per-session data.
#[derive(Default)]
struct Session {
    tx: Mutex<Option<mpsc::UnboundedSender<Inbound>>>,
    /// Bytes of client messages handed to the bridge and not yet written to the pipe.
    queued: AtomicUsize,
    /// The most bytes `queued` may reach.
    limit: AtomicUsize,
    /// The close code to give the socket when the server itself ends the session.
    close: Mutex<Option<(u16, String)>>,
}

impl Session {
    /// Hands a client message to the bridge. A client that sends faster than its socket reads
    /// (more than `limit` bytes waiting) has its socket closed with 1008.
    fn send(&self, text: Str) {
        let len = text.len();
        let queued = self.queued.fetch_add(len, Ordering::AcqRel) + len;
        let mut tx = self.tx.lock();
        if queued > self.limit.load(Ordering::Relaxed) {
            if let Some(tx) = tx.take() {
                let _ = tx.send(Inbound::Close(Some((
                    1008,
                    "Inbound queue full".to_owned(),
                ))));
            }
            return;
        }
        if let Some(t) = tx.as_ref() {
            let _ = t.send(Inbound::Text(text));
        }
    }

    /// Takes the sender and hands it the end of the session.
    fn end(&self, close: Option<(u16, String)>) {
        let tx = self.tx.lock().take();
        if let Some(tx) = tx {
            let _ = tx.send(Inbound::Close(close));
        }
    }
}

/// Parses the payload of an in-band close message.
fn parse_close(rest: &str) -> (u16, String) {
    #[derive(serde::Deserialize)]
    struct Close {
        code: Option<u16>,
        reason: Option<String>,
    }
    match serde_json::from_str::<Close>(rest) {
        Ok(c) => (c.code.unwrap_or(1000), c.reason.unwrap_or_default()),
        Err(_) => (1000, String::new()),
    }
}

/// The in-band close message for `code` and `reason`.
fn close_message(code: u16, reason: &str) -> String {
    let body = serde_json::json!({ "code": code, "reason": reason });
    format!("{CLOSE_PREFIX}{body}")
}

impl EngineIoHandler for Handler {
    type Data = Session;

    fn on_connect(self: Arc<Self>, socket: Arc<Socket<Session>>) {
        self.sessions.fetch_add(1, Ordering::AcqRel);
        let ext = socket
            .req_parts
            .extensions
            .get::<PendingExt>()
            .and_then(|p| p.0.lock().take())
            .unwrap_or_default();
        let max = self.server.cfg.max_connections;
        if self
            .server
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            let _ = socket.emit(close_message(1013, "Too many connections"));
            tokio::spawn(close_after_grace(socket, self.grace));
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let cfg = &self.server.cfg;
        let limit = 4 * cfg.engineio_max_payload.max(cfg.max_payload);
        socket.data.limit.store(limit, Ordering::Relaxed);
        *socket.data.tx.lock() = Some(tx);
        let (server_io, bridge_io) = tokio::io::duplex(PIPE_BYTES);
        tracing::debug!(sid = %socket.id, transport = ?socket.transport_type(), "engine.io session opened");
        tokio::spawn(crate::conn::run(
            server_io,
            bytes::Bytes::new(),
            self.server.clone(),
            ext,
        ));
        let stall = Duration::from_millis(self.server.cfg.ping_timeout_ms);
        tokio::spawn(bridge(bridge_io, rx, socket, self.grace, stall));
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
        match msg.as_str().strip_prefix(CLOSE_PREFIX) {
            Some(rest) => {
                socket.data.end(Some(parse_close(rest)));
            }
            None => socket.data.send(msg),
        }
    }

    fn on_binary(self: &Arc<Self>, data: Bytes, socket: Arc<Socket<Session>>) {
        // The WebSocket endpoint reads a binary frame as text too.
        let text = String::from_utf8_lossy(&data).into_owned();
        socket.data.send(Str::from(text));
    }
}

/// Waits up to `grace` for the client to close the session after an in-band close, then
/// closes it.
async fn close_after_grace(socket: Arc<Socket<Session>>, grace: Duration) {
    let _ = tokio::time::timeout(grace, socket.closed()).await;
    if !socket.is_closed() {
        socket.close(DisconnectReason::TransportClose);
    }
}

/// Queues one message for the client. While the session's buffer is full (a polling client that
/// has not fetched yet) it waits, so the pipe and then the socket's own outbound queue fill up and
/// its limits apply as on a WebSocket; a buffer that stays full for `stall` closes the socket as
/// a slow consumer. False when the session is gone.
async fn emit(socket: &Socket<Session>, text: Str, stall: Duration) -> bool {
    let mut text = Some(text);
    let deadline = tokio::time::Instant::now() + stall;
    let mut pause = Duration::from_millis(1);
    loop {
        match socket.reserve() {
            Ok(permit) => {
                if let Some(t) = text.take() {
                    permit.emit(t);
                }
                return true;
            }
            Err(mpsc::error::TrySendError::Closed(())) => return false,
            Err(mpsc::error::TrySendError::Full(())) => {
                if tokio::time::Instant::now() >= deadline {
                    *socket.data.close.lock() =
                        Some((crate::socket::SLOW_CONSUMER, "Slow consumer".to_owned()));
                    socket.close(DisconnectReason::TransportError);
                    return false;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
}

/// Carries frames between one engine.io session and its socket until either ends.
async fn bridge(
    io: DuplexStream,
    mut rx: mpsc::UnboundedReceiver<Inbound>,
    socket: Arc<Socket<Session>>,
    grace: Duration,
    stall: Duration,
) {
    let (read_half, write_half) = tokio::io::split(io);
    let mut reader_io = tokio::io::BufReader::with_capacity(BUF_BYTES, read_half);
    let mut writer_io = tokio::io::BufWriter::with_capacity(BUF_BYTES, write_half);

    // Socket → engine.io: each text frame is one message; the close frame becomes the in-band
    // close.
    let reader = async {
        let mut frames = frame::Reader::default();
        let (code, reason) = loop {
            match frames.read(&mut reader_io).await {
                Ok(Some(frame::Frame::Text(text))) => {
                    if !emit(&socket, text, stall).await {
                        return;
                    }
                }
                Ok(Some(frame::Frame::Close(code, reason))) => break (code, reason),
                Ok(None) | Err(_) => break (1006, "Socket hung up".to_owned()),
            }
        };
        if socket.is_closed() {
            return;
        }
        let _ = socket.emit(close_message(code, &reason));
        close_after_grace(socket.clone(), grace).await;
    };

    // engine.io → socket: each message is one text frame; the end of the session is a close
    // frame (or, for a broken transport, the end of the pipe).
    let writer = async {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Inbound::Text(s) => {
                        if frame::write_text(&mut writer_io, s.as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                        socket.data.queued.fetch_sub(s.len(), Ordering::AcqRel);
                    }
                    Inbound::Close(Some((code, reason))) => {
                        let _ = frame::write_close(&mut writer_io, code, &reason).await;
                        let _ = writer_io.flush().await;
                        // The socket answers and ends; the reader sees it.
                        tokio::time::sleep(grace).await;
                        return;
                    }
                    Inbound::Close(None) => return,
                }
                next = rx.try_recv().ok();
            }
            if writer_io.flush().await.is_err() {
                return;
            }
        }
    };

    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_messages_round_trip() {
        let m = close_message(4001, "Client pong timed out");
        assert_eq!(
            m,
            r##"#close:{"code":4001,"reason":"Client pong timed out"}"##
        );
        let rest = m.strip_prefix(CLOSE_PREFIX).unwrap();
        assert_eq!(
            parse_close(rest),
            (4001, "Client pong timed out".to_owned())
        );
        assert_eq!(parse_close("garbage"), (1000, String::new()));
    }
}
