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
//!
//! This file is the driver (read, call the router, write); which heads it takes, where they
//! end and the bytes of an answer's head are `wire`'s, without sockets.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::HttpBody;
use axum::extract::ConnectInfo;
use axum::http::{Method, StatusCode, Version, header};
use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;
use tracing::debug;

mod wire;

pub use wire::wants;
use wire::{Framing, Head, chunk, end_head, keep_alive, parse, push_header, response_head};

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

/// Bytes read from the socket at a time while a head is incomplete.
const READ_CHUNK_BYTES: usize = 2048;

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
    // The head being waited for must be whole by then (hyper's header_read_timeout): an idle
    // keep-alive connection and a client sending a head byte by byte are both cut off.
    let mut deadline = Instant::now() + limits.request_timeout;
    loop {
        let (len, mut req) = match parse(&buf) {
            Head::Whole { len, req: Some(req) } if len <= limits.max_head => (len, req),
            Head::Whole { .. } | Head::Invalid => return End::Handoff(buf),
            Head::Partial if buf.len() >= limits.max_head => return End::Handoff(buf),
            Head::Partial => {
                if read_more(socket, &mut buf, deadline, limits.max_head).await.is_err() {
                    return End::Closed;
                }
                continue;
            }
        };
        buf.advance(len);
        let keep_alive = keep_alive(&req);
        let head_only = req.method() == Method::HEAD;
        let version = req.version();
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(RawPath);
        let resp = match app.call(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        match write_response(socket, resp, head_only, version, keep_alive, limits.write_timeout).await {
            Ok(true) => {}
            Ok(false) => {
                close_gracefully(socket).await;
                return End::Closed;
            }
            Err(e) => {
                debug!(%peer, "hls connection: {e:#}");
                return End::Closed;
            }
        }
        deadline = Instant::now() + limits.request_timeout;
    }
}

/// Reads more of a request head into `buf`, until it has a new line end (a head only becomes
/// whole with one: a head sent byte by byte is parsed once per line, not once per byte) or
/// holds `max_head` bytes; Err when the peer closed or `deadline` passed.
async fn read_more(socket: &TcpStream, buf: &mut BytesMut, deadline: Instant, max_head: usize) -> Result<(), ()> {
    let read = async {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            let room = max_head.saturating_sub(buf.len()).clamp(1, READ_CHUNK_BYTES);
            let n = crate::sockio::read_some(socket, &mut chunk[..room]).await.map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if chunk[..n].contains(&b'\n') || buf.len() >= max_head {
                return Ok(());
            }
        }
    };
    tokio::time::timeout_at(deadline, read).await.map_err(|_| ())?
}

/// How long a closing connection reads what the client still sends (see [`close_gracefully`]).
const LINGER: Duration = Duration::from_secs(2);

/// The most bytes a closing connection reads and drops.
const LINGER_MAX_BYTES: usize = 64 * 1024;

