//! HTTP-FLV players on the raw socket.
//!
//! A connection whose first request is `GET /APP/STREAM.flv` is served here rather than by
//! hyper: the response head, then the FLV body delimited by the connection's close (no
//! chunked framing), so the body is exactly the shared FLV tags of each frame and the player
//! can be attached to the stream's fan-out (see [`crate::fanout`]) like an RTMP player: while
//! it keeps up, the fan-out task writes each tag to its socket itself. Any other first request
//! goes to hyper with the bytes read so far replayed ([`Prefixed`]); later requests on a
//! kept-alive connection are served by hyper's path in [`crate::http`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ferrocast_media::{Frame, TrackKind, Tracks, Wire, flv};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::fanout::Encoder;
use crate::hub::{Hub, write_timeout};
use crate::path;
use crate::reader::{Reader, ReaderItem, Tag, TagFeed, flv_track};
use crate::sockio::{read_some, write_with_timeout};

/// Bytes read at a time from a player (which sends nothing after its request).
const READ_BUFFER: usize = 1024;

/// The first request head of a connection, read whole (up to `max` bytes, within
/// `timeout`): the bytes read, and whether they hold a whole head. None when the peer
/// closed or the time ran out.
pub async fn read_head(socket: &TcpStream, timeout: Duration, max: usize) -> Option<(BytesMut, bool)> {
    let mut got = BytesMut::with_capacity(READ_BUFFER);
    let read = async {
        let mut buf = [0u8; READ_BUFFER];
        loop {
            let n = read_some(socket, &mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
            let start = got.len().saturating_sub(n + 3);
            if got[start..].windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(true);
            }
            if got.len() >= max {
                return Some(false);
            }
        }
    };
    let whole = tokio::time::timeout(timeout, read).await.ok()??;
    Some((got, whole))
}

/// The stream path of a `GET /APP/STREAM.flv` request head; None for anything else.
pub fn flv_path(head: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) || req.method != Some("GET") {
        return None;
    }
    let target = req.path?;
    let p = target.split(['?', '#']).next()?;
    let stream = p.strip_prefix('/')?.strip_suffix(".flv")?;
    path::validate(stream).ok()?;
    Some(stream.to_owned())
}

const CORS: &str = "Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n\
Access-Control-Allow-Headers: *\r\nAccess-Control-Expose-Headers: *\r\n";

fn plain_response(status: &str, text: &str) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{CORS}Connection: close\r\n\r\n{text}",
        text.len()
    ))
}

