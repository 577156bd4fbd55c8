//! A server-side WebSocket (RFC 6455) framing layer sized for many idle connections.
//!
//! An idle socket holds no buffers: reads land in a stack buffer and only bytes of an incomplete
//! frame are kept (a large frame whose length is known is read straight into a buffer of that
//! size); the write buffer is released after each flush. Outgoing frames are queued as
//! `bytes::Bytes` chunks (small ones coalesced with their header, large payloads referenced, not
//! copied) and written with vectored writes, many frames per syscall.
//!
//! Inbound checks: client frames must be masked, no RSV bits, known opcodes, control frames short
//! and unfragmented (else 1002); a message over the maximum
//! payload is refused from its header (1009) without reading it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{Incoming, Transport, TransportError};

/// Reads smaller than this go through the stack buffer.
const STACK_READ: usize = 4096;
/// Payloads up to this size are copied next to their header instead of referenced.
pub(crate) const COALESCE: usize = 1024;
/// Chunks per vectored write.
const MAX_IOV: usize = 64;
/// The write buffer's first allocation of a batch (released after the flush), so a batch of
/// small frames does not grow it step by step. At most 1 KiB (a little more for a frame of
/// `COALESCE` bytes) so that glibc serves it from its per-thread cache, not its bins.
const WBUF_FIRST: usize = 1024;

/// What a read produced.
#[derive(Debug)]
pub(crate) enum WsEvent {
    /// A complete text (`true`) or binary (`false`) message.
    Message(Bytes, bool),
    /// A ping (already answered) or a pong.
    Control,
    /// The peer's close frame (already answered): code (1005 when absent) and reason.
    Close(u16, String),
}

/// Why reading stopped.
#[derive(Debug)]
pub(crate) enum WsError {
    /// A protocol violation: the close code to send (1002, 1007, 1009) and why.
    Protocol(u16, &'static str),
    /// The connection ended or failed.
    Io(io::Error),
}

/// The server side of a WebSocket connection (RFC 6455) over any upgraded IO: the framing that
/// the crate's WebSocket endpoint runs on, for a server that does its own upgrade (another HTTP
/// stack, a test, a proxy).
///
/// It takes the connection after the handshake: build it with [`WsStream::new`] and use it
/// through [`Transport`]: [`poll_recv`](Transport::poll_recv) yields whole messages (fragments
/// reassembled, pings answered, the client's close answered), [`send`](Transport::send) and the
/// other `send` methods queue text messages, [`send_binary`](WsStream::send_binary) a binary one,
/// [`poll_flush`](Transport::poll_flush) writes what is queued, [`close`](Transport::close)
/// queues the server's close and [`shutdown`](Transport::shutdown) ends the connection after
/// either side's close. It can also be handed to [`ScHandle::accept`](crate::ScHandle::accept)
/// to run as a SocketCluster socket.
///
/// What it checks: client frames masked, no RSV bits (no extension is negotiated), known
/// opcodes, control frames unfragmented and at most 125 bytes, continuation frames only inside a
/// fragmented message, a valid close code and a UTF-8 close reason; a violation is a
/// [`TransportError::Protocol`] with 1002 (1007 for the close reason), and a message longer
/// than `max_payload` one with 1009, from its header, before it is read. What it does not check:
/// **text messages are not validated as UTF-8** (the socket does that once, on the whole
/// message); a caller that reads [`Incoming::Text`] itself must check it and close with 1007.
/// The caller answers a protocol error with [`close`](Transport::close) and
/// [`shutdown`](Transport::shutdown).
///
/// `crates/sc-worker/examples/autobahn_echo.rs` in the repository upgrades with hyper and echoes;
/// the Autobahn test suite runs against it (`scripts/autobahn`). The echo loop alone:
///
/// ```
/// use std::future::poll_fn;
///
/// use sc_worker::transport::{Incoming, Transport, TransportError, WsStream};
/// use tokio::io::{AsyncRead, AsyncWrite};
///
/// /// Echoes every message until either side closes. `io` is the connection after the server
/// /// answered the upgrade with 101.
/// async fn echo<S>(io: S) -> Result<(), TransportError>
/// where
///     S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
/// {
///     let mut ws = WsStream::new(io, bytes::Bytes::new(), 16 << 20);
///     loop {
///         match poll_fn(|cx| ws.poll_recv(cx)).await {
///             Ok(Incoming::Text(text)) if std::str::from_utf8(&text).is_ok() => ws.send(text),
///             Ok(Incoming::Text(_)) => {
///                 ws.close(1007, "invalid UTF-8");
///                 break;
///             }
///             Ok(Incoming::Binary(data)) => ws.send_binary(data),
///             Ok(Incoming::Closed(..)) => break,
///             Ok(_) => {} // a ping (answered already) or a pong
///             Err(TransportError::Protocol(code, reason)) => {
///                 ws.close(code, &reason);
///                 break;
///             }
///             Err(e) => return Err(e),
///         }
///         poll_fn(|cx| ws.poll_flush(cx)).await?;
///     }
///     // Flushes, waits for the client's close (bound it in time), releases the connection.
///     ws.shutdown().await;
///     Ok(())
/// }
/// # let (server, _client) = tokio::io::duplex(64);
/// # let _ = echo(server);
/// ```
pub struct WsStream<S> {
    io: S,
    rbuf: BytesMut,
    /// Opcode kind (text?) and payload of a fragmented message being assembled.
    partial: Option<(bool, BytesMut)>,
    max_payload: usize,
    wq: VecDeque<Bytes>,
    wbuf: BytesMut,
    close_sent: bool,
    /// The peer's close frame arrived.
    close_received: bool,
    /// The last read filled all the room it was given: more may be waiting in the socket.
    read_was_full: bool,
}

fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let m64 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ m64).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Whether a peer may send `code` in a close frame (RFC 6455 §7.4): the defined codes but the
/// ones reserved for reports (1005, 1006, 1015), the registered 1012-1014, and 3000-4999 for
/// libraries and applications.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Text is not validated here: the caller turns it into `&str` once (1007 if not UTF-8).
fn message(payload: Bytes, text: bool) -> Result<WsEvent, WsError> {
    Ok(WsEvent::Message(payload, text))
}

