//! Per-address limits: how many sockets (or TCP connections) one client address holds at once,
//! and how fast it may open new ones (a token bucket per address). IPv6 addresses count per /64,
//! the block one host or home usually gets.
//!
//! An admitted connection holds an [`AddrSlot`]; dropping it gives the place back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// An address as counted: IPv4 as its IPv6-mapped form, IPv6 cut to its /64. Two `u64`s, not
/// a `u128`: every socket holds one (in its [`AddrSlot`]), and a `u128` would align it to 16.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct AddrKey([u64; 2]);

impl AddrKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        let bits = match ip {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u128::from(v4.to_ipv6_mapped()),
                None => u128::from(v6) & !((1u128 << 64) - 1),
            },
        };
        AddrKey([(bits >> 64) as u64, bits as u64])
    }
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address holds its limit of open connections.
    TooMany,
    /// The address opened its burst and more than its rate since.
    Rate,
    /// The server holds `max_connections`.
    Full,
    /// The server is shutting down.
    ShuttingDown,
}

impl Refusal {
    /// The HTTP status of the refusal: 429 for the address's limits, 503 for the server's.
    pub fn status(self) -> http::StatusCode {
        match self {
            Refusal::TooMany | Refusal::Rate => http::StatusCode::TOO_MANY_REQUESTS,
            Refusal::Full | Refusal::ShuttingDown => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The text of the refusal's response body.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::TooMany => "Too many connections from this address",
            Refusal::Rate => "Connection rate limit exceeded",
            Refusal::Full => "Too many connections",
            Refusal::ShuttingDown => "Server is shutting down",
        }
    }
}

struct Entry {
    open: usize,
    tokens: f64,
    at: Instant,
}

impl Entry {
    /// Refills the bucket up to `now`.
    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        if rate > 0.0 {
            let dt = now.saturating_duration_since(self.at).as_secs_f64();
            self.tokens = dt.mul_add(rate, self.tokens).min(burst);
        }
        self.at = now;
    }
}

struct Table {
    map: HashMap<AddrKey, Entry, foldhash::fast::RandomState>,
    /// The size at which entries with nothing open and a full bucket are dropped.
    prune_at: usize,
}

/// The limits of one server (or listener) and the addresses it counts: how many connections one
/// address holds at once and how fast it opens new ones. Shared (`Arc`) by every connection it
/// admitted.
pub struct AddressLimits {
    /// Open at once per address; 0 = none.
    limit: usize,
    /// New ones per second per address; 0 = none.
    rate: f64,
    burst: f64,
    table: Mutex<Table>,
    /// Told each time a place is given back.
    released: tokio::sync::Notify,
}

const PRUNE_MIN: usize = 1024;

impl std::fmt::Debug for AddressLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressLimits")
            .field("limit", &self.limit)
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AddrSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AddrSlot")
            .field(&self.0.as_ref().map(|(_, k)| k))
            .finish()
    }
}

impl AddressLimits {
    /// `limit` connections at once per address (0 = none), `rate` new ones per second after a
    /// `burst` (rate 0 = none).
    pub fn new(limit: usize, rate: u32, burst: u32) -> Arc<Self> {
        Arc::new(AddressLimits {
            limit,
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            table: Mutex::new(Table {
                map: HashMap::default(),
                prune_at: PRUNE_MIN,
            }),
            released: tokio::sync::Notify::new(),
        })
    }

    /// Completes once a place is given back (a connection counted here ended) after this call,
    /// polled or not: for whoever waits for room, such as a client that was refused.
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    fn enabled(&self) -> bool {
        self.limit > 0 || self.rate > 0.0
    }

    /// Whether `ip` could open one more now (nothing is counted).
    pub(crate) fn check(&self, ip: Option<IpAddr>) -> Result<(), Refusal> {
        let Some(ip) = ip.filter(|_| self.enabled()) else {
            return Ok(());
        };
        let mut table = self.table.lock();
        match table.map.get_mut(&AddrKey::of(ip)) {
            Some(e) => self.admits(e, Instant::now()),
            None => Ok(()),
        }
    }

