//! The server builder, the shared server state and the server handle.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;

use sc_protocol::{ErrorName, ScError};

use crate::auth::{Auth, AuthKey};
use crate::config::{Config, ConfigError};
use crate::data::{Data, IntoData};
use crate::exchange::{Broker, GapFn, LocalBroker, Published, StoreBroker, Sub, Subscriber};
use crate::middleware::Blocked;
use crate::middleware::{
    BoxFut, HandshakeAction, HandshakeWsAction, InboundAction, InboundKind, InboundStack,
    Middlewares, OutboundAction, RawAction,
};
use crate::request::HandshakeRequest;
use crate::service::{NotFound, ScLayer, ScService};
use crate::socket::{SHUTDOWN, ScSocket};
use crate::transport::Transport;

/// An invoke from a client, handed to the procedure registered for its event.
#[derive(Debug, Clone)]
pub struct Request {
    /// The socket that invoked.
    pub socket: ScSocket,
    /// The procedure (event) name.
    pub procedure: Arc<str>,
    /// The invoke's data, `None` when the packet had no `data`.
    pub data: Option<Data>,
}

pub(crate) type ProcedureFn =
    dyn Fn(Request) -> BoxFut<Result<Option<Data>, ScError>> + Send + Sync;
pub(crate) type SyncProcedureFn =
    dyn for<'a> Fn(SyncRequest<'a>) -> Result<Option<Data>, ScError> + Send + Sync;

/// An invoke handed to a [`procedure_sync`](ScServerBuilder::procedure_sync) handler: like
/// [`Request`], with the socket and the procedure name borrowed from the socket's task for the
/// call (no reference counts touched); clone the socket to keep it.
#[derive(Debug)]
pub struct SyncRequest<'a> {
    /// The socket that invoked.
    pub socket: &'a ScSocket,
    /// The procedure (event) name.
    pub procedure: &'a str,
    /// The invoke's data, `None` when the packet had no `data`.
    pub data: Option<Data>,
}

/// A registered procedure: one that answers at once, or one that returns a future.
#[derive(Clone)]
pub(crate) enum Procedure {
    Sync(Arc<SyncProcedureFn>),
    Async(Arc<ProcedureFn>),
}
pub(crate) type ReceiverFn = dyn Fn(ScSocket, Option<Data>) -> BoxFut<()> + Send + Sync;
pub(crate) type ConnectFn = dyn Fn(&ScSocket) + Send + Sync;
pub(crate) type DisconnectFn = dyn Fn(&ScSocket, u16, &str) + Send + Sync;
pub(crate) type EventFn = dyn Fn(&ScSocket, &ScEvent) + Send + Sync;
type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

pub(crate) struct ServerInner {
    pub(crate) cfg: Config,
    pub(crate) auth: Auth,
    pub(crate) procedures: Map<(Arc<str>, Procedure)>,
    pub(crate) receivers: Map<Arc<ReceiverFn>>,
    pub(crate) mw: Middlewares,
    pub(crate) on_connection: Option<Arc<ConnectFn>>,
    pub(crate) on_disconnection: Option<Arc<DisconnectFn>>,
    pub(crate) on_event: Option<Arc<EventFn>>,
    pub(crate) broker: Box<dyn Broker>,
    pub(crate) store: Option<Arc<dyn sc_store::Store>>,
    pub(crate) has_store: bool,
    /// The parsed [`Config::trusted_proxies`].
    pub(crate) trusted: crate::client_addr::TrustedProxies,
    /// Open sockets by id.
    pub(crate) clients: RwLock<HashMap<Box<str>, ScSocket, foldhash::fast::RandomState>>,
    /// Every socket, handshaking or open, by key.
    pub(crate) sockets: RwLock<HashMap<u64, ScSocket, foldhash::fast::RandomState>>,
    pub(crate) connections: AtomicUsize,
    pub(crate) next_key: AtomicU64,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) shutdown_tx: watch::Sender<bool>,
    pub(crate) gone: tokio::sync::Notify,
}

