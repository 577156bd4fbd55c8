//! Middleware stages: each may allow an action, transform its data, or block it.
//!
//! Every stage holds a stack: each builder call adds one middleware, and an action goes through
//! all of them in registration order, each getting what the one before returned; the first block
//! stops it. An inbound middleware sees the kinds it was registered for (all for
//! [`inbound`](crate::ScServerBuilder::inbound), the listed ones for
//! [`inbound_for`](crate::ScServerBuilder::inbound_for)) and the others pass it by.
//!
//! | stage | builder method | action | a block gives |
//! |---|---|---|---|
//! | handshake (HTTP) | [`crate::ScServerBuilder::handshake_ws`] | [`HandshakeWsAction`] (the upgrade request) | HTTP 401 with the error's message |
//! | handshake (SC) | [`crate::ScServerBuilder::handshake_sc`] | [`HandshakeAction`] | the `#handshake` answered with the error, then close with its `statusCode` field or 4008 |
//! | inbound raw | [`crate::ScServerBuilder::inbound_raw`] | [`RawAction`] | the message is dropped silently |
//! | inbound | [`crate::ScServerBuilder::inbound`] | [`InboundAction`] (transmit, invoke, subscribe, publishIn, authenticate) | invokes, subscribes and invoke-publishes are answered with the error (or `SilentMiddlewareBlockedError`); transmits are dropped |
//! | outbound | [`crate::ScServerBuilder::outbound`] | [`OutboundAction`] (publishOut) | that socket does not get that publish |
//!
//! Middleware of one socket runs in arrival order, one action at a time, before the action's
//! handler: keep it quick (it holds up that socket's later messages, as in socketcluster-server).

use std::sync::Arc;

use sc_protocol::ScError;

use crate::data::Data;
use crate::request::HandshakeRequest;
use crate::socket::ScSocket;

/// Why middleware stopped an action: with an error the client sees, or silently (the client of
/// an invoke then gets a `SilentMiddlewareBlockedError`).
#[derive(Debug, Clone, Default)]
pub struct Blocked(pub(crate) Option<ScError>);

impl Blocked {
    /// A block without an error.
    pub fn silent() -> Self {
        Blocked(None)
    }

    /// A block with the error the client receives.
    pub fn error(error: ScError) -> Self {
        Blocked(Some(error))
    }

    /// The error, if any.
    pub fn as_error(&self) -> Option<&ScError> {
        self.0.as_ref()
    }

    /// The body of the HTTP 401 that a `handshake_ws` block answers.
    pub(crate) fn into_http_message(self) -> String {
        self.0.map(|e| e.message).unwrap_or_else(|| {
            "The handshakeWS AGAction was blocked by handshake middleware".to_owned()
        })
    }

    pub(crate) fn into_error(self, action: &str, middleware: &str) -> ScError {
        self.0
            .unwrap_or_else(|| ScError::silent_block(action, middleware))
    }
}

impl From<ScError> for Blocked {
    fn from(e: ScError) -> Self {
        Blocked(Some(e))
    }
}

/// The kind of an inbound action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InboundKind {
    /// A transmit to a receiver (`name` is the event).
    Transmit,
    /// An invoke of a procedure (`name` is the event).
    Invoke,
    /// A `#subscribe` (`name` is the channel, `data` the subscription data).
    Subscribe,
    /// A client `#publish` (`name` is the channel, `data` the message).
    PublishIn,
    /// An `#authenticate` whose token verified (`data` is the signed token as a JSON string,
    /// `auth_token` its payload).
    Authenticate,
}

impl InboundKind {
    /// The AGAction type name (`transmit`, `invoke`, `subscribe`, `publishIn`, `authenticate`).
    pub fn as_str(self) -> &'static str {
        match self {
            InboundKind::Transmit => "transmit",
            InboundKind::Invoke => "invoke",
            InboundKind::Subscribe => "subscribe",
            InboundKind::PublishIn => "publishIn",
            InboundKind::Authenticate => "authenticate",
        }
    }
}

/// An action of the inbound stage. Return it (with `data` changed to transform) to allow it.
#[derive(Debug, Clone)]
pub struct InboundAction {
    /// What the client asked for.
    pub kind: InboundKind,
    /// The socket it came from.
    pub socket: ScSocket,
    /// The event (transmit, invoke) or channel (subscribe, publishIn); empty for authenticate.
    pub name: String,
    /// The payload; the handler (or the exchange) gets what the middleware returns.
    pub data: Option<Data>,
    /// For [`InboundKind::Authenticate`]: the verified token payload.
    pub auth_token: Option<serde_json::Value>,
}

