//! RTSP playback of recordings and files, as players meet it: ffprobe and ffmpeg over TCP and
//! UDP, GStreamer seeking and changing rate, two viewers of one file seeking independently,
//! and the bad requests (unknown paths, traversal, malformed times, ranges outside).

mod common;
#[path = "common/playback.rs"]
mod playback;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use playback::{CLIP_FPS, Recorded, clip_file, recorded, vod_dir_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GUARD: Duration = Duration::from_secs(30);

/// A server playing the shared recording back, with a `[vod] dir` holding `clip.mp4`.
async fn server() -> (Server, &'static Recorded) {
    let rec = recorded().await;
    let vod = clip_file("clip.mp4", 30, &["-movflags", "+faststart"]).parent().unwrap().to_path_buf();
    (Server::with_config(&rec.config(&vod_dir_config(&vod))), rec)
}

fn video_packets(p: &Probe) -> Vec<f64> {
    p.packets
        .iter()
        .filter(|x| x["codec_type"] == "video")
        .filter_map(|x| x["pts_time"].as_str().and_then(|t| t.parse().ok()))
        .collect()
}

fn audio_count(p: &Probe) -> usize {
    p.packets.iter().filter(|x| x["codec_type"] == "audio").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn ffprobe_plays_a_window_of_the_recording_over_tcp_and_udp() {
    let (server, rec) = server().await;
    // 4 s from 5 s in: real-time playback, so the window is short.
    let url = format!("{}?start={}&end={}", server.rtsp_url(&rec.path), rec.at(5.0), rec.at(9.0));
    for transport in ["tcp", "udp"] {
        let p = tokio::task::spawn_blocking({
            let url = url.clone();
            move || probe_with(&url, 20, &["-rtsp_transport", transport])
        })
        .await
        .unwrap();
        let video = video_packets(&p);
        let expected = 4 * CLIP_FPS as usize;
        assert!(
            video.len().abs_diff(expected) <= 2,
            "{transport}: {} video packets of {expected}\n{}",
            video.len(),
            p.stderr
        );
        let audio = audio_count(&p);
        assert!((180..=195).contains(&audio), "{transport}: {audio} audio packets (4 s of 48 kHz AAC)");
        assert!(!p.stderr.contains("error"), "{transport}: {}", p.stderr);
    }
}

/// `ffmpeg -ss 5.5 -i rtsp://...`: ffmpeg asks `Range: npt=5.500-`; the answer starts at the
/// keyframe at or before it, so ffmpeg decodes from there (`-noaccurate_seek` keeps the frames
/// before 5.5 s; `-copyts` their times, which RTP-Info and Range put on the file's timeline).
#[tokio::test(flavor = "multi_thread")]
async fn ffmpeg_seek_starts_within_one_gop() {
    let (server, _) = server().await;
    let url = server.rtsp_url("vod/clip.mp4");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("ffmpeg")
            .args(["-nostdin", "-rtsp_transport", "tcp", "-ss", "5.5", "-noaccurate_seek", "-i", &url])
            .args(["-copyts", "-an", "-frames:v", "10", "-vf", "showinfo", "-f", "null", "-"])
            .stdout(Stdio::null())
            .output()
            .expect("ffmpeg")
    })
    .await
    .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", tail(&log));
    let frames: Vec<(f64, bool)> = log
        .lines()
        .filter(|l| l.contains("Parsed_showinfo") && l.contains(" n:"))
        .filter_map(|l| {
            let pts = l.split("pts_time:").nth(1)?.split_whitespace().next()?.parse().ok()?;
            Some((pts, l.contains("iskey:1")))
        })
        .collect();
    assert!(frames.len() >= 10, "{}", tail(&log));
    assert!(frames[0].1, "decoding starts with a keyframe: {frames:?}");
    // ffmpeg's RTP demuxer gives the very first packet no time (live streams too): the
    // frames after it carry the position.
    let first = frames[1..].iter().map(|f| f.0).fold(f64::MAX, f64::min);
    assert!((5.0..5.5).contains(&first), "decoding from the keyframe of 5 s for -ss 5.5: {frames:?}");
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The python interpreter with GStreamer's introspection bindings.
fn gst_python() -> &'static str {
    require_gst("rtspsrc");
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import gi; gi.require_version('Gst', '1.0'); from gi.repository import Gst"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "python3-gi with GStreamer bindings is missing (scripts/test installs gir1.2-gstreamer-1.0)");
    "/usr/bin/python3"
}

