//! Progressive MP4 over HTTP (issue 16): `/PATH/recording.mp4?start=T&end=T` built from the
//! recording's three files without reading media data, and `/vod/NAME.mp4`, both with byte
//! ranges, checked with ffmpeg/ffprobe and byte for byte.

mod common;
#[path = "common/page.rs"]
mod page;
#[path = "common/playback.rs"]
mod playback;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use page::{chromium, run_chromium, serve_page};
use playback::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw request (`METHOD TARGET`, the target sent as given: no normalization of `..`).
async fn request(addr: std::net::SocketAddr, method: &str, target: &str, extra: &str) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut all)).await.expect("response in time").unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let headers = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    HttpResponse { status, headers, body: all[split + 4..].to_vec() }
}

/// The recording's files, oldest first.
fn recording_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "mp4") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// ffprobe's decoded frame counts (video, audio) and the stream durations of `input`.
fn count_frames(input: &str) -> (u64, u64, f64) {
    require("ffprobe");
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,nb_read_frames,duration",
            "-of",
            "json",
        ])
        .arg(input)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (mut video, mut audio, mut duration) = (0, 0, 0f64);
    for s in v["streams"].as_array().unwrap() {
        let n: u64 = s["nb_read_frames"].as_str().unwrap_or("0").parse().unwrap();
        let d: f64 = s["duration"].as_str().unwrap_or("0").parse().unwrap_or(0.0);
        match s["codec_type"].as_str() {
            Some("video") => video += n,
            Some("audio") => audio += n,
            _ => {}
        }
        duration = duration.max(d);
    }
    (video, audio, duration)
}

/// `ffmpeg -v error -i INPUT -f null -`: its error output (empty when it decoded cleanly).
fn decode_errors(input: &str) -> String {
    let out =
        Command::new("ffmpeg").args(["-v", "error", "-nostdin", "-i", input, "-f", "null", "-"]).output().unwrap();
    assert!(out.status.success(), "ffmpeg failed on {input}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first video packet's flags and pts (ffprobe).
fn first_video_packet(input: &str) -> (String, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=pts_time,flags",
            "-read_intervals",
            "%+#1",
        ])
        .args(["-of", "json", input])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["packets"][0];
    (p["flags"].as_str().unwrap_or("").to_owned(), p["pts_time"].as_str().unwrap_or("-1").parse().unwrap())
}

/// The shared recording. Its fixture publishes faster than real time, and on a loaded machine
/// the recorder can fall behind and skip a GOP, which the fixture refuses: it is made again
/// then (a failed `OnceCell` initialisation leaves the cell empty).
async fn recording() -> &'static Recorded {
    for attempt in 1..=3 {
        match tokio::spawn(recorded()).await {
            Ok(r) => return r,
            Err(e) => eprintln!("recording fixture, attempt {attempt}: {e}"),
        }
    }
    panic!("the recording fixture failed three times");
}

