//! Issue 14 section 1: each track keeps its own timing. A stream whose tracks pause in turn
//! for 15 s while the other goes on, with one step back of 1 ms, is read over RTMP, HTTP-FLV,
//! RTSP and HLS: every reader sees the tracks end as far apart as the publisher sent them, and
//! no timestamp going back within a track. (Before, a track back from a pause counted as a
//! jump that moved every track: video played 15 s behind audio.)

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use std::time::Duration;

use common::*;
use ferrocast_rtmp::MediaKind;
use ferrocast_rtmp::client::ClientEvent;
use hub_server::*;

/// The publisher's schedule: the test file looped, video missing from 4 s to 19 s (it comes
/// back at a keyframe, as a camera would), audio missing from 22 s to 37 s, and one audio
/// frame 1 ms before the one sent just before it, near 20 s. Ends at 41 s.
fn schedule() -> Vec<Tag> {
    let mut out: Vec<Tag> = Vec::new();
    let mut video_waits_for_key = false;
    let mut stepped = false;
    let mut last_audio: Option<Tag> = None;
    for t in looped_tags(test_flv(), 11) {
        if t.ts >= 41_000 {
            break;
        }
        if t.tag_type == 9 && t.is_frame() {
            if (4_000..19_000).contains(&t.ts) {
                video_waits_for_key = true;
                continue;
            }
            if video_waits_for_key {
                if !t.is_video_keyframe() {
                    continue;
                }
                video_waits_for_key = false;
            }
        }
        if t.tag_type == 8 && t.is_frame() {
            if (22_000..37_000).contains(&t.ts) {
                continue;
            }
            if !stepped && t.ts >= 20_000 {
                // One step back of 1 ms, then on as before.
                let prev = last_audio.clone().expect("audio before");
                out.push(t.clone());
                out.push(Tag { ts: t.ts - 1, ..prev });
                stepped = true;
                last_audio = Some(t);
                continue;
            }
            last_audio = Some(t.clone());
        }
        out.push(t);
    }
    out
}

/// End of each track (latest presentation time), audio minus video, in seconds.
fn end_gap(json: &serde_json::Value) -> f64 {
    let end = |kind| packets(json, kind).iter().filter_map(|p| p.1.or(p.0)).fold(f64::NAN, f64::max);
    end("audio") - end("video")
}

/// Each track spans as long as the publisher's frames it stands for (the last ones sent, as
/// many as the reader got): a gap cut out of one track, or added, shows.
fn assert_spans(name: &str, json: &serde_json::Value, tags: &[Tag]) {
    for (kind, tag_type) in [("video", 9), ("audio", 8)] {
        let out: Vec<f64> = packets(json, kind).iter().filter_map(|p| p.1.or(p.0)).collect();
        let sent: Vec<f64> =
            tags.iter().filter(|t| t.tag_type == tag_type && t.is_frame()).map(|t| t.pts() as f64 / 1000.0).collect();
        assert!(!out.is_empty() && out.len() <= sent.len(), "{name}: {} {kind} packets of {}", out.len(), sent.len());
        let span = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max) - v.iter().copied().fold(f64::MAX, f64::min);
        let (got, want) = (span(&out), span(&sent[sent.len() - out.len()..]));
        assert!((got - want).abs() <= 0.1, "{name}: {kind} spans {got:.3} s, its frames were sent over {want:.3} s");
    }
}

/// Decode timestamps never go back within a track (where the output has them: RTP carries
/// presentation times only, so ffmpeg gives RTSP video none).
fn assert_monotonic(name: &str, json: &serde_json::Value) {
    for kind in ["video", "audio"] {
        let dts: Vec<f64> = packets(json, kind).iter().filter_map(|p| p.0).collect();
        for w in dts.windows(2) {
            assert!(w[1] >= w[0], "{name}: {kind} dts went back: {} -> {}", w[0], w[1]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_pausing_in_turn_keep_their_timing_for_every_reader() {
    let server = LoggedServer::start("[hub]\nrepublish_grace_ms = 0\n[hls]\ndir = \"{dir}/hls\"\nwindow = 40\n", &[]);
    let tags = schedule();
    let sent = {
        let end = |t: u8| tags.iter().filter(|x| x.tag_type == t && x.is_frame()).map(Tag::pts).max().unwrap();
        (end(8) - end(9)) as f64 / 1000.0
    };
    assert!(sent.abs() < 1.0, "the schedule ends both tracks together: {sent}");
    let mut publisher = RtmpClient::connect(server.rtmp, "live/tl", true).await;
    publisher.wait_for(|e| *e == ClientEvent::Publishing).await;
    // The first second, so that readers have a GOP to start from.
    let (head, body): (Vec<Tag>, Vec<Tag>) = tags.iter().cloned().partition(|t| t.ts < 1_000);
    for t in &head {
        send(&mut publisher, t).await;
    }
    let (rtmp, flv, rtsp) =
        (format!("rtmp://{}/live/tl", server.rtmp), server_flv(&server), format!("rtsp://{}/live/tl", server.rtsp));
    let readers = [
        ("RTMP", rtmp, vec!["-rw_timeout", "20000000"]),
        ("HTTP-FLV", flv, vec!["-rw_timeout", "20000000"]),
        ("RTSP", rtsp, vec!["-rtsp_transport", "tcp", "-timeout", "20000000"]),
    ]
    .map(|(name, url, opts)| {
        let opts: Vec<String> = opts.into_iter().map(String::from).collect();
        (name, std::thread::spawn(move || ffprobe(&url, &opts.iter().map(String::as_str).collect::<Vec<_>>(), 120)))
    });
    for line in ["rtmp play", "http-flv play", "rtsp play"] {
        server.wait_log(line, 1).await;
    }
    // The rest four times faster than real time (the server does not pace ingest).
    let start = tokio::time::Instant::now();
    for t in &body {
        tokio::time::sleep_until(start + Duration::from_millis(u64::from(t.ts - 1_000) / 4)).await;
        send(&mut publisher, t).await;
    }
    drop(publisher);
    for (name, reader) in readers {
        let (json, err) = reader.join().unwrap();
        let n = packets(&json, "video").len();
        assert!(n > 300, "{name}: only {n} video packets\n{err}");
        assert_monotonic(name, &json);
        assert_spans(name, &json, &tags);
        let gap = end_gap(&json);
        assert!((gap - sent).abs() <= 0.1, "{name}: the tracks end {gap:.3} s apart, sent {sent:.3} s apart\n{err}");
    }
    // HLS: the mirrored playlist, complete once the stream ended.
    let playlist = server.dir.join("hls/live/tl/media.m3u8");
    for _ in 0..600 {
        if std::fs::read_to_string(&playlist).is_ok_and(|p| p.contains("#EXT-X-ENDLIST")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (json, err) = ffprobe(playlist.to_str().unwrap(), &[], 60);
    assert_monotonic("HLS", &json);
    assert_spans("HLS", &json, &tags);
    let gap = end_gap(&json);
    assert!((gap - sent).abs() <= 0.1, "HLS: the tracks end {gap:.3} s apart, sent {sent:.3} s apart\n{err}");
}

fn server_flv(server: &LoggedServer) -> String {
    format!("http://{}/live/tl.flv", server.http)
}

async fn send(publisher: &mut RtmpClient, t: &Tag) {
    let kind = match t.tag_type {
        8 => MediaKind::Audio,
        9 => MediaKind::Video,
        _ => MediaKind::Data,
    };
    publisher.session.send_media(kind, t.ts, &t.body);
    publisher.flush().await;
}
