//! Bad input to the store server: each gets an error reply or a closed connection, the server
//! keeps serving other clients, and its memory stays bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sc_store::server::{self, ServerConfig, ServerHandle};
use sc_store::{Error, RespConfig, RespStore, Store};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const WAIT: Duration = Duration::from_secs(10);

fn start(config: ServerConfig) -> ServerHandle {
    server::spawn("127.0.0.1:0".parse().unwrap(), config).unwrap()
}

/// A RESP reply, as far as these tests need.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

struct Client {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    async fn cmd(&mut self, args: &[&[u8]]) -> Reply {
        self.send(&encode(args)).await;
        self.reply().await
    }

    async fn reply(&mut self) -> Reply {
        tokio::time::timeout(WAIT, read_reply(&mut self.r))
            .await
            .expect("timed out waiting for a reply")
            .expect("connection closed")
    }

    /// Waits until the server closes the connection (EOF or reset), discarding anything unread.
    async fn closed(&mut self) {
        let mut buf = vec![0u8; 64 << 10];
        tokio::time::timeout(WAIT, async {
            loop {
                match self.r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the server did not close the connection");
    }
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn read_reply(
    r: &mut BufReader<OwnedReadHalf>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Reply>> + Send + '_>> {
    Box::pin(async move {
        let mut line = String::new();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        Some(match kind {
            "+" => Reply::Simple(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(rest.parse().unwrap()),
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0u8; usize::try_from(n).unwrap() + 2];
                    r.read_exact(&mut data).await.ok()?;
                    data.truncate(data.len() - 2);
                    Reply::Bulk(Some(data))
                }
            }
            "*" => {
                let n: usize = rest.parse().unwrap();
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(read_reply(r).await?);
                }
                Reply::Array(items)
            }
            other => panic!("unexpected reply type {other:?} in {line:?}"),
        })
    })
}

fn is_err(reply: &Reply, prefix: &str) -> bool {
    matches!(reply, Reply::Error(e) if e.starts_with(prefix))
}

/// The server still answers another client.
async fn serves_others(addr: SocketAddr) {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));
}

async fn connected_clients(c: &mut Client) -> usize {
    let Reply::Bulk(Some(info)) = c.cmd(&[b"INFO"]).await else {
        panic!("INFO")
    };
    let info = String::from_utf8(info).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap()
        .parse()
        .unwrap()
}

/// Polls (with a deadline) until the server counts `n` clients.
async fn await_clients(observer: &mut Client, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = connected_clients(observer).await;
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "{now} clients, expected {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn malformed_resp_gets_an_error_and_a_close() {
    let s = start(ServerConfig::default());
    for garbage in [
        &b"*2\r\n$3\r\nGET\r\n:1\r\n"[..],
        b"*x\r\n",
        b"*1\r\n$3\r\nGETXX\r\n",
        b"*1\r\n$-5\r\n",
        b"*1\r\n$99999999999999999999999\r\n",
    ] {
        let mut c = Client::connect(s.local_addr()).await;
        c.send(garbage).await;
        let r = c.reply().await;
        assert!(is_err(&r, "ERR Protocol error"), "{garbage:?}: {r:?}");
        c.closed().await;
    }
    serves_others(s.local_addr()).await;
}

#[tokio::test]
async fn a_bulk_length_of_2_pow_40_is_refused_without_allocating() {
    let s = start(ServerConfig::default());
    let before = rss_bytes();
    let mut c = Client::connect(s.local_addr()).await;
    c.send(b"*2\r\n$3\r\nGET\r\n$1099511627776\r\n").await;
    assert_eq!(
        c.reply().await,
        Reply::Error("ERR Protocol error: invalid bulk length".into())
    );
    c.closed().await;
    // Also as the declared count of arguments, and as a too long inline command.
    let mut c = Client::connect(s.local_addr()).await;
    c.send(b"*1099511627776\r\n").await;
    assert!(is_err(
        &c.reply().await,
        "ERR Protocol error: invalid multibulk length"
    ));
    c.closed().await;
    let mut c = Client::connect(s.local_addr()).await;
    c.send(&vec![b'a'; 70 << 10]).await;
    assert!(is_err(
        &c.reply().await,
        "ERR Protocol error: too big inline request"
    ));
    c.closed().await;
    assert!(rss_bytes() < before + (64 << 20), "memory grew");
    serves_others(s.local_addr()).await;
}

