//! The tower layer and service: WebSocket upgrades on the SocketCluster path are handled here,
//! every other request goes to the inner service.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use base64::Engine;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tower_layer::Layer;
use tower_service::Service;

use crate::middleware::HandshakeWsAction;
use crate::request::{ClientAddr, HandshakeRequest, PeerAddr, RequestBody};
use crate::state::ServerInner;
use crate::transport::ws::WsStream;

/// Wraps an app's service with the SocketCluster endpoint. Made by
/// [`ScServerBuilder::build_layer`](crate::ScServerBuilder::build_layer).
#[derive(Clone)]
pub struct ScLayer {
    server: Arc<ServerInner>,
    #[cfg(feature = "engineio")]
    eio: Option<Arc<crate::engineio::Endpoint>>,
}

impl std::fmt::Debug for ScLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScLayer")
            .field("path", &self.server.cfg.path)
            .finish()
    }
}

impl ScLayer {
    pub(crate) fn new(server: Arc<ServerInner>) -> Self {
        ScLayer {
            #[cfg(feature = "engineio")]
            eio: crate::engineio::Endpoint::new(&server),
            server,
        }
    }

    /// Wraps `inner` (same as [`Layer::layer`]).
    pub fn service<S>(&self, inner: S) -> ScService<S> {
        ScService {
            inner,
            server: self.server.clone(),
            #[cfg(feature = "engineio")]
            eio: self.eio.clone(),
        }
    }

    /// Open engine.io sessions (0 when the endpoint is off).
    #[cfg(feature = "engineio")]
    pub fn engineio_sessions(&self) -> usize {
        self.eio.as_ref().map_or(0, |e| e.sessions())
    }
}

impl<S> Layer<S> for ScLayer {
    type Service = ScService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.service(inner)
    }
}

/// The SocketCluster endpoint in front of `S`: an upgrade request for exactly the configured path
/// (query strings allowed) becomes a socket; everything else is `S`'s.
///
/// Standalone it is `ScService<NotFound>`, which answers 404 to other requests.
#[derive(Clone)]
pub struct ScService<S = NotFound> {
    inner: S,
    server: Arc<ServerInner>,
    #[cfg(feature = "engineio")]
    eio: Option<Arc<crate::engineio::Endpoint>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for ScService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScService")
            .field("inner", &self.inner)
            .field("path", &self.server.cfg.path)
            .finish()
    }
}

impl<S> ScService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The default inner service: 404 Not Found for every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotFound;

