//! One client connection: read, parse every complete command, execute, write all replies at once.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::cmd::{self, Args, Flow};
use super::resp::{self, Limits, Parsed};
use super::{ServerConfig, State};
use crate::db::Hasher;

/// Replies are flushed once this much output is pending, before more commands are executed.
const FLUSH_AT: usize = 64 << 10;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 << 10;
/// Buffers above this capacity are released after use.
const KEEP_CAPACITY: usize = 1 << 20;

/// The part of a connection other connections touch: its pending output (pub/sub pushes).
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) id: u64,
    pub(crate) out: RefCell<BytesMut>,
    /// Bytes taken from `out` and being written now.
    pub(crate) in_flight: Cell<usize>,
    pub(crate) closing: Cell<bool>,
    pub(crate) notify: Notify,
    /// Whether the client may run commands: set from the start without a secret, else by a
    /// successful `AUTH`. Until then the connection runs under the `unauth_*` limits and the
    /// auth timeout.
    pub(crate) authed: Cell<bool>,
}

impl ConnShared {
    /// Appends a pub/sub `message` push, or marks the connection for closing when its pending
    /// output is over `limit`. Returns whether the message was appended.
    pub(crate) fn push_message(&self, channel: &[u8], msg: &[u8], limit: usize) -> bool {
        if self.closing.get() {
            return false;
        }
        let Ok(mut out) = self.out.try_borrow_mut() else {
            return false;
        };
        let pushed = out.len() + self.in_flight.get() <= limit;
        if pushed {
            resp::array(&mut out, 3);
            resp::bulk(&mut out, b"message");
            resp::bulk(&mut out, channel);
            resp::bulk(&mut out, msg);
        } else {
            self.closing.set(true);
        }
        self.notify.notify_one();
        pushed
    }
}

/// Per-connection state that only the connection itself touches.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) shared: Rc<ConnShared>,
    pub(crate) subs: HashSet<Bytes, Hasher>,
    pub(crate) multi: Option<Vec<cmd::Queued>>,
    pub(crate) multi_failed: bool,
    /// Bytes of the commands queued by the current `MULTI`.
    pub(crate) multi_bytes: usize,
}

impl ConnCtx {
    /// Whether the client has authenticated (or needs not).
    pub(crate) fn authed(&self) -> bool {
        self.shared.authed.get()
    }
}

pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    state: Rc<RefCell<State>>,
    config: Rc<ServerConfig>,
) {
    let id = {
        let Ok(mut st) = state.try_borrow_mut() else {
            return;
        };
        if st.clients >= config.max_clients {
            drop(st);
            let _ = stream.try_write(b"-ERR max number of clients reached\r\n");
            return;
        }
        st.clients += 1;
        st.next_id += 1;
        st.next_id
    };
    config.stats.connection_opened();
    let _ = stream.set_nodelay(true);
    tracing::debug!(%peer, id, "store client connected");
    let shared = Rc::new(ConnShared {
        id,
        out: RefCell::new(BytesMut::with_capacity(READ_CHUNK)),
        in_flight: Cell::new(0),
        closing: Cell::new(false),
        notify: Notify::new(),
        authed: Cell::new(config.secret.is_none()),
    });
    let mut ctx = ConnCtx {
        shared: shared.clone(),
        subs: HashSet::default(),
        multi: None,
        multi_failed: false,
        multi_bytes: 0,
    };
    let r = if shared.authed.get() {
        run(&stream, &state, &config, &mut ctx, None).await
    } else {
        let deadline = Instant::now() + config.auth_timeout;
        tokio::select! {
            biased;
            r = run(&stream, &state, &config, &mut ctx, Some(deadline)) => r,
            () = auth_deadline(&shared, deadline) => {
                // `run` was dropped: say why, unless it was dropped halfway through a reply.
                let pending = shared.in_flight.get() > 0
                    || shared.out.try_borrow().map_or(true, |o| !o.is_empty());
                if !pending {
                    let _ = stream.try_write(auth_timeout_error(&config).as_bytes());
                }
                Err(io::Error::new(io::ErrorKind::TimedOut, "no AUTH within auth_timeout"))
            }
        }
    };
    tracing::debug!(%peer, id, result = ?r, "store client disconnected");
    // Before `stream` drops: a client that reads its connection to the end sees the count.
    config.stats.connection_closed();
    if let Ok(mut st) = state.try_borrow_mut() {
        st.clients = st.clients.saturating_sub(1);
        for ch in ctx.subs.drain() {
            cmd::drop_subscriber(&mut st, &ch, id);
        }
    }
}

