//! The shared behavioural suite, run against every backend: `MemoryStore`, the store server
//! cluster (three real `sc-store-server` processes), the real Redis at 127.0.0.1:6379, and a
//! Redis Cluster of three masters started by the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use sc_store::{MemoryConfig, MemoryStore, RespConfig, RespStore, Store, StoreEvent};

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
        mod redis_cluster {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let c = RedisCluster::start();
                    let s = as_dyn(cluster_client(&c).await);
                    let other = as_dyn(cluster_client(&c).await);
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
    history_age(one);
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
    let s = client_of(&r).await;
    let publisher = client_of(&r).await;
    let ch = format!("{}chan", prefix("restart"));
    gap_after_restart(&s, &publisher, &ch, || r.restart()).await;
}

/// On Redis a batch of recorded publishes runs the history script by its hash (`EVALSHA`),
/// after one `SCRIPT LOAD` per batch: its text is not sent with every publish, and a Redis that
/// restarted (and so forgot its scripts) since the last batch still runs the next one.
#[tokio::test]
async fn redis_recorded_batches_run_the_script_by_hash_across_a_restart() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let mut r = RedisProcess::start(0);
    let s = client_of(&r).await;
    let limits = sc_store::HistoryLimits {
        max_len: 100,
        max_age: Duration::from_secs(60),
    };
    let ch = format!("{}rec", prefix("evalsha"));
    let batch: Vec<(Arc<str>, bytes::Bytes, sc_store::HistoryLimits)> = (0..10)
        .map(|i| (Arc::from(ch.as_str()), format!("m{i}").into(), limits))
        .collect();
    let stats = |port: u16| {
        let info = RedisCluster::cli(port, &["INFO", "commandstats"]);
        let calls = |cmd: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
                .and_then(|rest| rest.split(',').next())
                .map_or(0, |n| n.parse::<u64>().unwrap())
        };
        (calls("eval"), calls("evalsha"), calls("script|load"))
    };

    // The first publish learns that this is Redis (the store server's SC.HISTPUB is unknown).
    let mut sub = s.subscribe(&ch).await.unwrap();
    s.publish_recorded(&ch, "first".into(), limits)
        .await
        .unwrap();
    s.publish_recorded_many(&batch).await.unwrap();
    assert_eq!(
        stats(r.port),
        (1, 10, 1),
        "one EVAL (the single publish), the batch by hash after one SCRIPT LOAD"
    );
    let h = s.history(&ch, Some(0), 100, limits).await.unwrap();
    assert_eq!(h.latest, 11);

    // A restart: every script and key is gone; the next batch still goes through by hash.
    assert!(matches!(next(&mut sub).await, StoreEvent::Message(_)));
    r.restart();
    loop {
        if next(&mut sub).await == StoreEvent::Gap {
            break;
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        match s.publish_recorded_many(&batch).await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    e.is_connection() && Instant::now() < deadline,
                    "the batch after the restart failed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(stats(r.port), (0, 10, 1), "after the restart: by hash only");
    let h = s.history(&ch, Some(0), 100, limits).await.unwrap();
    assert_eq!(
        h.latest, 10,
        "a new history of the 10 published after the restart"
    );
    let got: Vec<_> = h.records.iter().map(|(_, m)| m.clone()).collect();
    let want: Vec<bytes::Bytes> = batch.iter().map(|(_, m, _)| m.clone()).collect();
    assert_eq!(got, want);
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

/// On a Redis Cluster the masters are found from one node; keys and channels spread over them
/// by hash slot; a channel is subscribed with `SSUBSCRIBE` on its own master only, and a publish
/// reaches that master only (`SPUBLISH`), so the other shards never see its traffic.
#[tokio::test]
async fn redis_cluster_spreads_keys_and_keeps_a_channel_on_its_shard() {
    let c = RedisCluster::start();
    let store = cluster_client(&c).await;
    let publisher = cluster_client(&c).await;
    assert!(store.is_redis_cluster());
    let mut per_node = std::collections::HashMap::new();
    for i in 0..300 {
        *per_node
            .entry(store.node_of(&format!("key{i}")).to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|&n| n > 50), "{per_node:?}");
    for i in 0..30 {
        let k = format!("key{i}");
        store.set(&k, k.clone().into(), None).await.unwrap();
        assert_eq!(publisher.get(&k).await.unwrap(), Some(k.into()));
    }

    let ch = format!("{}chan", prefix("shard"));
    let owner = c.index_of(store.node_of(&ch));
    let mut sub = store.subscribe(&ch).await.unwrap();
    let spublish_calls = |port: u16| -> u64 {
        RedisCluster::cli(port, &["INFO", "commandstats"])
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_spublish:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    let before: Vec<u64> = c.ports.iter().map(|&p| spublish_calls(p)).collect();
    for n in 0..10 {
        publisher
            .publish(&ch, format!("m{n}").into())
            .await
            .unwrap();
    }
    for n in 0..10 {
        assert_eq!(
            next(&mut sub).await,
            StoreEvent::Message(format!("m{n}").into())
        );
    }
    for (i, &port) in c.ports.iter().enumerate() {
        let shard_subs = RedisCluster::cli(port, &["PUBSUB", "SHARDNUMSUB", &ch]);
        let plain_subs = RedisCluster::cli(port, &["PUBSUB", "NUMSUB", &ch]);
        let published = spublish_calls(port) - before[i];
        if i == owner {
            assert!(shard_subs.ends_with("1\n"), "owner: {shard_subs:?}");
            assert_eq!(published, 10, "owner");
        } else {
            assert!(shard_subs.ends_with("0\n"), "master {i}: {shard_subs:?}");
            assert_eq!(published, 0, "master {i} saw the channel's publishes");
        }
        assert!(
            plain_subs.ends_with("0\n"),
            "plain SUBSCRIBE used: {plain_subs:?}"
        );
    }
}

/// A restart of one shard of a Redis Cluster: the subscribers of its channels get a Gap and
/// then its messages again; a channel of another shard goes on without one.
#[tokio::test]
async fn redis_cluster_gap_after_a_shard_restart() {
    let mut c = RedisCluster::start();
    let store = cluster_client(&c).await;
    let publisher = cluster_client(&c).await;
    let ch = format!("{}chan", prefix("restart"));
    let owner = store.node_of(&ch).to_owned();
    let i = c.index_of(&owner);
    let other_ch = (0..)
        .map(|n| format!("{ch}-{n}"))
        .find(|name| store.node_of(name) != owner)
        .unwrap();
    let mut other = store.subscribe(&other_ch).await.unwrap();
    gap_after_restart(&store, &publisher, &ch, || c.restart(i)).await;
    publisher.publish(&other_ch, "x".into()).await.unwrap();
    assert_eq!(
        next(&mut other).await,
        StoreEvent::Message("x".into()),
        "no gap on a shard that did not restart"
    );
}

/// Channel history on a Redis Cluster: a channel with a hash tag keeps its history with it;
/// a name that cannot be written as a hash tag is refused with a clear error.
#[tokio::test]
async fn redis_cluster_history_of_tagged_channels() {
    use std::time::Duration;
    let c = RedisCluster::start();
    let store = cluster_client(&c).await;
    let limits = sc_store::HistoryLimits {
        max_len: 10,
        max_age: Duration::from_secs(60),
    };
    let p = prefix("tag");
    for ch in [format!("{p}{{room}}a"), format!("{p}{{room}}b")] {
        let mut sub = store.subscribe(&ch).await.unwrap();
        let pos = store
            .publish_recorded(&ch, "m".into(), limits)
            .await
            .unwrap();
        assert_eq!(pos.offset, 1, "{ch}: each channel its own offsets");
        assert!(matches!(next(&mut sub).await, StoreEvent::Message(_)));
        let h = store.history(&ch, Some(0), 10, limits).await.unwrap();
        assert_eq!(h.records, vec![(1, "m".into())], "{ch}");
    }
    let err = store
        .publish_recorded(&format!("{p}a}}b"), "m".into(), limits)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("hash tag"), "{err}");
}

/// `publish_many` over channels of several masters while one master is down: it fails (after
/// trying that master again), and what the live masters took is published there once, not
/// again with each try.
#[tokio::test]
async fn redis_cluster_publish_many_with_a_master_down_sends_the_live_part_once() {
    use std::sync::Arc;
    let mut c = RedisCluster::start();
    let store = cluster_client(&c).await;
    let p = prefix("many");
    let dead_ch = format!("{p}dead");
    let dead = c.index_of(store.node_of(&dead_ch));
    let live_ch = (0..)
        .map(|n| format!("{p}live{n}"))
        .find(|name| c.index_of(store.node_of(name)) != dead)
        .unwrap();
    let mut sub = store.subscribe(&live_ch).await.unwrap();
    c.kill(dead);
    let batch: Vec<(Arc<str>, bytes::Bytes)> = vec![
        (dead_ch.as_str().into(), "d1".into()),
        (live_ch.as_str().into(), "l1".into()),
        (dead_ch.as_str().into(), "d2".into()),
        (live_ch.as_str().into(), "l2".into()),
    ];
    let err = store.publish_many(&batch).await.unwrap_err();
    assert!(err.is_connection(), "{err}");
    store.publish(&live_ch, "l3".into()).await.unwrap();
    for want in ["l1", "l2", "l3"] {
        assert_eq!(next(&mut sub).await, StoreEvent::Message(want.into()));
    }
}
