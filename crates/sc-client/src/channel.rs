//! Channel subscriptions as streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use sc_protocol::{RawValue, ScError};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::Client;
use crate::error::Error;
use crate::message::Message;

/// Options of [`Client::subscribe_with`](crate::Client::subscribe_with).
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Subscribe only once the client is authenticated (`waitForAuth`). Defaults to `false`.
    pub wait_for_auth: bool,
    /// Data sent with the `#subscribe` request, for the server's middleware. Defaults to none.
    pub data: Option<Box<RawValue>>,
}

/// Where a subscription stands.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ChannelState {
    /// Wanted, but not (or no longer) confirmed by the server: the client is disconnected, the
    /// `#subscribe` request is on its way, or the channel waits for authentication.
    Pending,
    /// The server confirmed the subscription on the current connection.
    Subscribed,
    /// Unsubscribed, by [`Channel::unsubscribe`], [`Client::unsubscribe`](crate::Client::unsubscribe)
    /// or a `#kickOut` from the server.
    Unsubscribed,
    /// The server refused the subscription with this error (the channel is dropped).
    Failed(ScError),
}

/// What a channel stream yields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// A message published to the channel.
    Message(Message),
    /// The connection was lost while subscribed: messages published from now until the channel
    /// is subscribed again (automatically, after the reconnect) are not received.
    Gap,
    /// The server removed the socket from the channel (`#kickOut`), with its message. The stream
    /// ends after this.
    KickedOut(Message),
    /// The server refused the subscription. The stream ends after this.
    SubscribeFailed(ScError),
}

pub(crate) struct ChannelEntry {
    pub(crate) seq: u64,
    pub(crate) options: SubscribeOptions,
    /// A `#subscribe` request is on its way on the current connection.
    pub(crate) subscribing: bool,
    pub(crate) senders: Vec<mpsc::UnboundedSender<ChannelEvent>>,
    pub(crate) state: watch::Sender<ChannelState>,
}

impl ChannelEntry {
    pub(crate) fn new(seq: u64, options: SubscribeOptions) -> Self {
        ChannelEntry {
            seq,
            options,
            subscribing: false,
            senders: Vec::new(),
            state: watch::Sender::new(ChannelState::Pending),
        }
    }

    pub(crate) fn handle(&mut self, name: &str, client: Client) -> Channel {
        let (tx, rx) = mpsc::unbounded_channel();
        self.senders.push(tx);
        Channel {
            name: name.to_owned(),
            rx,
            state: self.state.subscribe(),
            client,
        }
    }

    pub(crate) fn deliver(&mut self, event: &ChannelEvent) {
        self.senders.retain(|s| s.send(event.clone()).is_ok());
    }

    pub(crate) fn set_state(&self, state: ChannelState) {
        self.state.send_replace(state);
    }

    pub(crate) fn state(&self) -> ChannelState {
        self.state.borrow().clone()
    }
}

/// A subscription: a [`Stream`] of [`ChannelEvent`]s, from
/// [`Client::subscribe`](crate::Client::subscribe).
///
/// Messages arrive in the order the server sent them. After a reconnect the client subscribes
/// again by itself and the stream goes on, with a [`ChannelEvent::Gap`] where the connection was
/// lost. Dropping the handle does not unsubscribe (other handles of the same channel may live);
/// call [`Channel::unsubscribe`].
#[derive(Debug)]
pub struct Channel {
    name: String,
    rx: mpsc::UnboundedReceiver<ChannelEvent>,
    state: watch::Receiver<ChannelState>,
    client: Client,
}

impl Channel {
    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The subscription's state now.
    pub fn state(&self) -> ChannelState {
        self.state.borrow().clone()
    }

    /// Waits until the server has confirmed the subscription on the current connection. Fails
    /// with [`Error::Remote`] when the server refused it and [`Error::Unsubscribed`] when the
    /// channel was unsubscribed meanwhile.
    pub async fn wait_subscribed(&mut self) -> Result<(), Error> {
        loop {
            match &*self.state.borrow_and_update() {
                ChannelState::Subscribed => return Ok(()),
                ChannelState::Failed(e) => return Err(Error::Remote(e.clone())),
                ChannelState::Unsubscribed => {
                    return Err(Error::Unsubscribed {
                        channel: self.name.clone(),
                    });
                }
                ChannelState::Pending => {}
            }
            if self.state.changed().await.is_err() {
                return Err(Error::Unsubscribed {
                    channel: self.name.clone(),
                });
            }
        }
    }

    /// The next event; `None` once the stream ended. (The same as `StreamExt::next`.)
    pub async fn recv(&mut self) -> Option<ChannelEvent> {
        self.rx.recv().await
    }

    /// The next message, skipping [`ChannelEvent::Gap`]s; `None` once the stream ended.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            match self.rx.recv().await? {
                ChannelEvent::Message(m) => return Some(m),
                ChannelEvent::Gap => {}
                ChannelEvent::KickedOut(_) | ChannelEvent::SubscribeFailed(_) => return None,
            }
        }
    }

    /// Publishes `data` to this channel (transmit form, see [`Client::publish`](crate::Client::publish)).
    pub fn publish<T: Serialize + ?Sized>(&self, data: &T) -> Result<(), Error> {
        self.client.publish(&self.name, data)
    }

    /// Unsubscribes the channel: every handle of it ends.
    pub fn unsubscribe(&self) {
        self.client.unsubscribe(&self.name);
    }
}

impl Stream for Channel {
    type Item = ChannelEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
