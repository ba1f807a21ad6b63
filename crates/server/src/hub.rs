//! The hub: path -> stream. One publisher per path, any number of readers, a GOP cache so a
//! new reader starts at the latest keyframe, and a bounded ring of frames so the publisher
//! never waits for a reader.
//!
//! The publish path ([`Publisher::push`]) takes the stream's state lock only. No reader
//! operation or fan-out pass holds that lock across I/O or a walk over readers: reader counts
//! are atomic and the fan-out's slot lists are replaced, not held (see [`crate::fanout`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use ferrocast_media::{Frame, TrackKind, Tracks, rescale};
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;
use tracing::info;

use crate::clock::{MediaClock, unix_micros};
use crate::config::{HubConfig, ms};
pub use crate::event::{HubEvent, Sequenced};
use crate::fanout::{self, Attachment, FanOut, Slot};
use crate::timeline::{Correction, Mapped, Timeline};

/// Why a publish was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    /// Another publisher holds the path.
    #[error("path {0:?} already has a publisher")]
    Busy(String),
    /// `limits.max_streams` streams are published already.
    #[error("the server carries its maximum of {0} streams")]
    TooManyStreams(usize),
}

/// Counters that metrics will expose.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Frames readers skipped to catch up with a keyframe.
    pub frames_dropped: AtomicU64,
    /// Readers disconnected for staying behind.
    pub readers_too_slow: AtomicU64,
    /// Publishers whose timestamps were shifted to follow on from the previous publisher.
    pub timestamp_rebases: AtomicU64,
    /// Breaks in a publisher's clock (see [`crate::timeline`]), of the whole stream or of one
    /// track alone, smoothed over so readers' timestamps stay monotonic.
    pub timestamp_jumps: AtomicU64,
    /// Frames that stepped back a little in their own track and were held at its last time.
    pub timestamps_held: AtomicU64,
    /// Readers ended by a panic in their stream's fan-out.
    pub reader_panics: Arc<AtomicU64>,
    /// Streams whose media time was mapped to the publisher's capture time (RTCP sender
    /// reports) instead of arrival.
    pub capture_anchors: AtomicU64,
    /// Frames handed to readers, every stream: what [`HubStats::ingest_to_first_write`]
    /// measures a share of (frames that only readers' own tasks write are not in it).
    pub frames_ingested: AtomicU64,
    /// From a frame entering the hub ([`Publisher::push`]) to the fan-out's first write of it
    /// to any reader's socket (see [`crate::fanout`]): once per frame, whatever the readers.
    pub ingest_to_first_write: Arc<crate::metrics::Histogram>,
}

/// The shared registry of streams.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    max_streams: usize,
    max_readers_per_stream: usize,
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    published: Notify,
    /// Paths of new streams (not republishes within the grace period), for services that
    /// follow every stream from its start (HLS, later recording).
    new_streams: broadcast::Sender<String>,
    /// The pulled sources (see [`crate::source`]), once the server has them.
    sources: OnceLock<Weak<dyn Sources>>,
    /// Counters.
    pub stats: HubStats,
    /// Every open session (connections, publishers, readers, sources, push relays): the
    /// registry the API, metrics, hooks and logs share. On the hub because every driver has it.
    pub sessions: Arc<crate::session::Sessions>,
    /// Who may publish, read, play back, use the API and read metrics (reloadable).
    pub auth: Arc<crate::auth::Auth>,
}

/// Readers' demand for a path whose stream a pulled source provides (DESIGN.md, issue 17):
/// the readers that hold it now, and when it was last wanted. Readers of RTMP, RTSP and
/// HTTP-FLV hold it while they read ([`DemandGuard`] in their [`Subscription`]); an HLS player
/// holds no connection, so each of its requests [`Demand::touch`]es it. The server's own
/// subscribers ([`Hub::subscribe_internal`]: HLS muxing, recording, push) do not count.
#[derive(Debug)]
pub struct Demand {
    state: watch::Sender<DemandState>,
}

/// What [`Demand`] holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemandState {
    /// Readers holding the path now.
    pub readers: usize,
    /// When the last reader left, or the last HLS request came; None before either.
    pub last_wanted: Option<Instant>,
}

impl DemandState {
    /// Whether the path is wanted at `now`: a reader holds it, or one left (or an HLS
    /// request came) less than `linger` ago.
    pub fn wanted(&self, now: Instant, linger: Duration) -> bool {
        self.readers > 0 || self.last_wanted.is_some_and(|t| now < t + linger)
    }
}

impl Demand {
    /// No demand yet.
    pub fn new() -> Arc<Demand> {
        Arc::new(Demand { state: watch::channel(DemandState::default()).0 })
    }

    /// A reader holds the path until the guard is dropped.
    pub fn hold(self: &Arc<Self>) -> DemandGuard {
        self.state.send_modify(|s| s.readers += 1);
        DemandGuard(self.clone())
    }

    /// A reader that holds no connection (an HLS request) wants the path now.
    pub fn touch(&self) {
        self.state.send_modify(|s| s.last_wanted = Some(Instant::now()));
    }

    /// The demand now.
    pub fn get(&self) -> DemandState {
        *self.state.borrow()
    }

    /// Follows the demand: the receiver sees every change.
    pub fn watch(&self) -> watch::Receiver<DemandState> {
        self.state.subscribe()
    }
}

/// One reader's hold on a [`Demand`]; dropping it lets go.
#[derive(Debug)]
pub struct DemandGuard(Arc<Demand>);

impl Drop for DemandGuard {
    fn drop(&mut self) {
        self.0.state.send_modify(|s| {
            s.readers = s.readers.saturating_sub(1);
            s.last_wanted = Some(Instant::now());
        });
    }
}

/// The pulled sources as the hub sees them: which paths have one, how long their readers
/// wait for it, and why it is not live. Implemented by [`crate::source::Sources`].
pub trait Sources: Send + Sync + std::fmt::Debug {
    /// The demand of `path` when a source serves it (a readers' arrival starts it).
    fn demand(&self, path: &str) -> Option<Arc<Demand>>;
    /// How long a reader of `path` waits for its source to go live.
    fn start_timeout(&self, path: &str) -> Duration;
    /// Why `path`'s source is not live: its last error (credentials hidden).
    fn last_error(&self, path: &str) -> Option<String>;
    /// The demand of `path` for a reader that wants it now, whose request came through the
    /// servers `via` (see [`crate::edge`]): as [`Sources::demand`], and on an edge a pull
    /// from the origins for a path nothing else serves.
    fn want(&self, path: &str, via: &[String]) -> Option<Arc<Demand>> {
        let _ = via;
        self.demand(path)
    }
    /// Refuses a reader whose request came through `via` when serving it would close a loop
    /// of pulls or pass `edge.max_hops` servers.
    fn check_via(&self, via: &[String]) -> Result<(), crate::edge::Refused> {
        let _ = via;
        Ok(())
    }
}

/// How often a reader that started a pulled source looks for its tracks.
const TRACKS_POLL: Duration = Duration::from_millis(20);

/// New streams announced to followers; one that lags this far re-scans `live_paths`.
const NEW_STREAM_QUEUE: usize = 256;

