//! Sessions (DESIGN.md "Sessions have ids"): every connection, publisher, reader, pulled
//! source and push relay gets an id that the logs, the API, the metrics and the hooks share.
//!
//! A protocol driver opens a session when it accepts a connection ([`Sessions::open`]), says
//! what it became once a publish or play is accepted ([`SessionHandle::begin`]), counts its
//! bytes on the [`SessionInfo`] it holds, and waits on [`SessionHandle::kicked`] beside its
//! socket so that `DELETE /api/v1/sessions/{id}` ends it. Dropping the handle ends the session.
//!
//! Starts and ends go out as [`SessionEvent`]s on a bounded broadcast channel (hooks and the
//! session log follow it): sending never waits, so nothing here can delay media; a listener
//! that falls behind loses events and counts them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

/// Events queued for slow listeners of [`Sessions::events`]; beyond this they lose the oldest.
pub const EVENT_QUEUE: usize = 4096;

/// A session id: 64 random bits from the OS CSPRNG, shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl SessionId {
    /// Parses the 16 hex digits of [`fmt::Display`].
    pub fn parse(text: &str) -> Option<SessionId> {
        if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(SessionId)
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The protocol a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// RTMP (publish or play).
    Rtmp,
    /// RTSP (RECORD, PLAY, playback).
    Rtsp,
    /// HTTP-FLV.
    HttpFlv,
    /// HLS (a player holds no connection: one session per client address and path while it
    /// keeps requesting).
    Hls,
    /// HTTP playback of recordings and files (MP4, HLS VOD).
    HttpPlayback,
}

impl Protocol {
    /// Every protocol, for metrics that list each one.
    pub const ALL: [Protocol; 5] =
        [Protocol::Rtmp, Protocol::Rtsp, Protocol::HttpFlv, Protocol::Hls, Protocol::HttpPlayback];

    /// The name used in the API, metrics labels and hooks.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Rtmp => "rtmp",
            Protocol::Rtsp => "rtsp",
            Protocol::HttpFlv => "http_flv",
            Protocol::Hls => "hls",
            Protocol::HttpPlayback => "http_playback",
        }
    }
}

/// What a session does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Publishes a path (RTMP publish, RTSP RECORD).
    Publisher,
    /// Reads a live path.
    Reader,
    /// Plays a recording or a file.
    Playback,
    /// A pulled source (a camera or another server) feeding a path.
    Source,
    /// A push relay sending a path elsewhere.
    Push,
}

impl Role {
    /// Every role, for metrics that list each one.
    pub const ALL: [Role; 5] = [Role::Publisher, Role::Reader, Role::Playback, Role::Source, Role::Push];

    /// The name used in the API, metrics labels and hooks.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Reader => "reader",
            Role::Playback => "playback",
            Role::Source => "source",
            Role::Push => "push",
        }
    }
}

/// RTCP receiver-report figures of an RTSP reader (RFC 3550 6.4.2), the latest report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RtcpFigures {
    /// Cumulative packets lost the reader reported.
    pub packets_lost: i64,
    /// Fraction lost since its previous report, 0..1.
    pub fraction_lost: f64,
    /// Interarrival jitter, in seconds.
    pub jitter: f64,
}

/// What the server knows of one session. Counters are updated by the session's driver.
#[derive(Debug)]
pub struct SessionInfo {
    /// The id.
    pub id: SessionId,
    /// The protocol.
    pub protocol: Protocol,
    /// The client's address (or the peer's, for sources and push relays).
    pub peer: SocketAddr,
    /// When the connection was accepted.
    pub created: SystemTime,
    /// The same, on the monotonic clock (durations).
    pub created_at: Instant,
    /// Role and path, once a publish or play was accepted.
    begun: OnceLock<(Role, String)>,
    /// Bytes received from the peer.
    pub bytes_in: AtomicU64,
    /// Bytes sent to the peer.
    pub bytes_out: AtomicU64,
    /// Frames skipped because the reader was too slow.
    pub frames_skipped: AtomicU64,
    /// The latest RTCP receiver report (RTSP readers).
    pub rtcp: Mutex<Option<RtcpFigures>>,
    /// The user the session authenticated as, if any.
    pub user: OnceLock<String>,
    /// Why the session ended, when the driver says.
    reason: Mutex<Option<String>>,
    kick: Notify,
    kicked: std::sync::atomic::AtomicBool,
}

