//! One socket's task: the handshake, then a loop that reads and handles inbound frames, writes
//! the outbound queue in batches, pings, and enforces the timers and limits.
//!
//! A socket is a single task. Handlers that finish without waiting run inline (their replies go
//! straight into the write batch); handlers that wait are spawned and reply through the socket's
//! bounded queue. Every read burst and every drained queue batch is written with one flush.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::FutureExt;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use sc_protocol::encode as enc;
use sc_protocol::{ErrorName, Frame, Packet, Reserved, ScError, decode, events};

use crate::auth::{missing_token_error, now_s};
use crate::data::Data;
use crate::exchange::{Recovery, Sub, Subscriber};
use crate::handler::{Procedure, Request, SyncProcedureFn, SyncRequest};
use crate::limits::{AddrSlot, InboundRate};
use crate::metrics::Tally;
use crate::middleware::{
    BoxFut, HandshakeAction, InboundAction, InboundKind, OutboundAction, RawAction,
};
use crate::published::{Published, frame_for, position_json, stored_data};
use crate::request::{HandshakeRequest, StoredRequest};
use crate::socket::{
    Out, RATE_LIMITED, SLOW_CONSUMER, ScEvent, ScSocket, SocketShared, SocketState,
};
use crate::state::ServerInner;
use crate::transport::{Incoming, Transport, TransportError};

/// How long a closing socket waits for the peer's close frame and end of stream.
const LINGER: Duration = Duration::from_secs(2);
/// Messages handled per read burst before the replies are flushed.
const BURST: usize = 64;
/// Outbound queue items written per batch.
const BATCH: usize = 256;
/// Frames up to this size count towards a batch's [`Transport::reserve`] hint (larger ones are
/// usually referenced, not copied, by a transport with a write buffer).
const SMALL_FRAME: usize = 1024;

enum End {
    /// Send this close frame, then linger.
    Close(u16, String),
    /// The peer sent a close frame (its echo is queued): flush it and end.
    Peer(u16, String),
    /// The peer closed or the connection broke.
    Gone(u16, String),
}

impl End {
    fn close(code: u16, reason: &str) -> Self {
        End::Close(code, reason.to_owned())
    }

    /// A flush failed: nothing more can be sent.
    fn flush_failed(e: TransportError) -> Self {
        match e {
            TransportError::Protocol(code, reason) => End::Gone(code, reason.into_owned()),
            TransportError::Io(_) => End::Gone(1006, "Socket hung up".to_owned()),
        }
    }
}

/// 15 random bytes, base64 with `/`→`_` and `+`→`-` (base64id).
fn new_id() -> Box<str> {
    let bytes: [u8; 15] = rand::random();
    base64::engine::general_purpose::URL_SAFE
        .encode(bytes)
        .into_boxed_str()
}

fn poll_once<T>(fut: &mut BoxFut<T>) -> Poll<T> {
    fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

/// An invoke's result as a reply frame: `{"rid":N[,"data":D]}` or `{"rid":N,"error":E}`.
pub(crate) fn encode_result(rid: u64, result: &Result<Option<Data>, ScError>) -> Vec<u8> {
    match result {
        Ok(d) => {
            let data = d.as_ref().map(Data::as_bytes);
            let mut buf = Vec::with_capacity(enc::response_len(rid, data.map(<[u8]>::len)));
            enc::put_response(&mut buf, rid, data);
            buf
        }
        Err(e) => encode_error(rid, e),
    }
}

/// The error reply `{"rid":N,"error":E}`.
fn encode_error(rid: u64, e: &ScError) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + e.message.len());
    enc::put_error(&mut buf, rid, e);
    buf
}

/// Where an invoke goes ([`Conn::route`]).
enum Route {
    /// A reserved `#` event: the worker handles it.
    Reserved,
    /// The sync procedure the socket invoked last (`Conn::last_sync`), with no middleware
    /// looking at invokes: answered by [`Conn::call_sync`].
    Sync,
    /// Invoke middleware, then the procedure registered for the event (if any).
    Handlers,
}

/// What handling a message left after its synchronous part ([`Conn::on_message`]).
enum Next<'a> {
    /// Nothing (handled, or nothing to handle).
    Done,
    /// An invoke of the sync procedure the socket invoked last (`Conn::last_sync`): its data
    /// is this part of the frame, which the frame's bytes become ([`Conn::call_sync`]).
    Sync { data: Part, cid: u64 },
    /// Work for the async handlers ([`Conn::on_next`]).
    Async(Slow<'a>),
}

/// What the async handlers take.
enum Slow<'a> {
    /// A decoded frame.
    Frame(Src<'a>, Frame<'a>),
    /// The text, for the raw inbound middleware.
    Raw(Src<'a>),
}

/// Where an invoke's data is.
enum Part {
    /// The invoke had no data.
    None,
    /// At this offset and length in the frame.
    At(usize, usize),
    /// Not in the frame (copied).
    Copied(Data),
}

impl Part {
    /// The data, made of the frame's own bytes (no reference count taken).
    fn take(self, mut frame: Bytes) -> Option<Data> {
        match self {
            Part::None => None,
            Part::At(start, len) => {
                bytes::Buf::advance(&mut frame, start);
                frame.truncate(len);
                Some(Data::from_trusted(frame))
            }
            Part::Copied(d) => Some(d),
        }
    }
}

/// Where the packets of one frame come from: their data are slices of these bytes.
#[derive(Clone, Copy)]
struct Src<'a> {
    bytes: &'a Bytes,
    text: &'a str,
}

impl Src<'_> {
    /// The offset and length of `raw` in the frame, `None` when it is not a slice of it.
    fn range(&self, raw: &RawValue) -> Option<(usize, usize)> {
        let s = raw.get();
        let base = self.text.as_ptr() as usize;
        let start = (s.as_ptr() as usize).wrapping_sub(base);
        (self.bytes.as_ptr() as usize == base
            && start <= self.bytes.len()
            && s.len() <= self.bytes.len() - start)
            .then_some((start, s.len()))
    }

    /// Where `raw` is in the frame.
    fn part(&self, raw: &RawValue) -> Part {
        match self.range(raw) {
            Some((start, len)) => Part::At(start, len),
            None => Part::Copied(Data::from_raw(raw)),
        }
    }

    fn data(&self, raw: &RawValue) -> Data {
        match self.range(raw) {
            Some((start, len)) => Data::from_trusted(self.bytes.slice(start..start + len)),
            None => Data::from_raw(raw),
        }
    }
}

