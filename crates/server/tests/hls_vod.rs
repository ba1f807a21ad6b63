//! HLS VOD of recordings and files against real players: ffprobe reads the playlist of the
//! whole recording (three files) and of a `/vod` MP4 file with every frame; a start/end
//! window lasts what it says; hls.js in headless Chromium plays a VOD playlist and seeks to
//! its middle; bad inputs get 400/404 with nothing broken.

mod common;
#[path = "common/page.rs"]
mod page;
#[path = "common/playback.rs"]
mod playback;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, http_get};
use page::{npm_file, run_chromium, serve_page};
use playback::{Recorded, clip_file, format_us, media_dir, recorded_whole, vod_dir_config};
use tokio::net::TcpListener;

/// A server playing the recording back and serving [`media_dir`] as `[vod] dir`, once its
/// recordings index answers.
async fn server_for(rec: &Recorded) -> Server {
    let server = Server::with_config(&rec.config(&vod_dir_config(&media_dir())));
    let url = format!("http://{}/{}/index.m3u8?start={}", server.http, rec.path, rec.start);
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&url, "").await.status != 200 {
        assert!(Instant::now() < deadline, "the recordings never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// ffprobe's frames per stream kind of a file or URL: (video, audio).
fn count_frames(input: &str) -> (usize, usize) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries", "stream=codec_type,nb_read_frames", "-of", "csv=p=0"])
        .arg(input)
        .output()
        .expect("ffprobe runs");
    assert!(out.status.success(), "ffprobe {input}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    // An HLS input lists its streams twice (in its program and on their own): one of each.
    let n = |kind: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(kind))
            .map(|v| v.trim_start_matches(',').parse::<usize>().unwrap())
            .max()
            .unwrap_or(0)
    };
    (n("video"), n("audio"))
}

fn recording_files(rec: &Recorded) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(rec.dir.join(&rec.path))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mp4"))
        .collect();
    files.sort();
    files
}

/// The EXTINF durations of a playlist, checked against its rules on the way.
fn check_playlist(text: &str) -> Vec<f64> {
    assert!(text.starts_with("#EXTM3U\n"), "{text}");
    assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD\n"), "{text}");
    assert!(text.trim_end().ends_with("#EXT-X-ENDLIST"), "{text}");
    assert!(text.contains("#EXT-X-MAP:URI=\"hls/init_"), "{text}");
    let target: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
        .expect("a target duration")
        .parse()
        .unwrap();
    let durations: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .map(|d| d.trim_end_matches(',').parse().unwrap())
        .collect();
    // RFC 8216 4.3.3.1: each EXTINF rounded to the nearest integer is at most the target.
    assert!(durations.iter().all(|d| d.round() <= target), "{text}");
    assert!(
        durations.iter().any(|d| d.round() == target || *d > target - 1.0),
        "target duration not too large: {text}"
    );
    durations
}

