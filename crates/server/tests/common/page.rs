//! Headless Chromium for the browser tests: a test page (and a player library from npm)
//! served on loopback, opened in Chromium, whose script POSTs its report to `/result`. Use
//! with `mod common;` and `#[path = "common/page.rs"] mod page;`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::Proc;

/// A player library installed from the npm registry by scripts/test.
pub fn npm_file(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/node_modules").join(rel);
    assert!(p.exists(), "{rel} is missing: run ./scripts/test (it runs npm ci in tests/browser)");
    p
}

/// The Chromium binary; fails loudly when there is none.
pub fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return c;
        }
    }
    panic!("Chromium is required for the browser test: run ./scripts/test (it installs Debian's chromium)");
}

/// Serves `page` at `/` (and `lib` at `/lib.js`), and returns the first POSTed result.
pub async fn serve_page(listener: TcpListener, page: String, lib: Option<PathBuf>) -> serde_json::Value {
    let js = lib.map(|l| std::fs::read(l).unwrap()).unwrap_or_default();
    loop {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 8192];
        // Read headers, then a body if Content-Length says so.
        let (head, mut body) = loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break (String::new(), Vec::new());
            }
            req.extend_from_slice(&buf[..n]);
            if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                break (String::from_utf8_lossy(&req[..i]).into_owned(), req[i + 4..].to_vec());
            }
        };
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        while body.len() < len {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
        let (status, ctype, content): (&str, &str, Vec<u8>) = if head.starts_with("GET / ") {
            ("200 OK", "text/html", page.clone().into_bytes())
        } else if head.starts_with("GET /lib.js") && !js.is_empty() {
            ("200 OK", "application/javascript", js.clone())
        } else if head.starts_with("POST /result") {
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").await;
            return serde_json::from_slice(&body).unwrap();
        } else {
            ("404 Not Found", "text/plain", b"not found".to_vec())
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            content.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
        let _ = s.write_all(&content).await;
    }
}

/// Opens the page in headless Chromium and waits (at most `guard`) for its report.
pub async fn run_chromium(
    page_url: &str,
    tag: &str,
    result: tokio::task::JoinHandle<serde_json::Value>,
    guard: Duration,
) -> serde_json::Value {
    let browser = chromium();
    let profile =
        std::env::temp_dir().join(format!("ferrocast-chromium-{}-{}", std::process::id(), tag.replace('/', "-")));
    let chrome = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(page_url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let _chrome = Proc(chrome);
    let r = tokio::time::timeout(guard, result).await.expect("the page never reported").unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    r
}
