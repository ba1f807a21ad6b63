//! The HTTP/1.1 of the raw HLS path, without sockets: which request heads it takes and where
//! they end, whether a connection stays open, and the bytes of an answer's head and framing.
//! The driver (`hls_http`) reads, calls the router and writes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use bytes::{Bytes, BytesMut};

use crate::hls;

/// Request headers this path reads at most; a head with more goes to hyper (which takes up
/// to 100).
const MAX_HEADERS: usize = 64;

/// Whether a connection's first request `head` (whole) is one this path takes.
pub fn wants(head: &[u8]) -> bool {
    matches!(parse(head), Head::Whole { req: Some(_), .. })
}

/// A request head at the start of a buffer (built once per request and matched at once: its
/// size does not matter).
#[allow(clippy::large_enum_variant)]
pub(super) enum Head {
    /// Not whole yet.
    Partial,
    /// Whole and `len` bytes long (as httparse reads it: lines may end in LF alone); the
    /// request when this path takes it (None: hyper's).
    Whole { len: usize, req: Option<Request> },
    /// Not a request head httparse reads: hyper's (it answers 400 or 431).
    Invalid,
}

/// The request head at the start of `buf`.
pub(super) fn parse(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Invalid,
    };
    Head::Whole { len, req: request(&parsed) }
}

/// The request of a parsed head, if this path takes it.
fn request(parsed: &httparse::Request<'_, '_>) -> Option<Request> {
    let method = match parsed.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return None,
    };
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return None,
    };
    let target = parsed.path?;
    let path = target.split(['?', '#']).next().unwrap_or_default();
    hls::parse_url(path)?;
    let mut req = Request::new(Body::empty());
    *req.method_mut() = method;
    *req.version_mut() = version;
    *req.uri_mut() = target.parse().ok()?;
    let map = req.headers_mut();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // A body, or a switch of protocol, is hyper's to handle.
        let body = (name == header::CONTENT_LENGTH && h.value != b"0")
            || name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE;
        if body {
            return None;
        }
        map.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    Some(req)
}