#[tokio::test(flavor = "multi_thread")]
async fn ffprobe_reads_the_whole_recording_and_a_window() {
    let rec = recorded_whole().await;
    let server = server_for(rec).await;
    let url = format!("http://{}/{}/index.m3u8?start={}", server.http, rec.path, rec.start);
    let r = http_get(&url, "").await;
    assert_eq!(r.header("content-type").as_deref(), Some("application/vnd.apple.mpegurl"));
    assert_eq!(r.header("access-control-allow-origin").as_deref(), Some("*"));
    let text = r.text();
    let durations = check_playlist(&text);
    let total: f64 = durations.iter().sum();
    let recorded: f64 = rec.segments.iter().map(|s| s.1).sum();
    assert!((total - recorded).abs() < 0.1, "{total} s listed of {recorded} s recorded:\n{text}");
    assert!(durations.iter().all(|d| *d <= 4.0 + 1e-6), "cut at 1 s keyframes: at most 4 s:\n{text}");
    let first_pdt = text.lines().find_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:")).unwrap();
    assert_eq!(first_pdt, rec.start, "the first segment starts at the recording's start");
    // Every frame of the three files, within a frame or two.
    let (mut fv, mut fa) = (0, 0);
    for f in recording_files(rec) {
        let (v, a) = count_frames(f.to_str().unwrap());
        fv += v;
        fa += a;
    }
    let (v, a) = count_frames(&url);
    assert!(v.abs_diff(fv) <= 2 && a.abs_diff(fa) <= 2, "played {v}/{a} of {fv}/{fa} frames");
    // A window from 5 s to 15 s: ten seconds.
    let url = format!("http://{}/{}/index.m3u8?start={}&end={}", server.http, rec.path, rec.at(5.0), rec.at(15.0));
    let text = http_get(&url, "").await.text();
    let total: f64 = check_playlist(&text).iter().sum();
    assert!((total - 10.0).abs() < 0.05, "{total} s:\n{text}");
    let (v, _) = count_frames(&url);
    assert!(v.abs_diff(250) <= 2, "10 s of 25 fps: {v}");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", &url])
        .output()
        .unwrap();
    let d: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!((d - 10.0).abs() < 0.2, "ffprobe's duration of the window: {d}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ffprobe_reads_a_vod_file() {
    let rec = recorded_whole().await;
    let server = server_for(rec).await;
    let hevc = playback::ffmpeg_make(
        "hls_hevc.mp4",
        &["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-c:v", "libx265", "-tag:v", "hvc1", "-g", "25"]
            .into_iter()
            .chain(["-x265-params", "log-level=error", "-t", "10"])
            .collect::<Vec<_>>(),
    );
    let audio = playback::ffmpeg_make(
        "hls_audio.mp4",
        &["-f", "lavfi", "-i", "sine=sample_rate=48000", "-c:a", "aac", "-t", "10"],
    );
    let files = [
        ("hls_plain.mp4", clip_file("hls_plain.mp4", 10, &[])),
        ("hls_frag.mp4", clip_file("hls_frag.mp4", 10, &["-movflags", "frag_keyframe+empty_moov"])),
        ("hls_hevc.mp4", hevc),
        ("hls_audio.mp4", audio),
    ];
    for (name, file) in files {
        let url = format!("http://{}/vod/{name}/index.m3u8", server.http);
        let r = http_get(&url, "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        let total: f64 = check_playlist(&text).iter().sum();
        assert!((total - 10.0).abs() < 0.1, "{name}: {total} s\n{text}");
        assert!(!text.contains("PROGRAM-DATE-TIME"), "a file has no clock");
        // Every frame; the file's edit list drops its first (priming) AAC frame when ffprobe
        // reads the file, and edit lists are not carried to HLS: one audio frame more there.
        let ((v, a), (fv, fa)) = (count_frames(&url), count_frames(file.to_str().unwrap()));
        assert!(v == fv && (fa..=fa + 1).contains(&a), "{name}: {v}/{a} of {fv}/{fa} frames");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_are_refused_and_nothing_breaks() {
    let rec = recorded_whole().await;
    let server = server_for(rec).await;
    let base = format!("http://{}", server.http);
    let start_us = rec.start_us;
    let plus_as_space = rec.start.replace('Z', "%2000:00");
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("/{}/index.m3u8?start=yesterday", rec.path), 400, "start"),
        (format!("/{}/index.m3u8?start={plus_as_space}", rec.path), 400, "%2B"),
        (format!("/{}/index.m3u8?start={}&end={}", rec.path, rec.at(5.0), rec.at(1.0)), 400, "end"),
        (
            format!("/{}/index.m3u8?start={}&end={}", rec.path, rec.start, format_us(start_us + 90_000_000_000)),
            400,
            "24 h",
        ),
        (format!("/cams/nobody/index.m3u8?start={}", rec.start), 404, ""),
        (format!("/{}/index.m3u8?start={}", rec.path, format_us(rec.end_us + 3_600_000_000)), 404, ""),
        (format!("/{}/hls/{}_{}.m4s", rec.path, start_us + 4_000_000, start_us), 400, "not after"),
        (format!("/{}/hls/{}_{}.m4s", rec.path, start_us, start_us + 3_600_000_000), 400, "longer"),
        (format!("/{}/hls/99999999999999999999_99999999999999999999.m4s", rec.path), 400, "time"),
        (format!("/{}/hls/1_2.m4s", rec.path), 404, ""),
        ("/vod/..%2f..%2fetc%2fpasswd.mp4/index.m3u8".into(), 404, ""),
        ("/vod/../recordings-whole/x.mp4/index.m3u8".into(), 404, ""),
        ("/vod/missing.mp4/index.m3u8".into(), 404, ""),
        ("/vod/missing.mp4/hls/0_1000000.m4s".into(), 404, ""),
    ];
    for (path, status, says) in &cases {
        let r = http_get(&format!("{base}{path}"), "").await;
        assert_eq!(r.status, *status, "{path}: {}", r.text());
        assert!(r.text().contains(says), "{path}: {}", r.text());
    }
    // Still serving: a segment of the playlist, with its headers.
    let text = http_get(&format!("{base}/{}/index.m3u8?start={}", rec.path, rec.start), "").await.text();
    let seg = text.lines().find(|l| l.ends_with(".m4s")).unwrap();
    let r = http_get(&format!("{base}/{}/{seg}", rec.path), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("video/iso.segment"));
    assert_eq!(&r.body[4..8], b"moof");
    // A live path without `start` is not playback: the live HLS answers it.
    let r = http_get(&format!("{base}/{}/index.m3u8", rec.path), "").await;
    assert_eq!(r.status, 404);
    assert!(!r.text().contains("recording"), "{}", r.text());
}

// ---- hls.js in headless Chromium ----

/// Plays the VOD playlist, seeks to its middle once playing, and reports where it got.
const PAGE: &str = r#"<!doctype html>
<html><body>
<video id="v" muted autoplay playsinline></video>
<script src="/lib.js"></script>
<script>
const report = (r) => fetch('/result', { method: 'POST', body: JSON.stringify(r) });
const errors = [];
const v = document.getElementById('v');
if (!Hls.isSupported()) { report({ supported: false, errors }); }
const hls = new Hls();
hls.on(Hls.Events.ERROR, (_, d) => errors.push(d.type + ':' + d.details + (d.fatal ? ':fatal' : '')));
hls.loadSource('SOURCE');
hls.attachMedia(v);
hls.on(Hls.Events.MANIFEST_PARSED, () => v.play().catch(e => errors.push('play:' + e)));
let target = null;
let seeked = false;
v.addEventListener('seeked', () => { seeked = true; });
const started = Date.now();
const tick = setInterval(() => {
  const elapsed = (Date.now() - started) / 1000;
  if (target === null && v.currentTime > 0.5 && v.duration > 0) {
    target = v.duration / 2;
    v.currentTime = target;
  }
  if ((target !== null && seeked && v.currentTime > target + 2) || elapsed > 60) {
    clearInterval(tick);
    report({ supported: true, duration: v.duration, target, seeked, currentTime: v.currentTime, errors,
             width: v.videoWidth });
  }
}, 200);
</script>
</body></html>"#;

async fn plays_and_seeks(source: String, tag: &str, duration: f64) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}/", listener.local_addr().unwrap());
    let result =
        tokio::spawn(serve_page(listener, PAGE.replace("SOURCE", &source), Some(npm_file("hls.js/dist/hls.min.js"))));
    let r = run_chromium(&page_url, tag, result, Duration::from_secs(120)).await;
    assert_eq!(r["supported"], true, "{r}");
    let fatal: Vec<&serde_json::Value> =
        r["errors"].as_array().unwrap().iter().filter(|e| e.as_str().unwrap_or("").ends_with(":fatal")).collect();
    assert!(fatal.is_empty(), "hls.js fatal errors: {r}");
    let d = r["duration"].as_f64().unwrap_or(0.0);
    assert!((d - duration).abs() < 0.5, "hls.js sees the whole duration: {r}");
    let target = r["target"].as_f64().unwrap_or_else(|| panic!("never played: {r}"));
    assert_eq!(r["seeked"], true, "{r}");
    let now = r["currentTime"].as_f64().unwrap();
    assert!(now > target + 2.0, "plays on after seeking to the middle: {r}");
    assert_eq!(r["width"], 320);
}

