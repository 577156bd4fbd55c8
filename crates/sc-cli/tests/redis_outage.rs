//! A store outage under load, with two `socketcluster serve` processes sharing channels and
//! sessions through it: they keep serving what needs no store (or, on a Redis Cluster, only the
//! shards that are up), answer what needs the missing store with a clear error meanwhile,
//! re-subscribe by themselves, tell every subscriber of an interrupted channel with a `#gap`
//! notice, and deliver in order again.
//!
//! - One Redis, stopped for 10 s and started again on the same port.
//! - A Redis Cluster of three masters, one of them stopped for 10 s and started again: only the
//!   channels and sessions of its shard are interrupted; a channel of another shard goes on
//!   being delivered, in order and without a `#gap`.
//!
//! The tests start their own `redis-server` processes on free ports (`sc_tests::RedisProcess`
//! and `sc_tests::RedisCluster`; the Debian package, CI installs it), so the shared one at 6379
//! is not disturbed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sc_tests::{RedisCluster, RedisProcess};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::{JoinHandle, block_in_place};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

const BIN: &str = env!("CARGO_BIN_EXE_socketcluster");
const WAIT: Duration = Duration::from_secs(10);
const OUTAGE: Duration = Duration::from_secs(10);
/// The server's `ack_timeout_ms` (its default): what needs the store is answered within it.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
const SUBSCRIBERS: usize = 20;
/// Publishes each subscriber of an interrupted channel must get in order after its `#gap`.
const AFTER_GAP: usize = 20;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn serve(store: &str) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--port", "0", "--store", store])
        .env_remove("SC_AUTH_KEY")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = line
        .strip_prefix("socketcluster listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_owned();
    (child, url)
}

async fn connect(url: &str) -> Ws {
    let (mut ws, _) = ClientBuilder::new()
        .uri(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    send(
        &mut ws,
        json!({"event":"#handshake","data":{"authToken":null},"cid":1}),
    )
    .await;
    assert_eq!(next(&mut ws).await["rid"], 1);
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next JSON frame; pings are answered and skipped.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(OUTAGE + 2 * WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .unwrap()
            .unwrap();
        let Some(t) = m.as_text() else { continue };
        if t.is_empty() {
            ws.send(Message::text(String::new())).await.unwrap();
            continue;
        }
        return serde_json::from_str(t).unwrap();
    }
}

async fn invoke(ws: &mut Ws, event: &str, data: Value, cid: u64) -> Value {
    send(ws, json!({"event": event, "data": data, "cid": cid})).await;
    loop {
        let v = next(ws).await;
        if v["rid"] == cid {
            return v;
        }
    }
}

/// `SUBSCRIBERS` sockets subscribed to `channel`, connected to `urls` in turn.
async fn subscribe(urls: &[&str], channel: &str) -> Vec<Ws> {
    let mut subs = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut ws = connect(urls[i % urls.len()]).await;
        let r = invoke(&mut ws, "#subscribe", json!({"channel": channel}), 2).await;
        assert!(r.get("error").is_none(), "{r}");
        subs.push(ws);
    }
    subs
}

