//! The engine.io side of the transport seam: one engine.io session as a [`Transport`].
//!
//! engineioxide calls the endpoint's handler with each client message; the handler hands it to
//! the session's transport through an unbounded queue, bounded in bytes (a client that sends
//! faster than its socket reads is closed with 1008). Frames the socket writes become engine.io
//! messages, one frame each, queued on the session (its buffer holds `outbound_queue` messages
//! and `outbound_queue_bytes` bytes, counted until engineioxide has let go of each message;
//! while it is full, a polling client that has not fetched yet, the flush waits, and one that
//! stays full for the ping timeout drops the socket as a slow consumer with 4100). Engine.io has
//! no close codes: a close travels in-band as `#close:{"code":..,"reason":".."}` before the
//! engine.io close, in both directions.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use engineioxide::{DisconnectReason, Socket, Str};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use crate::transport::{Incoming, Transport, TransportError};

/// What the engine.io handler hands to a session's transport.
pub(super) enum Inbound {
    Text(Str),
    /// The session ended: close the socket with this code (`None`: the transport broke, 1006).
    Close(Option<(u16, String)>),
}

/// Per-session data (engineioxide's `Socket::data`).
#[derive(Default)]
pub(super) struct Session {
    tx: Mutex<Option<mpsc::UnboundedSender<Inbound>>>,
    /// Bytes of client messages handed to the transport and not yet read by the socket.
    queued: AtomicUsize,
    /// The most bytes `queued` may reach.
    limit: AtomicUsize,
    /// The close code to give the socket when the server itself ends the session.
    pub(super) close: Mutex<Option<(u16, String)>>,
}

impl Session {
    /// Opens the queue to the session's transport; `limit` bounds the bytes waiting in it.
    pub(super) fn open(&self, limit: usize) -> mpsc::UnboundedReceiver<Inbound> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.limit.store(limit, Ordering::Relaxed);
        *self.tx.lock() = Some(tx);
        rx
    }

    /// Hands a client message to the transport. A client that sends faster than its socket
    /// reads (more than `limit` bytes waiting) has its socket closed with 1008.
    pub(super) fn send(&self, text: Str) {
        let len = text.len();
        let queued = self.queued.fetch_add(len, Ordering::AcqRel) + len;
        let mut tx = self.tx.lock();
        if queued > self.limit.load(Ordering::Relaxed) {
            if let Some(tx) = tx.take() {
                let _ = tx.send(Inbound::Close(Some((
                    1008,
                    "Inbound queue full".to_owned(),
                ))));
            }
            return;
        }
        if let Some(t) = tx.as_ref() {
            let _ = t.send(Inbound::Text(text));
        }
    }

    /// Takes the sender and hands the transport the end of the session.
    pub(super) fn end(&self, close: Option<(u16, String)>) {
        let tx = self.tx.lock().take();
        if let Some(tx) = tx {
            let _ = tx.send(Inbound::Close(close));
        }
    }
}

/// The in-band close message for `code` and `reason`.
pub(super) fn close_message(code: u16, reason: &str) -> Str {
    let mut buf = Vec::with_capacity(40 + reason.len());
    sc_protocol::encode::put_inband_close(&mut buf, code, reason);
    text(buf)
}

