//! The shared behavioural suite, run against every backend: `MemoryStore`, the store server
//! cluster (three real `sc-store-server` processes), and the real Redis at 127.0.0.1:6379.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use sc_store::{MemoryConfig, MemoryStore, RespConfig, RespStore, Store};

macro_rules! suite {
    ($($name:ident($($arg:ident),*);)*) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let s = as_dyn(MemoryStore::new());
                    let p = prefix(stringify!($name));
                    let _ = &s;
                    common::$name($(suite!(@arg $arg, s, s)),*, &p).await;
                }
            )*
        }
        mod cluster {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let c = Cluster::start().await;
                    let other = as_dyn(c.client().await);
                    let s = as_dyn(c.store.clone());
                    let p = prefix(stringify!($name));
                    let _ = (&s, &other);
                    common::$name($(suite!(@arg $arg, s, other)),*, &p).await;
                }
            )*
        }
        mod redis {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let s = as_dyn(common::redis().await);
                    let other = as_dyn(common::redis().await);
                    let p = prefix(stringify!($name));
                    let _ = (&s, &other);
                    common::$name($(suite!(@arg $arg, s, other)),*, &p).await;
                }
            )*
        }
    };
    (@arg one, $a:ident, $b:ident) => { &*$a };
    (@arg two, $a:ident, $b:ident) => { &*$b };
}

suite! {
    values(one);
    ttl_expiry(one);
    maps(one);
    lists(one);
    pubsub_order(one, two);
    thousand_subscribers(one, two);
    history(one, two);
}

#[tokio::test]
async fn memory_lagging_subscriber_gets_gap() {
    let s = MemoryStore::with_config(MemoryConfig {
        channel_capacity: 8,
        ..MemoryConfig::default()
    });
    lagging_subscriber_gets_gap(&s, 8, &prefix("lag")).await;
}

#[tokio::test]
async fn cluster_lagging_subscriber_gets_gap() {
    let c = Cluster::start().await;
    let mut config = RespConfig::new(c.procs.iter().map(|p| p.addr.clone()));
    config.channel_capacity = 8;
    let s = RespStore::connect(config).await.unwrap();
    lagging_subscriber_gets_gap(&s, 8, &prefix("lag")).await;
}

#[tokio::test]
async fn redis_lagging_subscriber_gets_gap() {
    let mut config = RespConfig::new(["127.0.0.1:6379"]);
    config.channel_capacity = 8;
    let s = RespStore::connect(config).await.unwrap();
    lagging_subscriber_gets_gap(&s, 8, &prefix("lag")).await;
}

#[tokio::test]
async fn cluster_gap_after_store_process_restart() {
    let mut c = Cluster::start().await;
    let publisher = c.client().await;
    let ch = format!("{}chan", prefix("restart"));
    let owner = c.store.node_of(&ch).to_owned();
    let i = c.procs.iter().position(|p| p.addr == owner).unwrap();
    let store = c.store.clone();
    // The other nodes' subscribers are unaffected: subscribe on a channel of another node too.
    let other_ch = (0..)
        .map(|n| format!("{ch}-{n}"))
        .find(|name| store.node_of(name) != owner)
        .unwrap();
    let mut other = store.subscribe(&other_ch).await.unwrap();
    gap_after_restart(&store, &publisher, &ch, || c.procs[i].restart()).await;
    publisher.publish(&other_ch, "x".into()).await.unwrap();
    assert_eq!(
        next(&mut other).await,
        sc_store::StoreEvent::Message("x".into()),
        "no gap on a node that did not restart"
    );
}

#[tokio::test]
async fn redis_gap_after_redis_restart() {
    let mut r = RedisProcess::start(0);
    let s = RespStore::connect(RespConfig::new([r.addr()]))
        .await
        .unwrap();
    let publisher = RespStore::connect(RespConfig::new([r.addr()]))
        .await
        .unwrap();
    let ch = format!("{}chan", prefix("restart"));
    gap_after_restart(&s, &publisher, &ch, || r.restart()).await;
}

#[tokio::test]
async fn cluster_shards_keys_over_every_process() {
    let c = Cluster::start().await;
    let mut per_node = std::collections::HashMap::new();
    for i in 0..300 {
        *per_node
            .entry(c.store.node_of(&format!("key{i}")).to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|&n| n > 50), "{per_node:?}");
    // Data written through one client is read through another.
    let other = c.client().await;
    for i in 0..30 {
        let k = format!("key{i}");
        c.store.set(&k, k.clone().into(), None).await.unwrap();
        assert_eq!(other.get(&k).await.unwrap(), Some(k.into()));
    }
}

#[tokio::test]
async fn memory_subscriptions_end_when_the_store_is_dropped() {
    ends_when_dropped(as_dyn(MemoryStore::new()), &prefix("end")).await;
}

#[tokio::test]
async fn cluster_subscriptions_end_when_the_store_is_dropped() {
    let c = Cluster::start().await;
    ends_when_dropped(as_dyn(c.client().await), &prefix("end")).await;
}

#[tokio::test]
async fn redis_subscriptions_end_when_the_store_is_dropped() {
    ends_when_dropped(as_dyn(common::redis().await), &prefix("end")).await;
}

/// A store process restart loses its channel histories: the next recorded publish starts a new
/// epoch at offset 1, and a reader holding a position of the old epoch sees another epoch.
#[tokio::test]
async fn cluster_history_epoch_changes_after_store_process_restart() {
    use std::time::Duration;
    let mut c = Cluster::start().await;
    let store = c.client().await;
    let ch = format!("{}hist", prefix("restart"));
    let owner = store.node_of(&ch).to_owned();
    let i = c.procs.iter().position(|p| p.addr == owner).unwrap();
    let limits = sc_store::HistoryLimits {
        max_len: 100,
        max_age: Duration::from_secs(60),
    };
    let before = store
        .publish_recorded(&ch, "a".into(), limits)
        .await
        .unwrap();
    store
        .publish_recorded(&ch, "b".into(), limits)
        .await
        .unwrap();
    c.procs[i].restart();
    // The command connection reconnects on its own; the first tries may fail while it does.
    let deadline = std::time::Instant::now() + WAIT;
    let after = loop {
        match store.publish_recorded(&ch, "c".into(), limits).await {
            Ok(p) => break p,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.is_connection(), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no publish after the restart: {e}"),
        }
    };
    assert_eq!(after.offset, 1);
    assert_ne!(after.epoch, before.epoch);
    // A reader with a position of the old epoch learns the new one, and reads it from its start.
    let h = store
        .history(&ch, Some(before.offset), 10, limits)
        .await
        .unwrap();
    assert_eq!(h.epoch, after.epoch);
    let h = store.history(&ch, None, 10, limits).await.unwrap();
    assert_eq!(h.records, vec![(1, "c".into())]);
}
