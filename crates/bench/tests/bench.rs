//! ferrocast-bench against the real ferrocast binary: its counts and figures must be right,
//! and a deliberately throttled reader must be reported as not keeping up.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{Kill, rand_suffix};

fn media() -> PathBuf {
    media_as("flv")
}

/// The test clip in a container: "flv" or "mp4".
fn media_as(container: &str) -> PathBuf {
    media_with(container, 30)
}

/// The test clip with a keyframe every `gop` frames.
fn media_with(container: &str, gop: u32) -> PathBuf {
    let out =
        std::env::temp_dir().join(format!("ferrocast-bench-{}-{}.{container}", std::process::id(), rand_suffix()));
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i", "sine"])
        .args([
            "-c:v",
            "libx264",
            "-g",
            &gop.to_string(),
            "-preset",
            "veryfast",
            "-b:v",
            "1M",
            "-c:a",
            "aac",
            "-t",
            "4",
        ])
        .arg("-f")
        .arg(container)
        .arg(&out)
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "ffmpeg is required (./scripts/test installs it)");
    out
}

/// The server binary, started on free ports: (process, RTMP, HTTP, RTSP addresses).
fn start_server() -> (Kill, String, String, String) {
    start_server_with("")
}

/// As [`start_server`], with more configuration.
fn start_server_with(extra_config: &str) -> (Kill, String, String, String) {
    support::start_server(extra_config)
}

