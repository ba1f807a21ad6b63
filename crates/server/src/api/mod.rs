//! The HTTP API v1 (DESIGN.md "API"): JSON in and out, errors as `{"error": "..."}` with a
//! proper status. The stream path is the rest of the URL path, unencoded. Every route is in
//! the OpenAPI document [`OPENAPI`] (served at `/api/v1/openapi.json`); a test checks that the
//! routes answered and the document agree.
//!
//! - `GET /api/v1/paths`: `{"items": [PATH, ...]}` sorted by path: every live path and every
//!   path with a configured source.
//! - `GET /api/v1/paths/PATH`: one PATH (a path known to the hub, with a source, or with push
//!   targets), or 404.
//!   PATH = `{"path": "cams/a", "live": bool, "readers": N, "source": null | SOURCE,
//!   "push": [RELAY, ...], "publisher": null | {"protocol", "remote_addr", "session_id"},
//!   "tracks": [TRACK, ...], "bitrate_in": bits/s, "readers_by_protocol": {"rtmp": N, ...},
//!   "bytes_in": N, "bytes_out": N, "uptime": seconds | null, "recording": bool, "hls": bool}`;
//!   SOURCE is [`crate::source::SourceStatus`], RELAY a push target's
//!   [`crate::relay::RelayStatus`]. `readers` counts viewers, not the server's own services
//!   (HLS muxing, recording, push); `readers_by_protocol` counts reader sessions (HLS players
//!   included, see [`crate::http_sessions`]). `publisher` is the publishing session, or a
//!   pulled source's session (its peer is the camera). `bitrate_in` is the media payload rate
//!   over the last few seconds ([`crate::rate`]); `bytes_in`/`bytes_out` are the wire bytes
//!   of every session of the path since the server started.
//! - `GET /api/v1/sessions`, `GET|DELETE /api/v1/sessions/ID`: see [`sessions`].
//! - `POST /api/v1/probe` with `{"url": "rtsp://..." | "rtmp://..."}`: connects once and
//!   reports what it found ([`crate::source::ProbeResult`]). Loopback clients only (it makes
//!   the server connect anywhere), at most [`MAX_PROBES`] at once (503 beyond), the body at
//!   most [`MAX_PROBE_BODY`] bytes. Nothing touches the server's streams.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::config::SourceConfig;
use crate::hls::HlsRegistry;
use crate::hub::Hub;
use crate::push::PushRegistry;
use crate::record::Recordings;
use crate::session::{Protocol, Role};
use crate::source::{MAX_PROBES, Sources};

pub mod sessions;

/// `/api/v1/paths`.
pub const PATHS: &str = "/api/v1/paths";

/// `/api/v1/openapi.json`.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// The OpenAPI 3 document of every `/api/v1` route.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Everything under it is the API's.
pub const PREFIX: &str = "/api/v1";

/// `/api/v1/probe`.
pub const PROBE: &str = "/api/v1/probe";

/// Largest probe request body: a URL is at most 2048 bytes ([`crate::config::check_relay_url`]).
pub const MAX_PROBE_BODY: usize = 8 * 1024;

/// What the routes need.
pub struct Api {
    hub: Arc<Hub>,
    sources: Option<Arc<Sources>>,
    push: Option<Arc<PushRegistry>>,
    source_config: SourceConfig,
    probes: Semaphore,
    /// `/api/v1/config` ([`crate::api_config`]), once the server sets it.
    reloader: std::sync::OnceLock<Arc<crate::reload::Reloader>>,
    /// Live HLS muxing (the `hls` field of a path), once the router has it.
    hls: std::sync::OnceLock<Arc<HlsRegistry>>,
    /// Recordings (the `recording` field of a path), once the router has them.
    recordings: std::sync::OnceLock<Arc<Recordings>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("hub", &self.hub).finish_non_exhaustive()
    }
}

impl Api {
    /// The API over `hub`, its pulled sources and its push relays.
    pub fn new(
        hub: Arc<Hub>,
        sources: Option<Arc<Sources>>,
        push: Option<Arc<PushRegistry>>,
        source_config: SourceConfig,
    ) -> Arc<Api> {
        Arc::new(Api {
            hub,
            sources,
            push,
            source_config,
            probes: Semaphore::new(MAX_PROBES),
            reloader: std::sync::OnceLock::new(),
            hls: Default::default(),
            recordings: Default::default(),
        })
    }

    /// Gives the API the live HLS muxing and the recordings whose state paths show (the first
    /// call wins).
    pub fn attach_services(&self, hls: Arc<HlsRegistry>, recordings: Arc<Recordings>) {
        let _ = self.hls.set(hls);
        let _ = self.recordings.set(recordings);
    }

