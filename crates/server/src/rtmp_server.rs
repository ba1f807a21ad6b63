//! The RTMP listener: a thin tokio driver around [`ServerSession`]. It reads, hands bytes to
//! the session, acts on its events (hub publish/subscribe), drains its transmit queue with
//! vectored writes and sleeps until the next timer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use ferrocast_media::{Frame, TrackInfo, TrackKind, Tracks, Wire, flv};
use ferrocast_rtmp::message::{encode_media, user_control};
use ferrocast_rtmp::{MediaKind, ServerConfig, ServerEvent, ServerSession};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::auth::{Action, AuthRequest, Verdict, Via};
use crate::config::{LimitsConfig, RtmpConfig, ms};
use crate::fanout::Encoder;
use crate::hub::{Hub, reader_nodelay, write_merge, write_timeout};
use crate::ingest::RtmpIngest;
use crate::limits::Limiter;
use crate::path::stream_path;
use crate::reader::{Reader, ReaderItem, Tag, TagFeed, flv_track};
use crate::session::{Protocol, Role as SessionRole, SessionHandle};
use crate::sockio::{read_some, write_with_timeout};

/// Message stream id `createStream` gives first; shared media chunks are encoded for it.
const SHARED_STREAM_ID: u32 = 1;
/// Bytes read from a socket at a time. Readers send almost nothing, so this is per-viewer
/// memory; publishers of a few Mbit/s are served well by it too.
const READ_BUFFER: usize = 16 * 1024;
/// Read buffer of a connection until it publishes.
const PLAYER_READ_BUFFER: usize = 1024;
/// Most reader items handled before writing, so one write carries several frames.
const BATCH: usize = 64;
/// Most reader items taken at the end of a write-merge window.
const MERGE_BATCH: usize = 4096;

/// Accepts RTMP connections until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    config: RtmpConfig,
    hub: Arc<Hub>,
    limiter: Arc<Limiter>,
    limits: LimitsConfig,
) {
    let session_config = ServerConfig {
        chunk_size: config.chunk_size,
        max_message_len: config.max_message_size,
        window_ack_size: ferrocast_rtmp::ServerConfig::default().window_ack_size,
        handshake_timeout: ms(config.handshake_timeout_ms),
        idle_timeout: ms(config.idle_timeout_ms),
        ping_interval: ms(config.ping_interval_ms),
    };
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("rtmp accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admission = match limiter.admit(peer.ip()) {
            Ok(a) => a,
            Err(e) => {
                warn!(%peer, "rtmp connection refused: {e}");
                continue;
            }
        };
        let hub = hub.clone();
        let cfg = session_config.clone();
        let publisher_idle = ms(limits.publisher_idle_timeout_ms);
        tokio::spawn(async move {
            let _admission = admission;
            let sess = hub.sessions.open(Protocol::Rtmp, peer);
            let mut conn = Connection {
                sess,
                peer,
                socket: Arc::new(socket),
                session: ServerSession::new(cfg, Instant::now()),
                hub,
                app: String::new(),
                tc_url: None,
                role: Role::None,
                publisher_idle,
                last_media: Instant::now(),
                pending: Vec::new(),
            };
            let id = conn.sess.id();
            match conn.run().await {
                Ok(()) => debug!(%peer, session = %id, "rtmp connection closed"),
                Err(e) => {
                    conn.sess.set_reason(format!("{e:#}"));
                    info!(%peer, session = %id, "rtmp connection ended: {e:#}")
                }
            }
        });
    }
}

enum Role {
    None,
    Publishing { stream_id: u32, ingest: RtmpIngest },
    Playing(Box<Playing>),
}

struct Playing {
    stream_id: u32,
    path: String,
    reader: Reader,
    feed: TagFeed,
    paused: bool,
    audio: bool,
    video: bool,
    /// Set once the stream has ended: flush, then close.
    finished: bool,
    /// Reused for the tags of each frame (no allocation per frame).
    tags: Vec<Tag>,
}

