//! The timestamps readers see: each track keeps its own media clock, moved by an offset of its
//! own (output = input + offset), and offsets change only for a discontinuity of the whole
//! stream.
//!
//! The rule, per frame of track `k` with decode time `t` (in `k`'s clock):
//! - `out = t + offset[k]`. A gap in one track stays a gap: a track back from a pause comes
//!   back where its clock says, whatever the other tracks did meanwhile.
//! - The stream's *head* is the newest output time of any track. A frame is a break in the
//!   publisher's clock when it leaps past the head by more than [`MAX_TIMESTAMP_LEAP_MS`], or
//!   goes back more than [`MAX_TIMESTAMP_STEP_BACK_MS`] before its own track's last frame (a
//!   track's first frame: before the head by more than the leap). Judged against the head, a
//!   track returning from a 15 s pause is no break.
//! - A break is a discontinuity of the whole stream (an encoder restart, a camera resetting
//!   its clock): the stream's offset becomes the one that puts the frame one usual step after
//!   the head, and each other track takes that offset when its own frames show the break
//!   (they are a break with the old offset and none with the new one). Counted once.
//! - A frame that steps back less than that (even 1 ms) is held at its track's last time
//!   (counted); no offset moves, so the other tracks do not move either.
//! - A new publisher of the path within the grace period continues [`REPUBLISH_GAP_MS`]
//!   after the head.
//!
//! Offsets are decided in milliseconds, the unit every track can be compared in, and applied
//! in each track's own clock (no drift: a track's timestamps are its publisher's, shifted).
//! Composition offsets (pts - dts) are the caller's to keep: it moves pts by what dts moved.

use ferrocast_media::rescale;

/// A frame more than this past the stream's head is a break in the publisher's clock (an
/// encoder restart, a camera resetting RTP time), not media: no real stream pauses all its
/// tracks for that long and goes on.
pub const MAX_TIMESTAMP_LEAP_MS: i64 = 10_000;

/// A frame more than this before its track's last frame is a break in the publisher's clock.
/// Less is jitter of a muxer or an encoder (a track stepping back a few ms) and is held, not
/// rebased: a second is far more than any interleaving we have seen and far less than the
/// stream restarts that must be caught.
pub const MAX_TIMESTAMP_STEP_BACK_MS: i64 = 1_000;

/// Gap left between the head of a publisher and the first frame of the one that replaces it
/// within the grace period.
pub const REPUBLISH_GAP_MS: i64 = 40;

/// The usual step between two frames of a track, used after a break, is clamped to this.
const MAX_STEP_MS: i64 = 1_000;

/// What was done to a frame's timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// Its offset applied, nothing more (the common case).
    None,
    /// The first frame of a publisher that took the path over: the stream continues after
    /// the previous publisher's head.
    Continued,
    /// A break in the publisher's clock: the stream's offset moved (a discontinuity).
    Rebased,
    /// The track took the offset of a discontinuity that another track showed first.
    Followed,
    /// It stepped back a little in its own track: held at the track's last time.
    Held,
}

/// One track's place on the timeline.
#[derive(Debug, Default, Clone, Copy)]
struct Track {
    /// Added to the track's times, in ms; None until its first frame of this publish.
    offset_ms: Option<i64>,
    /// The clock `last` is in.
    clock: u32,
    /// The last output decode time, in the track's clock.
    last: Option<i64>,
    /// `last` in ms.
    last_ms: i64,
    /// The last usual step between two frames, in ms.
    step_ms: i64,
}

/// A stream's timeline (see the module doc for the rule).
#[derive(Debug, Default)]
pub struct Timeline {
    tracks: [Track; 2],
    /// The newest output time of any track, in ms, across publishers.
    head_ms: Option<i64>,
    /// The offset of the stream's latest discontinuity (or its start), in ms; None until the
    /// publish's first frame.
    stream_offset_ms: Option<i64>,
    /// The next first frame continues after the head (a publisher took the path over).
    continues: bool,
}

/// A frame's decode time on the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    /// The output decode time, in the track's clock.
    pub dts: i64,
    /// What was done.
    pub correction: Correction,
}

impl Mapped {
    /// How far the frame moved, in its track's clock (to move its pts by as much).
    pub fn shift(&self, dts: i64) -> i64 {
        self.dts - dts
    }
}