/// The task of one connection, run to its end: `transport` carries the messages, `request` is
/// the HTTP request that opened it, `ext` the socket's first extensions (from `handshake_ws`).
/// The socket exists (and counts as the server's) from this call on.
///
/// The caller has counted the connection in `server.connections`; it is uncounted when the
/// socket closes.
pub(crate) fn run<T: Transport>(
    transport: T,
    server: Arc<ServerInner>,
    request: HandshakeRequest,
    ext: http::Extensions,
    slot: AddrSlot,
) -> impl Future<Output = ()> + Send + 'static {
    // The socket is made here, not in the task: the request becomes the socket's compact copy
    // and is dropped (its headers are slices of the HTTP server's read buffer), and the task's
    // future, which every socket holds for its life, carries none of it.
    let (socket, rx) = open_socket(&server, request, ext);
    let inbound_rate = InboundRate::new(
        server.cfg.inbound_rate_messages,
        server.cfg.inbound_rate_bytes,
    );
    // Built out here and used in place by the task: a value the task's future captured and then
    // moved into a local would take its room twice for the socket's whole life.
    let mut conn = Conn {
        io: transport,
        outbox: Outbox::new(rx),
        socket,
        server,
        last_seen: Instant::now(),
        receivers: None,
        last_sync: None,
        slot,
        inbound_rate,
        tally: Tally::default(),
    };
    async move {
        let end = match conn.handshake().await {
            Ok(()) => conn.main_loop().await,
            Err(end) => end,
        };
        conn.finish(end).await;
    }
}

/// The socket's outbound queue as its task reads it. Once a poll found it empty (the task's
/// waker is registered with the queue), the queue is polled again only when an item is in it:
/// most wake-ups of a socket are reads, and polling the queue on each costs. Every read through
/// this type keeps the registration right (a read that takes an item without polling clears
/// it, since the wake-up that item caused is spent), so no reader can stop deliveries by
/// forgetting it.
struct Outbox {
    rx: mpsc::Receiver<Out>,
    registered: bool,
}

impl Outbox {
    fn new(rx: mpsc::Receiver<Out>) -> Self {
        Outbox {
            rx,
            registered: false,
        }
    }

    /// Up to `limit` items into `batch`; 0 when the queue is closed.
    #[inline]
    fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Out>,
        limit: usize,
    ) -> Poll<usize> {
        if self.registered && self.rx.is_empty() {
            return Poll::Pending;
        }
        let poll = self.rx.poll_recv_many(cx, batch, limit);
        self.registered = poll.is_pending();
        poll
    }

    /// One item if there is one, without waiting.
    fn try_recv(&mut self) -> Option<Out> {
        self.registered = false;
        self.rx.try_recv().ok()
    }

    /// Waits for up to `limit` items.
    async fn recv_many(&mut self, batch: &mut Vec<Out>, limit: usize) -> usize {
        self.registered = false;
        self.rx.recv_many(batch, limit).await
    }

    fn close(&mut self) {
        self.rx.close();
    }
}

/// A timer polled again only once it may have fired (the same saving as [`Outbox`]'s): after a
/// poll registered the task's waker, the deadline is read, not polled.
struct Timer<'a> {
    sleep: std::pin::Pin<&'a mut tokio::time::Sleep>,
    registered: bool,
}

impl<'a> Timer<'a> {
    fn new(sleep: std::pin::Pin<&'a mut tokio::time::Sleep>) -> Self {
        Timer {
            sleep,
            registered: false,
        }
    }

    #[inline]
    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered && !self.sleep.is_elapsed() {
            return Poll::Pending;
        }
        let poll = self.sleep.as_mut().poll(cx);
        self.registered = poll.is_pending();
        poll
    }

    fn reset(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline);
        self.registered = false;
    }
}

/// The socket's control signal (close requests) as its task polls it, with the same saving as
/// [`Outbox`]'s.
struct Control {
    socket: ScSocket,
    registered: bool,
}

impl Control {
    #[inline]
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.socket
            .0
            .control
            .poll_registered(cx, &mut self.registered)
    }
}

/// The socket of a new connection, registered with the server, and its outbound queue.
fn open_socket(
    server: &Arc<ServerInner>,
    request: HandshakeRequest,
    ext: http::Extensions,
) -> (ScSocket, mpsc::Receiver<Out>) {
    let (tx, rx) = mpsc::channel(server.cfg.outbound_queue);
    let key = server.next_key.fetch_add(1, Ordering::Relaxed);
    let id = new_id();
    let session = match &request.session_id {
        Some(s) => s.clone(),
        None => Arc::from(&*id),
    };
    let socket = ScSocket(Arc::new(SocketShared {
        id,
        session,
        key,
        tx,
        queued: AtomicUsize::new(0),
        queue_limit: server.cfg.outbound_queue_bytes,
        host: server.clone(),
        request: StoredRequest::new(&request),
        state: Mutex::new(SocketState::default()),
        ext: Mutex::new(ext),
        next_cid: Default::default(),
        inflight: Default::default(),
        control: Default::default(),
        exp: Default::default(),
    }));
    server.sockets.write().insert(key, socket.clone());
    if server.shutting_down.load(Ordering::Acquire) {
        let (code, reason) = server.shutdown_close.lock().clone();
        socket.close_with(code, &reason, false);
    }
    (socket, rx)
}

struct Conn<T> {
    io: T,
    outbox: Outbox,
    socket: ScSocket,
    server: Arc<ServerInner>,
    last_seen: Instant,
    /// The last receiver that did not finish inline; later receivers run after it.
    receivers: Option<JoinHandle<()>>,
    /// The sync procedure this socket invoked last, by name: a client calling the same one again
    /// (the usual case) skips the procedure table's hash lookup.
    last_sync: Option<(Arc<str>, Arc<SyncProcedureFn>)>,
    /// The client address's place in its count, given back when the socket closes.
    slot: AddrSlot,
    /// The inbound rate limit, if one is set.
    inbound_rate: Option<Box<InboundRate>>,
    /// What this socket counted since it last added to the server's counters (once per flush:
    /// [`Conn::settle`]).
    tally: Tally,
}

impl<T: Transport> Conn<T> {
    fn take_close(&self) -> Option<(u16, String, bool)> {
        self.socket.0.state.lock().close.take()
    }

    /// Adds what this socket counted to the server's counters: once per flush, not per message.
    #[inline]
    fn settle(&mut self) {
        let t = std::mem::take(&mut self.tally);
        if t != Tally::default() {
            self.server.counters.add(t);
        }
    }

    async fn flush(&mut self) -> Result<(), TransportError> {
        std::future::poll_fn(|cx| self.io.poll_flush(cx)).await
    }

    async fn recv(&mut self) -> Result<Incoming, TransportError> {
        std::future::poll_fn(|cx| self.io.poll_recv(cx)).await
    }

    /// Drops what the outbound queue holds (a slow consumer's backlog: its close frame goes
    /// next).
    fn discard_queued(&mut self) {
        while self.outbox.try_recv().is_some() {}
    }

