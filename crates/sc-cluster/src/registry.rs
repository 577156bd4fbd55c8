//! The deployment's workers across machines. With Redis as the store, every master writes its
//! ready workers into one map on Redis every second (each with the time it expires), reads the
//! other masters' entries, and tells its balancers to route to those workers too: a balancer on
//! any host reaches every worker, so an engine.io session opened through one host's balancer
//! goes on when its requests reach another host's. A master that stops takes its workers out;
//! one that dies leaves entries that expire.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sc_worker::sc_store::Store;

use crate::proto::Command;

/// A key of the deployment on the store: `sc:cluster:{<deployment>}:<what>`. The workers' is a
/// map: field `IP:PORT` of a worker, value the Unix time in milliseconds until which it counts
/// as up.
pub(crate) fn key(config: &crate::config::ClusterConfig, what: &str) -> String {
    format!(
        "sc:cluster:{{{}}}:{what}",
        config.deployment.as_deref().unwrap_or_default()
    )
}
/// How often a master writes its workers and reads the others'.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);
/// How long an entry counts after it was written: a master gone silent this long is gone.
const TTL_MS: u64 = 5_000;
/// An entry expired this long ago is deleted (by whichever master sees it).
const FORGET_MS: u64 = 60_000;

/// What the registry needs of the master (a trait, so it can be tested without processes).
pub(crate) trait Deployment: Send + Sync + 'static {
    /// This host's workers: address, and whether it is up.
    fn local_workers(&self) -> Vec<(SocketAddr, bool)>;
    /// This host's balancers: id, how many times it became ready, whether it runs now.
    fn balancers(&self) -> Vec<(usize, u64, bool)>;
    /// Sends `c` to one balancer.
    fn tell_balancer(&self, id: usize, c: Command);
    /// The workers of other hosts now routed to (for `/health`).
    fn set_remote(&self, remote: Vec<SocketAddr>);
    /// Whether the master is stopping.
    fn stopping(&self) -> bool;
}

/// Writes and reads the registry every [`INTERVAL`] until the master stops.
pub(crate) async fn run(d: Arc<dyn Deployment>, store: Arc<dyn Store>, key: String) {
    let mut r = Registry {
        key,
        ..Registry::default()
    };
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !d.stopping() {
        tick.tick().await;
        if d.stopping() {
            break;
        }
        r.round(&*d, &*store, now_ms()).await;
    }
}

