//! Push relays: while a path is live, it is re-published to each URL of its `push` list
//! (`[paths."PATTERN"] push = ["rtmp://host/app/key", "rtsp://host:8554/path"]`).
//!
//! Each target is an ordinary internal hub reader with a task of its own ([`Hub::subscribe_internal`]
//! and a [`Reader`]): a slow target skips to the next keyframe, as a slow player does, and never
//! slows the publisher, the local readers or the other targets. A target that fails (refuses,
//! does not answer in time, closes, stops reading) is retried with [`Backoff`]
//! (`[source] retry_min_ms/retry_max_ms`); the relay stops when the path ends, after its
//! republish grace. [`PushRegistry::status`] says where each target stands.

mod rtmp;
mod rtsp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tracing::{info, warn};

use crate::config::{SourceConfig, ms};
use crate::hub::{Hub, Subscription};
use crate::paths::SharedPaths;
use crate::reader::Reader;
use crate::relay::{Backoff, RelayState, RelayStatus, redact_key};
use crate::session::{Protocol, Role as SessionRole, SessionHandle, SessionInfo};

/// How often a relay waiting for its path's publisher to come back (the republish grace)
/// looks again.
const REPUBLISH_POLL: Duration = Duration::from_millis(200);
/// The window over which a relay's bitrate is measured.
const BITRATE_WINDOW: Duration = Duration::from_secs(2);

