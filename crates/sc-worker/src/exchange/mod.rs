//! The exchange: channel pub/sub behind a small trait ([`Broker`]), with the in-process broker
//! ([`LocalBroker`]) as the default. Implement [`Broker`] to carry channels another way (see
//! [`ScServerBuilder::broker`](crate::ScServerBuilder::broker)); wrapping a [`LocalBroker`] for
//! the delivery to this process's subscribers is the usual start.
//!
//! A publish is encoded once into a `#publish` frame ([`Published`]) and the same reference-counted
//! bytes are queued on every local subscriber. Each channel's subscriber list has its own lock,
//! held while a publish fans out, so every subscriber sees the publishes of a channel in one
//! order. A subscriber whose queue is full is closed as a slow consumer, never waited for.
//!
//! With a store ([`StoreBroker`]), channels are shared by every process using that store: the
//! first local subscriber of a channel subscribes it on the store and the last one leaving
//! unsubscribes; a publish goes only to the store, and what arrives from the store is delivered
//! to the local subscribers by the same fan-out as [`LocalBroker`]'s. When messages of a
//! channel may have been lost on the way from the store (a [`sc_store::StoreEvent::Gap`]), each
//! local socket subscribed to it gets the event `#gap` with `{"channel":C}`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use sc_store::{HistoryLimits, Store};

use crate::config::HistoryRule;
use crate::published::{Published, history_limits};
use crate::socket::{Out, ScSocket};

mod recover;
mod store;

pub(crate) use recover::Recovery;
pub(crate) use store::{GapFn, StoreBroker};

/// Channel pub/sub: where publishes go and how they reach this process's subscribers. The
/// in-process [`LocalBroker`] is the default; a store-backed exchange (channels shared by
/// several processes, [`ScServerBuilder::store`](crate::ScServerBuilder::store)) implements the
/// same trait, and so can yours ([`ScServerBuilder::broker`](crate::ScServerBuilder::broker)).
///
/// The server calls `subscribe` when a socket (or [`ScHandle::subscribe`](crate::ScHandle::subscribe))
/// joins a channel, `unsubscribe` when it leaves, and `publish` for every publish, from clients
/// and from [`ScHandle::publish`](crate::ScHandle::publish). A broker delivers a publish to a
/// subscriber with [`Subscriber::deliver`], which never blocks. Calls come from many tasks at
/// once; keep them quick (no waiting: spawn for I/O).
pub trait Broker: Send + Sync + 'static {
    /// Adds a local subscriber; `false` if it already was one.
    fn subscribe(&self, channel: &str, subscriber: Subscriber) -> bool;
    /// Removes the local subscriber with `key` ([`Subscriber::key`]).
    fn unsubscribe(&self, channel: &str, key: u64);
    /// Delivers a publish to every subscriber of its channel (wherever they are).
    fn publish(&self, msg: Arc<Published>);
    /// Local subscribers of a channel.
    fn subscriber_count(&self, channel: &str) -> usize;
    /// Resolves once publishes made elsewhere reach this process's subscribers of `channel`
    /// (at once for the local broker, or when the channel has no local subscriber).
    fn ready(&self, channel: &str) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let _ = channel;
        Box::pin(std::future::ready(()))
    }
}

/// A local subscriber of a channel: a socket, or a server-side [`Subscription`](crate::Subscription).
#[derive(Clone)]
pub struct Subscriber(pub(crate) Sub);

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Subscriber").field(&self.key()).finish()
    }
}

impl Subscriber {
    /// Its key, unique within the server.
    pub fn key(&self) -> u64 {
        self.0.key()
    }

    /// Queues `msg` for this subscriber, without waiting. A socket whose queue is full is closed
    /// as a slow consumer ([`SLOW_CONSUMER`](crate::SLOW_CONSUMER)); a server-side subscription
    /// that lags loses the message. `false` when it was not queued.
    pub fn deliver(&self, msg: &Arc<Published>) -> bool {
        match &self.0 {
            Sub::Socket(socket) => {
                // A session's `transmit` skips the socket it came from.
                if let Some(s) = &msg.session
                    && s.skip.as_deref() == Some(socket.id())
                {
                    return true;
                }
                socket.deliver(Out::Publish(msg.clone()))
            }
            Sub::Recovering(r) => r.deliver(msg),
            // A server-side subscription gets messages; gaps reach the app by `on_store_gap`.
            Sub::Local { .. } if msg.gap => true,
            Sub::Local { tx, .. } => {
                let queued = tx.try_send(msg.clone()).is_ok();
                if !queued {
                    tracing::debug!(channel = %msg.channel, "server-side subscriber lagging: message dropped");
                }
                queued
            }
        }
    }
}

