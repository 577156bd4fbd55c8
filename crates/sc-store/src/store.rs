//! The [`Store`] trait, the events of a subscription and the subscription stream.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::history::{History, HistoryLimits, Position};
use crate::{Error, KeyTtl, Result};

/// A boxed, `Send` future: the return type of every [`Store`] method, so that the trait is
/// object safe and workers can hold an `Arc<dyn Store>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreEvent {
    /// A message published on the channel, in publication order.
    Message(Bytes),
    /// The subscription was interrupted (a store restarted, a connection was lost, or this
    /// subscriber fell too far behind): messages published before this event may be missing.
    /// Delivery continues after it.
    Gap,
}

/// The store: keys with TTL, maps, lists and channel pub/sub.
///
/// The data model maps one-to-one onto Redis commands (noted on each method), so the same
/// semantics hold for [`MemoryStore`](crate::MemoryStore), the store server cluster
/// ([`ClusterStore`](crate::ClusterStore)) and Redis ([`RedisStore`](crate::RedisStore)).
/// Keys are strings; values are opaque bytes. A key holds one kind of value (a plain value, a
/// map or a list); using it as another kind fails with [`Error::WrongType`](crate::Error::WrongType).
/// There is deliberately no command that runs code on the store.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Sets `key` to `value`, replacing any value and TTL; with `ttl`, the key expires after it
    /// (`SET key value [PX ms]`).
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>>;
    /// The value of `key`, if it exists (`GET`).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>>;
    /// Removes `key` of any kind; whether it existed (`DEL`).
    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// Whether `key` exists (`EXISTS`).
    fn has<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// Makes `key` expire after `ttl` (millisecond precision); whether the key exists (`PEXPIRE`).
    fn expire<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool>>;
    /// Removes the TTL of `key`; whether it had one (`PERSIST`).
    fn persist<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// The remaining time to live of `key` (`PTTL`).
    fn ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<KeyTtl>>;

    /// Sets `field` of the map at `key`; whether the field is new (`HSET`).
    fn map_set<'a>(
        &'a self,
        key: &'a str,
        field: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<bool>>;
    /// The value of `field` of the map at `key` (`HGET`).
    fn map_get<'a>(&'a self, key: &'a str, field: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>>;
    /// Every field of the map at `key`, in no particular order (`HGETALL`).
    fn map_get_all<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<(String, Bytes)>>>;
    /// Removes `field` of the map at `key`; whether it existed. An emptied map removes the key
    /// (`HDEL`).
    fn map_remove<'a>(&'a self, key: &'a str, field: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// Appends `value` to the list at `key`; the index it got (`RPUSH`).
    fn list_add<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<u64>>;
    /// Appends `values` to the list at `key`; the new length (`RPUSH` with many values).
    fn list_concat<'a>(&'a self, key: &'a str, values: Vec<Bytes>) -> BoxFuture<'a, Result<u64>>;
    /// Items `start..=stop` of the list at `key`; negative indexes count from the end (`LRANGE`).
    fn list_range<'a>(
        &'a self,
        key: &'a str,
        start: i64,
        stop: i64,
    ) -> BoxFuture<'a, Result<Vec<Bytes>>>;
    /// The length of the list at `key`, 0 when missing (`LLEN`).
    fn list_count<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>>;
    /// Removes and returns the last item of the list at `key` (`RPOP`).
    fn list_pop<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>>;
    /// Removes `count` items at `index` of the list at `key`, inserts `items` there, and returns
    /// the removed items, like JavaScript's `Array.prototype.splice`.
    ///
    /// On the store server and Redis this is `LRANGE` followed by a `MULTI`/`EXEC` rebuild of the
    /// list (no server-side scripts), so a concurrent writer to the same list between the two
    /// steps can be overwritten: use it on lists that one writer owns.
    fn list_splice<'a>(
        &'a self,
        key: &'a str,
        index: u64,
        count: u64,
        items: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<Vec<Bytes>>>;

    /// Publishes `message` on `channel` (`PUBLISH`).
    fn publish<'a>(&'a self, channel: &'a str, message: Bytes) -> BoxFuture<'a, Result<()>>;
    /// Publishes `messages` in their order: on one node, a later message is published after an
    /// earlier one. A store over the network sends them together (one pipeline per node, one
    /// round trip); this default publishes them one after the other. On an error, some may have
    /// been published and the rest not: a caller must not send them all again (`RespStore` tries
    /// a node whose connection failed again itself, with that node's messages only).
    fn publish_many<'a>(
        &'a self,
        messages: &'a [(std::sync::Arc<str>, Bytes)],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for (channel, message) in messages {
                self.publish(channel, message.clone()).await?;
            }
            Ok(())
        })
    }
    /// Subscribes to `channel` (`SUBSCRIBE`). Once the future resolves, every later publish on
    /// the channel reaches the returned stream, in publication order, or a
    /// [`StoreEvent::Gap`] says that some did not. Dropping the stream ends the subscription.
    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Subscription>>;
    /// Ends every subscription of this store handle to `channel`: their streams end
    /// (`UNSUBSCRIBE`).
    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Records `message` in the history of `channel` (kept within `limits`) and publishes it, in
    /// one step: its position. Offsets are gap-free per channel and epoch, in publication order;
    /// subscribers receive the message inside an envelope that carries its position
    /// ([`decode_envelope`](crate::history::decode_envelope)). A store without history (the
    /// default) answers [`Error::Unsupported`].
    fn publish_recorded<'a>(
        &'a self,
        channel: &'a str,
        message: Bytes,
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Result<Position>> {
        let _ = (channel, message, limits);
        no_history()
    }

    /// Records and publishes `messages` (channel, message, limits) in their order, as
    /// [`publish_recorded`](Self::publish_recorded) does each: a store over the network sends
    /// them together (one pipeline per node). This default records them one after the other.
    /// On an error, some may have been recorded and the rest not (as for
    /// [`publish_many`](Self::publish_many)).
    fn publish_recorded_many<'a>(
        &'a self,
        messages: &'a [(std::sync::Arc<str>, Bytes, HistoryLimits)],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for (channel, message, limits) in messages {
                self.publish_recorded(channel, message.clone(), *limits)
                    .await?;
            }
            Ok(())
        })
    }

    /// The recorded messages of `channel` after offset `after` (every one kept with `None`), at
    /// most `limit`, with the history's epoch and latest offset. A channel without a history
    /// starts one here (a new epoch, nothing recorded, kept as `limits` keep a publish), so the
    /// position a reader got stays valid for the publishes that follow. A store without history
    /// (the default) answers [`Error::Unsupported`].
    fn history<'a>(
        &'a self,
        channel: &'a str,
        after: Option<u64>,
        limit: usize,
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Result<History>> {
        let _ = (channel, after, limit, limits);
        no_history()
    }

    /// How many independent parts (nodes) the store has: a node that fails does not hold up
    /// the others. 1 (the default) for a store in one piece.
    fn shards(&self) -> usize {
        1
    }

    /// The part, below [`shards`](Self::shards), that owns `name` (a key or a channel). Callers
    /// that send to the store from several queues keep one node's traffic apart from another's
    /// with it, so that a lost node stalls only its own.
    fn shard_of(&self, name: &str) -> usize {
        let _ = name;
        0
    }
}

