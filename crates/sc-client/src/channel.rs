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
pub(crate) use crate::position::{Position, Positioned, advance, recover_data};

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
    /// Messages of the channel may have been missed here.
    ///
    /// On a channel the server keeps no history of: the connection was lost while subscribed,
    /// and messages published from then until the channel is subscribed again (automatically,
    /// after the reconnect) are not received. The server also sends this notice (`#gap`) when
    /// it lost messages itself (e.g. its store failed).
    ///
    /// On a channel with a history (its messages carry a [`Position`]) a lost connection
    /// yields no `Gap`: the resubscribe asks for everything after the last position seen, and
    /// the missed messages follow in order. A `Gap` comes only when the history could not
    /// cover them (too old, or the history was lost); the messages the history still holds
    /// follow it, then live ones.
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
    /// The last position seen (of a message, the `#subscribe` reply or a `#gap` notice).
    pub(crate) position: Option<Position>,
    /// The position the `#subscribe` on its way asks to recover from, until its reply or a
    /// `#gap` notice for the channel.
    pub(crate) recovering: Option<Position>,
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
            position: None,
            recovering: None,
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

    /// Whether a resubscribe can ask the server for what was missed: a position is known and the
    /// app's subscription data (if any) is an object the `recover` field can be added to.
    pub(crate) fn can_recover(&self) -> bool {
        self.position.is_some()
            && self
                .options
                .data
                .as_deref()
                .is_none_or(|d| d.get().trim_start().starts_with('{'))
    }

    /// A position was seen: moves the channel's position (forward within an epoch).
    pub(crate) fn seen(&mut self, position: &Position) {
        advance(&mut self.position, position);
    }

    /// The server confirmed the subscription with `reply` (the position it continues from, if
    /// the channel has a history). Delivers a `Gap` when a recovery was asked for and the server
    /// continues from elsewhere without having sent a `#gap` notice.
    pub(crate) fn subscribed(&mut self, reply: Option<Position>) {
        if let Some(asked) = self.recovering.take()
            && reply.as_ref() != Some(&asked)
        {
            tracing::debug!(?asked, ?reply, "the server did not resume where asked");
            self.deliver(&ChannelEvent::Gap);
        }
        match reply {
            Some(p) => self.seen(&p),
            // The channel has no history (now): nothing to recover from next time.
            None => self.position = None,
        }
    }

    /// A `#gap` notice for the channel, with the position what follows continues from.
    pub(crate) fn gap(&mut self, position: Option<Position>) {
        self.recovering = None;
        if let Some(p) = &position {
            self.seen(p);
        }
        self.deliver(&ChannelEvent::Gap);
    }
}

