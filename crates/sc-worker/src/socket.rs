//! The handle to one connected socket.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use sc_protocol::encode as enc;
use sc_protocol::{ErrorName, ScError, events};

use crate::data::{Data, IntoData, Json};
use crate::published::Published;
use crate::request::{HandshakeRequest, StoredRequest};

/// The close code of a socket dropped as a slow consumer (its outbound queue was full). Below
/// 4500, so clients reconnect.
pub const SLOW_CONSUMER: u16 = 4100;
/// The close code of a socket that sent more than
/// [`inbound_rate_messages`](crate::Config::inbound_rate_messages) or
/// [`inbound_rate_bytes`](crate::Config::inbound_rate_bytes) allow. Below 4500, so clients
/// reconnect (after their backoff).
pub const RATE_LIMITED: u16 = 4429;
/// The close code sent to every socket on graceful shutdown (1001, going away): clients reconnect
/// (elsewhere, or here once the server is back) and raise no error for it.
///
/// socketcluster-client v20 waits its reconnect backoff (10 to 20 s by default) before it
/// reconnects after 1001; a server that is being restarted closes with [`RESTART`] instead.
pub const SHUTDOWN: u16 = 1001;
/// The close code for a server that is being restarted (or replaced), for
/// [`ScHandle::shutdown_with`](crate::ScHandle::shutdown_with): 4000, which socketcluster-client
/// v20 answers by reconnecting at once (it does so on 4000, 4001 and 1005; on other codes below
/// 4500, such as [`SHUTDOWN`], only after its reconnect backoff of 10 to 20 s), so its clients
/// move to the restarted server, or another one behind the balancer, without a pause. The
/// balancer closes a client whose worker vanished with the same code.
///
/// The client names 4000 "Server ping timed out" and emits an `error` event for it (as for any
/// code but 1000 and 1001); apps that log client errors see one per socket on a restart.
pub const RESTART: u16 = 4000;
/// The close reason of [`ScHandle::shutdown`](crate::ScHandle::shutdown).
pub(crate) const SHUTDOWN_REASON: &str = "Server is shutting down";

/// What a socket needs of its server. The server's shared state implements it; a socket holds
/// it as a trait object, so the socket does not depend on the server's state (which holds the
/// sockets).
pub(crate) trait Host: std::any::Any + Send + Sync {
    /// How long a server-to-client invoke waits for its response.
    fn ack_timeout(&self) -> Duration;
    /// Signs a token payload: the JWT and the claims (with `iat` and `exp`).
    fn sign(&self, payload: Value) -> Result<(String, Value), ScError>;
    /// Removes the subscriber `key` from `channel` in the exchange.
    fn unsubscribe(&self, channel: &str, key: u64);
    /// Calls the app's `on_event` hook.
    fn on_event(&self, socket: &ScSocket, event: &ScEvent);
    /// Counts a message dropped (or the socket closed) because its outbound queue was full.
    fn queue_drop(&self);
}

/// Wakes the socket's task to look at its state (a close was requested, say). One waiter, so
/// an atomic flag and waker: checking it, which the task does on every wake-up, takes no lock.
#[derive(Default)]
pub(crate) struct Signal {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Sets the signal and wakes the task; a signal set while nobody waits is kept for the next
    /// wait.
    pub(crate) fn notify_one(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.set.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.set.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Like [`Self::notified`] for a task that keeps polling: once `registered` (its waker is
    /// kept until the signal is set), the signal is only read, not registered again.
    pub(crate) fn poll_registered(&self, cx: &mut Context<'_>, registered: &mut bool) -> Poll<()> {
        if *registered && !self.set.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        let poll = self.poll(cx);
        *registered = poll.is_pending();
        poll
    }

    /// Completes once the signal is set (and clears it).
    pub(crate) fn notified(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll(cx))
    }
}

/// An item of a socket's outbound queue.
pub(crate) enum Out {
    /// An encoded frame.
    Frame(Bytes),
    /// A publish (encoded once, shared; outbound middleware may rewrite it per socket).
    Publish(Arc<Published>),
}

impl Out {
    /// The bytes the item holds (a shared publish counts in full: the socket keeps it alive).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        match self {
            Out::Frame(b) => b.len(),
            Out::Publish(p) => p.frame.len(),
        }
    }
}

type Ack = oneshot::Sender<Result<Option<Data>, ScError>>;

