//! The pub/sub connection to one node: `SUBSCRIBE` on a store process or a Redis, `SSUBSCRIBE`
//! (sharded pub/sub, Redis 7) on a node of a Redis Cluster.
//!
//! One TCP connection speaking RESP2, split in two: [`PubSubSink`] sends (un)subscriptions and
//! pings and waits for their confirmations, [`PubSubStream`] yields the messages. A task of its
//! own reads the connection, so a confirmation arrives even while nobody reads the messages.
//! When the connection ends (or the peer sends something this client cannot follow) the stream
//! ends and every waiting or later call fails with [`Error::Connection`]; the owner then makes a
//! new connection.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Result};

/// Which pub/sub commands a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `SUBSCRIBE`, `UNSUBSCRIBE`, messages `message`: a store process, a Redis.
    Plain,
    /// `SSUBSCRIBE`, `SUNSUBSCRIBE`, messages `smessage`: a Redis Cluster node.
    Sharded,
}

impl Kind {
    fn subscribe(self) -> &'static str {
        match self {
            Kind::Plain => "SUBSCRIBE",
            Kind::Sharded => "SSUBSCRIBE",
        }
    }

    fn unsubscribe(self) -> &'static str {
        match self {
            Kind::Plain => "UNSUBSCRIBE",
            Kind::Sharded => "SUNSUBSCRIBE",
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) kind: Kind,
}

/// A message published on a subscribed channel.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) channel: Bytes,
    pub(crate) payload: Bytes,
}

impl Message {
    /// The channel's name (a channel whose name is not UTF-8 was never subscribed here).
    pub(crate) fn channel(&self) -> &str {
        std::str::from_utf8(&self.channel).unwrap_or("")
    }
}

/// What a sent command is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Subscribe,
    Unsubscribe,
    Pong,
}

struct Pending {
    waiting: VecDeque<(Expect, oneshot::Sender<Result<()>>)>,
    closed: bool,
}

struct Shared {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<Pending>,
}

impl Shared {
    /// Ends the connection for its users: every waiting call fails, later ones fail at once.
    fn close(&self) {
        let waiting = {
            let mut p = self.pending.lock();
            p.closed = true;
            std::mem::take(&mut p.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(lost("the pub/sub connection ended")));
        }
    }
}

/// Sends on a pub/sub connection. Cloning is cheap; clones share the connection.
#[derive(Clone)]
pub(crate) struct PubSubSink {
    kind: Kind,
    shared: Arc<Shared>,
}

/// The messages of a pub/sub connection; it ends when the connection does. Dropping it closes
/// the connection.
pub(crate) struct PubSubStream {
    rx: mpsc::UnboundedReceiver<Message>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for PubSubStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl PubSubStream {
    /// The next message, or `None` once the connection has ended.
    pub(crate) async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

fn lost(what: &str) -> Error {
    Error::Connection(Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        what.to_owned(),
    )))
}

fn io(e: std::io::Error) -> Error {
    Error::Connection(Box::new(e))
}

/// A command as RESP: an array of bulk strings.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Connects to `target`, authenticates when it has a password, and starts the reader.
pub(crate) async fn connect(
    target: &Target,
    timeout: Duration,
) -> Result<(PubSubSink, PubSubStream)> {
    let setup = async {
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(io)?;
        let _ = stream.set_nodelay(true);
        let (mut read, mut write) = stream.into_split();
        let mut buf = BytesMut::with_capacity(4096);
        if let Some(password) = &target.password {
            let mut out = Vec::new();
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &target.username {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            command(&mut out, &args);
            write.write_all(&out).await.map_err(io)?;
            if let Reply::Error(e) = read_reply(&mut read, &mut buf).await? {
                return Err(Error::Auth(e));
            }
        }
        Ok::<_, Error>((read, write, buf))
    };
    let (read, write, buf) = tokio::time::timeout(timeout, setup)
        .await
        .map_err(|_| lost("no answer in time"))??;
    let shared = Arc::new(Shared {
        writer: tokio::sync::Mutex::new(write),
        pending: Mutex::new(Pending {
            waiting: VecDeque::new(),
            closed: false,
        }),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_loop(read, buf, tx, shared.clone(), target.kind));
    Ok((
        PubSubSink {
            kind: target.kind,
            shared,
        },
        PubSubStream { rx, reader },
    ))
}

/// Closes the connection for its users however the reader ends (including an abort).
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

async fn read_loop(
    mut read: OwnedReadHalf,
    mut buf: BytesMut,
    tx: mpsc::UnboundedSender<Message>,
    shared: Arc<Shared>,
    kind: Kind,
) {
    let _close = CloseOnDrop(shared.clone());
    let message_kind: &[u8] = match kind {
        Kind::Plain => b"message",
        Kind::Sharded => b"smessage",
    };
    loop {
        let reply = match read_reply(&mut read, &mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "pub/sub connection ended");
                return;
            }
        };
        let answered = match reply {
            Reply::Array(items) => match items.as_slice() {
                [Reply::Bulk(k), Reply::Bulk(channel), Reply::Bulk(payload)]
                    if k.as_ref() == message_kind =>
                {
                    let _ = tx.send(Message {
                        channel: channel.clone(),
                        payload: payload.clone(),
                    });
                    continue;
                }
                [Reply::Bulk(k), ..] => match k.as_ref() {
                    b"subscribe" | b"ssubscribe" => (Expect::Subscribe, Ok(())),
                    b"unsubscribe" | b"sunsubscribe" => (Expect::Unsubscribe, Ok(())),
                    b"pong" => (Expect::Pong, Ok(())),
                    _ => {
                        tracing::debug!("pub/sub connection: unexpected push; closing");
                        return;
                    }
                },
                _ => {
                    tracing::debug!("pub/sub connection: unexpected reply; closing");
                    return;
                }
            },
            Reply::Simple(s) if s.eq_ignore_ascii_case(b"PONG") => (Expect::Pong, Ok(())),
            Reply::Error(e) => {
                let front = shared.pending.lock().waiting.front().map(|(x, _)| *x);
                (front.unwrap_or(Expect::Pong), Err(Error::Reply(e)))
            }
            _ => {
                tracing::debug!("pub/sub connection: unexpected reply; closing");
                return;
            }
        };
        let (expect, result) = answered;
        let waiter = {
            let mut p = shared.pending.lock();
            match p.waiting.front() {
                Some((x, _)) if *x == expect => p.waiting.pop_front(),
                _ => None,
            }
        };
        match waiter {
            Some((_, w)) => {
                let _ = w.send(result);
            }
            // Not what we asked for: a Redis Cluster node drops shard channels whose slot
            // moved away with an unasked `sunsubscribe`. The owner reconnects.
            None => {
                tracing::warn!("pub/sub connection: a confirmation nobody asked for; closing");
                return;
            }
        }
    }
}

