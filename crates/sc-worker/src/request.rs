//! The HTTP request that opened a socket, and the client's address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};

/// The TCP peer of a connection, as the HTTP server saw it. [`serve`](crate::serve) puts it in
/// every request's extensions; a server of your own (axum, hyper) puts it there with
/// `req.extensions_mut().insert(PeerAddr(addr))` for the worker to know clients' addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The client's address, in every request's extensions once it passed [`ScService`]: the TCP
/// peer ([`PeerAddr`]), or, when the peer is a trusted proxy
/// ([`Config::trusted_proxies`](crate::Config::trusted_proxies)), the address the proxy
/// forwarded (PROXY protocol, `Forwarded` or `X-Forwarded-For`). Absent when the peer is not
/// known.
///
/// [`ScService`]: crate::ScService
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

/// The id of the session a request belongs to, in its extensions once it passed the
/// [`SessionLayer`](crate::SessionLayer) (from a valid cookie, or new). A socket opened by the
/// request belongs to that session; without the layer, each socket is a session of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(pub Arc<str>);

/// The HTTP request that opened a socket: the WebSocket upgrade, or the engine.io request that
/// opened the session. Kept with the socket for its life ([`ScSocket::request`]).
///
/// [`ScSocket::request`]: crate::ScSocket::request
#[derive(Debug, Clone, Default)]
pub struct HandshakeRequest {
    /// The method (`GET` for an upgrade).
    pub method: Method,
    /// The URI (path and query).
    pub uri: Uri,
    /// The headers.
    pub headers: HeaderMap,
    /// The client's address (see [`ClientAddr`]), `None` when not known.
    pub client_addr: Option<IpAddr>,
    /// The TCP peer (see [`PeerAddr`]), `None` when not known.
    pub peer_addr: Option<SocketAddr>,
    /// The session the request belongs to (see [`SessionId`](crate::SessionId)), `None` when
    /// no [`SessionLayer`](crate::SessionLayer) saw it: a socket it opens is then a session of
    /// its own.
    pub session_id: Option<Arc<str>>,
}

/// The `name=value` pairs of one `Cookie` header value (quotes around a value taken off).
///
/// ```
/// let pairs: Vec<_> = sc_worker::cookie_pairs("a=1; sid=\"abc\"").collect();
/// assert_eq!(pairs, [("a", "1"), ("sid", "abc")]);
/// ```
pub fn cookie_pairs(header_value: &str) -> impl Iterator<Item = (&str, &str)> {
    header_value
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .map(|(k, v)| (k, v.trim_matches('"')))
}

impl HandshakeRequest {
    /// The request of `parts` (headers cloned: cheap, they are reference-counted slices of
    /// the HTTP server's buffer; a socket keeps a compact copy, not this), with the addresses
    /// from its extensions.
    pub(crate) fn copy_from(parts: &http::request::Parts) -> Self {
        HandshakeRequest {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            client_addr: parts.extensions.get::<ClientAddr>().map(|a| a.0),
            peer_addr: parts.extensions.get::<PeerAddr>().map(|a| a.0),
            session_id: parts.extensions.get::<SessionId>().map(|s| s.0.clone()),
        }
    }

    /// The value of the cookie `name`, from the `Cookie` headers.
    ///
    /// ```
    /// use sc_worker::HandshakeRequest;
    ///
    /// let mut req = HandshakeRequest::default();
    /// req.headers.insert("cookie", "a=1; sid=abc; b=2".parse().unwrap());
    /// assert_eq!(req.cookie("sid"), Some("abc"));
    /// assert_eq!(req.cookie("c"), None);
    /// ```
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(cookie_pairs)
            .find_map(|(k, v)| (k == name).then_some(v))
    }
}

/// A socket's copy of its [`HandshakeRequest`], kept small for the socket's whole life: the URI
/// as text and the headers in one allocation (`name:value` lines), not a `HeaderMap` (whose
/// buckets cost several times the headers' own bytes).
#[derive(Debug, Default)]
pub(crate) struct StoredRequest {
    method: Method,
    uri: Box<str>,
    /// `name:value\n` for each header, names lower case.
    head: Box<[u8]>,
    pub(crate) client_addr: Option<IpAddr>,
    peer_addr: Option<SocketAddr>,
    pub(crate) session_id: Option<Arc<str>>,
}

