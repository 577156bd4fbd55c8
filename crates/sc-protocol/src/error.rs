//! Error objects as they travel on the wire (sc-errors 3.0.0).
//!
//! An error is sent dehydrated: `{"message":M,"name":N,...extra fields}`. Any name is allowed
//! (applications use their own, such as `BadRequest`); [`ErrorName`] lists the ones SocketCluster
//! itself uses.
//!
//! ```
//! use sc_protocol::{ErrorName, ScError};
//!
//! let err = ScError::new(ErrorName::TimeoutError, "Event response for 'x' timed out");
//! assert_eq!(
//!     err.to_json(),
//!     r#"{"message":"Event response for 'x' timed out","name":"TimeoutError"}"#
//! );
//! let app = ScError::new("BadRequest", "fail requested").with("code", 7);
//! assert_eq!(app.to_json(), r#"{"message":"fail requested","name":"BadRequest","code":7}"#);
//! ```

use std::borrow::Cow;
use std::fmt;

use bytes::BufMut;
use serde_json::{Map, Value};

use crate::encode::put_str;

/// The error names of sc-errors 3.0.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorName {
    /// An expired token (extra field `expiry`); a bad token.
    AuthTokenExpiredError,
    /// A token that fails verification; a bad token.
    AuthTokenInvalidError,
    /// A token used before its `nbf` (extra field `date`); not a bad token.
    AuthTokenNotBeforeError,
    /// Any other token failure; a bad token.
    AuthTokenError,
    /// A generic auth failure.
    AuthError,
    /// Middleware blocked an action without an error (extra field `type`).
    SilentMiddlewareBlockedError,
    /// A reserved event with a malformed payload, or an action that is not allowed.
    InvalidActionError,
    /// Bad arguments.
    InvalidArgumentsError,
    /// Bad options.
    InvalidOptionsError,
    /// A malformed message.
    InvalidMessageError,
    /// A protocol error (extra field `code`).
    SocketProtocolError,
    /// A server-side protocol error.
    ServerProtocolError,
    /// An HTTP server error.
    HTTPServerError,
    /// A limit was reached.
    ResourceLimitError,
    /// An ack timed out.
    TimeoutError,
    /// The connection failed (extra fields `type`, `code`, `reason`).
    BadConnectionError,
    /// The broker failed.
    BrokerError,
    /// A process exited (extra field `code`).
    ProcessExitError,
    /// An unknown error.
    UnknownError,
}

impl ErrorName {
    /// Every name, in the order sc-errors defines them.
    pub const ALL: [ErrorName; 19] = [
        ErrorName::AuthTokenExpiredError,
        ErrorName::AuthTokenInvalidError,
        ErrorName::AuthTokenNotBeforeError,
        ErrorName::AuthTokenError,
        ErrorName::AuthError,
        ErrorName::SilentMiddlewareBlockedError,
        ErrorName::InvalidActionError,
        ErrorName::InvalidArgumentsError,
        ErrorName::InvalidOptionsError,
        ErrorName::InvalidMessageError,
        ErrorName::SocketProtocolError,
        ErrorName::ServerProtocolError,
        ErrorName::HTTPServerError,
        ErrorName::ResourceLimitError,
        ErrorName::TimeoutError,
        ErrorName::BadConnectionError,
        ErrorName::BrokerError,
        ErrorName::ProcessExitError,
        ErrorName::UnknownError,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorName::AuthTokenExpiredError => "AuthTokenExpiredError",
            ErrorName::AuthTokenInvalidError => "AuthTokenInvalidError",
            ErrorName::AuthTokenNotBeforeError => "AuthTokenNotBeforeError",
            ErrorName::AuthTokenError => "AuthTokenError",
            ErrorName::AuthError => "AuthError",
            ErrorName::SilentMiddlewareBlockedError => "SilentMiddlewareBlockedError",
            ErrorName::InvalidActionError => "InvalidActionError",
            ErrorName::InvalidArgumentsError => "InvalidArgumentsError",
            ErrorName::InvalidOptionsError => "InvalidOptionsError",
            ErrorName::InvalidMessageError => "InvalidMessageError",
            ErrorName::SocketProtocolError => "SocketProtocolError",
            ErrorName::ServerProtocolError => "ServerProtocolError",
            ErrorName::HTTPServerError => "HTTPServerError",
            ErrorName::ResourceLimitError => "ResourceLimitError",
            ErrorName::TimeoutError => "TimeoutError",
            ErrorName::BadConnectionError => "BadConnectionError",
            ErrorName::BrokerError => "BrokerError",
            ErrorName::ProcessExitError => "ProcessExitError",
            ErrorName::UnknownError => "UnknownError",
        }
    }

    /// The name for a wire string, if it is one of sc-errors' names.
    pub fn from_name(name: &str) -> Option<ErrorName> {
        ErrorName::ALL.into_iter().find(|n| n.as_str() == name)
    }

    /// For the auth token errors: whether socketcluster treats the token as bad (the server then
    /// deauthenticates the socket).
    pub fn is_bad_token(self) -> bool {
        matches!(
            self,
            ErrorName::AuthTokenExpiredError
                | ErrorName::AuthTokenInvalidError
                | ErrorName::AuthTokenError
        )
    }
}

