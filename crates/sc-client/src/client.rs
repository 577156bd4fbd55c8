//! The client handle and its shared state.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use sc_protocol::{Cid, CloseCode, RawValue, ScError, encode, events};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::channel::{
    Channel, ChannelEntry, ChannelEvent, ChannelState, SubscribeOptions, recover_data,
};
use crate::config::{ClientBuilder, Config};
use crate::error::Error;
use crate::message::{
    ConnectionEvent, Events, Message, Procedure, Receiver, Request, frame, to_raw,
};
use crate::token::jwt_payload;

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Not connected and not trying to: new, after [`Client::disconnect`], or after a close code
    /// that does not reconnect.
    Closed,
    /// Opening a connection, handshaking, or waiting to reconnect. Outgoing messages are buffered.
    Connecting,
    /// Handshake done.
    Open,
}

/// What the server said about an [`Client::authenticate`] call.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthStatus {
    /// Whether the socket is now authenticated.
    pub is_authenticated: bool,
    /// Why not, when it is not.
    pub auth_error: Option<ScError>,
}

/// A SocketCluster client. Cheap to clone; every clone drives the same connection.
///
/// The connection task runs in the background on the tokio runtime from
/// [`Client::connect`] until [`Client::disconnect`] or until every clone (and every [`Channel`])
/// is dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    _guard: Arc<DropGuard>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("Client")
            .field("uri", &self.inner.config.endpoint.uri())
            .field("state", &*st.status.borrow())
            .field("id", &st.socket_id)
            .finish()
    }
}

/// Stops the connection task when the last client handle goes away.
struct DropGuard(Arc<Inner>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.stop(CloseCode::NORMAL.0, "Client dropped");
    }
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) state: Mutex<State>,
    next_cid: AtomicU64,
    next_conn: AtomicU64,
}

/// The driver task of one `connect()`.
pub(crate) struct Run {
    pub(crate) id: u64,
    pub(crate) cancel: CancellationToken,
    /// The close code and reason to send when cancelled.
    pub(crate) close: Mutex<(u16, String)>,
}

pub(crate) enum Waiter {
    Call(oneshot::Sender<Result<Option<Box<RawValue>>, Error>>),
    Subscribe { channel: String, seq: u64 },
}

pub(crate) struct Pending {
    pub(crate) waiter: Waiter,
    /// The connection the request was written to; `None` while buffered.
    pub(crate) conn: Option<u64>,
}

pub(crate) struct Buffered {
    pub(crate) frame: String,
    pub(crate) cid: Option<Cid>,
}

pub(crate) struct State {
    pub(crate) status: watch::Sender<ConnectionState>,
    pub(crate) run: Option<Arc<Run>>,
    pub(crate) run_seq: u64,
    /// The connection being opened or open.
    pub(crate) conn: Option<u64>,
    pub(crate) socket_id: Option<String>,
    pub(crate) ping_timeout: Option<Duration>,
    pub(crate) signed_token: Option<String>,
    pub(crate) authenticated: bool,
    pub(crate) writer: Option<mpsc::UnboundedSender<String>>,
    pub(crate) buffer: VecDeque<Buffered>,
    pub(crate) pending: HashMap<Cid, Pending>,
    pub(crate) channels: HashMap<String, ChannelEntry>,
    pub(crate) channel_seq: u64,
    pub(crate) receivers: HashMap<String, Vec<mpsc::UnboundedSender<Message>>>,
    pub(crate) procedures: HashMap<String, mpsc::UnboundedSender<Request>>,
    pub(crate) listeners: Vec<mpsc::UnboundedSender<ConnectionEvent>>,
}

impl State {
    pub(crate) fn emit(&mut self, event: ConnectionEvent) {
        tracing::debug!(?event, "connection event");
        self.listeners.retain(|l| l.send(event.clone()).is_ok());
    }

    pub(crate) fn set_status(&self, status: ConnectionState) {
        self.status.send_replace(status);
    }

    fn status(&self) -> ConnectionState {
        *self.status.borrow()
    }

