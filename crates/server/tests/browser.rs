//! A real browser: headless Chromium plays a live stream with hls.js (from the npm registry,
//! installed by scripts/test) from a page this test serves. The page reports back whether the
//! video's currentTime advanced and whether hls.js raised an error.

mod common;
#[path = "common/page.rs"]
mod page;

use std::time::Duration;

use common::*;
use page::{chromium, npm_file, run_chromium, serve_page};
use tokio::net::TcpListener;

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

#[tokio::test(flavor = "multi_thread")]
async fn hls_js_plays_mpegts_in_chromium() {
    plays_in_chromium("live/browser").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hls_js_plays_fmp4_in_chromium() {
    plays_in_chromium("fmp4/browser").await;
}

async fn plays_in_chromium(path: &str) {
    chromium();
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
        tokio::spawn(serve_page(listener, PAGE.replace("SOURCE", &source), Some(npm_file("hls.js/dist/hls.min.js"))));
    let r = run_chromium(&page_url, path, result, Duration::from_secs(90)).await;
    assert_eq!(r["supported"], true, "{r}");
    let errors = r["errors"].as_array().unwrap();
    assert!(errors.is_empty(), "hls.js errors: {r}");
    let first = r["first"].as_f64().unwrap_or_else(|| panic!("video never started: {r}"));
    let now = r["currentTime"].as_f64().unwrap();
    assert!(now - first > 4.0, "currentTime did not advance: {r}");
    assert_eq!(r["width"], 320);
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
    chromium();
    let server = Server::start();
    let _publisher = publish(test_flv(), &server.rtmp_url("live/flvjs"));
    wait_published(&server, "live/flvjs").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}/", listener.local_addr().unwrap());
    let page = MPEGTS_PAGE.replace("SOURCE", &server.flv_url("live/flvjs"));
    let result = tokio::spawn(serve_page(listener, page, Some(npm_file("mpegts.js/dist/mpegts.js"))));
    let r = run_chromium(&page_url, "flvjs", result, Duration::from_secs(90)).await;
    assert_eq!(r["supported"], true, "{r}");
    assert!(r["errors"].as_array().unwrap().is_empty(), "mpegts.js errors: {r}");
    let first = r["first"].as_f64().unwrap_or_else(|| panic!("video never started: {r}"));
    assert!(r["currentTime"].as_f64().unwrap() - first > 4.0, "currentTime did not advance: {r}");
    assert_eq!(r["width"], 320);
}
