//! Recording, as a user meets it: ffmpeg publishes, the server writes fMP4 segment files that
//! ffmpeg decodes, and the API lists them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrocast-record-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path, extra: &str) -> String {
    format!(
        "[record]\ndir = \"{}\"\nsegment_duration_ms = 1500\npart_duration_ms = 500\n{extra}\n[paths.\"rec/**\"]\nrecord = true\n",
        dir.display()
    )
}

/// Frames per stream type that ffprobe reads in a file: (video, audio).
fn frame_counts(file: &Path) -> (u64, u64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries", "stream=codec_type,nb_read_frames", "-of", "json"])
        .arg(file)
        .output()
        .expect("ffprobe");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut counts = (0, 0);
    for s in v["streams"].as_array().into_iter().flatten() {
        let n: u64 = s["nb_read_frames"].as_str().and_then(|n| n.parse().ok()).unwrap_or(0);
        match s["codec_type"].as_str() {
            Some("video") => counts.0 += n,
            Some("audio") => counts.1 += n,
            _ => {}
        }
    }
    counts
}

/// What `ffmpeg -v error -i FILE -f null -` says (nothing for a clean decode).
fn decode_errors(file: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    let mut e = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        e.push_str(&format!(" (exit {})", out.status));
    }
    e
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

fn mp4_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "mp4")).collect())
        .unwrap_or_default();
    files.sort();
    files
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
