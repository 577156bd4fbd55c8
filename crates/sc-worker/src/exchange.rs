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
//! to the local subscribers by the same fan-out as [`LocalBroker`]'s.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use sc_store::{Store, StoreEvent};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::data::Data;
use crate::socket::{Out, ScSocket};

/// One publish: the channel, the data, and the `#publish` frame encoded once (every local
/// subscriber gets the same bytes).
#[derive(Debug)]
pub struct Published {
    pub(crate) channel: Arc<str>,
    pub(crate) data: Option<Data>,
    pub(crate) frame: Bytes,
}

impl Published {
    /// A publish of `data` to `channel` (its frame encoded here, once).
    pub fn new(channel: &str, data: Option<Data>) -> Self {
        let frame = publish_frame(channel, data.as_ref());
        Published {
            channel: Arc::from(channel),
            data,
            frame,
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The data (`None` for a publish without data).
    pub fn data(&self) -> Option<&Data> {
        self.data.as_ref()
    }

    /// The `#publish` frame subscribers receive.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
}

/// `{"event":"#publish","data":{"channel":C[,"data":D]}}`.
pub(crate) fn publish_frame(channel: &str, data: Option<&Data>) -> Bytes {
    sc_protocol::PublishFrame::from_json(channel, data.map(Data::as_bytes)).into_bytes()
}

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
            Sub::Socket(socket) => socket.deliver(Out::Publish(msg.clone())),
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
    Local {
        key: u64,
        tx: tokio::sync::mpsc::Sender<Arc<Published>>,
    },
}

impl Sub {
    fn key(&self) -> u64 {
        match self {
            Sub::Socket(s) => s.key(),
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
}

impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBroker")
            .field("channels", &self.channels.read().len())
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
            None => self
                .channels
                .write()
                .entry(Arc::from(channel))
                .or_default()
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

/// Called with the channel when messages of it may have been lost on the way from the store.
pub(crate) type GapFn = dyn Fn(&str) + Send + Sync;

/// Publisher tasks: a channel's publishes all go through the lane its name hashes to, in order;
/// different lanes wait for the store concurrently.
const LANES: usize = 16;
/// Publishes queued per lane before further ones are dropped (with a warning).
const OUTBOX: usize = 8192;
/// Publishes a lane takes from its queue at once.
const BATCH: usize = 256;
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The store subscription of one channel: the task that follows it, and whether the store has
/// confirmed it.
struct Link {
    task: JoinHandle<()>,
    ready: watch::Receiver<bool>,
}

/// Pub/sub over a [`Store`] shared by several processes, with local fan-out.
///
/// Publishes are sent to the store in the order they were made (per channel, one publisher task
/// sends them one after the other), and delivered locally only when they come back from the
/// store, so every process sees a channel in the store's order and a publisher sees its own
/// publish exactly once. On the store, a publish is the raw JSON text of
/// its data, or empty bytes for a publish without data.
pub(crate) struct StoreBroker {
    local: Arc<LocalBroker>,
    store: Arc<dyn Store>,
    /// Channels with local subscribers. Locked only by subscribe and unsubscribe, never by a
    /// publish or a delivery.
    links: Mutex<HashMap<Arc<str>, Link, foldhash::fast::RandomState>>,
    lanes: Vec<mpsc::Sender<(Arc<str>, Bytes)>>,
    lane_hasher: foldhash::fast::FixedState,
    on_gap: Option<Arc<GapFn>>,
    runtime: tokio::runtime::Handle,
}

impl StoreBroker {
    /// A broker over `store`; spawns its publisher tasks on the current tokio runtime.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        on_gap: Option<Arc<GapFn>>,
    ) -> Result<Self, tokio::runtime::TryCurrentError> {
        let runtime = tokio::runtime::Handle::try_current()?;
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::channel(OUTBOX);
                runtime.spawn(publisher(store.clone(), rx));
                tx
            })
            .collect();
        Ok(StoreBroker {
            local: Arc::new(LocalBroker::default()),
            store,
            links: Mutex::default(),
            lanes,
            lane_hasher: foldhash::fast::FixedState::default(),
            on_gap,
            runtime,
        })
    }
}

impl Drop for StoreBroker {
    fn drop(&mut self) {
        for link in self.links.get_mut().values() {
            link.task.abort();
        }
    }
}

impl Broker for StoreBroker {
    fn subscribe(&self, channel: &str, sub: Subscriber) -> bool {
        let mut links = self.links.lock();
        let added = self.local.subscribe(channel, sub);
        if !links.contains_key(channel) {
            let channel: Arc<str> = Arc::from(channel);
            let (ready_tx, ready) = watch::channel(false);
            let task = self.runtime.spawn(follow(
                channel.clone(),
                self.store.clone(),
                self.local.clone(),
                ready_tx,
                self.on_gap.clone(),
            ));
            links.insert(channel, Link { task, ready });
        }
        added
    }

