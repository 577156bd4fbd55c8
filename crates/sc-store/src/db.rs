//! The data engine shared by [`MemoryStore`](crate::MemoryStore) and the store server: values,
//! maps and lists under byte-string keys, with TTLs expired lazily on access and by a sweep.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The hash builder of every map in the engine.
pub(crate) type Hasher = foldhash::fast::RandomState;

/// The engine's error: the key holds another kind of value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WrongType;

/// A value under a key.
#[derive(Debug)]
pub(crate) enum Value {
    /// A plain byte string.
    Str(Bytes),
    /// A map of fields to byte strings.
    Map(HashMap<Bytes, Bytes, Hasher>),
    /// A list of byte strings.
    List(VecDeque<Bytes>),
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expires: Option<Instant>,
}

/// Remaining time to live of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTtl {
    /// The key does not exist.
    Missing,
    /// The key exists and never expires.
    Persistent,
    /// The key expires after this long.
    Expires(Duration),
}

/// The key space.
#[derive(Debug, Default)]
pub(crate) struct Db {
    map: HashMap<Bytes, Entry, Hasher>,
    /// Expiry deadlines; stale entries (the key was renewed or removed) are skipped when popped.
    deadlines: BinaryHeap<Reverse<(Instant, Bytes)>>,
}

