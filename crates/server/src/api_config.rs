//! The configuration routes of the API (issue 18; DESIGN.md "API"):
//!
//! - `GET /api/v1/config`: the configuration in force as JSON, passwords and URL credentials
//!   redacted ([`crate::reload::redacted`]).
//! - `PATCH /api/v1/config/paths/{pattern}` with a JSON object of path keys (`{"record":
//!   true}`; `null` removes a key): checked like the file, applied at once, and written back
//!   to the config file with its comments and order kept. 200 with `{"pattern", "settings"}`
//!   (the entry as it now is); 400 `{"error"}` naming the key when invalid; 409 when the
//!   server runs without a config file (there is nothing to write back to, and a change that
//!   a restart would silently undo is worse than none); 403 from other hosts than loopback
//!   (until the API has users); 413 for a body over [`MAX_PATCH_BODY`].
//!
//! The pattern is the rest of the URL path, unencoded, as for stream paths.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::reload::{ReloadError, Reloader, redacted};

/// `/api/v1/config`.
pub const CONFIG: &str = "/api/v1/config";

/// `/api/v1/config/paths/`: the prefix of one entry's URL.
pub const CONFIG_PATHS: &str = "/api/v1/config/paths/";

/// Largest PATCH body: a path entry's keys are a few hundred bytes; push lists are short.
pub const MAX_PATCH_BODY: usize = 64 * 1024;

fn reply(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body.to_string() + "\n")
        .into_response()
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    reply(status, json!({ "error": message.to_string() }))
}

/// Whether this module answers `uri_path`.
pub fn answers(uri_path: &str) -> bool {
    uri_path.strip_prefix(CONFIG).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Answers a request this module [`answers`]; `reloader` is None in a server built without
/// one (tests of other parts), which answers 503.
pub async fn handle(
    reloader: Option<&Arc<Reloader>>,
    method: &Method,
    uri_path: &str,
    body: Body,
    peer: SocketAddr,
) -> Response {
    let Some(r) = reloader else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "configuration is not available here");
    };
    if uri_path == CONFIG {
        if method != Method::GET && method != Method::HEAD {
            return error(StatusCode::METHOD_NOT_ALLOWED, "GET the configuration");
        }
        let config = serde_json::to_value(r.current()).unwrap_or_default();
        return reply(StatusCode::OK, redacted(&config));
    }
    let Some(pattern) = uri_path.strip_prefix(CONFIG_PATHS).filter(|p| !p.is_empty()) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    if method != Method::PATCH {
        return error(StatusCode::METHOD_NOT_ALLOWED, "PATCH a JSON object of path keys");
    }
    if !peer.ip().to_canonical().is_loopback() {
        return error(StatusCode::FORBIDDEN, "changing the configuration is allowed from loopback only");
    }
    let bytes = match axum::body::to_bytes(body, MAX_PATCH_BODY).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("body over {MAX_PATCH_BODY} bytes")),
    };
    let patch: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    match r.patch_path(pattern, &patch).await {
        Ok(v) => reply(StatusCode::OK, v),
        Err(e @ ReloadError::NoFile) => error(StatusCode::CONFLICT, e),
        Err(e @ (ReloadError::Invalid(_) | ReloadError::Body(_))) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ (ReloadError::Apply(_) | ReloadError::Write(..))) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::hooks::Hooks;
    use crate::hub::Hub;
    use crate::paths::SharedPaths;

    async fn body_json(r: Response) -> (StatusCode, Value) {
        let status = r.status();
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&b).unwrap())
    }

    fn no_file() -> Arc<Reloader> {
        let config = Config::parse("[[hooks.targets]]\nurl = \"http://u:hunter2@127.0.0.1:9/\"\n").unwrap();
        let paths = SharedPaths::new(config.paths.clone());
        let hub = Hub::new(config.hub.clone());
        Reloader::new(config, None, paths, hub, Hooks::new(Default::default()).unwrap())
    }

    #[tokio::test]
    async fn get_redacts_and_patch_without_a_file_conflicts() {
        let r = no_file();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let (s, v) = body_json(handle(Some(&r), &Method::GET, CONFIG, Body::empty(), local).await).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["hooks"]["targets"][0]["url"], "http://***@127.0.0.1:9/");
        assert!(!v.to_string().contains("hunter2"), "{v}");
        let patch = || Body::from("{\"record\": true}");
        let (s, v) = body_json(handle(Some(&r), &Method::PATCH, "/api/v1/config/paths/a", patch(), local).await).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        let far: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let (s, _) = body_json(handle(Some(&r), &Method::PATCH, "/api/v1/config/paths/a", patch(), far).await).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = body_json(handle(Some(&r), &Method::GET, "/api/v1/config/paths/a", patch(), local).await).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        let (s, _) = body_json(handle(Some(&r), &Method::PATCH, "/api/v1/config/x", patch(), local).await).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(answers("/api/v1/config") && answers("/api/v1/config/paths/a") && !answers("/api/v1/configx"));
    }
}
