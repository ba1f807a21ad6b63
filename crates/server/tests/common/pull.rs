//! Helpers of the pull tests: cameras run as child processes (GStreamer's RTSP server and the
//! scripted quirk camera under tests/support/), the server started with its log kept in a file
//! (to check that no credential reaches it), and the path status API polled until a state is
//! reached. Use with `mod common;` and `#[path = "common/pull.rs"] mod pull;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Proc, Server, http_get, http_post, require};

/// Overall bound of every wait for a state: generous, it only keeps a broken run from hanging.
pub const WAIT: Duration = Duration::from_secs(60);

fn support(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support").join(script)
}

fn work_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrocast-pull-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Fails loudly when python3 with GStreamer's RTSP server bindings is missing.
pub fn require_gst_rtsp_server() {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3-gi and gir1.2-gst-rtsp-server-1.0 are required for the camera tests: run ./scripts/test (it installs them)"
    );
    for element in ["x264enc", "avenc_aac", "rtph264pay", "rtpmp4gpay"] {
        crate::common::require_gst(element);
    }
}

/// A camera process: its RTSP port and path, and every line it printed so far.
pub struct Camera {
    pub proc: Proc,
    pub port: u16,
    /// What follows `host:port` in its URL (path and query).
    pub path: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Camera {
    /// Starts `support/SCRIPT ARGS` and waits for its `ready PORT [PATH]` line.
    fn start(script: &str, args: &[String]) -> Camera {
        let mut child = Command::new("/usr/bin/python3")
            .arg(support(script))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {script}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut camera = Camera { proc: Proc(child), port: 0, path: String::new(), lines };
        let ready = camera.wait_line(|l| l.starts_with("ready ") || l.starts_with("error "), "ready");
        let mut words = ready.split_whitespace().skip(1);
        camera.port = words.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{script}: {ready}"));
        camera.path = words.next().unwrap_or("").to_owned();
        camera
    }

    /// GStreamer's RTSP server (`support/gst_camera.py`) on `port` (0: any), mount `/cam`,
    /// with extra options (`--user`, `--password`, `--digest`, `--tcp-only`).
    pub fn gst(port: u16, opts: &[&str]) -> Camera {
        require_gst_rtsp_server();
        let mut args = vec!["--port".to_owned(), port.to_string(), "--mount".into(), "/cam".into()];
        args.extend(opts.iter().map(|s| s.to_string()));
        let mut cam = Camera::start("gst_camera.py", &args);
        cam.path = "/cam".into();
        cam
    }

    /// The scripted quirk camera (`support/quirk_camera.py`) playing [`quirk_h264`] in
    /// `scenario`, with extra options (`--auth`, `--user`, `--password`).
    pub fn quirk(scenario: &str, opts: &[&str]) -> Camera {
        let mut args = vec!["--scenario".to_owned(), scenario.into(), "--h264".into()];
        args.push(quirk_h264().display().to_string());
        if scenario == "wrong_sprop" {
            args.push("--wrong-sps".into());
            args.push(other_size_h264().display().to_string());
        }
        args.extend(opts.iter().map(|s| s.to_string()));
        Camera::start("quirk_camera.py", &args)
    }

    /// `rtsp://[userinfo@]127.0.0.1:PORT/PATH`; `userinfo` as it goes in the URL (encoded).
    pub fn url(&self, userinfo: Option<&str>) -> String {
        match userinfo {
            Some(u) => format!("rtsp://{u}@127.0.0.1:{}{}", self.port, self.path),
            None => format!("rtsp://127.0.0.1:{}{}", self.port, self.path),
        }
    }

    /// Every line printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many lines so far satisfy `f`.
    pub fn count(&self, f: impl Fn(&str) -> bool) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| f(l)).count()
    }

    /// Waits (within [`WAIT`]) for a line satisfying `f` and returns it.
    pub fn wait_line(&mut self, f: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| f(l)) {
                return l.clone();
            }
            if let Ok(Some(status)) = self.proc.0.try_wait() {
                panic!("camera exited ({status}) before {what}; it printed {:?}", self.lines());
            }
            assert!(Instant::now() < deadline, "camera never printed {what}; it printed {:?}", self.lines());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (within [`WAIT`]) until `n` lines satisfy `f`.
    pub fn wait_count(&mut self, n: usize, f: impl Fn(&str) -> bool, what: &str) {
        let deadline = Instant::now() + WAIT;
        while self.count(&f) < n {
            assert!(Instant::now() < deadline, "camera never printed {n} x {what}; it printed {:?}", self.lines());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the camera (a power cut: no TEARDOWN, no FIN handshake from its side beyond the
    /// kernel's).
    pub fn kill(self) {
        drop(self.proc);
    }
}

fn make(name: &str, args: &[&str]) -> PathBuf {
    require("ffmpeg");
    let out = work_dir().join(name);
    let status = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).arg(&out).status().expect("run ffmpeg");
    assert!(status.success(), "ffmpeg could not make {name}");
    out
}

/// Size of the quirk camera's picture.
pub const QUIRK_SIZE: (i64, i64) = (320, 180);

fn annexb(name: &str, size: &str) -> PathBuf {
    make(
        name,
        &[
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size={size}:rate=30"),
            "-t",
            "3",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-bf",
            "0",
            // Parameter sets before every IDR and access unit delimiters, as cameras send.
            "-x264-params",
            "repeat-headers=1:aud=1",
            "-f",
            "h264",
        ],
    )
}

/// 3 s of H.264 Annex B, 320x180 at 30 fps, a keyframe each second: what the quirk camera
/// sends.
pub fn quirk_h264() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| annexb("quirk.h264", "320x180"))
}

