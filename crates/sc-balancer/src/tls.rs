//! TLS termination for the balancer: the certificate and key from PEM files, turned into a
//! rustls [`ServerConfig`], and an acceptor whose configuration can be reloaded while serving.
//!
//! - [`load`] reads the certificate chain (one or more `CERTIFICATE` blocks, the server's own
//!   certificate first) and the private key: PKCS#8 (`PRIVATE KEY`), PKCS#1 RSA
//!   (`RSA PRIVATE KEY`), SEC1 EC (`EC PRIVATE KEY`), or encrypted PKCS#8
//!   (`ENCRYPTED PRIVATE KEY`, PBES2: PBKDF2 with HMAC-SHA-2 or scrypt, AES-CBC; what
//!   `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes), decrypted with [`TlsFiles::passphrase`].
//!   It checks that the key belongs to the certificate, and builds a configuration with the
//!   aws-lc-rs provider, rustls' safe default protocol versions (TLS 1.2 and 1.3), no client
//!   authentication and ALPN `http/1.1` (the balancer speaks HTTP/1.1 only; a client that offers
//!   ALPN without `http/1.1` is refused in the handshake, one that offers none is served).
//! - Every failure is a [`TlsError`] whose message names the flag, the file and the problem, fit
//!   to print as is: `--tls-key /etc/sc/key.pem: wrong passphrase`.
//! - [`ReloadableAcceptor`] holds the current configuration; [`ReloadableAcceptor::reload`]
//!   reads the same files again (on `SIGHUP`) and swaps the configuration in only if they load.
//!   Connections already accepted keep the configuration they were accepted with; new ones get
//!   the new one.
//!
//! The files are read with blocking I/O: a few kilobytes, at startup and on reload.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use pkcs8::EncryptedPrivateKeyInfo;
use pkcs8::pkcs5;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::server::ServerConfig;
use tokio_rustls::rustls::sign::{CertifiedKey, SingleCertAndKey};
use tokio_rustls::rustls::{self, InconsistentKeys};

/// The one application protocol the balancer offers in ALPN.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// The lines around an encrypted PKCS#8 key (RFC 5958), which rustls-pki-types skips.
const ENCRYPTED_PKCS8_BEGIN: &[u8] = b"-----BEGIN ENCRYPTED PRIVATE KEY-----";
/// See [`ENCRYPTED_PKCS8_BEGIN`].
const ENCRYPTED_PKCS8_END: &[u8] = b"-----END ENCRYPTED PRIVATE KEY-----";

/// The header OpenSSL's legacy ("traditional") key encryption puts inside the PEM block.
const LEGACY_ENCRYPTION_HEADER: &[u8] = b"Proc-Type: 4,ENCRYPTED";

