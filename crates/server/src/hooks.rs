//! Hooks (issue 18): on publish, unpublish, read start, read stop and a recording segment
//! complete, an HTTP POST of the event as JSON or a local command with the same fields in its
//! environment.
//!
//! Never in the way of media: the session registry and the recorder announce events on
//! broadcast channels that never wait ([`crate::session`], [`crate::record::Recordings::completed`]);
//! one task turns them into [`HookEvent`]s and offers each to every target's bounded queue
//! ([`HooksConfig::queue`]), dropping and counting what a full queue cannot take. Each target
//! has one worker that sends its events one at a time, in order, each try under
//! [`HooksConfig::timeout_ms`], retrying [`HooksConfig::retries`] times. A hook server that
//! hangs costs a queue of events, nothing else.
//!
//! ```toml
//! [[hooks.targets]]
//! url = "http://127.0.0.1:9000/events"      # POST, Content-Type: application/json
//! events = ["publish", "unpublish"]          # empty or absent: every event
//! paths = ["cams/*"]                         # path patterns as in [paths]; absent: every path
//!
//! [[hooks.targets]]
//! command = ["/usr/local/bin/on-segment"]    # argv; no shell unless you name one
//! events = ["segment_complete"]
//! ```
//!
//! A command gets the event in `FERROCAST_EVENT`, `FERROCAST_PATH`, `FERROCAST_PROTOCOL`,
//! `FERROCAST_REMOTE_ADDR`, `FERROCAST_SESSION`, `FERROCAST_BYTES_IN`, `FERROCAST_BYTES_OUT`,
//! `FERROCAST_DURATION`, `FERROCAST_FILE`, `FERROCAST_REASON` and `FERROCAST_TIME` (absent
//! fields are empty), stdin, stdout and stderr closed; it is killed when it outlives the
//! timeout, and at most [`HooksConfig::max_commands`] run at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::Method;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tracing::{debug, info, warn};

use crate::paths::{PathSettings, PathTable};
use crate::session::{Role, SessionEvent, SessionInfo, Sessions};

/// Largest answer body read from a hook server (it is not used; the cap keeps a bad server
/// from making us hold much).
pub const MAX_ANSWER_BYTES: usize = 4096;

/// Most targets in `[[hooks.targets]]`: each has a worker and a queue.
pub const MAX_TARGETS: usize = 64;

/// Most events queued per target ([`HooksConfig::queue`]): a queue holds at most this many
/// small JSON documents.
pub const MAX_QUEUE: usize = 100_000;

/// Most tries of one event beyond the first ([`HooksConfig::retries`]): a dead hook server
/// must not hold its queue for long.
pub const MAX_RETRIES: u32 = 10;

/// `[hooks]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Each try of an HTTP hook, or a command's whole run, must end within this, in ms.
    pub timeout_ms: u64,
    /// Tries after a failed one (an error, a status other than 2xx, a command's non-zero exit).
    pub retries: u32,
    /// Wait before the first retry, in ms; doubled before each next one.
    pub retry_delay_ms: u64,
    /// Events queued per target; beyond this new events are dropped, counted and logged.
    pub queue: usize,
    /// Commands running at once, over all targets.
    pub max_commands: usize,
    /// Where events go.
    pub targets: Vec<HookTarget>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            timeout_ms: 5_000,
            retries: 2,
            retry_delay_ms: 1_000,
            queue: 1_024,
            max_commands: 4,
            targets: Vec::new(),
        }
    }
}

/// `[[hooks.targets]]`: one HTTP endpoint or one command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HookTarget {
    /// POST each event here as JSON (`http://host[:port]/path`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Or run this program (argv: the program, then its arguments), the event in its
    /// environment.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The events this target gets; empty: every event.
    pub events: Vec<HookKind>,
    /// Only events of paths matching one of these patterns (the `[paths]` grammar); empty:
    /// every path.
    pub paths: Vec<String>,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// A publish was accepted.
    Publish,
    /// A publisher left.
    Unpublish,
    /// A reader (live or playback) started.
    ReadStart,
    /// A reader left.
    ReadStop,
    /// A recording file was completed.
    SegmentComplete,
}