/// The same at 640x360: the quirk camera's lying SDP takes its SPS from here.
pub fn other_size_h264() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| annexb("other.h264", "640x360"))
}

/// The server with its log (stderr) kept in a file.
pub struct LoggedServer {
    pub server: Server,
    pub log: PathBuf,
}

impl std::ops::Deref for LoggedServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl LoggedServer {
    /// Starts the binary with `toml` (listen ports chosen by the kernel), as
    /// `Server::with_config` does, with the log at debug level going to a file.
    pub fn start(toml: &str) -> LoggedServer {
        let log = work_dir().join(format!("server-{}.log", unique()));
        let server = Server::spawn(toml, ["127.0.0.1:0"; 3], Stdio::from(std::fs::File::create(&log).unwrap()));
        LoggedServer { server, log }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        read(&self.log)
    }

    /// The last `n` lines of the log, without RTCP chatter: for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log_text();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("rtcp")).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `GET /api/v1/paths/{path}`: the status code and the JSON body.
    pub async fn path_status(&self, path: &str) -> (u16, Value) {
        let r = http_get(&format!("http://{}/api/v1/paths/{path}", self.http), "").await;
        (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
    }

    /// Polls the path's status until `f` holds (within [`WAIT`]); returns that status.
    pub async fn wait_status(&self, path: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (code, v) = self.path_status(path).await;
            if code == 200 && f(&v) {
                return v;
            }
            let last = if code == 200 { v } else { serde_json::json!({"http_status": code, "body": v}) };
            assert!(Instant::now() < deadline, "{path}: never {what}; last status {last}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the source's `state` to be `state`.
    pub async fn wait_state(&self, path: &str, state: &str) -> Value {
        self.wait_status(path, &format!("source state {state}"), |v| v["source"]["state"] == state).await
    }

    /// `POST /api/v1/probe` with `{"url": url}`: status code and JSON body.
    pub async fn probe_api(&self, url: &str) -> (u16, Value) {
        let body = serde_json::json!({ "url": url }).to_string();
        let (code, text) = http_post(&format!("http://{}/api/v1/probe", self.http), &body).await;
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log_text().contains(needle) {
            assert!(Instant::now() < deadline, "the log never said {needle:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

/// A frame counter of the path's status, whichever the server reports (`source.frames`, else
/// `source.bytes`).
pub fn progress(status: &Value) -> u64 {
    status["source"]["frames"].as_u64().or_else(|| status["source"]["bytes"].as_u64()).unwrap_or(0)
}

/// A long-lived HTTP-FLV reader counting the bytes it receives: a viewer that stays on while
/// the camera behind the path goes away and comes back.
pub struct FlvReader {
    pub bytes: Arc<std::sync::atomic::AtomicU64>,
    pub ended: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FlvReader {
    /// Starts reading `url` (an `http://` URL) until the server ends the response.
    pub fn start(url: &str) -> FlvReader {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let bytes = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicBool::new(false));
        let (b, e) = (bytes.clone(), ended.clone());
        let rest = url.strip_prefix("http://").unwrap().to_owned();
        let task = tokio::spawn(async move {
            let (host, path) = rest.split_at(rest.find('/').unwrap());
            if let Ok(mut s) = TcpStream::connect(host).await {
                let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
                if s.write_all(req.as_bytes()).await.is_ok() {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(Ok(n)) = tokio::time::timeout(WAIT, s.read(&mut buf)).await {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
            e.store(true, Ordering::Relaxed);
        });
        FlvReader { bytes, ended, task }
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the server ended the response.
    pub fn ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (within [`WAIT`]) until more than `n` bytes arrived; fails if the response ended.
    pub async fn wait_bytes(&self, n: u64, what: &str) {
        let deadline = Instant::now() + WAIT;
        while self.bytes() <= n {
            assert!(!self.ended(), "the reader's response ended at {} bytes, waiting for {what}", self.bytes());
            assert!(Instant::now() < deadline, "the reader got only {} bytes, waiting for {what}", self.bytes());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for FlvReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}
