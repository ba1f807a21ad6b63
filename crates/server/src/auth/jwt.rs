//! JWT (RFC 7519) with keys from `auth.jwt_jwks_url` (a JWK Set, RFC 7517 section 5): the
//! token's permissions are in its claim `auth.jwt_claim`, in the shape of a user's
//! `permissions` (`[{"action": "read", "path": "cams/*"}]`). Signatures: RS256, ES256 and
//! EdDSA (Ed25519), RFC 7518 section 3 and RFC 8037; any other `alg` (HS256 above all, which
//! would take a public key for a shared secret) is refused. `exp` is required.
//!
//! Keys are fetched when first needed, kept for [`JWKS_TTL`], and fetched again early when a
//! token names a key id the set lacks (a rotation), at most once per [`JWKS_MIN_REFETCH`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::Method;
use bytes::Bytes;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::users::{MAX_PER_USER, Permission, PermissionConfig};

/// How long a fetched key set is used before it is fetched again.
pub const JWKS_TTL: Duration = Duration::from_secs(300);
/// An unknown key id fetches the set again at most this often (a flood of forged ids must
/// not become a flood of fetches).
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);
/// Largest key set read.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Longest token considered.
pub const MAX_TOKEN_LEN: usize = 8192;

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not a JWT, too long, or its header does not parse.
    #[error("not a JWT: {0}")]
    Malformed(String),
    /// An `alg` we do not accept.
    #[error("algorithm {0:?} not accepted (RS256, ES256, EdDSA)")]
    Algorithm(Algorithm),
    /// No key in the set for it.
    #[error("no key {0:?} in the JWKS")]
    NoKey(Option<String>),
    /// The key set could not be fetched or read.
    #[error("JWKS: {0}")]
    Jwks(String),
    /// A bad signature, an expired token, a missing claim.
    #[error("{0}")]
    Invalid(String),
    /// The permissions claim is missing or has the wrong shape.
    #[error("claim {0:?}: {1}")]
    Claim(String, String),
}

/// The fetched key set.
#[derive(Debug, Default)]
pub struct Jwks {
    keys: Mutex<Option<(Instant, std::sync::Arc<JwkSet>)>>,
    fetch: tokio::sync::Mutex<()>,
    /// The last fetch that failed, and why: not tried again for [`JWKS_MIN_REFETCH`] (N
    /// requests waiting for an unreachable key set cost one timeout, not N).
    failed: Mutex<Option<(Instant, String)>>,
}

const ACCEPTED: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