impl HookKind {
    /// The name in JSON, in `events` and in `FERROCAST_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Publish => "publish",
            HookKind::Unpublish => "unpublish",
            HookKind::ReadStart => "read_start",
            HookKind::ReadStop => "read_stop",
            HookKind::SegmentComplete => "segment_complete",
        }
    }
}

/// One event as hooks receive it (the JSON body of an HTTP hook).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookEvent {
    /// What happened.
    pub event: HookKind,
    /// When, RFC 3339 UTC with ms.
    pub time: String,
    /// The stream path.
    pub path: String,
    /// The session's protocol (`rtmp`, `rtsp`, `http_flv`, `hls`, `http_playback`); None for a
    /// recording.
    pub protocol: Option<&'static str>,
    /// The client's address; None for a recording.
    pub remote_addr: Option<String>,
    /// The session id (16 hex digits), shared with the logs and the API; None for a recording.
    pub session: Option<String>,
    /// Bytes received from the client (the file's size for a recording).
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    /// Seconds the session lasted (0 at its start), or the recording's media duration.
    pub duration: f64,
    /// The recording file (`record.dir` joined); None for sessions.
    pub file: Option<String>,
    /// Why a session ended; None otherwise.
    pub reason: Option<String>,
}

impl HookEvent {
    /// The event of a session's start or end, when it is one hooks report (publishers,
    /// readers and playback; not pulled sources or push relays).
    pub fn from_session(ev: &SessionEvent) -> Option<HookEvent> {
        let (info, started) = match ev {
            SessionEvent::Started(i) => (i, true),
            SessionEvent::Ended(i) => (i, false),
        };
        let event = match (info.role()?, started) {
            (Role::Publisher, true) => HookKind::Publish,
            (Role::Publisher, false) => HookKind::Unpublish,
            (Role::Reader | Role::Playback, true) => HookKind::ReadStart,
            (Role::Reader | Role::Playback, false) => HookKind::ReadStop,
            (Role::Source | Role::Push, _) => return None,
        };
        Some(Self::session(event, info, started))
    }

    fn session(event: HookKind, info: &SessionInfo, started: bool) -> HookEvent {
        HookEvent {
            event,
            time: crate::utc::format(crate::clock::unix_micros()),
            path: info.path().unwrap_or_default().to_owned(),
            protocol: Some(info.protocol.as_str()),
            remote_addr: Some(info.peer.to_string()),
            session: Some(info.id.to_string()),
            bytes_in: info.bytes_in.load(Ordering::Relaxed),
            bytes_out: info.bytes_out.load(Ordering::Relaxed),
            duration: if started { 0.0 } else { info.created_at.elapsed().as_secs_f64() },
            file: None,
            reason: if started { None } else { Some(info.reason().unwrap_or_else(|| "closed".into())) },
        }
    }

    /// The event of a completed recording file.
    pub fn from_segment(done: &crate::record::SegmentComplete) -> HookEvent {
        HookEvent {
            event: HookKind::SegmentComplete,
            time: crate::utc::format(crate::clock::unix_micros()),
            path: done.segment.path.clone(),
            protocol: None,
            remote_addr: None,
            session: None,
            bytes_in: done.segment.bytes,
            bytes_out: 0,
            duration: done.segment.duration_us as f64 / 1e6,
            file: Some(done.file.display().to_string()),
            reason: None,
        }
    }

    /// The environment of a command hook.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        vec![
            ("FERROCAST_EVENT", self.event.as_str().to_owned()),
            ("FERROCAST_TIME", self.time.clone()),
            ("FERROCAST_PATH", self.path.clone()),
            ("FERROCAST_PROTOCOL", self.protocol.unwrap_or_default().to_owned()),
            ("FERROCAST_REMOTE_ADDR", s(&self.remote_addr)),
            ("FERROCAST_SESSION", s(&self.session)),
            ("FERROCAST_BYTES_IN", self.bytes_in.to_string()),
            ("FERROCAST_BYTES_OUT", self.bytes_out.to_string()),
            ("FERROCAST_DURATION", format!("{:.3}", self.duration)),
            ("FERROCAST_FILE", s(&self.file)),
            ("FERROCAST_REASON", s(&self.reason)),
        ]
    }
}