/// Where the certificate and key come from (`--tls-cert`, `--tls-key`,
/// `--tls-key-passphrase` / `SC_TLS_KEY_PASSPHRASE`).
///
/// `Debug` does not show the passphrase.
#[derive(Clone)]
pub struct TlsFiles {
    /// PEM file with the certificate chain: the server's certificate first, then the
    /// intermediates, each as a `CERTIFICATE` block.
    pub cert: PathBuf,
    /// PEM file with the private key of the first certificate.
    pub key: PathBuf,
    /// Passphrase of an encrypted (`ENCRYPTED PRIVATE KEY`) key. Must be `None` for a key that
    /// is not encrypted. An empty string counts as a passphrase.
    pub passphrase: Option<String>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why the certificate or the key cannot be used. The message is complete (flag, path,
/// problem, and the underlying error where there is one); no error is chained as a `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file cannot be read.
    #[error("--tls-cert {}: cannot read: {error}", path.display())]
    CertRead {
        /// The certificate file.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// The certificate file is not valid PEM.
    #[error("--tls-cert {}: not a valid PEM file: {error}", path.display())]
    CertPem {
        /// The certificate file.
        path: PathBuf,
        /// The PEM parser's error.
        error: pem::Error,
    },
    /// The certificate file has no `CERTIFICATE` block.
    #[error("--tls-cert {}: no certificate in the file", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The first certificate of the file cannot be parsed.
    #[error("--tls-cert {}: not a valid certificate: {error}", path.display())]
    BadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// rustls' error.
        error: rustls::Error,
    },
    /// The key file cannot be read.
    #[error("--tls-key {}: cannot read: {error}", path.display())]
    KeyRead {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// The key file is not valid PEM.
    #[error("--tls-key {}: not a valid PEM file: {error}", path.display())]
    KeyPem {
        /// The key file.
        path: PathBuf,
        /// The PEM parser's error.
        error: String,
    },
    /// The key file has no private key block of a known kind.
    #[error(
        "--tls-key {}: no private key in the file (expected PRIVATE KEY, RSA PRIVATE KEY, \
         EC PRIVATE KEY or ENCRYPTED PRIVATE KEY)",
        path.display()
    )]
    NoKey {
        /// The key file.
        path: PathBuf,
    },
    /// The key is encrypted and there is no passphrase.
    #[error(
        "--tls-key {}: the key is encrypted and no passphrase was given \
         (--tls-key-passphrase or SC_TLS_KEY_PASSPHRASE)",
        path.display()
    )]
    NoPassphrase {
        /// The key file.
        path: PathBuf,
    },
    /// The passphrase does not decrypt the key.
    #[error("--tls-key {}: wrong passphrase", path.display())]
    WrongPassphrase {
        /// The key file.
        path: PathBuf,
    },
    /// A passphrase was given for a key that is not encrypted.
    #[error("--tls-key {}: a passphrase was given but the key is not encrypted", path.display())]
    NotEncrypted {
        /// The key file.
        path: PathBuf,
    },
    /// The key is encrypted with a scheme this build cannot decrypt (PBES1, DES, 3DES,
    /// PBKDF2 with HMAC-SHA-1, ...).
    #[error(
        "--tls-key {}: the key's encryption is not supported ({detail}); re-encrypt it with \
         `openssl pkcs8 -topk8 -v2 aes-256-cbc`",
        path.display()
    )]
    UnsupportedEncryption {
        /// The key file.
        path: PathBuf,
        /// What the PKCS#8 decoder said.
        detail: String,
    },
    /// The key is encrypted with OpenSSL's legacy PEM encryption (`Proc-Type: 4,ENCRYPTED`).
    #[error(
        "--tls-key {}: the key uses OpenSSL's legacy PEM encryption, which is not supported; \
         convert it with `openssl pkcs8 -topk8 -v2 aes-256-cbc`",
        path.display()
    )]
    LegacyEncryption {
        /// The key file.
        path: PathBuf,
    },
    /// The key is not a usable private key (malformed, or of an unsupported kind).
    #[error("--tls-key {}: not a usable private key: {error}", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// rustls' error.
        error: rustls::Error,
    },
    /// The key is not the key of the (first) certificate.
    #[error(
        "--tls-key {}: the key does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// Reads `files` and builds the server configuration (see the [module](self) documentation).
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key, files.passphrase.as_deref())?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    let certified = certified_key(files, certs, key, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}