impl<B> Service<Request<B>> for NotFound {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        let mut res = Response::new("Not Found\n".to_owned());
        *res.status_mut() = StatusCode::NOT_FOUND;
        std::future::ready(Ok(res))
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ScService`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Ready { response: Option<Response<B>> },
        Inner { #[pin] future: F },
        Boxed { future: Pin<Box<dyn Future<Output = Response<String>> + Send>> },
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<String>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Boxed { future } => future.as_mut().poll(cx).map(|r| Ok(r.map(B::from))),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ScService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: RequestBody,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        resolve_client_addr(&self.server, &mut req);
        #[cfg(feature = "engineio")]
        if let Some(eio) = &self.eio
            && eio.handles(req.uri().path())
        {
            return ResponseFuture {
                kind: Kind::Boxed {
                    future: eio.call(req),
                },
            };
        }
        if req.uri().path() == RECOVERY_SCRIPT_PATH
            && matches!(*req.method(), http::Method::GET | http::Method::HEAD)
        {
            return ResponseFuture {
                kind: Kind::Ready {
                    response: Some(recovery_script().map(ResBody::from)),
                },
            };
        }
        if self.server.cfg.websocket && req.uri().path() == self.server.cfg.path && is_upgrade(&req)
        {
            match upgrade(&self.server, req) {
                Upgrade::Ready(response) => ResponseFuture {
                    kind: Kind::Ready {
                        response: Some(response.map(ResBody::from)),
                    },
                },
                Upgrade::Pending(future) => ResponseFuture {
                    kind: Kind::Boxed { future },
                },
            }
        } else {
            ResponseFuture {
                kind: Kind::Inner {
                    future: self.inner.call(req),
                },
            }
        }
    }
}

/// The path at which the server serves `socketcluster-recovery.js`, the helper that lets the
/// unchanged JavaScript client resume its subscriptions from where it was (missed-message
/// recovery: see `docs/recovery.md`).
pub const RECOVERY_SCRIPT_PATH: &str = "/socketcluster-recovery.js";

fn recovery_script() -> Response<String> {
    let mut res = Response::new(include_str!("socketcluster-recovery.js").to_owned());
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    res
}

fn header_has(req: &http::HeaderMap, name: header::HeaderName, token: &str) -> bool {
    req.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::GET
        && header_has(req.headers(), header::UPGRADE, "websocket")
        && header_has(req.headers(), header::CONNECTION, "upgrade")
}

/// Why an upgrade was refused before the WebSocket opened; each has a fixed status.
#[derive(Debug)]
enum UpgradeRejection {
    BadRequest(&'static str),
    Origin,
    Blocked(String),
    Refused(crate::limits::Refusal),
}

impl UpgradeRejection {
    fn into_response(self) -> Response<String> {
        let (status, body) = match self {
            UpgradeRejection::BadRequest(m) => (StatusCode::BAD_REQUEST, m.to_owned()),
            UpgradeRejection::Origin => (StatusCode::FORBIDDEN, "Origin not allowed".to_owned()),
            UpgradeRejection::Blocked(m) => (StatusCode::UNAUTHORIZED, m),
            UpgradeRejection::Refused(r) => (r.status(), r.message().to_owned()),
        };
        let mut res = Response::new(body);
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res
    }
}

fn accept_key(key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Puts the client's address ([`ClientAddr`]) into the request's extensions, unless the
/// connection already gave it (a PROXY protocol header): the peer's, or the one a trusted proxy
/// forwarded.
fn resolve_client_addr<B>(server: &ServerInner, req: &mut Request<B>) {
    if req.extensions().get::<ClientAddr>().is_some() {
        return;
    }
    let Some(PeerAddr(peer)) = req.extensions().get::<PeerAddr>().copied() else {
        return;
    };
    let ip = crate::client_addr::from_headers(peer.ip(), req.headers(), &server.trusted);
    req.extensions_mut().insert(ClientAddr(ip));
}

/// The answer to an upgrade: at once, or once the `handshake_ws` middleware is done.
enum Upgrade {
    Ready(Response<String>),
    Pending(Pin<Box<dyn Future<Output = Response<String>> + Send>>),
}

fn upgrade<ReqBody>(server: &Arc<ServerInner>, req: Request<ReqBody>) -> Upgrade {
    let rejected = |rejection: UpgradeRejection| {
        tracing::debug!(?rejection, "WebSocket upgrade refused");
        rejection.into_response()
    };
    let checked = match check_upgrade(server, req) {
        Ok(c) => c,
        Err(rejection) => return Upgrade::Ready(rejected(rejection)),
    };
    if server.mw.handshake_ws.is_empty() {
        let action = HandshakeWsAction {
            request: checked.request,
            extensions: http::Extensions::new(),
        };
        return Upgrade::Ready(
            accept_upgrade(server, checked.on_upgrade, &checked.accept, action)
                .unwrap_or_else(rejected),
        );
    }
    let server = server.clone();
    Upgrade::Pending(Box::pin(async move {
        let action = HandshakeWsAction {
            request: checked.request,
            extensions: http::Extensions::new(),
        };
        let result = match server.mw.handshake_ws.run(action).await {
            Ok(action) => accept_upgrade(&server, checked.on_upgrade, &checked.accept, action),
            Err(b) => Err(UpgradeRejection::Blocked(b.into_http_message())),
        };
        result.unwrap_or_else(rejected)
    }))
}

/// An upgrade request that passed the checks before the middleware.
struct Checked {
    request: HandshakeRequest,
    on_upgrade: hyper::upgrade::OnUpgrade,
    accept: String,
}

fn check_upgrade<ReqBody>(
    server: &Arc<ServerInner>,
    req: Request<ReqBody>,
) -> Result<Checked, UpgradeRejection> {
    let (mut parts, _body) = req.into_parts();
    if parts
        .headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        return Err(UpgradeRejection::BadRequest(
            "Unsupported WebSocket version",
        ));
    }
    let key = parts
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(UpgradeRejection::BadRequest("Missing Sec-WebSocket-Key"))?;
    let accept = accept_key(key.as_bytes());
    let origin = parts
        .headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    if !server.cfg.origin_allowed(origin) {
        return Err(UpgradeRejection::Origin);
    }
    let client = parts.extensions.get::<ClientAddr>().map(|a| a.0);
    server
        .check_connection(client)
        .map_err(UpgradeRejection::Refused)?;
    let on_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or(UpgradeRejection::BadRequest(
            "Connection cannot be upgraded",
        ))?;
    Ok(Checked {
        request: HandshakeRequest::copy_from(&parts),
        on_upgrade,
        accept,
    })
}

/// Counts the connection (503 over the server's limit, 429 over the address's), runs the socket
/// once the connection is upgraded, and answers 101.
fn accept_upgrade(
    server: &Arc<ServerInner>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    accept: &str,
    action: HandshakeWsAction,
) -> Result<Response<String>, UpgradeRejection> {
    let slot = server
        .count_connection(action.request.client_addr)
        .map_err(UpgradeRejection::Refused)?;
    let server = server.clone();
    let HandshakeWsAction {
        request,
        extensions,
    } = action;
    tokio::spawn(async move {
        let max_payload = server.cfg.max_payload;
        match on_upgrade.await {
            // Served by hyper straight over TCP (the standalone server): run on the plain
            // `TcpStream`, skipping the upgrade wrappers on every read and write. Any other
            // transport (TLS, a stack that rewinds the stream) keeps the `Upgraded` wrapper.
            Ok(upgraded) => match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
                Ok(parts) => {
                    let ws = WsStream::new(parts.io.into_inner(), parts.read_buf, max_payload);
                    crate::conn::run(ws, server, request, extensions, slot).await;
                }
                Err(upgraded) => {
                    let ws =
                        WsStream::new(TokioIo::new(upgraded), bytes::Bytes::new(), max_payload);
                    crate::conn::run(ws, server, request, extensions, slot).await;
                }
            },
            Err(e) => {
                server.connections.fetch_sub(1, Ordering::AcqRel);
                drop(slot);
                tracing::debug!(error = %e, "WebSocket upgrade failed");
            }
        }
    });
    let mut res = Response::new(String::new());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_rfc6455() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
