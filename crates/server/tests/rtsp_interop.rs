//! RTSP against the real binary with real ffmpeg/ffprobe: RTMP in -> RTSP out over TCP and
//! UDP, RTSP in (ANNOUNCE/RECORD over TCP and UDP, H.264 and H.265) -> RTSP, RTMP, HTTP-FLV
//! and HLS out.

mod common;

use std::time::Duration;

use common::*;
use ferrocast_media::VideoCodec;
use ferrocast_media::flv::{self, VideoTag};
use ferrocast_rtmp::MediaKind;
use ferrocast_rtmp::client::ClientEvent;

#[tokio::test(flavor = "multi_thread")]
async fn rtmp_in_rtsp_out_tcp_and_udp() {
    let server = Server::start();
    let _publisher = publish(test_flv(), &server.rtmp_url("live/conv"));
    wait_published(&server, "live/conv").await;
    let mut readers = Vec::new();
    for t in ["tcp", "udp"] {
        let url = server.rtsp_url("live/conv");
        readers.push(tokio::task::spawn_blocking(move || probe_with(&url, 4, &["-rtsp_transport", t])));
    }
    for r in readers {
        r.await.unwrap().assert_rtsp("h264", 320, 240, 90);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rtsp_in_h264_tcp_and_udp_reads_back_everywhere() {
    let server = Server::start();
    let _tcp = publish_rtsp(test_flv(), &server.rtsp_url("in/tcp"), "tcp");
    let _udp = publish_rtsp(test_flv(), &server.rtsp_url("in/udp"), "udp");
    for path in ["in/tcp", "in/udp"] {
        wait_published(&server, path).await;
        let (rtmp, flv, rtsp) = (server.rtmp_url(path), server.flv_url(path), server.rtsp_url(path));
        let a = tokio::task::spawn_blocking(move || probe(&rtmp, 4));
        let b = tokio::task::spawn_blocking(move || probe(&flv, 4));
        let c = tokio::task::spawn_blocking(move || probe_with(&rtsp, 4, &["-rtsp_transport", "tcp"]));
        // Decode timestamps are derived from RTP presentation times: monotonic, B-frame
        // offsets kept.
        let a = a.await.unwrap();
        a.assert_h264_aac(320, 240, 90);
        let vidx = a.codec("video").unwrap()["index"].as_i64();
        assert!(
            a.packets.iter().any(|p| p["stream_index"].as_i64() == vidx && p["pts"] != p["dts"]),
            "{path}: no B-frame offsets"
        );
        b.await.unwrap().assert_h264_aac(320, 240, 90);
        c.await.unwrap().assert_rtsp("h264", 320, 240, 90);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rtsp_in_h265_plays_over_rtsp_hls_and_enhanced_rtmp() {
    let server = Server::start();
    let _publisher = publish_rtsp(hevc_aac_mkv(), &server.rtsp_url("in/hevc"), "tcp");
    // And over UDP, read back over RTSP.
    let _udp = publish_rtsp(hevc_aac_mkv(), &server.rtsp_url("in/hevc_udp"), "udp");
    wait_published(&server, "in/hevc_udp").await;
    let rtsp = server.rtsp_url("in/hevc_udp");
    tokio::task::spawn_blocking(move || probe_with(&rtsp, 3, &["-rtsp_transport", "tcp"]))
        .await
        .unwrap()
        .assert_rtsp("hevc", 320, 240, 60);
    wait_published(&server, "in/hevc").await;
    let rtsp = server.rtsp_url("in/hevc");
    let a = tokio::task::spawn_blocking(move || probe_with(&rtsp, 4, &["-rtsp_transport", "tcp"]));
    // HLS of an H.265 stream defaults to fMP4.
    let hls = format!("http://{}/in/hevc/index.m3u8", server.http);
    let b = tokio::task::spawn_blocking(move || probe(&hls, 4));
    a.await.unwrap().assert_rtsp("hevc", 320, 240, 90);
    let b = b.await.unwrap();
    let v = b.codec("video").unwrap_or_else(|| panic!("{:?} {}", b.streams, b.stderr));
    assert_eq!(v["codec_name"], "hevc");
    assert_eq!(b.codec("audio").unwrap()["codec_name"], "aac");
    assert!(b.packets_of("video").len() >= 90);
    let media = http_get(&format!("http://{}/in/hevc/media.m3u8", server.http), "").await;
    assert!(media.text().contains("#EXT-X-MAP"), "{}", media.text());

    // ffmpeg 5.1 cannot read H.265 in FLV; our client checks the Enhanced RTMP tags.
    let mut player = RtmpClient::connect(server.rtmp, "in/hevc", false).await;
    player.wait_for(|e| *e == ClientEvent::Playing).await;
    let mut frames = 0;
    let mut config = None;
    while frames < 30 {
        match player.next_event(Duration::from_secs(10)).await.expect("media") {
            ClientEvent::Media(m) if m.kind == MediaKind::Video => match flv::parse_video(&m.payload).unwrap() {
                VideoTag::Config { codec: VideoCodec::H265, config: c } => config = Some(c),
                VideoTag::Frame { codec: VideoCodec::H265, .. } => frames += 1,
                other => panic!("{other:?}"),
            },
            _ => {}
        }
    }
    let cfg = ferrocast_media::h265::HevcConfig::parse(&config.expect("hvcC first")).unwrap();
    assert_eq!(cfg.codec_string(), "hvc1.1.6.L60.90");
}

#[tokio::test(flavor = "multi_thread")]
async fn g711_and_opus_over_rtsp() {
    let server = Server::start();
    let cases = [
        ("g/alaw", &["-c:v", "copy", "-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1"][..], "pcm_alaw", 8000, true),
        ("g/mulaw", &["-c:v", "copy", "-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1"][..], "pcm_mulaw", 8000, true),
        (
            "g/opus",
            &["-c:v", "copy", "-c:a", "libopus", "-b:a", "64k", "-ar", "48000", "-ac", "2"][..],
            "opus",
            48000,
            false,
        ),
    ];
    let publishers: Vec<Proc> = cases
        .iter()
        .map(|(path, codecs, ..)| publish_rtsp_codecs(test_flv(), &server.rtsp_url(path), "tcp", codecs))
        .collect();
    for (path, _, codec, rate, over_rtmp) in cases {
        wait_published(&server, path).await;
        let url = server.rtsp_url(path);
        let p = tokio::task::spawn_blocking(move || probe_with(&url, 3, &["-rtsp_transport", "tcp"])).await.unwrap();
        let a = p.codec("audio").unwrap_or_else(|| panic!("{path}: {:?} {}", p.streams, p.stderr));
        assert_eq!(a["codec_name"], codec, "{path}");
        assert_eq!(a["sample_rate"], rate.to_string(), "{path}");
        // ffmpeg packs G.711 into 1400-byte (175 ms) packets.
        assert!(p.packets_of("audio").len() > 8, "{path}: audio packets");
        assert_eq!(p.codec("video").unwrap()["codec_name"], "h264");
        // FLV carries G.711 (sound formats 7 and 8) but not Opus: RTMP readers get video only.
        let url = server.rtmp_url(path);
        let r = tokio::task::spawn_blocking(move || probe(&url, 2)).await.unwrap();
        match r.codec("audio") {
            Some(a) => {
                assert!(over_rtmp, "{path}: Opus has no FLV form");
                assert_eq!(a["codec_name"], codec);
                assert!(r.packets_of("audio").len() > 5);
            }
            None => assert!(!over_rtmp, "{path}: no audio over RTMP: {:?} {}", r.streams, r.stderr),
        }
        assert!(r.packets_of("video").len() > 30, "{path}: video over RTMP");
    }
    drop(publishers);
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_give_401_until_proven() {
    let server = Server::with_config(
        "[[auth.users]]\nuser = \"view\"\npass = \"pw\"\npermissions = [{ action = \"read\" }]\n\
         [[auth.users]]\nuser = \"cam\"\npass = \"s3cret\"\npermissions = [{ action = \"publish\" }]\n",
    );
    // Publishing without credentials fails; with them (ffmpeg answers the Digest challenge) it works.
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-re", "-t", "1", "-i"])
        .arg(test_flv())
        .args(["-c", "copy", "-f", "rtsp", &server.rtsp_url("auth/cam")])
        .output()
        .unwrap();
    assert!(!out.status.success(), "publish without credentials was accepted");
    let with = format!("rtsp://cam:s3cret@{}/auth/cam", server.rtsp);
    let _publisher = publish_rtsp(test_flv(), &with, "tcp");
    // Reading needs credentials on every protocol: HTTP-FLV with them in the query.
    let flv = format!("http://{}/auth/cam.flv?user=view&pass=pw", server.http);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while http_status(&flv).await != Some(200) {
        assert!(std::time::Instant::now() < deadline, "auth/cam was never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_status(&server.flv_url("auth/cam")).await, Some(401));
    // Reading: 401 with both challenges, then ffprobe with credentials plays.
    let mut s = tokio::net::TcpStream::connect(server.rtsp).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n", server.rtsp_url("auth/cam")).as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("RTSP/1.0 401"), "{head}");
    assert!(
        head.contains("WWW-Authenticate: Digest realm=\"ferrocast\", nonce=")
            && head.contains("WWW-Authenticate: Basic"),
        "{head}"
    );
    let url = format!("rtsp://view:pw@{}/auth/cam", server.rtsp);
    tokio::task::spawn_blocking(move || probe_with(&url, 2, &["-rtsp_transport", "tcp"]))
        .await
        .unwrap()
        .assert_rtsp("h264", 320, 240, 30);
    let url = format!("rtsp://view:wrong@{}/auth/cam", server.rtsp);
    let p = tokio::task::spawn_blocking(move || probe_with(&url, 1, &["-rtsp_transport", "tcp"])).await.unwrap();
    assert!(p.streams.is_empty(), "wrong password played");
}
