//! Where the client keeps its signed auth token between connections (and, with
//! [`FileTokenStore`], between runs).
//!
//! The client loads the token before each handshake, saves it on `#setAuthToken` and after a
//! successful [`Client::authenticate`](crate::Client::authenticate), and removes it on
//! `#removeAuthToken` and [`Client::deauthenticate`](crate::Client::deauthenticate).
//!
//! ```
//! use sc_client::{MemoryTokenStore, TokenStore};
//!
//! let store = MemoryTokenStore::default();
//! store.save("a.b.c").unwrap();
//! assert_eq!(store.load().unwrap().as_deref(), Some("a.b.c"));
//! store.remove().unwrap();
//! assert_eq!(store.load().unwrap(), None);
//! ```

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use parking_lot::Mutex;

/// A place to keep the signed auth token (the counterpart of socketcluster-client's `authEngine`).
///
/// The methods are called from the connection task, so they should be quick (a small file write
/// is fine). Errors are reported as [`Error::TokenStore`](crate::Error::TokenStore) or logged.
pub trait TokenStore: Send + Sync + fmt::Debug + 'static {
    /// The stored token, if any.
    fn load(&self) -> io::Result<Option<String>>;
    /// Stores `token`, replacing any previous one.
    fn save(&self, token: &str) -> io::Result<()>;
    /// Forgets the token.
    fn remove(&self) -> io::Result<()>;
}

/// Keeps the token in memory: it survives reconnects but not the process. The default.
#[derive(Debug, Default)]
pub struct MemoryTokenStore(Mutex<Option<String>>);

impl MemoryTokenStore {
    /// A store that starts with `token`.
    pub fn with_token(token: impl Into<String>) -> Self {
        MemoryTokenStore(Mutex::new(Some(token.into())))
    }
}

impl TokenStore for MemoryTokenStore {
    fn load(&self) -> io::Result<Option<String>> {
        Ok(self.0.lock().clone())
    }

    fn save(&self, token: &str) -> io::Result<()> {
        *self.0.lock() = Some(token.to_owned());
        Ok(())
    }

    fn remove(&self) -> io::Result<()> {
        *self.0.lock() = None;
        Ok(())
    }
}

/// Keeps the token in a file, so that it survives restarts of the process.
///
/// The file holds the token text alone. It is replaced atomically (written beside, then renamed)
/// and, on Unix, created readable by its owner only. A missing file means no token.
#[derive(Debug, Clone)]
pub struct FileTokenStore {
    path: PathBuf,
}

impl FileTokenStore {
    /// A store backed by the file at `path` (which need not exist yet; its directory must).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileTokenStore { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl TokenStore for FileTokenStore {
    fn load(&self) -> io::Result<Option<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let token = text.trim();
                Ok((!token.is_empty()).then(|| token.to_owned()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save(&self, token: &str) -> io::Result<()> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp)?;
            io::Write::write_all(&mut file, token.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }

    fn remove(&self) -> io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The payload of a JWT (its middle segment, base64url-decoded and parsed), without verifying
/// anything, as socketcluster-client does. `None` when the token is no JWT with a JSON payload.
pub(crate) fn jwt_payload(token: &str) -> Option<serde_json::Value> {
    let mut parts = token.split('.');
    let payload = match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(payload), Some(_)) => payload,
        _ => return None,
    };
    let payload = payload.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(payload))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_jwt_payload() {
        // {"alg":"HS256","typ":"JWT"} . {"username":"ann","iat":1}
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6ImFubiIsImlhdCI6MX0.sig";
        let payload = jwt_payload(token).unwrap();
        assert_eq!(payload["username"], "ann");
        assert_eq!(jwt_payload("not-a-jwt"), None);
        assert_eq!(jwt_payload("a.!!!.c"), None);
    }

    #[test]
    fn file_store_round_trip() {
        let dir = std::env::temp_dir().join(format!("sc-client-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = FileTokenStore::new(dir.join("token"));
        assert_eq!(store.load().unwrap(), None);
        store.save("x.y.z").unwrap();
        assert_eq!(store.load().unwrap().as_deref(), Some("x.y.z"));
        assert_eq!(
            FileTokenStore::new(store.path()).load().unwrap().as_deref(),
            Some("x.y.z")
        );
        store.remove().unwrap();
        store.remove().unwrap();
        assert_eq!(store.load().unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
