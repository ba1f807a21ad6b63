//! Media for the playback tests: a recording made once per test binary (a clip published
//! faster than real time to a server that records it into several files), and MP4 files for
//! `[vod] dir`. Use with `mod common;` and `#[path = "common/playback.rs"] mod playback;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::OnceCell;

use crate::common::{Server, http_get, require};

/// Length of the recorded clip, in seconds.
pub const CLIP_SECONDS: u32 = 30;
/// Its frame rate and GOP: a keyframe every second.
pub const CLIP_FPS: u32 = 25;
/// Its recording's file length: three files of 10 s.
pub const SEGMENT_MS: u64 = 10_000;

/// A directory for one test binary's media, removed by nobody (under the temp dir).
pub fn media_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrocast-playback-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `ffmpeg -v error -y ARGS OUT` into [`media_dir`]; the file's path.
pub fn ffmpeg_make(name: &str, args: &[&str]) -> PathBuf {
    require("ffmpeg");
    let out = media_dir().join(name);
    if !out.exists() {
        let status = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).arg(&out).status().unwrap();
        assert!(status.success(), "ffmpeg could not make {name}");
    }
    out
}

/// The lavfi inputs and encoder settings of the clip: 320x240 testsrc2 at [`CLIP_FPS`] with a
/// keyframe every second and B-frames, AAC 48 kHz stereo; `seconds` long.
pub fn clip_args(seconds: u32) -> Vec<String> {
    let s = |x: &str| x.to_owned();
    vec![
        s("-f"),
        s("lavfi"),
        s("-i"),
        format!("testsrc2=size=320x240:rate={CLIP_FPS}"),
        s("-f"),
        s("lavfi"),
        s("-i"),
        s("sine=frequency=440:sample_rate=48000"),
        s("-c:v"),
        s("libx264"),
        s("-bf"),
        s("2"),
        s("-g"),
        CLIP_FPS.to_string(),
        s("-preset"),
        s("veryfast"),
        s("-c:a"),
        s("aac"),
        s("-ac"),
        s("2"),
        s("-t"),
        seconds.to_string(),
    ]
}

/// A clip of `seconds` as `NAME` in [`media_dir`] (the container from the name's extension;
/// `extra` output options, e.g. `-movflags +faststart`).
pub fn clip_file(name: &str, seconds: u32, extra: &[&str]) -> PathBuf {
    let mut args = clip_args(seconds);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ffmpeg_make(name, &args)
}

/// A recording of the clip: where its files are and what the API says of them.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `[record] dir` of the server that made it; a playback server points there too.
    pub dir: PathBuf,
    /// The stream path it was published on.
    pub path: String,
    /// The first segment's start and the last one's end, RFC 3339 as the API gives them.
    pub start: String,
    pub end: String,
    /// The same in µs since the epoch.
    pub start_us: u64,
    pub end_us: u64,
    /// The segments as listed: (start, duration in seconds).
    pub segments: Vec<(String, f64)>,
}

impl Recorded {
    /// The config of a server that plays this recording back (its `[record] dir`, recording
    /// nothing itself, and deleting nothing however full the disk), with `extra` appended.
    pub fn config(&self, extra: &str) -> String {
        format!("[record]\ndir = \"{}\"\nmin_free_bytes = 0\n{extra}\n", self.dir.display())
    }

    /// An RFC 3339 time `offset_s` seconds after the recording's start.
    pub fn at(&self, offset_s: f64) -> String {
        format_us(self.start_us + (offset_s * 1e6) as u64)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of µs since the epoch.
pub fn format_us(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    let ms = (us / 1000) % 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm), for the test's own formatting.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// µs since the epoch of an RFC 3339 `...Z` time as the API writes them.
pub fn parse_us(t: &str) -> u64 {
    let n = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (hh, mm, ss) = (n(11..13), n(14..16), n(17..19));
    let frac = t[19..].trim_end_matches('Z').trim_start_matches('.');
    let ms = if frac.is_empty() { 0 } else { format!("{frac:0<3}")[..3].parse::<i64>().unwrap() };
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000 + ms * 1000) as u64
}

static RECORDED: OnceCell<Recorded> = OnceCell::const_new();

/// The recording every playback test plays: [`CLIP_SECONDS`] of the clip published over RTMP
/// at [`READ_RATE`] times real time (media time runs at its own rate: the files cover 30 s)
/// into a server whose readers queue the whole clip, in files of [`SEGMENT_MS`] with 1 s
/// parts. Made once per build of the server for all test processes (nextest runs each test in
/// its own; recording it in each, at once, on two cores made recorders fall behind), under a
/// lock; the server that made it is stopped. Tests that change files work on a copy.
pub async fn recorded() -> &'static Recorded {
    RECORDED.get_or_init(shared_recording).await
}