impl Timeline {
    /// A timeline for a stream's first publisher: timestamps pass as they are.
    pub fn new() -> Timeline {
        Timeline::default()
    }

    /// A new publisher took the path: its tracks start afresh and its first frame follows on
    /// from the head, if there is one.
    pub fn republish(&mut self) {
        self.tracks = Default::default();
        self.stream_offset_ms = None;
        self.continues = self.head_ms.is_some();
    }

    /// Places a frame of track `track` (0 video, 1 audio) with decode time `dts` in `clock`.
    pub fn map(&mut self, track: usize, dts: i64, clock: u32) -> Mapped {
        let track = track.min(1);
        let dts_ms = rescale(dts, clock, 1000);
        let mut correction = Correction::None;
        let stream_offset = match self.stream_offset_ms {
            Some(o) => o,
            None => {
                let o = match self.head_ms {
                    Some(head) if self.continues => {
                        correction = Correction::Continued;
                        head + REPUBLISH_GAP_MS - dts_ms
                    }
                    _ => 0,
                };
                self.continues = false;
                self.stream_offset_ms = Some(o);
                o
            }
        };
        let head = self.head_ms.unwrap_or(dts_ms + stream_offset);
        let t = &mut self.tracks[track];
        if t.clock != clock {
            // A track whose clock changed is a new track.
            *t = Track { offset_ms: t.offset_ms, clock, ..Track::default() };
        }
        let last_ms = t.last.map(|_| t.last_ms);
        let fits = |offset: i64| {
            let out = dts_ms + offset;
            out <= head + MAX_TIMESTAMP_LEAP_MS
                && match last_ms {
                    Some(last) => out >= last - MAX_TIMESTAMP_STEP_BACK_MS,
                    None => out >= head - MAX_TIMESTAMP_LEAP_MS,
                }
        };
        let mut offset = *t.offset_ms.get_or_insert(stream_offset);
        if !fits(offset) {
            if offset != stream_offset && fits(stream_offset) {
                offset = stream_offset;
                correction = Correction::Followed;
            } else {
                offset = head + t.step_ms.clamp(1, MAX_STEP_MS) - dts_ms;
                self.stream_offset_ms = Some(offset);
                correction = Correction::Rebased;
            }
            t.offset_ms = Some(offset);
        }
        let mut out = dts + rescale(offset, 1000, clock);
        if let Some(last) = t.last
            && out < last
        {
            out = last;
            correction = Correction::Held;
        }
        let out_ms = rescale(out, clock, 1000);
        if let Some(last) = last_ms
            && matches!(correction, Correction::None)
            && (1..=MAX_STEP_MS).contains(&(out_ms - last))
        {
            t.step_ms = out_ms - last;
        }
        t.last = Some(out);
        t.last_ms = out_ms;
        self.head_ms = Some(self.head_ms.map_or(out_ms, |h| h.max(out_ms)));
        Mapped { dts: out, correction }
    }