impl PubSubSink {
    async fn send(&self, commands: &[(Expect, Vec<&[u8]>)]) -> Result<()> {
        let mut out = Vec::new();
        let mut waits = Vec::with_capacity(commands.len());
        let mut writer = self.shared.writer.lock().await;
        {
            let mut p = self.shared.pending.lock();
            if p.closed {
                return Err(lost("the pub/sub connection ended"));
            }
            for (expect, args) in commands {
                command(&mut out, args);
                let (tx, rx) = oneshot::channel();
                p.waiting.push_back((*expect, tx));
                waits.push(rx);
            }
        }
        if let Err(e) = writer.write_all(&out).await {
            drop(writer);
            self.shared.close();
            return Err(io(e));
        }
        drop(writer);
        for w in waits {
            w.await
                .map_err(|_| lost("the pub/sub connection ended"))??;
        }
        Ok(())
    }

    /// Subscribes `channels` (one command each, sent together) and waits for every
    /// confirmation.
    pub(crate) async fn subscribe<S: AsRef<str>>(&self, channels: &[S]) -> Result<()> {
        let name = self.kind.subscribe().as_bytes();
        let cmds: Vec<_> = channels
            .iter()
            .map(|c| (Expect::Subscribe, vec![name, c.as_ref().as_bytes()]))
            .collect();
        self.send(&cmds).await
    }

    /// Unsubscribes `channel` and waits for the confirmation.
    pub(crate) async fn unsubscribe(&self, channel: &str) -> Result<()> {
        let name = self.kind.unsubscribe().as_bytes();
        self.send(&[(Expect::Unsubscribe, vec![name, channel.as_bytes()])])
            .await
    }

    /// Sends `PING` and waits for the answer.
    pub(crate) async fn ping(&self) -> Result<()> {
        self.send(&[(Expect::Pong, vec![b"PING"])]).await
    }
}

// ------------------------------------------------------------------ RESP2 replies

/// A RESP2 reply.
#[derive(Debug, PartialEq)]
enum Reply {
    Simple(Bytes),
    Error(String),
    Int(i64),
    Bulk(Bytes),
    Nil,
    Array(Vec<Reply>),
}

/// A reply as found in the read buffer: strings as ranges of it.
#[derive(Debug)]
enum Raw {
    Simple(Range<usize>),
    Error(Range<usize>),
    Int(i64),
    Bulk(Range<usize>),
    Nil,
    Array(Vec<Raw>),
}

impl Raw {
    /// The reply, its strings sharing `frame` (the buffer the ranges index).
    fn own(self, frame: &Bytes) -> Reply {
        match self {
            Raw::Simple(r) => Reply::Simple(frame.slice(r)),
            Raw::Error(r) => Reply::Error(String::from_utf8_lossy(&frame[r]).into_owned()),
            Raw::Int(n) => Reply::Int(n),
            Raw::Bulk(r) => Reply::Bulk(frame.slice(r)),
            Raw::Nil => Reply::Nil,
            Raw::Array(items) => Reply::Array(items.into_iter().map(|i| i.own(frame)).collect()),
        }
    }
}