impl std::fmt::Debug for ServerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScServer").field("cfg", &self.cfg).finish()
    }
}

/// The SocketCluster server. Start with [`ScServer::builder`].
#[derive(Debug)]
pub struct ScServer(());

impl ScServer {
    /// A builder with the default [`Config`] and a random auth key.
    pub fn builder() -> ScServerBuilder {
        ScServerBuilder {
            cfg: Config::default(),
            auth_key: None,
            procedures: Map::default(),
            receivers: Map::default(),
            mw: Middlewares::default(),
            on_connection: None,
            on_disconnection: None,
            on_event: None,
            store: None,
            broker: None,
            on_store_gap: None,
        }
    }
}

/// Builds the server: options, handlers, middleware and hooks; then
/// [`build_layer`](ScServerBuilder::build_layer) or [`build_service`](ScServerBuilder::build_service).
pub struct ScServerBuilder {
    cfg: Config,
    auth_key: Option<AuthKey>,
    procedures: Map<(Arc<str>, Procedure)>,
    receivers: Map<Arc<ReceiverFn>>,
    mw: Middlewares,
    on_connection: Option<Arc<ConnectFn>>,
    on_disconnection: Option<Arc<DisconnectFn>>,
    on_event: Option<Arc<EventFn>>,
    store: Option<Arc<dyn sc_store::Store>>,
    broker: Option<Box<dyn Broker>>,
    on_store_gap: Option<Arc<GapFn>>,
}

impl std::fmt::Debug for ScServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScServerBuilder")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// The error of [`ScServerBuilder::build_layer`]: a bad config value or auth key.
pub type BuildError = ConfigError;

impl ScServerBuilder {
    /// Replaces every option with `config`.
    pub fn config(mut self, config: Config) -> Self {
        self.cfg = config;
        self
    }