#[derive(Default)]
pub(crate) struct SocketState {
    pub(crate) open: bool,
    pub(crate) closed: bool,
    pub(crate) auth_token: Option<Arc<Value>>,
    pub(crate) signed_token: Option<Arc<str>>,
    pub(crate) channels: Vec<Arc<str>>,
    /// Total bytes of the names in `channels`.
    pub(crate) channel_bytes: usize,
    pub(crate) acks: HashMap<u64, Ack>,
    pub(crate) close: Option<(u16, String, bool)>,
}

pub(crate) struct SocketShared {
    pub(crate) id: Box<str>,
    pub(crate) key: u64,
    pub(crate) tx: mpsc::Sender<Out>,
    /// Bytes of the items in `tx` and of those the socket's task took and has not written yet.
    pub(crate) queued: AtomicUsize,
    /// The most `queued` may hold ([`Config::outbound_queue_bytes`](crate::Config::outbound_queue_bytes)).
    pub(crate) queue_limit: usize,
    pub(crate) host: Arc<dyn Host>,
    /// The HTTP request that opened the socket.
    pub(crate) request: StoredRequest,
    /// The id of the socket's session (its own id when the request had none).
    pub(crate) session: Arc<str>,
    pub(crate) state: Mutex<SocketState>,
    pub(crate) ext: Mutex<http::Extensions>,
    pub(crate) next_cid: AtomicU64,
    pub(crate) inflight: AtomicUsize,
    pub(crate) control: Signal,
    /// The `exp` claim of the auth token (seconds), 0 when none: read on every read burst
    /// without taking the state lock; written with the token, under it.
    pub(crate) exp: AtomicU64,
}

/// A connected socket: a cheap, cloneable handle for handlers and the server handle.
///
/// Sending never blocks: frames go to the socket's bounded outbound queue; when it is full the
/// socket is closed with [`SLOW_CONSUMER`] and the send fails with a `BadConnectionError`.
#[derive(Clone)]
pub struct ScSocket(pub(crate) Arc<SocketShared>);

impl fmt::Debug for ScSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScSocket").field("id", &self.id()).finish()
    }
}

fn bad_connection(message: &str) -> ScError {
    ScError::new(ErrorName::BadConnectionError, message).with("type", "disconnect")
}

impl ScSocket {
    pub(crate) fn key(&self) -> u64 {
        self.0.key
    }

    /// The socket id (15 random bytes, base64 with `-` and `_`).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The HTTP request that opened the socket (the WebSocket upgrade, or the engine.io request
    /// that opened the session): its URI, headers and cookies, and the client's address. A copy
    /// is made at each call (the socket keeps the request compact); for one header or cookie,
    /// [`header`](Self::header) and [`cookie`](Self::cookie) read it in place.
    pub fn request(&self) -> HandshakeRequest {
        self.0.request.to_request()
    }

