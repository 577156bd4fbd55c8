//! Channel history: each recorded publish gets a [`Position`] (an offset, gap-free per channel,
//! and the history's epoch), and the last messages of a channel can be read back after a
//! position, so a subscriber that was away gets what it missed or learns that it cannot.
//!
//! The engine here is the one of [`MemoryStore`](crate::MemoryStore) and of the
//! store server; Redis keeps the same records in keys of its own (see
//! [`RespStore`](crate::RespStore)). A recorded publish reaches subscribers as an envelope
//! ([`encode_envelope`]) that carries its position in front of the message; [`decode_envelope`]
//! takes it apart.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::db::Hasher;

/// Where a message sits in its channel's history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// 1 for the first message recorded in this epoch, then one more for each.
    pub offset: u64,
    /// Names one life of the channel's history: a new epoch starts when the history is lost
    /// (a store restarted, the history expired), and offsets of another epoch say nothing about
    /// this one.
    pub epoch: String,
}

/// How much of a channel's history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Messages kept (the oldest go first). At least 1.
    pub max_len: u64,
    /// How long the history is kept after the last publish; also the longest a message is kept.
    pub max_age: Duration,
}

/// What [`Store::history`](crate::Store::history) read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The epoch of the channel's history (a new one when the channel has none yet).
    pub epoch: String,
    /// The offset of the last message recorded (0: none in this epoch).
    pub latest: u64,
    /// The messages after the requested offset, oldest first, at most the requested number.
    pub records: Vec<(u64, Bytes)>,
    /// Whether `records` starts right after the requested offset: false when messages after it
    /// are no longer kept (or the offset is beyond `latest`).
    pub complete: bool,
}

/// A new epoch: 16 hex digits, from the clock and this process's random hash keys (unique, not
/// secret).
pub(crate) fn new_epoch() -> String {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let hash = std::collections::hash_map::RandomState::new().hash_one(nanos);
    format!("{hash:016x}")
}

/// The envelope of a recorded publish: `#<offset>:<epoch>:<message>`.
pub fn encode_envelope(position: &Position, message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(message.len() + position.epoch.len() + 24);
    b.put_u8(b'#');
    b.put_slice(position.offset.to_string().as_bytes());
    b.put_u8(b':');
    b.put_slice(position.epoch.as_bytes());
    b.put_u8(b':');
    b.put_slice(message);
    b.freeze()
}

/// The position and the message of an envelope written by [`encode_envelope`]; `None` when
/// `bytes` is not one.
pub fn decode_envelope(bytes: &Bytes) -> Option<(Position, Bytes)> {
    let rest = bytes.strip_prefix(b"#")?;
    let colon = rest.iter().position(|b| *b == b':')?;
    let digits = &rest[..colon];
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let offset: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let rest = &rest[colon + 1..];
    let colon2 = rest.iter().position(|b| *b == b':')?;
    let epoch = std::str::from_utf8(&rest[..colon2]).ok()?;
    if epoch.is_empty() || epoch.len() > 64 {
        return None;
    }
    let start = 1 + colon + 1 + colon2 + 1;
    Some((
        Position {
            offset,
            epoch: epoch.to_owned(),
        },
        bytes.slice(start..),
    ))
}

/// One channel's history.
#[derive(Debug)]
struct Channel {
    epoch: String,
    latest: u64,
    /// Offset, time recorded, message; oldest first.
    records: VecDeque<(u64, Instant, Bytes)>,
    /// When the whole history goes (`max_age` after the last publish).
    expires: Instant,
    /// The limits of the last publish (ages are checked on read too).
    limits: HistoryLimits,
}

impl Channel {
    fn trim(&mut self, now: Instant) {
        let limits = self.limits;
        let max_len = usize::try_from(limits.max_len.max(1)).unwrap_or(usize::MAX);
        while self.records.len() > max_len {
            self.records.pop_front();
        }
        while self
            .records
            .front()
            .is_some_and(|(_, at, _)| now.duration_since(*at) >= limits.max_age)
        {
            self.records.pop_front();
        }
    }
}

/// The histories of every channel of one store.
#[derive(Debug, Default)]
pub(crate) struct Histories {
    channels: HashMap<Bytes, Channel, Hasher>,
}

impl Histories {
    fn live(&mut self, channel: &[u8], now: Instant) -> Option<&mut Channel> {
        if self.channels.get(channel).is_some_and(|c| c.expires <= now) {
            self.channels.remove(channel);
        }
        self.channels.get_mut(channel)
    }

    /// Records `message` on `channel`: its position.
    pub(crate) fn record(
        &mut self,
        channel: &[u8],
        message: Bytes,
        limits: HistoryLimits,
    ) -> Position {
        let now = Instant::now();
        let expires = now.checked_add(limits.max_age).unwrap_or(now);
        // An expired history is dropped first, so the entry below starts a new epoch.
        self.live(channel, now);
        let c = self
            .channels
            .entry(Bytes::copy_from_slice(channel))
            .or_insert_with(|| Channel {
                epoch: new_epoch(),
                latest: 0,
                records: VecDeque::new(),
                expires,
                limits,
            });
        c.latest += 1;
        c.expires = expires;
        c.limits = limits;
        c.records.push_back((c.latest, now, message));
        c.trim(now);
        Position {
            offset: c.latest,
            epoch: c.epoch.clone(),
        }
    }

