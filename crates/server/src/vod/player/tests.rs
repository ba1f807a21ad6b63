//! The pacing of a viewer on a virtual clock: exact stamps and send times, no wall clock.

use std::time::Duration;

use bytes::Bytes;
use ferrocast_media::{AudioCodec, VideoCodec};
use ferrocast_rtsp::rtcp::RtcpPacket;
use ferrocast_rtsp::rtp::RtpPacket;

use super::*;

/// 30 s of 25 fps video with a keyframe every second and 48 kHz AAC (1024 samples a frame).
struct Synthetic {
    frames: Vec<Timed>,
    pos: usize,
    start_us: i64,
    end_us: i64,
    clock: bool,
}

const SECONDS: i64 = 30;
const FRAME_US: i64 = 40_000;

fn tracks() -> Arc<Tracks> {
    Arc::new(Tracks {
        video: Some(TrackInfo::Video { codec: VideoCodec::H264, config: Bytes::new(), clock_rate: 90_000 }),
        audio: Some(TrackInfo::Audio {
            codec: AudioCodec::Aac,
            config: Bytes::from_static(&[0x11, 0x90]),
            sample_rate: 48_000,
            channels: 2,
            clock_rate: 48_000,
        }),
        metadata: None,
    })
}

impl Synthetic {
    fn new(start_us: i64, clock: bool) -> Synthetic {
        let mut frames = Vec::new();
        for i in 0..SECONDS * 25 {
            let t = i * FRAME_US;
            let key = i % 25 == 0;
            let data = Bytes::from(vec![0, 0, 0, 2, if key { 0x65 } else { 0x41 }, i as u8]);
            frames.push(Timed {
                dts_us: start_us + t,
                pts_us: start_us + t,
                frame: Frame::new(TrackKind::Video, t * 9 / 100, t * 9 / 100, key, data),
            });
        }
        let mut n = 0i64;
        while n * 1024 * 1_000_000 / 48_000 < SECONDS * 1_000_000 {
            let t = n * 1024 * 1_000_000 / 48_000;
            frames.push(Timed {
                dts_us: start_us + t,
                pts_us: start_us + t,
                frame: Frame::new(TrackKind::Audio, n * 1024, n * 1024, true, Bytes::from_static(&[1, 2, 3])),
            });
            n += 1;
        }
        frames.sort_by_key(|f| f.dts_us);
        Synthetic { frames, pos: 0, start_us, end_us: start_us + SECONDS * 1_000_000, clock }
    }
}

impl Media for Synthetic {
    fn info(&self) -> MediaInfo {
        MediaInfo { tracks: tracks(), start_us: self.start_us, end_us: Some(self.end_us), clock: self.clock }
    }

    fn read(&mut self, need: Need) -> Read {
        let key = |f: &Timed| f.frame.kind == TrackKind::Video && f.frame.keyframe;
        match need {
            Need::Seek(t) => {
                let k = self.frames.iter().rposition(|f| key(f) && f.dts_us <= t).unwrap_or(0);
                self.pos = k;
                Read::Seeked(Some(self.frames[k].dts_us))
            }
            Need::Next => {
                // One second a batch, like a recorded part.
                let end = (self.pos + 72).min(self.frames.len());
                if self.pos >= end {
                    return Read::Frames(None);
                }
                let batch = self.frames[self.pos..end].to_vec();
                self.pos = end;
                Read::Frames(Some((None, batch)))
            }
            Need::Keyframes { from_us, to_us, max } => Read::Keyframes(
                self.frames
                    .iter()
                    .filter(|f| key(f) && f.dts_us >= from_us && f.dts_us < to_us)
                    .map(|f| f.dts_us)
                    .take(max)
                    .collect(),
            ),
            Need::Keyframe(t) => Read::Keyframe(self.frames.iter().find(|f| key(f) && f.dts_us == t).cloned()),
        }
    }
}

/// What the client got: per RTP packet (track, send time since the start, RTP timestamp,
/// sequence number, first byte of the frame's payload marker).
#[derive(Debug, Clone)]
struct Sent {
    track: usize,
    at: Duration,
    rtp: RtpPacket,
}

