//! GStreamer as a second, independent RTSP implementation: rtspsrc plays over TCP and UDP,
//! rtspclientsink publishes (ANNOUNCE/RECORD) and ffprobe reads the result over RTMP.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn require_gst(element: &str) {
    let ok = Command::new("gst-inspect-1.0")
        .arg(element)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "GStreamer element {element} is required: run ./scripts/test (it installs Debian's GStreamer packages)"
    );
}

/// Runs a pipeline to completion (a bounded number of buffers), with a guard: None on
/// success, else what went wrong (GStreamer's messages).
fn gst(pipeline: &str) -> Option<String> {
    let mut child = Command::new("gst-launch-1.0")
        .args(pipeline.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gst-launch-1.0");
    // Drain both pipes while it runs (a full pipe would stall it); keep the tail.
    let tail = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut text);
            }
            text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        })
    };
    let out = tail(child.stdout.take().map(|r| Box::new(r) as Box<dyn std::io::Read + Send>));
    let err = tail(child.stderr.take().map(|r| Box::new(r) as Box<dyn std::io::Read + Send>));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    match status {
        Some(s) if s.success() => None,
        Some(s) => Some(format!("{s}\n{out}\n{err}")),
        None => Some(format!("no end within 30 s\n{out}\n{err}")),
    }
}

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
        let failed = tokio::task::spawn_blocking(move || gst(&pipeline)).await.unwrap();
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