    /// The first value of the header `name` (any case) in the request that opened the socket,
    /// if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.0.request.header(name)
    }

    /// The value of the cookie `name` in the request that opened the socket.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.0.request.cookie(name)
    }

    /// The client's address: the TCP peer, or the address a trusted proxy forwarded (see
    /// [`Config::trusted_proxies`](crate::Config::trusted_proxies)); `None` when not known (a
    /// transport that gave none).
    pub fn client_addr(&self) -> Option<std::net::IpAddr> {
        self.0.request.client_addr
    }

    /// Whether the handshake completed and the socket is not closed.
    pub fn is_open(&self) -> bool {
        let s = self.0.state.lock();
        s.open && !s.closed
    }

    /// Whether the socket holds a valid auth token.
    pub fn is_authenticated(&self) -> bool {
        self.0.state.lock().auth_token.is_some()
    }

    /// The auth token's payload (with `iat` and `exp`), if authenticated.
    pub fn auth_token(&self) -> Option<Arc<Value>> {
        self.0.state.lock().auth_token.clone()
    }

    /// The signed auth token (the JWT), if authenticated.
    pub fn signed_auth_token(&self) -> Option<Arc<str>> {
        self.0.state.lock().signed_token.clone()
    }

    /// The channels this socket is subscribed to.
    pub fn subscriptions(&self) -> Vec<String> {
        self.0
            .state
            .lock()
            .channels
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    /// Whether this socket is subscribed to `channel`.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.0.state.lock().channels.iter().any(|c| &**c == channel)
    }

    /// A clone of the typed per-socket value of type `T`, if one was inserted.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.0.ext.lock().get::<T>().cloned()
    }

    /// Stores a typed per-socket value (one per type), returning the previous one.
    pub fn insert<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        self.0.ext.lock().insert(value)
    }

    /// Runs `f` with the per-socket extensions (the values inserted by [`ScSocket::insert`] and
    /// by the `handshake_ws` middleware). Do not call other `ScSocket` extension methods inside.
    pub fn with_extensions<R>(&self, f: impl FnOnce(&mut http::Extensions) -> R) -> R {
        f(&mut self.0.ext.lock())
    }

    /// Queues an outbound item; closes the socket as a slow consumer when the queue is full (in
    /// frames or in bytes).
    pub(crate) fn deliver(&self, out: Out) -> bool {
        let len = out.len();
        let before = self.0.queued.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > self.0.queue_limit {
            self.0.queued.fetch_sub(len, Ordering::AcqRel);
            self.0.host.queue_drop();
            tracing::debug!(sid = %self.id(), queued = before, "outbound queue over its bytes: closing slow consumer");
            self.close_with(SLOW_CONSUMER, "Slow consumer", false);
            return false;
        }
        match self.0.tx.try_send(out) {
            Ok(()) => true,
            Err(e) => {
                self.0.queued.fetch_sub(len, Ordering::AcqRel);
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    self.0.host.queue_drop();
                    tracing::debug!(sid = %self.id(), "outbound queue full: closing slow consumer");
                    self.close_with(SLOW_CONSUMER, "Slow consumer", false);
                }
                false
            }
        }
    }

    pub(crate) fn send_frame(&self, frame: Vec<u8>) -> Result<(), ScError> {
        if self.0.state.lock().closed {
            return Err(bad_connection("Socket is closed"));
        }
        if self.deliver(Out::Frame(Bytes::from(frame))) {
            Ok(())
        } else {
            Err(bad_connection("Socket outbound queue is full or closed"))
        }
    }

    /// Queues a frame that `write` encodes with the data's JSON text.
    fn send_with(
        &self,
        capacity: usize,
        data: Option<&Data>,
        write: impl FnOnce(&mut Vec<u8>, Option<&[u8]>),
    ) -> Result<(), ScError> {
        let data = data.map(Data::as_bytes);
        let mut frame = Vec::with_capacity(capacity + data.map_or(0, <[u8]>::len));
        write(&mut frame, data);
        self.send_frame(frame)
    }

    /// Sends a transmit `{"event":E,"data":D}` (no reply).
    pub fn transmit(&self, event: &str, data: impl IntoData) -> Result<(), ScError> {
        let data = data.into_data()?;
        self.send_with(24 + event.len(), data.as_ref(), |b, data| {
            enc::put_transmit(b, event, data);
        })
    }

    /// Invokes `event` on the client and waits for its response, up to the server's ack timeout.
    pub async fn invoke(&self, event: &str, data: impl IntoData) -> Result<Option<Data>, ScError> {
        let timeout = self.0.host.ack_timeout();
        self.invoke_with_timeout(event, data, timeout).await
    }

    /// Invokes `event` on the client and waits for its response up to `timeout`; a timeout is a
    /// `TimeoutError`, a response error is the client's error object.
    pub async fn invoke_with_timeout(
        &self,
        event: &str,
        data: impl IntoData,
        timeout: Duration,
    ) -> Result<Option<Data>, ScError> {
        let data = data.into_data()?;
        let cid = self.0.next_cid.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.0.state.lock();
            if s.closed {
                return Err(bad_connection("Socket is closed"));
            }
            s.acks.insert(cid, tx);
        }
        let sent = self.send_with(32 + event.len(), data.as_ref(), |b, data| {
            enc::put_invoke(b, event, data, cid);
        });
        if let Err(e) = sent {
            self.0.state.lock().acks.remove(&cid);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(bad_connection("Socket closed before the response")),
            Err(_) => {
                self.0.state.lock().acks.remove(&cid);
                Err(ScError::new(
                    ErrorName::TimeoutError,
                    format!("Event response for '{event}' timed out"),
                ))
            }
        }
    }

    /// Signs `payload` (a JSON object; `iat` and, unless present, `exp` are added), makes it this
    /// socket's token and sends it to the client in `#setAuthToken`.
    pub fn set_auth_token(&self, payload: Value) -> Result<(), ScError> {
        let (signed, claims) = match self.0.host.sign(payload) {
            Ok(t) => t,
            Err(e) => {
                self.close_with(4002, "Server failed to sign auth token", false);
                return Err(e);
            }
        };
        self.set_verified_token(Arc::from(signed.as_str()), claims);
        let mut frame = Vec::with_capacity(signed.len() + 48);
        enc::put_set_auth_token(&mut frame, &signed);
        self.send_frame(frame)
    }

    /// Like [`set_auth_token`](Self::set_auth_token), but sends `#setAuthToken` as an invoke and
    /// waits until the client confirms it stored the token (socketcluster-server's
    /// `rejectOnFailedDelivery`); fails with the client's error or a `TimeoutError`.
    pub async fn set_auth_token_confirmed(&self, payload: Value) -> Result<(), ScError> {
        let (signed, claims) = match self.0.host.sign(payload) {
            Ok(t) => t,
            Err(e) => {
                self.close_with(4002, "Server failed to sign auth token", false);
                return Err(e);
            }
        };
        self.set_verified_token(Arc::from(signed.as_str()), claims);
        self.invoke(
            events::SET_AUTH_TOKEN,
            Json(serde_json::json!({ "token": signed })),
        )
        .await
        .map(|_| ())
    }

    pub(crate) fn set_verified_token(&self, signed: Arc<str>, claims: Value) {
        let exp = claims.get("exp").and_then(Value::as_u64);
        {
            let mut s = self.0.state.lock();
            s.auth_token = Some(Arc::new(claims));
            s.signed_token = Some(signed);
            self.0.exp.store(exp.unwrap_or(0), Ordering::Release);
        }
        self.emit(&ScEvent::Authenticate);
    }

    pub(crate) fn emit(&self, event: &ScEvent) {
        self.0.host.on_event(self, event);
    }

    /// Drops the auth token on the server side only (the client keeps its copy).
    pub(crate) fn deauthenticate_self(&self) -> bool {
        let had = {
            let mut s = self.0.state.lock();
            self.0.exp.store(0, Ordering::Release);
            s.signed_token = None;
            s.auth_token.take().is_some()
        };
        if had {
            self.emit(&ScEvent::Deauthenticate);
        }
        had
    }

    /// Drops the socket's auth token and tells the client (`#removeAuthToken`).
    pub fn deauthenticate(&self) -> Result<(), ScError> {
        self.deauthenticate_self();
        self.transmit(events::REMOVE_AUTH_TOKEN, ())
    }

    /// Unsubscribes the socket from `channel` and tells it with `#kickOut`.
    pub fn kick_out(&self, channel: &str, message: impl IntoData) -> Result<(), ScError> {
        let message = message.into_data()?;
        if !self.unsubscribe(channel) {
            return Ok(());
        }
        self.send_with(48 + channel.len(), message.as_ref(), |b, message| {
            enc::put_kick_out(b, channel, message);
        })
    }

    pub(crate) fn unsubscribe(&self, channel: &str) -> bool {
        let removed = {
            let mut s = self.0.state.lock();
            let before = s.channels.len();
            s.channels.retain(|c| &**c != channel);
            let removed = before != s.channels.len();
            if removed {
                s.channel_bytes = s.channel_bytes.saturating_sub(channel.len());
            }
            removed
        };
        if removed {
            self.0.host.unsubscribe(channel, self.key());
            self.emit(&ScEvent::Unsubscribe(channel.to_owned()));
        }
        removed
    }

    /// Closes the socket with `code` and `reason` once the frames queued before are written.
    pub fn disconnect(&self, code: u16, reason: &str) {
        self.close_with(code, reason, false);
    }

    pub(crate) fn close_with(&self, code: u16, reason: &str, drain: bool) {
        {
            let mut s = self.0.state.lock();
            if s.close.is_some() || s.closed {
                return;
            }
            s.close = Some((code, reason.to_owned(), drain));
        }
        self.0.control.notify_one();
    }
}

/// A socket event passed to [`ScServerBuilder::on_event`](crate::ScServerBuilder::on_event).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ScEvent {
    /// The socket subscribed to a channel.
    Subscribe(String),
    /// The socket left a channel (`#unsubscribe`, kick out, or the socket closed).
    Unsubscribe(String),
    /// The socket became authenticated (or got a new token).
    Authenticate,
    /// The socket lost its token.
    Deauthenticate,
    /// A token the socket sent was rejected (the error is the one the client gets).
    BadAuthToken(ScError),
}
