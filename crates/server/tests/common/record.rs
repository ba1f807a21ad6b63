//! Helpers for the recording tests: the real binary started with environment variables (the
//! disk test hooks) and its log captured, the recordings API as typed segments, files on
//! disk, raw HTTP methods, and an RTMP reader that counts what it receives.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrocast_rtmp::client::ClientEvent;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Proc, RtmpClient, Server, require};

/// A fresh directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrocast-recfaults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes a directory when dropped, even when the test fails (for big ones).
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real binary with its stderr (the log) written to a file the test reads.
pub struct RecServer {
    pub server: Server,
    pub log_file: PathBuf,
}

impl std::ops::Deref for RecServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl std::ops::DerefMut for RecServer {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

impl RecServer {
    /// As `Server::with_config`, with environment variables set for the server and its log
    /// (`--log-level debug`) going to `work/server.log`. `work` holds the config too.
    pub fn start(work: &Path, toml: &str, env: &[(&str, &Path)]) -> RecServer {
        use std::io::{BufRead, BufReader};
        let cfg = work.join("ferrocast.toml");
        // Tests run in parallel: the RTSP UDP ports must be free ones too.
        let toml = if toml.contains("[rtsp]") {
            toml.to_owned()
        } else {
            format!("{toml}\n[rtsp]\nrtp_port = 0\nrtcp_port = 0\n")
        };
        std::fs::write(&cfg, toml).unwrap();
        let log_file = work.join("server.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferrocast"));
        command
            .args(["--rtmp-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--rtsp-addr", "127.0.0.1:0"])
            .arg("--config")
            .arg(&cfg)
            .args(["--log-level", "debug"])
            .env_remove("FERROCAST_TEST_RECORD_FULL")
            .env_remove("FERROCAST_TEST_RECORD_FREE_BYTES")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_file).unwrap());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start ferrocast");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let log = log_file.clone();
        let mut addr = |what: &str| -> std::net::SocketAddr {
            let line = lines
                .next()
                .unwrap_or_else(|| {
                    panic!("ferrocast exited early:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
                })
                .unwrap();
            let prefix = format!("ferrocast: {what} listening on ");
            line.strip_prefix(&prefix).unwrap_or_else(|| panic!("unexpected line {line:?}")).parse().unwrap()
        };
        let rtmp = addr("rtmp");
        let http = addr("http");
        let rtsp = addr("rtsp");
        RecServer { server: Server { proc: Proc(child), rtmp, http, rtsp }, log_file }
    }

    /// The log so far, without the terminal colours the server writes even to a file.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log_file).unwrap_or_default())
    }

    /// Log lines at ERROR level.
    pub fn error_lines(&self) -> Vec<String> {
        self.log().lines().filter(|l| l.contains(" ERROR ")).map(str::to_owned).collect()
    }

    /// The URL of the recordings API for `path` ("" for the list of paths).
    pub fn api(&self, path: &str) -> String {
        if path.is_empty() {
            format!("http://{}/api/v1/recordings", self.http)
        } else {
            format!("http://{}/api/v1/recordings/{path}", self.http)
        }
    }

    /// The listing of `path`: its segments, oldest first (none when the API says 404).
    pub async fn segments(&self, path: &str) -> Vec<Seg> {
        let (status, v) = request("GET", &self.api(path)).await;
        if status == 404 {
            return Vec::new();
        }
        assert_eq!(status, 200, "listing {path}: {v}");
        v["segments"].as_array().unwrap().iter().map(Seg::from_json).collect()
    }

    /// `GET /api/v1/recordings`: (path, bytes) of every path with recordings.
    pub async fn paths(&self) -> Vec<(String, u64)> {
        let (status, v) = request("GET", &self.api("")).await;
        assert_eq!(status, 200, "{v}");
        v["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["path"].as_str().unwrap().to_owned(), p["bytes"].as_u64().unwrap()))
            .collect()
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A segment as the API lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seg {
    /// `2026-11-25T10:00:00.000Z`.
    pub start: String,
    pub duration: f64,
    pub bytes: u64,
    pub writing: bool,
}

impl Seg {
    fn from_json(v: &Value) -> Seg {
        Seg {
            start: v["start"].as_str().unwrap().to_owned(),
            duration: v["duration"].as_f64().unwrap(),
            bytes: v["bytes"].as_u64().unwrap(),
            writing: v["writing"].as_bool().unwrap(),
        }
    }

    /// Its start, µs since the Unix epoch.
    pub fn start_us(&self) -> u64 {
        unix_us(&self.start)
    }

    /// Its end, µs since the Unix epoch.
    pub fn end_us(&self) -> u64 {
        self.start_us() + (self.duration * 1e6).round() as u64
    }

    /// Its file under `DIR/PATH/`.
    pub fn file(&self, dir: &Path, path: &str) -> PathBuf {
        dir.join(path).join(format!("{}.mp4", self.start.replace(':', "-")))
    }
}

/// `.mp4` files of a directory, sorted (oldest first: they are named by their start).
pub fn mp4_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "mp4")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Every file under `dir`, recursively, relative to it.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

/// What `ffmpeg -v error -i FILE -f null -` says (nothing for a clean decode).
pub fn decode_errors(file: &Path) -> String {
    require("ffmpeg");
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    let mut e = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        e.push_str(&format!(" (exit {})", out.status));
    }
    e
}

