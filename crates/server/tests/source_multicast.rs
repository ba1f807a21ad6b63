//! A source pulled over RTSP multicast, in a network namespace the test makes (multicast
//! stays off real networks): an upstream ferrocast that ffmpeg publishes to sends the stream
//! to a multicast group; a second ferrocast pulls it with `source_transport = "multicast"`
//! (joining the group the SETUP answer names), and ffprobe reads the pulled path.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_source_pulled_over_multicast_is_read() {
    require("ffmpeg");
    let ns = Netns::new("pull");
    // The upstream on the default ports (the namespace is private).
    let upstream = Proc(
        command_in(Some(&ns.0), env!("CARGO_BIN_EXE_ferrocast"))
            .args(["--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let cfg = std::env::temp_dir().join(format!("ferrocast-pull-mc-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        "[rtmp]\nlisten = \"127.0.0.1:1936\"\n[http]\nlisten = \"127.0.0.1:8081\"\n\
         [rtsp]\nlisten = \"127.0.0.1:8555\"\nrtp_port = 8010\nrtcp_port = 8011\n\
         [paths.\"cams/mc\"]\nsource = \"rtsp://127.0.0.1:8554/live/mc\"\nsource_transport = \"multicast\"\n",
    )
    .unwrap();
    let puller = Proc(
        command_in(Some(&ns.0), env!("CARGO_BIN_EXE_ferrocast"))
            .arg("--config")
            .arg(&cfg)
            .args(["--log-level", "debug"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut publisher = command_in(Some(&ns.0), "ffmpeg");
    publisher.args(["-v", "error", "-nostdin", "-re", "-stream_loop", "-1", "-i"]).arg(test_flv()).args([
        "-c",
        "copy",
        "-f",
        "flv",
        "rtmp://127.0.0.1:1935/live/mc",
    ]);
    let _publisher = Proc(publisher.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    // The pulled path, read once the upstream has the stream (ffmpeg starts slowly under load).
    let mut last = None;
    for _ in 0..30 {
        let name = ns.0.clone();
        let p = tokio::task::spawn_blocking(move || probe_in(Some(&name), "http://127.0.0.1:8081/cams/mc.flv", 3, &[]))
            .await
            .unwrap();
        if p.codec("video").is_some() {
            last = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let p = last.expect("the multicast-pulled path was never readable");
    p.assert_h264_aac(320, 240, 30);
    // It came over multicast, not a fallback: the puller's API says so.
    let out = command_in(Some(&ns.0), "/usr/bin/python3")
        .args([
            "-c",
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8081/api/v1/paths/cams/mc').read().decode())",
        ])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the puller's path status");
    assert_eq!(status["source"]["transport"], "multicast", "{status}");
    drop(puller);
    drop(upstream);
}