    /// Sends a frame now when open, buffers it while connecting, fails when closed.
    pub(crate) fn send(
        &mut self,
        frame: String,
        cid: Option<Cid>,
        cap: usize,
    ) -> Result<(), Error> {
        let mut frame = frame;
        if self.status() == ConnectionState::Open
            && let (Some(writer), Some(conn)) = (&self.writer, self.conn)
        {
            match writer.send(frame) {
                Ok(()) => {
                    if let Some(p) = cid.and_then(|cid| self.pending.get_mut(&cid)) {
                        p.conn = Some(conn);
                    }
                    return Ok(());
                }
                // The connection task is ending: buffer it for the next connection.
                Err(mpsc::error::SendError(back)) => frame = back,
            }
        }
        if self.run.is_none() {
            return Err(Error::Closed);
        }
        if self.buffer.len() >= cap {
            return Err(Error::BufferFull { capacity: cap });
        }
        self.buffer.push_back(Buffered { frame, cid });
        Ok(())
    }

    /// Writes `#subscribe` for `name` on the open connection, if it may be sent now.
    pub(crate) fn send_subscribe(&mut self, name: &str, next_cid: &AtomicU64) {
        let (Some(writer), Some(conn)) = (&self.writer, self.conn) else {
            return;
        };
        let Some(entry) = self.channels.get_mut(name) else {
            return;
        };
        if entry.options.wait_for_auth && !self.authenticated {
            return;
        }
        let cid = next_cid.fetch_add(1, Ordering::Relaxed);
        let mut data = Vec::new();
        data.extend_from_slice(b"{\"channel\":");
        encode::write_str(&mut data, name);
        if entry.options.wait_for_auth {
            data.extend_from_slice(b",\"waitForAuth\":true");
        }
        // A resubscribe asks for what was missed since the last position seen.
        let recover = entry
            .position
            .as_ref()
            .and_then(|p| Some((p, recover_data(entry.options.data.as_deref(), p)?)));
        let app_data = match &recover {
            Some((_, d)) => Some(&**d),
            None => entry.options.data.as_deref(),
        };
        if let Some(d) = app_data {
            data.extend_from_slice(b",\"data\":");
            data.extend_from_slice(d.get().as_bytes());
        }
        data.push(b'}');
        let data = frame(data);
        let mut buf = Vec::new();
        match serde_json::from_str::<&RawValue>(&data) {
            Ok(raw) => encode::write_invoke(&mut buf, events::SUBSCRIBE, Some(raw), cid),
            Err(e) => {
                tracing::warn!(channel = name, error = %e, "cannot encode #subscribe");
                return;
            }
        }
        let seq = entry.seq;
        entry.set_state(ChannelState::Pending);
        if writer.send(frame(buf)).is_ok() {
            entry.subscribing = true;
            entry.recovering = recover.map(|(p, _)| p.clone());
            tracing::debug!(channel = name, cid, recover = ?entry.recovering, "subscribing");
            self.pending.insert(
                cid,
                Pending {
                    waiter: Waiter::Subscribe {
                        channel: name.to_owned(),
                        seq,
                    },
                    conn: Some(conn),
                },
            );
        }
    }

    /// Sends `#subscribe` for every channel that may be sent, in subscription order: all of them
    /// (on a new connection), or only the pending ones with no request on the way (when the
    /// socket becomes authenticated).
    pub(crate) fn subscribe_all(&mut self, next_cid: &AtomicU64, only_pending: bool) {
        let mut names: Vec<(u64, String)> = self
            .channels
            .iter()
            .filter(|(_, e)| {
                !only_pending || (e.state() == ChannelState::Pending && !e.subscribing)
            })
            .map(|(n, e)| (e.seq, n.clone()))
            .collect();
        names.sort_unstable();
        for (_, name) in names {
            self.send_subscribe(&name, next_cid);
        }
    }

