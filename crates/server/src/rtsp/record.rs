//! A stream published with ANNOUNCE + RECORD: RTP in (interleaved or UDP), depacketized into
//! frames with decode timestamps, into the hub.
//!
//! Tracks are indexed by their `m=` section in the announced SDP, every media line counting,
//! supported or not (the convention the RTSP session relies on for SETUP and channels). A
//! track the server cannot carry (a codec it does not know, a second video or audio track, an
//! application or text line) is named in the log once, is set up like any other so that the
//! other tracks publish (ffmpeg and GStreamer abandon the whole publish when one SETUP fails),
//! and its packets are discarded.
//!
//! The timeline is [`Timeline`]: arrival first, then the publisher's sender reports.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrocast_media::dts::DtsEstimator;
use ferrocast_media::{AudioCodec, TrackInfo, TrackKind, Tracks, VideoCodec, rescale};
use ferrocast_rtsp::codec::{Depacketizer, Reorder};
use ferrocast_rtsp::rtcp::{self, ReceiverStats};
use ferrocast_rtsp::rtp::RtpPacket;
use ferrocast_rtsp::sdp::{self, Media, Sdp};
use tracing::{debug, info, warn};

use super::random_u64;
use crate::hub::Publisher;

/// Extends 32-bit RTP timestamps across wraps.
#[derive(Debug, Default)]
struct Unwrap {
    last: Option<u32>,
    value: i64,
}

impl Unwrap {
    fn extend(&mut self, ts: u32) -> i64 {
        match self.last {
            None => self.value = 0,
            // Saturating: a hostile sender cannot overflow it with 2^32 steps of 2^31.
            Some(l) => self.value = self.value.saturating_add(i64::from(ts.wrapping_sub(l) as i32)),
        }
        self.last = Some(ts);
        self.value
    }

    /// Where `ts` falls on this clock, without moving it; `None` before the first timestamp.
    fn peek(&self, ts: u32) -> Option<i64> {
        Some(self.value + i64::from(ts.wrapping_sub(self.last?) as i32))
    }
}

/// Microseconds in a second: the unit of [`Timeline`]'s arithmetic.
const MICROS: u32 = 1_000_000;

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970), RFC 5905 6.
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// The largest shift the sender reports may make to a track against its arrival time. Real
/// publishers buffer a track by a few seconds at most; a larger shift means reports that do
/// not describe one clock (an NTP field left at zero, an encoder that stamps each track from
/// its own counter), and following them would throw the tracks minutes or hours apart. It is
/// also well under the hub's `MAX_TIMESTAMP_LEAP_MS`, so that the shift is not taken for a
/// jump of the publisher's clock.
pub const MAX_ALIGNMENT_SHIFT: Duration = Duration::from_secs(5);

/// An NTP timestamp (RFC 5905 6, 64-bit format) in microseconds since 1900.
fn ntp_micros(ntp: u64) -> i64 {
    let secs = (ntp >> 32) as i64;
    let frac = ((ntp & 0xffff_ffff) * u64::from(MICROS)) >> 32;
    secs * i64::from(MICROS) + frac as i64
}

/// A track's first sender report (RFC 3550 6.4.1): an RTP time and the NTP time of the same
/// instant on the publisher's clock.
#[derive(Debug, Clone, Copy)]
struct Report {
    rtp_time: u32,
    ntp: u64,
    /// The RTP time on the track's unwrapped clock, once that clock has started.
    media: Option<i64>,
}

/// One track's place on the timeline.
#[derive(Debug)]
struct TrackTime {
    /// Carried tracks take part; discarded ones never do.
    carried: bool,
    clock: u32,
    unwrap: Unwrap,
    /// Added to the track's unwrapped RTP time: its media time on the session timeline, in
    /// the track's clock. Set by the first frame, moved (forward only) by the alignment.
    offset: Option<i64>,
    /// The alignment's move of `offset` not made yet: video moves at its next keyframe (a
    /// move in the middle of a GOP would put B-frames out of display order).
    pending: i64,
    /// The last media time placed, and the smallest step between two frames seen: a video
    /// track moves by whole frames (a move by part of a frame puts every frame after it at
    /// another phase of the frame rate, where players and muxers that round times to frames
    /// take two frames for one).
    last_media: Option<i64>,
    min_step: Option<i64>,
    report: Option<Report>,
}

