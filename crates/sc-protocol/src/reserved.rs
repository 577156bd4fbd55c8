//! The reserved `#` events of protocol v2 as typed values.
//!
//! ```
//! use sc_protocol::{decode, Frame, Packet, Reserved};
//!
//! let Frame::Packet(Packet::Invoke { event, data, .. }) =
//!     decode(r##"{"event":"#subscribe","data":{"channel":"news","waitForAuth":true},"cid":2}"##)
//! else { unreachable!() };
//! match Reserved::parse(&event, data) {
//!     Some(Ok(Reserved::Subscribe { channel, wait_for_auth, .. })) => {
//!         assert_eq!((&*channel, wait_for_auth), ("news", true));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::decode::{json_str, present};

/// `#handshake`.
pub const HANDSHAKE: &str = "#handshake";
/// `#subscribe`.
pub const SUBSCRIBE: &str = "#subscribe";
/// `#unsubscribe`.
pub const UNSUBSCRIBE: &str = "#unsubscribe";
/// `#publish`.
pub const PUBLISH: &str = "#publish";
/// `#authenticate`.
pub const AUTHENTICATE: &str = "#authenticate";
/// `#setAuthToken`.
pub const SET_AUTH_TOKEN: &str = "#setAuthToken";
/// `#removeAuthToken`.
pub const REMOVE_AUTH_TOKEN: &str = "#removeAuthToken";
/// `#kickOut`.
pub const KICK_OUT: &str = "#kickOut";

/// A reserved event with its payload decoded. Other `#`-names are ordinary events in protocol v2.
#[derive(Debug, Clone)]
pub enum Reserved<'a> {
    /// `#handshake` (client to server, an invoke): `{"authToken": <jwt|null>}`.
    Handshake {
        /// The signed token the client holds, if any.
        auth_token: Option<Cow<'a, str>>,
    },
    /// `#subscribe` (client to server, an invoke): `{"channel":C[,"waitForAuth":true][,"data":X]}`.
    Subscribe {
        /// The channel name.
        channel: Cow<'a, str>,
        /// Whether the client only sends this once authenticated.
        wait_for_auth: bool,
        /// Optional subscription data for middleware.
        data: Option<&'a RawValue>,
    },
    /// `#unsubscribe` (client to server): the data is the bare channel name.
    Unsubscribe {
        /// The channel name.
        channel: Cow<'a, str>,
    },
    /// `#publish` (both directions): `{"channel":C,"data":X}`.
    Publish {
        /// The channel name.
        channel: Cow<'a, str>,
        /// The message; `None` when absent.
        data: Option<&'a RawValue>,
    },
    /// `#authenticate` (client to server, an invoke): the data is the signed token.
    Authenticate {
        /// The token, or `None` when the data is not a string (which fails verification).
        token: Option<Cow<'a, str>>,
    },
    /// `#setAuthToken` (server to client): `{"token":T}`.
    SetAuthToken {
        /// The signed token.
        token: Cow<'a, str>,
    },
    /// `#removeAuthToken` (both directions), no data.
    RemoveAuthToken,
    /// `#kickOut` (server to client): `{"channel":C,"message":M}`.
    KickOut {
        /// The channel the socket was removed from.
        channel: Cow<'a, str>,
        /// The optional message.
        message: Option<&'a RawValue>,
    },
}

fn raw_text(raw: Option<&RawValue>) -> Option<&str> {
    raw.map(RawValue::get)
}

/// Payloads compare by their JSON text.
impl PartialEq for Reserved<'_> {
    fn eq(&self, other: &Self) -> bool {
        use Reserved as R;
        match (self, other) {
            (R::Handshake { auth_token: a }, R::Handshake { auth_token: b })
            | (R::Authenticate { token: a }, R::Authenticate { token: b }) => a == b,
            (
                R::Subscribe {
                    channel,
                    wait_for_auth,
                    data,
                },
                R::Subscribe {
                    channel: c2,
                    wait_for_auth: w2,
                    data: d2,
                },
            ) => channel == c2 && wait_for_auth == w2 && raw_text(*data) == raw_text(*d2),
            (R::Unsubscribe { channel: a }, R::Unsubscribe { channel: b })
            | (R::SetAuthToken { token: a }, R::SetAuthToken { token: b }) => a == b,
            (
                R::Publish { channel, data },
                R::Publish {
                    channel: c2,
                    data: d2,
                },
            )
            | (
                R::KickOut {
                    channel,
                    message: data,
                },
                R::KickOut {
                    channel: c2,
                    message: d2,
                },
            ) => channel == c2 && raw_text(*data) == raw_text(*d2),
            (R::RemoveAuthToken, R::RemoveAuthToken) => true,
            _ => false,
        }
    }
}

impl Eq for Reserved<'_> {}

/// A reserved event whose payload is malformed: the server answers an `InvalidActionError`.
///
/// socketcluster-server v20 answers a `#subscribe` or `#publish` whose data has no string
/// `channel`, and an `#unsubscribe` whose data is no string, with an `InvalidActionError` (in the
/// response when the packet was an invoke). A client ignores a malformed `#kickOut`, and answers a
/// `#setAuthToken` invoke without token data with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidAction {
    /// The reserved event name.
    pub event: &'static str,
    /// What was wrong with it: the error message socketcluster v20 gives, e.g.
    /// `Subscribe channel name was malformatted`.
    pub reason: &'static str,
}