#[tokio::test]
async fn unknown_commands_get_an_error_and_the_connection_stays() {
    let s = start(ServerConfig::default());
    let mut c = Client::connect(s.local_addr()).await;
    let r = c.cmd(&[b"FOO", b"bar"]).await;
    assert!(is_err(&r, "ERR unknown command 'FOO'"), "{r:?}");
    // No remote code execution.
    assert!(is_err(
        &c.cmd(&[b"EVAL", b"return 1", b"0"]).await,
        "ERR unknown command"
    ));
    assert!(is_err(
        &c.cmd(&[b"GET"]).await,
        "ERR wrong number of arguments"
    ));
    assert!(is_err(
        &c.cmd(&[b"SET", b"k", b"v", b"EX", b"0"]).await,
        "ERR invalid expire time"
    ));
    // Inline commands work too, as with redis-cli or telnet.
    c.send(b"PING\r\n").await;
    assert_eq!(c.reply().await, Reply::Simple("PONG".into()));
    assert_eq!(
        c.cmd(&[b"SET", b"k", b"v"]).await,
        Reply::Simple("OK".into())
    );
    assert!(is_err(&c.cmd(&[b"HGET", b"k", b"f"]).await, "WRONGTYPE"));
    // Channel history: limits and offsets must be numbers (and limits at least 1).
    for bad in [
        &[&b"SC.HISTPUB"[..], b"ch", b"x", b"1000", b"m"][..],
        &[b"SC.HISTPUB", b"ch", b"0", b"1000", b"m"],
        &[b"SC.HISTPUB", b"ch", b"10", b"-1", b"m"],
        &[b"SC.HISTREAD", b"ch", b"-5", b"10", b"10", b"1000"],
        &[b"SC.HISTREAD", b"ch", b"-", b"many", b"10", b"1000"],
        &[b"SC.HISTREAD", b"ch", b"-", b"10", b"0", b"1000"],
        &[b"SC.HISTREAD", b"ch", b"-", b"10", b"10", b"-1"],
    ] {
        assert!(
            is_err(&c.cmd(bad).await, "ERR value is not an integer"),
            "{bad:?}"
        );
    }
    assert!(is_err(
        &c.cmd(&[b"SC.HISTPUB", b"ch", b"10"]).await,
        "ERR wrong number of arguments"
    ));
    assert!(matches!(
        c.cmd(&[b"SC.HISTPUB", b"ch", b"10", b"1000", b"m"]).await,
        Reply::Array(_)
    ));
}

