//! The server's counters: [`Metrics`], the snapshot [`ScHandle::metrics`](crate::ScHandle::metrics)
//! returns, and the atomics behind it.
//!
//! Counting stays off the per-message path: a socket's task tallies what it reads and writes in
//! plain integers ([`Tally`]) and adds them to the shared counters once per read burst or write
//! batch, with relaxed atomic adds. The counters that socket tasks add to sit together on one
//! cache line of their own, the store's and the rare ones on another, and neither shares a line
//! with the server state every message reads.
//!
//! ```no_run
//! # async fn run(handle: sc_worker::ScHandle) {
//! let m = handle.metrics();
//! println!(
//!     "{} sockets, {} messages in, {} out",
//!     m.sockets_open, m.messages_in, m.messages_out
//! );
//! // Or as JSON, for a status endpoint.
//! let json = serde_json::to_string(&m).unwrap();
//! # let _ = json;
//! # }
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// A snapshot of a server's counters, from [`ScHandle::metrics`](crate::ScHandle::metrics).
///
/// Every field but `sockets_open` counts from the server's start and only grows; take two
/// snapshots and subtract for rates. The counters are read one by one without a lock, so a
/// snapshot taken while traffic flows is not an instant across fields (`deliveries` may be a
/// little ahead of `publishes`, say). Socket tasks add what they counted once per read burst or
/// write batch, so a message shows within that burst's handling, not before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Metrics {
    /// Sockets open now (handshake done, not yet closed), WebSocket and engine.io.
    pub sockets_open: u64,
    /// Handshakes completed since the start.
    pub sockets_opened: u64,
    /// SocketCluster messages received from clients (`#handshake` included; each message of a
    /// batch counts; heartbeats do not).
    pub messages_in: u64,
    /// SocketCluster messages written to clients: replies, transmits, invokes, publishes, the
    /// handshake reply (heartbeats and close frames do not count).
    pub messages_out: u64,
    /// Publishes accepted: clients' `#publish` (after the `publishIn` middleware) and
    /// [`ScHandle::publish`](crate::ScHandle::publish).
    pub publishes: u64,
    /// Channel publishes written to local subscriber sockets (one per socket and publish; a
    /// publish the `outbound` middleware blocked does not count, nor do session emits).
    pub deliveries: u64,
    /// Operations sent to the store (publishes, channel subscribes and unsubscribes, session
    /// data reads, writes and TTL renewals); 0 without a [`store`](crate::ScServerBuilder::store).
    /// What handlers do with [`ScHandle::store`](crate::ScHandle::store) is theirs, not counted.
    pub store_ops: u64,
    /// Those of `store_ops` that failed (a publish dropped because the store's publish queue
    /// was full counts in both).
    pub store_errors: u64,
    /// Messages dropped, or sockets closed with [`SLOW_CONSUMER`](crate::SLOW_CONSUMER), because
    /// a socket's outbound queue was full (in frames or bytes), or an engine.io session's
    /// buffer stayed full.
    pub queue_drops: u64,
}

/// The counters socket tasks add to, together on one cache line.
#[derive(Default)]
#[repr(align(128))]
struct Hot {
    sockets_opened: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    publishes: AtomicU64,
    deliveries: AtomicU64,
}

/// The store's counters and the rare ones, on a line of their own (the store's publisher tasks
/// add to them, not the socket tasks).
#[derive(Default)]
#[repr(align(128))]
struct Cold {
    store_ops: AtomicU64,
    store_errors: AtomicU64,
    queue_drops: AtomicU64,
}

/// Whether the server delivers publishes fast enough that sockets should hold them
/// (`Config::publish_batch_above`): the rate of `deliveries` over windows of [`PACE_WINDOW_MS`],
/// recomputed by whichever socket asks first once a window has passed. On a line of its own:
/// every socket reads `busy`, one writes the rest every window.
#[derive(Default)]
#[repr(align(128))]
struct Pace {
    /// Milliseconds from `Counters::start` to the current window's start.
    window: AtomicU64,
    /// `deliveries` at the window's start.
    at_window: AtomicU64,
    busy: AtomicBool,
}

/// The window over which the delivery rate is measured.
const PACE_WINDOW_MS: u64 = 20;

/// The counters of one server, shared (in an `Arc`) by its state, its store broker and its
/// sessions. Every add is relaxed: nothing is ordered by a counter.
pub(crate) struct Counters {
    hot: Hot,
    cold: Cold,
    pace: Pace,
    start: Instant,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            hot: Hot::default(),
            cold: Cold::default(),
            pace: Pace::default(),
            start: Instant::now(),
        }
    }
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

/// What a socket's task counted since it last added to the server's counters: plain integers,
/// bumped per message, added once per burst ([`Counters::add`]).
#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) messages_in: u32,
    pub(crate) messages_out: u32,
    pub(crate) publishes: u32,
    pub(crate) deliveries: u32,
}

impl Counters {
    /// Adds a socket task's tally (only the fields that moved).
    #[inline]
    pub(crate) fn add(&self, t: Tally) {
        let h = &self.hot;
        if t.messages_in != 0 {
            h.messages_in.fetch_add(u64::from(t.messages_in), Relaxed);
        }
        if t.messages_out != 0 {
            h.messages_out.fetch_add(u64::from(t.messages_out), Relaxed);
        }
        if t.publishes != 0 {
            h.publishes.fetch_add(u64::from(t.publishes), Relaxed);
        }
        if t.deliveries != 0 {
            h.deliveries.fetch_add(u64::from(t.deliveries), Relaxed);
        }
    }

