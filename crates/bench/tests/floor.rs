//! ferrocast-floor against ferrocast-bench's own readers: its RTSP server plays to RTSP
//! readers over TCP (interleaved), UDP sent packet by packet and UDP sent in segments (GSO),
//! each starting on a keyframe and kept up, and its RTMP server still plays.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, Command, Stdio};

use bytes::{Bytes, BytesMut};
use ferrocast_rtsp::message::{self, Message, Response};
use support::Kill;

/// A running floor: the process, its RTMP and RTSP addresses, its stderr.
struct Floor {
    process: Kill,
    rtmp: String,
    rtsp: String,
    stderr: ChildStderr,
}

impl Floor {
    /// Ends the floor: what it wrote on stderr.
    fn stop(mut self) -> String {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        let mut text = String::new();
        self.stderr.read_to_string(&mut text).unwrap();
        text
    }
}

/// ferrocast-floor playing `file` on free ports, with more arguments.
fn start_floor(file: &Path, extra: &[&str]) -> Floor {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ferrocast-floor"));
    let mut process = Kill(
        Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--rtsp-listen", "127.0.0.1:0", "--file"])
            .arg(file)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = process.0.stderr.take().unwrap();
    let mut lines = BufReader::new(process.0.stdout.take().unwrap()).lines();
    // "ferrocast-floor: rtmp listening on ADDR", then "... rtsp listening on ADDR (RTP/RTCP ...)".
    let mut addr = |what: &str| {
        let line = lines.next().expect("the floor printed its addresses").unwrap();
        let prefix = format!("ferrocast-floor: {what} listening on ");
        line.strip_prefix(&prefix).and_then(|r| r.split(' ').next()).expect(&line).to_owned()
    };
    let rtmp = addr("rtmp");
    let rtsp = addr("rtsp");
    Floor { process, rtmp, rtsp, stderr }
}

/// ferrocast-bench `--no-publish` against the floor: its JSON summary.
fn run_bench(floor: &Floor, extra: &[&str]) -> serde_json::Value {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_ferrocast-bench"));
    let out = Command::new(bench)
        .args(["--rtmp", &format!("rtmp://{}/live/floor", floor.rtmp), "--rtsp", &format!("rtsp://{}", floor.rtsp)])
        .args(["--no-publish", "--readers", "4", "--duration", "4", "--quiet"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Four readers all connected, kept up, started on a keyframe, and given the stream: the
/// test clip is about 1.1 Mbit/s, so four readers take well over 2.
fn assert_plays(what: &str, summary: &serde_json::Value) {
    assert_eq!(summary["connected"], 4, "{what}: {summary}");
    assert_eq!(summary["keeping_up"], 4, "{what}: {summary}");
    assert_eq!(summary["first_frame_keyframe"], 4, "{what}: every reader starts on a keyframe: {summary}");
    let mbps = summary["throughput_mbps_median"].as_f64().unwrap();
    assert!(mbps > 2.0, "{what}: {mbps} Mbit/s for four readers: {summary}");
}

/// RTSP over TCP and UDP packet by packet, and RTMP from the same floor.
#[test]
fn floor_plays_rtsp_tcp_udp_and_rtmp() {
    let file = support::media();
    let floor = start_floor(&file, &[]);
    for protocol in ["rtsp-tcp", "rtsp-udp", "rtmp"] {
        assert_plays(protocol, &run_bench(&floor, &["--protocol", protocol]));
    }
    let stderr = floor.stop();
    assert!(!stderr.contains("ferrocast-floor:"), "no connection failed: {stderr}");
    let _ = std::fs::remove_file(file);
}

/// RTSP over UDP in segmented sends: read datagram by datagram, and whole with UDP_GRO. The
/// kernel took the segmented sends (a refusal is reported on stderr, then per packet).
#[test]
fn floor_plays_rtsp_udp_with_gso() {
    let file = support::media();
    let floor = start_floor(&file, &["--udp-send", "gso", "--nodelay"]);
    assert_plays("gso", &run_bench(&floor, &["--protocol", "rtsp-udp"]));
    assert_plays("gso, udp-gro readers", &run_bench(&floor, &["--protocol", "rtsp-udp", "--udp-gro"]));
    let stderr = floor.stop();
    assert!(!stderr.contains("segmentation offload refused"), "GSO taken (Linux 4.18+ on loopback): {stderr}");
    assert!(!stderr.contains("ferrocast-floor:"), "no connection failed: {stderr}");
    let _ = std::fs::remove_file(file);
}

/// An RTSP connection with requests written by hand and what comes back decoded.
struct Raw {
    socket: TcpStream,
    input: BytesMut,
    cseq: u32,
    session: Option<String>,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let socket = TcpStream::connect(addr).unwrap();
        // Only so that a floor that never answers fails the test instead of hanging it.
        socket.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        Raw { socket, input: BytesMut::new(), cseq: 0, session: None }
    }

    /// Sends a request (with CSeq and the Session once known); its CSeq.
    fn send(&mut self, method: &str, url: &str, headers: &[(&str, &str)]) -> u32 {
        self.cseq += 1;
        let mut text = format!("{method} {url} RTSP/1.0\r\nCSeq: {}\r\n", self.cseq);
        if let Some(s) = &self.session {
            text.push_str(&format!("Session: {s}\r\n"));
        }
        for (k, v) in headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        text.push_str("\r\n");
        self.socket.write_all(text.as_bytes()).unwrap();
        self.cseq
    }

    fn next(&mut self) -> Message {
        loop {
            if let Some(m) = message::decode(&mut self.input).unwrap() {
                return m;
            }
            let mut buf = [0u8; 65536];
            let n = self.socket.read(&mut buf).unwrap();
            assert!(n > 0, "the floor closed the connection");
            self.input.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads to the answer to `cseq`: it, and the interleaved packets before it.
    fn answer(&mut self, cseq: u32) -> (Response, Vec<(u8, Bytes)>) {
        let mut packets = Vec::new();
        loop {
            match self.next() {
                Message::Interleaved { channel, data } => packets.push((channel, data)),
                Message::Response(r) if r.headers.get("CSeq") == Some(&cseq.to_string()) => return (r, packets),
                m => panic!("unexpected {m:?}"),
            }
        }
    }

    /// Sends a request and expects 200.
    fn ok(&mut self, method: &str, url: &str, headers: &[(&str, &str)]) -> (Response, Vec<(u8, Bytes)>) {
        let cseq = self.send(method, url, headers);
        let (r, packets) = self.answer(cseq);
        assert_eq!(r.status, 200, "{method}: {r:?}");
        if let Some(s) = r.headers.get("Session") {
            self.session = Some(s.split(';').next().unwrap().to_owned());
        }
        (r, packets)
    }
}

/// True if an H.264 RTP packet starts a keyframe: an SPS, PPS or IDR slice, alone, first in a
/// STAP-A or starting an FU-A.
fn starts_keyframe(packet: &[u8]) -> bool {
    let payload = &packet[12..];
    let key = |t: u8| matches!(t & 0x1f, 5 | 7 | 8);
    match payload[0] & 0x1f {
        24 => key(payload[3]),
        28 => payload[1] & 0x80 != 0 && key(payload[1]),
        t => key(t),
    }
}

/// The whole exchange by hand over TCP, on any path: OPTIONS, DESCRIBE (ferrocast's SDP of
/// the file's H.264 and AAC), SETUP of both tracks interleaved, PLAY (media from a keyframe on
/// the channels answered, sender reports), GET_PARAMETER answered between frames, TEARDOWN, after which no
/// media follows.
#[test]
fn floor_answers_an_rtsp_session_by_hand() {
    let file = support::media();
    let floor = start_floor(&file, &[]);
    let url = format!("rtsp://{}/any/path", floor.rtsp);
    let mut c = Raw::connect(&floor.rtsp);
    let (r, _) = c.ok("OPTIONS", &url, &[]);
    let public = r.headers.get("Public").unwrap();
    assert!(["DESCRIBE", "SETUP", "PLAY", "GET_PARAMETER", "TEARDOWN"].iter().all(|m| public.contains(m)), "{public}");
    let (r, _) = c.ok("DESCRIBE", &url, &[("Accept", "application/sdp")]);
    let sdp = ferrocast_rtsp::sdp::parse(&r.body).unwrap();
    let media: Vec<(&str, &str, Option<&str>)> =
        sdp.media.iter().map(|m| (m.kind.as_str(), m.encoding.as_str(), m.control.as_deref())).collect();
    assert_eq!(
        media,
        [("video", "H264", Some("trackID=0")), ("audio", "MPEG4-GENERIC", Some("trackID=1"))],
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    for (track, channels) in [(0, "0-1"), (1, "2-3")] {
        let transport = format!("RTP/AVP/TCP;unicast;interleaved={channels}");
        let (r, _) = c.ok("SETUP", &format!("{url}/trackID={track}"), &[("Transport", &transport)]);
        assert!(r.headers.get("Transport").unwrap().contains(&format!("interleaved={channels}")), "{r:?}");
    }
    let (r, packets) = c.ok("PLAY", &url, &[("Range", "npt=0.000-")]);
    assert_eq!(r.headers.get("Range"), Some("npt=now-"));
    assert!(packets.is_empty(), "no media before the PLAY answer");
    // Media: from a keyframe, video on 0 and audio on 2, with frames' ends marked; a sender
    // report for video on 1 (every 5 s).
    let (mut video, mut audio, mut marked, mut report) = (Vec::new(), 0, 0, None);
    while video.len() < 100 || audio == 0 || report.is_none() {
        match c.next() {
            Message::Interleaved { channel: 0, data } => {
                marked += usize::from(data[1] & 0x80 != 0);
                video.push(data);
            }
            Message::Interleaved { channel: 2, .. } => audio += 1,
            Message::Interleaved { channel: 1, data } => report = Some(data),
            Message::Interleaved { channel: 3, .. } => {}
            m => panic!("unexpected {m:?}"),
        }
    }
    let ssrc = u32::from_be_bytes([video[0][8], video[0][9], video[0][10], video[0][11]]);
    let report = ferrocast_rtsp::rtcp::parse(&report.unwrap()).unwrap();
    assert!(
        matches!(report[0], ferrocast_rtsp::rtcp::RtcpPacket::SenderReport { ssrc: s, .. } if s == ssrc),
        "a sender report of the video SSRC: {report:?}"
    );
    assert!(starts_keyframe(&video[0]), "the first video packet starts a keyframe: {:02x?}", &video[0][..16]);
    assert!(marked > 0, "frames end with the marker bit");
    assert!(video.iter().all(|p| p.len() <= 12 + ferrocast_rtsp::codec::DEFAULT_MTU), "payloads within the MTU");
    let seqs: Vec<u16> = video.iter().map(|p| u16::from_be_bytes([p[2], p[3]])).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "video in sequence: {seqs:?}");
    // Keep-alive while media flows: answered whole, between frames.
    c.ok("GET_PARAMETER", &url, &[]);
    c.ok("TEARDOWN", &url, &[]);
    // The connection is the control task's again: nothing follows but answers.
    c.session = None;
    c.ok("OPTIONS", &url, &[]);
    let (_, after) = c.ok("OPTIONS", &url, &[]);
    assert!(after.is_empty(), "{} packets after TEARDOWN", after.len());
    drop(c);
    let stderr = floor.stop();
    assert!(!stderr.contains("ferrocast-floor:"), "no connection failed: {stderr}");
    let _ = std::fs::remove_file(file);
}