/// A subscription: a [`Stream`] of [`ChannelEvent`]s, from
/// [`Client::subscribe`](crate::Client::subscribe).
///
/// Messages arrive in the order the server sent them. After a reconnect the client subscribes
/// again by itself and the stream goes on: on a channel the server keeps a history of, with the
/// messages missed meanwhile (recovered from the last [`Position`] seen), or a
/// [`ChannelEvent::Gap`] when the history no longer holds them; on other channels with a
/// [`ChannelEvent::Gap`] where the connection was lost. Dropping the handle does not unsubscribe (other handles of the same channel may live);
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

    /// The last [`Position`] seen on this channel (of a message, of the server's reply to the
    /// subscribe, or of a gap notice); `None` when the server keeps no history of the channel.
    /// The next automatic resubscribe asks to recover from it.
    pub fn position(&self) -> Option<Position> {
        self.client
            .inner
            .state
            .lock()
            .channels
            .get(&self.name)
            .and_then(|e| e.position.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn positions_move_forward_within_an_epoch() {
        let mut current = None;
        advance(&mut current, &Position::new(5, "a"));
        assert_eq!(current, Some(Position::new(5, "a")));
        advance(&mut current, &Position::new(6, "a"));
        assert_eq!(current, Some(Position::new(6, "a")));
        // Backwards within the epoch: ignored.
        advance(&mut current, &Position::new(3, "a"));
        assert_eq!(current, Some(Position::new(6, "a")));
        advance(&mut current, &Position::new(6, "a"));
        assert_eq!(current, Some(Position::new(6, "a")));
    }

    #[test]
    fn another_epoch_replaces_the_position() {
        let mut current = Some(Position::new(900, "a"));
        advance(&mut current, &Position::new(2, "b"));
        assert_eq!(current, Some(Position::new(2, "b")));
        // Even back to an older epoch name: it is another epoch than the current one.
        advance(&mut current, &Position::new(1, "a"));
        assert_eq!(current, Some(Position::new(1, "a")));
    }

    #[test]
    fn positions_are_read_leniently() {
        let pos = |text: &str| {
            let raw = raw(text);
            Positioned::parse(Some(&raw)).and_then(|p| p.position())
        };
        assert_eq!(
            pos(r#"{"channel":"c","data":1,"offset":7,"epoch":"e"}"#),
            Some(Position::new(7, "e"))
        );
        assert_eq!(
            pos(r#"{"epoch":"e\"1","offset":0}"#),
            Some(Position::new(0, "e\"1"))
        );
        assert_eq!(pos(r#"{"channel":"c","data":1}"#), None);
        assert_eq!(pos(r#"{"channel":"c","offset":7}"#), None);
        assert_eq!(pos(r#"{"channel":"c","offset":-1,"epoch":"e"}"#), None);
        assert_eq!(pos(r#"{"channel":"c","offset":1.5,"epoch":"e"}"#), None);
        assert_eq!(pos(r#"{"channel":"c","offset":"7","epoch":"e"}"#), None);
        assert_eq!(pos(r#"{"channel":"c","offset":7,"epoch":3}"#), None);
        assert_eq!(pos(r#"["c",null,7,"e"]"#), None);
        assert_eq!(pos(r#""c""#), None);
        assert!(Positioned::parse(None).is_none());
        // The channel and data of a publish, escapes included.
        let text = raw(r#"{"channel":"a\"b","data":{"x":[1]},"offset":1,"epoch":"e"}"#);
        let p = Positioned::parse(Some(&text)).unwrap();
        assert_eq!(p.channel.as_deref(), Some("a\"b"));
        assert_eq!(p.data.map(RawValue::get), Some(r#"{"x":[1]}"#));
    }

    #[test]
    fn recover_is_merged_into_the_apps_data() {
        let at = Position::new(42, "ep\"och");
        let merged = |app: Option<&str>| {
            let app = app.map(raw);
            recover_data(app.as_deref(), &at).map(|d| d.get().to_owned())
        };
        let recover = r#""recover":{"offset":42,"epoch":"ep\"och"}"#;
        assert_eq!(merged(None), Some(format!("{{{recover}}}")));
        assert_eq!(merged(Some("{}")), Some(format!("{{{recover}}}")));
        assert_eq!(
            merged(Some(r#"{"room":"a\nb","n":1.50,"deep":{"recover":1}}"#)),
            Some(format!(
                r#"{{"room":"a\nb","n":1.50,"deep":{{"recover":1}},{recover}}}"#
            ))
        );
        // The app's own `recover` is replaced, never duplicated.
        assert_eq!(
            merged(Some(r#"{"recover":{"offset":1,"epoch":"old"},"x":true}"#)),
            Some(format!(r#"{{"x":true,{recover}}}"#))
        );
        // Data that is no object cannot carry it.
        assert_eq!(merged(Some(r#""token""#)), None);
        assert_eq!(merged(Some("[1]")), None);
        assert_eq!(merged(Some("null")), None);
        // Whatever it gives is valid JSON.
        let v: serde_json::Value =
            serde_json::from_str(&merged(Some(r#"{"a":"\u00e9"}"#)).unwrap()).unwrap();
        assert_eq!(v["a"], "é");
        assert_eq!(v["recover"]["offset"], 42);
    }
}
