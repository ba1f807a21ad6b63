//! HTTP-FLV players: one path from the request to the FLV tags ([`FlvPlayer`]: admission,
//! the file header, reader items to tags), and two ways to the socket.
//!
//! - A connection whose first request is `GET /APP/STREAM.flv` is served on the raw socket
//!   ([`serve`]) rather than by hyper: the response head, then the FLV body delimited by the
//!   connection's close (no chunked framing), so the body is exactly the shared FLV tags of
//!   each frame and the player can be attached to the stream's fan-out (see
//!   [`crate::fanout`]) like an RTMP player: while it keeps up, the fan-out task writes each
//!   tag to its socket itself.
//! - A `.flv` request after another on a kept-alive connection is hyper's (the connection is
//!   hyper's by then): [`respond`] gives hyper a body of the same tags, which it chunks.
//!
//! Any other first request goes to hyper with the bytes read so far replayed ([`Prefixed`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use ferrocast_media::{Frame, TrackKind, Tracks, Wire, flv};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::auth::{Action, AuthRequest, Verdict, Via};
use crate::fanout::Encoder;
use crate::hub::{Hub, write_merge, write_timeout};
use crate::path;
use crate::reader::{Reader, ReaderItem, Tag, TagFeed, flv_track};
use crate::session::{Protocol, Role as SessionRole, SessionHandle};
use crate::sockio::{read_some, write_with_timeout};

/// Why a player is not served: the status and text of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The stream has `limits.max_readers_per_stream` readers.
    ReaderLimit,
    /// No such stream (within `hub.play_wait_ms`).
    NotFound,
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Refusal::ReaderLimit => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::NotFound => StatusCode::NOT_FOUND,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Refusal::ReaderLimit => "stream at its reader limit\n",
            Refusal::NotFound => "stream not found\n",
        }
    }
}

/// What a player's items ask of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Go on.
    Continue,
    /// The stream ended: send what is gathered, then end the body.
    End,
    /// The player fell too far behind: end at once.
    Abort,
}

/// One HTTP-FLV player of a stream, whichever way its bytes go: the hub reader and the tags
/// its items become.
struct FlvPlayer {
    reader: Reader,
    feed: TagFeed,
    /// Reused for the tags of each frame (no allocation per frame).
    tags: Vec<Tag>,
    /// Per-reader tags (FLV header, sequence headers, metadata) gathered for one write.
    own: BytesMut,
    path: String,
    /// The player's entry in the session registry.
    sess: SessionHandle,
}

impl FlvPlayer {
    /// Subscribes to `stream` (waiting for a publisher up to `hub.play_wait_ms`), attached
    /// to the fan-out with its socket when there is one. The player starts with the FLV file
    /// header gathered.
    async fn open(
        hub: &Arc<Hub>,
        stream: &str,
        socket: Option<Arc<TcpStream>>,
        peer: std::net::SocketAddr,
    ) -> Result<FlvPlayer, Refusal> {
        if hub.at_reader_limit(stream) {
            return Err(Refusal::ReaderLimit);
        }
        let sess = hub.sessions.open(Protocol::HttpFlv, peer);
        let Some(sub) = hub.subscribe_wait(stream).await else {
            debug!(%peer, path = stream, "http-flv: no such stream");
            return Err(Refusal::NotFound);
        };
        info!(%peer, session = %sess.id(), path = stream, "http-flv play");
        sess.begin(SessionRole::Reader, stream);
        let mut reader = match socket {
            Some(socket) => Reader::attached(hub.clone(), sub, Some(socket)),
            None => Reader::new(hub.clone(), sub),
        };
        reader.set_session(sess.info().clone());
        let t = reader.initial_tracks();
        // Until the publisher has sent its sequence headers, announce both tracks.
        let known = t.video.is_some() || t.audio.is_some();
        let own = BytesMut::from(&flv::file_header(!known || t.audio.is_some(), !known || t.video.is_some())[..]);
        Ok(FlvPlayer { reader, feed: TagFeed::default(), tags: Vec::new(), own, path: stream.to_owned(), sess })
    }

    /// Handles one reader item.
    fn take(&mut self, item: ReaderItem) -> Flow {
        match item {
            ReaderItem::Tracks(t) => self.feed.tracks(&t),
            ReaderItem::Frame(f) => self.feed.frame(f, &mut self.tags),
            ReaderItem::Republished => self.feed.reset(),
            ReaderItem::Unpublished => {}
            ReaderItem::Ended => {
                info!(session = %self.sess.id(), path = self.path, "http-flv: stream ended");
                return Flow::End;
            }
            ReaderItem::TooSlow => {
                warn!(session = %self.sess.id(), path = self.path, dropped = self.reader.dropped, "http-flv reader too slow: disconnected");
                self.sess.set_reason("too slow");
                return Flow::Abort;
            }
        }
        Flow::Continue
    }

