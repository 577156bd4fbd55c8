//! The crate's error type.

/// An error from a [`Store`](crate::Store) operation.
///
/// The `Display` text is for people and is not stable; match on the variants instead.
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
    /// The connection to a store failed or was lost; the operation may or may not have run.
    #[error("store connection failed")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store (or the cluster client) was shut down.
    #[error("the store is closed")]
    Closed,
}

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        if e.code() == Some("WRONGTYPE") {
            Error::WrongType
        } else if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            Error::Connection(Box::new(e))
        } else if let Some(detail) = e.detail() {
            Error::Reply(format!("{} {detail}", e.code().unwrap_or("ERR")))
        } else {
            Error::Connection(Box::new(e))
        }
    }
}
