//! One RTSP playback viewer, sans I/O: PLAY (Range, Scale, Speed), PAUSE and the end of the
//! media in; RTP packets with their send times, sender reports, BYE and the PLAY answer out.
//! The media is read by the driver on the player's behalf ([`VodPlayer::poll_need`] ->
//! blocking read -> [`VodPlayer::handle_read`]), so the player runs on a virtual clock in
//! tests and never blocks. Timing follows [`super::pace`].
//!
//! Drive it like the protocol sessions: after every input (`play`, `pause`, `handle_read`, a
//! timeout) drain [`VodPlayer::poll_need`] and [`VodPlayer::poll_output`], then sleep until
//! [`VodPlayer::poll_timeout`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferrocast_media::{Frame, TrackInfo, TrackKind, Tracks, rescale};
use ferrocast_rtsp::codec::{self, Packetizer};
use ferrocast_rtsp::range::{self, Range};
use ferrocast_rtsp::rtcp;
use ferrocast_rtsp::rtp;
use ferrocast_rtsp::server::{PlayRequest, RtpStart};

use super::pace::{self, GAP_US, Pace};
use super::source::{Next, Source, SourceError, Timed};

/// The media of one viewer, read on the player's behalf. Blocking (files): the driver calls
/// it off the async workers.
pub trait Media: Send + 'static {
    /// What is played.
    fn info(&self) -> MediaInfo;
    /// Does one read.
    fn read(&mut self, need: Need) -> Read;
}

/// What is played: its codec parameters and extent.
#[derive(Debug, Clone)]
pub struct MediaInfo {
    /// Codec parameters (the SDP's).
    pub tracks: Arc<Tracks>,
    /// First media time, µs (UTC µs for recordings).
    pub start_us: i64,
    /// End, µs; None: open (a recording being written).
    pub end_us: Option<i64>,
    /// Positions are UTC (recordings): `clock=` ranges apply.
    pub clock: bool,
}

/// A read the player needs done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Position at the last video keyframe at or before this time, then read on from there.
    Seek(i64),
    /// The next frames from the position.
    Next,
    /// Times of video keyframes in [from_us, to_us), at most `max`.
    Keyframes {
        /// From.
        from_us: i64,
        /// To (exclusive).
        to_us: i64,
        /// At most this many.
        max: usize,
    },
    /// The video keyframe at this time, alone.
    Keyframe(i64),
}

/// The result of a [`Need`].
#[derive(Debug, Clone)]
pub enum Read {
    /// [`Need::Seek`]: the keyframe's time, None at or after the end.
    Seeked(Option<i64>),
    /// [`Need::Next`]: frames (and new codec parameters), or None at the end.
    Frames(Option<(Option<Arc<Tracks>>, Vec<Timed>)>),
    /// [`Need::Keyframes`].
    Keyframes(Vec<i64>),
    /// [`Need::Keyframe`].
    Keyframe(Option<Timed>),
    /// The read failed (the file was deleted, is damaged): playback ends with BYE.
    Failed,
}

/// Something to send, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The PLAY answer: Range, RTP-Info, the Scale and Speed used.
    Answer(PlayAnswer),
    /// The PLAY cannot start: refuse it with this status (457 nothing at or after its point,
    /// 404 the media is gone or unreadable).
    Reject(u16),
    /// A frame's RTP packets on a track (`[u16 length][packet]` records, see
    /// [`codec::packets`]).
    Rtp {
        /// 0 video, 1 audio.
        track: usize,
        /// The packets.
        packets: Bytes,
    },
    /// An RTCP packet (a sender report, a BYE) on a track.
    Rtcp {
        /// 0 video, 1 audio.
        track: usize,
        /// The packet.
        packet: Bytes,
    },
}

/// The answer to a PLAY.
#[derive(Debug, Clone, PartialEq)]
pub struct PlayAnswer {
    /// The Range header value.
    pub range: String,
    /// RTP-Info: per set-up track, the next packet's sequence number and the RTP time of the
    /// Range's start (RFC 2326 12.33).
    pub starts: Vec<RtpStart>,
    /// The Scale used, when asked.
    pub scale: Option<f64>,
    /// The Speed used, when asked.
    pub speed: Option<f64>,
    /// Echo `Rate-Control: no`.
    pub rate_control_off: bool,
}

