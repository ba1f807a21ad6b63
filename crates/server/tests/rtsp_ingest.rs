//! RTSP ingest (ANNOUNCE/RECORD) details a user meets: AAC sent as MP4A-LATM by ffmpeg
//! (`-rtpflags latm`) and GStreamer (`rtspclientsink`), tracks the server cannot carry beside
//! ones it can, and tracks aligned by the publisher's RTCP sender reports.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ferrocast_media::flv::{self, VideoTag};
use ferrocast_rtmp::MediaKind;
use ferrocast_rtmp::client::ClientEvent;
use ferrocast_rtsp::rtcp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What `ffmpeg -v error` says while decoding `seconds` of `url` (empty: decoded cleanly),
/// and whether it exited successfully.
fn decode(url: &str, seconds: u32, opts: &[&str]) -> (bool, String) {
    require("ffmpeg");
    let mut child = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin"])
        .args(if url.starts_with("rtsp") { ["-timeout", "15000000"] } else { ["-rw_timeout", "15000000"] })
        .args(opts)
        .arg("-i")
        .arg(url)
        .args(["-t", &seconds.to_string(), "-f", "null", "-"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg");
    let guard = Instant::now() + Duration::from_secs(u64::from(seconds) + 30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > guard {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The audio stream of a probe: (codec, sample rate, channels).
fn audio_of(p: &Probe) -> (String, String, i64) {
    let a = p.codec("audio").unwrap_or_else(|| panic!("no audio in {:?}\n{}", p.streams, p.stderr));
    (
        a["codec_name"].as_str().unwrap_or("").to_owned(),
        a["sample_rate"].as_str().unwrap_or("").to_owned(),
        a["channels"].as_i64().unwrap_or(0),
    )
}

/// Reads `path` back over RTMP and RTSP: H.264 video and AAC audio of this rate and channel
/// count, audio packets throughout, and the audio decodes without an error.
async fn check_reads_back(server: &Server, path: &str, rate: &str, channels: i64) {
    let (rtmp, rtsp) = (server.rtmp_url(path), server.rtsp_url(path));
    let (rtmp2, rtsp2) = (rtmp.clone(), rtsp.clone());
    let a = tokio::task::spawn_blocking(move || probe(&rtmp, 3));
    let b = tokio::task::spawn_blocking(move || probe_with(&rtsp, 3, &["-rtsp_transport", "tcp"]));
    for (name, p) in [("rtmp", a.await.unwrap()), ("rtsp", b.await.unwrap())] {
        assert_eq!(audio_of(&p), ("aac".to_owned(), rate.to_owned(), channels), "{name}: {}", p.stderr);
        assert_eq!(p.codec("video").map(|v| v["codec_name"].clone()), Some("h264".into()), "{name}");
        let audio = p.packets_of("audio");
        assert!(audio.len() >= 50, "{name}: only {} audio packets\n{}", audio.len(), p.stderr);
    }
    for (url, opts) in [(rtmp2, vec![]), (rtsp2, vec!["-rtsp_transport", "tcp"])] {
        let (ok, errors) = tokio::task::spawn_blocking(move || decode(&url, 3, &opts)).await.unwrap();
        assert!(ok && errors.is_empty(), "decoding {path}: {errors}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn latm_from_ffmpeg_reads_back_as_aac() {
    let server = Server::start();
    // test_flv(): AAC 44.1 kHz stereo, sent as MP4A-LATM.
    let _publisher =
        publish_rtsp_codecs(test_flv(), &server.rtsp_url("latm/ffmpeg"), "tcp", &["-c", "copy", "-rtpflags", "latm"]);
    wait_published(&server, "latm/ffmpeg").await;
    check_reads_back(&server, "latm/ffmpeg", "44100", 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn latm_from_gstreamer_rtspclientsink_reads_back_as_aac() {
    require_gst("rtspclientsink");
    require_gst("x264enc");
    require_gst("avenc_aac");
    let server = Server::start();
    // rtspclientsink picks rtpmp4apay (MP4A-LATM) for AAC by itself.
    let pipeline = format!(
        "rtspclientsink name=s location={} protocols=tcp \
         videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 ! x264enc tune=zerolatency key-int-max=30 ! h264parse ! s. \
         audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=2 ! avenc_aac ! aacparse ! s.",
        server.rtsp_url("latm/gst")
    );
    let child = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _child = Proc(child);
    wait_published(&server, "latm/gst").await;
    check_reads_back(&server, "latm/gst", "48000", 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_track_the_server_cannot_carry_does_not_stop_the_publish() {
    // ffmpeg sends video, AAC and a second audio track in MP2 (MPA), which ferrocast does
    // not carry: its SETUP must succeed (ffmpeg gives up the whole publish otherwise) and the
    // other tracks play.
    let server = Server::start();
    let _publisher = publish_rtsp_codecs(
        test_flv(),
        &server.rtsp_url("extra/mp2"),
        "tcp",
        &["-map", "0:v", "-map", "0:a", "-map", "0:a", "-c:v", "copy", "-c:a:0", "copy", "-c:a:1", "mp2"],
    );
    wait_published(&server, "extra/mp2").await;
    let url = server.rtmp_url("extra/mp2");
    let p = tokio::task::spawn_blocking(move || probe(&url, 3)).await.unwrap();
    p.assert_h264_aac(320, 240, 60);
}

/// A raw RTSP publisher over TCP interleaved.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    cseq: u32,
    session: Option<String>,
}

impl Raw {
    async fn connect(server: &Server) -> Raw {
        Raw { s: TcpStream::connect(server.rtsp).await.unwrap(), buf: Vec::new(), cseq: 0, session: None }
    }

    /// Sends a request and reads its response's status and headers, skipping interleaved
    /// frames (our receiver reports) on the way.
    async fn request(&mut self, method: &str, url: &str, headers: &str, body: &str) -> (u16, String) {
        self.cseq += 1;
        let session = self.session.as_ref().map(|s| format!("Session: {s}\r\n")).unwrap_or_default();
        let content = if body.is_empty() {
            String::new()
        } else {
            format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n", body.len())
        };
        let req = format!("{method} {url} RTSP/1.0\r\nCSeq: {}\r\n{session}{headers}{content}\r\n{body}", self.cseq);
        self.s.write_all(req.as_bytes()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if self.buf.first() == Some(&b'$') && self.buf.len() >= 4 {
                let len = 4 + usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
                if self.buf.len() >= len {
                    self.buf.drain(..len);
                    continue;
                }
            } else if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                if let Some(s) = head.lines().find_map(|l| l.strip_prefix("Session: ")) {
                    self.session = Some(s.split(';').next().unwrap().trim().to_owned());
                }
                return (status, head);
            }
            let mut chunk = [0u8; 4096];
            let n =
                tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await.expect("a response in time").unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn interleaved(&mut self, channel: u8, data: &[u8]) {
        let mut frame = vec![b'$', channel];
        frame.extend_from_slice(&(data.len() as u16).to_be_bytes());
        frame.extend_from_slice(data);
        self.s.write_all(&frame).await.unwrap();
    }
}

fn rtp(marker: bool, pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, (u8::from(marker) << 7) | pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An H.264 Baseline SPS and PPS (from ffmpeg's libx264, 320x240): no B-frames, so DTS is
/// PTS for readers.
const SPS: &str = "Z0LADdkBQfsBEAAAAwAQAAADA8DxQqSA";
const PPS: &str = "aMuDyyA=";

/// Video and AAC, plus an ONVIF metadata track (as cameras announce) that ferrocast does not
/// carry.
fn announce_sdp() -> String {
    format!(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=test\r\nt=0 0\r\n\
         m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;sprop-parameter-sets={SPS},{PPS}\r\na=control:streamid=0\r\n\
         m=application 0 RTP/AVP 107\r\na=rtpmap:107 vnd.onvif.metadata/90000\r\na=control:streamid=1\r\n\
         m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\na=fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1190\r\na=control:streamid=2\r\n"
    )
}

const FPS: u32 = 30;
const VIDEO_FRAMES: u32 = 4 * FPS;
/// AAC frames of 1024 samples at 48 kHz in 4 s.
const AUDIO_FRAMES: u32 = 4 * 48_000 / 1024;
const VIDEO_BASE: u32 = 3_000_000_000;
const AUDIO_BASE: u32 = 123_456;

/// Video frame `i`: a single-NAL-unit packet, an IDR each second; its number in the payload.
fn video_packet(i: u32) -> Vec<u8> {
    let nal = if i.is_multiple_of(FPS) { 0x65 } else { 0x41 };
    let payload = [nal, 0x88, (i >> 8) as u8, i as u8, 0x11, 0x22];
    rtp(true, 96, i as u16, VIDEO_BASE.wrapping_add(i * 90_000 / FPS), 0x51de0, &payload)
}

/// Audio frame `i`: one AU with its AU header; its number in the payload.
fn audio_packet(i: u32) -> Vec<u8> {
    let frame = [0x21, (i >> 8) as u8, i as u8, 0x33, 0x44];
    let size = (frame.len() as u16) << 3;
    let mut payload = vec![0, 16, (size >> 8) as u8, size as u8];
    payload.extend_from_slice(&frame);
    rtp(true, 97, i as u16, AUDIO_BASE.wrapping_add(i * 1024), 0xa0d10, &payload)
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

/// Reads over RTMP until the last video and audio frames came: their timestamps (ms). No
/// track's timestamps may go back on the way.
async fn last_timestamps(mut client: RtmpClient) -> (u32, u32) {
    let (mut video, mut audio) = (None, None);
    let mut last = [0u32; 2];
    loop {
        let ev = client.next_event(Duration::from_secs(30)).await;
        let Some(ev) = ev else { panic!("the reader ended before the last frames: video {video:?}, audio {audio:?}") };
        let ClientEvent::Media(m) = ev else { continue };
        let number = match m.kind {
            MediaKind::Video => match flv::parse_video(&m.payload) {
                // [len: 4][nal, 0x88, n_hi, n_lo, ..]
                Ok(VideoTag::Frame { data, .. }) if data.len() >= 8 => u32::from(data[6]) << 8 | u32::from(data[7]),
                _ => continue,
            },
            // [0xaf, 1, 0x21, n_hi, n_lo, ..]
            MediaKind::Audio if m.payload.len() >= 5 && m.payload[1] == 1 => {
                u32::from(m.payload[3]) << 8 | u32::from(m.payload[4])
            }
            _ => continue,
        };
        let k = usize::from(m.kind == MediaKind::Audio);
        assert!(m.timestamp >= last[k], "{:?} went back: {} -> {} ms (frame {number})", m.kind, last[k], m.timestamp);
        last[k] = m.timestamp;
        if m.kind == MediaKind::Video && number == VIDEO_FRAMES - 1 {
            video = Some(m.timestamp);
        }
        if m.kind == MediaKind::Audio && number == AUDIO_FRAMES - 1 {
            audio = Some(m.timestamp);
        }
        if let (Some(v), Some(a)) = (video, audio) {
            return (v, a);
        }
    }
}

/// A camera-like publisher whose audio reaches the server 2 s after its video (the publisher
/// buffers it), with sender reports that say both were captured together: readers must see
/// the tracks aligned by capture time. By arrival alone, audio would play 2 s late.
#[tokio::test(flavor = "multi_thread")]
async fn sender_reports_align_tracks_that_arrive_apart() {
    let server = Server::start();
    let path = "align/sr";
    let url = server.rtsp_url(path);
    let mut c = Raw::connect(&server).await;
    assert_eq!(c.request("ANNOUNCE", &url, "", &announce_sdp()).await.0, 200);
    for (control, channels) in [("streamid=0", "0-1"), ("streamid=1", "2-3"), ("streamid=2", "4-5")] {
        let (status, head) = c
            .request(
                "SETUP",
                &format!("{url}/{control}"),
                &format!("Transport: RTP/AVP/TCP;unicast;interleaved={channels};mode=record\r\n"),
                "",
            )
            .await;
        // The metadata track too: a 404 there makes real clients give up the whole publish.
        assert_eq!(status, 200, "SETUP {control}: {head}");
    }
    assert_eq!(c.request("RECORD", &url, "Range: npt=0.000-\r\n", "").await.0, 200);

    let t0 = rtcp::ntp_from_unix_micros(unix_micros());
    // Video's report: VIDEO_BASE is captured at t0. Then 2 s of video at once.
    c.interleaved(1, &rtcp::sender_report(0x51de0, t0, VIDEO_BASE, 0, 0, "cam")).await;
    for i in 0..VIDEO_FRAMES / 2 {
        c.interleaved(0, &video_packet(i)).await;
    }
    // Metadata packets are taken and discarded.
    c.interleaved(2, &rtp(true, 107, 0, 0, 7, b"<tt:MetadataStream/>")).await;
    wait_published(&server, path).await;
    let mut reader = RtmpClient::connect(server.rtmp, path, false).await;
    reader.wait_for(|e| matches!(e, ClientEvent::Playing)).await;
    let reader = tokio::spawn(last_timestamps(reader));

    // The audio arrives 2 s later, its report saying AUDIO_BASE was captured at t0 too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.interleaved(5, &rtcp::sender_report(0xa0d10, t0, AUDIO_BASE, 0, 0, "cam")).await;
    let (mut v, mut a) = (VIDEO_FRAMES / 2, 0);
    // The rest in capture order: video from 2 s, audio from 0 s (what was buffered) on.
    while v < VIDEO_FRAMES || a < AUDIO_FRAMES {
        let video_next = v < VIDEO_FRAMES && (a >= AUDIO_FRAMES || v * 48_000 / FPS <= a * 1024);
        if video_next {
            c.interleaved(0, &video_packet(v)).await;
            v += 1;
        } else {
            c.interleaved(4, &audio_packet(a)).await;
            a += 1;
        }
    }
    let (video_end, audio_end) = tokio::time::timeout(Duration::from_secs(60), reader).await.expect("reader").unwrap();
    // What the publisher sent: the last frames' capture times.
    let sent_video = (VIDEO_FRAMES - 1) * 1000 / FPS;
    let sent_audio = (AUDIO_FRAMES - 1) * 1024 * 1000 / 48_000;
    let seen = i64::from(audio_end) - i64::from(video_end);
    let sent = i64::from(sent_audio) - i64::from(sent_video);
    assert!(
        (seen - sent).abs() <= 100,
        "audio - video at the end: {seen} ms for readers, {sent} ms as sent (video {video_end} ms, audio {audio_end} ms)"
    );
}

/// A LATM element with `cpresent=1`: the StreamMuxConfig in band (AAC-LC 48 kHz stereo, one
/// frame per element) when `with_config`, else `useSameStreamMux`; then the frame.
fn latm_element(with_config: bool, frame: &[u8]) -> Vec<u8> {
    let mut bits: Vec<bool> = Vec::new();
    let mut put = |v: u32, n: u32| (0..n).rev().for_each(|i| bits.push((v >> i) & 1 == 1));
    if with_config {
        put(0, 1); // useSameStreamMux
        put(0, 1); // audioMuxVersion
        put(1, 1); // allStreamsSameTimeFraming
        put(0, 6 + 4 + 3); // numSubFrames, numProgram, numLayer
        put(0x1190, 16); // AudioSpecificConfig: AAC-LC, 48 kHz, stereo, GASpecificConfig 000
        put(0, 3); // frameLengthType
        put(0xff, 8); // latmBufferFullness
        put(0, 2); // otherDataPresent, crcCheckPresent
    } else {
        put(1, 1);
    }
    put(frame.len() as u32, 8);
    for b in frame {
        put(u32::from(*b), 8);
    }
    bits.chunks(8).map(|c| c.iter().enumerate().fold(0u8, |a, (i, b)| a | (u8::from(*b) << (7 - i)))).collect()
}

/// A camera sending AAC as MP4A-LATM with the configuration in band only (`cpresent=1`, no
/// `config=`): readers get the AudioSpecificConfig it carried, then the frames.
#[tokio::test(flavor = "multi_thread")]
async fn latm_with_the_config_in_band_reads_back_as_aac() {
    let server = Server::start();
    let path = "latm/inband";
    let url = server.rtsp_url(path);
    let mut c = Raw::connect(&server).await;
    let sdp = format!(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\n\
         m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;sprop-parameter-sets={SPS},{PPS}\r\na=control:trackID=1\r\n\
         m=audio 0 RTP/AVP 98\r\na=rtpmap:98 MP4A-LATM/48000/2\r\na=fmtp:98 profile-level-id=30;object=2;cpresent=1\r\na=control:trackID=2\r\n"
    );
    assert_eq!(c.request("ANNOUNCE", &url, "", &sdp).await.0, 200);
    for (control, channels) in [("trackID=1", "0-1"), ("trackID=2", "2-3")] {
        let t = format!("Transport: RTP/AVP/TCP;unicast;interleaved={channels};mode=record\r\n");
        assert_eq!(c.request("SETUP", &format!("{url}/{control}"), &t, "").await.0, 200, "{control}");
    }
    assert_eq!(c.request("RECORD", &url, "", "").await.0, 200);
    let mut sent = (0u32, 0u32);
    let mut send = async |c: &mut Raw, seconds: u32| {
        for _ in 0..seconds * FPS {
            let (v, a) = sent;
            c.interleaved(0, &video_packet(v)).await;
            sent.0 += 1;
            while sent.1 * 1024 * FPS <= v * 48_000 {
                let frame = [0x21, (a >> 8) as u8, a as u8, 0x33];
                let element = latm_element(sent.1.is_multiple_of(50), &frame);
                c.interleaved(2, &rtp(true, 98, sent.1 as u16, AUDIO_BASE.wrapping_add(sent.1 * 1024), 9, &element))
                    .await;
                sent.1 += 1;
            }
        }
    };
    send(&mut c, 2).await;
    wait_published(&server, path).await;
    let mut reader = RtmpClient::connect(server.rtmp, path, false).await;
    reader.wait_for(|e| matches!(e, ClientEvent::Playing)).await;
    send(&mut c, 2).await;
    let (mut config, mut frames) = (None, 0);
    while config.is_none() || frames < 20 {
        let ev = reader.next_event(Duration::from_secs(30)).await;
        let Some(ev) = ev else { panic!("the reader ended: config {config:?}, {frames} audio frames") };
        if let ClientEvent::Media(m) = ev
            && m.kind == MediaKind::Audio
        {
            match flv::parse_audio(&m.payload) {
                Ok(flv::AudioTag::AacConfig(asc)) => config = Some(asc.to_vec()),
                Ok(flv::AudioTag::AacFrame(f)) => {
                    assert!(config.is_some(), "an AAC frame before the config");
                    assert_eq!((f.len(), f[0]), (4, 0x21));
                    frames += 1;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(config.as_deref(), Some(&[0x11, 0x90][..]));
}

/// The SPS and PPS of [`SPS`] and [`PPS`], decoded.
const SPS_BYTES: &[u8] = &[
    0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03,
    0xc0, 0xf1, 0x42, 0xa4, 0x80,
];
const PPS_BYTES: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];

/// Cameras that lie in their SDP: `sprop-parameter-sets` with an empty SPS entry, with bytes
/// that are no SPS, or with base64 that does not decode, and the real parameter sets in band
/// before each IDR. The publish is taken, and readers get the parameters the stream carried.
#[tokio::test(flavor = "multi_thread")]
async fn a_camera_lying_in_its_sdp_is_carried_by_its_in_band_parameters() {
    let server = Server::start();
    for (n, sprop) in [",aMuDyyA=", "Z0LA,aMuDyyA=", "%%%not-base64,aMuDyyA="].into_iter().enumerate() {
        let path = format!("liar/{n}");
        let url = server.rtsp_url(&path);
        let mut c = Raw::connect(&server).await;
        let sdp = format!(
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\n\
             m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;sprop-parameter-sets={sprop}\r\na=control:trackID=1\r\n"
        );
        let (status, head) = c.request("ANNOUNCE", &url, "", &sdp).await;
        assert_eq!(status, 200, "ANNOUNCE with sprop {sprop}: {head}");
        let t = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\n";
        assert_eq!(c.request("SETUP", &format!("{url}/trackID=1"), t, "").await.0, 200, "{sprop}");
        assert_eq!(c.request("RECORD", &url, "", "").await.0, 200, "{sprop}");
        let mut seq = 0u16;
        let mut send = async |c: &mut Raw, from: u32, to: u32| {
            for i in from..to {
                let ts = VIDEO_BASE.wrapping_add(i * 90_000 / FPS);
                if i.is_multiple_of(FPS) {
                    for ps in [SPS_BYTES, PPS_BYTES] {
                        c.interleaved(0, &rtp(false, 96, seq, ts, 0x51de0, ps)).await;
                        seq = seq.wrapping_add(1);
                    }
                }
                let mut p = video_packet(i);
                p[2..4].copy_from_slice(&seq.to_be_bytes());
                seq = seq.wrapping_add(1);
                c.interleaved(0, &p).await;
            }
        };
        send(&mut c, 0, FPS).await;
        wait_published(&server, &path).await;
        let mut reader = RtmpClient::connect(server.rtmp, &path, false).await;
        reader.wait_for(|e| matches!(e, ClientEvent::Playing)).await;
        send(&mut c, FPS, 3 * FPS).await;
        let (mut config, mut frames) = (None::<Vec<u8>>, 0);
        while frames < FPS {
            let ev = reader.next_event(Duration::from_secs(30)).await;
            let Some(ev) = ev else { panic!("{sprop}: the reader ended: config {config:?}, {frames} frames") };
            let ClientEvent::Media(m) = ev else { continue };
            if m.kind != MediaKind::Video {
                continue;
            }
            match flv::parse_video(&m.payload) {
                Ok(VideoTag::Config { config: c, .. }) => config = Some(c.to_vec()),
                Ok(VideoTag::Frame { .. }) => {
                    let c = config.as_deref().unwrap_or_else(|| panic!("{sprop}: a frame before any configuration"));
                    let sps = &c[8..8 + usize::from(u16::from_be_bytes([c[6], c[7]]))];
                    assert_eq!(sps, SPS_BYTES, "{sprop}: the configuration readers get holds the in-band SPS");
                    frames += 1;
                }
                other => panic!("{sprop}: {other:?} {:02x?}", &m.payload[..m.payload.len().min(24)]),
            }
        }
    }
}
