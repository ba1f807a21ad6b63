//! Cuts a stream into recording files and parts: what to write and when, no I/O.
//!
//! - A file starts at a video keyframe (any frame for a stream without video) and holds one
//!   set of tracks: a change of codec parameters, a republish or the end of the stream closes
//!   it, and the next one opens at the next keyframe.
//! - A file ends at the first keyframe after `segment_us` of media.
//! - A part (one moof + mdat, what a crash can lose) is cut when a frame comes `part_us`
//!   after the part's first one; parts need not start at keyframes.
//! - Times in a file are decode times relative to the file's start (one base instant for every
//!   track, so tracks stay aligned and a paused track keeps its gap). The file's wall-clock
//!   start is that instant through the stream's media clock (set once per publish): a step of
//!   the server's clock moves no file of a publish against another.

use std::sync::Arc;

use ferrocast_media::fmp4::{self, TrackTimes};
use ferrocast_media::{Frame, TrackInfo, TrackKind, Tracks, rescale};

use crate::clock::Mapping;

/// Settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A new file at the first keyframe after this much media, µs.
    pub segment_us: u64,
    /// A part holds about this much media, µs.
    pub part_us: u64,
}

/// What the writer does next.
#[derive(Debug)]
pub enum Step {
    /// Start a file.
    Open {
        /// Its tracks (those a recording holds).
        tracks: Arc<Tracks>,
        /// Decode time of its start, in each track's clock.
        base: TrackTimes,
        /// Wall-clock time of its start, µs since the Unix epoch.
        start_unix_us: u64,
    },
    /// Append a part to the open file.
    Part {
        /// Its number in the file, from 1.
        sequence: u32,
        /// Its frames, in arrival order.
        frames: Vec<Arc<Frame>>,
        /// Decode time of each track's next frame, where known.
        next: TrackTimes,
        /// Media time from the file's start to the end of this part, µs, as the cutter
        /// estimates it (the writer takes the exact figure from the part it wrote).
        file_duration_us: u64,
    },
    /// The open file is complete.
    Close,
}

/// The file being written.
#[derive(Debug)]
struct File {
    tracks: Arc<Tracks>,
    base_ms: i64,
    base: TrackTimes,
    /// Media time at which it started, ms.
    parts: u32,
    part: Vec<Arc<Frame>>,
    /// Bytes of the part's frames.
    part_bytes: usize,
    /// Time (ms) of the part's first frame.
    part_start_ms: Option<i64>,
    /// Per track (video, audio): end of the last frame so far (ms) and the step before it.
    ends: [Option<(i64, i64)>; 2],
}

/// An audio frame this close before a file's first keyframe is written at the start of that
/// file (at its start time): every file then starts with both tracks at the same instant, and
/// the frame that spans the cut is in one file, not lost or in two.
const CARRY_AUDIO_MS: i64 = 100;

/// Most frames in one part: a publisher whose clock stands still (every frame at one time)
/// still gets its parts cut, so memory stays bounded and a part is one fragment (well under
/// [`fmp4::MAX_PART_SAMPLES`]). A second of 60 fps video with 48 kHz AAC is ~110 frames.
pub const MAX_PART_FRAMES: usize = 4096;

/// Most bytes of frames in one part, likewise (well under [`fmp4::MAX_PART_DATA`]): a second
/// of a 100 Mbit/s stream is 12.5 MB.
pub const MAX_PART_BYTES: usize = 32 << 20;

/// The cutter of one stream.
#[derive(Debug)]
pub struct Segmenter {
    settings: Settings,
    tracks: Arc<Tracks>,
    file: Option<File>,
    /// The last audio frame while no file was open.
    last_audio: Option<Arc<Frame>>,
}

/// The tracks of `tracks` a recording holds.
pub fn recorded(tracks: &Tracks) -> Tracks {
    Tracks {
        video: tracks.video.clone().filter(fmp4::records),
        audio: tracks.audio.clone().filter(fmp4::records),
        ..Tracks::default()
    }
}

fn slot(kind: TrackKind) -> usize {
    match kind {
        TrackKind::Video => 0,
        TrackKind::Audio => 1,
    }
}

fn track(tracks: &Tracks, kind: TrackKind) -> Option<&TrackInfo> {
    match kind {
        TrackKind::Video => tracks.video.as_ref(),
        TrackKind::Audio => tracks.audio.as_ref(),
    }
}

impl Segmenter {
    /// A cutter with no tracks yet.
    pub fn new(settings: Settings) -> Segmenter {
        Segmenter { settings, tracks: Arc::default(), file: None, last_audio: None }
    }

