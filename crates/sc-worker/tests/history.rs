//! Missed-message recovery: channels a history rule names get positions on every publish, a
//! `#subscribe` with `recover` replays what the client missed (or says `#gap`), with the
//! in-process history, a shared store and across two servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::{Client, TestServer, start};
use sc_worker::sc_store::{MemoryStore, Store};
use sc_worker::{Config, HistoryRule, ScServer};
use serde_json::{Value, json};

fn config(max_len: u64) -> Config {
    Config {
        history: vec![HistoryRule {
            channel: "news*".into(),
            max_len,
            max_age_ms: 60_000,
        }],
        publish_batch_ms: 0,
        ..Config::default()
    }
}

async fn server(max_len: u64, store: Option<Arc<dyn Store>>) -> TestServer {
    let mut b = ScServer::builder().config(config(max_len));
    if let Some(s) = store {
        b = b.store(s);
    }
    start(b).await
}

/// Subscribes with `data`; every frame up to and including the reply.
async fn subscribe(c: &mut Client, channel: &str, data: Option<Value>, cid: u64) -> Vec<Value> {
    let mut d = json!({ "channel": channel });
    if let Some(data) = data {
        d["data"] = data;
    }
    c.send_json(json!({"event": "#subscribe", "data": d, "cid": cid}))
        .await;
    let mut frames = Vec::new();
    loop {
        let v = c.next().await;
        let done = v["rid"] == cid;
        frames.push(v);
        if done {
            return frames;
        }
    }
}

/// The next `n` publishes of `channel`: (offset, data, epoch).
async fn publishes(c: &mut Client, n: usize) -> Vec<(u64, Value, String)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let v = c.next().await;
        assert_ne!(v["event"], "#gap", "unexpected gap: {v}");
        if v["event"] == "#publish" {
            let d = &v["data"];
            out.push((
                d["offset"].as_u64().expect("an offset"),
                d["data"].clone(),
                d["epoch"].as_str().expect("an epoch").to_owned(),
            ));
        }
    }
    out
}

fn publish_all(s: &TestServer, channel: &str, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        s.handle.publish(channel, json!({ "n": i })).unwrap();
    }
}

/// A subscriber gets positions, goes away, and resumes on `resume_on`: what it missed follows
/// the reply, then live messages, each once and in order.
async fn resume(first: &TestServer, resume_on: &TestServer) {
    let (mut a, _) = Client::connect(first).await;
    let frames = subscribe(&mut a, "news", None, 2).await;
    let reply = &frames.last().unwrap()["data"];
    assert_eq!(reply["channel"], "news");
    assert_eq!(reply["offset"], 0, "{reply}");
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    publish_all(first, "news", 1..=3);
    let got = publishes(&mut a, 3).await;
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        [1, 2, 3],
        "{got:?}"
    );
    assert!(got.iter().all(|g| g.2 == epoch));
    drop(a);

    publish_all(first, "news", 4..=200);
    let (mut b, _) = Client::connect(resume_on).await;
    let frames = subscribe(
        &mut b,
        "news",
        Some(json!({"recover": {"offset": 3, "epoch": epoch}, "app": 1})),
        2,
    )
    .await;
    assert_eq!(frames.len(), 1, "nothing before the reply: {frames:?}");
    assert_eq!(
        frames[0]["data"],
        json!({"channel": "news", "offset": 3, "epoch": epoch})
    );
    // Live publishes while the replay is read and sent.
    publish_all(first, "news", 201..=250);
    let got = publishes(&mut b, 247).await;
    for (i, (offset, data, e)) in got.iter().enumerate() {
        let want = i as u64 + 4;
        assert_eq!(
            (*offset, data, e.as_str()),
            (want, &json!({"n": want}), epoch.as_str())
        );
    }
}

#[tokio::test]
async fn a_subscriber_resumes_with_the_in_process_history() {
    let s = server(1000, None).await;
    resume(&s, &s).await;
}

