//! `auth.http_url`: an external service decides. POST JSON `{action, path, protocol, ip, user,
//! pass, query, id}`; a 2xx answer allows, anything else (another status, no answer within
//! `http_timeout_ms`, no connection) denies. Answers are reused for `http_cache_ms` for the
//! same request (an HLS player asks for every segment), in a bounded cache: the same action,
//! path, protocol, address and credentials, whatever else the query says (LL-HLS players
//! change `_HLS_msn` with every request). At most [`MAX_CALLS`] calls run at once; one that
//! waits longer than `http_timeout_ms` for its turn denies.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::Method;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{AuthConfig, AuthRequest, AuthStats, Presented};

/// Most answers kept. Bounds the memory many different requests can take.
pub const MAX_CACHED: usize = 4096;
/// The service's answer body is read up to this size (only its status counts).
const MAX_ANSWER: usize = 4096;

/// Most calls to the service at once.
pub const MAX_CALLS: usize = 32;

/// Recent answers by request.
#[derive(Debug)]
pub struct Cache {
    answers: Mutex<HashMap<[u8; 32], (Instant, bool)>>,
    calls: tokio::sync::Semaphore,
}

impl Default for Cache {
    fn default() -> Self {
        Cache { answers: Mutex::default(), calls: tokio::sync::Semaphore::new(MAX_CALLS) }
    }
}

/// The cache key of a call with `body`: what the service decides on but the query (beyond
/// the credentials it carried, already in `user`, `pass`, `token`) and the session id (it
/// differs for each connection of one player).
fn key(body: &serde_json::Value) -> [u8; 32] {
    let mut h = Sha256::new();
    for field in ["action", "path", "protocol", "ip", "user", "pass", "token"] {
        let v = body[field].as_str().unwrap_or_default();
        h.update((v.len() as u64).to_be_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().into()
}

/// The body of the call.
pub fn body(req: &AuthRequest) -> serde_json::Value {
    let (user, pass, token) = match &req.presented {
        Presented::Password { user, pass } => (user.as_str(), pass.as_str(), ""),
        Presented::Token(t) => ("", "", t.as_str()),
        Presented::Digest(d, _) => (d.username.as_str(), "", ""),
        Presented::None => ("", "", ""),
    };
    serde_json::json!({
        "action": req.action.as_str(),
        "path": req.path,
        "protocol": req.via.as_str(),
        "ip": req.ip.to_canonical().to_string(),
        "user": user,
        "pass": pass,
        "token": token,
        "query": req.query,
        "id": req.id,
    })
}

impl Cache {
    /// Forgets every answer (the settings changed).
    pub fn clear(&self) {
        self.answers.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Asks the service (or the cache).
    pub async fn ask(&self, config: &AuthConfig, req: &AuthRequest, stats: &AuthStats) -> bool {
        let mut b = body(req);
        let key = key(&b);
        let ttl = Duration::from_millis(config.http_cache_ms);
        let now = Instant::now();
        if let Some((at, allowed)) = self.answers.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && now.duration_since(*at) < ttl
        {
            return *allowed;
        }
        if b["id"].is_null() {
            b["id"] = serde_json::Value::String(String::new());
        }
        let timeout = Duration::from_millis(config.http_timeout_ms);
        let Ok(Ok(_call)) = tokio::time::timeout(timeout, self.calls.acquire()).await else {
            stats.http_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("auth.http_url: {MAX_CALLS} calls running; denied");
            return false;
        };
        let answer = crate::http_client::request(
            Method::POST,
            &config.http_url,
            "application/json",
            Bytes::from(b.to_string()),
            timeout,
            MAX_ANSWER,
        )
        .await;
        let allowed = match answer {
            Ok((status, _)) => status.is_success(),
            Err(e) => {
                stats.http_errors.fetch_add(1, Ordering::Relaxed);
                // The URL may carry credentials: never shown.
                tracing::warn!(url = %crate::relay::redact(&config.http_url), "auth.http_url: {e}; denied");
                false
            }
        };
        if !ttl.is_zero() {
            let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
            if answers.len() >= MAX_CACHED {
                answers.retain(|_, (at, _)| now.duration_since(*at) < ttl);
                if answers.len() >= MAX_CACHED {
                    answers.clear();
                }
            }
            answers.insert(key, (Instant::now(), allowed));
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Action, Via};

    fn req(query: &str, presented: Presented) -> AuthRequest {
        AuthRequest {
            action: Action::Read,
            path: "cams/a".into(),
            via: Via::Hls,
            ip: "10.0.0.1".parse().unwrap(),
            presented,
            query: query.into(),
            id: Some("s1".into()),
        }
    }

    #[test]
    fn auth_callback_key_ignores_the_rest_of_the_query() {
        let pw = || Presented::Password { user: "u".into(), pass: "p".into() };
        let k = |q: &str, p: Presented| key(&body(&req(q, p)));
        let a = k("user=u&pass=p&_HLS_msn=10&_HLS_part=1", pw());
        assert_eq!(a, k("user=u&pass=p&_HLS_msn=11&_HLS_part=0", pw()));
        let mut other_id = req("user=u&pass=p", pw());
        other_id.id = Some("s2".into());
        assert_eq!(a, key(&body(&other_id)));
        // The credentials, the path and the address do count.
        assert_ne!(a, k("", Presented::Password { user: "u".into(), pass: "q".into() }));
        assert_ne!(a, k("", Presented::Token("t".into())));
        assert_ne!(a, k("", Presented::None));
        let mut elsewhere = req("", pw());
        elsewhere.ip = "10.0.0.2".parse().unwrap();
        assert_ne!(a, key(&body(&elsewhere)));
        let mut other_path = req("", pw());
        other_path.path = "cams/b".into();
        assert_ne!(a, key(&body(&other_path)));
    }

    /// With every call slot taken, a request waits at most `http_timeout_ms`, then is denied
    /// without calling.
    #[tokio::test]
    async fn auth_callback_calls_are_capped() {
        let cache = Cache::default();
        let stats = AuthStats::default();
        let config =
            AuthConfig { http_url: "http://127.0.0.1:9/auth".into(), http_timeout_ms: 50, ..AuthConfig::default() };
        let all = cache.calls.acquire_many(MAX_CALLS as u32).await.unwrap();
        let t = Instant::now();
        assert!(!cache.ask(&config, &req("", Presented::None), &stats).await);
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(stats.http_errors.load(Ordering::Relaxed), 1);
        drop(all);
    }
}