    fn admits(&self, e: &mut Entry, now: Instant) -> Result<(), Refusal> {
        if self.limit > 0 && e.open >= self.limit {
            return Err(Refusal::TooMany);
        }
        e.refill(self.rate, self.burst, now);
        if self.rate > 0.0 && e.tokens < 1.0 {
            return Err(Refusal::Rate);
        }
        Ok(())
    }

    /// Counts one more connection of `ip`, or says why not. `None` (an unknown address) is
    /// not limited.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<AddrSlot, Refusal> {
        let Some(ip) = ip.filter(|_| self.enabled()) else {
            return Ok(AddrSlot(None));
        };
        let key = AddrKey::of(ip);
        let now = Instant::now();
        let mut table = self.table.lock();
        if !table.map.contains_key(&key) && table.map.len() >= table.prune_at {
            self.prune(&mut table, now);
        }
        let e = table.map.entry(key).or_insert(Entry {
            open: 0,
            tokens: self.burst,
            at: now,
        });
        self.admits(e, now)?;
        e.open += 1;
        if self.rate > 0.0 {
            e.tokens -= 1.0;
        }
        Ok(AddrSlot(Some((self.clone(), key))))
    }

    /// Drops the entries that hold nothing and whose bucket is full again: they are what a new
    /// entry would be.
    fn prune(&self, table: &mut Table, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        table.map.retain(|_, e| {
            e.refill(rate, burst, now);
            e.open > 0 || (rate > 0.0 && e.tokens < burst)
        });
        table.prune_at = (table.map.len() * 2).max(PRUNE_MIN);
    }

    fn release(&self, key: AddrKey) {
        {
            let mut table = self.table.lock();
            if let Some(e) = table.map.get_mut(&key) {
                e.open = e.open.saturating_sub(1);
                if e.open == 0 && self.rate == 0.0 {
                    table.map.remove(&key);
                }
            }
        }
        self.released.notify_waiters();
    }

    /// Connections open from `ip` (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn open(&self, ip: IpAddr) -> usize {
        self.table
            .lock()
            .map
            .get(&AddrKey::of(ip))
            .map_or(0, |e| e.open)
    }
}

/// One admitted connection's place in its address's count, given back on drop.
#[must_use]
pub struct AddrSlot(Option<(Arc<AddressLimits>, AddrKey)>);

impl AddrSlot {
    /// A slot that counts nothing (for connections that are not limited).
    pub fn none() -> Self {
        AddrSlot(None)
    }
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        if let Some((limits, key)) = self.0.take() {
            limits.release(key);
        }
    }
}

/// A token bucket of one socket's inbound messages and bytes per second, each holding one
/// second's worth.
pub(crate) struct InboundRate {
    messages: f64,
    bytes: f64,
    msg_tokens: f64,
    byte_tokens: f64,
    at: tokio::time::Instant,
}

impl InboundRate {
    /// `None` when both rates are 0 (no limit). Boxed: a socket without a limit holds a
    /// pointer's worth for it.
    pub(crate) fn new(messages: u32, bytes: u64) -> Option<Box<Self>> {
        if messages == 0 && bytes == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let bytes = bytes as f64;
        Some(Box::new(InboundRate {
            messages: f64::from(messages),
            bytes,
            msg_tokens: f64::from(messages),
            byte_tokens: bytes,
            at: tokio::time::Instant::now(),
        }))
    }

