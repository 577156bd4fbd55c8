//! The sessions of one server: the signed cookie's key, the sessions with a socket in this
//! process (counted per socket) and the task that renews their data's TTL while one lives. The
//! handles of the API ([`Session`](crate::Session), [`SessionLayer`](crate::SessionLayer)) are
//! in `session.rs`, above the server's state; this file is below it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use base64::Engine;
use parking_lot::Mutex;
use ring::hmac;
use sc_store::Store;

use crate::auth::AuthKey;
use crate::metrics::Counters;
use crate::published::SESSION_CHANNEL_PREFIX;

/// The store key of a session's data: `sc:session:{<id>}` (the braces keep a session's keys in
/// one slot of a Redis Cluster).
pub(crate) const DATA_PREFIX: &str = "sc:session:";
/// Local sessions renewed per batch of concurrent `PEXPIRE`s.
const RENEW_BATCH: usize = 1000;

/// A session's exchange channel.
pub(crate) fn channel(id: &str) -> String {
    format!("{SESSION_CHANNEL_PREFIX}{id}")
}

pub(crate) fn data_key(id: &str) -> String {
    format!("{DATA_PREFIX}{{{id}}}")
}

/// A new session id: 128 random bits, base64url (22 characters).
pub(crate) fn new_id() -> Arc<str> {
    let bytes: [u8; 16] = rand::random();
    Arc::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Signs and checks session cookies: `<id>.<HMAC-SHA256 of the id, base64url>`, keyed by a
/// key derived from the server's auth key (so every process sharing the auth key accepts the
/// others' cookies, and a guessed or forged id is refused).
pub(crate) struct CookieKey(hmac::Key);

impl CookieKey {
    pub(crate) fn new(auth: &AuthKey) -> Self {
        let secret: &[u8] = match auth {
            AuthKey::Secret(s) => s,
            AuthKey::Pem { private_pem, .. } => private_pem,
        };
        // A key of its own: a cookie signature is never a valid token signature.
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"socketcluster session cookie"),
            secret,
        );
        CookieKey(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    pub(crate) fn sign(&self, id: &str) -> String {
        let tag = hmac::sign(&self.0, id.as_bytes());
        format!(
            "{id}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The id of a cookie value whose signature holds.
    pub(crate) fn verify<'a>(&self, value: &'a str) -> Option<&'a str> {
        let (id, sig) = value.split_once('.')?;
        if id.len() != 22
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .ok()?;
        hmac::verify(&self.0, id.as_bytes(), &sig).ok()?;
        Some(id)
    }
}

/// The sessions of one server: the cookie, the sessions with a socket here, and their data's
/// store.
pub(crate) struct Sessions {
    pub(crate) cookie: CookieKey,
    /// The cookie's name: `n/<app_name>/ssid`, as the original SocketCluster named it.
    pub(crate) cookie_name: String,
    /// What the renewal task shares.
    shared: Arc<Shared>,
}

struct Shared {
    ttl: Duration,
    /// Sockets here per session.
    local: Mutex<HashMap<Arc<str>, usize, foldhash::fast::RandomState>>,
    /// The server's store, or an in-process one made on first use.
    store: OnceLock<Arc<dyn Store>>,
    /// Whether the renewal task runs.
    renewing: OnceLock<()>,
    /// The server's counters of store operations; `None` without a store of the app's (the
    /// in-process one is not counted).
    counters: Option<Arc<Counters>>,
}

impl Shared {
    fn store(&self) -> &Arc<dyn Store> {
        self.store
            .get_or_init(|| Arc::new(sc_store::MemoryStore::new()) as Arc<dyn Store>)
    }

    fn count<T, E>(&self, r: &Result<T, E>) {
        if let Some(c) = &self.counters {
            c.store_result(r);
        }
    }
}

impl Sessions {
    pub(crate) fn new(
        auth: &AuthKey,
        app_name: &str,
        ttl: Duration,
        store: Option<Arc<dyn Store>>,
        counters: Arc<Counters>,
    ) -> Self {
        let store_cell = OnceLock::new();
        let counters = store.is_some().then_some(counters);
        if let Some(s) = store {
            let _ = store_cell.set(s);
        }
        Sessions {
            cookie: CookieKey::new(auth),
            cookie_name: format!("n/{app_name}/ssid"),
            shared: Arc::new(Shared {
                ttl,
                local: Mutex::default(),
                store: store_cell,
                renewing: OnceLock::new(),
                counters,
            }),
        }
    }

    /// How long a session's data lives after its last socket left.
    pub(crate) fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// Where sessions' data lives.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        self.shared.store()
    }

    /// Counts one operation on the sessions' store (when it is the app's).
    pub(crate) fn count<T, E>(&self, r: &Result<T, E>) {
        self.shared.count(r);
    }

    /// Counts one more socket of `id` here; the first one starts the TTL renewal.
    pub(crate) fn join(&self, id: &Arc<str>) {
        let first = {
            let mut local = self.shared.local.lock();
            let n = local.entry(id.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            // The data lives on from now: renew its TTL at once (it may be near its end).
            let store = self.store().clone();
            let key = data_key(id);
            let ttl = self.shared.ttl;
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let r = store.expire(&key, ttl).await;
                shared.count(&r);
                if let Err(e) = r {
                    tracing::debug!(%key, error = %e, "session TTL renewal failed");
                }
            });
        }
        if self.shared.renewing.set(()).is_ok() {
            tokio::spawn(renew(Arc::downgrade(&self.shared), self.shared.ttl / 4));
        }
    }

    /// Counts one socket of `id` less; true when it was the last one here.
    pub(crate) fn leave(&self, id: &str) -> bool {
        let mut local = self.shared.local.lock();
        match local.get_mut(id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                local.remove(id);
                true
            }
            None => false,
        }
    }

    /// Sessions with a socket here.
    pub(crate) fn local_count(&self) -> usize {
        self.shared.local.lock().len()
    }
}