/// The certificate chain of `path`, in file order.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|error| TlsError::CertRead {
        path: path.to_owned(),
        error,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::CertPem {
            path: path.to_owned(),
            error,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of `path`; an encrypted one is decrypted with `passphrase`.
fn read_key(path: &Path, passphrase: Option<&str>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|error| TlsError::KeyRead {
        path: path.to_owned(),
        error,
    })?;
    // Before the PEM parser, which reads the legacy headers as base64 and fails obscurely.
    if contains(&pem, LEGACY_ENCRYPTION_HEADER) {
        return Err(TlsError::LegacyEncryption {
            path: path.to_owned(),
        });
    }
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(der) => {
            if passphrase.is_some() {
                return Err(TlsError::NotEncrypted {
                    path: path.to_owned(),
                });
            }
            return Ok(der);
        }
        Err(pem::Error::NoItemsFound) => {}
        Err(error) => {
            return Err(TlsError::KeyPem {
                path: path.to_owned(),
                error: error.to_string(),
            });
        }
    }
    let Some(encrypted) = encrypted_pkcs8_der(&pem) else {
        return Err(TlsError::NoKey {
            path: path.to_owned(),
        });
    };
    let Some(passphrase) = passphrase else {
        return Err(TlsError::NoPassphrase {
            path: path.to_owned(),
        });
    };
    let encrypted = encrypted.map_err(|error| TlsError::KeyPem {
        path: path.to_owned(),
        error: error.to_string(),
    })?;
    let der = decrypt_pkcs8(path, &encrypted, passphrase)?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)))
}

/// Decrypts the encrypted PKCS#8 key `der` (an `EncryptedPrivateKeyInfo`) of `path` into
/// PKCS#8 DER.
fn decrypt_pkcs8(path: &Path, der: &[u8], passphrase: &str) -> Result<Vec<u8>, TlsError> {
    let info = EncryptedPrivateKeyInfo::try_from(der).map_err(|error| TlsError::KeyPem {
        path: path.to_owned(),
        error: format!("not an encrypted PKCS#8 key: {error}"),
    })?;
    match info.decrypt(passphrase) {
        // AES-CBC padding lets about one wrong passphrase in 256 through; what it yields is
        // not a PKCS#8 structure.
        Ok(document) if pkcs8::PrivateKeyInfo::try_from(document.as_bytes()).is_ok() => {
            Ok(document.as_bytes().to_vec())
        }
        Ok(_) => Err(TlsError::WrongPassphrase {
            path: path.to_owned(),
        }),
        // Bad padding (pkcs5 0.7 reports it as `EncryptFailed`, later versions as
        // `DecryptFailed`), or a decryption that does not hold a DER document.
        Err(
            pkcs8::Error::EncryptedPrivateKey(
                pkcs5::Error::DecryptFailed | pkcs5::Error::EncryptFailed,
            )
            | pkcs8::Error::Asn1(_),
        ) => Err(TlsError::WrongPassphrase {
            path: path.to_owned(),
        }),
        Err(error) => Err(TlsError::UnsupportedEncryption {
            path: path.to_owned(),
            detail: error.to_string(),
        }),
    }
}

/// Loads `key` with `provider` and pairs it with `certs`, checking that it is the key of the
/// first certificate.
///
/// `ServerConfigBuilder::with_single_cert` makes the same check (rustls 0.23.48), but its error
/// does not say which file is at fault; doing it here does, and does not depend on the rustls
/// version.
fn certified_key(
    files: &TlsFiles,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| TlsError::BadKey {
            path: files.key.clone(),
            error,
        })?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        // `Unknown`: a key that cannot tell its public key; rustls accepts those too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            key: files.key.clone(),
            cert: files.cert.clone(),
        }),
        Err(error) => Err(TlsError::BadCertificate {
            path: files.cert.clone(),
            error,
        }),
    }
}

