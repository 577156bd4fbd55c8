//! Server options and limits, with their defaults.

use serde::{Deserialize, Serialize};

/// Options and limits of the server. Plain data: build it in code, or deserialise it from a
/// config file (every field is optional there; durations are in milliseconds).
///
/// | field | default | meaning |
/// |---|---|---|
/// | `path` | `/socketcluster/` | the exact path of the WebSocket endpoint (query strings allowed) |
/// | `max_payload` | 2 MiB | largest inbound message; a larger one closes the socket with 1009 |
/// | `outbound_queue` | 4096 frames | frames queued for a socket before it counts as a slow consumer and is closed with 4100 |
/// | `publish_batch_ms` | 5 | while the server is behind (`publish_batch_above`), a socket receiving publishes faster than this writes them at most once per interval, many per syscall (the first after a quiet spell goes at once); 0 writes each at once |
/// | `publish_batch_above` | 50000 | publishes delivered to sockets per second (the whole server) from which `publish_batch_ms` may apply: only while the server is also out of CPU and its sockets find publishes piling up between writes; otherwise every publish is written at once; 0 = always |
/// | `handshake_timeout_ms` | 10000 | no `#handshake` by then closes with 4005 |
/// | `ping_interval_ms` | 8000 | how often the server pings (`''`, or `#1` in protocol v1) |
/// | `ping_timeout_ms` | 30000 | sent in the handshake reply; no message from the client for that long closes with 4001 |
/// | `ack_timeout_ms` | 10000 | how long a server-to-client invoke waits for its response |
/// | `max_connections` | 100000 | open and handshaking sockets; further upgrades get HTTP 503 |
/// | `allow_client_publish` | true | whether clients may `#publish` |
/// | `socket_channel_limit` | 1000 | channels one socket may be subscribed to at once |
/// | `origins` | `["*:*"]` | allowed `Origin`s: `host:port`, `host:*`, `*:port`, `*:*`; others get HTTP 403 |
/// | `protocol_version` | 2 | 2: ping and pong are `''`; 1: ping `#1`, pong `#2` |
/// | `auth_default_expiry_s` | 86400 | `exp` = `iat` + this, unless the token payload has an `exp` |
/// | `websocket` | true | whether the WebSocket endpoint at `path` is served |
/// | `engineio` | true | whether the engine.io endpoint at `engineio_path` is served (feature `engineio`) |
/// | `engineio_path` | `/engine.io/` | the engine.io endpoint's path |
/// | `engineio_ping_interval_ms` | 25000 | engine.io heartbeat interval |
/// | `engineio_ping_timeout_ms` | 20000 | engine.io heartbeat timeout: a session that does not answer (an abandoned long-polling client included) is reclaimed |
/// | `engineio_max_payload` | 1000000 | largest engine.io request payload in bytes |
/// | `http_header_timeout_ms` | 10000 | [`serve`](crate::serve) closes a connection that has not sent a whole request head this long after it opened or after its last response (slow or idle clients, kept-alive connections included) |
/// | `max_channel_name` | 1024 | bytes of a channel name; a longer one in `#subscribe` or `#publish` is answered with `InvalidActionError` |
/// | `trusted_proxies` | `[]` | proxies (`10.0.0.0/8`, `127.0.0.1`, `::1`, `fd00::/8`) whose `Forwarded` / `X-Forwarded-For` headers, and PROXY protocol headers, give the client's address; from any other peer they are ignored |
/// | `proxy_protocol` | false | [`serve`](crate::serve) reads a PROXY protocol (v1 or v2) header first on connections from trusted proxies (others are served as they are) |
/// | `outbound_queue_bytes` | 16 MiB | bytes queued for a socket and not yet written; a socket over it is a slow consumer (4100) |
/// | `socket_channel_bytes` | 65536 | total bytes of the channel names one socket is subscribed to; a `#subscribe` over it gets `InvalidActionError` |
/// | `address_connection_limit` | 4096 | sockets and engine.io sessions open at once from one client address (IPv6: one /64); further ones get HTTP 429; 0 = no limit |
/// | `address_connect_rate` | 100 | new sockets and engine.io sessions per second from one client address, after a burst of `address_connect_burst`; further ones get HTTP 429; 0 = no limit |
/// | `address_connect_burst` | 2000 | how many new sockets one client address may open at once before `address_connect_rate` applies |
/// | `address_tcp_limit` | 8192 | [`serve`](crate::serve): TCP connections open at once from one peer address that is not a trusted proxy; further ones are closed at once; 0 = no limit |
/// | `engineio_max_sessions` | 20000 | engine.io sessions open at once; further opens get HTTP 503 |
/// | `inbound_rate_messages` | 0 (off) | messages per second one socket may send (token bucket, a burst of one second's worth); over it the socket is closed with 4429 |
/// | `inbound_rate_bytes` | 0 (off) | bytes per second one socket may send, likewise |
/// | `app_name` | `socketcluster` | names the session cookie, `n/<app_name>/ssid`, so that two apps on one domain keep their sessions apart |
/// | `session_timeout_s` | 1200 | how long a session's data lives in the store after the last of its sockets anywhere left (renewed four times per timeout while one lives) |
/// | `history` | `[]` (off) | channels whose publishes are kept, so a client that was away gets what it missed ([`HistoryRule`]; see the crate's docs on missed-message recovery) |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The WebSocket endpoint's path. Defaults to `/socketcluster/`.
    pub path: String,
    /// The largest inbound message in bytes. Defaults to 2 MiB.
    pub max_payload: usize,
    /// Frames queued per socket before it is dropped as a slow consumer. Defaults to 4096.
    pub outbound_queue: usize,
    /// Milliseconds between two writes of publishes to one socket: publishes that arrive sooner
    /// after a write are held and written together when the interval ends (one syscall for
    /// many, which is what lets a socket take a high publish rate), while the first publish after
    /// a quiet spell is written at once. Replies and other frames are never held, and held
    /// publishes are written before the socket's next inbound message is handled. 0 writes every
    /// publish at once. Applies only while the server is behind: see `publish_batch_above`.
    /// Defaults to 5.
    pub publish_batch_ms: u64,
    /// Publishes delivered to sockets per second, by the whole server, from which sockets may
    /// hold publishes (`publish_batch_ms`). Holding saves syscalls and costs latency (up to
    /// `publish_batch_ms`), so it begins only when the server is behind, measured over 20 ms
    /// windows: it delivers this many a second or more, its process uses at least 90% of its
    /// cores (its runtime's worker threads) and its sockets find publishes piling up between
    /// their writes (1.5 or more a write). A server with CPU to spare writes every publish at
    /// once, at any rate. Holding stops when the rate falls a quarter below where it began.
    /// 0 holds at any rate, always. Defaults to 50,000.
    pub publish_batch_above: u64,
    /// Milliseconds a new socket has to send `#handshake`. Defaults to 10000.
    pub handshake_timeout_ms: u64,
    /// Milliseconds between server pings. Defaults to 8000.
    pub ping_interval_ms: u64,
    /// Milliseconds of client silence before the socket is closed with 4001. Defaults to 30000.
    pub ping_timeout_ms: u64,
    /// Milliseconds a server-to-client invoke waits for its response. Defaults to 10000.
    pub ack_timeout_ms: u64,
    /// The most sockets (open or handshaking) at once. Defaults to 100000.
    pub max_connections: usize,
    /// Whether clients may publish. Defaults to true.
    pub allow_client_publish: bool,
    /// Channels per socket. Defaults to 1000.
    pub socket_channel_limit: usize,
    /// Allowed origins. Defaults to `["*:*"]` (all).
    pub origins: Vec<String>,
    /// Protocol version, 1 or 2. Defaults to 2.
    pub protocol_version: u8,
    /// Seconds until a token set with `set_auth_token` expires. Defaults to 86400.
    pub auth_default_expiry_s: u64,
    /// Whether the WebSocket endpoint at `path` is served. Defaults to true.
    pub websocket: bool,
    /// Whether the engine.io endpoint at `engineio_path` is served (with the `engineio` cargo
    /// feature). Defaults to true.
    pub engineio: bool,
    /// The engine.io endpoint's path. Defaults to `/engine.io/`.
    pub engineio_path: String,
    /// Milliseconds between engine.io heartbeats. Defaults to 25000.
    pub engineio_ping_interval_ms: u64,
    /// Milliseconds an engine.io session has to answer a heartbeat before it is closed and
    /// reclaimed. Defaults to 20000.
    pub engineio_ping_timeout_ms: u64,
    /// The largest engine.io request payload in bytes. Defaults to 1000000.
    pub engineio_max_payload: usize,
    /// Milliseconds [`serve`](crate::serve) gives a connection to send a whole request head,
    /// counted from when it opened or sent its last response: a slow or idle client (a
    /// kept-alive connection included) is closed then. Defaults to 10000.
    pub http_header_timeout_ms: u64,
    /// The longest channel name in bytes: a `#subscribe` or `#publish` with a longer one is
    /// answered with `InvalidActionError`. Defaults to 1024.
    pub max_channel_name: usize,
    /// Addresses and CIDR blocks of the proxies in front of the server (`"10.0.0.0/8"`,
    /// `"127.0.0.1"`, `"::1"`): from these peers only, the client's address is taken from the
    /// PROXY protocol header, or from `Forwarded` / `X-Forwarded-For` (the rightmost address
    /// that is not itself a trusted proxy). Defaults to none: the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Whether [`serve`](crate::serve) expects a PROXY protocol header (v1 or v2) at the start
    /// of each connection from a trusted proxy (a connection from any other peer is served as
    /// it is). Defaults to false.
    pub proxy_protocol: bool,
    /// Bytes queued for one socket and not yet written to it: a socket over this is a slow
    /// consumer, closed with [`SLOW_CONSUMER`](crate::SLOW_CONSUMER) (4100). What was queued and
    /// not written is dropped; the close frame follows what the transport holds, and a socket
    /// that does not take it within 2 s is dropped. One frame larger than this still goes to a
    /// socket with nothing queued. Defaults to 16 MiB.
    pub outbound_queue_bytes: usize,
    /// Total bytes of the names of the channels one socket is subscribed to: a `#subscribe` that
    /// would go over is answered with `InvalidActionError`. Defaults to 65536.
    pub socket_channel_bytes: usize,
    /// Sockets and engine.io sessions open at once from one client address (the address from
    /// [`trusted_proxies`](Self::trusted_proxies); IPv6 addresses count per /64): a WebSocket
    /// upgrade or engine.io open over it gets HTTP 429. 0 = no limit. Defaults to 4096 (room for
    /// many browsers behind one NAT).
    pub address_connection_limit: usize,
    /// New sockets and engine.io sessions per second from one client address, once its
    /// [`address_connect_burst`](Self::address_connect_burst) is spent: further ones get HTTP 429.
    /// 0 = no limit. Defaults to 100.
    pub address_connect_rate: u32,
    /// New sockets one client address may open at once before
    /// [`address_connect_rate`](Self::address_connect_rate) applies. Defaults to 2000.
    pub address_connect_burst: u32,
    /// TCP connections [`serve`](crate::serve) holds at once from one peer address that is not a
    /// trusted proxy (before any HTTP is read): further ones are closed at once. 0 = no limit.
    /// Defaults to 8192.
    pub address_tcp_limit: usize,
    /// Engine.io sessions open at once: a request that would open another gets HTTP 503.
    /// Defaults to 20000.
    pub engineio_max_sessions: usize,
    /// Messages per second one socket may send (a token bucket holding one second's worth): a
    /// socket over it is closed with [`RATE_LIMITED`](crate::RATE_LIMITED) (4429; clients
    /// reconnect after their backoff). 0 = no limit. Defaults to 0.
    pub inbound_rate_messages: u32,
    /// Bytes per second one socket may send, likewise. 0 = no limit. Defaults to 0.
    pub inbound_rate_bytes: u64,
    /// The app's name: the session cookie is `n/<app_name>/ssid`, so two apps on one domain
    /// keep their sessions apart. Letters, digits, `-`, `_` and `.`. Defaults to
    /// `socketcluster`.
    pub app_name: String,
    /// Seconds a session's data lives in the store after the last of its sockets (on any
    /// process) left; every process holding one of its sockets renews it four times per
    /// timeout. Defaults to 1200 (the original's `sessionTimeout`).
    pub session_timeout_s: u64,
    /// Channels with a history (missed-message recovery), each rule a channel name or pattern
    /// and how much to keep; the first rule naming a channel applies. Empty (no history) by
    /// default.
    pub history: Vec<HistoryRule>,
}

