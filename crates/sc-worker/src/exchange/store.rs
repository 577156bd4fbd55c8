//! The store broker: channels shared by every process using one [`Store`].

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use sc_store::history::decode_envelope;
use sc_store::{HistoryLimits, Position, Store, StoreEvent};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Broker, LocalBroker, Subscriber};
use crate::config::HistoryRule;
use crate::metrics::Counters;
use crate::published::{Published, SESSION_CHANNEL_PREFIX, history_limits, publish_frame};

/// Called with the channel when messages of it may have been lost on the way from the store.
pub(crate) type GapFn = dyn Fn(&str) + Send + Sync;

/// A publish waiting in a lane: the channel, the message and, for a channel with a history,
/// its limits.
type Queued = (Arc<str>, Bytes, Option<HistoryLimits>);

/// The most records one history read fetches to fill a gap in what the store delivered.
const FILL_MAX: u64 = 65_536;
/// Further tries of that read when it fails (with backoff from `RETRY_MIN`: about 3 s in all).
const FILL_TRIES: usize = 6;

/// Publisher tasks: a channel's publishes all go through one lane, in order; different lanes
/// wait for the store concurrently. The lanes are split between the store's nodes
/// ([`Store::shards`]), a channel going to one of its node's lanes by the hash of its name, so
/// that a node that stops answering holds up only the channels it owns.
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
    lanes: Vec<mpsc::Sender<Queued>>,
    lane_hasher: foldhash::fast::FixedState,
    on_gap: Option<Arc<GapFn>>,
    /// Channels with a history: their publishes are recorded.
    history: Arc<[HistoryRule]>,
    counters: Arc<Counters>,
    runtime: tokio::runtime::Handle,
}

impl StoreBroker {
    /// A broker over `store`; spawns its publisher tasks on the current tokio runtime.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        on_gap: Option<Arc<GapFn>>,
        counters: Arc<Counters>,
        history: Vec<HistoryRule>,
    ) -> Result<Self, tokio::runtime::TryCurrentError> {
        let runtime = tokio::runtime::Handle::try_current()?;
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::channel(OUTBOX);
                runtime.spawn(publisher(store.clone(), rx, counters.clone()));
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
            history: history.into(),
            counters,
            runtime,
        })
    }

    /// The lane of `channel`'s publishes: one of those of the store node owning it.
    fn lane_of(&self, channel: &str) -> usize {
        let hash = self.lane_hasher.hash_one(channel) as usize;
        let shards = self.store.shards().max(1);
        if shards >= LANES {
            return self.store.shard_of(channel) % LANES;
        }
        let per_shard = LANES / shards;
        (self.store.shard_of(channel) % shards) * per_shard + hash % per_shard
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
                Follow {
                    store: self.store.clone(),
                    local: self.local.clone(),
                    on_gap: self.on_gap.clone(),
                    counters: self.counters.clone(),
                    limits: history_limits(&self.history, &channel),
                },
                ready_tx,
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
            self.counters.store(1, 0);
        }
    }

    fn publish(&self, msg: Arc<Published>) {
        let payload = msg.payload();
        let lane = self.lane_of(&msg.channel);
        let Some(outbox) = self.lanes.get(lane) else {
            return;
        };
        // Counted by the publisher when it sends the publish; a dropped one here.
        let limits = history_limits(&self.history, &msg.channel);
        match outbox.try_send((msg.channel.clone(), payload, limits)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.store(1, 1);
                tracing::warn!(channel = %msg.channel, "store publish queue full: message dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.store(1, 1);
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
    /// A publish that arrived from a store; `None` (with a warning) when it is not JSON (or,
    /// on a session's channel, not a session emit).
    fn from_store(channel: &Arc<str>, payload: Bytes) -> Option<Self> {
        // A recorded publish: its position in front of the message (JSON never starts with `#`).
        if payload.first() == Some(&b'#') {
            let Some((position, message)) = decode_envelope(&payload) else {
                tracing::warn!(channel = %channel, len = payload.len(), "recorded message from the store is malformed: dropped");
                return None;
            };
            let data = crate::published::stored_data(channel, message)?;
            return Some(Published::recorded(channel, data, position));
        }
        if channel.starts_with(crate::published::SESSION_CHANNEL_PREFIX) {
            if serde_json::from_slice::<&serde_json::value::RawValue>(&payload).is_ok()
                && let Some(p) = Published::session_from_envelope(channel, payload.clone())
            {
                return Some(p);
            }
            tracing::warn!(channel = %channel, len = payload.len(), "session emit from the store is malformed: dropped");
            return None;
        }
        let data = crate::published::stored_data(channel, payload)?;
        let frame = publish_frame(channel, data.as_ref());
        Some(Published {
            channel: channel.clone(),
            data,
            frame,
            session: None,
            position: None,
            gap: false,
        })
    }
}

/// Sends one lane's queued publishes to the store: what is queued goes as one batch
/// ([`Store::publish_many`], or [`Store::publish_recorded_many`] for a run of publishes on
/// channels with a history: one round trip per node, in order), and the next batch once the
/// store has acknowledged it, so the store sees a lane's publishes in publication order.
async fn publisher(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Queued>, counters: Arc<Counters>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut plain = Vec::with_capacity(BATCH);
    let mut recorded = Vec::new();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Counted when sent (a subscriber may see the message before the store answers), and
        // as failed once the store said so.
        counters.store(batch.len() as u64, 0);
        for (channel, message, limits) in batch.drain(..) {
            match limits {
                None => {
                    send(&*store, &mut recorded, &counters).await;
                    plain.push((channel, message));
                }
                Some(limits) => {
                    send(&*store, &mut plain, &counters).await;
                    recorded.push((channel, message, limits));
                }
            }
        }
        send(&*store, &mut plain, &counters).await;
        send(&*store, &mut recorded, &counters).await;
    }
}

/// A batch of publishes a lane sends in one go.
trait Outgoing: Sized + Send + Sync {
    /// Sends `batch` to `store` in its order.
    fn send<'a>(
        store: &'a dyn Store,
        batch: &'a [Self],
    ) -> sc_store::BoxFuture<'a, sc_store::Result<()>>;
    /// The channel, for the log.
    fn channel(&self) -> &Arc<str>;
}