/// Frames left in the queue when the next batch is read: reading one part takes a few ms,
/// and these are ~0.3 s of 25 fps video with audio.
const LOW_WATER_FRAMES: usize = 16;

/// Media time over which keyframe times are listed at once in keyframes-only play.
const KEYFRAME_WINDOW_US: i64 = 120_000_000;

/// A step in media time bigger than this between two frames sent is a gap between
/// recordings (or a camera that stopped): playback skips it rather than wait it out. Long
/// camera GOPs in keyframes-only play stay under it.
pub const MAX_GAP_US: i64 = 10_000_000;

/// How soon a recording still being written is read again when the part being written was
/// reached while frames remain to play (parts complete every `record.part_duration_ms`).
const OPEN_END_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// Most keyframe times listed at once.
const MAX_KEYFRAMES_LISTED: usize = 64;

/// What the RTP and its reports need per track: where its packets start, and the ONVIF
/// absolute-time base.
struct Track {
    packetizer: Packetizer,
    /// A sender report went out since the PLAY.
    reported: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Not playing (before the first PLAY, or after PAUSE).
    Idle,
    /// A PLAY waits for its position (a seek or a keyframe listing).
    Starting,
    /// Sending.
    Playing,
    /// At the end: BYE sent; a new PLAY may start again.
    Ended,
}

/// See the module doc.
pub struct VodPlayer {
    info: MediaInfo,
    tracks: Arc<Tracks>,
    out: [Option<Track>; 2],
    state: State,
    pace: Option<Pace>,
    /// The PLAY being started: (its request, the position asked, the end in the direction of
    /// play).
    starting: Option<(PlayRequest, i64, Option<i64>)>,
    /// The end of the current play, in the direction of play.
    end_us: Option<i64>,
    queue: VecDeque<Timed>,
    /// Keyframe times still to read (keyframes-only play), in the order of play.
    keyframe_times: VecDeque<i64>,
    /// Where the next keyframe listing starts.
    list_from: i64,
    needs: VecDeque<Need>,
    in_flight: bool,
    /// The read in flight was asked for before the last PLAY: its result is dropped.
    stale_read: bool,
    /// Codec parameters that change at a frame: (its decode time, the parameters), in order.
    track_changes: VecDeque<(i64, Arc<Tracks>)>,
    /// The media has nothing more in the direction of play.
    exhausted: bool,
    /// A recording being written had nothing more yet: read again then.
    retry_at: Option<Instant>,
    outputs: VecDeque<Output>,
    /// Media time of the next frame to send (where a PAUSE stands).
    position_us: i64,
    last_stamp_us: Option<i64>,
    /// Where the client's timeline stood when the last PLAY replaced a pace.
    clock_us: Option<i64>,
    /// Media time of the last frame sent since the PLAY.
    last_sent_us: Option<i64>,
    /// The first frame after a PLAY has not gone yet (ONVIF D flag).
    discontinuity: bool,
    onvif: bool,
    /// Low byte of the PLAY's CSeq, for the ONVIF extension.
    cseq: u8,
    mtu: usize,
}

impl VodPlayer {
    /// A player of `info` for the tracks set up (`[video, audio]`), with RTP identities from
    /// `random` (a CSPRNG draw) and payloads of at most `mtu` bytes.
    pub fn new(info: MediaInfo, set_up: [bool; 2], random: u64, mtu: usize) -> VodPlayer {
        let tracks = info.tracks.clone();
        let mut out = [None, None];
        for (i, t) in [tracks.video.as_ref(), tracks.audio.as_ref()].into_iter().enumerate() {
            let Some(t) = t.filter(|_| set_up[i]) else { continue };
            let r = random.rotate_left(17 * i as u32);
            let pt = ferrocast_rtsp::sdp::payload_type(t);
            out[i] = Packetizer::new(t, pt, r as u32, (r >> 32) as u16, (r >> 48) as u32, mtu)
                .map(|packetizer| Track { packetizer, reported: false });
        }
        VodPlayer {
            position_us: info.start_us,
            list_from: info.start_us,
            info,
            tracks,
            out,
            state: State::Idle,
            pace: None,
            starting: None,
            end_us: None,
            queue: VecDeque::new(),
            keyframe_times: VecDeque::new(),
            needs: VecDeque::new(),
            in_flight: false,
            stale_read: false,
            track_changes: VecDeque::new(),
            exhausted: false,
            retry_at: None,
            outputs: VecDeque::new(),
            last_stamp_us: None,
            clock_us: None,
            last_sent_us: None,
            discontinuity: true,
            onvif: false,
            cseq: 0,
            mtu,
        }
    }