/// The load: from one socket on `url`, a publish `{"n": n}` on each of `channels` every 5 ms,
/// `n` counting up, for the whole test.
fn publisher(url: &str, channels: &[&str]) -> JoinHandle<()> {
    let url = url.to_owned();
    let channels: Vec<String> = channels.iter().map(|&c| c.to_owned()).collect();
    tokio::spawn(async move {
        let mut ws = connect(&url).await;
        // Bounded: 20,000 rounds (100 s) is more than the test takes.
        for n in 0u64..20_000 {
            for channel in &channels {
                send(
                    &mut ws,
                    json!({"event": "#publish", "data": {"channel": channel, "data": {"n": n}}}),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// What one subscriber received, with when.
#[derive(Default)]
struct Seen {
    /// The `n` of each publish of the channel.
    publishes: Vec<(Instant, u64)>,
    /// The data of each `#gap` notice.
    gaps: Vec<(Instant, Value)>,
}

impl Seen {
    fn publishes_after_gap(&self) -> usize {
        self.gaps.first().map_or(0, |(at, _)| {
            self.publishes.iter().filter(|(t, _)| t > at).count()
        })
    }

    /// Every publish after the one before it: nothing twice, nothing out of order.
    fn assert_in_order(&self, channel: &str) {
        for w in self.publishes.windows(2) {
            assert!(
                w[1].1 > w[0].1,
                "{channel}: out of order: {} after {}",
                w[1].1,
                w[0].1
            );
        }
    }
}

/// Records what each of `subs` receives on `channel`, once each has received a publish (the
/// delivery before the outage): a task per subscriber, which ends `AFTER_GAP` publishes after
/// its first `#gap`, or after the next frame once `stop` is set.
async fn record(subs: Vec<Ws>, channel: &str, stop: &Arc<AtomicBool>) -> Vec<JoinHandle<Seen>> {
    let mut tasks = Vec::new();
    for mut ws in subs {
        let first = loop {
            let v = next(&mut ws).await;
            if v["event"] == "#publish" {
                break v;
            }
        };
        assert_eq!(first["data"]["channel"], channel, "{first}");
        let mut seen = Seen::default();
        seen.publishes
            .push((Instant::now(), first["data"]["data"]["n"].as_u64().unwrap()));
        let channel = channel.to_owned();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && seen.publishes_after_gap() < AFTER_GAP {
                let v = next(&mut ws).await;
                if v["event"] == "#gap" {
                    seen.gaps.push((Instant::now(), v["data"].clone()));
                } else if v["event"] == "#publish" {
                    assert_eq!(v["data"]["channel"], *channel, "{v}");
                    let n = v["data"]["data"]["n"].as_u64().unwrap();
                    seen.publishes.push((Instant::now(), n));
                }
            }
            seen
        }));
    }
    tasks
}

async fn join(tasks: Vec<JoinHandle<Seen>>) -> Vec<Seen> {
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen
}

/// Every subscriber of an interrupted `channel`: one `#gap` notice for the channel, once the
/// store was `started` again, then `AFTER_GAP` publishes, everything in order. Prints when the
/// notices came.
fn assert_gap_then_order(seen: &[Seen], channel: &str, started: Instant) {
    let mut gap_ms = Vec::new();
    for s in seen {
        s.assert_in_order(channel);
        assert_eq!(s.gaps.len(), 1, "{channel}: #gap notices {:?}", s.gaps);
        let (at, data) = &s.gaps[0];
        assert_eq!(*data, json!({"channel": channel}));
        assert!(*at > started, "{channel}: #gap before the store was back");
        assert!(s.publishes_after_gap() >= AFTER_GAP, "{channel}");
        gap_ms.push(at.duration_since(started).as_millis());
    }
    gap_ms.sort_unstable();
    println!(
        "{channel}: {} subscribers got #gap, {} to {} ms after the store was started again, then publishes in order",
        gap_ms.len(),
        gap_ms[0],
        gap_ms[gap_ms.len() - 1]
    );
}

/// Every subscriber of `channel`, which the outage did not concern: no `#gap`, everything in
/// order, and publishes all along the outage (from `down` until the store was `started` again).
/// Prints the fewest received meanwhile and the longest pause between two.
fn assert_undisturbed(seen: &[Seen], channel: &str, down: Instant, started: Instant) {
    let mut fewest = usize::MAX;
    let mut longest = Duration::ZERO;
    for s in seen {
        s.assert_in_order(channel);
        assert!(s.gaps.is_empty(), "{channel}: #gap notices {:?}", s.gaps);
        let during: Vec<Instant> = s
            .publishes
            .iter()
            .map(|&(t, _)| t)
            .filter(|t| (down..started).contains(t))
            .collect();
        fewest = fewest.min(during.len());
        let mut prev = down;
        for t in during.into_iter().chain([started]) {
            longest = longest.max(t.duration_since(prev));
            prev = t;
        }
    }
    println!(
        "{channel}: {} subscribers, no #gap, each got at least {fewest} publishes in order during the outage, longest pause {} ms",
        seen.len(),
        longest.as_millis()
    );
    assert!(
        longest < Duration::from_secs(1),
        "{channel}: delivery stalled for {longest:?} during the outage"
    );
}

/// A socket of its own session (without the session layer every socket is one), and its id.
async fn session(url: &str) -> (Ws, String) {
    let mut ws = connect(url).await;
    let r = invoke(&mut ws, "sessionId", Value::Null, 2).await;
    let id = r["data"].as_str().unwrap().to_owned();
    let r = invoke(&mut ws, "sessionSet", json!({"key": "k", "value": 1}), 3).await;
    assert!(r.get("error").is_none(), "{r}");
    (ws, id)
}

/// During the outage: `sessionSet` on a session whose data is in the missing store fails with
/// a clear error within the ack timeout; what needs no store (`sessionId`), or only a store
/// that is up (`live`), is served as before.
async fn assert_served_meanwhile(dead: &mut Ws, live: Option<&mut Ws>) {
    let t = Instant::now();
    let r = invoke(dead, "sessionSet", json!({"key": "k", "value": 2}), 4).await;
    let elapsed = t.elapsed();
    let err = r
        .get("error")
        .unwrap_or_else(|| panic!("sessionSet succeeded without its store: {r}"));
    println!(
        "sessionSet during the outage: error after {} ms: {err}",
        elapsed.as_millis()
    );
    assert!(
        elapsed < ACK_TIMEOUT,
        "sessionSet answered after {elapsed:?}"
    );
    assert!(err.to_string().contains("store"), "{err}");
    let r = invoke(dead, "sessionId", Value::Null, 5).await;
    assert!(r["data"].is_string(), "{r}");
    if let Some(live) = live {
        let t = Instant::now();
        let r = invoke(live, "sessionSet", json!({"key": "k", "value": 2}), 4).await;
        assert!(r.get("error").is_none(), "{r}");
        println!(
            "sessionSet on another shard during the outage: ok after {} ms",
            t.elapsed().as_millis()
        );
    }
}

/// The store serves `ws`'s session again (its command connection may need a moment).
async fn assert_store_back(ws: &mut Ws) {
    let deadline = Instant::now() + WAIT;
    let mut cid = 10;
    loop {
        let r = invoke(ws, "sessionGet", json!({"key": "k"}), cid).await;
        if r.get("error").is_none() {
            println!("sessionGet after the outage: {r}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store did not come back: {r}"
        );
        cid += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_under_load_gives_errors_then_a_gap_then_delivery_again() {
    let mut redis = block_in_place(|| RedisProcess::start(0));
    let store = format!("redis://{}", redis.addr());
    let (_a, url_a) = serve(&store).await;
    let (_b, url_b) = serve(&store).await;

    let subs = subscribe(&[&url_a], "outage").await;
    let (mut tab, _) = session(&url_a).await;
    let publisher = publisher(&url_b, &["outage"]);
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = record(subs, "outage", &stop).await;

    block_in_place(|| redis.kill());
    let down = Instant::now();
    assert_served_meanwhile(&mut tab, None).await;

    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    let started = Instant::now();
    block_in_place(|| redis.restart());
    println!(
        "redis down for {} ms; its start took {} ms (until it accepted connections)",
        started.duration_since(down).as_millis(),
        started.elapsed().as_millis()
    );

    let seen = join(tasks).await;
    assert_gap_then_order(&seen, "outage", started);
    assert_store_back(&mut tab).await;
    publisher.abort();
}

/// The index of the master serving `name`'s hash slot, as the cluster says it
/// (`CLUSTER KEYSLOT`, then the slot ranges of `CLUSTER NODES`).
fn master_of(c: &RedisCluster, name: &str) -> usize {
    let port = c.ports[0];
    let slot: u16 = RedisCluster::cli(port, &["CLUSTER", "KEYSLOT", name])
        .trim()
        .parse()
        .unwrap();
    let nodes = RedisCluster::cli(port, &["CLUSTER", "NODES"]);
    nodes
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // id addr flags master ping pong epoch link slot…; `[…]` are slots in migration.
            let serves = f.len() > 8
                && f[2].contains("master")
                && f[8..].iter().filter(|r| !r.starts_with('[')).any(|r| {
                    let (lo, hi) = r.split_once('-').unwrap_or((r, r));
                    (lo.parse().unwrap()..=hi.parse().unwrap()).contains(&slot)
                });
            serves.then(|| c.index_of(f[1].split('@').next().unwrap()))
        })
        .unwrap_or_else(|| panic!("no master serves slot {slot}:\n{nodes}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_shard_outage_interrupts_only_its_channels_and_sessions() {
    let mut cluster = block_in_place(RedisCluster::start);
    let store = format!("redis://{}", cluster.seed());
    let (_a, url_a) = serve(&store).await;
    let (_b, url_b) = serve(&store).await;

    // Channel A on the master that is stopped, channel B on another one, but with the same
    // hash of its name modulo the workers' 16 publish lanes: were the lanes picked by that hash
    // alone, B's publishes would queue behind A's failing ones for the whole outage (the workers
    // split the lanes between the store's nodes first).
    let ch_a = "shard-a";
    let dead = master_of(&cluster, ch_a);
    let lane = |name: &str| {
        use std::hash::BuildHasher;
        foldhash::fast::FixedState::default().hash_one(name) % 16
    };
    let ch_b = (0..)
        .map(|n| format!("shard-b{n}"))
        .find(|name| lane(name) == lane(ch_a) && master_of(&cluster, name) != dead)
        .unwrap();
    let ch_b = ch_b.as_str();
    // A session whose data (`sc:session:{<id>}`) is on the stopped master, and one elsewhere:
    // sessions get random ids, so sockets are opened until both kinds are there.
    let mut on_dead = None;
    let mut on_live = None;
    for _ in 0..60 {
        let (ws, id) = session(&url_a).await;
        let on = master_of(&cluster, &format!("sc:session:{{{id}}}"));
        let slot = if on == dead {
            &mut on_dead
        } else {
            &mut on_live
        };
        slot.get_or_insert(ws);
        if on_dead.is_some() && on_live.is_some() {
            break;
        }
    }
    let (mut tab_dead, mut tab_live) = (on_dead.unwrap(), on_live.unwrap());
    println!(
        "masters on ports {:?}; stopping {} (the seed is {}): {ch_a} is on it, {ch_b} is not",
        cluster.ports,
        cluster.ports[dead],
        cluster.seed()
    );

    // Subscribers on both processes; the publisher on one of them.
    let subs_a = subscribe(&[&url_a, &url_b], ch_a).await;
    let subs_b = subscribe(&[&url_a, &url_b], ch_b).await;
    let publisher = publisher(&url_b, &[ch_a, ch_b]);
    let stop = Arc::new(AtomicBool::new(false));
    let tasks_a = record(subs_a, ch_a, &stop).await;
    let tasks_b = record(subs_b, ch_b, &stop).await;

    block_in_place(|| cluster.kill(dead));
    let down = Instant::now();
    assert_served_meanwhile(&mut tab_dead, Some(&mut tab_live)).await;

    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    let started = Instant::now();
    block_in_place(|| cluster.revive(dead));
    println!(
        "master down for {} ms; its start took {} ms (until the cluster said ok)",
        started.duration_since(down).as_millis(),
        started.elapsed().as_millis()
    );

    let seen_a = join(tasks_a).await;
    stop.store(true, Ordering::Relaxed);
    let seen_b = join(tasks_b).await;
    assert_gap_then_order(&seen_a, ch_a, started);
    assert_undisturbed(&seen_b, ch_b, down, started);
    assert_store_back(&mut tab_dead).await;
    publisher.abort();
}