fn gst_seek(url: &str, mode: &str, arg: &str) -> Vec<(String, Vec<f64>)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/gst_seek.py");
    // Output to files and a guard: a client that hangs fails the test, never stalls the run.
    let out_path = playback::media_dir().join(format!("gst-{mode}-{}.out", std::process::id()));
    let mut child = Command::new(gst_python())
        .args([script, url, mode, arg])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let out = (status, text);
    let (status, text) = out;
    assert!(status.is_some_and(|s| s.success()), "gst_seek {mode} {arg} ({status:?}): {text}");
    text.lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next().unwrap_or("").to_owned();
            (name, w.filter_map(|x| x.parse().ok()).collect())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn gstreamer_seeks_and_plays_faster() {
    let (server, _) = server().await;
    let url = server.rtsp_url("vod/clip.mp4");
    let u = url.clone();
    let seek = tokio::task::spawn_blocking(move || gst_seek(&u, "seek", "20")).await.unwrap();
    let at = |name: &str| seek.iter().find(|(n, _)| n == name).map(|(_, v)| v[0]).expect(name);
    let (after, later) = (at("position_after_seek"), at("position_later"));
    // From the keyframe at or before 20 s (GOP 1 s); then it plays on.
    assert!((19.0..=21.0).contains(&after), "position {after} s as the seek to 20 s completed");
    assert!(later > after && later < 24.0, "a second later at {later} s");
    // Once in a loaded full run GStreamer 1.22 blocked in the rate seek itself (python stuck in
    // `seek`, rtspsrc no longer reading; the server closed the connection at its write
    // timeout): a second try tells that apart from a server that never plays faster.
    let rate = match tokio::task::spawn_blocking({
        let url = url.clone();
        move || std::panic::catch_unwind(|| gst_seek(&url, "rate", "4"))
    })
    .await
    .unwrap()
    {
        Ok(r) => r,
        Err(_) => tokio::task::spawn_blocking(move || gst_seek(&url, "rate", "4")).await.unwrap(),
    };
    let adv = rate.iter().find(|(n, _)| n == "advanced").map(|(_, v)| v.clone()).expect("advanced");
    // Loose: a shared machine. Real time would advance about as much as the wall clock.
    assert!(adv[0] > 1.8 * adv[1], "at rate 4 the position advanced {} s in {} s", adv[0], adv[1]);
}

/// A raw RTSP connection: requests, their answers, and interleaved packets.
struct Raw {
    c: TcpStream,
    buf: Vec<u8>,
    cseq: u32,
    session: Option<String>,
}

/// An answer: its status, headers and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
    }
}

/// What arrived interleaved: (channel, packet).
type Packet = (u8, Vec<u8>);