    /// Writes the pending frames with one flush. A flush that cannot finish (the client stopped
    /// reading) is abandoned when the socket is dropped as a slow consumer, or after the ping
    /// timeout.
    async fn flush_out(&mut self) -> Result<(), End> {
        self.settle();
        if !self.io.has_pending() {
            return Ok(());
        }
        // Usually the socket takes everything at once: no timer, no select.
        if let Some(r) = self.flush().now_or_never() {
            return r.map_err(End::flush_failed);
        }
        let limit = tokio::time::sleep(Duration::from_millis(self.server.cfg.ping_timeout_ms));
        tokio::pin!(limit);
        let mut renotify = false;
        let result = loop {
            tokio::select! {
                r = std::future::poll_fn(|cx| self.io.poll_flush(cx)) => break r.map_err(End::flush_failed),
                () = &mut limit => break Err(End::Gone(4001, "Client pong timed out".to_owned())),
                () = self.socket.0.control.notified(), if !renotify => {
                    let close = self.socket.0.state.lock().close.clone();
                    match close {
                        Some((code, reason, _)) if code == SLOW_CONSUMER => {
                            self.discard_queued();
                            break Err(End::Close(code, reason));
                        }
                        // Set again after the flush for the main loop, which may rely on
                        // this wake-up (it does not poll the signal again until it is set).
                        _ => renotify = true,
                    }
                }
            }
        };
        if renotify {
            self.socket.0.control.notify_one();
        }
        result
    }

    /// Queues a frame encoded by `write` into a buffer of about `capacity` bytes.
    fn push_with(&mut self, capacity: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = Vec::with_capacity(capacity);
        write(&mut buf);
        self.tally.messages_out += 1;
        self.io.send_vec(buf);
    }

    #[inline]
    fn push_result(&mut self, cid: u64, result: &Result<Option<Data>, ScError>) {
        match result {
            // The commonest frame: the transport encodes it in place.
            Ok(d) => {
                self.tally.messages_out += 1;
                self.io.send_response(cid, d.as_ref().map(Data::as_bytes));
            }
            Err(e) => self.push_error(cid, e),
        }
    }

    fn push_error(&mut self, cid: u64, e: &ScError) {
        self.tally.messages_out += 1;
        self.io.send_vec(encode_error(cid, e));
    }

    /// Maps what the transport read; `None` = nothing to handle.
    #[inline]
    fn classify(
        &mut self,
        m: Result<Incoming, TransportError>,
    ) -> Result<Option<(Bytes, bool)>, End> {
        match m {
            // `last_seen` is updated once per read burst by the main loop.
            Ok(Incoming::Text(bytes)) => Ok(Some((bytes, true))),
            Ok(Incoming::Binary(bytes)) => Ok(Some((bytes, false))),
            Ok(Incoming::Alive) => Ok(None),
            Ok(Incoming::Closed(code, reason)) => Err(End::Peer(code, reason)),
            Err(TransportError::Protocol(code, reason)) => {
                tracing::debug!(sid = %self.socket.id(), code, %reason, "transport protocol error");
                Err(End::Close(code, reason.into_owned()))
            }
            Err(TransportError::Io(e)) => Err(End::Gone(1006, e.to_string())),
        }
    }