/// Why `[hooks]` was refused; each names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HooksConfigError {
    /// A target with neither or both of `url` and `command`.
    #[error("hooks.targets[{0}]: set one of url and command")]
    UrlOrCommand(usize),
    /// A `url` that is not `http://host[:port]/...`.
    #[error("hooks.targets[{0}].url: {1}")]
    BadUrl(usize, String),
    /// An empty program name.
    #[error("hooks.targets[{0}].command: the first element is the program and must not be empty")]
    EmptyProgram(usize),
    /// A bad path pattern.
    #[error("hooks.targets[{0}].paths: {1}")]
    BadPattern(usize, String),
    /// A value out of range.
    #[error("hooks.{0}")]
    Range(String),
}

impl HooksConfig {
    /// Checks what parses but makes no sense.
    pub fn validate(&self) -> Result<(), HooksConfigError> {
        let range = |ok: bool, what: String| if ok { Ok(()) } else { Err(HooksConfigError::Range(what)) };
        range(self.timeout_ms > 0, "timeout_ms must be above 0".into())?;
        range(self.retries <= MAX_RETRIES, format!("retries must be at most {MAX_RETRIES}"))?;
        range((1..=MAX_QUEUE).contains(&self.queue), format!("queue must be 1..={MAX_QUEUE}"))?;
        range(self.max_commands >= 1, "max_commands must be at least 1".into())?;
        range(self.targets.len() <= MAX_TARGETS, format!("targets: at most {MAX_TARGETS}"))?;
        for (i, t) in self.targets.iter().enumerate() {
            match (&t.url, t.command.is_empty()) {
                (Some(url), true) => {
                    // The error must not repeat the URL: it may hold credentials.
                    crate::http_client::check_url(url).map_err(|e| HooksConfigError::BadUrl(i, e.to_string()))?;
                }
                (None, false) if t.command[0].is_empty() => return Err(HooksConfigError::EmptyProgram(i)),
                (None, false) => {}
                _ => return Err(HooksConfigError::UrlOrCommand(i)),
            }
            target_paths(&t.paths).map_err(|e| HooksConfigError::BadPattern(i, e.to_string()))?;
        }
        Ok(())
    }
}

/// A target's `paths` as a table of patterns (None: every path).
fn target_paths(paths: &[String]) -> Result<Option<PathTable>, crate::paths::PatternError> {
    if paths.is_empty() {
        return Ok(None);
    }
    PathTable::new(paths.iter().map(|p| (p.clone(), PathSettings::default()))).map(Some)
}

/// Counters (metrics).
#[derive(Debug, Default)]
pub struct HookStats {
    /// Events delivered (a 2xx answer, a command's zero exit).
    pub sent: AtomicU64,
    /// Events given up after every try.
    pub failed: AtomicU64,
    /// Events dropped because a target's queue was full, or the event listener lagged.
    pub dropped: AtomicU64,
}

/// A running target: its queue and what it matches.
struct Running {
    config: HookTarget,
    paths: Option<PathTable>,
    queue: mpsc::Sender<Arc<HookEvent>>,
    /// For logs: the URL with credentials hidden, or the program.
    name: String,
}

impl Running {
    fn wants(&self, event: &HookEvent) -> bool {
        (self.config.events.is_empty() || self.config.events.contains(&event.event))
            && self.paths.as_ref().is_none_or(|p| p.resolve(&event.path).is_some())
    }
}

/// The server's hooks, replaced whole on a config reload ([`Hooks::replace`]).
pub struct Hooks {
    state: RwLock<(HooksConfig, Arc<Vec<Running>>)>,
    /// Counters.
    pub stats: Arc<HookStats>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").field("targets", &self.targets().len()).finish()
    }
}

impl Hooks {
    /// Hooks per `config`, their workers started (needs a tokio runtime). Follow events with
    /// [`Hooks::follow`].
    pub fn new(config: HooksConfig) -> Result<Arc<Hooks>, HooksConfigError> {
        let hooks = Arc::new(Hooks {
            state: RwLock::new((HooksConfig::default(), Arc::new(Vec::new()))),
            stats: Arc::new(HookStats::default()),
        });
        hooks.replace(config)?;
        Ok(hooks)
    }

