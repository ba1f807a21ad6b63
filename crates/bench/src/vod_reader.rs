//! VOD viewers: each plays an RTSP playback URL (a recording by time, `PATH?start=T`, or a
//! file, `vod/NAME.mp4`) from its own position, over TCP interleaved, with the project's RTSP
//! client (the first PLAY's `Range: npt=POS-`). Positions are drawn from a seed, so a run can
//! be repeated with the same ones.
//!
//! Each viewer measures the time from sending PLAY (the client sends it right after the last
//! SETUP answer arrives) to its first RTP packet and to its first whole video frame, counts
//! packets and bytes, notes an RTCP BYE (the end of the recording), and tracks how much media
//! time its video covered against the wall time it took: a viewer paced in real time shows 1.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use ferrocast_rtsp::client::{ClientEvent, ClientMode, ClientSession, ClientTransport};
use ferrocast_rtsp::rtcp::{self, RtcpPacket};
use ferrocast_rtsp::rtp::RtpPacket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::rtsp_reader::{connect, starts_keyframe, video_track};
use crate::stats::Percentiles;

/// A viewer is receiving while its newest packet is at most this old. Playback paces frames
/// in real time, so a playing viewer gets packets every frame interval (40 ms at 25 fps); a
/// GOP of 2 s and socket buffers fit well inside, a stalled or ended viewer does not.
pub const RECEIVING_GAP_MS: f64 = 3000.0;

/// Viewers whose first video frame came less than this long before the summary are left out
/// of the media-rate median: over a shorter span the first GOP, which playback may send
/// ahead of real time, weighs too much.
pub const MIN_RATE_SPAN_S: f64 = 5.0;

/// `n` start positions in seconds, uniform in `[0, max_start_s)`, rounded to the millisecond
/// (the Range header's precision), from `seed` (SplitMix64: reproducible, and well spread
/// even for consecutive seeds).
pub fn positions(seed: u64, n: usize, max_start_s: f64) -> Vec<f64> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let max_ms = (max_start_s.max(0.0) * 1000.0) as u64;
    (0..n).map(|_| if max_ms == 0 { 0.0 } else { (next() % max_ms) as f64 / 1000.0 }).collect()
}

/// What one viewer measured; read by the summary while it plays.
#[derive(Debug, Default, Clone)]
struct Measured {
    packets: u64,
    bytes: u64,
    video_frames: u64,
    /// When PLAY left.
    play_sent: Option<Instant>,
    /// PLAY to the first RTP packet (any track), ms.
    first_rtp_ms: Option<f64>,
    /// PLAY to the first whole video frame (its marker packet), ms, and whether that frame
    /// was a keyframe.
    first_frame: Option<(f64, bool)>,
    /// The newest packet's arrival.
    last_packet: Option<Instant>,
    /// The first video frame's arrival and RTP timestamp, and the media time covered since,
    /// in clock ticks (unwrapped).
    video_start: Option<(Instant, u32)>,
    video_ticks: i64,
    newest_frame: Option<Instant>,
    clock_rate: u32,
    /// An RTCP BYE came: playback reached the end.
    bye: bool,
    /// Why it stopped, if it did.
    error: Option<String>,
}

impl Measured {
    /// An RTP packet of a video track (`video`) or another.
    fn on_rtp(&mut self, video: bool, packet: Bytes, frame_key: &mut Option<bool>, h265: bool) {
        let now = Instant::now();
        self.packets += 1;
        self.last_packet = Some(now);
        let since_play = |m: &Measured| m.play_sent.map_or(0.0, |t| now.duration_since(t).as_secs_f64() * 1000.0);
        if self.first_rtp_ms.is_none() {
            self.first_rtp_ms = Some(since_play(self));
        }
        if !video {
            return;
        }
        let Ok(p) = RtpPacket::parse(packet) else { return };
        let key = *frame_key.get_or_insert_with(|| starts_keyframe(&p.payload, h265));
        if !p.marker {
            return;
        }
        *frame_key = None;
        self.video_frames += 1;
        if self.first_frame.is_none() {
            self.first_frame = Some((since_play(self), key));
        }
        match self.video_start {
            None => self.video_start = Some((now, p.timestamp)),
            Some((_, t0)) => {
                // Ticks since the first frame, unwrapped through the newest (RTP timestamps
                // wrap; playback's always increase).
                let newest = t0.wrapping_add(self.video_ticks as u32);
                self.video_ticks += i64::from(p.timestamp.wrapping_sub(newest) as i32);
            }
        }
        self.newest_frame = Some(now);
    }
}

