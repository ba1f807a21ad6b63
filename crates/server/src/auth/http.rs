//! Credentials as HTTP and RTMP clients send them, what an HTTP URL would do, and the HTTP
//! refusals.
//!
//! HTTP: `Authorization: Basic` (RFC 7617), `Authorization: Bearer` (RFC 6750), or the query's
//! `user=`/`pass=` or `token=`/`jwt=` (players that cannot set headers). RTMP: `user=`/`pass=`
//! (or a token) in the query of the stream name or of tcUrl, as ffmpeg and OBS send them.
//!
//! What each HTTP URL needs (checked once, in [`crate::http`]'s handler and on the raw
//! HTTP-FLV path, so every route is covered):
//! - `/api/...`: `api` (the console's calls included);
//! - `/metrics`: `metrics`;
//! - playback: `/vod/...`, a URL with `start=`, `.../recording.mp4`, HLS VOD segments
//!   (`.../hls/FROM_TO.m4s`, `.../hls/init_AT.mp4`): `playback` on the path;
//! - live HLS (`/PATH/index.m3u8` and its segments): `read` (protocol `hls`);
//! - `/PATH.flv`: `read` (protocol `http-flv`);
//! - anything else (the console page and its static files): open.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::{Action, Presented, Verdict, Via};

/// Longest credential value read from a query or header (a JWT is a few hundred bytes).
pub const MAX_CREDENTIAL_LEN: usize = 8192;

/// The value of `name` in a query string, percent-decoded; at most [`MAX_CREDENTIAL_LEN`].
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let q = query?;
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name && v.len() <= MAX_CREDENTIAL_LEN).then(|| ferrocast_rtsp::url::percent_decode(v))
    })
}

/// Credentials in a query: `user=`/`pass=`, else `token=` or `jwt=`.
pub fn from_query(query: Option<&str>) -> Presented {
    if let Some(user) = query_param(query, "user") {
        return Presented::Password { user, pass: query_param(query, "pass").unwrap_or_default() };
    }
    match query_param(query, "token").or_else(|| query_param(query, "jwt")) {
        Some(t) => Presented::Token(t),
        None => Presented::None,
    }
}

/// Credentials of an HTTP request: the `Authorization` header first, then the query.
pub fn presented(headers: &HeaderMap, query: Option<&str>) -> Presented {
    if let Some(h) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && h.len() <= MAX_CREDENTIAL_LEN
        && let Some((scheme, rest)) = h.trim().split_once(' ')
    {
        if scheme.eq_ignore_ascii_case("basic")
            && let Some(raw) = ferrocast_rtsp::base64::decode(rest.trim())
            && let Ok(text) = String::from_utf8(raw)
            && let Some((user, pass)) = text.split_once(':')
        {
            return Presented::Password { user: user.to_owned(), pass: pass.to_owned() };
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            return Presented::Token(rest.trim().to_owned());
        }
    }
    from_query(query)
}

/// Credentials of an RTMP publish or play: the stream name's query, else tcUrl's.
pub fn rtmp_presented(name_query: Option<&str>, tc_url: Option<&str>) -> Presented {
    let p = from_query(name_query);
    if !matches!(p, Presented::None) {
        return p;
    }
    from_query(tc_url.and_then(|u| u.split_once('?')).map(|(_, q)| q))
}

/// What an HTTP request for `uri_path` with `query` needs: the action, the stream path and
/// the protocol; None for what is open (the console page).
pub fn classify(uri_path: &str, query: Option<&str>) -> Option<(Action, String, Via)> {
    let p = uri_path.strip_prefix('/')?;
    if p == "api" || p.starts_with("api/") {
        return Some((Action::Api, String::new(), Via::Http));
    }
    if p == "metrics" {
        return Some((Action::Metrics, String::new(), Via::Http));
    }
    let playback = |path: &str| Some((Action::Playback, path.to_owned(), Via::Http));
    if p.starts_with("vod/") {
        let name = p.split("/hls/").next().unwrap_or(p);
        return playback(name.strip_suffix("/index.m3u8").unwrap_or(name));
    }
    // HLS VOD segments and init segments: `PATH/hls/FROM_TO.m4s`, `PATH/hls/init_AT.mp4`.
    if let Some((prefix, name)) = p.rsplit_once("/hls/")
        && (name.starts_with("init_") || (name.ends_with(".m4s") && name.contains('_')))
    {
        return playback(prefix);
    }
    if let Some(prefix) = p.strip_suffix("/recording.mp4") {
        return playback(prefix);
    }
    let has_start = query_param(query, "start").is_some();
    if let Some((stream, _)) = crate::hls::parse_url(uri_path) {
        return Some(if has_start {
            (Action::Playback, stream.to_owned(), Via::Http)
        } else {
            (Action::Read, stream.to_owned(), Via::Hls)
        });
    }
    if let Some(stream) = p.strip_suffix(".flv") {
        return Some((Action::Read, stream.to_owned(), Via::HttpFlv));
    }
    None
}