impl Raw {
    async fn connect(server: &Server) -> Raw {
        Raw { c: TcpStream::connect(server.rtsp).await.unwrap(), buf: Vec::new(), cseq: 0, session: None }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(GUARD, self.c.read(&mut chunk)).await.expect("no data").unwrap();
        assert!(n > 0, "connection closed");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next message: an answer, or an interleaved packet.
    async fn next(&mut self) -> Result<Answer, Packet> {
        loop {
            if self.buf.first() == Some(&b'$') && self.buf.len() >= 4 {
                let len = usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
                if self.buf.len() >= 4 + len {
                    let p: Vec<u8> = self.buf.drain(..4 + len).collect();
                    return Err((p[1], p[4..].to_vec()));
                }
            } else if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if self.buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]).into_owned();
                    self.buf.drain(..end + 4 + len);
                    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                    return Ok(Answer { status, head, body });
                }
            }
            self.fill().await;
        }
    }

    /// A request; its answer (packets before it are dropped).
    async fn request(&mut self, method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
        self.cseq += 1;
        let mut text = format!("{method} {url} RTSP/1.0\r\nCSeq: {}\r\n", self.cseq);
        if let Some(s) = &self.session {
            text.push_str(&format!("Session: {s}\r\n"));
        }
        for (k, v) in headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        text.push_str("\r\n");
        self.c.write_all(text.as_bytes()).await.unwrap();
        loop {
            if let Ok(a) = self.next().await {
                if let Some(s) = a.header("Session") {
                    self.session = Some(s.split(';').next().unwrap().to_owned());
                }
                return a;
            }
        }
    }

    /// DESCRIBE and SETUP of every track over TCP; the SDP.
    async fn setup(&mut self, url: &str) -> String {
        let d = self.request("DESCRIBE", url, &[]).await;
        assert_eq!(d.status, 200, "DESCRIBE {url}: {}", d.head);
        let controls: Vec<String> = d
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("a=control:"))
            .filter(|c| *c != "*")
            .map(str::to_owned)
            .collect();
        assert!(!controls.is_empty(), "{}", d.body);
        for (i, c) in controls.iter().enumerate() {
            assert!(c.starts_with("rtsp://"), "absolute control URLs: {c}");
            let t = format!("RTP/AVP/TCP;unicast;interleaved={}-{}", 2 * i, 2 * i + 1);
            let s = self.request("SETUP", c, &[("Transport", &t)]).await;
            assert_eq!(s.status, 200, "SETUP {c}: {}", s.head);
        }
        d.body
    }

    /// Interleaved packets until `n` RTP packets of channel 0 arrived.
    async fn video_packets(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let deadline = Instant::now() + GUARD;
        while out.len() < n {
            assert!(Instant::now() < deadline, "only {} video packets", out.len());
            if let Err((0, p)) = self.next().await {
                out.push(p);
            }
        }
        out
    }
}

