//! A minimal WebSocket client for the load generator: the HTTP upgrade, masked text frames written
//! into one buffer (many frames per `write` syscall), and server frames parsed in place from the
//! read buffer with no per-frame allocation. Ping frames are answered; fragments are reassembled.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Where to connect: `ws://host[:port]/path[?query]`.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The resolved address.
    pub(crate) addr: SocketAddr,
    /// The `Host` header value.
    host: String,
    /// Path and query of the request line.
    path: String,
}

impl Target {
    /// Parses and resolves a `ws://` URL; `extra_query` is appended to the query string.
    pub(crate) async fn resolve(url: &str, extra_query: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("--url must start with ws:// (wss is not supported): {url}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() {
            return Err(format!("--url has no host: {url}"));
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let hostport = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&hostport)
            .await
            .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
            .next()
            .ok_or_else(|| format!("{hostport} resolves to no address"))?;
        let mut path = path;
        if !extra_query.is_empty() {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str(extra_query);
        }
        Ok(Target {
            addr,
            host: authority.to_owned(),
            path,
        })
    }
}

/// Frame opcodes the reader hands to its caller.
const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;

/// The write side: frames are appended (masked) and written in one go by [`Conn::flush`].
#[derive(Debug)]
pub(crate) struct Out {
    /// Encoded frames not yet written.
    pub(crate) buf: Vec<u8>,
    rng: u64,
}

impl Out {
    /// An empty write buffer (unit tests).
    #[cfg(test)]
    pub(crate) fn for_tests() -> Out {
        Out {
            buf: Vec::new(),
            rng: 7,
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift64: a fresh masking key per frame, as RFC 6455 asks, at no measurable cost.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x as u32).to_le_bytes()
    }

    /// Appends one text frame whose payload is written by `fill`.
    pub(crate) fn text_with(&mut self, fill: impl FnOnce(&mut Vec<u8>)) {
        self.frame_with(0x80 | OP_TEXT, fill);
    }

    /// Appends one text frame.
    pub(crate) fn text(&mut self, payload: &[u8]) {
        self.text_with(|b| b.extend_from_slice(payload));
    }

    fn frame_with(&mut self, first: u8, fill: impl FnOnce(&mut Vec<u8>)) {
        // Reserve the longest header (2 + 8 + 4), write the payload after it, then move the
        // payload back if the real header is shorter. Payloads here are small, the move is cheap.
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 14]);
        let body = self.buf.len();
        fill(&mut self.buf);
        let len = self.buf.len() - body;
        let mask = self.next_mask();
        let mut hdr = [0u8; 14];
        hdr[0] = first;
        let hlen = if len < 126 {
            hdr[1] = 0x80 | len as u8;
            2
        } else if len <= 0xffff {
            hdr[1] = 0x80 | 126;
            hdr[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            hdr[1] = 0x80 | 127;
            hdr[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        hdr[hlen..hlen + 4].copy_from_slice(&mask);
        let hlen = hlen + 4;
        apply_mask(&mut self.buf[body..], mask);
        self.buf[start..start + hlen].copy_from_slice(&hdr[..hlen]);
        if hlen < 14 {
            self.buf.copy_within(body.., start + hlen);
            self.buf.truncate(start + hlen + len);
        }
    }
}

/// XORs `payload` with the masking key, a word at a time (a byte loop here cost the generator
/// as much as the rest of a round trip's work).
fn apply_mask(payload: &mut [u8], key: [u8; 4]) {
    let word = u32::from_ne_bytes(key);
    let word = u64::from(word) | (u64::from(word) << 32);
    let mut words = payload.chunks_exact_mut(8);
    for w in &mut words {
        let mut x = [0u8; 8];
        x.copy_from_slice(w);
        w.copy_from_slice(&(u64::from_ne_bytes(x) ^ word).to_ne_bytes());
    }
    for (b, k) in words.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
}

/// One client connection.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    frag: Vec<u8>,
    /// The write side.
    pub(crate) out: Out,
}

/// Why reading stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The socket failed or the peer closed the TCP connection.
    Io(io::Error),
    /// The server sent a close frame with this code (1005 when it had none).
    Closed(u16),
    /// The server broke the framing rules.
    Protocol(&'static str),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Closed(c) => write!(f, "server closed the WebSocket with code {c}"),
            ReadError::Protocol(m) => write!(f, "WebSocket protocol error: {m}"),
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

static SEED: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0x9e37_79b9_7f4a_7c15);