struct Run {
    player: VodPlayer,
    media: Synthetic,
    t0: Instant,
    now: Instant,
    sent: Vec<Sent>,
    answers: Vec<PlayAnswer>,
    rejected: Vec<u16>,
    byes: usize,
    reports: usize,
}

impl Run {
    fn new(clock: bool) -> Run {
        let start = if clock { 1_795_600_800_000_000 } else { 0 };
        Run::with(Synthetic::new(start, clock))
    }

    fn with(media: Synthetic) -> Run {
        let t0 = Instant::now();
        Run {
            player: VodPlayer::new(media.info(), [true, true], 0x1234_5678_9abc_def0, 1400),
            media,
            t0,
            now: t0,
            sent: Vec::new(),
            answers: Vec::new(),
            rejected: Vec::new(),
            byes: 0,
            reports: 0,
        }
    }

    fn pump(&mut self) {
        loop {
            if let Some(need) = self.player.poll_need(self.now) {
                let r = self.media.read(need);
                self.player.handle_read(self.now, r);
                continue;
            }
            match self.player.poll_output(self.now) {
                Some(Output::Answer(a)) => self.answers.push(a),
                Some(Output::Reject(code)) => self.rejected.push(code),
                Some(Output::Rtp { track, packets }) => {
                    for p in codec::packets(&packets) {
                        let rtp = RtpPacket::parse(p).unwrap();
                        self.sent.push(Sent { track, at: self.now - self.t0, rtp });
                    }
                }
                Some(Output::Rtcp { packet, .. }) => {
                    let parsed = ferrocast_rtsp::rtcp::parse(&packet).unwrap();
                    if parsed.iter().any(|p| matches!(p, RtcpPacket::Bye { .. })) {
                        self.byes += 1;
                    } else {
                        self.reports += 1;
                    }
                }
                None => return,
            }
        }
    }

    /// Runs the virtual clock until `until` after the start, stepping to each timeout.
    fn run_until(&mut self, until: Duration) {
        self.pump();
        while let Some(at) = self.player.poll_timeout(self.now) {
            if at - self.t0 > until {
                break;
            }
            self.now = self.now.max(at);
            self.pump();
        }
        self.now = self.now.max(self.t0 + until);
        self.pump();
    }

    fn play(&mut self, headers: PlayRequest) -> Result<(), u16> {
        let r = self.player.play(self.now, &headers);
        self.pump();
        r
    }

    fn video(&self) -> Vec<&Sent> {
        self.sent.iter().filter(|s| s.track == 0 && s.rtp.marker).collect()
    }
}

fn npt(start: f64) -> Option<Range> {
    Some(Range::Npt { start: Some(start), end: None })
}

/// The RTP time a stamp (µs) maps to on a track, given the stamp-0 RTP time of RTP-Info.
fn rtp_of(base: u32, stamp_us: i64, clock: i64) -> u32 {
    base.wrapping_add((stamp_us * clock / 1_000_000) as u32)
}

#[test]
fn scale_one_from_a_range_stamps_and_sends_in_real_time() {
    let mut r = Run::new(false);
    r.play(PlayRequest { range: npt(5.3), ..Default::default() }).unwrap();
    let a = r.answers[0].clone();
    assert_eq!(a.range, "npt=5.000-30.000", "the keyframe at or before 5.3 s");
    let video_base = a.starts.iter().find(|s| s.track == 0).unwrap().rtptime;
    r.run_until(Duration::from_secs(2));
    let v = r.video();
    // Frames of 5.00 .. 7.00 s, each at its time after the PLAY, stamped the same.
    assert_eq!(v.len(), 51, "{:?}", v.iter().map(|s| s.at).collect::<Vec<_>>());
    for (i, s) in v.iter().enumerate() {
        let stamp = i as i64 * FRAME_US;
        assert_eq!(s.at, Duration::from_micros(stamp as u64));
        assert_eq!(s.rtp.timestamp, rtp_of(video_base, stamp, 90_000));
    }
    assert_eq!(v[0].rtp.sequence, a.starts[0].seq);
    let audio: Vec<&Sent> = r.sent.iter().filter(|s| s.track == 1).collect();
    assert!(audio.len() >= 90, "audio plays at Scale 1: {}", audio.len());
    assert_eq!(r.reports, 2, "a sender report before each track's first packet");
}

