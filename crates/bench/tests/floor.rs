//! ferrocast-floor against ferrocast-bench's own readers: its RTSP server plays to RTSP
//! readers over TCP (interleaved), UDP sent packet by packet and UDP sent in segments (GSO),
//! each starting on a keyframe and kept up, and its RTMP server still plays.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, Command, Stdio};

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