#[tokio::test]
async fn a_subscriber_resumes_on_another_server_sharing_the_store() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = server(1000, Some(store.clone())).await;
    let b = server(1000, Some(store)).await;
    resume(&a, &b).await;
}

#[tokio::test]
async fn when_the_history_no_longer_covers_it_a_gap_comes_first_then_what_is_kept() {
    let s = server(10, None).await;
    let (mut a, _) = Client::connect(&s).await;
    let reply = subscribe(&mut a, "news", None, 2).await.pop().unwrap();
    let epoch = reply["data"]["epoch"].as_str().unwrap().to_owned();
    drop(a);
    publish_all(&s, "news", 1..=50);
    let (mut b, _) = Client::connect(&s).await;
    let frames = subscribe(
        &mut b,
        "news",
        Some(json!({"recover": {"offset": 3, "epoch": epoch}})),
        2,
    )
    .await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        frames[0],
        json!({"event": "#gap", "data": {"channel": "news", "offset": 40, "epoch": epoch}})
    );
    assert_eq!(frames[1]["data"]["offset"], 40);
    let got = publishes(&mut b, 10).await;
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        (41..=50).collect::<Vec<_>>()
    );

    // A position of another epoch (a history that was lost): a gap, then the whole history.
    let (mut c, _) = Client::connect(&s).await;
    let frames = subscribe(
        &mut c,
        "news",
        Some(json!({"recover": {"offset": 50, "epoch": "gone"}})),
        2,
    )
    .await;
    assert_eq!(frames[0]["event"], "#gap");
    assert_eq!(frames[0]["data"]["epoch"], epoch.as_str());
    assert_eq!(publishes(&mut c, 10).await[0].0, 41);
}

#[tokio::test]
async fn channels_without_a_rule_are_unchanged_and_bad_positions_are_refused() {
    let s = server(10, None).await;
    let (mut a, _) = Client::connect(&s).await;
    let frames = subscribe(&mut a, "other", None, 2).await;
    assert_eq!(frames, vec![json!({"rid": 2})]);
    s.handle.publish("other", json!(1)).unwrap();
    let v = a.next_matching(|v| v["event"] == "#publish").await;
    assert_eq!(
        v,
        json!({"event": "#publish", "data": {"channel": "other", "data": 1}})
    );

    let frames = subscribe(&mut a, "news", Some(json!({"recover": {"offset": -1}})), 3).await;
    let err = &frames.last().unwrap()["error"];
    assert_eq!(err["name"], "InvalidActionError", "{frames:?}");
    // Refused: not subscribed, so a publish does not reach it; a good subscribe still works.
    let frames = subscribe(&mut a, "news", Some(json!("app data")), 4).await;
    assert_eq!(frames.last().unwrap()["data"]["offset"], 0);
}

