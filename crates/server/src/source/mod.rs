//! Pulled sources: a path whose stream comes from a camera or another server
//! (`[paths."PATH"] source = "rtsp://..." | "rtmp://..."`) instead of a publisher.
//!
//! The manager ([`Sources`]) keeps one [`Entry`] per such path and one task that runs its
//! source while it is wanted:
//! - **On demand** (the default): idle until a reader arrives ([`crate::hub::Demand`]); then
//!   it connects, and readers wait up to `source_start_timeout_ms` for it. Once the last
//!   reader has left (or, for HLS, the last request came) `source_close_after_ms` ago, it
//!   stops (TEARDOWN, then the connection closes). A reader arriving meanwhile cancels that.
//! - **Always on** (`source_on_demand = false`, or a path that records or pushes): from
//!   startup.
//! - A failed try is retried after [`Backoff`] (`source.retry_min_ms`..`retry_max_ms`); the
//!   hub's republish grace keeps readers through a short drop.
//!
//! A path's source is a list of candidate URLs tried in order at each try ([`Settings::
//! candidates`]): today the path's `source`; an edge adds its origins the same way.
//!
//! The drivers ([`rtsp`], [`rtmp`]) are thin tokio loops around the sans-IO clients; they
//! give the media to the hub exactly as a publisher of the same protocol does. The same
//! drivers serve [`probe`], against a private hub.

pub mod rtmp;
pub mod rtsp;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{Config, EdgeConfig, SourceConfig, ms};
use crate::hub::{Demand, Hub};
use crate::paths::SourceTransport;
use crate::relay::{Backoff, RelayState, RelayStatus, redact};
use crate::session::{Protocol, Role as SessionRole, SessionHandle};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Why one try of a source failed: the step (`connect`, `DESCRIBE`, `SETUP`, `PLAY`,
/// `play`, `media`, ...), the peer's status when it answered one, and a message that says
/// both (credentials never in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// The step that failed.
    pub step: String,
    /// The peer's status code, when it answered with one.
    pub status: Option<u16>,
    /// What failed, e.g. `DESCRIBE answered 404 Not Found`.
    pub message: String,
}

impl SourceError {
    /// A failure of `step` described by `message`.
    pub fn new(step: &str, message: impl Into<String>) -> SourceError {
        SourceError { step: step.to_owned(), status: None, message: message.into() }
    }

    /// The peer answered `step` with `status`; `detail` adds what it said, if anything.
    pub fn answered(step: &str, status: u16, detail: Option<&str>) -> SourceError {
        let mut message = format!("{step} answered {status} {}", ferrocast_rtsp::message::reason(status));
        if let Some(d) = detail.filter(|d| !d.is_empty()) {
            message = format!("{message} ({d})");
        }
        SourceError { step: step.to_owned(), status: Some(status), message }
    }
}

/// A path's source settings, resolved from `[paths]` over `[source]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// URLs tried in order at each try (with their credentials).
    pub candidates: Vec<String>,
    /// Started by readers and stopped after them; false: always on.
    pub on_demand: bool,
    /// How an RTSP source carries RTP.
    pub transport: SourceTransport,
    /// How long readers wait for the source to go live.
    pub start_timeout: Duration,
    /// How long the source stays up after its last reader left.
    pub close_after: Duration,
}

impl Settings {
    /// The settings of `path` when it has a `source`. A path that records or pushes is
    /// always on.
    pub fn resolve(config: &Config, path: &str) -> Option<Settings> {
        let p = config.paths.get(path);
        let url = p.source.clone()?;
        Some(Settings {
            candidates: vec![url],
            on_demand: p.source_on_demand.unwrap_or(true) && !p.record && p.push.is_empty(),
            transport: p.source_transport.unwrap_or_default(),
            start_timeout: ms(p.source_start_timeout_ms.unwrap_or(config.source.start_timeout_ms)),
            close_after: ms(p.source_close_after_ms.unwrap_or(config.source.close_after_ms)),
        })
    }
}

/// What a try reports as it goes, and what the status shows: shared between a driver and
/// the manager (or a probe).
#[derive(Debug, Default)]
pub struct Report {
    /// Media bytes received.
    pub bytes: AtomicU64,
    /// Frames given to the hub.
    pub frames: Arc<AtomicU64>,
    /// RTP packets lost (the receiver reports' cumulative counts, summed over tracks).
    pub packets_lost: AtomicU64,
    info: Mutex<Info>,
    /// The address of the camera or server of the current try, once connected (the peer of
    /// the source's session).
    peer: Mutex<Option<std::net::SocketAddr>>,
}

/// The slowly changing part of a [`Report`].
#[derive(Debug, Default, Clone)]
struct Info {
    state: RelayState,
    /// The candidate being tried, redacted.
    url: String,
    retries: u64,
    last_error: Option<String>,
    /// When the source went live: monotonic, and as RFC 3339.
    live_since: Option<(Instant, String)>,
    transport: Option<&'static str>,
    transport_reason: Option<String>,
    auth: Option<String>,
    sdp: Option<String>,
    /// (when, bytes then) for the bitrate, and the last bitrate computed.
    rate: Option<(Instant, u64)>,
    bitrate: u64,
}