    /// The pulled sources, if the server has them (metrics).
    pub fn sources(&self) -> Option<&Arc<Sources>> {
        self.sources.as_ref()
    }

    /// The push relays, if the server has them (metrics).
    pub fn push(&self) -> Option<&Arc<PushRegistry>> {
        self.push.as_ref()
    }

    /// The config reloader, once set (metrics).
    pub fn reloader(&self) -> Option<&Arc<crate::reload::Reloader>> {
        self.reloader.get()
    }

    /// Serves `/api/v1/config` from `reloader` (once; later calls are ignored).
    pub fn set_reloader(&self, reloader: Arc<crate::reload::Reloader>) {
        let _ = self.reloader.set(reloader);
    }

    /// The push relays of `path` (one per `push` URL, idle while the path is not live).
    fn push_status(&self, path: &str) -> Vec<crate::relay::RelayStatus> {
        self.push.as_ref().map(|p| p.status(path)).unwrap_or_default()
    }
}

pub(crate) fn reply(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body.to_string() + "\n")
        .into_response()
}

pub(crate) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    reply(status, json!({ "error": message.to_string() }))
}

fn under(uri_path: &str, prefix: &str) -> bool {
    uri_path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether this module answers `uri_path`.
pub fn answers(uri_path: &str) -> bool {
    under(uri_path, PATHS)
        || under(uri_path, PROBE)
        || under(uri_path, sessions::SESSIONS)
        || uri_path == OPENAPI_PATH
        || crate::api_config::answers(uri_path)
}

/// One path's JSON.
fn path_json(api: &Api, path: &str) -> Value {
    let source = api.sources.as_ref().and_then(|s| s.status(path));
    let stats = api.hub.path_stats(path);
    let on_path = api.hub.sessions.on_path(path);
    let publisher = on_path
        .iter()
        .find(|s| matches!(s.role(), Some(Role::Publisher | Role::Source)))
        .map(|s| json!({ "protocol": s.protocol, "remote_addr": s.peer.to_string(), "session_id": s.id }));
    let mut by_protocol = serde_json::Map::new();
    for p in Protocol::ALL {
        if p != Protocol::HttpPlayback {
            by_protocol.insert(p.as_str().to_owned(), json!(0));
        }
    }
    for s in on_path.iter().filter(|s| s.role() == Some(Role::Reader)) {
        let n = by_protocol.entry(s.protocol.as_str()).or_insert(json!(0));
        *n = json!(n.as_u64().unwrap_or(0) + 1);
    }
    let (bytes_in, bytes_out) = api.hub.sessions.path_bytes(path);
    let live = api.hub.is_published(path);
    let tracks: Vec<Value> = stats
        .as_ref()
        .map(|st| {
            let t = &st.tracks;
            [t.video.as_ref(), t.audio.as_ref()]
                .into_iter()
                .flatten()
                .map(|t| {
                    let mut v = serde_json::to_value(crate::source::probe_track(t)).unwrap_or(Value::Null);
                    if let Some(o) = v.as_object_mut() {
                        o.remove("clock_rate");
                        if o.get("kind").and_then(Value::as_str) == Some("video") && st.fps > 0.0 {
                            o.insert("fps".into(), json!((st.fps * 100.0).round() / 100.0));
                        }
                    }
                    v
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "path": path,
        "live": live,
        "readers": api.hub.readers(path),
        "source": source,
        "push": api.push_status(path),
        "publisher": publisher,
        "tracks": tracks,
        "bitrate_in": stats.as_ref().filter(|_| live).map_or(0, |s| s.bitrate_in.round() as u64),
        "readers_by_protocol": by_protocol,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "uptime": stats.as_ref().and_then(|s| s.live_since).map(|(at, _)| at.elapsed().as_secs_f64()),
        "recording": api.recordings.get().is_some_and(|r| r.is_recording(path)),
        "hls": api.hls.get().is_some_and(|h| h.get(path).is_some()),
    })
}

/// Answers a request this module [`answers`].
pub async fn handle(api: &Api, method: &Method, uri_path: &str, body: Body, peer: SocketAddr) -> Response {
    if crate::api_config::answers(uri_path) {
        return crate::api_config::handle(api.reloader.get(), method, uri_path, body, peer).await;
    }
    if uri_path == OPENAPI_PATH {
        if method != Method::GET && method != Method::HEAD {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json"), (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
            OPENAPI,
        )
            .into_response();
    }
    if under(uri_path, sessions::SESSIONS) {
        return sessions::handle(&api.hub.sessions, method, uri_path, peer);
    }
    if under(uri_path, PROBE) {
        if uri_path != PROBE {
            return error(StatusCode::NOT_FOUND, "not found");
        }
        if method != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "POST a {\"url\": ...}");
        }
        return probe(api, body, peer).await;
    }
    if method != Method::GET && method != Method::HEAD {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let rest = uri_path.strip_prefix(PATHS).unwrap_or("");
    let path = rest.trim_start_matches('/');
    if path.is_empty() {
        let mut paths = api.hub.live_paths();
        if let Some(s) = &api.sources {
            paths.extend(s.paths());
        }
        paths.sort();
        paths.dedup();
        let items: Vec<Value> = paths.iter().map(|p| path_json(api, p)).collect();
        return reply(StatusCode::OK, json!({ "items": items }));
    }
    let known = api.hub.has_stream(path)
        || api.sources.as_ref().is_some_and(|s| s.entry(path).is_some())
        || !api.push_status(path).is_empty();
    if !known {
        return error(StatusCode::NOT_FOUND, format!("no path {path}"));
    }
    reply(StatusCode::OK, path_json(api, path))
}

async fn probe(api: &Api, body: Body, peer: SocketAddr) -> Response {
    if !peer.ip().to_canonical().is_loopback() {
        return error(StatusCode::FORBIDDEN, "probing is allowed from loopback only");
    }
    let bytes = match axum::body::to_bytes(body, MAX_PROBE_BODY).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("body over {MAX_PROBE_BODY} bytes")),
    };
    let url = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => match v.get("url").and_then(Value::as_str) {
            Some(u) => u.to_owned(),
            None => {
                return error(StatusCode::BAD_REQUEST, "the body must be {\"url\": \"rtsp://...\" | \"rtmp://...\"}");
            }
        },
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    if let Err(e) = crate::config::check_relay_url("url", &url) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let Ok(_permit) = api.probes.try_acquire() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("{MAX_PROBES} probes are running; try again"));
    };
    let result = crate::source::probe(&api.source_config, &url).await;
    match serde_json::to_value(&result) {
        Ok(v) => reply(StatusCode::OK, v),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> Arc<Api> {
        Api::new(Hub::new(crate::config::HubConfig::default()), None, None, SourceConfig::default())
    }

    async fn body_json(r: Response) -> Value {
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    /// A probe makes the server connect anywhere: only loopback clients may ask for one.
    #[tokio::test]
    async fn probe_is_for_loopback_clients_only() {
        let api = api();
        let body = || Body::from("{\"url\": \"rtsp://127.0.0.1:1/x\"}");
        for peer in ["10.1.2.3:5000", "[2001:db8::1]:5000", "[::ffff:192.0.2.1]:5000"] {
            let r = handle(&api, &Method::POST, PROBE, body(), peer.parse().unwrap()).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{peer}");
            assert!(body_json(r).await["error"].as_str().unwrap().contains("loopback"));
        }
        let r = handle(&api, &Method::GET, PROBE, Body::empty(), "127.0.0.1:5000".parse().unwrap()).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        // Loopback in every spelling gets past the rule (to the URL check: no connection made).
        for peer in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            let r =
                handle(&api, &Method::POST, PROBE, Body::from("{\"url\": \"ftp://x\"}"), peer.parse().unwrap()).await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{peer}");
        }
    }

    /// At most MAX_PROBES probes at once: the next is told to come back (503), before any
    /// connection is made.
    #[tokio::test]
    async fn probes_beyond_the_cap_are_503() {
        let api = api();
        let _held = api.probes.try_acquire_many(MAX_PROBES as u32).unwrap();
        let body = Body::from("{\"url\": \"rtsp://127.0.0.1:1/x\"}");
        let r = handle(&api, &Method::POST, PROBE, body, "127.0.0.1:5000".parse().unwrap()).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body_json(r).await["error"].is_string());
    }

    #[tokio::test]
    async fn paths_list_and_unknown_path() {
        let api = api();
        let _p = api.hub.publish("live/a").unwrap();
        let peer = "192.0.2.9:1".parse().unwrap();
        let r = handle(&api, &Method::GET, PATHS, Body::empty(), peer).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v = body_json(r).await;
        assert_eq!(v["items"][0]["path"], "live/a");
        assert_eq!(v["items"][0]["live"], true);
        assert_eq!(v["items"][0]["source"], Value::Null);
        assert_eq!(v["items"][0]["push"], json!([]));
        let r = handle(&api, &Method::GET, "/api/v1/paths/live/b", Body::empty(), peer).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(body_json(r).await["error"].is_string());
    }
}