    /// Whether the player sends (PLAY answered, not paused, not at the end).
    pub fn is_playing(&self) -> bool {
        self.state == State::Playing
    }

    /// The SSRC of a track (for the BYE of a TEARDOWN).
    pub fn ssrc(&self, track: usize) -> Option<u32> {
        self.out.get(track)?.as_ref().map(|t| t.packetizer.ssrc())
    }

    /// A PLAY: where it starts, at what Scale and Speed. Err(457) for a Range outside the
    /// media (or a `clock=` range of a file). The answer follows as [`Output::Answer`] once
    /// the position is known.
    pub fn play(&mut self, now: Instant, req: &PlayRequest) -> Result<(), u16> {
        let scale = req.scale.map_or(1.0, pace::supported_scale);
        let (start, end) = self.range_of(req.range.as_ref(), scale)?;
        self.onvif = req.onvif_replay;
        self.cseq = req.cseq as u8;
        // A PLAY without a Range resumes exactly where the stream stands, with the frames
        // already read, when it keeps going the same way at a Scale that sends every frame.
        let resume = req.range.is_none()
            && matches!(self.state, State::Idle | State::Playing)
            && self.pace.is_some_and(|p| p.scale.signum() == scale.signum())
            && !pace::keyframes_only(scale)
            && !self.pace.is_some_and(|p| pace::keyframes_only(p.scale));
        self.state = State::Starting;
        // The client's clock runs on through a pause or seek: the new PLAY point is stamped
        // no earlier than where the old timeline stands now.
        if let Some(p) = self.pace.take() {
            self.clock_us = Some(p.stamp_at(now));
        }
        self.starting = Some((req.clone(), start, end));
        self.end_us = end;
        if resume {
            self.begin(now, self.position_us);
            return Ok(());
        }
        self.queue.clear();
        self.track_changes.clear();
        self.keyframe_times.clear();
        self.needs.clear();
        self.exhausted = false;
        self.retry_at = None;
        // What a read asked for before this PLAY brings is of the old position.
        self.stale_read = self.in_flight;
        if pace::keyframes_only(scale) {
            // The PLAY point is where it was asked; keyframes are listed from there (backwards:
            // listings end before `list_from`, so the point itself is in the first). Without a
            // Range it goes on from the frame last sent, which is not sent again.
            let again = req.range.is_none() && self.last_stamp_us.is_some();
            self.list_from = match (scale < 0.0, again) {
                (true, false) => start.saturating_add(1),
                (true, true) => start,
                (false, false) => start,
                (false, true) => start.saturating_add(1),
            };
            self.begin(now, start);
        } else {
            self.needs.push_back(Need::Seek(start));
        }
        Ok(())
    }

