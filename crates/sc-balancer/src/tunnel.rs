//! The bytes of an upgraded connection, both ways, between a client and its worker.
//!
//! One task per tunnel polls both directions. A read goes into a buffer that belongs to the
//! thread, not to the tunnel, and is written on at once; only what the destination does not take
//! right away is copied into a buffer of the tunnel's own, freed once written. An idle tunnel
//! holds no buffer.
//!
//! The worker's side is followed frame by frame (WebSocket frame headers, RFC 6455 §5.2), so the
//! balancer knows whether the worker sent a close frame and whether the client's stream sits at
//! a frame boundary. When the worker's connection ends without a close frame (the worker died),
//! the balancer writes a close frame itself: code [`WORKER_LOST`], on which socketcluster-client
//! reconnects at once (after a bare TCP close, 1006, it would wait 10 to 20 s).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::OpenTunnel;

/// The close code the balancer sends to a client whose worker went away: 4000, one of the
/// three codes (4000, 4001, 1005) on which socketcluster-client v20 reconnects without delay.
pub const WORKER_LOST: u16 = 4000;
/// The reason sent with [`WORKER_LOST`].
pub const WORKER_LOST_REASON: &str = "worker lost";

/// How long the client gets to answer the balancer's close frame before its connection is
/// dropped.
const LINGER: Duration = Duration::from_secs(2);

/// Size of the per-thread read buffer (a TLS record holds up to 16 KiB of plaintext).
const READ_BUF: usize = 32 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_BUF].into_boxed_slice());
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed (or the client went away).
    Closed,
    /// The worker's connection ended without a close frame; the client got [`WORKER_LOST`].
    WorkerLost,
    /// The worker's connection ended in the middle of a frame; the client's connection was
    /// dropped (a close frame cannot be put inside a frame).
    WorkerLostMidFrame,
}

/// Follows the frames of one direction of a WebSocket stream.
#[derive(Debug, Default)]
pub(crate) struct FrameTracker {
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// The header read so far (at most 14 bytes).
    head: [u8; 14],
    head_len: u8,
    /// A close frame was seen.
    pub(crate) closed: bool,
}

impl FrameTracker {
    /// Whether the stream sits between two frames.
    pub(crate) fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.head_len == 0
    }

    /// Follows `bytes`, the next bytes of the stream.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining).map_or(bytes.len(), |r| r.min(bytes.len()));
                self.remaining -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            // A header: copy bytes until it is whole.
            let have = usize::from(self.head_len);
            let need = header_len(&self.head[..have]);
            let take = (need - have).min(bytes.len());
            self.head[have..have + take].copy_from_slice(&bytes[..take]);
            self.head_len += take as u8;
            bytes = &bytes[take..];
            let have = usize::from(self.head_len);
            if have < need || header_len(&self.head[..have]) > have {
                continue;
            }
            let h = &self.head[..have];
            if h[0] & 0x0f == 0x8 {
                self.closed = true;
            }
            self.remaining = match h[1] & 0x7f {
                126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                n => u64::from(n),
            };
            self.head_len = 0;
        }
    }
}

/// The length of a frame header that starts with `head` (as far as it is known).
fn header_len(head: &[u8]) -> usize {
    if head.len() < 2 {
        return 2;
    }
    let mask = if head[1] & 0x80 != 0 { 4 } else { 0 };
    2 + mask
        + match head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        }
}

/// A close frame (server to client: unmasked) with `code` and `reason`.
pub(crate) fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut f = Vec::with_capacity(4 + reason.len());
    f.push(0x88);
    f.push(2 + reason.len() as u8);
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

/// A connection the tunnel reads from and writes to.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin {
    /// Reads what is there into `buf` (`Ready(Ok(0))` at the end of the stream).
    fn poll_read_some(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        ready!(Pin::new(self).poll_read(cx, &mut rb))?;
        Poll::Ready(Ok(rb.filled().len()))
    }
}