    /// Whether a file is open.
    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// The stream's tracks changed: a file with other tracks is closed.
    pub fn set_tracks(&mut self, tracks: &Tracks, out: &mut Vec<Step>) {
        let t = Arc::new(recorded(tracks));
        if self.file.as_ref().is_some_and(|f| *f.tracks != *t) {
            self.close(out);
        }
        self.tracks = t;
    }

    /// A frame. `mapping` is the stream's media clock (for a new file's start time); `now_us`
    /// the wall-clock time now, used only when the stream has no mapping.
    pub fn push(&mut self, frame: &Arc<Frame>, mapping: Option<Mapping>, now_us: u64, out: &mut Vec<Step>) {
        let Some(info) = track(&self.tracks, frame.kind) else { return };
        let ms = rescale(frame.dts, info.clock_rate(), 1000);
        let starts_file = match frame.kind {
            TrackKind::Video => frame.keyframe,
            TrackKind::Audio => self.tracks.video.is_none(),
        };
        let audio_clock = self.tracks.audio.as_ref().map_or(1000, TrackInfo::clock_rate);
        let audio_ms = |f: &Frame| rescale(f.dts, audio_clock, 1000);
        let mut carried = None;
        if let Some(f) = &mut self.file
            && starts_file
            && ms.saturating_sub(f.base_ms) >= (self.settings.segment_us / 1000) as i64
        {
            // The audio frame that spans the cut goes to the new file.
            if let Some(i) = f.part.iter().rposition(|x| x.kind == TrackKind::Audio)
                && i + 1 == f.part.len()
                && (0..CARRY_AUDIO_MS).contains(&ms.saturating_sub(audio_ms(&f.part[i])))
                && f.part.len() > 1
            {
                carried = f.part.pop();
            }
            self.close(out);
        }
        if self.file.is_none() {
            if !starts_file {
                if frame.kind == TrackKind::Audio {
                    self.last_audio = Some(frame.clone());
                }
                return;
            }
            carried = carried
                .or(self.last_audio.take().filter(|a| (0..CARRY_AUDIO_MS).contains(&ms.saturating_sub(audio_ms(a)))));
            self.last_audio = None;
            self.open(frame, ms, mapping, now_us, out);
        }
        let part_ms = (self.settings.part_us / 1000).max(1) as i64;
        let Some(f) = &mut self.file else { return };
        if let Some(a) = carried {
            // Written at the file's start (fMP4 writes times before it as it).
            f.ends[1] = Some((f.base_ms, 0));
            f.part.push(a);
        }
        if ms < f.base_ms && !(frame.kind == TrackKind::Audio && f.ends[1].is_none()) {
            // Audio from before the keyframe the file starts at, once the file has audio.
            return;
        }
        let ms = ms.max(f.base_ms);
        let full = f.part.len() >= MAX_PART_FRAMES || f.part_bytes.saturating_add(frame.data.len()) > MAX_PART_BYTES;
        if full || f.part_start_ms.is_some_and(|s| ms.saturating_sub(s) >= part_ms) {
            let mut next = TrackTimes::default();
            next.set(frame.kind, Some(frame.dts));
            Self::flush(f, next, out);
        }
        f.part_start_ms.get_or_insert(ms);
        let end = &mut f.ends[slot(frame.kind)];
        let step = end.map_or(0, |(last, step)| if ms > last { ms - last } else { step });
        *end = Some((ms, step));
        f.part_bytes += frame.data.len();
        f.part.push(frame.clone());
    }

    /// A new publisher took the stream over, or the stream ended: the open file is complete.
    pub fn close(&mut self, out: &mut Vec<Step>) {
        if let Some(mut f) = self.file.take() {
            Self::flush(&mut f, TrackTimes::default(), out);
            out.push(Step::Close);
        }
    }

    fn open(&mut self, frame: &Frame, ms: i64, mapping: Option<Mapping>, now_us: u64, out: &mut Vec<Step>) {
        let mut base = TrackTimes::default();
        for kind in [TrackKind::Video, TrackKind::Audio] {
            if let Some(t) = track(&self.tracks, kind) {
                base.set(kind, Some(rescale(ms, 1000, t.clock_rate())));
            }
        }
        // The frame's own clock keeps its exact time.
        base.set(frame.kind, Some(frame.dts));
        let media_us = ms.saturating_mul(1000);
        let start_unix_us = match mapping {
            Some(m) => (m.unix_micros as i64).saturating_add(media_us.saturating_sub(m.media_micros)).max(0) as u64,
            None => now_us,
        };
        out.push(Step::Open { tracks: self.tracks.clone(), base, start_unix_us });
        self.file = Some(File {
            tracks: self.tracks.clone(),
            base_ms: ms,
            base,
            parts: 0,
            part: Vec::new(),
            part_bytes: 0,
            part_start_ms: None,
            ends: [None; 2],
        });
    }