    /// Moves the tags gathered so far to `out`, in order.
    fn flush(&mut self, out: &mut impl Extend<Bytes>) {
        push_tags(&mut self.tags, &mut self.own, out);
    }
}

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

fn plain_response(status: StatusCode, text: &str) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{CORS}Connection: close\r\n\r\n{text}",
        text.len()
    ))
}

/// `[auth]` for an HTTP-FLV player served on the raw socket (the router's check does not see
/// it): credentials from the request head's `Authorization` or query. Err: the refusal.
pub async fn authorize(hub: &Hub, head: &[u8], stream: &str, peer: std::net::SocketAddr) -> Result<(), Verdict> {
    if !hub.auth.enabled() {
        return Ok(());
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let _ = req.parse(head);
    let query = req.path.and_then(|p| p.split('#').next()).and_then(|p| p.split_once('?')).map(|(_, q)| q);
    let mut map = axum::http::HeaderMap::new();
    if let Some(h) = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("authorization"))
        && let Ok(v) = axum::http::HeaderValue::from_bytes(h.value)
    {
        map.insert(axum::http::header::AUTHORIZATION, v);
    }
    let check = AuthRequest {
        action: Action::Read,
        path: stream.to_owned(),
        via: Via::HttpFlv,
        ip: peer.ip(),
        presented: crate::auth::http::presented(&map, query),
        query: query.unwrap_or_default().to_owned(),
        id: None,
    };
    let verdict = hub.auth.check(&check).await;
    if verdict.allowed() {
        return Ok(());
    }
    tracing::debug!(%peer, path = stream, "http-flv: not authorized");
    Err(verdict)
}

/// Serves one HTTP-FLV player of `stream` on its raw socket, until the stream ends, the
/// player leaves, or its socket takes nothing for the write timeout.
pub async fn serve(socket: TcpStream, stream: String, hub: Arc<Hub>) -> anyhow::Result<()> {
    let socket = Arc::new(socket);
    let timeout = write_timeout(&hub);
    let peer = socket.peer_addr().unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut player = match FlvPlayer::open(&hub, &stream, Some(socket.clone()), peer).await {
        Ok(p) => p,
        Err(refusal) => {
            let mut out = vec![plain_response(refusal.status(), refusal.text())];
            write_with_timeout(&socket, &mut out, timeout).await?;
            let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nCache-Control: no-cache, no-store\r\n{CORS}Connection: close\r\n\r\n"
    );
    let mut pending = vec![Bytes::from(head)];
    player.flush(&mut pending);
    let mut buf = vec![0u8; READ_BUFFER];
    let slot = player.reader.slot().expect("attached").clone();
    let mut done = false;
    loop {
        if slot.fell_back() {
            slot.take_over(&mut pending)?;
        }
        if !pending.is_empty() {
            let total: usize = pending.iter().map(Bytes::len).sum();
            write_with_timeout(&socket, &mut pending, timeout).await?;
            player.sess.info().add_out(total);
            if pending.capacity() > 64 {
                pending = Vec::new(); // after the GOP burst
            }
        }
        if done {
            let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        if player.feed.settled() && player.reader.is_live() && !slot.is_direct() {
            let _ = slot.go_direct(Box::new(FlvEncoder { tracks: player.feed.current().clone() }));
        }
        let direct = slot.is_direct();
        tokio::select! {
            r = read_some(&socket, &mut buf) => {
                // A player sends nothing after its request; what it sends is dropped.
                if r? == 0 {
                    player.sess.set_reason("closed by peer");
                    return Ok(());
                }
            }
            _ = player.sess.kicked() => {
                info!(%peer, session = %player.sess.id(), "http-flv session kicked: closing");
                let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Both);
                return Ok(());
            }
            _ = slot.changed(), if direct => {}
            item = player.reader.next(), if !direct => {
                let mut item = Some(item);
                for _ in 0..64 {
                    let Some(i) = item.take().or_else(|| player.reader.try_next()) else { break };
                    match player.take(i) {
                        Flow::Continue => {}
                        Flow::End => {
                            done = true;
                            break;
                        }
                        Flow::Abort => return Ok(()),
                    }
                }
                player.flush(&mut pending);
            }
        }
    }
}

/// The answer to a `.flv` request that hyper reads (one after another request on a kept-alive
/// connection): the same player as [`serve`]'s, as a body hyper chunks. `watchdog` ends the
/// connection when the player's socket takes nothing for the write timeout.
pub async fn respond(hub: &Arc<Hub>, stream: &str, head_only: bool, watchdog: Option<Watchdog>) -> Response {
    respond_to(hub, stream, head_only, watchdog, std::net::SocketAddr::from(([0, 0, 0, 0], 0))).await
}

/// [`respond`] for a player at `peer` (the session's remote address).
pub async fn respond_to(
    hub: &Arc<Hub>,
    stream: &str,
    head_only: bool,
    watchdog: Option<Watchdog>,
    peer: std::net::SocketAddr,
) -> Response {
    let player = match FlvPlayer::open(hub, stream, None, peer).await {
        Ok(p) => p,
        Err(refusal) => return crate::http::plain(refusal.status(), refusal.text()),
    };
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::OK;
    crate::http::cors(&mut resp);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/x-flv"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    if head_only {
        return resp;
    }
    let watch = Arc::new(Watch::default());
    if let Some(w) = watchdog {
        w.watch(watch.clone(), stream.to_owned());
    }
    let body = FlvBody { player, out: VecDeque::new(), merge: write_merge(hub), done: false, watch };
    let body = futures_util::stream::unfold(body, |mut body| async move {
        let b = body.next().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(b), body))
    });
    *resp.body_mut() = Body::from_stream(body);
    resp
}

