//! Bad input to the store server: each gets an error reply or a closed connection, the server
//! keeps serving other clients, and its memory stays bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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
