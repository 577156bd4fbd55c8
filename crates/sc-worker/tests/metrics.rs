//! `ScHandle::metrics`: each counter moves with the traffic it counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::{Client, WAIT, start};
use sc_worker::sc_store::{MemoryStore, Store};
use sc_worker::{Metrics, ScServer};
use serde_json::json;
use tokio::sync::mpsc;

/// Every field, in declaration order.
fn fields(m: Metrics) -> [u64; 9] {
    [
        m.sockets_open,
        m.sockets_opened,
        m.messages_in,
        m.messages_out,
        m.publishes,
        m.deliveries,
        m.store_ops,
        m.store_errors,
        m.queue_drops,
    ]
}

#[tokio::test]
async fn counters_move_with_the_traffic_they_count() {
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel::<()>();
    let server = start(
        ScServer::builder()
            .procedure_sync("echo", |req| Ok(req.data))
            .procedure("later", |req| async move {
                tokio::task::yield_now().await;
                Ok(req.data)
            })
            .on_disconnection(move |_, _, _| {
                let _ = closed_tx.send(());
            }),
    )
    .await;
    let h = &server.handle;
    assert_eq!(h.metrics(), Metrics::default());

    // [open, opened, in, out, publishes, deliveries, store_ops, store_errors, queue_drops]
    let (mut c, _) = Client::connect(&server).await;
    assert_eq!(fields(h.metrics()), [1, 1, 1, 1, 0, 0, 0, 0, 0]);

    // A sync invoke, an async one that waits (its reply goes through the queue), and a batch of
    // two: each message counts.
    assert_eq!(c.invoke("echo", json!(1), 2).await["data"], 1);
    assert_eq!(c.invoke("later", json!(2), 3).await["data"], 2);
    c.send(r#"[{"event":"echo","data":3,"cid":4},{"event":"echo","data":4,"cid":5}]"#)
        .await;
    assert_eq!(c.next().await, json!({"rid": 4, "data": 3}));
    assert_eq!(c.next().await, json!({"rid": 5, "data": 4}));
    assert_eq!(fields(h.metrics()), [1, 1, 5, 5, 0, 0, 0, 0, 0]);

    // Subscribe, then publish from the client (an invoke: a reply and the delivery) and from
    // the server.
    assert_eq!(
        c.invoke("#subscribe", json!({"channel": "ch"}), 6).await,
        json!({"rid": 6})
    );
    c.send_json(json!({"event": "#publish", "data": {"channel": "ch", "data": "p"}, "cid": 7}))
        .await;
    let mut got = vec![c.next().await, c.next().await];
    got.sort_by_key(|v| v.get("rid").is_none());
    assert_eq!(
        got,
        [
            json!({"rid": 7}),
            json!({"event": "#publish", "data": {"channel": "ch", "data": "p"}})
        ]
    );
    assert_eq!(fields(h.metrics()), [1, 1, 7, 8, 1, 1, 0, 0, 0]);
    h.publish("ch", "q").unwrap();
    assert_eq!(c.next().await["data"]["data"], "q");
    // A client's publish as a transmit (no reply).
    c.send_json(json!({"event": "#publish", "data": {"channel": "ch", "data": "r"}}))
        .await;
    assert_eq!(c.next().await["data"]["data"], "r");
    assert_eq!(fields(h.metrics()), [1, 1, 8, 10, 3, 3, 0, 0, 0]);

    // A second socket, then the first one goes: the gauge drops, the counter stays.
    let (_c2, _) = Client::connect(&server).await;
    assert_eq!(h.metrics().sockets_open, 2);
    drop(c);
    tokio::time::timeout(WAIT, closed_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let m = h.metrics();
    assert_eq!((m.sockets_open, m.sockets_opened), (1, 2));

    let v = serde_json::to_value(m).unwrap();
    assert_eq!(v["sockets_open"], 1);
    assert_eq!(v["messages_in"], m.messages_in);
    assert_eq!(v.as_object().unwrap().len(), 9);
}

#[tokio::test]
async fn a_slow_consumer_counts_as_a_queue_drop() {
    let server = start(ScServer::builder().outbound_queue(8)).await;
    let (mut c, data) = Client::connect(&server).await;
    assert_eq!(
        c.invoke("#subscribe", json!({"channel": "firehose"}), 2)
            .await,
        json!({"rid": 2})
    );
    assert!(server.handle.socket(data["id"].as_str().unwrap()).is_some());
    // The client does not read while 64 KiB messages are published until its queue is full.
    let blob = "z".repeat(64 * 1024);
    let mut published = 0;
    while server.handle.metrics().queue_drops == 0 {
        server.handle.publish("firehose", blob.as_str()).unwrap();
        published += 1;
        assert!(published < 10_000, "slow consumer never dropped");
        tokio::task::yield_now().await;
    }
    let m = server.handle.metrics();
    assert_eq!(m.publishes, published);
    assert!(m.deliveries < published, "{m:?}");
    // The socket is closed as a slow consumer (4100, or 1006 if its close frame could not be
    // written after the backlog).
    let code = c.closed().await;
    assert!(code == sc_worker::SLOW_CONSUMER || code == 1006, "{code}");
}

#[tokio::test]
async fn store_operations_are_counted() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let server = start(
        ScServer::builder()
            .store(store)
            .procedure("remember", |req| async move {
                // A write of the session's data and the renewal of its TTL: two store operations.
                req.socket.session().set("k", req.data).await
            }),
    )
    .await;
    let h = &server.handle;
    let (mut c, _) = Client::connect(&server).await;
    assert_eq!(
        c.invoke("#subscribe", json!({"channel": "ch"}), 2).await,
        json!({"rid": 2})
    );
    tokio::time::timeout(WAIT, h.subscription_ready("ch"))
        .await
        .unwrap();
    h.publish("ch", 1).unwrap();
    assert_eq!(c.next().await["data"]["data"], 1);
    // The session channel's subscription, the channel's, the publish.
    let m = h.metrics();
    assert!(m.store_ops >= 3, "{m:?}");
    assert_eq!(m.store_errors, 0);

    let before = h.metrics().store_ops;
    assert_eq!(c.invoke("remember", json!("v"), 3).await, json!({"rid": 3}));
    assert_eq!(
        c.invoke("#unsubscribe", json!("ch"), 4).await,
        json!({"rid": 4})
    );
    // Two for the session data, one for the channel's unsubscribe.
    let m = h.metrics();
    assert!(m.store_ops >= before + 3, "{before} then {m:?}");
    assert_eq!(m.store_errors, 0);
}
