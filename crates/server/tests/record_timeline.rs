//! Issue 15: a recorded stream whose video pauses for 15 s while audio goes on keeps both
//! tracks aligned in the file, the gap staying a gap in the video track.

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use std::time::{Duration, Instant};

use common::*;
use ferrocast_rtmp::MediaKind;
use ferrocast_rtmp::client::ClientEvent;
use hub_server::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_video_pause_stays_a_gap_in_the_recording() {
    let server = LoggedServer::start(
        "[hub]\nrepublish_grace_ms = 0\n[record]\ndir = \"{dir}/rec\"\n[paths.\"cams/**\"]\nrecord = true\n",
        &[],
    );
    // The test file looped to 30 s, video missing from 4 s to 19 s (back at a keyframe).
    let mut tags = Vec::new();
    let mut waits_for_key = false;
    for t in looped_tags(test_flv(), 8) {
        if t.ts >= 30_000 {
            break;
        }
        if t.tag_type == 9 && t.is_frame() {
            if (4_000..19_000).contains(&t.ts) {
                waits_for_key = true;
                continue;
            }
            if waits_for_key && !t.is_video_keyframe() {
                continue;
            }
            waits_for_key = false;
        }
        tags.push(t);
    }
    let end =
        |tag_type: u8| tags.iter().filter(|t| t.tag_type == tag_type && t.is_frame()).map(Tag::pts).max().unwrap();
    let sent = (end(8) - end(9)) as f64 / 1000.0;
    let mut publisher = RtmpClient::connect(server.rtmp, "cams/pause", true).await;
    publisher.wait_for(|e| *e == ClientEvent::Publishing).await;
    // Ten times faster than real time: a recorder is a hub reader like any other, and one
    // that falls a ring behind skips to the next keyframe.
    let started = Instant::now();
    for t in &tags {
        let due = started + Duration::from_millis(u64::from(t.ts) / 10);
        tokio::time::sleep_until(due.into()).await;
        let kind = match t.tag_type {
            8 => MediaKind::Audio,
            9 => MediaKind::Video,
            _ => MediaKind::Data,
        };
        publisher.session.send_media(kind, t.ts, &t.body);
        publisher.flush().await;
    }
    drop(publisher);
    // The file is complete once the listing says nothing is being written.
    let url = format!("http://{}/api/v1/recordings/cams/pause", server.http);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http_get(&url, "").await;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let segs = v["segments"].as_array().cloned().unwrap_or_default();
        if r.status == 200 && !segs.is_empty() && segs.iter().all(|s| s["writing"] == false) {
            assert_eq!(segs.len(), 1, "one file: {v}");
            let d = segs[0]["duration"].as_f64().unwrap();
            assert!((d - 30.0).abs() < 0.5, "the listing's duration is the stream's: {d}");
            break;
        }
        assert!(Instant::now() < deadline, "the recording never settled: {} {v}", r.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let files: Vec<_> = std::fs::read_dir(server.dir.join("rec/cams/pause"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "mp4"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let (json, err) = ffprobe(files[0].to_str().unwrap(), &[], 60);
    assert_eq!(err, "", "ffprobe reads the file cleanly");
    let end_of = |kind| packets(&json, kind).iter().filter_map(|p| p.1).fold(f64::NAN, f64::max);
    let got = end_of("audio") - end_of("video");
    assert!((got - sent).abs() <= 0.1, "audio - video at the end: {got:.3} s in the file, {sent:.3} s as sent");
    let video: Vec<f64> = packets(&json, "video").iter().filter_map(|p| p.0).collect();
    let longest = video.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    assert!((longest - 15.0).abs() < 0.6, "the video gap stays: {longest:.3} s");
}
