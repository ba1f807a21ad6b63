//! HLS players on the raw socket: a connection whose first request is for an HLS playlist or
//! segment is served here, request after request, instead of by hyper, so that a segment can
//! go from a memory file to the socket with `sendfile` (as nginx serves its HLS files): on
//! loopback and on a NIC with scatter-gather the kernel then never copies the segment's bytes
//! into the socket, which was 16% of the server at 500 HLS readers.
//!
//! The requests themselves still go through the router (`[auth]`, sessions, ranges, ETags,
//! 404s are the handler's, unchanged); this module only reads request heads and writes the
//! answers. A request it does not take (another method, a body, an upgrade, a path that is
//! not HLS, a head it cannot parse or over the size cap) hands the connection, with every byte
//! read so far, to hyper, which answers it and the rest as on any other connection.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::hls;

/// Request extension: the request came over this module's path, so a segment may be answered
/// with a [`SendFile`] instead of its bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawPath;

/// Response extension: the body is `len` bytes of `file` from `offset` (the response's body
/// holds the same bytes, for hyper's path).
#[derive(Clone)]
pub struct SendFile {
    /// The segment's memory file.
    pub file: Arc<SegmentFile>,
    /// Where the body starts in it.
    pub offset: u64,
    /// The body's length.
    pub len: usize,
}

/// A segment's bytes in a memory file (`memfd`), written once, sent to every player with
/// `sendfile`. It lives while its segment is in the live window (see `hls::HlsStream`).
pub struct SegmentFile {
    file: File,
    len: usize,
}

impl SegmentFile {
    /// A memory file holding `data`.
    pub fn new(data: &[u8]) -> std::io::Result<SegmentFile> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let fd = memfd_create(c"ferrocast-hls", MFdFlags::MFD_CLOEXEC).map_err(std::io::Error::from)?;
        let mut file = File::from(fd);
        file.write_all(data)?;
        Ok(SegmentFile { file, len: data.len() })
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Segments shorter than this are copied like any body: `sendfile` pays for page references
/// and a pipe, which only a body of many pages earns back (init segments and small audio-only
/// segments are a few KiB).
pub const SENDFILE_MIN_BYTES: usize = 32 * 1024;

/// The most of a body this path collects before writing it when the body does not say its
/// length (the handler's answers say it: playlists, segments, errors); a longer one goes out
/// with chunked transfer coding as it comes.
const MAX_COLLECTED_BYTES: usize = 256 * 1024;

/// Request headers this path reads at most; a head with more goes to hyper (which answers 431).
const MAX_HEADERS: usize = 64;

/// Whether a connection's first request `head` (whole) is one this path takes.
pub fn wants(head: &[u8]) -> bool {
    matches!(parse(head), Ok(Some(_)))
}

/// How a connection served here ended.
pub enum End {
    /// Closed: by the peer, by `Connection: close`, on a timeout or an error.
    Closed,
    /// A request this path does not take: hyper serves the connection from these bytes on.
    Handoff(BytesMut),
}

/// What serving needs from the listener.
pub struct Limits {
    /// A request head must arrive whole within this (and an idle connection is closed after it).
    pub request_timeout: Duration,
    /// The most bytes of a request head.
    pub max_head: usize,
    /// A player that takes nothing of an answer for this long is dropped.
    pub write_timeout: Duration,
}

/// Serves `socket`'s requests from `buf` (which holds the first head, whole) on, through
/// `app`, until the connection ends or a request is one to hand to hyper.
pub async fn serve(socket: &TcpStream, mut buf: BytesMut, mut app: Router, peer: SocketAddr, limits: &Limits) -> End {
    loop {
        let head_len = match head_end(&buf) {
            Some(n) => n,
            None if buf.len() >= limits.max_head => return End::Handoff(buf),
            None => match read_head(socket, &mut buf, limits).await {
                Ok(true) => continue,
                Ok(false) => return End::Handoff(buf),
                Err(()) => return End::Closed,
            },
        };
        let Ok(Some(mut req)) = parse(&buf[..head_len]) else {
            return End::Handoff(buf);
        };
        buf.advance(head_len);
        let keep_alive = keep_alive(&req);
        let head_only = req.method() == Method::HEAD;
        let version = req.version();
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(RawPath);
        let resp = match app.call(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        if write_response(socket, resp, head_only, version, keep_alive, limits.write_timeout).await.is_err()
            || !keep_alive
        {
            return End::Closed;
        }
    }
}

/// Reads more of a request head into `buf`: Ok(true) when it holds one whole, Ok(false) when
/// it reached the size cap first, Err when the peer closed or took too long.
async fn read_head(socket: &TcpStream, buf: &mut BytesMut, limits: &Limits) -> Result<bool, ()> {
    let read = async {
        let mut chunk = [0u8; 2048];
        loop {
            let n = crate::sockio::read_some(socket, &mut chunk).await.map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if head_end(buf).is_some() {
                return Ok(true);
            }
            if buf.len() >= limits.max_head {
                return Ok(false);
            }
        }
    };
    tokio::time::timeout(limits.request_timeout, read).await.map_err(|_| ())?
}

/// The length of the first request head in `buf` (through its blank line), if it holds one.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The request of a whole head, if this path takes it (Ok(None): hyper's).
fn parse(head: &[u8]) -> Result<Option<Request>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    if !matches!(parsed.parse(head), Ok(httparse::Status::Complete(_))) {
        return Err(());
    }
    let method = match parsed.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Ok(None),
    };
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Ok(None),
    };
    let Some(target) = parsed.path else { return Ok(None) };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if hls::parse_url(path).is_none() {
        return Ok(None);
    }
    let mut req = Request::new(Body::empty());
    *req.method_mut() = method;
    *req.version_mut() = version;
    *req.uri_mut() = target.parse().map_err(|_| ())?;
    let map = req.headers_mut();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ())?;
        // A body, or a switch of protocol, is hyper's to handle.
        let body = (name == header::CONTENT_LENGTH && h.value != b"0")
            || name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE;
        if body {
            return Ok(None);
        }
        map.append(name, HeaderValue::from_bytes(h.value).map_err(|_| ())?);
    }
    Ok(Some(req))
}