/// One VOD viewer.
#[derive(Debug)]
pub struct Viewer {
    /// Where it starts, seconds into the URL's media.
    pub position_s: f64,
    connected: AtomicBool,
    bytes: AtomicU64,
    measured: Mutex<Measured>,
}

impl Viewer {
    /// A viewer that will start at `position_s`.
    pub fn new(position_s: f64) -> Arc<Viewer> {
        Arc::new(Viewer {
            position_s,
            connected: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
            measured: Mutex::default(),
        })
    }

    /// Bytes read from its connection.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Connected, and its newest packet at most [`RECEIVING_GAP_MS`] old at `now`.
    pub fn receiving(&self, now: Instant) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self
                .measured
                .lock()
                .unwrap()
                .last_packet
                .is_some_and(|t| now.saturating_duration_since(t).as_secs_f64() * 1000.0 <= RECEIVING_GAP_MS)
    }

    /// Connected.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Plays `url` from `viewer.position_s` until the connection ends. The viewer's
/// measurements stay readable through `viewer` (shared with the summary).
pub async fn play(url: &str, viewer: Arc<Viewer>) -> anyhow::Result<()> {
    let r = run(url, &viewer).await;
    viewer.connected.store(false, Ordering::Relaxed);
    if let Err(e) = &r {
        viewer.measured.lock().unwrap().error = Some(format!("{e:#}"));
    }
    r
}

async fn run(url: &str, viewer: &Arc<Viewer>) -> anyhow::Result<()> {
    let mut socket = connect(url).await?;
    let mut session = ClientSession::new(url, ClientMode::Play, ClientTransport::Tcp, Vec::new(), Instant::now());
    session.set_play_range(&format!("npt={:.3}-", viewer.position_s));
    viewer.connected.store(true, Ordering::Relaxed);
    // The viewer's own copy of the measurements, published to the shared one after every
    // read: the summary never waits on a packet's handling, nor a packet on the summary.
    let mut local = Measured::default();
    let mut video: Option<(usize, bool)> = None;
    let mut tracks = 0usize;
    let mut frame_key = None;
    let mut buf = vec![0u8; 65536];
    loop {
        while let Some(b) = session.poll_transmit() {
            socket.write_all(&b).await?;
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                ClientEvent::Described(sdp) => {
                    let v = video_track(&sdp);
                    video = v.map(|v| (v.0, v.1));
                    local.clock_rate = v.map_or(90_000, |v| v.2);
                    tracks = sdp.media.iter().filter(|m| ferrocast_rtsp::sdp::track_info(m).is_some()).count();
                }
                // PLAY follows the last SETUP's answer at once: the loop wrote it just before
                // handling the events that answer brought.
                ClientEvent::SetUp { track, .. } if track + 1 == tracks => {
                    local.play_sent = Some(Instant::now());
                }
                ClientEvent::Rtp { track, packet } => {
                    let is_video = video.is_some_and(|v| v.0 == track);
                    local.on_rtp(is_video, packet, &mut frame_key, video.is_some_and(|v| v.1));
                }
                ClientEvent::Rtcp { packet, .. }
                    if rtcp::parse(&packet).is_ok_and(|ps| ps.iter().any(|p| matches!(p, RtcpPacket::Bye { .. }))) =>
                {
                    local.bye = true;
                }
                ClientEvent::Failed { method, status } => anyhow::bail!("{method:?} refused: {status}"),
                _ => {}
            }
        }
        publish(&local, viewer);
        let n = socket.read(&mut buf).await.context("reading")?;
        anyhow::ensure!(n > 0, "server closed the connection");
        viewer.bytes.fetch_add(n as u64, Ordering::Relaxed);
        local.bytes += n as u64;
        session.handle_input(Instant::now(), &buf[..n])?;
    }
}