impl StoredRequest {
    pub(crate) fn new(req: &HandshakeRequest) -> Self {
        let len = req
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 2)
            .sum();
        let mut head = Vec::with_capacity(len);
        for (name, value) in &req.headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.push(b':');
            head.extend_from_slice(value.as_bytes());
            head.push(b'\n');
        }
        StoredRequest {
            method: req.method.clone(),
            uri: req.uri.to_string().into_boxed_str(),
            head: head.into_boxed_slice(),
            client_addr: req.client_addr,
            peer_addr: req.peer_addr,
            session_id: req.session_id.clone(),
        }
    }

    fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.head.split(|b| *b == b'\n').filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            Some((&line[..colon], &line[colon + 1..]))
        })
    }

    /// The first value of the header `name` (any case) that is text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.lines()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The value of the cookie `name`.
    pub(crate) fn cookie(&self, name: &str) -> Option<&str> {
        self.lines()
            .filter(|(n, _)| *n == b"cookie")
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(cookie_pairs)
            .find_map(|(k, v)| (k == name).then_some(v))
    }

    /// The request as it came.
    pub(crate) fn to_request(&self) -> HandshakeRequest {
        let mut headers = HeaderMap::new();
        for (name, value) in self.lines() {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                headers.append(n, v);
            }
        }
        HandshakeRequest {
            method: self.method.clone(),
            uri: Uri::try_from(&*self.uri).unwrap_or_default(),
            headers,
            client_addr: self.client_addr,
            peer_addr: self.peer_addr,
            session_id: self.session_id.clone(),
        }
    }
}

/// The request bodies [`ScService`](crate::ScService) accepts. With the `engineio` feature (on
/// by default) the long-polling transport reads request bodies, so this is any
/// [`http_body::Body`] that is `Send + Unpin + Debug + 'static` (hyper's `Incoming`, axum's
/// `Body`, `String`, ...); without the feature it is any type.
#[cfg(feature = "engineio")]
pub trait RequestBody:
    http_body::Body<Data: Send, Error: std::fmt::Debug> + Send + Unpin + std::fmt::Debug + 'static
{
}
#[cfg(feature = "engineio")]
impl<B> RequestBody for B where
    B: http_body::Body<Data: Send, Error: std::fmt::Debug>
        + Send
        + Unpin
        + std::fmt::Debug
        + 'static
{
}
/// The request bodies [`ScService`](crate::ScService) accepts: any type (the `engineio` feature
/// is off).
#[cfg(not(feature = "engineio"))]
pub trait RequestBody {}
#[cfg(not(feature = "engineio"))]
impl<B> RequestBody for B {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_stored_request_gives_back_the_request() {
        let mut req = HandshakeRequest {
            uri: "/socketcluster/?a=1".parse().unwrap(),
            client_addr: Some("192.0.2.1".parse().unwrap()),
            ..HandshakeRequest::default()
        };
        req.headers.insert("x-tag", "one".parse().unwrap());
        req.headers
            .append("cookie", "a=1; sid=\"abc\"".parse().unwrap());
        req.headers.append("cookie", "b=2".parse().unwrap());
        req.headers
            .insert("x-bin", HeaderValue::from_bytes(b"\xff").unwrap());
        let stored = StoredRequest::new(&req);
        assert_eq!(stored.header("X-Tag"), Some("one"));
        assert_eq!(stored.header("x-bin"), None, "not text");
        assert_eq!(stored.header("missing"), None);
        assert_eq!(stored.cookie("sid"), Some("abc"));
        assert_eq!(stored.cookie("b"), Some("2"));
        assert_eq!(stored.cookie("c"), None);
        let back = stored.to_request();
        assert_eq!(back.uri, req.uri);
        assert_eq!(back.headers, req.headers);
        assert_eq!(back.client_addr, req.client_addr);
    }
}