/// A channel history rule: publishes on the channels it names are recorded (each with a
/// position: an offset and an epoch), so a client resuming its subscription gets what it
/// missed, or a `#gap` notice when the history no longer holds it.
///
/// In TOML, under the worker's options:
///
/// ```toml
/// [[worker.history]]
/// channel = "chat.*"   # a name, or a pattern: `*` matches any run of characters
/// max_len = 1000       # messages kept per channel
/// max_age_ms = 300000  # how long each is kept (and the history after its last publish)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// A channel name, or a pattern in which `*` matches any run of characters (`*` alone: every
    /// channel).
    pub channel: String,
    /// Messages kept per channel (the oldest go first). At least 1.
    pub max_len: u64,
    /// How long a message is kept, in milliseconds; a channel's whole history goes this long
    /// after its last publish. At least 1.
    pub max_age_ms: u64,
}

impl HistoryRule {
    /// Whether the rule names `channel`.
    pub fn matches(&self, channel: &str) -> bool {
        glob(self.channel.as_bytes(), channel.as_bytes())
    }

    pub(crate) fn limits(&self) -> sc_store::HistoryLimits {
        sc_store::HistoryLimits {
            max_len: self.max_len,
            max_age: std::time::Duration::from_millis(self.max_age_ms),
        }
    }
}