impl Playing {
    /// The fan-out slot (every RTMP player has one).
    fn slot(&self) -> &Arc<crate::fanout::Slot> {
        self.reader.slot().expect("RTMP players are attached")
    }
}

struct Connection {
    peer: SocketAddr,
    socket: Arc<TcpStream>,
    session: ServerSession,
    hub: Arc<Hub>,
    app: String,
    /// The connect's tcUrl (it may carry `?user=&pass=`; never logged).
    tc_url: Option<String>,
    role: Role,
    /// A publisher silent this long is dropped.
    publisher_idle: std::time::Duration,
    last_media: Instant,
    /// Buffers on their way to the socket (reused).
    pending: Vec<Bytes>,
    /// The connection's entry in the session registry (ends with the connection). Last, so
    /// dropped last: what a player's fan-out slot counted is added when its reader (in `role`)
    /// goes, before the session's end reads its totals.
    sess: SessionHandle,
}

impl Connection {
    async fn run(&mut self) -> anyhow::Result<()> {
        let _ = self.socket.set_nodelay(reader_nodelay(&self.hub));
        let merge = write_merge(&self.hub);
        // With a merge window, media waits until the window that its first frame opened ends.
        let mut flush_at: Option<tokio::time::Instant> = None;
        let mut started_media = false;
        // Players send little (acks, pings): a small buffer until the connection publishes.
        let mut buf = vec![0u8; PLAYER_READ_BUFFER];
        // One timer for the session's deadlines, moved only when they change: a timer set up
        // and torn down per frame and reader was a measurable share of the fan-out CPU.
        let mut timer_at = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        let mut timer = std::pin::pin!(tokio::time::sleep_until(timer_at));
        loop {
            if matches!(&self.role, Role::Playing(p) if p.slot().fell_back()) {
                self.reclaim()?;
            }
            if flush_at.is_none_or(|t| tokio::time::Instant::now() >= t) {
                self.flush().await?;
                flush_at = None;
            }
            if self.session.is_closing() || matches!(&self.role, Role::Playing(p) if p.finished) {
                let _ = socket2::SockRef::from(&*self.socket).shutdown(std::net::Shutdown::Write);
                return Ok(());
            }
            // Caught up with nothing to write: the fan-out task writes the next frames itself
            // (with the merge window, if any: one write per window).
            self.try_go_direct();
            let mut deadline = self.session.poll_timeout().map(|(_, at)| at);
            if matches!(self.role, Role::Publishing { .. }) {
                let idle_at = self.last_media + self.publisher_idle;
                if Instant::now() >= idle_at {
                    anyhow::bail!("publisher sent no media for {:?}: unpublished", self.publisher_idle);
                }
                deadline = Some(deadline.map_or(idle_at, |d| d.min(idle_at)));
            }
            if matches!(self.role, Role::Publishing { .. }) && buf.len() < READ_BUFFER {
                buf.resize(READ_BUFFER, 0);
            }
            let sleep_until = tokio::time::Instant::from_std(
                deadline.unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600)),
            );
            if sleep_until != timer_at {
                timer_at = sleep_until;
                timer.as_mut().reset(timer_at);
            }
            // Inside a merge window the reader is not woken per frame: the frames wait in the
            // stream's ring and are taken all at once when the window ends.
            let (reading, slot) = match &mut self.role {
                Role::Playing(p) if p.slot().is_direct() => (None, Some(p.slot().clone())),
                Role::Playing(p) if !p.paused && flush_at.is_none() => (Some(&mut p.reader), None),
                _ => (None, None),
            };
            tokio::select! {
                r = read_some(&self.socket, &mut buf) => {
                    let n = r.context("read")?;
                    if n == 0 {
                        self.sess.set_reason("closed by peer");
                        return Ok(());
                    }
                    self.sess.info().add_in(n);
                    self.session.handle_input(Instant::now(), &buf[..n])?;
                    self.handle_events().await?;
                }
                // DELETE /api/v1/sessions/ID: a publisher's path goes into its republish grace.
                _ = self.sess.kicked() => {
                    info!(peer = %self.peer, session = %self.sess.id(), "rtmp session kicked: closing");
                    let _ = socket2::SockRef::from(&*self.socket).shutdown(std::net::Shutdown::Both);
                    return Ok(());
                }
                _ = timer.as_mut() => {
                    self.session.handle_timeout(Instant::now())?;
                }
                // The sink left direct mode: the loop's top takes over.
                _ = async { slot.expect("guarded").changed().await }, if slot.is_some() => {}
                item = async { reading.expect("guarded").next().await }, if reading.is_some() => {
                    self.play_item(item);
                    self.play_item_batch();
                    // The first batch (the GOP cache) leaves at once: the first picture is not
                    // delayed by the window.
                    if !merge.is_zero() && flush_at.is_none() && started_media && !matches!(&self.role, Role::Playing(p) if p.finished) {
                        flush_at = Some(tokio::time::Instant::now() + merge);
                    }
                    started_media = true;
                }
                _ = async { tokio::time::sleep_until(flush_at.expect("guarded")).await }, if flush_at.is_some() => {
                    for _ in 0..MERGE_BATCH {
                        let Role::Playing(p) = &mut self.role else { break };
                        if p.finished { break; }
                        let Some(item) = p.reader.try_next() else { break };
                        self.play_item(item);
                    }
                }
            }
        }
    }

    /// Takes up to a batch of ready reader items after one that woke the task.
    fn play_item_batch(&mut self) {
        for _ in 1..BATCH {
            let Role::Playing(p) = &mut self.role else { break };
            if p.finished {
                break;
            }
            let Some(item) = p.reader.try_next() else { break };
            self.play_item(item);
        }
    }

    /// Hands the writing of frames to the stream's fan-out task, if this reader is playing,
    /// in step, has nothing queued or unsent (a merge window of its own may hold frames in
    /// the session: they would go out after newer ones) and writes with the shared chunks.
    fn try_go_direct(&mut self) {
        let Role::Playing(p) = &mut self.role else { return };
        if p.paused || p.finished || p.stream_id != SHARED_STREAM_ID || !p.feed.settled() || !p.reader.is_live() {
            return;
        }
        if !self.pending.is_empty() || self.session.has_output() || p.slot().is_direct() {
            return;
        }
        let encoder = RtmpEncoder {
            tracks: p.feed.current().clone(),
            audio: p.audio,
            video: p.video,
            chunk_size: self.session.chunk_size(),
        };
        let _ = p.slot().go_direct(Box::new(encoder));
    }

    /// Takes the writing back from the fan-out task: what it left unwritten goes first.
    fn reclaim(&mut self) -> anyhow::Result<()> {
        let Role::Playing(p) = &mut self.role else { return Ok(()) };
        p.slot().take_over(&mut self.pending).context("write")
    }

    /// Writes everything the session has queued, in as few syscalls as the kernel allows.
    async fn flush(&mut self) -> anyhow::Result<()> {
        let before = self.pending.len();
        while let Some(b) = self.session.poll_transmit() {
            self.pending.push(b);
        }
        if self.pending.len() > before {
            // Control messages (pings, play responses) go out in order with the frames.
            let own = self.pending.split_off(before);
            self.reclaim()?;
            self.pending.extend(own);
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let total: usize = self.pending.iter().map(Bytes::len).sum();
        write_with_timeout(&self.socket, &mut self.pending, write_timeout(&self.hub)).await?;
        self.sess.info().add_out(total);
        if self.pending.capacity() > 64 {
            self.pending = Vec::new(); // after the GOP-cache burst
        }
        Ok(())
    }

    async fn handle_events(&mut self) -> anyhow::Result<()> {
        while let Some(ev) = self.session.poll_event() {
            // Every event of a player (pause, stop, receive flags) is handled by its own task.
            self.reclaim()?;
            match ev {
                ServerEvent::Connect { app, tc_url, .. } => {
                    self.tc_url = tc_url;
                    let handshake = self.session.handshake_kind();
                    // The app is the first part of every stream path.
                    if let Err(e) = crate::path::validate(app.trim_matches('/')) {
                        warn!(peer = %self.peer, app, "rtmp connect rejected: {e}");
                        self.session.reject_connect(&format!("bad app name: {e}"));
                        continue;
                    }
                    debug!(peer = %self.peer, app, ?handshake, "rtmp connect");
                    self.app = app;
                    self.session.accept_connect()?;
                }
                ServerEvent::Publish { stream_id, name, query, .. } => {
                    if self.authorized(Action::Publish, stream_id, &name, query.as_deref()).await? {
                        self.publish(stream_id, &name)?;
                    }
                }
                ServerEvent::Play { stream_id, name, query } => {
                    if self.authorized(Action::Read, stream_id, &name, query.as_deref()).await? {
                        self.play(stream_id, &name, query.as_deref()).await?;
                    }
                }
                ServerEvent::Unpublish { stream_id } => {
                    if matches!(&self.role, Role::Publishing { stream_id: s, .. } if *s == stream_id) {
                        if let Role::Publishing { ingest, .. } = &self.role {
                            info!(peer = %self.peer, session = %self.sess.id(), path = ingest.path(), "rtmp unpublish");
                        }
                        self.role = Role::None;
                    }
                }
                ServerEvent::PlayStop { stream_id } => {
                    if matches!(&self.role, Role::Playing(p) if p.stream_id == stream_id) {
                        self.role = Role::None;
                    }
                }
                ServerEvent::Pause { paused, .. } => {
                    if let Role::Playing(p) = &mut self.role {
                        p.paused = paused;
                        if !paused {
                            p.reader.resync();
                        }
                    }
                }
                ServerEvent::Receive { kind, enabled, .. } => {
                    if let Role::Playing(p) = &mut self.role {
                        match kind {
                            MediaKind::Audio => p.audio = enabled,
                            _ => p.video = enabled,
                        }
                    }
                }
                ServerEvent::Media(msg) => {
                    self.last_media = Instant::now();
                    if let Role::Publishing { ingest, stream_id } = &mut self.role
                        && msg.stream_id == *stream_id
                        && let Err(e) = ingest.handle(msg)
                    {
                        if e.ends_publish() {
                            // The publisher is told; readers keep the last good configuration.
                            warn!(peer = %self.peer, session = %self.sess.id(), path = ingest.path(), "rtmp publish ended: {e}");
                            self.session.send_status(*stream_id, "error", "NetStream.Publish.Failed", &e.to_string());
                            self.role = Role::None;
                        } else {
                            debug!(peer = %self.peer, path = ingest.path(), "dropped publisher message: {e}");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `[auth]` allows `action` on the stream `name` (credentials in its query or in
    /// tcUrl's); a refusal is answered here (`NetStream.Publish.Unauthorized` /
    /// `NetStream.Play.Unauthorized`, as other servers send) and logged without the query.
    async fn authorized(
        &mut self,
        action: Action,
        stream_id: u32,
        name: &str,
        query: Option<&str>,
    ) -> anyhow::Result<bool> {
        if !self.hub.auth.enabled() {
            return Ok(true);
        }
        let Ok(path) = stream_path(&self.app, name) else {
            // The publish or play refuses a bad name itself.
            return Ok(true);
        };
        let app_query = self.tc_url.as_deref();
        let req = AuthRequest {
            action,
            path: path.clone(),
            via: Via::Rtmp,
            ip: self.peer.ip(),
            presented: crate::auth::http::rtmp_presented(query, app_query),
            query: query.unwrap_or_default().to_owned(),
            id: Some(self.sess.id().to_string()),
        };
        let verdict = self.hub.auth.check(&req).await;
        if let Verdict::Allow(user) = verdict {
            if let Some(user) = user {
                let _ = self.sess.info().user.set(user);
            }
            return Ok(true);
        }
        let why = if verdict == Verdict::Blocked { "too many failed attempts" } else { "not authorized" };
        warn!(peer = %self.peer, path, action = action.as_str(), "rtmp {}: {why}", action.as_str());
        let code =
            if action == Action::Publish { "NetStream.Publish.Unauthorized" } else { "NetStream.Play.Unauthorized" };
        self.session.reject(stream_id, code, why)?;
        Ok(false)
    }

    /// The path for a publish or play, or why there is none.
    fn claimable_path(&self, name: &str) -> Result<String, String> {
        if !matches!(self.role, Role::None) {
            return Err("connection already publishing or playing".into());
        }
        stream_path(&self.app, name).map_err(|e| e.to_string())
    }

    fn publish(&mut self, stream_id: u32, name: &str) -> anyhow::Result<()> {
        let claimed = self.claimable_path(name).and_then(|path| {
            crate::path::validate_publish(&path).map_err(|e| e.to_string())?;
            self.hub.publish(&path).map_err(|e| e.to_string())
        });
        match claimed {
            Ok(publisher) => {
                info!(peer = %self.peer, session = %self.sess.id(), path = publisher.path(), "rtmp publish");
                self.sess.begin(SessionRole::Publisher, publisher.path());
                self.last_media = Instant::now();
                self.role = Role::Publishing { stream_id, ingest: RtmpIngest::new(publisher) };
                self.session.accept_publish(stream_id)?;
            }
            Err(why) => {
                warn!(peer = %self.peer, session = %self.sess.id(), name, "rtmp publish refused: {why}");
                self.session.reject(stream_id, "NetStream.Publish.BadName", &why)?;
            }
        }
        Ok(())
    }

    async fn play(&mut self, stream_id: u32, name: &str, query: Option<&str>) -> anyhow::Result<()> {
        let path = match self.claimable_path(name) {
            Ok(p) => p,
            Err(why) => {
                info!(peer = %self.peer, name, "rtmp play refused: {why}");
                self.session.reject(stream_id, "NetStream.Play.StreamNotFound", &why)?;
                return Ok(());
            }
        };
        if self.hub.at_reader_limit(&path) {
            warn!(peer = %self.peer, path, "rtmp play refused: stream at its reader limit");
            self.session.reject(stream_id, "NetStream.Play.Failed", "too many readers")?;
            return Ok(());
        }
        // A pull by another edge names the servers it came through (see `crate::edge`).
        let via = crate::edge::via_from_query(query);
        if let Err(e) = self.hub.check_via(&via) {
            warn!(peer = %self.peer, path, "rtmp play refused: {e}");
            self.session.reject(stream_id, "NetStream.Play.Failed", &e.to_string())?;
            return Ok(());
        }
        let Some(sub) = self.hub.subscribe_wait_via(&path, &via).await else {
            info!(peer = %self.peer, path, "rtmp play: no such stream");
            let why = format!("no stream {path}");
            self.session.reject(stream_id, "NetStream.Play.StreamNotFound", &why)?;
            return Ok(());
        };
        info!(peer = %self.peer, session = %self.sess.id(), path, "rtmp play");
        self.sess.begin(SessionRole::Reader, &path);
        let mut reader = Reader::attached(self.hub.clone(), sub, Some(self.socket.clone()));
        reader.set_session(self.sess.info().clone());
        self.role = Role::Playing(Box::new(Playing {
            stream_id,
            path,
            reader,
            feed: TagFeed::default(),
            paused: false,
            audio: true,
            video: true,
            finished: false,
            tags: Vec::with_capacity(4),
        }));
        self.session.accept_play(stream_id)?;
        Ok(())
    }

    fn play_item(&mut self, item: ReaderItem) {
        let Role::Playing(p) = &mut self.role else {
            return;
        };
        let sid = p.stream_id;
        match item {
            ReaderItem::Tracks(t) => p.feed.tracks(&t),
            ReaderItem::Frame(f) => {
                let wanted = match f.kind {
                    ferrocast_media::TrackKind::Audio => p.audio,
                    ferrocast_media::TrackKind::Video => p.video,
                };
                if !wanted {
                    return;
                }
                let mut tags = std::mem::take(&mut p.tags);
                p.feed.frame(f, &mut tags);
                let chunk_size = self.session.chunk_size();
                for tag in tags.drain(..) {
                    match tag {
                        Tag::Own { tag_type, timestamp, body } => {
                            let kind = MediaKind::from_tag_type(tag_type);
                            self.session.send_media_message(kind, timestamp as u32, sid, &body);
                        }
                        Tag::Frame { frame, track } => {
                            if sid == SHARED_STREAM_ID {
                                self.session.send_media(shared_chunks(&frame, &track, chunk_size));
                            } else {
                                self.session.send_media_message(
                                    media_kind(frame.kind),
                                    track.to_ms(frame.dts) as u32,
                                    sid,
                                    &flv::frame_body(&track, &frame),
                                );
                            }
                        }
                    }
                }
                if let Role::Playing(p) = &mut self.role {
                    p.tags = tags;
                }
            }
            ReaderItem::Unpublished => self.session.send_user_control(user_control::STREAM_EOF, sid),
            ReaderItem::Republished => {
                p.feed.reset();
                self.session.send_user_control(user_control::STREAM_BEGIN, sid);
                self.session.send_status(sid, "status", "NetStream.Play.PublishNotify", "republished");
            }
            ReaderItem::Ended => {
                info!(peer = %self.peer, session = %self.sess.id(), path = p.path, "rtmp play: stream ended");
                self.session.end_play(sid, "NetStream.Play.UnpublishNotify", "stream ended");
                p.finished = true;
            }
            ReaderItem::TooSlow => {
                warn!(peer = %self.peer, session = %self.sess.id(), path = p.path, dropped = p.reader.dropped, "rtmp reader too slow: disconnected");
                self.sess.set_reason("too slow");
                p.finished = true;
            }
        }
    }
}

/// The RTMP chunks of a frame on the shared play stream, built once for every reader.
fn shared_chunks(frame: &Frame, track: &TrackInfo, chunk_size: u32) -> Bytes {
    frame.wire(Wire::RtmpChunks, |f| {
        encode_media(
            media_kind(f.kind),
            track.to_ms(f.dts) as u32,
            SHARED_STREAM_ID,
            &flv::frame_body(track, f),
            chunk_size,
        )
    })
}

fn media_kind(kind: TrackKind) -> MediaKind {
    match kind {
        TrackKind::Audio => MediaKind::Audio,
        TrackKind::Video => MediaKind::Video,
    }
}

/// A player's frames as the fan-out task writes them: the shared chunks, for the tracks
/// whose headers the player has, of the kinds it wants.
struct RtmpEncoder {
    tracks: Arc<Tracks>,
    audio: bool,
    video: bool,
    chunk_size: u32,
}

impl Encoder for RtmpEncoder {
    fn frame(&mut self, frame: &Arc<Frame>, out: &mut Vec<Bytes>) {
        let wanted = match frame.kind {
            TrackKind::Video => self.video,
            TrackKind::Audio => self.audio,
        };
        // As the reader's own feed does: frames FLV cannot carry, or that the player turned
        // off, are not sent.
        if let Some(track) = flv_track(&self.tracks, frame.kind).filter(|_| wanted) {
            out.push(shared_chunks(frame, track, self.chunk_size));
        }
    }
}