/// An HTTP-FLV body on hyper's path: hyper polls the hub reader itself, so a frame wakes one
/// task per reader (the connection's), as with RTMP — no feeding task and channel in between.
struct FlvBody {
    player: FlvPlayer,
    /// Ready for hyper, in order.
    out: VecDeque<Bytes>,
    merge: Duration,
    done: bool,
    watch: Arc<Watch>,
}

impl FlvBody {
    /// The next buffer for the socket; None at the end of the stream.
    async fn next(&mut self) -> Option<Bytes> {
        self.watch.polled();
        loop {
            if let Some(b) = self.out.pop_front() {
                self.watch.yielded();
                self.player.sess.info().add_out(b.len());
                return Some(b);
            }
            if self.done {
                return None;
            }
            // Items are handled as they come (no per-frame buffer of them): the first one
            // waited for, then what is ready, or what arrives within the merge window.
            let first = tokio::select! {
                item = self.player.reader.next() => item,
                _ = self.player.sess.kicked() => {
                    info!(session = %self.player.sess.id(), "http-flv session kicked: closing");
                    self.done = true;
                    return None;
                }
            };
            let mut flow = self.player.take(first);
            if self.merge.is_zero() {
                for _ in 1..64 {
                    if flow != Flow::Continue {
                        break;
                    }
                    let Some(i) = self.player.reader.try_next() else { break };
                    flow = self.player.take(i);
                }
            } else {
                let until = tokio::time::Instant::now() + self.merge;
                for _ in 1..1024 {
                    if flow != Flow::Continue {
                        break;
                    }
                    let Ok(i) = tokio::time::timeout_at(until, self.player.reader.next()).await else { break };
                    flow = self.player.take(i);
                }
            }
            match flow {
                Flow::Continue => {}
                Flow::End => self.done = true,
                Flow::Abort => {
                    self.done = true;
                    self.out.clear();
                    return None;
                }
            }
            self.player.flush(&mut self.out);
        }
    }
}

/// Notices a reader whose socket takes nothing: the body handed hyper a buffer and was not
/// asked for the next one for the write timeout (hyper asks as soon as it has written). Two
/// counters on the hot path, no clock; a watchdog task looks a few times per timeout.
#[derive(Default)]
struct Watch {
    /// Buffers handed to hyper.
    yielded: AtomicU64,
    /// `yielded` as it was when hyper last asked for more.
    asked: AtomicU64,
}

impl Watch {
    fn polled(&self) {
        self.asked.store(self.yielded.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    fn yielded(&self) {
        self.yielded.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a handler on hyper's path needs to end its connection: the connection task's abort
/// handle and the write timeout.
#[derive(Clone)]
pub struct Watchdog {
    /// Set once the connection's task is spawned.
    pub abort: Arc<std::sync::OnceLock<tokio::task::AbortHandle>>,
    /// How long a buffer may wait on the socket.
    pub timeout: Duration,
}

impl Watchdog {
    /// Ends the connection once the same buffer has waited on its socket for the timeout.
    fn watch(self, watch: Arc<Watch>, path: String) {
        tokio::spawn(async move {
            let step = self.timeout / 4;
            let mut waiting: Option<(u64, Duration)> = None;
            loop {
                tokio::time::sleep(step).await;
                let Some(handle) = self.abort.get() else { continue };
                if handle.is_finished() {
                    return;
                }
                let y = watch.yielded.load(Ordering::Relaxed);
                waiting = match waiting {
                    _ if watch.asked.load(Ordering::Relaxed) == y => None,
                    Some((seen, waited)) if seen == y => Some((y, waited + step)),
                    _ => Some((y, Duration::ZERO)),
                };
                if waiting.is_some_and(|(_, waited)| waited >= self.timeout) {
                    warn!(path, "http-flv reader took nothing for {:?}: disconnected", self.timeout);
                    handle.abort();
                    return;
                }
            }
        });
    }
}

/// Turns tags into buffers: per-reader tags gathered in one buffer, shared frame tags as
/// they are.
fn push_tags(tags: &mut Vec<Tag>, own: &mut BytesMut, out: &mut impl Extend<Bytes>) {
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