    /// Whether publishes are delivered at `above` per second or more (and, once they were,
    /// still at three quarters of it): measured over the last complete window, as of `now`.
    pub(crate) fn busy(&self, now: Instant, above: u64) -> bool {
        let p = &self.pace;
        let ms = u64::try_from(now.saturating_duration_since(self.start).as_millis())
            .unwrap_or(u64::MAX);
        let window = p.window.load(Relaxed);
        let elapsed = ms.saturating_sub(window);
        if elapsed >= PACE_WINDOW_MS
            && p.window
                .compare_exchange(window, ms, Relaxed, Relaxed)
                .is_ok()
        {
            let delivered = self.hot.deliveries.load(Relaxed);
            let before = p.at_window.swap(delivered, Relaxed);
            let per_second = delivered.saturating_sub(before).saturating_mul(1000) / elapsed;
            let was = p.busy.load(Relaxed);
            let busy = if was {
                per_second.saturating_mul(4) >= above.saturating_mul(3)
            } else {
                per_second >= above
            };
            if busy != was {
                p.busy.store(busy, Relaxed);
            }
            return busy;
        }
        p.busy.load(Relaxed)
    }

    /// A handshake completed.
    pub(crate) fn socket_opened(&self) {
        self.hot.sockets_opened.fetch_add(1, Relaxed);
    }

    /// A publish accepted outside a socket's task ([`ScHandle::publish`](crate::ScHandle::publish)).
    #[inline]
    pub(crate) fn publish(&self) {
        self.hot.publishes.fetch_add(1, Relaxed);
    }

    /// `n` more operations sent to the store, `failed` more failed (an operation may be counted
    /// when sent and its failure when the store answers).
    #[inline]
    pub(crate) fn store(&self, n: u64, failed: u64) {
        self.cold.store_ops.fetch_add(n, Relaxed);
        if failed != 0 {
            self.cold.store_errors.fetch_add(failed, Relaxed);
        }
    }

    /// One store operation, failed or not.
    #[inline]
    pub(crate) fn store_result<T, E>(&self, r: &Result<T, E>) {
        self.store(1, u64::from(r.is_err()));
    }

    /// A message dropped, or a socket closed, because an outbound queue was full.
    pub(crate) fn queue_drop(&self) {
        self.cold.queue_drops.fetch_add(1, Relaxed);
    }

    /// The counters, with `sockets_open` as given.
    pub(crate) fn snapshot(&self, sockets_open: u64) -> Metrics {
        let (h, c) = (&self.hot, &self.cold);
        Metrics {
            sockets_open,
            sockets_opened: h.sockets_opened.load(Relaxed),
            messages_in: h.messages_in.load(Relaxed),
            messages_out: h.messages_out.load(Relaxed),
            publishes: h.publishes.load(Relaxed),
            deliveries: h.deliveries.load(Relaxed),
            store_ops: c.store_ops.load(Relaxed),
            store_errors: c.store_errors.load(Relaxed),
            queue_drops: c.queue_drops.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn delivered(c: &Counters, n: u32) {
        c.add(Tally {
            deliveries: n,
            ..Tally::default()
        });
    }

    #[test]
    fn busy_from_the_delivery_rate_with_hysteresis() {
        let c = Counters::default();
        let t0 = c.start;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(!c.busy(at(0), 50_000));
        // 2,000 in 20 ms: 100,000/s.
        delivered(&c, 2_000);
        assert!(c.busy(at(20), 50_000));
        // Within the window the answer stands.
        assert!(c.busy(at(30), 50_000));
        // 800 in 20 ms (40,000/s): below the bar but above three quarters of it: still busy.
        delivered(&c, 800);
        assert!(c.busy(at(40), 50_000));
        // 600 in 20 ms (30,000/s): no longer.
        delivered(&c, 600);
        assert!(!c.busy(at(60), 50_000));
        // 900 in 20 ms (45,000/s) from quiet: not yet.
        delivered(&c, 900);
        assert!(!c.busy(at(80), 50_000));
        // A long quiet spell measures as quiet.
        delivered(&c, 1_100);
        assert!(!c.busy(at(10_000), 50_000));
    }

    #[test]
    fn hot_and_cold_counters_do_not_share_a_line() {
        let c = Counters::default();
        let hot = std::ptr::from_ref(&c.hot) as usize;
        let cold = std::ptr::from_ref(&c.cold) as usize;
        assert_eq!(hot % 128, 0);
        assert!(cold.abs_diff(hot) >= 128);
        assert!(std::mem::size_of::<Hot>() <= 128);
    }

    #[test]
    fn a_tally_adds_and_a_snapshot_reads() {
        let c = Counters::default();
        c.add(Tally {
            messages_in: 3,
            messages_out: 2,
            publishes: 1,
            deliveries: 4,
        });
        c.add(Tally::default());
        c.socket_opened();
        c.publish();
        c.store(3, 1);
        c.store_result::<(), ()>(&Err(()));
        c.queue_drop();
        assert_eq!(
            c.snapshot(7),
            Metrics {
                sockets_open: 7,
                sockets_opened: 1,
                messages_in: 3,
                messages_out: 2,
                publishes: 2,
                deliveries: 4,
                store_ops: 4,
                store_errors: 2,
                queue_drops: 1,
            }
        );
    }
}