impl Report {
    fn info(&self) -> std::sync::MutexGuard<'_, Info> {
        lock(&self.info)
    }

    /// The try is connected to `peer`.
    pub fn set_peer(&self, peer: std::net::SocketAddr) {
        *lock(&self.peer) = Some(peer);
    }

    /// The address the current try is connected to.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        *lock(&self.peer)
    }

    /// The transport in use (`udp`, `tcp`, `multicast`, `rtmp`) and why it was chosen.
    pub fn set_transport(&self, transport: &'static str, reason: impl Into<String>) {
        let mut i = self.info();
        i.transport = Some(transport);
        i.transport_reason = Some(reason.into());
    }

    /// The authentication scheme that worked (`basic`, `digest-md5`, `digest-sha256`).
    pub fn set_auth(&self, auth: Option<String>) {
        self.info().auth = auth;
    }

    /// The session description the source gave.
    pub fn set_sdp(&self, sdp: String) {
        // Cameras echo their URL, credentials included, in the SDP: never shown.
        let sdp = crate::relay::redact_urls_in(&sdp);
        self.info().sdp = Some(sdp);
    }

    /// Media flows: the source is live (once per try).
    pub fn live(&self) {
        let mut i = self.info();
        if i.state != RelayState::Live {
            i.state = RelayState::Live;
            i.retries = 0;
            i.live_since = Some((Instant::now(), crate::utc::format(crate::clock::unix_micros())));
            i.rate = Some((Instant::now(), self.bytes.load(Ordering::Relaxed)));
        }
    }

    /// Whether the try went live.
    pub fn is_live(&self) -> bool {
        self.info().state == RelayState::Live
    }

    /// When the try went live.
    pub fn live_at(&self) -> Option<Instant> {
        self.info().live_since.as_ref().map(|l| l.0)
    }

    fn set_state(&self, state: RelayState) {
        let mut i = self.info();
        i.state = state;
        if state != RelayState::Live {
            i.live_since = None;
            i.bitrate = 0;
            i.rate = None;
        }
    }

    /// The status as the API shows it.
    pub fn relay_status(&self) -> RelayStatus {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let mut i = self.info();
        let now = Instant::now();
        if let Some((at, b)) = i.rate {
            let span = now.saturating_duration_since(at);
            if span >= Duration::from_secs(1) {
                i.bitrate = ((bytes.saturating_sub(b)) as f64 * 8.0 / span.as_secs_f64()) as u64;
                i.rate = Some((now, bytes));
            }
        }
        RelayStatus {
            url: i.url.clone(),
            state: i.state,
            retries: i.retries,
            last_error: i.last_error.clone(),
            live_since: i.live_since.as_ref().map(|l| l.1.clone()),
            bytes,
            bitrate: i.bitrate,
        }
    }
}

/// One try of a source: what a driver needs.
pub struct Attempt<'a> {
    /// The URL, with its credentials (never logged: use [`Attempt::redacted`]).
    pub url: &'a str,
    /// The path the media goes to in `hub`.
    pub path: &'a str,
    /// Where the media goes.
    pub hub: &'a Arc<Hub>,
    /// Timeouts.
    pub config: &'a SourceConfig,
    /// How an RTSP source carries RTP.
    pub transport: SourceTransport,
    /// Where the try reports.
    pub report: &'a Report,
    /// `auto` fell back to TCP for this source before: start there.
    pub prefer_tcp: &'a AtomicBool,
}

impl Attempt<'_> {
    /// The URL, credentials hidden.
    pub fn redacted(&self) -> String {
        redact(self.url)
    }
}

/// Runs one try of `url` until it fails or `stop` turns true (then ends it cleanly).
pub async fn run_attempt(a: &Attempt<'_>, stop: &mut watch::Receiver<bool>) -> Result<(), SourceError> {
    if a.url.starts_with("rtmp://") {
        rtmp::run(a, stop).await
    } else if a.url.starts_with("rtsp://") {
        rtsp::run(a, stop).await
    } else {
        Err(SourceError::new("url", format!("{}: not rtsp:// or rtmp://", a.redacted())))
    }
}

/// The status of a path's source, as the API shows it: [`RelayStatus`] and what a pulled
/// source adds.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// URL, state, retries, last error, uptime, bytes, bitrate.
    #[serde(flatten)]
    pub relay: RelayStatus,
    /// Started by readers, stopped after them.
    pub on_demand: bool,
    /// `udp`, `tcp`, `multicast` or `rtmp` while connected; None before.
    pub transport: Option<&'static str>,
    /// The authentication scheme that worked (`basic`, `digest-md5`, `digest-sha256`).
    pub auth: Option<String>,
    /// Frames given to the hub since the server started.
    pub frames: u64,
    /// RTP packets lost (RTCP receiver-report counts); 0 for RTMP.
    pub packets_lost: u64,
    /// An edge pull from `[edge] origin` rather than a configured `source`.
    pub edge: bool,
}

