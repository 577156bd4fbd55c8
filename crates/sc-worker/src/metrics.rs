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

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
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
    /// Writes that carried at least one delivery (not in [`Metrics`]: it paces holding).
    delivery_writes: AtomicU64,
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

/// Whether sockets should hold publishes (`Config::publish_batch_ms`), decided once per
/// window of [`PACE_WINDOW_MS`] by whichever socket asks first once it has passed, from what
/// the server did in the window (see [`pace`]). On a line of its own: every socket reads
/// `held_from`, one writes the rest every window.
#[derive(Default)]
#[repr(align(128))]
struct Pace {
    /// Milliseconds from `Counters::start` to the current window's start.
    window: AtomicU64,
    /// `deliveries` at the window's start.
    at_window: AtomicU64,
    /// `delivery_writes` at the window's start.
    writes_at_window: AtomicU64,
    /// The process's CPU time at the window's start, in nanoseconds (0: not read yet).
    cpu_at_window: AtomicU64,
    /// The server's cores (its runtime's worker threads, at most the CPUs it may run on),
    /// learnt at the first window (0 until then).
    cores: AtomicU32,
    /// The delivery rate at which holding began; 0 while publishes are not held.
    held_from: AtomicU64,
}

/// The window over which the server's pace is measured.
const PACE_WINDOW_MS: u64 = 20;

/// The share of its cores that a server at least uses when it is out of CPU.
const CPU_SATURATED: f64 = 0.9;

/// Deliveries per write from which sockets find publishes piling up between their writes.
const PILING_UP: f64 = 1.5;

/// What the server did in one window of [`PACE_WINDOW_MS`].
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Publishes delivered to sockets, per second.
    per_second: u64,
    /// Deliveries per write that carried any.
    per_write: f64,
    /// The share of the server's cores its process used; `None` where it cannot be read (the
    /// rate and the writes decide alone).
    cpu: Option<f64>,
}

/// Whether publishes are held in the next window: the delivery rate at which holding began
/// (`held_from`, 0 while not held), given the last window's pace and `above`
/// (`Config::publish_batch_above`).
///
/// Holding trades latency (up to `publish_batch_ms` per publish) for CPU (many publishes per
/// system call), so it begins only when the server is behind: it delivers `above` a second or
/// more, it is out of CPU (at least [`CPU_SATURATED`] of its cores) and its sockets find
/// publishes piled up since their last write ([`PILING_UP`] or more a write). A server with
/// CPU to spare writes each publish at once, at any rate. Holding lowers the CPU used and ends
/// the piling up, so once it began only the rate ends it: a quarter below where it began.
fn pace(held_from: u64, w: Window, above: u64) -> u64 {
    if held_from != 0 {
        if w.per_second.saturating_mul(4) >= held_from.saturating_mul(3) {
            held_from
        } else {
            0
        }
    } else if w.per_second >= above
        && w.per_write >= PILING_UP
        && w.cpu.is_none_or(|c| c >= CPU_SATURATED)
    {
        w.per_second.max(1)
    } else {
        0
    }
}

