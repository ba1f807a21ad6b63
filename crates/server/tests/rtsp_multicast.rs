//! UDP multicast, in a network namespace the test makes (multicast stays off real networks):
//! two multicast readers share one group while a TCP and a UDP unicast reader read the same
//! path.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Starts the server and a looping RTMP publisher of `live/mc` in `ns`, and waits until the
/// stream is readable over RTSP.
async fn serve_in(ns: &Netns) -> (Proc, Proc) {
    require("ffmpeg");
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
    let publisher = Proc(publisher.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    // Published once a short read succeeds (machines under load start ffmpeg slowly).
    for _ in 0..30 {
        let ns = ns.0.clone();
        let p = tokio::task::spawn_blocking(move || {
            probe_in(Some(&ns), "rtsp://127.0.0.1:8554/live/mc", 1, &["-rtsp_transport", "tcp"])
        })
        .await
        .unwrap();
        if p.codec("video").is_some() {
            return (server, publisher);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the stream was never published inside the namespace");
}

#[tokio::test(flavor = "multi_thread")]
async fn multicast_and_unicast_readers_of_one_path() {
    let ns = Netns::new("test");
    let (server, _publisher) = serve_in(&ns).await;
    let name = ns.0.clone();
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
        let mut p = r.await.unwrap();
        p.stderr = format!("[{transport}] {}", p.stderr);
        assert!(!p.streams.is_empty(), "{}", p.stderr);
        p.assert_rtsp_from("h264", 320, 240, 90, !transport.contains("multicast"));
    }
    drop(server);
}

/// GStreamer, a second player, decodes both tracks of a multicast stream.
#[tokio::test(flavor = "multi_thread")]
async fn gstreamer_decodes_both_multicast_tracks() {
    require_gst("rtspsrc");
    require_gst("avdec_h264");
    let ns = Netns::new("test");
    let (_server, _publisher) = serve_in(&ns).await;
    let name = ns.0.clone();
    let pipeline = "rtspsrc location=rtsp://127.0.0.1:8554/live/mc protocols=udp-mcast name=s \
        s. ! rtph264depay ! h264parse ! avdec_h264 ! fakesink num-buffers=60 sync=false \
        s. ! rtpmp4gdepay ! aacparse ! avdec_aac ! fakesink num-buffers=60 sync=false";
    let failed = tokio::task::spawn_blocking(move || gst_in(Some(&name), pipeline)).await.unwrap();
    assert!(failed.is_none(), "{}", failed.unwrap_or_default());
}

/// One RTSP request on `c`; the response's head and body.
fn request(c: &mut TcpStream, req: &str) -> (String, String) {
    c.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "connection closed mid-response");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    assert!(head.starts_with("RTSP/1.0 200"), "{req}\n->\n{head}");
    let len = header(&head, "Content-Length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

/// A `key=value` parameter of a Transport header.
fn param<'a>(transport: &'a str, key: &str) -> &'a str {
    transport.split(';').find_map(|p| p.strip_prefix(key).and_then(|r| r.strip_prefix('='))).unwrap()
}

/// Players bind one socket per track at the port SETUP gave it and take whatever arrives
/// there as that track: each track must have a port of its own, carrying only its packets.
#[tokio::test(flavor = "multi_thread")]
async fn each_multicast_track_has_its_own_port() {
    let ns = Netns::new("test");
    let (_server, _publisher) = serve_in(&ns).await;
    let name = ns.0.clone();
    // A thread of its own enters the namespace (setns applies to the calling thread).
    let seen = std::thread::spawn(move || {
        let netns = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
        nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut c = TcpStream::connect("127.0.0.1:8554").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let url = "rtsp://127.0.0.1:8554/live/mc";
        let (_, sdp) =
            request(&mut c, &format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n"));
        assert!(sdp.contains("trackID=0") && sdp.contains("trackID=1"), "{sdp}");
        let mut session = String::new();
        let mut sockets = Vec::new();
        for (i, track) in ["trackID=0", "trackID=1"].iter().enumerate() {
            let with_session = if session.is_empty() { String::new() } else { format!("Session: {session}\r\n") };
            let (head, _) = request(
                &mut c,
                &format!(
                    "SETUP {url}/{track} RTSP/1.0\r\nCSeq: {}\r\n{with_session}Transport: RTP/AVP;multicast\r\n\r\n",
                    i + 2
                ),
            );
            session = header(&head, "Session").unwrap().split(';').next().unwrap().to_owned();
            let transport = header(&head, "Transport").unwrap();
            let group: Ipv4Addr = param(transport, "destination").parse().unwrap();
            let port: u16 = param(transport, "port").split('-').next().unwrap().parse().unwrap();
            assert!(sockets.iter().all(|(p, _)| *p != port), "video and audio share port {port}");
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
            s.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            sockets.push((port, s));
        }
        request(&mut c, &format!("PLAY {url} RTSP/1.0\r\nCSeq: 4\r\nSession: {session}\r\n\r\n"));
        // (payload type, SSRC) of what each track's port received, and how many packets.
        let mut seen = vec![(BTreeSet::new(), 0usize); sockets.len()];
        let end = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            for ((_, s), (ids, n)) in sockets.iter().zip(seen.iter_mut()) {
                if let Ok(len) = s.recv(&mut buf) {
                    assert!(len >= 12, "a {len}-byte RTP packet");
                    ids.insert((buf[1] & 0x7f, u32::from_be_bytes(buf[8..12].try_into().unwrap())));
                    *n += 1;
                }
            }
        }
        seen
    })
    .join()
    .unwrap();
    for (track, (ids, n)) in ["video", "audio"].iter().zip(&seen) {
        assert!(*n >= 20, "{track}: only {n} packets in 3 s");
        assert_eq!(ids.len(), 1, "{track}'s port carries more than one source: {ids:?}");
    }
    assert_ne!(seen[0].0, seen[1].0, "both ports carry the same source");
}
