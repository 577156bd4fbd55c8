//! The client's address.
//!
//! Every socket and HTTP request needs the address of the client behind it:
//! the TCP peer, or — when the peer is a configured, trusted proxy — the
//! address that proxy reports, either in the `Forwarded` (RFC 7239) /
//! `X-Forwarded-For` request headers ([`from_headers`]) or in a PROXY protocol
//! v1/v2 header at the start of the connection ([`read_proxy_header`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http::HeaderMap;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// Trusted proxies
// ---------------------------------------------------------------------------

/// One CIDR block; `addr` has its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(entry: &str) -> Result<Self, &'static str> {
        if entry.is_empty() {
            return Err("empty entry");
        }
        let (addr, prefix) = match entry.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (entry, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| "not an IP address")?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("prefix length is not a number");
                }
                let p: u16 = p.parse().map_err(|_| "prefix length is not a number")?;
                match u8::try_from(p) {
                    Ok(p) if p <= max => p,
                    _ if max == 32 => return Err("prefix length exceeds 32"),
                    _ => return Err("prefix length exceeds 128"),
                }
            }
        };
        // A block inside ::ffff:0:0/96 is an IPv4 block written as IPv6.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() & mask_v4(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() & mask_v6(prefix))),
        };
        Ok(Self { addr, prefix })
    }

    /// `ip` must be canonical (IPv4-mapped IPv6 already turned into IPv4).
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                ip.to_bits() & mask_v4(self.prefix) == net.to_bits()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                ip.to_bits() & mask_v6(self.prefix) == net.to_bits()
            }
            _ => false,
        }
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

/// The proxies whose forwarding information (`Forwarded`, `X-Forwarded-For`,
/// PROXY protocol) is believed: a list of CIDR blocks.
///
/// An entry is an address (`127.0.0.1`, `::1`: a single host) or a block
/// (`10.0.0.0/8`, `fd00::/8`); host bits below the prefix are ignored.
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack socket reports
/// IPv4 peers) are matched as the IPv4 address they carry, and a block inside
/// `::ffff:0:0/96` counts as the IPv4 block it maps; other IPv6 blocks never
/// match IPv4 clients. The default (empty) list trusts nobody.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustedProxies {
    blocks: Vec<Cidr>,
}

impl TrustedProxies {
    /// Parses a list of addresses and CIDR blocks (surrounding whitespace is
    /// ignored). Fails on the first entry that is not an IP address, has a
    /// malformed prefix, or a prefix longer than 32 (IPv4) / 128 (IPv6) bits.
    pub fn parse<I, S>(list: I) -> Result<Self, InvalidProxy>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let blocks = list
            .into_iter()
            .map(|entry| {
                let entry = entry.as_ref();
                Cidr::parse(entry.trim()).map_err(|reason| InvalidProxy {
                    entry: entry.to_owned(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { blocks })
    }

    /// Whether `ip` lies in one of the blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.blocks.iter().any(|block| block.contains(ip))
    }

    /// Whether the list is empty (nobody is trusted).
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// An entry of a trusted proxy list that is not an IP address or CIDR block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidProxy {
    entry: String,
    reason: &'static str,
}

impl fmt::Display for InvalidProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid trusted proxy {:?}: {}", self.entry, self.reason)
    }
}

impl std::error::Error for InvalidProxy {}

// ---------------------------------------------------------------------------
// Forwarded / X-Forwarded-For
// ---------------------------------------------------------------------------

/// The client address of an HTTP request that arrived from `peer`.
///
/// If `peer` is not a trusted proxy, it is the client and the headers are
/// ignored. Otherwise the forwarding chain — the `Forwarded` header (all its
/// lines, in order) if it names any hop, else `X-Forwarded-For` — is walked
/// from the right: the client is the rightmost address that is not a trusted
/// proxy; if all are trusted, the leftmost one. A hop that is not an address
/// (`unknown`, an obfuscated `_identifier`, a `Forwarded` element without
/// `for=`, garbage) ends the walk: the client is then the last trusted
/// address reached (the hop to its right, or `peer`). Without any header the
/// client is `peer`.
pub(crate) fn from_headers(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let mut chain = forwarded_chain(headers);
    if chain.is_empty() {
        chain = x_forwarded_for_chain(headers);
    }
    let mut client = peer;
    for hop in chain.into_iter().rev() {
        match hop {
            Some(ip) if trusted.contains(ip) => client = ip,
            Some(ip) => return ip,
            None => return client,
        }
    }
    client
}

/// The `for=` addresses of all `Forwarded` elements, left to right; `None`
/// for an element without a usable address.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    chain(headers, http::header::FORWARDED.as_str(), |line, hops| {
        hops.extend(
            split_unquoted(line, b',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(forwarded_for),
        );
    })
}

/// The hops of every line of the header `name`, left to right: `hops` turns one line into its
/// hops; a line that is not text is one unusable hop.
fn chain(
    headers: &HeaderMap,
    name: &str,
    hops: impl Fn(&str, &mut Vec<Option<IpAddr>>),
) -> Vec<Option<IpAddr>> {
    let mut chain = Vec::new();
    for line in headers.get_all(name) {
        match line.to_str() {
            Ok(line) => hops(line, &mut chain),
            Err(_) => chain.push(None),
        }
    }
    chain
}

