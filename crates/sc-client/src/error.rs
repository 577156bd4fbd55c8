//! The client's error type.

use std::time::Duration;

use sc_protocol::{CloseCode, ScError};

/// Everything that can go wrong in the client.
///
/// The `Display` text is meant for people and is not stable; match on the variants instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered an invoke (or a subscribe, or `#authenticate`) with an error object.
    #[error("the server answered with an error: {0}")]
    Remote(ScError),
    /// No answer within the ack timeout (sc-errors' `TimeoutError`).
    #[error("event response for '{event}' timed out after {timeout:?}")]
    Timeout {
        /// The event that was invoked.
        event: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The connection closed before the answer came (sc-errors' `BadConnectionError`).
    #[error("the connection closed ({code}) before the answer came: {reason}")]
    BadConnection {
        /// The close code of the connection.
        code: CloseCode,
        /// The close reason.
        reason: String,
    },
    /// The client is not connected and is not connecting, so nothing can be sent or buffered:
    /// call [`Client::connect`](crate::Client::connect) first.
    #[error("the client is closed; call connect() first")]
    Closed,
    /// The channel was unsubscribed (or kicked out) while waiting for its subscription.
    #[error("channel {channel:?} was unsubscribed")]
    Unsubscribed {
        /// The channel's name.
        channel: String,
    },
    /// The client is disconnected and its buffer of outgoing messages is full.
    #[error("the outgoing buffer is full ({capacity} messages are waiting for a connection)")]
    BufferFull {
        /// The buffer's capacity (see [`ClientBuilder::buffer_capacity`](crate::ClientBuilder::buffer_capacity)).
        capacity: usize,
    },
    /// A value could not be serialised, or a payload could not be deserialised into the asked type.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The URL or another option is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Opening the connection failed (TCP, TLS or the WebSocket upgrade).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The token store failed to load, save or remove the token.
    #[error("token store: {0}")]
    TokenStore(#[source] std::io::Error),
}

impl Error {
    /// The error object the server sent, for [`Error::Remote`].
    pub fn remote(&self) -> Option<&ScError> {
        match self {
            Error::Remote(e) => Some(e),
            _ => None,
        }
    }

    /// The sc-errors name of this error: the remote name for [`Error::Remote`], `TimeoutError`,
    /// `BadConnectionError`, or `Error` for the client-side failures.
    pub fn name(&self) -> &str {
        match self {
            Error::Remote(e) => &e.name,
            Error::Timeout { .. } => "TimeoutError",
            Error::BadConnection { .. } => "BadConnectionError",
            _ => "Error",
        }
    }
}