/// The HTTP request that opens a socket (a WebSocket upgrade, or the engine.io request that
/// opens a session), before the socket exists.
#[derive(Debug)]
pub struct HandshakeWsAction {
    /// The request: URI, headers, cookies, the client's address.
    pub request: HandshakeRequest,
    /// The values the socket starts with (read them with [`ScSocket::get`]); insert into them
    /// to hand values to the socket.
    pub extensions: http::Extensions,
}

/// The SocketCluster handshake, after the token was verified.
#[derive(Debug, Clone)]
pub struct HandshakeAction {
    /// The socket (not yet open).
    pub socket: ScSocket,
    /// The verified token payload the socket will be authenticated with; set it to `None` to
    /// handshake unauthenticated.
    pub auth_token: Option<serde_json::Value>,
    /// The token error, when a token was sent and failed.
    pub auth_error: Option<ScError>,
}

/// A raw inbound message (anything but the `''` pong), before it is decoded.
#[derive(Debug, Clone)]
pub struct RawAction {
    /// The socket it came from.
    pub socket: ScSocket,
    /// The message text; return another text to transform it.
    pub message: String,
}

/// A publish about to be delivered to one subscriber.
#[derive(Debug, Clone)]
pub struct OutboundAction {
    /// The subscriber.
    pub socket: ScSocket,
    /// The channel.
    pub channel: Arc<str>,
    /// The message; this subscriber gets what the middleware returns.
    pub data: Option<Data>,
}

pub(crate) type BoxFut<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'static>>;
pub(crate) type Mw<A> = Arc<dyn Fn(A) -> BoxFut<Result<A, Blocked>> + Send + Sync>;

/// The middlewares of one stage, in registration order.
pub(crate) struct Stack<A>(Vec<Mw<A>>);

impl<A> Default for Stack<A> {
    fn default() -> Self {
        Stack(Vec::new())
    }
}

impl<A> Clone for Stack<A> {
    fn clone(&self) -> Self {
        Stack(self.0.clone())
    }
}

impl<A: Send + 'static> Stack<A> {
    pub(crate) fn push<F, Fut>(&mut self, f: F)
    where
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<A, Blocked>> + Send + 'static,
    {
        self.0.push(Arc::new(move |a| Box::pin(f(a))));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs `action` through every middleware in order; the first block stops it.
    pub(crate) async fn run(&self, mut action: A) -> Result<A, Blocked> {
        for mw in &self.0 {
            action = mw(action).await?;
        }
        Ok(action)
    }
}

/// The inbound stage: each middleware with the kinds it sees.
#[derive(Default, Clone)]
pub(crate) struct InboundStack {
    layers: Vec<([bool; KINDS], Mw<InboundAction>)>,
    /// Kinds at least one middleware sees: the others skip the stage at no cost.
    any: [bool; KINDS],
}

/// The number of [`InboundKind`]s.
const KINDS: usize = 5;

impl InboundStack {
    pub(crate) fn push<F, Fut>(&mut self, kinds: [bool; KINDS], f: F)
    where
        F: Fn(InboundAction) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<InboundAction, Blocked>> + Send + 'static,
    {
        for (any, k) in self.any.iter_mut().zip(kinds) {
            *any |= k;
        }
        self.layers.push((kinds, Arc::new(move |a| Box::pin(f(a)))));
    }

    /// The kinds list as a mask.
    pub(crate) fn mask(kinds: &[InboundKind]) -> [bool; KINDS] {
        let mut mask = [false; KINDS];
        for k in kinds {
            mask[*k as usize] = true;
        }
        mask
    }

    /// The mask of every kind.
    pub(crate) const ALL: [bool; KINDS] = [true; KINDS];

    /// Whether any middleware sees `kind`.
    #[inline]
    pub(crate) fn sees(&self, kind: InboundKind) -> bool {
        self.any[kind as usize]
    }

    /// Runs `action` through every middleware that sees its kind, in order.
    pub(crate) async fn run(&self, mut action: InboundAction) -> Result<InboundAction, Blocked> {
        let kind = action.kind as usize;
        for (kinds, mw) in &self.layers {
            if kinds[kind] {
                action = mw(action).await?;
            }
        }
        Ok(action)
    }
}

#[derive(Default, Clone)]
pub(crate) struct Middlewares {
    pub(crate) handshake_ws: Stack<HandshakeWsAction>,
    pub(crate) handshake_sc: Stack<HandshakeAction>,
    pub(crate) inbound_raw: Stack<RawAction>,
    pub(crate) inbound: InboundStack,
    pub(crate) outbound: Stack<OutboundAction>,
}
