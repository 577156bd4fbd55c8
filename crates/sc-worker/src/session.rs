//! Sessions: every socket of one browser (its tabs) shares one session, whichever worker each
//! tab reached. The session is a signed cookie ([`SessionLayer`]); emits to a session travel
//! through the exchange on a channel of its own, so they reach its sockets on every process
//! sharing the store; its data lives in the store under one key with a TTL that every process
//! holding one of its sockets renews.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use tower_layer::Layer;
use tower_service::Service;

use sc_protocol::encode as enc;
use sc_protocol::{ErrorName, ScError};

use crate::data::{Data, IntoData};
use crate::published::Published;
use crate::request::{PeerAddr, SessionId};
use crate::sessions::{channel, data_key, new_id};
use crate::state::ServerInner;

impl crate::ScSocket {
    /// The socket's session: every socket of one browser shares it when the
    /// [`SessionLayer`] runs in front of the server (otherwise the socket is a session of its
    /// own). Its [`transmit`](Session::transmit) skips this socket.
    pub fn session(&self) -> Session {
        Session::new(
            self.server().0,
            self.0.session.clone(),
            Some(Arc::from(self.id())),
        )
    }

    /// The id of the socket's session.
    pub fn session_id(&self) -> &str {
        &self.0.session
    }
}

fn store_error(e: &sc_store::Error) -> ScError {
    ScError::new(ErrorName::BrokerError, format!("Session store failed: {e}"))
}

/// A session: its id, emits to every socket of it on every process, and its data in the store.
///
/// Get one from a socket ([`ScSocket::session`](crate::ScSocket::session)), or, in an HTTP
/// handler behind the [`SessionLayer`], from the request's extensions (with the `axum` feature,
/// `Session` is an extractor: a handler argument).
#[derive(Clone)]
pub struct Session {
    id: Arc<str>,
    server: Arc<ServerInner>,
    /// The socket it was taken from: [`transmit`](Self::transmit) skips it.
    from: Option<Arc<str>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

impl Session {
    pub(crate) fn new(server: Arc<ServerInner>, id: Arc<str>, from: Option<Arc<str>>) -> Self {
        Session { id, server, from }
    }

    /// The session id (from the cookie; a socket without one is a session of its own, whose id
    /// is the socket's).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends the event `{"event":E,"data":D}` to every socket of the session, on every process
    /// sharing the store (or in this process without one).
    pub fn emit(&self, event: &str, data: impl IntoData) -> Result<(), ScError> {
        self.send(event, data, None)
    }

    /// Like [`emit`](Self::emit), but skips the socket this session was taken from (the other
    /// tabs get it); from an HTTP handler, the same as `emit`.
    pub fn transmit(&self, event: &str, data: impl IntoData) -> Result<(), ScError> {
        self.send(event, data, self.from.clone())
    }

    fn send(
        &self,
        event: &str,
        data: impl IntoData,
        skip: Option<Arc<str>>,
    ) -> Result<(), ScError> {
        let data = data.into_data()?;
        let bytes = data.as_ref().map(Data::as_bytes);
        let mut frame = Vec::with_capacity(24 + event.len() + bytes.map_or(0, <[u8]>::len));
        enc::put_transmit(&mut frame, event, bytes);
        let msg = Published::session(&channel(&self.id), skip, Bytes::from(frame));
        self.server.broker.publish(Arc::new(msg));
        Ok(())
    }

    /// Sets `key` of the session's data to `value` (JSON), and renews the data's TTL.
    pub async fn set(&self, key: &str, value: impl IntoData) -> Result<(), ScError> {
        let value = value.into_data()?;
        let bytes = value.map_or_else(|| Bytes::from_static(b"null"), |d| d.into_bytes());
        let sessions = &self.server.sessions;
        let store = sessions.store();
        let k = data_key(&self.id);
        let r = store.map_set(&k, key, bytes).await;
        sessions.count(&r);
        r.map_err(|e| store_error(&e))?;
        let r = store.expire(&k, sessions.ttl()).await;
        sessions.count(&r);
        r.map_err(|e| store_error(&e))?;
        Ok(())
    }

    /// The value of `key` of the session's data.
    pub async fn get(&self, key: &str) -> Result<Option<Data>, ScError> {
        let sessions = &self.server.sessions;
        let r = sessions.store().map_get(&data_key(&self.id), key).await;
        sessions.count(&r);
        r.map_err(|e| store_error(&e))?.map(json).transpose()
    }

    /// Removes `key` of the session's data; whether it was there.
    pub async fn remove(&self, key: &str) -> Result<bool, ScError> {
        let sessions = &self.server.sessions;
        let r = sessions.store().map_remove(&data_key(&self.id), key).await;
        sessions.count(&r);
        r.map_err(|e| store_error(&e))
    }