enum Parsed {
    /// A frame: fin, opcode, unmasked payload.
    Frame(bool, u8, BytesMut),
    /// This many more bytes are needed.
    Need(usize),
}

impl<S> std::fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("max_payload", &self.max_payload)
            .field("buffered", &self.rbuf.len())
            .field(
                "has_pending",
                &(!self.wbuf.is_empty() || !self.wq.is_empty()),
            )
            .field("close_sent", &self.close_sent)
            .field("close_received", &self.close_received)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// The server side of the WebSocket connection `io`, whose upgrade is done (the server
    /// answered 101). `read` holds bytes the client sent that were already read off `io` after
    /// the upgrade request (hyper's `Parts::read_buf` when the upgraded IO is downcast), usually
    /// none. `max_payload` is the longest message accepted, all its fragments together: a longer
    /// one fails the connection with 1009.
    pub fn new(io: S, read: Bytes, max_payload: usize) -> Self {
        WsStream {
            io,
            rbuf: if read.is_empty() {
                BytesMut::new()
            } else {
                BytesMut::from(read)
            },
            partial: None,
            max_payload,
            wq: VecDeque::new(),
            wbuf: BytesMut::new(),
            close_sent: false,
            close_received: false,
            read_was_full: false,
        }
    }

    fn parse(&mut self) -> Result<Parsed, WsError> {
        let b = &self.rbuf[..];
        if b.len() < 2 {
            return Ok(Parsed::Need(2 - b.len()));
        }
        let (b0, b1) = (b[0], b[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol(1002, "reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(WsError::Protocol(1002, "client frame not masked"));
        }
        let control = opcode >= 8;
        match opcode {
            0..=2 | 8..=10 => {}
            _ => return Err(WsError::Protocol(1002, "unknown opcode")),
        }
        let (len, ext) = match b1 & 0x7f {
            126 => {
                if b.len() < 4 {
                    return Ok(Parsed::Need(4 - b.len()));
                }
                (u64::from(u16::from_be_bytes([b[2], b[3]])), 2)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(Parsed::Need(10 - b.len()));
                }
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(l), 8)
            }
            n => (u64::from(n), 0),
        };
        if control && (!fin || len > 125) {
            return Err(WsError::Protocol(1002, "bad control frame"));
        }
        let already = self.partial.as_ref().map_or(0, |(_, p)| p.len() as u64);
        if !control && already.saturating_add(len) > self.max_payload as u64 {
            return Err(WsError::Protocol(1009, "Message was too big to process"));
        }
        let len = usize::try_from(len).map_err(|_| WsError::Protocol(1009, "too big"))?;
        let header = 2 + ext + 4;
        if b.len() < header + len {
            return Ok(Parsed::Need(header + len - b.len()));
        }
        let mut mask = [0; 4];
        mask.copy_from_slice(&b[2 + ext..6 + ext]);
        self.rbuf.advance(header);
        // One frame per read is the usual case: the frame takes the buffer whole, which spares
        // `split_to` promoting it to a shared buffer (one more allocation).
        let mut payload = if self.rbuf.len() == len {
            std::mem::take(&mut self.rbuf)
        } else {
            self.rbuf.split_to(len)
        };
        unmask(&mut payload, mask);
        Ok(Parsed::Frame(fin, opcode, payload))
    }

    /// Handles one parsed frame; `None` when it only continued a fragmented message.
    fn on_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: BytesMut,
    ) -> Result<Option<WsEvent>, WsError> {
        match opcode {
            0 => {
                let Some((_, p)) = self.partial.as_mut() else {
                    return Err(WsError::Protocol(1002, "continuation without a message"));
                };
                p.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                let Some((text, p)) = self.partial.take() else {
                    return Ok(None);
                };
                message(p.freeze(), text).map(Some)
            }
            1 | 2 => {
                if self.partial.is_some() {
                    return Err(WsError::Protocol(
                        1002,
                        "new message inside a fragmented one",
                    ));
                }
                if fin {
                    message(payload.freeze(), opcode == 1).map(Some)
                } else {
                    self.partial = Some((opcode == 1, payload));
                    Ok(None)
                }
            }
            8 => {
                if payload.len() == 1 {
                    return Err(WsError::Protocol(1002, "close frame of one byte"));
                }
                let (code, reason) = if payload.len() >= 2 {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    if !close_code_allowed(code) {
                        return Err(WsError::Protocol(1002, "invalid close code"));
                    }
                    let reason = std::str::from_utf8(&payload[2..])
                        .map_err(|_| WsError::Protocol(1007, "close reason not UTF-8"))?
                        .to_owned();
                    (code, reason)
                } else {
                    (1005, String::new())
                };
                self.close_received = true;
                if !self.close_sent {
                    let echo = if code == 1005 { None } else { Some(code) };
                    self.queue_close(echo, "");
                }
                Ok(Some(WsEvent::Close(code, reason)))
            }
            9 => {
                // Nothing is sent after the server's close (RFC 6455 §5.5.1).
                if !self.close_sent {
                    self.queue_frame(0xA, payload.freeze());
                }
                Ok(Some(WsEvent::Control))
            }
            _ => Ok(Some(WsEvent::Control)),
        }
    }

    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<WsEvent, WsError>> {
        loop {
            let need = match self.parse()? {
                Parsed::Frame(fin, opcode, payload) => {
                    if self.rbuf.is_empty() {
                        self.rbuf = BytesMut::new();
                    }
                    match self.on_frame(fin, opcode, payload)? {
                        Some(ev) => return Poll::Ready(Ok(ev)),
                        None => continue,
                    }
                }
                Parsed::Need(n) => n,
            };
            let n = if need > STACK_READ {
                self.rbuf.reserve(need);
                let before = self.rbuf.len();
                let n = ready!(tokio_util::io::poll_read_buf(
                    Pin::new(&mut self.io),
                    cx,
                    &mut self.rbuf
                ))
                .map_err(WsError::Io)?;
                debug_assert_eq!(self.rbuf.len(), before + n);
                self.read_was_full = self.rbuf.len() == self.rbuf.capacity();
                n
            } else {
                // Not zeroed: the reader only writes into it, and only the filled part is read.
                let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); STACK_READ];
                let mut rb = ReadBuf::uninit(&mut stack);
                ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb)).map_err(WsError::Io)?;
                let filled = rb.filled();
                self.read_was_full = filled.len() == STACK_READ;
                if self.rbuf.is_empty() {
                    self.rbuf = BytesMut::from(filled);
                } else {
                    self.rbuf.extend_from_slice(filled);
                }
                filled.len()
            };
            if n == 0 {
                return Poll::Ready(Err(WsError::Io(io::ErrorKind::UnexpectedEof.into())));
            }
        }
    }

    /// Whether polling for the next message may find one without waiting: bytes are buffered,
    /// or the last read was not short. After a short read the socket is drained (tokio clears its
    /// readiness then, so a poll would only register for the next wake-up).
    pub(crate) fn may_have_more(&self) -> bool {
        !self.rbuf.is_empty() || self.read_was_full
    }

    /// The next message or event (cancel-safe).
    pub(crate) async fn next(&mut self) -> Result<WsEvent, WsError> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    fn queue_frame(&mut self, opcode: u8, payload: Bytes) {
        let len = payload.len();
        let mut header = [0u8; 10];
        header[0] = 0x80 | opcode;
        let hlen = if len < 126 {
            header[1] = len as u8;
            2
        } else if let Ok(l) = u16::try_from(len) {
            header[1] = 126;
            header[2..4].copy_from_slice(&l.to_be_bytes());
            4
        } else {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        if self.wbuf.capacity() == 0 && len <= COALESCE {
            self.wbuf = BytesMut::with_capacity(WBUF_FIRST.max(len + hlen));
        }
        self.wbuf.extend_from_slice(&header[..hlen]);
        if len <= COALESCE {
            self.wbuf.extend_from_slice(&payload);
        } else {
            let head = self.wbuf.split().freeze();
            self.wq.push_back(head);
            self.wq.push_back(payload);
        }
    }

    /// Whether frames are queued and not yet written (a pong, for instance).
    pub(crate) fn has_pending(&self) -> bool {
        !self.wbuf.is_empty() || !self.wq.is_empty()
    }

    /// Queues a text frame (written by the next flush).
    pub(crate) fn queue_text(&mut self, payload: Bytes) {
        if !self.close_sent {
            self.queue_frame(0x1, payload);
        }
    }

    /// Queues a binary message (written by the next flush; nothing after the server's close).
    /// Payloads up to 1 KiB are copied next to their header, larger ones referenced, not copied.
    pub fn send_binary(&mut self, payload: Bytes) {
        if !self.close_sent {
            self.queue_frame(0x2, payload);
        }
    }

    /// Queues a text frame from shared bytes: small ones are copied (the reference is not
    /// cloned), large ones referenced.
    pub(crate) fn queue_text_ref(&mut self, payload: &Bytes) {
        if self.close_sent {
            return;
        }
        if payload.len() <= COALESCE {
            self.queue_small(0x1, payload);
        } else {
            self.queue_frame(0x1, payload.clone());
        }
    }

    /// Makes room for `additional` more bytes of small frames in the write buffer (at most
    /// 64 KiB are reserved at once).
    pub(crate) fn reserve(&mut self, additional: usize) {
        let additional = additional.min(64 * 1024);
        if self.wbuf.capacity() - self.wbuf.len() < additional {
            self.wbuf.reserve(additional.max(WBUF_FIRST));
        }
    }

    /// Queues a text frame given as a `Vec` (small ones are copied next to their header, so no
    /// `Bytes` is made for them).
    pub(crate) fn queue_text_vec(&mut self, payload: Vec<u8>) {
        if self.close_sent {
            return;
        }
        if payload.len() <= COALESCE {
            self.queue_small(0x1, &payload);
        } else {
            self.queue_frame(0x1, Bytes::from(payload));
        }
    }

    fn queue_small(&mut self, opcode: u8, payload: &[u8]) {
        self.small_header(opcode, payload.len());
        self.wbuf.extend_from_slice(payload);
    }

    /// Writes the header of a frame whose payload (`len` ≤ [`COALESCE`]) follows in `wbuf`.
    #[inline]
    fn small_header(&mut self, opcode: u8, len: usize) {
        if self.wbuf.capacity() == 0 {
            self.wbuf = BytesMut::with_capacity(WBUF_FIRST.max(len + 4));
        }
        if len < 126 {
            self.wbuf.extend_from_slice(&[0x80 | opcode, len as u8]);
        } else {
            self.wbuf.extend_from_slice(&[0x80 | opcode, 126]);
            self.wbuf.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }

    /// Queues the reply `{"rid":N[,"data":D]}`, encoded in place after its frame header.
    #[inline]
    fn queue_response(&mut self, rid: u64, data: Option<&[u8]>) {
        if self.close_sent {
            return;
        }
        let len = sc_protocol::encode::response_len(rid, data.map(<[u8]>::len));
        if len <= COALESCE {
            self.small_header(0x1, len);
            // One capacity check for the pieces `put_response` appends.
            self.wbuf.reserve(len);
            sc_protocol::encode::put_response(&mut self.wbuf, rid, data);
        } else {
            let mut payload = Vec::with_capacity(len);
            sc_protocol::encode::put_response(&mut payload, rid, data);
            self.queue_frame(0x1, Bytes::from(payload));
        }
    }

    /// Queues a close frame; nothing is sent after it.
    pub(crate) fn queue_close(&mut self, code: Option<u16>, reason: &str) {
        if self.close_sent {
            return;
        }
        let mut p = Vec::with_capacity(2 + reason.len());
        if let Some(code) = code {
            p.extend_from_slice(&code.to_be_bytes());
            p.extend_from_slice(reason.as_bytes());
        }
        self.queue_frame(0x8, Bytes::from(p));
        self.close_sent = true;
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Only small frames queued (the usual case): write the buffer as it is.
        while self.wq.is_empty() && !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.advance(n);
        }
        if !self.wbuf.is_empty() {
            let chunk = self.wbuf.split().freeze();
            self.wq.push_back(chunk);
        }
        while !self.wq.is_empty() {
            let n = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut count = 0;
                for (slot, chunk) in iov.iter_mut().zip(self.wq.iter()) {
                    *slot = IoSlice::new(chunk);
                    count += 1;
                }
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &iov[..count]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let mut left = n;
            while left > 0 {
                let Some(front) = self.wq.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    self.wq.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.wbuf = BytesMut::new();
        if self.wq.capacity() > 16 {
            self.wq = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Writes everything queued (cancel-safe: what is not written stays queued).
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }
}

impl<S> Transport for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[inline]
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, TransportError>> {
        self.poll_next(cx).map(|r| match r {
            Ok(WsEvent::Message(bytes, true)) => Ok(Incoming::Text(bytes)),
            Ok(WsEvent::Message(bytes, false)) => Ok(Incoming::Binary(bytes)),
            Ok(WsEvent::Control) => Ok(Incoming::Alive),
            Ok(WsEvent::Close(code, reason)) => Ok(Incoming::Closed(code, reason)),
            Err(WsError::Protocol(code, reason)) => Err(TransportError::protocol(code, reason)),
            Err(WsError::Io(e)) => Err(TransportError::Io(e)),
        })
    }

    #[inline]
    fn may_have_more(&self) -> bool {
        WsStream::may_have_more(self)
    }

    fn send(&mut self, message: Bytes) {
        self.queue_text(message);
    }

    #[inline]
    fn send_shared(&mut self, message: &Bytes) {
        self.queue_text_ref(message);
    }

    #[inline]
    fn send_vec(&mut self, message: Vec<u8>) {
        self.queue_text_vec(message);
    }

    #[inline]
    fn send_response(&mut self, rid: u64, data: Option<&[u8]>) {
        self.queue_response(rid, data);
    }

    fn reserve(&mut self, additional: usize) {
        WsStream::reserve(self, additional);
    }

    #[inline]
    fn has_pending(&self) -> bool {
        WsStream::has_pending(self)
    }

    #[inline]
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        WsStream::poll_flush(self, cx).map_err(TransportError::Io)
    }

    fn close(&mut self, code: u16, reason: &str) {
        self.queue_close(Some(code), reason);
    }

    /// After the peer's close: half-closes. After the server's: waits for the peer's close
    /// frame, then half-closes and reads to the end, so the close frame is not lost to a TCP
    /// reset.
    async fn shutdown(&mut self) {
        let _ = self.flush().await;
        if self.close_received {
            let _ = self.io.shutdown().await;
            return;
        }
        while let Ok(ev) = self.next().await {
            if matches!(ev, WsEvent::Close(..)) {
                break;
            }
        }
        let _ = self.io.shutdown().await;
        // On the heap: a buffer in this future would be in every socket task's future.
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn unmask_matches_a_byte_loop_at_every_length() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..=41 {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut buf = plain.clone();
            unmask(&mut buf, mask);
            let expected: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(buf, expected, "length {len}");
        }
    }

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len < 65536 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[tokio::test]
    async fn messages_fragments_control_and_limits() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut ws = WsStream::new(a, Bytes::new(), 100_000);
        let mut input = client_frame(true, 1, b"hello");
        input.extend(client_frame(false, 1, "héllo ".as_bytes()));
        input.extend(client_frame(true, 9, b"p"));
        input.extend(client_frame(false, 0, b"wor"));
        input.extend(client_frame(true, 0, b"ld"));
        let big = vec![b'x'; 70_000];
        input.extend(client_frame(true, 2, &big));
        b.write_all(&input).await.unwrap();
        assert!(
            matches!(ws.next().await.unwrap(), WsEvent::Message(m, true) if &m[..] == b"hello")
        );
        assert!(matches!(ws.next().await.unwrap(), WsEvent::Control));
        assert!(
            matches!(ws.next().await.unwrap(), WsEvent::Message(m, true) if &m[..] == "héllo world".as_bytes())
        );
        assert!(
            matches!(ws.next().await.unwrap(), WsEvent::Message(m, false) if m.len() == 70_000)
        );
        // The pong and a text frame go out in one flush.
        ws.queue_text(Bytes::from_static(b"reply"));
        ws.queue_text(Bytes::from(vec![b'y'; 2000]));
        ws.flush().await.unwrap();
        let mut out = vec![0u8; 3 + 7 + 4 + 2000];
        b.read_exact(&mut out).await.unwrap();
        assert_eq!(&out[..3], &[0x8A, 1, b'p']);
        assert_eq!(&out[3..10], &[0x81, 5, b'r', b'e', b'p', b'l', b'y']);
        assert_eq!(&out[10..14], &[0x81, 126, 0x07, 0xD0]);
        // Over the limit: 1009 from the header alone.
        b.write_all(&client_frame(true, 1, &vec![b'z'; 100_001])[..14])
            .await
            .unwrap();
        assert!(matches!(ws.next().await, Err(WsError::Protocol(1009, _))));
    }

    /// One frame per read (the frame takes the read buffer whole), several per read, and a frame
    /// split across reads all come out intact; `may_have_more` is false only once a short read
    /// has been consumed.
    #[tokio::test]
    async fn frames_whole_batched_and_split_across_reads() {
        use futures_util::FutureExt;
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut ws = WsStream::new(a, Bytes::new(), 100_000);
        assert!(!ws.may_have_more());
        b.write_all(&client_frame(true, 1, b"one")).await.unwrap();
        let first = ws.next().await.unwrap();
        assert!(matches!(&first, WsEvent::Message(m, true) if &m[..] == b"one"));
        assert!(!ws.may_have_more(), "the short read was consumed whole");
        let mut two = client_frame(true, 1, b"two");
        two.extend(client_frame(true, 1, b"three"));
        let split = client_frame(true, 1, b"four, split");
        two.extend_from_slice(&split[..5]);
        b.write_all(&two).await.unwrap();
        assert!(matches!(ws.next().await.unwrap(), WsEvent::Message(m, true) if &m[..] == b"two"));
        assert!(ws.may_have_more(), "a frame and a half are buffered");
        assert!(
            matches!(ws.next().await.unwrap(), WsEvent::Message(m, true) if &m[..] == b"three")
        );
        assert!(ws.may_have_more(), "half a frame is buffered");
        assert!(
            ws.next().now_or_never().is_none(),
            "half a frame is not a message"
        );
        b.write_all(&split[5..]).await.unwrap();
        assert!(
            matches!(ws.next().await.unwrap(), WsEvent::Message(m, true) if &m[..] == b"four, split")
        );
        // The first message is still intact after the buffer was reused.
        assert!(matches!(first, WsEvent::Message(m, true) if &m[..] == b"one"));
        // A read that fills the stack buffer says more may be waiting.
        let big: Vec<u8> = (0..3)
            .flat_map(|_| client_frame(true, 2, &[7u8; 2000]))
            .collect();
        b.write_all(&big).await.unwrap();
        assert!(matches!(ws.next().await.unwrap(), WsEvent::Message(m, false) if m.len() == 2000));
        assert!(ws.may_have_more());
    }

    /// After the server's close nothing else is written: a ping then gets no pong, and messages
    /// queued then are dropped (RFC 6455 §5.5.1).
    #[tokio::test]
    async fn nothing_is_sent_after_the_servers_close() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut ws = WsStream::new(a, Bytes::new(), 1000);
        ws.send_binary(Bytes::from_static(b"bin"));
        ws.queue_close(Some(1000), "");
        ws.send_binary(Bytes::from_static(b"late"));
        ws.queue_text(Bytes::from_static(b"late"));
        b.write_all(&client_frame(true, 9, b"ping")).await.unwrap();
        assert!(matches!(ws.next().await.unwrap(), WsEvent::Control));
        assert!(ws.has_pending());
        ws.flush().await.unwrap();
        drop(ws);
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, [0x82, 3, b'b', b'i', b'n', 0x88, 2, 0x03, 0xE8]);
    }

    #[tokio::test]
    async fn protocol_errors_and_close() {
        for (bytes, code) in [
            (vec![0x81, 0x01, b'a'], 1002),         // unmasked
            (client_frame(true, 3, b"x"), 1002),    // unknown opcode
            (client_frame(true, 0, b"x"), 1002),    // stray continuation
            (client_frame(false, 9, b"x"), 1002),   // fragmented control
            (client_frame(true, 8, &[0x03]), 1002), // a close of one byte
        ]
        .into_iter()
        // Close codes a peer may not send (RFC 6455 §7.4; Autobahn 7.9.x).
        .chain(
            [
                0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
            ]
            .map(|c| (client_frame(true, 8, &c.to_be_bytes()), 1002)),
        ) {
            let (a, mut b) = tokio::io::duplex(1024);
            let mut ws = WsStream::new(a, Bytes::new(), 1000);
            b.write_all(&bytes).await.unwrap();
            match ws.next().await {
                Err(WsError::Protocol(c, _)) => assert_eq!(c, code),
                other => panic!("{other:?}"),
            }
        }
        let (a, mut b) = tokio::io::duplex(1024);
        let mut ws = WsStream::new(a, Bytes::new(), 1000);
        let mut close = 4321u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        b.write_all(&client_frame(true, 8, &close)).await.unwrap();
        assert!(matches!(ws.next().await.unwrap(), WsEvent::Close(4321, r) if r == "bye"));
        ws.flush().await.unwrap();
        let mut echo = [0u8; 4];
        b.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, [0x88, 2, 0x10, 0xE1]);
        drop(b);
        assert!(matches!(ws.next().await, Err(WsError::Io(_))));
        // Every code a peer may send is accepted.
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1010, 1011, 1012, 1014, 3000, 3999, 4000, 4999,
        ] {
            let (a, mut b) = tokio::io::duplex(1024);
            let mut ws = WsStream::new(a, Bytes::new(), 1000);
            b.write_all(&client_frame(true, 8, &code.to_be_bytes()))
                .await
                .unwrap();
            assert!(
                matches!(ws.next().await.unwrap(), WsEvent::Close(c, _) if c == code),
                "{code}"
            );
        }
    }
}
