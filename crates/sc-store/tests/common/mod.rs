//! Fixtures and the behaviours every backend must show.

#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sc_store::{Error, KeyTtl, RespConfig, RespStore, Store, StoreEvent, Subscription};

/// How long any awaited event may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A key prefix unique to this test and this run, so runs against a shared Redis never collide.
pub fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sc-store-test:{}:{nanos}:{test}:", std::process::id())
}

/// A real store server process (the crate's `sc-store-server` binary).
pub struct StoreProcess {
    child: Option<Child>,
    pub addr: String,
}

impl StoreProcess {
    /// Starts a store process on `port` (0 picks a free one).
    pub fn start(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// Starts a store process on `port` with more flags (`--secret S`, `--auth-timeout-ms MS`).
    pub fn start_with(port: u16, flags: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sc-store-server"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sc-store-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        StoreProcess {
            child: Some(child),
            addr,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The process's resident memory now and its peak so far (`VmRSS`, `VmHWM`), in bytes.
    pub fn rss(&self) -> (u64, u64) {
        let pid = self.child.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> u64 {
            let kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .unwrap();
            kb * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Kills the process and starts a new one on the same port.
    pub fn restart(&mut self) {
        let port = self.port();
        self.kill();
        *self = StoreProcess::start(port);
    }
}

impl Drop for StoreProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub use sc_tests::{RedisCluster, RedisProcess};

/// A client of the redis-server `r` the test started.
pub async fn client_of(r: &RedisProcess) -> RespStore {
    RespStore::connect(RespConfig::new([r.addr()]))
        .await
        .unwrap()
}

/// A client of `cluster`, given one master.
pub async fn cluster_client(cluster: &RedisCluster) -> RespStore {
    RespStore::connect(RespConfig::new([cluster.seed()]))
        .await
        .unwrap()
}

/// A cluster of three real store processes and a client sharding over them.
pub struct Cluster {
    pub procs: Vec<StoreProcess>,
    pub store: RespStore,
}

impl Cluster {
    pub async fn start() -> Self {
        let procs: Vec<StoreProcess> = (0..3).map(|_| StoreProcess::start(0)).collect();
        let store = RespStore::connect(RespConfig::new(procs.iter().map(|p| p.addr.clone())))
            .await
            .unwrap();
        Cluster { procs, store }
    }

    /// Another client of the same processes.
    pub async fn client(&self) -> RespStore {
        RespStore::connect(RespConfig::new(self.procs.iter().map(|p| p.addr.clone())))
            .await
            .unwrap()
    }
}

pub async fn redis() -> RespStore {
    RespStore::connect(RespConfig::new(["127.0.0.1:6379"]))
        .await
        .expect("Redis must listen at 127.0.0.1:6379 (scripts/test starts it)")
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub async fn next(sub: &mut Subscription) -> StoreEvent {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("subscription ended")
}

// ---------------------------------------------------------------- behaviours

pub async fn values(s: &dyn Store, p: &str) {
    let k = format!("{p}k");
    assert_eq!(s.get(&k).await.unwrap(), None);
    assert!(!s.has(&k).await.unwrap());
    s.set(&k, b("v1"), None).await.unwrap();
    assert_eq!(s.get(&k).await.unwrap(), Some(b("v1")));
    s.set(&k, b("v2"), None).await.unwrap();
    assert_eq!(s.get(&k).await.unwrap(), Some(b("v2")));
    assert!(s.has(&k).await.unwrap());
    let binary = Bytes::from_static(&[0, 255, 13, 10, 36]);
    s.set(&k, binary.clone(), None).await.unwrap();
    assert_eq!(s.get(&k).await.unwrap(), Some(binary));
    assert!(s.remove(&k).await.unwrap());
    assert!(!s.remove(&k).await.unwrap());
    assert_eq!(s.get(&k).await.unwrap(), None);
}

pub async fn ttl_expiry(s: &dyn Store, p: &str) {
    let k = format!("{p}ttl");
    s.set(&k, b("v"), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    match s.ttl(&k).await.unwrap() {
        KeyTtl::Expires(d) => assert!(d <= Duration::from_secs(1) && d > Duration::ZERO),
        other => panic!("{other:?}"),
    }
    // Await the expiry by polling, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.has(&k).await.unwrap() {
        assert!(Instant::now() < deadline, "key did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.get(&k).await.unwrap(), None);
    assert_eq!(s.ttl(&k).await.unwrap(), KeyTtl::Missing);

    let k2 = format!("{p}ttl2");
    assert!(!s.expire(&k2, Duration::from_secs(1)).await.unwrap());
    s.set(&k2, b("v"), None).await.unwrap();
    assert_eq!(s.ttl(&k2).await.unwrap(), KeyTtl::Persistent);
    assert!(!s.persist(&k2).await.unwrap());
    assert!(s.expire(&k2, Duration::from_secs(60)).await.unwrap());
    assert!(matches!(s.ttl(&k2).await.unwrap(), KeyTtl::Expires(_)));
    assert!(s.persist(&k2).await.unwrap());
    assert_eq!(s.ttl(&k2).await.unwrap(), KeyTtl::Persistent);
    // A set replaces the TTL.
    s.set(&k2, b("v"), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    s.set(&k2, b("v"), None).await.unwrap();
    assert_eq!(s.ttl(&k2).await.unwrap(), KeyTtl::Persistent);
    // A map expires too.
    let k3 = format!("{p}ttl3");
    s.map_set(&k3, "f", b("v")).await.unwrap();
    assert!(s.expire(&k3, Duration::from_millis(200)).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.has(&k3).await.unwrap() {
        assert!(Instant::now() < deadline, "map did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(
        s.expire(&k3, Duration::ZERO).await,
        Err(Error::InvalidArgument(_))
    ));
    s.remove(&k2).await.unwrap();
}

pub async fn maps(s: &dyn Store, p: &str) {
    let k = format!("{p}map");
    assert!(s.map_set(&k, "a", b("1")).await.unwrap());
    assert!(s.map_set(&k, "b", b("2")).await.unwrap());
    assert!(!s.map_set(&k, "a", b("3")).await.unwrap());
    assert_eq!(s.map_get(&k, "a").await.unwrap(), Some(b("3")));
    assert_eq!(s.map_get(&k, "zz").await.unwrap(), None);
    let mut all = s.map_get_all(&k).await.unwrap();
    all.sort();
    assert_eq!(
        all,
        vec![("a".to_owned(), b("3")), ("b".to_owned(), b("2"))]
    );
    assert!(matches!(s.get(&k).await, Err(Error::WrongType)));
    assert!(matches!(s.list_count(&k).await, Err(Error::WrongType)));
    assert!(s.map_remove(&k, "a").await.unwrap());
    assert!(!s.map_remove(&k, "a").await.unwrap());
    assert!(s.map_remove(&k, "b").await.unwrap());
    assert!(!s.has(&k).await.unwrap(), "an emptied map removes its key");
    assert!(s.map_get_all(&k).await.unwrap().is_empty());
    let v = format!("{p}plain");
    s.set(&v, b("x"), None).await.unwrap();
    assert!(matches!(
        s.map_set(&v, "f", b("1")).await,
        Err(Error::WrongType)
    ));
    s.remove(&v).await.unwrap();
}

pub async fn lists(s: &dyn Store, p: &str) {
    let k = format!("{p}list");
    assert_eq!(s.list_count(&k).await.unwrap(), 0);
    assert_eq!(s.list_add(&k, b("a")).await.unwrap(), 0);
    assert_eq!(s.list_add(&k, b("b")).await.unwrap(), 1);
    assert_eq!(
        s.list_concat(&k, vec![b("c"), b("d"), b("e")])
            .await
            .unwrap(),
        5
    );
    assert_eq!(s.list_count(&k).await.unwrap(), 5);
    assert_eq!(s.list_range(&k, 1, 2).await.unwrap(), vec![b("b"), b("c")]);
    assert_eq!(
        s.list_range(&k, -2, -1).await.unwrap(),
        vec![b("d"), b("e")]
    );
    assert_eq!(s.list_range(&k, 10, 20).await.unwrap(), Vec::<Bytes>::new());
    assert_eq!(s.list_pop(&k).await.unwrap(), Some(b("e")));
    let removed = s
        .list_splice(&k, 1, 2, vec![b("x"), b("y"), b("z")])
        .await
        .unwrap();
    assert_eq!(removed, vec![b("b"), b("c")]);
    assert_eq!(
        s.list_range(&k, 0, -1).await.unwrap(),
        vec![b("a"), b("x"), b("y"), b("z"), b("d")]
    );
    assert!(s.expire(&k, Duration::from_secs(60)).await.unwrap());
    s.list_splice(&k, 0, 1, vec![]).await.unwrap();
    assert!(
        matches!(s.ttl(&k).await.unwrap(), KeyTtl::Expires(_)),
        "splice keeps the TTL"
    );
    let removed = s.list_splice(&k, 0, 100, vec![]).await.unwrap();
    assert_eq!(removed.len(), 4);
    assert!(!s.has(&k).await.unwrap(), "an emptied list removes its key");
    assert_eq!(s.list_pop(&k).await.unwrap(), None);
    let v = format!("{p}plain");
    s.set(&v, b("x"), None).await.unwrap();
    assert!(matches!(
        s.list_add(&v, b("1")).await,
        Err(Error::WrongType)
    ));
    s.remove(&v).await.unwrap();
}

/// Messages on one channel arrive in publication order; another channel is independent.
pub async fn pubsub_order(subscriber: &dyn Store, publisher: &dyn Store, p: &str) {
    let ch = format!("{p}chan");
    let other = format!("{p}other");
    let mut sub = subscriber.subscribe(&ch).await.unwrap();
    let mut sub2 = subscriber.subscribe(&other).await.unwrap();
    assert_eq!(sub.channel(), ch);
    for i in 0..500 {
        publisher.publish(&ch, b(&i.to_string())).await.unwrap();
    }
    publisher.publish(&other, b("o")).await.unwrap();
    for i in 0..500 {
        assert_eq!(next(&mut sub).await, StoreEvent::Message(b(&i.to_string())));
    }
    assert_eq!(next(&mut sub2).await, StoreEvent::Message(b("o")));

    // Unsubscribe ends the stream; a new subscription works again.
    subscriber.unsubscribe(&ch).await.unwrap();
    assert_eq!(tokio::time::timeout(WAIT, sub.recv()).await.unwrap(), None);
    let mut sub = subscriber.subscribe(&ch).await.unwrap();
    publisher.publish(&ch, b("again")).await.unwrap();
    assert_eq!(next(&mut sub).await, StoreEvent::Message(b("again")));

    // Dropping a subscription and subscribing again keeps delivery working.
    drop(sub);
    let mut sub = subscriber.subscribe(&ch).await.unwrap();
    publisher.publish(&ch, b("after drop")).await.unwrap();
    assert_eq!(next(&mut sub).await, StoreEvent::Message(b("after drop")));
}

/// 1,000 subscribers on one channel each receive every message, in order.
pub async fn thousand_subscribers(subscriber: &dyn Store, publisher: &dyn Store, p: &str) {
    let ch = format!("{p}crowd");
    let mut subs = Vec::with_capacity(1000);
    for _ in 0..1000 {
        subs.push(subscriber.subscribe(&ch).await.unwrap());
    }
    for i in 0..3 {
        publisher.publish(&ch, b(&format!("m{i}"))).await.unwrap();
    }
    for sub in &mut subs {
        for i in 0..3 {
            assert_eq!(next(sub).await, StoreEvent::Message(b(&format!("m{i}"))));
        }
    }
}

/// A subscriber that falls behind gets a Gap, then later messages.
pub async fn lagging_subscriber_gets_gap(s: &dyn Store, capacity: usize, p: &str) {
    let ch = format!("{p}lag");
    let mut sub = s.subscribe(&ch).await.unwrap();
    let mut probe = s.subscribe(&ch).await.unwrap();
    let n = capacity * 3;
    for i in 0..n {
        s.publish(&ch, b(&i.to_string())).await.unwrap();
    }
    s.publish(&ch, b("end")).await.unwrap();
    // The probe (lagging too) proves every message reached this process before `sub` is read.
    while next(&mut probe).await != StoreEvent::Message(b("end")) {}
    assert_eq!(next(&mut sub).await, StoreEvent::Gap);
    let StoreEvent::Message(first) = next(&mut sub).await else {
        panic!("expected a message after the gap")
    };
    let first = std::str::from_utf8(&first).unwrap();
    assert!(
        first == "end" || first.parse::<usize>().unwrap() >= n - capacity,
        "{first}"
    );
}

/// After the store owning a channel is killed and restarted, the subscriber gets a Gap, and
/// messages published afterwards reach it.
pub async fn gap_after_restart(
    sub_store: &dyn Store,
    pub_store: &dyn Store,
    ch: &str,
    restart: impl FnOnce(),
) {
    let mut sub = sub_store.subscribe(ch).await.unwrap();
    pub_store.publish(ch, b("before")).await.unwrap();
    assert_eq!(next(&mut sub).await, StoreEvent::Message(b("before")));
    restart();
    assert_eq!(next(&mut sub).await, StoreEvent::Gap);
    // The publisher's command connection reconnects in the background; retry until it is back.
    let deadline = Instant::now() + WAIT;
    loop {
        match pub_store.publish(ch, b("after")).await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "publisher did not reconnect: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(next(&mut sub).await, StoreEvent::Message(b("after")));
}

/// Dropping the last handle of a store ends its subscription streams.
pub async fn ends_when_dropped(s: Arc<dyn Store>, p: &str) {
    let mut sub = s.subscribe(&format!("{p}end")).await.unwrap();
    drop(s);
    assert_eq!(tokio::time::timeout(WAIT, sub.recv()).await.unwrap(), None);
}

/// `Arc<dyn Store>` is what workers hold.
pub fn as_dyn<S: Store>(s: S) -> Arc<dyn Store> {
    Arc::new(s)
}

/// Channel history: recorded publishes get gap-free offsets in one epoch and reach subscribers
/// in envelopes carrying them; reads after an offset give what followed, and say when the
/// history no longer covers it; publishers on two handles at once still get distinct, gap-free
/// offsets that subscribers see in order.
pub async fn history(s: &dyn Store, other: &dyn Store, p: &str) {
    use sc_store::HistoryLimits;
    use sc_store::history::decode_envelope;
    let limits = HistoryLimits {
        max_len: 3,
        max_age: Duration::from_secs(60),
    };
    let ch = format!("{p}hist");
    let mut sub = other.subscribe(&ch).await.unwrap();
    let mut positions = Vec::new();
    for i in 1..=5 {
        positions.push(
            s.publish_recorded(&ch, b(&format!("m{i}")), limits)
                .await
                .unwrap(),
        );
    }
    let epoch = positions[0].epoch.clone();
    assert!(!epoch.is_empty());
    assert_eq!(
        positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(positions.iter().all(|p| p.epoch == epoch));
    for i in 1..=5u64 {
        let StoreEvent::Message(m) = next(&mut sub).await else {
            panic!("expected a message")
        };
        let (pos, msg) = decode_envelope(&m).expect("an envelope");
        assert_eq!((pos.offset, pos.epoch.as_str()), (i, epoch.as_str()));
        assert_eq!(msg, b(&format!("m{i}")));
    }

    let h = other.history(&ch, Some(3), 100, limits).await.unwrap();
    assert_eq!(
        (h.epoch.as_str(), h.latest, h.complete),
        (epoch.as_str(), 5, true)
    );
    assert_eq!(h.records, vec![(4, b("m4")), (5, b("m5"))]);
    let h = other.history(&ch, Some(1), 100, limits).await.unwrap();
    assert!(!h.complete, "1 and 2 are no longer kept");
    assert_eq!(h.records.first().map(|r| r.0), Some(3));
    let h = other.history(&ch, None, 100, limits).await.unwrap();
    assert!(h.complete);
    assert_eq!(h.records.len(), 3);
    assert_eq!(
        other
            .history(&ch, Some(2), 1, limits)
            .await
            .unwrap()
            .records,
        vec![(3, b("m3"))]
    );
    assert!(
        other
            .history(&ch, Some(5), 100, limits)
            .await
            .unwrap()
            .complete
    );
    assert!(
        !other
            .history(&ch, Some(9), 100, limits)
            .await
            .unwrap()
            .complete
    );

    let none = other
        .history(&format!("{p}none"), Some(2), 100, limits)
        .await
        .unwrap();
    assert_eq!((none.latest, none.complete), (0, false));
    let empty = other
        .history(&format!("{p}none"), None, 100, limits)
        .await
        .unwrap();
    assert!(empty.complete);
    // The epoch a read of an empty history answered is the one the next publish continues, so
    // a reader that saw nothing yet can resume from offset 0 of it.
    let first = s
        .publish_recorded(&format!("{p}none"), b("n1"), limits)
        .await
        .unwrap();
    assert_eq!((first.offset, &first.epoch), (1, &empty.epoch));
    let h = other
        .history(&format!("{p}none"), Some(0), 100, limits)
        .await
        .unwrap();
    assert!(h.complete);
    assert_eq!(h.records, vec![(1, b("n1"))]);

    // Two publishers at once.
    let wide = HistoryLimits {
        max_len: 1000,
        max_age: Duration::from_secs(60),
    };
    let (a, c) = tokio::join!(
        async {
            let mut v = Vec::new();
            for i in 0..50 {
                v.push(
                    s.publish_recorded(&ch, b(&format!("a{i}")), wide)
                        .await
                        .unwrap()
                        .offset,
                );
            }
            v
        },
        async {
            let mut v = Vec::new();
            for i in 0..50 {
                v.push(
                    other
                        .publish_recorded(&ch, b(&format!("c{i}")), wide)
                        .await
                        .unwrap()
                        .offset,
                );
            }
            v
        }
    );
    let mut all: Vec<u64> = a.iter().chain(&c).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (6..=105).collect::<Vec<u64>>());
    for want in 6..=105u64 {
        let StoreEvent::Message(m) = next(&mut sub).await else {
            panic!("expected a message")
        };
        assert_eq!(
            decode_envelope(&m).unwrap().0.offset,
            want,
            "in offset order"
        );
    }

    // Many at once (one pipeline per node over the network), two channels interleaved: each
    // channel's offsets continue in order, and subscribers see them so.
    let ch2 = format!("{p}hist2");
    let mut sub2 = other.subscribe(&ch2).await.unwrap();
    let batch: Vec<(std::sync::Arc<str>, bytes::Bytes, HistoryLimits)> = (0..20)
        .map(|i| {
            let c = if i % 2 == 0 { &ch } else { &ch2 };
            (std::sync::Arc::from(c.as_str()), b(&format!("m{i}")), wide)
        })
        .collect();
    s.publish_recorded_many(&batch).await.unwrap();
    for (want, i) in (106..=115u64).zip((0..20).step_by(2)) {
        let StoreEvent::Message(m) = next(&mut sub).await else {
            panic!("expected a message")
        };
        let (pos, msg) = decode_envelope(&m).unwrap();
        assert_eq!((pos.offset, msg), (want, b(&format!("m{i}"))));
    }
    for (want, i) in (1..=10u64).zip((1..20).step_by(2)) {
        let StoreEvent::Message(m) = next(&mut sub2).await else {
            panic!("expected a message")
        };
        let (pos, msg) = decode_envelope(&m).unwrap();
        assert_eq!((pos.offset, msg), (want, b(&format!("m{i}"))));
    }
    let h = other.history(&ch2, None, 100, wide).await.unwrap();
    assert_eq!(h.latest, 10);
}

/// Channel history bounded by age: a message older than `max_age` is no longer kept (a read
/// from before it says the history is not complete), a younger one is.
pub async fn history_age(s: &dyn Store, p: &str) {
    use sc_store::HistoryLimits;
    let limits = HistoryLimits {
        max_len: 100,
        max_age: Duration::from_millis(1000),
    };
    let ch = format!("{p}aged");
    let start = Instant::now();
    let a = s.publish_recorded(&ch, b("a"), limits).await.unwrap();
    // What is tested is the passing of time itself: `a` must grow older than max_age while `b`
    // stays younger (and the history, renewed by `b`, stays).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b_pos = s.publish_recorded(&ch, b("b"), limits).await.unwrap();
    assert_eq!((b_pos.offset, &b_pos.epoch), (a.offset + 1, &a.epoch));
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(start.elapsed())).await;
    let h = s.history(&ch, Some(0), 10, limits).await.unwrap();
    assert_eq!(h.epoch, a.epoch, "the history itself is still kept");
    assert_eq!(
        h.records,
        vec![(b_pos.offset, b("b"))],
        "only the young message"
    );
    assert!(!h.complete, "the message after 0 is no longer kept");
    let h = s.history(&ch, Some(a.offset), 10, limits).await.unwrap();
    assert!(h.complete, "everything after `a` is kept");
}
