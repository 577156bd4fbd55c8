//! The worker set: the workers a balancer routes to, their health and their load.
//!
//! Each worker has a **tag**, eight hex digits derived from its address alone, which the
//! balancer puts into the engine.io session ids it hands out. Any balancer process that lists the
//! same worker (in the same spelling) derives the same tag, so every balancer routes a session's
//! requests to the same worker without sharing anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

/// One worker: its address, tag, health and the load this balancer puts on it.
#[derive(Debug)]
pub struct Worker {
    addr: String,
    resolved: SocketAddr,
    tag: [u8; 8],
    healthy: AtomicBool,
    load: AtomicUsize,
}

impl Worker {
    /// The worker's address as given (`host:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The address connected to.
    pub fn socket_addr(&self) -> SocketAddr {
        self.resolved
    }

    /// The tag that session ids of this worker carry (eight lowercase hex digits).
    pub fn tag(&self) -> &str {
        // Hex digits only: always UTF-8.
        std::str::from_utf8(&self.tag).unwrap_or_default()
    }

    /// Whether the worker is taken to be up.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Proxied connections and requests open on this worker now.
    pub fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, up: bool) -> bool {
        self.healthy.swap(up, Ordering::Relaxed) != up
    }

    /// Counts one connection or request on the worker until the guard drops.
    pub(crate) fn hold(self: &Arc<Self>) -> LoadGuard {
        self.load.fetch_add(1, Ordering::Relaxed);
        LoadGuard(self.clone())
    }
}

/// One unit of a worker's load, given back on drop.
#[derive(Debug)]
pub(crate) struct LoadGuard(Arc<Worker>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker address that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Not `host:port`, or the host does not resolve.
    #[error("worker {addr:?}: {why}")]
    Address {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        why: String,
    },
    /// Two workers have the same tag (the same address twice, in practice).
    #[error("worker {0:?} is listed twice")]
    Duplicate(String),
}

/// The tag of a worker address: FNV-1a (64 bits) of its text, folded to 32 bits, in hex.
pub(crate) fn tag_of(addr: &str) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addr.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let folded = (h >> 32) as u32 ^ h as u32;
    let mut out = [0u8; 8];
    for (i, o) in out.iter_mut().enumerate() {
        let nibble = (folded >> (28 - 4 * i)) & 0xf;
        *o = b"0123456789abcdef"[nibble as usize];
    }
    out
}

/// The workers of a balancer, changeable at run time. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct WorkerSet {
    inner: Arc<RwLock<Vec<Arc<Worker>>>>,
    /// Where the next tie among equally loaded workers starts.
    turn: Arc<AtomicUsize>,
}