impl Outgoing for (Arc<str>, Bytes) {
    fn send<'a>(
        store: &'a dyn Store,
        batch: &'a [Self],
    ) -> sc_store::BoxFuture<'a, sc_store::Result<()>> {
        store.publish_many(batch)
    }
    fn channel(&self) -> &Arc<str> {
        &self.0
    }
}

impl Outgoing for (Arc<str>, Bytes, HistoryLimits) {
    fn send<'a>(
        store: &'a dyn Store,
        batch: &'a [Self],
    ) -> sc_store::BoxFuture<'a, sc_store::Result<()>> {
        store.publish_recorded_many(batch)
    }
    fn channel(&self) -> &Arc<str> {
        &self.0
    }
}

/// Sends `batch` as one, and empties it. Not tried again here: the batch may span several
/// store nodes, and what one took must not be sent twice because another failed; a store over
/// the network tries a node whose connection failed again itself, with that node's part only
/// (`RespStore`: 3 times, 50 to 150 ms apart).
async fn send<T: Outgoing>(store: &dyn Store, batch: &mut Vec<T>, counters: &Counters) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = T::send(store, batch).await {
        let n = batch.len() as u64;
        counters.store(0, n);
        let first = batch.first().map(|m| m.channel().clone());
        tracing::warn!(messages = n, first_channel = ?first, error = %e, "publish to the store failed: messages of this batch may be lost");
    }
    batch.clear();
}

/// What the task following a channel's store subscription uses.
struct Follow {
    store: Arc<dyn Store>,
    local: Arc<LocalBroker>,
    on_gap: Option<Arc<GapFn>>,
    counters: Arc<Counters>,
    /// The channel's history limits, when it has one: what the store failed to deliver is then
    /// read from the history.
    limits: Option<HistoryLimits>,
}

impl Follow {
    /// Messages of `channel` may have been lost: logged, told to the channel's local sockets
    /// (`#gap`, after what they were sent before) and to the app's `on_store_gap`.
    fn gap(&self, channel: &Arc<str>, why: &str) {
        tracing::warn!(
            channel = %channel,
            "{why}: messages of this channel may have been lost"
        );
        // A session's channel is the server's own, not the app's: logged, not reported.
        if channel.starts_with(SESSION_CHANNEL_PREFIX) {
            return;
        }
        self.local
            .publish(Arc::new(Published::gap_notice(channel, None)));
        if let Some(f) = &self.on_gap {
            f(channel);
        }
    }

