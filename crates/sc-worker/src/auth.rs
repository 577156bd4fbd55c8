//! Auth tokens: JWTs signed and verified with `jsonwebtoken`, errors mapped as socketcluster-server
//! maps them.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use sc_protocol::{ErrorName, ScError};

/// The keys that sign and verify auth tokens.
#[derive(Clone)]
pub enum AuthKey {
    /// A shared secret (HS256 by default): the `authKey` of socketcluster-server. Every process
    /// with the same secret accepts the others' tokens.
    Secret(Vec<u8>),
    /// An asymmetric key pair in PEM (`authPrivateKey` / `authPublicKey`), for RS256/384/512,
    /// PS256/384/512 or ES256/384.
    Pem {
        /// The algorithm used to sign.
        algorithm: Algorithm,
        /// The private key, PEM.
        private_pem: Vec<u8>,
        /// The public key, PEM.
        public_pem: Vec<u8>,
    },
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthKey::Secret(_) => f.write_str("AuthKey::Secret(..)"),
            AuthKey::Pem { algorithm, .. } => write!(f, "AuthKey::Pem({algorithm:?})"),
        }
    }
}

impl AuthKey {
    /// A random 32-byte secret, as socketcluster-server makes when no `authKey` is given: tokens
    /// do not survive a restart and other processes reject them.
    pub fn random() -> Self {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        AuthKey::Secret(hex.into_bytes())
    }
}

pub(crate) struct Auth {
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub(crate) default_expiry_s: u64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({:?})", self.algorithm)
    }
}

