//! Client options and the builder.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tokio_rustls::rustls;

use crate::error::Error;
use crate::token::{MemoryTokenStore, TokenStore};

/// The default path of the SocketCluster endpoint, with its trailing slash.
pub const DEFAULT_PATH: &str = "/socketcluster/";

/// How the client reaches the server.
///
/// Only the plain WebSocket transport exists today. This is the extension point for the engine.io
/// transport (long-polling and WebSocket with upgrade): it will be another variant, with the same
/// client API above it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// One WebSocket connection, one SocketCluster frame per text message. The default.
    #[default]
    WebSocket,
}

/// Auto-reconnect timing: exponential backoff with jitter.
///
/// The delay before attempt `n` (counting from 0 after the last successful connection) is
/// `min(initial_delay * multiplier^n, max_delay)`, then multiplied by a random factor in
/// `[1 - jitter, 1 + jitter]`. The defaults retry a server that is back within about 2 s of
/// going away less than 1 s after it is back, and reach the 10 s ceiling after about 40 s.
/// After close codes 1005, 4000 and 4001 the first attempt is
/// immediate, as in socketcluster-client.
///
/// ```
/// use std::time::Duration;
/// use sc_client::ReconnectConfig;
///
/// let r = ReconnectConfig::default();
/// assert_eq!(r.base_delay(0), Duration::from_millis(200));
/// assert_eq!(r.base_delay(1), Duration::from_millis(260));
/// assert_eq!(r.base_delay(100), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectConfig {
    /// The delay before the first attempt. Defaults to 200 ms.
    pub initial_delay: Duration,
    /// The growth factor per failed attempt. Defaults to 1.3.
    pub multiplier: f64,
    /// The largest delay. Defaults to 10 s.
    pub max_delay: Duration,
    /// The relative random spread, from 0 (none) to 1. Defaults to 0.2 (±20 %).
    pub jitter: f64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            initial_delay: Duration::from_millis(200),
            multiplier: 1.3,
            max_delay: Duration::from_secs(10),
            jitter: 0.2,
        }
    }
}

impl ReconnectConfig {
    /// The delay before attempt `attempt`, before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.min(64)).unwrap_or(64);
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let max = self.max_delay.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
    }

    /// The delay before attempt `attempt` with jitter drawn from `unit`, a number in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = (2.0 * jitter).mul_add(unit.clamp(0.0, 1.0), 1.0 - jitter);
        self.base_delay(attempt).mul_f64(factor)
    }
}

/// The parsed endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) secure: bool,
    /// Host name or IP address, without IPv6 brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path and query, as sent in the upgrade request.
    pub(crate) path_and_query: String,
}

impl Endpoint {
    /// The `ws://` or `wss://` URI of the upgrade request.
    pub(crate) fn uri(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}{}", self.port, self.path_and_query)
    }
}

/// The resolved options of a client (see [`ClientBuilder`] for each option and its default).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) endpoint: Endpoint,
    pub(crate) ack_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) auto_reconnect: bool,
    pub(crate) reconnect: ReconnectConfig,
    pub(crate) buffer_capacity: usize,
    pub(crate) max_message_size: usize,
    pub(crate) token_store: Arc<dyn TokenStore>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) transport: Transport,
}

/// Builds a [`Client`](crate::Client). Every setter documents its default.
///
/// ```
/// use std::time::Duration;
/// use sc_client::Client;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), sc_client::Error> {
/// let client = Client::builder("ws://127.0.0.1:8000")
///     .path("/socketcluster/")
///     .query("room", "lobby")
///     .ack_timeout(Duration::from_secs(5))
///     .build()?;
/// assert!(client.id().is_none()); // not connected yet
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ClientBuilder {
    url: String,
    path: Option<String>,
    query: Vec<(String, String)>,
    ack_timeout: Duration,
    connect_timeout: Duration,
    auto_reconnect: bool,
    reconnect: ReconnectConfig,
    buffer_capacity: usize,
    max_message_size: usize,
    token_store: Option<Arc<dyn TokenStore>>,
    native_roots: bool,
    webpki_roots: bool,
    extra_roots: Vec<CertificateDer<'static>>,
    pem_error: Option<String>,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    transport: Transport,
}

impl ClientBuilder {
    pub(crate) fn new(url: &str) -> Self {
        ClientBuilder {
            url: url.to_owned(),
            path: None,
            query: Vec::new(),
            ack_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(20),
            auto_reconnect: true,
            reconnect: ReconnectConfig::default(),
            buffer_capacity: 1024,
            max_message_size: 64 << 20,
            token_store: None,
            native_roots: cfg!(feature = "native-roots"),
            webpki_roots: cfg!(all(feature = "webpki-roots", not(feature = "native-roots"))),
            extra_roots: Vec::new(),
            pem_error: None,
            tls_config: None,
            transport: Transport::WebSocket,
        }
    }

