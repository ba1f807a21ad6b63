//! Push relays with real peers on loopback: one ferrocast pushing to another over RTMP and
//! RTSP, and to nginx-rtmp (Debian's libnginx-mod-rtmp) restarted mid-stream; ffprobe reads
//! what the targets got.

mod common;
#[path = "common/push.rs"]
mod push_support;

use common::{Server, free_port, probe, publish, test_flv, wait_published};
use push_support::{Nginx, push_status, test_dir, wait_readable, wait_status};

#[tokio::test(flavor = "multi_thread")]
async fn push_to_another_ferrocast_over_rtmp_and_rtsp() {
    let target = Server::start();
    let source = Server::with_config(&format!(
        "[paths.\"live/*\"]\npush = [\"rtmp://{}/live/by_rtmp\", \"rtsp://{}/live/by_rtsp\"]\n",
        target.rtmp, target.rtsp
    ));
    let _publisher = publish(test_flv(), &source.rtmp_url("live/src"));
    wait_published(&target, "live/by_rtmp").await;
    wait_published(&target, "live/by_rtsp").await;
    for path in ["live/by_rtmp", "live/by_rtsp"] {
        let url = target.rtmp_url(path);
        let p = tokio::task::spawn_blocking(move || probe(&url, 3)).await.unwrap();
        p.assert_h264_aac(320, 240, 40);
    }
    // Read over RTSP too: what was pushed over RTSP is played back over RTSP.
    let url = target.rtsp_url("live/by_rtsp");
    let p =
        tokio::task::spawn_blocking(move || common::probe_with(&url, 3, &["-rtsp_transport", "tcp"])).await.unwrap();
    p.assert_rtsp("h264", 320, 240, 40);
    let status = push_status(&source, "live/src").await;
    assert_eq!(status.len(), 2, "{status:?}");
    for s in &status {
        assert_eq!(s["state"], "live", "{status:?}");
        assert!(s["bytes"].as_u64().unwrap() > 10_000, "{status:?}");
        assert!(s["live_since"].is_string(), "{status:?}");
        // Measured over 2 s windows: the test stream is a few hundred kbit/s.
        assert!(s["bitrate"].as_u64().unwrap() > 50_000, "{status:?}");
    }
    // Frames keep flowing: the byte count grows.
    let before: Vec<u64> = status.iter().map(|s| s["bytes"].as_u64().unwrap()).collect();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let after = push_status(&source, "live/src").await;
    for (i, s) in after.iter().enumerate() {
        assert!(s["bytes"].as_u64().unwrap() > before[i], "{after:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn push_to_nginx_rtmp_survives_its_restart() {
    let port = free_port();
    let mut nginx = Nginx::rtmp(&test_dir("nginx-restart"), port);
    // The stream key's query string is kept (nginx-rtmp takes it as the publish's args).
    let source = Server::with_config(&format!(
        "[source]\nretry_min_ms = 200\nretry_max_ms = 1000\nrequest_timeout_ms = 3000\n\
         [paths.\"live/cam\"]\npush = [\"rtmp://127.0.0.1:{port}/live/key?token=x\"]\n"
    ));
    let _publisher = publish(test_flv(), &source.rtmp_url("live/cam"));
    let read = format!("rtmp://127.0.0.1:{port}/live/key");
    let url = read.clone();
    tokio::task::spawn_blocking(move || wait_readable(&url)).await.unwrap();
    let url = read.clone();
    let p = tokio::task::spawn_blocking(move || probe(&url, 3)).await.unwrap();
    p.assert_h264_aac(320, 240, 40);
    let live = wait_status(&source, "live/cam", 0, "live", |s| s["state"] == "live").await;
    assert_eq!(live["url"], format!("rtmp://127.0.0.1:{port}/live/***?token=***"), "the key and the token are hidden");

    nginx.stop();
    let failed = wait_status(&source, "live/cam", 0, "counted a retry", |s| {
        s["retries"].as_u64() >= Some(1) && s["state"] != "live"
    })
    .await;
    let error = failed["last_error"].as_str().expect("last_error");
    assert!(!error.is_empty(), "{failed}");

    nginx.restart();
    wait_status(&source, "live/cam", 0, "live again", |s| s["state"] == "live").await;
    let url = read.clone();
    tokio::task::spawn_blocking(move || wait_readable(&url)).await.unwrap();
    let p = tokio::task::spawn_blocking(move || probe(&read, 3)).await.unwrap();
    p.assert_h264_aac(320, 240, 40);
    let s = push_status(&source, "live/cam").await;
    assert!(s[0]["last_error"].as_str().is_some_and(|e| !e.is_empty()), "the last error stays for the record: {s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_refused_says_the_step_and_the_answer_without_credentials() {
    let target = Server::start();
    // ferrocast refuses a publish under the reserved api/ with NetStream.Publish.BadName.
    let source = Server::with_config(&format!(
        "[source]\nretry_min_ms = 200\nretry_max_ms = 500\n\
         [paths.\"live/a\"]\npush = [\"rtmp://user:secret@{}/api/x\"]\n",
        target.rtmp
    ));
    let _publisher = publish(test_flv(), &source.rtmp_url("live/a"));
    let s = wait_status(&source, "live/a", 0, "refused", |s| s["last_error"].is_string()).await;
    let error = s["last_error"].as_str().unwrap();
    assert!(error.contains("publish answered NetStream.Publish.BadName"), "{s}");
    let all = serde_json::to_string(&push_status(&source, "live/a").await).unwrap();
    assert!(!all.contains("secret") && !all.contains("user:"), "{all}");
    assert!(all.contains("rtmp://***@"), "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_h265_from_an_rtsp_publisher_over_enhanced_rtmp_and_rtsp() {
    use ferrocast_rtmp::{ClientEvent, MediaKind};
    let target = Server::start();
    let source = Server::with_config(&format!(
        "[paths.\"in/hevc\"]\npush = [\"rtmp://{}/live/hevc_rtmp\", \"rtsp://{}/live/hevc_rtsp\"]\n",
        target.rtmp, target.rtsp
    ));
    // An RTSP publisher sends no onMetaData: the RTMP push makes one from the tracks.
    let _publisher = common::publish_rtsp(common::hevc_aac_mkv(), &source.rtsp_url("in/hevc"), "tcp");
    wait_published(&target, "live/hevc_rtmp").await;
    wait_published(&target, "live/hevc_rtsp").await;
    // ffmpeg 5.1 cannot read H.265 in FLV: the RTMP-pushed copy is read back over RTSP.
    for path in ["live/hevc_rtmp", "live/hevc_rtsp"] {
        let url = target.rtsp_url(path);
        let p = tokio::task::spawn_blocking(move || common::probe_with(&url, 3, &["-rtsp_transport", "tcp"]))
            .await
            .unwrap();
        p.assert_rtsp("hevc", 320, 240, 40);
    }
    let mut player = common::RtmpClient::connect(target.rtmp, "live/hevc_rtmp", false).await;
    let is_metadata = |e: &ClientEvent| {
        matches!(e, ClientEvent::Media(m) if m.kind == MediaKind::Data
            && ferrocast_rtmp::amf0::decode_all(&m.payload).is_ok_and(|v| v.iter().any(|v| v.as_str() == Some("onMetaData"))))
    };
    let seen = player.wait_for(is_metadata).await;
    let Some(ClientEvent::Media(m)) = seen.last() else { unreachable!() };
    let values = ferrocast_rtmp::amf0::decode_all(&m.payload).unwrap();
    let meta = values.iter().find(|v| v.get("videocodecid").is_some()).unwrap_or_else(|| panic!("{values:?}"));
    let num = |k: &str| meta.get(k).and_then(ferrocast_rtmp::amf0::Value::as_f64);
    assert_eq!(num("videocodecid"), Some(f64::from(u32::from_be_bytes(*b"hvc1"))), "{values:?}");
    assert_eq!((num("width"), num("height")), (Some(320.0), Some(240.0)), "{values:?}");
    assert_eq!(num("audiocodecid"), Some(10.0), "{values:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_over_rtsp_with_credentials_from_the_url() {
    // The target asks RTSP publishers for credentials (Digest); the password has an `@`.
    // The wrong push retries without end: the address's failures are not to block it here.
    let target = Server::with_config(
        "[auth]\nfail_limit = 100000\n[[auth.users]]\nuser = \"pusher\"\npass = \"p@ss\"\npermissions = [{ action = \"publish\" }]\n\
         [[auth.users]]\nuser = \"any\"\npermissions = [{ action = \"read\" }, { action = \"api\" }]\n",
    );
    let source = Server::with_config(&format!(
        "[source]\nretry_min_ms = 200\nretry_max_ms = 500\n\
         [paths.\"live/a\"]\npush = [\"rtsp://pusher:p%40ss@{0}/live/auth\", \"rtsp://pusher:wrong@{0}/live/denied\"]\n",
        target.rtsp
    ));
    let _publisher = publish(test_flv(), &source.rtmp_url("live/a"));
    wait_published(&target, "live/auth").await;
    let url = target.rtmp_url("live/auth");
    let p = tokio::task::spawn_blocking(move || probe(&url, 3)).await.unwrap();
    p.assert_h264_aac(320, 240, 40);
    let s = wait_status(&source, "live/a", 1, "refused", |s| s["last_error"].is_string()).await;
    assert!(s["last_error"].as_str().unwrap().starts_with("ANNOUNCE answered 401"), "{s}");
    let all = serde_json::to_string(&push_status(&source, "live/a").await).unwrap();
    for secret in ["p%40ss", "p@ss", "wrong", "pusher"] {
        assert!(!all.contains(secret), "{secret} in {all}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn push_stops_when_the_path_ends_and_starts_again_with_it() {
    let target = Server::start();
    let source = Server::with_config(&format!(
        "[hub]\nrepublish_grace_ms = 1000\n[paths.\"live/a\"]\npush = [\"rtmp://{}/live/copy\"]\n",
        target.rtmp
    ));
    let publisher = publish(test_flv(), &source.rtmp_url("live/a"));
    wait_published(&target, "live/copy").await;
    wait_status(&source, "live/a", 0, "live", |s| s["state"] == "live").await;
    // The publisher leaves for good: after the grace the push ends and the target's path with it.
    drop(publisher);
    wait_status(&source, "live/a", 0, "idle", |s| s["state"] == "idle" && s["bytes"] == 0).await;
    let flv = target.flv_url("live/copy");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while common::http_status(&flv).await == Some(200) {
        assert!(std::time::Instant::now() < deadline, "the target's path stayed");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A new publish of the path pushes again.
    let _publisher = publish(test_flv(), &source.rtmp_url("live/a"));
    wait_published(&target, "live/copy").await;
    wait_status(&source, "live/a", 0, "live again", |s| s["state"] == "live").await;
}