/// `*` matches any run of bytes (none included); every other byte itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // The last `*` seen and the text position it was tried at, to backtrack to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(c) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|c| *c == b'*')
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: "/socketcluster/".to_owned(),
            max_payload: 2 * 1024 * 1024,
            outbound_queue: 4096,
            publish_batch_ms: 5,
            publish_batch_above: 50_000,
            handshake_timeout_ms: 10_000,
            ping_interval_ms: 8_000,
            ping_timeout_ms: 30_000,
            ack_timeout_ms: 10_000,
            max_connections: 100_000,
            allow_client_publish: true,
            socket_channel_limit: 1000,
            origins: vec!["*:*".to_owned()],
            protocol_version: 2,
            auth_default_expiry_s: 86_400,
            websocket: true,
            engineio: true,
            engineio_path: "/engine.io/".to_owned(),
            engineio_ping_interval_ms: 25_000,
            engineio_ping_timeout_ms: 20_000,
            engineio_max_payload: 1_000_000,
            http_header_timeout_ms: 10_000,
            max_channel_name: 1024,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            outbound_queue_bytes: 16 * 1024 * 1024,
            socket_channel_bytes: 64 * 1024,
            address_connection_limit: 4096,
            address_connect_rate: 100,
            address_connect_burst: 2000,
            address_tcp_limit: 8192,
            engineio_max_sessions: 20_000,
            inbound_rate_messages: 0,
            inbound_rate_bytes: 0,
            app_name: "socketcluster".to_owned(),
            session_timeout_s: 1200,
            history: Vec::new(),
        }
    }
}

