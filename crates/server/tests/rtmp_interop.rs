//! RTMP publish and RTMP / HTTP-FLV play against the real binary, with real ffmpeg/ffprobe
//! and our own RTMP client.

mod common;

use std::time::Duration;

use common::*;
use ferrocast_media::VideoCodec;
use ferrocast_media::flv::{self, VideoTag};
use ferrocast_rtmp::MediaKind;
use ferrocast_rtmp::client::ClientEvent;

#[tokio::test(flavor = "multi_thread")]
async fn ffmpeg_publish_then_rtmp_and_http_flv_readers() {
    let server = Server::start();
    let _publisher = publish(test_flv(), &server.rtmp_url("live/cam1"));
    wait_published(&server, "live/cam1").await;
    let rtmp = server.rtmp_url("live/cam1");
    let flv = server.flv_url("live/cam1");
    let a = tokio::task::spawn_blocking(move || probe(&rtmp, 4));
    let b = tokio::task::spawn_blocking(move || probe(&flv, 4));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    // 4 s of stream at 30 fps is 120 frames; ask for most of them.
    a.assert_h264_aac(320, 240, 90);
    b.assert_h264_aac(320, 240, 90);
    // B-frames keep their composition offsets: pts differs from dts somewhere.
    let vidx = a.codec("video").unwrap()["index"].as_i64();
    assert!(a.packets.iter().any(|p| p["stream_index"].as_i64() == vidx && p["pts"] != p["dts"]), "no B-frame offsets");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_flv_headers_and_unknown_paths() {
    let server = Server::start();
    assert_eq!(http_status(&server.flv_url("live/nothing")).await, Some(404));
    assert_eq!(http_status(&format!("http://{}/live/../../etc/passwd.flv", server.http)).await, Some(404));
    let _publisher = publish(test_flv(), &server.rtmp_url("live/h"));
    wait_published(&server, "live/h").await;
    let mut s = tokio::net::TcpStream::connect(server.http).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /live/h.flv HTTP/1.1\r\nHost: x\r\nOrigin: http://example.test\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(3).any(|w| w == b"FLV") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: video/x-flv"));
    assert!(head.contains("access-control-allow-origin: *"), "CORS for mpegts.js: {head}");
}

/// HTTP-FLV players that hyper serves: a `.flv` request after another one on a kept-alive
/// connection (players on the raw socket are those whose first request it is), with and
/// without a write-merge window.
#[tokio::test(flavor = "multi_thread")]
async fn http_flv_after_another_request_and_in_merge_mode() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for config in ["", "[hub]\nwrite_merge_ms = 50\n"] {
        let server = Server::with_config(config);
        let _publisher = publish(test_flv(), &server.rtmp_url("live/k"));
        wait_published(&server, "live/k").await;
        let mut s = tokio::net::TcpStream::connect(server.http).await.unwrap();
        s.write_all(b"OPTIONS /live/k.flv HTTP/1.1\r\nHost: x\r\n\r\nGET /live/k.flv HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(3).any(|w| w == b"FLV") {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "{config}: closed after {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).to_lowercase();
        assert!(text.starts_with("http/1.1 204"), "{config}: {text}");
        assert!(text.contains("http/1.1 200") && text.contains("content-type: video/x-flv"), "{config}: {text}");
        let flv = server.flv_url("live/k");
        tokio::task::spawn_blocking(move || probe(&flv, 3)).await.unwrap().assert_h264_aac(320, 240, 60);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn play_of_unknown_stream_is_stream_not_found() {
    let server = Server::start();
    let mut c = RtmpClient::connect(server.rtmp, "live/none", false).await;
    let seen = c.wait_for(|e| matches!(e, ClientEvent::Status { .. })).await;
    assert!(
        matches!(seen.last(), Some(ClientEvent::Status { code, .. }) if code == "NetStream.Play.StreamNotFound"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn own_client_publishes_ffprobe_and_own_client_play() {
    let server = Server::start();
    let mut publisher = RtmpClient::connect(server.rtmp, "app/own", true).await;
    publisher.wait_for(|e| *e == ClientEvent::Publishing).await;
    let file = test_flv().to_path_buf();
    let pub_task = tokio::spawn(async move {
        publisher.publish_file(&file, 3).await;
        publisher
    });
    wait_published(&server, "app/own").await;
    let url = server.rtmp_url("app/own");
    let probe_task = tokio::task::spawn_blocking(move || probe(&url, 4));

    let mut player = RtmpClient::connect(server.rtmp, "app/own", false).await;
    player.wait_for(|e| *e == ClientEvent::Playing).await;
    let mut video = Vec::new();
    let mut first_is_config = None;
    while video.len() < 60 {
        match player.next_event(Duration::from_secs(15)).await.expect("media") {
            ClientEvent::Media(m) if m.kind == MediaKind::Video => {
                let tag = flv::parse_video(&m.payload).unwrap();
                first_is_config.get_or_insert(matches!(tag, VideoTag::Config { .. }));
                if let VideoTag::Frame { keyframe, .. } = tag {
                    video.push((m.timestamp, keyframe));
                }
            }
            _ => {}
        }
    }
    assert_eq!(first_is_config, Some(true), "sequence header comes first");
    assert!(video[0].1, "first frame is a keyframe (GOP cache)");
    assert!(video.windows(2).all(|w| w[1].0 >= w[0].0), "timestamps monotonic");
    probe_task.await.unwrap().assert_h264_aac(320, 240, 90);
    pub_task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn second_publisher_is_refused_first_untouched() {
    let server = Server::start();
    let _first = publish(test_flv(), &server.rtmp_url("live/busy"));
    wait_published(&server, "live/busy").await;
    let mut second = RtmpClient::connect(server.rtmp, "live/busy", true).await;
    let seen = second.wait_for(|e| matches!(e, ClientEvent::Status { .. })).await;
    assert!(
        matches!(seen.last(), Some(ClientEvent::Status { code, .. }) if code == "NetStream.Publish.BadName"),
        "{seen:?}"
    );
    // ffmpeg as second publisher fails too.
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-re", "-t", "2", "-i"])
        .arg(test_flv())
        .args(["-c", "copy", "-f", "flv", &server.rtmp_url("live/busy")])
        .output()
        .unwrap();
    assert!(!out.status.success(), "second ffmpeg publisher was accepted");
    let url = server.rtmp_url("live/busy");
    tokio::task::spawn_blocking(move || probe(&url, 3)).await.unwrap().assert_h264_aac(320, 240, 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn hevc_codec12_and_enhanced_in_enhanced_out() {
    // ffmpeg 5.1 (Debian 12) cannot put H.265 in FLV, so our client publishes it, both as
    // Enhanced RTMP and as codec id 12; the payload is opaque to the server.
    let server = Server::start();
    for (path, legacy) in [("live/hevc_enh", false), ("live/hevc_12", true)] {
        let mut publisher = RtmpClient::connect(server.rtmp, path, true).await;
        publisher.wait_for(|e| *e == ClientEvent::Publishing).await;
        // A real hvcC (4-byte NAL lengths): the server checks sequence headers at ingest.
        let hex = |s: &str| {
            bytes::Bytes::from(
                (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<_>>(),
            )
        };
        let hvcc = ferrocast_media::h265::build_hvcc(
            &[hex("40010c01ffff01600000030090000003000003003c959809")],
            &[hex("42010101600000030090000003000003003ca00a080f165959a4932bc05a020000030002000003003c10")],
            &[hex("4401c172b46240")],
        )
        .unwrap()
        .to_vec();
        let config_body: Vec<u8> = if legacy {
            [&[0x1c, 0, 0, 0, 0][..], &hvcc].concat()
        } else {
            [&[0x90, b'h', b'v', b'c', b'1'][..], &hvcc].concat()
        };
        publisher.session.send_media(MediaKind::Video, 0, &config_body);
        let frame = |key: bool, cts: u8| -> Vec<u8> {
            let nal = [0, 0, 0, 3, if key { 0x26 } else { 0x02 }, 1, 0xaa];
            if legacy {
                [&[if key { 0x1c } else { 0x2c }, 1, 0, 0, cts][..], &nal].concat()
            } else {
                [&[if key { 0x91 } else { 0xa1 }, b'h', b'v', b'c', b'1', 0, 0, cts][..], &nal].concat()
            }
        };
        publisher.session.send_media(MediaKind::Video, 0, &frame(true, 66));
        publisher.flush().await;
        wait_published(&server, path).await;
        let mut player = RtmpClient::connect(server.rtmp, path, false).await;
        player.wait_for(|e| *e == ClientEvent::Playing).await;
        publisher.session.send_media(MediaKind::Video, 33, &frame(false, 33));
        publisher.flush().await;
        let mut tags = Vec::new();
        while tags.len() < 3 {
            if let Some(ClientEvent::Media(m)) = player.next_event(Duration::from_secs(10)).await
                && m.kind == MediaKind::Video
            {
                assert_eq!(m.payload[0] & 0x80, 0x80, "H.265 goes out as Enhanced RTMP");
                tags.push((m.timestamp, flv::parse_video(&m.payload).unwrap()));
            }
        }
        assert!(matches!(&tags[0].1, VideoTag::Config { codec: VideoCodec::H265, config } if config[..] == hvcc[..]));
        assert!(matches!(&tags[1].1, VideoTag::Frame { codec: VideoCodec::H265, keyframe: true, cts: 66, .. }));
        assert!(matches!(&tags[2], (33, VideoTag::Frame { codec: VideoCodec::H265, keyframe: false, cts: 33, .. })));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_with_a_bad_app_is_rejected() {
    let server = Server::start();
    for app in ["", "a b", ".."] {
        let socket = tokio::net::TcpStream::connect(server.rtmp).await.unwrap();
        let (tc_app, name) = (app, "x");
        let config = ferrocast_rtmp::client::ClientConfig::new(
            &format!("rtmp://{}/{tc_app}", server.rtmp),
            tc_app,
            ferrocast_rtmp::client::ClientMode::Play(name.into()),
        );
        let mut c = RtmpClient::with_config(socket, config).await;
        let seen = c.wait_for(|e| matches!(e, ClientEvent::Status { .. })).await;
        assert!(
            matches!(seen.last(), Some(ClientEvent::Status { code, .. }) if code == "NetConnection.Connect.Rejected"),
            "app {app:?}: {seen:?}"
        );
        assert!(c.next_event(Duration::from_secs(10)).await.is_none(), "closed after rejection");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn player_waits_for_a_late_publisher_when_configured() {
    let server = Server::with_config("[hub]\nplay_wait_ms = 8000\n");
    let url = server.rtmp_url("live/late");
    let reader = tokio::task::spawn_blocking(move || probe(&url, 3));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _publisher = publish(test_flv(), &server.rtmp_url("live/late"));
    reader.await.unwrap().assert_h264_aac(320, 240, 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn mp3_audio_passes_through() {
    let server = Server::start();
    let mp3 = mp3_flv();
    let _publisher = publish(mp3, &server.rtmp_url("live/mp3"));
    wait_published(&server, "live/mp3").await;
    for url in [server.rtmp_url("live/mp3"), server.flv_url("live/mp3")] {
        let p = tokio::task::spawn_blocking(move || probe(&url, 2)).await.unwrap();
        assert_eq!(p.codec("audio").map(|a| a["codec_name"].clone()), Some("mp3".into()), "{:?}", p.streams);
        assert!(p.packets_of("audio").len() > 30);
        assert_eq!(p.codec("video").unwrap()["codec_name"], "h264");
    }
}

/// A query on the stream name or the app (`cam1?token=x`, `live?vhost=a`: how OBS, ffmpeg and
/// relays carry keys and credentials) is not part of the path: ffmpeg publishes with one on the
/// name; a client whose connect names the app with a query plays the path; readers play with
/// and without a query.
#[tokio::test(flavor = "multi_thread")]
async fn queries_on_the_stream_name_and_app_are_not_the_path() {
    use ferrocast_rtmp::client::{ClientConfig, ClientMode};
    let server = Server::start();
    let _publisher = publish(test_flv(), &format!("rtmp://{}/live/q1?token=secret&user=u", server.rtmp));
    wait_published(&server, "live/q1").await;
    let plain = server.rtmp_url("live/q1");
    let with_query = format!("rtmp://{}/live/q1?token=other", server.rtmp);
    let a = tokio::task::spawn_blocking(move || probe(&plain, 3));
    let b = tokio::task::spawn_blocking(move || probe(&with_query, 3));
    a.await.unwrap().assert_h264_aac(320, 240, 60);
    b.await.unwrap().assert_h264_aac(320, 240, 60);
    let socket = tokio::net::TcpStream::connect(server.rtmp).await.unwrap();
    let config = ClientConfig::new(
        &format!("rtmp://{}/live?vhost=a", server.rtmp),
        "live?vhost=a",
        ClientMode::Play("q1?token=x".into()),
    );
    let mut c = RtmpClient::with_config(socket, config).await;
    c.wait_for(|e| matches!(e, ClientEvent::Playing)).await;
    c.wait_for(|e| matches!(e, ClientEvent::Media(m) if m.kind == MediaKind::Video)).await;
}