impl TrackTime {
    /// The alignment's move still to make, to the nearest whole frame.
    fn due_shift(&self) -> i64 {
        match self.min_step {
            Some(step) => (self.pending + step / 2) / step * step,
            None => self.pending,
        }
    }

    /// The NTP time (µs) of this track's media time 0, from its report.
    fn zero_ntp(&self) -> Option<i64> {
        let r = self.report?;
        Some(ntp_micros(r.ntp) - rescale(r.media?, self.clock, MICROS))
    }
}

/// Where each track's media time lands on the session timeline, the one rule of RTSP ingest
/// timing (DESIGN.md, Timeline):
/// - Each track starts from its arrival: its first frame is placed at the time since the
///   session started (a monotonic clock, so a step of the wall clock changes nothing, and no
///   subtraction of wall-clock times can underflow).
/// - Once the first sender report of every carried track is in, and its first frame has been
///   placed, the tracks are aligned once by the reports (a publisher that buffers one track arrives
///   with it late, but its reports say when it was captured): each track's NTP time of media
///   time 0 is compared, and the tracks that were placed too early move forward. No track
///   moves backward, so no reader sees time go back; a forward move is a gap in that track.
///   Counted and logged. Reports that would shift a track by more than
///   [`MAX_ALIGNMENT_SHIFT`] are not followed (logged once).
/// - Later reports do not move anything: the mapping is set once per publish.
#[derive(Debug, Default)]
pub struct Timeline {
    start: Option<Instant>,
    tracks: Vec<TrackTime>,
    /// `Some(k)` once aligned: the NTP time (µs) of session time 0.
    ntp_at_zero: Option<i64>,
    /// The alignment was refused (reports too far from arrival).
    refused: bool,
    /// The track whose sender report came first.
    first_report: Option<usize>,
    /// Shifts made by the alignment: (track index, µs).
    shifts: Vec<(usize, i64)>,
}

impl Timeline {
    /// A timeline of tracks with these RTP clock rates; `carried` says which take part.
    pub fn new(tracks: impl IntoIterator<Item = (u32, bool)>) -> Timeline {
        Timeline {
            tracks: tracks
                .into_iter()
                .map(|(clock, carried)| TrackTime {
                    carried,
                    clock: clock.max(1),
                    unwrap: Unwrap::default(),
                    offset: None,
                    pending: 0,
                    last_media: None,
                    min_step: None,
                    report: None,
                })
                .collect(),
            ..Timeline::default()
        }
    }

    /// The session starts (RECORD, or the first packet): arrival times count from here.
    pub fn start(&mut self, now: Instant) {
        self.start.get_or_insert(now);
    }

    /// The presentation time of a frame of track `i` with this RTP time, arrived at `now`.
    pub fn place(&mut self, i: usize, rtp_time: u32, now: Instant) -> i64 {
        self.place_frame(i, rtp_time, now, true)
    }

    /// As [`Timeline::place`]; the alignment moves the track only at a frame that may start
    /// a new timing (`may_move`: an audio frame, a video keyframe).
    pub fn place_frame(&mut self, i: usize, rtp_time: u32, now: Instant, may_move: bool) -> i64 {
        let start = *self.start.get_or_insert(now);
        let Some(t) = self.tracks.get_mut(i) else { return 0 };
        let media = t.unwrap.extend(rtp_time);
        if let Some(r) = t.report.as_mut()
            && r.media.is_none()
        {
            r.media = t.unwrap.peek(r.rtp_time);
        }
        if t.offset.is_none() {
            // Arrival: the time since the session started, on the monotonic clock.
            t.offset = Some(rescale(now.saturating_duration_since(start).as_micros() as i64, MICROS, t.clock));
        }
        if let Some(last) = t.last_media {
            let step = media.saturating_sub(last).saturating_abs();
            if step > 0 {
                t.min_step = Some(t.min_step.map_or(step, |m| m.min(step)));
            }
        }
        t.last_media = Some(media);
        if may_move && t.pending > 0 {
            let shift = t.due_shift();
            t.offset = t.offset.map(|o| o.saturating_add(shift));
            t.pending = 0;
        }
        let pts = media + t.offset.unwrap_or(0);
        self.align();
        pts
    }

