//! Two servers sharing channels through a store: Redis at 127.0.0.1:6379 (started by
//! `scripts/test`; the test fails without it) and a cluster of two store server processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Client, TestServer, WAIT, start};
use sc_worker::ScServer;
use sc_worker::sc_store::server::{ServerConfig, spawn};
use sc_worker::sc_store::{MemoryStore, RespConfig, RespStore, Store};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MESSAGES: u64 = 500;

/// A channel name no other run uses.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sc-worker-test:{}:{nanos}:{name}", std::process::id())
}

/// `PUBLISH channel message` on one RESP node, by hand: the number of subscribers it reached.
async fn raw_publish(node: &str, channel: &str, message: &str) -> i64 {
    let addr = node.trim_start_matches("redis://").trim_end_matches('/');
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut cmd = b"*3\r\n$7\r\nPUBLISH\r\n".to_vec();
    for arg in [channel, message] {
        cmd.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    s.write_all(&cmd).await.unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "store closed the connection");
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(reply).unwrap();
    text.trim_start_matches(':').trim_end().parse().unwrap()
}

async fn next_publish(c: &mut Client) -> Value {
    c.next_matching(|v| v["event"] == "#publish").await["data"].clone()
}

async fn subscribe(c: &mut Client, server: &TestServer, channel: &str, cid: u64) {
    let reply = c
        .invoke("#subscribe", json!({ "channel": channel }), cid)
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    tokio::time::timeout(WAIT, server.handle.subscription_ready(channel))
        .await
        .expect("the store never confirmed the subscription");
}