/// Takes this host's workers out of the registry (the master is stopping).
pub(crate) async fn withdraw(d: &dyn Deployment, store: &dyn Store, key: &str) {
    for (addr, _) in d.local_workers() {
        if let Err(e) = store.map_remove(key, &addr.to_string()).await {
            tracing::warn!(worker = %addr, error = %e, "cannot take the worker out of the registry");
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The registry's view from one master.
#[derive(Default)]
pub(crate) struct Registry {
    /// The workers' map on the store ([`key`]).
    key: String,
    /// Other hosts' workers the balancers were told to route to.
    remote: BTreeSet<SocketAddr>,
    /// Each balancer's ready count when it was last told: a new count is a new process, which
    /// knows only this host's workers.
    told: HashMap<usize, u64>,
    /// Whether the last round failed (warned once per outage, not every second).
    failing: bool,
}

impl Registry {
    /// One round: write this host's workers, read the others', tell the balancers what changed.
    pub(crate) async fn round(&mut self, d: &dyn Deployment, store: &dyn Store, now: u64) {
        let local = d.local_workers();
        let mut result = Ok(());
        for (addr, up) in &local {
            let field = addr.to_string();
            let r = if *up {
                store
                    .map_set(&self.key, &field, Bytes::from((now + TTL_MS).to_string()))
                    .await
                    .map(drop)
            } else {
                store.map_remove(&self.key, &field).await.map(drop)
            };
            result = result.and(r);
        }
        let entries = match result {
            Ok(()) => store.map_get_all(&self.key).await,
            Err(e) => Err(e),
        };
        let entries = match entries {
            Ok(e) => {
                if self.failing {
                    tracing::info!("the worker registry on the store is reachable again");
                }
                self.failing = false;
                e
            }
            Err(e) => {
                // Routing stays as it was: a store outage does not take workers away.
                if !self.failing {
                    tracing::warn!(error = %e, "cannot update the worker registry on the store");
                }
                self.failing = true;
                return;
            }
        };
        let mut remote = BTreeSet::new();
        for (field, value) in entries {
            let Ok(addr) = field.parse::<SocketAddr>() else {
                continue;
            };
            if local.iter().any(|(a, _)| *a == addr) {
                continue;
            }
            let expires = std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if expires > now {
                remote.insert(addr);
            } else if now.saturating_sub(expires) > FORGET_MS {
                let _ = store.map_remove(&self.key, &field).await;
            }
        }
        let balancers = d.balancers();
        for &(id, readies, running) in &balancers {
            if !running {
                continue;
            }
            // A balancer (re)started since it was last told: it needs every remote worker.
            if self.told.insert(id, readies) != Some(readies) {
                for addr in &remote {
                    d.tell_balancer(id, Command::Add(addr.to_string()));
                }
                continue;
            }
            for addr in remote.difference(&self.remote) {
                d.tell_balancer(id, Command::Add(addr.to_string()));
            }
            for addr in self.remote.difference(&remote) {
                d.tell_balancer(id, Command::Remove(addr.to_string()));
            }
        }
        for addr in remote.difference(&self.remote) {
            tracing::info!(worker = %addr, "a worker on another host: routing to it");
        }
        for addr in self.remote.difference(&remote) {
            tracing::info!(worker = %addr, "a worker on another host is gone");
        }
        d.set_remote(remote.iter().copied().collect());
        self.remote = remote;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use parking_lot::Mutex;
    use sc_worker::sc_store::MemoryStore;

    use super::*;

    #[derive(Default)]
    struct Fake {
        workers: Mutex<Vec<(SocketAddr, bool)>>,
        balancers: Mutex<Vec<(usize, u64, bool)>>,
        told: Mutex<Vec<(usize, Command)>>,
        remote: Mutex<Vec<SocketAddr>>,
    }

    impl Deployment for Fake {
        fn local_workers(&self) -> Vec<(SocketAddr, bool)> {
            self.workers.lock().clone()
        }
        fn balancers(&self) -> Vec<(usize, u64, bool)> {
            self.balancers.lock().clone()
        }
        fn tell_balancer(&self, id: usize, c: Command) {
            self.told.lock().push((id, c));
        }
        fn set_remote(&self, remote: Vec<SocketAddr>) {
            *self.remote.lock() = remote;
        }
        fn stopping(&self) -> bool {
            false
        }
    }

    fn host(workers: &[&str]) -> Fake {
        let f = Fake::default();
        *f.workers.lock() = workers.iter().map(|w| (w.parse().unwrap(), true)).collect();
        *f.balancers.lock() = vec![(0, 1, true)];
        f
    }

    fn told(f: &Fake) -> Vec<(usize, Command)> {
        std::mem::take(&mut *f.told.lock())
    }

    #[tokio::test]
    async fn hosts_learn_each_others_workers_and_forget_the_ones_that_go() {
        let store = MemoryStore::new();
        let a = host(&["10.0.0.1:7001", "10.0.0.1:7002"]);
        let b = host(&["10.0.0.2:7001"]);
        let registry = || Registry {
            key: "w".into(),
            ..Registry::default()
        };
        let (mut ra, mut rb) = (registry(), registry());
        let t = 1_000_000;
        ra.round(&a, &store, t).await;
        assert!(told(&a).is_empty(), "no other host yet");
        rb.round(&b, &store, t).await;
        assert_eq!(
            told(&b),
            vec![
                (0, Command::Add("10.0.0.1:7001".into())),
                (0, Command::Add("10.0.0.1:7002".into()))
            ]
        );
        ra.round(&a, &store, t + 1000).await;
        assert_eq!(told(&a), vec![(0, Command::Add("10.0.0.2:7001".into()))]);
        assert_eq!(*a.remote.lock(), vec!["10.0.0.2:7001".parse().unwrap()]);
        // Nothing changed: nothing said.
        ra.round(&a, &store, t + 2000).await;
        assert!(told(&a).is_empty());

        // A's balancer restarted: it is told every remote worker again.
        *a.balancers.lock() = vec![(0, 2, true)];
        ra.round(&a, &store, t + 3000).await;
        assert_eq!(told(&a), vec![(0, Command::Add("10.0.0.2:7001".into()))]);

        // A worker of A goes down: B stops routing to it.
        a.workers.lock()[1].1 = false;
        ra.round(&a, &store, t + 4000).await;
        rb.round(&b, &store, t + 4000).await;
        assert_eq!(told(&b), vec![(0, Command::Remove("10.0.0.1:7002".into()))]);

        // B falls silent: its entry expires for A.
        ra.round(&a, &store, t + 10_000).await;
        assert_eq!(told(&a), vec![(0, Command::Remove("10.0.0.2:7001".into()))]);
        assert!(a.remote.lock().is_empty());

        // A stops: it takes its workers out.
        withdraw(&a, &store, "w").await;
        rb.round(&b, &store, t + 11_000).await;
        assert_eq!(told(&b), vec![(0, Command::Remove("10.0.0.1:7001".into()))]);
    }
}