    /// The first sender report of track `i` (later ones are not used for timing).
    pub fn on_sender_report(&mut self, i: usize, ntp: u64, rtp_time: u32) {
        let Some(t) = self.tracks.get_mut(i) else { return };
        if t.report.is_some() || !t.carried {
            return;
        }
        t.report = Some(Report { rtp_time, ntp, media: t.unwrap.peek(rtp_time) });
        self.first_report.get_or_insert(i);
        self.align();
    }

    /// Aligns the tracks once every carried one has reported and has been placed (its arrival
    /// is a bound too: no track is put earlier than it arrived).
    fn align(&mut self) {
        if self.ntp_at_zero.is_some() || self.refused {
            return;
        }
        if self.tracks.iter().filter(|t| t.carried).any(|t| t.report.is_none() || t.offset.is_none()) {
            return;
        }
        // Session time 0 in NTP µs, so that no placed track moves back: the latest of what
        // each placed track implies.
        let Some(k) = self
            .tracks
            .iter()
            .filter(|t| t.carried)
            .filter_map(|t| Some(t.zero_ntp()? - rescale(t.offset?, t.clock, MICROS)))
            .min()
        else {
            return;
        };
        let mut shifts = Vec::new();
        for (i, t) in self.tracks.iter().enumerate().filter(|(_, t)| t.carried) {
            if let (Some(offset), Some(zero)) = (t.offset, t.zero_ntp()) {
                let shift = zero - k - rescale(offset, t.clock, MICROS);
                shifts.push((i, shift.max(0)));
            }
        }
        if shifts.iter().any(|&(_, s)| s > MAX_ALIGNMENT_SHIFT.as_micros() as i64) {
            self.refused = true;
            self.shifts = shifts;
            return;
        }
        for &(i, shift) in &shifts {
            let t = &mut self.tracks[i];
            t.pending = rescale(shift, MICROS, t.clock).max(0);
        }
        self.ntp_at_zero = Some(k);
        self.shifts = shifts;
    }

    /// Whether a track still has to make the alignment's move (video waits for a keyframe).
    pub fn moves_pending(&self) -> bool {
        self.tracks.iter().any(|t| t.pending != 0)
    }

    /// The first sender report as a point of the stream's media-to-wall-clock mapping: (track
    /// index, its presentation time on this timeline, its capture time in Unix µs). Known once
    /// the tracks are aligned; `None` before, or when the report's NTP time is before 1970
    /// (a publisher counting NTP from its boot).
    pub fn first_report(&self) -> Option<(usize, i64, u64)> {
        self.ntp_at_zero?;
        let i = self.first_report?;
        let t = &self.tracks[i];
        let r = t.report?;
        let unix = (ntp_micros(r.ntp) as u64).checked_sub(NTP_UNIX_OFFSET_SECS * u64::from(MICROS))?;
        if self.tracks.iter().any(|t| t.pending != 0) {
            // Anchored where the tracks are once moved, not where they are to go.
            return None;
        }
        Some((i, r.media? + t.offset?, unix))
    }
}

struct InTrack {
    kind: TrackKind,
    depacketizer: Depacketizer,
    reorder: Reorder,
    dts: Option<DtsEstimator>,
    stats: ReceiverStats,
    /// (RTP time, arrival) of the first packet, for the jitter estimate.
    first: Option<(u32, Instant)>,
    ssrc: u32,
    /// Packets and frames dropped (loss, bad payloads).
    dropped: u64,
}

/// One `m=` section of the announced SDP.
struct Slot {
    media: Media,
    /// `None`: a track the server does not carry; its packets are counted and discarded.
    track: Option<Box<InTrack>>,
    discarded: u64,
}

/// State of one RTSP publisher.
pub struct Recording {
    publisher: Publisher,
    slots: Vec<Slot>,
    info: Tracks,
    timeline: Timeline,
    /// Whether the alignment by sender reports has been logged.
    alignment_logged: bool,
}

fn reorder_depth(track: &TrackInfo) -> usize {
    match track {
        TrackInfo::Video { codec: VideoCodec::H264, config, .. } => {
            // Baseline (66) and Constrained Baseline have no B-frames.
            if config.get(1) == Some(&66) { 0 } else { 2 }
        }
        TrackInfo::Video { .. } => 3,
        TrackInfo::Audio { .. } => 0,
    }
}

/// Whether readers can use a track as it is: video and AAC need their configuration (some
/// publishers send it only in band).
fn has_config(t: &TrackInfo) -> bool {
    match t {
        TrackInfo::Video { config, .. } | TrackInfo::Audio { codec: AudioCodec::Aac, config, .. } => !config.is_empty(),
        TrackInfo::Audio { .. } => true,
    }
}

