//! The HTTP request that opened a socket, and the client's address.

use std::net::{IpAddr, SocketAddr};

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
}

impl HandshakeRequest {
    /// A copy of the request of `parts`, with the addresses from its extensions.
    ///
    /// The URI and the header values are copied into allocations of their own: hyper's are
    /// slices of its read buffer (8 KiB or more), which a socket holding them would keep alive
    /// for its whole life.
    pub(crate) fn copy_from(parts: &http::request::Parts) -> Self {
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            let name =
                HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
            let mut copy =
                HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
            copy.set_sensitive(value.is_sensitive());
            headers.append(name, copy);
        }
        HandshakeRequest {
            method: parts.method.clone(),
            uri: Uri::try_from(parts.uri.to_string()).unwrap_or_else(|_| parts.uri.clone()),
            headers,
            client_addr: parts.extensions.get::<ClientAddr>().map(|a| a.0),
            peer_addr: parts.extensions.get::<PeerAddr>().map(|a| a.0),
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
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"'))
    }
}