#[tokio::test]
async fn a_client_without_the_secret_gets_noauth() {
    let s = start(ServerConfig {
        secret: Some("s3cret".into()),
        ..ServerConfig::default()
    });
    let mut c = Client::connect(s.local_addr()).await;
    assert!(is_err(&c.cmd(&[b"GET", b"k"]).await, "NOAUTH"));
    assert!(is_err(&c.cmd(&[b"PUBLISH", b"c", b"m"]).await, "NOAUTH"));
    assert!(is_err(&c.cmd(&[b"SUBSCRIBE", b"c"]).await, "NOAUTH"));
    assert!(is_err(&c.cmd(&[b"AUTH", b"wrong"]).await, "WRONGPASS"));
    assert!(is_err(&c.cmd(&[b"GET", b"k"]).await, "NOAUTH"));
    assert_eq!(
        c.cmd(&[b"AUTH", b"s3cret"]).await,
        Reply::Simple("OK".into())
    );
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, Reply::Bulk(None));

    // The client library: with the secret it works, without it every command fails.
    let addr = s.local_addr().to_string();
    let good = RespStore::connect(RespConfig::new([addr.clone()]).secret("s3cret"))
        .await
        .unwrap();
    good.set("k", "v".into(), None).await.unwrap();
    assert_eq!(good.get("k").await.unwrap(), Some("v".into()));
    // Without the secret, or with a wrong one, connecting fails at once with the store's
    // refusal, naming the node.
    for (config, reply) in [
        (RespConfig::new([addr.clone()]), "NOAUTH"),
        (RespConfig::new([addr.clone()]).secret("wrong"), "WRONGPASS"),
    ] {
        let started = Instant::now();
        let e = RespStore::connect(config).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{e:?}");
        assert!(e.is_auth() && !e.is_connection(), "{e:?}");
        assert_eq!(e.node(), Some(addr.as_str()));
        match &e {
            Error::Node { source, .. } => match &**source {
                Error::Auth(r) => assert!(r.starts_with(reply), "{r}"),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
    // A secret given to a store that has none is refused too.
    let open = start(ServerConfig::default());
    let e = RespStore::connect(RespConfig::new([open.local_addr().to_string()]).secret("s3cret"))
        .await
        .unwrap_err();
    assert!(e.is_auth(), "{e:?}");
}

#[tokio::test]
async fn unreachable_node_fails_connect_naming_it() {
    // A port nothing listens on: bound, then released.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let up = start(ServerConfig::default());
    let started = Instant::now();
    let e = RespStore::connect(RespConfig::new([up.local_addr().to_string(), addr.clone()]))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{e:?}");
    assert!(e.is_connection() && !e.is_auth(), "{e:?}");
    assert_eq!(e.node(), Some(addr.as_str()));
}

#[tokio::test]
async fn ten_thousand_pipelined_commands() {
    let s = start(ServerConfig::default());
    let c = Client::connect(s.local_addr()).await;
    let Client { mut r, mut w } = c;
    let mut batch = Vec::new();
    for i in 0..5_000 {
        batch.extend(encode(&[
            b"SET",
            format!("k{i}").as_bytes(),
            format!("v{i}").as_bytes(),
        ]));
        batch.extend(encode(&[b"GET", format!("k{i}").as_bytes()]));
    }
    // Write while reading, as a pipelining client must.
    let writer = tokio::spawn(async move {
        w.write_all(&batch).await.unwrap();
        w
    });
    for i in 0..5_000 {
        let set = tokio::time::timeout(WAIT, read_reply(&mut r))
            .await
            .unwrap();
        assert_eq!(set, Some(Reply::Simple("OK".into())));
        let get = tokio::time::timeout(WAIT, read_reply(&mut r))
            .await
            .unwrap();
        assert_eq!(get, Some(Reply::Bulk(Some(format!("v{i}").into_bytes()))));
    }
    let _w = writer.await.unwrap();
    serves_others(s.local_addr()).await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_and_memory_stays_bounded() {
    let s = start(ServerConfig {
        write_stall_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    });
    let mut observer = Client::connect(s.local_addr()).await;
    let big = vec![b'x'; 1 << 20];
    assert_eq!(
        observer.cmd(&[b"SET", b"big", &big]).await,
        Reply::Simple("OK".into())
    );
    let before = rss_bytes();
    // 300 GETs of 1 MiB: 300 MiB of replies that the client never reads.
    let mut sluggard = Client::connect(s.local_addr()).await;
    assert_eq!(sluggard.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));
    let mut batch = Vec::new();
    for _ in 0..300 {
        batch.extend(encode(&[b"GET", b"big"]));
    }
    sluggard.send(&batch).await;
    // Others are served meanwhile, and the stalled client is dropped.
    serves_others(s.local_addr()).await;
    await_clients(&mut observer, 1).await;
    assert!(
        rss_bytes() < before + (64 << 20),
        "memory grew by {} MiB",
        (rss_bytes() - before) >> 20
    );
    sluggard.closed().await;
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_dropped_at_the_output_limit() {
    let s = start(ServerConfig {
        max_output_buffer: 1 << 20,
        ..ServerConfig::default()
    });
    let mut sub = Client::connect(s.local_addr()).await;
    let r = sub.cmd(&[b"SUBSCRIBE", b"ch"]).await;
    assert_eq!(
        r,
        Reply::Array(vec![
            Reply::Bulk(Some(b"subscribe".to_vec())),
            Reply::Bulk(Some(b"ch".to_vec())),
            Reply::Int(1)
        ])
    );
    // In subscribed mode only pub/sub commands are allowed.
    assert!(is_err(
        &sub.cmd(&[b"GET", b"k"]).await,
        "ERR Can't execute 'get'"
    ));
    let mut publisher = Client::connect(s.local_addr()).await;
    let msg = vec![b'm'; 64 << 10];
    // Publish until the server has dropped the subscriber (bounded: at most 4,000 x 64 KiB).
    let mut dropped = false;
    for _ in 0..4_000 {
        if publisher.cmd(&[b"PUBLISH", b"ch", &msg]).await == Reply::Int(0) {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the subscriber was never dropped");
    sub.closed().await;
    serves_others(s.local_addr()).await;
}

#[tokio::test]
async fn max_clients() {
    let s = start(ServerConfig {
        max_clients: 2,
        ..ServerConfig::default()
    });
    let mut a = Client::connect(s.local_addr()).await;
    let mut b = Client::connect(s.local_addr()).await;
    assert_eq!(a.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));
    assert_eq!(b.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));
    let mut c = Client::connect(s.local_addr()).await;
    assert!(is_err(
        &c.reply().await,
        "ERR max number of clients reached"
    ));
    c.closed().await;
    drop(b);
    await_clients(&mut a, 1).await;
    serves_others(s.local_addr()).await;
}

#[tokio::test]
async fn transactions_and_redis_cli_handshake() {
    let s = start(ServerConfig::default());
    let mut c = Client::connect(s.local_addr()).await;
    assert_eq!(c.cmd(&[b"MULTI"]).await, Reply::Simple("OK".into()));
    assert_eq!(
        c.cmd(&[b"RPUSH", b"l", b"a", b"b"]).await,
        Reply::Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&[b"LLEN", b"l"]).await,
        Reply::Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&[b"EXEC"]).await,
        Reply::Array(vec![Reply::Int(2), Reply::Int(2)])
    );
    assert_eq!(c.cmd(&[b"MULTI"]).await, Reply::Simple("OK".into()));
    assert!(is_err(&c.cmd(&[b"NOPE"]).await, "ERR unknown command"));
    assert!(is_err(&c.cmd(&[b"EXEC"]).await, "EXECABORT"));
    assert_eq!(
        c.cmd(&[b"DISCARD"]).await,
        Reply::Error("ERR DISCARD without MULTI".into())
    );
    // What redis-benchmark and redis-cli send first.
    assert_eq!(
        c.cmd(&[b"CONFIG", b"GET", b"save"]).await,
        Reply::Array(vec![
            Reply::Bulk(Some(b"save".to_vec())),
            Reply::Bulk(Some(Vec::new()))
        ])
    );
    assert_eq!(c.cmd(&[b"COMMAND", b"DOCS"]).await, Reply::Array(vec![]));
    assert_eq!(c.cmd(&[b"SELECT", b"0"]).await, Reply::Simple("OK".into()));
    assert!(matches!(c.cmd(&[b"HELLO", b"2"]).await, Reply::Array(a) if a.len() == 14));
    assert!(is_err(&c.cmd(&[b"HELLO", b"3"]).await, "NOPROTO"));
    assert_eq!(c.cmd(&[b"QUIT"]).await, Reply::Simple("OK".into()));
    c.closed().await;
}

#[tokio::test]
async fn expired_keys_are_swept_without_being_accessed() {
    let s = start(ServerConfig::default());
    let mut c = Client::connect(s.local_addr()).await;
    for i in 0..100 {
        let k = format!("k{i}");
        assert_eq!(
            c.cmd(&[b"SET", k.as_bytes(), b"v", b"PX", b"100"]).await,
            Reply::Simple("OK".into())
        );
    }
    assert_eq!(
        c.cmd(&[b"SET", b"keep", b"v"]).await,
        Reply::Simple("OK".into())
    );
    let deadline = Instant::now() + WAIT;
    while c.cmd(&[b"DBSIZE"]).await != Reply::Int(1) {
        assert!(Instant::now() < deadline, "expired keys were not swept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_transaction_cannot_queue_more_than_the_query_buffer() {
    let s = start(ServerConfig {
        max_query_buffer: 64 << 10,
        ..ServerConfig::default()
    });
    let mut c = Client::connect(s.local_addr()).await;
    assert_eq!(c.cmd(&[b"MULTI"]).await, Reply::Simple("OK".into()));
    let value = vec![b'v'; 1 << 10];
    let mut refused = false;
    for _ in 0..100 {
        match c.cmd(&[b"SET", b"k", &value]).await {
            Reply::Simple(q) if q == "QUEUED" => {}
            r => {
                assert!(is_err(&r, "ERR transaction too large"), "{r:?}");
                refused = true;
                break;
            }
        }
    }
    assert!(refused);
    assert!(is_err(&c.cmd(&[b"EXEC"]).await, "EXECABORT"));
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, Reply::Bulk(None));
}

// Connections that have not authenticated (the server has a secret): Redis's small limits, a
// small input buffer and an auth timeout, so that a client without the secret holds little of
// the server's memory and not for long.

const SECRET: &str = "s3cret";

fn with_secret() -> ServerConfig {
    ServerConfig {
        secret: Some(SECRET.into()),
        ..ServerConfig::default()
    }
}

async fn authed_client(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr).await;
    assert_eq!(
        c.cmd(&[b"AUTH", SECRET.as_bytes()]).await,
        Reply::Simple("OK".into())
    );
    c
}

/// `INFO`'s `total_net_input_bytes`: what the server has read from all its connections.
async fn net_input_bytes(c: &mut Client) -> u64 {
    let Reply::Bulk(Some(info)) = c.cmd(&[b"INFO"]).await else {
        panic!("INFO")
    };
    String::from_utf8(info)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("total_net_input_bytes:"))
        .unwrap()
        .parse()
        .unwrap()
}