/// Gives readers the tracks they can use: nothing while the video's parameters are unknown,
/// and an AAC track only once its AudioSpecificConfig is known.
fn publish_tracks(publisher: &Publisher, info: &Tracks) {
    if info.video.as_ref().is_some_and(|v| !has_config(v)) {
        return;
    }
    let mut tracks = info.clone();
    if tracks.audio.as_ref().is_some_and(|a| !has_config(a)) {
        tracks.audio = None;
    }
    if tracks.video.is_some() || tracks.audio.is_some() {
        publisher.set_tracks(tracks);
    }
}

impl Recording {
    /// A recording of the announced SDP: one track per `m=` section, the first video and the
    /// first audio that ferrocast can carry published, any other discarded (named in the log).
    pub fn new(publisher: Publisher, sdp: &Sdp) -> Result<Recording, String> {
        let mut slots = Vec::new();
        let mut info = Tracks::default();
        for (index, m) in sdp.media.iter().enumerate() {
            let known = sdp::track_info(m);
            // Codec configurations checked before readers see them (bad entries dropped).
            let checked = known.clone().and_then(|t| crate::ingest::checked_track(publisher.path(), t));
            let track = checked.and_then(|t| {
                let kind = t.kind();
                let slot = match kind {
                    TrackKind::Video => &mut info.video,
                    TrackKind::Audio => &mut info.audio,
                };
                if slot.is_some() {
                    warn!(
                        path = publisher.path(),
                        index,
                        encoding = m.encoding,
                        "rtsp announce: a second {kind:?} track is not carried; its packets are discarded"
                    );
                    return None;
                }
                let depacketizer = Depacketizer::new(&t, m)?;
                // Before the stream shows its frame rate, 30 fps is as good a guess as any.
                let dts = (kind == TrackKind::Video)
                    .then(|| DtsEstimator::new(reorder_depth(&t), i64::from(t.clock_rate() / 30)));
                *slot = Some(t);
                Some(Box::new(InTrack {
                    kind,
                    depacketizer,
                    reorder: Reorder::default(),
                    dts,
                    stats: ReceiverStats::default(),
                    first: None,
                    ssrc: random_u64() as u32,
                    dropped: 0,
                }))
            });
            if known.is_none() {
                warn!(
                    path = publisher.path(),
                    index,
                    media = m.kind,
                    encoding = m.encoding,
                    "rtsp announce: a track ferrocast cannot carry; its packets are discarded"
                );
            }
            slots.push(Slot { media: m.clone(), track, discarded: 0 });
        }
        if slots.iter().all(|s| s.track.is_none()) {
            return Err("no supported track (H.264, H.265, AAC, Opus, G.711) in the SDP".into());
        }
        let timeline = Timeline::new(slots.iter().map(|s| (s.media.clock_rate, s.track.is_some())));
        let r = Recording { publisher, slots, info, timeline, alignment_logged: false };
        // Parameters known from the SDP go to readers at once; in-band ones follow.
        publish_tracks(&r.publisher, &r.info);
        Ok(r)
    }

    /// Number of tracks carried.
    pub fn track_count(&self) -> usize {
        self.slots.iter().filter(|s| s.track.is_some()).count()
    }

    /// RECORD accepted: the session timeline starts.
    pub fn start(&mut self) {
        self.timeline.start(Instant::now());
    }