    /// The start and end of a PLAY in media time, in the direction of play.
    fn range_of(&self, range: Option<&Range>, scale: f64) -> Result<(i64, Option<i64>), u16> {
        let first = self.info.start_us;
        let last = self.info.end_us;
        let npt = |s: f64| first + (s * 1e6).round() as i64;
        let (start, end) = match range {
            None | Some(Range::Npt { start: None, .. }) => (self.position_us, None),
            Some(Range::Npt { start: Some(s), end }) => (npt(*s), end.map(npt)),
            Some(Range::Clock { .. }) if !self.info.clock => return Err(457),
            Some(Range::Clock { start_us, end_us }) => {
                let us = |u: u64| i64::try_from(u).unwrap_or(i64::MAX);
                (us(*start_us), end_us.map(us))
            }
        };
        if scale < 0.0 {
            // Backwards: from the later time down to the earlier (ONVIF writes a reverse range
            // later-earlier; one written in forward order means the same stretch).
            let (start, end) = match end {
                Some(e) if e > start => (e, Some(start)),
                _ => (start, end),
            };
            if start <= first || end.is_some_and(|e| last.is_some_and(|l| e >= l)) {
                return Err(457);
            }
            let start = last.map_or(start, |l| start.min(l));
            return Ok((start, Some(end.unwrap_or(first).max(first))));
        }
        if last.is_some_and(|l| start >= l) || end.is_some_and(|e| e <= first || e <= start) {
            return Err(457);
        }
        Ok((start.max(first), end.or(last)))
    }

    /// Starts sending from media time `t0_us`, and queues the answer.
    fn begin(&mut self, now: Instant, t0_us: i64) {
        let Some((req, _, _)) = self.starting.take() else { return };
        let scale = req.scale.map_or(1.0, pace::supported_scale);
        let speed = req.speed.map_or(1.0, pace::supported_speed);
        let stamp0 = self.last_stamp_us.map_or(0, |s| s + GAP_US).max(self.clock_us.take().unwrap_or(0));
        let pace = Pace { t0_us, stamp0_us: stamp0, wall0: now, scale, speed, realtime: !req.rate_control_off };
        self.pace = Some(pace);
        self.position_us = t0_us;
        self.last_sent_us = None;
        self.discontinuity = true;
        for t in self.out.iter_mut().flatten() {
            t.reported = false;
        }
        let starts = self
            .out
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
            .map(|(i, t)| RtpStart {
                track: i,
                seq: t.packetizer.next_sequence(),
                rtptime: t.packetizer.rtp_time(rescale(stamp0, 1_000_000, t.packetizer.track().clock_rate())),
            })
            .collect();
        let range = if self.info.clock && req.range.as_ref().is_some_and(|r| matches!(r, Range::Clock { .. })) {
            range::format_clock(t0_us.max(0) as u64, self.end_us.map(|e| e.max(0) as u64))
        } else {
            let s = |t: i64| (t - self.info.start_us) as f64 / 1e6;
            range::format_npt(s(t0_us).max(0.0), self.end_us.map(s))
        };
        self.outputs.push_back(Output::Answer(PlayAnswer {
            range,
            starts,
            scale: req.scale.map(|_| scale),
            speed: req.speed.map(|_| speed),
            rate_control_off: req.rate_control_off,
        }));
        self.state = State::Playing;
        if self.queue.is_empty() && !pace::keyframes_only(scale) && !self.in_flight && !self.needs.contains(&Need::Next)
        {
            self.needs.push_back(Need::Next);
        }
    }

    /// A PAUSE: sending stops; a PLAY without Range resumes at the next frame not sent.
    pub fn pause(&mut self) {
        if matches!(self.state, State::Playing | State::Starting) {
            self.state = State::Idle;
            self.starting = None;
            if let Some(f) = self.queue.front() {
                self.position_us = f.dts_us;
            }
        }
    }

    /// The next read to do at `now`; one at a time.
    pub fn poll_need(&mut self, now: Instant) -> Option<Need> {
        if self.in_flight {
            return None;
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
        }
        if self.needs.is_empty() && self.state == State::Playing && !self.exhausted && self.retry_at.is_none() {
            let trick = self.pace.is_some_and(|p| pace::keyframes_only(p.scale));
            if trick && self.queue.is_empty() {
                match self.keyframe_times.pop_front() {
                    Some(t) => self.needs.push_back(Need::Keyframe(t)),
                    None => self.needs.push_back(self.listing()),
                }
            } else if !trick && self.queue.len() < LOW_WATER_FRAMES {
                self.needs.push_back(Need::Next);
            }
        }
        let need = self.needs.pop_front()?;
        self.in_flight = true;
        Some(need)
    }

