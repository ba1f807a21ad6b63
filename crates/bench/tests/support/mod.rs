//! What the camera tests share: processes killed on drop, the test clip, the camera process,
//! the ferrocast binary on free ports, and a plain HTTP GET.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};

/// A child process, killed when dropped.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A 4 s 320x240 30 fps H.264 clip with AAC (44.1 kHz), a keyframe every second.
pub fn media() -> PathBuf {
    let out = std::env::temp_dir().join(format!("ferrocast-camera-{}-{}.flv", std::process::id(), rand_suffix()));
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i", "sine"])
        .args(["-c:v", "libx264", "-g", "30", "-preset", "veryfast", "-b:v", "1M", "-c:a", "aac", "-t", "4"])
        .arg(&out)
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "ffmpeg is required (./scripts/test installs it)");
    out
}

/// `ferrocast-bench camera` with `cameras` cameras of `file` on a free port: the process, its
/// stdout after the first line, and the base URL (`rtsp://127.0.0.1:PORT`).
pub fn start_cameras(cameras: usize, file: &Path) -> (Kill, BufReader<ChildStdout>, String) {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_ferrocast-bench"));
    let mut camera = Kill(
        Command::new(&bench)
            .args(["camera", "--cameras", &cameras.to_string(), "--listen", "127.0.0.1:0", "--file"])
            .arg(file)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(camera.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // "listening rtsp://127.0.0.1:PORT/c0 .. cN (...)"
    let base = first.split_whitespace().nth(1).and_then(|u| u.strip_suffix("/c0")).expect(&first).to_owned();
    (camera, stdout, base)
}

/// Ends the camera process with SIGTERM: its JSON summary.
pub fn stop_cameras(mut camera: Kill, mut stdout: BufReader<ChildStdout>) -> serde_json::Value {
    assert!(Command::new("kill").args(["-TERM", &camera.0.id().to_string()]).status().unwrap().success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(camera.0.wait().unwrap().success());
    serde_json::from_str(&rest).expect(&rest)
}

/// The ferrocast binary with this configuration, on free ports: (process, RTMP, HTTP, RTSP
/// addresses).
pub fn start_server(config: &str) -> (Kill, String, String, String) {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_ferrocast-bench"));
    let server_bin = bench.with_file_name("ferrocast");
    assert!(server_bin.exists(), "build the workspace first (cargo build --workspace): {}", server_bin.display());
    let path = std::env::temp_dir().join(format!("ferrocast-camera-{}-{}.toml", std::process::id(), rand_suffix()));
    std::fs::write(&path, format!("[rtsp]\nrtp_port = 0\nrtcp_port = 0\n{config}")).unwrap();
    let mut server = Kill(
        Command::new(&server_bin)
            .args(["--rtmp-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--rtsp-addr", "127.0.0.1:0"])
            .args(["--log-level", "warn", "--config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let mut addr = || lines.next().unwrap().unwrap().rsplit(' ').next().unwrap().to_owned();
    let (rtmp, http, rtsp) = (addr(), addr(), addr());
    (server, rtmp, http, rtsp)
}

/// GET `path` from `addr` over HTTP/1.0: the body as JSON.
pub fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect(&text);
    assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "{head}");
    serde_json::from_str(body).expect(body)
}
