//! `/api/v1/sessions`: every open session ([`crate::session`]).
//!
//! - `GET /api/v1/sessions`: `{"items": [SESSION, ...]}`, oldest first.
//! - `GET /api/v1/sessions/ID`: one SESSION, or 404 (an id that is not one, or not open).
//! - `DELETE /api/v1/sessions/ID`: kicks it (204), or 404. The session's driver closes it: a
//!   publisher unpublishes (its readers get the republish grace), a reader's connection is
//!   closed, an HLS player is refused for a while, a pulled source or push relay starts a new
//!   try. Loopback clients only until users and permissions exist (DESIGN.md "API").
//!
//! SESSION = `{"id": "16 hex digits", "protocol": "rtmp" | "rtsp" | "http_flv" | "hls" |
//! "http_playback", "role": "publisher" | "reader" | "playback" | "source" | "push" | null,
//! "path": "live/a" | null, "remote_addr": "ip:port", "user": null | "name", "created": RFC
//! 3339, "duration": seconds, "bytes_in": N, "bytes_out": N, "frames_skipped": N, "rtcp": null
//! | {"packets_lost": N, "fraction_lost": 0..1, "jitter": seconds}}` (see
//! [`crate::session::SessionInfo::to_json`]). `role` and `path` are null until a publish or
//! play is accepted on the connection.

use std::net::SocketAddr;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{error, reply};
use crate::session::{SessionId, Sessions};

/// `/api/v1/sessions`.
pub const SESSIONS: &str = "/api/v1/sessions";

/// Answers a request under [`SESSIONS`].
pub fn handle(sessions: &Sessions, method: &Method, uri_path: &str, peer: SocketAddr) -> Response {
    let rest = uri_path.strip_prefix(SESSIONS).unwrap_or("");
    let id = rest.trim_start_matches('/');
    if id.is_empty() {
        if method != Method::GET && method != Method::HEAD {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        let items: Vec<Value> = sessions.list().iter().map(|s| s.to_json()).collect();
        return reply(StatusCode::OK, json!({ "items": items }));
    }
    let known = SessionId::parse(id).filter(|id| sessions.get(*id).is_some());
    match *method {
        Method::GET | Method::HEAD => match known.and_then(|id| sessions.get(id)) {
            Some(s) => reply(StatusCode::OK, s.to_json()),
            None => error(StatusCode::NOT_FOUND, format!("no session {id}")),
        },
        Method::DELETE => {
            // Until users and permissions exist, what changes anything is for loopback only.
            if !peer.ip().to_canonical().is_loopback() {
                return error(StatusCode::FORBIDDEN, "kicking sessions is allowed from loopback only");
            }
            match known {
                Some(id) if sessions.kick(id) => {
                    tracing::info!(session = %id, %peer, "session kicked through the API");
                    StatusCode::NO_CONTENT.into_response()
                }
                _ => error(StatusCode::NOT_FOUND, format!("no session {id}")),
            }
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Protocol, Role};

    async fn json_of(r: Response) -> (StatusCode, Value) {
        let status = r.status();
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, if b.is_empty() { Value::Null } else { serde_json::from_slice(&b).unwrap() })
    }

    #[tokio::test]
    async fn list_get_kick_and_unknown_ids() {
        let sessions = Sessions::new();
        let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let far: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let h = sessions.open(Protocol::Rtsp, "192.0.2.5:4000".parse().unwrap());
        h.begin(Role::Reader, "live/a");
        h.info().add_out(1234);
        let id = h.id().to_string();
        let (s, v) = json_of(handle(&sessions, &Method::GET, SESSIONS, far)).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["items"][0]["id"], id);
        assert_eq!(v["items"][0]["protocol"], "rtsp");
        assert_eq!(v["items"][0]["role"], "reader");
        assert_eq!(v["items"][0]["path"], "live/a");
        assert_eq!(v["items"][0]["remote_addr"], "192.0.2.5:4000");
        assert_eq!(v["items"][0]["bytes_out"], 1234);
        assert!(v["items"][0]["created"].as_str().unwrap().ends_with('Z'));
        let one = format!("{SESSIONS}/{id}");
        let (s, v) = json_of(handle(&sessions, &Method::GET, &one, far)).await;
        assert_eq!((s, v["id"].as_str()), (StatusCode::OK, Some(id.as_str())));
        // Unknown, malformed: 404 with an error.
        for bad in ["0123456789abcdef", "nope", "0123456789abcdef/x"] {
            let (s, v) = json_of(handle(&sessions, &Method::GET, &format!("{SESSIONS}/{bad}"), far)).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{bad}");
            assert!(v["error"].is_string());
            let (s, _) = json_of(handle(&sessions, &Method::DELETE, &format!("{SESSIONS}/{bad}"), local)).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{bad}");
        }
        // Kicking: loopback only, then 204, and the driver sees it.
        let (s, v) = json_of(handle(&sessions, &Method::DELETE, &one, far)).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(v["error"].as_str().unwrap().contains("loopback"));
        assert!(!h.info().was_kicked());
        let (s, _) = json_of(handle(&sessions, &Method::DELETE, &one, local)).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        h.kicked().await;
        drop(h);
        let (s, _) = json_of(handle(&sessions, &Method::DELETE, &one, local)).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = json_of(handle(&sessions, &Method::POST, SESSIONS, local)).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    }
}
