//! HLS from streams published over RTMP: read back with ffprobe (MPEG-TS and fMP4, H.264 and
//! H.265), playlist rules, restarts, and what the HTTP side refuses.

mod common;

use std::time::Duration;

use common::*;
use ferrocast_rtmp::client::ClientEvent;

/// The tags of a media playlist.
struct MediaPlaylist {
    target: f64,
    sequence: u64,
    durations: Vec<f64>,
    uris: Vec<String>,
    text: String,
}

fn parse_media(text: &str) -> MediaPlaylist {
    let tag = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("no {name} in\n{text}")).to_owned()
    };
    MediaPlaylist {
        target: tag("#EXT-X-TARGETDURATION:").parse().unwrap(),
        sequence: tag("#EXT-X-MEDIA-SEQUENCE:").parse().unwrap(),
        durations: text
            .lines()
            .filter_map(|l| l.strip_prefix("#EXTINF:"))
            .map(|d| d.trim_end_matches(',').parse().unwrap())
            .collect(),
        uris: text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(str::to_owned).collect(),
        text: text.to_owned(),
    }
}

async fn media_playlist(server: &Server, path: &str) -> MediaPlaylist {
    let r = http_get(&format!("http://{}/{path}/media.m3u8", server.http), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("application/vnd.apple.mpegurl"));
    // Cacheable for about half a target duration (see hls_cdn.rs).
    let cache = r.header("cache-control").unwrap();
    let max_age: u64 = cache.strip_prefix("public, max-age=").expect(&cache).parse().unwrap();
    assert!(max_age >= 1 && max_age as f64 <= parse_media(&r.text()).target.max(1.0), "{cache}");
    parse_media(&r.text())
}

/// Polls the playlist for a while: every segment within the target, media sequence never
/// going back and moving on.
async fn watch_playlist(server: &Server, path: &str, seconds: u64) -> MediaPlaylist {
    let first = media_playlist(server, path).await;
    let mut last = media_playlist(server, path).await;
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let p = media_playlist(server, path).await;
        assert!(p.sequence >= last.sequence, "media sequence went back: {} -> {}", last.sequence, p.sequence);
        for d in &p.durations {
            // RFC 8216 4.3.3.1: each duration rounded to the nearest integer <= target.
            assert!(d.round() <= p.target, "segment of {d} s over target {}\n{}", p.target, p.text);
        }
        last = p;
    }
    let end = |p: &MediaPlaylist| p.sequence + p.uris.len() as u64;
    assert!(end(&last) > end(&first), "no new segments in {seconds} s");
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn mpegts_from_rtmp_reads_back_clean() {
    let server = Server::start();
    let _publisher = publish(test_flv(), &server.rtmp_url("live/hls"));
    wait_published(&server, "live/hls").await;
    let index = http_get(&format!("http://{}/live/hls/index.m3u8", server.http), "").await;
    assert_eq!(index.status, 200);
    let text = index.text();
    assert!(text.contains("CODECS=\"avc1.64000d,mp4a.40.2\""), "{text}");
    assert!(text.contains("RESOLUTION=320x240"), "{text}");
    assert!(text.contains("BANDWIDTH="));
    assert_eq!(index.header("access-control-allow-origin").as_deref(), Some("*"));

    let url = format!("http://{}/live/hls/index.m3u8", server.http);
    let reader = tokio::task::spawn_blocking(move || probe(&url, 6));
    let p = watch_playlist(&server, "live/hls", 5).await;
    assert!(p.uris.iter().all(|u| u.ends_with(".ts")));
    let probe = reader.await.unwrap();
    probe.assert_h264_aac(320, 240, 150);
    for bad in ["continuity check failed", "Packet corrupt", "error"] {
        assert!(!probe.stderr.to_lowercase().contains(&bad.to_lowercase()), "ffprobe: {}", probe.stderr);
    }

    // Continuity counters run on across the listed segments, per PID (13818-1 2.4.3.3).
    let mut cc: std::collections::HashMap<u16, u8> = Default::default();
    for uri in &p.uris {
        let seg = http_get(&format!("http://{}/live/hls/{uri}", server.http), "").await;
        assert_eq!(seg.status, 200, "{uri}");
        assert_eq!(seg.body.len() % 188, 0, "{uri} is not whole packets");
        for pkt in seg.body.chunks(188) {
            assert_eq!(pkt[0], 0x47, "lost sync in {uri}");
            let pid = u16::from_be_bytes([pkt[1] & 0x1f, pkt[2]]);
            let c = pkt[3] & 0x0f;
            if pkt[3] & 0x10 != 0
                && let Some(prev) = cc.insert(pid, c)
            {
                assert_eq!(c, (prev + 1) & 0x0f, "continuity break on PID {pid:#x} in {uri}");
            }
        }
    }

    // A segment: content type, immutable caching, and byte ranges.
    let seg = format!("http://{}/live/hls/{}", server.http, p.uris.last().unwrap());
    let full = http_get(&seg, "").await;
    assert_eq!(full.status, 200);
    assert_eq!(full.header("content-type").as_deref(), Some("video/mp2t"));
    assert!(full.header("cache-control").unwrap().contains("immutable"));
    assert_eq!(full.body.len() % 188, 0);
    let part = http_get(&seg, "Range: bytes=188-375\r\n").await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, full.body[188..376]);
    assert_eq!(part.header("content-range"), Some(format!("bytes 188-375/{}", full.body.len())));
    let bad = http_get(&seg, &format!("Range: bytes={}-\r\n", full.body.len())).await;
    assert_eq!(bad.status, 416);
}