/// One path's source.
#[derive(Debug)]
pub struct Entry {
    path: String,
    settings: Settings,
    demand: Arc<Demand>,
    report: Report,
    /// `auto` fell back to TCP once: later tries start there.
    prefer_tcp: AtomicBool,
    /// An edge pull (from `[edge] origin`), not a configured source.
    edge: bool,
    /// The counters of all sources.
    stats: Arc<SourceStats>,
}

/// Counters of the pulled sources (metrics).
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Tries that failed or ended (a live source that dropped included), each followed by
    /// another: what the status's `retries` counts, never reset.
    pub reconnects: AtomicU64,
}

impl Entry {
    fn new(path: &str, settings: Settings, stats: Arc<SourceStats>) -> Arc<Entry> {
        let report = Report::default();
        report.info().url = settings.candidates.first().map(|u| redact(u)).unwrap_or_default();
        Arc::new(Entry {
            path: path.to_owned(),
            settings,
            demand: Demand::new(),
            report,
            prefer_tcp: AtomicBool::new(false),
            edge: false,
            stats,
        })
    }

    /// The status now.
    pub fn status(&self) -> SourceStatus {
        let i = self.report.info().clone();
        SourceStatus {
            relay: self.report.relay_status(),
            on_demand: self.settings.on_demand,
            transport: i.transport.filter(|_| i.state == RelayState::Live || i.state == RelayState::Connecting),
            auth: i.auth,
            frames: self.report.frames.load(Ordering::Relaxed),
            packets_lost: self.report.packets_lost.load(Ordering::Relaxed),
            edge: self.edge,
        }
    }

    /// Whether the source is wanted now.
    fn wanted(&self) -> bool {
        !self.settings.on_demand || self.demand.get().wanted(Instant::now(), self.settings.close_after)
    }

