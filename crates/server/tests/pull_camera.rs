//! Pulling a real third-party camera: GStreamer's RTSP server (GstRtspServer, driven by
//! tests/support/gst_camera.py) serving live H.264 + AAC on loopback. ferrocast pulls it on
//! demand and serves it in every protocol; Digest with a password containing `@`; UDP and a
//! TCP-only camera; the camera restarting under a reader; the source stopping after the last
//! reader; a wrong password reported without leaking it. States are awaited by polling
//! `GET /api/v1/paths/{path}`, never by timing.

mod common;
#[path = "common/pull.rs"]
mod pull;

use common::*;
use pull::*;
use serde_json::Value;

/// The camera's picture size (gst_camera.py's default).
const W: i64 = 352;
const H: i64 = 288;

/// A server pulling `url` into `cams/a`, with extra per-path keys and extra sections. Retries
/// are quick (tests wait for them), the grace long (a restarting camera is survived).
fn server(url: &str, path_keys: &str, sections: &str) -> LoggedServer {
    LoggedServer::start(&format!(
        "[paths.\"cams/a\"]\nsource = \"{url}\"\n{path_keys}\n\
         [source]\nretry_min_ms = 200\nretry_max_ms = 1000\n{sections}\n\
         [hub]\nrepublish_grace_ms = 30000\n"
    ))
}

/// Everything the API said and the server logged holds no trace of `secret`.
async fn assert_no_secret(server: &LoggedServer, path: &str, secret: &str) {
    let (_, status) = server.path_status(path).await;
    let text = status.to_string();
    assert!(!text.contains(secret), "the API shows the password: {text}");
    let all = http_get(&format!("http://{}/api/v1/paths", server.http), "").await.text();
    assert!(!all.contains(secret), "the path list shows the password: {all}");
    let log = server.log_text();
    assert!(!log.contains(secret), "the log shows the password:\n{}", lines_with(&log, secret));
}

fn lines_with(text: &str, needle: &str) -> String {
    text.lines().filter(|l| l.contains(needle)).take(5).collect::<Vec<_>>().join("\n")
}

fn rtsp_probe(url: String) -> tokio::task::JoinHandle<Probe> {
    tokio::task::spawn_blocking(move || probe_with(&url, 3, &["-rtsp_transport", "tcp"]))
}

fn blocking_probe(url: String) -> tokio::task::JoinHandle<Probe> {
    tokio::task::spawn_blocking(move || probe(&url, 3))
}

#[tokio::test(flavor = "multi_thread")]
async fn gst_camera_pulled_on_demand_read_over_every_protocol() {
    let camera = Camera::gst(0, &[]);
    // Readers follow one another: the source stays up between them.
    let server = server(&camera.url(None), "source_close_after_ms = 30000", "");

    // On demand: nothing runs until a reader comes.
    let idle = server.wait_state("cams/a", "idle").await;
    assert_eq!(idle["source"]["on_demand"], true, "{idle}");
    assert_eq!(idle["live"], false, "{idle}");
    assert_eq!(camera.count(|l| l == "connected"), 0, "the camera was called without a reader");

    // RTMP, HTTP-FLV and RTSP readers each start it (or find it running) and read both tracks.
    let p = blocking_probe(server.rtmp_url("cams/a")).await.unwrap();
    p.assert_h264_aac(W, H, 30);
    let status = server.wait_state("cams/a", "live").await;
    assert_eq!(status["source"]["url"], camera.url(None), "{status}");
    assert_eq!(status["source"]["transport"], "udp", "auto with a camera that sends UDP: {status}");
    assert!(status["source"]["auth"].is_null(), "{status}");
    let p = blocking_probe(server.flv_url("cams/a")).await.unwrap();
    p.assert_h264_aac(W, H, 30);
    let p = rtsp_probe(server.rtsp_url("cams/a")).await.unwrap();
    p.assert_rtsp("h264", W, H, 30);

    // HLS, while a viewer keeps the source up: segments of the pulled stream.
    let viewer = FlvReader::start(&server.flv_url("cams/a"));
    viewer.wait_bytes(10_000, "the stream").await;
    let playlist = format!("http://{}/cams/a/index.m3u8", server.http);
    let deadline = std::time::Instant::now() + WAIT;
    while http_get(&playlist, "").await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "no HLS playlist for the pulled path");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let p = tokio::task::spawn_blocking(move || probe(&playlist, 4)).await.unwrap();
    assert_eq!(p.codec("video").map(|v| v["codec_name"].clone()), Some(Value::from("h264")), "{}", p.stderr);
    assert_eq!(p.codec("audio").map(|v| v["codec_name"].clone()), Some(Value::from("aac")), "{}", p.stderr);
    let v = p.codec("video").unwrap();
    assert_eq!((v["width"].as_i64(), v["height"].as_i64()), (Some(W), Some(H)));
    assert!(p.packets_of("video").len() >= 30, "{} HLS video packets", p.packets_of("video").len());

    let status = server.wait_state("cams/a", "live").await;
    assert!(status["readers"].as_u64().unwrap_or(0) >= 1, "{status}");
    assert!(status["source"]["bytes"].as_u64().unwrap_or(0) > 0, "{status}");
    assert!(status["source"]["live_since"].is_string(), "{status}");
    assert_eq!(camera.count(|l| l == "play"), 1, "one camera session for all readers: {:?}", camera.lines());
}