/// The wire size of the `INFO` command [`net_input_bytes`] sends.
const INFO_LEN: u64 = 14;

const MIB_32: usize = 32 << 20;

/// Writes `head`, then `block` again and again until `total` bytes are written or a write
/// fails (the server closed the connection); returns the bytes written.
async fn stream(w: &mut OwnedWriteHalf, head: &[u8], block: &[u8], total: usize) -> usize {
    let mut sent = 0;
    if w.write_all(head).await.is_err() {
        return 0;
    }
    sent += head.len();
    while sent < total {
        let n = block.len().min(total - sent);
        if w.write_all(&block[..n]).await.is_err() {
            break;
        }
        sent += n;
    }
    sent
}

/// Reads (and drops) everything until the server closes the connection.
async fn until_closed(r: &mut BufReader<OwnedReadHalf>) {
    let mut buf = vec![0u8; 64 << 10];
    tokio::time::timeout(WAIT, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server did not close the connection");
}

/// Connects without authenticating and sends `head` and then `block` repeatedly, up to `total`
/// bytes, from another task; returns the first reply (`None` when the connection closed without
/// one) once the server has closed the connection.
async fn hostile(addr: SocketAddr, head: Vec<u8>, block: Vec<u8>, total: usize) -> Option<Reply> {
    let (r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    let writer = tokio::spawn(async move { stream(&mut w, &head, &block, total).await });
    let first = tokio::time::timeout(WAIT, read_reply(&mut r))
        .await
        .expect("neither a reply nor a close");
    until_closed(&mut r).await;
    tokio::time::timeout(WAIT, writer)
        .await
        .expect("the writer did not stop")
        .unwrap();
    first
}

/// A multibulk request of `n` bulks of `len` bytes.
fn request(n: usize, len: usize) -> Vec<u8> {
    let arg = vec![b'x'; len];
    encode(&vec![&arg[..]; n])
}

/// The header of a `SET k <value>` whose value is `len` bytes, without the value.
fn set_head(len: usize) -> Vec<u8> {
    format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${len}\r\n").into_bytes()
}

fn protocol_error(r: &Option<Reply>, what: &str) -> bool {
    matches!(r, Some(Reply::Error(e)) if e == &format!("ERR Protocol error: {what}"))
}

#[tokio::test]
async fn before_auth_requests_are_limited_as_in_redis() {
    let s = start(with_secret());
    let addr = s.local_addr();
    // More than 10 arguments: refused and closed, from the header on.
    for n in [11, 1000] {
        let r = hostile(addr, request(n, 1), Vec::new(), 0).await;
        assert!(
            protocol_error(&r, "unauthenticated multibulk length"),
            "{n}: {r:?}"
        );
    }
    let r = hostile(
        addr,
        b"GET a b c d e f g h i j k\r\n".to_vec(),
        Vec::new(),
        0,
    )
    .await;
    assert!(
        protocol_error(&r, "unauthenticated multibulk length"),
        "{r:?}"
    );
    // A bulk over 16 KiB: refused before its bytes are read.
    let mut auth = b"*2\r\n$4\r\nAUTH\r\n$16385\r\n".to_vec();
    auth.extend(vec![b'x'; 16385]);
    auth.extend(b"\r\n");
    let r = hostile(addr, auth, Vec::new(), 0).await;
    assert!(protocol_error(&r, "unauthenticated bulk length"), "{r:?}");
    // At the limits the commands run (and get NOAUTH or WRONGPASS) and the connection stays.
    let mut c = Client::connect(addr).await;
    let ten = request(10, 1);
    c.send(&ten).await;
    assert!(is_err(&c.reply().await, "NOAUTH"));
    let long = vec![b'p'; 16 << 10];
    assert!(is_err(&c.cmd(&[b"AUTH", &long]).await, "WRONGPASS"));
    // After AUTH the connection has the full limits, from the next command of the same write.
    let mut pipeline = encode(&[b"AUTH", SECRET.as_bytes()]);
    let keys: Vec<Vec<u8>> = (0..999).map(|i| format!("k{i}").into_bytes()).collect();
    let mut del: Vec<&[u8]> = vec![b"DEL"];
    del.extend(keys.iter().map(Vec::as_slice));
    pipeline.extend(encode(&del));
    c.send(&pipeline).await;
    assert_eq!(c.reply().await, Reply::Simple("OK".into()));
    assert_eq!(c.reply().await, Reply::Int(0));
    serves_others_authed(addr).await;
}

#[tokio::test]
async fn an_unauthenticated_1_mib_bulk_or_32_mib_stream_is_refused_after_reading_little() {
    let s = start(with_secret());
    let addr = s.local_addr();
    let mut observer = authed_client(addr).await;
    let block = vec![b'x'; 64 << 10];
    // (what, first write, repeated block, total bytes, the accepted errors)
    type Case = (
        &'static str,
        Vec<u8>,
        Vec<u8>,
        usize,
        &'static [&'static str],
    );
    let cases: [Case; 5] = [
        // A 1 MiB bulk: the header is enough to refuse it.
        (
            "1 MiB SET value, in one write",
            [set_head(1 << 20), vec![b'x'; 1 << 20], b"\r\n".to_vec()].concat(),
            Vec::new(),
            0,
            &["unauthenticated bulk length"],
        ),
        (
            "1 MiB AUTH secret",
            b"*2\r\n$4\r\nAUTH\r\n$1048576\r\n".to_vec(),
            block.clone(),
            1 << 20,
            &["unauthenticated bulk length"],
        ),
        // 32 MiB of requests that keep under the bulk and argument limits: the buffer cap.
        (
            "32 MiB of 10 x 16 KiB requests",
            Vec::new(),
            request(10, 16 << 10),
            MIB_32,
            &["unauthenticated request too large"],
        ),
        // 32 MiB declared as one value.
        (
            "32 MiB SET value",
            set_head(MIB_32),
            block.clone(),
            MIB_32,
            &["unauthenticated bulk length"],
        ),
        // 32 MiB without a line end.
        (
            "32 MiB inline line",
            Vec::new(),
            block.clone(),
            MIB_32,
            &[
                "unauthenticated request too large",
                "too big inline request",
            ],
        ),
    ];
    for (name, head, block, total, errors) in cases {
        let before = net_input_bytes(&mut observer).await;
        let r = hostile(addr, head, block, total).await;
        assert!(
            errors.iter().any(|e| protocol_error(&r, e)),
            "{name}: {r:?}"
        );
        let read = net_input_bytes(&mut observer).await - before - INFO_LEN;
        println!("{name}: the server read {read} bytes before closing the connection");
        // At most the unauthenticated buffer and one read more.
        let most = ServerConfig::default().unauth_max_query_buffer + (16 << 10);
        assert!(read <= most as u64, "{name}: the server read {read} bytes");
    }
    serves_others_authed(addr).await;
}

async fn serves_others_authed(addr: SocketAddr) {
    let mut c = authed_client(addr).await;
    assert_eq!(c.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));
}

