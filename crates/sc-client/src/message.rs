//! Payloads, event streams, and requests from the server.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use sc_protocol::{Cid, CloseCode, RawValue, ScError, encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::position::Position;

/// A JSON payload from the server, kept as raw JSON text until asked for a type.
///
/// A packet without `data` gives `null`.
/// Two messages are equal when their JSON texts are identical (their [`position`](Self::position)s
/// are not compared).
#[derive(Clone)]
pub struct Message {
    raw: Box<RawValue>,
    position: Option<Position>,
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.raw.get() == other.raw.get()
    }
}

impl Eq for Message {}

impl Message {
    pub(crate) fn from_raw(raw: Option<&RawValue>) -> Self {
        Message {
            raw: match raw {
                Some(raw) => raw.to_owned(),
                None => null(),
            },
            position: None,
        }
    }

    pub(crate) fn with_position(mut self, position: Option<Position>) -> Self {
        self.position = position;
        self
    }

    /// The raw JSON.
    pub fn raw(&self) -> &RawValue {
        &self.raw
    }

    /// The raw JSON, owned.
    pub fn into_raw(self) -> Box<RawValue> {
        self.raw
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.raw.get()
    }

    /// Deserialises the payload.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_str(self.raw.get())?)
    }

    /// The message's position in its channel's history: set on a channel message when the
    /// server keeps a history of the channel (its `#publish` carried `offset` and `epoch`),
    /// `None` otherwise.
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.position {
            None => write!(f, "Message({})", self.raw.get()),
            Some(p) => write!(f, "Message({} @ {}:{})", self.raw.get(), p.offset, p.epoch),
        }
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.raw.get())
    }
}

pub(crate) fn null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// Serialises `data` into raw JSON.
pub(crate) fn to_raw<T: Serialize + ?Sized>(data: &T) -> Result<Box<RawValue>, Error> {
    Ok(serde_json::value::to_raw_value(data)?)
}

/// A frame written by `sc_protocol::encode` (always UTF-8: every input was `&str`).
pub(crate) fn frame(buf: Vec<u8>) -> String {
    String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// What happens to the connection, as a stream from [`Client::events`](crate::Client::events).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// A connection attempt starts (`attempt` counts from 0 since the last open connection).
    Connecting {
        /// The attempt number.
        attempt: u32,
    },
    /// The handshake completed.
    Open {
        /// The socket id the server gave.
        id: String,
        /// Whether the server accepted the stored auth token.
        is_authenticated: bool,
        /// The server's ping timeout.
        ping_timeout: Duration,
        /// Why the server rejected the stored token, if it did.
        auth_error: Option<ScError>,
    },
    /// The connection closed, or the attempt failed (1006 for a failure to connect, 4007 for a
    /// connect timeout).
    Closed {
        /// The close code.
        code: CloseCode,
        /// The close reason.
        reason: String,
    },
    /// The client waits `delay` before connection attempt `attempt`.
    Reconnecting {
        /// The attempt about to be made.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
    },
    /// The client became authenticated (`true`) or lost its authentication (`false`).
    AuthStateChanged {
        /// The new state.
        is_authenticated: bool,
    },
}

/// The stream of [`ConnectionEvent`]s. It never lags or drops an event, and ends when the client
/// is dropped.
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: mpsc::UnboundedReceiver<ConnectionEvent>,
}

impl Events {
    /// The next item; `None` once the stream ended. (The same as `StreamExt::next`.)
    pub async fn recv(&mut self) -> Option<ConnectionEvent> {
        self.rx.recv().await
    }
}

impl Stream for Events {
    type Item = ConnectionEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The stream of transmits the server sends under one event name (from
/// [`Client::receiver`](crate::Client::receiver)).
#[derive(Debug)]
pub struct Receiver {
    pub(crate) rx: mpsc::UnboundedReceiver<Message>,
}

impl Receiver {
    /// The next item; `None` once the stream ended. (The same as `StreamExt::next`.)
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

impl Stream for Receiver {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The stream of invokes the server makes under one procedure name (from
/// [`Client::procedure`](crate::Client::procedure)).
#[derive(Debug)]
pub struct Procedure {
    pub(crate) rx: mpsc::UnboundedReceiver<Request>,
}

impl Procedure {
    /// The next item; `None` once the stream ended. (The same as `StreamExt::next`.)
    pub async fn recv(&mut self) -> Option<Request> {
        self.rx.recv().await
    }
}

impl Stream for Procedure {
    type Item = Request;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// An invoke from the server, to be answered with [`Request::end`] or [`Request::error`].
/// Dropping it sends nothing (the server's own ack timeout then fires).
#[derive(Debug)]
pub struct Request {
    pub(crate) event: String,
    pub(crate) data: Message,
    pub(crate) cid: Cid,
    pub(crate) writer: mpsc::UnboundedSender<String>,
}

impl Request {
    /// The procedure name.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The payload.
    pub fn data(&self) -> &Message {
        &self.data
    }

    /// Answers with `data`.
    pub fn end<T: Serialize + ?Sized>(self, data: &T) -> Result<(), Error> {
        let raw = to_raw(data)?;
        self.end_raw(Some(&raw))
    }

    /// Answers with raw JSON, or with no data.
    pub fn end_raw(self, data: Option<&RawValue>) -> Result<(), Error> {
        let mut buf = Vec::new();
        encode::write_response(&mut buf, self.cid, data);
        self.writer.send(frame(buf)).map_err(|_| Error::Closed)
    }

    /// Answers with an error object.
    pub fn error(self, error: &ScError) -> Result<(), Error> {
        let mut buf = Vec::new();
        encode::write_error(&mut buf, self.cid, error);
        self.writer.send(frame(buf)).map_err(|_| Error::Closed)
    }
}