/// Whether the connection stays open after answering `req` (RFC 9112 9.3).
fn keep_alive(req: &Request) -> bool {
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

/// Writes `resp`: its head, then its body from its file, collected, or as it comes.
async fn write_response(
    socket: &TcpStream,
    resp: Response,
    head_only: bool,
    version: Version,
    keep_alive: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut head = BytesMut::with_capacity(512);
    let reason = status.canonical_reason().unwrap_or("");
    head.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", status.as_u16()).as_bytes());
    for (name, value) in &parts.headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING {
            continue;
        }
        push_header(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    push_header(&mut head, b"date", date().as_bytes());
    if !keep_alive {
        push_header(&mut head, b"connection", b"close");
    } else if version == Version::HTTP_10 {
        push_header(&mut head, b"connection", b"keep-alive");
    }
    let has_length = parts.headers.contains_key(header::CONTENT_LENGTH);

    if let Some(sf) = parts.extensions.get::<SendFile>().filter(|_| !no_body && has_length) {
        head.extend_from_slice(b"\r\n");
        send_head_more(socket, head.freeze(), timeout).await?;
        return send_file(socket, sf, timeout).await;
    }
    if no_body {
        // HEAD keeps the length the body would have (RFC 9110 9.3.2), as hyper does.
        if head_only
            && !has_length
            && status != StatusCode::NOT_MODIFIED
            && let Some(n) = body.size_hint().exact()
        {
            push_header(&mut head, b"content-length", n.to_string().as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        return crate::sockio::write_with_timeout(socket, &mut vec![head.freeze()], timeout).await;
    }
    // The handler's answers are in memory and say their length; collect up to a cap, then
    // stream what is left with chunked coding if the length is still unknown.
    let known = has_length || body.size_hint().exact().is_some();
    let mut collected: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    let mut ended = true;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map(|f| f.into_data()) else {
            anyhow::bail!("response body failed");
        };
        let Ok(data) = data else { continue };
        size += data.len();
        collected.push(data);
        if size > MAX_COLLECTED_BYTES && !known {
            ended = false;
            break;
        }
    }
    if ended {
        if !has_length {
            push_header(&mut head, b"content-length", size.to_string().as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let mut out = Vec::with_capacity(collected.len() + 1);
        out.push(head.freeze());
        out.extend(collected);
        return crate::sockio::write_with_timeout(socket, &mut out, timeout).await;
    }
    push_header(&mut head, b"transfer-encoding", b"chunked");
    head.extend_from_slice(b"\r\n");
    let mut out = vec![head.freeze()];
    for data in collected {
        out.extend(chunk(data));
    }
    crate::sockio::write_with_timeout(socket, &mut out, timeout).await?;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { anyhow::bail!("response body failed") };
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            crate::sockio::write_with_timeout(socket, &mut chunk(data), timeout).await?;
        }
    }
    crate::sockio::write_with_timeout(socket, &mut vec![Bytes::from_static(b"0\r\n\r\n")], timeout).await
}

fn push_header(head: &mut BytesMut, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// One chunk of chunked transfer coding (RFC 9112 7.1).
fn chunk(data: Bytes) -> Vec<Bytes> {
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

/// Sends a response head that a body follows at once: `MSG_MORE` keeps it in the socket
/// until the body's first pages join it, so head and body leave in the same packets.
async fn send_head_more(socket: &TcpStream, mut head: Bytes, timeout: Duration) -> anyhow::Result<()> {
    use nix::sys::socket::{MsgFlags, send};
    // nix has no name for MSG_MORE (Linux, tcp(7)).
    let flags = MsgFlags::from_bits_retain(nix::libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL;
    let fd = socket.as_raw_fd();
    while !head.is_empty() {
        let r = socket.try_io(Interest::WRITABLE, || send(fd, &head, flags).map_err(std::io::Error::from));
        match r {
            Ok(0) => anyhow::bail!("write: socket took nothing"),
            Ok(n) => head.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => writable(socket, timeout).await?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow::Error::from(e).context("write")),
        }
    }
    Ok(())
}

/// Sends `sf`'s bytes with `sendfile`, waiting for the socket as needed.
async fn send_file(socket: &TcpStream, sf: &SendFile, timeout: Duration) -> anyhow::Result<()> {
    let end = sf.offset.saturating_add(sf.len as u64).min(sf.file.len as u64);
    let mut offset = i64::try_from(sf.offset)?;
    let end = i64::try_from(end)?;
    while offset < end {
        let count = usize::try_from(end - offset)?;
        let r = socket.try_io(Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile(socket, &sf.file.file, Some(&mut offset), count).map_err(std::io::Error::from)
        });
        match r {
            Ok(0) => anyhow::bail!("sendfile: socket took nothing"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => writable(socket, timeout).await?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow::Error::from(e).context("sendfile")),
        }
    }
    Ok(())
}

/// Waits for the socket to take more, at most `timeout`.
async fn writable(socket: &TcpStream, timeout: Duration) -> anyhow::Result<()> {
    match tokio::time::timeout(timeout, socket.writable()).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("peer took nothing for {timeout:?}: disconnected"),
    }
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
    fn keep_alive_by_version_and_connection() {
        let req = |h: &[u8]| parse(h).unwrap().unwrap();
        assert!(keep_alive(&req(b"GET /a/b/index.m3u8 HTTP/1.1\r\n\r\n")));
        assert!(!keep_alive(&req(b"GET /a/b/index.m3u8 HTTP/1.1\r\nConnection: Close\r\n\r\n")));
        assert!(!keep_alive(&req(b"GET /a/b/index.m3u8 HTTP/1.0\r\n\r\n")));
        assert!(keep_alive(&req(b"GET /a/b/index.m3u8 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")));
    }

    #[test]
    fn a_segment_file_holds_its_bytes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let f = SegmentFile::new(&data).unwrap();
        assert_eq!(f.len(), data.len());
        let mut back = Vec::new();
        use std::io::{Read, Seek};
        let mut file = f.file.try_clone().unwrap();
        file.seek(std::io::SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }
}
