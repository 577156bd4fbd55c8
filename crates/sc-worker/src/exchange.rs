//! The exchange: channel pub/sub behind a small trait, with the in-process broker as the default.
//!
//! A publish is encoded once into a `#publish` frame ([`Published`]) and the same reference-counted
//! bytes are queued on every local subscriber. Each channel's subscriber list has its own lock,
//! held while a publish fans out, so every subscriber sees the publishes of a channel in one
//! order. A subscriber whose queue is full is closed as a slow consumer, never waited for.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::data::Data;
use crate::socket::{Out, ScSocket};

/// One publish: the channel, the data, and the `#publish` frame encoded once.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) channel: Arc<str>,
    pub(crate) data: Option<Data>,
    pub(crate) frame: Bytes,
}

impl Published {
    pub(crate) fn new(channel: &str, data: Option<Data>) -> Self {
        let frame = publish_frame(channel, data.as_ref());
        Published {
            channel: Arc::from(channel),
            data,
            frame,
        }
    }
}

/// `{"event":"#publish","data":{"channel":C[,"data":D]}}`.
pub(crate) fn publish_frame(channel: &str, data: Option<&Data>) -> Bytes {
    let mut buf = Vec::with_capacity(48 + channel.len() + data.map_or(0, |d| d.as_bytes().len()));
    buf.extend_from_slice(b"{\"event\":\"#publish\",\"data\":{\"channel\":");
    sc_protocol::encode::write_str(&mut buf, channel);
    if let Some(d) = data {
        buf.extend_from_slice(b",\"data\":");
        buf.extend_from_slice(d.as_bytes());
    }
    buf.extend_from_slice(b"}}");
    Bytes::from(buf)
}

/// What the server needs from a pub/sub backend. The in-process [`LocalBroker`] is the default;
/// a store-backed exchange (channels shared by several processes) implements the same trait.
pub(crate) trait Broker: Send + Sync + 'static {
    /// Adds a local subscriber; `false` if it already was one.
    fn subscribe(&self, channel: &str, sub: Sub) -> bool;
    /// Removes a local subscriber.
    fn unsubscribe(&self, channel: &str, socket_key: u64);
    /// Delivers a publish to every subscriber of its channel.
    fn publish(&self, msg: Arc<Published>);
    /// Local subscribers of a channel.
    fn subscriber_count(&self, channel: &str) -> usize;
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

type Subscribers = Arc<Mutex<Vec<Sub>>>;

/// In-process pub/sub.
#[derive(Default)]
pub(crate) struct LocalBroker {
    channels: RwLock<HashMap<Arc<str>, Subscribers, foldhash::fast::RandomState>>,
}

impl Broker for LocalBroker {
    fn subscribe(&self, channel: &str, sub: Sub) -> bool {
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

    fn unsubscribe(&self, channel: &str, socket_key: u64) {
        let mut map = self.channels.write();
        let empty = match map.get(channel) {
            Some(subs) => {
                let mut list = subs.lock();
                list.retain(|s| s.key() != socket_key);
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
                match sub {
                    Sub::Socket(socket) => {
                        socket.deliver(Out::Publish(msg.clone()));
                    }
                    Sub::Local { tx, .. } => {
                        if tx.try_send(msg.clone()).is_err() {
                            tracing::debug!(channel = %msg.channel, "server-side subscriber lagging: message dropped");
                        }
                    }
                }
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