#[test]
fn scale_four_sends_keyframes_only_four_times_faster() {
    let mut r = Run::new(false);
    r.play(PlayRequest { range: npt(5.0), scale: Some(4.0), ..Default::default() }).unwrap();
    assert_eq!(r.answers[0].scale, Some(4.0));
    let base = r.answers[0].starts[0].rtptime;
    r.run_until(Duration::from_secs(1));
    let v = r.video();
    // Keyframes at 5, 6, 7, 8, 9 s: stamped and sent a quarter second apart.
    assert_eq!(v.len(), 5, "{v:?}");
    for (i, s) in v.iter().enumerate() {
        let stamp = i as i64 * 250_000;
        assert_eq!(s.at, Duration::from_micros(stamp as u64));
        assert_eq!(s.rtp.timestamp, rtp_of(base, stamp, 90_000));
    }
    assert!(r.sent.iter().all(|s| s.track == 0), "no audio at Scale 4");
}

#[test]
fn an_unsupported_scale_is_answered_with_the_nearest() {
    let mut r = Run::new(false);
    r.play(PlayRequest { range: npt(0.0), scale: Some(64.0), ..Default::default() }).unwrap();
    assert_eq!(r.answers[0].scale, Some(16.0));
}

#[test]
fn reverse_at_scale_minus_two_plays_keyframes_backwards_then_byes() {
    let mut r = Run::new(false);
    r.play(PlayRequest { range: npt(20.0), scale: Some(-2.0), ..Default::default() }).unwrap();
    assert_eq!(r.answers[0].range, "npt=20.000-0.000");
    let base = r.answers[0].starts[0].rtptime;
    r.run_until(Duration::from_secs(11));
    let v = r.video();
    // Keyframes 20, 19, ..., 0 s: 21 frames, half a second apart, stamps increasing.
    assert_eq!(v.len(), 21);
    for (i, s) in v.iter().enumerate() {
        let stamp = i as i64 * 500_000;
        assert_eq!(s.at, Duration::from_micros(stamp as u64), "frame {i}");
        assert_eq!(s.rtp.timestamp, rtp_of(base, stamp, 90_000));
    }
    assert_eq!(r.byes, 2, "BYE on both tracks at the beginning");
    // The session stays: a new PLAY with a Range plays again.
    r.play(PlayRequest { range: npt(29.0), ..Default::default() }).unwrap();
    assert_eq!(r.answers.len(), 2);
}

#[test]
fn speed_two_sends_twice_as_fast_with_the_same_stamps() {
    let mut r = Run::new(false);
    r.play(PlayRequest { range: npt(0.0), speed: Some(2.0), ..Default::default() }).unwrap();
    assert_eq!(r.answers[0].speed, Some(2.0));
    let base = r.answers[0].starts[0].rtptime;
    r.run_until(Duration::from_secs(1));
    let v = r.video();
    assert_eq!(v.len(), 51, "2 s of media in 1 s");
    for (i, s) in v.iter().enumerate() {
        let stamp = i as i64 * FRAME_US;
        assert_eq!(s.rtp.timestamp, rtp_of(base, stamp, 90_000), "stamps as at Speed 1");
        assert_eq!(s.at, Duration::from_micros(stamp as u64 / 2));
    }
}