    /// Bookkeeping when connection `conn` is lost (or an attempt failed). Fails the requests
    /// written to it. When it is the current connection: back to connecting, subscribed channels
    /// become pending (with a gap notice unless they can recover what they miss), and `Closed` is
    /// emitted.
    pub(crate) fn connection_lost(&mut self, conn: u64, code: CloseCode, reason: &str) {
        let lost: Vec<Cid> = self
            .pending
            .iter()
            .filter(|(_, p)| p.conn == Some(conn))
            .map(|(cid, _)| *cid)
            .collect();
        for cid in lost {
            if let Some(Pending {
                waiter: Waiter::Call(tx),
                ..
            }) = self.pending.remove(&cid)
            {
                let _ = tx.send(Err(Error::BadConnection {
                    code,
                    reason: reason.to_owned(),
                }));
            }
        }
        if self.conn != Some(conn) {
            return;
        }
        self.conn = None;
        self.writer = None;
        if self.run.is_some() {
            self.set_status(ConnectionState::Connecting);
        } else {
            self.set_status(ConnectionState::Closed);
        }
        for entry in self.channels.values_mut() {
            entry.subscribing = false;
            if entry.state() == ChannelState::Subscribed {
                entry.set_state(ChannelState::Pending);
                // A channel with a history gets what it missed on the resubscribe, or a gap
                // notice from the server then.
                if !entry.can_recover() {
                    entry.deliver(&ChannelEvent::Gap);
                }
            }
        }
        self.emit(ConnectionEvent::Closed {
            code,
            reason: reason.to_owned(),
        });
    }

    /// Fails what waits in the buffer: the client stopped.
    pub(crate) fn fail_buffered(&mut self, code: CloseCode, reason: &str) {
        for b in std::mem::take(&mut self.buffer) {
            if let Some(Pending {
                waiter: Waiter::Call(tx),
                ..
            }) = b.cid.and_then(|cid| self.pending.remove(&cid))
            {
                let _ = tx.send(Err(Error::BadConnection {
                    code,
                    reason: reason.to_owned(),
                }));
            }
        }
    }

    pub(crate) fn set_auth(&mut self, token: Option<String>) {
        let was = self.authenticated;
        self.authenticated = token.is_some();
        self.signed_token = token;
        if was != self.authenticated {
            self.emit(ConnectionEvent::AuthStateChanged {
                is_authenticated: self.authenticated,
            });
        }
    }
}

impl Inner {
    pub(crate) fn next_cid(&self) -> Cid {
        self.next_cid.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn cids(&self) -> &AtomicU64 {
        &self.next_cid
    }

    pub(crate) fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Stops the driver (if any) with `code`, and settles the state as closed.
    pub(crate) fn stop(&self, code: u16, reason: &str) {
        let mut st = self.state.lock();
        if let Some(run) = st.run.take() {
            *run.close.lock() = (code, reason.to_owned());
            run.cancel.cancel();
        }
        if let Some(conn) = st.conn {
            st.connection_lost(conn, CloseCode(code), reason);
        }
        st.set_status(ConnectionState::Closed);
        st.fail_buffered(CloseCode(code), reason);
    }

    /// Saves or removes the stored token, logging a failure.
    pub(crate) fn store_token(&self, token: Option<&str>) {
        let store = &self.config.token_store;
        let result = match token {
            Some(t) => store.save(t),
            None => store.remove(),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "token store failed");
        }
    }
}

impl Client {
    /// Starts building a client for `url`: `ws://host[:port][/path][?query]` or `wss://...`
    /// (`http`/`https` are accepted as synonyms).
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    pub(crate) fn from_config(config: Config) -> Self {
        let inner = Arc::new(Inner {
            config,
            state: Mutex::new(State {
                status: watch::Sender::new(ConnectionState::Closed),
                run: None,
                run_seq: 0,
                conn: None,
                socket_id: None,
                ping_timeout: None,
                signed_token: None,
                authenticated: false,
                writer: None,
                buffer: VecDeque::new(),
                pending: HashMap::new(),
                channels: HashMap::new(),
                channel_seq: 0,
                receivers: HashMap::new(),
                procedures: HashMap::new(),
                listeners: Vec::new(),
            }),
            next_cid: AtomicU64::new(1),
            next_conn: AtomicU64::new(1),
        });
        Client {
            _guard: Arc::new(DropGuard(Arc::clone(&inner))),
            inner,
        }
    }