/// Builds a wire form of a stream's frames whose bytes depend on the order of the frames
/// (RTP: sequence numbers), in the stream's order: the GOP when it starts following the
/// stream, then each frame as it is pushed.
pub trait OrderedWire: Send + Sync + std::fmt::Debug {
    /// Builds the wire form of `frame` (described by `tracks`), the stream's next frame.
    fn build(&self, tracks: &Tracks, frame: &Frame);
}

#[derive(Debug)]
pub struct Stream {
    path: String,
    tx: broadcast::Sender<Sequenced>,
    state: Mutex<StreamState>,
    /// The readers attached to the stream, and their count.
    fanout: Arc<FanOut>,
    /// Media time to wall-clock time, once per publish.
    clock: Arc<MediaClock>,
    /// Subscriptions of the server's own services ([`Hub::subscribe_internal`]).
    internal: AtomicUsize,
}

impl Stream {
    /// Puts an event in the ring, numbered. Called with the state locked, so the numbers and
    /// the subscription snapshots agree.
    fn send(&self, st: &mut StreamState, ev: HubEvent) {
        let seq = st.next_seq;
        st.next_seq += 1;
        let _ = self.tx.send((seq, ev));
    }
}

/// Fan-out shards per stream: the runtime's worker threads.
fn fan_out_shards() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers()).max(1)
}

#[derive(Debug, Default)]
struct StreamState {
    /// Generation of the current publisher, or None while in grace.
    publisher: Option<u64>,
    generation: u64,
    tracks: Arc<Tracks>,
    gop: Vec<Arc<Frame>>,
    gop_bytes: usize,
    /// Set when the GOP outgrew the cap: cache nothing until the next keyframe.
    gop_overflow: bool,
    /// What readers' timestamps are, across publishers.
    timeline: Timeline<Input>,
    /// The media clock has its mapping for this publish.
    clocked: bool,
    /// A capture time the publisher gave before the track's place on the timeline was known:
    /// (track, ts, µs), taken at the track's next frame.
    capture: Option<(TrackKind, i64, u64)>,
    /// Builds the RTP form of each frame in order, once the stream has RTSP readers.
    ordered: Option<Arc<dyn OrderedWire>>,
    /// Number of the next event in the ring, across publishers.
    next_seq: u64,
    /// When the current publisher started (`uptime` in the API); None in the grace period.
    live_since: Option<(Instant, std::time::SystemTime)>,
    /// The input rate over the last seconds.
    meter: crate::rate::RateMeter,
}

/// What the API shows of a stream ([`Hub::path_stats`]).
#[derive(Debug, Clone)]
pub struct PathStats {
    /// The tracks now.
    pub tracks: Arc<Tracks>,
    /// When the current publisher started, if there is one.
    pub live_since: Option<(Instant, std::time::SystemTime)>,
    /// Media payload bits per second over the last seconds.
    pub bitrate_in: f64,
    /// Video frames per second over the last seconds.
    pub fps: f64,
}

/// A frame as its publisher gave it, before its place on the timeline.
#[derive(Debug)]
struct Input {
    /// When it entered the hub, on the fan-out's clock ([`FanOut::us_at`]).
    arrival_us: u64,
    kind: TrackKind,
    dts: i64,
    pts: i64,
    keyframe: bool,
    data: bytes::Bytes,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent-enough data (plain fields); keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Index of a track kind in per-track arrays.
fn index(kind: TrackKind) -> usize {
    usize::from(kind == TrackKind::Audio)
}

impl Hub {
    /// A hub with the given settings and the default limits.
    pub fn new(config: HubConfig) -> Arc<Hub> {
        Self::with_limits(config, &crate::config::LimitsConfig::default())
    }

