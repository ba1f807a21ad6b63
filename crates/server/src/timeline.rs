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
//!   its clock) when every track that is playing shows it: the stream's offset becomes the one
//!   that puts the frame one usual step after the head, and each other track takes that offset
//!   when its own frames show the break (they are a break with the old offset and none with the
//!   new one). Counted once. A break in one track while another plays on is not known to be the
//!   stream's until that other track's next frame says so: the breaking track's frames are held
//!   back until then (at most [`MAX_PENDING_MS`] of them) and released in order once it is
//!   decided. If the other track carries on, the break was that track's alone: that track
//!   alone is placed after the head, and the other tracks and the stream's offset stay.
//! - A frame that steps back less than that (even 1 ms) is held at its track's last time
//!   (counted); no offset moves, so the other tracks do not move either.
//! - A new publisher of the path within the grace period continues [`REPUBLISH_GAP_MS`]
//!   after the head.
//!
//! Offsets are decided in milliseconds, the unit every track can be compared in, and applied
//! in each track's own clock (no drift: a track's timestamps are its publisher's, shifted).
//! Composition offsets (pts - dts) are the caller's to keep: it moves pts by what dts moved.

use std::collections::VecDeque;

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

/// A track whose last frame is within this of the stream's head is playing: a break in another
/// track is the stream's only if this one shows it too. More than any frame interval of a
/// real stream (1 fps surveillance video included).
pub const ACTIVE_TRACK_MS: i64 = 2_000;

/// The longest a track's frames are held back (in its own time) while the timeline waits to
/// learn whether that track's break is the stream's.
pub const MAX_PENDING_MS: i64 = 2_000;

/// The most frames held back while waiting (a bound on memory whatever the timestamps say).
pub const MAX_PENDING_FRAMES: usize = 256;

/// The most bytes of frames held back while waiting.
pub const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;

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
    /// A break in this track alone (the other tracks played on): this track was placed after
    /// the head; nothing else moved.
    RebasedAlone,
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

/// A break seen in one track while another played: undecided until the other track's next
/// frame.
#[derive(Debug, Clone, Copy)]
struct Pending {
    track: usize,
    /// The stream's offset if the break turns out to be the stream's.
    offset_ms: i64,
    /// The breaking frame's time, in ms of its track's input clock.
    since_ms: i64,
}

/// A frame held back while a break is undecided: (track, dts, clock, size, the caller's item).
type HeldFrame<T> = (usize, i64, u32, usize, T);

/// A stream's timeline (see the module doc for the rule). `T` is whatever the caller carries
/// with a frame: frames held back while a break is undecided are given back with it.
#[derive(Debug)]
pub struct Timeline<T> {
    tracks: [Track; 2],
    /// The newest output time of any track, in ms, across publishers.
    head_ms: Option<i64>,
    /// The offset of the stream's latest discontinuity (or its start), in ms; None until the
    /// publish's first frame.
    stream_offset_ms: Option<i64>,
    /// The next first frame continues after the head (a publisher took the path over).
    continues: bool,
    pending: Option<Pending>,
    /// Frames held back, then released, in arrival order.
    held: VecDeque<HeldFrame<T>>,
    /// Their sizes, summed.
    held_bytes: usize,
    /// Frames in `held` that may be placed now (the break is decided).
    released: bool,
    /// The next frame of this track reports how a break was decided (the frame that showed it).
    announce: Option<(usize, Correction)>,
}

impl<T> Default for Timeline<T> {
    fn default() -> Self {
        Timeline {
            tracks: Default::default(),
            head_ms: None,
            stream_offset_ms: None,
            continues: false,
            pending: None,
            held: VecDeque::new(),
            held_bytes: 0,
            released: false,
            announce: None,
        }
    }
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

impl<T> Timeline<T> {
    /// A timeline for a stream's first publisher: timestamps pass as they are.
    pub fn new() -> Timeline<T> {
        Timeline::default()
    }

    /// A new publisher took the path: its tracks start afresh and its first frame follows on
    /// from the head, if there is one. Frames the previous one had held back are dropped.
    pub fn republish(&mut self) {
        self.tracks = Default::default();
        self.stream_offset_ms = None;
        self.continues = self.head_ms.is_some();
        self.pending = None;
        self.held.clear();
        self.held_bytes = 0;
        self.released = false;
        self.announce = None;
    }

    /// Places a frame of track `track` (0 video, 1 audio) with decode time `dts` in `clock`
    /// and `size` bytes, and gives it back with its place; or holds it back (None) while a
    /// break is undecided. Call [`Timeline::next_released`] after each call for the frames a
    /// decision released.
    pub fn place(&mut self, track: usize, dts: i64, clock: u32, size: usize, item: T) -> Option<(Mapped, T)> {
        let track = track.min(1);
        let frame = (track, dts, clock, size, item);
        if !self.held.is_empty() && !self.released {
            // A frame of the waiting track while undecided, or of the track that decides.
            let room = self.held.len() < MAX_PENDING_FRAMES && self.held_bytes + size <= MAX_PENDING_BYTES;
            match self.decide(track, dts, clock) {
                None if room => {
                    self.hold(frame);
                    return None;
                }
                None => self.settle_alone(),
                Some(()) => {}
            }
            // Decided: what was held goes first, then this frame.
            self.hold(frame);
            self.released = true;
            return None;
        }
        if self.released {
            // Keep arrival order: this frame goes after the ones still to be released.
            self.hold(frame);
            return None;
        }
        match self.map(track, dts, clock) {
            Some(m) => Some((m, frame.4)),
            None => {
                self.hold(frame);
                None
            }
        }
    }

