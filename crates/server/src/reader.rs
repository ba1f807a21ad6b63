//! What every reader shares, whatever its protocol: the walk through a subscription with
//! bounded lag (skip to the next keyframe, codec parameters first; disconnect a reader that
//! stays behind), and the mapping of hub events to FLV tags that RTMP and HTTP-FLV both send.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrocast_media::{Frame, TrackInfo, TrackKind, Tracks, flv};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::event::{HubEvent, Sequenced};
use crate::fanout::{Attachment, Slot};
use crate::hub::{Hub, Subscription};

/// What a reader is told, in order.
#[derive(Debug, Clone)]
pub enum ReaderItem {
    /// Tracks to (re)send before the frames that follow.
    Tracks(Arc<Tracks>),
    /// A frame to send.
    Frame(Arc<Frame>),
    /// The publisher left; the path is in its grace period.
    Unpublished,
    /// A new publisher took over; sequence headers will be resent.
    Republished,
    /// The stream is over.
    Ended,
    /// This reader stayed behind too long and must be disconnected.
    TooSlow,
}

/// A reader's cursor over a stream.
#[derive(Debug)]
pub struct Reader {
    hub: Arc<Hub>,
    sub: Subscription,
    backlog: VecDeque<ReaderItem>,
    waiting_for_keyframe: bool,
    has_video: bool,
    skips: VecDeque<Instant>,
    /// Frames this reader skipped.
    pub dropped: u64,
    /// Set when events come from the stream's fan-out task (see [`crate::fanout`]) rather
    /// than the ring.
    attachment: Option<Attachment>,
    /// The reader's session: skipped frames are counted there too.
    session: Option<Arc<crate::session::SessionInfo>>,
}

const SKIP_WINDOW: Duration = Duration::from_secs(60);

impl Reader {
    /// Starts at the subscription's snapshot: tracks, then the GOP. The GOP is handed over:
    /// each of its frames is let go once sent, not kept for the reader's life.
    pub fn new(hub: Arc<Hub>, mut sub: Subscription) -> Reader {
        let gop = std::mem::take(&mut sub.gop);
        let mut backlog = VecDeque::with_capacity(gop.len() + 1);
        backlog.push_back(ReaderItem::Tracks(sub.tracks.clone()));
        // Without a GOP to start from, wait for a keyframe.
        let has_video = sub.tracks.video.is_some();
        let waiting_for_keyframe = has_video && gop.is_empty();
        backlog.extend(gop.into_iter().map(ReaderItem::Frame));
        Reader {
            hub,
            sub,
            backlog,
            waiting_for_keyframe,
            has_video,
            skips: VecDeque::new(),
            dropped: 0,
            attachment: None,
            session: None,
        }
    }

    /// Like [`Reader::new`], taking events from the stream's fan-out task, which writes
    /// frames to `socket` itself while this reader keeps up (see [`crate::fanout`]).
    pub fn attached(hub: Arc<Hub>, mut sub: Subscription, socket: Option<Arc<tokio::net::TcpStream>>) -> Reader {
        let queue = hub.config().reader_queue_frames;
        let attachment = sub.attach(socket, queue);
        let mut r = Reader::new(hub, sub);
        r.attachment = Some(attachment);
        r
    }

    /// Counts this reader's skipped frames, and the bytes the fan-out writes for it, in its
    /// session.
    pub fn set_session(&mut self, session: Arc<crate::session::SessionInfo>) {
        if let Some(slot) = self.slot() {
            slot.count_into(session.clone());
        }
        self.session = Some(session);
    }