/// A config value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks the values: a path starting with `/`, non-zero limits and timers, a ping interval
    /// shorter than the ping timeout, protocol version 1 or 2, well-formed origins.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if !self.path.starts_with('/') {
            return err(format!("path must start with '/': {:?}", self.path));
        }
        if !self.engineio_path.starts_with('/') {
            return err(format!(
                "engineio_path must start with '/': {:?}",
                self.engineio_path
            ));
        }
        if self.websocket
            && self.engineio
            && self.engineio_path.trim_end_matches('/') == self.path.trim_end_matches('/')
        {
            return err(format!(
                "engineio_path and path must differ: {:?}",
                self.engineio_path
            ));
        }
        for (name, v) in [
            ("max_payload", self.max_payload as u64),
            ("outbound_queue", self.outbound_queue as u64),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("ping_interval_ms", self.ping_interval_ms),
            ("ping_timeout_ms", self.ping_timeout_ms),
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("max_connections", self.max_connections as u64),
            ("auth_default_expiry_s", self.auth_default_expiry_s),
            ("engineio_ping_interval_ms", self.engineio_ping_interval_ms),
            ("engineio_ping_timeout_ms", self.engineio_ping_timeout_ms),
            ("engineio_max_payload", self.engineio_max_payload as u64),
            ("http_header_timeout_ms", self.http_header_timeout_ms),
            ("max_channel_name", self.max_channel_name as u64),
            ("outbound_queue_bytes", self.outbound_queue_bytes as u64),
            ("socket_channel_bytes", self.socket_channel_bytes as u64),
            ("engineio_max_sessions", self.engineio_max_sessions as u64),
            ("session_timeout_s", self.session_timeout_s),
        ] {
            if v == 0 {
                return err(format!("{name} must be greater than 0"));
            }
        }
        if self.ping_interval_ms >= self.ping_timeout_ms {
            return err(format!(
                "ping_interval_ms ({}) must be less than ping_timeout_ms ({})",
                self.ping_interval_ms, self.ping_timeout_ms
            ));
        }
        if self.address_connect_rate > 0 && self.address_connect_burst == 0 {
            return err(
                "address_connect_burst must be greater than 0 when address_connect_rate is set"
                    .to_owned(),
            );
        }
        if self.app_name.is_empty()
            || !self
                .app_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return err(format!(
                "app_name must be letters, digits, '-', '_' or '.': {:?}",
                self.app_name
            ));
        }
        if !matches!(self.protocol_version, 1 | 2) {
            return err(format!(
                "protocol_version must be 1 or 2, not {}",
                self.protocol_version
            ));
        }
        if let Err(e) = crate::client_addr::TrustedProxies::parse(&self.trusted_proxies) {
            return err(e.to_string());
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return err(
                "proxy_protocol needs trusted_proxies: the proxies allowed to send PROXY headers"
                    .to_owned(),
            );
        }
        for r in &self.history {
            if r.channel.is_empty() {
                return err("a history rule's channel must not be empty".to_owned());
            }
            if r.max_len == 0 || r.max_age_ms == 0 {
                return err(format!(
                    "history rule {:?}: max_len and max_age_ms must be greater than 0",
                    r.channel
                ));
            }
        }
        for o in &self.origins {
            if o.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.is_empty())
            {
                return err(format!(
                    "origin {o:?} is not host:port, host:*, *:port or *:*"
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn allows_all_origins(&self) -> bool {
        self.origins.iter().any(|o| o == "*:*")
    }

    /// Whether an `Origin` header value passes the allow-list.
    pub(crate) fn origin_allowed(&self, origin: Option<&str>) -> bool {
        if self.allows_all_origins() {
            return true;
        }
        let Some(origin) = origin.filter(|o| *o != "null") else {
            return false;
        };
        let (scheme, rest) = origin.split_once("://").unwrap_or(("http", origin));
        let authority = rest.split('/').next().unwrap_or_default();
        let default_port =
            if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") {
                "443"
            } else {
                "80"
            };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, p),
            _ => (authority, default_port),
        };
        let host = host.to_ascii_lowercase();
        self.origins.iter().any(|o| {
            o == &format!("{host}:{port}") || o == &format!("{host}:*") || o == &format!("*:{port}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let c = Config {
            origins: vec!["example.com:*".into(), "*:8080".into(), "a.org:443".into()],
            ..Config::default()
        };
        assert!(c.origin_allowed(Some("http://example.com")));
        assert!(c.origin_allowed(Some("http://other:8080")));
        assert!(c.origin_allowed(Some("https://a.org")));
        assert!(!c.origin_allowed(Some("http://a.org")));
        assert!(!c.origin_allowed(None));
        assert!(Config::default().origin_allowed(None));
    }

    #[test]
    fn history_rules_match_names_and_patterns() {
        let rule = |c: &str| HistoryRule {
            channel: c.into(),
            max_len: 1,
            max_age_ms: 1,
        };
        assert!(rule("news").matches("news"));
        assert!(!rule("news").matches("news2"));
        assert!(rule("chat.*").matches("chat."));
        assert!(rule("chat.*").matches("chat.room.1"));
        assert!(!rule("chat.*").matches("chat"));
        assert!(rule("*").matches(""));
        assert!(rule("a*b*c").matches("aXbYbZc"));
        assert!(!rule("a*b*c").matches("aXbYbZ"));
        assert!(rule("*.log").matches("x.log.log"));
        let bad = Config {
            history: vec![HistoryRule {
                max_len: 0,
                ..rule("x")
            }],
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn validate() {
        assert!(Config::default().validate().is_ok());
        let bad = Config {
            ping_interval_ms: 40_000,
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }
}
