//! `auth.http_url`: an external service decides. POST JSON `{action, path, protocol, ip, user,
//! pass, query, id}`; a 2xx answer allows, anything else (another status, no answer within
//! `http_timeout_ms`, no connection) denies. Answers are reused for `http_cache_ms` for the
//! same request (an HLS player asks for every segment), in a bounded cache.

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

/// Recent answers by request.
#[derive(Debug, Default)]
pub struct Cache {
    answers: Mutex<HashMap<[u8; 32], (Instant, bool)>>,
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
        // The session id differs for each connection of one player: not part of the key.
        let key: [u8; 32] = {
            let mut keyed = b.clone();
            keyed["id"] = serde_json::Value::Null;
            Sha256::digest(keyed.to_string().as_bytes()).into()
        };
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