#[tokio::test]
async fn the_handle_reads_a_channels_history() {
    let s = server(5, None).await;
    assert!(s.handle.history("other", None, 10).await.is_err());
    let (mut a, _) = Client::connect(&s).await;
    subscribe(&mut a, "news", None, 2).await;
    publish_all(&s, "news", 1..=8);
    // Delivered means recorded.
    publishes(&mut a, 8).await;
    let h = s.handle.history("news", None, 10).await.unwrap();
    assert_eq!(h.latest, 8);
    assert_eq!(
        h.records.iter().map(|r| r.0).collect::<Vec<_>>(),
        [4, 5, 6, 7, 8]
    );
    assert_eq!(&h.records[4].1[..], br#"{"n":8}"#);
    let h = s.handle.history("news", Some(6), 1).await.unwrap();
    assert_eq!(h.records.len(), 1);
    assert_eq!(h.records[0].0, 7);
}

#[tokio::test]
async fn the_server_serves_the_javascript_helper() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = server(10, None).await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            sc_worker::RECOVERY_SCRIPT_PATH
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut body = String::new();
    tokio::time::timeout(common::WAIT, tcp.read_to_string(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body:.200}");
    assert!(body.contains("text/javascript"));
    assert!(body.contains("attachRecovery"));
}

/// A store restart loses the history: a subscriber gets a `#gap` notice naming the new epoch,
/// then the publishes of that epoch from its first offset on; one that was away and resumes
/// with the old epoch gets a gap too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restart_is_a_gap_into_the_new_epoch() {
    use sc_worker::sc_store::server::{ServerConfig, spawn};
    use sc_worker::sc_store::{RespConfig, RespStore};
    use std::time::Duration;
    let store = spawn("127.0.0.1:0".parse().unwrap(), ServerConfig::default()).unwrap();
    let addr = store.local_addr();
    let mut rc = RespConfig::new([addr.to_string()]);
    rc.reconnect_max_delay = Duration::from_millis(200);
    let a = server(
        100,
        Some(Arc::new(RespStore::connect(rc.clone()).await.unwrap())),
    )
    .await;
    let b = server(100, Some(Arc::new(RespStore::connect(rc).await.unwrap()))).await;
    let (mut sub, _) = Client::connect(&a).await;
    let reply = subscribe(&mut sub, "news", None, 2).await.pop().unwrap();
    let old = reply["data"]["epoch"].as_str().unwrap().to_owned();
    publish_all(&b, "news", 1..=3);
    assert_eq!(publishes(&mut sub, 3).await[2].0, 3);

    store.shutdown().unwrap();
    let _store = spawn(addr, ServerConfig::default()).unwrap();
    let gap = sub.next().await;
    assert_eq!(gap["event"], "#gap", "{gap}");
    let new = gap["data"]["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let from = gap["data"]["offset"].as_u64().unwrap();
    // B's first publishes may fail while it reconnects (logged, lost): publish until one arrives.
    let mut first = None;
    for i in 0..100 {
        b.handle.publish("news", json!({ "n": i })).unwrap();
        if let Ok(v) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            first = Some(v);
            break;
        }
    }
    let first = first.expect("no delivery after the store restarted");
    assert_eq!(first["event"], "#publish", "{first}");
    assert_eq!(first["data"]["epoch"], new.as_str());
    assert_eq!(first["data"]["offset"].as_u64(), Some(from + 1));

    let (mut late, _) = Client::connect(&a).await;
    let frames = subscribe(
        &mut late,
        "news",
        Some(json!({"recover": {"offset": 3, "epoch": old}})),
        2,
    )
    .await;
    assert_eq!(frames[0]["event"], "#gap", "{frames:?}");
    assert_eq!(frames[0]["data"]["epoch"], new.as_str());
}

/// A server-side subscription on a recorded channel, through a store: when the store's delivery
/// to this server is interrupted before any message of the channel reached it, what is read back
/// from the history starts where this server's subscription of the channel began, not at the
/// start of the history (the messages from before would reach the subscriber as new ones).
#[tokio::test]
async fn a_refill_before_any_delivery_starts_where_the_subscription_began() {
    use sc_worker::sc_store::{HistoryLimits, MemoryConfig};
    let store = MemoryStore::with_config(MemoryConfig {
        channel_capacity: 4,
        ..MemoryConfig::default()
    });
    let limits = HistoryLimits {
        max_len: 1000,
        max_age: std::time::Duration::from_secs(60),
    };
    for n in 0..5 {
        store
            .publish_recorded("news-r", n.to_string().into(), limits)
            .await
            .unwrap();
    }
    let server = server(1000, Some(Arc::new(store.clone()))).await;
    let mut sub = server.handle.subscribe("news-r");
    server.handle.subscription_ready("news-r").await;
    // Published straight to the store without yielding: the server's store subscription (4
    // deep) falls behind, and the server reads what it missed from the history.
    for n in 5..25 {
        store
            .publish_recorded("news-r", n.to_string().into(), limits)
            .await
            .unwrap();
    }
    for n in 5..25 {
        let got = tokio::time::timeout(common::WAIT, sub.recv())
            .await
            .expect("a message")
            .expect("the server");
        assert_eq!(got.map(|d| d.as_str().to_owned()), Some(n.to_string()));
    }
}