    /// The output time of time `ts` of track `track` (its clock), if the track's offset is
    /// decided (it has had a frame in this publish, or the publish has).
    pub fn output(&self, track: usize, ts: i64, clock: u32) -> Option<i64> {
        let offset = self.tracks[track.min(1)].offset_ms.or(self.stream_offset_ms)?;
        Some(ts + rescale(offset, 1000, clock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: usize = 0;
    const A: usize = 1;

    /// Feeds (track, dts in ms) frames; gives the output times and corrections.
    fn run(tl: &mut Timeline, frames: &[(usize, i64)]) -> Vec<(i64, Correction)> {
        frames
            .iter()
            .map(|&(k, t)| {
                let m = tl.map(k, t, 1000);
                (m.dts, m.correction)
            })
            .collect()
    }

    /// Video every 40 ms and audio every 20 ms from `from` to `to` ms, in time order, with
    /// video missing in `video_gap` and audio missing in `audio_gap`.
    fn av(from: i64, to: i64, video_gap: (i64, i64), audio_gap: (i64, i64)) -> Vec<(usize, i64)> {
        let mut v = Vec::new();
        for t in (from..to).step_by(20) {
            if t % 40 == 0 && !(video_gap.0..video_gap.1).contains(&t) {
                v.push((V, t));
            }
            if !(audio_gap.0..audio_gap.1).contains(&t) {
                v.push((A, t));
            }
        }
        v
    }

    #[test]
    fn a_pause_in_one_track_stays_a_gap_in_that_track() {
        // Video pauses 15 s while audio goes on, then audio pauses 15 s while video goes on.
        let frames = av(0, 40_000, (4_000, 19_000), (22_000, 37_000));
        let mut tl = Timeline::new();
        let out = run(&mut tl, &frames);
        for ((_, t), (o, c)) in frames.iter().zip(&out) {
            assert_eq!((*o, *c), (*t, Correction::None), "timestamps pass as they are");
        }
    }

    #[test]
    fn a_track_stepping_back_is_held_alone() {
        let mut tl = Timeline::new();
        let out = run(&mut tl, &[(V, 0), (A, 0), (V, 40), (A, 20), (V, 39), (A, 40), (V, 80), (A, 60)]);
        let times: Vec<i64> = out.iter().map(|o| o.0).collect();
        assert_eq!(times, [0, 0, 40, 20, 40, 40, 80, 60], "video held at 40 once; audio untouched");
        assert_eq!(out[4].1, Correction::Held);
        assert!(out.iter().filter(|o| o.1 != Correction::None).count() == 1);
    }

    #[test]
    fn a_restart_of_every_track_rebases_the_stream_once() {
        let mut tl = Timeline::new();
        let mut frames = av(0, 3_000, (0, 0), (0, 0));
        // An encoder restart: both clocks start over at 0.
        frames.extend(av(0, 1_000, (0, 0), (0, 0)));
        let out = run(&mut tl, &frames);
        let rebased = out.iter().filter(|o| o.1 == Correction::Rebased).count();
        let followed = out.iter().filter(|o| o.1 == Correction::Followed).count();
        assert_eq!((rebased, followed), (1, 1), "one discontinuity, which the other track follows");
        // Both tracks moved by the same amount: they stay aligned.
        let after: Vec<_> = frames.iter().zip(&out).skip(av(0, 3_000, (0, 0), (0, 0)).len()).collect();
        let shifts: Vec<i64> = after.iter().map(|((_, t), (o, _))| o - t).collect();
        assert!(shifts.iter().all(|s| *s == shifts[0]), "{shifts:?}");
        assert!(shifts[0] > 2_960, "continues after the head: {shifts:?}");
        for k in [V, A] {
            let times: Vec<i64> = frames.iter().zip(&out).filter(|(f, _)| f.0 == k).map(|(_, o)| o.0).collect();
            assert!(times.windows(2).all(|w| w[1] >= w[0]), "track {k} went back: {times:?}");
        }
    }

    #[test]
    fn a_leap_of_the_whole_stream_is_rebased_and_followed() {
        let mut tl = Timeline::new();
        let out = run(&mut tl, &[(V, 1000), (A, 1000), (V, 1040), (A, 1020), (V, 61_040), (A, 61_040), (V, 61_080)]);
        let times: Vec<i64> = out.iter().map(|o| o.0).collect();
        assert_eq!(times, [1000, 1000, 1040, 1020, 1080, 1080, 1120], "both tracks moved alike");
        assert_eq!(out[4].1, Correction::Rebased);
        assert_eq!(out[5].1, Correction::Followed);
    }

    #[test]
    fn a_republish_continues_after_the_head() {
        let mut tl = Timeline::new();
        run(&mut tl, &[(V, 5000), (A, 5010)]);
        tl.republish();
        let out = run(&mut tl, &[(A, 100), (V, 90), (V, 130)]);
        assert_eq!(out[0], (5010 + REPUBLISH_GAP_MS, Correction::Continued));
        assert_eq!(out[1], (5040, Correction::None), "the other track keeps its place relative to the first");
        assert_eq!(out[2].0, 5080);
    }

    #[test]
    fn offsets_are_applied_in_each_tracks_clock() {
        let mut tl = Timeline::new();
        tl.map(V, 90_000, 90_000);
        tl.republish();
        // 90 kHz video and 48 kHz audio after a takeover: both move by the same time.
        let v = tl.map(V, 0, 90_000);
        let a = tl.map(A, 0, 48_000);
        assert_eq!(v.dts, 90 * (1000 + REPUBLISH_GAP_MS));
        assert_eq!(a.dts, 48 * (1000 + REPUBLISH_GAP_MS));
        assert_eq!(tl.output(A, 480, 48_000), Some(480 + a.dts));
    }
}
