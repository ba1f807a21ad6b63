//! UDP multicast, in a network namespace the test makes (multicast stays off real networks):
//! two multicast readers share one group while a TCP and a UDP unicast reader read the same
//! path.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// A network namespace with only loopback, multicast routed to it; removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("ferrocast-test-{}", std::process::id());
        let run = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().is_ok_and(|s| s.success());
            assert!(
                ok,
                "`ip {}` failed: the multicast test needs root and iproute2 (./scripts/test installs it)",
                args.join(" ")
            );
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

    fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
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
async fn multicast_and_unicast_readers_of_one_path() {
    require("ffmpeg");
    let ns = Netns::new();
    let mut server = ns.exec(env!("CARGO_BIN_EXE_ferrocast"));
    let server =
        Proc(server.args(["--log-level", "info"]).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap());
    // The namespace is private: default ports are free.
    let mut publisher = ns.exec("ffmpeg");
    publisher.args(["-v", "error", "-nostdin", "-re", "-stream_loop", "-1", "-i"]).arg(test_flv()).args([
        "-c",
        "copy",
        "-f",
        "flv",
        "rtmp://127.0.0.1:1935/live/mc",
    ]);
    let _publisher = Proc(publisher.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let name = ns.0.clone();
    // Published once a short read succeeds (machines under load start ffmpeg slowly).
    let mut up = false;
    for _ in 0..30 {
        let ns = name.clone();
        let p = tokio::task::spawn_blocking(move || {
            probe_in(Some(&ns), "rtsp://127.0.0.1:8554/live/mc", 1, &["-rtsp_transport", "tcp"])
        })
        .await
        .unwrap();
        if p.codec("video").is_some() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert!(up, "the stream was never published inside the namespace");
    let mut readers = Vec::new();
    for transport in ["udp_multicast", "udp_multicast", "tcp", "udp"] {
        let ns = name.clone();
        readers.push((
            transport,
            tokio::task::spawn_blocking(move || {
                probe_in(Some(&ns), "rtsp://127.0.0.1:8554/live/mc", 4, &["-rtsp_transport", transport])
            }),
        ));
    }
    for (transport, r) in readers {
        let p = r.await.unwrap();
        assert!(!p.streams.is_empty(), "{transport}: {}", p.stderr);
        p.assert_rtsp_from("h264", 320, 240, 90, !transport.contains("multicast"));
    }
    drop(server);
}
