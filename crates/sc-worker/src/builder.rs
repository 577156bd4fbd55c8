//! The server builder: options, handlers, middleware and hooks, then the layer and the handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use sc_protocol::ScError;

use crate::auth::{Auth, AuthKey};
use crate::config::{Config, ConfigError};
use crate::data::{Data, IntoData};
use crate::exchange::{Broker, GapFn, LocalBroker, StoreBroker};
use crate::handle::ScHandle;
use crate::handler::{
    ConnectFn, DisconnectFn, EventFn, Procedure, ProcedureFn, ReceiverFn, Request, SyncProcedureFn,
    SyncRequest,
};
use crate::metrics::Counters;
use crate::middleware::{
    Blocked, HandshakeAction, HandshakeWsAction, InboundAction, InboundKind, InboundStack,
    Middlewares, OutboundAction, RawAction,
};
use crate::service::{NotFound, ScLayer, ScService};
use crate::socket::{SHUTDOWN, SHUTDOWN_REASON, ScEvent, ScSocket};
use crate::state::{Map, ServerInner};

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
            on_session_end: None,
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
    on_session_end: Option<Arc<ConnectFn>>,
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

    /// Publishes delivered per second (the whole server) from which sockets may hold publishes
    /// ([`publish_batch`](Self::publish_batch)), while the server is also out of CPU and behind;
    /// otherwise each is written at once; 0 holds at any rate, always (see
    /// [`Config::publish_batch_above`](crate::Config::publish_batch_above)). Defaults to 50,000.
    pub fn publish_batch_above(mut self, deliveries_per_second: u64) -> Self {
        self.cfg.publish_batch_above = deliveries_per_second;
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

    /// Called when the last socket of a session in this process closed, with that socket
    /// (`socket.session()` is the session). Per process: another process may still hold
    /// sockets of the session, and its data lives on in the store until its TTL
    /// ([`Config::session_timeout_s`]) runs out after the last socket anywhere left.
    pub fn on_session_end(mut self, f: impl Fn(&ScSocket) + Send + Sync + 'static) -> Self {
        self.on_session_end = Some(Arc::new(f));
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
    ///
    /// Whether or not this is set, the server itself tells the channel's subscribers here: every
    /// local socket subscribed to the channel gets the event `#gap` with the data
    /// `{"channel":"<name>"}`, queued after what it had received before the gap (a JS app
    /// reads it with `for await (let data of socket.receiver('#gap'))`). Session channels
    /// (`#sc-session/…`) are the server's own: their gaps are logged only.
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
        let history = !self.cfg.history.is_empty();
        if history && self.broker.is_some() {
            return Err(ConfigError(
                "history rules need the server's own exchange: a custom broker carries channels its own way"
                    .into(),
            ));
        }
        let store_handle = self.store.clone();
        // Channel histories live in the store; without one, in a store of this process.
        let history_store = match (&self.store, history) {
            (_, false) => None,
            (Some(store), true) => Some(store.clone()),
            (None, true) => {
                Some(Arc::new(sc_store::MemoryStore::new()) as Arc<dyn sc_store::Store>)
            }
        };
        if history && tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError(
                "a server with channel history must be built inside a tokio runtime (the history's age limit runs there)"
                    .into(),
            ));
        }
        let has_store = self.store.is_some() || self.broker.is_some();
        let counters = Arc::new(Counters::default());
        let trusted = crate::client_addr::TrustedProxies::parse(&self.cfg.trusted_proxies)
            .map_err(|e| ConfigError(e.to_string()))?;
        let broker: Box<dyn Broker> = match (self.broker, self.store) {
            (Some(broker), _) => broker,
            // History without a store: recorded in this process, fanned out as it is recorded.
            (None, None) if let Some(h) = &history_store => Box::new(LocalBroker::with_history(
                self.cfg.history.clone(),
                h.clone(),
            )),
            (None, Some(store)) => Box::new(
                StoreBroker::new(
                    store,
                    self.on_store_gap,
                    counters.clone(),
                    self.cfg.history.clone(),
                )
                .map_err(|_| {
                    ConfigError(
                        "a server with a store or channel history must be built inside a tokio runtime"
                            .into(),
                    )
                })?,
            ),
            (None, None) => Box::new(LocalBroker::default()),
        };
        let sessions = crate::sessions::Sessions::new(
            &key,
            &self.cfg.app_name,
            Duration::from_secs(self.cfg.session_timeout_s),
            store_handle.clone(),
            counters.clone(),
        );
        let addresses = crate::limits::AddressLimits::new(
            self.cfg.address_connection_limit,
            self.cfg.address_connect_rate,
            self.cfg.address_connect_burst,
        );
        Ok(Arc::new(ServerInner {
            cfg: self.cfg,
            auth,
            procedures: self.procedures,
            receivers: self.receivers,
            mw: self.mw,
            on_connection: self.on_connection,
            on_disconnection: self.on_disconnection,
            on_session_end: self.on_session_end,
            sessions,
            on_event: self.on_event,
            broker,
            store: store_handle,
            has_store,
            history_store,
            trusted,
            clients: RwLock::default(),
            sockets: RwLock::default(),
            connections: AtomicUsize::new(0),
            closed: AtomicU64::new(0),
            addresses,
            next_key: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            shutdown_close: Mutex::new((SHUTDOWN, Arc::from(SHUTDOWN_REASON))),
            shutdown_tx: watch::Sender::new(false),
            gone: tokio::sync::Notify::new(),
            counters,
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