    fn flush(f: &mut File, next: TrackTimes, out: &mut Vec<Step>) {
        if f.part.is_empty() {
            return;
        }
        f.parts += 1;
        let end_ms = f.ends.iter().flatten().map(|(last, step)| last.saturating_add(*step)).max().unwrap_or(f.base_ms);
        out.push(Step::Part {
            sequence: f.parts,
            frames: std::mem::take(&mut f.part),
            next,
            file_duration_us: end_ms.saturating_sub(f.base_ms).max(0) as u64 * 1000,
        });
        f.part_start_ms = None;
        f.part_bytes = 0;
    }

    /// The open file's tracks and base (for writing its parts).
    pub fn file_layout(&self) -> Option<(&Arc<Tracks>, TrackTimes)> {
        self.file.as_ref().map(|f| (&f.tracks, f.base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Source;
    use bytes::Bytes;
    use ferrocast_media::{AudioCodec, VideoCodec};

    fn tracks() -> Tracks {
        Tracks {
            video: Some(TrackInfo::Video {
                codec: VideoCodec::H264,
                config: Bytes::from_static(&[1, 2, 3]),
                clock_rate: 1000,
            }),
            audio: Some(TrackInfo::Audio {
                codec: AudioCodec::Aac,
                config: Bytes::from_static(&[0x11, 0x90]),
                sample_rate: 48_000,
                channels: 2,
                clock_rate: 1000,
            }),
            ..Tracks::default()
        }
    }

    fn frame(kind: TrackKind, ms: i64, key: bool) -> Arc<Frame> {
        Frame::new(kind, ms, ms, key, Bytes::from_static(b"x"))
    }

    /// Video at 25 fps with a keyframe every 2 s, audio every 20 ms, from `from` to `to` ms.
    fn av(from: i64, to: i64, video: bool) -> Vec<Arc<Frame>> {
        let mut v = Vec::new();
        for t in (from..to).step_by(20) {
            if video && t % 40 == 0 {
                v.push(frame(TrackKind::Video, t, t % 2000 == 0));
            }
            v.push(frame(TrackKind::Audio, t, false));
        }
        v
    }

    fn run(s: &mut Segmenter, frames: &[Arc<Frame>], mapping: Option<Mapping>) -> Vec<Step> {
        let mut out = Vec::new();
        for f in frames {
            s.push(f, mapping, 0, &mut out);
        }
        out
    }

    #[test]
    fn files_start_at_keyframes_and_parts_are_cut_by_time() {
        let mut s = Segmenter::new(Settings { segment_us: 4_000_000, part_us: 1_000_000 });
        let mut out = Vec::new();
        s.set_tracks(&tracks(), &mut out);
        let mapping = Mapping { media_micros: 0, unix_micros: 1_000_000_000_000, source: Source::Arrival };
        // Frames from 1.5 s: the first keyframe is at 2 s, what comes before is not recorded.
        let mut steps = run(&mut s, &av(1_500, 10_000, true), Some(mapping));
        s.close(&mut steps);
        let opens: Vec<u64> = steps
            .iter()
            .filter_map(|st| if let Step::Open { start_unix_us, .. } = st { Some(*start_unix_us) } else { None })
            .collect();
        // Keyframes at 2, 4, 6, 8 s; a file at most 4 s: files at 2 and 6 s.
        assert_eq!(opens, [1_000_002_000_000, 1_000_006_000_000]);
        let parts: Vec<(u32, usize, u64)> = steps
            .iter()
            .filter_map(|st| match st {
                Step::Part { sequence, frames, file_duration_us, .. } => {
                    Some((*sequence, frames.len(), *file_duration_us))
                }
                _ => None,
            })
            .collect();
        // 1 s parts: 25 video + 50 audio frames each; the audio frame just before each file's
        // keyframe starts that file (at its start), not the file before.
        assert_eq!(parts[0], (1, 76, 1_000_000));
        assert_eq!(parts[1], (2, 75, 2_000_000));
        assert_eq!(parts[3], (4, 74, 4_000_000));
        let first_audio = steps.iter().find_map(|s| match s {
            Step::Part { frames, .. } => frames.iter().find(|f| f.kind == TrackKind::Audio).map(|f| f.dts),
            _ => None,
        });
        assert_eq!(first_audio, Some(1_980));
        assert_eq!(parts[4].0, 1, "the second file numbers its parts from 1");
        assert!(matches!(steps.last(), Some(Step::Close)));
        assert_eq!(steps.iter().filter(|s| matches!(s, Step::Close)).count(), 2);
    }

    #[test]
    fn a_paused_track_keeps_its_gap_and_changed_tracks_close_the_file() {
        let mut s = Segmenter::new(Settings { segment_us: 600_000_000, part_us: 1_000_000 });
        let mut out = Vec::new();
        s.set_tracks(&tracks(), &mut out);
        // Video stops from 4 s to 19 s; audio goes on.
        let frames: Vec<_> = av(0, 30_000, true)
            .into_iter()
            .filter(|f| f.kind == TrackKind::Audio || !(4_000..19_000).contains(&f.dts))
            .collect();
        let steps = run(&mut s, &frames, None);
        let (base, video_times): (Option<TrackTimes>, Vec<i64>) = {
            let base = steps.iter().find_map(|s| if let Step::Open { base, .. } = s { Some(*base) } else { None });
            let v = steps
                .iter()
                .flat_map(|s| if let Step::Part { frames, .. } = s { frames.clone() } else { vec![] })
                .filter(|f| f.kind == TrackKind::Video)
                .map(|f| f.dts)
                .collect();
            (base, v)
        };
        assert_eq!(base.unwrap().video, Some(0));
        assert!(video_times.windows(2).any(|w| w[1] - w[0] == 15_040), "the gap stays: one file, times as sent");
        assert_eq!(steps.iter().filter(|s| matches!(s, Step::Open { .. })).count(), 1);
        // A new audio configuration: the file closes; the next opens at a keyframe.
        let mut t = tracks();
        if let Some(TrackInfo::Audio { config, .. }) = &mut t.audio {
            *config = Bytes::from_static(&[0x12, 0x10]);
        }
        let mut out = Vec::new();
        s.set_tracks(&t, &mut out);
        assert!(matches!(out.last(), Some(Step::Close)));
        assert!(!s.is_open());
        let steps = run(&mut s, &av(30_000, 32_001, true), None);
        assert!(matches!(steps.first(), Some(Step::Open { .. })));
    }

    #[test]
    fn a_clock_standing_still_still_gets_parts_too_large() {
        let mut s = Segmenter::new(Settings { segment_us: 600_000_000, part_us: 1_000_000 });
        let mut out = Vec::new();
        s.set_tracks(&tracks(), &mut out);
        let mut steps = run(&mut s, &[frame(TrackKind::Video, 0, true)], None);
        for _ in 0..MAX_PART_FRAMES * 2 {
            s.push(&frame(TrackKind::Video, 0, false), None, 0, &mut steps);
        }
        let parts: Vec<usize> = steps
            .iter()
            .filter_map(|s| if let Step::Part { frames, .. } = s { Some(frames.len()) } else { None })
            .collect();
        assert_eq!(parts, [MAX_PART_FRAMES, MAX_PART_FRAMES], "cut by count, not by time");
        // And by bytes.
        let big = Frame::new(TrackKind::Video, 0, 0, false, Bytes::from(vec![0; MAX_PART_BYTES / 2 + 1]));
        let mut steps = Vec::new();
        for _ in 0..3 {
            s.push(&big, None, 0, &mut steps);
        }
        assert!(steps.iter().filter(|s| matches!(s, Step::Part { .. })).count() >= 2);
    }

    #[test]
    fn audio_only_streams_start_at_once_and_untracked_frames_are_ignored() {
        let mut s = Segmenter::new(Settings { segment_us: 2_000_000, part_us: 1_000_000 });
        let mut out = Vec::new();
        s.set_tracks(&Tracks { audio: tracks().audio, ..Tracks::default() }, &mut out);
        let steps = run(&mut s, &av(500, 5_000, true), None);
        assert!(matches!(steps.first(), Some(Step::Open { base: TrackTimes { video: None, audio: Some(500) }, .. })));
        assert!(
            steps.iter().all(|s| match s {
                Step::Part { frames, .. } => frames.iter().all(|f| f.kind == TrackKind::Audio),
                _ => true,
            }),
            "video without a track is not recorded"
        );
        assert_eq!(steps.iter().filter(|s| matches!(s, Step::Open { .. })).count(), 3, "2 s files at 0.5, 2.5, 4.5 s");
    }
}