/// A server playing the recording back, once its index has opened (it opens in the
/// background after a start; until then recording.mp4 answers 503).
async fn playback_server(rec: &Recorded) -> Server {
    let server = Server::with_config(&rec.config(""));
    let url = recording_url(&server, rec, &format!("start={}&duration=1", rec.start));
    for _ in 0..300 {
        let r = http_get(&url, "Range: bytes=0-0\r\n").await;
        if r.status != 503 {
            assert_eq!(r.status, 206, "{}", r.text());
            return server;
        }
        assert_eq!(r.header("retry-after").as_deref(), Some("1"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the recordings index never opened");
}

fn recording_url(server: &Server, rec: &Recorded, query: &str) -> String {
    format!("http://{}/{}/recording.mp4?{query}", server.http, rec.path)
}

#[tokio::test(flavor = "multi_thread")]
async fn ffmpeg_decodes_the_whole_recording_with_every_frame() {
    let rec = recording().await;
    let files = recording_files(&rec.dir);
    assert!(files.len() >= 3, "{files:?}");
    let (mut video, mut audio) = (0, 0);
    for f in &files {
        let (v, a, _) = count_frames(f.to_str().unwrap());
        video += v;
        audio += a;
    }
    assert!(video > 0 && audio > 0, "{video} video and {audio} audio frames in the files");
    let server = playback_server(rec).await;
    let url = recording_url(&server, rec, &format!("start={}&end={}", rec.start, rec.end));
    let (got_video, got_audio, duration) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || count_frames(&url)
    })
    .await
    .unwrap();
    assert_eq!((got_video, got_audio), (video, audio), "frames of recording.mp4 against the files'");
    assert!((duration - f64::from(CLIP_SECONDS)).abs() < 0.5, "duration {duration}");
    let errors = tokio::task::spawn_blocking(move || decode_errors(&url)).await.unwrap();
    assert!(errors.is_empty(), "ffmpeg reported: {errors}");
}

/// The packets of the recording files on the wall clock: (video, UTC µs of its decode time,
/// keyframe), from ffprobe and the files' names (their UTC start).
fn recorded_packets(dir: &Path) -> Vec<(bool, u64, bool)> {
    let mut out = Vec::new();
    for f in recording_files(dir) {
        let stem = f.file_stem().unwrap().to_str().unwrap();
        // 2026-11-30T03-20-47.164Z: the time with '-' for ':'.
        let (day, time) = stem.split_once('T').unwrap();
        let start = parse_us(&format!("{day}T{}", time.replacen('-', ":", 2)));
        let csv = Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", "packet=codec_type,dts_time,flags", "-of", "csv=p=0"])
            .arg(&f)
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&csv.stdout).lines() {
            let v: Vec<&str> = line.split(',').collect();
            let dts: f64 = v[1].parse().unwrap();
            out.push((v[0] == "video", start + (dts * 1e6).round() as u64, v[2].starts_with('K')));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_starts_at_the_keyframe_before_it_and_ends_at_its_end() {
    let rec = recording().await;
    let server = playback_server(rec).await;
    // 12.5 s in: the keyframe at or before it (about 12 s: a GOP a second), to 21.3 s.
    let (start, end) = (rec.start_us + 12_500_000, rec.start_us + 21_300_000);
    let url = recording_url(&server, rec, &format!("start={}&end={}", format_us(start), format_us(end)));
    let by_duration = recording_url(&server, rec, &format!("start={}&duration=8.8", format_us(start)));
    let (dir, probe) = (rec.dir.clone(), url.clone());
    let (packets, (video, audio, duration), (flags, pts)) =
        tokio::task::spawn_blocking(move || (recorded_packets(&dir), count_frames(&probe), first_video_packet(&probe)))
            .await
            .unwrap();
    // What the files hold in that window (times from file names: 1 ms).
    let key = packets.iter().filter(|p| p.0 && p.2 && p.1 <= start + 1000).map(|p| p.1).max().unwrap();
    assert!(start - key < 1_100_000, "a keyframe a second: {key} for {start}");
    let in_window =
        |video: bool| packets.iter().filter(|p| p.0 == video && p.1 + 1000 >= key && p.1 < end).count() as u64;
    let expected = (end - key) as f64 / 1e6;
    assert!((duration - expected).abs() < 0.15, "from the keyframe to the end, {expected} s: {duration}");
    assert!(video.abs_diff(in_window(true)) <= 1, "{video} video frames, the files hold {}", in_window(true));
    assert!(audio.abs_diff(in_window(false)) <= 2, "{audio} audio frames, the files hold {}", in_window(false));
    assert!(flags.starts_with('K'), "the first video packet is a keyframe: {flags}");
    assert!(pts < 0.2, "and it is shown first: {pts}");
    let errors = tokio::task::spawn_blocking({
        let url = url.clone();
        move || decode_errors(&url)
    })
    .await
    .unwrap();
    assert!(errors.is_empty(), "ffmpeg reported: {errors}");
    // `duration=` names the same window: the same bytes.
    let (a, b) = (http_get(&url, "").await, http_get(&by_duration, "").await);
    assert_eq!((a.status, b.status), (200, 200));
    assert!(a.body == b.body, "end= and duration= differ");
}

/// Where `needle` is in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Offset of the data of the first mdat of a recording file.
fn first_mdat_data(file: &[u8]) -> usize {
    find(file, b"mdat").unwrap() + 4
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_are_the_bytes_of_the_whole_file() {
    let rec = recording().await;
    let server = playback_server(rec).await;
    let url = recording_url(&server, rec, &format!("start={}&end={}", rec.start, rec.end));
    let whole = http_get(&url, "").await;
    assert_eq!(whole.status, 200, "{}", whole.text());
    let len = whole.body.len();
    assert_eq!(whole.header("content-length"), Some(len.to_string()));
    assert_eq!(whole.header("accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(whole.header("content-type").as_deref(), Some("video/mp4"));
    let body = &whole.body;
    // moov first, then mdat.
    assert_eq!(&body[4..8], b"ftyp");
    let moov = find(body, b"moov").unwrap();
    let mdat = find(body, b"mdat").unwrap();
    assert!(moov < mdat, "moov before mdat");
    // Where the second and third files' data start in the response: their first media bytes.
    let files = recording_files(&rec.dir);
    let mut boundaries = Vec::new();
    for f in &files[1..] {
        let data = std::fs::read(f).unwrap();
        let at = first_mdat_data(&data);
        let at = find(body, &data[at..at + 64]).unwrap_or_else(|| panic!("{} not in the response", f.display()));
        assert!(at > mdat);
        boundaries.push(at);
    }
    let mut ranges: Vec<(String, usize, usize)> = vec![
        ("bytes=0-99".into(), 0, 99),
        (format!("bytes={}-{}", mdat - 100, mdat + 200), mdat - 100, mdat + 200),
        (format!("bytes={}-{}", mdat + 12, mdat + 12), mdat + 12, mdat + 12),
        ("bytes=-500".into(), len - 500, len - 1),
        (format!("bytes={}-", len / 2), len / 2, len - 1),
        (format!("bytes={}-{}", len - 10, len + 1000), len - 10, len - 1),
    ];
    for b in &boundaries {
        ranges.push((format!("bytes={}-{}", b - 70_000, b + 70_000), b - 70_000, b + 70_000));
    }
    for (header, from, to) in &ranges {
        let r = http_get(&url, &format!("Range: {header}\r\n")).await;
        assert_eq!(r.status, 206, "{header}");
        assert_eq!(r.header("content-range"), Some(format!("bytes {from}-{to}/{len}")), "{header}");
        assert_eq!(r.header("content-length"), Some((to - from + 1).to_string()), "{header}");
        assert!(r.body == body[*from..=*to], "{header}: other bytes than the whole file's");
    }
    // A download resumes with If-Range: the rest while the ETag holds, the whole otherwise.
    let etag = whole.header("etag").expect("an ETag");
    let r = http_get(&url, &format!("Range: bytes=1000-\r\nIf-Range: {etag}\r\n")).await;
    assert!(r.status == 206 && r.body == body[1000..]);
    let r = http_get(&url, "Range: bytes=1000-\r\nIf-Range: \"other\"\r\n").await;
    assert!(r.status == 200 && r.body == *body);
    let r = http_get(&url, &format!("Range: bytes={len}-\r\n")).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some(format!("bytes */{len}")));
    let path = format!("/{}/recording.mp4?start={}&end={}", rec.path, rec.start, rec.end);
    let head = request(server.http, "HEAD", &path, "").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(len.to_string()));
    assert_eq!(head.header("accept-ranges").as_deref(), Some("bytes"));
    assert!(head.body.is_empty());
    let head = request(server.http, "HEAD", &path, "Range: bytes=10-19\r\n").await;
    assert_eq!(head.status, 206);
    assert_eq!(head.header("content-range"), Some(format!("bytes 10-19/{len}")));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_recording_requests() {
    let rec = recording().await;
    let server = playback_server(rec).await;
    let base = format!("http://{}", server.http);
    let before = format_us(rec.start_us - 3_600_000_000);
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("/nobody/here/recording.mp4?start={}&end={}", rec.start, rec.end), 404, ""),
        (format!("/{}/recording.mp4?start={before}&duration=60", rec.path), 404, "no recordings"),
        (format!("/{}/recording.mp4?start=yesterday", rec.path), 400, "start"),
        (format!("/{}/recording.mp4?start={}&end={}", rec.path, rec.end, rec.start), 400, "end"),
        (format!("/{}/recording.mp4", rec.path), 400, "start"),
        (format!("/{}/recording.mp4?start={}&duration=86401", rec.path, rec.start), 400, "at most"),
        (format!("/{}/recording.mp4?start={}&duration=abc", rec.path, rec.start), 400, "duration"),
        (
            format!("/{}/recording.mp4?start={}&end={}", rec.path, rec.start, format_us(rec.start_us + 86_401_000_000)),
            400,
            "at most",
        ),
        (format!("/{}/recording.mp4?start=2026-01-01T00:00:00 01:00", rec.path), 400, "space"),
    ];
    for (path, status, says) in cases {
        let r = http_get(&format!("{base}{}", path.replace(' ', "%20")), "").await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(r.text().contains(says), "{path}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vod_files_with_ranges_head_and_no_way_out() {
    let faststart = clip_file("faststart.mp4", 4, &["-movflags", "+faststart"]);
    let moov_last = clip_file("moov_last.mp4", 4, &[]);
    let fragmented = clip_file("fragmented.mp4", 4, &["-movflags", "frag_keyframe+empty_moov"]);
    let base = media_dir().join("vod-mp4-test");
    let dir = base.join("media");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::copy(&faststart, dir.join("faststart.mp4")).unwrap();
    std::fs::copy(&moov_last, dir.join("sub/moov_last.mp4")).unwrap();
    std::fs::copy(&fragmented, dir.join("fragmented.mp4")).unwrap();
    std::fs::write(base.join("secret.mp4"), b"not for you").unwrap();
    let _ = std::fs::remove_file(dir.join("link.mp4"));
    std::os::unix::fs::symlink(base.join("secret.mp4"), dir.join("link.mp4")).unwrap();
    let server = Server::with_config(&vod_dir_config(&dir));
    let url = |name: &str| format!("http://{}/vod/{name}", server.http);
    for (name, file) in
        [("faststart.mp4", &faststart), ("sub/moov_last.mp4", &moov_last), ("fragmented.mp4", &fragmented)]
    {
        let whole = http_get(&url(name), "").await;
        assert_eq!(whole.status, 200, "{name}");
        // A file whose moov comes first is served as it is; the others laid out moov first
        // (what a <video> element scrubs), whose bytes the ranges below must match.
        let top: Vec<String> = top_level_boxes(&whole.body);
        let moov = top.iter().position(|b| b == "moov");
        let mdat = top.iter().position(|b| b == "mdat");
        assert!(moov.is_some() && moov < mdat && !top.contains(&"moof".to_owned()), "{name}: {top:?}");
        let bytes = if name == "faststart.mp4" {
            let bytes = std::fs::read(file).unwrap();
            assert!(whole.body == bytes, "{name}: the file as it is");
            bytes
        } else {
            assert!(whole.body != std::fs::read(file).unwrap(), "{name}: laid out again");
            whole.body.clone()
        };
        let len = bytes.len();
        assert_eq!(whole.header("accept-ranges").as_deref(), Some("bytes"));
        for (from, to) in [(0, 99), (len / 3, len / 3 + 70_000), (len - 1, len - 1)] {
            let to = to.min(len - 1);
            let r = http_get(&url(name), &format!("Range: bytes={from}-{to}\r\n")).await;
            assert_eq!(r.status, 206);
            assert_eq!(r.header("content-range"), Some(format!("bytes {from}-{to}/{len}")));
            assert!(r.body == bytes[from..=to], "{name} {from}-{to}");
        }
        let etag = whole.header("etag").expect("an ETag");
        let r = http_get(&url(name), &format!("Range: bytes=-10\r\nIf-Range: {etag}\r\n")).await;
        assert!(r.status == 206 && r.body == bytes[len - 10..]);
        let r = http_get(&url(name), "Range: bytes=-10\r\nIf-Range: Wed, 21 Oct 2015 07:28:00 GMT\r\n").await;
        assert!(r.status == 200 && r.body == bytes, "a date is no validator here: the whole file");
        let r = http_get(&url(name), "Range: bytes=-10\r\n").await;
        assert!(r.status == 206 && r.body == bytes[len - 10..]);
        let r = http_get(&url(name), &format!("Range: bytes={}-\r\n", len + 5)).await;
        assert_eq!(r.status, 416);
        assert_eq!(r.header("content-range"), Some(format!("bytes */{len}")));
        let head = request(server.http, "HEAD", &format!("/vod/{name}"), "").await;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-length"), Some(len.to_string()));
        assert!(head.body.is_empty());
        let u = url(name);
        let (v, _, _) = tokio::task::spawn_blocking(move || count_frames(&u)).await.unwrap();
        assert_eq!(v, 4 * u64::from(CLIP_FPS), "{name} decodes over HTTP");
    }
    for bad in [
        "/vod/../secret.mp4",
        "/vod/%2e%2e/secret.mp4",
        "/vod/sub/%2e%2e/%2e%2e/secret.mp4",
        "/vod/..%2fsecret.mp4",
        "/vod/link.mp4",
        "/vod/missing.mp4",
        "/vod/%2fetc%2fpasswd.mp4",
    ] {
        let r = request(server.http, "GET", bad, "").await;
        assert_eq!(r.status, 404, "{bad}");
        assert!(!r.text().contains("not for you"), "{bad}");
    }
}

/// The types of a file's top-level boxes.
fn top_level_boxes(data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= data.len() {
        let size = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let size = if size == 1 && at + 16 <= data.len() {
            u64::from_be_bytes(data[at + 8..at + 16].try_into().unwrap()) as usize
        } else {
            size
        };
        out.push(String::from_utf8_lossy(&data[at + 4..at + 8]).into_owned());
        if size < 8 {
            break;
        }
        at += size;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Headless Chromium (common/page.rs)

/// A `<video>` element plays SOURCE, seeks to the middle once it knows the duration, plays on
/// and reports whether currentTime advanced past the seek point.
const VIDEO_PAGE: &str = r#"<!doctype html>
<html><body>
<video id="v" muted playsinline preload="metadata" src="SOURCE"></video>
<script>
const report = (r) => fetch('/result', { method: 'POST', body: JSON.stringify(r) });
const errors = [];
const v = document.getElementById('v');
v.addEventListener('error', () => errors.push('error:' + (v.error ? v.error.code + ' ' + v.error.message : '?')));
let seekTo = null, seeked = null, done = false;
v.addEventListener('loadedmetadata', () => { seekTo = v.duration / 2; v.currentTime = seekTo; });
v.addEventListener('seeked', () => {
  if (seeked === null) { seeked = v.currentTime; v.play().catch(e => errors.push('play:' + e)); }
});
const started = Date.now();
const tick = setInterval(() => {
  const elapsed = (Date.now() - started) / 1000;
  if ((seeked !== null && v.currentTime - seeked > 3) || errors.length || elapsed > 60) {
    clearInterval(tick);
    report({ duration: v.duration, seekTo, seeked, currentTime: v.currentTime, errors, width: v.videoWidth });
  }
}, 250);
</script>
</body></html>"#;

/// What passed through [`proxy`]: each request's line and Range header, and the bytes the
/// server sent back.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, Option<String>)>,
    bytes_down: u64,
}

/// A TCP proxy in front of the server that notes each request head (the browser's Range
/// requests) and counts the bytes coming back.
async fn proxy(
    listener: tokio::net::TcpListener,
    upstream: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else { return };
        let seen = seen.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else { return };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let up_seen = seen.clone();
            let up = tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    // GETs have no body: every head ends at an empty line.
                    while let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..i]).into_owned();
                        pending.drain(..i + 4);
                        let line = head.lines().next().unwrap_or("").to_owned();
                        let range = head.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("range").then(|| v.trim().to_owned())
                        });
                        up_seen.lock().unwrap().requests.push((line, range));
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                seen.lock().unwrap().bytes_down += n as u64;
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            up.abort();
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_seeks_to_the_middle_of_three_files_and_plays_on_with_ranges() {
    chromium();
    let rec = recording().await;
    let server = playback_server(rec).await;
    let path = format!("/{}/recording.mp4?start={}&end={}", rec.path, rec.start, rec.end);
    let len: u64 = request(server.http, "HEAD", &path, "").await.header("content-length").unwrap().parse().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy_listener.local_addr().unwrap();
    tokio::spawn(proxy(proxy_listener, server.http, seen.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}/", listener.local_addr().unwrap());
    let result =
        tokio::spawn(serve_page(listener, VIDEO_PAGE.replace("SOURCE", &format!("http://{proxy_addr}{path}")), None));
    let r = run_chromium(&page_url, "mp4", result, Duration::from_secs(120)).await;
    let seen = seen.lock().unwrap();
    let log: Vec<String> =
        seen.requests.iter().map(|(l, r)| format!("{l} [{}]", r.as_deref().unwrap_or("no range"))).collect();
    eprintln!("chromium: {r}\nrequests: {log:#?}\n{} of {len} bytes down", seen.bytes_down);
    assert!(r["errors"].as_array().unwrap().is_empty(), "video errors: {r}");
    let duration = r["duration"].as_f64().unwrap();
    assert!((duration - (rec.end_us - rec.start_us) as f64 / 1e6).abs() < 1.0, "duration {r}");
    let seeked = r["seeked"].as_f64().unwrap_or_else(|| panic!("never seeked: {r}"));
    assert!((seeked - duration / 2.0).abs() < 1.0, "seeked to the middle: {r}");
    assert!(r["currentTime"].as_f64().unwrap() - seeked > 3.0, "played on past the seek point: {r}");
    assert_eq!(r["width"], 320);
    // Only byte ranges: every request for the file carries one, and one starts past the
    // middle's neighbourhood of the file, where the seek led.
    let media: Vec<&(String, Option<String>)> =
        seen.requests.iter().filter(|(l, _)| l.contains("recording.mp4")).collect();
    assert!(!media.is_empty());
    assert!(media.iter().all(|(_, r)| r.as_deref().is_some_and(|r| r.starts_with("bytes="))), "{log:#?}");
    let starts: Vec<u64> = media
        .iter()
        .filter_map(|(_, r)| r.as_deref()?.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
        .collect();
    assert!(starts.iter().any(|s| *s > len / 4), "a range from near the seek point: {log:#?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// Damaged files, as the index still lists them: the second file cut short (a disk that
/// filled up, a copy interrupted), every moof of the third claiming 2^31 samples. A range
/// ends at the damage and decodes cleanly up to it; a range in the hostile file is a 500; the
/// server reads nothing it cannot pay for and stays up.
#[tokio::test(flavor = "multi_thread")]
async fn damaged_files_end_the_range_cleanly() {
    let rec = recording().await;
    let dir = media_dir().join("damaged-recordings");
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&rec.dir, &dir);
    let files = recording_files(&dir);
    let second = std::fs::OpenOptions::new().write(true).open(&files[1]).unwrap();
    let len = second.metadata().unwrap().len();
    second.set_len(len / 2).unwrap();
    let mut third = std::fs::read(&files[2]).unwrap();
    let mut at = 0;
    while let Some(i) = find(&third[at..], b"trun") {
        let count = at + i + 8;
        third[count..count + 4].copy_from_slice(&0x8000_0000u32.to_be_bytes());
        at = count;
    }
    std::fs::write(&files[2], &third).unwrap();
    let damaged = Recorded { dir: dir.clone(), ..rec.clone() };
    let mut server = playback_server(&damaged).await;
    let url = recording_url(&server, rec, &format!("start={}&end={}", rec.start, rec.end));
    let r = http_get(&url, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string()));
    let (video, _, duration) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || count_frames(&url)
    })
    .await
    .unwrap();
    assert!(duration > 12.0 && duration < 18.0, "up to the cut in the second file: {duration}");
    assert!(video > 0);
    let errors = tokio::task::spawn_blocking(move || decode_errors(&url)).await.unwrap();
    assert!(errors.is_empty(), "ffmpeg reported: {errors}");
    let hostile = recording_url(&server, rec, &format!("start={}&duration=5", rec.at(22.0)));
    let r = http_get(&hostile, "").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(server.alive());
}

/// Stitching: a gap between two recordings is closed up (the index moved the third file a
/// minute later: the MP4 still lasts the recorded 30 s, every frame in it), and a file whose
/// codec parameters differ from the first file's ends the range before it (the third file's
/// H.264 level changed in its avcC).
#[tokio::test(flavor = "multi_thread")]
async fn gaps_are_closed_up_and_a_codec_change_ends_the_range() {
    let rec = recording().await;
    let (all_video, all_audio, _) = {
        let dir = rec.dir.clone();
        tokio::task::spawn_blocking(move || {
            recording_files(&dir).iter().fold((0, 0, 0.0), |(v, a, _), f| {
                let (fv, fa, _) = count_frames(f.to_str().unwrap());
                (v + fv, a + fa, 0.0)
            })
        })
        .await
        .unwrap()
    };
    // A minute's gap before the third file.
    const GAP_US: i64 = 60_000_000;
    let gap_dir = media_dir().join("gap-recordings");
    let _ = std::fs::remove_dir_all(&gap_dir);
    copy_dir(&rec.dir, &gap_dir);
    let third_start = {
        let db = rusqlite::Connection::open(gap_dir.join("index+ferrocast.db")).unwrap();
        let starts: Vec<i64> = db
            .prepare("SELECT start_us FROM segments ORDER BY start_us")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(starts.len() >= 3);
        db.execute("UPDATE segments SET start_us = start_us + ?1 WHERE start_us >= ?2", [GAP_US, starts[2]]).unwrap();
        starts[2]
    };
    let gapped = Recorded { dir: gap_dir, ..rec.clone() };
    let server = playback_server(&gapped).await;
    let url =
        recording_url(&server, rec, &format!("start={}&end={}", rec.start, format_us(rec.end_us + GAP_US as u64)));
    let (video, audio, duration) = tokio::task::spawn_blocking(move || count_frames(&url)).await.unwrap();
    assert_eq!((video, audio), (all_video, all_audio), "every frame, across the gap");
    let recorded = (rec.end_us - rec.start_us) as f64 / 1e6;
    assert!((duration - recorded).abs() < 0.5, "the gap closed up: {duration} s for {recorded} s recorded");
    drop(server);
    // Other codec parameters in the third file.
    let change_dir = media_dir().join("change-recordings");
    let _ = std::fs::remove_dir_all(&change_dir);
    copy_dir(&rec.dir, &change_dir);
    let third = recording_files(&change_dir)[2].clone();
    let mut bytes = std::fs::read(&third).unwrap();
    let level = find(&bytes, b"avcC").unwrap() + 4 + 3;
    bytes[level] = if bytes[level] == 0x1f { 0x1e } else { 0x1f };
    std::fs::write(&third, bytes).unwrap();
    let changed = Recorded { dir: change_dir, ..rec.clone() };
    let server = playback_server(&changed).await;
    let url = recording_url(&server, rec, &format!("start={}&end={}", rec.start, rec.end));
    let (_, _, duration) = tokio::task::spawn_blocking(move || count_frames(&url)).await.unwrap();
    let before = (third_start as u64 - rec.start_us) as f64 / 1e6;
    assert!((duration - before).abs() < 0.5, "ends before the third file at {before} s: {duration}");
    // The third file alone plays: a range that starts there.
    let url = recording_url(&server, rec, &format!("start={}&end={}", format_us(third_start as u64), rec.end));
    let r = http_get(&url, "Range: bytes=0-0\r\n").await;
    assert_eq!(r.status, 206);
}