    fn unsubscribe(&self, channel: &str, key: u64) {
        let mut links = self.links.lock();
        self.local.unsubscribe(channel, key);
        if self.local.subscriber_count(channel) == 0
            && let Some(link) = links.remove(channel)
        {
            // Dropping the task's store subscription unsubscribes the channel on the store.
            link.task.abort();
        }
    }

    fn publish(&self, msg: Arc<Published>) {
        let payload = msg.payload();
        let lane = self.lane_hasher.hash_one(&*msg.channel) as usize % LANES;
        let Some(outbox) = self.lanes.get(lane) else {
            return;
        };
        match outbox.try_send((msg.channel.clone(), payload)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(channel = %msg.channel, "store publish queue full: message dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!(channel = %msg.channel, "store publisher stopped: message dropped");
            }
        }
    }

    fn subscriber_count(&self, channel: &str) -> usize {
        self.local.subscriber_count(channel)
    }

    fn ready(&self, channel: &str) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let ready = self.links.lock().get(channel).map(|l| l.ready.clone());
        Box::pin(async move {
            if let Some(mut ready) = ready {
                // An error means the link was removed (no local subscriber left): nothing to wait for.
                let _ = ready.wait_for(|r| *r).await;
            }
        })
    }
}

impl Published {
    /// The bytes that represent this publish on a store: the data's JSON text, or nothing.
    fn payload(&self) -> Bytes {
        match &self.data {
            // The frame ends with the data's text and `}}`: share it rather than copy it.
            Some(d) => {
                let end = self.frame.len().saturating_sub(2);
                let start = end.saturating_sub(d.as_bytes().len());
                let slice = self.frame.slice(start..end);
                if slice == d.as_bytes() {
                    slice
                } else {
                    Bytes::copy_from_slice(d.as_bytes())
                }
            }
            None => Bytes::new(),
        }
    }

    /// A publish that arrived from a store; `None` (with a warning) when it is not JSON.
    fn from_store(channel: &Arc<str>, payload: Bytes) -> Option<Self> {
        let data = if payload.is_empty() {
            None
        } else {
            if serde_json::from_slice::<&serde_json::value::RawValue>(&payload).is_err() {
                tracing::warn!(channel = %channel, len = payload.len(), "message from the store is not JSON: dropped");
                return None;
            }
            Some(Data::from_trusted(payload))
        };
        let frame = publish_frame(channel, data.as_ref());
        Some(Published {
            channel: channel.clone(),
            data,
            frame,
        })
    }
}

/// Sends one lane's queued publishes to the store, one after the other: a publish is sent once
/// the store has acknowledged the previous one, so the store sees them in publication order.
async fn publisher(store: Arc<dyn Store>, mut rx: mpsc::Receiver<(Arc<str>, Bytes)>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        for (channel, payload) in batch.drain(..) {
            if let Err(e) = store.publish(&channel, payload).await {
                tracing::warn!(channel = %channel, error = %e, "publish to the store failed: message lost");
            }
        }
    }
}

fn gap(channel: &str, on_gap: Option<&GapFn>, why: &str) {
    tracing::warn!(
        channel,
        "{why}: messages of this channel may have been lost"
    );
    if let Some(f) = on_gap {
        f(channel);
    }
}

/// Follows the store subscription of `channel` and delivers what arrives to the local
/// subscribers, until aborted (the last local subscriber left). Failures and interruptions are
/// retried with backoff and reported as gaps.
async fn follow(
    channel: Arc<str>,
    store: Arc<dyn Store>,
    local: Arc<LocalBroker>,
    ready: watch::Sender<bool>,
    on_gap: Option<Arc<GapFn>>,
) {
    let mut delay = RETRY_MIN;
    let mut interrupted = false;
    loop {
        let mut sub = match store.subscribe(&channel).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(channel = %channel, error = %e, "store subscribe failed; retrying");
                interrupted = true;
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(RETRY_MAX);
                continue;
            }
        };
        delay = RETRY_MIN;
        ready.send_replace(true);
        if interrupted {
            gap(&channel, on_gap.as_deref(), "store subscription restored");
        }
        while let Some(ev) = sub.recv().await {
            match ev {
                StoreEvent::Message(payload) => {
                    if let Some(p) = Published::from_store(&channel, payload) {
                        local.publish(Arc::new(p));
                    }
                }
                StoreEvent::Gap => gap(
                    &channel,
                    on_gap.as_deref(),
                    "store subscription interrupted",
                ),
                _ => {}
            }
        }
        // The stream ended while local subscribers remain (the store handle unsubscribed the
        // channel): subscribe again and report the gap.
        interrupted = true;
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2).min(RETRY_MAX);
    }
}