/// A local subscriber: a socket, or a server-side subscription.
#[derive(Clone)]
pub(crate) enum Sub {
    Socket(ScSocket),
    /// A socket on a channel with a history (holds live messages while it catches up).
    Recovering(Arc<Recovery>),
    Local {
        key: u64,
        tx: tokio::sync::mpsc::Sender<Arc<Published>>,
    },
}

impl Sub {
    fn key(&self) -> u64 {
        match self {
            Sub::Socket(s) => s.key(),
            Sub::Recovering(r) => r.key(),
            Sub::Local { key, .. } => *key,
        }
    }
}

type Subscribers = Arc<Mutex<Vec<Subscriber>>>;

/// In-process pub/sub: each channel's subscribers in a list with its own lock, held while a
/// publish fans out, so every subscriber sees a channel's publishes in one order.
#[derive(Default)]
pub struct LocalBroker {
    channels: RwLock<HashMap<Arc<str>, Subscribers, foldhash::fast::RandomState>>,
    /// Channel histories kept in this process (a server with history rules and no store).
    history: Option<LocalHistory>,
}

/// The history rules and the in-process store that keeps the histories.
struct LocalHistory {
    rules: Arc<[HistoryRule]>,
    store: Arc<dyn Store>,
}

impl LocalBroker {
    /// A broker that records the publishes of the channels `rules` name in `store` (one whose
    /// `publish_recorded` completes at once: a [`sc_store::MemoryStore`]) before it fans them
    /// out, under the lock that orders the channel's subscribers.
    pub(crate) fn with_history(rules: Vec<HistoryRule>, store: Arc<dyn Store>) -> Self {
        LocalBroker {
            channels: RwLock::default(),
            history: Some(LocalHistory {
                rules: rules.into(),
                store,
            }),
        }
    }

    /// Records `msg` and delivers it with its position. The map's read lock is held throughout,
    /// so a first subscriber cannot arrive between the record and the delivery (it would read a
    /// history without the message and never get it live), and so is the channel's list lock,
    /// so positions reach subscribers in order.
    fn publish_recorded(&self, msg: &Published, limits: HistoryLimits, h: &LocalHistory) {
        use futures_util::FutureExt;
        let map = self.channels.read();
        let list = map.get(&*msg.channel).map(|s| s.lock());
        let position = match h
            .store
            .publish_recorded(&msg.channel, msg.payload(), limits)
            .now_or_never()
        {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                tracing::warn!(channel = %msg.channel, error = %e, "recording a publish failed: message lost");
                return;
            }
            None => {
                tracing::warn!(channel = %msg.channel, "the history store did not record at once: message lost");
                return;
            }
        };
        if let Some(list) = list {
            let recorded = Arc::new(Published::recorded(
                &msg.channel,
                msg.data.clone(),
                position,
            ));
            for sub in list.iter() {
                sub.deliver(&recorded);
            }
        }
    }
}

impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBroker")
            .field("channels", &self.channels.read().len())
            .field(
                "history_rules",
                &self.history.as_ref().map_or(0, |h| h.rules.len()),
            )
            .finish()
    }
}

impl Broker for LocalBroker {
    fn subscribe(&self, channel: &str, sub: Subscriber) -> bool {
        let subs = {
            let read = self.channels.read();
            read.get(channel).cloned()
        };
        let subs = match subs {
            Some(s) => s,
            // Room for one: most channels of a process have one subscriber here (every
            // socket's session channel, when its browser has one tab).
            None => self
                .channels
                .write()
                .entry(Arc::from(channel))
                .or_insert_with(|| Arc::new(Mutex::new(Vec::with_capacity(1))))
                .clone(),
        };
        let mut list = subs.lock();
        if list.iter().any(|s| s.key() == sub.key()) {
            return false;
        }
        list.push(sub);
        true
    }

    fn unsubscribe(&self, channel: &str, key: u64) {
        let mut map = self.channels.write();
        let empty = match map.get(channel) {
            Some(subs) => {
                let mut list = subs.lock();
                list.retain(|s| s.key() != key);
                list.is_empty()
            }
            None => false,
        };
        if empty {
            map.remove(channel);
        }
    }

    fn publish(&self, msg: Arc<Published>) {
        if let Some(h) = &self.history
            && let Some(limits) = history_limits(&h.rules, &msg.channel)
        {
            self.publish_recorded(&msg, limits, h);
            return;
        }
        let subs = {
            let read = self.channels.read();
            read.get(&*msg.channel).cloned()
        };
        if let Some(subs) = subs {
            let list = subs.lock();
            for sub in list.iter() {
                sub.deliver(&msg);
            }
        }
    }

    fn subscriber_count(&self, channel: &str) -> usize {
        self.channels
            .read()
            .get(channel)
            .map_or(0, |s| s.lock().len())
    }
}
