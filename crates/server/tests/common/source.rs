//! Helpers for the pulled-source tests: an upstream ferrocast that ffmpeg publishes to, the
//! paths API as JSON, a server on fixed ports (to restart it in place), and waiting for a
//! condition with a generous guard.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Proc, Server, http_get, publish, test_flv, wait_published};

/// An upstream server with ffmpeg publishing the H.264+AAC test stream at `path`, looping.
pub async fn upstream(path: &str) -> (Server, Proc) {
    let up = Server::start();
    let ffmpeg = publish(test_flv(), &up.rtmp_url(path));
    wait_published(&up, path).await;
    (up, ffmpeg)
}

/// `GET /api/v1/paths/PATH` as JSON (Null on 404).
pub async fn path_status(server: &Server, path: &str) -> Value {
    let r = http_get(&format!("http://{}/api/v1/paths/{path}", server.http), "").await;
    if r.status == 404 {
        return Value::Null;
    }
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// `POST URL` with a JSON body: (status, body as JSON).
pub async fn post_json(url: &str, body: &str) -> (u16, Value) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = TcpStream::connect(host).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut all)).await.expect("answer in time").unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = &all[split + 4..];
    // Chunked or not, the JSON is one line: take from the first '{' to the last '}'.
    let text = String::from_utf8_lossy(body);
    let json = match (text.find('{'), text.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&text[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

/// Waits until `f` gives Some, polling every 100 ms, for at most 60 s (a guard against a
/// hang, not a timing assertion).
pub async fn until<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The binary on the given ports (so that it can be restarted in place).
pub fn server_on(toml: &str, rtmp: u16, http: u16, rtsp: u16) -> Server {
    let cfg = std::env::temp_dir().join(format!("ferrocast-source-{}-{rtmp}.toml", std::process::id()));
    let toml = format!("{toml}\n[rtsp]\nrtp_port = 0\nrtcp_port = 0\n");
    std::fs::write(&cfg, toml).unwrap();
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrocast"))
        .args(["--rtmp-addr", &addr(rtmp), "--http-addr", &addr(http), "--rtsp-addr", &addr(rtsp)])
        .arg("--config")
        .arg(&cfg)
        .args(["--log-level", "debug"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ferrocast");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = |what: &str| -> SocketAddr {
        let line = lines.next().expect("ferrocast exited early").unwrap();
        let prefix = format!("ferrocast: {what} listening on ");
        line.strip_prefix(&prefix).unwrap_or_else(|| panic!("unexpected line {line:?}")).parse().unwrap()
    };
    let (rtmp, http, rtsp) = (next("rtmp"), next("http"), next("rtsp"));
    Server { proc: Proc(child), rtmp, http, rtsp }
}