impl SessionInfo {
    /// Role and path, once begun.
    pub fn role(&self) -> Option<Role> {
        self.begun.get().map(|(r, _)| *r)
    }

    /// The path, once begun.
    pub fn path(&self) -> Option<&str> {
        self.begun.get().map(|(_, p)| p.as_str())
    }

    /// Adds `n` received bytes.
    pub fn add_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Adds `n` sent bytes.
    pub fn add_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Whether the session was kicked.
    pub fn was_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    /// Completes when the session is kicked (at once if it was already); for a task that
    /// holds the shared record rather than the handle.
    pub async fn kicked(&self) {
        loop {
            let notified = self.kick.notified();
            if self.was_kicked() {
                return;
            }
            notified.await;
        }
    }

    /// Why it ended (`"kicked"`, `"closed by peer"`, an error), if known.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The JSON of the API (`/api/v1/sessions`).
    pub fn to_json(&self) -> serde_json::Value {
        let rtcp = *self.rtcp.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "id": self.id,
            "protocol": self.protocol,
            "role": self.role(),
            "path": self.path(),
            "remote_addr": self.peer.to_string(),
            "user": self.user.get(),
            "created": crate::utc::format(unix_micros(self.created)),
            "duration": self.created_at.elapsed().as_secs_f64(),
            "bytes_in": self.bytes_in.load(Ordering::Relaxed),
            "bytes_out": self.bytes_out.load(Ordering::Relaxed),
            "frames_skipped": self.frames_skipped.load(Ordering::Relaxed),
            "rtcp": rtcp,
        })
    }
}

/// Sent bytes counted where they are sent and added to a session's `bytes_out` every
/// [`OutCount::EVERY`] sends: the fan-out sends a frame to each of its readers in turn, and
/// an add to each reader's session is a cache miss per reader and frame (a tenth of the
/// fan-out's own time at 500 RTP/UDP readers). What the session shows lags by at most that
/// many sends; the owner calls [`OutCount::flush`] when it stops sending.
#[derive(Debug, Default)]
pub struct OutCount {
    bytes: u64,
    sends: u32,
}

impl OutCount {
    /// Sends counted before the session is told.
    pub const EVERY: u32 = 16;

    /// Counts `n` bytes sent, telling `session` every [`OutCount::EVERY`] sends.
    pub fn add(&mut self, n: usize, session: Option<&SessionInfo>) {
        self.bytes += n as u64;
        self.sends += 1;
        if self.sends >= Self::EVERY {
            self.flush(session);
        }
    }

    /// Tells `session` what was counted since it was last told.
    pub fn flush(&mut self, session: Option<&SessionInfo>) {
        if let Some(s) = session
            && self.bytes > 0
        {
            s.bytes_out.fetch_add(self.bytes, Ordering::Relaxed);
        }
        self.bytes = 0;
        self.sends = 0;
    }
}

fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A session's start or end.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A publish or play was accepted ([`SessionHandle::begin`]).
    Started(Arc<SessionInfo>),
    /// A begun session ended (its handle was dropped).
    Ended(Arc<SessionInfo>),
}

/// Counters of the registry (metrics).
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Sessions opened (connections accepted and sources started), ever.
    pub opened: AtomicU64,
    /// Sessions kicked through the API.
    pub kicked: AtomicU64,
    /// Bytes received by sessions that ended (live ones add theirs when listed).
    pub ended_bytes_in: AtomicU64,
    /// Bytes sent by sessions that ended.
    pub ended_bytes_out: AtomicU64,
}

