//! The web console at `/` in headless Chromium, driven by puppeteer-core from a node script
//! (tests/support/console.mjs; puppeteer-core is a devDependency of console/package.json,
//! installed with the console's libraries by scripts/test). Real clients: ffmpeg publishes
//! over RTMP; the page plays with mpegts.js and hls.js; kicks go through the API.

mod common;
#[path = "support/console_driver.rs"]
mod console_driver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use console_driver::{Driver, console_dir, require_console_tools};

/// The repository's console directory, with the libraries installed in it.
fn installed_console() -> PathBuf {
    let dir = console_dir();
    for f in [
        "hls.js/dist/hls.min.js",
        "mpegts.js/dist/mpegts.js",
        "uplot/dist/uPlot.iife.min.js",
        "puppeteer-core/package.json",
    ] {
        assert!(
            dir.join("node_modules").join(f).exists(),
            "console/node_modules/{f} is missing: run ./scripts/test (it runs npm ci in console/)"
        );
    }
    dir
}

fn console_config(dir: &std::path::Path) -> String {
    format!("[console]\ndir = {:?}\n", dir.display().to_string())
}

async fn session_listed(server: &Server, id: &str) -> bool {
    let r = http_get(&format!("http://{}/api/v1/sessions", server.http), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["items"].as_array().unwrap().iter().any(|s| s["id"] == id)
}

/// A stream published after the page loaded appears without a reload with its tracks, plays
/// in both players, moves its chart, and its publisher is kicked from the page.
#[tokio::test(flavor = "multi_thread")]
async fn console_shows_plays_charts_and_kicks_a_live_stream() {
    require_console_tools();
    let dir = installed_console();
    let server = Server::with_config(&console_config(&dir));
    let path = "live/console";
    let mut page = Driver::start("live", &format!("http://{}/", server.http), path, &dir);
    page.expect("loaded");
    let mut publisher = publish(test_flv(), &server.rtmp_url(path));
    wait_published(&server, path).await;
    page.send("published");

    let appeared = page.expect("appeared");
    assert_eq!(appeared["live"], "live", "{appeared}");
    let codec = appeared["codec"].as_str().unwrap().to_ascii_lowercase();
    assert!(codec.contains("264") && codec.contains("320×240") && codec.contains("aac"), "{appeared}");

    for player in ["flv", "hls"] {
        let played = page.expect("played");
        assert_eq!(played["player"], player, "{played}");
        let (first, now) = (played["first"].as_f64().unwrap(), played["now"].as_f64().unwrap());
        assert!(now - first > 2.0, "currentTime did not advance: {played}");
        assert_eq!(played["width"], 320, "{played}");
    }

    let chart = page.expect("chart");
    assert_eq!(chart["screenshots_differ"], true, "{chart}");

    let kicked = page.expect("kicked");
    let id = kicked["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 16, "{kicked}");
    page.expect("gone");
    // The API no longer lists it, and the publisher's ffmpeg ends.
    let deadline = Instant::now() + Duration::from_secs(20);
    while session_listed(&server, &id).await {
        assert!(Instant::now() < deadline, "session {id} still listed after the kick");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = http_get(&format!("http://{}/api/v1/sessions/{id}", server.http), "").await;
    assert_eq!(r.status, 404, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(20);
    while publisher.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the kicked publisher's ffmpeg did not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    page.send("checked");
    page.expect("done");
    page.finish();
}

/// With no libraries in `[console] dir`, `/` still loads, lists the live paths, and says how
/// to get them; nothing outside the allowed dist files is served.
#[tokio::test(flavor = "multi_thread")]
async fn console_without_libraries_says_how_to_get_them() {
    require_console_tools();
    installed_console(); // puppeteer-core comes from the repository's console/
    let empty = std::env::temp_dir().join(format!("ferrocast-console-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    // Something a traversal would reach.
    std::fs::write(empty.join("package.json"), "{\"secret\": true}").unwrap();
    let server = Server::with_config(&console_config(&empty));
    let path = "live/nolibs";
    let _publisher = publish(test_flv(), &server.rtmp_url(path));
    wait_published(&server, path).await;

    let base = format!("http://{}", server.http);
    let r = http_get(&format!("{base}/"), "").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("npm ci") && r.text().contains("scripts/run"), "{}", r.text());
    let r = http_get(&format!("{base}/console/lib/hls.min.js"), "").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("npm ci"), "{}", r.text());
    for bad in [
        "/console/lib/../package.json",
        "/console/lib/%2e%2e/package.json",
        "/console/package.json",
        "/console/node_modules/hls.js/dist/hls.min.js",
        "/console/lib/..%2fpackage.json",
    ] {
        let r = http_get(&format!("{base}{bad}"), "").await;
        assert_ne!(r.status, 200, "{bad}");
        assert!(!r.text().contains("secret"), "{bad}: {}", r.text());
    }

    let mut page = Driver::start("missing", &format!("{base}/"), path, &console_dir());
    let missing = page.expect("missing");
    let text = missing["text"].as_str().unwrap();
    assert!(text.contains("npm ci") && text.contains("./scripts/run"), "{missing}");
    assert!(text.contains("hls.js") && text.contains("mpegts.js") && text.contains("uPlot"), "{missing}");
    assert!(missing["note"].as_str().unwrap().contains("mpegts.js"), "{missing}");
    page.expect("done");
    page.finish();
    let _ = std::fs::remove_dir_all(&empty);
}

/// A recorded path's timeline, clicked half-way, plays the recording from that time.
#[tokio::test(flavor = "multi_thread")]
async fn console_timeline_plays_a_recording_from_the_click() {
    require_console_tools();
    let dir = installed_console();
    let rec = std::env::temp_dir().join(format!("ferrocast-console-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&rec);
    let config = format!(
        "{}[record]\ndir = {:?}\n[paths.\"rec/*\"]\nrecord = true\n",
        console_config(&dir),
        rec.display().to_string()
    );
    let server = Server::with_config(&config);
    let path = "rec/cam";
    // 12 s in real time, then the publisher leaves: a finished recording.
    let mut publisher = publish_args(test_flv(), &server.rtmp_url(path), &["-stream_loop", "2"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while publisher.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the publisher did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Wait until the recording is closed and listed.
    let listing = format!("http://{}/api/v1/recordings/{path}", server.http);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http_get(&listing, "").await;
        if r.status == 200 {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let segs = v["segments"].as_array().cloned().unwrap_or_default();
            let total: f64 = segs.iter().map(|s| s["duration"].as_f64().unwrap_or(0.0)).sum();
            if !segs.is_empty() && segs.iter().all(|s| s["writing"] == false) && total > 8.0 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no finished recording of {path}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let mut page = Driver::start("timeline", &format!("http://{}/", server.http), path, &dir);
    let tl = page.expect("timeline");
    let (clicked, start) = (tl["clicked"].as_f64().unwrap(), tl["start_s"].as_f64().unwrap());
    // The click's time, to the pixel (the bar is ~1200 px over ~12 s) and the millisecond.
    assert!((start - clicked).abs() < 0.2, "played from {start}, clicked at {clicked}: {tl}");
    assert!(tl["src"].as_str().unwrap().contains("/rec/cam/recording.mp4?start="), "{tl}");
    let (first, now) = (tl["first"].as_f64().unwrap(), tl["now"].as_f64().unwrap());
    assert!(now - first > 1.0, "currentTime did not advance: {tl}");
    page.expect("done");
    page.finish();
    let _ = std::fs::remove_dir_all(&rec);
}