    /// Starts connecting in the background (and reconnecting, per the options). Does nothing when
    /// already connecting or open. Fails only outside a tokio runtime.
    ///
    /// Register [`receiver`](Client::receiver)s and [`procedure`](Client::procedure)s before, so
    /// that no event sent right after the handshake is missed.
    pub fn connect(&self) -> Result<(), Error> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("connect() needs a tokio runtime".to_owned()))?;
        let mut st = self.inner.state.lock();
        if st.run.is_some() {
            return Ok(());
        }
        st.run_seq += 1;
        let run = Arc::new(Run {
            id: st.run_seq,
            cancel: CancellationToken::new(),
            close: Mutex::new((CloseCode::NORMAL.0, String::new())),
        });
        st.run = Some(Arc::clone(&run));
        st.set_status(ConnectionState::Connecting);
        drop(st);
        handle.spawn(crate::driver::run(Arc::clone(&self.inner), run));
        Ok(())
    }

    /// Connects and waits until the first handshake is done (within the connect timeout plus the
    /// ack timeout). If the first attempt fails, the client is stopped and the error returned.
    pub(crate) async fn connect_and_wait(&self) -> Result<(), Error> {
        let mut events = self.events();
        self.connect()?;
        let limit = self.inner.config.connect_timeout + self.inner.config.ack_timeout;
        let outcome = tokio::time::timeout(limit, async {
            use futures_util::StreamExt as _;
            while let Some(event) = events.next().await {
                match event {
                    ConnectionEvent::Open { .. } => return Ok(()),
                    ConnectionEvent::Closed { code, reason } => {
                        return Err(Error::Connect(format!("{code}: {reason}")));
                    }
                    _ => {}
                }
            }
            Err(Error::Closed)
        })
        .await
        .unwrap_or_else(|_| Err(Error::Connect("timed out".to_owned())));
        if outcome.is_err() {
            self.inner.stop(CloseCode::NORMAL.0, "connect failed");
        }
        outcome
    }

    /// Waits until the connection is open. Fails with [`Error::Closed`] when the client is or
    /// becomes closed (not connecting) meanwhile.
    pub async fn wait_open(&self) -> Result<(), Error> {
        let mut rx = self.inner.state.lock().status.subscribe();
        loop {
            match *rx.borrow_and_update() {
                ConnectionState::Open => return Ok(()),
                ConnectionState::Closed => return Err(Error::Closed),
                ConnectionState::Connecting => {}
            }
            if rx.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    /// Closes the connection with code 1000 and stops reconnecting. Buffered messages fail;
    /// subscriptions are kept (pending) for a later [`Client::connect`], which gets a new socket id.
    pub fn disconnect(&self) {
        self.inner.stop(CloseCode::NORMAL.0, "");
    }

    /// Like [`Client::disconnect`], with a close code and reason of your choice.
    pub fn disconnect_with(&self, code: u16, reason: &str) {
        self.inner.stop(code, reason);
    }

    /// The connection state.
    pub fn state(&self) -> ConnectionState {
        *self.inner.state.lock().status.borrow()
    }

    /// The socket id of the last handshake; `None` before the first one.
    pub fn id(&self) -> Option<String> {
        self.inner.state.lock().socket_id.clone()
    }

    /// The `pingTimeout` of the last handshake.
    pub fn ping_timeout(&self) -> Option<Duration> {
        self.inner.state.lock().ping_timeout
    }

    /// Whether the socket is authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.inner.state.lock().authenticated
    }

    /// The signed auth token the socket is authenticated with.
    pub fn signed_auth_token(&self) -> Option<String> {
        self.inner.state.lock().signed_token.clone()
    }

    /// The payload of the auth token (decoded, not verified, as socketcluster-client does).
    pub fn auth_token(&self) -> Option<serde_json::Value> {
        self.signed_auth_token().as_deref().and_then(jwt_payload)
    }

    /// A stream of connection events, starting now.
    pub fn events(&self) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.state.lock().listeners.push(tx);
        Events { rx }
    }

    /// Sends an event with no reply (a transmit). While connecting it is buffered.
    pub fn transmit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<(), Error> {
        let raw = to_raw(data)?;
        self.transmit_raw(event, Some(&raw))
    }

    /// Sends an event with raw JSON data, or no data.
    pub fn transmit_raw(&self, event: &str, data: Option<&RawValue>) -> Result<(), Error> {
        let mut buf = Vec::new();
        encode::write_transmit(&mut buf, event, data);
        let cap = self.inner.config.buffer_capacity;
        self.inner.state.lock().send(frame(buf), None, cap)
    }

    /// Calls a procedure on the server and waits for the answer (default ack timeout).
    /// A reply with no data deserialises from `null`.
    pub async fn invoke<T: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<R, Error> {
        self.invoke_with_timeout(event, data, self.inner.config.ack_timeout)
            .await
    }

    /// [`Client::invoke`] with its own ack timeout.
    pub async fn invoke_with_timeout<T: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        event: &str,
        data: &T,
        timeout: Duration,
    ) -> Result<R, Error> {
        let raw = to_raw(data)?;
        let reply = self
            .invoke_raw_with_timeout(event, Some(&raw), timeout)
            .await?;
        let text = reply.as_deref().map_or("null", RawValue::get);
        Ok(serde_json::from_str(text)?)
    }

    /// Calls a procedure with raw JSON data (or none) and returns the raw reply (`None` when the
    /// reply has no data).
    pub async fn invoke_raw(
        &self,
        event: &str,
        data: Option<&RawValue>,
    ) -> Result<Option<Box<RawValue>>, Error> {
        self.invoke_raw_with_timeout(event, data, self.inner.config.ack_timeout)
            .await
    }

    /// [`Client::invoke_raw`] with its own ack timeout.
    pub async fn invoke_raw_with_timeout(
        &self,
        event: &str,
        data: Option<&RawValue>,
        timeout: Duration,
    ) -> Result<Option<Box<RawValue>>, Error> {
        let cid = self.inner.next_cid();
        let mut buf = Vec::new();
        encode::write_invoke(&mut buf, event, data, cid);
        let (tx, rx) = oneshot::channel();
        {
            let cap = self.inner.config.buffer_capacity;
            let mut st = self.inner.state.lock();
            st.pending.insert(
                cid,
                Pending {
                    waiter: Waiter::Call(tx),
                    conn: None,
                },
            );
            if let Err(e) = st.send(frame(buf), Some(cid), cap) {
                st.pending.remove(&cid);
                return Err(e);
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                let mut st = self.inner.state.lock();
                st.pending.remove(&cid);
                st.buffer.retain(|b| b.cid != Some(cid));
                Err(Error::Timeout {
                    event: event.to_owned(),
                    timeout,
                })
            }
        }
    }

    /// A stream of the transmits the server sends as `event`. Several receivers of one event each
    /// get every message.
    pub fn receiver(&self, event: &str) -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .state
            .lock()
            .receivers
            .entry(event.to_owned())
            .or_default()
            .push(tx);
        Receiver { rx }
    }

    /// A stream of the invokes the server makes as `event`, each to be answered. One procedure per
    /// name: a new one replaces the old. Invokes without a procedure get no answer.
    pub fn procedure(&self, event: &str) -> Procedure {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .state
            .lock()
            .procedures
            .insert(event.to_owned(), tx);
        Procedure { rx }
    }

    /// Subscribes to `channel` (or returns another handle to an existing subscription).
    pub fn subscribe(&self, channel: &str) -> Channel {
        self.subscribe_with(channel, SubscribeOptions::default())
    }

    /// Subscribes with options (`waitForAuth`, subscription data). When the channel is already
    /// subscribed, the options of the first subscription stay.
    pub fn subscribe_with(&self, channel: &str, options: SubscribeOptions) -> Channel {
        let mut st = self.inner.state.lock();
        if !st.channels.contains_key(channel) {
            st.channel_seq += 1;
            let seq = st.channel_seq;
            st.channels
                .insert(channel.to_owned(), ChannelEntry::new(seq, options));
            st.send_subscribe(channel, self.inner.cids());
        }
        let client = self.clone();
        match st.channels.get_mut(channel) {
            Some(entry) => entry.handle(channel, client),
            // Unreachable: inserted above.
            None => ChannelEntry::new(0, SubscribeOptions::default()).handle(channel, client),
        }
    }

    /// Unsubscribes from `channel`: tells the server (when connected) and ends every handle.
    pub fn unsubscribe(&self, channel: &str) {
        let mut st = self.inner.state.lock();
        let Some(entry) = st.channels.remove(channel) else {
            return;
        };
        entry.set_state(ChannelState::Unsubscribed);
        drop(entry);
        if st.status() == ConnectionState::Open {
            let mut buf = Vec::new();
            let mut name = Vec::new();
            encode::write_str(&mut name, channel);
            if let Ok(raw) = serde_json::from_slice::<&RawValue>(&name) {
                encode::write_transmit(&mut buf, events::UNSUBSCRIBE, Some(raw));
                let cap = self.inner.config.buffer_capacity;
                let _ = st.send(frame(buf), None, cap);
            }
        }
    }

    /// The channels subscribed to (confirmed or pending), in subscription order.
    pub fn subscriptions(&self) -> Vec<String> {
        let st = self.inner.state.lock();
        let mut v: Vec<_> = st
            .channels
            .iter()
            .map(|(n, e)| (e.seq, n.clone()))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, n)| n).collect()
    }

    /// The state of the subscription to `channel`, `None` when not subscribed.
    pub fn channel_state(&self, channel: &str) -> Option<ChannelState> {
        self.inner
            .state
            .lock()
            .channels
            .get(channel)
            .map(ChannelEntry::state)
    }

    /// Publishes `data` to `channel` without waiting for the server (`transmitPublish`).
    pub fn publish<T: Serialize + ?Sized>(&self, channel: &str, data: &T) -> Result<(), Error> {
        let raw = to_raw(data)?;
        self.publish_raw(channel, Some(&raw))
    }

    /// [`Client::publish`] with raw JSON data.
    pub fn publish_raw(&self, channel: &str, data: Option<&RawValue>) -> Result<(), Error> {
        let payload = publish_payload(channel, data);
        let raw: &RawValue = serde_json::from_str(&payload)?;
        self.transmit_raw(events::PUBLISH, Some(raw))
    }

    /// Publishes `data` to `channel` and waits until the server accepted it (`invokePublish`).
    pub async fn invoke_publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<(), Error> {
        let raw = to_raw(data)?;
        self.invoke_publish_raw(channel, Some(&raw)).await
    }

    /// [`Client::invoke_publish`] with raw JSON data.
    pub async fn invoke_publish_raw(
        &self,
        channel: &str,
        data: Option<&RawValue>,
    ) -> Result<(), Error> {
        let payload = publish_payload(channel, data);
        let raw: &RawValue = serde_json::from_str(&payload)?;
        self.invoke_raw(events::PUBLISH, Some(raw)).await.map(drop)
    }

    /// Authenticates the socket with a signed token (`#authenticate`). When the server accepts
    /// it, the token is stored and channels waiting for auth are subscribed.
    pub async fn authenticate(&self, signed_token: &str) -> Result<AuthStatus, Error> {
        let raw = to_raw(signed_token)?;
        let reply = match self.invoke_raw(events::AUTHENTICATE, Some(&raw)).await {
            Ok(reply) => reply,
            Err(Error::Remote(e)) => {
                if e.extra.get("isBadToken") == Some(&serde_json::Value::Bool(true)) {
                    self.inner.state.lock().set_auth(None);
                }
                return Err(Error::Remote(e));
            }
            Err(e) => return Err(e),
        };
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Reply {
            #[serde(default)]
            is_authenticated: bool,
            #[serde(default)]
            auth_error: Option<serde_json::Value>,
        }
        let reply: Reply = serde_json::from_str(reply.as_deref().map_or("{}", RawValue::get))?;
        let auth_error = reply
            .auth_error
            .filter(|e| !e.is_null())
            .map(|e| ScError::from_json(&e.to_string()));
        if reply.is_authenticated {
            self.inner.store_token(Some(signed_token));
            let mut st = self.inner.state.lock();
            st.set_auth(Some(signed_token.to_owned()));
            st.subscribe_all(self.inner.cids(), true);
        }
        Ok(AuthStatus {
            is_authenticated: reply.is_authenticated,
            auth_error,
        })
    }

    /// Drops the auth token (from the store too) and tells the server (`#removeAuthToken`).
    pub fn deauthenticate(&self) -> Result<(), Error> {
        self.inner
            .config
            .token_store
            .remove()
            .map_err(Error::TokenStore)?;
        let mut st = self.inner.state.lock();
        st.set_auth(None);
        if st.status() == ConnectionState::Open {
            let mut buf = Vec::new();
            encode::write_transmit(&mut buf, events::REMOVE_AUTH_TOKEN, None);
            let cap = self.inner.config.buffer_capacity;
            st.send(frame(buf), None, cap)?;
        }
        Ok(())
    }
}

fn publish_payload(channel: &str, data: Option<&RawValue>) -> String {
    let mut buf = Vec::new();
    buf.extend_from_slice(b"{\"channel\":");
    encode::write_str(&mut buf, channel);
    if let Some(d) = data {
        buf.extend_from_slice(b",\"data\":");
        buf.extend_from_slice(d.get().as_bytes());
    }
    buf.push(b'}');
    frame(buf)
}