/// A plain TCP connection reads with one system call per message: a read that fills less than
/// the buffer has emptied the socket, so its readiness is cleared at once (the generic path
/// learns that from a second read that fails with `EWOULDBLOCK`). Data that arrives meanwhile
/// sets it again (tokio keeps a tick for that race).
impl Io for TcpStream {
    fn poll_read_some(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        use std::io::Read;
        loop {
            ready!(self.poll_read_ready(cx))?;
            let mut got = 0;
            let result = self.try_io(tokio::io::Interest::READABLE, || {
                let n = (&*socket2::SockRef::from(&*self)).read(buf)?;
                got = n;
                if n > 0 && n < buf.len() {
                    // Emptied: report `WouldBlock` so the readiness is cleared.
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(n)
                }
            });
            match result {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got > 0 {
                        return Poll::Ready(Ok(got));
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// A client connection after TLS (as the listener of [`serve`](crate::serve) hands it on).
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

impl Io for TlsStream {}

impl<T: hyper::rt::Read + hyper::rt::Write + Unpin> Io for hyper_util::rt::TokioIo<T> {}

/// Bytes read but not yet written, for one direction.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    pos: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.is_empty() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Writes what is pending; `Ready` once it is all written (and the buffer freed).
    fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let n = ready!(Pin::new(&mut *dst).poll_write(cx, &self.buf[self.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
        }
        self.buf = Vec::new();
        self.pos = 0;
        Poll::Ready(Ok(()))
    }
}

/// The state of one direction.
#[derive(Default)]
struct Half {
    pending: Pending,
    /// The destination has buffered writes to flush (TLS).
    flush: bool,
    /// The source ended.
    eof: bool,
}

/// What one poll of a direction found.
enum Step {
    /// The source ended and everything was written.
    Eof,
    /// Waiting for the source or the destination.
    Pending,
}

/// Moves bytes from `src` to `dst` until one of them must wait, or the source ends.
fn pump<R, W>(
    half: &mut Half,
    src: &mut R,
    dst: &mut W,
    mut tracker: Option<&mut FrameTracker>,
    cx: &mut Context<'_>,
) -> Result<Step, Fault>
where
    R: Io,
    W: AsyncWrite + Unpin,
{
    loop {
        match half.pending.poll_drain(dst, cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Err(Fault::Write),
            Poll::Pending => return Ok(Step::Pending),
        }
        if half.flush {
            match Pin::new(&mut *dst).poll_flush(cx) {
                Poll::Ready(Ok(())) => half.flush = false,
                Poll::Ready(Err(_)) => return Err(Fault::Write),
                Poll::Pending => return Ok(Step::Pending),
            }
        }
        if half.eof {
            return Ok(Step::Eof);
        }
        let read = SCRATCH.with_borrow_mut(|scratch| {
            match src.poll_read_some(cx, scratch) {
                Poll::Pending => Ok(None),
                Poll::Ready(Err(_)) => Err(Fault::Read),
                Poll::Ready(Ok(n)) => {
                    let data = &scratch[..n];
                    if data.is_empty() {
                        return Ok(Some(0));
                    }
                    if let Some(t) = tracker.as_deref_mut() {
                        t.feed(data);
                    }
                    // Write at once; keep only what the destination does not take.
                    let mut written = 0;
                    while written < data.len() {
                        match Pin::new(&mut *dst).poll_write(cx, &data[written..]) {
                            Poll::Ready(Ok(0) | Err(_)) => return Err(Fault::Write),
                            Poll::Ready(Ok(n)) => written += n,
                            Poll::Pending => break,
                        }
                    }
                    half.pending.keep(&data[written..]);
                    half.flush = true;
                    Ok(Some(data.len()))
                }
            }
        })?;
        match read {
            None => return Ok(Step::Pending),
            Some(0) => half.eof = true,
            Some(_) => {}
        }
    }
}

/// A failure on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Read,
    Write,
}

/// Copies both ways until the worker ends: the client-to-worker half, the worker-to-client
/// half, and which one failed.
struct Both<'a, C> {
    client: &'a mut C,
    worker: &'a mut TcpStream,
    up: Half,
    down: Half,
    tracker: &'a mut FrameTracker,
    up_done: bool,
}

/// How the copying ended.
enum Outcome {
    /// The worker's side ended (EOF or an error reading or writing it).
    WorkerEnded,
    /// The client's side failed (reset, or a write it did not take).
    ClientFailed,
}

impl<C: Io> Future for Both<'_, C> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        if !this.up_done {
            match pump(&mut this.up, this.client, this.worker, None, cx) {
                Ok(Step::Pending) => {}
                Ok(Step::Eof) => {
                    // The client closed its side: pass the half-close on.
                    this.up_done = true;
                    let _ = Pin::new(&mut *this.worker).poll_shutdown(cx);
                }
                Err(Fault::Read) => return Poll::Ready(Outcome::ClientFailed),
                Err(Fault::Write) => {
                    // The worker no longer takes the client's bytes (it closed, maybe with
                    // them unread, and reset): what it sent before, its close frame among
                    // them, may still wait to be read. Keep relaying that way until it ends.
                    this.up_done = true;
                }
            }
        }
        match pump(
            &mut this.down,
            this.worker,
            this.client,
            Some(this.tracker),
            cx,
        ) {
            Ok(Step::Pending) => Poll::Pending,
            Ok(Step::Eof) | Err(Fault::Read) => Poll::Ready(Outcome::WorkerEnded),
            Err(Fault::Write) => Poll::Ready(Outcome::ClientFailed),
        }
    }
}