/// Why one try of a push failed. Never holds credentials: URLs are redacted.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The URL cannot be used.
    #[error("bad URL {url}: {why}")]
    Url {
        /// The URL, redacted.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The TCP connection failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// A step got no answer in time.
    #[error("no answer to {step} within {timeout:?}")]
    Timeout {
        /// The step (`connect`, `handshake`, `publish`, `ANNOUNCE`...).
        step: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The target refused a step.
    #[error("{step} answered {answer}")]
    Refused {
        /// The step.
        step: String,
        /// The target's answer (a status code, an RTMP status code).
        answer: String,
    },
    /// The target closed the connection.
    #[error("target closed the connection during {step}")]
    Closed {
        /// The step.
        step: String,
    },
    /// The target sent something we could not take.
    #[error("{step}: {why}")]
    Protocol {
        /// The step.
        step: String,
        /// What went wrong.
        why: String,
    },
    /// Reading or writing failed.
    #[error("{step}: {source}")]
    Io {
        /// The step.
        step: String,
        /// The error.
        source: std::io::Error,
    },
    /// The target accepted but stopped reading: a write made no progress for this long.
    #[error("target stopped reading: a write blocked for {0:?}")]
    WriteBlocked(Duration),
    /// The target took media slower than it came, skipping too often.
    #[error("target too slow: it skipped to the next keyframe too often")]
    TooSlow,
    /// The try's session was kicked through the API.
    #[error("the session was kicked through the API")]
    Kicked,
    /// The stream's tracks changed in a way the target's session cannot follow.
    #[error("tracks changed ({0}): reconnecting")]
    TracksChanged(&'static str),
}

/// What a push task needs, shared by its tries.
struct Ctx {
    hub: Arc<Hub>,
    path: String,
    url: String,
    source: SourceConfig,
    /// RTP payload size for RTSP targets (`rtsp.mtu`).
    mtu: usize,
    relay: Arc<Relay>,
    /// The current try's session, once connected (ended when the try ends).
    session: Mutex<Option<SessionHandle>>,
    /// The same session's record, for waiting on a kick.
    connected: tokio::sync::watch::Sender<Option<Arc<SessionInfo>>>,
}

impl Ctx {
    /// Opens the try's session, connected to `peer`.
    fn connected(&self, peer: std::net::SocketAddr) {
        let protocol = if self.url.starts_with("rtmp://") { Protocol::Rtmp } else { Protocol::Rtsp };
        let h = self.hub.sessions.open(protocol, peer);
        info!(path = self.path, session = %h.id(), %peer, "push: connected");
        h.begin(SessionRole::Push, &self.path);
        self.connected.send_replace(Some(h.info().clone()));
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
    }

    /// Ends the try's session, saying why.
    fn disconnected(&self, why: Option<&PushError>) {
        self.connected.send_replace(None);
        if let Some(h) = self.session.lock().unwrap_or_else(|e| e.into_inner()).take()
            && let Some(e) = why
        {
            h.set_reason(e.to_string());
        }
    }

    /// Completes when the try's session is kicked.
    async fn kicked(&self) {
        let mut rx = self.connected.subscribe();
        loop {
            let info = rx.borrow_and_update().clone();
            match info {
                Some(info) => {
                    tokio::select! {
                        _ = info.kicked() => return,
                        r = rx.changed() => if r.is_err() { return std::future::pending().await },
                    }
                }
                None => {
                    if rx.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                }
            }
        }
    }

    /// Counts media bytes written to the target.
    fn sent(&self, bytes: u64) {
        self.relay.sent(bytes);
        if let Some(info) = self.connected.borrow().as_ref() {
            info.bytes_out.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The answer timeout of every step (`source.request_timeout_ms`).
    fn request_timeout(&self) -> Duration {
        ms(self.source.request_timeout_ms)
    }

    /// How long a write may make no progress (`hub.reader_write_timeout_ms`).
    fn write_timeout(&self) -> Duration {
        crate::hub::write_timeout(&self.hub)
    }
}

/// One target's status, updated by its task.
#[derive(Debug)]
struct Relay {
    inner: Mutex<Progress>,
}

#[derive(Debug)]
struct Progress {
    status: RelayStatus,
    window_start: Instant,
    window_bytes: u64,
}

impl Relay {
    fn new(url: &str) -> Relay {
        let status = RelayStatus { url: redact_key(url), ..RelayStatus::default() };
        Relay { inner: Mutex::new(Progress { status, window_start: Instant::now(), window_bytes: 0 }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, state: RelayState) {
        let mut p = self.lock();
        p.status.state = state;
        if state != RelayState::Live {
            p.status.live_since = None;
            p.status.bitrate = 0;
        }
    }

    /// Media flows: the retry count and byte counters start over.
    fn live(&self) {
        let mut p = self.lock();
        p.status.state = RelayState::Live;
        p.status.retries = 0;
        p.status.bytes = 0;
        p.status.bitrate = 0;
        p.status.live_since = Some(crate::utc::format(crate::clock::unix_micros()));
        p.window_start = Instant::now();
        p.window_bytes = 0;
    }

    fn failed(&self, error: &PushError) {
        let mut p = self.lock();
        p.status.state = RelayState::WaitingToRetry;
        p.status.retries += 1;
        p.status.last_error = Some(error.to_string());
        p.status.live_since = None;
        p.status.bitrate = 0;
    }

    /// Counts media bytes written.
    fn sent(&self, bytes: u64) {
        let mut p = self.lock();
        p.status.bytes += bytes;
        p.window_bytes += bytes;
        let elapsed = p.window_start.elapsed();
        if elapsed >= BITRATE_WINDOW {
            p.status.bitrate = (p.window_bytes as f64 * 8.0 / elapsed.as_secs_f64()) as u64;
            p.window_start = Instant::now();
            p.window_bytes = 0;
        }
    }

    fn status(&self) -> RelayStatus {
        let p = self.lock();
        let mut s = p.status.clone();
        // Nothing written for a whole window: the rate is what the open window shows.
        let elapsed = p.window_start.elapsed();
        if s.state == RelayState::Live && elapsed >= 2 * BITRATE_WINDOW {
            s.bitrate = (p.window_bytes as f64 * 8.0 / elapsed.as_secs_f64()) as u64;
        }
        s
    }
}

/// Every path's push relays.
pub struct PushRegistry {
    hub: Arc<Hub>,
    source: SourceConfig,
    /// Read when a stream starts: a reload applies to the next publish.
    paths: SharedPaths,
    mtu: usize,
    /// Running relays by (path, URL as configured).
    relays: Mutex<HashMap<(String, String), Arc<Relay>>>,
}

impl std::fmt::Debug for PushRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushRegistry").field("relays", &self.lock().len()).finish()
    }
}

/// Starts following the hub: each new stream whose path has a `push` list gets a relay task
/// per URL. `mtu` is the RTP payload size for RTSP targets (`rtsp.mtu`).
pub fn start(hub: Arc<Hub>, source: SourceConfig, paths: impl Into<SharedPaths>, mtu: usize) -> Arc<PushRegistry> {
    let paths = paths.into();
    let registry = Arc::new(PushRegistry { hub: hub.clone(), source, paths, mtu, relays: Mutex::new(HashMap::new()) });
    // Followed even with no `push` today: a reload may add one. A stream without costs one
    // table lookup.
    let reg = registry.clone();
    hub.on_new_streams(move |_, path| reg.on_stream(&path));
    registry
}

impl PushRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Relay>>> {
        self.relays.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The push targets of `path` in configuration order, with where each stands (`idle` for a
    /// target whose path is not live). URLs have their credentials hidden.
    pub fn status(&self, path: &str) -> Vec<RelayStatus> {
        let urls = self.paths.get(path).push;
        let relays = self.lock();
        urls.iter()
            .map(|url| match relays.get(&(path.to_owned(), url.clone())) {
                Some(r) => r.status(),
                None => RelayStatus { url: redact_key(url), ..RelayStatus::default() },
            })
            .collect()
    }

    /// The state of every relay running now (metrics; idle targets of paths that are not
    /// live have none).
    pub fn running(&self) -> Vec<RelayState> {
        self.lock().values().map(|r| r.lock().status.state).collect()
    }

    /// After a config reload: every live path gets a relay for each push URL it now lists and
    /// has none running (relays of URLs still listed carry on untouched; one whose URL was
    /// removed ends with its stream).
    pub fn follow_live(self: &Arc<Self>) {
        for path in self.hub.live_paths() {
            self.on_stream(&path);
        }
    }

    /// A new stream: a relay per push URL that has none running (a relay still waiting out
    /// the previous stream of this path carries on with this one).
    fn on_stream(self: &Arc<Self>, path: &str) {
        let urls = self.paths.get(path).push;
        for url in urls {
            let relay = {
                let mut relays = self.lock();
                let key = (path.to_owned(), url.clone());
                if relays.contains_key(&key) {
                    continue;
                }
                let relay = Arc::new(Relay::new(&url));
                relays.insert(key, relay.clone());
                relay
            };
            let ctx = Ctx {
                hub: self.hub.clone(),
                path: path.to_owned(),
                url,
                source: self.source.clone(),
                mtu: self.mtu,
                relay,
                session: Mutex::new(None),
                connected: tokio::sync::watch::channel(None).0,
            };
            let reg = self.clone();
            tokio::spawn(async move { reg.run(ctx).await });
        }
    }

    /// Ends a relay whose path is gone, unless a new stream took the path meanwhile (checked
    /// under the registry's lock, which [`PushRegistry::on_stream`] takes too, so a new stream
    /// is never left without its relay).
    fn finish(&self, ctx: &Ctx) -> bool {
        let mut relays = self.lock();
        if ctx.hub.has_stream(&ctx.path) {
            return false;
        }
        relays.remove(&(ctx.path.clone(), ctx.url.clone()));
        true
    }

    /// A relay's life: a try per publish of the path, retried on failure, until the path ends.
    async fn run(self: Arc<Self>, ctx: Ctx) {
        let url = redact_key(&ctx.url);
        let mut backoff = Backoff::new(ms(ctx.source.retry_min_ms), ms(ctx.source.retry_max_ms));
        info!(path = ctx.path, url, "push: relay started");
        loop {
            let Some(sub) = wait_published(&ctx).await else {
                if self.finish(&ctx) {
                    info!(path = ctx.path, url, "push: path ended, relay stopped");
                    return;
                }
                continue;
            };
            ctx.relay.set_state(RelayState::Connecting);
            let reader = Reader::new(ctx.hub.clone(), sub);
            let mut went_live = false;
            let started = tokio::time::Instant::now();
            let attempt = async {
                if ctx.url.starts_with("rtmp://") {
                    rtmp::run(&ctx, reader, &mut went_live).await
                } else {
                    rtsp::run(&ctx, reader, &mut went_live).await
                }
            };
            // DELETE /api/v1/sessions/ID ends this try; the relay tries again.
            let result = tokio::select! {
                r = attempt => r,
                () = ctx.kicked() => Err(PushError::Kicked),
            };
            ctx.disconnected(result.as_ref().err());
            if went_live && started.elapsed() >= crate::relay::STABLE_LIVE {
                backoff.reset();
            }
            match result {
                Ok(()) => {
                    ctx.relay.set_state(RelayState::Idle);
                    info!(path = ctx.path, url, "push: stream ended");
                }
                Err(e) => {
                    ctx.relay.failed(&e);
                    let delay = backoff.next_delay();
                    warn!(path = ctx.path, url, "push failed: {e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// The path's subscription once it has a publisher; None when the path ended (a path in its
/// republish grace is waited for).
async fn wait_published(ctx: &Ctx) -> Option<Subscription> {
    loop {
        if let Some(sub) = ctx.hub.subscribe_internal(&ctx.path) {
            return Some(sub);
        }
        if !ctx.hub.has_stream(&ctx.path) {
            return None;
        }
        tokio::time::sleep(REPUBLISH_POLL).await;
    }
}

/// The parts of a relay URL: `scheme://[user[:password]@]host[:port]/rest`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// `host:port` to connect to (the default port filled in).
    addr: String,
    /// `host[:port]` as written.
    authority: String,
    /// What follows the authority, from its `/` (query included).
    rest: String,
    /// `user:password`, percent-encoded as written, if any.
    userinfo: Option<String>,
}

impl Target {
    fn parse(url: &str, scheme: &str, default_port: u16) -> Result<Target, PushError> {
        let bad = |why| PushError::Url { url: redact_key(url), why };
        let rest = url.strip_prefix(scheme).and_then(|r| r.strip_prefix("://")).ok_or_else(|| bad("wrong scheme"))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (auth, tail) = rest.split_at(end);
        let (userinfo, authority) = match auth.rfind('@') {
            Some(at) => (Some(auth[..at].to_owned()), &auth[at + 1..]),
            None => (None, auth),
        };
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        // `[::1]:port`, `host:port`, `host`.
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let addr = if has_port { authority.to_owned() } else { format!("{authority}:{default_port}") };
        Ok(Target { addr, authority: authority.to_owned(), rest: tail.to_owned(), userinfo })
    }
}

/// Connects to `addr` within the request timeout.
async fn connect(ctx: &Ctx, addr: &str) -> Result<TcpStream, PushError> {
    let timeout = ctx.request_timeout();
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(PushError::Timeout { step: format!("connect to {addr}"), timeout }),
        Ok(Err(source)) => Err(PushError::Connect { addr: addr.to_owned(), source }),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            if let Ok(peer) = s.peer_addr() {
                ctx.connected(peer);
            }
            Ok(s)
        }
    }
}

/// Writes `bufs` (emptied), failing when one write makes no progress for `timeout` (the
/// target accepted but stopped reading) or, during a negotiation step, with that step.
async fn write_all(
    w: &mut OwnedWriteHalf,
    bufs: &mut Vec<bytes::Bytes>,
    timeout: Duration,
    step: &str,
) -> Result<(), PushError> {
    for b in bufs.drain(..) {
        let mut rest = &b[..];
        while !rest.is_empty() {
            match tokio::time::timeout(timeout, w.write(rest)).await {
                Err(_) => return Err(PushError::WriteBlocked(timeout)),
                Ok(Ok(0)) => return Err(PushError::Closed { step: step.to_owned() }),
                Ok(Ok(n)) => rest = &rest[n..],
                Ok(Err(source)) => return Err(PushError::Io { step: step.to_owned(), source }),
            }
        }
    }
    Ok(())
}

/// Most reader items taken at once before writing: frames that arrived together leave in one
/// write, and the socket's answers are still read between batches.
const BATCH: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_credentials() {
        let t = Target::parse("rtmp://u:p%40ss@host/app/key?token=x", "rtmp", 1935).unwrap();
        assert_eq!(t.addr, "host:1935");
        assert_eq!(t.authority, "host");
        assert_eq!(t.rest, "/app/key?token=x");
        assert_eq!(t.userinfo.as_deref(), Some("u:p%40ss"));
        let t = Target::parse("rtsp://127.0.0.1:8554/live/a", "rtsp", 554).unwrap();
        assert_eq!((t.addr.as_str(), t.rest.as_str(), t.userinfo), ("127.0.0.1:8554", "/live/a", None));
        let t = Target::parse("rtsp://[::1]/x", "rtsp", 554).unwrap();
        assert_eq!(t.addr, "[::1]:554");
        let e = Target::parse("rtsp://a:secret@/x", "rtsp", 554).unwrap_err().to_string();
        assert!(e.contains("no host") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn relay_status_counts_retries_until_live() {
        let r = Relay::new("rtmp://user:pw@h/app/k");
        assert_eq!(r.status().url, "rtmp://***@h/app/***");
        r.failed(&PushError::Refused { step: "publish".into(), answer: "NetStream.Publish.BadName".into() });
        r.failed(&PushError::Closed { step: "connect".into() });
        let s = r.status();
        assert_eq!((s.state, s.retries), (RelayState::WaitingToRetry, 2));
        assert_eq!(s.last_error.as_deref(), Some("target closed the connection during connect"));
        r.live();
        r.sent(1000);
        let s = r.status();
        assert_eq!((s.state, s.retries, s.bytes), (RelayState::Live, 0, 1000));
        assert!(s.live_since.is_some());
    }
}
