//! [`MemoryStore`]: the in-process backend, the embedded default.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::db::{Db, Hasher, WrongType};
use crate::history::{Histories, History, HistoryLimits, Position, encode_envelope};
use crate::store::{BoxFuture, Release};
use crate::{Error, KeyTtl, Result, Store, StoreEvent, Subscription};

/// Settings of a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Events buffered per channel for the slowest subscriber before it gets a
    /// [`StoreEvent::Gap`]. Defaults to 1024; at least 1 and at most 2^24 are used.
    pub channel_capacity: usize,
    /// How often expired keys are swept (they are also expired when accessed). Defaults to 100 ms.
    pub sweep_interval: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            channel_capacity: 1024,
            sweep_interval: Duration::from_millis(100),
        }
    }
}

/// The in-process store: the embedded default of a single-process server.
///
/// Cloning is cheap and clones share the data. TTLs expire lazily on access and by a periodic
/// sweep task (started when the store is created inside a tokio runtime; it stops when the last
/// clone is dropped). Pub/sub is a bounded broadcast per channel: a subscriber that falls more
/// than [`MemoryConfig::channel_capacity`] events behind receives a [`StoreEvent::Gap`].
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Mutex<Db>,
    /// Locked before `channels` while a recorded publish is sent, so that subscribers get
    /// recorded messages in offset order.
    histories: Mutex<Histories>,
    channels: Mutex<HashMap<String, broadcast::Sender<StoreEvent>, Hasher>>,
    config: MemoryConfig,
}

impl Release for Inner {
    fn release(&self, channel: &str) {
        let mut channels = self.channels.lock();
        if channels
            .get(channel)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            channels.remove(channel);
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store with the default [`MemoryConfig`].
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A store with `config`.
    pub fn with_config(config: MemoryConfig) -> Self {
        let inner = Arc::new(Inner {
            db: Mutex::new(Db::default()),
            histories: Mutex::new(Histories::default()),
            channels: Mutex::new(HashMap::default()),
            config,
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(sweep(Arc::downgrade(&inner), inner.config.sweep_interval));
        }
        MemoryStore { inner }
    }

    fn with_db<T>(&self, f: impl FnOnce(&mut Db) -> Result<T, WrongType>) -> Result<T> {
        f(&mut self.inner.db.lock()).map_err(|WrongType| Error::WrongType)
    }
}

fn ready<'a, T: Send + 'static>(r: Result<T>) -> BoxFuture<'a, Result<T>> {
    Box::pin(std::future::ready(r))
}

async fn sweep(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        // Bounded work per lock so a large expiry wave never stalls the store.
        while inner.db.lock().sweep(1000) == 1000 {
            tokio::task::yield_now().await;
        }
        inner.histories.lock().sweep();
    }
}

fn len(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn non_zero(ttl: Duration) -> Result<Duration> {
    if ttl.is_zero() {
        Err(Error::InvalidArgument("a TTL must be at least 1 ms"))
    } else {
        Ok(ttl)
    }
}

impl Store for MemoryStore {
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        let r = ttl.map(non_zero).transpose().and_then(|ttl| {
            self.with_db(|db| {
                db.set(key.as_bytes(), value, ttl);
                Ok(())
            })
        });
        ready(r)
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        ready(self.with_db(|db| db.get(key.as_bytes())))
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        ready(self.with_db(|db| Ok(db.remove(key.as_bytes()))))
    }

    fn has<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        ready(self.with_db(|db| Ok(db.has(key.as_bytes()))))
    }

    fn expire<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool>> {
        let r = non_zero(ttl).and_then(|ttl| self.with_db(|db| Ok(db.expire(key.as_bytes(), ttl))));
        ready(r)
    }

    fn persist<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        ready(self.with_db(|db| Ok(db.persist(key.as_bytes()))))
    }

    fn ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<KeyTtl>> {
        ready(self.with_db(|db| Ok(db.ttl(key.as_bytes()))))
    }

    fn map_set<'a>(
        &'a self,
        key: &'a str,
        field: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<bool>> {
        ready(self.with_db(|db| db.map_set(key.as_bytes(), field.as_bytes(), value)))
    }

    fn map_get<'a>(&'a self, key: &'a str, field: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        ready(self.with_db(|db| db.map_get(key.as_bytes(), field.as_bytes())))
    }

    fn map_get_all<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<(String, Bytes)>>> {
        let r = self
            .with_db(|db| db.map_get_all(key.as_bytes()))
            .map(|all| {
                all.into_iter()
                    .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
                    .collect()
            });
        ready(r)
    }

    fn map_remove<'a>(&'a self, key: &'a str, field: &'a str) -> BoxFuture<'a, Result<bool>> {
        ready(self.with_db(|db| db.map_remove(key.as_bytes(), field.as_bytes())))
    }

    fn list_add<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<u64>> {
        let r = self.with_db(|db| db.list_push(key.as_bytes(), [value]));
        ready(r.map(|n| len(n.saturating_sub(1))))
    }

    fn list_concat<'a>(&'a self, key: &'a str, values: Vec<Bytes>) -> BoxFuture<'a, Result<u64>> {
        let r = self.with_db(|db| db.list_push(key.as_bytes(), values));
        ready(r.map(len))
    }

    fn list_range<'a>(
        &'a self,
        key: &'a str,
        start: i64,
        stop: i64,
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        ready(self.with_db(|db| db.list_range(key.as_bytes(), start, stop)))
    }

    fn list_count<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>> {
        ready(self.with_db(|db| db.list_count(key.as_bytes())).map(len))
    }

    fn list_pop<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        ready(self.with_db(|db| db.list_pop(key.as_bytes())))
    }

    fn list_splice<'a>(
        &'a self,
        key: &'a str,
        index: u64,
        count: u64,
        items: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        let index = usize::try_from(index).unwrap_or(usize::MAX);
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        ready(self.with_db(|db| db.list_splice(key.as_bytes(), index, count, items)))
    }

    fn publish<'a>(&'a self, channel: &'a str, message: Bytes) -> BoxFuture<'a, Result<()>> {
        if let Some(tx) = self.inner.channels.lock().get(channel) {
            // An error means no receiver is left; the channel is then removed by `release`.
            let _ = tx.send(StoreEvent::Message(message));
        }
        ready(Ok(()))
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Subscription>> {
        let rx = self
            .inner
            .channels
            .lock()
            .entry(channel.to_owned())
            .or_insert_with(|| {
                broadcast::channel(
                    self.inner
                        .config
                        .channel_capacity
                        .clamp(1, crate::resp_store::MAX_CAPACITY),
                )
                .0
            })
            .subscribe();
        let owner: Arc<dyn Release> = self.inner.clone();
        ready(Ok(Subscription::new(channel.to_owned(), rx, &owner)))
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<()>> {
        // Dropping the sender ends every receiver's stream.
        self.inner.channels.lock().remove(channel);
        ready(Ok(()))
    }

    fn publish_recorded<'a>(
        &'a self,
        channel: &'a str,
        message: Bytes,
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Result<Position>> {
        let mut histories = self.inner.histories.lock();
        let position = histories.record(channel.as_bytes(), message.clone(), limits);
        if let Some(tx) = self.inner.channels.lock().get(channel) {
            let _ = tx.send(StoreEvent::Message(encode_envelope(&position, &message)));
        }
        drop(histories);
        ready(Ok(position))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        after: Option<u64>,
        limit: usize,
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Result<History>> {
        let read = self
            .inner
            .histories
            .lock()
            .read(channel.as_bytes(), after, limit, limits);
        ready(Ok(read))
    }
}