    /// A hub with the given settings and caps on streams and readers per stream.
    pub fn with_limits(config: HubConfig, limits: &crate::config::LimitsConfig) -> Arc<Hub> {
        Arc::new(Hub {
            config,
            max_streams: limits.max_streams,
            max_readers_per_stream: limits.max_readers_per_stream,
            streams: Mutex::new(HashMap::new()),
            published: Notify::new(),
            new_streams: broadcast::channel(NEW_STREAM_QUEUE).0,
            sources: OnceLock::new(),
            stats: HubStats::default(),
            sessions: crate::session::Sessions::new(),
            auth: crate::auth::Auth::new(Default::default()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Tells the hub which paths pulled sources serve (once; later calls are ignored). The hub
    /// holds it weakly: the server keeps it alive.
    pub fn set_sources(&self, sources: Weak<dyn Sources>) {
        let _ = self.sources.set(sources);
    }

    fn sources(&self) -> Option<Arc<dyn Sources>> {
        self.sources.get()?.upgrade()
    }

    /// The demand of `path`, when a pulled source serves it.
    pub fn demand(&self, path: &str) -> Option<Arc<Demand>> {
        self.sources()?.demand(path)
    }

    /// An HLS request for `path`: keeps its on-demand source wanted (starting it if it is
    /// idle; on an edge, pulling it from an origin). True when a source serves the path.
    pub fn touch(&self, path: &str) -> bool {
        self.sources().and_then(|s| s.want(path, &[])).map(|d| d.touch()).is_some()
    }

    /// Refuses a reader whose request came through the servers `via` (a pull by another
    /// edge) when serving it would close a loop or pass `edge.max_hops` servers.
    pub fn check_via(&self, via: &[String]) -> Result<(), crate::edge::Refused> {
        match self.sources() {
            Some(s) if !via.is_empty() => s.check_via(via),
            _ => Ok(()),
        }
    }

    /// How long a reader of `path` waits for its stream: the source's start timeout when a
    /// source serves it, else `hub.play_wait_ms`.
    pub fn start_wait(&self, path: &str) -> Duration {
        match self.sources() {
            Some(s) if s.demand(path).is_some() => s.start_timeout(path),
            _ => ms(self.config.play_wait_ms),
        }
    }

    /// Waits until `path` has a publisher, up to `timeout`.
    pub async fn wait_published(&self, path: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.published.notified();
            if self.is_published(path) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_published(path);
            }
        }
    }

    /// The readers of `path` now, the server's own subscribers not counted.
    pub fn readers(&self, path: &str) -> usize {
        self.stream(path).map_or(0, |s| s.fanout.readers().saturating_sub(s.internal.load(Ordering::Relaxed)))
    }

    /// Paths that have a publisher now.
    pub fn live_paths(&self) -> Vec<String> {
        let streams: Vec<Arc<Stream>> = lock(&self.streams).values().cloned().collect();
        let mut v: Vec<String> =
            streams.iter().filter(|s| lock(&s.state).publisher.is_some()).map(|s| s.path.clone()).collect();
        v.sort();
        v
    }

    /// The tracks, uptime and input rate of `path`'s stream, if the hub has one.
    pub fn path_stats(&self, path: &str) -> Option<PathStats> {
        let stream = self.stream(path)?;
        let st = lock(&stream.state);
        let (bitrate_in, fps) = st.meter.rates(Instant::now());
        Some(PathStats { tracks: st.tracks.clone(), live_since: st.live_since, bitrate_in, fps })
    }

    /// Whether the hub has a stream at `path`: published, or waiting for a republish.
    pub fn has_stream(&self, path: &str) -> bool {
        lock(&self.streams).contains_key(path)
    }

    /// Whether `path` has a publisher now.
    pub fn is_published(&self, path: &str) -> bool {
        self.stream(path).is_some_and(|s| lock(&s.state).publisher.is_some())
    }

    fn stream(&self, path: &str) -> Option<Arc<Stream>> {
        lock(&self.streams).get(path).cloned()
    }

    /// Claims `path` for a publisher. A path in its grace period is taken over: its readers
    /// carry on with the new publisher.
    pub fn publish(self: &Arc<Self>, path: &str) -> Result<Publisher, PublishError> {
        let mut streams = lock(&self.streams);
        if !streams.contains_key(path) && streams.len() >= self.max_streams {
            return Err(PublishError::TooManyStreams(self.max_streams));
        }
        let stream = streams
            .entry(path.to_owned())
            .or_insert_with(|| {
                let pacing = fanout::Pacing {
                    merge: ms(self.config.write_merge_ms),
                    load_max: ms(self.config.load_merge_max_ms),
                };
                let fanout = FanOut::new(fan_out_shards(), pacing, self.stats.reader_panics.clone())
                    .with_latency(self.stats.ingest_to_first_write.clone());
                Arc::new(Stream {
                    path: path.to_owned(),
                    tx: broadcast::channel(self.config.reader_queue_frames.max(1)).0,
                    state: Mutex::new(StreamState::default()),
                    fanout: Arc::new(fanout),
                    clock: Arc::default(),
                    internal: AtomicUsize::new(0),
                })
            })
            .clone();
        // The state is locked before the registry lets go (as `end_if_unclaimed` does), so a
        // stream at the end of its grace period cannot be removed in between.
        let mut st = lock(&stream.state);
        drop(streams);
        if st.publisher.is_some() {
            return Err(PublishError::Busy(path.to_owned()));
        }
        st.generation += 1;
        st.publisher = Some(st.generation);
        let republish = st.generation > 1;
        st.tracks = Arc::new(Tracks::default());
        st.gop.clear();
        st.gop_bytes = 0;
        st.gop_overflow = false;
        st.timeline.republish();
        st.clocked = false;
        st.capture = None;
        st.live_since = Some((Instant::now(), std::time::SystemTime::now()));
        st.meter.reset();
        stream.clock.reset();
        if republish {
            stream.send(&mut st, HubEvent::Republished);
        }
        let generation = st.generation;
        drop(st);
        self.published.notify_waiters();
        if !republish {
            let _ = self.new_streams.send(path.to_owned());
        }
        Ok(Publisher { hub: self.clone(), stream, generation, frames: None, awaiting_keyframe: Default::default() })
    }

    /// Calls `f` with each newly published path (not republishes), from a task of its own;
    /// after missing announcements (a burst of new streams) with every live path, so `f` must
    /// take a path twice in its stride.
    pub fn on_new_streams(self: &Arc<Self>, f: impl Fn(&Arc<Hub>, String) + Send + 'static) {
        let mut news = self.watch_new_streams();
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                match news.recv().await {
                    Ok(path) => f(&hub, path),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for path in hub.live_paths() {
                            f(&hub, path);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Follows new streams: each newly published path (not republishes) is announced.
    pub fn watch_new_streams(&self) -> broadcast::Receiver<String> {
        self.new_streams.subscribe()
    }

    /// The media clock of a path's stream: its media time to wall-clock mapping, set once per
    /// publish (DESIGN.md "Timeline").
    pub fn media_clock(&self, path: &str) -> Option<Arc<MediaClock>> {
        self.stream(path).map(|s| s.clock.clone())
    }

    /// True when a path has `limits.max_readers_per_stream` readers already.
    pub fn at_reader_limit(&self, path: &str) -> bool {
        self.stream(path).is_some_and(|s| s.fanout.readers() >= self.max_readers_per_stream)
    }

    /// Subscribes to a published path as a reader: the current tracks and GOP, then live
    /// events. None when there is no publisher, or the stream has its maximum of readers. The
    /// subscription holds the path's source (if it has one) while it lives.
    pub fn subscribe(&self, path: &str) -> Option<Subscription> {
        let mut sub = self.subscribe_as(path, false)?;
        sub.demand = self.demand(path).map(|d| d.hold());
        Some(sub)
    }

    fn subscribe_as(&self, path: &str, internal: bool) -> Option<Subscription> {
        let stream = self.stream(path)?;
        let st = lock(&stream.state);
        st.publisher?;
        if !stream.fanout.join(self.max_readers_per_stream) {
            return None;
        }
        if internal {
            stream.internal.fetch_add(1, Ordering::Relaxed);
        }
        let rx = stream.tx.subscribe();
        Some(Subscription {
            tracks: st.tracks.clone(),
            gop: st.gop.clone(),
            rx: Some(rx),
            start_seq: st.next_seq,
            stream: stream.clone(),
            internal,
            demand: None,
        })
    }

    /// Subscribes as one of the server's own services (HLS muxing, recording, push relays):
    /// like [`Hub::subscribe`], but such a reader does not keep an on-demand source running
    /// and is not counted in [`Hub::readers`].
    pub fn subscribe_internal(&self, path: &str) -> Option<Subscription> {
        self.subscribe_as(path, true)
    }

    /// Subscribes as a reader, waiting for a publisher to appear: up to the configured play
    /// wait, or for a path a pulled source serves, starting the source and waiting up to its
    /// start timeout (then logging why it is not live).
    pub async fn subscribe_wait(&self, path: &str) -> Option<Subscription> {
        self.subscribe_wait_via(path, &[]).await
    }

    /// [`Hub::subscribe_wait`] for a reader whose request came through the servers `via` (a
    /// pull by an edge; see [`crate::edge`]), which an edge pull it starts passes on.
    pub async fn subscribe_wait_via(&self, path: &str, via: &[String]) -> Option<Subscription> {
        let demand = self.sources().and_then(|s| s.want(path, via));
        // Held while waiting: the source starts (once, however many readers wait).
        let _hold = demand.as_ref().map(|d| d.hold());
        let wait = self.start_wait(path);
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.published.notified();
            if let Some(s) = self.subscribe(path) {
                // A pulled source publishes, then gives its tracks (from its SDP, or in band
                // with the first keyframe): a reader that started it waits for them, so that
                // what it announces (an FLV header's tracks) is what the stream has.
                let known = s.tracks.video.is_some() || s.tracks.audio.is_some();
                if known || demand.is_none() || Instant::now() >= deadline {
                    return Some(s);
                }
                drop(s);
                tokio::time::sleep(TRACKS_POLL).await;
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                if demand.is_some() {
                    let last_error = self.sources().and_then(|s| s.last_error(path));
                    info!(
                        path,
                        last_error = last_error.as_deref().unwrap_or("none yet"),
                        "reader gave up: the path's source was not live within {wait:?}"
                    );
                }
                return None;
            }
        }
    }

    /// Has `wire` build its form of every frame of `path` in the stream's order from now on,
    /// starting with the GOP; None when there is no such stream. A stream has one such
    /// builder: another replaces it. Gives the stream's media clock (for sender reports).
    ///
    /// The GOP is built from a copy, outside the stream's lock, so the publisher does not wait
    /// for it; only frames pushed meanwhile are built under the lock (a frame is built once,
    /// whoever gets to it first, so the order holds).
    pub fn build_in_order(&self, path: &str, wire: Arc<dyn OrderedWire>) -> Option<Arc<MediaClock>> {
        let stream = self.stream(path)?;
        let is_ours = |st: &StreamState| {
            st.ordered.as_ref().is_some_and(|o| std::ptr::addr_eq(Arc::as_ptr(o), Arc::as_ptr(&wire)))
        };
        let (tracks, gop) = {
            let st = lock(&stream.state);
            if is_ours(&st) {
                return Some(stream.clock.clone());
            }
            (st.tracks.clone(), st.gop.clone())
        };
        for f in &gop {
            wire.build(&tracks, f);
        }
        let mut st = lock(&stream.state);
        if !is_ours(&st) {
            for f in &st.gop {
                wire.build(&st.tracks, f);
            }
            st.ordered = Some(wire);
        }
        Some(stream.clock.clone())
    }

    fn unpublish(self: &Arc<Self>, stream: &Arc<Stream>, generation: u64) {
        {
            let mut st = lock(&stream.state);
            if st.publisher != Some(generation) {
                return;
            }
            st.publisher = None;
            st.live_since = None;
            stream.send(&mut st, HubEvent::Unpublished);
        }
        let grace = ms(self.config.republish_grace_ms);
        if grace.is_zero() {
            self.end_if_unclaimed(stream, generation);
            return;
        }
        let hub = self.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            hub.end_if_unclaimed(&stream, generation);
        });
    }

    fn end_if_unclaimed(&self, stream: &Arc<Stream>, generation: u64) {
        let mut streams = lock(&self.streams);
        let mut st = lock(&stream.state);
        if st.publisher.is_none() && st.generation == generation {
            stream.send(&mut st, HubEvent::Ended);
            st.ordered = None;
            if streams.get(&stream.path).is_some_and(|s| Arc::ptr_eq(s, stream)) {
                streams.remove(&stream.path);
            }
        }
    }
}

/// A reader's view of a stream at subscription, and its live feed. Counts as one of the
/// stream's readers until dropped.
#[derive(Debug)]
pub struct Subscription {
    /// Tracks at the time of subscription.
    pub tracks: Arc<Tracks>,
    /// Frames from the latest keyframe, oldest first: taken by the reader (see
    /// [`crate::reader::Reader::new`]), not kept for the reader's life.
    pub gop: Vec<Arc<Frame>>,
    /// Events after the snapshot, from the ring. Once attached to the fan-out: only while
    /// the reader still has events to take from it itself (see [`Attachment::floor`]).
    pub rx: Option<broadcast::Receiver<Sequenced>>,
    /// Number of the first event after the snapshot.
    start_seq: u64,
    stream: Arc<Stream>,
    /// One of the server's own services ([`Hub::subscribe_internal`]).
    internal: bool,
    /// The reader's hold on the path's pulled source, if it has one.
    demand: Option<DemandGuard>,
}

impl Subscription {
    /// The stream's tracks now (after a reader skipped events).
    pub fn current_tracks(&self) -> Arc<Tracks> {
        lock(&self.stream.state).tracks.clone()
    }

    /// Number of the first event after the snapshot.
    pub fn start_seq(&self) -> u64 {
        self.start_seq
    }

    /// Takes the events after the snapshot from the stream's fan-out (see [`crate::fanout`])
    /// instead of the ring, with direct writes to `socket`. If the fan-out took some of them
    /// before this slot joined, [`Subscription::rx`] keeps the ring receiver to take those
    /// from, up to [`Attachment::floor`]; otherwise it is dropped, so frames are freed once
    /// the fan-out has handed them on. Takes no lock the publisher takes.
    pub fn attach(&mut self, socket: Option<Arc<tokio::net::TcpStream>>, queue: usize) -> Attachment {
        let slot = Slot::new(socket, self.start_seq, queue);
        let rx = self.rx.take().unwrap_or_else(|| self.stream.tx.subscribe());
        let (attachment, rx) = self.stream.fanout.attach(slot, self.start_seq, rx);
        self.rx = rx;
        attachment
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.internal {
            self.stream.internal.fetch_sub(1, Ordering::Relaxed);
        }
        self.stream.fanout.leave();
    }
}

/// The right to publish one path. Dropping it unpublishes.
#[derive(Debug)]
pub struct Publisher {
    hub: Arc<Hub>,
    stream: Arc<Stream>,
    generation: u64,
    /// Counts the frames pushed, for a pulled source's status.
    frames: Option<Arc<AtomicU64>>,
    /// Video frames are dropped until the first video keyframe ([`Publisher::start_at_keyframe`]).
    awaiting_keyframe: std::sync::atomic::AtomicBool,
}

impl Publisher {
    /// The path.
    pub fn path(&self) -> &str {
        &self.stream.path
    }

    /// Replaces the tracks; readers see the change if it is one.
    pub fn set_tracks(&self, tracks: Tracks) {
        let mut st = lock(&self.stream.state);
        if *st.tracks == tracks {
            return;
        }
        // Frames held back go out with the parameters they were pushed with.
        self.release_held(&mut st);
        let tracks = Arc::new(tracks);
        st.tracks = tracks.clone();
        self.stream.send(&mut st, HubEvent::Tracks(tracks));
    }

    /// The publisher states that time `ts` of track `kind` (its clock, as given to
    /// [`Publisher::push`]) was captured at wall-clock time `capture_unix_micros` (from its
    /// RTCP sender reports). The first call of a publish replaces the mapping from arrival
    /// (DESIGN.md "Timeline"); later calls are ignored.
    pub fn anchor_capture_time(&self, kind: TrackKind, ts: i64, capture_unix_micros: u64) {
        let mut st = lock(&self.stream.state);
        let clock = track_clock(&st.tracks, kind);
        match st.timeline.output(index(kind), ts, clock) {
            Some(out) => {
                if self.stream.clock.capture(rescale(out, clock, 1_000_000), capture_unix_micros) {
                    st.clocked = true;
                    self.hub.stats.capture_anchors.fetch_add(1, Ordering::Relaxed);
                    info!(
                        path = self.stream.path,
                        ?kind,
                        "timeline: media time mapped to the publisher's capture time"
                    );
                }
            }
            None => st.capture = st.capture.or(Some((kind, ts, capture_unix_micros))),
        }
    }

    /// Counts every frame pushed from now on in `frames` (a pulled source's status).
    pub fn count_frames(&mut self, frames: Arc<AtomicU64>) {
        self.frames = Some(frames);
    }

    /// Drops video frames until the first video keyframe: a pulled camera's stream may begin
    /// in the middle of a GOP (a UDP source that lost its first packets, a camera that starts
    /// sending at once), and readers could not decode what comes before the keyframe.
    pub fn start_at_keyframe(&mut self) {
        *self.awaiting_keyframe.get_mut() = true;
    }

    /// Hands a frame to every reader. Never waits.
    pub fn push(&self, kind: TrackKind, dts: i64, pts: i64, keyframe: bool, data: bytes::Bytes) {
        if kind == TrackKind::Video && self.awaiting_keyframe.load(Ordering::Relaxed) {
            if !keyframe {
                return;
            }
            self.awaiting_keyframe.store(false, Ordering::Relaxed);
        }
        if let Some(f) = &self.frames {
            f.fetch_add(1, Ordering::Relaxed);
        }
        let arrived = Instant::now();
        let mut st = lock(&self.stream.state);
        let st = &mut *st;
        let clock = track_clock(&st.tracks, kind);
        let size = data.len();
        // One clock reading per frame, for the input meter and the ingest-to-first-write
        // histogram.
        st.meter.add(arrived, size, kind == TrackKind::Video);
        let arrival_us = self.stream.fanout.us_at(arrived.into_std());
        let input = Input { arrival_us, kind, dts, pts, keyframe, data };
        if let Some((mapped, input)) = st.timeline.place(index(kind), dts, clock, size, input) {
            self.place(st, mapped, input);
        }
        while let Some((_, mapped, input)) = st.timeline.next_released() {
            self.place(st, mapped, input);
        }
    }

    /// Places every frame the timeline holds back (a break still undecided is taken as that
    /// track's alone).
    fn release_held(&self, st: &mut StreamState) {
        st.timeline.settle();
        while let Some((_, mapped, input)) = st.timeline.next_released() {
            self.place(st, mapped, input);
        }
    }

    /// Hands a frame with its place on the timeline to every reader.
    fn place(&self, st: &mut StreamState, mapped: Mapped, input: Input) {
        let Input { arrival_us, kind, dts, pts, keyframe, data } = input;
        let max_gop = self.hub.config.max_gop_cache_bytes;
        let clock = track_clock(&st.tracks, kind);
        let stats = &self.hub.stats;
        match mapped.correction {
            Correction::None | Correction::Followed => {}
            Correction::Continued => {
                stats.timestamp_rebases.fetch_add(1, Ordering::Relaxed);
                info!(path = self.stream.path, "timeline: the new publisher continues the stream's timestamps");
            }
            Correction::Rebased => {
                stats.timestamp_jumps.fetch_add(1, Ordering::Relaxed);
                info!(path = self.stream.path, ?kind, dts, "timeline: the publisher's clock jumped; stream rebased");
            }
            Correction::RebasedAlone => {
                stats.timestamp_jumps.fetch_add(1, Ordering::Relaxed);
                info!(
                    path = self.stream.path,
                    ?kind,
                    dts,
                    "timeline: one track's clock jumped while the others played on; that track placed again alone"
                );
            }
            Correction::Held => {
                stats.timestamps_held.fetch_add(1, Ordering::Relaxed);
            }
        }
        let shift = mapped.shift(dts);
        let frame = Frame::new(kind, mapped.dts, pts + shift, keyframe, data);
        if !st.clocked {
            st.clocked = true;
            self.stream.clock.arrival(rescale(frame.pts, clock, 1_000_000), unix_micros());
        }
        if let Some((_, ts, at)) = st.capture.filter(|c| c.0 == kind) {
            st.capture = None;
            let out = rescale(ts + shift, clock, 1_000_000);
            if self.stream.clock.capture(out, at) {
                stats.capture_anchors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if st.tracks.video.is_some() {
            if kind == TrackKind::Video && keyframe {
                st.gop.clear();
                st.gop_bytes = 0;
                st.gop_overflow = false;
            }
            if !st.gop_overflow && (!st.gop.is_empty() || (kind == TrackKind::Video && keyframe)) {
                st.gop_bytes += frame.data.len();
                if st.gop_bytes > max_gop {
                    st.gop.clear();
                    st.gop_bytes = 0;
                    st.gop_overflow = true;
                } else {
                    st.gop.push(frame.clone());
                }
            }
        }
        if let Some(o) = &st.ordered {
            o.build(&st.tracks, &frame);
        }
        stats.frames_ingested.fetch_add(1, Ordering::Relaxed);
        self.stream.fanout.arrived(st.next_seq, arrival_us);
        self.stream.send(st, HubEvent::Frame(frame));
    }
}

/// The clock of a track's timestamps (milliseconds until its parameters are known).
fn track_clock(tracks: &Tracks, kind: TrackKind) -> u32 {
    match kind {
        TrackKind::Video => tracks.video.as_ref(),
        TrackKind::Audio => tracks.audio.as_ref(),
    }
    .map_or(1000, |t| t.clock_rate())
}

impl Drop for Publisher {
    fn drop(&mut self) {
        {
            let mut st = lock(&self.stream.state);
            if st.publisher == Some(self.generation) {
                // The publisher's last frames, if any were held back, are not lost.
                self.release_held(&mut st);
            }
        }
        self.hub.unpublish(&self.stream, self.generation);
    }
}

/// How long a reader waits on one write before it is cut off.
pub fn write_timeout(hub: &Hub) -> Duration {
    ms(hub.config.reader_write_timeout_ms)
}

/// The write-merge window of RTMP and HTTP-FLV readers (`hub.write_merge_ms`).
pub fn write_merge(hub: &Hub) -> Duration {
    ms(hub.config.write_merge_ms)
}

/// Whether reader sockets get TCP_NODELAY (`hub.tcp_nodelay`).
pub fn reader_nodelay(hub: &Hub) -> bool {
    hub.config.tcp_nodelay
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferrocast_media::{TrackInfo, VideoCodec};

    fn video_tracks() -> Tracks {
        Tracks {
            video: Some(TrackInfo::Video {
                codec: VideoCodec::H264,
                config: Bytes::from_static(&[1, 2, 3]),
                clock_rate: 1000,
            }),
            ..Tracks::default()
        }
    }

    /// 90 kHz video and 48 kHz audio.
    fn av_tracks() -> Tracks {
        Tracks {
            video: Some(TrackInfo::Video {
                codec: VideoCodec::H264,
                config: Bytes::from_static(&[1, 2, 3]),
                clock_rate: 90_000,
            }),
            audio: Some(TrackInfo::Audio {
                codec: ferrocast_media::AudioCodec::Aac,
                config: Bytes::from_static(&[0x11, 0x90]),
                sample_rate: 48_000,
                channels: 2,
                clock_rate: 48_000,
            }),
            ..Tracks::default()
        }
    }

    #[tokio::test]
    async fn one_publisher_per_path_and_gop_cache() {
        let hub = Hub::new(HubConfig::default());
        let p = hub.publish("live/a").unwrap();
        assert_eq!(hub.publish("live/a").unwrap_err(), PublishError::Busy("live/a".into()));
        p.set_tracks(video_tracks());
        p.push(TrackKind::Video, 0, 0, true, Bytes::from_static(b"k1"));
        p.push(TrackKind::Video, 33, 33, false, Bytes::from_static(b"p"));
        p.push(TrackKind::Video, 66, 66, true, Bytes::from_static(b"k2"));
        p.push(TrackKind::Audio, 70, 70, true, Bytes::from_static(b"a"));
        let sub = hub.subscribe("live/a").unwrap();
        let dts: Vec<i64> = sub.gop.iter().map(|f| f.dts).collect();
        assert_eq!(dts, [66, 70], "GOP starts at the newest keyframe");
        assert!(sub.tracks.video.is_some());
        assert!(hub.subscribe("live/b").is_none());
    }

    #[tokio::test]
    async fn republish_in_grace_continues_timeline() {
        let hub = Hub::new(HubConfig { republish_grace_ms: 60_000, ..HubConfig::default() });
        let p = hub.publish("live/a").unwrap();
        p.set_tracks(video_tracks());
        p.push(TrackKind::Video, 5000, 5000, true, Bytes::from_static(b"k"));
        let mut sub = hub.subscribe("live/a").unwrap();
        drop(p);
        assert!(matches!(sub.rx.as_mut().unwrap().recv().await.map(|(_, e)| e), Ok(HubEvent::Unpublished)));
        let p = hub.publish("live/a").unwrap();
        assert!(matches!(sub.rx.as_mut().unwrap().recv().await.map(|(_, e)| e), Ok(HubEvent::Republished)));
        p.set_tracks(video_tracks());
        p.push(TrackKind::Video, 0, 0, true, Bytes::from_static(b"k"));
        assert!(matches!(sub.rx.as_mut().unwrap().recv().await.map(|(_, e)| e), Ok(HubEvent::Tracks(_))));
        match sub.rx.as_mut().unwrap().recv().await.map(|(_, e)| e) {
            Ok(HubEvent::Frame(f)) => assert_eq!(f.dts, 5000 + crate::timeline::REPUBLISH_GAP_MS),
            other => panic!("{other:?}"),
        }
        assert_eq!(hub.stats.timestamp_rebases.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn timestamp_jumps_are_smoothed_for_readers() {
        let hub = Hub::new(HubConfig::default());
        let p = hub.publish("live/j").unwrap();
        p.set_tracks(video_tracks());
        let mut sub = hub.subscribe("live/j").unwrap();
        // 40 ms steps, then a restart to 0, then a leap of a minute.
        for ts in [1000, 1040, 1080, 0, 40, 60_040, 60_080] {
            p.push(TrackKind::Video, ts, ts + 80, ts == 0, Bytes::from_static(b"f"));
        }
        let mut out = Vec::new();
        while let Ok(ev) = sub.rx.as_mut().unwrap().try_recv().map(|(_, e)| e) {
            if let HubEvent::Frame(f) = ev {
                out.push((f.dts, f.pts - f.dts));
            }
        }
        let dts: Vec<i64> = out.iter().map(|o| o.0).collect();
        assert_eq!(dts, [1000, 1040, 1080, 1120, 1160, 1200, 1240]);
        assert!(out.iter().all(|o| o.1 == 80), "composition offsets kept");
        assert_eq!(hub.stats.timestamp_jumps.load(Ordering::Relaxed), 2);
    }

    /// A restart of the publisher's clock that shows in video first: video is held back until
    /// audio shows it too, then both come out moved alike, nothing lost, none going back.
    #[tokio::test]
    async fn a_break_seen_in_one_track_first_is_decided_by_the_other() {
        let hub = Hub::new(HubConfig::default());
        let p = hub.publish("live/r").unwrap();
        p.set_tracks(av_tracks());
        let mut sub = hub.subscribe("live/r").unwrap();
        let mut sent = Vec::new();
        for ms in (0..3_000).step_by(20).chain((0..1_000).step_by(20)) {
            if ms % 40 == 0 {
                sent.push((TrackKind::Video, ms));
            }
            sent.push((TrackKind::Audio, ms));
        }
        for &(kind, ms) in &sent {
            let ts = if kind == TrackKind::Video { ms * 90 } else { ms * 48 };
            p.push(kind, ts, ts, kind == TrackKind::Video, Bytes::from_static(b"f"));
        }
        let mut got: Vec<(TrackKind, i64)> = Vec::new();
        while let Ok(ev) = sub.rx.as_mut().unwrap().try_recv().map(|(_, e)| e) {
            if let HubEvent::Frame(f) = ev {
                let ms = if f.kind == TrackKind::Video { f.dts / 90 } else { f.dts / 48 };
                got.push((f.kind, ms));
            }
        }
        assert_eq!(got.len(), sent.len(), "every frame out");
        for kind in [TrackKind::Video, TrackKind::Audio] {
            let times: Vec<i64> = got.iter().filter(|g| g.0 == kind).map(|g| g.1).collect();
            assert!(times.windows(2).all(|w| w[1] > w[0]), "{kind:?} in order: {times:?}");
        }
        let shift = |kind| {
            let out = got.iter().rev().find(|g| g.0 == kind).unwrap().1;
            let sent = sent.iter().rev().find(|s| s.0 == kind).unwrap().1;
            out - sent
        };
        assert_eq!(shift(TrackKind::Video), shift(TrackKind::Audio), "both moved alike");
        assert_eq!(hub.stats.timestamp_jumps.load(Ordering::Relaxed), 1);
    }

    /// Frames held back while a break is undecided reach readers when the publisher leaves
    /// or changes its tracks.
    #[tokio::test]
    async fn held_frames_go_out_before_the_publisher_leaves_or_changes_tracks() {
        let hub = Hub::new(HubConfig::default());
        for change_tracks in [false, true] {
            let path = format!("live/h{change_tracks}");
            let p = hub.publish(&path).unwrap();
            p.set_tracks(av_tracks());
            let mut sub = hub.subscribe(&path).unwrap();
            for ms in (0..3_000).step_by(20) {
                p.push(TrackKind::Audio, ms * 48, ms * 48, false, Bytes::from_static(b"a"));
                if ms % 40 == 0 {
                    p.push(TrackKind::Video, ms * 90, ms * 90, ms == 0, Bytes::from_static(b"v"));
                }
            }
            // Video's clock goes back to 0 while audio plays: held back, undecided.
            p.push(TrackKind::Video, 0, 0, true, Bytes::from_static(b"held"));
            if change_tracks {
                let mut t = av_tracks();
                t.video = None;
                p.set_tracks(t);
            } else {
                drop(p);
            }
            let mut held_seen = false;
            while let Ok((_, ev)) = sub.rx.as_mut().unwrap().try_recv() {
                match ev {
                    HubEvent::Frame(f) if &f.data[..] == b"held" => held_seen = true,
                    HubEvent::Tracks(_) | HubEvent::Unpublished => {
                        assert!(
                            held_seen,
                            "the held frame before {}",
                            if change_tracks { "the tracks" } else { "the end" }
                        );
                    }
                    _ => {}
                }
            }
            assert!(held_seen);
        }
    }

    /// Builds by recording frame times, once per frame as [`Frame::wire`] does for RTP; the
    /// first build waits until released.
    #[derive(Debug)]
    struct SlowWire {
        built: Mutex<Vec<i64>>,
        entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl OrderedWire for SlowWire {
        fn build(&self, _: &Tracks, frame: &Frame) {
            frame.wire(ferrocast_media::Wire::Rtp, |f| {
                if let Some(tx) = lock(&self.entered).take() {
                    let _ = tx.send(());
                    let _ = lock(&self.release).recv();
                }
                lock(&self.built).push(f.dts);
                Bytes::new()
            });
        }
    }

    /// The first RTSP reader of a stream has its GOP packetized: the publisher goes on pushing
    /// meanwhile, and the packets still follow the stream's order.
    #[tokio::test]
    async fn building_the_gop_in_order_does_not_hold_up_the_publisher() {
        let hub = Hub::new(HubConfig::default());
        let p = hub.publish("live/o").unwrap();
        p.set_tracks(video_tracks());
        for ts in [0, 40, 80] {
            p.push(TrackKind::Video, ts, ts, ts == 0, Bytes::from_static(b"f"));
        }
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let wire = Arc::new(SlowWire {
            built: Mutex::default(),
            entered: Mutex::new(Some(entered_tx)),
            release: Mutex::new(release_rx),
        });
        let building = {
            let (hub, wire) = (hub.clone(), wire.clone());
            std::thread::spawn(move || hub.build_in_order("live/o", wire).is_some())
        };
        entered.recv_timeout(Duration::from_secs(30)).expect("the GOP build started");
        // The build is stuck in its first frame; the publisher is not.
        let (pushed_tx, pushed) = std::sync::mpsc::channel();
        let pusher = std::thread::spawn(move || {
            for ts in [120, 160] {
                p.push(TrackKind::Video, ts, ts, false, Bytes::from_static(b"f"));
            }
            pushed_tx.send(()).unwrap();
            p
        });
        pushed.recv_timeout(Duration::from_secs(30)).expect("the publisher pushed while the GOP was being built");
        release.send(()).unwrap();
        assert!(building.join().unwrap());
        let p = pusher.join().unwrap();
        p.push(TrackKind::Video, 200, 200, false, Bytes::from_static(b"f"));
        assert_eq!(*lock(&wire.built), [0, 40, 80, 120, 160, 200], "every frame, in the stream's order");
    }

    /// One path served by a pulled source, for the hub's side of demand.
    #[derive(Debug)]
    struct OneSource(Arc<Demand>);

    impl Sources for OneSource {
        fn demand(&self, path: &str) -> Option<Arc<Demand>> {
            (path == "cams/a").then(|| self.0.clone())
        }
        fn start_timeout(&self, _: &str) -> Duration {
            Duration::from_secs(5)
        }
        fn last_error(&self, _: &str) -> Option<String> {
            Some("connect to cam:554: connection refused".into())
        }
    }

    /// Readers hold a pulled path's demand while they wait and read; the server's own
    /// subscribers do not; a waiting reader gets the tracks the source gives after publishing,
    /// and is not counted among the readers once it left.
    #[tokio::test(start_paused = true)]
    async fn readers_hold_demand_and_wait_for_a_sources_tracks() {
        let hub = Hub::new(HubConfig::default());
        let sources: Arc<dyn Sources> = Arc::new(OneSource(Demand::new()));
        hub.set_sources(Arc::downgrade(&sources));
        let demand = hub.demand("cams/a").unwrap();
        assert!(hub.demand("live/x").is_none());
        let waiting = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.subscribe_wait("cams/a").await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(demand.get().readers, 1, "the waiting reader starts the source");
        // The source publishes, and gives its tracks a little later.
        let p = hub.publish("cams/a").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "a reader does not take a stream without tracks");
        p.set_tracks(video_tracks());
        let sub = waiting.await.unwrap().expect("subscribed");
        assert!(sub.tracks.video.is_some());
        assert_eq!((demand.get().readers, hub.readers("cams/a")), (1, 1));
        let internal = hub.subscribe_internal("cams/a").unwrap();
        assert_eq!((demand.get().readers, hub.readers("cams/a")), (1, 1), "internal readers do not count");
        drop(sub);
        assert_eq!((demand.get().readers, hub.readers("cams/a")), (0, 0));
        assert!(demand.get().last_wanted.is_some());
        drop(internal);
        // A source that never goes live: the reader gives up after the start timeout.
        drop(p);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        assert!(hub.subscribe_wait("cams/a").await.is_none());
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(demand.get().readers, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn stream_ends_after_grace() {
        let hub = Hub::new(HubConfig { republish_grace_ms: 1000, ..HubConfig::default() });
        let p = hub.publish("live/a").unwrap();
        let mut sub = hub.subscribe("live/a").unwrap();
        drop(p);
        assert!(matches!(sub.rx.as_mut().unwrap().recv().await.map(|(_, e)| e), Ok(HubEvent::Unpublished)));
        assert!(matches!(sub.rx.as_mut().unwrap().recv().await.map(|(_, e)| e), Ok(HubEvent::Ended)));
        assert!(hub.live_paths().is_empty());
        // The path is free for a fresh stream.
        assert!(hub.publish("live/a").is_ok());
    }

    #[tokio::test]
    async fn gop_over_the_cap_is_not_cached() {
        let hub = Hub::new(HubConfig { max_gop_cache_bytes: 10, ..HubConfig::default() });
        let p = hub.publish("live/a").unwrap();
        p.set_tracks(video_tracks());
        p.push(TrackKind::Video, 0, 0, true, Bytes::from_static(b"123456"));
        p.push(TrackKind::Video, 1, 1, false, Bytes::from_static(b"123456"));
        assert!(hub.subscribe("live/a").unwrap().gop.is_empty());
        p.push(TrackKind::Video, 2, 2, true, Bytes::from_static(b"1"));
        assert_eq!(hub.subscribe("live/a").unwrap().gop.len(), 1);
    }

    /// Delivers every frame to a list, as a direct reader's socket would get it; blocks (or
    /// panics) on request.
    struct Collect {
        got: Arc<Mutex<Vec<i64>>>,
        /// Told when a pass entered the encoder, then waited on before going on.
        block: Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>,
        panic_at: Option<i64>,
    }

    impl fanout::Encoder for Collect {
        fn frame(&mut self, frame: &Arc<Frame>, _: &mut Vec<Bytes>) {
            if let Some((entered, release)) = self.block.take() {
                let _ = entered.send(());
                let _ = release.recv();
            }
            assert_ne!(Some(frame.dts), self.panic_at, "an encoder that chokes on one frame");
            lock(&self.got).push(frame.dts);
        }
    }

    fn direct(
        hub: &Hub,
        path: &str,
        block: Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>,
        panic_at: Option<i64>,
    ) -> (Attachment, Arc<Mutex<Vec<i64>>>, Subscription) {
        let mut sub = hub.subscribe(path).unwrap();
        let a = sub.attach(None, 4096);
        let got = Arc::new(Mutex::new(Vec::new()));
        assert!(a.slot().go_direct(Box::new(Collect { got: got.clone(), block, panic_at })).is_ok());
        (a, got, sub)
    }

    /// Waits (with a generous guard against a hang) until `f` holds.
    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..3000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never happened: {what}");
    }

    /// A pass blocked inside one reader's write (the pass holds nothing the publisher or a
    /// joining reader needs): the publisher pushes N frames and readers join and leave
    /// meanwhile; the other readers get every frame. Before, a joining reader waited for the
    /// pass (`readers()` locked every shard's slot list) and the publisher behind it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocked_pass_holds_up_neither_the_publisher_nor_joining_readers() {
        const N: i64 = 200;
        let hub = Hub::new(HubConfig { reader_queue_frames: 4096, ..HubConfig::default() });
        let p = hub.publish("live/b").unwrap();
        p.set_tracks(video_tracks());
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let (_blocked, _, _s0) = direct(&hub, "live/b", Some((entered_tx, release_rx)), None);
        let (_other, other, _s1) = direct(&hub, "live/b", None, None);
        p.push(TrackKind::Video, 0, 0, true, Bytes::from_static(b"k"));
        entered.recv_timeout(Duration::from_secs(30)).expect("the pass reached the blocking reader");
        // Meanwhile, on a thread of its own: readers join and leave, the publisher pushes.
        let (done_tx, done) = std::sync::mpsc::channel();
        let rt = tokio::runtime::Handle::current();
        let hub2 = hub.clone();
        let worker = std::thread::spawn(move || {
            let _rt = rt.enter();
            let mut joined = Vec::new();
            for i in 1..=N {
                if i % 20 == 0 {
                    joined.push(direct(&hub2, "live/b", None, None));
                }
                if i % 40 == 0 {
                    drop(joined.remove(0));
                }
                p.push(TrackKind::Video, i, i, false, Bytes::from_static(b"p"));
            }
            done_tx.send((p, joined)).unwrap();
        });
        let (_p, joined) = done
            .recv_timeout(Duration::from_secs(30))
            .expect("the publisher and joining readers never waited for the pass");
        worker.join().unwrap();
        assert_eq!(hub.stream("live/b").unwrap().fanout.readers(), 2 + joined.len());
        release.send(()).unwrap();
        until("the other reader got every frame", || lock(&other).len() == N as usize + 1).await;
        assert_eq!(*lock(&other), (0..=N).collect::<Vec<_>>());
        for (_, got, _) in &joined {
            until("a reader that joined got every frame since", || lock(got).last() == Some(&N)).await;
            let got = lock(got);
            assert_eq!(*got, (got[0]..=N).collect::<Vec<_>>(), "in order, none missing");
        }
    }

    /// A panic while one reader's frame is encoded in a shared pass ends that reader only:
    /// the others of the pass get every frame, and it is counted.
    #[tokio::test]
    async fn a_panic_in_a_pass_ends_that_reader_alone() {
        let hub = Hub::new(HubConfig::default());
        let p = hub.publish("live/panic").unwrap();
        p.set_tracks(video_tracks());
        let (_a, a_got, _s0) = direct(&hub, "live/panic", None, None);
        let (bad, _, _s1) = direct(&hub, "live/panic", None, Some(3));
        let (_c, c_got, _s2) = direct(&hub, "live/panic", None, None);
        for i in 0..10 {
            p.push(TrackKind::Video, i, i, i == 0, Bytes::from_static(b"f"));
        }
        for got in [&a_got, &c_got] {
            until("every frame reached the others", || lock(got).len() == 10).await;
        }
        until("the panic was counted", || hub.stats.reader_panics.load(Ordering::Relaxed) == 1).await;
        assert!(bad.slot().fell_back());
        let err = bad.slot().take_over(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
    }

    /// Frames pushed between `subscribe` and `attach` reach the reader, whether it is the
    /// first of a new shard or joins a shard whose task already passed them; each reader gets
    /// every frame from its first keyframe on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_joining_during_a_burst_get_every_frame() {
        let hub = Hub::new(HubConfig { reader_queue_frames: 4096, ..HubConfig::default() });
        let p = hub.publish("live/burst").unwrap();
        p.set_tracks(video_tracks());
        let mut readers = Vec::new();
        let mut dts = 0;
        let mut push = |n: i64, p: &Publisher| {
            for _ in 0..n {
                p.push(TrackKind::Video, dts, dts, dts % 10 == 0, Bytes::from_static(b"f"));
                dts += 1;
            }
        };
        push(3, &p);
        for _ in 0..8 {
            let sub = hub.subscribe("live/burst").unwrap();
            // Frames between the snapshot and the attach; the shards' tasks may pass them.
            push(7, &p);
            tokio::time::sleep(Duration::from_millis(5)).await;
            readers.push(crate::reader::Reader::attached(hub.clone(), sub, None));
            push(5, &p);
        }
        let last = dts - 1;
        for (i, r) in readers.iter_mut().enumerate() {
            let mut got = Vec::new();
            while got.last() != Some(&last) {
                match tokio::time::timeout(Duration::from_secs(30), r.next()).await.expect("frames in time") {
                    crate::reader::ReaderItem::Frame(f) => got.push(f.dts),
                    crate::reader::ReaderItem::Tracks(_) => {}
                    other => panic!("reader {i}: {other:?}"),
                }
            }
            assert_eq!(got[0] % 10, 0, "reader {i} starts on a keyframe: {got:?}");
            assert_eq!(got, (got[0]..=last).collect::<Vec<_>>(), "reader {i} lost frames");
        }
    }

    /// A reader lets go of the GOP it joined on once it has sent it.
    #[tokio::test]
    async fn a_reader_does_not_keep_its_first_gop() {
        let hub = Hub::new(HubConfig { reader_queue_frames: 2, ..HubConfig::default() });
        let p = hub.publish("live/g").unwrap();
        p.set_tracks(video_tracks());
        for i in 0..3 {
            p.push(TrackKind::Video, i, i, i == 0, Bytes::from_static(b"f"));
        }
        let sub = hub.subscribe("live/g").unwrap();
        let first = Arc::downgrade(&sub.gop[0]);
        let mut r = crate::reader::Reader::new(hub.clone(), sub);
        while let Some(item) = r.try_next() {
            drop(item);
        }
        // A new GOP: the hub's cache and the ring (of 2) let the old one go.
        for i in 3..6 {
            p.push(TrackKind::Video, i, i, i == 3, Bytes::from_static(b"f"));
        }
        while r.try_next().is_some() {}
        assert!(first.upgrade().is_none(), "the reader still holds the GOP it joined on");
    }

    /// Reader counts are atomic and bounded.
    #[tokio::test]
    async fn reader_limit_is_counted_without_locks() {
        let limits = crate::config::LimitsConfig { max_readers_per_stream: 2, ..Default::default() };
        let hub = Hub::with_limits(HubConfig::default(), &limits);
        let _p = hub.publish("live/l").unwrap();
        let a = hub.subscribe("live/l").unwrap();
        let mut b = hub.subscribe("live/l").unwrap();
        let _att = b.attach(None, 8);
        assert!(hub.at_reader_limit("live/l"));
        assert!(hub.subscribe("live/l").is_none());
        drop(a);
        assert!(!hub.at_reader_limit("live/l"));
        assert!(hub.subscribe("live/l").is_some());
    }

    /// The timeline in the hub: a 15 s pause of one track is kept, and the publisher's
    /// capture time maps media time to wall-clock time once per publish.
    #[tokio::test]
    async fn a_paused_track_keeps_its_timing_and_capture_time_maps_the_clock() {
        let hub = Hub::new(HubConfig::default());
        let p = hub.publish("live/t").unwrap();
        p.set_tracks(video_tracks());
        let mut sub = hub.subscribe("live/t").unwrap();
        // Video pauses 15 s while audio goes on.
        p.push(TrackKind::Video, 1000, 1000, true, Bytes::from_static(b"k"));
        let mut sent = vec![1000];
        for t in (1000..=16_000).step_by(500) {
            p.push(TrackKind::Audio, t, t, true, Bytes::from_static(b"a"));
            sent.push(t);
        }
        p.push(TrackKind::Video, 16_020, 16_020, false, Bytes::from_static(b"p"));
        sent.push(16_020);
        let mut out = Vec::new();
        while let Ok((_, HubEvent::Frame(f))) = sub.rx.as_mut().unwrap().try_recv() {
            out.push(f.dts);
        }
        assert_eq!(out, sent, "the gap stays in the video track");
        assert_eq!(hub.stats.timestamp_jumps.load(Ordering::Relaxed), 0);
        let stream = hub.stream("live/t").unwrap();
        let arrival = stream.clock.mapping().unwrap();
        assert_eq!(arrival.source, crate::clock::Source::Arrival);
        // Media time 16 s was captured 200 ms before arrival says.
        let at = arrival.unix_micros + (16_000_000 - arrival.media_micros) as u64 - 200_000;
        p.anchor_capture_time(TrackKind::Audio, 16_000, at);
        let m = stream.clock.mapping().unwrap();
        assert_eq!((m.media_at(at), m.source), (16_000_000, crate::clock::Source::Capture));
    }
}
