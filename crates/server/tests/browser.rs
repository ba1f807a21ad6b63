//! A real browser: headless Chromium plays a live stream with hls.js (from the npm registry,
//! installed by scripts/test) from a page this test serves. The page reports back whether the
//! video's currentTime advanced and whether hls.js raised an error.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A player library installed from the npm registry by scripts/test.
fn npm_file(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/node_modules").join(rel);
    assert!(p.exists(), "{rel} is missing: run ./scripts/test (it runs npm ci in tests/browser)");
    p
}

fn chromium() -> &'static str {
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

const PAGE: &str = r#"<!doctype html>
<html><body>
<video id="v" muted autoplay playsinline></video>
<script src="/lib.js"></script>
<script>
const report = (r) => fetch('/result', { method: 'POST', body: JSON.stringify(r) });
const errors = [];
const v = document.getElementById('v');
if (!Hls.isSupported()) { report({ supported: false, errors }); }
const hls = new Hls({ liveDurationInfinity: true });
hls.on(Hls.Events.ERROR, (_, d) => errors.push(d.type + ':' + d.details + (d.fatal ? ':fatal' : '')));
hls.loadSource('SOURCE');
hls.attachMedia(v);
hls.on(Hls.Events.MANIFEST_PARSED, () => v.play().catch(e => errors.push('play:' + e)));
let first = null;
const started = Date.now();
const tick = setInterval(() => {
  if (first === null && v.currentTime > 0) first = v.currentTime;
  const elapsed = (Date.now() - started) / 1000;
  if ((first !== null && v.currentTime - first > 4) || elapsed > 40) {
    clearInterval(tick);
    report({ supported: true, first, currentTime: v.currentTime, errors, width: v.videoWidth });
  }
}, 250);
</script>
</body></html>"#;

/// Serves the page and hls.js, and returns the first POSTed result.
async fn serve_page(listener: TcpListener, page: String, lib: PathBuf) -> serde_json::Value {
    let js = std::fs::read(lib).unwrap();
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
        let (ctype, content): (&str, Vec<u8>) = if head.starts_with("GET / ") {
            ("text/html", page.clone().into_bytes())
        } else if head.starts_with("GET /lib.js") {
            ("application/javascript", js.clone())
        } else if head.starts_with("POST /result") {
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").await;
            return serde_json::from_slice(&body).unwrap();
        } else {
            ("text/plain", b"not found".to_vec())
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            content.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
        let _ = s.write_all(&content).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hls_js_plays_mpegts_in_chromium() {
    plays_in_chromium("live/browser").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hls_js_plays_fmp4_in_chromium() {
    plays_in_chromium("fmp4/browser").await;
}

async fn plays_in_chromium(path: &str) {
    let browser = chromium();
    let server = Server::with_config("[paths.\"fmp4/*\"]\nhls_variant = \"fmp4\"\n");
    let _publisher = publish(test_flv(), &server.rtmp_url(path));
    wait_published(&server, path).await;
    // A viewer joining a running stream: hls.js starts three segments behind the live edge,
    // so let the window hold more than that first.
    let media = format!("http://{}/{path}/media.m3u8", server.http);
    for _ in 0..60 {
        let r = http_get(&media, "").await;
        if r.status == 200 && r.text().matches("#EXTINF").count() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}/", listener.local_addr().unwrap());
    let source = format!("http://{}/{path}/index.m3u8", server.http);
    let result =
        tokio::spawn(serve_page(listener, PAGE.replace("SOURCE", &source), npm_file("hls.js/dist/hls.min.js")));
    let r = run_chromium(browser, &page_url, path, result).await;
    assert_eq!(r["supported"], true, "{r}");
    let errors = r["errors"].as_array().unwrap();
    assert!(errors.is_empty(), "hls.js errors: {r}");
    let first = r["first"].as_f64().unwrap_or_else(|| panic!("video never started: {r}"));
    let now = r["currentTime"].as_f64().unwrap();
    assert!(now - first > 4.0, "currentTime did not advance: {r}");
    assert_eq!(r["width"], 320);
}

/// Opens the page in headless Chromium and waits for its report.
async fn run_chromium(
    browser: &str,
    page_url: &str,
    tag: &str,
    result: tokio::task::JoinHandle<serde_json::Value>,
) -> serde_json::Value {
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
    let r = tokio::time::timeout(Duration::from_secs(90), result).await.expect("the page never reported").unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    r
}

const MPEGTS_PAGE: &str = r#"<!doctype html>
<html><body>
<video id="v" muted autoplay playsinline></video>
<script src="/lib.js"></script>
<script>
const report = (r) => fetch('/result', { method: 'POST', body: JSON.stringify(r) });
const errors = [];
const v = document.getElementById('v');
if (!mpegts.getFeatureList().mseLivePlayback) { report({ supported: false, errors }); }
const player = mpegts.createPlayer({ type: 'flv', isLive: true, url: 'SOURCE' });
player.on(mpegts.Events.ERROR, (type, detail) => errors.push(type + ':' + detail));
player.attachMediaElement(v);
player.load();
const p = player.play();
if (p && p.catch) p.catch(e => errors.push('play:' + e));
let first = null;
const started = Date.now();
const tick = setInterval(() => {
  if (first === null && v.currentTime > 0) first = v.currentTime;
  const elapsed = (Date.now() - started) / 1000;
  if ((first !== null && v.currentTime - first > 4) || elapsed > 40) {
    clearInterval(tick);
    report({ supported: true, first, currentTime: v.currentTime, errors, width: v.videoWidth });
  }
}, 250);
</script>
</body></html>"#;

#[tokio::test(flavor = "multi_thread")]
async fn mpegts_js_plays_http_flv_in_chromium() {
    let browser = chromium();
    let server = Server::start();
    let _publisher = publish(test_flv(), &server.rtmp_url("live/flvjs"));
    wait_published(&server, "live/flvjs").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}/", listener.local_addr().unwrap());
    let page = MPEGTS_PAGE.replace("SOURCE", &server.flv_url("live/flvjs"));
    let result = tokio::spawn(serve_page(listener, page, npm_file("mpegts.js/dist/mpegts.js")));
    let r = run_chromium(browser, &page_url, "flvjs", result).await;
    assert_eq!(r["supported"], true, "{r}");
    assert!(r["errors"].as_array().unwrap().is_empty(), "mpegts.js errors: {r}");
    let first = r["first"].as_f64().unwrap_or_else(|| panic!("video never started: {r}"));
    assert!(r["currentTime"].as_f64().unwrap() - first > 4.0, "currentTime did not advance: {r}");
    assert_eq!(r["width"], 320);
}