    async fn handshake(&mut self) -> Result<(), End> {
        let timeout = Duration::from_millis(self.server.cfg.handshake_timeout_ms);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let m = tokio::select! {
                biased;
                () = self.socket.0.control.notified() => {
                    if let Some((code, reason, _)) = self.take_close() {
                        return Err(End::Close(code, reason));
                    }
                    continue;
                }
                () = &mut deadline => {
                    return Err(End::close(4005, "Did not receive #handshake from client before timeout"));
                }
                m = std::future::poll_fn(|cx| self.io.poll_recv(cx)) => m,
            };
            let Some((bytes, _)) = self.classify(m)? else {
                continue;
            };
            let text = std::str::from_utf8(&bytes).unwrap_or("\u{0}");
            return match decode(text) {
                Frame::Packet(Packet::Invoke { event, data, cid })
                    if event == events::HANDSHAKE =>
                {
                    self.do_handshake(data, cid).await
                }
                Frame::Packet(Packet::Transmit { event, .. }) if event == events::HANDSHAKE => {
                    Err(End::close(4008, "Server rejected handshake from client"))
                }
                _ => Err(End::close(
                    4009,
                    "Server received a message before the client handshake",
                )),
            };
        }
    }

    async fn do_handshake(&mut self, data: Option<&RawValue>, cid: u64) -> Result<(), End> {
        self.tally.messages_in += 1;
        let token = match Reserved::parse(events::HANDSHAKE, data) {
            Some(Ok(Reserved::Handshake { auth_token })) => auth_token.map(|t| t.into_owned()),
            _ => None,
        };
        let mut claims = None;
        let mut auth_error = None;
        let mut signed = None;
        if let Some(t) = token {
            match self.server.auth.verify(&t) {
                Ok(c) => {
                    claims = Some(c);
                    signed = Some(t);
                }
                Err(e) => {
                    self.socket.emit(&ScEvent::BadAuthToken(e.clone()));
                    auth_error = Some(e);
                }
            }
        }
        if !self.server.mw.handshake_sc.is_empty() {
            let server = self.server.clone();
            let action = HandshakeAction {
                socket: self.socket.clone(),
                auth_token: claims.take(),
                auth_error: auth_error.take(),
            };
            match server.mw.handshake_sc.run(action).await {
                Ok(a) => {
                    claims = a.auth_token;
                    auth_error = a.auth_error;
                }
                Err(b) => {
                    let e = b.into_error("handshakeSC", "handshake");
                    let code = e
                        .extra
                        .get("statusCode")
                        .and_then(serde_json::Value::as_u64)
                        .and_then(|c| u16::try_from(c).ok())
                        .filter(|c| (4000..5000).contains(c) || *c == 1000)
                        .unwrap_or(4008);
                    self.push_error(cid, &e);
                    let _ = self.flush_out().await;
                    return Err(End::Close(code, e.message));
                }
            }
        }
        let mut resign = None;
        match (claims, signed) {
            (Some(c), Some(s)) => self.socket.set_verified_token(Arc::from(s.as_str()), c),
            (Some(c), None) => resign = Some(c),
            (None, _) => {}
        }
        let authenticated = self.socket.is_authenticated() || resign.is_some();
        let ping_timeout = self.server.cfg.ping_timeout_ms;
        let id = self.socket.clone();
        self.push_with(128, |b| {
            enc::put_handshake_reply(
                b,
                cid,
                id.id(),
                ping_timeout,
                authenticated,
                auth_error.as_ref(),
            );
        });
        if auth_error.as_ref().is_some_and(is_bad_token) {
            self.push_with(32, enc::put_remove_auth_token);
        }
        {
            let mut s = self.socket.0.state.lock();
            s.open = true;
        }
        self.server
            .clients
            .write()
            .insert(self.socket.id().into(), self.socket.clone());
        self.server.counters.socket_opened();
        self.join_session().await;
        tracing::debug!(sid = %self.socket.id(), authenticated, "handshake done");
        self.flush_out().await?;
        if let Some(c) = resign {
            let _ = self.socket.set_auth_token(c);
        }
        if let Some(hook) = self.server.on_connection.clone() {
            hook(&self.socket);
        }
        Ok(())
    }

    async fn main_loop(&mut self) -> End {
        let interval = Duration::from_millis(self.server.cfg.ping_interval_ms);
        let ping_timeout = Duration::from_millis(self.server.cfg.ping_timeout_ms);
        let ping: &'static [u8] = if self.server.cfg.protocol_version == 1 {
            b"#1"
        } else {
            b""
        };
        let tick = tokio::time::sleep(interval);
        tokio::pin!(tick);
        let mut tick = Timer::new(tick);
        // While the server is behind (it delivers `publish_batch_above` publishes a second or
        // more, out of CPU, with publishes piling up: `Counters::busy`), publishes are written
        // at most every `publish_batch` per socket: the first one
        // after a quiet spell goes at once, those that follow within the interval are held and
        // written together when it ends (one syscall for many). Otherwise, and always for
        // replies and other frames, everything is written at once.
        let publish_batch = Duration::from_millis(self.server.cfg.publish_batch_ms);
        let batch_above = self.server.cfg.publish_batch_above;
        let hold = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(hold);
        let mut holding = false;
        let mut last_publish_write: Option<Instant> = None;
        let mut batch = Vec::new();
        self.last_seen = Instant::now();
        // The control signal, the outbound queue and the ping timer are polled again only when
        // they may be ready (signal set, an item queued, the timer fired), not on every wake-up:
        // most wake-ups are reads. `Control`, `Outbox` and `Timer` keep track of that.
        let mut control = Control {
            socket: self.socket.clone(),
            registered: false,
        };
        loop {
            tokio::select! {
                biased;
                () = std::future::poll_fn(|cx| control.poll(cx)) => {
                    if let Some((code, reason, drain)) = self.take_close() {
                        if code == SLOW_CONSUMER {
                            batch.clear();
                            self.discard_queued();
                            return End::Close(code, reason);
                        }
                        if drain {
                            self.drain_inflight().await;
                        }
                        while let Some(out) = self.outbox.try_recv() {
                            batch.push(out);
                        }
                        let _ = self.write_outs(&mut batch).await;
                        return End::Close(code, reason);
                    }
                }
                n = std::future::poll_fn(|cx| self.outbox.poll_recv_many(cx, &mut batch, BATCH)) => {
                    if n == 0 {
                        return End::close(1011, "Outbound queue closed");
                    }
                    if !publish_batch.is_zero()
                        && batch.len() < BATCH
                        && batch.iter().all(|o| matches!(o, Out::Publish(_)))
                    {
                        let now = Instant::now();
                        if let Some(last) = last_publish_write
                            && now < last + publish_batch
                            && (batch_above == 0 || self.server.counters.busy(now.into_std(), batch_above))
                        {
                            if !holding {
                                hold.as_mut().reset(last + publish_batch);
                                holding = true;
                            }
                            continue;
                        }
                        last_publish_write = Some(now);
                    }
                    holding = false;
                    if let Err(end) = self.write_outs(&mut batch).await {
                        return end;
                    }
                }
                () = &mut hold, if holding => {
                    holding = false;
                    last_publish_write = Some(Instant::now());
                    while batch.len() < BATCH && let Some(out) = self.outbox.try_recv() {
                        batch.push(out);
                    }
                    if let Err(end) = self.write_outs(&mut batch).await {
                        return end;
                    }
                }
                m = std::future::poll_fn(|cx| self.io.poll_recv(cx)) => {
                    // Publishes held for this socket go out before its next messages are
                    // handled: what the server sent before an `#unsubscribe` (say) arrives
                    // before the client could subscribe again.
                    if holding {
                        holding = false;
                        last_publish_write = Some(Instant::now());
                        if let Err(end) = self.write_outs(&mut batch).await {
                            return end;
                        }
                    }
                    // Once per read burst: the burst is handled within microseconds.
                    self.check_expiry();
                    let mut m = m;
                    for n in 0..=BURST {
                        // The synchronous part first: most messages end there, and the
                        // async handlers' future is only built for the others.
                        let step = match self.classify(m) {
                            Ok(Some((bytes, is_text))) => match self.on_message(&bytes, is_text) {
                                Ok(Next::Done) => Ok(()),
                                Ok(Next::Sync { data, cid }) => {
                                    self.tally.messages_in += 1;
                                    self.call_sync(data.take(bytes), cid);
                                    Ok(())
                                }
                                // Boxed: the async handlers' future is the largest state
                                // of this loop, and unboxed every socket would carry its room
                                // for its whole life, idle or not.
                                Ok(Next::Async(slow)) => Box::pin(self.on_next(slow)).await,
                                Err(end) => Err(end),
                            },
                            Ok(None) => Ok(()),
                            Err(end) => Err(end),
                        };
                        if let Err(end) = step {
                            return end;
                        }
                        // A message taken off the stream must be handled: stop before.
                        if n == BURST || !self.io.may_have_more() {
                            break;
                        }
                        let Some(next) = self.recv().now_or_never() else { break };
                        m = next;
                    }
                    self.last_seen = Instant::now();
                    if let Err(end) = self.flush_out().await {
                        return end;
                    }
                }
                () = std::future::poll_fn(|cx| tick.poll_fired(cx)) => {
                    if self.last_seen.elapsed() >= ping_timeout {
                        return End::close(4001, "Client pong timed out");
                    }
                    self.io.send(Bytes::from_static(ping));
                    if let Err(end) = self.flush_out().await {
                        return end;
                    }
                    tick.reset(Instant::now() + interval);
                }
            }
        }
    }

    /// On graceful shutdown: wait until the spawned invokes of this socket replied.
    async fn drain_inflight(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(self.server.cfg.ack_timeout_ms);
        let mut batch = Vec::new();
        while self.socket.0.inflight.load(Ordering::Acquire) > 0 {
            tokio::select! {
                n = self.outbox.recv_many(&mut batch, BATCH) => {
                    if n == 0 || self.write_outs(&mut batch).await.is_err() {
                        return;
                    }
                }
                () = self.socket.0.control.notified() => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    async fn write_outs(&mut self, batch: &mut Vec<Out>) -> Result<(), End> {
        let server = self.server.clone();
        let outbound = &server.mw.outbound;
        // One allocation for the batch's small frames (they are copied into the write buffer).
        let mut small = 0;
        let mut total = 0;
        let mut written = 0;
        let mut delivered = 0;
        for n in batch.iter().map(Out::len) {
            total += n;
            if n <= SMALL_FRAME {
                small += n + 4;
            }
        }
        self.io.reserve(small);
        for out in batch.drain(..) {
            match out {
                Out::Frame(b) => {
                    written += 1;
                    self.io.send(b);
                }
                // A session emit or a gap notice: an event, not a channel's publish.
                Out::Publish(p) if p.session.is_some() || p.gap => {
                    written += 1;
                    self.io.send_shared(&p.frame);
                }
                Out::Publish(p) => {
                    // Outbound middleware sees channel publishes, not session emits.
                    if outbound.is_empty() {
                        delivered += 1;
                        self.io.send_shared(&p.frame);
                    } else {
                        let action = OutboundAction {
                            socket: self.socket.clone(),
                            channel: p.channel.clone(),
                            data: p.data.clone(),
                        };
                        if let Ok(a) = outbound.run(action).await {
                            delivered += 1;
                            if a.data == p.data {
                                self.io.send(p.frame.clone());
                            } else {
                                self.io.send(frame_for(
                                    &p.channel,
                                    a.data.as_ref(),
                                    p.position.as_ref(),
                                ));
                            }
                        }
                    }
                }
            }
        }
        self.tally.messages_out += written + delivered;
        self.tally.deliveries += delivered;
        self.tally.delivery_writes += u32::from(delivered != 0);
        // The batch counts against the socket's queue bytes until it is written.
        let flushed = self.flush_out().await;
        self.socket.0.queued.fetch_sub(total, Ordering::AcqRel);
        flushed
    }

    /// The synchronous part of handling a message: UTF-8, decoding, and whether it is an invoke
    /// of a sync procedure ([`Self::route`]; the caller then calls it with the frame's
    /// bytes, [`Self::call_sync`]). What needs the async handlers (or the raw inbound
    /// middleware) is returned, borrowing `bytes`.
    fn on_message<'a>(&mut self, bytes: &'a Bytes, is_text: bool) -> Result<Next<'a>, End> {
        if let Some(rate) = &mut self.inbound_rate
            && !rate.take(bytes.len())
        {
            return Err(End::close(RATE_LIMITED, "Inbound rate limit exceeded"));
        }
        match std::str::from_utf8(bytes) {
            Ok(text) if self.server.mw.inbound_raw.is_empty() => {
                let src = Src { bytes, text };
                Ok(match decode(text) {
                    Frame::Packet(Packet::Invoke { event, data, cid })
                        if matches!(self.route(&event), Route::Sync) =>
                    {
                        let data = data.map_or(Part::None, |d| src.part(d));
                        Next::Sync { data, cid }
                    }
                    frame => Next::Async(Slow::Frame(src, frame)),
                })
            }
            Ok(text) => Ok(Next::Async(Slow::Raw(Src { bytes, text }))),
            Err(_) if is_text => Err(End::close(1007, "Message format was incorrect")),
            Err(_) => Ok(Next::Done),
        }
    }

    /// The async part: what [`Self::on_message`] left.
    async fn on_next(&mut self, slow: Slow<'_>) -> Result<(), End> {
        match slow {
            Slow::Frame(src, frame) => self.on_frame(src, frame).await,
            Slow::Raw(src) => self.on_text(src.bytes, src.text).await,
        }
    }

    /// Deauthenticates a socket whose token expired (rechecked on every inbound read burst).
    fn check_expiry(&mut self) {
        let exp = self.socket.0.exp.load(Ordering::Acquire);
        let expired = exp != 0 && exp <= now_s();
        if expired {
            self.socket.deauthenticate_self();
            self.push_with(32, enc::put_remove_auth_token);
        }
    }

    async fn on_text(&mut self, bytes: &Bytes, text: &str) -> Result<(), End> {
        let v1 = self.server.cfg.protocol_version == 1;
        if (!v1 && text.is_empty()) || (v1 && text == "#2") {
            return Ok(());
        }
        if !self.server.mw.inbound_raw.is_empty() {
            let server = self.server.clone();
            let action = RawAction {
                socket: self.socket.clone(),
                message: text.to_owned(),
            };
            return match server.mw.inbound_raw.run(action).await {
                Ok(a) if a.message == text => self.on_decoded(Src { bytes, text }).await,
                Ok(a) => {
                    let nb = Bytes::from(a.message);
                    let nt = std::str::from_utf8(&nb).unwrap_or_default();
                    self.on_decoded(Src {
                        bytes: &nb,
                        text: nt,
                    })
                    .await
                }
                Err(_) => Ok(()),
            };
        }
        self.on_decoded(Src { bytes, text }).await
    }

    async fn on_decoded(&mut self, src: Src<'_>) -> Result<(), End> {
        self.on_frame(src, decode(src.text)).await
    }

    /// Where an invoke of `event` goes, decided here for both paths: the synchronous one
    /// ([`Self::on_message`], which answers [`Route::Sync`] without the async machinery) and the
    /// async one ([`Self::on_invoke`], everything else).
    #[inline]
    fn route(&mut self, event: &str) -> Route {
        if event.starts_with('#') {
            return Route::Reserved;
        }
        if self.has_inbound(InboundKind::Invoke) {
            return Route::Handlers;
        }
        if self
            .last_sync
            .as_ref()
            .is_some_and(|(name, _)| **name == *event)
        {
            return Route::Sync;
        }
        let Some((name, Procedure::Sync(f))) = self.server.procedures.get(event) else {
            return Route::Handlers;
        };
        self.last_sync = Some((name.clone(), f.clone()));
        Route::Sync
    }

    /// Calls the sync procedure [`Self::route`] chose ([`Route::Sync`]) and queues its reply.
    fn call_sync(&mut self, data: Option<Data>, cid: u64) {
        let Some((procedure, f)) = &self.last_sync else {
            return;
        };
        let result = f(SyncRequest {
            socket: &self.socket,
            procedure,
            data,
        });
        self.push_result(cid, &result);
    }

    async fn on_frame(&mut self, src: Src<'_>, frame: Frame<'_>) -> Result<(), End> {
        match frame {
            Frame::Heartbeat | Frame::PingV1 | Frame::PongV1 => Ok(()),
            Frame::Packet(p) => {
                self.tally.messages_in += 1;
                self.on_packet(src, p).await
            }
            Frame::Batch(ps) => {
                self.tally.messages_in = self
                    .tally
                    .messages_in
                    .saturating_add(u32::try_from(ps.len()).unwrap_or(u32::MAX));
                for p in ps {
                    self.on_packet(src, p).await?;
                }
                Ok(())
            }
        }
    }

    async fn on_packet(&mut self, src: Src<'_>, p: Packet<'_>) -> Result<(), End> {
        match p {
            Packet::Transmit { event, data } => self.on_transmit(src, &event, data).await,
            Packet::Invoke { event, data, cid } => self.on_invoke(src, &event, data, cid).await,
            Packet::Response { rid, data, error } => {
                let ack = self.socket.0.state.lock().acks.remove(&rid);
                if let Some(ack) = ack {
                    let result = match error {
                        Some(e) => Err(ScError::from_json(e.get())),
                        None => Ok(data.map(|d| src.data(d))),
                    };
                    let _ = ack.send(result);
                }
                Ok(())
            }
            Packet::Raw(_) => Ok(()),
        }
    }

    #[inline]
    fn has_inbound(&self, kind: InboundKind) -> bool {
        self.server.mw.inbound.sees(kind)
    }

    async fn inbound(
        &mut self,
        kind: InboundKind,
        name: &str,
        data: Option<Data>,
    ) -> Result<Option<Data>, ScError> {
        if !self.has_inbound(kind) {
            return Ok(data);
        }
        let server = self.server.clone();
        let action = InboundAction {
            kind,
            socket: self.socket.clone(),
            name: name.to_owned(),
            data,
            auth_token: None,
        };
        match server.mw.inbound.run(action).await {
            Ok(a) => Ok(a.data),
            Err(b) => Err(b.into_error(kind.as_str(), "inbound")),
        }
    }

    async fn on_transmit(
        &mut self,
        src: Src<'_>,
        event: &str,
        raw: Option<&RawValue>,
    ) -> Result<(), End> {
        if event.starts_with('#') {
            match event {
                events::PUBLISH => {
                    if let Some(Ok(Reserved::Publish { channel, data })) =
                        Reserved::parse(event, raw)
                    {
                        let _ = self
                            .client_publish(&channel, data.map(|d| src.data(d)))
                            .await;
                    }
                    return Ok(());
                }
                events::UNSUBSCRIBE => {
                    if let Some(Ok(Reserved::Unsubscribe { channel })) = Reserved::parse(event, raw)
                    {
                        self.socket.unsubscribe(&channel);
                    }
                    return Ok(());
                }
                events::REMOVE_AUTH_TOKEN => {
                    self.socket.deauthenticate_self();
                    return Ok(());
                }
                events::AUTHENTICATE => {
                    return Err(End::close(4008, "Server rejected handshake from client"));
                }
                events::SUBSCRIBE | events::HANDSHAKE => return Ok(()),
                _ => {}
            }
        }
        let handler = self.server.receivers.get(event).cloned();
        if handler.is_none() && !self.has_inbound(InboundKind::Transmit) {
            return Ok(());
        }
        let data = raw.map(|d| src.data(d));
        let Ok(data) = self.inbound(InboundKind::Transmit, event, data).await else {
            return Ok(());
        };
        if let Some(h) = handler {
            let mut fut = h(self.socket.clone(), data);
            if let Some(prev) = self.receivers.take()
                && !prev.is_finished()
            {
                self.receivers = Some(tokio::spawn(async move {
                    let _ = prev.await;
                    fut.await;
                }));
                return Ok(());
            }
            if poll_once(&mut fut).is_pending() {
                self.receivers = Some(tokio::spawn(fut));
            }
        }
        Ok(())
    }

    /// Every invoke that [`Self::on_message`] did not answer: reserved events, middleware, async
    /// procedures (and sync ones when the raw inbound middleware ran first). [`Self::route`]
    /// decides.
    async fn on_invoke(
        &mut self,
        src: Src<'_>,
        event: &str,
        raw: Option<&RawValue>,
        cid: u64,
    ) -> Result<(), End> {
        let route = self.route(event);
        if let Route::Sync = route {
            self.call_sync(raw.map(|d| src.data(d)), cid);
            return Ok(());
        }
        if let Route::Reserved = route {
            match event {
                events::SUBSCRIBE => {
                    self.subscribe(src, raw, cid).await;
                    return Ok(());
                }
                events::UNSUBSCRIBE => {
                    match Reserved::parse(event, raw) {
                        Some(Ok(Reserved::Unsubscribe { channel })) => {
                            self.socket.unsubscribe(&channel);
                            self.push_result(cid, &Ok(None));
                        }
                        Some(Err(inv)) => self.push_error(cid, &inv.to_error(self.socket.id())),
                        _ => {}
                    }
                    return Ok(());
                }
                events::PUBLISH => {
                    match Reserved::parse(event, raw) {
                        Some(Ok(Reserved::Publish { channel, data })) => {
                            let r = self
                                .client_publish(&channel, data.map(|d| src.data(d)))
                                .await;
                            self.push_result(cid, &r.map(|()| None));
                        }
                        Some(Err(inv)) => self.push_error(cid, &inv.to_error(self.socket.id())),
                        _ => {}
                    }
                    return Ok(());
                }
                events::AUTHENTICATE => {
                    self.authenticate(raw, cid).await;
                    return Ok(());
                }
                events::REMOVE_AUTH_TOKEN => {
                    self.socket.deauthenticate_self();
                    return Ok(());
                }
                events::HANDSHAKE => return Ok(()),
                _ => {}
            }
        }
        let data = if self.has_inbound(InboundKind::Invoke) {
            match self
                .inbound(InboundKind::Invoke, event, raw.map(|d| src.data(d)))
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    self.push_error(cid, &e);
                    return Ok(());
                }
            }
        } else {
            raw.map(|d| src.data(d))
        };
        // Borrowed, not cloned: the handler is only called here.
        let Some((procedure, h)) = self.server.procedures.get(event) else {
            return Ok(());
        };
        let mut fut = match h {
            Procedure::Sync(f) => {
                let result = f(SyncRequest {
                    socket: &self.socket,
                    procedure,
                    data,
                });
                self.push_result(cid, &result);
                return Ok(());
            }
            Procedure::Async(f) => f(Request {
                socket: self.socket.clone(),
                procedure: procedure.clone(),
                data,
            }),
        };
        match poll_once(&mut fut) {
            Poll::Ready(result) => self.push_result(cid, &result),
            Poll::Pending => {
                let socket = self.socket.clone();
                socket.0.inflight.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    let result = fut.await;
                    let _ = socket.send_frame(encode_result(cid, &result));
                    if socket.0.inflight.fetch_sub(1, Ordering::AcqRel) == 1
                        && socket.0.state.lock().close.is_some()
                    {
                        socket.0.control.notify_one();
                    }
                });
            }
        }
        Ok(())
    }

    async fn subscribe(&mut self, src: Src<'_>, raw: Option<&RawValue>, cid: u64) {
        let (channel, data) = match Reserved::parse(events::SUBSCRIBE, raw) {
            Some(Ok(Reserved::Subscribe { channel, data, .. })) => (channel, data),
            Some(Err(inv)) => {
                self.push_error(cid, &inv.to_error(self.socket.id()));
                return;
            }
            _ => return,
        };
        if let Err(e) = self.check_channel_name(&channel) {
            self.push_error(cid, &e);
            return;
        }
        if let Err(e) = self
            .inbound(InboundKind::Subscribe, &channel, data.map(|d| src.data(d)))
            .await
        {
            self.push_error(cid, &e);
            return;
        }
        let limit = self.server.cfg.socket_channel_limit;
        let max_bytes = self.server.cfg.socket_channel_bytes;
        let result = {
            let mut s = self.socket.0.state.lock();
            if s.channels.iter().any(|c| **c == *channel) {
                Ok(false)
            } else if s.channels.len() >= limit {
                Err(ScError::new(
                    ErrorName::InvalidActionError,
                    format!(
                        "Socket {} tried to exceed the channel subscription limit of {limit}",
                        self.socket.id()
                    ),
                ))
            } else if s.channel_bytes + channel.len() > max_bytes {
                Err(ScError::new(
                    ErrorName::InvalidActionError,
                    format!(
                        "Socket {} tried to exceed the limit of {max_bytes} bytes of channel names",
                        self.socket.id()
                    ),
                ))
            } else {
                s.channels.push(Arc::from(&*channel));
                s.channel_bytes += channel.len();
                Ok(true)
            }
        };
        match result {
            Ok(true) if let Some(limits) = self.server.history_limits(&channel) => {
                self.subscribe_recorded(&channel, limits, data, cid).await;
            }
            Ok(new) => {
                if new {
                    self.server
                        .broker
                        .subscribe(&channel, Subscriber(Sub::Socket(self.socket.clone())));
                    // With a store, answer once publishes made elsewhere reach this socket;
                    // bounded so a store outage cannot stall the socket. The in-process broker
                    // is ready at once, so it skips the wait (no box, no timer).
                    if self.server.has_store {
                        let ready = self.server.broker.ready(&channel);
                        let wait = Duration::from_millis(self.server.cfg.ack_timeout_ms);
                        if tokio::time::timeout(wait, ready).await.is_err() {
                            tracing::warn!(sid = %self.socket.id(), %channel, "store subscription not confirmed in time");
                        }
                    }
                    self.socket.emit(&ScEvent::Subscribe(channel.to_string()));
                }
                self.push_result(cid, &Ok(None));
            }
            Err(e) => self.push_error(cid, &e),
        }
    }

    /// Subscribes the socket to a channel with a history (its name already on the socket's
    /// list). The reply carries the position the socket continues from. With `recover` in the
    /// subscribe data (the last position the client saw), what it missed follows the reply, then
    /// live messages, none twice; when the history no longer covers it, a `#gap` notice comes
    /// first and what the history still holds (at most half the outbound queue) follows.
    async fn subscribe_recorded(
        &mut self,
        channel: &str,
        limits: sc_store::HistoryLimits,
        data: Option<&RawValue>,
        cid: u64,
    ) {
        let recover = match data.map(recover_position).transpose() {
            Ok(r) => r.flatten(),
            Err(e) => {
                self.socket.unsubscribe(channel);
                self.push_error(cid, &ScError::new(ErrorName::InvalidActionError, e));
                return;
            }
        };
        let Some(store) = self.server.history_store.clone() else {
            self.push_result(cid, &Ok(None));
            return;
        };
        // Through a store, what the socket has may still arrive after its catch-up.
        let filter = self.server.store.is_some();
        let rec = Recovery::new(
            self.socket.clone(),
            self.server.cfg.outbound_queue / 2,
            filter,
        );
        self.server
            .broker
            .subscribe(channel, Subscriber(Sub::Recovering(rec.clone())));
        let wait = Duration::from_millis(self.server.cfg.ack_timeout_ms);
        if tokio::time::timeout(wait, self.server.broker.ready(channel))
            .await
            .is_err()
        {
            tracing::warn!(sid = %self.socket.id(), %channel, "store subscription not confirmed in time");
        }
        let replay = (self.server.cfg.outbound_queue / 2).max(1);
        let caught_up = tokio::time::timeout(
            wait,
            catch_up(&*store, channel, limits, recover.as_ref(), replay),
        )
        .await
        .unwrap_or_else(|_| Err("the channel's history did not answer in time".to_owned()));
        let (gap, position, records) = match caught_up {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(sid = %self.socket.id(), %channel, error = %e, "channel history unavailable: subscription refused");
                self.socket.unsubscribe(channel);
                self.push_error(
                    cid,
                    &ScError::new(
                        ErrorName::BrokerError,
                        format!("The history of channel {channel} is unavailable: {e}"),
                    ),
                );
                return;
            }
        };
        let name: Arc<str> = Arc::from(channel);
        if gap {
            let notice = Published::gap_notice(&name, Some(position.clone()));
            self.tally.messages_out += 1;
            self.io.send(notice.frame.clone());
        }
        let reply = Data::from_trusted(Bytes::from(position_json(channel, &position)));
        self.push_result(cid, &Ok(Some(reply)));
        let records = records
            .into_iter()
            .filter_map(|(offset, message)| {
                let data = stored_data(channel, message)?;
                let at = sc_store::Position {
                    offset,
                    epoch: position.epoch.clone(),
                };
                Some(Arc::new(Published::recorded(&name, data, at)))
            })
            .collect();
        rec.release(position, records);
        self.socket.emit(&ScEvent::Subscribe(channel.to_owned()));
    }

    /// A channel name that is reserved (a session's) or over `max_channel_name` bytes is refused
    /// before anything keeps it.
    fn check_channel_name(&self, channel: &str) -> Result<(), ScError> {
        if channel.starts_with(crate::published::SESSION_CHANNEL_PREFIX) {
            return Err(ScError::new(
                ErrorName::InvalidActionError,
                format!(
                    "Socket {} tried to use the reserved channel name {channel:?}",
                    self.socket.id()
                ),
            ));
        }
        let max = self.server.cfg.max_channel_name;
        if channel.len() > max {
            return Err(ScError::new(
                ErrorName::InvalidActionError,
                format!(
                    "Socket {} tried to use a channel name of {} bytes; the limit is {max}",
                    self.socket.id(),
                    channel.len()
                ),
            ));
        }
        Ok(())
    }

    async fn client_publish(&mut self, channel: &str, data: Option<Data>) -> Result<(), ScError> {
        if !self.server.cfg.allow_client_publish {
            return Err(ScError::new(
                ErrorName::InvalidActionError,
                "Client publish feature is disabled",
            ));
        }
        self.check_channel_name(channel)?;
        let data = self.inbound(InboundKind::PublishIn, channel, data).await?;
        self.tally.publishes += 1;
        self.server
            .broker
            .publish(Arc::new(Published::new(channel, data)));
        Ok(())
    }

    async fn authenticate(&mut self, raw: Option<&RawValue>, cid: u64) {
        let token = match Reserved::parse(events::AUTHENTICATE, raw) {
            Some(Ok(Reserved::Authenticate { token })) => token.map(|t| t.into_owned()),
            _ => None,
        };
        let verified = match token {
            Some(t) => self.server.auth.verify(&t).map(|c| (t, c)),
            None => Err(missing_token_error()),
        };
        if let Err(e) = &verified {
            self.socket.emit(&ScEvent::BadAuthToken(e.clone()));
        }
        let (token, claims) = match verified {
            Ok(v) => v,
            Err(e) if is_bad_token(&e) => {
                self.socket.deauthenticate_self();
                self.push_with(32, enc::put_remove_auth_token);
                self.push_error(cid, &e);
                return;
            }
            Err(e) => {
                self.push_auth_status(cid, false, Some(&e));
                return;
            }
        };
        if self.has_inbound(InboundKind::Authenticate) {
            let server = self.server.clone();
            let action = InboundAction {
                kind: InboundKind::Authenticate,
                socket: self.socket.clone(),
                name: String::new(),
                data: Data::to(&token).ok(),
                auth_token: Some(claims.clone()),
            };
            if let Err(b) = server.mw.inbound.run(action).await {
                let e = b.into_error("authenticate", "inbound");
                let authed = self.socket.is_authenticated();
                self.push_auth_status(cid, authed, Some(&e));
                return;
            }
        }
        self.socket
            .set_verified_token(Arc::from(token.as_str()), claims);
        self.push_auth_status(cid, true, None);
    }

    fn push_auth_status(&mut self, cid: u64, authenticated: bool, error: Option<&ScError>) {
        self.push_with(96, |b| enc::put_auth_status(b, cid, authenticated, error));
    }

    async fn finish(mut self, end: End) {
        let (code, reason) = match end {
            End::Close(code, reason) => {
                let mut reason = reason;
                truncate_reason(&mut reason);
                let close_code = match code {
                    1005 | 1006 | 1015 => 1000,
                    c => c,
                };
                self.io.close(close_code, &reason);
                let _ = tokio::time::timeout(LINGER, self.flush()).await;
                self.mark_closed(code, &reason);
                // Waits (bounded) for the peer to acknowledge the close.
                let _ = tokio::time::timeout(LINGER, self.io.shutdown()).await;
                (code, reason)
            }
            End::Peer(code, reason) => {
                let _ = tokio::time::timeout(LINGER, self.io.shutdown()).await;
                self.mark_closed(code, &reason);
                (code, reason)
            }
            End::Gone(code, reason) => {
                // The transport gave up on a client that does not take what it is sent (an
                // engine.io session whose buffer stayed full).
                if code == SLOW_CONSUMER {
                    self.server.counters.queue_drop();
                }
                self.mark_closed(code, &reason);
                (code, reason)
            }
        };
        tracing::debug!(sid = %self.socket.id(), code, %reason, "socket closed");
    }

    /// Joins the socket's session: its channel (emits to the session reach the socket; with a
    /// store, once the store confirmed the subscription, bounded by the ack timeout) and the
    /// sessions held here (their data's TTL is renewed while one socket lives).
    async fn join_session(&mut self) {
        let sid = self.socket.0.session.clone();
        let channel = crate::sessions::channel(&sid);
        self.server
            .broker
            .subscribe(&channel, Subscriber(Sub::Socket(self.socket.clone())));
        self.server.sessions.join(&sid);
        if self.server.has_store {
            let ready = self.server.broker.ready(&channel);
            let wait = Duration::from_millis(self.server.cfg.ack_timeout_ms);
            if tokio::time::timeout(wait, ready).await.is_err() {
                tracing::warn!(sid = %self.socket.id(), "store subscription of the session not confirmed in time");
            }
        }
    }

    fn mark_closed(&mut self, code: u16, reason: &str) {
        self.settle();
        let socket = self.socket.clone();
        let (was_open, channels, acks) = {
            let mut s = socket.0.state.lock();
            s.closed = true;
            s.close = None;
            s.channel_bytes = 0;
            (
                std::mem::take(&mut s.open),
                std::mem::take(&mut s.channels),
                std::mem::take(&mut s.acks),
            )
        };
        drop(acks);
        for c in channels {
            self.server.broker.unsubscribe(&c, socket.key());
            socket.emit(&ScEvent::Unsubscribe(c.to_string()));
        }
        if was_open {
            self.server.clients.write().remove(socket.id());
            let sid = &socket.0.session;
            self.server
                .broker
                .unsubscribe(&crate::sessions::channel(sid), socket.key());
            if self.server.sessions.leave(sid)
                && let Some(hook) = self.server.on_session_end.clone()
            {
                hook(&socket);
            }
        }
        self.server.sockets.write().remove(&socket.key());
        self.server.connections.fetch_sub(1, Ordering::AcqRel);
        self.server.closed.fetch_add(1, Ordering::Relaxed);
        drop(std::mem::replace(&mut self.slot, AddrSlot::none()));
        self.outbox.close();
        if was_open && let Some(hook) = self.server.on_disconnection.clone() {
            hook(&socket, code, reason);
        }
        self.server.gone.notify_waiters();
    }
}