/// The answer to a refused HTTP request: 401 with a Basic challenge (a browser asks its
/// user), or 403 for a blocked address.
pub fn refusal(verdict: &Verdict) -> Response {
    let mut r = match verdict {
        Verdict::Blocked => crate::http::plain(StatusCode::FORBIDDEN, "too many failed attempts; try later\n"),
        _ => crate::http::plain(StatusCode::UNAUTHORIZED, "authentication required\n"),
    };
    if !matches!(verdict, Verdict::Blocked) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"ferrocast\""));
    }
    r
}

/// The raw-socket form of [`refusal`] (HTTP-FLV players are served before hyper).
pub fn raw_refusal(verdict: &Verdict) -> &'static [u8] {
    match verdict {
        Verdict::Blocked => {
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 36\r\nConnection: close\r\n\r\ntoo many failed attempts; try later\n"
        }
        _ => {
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"ferrocast\"\r\nContent-Type: text/plain\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 24\r\nConnection: close\r\n\r\nauthentication required\n"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_pass(p: &Presented) -> Option<(String, String)> {
        match p {
            Presented::Password { user, pass } => Some((user.clone(), pass.clone())),
            _ => None,
        }
    }

    #[test]
    fn credentials_from_headers_and_queries() {
        let mut h = HeaderMap::new();
        assert!(matches!(presented(&h, None), Presented::None));
        assert_eq!(user_pass(&presented(&h, Some("user=a&pass=p%40ss"))), Some(("a".into(), "p@ss".into())));
        assert!(matches!(presented(&h, Some("token=abc")), Presented::Token(t) if t == "abc"));
        assert!(matches!(presented(&h, Some("jwt=abc")), Presented::Token(t) if t == "abc"));
        let basic = format!("Basic {}", ferrocast_rtsp::base64::encode(b"u:p:w"));
        h.insert(header::AUTHORIZATION, basic.parse().unwrap());
        assert_eq!(user_pass(&presented(&h, Some("user=x&pass=y"))), Some(("u".into(), "p:w".into())));
        h.insert(header::AUTHORIZATION, "Bearer t0k".parse().unwrap());
        assert!(matches!(presented(&h, None), Presented::Token(t) if t == "t0k"));
        // RTMP: the name's query, else tcUrl's.
        let p = rtmp_presented(None, Some("rtmp://h/live?user=u&pass=p"));
        assert_eq!(user_pass(&p), Some(("u".into(), "p".into())));
        let p = rtmp_presented(Some("user=n&pass=q"), Some("rtmp://h/live?user=u&pass=p"));
        assert_eq!(user_pass(&p), Some(("n".into(), "q".into())));
        assert!(query_param(Some(&format!("token={}", "a".repeat(MAX_CREDENTIAL_LEN + 1))), "token").is_none());
    }

    #[test]
    fn urls_by_action() {
        let c = |p: &str, q: Option<&str>| classify(p, q).map(|(a, path, via)| (a, path, via.as_str()));
        assert_eq!(c("/api/v1/paths", None), Some((Action::Api, String::new(), "http")));
        assert_eq!(c("/metrics", None), Some((Action::Metrics, String::new(), "http")));
        assert_eq!(c("/live/a/index.m3u8", None), Some((Action::Read, "live/a".into(), "hls")));
        assert_eq!(c("/live/a/abc-3.ts", None), Some((Action::Read, "live/a".into(), "hls")));
        assert_eq!(c("/live/a.flv", None), Some((Action::Read, "live/a".into(), "http-flv")));
        assert_eq!(
            c("/live/a/index.m3u8", Some("start=2026-01-01T00:00:00Z")),
            Some((Action::Playback, "live/a".into(), "http"))
        );
        assert_eq!(c("/live/a/hls/1_2.m4s", None), Some((Action::Playback, "live/a".into(), "http")));
        assert_eq!(c("/live/a/hls/init_1.mp4", None), Some((Action::Playback, "live/a".into(), "http")));
        assert_eq!(c("/live/a/recording.mp4", Some("start=x")), Some((Action::Playback, "live/a".into(), "http")));
        assert_eq!(c("/vod/f.mp4", None), Some((Action::Playback, "vod/f.mp4".into(), "http")));
        assert_eq!(c("/vod/f.mp4/index.m3u8", None), Some((Action::Playback, "vod/f.mp4".into(), "http")));
        assert_eq!(c("/", None), None);
        assert_eq!(c("/console.js", None), None);
    }

    #[test]
    fn raw_refusals_have_right_lengths() {
        for v in [Verdict::Blocked, Verdict::Unauthorized] {
            let text = std::str::from_utf8(raw_refusal(&v)).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize =
                head.split("Content-Length: ").nth(1).unwrap().split("\r\n").next().unwrap().parse().unwrap();
            assert_eq!(len, body.len(), "{text}");
        }
    }
}
