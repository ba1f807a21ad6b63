//! Helpers for the pulled-source tests: an upstream ferrocast that ffmpeg publishes to, the
//! paths API as JSON, a server on fixed ports (to restart it in place), and waiting for a
//! condition with a generous guard.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

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

/// `POST URL` with a JSON body: (status, body as JSON; null when it is not JSON).
pub async fn post_json(url: &str, body: &str) -> (u16, Value) {
    let (status, text) = crate::common::http_post(url, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
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

/// The binary on the given ports (so that it can be restarted in place).
pub fn server_on(toml: &str, rtmp: u16, http: u16, rtsp: u16) -> Server {
    let [rtmp, http, rtsp] = [rtmp, http, rtsp].map(|p| format!("127.0.0.1:{p}"));
    Server::spawn(toml, [&rtmp, &http, &rtsp], Stdio::inherit())
}