fn truncate_reason(reason: &mut String) {
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
}

fn is_bad_token(e: &ScError) -> bool {
    e.extra
        .get("isBadToken")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or_else(|| ErrorName::from_name(&e.name).is_some_and(ErrorName::is_bad_token))
}

/// The position a `#subscribe`'s data asks to resume from: `{"recover":{"offset":N,"epoch":E}}`
/// (other fields are the app's). `Ok(None)` without `recover`; an error when it is malformed.
fn recover_position(data: &RawValue) -> Result<Option<sc_store::Position>, String> {
    #[derive(serde::Deserialize)]
    struct SubscribeData<'a> {
        #[serde(borrow)]
        recover: Option<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Recover {
        offset: u64,
        epoch: String,
    }
    let Ok(d) = serde_json::from_str::<SubscribeData<'_>>(data.get()) else {
        return Ok(None);
    };
    let Some(raw) = d.recover else {
        return Ok(None);
    };
    match serde_json::from_str::<Recover>(raw.get()) {
        Ok(r) if !r.epoch.is_empty() && r.epoch.len() <= 64 => Ok(Some(sc_store::Position {
            offset: r.offset,
            epoch: r.epoch,
        })),
        _ => Err(format!(
            "recover must be {{\"offset\":N,\"epoch\":E}} (an offset and an epoch of at most 64 bytes), not {}",
            raw.get().chars().take(100).collect::<String>()
        )),
    }
}