    fn hold(&mut self, frame: HeldFrame<T>) {
        self.held_bytes += frame.3;
        self.held.push_back(frame);
    }

    /// The next frame a decision released, with its place (track, place, item).
    pub fn next_released(&mut self) -> Option<(usize, Mapped, T)> {
        if !self.released {
            return None;
        }
        let Some((track, dts, clock, size, item)) = self.held.pop_front() else {
            self.released = false;
            return None;
        };
        self.held_bytes -= size;
        match self.map(track, dts, clock) {
            Some(m) => Some((track, m, item)),
            None => {
                // A new break, in a released frame: it waits like any other.
                self.held_bytes += size;
                self.held.push_front((track, dts, clock, size, item));
                self.released = false;
                None
            }
        }
    }

    /// While a break of another track is undecided: does this frame decide it? Some(()) when
    /// decided (the pending state is gone), None when the frame must wait too.
    fn decide(&mut self, track: usize, dts: i64, clock: u32) -> Option<()> {
        let Some(p) = self.pending else { return Some(()) };
        let dts_ms = rescale(dts, clock, 1000);
        if track == p.track {
            if dts_ms - p.since_ms > MAX_PENDING_MS || dts_ms < p.since_ms - MAX_PENDING_MS {
                self.settle_alone();
                return Some(());
            }
            return None;
        }
        let t = &self.tracks[track];
        let own = t.offset_ms.unwrap_or(p.offset_ms);
        if t.clock == clock && self.fits(track, dts_ms, own) {
            // The other track played on: the break was the waiting track's alone.
            self.settle_alone();
        } else {
            // The other track broke too: the stream's discontinuity (this frame follows the
            // new offset, or breaks on its own if it does not fit that either).
            self.stream_offset_ms = Some(p.offset_ms);
            self.pending = None;
            self.announce = Some((p.track, Correction::Rebased));
        }
        Some(())
    }

    /// Decides a break still waiting as that track's alone, so that what was held back can
    /// be released now ([`Timeline::next_released`]): before the publisher's tracks change
    /// or it leaves.
    pub fn settle(&mut self) {
        if self.held.is_empty() {
            return;
        }
        self.settle_alone();
        self.released = true;
    }

    /// The waiting track's break was its own: it alone goes after the head.
    fn settle_alone(&mut self) {
        if let Some(p) = self.pending.take() {
            self.tracks[p.track].offset_ms = Some(p.offset_ms);
            self.announce = Some((p.track, Correction::RebasedAlone));
        }
    }

    /// Would a frame at `dts_ms` (its track's input clock, in ms) with `offset` be no break?
    fn fits(&self, track: usize, dts_ms: i64, offset: i64) -> bool {
        let t = &self.tracks[track];
        let Some(head) = self.head_ms else { return true };
        let out = dts_ms + offset;
        out <= head + MAX_TIMESTAMP_LEAP_MS
            && match t.last {
                Some(_) => out >= t.last_ms - MAX_TIMESTAMP_STEP_BACK_MS,
                None => out >= head - MAX_TIMESTAMP_LEAP_MS,
            }
    }

    /// Is a track other than `track` playing (a frame near the head)?
    fn other_playing(&self, track: usize) -> bool {
        let Some(head) = self.head_ms else { return false };
        self.tracks
            .iter()
            .enumerate()
            .any(|(k, t)| k != track && t.last.is_some() && head - t.last_ms <= ACTIVE_TRACK_MS)
    }