/// Whether the connection stays open after answering `req` (RFC 9112 9.3).
pub(super) fn keep_alive(req: &Request) -> bool {
    let has = |token: &str| {
        req.headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    match req.version() {
        Version::HTTP_10 => has("keep-alive"),
        _ => !has("close"),
    }
}

/// How a body that did not fit the collection cap is delimited (RFC 9112 6.3).
pub(super) enum Framing {
    /// By its Content-Length.
    Length,
    /// Chunked transfer coding (HTTP/1.1 clients).
    Chunked,
    /// By closing the connection (HTTP/1.0 clients, which know no chunks).
    Close,
}

/// The status line and headers of an answer to a request of `version` (without
/// `Connection` and `Transfer-Encoding`, which [`end_head`] and the framing add), with `Date`.
pub(super) fn response_head(status: StatusCode, headers: &HeaderMap, version: Version) -> BytesMut {
    let mut head = BytesMut::with_capacity(512);
    let reason = status.canonical_reason().unwrap_or("");
    // The request's major version and our minor (RFC 9110 6.2), as hyper answers.
    let v = if version == Version::HTTP_10 { "1.0" } else { "1.1" };
    head.extend_from_slice(format!("HTTP/{v} {} {reason}\r\n", status.as_u16()).as_bytes());
    for (name, value) in headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING {
            continue;
        }
        push_header(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    push_header(&mut head, b"date", date().as_bytes());
    head
}

/// Ends a response head: `Connection: close` when the connection closes after it, and
/// `keep-alive` for an HTTP/1.0 client that asked to keep it (RFC 9112 9.3).
pub(super) fn end_head(head: &mut BytesMut, version: Version, keep_alive: bool) {
    if !keep_alive {
        push_header(head, b"connection", b"close");
    } else if version == Version::HTTP_10 {
        push_header(head, b"connection", b"keep-alive");
    }
    head.extend_from_slice(b"\r\n");
}

pub(super) fn push_header(head: &mut BytesMut, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// One chunk of chunked transfer coding (RFC 9112 7.1).
pub(super) fn chunk(data: Bytes) -> Vec<Bytes> {
    vec![Bytes::from(format!("{:x}\r\n", data.len())), data, Bytes::from_static(b"\r\n")]
}

/// The `Date` header's value (RFC 9110 6.6.1), formatted once a second per thread.
fn date() -> Arc<str> {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, Arc<str>)> = RefCell::new((u64::MAX, Arc::from("")));
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, Arc::from(httpdate::fmt_http_date(now)));
        }
        c.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_hls_gets_and_heads_only() {
        assert!(wants(b"GET /live/a/index.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(wants(b"HEAD /live/a/abc-1.ts?token=t HTTP/1.1\r\n\r\n"));
        assert!(wants(b"GET /live/a/media.m3u8 HTTP/1.0\r\n\r\n"));
        for hyper_s in [
            &b"POST /live/a/index.m3u8 HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"[..],
            b"GET /live/a.flv HTTP/1.1\r\n\r\n",
            b"GET /api/v1/paths HTTP/1.1\r\n\r\n",
            b"GET /live/a/index.m3u8 HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"GET /live/a/index.m3u8 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /live/a/index.m3u8 HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /live/a/index.m3u8 HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /live/a/index.m3u8 HTTP/2.0\r\n\r\n",
            b"GET /live/a/index.m3u8 HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ] {
            assert!(!wants(hyper_s), "{}", String::from_utf8_lossy(hyper_s));
        }
    }

    #[test]
    fn answer_heads_by_version_and_keep_alive() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let text = |version, keep| {
            let mut h = response_head(StatusCode::OK, &headers, version);
            end_head(&mut h, version, keep);
            String::from_utf8(h.to_vec()).unwrap()
        };
        let h11 = text(Version::HTTP_11, true);
        assert!(h11.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: "), "{h11}");
        assert!(h11.ends_with(" GMT\r\n\r\n"), "{h11}");
        assert!(
            !h11.contains("connection") && !h11.contains("transfer-encoding"),
            "the handler's framing headers are dropped: {h11}"
        );
        assert!(text(Version::HTTP_11, false).ends_with("connection: close\r\n\r\n"));
        let h10 = text(Version::HTTP_10, true);
        assert!(h10.starts_with("HTTP/1.0 200 OK\r\n") && h10.ends_with("connection: keep-alive\r\n\r\n"), "{h10}");
        let chunked: Vec<u8> = chunk(Bytes::from_static(b"0123456789abcdefg")).concat();
        assert_eq!(chunked, b"11\r\n0123456789abcdefg\r\n");
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        let req = |h: &[u8]| match parse(h) {
            Head::Whole { req: Some(r), .. } => r,
            _ => panic!("not taken: {}", String::from_utf8_lossy(h)),
        };
        assert!(keep_alive(&req(b"GET /a/b/index.m3u8 HTTP/1.1\r\n\r\n")));
        assert!(!keep_alive(&req(b"GET /a/b/index.m3u8 HTTP/1.1\r\nConnection: Close\r\n\r\n")));
        assert!(!keep_alive(&req(b"GET /a/b/index.m3u8 HTTP/1.0\r\n\r\n")));
        assert!(keep_alive(&req(b"GET /a/b/index.m3u8 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")));
    }

    #[test]
    fn heads_end_where_httparse_says_lf_alone_too() {
        // Lines ending in LF alone (RFC 9112 2.2 lets a server take them, as hyper does): the
        // next pipelined request starts right after the first head, not at some later CRLFCRLF.
        let two = b"GET /l/a/index.m3u8 HTTP/1.1\nHost: x\n\nGET /metrics HTTP/1.1\r\n\r\n";
        match parse(two) {
            Head::Whole { len, req: Some(_) } => assert_eq!(&two[len..], b"GET /metrics HTTP/1.1\r\n\r\n"),
            _ => panic!("the first head was not taken"),
        }
        assert!(matches!(parse(b"GET /l/a/index.m3u8 HTTP/1.1\r\nHost: x\r\n"), Head::Partial));
        assert!(matches!(parse(b"GET /metrics HTTP/1.1\r\n\r\n"), Head::Whole { req: None, .. }));
        assert!(matches!(parse(b"\x16\x03\x01 junk\r\n\r\n"), Head::Invalid));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: y\r\n")).collect();
        let head = format!("GET /l/a/index.m3u8 HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(head.as_bytes()), Head::Invalid), "over {MAX_HEADERS} headers is hyper's");
    }
}