/// The address in the `for=` parameter of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let mut found = None;
    for pair in split_unquoted(element, b';') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("for") {
            if found.is_some() {
                return None; // a parameter must not repeat within an element
            }
            found = Some(value.trim());
        }
    }
    let value = unquote(found?)?;
    parse_node(&value, true)
}

/// Splits `s` at `sep` bytes outside double-quoted strings (which may contain
/// backslash escapes).
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let bytes = s.as_bytes();
        let (mut quoted, mut escaped) = (false, false);
        for (i, &b) in bytes.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if !quoted && b == sep {
                // `sep` is ASCII, so `i` and `i + 1` are char boundaries.
                rest = s.get(i + 1..);
                return s.get(..i);
            }
        }
        rest = None;
        Some(s)
    })
}

/// A token or quoted-string value, without quotes and escapes.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return (!value.contains('"')).then(|| value.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// An address with an optional port: `192.0.2.60`, `192.0.2.60:80`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711`, or a bare `2001:db8::1`.
/// `obfuscated_port` admits RFC 7239 obfuscated ports (`_abc`).
fn parse_node(s: &str, obfuscated_port: bool) -> Option<IpAddr> {
    let valid_port = |port: &str| {
        let numeric = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok();
        let obfuscated = obfuscated_port
            && port.len() > 1
            && port.starts_with('_')
            && port
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        numeric || obfuscated
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = host.parse().ok()?;
        if !after.is_empty() && !valid_port(after.strip_prefix(':')?) {
            return None;
        }
        return Some(IpAddr::V6(ip));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, port) = s.rsplit_once(':')?;
    let ip: Ipv4Addr = host.parse().ok()?;
    valid_port(port).then_some(IpAddr::V4(ip))
}

/// The entries of all `X-Forwarded-For` lines, left to right; `None` for an
/// entry that is not an address.
fn x_forwarded_for_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    chain(headers, "x-forwarded-for", |line, hops| {
        hops.extend(
            line.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(|e| parse_node(e, false)),
        );
    })
}

// ---------------------------------------------------------------------------
// PROXY protocol
// ---------------------------------------------------------------------------

const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family, length.
const V2_FIXED: usize = 16;
/// The largest v2 address + TLV block accepted.
const V2_MAX_PAYLOAD: usize = 4096;
/// The longest header of either version.
const MAX_HEADER: usize = V2_FIXED + V2_MAX_PAYLOAD;

/// The outcome of [`parse_proxy_header`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyParse {
    /// A valid prefix of a PROXY header: more bytes are needed.
    Incomplete,
    /// A complete header.
    Done {
        /// The client (source) address; `None` when the proxy does not tell
        /// it (v1 `UNKNOWN`, v2 `LOCAL`, v2 `AF_UNSPEC` or `AF_UNIX`): use the
        /// connection's peer address then.
        source: Option<SocketAddr>,
        /// The header's length in bytes (v2: TLVs included).
        len: usize,
    },
}