    /// Places a frame, or None when it shows a break that is not yet known to be the stream's.
    fn map(&mut self, track: usize, dts: i64, clock: u32) -> Option<Mapped> {
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
        if self.tracks[track].clock != clock {
            // A track whose clock changed is a new track.
            let t = &mut self.tracks[track];
            *t = Track { offset_ms: t.offset_ms, clock, ..Track::default() };
        }
        let mut offset = *self.tracks[track].offset_ms.get_or_insert(stream_offset);
        if !self.fits(track, dts_ms, offset) {
            if offset != stream_offset && self.fits(track, dts_ms, stream_offset) {
                offset = stream_offset;
                correction = Correction::Followed;
            } else {
                let step = self.tracks[track].step_ms.clamp(1, MAX_STEP_MS);
                let candidate = head + step - dts_ms;
                if self.other_playing(track) {
                    self.pending = Some(Pending { track, offset_ms: candidate, since_ms: dts_ms });
                    return None;
                }
                offset = candidate;
                self.stream_offset_ms = Some(offset);
                correction = Correction::Rebased;
            }
            self.tracks[track].offset_ms = Some(offset);
        }
        if let Some((k, c)) = self.announce
            && k == track
        {
            self.announce = None;
            correction = c;
        }
        let t = &mut self.tracks[track];
        let last_ms = t.last.map(|_| t.last_ms);
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
        Some(Mapped { dts: out, correction })
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
    /// Frames held back come out later, in order: the result is in input order.
    fn run(tl: &mut Timeline<usize>, frames: &[(usize, i64)]) -> Vec<(i64, Correction)> {
        let mut out = vec![None; frames.len()];
        for (i, &(k, t)) in frames.iter().enumerate() {
            if let Some((m, i)) = tl.place(k, t, 1000, 100, i) {
                out[i] = Some((m.dts, m.correction));
            }
            while let Some((_, m, i)) = tl.next_released() {
                out[i] = Some((m.dts, m.correction));
            }
        }
        out.into_iter().map(|o| o.expect("every frame placed")).collect()
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
        tl.place(V, 90_000, 90_000, 0, ());
        tl.republish();
        // 90 kHz video and 48 kHz audio after a takeover: both move by the same time.
        let v = tl.place(V, 0, 90_000, 0, ()).unwrap().0;
        let a = tl.place(A, 0, 48_000, 0, ()).unwrap().0;
        assert_eq!(v.dts, 90 * (1000 + REPUBLISH_GAP_MS));
        assert_eq!(a.dts, 48 * (1000 + REPUBLISH_GAP_MS));
        assert_eq!(tl.output(A, 480, 48_000), Some(480 + a.dts));
    }

    #[test]
    fn a_track_stepping_back_far_alone_is_placed_again_alone() {
        // Audio's clock steps back 1.5 s at 5 s while video plays on.
        let mut frames = av(0, 5_000, (0, 0), (0, 0));
        let before = frames.len();
        for t in (5_000..8_000).step_by(20) {
            if t % 40 == 0 {
                frames.push((V, t));
            }
            frames.push((A, t - 1_500));
        }
        let mut tl = Timeline::new();
        let out = run(&mut tl, &frames);
        for ((k, t), (o, c)) in frames.iter().zip(&out) {
            if *k == V {
                assert_eq!((*o, *c), (*t, Correction::None), "video does not move");
            }
        }
        let audio: Vec<_> = frames.iter().zip(&out).skip(before).filter(|(f, _)| f.0 == A).map(|(_, o)| *o).collect();
        assert_eq!(audio[0].1, Correction::RebasedAlone);
        assert!((4_980..=5_060).contains(&audio[0].0), "audio goes on after the head: {:?}", audio[0]);
        assert!(audio.windows(2).all(|w| w[1].0 - w[0].0 == 20), "then keeps its own pace");
        assert!(out.iter().all(|o| o.1 != Correction::Rebased), "no stream discontinuity");
    }

    #[test]
    fn a_break_of_one_track_waits_a_bounded_time_for_the_other() {
        // Audio restarts at 0 and video stops at the same moment: audio is held back at most
        // MAX_PENDING_MS, then placed alone; nothing is lost.
        let mut frames = av(0, 3_000, (0, 0), (0, 0));
        frames.extend((0..MAX_PENDING_MS + 500).step_by(20).map(|t| (A, t)));
        let mut tl = Timeline::new();
        let out = run(&mut tl, &frames);
        let audio: Vec<_> = out.iter().skip(av(0, 3_000, (0, 0), (0, 0)).len()).collect();
        assert_eq!(audio[0].1, Correction::RebasedAlone);
        assert!(audio.windows(2).all(|w| w[1].0 > w[0].0));
        // Frames at one time forever are held back only up to MAX_PENDING_FRAMES.
        let mut tl = Timeline::new();
        let mut frames = av(0, 3_000, (0, 0), (0, 0));
        frames.extend(std::iter::repeat_n((A, 0), MAX_PENDING_FRAMES + 10));
        run(&mut tl, &frames); // every frame placed, or it panics
        assert!(tl.held.is_empty());
        // And only up to MAX_PENDING_BYTES.
        let mut tl = Timeline::new();
        run(&mut tl, &av(0, 3_000, (0, 0), (0, 0)));
        assert!(tl.place(A, 0, 1000, 1, 0).is_none());
        assert!(tl.place(A, 20, 1000, MAX_PENDING_BYTES, 1).is_none());
        assert!(tl.next_released().is_some_and(|(_, m, _)| m.correction == Correction::RebasedAlone));
        assert!(tl.next_released().is_some());
        assert_eq!(tl.held_bytes, 0);
    }

    #[test]
    fn a_republish_drops_what_was_held_back() {
        let mut tl = Timeline::new();
        run(&mut tl, &av(0, 3_000, (0, 0), (0, 0)));
        assert!(tl.place(V, 0, 1000, 0, 0).is_none(), "held back: audio plays");
        tl.republish();
        assert!(tl.held.is_empty());
        assert_eq!(tl.place(V, 0, 1000, 0, 1).map(|(m, _)| m.correction), Some(Correction::Continued));
    }
}
