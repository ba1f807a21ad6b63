//! The HTTP listener: HTTP-FLV (`GET /APP/STREAM.flv`) and HLS (`GET /APP/STREAM/index.m3u8`
//! and its segments); the API and metrics will join them on the same router.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tower_service::Service;
use tracing::{debug, warn};

use crate::api::Api;
use crate::config::HttpConfig;
use crate::hls::{self, HlsFile, HlsRegistry};
use crate::http_flv::Watchdog;
use crate::hub::{Hub, reader_nodelay, write_timeout};
use crate::limits::Limiter;
use crate::path;
use crate::record::Recordings;
use crate::session::{Protocol, Role};
use crate::vod::Playback;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    hub: Arc<Hub>,
    hls: Arc<HlsRegistry>,
    recordings: Arc<Recordings>,
    playback: Arc<Playback>,
    api: Arc<Api>,
    /// `/metrics`.
    metrics: Arc<crate::metrics::Exporter>,
    /// Sessions of HLS players and HTTP playback (no connection held).
    http_sessions: Arc<crate::http_sessions::HttpSessions>,
    /// What this listener serves.
    scope: Scope,
    /// The web console at `/`.
    console: Arc<crate::console::Console>,
}

/// What a listener serves: with `api.listen` set, the API is served on that address only
/// (as MediaMTX does), and the HTTP port serves everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Everything: media, and the API under `/api/v1`.
    #[default]
    All,
    /// Everything but the API (`api.listen` is set).
    NoApi,
    /// The API only (the `api.listen` listener).
    ApiOnly,
}

/// The router: HLS, HTTP-FLV (on hyper's path), playback, `/metrics`, the API and the web
/// console at `/`, serving `scope` only.
pub fn router(
    hub: Arc<Hub>,
    hls: Arc<HlsRegistry>,
    playback: Arc<Playback>,
    api: Arc<Api>,
    scope: Scope,
    console: Arc<crate::console::Console>,
) -> Router {
    let recordings = playback.recordings.clone();
    api.attach_services(hls.clone(), recordings.clone());
    let http_sessions = crate::http_sessions::HttpSessions::new(hub.sessions.clone());
    let extras = crate::metrics::Extras {
        sources: api.sources().cloned(),
        push: api.push().cloned(),
        recordings: Some(recordings.clone()),
        reloader: api.reloader().cloned(),
    };
    let metrics = crate::metrics::Exporter::new(hub.clone(), extras);
    Router::new().fallback(handle).with_state(AppState {
        hub,
        hls,
        recordings,
        playback,
        api,
        metrics,
        http_sessions,
        scope,
        console,
    })
}