/// Why a connection's PROXY protocol header could not be read.
#[derive(Debug)]
pub(crate) enum ProxyError {
    /// The connection does not start with a PROXY protocol header.
    NotProxy,
    /// The header is malformed or unsupported (the reason).
    Invalid(&'static str),
    /// The header is longer than 107 bytes (v1) or carries more than 4096
    /// bytes of addresses and TLVs (v2).
    TooLong,
    /// The connection was closed before the header was complete.
    Eof,
    /// The header did not arrive in time.
    Timeout,
    /// Reading from the socket failed.
    Io(std::io::Error),
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotProxy => f.write_str("connection does not start with a PROXY protocol header"),
            Self::Invalid(why) => write!(f, "invalid PROXY protocol header: {why}"),
            Self::TooLong => f.write_str("PROXY protocol header too long"),
            Self::Eof => {
                f.write_str("connection closed before the PROXY protocol header was complete")
            }
            Self::Timeout => f.write_str("timed out waiting for the PROXY protocol header"),
            Self::Io(e) => write!(f, "reading the PROXY protocol header failed: {e}"),
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for ProxyError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Parses a PROXY protocol v1 or v2 header at the start of `buf` (the bytes
/// received so far; bytes after the header are ignored).
///
/// `Err(ProxyError::NotProxy)` as soon as `buf` can no longer be the start of
/// either header; `Ok(ProxyParse::Incomplete)` while it still can be.
pub(crate) fn parse_proxy_header(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    if buf.starts_with(V2_SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(V1_PREFIX) {
        parse_v1(buf)
    } else if (buf.len() < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(buf))
        || (buf.len() < V1_PREFIX.len() && V1_PREFIX.starts_with(buf))
    {
        Ok(ProxyParse::Incomplete)
    } else {
        Err(ProxyError::NotProxy)
    }
}

/// Whether `buf` is known to start a PROXY header (valid or not), so that
/// its bytes may be consumed.
fn is_proxy_start(buf: &[u8]) -> bool {
    buf.starts_with(V2_SIGNATURE) || buf.starts_with(V1_PREFIX)
}

/// `PROXY TCP4|TCP6 src dst sport dport\r\n` or `PROXY UNKNOWN ...\r\n`.
fn parse_v1(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let printable = |b: &u8| (0x20..=0x7e).contains(b);
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        let body = window.strip_suffix(b"\r").unwrap_or(window);
        if !body.iter().all(printable) {
            return Err(ProxyError::Invalid(
                "v1 header contains a control character",
            ));
        }
        return if buf.len() >= V1_MAX {
            Err(ProxyError::TooLong)
        } else {
            Ok(ProxyParse::Incomplete)
        };
    };
    let len = end + 2;
    let line = &window[..end];
    if !line.iter().all(printable) {
        return Err(ProxyError::Invalid(
            "v1 header contains a control character",
        ));
    }
    let line =
        std::str::from_utf8(line).map_err(|_| ProxyError::Invalid("v1 header is not ASCII"))?;
    let mut fields = line.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(ProxyError::Invalid(
            "v1 header does not start with \"PROXY \"",
        ));
    }
    let v4 = match fields.next() {
        Some("UNKNOWN") => return Ok(ProxyParse::Done { source: None, len }),
        Some("TCP4") => true,
        Some("TCP6") => false,
        _ => {
            return Err(ProxyError::Invalid(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let mut next = || {
        fields
            .next()
            .ok_or(ProxyError::Invalid("v1 header has too few fields"))
    };
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(ProxyError::Invalid("v1 header has too many fields"));
    }
    let addr = |s: &str| -> Result<IpAddr, ProxyError> {
        if v4 {
            s.parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| ProxyError::Invalid("v1 TCP4 address is not IPv4"))
        } else {
            s.parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| ProxyError::Invalid("v1 TCP6 address is not IPv6"))
        }
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProxyError::Invalid("v1 port is not a number"));
        }
        s.parse()
            .map_err(|_| ProxyError::Invalid("v1 port is out of range"))
    };
    let src = addr(src)?;
    addr(dst)?;
    let sport = port(sport)?;
    port(dport)?;
    Ok(ProxyParse::Done {
        source: Some(SocketAddr::new(src, sport)),
        len,
    })
}

/// The binary v2 header; `buf` starts with the signature.
fn parse_v2(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    let Some(&version_command) = buf.get(12) else {
        return Ok(ProxyParse::Incomplete);
    };
    if version_command >> 4 != 2 {
        return Err(ProxyError::Invalid("unsupported v2 version"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::Invalid("unknown v2 command")),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(ProxyParse::Incomplete);
    };
    // With LOCAL the family (and addresses) are to be ignored.
    let address_len = match family {
        _ if local => 0,
        0x00 => 0,
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        _ => {
            return Err(ProxyError::Invalid(
                "unsupported v2 address family or protocol",
            ));
        }
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(ProxyParse::Incomplete);
    };
    let payload_len = usize::from(u16::from_be_bytes([hi, lo]));
    if payload_len > V2_MAX_PAYLOAD {
        return Err(ProxyError::TooLong);
    }
    if payload_len < address_len {
        return Err(ProxyError::Invalid(
            "v2 length too short for the address family",
        ));
    }
    let len = V2_FIXED + payload_len;
    let Some(payload) = buf.get(V2_FIXED..len) else {
        return Ok(ProxyParse::Incomplete);
    };
    let source = match family {
        _ if local => None,
        0x11 | 0x12 => {
            let ip: [u8; 4] = bytes_at(payload, 0).ok_or(ProxyError::Invalid("v2 address"))?;
            let port: [u8; 2] = bytes_at(payload, 8).ok_or(ProxyError::Invalid("v2 address"))?;
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(ip)),
                u16::from_be_bytes(port),
            ))
        }
        0x21 | 0x22 => {
            let ip: [u8; 16] = bytes_at(payload, 0).ok_or(ProxyError::Invalid("v2 address"))?;
            let port: [u8; 2] = bytes_at(payload, 32).ok_or(ProxyError::Invalid("v2 address"))?;
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                u16::from_be_bytes(port),
            ))
        }
        _ => None,
    };
    Ok(ProxyParse::Done { source, len })
}

fn bytes_at<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Reads a PROXY protocol v1 or v2 header from the start of `stream`,
/// consuming exactly the header: the bytes after it stay in the socket.
/// Returns the client address it names (`None`: the proxy does not tell; use
/// the peer address).
///
/// The whole read is bounded by `timeout` ([`ProxyError::Timeout`]). If the
/// connection does not start with a PROXY header ([`ProxyError::NotProxy`]),
/// nothing has been consumed. Once a header is recognised (`PROXY ` or the
/// v2 signature), its bytes are consumed as they arrive, so after any other
/// error the connection should be dropped.
pub(crate) async fn read_proxy_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    tokio::time::timeout(timeout, read_proxy_header_inner(stream))
        .await
        .unwrap_or(Err(ProxyError::Timeout))
}

