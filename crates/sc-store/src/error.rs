//! The crate's error type.

/// An error from a [`Store`](crate::Store) operation.
///
/// The `Display` text is for people and is not stable; match on the variants (or use
/// [`Error::is_auth`], [`Error::is_connection`]) instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key holds a value of another kind (for example a list where a map was expected).
    #[error("the key holds a value of another kind")]
    WrongType,
    /// An argument was rejected before reaching the store (for example a zero TTL).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The store answered with an error reply.
    #[error("the store replied with an error: {0}")]
    Reply(String),
    /// The store refused our credentials: no secret given where it requires one (`NOAUTH`), a
    /// wrong one (`WRONGPASS`, `ERR invalid password`), or one given to a store that has none.
    /// Holds the store's reply (or the client library's account of it).
    #[error("the store refused our credentials ({0})")]
    Auth(String),
    /// The connection to a store failed or was lost; the operation may or may not have run.
    #[error("store connection failed")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// [`RespStore::connect`](crate::RespStore::connect) could not set up one node: `source`
    /// says why (an [`Error::Auth`], an [`Error::Connection`], ...).
    #[error("store node {node}")]
    Node {
        /// The node as configured, with any password in it masked.
        node: String,
        /// Why the node could not be used.
        #[source]
        source: Box<Error>,
    },
    /// The store (or the cluster client) was shut down.
    #[error("the store is closed")]
    Closed,
    /// The store cannot do this (for example keep channel history).
    #[error("not supported: {0}")]
    Unsupported(&'static str),
}

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the store refused our credentials ([`Error::Auth`], also inside
    /// [`Error::Node`]).
    pub fn is_auth(&self) -> bool {
        match self {
            Error::Auth(_) => true,
            Error::Node { source, .. } => source.is_auth(),
            _ => false,
        }
    }

    /// Whether the store could not be reached or the connection was lost
    /// ([`Error::Connection`], also inside [`Error::Node`]).
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Connection(_) => true,
            Error::Node { source, .. } => source.is_connection(),
            _ => false,
        }
    }

    /// The node an [`Error::Node`] is about.
    pub fn node(&self) -> Option<&str> {
        match self {
            Error::Node { node, .. } => Some(node),
            _ => None,
        }
    }

    /// Wraps `self` as an error of the node `id` (its password, if any, masked).
    pub(crate) fn at_node(self, id: &str) -> Self {
        Error::Node {
            node: mask_password(id),
            source: Box::new(self),
        }
    }
}

/// `redis://user:pw@host:port/0` → `redis://user:***@host:port/0`; anything else unchanged.
fn mask_password(id: &str) -> String {
    let Some((scheme, rest)) = id.split_once("://") else {
        return id.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return id.to_owned();
    };
    let user = rest[..at].split_once(':').map_or("", |(u, _)| u);
    let host = &rest[at + 1..];
    if rest[..at].contains(':') {
        format!("{scheme}://{user}:***@{host}")
    } else {
        // `user@host` with no password.
        id.to_owned()
    }
}

/// Whether an error reply refuses our credentials. Redis and the store server answer
/// `NOAUTH ...` to a command sent before `AUTH`, `WRONGPASS ...` to a wrong secret (Redis before
/// 6: `ERR invalid password`) and `ERR AUTH <password> called without any password
/// configured ...` to a secret sent to a server that has none.
pub(crate) fn refuses_credentials(code: &str, detail: &str) -> bool {
    match code {
        "NOAUTH" | "WRONGPASS" => true,
        "ERR" => {
            detail.starts_with("invalid password")
                || detail.starts_with("invalid username-password pair")
                || detail.contains("called without any password configured")
        }
        _ => false,
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        if e.code() == Some("WRONGTYPE") {
            Error::WrongType
        } else if e.kind() == redis::ErrorKind::AuthenticationFailed {
            Error::Auth(match e.detail() {
                Some(detail) => format!("authentication failed: {detail}"),
                None => "authentication failed".to_owned(),
            })
        } else if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            Error::Connection(Box::new(e))
        } else if let Some(detail) = e.detail() {
            let code = e.code().unwrap_or("ERR");
            let reply = format!("{code} {detail}");
            if refuses_credentials(code, detail) {
                Error::Auth(reply)
            } else {
                Error::Reply(reply)
            }
        } else {
            Error::Connection(Box::new(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of a reply `-CODE DETAIL`, as the client library reports it.
    fn server_error(code: &str, detail: &str) -> Error {
        let reply = format!("-{code} {detail}\r\n");
        match redis::parse_redis_value(reply.as_bytes()).and_then(redis::Value::extract_error) {
            Err(e) => Error::from(e),
            Ok(v) => panic!("{v:?}"),
        }
    }

    #[test]
    fn credential_refusals_are_auth_errors() {
        for (code, detail) in [
            ("NOAUTH", "Authentication required."),
            (
                "WRONGPASS",
                "invalid username-password pair or user is disabled.",
            ),
            ("ERR", "invalid password"),
            (
                "ERR",
                "AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            ),
        ] {
            let e = server_error(code, detail);
            assert!(e.is_auth(), "{code} {detail}: {e:?}");
            assert!(!e.is_connection());
            assert!(e.to_string().contains(code), "{e}");
            let at = e.at_node("127.0.0.1:6380");
            assert!(at.is_auth());
            assert_eq!(at.node(), Some("127.0.0.1:6380"));
        }
        let other = server_error("ERR", "unknown command 'FOO'");
        assert!(matches!(other, Error::Reply(_)), "{other:?}");
        assert!(!other.is_auth());
        let failed = Error::from(redis::RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        )));
        assert!(failed.is_auth(), "{failed:?}");
    }

    #[test]
    fn unreachable_is_a_connection_error() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = Error::from(redis::RedisError::from(io)).at_node("127.0.0.1:1");
        assert!(e.is_connection() && !e.is_auth(), "{e:?}");
    }

    #[test]
    fn passwords_in_node_urls_are_masked() {
        assert_eq!(mask_password("127.0.0.1:6380"), "127.0.0.1:6380");
        assert_eq!(
            mask_password("redis://127.0.0.1:6379/2"),
            "redis://127.0.0.1:6379/2"
        );
        assert_eq!(
            mask_password("redis://:hunter2@127.0.0.1:6379"),
            "redis://:***@127.0.0.1:6379"
        );
        assert_eq!(
            mask_password("redis://me:hunter2@h:1/0"),
            "redis://me:***@h:1/0"
        );
        assert_eq!(mask_password("redis://me@h:1"), "redis://me@h:1");
    }
}