impl InvalidAction {
    /// A `#handshake` without a `cid`: socketcluster-server emits this error and closes the
    /// socket with 4008 ([`CloseCode::HANDSHAKE_REJECTED`](crate::CloseCode::HANDSHAKE_REJECTED)).
    pub const HANDSHAKE_WITHOUT_CID: InvalidAction = InvalidAction {
        event: HANDSHAKE,
        reason: "Handshake request was malformatted",
    };
    /// An `#authenticate` without a `cid`: socketcluster-server emits this error and closes the
    /// socket with 4008.
    pub const AUTHENTICATE_WITHOUT_CID: InvalidAction = InvalidAction {
        event: AUTHENTICATE,
        reason: "Authenticate request was malformatted",
    };
    /// A `#publish` from a client when the server does not allow client publishes
    /// (`allowClientPublish: false`).
    pub const PUBLISH_DISABLED: InvalidAction = InvalidAction {
        event: PUBLISH,
        reason: "Client publish feature is disabled",
    };

    /// The message socketcluster-server v20 gives (the [`reason`](Self::reason)). The v20
    /// messages do not name the socket, so `socket_id` is not used.
    pub fn message(&self, socket_id: &str) -> String {
        let _ = socket_id;
        self.reason.to_owned()
    }

    /// The error object for the socket with id `socket_id`: an `InvalidActionError`, or for a
    /// `#setAuthToken` the `InvalidMessageError` socketcluster-client answers with.
    pub fn to_error(&self, socket_id: &str) -> crate::ScError {
        let name = if self.event == SET_AUTH_TOKEN {
            crate::ErrorName::InvalidMessageError
        } else {
            crate::ErrorName::InvalidActionError
        };
        crate::ScError::new(name, self.message(socket_id))
    }
}

impl fmt::Display for InvalidAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.event, self.reason)
    }
}

impl std::error::Error for InvalidAction {}

/// The fields of a reserved event's object payload, each kept as raw JSON. A field that is present
/// with the value `null` is `Some("null")`, so `{"channel":"c","data":null}` forwards `data:null`.
#[derive(Deserialize)]
struct ChannelData<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present", rename = "waitForAuth")]
    wait_for_auth: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    message: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present", rename = "authToken")]
    auth_token: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
}

fn object(data: Option<&RawValue>) -> Option<ChannelData<'_>> {
    let data = data?;
    if !data.get().starts_with('{') {
        return None;
    }
    serde_json::from_str(data.get()).ok()
}

impl<'a> Reserved<'a> {
    /// Decodes a reserved event. `None` when `event` is no reserved name; `Some(Err(..))` when it is
    /// one but its payload is malformed in a way socketcluster-server rejects with an
    /// `InvalidActionError`.
    pub fn parse(event: &str, data: Option<&'a RawValue>) -> Option<Result<Self, InvalidAction>> {
        let invalid = |event, reason| Some(Err(InvalidAction { event, reason }));
        Some(Ok(match event {
            HANDSHAKE => Reserved::Handshake {
                auth_token: object(data).and_then(|o| o.auth_token).and_then(json_str),
            },
            SUBSCRIBE => {
                let Some((channel, o)) =
                    object(data).and_then(|o| Some((o.channel.and_then(json_str)?, o)))
                else {
                    return invalid(SUBSCRIBE, "Subscribe channel name was malformatted");
                };
                Reserved::Subscribe {
                    channel,
                    wait_for_auth: o.wait_for_auth.is_some_and(|w| w.get() == "true"),
                    data: o.data,
                }
            }
            UNSUBSCRIBE => match data.and_then(json_str) {
                Some(channel) => Reserved::Unsubscribe { channel },
                None => return invalid(UNSUBSCRIBE, "Unsubscribe channel name was malformatted"),
            },
            PUBLISH => {
                let Some((channel, o)) =
                    object(data).and_then(|o| Some((o.channel.and_then(json_str)?, o)))
                else {
                    return invalid(PUBLISH, "Publish channel name was malformatted");
                };
                Reserved::Publish {
                    channel,
                    data: o.data,
                }
            }
            AUTHENTICATE => Reserved::Authenticate {
                token: data.and_then(json_str),
            },
            SET_AUTH_TOKEN => match object(data).and_then(|o| o.token).and_then(json_str) {
                Some(token) => Reserved::SetAuthToken { token },
                None => {
                    return invalid(
                        SET_AUTH_TOKEN,
                        "No token data provided by #setAuthToken event",
                    );
                }
            },
            REMOVE_AUTH_TOKEN => Reserved::RemoveAuthToken,
            KICK_OUT => {
                let Some((channel, o)) =
                    object(data).and_then(|o| Some((o.channel.and_then(json_str)?, o)))
                else {
                    return invalid(KICK_OUT, "Kick out channel name was malformatted");
                };
                Reserved::KickOut {
                    channel,
                    message: o.message,
                }
            }
            _ => return None,
        }))
    }
}
