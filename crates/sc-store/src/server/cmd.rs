//! Command execution: one function per command family, replies appended to the output buffer.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::conn::ConnCtx;
use super::resp::{array, bulk, error, int, null, ok, simple};
use super::{ServerConfig, State};
use crate::db::{KeyTtl, WrongType};
use crate::history::{HistoryLimits, encode_envelope};

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INT: &str = "ERR value is not an integer or out of range";

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

/// A command queued by `MULTI`: its raw bytes and argument ranges.
#[derive(Debug)]
pub(crate) struct Queued {
    raw: Vec<u8>,
    ranges: Vec<(usize, usize)>,
}

/// The arguments of one command, as ranges into a buffer.
#[derive(Debug)]
pub(crate) struct Args<'a> {
    buf: &'a [u8],
    ranges: &'a [(usize, usize)],
}

impl<'a> Args<'a> {
    pub(crate) fn new(buf: &'a [u8], ranges: &'a [(usize, usize)]) -> Self {
        Args { buf, ranges }
    }

    fn len(&self) -> usize {
        self.ranges.len()
    }

    fn get(&self, i: usize) -> &'a [u8] {
        match self.ranges.get(i) {
            Some(&(s, e)) => self.buf.get(s..e).unwrap_or_default(),
            None => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Ping,
    Echo,
    Quit,
    Reset,
    Auth,
    Hello,
    Select,
    Client,
    Config,
    Command,
    Info,
    DbSize,
    Flush,
    Set,
    Get,
    Del,
    Exists,
    Expire,
    PExpire,
    Persist,
    Ttl,
    PTtl,
    HSet,
    HGet,
    HGetAll,
    HDel,
    RPush,
    LRange,
    LLen,
    RPop,
    Publish,
    HistPub,
    HistRead,
    Subscribe,
    Unsubscribe,
    Multi,
    Exec,
    Discard,
    Unknown,
}

fn lookup(name: &[u8]) -> Cmd {
    const TABLE: &[(&[u8], Cmd)] = &[
        (b"GET", Cmd::Get),
        (b"SET", Cmd::Set),
        (b"PUBLISH", Cmd::Publish),
        (b"SC.HISTPUB", Cmd::HistPub),
        (b"SC.HISTREAD", Cmd::HistRead),
        (b"PING", Cmd::Ping),
        (b"ECHO", Cmd::Echo),
        (b"QUIT", Cmd::Quit),
        (b"RESET", Cmd::Reset),
        (b"AUTH", Cmd::Auth),
        (b"HELLO", Cmd::Hello),
        (b"SELECT", Cmd::Select),
        (b"CLIENT", Cmd::Client),
        (b"CONFIG", Cmd::Config),
        (b"COMMAND", Cmd::Command),
        (b"INFO", Cmd::Info),
        (b"DBSIZE", Cmd::DbSize),
        (b"FLUSHDB", Cmd::Flush),
        (b"FLUSHALL", Cmd::Flush),
        (b"DEL", Cmd::Del),
        (b"EXISTS", Cmd::Exists),
        (b"EXPIRE", Cmd::Expire),
        (b"PEXPIRE", Cmd::PExpire),
        (b"PERSIST", Cmd::Persist),
        (b"TTL", Cmd::Ttl),
        (b"PTTL", Cmd::PTtl),
        (b"HSET", Cmd::HSet),
        (b"HGET", Cmd::HGet),
        (b"HGETALL", Cmd::HGetAll),
        (b"HDEL", Cmd::HDel),
        (b"RPUSH", Cmd::RPush),
        (b"LRANGE", Cmd::LRange),
        (b"LLEN", Cmd::LLen),
        (b"RPOP", Cmd::RPop),
        (b"SUBSCRIBE", Cmd::Subscribe),
        (b"UNSUBSCRIBE", Cmd::Unsubscribe),
        (b"MULTI", Cmd::Multi),
        (b"EXEC", Cmd::Exec),
        (b"DISCARD", Cmd::Discard),
    ];
    TABLE
        .iter()
        .find(|(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name))
        .map_or(Cmd::Unknown, |&(_, c)| c)
}

/// Whether `n` arguments (including the name) suit the command.
fn arity_ok(cmd: Cmd, n: usize) -> bool {
    match cmd {
        Cmd::Ping => n <= 2,
        Cmd::Echo | Cmd::Get | Cmd::Persist | Cmd::Ttl | Cmd::PTtl | Cmd::HGetAll => n == 2,
        Cmd::LLen | Cmd::RPop | Cmd::Select => n == 2,
        Cmd::Quit | Cmd::Reset | Cmd::Multi | Cmd::Exec | Cmd::Discard | Cmd::DbSize => n == 1,
        Cmd::Auth => n == 2 || n == 3,
        Cmd::Hello | Cmd::Command | Cmd::Info | Cmd::Flush | Cmd::Unsubscribe => n >= 1,
        Cmd::Client | Cmd::Config | Cmd::Del | Cmd::Exists | Cmd::Subscribe => n >= 2,
        Cmd::Set => n >= 3,
        Cmd::Expire | Cmd::PExpire | Cmd::HGet | Cmd::Publish => n == 3,
        Cmd::HDel | Cmd::RPush => n >= 3,
        Cmd::HSet => n >= 4 && n.is_multiple_of(2),
        Cmd::LRange => n == 4,
        Cmd::HistPub => n == 5,
        Cmd::HistRead => n == 6,
        Cmd::Unknown => true,
    }
}

fn lossy(b: &[u8]) -> String {
    let b = b.get(..128).unwrap_or(b);
    String::from_utf8_lossy(b).into_owned()
}

fn int_arg(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `PUBLISH`: `msg` to every subscriber of `ch`; how many there are.
fn publish(st: &mut State, cfg: &ServerConfig, ch: &[u8], msg: &[u8]) -> usize {
    let n = match st.channels.get(ch) {
        Some(subs) => {
            let mut pushed = 0;
            for s in subs {
                pushed += u64::from(s.push_message(ch, msg, cfg.max_output_buffer));
            }
            st.counts.deliveries += pushed;
            subs.len()
        }
        None => 0,
    };
    st.counts.publishes += 1;
    n
}

/// A count or a duration of at least 1.
fn positive(b: &[u8]) -> Option<u64> {
    int_arg(b)
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n >= 1)
}

/// `SC.HISTPUB channel max_len max_age_ms message`: records the message in the channel's
/// history and publishes it in its envelope (`#offset:epoch:message`); `[offset, epoch]`.
fn hist_pub(st: &mut State, cfg: &ServerConfig, a: &Args<'_>, out: &mut BytesMut) {
    let (Some(max_len), Some(max_age_ms)) = (positive(a.get(2)), positive(a.get(3))) else {
        error(out, NOT_INT);
        return;
    };
    let (ch, msg) = (a.get(1), a.get(4));
    let limits = HistoryLimits {
        max_len,
        max_age: Duration::from_millis(max_age_ms),
    };
    let position = st.histories.record(ch, Bytes::copy_from_slice(msg), limits);
    let envelope = encode_envelope(&position, msg);
    publish(st, cfg, ch, &envelope);
    array(out, 2);
    int(out, i64::try_from(position.offset).unwrap_or(i64::MAX));
    bulk(out, position.epoch.as_bytes());
}

/// `SC.HISTREAD channel after limit max_len max_age_ms` (`after` an offset, or `-` for all
/// kept; a channel without history starts one within those limits):
/// `[epoch, latest, complete (1/0), offset, message, offset, message, ...]`.
fn hist_read(st: &mut State, a: &Args<'_>, out: &mut BytesMut) {
    let after = match a.get(2) {
        b"-" => None,
        b => match int_arg(b).and_then(|n| u64::try_from(n).ok()) {
            Some(n) => Some(n),
            None => return error(out, NOT_INT),
        },
    };
    let Some(limit) = int_arg(a.get(3)).and_then(|n| usize::try_from(n).ok()) else {
        return error(out, NOT_INT);
    };
    let (Some(max_len), Some(max_age_ms)) = (positive(a.get(4)), positive(a.get(5))) else {
        return error(out, NOT_INT);
    };
    let limits = HistoryLimits {
        max_len,
        max_age: Duration::from_millis(max_age_ms),
    };
    let h = st.histories.read(a.get(1), after, limit, limits);
    array(out, 3 + 2 * h.records.len());
    bulk(out, h.epoch.as_bytes());
    int(out, i64::try_from(h.latest).unwrap_or(i64::MAX));
    int(out, i64::from(h.complete));
    for (offset, msg) in &h.records {
        int(out, i64::try_from(*offset).unwrap_or(i64::MAX));
        bulk(out, msg);
    }
}

/// Executes one command. `raw` is its wire form (kept when `MULTI` queues it).
pub(crate) fn exec(
    st: &mut State,
    c: &mut ConnCtx,
    cfg: &ServerConfig,
    a: &Args<'_>,
    raw: &[u8],
    out: &mut BytesMut,
) -> Flow {
    let name = a.get(0);
    let cmd = lookup(name);
    if !c.authed() && !matches!(cmd, Cmd::Auth | Cmd::Hello | Cmd::Quit) {
        error(out, "NOAUTH Authentication required.");
        return Flow::Continue;
    }
    if cmd == Cmd::Unknown {
        if c.multi.is_some() {
            c.multi_failed = true;
        }
        error(
            out,
            &format!(
                "ERR unknown command '{}', with args beginning with: ",
                lossy(name)
            ),
        );
        return Flow::Continue;
    }
    if !arity_ok(cmd, a.len()) {
        if c.multi.is_some() {
            c.multi_failed = true;
        }
        error(
            out,
            &format!(
                "ERR wrong number of arguments for '{}' command",
                lossy(name).to_ascii_lowercase()
            ),
        );
        return Flow::Continue;
    }
    if !c.subs.is_empty()
        && !matches!(
            cmd,
            Cmd::Subscribe | Cmd::Unsubscribe | Cmd::Ping | Cmd::Quit | Cmd::Reset
        )
    {
        error(
            out,
            &format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                lossy(name).to_ascii_lowercase()
            ),
        );
        return Flow::Continue;
    }
    if let Some(queue) = c.multi.as_mut()
        && !matches!(
            cmd,
            Cmd::Exec | Cmd::Discard | Cmd::Multi | Cmd::Quit | Cmd::Reset
        )
    {
        if matches!(cmd, Cmd::Subscribe | Cmd::Unsubscribe) {
            c.multi_failed = true;
            error(out, "ERR Command not allowed inside a transaction");
            return Flow::Continue;
        }
        c.multi_bytes += raw.len();
        if c.multi_bytes > cfg.max_query_buffer {
            c.multi_failed = true;
            error(out, "ERR transaction too large");
            return Flow::Continue;
        }
        queue.push(Queued {
            raw: raw.to_vec(),
            ranges: a.ranges.to_vec(),
        });
        simple(out, b"QUEUED");
        return Flow::Continue;
    }
    run(st, c, cfg, cmd, a, out)
}