    /// An RTP packet for track `index`; UDP packets go through the reorder buffer.
    pub fn on_rtp(&mut self, index: usize, data: Bytes, udp: bool) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        let clock = slot.media.clock_rate.max(1);
        let Some(t) = slot.track.as_mut() else {
            slot.discarded += 1;
            return;
        };
        let packet = match RtpPacket::parse(data) {
            Ok(p) => p,
            Err(e) => {
                t.dropped += 1;
                debug!(path = self.publisher.path(), "rtsp record: {e}");
                return;
            }
        };
        self.timeline.start(now);
        // Arrival time in RTP units, anchored at the first packet (RFC 3550 A.8).
        let (first_ts, first_arrival) = *t.first.get_or_insert((packet.timestamp, now));
        let since = rescale(now.saturating_duration_since(first_arrival).as_micros() as i64, MICROS, clock) as u32;
        t.stats.on_packet(packet.ssrc, packet.sequence, packet.timestamp, first_ts.wrapping_add(since));
        let in_order = if udp { t.reorder.push(packet) } else { vec![packet] };
        for p in in_order {
            if let Err(e) = t.depacketizer.push(&p) {
                t.dropped += 1;
                debug!(path = self.publisher.path(), "rtsp record: {e}");
            }
        }
        if let Some(config) = t.depacketizer.take_new_config() {
            let changed = match (t.kind, self.info.video.as_mut(), self.info.audio.as_mut()) {
                (TrackKind::Video, Some(TrackInfo::Video { codec, config: c, .. }), _) => {
                    match crate::ingest::checked_video_config(self.publisher.path(), *codec, config) {
                        Some(config) if *c != config => {
                            *c = config;
                            true
                        }
                        _ => false,
                    }
                }
                (TrackKind::Audio, _, Some(a @ TrackInfo::Audio { codec: AudioCodec::Aac, .. })) => {
                    // An AudioSpecificConfig that came in band (LATM): rate and channels too.
                    match ferrocast_media::aac::track(config, a.clock_rate()) {
                        Ok(new) if new != *a => {
                            *a = new;
                            true
                        }
                        Ok(_) => false,
                        Err(e) => {
                            debug!(path = self.publisher.path(), "rtsp record: in-band AAC config: {e}");
                            false
                        }
                    }
                }
                _ => false,
            };
            if changed {
                publish_tracks(&self.publisher, &self.info);
            }
        }
        let audio_usable = self.info.audio.as_ref().is_some_and(has_config);
        while let Some(au) = t.depacketizer.pull() {
            if t.kind == TrackKind::Audio && !audio_usable {
                // AAC frames before their configuration is known cannot be decoded.
                t.dropped += 1;
                continue;
            }
            let may_move = t.kind == TrackKind::Audio || au.keyframe;
            let pts = self.timeline.place_frame(index, au.rtp_time, now, may_move);
            let (dts, pts) = match t.dts.as_mut() {
                Some(e) => e.next(pts),
                None => (pts, pts),
            };
            self.publisher.push(t.kind, dts, pts, au.keyframe, au.data);
        }
        self.log_alignment();
    }

    /// A sender report from the publisher for track `index`: for LSR/DLSR in our receiver
    /// reports, and (the first of each track) to align the tracks.
    pub fn on_sender_report(&mut self, index: usize, ntp: u64, rtp_time: u32) {
        if let Some(t) = self.slots.get_mut(index).and_then(|s| s.track.as_mut()) {
            t.stats.on_sender_report(ntp, super::unix_micros());
            self.timeline.on_sender_report(index, ntp, rtp_time);
            self.log_alignment();
        }
    }

    fn log_alignment(&mut self) {
        if self.alignment_logged || self.timeline.shifts.is_empty() {
            return;
        }
        if !self.timeline.refused && self.timeline.first_report().is_none() && self.timeline.moves_pending() {
            // Video moves at its next keyframe: the anchor is taken once it has.
            return;
        }
        self.alignment_logged = true;
        let shifts: Vec<String> =
            self.timeline.shifts.iter().map(|(i, us)| format!("track {i} +{:.3} s", *us as f64 / 1e6)).collect();
        if self.timeline.refused {
            warn!(
                path = self.publisher.path(),
                shifts = shifts.join(", "),
                "rtsp record: sender reports too far from arrival times (over {:?}); tracks stay aligned by arrival",
                MAX_ALIGNMENT_SHIFT
            );
        } else {
            let first = self.first_sender_report();
            if let Some((kind, ts, unix)) = first {
                self.publisher.anchor_capture_time(kind, ts, unix);
            }
            let anchor = first.map(|(kind, ts, unix)| format!("{kind:?} {ts} at {unix} µs"));
            info!(
                path = self.publisher.path(),
                shifts = shifts.join(", "),
                anchor,
                "rtsp record: tracks aligned by sender reports"
            );
        }
    }

    /// The stream's media-to-wall-clock anchor from the publisher's first sender report:
    /// (track kind, presentation time in that track's clock as pushed to the hub, capture
    /// time in Unix µs). Known once the tracks are aligned; given to
    /// [`crate::hub::Publisher::anchor_capture_time`] when they are.
    pub fn first_sender_report(&self) -> Option<(TrackKind, i64, u64)> {
        let (index, ts, unix) = self.timeline.first_report()?;
        Some((self.slots[index].track.as_ref()?.kind, ts, unix))
    }

    /// Receiver reports to send, per track index.
    pub fn receiver_reports(&mut self, now_micros: u64) -> Vec<(usize, Bytes)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.track.as_mut()?)))
            .filter(|(_, t)| t.stats.extended_max() > 0)
            .map(|(i, t)| {
                let block = t.stats.report(now_micros);
                if block.cumulative_lost > 0 {
                    debug!(
                        track = i,
                        lost = block.cumulative_lost,
                        fraction = block.fraction_lost,
                        jitter = block.jitter,
                        dropped = t.dropped,
                        "rtsp record: loss"
                    );
                }
                (i, rtcp::receiver_report(t.ssrc, &block, "ferrocast"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NTP time of `secs` after the Unix epoch.
    fn ntp(secs: f64) -> u64 {
        let s = secs.floor();
        (((s as u64) + NTP_UNIX_OFFSET_SECS) << 32) | (((secs - s) * 4_294_967_296.0) as u64)
    }

    const T0: f64 = 1_800_000_000.0;
    const VIDEO: usize = 0;
    const AUDIO: usize = 1;

    fn timeline() -> (Timeline, Instant) {
        let mut t = Timeline::new([(90_000, true), (48_000, true)]);
        let now = Instant::now();
        t.start(now);
        (t, now)
    }

    #[test]
    fn arrival_places_each_track_at_its_first_frame() {
        let (mut t, now) = timeline();
        assert_eq!(t.place(VIDEO, 1_000, now), 0);
        assert_eq!(t.place(VIDEO, 4_000, now), 3_000);
        // Audio's first frame arrives 2 s later: 2 s into the session.
        let later = now + Duration::from_secs(2);
        assert_eq!(t.place(AUDIO, 777, later), 96_000);
        assert_eq!(t.place(AUDIO, 777 + 1024, later), 97_024);
        assert!(t.first_report().is_none());
    }

    #[test]
    fn sender_reports_align_tracks_that_arrived_apart_without_moving_any_back() {
        // Both tracks captured from T0; audio arrives 2 s late (buffered by the publisher).
        let (mut t, now) = timeline();
        t.on_sender_report(VIDEO, ntp(T0), 1_000);
        assert_eq!(t.place(VIDEO, 1_000, now), 0);
        assert_eq!(t.place(VIDEO, 1_000 + 180_000, now + Duration::from_secs(2)), 180_000);
        let later = now + Duration::from_secs(2);
        // Audio's report says its RTP time 5000 was captured at T0 too.
        t.on_sender_report(AUDIO, ntp(T0), 5_000);
        let a0 = t.place(AUDIO, 5_000, later);
        assert_eq!(a0, 96_000, "audio keeps its arrival place");
        // Video moves forward by 2 s: media time 2 s is now at 4 s, with audio's 2 s.
        let v = t.place(VIDEO, 1_000 + 180_000 + 3_000, later);
        assert_eq!(v, 180_000 + 3_000 + 180_000);
        let a = t.place(AUDIO, 5_000 + 96_000, later);
        assert_eq!(rescale(v, 90_000, 1000), rescale(a, 48_000, 1000) + 33, "aligned to the frame");
        assert_eq!(t.shifts, [(VIDEO, 2_000_000), (AUDIO, 0)]);
        // The anchor: video's report, at its new place, captured at T0.
        assert_eq!(t.first_report(), Some((VIDEO, 180_000, (T0 * 1e6) as u64)));
        // Later reports do not move anything.
        t.on_sender_report(AUDIO, ntp(T0 + 5.0), 5_000);
        assert_eq!(t.place(AUDIO, 5_000 + 96_000 + 1024, later), a + 1024);
    }

    #[test]
    fn the_alignment_waits_for_every_track_and_never_puts_one_before_its_arrival() {
        let (mut t, now) = timeline();
        t.on_sender_report(AUDIO, ntp(T0 + 0.5), 0);
        t.on_sender_report(VIDEO, ntp(T0), 0);
        assert_eq!(t.place(VIDEO, 0, now), 0);
        assert!(t.ntp_at_zero.is_none(), "audio has not arrived yet");
        // Audio media 0 was captured 0.5 s after video's; it arrives 3 s in: it stays there
        // and video moves 2.5 s forward.
        assert_eq!(t.place(AUDIO, 0, now + Duration::from_secs(3)), 3 * 48_000);
        assert_eq!(t.place(VIDEO, 0, now), 225_000);
    }

    #[test]
    fn video_moves_at_its_next_keyframe_only() {
        let (mut t, now) = timeline();
        t.on_sender_report(VIDEO, ntp(T0), 0);
        t.on_sender_report(AUDIO, ntp(T0 + 0.5), 0);
        assert_eq!(t.place_frame(VIDEO, 0, now, true), 0);
        assert_eq!(t.place_frame(AUDIO, 0, now + Duration::from_secs(3), true), 3 * 48_000);
        // Aligned: video is to move 2.5 s, but not in the middle of its GOP (B-frames there
        // would leave display order).
        assert_eq!(t.place_frame(VIDEO, 3_000, now, false), 3_000);
        assert_eq!(t.first_report(), None, "anchored once video has moved");
        assert_eq!(t.place_frame(VIDEO, 6_000, now, true), 225_000 + 6_000, "moved at the keyframe");
        assert_eq!(t.first_report().map(|r| (r.0, r.1)), Some((VIDEO, 225_000)), "the anchor is where video is");
        assert_eq!(t.place_frame(VIDEO, 9_000, now, false), 225_000 + 9_000);
    }

    #[test]
    fn video_moves_by_whole_frames() {
        let (mut t, now) = timeline();
        t.on_sender_report(VIDEO, ntp(T0), 0);
        t.on_sender_report(AUDIO, ntp(T0 + 0.51), 0);
        t.place_frame(VIDEO, 0, now, true);
        assert_eq!(t.place_frame(VIDEO, 3_000, now, false), 3_000);
        t.place_frame(AUDIO, 0, now + Duration::from_secs(3), true);
        // 2.49 s is 224,100 ticks: 74.7 frames of 3,000; it moves 75 frames.
        assert_eq!(t.place_frame(VIDEO, 6_000, now, true), 6_000 + 225_000);
        assert_eq!(t.first_report().map(|r| r.1), Some(225_000));
    }

    #[test]
    fn alignment_shift_too_large() {
        // Reports 60 s apart (an encoder stamping each track from its own counter): refused,
        // the tracks stay where arrival put them.
        let (mut t, now) = timeline();
        t.on_sender_report(VIDEO, ntp(T0 + 60.0), 0);
        t.on_sender_report(AUDIO, ntp(T0), 0);
        assert_eq!(t.place(VIDEO, 0, now), 0);
        assert_eq!(t.place(AUDIO, 0, now + Duration::from_secs(1)), 48_000);
        assert!(t.refused);
        assert_eq!(t.place(VIDEO, 3_000, now), 3_000);
        assert!(t.first_report().is_none());
        // Within the bound it is followed.
        let (mut t, now) = timeline();
        t.on_sender_report(VIDEO, ntp(T0 + 4.5), 0);
        t.on_sender_report(AUDIO, ntp(T0), 0);
        t.place(VIDEO, 0, now);
        assert_eq!(t.place(AUDIO, 0, now), 0);
        assert_eq!(t.place(VIDEO, 0, now), 405_000);
        // Under the hub's jump limit (MAX_TIMESTAMP_LEAP_MS, 10 s on this branch).
        assert!(MAX_ALIGNMENT_SHIFT < Duration::from_secs(10));
    }

    #[test]
    fn discarded_tracks_take_no_part_and_ntp_before_1970_gives_no_anchor() {
        let mut t = Timeline::new([(90_000, true), (8_000, false)]);
        let now = Instant::now();
        // A publisher counting NTP from its boot.
        t.on_sender_report(VIDEO, 10 << 32, 0);
        assert_eq!(t.place(VIDEO, 0, now), 0);
        assert!(t.ntp_at_zero.is_some(), "the discarded track is not waited for");
        assert_eq!(t.first_report(), None);
    }

    #[test]
    fn rtp_wraps_and_an_earlier_start_never_underflow() {
        let (mut t, now) = timeline();
        // A frame stamped before the session start (a clock read earlier) counts as at 0.
        assert_eq!(t.place(VIDEO, u32::MAX - 1_499, now - Duration::from_secs(5)), 0);
        assert_eq!(t.place(VIDEO, 1_500, now), 3_000);
    }
}
