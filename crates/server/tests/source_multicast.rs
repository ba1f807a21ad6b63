//! A source pulled over RTSP multicast, in a network namespace the test makes (multicast
//! stays off real networks): an upstream ferrocast that ffmpeg publishes to sends the stream
//! to a multicast group; a second ferrocast pulls it with `source_transport = "multicast"`
//! (joining the group the SETUP answer names), and ffprobe reads the pulled path.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A network namespace with only loopback, multicast routed to it; removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("ferrocast-pull-{}", std::process::id());
        let run = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().is_ok_and(|s| s.success());
            assert!(ok, "`ip {}` failed: the multicast test needs root and iproute2", args.join(" "));
        };
        run(&["netns", "add", &name]);
        let ns = Netns(name);
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "set", "lo", "multicast", "on"],
            &["route", "add", "224.0.0.0/4", "dev", "lo"],
        ] {
            let mut full = vec!["netns", "exec", &ns.0, "ip"];
            full.extend_from_slice(args);
            run(&full);
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "pids", &self.0]).output().map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_pulled_over_multicast_is_read() {
    require("ffmpeg");
    let ns = Netns::new();
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