#[tokio::test(flavor = "multi_thread")]
async fn hevc_defaults_to_fmp4_and_reads_back() {
    let server = Server::start();
    let mut publisher = RtmpClient::connect(server.rtmp, "live/h265", true).await;
    publisher.wait_for(|e| *e == ClientEvent::Publishing).await;
    let file = hevc_annexb().to_path_buf();
    let task = tokio::spawn(async move { publisher.publish_hevc(&file, 4).await });
    let index = http_get(&format!("http://{}/live/h265/index.m3u8", server.http), "").await;
    assert_eq!(index.status, 200);
    assert!(index.text().contains("CODECS=\"hvc1.1.6.L60.90\""), "{}", index.text());
    assert!(index.text().contains("RESOLUTION=320x240"));
    let p = media_playlist(&server, "live/h265").await;
    assert!(p.text.contains("#EXT-X-MAP:URI=\""), "{}", p.text);
    assert!(p.uris.iter().all(|u| u.ends_with(".m4s")));
    let url = format!("http://{}/live/h265/index.m3u8", server.http);
    let probe = tokio::task::spawn_blocking(move || probe(&url, 4)).await.unwrap();
    let v = probe.codec("video").unwrap_or_else(|| panic!("{:?}\n{}", probe.streams, probe.stderr));
    assert_eq!(v["codec_name"], "hevc");
    assert_eq!((v["width"].as_i64(), v["height"].as_i64()), (Some(320), Some(240)));
    let video = probe.packets_of("video");
    assert!(video.len() >= 90, "{} packets", video.len());
    assert!(video[0].1, "first packet a keyframe");
    assert!(video.windows(2).all(|w| w[1].0 >= w[0].0));
    let init = http_get(
        &format!(
            "http://{}/live/h265/{}",
            server.http,
            p.text.split("URI=\"").nth(1).unwrap().split('"').next().unwrap()
        ),
        "",
    )
    .await;
    assert_eq!(init.header("content-type").as_deref(), Some("video/mp4"));
    assert_eq!(&init.body[4..8], b"ftyp");
    task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn publisher_restart_is_a_discontinuity_and_players_recover() {
    let server = Server::start();
    let url = server.rtmp_url("live/restart");
    let mut first = publish_args(test_flv(), &url, &["-t", "5"]);
    wait_published(&server, "live/restart").await;
    assert!(!media_playlist(&server, "live/restart").await.durations.is_empty());
    // A player that is reading when the publisher restarts.
    let hls = format!("http://{}/live/restart/index.m3u8", server.http);
    let across = tokio::task::spawn_blocking(move || probe(&hls, 10));
    tokio::task::spawn_blocking(move || first.0.wait().unwrap()).await.unwrap();
    let _second = publish(test_flv(), &url);
    let mut seen = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if media_playlist(&server, "live/restart").await.text.contains("#EXT-X-DISCONTINUITY\n") {
            seen = true;
            break;
        }
    }
    assert!(seen, "no EXT-X-DISCONTINUITY after the restart");
    let p = across.await.unwrap();
    p.assert_h264_aac(320, 240, 200);
    let video = p.packets_of("video");
    assert!(video.last().unwrap().0 - video[0].0 > 8.0, "player stopped at the restart");
    let hls = format!("http://{}/live/restart/index.m3u8", server.http);
    tokio::task::spawn_blocking(move || probe(&hls, 4)).await.unwrap().assert_h264_aac(320, 240, 90);
}

#[tokio::test(flavor = "multi_thread")]
async fn junk_names_are_404_and_dir_mirror_per_path_settings() {
    let dir = std::env::temp_dir().join(format!("ferrocast-hls-dir-{}", std::process::id()));
    let server = Server::with_config(&format!(
        "[hls]\ndir = \"{}\"\n[paths.\"mirror/*\"]\nhls_segment_duration_ms = 1000\n",
        dir.display()
    ));
    let _publisher = publish(test_flv(), &server.rtmp_url("mirror/cam"));
    wait_published(&server, "mirror/cam").await;
    let p = watch_playlist(&server, "mirror/cam", 3).await;
    assert_eq!(p.target, 1.0, "per-path segment duration: {}", p.text);
    for path in [
        "/mirror/cam/../../../etc/passwd",
        "/mirror/cam/..%2f..%2fetc%2fpasswd.ts",
        "/mirror/cam/nope-1.ts",
        "/mirror/cam/index.m3u8.bak",
        "/mirror/none/index.m3u8",
        "/mirror/cam/%00.ts",
        "/mirror/../mirror/cam/index.m3u8",
    ] {
        let r = http_get(&format!("http://{}{path}", server.http), "").await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    let files: Vec<String> = std::fs::read_dir(dir.join("mirror/cam"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(files.contains(&"index.m3u8".to_owned()) && files.contains(&"media.m3u8".to_owned()), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with(".ts")), "{files:?}");
    let on_disk = std::fs::read_to_string(dir.join("mirror/cam/media.m3u8")).unwrap();
    for uri in parse_media(&on_disk).uris {
        assert!(dir.join("mirror/cam").join(&uri).exists(), "{uri} listed but not written");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
