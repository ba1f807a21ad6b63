//! The hub: path -> stream. One publisher per path, any number of readers, a GOP cache so a
//! new reader starts at the latest keyframe, and a bounded ring of frames so the publisher
//! never waits for a reader.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferrocast_media::{Frame, TrackKind, Tracks, rescale};
use tokio::sync::{Notify, broadcast};

use crate::config::{HubConfig, ms};
use crate::fanout::{self, Attachment, Slot};

/// What readers of a stream receive, in order.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// Codec parameters or metadata changed (or a new publisher sent its own).
    Tracks(Arc<Tracks>),
    /// One frame.
    Frame(Arc<Frame>),
    /// The publisher left; the path waits for a republish during the grace period.
    Unpublished,
    /// A new publisher took the path over within the grace period.
    Republished,
    /// The stream is over: no publisher came back in time.
    Ended,
}

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

/// Gap left between the last frame of a publisher and the first of the one that replaces it
/// within the grace period.
const REPUBLISH_GAP_MS: i64 = 40;

/// A decode timestamp that goes back, or leaps forward by more than this, is a break in the
/// publisher's clock (an encoder restart, a camera resetting RTP time), not media.
pub const MAX_TIMESTAMP_LEAP_MS: i64 = 10_000;

/// Counters that metrics will expose.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Frames readers skipped to catch up with a keyframe.
    pub frames_dropped: AtomicU64,
    /// Readers disconnected for staying behind.
    pub readers_too_slow: AtomicU64,
    /// Publishers whose timestamps were shifted to follow on from the previous publisher.
    pub timestamp_rebases: AtomicU64,
    /// Jumps in a publisher's timestamps (back, or forward past [`MAX_TIMESTAMP_LEAP_MS`])
    /// smoothed over so readers' timestamps stay monotonic.
    pub timestamp_jumps: AtomicU64,
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
    /// Counters.
    pub stats: HubStats,
}

/// New streams announced to followers; one that lags this far re-scans `live_paths`.
const NEW_STREAM_QUEUE: usize = 256;

#[derive(Debug)]
pub struct Stream {
    path: String,
    tx: broadcast::Sender<Sequenced>,
    state: Mutex<StreamState>,
    /// Readers attached to the stream's fan-out, in shards: one fan-out task per shard, as
    /// many shards as the runtime has worker threads, so a popular stream's readers are
    /// written to from every core.
    shards: Vec<Shard>,
    /// When the fan-out writes (`hub.write_merge_ms`, `hub.load_merge_max_ms`).
    pacing: fanout::Pacing,
}

impl Stream {
    fn new(path: &str, queue: usize, pacing: fanout::Pacing) -> Stream {
        Stream {
            path: path.to_owned(),
            tx: broadcast::channel(queue).0,
            state: Mutex::new(StreamState::default()),
            shards: (0..fan_out_shards()).map(|_| Shard::default()).collect(),
            pacing,
        }
    }

    /// Readers: ring receivers but the fan-out tasks', and attached slots.
    fn readers(&self) -> usize {
        let tasks = self.shards.iter().filter(|s| s.started.load(Ordering::Relaxed)).count();
        let slots: usize = self.shards.iter().map(|s| lock(&s.slots).len()).sum();
        self.tx.receiver_count().saturating_sub(tasks) + slots
    }

    /// Puts an event in the ring, numbered. Called with the state locked, so the numbers and
    /// the subscription snapshots agree.
    fn send(&self, st: &mut StreamState, ev: HubEvent) {
        let seq = st.next_seq;
        st.next_seq += 1;
        let _ = self.tx.send((seq, ev));
    }

    /// The slots of one shard (for its fan-out task).
    pub(crate) fn slots(&self, shard: usize) -> MutexGuard<'_, Vec<Arc<Slot>>> {
        lock(&self.shards[shard].slots)
    }

    pub(crate) fn detach(&self, slot: &Arc<Slot>) {
        for s in &self.shards {
            lock(&s.slots).retain(|x| !Arc::ptr_eq(x, slot));
        }
    }
}

/// Part of a stream's readers, served by one fan-out task.
#[derive(Debug, Default)]
struct Shard {
    slots: Mutex<Vec<Arc<Slot>>>,
    /// The shard's fan-out task runs (it holds one receiver of the ring).
    started: AtomicBool,
}