fn text(bytes: Vec<u8>) -> Str {
    match String::from_utf8(bytes) {
        Ok(s) => Str::from(s),
        Err(e) => Str::from(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// Waits up to `grace` for the client to close the session after an in-band close, then
/// closes it.
pub(super) async fn close_after_grace(socket: Arc<Socket<Session>>, grace: Duration) {
    let _ = tokio::time::timeout(grace, socket.closed()).await;
    if !socket.is_closed() {
        socket.close(DisconnectReason::TransportClose);
    }
}

/// Retrying while the session's buffer is full.
struct Retry {
    sleep: Pin<Box<Sleep>>,
    pause: Duration,
    give_up: Instant,
}

/// One engine.io session as the socket's transport.
pub(crate) struct EioTransport {
    socket: Arc<Socket<Session>>,
    rx: mpsc::UnboundedReceiver<Inbound>,
    /// Frames not yet handed to the session.
    out: VecDeque<Str>,
    retry: Option<Retry>,
    /// How long the session's buffer may stay full before the socket is a slow consumer.
    stall: Duration,
    /// How long a client has to close its session after the in-band close.
    grace: Duration,
    /// The in-band close was queued: nothing more is sent.
    close_sent: bool,
    /// The close the client (or the session's end) gave.
    peer_close: Option<(u16, String)>,
    /// The messages handed to the session, in order, while the session still holds them (a
    /// message is unique here again once it was sent to the client).
    handed: VecDeque<Bytes>,
    /// Bytes of `handed`.
    handed_bytes: usize,
    /// The most `handed_bytes` may reach before the flush waits.
    budget: usize,
}

impl EioTransport {
    pub(super) fn new(
        socket: Arc<Socket<Session>>,
        rx: mpsc::UnboundedReceiver<Inbound>,
        stall: Duration,
        grace: Duration,
        budget: usize,
    ) -> Self {
        EioTransport {
            socket,
            rx,
            out: VecDeque::new(),
            retry: None,
            stall,
            grace,
            close_sent: false,
            peer_close: None,
            handed: VecDeque::new(),
            handed_bytes: 0,
            budget,
        }
    }

    /// Forgets the handed messages the session let go of (oldest first) and says whether the
    /// session holds more than the budget.
    fn over_budget(&mut self) -> bool {
        while let Some(front) = self.handed.front() {
            if !front.is_unique() {
                break;
            }
            self.handed_bytes -= front.len();
            self.handed.pop_front();
        }
        self.handed_bytes > self.budget
    }

    fn queue(&mut self, message: Str) {
        if !self.close_sent {
            self.out.push_back(message);
        }
    }
}

impl Transport for EioTransport {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, TransportError>> {
        Poll::Ready(match ready!(self.rx.poll_recv(cx)) {
            Some(Inbound::Text(s)) => {
                self.socket.data.queued.fetch_sub(s.len(), Ordering::AcqRel);
                Ok(Incoming::Text(Bytes::from(s)))
            }
            Some(Inbound::Close(Some((code, reason)))) => {
                self.peer_close = Some((code, reason.clone()));
                Ok(Incoming::Closed(code, reason))
            }
            Some(Inbound::Close(None)) | None => Err(TransportError::Io(
                std::io::ErrorKind::ConnectionAborted.into(),
            )),
        })
    }

    fn may_have_more(&self) -> bool {
        !self.rx.is_empty()
    }

    fn send(&mut self, message: Bytes) {
        self.queue(text(Vec::from(message)));
    }

    fn send_shared(&mut self, message: &Bytes) {
        self.queue(Str::from(String::from_utf8_lossy(message).into_owned()));
    }

    fn send_vec(&mut self, message: Vec<u8>) {
        self.queue(text(message));
    }

    fn has_pending(&self) -> bool {
        !self.out.is_empty()
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        while !self.out.is_empty() {
            let reserved = if self.over_budget() {
                Err(mpsc::error::TrySendError::Full(()))
            } else {
                self.socket.reserve()
            };
            match reserved {
                Ok(permit) => {
                    if let Some(message) = self.out.pop_front() {
                        if !message.is_empty() {
                            let kept = Bytes::from(message.clone());
                            self.handed_bytes += kept.len();
                            self.handed.push_back(kept);
                        }
                        permit.emit(message);
                    }
                    self.retry = None;
                }
                Err(mpsc::error::TrySendError::Closed(())) => {
                    return Poll::Ready(Err(TransportError::Io(
                        std::io::ErrorKind::BrokenPipe.into(),
                    )));
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    // A polling client that has not fetched yet: try again shortly, so the
                    // socket's own queue fills meanwhile and its limits apply as on a WebSocket.
                    let now = Instant::now();
                    let pause = Duration::from_millis(1);
                    let stall = self.stall;
                    let retry = self.retry.get_or_insert_with(|| Retry {
                        sleep: Box::pin(tokio::time::sleep(pause)),
                        pause,
                        give_up: now + stall,
                    });
                    if now >= retry.give_up {
                        *self.socket.data.close.lock() =
                            Some((crate::socket::SLOW_CONSUMER, "Slow consumer".to_owned()));
                        self.socket.close(DisconnectReason::TransportError);
                        return Poll::Ready(Err(TransportError::protocol(
                            crate::socket::SLOW_CONSUMER,
                            "Slow consumer",
                        )));
                    }
                    ready!(retry.sleep.as_mut().poll(cx));
                    retry.pause = (retry.pause * 2).min(Duration::from_millis(20));
                    retry.sleep.as_mut().reset(now + retry.pause);
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn close(&mut self, code: u16, reason: &str) {
        self.queue(close_message(code, reason));
        self.close_sent = true;
    }

    /// Answers a client's in-band close with the same close, and writes what is queued; the
    /// session itself is closed when the transport is dropped (see `Drop`).
    async fn shutdown(&mut self) {
        if !self.close_sent
            && !self.socket.is_closed()
            && let Some((code, reason)) = self.peer_close.take()
        {
            self.close(code, &reason);
        }
        let _ = std::future::poll_fn(|cx| self.poll_flush(cx)).await;
    }
}

impl Drop for EioTransport {
    /// A session still open when its socket is gone gets the in-band close (1006 if none was
    /// sent) and a grace period to close it before the server does.
    fn drop(&mut self) {
        if self.socket.is_closed() {
            return;
        }
        if !self.close_sent {
            let _ = self.socket.emit(close_message(1006, "Socket hung up"));
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(close_after_grace(self.socket.clone(), self.grace));
        } else {
            self.socket.close(DisconnectReason::TransportClose);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::future::poll_fn;

    use engineioxide::Packet;
    use engineioxide::sid::Sid;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    /// A session without HTTP (its packets for the client come out of the receiver) and its
    /// transport.
    fn session(buffer: usize) -> (EioTransport, Arc<Socket<Session>>, mpsc::Receiver<Packet>) {
        let (socket, packets) =
            Socket::<Session>::new_dummy_piped(Sid::new(), Box::new(|_, _| {}), buffer);
        let rx = socket.data.open(1000);
        let t = EioTransport::new(
            socket.clone(),
            rx,
            Duration::from_millis(300),
            Duration::from_millis(50),
            1 << 20,
        );
        (t, socket, packets)
    }

    async fn recv(t: &mut EioTransport) -> Result<Incoming, TransportError> {
        tokio::time::timeout(WAIT, poll_fn(|cx| t.poll_recv(cx)))
            .await
            .unwrap()
    }

    async fn flush(t: &mut EioTransport) -> Result<(), TransportError> {
        tokio::time::timeout(WAIT, poll_fn(|cx| t.poll_flush(cx)))
            .await
            .unwrap()
    }

    async fn message(packets: &mut mpsc::Receiver<Packet>) -> String {
        match tokio::time::timeout(WAIT, packets.recv()).await.unwrap() {
            Some(Packet::Message(m)) => m.to_string(),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn messages_both_ways_and_the_in_band_close() {
        let (mut t, socket, mut packets) = session(16);
        // Client → socket: one message each, then the client's in-band close.
        socket.data.send(Str::from("{\"event\":\"a\"}"));
        socket.data.send(Str::from(""));
        assert!(
            matches!(recv(&mut t).await, Ok(Incoming::Text(b)) if &b[..] == b"{\"event\":\"a\"}")
        );
        assert!(matches!(recv(&mut t).await, Ok(Incoming::Text(b)) if b.is_empty()));
        // Socket → client: every send is one engine.io message, in order, written by the flush.
        t.send(Bytes::from_static(b"one"));
        t.send_shared(&Bytes::from_static(b"two"));
        t.send_vec(b"three".to_vec());
        t.send_response(7, Some(b"[1]"));
        assert!(t.has_pending());
        flush(&mut t).await.unwrap();
        assert!(!t.has_pending());
        for expected in ["one", "two", "three", r#"{"rid":7,"data":[1]}"#] {
            assert_eq!(message(&mut packets).await, expected);
        }
        // The server's close: the in-band message after what was queued; nothing after it.
        t.send(Bytes::from_static(b"last"));
        t.close(4005, "no handshake");
        t.send(Bytes::from_static(b"dropped"));
        flush(&mut t).await.unwrap();
        assert_eq!(message(&mut packets).await, "last");
        assert_eq!(
            message(&mut packets).await,
            r##"#close:{"code":4005,"reason":"no handshake"}"##
        );
        assert!(!t.has_pending());
        // The session's end reaches the socket as a close with its code.
        socket
            .data
            .end(Some((4001, "Client pong timed out".to_owned())));
        assert!(matches!(
            recv(&mut t).await,
            Ok(Incoming::Closed(4001, r)) if r == "Client pong timed out"
        ));
    }

    #[tokio::test]
    async fn a_client_that_sends_too_much_is_closed_with_1008() {
        let (mut t, socket, _packets) = session(16);
        socket.data.send(Str::from("x".repeat(600)));
        socket.data.send(Str::from("y".repeat(600)));
        assert!(matches!(recv(&mut t).await, Ok(Incoming::Text(b)) if b.len() == 600));
        assert!(matches!(recv(&mut t).await, Ok(Incoming::Closed(1008, _))));
    }

    #[tokio::test]
    async fn the_session_holds_at_most_its_budget_in_bytes() {
        // Room for 16 messages, but a budget of 1000 bytes: two 600-byte messages go (the
        // budget is checked before each), the third waits until the client fetched them.
        let (socket, mut packets) =
            Socket::<Session>::new_dummy_piped(Sid::new(), Box::new(|_, _| {}), 16);
        let rx = socket.data.open(1000);
        let mut t = EioTransport::new(
            socket.clone(),
            rx,
            Duration::from_secs(5),
            Duration::from_millis(50),
            1000,
        );
        for c in ['a', 'b', 'c'] {
            t.send(Bytes::from(c.to_string().repeat(600)));
        }
        assert!(
            futures_util::FutureExt::now_or_never(poll_fn(|cx| t.poll_flush(cx))).is_none(),
            "the third message must wait for the budget"
        );
        assert_eq!(t.handed_bytes, 1200);
        assert!(message(&mut packets).await.starts_with('a'));
        assert!(message(&mut packets).await.starts_with('b'));
        flush(&mut t).await.unwrap();
        assert!(message(&mut packets).await.starts_with('c'));
    }

    #[tokio::test]
    async fn a_session_whose_buffer_stays_full_is_a_slow_consumer() {
        let (mut t, socket, mut packets) = session(1);
        for i in 0..4 {
            t.send(Bytes::from(format!("m{i}")));
        }
        // Nobody fetches: the flush waits, then gives up with 4100 after the stall time.
        match flush(&mut t).await {
            Err(TransportError::Protocol(code, _)) => assert_eq!(code, crate::SLOW_CONSUMER),
            other => panic!("expected a slow consumer, got {other:?}"),
        }
        assert_eq!(
            socket.data.close.lock().clone(),
            Some((crate::SLOW_CONSUMER, "Slow consumer".to_owned()))
        );
        assert_eq!(message(&mut packets).await, "m0");
    }
}
