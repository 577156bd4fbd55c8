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