    /// Counts `n` skipped frames.
    fn skipped(&mut self, n: u64) {
        self.dropped += n;
        self.hub.stats.frames_dropped.fetch_add(n, Ordering::Relaxed);
        if let Some(s) = &self.session {
            s.frames_skipped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The fan-out slot of an attached reader.
    pub fn slot(&self) -> Option<&Arc<Slot>> {
        self.attachment.as_ref().map(Attachment::slot)
    }

    /// True when the reader is in step with the live stream: its start-up GOP is sent, it
    /// took the events the fan-out had passed when it joined, and it is not skipping to a
    /// keyframe. Only then may the fan-out write for it.
    pub fn is_live(&self) -> bool {
        self.backlog.is_empty() && !self.waiting_for_keyframe && self.catching_up().is_none()
    }

    /// While an attached reader takes from its own ring receiver the events that the
    /// fan-out passed before it joined: the first event the fan-out gives it.
    fn catching_up(&self) -> Option<u64> {
        let a = self.attachment.as_ref()?;
        self.sub.rx.as_ref().map(|_| a.floor())
    }

    /// An event from the reader's ring receiver: None for one that an attached reader gets
    /// from the fan-out instead (it has caught up then, and stops reading the ring).
    fn ring_event(&mut self, r: Result<Sequenced, RecvError>) -> Option<Result<Sequenced, RecvError>> {
        let Some(floor) = self.catching_up() else { return Some(r) };
        match &r {
            Ok((seq, _)) if *seq < floor => Some(r),
            // Caught up (or lagged: the fan-out's slot goes on from its floor).
            _ => {
                self.sub.rx = None;
                r.is_err().then_some(r)
            }
        }
    }

    /// The tracks at subscription time.
    pub fn initial_tracks(&self) -> &Arc<Tracks> {
        &self.sub.tracks
    }

    /// Skip to the next keyframe, as after a pause.
    pub fn resync(&mut self) {
        self.waiting_for_keyframe = self.has_video;
    }

    /// The next item, waiting for one.
    pub async fn next(&mut self) -> ReaderItem {
        loop {
            if let Some(item) = self.backlog.pop_front() {
                self.release_backlog();
                return item;
            }
            let r = match (&mut self.sub.rx, &self.attachment) {
                (Some(rx), _) => {
                    let r = rx.recv().await;
                    match self.ring_event(r) {
                        Some(r) => r,
                        None => continue,
                    }
                }
                (None, Some(a)) => match a.slot().pop() {
                    Some(r) => slot_result(r),
                    None => {
                        a.slot().changed().await;
                        continue;
                    }
                },
                (None, None) => Err(RecvError::Closed),
            };
            if let Some(item) = self.accept(r) {
                return item;
            }
        }
    }

    /// The GOP a reader starts with is read once: its queue is freed, not kept per reader.
    fn release_backlog(&mut self) {
        if self.backlog.is_empty() && self.backlog.capacity() > 8 {
            self.backlog = VecDeque::new();
        }
    }

    /// The next item if one is ready now.
    pub fn try_next(&mut self) -> Option<ReaderItem> {
        loop {
            if let Some(item) = self.backlog.pop_front() {
                self.release_backlog();
                return Some(item);
            }
            let r = match (&mut self.sub.rx, &self.attachment) {
                (Some(rx), _) => {
                    let r = match rx.try_recv() {
                        Ok(e) => Ok(e),
                        Err(TryRecvError::Empty) => return None,
                        Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                        Err(TryRecvError::Closed) => Err(RecvError::Closed),
                    };
                    match self.ring_event(r) {
                        Some(r) => r,
                        None => continue,
                    }
                }
                (None, Some(a)) => slot_result(a.slot().pop()?),
                (None, None) => Err(RecvError::Closed),
            };
            if let Some(item) = self.accept(r) {
                return Some(item);
            }
        }
    }

    fn accept(&mut self, r: Result<Sequenced, RecvError>) -> Option<ReaderItem> {
        match r.map(|(_, ev)| ev) {
            Ok(HubEvent::Frame(f)) => {
                if self.waiting_for_keyframe {
                    let starts = f.kind == TrackKind::Video && f.keyframe;
                    if !starts {
                        self.skipped(1);
                        return None;
                    }
                    self.waiting_for_keyframe = false;
                }
                Some(ReaderItem::Frame(f))
            }
            Ok(HubEvent::Tracks(t)) => {
                self.has_video = t.video.is_some();
                Some(ReaderItem::Tracks(t))
            }
            Ok(HubEvent::Unpublished) => Some(ReaderItem::Unpublished),
            Ok(HubEvent::Republished) => {
                self.resync();
                Some(ReaderItem::Republished)
            }
            Ok(HubEvent::Ended) | Err(RecvError::Closed) => Some(ReaderItem::Ended),
            Err(RecvError::Lagged(n)) => {
                self.skipped(n);
                let now = Instant::now();
                self.skips.push_back(now);
                while self.skips.front().is_some_and(|t| now.duration_since(*t) > SKIP_WINDOW) {
                    self.skips.pop_front();
                }
                if self.skips.len() > self.hub.config().max_reader_skips_per_minute as usize {
                    self.hub.stats.readers_too_slow.fetch_add(1, Ordering::Relaxed);
                    return Some(ReaderItem::TooSlow);
                }
                // Codec parameters first, then the next keyframe.
                let tracks = self.sub.current_tracks();
                self.has_video = tracks.video.is_some();
                self.resync();
                Some(ReaderItem::Tracks(tracks))
            }
        }
    }
}

/// A slot's event as a ring receiver would have given it.
fn slot_result(r: Result<HubEvent, u64>) -> Result<Sequenced, RecvError> {
    r.map(|ev| (0, ev)).map_err(RecvError::Lagged)
}

/// One thing to send to an FLV-speaking reader.
#[derive(Debug)]
pub enum Tag {
    /// A tag whose body is built for this reader (metadata, sequence headers: rare).
    Own {
        /// FLV tag type (8 audio, 9 video, 18 script).
        tag_type: u8,
        /// Timestamp in ms.
        timestamp: i64,
        /// The body.
        body: Bytes,
    },
    /// A frame, whose wire form is built once and shared (see [`Frame::wire`]).
    Frame {
        /// The frame.
        frame: Arc<Frame>,
        /// Its track's parameters, for building the wire form.
        track: TrackInfo,
    },
}

/// The parameters of a frame's track, if FLV (RTMP, HTTP-FLV) can carry it.
pub fn flv_track(tracks: &Tracks, kind: TrackKind) -> Option<&TrackInfo> {
    let track = match kind {
        TrackKind::Video => &tracks.video,
        TrackKind::Audio => &tracks.audio,
    };
    track.as_ref().filter(|t| flv::carries(t))
}

/// Turns reader items into FLV tags, sending metadata and sequence headers only when they
/// change (or after a republish). Tracks are compared only when a new set arrives, never per
/// frame.
#[derive(Debug, Default)]
pub struct TagFeed {
    sent: Tracks,
    current: Arc<Tracks>,
    /// New tracks arrived (or a reset): compare with what was sent before the next frame.
    changed: bool,
}

impl TagFeed {
    /// True when the tags of the current tracks are sent (no new tracks wait for a frame).
    pub fn settled(&self) -> bool {
        !self.changed
    }

    /// The tracks frames are sent with.
    pub fn current(&self) -> &Arc<Tracks> {
        &self.current
    }

    /// Forgets what was sent, so the next tracks are sent in full.
    pub fn reset(&mut self) {
        self.sent = Tracks::default();
        self.changed = true;
    }

    /// Records new tracks; their tags go out before the next frame.
    pub fn tracks(&mut self, tracks: &Arc<Tracks>) {
        self.current = tracks.clone();
        self.changed = true;
    }

    /// The tags for a frame: any changed parameters, then the frame. Frames of a track whose
    /// parameters are not known yet (or that FLV cannot carry) are dropped.
    pub fn frame(&mut self, frame: Arc<Frame>, out: &mut Vec<Tag>) {
        let Some(track) = flv_track(&self.current, frame.kind) else {
            return;
        };
        let ts = track.to_ms(frame.dts);
        if std::mem::take(&mut self.changed) {
            let current = &self.current;
            if current.metadata != self.sent.metadata {
                if let Some(m) = &current.metadata {
                    // At 0: ffmpeg's FLV demuxer takes a script tag with a later timestamp
                    // for a data stream instead of metadata (libavformat/flvdec.c, 5.1+).
                    out.push(Tag::Own { tag_type: flv::TAG_SCRIPT, timestamp: 0, body: m.clone() });
                }
                self.sent.metadata = current.metadata.clone();
            }
            for (cur, sent, tag_type) in [
                (&current.video, &mut self.sent.video, flv::TAG_VIDEO),
                (&current.audio, &mut self.sent.audio, flv::TAG_AUDIO),
            ] {
                if cur != sent {
                    if let Some(body) = cur.as_ref().and_then(flv::config_body) {
                        out.push(Tag::Own { tag_type, timestamp: ts, body });
                    }
                    sent.clone_from(cur);
                }
            }
        }
        out.push(Tag::Frame { frame, track: track.clone() });
    }
}