/// Completes at `deadline` if the connection has not authenticated by then; else never.
async fn auth_deadline(shared: &ConnShared, deadline: Instant) {
    tokio::time::sleep_until(deadline).await;
    if shared.authed.get() {
        std::future::pending::<()>().await;
    }
}

fn auth_timeout_error(config: &ServerConfig) -> String {
    format!(
        "-ERR unauthenticated connection closed: no successful AUTH within {} ms\r\n",
        config.auth_timeout.as_millis()
    )
}

/// Serves the connection. `auth_deadline` is set while it has not authenticated: `serve` closes
/// it then, and this loop checks it too, for a client whose input never lets it wait.
async fn run(
    stream: &TcpStream,
    state: &Rc<RefCell<State>>,
    config: &ServerConfig,
    ctx: &mut ConnCtx,
    auth_deadline: Option<Instant>,
) -> io::Result<()> {
    let lim = Limits {
        max_bulk_len: config.max_bulk_len,
        max_multibulk_len: config.max_multibulk_len,
        max_inline_len: config.max_inline_len,
        unauth: false,
    };
    // Before AUTH: Redis's small limits, and a small buffer, so that a client without the secret
    // cannot make the server hold much memory.
    let unauth_lim = Limits {
        max_bulk_len: config.unauth_max_bulk_len.min(config.max_bulk_len),
        max_multibulk_len: config
            .unauth_max_multibulk_len
            .min(config.max_multibulk_len),
        max_inline_len: config.max_inline_len.min(config.unauth_max_query_buffer),
        unauth: true,
    };
    let unauth_max_query_buffer = config.unauth_max_query_buffer.min(config.max_query_buffer);
    let shared = ctx.shared.clone();
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(8);
    // Bytes read and not yet added to the server's count.
    let mut got = 0;
    loop {
        if let Some(deadline) = auth_deadline
            && !ctx.authed()
            && Instant::now() >= deadline
        {
            shared
                .out
                .try_borrow_mut()
                .map_err(|_| io::Error::other("output busy"))?
                .extend_from_slice(auth_timeout_error(config).as_bytes());
            flush(stream, &shared, &mut wbuf, config.write_stall_timeout).await?;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no AUTH within auth_timeout",
            ));
        }
        // Execute every complete command in the buffer (flushing every FLUSH_AT bytes).
        let mut close = false;
        let mut more = false;
        {
            let mut st = state
                .try_borrow_mut()
                .map_err(|_| io::Error::other("state busy"))?;
            st.net_input_bytes += got;
            got = 0;
            let mut out = shared
                .out
                .try_borrow_mut()
                .map_err(|_| io::Error::other("output busy"))?;
            let mut consumed = 0;
            loop {
                if out.len() >= FLUSH_AT {
                    more = consumed < rbuf.len();
                    break;
                }
                let buf = rbuf.get(consumed..).unwrap_or_default();
                let authed = ctx.authed();
                match resp::parse(buf, &mut ranges, if authed { &lim } else { &unauth_lim }) {
                    Ok(Parsed::Command(n)) => {
                        if !ranges.is_empty() {
                            let args = Args::new(buf, &ranges);
                            let raw = buf.get(..n).unwrap_or_default();
                            if cmd::exec(&mut st, ctx, config, &args, raw, &mut out) == Flow::Close
                            {
                                close = true;
                            }
                        }
                        consumed += n;
                        if close {
                            break;
                        }
                    }
                    Ok(Parsed::Incomplete(need)) => {
                        if need > config.max_query_buffer {
                            resp::error(&mut out, "ERR Protocol error: request too large");
                            close = true;
                        } else if !authed && need > unauth_max_query_buffer {
                            resp::error(
                                &mut out,
                                "ERR Protocol error: unauthenticated request too large",
                            );
                            close = true;
                        } else if need > rbuf.len() - consumed + READ_CHUNK {
                            // A large bulk is on its way: make room once rather than in steps.
                            rbuf.reserve(need - (rbuf.len() - consumed));
                        }
                        break;
                    }
                    Err(resp::ProtocolError(msg)) => {
                        resp::error(&mut out, &format!("ERR Protocol error: {msg}"));
                        close = true;
                        break;
                    }
                }
            }
            rbuf.advance(consumed);
            // Before the replies are written: a client that got its reply sees its command
            // counted.
            st.publish_stats();
        }
        flush(stream, &shared, &mut wbuf, config.write_stall_timeout).await?;
        if close || shared.closing.get() {
            return Ok(());
        }
        if more {
            continue;
        }
        if rbuf.capacity() > KEEP_CAPACITY && rbuf.is_empty() {
            rbuf = BytesMut::with_capacity(READ_CHUNK);
        }
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
            rbuf.reserve(READ_CHUNK);
        }
        match read(stream, &mut rbuf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                got += n as u64;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        tokio::select! {
            r = stream.readable() => r?,
            () = shared.notify.notified() => {}
        }
    }
}