fn npt_start(a: &Answer) -> f64 {
    let r = a.header("Range").unwrap_or_else(|| panic!("no Range: {}", a.head));
    r.strip_prefix("npt=").unwrap().split('-').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_viewers_of_one_file_seek_independently() {
    let (server, _) = server().await;
    let url = server.rtsp_url("vod/clip.mp4");
    let (mut a, mut b) = (Raw::connect(&server).await, Raw::connect(&server).await);
    let sdp = a.setup(&url).await;
    assert!(sdp.contains("a=range:npt=0.000-30."), "{sdp}");
    b.setup(&url).await;
    let pa = a.request("PLAY", &url, &[("Range", "npt=5-")]).await;
    let pb = b.request("PLAY", &url, &[("Range", "npt=20.5-")]).await;
    assert_eq!((pa.status, pb.status), (200, 200));
    assert_eq!((npt_start(&pa), npt_start(&pb)), (5.0, 20.0));
    assert!(pa.header("RTP-Info").is_some_and(|r| r.contains("seq=") && r.contains("rtptime=")), "{}", pa.head);
    a.video_packets(20).await;
    // B seeks back; A carries on where it is.
    let pb = b.request("PLAY", &url, &[("Range", "npt=2-")]).await;
    assert_eq!(npt_start(&pb), 2.0);
    let rtptime: u32 = pb
        .header("RTP-Info")
        .and_then(|r| r.split("rtptime=").nth(1))
        .and_then(|t| t.split([',', ';']).next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("RTP-Info: {}", pb.head));
    let pa = a.request("PAUSE", &url, &[]).await;
    assert_eq!(pa.status, 200);
    let pa = a.request("PLAY", &url, &[]).await;
    let resumed = npt_start(&pa);
    assert!(resumed > 5.0 && resumed < 15.0, "A resumes where it paused, not where B went: {resumed}");
    // B's packets after its seek are of 2 s on: within a few seconds of its Range's rtptime.
    for p in b.video_packets(20).await {
        let ts = u32::from_be_bytes(p[4..8].try_into().unwrap());
        let after = ts.wrapping_sub(rtptime) as i32;
        assert!((-9000..=5 * 90_000).contains(&after), "a packet {after} ticks from B's new point");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_exact_statuses() {
    let (server, rec) = server().await;
    let mut c = Raw::connect(&server).await;
    let base = format!("rtsp://{}", server.rtsp);
    // An MP4 file outside `[vod] dir`, and a symlink inside it that leads there: a server
    // without the checks would play them.
    let vod = playback::media_dir();
    let secret_name = format!("ferrocast-secret-{}.mp4", std::process::id());
    let secret = vod.parent().unwrap().join(&secret_name);
    std::fs::copy(vod.join("clip.mp4"), &secret).unwrap();
    let link = vod.join("link-out.mp4");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    for (path, status) in [
        ("cams/nothing?start=2026-01-01T00:00:00Z".to_owned(), 404),
        ("vod/missing.mp4".to_owned(), 404),
        (format!("vod/../{secret_name}"), 404),
        (format!("vod/%2e%2e/{secret_name}"), 404),
        (format!("vod/..%2f{secret_name}"), 404),
        ("vod/link-out.mp4".to_owned(), 404),
        (format!("{}?start=yesterday", rec.path), 400),
        (format!("{}?start=2026-11-30T10:00:00%2001:00", rec.path), 400),
        (format!("{}?start={}&end={}", rec.path, rec.at(5.0), rec.at(1.0)), 400),
    ] {
        let a = c.request("DESCRIBE", &format!("{base}/{path}"), &[]).await;
        assert_eq!(a.status, status, "DESCRIBE {path}: {}", a.head);
    }
    let _ = std::fs::remove_file(&secret);
    let url = server.rtsp_url("vod/clip.mp4");
    c.setup(&url).await;
    assert_eq!(c.request("PLAY", &url, &[("Range", "npt=100-")]).await.status, 457);
    assert_eq!(
        c.request("PLAY", &url, &[("Range", "clock=20261125T100000Z-")]).await.status,
        457,
        "a file has no clock"
    );
    assert_eq!(c.request("PLAY", &url, &[("Range", "npt=oops")]).await.status, 400);
    let a = c.request("PLAY", &url, &[("Range", "npt=0-"), ("Scale", "64")]).await;
    assert_eq!((a.status, a.header("Scale")), (200, Some("16")), "the nearest supported Scale");
    // The server is fine: another viewer plays.
    let mut d = Raw::connect(&server).await;
    d.setup(&url).await;
    assert_eq!(d.request("PLAY", &url, &[]).await.status, 200);
    d.video_packets(5).await;
}

/// Seconds since the Unix epoch of an NTP timestamp.
fn ntp_unix(ntp: u64) -> f64 {
    (ntp >> 32) as f64 - 2_208_988_800.0 + (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0
}

/// An NVR client: a clock range, ONVIF replay without rate control; every packet carries the
/// frame's absolute time, and the whole range arrives faster than real time.
#[tokio::test(flavor = "multi_thread")]
async fn onvif_replay_by_clock_range() {
    let (server, rec) = server().await;
    let url = format!("{}?start={}", server.rtsp_url(&rec.path), rec.at(0.0));
    let mut c = Raw::connect(&server).await;
    let sdp = c.setup(&url).await;
    assert!(sdp.contains("a=range:clock="), "recordings are described by clock too: {sdp}");
    let clock = |s: f64| {
        let t = playback::format_us(rec.start_us + (s * 1e6) as u64);
        t.replace(['-', ':'], "")
    };
    let range = format!("clock={}-{}", clock(12.4), clock(22.0));
    let headers = [("Range", range.as_str()), ("Require", "onvif-replay"), ("Rate-Control", "no")];
    let started = Instant::now();
    let a = c.request("PLAY", &url, &headers).await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.header("Rate-Control"), Some("no"));
    assert!(a.header("Range").is_some_and(|r| r.starts_with("clock=")), "{}", a.head);
    let packets = c.video_packets(200).await;
    let elapsed = started.elapsed().as_secs_f64();
    let times: Vec<f64> = packets
        .iter()
        .filter(|p| p[0] & 0x10 != 0 && p.len() > 28 && p[12..14] == [0xab, 0xac])
        .map(|p| ntp_unix(u64::from_be_bytes(p[16..24].try_into().unwrap())))
        .collect();
    assert_eq!(times.len(), packets.len(), "every packet carries the ONVIF extension");
    let first = times[0] - rec.start_us as f64 / 1e6;
    assert!((11.3..=12.5).contains(&first), "the first frame's absolute time is {first} s into the recording");
    assert!(times.windows(2).all(|w| w[1] >= w[0] - 0.2), "times go forward (B-frames aside)");
    // Sent as fast as read: the 200 packets span more media than the wall time they took.
    let span = times.last().unwrap() - times[0];
    assert!(span > 2.0 * elapsed, "{span} s of media in {elapsed} s");
}

/// A recording deleted while it is played: the viewer gets BYE, the server carries on.
#[tokio::test(flavor = "multi_thread")]
async fn a_recording_deleted_while_played_ends_with_bye() {
    // A copy of the recording, to delete.
    let rec = recorded().await;
    let copy = playback::media_dir().join("deleted-copy");
    let _ = std::fs::remove_dir_all(&copy);
    let status = Command::new("cp").arg("-a").arg(&rec.dir).arg(&copy).status().unwrap();
    assert!(status.success());
    let server = Server::with_config(&format!("[record]\ndir = \"{}\"\n", copy.display()));
    let url = format!("{}?start={}", server.rtsp_url(&rec.path), rec.at(0.0));
    let mut c = Raw::connect(&server).await;
    c.setup(&url).await;
    assert_eq!(c.request("PLAY", &url, &[]).await.status, 200);
    c.video_packets(10).await;
    std::fs::remove_dir_all(copy.join(&rec.path)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut bye = false;
    while !bye {
        assert!(Instant::now() < deadline, "no BYE after the files were deleted");
        if let Err((1, p)) = c.next().await {
            let packets = ferrocast_rtsp::rtcp::parse(&p).unwrap_or_default();
            bye = packets.iter().any(|x| matches!(x, ferrocast_rtsp::rtcp::RtcpPacket::Bye { .. }));
        }
    }
    // The session stays, and the server answers.
    assert_eq!(c.request("GET_PARAMETER", &url, &[]).await.status, 200);
}

/// A path still being recorded, played from its start with no end: DESCRIBE says `npt=0-`,
/// playback goes on through the parts written meanwhile, and ends with BYE when it reaches the
/// part being written: here once the publisher has gone and the last part is played.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_ended_recording_plays_what_is_written_meanwhile() {
    let dir = playback::media_dir().join("open-ended");
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::with_config(&format!(
        "[record]\ndir = \"{}\"\npart_duration_ms = 500\nmin_free_bytes = 0\n[paths.\"live/*\"]\nrecord = true\n",
        dir.display()
    ));
    // 8 s in real time.
    let clip = clip_file("open-ended.flv", 8, &[]);
    let mut publisher = publish_args(&clip, &server.rtmp_url("live/open"), &[]);
    let api = format!("http://{}/api/v1/recordings/live/open", server.http);
    let start = loop {
        let r = http_get(&api, "").await;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if let Some(s) = v["segments"][0]["start"].as_str() {
            break s.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Three seconds behind the recording: the viewer never reaches the part being written
    // while the publisher goes on (at the live edge it would end at once, with BYE).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let url = format!("{}?start={start}", server.rtsp_url("live/open"));
    let mut c = Raw::connect(&server).await;
    let sdp = c.setup(&url).await;
    assert!(sdp.contains("a=range:npt=0.000-\r\n"), "no end while it records: {sdp}");
    let play = c.request("PLAY", &url, &[]).await;
    assert_eq!(play.status, 200, "{}", play.head);
    let (mut frames, mut bye) = (0, false);
    let deadline = Instant::now() + Duration::from_secs(40);
    while !bye {
        assert!(Instant::now() < deadline, "no BYE; {frames} frames");
        match c.next().await {
            Err((0, p)) if p.len() > 12 && p[1] & 0x80 != 0 => frames += 1,
            Err((1, p)) => {
                let packets = ferrocast_rtsp::rtcp::parse(&p).unwrap_or_default();
                bye = packets.iter().any(|x| matches!(x, ferrocast_rtsp::rtcp::RtcpPacket::Bye { .. }));
            }
            _ => {}
        }
    }
    assert!(publisher.0.try_wait().unwrap().is_some(), "BYE only after the publisher finished");
    let expected = 8 * CLIP_FPS as usize;
    assert!(
        frames + 2 * CLIP_FPS as usize >= expected,
        "{frames} of {expected} frames: what was written meanwhile too"
    );
}