/// The answer of a store that keeps no channel history.
fn no_history<T: Send + 'static>() -> BoxFuture<'static, Result<T>> {
    Box::pin(std::future::ready(Err(Error::Unsupported(
        "this store keeps no channel history",
    ))))
}

/// Told when a [`Subscription`] is dropped, so the backend can unsubscribe the channel once its
/// last local subscriber has gone.
pub(crate) trait Release: Send + Sync {
    /// A subscription to `channel` was dropped.
    fn release(&self, channel: &str);
}

/// A stream of [`StoreEvent`]s for one channel, returned by [`Store::subscribe`].
///
/// Receive with [`Subscription::recv`] or as a [`Stream`]. The stream ends after
/// [`Store::unsubscribe`] or when the store handle is dropped.
pub struct Subscription {
    channel: String,
    inner: BroadcastStream<StoreEvent>,
    owner: Option<Weak<dyn Release>>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(
        channel: String,
        rx: broadcast::Receiver<StoreEvent>,
        owner: &Arc<dyn Release>,
    ) -> Self {
        Subscription {
            channel,
            inner: BroadcastStream::new(rx),
            owner: Some(Arc::downgrade(owner)),
        }
    }

    /// The channel of this subscription.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next event, or `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<StoreEvent> {
        futures_util::StreamExt::next(self).await
    }
}

impl Stream for Subscription {
    type Item = StoreEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StoreEvent>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(ev))) => Poll::Ready(Some(ev)),
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(_)))) => {
                Poll::Ready(Some(StoreEvent::Gap))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take().and_then(|o| o.upgrade()) {
            // Drop the receiver first so the owner sees the updated receiver count.
            self.inner = BroadcastStream::new(broadcast::channel(1).1);
            owner.release(&self.channel);
        }
    }
}