/// Most paths whose ended sessions' bytes are kept ([`Sessions::path_bytes`]); beyond it the
/// totals of paths without an open session are forgotten.
pub const MAX_PATH_TOTALS: usize = 4096;

/// The registry of open sessions.
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<SessionId, Arc<SessionInfo>>>,
    /// Bytes (in, out) of the ended sessions of each path.
    ended_by_path: Mutex<HashMap<String, (u64, u64)>>,
    events: broadcast::Sender<SessionEvent>,
    /// Counters.
    pub stats: SessionStats,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            ended_by_path: Mutex::new(HashMap::new()),
            events: broadcast::channel(EVENT_QUEUE).0,
            stats: SessionStats::default(),
        }
    }
}

impl Sessions {
    /// An empty registry.
    pub fn new() -> Arc<Sessions> {
        Arc::new(Sessions::default())
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Arc<SessionInfo>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for a connection from `peer` (or a source's or push relay's connection
    /// to it). It is listed until the handle is dropped.
    pub fn open(self: &Arc<Self>, protocol: Protocol, peer: SocketAddr) -> SessionHandle {
        let info = Arc::new(SessionInfo {
            id: SessionId(crate::rtsp::random_u64()),
            protocol,
            peer,
            created: SystemTime::now(),
            created_at: Instant::now(),
            begun: OnceLock::new(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            frames_skipped: AtomicU64::new(0),
            rtcp: Mutex::new(None),
            user: OnceLock::new(),
            reason: Mutex::new(None),
            kick: Notify::new(),
            kicked: std::sync::atomic::AtomicBool::new(false),
        });
        self.map().insert(info.id, info.clone());
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        SessionHandle { sessions: self.clone(), info }
    }

    /// Every open session, oldest first.
    pub fn list(&self) -> Vec<Arc<SessionInfo>> {
        let mut v: Vec<_> = self.map().values().cloned().collect();
        v.sort_by_key(|s| (s.created_at, s.id));
        v
    }

    /// One open session.
    pub fn get(&self, id: SessionId) -> Option<Arc<SessionInfo>> {
        self.map().get(&id).cloned()
    }

    /// Ends a session: its driver sees [`SessionHandle::kicked`] complete and closes it. False
    /// for an unknown id.
    pub fn kick(&self, id: SessionId) -> bool {
        let Some(info) = self.get(id) else { return false };
        info.kicked.store(true, Ordering::Release);
        info.kick.notify_waiters();
        info.kick.notify_one();
        self.stats.kicked.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The open sessions that began on `path`, oldest first.
    pub fn on_path(&self, path: &str) -> Vec<Arc<SessionInfo>> {
        let mut v: Vec<_> = self.map().values().filter(|s| s.path() == Some(path)).cloned().collect();
        v.sort_by_key(|s| (s.created_at, s.id));
        v
    }

    /// Bytes (in, out) of every session of `path` since the server started: the open ones
    /// and those that ended (playback sessions of recordings not counted).
    pub fn path_bytes(&self, path: &str) -> (u64, u64) {
        let (mut i, mut o) =
            self.ended_by_path.lock().unwrap_or_else(|e| e.into_inner()).get(path).copied().unwrap_or_default();
        for s in self.on_path(path) {
            if s.role() != Some(Role::Playback) {
                i += s.bytes_in.load(Ordering::Relaxed);
                o += s.bytes_out.load(Ordering::Relaxed);
            }
        }
        (i, o)
    }

    /// Adds an ended session's bytes to its path's totals.
    fn ended(&self, info: &SessionInfo) {
        let Some((role, path)) = info.begun.get() else { return };
        if *role == Role::Playback {
            return;
        }
        let mut totals = self.ended_by_path.lock().unwrap_or_else(|e| e.into_inner());
        if totals.len() >= MAX_PATH_TOTALS && !totals.contains_key(path) {
            let live: std::collections::HashSet<String> =
                self.map().values().filter_map(|s| s.path().map(str::to_owned)).collect();
            totals.retain(|p, _| live.contains(p));
            if totals.len() >= MAX_PATH_TOTALS {
                return;
            }
        }
        let t = totals.entry(path.clone()).or_default();
        t.0 += info.bytes_in.load(Ordering::Relaxed);
        t.1 += info.bytes_out.load(Ordering::Relaxed);
    }

    /// Starts and ends from now on.
    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }
}

/// An open session; dropping it ends the session.
#[derive(Debug)]
pub struct SessionHandle {
    sessions: Arc<Sessions>,
    info: Arc<SessionInfo>,
}

impl SessionHandle {
    /// The session's shared record (counters, id).
    pub fn info(&self) -> &Arc<SessionInfo> {
        &self.info
    }

    /// The id.
    pub fn id(&self) -> SessionId {
        self.info.id
    }

    /// Says what the session became (once; later calls are ignored) and announces its start.
    pub fn begin(&self, role: Role, path: &str) {
        if self.info.begun.set((role, path.to_owned())).is_ok() {
            tracing::info!(
                session = %self.info.id, protocol = self.info.protocol.as_str(), role = role.as_str(),
                path, peer = %self.info.peer, "session started"
            );
            let _ = self.sessions.events.send(SessionEvent::Started(self.info.clone()));
        }
    }

    /// Records why the session ends (the first reason given wins).
    pub fn set_reason(&self, reason: impl Into<String>) {
        let mut r = self.info.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason.into());
        }
    }

    /// Completes when the session is kicked (at once if it was already).
    pub async fn kicked(&self) {
        self.info.kicked().await
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.sessions.map().remove(&self.info.id);
        let stats = &self.sessions.stats;
        stats.ended_bytes_in.fetch_add(self.info.bytes_in.load(Ordering::Relaxed), Ordering::Relaxed);
        stats.ended_bytes_out.fetch_add(self.info.bytes_out.load(Ordering::Relaxed), Ordering::Relaxed);
        self.sessions.ended(&self.info);
        if self.info.was_kicked() {
            self.set_reason("kicked");
        }
        if let Some((role, path)) = self.info.begun.get() {
            tracing::info!(
                session = %self.info.id, protocol = self.info.protocol.as_str(), role = role.as_str(), path,
                peer = %self.info.peer,
                bytes_in = self.info.bytes_in.load(Ordering::Relaxed),
                bytes_out = self.info.bytes_out.load(Ordering::Relaxed),
                duration_s = self.info.created_at.elapsed().as_secs_f64(),
                reason = self.info.reason().as_deref().unwrap_or("closed"),
                "session ended"
            );
            let _ = self.sessions.events.send(SessionEvent::Ended(self.info.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_begin_kick_and_end() {
        let sessions = Sessions::new();
        let mut events = sessions.events();
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let h = sessions.open(Protocol::Rtmp, peer);
        let id = h.id();
        assert_eq!(SessionId::parse(&id.to_string()), Some(id));
        assert_eq!(sessions.list().len(), 1);
        h.begin(Role::Publisher, "live/a");
        h.begin(Role::Reader, "live/b");
        assert_eq!(h.info().path(), Some("live/a"));
        assert!(matches!(events.try_recv(), Ok(SessionEvent::Started(s)) if s.id == id));
        assert!(sessions.kick(id));
        h.kicked().await;
        h.info().add_out(10);
        drop(h);
        assert!(sessions.list().is_empty());
        assert!(!sessions.kick(id));
        let Ok(SessionEvent::Ended(s)) = events.try_recv() else { panic!("no end event") };
        assert_eq!(s.reason().as_deref(), Some("kicked"));
        assert_eq!(sessions.stats.ended_bytes_out.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn ids_parse_only_their_own_form() {
        assert_eq!(SessionId::parse("00000000000000ff"), Some(SessionId(255)));
        for bad in ["ff", "", "zzzzzzzzzzzzzzzz", "+000000000000000", "00000000000000ff0"] {
            assert_eq!(SessionId::parse(bad), None, "{bad}");
        }
    }
}