    /// The messages of `channel` after `after` (all kept with `None`), at most `limit`. A
    /// channel without a history starts one (an epoch with nothing recorded yet, kept as long as
    /// `limits` keep a publish), so a reader's position stays valid for the publishes that follow.
    pub(crate) fn read(
        &mut self,
        channel: &[u8],
        after: Option<u64>,
        limit: usize,
        limits: HistoryLimits,
    ) -> History {
        let now = Instant::now();
        if self.live(channel, now).is_none() {
            self.channels.insert(
                Bytes::copy_from_slice(channel),
                Channel {
                    epoch: new_epoch(),
                    latest: 0,
                    records: VecDeque::new(),
                    expires: now.checked_add(limits.max_age).unwrap_or(now),
                    limits,
                },
            );
        }
        let Some(c) = self.channels.get_mut(channel) else {
            return History {
                epoch: new_epoch(),
                latest: 0,
                records: Vec::new(),
                complete: false,
            };
        };
        c.trim(now);
        let from = after.unwrap_or(0);
        let first_kept = c.records.front().map_or(c.latest + 1, |r| r.0);
        let complete = from <= c.latest && (from + 1 >= first_kept || after.is_none());
        let records = c
            .records
            .iter()
            .filter(|r| r.0 > from)
            .take(limit)
            .map(|r| (r.0, r.2.clone()))
            .collect();
        History {
            epoch: c.epoch.clone(),
            latest: c.latest,
            records,
            complete,
        }
    }

    /// Removes histories whose age has passed; how many.
    pub(crate) fn sweep(&mut self) -> usize {
        let now = Instant::now();
        let before = self.channels.len();
        self.channels.retain(|_, c| c.expires > now);
        before - self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HistoryLimits = HistoryLimits {
        max_len: 3,
        max_age: Duration::from_secs(60),
    };

    #[test]
    fn offsets_count_from_one_in_one_epoch_and_the_oldest_go_first() {
        let mut h = Histories::default();
        let p: Vec<Position> = (1..=5)
            .map(|i| h.record(b"ch", Bytes::from(format!("m{i}")), LIMITS))
            .collect();
        assert_eq!(
            p.iter().map(|p| p.offset).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert!(p.iter().all(|x| x.epoch == p[0].epoch));
        let r = h.read(b"ch", Some(3), 10, LIMITS);
        assert_eq!(r.latest, 5);
        assert!(r.complete);
        assert_eq!(
            r.records,
            vec![(4, Bytes::from("m4")), (5, Bytes::from("m5"))]
        );
        // 1 and 2 are gone: a reader after 1 cannot be served in full.
        let r = h.read(b"ch", Some(1), 10, LIMITS);
        assert!(!r.complete);
        assert_eq!(r.records.first().map(|x| x.0), Some(3));
        // Up to date, and the limit.
        assert!(h.read(b"ch", Some(5), 10, LIMITS).complete);
        assert_eq!(h.read(b"ch", Some(2), 1, LIMITS).records.len(), 1);
        // Beyond the latest offset: not a position of this history.
        assert!(!h.read(b"ch", Some(9), 10, LIMITS).complete);
    }

    #[test]
    fn an_expired_history_starts_a_new_epoch() {
        let mut h = Histories::default();
        let short = HistoryLimits {
            max_len: 10,
            max_age: Duration::from_millis(0),
        };
        let a = h.record(b"ch", Bytes::from("a"), short);
        let b = h.record(b"ch", Bytes::from("b"), short);
        assert_ne!(a.epoch, b.epoch);
        assert_eq!(b.offset, 1);
        assert_eq!(h.sweep(), 1);
        let r = h.read(b"ch", Some(1), 10, LIMITS);
        assert_eq!(r.latest, 0);
        assert!(!r.complete);
        assert!(r.records.is_empty());
    }

    #[test]
    fn a_read_of_an_empty_history_keeps_its_epoch_for_the_publishes_that_follow() {
        let mut h = Histories::default();
        let r = h.read(b"ch", None, 10, LIMITS);
        assert_eq!((r.latest, r.complete), (0, true));
        assert_eq!(h.read(b"ch", Some(0), 10, LIMITS).epoch, r.epoch);
        let p = h.record(b"ch", Bytes::from("a"), LIMITS);
        assert_eq!((p.offset, p.epoch.as_str()), (1, r.epoch.as_str()));
        let after = h.read(b"ch", Some(0), 10, LIMITS);
        assert!(after.complete);
        assert_eq!(after.records, vec![(1, Bytes::from("a"))]);
    }

    #[test]
    fn envelopes_round_trip_and_other_bytes_are_not_envelopes() {
        let p = Position {
            offset: 42,
            epoch: "00ff".to_owned(),
        };
        let e = encode_envelope(&p, br#"{"a":1}"#);
        assert_eq!(&e[..], br##"#42:00ff:{"a":1}"##);
        let (q, m) = decode_envelope(&e).unwrap();
        assert_eq!(q, p);
        assert_eq!(&m[..], br#"{"a":1}"#);
        for bad in [&b"{}"[..], b"#:e:x", b"#1x:e:x", b"#1::x", b"#1:e", b""] {
            assert!(decode_envelope(&Bytes::copy_from_slice(bad)).is_none());
        }
    }
}