/// Runs the tunnel between `client` and `worker` until both are done. `client_early` are bytes
/// the client sent after its request head, `worker_early` bytes the worker sent after its
/// response head. `open` is the tunnel's place in the metrics, given back when the copying
/// ends, before the client is told (so a client that saw the end sees the counts).
pub(crate) async fn run<C: Io>(
    mut client: C,
    client_early: Bytes,
    mut worker: TcpStream,
    worker_early: Bytes,
    open: OpenTunnel,
) -> End {
    let mut tracker = FrameTracker::default();
    let mut up = Half::default();
    let mut down = Half::default();
    if !client_early.is_empty() {
        up.pending.keep(&client_early);
        up.flush = true;
    }
    if !worker_early.is_empty() {
        tracker.feed(&worker_early);
        down.pending.keep(&worker_early);
        down.flush = true;
    }
    // The early bytes may be slices of the HTTP reader's buffers: copied above, let go now so
    // an idle tunnel does not keep those buffers alive.
    drop((client_early, worker_early));
    let outcome = Both {
        client: &mut client,
        worker: &mut worker,
        up,
        down,
        tracker: &mut tracker,
        up_done: false,
    }
    .await;
    drop(worker);
    let lost = matches!(outcome, Outcome::WorkerEnded) && !tracker.closed && tracker.at_boundary();
    open.end(lost);
    match outcome {
        Outcome::ClientFailed => End::Closed,
        Outcome::WorkerEnded if tracker.closed => {
            // The worker's close frame went through; the client may still be sending (a frame
            // too large, say): let it read the frame before it sees the end.
            Box::pin(linger_close(&mut client, &[])).await;
            End::Closed
        }
        Outcome::WorkerEnded if tracker.at_boundary() => {
            // Boxed: the ending's state (timers, a read buffer) would otherwise be part of every
            // tunnel's future, idle ones included.
            Box::pin(say_worker_lost(&mut client)).await;
            End::WorkerLost
        }
        Outcome::WorkerEnded => End::WorkerLostMidFrame,
    }
}

/// Writes the [`WORKER_LOST`] close frame to the client, then lets it answer and close first.
async fn say_worker_lost<C: Io>(client: &mut C) {
    linger_close(client, &close_frame(WORKER_LOST, WORKER_LOST_REASON)).await;
}