/// A catch-up: whether a gap notice goes first, the position the socket continues from, and
/// the records that follow it.
type CatchUp = (bool, sc_store::Position, Vec<(u64, Bytes)>);

/// Reads what a socket subscribing to `channel` gets before live messages: nothing but the
/// latest position without `recover`; with it, the messages after it when the history holds
/// them all (at most `replay`); otherwise a gap, and the last `replay` messages kept.
async fn catch_up(
    store: &dyn sc_store::Store,
    channel: &str,
    limits: sc_store::HistoryLimits,
    recover: Option<&sc_store::Position>,
    replay: usize,
) -> Result<CatchUp, String> {
    let Some(from) = recover else {
        let h = store
            .history(channel, None, 0, limits)
            .await
            .map_err(|e| e.to_string())?;
        let at = sc_store::Position {
            offset: h.latest,
            epoch: h.epoch,
        };
        return Ok((false, at, Vec::new()));
    };
    let h = store
        .history(channel, Some(from.offset), replay, limits)
        .await
        .map_err(|e| e.to_string())?;
    let missed = h.latest.saturating_sub(from.offset);
    if h.epoch == from.epoch && h.complete && missed <= replay as u64 {
        return Ok((false, from.clone(), h.records));
    }
    // A gap: the latest messages the history holds follow it.
    let after = h.latest.checked_sub(replay as u64).filter(|a| *a > 0);
    let h = store
        .history(channel, after, replay, limits)
        .await
        .map_err(|e| e.to_string())?;
    let offset = h
        .records
        .first()
        .map_or(h.latest, |r| r.0.saturating_sub(1));
    let at = sc_store::Position {
        offset,
        epoch: h.epoch,
    };
    Ok((true, at, h.records))
}
