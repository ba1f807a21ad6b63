//! Cutting frames into segments and keeping the live window.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferrocast_media::ts::TsMuxer;
use ferrocast_media::{Frame, TrackKind, Tracks, fmp4};

/// The segment container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// MPEG-TS segments (`.ts`).
    MpegTs,
    /// fMP4/CMAF segments (`.m4s`) with an init segment (`.mp4`).
    Fmp4,
}

/// Segmenter settings.
#[derive(Debug, Clone)]
pub struct SegmenterConfig {
    /// Container.
    pub variant: Variant,
    /// Segments are cut at the first keyframe at or after this duration.
    pub target_duration_ms: u64,
    /// Segments listed in the live playlist.
    pub window: usize,
    /// A segment growing past this many bytes (no keyframe in sight) is dropped and the
    /// segmenter waits for the next keyframe: memory stays bounded whatever the GOP.
    pub max_segment_bytes: usize,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        SegmenterConfig {
            variant: Variant::MpegTs,
            target_duration_ms: 2000,
            window: 6,
            max_segment_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Segments kept beyond the window, for players still fetching ones that just left it
/// (RFC 8216 6.2.2 asks servers to keep them available for a while).
const EXTRA_KEPT: usize = 2;

/// One media segment.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Media sequence number.
    pub sequence: u64,
    /// File name (unique per stream instance).
    pub name: String,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// Wall-clock time of its first frame, Unix milliseconds.
    pub wall_clock_ms: i64,
    /// Preceded by EXT-X-DISCONTINUITY.
    pub discontinuity: bool,
    /// The init segment it needs (fMP4).
    pub init_name: Option<String>,
    /// The bytes.
    pub data: Bytes,
}

/// Cuts one stream into segments.
pub struct Segmenter {
    config: SegmenterConfig,
    instance: String,
    tracks: Tracks,
    ts: Option<TsMuxer>,
    inits: VecDeque<(String, Bytes)>,
    init_counter: u32,
    pending: Vec<Arc<Frame>>,
    pending_bytes: usize,
    pending_start_ms: i64,
    pending_wall_ms: i64,
    segments: VecDeque<Segment>,
    next_sequence: u64,
    discontinuity_sequence: u64,
    discontinuities_dropped: u64,
    next_is_discontinuity: bool,
    target_secs: u64,
    finished: bool,
    /// Bumped whenever what the playlists say may change (see [`Segmenter::generation`]).
    generation: u64,
    /// Frames dropped while waiting for a keyframe or because a segment outgrew its cap.
    pub dropped_frames: u64,
}

impl Segmenter {
    /// A segmenter whose file names start with `instance` (unique per stream instance, so
    /// caches never confuse two runs of one path).
    pub fn new(config: SegmenterConfig, instance: &str) -> Segmenter {
        let target_secs = config.target_duration_ms.div_ceil(1000).max(1);
        Segmenter {
            config,
            instance: instance.to_owned(),
            tracks: Tracks::default(),
            ts: None,
            inits: VecDeque::new(),
            init_counter: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_start_ms: 0,
            pending_wall_ms: 0,
            segments: VecDeque::new(),
            next_sequence: 0,
            discontinuity_sequence: 0,
            discontinuities_dropped: 0,
            next_is_discontinuity: false,
            target_secs,
            finished: false,
            generation: 0,
            dropped_frames: 0,
        }
    }

    /// A number that changes whenever the playlists may: a new segment, new tracks, the end.
    /// Equal generations give equal playlists, so a server may keep them until it changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The container.
    pub fn variant(&self) -> Variant {
        self.config.variant
    }

    /// EXT-X-TARGETDURATION: the configured target, raised to cover any longer segment.
    pub fn target_duration_secs(&self) -> u64 {
        self.target_secs
    }

    /// EXT-X-DISCONTINUITY-SEQUENCE.
    pub fn discontinuity_sequence(&self) -> u64 {
        self.discontinuity_sequence
    }