/// Server A and server B share `channel` through their stores (`node` is the store node that
/// owns the channel, for raw publishes).
async fn two_servers(store_a: Arc<dyn Store>, store_b: Arc<dyn Store>, node: &str, channel: &str) {
    let gaps = Arc::new(AtomicUsize::new(0));
    let g = gaps.clone();
    let a = start(ScServer::builder().store(store_a).on_store_gap(move |_| {
        g.fetch_add(1, Ordering::Relaxed);
    }))
    .await;
    let b = start(ScServer::builder().store(store_b)).await;
    assert!(a.handle.has_store());

    let (mut ca, _) = Client::connect(&a).await;
    let (mut ca2, _) = Client::connect(&a).await;
    let (mut cb, _) = Client::connect(&b).await;
    subscribe(&mut ca, &a, channel, 2).await;
    subscribe(&mut ca2, &a, channel, 2).await;
    subscribe(&mut cb, &b, channel, 2).await;
    assert_eq!(a.handle.subscriber_count(channel), 2);

    // Both servers hold one store subscription, whatever their local subscriber count; a
    // publish from outside (raw JSON text on the store) reaches both clients.
    assert_eq!(raw_publish(node, channel, r#"{"from":"outside"}"#).await, 2);
    let expected = json!({"channel": channel, "data": {"from": "outside"}});
    for c in [&mut ca, &mut ca2, &mut cb] {
        assert_eq!(next_publish(c).await, expected);
    }
    // An empty payload is a publish without data; a payload that is not JSON is dropped.
    assert_eq!(raw_publish(node, channel, "not json").await, 2);
    assert_eq!(raw_publish(node, channel, "").await, 2);
    for c in [&mut ca, &mut ca2, &mut cb] {
        assert_eq!(next_publish(c).await, json!({ "channel": channel }));
    }

    // A client of B publishes: the client of A gets every message in order, exactly once, and
    // the publisher gets its own echo once (it is delivered from the store, not locally too).
    for i in 0..MESSAGES {
        cb.send_json(json!({"event":"#publish","data":{"channel":channel,"data":i}}))
            .await;
    }
    cb.send_json(json!({"event":"#publish","data":{"channel":channel,"data":"end"}}))
        .await;
    for c in [&mut ca, &mut ca2, &mut cb] {
        for i in 0..MESSAGES {
            assert_eq!(next_publish(c).await["data"], json!(i));
        }
        assert_eq!(next_publish(c).await["data"], json!("end"));
    }

    // A server-side publish on A and a server-side subscriber on B.
    let mut server_sub = b.handle.subscribe(channel);
    a.handle.publish(channel, json!({"n": 1})).unwrap();
    for c in [&mut ca, &mut ca2, &mut cb] {
        assert_eq!(next_publish(c).await["data"], json!({"n": 1}));
    }
    let got = tokio::time::timeout(WAIT, server_sub.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.to_value(), json!({"n": 1}));
    drop(server_sub);

    // A keeps its store subscription while a local subscriber remains, and only then drops it.
    ca.invoke("#unsubscribe", json!(channel), 3).await;
    assert_eq!(a.handle.subscriber_count(channel), 1);
    b.handle.publish(channel, "still").unwrap();
    assert_eq!(next_publish(&mut ca2).await["data"], json!("still"));
    assert_eq!(next_publish(&mut cb).await["data"], json!("still"));
    ca2.invoke("#unsubscribe", json!(channel), 3).await;
    assert_eq!(a.handle.subscriber_count(channel), 0);
    cb.invoke("#unsubscribe", json!(channel), 3).await;
    assert_eq!(b.handle.subscriber_count(channel), 0);
    // Unsubscribing on the store is asynchronous: wait (bounded) until a publish reaches no one.
    let mut reached = -1;
    for _ in 0..250 {
        reached = raw_publish(node, channel, "0").await;
        if reached == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reached, 0, "a server kept its store subscription");
    // Nothing more arrives at the clients: a publish on another channel is the next frame.
    let other = format!("{channel}:other");
    subscribe(&mut ca, &a, &other, 4).await;
    b.handle.publish(&other, "marker").unwrap();
    assert_eq!(
        next_publish(&mut ca).await,
        json!({"channel": other, "data": "marker"})
    );
    assert_eq!(gaps.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_shares_channels_between_servers() {
    let config = || RespConfig::new(["127.0.0.1:6379"]);
    let store_a = RespStore::connect(config())
        .await
        .expect("Redis must listen on 127.0.0.1:6379 (scripts/test starts it)");
    let store_b = RespStore::connect(config()).await.unwrap();
    two_servers(
        Arc::new(store_a),
        Arc::new(store_b),
        "127.0.0.1:6379",
        &unique("redis"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_cluster_shares_channels_between_servers() {
    let s1 = spawn("127.0.0.1:0".parse().unwrap(), ServerConfig::default()).unwrap();
    let s2 = spawn("127.0.0.1:0".parse().unwrap(), ServerConfig::default()).unwrap();
    let nodes = [s1.local_addr().to_string(), s2.local_addr().to_string()];
    let store_a = RespStore::connect(RespConfig::new(nodes.clone()))
        .await
        .unwrap();
    let store_b = RespStore::connect(RespConfig::new(nodes.clone()))
        .await
        .unwrap();
    let channel = unique("cluster");
    let node = store_a.node_of(&channel).to_owned();
    two_servers(Arc::new(store_a), Arc::new(store_b), &node, &channel).await;
    s1.shutdown().unwrap();
    s2.shutdown().unwrap();
}

/// One `MemoryStore` shared by two servers in one process behaves like a store cluster.
#[tokio::test]
async fn memory_store_shared_by_two_servers() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = start(ScServer::builder().store(store.clone())).await;
    let b = start(ScServer::builder().store(store)).await;
    let (mut ca, _) = Client::connect(&a).await;
    let (mut cb, _) = Client::connect(&b).await;
    subscribe(&mut ca, &a, "news", 2).await;
    subscribe(&mut cb, &b, "news", 2).await;
    for i in 0..50 {
        ca.send_json(json!({"event":"#publish","data":{"channel":"news","data":i}}))
            .await;
    }
    for c in [&mut ca, &mut cb] {
        for i in 0..50 {
            assert_eq!(next_publish(c).await["data"], json!(i));
        }
    }
}

/// A store process restart interrupts the subscription: the server reports a gap (the hook),
/// re-subscribes, and delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_restart_is_reported_as_a_gap_and_delivery_resumes() {
    let store = spawn("127.0.0.1:0".parse().unwrap(), ServerConfig::default()).unwrap();
    let addr = store.local_addr();
    let mut config = RespConfig::new([addr.to_string()]);
    config.reconnect_max_delay = Duration::from_millis(200);
    let store_a = RespStore::connect(config.clone()).await.unwrap();
    let store_b = RespStore::connect(config).await.unwrap();
    let (gap_tx, mut gap_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let a = start(
        ScServer::builder()
            .store(Arc::new(store_a))
            .on_store_gap(move |channel| {
                let _ = gap_tx.send(channel.to_owned());
            }),
    )
    .await;
    let b = start(ScServer::builder().store(Arc::new(store_b))).await;
    let (mut ca, _) = Client::connect(&a).await;
    subscribe(&mut ca, &a, "news", 2).await;
    b.handle.publish("news", 1).unwrap();
    assert_eq!(next_publish(&mut ca).await["data"], json!(1));

    store.shutdown().unwrap();
    let store = spawn(addr, ServerConfig::default()).unwrap();
    let channel = tokio::time::timeout(WAIT, gap_rx.recv())
        .await
        .expect("no gap reported after the store restarted")
        .unwrap();
    assert_eq!(channel, "news");
    // Re-subscribed before the gap was reported: B's next publishes (B reconnects its command
    // connection on its own) arrive. B may fail a publish while reconnecting, so publish until one
    // arrives, then check that the rest come in order.
    let mut first = None;
    for i in 0..100 {
        b.handle.publish("news", i).unwrap();
        if let Ok(v) = tokio::time::timeout(Duration::from_millis(100), next_publish(&mut ca)).await
        {
            first = Some(v["data"].as_u64().unwrap());
            break;
        }
    }
    let first = first.expect("no delivery after the store restarted");
    b.handle.publish("news", "after").unwrap();
    let mut last = first;
    loop {
        let v = next_publish(&mut ca).await["data"].clone();
        if v == json!("after") {
            break;
        }
        let n = v.as_u64().unwrap();
        assert_eq!(n, last + 1, "out of order after the restart");
        last = n;
    }
    drop(store);
}

/// A store restart: every local socket subscribed to the channel gets `#gap` with the channel's
/// name, before the publishes made after the store came back, and the app's `on_store_gap`
/// still runs; a socket not subscribed to it gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_sent_to_the_channels_subscribers() {
    let store = spawn("127.0.0.1:0".parse().unwrap(), ServerConfig::default()).unwrap();
    let addr = store.local_addr();
    let mut config = RespConfig::new([addr.to_string()]);
    config.reconnect_max_delay = Duration::from_millis(200);
    let store_a = RespStore::connect(config.clone()).await.unwrap();
    let store_b = RespStore::connect(config).await.unwrap();
    let (gap_tx, mut gap_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let a = start(
        ScServer::builder()
            .store(Arc::new(store_a))
            .procedure_sync("echo", |req| Ok(req.data))
            .on_store_gap(move |channel| {
                let _ = gap_tx.send(channel.to_owned());
            }),
    )
    .await;
    let b = start(ScServer::builder().store(Arc::new(store_b))).await;
    let (mut subscribed, _) = Client::connect(&a).await;
    let (mut subscribed2, _) = Client::connect(&a).await;
    let (mut other, _) = Client::connect(&a).await;
    subscribe(&mut subscribed, &a, "news", 2).await;
    subscribe(&mut subscribed2, &a, "news", 2).await;
    b.handle.publish("news", "before").unwrap();
    for c in [&mut subscribed, &mut subscribed2] {
        assert_eq!(next_publish(c).await["data"], json!("before"));
    }

    store.shutdown().unwrap();
    let store = spawn(addr, ServerConfig::default()).unwrap();
    let gap = json!({"event": "#gap", "data": {"channel": "news"}});
    for c in [&mut subscribed, &mut subscribed2] {
        assert_eq!(c.next().await, gap);
    }
    let channel = tokio::time::timeout(WAIT, gap_rx.recv())
        .await
        .expect("on_store_gap was not called")
        .unwrap();
    assert_eq!(channel, "news");

    // Publishes made after the gap come after it (B may fail one while it reconnects).
    let mut delivered = false;
    for i in 0..100 {
        b.handle.publish("news", i).unwrap();
        if tokio::time::timeout(Duration::from_millis(100), subscribed.next())
            .await
            .is_ok_and(|v| v["event"] == "#publish")
        {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "no delivery after the store restarted");

    // The socket subscribed to nothing (but its session's channel, the server's own) got no
    // `#gap`: its next frame is an echo's reply.
    other
        .send_json(json!({"event": "echo", "data": "x", "cid": 9}))
        .await;
    assert_eq!(other.next().await, json!({"rid": 9, "data": "x"}));
    let m = a.handle.metrics();
    assert!(m.store_ops >= 4, "{m:?}");
    drop(store);
}
