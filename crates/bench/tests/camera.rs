//! `ferrocast-bench camera` read by ffprobe (FFmpeg's RTSP client) directly, over TCP
//! interleaved and UDP, two sessions on one camera at once: both get the file's tracks, start
//! on a keyframe, in real time, and the camera's summary counts what it sent.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A 4 s 320x240 30 fps H.264 clip with AAC (44.1 kHz), a keyframe every second.
fn media() -> PathBuf {
    let out = std::env::temp_dir().join(format!("ferrocast-camera-{}-{}.flv", std::process::id(), rand_suffix()));
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i", "sine"])
        .args(["-c:v", "libx264", "-g", "30", "-preset", "veryfast", "-b:v", "1M", "-c:a", "aac", "-t", "4"])
        .arg(&out)
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "ffmpeg is required (./scripts/test installs it)");
    out
}

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
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_ferrocast-bench"));
    let mut camera = Kill(
        Command::new(&bench)
            .args(["camera", "--cameras", "3", "--listen", "127.0.0.1:0", "--file"])
            .arg(&file)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(camera.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // "listening rtsp://127.0.0.1:PORT/c0 .. c2 (...)"
    let base = first.split_whitespace().nth(1).and_then(|u| u.strip_suffix("/c0")).expect(&first).to_owned();

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
    assert!(Command::new("kill").args(["-TERM", &camera.0.id().to_string()]).status().unwrap().success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(camera.0.wait().unwrap().success());
    let summary: serde_json::Value = serde_json::from_str(&rest).expect(&rest);
    assert_eq!((summary["mode"].as_str(), summary["cameras"].as_u64()), (Some("camera"), Some(3)), "{summary}");
    assert_eq!(summary["cameras_playing"], 1, "{summary}");
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