    /// The settings now.
    pub fn config(&self) -> HooksConfig {
        self.state.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    fn targets(&self) -> Arc<Vec<Running>> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    /// Applies new settings (a reload): checked first, and on an error the old ones stay.
    /// Unchanged settings keep their workers and queues; otherwise the old workers finish
    /// what they hold and new ones take the events from now on.
    pub fn replace(&self, config: HooksConfig) -> Result<(), HooksConfigError> {
        config.validate()?;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.0 == config && !state.1.is_empty() {
            return Ok(());
        }
        let commands = Arc::new(Semaphore::new(config.max_commands));
        let mut running = Vec::new();
        for t in &config.targets {
            let (tx, rx) = mpsc::channel(config.queue);
            let name = match &t.url {
                Some(url) => crate::relay::redact(url),
                None => t.command[0].clone(),
            };
            let worker = Worker {
                target: t.clone(),
                name: name.clone(),
                timeout: Duration::from_millis(config.timeout_ms),
                retries: config.retries,
                retry_delay: Duration::from_millis(config.retry_delay_ms),
                commands: commands.clone(),
                stats: self.stats.clone(),
            };
            tokio::spawn(worker.run(rx));
            let paths = target_paths(&t.paths).unwrap_or_default();
            running.push(Running { config: t.clone(), paths, queue: tx, name });
        }
        *state = (config, Arc::new(running));
        Ok(())
    }

    /// Offers `event` to every target that wants it; never waits.
    pub fn send(&self, event: HookEvent) {
        let event = Arc::new(event);
        for t in self.targets().iter() {
            if !t.wants(&event) {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = t.queue.try_send(event.clone()) {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(
                    hook = t.name,
                    event = event.event.as_str(),
                    path = event.path,
                    "hook: queue full, event dropped"
                );
            }
        }
    }

    /// Follows session starts and ends (and completed recordings, when given) until the
    /// server stops.
    pub fn follow(
        self: &Arc<Self>,
        sessions: &Sessions,
        segments: Option<broadcast::Receiver<crate::record::SegmentComplete>>,
    ) {
        let hooks = self.clone();
        let mut events = sessions.events();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(ev) => {
                        if let Some(h) = HookEvent::from_session(&ev) {
                            hooks.send(h);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        hooks.stats.dropped.fetch_add(n, Ordering::Relaxed);
                        warn!("hooks: {n} session events lost (the event queue overflowed)");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        if let Some(segments) = segments {
            self.follow_segments(segments);
        }
    }

    /// Follows completed recordings until the server stops.
    pub fn follow_segments(self: &Arc<Self>, mut segments: broadcast::Receiver<crate::record::SegmentComplete>) {
        let hooks = self.clone();
        tokio::spawn(async move {
            loop {
                match segments.recv().await {
                    Ok(done) => hooks.send(HookEvent::from_segment(&done)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        hooks.stats.dropped.fetch_add(n, Ordering::Relaxed);
                        warn!("hooks: {n} recording events lost (the event queue overflowed)");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

/// What went wrong with one try.
#[derive(Debug, thiserror::Error)]
enum TryError {
    #[error(transparent)]
    Http(#[from] crate::http_client::ClientError),
    #[error("answered {0}")]
    Status(axum::http::StatusCode),
    #[error("could not run: {0}")]
    Spawn(std::io::Error),
    #[error("exited with {0}")]
    Exit(std::process::ExitStatus),
    #[error("killed after {0:?}")]
    Timeout(Duration),
}

/// One target's sender: its events one at a time, in order.
struct Worker {
    target: HookTarget,
    name: String,
    timeout: Duration,
    retries: u32,
    retry_delay: Duration,
    commands: Arc<Semaphore>,
    stats: Arc<HookStats>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Arc<HookEvent>>) {
        while let Some(event) = rx.recv().await {
            let mut delay = self.retry_delay;
            let mut tries = 0;
            loop {
                match self.try_once(&event).await {
                    Ok(()) => {
                        self.stats.sent.fetch_add(1, Ordering::Relaxed);
                        debug!(hook = self.name, event = event.event.as_str(), path = event.path, "hook sent");
                        break;
                    }
                    Err(e) if tries < self.retries => {
                        debug!(hook = self.name, event = event.event.as_str(), "hook: {e}; retrying in {delay:?}");
                        tries += 1;
                        tokio::time::sleep(delay).await;
                        delay = delay.saturating_mul(2);
                    }
                    Err(e) => {
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        warn!(
                            hook = self.name,
                            event = event.event.as_str(),
                            path = event.path,
                            "hook failed after {} tries: {e}",
                            tries + 1
                        );
                        break;
                    }
                }
            }
        }
        info!(hook = self.name, "hook target stopped (settings changed)");
    }

    async fn try_once(&self, event: &HookEvent) -> Result<(), TryError> {
        if let Some(url) = &self.target.url {
            let body = Bytes::from(serde_json::to_vec(event).unwrap_or_default());
            let (status, _) = crate::http_client::request(
                Method::POST,
                url,
                "application/json",
                body,
                self.timeout,
                MAX_ANSWER_BYTES,
            )
            .await?;
            return if status.is_success() { Ok(()) } else { Err(TryError::Status(status)) };
        }
        // Bounded concurrency over all command targets; the semaphore is never closed.
        let Ok(_permit) = self.commands.acquire().await else { return Ok(()) };
        let (program, args) = self.target.command.split_first().expect("validated: a program");
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .envs(event.env())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(TryError::Spawn)?;
        match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(TryError::Exit(status)),
            Ok(Err(e)) => Err(TryError::Spawn(e)),
            Err(_) => {
                let _ = child.kill().await;
                Err(TryError::Timeout(self.timeout))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Protocol;

    fn event() -> HookEvent {
        HookEvent {
            event: HookKind::Publish,
            time: String::new(),
            path: String::new(),
            protocol: None,
            remote_addr: None,
            session: None,
            bytes_in: 0,
            bytes_out: 0,
            duration: 0.0,
            file: None,
            reason: None,
        }
    }

    #[test]
    fn config_parses_and_is_checked() {
        let c: HooksConfig = toml::from_str(
            "timeout_ms = 100\n[[targets]]\nurl = \"http://127.0.0.1:9/x\"\nevents = [\"publish\", \"read_stop\"]\n\
             [[targets]]\ncommand = [\"/bin/true\"]\npaths = [\"cams/*\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.targets[0].events, [HookKind::Publish, HookKind::ReadStop]);
        for (text, want) in [
            ("[[targets]]\n", "hooks.targets[0]: set one of url and command"),
            ("[[targets]]\nurl = \"http://a/\"\ncommand = [\"x\"]\n", "set one of url and command"),
            ("[[targets]]\nurl = \"https://u:secret@a/\"\n", "hooks.targets[0].url: bad URL: only http://"),
            ("[[targets]]\ncommand = [\"\"]\n", "hooks.targets[0].command"),
            ("[[targets]]\ncommand = [\"x\"]\npaths = [\"a//b\"]\n", "hooks.targets[0].paths"),
            ("queue = 0\n", "hooks.queue"),
            ("retries = 11\n", "hooks.retries"),
        ] {
            let c: HooksConfig = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want) && !e.contains("secret"), "{text}: {e}");
        }
        assert!(toml::from_str::<HooksConfig>("[[targets]]\nurl = \"http://a/\"\nevents = [\"publsh\"]\n").is_err());
    }

    #[tokio::test]
    async fn session_events_map_to_hook_events() {
        let sessions = Sessions::new();
        let mut events = sessions.events();
        let h = sessions.open(Protocol::Rtsp, "192.0.2.7:4000".parse().unwrap());
        h.begin(Role::Reader, "cams/a");
        h.info().add_out(1234);
        h.set_reason("closed by peer");
        let id = h.id().to_string();
        drop(h);
        let start = HookEvent::from_session(&events.recv().await.unwrap()).unwrap();
        assert_eq!(start.event, HookKind::ReadStart);
        assert_eq!(
            (start.path.as_str(), start.protocol, start.remote_addr.as_deref()),
            ("cams/a", Some("rtsp"), Some("192.0.2.7:4000"))
        );
        assert_eq!(start.session.as_deref(), Some(id.as_str()));
        let stop = HookEvent::from_session(&events.recv().await.unwrap()).unwrap();
        assert_eq!(
            (stop.event, stop.bytes_out, stop.reason.as_deref()),
            (HookKind::ReadStop, 1234, Some("closed by peer"))
        );
        let env = stop.env();
        assert!(env.contains(&("FERROCAST_EVENT", "read_stop".into())) && env.contains(&("FERROCAST_SESSION", id)));
        // Pulled sources and push relays are no hook events.
        let h = sessions.open(Protocol::Rtsp, "192.0.2.7:554".parse().unwrap());
        h.begin(Role::Source, "cams/b");
        assert!(HookEvent::from_session(&events.recv().await.unwrap()).is_none());
    }

    /// A full queue drops and counts; `send` never waits. A target that never answers
    /// (a port nothing accepts on within the timeout) keeps its first event, the rest queue
    /// up to the cap.
    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hang", listener.local_addr().unwrap());
        let hooks = Hooks::new(HooksConfig {
            queue: 2,
            targets: vec![HookTarget { url: Some(url), ..Default::default() }],
            ..Default::default()
        })
        .unwrap();
        let ev = |path: &str| HookEvent { path: path.into(), ..event() };
        // The worker takes the first and hangs on it; two queue; the rest are dropped.
        hooks.send(ev("a"));
        tokio::task::yield_now().await;
        for p in ["b", "c", "d", "e", "f"] {
            hooks.send(ev(p));
        }
        let dropped = hooks.stats.dropped.load(Ordering::Relaxed);
        assert!((3..=4).contains(&dropped), "{dropped}");
        drop(listener);
    }

    #[tokio::test]
    async fn targets_filter_by_event_and_path() {
        let hooks = Hooks::new(HooksConfig {
            queue: 1,
            targets: vec![HookTarget {
                command: vec!["/nonexistent/ferrocast-test".into()],
                events: vec![HookKind::SegmentComplete],
                paths: vec!["cams/*".into()],
                ..Default::default()
            }],
            retries: 0,
            ..Default::default()
        })
        .unwrap();
        let t = hooks.targets();
        let wants = |kind, path: &str| t[0].wants(&HookEvent { event: kind, path: path.into(), ..event() });
        assert!(wants(HookKind::SegmentComplete, "cams/a"));
        assert!(!wants(HookKind::Publish, "cams/a"));
        assert!(!wants(HookKind::SegmentComplete, "live/a"));
        // A bad replacement leaves the old settings.
        let bad = HooksConfig { queue: 0, ..Default::default() };
        assert!(hooks.replace(bad).is_err());
        assert_eq!(hooks.config().targets.len(), 1);
    }

    /// Waits (a guard against a hang, not a timing check) until `f` holds.
    async fn until(f: impl Fn() -> bool) {
        for _ in 0..2000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never happened");
    }

    /// A 500 is retried; the 200 after it delivers the event once.
    #[tokio::test]
    async fn failed_tries_are_retried() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/h", listener.local_addr().unwrap());
        let tries = Arc::new(AtomicU64::new(0));
        let t = tries.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let n = t.fetch_add(1, Ordering::Relaxed);
                let status = if n == 0 { "500 Internal Server Error" } else { "200 OK" };
                let _ = s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let hooks = Hooks::new(HooksConfig {
            retry_delay_ms: 1,
            targets: vec![HookTarget { url: Some(url), ..Default::default() }],
            ..Default::default()
        })
        .unwrap();
        hooks.send(event());
        until(|| hooks.stats.sent.load(Ordering::Relaxed) == 1).await;
        assert_eq!(tries.load(Ordering::Relaxed), 2);
        assert_eq!(hooks.stats.failed.load(Ordering::Relaxed), 0);
    }

    /// A command that outlives the timeout is killed and counted as failed.
    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed() {
        let hooks = Hooks::new(HooksConfig {
            timeout_ms: 50,
            retries: 0,
            targets: vec![HookTarget { command: vec!["sleep".into(), "600".into()], ..Default::default() }],
            ..Default::default()
        })
        .unwrap();
        hooks.send(event());
        until(|| hooks.stats.failed.load(Ordering::Relaxed) == 1).await;
        assert_eq!(hooks.stats.sent.load(Ordering::Relaxed), 0);
    }
}
