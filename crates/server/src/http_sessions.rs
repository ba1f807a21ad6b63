//! Sessions of HTTP players that hold no connection: an HLS player (live, or HLS VOD and
//! progressive MP4 playback) asks for a playlist and segments, one request after another,
//! maybe over several connections. Such a player is one session per client address, protocol
//! and path, kept while it keeps asking and ended [`IDLE`] after its last request (MediaMTX
//! does the same for its HLS "muxer readers").
//!
//! A kicked one (`DELETE /api/v1/sessions/ID`) ends at once, and the same client's requests
//! for that path are refused (403) for [`IDLE`]: a player that reloads its playlist every few
//! seconds would otherwise come back as a new session at its next request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::session::{Protocol, Role, SessionHandle, SessionInfo, Sessions};

/// A player that has asked for nothing this long has left.
pub const IDLE: Duration = Duration::from_secs(20);

/// Most such sessions at once; beyond it requests are served without one (the connection
/// limits bound the requests themselves).
pub const MAX_SESSIONS: usize = 65_536;

/// How often ended and kicked sessions are looked for.
const SWEEP: Duration = Duration::from_secs(1);

type Key = (Protocol, IpAddr, String);

struct Entry {
    handle: SessionHandle,
    last: Instant,
}

#[derive(Default)]
struct State {
    open: HashMap<Key, Entry>,
    /// Kicked players, refused until then.
    kicked: HashMap<Key, Instant>,
    sweeping: bool,
}

/// The connectionless players' sessions.
pub struct HttpSessions {
    sessions: Arc<Sessions>,
    state: Mutex<State>,
}

impl std::fmt::Debug for HttpSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSessions").finish_non_exhaustive()
    }
}

/// A request of a kicked player.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kicked;

impl HttpSessions {
    /// Sessions opened in `sessions`.
    pub fn new(sessions: Arc<Sessions>) -> Arc<HttpSessions> {
        Arc::new(HttpSessions { sessions, state: Mutex::new(State::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses a player kicked within [`IDLE`].
    pub fn check(&self, protocol: Protocol, peer: SocketAddr, path: &str) -> Result<(), Kicked> {
        let key = (protocol, peer.ip(), path.to_owned());
        let st = self.lock();
        // Kicked but not yet swept (the sweep runs every second): refused already.
        if st.open.get(&key).is_some_and(|e| e.handle.info().was_kicked()) {
            return Err(Kicked);
        }
        match st.kicked.get(&key) {
            Some(until) if Instant::now() < *until => Err(Kicked),
            _ => Ok(()),
        }
    }

    /// A request of `peer` for `path` was answered: its session (opened now if it had none)
    /// is kept alive and counts `bytes` sent. None when it was kicked, or at the cap.
    pub fn served(
        self: &Arc<Self>,
        protocol: Protocol,
        role: Role,
        peer: SocketAddr,
        path: &str,
        bytes: usize,
    ) -> Option<Arc<SessionInfo>> {
        let key = (protocol, peer.ip(), path.to_owned());
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(e) = st.open.get_mut(&key) {
            if e.handle.info().was_kicked() {
                return None;
            }
            e.last = now;
            e.handle.info().add_out(bytes);
            return Some(e.handle.info().clone());
        }
        if st.open.len() >= MAX_SESSIONS {
            return None;
        }
        let handle = self.sessions.open(protocol, peer);
        handle.begin(role, path);
        handle.info().add_out(bytes);
        let info = handle.info().clone();
        st.open.insert(key, Entry { handle, last: now });
        if !st.sweeping {
            st.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
        Some(info)
    }

    /// Ends idle and kicked sessions; true while any are left to watch.
    fn sweep_once(&self, now: Instant) -> bool {
        let mut st = self.lock();
        let mut kicked = Vec::new();
        st.open.retain(|key, e| {
            if e.handle.info().was_kicked() {
                kicked.push(key.clone());
                return false;
            }
            if now.saturating_duration_since(e.last) >= IDLE {
                e.handle.set_reason("no request within the idle time");
                return false;
            }
            true
        });
        for key in kicked {
            st.kicked.insert(key, now + IDLE);
        }
        st.kicked.retain(|_, until| now < *until);
        let busy = !st.open.is_empty() || !st.kicked.is_empty();
        if !busy {
            st.sweeping = false;
        }
        busy
    }
}

async fn sweep(sessions: Weak<HttpSessions>) {
    loop {
        tokio::time::sleep(SWEEP).await;
        let Some(s) = sessions.upgrade() else { return };
        if !s.sweep_once(Instant::now()) {
            return;
        }
    }
}

/// The recording or file path an HTTP playback URL is for: `/PATH/recording.mp4`,
/// `/PATH/index.m3u8` (with a query), `/PATH/hls/...`, `/vod/NAME.mp4[/...]`.
pub fn playback_path(uri_path: &str) -> Option<&str> {
    let p = uri_path.strip_prefix('/')?;
    if let Some(rest) = p.strip_prefix("vod/") {
        let end = rest.find(".mp4").map(|i| i + 4).unwrap_or(rest.len());
        return Some(&p[..4 + end]);
    }
    for marker in ["/recording.mp4", "/index.m3u8", "/hls/"] {
        if let Some(i) = p.find(marker) {
            return Some(&p[..i]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_session_per_client_and_path_ended_when_idle_or_kicked() {
        let sessions = Sessions::new();
        let http = HttpSessions::new(sessions.clone());
        let a: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let a2: SocketAddr = "192.0.2.1:4001".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:4000".parse().unwrap();
        let s1 = http.served(Protocol::Hls, Role::Reader, a, "live/x", 100).unwrap();
        // Another connection of the same client: the same session.
        let s2 = http.served(Protocol::Hls, Role::Reader, a2, "live/x", 50).unwrap();
        assert_eq!(s1.id, s2.id);
        assert_eq!(s1.bytes_out.load(std::sync::atomic::Ordering::Relaxed), 150);
        let other = http.served(Protocol::Hls, Role::Reader, b, "live/x", 1).unwrap();
        assert_ne!(other.id, s1.id);
        assert_eq!(sessions.list().len(), 2);
        // Kicked: gone at the next sweep, and refused for a while.
        assert!(sessions.kick(s1.id));
        assert!(http.served(Protocol::Hls, Role::Reader, a, "live/x", 1).is_none());
        assert_eq!(http.check(Protocol::Hls, a, "live/x"), Err(Kicked), "refused before the sweep too");
        tokio::time::sleep(SWEEP + Duration::from_millis(10)).await;
        assert!(sessions.get(s1.id).is_none());
        assert_eq!(http.check(Protocol::Hls, a, "live/x"), Err(Kicked));
        assert_eq!(http.check(Protocol::Hls, b, "live/x"), Ok(()));
        // Idle: the other one ends, and the refusal expires.
        tokio::time::sleep(IDLE + SWEEP).await;
        assert!(sessions.list().is_empty());
        assert_eq!(http.check(Protocol::Hls, a, "live/x"), Ok(()));
    }

    #[test]
    fn playback_paths() {
        assert_eq!(playback_path("/cams/a/recording.mp4"), Some("cams/a"));
        assert_eq!(playback_path("/cams/a/index.m3u8"), Some("cams/a"));
        assert_eq!(playback_path("/cams/a/hls/1_2.m4s"), Some("cams/a"));
        assert_eq!(playback_path("/vod/clip.mp4/index.m3u8"), Some("vod/clip.mp4"));
        assert_eq!(playback_path("/vod/clip.mp4"), Some("vod/clip.mp4"));
        assert_eq!(playback_path("/other"), None);
    }
}