    /// Takes one message of `len` bytes; false when either bucket is empty.
    pub(crate) fn take(&mut self, len: usize) -> bool {
        let now = tokio::time::Instant::now();
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        if self.messages > 0.0 {
            self.msg_tokens = dt
                .mul_add(self.messages, self.msg_tokens)
                .min(self.messages);
            if self.msg_tokens < 1.0 {
                return false;
            }
            self.msg_tokens -= 1.0;
        }
        if self.bytes > 0.0 {
            self.byte_tokens = dt.mul_add(self.bytes, self.byte_tokens).min(self.bytes);
            #[allow(clippy::cast_precision_loss)]
            let len = len as f64;
            if self.byte_tokens < len {
                return false;
            }
            self.byte_tokens -= len;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn open_limit_per_address_and_release() {
        let l = AddressLimits::new(2, 0, 0);
        let a = l.admit(ip("10.0.0.1")).unwrap();
        let _b = l.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            l.admit(ip("10.0.0.1")).err(),
            Some(Refusal::TooMany),
            "the third from one address"
        );
        assert_eq!(l.check(ip("10.0.0.1")), Err(Refusal::TooMany));
        // Another address is counted apart; an unknown one is not limited.
        let _c = l.admit(ip("10.0.0.2")).unwrap();
        let _d = l.admit(None).unwrap();
        drop(a);
        assert_eq!(l.open("10.0.0.1".parse().unwrap()), 1);
        let _e = l.admit(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let l = AddressLimits::new(1, 0, 0);
        let _a = l.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            l.admit(ip("2001:db8:1:2:ffff::9")).err(),
            Some(Refusal::TooMany)
        );
        let _b = l.admit(ip("2001:db8:1:3::1")).unwrap();
        let _c = l.admit(ip("192.0.2.7")).unwrap();
        assert_eq!(
            l.admit(ip("::ffff:192.0.2.7")).err(),
            Some(Refusal::TooMany)
        );
    }

    #[test]
    fn rate_after_burst() {
        let l = AddressLimits::new(0, 1, 3);
        let slots: Vec<_> = (0..3).map(|_| l.admit(ip("10.0.0.1")).unwrap()).collect();
        drop(slots);
        // Closing does not give the tokens back: the burst is spent.
        assert_eq!(l.admit(ip("10.0.0.1")).err(), Some(Refusal::Rate));
        assert_eq!(l.check(ip("10.0.0.1")), Err(Refusal::Rate));
        let _other = l.admit(ip("10.0.0.2")).unwrap();
    }

    #[test]
    fn pruning_keeps_what_counts() {
        let l = AddressLimits::new(1, 1, 1);
        let held = l.admit(ip("10.9.9.9")).unwrap();
        for i in 0..3000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(l.admit(Some(a)).unwrap());
        }
        // Entries with a spent bucket stay (their limit holds) while pruning runs.
        assert_eq!(l.table.lock().map.len(), 3001);
        assert_eq!(l.admit(ip("10.9.9.9")).err(), Some(Refusal::TooMany));
        drop(held);
        assert_eq!(l.admit(ip("10.0.0.0")).err(), Some(Refusal::Rate));
        // Buckets that refill at once: entries holding nothing are pruned.
        let fast = AddressLimits::new(1, u32::MAX, 1);
        let held = fast.admit(ip("10.9.9.9")).unwrap();
        for i in 0..3000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(fast.admit(Some(a)).unwrap());
        }
        assert!(fast.table.lock().map.len() < 2 * PRUNE_MIN, "pruned");
        assert_eq!(fast.admit(ip("10.9.9.9")).err(), Some(Refusal::TooMany));
        drop(held);
    }

    #[test]
    fn disabled_limits_count_nothing() {
        let l = AddressLimits::new(0, 0, 0);
        let held: Vec<_> = (0..10).map(|_| l.admit(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(held.len(), 10);
        assert!(l.table.lock().map.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn inbound_rate_messages_and_bytes() {
        let mut r = InboundRate::new(3, 0).unwrap();
        assert!(r.take(10) && r.take(10) && r.take(10));
        assert!(!r.take(10));
        tokio::time::advance(std::time::Duration::from_millis(340)).await;
        assert!(r.take(10));
        let mut b = InboundRate::new(0, 100).unwrap();
        assert!(b.take(60));
        assert!(!b.take(60));
        tokio::time::advance(std::time::Duration::from_millis(300)).await;
        assert!(b.take(60));
        assert!(InboundRate::new(0, 0).is_none());
    }
}
