//! The transport seam: how a socket's task reads and writes whole messages.
//!
//! The socket state machine (the connection task) works on messages, never on a wire format: a
//! [`Transport`] hands it each complete inbound message (text or binary), queues the frames it
//! writes and flushes them in batches, and carries a close with a code and a reason. The
//! WebSocket framing and the engine.io sessions each implement it directly, and so can code
//! outside this crate (a test, or a connection a proxy forwards): give the transport to
//! [`ScHandle::accept`](crate::ScHandle::accept) and it becomes a socket with the same
//! handlers, middleware, auth, exchange and limits as any other.
//!
//! ```
//! use std::collections::VecDeque;
//! use std::task::{Context, Poll};
//!
//! use bytes::Bytes;
//! use sc_worker::transport::{Incoming, Transport, TransportError};
//!
//! /// A transport over two queues: what the test feeds in, and what the socket wrote.
//! struct Script {
//!     input: VecDeque<String>,
//!     output: Vec<Bytes>,
//! }
//!
//! impl Transport for Script {
//!     fn poll_recv(&mut self, _cx: &mut Context<'_>) -> Poll<Result<Incoming, TransportError>> {
//!         Poll::Ready(match self.input.pop_front() {
//!             Some(text) => Ok(Incoming::Text(Bytes::from(text))),
//!             None => Ok(Incoming::Closed(1000, String::new())),
//!         })
//!     }
//!     fn send(&mut self, message: Bytes) {
//!         self.output.push(message);
//!     }
//!     fn has_pending(&self) -> bool {
//!         false
//!     }
//!     fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
//!         Poll::Ready(Ok(()))
//!     }
//!     fn close(&mut self, _code: u16, _reason: &str) {}
//! }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::io;
use std::task::{Context, Poll};

use bytes::Bytes;

pub(crate) mod ws;

pub use ws::WsStream;

/// What a transport read from the client.
#[derive(Debug)]
#[non_exhaustive]
pub enum Incoming {
    /// A complete text message (one SocketCluster frame). Its bytes are checked to be UTF-8 by
    /// the socket (a text message that is not closes it with 1007).
    Text(Bytes),
    /// A complete binary message (read as text when it is UTF-8, otherwise ignored, as
    /// socketcluster-server does).
    Binary(Bytes),
    /// Traffic of the transport itself (a WebSocket ping or pong): the client is alive.
    Alive,
    /// The client closed the transport with this code (1005 when it gave none) and reason. The
    /// transport has answered the close already, if its protocol answers closes.
    Closed(u16, String),
}

/// Why a transport stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransportError {
    /// The client broke the transport's protocol, or must be dropped: the socket closes with
    /// this code and reason (sent to the client when the transport can still send).
    Protocol(u16, Cow<'static, str>),
    /// The connection ended or failed.
    Io(io::Error),
}

impl TransportError {
    /// A protocol error with `code` and `reason`.
    pub fn protocol(code: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        TransportError::Protocol(code, reason.into())
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Protocol(code, reason) => write!(f, "close {code}: {reason}"),
            TransportError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Io(e) => Some(e),
            TransportError::Protocol(..) => None,
        }
    }
}

impl From<io::Error> for TransportError {
    fn from(e: io::Error) -> Self {
        TransportError::Io(e)
    }
}

/// A connection that carries whole messages between a client and its socket.
///
/// The socket's task is the only user of a transport: it polls [`poll_recv`](Self::poll_recv)
/// for the next message, queues its frames with the `send` methods (each is one text message
/// for the client, a SocketCluster frame without any transport framing), writes them with
/// [`poll_flush`](Self::poll_flush) (once per burst of messages, so a transport can write many
/// frames per system call), and ends with [`close`](Self::close) and
/// [`shutdown`](Self::shutdown). Both polls must be cancel-safe: a message returned is handed
/// over, a frame not yet written stays queued.
pub trait Transport: Send + Unpin + 'static {
    /// The next inbound message or event.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, TransportError>>;

    /// Whether [`poll_recv`](Self::poll_recv) may have a message ready without waiting. The
    /// socket reads up to 64 messages in a burst while this is true, then writes its replies;
    /// `true` (the default) is always correct, `false` spares a poll that would find nothing.
    fn may_have_more(&self) -> bool {
        true
    }

    /// Queues a text message (written by the next flush).
    fn send(&mut self, message: Bytes);

    /// Queues a text message shared with other sockets (a `#publish` frame). The default clones
    /// the reference; a transport with its own write buffer may copy small messages instead.
    fn send_shared(&mut self, message: &Bytes) {
        self.send(message.clone());
    }

    /// Queues a text message built in a `Vec`.
    fn send_vec(&mut self, message: Vec<u8>) {
        self.send(Bytes::from(message));
    }

    /// Queues the reply `{"rid":rid[,"data":data]}` to an invoke (`data` is one JSON value).
    /// The default encodes it with [`sc_protocol::encode::put_response`]; a transport with a
    /// write buffer can encode it in place.
    fn send_response(&mut self, rid: u64, data: Option<&[u8]>) {
        let mut buf = Vec::with_capacity(sc_protocol::encode::response_len(
            rid,
            data.map(<[u8]>::len),
        ));
        sc_protocol::encode::put_response(&mut buf, rid, data);
        self.send_vec(buf);
    }

    /// A hint that frames of about `additional` bytes in all are about to be queued.
    fn reserve(&mut self, additional: usize) {
        let _ = additional;
    }

    /// Whether queued frames wait for a flush.
    fn has_pending(&self) -> bool;

    /// Writes every queued frame. An error ends the socket (a [`TransportError::Protocol`]
    /// with its code, an I/O error with 1006).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>>;

    /// Queues the server's close with `code` and `reason` (at most 123 bytes): nothing is sent
    /// after it. The socket then flushes, bounded in time, and calls
    /// [`shutdown`](Self::shutdown).
    fn close(&mut self, code: u16, reason: &str);

    /// Ends the transport after a close, either side's: waits, for at most a couple of
    /// seconds, for the client to acknowledge the server's close, and releases the connection.
    /// The socket bounds it in time too. The default does nothing.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send + '_ {
        std::future::ready(())
    }
}