#[test]
fn pause_and_resume_continue_exactly_where_they_stopped() {
    let mut r = Run::new(false);
    r.play(PlayRequest { range: npt(0.0), ..Default::default() }).unwrap();
    r.run_until(Duration::from_millis(3010));
    r.player.pause();
    let before = r.video().len();
    assert_eq!(before, 76, "0.00 .. 3.00 s");
    let last = r.video().last().map(|s| (s.rtp.timestamp, s.rtp.sequence)).unwrap();
    r.run_until(Duration::from_secs(13));
    assert_eq!(r.video().len(), before, "nothing while paused");
    r.play(PlayRequest::default()).unwrap();
    let a = r.answers.last().unwrap().clone();
    // The next frame not sent is the audio frame of 3.029 s (1024-sample frames at 48 kHz).
    assert_eq!(a.range, "npt=3.029-30.000", "resumes at the next frame not sent");
    r.run_until(Duration::from_secs(14));
    let v = r.video();
    let resumed = v[before];
    assert_eq!(resumed.rtp.sequence, last.1.wrapping_add(1), "no frame lost or repeated");
    // The client's clock ran on through the pause: the PLAY point (3.029333 s of media) is
    // stamped where the timeline stands at the resume (13 s), so the video frame of 3.040 s
    // at 13.010667 s, 10.010667 s after the last video frame's stamp (3.0 s).
    let step = resumed.rtp.timestamp.wrapping_sub(last.0);
    assert_eq!(step, 10_010_667 * 9 / 100, "the client's timeline continues with the wall clock");
    assert_eq!(resumed.at, Duration::from_micros(13_010_667));
    let frames: Vec<u8> = v.iter().map(|s| *s.rtp.payload.last().unwrap()).collect();
    let expected: Vec<u8> = (0..frames.len() as i64).map(|i| i as u8).collect();
    assert_eq!(frames, expected, "every frame once, in order");
}