/// Reads what the socket has. A read that leaves room in the buffer drained the socket, so the
/// socket's readiness is cleared right away: the next read waits for the reactor instead of
/// spending a system call to learn that nothing is there (new data raises a newer readiness
/// event, which this does not clear).
fn read(stream: &TcpStream, rbuf: &mut BytesMut) -> io::Result<usize> {
    let mut got = None;
    let r = stream.try_io(Interest::READABLE, || {
        let room = rbuf.capacity() - rbuf.len();
        let n = stream.try_read_buf(rbuf)?;
        got = Some(n);
        if n > 0 && n < room {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match (r, got) {
        (Ok(n), _) => Ok(n),
        (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => Ok(n),
        (Err(e), _) => Err(e),
    }
}

/// Writes all pending output.
async fn flush(
    stream: &TcpStream,
    shared: &ConnShared,
    wbuf: &mut BytesMut,
    stall: Duration,
) -> io::Result<()> {
    loop {
        {
            let mut out = shared
                .out
                .try_borrow_mut()
                .map_err(|_| io::Error::other("output busy"))?;
            if out.is_empty() {
                return Ok(());
            }
            std::mem::swap(&mut *out, wbuf);
        }
        shared.in_flight.set(wbuf.len());
        let r = write_all(stream, wbuf, shared, stall).await;
        shared.in_flight.set(0);
        r?;
        wbuf.clear();
        if wbuf.capacity() > KEEP_CAPACITY {
            *wbuf = BytesMut::with_capacity(READ_CHUNK);
        }
    }
}

async fn write_all(
    stream: &TcpStream,
    buf: &[u8],
    shared: &ConnShared,
    stall: Duration,
) -> io::Result<()> {
    let mut pos = 0;
    while pos < buf.len() {
        match stream.try_write(buf.get(pos..).unwrap_or_default()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let wait = async {
                    loop {
                        tokio::select! {
                            r = stream.writable() => return r,
                            () = shared.notify.notified() => {
                                if shared.closing.get() {
                                    return Err(io::Error::other("output buffer limit reached"));
                                }
                            }
                        }
                    }
                };
                tokio::time::timeout(stall, wait)
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write stalled"))??;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
