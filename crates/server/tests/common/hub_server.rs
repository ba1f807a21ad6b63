//! Helpers of the hub's integration tests (hub_timeline.rs, hub_fanout.rs): the real binary
//! with extra environment variables and its log kept for waiting on, FLV media as a list of
//! tags to publish with our own RTMP client, and ffprobe's packets per track.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::common::{Proc, require};

/// The real binary on loopback (ports chosen by the kernel), its log collected.
pub struct LoggedServer {
    pub proc: Proc,
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    pub rtsp: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    pub dir: PathBuf,
}

impl LoggedServer {
    /// Starts with a TOML config (RTSP UDP ports are set to 0 here; `{dir}` names a fresh
    /// directory of the test's own) and environment.
    pub fn start(toml: &str, env: &[(&str, &str)]) -> LoggedServer {
        let dir = std::env::temp_dir().join(format!("ferrocast-hub-{}-{}", std::process::id(), next()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("ferrocast.toml");
        let toml = toml.replace("{dir}", &dir.display().to_string());
        std::fs::write(&cfg, format!("{toml}\n[rtsp]\nrtp_port = 0\nrtcp_port = 0\n")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrocast"))
            .args(["--rtmp-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--rtsp-addr", "127.0.0.1:0"])
            .arg("--config")
            .arg(&cfg)
            .args(["--log-level", "debug"])
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferrocast");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                sink.lock().unwrap().push(line);
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = |what: &str| -> SocketAddr {
            let line = lines.next().expect("ferrocast exited early").unwrap();
            let prefix = format!("ferrocast: {what} listening on ");
            line.strip_prefix(&prefix).unwrap_or_else(|| panic!("unexpected line {line:?}")).parse().unwrap()
        };
        let (rtmp, http, rtsp) = (addr("rtmp"), addr("http"), addr("rtsp"));
        LoggedServer { proc: Proc(child), rtmp, http, rtsp, log, dir }
    }

    /// Lines of the log so far that contain `text`.
    pub fn log_count(&self, text: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(text)).count()
    }

    /// Waits until the log has `n` lines containing `text` (a guard against a hang, not a
    /// time limit).
    pub async fn wait_log(&self, text: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log_count(text) < n {
            assert!(Instant::now() < deadline, "the server never logged {n} x {text:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn next() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// One tag to publish: kind (8 audio, 9 video, 18 data), timestamp in ms, body.
#[derive(Debug, Clone)]
pub struct Tag {
    pub tag_type: u8,
    pub ts: u32,
    pub body: Bytes,
}

impl Tag {
    /// A video tag of a keyframe (FLV frame type 1, not a sequence header).
    pub fn is_video_keyframe(&self) -> bool {
        self.tag_type == 9 && self.body.len() > 1 && self.body[0] >> 4 == 1 && self.body[1] == 1
    }

    /// A media frame (not a sequence header or metadata).
    pub fn is_frame(&self) -> bool {
        match self.tag_type {
            9 => self.body.len() > 1 && self.body[1] == 1,
            8 => self.body.len() > 1 && self.body[1] == 1,
            _ => false,
        }
    }

    /// Presentation time in ms (video: dts + composition offset).
    pub fn pts(&self) -> i64 {
        let mut pts = i64::from(self.ts);
        if self.tag_type == 9 && self.body.len() >= 5 {
            let c = &self.body[2..5];
            let cts = (i32::from_be_bytes([c[0], c[1], c[2], 0]) >> 8) as i64;
            pts += cts;
        }
        pts
    }
}

/// The tags of an FLV file, looped `loops` times with increasing timestamps.
pub fn looped_tags(file: &std::path::Path, loops: u32) -> Vec<Tag> {
    let data = Bytes::from(std::fs::read(file).unwrap());
    let tags = ferrocast_media::flv::read_file(&data).unwrap();
    let span = tags.iter().map(|t| t.timestamp).max().unwrap_or(0) + 33;
    let mut out = Vec::new();
    for l in 0..loops {
        for t in &tags {
            if t.tag_type == 18 && l > 0 {
                continue;
            }
            out.push(Tag { tag_type: t.tag_type, ts: t.timestamp + l * span, body: t.body.clone() });
        }
    }
    out
}

/// Packets of one kind of track in ffprobe's output: (dts s, pts s, keyframe), in order.
pub fn packets(json: &Value, kind: &str) -> Vec<(Option<f64>, Option<f64>, bool)> {
    let streams = json["streams"].as_array().cloned().unwrap_or_default();
    let Some(index) = streams.iter().find(|s| s["codec_type"] == kind).and_then(|s| s["index"].as_i64()) else {
        return Vec::new();
    };
    let time = |v: &Value| v.as_str().and_then(|s| s.parse::<f64>().ok());
    json["packets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| p["stream_index"].as_i64() == Some(index))
        .map(|p| (time(&p["dts_time"]), time(&p["pts_time"]), p["flags"].as_str().unwrap_or("").starts_with('K')))
        .collect()
}

/// Runs ffprobe -show_packets on `input` to its end (a guard of `guard_s` against a hang);
/// the JSON and ffprobe's messages.
pub fn ffprobe(input: &str, opts: &[&str], guard_s: u64) -> (Value, String) {
    require("ffprobe");
    let out = std::env::temp_dir().join(format!("ferrocast-hub-probe-{}-{}.json", std::process::id(), next()));
    let err = out.with_extension("err");
    let mut child = Command::new("ffprobe")
        .args(["-v", "error", "-show_streams", "-show_packets", "-of", "json"])
        .args(opts)
        .arg(input)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("ffprobe");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(guard_s) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let json = serde_json::from_slice(&std::fs::read(&out).unwrap_or_default()).unwrap_or(Value::Null);
    (json, std::fs::read_to_string(&err).unwrap_or_default())
}
