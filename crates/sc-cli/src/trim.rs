//! Gives memory back to the OS after many sockets closed.
//!
//! glibc's malloc keeps what a process freed in its arenas: after a flood of short-lived
//! connections (engine.io sessions opened and reclaimed, say) the server held tens of MiB it no
//! longer used, for good. `malloc_trim(0)` returns the free pages. It is called from a blocking
//! thread, at most every [`MIN_INTERVAL`], once [`CLOSED_BEFORE_TRIM`] sockets closed since the
//! last call, or once any socket closed while the process holds [`GROWN_BEFORE_TRIM`] more than
//! after the last call (a few sockets that held large messages); a server without churn never
//! calls it. Other platforms and allocators: nothing.
#![allow(unsafe_code)]

use std::time::Duration;

use sc_worker::ScHandle;

/// Sockets that must close before a trim is worth it.
const CLOSED_BEFORE_TRIM: u64 = 256;
/// Growth of the resident memory since the last trim that makes one worth it after any close.
const GROWN_BEFORE_TRIM: u64 = 16 << 20;
/// The shortest time between two trims (each walks the heap with its arenas locked).
const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// How often the closed count is looked at.
const TICK: Duration = Duration::from_secs(1);

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: glibc's malloc_trim takes no pointers and may be called from any thread.
    unsafe { malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

/// Runs until the server shuts down: trims after churn.
pub(crate) async fn after_churn(handle: ScHandle) {
    let stop = handle.shutdown_signal();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trimmed_at = handle.closed_count();
    let mut last = tokio::time::Instant::now();
    let mut rss_after = rss_bytes().unwrap_or(0);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let closed = handle.closed_count();
        if closed == trimmed_at || last.elapsed() < MIN_INTERVAL {
            continue;
        }
        let grown = rss_bytes().is_some_and(|r| r > rss_after + GROWN_BEFORE_TRIM);
        if closed - trimmed_at < CLOSED_BEFORE_TRIM && !grown {
            continue;
        }
        trimmed_at = closed;
        last = tokio::time::Instant::now();
        match tokio::task::spawn_blocking(trim).await {
            Ok(released) => tracing::debug!(closed, released, "malloc_trim after churn"),
            Err(e) => tracing::debug!(error = %e, "malloc_trim task failed"),
        }
        rss_after = rss_bytes().unwrap_or(0);
    }
}

/// This process's resident memory (`VmRSS`), where /proc tells it.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