    /// Every key of the session's data with its value.
    pub async fn get_all(&self) -> Result<Vec<(String, Data)>, ScError> {
        let sessions = &self.server.sessions;
        let r = sessions.store().map_get_all(&data_key(&self.id)).await;
        sessions.count(&r);
        r.map_err(|e| store_error(&e))?
            .into_iter()
            .map(|(k, v)| json(v).map(|d| (k, d)))
            .collect()
    }
}

/// With the `axum` feature, a handler takes the request's session as an argument; without a
/// [`SessionLayer`] in front, the request is refused with 500 and a message saying so.
#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for Session {
    type Rejection = (http::StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or((
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "no SessionLayer in front of this handler",
        ))
    }
}

/// A stored value as `Data`: it must be JSON (the store may be shared with other programs).
fn json(bytes: Bytes) -> Result<Data, ScError> {
    if serde_json::from_slice::<&serde_json::value::RawValue>(&bytes).is_err() {
        return Err(ScError::new(
            ErrorName::BrokerError,
            "Session data in the store is not JSON",
        ));
    }
    Ok(Data::from_trusted(bytes))
}

/// The session cookie on every request: read and checked (a missing, forged or guessed one is
/// replaced by a new session), its [`SessionId`] and [`Session`] put in the request's
/// extensions, and a new cookie set on the response (ordinary responses, the WebSocket 101 and
/// the engine.io handshake alike). Made by
/// [`ScHandle::session_layer`](crate::ScHandle::session_layer); put it outside the
/// [`ScLayer`](crate::ScLayer).
///
/// The cookie is `n/<app_name>/ssid=<id>.<signature>; Path=/; HttpOnly; SameSite=Lax`, with
/// `Secure` when the request came over TLS (an `https` URI, or a trusted proxy's
/// `X-Forwarded-Proto: https` / `Forwarded: proto=https`), and no `Max-Age`: it lasts as long
/// as the browser session, while the session's data lives on in the store for the TTL after
/// its last socket left.
#[derive(Clone)]
pub struct SessionLayer {
    server: Arc<ServerInner>,
}

impl std::fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLayer")
            .field("cookie", &self.server.sessions.cookie_name)
            .finish()
    }
}

impl SessionLayer {
    pub(crate) fn new(server: Arc<ServerInner>) -> Self {
        SessionLayer { server }
    }
}

impl SessionLayer {
    /// Wraps `inner` (same as [`Layer::layer`]).
    pub fn service<S>(&self, inner: S) -> SessionService<S> {
        SessionService {
            inner,
            server: self.server.clone(),
        }
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.service(inner)
    }
}

/// The service of [`SessionLayer`].
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    server: Arc<ServerInner>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionService")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S> SessionService<S> {
    /// The session of `req`: its cookie's, if valid, or a new one (then `Some` cookie to set).
    fn session_of<B>(&self, req: &Request<B>) -> (Arc<str>, Option<HeaderValue>) {
        let sessions = &self.server.sessions;
        let name = &sessions.cookie_name;
        let valid = req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(crate::request::cookie_pairs)
            .filter(|(k, _)| k == name)
            .find_map(|(_, v)| sessions.cookie.verify(v));
        if let Some(id) = valid {
            return (Arc::from(id), None);
        }
        let id = new_id();
        let mut cookie = format!(
            "{name}={}; Path=/; HttpOnly; SameSite=Lax",
            sessions.cookie.sign(&id)
        );
        if self.is_secure(req) {
            cookie.push_str("; Secure");
        }
        (id, HeaderValue::from_str(&cookie).ok())
    }

    /// Whether the request came over TLS, as far as the server can tell.
    fn is_secure<B>(&self, req: &Request<B>) -> bool {
        if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            return true;
        }
        let trusted = req
            .extensions()
            .get::<PeerAddr>()
            .is_some_and(|p| self.server.trusted.contains(p.0.ip()));
        if !trusted {
            return false;
        }
        let h = req.headers();
        let forwarded_proto = h
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
        forwarded_proto
            || h.get_all(header::FORWARDED)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split([',', ';']))
                .filter_map(|kv| kv.trim().split_once('='))
                .any(|(k, v)| {
                    k.eq_ignore_ascii_case("proto")
                        && v.trim_matches('"').eq_ignore_ascii_case("https")
                })
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = SessionFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let (id, cookie) = self.session_of(&req);
        let ext = req.extensions_mut();
        ext.insert(SessionId(id.clone()));
        ext.insert(Session::new(self.server.clone(), id, None));
        SessionFuture {
            future: self.inner.call(req),
            cookie,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`SessionService`]: the inner response, with the new session's
    /// cookie.
    pub struct SessionFuture<F> {
        #[pin]
        future: F,
        cookie: Option<HeaderValue>,
    }
}

impl<F> std::fmt::Debug for SessionFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionFuture")
    }
}

impl<F, B, E> Future for SessionFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.future.poll(cx))?;
        if let Some(cookie) = this.cookie.take() {
            res.headers_mut().append(header::SET_COOKIE, cookie);
        }
        Poll::Ready(Ok(res))
    }
}
