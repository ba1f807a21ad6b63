//! HTTP API helpers of the API tests: any method, JSON bodies, long-running ffmpeg readers.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = TcpStream::connect(host).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    // A guard against a hang, not a time limit.
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut all)).await.expect("answered").unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = all[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = unchunk(&body);
    }
    Answer { status, head, body: String::from_utf8_lossy(&body).into_owned() }
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 || data.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 4 + size).min(data.len())..];
    }
    out
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