impl Conn {
    /// Opens a TCP connection (from `source` when given) and performs the WebSocket upgrade,
    /// with `extra` request header lines (each ending in `\r\n`);
    /// returns the connection and the head of the 101 response.
    pub(crate) async fn connect_with(
        target: &Target,
        source: Option<IpAddr>,
        extra: &str,
    ) -> io::Result<(Conn, String)> {
        let stream = match source {
            Some(ip) => {
                let sock = match ip {
                    IpAddr::V4(_) => TcpSocket::new_v4()?,
                    IpAddr::V6(_) => TcpSocket::new_v6()?,
                };
                sock.bind(SocketAddr::new(ip, 0))?;
                sock.connect(target.addr).await?
            }
            None => TcpStream::connect(target.addr).await?,
        };
        stream.set_nodelay(true)?;
        let seed = SEED.fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed);
        let mut conn = Conn {
            stream,
            rbuf: Vec::with_capacity(4096),
            frag: Vec::new(),
            out: Out {
                buf: Vec::with_capacity(1024),
                rng: seed | 1,
            },
        };
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
            target.path, target.host
        );
        conn.stream.write_all(req.as_bytes()).await?;
        loop {
            if let Some(end) = find(&conn.rbuf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&conn.rbuf[..end]).into_owned();
                let status = head.lines().next().unwrap_or("");
                if !status.starts_with("HTTP/1.1 101") {
                    return Err(io::Error::other(format!(
                        "WebSocket upgrade refused: {status}"
                    )));
                }
                conn.rbuf.drain(..end + 4);
                return Ok((conn, head));
            }
            if conn.rbuf.len() > 16 * 1024 {
                return Err(io::Error::other("upgrade response too long"));
            }
            conn.read_more().await?;
        }
    }

    /// Reads at least one more byte into the read buffer.
    pub(crate) async fn read_more(&mut self) -> io::Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < 2048 {
            self.rbuf.reserve(8192);
        }
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the TCP connection",
            ));
        }
        Ok(())
    }

    /// Writes every buffered frame.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.out.buf.is_empty() {
            self.stream.write_all(&self.out.buf).await?;
            self.out.buf.clear();
        }
        Ok(())
    }

    /// Calls `on_text` for every complete text (or binary) message in the read buffer, answers
    /// pings, and keeps a partial frame for the next read.
    pub(crate) fn drain_frames(
        &mut self,
        mut on_text: impl FnMut(&[u8], &mut Out),
    ) -> Result<(), ReadError> {
        let mut pos = 0;
        let mut want = 0;
        let buf = &self.rbuf;
        loop {
            let b = &buf[pos..];
            if b.len() < 2 {
                break;
            }
            let fin = b[0] & 0x80 != 0;
            let op = b[0] & 0x0f;
            if b[1] & 0x80 != 0 {
                return Err(ReadError::Protocol("masked frame from the server"));
            }
            let (hlen, len) = match b[1] & 0x7f {
                126 => {
                    if b.len() < 4 {
                        break;
                    }
                    (4, u16::from_be_bytes([b[2], b[3]]) as usize)
                }
                127 => {
                    if b.len() < 10 {
                        break;
                    }
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&b[2..10]);
                    let l = u64::from_be_bytes(l);
                    if l > (1 << 30) {
                        return Err(ReadError::Protocol("frame over 1 GiB"));
                    }
                    (10, l as usize)
                }
                n => (2, n as usize),
            };
            if b.len() < hlen + len {
                want = hlen + len;
                break;
            }
            let payload = &b[hlen..hlen + len];
            pos += hlen + len;
            match op {
                OP_TEXT | OP_BINARY if fin && self.frag.is_empty() => {
                    on_text(payload, &mut self.out)
                }
                OP_TEXT | OP_BINARY | OP_CONT => {
                    self.frag.extend_from_slice(payload);
                    if fin {
                        on_text(&self.frag, &mut self.out);
                        self.frag.clear();
                    }
                }
                OP_CLOSE => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    return Err(ReadError::Closed(code));
                }
                OP_PING => self.out.frame_with(0x8a, |o| o.extend_from_slice(payload)),
                _ => {}
            }
        }
        if pos > 0 {
            self.rbuf.drain(..pos);
        }
        if want > self.rbuf.capacity() {
            // Leave room for the whole frame before the next read.
            self.rbuf.reserve(want - self.rbuf.len());
        }
        Ok(())
    }

    /// Sends a close frame (1000) and shuts the write side down; errors are ignored.
    pub(crate) async fn close(mut self) {
        self.out
            .frame_with(0x88, |o| o.extend_from_slice(&1000u16.to_be_bytes()));
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// The position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let (hlen, len) = match frame[1] & 0x7f {
            126 => (4, u16::from_be_bytes([frame[2], frame[3]]) as usize),
            127 => (
                10,
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
            ),
            n => (2, n as usize),
        };
        assert_eq!(frame.len(), hlen + 4 + len);
        let m = &frame[hlen..hlen + 4];
        let p = frame[hlen + 4..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ m[i & 3])
            .collect();
        (frame[0], p)
    }

    #[test]
    fn frames_are_masked_with_the_right_lengths() {
        for len in [
            0usize, 1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 125, 126, 300, 65535, 65536, 70000,
        ] {
            let mut out = Out {
                buf: Vec::new(),
                rng: 7,
            };
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            out.text(&payload);
            let (first, p) = unmask(&out.buf);
            assert_eq!(first, 0x81);
            assert_eq!(p, payload, "len {len}");
        }
    }
}