/// Serves HTTP until the task is dropped.
///
/// Our own accept loop rather than `axum::serve`, for what a server on the open internet
/// needs: every connection counts against the connection limits (over a cap it gets a 503 and
/// is closed), a request head must arrive within `http.request_timeout_ms` (slowloris clients
/// and idle keep-alive connections are cut off; hyper restarts that timer for each request)
/// and may not exceed `http.max_header_bytes` (431).
///
/// Serves `scope` only (see [`Scope`]), with the web console at `/` served by `console`.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    config: HttpConfig,
    hub: Arc<Hub>,
    hls: Arc<HlsRegistry>,
    playback: Arc<Playback>,
    limiter: Arc<Limiter>,
    api: Arc<Api>,
    scope: Scope,
    console: Arc<crate::console::Console>,
) {
    let nodelay = reader_nodelay(&hub);
    let write_timeout = write_timeout(&hub);
    let app = router(hub.clone(), hls, playback, api, scope, console);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.request_timeout_ms))
        .max_buf_size(config.max_header_bytes.max(8192));
    loop {
        let (mut socket, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                warn!("http accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admission = match limiter.admit(peer.ip()) {
            Ok(a) => a,
            Err(e) => {
                debug!(%peer, "http connection refused: {e}");
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(REFUSED)).await;
                });
                continue;
            }
        };
        let _ = socket.set_nodelay(nodelay);
        let app = app.clone();
        let raw_app = app.clone();
        let abort = Arc::new(std::sync::OnceLock::new());
        let watchdog = Watchdog { abort: abort.clone(), timeout: write_timeout };
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(watchdog.clone());
            let mut app = app.clone();
            async move { app.call(req.map(Body::new)).await }
        });
        let http = http.clone();
        let hub = hub.clone();
        let request_timeout = Duration::from_millis(config.request_timeout_ms);
        let max_head = config.max_header_bytes;
        let task = tokio::spawn(async move {
            let _admission = admission;
            // The first request is read here: an HTTP-FLV player is served on the raw socket
            // (see http_flv); anything else goes to hyper with the bytes replayed.
            let Some((head, whole)) = crate::http_flv::read_head(&socket, request_timeout, max_head).await else {
                debug!(%peer, "http: no request head within {request_timeout:?}");
                return;
            };
            let flv = whole && scope != Scope::ApiOnly;
            if let Some(stream) = flv.then(|| crate::http_flv::flv_path(&head)).flatten() {
                if let Err(verdict) = crate::http_flv::authorize(&hub, &head, &stream, peer).await {
                    let mut out = vec![Bytes::from_static(crate::auth::http::raw_refusal(&verdict))];
                    let _ = crate::sockio::write_with_timeout(&socket, &mut out, request_timeout).await;
                    return;
                }
                if let Err(e) = crate::http_flv::serve(socket, stream, hub).await {
                    debug!(%peer, "http-flv connection: {e:#}");
                }
                return;
            }
            // An HLS player: its requests are served on the raw socket while they are HLS
            // GETs (see hls_http); anything else goes on with hyper from where it stopped.
            let head = if whole && scope != Scope::ApiOnly && crate::hls_http::wants(&head) {
                let limits = crate::hls_http::Limits { request_timeout, max_head, write_timeout };
                match crate::hls_http::serve(&socket, head, raw_app, peer, &limits).await {
                    crate::hls_http::End::Closed => return,
                    crate::hls_http::End::Handoff(rest) => rest,
                }
            } else {
                head
            };
            let io = crate::http_flv::Prefixed::new(head.freeze(), socket);
            if let Err(e) = http.serve_connection(TokioIo::new(io), service).await {
                debug!(%peer, "http connection: {e}");
            }
        });
        let _ = abort.set(task.abort_handle());
    }
}

/// The answer to a connection over the limits, written before its request is read.
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 25\r\nConnection: close\r\n\r\nconnection limit reached\n";

/// CORS headers that let any page play our streams.
pub(crate) fn cors(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("*"));
}

/// A short text answer, with CORS headers.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut r = (status, text).into_response();
    cors(&mut r);
    r
}

/// The address the API's loopback-only operations go by once `[auth]` allowed an API call
/// with `verdict`: a user that proved who it is (a named user, a JWT with a subject, a
/// callback's answer for a presented user) with the `api` permission may do what loopback
/// clients may without users; the `any` user (everyone, no credentials) keeps `peer`, or any
/// anonymous client would count as loopback.
pub(crate) fn api_peer_after(verdict: &crate::auth::Verdict, peer: SocketAddr) -> SocketAddr {
    match verdict {
        crate::auth::Verdict::Allow(Some(_)) => SocketAddr::from(([127, 0, 0, 1], 0)),
        _ => peer,
    }
}