/// The CPU time this process has used, in nanoseconds (`None` where it cannot be read).
fn process_cpu_ns() -> Option<u64> {
    #[cfg(unix)]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        let secs = u64::try_from(t.tv_sec).ok()?;
        let nanos = u64::try_from(t.tv_nsec).ok()?;
        Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The cores the server runs on: its runtime's worker threads, at most the CPUs this process
/// may use.
fn server_cores() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let workers = tokio::runtime::Handle::try_current().map_or(cpus, |h| h.metrics().num_workers());
    u32::try_from(workers.min(cpus).max(1)).unwrap_or(1)
}

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
    /// Writes that carried at least one delivery.
    pub(crate) delivery_writes: u32,
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
        if t.delivery_writes != 0 {
            h.delivery_writes
                .fetch_add(u64::from(t.delivery_writes), Relaxed);
        }
    }

    /// Whether sockets hold publishes now (see [`pace`]): decided from the last complete
    /// window, as of `now`.
    pub(crate) fn busy(&self, now: Instant, above: u64) -> bool {
        self.busy_with(now, above, process_cpu_ns)
    }

    /// [`Self::busy`] with the process's CPU time read by `cpu_ns`.
    fn busy_with(&self, now: Instant, above: u64, cpu_ns: impl FnOnce() -> Option<u64>) -> bool {
        let p = &self.pace;
        let ms = u64::try_from(now.saturating_duration_since(self.start).as_millis())
            .unwrap_or(u64::MAX);
        let window = p.window.load(Relaxed);
        let elapsed = ms.saturating_sub(window);
        if elapsed < PACE_WINDOW_MS
            || p.window
                .compare_exchange(window, ms, Relaxed, Relaxed)
                .is_err()
        {
            return p.held_from.load(Relaxed) != 0;
        }
        let delivered = self.hot.deliveries.load(Relaxed);
        let delivered = delivered.saturating_sub(p.at_window.swap(delivered, Relaxed));
        let writes = self.hot.delivery_writes.load(Relaxed);
        let writes = writes.saturating_sub(p.writes_at_window.swap(writes, Relaxed));
        let mut cores = p.cores.load(Relaxed);
        if cores == 0 {
            cores = server_cores();
            p.cores.store(cores, Relaxed);
        }
        let cpu = cpu_ns().map(|now_ns| match p.cpu_at_window.swap(now_ns, Relaxed) {
            // The first window: nothing to compare with yet.
            0 => 0.0,
            before => {
                now_ns.saturating_sub(before) as f64 / (elapsed as f64 * 1e6 * f64::from(cores))
            }
        });
        let w = Window {
            per_second: delivered.saturating_mul(1000) / elapsed,
            per_write: delivered as f64 / writes.max(1) as f64,
            cpu,
        };
        let was = p.held_from.load(Relaxed);
        let held = pace(was, w, above);
        if held != was {
            p.held_from.store(held, Relaxed);
            tracing::debug!(
                deliveries_per_second = w.per_second,
                per_write = w.per_write,
                cpu = ?w.cpu,
                "publishes {}",
                if held != 0 { "held" } else { "written at once" }
            );
        }
        held != 0
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

    fn window(per_second: u64, per_write: f64, cpu: Option<f64>) -> Window {
        Window {
            per_second,
            per_write,
            cpu,
        }
    }

    #[test]
    fn publishes_are_held_only_by_a_server_that_is_behind() {
        let above = 50_000;
        // Each publish in a write of its own: the server keeps up, whatever its CPU.
        assert_eq!(pace(0, window(300_000, 1.0, Some(0.95)), above), 0);
        // Publishes piling up, but CPU to spare.
        assert_eq!(pace(0, window(300_000, 3.0, Some(0.6)), above), 0);
        // Below the rate.
        assert_eq!(pace(0, window(40_000, 3.0, Some(1.0)), above), 0);
        // All three: held, from this rate.
        assert_eq!(pace(0, window(300_000, 3.0, Some(0.95)), above), 300_000);
        // Where the CPU cannot be read, the rate and the writes decide.
        assert_eq!(pace(0, window(300_000, 3.0, None), above), 300_000);
        assert_eq!(pace(0, window(300_000, 1.0, None), above), 0);
        // Holding lowers the CPU and ends the piling up: only the rate ends it, a quarter
        // below where it began.
        assert_eq!(
            pace(300_000, window(230_000, 1.0, Some(0.3)), above),
            300_000
        );
        assert_eq!(pace(300_000, window(220_000, 1.0, Some(0.3)), above), 0);
    }

    #[test]
    fn busy_from_each_window_with_hysteresis() {
        let c = Counters::default();
        c.pace.cores.store(1, Relaxed);
        let t0 = c.start;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let tally = |deliveries: u32, writes: u32| {
            c.add(Tally {
                deliveries,
                delivery_writes: writes,
                ..Tally::default()
            });
        };
        let ms = |n: u64| Some(1_000_000_000 + n * 1_000_000);
        assert!(!c.busy_with(at(0), 50_000, || ms(0)));
        // The first window only starts the CPU reading.
        tally(2_000, 500);
        assert!(!c.busy_with(at(20), 50_000, || ms(0)));
        // 2,000 in 20 ms (100,000/s), 4 a write, 19 ms of CPU in 20 ms on one core: behind.
        tally(2_000, 500);
        assert!(c.busy_with(at(40), 50_000, || ms(19)));
        // Within the window the answer stands (and the clock is not read).
        assert!(c.busy_with(at(50), 50_000, || panic!("read within a window")));
        // 1,600 in 20 ms (80,000/s), one a write and little CPU: still held.
        tally(1_600, 1_600);
        assert!(c.busy_with(at(60), 50_000, || ms(24)));
        // 1,400 in 20 ms (70,000/s): below three quarters of 100,000/s: no longer.
        tally(1_400, 1_400);
        assert!(!c.busy_with(at(80), 50_000, || ms(28)));
        // The same rate one a write, with the CPU saturated: not behind.
        tally(2_000, 2_000);
        assert!(!c.busy_with(at(100), 50_000, || ms(48)));
        // Piling up with CPU to spare: not behind either.
        tally(2_000, 500);
        assert!(!c.busy_with(at(120), 50_000, || ms(58)));
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
            delivery_writes: 2,
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