#[tokio::test]
async fn after_auth_a_bulk_of_max_bulk_len_is_accepted() {
    let max = ServerConfig::default().max_bulk_len;
    let s = start(with_secret());
    let Client { mut r, mut w } = Client::connect(s.local_addr()).await;
    // AUTH and the largest SET in one write: the limits change between the two commands.
    let mut head = encode(&[b"AUTH", SECRET.as_bytes()]);
    head.extend(set_head(max));
    let writer = tokio::spawn(async move {
        let sent = stream(&mut w, &head, &vec![b'v'; 1 << 20], head.len() + max).await;
        w.write_all(b"\r\n").await.unwrap();
        (w, sent)
    });
    let mut c = {
        let ok = tokio::time::timeout(WAIT, read_reply(&mut r))
            .await
            .unwrap();
        assert_eq!(ok, Some(Reply::Simple("OK".into())));
        let ok = tokio::time::timeout(WAIT, read_reply(&mut r))
            .await
            .unwrap();
        assert_eq!(ok, Some(Reply::Simple("OK".into())));
        let (w, _) = writer.await.unwrap();
        Client { r, w }
    };
    let Reply::Bulk(Some(v)) = c.cmd(&[b"GET", b"k"]).await else {
        panic!("GET")
    };
    assert_eq!(v.len(), max);
    assert!(v.iter().all(|&b| b == b'v'));
}