    /// The next keyframe listing of keyframes-only play, from `list_from` in the direction
    /// of play.
    fn listing(&self) -> Need {
        let backwards = self.pace.is_some_and(|p| p.scale < 0.0);
        if backwards {
            // Keyframes before the point, read from up to a window back.
            Need::Keyframes {
                from_us: self.list_from.saturating_sub(KEYFRAME_WINDOW_US),
                to_us: self.list_from,
                max: usize::MAX,
            }
        } else {
            Need::Keyframes {
                from_us: self.list_from,
                to_us: self.list_from.saturating_add(KEYFRAME_WINDOW_US),
                max: MAX_KEYFRAMES_LISTED,
            }
        }
    }

    /// The result of the read [`VodPlayer::poll_need`] asked for.
    pub fn handle_read(&mut self, now: Instant, read: Read) {
        self.in_flight = false;
        if std::mem::take(&mut self.stale_read) {
            return;
        }
        let starting = self.state == State::Starting;
        match read {
            Read::Seeked(Some(t)) => {
                if self.state == State::Starting {
                    self.begin(now, t);
                }
            }
            // Nothing at or after the point (a recording cut short since DESCRIBE), or the
            // media gone: the PLAY is refused and the session stays.
            Read::Seeked(None) if starting => self.refuse(457),
            Read::Failed if starting => self.refuse(404),
            Read::Seeked(None) => self.exhausted = true,
            Read::Frames(Some((tracks, frames))) => {
                // New parameters apply from the batch's first frame, not to the frames queued
                // before it.
                if let (Some(t), Some(f)) = (tracks, frames.first()) {
                    self.track_changes.push_back((f.dts_us, t));
                }
                self.queue.extend(frames);
            }
            // A recording being written: the part being written is reached; while frames
            // remain to play, parts written meanwhile may follow. With none left, the end.
            Read::Frames(None) if self.info.end_us.is_none() && !self.queue.is_empty() => {
                self.retry_at = Some(now + OPEN_END_RETRY);
            }
            Read::Frames(None) | Read::Failed => self.exhausted = true,
            Read::Keyframes(times) => {
                let backwards = self.pace.is_some_and(|p| p.scale < 0.0);
                let mut times: Vec<i64> = times.into_iter().filter(|t| self.ahead_or_at(*t)).collect();
                times.sort_unstable();
                if backwards {
                    times.reverse();
                    // Listed up to a window back; the next listing starts where this one did.
                    let from = self.list_from.saturating_sub(KEYFRAME_WINDOW_US);
                    if times.is_empty() && from <= self.info.start_us {
                        self.exhausted = true;
                    }
                    self.list_from = from;
                } else {
                    let next = self.list_from.saturating_add(KEYFRAME_WINDOW_US);
                    match times.last() {
                        Some(&t) => self.list_from = t + 1,
                        // Nothing in the window: past the end, or a gap between recordings.
                        None if self.end_us.is_none_or(|e| next >= e) => self.exhausted = true,
                        None => self.list_from = next,
                    }
                }
                self.keyframe_times.extend(times);
            }
            Read::Keyframe(Some(f)) => self.queue.push_back(f),
            Read::Keyframe(None) => {}
        }
    }

    /// Refuses the PLAY being started.
    fn refuse(&mut self, status: u16) {
        self.starting = None;
        self.state = State::Idle;
        self.outputs.push_back(Output::Reject(status));
    }

    /// Whether media time `t` is at or after the PLAY point in the direction of play (and
    /// before the end).
    fn ahead_or_at(&self, t: i64) -> bool {
        let Some(p) = &self.pace else { return false };
        let past_end = self.end_us.is_some_and(|e| if p.scale < 0.0 { t < e } else { t >= e });
        (t == p.t0_us || p.ahead(t, p.t0_us)) && !past_end
    }

