//! `ferrocast-bench camera` read by ffprobe (FFmpeg's RTSP client) directly, over TCP
//! interleaved and UDP, two sessions on one camera at once: both get the file's tracks, start
//! on a keyframe, in real time, and the camera's summary counts what it sent. And pulled by
//! ferrocast: the frames the server counts are the frames the cameras sent.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{get_json, media, start_cameras, start_server, stop_cameras};

/// What ffprobe saw of `seconds` of media of `url`: (stream codecs with sizes, per packet
/// (stream index, keyframe)), and how long it took.
fn probe(url: &str, transport: &str, seconds: u32) -> (serde_json::Value, Vec<(u64, bool)>, f64) {
    let started = Instant::now();
    // `timeout` only guards against a hang (a hang fails the test, never stalls the run).
    let out = Command::new("timeout")
        .args(["120", "ffprobe", "-v", "error", "-rtsp_transport", transport])
        .args(["-show_entries", "stream=index,codec_name,width,height:packet=stream_index,flags"])
        .args(["-read_intervals", &format!("%+{seconds}"), "-of", "json", url])
        .output()
        .expect("ffprobe is required (./scripts/test installs it)");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "ffprobe {transport} {url}: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packets = v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["stream_index"].as_u64().unwrap(), p["flags"].as_str().unwrap().starts_with('K')))
        .collect();
    (v["streams"].clone(), packets, elapsed)
}

#[test]
fn ffprobe_reads_cameras_over_tcp_and_udp() {
    let file = media();
    let (camera, stdout, base) = start_cameras(3, &file);

    // Two sessions of camera 1 at once, one per transport.
    let probes: Vec<_> = ["tcp", "udp"]
        .into_iter()
        .map(|t| {
            let url = format!("{base}/c1");
            std::thread::spawn(move || (t, probe(&url, t, 3)))
        })
        .collect();
    let mut seen = (0, 0);
    for p in probes {
        let (transport, (streams, packets, elapsed)) = p.join().unwrap();
        let codecs: Vec<&str> = streams.as_array().unwrap().iter().map(|s| s["codec_name"].as_str().unwrap()).collect();
        assert_eq!(codecs, ["h264", "aac"], "{transport}: {streams}");
        assert_eq!((streams[0]["width"].as_u64(), streams[0]["height"].as_u64()), (Some(320), Some(240)));
        let video: Vec<bool> = packets.iter().filter(|p| p.0 == 0).map(|p| p.1).collect();
        let audio = packets.iter().filter(|p| p.0 == 1).count();
        seen = (seen.0 + video.len() + audio, seen.1 + video.len());
        assert_eq!(video.first(), Some(&true), "{transport}: a session starts on a keyframe");
        // 3 s of media: 90 video frames at 30 fps, ~129 AAC frames at 44.1 kHz.
        assert!((80..=100).contains(&video.len()), "{transport}: {} video packets", video.len());
        assert!((110..=150).contains(&audio), "{transport}: {audio} audio packets");
        assert!(video.iter().filter(|k| **k).count() >= 3, "{transport}: a keyframe a second");
        assert!(elapsed > 2.0, "{transport}: 3 s of media took {elapsed:.1} s: paced in real time");
    }

    // A camera that does not exist: DESCRIBE is answered 404.
    let out = Command::new("timeout")
        .args(["60", "ffprobe", "-v", "error", "-rtsp_transport", "tcp", &format!("{base}/c3")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"), "{}", String::from_utf8_lossy(&out.stderr));

    // SIGTERM ends it with its summary.
    let summary = stop_cameras(camera, stdout);
    assert_eq!((summary["mode"].as_str(), summary["cameras"].as_u64()), (Some("camera"), Some(3)), "{summary}");
    assert_eq!(summary["cameras_playing"], 1, "{summary}");
    assert!(summary["cpu_percent"].as_f64().is_some_and(|c| c >= 0.0), "its own CPU: {summary}");
    assert!(summary["totals"]["max_late_ms"].is_u64(), "{summary}");
    let c1 = &summary["per_camera"][1];
    assert_eq!(c1["sessions"], 2, "{summary}");
    assert_eq!(c1["dropped_frames"], 0, "{summary}");
    let (frames, video) = (c1["frames"].as_u64().unwrap(), c1["video_frames"].as_u64().unwrap());
    let seen = (seen.0 as u64, seen.1 as u64);
    assert!(frames >= seen.0 && video >= seen.1, "at least what the sessions got, {seen:?}, is counted: {c1}");
    assert!(c1["packets"].as_u64().unwrap() >= frames && c1["bytes"].as_u64().unwrap() > 300_000, "{c1}");
    assert_eq!(summary["per_camera"][0]["frames"], 0, "{summary}");
    assert_eq!(summary["totals"]["frames"], c1["frames"], "{summary}");
    let _ = std::fs::remove_file(file);
}

/// ferrocast pulls four cameras always on, two over TCP and two over UDP: every path goes
/// live, and once the cameras stop, the frames each path's source gave the hub (the API's
/// `source.frames`) are exactly the frames its camera sent, no RTP packet lost: the
/// accounting `scripts/bench pull` reports frames lost with.
#[test]
fn ferrocast_pulls_cameras_and_counts_every_frame() {
    let file = media();
    let (camera, stdout, base) = start_cameras(4, &file);
    let mut config = String::new();
    for (i, transport) in ["tcp", "tcp", "udp", "udp"].iter().enumerate() {
        config += &format!(
            "[paths.\"cams/c{i}\"]\nsource = \"{base}/c{i}\"\nsource_on_demand = false\nsource_transport = \"{transport}\"\n"
        );
    }
    let (_server, _, http, _) = start_server(&config);
    let paths = || get_json(&http, "/api/v1/paths")["items"].as_array().unwrap().clone();
    // Every path live and past its first frames (or the test's own guard fails it).
    let guard = Instant::now();
    let live = loop {
        let items = paths();
        let going = items.iter().filter(|p| p["live"] == true && p["source"]["frames"].as_u64() > Some(60)).count();
        if going == 4 {
            break items;
        }
        assert!(guard.elapsed() < Duration::from_secs(120), "not all pulled paths went live: {items:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for (i, transport) in ["tcp", "tcp", "udp", "udp"].iter().enumerate() {
        let p = live.iter().find(|p| p["path"] == format!("cams/c{i}")).expect("listed");
        assert_eq!(p["source"]["retries"], 0, "connected at the first try: {p}");
        assert_eq!(
            (p["source"]["state"].as_str(), p["source"]["transport"].as_str()),
            (Some("live"), Some(*transport)),
            "{p}"
        );
    }
    let summary = stop_cameras(camera, stdout);
    // The last frames in flight reach the hub: the counts settle (the sources retry meanwhile).
    let frames = |items: &[serde_json::Value]| items.iter().map(|p| p["source"]["frames"].clone()).collect::<Vec<_>>();
    let mut last = paths();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = paths();
        if frames(&now) == frames(&last) {
            break;
        }
        last = now;
    }
    for (i, transport) in ["tcp", "tcp", "udp", "udp"].iter().enumerate() {
        let p = last.iter().find(|p| p["path"] == format!("cams/c{i}")).expect("listed");
        let sent = &summary["per_camera"][i];
        assert_eq!(sent["sessions"], 1, "{transport} c{i}: one session: {sent} {p}");
        assert_eq!(p["source"]["frames"], sent["frames"], "{transport} c{i}: every frame sent arrived: {sent} {p}");
        assert_eq!(p["source"]["packets_lost"], 0, "{transport} c{i}: {p}");
    }
    let _ = std::fs::remove_file(file);
}