/// Runs the bench publishing `file` to `path` on the server at (RTMP, HTTP, RTSP) addresses,
/// with more arguments; its JSON summary.
fn run_bench(server: (&str, &str, &str), path: &str, file: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let (rtmp, http, rtsp) = server;
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_ferrocast-bench"));
    let out = Command::new(&bench)
        .args(["--rtmp", &format!("rtmp://{rtmp}/{path}"), "--http", &format!("http://{http}")])
        .args(["--rtsp", &format!("rtsp://{rtsp}"), "--quiet", "--file"])
        .arg(file)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Readers of a server with a write-merge window: frames arrive in bursts, and none may be
/// missing or out of order (frames_lost counts gaps in each reader's decode times). With a
/// 3 s GOP and readers joining over 2 s, most start with more of the GOP cache than one
/// batch: their own task writes it in windows, then hands over to the fan-out's windows,
/// and the two must not cross.
#[test]
fn no_frame_lost_with_a_write_merge_window() {
    let (_server, rtmp, http, rtsp) = start_server_with("[hub]\nwrite_merge_ms = 50\n");
    let file = media_with("flv", 90);
    let extra = ["--readers", "20", "--ramp", "10", "--duration", "5"];
    let summary = run_bench((&rtmp, &http, &rtsp), "live/merge", &file, &extra);
    assert_eq!(summary["keeping_up"], 20, "{summary}");
    assert_eq!(summary["frames_lost"], 0, "frames missing or reordered: {summary}");
    assert!(summary["latency_ms"]["p50"].as_f64().unwrap() > 5.0, "frames wait for the window: {summary}");
    let _ = std::fs::remove_file(file);
}

/// RTSP over UDP read with UDP_GRO (`--udp-gro`): the server's segmented sends arrive whole
/// and are split back into RTP packets, frames counted as datagram by datagram.
#[test]
fn rtsp_udp_readers_with_udp_gro() {
    let (_server, rtmp, http, rtsp) = start_server();
    let file = media();
    for gro in [false, true] {
        let mut extra = vec!["--protocol", "rtsp-udp", "--readers", "4", "--duration", "4"];
        if gro {
            extra.push("--udp-gro");
        }
        let summary = run_bench((&rtmp, &http, &rtsp), &format!("live/gro{gro}"), &file, &extra);
        assert_eq!(summary["keeping_up"], 4, "gro {gro}: {summary}");
        assert_eq!(summary["first_frame_keyframe"], 4, "gro {gro}: {summary}");
        assert!(summary["latency_ms"]["samples"].as_u64().unwrap() > 50, "gro {gro}: {summary}");
    }
    let _ = std::fs::remove_file(file);
}

#[test]
fn counts_keyframes_and_the_throttled_reader() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_ferrocast-bench"));
    let (server, rtmp, http, _) = start_server();
    let file = media();
    let out = Command::new(&bench)
        .args(["--rtmp", &format!("rtmp://{rtmp}/live/bench"), "--http", &format!("http://{http}")])
        .arg("--file")
        .arg(&file)
        .args(["--readers", "6", "--duration", "6", "--throttle-readers", "1", "--throttle-kbps", "50", "--quiet"])
        .args(["--server-pid", &server.0.id().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["connected"], 6, "{summary}");
    assert_eq!(summary["keeping_up"], 5, "the throttled reader is behind, the others keep up: {summary}");
    assert_eq!(summary["first_frame_keyframe"], 6, "every reader starts on a keyframe: {summary}");
    assert!(summary["latency_ms"]["samples"].as_u64().unwrap() > 100, "probes measured latency: {summary}");
    assert!(summary["latency_ms"]["p50"].as_f64().unwrap() >= 0.0);
    assert!(summary["throughput_mbps_median"].as_f64().unwrap() > 1.0, "{summary}");
    assert!(summary["server"]["rss_max_kib"].as_u64().unwrap() > 0, "server sampled: {summary}");

    // HTTP-FLV readers too.
    let out = Command::new(&bench)
        .args([
            "--rtmp",
            &format!("rtmp://{rtmp}/live/bench2"),
            "--http",
            &format!("http://{http}"),
            "--protocol",
            "flv",
        ])
        .arg("--file")
        .arg(&file)
        .args(["--readers", "4", "--duration", "4", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((summary["connected"].as_u64(), summary["keeping_up"].as_u64()), (Some(4), Some(4)), "{summary}");
    assert_eq!(summary["first_frame_keyframe"], 4);
    let _ = std::fs::remove_file(file);
}

/// An MP4 file published over RTSP (ANNOUNCE/RECORD, interleaved), read over RTMP.
#[test]
fn publishes_an_mp4_file_over_rtsp() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_ferrocast-bench"));
    let (_server, rtmp, _, rtsp) = start_server();
    let file = media_as("mp4");
    let out = Command::new(&bench)
        .args(["--rtmp", &format!("rtmp://{rtmp}/live/mp4"), "--rtsp", &format!("rtsp://{rtsp}")])
        .args(["--publish-protocol", "rtsp", "--readers", "3", "--duration", "6", "--quiet"])
        .arg("--file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((summary["connected"].as_u64(), summary["keeping_up"].as_u64()), (Some(3), Some(3)), "{summary}");
    assert_eq!(summary["first_frame_keyframe"], 3, "{summary}");
    assert!(summary["throughput_mbps_median"].as_f64().unwrap() > 1.0, "{summary}");
    // Frames are matched to what was sent through the server's own RTSP-ingest timeline.
    assert!(summary["latency_ms"]["samples"].as_u64().unwrap() > 50, "probes measured latency: {summary}");
    let _ = std::fs::remove_file(file);
}

/// VOD viewers beside live readers: three viewers play an 8 s MP4 of `[vod] dir` over RTSP
/// from seeded positions in its first second, 5 s after two live RTSP readers started. Each
/// starts on a keyframe, is paced in real time, and gets BYE at the end of the file (so none
/// is receiving when the run ends: the last packet is ~5 s old, over RECEIVING_GAP_MS); the server's CPU and RSS are reported before and after.
#[test]
fn vod_viewers_play_a_file_beside_live_readers() {
    let dir = std::env::temp_dir().join(format!("ferrocast-bench-vod-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let clip = dir.join("clip.mp4");
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i", "sine"])
        .args(["-c:v", "libx264", "-g", "30", "-preset", "veryfast", "-c:a", "aac", "-t", "8"])
        .arg(&clip)
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "ffmpeg is required (./scripts/test installs it)");
    let (server, rtmp, http, rtsp) = start_server_with(&format!("[vod]\ndir = \"{}\"\n", dir.display()));
    let live = media();
    let url = format!("rtsp://{rtsp}/vod/clip.mp4");
    let pid = server.0.id().to_string();
    let extra = [
        "--protocol",
        "rtsp-tcp",
        "--readers",
        "2",
        "--duration",
        "18",
        "--server-pid",
        &pid,
        "--vod-readers",
        "3",
        "--vod-url",
        &url,
        "--vod-at",
        "5",
        "--vod-seed",
        "5",
        "--vod-max-start",
        "1",
    ];
    let summary = run_bench((&rtmp, &http, &rtsp), "live/vod", &live, &extra);
    let vod = &summary["vod"];
    assert_eq!(summary["keeping_up"], 2, "the live readers: {summary}");
    assert_eq!(vod["viewers"], 3, "{vod}");
    assert_eq!(vod["errors"], serde_json::json!([]), "{vod}");
    assert_eq!(vod["play_to_first_rtp_ms"]["samples"], 3, "every viewer got media: {vod}");
    assert_eq!(vod["first_frame_keyframe"], 3, "playback starts on a keyframe: {vod}");
    assert_eq!(vod["ended_with_bye"], 3, "8 s of media, 13 s to play it: {vod}");
    assert_eq!((vod["connected"].as_u64(), vod["receiving"].as_u64()), (Some(3), Some(0)), "{vod}");
    let positions = &vod["positions_s"];
    assert!(positions["min"].as_f64().unwrap() >= 0.0 && positions["max"].as_f64().unwrap() < 1.0, "{vod}");
    // 30 fps from a keyframe at or before a position in the first second to the end.
    let frames = vod["video_frames"].as_u64().unwrap();
    assert!((3 * 7 * 30..=3 * 8 * 30).contains(&frames), "{frames} video frames: {vod}");
    let rate = vod["media_seconds_per_second_median"].as_f64().unwrap();
    assert!((0.5..2.0).contains(&rate), "paced in real time, not sent as fast as possible: {vod}");
    for window in ["server_live_only", "server_live_and_vod"] {
        assert!(vod[window]["samples"].as_u64().is_some_and(|n| n >= 1), "{window}: {vod}");
        assert!(vod[window]["rss_last_kib"].as_u64().is_some_and(|k| k > 0), "{window}: {vod}");
    }
    assert!(vod["rss_per_vod_viewer_kib"].is_number(), "{vod}");
    for window in ["live_latency_ms_live_only", "live_latency_ms_with_vod"] {
        assert!(vod[window]["samples"].as_u64().is_some_and(|n| n > 0), "the live readers' latency, {window}: {vod}");
    }
    let _ = std::fs::remove_file(live);
    let _ = std::fs::remove_dir_all(dir);
}

/// Batched readers (`--read-every-ms`): all but the probes and the first reader sleep before
/// each read and take what piled up, for RTMP, HTTP-FLV and RTSP interleaved. They read far
/// less often than the eager probes, yet keep up and lose nothing, and the probes still
/// measure latency.
#[test]
fn batched_readers_read_in_batches_and_keep_up() {
    let (_server, rtmp, http, rtsp) = start_server();
    let file = media();
    for protocol in ["rtmp", "flv", "rtsp-tcp"] {
        let extra = ["--protocol", protocol, "--readers", "8", "--duration", "5", "--read-every-ms", "50"];
        let summary = run_bench((&rtmp, &http, &rtsp), &format!("live/batch-{protocol}"), &file, &extra);
        assert_eq!(summary["keeping_up"], 8, "{protocol}: {summary}");
        assert_eq!(summary["frames_lost"], 0, "{protocol}: {summary}");
        assert!(summary["latency_ms"]["samples"].as_u64().unwrap() > 50, "{protocol}: {summary}");
        let rate = |shape: &str| {
            summary["reads_per_s"][shape].as_f64().unwrap_or_else(|| panic!("{protocol} {shape}: {summary}"))
        };
        // A 50 ms sleep before each read: at most 20 reads a second (with the first
        // reads of the set-up, a little more over the short run).
        assert!(rate("batched") <= 22.0, "{protocol}: batched readers read after each sleep only: {summary}");
        // The stream has ~30 video and ~43 audio frames a second, and eager readers take
        // writes as they land.
        assert!(rate("eager") > 1.5 * rate("batched"), "{protocol}: eager readers read as writes land: {summary}");
    }
    let _ = std::fs::remove_file(file);
}
