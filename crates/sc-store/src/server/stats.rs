//! Counters of a store server, readable from any thread while the server runs on its own.
//!
//! The server's thread keeps its per-command counts in plain integers and adds them to the
//! shared atomics once per batch of pipelined commands (and after each expiry sweep), so a
//! command costs no atomic operation. A reader sees every batch whose replies were written.
//!
//! ```
//! use std::sync::Arc;
//! use sc_store::server::{ServerConfig, Stats, StatsSnapshot};
//!
//! let config = ServerConfig::default();
//! let stats: Arc<Stats> = config.stats.clone(); // keep it; hand `config` to the server
//! assert_eq!(stats.snapshot(), StatsSnapshot::default());
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

/// The live counters of one store server (see [`ServerConfig::stats`](super::ServerConfig::stats)
/// and [`ServerHandle::stats`](super::ServerHandle::stats)). Every field is a relaxed atomic:
/// read them with [`snapshot`](Self::snapshot) from any thread.
#[derive(Debug, Default)]
pub struct Stats {
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    commands: AtomicU64,
    publishes: AtomicU64,
    deliveries: AtomicU64,
    keys: AtomicU64,
}

/// The counters of a store server at one moment (each field read on its own: fields may be from
/// slightly different moments).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Client connections open now (gauge).
    pub connections_open: u64,
    /// Client connections accepted since the start; those turned away because `max_clients`
    /// were open are not counted.
    pub connections_total: u64,
    /// Commands executed (store operations, `PING` and the like included; each command of a
    /// `MULTI` counts when its `EXEC` runs it, and the `EXEC` too). Commands answered with an
    /// error before they ran (unknown, wrong number of arguments, `NOAUTH`, queued by `MULTI`)
    /// are not counted.
    pub commands: u64,
    /// `PUBLISH` commands executed.
    pub publishes: u64,
    /// Messages queued for subscribers: each `PUBLISH` adds its number of subscribers, except a
    /// subscriber over `max_output_buffer` (disconnected instead).
    pub deliveries: u64,
    /// Keys in the key space (gauge), counting expired keys the sweep has not removed yet (it
    /// runs every `sweep_interval`, 100 ms by default). Updated after each batch of commands
    /// and each sweep.
    pub keys: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            publishes: self.publishes.load(Ordering::Relaxed),
            deliveries: self.deliveries.load(Ordering::Relaxed),
            keys: self.keys.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Adds the counts of a batch and sets the number of keys.
    pub(crate) fn add(&self, counts: &mut Counts, keys: usize) {
        let c = std::mem::take(counts);
        if c.commands > 0 {
            self.commands.fetch_add(c.commands, Ordering::Relaxed);
        }
        if c.publishes > 0 {
            self.publishes.fetch_add(c.publishes, Ordering::Relaxed);
        }
        if c.deliveries > 0 {
            self.deliveries.fetch_add(c.deliveries, Ordering::Relaxed);
        }
        self.keys
            .store(u64::try_from(keys).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Counts of the server's thread not yet added to its [`Stats`] (plain integers: one command
/// costs no atomic operation).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) commands: u64,
    pub(crate) publishes: u64,
    pub(crate) deliveries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_added_once_and_keys_set() {
        let s = Stats::default();
        s.connection_opened();
        s.connection_opened();
        s.connection_closed();
        let mut c = Counts {
            commands: 5,
            publishes: 2,
            deliveries: 7,
        };
        s.add(&mut c, 3);
        s.add(&mut c, 4);
        assert_eq!(
            s.snapshot(),
            StatsSnapshot {
                connections_open: 1,
                connections_total: 2,
                commands: 5,
                publishes: 2,
                deliveries: 7,
                keys: 4,
            }
        );
    }
}