async fn read_proxy_header_inner(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    // `buf[..consumed]`: header bytes already read from the socket.
    let mut buf = vec![0u8; MAX_HEADER];
    let mut consumed = 0;
    let mut backoff = Duration::from_millis(1);
    loop {
        let Some(free) = buf.get_mut(consumed..).filter(|free| !free.is_empty()) else {
            return Err(ProxyError::TooLong);
        };
        // Waits for data if the socket has none; otherwise returns at once.
        let n = stream.peek(free).await?;
        if n == 0 {
            return Err(ProxyError::Eof);
        }
        let seen = consumed + n;
        match parse_proxy_header(&buf[..seen])? {
            ProxyParse::Done { source, len } => {
                // `len <= seen`; the bytes are in the socket, so this does not wait.
                stream
                    .read_exact(&mut buf[consumed..len.max(consumed)])
                    .await?;
                return Ok(source);
            }
            ProxyParse::Incomplete if is_proxy_start(&buf[..seen]) => {
                // All of it is header: consume it, so the next peek waits
                // for new bytes instead of returning these again.
                stream.read_exact(&mut buf[consumed..seen]).await?;
                consumed = seen;
            }
            ProxyParse::Incomplete => {
                // Fewer bytes than `PROXY ` / the v2 signature: they must stay
                // in the socket in case this is not a PROXY header, and peek
                // would return them again at once (the socket stays
                // readable), so poll with a short, growing delay. Rare: a
                // proxy sends its header in one segment.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    // -- TrustedProxies ----------------------------------------------------

    #[test]
    fn parses_addresses_and_blocks() {
        let t = trusted(&[
            "10.0.0.0/8",
            "127.0.0.1",
            "::1",
            "fd00::/8",
            " 192.168.1.7/32 ",
        ]);
        assert!(!t.is_empty());
        for yes in [
            "10.0.0.1",
            "10.255.255.255",
            "127.0.0.1",
            "::1",
            "fd12::5",
            "192.168.1.7",
        ] {
            assert!(t.contains(ip(yes)), "{yes}");
        }
        for no in [
            "11.0.0.1",
            "127.0.0.2",
            "::2",
            "fe00::1",
            "192.168.1.8",
            "9.255.255.255",
        ] {
            assert!(!t.contains(ip(no)), "{no}");
        }
    }

    #[test]
    fn accepts_owned_strings_and_empty_list() {
        let t = TrustedProxies::parse(vec![String::from("10.0.0.0/8")]).unwrap();
        assert!(t.contains(ip("10.1.2.3")));
        let empty = TrustedProxies::parse(Vec::<String>::new()).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty, TrustedProxies::default());
        assert!(!empty.contains(ip("127.0.0.1")));
    }

    #[test]
    fn prefix_edge_cases() {
        let all4 = trusted(&["0.0.0.0/0"]);
        assert!(all4.contains(ip("1.2.3.4")));
        assert!(!all4.contains(ip("::1")));
        let all6 = trusted(&["::/0"]);
        assert!(all6.contains(ip("2001:db8::1")));
        assert!(!all6.contains(ip("1.2.3.4")));
        assert!(!all6.contains(ip("::ffff:1.2.3.4")));
        assert!(trusted(&["::1/128"]).contains(ip("::1")));
        // Host bits are ignored.
        assert_eq!(trusted(&["10.1.2.3/8"]), trusted(&["10.0.0.0/8"]));
        assert!(trusted(&["10.1.2.3/8"]).contains(ip("10.9.9.9")));
        assert!(trusted(&["10.0.0.0/31"]).contains(ip("10.0.0.1")));
        assert!(!trusted(&["10.0.0.0/31"]).contains(ip("10.0.0.2")));
    }

    #[test]
    fn ipv4_mapped_matches_ipv4_blocks() {
        let t = trusted(&["10.0.0.0/8"]);
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(!t.contains(ip("::ffff:11.1.2.3")));
        // A mapped block is an IPv4 block.
        let mapped = trusted(&["::ffff:10.0.0.0/104"]);
        assert_eq!(mapped, t);
        assert!(mapped.contains(ip("10.0.0.1")));
        assert!(mapped.contains(ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn rejects_bad_entries() {
        for bad in [
            "",
            " ",
            "abc",
            "10.0.0.0/33",
            "::1/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "10.0.0/8",
            "10.0.0.0/ 8",
            "10.0.0.0/1000",
            "[::1]",
            "fe80::1%eth0",
            "01.2.3.4",
            "/8",
        ] {
            let err = TrustedProxies::parse(["127.0.0.1", bad]).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid trusted proxy "),
                "{bad}: {err}"
            );
        }
        let err = TrustedProxies::parse(["10.0.0.0/33"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid trusted proxy "10.0.0.0/33": prefix length exceeds 32"#
        );
        let err = TrustedProxies::parse(["::/129"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid trusted proxy "::/129": prefix length exceeds 128"#
        );
        let err = TrustedProxies::parse(["nope"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid trusted proxy "nope": not an IP address"#
        );
        let _: &dyn std::error::Error = &err;
    }

    // -- from_headers -------------------------------------------------------

    #[test]
    fn untrusted_peer_ignores_headers() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        assert_eq!(
            from_headers(ip("9.9.9.9"), &h, &trusted(&["10.0.0.0/8"])),
            ip("9.9.9.9")
        );
        assert_eq!(
            from_headers(ip("9.9.9.9"), &h, &TrustedProxies::default()),
            ip("9.9.9.9")
        );
    }

    #[test]
    fn trusted_peer_without_headers_is_client() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            from_headers(ip("10.0.0.1"), &HeaderMap::new(), &t),
            ip("10.0.0.1")
        );
        let empty = headers(&[("x-forwarded-for", ""), ("forwarded", " , ")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &empty, &t), ip("10.0.0.1"));
    }

    #[test]
    fn x_forwarded_for_single() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            from_headers(ip("10.0.0.1"), &h, &trusted(&["10.0.0.0/8"])),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn x_forwarded_for_chain_takes_rightmost_untrusted() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "spoof, 1.2.3.4, 10.0.0.2")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("1.2.3.4"));
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("1.2.3.4"));
        // All trusted: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.0.0.3,10.0.0.2")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("10.0.0.3"));
    }

    #[test]
    fn x_forwarded_for_ports_and_ipv6() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", " 1.2.3.4:5678 ")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("1.2.3.4"));
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:4711")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("2001:db8::1"));
        let h = headers(&[("x-forwarded-for", "2001:db8::2")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("2001:db8::2"));
        let h = headers(&[("x-forwarded-for", "[2001:db8::3]")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("2001:db8::3"));
    }

    #[test]
    fn x_forwarded_for_multiple_lines() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4"),
            ("x-forwarded-for", "10.0.0.3, 10.0.0.2"),
        ]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("1.2.3.4"));
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("5.6.7.8"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        // Garbage left of the client is never reached.
        let h = headers(&[("x-forwarded-for", "garbage, 1.2.3.4")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("1.2.3.4"));
        // Garbage right of everything: the peer.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, garbage")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("10.0.0.1"));
        // Garbage behind a trusted hop: that hop.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, nope, 10.0.0.2")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("10.0.0.2"));
        for bad in [
            "1.2.3.4:",
            "1.2.3.4:99999",
            "1.2.3.4:_x",
            "[::1",
            "[::1]x",
            "[1.2.3.4]",
            "1.2.3.4.5",
            "::1:80:x",
        ] {
            let h = headers(&[("x-forwarded-for", bad)]);
            assert_eq!(
                from_headers(ip("10.0.0.1"), &h, &t),
                ip("10.0.0.1"),
                "{bad}"
            );
        }
        // Non-UTF-8 line.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_basic_and_case_insensitive() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("192.0.2.60"));
        let h = headers(&[("forwarded", "proto=https; For=\"192.0.2.61:80\"")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("192.0.2.61"));
        let h = headers(&[("forwarded", "FOR=192.0.2.62:80")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("192.0.2.62"));
    }

    #[test]
    fn forwarded_quoted_ipv6_with_port() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("forwarded", r#"for="[2001:db8:cafe::17]:4711""#)]);
        assert_eq!(
            from_headers(ip("10.0.0.1"), &h, &t),
            ip("2001:db8:cafe::17")
        );
        let h = headers(&[("forwarded", r#"for="[2001:db8::1]", for=10.0.0.2"#)]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("2001:db8::1"));
        let h = headers(&[("forwarded", r#"for="[2001:db8::1]:_port""#)]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("2001:db8::1"));
        // Escapes inside quoted strings.
        let h = headers(&[("forwarded", r#"for="\[2001:db8::5\]""#)]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("2001:db8::5"));
        // Separators inside quotes do not split.
        let h = headers(&[("forwarded", r#"for=1.2.3.4;ext="a,b;c", for=10.0.0.2"#)]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("1.2.3.4"));
    }

    #[test]
    fn forwarded_chain_and_obfuscated_hops() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("forwarded", "for=6.6.6.6, for=1.2.3.4, for=10.0.0.2")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("1.2.3.4"));
        for hidden in [
            "_hidden",
            "unknown",
            "\"_x\"",
            "\"[::1\"",
            "bad\"x\"",
            "\"1.2.3.4\\\\\"",
        ] {
            let value = format!("for=1.2.3.4, for={hidden}, for=10.0.0.2");
            let h = headers(&[("forwarded", &value)]);
            assert_eq!(
                from_headers(ip("10.0.0.1"), &h, &t),
                ip("10.0.0.2"),
                "{hidden}"
            );
        }
        // Elements without (or with a repeated) for=, or malformed pairs.
        for bad in [
            "proto=https",
            "for=1.1.1.1;for=2.2.2.2",
            "for=1.1.1.1;junk",
            "for",
        ] {
            let value = format!("for=1.2.3.4, {bad}");
            let h = headers(&[("forwarded", &value)]);
            assert_eq!(
                from_headers(ip("10.0.0.1"), &h, &t),
                ip("10.0.0.1"),
                "{bad}"
            );
        }
        // An unterminated quote swallows the rest of the line: one bad hop.
        let h = headers(&[("forwarded", "for=1.2.3.4, for=\"5.6.7.8, for=10.0.0.2")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("10.0.0.1"));
        // All trusted: the leftmost.
        let h = headers(&[("forwarded", "for=10.0.0.3, for=10.0.0.2")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("10.0.0.3"));
    }

    #[test]
    fn forwarded_multiple_lines() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[
            ("forwarded", "for=6.6.6.6, for=1.2.3.4"),
            ("forwarded", "for=10.0.0.3;proto=http"),
        ]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("1.2.3.4"));
        let h = headers(&[("forwarded", "for=1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("5.6.7.8"));
    }

    #[test]
    fn forwarded_preferred_over_x_forwarded_for() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "5.5.5.5"), ("forwarded", "for=1.2.3.4")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("1.2.3.4"));
        // An unusable Forwarded still wins (it names a hop).
        let h = headers(&[("x-forwarded-for", "5.5.5.5"), ("forwarded", "for=unknown")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("10.0.0.1"));
    }

    #[test]
    fn ipv4_mapped_peer() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(from_headers(ip("::ffff:10.0.0.1"), &h, &t), ip("1.2.3.4"));
        assert_eq!(
            from_headers(ip("::ffff:9.0.0.1"), &h, &t),
            ip("::ffff:9.0.0.1")
        );
        // Mapped hops in the chain are trusted like their IPv4 address.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, ::ffff:10.0.0.2")]);
        assert_eq!(from_headers(ip("10.0.0.1"), &h, &t), ip("1.2.3.4"));
    }

    // -- parse_proxy_header -------------------------------------------------

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn done(buf: &[u8]) -> (Option<SocketAddr>, usize) {
        match parse_proxy_header(buf) {
            Ok(ProxyParse::Done { source, len }) => (source, len),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn invalid(buf: &[u8]) -> ProxyError {
        match parse_proxy_header(buf) {
            Err(e @ (ProxyError::Invalid(_) | ProxyError::TooLong)) => e,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
        assert_eq!(done(h), (Some(sa("192.0.2.1:56324")), h.len() - 5));
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 80\r\n";
        assert_eq!(done(h), (Some(sa("[2001:db8::1]:4711")), h.len()));
        assert_eq!(done(b"PROXY UNKNOWN\r\n"), (None, 15));
        let h = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        assert_eq!(done(h), (None, h.len()));
    }

    #[test]
    fn v1_max_length() {
        let ffff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let h = format!("PROXY TCP6 {ffff} {ffff} 65535 65535\r\n");
        assert_eq!(
            done(h.as_bytes()),
            (Some(SocketAddr::new(ip(ffff), 65535)), h.len())
        );
        let h = format!("PROXY UNKNOWN {ffff} {ffff} 65535 65535\r\n");
        assert_eq!(h.len(), V1_MAX);
        assert_eq!(done(h.as_bytes()), (None, V1_MAX));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX - 1, b'x');
        assert!(matches!(
            parse_proxy_header(&long),
            Ok(ProxyParse::Incomplete)
        ));
        long.extend_from_slice(b"\r");
        assert!(matches!(
            parse_proxy_header(&long),
            Err(ProxyError::TooLong)
        ));
        long.extend_from_slice(b"\n");
        assert!(matches!(
            parse_proxy_header(&long),
            Err(ProxyError::TooLong)
        ));
    }

    #[test]
    fn v1_incomplete_prefixes() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        for end in 0..h.len() {
            assert!(
                matches!(parse_proxy_header(&h[..end]), Ok(ProxyParse::Incomplete)),
                "{end}"
            );
        }
    }

    #[test]
    fn v1_strict() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 extra\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 \r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 2001:db8::2 56324 443\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 -1\r\n",
            b"PROXY TCP4 192.0.2.256 198.51.100.2 1 1\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 1\r\n",
            b"PROXY tcp4 192.0.2.1 198.51.100.2 1 1\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 192.0.2.1\t198.51.100.2 1 1\r\n",
            b"PROXY TCP4 192.0.2.1\n",
            b"PROXY TCP4 \xc3\xa9",
        ] {
            let e = invalid(bad);
            assert!(e.to_string().contains("PROXY"), "{e}");
        }
    }

    #[test]
    fn not_proxy() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"G",
            b"PROXY\r\n",
            b"PROXZ",
            b"\r\n\r\n\0\r\nQUIX",
            b"\x16\x03\x01",
        ] {
            assert!(
                matches!(parse_proxy_header(bad), Err(ProxyError::NotProxy)),
                "{bad:?}"
            );
        }
        for prefix in [&b""[..], b"P", b"PROXY", b"\r", b"\r\n\r\n\0\r\nQUI"] {
            assert!(
                matches!(parse_proxy_header(prefix), Ok(ProxyParse::Incomplete)),
                "{prefix:?}"
            );
        }
    }

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    fn v2_tcp4(tlvs: &[u8]) -> Vec<u8> {
        let mut payload = vec![192, 0, 2, 1, 198, 51, 100, 2];
        payload.extend_from_slice(&56324u16.to_be_bytes());
        payload.extend_from_slice(&443u16.to_be_bytes());
        payload.extend_from_slice(tlvs);
        v2(0x21, 0x11, &payload)
    }

    fn v2_tcp6() -> Vec<u8> {
        let mut payload = ip6("2001:db8::1").to_vec();
        payload.extend_from_slice(&ip6("2001:db8::2"));
        payload.extend_from_slice(&4711u16.to_be_bytes());
        payload.extend_from_slice(&80u16.to_be_bytes());
        v2(0x21, 0x21, &payload)
    }

    fn ip6(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn v2_tcp4_tcp6_with_tlvs() {
        let h = v2_tcp4(&[]);
        assert_eq!(done(&h), (Some(sa("192.0.2.1:56324")), 28));
        let tlv = [0x04, 0x00, 0x03, b'a', b'b', b'c']; // PP2_TYPE_NOOP
        let mut h = v2_tcp4(&tlv);
        let len = h.len();
        h.extend_from_slice(b"GET /");
        assert_eq!(done(&h), (Some(sa("192.0.2.1:56324")), len));
        let h = v2_tcp6();
        assert_eq!(done(&h), (Some(sa("[2001:db8::1]:4711")), 52));
        // UDP families carry addresses too.
        let mut udp = v2_tcp4(&[]);
        udp[13] = 0x12;
        assert_eq!(done(&udp), (Some(sa("192.0.2.1:56324")), 28));
    }

    #[test]
    fn v2_without_source() {
        assert_eq!(done(&v2(0x20, 0x00, &[])), (None, 16));
        // LOCAL ignores family and addresses.
        let mut local = v2_tcp4(&[]);
        local[12] = 0x20;
        assert_eq!(done(&local), (None, 28));
        assert_eq!(done(&v2(0x20, 0x77, &[1, 2, 3])), (None, 19));
        assert_eq!(done(&v2(0x21, 0x00, &[0; 5])), (None, 21));
        assert_eq!(done(&v2(0x21, 0x31, &[0; 216])), (None, 232));
        assert_eq!(done(&v2(0x21, 0x32, &[0; 220])), (None, 236));
    }

    #[test]
    fn v2_incomplete_prefixes() {
        let h = v2_tcp6();
        for end in 0..h.len() {
            assert!(
                matches!(parse_proxy_header(&h[..end]), Ok(ProxyParse::Incomplete)),
                "{end}"
            );
        }
    }

    #[test]
    fn v2_invalid() {
        let mut bad_version = v2_tcp4(&[]);
        bad_version[12] = 0x11;
        let mut bad_command = v2_tcp4(&[]);
        bad_command[12] = 0x22;
        for bad in [
            bad_version,
            bad_command,
            v2(0x21, 0x10, &[0; 12]),
            v2(0x21, 0x13, &[0; 12]),
            v2(0x21, 0x41, &[0; 12]),
            v2(0x21, 0x11, &[0; 11]),
            v2(0x21, 0x21, &[0; 35]),
            v2(0x21, 0x31, &[0; 215]),
        ] {
            invalid(&bad);
            // Detected from the fixed part alone.
            invalid(&bad[..16]);
        }
        // Version/command is checked as soon as it is there.
        invalid(&v2(0x31, 0x11, &[])[..13]);
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0x10, 0x01]);
        assert!(matches!(
            parse_proxy_header(&huge),
            Err(ProxyError::TooLong)
        ));
        let max = v2(0x21, 0x11, &[0; V2_MAX_PAYLOAD]);
        assert_eq!(done(&max), (Some(sa("0.0.0.0:0")), MAX_HEADER));
    }

    #[test]
    fn error_display() {
        assert_eq!(
            ProxyError::Timeout.to_string(),
            "timed out waiting for the PROXY protocol header"
        );
        let io = ProxyError::from(std::io::Error::other("boom"));
        assert!(io.to_string().contains("boom"));
        assert!(std::error::Error::source(&io).is_some());
        assert!(std::error::Error::source(&ProxyError::NotProxy).is_none());
    }

    // -- read_proxy_header --------------------------------------------------

    const LIMIT: Duration = Duration::from_secs(10);

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    async fn read_rest(server: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut rest = vec![0; n];
        tokio::time::timeout(LIMIT, server.read_exact(&mut rest))
            .await
            .unwrap()
            .unwrap();
        rest
    }

    type Reading = tokio::task::JoinHandle<(TcpStream, Result<Option<SocketAddr>, ProxyError>)>;

    fn spawn_read(mut server: TcpStream, timeout: Duration) -> Reading {
        tokio::spawn(async move {
            let r = read_proxy_header(&mut server, timeout).await;
            (server, r)
        })
    }

    async fn finish(reading: Reading) -> (TcpStream, Result<Option<SocketAddr>, ProxyError>) {
        tokio::time::timeout(LIMIT, reading).await.unwrap().unwrap()
    }

    /// Sends `parts` one write at a time, checking that the reader is still
    /// waiting after each but the last; returns the reader's outcome.
    async fn send_in_parts(parts: &[&[u8]]) -> (TcpStream, Result<Option<SocketAddr>, ProxyError>) {
        let (mut client, server) = pair().await;
        let mut reading = spawn_read(server, LIMIT);
        for (i, part) in parts.iter().enumerate() {
            client.write_all(part).await.unwrap();
            if i + 1 < parts.len() {
                let pending = tokio::time::timeout(Duration::from_millis(50), &mut reading).await;
                assert!(pending.is_err(), "finished after part {i}");
            }
        }
        let out = finish(reading).await;
        drop(client);
        out
    }

    #[tokio::test]
    async fn reads_v1_and_leaves_the_rest() {
        let (mut client, mut server) = pair().await;
        client
            .write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 5678 80\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let source = tokio::time::timeout(LIMIT, read_proxy_header(&mut server, LIMIT))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(source, Some(sa("1.2.3.4:5678")));
        assert_eq!(read_rest(&mut server, 16).await, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn reads_v1_split_over_writes() {
        let (mut server, r) =
            send_in_parts(&[b"PROXY TCP4 1.2.3.4 5.6.7", b".8 5678 80\r", b"\nGET"]).await;
        assert_eq!(r.unwrap(), Some(sa("1.2.3.4:5678")));
        assert_eq!(read_rest(&mut server, 3).await, b"GET");
    }

    #[tokio::test]
    async fn reads_v1_split_inside_the_prefix() {
        let (mut server, r) = send_in_parts(&[b"PR", b"OXY UNKNOWN\r\nGET"]).await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(read_rest(&mut server, 3).await, b"GET");
    }

    #[tokio::test]
    async fn reads_v2_tcp4_and_tcp6() {
        for (header, expected) in [
            (v2_tcp4(&[0x04, 0x00, 0x01, 0x00]), "192.0.2.1:56324"),
            (v2_tcp6(), "[2001:db8::1]:4711"),
        ] {
            let (mut client, mut server) = pair().await;
            let mut bytes = header.clone();
            bytes.extend_from_slice(b"\x16\x03\x01");
            client.write_all(&bytes).await.unwrap();
            let source = tokio::time::timeout(LIMIT, read_proxy_header(&mut server, LIMIT))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(source, Some(sa(expected)));
            assert_eq!(read_rest(&mut server, 3).await, b"\x16\x03\x01");
        }
    }

    #[tokio::test]
    async fn reads_v2_split_over_writes() {
        let h = v2_tcp6();
        let mut last = h[40..].to_vec();
        last.extend_from_slice(b"GET");
        let (mut server, r) = send_in_parts(&[&h[..5], &h[5..14], &h[14..40], &last]).await;
        assert_eq!(r.unwrap(), Some(sa("[2001:db8::1]:4711")));
        assert_eq!(read_rest(&mut server, 3).await, b"GET");
    }

    #[tokio::test]
    async fn garbage_is_not_proxy_and_not_consumed() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let r = tokio::time::timeout(LIMIT, read_proxy_header(&mut server, LIMIT))
            .await
            .unwrap();
        assert!(matches!(r, Err(ProxyError::NotProxy)), "{r:?}");
        assert_eq!(read_rest(&mut server, 16).await, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn invalid_header_is_an_error() {
        let (mut client, mut server) = pair().await;
        client
            .write_all(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n")
            .await
            .unwrap();
        let r = tokio::time::timeout(LIMIT, read_proxy_header(&mut server, LIMIT))
            .await
            .unwrap();
        assert!(matches!(r, Err(ProxyError::Invalid(_))), "{r:?}");
    }

    #[tokio::test]
    async fn times_out_when_nothing_arrives() {
        let (_client, mut server) = pair().await;
        let r = tokio::time::timeout(
            LIMIT,
            read_proxy_header(&mut server, Duration::from_millis(200)),
        )
        .await
        .unwrap();
        assert!(matches!(r, Err(ProxyError::Timeout)), "{r:?}");
    }

    #[tokio::test]
    async fn times_out_on_a_partial_header() {
        for partial in [&b"PROXY TCP4 1.2.3.4"[..], b"PRO"] {
            let (mut client, mut server) = pair().await;
            client.write_all(partial).await.unwrap();
            let r = tokio::time::timeout(
                LIMIT,
                read_proxy_header(&mut server, Duration::from_millis(200)),
            )
            .await
            .unwrap();
            assert!(matches!(r, Err(ProxyError::Timeout)), "{r:?}");
        }
    }

    #[tokio::test]
    async fn eof_before_the_header_is_complete() {
        let (mut client, server) = pair().await;
        let reading = spawn_read(server, LIMIT);
        client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        client.shutdown().await.unwrap();
        let (_server, r) = finish(reading).await;
        assert!(matches!(r, Err(ProxyError::Eof)), "{r:?}");

        let (client, mut server) = pair().await;
        drop(client);
        let r = tokio::time::timeout(LIMIT, read_proxy_header(&mut server, LIMIT))
            .await
            .unwrap();
        assert!(matches!(r, Err(ProxyError::Eof)), "{r:?}");
    }
}