/// Copies a viewer task's measurements to the shared viewer.
fn publish(local: &Measured, shared: &Viewer) {
    shared.measured.lock().unwrap().clone_from(local);
}

/// The viewers' figures at `now`, as JSON.
pub fn summary(viewers: &[Arc<Viewer>], now: Instant) -> serde_json::Value {
    let ms = viewers.iter().map(|v| v.measured.lock().unwrap());
    let mut first_rtp = Vec::new();
    let mut first_frame = Vec::new();
    let mut rates = Vec::new();
    let (mut packets, mut bytes, mut frames, mut keyframe_first, mut byes) = (0u64, 0u64, 0u64, 0usize, 0usize);
    let mut errors: Vec<String> = Vec::new();
    for m in ms {
        packets += m.packets;
        bytes += m.bytes;
        frames += m.video_frames;
        byes += usize::from(m.bye);
        first_rtp.extend(m.first_rtp_ms);
        if let Some((t, key)) = m.first_frame {
            first_frame.push(t);
            keyframe_first += usize::from(key);
        }
        if let (Some((t0, _)), Some(t1)) = (m.video_start, m.newest_frame) {
            let wall = t1.duration_since(t0).as_secs_f64();
            if wall >= MIN_RATE_SPAN_S && m.clock_rate > 0 {
                rates.push(m.video_ticks as f64 / f64::from(m.clock_rate) / wall);
            }
        }
        errors.extend(m.error.clone());
    }
    errors.sort();
    errors.dedup();
    let pct = |v: &[f64]| {
        let p = Percentiles::of(v);
        serde_json::json!({ "p50": p.p50, "p99": p.p99, "max": p.max, "samples": p.n })
    };
    let position = Percentiles::of(&viewers.iter().map(|v| v.position_s).collect::<Vec<_>>());
    serde_json::json!({
        "viewers": viewers.len(),
        "connected": viewers.iter().filter(|v| v.connected()).count(),
        "receiving": viewers.iter().filter(|v| v.receiving(now)).count(),
        "ended_with_bye": byes,
        "packets": packets,
        "bytes": bytes,
        "video_frames": frames,
        "positions_s": { "min": viewers.iter().map(|v| v.position_s).fold(f64::INFINITY, f64::min),
                         "p50": position.p50, "max": position.max },
        "play_to_first_rtp_ms": pct(&first_rtp),
        "play_to_first_video_frame_ms": pct(&first_frame),
        "first_frame_keyframe": keyframe_first,
        "media_seconds_per_second_median": crate::stats::median(&rates),
        "errors": errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use ferrocast_rtsp::message::{self, Message, Method, Response};
    use tokio::net::TcpListener;

    #[test]
    fn positions_are_reproducible_and_spread() {
        let a = positions(7, 100, 30.0);
        assert_eq!(a, positions(7, 100, 30.0), "the same seed gives the same positions");
        assert_ne!(a, positions(8, 100, 30.0), "another seed, other positions");
        assert!(a.iter().all(|p| (0.0..30.0).contains(p)), "{a:?}");
        assert!(
            a.iter().all(|p| format!("{p:.3}").parse::<f64>().unwrap() == *p),
            "whole milliseconds, as the Range header states them: {a:?}"
        );
        // Spread: each third of the range holds some, none holds most.
        for third in 0..3 {
            let lo = f64::from(third) * 10.0;
            let k = a.iter().filter(|p| (lo..lo + 10.0).contains(*p)).count();
            assert!((15..=55).contains(&k), "third {third} holds {k} of 100: {a:?}");
        }
        assert_eq!(positions(1, 3, 0.0), [0.0, 0.0, 0.0], "no room: from the start");
    }

    /// An RTSP server that answers one viewer with a video and an audio track, sends two
    /// video frames (a keyframe in two packets, then one packet) and an audio packet after
    /// PLAY, then an RTCP BYE, and reports the Range the PLAY asked for.
    async fn scripted_server(listener: TcpListener) -> Option<String> {
        let (mut socket, _) = listener.accept().await.unwrap();
        let sdp = "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=0\r\n\
                   m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\na=fmtp:97 config=1190\r\n\
                   a=control:trackID=1\r\n";
        let mut input = BytesMut::new();
        let mut buf = [0u8; 4096];
        loop {
            let req = loop {
                if let Some(Message::Request(r)) = message::decode(&mut input).unwrap() {
                    break r;
                }
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    return None;
                }
                input.extend_from_slice(&buf[..n]);
            };
            let answer = Response::new(200, req.cseq()).with("Session", "s1");
            let answer = match req.method {
                Method::Describe => answer.with_body("application/sdp", sdp),
                Method::Setup => {
                    let t = req.headers.get("Transport").unwrap_or("").to_owned();
                    answer.with("Transport", t)
                }
                _ => answer,
            };
            socket.write_all(&answer.encode()).await.unwrap();
            if req.method == Method::Play {
                let mut out = BytesMut::new();
                let mut rtp = |channel: u8, marker: bool, seq: u16, ts: u32, payload: &[u8]| {
                    let mut p = BytesMut::new();
                    RtpPacket::write(&mut p, marker, 96, seq, ts, 1, &[payload]);
                    out.extend_from_slice(&[b'$', channel, 0, p.len() as u8]);
                    out.extend_from_slice(&p);
                };
                rtp(0, false, 1, 1000, &[0x7c, 0x85, 0]); // FU-A start of an IDR
                rtp(0, true, 2, 1000, &[0x7c, 0x45, 0]); // its end
                rtp(2, true, 1, 500, &[0x21, 0x10]); // audio
                rtp(0, true, 3, 1000 + 3600, &[0x41, 0x9a]); // a P frame, 40 ms later
                let bye = rtcp::bye(1);
                out.extend_from_slice(&[b'$', 1, 0, bye.len() as u8]);
                out.extend_from_slice(&bye);
                socket.write_all(&out).await.unwrap();
                return req.headers.get("Range").map(str::to_owned);
            }
        }
    }

    #[tokio::test]
    async fn a_viewer_asks_for_its_position_and_counts_what_it_gets() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("rtsp://{}/cams/lobby?start=2026-11-30T00:00:00Z", listener.local_addr().unwrap());
        let server = tokio::spawn(scripted_server(listener));
        let viewer = Viewer::new(12.34);
        let play = tokio::spawn(play_until_bye(url, viewer.clone()));
        assert_eq!(server.await.unwrap().as_deref(), Some("npt=12.340-"), "PLAY asks for the viewer's position");
        play.await.unwrap();
        let s = summary(std::slice::from_ref(&viewer), Instant::now());
        assert_eq!(s["viewers"], 1, "{s}");
        assert_eq!(s["packets"], 4, "four RTP packets; RTCP is not counted: {s}");
        assert_eq!(s["video_frames"], 2, "{s}");
        assert_eq!(s["first_frame_keyframe"], 1, "{s}");
        assert_eq!(s["ended_with_bye"], 1, "{s}");
        assert_eq!(s["play_to_first_rtp_ms"]["samples"], 1, "{s}");
        assert_eq!(s["play_to_first_video_frame_ms"]["samples"], 1, "{s}");
        assert!(
            s["play_to_first_rtp_ms"]["p50"].as_f64().unwrap()
                <= s["play_to_first_video_frame_ms"]["p50"].as_f64().unwrap(),
            "the first packet comes no later than the first whole frame: {s}"
        );
        assert!(s["bytes"].as_u64().unwrap() > 0 && viewer.bytes() == s["bytes"].as_u64().unwrap(), "{s}");
        let m = viewer.measured.lock().unwrap();
        assert_eq!(m.video_ticks, 3600, "media time covered: one frame interval at 90 kHz");
        assert_eq!(m.clock_rate, 90_000);
        assert!(m.error.as_deref().is_some_and(|e| e.contains("closed")), "{:?}", m.error);
    }

    /// Plays until the scripted server closes (after its BYE).
    async fn play_until_bye(url: String, viewer: Arc<Viewer>) {
        let r = play(&url, viewer.clone()).await;
        assert!(r.is_err(), "the scripted server closes the connection");
        assert!(!viewer.connected(), "a closed viewer is not connected");
    }
}