fn deadline(ttl: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

impl Db {
    /// The live entry under `key`, removing it first if it has expired.
    fn live(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let expired = match self.map.get(key) {
            None => return None,
            Some(e) => e.expires.is_some_and(|t| t <= Instant::now()),
        };
        if expired {
            self.map.remove(key);
            return None;
        }
        self.map.get_mut(key)
    }

    fn schedule(&mut self, key: Bytes, at: Instant) {
        self.deadlines.push(Reverse((at, key)));
    }

    /// Removes expired keys whose deadline has passed, at most `budget` heap entries per call.
    /// Returns how many keys were removed.
    pub(crate) fn sweep(&mut self, budget: usize) -> usize {
        let now = Instant::now();
        let mut removed = 0;
        for _ in 0..budget {
            match self.deadlines.peek() {
                Some(Reverse((at, _))) if *at <= now => {}
                _ => break,
            }
            let Some(Reverse((at, key))) = self.deadlines.pop() else {
                break;
            };
            if self.map.get(&key).is_some_and(|e| e.expires == Some(at)) {
                self.map.remove(&key);
                removed += 1;
            }
        }
        // Renewals leave stale deadlines behind; rebuild when they dominate the heap.
        if self.deadlines.len() > 1024 && self.deadlines.len() > 4 * self.map.len() {
            let map = &self.map;
            self.deadlines
                .retain(|Reverse((at, k))| map.get(k).is_some_and(|e| e.expires == Some(*at)));
        }
        removed
    }

    /// Number of keys, counting expired keys not yet swept.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// `SET key value [PX ttl]`: replaces any value and any TTL.
    pub(crate) fn set(&mut self, key: &[u8], value: Bytes, ttl: Option<Duration>) {
        let expires = ttl.map(deadline);
        if let Some(e) = self.map.get_mut(key) {
            e.value = Value::Str(value);
            e.expires = expires;
        } else {
            self.map.insert(
                Bytes::copy_from_slice(key),
                Entry {
                    value: Value::Str(value),
                    expires,
                },
            );
        }
        if let Some(at) = expires {
            self.schedule(Bytes::copy_from_slice(key), at);
        }
    }

    /// `GET key`.
    pub(crate) fn get(&mut self, key: &[u8]) -> Result<Option<Bytes>, WrongType> {
        // One lookup on the hot path; the expired case removes the key afterwards.
        match self.map.get(key) {
            None => return Ok(None),
            Some(e) if e.expires.is_none_or(|t| t > Instant::now()) => {
                return match &e.value {
                    Value::Str(v) => Ok(Some(v.clone())),
                    _ => Err(WrongType),
                };
            }
            Some(_) => {}
        }
        self.map.remove(key);
        Ok(None)
    }

    /// `DEL key`: whether a key was removed.
    pub(crate) fn remove(&mut self, key: &[u8]) -> bool {
        self.live(key).is_some() && self.map.remove(key).is_some()
    }

    /// `EXISTS key`.
    pub(crate) fn has(&mut self, key: &[u8]) -> bool {
        self.live(key).is_some()
    }

    /// `PEXPIRE key ttl`: whether the key exists (and now expires).
    pub(crate) fn expire(&mut self, key: &[u8], ttl: Duration) -> bool {
        let at = deadline(ttl);
        match self.live(key) {
            None => false,
            Some(e) => {
                e.expires = Some(at);
                self.schedule(Bytes::copy_from_slice(key), at);
                true
            }
        }
    }

    /// `PERSIST key`: whether a TTL was removed.
    pub(crate) fn persist(&mut self, key: &[u8]) -> bool {
        match self.live(key) {
            Some(e) if e.expires.is_some() => {
                e.expires = None;
                true
            }
            _ => false,
        }
    }

    /// `PTTL key`.
    pub(crate) fn ttl(&mut self, key: &[u8]) -> KeyTtl {
        match self.live(key) {
            None => KeyTtl::Missing,
            Some(Entry { expires: None, .. }) => KeyTtl::Persistent,
            Some(Entry {
                expires: Some(at), ..
            }) => KeyTtl::Expires(at.saturating_duration_since(Instant::now())),
        }
    }

    /// `HSET key field value`: whether the field is new.
    pub(crate) fn map_set(
        &mut self,
        key: &[u8],
        field: &[u8],
        value: Bytes,
    ) -> Result<bool, WrongType> {
        if self.live(key).is_none() {
            self.map.insert(
                Bytes::copy_from_slice(key),
                Entry {
                    value: Value::Map(HashMap::default()),
                    expires: None,
                },
            );
        }
        match self.map.get_mut(key) {
            Some(Entry {
                value: Value::Map(m),
                ..
            }) => {
                if let Some(v) = m.get_mut(field) {
                    *v = value;
                    Ok(false)
                } else {
                    m.insert(Bytes::copy_from_slice(field), value);
                    Ok(true)
                }
            }
            _ => Err(WrongType),
        }
    }

    fn map_ref(
        &mut self,
        key: &[u8],
    ) -> Result<Option<&mut HashMap<Bytes, Bytes, Hasher>>, WrongType> {
        match self.live(key) {
            None => Ok(None),
            Some(Entry {
                value: Value::Map(m),
                ..
            }) => Ok(Some(m)),
            Some(_) => Err(WrongType),
        }
    }

    /// `HGET key field`.
    pub(crate) fn map_get(&mut self, key: &[u8], field: &[u8]) -> Result<Option<Bytes>, WrongType> {
        Ok(self.map_ref(key)?.and_then(|m| m.get(field).cloned()))
    }

    /// `HGETALL key`.
    pub(crate) fn map_get_all(&mut self, key: &[u8]) -> Result<Vec<(Bytes, Bytes)>, WrongType> {
        Ok(self
            .map_ref(key)?
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    /// `HDEL key field`: whether the field existed. An emptied map removes the key.
    pub(crate) fn map_remove(&mut self, key: &[u8], field: &[u8]) -> Result<bool, WrongType> {
        let Some(m) = self.map_ref(key)? else {
            return Ok(false);
        };
        let removed = m.remove(field).is_some();
        if m.is_empty() {
            self.map.remove(key);
        }
        Ok(removed)
    }

    fn list_ref(&mut self, key: &[u8]) -> Result<Option<&mut VecDeque<Bytes>>, WrongType> {
        match self.live(key) {
            None => Ok(None),
            Some(Entry {
                value: Value::List(l),
                ..
            }) => Ok(Some(l)),
            Some(_) => Err(WrongType),
        }
    }

    /// `RPUSH key value...`: the new length.
    pub(crate) fn list_push(
        &mut self,
        key: &[u8],
        values: impl IntoIterator<Item = Bytes>,
    ) -> Result<usize, WrongType> {
        if self.live(key).is_none() {
            self.map.insert(
                Bytes::copy_from_slice(key),
                Entry {
                    value: Value::List(VecDeque::new()),
                    expires: None,
                },
            );
        }
        match self.list_ref(key)? {
            Some(l) => {
                l.extend(values);
                let len = l.len();
                if len == 0 {
                    self.map.remove(key);
                }
                Ok(len)
            }
            None => Ok(0),
        }
    }

    /// `LRANGE key start stop` (inclusive, negative indexes count from the end).
    pub(crate) fn list_range(
        &mut self,
        key: &[u8],
        start: i64,
        stop: i64,
    ) -> Result<Vec<Bytes>, WrongType> {
        let Some(l) = self.list_ref(key)? else {
            return Ok(Vec::new());
        };
        let len = i64::try_from(l.len()).unwrap_or(i64::MAX);
        let start = if start < 0 {
            (len + start).max(0)
        } else {
            start
        };
        let stop = if stop < 0 {
            len + stop
        } else {
            stop.min(len - 1)
        };
        if start > stop || start >= len {
            return Ok(Vec::new());
        }
        let (start, stop) = (
            usize::try_from(start).unwrap_or(0),
            usize::try_from(stop).unwrap_or(0),
        );
        Ok(l.range(start..=stop).cloned().collect())
    }

    /// `LLEN key`.
    pub(crate) fn list_count(&mut self, key: &[u8]) -> Result<usize, WrongType> {
        Ok(self.list_ref(key)?.map_or(0, |l| l.len()))
    }

    /// `RPOP key`. An emptied list removes the key.
    pub(crate) fn list_pop(&mut self, key: &[u8]) -> Result<Option<Bytes>, WrongType> {
        let Some(l) = self.list_ref(key)? else {
            return Ok(None);
        };
        let v = l.pop_back();
        if l.is_empty() {
            self.map.remove(key);
        }
        Ok(v)
    }

    /// Removes `count` items at `index` and inserts `items` there, like JavaScript's
    /// `Array.prototype.splice`; returns the removed items. An emptied list removes the key.
    pub(crate) fn list_splice(
        &mut self,
        key: &[u8],
        index: usize,
        count: usize,
        items: Vec<Bytes>,
    ) -> Result<Vec<Bytes>, WrongType> {
        if self.live(key).is_none() {
            if items.is_empty() {
                return Ok(Vec::new());
            }
            self.map.insert(
                Bytes::copy_from_slice(key),
                Entry {
                    value: Value::List(VecDeque::new()),
                    expires: None,
                },
            );
        }
        let Some(l) = self.list_ref(key)? else {
            return Ok(Vec::new());
        };
        let index = index.min(l.len());
        let end = index.saturating_add(count).min(l.len());
        let mut tail = l.split_off(index);
        let removed: Vec<Bytes> = tail.drain(..end - index).collect();
        l.extend(items);
        l.extend(tail);
        if l.is_empty() {
            self.map.remove(key);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_like_javascript() {
        let mut db = Db::default();
        let v = |s: &'static str| Bytes::from_static(s.as_bytes());
        db.list_push(b"l", [v("a"), v("b"), v("c"), v("d")])
            .unwrap();
        let removed = db.list_splice(b"l", 1, 2, vec![v("x")]).unwrap();
        assert_eq!(removed, vec![v("b"), v("c")]);
        assert_eq!(
            db.list_range(b"l", 0, -1).unwrap(),
            vec![v("a"), v("x"), v("d")]
        );
        assert_eq!(db.list_range(b"l", -2, 100).unwrap(), vec![v("x"), v("d")]);
        assert_eq!(
            db.list_splice(b"l", 9, 9, vec![]).unwrap(),
            Vec::<Bytes>::new()
        );
        assert_eq!(db.list_splice(b"l", 0, 9, vec![]).unwrap().len(), 3);
        assert!(!db.has(b"l"));
    }

    #[test]
    fn sweep_removes_expired_and_skips_renewed() {
        let mut db = Db::default();
        db.set(b"a", Bytes::new(), Some(Duration::ZERO));
        db.set(b"b", Bytes::new(), Some(Duration::from_secs(60)));
        assert!(db.expire(b"b", Duration::from_secs(120)));
        assert_eq!(db.sweep(100), 1);
        assert_eq!(db.len(), 1);
        assert!(db.has(b"b"));
    }
}