#[tokio::test(flavor = "multi_thread")]
async fn gst_camera_digest_with_at_in_password() {
    let camera = Camera::gst(0, &["--user", "admin", "--password", "s3cr@t!", "--digest"]);
    let server = server(&camera.url(Some("admin:s3cr%40t!")), "", "");
    let p = blocking_probe(server.flv_url("cams/a")).await.unwrap();
    p.assert_h264_aac(W, H, 30);
    let status = server.wait_state("cams/a", "live").await;
    assert_eq!(status["source"]["auth"], "digest-md5", "{status}");
    assert!(!status["source"]["url"].as_str().unwrap().contains("admin:"), "{status}");
    assert_no_secret(&server, "cams/a", "s3cr").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gst_camera_basic_auth() {
    let camera = Camera::gst(0, &["--user", "viewer", "--password", "pw0rd"]);
    let server = server(&camera.url(Some("viewer:pw0rd")), "", "");
    let p = blocking_probe(server.flv_url("cams/a")).await.unwrap();
    p.assert_h264_aac(W, H, 30);
    let status = server.wait_state("cams/a", "live").await;
    assert_eq!(status["source"]["auth"], "basic", "{status}");
    assert_no_secret(&server, "cams/a", "pw0rd").await;
}

/// Transport chosen for (camera options, `source_transport`): auto on a TCP-only camera
/// (UDP SETUP refused with 461) falls back to TCP and says why.
#[tokio::test(flavor = "multi_thread")]
async fn gst_camera_transports() {
    for (cam_opts, transport, want) in [
        (&[][..], "udp", "udp"),
        (&[][..], "tcp", "tcp"),
        (&["--tcp-only"][..], "auto", "tcp"),
        (&["--tcp-only"][..], "tcp", "tcp"),
    ] {
        let camera = Camera::gst(0, cam_opts);
        let server = server(&camera.url(None), &format!("source_transport = \"{transport}\""), "");
        let p = blocking_probe(server.flv_url("cams/a")).await.unwrap();
        p.assert_h264_aac(W, H, 30);
        let status = server.wait_state("cams/a", "live").await;
        assert_eq!(status["source"]["transport"], want, "{cam_opts:?} {transport}: {status}");
        if cam_opts.contains(&"--tcp-only") && transport == "auto" {
            let log = server.log_text();
            assert!(
                log.contains("461") || status.to_string().contains("461"),
                "auto fell back to TCP without saying why (461): {status}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gst_camera_restart_survived_by_reader() {
    let port = free_port();
    let camera = Camera::gst(port, &[]);
    let server = server(&camera.url(None), "", "");
    let viewer = FlvReader::start(&server.flv_url("cams/a"));
    viewer.wait_bytes(50_000, "the stream").await;
    server.wait_state("cams/a", "live").await;

    // Power cut: the source notices, retries and counts the failed tries.
    camera.kill();
    let waiting = server
        .wait_status("cams/a", "retrying after the camera vanished", |v| v["source"]["retries"].as_u64() >= Some(1))
        .await;
    assert_ne!(waiting["source"]["state"], "live", "{waiting}");
    assert!(waiting["source"]["last_error"].is_string(), "{waiting}");
    assert!(!viewer.ended(), "the reader was dropped within the grace period");

    let mut camera = Camera::gst(port, &[]);
    let before = viewer.bytes();
    server.wait_state("cams/a", "live").await;
    camera.wait_line(|l| l == "play", "PLAY after the restart");
    viewer.wait_bytes(before + 100_000, "frames after the camera restarted").await;

    // A new reader gets the stream too.
    let p = blocking_probe(server.flv_url("cams/a")).await.unwrap();
    p.assert_h264_aac(W, H, 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn gst_camera_source_stops_after_last_reader() {
    let mut camera = Camera::gst(0, &[]);
    let server = server(&camera.url(None), "source_close_after_ms = 500", "");
    let p = blocking_probe(server.flv_url("cams/a")).await.unwrap();
    p.assert_h264_aac(W, H, 30);
    // The reader left: after close_after_ms the source closes its session.
    let status = server.wait_state("cams/a", "idle").await;
    assert_eq!(status["readers"].as_u64().unwrap_or(0), 0, "{status}");
    camera.wait_line(|l| l == "teardown" || l == "closed", "the client leaving");
    assert!(camera.count(|l| l == "teardown") >= 1, "no TEARDOWN sent: {:?}", camera.lines());

    // And a new reader starts it again.
    let p = blocking_probe(server.flv_url("cams/a")).await.unwrap();
    p.assert_h264_aac(W, H, 30);
    assert_eq!(camera.count(|l| l == "play"), 2, "{:?}", camera.lines());
}

#[tokio::test(flavor = "multi_thread")]
async fn gst_camera_wrong_password_reported_without_it() {
    let camera = Camera::gst(0, &["--user", "admin", "--password", "right"]);
    let server = server(&camera.url(Some("admin:wr0ng%40pw")), "source_on_demand = false", "");
    let status = server
        .wait_status("cams/a", "failing with 401", |v| {
            v["source"]["last_error"].as_str().is_some_and(|e| e.contains("401"))
                && v["source"]["retries"].as_u64() >= Some(1)
        })
        .await;
    assert_ne!(status["source"]["state"], "live", "{status}");
    assert_eq!(status["source"]["on_demand"], false, "{status}");
    assert_eq!(status["live"], false, "{status}");
    assert_no_secret(&server, "cams/a", "wr0ng").await;
    drop(camera);
}

/// An HLS player alone (no RTMP/RTSP/FLV viewer) starts an on-demand source: its playlist
/// requests count as demand, and the playlist comes once the camera is live.
#[tokio::test(flavor = "multi_thread")]
async fn gst_camera_hls_player_alone_starts_the_source() {
    let camera = Camera::gst(0, &[]);
    let server = server(&camera.url(None), "source_close_after_ms = 30000", "");
    server.wait_state("cams/a", "idle").await;
    let playlist = format!("http://{}/cams/a/index.m3u8", server.http);
    let deadline = std::time::Instant::now() + WAIT;
    while http_get(&playlist, "").await.status != 200 {
        let (_, status) = server.path_status("cams/a").await;
        assert!(std::time::Instant::now() < deadline, "no HLS playlist from an HLS request alone: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let status = server.wait_state("cams/a", "live").await;
    assert_eq!(status["source"]["on_demand"], true, "{status}");
    let p = tokio::task::spawn_blocking(move || probe(&playlist, 4)).await.unwrap();
    let v = p.codec("video").unwrap_or_else(|| panic!("no video over HLS: {:?}\n{}", p.streams, p.stderr));
    assert_eq!((v["codec_name"].as_str(), v["width"].as_i64(), v["height"].as_i64()), (Some("h264"), Some(W), Some(H)));
    assert_eq!(p.codec("audio").map(|a| a["codec_name"].clone()), Some(Value::from("aac")), "{}", p.stderr);
    assert!(p.packets_of("video").len() >= 30, "{} HLS video packets", p.packets_of("video").len());
}

/// The reader that starts an on-demand source is an RTSP client: its DESCRIBE waits for the
/// camera and answers with both tracks, and it plays.
#[tokio::test(flavor = "multi_thread")]
async fn gst_camera_first_reader_over_rtsp() {
    let camera = Camera::gst(0, &[]);
    let server = server(&camera.url(None), "", "");
    server.wait_state("cams/a", "idle").await;
    let p = rtsp_probe(server.rtsp_url("cams/a")).await.unwrap();
    p.assert_rtsp("h264", W, H, 30);
}

/// A TCP-only camera with `source_transport = "udp"`: no fallback, a clear error (its SETUP
/// answered 461) and retries.
#[tokio::test(flavor = "multi_thread")]
async fn gst_camera_tcp_only_forced_udp_fails_clearly() {
    let camera = Camera::gst(0, &["--tcp-only"]);
    let server = server(&camera.url(None), "source_on_demand = false\nsource_transport = \"udp\"", "");
    let status = server
        .wait_status("cams/a", "failing with 461", |v| {
            v["source"]["last_error"].as_str().is_some_and(|e| e.contains("SETUP") && e.contains("461"))
                && v["source"]["retries"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(status["live"], false, "{status}");
    assert_ne!(status["source"]["transport"], "tcp", "{status}");
}