pub(crate) fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Auth {
    pub(crate) fn new(key: &AuthKey, default_expiry_s: u64) -> Result<Self, String> {
        let (algorithm, encoding, decoding) = match key {
            AuthKey::Secret(secret) => (
                Algorithm::HS256,
                EncodingKey::from_secret(secret),
                DecodingKey::from_secret(secret),
            ),
            AuthKey::Pem {
                algorithm,
                private_pem,
                public_pem,
            } => {
                let e = |e: jsonwebtoken::errors::Error| format!("bad auth key PEM: {e}");
                let (enc, dec) = match algorithm {
                    Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512 => (
                        EncodingKey::from_rsa_pem(private_pem).map_err(e)?,
                        DecodingKey::from_rsa_pem(public_pem).map_err(e)?,
                    ),
                    Algorithm::ES256 | Algorithm::ES384 => (
                        EncodingKey::from_ec_pem(private_pem).map_err(e)?,
                        DecodingKey::from_ec_pem(public_pem).map_err(e)?,
                    ),
                    other => return Err(format!("algorithm {other:?} needs a secret key")),
                };
                (*algorithm, enc, dec)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        Ok(Auth {
            algorithm,
            encoding,
            decoding,
            validation,
            default_expiry_s,
        })
    }

    /// Signs `payload` (a JSON object) after adding `iat` and, unless present, `exp`.
    pub(crate) fn sign(&self, payload: Value) -> Result<(String, Value), ScError> {
        let Value::Object(mut claims) = payload else {
            return Err(ScError::new(
                ErrorName::InvalidArgumentsError,
                "The auth token must be a JSON object",
            ));
        };
        if let Some(name) = non_numeric_date(&claims) {
            return Err(ScError::new(
                ErrorName::InvalidArgumentsError,
                format!("\"{name}\" should be a number of seconds"),
            ));
        }
        let now = now_s();
        claims.insert("iat".to_owned(), Value::from(now));
        if !claims.contains_key("exp") {
            claims.insert(
                "exp".to_owned(),
                Value::from(now.saturating_add(self.default_expiry_s)),
            );
        }
        let value = Value::Object(claims);
        let token = jsonwebtoken::encode(&Header::new(self.algorithm), &value, &self.encoding)
            .map_err(|e| ScError::new(ErrorName::AuthTokenError, e.to_string()))?;
        Ok((token, value))
    }

    /// Verifies a signed token; the error is the sc-errors object socketcluster-server gives.
    pub(crate) fn verify(&self, token: &str) -> Result<Value, ScError> {
        match jsonwebtoken::decode::<Value>(token, &self.decoding, &self.validation) {
            Ok(data) => {
                // A date claim that is no number would otherwise pass as absent: a signed
                // `"exp":"never"` must not make a token that never expires.
                if let Some(name) = data.claims.as_object().and_then(non_numeric_date) {
                    return Err(ScError::new(
                        ErrorName::AuthTokenInvalidError,
                        format!("invalid {name} value"),
                    )
                    .with("isBadToken", true));
                }
                Ok(data.claims)
            }
            Err(e) => Err(map_error(e.kind(), token)),
        }
    }
}

/// The first of the date claims `exp`, `nbf` and `iat` present with a value that is not a
/// number.
fn non_numeric_date(claims: &Map<String, Value>) -> Option<&'static str> {
    ["exp", "nbf", "iat"]
        .into_iter()
        .find(|name| claims.get(*name).is_some_and(|v| !v.is_number()))
}

fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn map_error(kind: &ErrorKind, token: &str) -> ScError {
    let claim_date = |name: &str| {
        unverified_claims(token)
            .and_then(|c| c.get(name).and_then(Value::as_u64))
            .map(iso_date)
    };
    match kind {
        ErrorKind::ExpiredSignature => {
            let mut e = ScError::new(ErrorName::AuthTokenExpiredError, "jwt expired");
            if let Some(d) = claim_date("exp") {
                e = e.with("expiry", d);
            }
            e.with("isBadToken", true)
        }
        ErrorKind::ImmatureSignature => {
            let mut e = ScError::new(ErrorName::AuthTokenNotBeforeError, "jwt not active");
            if let Some(d) = claim_date("nbf") {
                e = e.with("date", d);
            }
            e.with("isBadToken", false)
        }
        ErrorKind::InvalidSignature => {
            ScError::new(ErrorName::AuthTokenInvalidError, "invalid signature")
                .with("isBadToken", true)
        }
        ErrorKind::InvalidAlgorithm => {
            ScError::new(ErrorName::AuthTokenInvalidError, "invalid algorithm")
                .with("isBadToken", true)
        }
        _ => {
            ScError::new(ErrorName::AuthTokenInvalidError, "jwt malformed").with("isBadToken", true)
        }
    }
}

/// The `AuthTokenInvalidError` for a `#authenticate` whose data is no string.
pub(crate) fn missing_token_error() -> ScError {
    ScError::new(ErrorName::AuthTokenInvalidError, "jwt must be provided").with("isBadToken", true)
}

/// Seconds since the epoch as `JSON.stringify(new Date(..))` writes them.
fn iso_date(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant), for dates after 1970.
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_errors() {
        let auth = Auth::new(&AuthKey::Secret(b"k".to_vec()), 86_400).unwrap();
        let (token, claims) = auth.sign(serde_json::json!({"username": "a"})).unwrap();
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            86_400
        );
        assert_eq!(auth.verify(&token).unwrap()["username"], "a");
        assert_eq!(
            auth.verify("not-a-jwt").unwrap_err().name,
            "AuthTokenInvalidError"
        );
        let other = Auth::new(&AuthKey::Secret(b"other".to_vec()), 86_400).unwrap();
        assert_eq!(
            other.verify(&token).unwrap_err().name,
            "AuthTokenInvalidError"
        );
        let (old, _) = auth.sign(serde_json::json!({"exp": 1000})).unwrap();
        let e = auth.verify(&old).unwrap_err();
        assert_eq!(e.name, "AuthTokenExpiredError");
        assert_eq!(e.extra["expiry"], "1970-01-01T00:16:40.000Z");
    }

    /// A date claim that is not a number makes a token invalid, even correctly signed; signing
    /// one is refused.
    #[test]
    fn date_claims_must_be_numbers() {
        let secret = b"k".to_vec();
        let auth = Auth::new(&AuthKey::Secret(secret.clone()), 86_400).unwrap();
        let key = EncodingKey::from_secret(&secret);
        for (claims, name) in [
            (serde_json::json!({"u": 1, "exp": "never"}), "exp"),
            (serde_json::json!({"u": 1, "nbf": "soon"}), "nbf"),
            (serde_json::json!({"u": 1, "iat": [1]}), "iat"),
            (serde_json::json!({"u": 1, "exp": null}), "exp"),
        ] {
            let token =
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
            let e = auth.verify(&token).unwrap_err();
            assert_eq!(e.name, "AuthTokenInvalidError", "{claims}");
            assert_eq!(e.message, format!("invalid {name} value"));
            assert_eq!(e.extra["isBadToken"], true);
            let e = auth.sign(claims.clone()).unwrap_err();
            assert_eq!(e.name, "InvalidArgumentsError", "{claims}");
        }
        // Numbers pass, integral or not.
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"u": 1, "exp": 4_000_000_000.5_f64, "iat": 1}),
            &key,
        )
        .unwrap();
        assert!(auth.verify(&token).is_ok());
    }

    #[test]
    fn dates() {
        assert_eq!(iso_date(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_date(951_782_400), "2000-02-29T00:00:00.000Z");
    }
}
