//! Hostile publishers: codec configurations a publisher can send that used to crash a reader
//! task, and what the server does with them instead. Each test publishes with our RTMP client
//! and reads with ffprobe over every protocol a user would.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use ferrocast_media::flv::{self, FileTag};
use ferrocast_rtmp::MediaKind;
use ferrocast_rtmp::client::ClientEvent;

/// The test file's tags with its AVC sequence header's avcC rewritten by `f`.
fn tags_with_avcc(f: impl Fn(&[u8]) -> Vec<u8>) -> Vec<FileTag> {
    let data = Bytes::from(std::fs::read(test_flv()).unwrap());
    let mut tags = flv::read_file(&data).unwrap();
    let header = tags.iter_mut().find(|t| t.tag_type == flv::TAG_VIDEO && t.body.get(1) == Some(&0)).unwrap();
    let mut body = header.body[..5].to_vec();
    body.extend_from_slice(&f(&header.body[5..]));
    header.body = Bytes::from(body);
    tags
}

/// An avcC whose SPS array starts with an entry of length 0, then the real SPS
/// (ISO/IEC 14496-15 5.3.3.1.1: `numOfSequenceParameterSets` then 16-bit lengths).
fn zero_length_sps_first(avcc: &[u8]) -> Vec<u8> {
    let count = avcc[5] & 0x1f;
    let mut out = avcc[..5].to_vec();
    out.push(0xe0 | (count + 1));
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&avcc[6..]);
    out
}

/// An avcC whose only SPS and PPS are empty.
fn nothing_usable(avcc: &[u8]) -> Vec<u8> {
    let mut out = avcc[..5].to_vec();
    out.extend_from_slice(&[0xe1, 0, 0, 1, 0, 0]);
    out
}

/// Sends `tags` at real-time pace, `loops` times with increasing timestamps.
async fn send_tags(client: &mut RtmpClient, tags: &[FileTag], loops: u32) {
    let span = tags.iter().map(|t| t.timestamp).max().unwrap_or(0) + 33;
    let start = tokio::time::Instant::now();
    for l in 0..loops {
        for t in tags {
            let ts = t.timestamp + l * span;
            let kind = match t.tag_type {
                flv::TAG_AUDIO => MediaKind::Audio,
                flv::TAG_VIDEO => MediaKind::Video,
                _ if l == 0 => MediaKind::Data,
                _ => continue,
            };
            tokio::time::sleep_until(start + Duration::from_millis(u64::from(ts))).await;
            client.session.send_media(kind, ts, &t.body);
            client.flush().await;
        }
    }
}

/// The reproduction of issue 14 point 2: an AVCDecoderConfigurationRecord with a zero-length
/// SPS entry before the real one used to panic the H.264 RTP packetizer as soon as an RTSP
/// reader played. Now the bad entry is dropped at ingest: the RTSP reader plays, and RTMP and
/// HTTP-FLV readers of the same path get every kind of frame throughout.
#[tokio::test(flavor = "multi_thread")]
async fn zero_length_sps_entry_plays_on_every_protocol() {
    let mut server = Server::start();
    let mut publisher = RtmpClient::connect(server.rtmp, "live/hostile", true).await;
    publisher.wait_for(|e| *e == ClientEvent::Publishing).await;
    let tags = tags_with_avcc(zero_length_sps_first);
    let task = tokio::spawn(async move { send_tags(&mut publisher, &tags, 5).await });
    wait_published(&server, "live/hostile").await;

    let urls = [
        (server.rtsp_url("live/hostile"), vec!["-rtsp_transport", "tcp"]),
        (server.rtmp_url("live/hostile"), vec![]),
        (server.flv_url("live/hostile"), vec![]),
    ];
    let readers: Vec<_> = urls
        .into_iter()
        .map(|(url, opts)| {
            tokio::task::spawn_blocking(move || {
                let p = probe_with(&url, 6, &opts);
                (url, p)
            })
        })
        .collect();
    for r in readers {
        let (url, p) = r.await.unwrap();
        if url.starts_with("rtsp") {
            p.assert_rtsp("h264", 320, 240, 60);
        } else {
            p.assert_h264_aac(320, 240, 60);
        }
    }
    task.abort();
    assert!(server.alive(), "the server must survive a hostile sequence header");
}

/// A sequence header with nothing usable in it is refused: the publisher gets an error status
/// and readers of the path keep the last good configuration.
#[tokio::test(flavor = "multi_thread")]
async fn unusable_sequence_header_is_refused_and_readers_keep_the_good_one() {
    let mut server = Server::start();
    let mut publisher = RtmpClient::connect(server.rtmp, "live/refused", true).await;
    publisher.wait_for(|e| *e == ClientEvent::Publishing).await;
    let good = tags_with_avcc(|a| a.to_vec());
    send_tags(&mut publisher, &good, 1).await;

    // An RTMP reader joins on the good configuration.
    let mut reader = RtmpClient::connect(server.rtmp, "live/refused", false).await;
    reader.wait_for(|e| *e == ClientEvent::Playing).await;
    let is_config = |e: &ClientEvent| matches!(e, ClientEvent::Media(m) if m.kind == MediaKind::Video && m.payload.get(1) == Some(&0));
    let seen = reader.wait_for(is_config).await;
    let Some(ClientEvent::Media(first)) = seen.last() else { unreachable!() };
    let good_config = first.payload.clone();

    // The bad one: the publisher is told, and no reader sees it.
    let bad = tags_with_avcc(nothing_usable);
    let header = bad.iter().find(|t| t.tag_type == flv::TAG_VIDEO && t.body.get(1) == Some(&0)).unwrap();
    publisher.session.send_media(MediaKind::Video, 5000, &header.body);
    publisher.flush().await;
    let events = publisher.wait_for(|e| matches!(e, ClientEvent::Status { level, .. } if level == "error")).await;
    let Some(ClientEvent::Status { code, .. }) = events.last() else { unreachable!() };
    assert_eq!(code, "NetStream.Publish.Failed");

    // The reader gets the end of the stream, never the bad header.
    loop {
        match reader.next_event(Duration::from_secs(15)).await {
            Some(ClientEvent::Media(m)) if m.kind == MediaKind::Video && m.payload.get(1) == Some(&0) => {
                assert_eq!(m.payload, good_config, "a reader got the refused configuration");
            }
            Some(ClientEvent::UserControl { event: 1, .. }) | None => break,
            Some(_) => {}
        }
    }
    assert!(server.alive());
}
