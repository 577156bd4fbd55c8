//! The shared state of one server: its config, handlers, middleware, exchange and sockets. The
//! builder makes it; the service, the socket tasks and the handle share it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio::sync::watch;

use sc_protocol::ScError;

use crate::auth::Auth;
use crate::client_addr::TrustedProxies;
use crate::config::Config;
use crate::exchange::Broker;
use crate::handler::{ConnectFn, DisconnectFn, EventFn, Procedure, ReceiverFn};
use crate::limits::{AddrSlot, AddressLimits, Refusal};
use crate::metrics::Counters;
use crate::middleware::Middlewares;
use crate::socket::{Host, ScEvent, ScSocket};

pub(crate) type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

pub(crate) struct ServerInner {
    pub(crate) cfg: Config,
    pub(crate) auth: Auth,
    pub(crate) procedures: Map<(Arc<str>, Procedure)>,
    pub(crate) receivers: Map<Arc<ReceiverFn>>,
    pub(crate) mw: Middlewares,
    pub(crate) on_connection: Option<Arc<ConnectFn>>,
    pub(crate) on_disconnection: Option<Arc<DisconnectFn>>,
    /// Called when the last socket of a session in this process closed.
    pub(crate) on_session_end: Option<Arc<ConnectFn>>,
    /// The sessions with a socket here, their cookie and their data's store.
    pub(crate) sessions: crate::sessions::Sessions,
    pub(crate) on_event: Option<Arc<EventFn>>,
    pub(crate) broker: Box<dyn Broker>,
    pub(crate) store: Option<Arc<dyn sc_store::Store>>,
    pub(crate) has_store: bool,
    /// Where channel histories are kept ([`Config::history`] names the channels): the store,
    /// or an in-process one when the server has none.
    pub(crate) history_store: Option<Arc<dyn sc_store::Store>>,
    /// The parsed [`Config::trusted_proxies`].
    pub(crate) trusted: TrustedProxies,
    /// Open sockets by id.
    pub(crate) clients: RwLock<HashMap<Box<str>, ScSocket, foldhash::fast::RandomState>>,
    /// Every socket, handshaking or open, by key.
    pub(crate) sockets: RwLock<HashMap<u64, ScSocket, foldhash::fast::RandomState>>,
    pub(crate) connections: AtomicUsize,
    /// Sockets closed so far.
    pub(crate) closed: AtomicU64,
    /// Sockets per client address and new ones per second ([`Config::address_connection_limit`]).
    pub(crate) addresses: Arc<AddressLimits>,
    pub(crate) next_key: AtomicU64,
    pub(crate) shutting_down: AtomicBool,
    /// The close code and reason of the shutdown under way ([`ScHandle::shutdown_with`](crate::ScHandle::shutdown_with)):
    /// a socket that opens meanwhile is closed with them too.
    pub(crate) shutdown_close: Mutex<(u16, Arc<str>)>,
    pub(crate) shutdown_tx: watch::Sender<bool>,
    pub(crate) gone: tokio::sync::Notify,
    /// What [`ScHandle::metrics`](crate::ScHandle::metrics) reads; shared with the store
    /// broker and the sessions, which count store operations.
    pub(crate) counters: Arc<Counters>,
}

impl ServerInner {
    /// The history limits of `channel`, when a rule names it.
    pub(crate) fn history_limits(&self, channel: &str) -> Option<sc_store::HistoryLimits> {
        if self.cfg.history.is_empty() {
            return None;
        }
        crate::published::history_limits(&self.cfg.history, channel)
    }
}

impl std::fmt::Debug for ServerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScServer").field("cfg", &self.cfg).finish()
    }
}

impl ServerInner {
    /// Counts one more connection from `client` (its address, if known), unless the server is
    /// shutting down, holds `max_connections` already, or the address is over its limits; the
    /// error says which. The socket uncounts the connection when it closes, and gives the
    /// address's place back by dropping the slot.
    pub(crate) fn count_connection(&self, client: Option<IpAddr>) -> Result<AddrSlot, Refusal> {
        // Not `check_connection`: `admit` checks the address itself, with one lock.
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Refusal::ShuttingDown);
        }
        let max = self.cfg.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| Refusal::Full)?;
        self.addresses.admit(client).inspect_err(|_| {
            self.connections.fetch_sub(1, Ordering::AcqRel);
        })
    }

    /// Whether a connection from `client` would be counted now (nothing is counted).
    pub(crate) fn check_connection(&self, client: Option<IpAddr>) -> Result<(), Refusal> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Refusal::ShuttingDown);
        }
        if self.connections.load(Ordering::Acquire) >= self.cfg.max_connections {
            return Err(Refusal::Full);
        }
        self.addresses.check(client)
    }
}

impl Host for ServerInner {
    fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.ack_timeout_ms)
    }

    fn sign(&self, payload: Value) -> Result<(String, Value), ScError> {
        self.auth.sign(payload)
    }

    fn unsubscribe(&self, channel: &str, key: u64) {
        self.broker.unsubscribe(channel, key);
    }

    fn on_event(&self, socket: &ScSocket, event: &ScEvent) {
        if let Some(hook) = &self.on_event {
            hook(socket, event);
        }
    }

    fn queue_drop(&self) {
        self.counters.queue_drop();
    }
}