/// Writes `last` (if any), ends the client's side, then reads and drops what the client still
/// sends until it closes (at most [`LINGER`] each), so the frames it was sent are not lost to a
/// reset of a connection closed with unread bytes.
async fn linger_close<C: Io>(client: &mut C, last: &[u8]) {
    let sent = tokio::time::timeout(LINGER, async {
        client.write_all(last).await?;
        client.flush().await?;
        client.shutdown().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(LINGER, drain(client)).await;
    }
}

/// Reads and drops what the client still sends, until it closes.
async fn drain<C: AsyncRead + Unpin>(client: &mut C) {
    let mut buf = [0u8; 512];
    while let Ok(n) = client.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;

    fn counted() -> (Arc<Metrics>, OpenTunnel) {
        let m = Arc::new(Metrics::new());
        let o = m.upgrade();
        (m, o)
    }

    fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn tracks_boundaries_byte_by_byte_and_in_one_piece() {
        let mut stream = Vec::new();
        stream.extend(frame(1, b"hello", false));
        stream.extend(frame(2, &vec![7u8; 300], false));
        stream.extend(frame(1, &vec![b'x'; 70_000], true));
        let total = stream.len();
        // In one piece.
        let mut t = FrameTracker::default();
        t.feed(&stream);
        assert!(t.at_boundary());
        assert!(!t.closed);
        // Byte by byte: at a boundary exactly at the ends of the frames.
        let ends = [7, 7 + 4 + 300, total];
        let mut t = FrameTracker::default();
        for (i, b) in stream.iter().enumerate() {
            t.feed(std::slice::from_ref(b));
            assert_eq!(
                t.at_boundary(),
                ends.contains(&(i + 1)),
                "after byte {}",
                i + 1
            );
        }
        // Cut at every split point into two pieces.
        for cut in 0..40 {
            let mut t = FrameTracker::default();
            t.feed(&stream[..cut]);
            t.feed(&stream[cut..]);
            assert!(t.at_boundary());
        }
    }

    #[test]
    fn sees_a_close_frame() {
        let mut t = FrameTracker::default();
        t.feed(&frame(1, b"x", false));
        t.feed(&close_frame(1000, "bye"));
        assert!(t.closed);
        assert!(t.at_boundary());
    }

    #[test]
    fn close_frame_layout() {
        let f = close_frame(WORKER_LOST, WORKER_LOST_REASON);
        assert_eq!(f[0], 0x88);
        assert_eq!(usize::from(f[1]), 2 + WORKER_LOST_REASON.len());
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 4000);
        assert_eq!(&f[4..], WORKER_LOST_REASON.as_bytes());
        // A reason longer than a control frame allows is cut.
        assert_eq!(close_frame(4000, &"r".repeat(300)).len(), 2 + 2 + 123);
    }

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = tokio::net::TcpStream::connect(l.local_addr().unwrap());
        let (a, b) = tokio::join!(a, l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn copies_both_ways_then_injects_a_close_when_the_worker_dies() {
        let (mut client, client_side) = pair().await;
        let (worker_side, mut worker) = pair().await;
        let (m, open) = counted();
        let task = tokio::spawn(run(
            client_side,
            Bytes::from_static(b"early"),
            worker_side,
            Bytes::from(frame(1, b"hi", false)),
            open,
        ));
        let mut got = [0u8; 5];
        worker.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"early");
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, frame(1, b"hi", false).as_slice());
        let big = frame(1, &vec![b'y'; 200_000], false);
        worker.write_all(&big).await.unwrap();
        let mut got = vec![0u8; big.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        worker.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        // The worker goes away without a close frame.
        drop(worker);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, close_frame(WORKER_LOST, WORKER_LOST_REASON));
        // Counted before the close frame was written.
        let snap = m.snapshot();
        assert_eq!((snap.tunnels_open, snap.worker_lost), (0, 1));
        drop(client);
        assert_eq!(task.await.unwrap(), End::WorkerLost);
    }

    #[tokio::test]
    async fn an_idle_tunnel_is_small() {
        // Every proxied WebSocket holds this future for its whole life (the worker-lost ending
        // is boxed, the read buffer belongs to the thread).
        let (_client, client_side) = pair().await;
        let (worker_side, _worker) = pair().await;
        let fut = run(
            client_side,
            Bytes::new(),
            worker_side,
            Bytes::new(),
            counted().1,
        );
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 640, "tunnel future of {size} bytes");
    }

    #[tokio::test]
    async fn a_worker_that_closed_properly_is_not_lost() {
        let (mut client, client_side) = pair().await;
        let (worker_side, mut worker) = pair().await;
        let (m, open) = counted();
        let task = tokio::spawn(run(
            client_side,
            Bytes::new(),
            worker_side,
            Bytes::new(),
            open,
        ));
        let close = close_frame(1000, "");
        worker.write_all(&close).await.unwrap();
        drop(worker);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, close);
        let snap = m.snapshot();
        assert_eq!((snap.tunnels_open, snap.worker_lost), (0, 0));
        assert_eq!(task.await.unwrap(), End::Closed);
    }

    #[tokio::test]
    async fn mid_frame_loss_drops_the_client() {
        let (mut client, client_side) = pair().await;
        let (worker_side, mut worker) = pair().await;
        let (m, open) = counted();
        let task = tokio::spawn(run(
            client_side,
            Bytes::new(),
            worker_side,
            Bytes::new(),
            open,
        ));
        let f = frame(1, b"0123456789", false);
        worker.write_all(&f[..6]).await.unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        drop(worker);
        assert_eq!(task.await.unwrap(), End::WorkerLostMidFrame);
        assert_eq!(m.snapshot().worker_lost, 0);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn client_half_close_reaches_the_worker() {
        let (client, client_side) = pair().await;
        let (worker_side, mut worker) = pair().await;
        let (m, open) = counted();
        let task = tokio::spawn(run(
            client_side,
            Bytes::new(),
            worker_side,
            Bytes::new(),
            open,
        ));
        let (_r, mut w) = client.into_split();
        w.write_all(b"last").await.unwrap();
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        worker.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last");
        worker.write_all(&close_frame(1000, "")).await.unwrap();
        drop(worker);
        assert_eq!(task.await.unwrap(), End::Closed);
        assert_eq!(m.snapshot().tunnels_open, 0);
    }
}
