//! Recording, as a user meets it: ffmpeg publishes, the server writes fMP4 segment files that
//! ffmpeg decodes, and the API lists them.

mod common;
#[path = "common/record.rs"]
mod record_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use record_common::{decode_errors, frame_counts, mp4_files, temp_dir};
use serde_json::Value;

fn config(dir: &Path, extra: &str) -> String {
    format!(
        "[record]\ndir = \"{}\"\nsegment_duration_ms = 1500\npart_duration_ms = 500\n{extra}\n[paths.\"rec/**\"]\nrecord = true\n",
        dir.display()
    )
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = http_get(url, "").await;
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

/// The listing of a path once no segment is being written.
async fn settled_listing(server: &Server, path: &str) -> Value {
    let url = format!("http://{}/api/v1/recordings/{path}", server.http);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, v) = get_json(&url).await;
        if status == 200
            && v["segments"].as_array().is_some_and(|s| !s.is_empty() && s.iter().all(|s| s["writing"] == false))
        {
            return v;
        }
        assert!(Instant::now() < deadline, "{path}: no settled listing: {status} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn records_what_ffmpeg_publishes_and_lists_it() {
    let dir = temp_dir("basic");
    let server = Server::with_config(&config(&dir, ""));
    let path = "rec/cam1";
    let mut publisher = publish_args(test_flv(), &server.rtmp_url(path), &[]);
    let status = tokio::task::spawn_blocking(move || publisher.0.wait()).await.unwrap().unwrap();
    assert!(status.success(), "ffmpeg publish failed");
    let listing = settled_listing(&server, path).await;
    let segments = listing["segments"].as_array().unwrap();
    assert!(segments.len() >= 2, "1.5 s segments of a 4 s stream: {listing}");
    let spans = listing["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 1, "one publish, one span: {listing}");
    let files = mp4_files(&dir.join(path));
    assert_eq!(files.len(), segments.len(), "a file per listed segment: {files:?}");
    let (mut video, mut audio) = (0, 0);
    let mut listed_duration = 0.0;
    for (file, seg) in files.iter().zip(segments) {
        assert_eq!(decode_errors(file), "", "{} decodes cleanly", file.display());
        let (v, a) = frame_counts(file);
        video += v;
        audio += a;
        assert_eq!(seg["bytes"].as_u64(), Some(std::fs::metadata(file).unwrap().len()), "listed size");
        listed_duration += seg["duration"].as_f64().unwrap();
        let name = file.file_stem().unwrap().to_str().unwrap().to_owned();
        let start = seg["start"].as_str().unwrap().replace(':', "-");
        assert_eq!(name, start, "files are named by their start");
        check_table(file);
    }
    let (sent_video, sent_audio) = frame_counts(test_flv());
    assert_eq!(video, sent_video, "every video frame recorded");
    assert_eq!(audio, sent_audio, "every audio frame recorded");
    assert!((listed_duration - 4.0).abs() < 0.5, "durations add up to the stream's: {listed_duration}");
    let (status, all) = get_json(&format!("http://{}/api/v1/recordings", server.http)).await;
    assert_eq!(status, 200);
    assert_eq!(all["paths"][0]["path"], path, "{all}");
    // Unknown paths and bad times are errors with a message.
    let (status, v) = get_json(&format!("http://{}/api/v1/recordings/rec/none", server.http)).await;
    assert_eq!((status, v["error"].is_string()), (404, true));
    let (status, v) = get_json(&format!("http://{}/api/v1/recordings/{path}?start=yesterday", server.http)).await;
    assert_eq!((status, v["error"].is_string()), (400, true), "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The table of parts beside a file covers the whole file, part after part, each part with
/// a keyframe starting... at least the first; times rising.
fn check_table(file: &Path) {
    let table = std::fs::read(file.with_extension("idx")).expect("a table of parts beside the file");
    let parts = ferrocast::record::parts::decode(&table).expect("a table");
    let len = std::fs::metadata(file).unwrap().len();
    assert!(!parts.is_empty(), "{}: no parts", file.display());
    for w in parts.windows(2) {
        assert_eq!(w[0].offset + w[0].len, w[1].offset, "parts follow each other");
        assert!(w[1].start_us >= w[0].start_us && w[1].end_us >= w[0].end_us);
    }
    let last = parts.last().unwrap();
    assert_eq!(last.offset + last.len, len, "{}: the table covers the file", file.display());
    assert_eq!(parts[0].keyframe_us, Some(0), "a file starts at a keyframe");
}

/// Listed segments: (start, duration s).
fn segments_of(listing: &Value) -> Vec<(String, f64)> {
    listing["segments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (s["start"].as_str().unwrap_or_default().to_owned(), s["duration"].as_f64().unwrap_or(0.0)))
        .collect()
}

/// Waits until `path` has at least `seconds` of recordings listed; gives the listing.
async fn wait_recorded(server: &Server, path: &str, seconds: f64) -> Value {
    let url = format!("http://{}/api/v1/recordings/{path}", server.http);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, v) = get_json(&url).await;
        let total: f64 = segments_of(&v).iter().map(|s| s.1).sum();
        if status == 200 && total >= seconds {
            return v;
        }
        assert!(Instant::now() < deadline, "{path}: {seconds} s never recorded: {status} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks every file decodes cleanly with frames for each track, and the video frame count
/// matches the file's video duration (nothing lost inside a file).
fn check_files(files: &[PathBuf], fps: f64) {
    for f in files {
        assert_eq!(decode_errors(f), "", "{} decodes cleanly", f.display());
        let (v, a) = frame_counts(f);
        // A file cut by the publisher leaving just after a keyframe may hold no audio yet.
        assert!(v > 0 && (a > 0 || v < 15), "{}: {v} video and {a} audio frames", f.display());
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v", "-show_entries", "stream=duration", "-of", "csv=p=0"])
            .arg(f)
            .output()
            .unwrap();
        let duration: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0.0);
        // A video track may start a little late in a file (RTSP ingest moves video to its
        // sender reports at a keyframe): a few frames of slack, no more.
        assert!(
            (v as f64 - duration * fps).abs() <= 2.0f64.max(v as f64 * 0.05),
            "{}: {v} video frames in {duration} s of video",
            f.display()
        );
    }
}

/// SIGKILL of the server while it records, then a restart and a new publish: every file
/// plays to its last complete part, the durations of what was recorded before the kill add
/// up to what the listing said just before (within a part), and the listing shows two spans.
async fn survives_a_crash(path: &str, publish: impl Fn(&Server) -> Proc) {
    let dir = temp_dir(&path.replace('/', "-"));
    let cfg = format!(
        "[record]\ndir = \"{}\"\nsegment_duration_ms = 3000\npart_duration_ms = 1000\n[paths.\"rec/**\"]\nrecord = true\n",
        dir.display()
    );
    let server = Server::with_config(&cfg);
    let publisher = publish(&server);
    let before = wait_recorded(&server, path, 5.0).await;
    // Half a part later, mid-part: kill.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = {
        let (_, v) = get_json(&format!("http://{}/api/v1/recordings/{path}", server.http)).await;
        if segments_of(&v).is_empty() { before } else { v }
    };
    drop(server); // SIGKILL
    drop(publisher);
    let listed: Vec<(String, f64)> = segments_of(&before);
    let listed_total: f64 = listed.iter().map(|s| s.1).sum();

    let server = Server::with_config(&cfg);
    // The restart cut the crashed file back and listed it, with nothing being written.
    let after_restart = settled_listing(&server, path).await;
    let recovered: f64 = segments_of(&after_restart).iter().map(|s| s.1).sum();
    assert!(
        (recovered - listed_total).abs() <= 1.0 + 0.1,
        "recorded before the kill: {listed_total} s listed then, {recovered} s in the files: {after_restart}"
    );
    let files_before = mp4_files(&dir.join(path));
    assert_eq!(files_before.len(), listed.len(), "{files_before:?} vs {listed:?}");
    check_files(&files_before, 30.0);
    // The tables were made right by the recovery too (the crashed file's was cut with it).
    files_before.iter().for_each(|f| check_table(f));

    // Publish again: a second span.
    let publisher = publish(&server);
    wait_recorded(&server, path, recovered + 3.0).await;
    drop(publisher);
    let listing = settled_listing(&server, path).await;
    assert_eq!(listing["spans"].as_array().map(Vec::len), Some(2), "two spans: {listing}");
    check_files(&mp4_files(&dir.join(path)), 30.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn h264_aac_over_rtmp_survives_a_crash() {
    survives_a_crash("rec/crash264", |s| publish(test_flv(), &s.rtmp_url("rec/crash264"))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn h265_aac_over_rtsp_survives_a_crash() {
    survives_a_crash("rec/crash265", |s| publish_rtsp(hevc_aac_mkv(), &s.rtsp_url("rec/crash265"), "tcp")).await;
}

/// The index is rebuilt from the files when it is gone, and a file with a damaged tail is
/// listed up to its last good part (and cut back to it).
#[tokio::test(flavor = "multi_thread")]
async fn the_index_is_rebuilt_from_the_files() {
    let dir = temp_dir("rebuild");
    let cfg = config(&dir, "");
    let path = "rec/rebuild";
    let server = Server::with_config(&cfg);
    let mut publisher = publish_args(test_flv(), &server.rtmp_url(path), &[]);
    assert!(tokio::task::spawn_blocking(move || publisher.0.wait()).await.unwrap().unwrap().success());
    let before = settled_listing(&server, path).await;
    drop(server);
    for f in ["index+ferrocast.db", "index+ferrocast.db-wal", "index+ferrocast.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let files = mp4_files(&dir.join(path));
    let last = files.last().unwrap();
    let good = std::fs::metadata(last).unwrap().len();
    // Half a part of garbage after the last part, as a disk might leave.
    let mut data = std::fs::read(last).unwrap();
    data.extend(std::iter::repeat_n(0xa5, 3000));
    std::fs::write(last, data).unwrap();
    let server = Server::with_config(&cfg);
    let after = settled_listing(&server, path).await;
    assert_eq!(segments_of(&after), segments_of(&before), "the same segments, the same durations");
    assert_eq!(after["spans"], before["spans"]);
    assert_eq!(std::fs::metadata(last).unwrap().len(), good, "the damaged tail is cut");
    check_files(&files, 30.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opus and G.711 audio (published over RTSP) are recorded beside H.264, and decode.
#[tokio::test(flavor = "multi_thread")]
async fn opus_and_g711_are_recorded() {
    let dir = temp_dir("codecs");
    let server = Server::with_config(&config(&dir, ""));
    let cases = [
        ("rec/opus", vec!["-c:v", "copy", "-c:a", "libopus", "-ar", "48000"], "opus"),
        ("rec/alaw", vec!["-c:v", "copy", "-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1"], "pcm_alaw"),
    ];
    for (path, codecs, name) in cases {
        let publisher = publish_rtsp_codecs(test_flv(), &server.rtsp_url(path), "tcp", &codecs);
        wait_recorded(&server, path, 3.0).await;
        drop(publisher);
        settled_listing(&server, path).await;
        for f in mp4_files(&dir.join(path)) {
            assert_eq!(decode_errors(&f), "", "{}", f.display());
            let out = Command::new("ffprobe")
                .args(["-v", "error", "-select_streams", "a", "-show_entries", "stream=codec_name", "-of", "csv=p=0"])
                .arg(&f)
                .output()
                .unwrap();
            let codec = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            // A file cut by the publisher leaving just after a keyframe may hold no audio.
            if frame_counts(&f).0 > 15 {
                assert_eq!(codec, name, "{}", f.display());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM: the server closes its recordings at the last frame it took; none is left marked
/// as being written, and each file holds what the index says.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_closes_the_recordings() {
    let dir = temp_dir("sigterm");
    let mut server = Server::with_config(&config(&dir, ""));
    let path = "rec/stop";
    let _publisher = publish(test_flv(), &server.rtmp_url(path));
    wait_recorded(&server, path, 3.0).await;
    let pid = server.proc.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || {
        let s = server.proc.0.wait();
        (s, server)
    })
    .await
    .unwrap();
    assert!(status.0.unwrap().success(), "a clean exit");
    let db = rusqlite::Connection::open(dir.join("index+ferrocast.db")).unwrap();
    let writing: i64 = db.query_row("SELECT COUNT(*) FROM segments WHERE writing = 1", [], |r| r.get(0)).unwrap();
    assert_eq!(writing, 0, "no file left open");
    let mut q = db.prepare("SELECT file, bytes FROM segments").unwrap();
    let rows: Vec<(String, i64)> =
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    assert!(!rows.is_empty());
    for (file, bytes) in rows {
        assert_eq!(std::fs::metadata(dir.join(&file)).unwrap().len(), bytes as u64, "{file} holds what the index says");
        assert_eq!(decode_errors(&dir.join(&file)), "", "{file}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