#[tokio::test]
async fn a_connection_without_auth_is_closed_after_the_auth_timeout() {
    let timeout = Duration::from_millis(300);
    let s = start(ServerConfig {
        auth_timeout: timeout,
        ..with_secret()
    });
    let open = start(ServerConfig {
        auth_timeout: timeout,
        ..ServerConfig::default()
    });
    let addr = s.local_addr();
    let mut good = authed_client(addr).await;
    let mut no_secret = Client::connect(open.local_addr()).await;
    // Sends nothing: closed at the deadline (not long after), with a reason.
    let idle_started = Instant::now();
    let mut idle = Client::connect(addr).await;
    let r = idle.reply().await;
    assert!(
        is_err(
            &r,
            "ERR unauthenticated connection closed: no successful AUTH within 300 ms"
        ),
        "{r:?}"
    );
    idle.closed().await;
    let idle_closed = idle_started.elapsed();
    assert!(
        idle_closed >= timeout && idle_closed < timeout * 10,
        "{idle_closed:?}"
    );
    // Sends commands all along, and a wrong secret: closed too.
    let chatty_started = Instant::now();
    let (r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    let mut last = None;
    for i in 0.. {
        let cmd = if i % 2 == 0 {
            encode(&[b"GET", b"k"])
        } else {
            encode(&[b"AUTH", b"wrong"])
        };
        if w.write_all(&cmd).await.is_err() {
            break;
        }
        match tokio::time::timeout(WAIT, read_reply(&mut r))
            .await
            .unwrap()
        {
            Some(Reply::Error(e)) if e.starts_with("NOAUTH") || e.starts_with("WRONGPASS") => {}
            other => {
                last = other;
                break;
            }
        }
        assert!(chatty_started.elapsed() < WAIT, "never closed");
    }
    until_closed(&mut r).await;
    let chatty = chatty_started.elapsed();
    assert!(chatty >= timeout, "{chatty:?}");
    assert!(
        last.is_none()
            || is_err(
                last.as_ref().unwrap(),
                "ERR unauthenticated connection closed"
            ),
        "{last:?}"
    );
    println!(
        "idle closed after {idle_closed:?}, chatty after {chatty:?} (auth_timeout {timeout:?})"
    );
    // The authenticated client, and a client of a server without a secret, outlive the deadline.
    assert_eq!(good.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));
    assert_eq!(
        no_secret.cmd(&[b"PING"]).await,
        Reply::Simple("PONG".into())
    );
    await_clients(&mut good, 1).await;
}