#[test]
fn clock_ranges_play_recordings_by_utc_and_answer_in_kind() {
    let mut r = Run::new(true);
    let start = 1_795_600_800_000_000u64;
    r.play(PlayRequest {
        range: Some(Range::Clock { start_us: start + 10_500_000, end_us: Some(start + 12_000_000) }),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.answers[0].range, "clock=20261125T100010.000Z-20261125T100012.000Z");
    r.run_until(Duration::from_secs(3));
    assert_eq!(r.video().len(), 50, "10 .. 12 s");
    assert_eq!(r.byes, 2, "the end of the range");
    // A clock range of a file, or outside the media: 457.
    let mut f = Run::new(false);
    assert_eq!(
        f.play(PlayRequest { range: Some(Range::Clock { start_us: 0, end_us: None }), ..Default::default() }),
        Err(457)
    );
    assert_eq!(f.play(PlayRequest { range: npt(31.0), ..Default::default() }), Err(457));
    assert_eq!(f.play(PlayRequest { range: npt(0.0), scale: Some(-1.0), ..Default::default() }), Err(457));
}

#[test]
fn the_end_sends_bye_and_nothing_after() {
    let mut r = Run::new(false);
    r.play(PlayRequest { range: npt(29.0), ..Default::default() }).unwrap();
    r.run_until(Duration::from_secs(5));
    assert_eq!(r.video().len(), 25);
    assert_eq!(r.byes, 2);
    let n = r.sent.len();
    r.run_until(Duration::from_secs(10));
    assert_eq!(r.sent.len(), n);
}

#[test]
fn without_rate_control_frames_go_as_fast_as_read() {
    let mut r = Run::new(true);
    r.play(PlayRequest { range: npt(0.0), rate_control_off: true, onvif_replay: true, ..Default::default() }).unwrap();
    assert!(r.answers[0].rate_control_off);
    r.pump();
    assert_eq!(r.video().len(), 750, "all 30 s at once");
    assert!(r.sent.iter().all(|s| s.at == Duration::ZERO));
    // ONVIF: every packet carries the absolute time; the first frame is a clean point after
    // a discontinuity.
    let first = &r.video()[0].rtp;
    assert_eq!(first.payload.len(), 2, "the payload after the extension");
}

#[test]
fn a_gap_between_recordings_is_skipped_not_waited_out() {
    // The media from 10 s on moved 90 s later: a gap of 90 s between two recordings.
    let mut media = Synthetic::new(0, false);
    for f in &mut media.frames {
        if f.dts_us >= 10_000_000 {
            f.dts_us += 90_000_000;
            f.pts_us += 90_000_000;
        }
    }
    media.end_us += 90_000_000;
    let mut r = Run::with(media);
    r.play(PlayRequest { range: npt(9.0), ..Default::default() }).unwrap();
    let base = r.answers[0].starts[0].rtptime;
    r.run_until(Duration::from_millis(1500));
    let v = r.video();
    assert_eq!(v.len(), 25 + 12, "9.00 .. 9.96 s, then 100.00 .. 100.44 s");
    // The first frame after the gap: the gap step after the last frame sent before it (the
    // audio of 9.984 s), in stamps and in sending.
    let (before, after) = (v[24], v[25]);
    assert_eq!(before.rtp.timestamp, rtp_of(base, 960_000, 90_000));
    assert_eq!(after.rtp.timestamp, rtp_of(base, 984_000 + GAP_US, 90_000));
    assert_eq!(after.at, Duration::from_micros(984_000 + GAP_US as u64));
}

#[test]
fn a_read_in_flight_across_a_new_play_is_dropped() {
    let mut r = Run::new(false);
    r.play(PlayRequest { range: npt(20.0), ..Default::default() }).unwrap();
    r.run_until(Duration::from_millis(500));
    // Let the queue run low so a read is asked for, and hold it.
    r.now += Duration::from_millis(600);
    let mut held = None;
    while held.is_none() {
        held = r.player.poll_need(r.now);
        if held.is_none() {
            assert!(r.player.poll_output(r.now).is_some(), "the queue runs low");
        }
    }
    let stale = r.media.read(held.unwrap());
    // A seek back while that read is out.
    let sent = r.video().len();
    r.player.play(r.now, &PlayRequest { range: npt(2.0), ..Default::default() }).unwrap();
    r.player.handle_read(r.now, stale);
    r.pump();
    let base = r.answers.last().unwrap().starts[0].rtptime;
    let t = r.now - r.t0;
    r.run_until(t + Duration::from_millis(500));
    let after: Vec<&Sent> = r.video()[sent..].to_vec();
    assert!(!after.is_empty());
    for s in after {
        let from_point = s.rtp.timestamp.wrapping_sub(base) as i32;
        assert!((0..=90_000).contains(&from_point), "a frame of the old position after the seek: {from_point}");
    }
}

#[test]
fn a_play_whose_media_is_gone_is_refused_and_the_session_stays() {
    let mut r = Run::new(false);
    r.player.play(r.now, &PlayRequest { range: npt(3.0), ..Default::default() }).unwrap();
    assert_eq!(r.player.poll_need(r.now), Some(Need::Seek(3_000_000)));
    r.player.handle_read(r.now, Read::Failed);
    assert_eq!(r.player.poll_output(r.now), Some(Output::Reject(404)));
    r.player.play(r.now, &PlayRequest { range: npt(3.0), ..Default::default() }).unwrap();
    r.player.handle_read(r.now, Read::Seeked(None));
    assert_eq!(r.player.poll_output(r.now), Some(Output::Reject(457)));
    // Another PLAY plays.
    r.play(PlayRequest { range: npt(1.0), ..Default::default() }).unwrap();
    assert_eq!(r.answers.len(), 1);
}

#[test]
fn reverse_ranges_in_either_order_play_the_same_stretch() {
    for range in [(20.0, 15.0), (15.0, 20.0)] {
        let mut r = Run::new(false);
        let req = PlayRequest {
            range: Some(Range::Npt { start: Some(range.0), end: Some(range.1) }),
            scale: Some(-1.0),
            ..Default::default()
        };
        r.play(req).unwrap();
        assert_eq!(r.answers[0].range, "npt=20.000-15.000", "{range:?}");
        r.run_until(Duration::from_secs(10));
        assert_eq!(r.video().len(), 6, "keyframes 20 .. 15 s: {range:?}");
        assert_eq!(r.byes, 2);
    }
    // A forward range that ends before it starts, or before the media, is outside it.
    let mut r = Run::new(false);
    let req = PlayRequest { range: Some(Range::Npt { start: Some(9.0), end: Some(4.0) }), ..Default::default() };
    assert_eq!(r.play(req), Err(457));
}

#[test]
fn output_not_taken_is_due_at_once() {
    let mut r = Run::new(false);
    r.player.play(r.now, &PlayRequest { range: npt(0.0), ..Default::default() }).unwrap();
    let need = r.player.poll_need(r.now).unwrap();
    let read = r.media.read(need);
    r.player.handle_read(r.now, read);
    // The answer is queued: due now, whatever the frames' times.
    assert_eq!(r.player.poll_timeout(r.now), Some(r.now));
}

/// The project's RTSP client against the server session and a player, in memory, on a
/// virtual clock: what a client sends (Range, Scale, PAUSE) and what it gets back.
mod pair {
    use ferrocast_rtsp::client::{ClientEvent, ClientMode, ClientSession, ClientTransport};
    use ferrocast_rtsp::message::Headers;
    use ferrocast_rtsp::server::{PlayReply, Secrets, ServerConfig, ServerEvent, ServerSession};

    use super::*;

    struct Pair {
        client: ClientSession,
        server: ServerSession,
        run: Run,
        played: Vec<Headers>,
        /// Video RTP packets as the client got them: (arrival since the start, packet).
        video: Vec<(Duration, RtpPacket)>,
        byes: usize,
    }

    impl Pair {
        fn new() -> Pair {
            let run = Run::new(false);
            let now = run.now;
            let client = ClientSession::new("rtsp://h/vod/a.mp4", ClientMode::Play, ClientTransport::Tcp, vec![], now);
            let secrets = Secrets { session_id: 7, nonce: 8 };
            let server = ServerSession::new(ServerConfig::default(), secrets, now);
            let mut p = Pair { client, server, run, played: Vec::new(), video: Vec::new(), byes: 0 };
            p.pump();
            p
        }

        fn interleave(&mut self, channel: u8, packet: &[u8]) {
            let mut b = vec![b'$', channel];
            b.extend_from_slice(&(packet.len() as u16).to_be_bytes());
            b.extend_from_slice(packet);
            self.client.handle_input(self.run.now, &b).unwrap();
        }

        fn pump(&mut self) {
            let now = self.run.now;
            for _ in 0..10_000 {
                let mut busy = false;
                while let Some(b) = self.client.poll_transmit() {
                    busy = true;
                    self.server.handle_input(now, &b).unwrap();
                }
                while let Some(ev) = self.server.poll_event() {
                    busy = true;
                    match ev {
                        ServerEvent::Describe { .. } => {
                            let (sdp, _) = ferrocast_rtsp::sdp::describe(&tracks(), "127.0.0.1", "0.0.0.0");
                            self.server.accept_describe(&sdp).unwrap();
                        }
                        ServerEvent::Setup { track, .. } => {
                            self.server.accept_setup(track.unwrap_or(0), None).unwrap();
                        }
                        ServerEvent::Play { request, .. } => {
                            if let Err(code) = self.run.player.play(now, &request) {
                                self.server.reject(code).unwrap();
                            }
                        }
                        ServerEvent::Pause => self.run.player.pause(),
                        _ => {}
                    }
                }
                if let Some(need) = self.run.player.poll_need(now) {
                    busy = true;
                    let r = self.run.media.read(need);
                    self.run.player.handle_read(now, r);
                }
                while let Some(o) = self.run.player.poll_output(now) {
                    busy = true;
                    match o {
                        Output::Reject(code) => self.server.reject(code).unwrap(),
                        Output::Answer(a) => {
                            let reply = PlayReply {
                                range: &a.range,
                                starts: &a.starts,
                                scale: a.scale,
                                speed: a.speed,
                                rate_control_off: a.rate_control_off,
                            };
                            self.server.accept_play_with(&reply).unwrap();
                            while let Some(b) = self.server.poll_transmit() {
                                self.client.handle_input(now, &b).unwrap();
                            }
                        }
                        Output::Rtp { track, packets } => {
                            for p in codec::packets(&packets) {
                                self.interleave(2 * track as u8, &p);
                            }
                        }
                        Output::Rtcp { track, packet } => self.interleave(2 * track as u8 + 1, &packet),
                    }
                }
                while let Some(b) = self.server.poll_transmit() {
                    busy = true;
                    self.client.handle_input(now, &b).unwrap();
                }
                while let Some(ev) = self.client.poll_event() {
                    busy = true;
                    match ev {
                        ClientEvent::Played(h) => self.played.push(h),
                        ClientEvent::Rtp { track: 0, packet } => {
                            self.video.push((now - self.run.t0, RtpPacket::parse(packet).unwrap()));
                        }
                        ClientEvent::Rtcp { packet, .. } => {
                            let bye = ferrocast_rtsp::rtcp::parse(&packet)
                                .unwrap()
                                .iter()
                                .any(|x| matches!(x, RtcpPacket::Bye { .. }));
                            self.byes += usize::from(bye);
                        }
                        _ => {}
                    }
                }
                if !busy {
                    return;
                }
            }
            panic!("no rest");
        }

        fn run_until(&mut self, until: Duration) {
            self.pump();
            while let Some(at) = self.run.player.poll_timeout(self.run.now) {
                if at - self.run.t0 > until {
                    break;
                }
                self.run.now = self.run.now.max(at);
                self.pump();
            }
            self.run.now = self.run.now.max(self.run.t0 + until);
            self.pump();
        }

        fn frames(&self) -> Vec<&(Duration, RtpPacket)> {
            self.video.iter().filter(|(_, p)| p.marker).collect()
        }
    }

    #[test]
    fn the_client_seeks_scales_pauses_and_resumes() {
        let mut p = Pair::new();
        // The client's own PLAY (npt=0.000-) plays at Scale 1.
        assert_eq!(p.played.len(), 1);
        assert_eq!(p.played[0].get("Range"), Some("npt=0.000-30.000"));
        p.run_until(Duration::from_millis(990));
        assert_eq!(p.frames().len(), 25);
        // Seek to 10 s at Scale 4: keyframes only, a quarter second apart.
        let now = p.run.now;
        p.client.play(now, &[("Range", "npt=10-"), ("Scale", "4")]);
        p.pump();
        let h = p.played.last().unwrap().clone();
        assert_eq!((h.get("Range"), h.get("Scale")), (Some("npt=10.000-30.000"), Some("4")));
        let rtp_info = h.get("RTP-Info").unwrap().to_owned();
        let rtptime: u32 =
            rtp_info.split("rtptime=").nth(1).unwrap().split([',', ';']).next().unwrap().parse().unwrap();
        p.run_until(Duration::from_millis(1980));
        let f = p.frames();
        assert_eq!(f.len(), 25 + 4, "keyframes of 10, 11, 12, 13 s");
        for (i, (at, pkt)) in f[25..].iter().enumerate() {
            let stamp = i as i64 * 250_000;
            assert_eq!(pkt.timestamp, rtp_of(rtptime, stamp, 90_000), "RTP-Info's rtptime is the Range start");
            assert_eq!(*at, Duration::from_millis(990) + Duration::from_micros(stamp as u64));
        }
        // PAUSE, then PLAY without Range: on from where it stood, at Scale 4 still asked.
        let now = p.run.now;
        p.client.pause(now);
        p.pump();
        p.run_until(Duration::from_secs(5));
        assert_eq!(p.frames().len(), 29, "nothing while paused");
        let now = p.run.now;
        p.client.play(now, &[("Scale", "-2")]);
        p.pump();
        let h = p.played.last().unwrap().clone();
        assert_eq!(h.get("Scale"), Some("-2"));
        p.run_until(Duration::from_secs(20));
        let f = p.frames();
        let back: Vec<u32> = f[29..].iter().map(|(_, pkt)| pkt.timestamp).collect();
        assert!(
            back.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 45_000),
            "reverse at Scale 2: 0.5 s stamp steps: {back:?}"
        );
        assert_eq!(p.byes, 2, "BYE at the beginning of the media");
    }
}
