//! The balancer's counters: relaxed atomics bumped where things happen (the proxy, the tunnel),
//! read with [`Metrics::snapshot`] from any thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The live counters of a [`Balancer`](crate::Balancer) and every clone of it. Get them with
/// [`Balancer::metrics_handle`](crate::Balancer::metrics_handle) before the balancer is wrapped
/// in layers and served; read them with [`snapshot`](Self::snapshot).
#[derive(Debug)]
pub struct Metrics {
    requests: AtomicU64,
    upgrades: AtomicU64,
    tunnels_open: AtomicU64,
    worker_lost: AtomicU64,
    bad_gateway: AtomicU64,
    retries: AtomicU64,
}

/// The counters of a balancer at one moment (each field read on its own: fields may be from
/// slightly different moments).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BalancerMetrics {
    /// Requests a worker answered, its response passed on to the client: HTTP requests, and
    /// upgrades the worker refused (anything but `101`).
    pub requests: u64,
    /// WebSocket upgrades proxied: the worker answered `101`, and a tunnel was started.
    pub upgrades: u64,
    /// Tunnels open now (gauge): from the `101` until the copying ends (before the client is
    /// told why, so a client that saw its connection end sees the count without it).
    pub tunnels_open: u64,
    /// Clients closed with [`WORKER_LOST`](crate::tunnel::WORKER_LOST) (4000) because their
    /// worker's connection ended without a close frame (counted before the close frame is
    /// written). A worker lost in the middle of a frame drops its client instead, uncounted.
    pub worker_lost: u64,
    /// Requests and upgrades the balancer itself answered `502` or `503` because no worker
    /// could take them: no healthy worker, a refused connection that cannot be retried, a worker
    /// connection that failed mid-request, an engine.io handshake response that could not be
    /// read. (A `sid` whose worker is gone or down gets engine.io's `400` instead, uncounted.)
    pub bad_gateway: u64,
    /// Requests and upgrades sent to another worker after the one chosen refused the connection
    /// (one per extra attempt).
    pub retries: u64,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Metrics {
            requests: AtomicU64::new(0),
            upgrades: AtomicU64::new(0),
            tunnels_open: AtomicU64::new(0),
            worker_lost: AtomicU64::new(0),
            bad_gateway: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> BalancerMetrics {
        BalancerMetrics {
            requests: self.requests.load(Ordering::Relaxed),
            upgrades: self.upgrades.load(Ordering::Relaxed),
            tunnels_open: self.tunnels_open.load(Ordering::Relaxed),
            worker_lost: self.worker_lost.load(Ordering::Relaxed),
            bad_gateway: self.bad_gateway.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn bad_gateway(&self) {
        self.bad_gateway.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an upgrade and its tunnel, open until the returned guard ends or drops.
    pub(crate) fn upgrade(self: &Arc<Self>) -> OpenTunnel {
        self.upgrades.fetch_add(1, Ordering::Relaxed);
        self.tunnels_open.fetch_add(1, Ordering::Relaxed);
        OpenTunnel(Some(self.clone()))
    }
}

/// One open tunnel in [`BalancerMetrics::tunnels_open`], given back when it ends (or drops, if
/// the tunnel never ran).
#[derive(Debug)]
pub(crate) struct OpenTunnel(Option<Arc<Metrics>>);

impl OpenTunnel {
    /// The copying ended; `worker_lost`: the client is about to get a 4000 close.
    pub(crate) fn end(mut self, worker_lost: bool) {
        if let Some(m) = self.0.take() {
            if worker_lost {
                m.worker_lost.fetch_add(1, Ordering::Relaxed);
            }
            m.tunnels_open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            m.tunnels_open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_counts_until_it_ends_or_drops() {
        let m = Arc::new(Metrics::new());
        let a = m.upgrade();
        let b = m.upgrade();
        assert_eq!(m.snapshot().tunnels_open, 2);
        a.end(true);
        drop(b);
        m.request();
        m.bad_gateway();
        m.retry();
        assert_eq!(
            m.snapshot(),
            BalancerMetrics {
                requests: 1,
                upgrades: 2,
                tunnels_open: 0,
                worker_lost: 1,
                bad_gateway: 1,
                retries: 1,
            }
        );
    }
}
