//! The store broker: channels shared by every process using one [`Store`].

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use sc_store::{Store, StoreEvent};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Broker, LocalBroker, Sub, Subscriber};
use crate::data::Data;
use crate::metrics::Counters;
use crate::published::{Published, SESSION_CHANNEL_PREFIX, publish_frame};
use crate::socket::Out;

/// Called with the channel when messages of it may have been lost on the way from the store.
pub(crate) type GapFn = dyn Fn(&str) + Send + Sync;

/// The event every local socket subscribed to a channel gets when messages of it may have been
/// lost: `{"event":"#gap","data":{"channel":C}}`.
pub(crate) const GAP_EVENT: &str = "#gap";

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
    counters: Arc<Counters>,
    runtime: tokio::runtime::Handle,
}

impl StoreBroker {
    /// A broker over `store`; spawns its publisher tasks on the current tokio runtime.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        on_gap: Option<Arc<GapFn>>,
        counters: Arc<Counters>,
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
            counters,
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
                Follow {
                    store: self.store.clone(),
                    local: self.local.clone(),
                    on_gap: self.on_gap.clone(),
                    counters: self.counters.clone(),
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
        let lane = self.lane_hasher.hash_one(&*msg.channel) as usize % LANES;
        let Some(outbox) = self.lanes.get(lane) else {
            return;
        };
        // Counted by the publisher when it sends the publish; a dropped one here.
        match outbox.try_send((msg.channel.clone(), payload)) {
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

    /// A publish that arrived from a store; `None` (with a warning) when it is not JSON (or,
    /// on a session's channel, not a session emit).
    fn from_store(channel: &Arc<str>, payload: Bytes) -> Option<Self> {
        if channel.starts_with(crate::published::SESSION_CHANNEL_PREFIX) {
            if serde_json::from_slice::<&serde_json::value::RawValue>(&payload).is_ok()
                && let Some(p) = Published::session_from_envelope(channel, payload.clone())
            {
                return Some(p);
            }
            tracing::warn!(channel = %channel, len = payload.len(), "session emit from the store is malformed: dropped");
            return None;
        }
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
            session: None,
        })
    }
}

/// Sends one lane's queued publishes to the store: what is queued goes as one batch
/// ([`Store::publish_many`]: one round trip per node, in order), and the next batch once the
/// store has acknowledged it, so the store sees a lane's publishes in publication order.
async fn publisher(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<(Arc<str>, Bytes)>,
    counters: Arc<Counters>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Counted when sent (a subscriber may see the message before the store answers), and
        // as failed once the store said so.
        let n = batch.len() as u64;
        counters.store(n, 0);
        if let Err(e) = store.publish_many(&batch).await {
            counters.store(0, n);
            let first = batch.first().map(|(c, _)| c.clone());
            tracing::warn!(messages = batch.len(), first_channel = ?first, error = %e, "publish to the store failed: messages of this batch may be lost");
        }
        batch.clear();
    }
}

/// What the task following a channel's store subscription uses.
struct Follow {
    store: Arc<dyn Store>,
    local: Arc<LocalBroker>,
    on_gap: Option<Arc<GapFn>>,
    counters: Arc<Counters>,
}

impl Follow {
    /// Messages of `channel` may have been lost: logged, told to the channel's local sockets
    /// (`#gap`, after what they were sent before) and to the app's `on_store_gap`.
    fn gap(&self, channel: &str, why: &str) {
        tracing::warn!(
            channel,
            "{why}: messages of this channel may have been lost"
        );
        // A session's channel is the server's own, not the app's: logged, not reported.
        if channel.starts_with(SESSION_CHANNEL_PREFIX) {
            return;
        }
        let frame = gap_frame(channel);
        self.local.for_each(channel, |sub| {
            if let Sub::Socket(socket) = &sub.0 {
                socket.deliver(Out::Frame(frame.clone()));
            }
        });
        if let Some(f) = &self.on_gap {
            f(channel);
        }
    }
}

/// `{"event":"#gap","data":{"channel":C}}`, encoded once for every subscriber.
fn gap_frame(channel: &str) -> Bytes {
    let data = serde_json::json!({ "channel": channel }).to_string();
    let mut frame = Vec::with_capacity(32 + data.len());
    sc_protocol::encode::put_transmit(&mut frame, GAP_EVENT, Some(data.as_bytes()));
    Bytes::from(frame)
}

/// Follows the store subscription of `channel` and delivers what arrives to the local
/// subscribers, until aborted (the last local subscriber left). Failures and interruptions are
/// retried with backoff and reported as gaps.
async fn follow(channel: Arc<str>, f: Follow, ready: watch::Sender<bool>) {
    let mut delay = RETRY_MIN;
    let mut interrupted = false;
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
        ready.send_replace(true);
        if interrupted {
            f.gap(&channel, "store subscription restored");
        }
        while let Some(ev) = sub.recv().await {
            match ev {
                StoreEvent::Message(payload) => {
                    if let Some(p) = Published::from_store(&channel, payload) {
                        f.local.publish(Arc::new(p));
                    }
                }
                StoreEvent::Gap => f.gap(&channel, "store subscription interrupted"),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_gap_frame_names_the_channel_as_json() {
        let frame = gap_frame("a\"b");
        let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "#gap", "data": {"channel": "a\"b"}})
        );
    }
}