    /// The next thing to send at `now`.
    pub fn poll_output(&mut self, now: Instant) -> Option<Output> {
        if let Some(o) = self.outputs.pop_front() {
            return Some(o);
        }
        if self.state != State::Playing {
            return None;
        }
        let mut pace = self.pace?;
        while let Some(f) = self.queue.front() {
            // Frames before the point (the rest of a part read from its keyframe) and past
            // the end are not sent; audio plays at Scale 1 only.
            let before = !(f.dts_us == pace.t0_us || pace.ahead(f.dts_us, pace.t0_us));
            let past_end = self.end_us.is_some_and(|e| if pace.scale < 0.0 { f.dts_us < e } else { f.dts_us >= e });
            if past_end {
                self.queue.clear();
                self.exhausted = true;
                break;
            }
            let muted = f.frame.kind == TrackKind::Audio && pace.scale != 1.0;
            if before || muted || self.out[track_index(f.frame.kind)].is_none() {
                self.queue.pop_front();
                continue;
            }
            if let Some(last) = self.last_sent_us
                && pace.ahead(f.dts_us, last)
                && (f.dts_us - last).abs() > MAX_GAP_US
            {
                // A gap: the frame after it follows the last one sent by the gap step, on
                // the client's timeline and in sending.
                let last_stamp = self.last_stamp_us.unwrap_or(pace.stamp0_us);
                let last_sent_at = pace.send_at(pace.stamp(last)).unwrap_or(now);
                pace = Pace {
                    t0_us: f.dts_us,
                    stamp0_us: last_stamp + GAP_US,
                    wall0: last_sent_at + std::time::Duration::from_micros((GAP_US as f64 / pace.speed) as u64),
                    ..pace
                };
                self.pace = Some(pace);
                // Once: the next frame sent is measured from the new point.
                self.last_sent_us = None;
                self.discontinuity = true;
            }
            let stamp = pace.stamp(f.dts_us);
            if pace.send_at(stamp).is_some_and(|at| at > now) {
                return None;
            }
            let f = self.queue.pop_front().expect("peeked");
            self.position_us = f.dts_us;
            self.last_sent_us = Some(f.dts_us);
            return self.send(now, &pace, &f);
        }
        if self.exhausted && !self.in_flight && self.queue.is_empty() && self.keyframe_times.is_empty() {
            self.end();
            return self.outputs.pop_front();
        }
        None
    }

    /// The packets of one frame (and the sender report before a track's first).
    fn send(&mut self, now: Instant, pace: &Pace, f: &Timed) -> Option<Output> {
        while self.track_changes.front().is_some_and(|(at, _)| *at <= f.dts_us) {
            if let Some((_, t)) = self.track_changes.pop_front() {
                self.tracks = t;
            }
        }
        let i = track_index(f.frame.kind);
        let stamp = pace.stamp(f.pts_us);
        let dts_stamp = pace.stamp(f.dts_us);
        self.last_stamp_us = Some(self.last_stamp_us.map_or(stamp.max(dts_stamp), |l| l.max(stamp).max(dts_stamp)));
        let info: Option<&TrackInfo> = if i == 0 { self.tracks.video.as_ref() } else { self.tracks.audio.as_ref() };
        let t = self.out[i].as_mut()?;
        if info.is_some_and(|info| info != t.packetizer.track()) {
            // New codec parameters (another recording file): the same source identity.
            let p = &t.packetizer;
            let (pt, ssrc, seq, off) =
                (ferrocast_rtsp::sdp::payload_type(info?), p.ssrc(), p.next_sequence(), p.time_offset());
            if let Some(np) = Packetizer::new(info?, pt, ssrc, seq, off, self.mtu) {
                t.packetizer = np;
            }
        }
        let clock = t.packetizer.track().clock_rate();
        let restamped = Frame::new(
            f.frame.kind,
            rescale(dts_stamp, 1_000_000, clock),
            rescale(stamp, 1_000_000, clock),
            f.frame.keyframe,
            f.frame.data.clone(),
        );
        if !t.reported {
            t.reported = true;
            let ntp = rtcp::ntp_from_unix_micros(crate::rtsp::unix_micros());
            let rtp_now = t.packetizer.rtp_time(rescale(pace.stamp_at(now), 1_000_000, clock));
            let sr = rtcp::sender_report(t.packetizer.ssrc(), ntp, rtp_now, 0, 0, "ferrocast");
            self.outputs.push_back(Output::Rtcp { track: i, packet: sr });
        }
        let mut packets = t.packetizer.packetize(&restamped);
        if self.onvif {
            packets = with_onvif(&packets, f, self.discontinuity, self.cseq);
        }
        self.discontinuity = false;
        self.outputs.push_back(Output::Rtp { track: i, packets });
        self.outputs.pop_front()
    }