    /// Waits until the source is wanted.
    async fn until_wanted(&self) {
        let mut rx = self.demand.watch();
        loop {
            if self.wanted() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until the source is no longer wanted: no reader for `close_after` (never for an
    /// always-on source).
    async fn until_unwanted(&self) {
        if !self.settings.on_demand {
            return std::future::pending().await;
        }
        let mut rx = self.demand.watch();
        loop {
            let d = *rx.borrow_and_update();
            let deadline = match (d.readers, d.last_wanted) {
                (0, Some(t)) => t + self.settings.close_after,
                (0, None) => Instant::now(),
                _ => {
                    if rx.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                    continue;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    if !self.wanted() {
                        return;
                    }
                }
                r = rx.changed() => {
                    if r.is_err() {
                        return std::future::pending().await;
                    }
                }
            }
        }
    }
}

/// The server's pulled sources.
#[derive(Debug)]
pub struct Sources {
    hub: Arc<Hub>,
    config: SourceConfig,
    /// Configured sources, and the edge's pulls while they run.
    entries: Arc<Mutex<HashMap<String, Arc<Entry>>>>,
    /// `[edge]`: origins to pull any other path from.
    edge: EdgeConfig,
    /// This server's id in the chains of edge pulls ([`crate::edge`]).
    id: String,
    /// Most edge pulls at once (`limits.max_streams`): each request for an unknown path on
    /// an edge starts one, so they are capped like published streams.
    max_edge_pulls: usize,
    /// Counters.
    pub stats: Arc<SourceStats>,
    /// The tasks of configured sources, to stop one that a config reload removes or changes.
    tasks: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

impl Sources {
    /// The sources of every path of `config` that has one, each started when it is wanted
    /// (always-on ones at once); the hub learns of them.
    pub fn start(hub: Arc<Hub>, config: &Config) -> Arc<Sources> {
        let mut entries = HashMap::new();
        let stats = Arc::new(SourceStats::default());
        for (key, _) in config.paths.entries() {
            if let Some(settings) = Settings::resolve(config, key) {
                entries.insert(key.to_owned(), Entry::new(key, settings, stats.clone()));
            }
        }
        let sources = Arc::new(Sources {
            hub: hub.clone(),
            config: config.source.clone(),
            entries: Arc::new(Mutex::new(entries)),
            edge: config.edge.clone(),
            id: crate::edge::new_server_id(),
            max_edge_pulls: config.limits.max_streams,
            stats,
            tasks: Mutex::new(HashMap::new()),
        });
        let weak: Weak<dyn crate::hub::Sources> = Arc::downgrade(&(sources.clone() as Arc<dyn crate::hub::Sources>));
        hub.set_sources(weak);
        let entries: Vec<Arc<Entry>> = lock(&sources.entries).values().cloned().collect();
        for entry in entries {
            sources.spawn_entry(entry);
        }
        sources
    }

    fn spawn_entry(&self, entry: Arc<Entry>) {
        let path = entry.path.clone();
        let task = tokio::spawn(run_entry(self.hub.clone(), self.config.clone(), entry));
        if let Some(old) = lock(&self.tasks).insert(path, task.abort_handle()) {
            old.abort();
        }
    }

    /// Applies the `[paths]` of a reloaded configuration: a path given a source starts
    /// pulling (always-on ones at once), a source removed stops (its path unpublished), a
    /// source whose settings changed starts again with them; unchanged ones are untouched.
    /// `[source]` itself (timeouts, retry delays) is read at start only. Gives the paths
    /// started and stopped.
    pub fn apply(&self, config: &Config) -> (Vec<String>, Vec<String>) {
        let mut wanted = HashMap::new();
        for (key, _) in config.paths.entries() {
            if let Some(mut settings) = Settings::resolve(config, key) {
                // Timeouts from `[source]` stay as started (a restart applies them).
                if config.paths.get(key).source_start_timeout_ms.is_none() {
                    settings.start_timeout = ms(self.config.start_timeout_ms);
                }
                if config.paths.get(key).source_close_after_ms.is_none() {
                    settings.close_after = ms(self.config.close_after_ms);
                }
                wanted.insert(key.to_owned(), settings);
            }
        }
        let (mut started, mut stopped) = (Vec::new(), Vec::new());
        let mut entries = lock(&self.entries);
        let gone: Vec<String> = entries
            .iter()
            .filter(|(p, e)| !e.edge && wanted.get(*p).is_none_or(|s| *s != e.settings))
            .map(|(p, _)| p.clone())
            .collect();
        for path in gone {
            entries.remove(&path);
            if let Some(task) = lock(&self.tasks).remove(&path) {
                task.abort();
            }
            info!(path, "source: stopped (config reloaded)");
            stopped.push(path);
        }
        let mut new = Vec::new();
        for (path, settings) in wanted {
            match entries.get(&path) {
                Some(e) if e.edge => {
                    warn!(path, "source: an edge pull of this path runs; the configured source waits for a restart")
                }
                Some(_) => {}
                None => {
                    let entry = Entry::new(&path, settings, self.stats.clone());
                    entries.insert(path.clone(), entry.clone());
                    new.push(entry);
                    started.push(path);
                }
            }
        }
        drop(entries);
        for entry in new {
            info!(path = entry.path, "source: added (config reloaded)");
            self.spawn_entry(entry);
        }
        started.sort();
        stopped.sort();
        (started, stopped)
    }

    /// This server's id in the chains of edge pulls.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts an edge pull of `path` from the origins for a reader whose request came
    /// through `via`: None when the server is no edge, the path is published here, invalid,
    /// or the edge pulls its maximum of paths already.
    fn edge_pull(&self, path: &str, via: &[String]) -> Option<Arc<Demand>> {
        if self.edge.origin.is_empty() || self.hub.is_published(path) || crate::path::validate(path).is_err() {
            return None;
        }
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.get(path) {
            return Some(e.demand.clone());
        }
        if entries.values().filter(|e| e.edge).count() >= self.max_edge_pulls {
            warn!(path, "edge: not pulling: {} paths are pulled already (limits.max_streams)", self.max_edge_pulls);
            return None;
        }
        let settings = Settings {
            candidates: crate::edge::origin_urls(&self.edge.origin, path, via, &self.id),
            on_demand: true,
            // Server to server: TCP, as reliable as the origin's link and no UDP ports.
            transport: SourceTransport::Tcp,
            start_timeout: ms(self.config.start_timeout_ms),
            close_after: ms(self.config.close_after_ms),
        };
        let mut entry = Entry::new(path, settings, self.stats.clone());
        if let Some(e) = Arc::get_mut(&mut entry) {
            e.edge = true;
        }
        entries.insert(path.to_owned(), entry.clone());
        drop(entries);
        info!(path, via = via.len(), "edge: pulling from the origins");
        tokio::spawn(run_edge_entry(self.hub.clone(), self.config.clone(), entry.clone(), self.entries.clone()));
        Some(entry.demand.clone())
    }

    /// The entry of `path`: a configured source, or an edge pull while it runs.
    pub fn entry(&self, path: &str) -> Option<Arc<Entry>> {
        lock(&self.entries).get(path).cloned()
    }

    /// Paths that have a source, sorted.
    pub fn paths(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.entries).keys().cloned().collect();
        v.sort();
        v
    }

    /// The status of `path`'s source.
    pub fn status(&self, path: &str) -> Option<SourceStatus> {
        self.entry(path).map(|e| e.status())
    }

    /// The hub the sources publish into.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

impl crate::hub::Sources for Sources {
    fn demand(&self, path: &str) -> Option<Arc<Demand>> {
        self.entry(path).map(|e| e.demand.clone())
    }

    fn start_timeout(&self, path: &str) -> Duration {
        self.entry(path).map_or(ms(self.config.start_timeout_ms), |e| e.settings.start_timeout)
    }

    fn last_error(&self, path: &str) -> Option<String> {
        self.entry(path)?.report.info().last_error.clone()
    }

    fn want(&self, path: &str, via: &[String]) -> Option<Arc<Demand>> {
        self.demand(path).or_else(|| self.edge_pull(path, via))
    }

    fn check_via(&self, via: &[String]) -> Result<(), crate::edge::Refused> {
        crate::edge::check_via(via, &self.id, self.edge.max_hops)
    }
}

/// Runs an edge pull while it is wanted, then forgets it (unless a reader came back in
/// between), so an edge holds entries only for the paths it serves.
async fn run_edge_entry(
    hub: Arc<Hub>,
    config: SourceConfig,
    entry: Arc<Entry>,
    entries: Arc<Mutex<HashMap<String, Arc<Entry>>>>,
) {
    let path = entry.path.as_str();
    loop {
        entry.until_wanted().await;
        run_wanted(&hub, &config, &entry).await;
        entry.report.set_state(RelayState::Idle);
        let mut all = lock(&entries);
        // A reader that was given the demand (`want`) but has not held it yet counts: it is
        // about to (the entry's own reference is the one other than this task's).
        if entry.wanted() || Arc::strong_count(&entry.demand) > 1 {
            continue;
        }
        if all.get(path).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
            all.remove(path);
        }
        info!(path, "edge: pull stopped (no reader for {:?})", entry.settings.close_after);
        return;
    }
}

/// Runs `entry`'s source whenever it is wanted, for the server's life.
async fn run_entry(hub: Arc<Hub>, config: SourceConfig, entry: Arc<Entry>) {
    let path = entry.path.as_str();
    loop {
        entry.until_wanted().await;
        info!(path, url = entry.report.info().url, on_demand = entry.settings.on_demand, "source: starting");
        run_wanted(&hub, &config, &entry).await;
        entry.report.set_state(RelayState::Idle);
        info!(path, "source: stopped (no reader for {:?})", entry.settings.close_after);
    }
}

/// How often a source's session takes the bytes its try received.
const SESSION_SYNC: Duration = Duration::from_millis(500);

/// Brings a source session's `bytes_in` up to the try's media bytes.
fn sync_session(sess: &Option<SessionHandle>, report: &Report, base: u64) {
    if let Some(h) = sess {
        let bytes = report.bytes.load(Ordering::Relaxed).saturating_sub(base);
        h.info().bytes_in.store(bytes, Ordering::Relaxed);
    }
}

/// Tries the source until it is no longer wanted.
async fn run_wanted(hub: &Arc<Hub>, config: &SourceConfig, entry: &Entry) {
    let path = entry.path.as_str();
    let mut backoff = Backoff::new(ms(config.retry_min_ms), ms(config.retry_max_ms));
    let mut attempt_no: u64 = 0;
    let mut last_logged: Option<String> = None;
    loop {
        let mut failure = None;
        for url in &entry.settings.candidates {
            {
                let mut i = entry.report.info();
                i.url = redact(url);
                i.transport = None;
            }
            entry.report.set_state(RelayState::Connecting);
            let attempt = Attempt {
                url,
                path,
                hub,
                config,
                transport: entry.settings.transport,
                report: &entry.report,
                prefer_tcp: &entry.prefer_tcp,
            };
            *lock(&entry.report.peer) = None;
            let (stop_tx, mut stop_rx) = watch::channel(false);
            let run = run_attempt(&attempt, &mut stop_rx);
            tokio::pin!(run);
            // The try's session: opened once it is connected (its peer is the camera's or
            // server's address), its bytes the media bytes received, brought up to date
            // every SESSION_SYNC.
            let mut sess: Option<SessionHandle> = None;
            let base = entry.report.bytes.load(Ordering::Relaxed);
            let mut sync = tokio::time::interval(SESSION_SYNC);
            let stop_within = ms(config.request_timeout_ms) + Duration::from_secs(1);
            let result = loop {
                tokio::select! {
                    r = &mut run => break r,
                    () = entry.until_unwanted() => {
                        let _ = stop_tx.send(true);
                        // The driver ends its session (TEARDOWN); a peer that does not answer
                        // does not hold it up for longer than a request.
                        let _ = tokio::time::timeout(stop_within, &mut run).await;
                        sync_session(&sess, &entry.report, base);
                        return;
                    }
                    _ = sync.tick() => {
                        if sess.is_none() && let Some(peer) = entry.report.peer() {
                            let protocol = if url.starts_with("rtmp://") { Protocol::Rtmp } else { Protocol::Rtsp };
                            let h = hub.sessions.open(protocol, peer);
                            info!(path, session = %h.id(), peer = %peer, "source: connected");
                            h.begin(SessionRole::Source, path);
                            sess = Some(h);
                        }
                        sync_session(&sess, &entry.report, base);
                    }
                    // DELETE /api/v1/sessions/ID: this try ends; the source tries again.
                    _ = async { sess.as_ref().expect("guarded").kicked().await }, if sess.is_some() => {
                        let _ = stop_tx.send(true);
                        let _ = tokio::time::timeout(stop_within, &mut run).await;
                        break Err(SourceError::new("media", "the session was kicked through the API"));
                    }
                }
            };
            sync_session(&sess, &entry.report, base);
            if let (Some(h), Err(e)) = (&sess, &result) {
                h.set_reason(e.message.clone());
            }
            drop(sess);
            let was_live = entry.report.is_live();
            if was_live && entry.report.live_at().is_some_and(|t| t.elapsed() >= crate::relay::STABLE_LIVE) {
                backoff.reset();
            }
            let e = match result {
                Ok(()) => SourceError::new("media", "the source ended the stream"),
                Err(e) => e,
            };
            failure = Some(e);
            if was_live {
                // A source that was live is retried at once, from its first candidate.
                break;
            }
        }
        let Some(e) = failure else { continue };
        attempt_no += 1;
        let delay = backoff.next_delay();
        {
            let mut i = entry.report.info();
            i.retries += 1;
            i.last_error = Some(e.message.clone());
        }
        entry.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        entry.report.set_state(RelayState::WaitingToRetry);
        let url = entry.report.info().url.clone();
        if last_logged.as_deref() != Some(e.message.as_str()) {
            warn!(path, url, "source: {e}; retrying in {:.1} s (attempt {attempt_no})", delay.as_secs_f64());
            last_logged = Some(e.message.clone());
        } else {
            debug!(path, url, "source: {e}; retrying in {:.1} s (attempt {attempt_no})", delay.as_secs_f64());
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            () = entry.until_unwanted() => return,
        }
    }
}

/// Most probes at once: each makes the server connect somewhere and holds a connection up
/// to the start timeout.
pub const MAX_PROBES: usize = 4;

/// What a probe found.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeTrack {
    /// `video` or `audio`.
    pub kind: &'static str,
    /// `H264`, `H265`, `AAC`, `Opus`, `PCMU`, ...
    pub codec: String,
    /// Video: picture size, when its parameter sets tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Video: picture size, when its parameter sets tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Video: the RTP clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_rate: Option<u32>,
    /// Audio: samples per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    /// Audio: channels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
}

pub(crate) fn probe_track(t: &ferrocast_media::TrackInfo) -> ProbeTrack {
    use ferrocast_media::{TrackInfo, VideoCodec};
    match t {
        TrackInfo::Video { codec, config, clock_rate } => {
            let dims = match codec {
                VideoCodec::H264 => ferrocast_media::h264::AvcConfig::parse(config)
                    .ok()
                    .and_then(|c| ferrocast_media::h264::sps_dimensions(c.sps.first()?).ok()),
                VideoCodec::H265 => ferrocast_media::h265::HevcConfig::parse(config).ok().and_then(|c| {
                    let s = ferrocast_media::h265::parse_sps(c.sps.first()?).ok()?;
                    Some((s.width, s.height))
                }),
            };
            ProbeTrack {
                kind: "video",
                codec: format!("{codec:?}").to_uppercase(),
                width: dims.map(|d| d.0),
                height: dims.map(|d| d.1),
                clock_rate: Some(*clock_rate),
                sample_rate: None,
                channels: None,
            }
        }
        TrackInfo::Audio { codec, sample_rate, channels, .. } => ProbeTrack {
            kind: "audio",
            codec: match codec {
                ferrocast_media::AudioCodec::Aac => "AAC".to_owned(),
                other => format!("{other:?}").to_uppercase(),
            },
            width: None,
            height: None,
            clock_rate: None,
            sample_rate: Some(*sample_rate),
            channels: Some(*channels),
        },
    }
}

/// The answer of a probe: what [`probe`] found, or where it failed.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ProbeResult {
    /// Media came.
    Ok {
        /// Always true.
        ok: bool,
        /// The URL, credentials hidden.
        url: String,
        /// The session description (RTSP), if any.
        sdp: Option<String>,
        /// The tracks.
        tracks: Vec<ProbeTrack>,
        /// The authentication scheme that worked.
        auth: Option<String>,
        /// `udp`, `tcp`, `multicast`, `rtmp`.
        transport: Option<&'static str>,
        /// Why that transport.
        transport_reason: Option<String>,
        /// From the connect to the first keyframe (the first frame, without video), in ms.
        first_keyframe_ms: f64,
    },
    /// It failed.
    Failed {
        /// Always false.
        ok: bool,
        /// The URL, credentials hidden.
        url: String,
        /// The step that failed.
        step: String,
        /// The peer's status, when it answered.
        status: Option<u16>,
        /// What failed.
        error: String,
    },
}

/// Connects once to `url` (`auto` transport), waits for the first keyframe (at most the start
/// timeout), and reports what it found. Uses a private hub: the server's streams are not
/// touched.
pub async fn probe(config: &SourceConfig, url: &str) -> ProbeResult {
    let hub = Hub::new(crate::config::HubConfig { republish_grace_ms: 0, ..Default::default() });
    let report = Report::default();
    let prefer_tcp = AtomicBool::new(false);
    let path = "probe/source";
    let started = Instant::now();
    let deadline = started + ms(config.start_timeout_ms);
    let attempt = Attempt {
        url,
        path,
        hub: &hub,
        config,
        transport: SourceTransport::Auto,
        report: &report,
        prefer_tcp: &prefer_tcp,
    };
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let run = run_attempt(&attempt, &mut stop_rx);
    tokio::pin!(run);
    let failed = |e: SourceError| ProbeResult::Failed {
        ok: false,
        url: redact(url),
        step: e.step,
        status: e.status,
        error: e.message,
    };
    let watch_media = async {
        // Each publish of the try (auto's UDP session, then its TCP one) in turn.
        loop {
            if !hub.wait_published(path, deadline.saturating_duration_since(Instant::now())).await {
                return None;
            }
            let Some(sub) = hub.subscribe_internal(path) else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let mut reader = crate::reader::Reader::new(hub.clone(), sub);
            loop {
                match tokio::time::timeout_at(deadline, reader.next()).await.ok()? {
                    crate::reader::ReaderItem::Frame(f) => {
                        let current = hub
                            .subscribe_internal(path)
                            .map(|s| s.current_tracks())
                            .unwrap_or_else(|| reader.initial_tracks().clone());
                        if current.video.is_none() || (f.kind == ferrocast_media::TrackKind::Video && f.keyframe) {
                            return Some((current, started.elapsed()));
                        }
                    }
                    crate::reader::ReaderItem::Ended | crate::reader::ReaderItem::TooSlow => break,
                    _ => {}
                }
            }
        }
    };
    let outcome = tokio::select! {
        r = &mut run => Err(match r {
            Ok(()) => SourceError::new("media", "the source ended the stream"),
            Err(e) => e,
        }),
        found = watch_media => found.ok_or_else(|| {
            SourceError::new("media", format!("no keyframe within {:.1} s", ms(config.start_timeout_ms).as_secs_f64()))
        }),
    };
    let (tracks, elapsed) = match outcome {
        Ok(found) => found,
        Err(e) => return failed(e),
    };
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(ms(config.request_timeout_ms), &mut run).await;
    let i = report.info().clone();
    let tracks = [tracks.video.as_ref(), tracks.audio.as_ref()].into_iter().flatten().map(probe_track).collect();
    ProbeResult::Ok {
        ok: true,
        url: redact(url),
        sdp: i.sdp,
        tracks,
        auth: i.auth,
        transport: i.transport,
        transport_reason: i.transport_reason,
        first_keyframe_ms: (elapsed.as_secs_f64() * 10_000.0).round() / 10.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::DemandState;

    fn entry(on_demand: bool, close_after_ms: u64) -> Arc<Entry> {
        Entry::new(
            "cams/a",
            Settings {
                candidates: vec!["rtsp://u:p@cam/x".into()],
                on_demand,
                transport: SourceTransport::Auto,
                start_timeout: Duration::from_secs(5),
                close_after: ms(close_after_ms),
            },
            Arc::default(),
        )
    }

    #[test]
    fn settings_resolve_per_path_over_source() {
        let config: Config = toml::from_str(
            r#"
            [source]
            close_after_ms = 1234
            [paths."cams/a"]
            source = "rtsp://cam/a"
            source_transport = "tcp"
            source_start_timeout_ms = 77
            [paths."cams/rec"]
            source = "rtsp://cam/b"
            record = true
            [paths."cams/push"]
            source = "rtmp://origin/live/c"
            push = ["rtmp://cdn/live/c"]
            [paths."cams/off"]
            source = "rtsp://cam/d"
            source_on_demand = false
            "#,
        )
        .unwrap();
        let a = Settings::resolve(&config, "cams/a").unwrap();
        assert_eq!(a.transport, SourceTransport::Tcp);
        assert_eq!((a.start_timeout, a.close_after), (ms(77), ms(1234)));
        assert!(a.on_demand);
        for always in ["cams/rec", "cams/push", "cams/off"] {
            assert!(!Settings::resolve(&config, always).unwrap().on_demand, "{always}");
        }
        assert!(Settings::resolve(&config, "cams/none").is_none());
    }

    #[test]
    fn demand_is_wanted_while_held_and_for_close_after() {
        let now = Instant::now();
        let linger = Duration::from_secs(10);
        assert!(!DemandState::default().wanted(now, linger));
        assert!(DemandState { readers: 1, last_wanted: None }.wanted(now, linger));
        let left = DemandState { readers: 0, last_wanted: Some(now) };
        assert!(left.wanted(now + Duration::from_secs(9), linger));
        assert!(!left.wanted(now + Duration::from_secs(10), linger));
    }

    /// The close rule on tokio's paused clock: the source is wanted when a reader comes,
    /// stays wanted `close_after` after the last leaves, and a reader arriving meanwhile
    /// cancels the stop.
    #[tokio::test(start_paused = true)]
    async fn stops_close_after_the_last_reader_and_a_new_reader_cancels() {
        let e = entry(true, 1000);
        assert!(!e.wanted());
        let woke = {
            let e = e.clone();
            tokio::spawn(async move { e.until_wanted().await })
        };
        tokio::task::yield_now().await;
        assert!(!woke.is_finished());
        let a = e.demand.hold();
        let b = e.demand.hold();
        woke.await.unwrap();
        let start = Instant::now();
        let stopper = {
            let e = e.clone();
            tokio::spawn(async move {
                e.until_unwanted().await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(a);
        drop(b);
        // Half-way through close_after a reader comes and goes: the stop moves.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let c = e.demand.hold();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(c);
        let stopped = stopper.await.unwrap();
        assert_eq!(stopped - start, Duration::from_millis(1200 + 1000));
        assert!(!e.wanted());
    }

    /// HLS touches keep the source wanted like a reader that comes and goes.
    #[tokio::test(start_paused = true)]
    async fn touches_keep_it_wanted() {
        let e = entry(true, 1000);
        e.demand.touch();
        assert!(e.wanted());
        let start = Instant::now();
        let stopper = {
            let e = e.clone();
            tokio::spawn(async move {
                e.until_unwanted().await;
                Instant::now()
            })
        };
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(800)).await;
            e.demand.touch();
        }
        assert_eq!(stopper.await.unwrap() - start, Duration::from_millis(4000 + 1000));
    }

    /// An always-on source is wanted without readers and never stops.
    #[tokio::test(start_paused = true)]
    async fn always_on_never_stops() {
        let e = entry(false, 10);
        assert!(e.wanted());
        let stop = tokio::time::timeout(Duration::from_secs(3600), e.until_unwanted()).await;
        assert!(stop.is_err());
    }

    /// An edge: a reader of a path nothing serves here starts one pull from the origins (with
    /// the reader's chain and this server's id on its URL), known to the hub; a second reader
    /// gets the same; a published path, an invalid one or a loop gets none.
    #[tokio::test]
    async fn an_edge_pulls_unknown_paths_once_and_refuses_loops() {
        use crate::hub::Sources as _;
        let hub = Hub::new(crate::config::HubConfig::default());
        let mut config = Config::default();
        config.edge.origin = vec!["rtmp://o1:1935".into(), "rtsp://o2:8554/".into()];
        config.source.close_after_ms = 60_000;
        let sources = Sources::start(hub.clone(), &config);
        assert!(hub.demand("live/x").is_none());
        let via = vec!["e0".to_owned()];
        let a = sources.want("live/x", &via).unwrap();
        let b = sources.want("live/x", &[]).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one pull per path");
        assert!(hub.demand("live/x").is_some());
        let status = sources.status("live/x").unwrap();
        assert!(status.edge);
        let id = sources.id();
        assert_eq!(status.relay.url, format!("rtmp://o1:1935/live/x?ferrocast_via=e0.{id}"));
        let _publisher = hub.publish("live/here").unwrap();
        assert!(sources.want("live/here", &[]).is_none(), "a path published here is not pulled");
        assert!(sources.want("../x", &[]).is_none());
        assert!(sources.check_via(&["e0".into(), id.to_owned()]).unwrap_err().to_string().contains("loop"));
        assert!(sources.check_via(&vec!["e".to_owned(); 8]).is_err(), "edge.max_hops");
        assert!(sources.check_via(&via).is_ok());
        // A server that is no edge pulls nothing it was not told to.
        let plain = Sources::start(Hub::new(crate::config::HubConfig::default()), &Config::default());
        assert!(plain.want("live/x", &[]).is_none());
    }

    #[test]
    fn errors_name_the_step_and_the_answer() {
        let e = SourceError::answered("DESCRIBE", 401, Some("Digest realm \"IP Camera\""));
        assert_eq!(e.to_string(), "DESCRIBE answered 401 Unauthorized (Digest realm \"IP Camera\")");
        assert_eq!((e.step.as_str(), e.status), ("DESCRIBE", Some(401)));
    }

    #[test]
    fn status_never_shows_credentials() {
        let e = entry(true, 10);
        let s = serde_json::to_value(e.status()).unwrap();
        assert_eq!(s["url"], "rtsp://***@cam/x");
        assert_eq!(s["state"], "idle");
        for key in [
            "retries",
            "last_error",
            "live_since",
            "bytes",
            "bitrate",
            "on_demand",
            "transport",
            "auth",
            "frames",
            "packets_lost",
        ] {
            assert!(s.get(key).is_some(), "{key} in {s}");
        }
    }
}