#[tokio::test(flavor = "multi_thread")]
async fn hls_js_plays_and_seeks_a_recording_in_chromium() {
    let rec = recorded_whole().await;
    let server = server_for(rec).await;
    let recorded: f64 = rec.segments.iter().map(|s| s.1).sum();
    plays_and_seeks(format!("http://{}/{}/index.m3u8?start={}", server.http, rec.path, rec.start), "rec", recorded)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hls_js_plays_and_seeks_a_file_in_chromium() {
    let rec = recorded_whole().await;
    let server = server_for(rec).await;
    clip_file("hls_browser.mp4", 10, &[]);
    plays_and_seeks(format!("http://{}/vod/hls_browser.mp4/index.m3u8", server.http), "file", 10.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_path_being_recorded_lists_what_is_recorded_so_far() {
    let dir = media_dir().join("recordings-hls-live");
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::with_config(&format!(
        "[record]\ndir = \"{}\"\npart_duration_ms = 1000\n[paths.\"cams/*\"]\nrecord = true\n",
        dir.display()
    ));
    let _publisher = common::publish(common::test_flv(), &server.rtmp_url("cams/live"));
    let api = format!("http://{}/api/v1/recordings/cams/live", server.http);
    let deadline = Instant::now() + Duration::from_secs(60);
    let start = loop {
        let v: serde_json::Value = serde_json::from_slice(&http_get(&api, "").await.body).unwrap_or_default();
        if let Some(s) = v["segments"].as_array().and_then(|s| s.first())
            && s["duration"].as_f64().unwrap_or(0.0) >= 2.0
        {
            break s["start"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "nothing recorded: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let url = format!("http://{}/cams/live/index.m3u8?start={start}", server.http);
    let listed = || async {
        let r = http_get(&url, "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("cache-control").as_deref(), Some("no-cache"), "it grows: not cached");
        check_playlist(&r.text()).iter().sum::<f64>()
    };
    let first = listed().await;
    assert!(first >= 1.0, "what is recorded so far: {first} s");
    // Later, more.
    let deadline = Instant::now() + Duration::from_secs(60);
    while listed().await < first + 2.0 {
        assert!(Instant::now() < deadline, "the playlist never grew past {first} s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A GOP longer than MAX_SEGMENT_US (30 s) is cut without a keyframe: such a playlist does
/// not claim EXT-X-INDEPENDENT-SEGMENTS (review finding: it always did), and still plays
/// every frame; a file of short GOPs does claim it.
#[tokio::test(flavor = "multi_thread")]
async fn a_gop_longer_than_a_segment_is_not_claimed_independent() {
    let rec = recorded_whole().await;
    let server = server_for(rec).await;
    let long_gop = playback::ffmpeg_make(
        "hls_long_gop.mp4",
        &["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-c:v", "libx264", "-preset", "ultrafast"]
            .into_iter()
            .chain(["-x264-params", "keyint=1000:min-keyint=1000:scenecut=0", "-t", "35"])
            .collect::<Vec<_>>(),
    );
    let short_gop = clip_file("hls_plain.mp4", 10, &[]);
    for (name, file, independent) in [("hls_long_gop.mp4", long_gop, false), ("hls_plain.mp4", short_gop, true)] {
        let url = format!("http://{}/vod/{name}/index.m3u8", server.http);
        let r = http_get(&url, "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        check_playlist(&text);
        assert_eq!(text.contains("#EXT-X-INDEPENDENT-SEGMENTS"), independent, "{name}\n{text}");
        if !independent {
            assert!(text.matches("#EXTINF").count() >= 2, "cut inside the GOP:\n{text}");
        }
        let ((v, _), (fv, _)) = (count_frames(&url), count_frames(file.to_str().unwrap()));
        assert_eq!(v, fv, "{name}: every frame");
    }
}