    /// The end of the media in the direction of play: BYE on every track.
    fn end(&mut self) {
        self.state = State::Ended;
        for (i, t) in self.out.iter().enumerate() {
            if let Some(t) = t {
                self.outputs.push_back(Output::Rtcp { track: i, packet: rtcp::bye(t.packetizer.ssrc()) });
            }
        }
    }

    /// A sender report per track for the RTCP report timer.
    pub fn sender_reports(&self, now: Instant, unix_micros: u64) -> Vec<Output> {
        let Some(pace) = self.pace.filter(|_| self.state == State::Playing) else { return Vec::new() };
        let ntp = rtcp::ntp_from_unix_micros(unix_micros);
        let stamp = self.last_stamp_us.map_or(pace.stamp0_us, |l| pace.stamp_at(now).min(l + GAP_US));
        self.out
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
            .map(|(i, t)| {
                let rtp_now = t.packetizer.rtp_time(rescale(stamp, 1_000_000, t.packetizer.track().clock_rate()));
                Output::Rtcp {
                    track: i,
                    packet: rtcp::sender_report(t.packetizer.ssrc(), ntp, rtp_now, 0, 0, "ferrocast"),
                }
            })
            .collect()
    }

    /// When the next output is due at `now` (None: nothing is waiting for a time).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        // Output not yet taken (a turn of the driver ends after so many) is due at once.
        if !self.outputs.is_empty() {
            return Some(now);
        }
        if self.state != State::Playing {
            return None;
        }
        let pace = self.pace?;
        // Without rate control a queued frame is due now (the PLAY point is in the past).
        let due = self.queue.front().map(|f| pace.send_at(pace.stamp(f.dts_us)).unwrap_or(pace.wall0));
        [due, self.retry_at].into_iter().flatten().min()
    }
}

impl Media for Source {
    fn info(&self) -> MediaInfo {
        MediaInfo {
            tracks: self.tracks().clone(),
            start_us: self.start_us(),
            end_us: self.end_us(),
            clock: self.is_clock(),
        }
    }

    fn read(&mut self, need: Need) -> Read {
        let failed = |e: SourceError| {
            tracing::info!("playback read: {e}");
            Read::Failed
        };
        match need {
            Need::Seek(t) => self.seek(t).map_or_else(failed, Read::Seeked),
            Need::Next => match self.next() {
                Ok(Next::Batch(b)) => Read::Frames(Some((b.tracks, b.frames))),
                Ok(Next::End) => Read::Frames(None),
                Err(e) => failed(e),
            },
            Need::Keyframes { from_us, to_us, max } => {
                self.keyframes(from_us, to_us, max).map_or_else(failed, Read::Keyframes)
            }
            Need::Keyframe(t) => self.keyframe(t).map_or_else(failed, Read::Keyframe),
        }
    }
}

fn track_index(kind: TrackKind) -> usize {
    match kind {
        TrackKind::Video => 0,
        TrackKind::Audio => 1,
    }
}

/// The packets of a frame with the ONVIF replay extension carrying the frame's absolute time
/// (recordings: its UTC time; files: its media time from the Unix epoch).
fn with_onvif(packets: &Bytes, f: &Timed, discontinuity: bool, cseq: u8) -> Bytes {
    let ntp = rtcp::ntp_from_unix_micros(f.pts_us.max(0) as u64);
    let mut out = bytes::BytesMut::with_capacity(packets.len() + 64);
    for (n, pkt) in codec::packets(packets).enumerate() {
        let first = n == 0;
        let ext = rtp::onvif_replay_extension(ntp, first && f.frame.keyframe, false, first && discontinuity, cseq);
        let Some(p) = rtp::with_header_extension(&pkt, rtp::ONVIF_REPLAY_PROFILE, &ext) else { continue };
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(&p);
    }
    out.freeze()
}

#[cfg(test)]
mod tests;