/// Closes after a last answer without losing it: the write side first (the client sees the
/// end), then what the client still sends is read and dropped until it closes too, for at
/// most [`LINGER`] and [`LINGER_MAX_BYTES`]. Closing a socket with unread bytes makes the
/// kernel reset the connection and drop what it has not yet sent (RFC 9112 9.6): a segment's
/// last megabytes after pipelined requests that followed `Connection: close`.
async fn close_gracefully(socket: &TcpStream) {
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
    let drain = async {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        let mut dropped = 0;
        while dropped < LINGER_MAX_BYTES {
            match crate::sockio::read_some(socket, &mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Writes `resp`: its head, then its body from its file, collected, or as it comes. Ok(true)
/// when the connection may stay open.
async fn write_response(
    socket: &TcpStream,
    resp: Response,
    head_only: bool,
    version: Version,
    keep_alive: bool,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut head = response_head(status, &parts.headers, version);
    let declared: Option<usize> = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    let has_length = parts.headers.contains_key(header::CONTENT_LENGTH);
    let end_head = |head: &mut BytesMut, keep_alive: bool| end_head(head, version, keep_alive);

    if let Some(sf) = parts.extensions.get::<SendFile>().filter(|sf| !no_body && declared == Some(sf.len)) {
        end_head(&mut head, keep_alive);
        send_head_more(socket, head.freeze(), timeout).await?;
        send_file(socket, sf, timeout).await?;
        return Ok(keep_alive);
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
        end_head(&mut head, keep_alive);
        write_all(socket, &mut vec![head.freeze()], timeout).await?;
        return Ok(keep_alive);
    }
    // The handler's answers are in memory and say their length: collected and written at
    // once. A longer body (a recording's MP4) goes out as it comes, never whole in memory.
    let mut collected: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    let mut ended = false;
    while size <= MAX_COLLECTED_BYTES {
        let Some(frame) = body.frame().await else {
            ended = true;
            break;
        };
        let frame = frame.map_err(|e| anyhow::anyhow!("response body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            size += data.len();
            collected.push(data);
        }
    }
    if ended {
        anyhow::ensure!(declared.is_none_or(|n| n == size), "response body of {size} bytes, {declared:?} declared");
        if !has_length {
            push_header(&mut head, b"content-length", size.to_string().as_bytes());
        }
        end_head(&mut head, keep_alive);
        let mut out = Vec::with_capacity(collected.len() + 1);
        out.push(head.freeze());
        out.extend(collected);
        write_all(socket, &mut out, timeout).await?;
        return Ok(keep_alive);
    }
    let declared = declared.or(body.size_hint().exact().and_then(|n| usize::try_from(n).ok()).map(|n| n + size));
    let (framing, keep_alive) = match declared {
        Some(n) => {
            if !has_length {
                push_header(&mut head, b"content-length", n.to_string().as_bytes());
            }
            (Framing::Length, keep_alive)
        }
        None if version == Version::HTTP_11 => {
            push_header(&mut head, b"transfer-encoding", b"chunked");
            (Framing::Chunked, keep_alive)
        }
        None => (Framing::Close, false),
    };
    anyhow::ensure!(declared.is_none_or(|n| size <= n), "response body over its {declared:?} bytes");
    end_head(&mut head, keep_alive);
    let frame_out = |data: Bytes| match framing {
        Framing::Chunked => chunk(data),
        Framing::Length | Framing::Close => vec![data],
    };
    let mut out = vec![head.freeze()];
    for data in collected.into_iter().filter(|d| !d.is_empty()) {
        out.extend(frame_out(data));
    }
    write_all(socket, &mut out, timeout).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("response body: {e}"))?;
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            size += data.len();
            anyhow::ensure!(declared.is_none_or(|n| size <= n), "response body over its {declared:?} bytes");
            write_all(socket, &mut frame_out(data), timeout).await?;
        }
    }
    match framing {
        Framing::Length => {
            anyhow::ensure!(declared == Some(size), "response body of {size} bytes, {declared:?} declared")
        }
        Framing::Chunked => write_all(socket, &mut vec![Bytes::from_static(b"0\r\n\r\n")], timeout).await?,
        Framing::Close => {}
    }
    Ok(keep_alive)
}

/// Writes all of `bufs`, giving up when the client takes nothing for `timeout` (a slow
/// client that keeps taking bytes is served for as long as it takes).
async fn write_all(socket: &TcpStream, bufs: &mut Vec<Bytes>, timeout: Duration) -> anyhow::Result<()> {
    while !crate::sockio::write_now(socket, bufs).context("write")? {
        writable(socket, timeout).await?;
    }
    Ok(())
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
    let end = sf.offset.saturating_add(sf.len as u64);
    // hls_response only names ranges of the file; a head has gone out with this length.
    anyhow::ensure!(end <= sf.file.len as u64, "sendfile past the end of a segment file");
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