fn run(
    st: &mut State,
    c: &mut ConnCtx,
    cfg: &ServerConfig,
    cmd: Cmd,
    a: &Args<'_>,
    out: &mut BytesMut,
) -> Flow {
    st.counts.commands += 1;
    let db = &mut st.db;
    match cmd {
        Cmd::Get => match db.get(a.get(1)) {
            Ok(Some(v)) => bulk(out, &v),
            Ok(None) => null(out),
            Err(WrongType) => error(out, WRONGTYPE),
        },
        Cmd::Set => set(st, a, out),
        Cmd::Publish => {
            let n = publish(st, cfg, a.get(1), a.get(2));
            int(out, count(n));
        }
        Cmd::HistPub => hist_pub(st, cfg, a, out),
        Cmd::HistRead => hist_read(st, a, out),
        Cmd::Ping => {
            if c.subs.is_empty() {
                if a.len() == 2 {
                    bulk(out, a.get(1));
                } else {
                    simple(out, b"PONG");
                }
            } else {
                array(out, 2);
                bulk(out, b"pong");
                bulk(out, a.get(1));
            }
        }
        Cmd::Echo => bulk(out, a.get(1)),
        Cmd::Quit => {
            ok(out);
            return Flow::Close;
        }
        Cmd::Reset => {
            c.multi = None;
            c.multi_failed = false;
            for ch in c.subs.drain() {
                drop_subscriber(st, &ch, c.shared.id);
            }
            simple(out, b"RESET");
        }
        Cmd::Auth => {
            let pass = a.get(a.len() - 1);
            auth(c, cfg, pass, out, true);
        }
        Cmd::Hello => hello(c, cfg, a, out),
        Cmd::Select => {
            if a.get(1) == b"0" {
                ok(out);
            } else {
                error(out, "ERR DB index is out of range");
            }
        }
        Cmd::Client => {
            let sub = a.get(1);
            if sub.eq_ignore_ascii_case(b"ID") {
                int(
                    out,
                    count(usize::try_from(c.shared.id).unwrap_or(usize::MAX)),
                );
            } else if sub.eq_ignore_ascii_case(b"GETNAME") {
                null(out);
            } else if sub.eq_ignore_ascii_case(b"SETNAME") || sub.eq_ignore_ascii_case(b"SETINFO") {
                ok(out);
            } else {
                error(out, &format!("ERR unknown subcommand '{}'", lossy(sub)));
            }
        }
        Cmd::Config => {
            let sub = a.get(1);
            if sub.eq_ignore_ascii_case(b"GET") {
                // redis-benchmark asks for `save` and `appendonly`: nothing is persisted.
                let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
                for i in 2..a.len() {
                    let p = a.get(i);
                    if p.eq_ignore_ascii_case(b"save") {
                        pairs.push((b"save", b""));
                    } else if p.eq_ignore_ascii_case(b"appendonly") {
                        pairs.push((b"appendonly", b"no"));
                    }
                }
                array(out, pairs.len() * 2);
                for (k, v) in pairs {
                    bulk(out, k);
                    bulk(out, v);
                }
            } else {
                error(out, "ERR CONFIG subcommand not supported");
            }
        }
        Cmd::Command => array(out, 0),
        Cmd::Info => {
            let info = format!(
                "# Server\r\nredis_version:7.0.0\r\nsc_store_version:{}\r\nredis_mode:standalone\r\n\r\n# Clients\r\nconnected_clients:{}\r\n\r\n# Stats\r\ntotal_net_input_bytes:{}\r\n\r\n# Keyspace\r\ndb0:keys={}\r\n",
                env!("CARGO_PKG_VERSION"),
                st.clients,
                st.net_input_bytes,
                st.db.len()
            );
            bulk(out, info.as_bytes());
        }
        Cmd::DbSize => int(out, count(db.len())),
        Cmd::Flush => {
            *db = crate::db::Db::default();
            ok(out);
        }
        Cmd::Del | Cmd::Exists => {
            let mut n = 0;
            for i in 1..a.len() {
                let hit = if cmd == Cmd::Del {
                    db.remove(a.get(i))
                } else {
                    db.has(a.get(i))
                };
                n += usize::from(hit);
            }
            int(out, count(n));
        }
        Cmd::Expire | Cmd::PExpire => {
            let Some(n) = int_arg(a.get(2)) else {
                error(out, NOT_INT);
                return Flow::Continue;
            };
            let ms = if cmd == Cmd::Expire {
                n.saturating_mul(1000)
            } else {
                n
            };
            let hit = if ms <= 0 {
                db.remove(a.get(1))
            } else {
                db.expire(a.get(1), Duration::from_millis(ms.unsigned_abs()))
            };
            int(out, i64::from(hit));
        }
        Cmd::Persist => int(out, i64::from(db.persist(a.get(1)))),
        Cmd::Ttl | Cmd::PTtl => {
            let v = match db.ttl(a.get(1)) {
                KeyTtl::Missing => -2,
                KeyTtl::Persistent => -1,
                KeyTtl::Expires(d) if cmd == Cmd::Ttl => {
                    i64::try_from(d.as_millis().div_ceil(1000)).unwrap_or(i64::MAX)
                }
                KeyTtl::Expires(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            };
            int(out, v);
        }
        Cmd::HSet => {
            let mut added = 0;
            for i in (2..a.len()).step_by(2) {
                match db.map_set(a.get(1), a.get(i), Bytes::copy_from_slice(a.get(i + 1))) {
                    Ok(new) => added += usize::from(new),
                    Err(WrongType) => {
                        error(out, WRONGTYPE);
                        return Flow::Continue;
                    }
                }
            }
            int(out, count(added));
        }
        Cmd::HGet => match db.map_get(a.get(1), a.get(2)) {
            Ok(Some(v)) => bulk(out, &v),
            Ok(None) => null(out),
            Err(WrongType) => error(out, WRONGTYPE),
        },
        Cmd::HGetAll => match db.map_get_all(a.get(1)) {
            Ok(all) => {
                array(out, all.len() * 2);
                for (k, v) in all {
                    bulk(out, &k);
                    bulk(out, &v);
                }
            }
            Err(WrongType) => error(out, WRONGTYPE),
        },
        Cmd::HDel => {
            let mut n = 0;
            for i in 2..a.len() {
                match db.map_remove(a.get(1), a.get(i)) {
                    Ok(hit) => n += usize::from(hit),
                    Err(WrongType) => {
                        error(out, WRONGTYPE);
                        return Flow::Continue;
                    }
                }
            }
            int(out, count(n));
        }
        Cmd::RPush => {
            let values = (2..a.len()).map(|i| Bytes::copy_from_slice(a.get(i)));
            match db.list_push(a.get(1), values) {
                Ok(n) => int(out, count(n)),
                Err(WrongType) => error(out, WRONGTYPE),
            }
        }
        Cmd::LRange => {
            let (Some(start), Some(stop)) = (int_arg(a.get(2)), int_arg(a.get(3))) else {
                error(out, NOT_INT);
                return Flow::Continue;
            };
            match db.list_range(a.get(1), start, stop) {
                Ok(items) => {
                    array(out, items.len());
                    for v in items {
                        bulk(out, &v);
                    }
                }
                Err(WrongType) => error(out, WRONGTYPE),
            }
        }
        Cmd::LLen => match db.list_count(a.get(1)) {
            Ok(n) => int(out, count(n)),
            Err(WrongType) => error(out, WRONGTYPE),
        },
        Cmd::RPop => match db.list_pop(a.get(1)) {
            Ok(Some(v)) => bulk(out, &v),
            Ok(None) => null(out),
            Err(WrongType) => error(out, WRONGTYPE),
        },
        Cmd::Subscribe => {
            for i in 1..a.len() {
                let ch = a.get(i);
                if !c.subs.contains(ch) {
                    let ch = Bytes::copy_from_slice(ch);
                    c.subs.insert(ch.clone());
                    st.channels.entry(ch).or_default().push(c.shared.clone());
                }
                array(out, 3);
                bulk(out, b"subscribe");
                bulk(out, ch);
                int(out, count(c.subs.len()));
            }
        }
        Cmd::Unsubscribe => {
            let chans: Vec<Bytes> = if a.len() > 1 {
                (1..a.len())
                    .map(|i| Bytes::copy_from_slice(a.get(i)))
                    .collect()
            } else {
                c.subs.iter().cloned().collect()
            };
            if chans.is_empty() {
                array(out, 3);
                bulk(out, b"unsubscribe");
                null(out);
                int(out, 0);
            }
            for ch in chans {
                if c.subs.remove(&ch) {
                    drop_subscriber(st, &ch, c.shared.id);
                }
                array(out, 3);
                bulk(out, b"unsubscribe");
                bulk(out, &ch);
                int(out, count(c.subs.len()));
            }
        }
        Cmd::Multi => {
            if c.multi.is_some() {
                error(out, "ERR MULTI calls can not be nested");
            } else {
                c.multi = Some(Vec::new());
                c.multi_failed = false;
                c.multi_bytes = 0;
                ok(out);
            }
        }
        Cmd::Discard => {
            if c.multi.take().is_some() {
                ok(out);
            } else {
                error(out, "ERR DISCARD without MULTI");
            }
        }
        Cmd::Exec => {
            let Some(queue) = c.multi.take() else {
                error(out, "ERR EXEC without MULTI");
                return Flow::Continue;
            };
            if std::mem::take(&mut c.multi_failed) {
                error(
                    out,
                    "EXECABORT Transaction discarded because of previous errors.",
                );
                return Flow::Continue;
            }
            array(out, queue.len());
            for q in &queue {
                let args = Args::new(&q.raw, &q.ranges);
                let cmd = lookup(args.get(0));
                let _ = run(st, c, cfg, cmd, &args, out);
            }
        }
        Cmd::Unknown => error(out, "ERR unknown command"),
    }
    Flow::Continue
}

fn set(st: &mut State, a: &Args<'_>, out: &mut BytesMut) {
    let mut ttl = None;
    let mut i = 3;
    while i < a.len() {
        let opt = a.get(i);
        let unit = if opt.eq_ignore_ascii_case(b"EX") {
            1000
        } else if opt.eq_ignore_ascii_case(b"PX") {
            1
        } else {
            error(out, "ERR syntax error");
            return;
        };
        match int_arg(a.get(i + 1)) {
            Some(n) if n > 0 => {
                ttl = Some(Duration::from_millis(n.unsigned_abs().saturating_mul(unit)));
            }
            _ => {
                error(out, "ERR invalid expire time in 'set' command");
                return;
            }
        }
        i += 2;
    }
    st.db.set(a.get(1), Bytes::copy_from_slice(a.get(2)), ttl);
    ok(out);
}

fn auth(c: &mut ConnCtx, cfg: &ServerConfig, pass: &[u8], out: &mut BytesMut, reply: bool) -> bool {
    let Some(secret) = cfg.secret.as_deref() else {
        error(
            out,
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        );
        return false;
    };
    // Compare without an early exit so timing does not tell how much of the secret matched.
    let s = secret.as_bytes();
    let mut diff = u8::from(s.len() != pass.len());
    for (i, &b) in s.iter().enumerate() {
        diff |= b ^ pass.get(i).copied().unwrap_or(0);
    }
    if diff == 0 {
        c.shared.authed.set(true);
        if reply {
            ok(out);
        }
        true
    } else {
        error(
            out,
            "WRONGPASS invalid username-password pair or user is disabled.",
        );
        false
    }
}

fn hello(c: &mut ConnCtx, cfg: &ServerConfig, a: &Args<'_>, out: &mut BytesMut) {
    let mut i = 1;
    if a.len() > 1 {
        if a.get(1) != b"2" {
            error(out, "NOPROTO unsupported protocol version");
            return;
        }
        i = 2;
    }
    while i < a.len() {
        let opt = a.get(i);
        if opt.eq_ignore_ascii_case(b"AUTH") && i + 2 < a.len() {
            if !auth(c, cfg, a.get(i + 2), out, false) {
                return;
            }
            i += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && i + 1 < a.len() {
            i += 2;
        } else {
            error(out, "ERR syntax error in HELLO option");
            return;
        }
    }
    if !c.authed() {
        error(
            out,
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        );
        return;
    }
    array(out, 14);
    bulk(out, b"server");
    bulk(out, b"sc-store");
    bulk(out, b"version");
    bulk(out, env!("CARGO_PKG_VERSION").as_bytes());
    bulk(out, b"proto");
    int(out, 2);
    bulk(out, b"id");
    int(
        out,
        count(usize::try_from(c.shared.id).unwrap_or(usize::MAX)),
    );
    bulk(out, b"mode");
    bulk(out, b"standalone");
    bulk(out, b"role");
    bulk(out, b"master");
    bulk(out, b"modules");
    array(out, 0);
}

/// Removes connection `id` from the subscribers of `channel`.
pub(crate) fn drop_subscriber(st: &mut State, channel: &[u8], id: u64) {
    if let Some(subs) = st.channels.get_mut(channel) {
        subs.retain(|s| s.id != id);
        if subs.is_empty() {
            st.channels.remove(channel);
        }
    }
}