/// Serves one HTTP-FLV player of `stream` on its raw socket, until the stream ends, the
/// player leaves, or its socket takes nothing for the write timeout.
pub async fn serve(socket: TcpStream, stream: String, hub: Arc<Hub>) -> anyhow::Result<()> {
    let socket = Arc::new(socket);
    let timeout = write_timeout(&hub);
    let refuse = |status: &str, text: &str| {
        let mut out = vec![plain_response(status, text)];
        let socket = socket.clone();
        async move {
            write_with_timeout(&socket, &mut out, timeout).await?;
            let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Write);
            Ok(())
        }
    };
    if hub.at_reader_limit(&stream) {
        return refuse("503 Service Unavailable", "stream at its reader limit\n").await;
    }
    let Some(sub) = hub.subscribe_wait(&stream).await else {
        debug!(path = stream, "http-flv: no such stream");
        return refuse("404 Not Found", "stream not found\n").await;
    };
    info!(path = stream, "http-flv play");
    let mut reader = Reader::attached(hub.clone(), sub, Some(socket.clone()));
    let t = reader.initial_tracks().clone();
    // Until the publisher has sent its sequence headers, announce both tracks.
    let known = t.video.is_some() || t.audio.is_some();
    let mut head = BytesMut::from(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nCache-Control: no-cache, no-store\r\n{CORS}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    head.extend_from_slice(&flv::file_header(!known || t.audio.is_some(), !known || t.video.is_some()));
    let mut pending = vec![head.freeze()];
    let mut feed = TagFeed::default();
    let mut tags = Vec::new();
    let mut own = BytesMut::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let slot = reader.slot().expect("attached").clone();
    let mut done = false;
    loop {
        if slot.fell_back() {
            slot.take_over(&mut pending)?;
        }
        if !pending.is_empty() {
            write_with_timeout(&socket, &mut pending, timeout).await?;
            if pending.capacity() > 64 {
                pending = Vec::new(); // after the GOP burst
            }
        }
        if done {
            let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        if feed.settled() && reader.is_live() && !slot.is_direct() {
            slot.go_direct(Box::new(FlvEncoder { tracks: feed.current().clone() }));
        }
        let direct = slot.is_direct();
        tokio::select! {
            r = read_some(&socket, &mut buf) => {
                // A player sends nothing after its request; what it sends is dropped.
                if r? == 0 {
                    return Ok(());
                }
            }
            _ = slot.changed(), if direct => {}
            item = reader.next(), if !direct => {
                let mut item = Some(item);
                for _ in 0..64 {
                    let Some(i) = item.take().or_else(|| reader.try_next()) else { break };
                    match i {
                        ReaderItem::Tracks(t) => feed.tracks(&t),
                        ReaderItem::Frame(f) => feed.frame(f, &mut tags),
                        ReaderItem::Republished => feed.reset(),
                        ReaderItem::Unpublished => {}
                        ReaderItem::Ended => {
                            info!(path = stream, "http-flv: stream ended");
                            done = true;
                            break;
                        }
                        ReaderItem::TooSlow => {
                            warn!(path = stream, dropped = reader.dropped, "http-flv reader too slow: disconnected");
                            return Ok(());
                        }
                    }
                }
                push_tags(&mut tags, &mut own, &mut pending);
            }
        }
    }
}

/// Turns tags into buffers: per-reader tags gathered in one buffer, shared frame tags as
/// they are.
pub fn push_tags(tags: &mut Vec<Tag>, own: &mut BytesMut, out: &mut impl Extend<Bytes>) {
    for tag in tags.drain(..) {
        match tag {
            Tag::Own { tag_type, timestamp, body } => own.extend_from_slice(&flv::tag(tag_type, timestamp, &body)),
            Tag::Frame { frame, track } => {
                if !own.is_empty() {
                    out.extend([own.split().freeze()]);
                }
                out.extend([shared_tag(&frame, &track)]);
            }
        }
    }
    if !own.is_empty() {
        out.extend([own.split().freeze()]);
    }
}

/// The FLV tag of a frame, built once for every reader.
fn shared_tag(frame: &Frame, track: &ferrocast_media::TrackInfo) -> Bytes {
    let kind = match frame.kind {
        TrackKind::Audio => flv::TAG_AUDIO,
        TrackKind::Video => flv::TAG_VIDEO,
    };
    frame.wire(Wire::FlvTag, |f| flv::tag(kind, track.to_ms(f.dts), &flv::frame_body(track, f)))
}

/// An HTTP-FLV player's frames as the fan-out task writes them.
struct FlvEncoder {
    tracks: Arc<Tracks>,
}

impl Encoder for FlvEncoder {
    fn frame(&mut self, frame: &Arc<Frame>, out: &mut Vec<Bytes>) {
        if let Some(track) = flv_track(&self.tracks, frame.kind) {
            out.push(shared_tag(frame, track));
        }
    }
}

/// A socket whose first bytes were read already: they are read again first. Lets hyper
/// serve a connection whose first request head was read to see whether it is an HTTP-FLV
/// player.
pub struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl Prefixed {
    /// `prefix`, then the rest of `inner`.
    pub fn new(prefix: Bytes, inner: TcpStream) -> Prefixed {
        Prefixed { prefix, inner }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_of_a_flv_path_is_a_player() {
        assert_eq!(flv_path(b"GET /live/cam.flv HTTP/1.1\r\nHost: x\r\n\r\n").as_deref(), Some("live/cam"));
        assert_eq!(flv_path(b"GET /live/cam.flv?token=1 HTTP/1.0\r\n\r\n").as_deref(), Some("live/cam"));
        assert_eq!(flv_path(b"HEAD /live/cam.flv HTTP/1.1\r\n\r\n"), None);
        assert_eq!(flv_path(b"GET /live/cam/index.m3u8 HTTP/1.1\r\n\r\n"), None);
        assert_eq!(flv_path(b"GET /live/../x.flv HTTP/1.1\r\n\r\n"), None);
        assert_eq!(flv_path(b"GET /live/cam.flv HTTP/1.1\r\n"), None, "head not complete");
        assert_eq!(flv_path(b"\x00\x01garbage\r\n\r\n"), None);
    }
}