async fn handle(State(state): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    // The API's loopback-only operations (probe, deletions) go by the peer's address; a
    // request relayed by a proxy on this host (a cache in front of HLS) comes from loopback
    // for anyone, so one that says it was forwarded is taken as from elsewhere.
    let forwarded = ["forwarded", "x-forwarded-for", "x-real-ip"].iter().any(|h| req.headers().contains_key(*h));
    let mut api_peer = if forwarded { SocketAddr::from(([0, 0, 0, 0], 0)) } else { peer };
    let uri_path = req.uri().path().to_owned();
    if req.method() == Method::OPTIONS {
        return plain(StatusCode::NO_CONTENT, "");
    }
    let is_api = uri_path == crate::api::PREFIX || uri_path.starts_with("/api/v1/");
    match state.scope {
        Scope::ApiOnly if !is_api => {
            return crate::api::error(StatusCode::NOT_FOUND, "only the API (/api/v1) is served here");
        }
        Scope::NoApi if is_api => {
            return crate::api::error(StatusCode::NOT_FOUND, "the API is served on its own address (api.listen)");
        }
        _ => {}
    }
    // `[auth]`, once for every route (see `crate::auth::http` for what each URL needs).
    if state.hub.auth.enabled()
        && let Some((action, path, via)) = crate::auth::http::classify(&uri_path, req.uri().query())
    {
        let query = req.uri().query();
        let check = crate::auth::AuthRequest {
            action,
            path,
            via,
            ip: peer.ip(),
            presented: crate::auth::http::presented(req.headers(), query),
            query: query.unwrap_or_default().to_owned(),
            id: None,
        };
        let verdict = state.hub.auth.check(&check).await;
        if !verdict.allowed() {
            debug!(%peer, path = check.path, action = action.as_str(), "http: not authorized");
            return crate::auth::http::refusal(&verdict);
        }
        if action == crate::auth::Action::Api {
            api_peer = api_peer_after(&verdict, api_peer);
        }
    }
    if crate::record::api::answers(&uri_path) {
        // SQLite and the file system: off the workers the live readers share.
        let (rec, method, query) =
            (state.recordings.clone(), req.method().clone(), req.uri().query().map(str::to_owned));
        let r = tokio::task::spawn_blocking(move || {
            crate::record::api::handle(&rec, &method, &uri_path, query.as_deref(), api_peer)
        });
        return match r.await {
            Ok(Some(r)) => r,
            Ok(None) => plain(StatusCode::NOT_FOUND, "not found\n"),
            Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
        };
    }
    if crate::api::answers(&uri_path) {
        let method = req.method().clone();
        return crate::api::handle(&state.api, &method, &uri_path, req.into_body(), api_peer).await;
    }
    if is_api {
        return crate::api::error(StatusCode::NOT_FOUND, "no such API route (see /api/v1/openapi.json)");
    }
    if let Some(r) = state.console.respond(req.method(), &uri_path).await {
        return r;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    if uri_path == crate::metrics::PATH {
        return crate::metrics::respond(&state.metrics);
    }
    let played = crate::http_sessions::playback_path(&uri_path);
    if let Some(p) = played
        && state.http_sessions.check(Protocol::HttpPlayback, peer, p).is_err()
    {
        return plain(StatusCode::FORBIDDEN, "session kicked\n");
    }
    if let Some(r) = crate::vod::http::respond(&state.playback, req.method(), req.uri(), req.headers()).await {
        if let Some(p) = played.filter(|_| r.status().is_success()) {
            let sent = if req.method() == Method::HEAD { 0 } else { content_length(&r) };
            state.http_sessions.served(Protocol::HttpPlayback, Role::Playback, peer, p, sent);
        }
        return r;
    }
    if let Some((stream, file)) = hls::parse_url(&uri_path) {
        if state.http_sessions.check(Protocol::Hls, peer, stream).is_err() {
            return plain(StatusCode::FORBIDDEN, "session kicked\n");
        }
        // An HLS player holds no connection: each request keeps a pulled path wanted, and the
        // first starts its source and waits for it (up to its start timeout).
        if path::validate(stream).is_ok()
            && state.hub.touch(stream)
            && state.hls.config().enabled
            && state.hls.get(stream).is_none()
        {
            let deadline = tokio::time::Instant::now() + state.hub.start_wait(stream);
            while state.hls.get(stream).is_none() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let head = req.method() == Method::HEAD;
        let (range, if_none_match) = {
            let header = |name| req.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_owned);
            (header(header::RANGE), header(header::IF_NONE_MATCH))
        };
        let is_playlist = matches!(file, HlsFile::Multivariant | HlsFile::Media);
        let raw = req.extensions().get::<crate::hls_http::RawPath>().is_some();
        let mut r = hls_response(&state.hls, stream, file, head, range, if_none_match, raw).await;
        // Credentials in the playlist's query go on to the URLs it lists: a player that was
        // given `index.m3u8?token=T` fetches the segments with it too.
        if state.hub.auth.enabled()
            && is_playlist
            && !head
            && let Some(creds) = crate::auth::http::credential_query(req.uri().query())
        {
            r = carry_query(r, &creds).await;
        }
        if r.status().is_success() {
            let sent = if head { 0 } else { content_length(&r) };
            state.http_sessions.served(Protocol::Hls, Role::Reader, peer, stream, sent);
        }
        return r;
    }
    let Some(stream) = uri_path.strip_prefix('/').and_then(|p| p.strip_suffix(".flv")) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    if path::validate(stream).is_err() {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    debug!(%peer, path = stream, "http-flv reader on hyper's path");
    let watchdog = req.extensions().get::<Watchdog>().cloned();
    crate::http_flv::respond_to(&state.hub, stream, req.method() == Method::HEAD, watchdog, peer).await
}

/// The Content-Length of a response (0 when it has none).
fn content_length(r: &Response) -> usize {
    r.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// A playlist answer with `query` added to every URI it lists.
async fn carry_query(r: Response, query: &str) -> Response {
    if r.status() != StatusCode::OK {
        return r;
    }
    let (mut parts, body) = r.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
    };
    let text = crate::auth::http::playlist_with_query(&String::from_utf8_lossy(&bytes), query);
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    parts.headers.remove(header::ETAG);
    Response::from_parts(parts, Body::from(text))
}

async fn hls_response(
    reg: &HlsRegistry,
    stream: &str,
    file: HlsFile<'_>,
    head: bool,
    range: Option<String>,
    if_none_match: Option<String>,
    raw: bool,
) -> Response {
    if path::validate(stream).is_err() {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    let Some(hls) = reg.get(stream) else {
        return hls_not_found("stream not found\n");
    };
    // Caches revalidate with the ETag (nginx's `proxy_cache_revalidate`): an unchanged
    // playlist costs the origin a 304, no body.
    let (body, content_type, cache, etag) = match file {
        HlsFile::Multivariant | HlsFile::Media => {
            // A stream that just started answers once its first segment exists.
            if !hls.wait_ready(hls::playlist_wait(reg.config())).await {
                return hls_not_found("no segments yet\n");
            }
            let multivariant = matches!(file, HlsFile::Multivariant);
            let Some(p) = hls.playlist(multivariant, |text| etag(text, text.len())) else {
                return hls_not_found("no segments yet\n");
            };
            let cache = playlist_cache_control(p.target_secs);
            (p.body.clone(), "application/vnd.apple.mpegurl", cache, p.etag.clone())
        }
        HlsFile::Segment(name) => {
            let Some(data) = hls.with(|s| s.get(name)) else {
                return hls_not_found("segment not found\n");
            };
            let ct = if name.ends_with(".ts") {
                "video/mp2t"
            } else if name.ends_with(".m4s") {
                "video/iso.segment"
            } else {
                "video/mp4"
            };
            // Names are unique per stream instance, so a segment never changes: its name
            // stands for its bytes, which hashing on every request cost more than serving it
            // (54% of the server's time at 500 HLS readers).
            let tag = etag(name.as_bytes(), data.len());
            (data, ct, SEGMENT_CACHE_CONTROL, tag)
        }
    };
    if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        cors(&mut r);
        let h = r.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        if let Ok(v) = HeaderValue::from_str(&etag) {
            h.insert(header::ETAG, v);
        }
        return r;
    }
    let mut status = StatusCode::OK;
    let whole = body.clone();
    let mut body = body;
    let total = body.len();
    let mut offset = 0;
    let mut content_range = None;
    if matches!(file, HlsFile::Segment(_))
        && let Some(range) = range
    {
        match parse_range(&range, total) {
            Some((start, end)) => {
                body = body.slice(start..=end);
                offset = start;
                status = StatusCode::PARTIAL_CONTENT;
                content_range = Some(format!("bytes {start}-{end}/{total}"));
            }
            None => {
                let mut r = plain(StatusCode::RANGE_NOT_SATISFIABLE, "");
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return r;
            }
        }
    }
    let len = body.len();
    let mut resp = if head { Response::new(Body::empty()) } else { Response::new(Body::from(body)) };
    *resp.status_mut() = status;
    cors(&mut resp);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if matches!(file, HlsFile::Segment(_)) {
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if let Some(cr) = content_range.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::CONTENT_RANGE, cr);
    }
    // On the raw socket a segment goes from its memory file (see hls_http).
    if let HlsFile::Segment(name) = file
        && raw
        && !head
        && len >= crate::hls_http::SENDFILE_MIN_BYTES
        && let Some(f) = hls.file(name, &whole)
        && offset + len <= f.len()
    {
        resp.extensions_mut().insert(crate::hls_http::SendFile { file: f, offset: offset as u64, len });
    }
    resp
}

/// Segments and init segments: their names are unique per stream instance (the instance id
/// and a sequence number), so a cache may keep them as long as it likes.
const SEGMENT_CACHE_CONTROL: &str = "public, max-age=86400, immutable";

/// Live playlists change with every segment: a cache (a CDN, a caching proxy in front of the
/// origin) may serve one for about half a target duration, never longer than a segment, so
/// that players keep up while the origin sees about one request per refresh, not one per
/// player (RFC 8216 6.2.2 has clients reload every target duration; a copy at most half a
/// target duration old still lists the newest segment most of the time).
fn playlist_cache_control(target_duration_secs: u64) -> &'static str {
    match target_duration_secs / 2 {
        0 | 1 => "public, max-age=1",
        2 => "public, max-age=2",
        3 => "public, max-age=3",
        4 => "public, max-age=4",
        _ => "public, max-age=5",
    }
}