/// The DER in the first `ENCRYPTED PRIVATE KEY` block of `pem`, if there is one.
///
/// rustls-pki-types skips blocks with this label, and the `pkcs8` crate's PEM decoder takes
/// only 64-column lines and nothing around the block; so the block is relabelled
/// `PRIVATE KEY` and decoded by rustls-pki-types (any line width, CRLF, text around it).
fn encrypted_pkcs8_der(pem: &[u8]) -> Option<Result<Vec<u8>, pem::Error>> {
    let start = find(pem, ENCRYPTED_PKCS8_BEGIN)? + ENCRYPTED_PKCS8_BEGIN.len();
    let len = find(pem.get(start..)?, ENCRYPTED_PKCS8_END)?;
    let body = pem.get(start..start + len)?;
    let mut relabelled = Vec::with_capacity(body.len() + 64);
    relabelled.extend_from_slice(b"-----BEGIN PRIVATE KEY-----");
    relabelled.extend_from_slice(body);
    relabelled.extend_from_slice(b"-----END PRIVATE KEY-----\n");
    Some(PrivatePkcs8KeyDer::from_pem_slice(&relabelled).map(|key| key.secret_pkcs8_der().to_vec()))
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// The offset of the first `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A TLS acceptor whose certificate can be replaced while serving. Cloning is cheap (the clones
/// share the configuration).
#[derive(Clone)]
pub struct ReloadableAcceptor {
    inner: Arc<Shared>,
}

/// What the clones of a [`ReloadableAcceptor`] share.
struct Shared {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
}

impl ReloadableAcceptor {
    /// Loads `files` (see [`load`]); they are read again by [`reload`](Self::reload).
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let config = load(&files)?;
        Ok(Self {
            inner: Arc::new(Shared {
                files,
                config: RwLock::new(config),
            }),
        })
    }

    /// Reads the files again and, if they load, uses them for the connections accepted from
    /// now on. On an error the current configuration stays and the error is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = load(&self.inner.files)?;
        *self.inner.config.write() = config;
        Ok(())
    }

    /// An acceptor with the current configuration. Take one per accepted connection (it is an
    /// `Arc` clone) so that a reload applies to the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.inner.config.read()))
    }
}