    /// What the store may not have delivered (after `last`, the position of the last message
    /// delivered here, or everything kept when none was) is read from the channel's history
    /// and delivered; where the history does not cover it either, a `#gap` notice with the
    /// position where what follows continues goes first. `last` moves to what was delivered.
    ///
    /// `start`: the channel's position when this process's subscription began, which counts as
    /// the last delivered while nothing has been (without it, the whole history would be read as
    /// missed, and reach server-side subscribers as new).
    async fn fill(
        &self,
        channel: &Arc<str>,
        limits: HistoryLimits,
        last: &mut Option<Position>,
        start: Option<&Position>,
    ) {
        if last.is_none() {
            *last = start.cloned();
        }
        let max = usize::try_from(limits.max_len.min(FILL_MAX)).unwrap_or(usize::MAX);
        let after = last.as_ref().map(|p| p.offset);
        // The store may still be reconnecting the connection that reads (the subscription's
        // came back first): a few tries, with backoff, before the gap goes without a position.
        let mut delay = RETRY_MIN;
        let mut read = self.store.history(channel, after, max, limits).await;
        for _ in 0..FILL_TRIES {
            if read.is_ok() {
                break;
            }
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(RETRY_MAX);
            read = self.store.history(channel, after, max, limits).await;
        }
        // Another epoch: the history this process followed is gone; all of the new one counts.
        if let (Ok(h), Some(l)) = (&read, &*last)
            && h.epoch != l.epoch
        {
            read = self.store.history(channel, None, max, limits).await;
        }
        let h = match read {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(channel = %channel, error = %e, "history read failed");
                self.gap(
                    channel,
                    "store delivery interrupted and its history unreadable",
                );
                return;
            }
        };
        let continues = last.as_ref().is_none_or(|l| l.epoch == h.epoch) && h.complete;
        if !continues {
            let offset = h
                .records
                .first()
                .map_or(h.latest, |r| r.0.saturating_sub(1));
            let at = Position {
                offset,
                epoch: h.epoch.clone(),
            };
            tracing::warn!(channel = %channel, epoch = %h.epoch, offset, "messages of this channel were lost: the history no longer holds them");
            self.local
                .publish(Arc::new(Published::gap_notice(channel, Some(at.clone()))));
            if let Some(f) = &self.on_gap {
                f(channel);
            }
            *last = Some(at);
        }
        for (offset, message) in h.records {
            let position = Position {
                offset,
                epoch: h.epoch.clone(),
            };
            if let Some(data) = crate::published::stored_data(channel, message) {
                self.local.publish(Arc::new(Published::recorded(
                    channel,
                    data,
                    position.clone(),
                )));
            }
            *last = Some(position);
        }
    }
}

/// Follows the store subscription of `channel` and delivers what arrives to the local
/// subscribers, until aborted (the last local subscriber left). Failures and interruptions are
/// retried with backoff and reported as gaps; on a channel with a history, what was missed is
/// read from it instead, and a gap reported only when the history does not hold it.
async fn follow(channel: Arc<str>, f: Follow, ready: watch::Sender<bool>) {
    let mut delay = RETRY_MIN;
    let mut interrupted = false;
    // The position of the last recorded message delivered here.
    let mut last: Option<Position> = None;
    // The channel's position when the subscription first held (recorded channels).
    let mut start: Option<Position> = None;
    loop {
        f.counters.store(1, 0);
        let mut sub = match f.store.subscribe(&channel).await {
            Ok(s) => s,
            Err(e) => {
                f.counters.store(0, 1);
                tracing::warn!(channel = %channel, error = %e, "store subscribe failed; retrying");
                interrupted = true;
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(RETRY_MAX);
                continue;
            }
        };
        delay = RETRY_MIN;
        if let Some(limits) = f.limits
            && last.is_none()
            && start.is_none()
        {
            // Where this process joins the channel: what a gap before the first delivery missed
            // comes after it. Unknown if the read fails (a gap then reads the whole history).
            start = f
                .store
                .history(&channel, None, 0, limits)
                .await
                .ok()
                .map(|h| Position {
                    offset: h.latest,
                    epoch: h.epoch,
                });
        }
        ready.send_replace(true);
        if interrupted {
            match f.limits {
                Some(limits) => f.fill(&channel, limits, &mut last, start.as_ref()).await,
                None => f.gap(&channel, "store subscription restored"),
            }
        }
        while let Some(ev) = sub.recv().await {
            match ev {
                StoreEvent::Message(payload) => {
                    let Some(p) = Published::from_store(&channel, payload) else {
                        continue;
                    };
                    if let (Some(limits), Some(at)) = (f.limits, &p.position) {
                        let next = last.as_ref().is_none_or(|l| {
                            l.epoch == at.epoch && at.offset == l.offset.saturating_add(1)
                        });
                        if !next {
                            f.fill(&channel, limits, &mut last, start.as_ref()).await;
                        }
                        if last
                            .as_ref()
                            .is_some_and(|l| l.epoch == at.epoch && at.offset <= l.offset)
                        {
                            // Delivered already (by the fill).
                            continue;
                        }
                        last = Some(at.clone());
                    }
                    f.local.publish(Arc::new(p));
                }
                StoreEvent::Gap => match f.limits {
                    Some(limits) => f.fill(&channel, limits, &mut last, start.as_ref()).await,
                    None => f.gap(&channel, "store subscription interrupted"),
                },
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