impl WorkerSet {
    /// A set of the workers at `addrs` (`host:port` each; resolved now). All start healthy.
    pub fn new<I, S>(addrs: I) -> Result<Self, WorkerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let set = WorkerSet::default();
        for a in addrs {
            set.add(a.as_ref())?;
        }
        Ok(set)
    }

    /// Adds the worker at `addr` (healthy until a probe or a connection says otherwise).
    ///
    /// A worker removed with [`remove`](Self::remove) and added again at the same address
    /// (written the same way) gets the same tag, so the engine.io sessions it still holds are
    /// routed to it again, and it is healthy at once, whatever it was before its removal. Its
    /// load counts the connections made from then on (those made before stay counted on the
    /// removed worker until they close). An address in the set already is
    /// [`WorkerError::Duplicate`].
    pub fn add(&self, addr: &str) -> Result<Arc<Worker>, WorkerError> {
        let resolved = resolve(addr)?;
        let tag = tag_of(addr);
        let mut list = self.inner.write();
        if list.iter().any(|w| w.tag == tag) {
            return Err(WorkerError::Duplicate(addr.to_owned()));
        }
        let w = Arc::new(Worker {
            addr: addr.to_owned(),
            resolved,
            tag,
            healthy: AtomicBool::new(true),
            load: AtomicUsize::new(0),
        });
        list.push(w.clone());
        Ok(w)
    }

    /// Removes the worker at `addr` (as written when it was added); returns whether it was
    /// there. Its open tunnels and requests in flight are left alone: they end when the worker
    /// or the client closes them (a worker that goes away without a close frame still gets
    /// its clients a 4000 close). New connections go to the other workers, and a request whose
    /// `sid` carries its tag gets engine.io's `400 Session ID unknown`, until it is
    /// [added](Self::add) again. It is no longer probed.
    ///
    /// To restart a worker: remove it, restart it, add it once it listens.
    pub fn remove(&self, addr: &str) -> bool {
        let mut list = self.inner.write();
        let before = list.len();
        list.retain(|w| w.addr != addr);
        list.len() != before
    }

    /// The workers now.
    pub fn workers(&self) -> Vec<Arc<Worker>> {
        self.inner.read().clone()
    }

    /// The worker whose tag is `tag`.
    pub fn by_tag(&self, tag: &str) -> Option<Arc<Worker>> {
        self.inner
            .read()
            .iter()
            .find(|w| w.tag.as_slice() == tag.as_bytes())
            .cloned()
    }

    /// The least-loaded healthy worker, ties taken in turn; `None` when none is healthy.
    /// `avoid` (a worker that just failed) is skipped.
    pub fn least_loaded(&self, avoid: &[Arc<Worker>]) -> Option<Arc<Worker>> {
        let list = self.inner.read();
        let n = list.len();
        if n == 0 {
            return None;
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<&Arc<Worker>> = None;
        for i in 0..n {
            let w = &list[(start + i) % n];
            if !w.is_healthy() || avoid.iter().any(|a| Arc::ptr_eq(a, w)) {
                continue;
            }
            if best.is_none_or(|b| w.load() < b.load()) {
                best = Some(w);
            }
        }
        best.cloned()
    }

    /// The healthy worker that `key` (a session cookie) maps to by rendezvous hashing, so a key
    /// keeps its worker while that worker is up, and only the keys of a worker that goes away
    /// move.
    pub fn by_affinity(&self, key: &str, avoid: &[Arc<Worker>]) -> Option<Arc<Worker>> {
        let list = self.inner.read();
        list.iter()
            .filter(|w| w.is_healthy() && !avoid.iter().any(|a| Arc::ptr_eq(a, w)))
            .max_by_key(|w| {
                let mut text = String::with_capacity(key.len() + 9);
                text.push_str(key);
                text.push('\0');
                text.push_str(w.tag());
                u64::from_str_radix(std::str::from_utf8(&tag_of(&text)).unwrap_or("0"), 16)
                    .unwrap_or(0)
            })
            .cloned()
    }

    /// Probes every worker each `interval` (a TCP connect within the interval, at most 2 s):
    /// one that does not answer is taken out of routing, one that answers again is put back.
    /// Runs until the returned task is aborted.
    pub fn spawn_health_checks(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let set = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let timeout = interval.min(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let mut probes = tokio::task::JoinSet::new();
                for w in set.workers() {
                    probes.spawn(async move {
                        let up = matches!(
                            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(w.resolved))
                                .await,
                            Ok(Ok(_))
                        );
                        if w.set_healthy(up) {
                            if up {
                                tracing::info!(worker = %w.addr, "worker is up: routed to again");
                            } else {
                                tracing::warn!(worker = %w.addr, "worker does not answer: taken out of routing");
                            }
                        }
                    });
                }
                while probes.join_next().await.is_some() {}
            }
        })
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, WorkerError> {
    use std::net::ToSocketAddrs;
    let bad = |why: String| WorkerError::Address {
        addr: addr.to_owned(),
        why,
    };
    if addr
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(bad("expected HOST:PORT".to_owned()));
    }
    addr.to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| bad("resolves to no address".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_stable_hex_and_distinct() {
        let a = tag_of("127.0.0.1:9001");
        assert_eq!(a, tag_of("127.0.0.1:9001"));
        assert_ne!(a, tag_of("127.0.0.1:9002"));
        assert!(
            a.iter()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn least_loaded_skips_the_unhealthy_and_takes_turns() {
        let set = WorkerSet::new(["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]).unwrap();
        let ws = set.workers();
        let _g1 = ws[0].hold();
        let _g2 = ws[0].hold();
        let _g3 = ws[1].hold();
        for _ in 0..5 {
            assert_eq!(set.least_loaded(&[]).unwrap().addr(), "127.0.0.1:9003");
        }
        ws[2].set_healthy(false);
        assert_eq!(set.least_loaded(&[]).unwrap().addr(), "127.0.0.1:9002");
        assert_eq!(
            set.least_loaded(&[ws[1].clone()]).unwrap().addr(),
            "127.0.0.1:9001"
        );
        ws[0].set_healthy(false);
        ws[1].set_healthy(false);
        assert!(set.least_loaded(&[]).is_none());
        // Equal loads: every worker gets its turn.
        let set = WorkerSet::new(["127.0.0.1:9001", "127.0.0.1:9002"]).unwrap();
        let picks: std::collections::HashSet<_> = (0..4)
            .map(|_| set.least_loaded(&[]).unwrap().addr().to_owned())
            .collect();
        assert_eq!(picks.len(), 2);
    }

    #[test]
    fn affinity_moves_only_the_keys_of_a_lost_worker() {
        let set = WorkerSet::new(["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]).unwrap();
        let keys: Vec<String> = (0..300).map(|i| format!("session-{i}")).collect();
        let before: Vec<_> = keys
            .iter()
            .map(|k| set.by_affinity(k, &[]).unwrap())
            .collect();
        let used: std::collections::HashSet<_> = before.iter().map(|w| w.addr()).collect();
        assert_eq!(used.len(), 3, "keys spread over every worker");
        let lost = set.workers()[1].clone();
        lost.set_healthy(false);
        for (k, b) in keys.iter().zip(&before) {
            let now = set.by_affinity(k, &[]).unwrap();
            if Arc::ptr_eq(b, &lost) {
                assert!(!Arc::ptr_eq(&now, &lost));
            } else {
                assert!(Arc::ptr_eq(&now, b), "key {k} moved");
            }
        }
    }

    #[test]
    fn bad_and_duplicate_addresses() {
        assert!(matches!(
            WorkerSet::new(["nohost"]),
            Err(WorkerError::Address { .. })
        ));
        assert!(matches!(
            WorkerSet::new([":80"]),
            Err(WorkerError::Address { .. })
        ));
        assert!(matches!(
            WorkerSet::new(["127.0.0.1:1", "127.0.0.1:1"]),
            Err(WorkerError::Duplicate(_))
        ));
        let set = WorkerSet::new(["127.0.0.1:1"]).unwrap();
        let w = set.add("127.0.0.1:2").unwrap();
        assert!(set.by_tag(w.tag()).is_some());
        assert!(set.remove("127.0.0.1:2"));
        assert!(set.by_tag(w.tag()).is_none());
        assert!(!set.remove("127.0.0.1:2"));
    }

    #[test]
    fn a_worker_re_added_gets_its_tag_and_health_back() {
        let set = WorkerSet::new(["127.0.0.1:9001", "127.0.0.1:9002"]).unwrap();
        let old = set.workers()[0].clone();
        let tunnel = old.hold();
        // Refused a connection while restarting, say.
        old.set_healthy(false);
        assert!(set.remove("127.0.0.1:9001"));
        assert!(set.by_tag(old.tag()).is_none());
        for _ in 0..4 {
            assert_eq!(set.least_loaded(&[]).unwrap().addr(), "127.0.0.1:9002");
            assert_eq!(set.by_affinity("k", &[]).unwrap().addr(), "127.0.0.1:9002");
        }
        assert_eq!(old.load(), 1, "its open connection is left alone");
        let new = set.add("127.0.0.1:9001").unwrap();
        assert_eq!(new.tag(), old.tag());
        assert!(new.is_healthy());
        assert!(Arc::ptr_eq(&set.by_tag(old.tag()).unwrap(), &new));
        assert_eq!(new.load(), 0);
        drop(tunnel);
        assert_eq!((old.load(), new.load()), (0, 0));
        assert!(matches!(
            set.add("127.0.0.1:9001"),
            Err(WorkerError::Duplicate(_))
        ));
    }

    #[tokio::test]
    async fn a_worker_refusing_while_it_restarts_comes_back_with_the_probes() {
        // A port with nothing listening: the worker is restarting.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let set = WorkerSet::new([addr.to_string()]).unwrap();
        let w = set.workers()[0].clone();
        // As the proxy does when a connection to it is refused.
        w.set_healthy(false);
        let probes = set.spawn_health_checks(Duration::from_millis(20));
        // It listens again. A tick's probes all finish (and set the health) before the next
        // tick's start: each probe accepted here tells that the one before has put its result.
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                listener.accept().await.unwrap();
                if w.is_healthy() {
                    break;
                }
            }
        })
        .await
        .expect("the probes put the worker back");
        assert!(set.least_loaded(&[]).is_some());
        probes.abort();
    }
}