    /// The endpoint path. Defaults to the path of the URL when it has one other than `/`, and
    /// otherwise to [`DEFAULT_PATH`] (`/socketcluster/`).
    #[must_use]
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Adds a query parameter to the upgrade URL (percent-encoded; repeat to add more, keys may
    /// repeat). Parameters already in the URL are kept. Defaults to none.
    #[must_use]
    pub fn query(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((key.into(), value.into()));
        self
    }

    /// The default time to wait for the answer to an invoke. Defaults to 10 s.
    #[must_use]
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// How long opening a connection (TCP, TLS and the upgrade) may take, and how long the client
    /// waits for the first ping before the handshake reply. Defaults to 20 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether the client reconnects by itself after the connection is lost. Defaults to `true`.
    /// It never reconnects after close code 1000 or a code of 4500 and above.
    #[must_use]
    pub fn auto_reconnect(mut self, enabled: bool) -> Self {
        self.auto_reconnect = enabled;
        self
    }

    /// The backoff between reconnect attempts. Defaults to [`ReconnectConfig::default`]
    /// (200 ms ± 20 %, ×1.3 per attempt, at most 10 s).
    #[must_use]
    pub fn reconnect(mut self, reconnect: ReconnectConfig) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// How many outgoing messages (transmits, invokes, publishes) are kept while the client is
    /// connecting or waiting to reconnect; one more fails with
    /// [`Error::BufferFull`](crate::Error::BufferFull). Defaults to 1024.
    #[must_use]
    pub fn buffer_capacity(mut self, capacity: usize) -> Self {
        self.buffer_capacity = capacity;
        self
    }

    /// The largest message the client accepts from the server. Defaults to 64 MiB.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Where the auth token is kept. Defaults to a fresh [`MemoryTokenStore`].
    #[must_use]
    pub fn token_store(mut self, store: impl TokenStore) -> Self {
        self.token_store = Some(Arc::new(store));
        self
    }

    /// Shares a token store with other clients (or keeps a handle to it).
    #[must_use]
    pub fn token_store_arc(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.token_store = Some(store);
        self
    }

    /// Whether `wss://` trusts the operating system's root certificates. Defaults to `true` with the
    /// `native-roots` feature (on by default).
    #[must_use]
    pub fn native_roots(mut self, enabled: bool) -> Self {
        self.native_roots = enabled;
        self
    }

    /// Whether `wss://` trusts the bundled Mozilla roots (needs the `webpki-roots` feature).
    /// Defaults to `true` when that feature is on and `native-roots` is off.
    #[must_use]
    pub fn webpki_roots(mut self, enabled: bool) -> Self {
        self.webpki_roots = enabled;
        self
    }

    /// Also trusts the CA certificates in `pem` (one or more `CERTIFICATE` blocks), for servers
    /// with a private CA or a self-signed certificate. Defaults to none.
    #[must_use]
    pub fn add_root_ca_pem(mut self, pem: &[u8]) -> Self {
        let mut found = false;
        for cert in CertificateDer::pem_slice_iter(pem) {
            match cert {
                Ok(cert) => {
                    found = true;
                    self.extra_roots.push(cert);
                }
                Err(e) => {
                    self.pem_error = Some(format!("bad CA certificate PEM: {e}"));
                    return self;
                }
            }
        }
        if !found {
            self.pem_error = Some("no CERTIFICATE block in the CA PEM".to_owned());
        }
        self
    }

    /// Uses this rustls configuration for `wss://` as it is, instead of one built from the root
    /// options above. Defaults to none.
    #[must_use]
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls_config = Some(config);
        self
    }

    /// The transport. Defaults to [`Transport::WebSocket`], the only one so far.
    #[must_use]
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Builds the client without connecting; call [`Client::connect`](crate::Client::connect)
    /// (or use [`ClientBuilder::connect`]) to start it. Must be called within a tokio runtime
    /// only when connecting.
    pub fn build(self) -> Result<crate::Client, Error> {
        Ok(crate::Client::from_config(self.into_config()?))
    }

    /// Builds the client, connects, and waits for the first handshake to complete. If that first
    /// attempt fails the client is stopped and the error returned.
    pub async fn connect(self) -> Result<crate::Client, Error> {
        let client = self.build()?;
        client.connect_and_wait().await?;
        Ok(client)
    }