/// Frames per stream type that ffprobe reads in a file: (video, audio).
pub fn frame_counts(file: &Path) -> (u64, u64) {
    require("ffprobe");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries", "stream=codec_type,nb_read_frames", "-of", "json"])
        .arg(file)
        .output()
        .expect("ffprobe");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut counts = (0, 0);
    for s in v["streams"].as_array().into_iter().flatten() {
        let n: u64 = s["nb_read_frames"].as_str().and_then(|n| n.parse().ok()).unwrap_or(0);
        match s["codec_type"].as_str() {
            Some("video") => counts.0 += n,
            Some("audio") => counts.1 += n,
            _ => {}
        }
    }
    counts
}

/// An HTTP request with no body: (status, JSON body or Null).
pub async fn request(method: &str, url: &str) -> (u16, Value) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = TcpStream::connect(host).await.unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut all)).await.expect("response in time").unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_slice(&all[split + 4..]).unwrap_or(Value::Null))
}

/// A guard for waiting on a condition: generous, and a failure says what was awaited.
pub struct Deadline {
    at: Instant,
    what: String,
}

impl Deadline {
    pub fn new(what: &str, secs: u64) -> Deadline {
        Deadline { at: Instant::now() + Duration::from_secs(secs), what: what.to_owned() }
    }

    /// Panics, with `state`, once the deadline passed; else sleeps a little.
    pub async fn tick(&self, state: impl std::fmt::Display) {
        if Instant::now() >= self.at {
            let state = state.to_string();
            let cut = state.char_indices().nth(4000).map_or(state.len(), |(i, _)| i);
            panic!("timed out waiting for {}: {}", self.what, &state[..cut]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An RTMP reader of our own that counts the audio and video frames it receives.
pub struct FrameCounter {
    frames: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FrameCounter {
    /// Plays `path` and counts; stops counting when the connection ends.
    pub async fn start(server: &Server, path: &str) -> FrameCounter {
        let mut client = RtmpClient::connect(server.rtmp, path, false).await;
        client.wait_for(|e| matches!(e, ClientEvent::Playing)).await;
        let frames = Arc::new(AtomicU64::new(0));
        let counter = frames.clone();
        let task = tokio::spawn(async move {
            while let Some(ev) = client.next_event(Duration::from_secs(15)).await {
                if let ClientEvent::Media(m) = ev
                    && m.kind != ferrocast_rtmp::MediaKind::Data
                {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        FrameCounter { frames, task }
    }

    /// Frames so far.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Whether the reader's connection is still up.
    pub fn connected(&self) -> bool {
        !self.task.is_finished()
    }

    /// Waits until `more` frames beyond the count now have arrived.
    pub async fn wait_more(&self, more: u64, what: &str) {
        let from = self.frames();
        let d = Deadline::new(&format!("{more} more frames {what}"), 60);
        while self.frames() < from + more {
            assert!(self.connected(), "the reader was disconnected {what}");
            d.tick(format!("{} frames", self.frames() - from)).await;
        }
    }
}

impl Drop for FrameCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// µs since the Unix epoch of a UTC time as the API, the log and file names write it:
/// `2026-11-25T10:00:00.000Z`, any fraction, `-` or `:` between the time's fields.
pub fn unix_us(t: &str) -> u64 {
    let t = t.strip_suffix(".mp4").unwrap_or(t);
    let t = t.strip_suffix('Z').unwrap_or_else(|| panic!("not a UTC time: {t:?}"));
    let (date, time) = t.split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let h: Vec<u64> = hms.split([':', '-']).map(|p| p.parse().unwrap()).collect();
    let micros: u64 = format!("{frac:0<6}")[..6].parse().unwrap();
    // Days since 1970-01-01 of a proleptic Gregorian date.
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    (days as u64 * 86_400 + h[0] * 3600 + h[1] * 60 + h[2]) * 1_000_000 + micros
}

/// A deletion by retention as the log reports it.
#[derive(Debug, Clone)]
pub struct Deletion {
    /// When, µs since the Unix epoch (the server's clock).
    pub at_us: u64,
    /// The stream path.
    pub path: String,
    /// The file's start (from its name), µs since the Unix epoch.
    pub start_us: u64,
    /// `Age`, `PathBytes`, `TotalBytes` or `FreeSpace`.
    pub reason: String,
}

/// Every deletion by retention in `log`, in order.
pub fn deletions(log: &str) -> Vec<Deletion> {
    let field = |line: &str, key: &str| -> String {
        let at = line.find(&format!(" {key}=")).unwrap_or_else(|| panic!("no {key} in {line}")) + key.len() + 2;
        let rest = &line[at..];
        let end = rest.find(' ').unwrap_or(rest.len());
        rest[..end].trim_matches('"').to_owned()
    };
    log.lines()
        .filter(|l| l.contains("deleted by retention"))
        .map(|l| {
            let file = field(l, "file");
            Deletion {
                at_us: unix_us(l.split_whitespace().next().unwrap()),
                path: field(l, "path"),
                start_us: unix_us(file.rsplit('/').next().unwrap()),
                reason: field(l, "reason"),
            }
        })
        .collect()
}