    /// True after [`Segmenter::finish`].
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The segments of the live playlist, oldest first.
    pub fn window(&self) -> Vec<&Segment> {
        let skip = self.segments.len().saturating_sub(self.config.window);
        self.segments.iter().skip(skip).collect()
    }

    /// The newest segment's sequence number.
    pub fn last_sequence(&self) -> Option<u64> {
        self.segments.back().map(|s| s.sequence)
    }

    /// RFC 6381 codec strings of the tracks.
    pub fn codecs(&self) -> Vec<String> {
        [&self.tracks.video, &self.tracks.audio].into_iter().flatten().filter_map(fmp4::codec_string).collect()
    }

    /// Video resolution.
    pub fn resolution(&self) -> Option<(u32, u32)> {
        self.tracks.video.as_ref().and_then(fmp4::dimensions)
    }

    /// A segment or init segment by file name.
    pub fn get(&self, name: &str) -> Option<Bytes> {
        if let Some(s) = self.segments.iter().find(|s| s.name == name) {
            return Some(s.data.clone());
        }
        self.inits.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone())
    }

    /// New codec parameters. A change of video or audio parameters ends the segment in
    /// progress and starts a discontinuity (with a new init segment for fMP4). Returns true
    /// when that completed a segment, as [`Segmenter::push`] does.
    pub fn set_tracks(&mut self, tracks: &Tracks, wall_ms: i64) -> bool {
        let changed = tracks.video != self.tracks.video || tracks.audio != self.tracks.audio;
        if !changed {
            self.tracks.metadata = tracks.metadata.clone();
            return false;
        }
        self.generation += 1;
        let had_tracks = self.tracks.video.is_some() || self.tracks.audio.is_some();
        let cut = self.cut(None, wall_ms);
        self.pending.clear();
        self.pending_bytes = 0;
        self.tracks = tracks.clone();
        self.ts = None;
        if had_tracks && self.next_sequence > 0 {
            self.next_is_discontinuity = true;
        }
        cut
    }

    /// The publisher changed (restart within the grace period): the next segment starts a
    /// discontinuity.
    pub fn discontinuity(&mut self, wall_ms: i64) {
        self.cut(None, wall_ms);
        if self.next_sequence > 0 {
            self.next_is_discontinuity = true;
        }
    }

    /// The stream ended: the segment in progress is cut and the playlist gets EXT-X-ENDLIST.
    pub fn finish(&mut self, wall_ms: i64) {
        self.cut(None, wall_ms);
        self.finished = true;
        self.generation += 1;
    }

    fn frame_ms(&self, f: &Frame) -> Option<i64> {
        let t = match f.kind {
            TrackKind::Video => self.tracks.video.as_ref(),
            TrackKind::Audio => self.tracks.audio.as_ref(),
        }?;
        Some(t.to_ms(f.dts))
    }

    /// Adds a frame; returns true when it completed a segment.
    pub fn push(&mut self, frame: Arc<Frame>, wall_ms: i64) -> bool {
        let Some(ms) = self.frame_ms(&frame) else {
            self.dropped_frames += 1;
            return false;
        };
        let has_video = self.tracks.video.is_some();
        let boundary = if has_video { frame.kind == TrackKind::Video && frame.keyframe } else { true };
        let mut cut = false;
        if boundary
            && !self.pending.is_empty()
            && ms.saturating_sub(self.pending_start_ms) >= self.config.target_duration_ms as i64
        {
            cut = self.cut(Some(&frame), wall_ms);
        }
        if self.pending.is_empty() {
            if has_video && !boundary {
                // A segment must start with a keyframe.
                self.dropped_frames += 1;
                return cut;
            }
            self.pending_start_ms = ms;
            self.pending_wall_ms = wall_ms;
        }
        self.pending_bytes += frame.data.len();
        self.pending.push(frame);
        if self.pending_bytes > self.config.max_segment_bytes {
            self.dropped_frames += self.pending.len() as u64;
            self.pending.clear();
            self.pending_bytes = 0;
            self.next_is_discontinuity = self.next_sequence > 0;
        }
        cut
    }