/// As [`recorded`] (one fixture; the name some tests use).
pub async fn recorded_whole() -> &'static Recorded {
    recorded().await
}

/// Where the shared recording lives: keyed by the server binary (a rebuilt recorder records
/// again) and the fixture's version.
fn shared_dir() -> PathBuf {
    let exe = std::fs::metadata(env!("CARGO_BIN_EXE_ferrocast")).unwrap();
    let mtime = exe.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::env::temp_dir().join(format!("ferrocast-playback-fixture-v1-{mtime:x}-{:x}", exe.len()))
}

async fn shared_recording() -> Recorded {
    let base = shared_dir();
    std::fs::create_dir_all(&base).unwrap();
    let lock = std::fs::File::create(base.join("lock")).unwrap();
    // Blocking: one process records, the others wait for it.
    let lock = tokio::task::spawn_blocking(move || {
        lock.lock().unwrap();
        lock
    })
    .await
    .unwrap();
    let done = base.join("done.json");
    if let Ok(text) = std::fs::read_to_string(&done) {
        let v: Value = serde_json::from_str(&text).unwrap();
        drop(lock);
        return Recorded::from_listing(base.join("recordings"), &v);
    }
    let mut last = String::new();
    for attempt in 1..=3 {
        match make_recording(&base.join("recordings")).await {
            Ok(listing) => {
                std::fs::write(&done, listing.to_string()).unwrap();
                drop(lock);
                return Recorded::from_listing(base.join("recordings"), &listing);
            }
            Err(e) => {
                eprintln!("recording fixture, attempt {attempt}: {e}");
                last = e;
            }
        }
    }
    panic!("the recording fixture failed three times: {last}");
}

/// Frames the hub queues for each reader of the fixture's server: the whole clip (30 s of
/// 25 fps video and 48 kHz AAC are about 2,200 frames). With the default (512) the recorder,
/// a hub reader, falls behind a publisher faster than real time and skips to keyframes.
pub const WHOLE_CLIP_QUEUE_FRAMES: usize = 8192;

/// How much faster than real time the fixture publishes: 30 s in about 4 s. Sent at once,
/// the end of the clip is lost now and then even with the larger queue.
pub const READ_RATE: u32 = 8;

/// Records the clip into `dir`; the settled listing, or why not.
async fn make_recording(dir: &Path) -> Result<Value, String> {
    let flv = clip_file("clip.flv", CLIP_SECONDS, &[]);
    let _ = std::fs::remove_dir_all(dir);
    let path = "cams/lobby";
    let server = Server::with_config(&format!(
        "[hub]\nreader_queue_frames = {WHOLE_CLIP_QUEUE_FRAMES}\n[record]\ndir = \"{}\"\nsegment_duration_ms = {SEGMENT_MS}\npart_duration_ms = 1000\nmin_free_bytes = 0\n[paths.\"cams/*\"]\nrecord = true\n",
        dir.display()
    ));
    let url = server.rtmp_url(path);
    let status = tokio::task::spawn_blocking(move || {
        Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-readrate", &READ_RATE.to_string(), "-i"])
            .arg(&flv)
            .args(["-c", "copy", "-f", "flv", &url])
            .status()
    })
    .await
    .unwrap()
    .unwrap();
    if !status.success() {
        return Err("publishing the clip failed".into());
    }
    let api = format!("http://{}/api/v1/recordings/{path}", server.http);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http_get(&api, "").await;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        // Settled: every segment closed and the clip all there (between one file's close and
        // the next one's open, every listed segment is closed too).
        let segments = v["segments"].as_array();
        let total: f64 = segments.map_or(0.0, |s| s.iter().filter_map(|s| s["duration"].as_f64()).sum());
        let closed = segments.is_some_and(|s| s.len() >= 3 && s.iter().all(|s| s["writing"] == false));
        if r.status == 200 && closed && (total - f64::from(CLIP_SECONDS)).abs() < 1.0 {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("the recording did not settle: {} {v}", r.status));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Recorded {
    fn from_listing(dir: PathBuf, listing: &Value) -> Recorded {
        let segments: Vec<(String, f64)> = listing["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["start"].as_str().unwrap().to_owned(), s["duration"].as_f64().unwrap()))
            .collect();
        let start = segments[0].0.clone();
        let start_us = parse_us(&start);
        let last = segments.last().unwrap();
        let end_us = parse_us(&last.0) + (last.1 * 1e6) as u64;
        let path = listing["path"].as_str().unwrap().to_owned();
        Recorded { dir, path, start, end: format_us(end_us), start_us, end_us, segments }
    }
}

/// The `[vod]` section for files in `dir`.
pub fn vod_dir_config(dir: &Path) -> String {
    format!("[vod]\ndir = \"{}\"\n", dir.display())
}
