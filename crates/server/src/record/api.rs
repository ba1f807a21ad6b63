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

/// A time from the query string: `name=T`, percent-decoding the `:` and `+` clients encode.
fn query_time(query: Option<&str>, name: &str) -> Result<Option<u64>, String> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != name {
            continue;
        }
        if v.len() > 64 {
            return Err(format!("{name}: too long"));
        }
        let v = v.replace("%3A", ":").replace("%3a", ":").replace("%2B", "+").replace("%2b", "+");
        return utc::parse(&v).map(Some).map_err(|e| format!("{name}: {e}"));
    }
    Ok(None)
}

fn seconds(us: u64) -> f64 {
    (us / 1000) as f64 / 1000.0
}

/// Answers a request under [`PREFIX`]; None when `uri_path` is not under it.
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
    let (start, end) = match (query_time(query, "start"), query_time(query, "end")) {
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
    let start = match query_time(query, "start") {
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