    /// Turns the pending frames into a segment. `next` is the first frame after it.
    fn cut(&mut self, next: Option<&Arc<Frame>>, _wall_ms: i64) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let frames = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let end_ms = match next.and_then(|n| self.frame_ms(n)) {
            Some(e) => e,
            None => {
                // No next frame: the last frame's time plus one frame interval.
                let last = frames
                    .iter()
                    .rev()
                    .find(|f| f.kind == frames[0].kind)
                    .and_then(|f| self.frame_ms(f))
                    .unwrap_or(self.pending_start_ms);
                last.saturating_add(33)
            }
        };
        // Timestamps come from the publisher: a jump must not overflow the playlist's sums.
        let duration_ms = end_ms.saturating_sub(self.pending_start_ms).clamp(1, i64::from(u32::MAX)) as u64;
        let sequence = self.next_sequence;
        let (data, init_name, ext) = match self.config.variant {
            Variant::MpegTs => {
                if self.ts.is_none() {
                    match TsMuxer::new(&self.tracks) {
                        Ok(m) => self.ts = Some(m),
                        Err(_) => {
                            self.dropped_frames += frames.len() as u64;
                            return false;
                        }
                    }
                }
                let m = self.ts.as_mut().expect("set above");
                let mut out =
                    BytesMut::with_capacity(frames.iter().map(|f| f.data.len()).sum::<usize>() * 106 / 100 + 1024);
                m.write_tables(&mut out);
                for f in &frames {
                    m.write_frame(f, &mut out);
                }
                (out.freeze(), None, "ts")
            }
            Variant::Fmp4 => {
                let init_name = match self.current_init() {
                    Some(n) => n,
                    None => {
                        self.dropped_frames += frames.len() as u64;
                        return false;
                    }
                };
                let next_of = |k: TrackKind| next.filter(|n| n.kind == k).map(|n| n.dts);
                let data = fmp4::media_segment(
                    sequence as u32 + 1,
                    &self.tracks,
                    &frames,
                    next_of(TrackKind::Video),
                    next_of(TrackKind::Audio),
                );
                (data, Some(init_name), "m4s")
            }
        };
        let rounded = (duration_ms + 500) / 1000;
        self.target_secs = self.target_secs.max(rounded);
        self.generation += 1;
        self.segments.push_back(Segment {
            sequence,
            name: format!("{}-{sequence}.{ext}", self.instance),
            duration_ms,
            wall_clock_ms: self.pending_wall_ms,
            discontinuity: std::mem::take(&mut self.next_is_discontinuity),
            init_name,
            data,
        });
        self.next_sequence += 1;
        while self.segments.len() > self.config.window + EXTRA_KEPT {
            if self.segments.pop_front().is_some_and(|s| s.discontinuity) {
                self.discontinuities_dropped += 1;
            }
        }
        // EXT-X-DISCONTINUITY-SEQUENCE counts the tags no longer in the playlist (RFC 8216
        // 4.3.3.3): those of segments dropped from memory and of kept ones before the window.
        let skip = self.segments.len().saturating_sub(self.config.window);
        let kept_before = self.segments.iter().take(skip).filter(|s| s.discontinuity).count() as u64;
        self.discontinuity_sequence = self.discontinuities_dropped + kept_before;
        let oldest_init = self.segments.front().and_then(|s| s.init_name.clone());
        if let Some(oldest) = oldest_init {
            while self.inits.front().is_some_and(|(n, _)| *n != oldest) {
                self.inits.pop_front();
            }
        }
        true
    }

    /// The name of the init segment for the current tracks, creating it if needed.
    fn current_init(&mut self) -> Option<String> {
        let want = fmp4::init_segment(&self.tracks).ok()?;
        if let Some((n, b)) = self.inits.back()
            && *b == want
        {
            return Some(n.clone());
        }
        self.init_counter += 1;
        let name = format!("{}-init{}.mp4", self.instance, self.init_counter);
        self.inits.push_back((name.clone(), want));
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocast_media::{AudioCodec, TrackInfo, VideoCodec, h264};

    fn tracks() -> Tracks {
        let sps = Bytes::from_static(&[
            0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00,
            0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60,
        ]);
        let pps = Bytes::from_static(&[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0]);
        Tracks {
            video: Some(TrackInfo::Video {
                codec: VideoCodec::H264,
                config: h264::build_avcc(&[sps], &[pps]).unwrap(),
                clock_rate: 1000,
            }),
            audio: Some(TrackInfo::Audio {
                codec: AudioCodec::Aac,
                config: Bytes::from_static(&[0x12, 0x10]),
                sample_rate: 44100,
                channels: 2,
                clock_rate: 1000,
            }),
            metadata: None,
        }
    }

    /// Pushes `secs` of 30 fps video (keyframe every second) and ~43 fps audio from `start`.
    fn feed(s: &mut Segmenter, start_ms: i64, secs: i64) {
        let mut v = 0;
        let mut a = 0;
        loop {
            let vt = start_ms + v * 1000 / 30;
            let at = start_ms + a * 1024 * 1000 / 44100;
            if vt.min(at) >= start_ms + secs * 1000 {
                break;
            }
            if vt <= at {
                let nal = Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]);
                s.push(Frame::new(TrackKind::Video, vt, vt, v % 30 == 0, nal), vt);
                v += 1;
            } else {
                s.push(Frame::new(TrackKind::Audio, at, at, true, Bytes::from_static(&[0x21, 0x10])), at);
                a += 1;
            }
        }
    }

    #[test]
    fn the_generation_changes_with_what_the_playlists_say() {
        let mut s = Segmenter::new(SegmenterConfig::default(), "x");
        let mut last = s.generation();
        let mut changed = |s: &Segmenter, why: &str, expected: bool| {
            assert_eq!(s.generation() != last, expected, "{why}");
            last = s.generation();
        };
        s.set_tracks(&tracks(), 0);
        changed(&s, "new tracks", true);
        s.set_tracks(&tracks(), 0);
        changed(&s, "the same tracks", false);
        // Frames of a segment in progress change nothing listed.
        feed(&mut s, 0, 1);
        changed(&s, "frames before the first cut", false);
        let before = s.media_playlist();
        feed(&mut s, 1000, 3);
        changed(&s, "new segments", true);
        assert_ne!(s.media_playlist(), before);
        let listed = (s.media_playlist(), s.multivariant_playlist("m.m3u8"));
        s.finish(4000);
        changed(&s, "the end", true);
        assert_ne!((s.media_playlist(), s.multivariant_playlist("m.m3u8")), listed);
    }

    #[test]
    fn cuts_on_keyframes_at_the_target_and_slides_the_window() {
        for variant in [Variant::MpegTs, Variant::Fmp4] {
            let mut s = Segmenter::new(SegmenterConfig { variant, ..SegmenterConfig::default() }, "x");
            s.set_tracks(&tracks(), 0);
            feed(&mut s, 10_000, 21);
            let w = s.window();
            assert_eq!(w.len(), 6);
            assert!(
                w.iter().all(|x| x.duration_ms == 2000),
                "{:?}",
                w.iter().map(|x| x.duration_ms).collect::<Vec<_>>()
            );
            assert_eq!(w[0].sequence, 4);
            let p = s.media_playlist().unwrap();
            assert!(p.contains("#EXT-X-TARGETDURATION:2\n"), "{p}");
            assert!(p.contains("#EXT-X-MEDIA-SEQUENCE:4\n"));
            assert!(p.contains("#EXTINF:2.000,\n"));
            assert!(p.contains("#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:18.000Z"), "{p}");
            if variant == Variant::Fmp4 {
                assert!(p.contains("#EXT-X-MAP:URI=\"x-init1.mp4\""));
                assert!(s.get("x-init1.mp4").is_some());
                assert!(s.get(&w[0].name).unwrap().starts_with(&[0, 0]));
            } else {
                assert_eq!(s.get(&w[0].name).unwrap()[0], 0x47);
            }
            assert!(s.get("x-0.ts").is_none(), "old segments leave memory");
            let mv = s.multivariant_playlist("media.m3u8").unwrap();
            assert!(mv.contains("CODECS=\"avc1.64000d,mp4a.40.2\""), "{mv}");
            assert!(mv.contains("RESOLUTION=320x240"));
        }
    }

    #[test]
    fn total_on_extreme_timestamps() {
        for variant in [Variant::MpegTs, Variant::Fmp4] {
            let mut s = Segmenter::new(SegmenterConfig { variant, ..SegmenterConfig::default() }, "x");
            s.set_tracks(&tracks(), 0);
            let nal = Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]);
            for ts in [i64::MIN, i64::MIN + 1, 0, i64::MAX - 1, i64::MAX, i64::MIN, i64::MAX] {
                s.push(Frame::new(TrackKind::Video, ts, ts.wrapping_neg(), true, nal.clone()), ts);
                s.push(Frame::new(TrackKind::Audio, ts, ts, true, Bytes::new()), ts);
            }
            s.finish(0);
            assert!(!s.window().is_empty());
            let p = s.media_playlist().unwrap();
            assert!(p.contains("#EXT-X-ENDLIST"), "{p}");
        }
    }

    #[test]
    fn classic_ten_second_segments() {
        let mut s = Segmenter::new(
            SegmenterConfig { target_duration_ms: 10_000, window: 3, ..SegmenterConfig::default() },
            "x",
        );
        s.set_tracks(&tracks(), 0);
        feed(&mut s, 0, 41);
        let d: Vec<u64> = s.window().iter().map(|x| x.duration_ms).collect();
        assert_eq!(d, [10_000, 10_000, 10_000]);
        let p = s.media_playlist().unwrap();
        assert!(p.contains("#EXT-X-TARGETDURATION:10\n") && p.contains("#EXT-X-MEDIA-SEQUENCE:1\n"), "{p}");
    }

    #[test]
    fn restart_makes_a_discontinuity_that_is_counted_when_it_leaves() {
        let mut s = Segmenter::new(SegmenterConfig::default(), "x");
        s.set_tracks(&tracks(), 0);
        feed(&mut s, 0, 5);
        s.discontinuity(5000);
        feed(&mut s, 5040, 5);
        let p = s.media_playlist().unwrap();
        assert_eq!(p.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{p}");
        assert!(p.contains("#EXT-X-DISCONTINUITY-SEQUENCE:0"));
        feed(&mut s, 10_080, 20);
        let p = s.media_playlist().unwrap();
        assert_eq!(p.matches("#EXT-X-DISCONTINUITY\n").count(), 0);
        assert!(p.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1"), "{p}");
        s.finish(40_000);
        assert!(s.media_playlist().unwrap().ends_with("#EXT-X-ENDLIST\n"));
    }

    #[test]
    fn long_gop_raises_target_and_frames_before_a_keyframe_are_dropped() {
        let mut s = Segmenter::new(SegmenterConfig::default(), "x");
        s.set_tracks(&tracks(), 0);
        let nal = || Bytes::from_static(&[0, 0, 0, 2, 0x41, 0x88]);
        s.push(Frame::new(TrackKind::Video, 0, 0, false, nal()), 0);
        assert_eq!(s.dropped_frames, 1);
        for (t, key) in [(100, true), (3200, false), (4100, true), (4200, false), (5000, true)] {
            s.push(Frame::new(TrackKind::Video, t, t, key, nal()), t);
        }
        let d: Vec<u64> = s.window().iter().map(|x| x.duration_ms).collect();
        assert_eq!(d, [4000]);
        assert_eq!(s.target_duration_secs(), 4);
    }
}