    fn into_config(self) -> Result<Config, Error> {
        if let Some(e) = self.pem_error {
            return Err(Error::Config(e));
        }
        let endpoint = parse_url(&self.url, self.path.as_deref(), &self.query)?;
        let tls = if !endpoint.secure {
            None
        } else if let Some(config) = self.tls_config {
            Some(config)
        } else {
            Some(Arc::new(tls_config(
                self.native_roots,
                self.webpki_roots,
                self.extra_roots,
            )?))
        };
        Ok(Config {
            endpoint,
            ack_timeout: self.ack_timeout,
            connect_timeout: self.connect_timeout,
            auto_reconnect: self.auto_reconnect,
            reconnect: self.reconnect,
            buffer_capacity: self.buffer_capacity,
            max_message_size: self.max_message_size,
            token_store: self
                .token_store
                .unwrap_or_else(|| Arc::new(MemoryTokenStore::default())),
            tls,
            transport: self.transport,
        })
    }
}

fn tls_config(
    native: bool,
    webpki: bool,
    extra: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    #[cfg(feature = "native-roots")]
    if native {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "skipping a system root certificate");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "loaded the system root certificates");
    }
    #[cfg(not(feature = "native-roots"))]
    if native {
        return Err(Error::Config(
            "native roots asked for but the `native-roots` feature is off".to_owned(),
        ));
    }
    #[cfg(feature = "webpki-roots")]
    if webpki {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    #[cfg(not(feature = "webpki-roots"))]
    if webpki {
        return Err(Error::Config(
            "bundled roots asked for but the `webpki-roots` feature is off".to_owned(),
        ));
    }
    for cert in extra {
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("bad CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Config(
            "wss:// needs root certificates: enable native or bundled roots, or add a CA"
                .to_owned(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn parse_url(url: &str, path: Option<&str>, query: &[(String, String)]) -> Result<Endpoint, Error> {
    let bad = |why: &str| Error::Config(format!("bad URL {url:?}: {why}"));
    let (secure, rest) = if let Some(rest) = url.strip_prefix("wss://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("ws://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("the scheme must be ws://, wss://, http:// or https://"));
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(bad("user info is not supported"));
    }
    let default_port = if secure { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None if after.is_empty() => default_port,
            None => return Err(bad("junk after the IPv6 address")),
        };
        (host.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("bad port"))?),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let (url_path, url_query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let path = match path {
        Some(p) => p.to_owned(),
        None if url_path.is_empty() || url_path == "/" => DEFAULT_PATH.to_owned(),
        None => url_path.to_owned(),
    };
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        return Err(Error::Config(format!(
            "bad path {path:?}: it must start with '/' and hold no '?', '#' or space"
        )));
    }
    let mut pq = path;
    let mut sep = '?';
    if let Some(q) = url_query.filter(|q| !q.is_empty()) {
        pq.push(sep);
        pq.push_str(q);
        sep = '&';
    }
    for (k, v) in query {
        pq.push(sep);
        percent_encode(&mut pq, k);
        pq.push('=');
        percent_encode(&mut pq, v);
        sep = '&';
    }
    Ok(Endpoint {
        secure,
        host,
        port,
        path_and_query: pq,
    })
}

/// Percent-encodes everything but the unreserved characters (as `encodeURIComponent`, minus
/// its few extra marks).
fn percent_encode(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(url: &str, path: Option<&str>, query: &[(&str, &str)]) -> String {
        let q: Vec<_> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_url(url, path, &q).unwrap().uri()
    }

    #[test]
    fn urls() {
        assert_eq!(uri("ws://h", None, &[]), "ws://h:80/socketcluster/");
        assert_eq!(
            uri("wss://h:8443/", None, &[]),
            "wss://h:8443/socketcluster/"
        );
        assert_eq!(
            uri("ws://h:1/x?a=1", None, &[("b c", "é&")]),
            "ws://h:1/x?a=1&b%20c=%C3%A9%26"
        );
        assert_eq!(
            uri("ws://[::1]:9", Some("/p/"), &[("k", "v")]),
            "ws://[::1]:9/p/?k=v"
        );
        assert!(parse_url("ftp://h", None, &[]).is_err());
        assert!(parse_url("ws://:80", None, &[]).is_err());
        assert!(parse_url("ws://h:99999", None, &[]).is_err());
        assert!(parse_url("ws://h", Some("nope"), &[]).is_err());
    }

    #[test]
    fn backoff() {
        let r = ReconnectConfig::default();
        assert_eq!(r.delay(0, 0.0), Duration::from_millis(160));
        assert_eq!(r.delay(0, 1.0), Duration::from_millis(240));
        // A server back within 2 s of going away is retried within 1 s.
        let mut elapsed = Duration::ZERO;
        let mut n = 0;
        while elapsed < Duration::from_secs(2) {
            assert!(r.delay(n, 1.0) < Duration::from_secs(1));
            elapsed += r.delay(n, 0.0);
            n += 1;
        }
        assert!(r.delay(0, 0.999) < Duration::from_secs(1));
        assert_eq!(r.base_delay(u32::MAX), Duration::from_secs(10));
    }
}