/// Longest bulk string accepted (Redis's own limit), most elements of an array, and deepest
/// nesting: pub/sub replies are flat arrays of a few elements.
const MAX_BULK: usize = 512 << 20;
const MAX_ELEMENTS: usize = 1 << 20;
const MAX_DEPTH: usize = 4;
/// Longest line (a reply's type and length, or a simple string) accepted.
const MAX_LINE: usize = 64 * 1024;

fn malformed() -> Error {
    lost("the store sent a reply this client cannot read")
}

/// Reads one reply, reading more of the connection into `buf` as needed. The strings of the
/// reply share the bytes read (no copy).
async fn read_reply(read: &mut OwnedReadHalf, buf: &mut BytesMut) -> Result<Reply> {
    loop {
        if let Some((raw, used)) = parse(buf, 0, 0)? {
            let frame = buf.split_to(used).freeze();
            return Ok(raw.own(&frame));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(buf.len().max(4096));
        }
        let n = read.read_buf(buf).await.map_err(io)?;
        if n == 0 {
            return Err(lost("the store closed the connection"));
        }
    }
}

/// The length of the line at `b`'s start, without its CRLF, when the CRLF is there.
fn line(b: &[u8]) -> Result<Option<usize>> {
    match b.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end <= MAX_LINE => Ok(Some(end)),
        Some(_) => Err(malformed()),
        None if b.len() > MAX_LINE => Err(malformed()),
        None => Ok(None),
    }
}

fn number(s: &[u8]) -> Result<i64> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)
}

/// Parses one reply at `buf[at..]`: `Ok(None)` when it is not complete yet, otherwise the reply
/// and where it ends.
fn parse(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Raw, usize)>> {
    let Some(&tag) = buf.get(at) else {
        return Ok(None);
    };
    let start = at + 1;
    let Some(len) = line(&buf[start..])? else {
        return Ok(None);
    };
    let head = start..start + len;
    let after = start + len + 2;
    let raw = match tag {
        b'+' => Raw::Simple(head),
        b'-' => Raw::Error(head),
        b':' => Raw::Int(number(&buf[head])?),
        b'$' => {
            let n = number(&buf[head])?;
            if n < 0 {
                return Ok(Some((Raw::Nil, after)));
            }
            let n = usize::try_from(n).map_err(|_| malformed())?;
            if n > MAX_BULK {
                return Err(malformed());
            }
            let end = after + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(malformed());
            }
            return Ok(Some((Raw::Bulk(after..end), end + 2)));
        }
        b'*' => {
            let n = number(&buf[head])?;
            if n < 0 {
                return Ok(Some((Raw::Nil, after)));
            }
            let n = usize::try_from(n).map_err(|_| malformed())?;
            if n > MAX_ELEMENTS || depth >= MAX_DEPTH {
                return Err(malformed());
            }
            let mut items = Vec::with_capacity(n.min(16));
            let mut pos = after;
            for _ in 0..n {
                let Some((item, next)) = parse(buf, pos, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                pos = next;
            }
            return Ok(Some((Raw::Array(items), pos)));
        }
        _ => return Err(malformed()),
    };
    Ok(Some((raw, after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &[u8]) -> Option<(Reply, usize)> {
        let frame = Bytes::copy_from_slice(s);
        parse(&frame, 0, 0)
            .unwrap()
            .map(|(raw, used)| (raw.own(&frame), used))
    }

    #[test]
    fn replies() {
        assert_eq!(
            one(b"+PONG\r\n"),
            Some((Reply::Simple(Bytes::from_static(b"PONG")), 7))
        );
        assert_eq!(
            one(b"-ERR no\r\n"),
            Some((Reply::Error("ERR no".into()), 9))
        );
        assert_eq!(one(b":12\r\n"), Some((Reply::Int(12), 5)));
        assert_eq!(one(b"$-1\r\n"), Some((Reply::Nil, 5)));
        let msg = b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$5\r\nhe\r\no\r\n";
        assert_eq!(
            one(msg),
            Some((
                Reply::Array(vec![
                    Reply::Bulk(Bytes::from_static(b"smessage")),
                    Reply::Bulk(Bytes::from_static(b"ch")),
                    Reply::Bulk(Bytes::from_static(b"he\r\no")),
                ]),
                msg.len()
            ))
        );
        // Every prefix is incomplete, never an error.
        for n in 0..msg.len() {
            assert!(one(&msg[..n]).is_none(), "{n}");
        }
    }

    #[test]
    fn bad_replies_are_errors() {
        for bad in [
            &b"?x\r\n"[..],
            b"$3\r\nabcd\r\n",
            b":x\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            let frame = Bytes::copy_from_slice(bad);
            assert!(parse(&frame, 0, 0).is_err(), "{bad:?}");
        }
        let long = vec![b'+'; MAX_LINE + 10];
        assert!(parse(&long, 0, 0).is_err());
    }
}