/// The measurement: 40 unauthenticated clients each sending 32 MiB took the store process
/// to 1.28 GB. Now each is refused after a few KiB (or, if it sends only small commands and never
/// reads, held to its socket buffers until the auth timeout), while a client with the secret is
/// served throughout. Measured on a real `sc-store-server` process: its peak RSS (`VmHWM`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_unauthenticated_32_mib_senders_leave_the_store_process_small() {
    let proc =
        common::StoreProcess::start_with(0, &["--secret", SECRET, "--auth-timeout-ms", "2000"]);
    let addr: SocketAddr = proc.addr.parse().unwrap();
    let store = RespStore::connect(RespConfig::new([proc.addr.clone()]).secret(SECRET))
        .await
        .unwrap();
    store.set("warm", "up".into(), None).await.unwrap();
    let mut observer = authed_client(addr).await;
    let clients = connected_clients(&mut observer).await;
    let (baseline, _) = proc.rss();
    let read_before = net_input_bytes(&mut observer).await;

    let block = vec![b'x'; 64 << 10];
    let gets: Vec<u8> = encode(&[b"GET", b"k"]).repeat((64 << 10) / 20);
    let flood = (0..40).map(|i| {
        let (head, block) = match i % 4 {
            0 => (set_head(MIB_32), block.clone()),
            1 => (Vec::new(), request(10, 16 << 10)),
            2 => (Vec::new(), block.clone()),
            _ => (Vec::new(), gets.clone()),
        };
        tokio::spawn(async move {
            let (r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
            let mut r = BufReader::new(r);
            if i % 4 == 3 {
                // Small commands, replies never read: the server stops reading when its replies
                // cannot be written, and closes the connection at the auth timeout.
                let sent = tokio::time::timeout(WAIT, stream(&mut w, &head, &block, MIB_32))
                    .await
                    .expect("the server never closed the connection");
                until_closed(&mut r).await;
                (i, None, sent)
            } else {
                let writer =
                    tokio::spawn(async move { stream(&mut w, &head, &block, MIB_32).await });
                let first = tokio::time::timeout(WAIT, read_reply(&mut r))
                    .await
                    .unwrap();
                until_closed(&mut r).await;
                (i, first, writer.await.unwrap())
            }
        })
    });
    let flood = futures_util::future::join_all(flood);
    tokio::pin!(flood);
    // Meanwhile the client with the secret keeps working.
    let mut ops = 0u64;
    let mut slowest = Duration::ZERO;
    let results = loop {
        let t = Instant::now();
        let op = async {
            let v = bytes::Bytes::from(format!("v{ops}"));
            store.set("k", v.clone(), None).await.unwrap();
            assert_eq!(store.get("k").await.unwrap(), Some(v));
        };
        tokio::select! {
            results = &mut flood => break results,
            r = tokio::time::timeout(WAIT, op) => r.expect("the good client stalled"),
        }
        slowest = slowest.max(t.elapsed());
        ops += 1;
    };
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    await_clients(&mut observer, clients).await;
    let read = net_input_bytes(&mut observer).await - read_before - INFO_LEN;
    let (rss, peak) = proc.rss();
    println!(
        "40 unauthenticated clients: {} MiB sent, {} KiB read by the server; store RSS {} KiB \
         before, peak {} KiB, {} KiB after; the client with the secret did {ops} SET+GET \
         meanwhile, slowest {slowest:?}",
        results.iter().map(|r| r.2).sum::<usize>() >> 20,
        read >> 10,
        baseline >> 10,
        peak >> 10,
        rss >> 10
    );
    for (i, first, _) in results {
        let expected = match i % 4 {
            0 => &["unauthenticated bulk length"][..],
            1 => &["unauthenticated request too large"][..],
            2 => &[
                "unauthenticated request too large",
                "too big inline request",
            ][..],
            _ => &[][..],
        };
        // The quiet-reader clients (no expected error) are checked above: closed within WAIT.
        if !expected.is_empty() {
            assert!(
                expected.iter().any(|e| protocol_error(&first, e)),
                "client {i}: {first:?}"
            );
        }
    }
    assert!(ops > 0);
    // Before the limits the peak grew by hundreds of MiB (254 MiB here, with the authenticated
    // limits for everyone); now by about 2 MiB: 40 buffers of at most 64 KiB plus replies.
    assert!(
        peak < baseline + (16 << 20),
        "peak RSS {} MiB over a baseline of {} MiB",
        peak >> 20,
        baseline >> 20
    );
}
