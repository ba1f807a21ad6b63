//! HTTP API helpers of the API tests: any method, JSON bodies, long-running ffmpeg readers.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Proc, require};

/// An answer: status, head, body text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim().to_ascii_lowercase() == name).then(|| v.trim().to_owned())
        })
    }
}

/// `METHOD url` with an optional JSON body, reading to the end (Connection: close).
pub async fn request(method: &str, url: &str, body: Option<&str>) -> Answer {
    let (status, head, body) = crate::common::http_request(method, url, body.unwrap_or("")).await;
    Answer { status, head, body: String::from_utf8_lossy(&body).into_owned() }
}

/// GET as JSON, asserting a 200.
pub async fn get_json(url: &str) -> Value {
    let a = request("GET", url, None).await;
    assert_eq!(a.status, 200, "GET {url}: {}", a.body);
    a.json()
}

/// `ffmpeg -i URL -c copy -f null -`: a reader that plays until the stream or its connection
/// ends.
pub fn read_with_ffmpeg(url: &str, input_opts: &[&str]) -> Proc {
    require("ffmpeg");
    let child = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin"])
        .args(input_opts)
        .args(["-i", url, "-c", "copy", "-f", "null", "-"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg");
    Proc(child)
}

/// Polls `f` until it gives Some (every 200 ms; the guard only keeps a hang from stalling the
/// run).
pub async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for a process to exit; true when it did (within a generous guard).
pub async fn exits(proc: &mut Proc) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if proc.0.try_wait().unwrap().is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The media file's path as a string (for ffmpeg arguments).
pub fn arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// An even UDP port whose next port is free too: the server's RTP and RTCP ports, adjacent as
/// ffmpeg expects (it sends its receiver reports to the server's RTP port + 1, RFC 3550 11).
pub async fn free_udp_pair() -> u16 {
    loop {
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = a.local_addr().unwrap().port();
        if port % 2 == 0 && port < 65534 && tokio::net::UdpSocket::bind(("127.0.0.1", port + 1)).await.is_ok() {
            return port;
        }
    }
}
