//! The per-path table `[paths."PATTERN"]` as users meet it, with the real binary and ffmpeg:
//! `hls_variant` makes fMP4 HLS for the matching paths only (and an exact entry wins whole),
//! a bad table stops the server with a message naming the key, and nothing may be published
//! under the reserved first segments `api`, `vod` and `metrics`.

mod common;

use std::process::{Command, Stdio};

use common::*;
use ferrocast_rtmp::client::ClientEvent;

/// The media playlist of `path`, once it lists at least two segments.
async fn media_playlist(server: &Server, path: &str) -> String {
    let url = format!("http://{}/{path}/media.m3u8", server.http);
    for _ in 0..100 {
        let r = http_get(&url, "").await;
        if r.status == 200 && r.text().matches("#EXTINF").count() >= 2 {
            return r.text();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("{path}: no playlist with two segments");
}

fn segment_uris(playlist: &str) -> Vec<&str> {
    playlist.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hls_variant_fmp4_applies_to_matching_paths_only() {
    // fmp4/* gets fMP4; fmp4/plain has its own exact entry, which wins whole: MPEG-TS as [hls]
    // says (it takes nothing from fmp4/*), with its own segment duration; live/* matches nothing.
    let server = Server::with_config(
        "[paths.\"fmp4/*\"]\nhls_variant = \"fmp4\"\n[paths.\"fmp4/plain\"]\nhls_segment_duration_ms = 1000\n",
    );
    let _publishers: Vec<Proc> =
        ["fmp4/cam", "fmp4/plain", "live/cam"].iter().map(|p| publish(test_flv(), &server.rtmp_url(p))).collect();
    for path in ["fmp4/cam", "fmp4/plain", "live/cam"] {
        wait_published(&server, path).await;
    }

    let fmp4 = media_playlist(&server, "fmp4/cam").await;
    assert!(fmp4.contains("#EXT-X-MAP:URI=\""), "{fmp4}");
    assert!(segment_uris(&fmp4).iter().all(|u| u.ends_with(".m4s")), "{fmp4}");

    for path in ["fmp4/plain", "live/cam"] {
        let ts = media_playlist(&server, path).await;
        assert!(!ts.contains("#EXT-X-MAP"), "{path}: {ts}");
        assert!(segment_uris(&ts).iter().all(|u| u.ends_with(".ts")), "{path}: {ts}");
        let target = if path == "fmp4/plain" { "#EXT-X-TARGETDURATION:1\n" } else { "#EXT-X-TARGETDURATION:2\n" };
        assert!(ts.contains(target), "{path}: {ts}");
    }

    // And the fMP4 stream reads back as the H.264 + AAC that was published.
    let url = format!("http://{}/fmp4/cam/index.m3u8", server.http);
    tokio::task::spawn_blocking(move || probe(&url, 4)).await.unwrap().assert_h264_aac(320, 240, 30);
}

/// What the binary says when started with `toml` as its config file (it must exit).
fn start_error(toml: &str) -> String {
    let cfg = std::env::temp_dir().join(format!("ferrocast-paths-config-{}-{}.toml", std::process::id(), toml.len()));
    std::fs::write(&cfg, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrocast"))
        .args(["--rtmp-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--rtsp-addr", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&cfg);
    assert!(!out.status.success(), "started with {toml:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_paths_tables_stop_the_server_naming_the_key() {
    let err = start_error("[paths.\"cams/*\"]\nrecord = true\nrecord_max_age = 5\n");
    assert!(err.contains("record_max_age"), "{err}");
    let err = start_error("[paths.\"cams/***\"]\nrecord = true\n");
    assert!(err.contains("cams/***"), "{err}");
    let err = start_error("[hls.paths.\"cams/*\"]\nvariant = \"fmp4\"\n");
    assert!(err.contains("[hls.paths] moved") && err.contains("[paths.\"PATTERN\"]"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_under_reserved_first_segments_is_refused() {
    let server = Server::start();
    // ffmpeg over RTMP: refused, and it says so.
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-re", "-t", "2", "-i"])
        .arg(test_flv())
        .args(["-c", "copy", "-f", "flv", &server.rtmp_url("api/x")])
        .output()
        .unwrap();
    assert!(!out.status.success(), "ffmpeg published to api/x");
    // Our client sees the status: BadName, an error.
    for path in ["api/x", "vod/cams/a", "metrics/m"] {
        let mut c = RtmpClient::connect(server.rtmp, path, true).await;
        let seen = c.wait_for(|e| matches!(e, ClientEvent::Status { .. })).await;
        assert!(
            matches!(seen.last(), Some(ClientEvent::Status { level, code })
                if level == "error" && code == "NetStream.Publish.BadName"),
            "{path}: {seen:?}"
        );
    }
    // ffmpeg over RTSP: ANNOUNCE answered 403.
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-re", "-t", "2", "-i"])
        .arg(test_flv())
        .args(["-c", "copy", "-f", "rtsp", "-rtsp_transport", "tcp", &server.rtsp_url("vod/x")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ffmpeg published to vod/x over RTSP");
    assert!(stderr.contains("403"), "{stderr}");
    // Nothing got published there; a path merely containing a reserved word is ordinary.
    assert_eq!(http_status(&server.flv_url("api/x")).await, Some(404));
    let _publisher = publish(test_flv(), &server.rtmp_url("live/api"));
    wait_published(&server, "live/api").await;
}