impl From<ErrorName> for Cow<'static, str> {
    fn from(name: ErrorName) -> Self {
        Cow::Borrowed(name.as_str())
    }
}

impl fmt::Display for ErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error object: a name, a message and any extra fields, sent as
/// `{"message":..,"name":..,...extra}` like sc-errors' `dehydrateError`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScError {
    /// The error's name, e.g. `TimeoutError` or an application's own.
    pub name: Cow<'static, str>,
    /// The human-readable message.
    pub message: String,
    /// Extra enumerable fields (`expiry`, `type`, `code`, `isBadToken`, ...), in insertion order
    /// as far as serde_json's map keeps it.
    pub extra: Map<String, Value>,
}

impl ScError {
    /// The message sc-errors' `hydrateError` gives an error object whose `message` is no string.
    pub const INVALID_MESSAGE_FORMAT: &'static str = "Invalid error message format";

    /// An error with `name` and `message` and no extra fields.
    pub fn new(name: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ScError {
            name: name.into(),
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// Adds an extra field.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The `SilentMiddlewareBlockedError` a client gets when middleware of type `middleware`
    /// (`inbound`, `outbound`, `handshake`, `inboundRaw`) blocks an action of type `action`
    /// without giving an error.
    pub fn silent_block(action: &str, middleware: &str) -> Self {
        ScError::new(
            ErrorName::SilentMiddlewareBlockedError,
            format!("The {action} AGAction was blocked by {middleware} middleware"),
        )
        .with("type", middleware)
    }

    /// Appends the dehydrated JSON object to any [`BufMut`] (a `Vec<u8>`, a `BytesMut`, a
    /// transport's write buffer): `{"message":M,"name":N,...extra}`, the extra fields in the
    /// order of [`extra`](Self::extra), leaving out any named `message` or `name`.
    pub fn put_json<B: BufMut + ?Sized>(&self, buf: &mut B) {
        buf.put_slice(b"{\"message\":");
        put_str(buf, &self.message);
        buf.put_slice(b",\"name\":");
        put_str(buf, &self.name);
        for (k, v) in &self.extra {
            if k == "message" || k == "name" {
                continue;
            }
            buf.put_u8(b',');
            put_str(buf, k);
            buf.put_u8(b':');
            // Writing a `Value` into a growable buffer cannot fail.
            let _ = serde_json::to_writer((&mut *buf).writer(), v);
        }
        buf.put_u8(b'}');
    }

    /// Appends the dehydrated JSON object (the `Vec` form of [`put_json`](Self::put_json)).
    #[inline]
    pub fn write_json(&self, buf: &mut Vec<u8>) {
        self.put_json(buf);
    }

    /// The dehydrated JSON object as a string.
    pub fn to_json(&self) -> String {
        let mut buf = Vec::with_capacity(64 + self.message.len());
        self.write_json(&mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Rebuilds an error from its wire form (sc-errors `hydrateError`). A JSON object gives its
    /// `name` when that is a string (else `Error`), its `message` when that is a string (else
    /// [`INVALID_MESSAGE_FORMAT`](Self::INVALID_MESSAGE_FORMAT), as sc-errors does) and the other
    /// fields as extras. A JSON string becomes an error named `Error` with that message; any other
    /// JSON value, or text that is no JSON, an error named `Error` whose message is the text.
    pub fn from_json(json: &str) -> Self {
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(mut map)) => {
                let name = match map.remove("name") {
                    Some(Value::String(s)) => Cow::Owned(s),
                    _ => Cow::Borrowed("Error"),
                };
                let message = match map.remove("message") {
                    Some(Value::String(s)) => s,
                    _ => Self::INVALID_MESSAGE_FORMAT.to_owned(),
                };
                ScError {
                    name,
                    message,
                    extra: map,
                }
            }
            Ok(Value::String(s)) => ScError::new("Error", s),
            _ => ScError::new("Error", json.trim().to_owned()),
        }
    }
}

impl fmt::Display for ScError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for ScError {}
