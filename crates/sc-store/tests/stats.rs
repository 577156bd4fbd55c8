//! The store server's counters (`server::Stats`) move with a real client: the crate's own
//! `RespStore` (the `redis` crate underneath) and a bare TCP connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use sc_store::server::{self, ServerConfig, StatsSnapshot};
use sc_store::{RespConfig, RespStore, Store, StoreEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn counters_move_with_a_real_client() {
    let config = ServerConfig::default();
    let stats = config.stats.clone();
    let s = server::spawn("127.0.0.1:0".parse().unwrap(), config).unwrap();
    assert!(std::sync::Arc::ptr_eq(&stats, s.stats()));
    assert_eq!(stats.snapshot(), StatsSnapshot::default());

    let store = RespStore::connect(RespConfig::new([s.local_addr().to_string()]))
        .await
        .unwrap();
    let s0 = stats.snapshot();
    // `connect` checks the command and the pub/sub connection (PING on each).
    assert!(s0.connections_open >= 1, "{s0:?}");
    assert!(s0.connections_total >= s0.connections_open, "{s0:?}");
    assert!(s0.commands >= 2, "{s0:?}");
    assert_eq!(s0.keys, 0);

    // Each reply is written after its batch is counted: no waiting needed.
    store.set("a", "1".into(), None).await.unwrap();
    store.set("b", "2".into(), None).await.unwrap();
    let s1 = stats.snapshot();
    assert!(s1.commands >= s0.commands + 2, "{s0:?} {s1:?}");
    assert_eq!(s1.keys, 2);
    assert_eq!(s1.publishes, 0);

    // One publish, two subscribers (on two clients), and one publish nobody hears.
    let other = RespStore::connect(RespConfig::new([s.local_addr().to_string()]))
        .await
        .unwrap();
    let mut sub1 = store.subscribe("news").await.unwrap();
    let mut sub2 = other.subscribe("news").await.unwrap();
    store.publish("news", "hello".into()).await.unwrap();
    store.publish("nobody", "hello".into()).await.unwrap();
    for sub in [&mut sub1, &mut sub2] {
        let got = tokio::time::timeout(WAIT, sub.recv()).await.unwrap();
        assert_eq!(got, Some(StoreEvent::Message("hello".into())));
    }
    let s2 = stats.snapshot();
    assert_eq!(s2.publishes, 2, "{s2:?}");
    assert_eq!(s2.deliveries, 2, "{s2:?}");
    assert!(s2.connections_total > s1.connections_total, "{s1:?} {s2:?}");

    assert!(store.remove("a").await.unwrap());
    assert_eq!(stats.snapshot().keys, 1);

    // A bare connection: counted while open, and no longer once the server closed it.
    let before = stats.snapshot();
    let mut c = TcpStream::connect(s.local_addr()).await.unwrap();
    c.write_all(b"PING\r\n").await.unwrap();
    let mut pong = [0u8; 7];
    tokio::time::timeout(WAIT, c.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    let open = stats.snapshot();
    assert_eq!(open.connections_open, before.connections_open + 1);
    assert_eq!(open.connections_total, before.connections_total + 1);
    assert!(open.commands > before.commands);
    c.write_all(b"QUIT\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, c.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, b"+OK\r\n");
    let closed = stats.snapshot();
    assert_eq!(closed.connections_open, before.connections_open);
    assert_eq!(closed.connections_total, before.connections_total + 1);
}
