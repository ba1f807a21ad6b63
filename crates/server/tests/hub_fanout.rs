//! Issue 14 section 2: a panic inside a shared fan-out pass ends that one reader; the other
//! readers of the same shard, of other protocols, get every frame. The panic is injected by
//! the debug build's test hook (`FERROCAST_TEST_PANIC_MARKER`, see `fanout::test_hook`); one
//! runtime worker puts every reader on one shard.

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::*;
use ferrocast_rtmp::MediaKind;
use ferrocast_rtmp::client::ClientEvent;
use hub_server::*;

const MARKER: &str = "ferrocast-test-panic-marker";

/// The test file three times; the first P-frame after 6 s carries the marker in a filler NAL
/// unit (type 12, which decoders skip).
fn schedule() -> Vec<Tag> {
    let mut marked = false;
    looped_tags(test_flv(), 3)
        .into_iter()
        .map(|mut t| {
            if !marked && t.tag_type == 9 && t.is_frame() && !t.is_video_keyframe() && t.ts >= 6_000 {
                let mut body = BytesMut::from(&t.body[..]);
                body.put_u32(1 + MARKER.len() as u32);
                body.put_u8(12);
                body.put_slice(MARKER.as_bytes());
                t.body = body.freeze();
                marked = true;
            }
            t
        })
        .collect()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_pass_ends_one_reader_and_the_others_get_every_frame() {
    let server = LoggedServer::start(
        "[hub]\nrepublish_grace_ms = 0\n",
        &[("TOKIO_WORKER_THREADS", "1"), ("FERROCAST_TEST_PANIC_MARKER", MARKER)],
    );
    let tags = schedule();
    let mut publisher = RtmpClient::connect(server.rtmp, "live/p", true).await;
    publisher.wait_for(|e| *e == ClientEvent::Publishing).await;
    let (head, body): (Vec<Tag>, Vec<Tag>) = tags.iter().cloned().partition(|t| t.ts < 1_000);
    for t in &head {
        send(&mut publisher, t).await;
    }
    // Three readers of three protocols, joining in turn.
    let mut readers = Vec::new();
    for (name, url, opts, line) in [
        ("RTMP", format!("rtmp://{}/live/p", server.rtmp), &["-rw_timeout", "20000000"][..], "rtmp play"),
        ("HTTP-FLV", format!("http://{}/live/p.flv", server.http), &["-rw_timeout", "20000000"], "http-flv play"),
        (
            "RTSP",
            format!("rtsp://{}/live/p", server.rtsp),
            &["-rtsp_transport", "tcp", "-timeout", "20000000"],
            "rtsp play",
        ),
    ] {
        readers.push((name, std::thread::spawn(move || ffprobe(&url, opts, 120))));
        server.wait_log(line, 1).await;
    }
    // The rest at twice real time: the readers keep up, so the fan-out writes for them.
    let start = tokio::time::Instant::now();
    for t in &body {
        tokio::time::sleep_until(start + Duration::from_millis(u64::from(t.ts - 1_000) / 2)).await;
        send(&mut publisher, t).await;
    }
    drop(publisher);
    let sent: Vec<u32> = tags.iter().filter(|t| t.tag_type == 9 && t.is_frame()).map(|t| t.ts).collect();
    let keys: Vec<usize> = tags
        .iter()
        .filter(|t| t.tag_type == 9 && t.is_frame())
        .enumerate()
        .filter(|(_, t)| t.is_video_keyframe())
        .map(|(i, _)| i)
        .collect();
    let mut complete = Vec::new();
    let mut cut = Vec::new();
    for (name, reader) in readers {
        let (json, err) = reader.join().unwrap();
        let video = packets(&json, "video");
        // Every frame from the keyframe the reader started at to the end.
        let whole = keys.iter().any(|&k| video.len() == sent.len() - k);
        let exact = match name {
            // FLV timestamps are the publisher's, in ms.
            "RTMP" | "HTTP-FLV" => {
                let dts: Vec<u32> = video.iter().filter_map(|p| p.0).map(|d| (d * 1000.0).round() as u32).collect();
                dts.first().is_some_and(|first| sent.iter().skip_while(|s| *s != first).eq(dts.iter()))
            }
            _ => true,
        };
        eprintln!("{name}: {} video packets of {}; whole: {whole}, exact: {exact}\n{err}", video.len(), sent.len());
        if whole && exact { complete.push(name) } else { cut.push(name) }
    }
    assert_eq!(cut.len(), 1, "one reader ended by the panic, the others whole: complete {complete:?}, cut {cut:?}");
    assert_eq!(server.log_count("fan-out: a panic while encoding"), 1);
}