impl Jwks {
    /// Forgets the keys (the settings changed).
    pub fn clear(&self) {
        *self.keys.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The error of a fetch that failed less than [`JWKS_MIN_REFETCH`] ago.
    fn recent_failure(&self) -> Option<JwtError> {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        let (at, why) = failed.as_ref()?;
        (at.elapsed() < JWKS_MIN_REFETCH).then(|| JwtError::Jwks(format!("{why} (fetch failed recently)")))
    }

    fn cached(&self) -> Option<(Instant, std::sync::Arc<JwkSet>)> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The key set, fetched when there is none, it is old, or `stale` (an unknown key id)
    /// and the last fetch is not too recent.
    async fn set(&self, url: &str, timeout: Duration, stale: bool) -> Result<std::sync::Arc<JwkSet>, JwtError> {
        let fresh = |at: Instant| {
            let age = at.elapsed();
            age < JWKS_TTL && !(stale && age >= JWKS_MIN_REFETCH)
        };
        if let Some((at, set)) = self.cached()
            && fresh(at)
        {
            return Ok(set);
        }
        if let Some(e) = self.recent_failure() {
            return Err(e);
        }
        // One fetch at a time; those who waited take its result (a failure too).
        let _one = self.fetch.lock().await;
        if let Some((at, set)) = self.cached()
            && (fresh(at) || at.elapsed() < JWKS_MIN_REFETCH)
        {
            return Ok(set);
        }
        if let Some(e) = self.recent_failure() {
            return Err(e);
        }
        let fetched = async {
            let (status, body) =
                crate::http_client::request(Method::GET, url, "", Bytes::new(), timeout, MAX_JWKS_BYTES)
                    .await
                    .map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("answered {status}"));
            }
            serde_json::from_slice::<JwkSet>(&body).map_err(|e| e.to_string())
        }
        .await;
        let set = match fetched {
            Ok(set) => set,
            Err(why) => {
                *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), why.clone()));
                return Err(JwtError::Jwks(why));
            }
        };
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let set = std::sync::Arc::new(set);
        *self.keys.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), set.clone()));
        Ok(set)
    }

    /// Verifies `token` and returns the permissions of its claim `claim`, and its subject
    /// (`sub`), if it has one.
    pub async fn permissions(
        &self,
        url: &str,
        timeout: Duration,
        claim: &str,
        token: &str,
    ) -> Result<(Vec<Permission>, Option<String>), JwtError> {
        if token.len() > MAX_TOKEN_LEN || token.split('.').count() != 3 {
            return Err(JwtError::Malformed("three dot-separated parts expected".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(JwtError::Algorithm(header.alg));
        }
        let find = |set: &JwkSet| -> Option<jsonwebtoken::jwk::Jwk> {
            match &header.kid {
                Some(kid) => set.find(kid).cloned(),
                // No key id: the only key of the set that fits the algorithm.
                None => {
                    let fits: Vec<_> = set
                        .keys
                        .iter()
                        .filter(|k| DecodingKey::from_jwk(k).is_ok_and(|d| d.family() == header.alg.family()))
                        .collect();
                    (fits.len() == 1).then(|| fits[0].clone())
                }
            }
        };
        let mut jwk = find(&*self.set(url, timeout, false).await?);
        if jwk.is_none() {
            jwk = find(&*self.set(url, timeout, true).await?);
        }
        let jwk = jwk.ok_or_else(|| JwtError::NoKey(header.kid.clone()))?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| JwtError::Jwks(e.to_string()))?;
        if key.family() != header.alg.family() {
            return Err(JwtError::Invalid("the key does not fit the algorithm".into()));
        }
        let mut validation = Validation::new(header.alg);
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| JwtError::Invalid(e.to_string()))?;
        let value =
            data.claims.get(claim).cloned().ok_or_else(|| JwtError::Claim(claim.to_owned(), "missing".into()))?;
        let perms: Vec<PermissionConfig> =
            serde_json::from_value(value).map_err(|e| JwtError::Claim(claim.to_owned(), e.to_string()))?;
        if perms.len() > MAX_PER_USER {
            return Err(JwtError::Claim(claim.to_owned(), format!("more than {MAX_PER_USER} permissions")));
        }
        let perms = perms
            .iter()
            .map(Permission::compile)
            .collect::<Result<_, _>>()
            .map_err(|e| JwtError::Claim(claim.to_owned(), e))?;
        let sub = data.claims.get("sub").and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(str::to_owned);
        Ok((perms, sub))
    }
}

/// Whether `s` looks like a compact JWS (three base64url parts): a password field holding a
/// token, as RTSP and RTMP clients can send it.
pub fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_before_any_fetch() {
        let jwks = Jwks::default();
        // No server listens there: these must fail before fetching.
        let url = "http://127.0.0.1:9/jwks";
        let t = Duration::from_millis(100);
        assert!(matches!(jwks.permissions(url, t, "c", "abc").await, Err(JwtError::Malformed(_))));
        // {"alg":"HS256","typ":"JWT"} . {} . sig
        let hs = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2ln";
        assert!(matches!(jwks.permissions(url, t, "c", hs).await, Err(JwtError::Algorithm(Algorithm::HS256))));
        let long = format!("{}.a.b", "a".repeat(MAX_TOKEN_LEN));
        assert!(matches!(jwks.permissions(url, t, "c", &long).await, Err(JwtError::Malformed(_))));
        // {"alg":"EdDSA"}: the JWKS cannot be fetched.
        let ed = "eyJhbGciOiJFZERTQSJ9.e30.c2ln";
        assert!(matches!(jwks.permissions(url, t, "c", ed).await, Err(JwtError::Jwks(_))));
        assert!(looks_like_jwt(hs) && !looks_like_jwt("pass.word") && !looks_like_jwt("a.b.c d"));
    }

    /// A key set that cannot be fetched (a service that never answers): N requests at once
    /// cost one timeout and one connection, and the failure is remembered for a while.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auth_jwks_failure_is_remembered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(s);
            }
        });
        let jwks = std::sync::Arc::new(Jwks::default());
        let ed = "eyJhbGciOiJFZERTQSJ9.e30.c2ln";
        let t = Duration::from_millis(300);
        let start = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (jwks, url) = (jwks.clone(), url.clone());
                tokio::spawn(async move { jwks.permissions(&url, t, "c", ed).await })
            })
            .collect();
        for task in tasks {
            assert!(matches!(task.await.unwrap(), Err(JwtError::Jwks(_))));
        }
        assert!(start.elapsed() < t * 3, "{:?}", start.elapsed());
        assert!(matches!(jwks.permissions(&url, t, "c", ed).await, Err(JwtError::Jwks(_))));
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