impl fmt::Debug for ReloadableAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableAcceptor")
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        PKCS_ECDSA_P384_SHA384,
    };
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::rustls::crypto::aws_lc_rs;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::{ReloadableAcceptor, TlsError, TlsFiles, load};

    const PASSPHRASE: &str = "correct horse battery staple";

    /// A directory under the system temp dir, removed on drop (also when a test fails).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let dir = std::env::temp_dir().join(format!(
                "sc-balancer-tls-{tag}-{}-{}-{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed),
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.path(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A test CA and a `localhost` certificate it signed, with an ECDSA key in PKCS#8.
    struct Pki {
        ca_der: CertificateDer<'static>,
        ca_pem: String,
        leaf_der: CertificateDer<'static>,
        leaf_pem: String,
        key: KeyPair,
    }

    impl Pki {
        fn new() -> Self {
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(DnType::CommonName, "sc-balancer test CA");
            let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
            let key = KeyPair::generate().unwrap();
            let leaf = CertificateParams::new(vec!["localhost".to_owned()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            Self {
                ca_der: ca.der().clone(),
                ca_pem: ca.pem(),
                leaf_der: leaf.der().clone(),
                leaf_pem: leaf.pem(),
                key,
            }
        }

        /// The chain file (leaf, then CA) and the PKCS#8 key file, written to `dir`.
        fn files(&self, dir: &TempDir, prefix: &str) -> TlsFiles {
            TlsFiles {
                cert: dir.write(
                    &format!("{prefix}-cert.pem"),
                    format!("{}{}", self.leaf_pem, self.ca_pem),
                ),
                key: dir.write(&format!("{prefix}-key.pem"), self.key.serialize_pem()),
                passphrase: None,
            }
        }

        /// The key as encrypted PKCS#8 PEM (PBKDF2-HMAC-SHA256, AES-256-CBC).
        fn encrypted_key_pem(&self, passphrase: &str) -> String {
            let der = self.key.serialize_der();
            let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).unwrap();
            let params = pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(
                2048,
                b"saltsalt",
                &[7; 16],
            )
            .unwrap();
            let encrypted = info.encrypt_with_params(params, passphrase).unwrap();
            encrypted
                .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
                .unwrap()
                .to_string()
        }
    }

    /// Runs `openssl` with `args` (Debian's `openssl` package; a test that needs it fails
    /// when it is missing, it is never skipped); a panic if it fails. Always `Some`.
    fn openssl(args: &[&str]) -> Option<()> {
        let output = Command::new("openssl")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(())
    }

    /// A self-signed `localhost` certificate made by openssl for the key file `key`.
    fn openssl_self_signed(dir: &TempDir, key: &Path, cert_name: &str) -> Option<PathBuf> {
        let cert = dir.path(cert_name);
        openssl(&[
            "req",
            "-new",
            "-x509",
            "-key",
            path_str(key),
            "-subj",
            "/CN=localhost",
            "-days",
            "2",
            "-out",
            path_str(&cert),
        ])?;
        Some(cert)
    }

    fn path_str(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    fn pem_label(path: &Path) -> String {
        let text = std::fs::read_to_string(path).unwrap();
        let first = text.lines().next().unwrap_or_default();
        first.to_owned()
    }

    /// A client that trusts `ca` and offers `alpn`.
    fn connector(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    /// Connects to `addr` as a client that trusts `ca` and offers ALPN `http/1.1`; sends
    /// `ping`, expects `pong`. Returns the negotiated ALPN and the server's certificate chain.
    async fn client(
        addr: std::net::SocketAddr,
        ca: &CertificateDer<'static>,
    ) -> (Option<Vec<u8>>, Vec<CertificateDer<'static>>) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector(ca, &[b"http/1.1"])
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(b"ping").await.unwrap();
        tls.flush().await.unwrap();
        let mut reply = [0; 4];
        tls.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"pong");
        let (_, connection) = tls.get_ref();
        let alpn = connection.alpn_protocol().map(<[u8]>::to_vec);
        let chain = connection
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|cert| cert.clone().into_owned())
            .collect();
        (alpn, chain)
    }

    /// One TLS connection through `acceptor`: returns the ALPN the server negotiated, the
    /// ALPN the client negotiated and the chain the client received.
    async fn handshake(
        acceptor: TlsAcceptor,
        ca: &CertificateDer<'static>,
    ) -> (
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<CertificateDer<'static>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut request = [0; 4];
            tls.read_exact(&mut request).await.unwrap();
            assert_eq!(&request, b"ping");
            tls.write_all(b"pong").await.unwrap();
            tls.flush().await.unwrap();
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            tls.shutdown().await.unwrap();
            alpn
        });
        let (client_alpn, chain) = client(addr, ca).await;
        let server_alpn = server.await.unwrap();
        (server_alpn, client_alpn, chain)
    }

    #[test]
    fn pkcs8_key_loads() {
        let dir = TempDir::new("pkcs8");
        let files = Pki::new().files(&dir, "a");
        assert_eq!(pem_label(&files.key), "-----BEGIN PRIVATE KEY-----");
        let config = load(&files).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn pkcs1_rsa_key_loads() {
        let dir = TempDir::new("pkcs1");
        let key = dir.path("rsa-key.pem");
        let Some(()) = openssl(&["genrsa", "-traditional", "-out", path_str(&key), "2048"]) else {
            return;
        };
        assert_eq!(pem_label(&key), "-----BEGIN RSA PRIVATE KEY-----");
        let Some(cert) = openssl_self_signed(&dir, &key, "rsa-cert.pem") else {
            return;
        };
        load(&TlsFiles {
            cert,
            key,
            passphrase: None,
        })
        .unwrap();
    }

    #[test]
    fn sec1_ec_key_loads() {
        let dir = TempDir::new("sec1");
        let key = dir.path("ec-key.pem");
        let Some(()) = openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            path_str(&key),
        ]) else {
            return;
        };
        assert_eq!(pem_label(&key), "-----BEGIN EC PRIVATE KEY-----");
        let Some(cert) = openssl_self_signed(&dir, &key, "ec-cert.pem") else {
            return;
        };
        load(&TlsFiles {
            cert,
            key,
            passphrase: None,
        })
        .unwrap();
    }

    #[test]
    fn encrypted_pkcs8_key_loads_with_the_passphrase() {
        let dir = TempDir::new("enc");
        let pki = Pki::new();
        let mut files = pki.files(&dir, "a");
        std::fs::write(&files.key, pki.encrypted_key_pem(PASSPHRASE)).unwrap();
        assert_eq!(
            pem_label(&files.key),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----"
        );
        files.passphrase = Some(PASSPHRASE.to_owned());
        load(&files).unwrap();
    }

    #[test]
    fn encrypted_pkcs8_key_with_long_lines_crlf_and_text_around_loads() {
        let dir = TempDir::new("enc-wrap");
        let pki = Pki::new();
        let mut files = pki.files(&dir, "a");
        let pem = pki.encrypted_key_pem(PASSPHRASE);
        let base64: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let mut rewrapped =
            String::from("Bag Attributes: none\r\n-----BEGIN ENCRYPTED PRIVATE KEY-----\r\n");
        for chunk in base64.as_bytes().chunks(76) {
            rewrapped.push_str(std::str::from_utf8(chunk).unwrap());
            rewrapped.push_str("\r\n");
        }
        rewrapped.push_str("-----END ENCRYPTED PRIVATE KEY-----\r\n");
        assert!(pkcs8::der::pem::decode_vec(rewrapped.as_bytes()).is_err());
        std::fs::write(&files.key, rewrapped).unwrap();
        files.passphrase = Some(PASSPHRASE.to_owned());
        load(&files).unwrap();
    }

    #[test]
    fn encrypted_pkcs8_key_made_by_openssl_loads() {
        let dir = TempDir::new("enc-openssl");
        let pki = Pki::new();
        let mut files = pki.files(&dir, "a");
        let encrypted = dir.path("a-key-encrypted.pem");
        let Some(()) = openssl(&[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            path_str(&files.key),
            "-passout",
            &format!("pass:{PASSPHRASE}"),
            "-out",
            path_str(&encrypted),
        ]) else {
            return;
        };
        assert_eq!(
            pem_label(&encrypted),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----"
        );
        files.key = encrypted;
        files.passphrase = Some(PASSPHRASE.to_owned());
        load(&files).unwrap();
    }

    #[test]
    fn wrong_passphrase_is_refused() {
        let dir = TempDir::new("wrong-pass");
        let pki = Pki::new();
        let mut files = pki.files(&dir, "a");
        std::fs::write(&files.key, pki.encrypted_key_pem(PASSPHRASE)).unwrap();
        for wrong in ["incorrect horse", "", "correct horse battery staplE"] {
            files.passphrase = Some(wrong.to_owned());
            let error = load(&files).unwrap_err();
            assert!(
                matches!(error, TlsError::WrongPassphrase { .. }),
                "{error:?}"
            );
            assert_eq!(
                error.to_string(),
                format!("--tls-key {}: wrong passphrase", files.key.display())
            );
        }
    }

    #[test]
    fn encrypted_key_without_passphrase_is_refused() {
        let dir = TempDir::new("no-pass");
        let pki = Pki::new();
        let files = pki.files(&dir, "a");
        std::fs::write(&files.key, pki.encrypted_key_pem(PASSPHRASE)).unwrap();
        let error = load(&files).unwrap_err();
        assert!(matches!(error, TlsError::NoPassphrase { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "--tls-key {}: the key is encrypted and no passphrase was given \
                 (--tls-key-passphrase or SC_TLS_KEY_PASSPHRASE)",
                files.key.display()
            )
        );
    }

    #[test]
    fn passphrase_for_a_plain_key_is_refused() {
        let dir = TempDir::new("plain-pass");
        let mut files = Pki::new().files(&dir, "a");
        files.passphrase = Some(PASSPHRASE.to_owned());
        let error = load(&files).unwrap_err();
        assert!(matches!(error, TlsError::NotEncrypted { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .ends_with("a passphrase was given but the key is not encrypted")
        );
    }

    #[test]
    fn legacy_encrypted_key_is_refused_with_a_hint() {
        let dir = TempDir::new("legacy");
        let key = dir.path("legacy-key.pem");
        let Some(()) = openssl(&[
            "genrsa",
            "-traditional",
            "-aes256",
            "-passout",
            &format!("pass:{PASSPHRASE}"),
            "-out",
            path_str(&key),
            "2048",
        ]) else {
            return;
        };
        let mut files = Pki::new().files(&dir, "a");
        files.key = key;
        files.passphrase = Some(PASSPHRASE.to_owned());
        let error = load(&files).unwrap_err();
        assert!(
            matches!(error, TlsError::LegacyEncryption { .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("openssl pkcs8 -topk8"),
            "{error}"
        );
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let dir = TempDir::new("mismatch");
        let mut files = Pki::new().files(&dir, "a");
        files.key = Pki::new().files(&dir, "b").key;
        let error = load(&files).unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "--tls-key {}: the key does not match the certificate in {}",
                files.key.display(),
                files.cert.display()
            )
        );

        // Same with a key of another algorithm (P-384 against a P-256 certificate).
        let other = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        std::fs::write(&files.key, other.serialize_pem()).unwrap();
        let error = load(&files).unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
    }

    #[test]
    fn missing_files_are_named() {
        let dir = TempDir::new("missing");
        let files = Pki::new().files(&dir, "a");

        let missing_cert = TlsFiles {
            cert: dir.path("nope-cert.pem"),
            ..files.clone()
        };
        let error = load(&missing_cert).unwrap_err();
        assert!(matches!(error, TlsError::CertRead { .. }), "{error:?}");
        let prefix = format!("--tls-cert {}: cannot read: ", missing_cert.cert.display());
        assert!(error.to_string().starts_with(&prefix), "{error}");

        let missing_key = TlsFiles {
            key: dir.path("nope-key.pem"),
            ..files
        };
        let error = load(&missing_key).unwrap_err();
        assert!(matches!(error, TlsError::KeyRead { .. }), "{error:?}");
        let prefix = format!("--tls-key {}: cannot read: ", missing_key.key.display());
        assert!(error.to_string().starts_with(&prefix), "{error}");
    }

    #[test]
    fn files_without_certificate_or_key_are_refused() {
        let dir = TempDir::new("empty");
        let pki = Pki::new();
        let files = pki.files(&dir, "a");

        // The key file given as the certificate: no CERTIFICATE block.
        let no_cert = TlsFiles {
            cert: files.key.clone(),
            ..files.clone()
        };
        let error = load(&no_cert).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "--tls-cert {}: no certificate in the file",
                files.key.display()
            )
        );

        // The certificate file given as the key: no key block.
        let no_key = TlsFiles {
            key: files.cert.clone(),
            ..files.clone()
        };
        let error = load(&no_key).unwrap_err();
        assert!(matches!(error, TlsError::NoKey { .. }), "{error:?}");
        let prefix = format!(
            "--tls-key {}: no private key in the file",
            files.cert.display()
        );
        assert!(error.to_string().starts_with(&prefix), "{error}");

        // A DER key in a PEM block of the right label but with garbage inside.
        std::fs::write(
            &files.key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let error = load(&files).unwrap_err();
        assert!(matches!(error, TlsError::BadKey { .. }), "{error:?}");
    }

    #[test]
    fn debug_does_not_show_the_passphrase() {
        let files = TlsFiles {
            cert: PathBuf::from("/c.pem"),
            key: PathBuf::from("/k.pem"),
            passphrase: Some("hunter2".to_owned()),
        };
        let debug = format!("{files:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.contains("/k.pem") && debug.contains("<redacted>"),
            "{debug}"
        );
    }

    #[tokio::test]
    async fn handshake_negotiates_http_1_1_and_sends_the_chain() {
        let dir = TempDir::new("handshake");
        let pki = Pki::new();
        let acceptor = ReloadableAcceptor::new(pki.files(&dir, "a")).unwrap();
        let (server_alpn, client_alpn, chain) = handshake(acceptor.acceptor(), &pki.ca_der).await;
        assert_eq!(server_alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(client_alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(chain, vec![pki.leaf_der.clone(), pki.ca_der.clone()]);
    }

    #[tokio::test]
    async fn a_client_without_http_1_1_in_alpn_is_refused_one_without_alpn_is_served() {
        let dir = TempDir::new("alpn");
        let pki = Pki::new();
        let acceptor = ReloadableAcceptor::new(pki.files(&dir, "a")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut results = Vec::new();
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                results.push(
                    acceptor
                        .acceptor()
                        .accept(tcp)
                        .await
                        .map(|tls| tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)),
                );
            }
            results
        });
        let name = ServerName::try_from("localhost").unwrap();
        let h2_only = connector(&pki.ca_der, &[b"h2"])
            .connect(name.clone(), TcpStream::connect(addr).await.unwrap())
            .await;
        assert!(h2_only.is_err());
        let no_alpn = connector(&pki.ca_der, &[])
            .connect(name, TcpStream::connect(addr).await.unwrap())
            .await
            .unwrap();
        assert_eq!(no_alpn.get_ref().1.alpn_protocol(), None);
        let results = server.await.unwrap();
        assert!(results[0].is_err());
        assert_eq!(results[1].as_ref().unwrap(), &None);
    }

    #[tokio::test]
    async fn encrypted_key_serves() {
        let dir = TempDir::new("handshake-enc");
        let pki = Pki::new();
        let mut files = pki.files(&dir, "a");
        std::fs::write(&files.key, pki.encrypted_key_pem(PASSPHRASE)).unwrap();
        files.passphrase = Some(PASSPHRASE.to_owned());
        let acceptor = ReloadableAcceptor::new(files).unwrap();
        let (_, _, chain) = handshake(acceptor.acceptor(), &pki.ca_der).await;
        assert_eq!(chain.first(), Some(&pki.leaf_der));
    }

    #[tokio::test]
    async fn reload_swaps_the_certificate_and_a_failed_reload_keeps_it() {
        let dir = TempDir::new("reload");
        let first = Pki::new();
        let files = first.files(&dir, "live");
        let reloadable = ReloadableAcceptor::new(files.clone()).unwrap();
        let before = reloadable.acceptor();
        let (_, _, chain) = handshake(reloadable.clone().acceptor(), &first.ca_der).await;
        assert_eq!(chain.first(), Some(&first.leaf_der));

        // New certificate and key in the same files.
        let second = Pki::new();
        let new = second.files(&dir, "new");
        std::fs::copy(&new.cert, &files.cert).unwrap();
        std::fs::copy(&new.key, &files.key).unwrap();
        reloadable.reload().unwrap();
        let after = reloadable.acceptor();
        assert!(!Arc::ptr_eq(before.config(), after.config()));
        let (_, _, chain) = handshake(reloadable.acceptor(), &second.ca_der).await;
        assert_eq!(chain.first(), Some(&second.leaf_der));
        // An acceptor taken before the reload keeps the old certificate.
        let (_, _, chain) = handshake(before, &first.ca_der).await;
        assert_eq!(chain.first(), Some(&first.leaf_der));

        // A key that does not match: the reload fails, the second certificate stays.
        std::fs::write(&files.key, first.key.serialize_pem()).unwrap();
        let error = reloadable.reload().unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
        assert!(Arc::ptr_eq(after.config(), reloadable.acceptor().config()));
        // A missing file: same.
        std::fs::remove_file(&files.cert).unwrap();
        let error = reloadable.reload().unwrap_err();
        assert!(matches!(error, TlsError::CertRead { .. }), "{error:?}");
        let (_, _, chain) = handshake(reloadable.acceptor(), &second.ca_der).await;
        assert_eq!(chain.first(), Some(&second.leaf_der));
    }
}
