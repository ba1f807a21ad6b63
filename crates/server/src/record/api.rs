//! `/api/v1/recordings` (DESIGN.md "API"): JSON in and out, errors as `{"error": "..."}`,
//! times RFC 3339 UTC with milliseconds, durations in seconds. The stream path is the rest of
//! the URL path, unencoded.
//!
//! - `GET /api/v1/recordings`: `{"paths": [{"path": "cams/cam1", "bytes": 123}]}`.
//! - `GET /api/v1/recordings/PATH[?start=T&end=T]`: the path's spans (runs of segments no
//!   more than one part duration apart) and segments overlapping the window (all without one),
//!   at most [`MAX_LISTED_SEGMENTS`]: a longer listing ends with `"next"`, the `start` to ask
//!   from for the rest.
//! - `DELETE /api/v1/recordings/PATH?start=T`: deletes the segment starting at exactly T (404
//!   when there is none, 409 for one being written); loopback clients only, until users exist.

use std::net::SocketAddr;

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::index::spans;
use super::{DeleteError, Recordings};
use crate::utc;

/// The prefix this module answers under.
pub const PREFIX: &str = "/api/v1/recordings";

/// Most segments in one listing (about 1 MB of JSON): a longer one ends with `"next"`, the
/// `start` to ask from for the rest. Ten-minute segments make this 70 days.
pub const MAX_LISTED_SEGMENTS: usize = 10_000;

fn reply(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body.to_string() + "\n")
        .into_response()
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    reply(status, json!({ "error": message.to_string() }))
}

fn seconds(us: u64) -> f64 {
    (us / 1000) as f64 / 1000.0
}

/// Whether `uri_path` is under [`PREFIX`].
pub fn answers(uri_path: &str) -> bool {
    uri_path.strip_prefix(PREFIX).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Answers a request under [`PREFIX`] (blocking: the index and the disk); None when
/// `uri_path` is not under it.
pub fn handle(
    rec: &Recordings,
    method: &Method,
    uri_path: &str,
    query: Option<&str>,
    peer: SocketAddr,
) -> Option<Response> {
    let rest = uri_path.strip_prefix(PREFIX)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    let path = rest.trim_start_matches('/');
    Some(match (method, path.is_empty()) {
        (&Method::GET | &Method::HEAD, true) => {
            let paths: Vec<Value> = rec.index().map_or_else(Vec::new, |ix| {
                ix.paths().into_iter().map(|p| json!({ "path": p, "bytes": ix.total_bytes(Some(&p)) })).collect()
            });
            reply(StatusCode::OK, json!({ "paths": paths }))
        }
        (&Method::GET | &Method::HEAD, false) => list(rec, path, query),
        (&Method::DELETE, false) => {
            if !peer.ip().to_canonical().is_loopback() {
                return Some(error(StatusCode::FORBIDDEN, "deleting recordings is allowed from loopback only"));
            }
            delete(rec, path, query)
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    })
}

fn list(rec: &Recordings, path: &str, query: Option<&str>) -> Response {
    if crate::path::validate(path).is_err() {
        return error(StatusCode::NOT_FOUND, "no recordings of that path");
    }
    let (start, end) = match (utc::query_time(query, "start"), utc::query_time(query, "end")) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Some(index) = rec.index() else { return error(StatusCode::NOT_FOUND, "no recordings of that path") };
    let mut segments = match index.list_at_most(path, start, end, MAX_LISTED_SEGMENTS + 1) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let next =
        (segments.len() > MAX_LISTED_SEGMENTS).then(|| segments.pop().map(|s| utc::format(s.start_us))).flatten();
    if segments.is_empty() && index.total_bytes(Some(path)) == 0 {
        return error(StatusCode::NOT_FOUND, "no recordings of that path");
    }
    let gap = rec.config().part_duration_ms.saturating_mul(1000);
    let spans: Vec<Value> = spans(&segments, gap)
        .into_iter()
        .map(|(s, e)| json!({ "start": utc::format(s), "duration": seconds(e - s) }))
        .collect();
    let segments: Vec<Value> = segments
        .iter()
        .map(|s| {
            json!({
                "start": utc::format(s.start_us),
                "duration": seconds(s.duration_us),
                "bytes": s.bytes,
                "writing": s.writing,
            })
        })
        .collect();
    let mut body = json!({ "path": path, "spans": spans, "segments": segments });
    if let Some(next) = next {
        body["next"] = json!(next);
    }
    reply(StatusCode::OK, body)
}

fn delete(rec: &Recordings, path: &str, query: Option<&str>) -> Response {
    let start = match utc::query_time(query, "start") {
        Ok(Some(s)) => s,
        Ok(None) => return error(StatusCode::BAD_REQUEST, "start: the start time of the segment to delete is needed"),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if crate::path::validate(path).is_err() {
        return error(StatusCode::NOT_FOUND, "no such segment");
    }
    match rec.delete(path, start) {
        Ok(s) => {
            tracing::info!(path, file = s.file, "recording: deleted through the API");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(DeleteError::NotFound) => error(StatusCode::NOT_FOUND, "no segment of that path starts at that time"),
        Err(DeleteError::Writing) => error(StatusCode::CONFLICT, "that segment is being written"),
        Err(DeleteError::Failed(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_times_are_percent_decoded() {
        let t = |q: &str| utc::query_time(Some(q), "start");
        assert_eq!(t("start=2026-11-25T10%3A00%3A00.000Z"), t("start=2026-11-25T10:00:00.000Z"));
        assert_eq!(t("a=1&start=2026-11-25T12:00:00%2B02:00").unwrap(), t("start=2026-11-25T10:00:00Z").unwrap());
        assert!(t("start=2026-11-25T10%3").is_err());
        assert!(t("start=%ff%fe").is_err());
        assert!(t(&format!("start={}", "9".repeat(100))).is_err());
        assert_eq!(t("end=x"), Ok(None));
        // A form-encoding client's `+` arrives as a space (`%20` or `+` decoded upstream).
        let e = t("start=2026-11-25T12:00:00%2002:00").unwrap_err();
        assert!(e.contains("%2B"), "{e}");
    }

    #[test]
    fn deleting_is_for_loopback_only() {
        let rec = super::super::tests::recordings(&std::env::temp_dir().join("fc-api-unit"));
        let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let r = handle(&rec, &Method::DELETE, "/api/v1/recordings/cams/a", Some("start=2026-11-25T10:00:00Z"), peer);
        assert_eq!(r.map(|r| r.status()), Some(StatusCode::FORBIDDEN));
        assert!(handle(&rec, &Method::GET, "/api/v1/recordingsX", None, peer).is_none());
        assert!(!answers("/api/v1/recordingsX") && answers("/api/v1/recordings") && answers("/api/v1/recordings/a/b"));
    }
}