/// A 404 of the HLS output, cacheable for a second only: a segment or stream that does not
/// exist yet soon will, and a cache must not hide it; yet a crowd of players asking before a
/// stream starts costs the origin one request per second.
fn hls_not_found(text: &'static str) -> Response {
    let mut r = plain(StatusCode::NOT_FOUND, text);
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=1"));
    r
}

/// A strong validator of a body of `len` bytes: FNV-1a 64 of `key`, the body itself or what
/// identifies it for good, and the length.
fn etag(key: &[u8], len: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}-{len:x}\"")
}

/// One `bytes=` range (RFC 9110 14.1.2) as inclusive offsets, or None if unsatisfiable or
/// not understood (multiple ranges are served as the first only when it parses).
fn parse_range(value: &str, len: usize) -> Option<(usize, usize)> {
    let spec = value.strip_prefix("bytes=")?.split(',').next()?.trim();
    let (a, b) = spec.split_once('-')?;
    if len == 0 {
        return None;
    }
    let (start, end) = if a.is_empty() {
        let n: usize = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: usize = a.parse().ok()?;
        let end = if b.is_empty() { len - 1 } else { b.parse::<usize>().ok()?.min(len - 1) };
        (start, end)
    };
    (start <= end && start < len).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_api_counts_as_loopback_for_proven_users_only() {
        use crate::auth::Verdict;
        let far = SocketAddr::from(([0, 0, 0, 0], 0));
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        assert_eq!(api_peer_after(&Verdict::Allow(Some("ops".into())), far), loopback);
        // The `any` user (and a JWT without a subject) proves nobody: the real peer stays.
        assert_eq!(api_peer_after(&Verdict::Allow(None), far), far);
        let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        assert_eq!(api_peer_after(&Verdict::Allow(None), peer), peer);
    }

    #[test]
    fn playlists_cache_for_half_a_target_duration_segments_for_long() {
        assert_eq!(playlist_cache_control(1), "public, max-age=1");
        assert_eq!(playlist_cache_control(2), "public, max-age=1");
        assert_eq!(playlist_cache_control(4), "public, max-age=2");
        assert_eq!(playlist_cache_control(6), "public, max-age=3");
        assert_eq!(playlist_cache_control(30), "public, max-age=5");
        assert!(SEGMENT_CACHE_CONTROL.contains("immutable"));
        assert_eq!(etag(b"#EXTM3U\n", 8), etag(b"#EXTM3U\n", 8));
        assert_ne!(etag(b"#EXTM3U\n1", 9), etag(b"#EXTM3U\n2", 9));
        assert_ne!(etag(b"a-1.ts", 100), etag(b"a-2.ts", 100), "segments by name");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=-100", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=990-2000", 1000), Some((990, 999)));
        assert_eq!(parse_range("bytes=1000-", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
    }
}