/// Renews the TTL of the data of every session with a socket here, four times per TTL (the
/// original's `sessionHeartRate`), in batches, until the server is gone.
async fn renew(shared: Weak<Shared>, every: Duration) {
    let every = every.max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let store = shared.store().clone();
        let ttl = shared.ttl;
        let counters = shared.counters.clone();
        let ids: Vec<Arc<str>> = shared.local.lock().keys().cloned().collect();
        drop(shared);
        for batch in ids.chunks(RENEW_BATCH) {
            let renewals = batch.iter().map(|id| {
                let store = store.clone();
                let key = data_key(id);
                async move { store.expire(&key, ttl).await }
            });
            for r in futures_util::future::join_all(renewals).await {
                if let Some(c) = &counters {
                    c.store_result(&r);
                }
                if let Err(e) = r {
                    tracing::debug!(error = %e, "session TTL renewal failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cookies_are_signed_and_checked() {
        let key = CookieKey::new(&AuthKey::Secret(b"one".to_vec()));
        let id = new_id();
        assert_eq!(id.len(), 22);
        let value = key.sign(&id);
        assert_eq!(key.verify(&value), Some(&*id));
        // Another process with the same auth key accepts it; another key does not.
        let same = CookieKey::new(&AuthKey::Secret(b"one".to_vec()));
        assert_eq!(same.verify(&value), Some(&*id));
        let other = CookieKey::new(&AuthKey::Secret(b"two".to_vec()));
        assert_eq!(other.verify(&value), None);
        // A guessed id, a changed signature, a bare id, garbage.
        let (_, sig) = value.split_once('.').unwrap();
        let guessed = format!("{}.{sig}", new_id());
        assert_eq!(key.verify(&guessed), None);
        // The signature's first character changed (still canonical base64: the HMAC decides).
        let forged = format!(
            "{id}.{}{}",
            if sig.starts_with('A') { 'B' } else { 'A' },
            &sig[1..]
        );
        assert_eq!(key.verify(&forged), None);
        assert_eq!(key.verify(&id), None);
        assert_eq!(key.verify("x.y"), None);
        assert_eq!(key.verify(""), None);
    }

    #[tokio::test]
    async fn a_session_is_counted_per_socket_here() {
        let s = Sessions::new(
            &AuthKey::random(),
            "app",
            Duration::from_secs(60),
            None,
            Arc::default(),
        );
        assert_eq!(s.cookie_name, "n/app/ssid");
        let id: Arc<str> = Arc::from("abc");
        s.join(&id);
        s.join(&id);
        assert_eq!(s.local_count(), 1);
        assert!(s.shared.renewing.get().is_some(), "the renewal runs");
        assert!(!s.leave(&id));
        assert!(s.leave(&id));
        assert!(!s.leave(&id), "not here any more");
        assert_eq!(s.local_count(), 0);
    }
}
