//! GStreamer as a second, independent RTSP implementation: rtspsrc plays over TCP and UDP,
//! rtspclientsink publishes (ANNOUNCE/RECORD) and ffprobe reads the result over RTMP.

mod common;

use std::process::{Command, Stdio};

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn rtspsrc_plays_over_tcp_and_udp() {
    require_gst("rtspsrc");
    require_gst("avdec_h264");
    let server = Server::start();
    let _publisher = publish(test_flv(), &server.rtmp_url("live/gst"));
    wait_published(&server, "live/gst").await;
    for proto in ["tcp", "udp"] {
        let pipeline = format!(
            "rtspsrc location={} protocols={proto} ! rtph264depay ! h264parse ! avdec_h264 ! fakesink num-buffers=60",
            server.rtsp_url("live/gst")
        );
        let failed = tokio::task::spawn_blocking(move || gst_in(None, &pipeline)).await.unwrap();
        assert!(failed.is_none(), "GStreamer did not decode 60 frames over {proto}: {}", failed.unwrap_or_default());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rtspclientsink_publishes() {
    require_gst("rtspclientsink");
    require_gst("x264enc");
    let server = Server::start();
    let pipeline = format!(
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 ! x264enc tune=zerolatency key-int-max=30 ! h264parse ! rtspclientsink location={} protocols=tcp",
        server.rtsp_url("gst/pub")
    );
    let mut child = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_published(&server, "gst/pub").await;
    let url = server.rtmp_url("gst/pub");
    let p = tokio::task::spawn_blocking(move || probe(&url, 3)).await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v = p.codec("video").unwrap_or_else(|| panic!("{:?} {}", p.streams, p.stderr));
    assert_eq!(
        (v["codec_name"].as_str(), v["width"].as_i64(), v["height"].as_i64()),
        (Some("h264"), Some(320), Some(240))
    );
    let video = p.packets_of("video");
    assert!(video.len() >= 60, "{} packets", video.len());
    assert!(video[0].1, "starts on a keyframe");
    assert!(video.windows(2).all(|w| w[1].0 >= w[0].0), "dts monotonic");
}