    /// The endpoint path. Defaults to `/socketcluster/`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.cfg.path = path.into();
        self
    }

    /// The largest inbound message in bytes (above it: close 1009). Defaults to 2 MiB.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.cfg.max_payload = bytes;
        self
    }

    /// Frames queued per socket before it is closed as a slow consumer (4100). Defaults to 4096.
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.cfg.outbound_queue = frames;
        self
    }

    /// How long a socket that receives publishes in quick succession holds them to write them
    /// together (see [`Config::publish_batch_ms`](crate::Config::publish_batch_ms)); zero writes
    /// each at once. Defaults to 5 ms.
    pub fn publish_batch(mut self, interval: Duration) -> Self {
        self.cfg.publish_batch_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Time a socket has to send `#handshake` (then 4005). Defaults to 10 seconds.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.cfg.handshake_timeout_ms = t.as_millis().max(1) as u64;
        self
    }

    /// Interval of the server's pings. Defaults to 8 seconds.
    pub fn ping_interval(mut self, t: Duration) -> Self {
        self.cfg.ping_interval_ms = t.as_millis().max(1) as u64;
        self
    }

    /// Client silence after which the socket is closed with 4001; sent as `pingTimeout` in the
    /// handshake reply. Defaults to 30 seconds.
    pub fn ping_timeout(mut self, t: Duration) -> Self {
        self.cfg.ping_timeout_ms = t.as_millis().max(1) as u64;
        self
    }

    /// How long server-to-client invokes wait for a response. Defaults to 10 seconds.
    pub fn ack_timeout(mut self, t: Duration) -> Self {
        self.cfg.ack_timeout_ms = t.as_millis().max(1) as u64;
        self
    }

    /// The most sockets at once (then HTTP 503). Defaults to 100000.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.cfg.max_connections = n;
        self
    }

    /// Whether clients may publish. Defaults to true.
    pub fn allow_client_publish(mut self, allow: bool) -> Self {
        self.cfg.allow_client_publish = allow;
        self
    }

    /// Channels per socket. Defaults to 1000.
    pub fn socket_channel_limit(mut self, n: usize) -> Self {
        self.cfg.socket_channel_limit = n;
        self
    }

    /// Allowed origins (`host:port`, `host:*`, `*:port`, `*:*`). Defaults to `*:*`.
    pub fn origins<I: IntoIterator<Item = S>, S: Into<String>>(mut self, origins: I) -> Self {
        self.cfg.origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// Protocol version 1 (`#1`/`#2` heartbeats) or 2 (`''`). Defaults to 2.
    pub fn protocol_version(mut self, v: u8) -> Self {
        self.cfg.protocol_version = v;
        self
    }

    /// Lifetime of tokens set without `exp`. Defaults to 24 hours.
    pub fn auth_default_expiry(mut self, t: Duration) -> Self {
        self.cfg.auth_default_expiry_s = t.as_secs().max(1);
        self
    }

    /// The HS256 secret that signs and verifies tokens. Defaults to a random key per process.
    pub fn auth_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.auth_key = Some(AuthKey::Secret(key.as_ref().to_vec()));
        self
    }

    /// Any [`AuthKey`], e.g. an RSA or EC key pair.
    pub fn auth_keys(mut self, key: AuthKey) -> Self {
        self.auth_key = Some(key);
        self
    }

    /// Registers the procedure answering invokes of `name`. An invoke with no procedure gets
    /// no reply (the client times out), as in socketcluster-server.
    ///
    /// A handler that completes without waiting runs inline on the socket's task (no spawn);
    /// one that waits is spawned, so it never holds up the socket's other messages.
    pub fn procedure<F, Fut, R>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ScError>> + Send + 'static,
        R: IntoData + 'static,
    {
        let f: Arc<ProcedureFn> = Arc::new(move |req| {
            let fut = handler(req);
            Box::pin(async move { fut.await.and_then(IntoData::into_data) })
        });
        self.procedures
            .insert(name.into(), (Arc::from(name), Procedure::Async(f)));
        self
    }

    /// Registers a procedure that answers without waiting: `handler` is called on the socket's
    /// task and its result is the reply, with no future to allocate or poll (the cheapest kind
    /// of handler, for lookups, echoes, counters). It gets a [`SyncRequest`], which borrows
    /// the socket for the call. Use [`procedure`](Self::procedure) for anything that waits.
    pub fn procedure_sync<F, R>(mut self, name: &str, handler: F) -> Self
    where
        F: for<'a> Fn(SyncRequest<'a>) -> Result<R, ScError> + Send + Sync + 'static,
        R: IntoData + 'static,
    {
        let f: Arc<SyncProcedureFn> =
            Arc::new(move |req| handler(req).and_then(IntoData::into_data));
        self.procedures
            .insert(name.into(), (Arc::from(name), Procedure::Sync(f)));
        self
    }

    /// Registers the receiver of transmits of `name`. Receivers of one socket start in arrival
    /// order; one that waits holds back that socket's later receivers (not its invokes) until it
    /// finishes.
    pub fn receiver<F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(ScSocket, Option<Data>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let f: Arc<ReceiverFn> = Arc::new(move |s, d| Box::pin(handler(s, d)));
        self.receivers.insert(name.into(), f);
        self
    }

    /// Called once a socket completed its handshake (after the reply was queued): a good place
    /// to insert per-socket state and send a greeting. Keep it quick; spawn for slow work.
    pub fn on_connection(mut self, f: impl Fn(&ScSocket) + Send + Sync + 'static) -> Self {
        self.on_connection = Some(Arc::new(f));
        self
    }

    /// Called when an open socket closed, with the close code and reason.
    pub fn on_disconnection(
        mut self,
        f: impl Fn(&ScSocket, u16, &str) + Send + Sync + 'static,
    ) -> Self {
        self.on_disconnection = Some(Arc::new(f));
        self
    }

    /// Called on a socket's subscription, unsubscription, authentication, deauthentication and
    /// rejected tokens (socketcluster-server's `subscription`, `unsubscription`,
    /// `authentication`, `deauthentication` and `badSocketAuthToken` events). Keep it quick.
    pub fn on_event(mut self, f: impl Fn(&ScSocket, &ScEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(f));
        self
    }

    /// Shares channels with every other server using `store` (a [`sc_store::RespStore`] on
    /// the store cluster or Redis): the first local subscriber of a channel subscribes it on
    /// the store and the last one leaving unsubscribes; every publish (from clients or
    /// [`ScHandle::publish`]) goes to the store and reaches the local subscribers when it comes
    /// back, so all servers see a channel in the store's order and a publisher gets its own
    /// publish once. On the store a publish is the raw JSON text of its data (empty for none).
    ///
    /// Without a store (the default) the exchange is in-process only. Building with a store
    /// needs a tokio runtime (the exchange spawns its tasks on it).
    pub fn store(mut self, store: Arc<dyn sc_store::Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Carries channels with `broker` instead of the in-process exchange (or the store's, when
    /// a [`store`](Self::store) is given too: the store then stays reachable from handlers
    /// through [`ScHandle::store`], but channels go through `broker`). See [`Broker`].
    pub fn broker(mut self, broker: impl Broker) -> Self {
        self.broker = Some(Box::new(broker));
        self
    }

    /// Called with a channel name when messages of it may have been lost between the store and
    /// this server (a [`sc_store::StoreEvent::Gap`]: a store connection was lost and restored,
    /// or this server fell behind). A warning is logged in any case. Keep it quick.
    pub fn on_store_gap(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_store_gap = Some(Arc::new(f));
        self
    }

    /// HTTP handshake middleware: sees the request that opens a socket (a WebSocket upgrade,
    /// or the engine.io request that opens a session) as a [`HandshakeWsAction`]; it may await
    /// (look a session up in a store, say). `Err` answers HTTP 401 with the error's message;
    /// values inserted into the action's `extensions` are the socket's (the transform). Each
    /// call adds one middleware; they run in registration order.
    pub fn handshake_ws<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(HandshakeWsAction) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HandshakeWsAction, Blocked>> + Send + 'static,
    {
        self.mw.handshake_ws.push(f);
        self
    }

    /// SocketCluster handshake middleware (after token verification). Each call adds one
    /// middleware; they run in registration order.
    pub fn handshake_sc<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(HandshakeAction) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HandshakeAction, Blocked>> + Send + 'static,
    {
        self.mw.handshake_sc.push(f);
        self
    }

    /// Inbound raw middleware: every message but pongs, before decoding. Each call adds one
    /// middleware; they run in registration order.
    pub fn inbound_raw<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(RawAction) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<RawAction, Blocked>> + Send + 'static,
    {
        self.mw.inbound_raw.push(f);
        self
    }

    /// Inbound middleware for every kind: transmit, invoke, subscribe, publishIn, authenticate.
    /// Each call (of this or [`inbound_for`](Self::inbound_for)) adds one middleware; an action
    /// goes through those that see its kind, in registration order.
    pub fn inbound<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(InboundAction) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<InboundAction, Blocked>> + Send + 'static,
    {
        self.mw.inbound.push(InboundStack::ALL, f);
        self
    }

    /// Inbound middleware that only sees the listed kinds; actions of the other kinds pass it by,
    /// and a kind that no inbound middleware sees skips the stage at no cost (no action is
    /// built). Useful to guard subscriptions without slowing every invoke.
    pub fn inbound_for<F, Fut>(mut self, kinds: &[InboundKind], f: F) -> Self
    where
        F: Fn(InboundAction) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<InboundAction, Blocked>> + Send + 'static,
    {
        self.mw.inbound.push(InboundStack::mask(kinds), f);
        self
    }

    /// Outbound middleware: every publish, per subscriber. Each call adds one middleware; they
    /// run in registration order.
    pub fn outbound<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(OutboundAction) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<OutboundAction, Blocked>> + Send + 'static,
    {
        self.mw.outbound.push(f);
        self
    }

    fn build_inner(self) -> Result<Arc<ServerInner>, BuildError> {
        self.cfg.validate()?;
        let key = self.auth_key.unwrap_or_else(AuthKey::random);
        let auth = Auth::new(&key, self.cfg.auth_default_expiry_s).map_err(ConfigError)?;
        let has_store = self.store.is_some() || self.broker.is_some();
        let store_handle = self.store.clone();
        let trusted = crate::client_addr::TrustedProxies::parse(&self.cfg.trusted_proxies)
            .map_err(|e| ConfigError(e.to_string()))?;
        let broker: Box<dyn Broker> = match (self.broker, self.store) {
            (Some(broker), _) => broker,
            (None, Some(store)) => {
                Box::new(StoreBroker::new(store, self.on_store_gap).map_err(|_| {
                    ConfigError("a server with a store must be built inside a tokio runtime".into())
                })?)
            }
            (None, None) => Box::new(LocalBroker::default()),
        };
        Ok(Arc::new(ServerInner {
            cfg: self.cfg,
            auth,
            procedures: self.procedures,
            receivers: self.receivers,
            mw: self.mw,
            on_connection: self.on_connection,
            on_disconnection: self.on_disconnection,
            on_event: self.on_event,
            broker,
            store: store_handle,
            has_store,
            trusted,
            clients: RwLock::default(),
            sockets: RwLock::default(),
            connections: AtomicUsize::new(0),
            next_key: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            shutdown_tx: watch::Sender::new(false),
            gone: tokio::sync::Notify::new(),
        }))
    }

    /// The tower layer (wrapping the app's service) and the server handle.
    ///
    /// Fails with the first problem of the config ([`Config::validate`]) or the auth key, or
    /// when a server with a [`store`](Self::store) is built outside a tokio runtime: nothing is
    /// ever replaced by a default.
    pub fn build_layer(self) -> Result<(ScLayer, ScHandle), BuildError> {
        let inner = self.build_inner()?;
        Ok((ScLayer::new(inner.clone()), ScHandle(inner)))
    }

    /// A standalone service (404 for every other request) and the server handle; fails as
    /// [`build_layer`](Self::build_layer) does.
    pub fn build_service(self) -> Result<(ScService<NotFound>, ScHandle), BuildError> {
        let (layer, handle) = self.build_layer()?;
        Ok((layer.service(NotFound), handle))
    }
}

/// The handle to a running server: publish, inspect sockets, shut down. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ScHandle(pub(crate) Arc<ServerInner>);

impl ScHandle {
    /// Publishes `data` to `channel` through the exchange: every subscriber gets the same
    /// `#publish` frame, encoded once.
    pub fn publish(&self, channel: &str, data: impl IntoData) -> Result<(), ScError> {
        let data = data.into_data()?;
        self.0
            .broker
            .publish(Arc::new(Published::new(channel, data)));
        Ok(())
    }

    /// Subscribes the server itself to `channel`: every publish to it (from clients or from
    /// [`publish`](Self::publish)) arrives on the returned [`Subscription`], in order, until it is
    /// dropped. A subscription that falls more than `outbound_queue` messages behind loses the
    /// newest ones.
    pub fn subscribe(&self, channel: &str) -> Subscription {
        let key = self.0.next_key.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::channel(self.0.cfg.outbound_queue);
        self.0
            .broker
            .subscribe(channel, Subscriber(Sub::Local { key, tx }));
        Subscription {
            server: self.0.clone(),
            channel: channel.into(),
            key,
            rx,
        }
    }

    /// Resolves once publishes made on other servers reach this server's subscribers of
    /// `channel`, that is once the store has confirmed the channel's subscription. Resolves at
    /// once without a store or when the channel has no local subscriber.
    pub fn subscription_ready(&self, channel: &str) -> impl Future<Output = ()> + Send + 'static {
        self.0.broker.ready(channel)
    }

    /// Runs `transport` as a socket of this server, opened by `request`, with the same handlers,
    /// middleware (but `handshake_ws`, which is HTTP's), auth, exchange and limits as a
    /// WebSocket or engine.io client: the way in for a transport of your own (see
    /// [`Transport`]). The socket starts with `extensions` ([`ScSocket::get`]) and runs on a task
    /// of its own until it closes.
    ///
    /// Fails when the server is shutting down or holds
    /// [`max_connections`](Config::max_connections) sockets; the transport is dropped then.
    pub fn accept<T: Transport>(
        &self,
        transport: T,
        request: HandshakeRequest,
        extensions: http::Extensions,
    ) -> Result<(), ScError> {
        let server = &self.0;
        if server.shutting_down.load(Ordering::Acquire) {
            return Err(ScError::new(
                ErrorName::BadConnectionError,
                "Server is shutting down",
            ));
        }
        let max = server.cfg.max_connections;
        if server
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(ScError::new(
                ErrorName::BadConnectionError,
                "Too many connections",
            ));
        }
        tokio::spawn(crate::conn::run(
            transport,
            server.clone(),
            request,
            extensions,
        ));
        Ok(())
    }

    /// The store given to [`ScServerBuilder::store`], for handlers and middleware to keep data in
    /// (sessions, rate limits, lookups); `None` without one.
    pub fn store(&self) -> Option<&Arc<dyn sc_store::Store>> {
        self.0.store.as_ref()
    }

    /// Whether the exchange shares channels through a store (see [`ScServerBuilder::store`]),
    /// or a [`Broker`] of the app's ([`ScServerBuilder::broker`]).
    pub fn has_store(&self) -> bool {
        self.0.has_store
    }

    /// Open sockets (handshake done).
    pub fn clients_count(&self) -> usize {
        self.0.clients.read().len()
    }

    /// Sockets still in their handshake.
    pub fn pending_clients_count(&self) -> usize {
        self.0
            .sockets
            .read()
            .len()
            .saturating_sub(self.clients_count())
    }

    /// The open socket with id `id`.
    pub fn socket(&self, id: &str) -> Option<ScSocket> {
        self.0.clients.read().get(id).cloned()
    }

    /// Every open socket.
    pub fn sockets(&self) -> Vec<ScSocket> {
        self.0.clients.read().values().cloned().collect()
    }

    /// Local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.0.broker.subscriber_count(channel)
    }

    /// The options the server runs with.
    pub fn config(&self) -> &Config {
        &self.0.cfg
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.0.shutting_down.load(Ordering::Acquire)
    }

    /// A future that resolves once shutdown begins (for an accept loop's graceful stop).
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.shutdown_tx.subscribe();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }

    /// Graceful shutdown: new upgrades get HTTP 503; every socket finishes the invokes it is
    /// handling and writes what is queued, then is closed with 1001 ([`SHUTDOWN`]), which makes
    /// clients reconnect. Returns when every socket is gone or after `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        self.0.shutting_down.store(true, Ordering::Release);
        self.0.shutdown_tx.send_replace(true);
        let sockets: Vec<ScSocket> = self.0.sockets.read().values().cloned().collect();
        for s in &sockets {
            s.close_with(SHUTDOWN, "Server is shutting down", true);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let all_gone = async {
            loop {
                let notified = self.0.gone.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.0.sockets.read().is_empty() {
                    break;
                }
                notified.await;
            }
        };
        if tokio::time::timeout_at(deadline, all_gone).await.is_err() {
            tracing::warn!("shutdown timed out with sockets still open");
        }
    }
}

/// A server-side channel subscription made by [`ScHandle::subscribe`]; unsubscribes when dropped.
pub struct Subscription {
    server: Arc<ServerInner>,
    channel: Box<str>,
    key: u64,
    rx: tokio::sync::mpsc::Receiver<Arc<Published>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish()
    }
}

impl Subscription {
    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next message's data (`None` inside when the publish had no data); `None` when the
    /// server is gone.
    pub async fn recv(&mut self) -> Option<Option<Data>> {
        self.rx.recv().await.map(|p| p.data.clone())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.server.broker.unsubscribe(&self.channel, self.key);
    }
}

/// A socket event passed to [`ScServerBuilder::on_event`].
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