/// Fan-out shards per stream: the runtime's worker threads.
fn fan_out_shards() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers()).max(1)
}

/// An event of a stream with its number in the stream.
pub type Sequenced = (u64, HubEvent);

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
    /// Last decode timestamp handed to readers, across publishers, in ms.
    last_dts_ms: Option<i64>,
    /// Added to this publisher's timestamps so they follow on from the previous one, in ms.
    ts_offset_ms: Option<i64>,
    /// Last decode timestamp handed out per track (video, audio), in ms.
    last_track_ms: [Option<i64>; 2],
    /// The last step between two frames of each track, in ms.
    last_step_ms: [i64; 2],
    /// Number of the next event in the ring, across publishers.
    next_seq: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent-enough data (plain fields); keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
            stats: HubStats::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Paths that have a publisher now.
    pub fn live_paths(&self) -> Vec<String> {
        let streams = lock(&self.streams);
        let mut v: Vec<String> =
            streams.values().filter(|s| lock(&s.state).publisher.is_some()).map(|s| s.path.clone()).collect();
        v.sort();
        v
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
                Arc::new(Stream::new(path, self.config.reader_queue_frames, pacing))
            })
            .clone();
        let mut st = lock(&stream.state);
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
        st.ts_offset_ms = None;
        if republish {
            stream.send(&mut st, HubEvent::Republished);
        }
        let generation = st.generation;
        drop(st);
        drop(streams);
        self.published.notify_waiters();
        if !republish {
            let _ = self.new_streams.send(path.to_owned());
        }
        Ok(Publisher { hub: self.clone(), stream, generation })
    }

    /// Follows new streams: each newly published path (not republishes) is announced.
    pub fn watch_new_streams(&self) -> broadcast::Receiver<String> {
        self.new_streams.subscribe()
    }

    /// True when a path has `limits.max_readers_per_stream` readers already.
    pub fn at_reader_limit(&self, path: &str) -> bool {
        lock(&self.streams).get(path).is_some_and(|s| s.readers() >= self.max_readers_per_stream)
    }

    /// Subscribes to a published path: the current tracks and GOP, then live events. None
    /// when there is no publisher, or the stream has its maximum of readers.
    pub fn subscribe(&self, path: &str) -> Option<Subscription> {
        let stream = lock(&self.streams).get(path)?.clone();
        let st = lock(&stream.state);
        st.publisher?;
        if stream.readers() >= self.max_readers_per_stream {
            return None;
        }
        let rx = stream.tx.subscribe();
        Some(Subscription {
            tracks: st.tracks.clone(),
            gop: st.gop.clone(),
            rx: Some(rx),
            start_seq: st.next_seq,
            stream: stream.clone(),
        })
    }

    /// Subscribes, waiting up to the configured play wait for a publisher to appear.
    pub async fn subscribe_wait(&self, path: &str) -> Option<Subscription> {
        let deadline = tokio::time::Instant::now() + ms(self.config.play_wait_ms);
        loop {
            let notified = self.published.notified();
            if let Some(s) = self.subscribe(path) {
                return Some(s);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    fn unpublish(self: &Arc<Self>, stream: &Arc<Stream>, generation: u64) {
        {
            let mut st = lock(&stream.state);
            if st.publisher != Some(generation) {
                return;
            }
            st.publisher = None;
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
            if streams.get(&stream.path).is_some_and(|s| Arc::ptr_eq(s, stream)) {
                streams.remove(&stream.path);
            }
        }
    }
}

/// A reader's view of a stream at subscription, and its live feed.
#[derive(Debug)]
pub struct Subscription {
    /// Tracks at the time of subscription.
    pub tracks: Arc<Tracks>,
    /// Frames from the latest keyframe, oldest first.
    pub gop: Vec<Arc<Frame>>,
    /// Events after the snapshot (None once attached to the fan-out instead).
    pub rx: Option<broadcast::Receiver<Sequenced>>,
    /// Number of the first event after the snapshot.
    start_seq: u64,
    stream: Arc<Stream>,
}

impl Subscription {
    /// The stream's tracks now (after a reader skipped events).
    pub fn current_tracks(&self) -> Arc<Tracks> {
        lock(&self.stream.state).tracks.clone()
    }

    /// Takes the events after the snapshot from the stream's fan-out task instead of the
    /// ring (see [`crate::fanout`]), with direct writes to `socket`; the ring receiver is
    /// dropped, so frames are freed once the fan-out task has handed them on.
    pub fn attach(&mut self, socket: Option<Arc<tokio::net::TcpStream>>, queue: usize) -> Attachment {
        let slot = Slot::new(socket, self.start_seq, queue);
        {
            // Under the state lock: the fan-out task starts at the next event, which is
            // after this snapshot.
            let _st = lock(&self.stream.state);
            let shards = &self.stream.shards;
            let i = (0..shards.len()).min_by_key(|&i| lock(&shards[i].slots).len()).unwrap_or(0);
            if !shards[i].started.swap(true, Ordering::Relaxed) {
                tokio::spawn(fanout::run(
                    Arc::downgrade(&self.stream),
                    i,
                    self.stream.tx.subscribe(),
                    self.stream.pacing,
                ));
            }
            lock(&shards[i].slots).push(slot.clone());
        }
        self.rx = None;
        Attachment::new(self.stream.clone(), slot)
    }
}

/// The right to publish one path. Dropping it unpublishes.
#[derive(Debug)]
pub struct Publisher {
    hub: Arc<Hub>,
    stream: Arc<Stream>,
    generation: u64,
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
        let tracks = Arc::new(tracks);
        st.tracks = tracks.clone();
        self.stream.send(&mut st, HubEvent::Tracks(tracks));
    }

    /// Hands a frame to every reader. Never waits.
    pub fn push(&self, kind: TrackKind, dts: i64, pts: i64, keyframe: bool, data: bytes::Bytes) {
        let max_gop = self.hub.config.max_gop_cache_bytes;
        let mut st = lock(&self.stream.state);
        // A publisher that replaced another within the grace period continues its timeline:
        // the explicit, counted correction that keeps readers' timestamps monotonic. The
        // offset is kept in milliseconds and applied in each track's own clock.
        let clock = match kind {
            TrackKind::Video => st.tracks.video.as_ref(),
            TrackKind::Audio => st.tracks.audio.as_ref(),
        }
        .map_or(1000, |t| t.clock_rate());
        let dts_ms = rescale(dts, clock, 1000);
        let offset_ms = match st.ts_offset_ms {
            Some(o) => o,
            None => {
                let o = match st.last_dts_ms {
                    Some(last) if st.generation > 1 => {
                        self.hub.stats.timestamp_rebases.fetch_add(1, Ordering::Relaxed);
                        last + REPUBLISH_GAP_MS - dts_ms
                    }
                    _ => 0,
                };
                st.ts_offset_ms = Some(o);
                o
            }
        };
        // A jump in this track's clock: continue from its last frame, one usual step later,
        // for every track (an encoder restart moves them all). Explicit and counted.
        let k = usize::from(kind == TrackKind::Audio);
        let mut offset_ms = offset_ms;
        let mut end_ms = dts_ms + offset_ms;
        if let Some(last) = st.last_track_ms[k] {
            let leap = end_ms - last;
            if !(0..=MAX_TIMESTAMP_LEAP_MS).contains(&leap) {
                self.hub.stats.timestamp_jumps.fetch_add(1, Ordering::Relaxed);
                offset_ms = last + st.last_step_ms[k].clamp(1, 1000) - dts_ms;
                st.ts_offset_ms = Some(offset_ms);
                end_ms = dts_ms + offset_ms;
            } else if leap > 0 {
                st.last_step_ms[k] = leap;
            }
        }
        st.last_track_ms[k] = Some(end_ms);
        let offset = rescale(offset_ms, 1000, clock);
        let frame = Frame::new(kind, dts + offset, pts + offset, keyframe, data);
        st.last_dts_ms = Some(st.last_dts_ms.map_or(end_ms, |l| l.max(end_ms)));
        let has_video = st.tracks.video.is_some();
        if has_video {
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
        self.stream.send(&mut st, HubEvent::Frame(frame));
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
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
            Ok(HubEvent::Frame(f)) => assert_eq!(f.dts, 5000 + REPUBLISH_GAP_MS),
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
}
