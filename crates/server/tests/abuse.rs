//! Abuse and faults against the real binary: garbage at every listener, idle and trickling
//! connections, killed publishers, half of a crowd of readers stalling. Each test ends by
//! checking that normal ffmpeg readers are still served.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use ferrocast_rtmp::client::ClientEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// ffprobe reads `path` (the 320x240 test stream) over RTMP, HTTP-FLV and RTSP (TCP), each
/// for 2 s, all at once.
async fn assert_served(server: &Server, path: &str) {
    assert_served_size(server, path, (320, 240)).await
}

async fn assert_served_size(server: &Server, path: &str, (w, h): (i64, i64)) {
    let urls = [server.rtmp_url(path), server.flv_url(path), server.rtsp_url(path)];
    let probes: Vec<_> = urls
        .into_iter()
        .map(|url| {
            tokio::task::spawn_blocking(move || {
                let p = probe_with(&url, 2, &["-rtsp_transport", "tcp"]);
                (url, p)
            })
        })
        .collect();
    for p in probes {
        let (url, p) = p.await.unwrap();
        if url.starts_with("rtsp") {
            p.assert_rtsp("h264", w, h, 20);
        } else {
            p.assert_h264_aac(w, h, 20);
        }
    }
}

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// `seed` with about one byte in `one_in` replaced, and cut at a random point.
    fn mutate(&mut self, seed: &[u8], one_in: usize) -> Vec<u8> {
        let mut v = seed.to_vec();
        for b in v.iter_mut() {
            if self.below(one_in) == 0 {
                *b = self.next() as u8;
            }
        }
        let keep = seed.len() / 2 + self.below(seed.len() / 2 + 1);
        v.truncate(keep);
        v
    }
}

/// Sends `data`, then reads whatever comes back until the server closes or 5 s pass.
async fn throw(addr: SocketAddr, data: Vec<u8>) {
    let Ok(mut s) = TcpStream::connect(addr).await else { return };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = s.write_all(&data).await;
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A free UDP port pair (even, odd) on loopback.
async fn free_udp_pair() -> u16 {
    loop {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = a.local_addr().unwrap().port();
        if port % 2 == 0 && port < 65534 && UdpSocket::bind(("127.0.0.1", port + 1)).await.is_ok() {
            return port;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_and_mutated_bytes_at_every_listener() {
    let rtp = free_udp_pair().await;
    let server = Server::with_config(&format!("[rtsp]\nrtp_port = {rtp}\nrtcp_port = {}\n", rtp + 1));
    let _publisher = publish(test_flv(), &server.rtmp_url("live/target"));
    wait_published(&server, "live/target").await;

    let rtmp_seed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../rtmp/testdata/ffmpeg5.1_publish_start.bin"))
        .expect("RTMP capture");
    let rtsp_seed =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../rtsp/testdata/ffmpeg5.1_announce_h264_aac.txt"))
            .expect("RTSP capture");
    let http_seed = b"GET /live/target.flv HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes=0-\r\nConnection: keep-alive\r\n\r\nGET /live/target/index.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let mut rng = Rng(0x5eed_f00d);
    let mut tasks = Vec::new();
    for (addr, seed) in [(server.rtmp, &rtmp_seed), (server.rtsp, &rtsp_seed), (server.http, &http_seed)] {
        for i in 0..40 {
            let data = match i % 3 {
                0 => {
                    let n = 1 + rng.below(64 * 1024);
                    rng.bytes(n)
                }
                1 => rng.mutate(seed, 50),
                _ => rng.mutate(seed, 500),
            };
            tasks.push(tokio::spawn(throw(addr, data)));
        }
    }
    // The RTSP server's UDP ports: RTP and RTCP datagrams from strangers.
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..2000 {
        let n = rng.below(1500);
        let mut d = rng.bytes(n);
        if i % 2 == 0 && d.len() >= 12 {
            d[0] = 0x80 | (d[0] & 0x3f); // version 2: past the first check
        }
        let port = if i % 3 == 0 { rtp + 1 } else { rtp };
        let _ = udp.send_to(&d, ("127.0.0.1", port)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut server = server;
    assert!(server.alive(), "server died");
    assert_served(&server, "live/target").await;
}

/// Opens `n` connections spread over the three TCP listeners; none of them sends a byte.
async fn idle_connections(server: &Server, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let addr = [server.rtmp, server.rtsp, server.http][i % 3];
        v.push(TcpStream::connect(addr).await.expect("connect"));
    }
    v
}

/// Reads until the peer closes; true if it did before `deadline`.
async fn closed_by(s: &mut TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_idle_connections_do_not_keep_readers_out() {
    // One socket each side per connection: more than the usual soft limit of 1024.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // Default timeouts (10 s for a first request); the connections all come from one address.
    let server = Server::with_config("[limits]\nmax_connections_per_ip = 2000\n");
    let _publisher = publish(test_flv(), &server.rtmp_url("live/idle"));
    wait_published(&server, "live/idle").await;
    let opened = Instant::now();
    let mut idle = idle_connections(&server, 1000).await;
    assert_served(&server, "live/idle").await;
    let served_after = opened.elapsed();
    // The defaults then close every one of them: a silent connection holds nothing for long.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut open = 0;
    for s in &mut idle {
        if !closed_by(s, deadline).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "idle connections the server never closed");
    eprintln!(
        "readers served {served_after:?} after opening 1000 idle connections; all closed after {:?}",
        opened.elapsed()
    );
}

/// Sends `request` one byte a second; returns how many bytes went out before the server
/// closed the connection (None: never closed within the request's length).
async fn trickle(addr: SocketAddr, request: Vec<u8>) -> Option<usize> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 4096];
    for (i, b) in request.iter().enumerate() {
        if s.write_all(&[*b]).await.is_err() {
            return Some(i);
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(until, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(i + 1),
                Ok(Ok(_)) => {}
                Err(_) => break,
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn one_byte_per_second_clients_are_cut_off() {
    let server = Server::with_config(
        "[rtmp]\nhandshake_timeout_ms = 3000\n[rtsp]\nrequest_timeout_ms = 3000\n[http]\nrequest_timeout_ms = 3000\n",
    );
    let _publisher = publish(test_flv(), &server.rtmp_url("live/slow"));
    wait_published(&server, "live/slow").await;
    let mut rtmp_request = vec![3u8];
    rtmp_request.extend(std::iter::repeat_n(0u8, 1536));
    let rtsp_request = format!(
        "OPTIONS rtsp://{}/live/slow RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: {}\r\n\r\n",
        server.rtsp,
        "a".repeat(60)
    );
    let http_request = format!("GET /live/slow.flv HTTP/1.1\r\nHost: x\r\nUser-Agent: {}\r\n\r\n", "a".repeat(60));
    let slow = [
        ("rtmp", tokio::spawn(trickle(server.rtmp, rtmp_request))),
        ("rtsp", tokio::spawn(trickle(server.rtsp, rtsp_request.into_bytes()))),
        ("http", tokio::spawn(trickle(server.http, http_request.into_bytes()))),
    ];
    // Served while the trickling clients hang on.
    assert_served(&server, "live/slow").await;
    for (what, t) in slow {
        let sent = t.await.unwrap();
        let sent = sent.unwrap_or_else(|| panic!("{what}: a one-byte-a-second client was never cut off"));
        // 3 s timeout at one byte a second; far less than the whole request got through.
        assert!(sent < 30, "{what}: cut off only after {sent} bytes");
        eprintln!("{what}: cut off after {sent} bytes");
    }
    let mut server = server;
    assert!(server.alive());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkilled_publisher_is_replaced_and_readers_carry_on() {
    let server = Server::start();
    let url = server.rtmp_url("live/kill");
    let mut first = publish(test_flv(), &url);
    wait_published(&server, "live/kill").await;
    let flv_url = server.flv_url("live/kill");
    let reader = tokio::task::spawn_blocking(move || probe(&flv_url, 9));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // SIGKILL: no FCUnpublish, no deleteStream, most likely in the middle of a message.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let killed_at = Instant::now();
    // The path is free at once: a new publisher is accepted on its first try.
    let mut second = RtmpClient::connect(server.rtmp, "live/kill", true).await;
    let events =
        second.wait_for(|e| matches!(e, ClientEvent::Publishing | ClientEvent::Status { level: _, code: _ })).await;
    assert!(events.contains(&ClientEvent::Publishing), "replacement refused: {events:?}");
    eprintln!("replacement publishing {:?} after the kill", killed_at.elapsed());
    let file = test_flv().to_path_buf();
    let feeding = tokio::spawn(async move { second.publish_file(&file, 2).await });
    // The reader of the killed publisher carried on with the new one (republish grace).
    let p = reader.await.unwrap();
    p.assert_h264_aac(320, 240, 150);
    let video = p.packets_of("video");
    assert!(video.last().unwrap().0 - video[0].0 > 7.0, "the reader stopped at the kill");
    feeding.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn publisher_gone_mid_chunk_frees_the_path() {
    let server = Server::start();
    let mut first = RtmpClient::connect(server.rtmp, "live/cut", true).await;
    first.wait_for(|e| *e == ClientEvent::Publishing).await;
    // A video message header announcing 200 KB on chunk stream 6, then a few bytes of it,
    // then the connection is gone.
    let mut partial = vec![0x06, 0, 0, 0, 0x03, 0x0d, 0x40, 9, 1, 0, 0, 0];
    partial.extend_from_slice(&[0x17, 1, 0, 0, 0, 0, 0, 0x10]);
    first.socket.write_all(&partial).await.unwrap();
    drop(first);
    let mut second = RtmpClient::connect(server.rtmp, "live/cut", true).await;
    let events = second.wait_for(|e| matches!(e, ClientEvent::Publishing | ClientEvent::Status { .. })).await;
    assert!(events.contains(&ClientEvent::Publishing), "replacement refused: {events:?}");
    let file = test_flv().to_path_buf();
    let feeding = tokio::spawn(async move { second.publish_file(&file, 3).await });
    wait_published(&server, "live/cut").await;
    let url = server.rtmp_url("live/cut");
    tokio::task::spawn_blocking(move || probe(&url, 2)).await.unwrap().assert_h264_aac(320, 240, 30);
    feeding.abort();
}

/// Parses FLV tags from an HTTP-FLV response as they come: (video dts in ms) per video tag.
async fn read_flv_video(mut s: TcpStream, until: tokio::time::Instant) -> Vec<u32> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut pos = None; // offset of the next tag header once the HTTP head and FLV header are past
    let mut out = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout_at(until, s.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if pos.is_none()
            && let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
        {
            pos = Some(end + 4 + 9 + 4); // HTTP head, FLV header, PreviousTagSize0
        }
        let Some(p) = pos.as_mut() else { continue };
        while buf.len() >= *p + 11 {
            let h = &buf[*p..*p + 11];
            let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
            if buf.len() < *p + 11 + size + 4 {
                break;
            }
            let ts = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
            if h[0] == 9 && buf[*p + 11] & 0x0f == 7 && buf[*p + 12] == 1 {
                out.push(ts);
            }
            *p += 11 + size + 4;
        }
        // Keep the buffer small: drop what was parsed.
        if *p > 1 << 20 {
            buf.drain(..*p);
            *p = 0;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn half_of_a_hundred_readers_stall_the_rest_get_every_frame() {
    let server = Server::start();
    let _publisher = publish(heavy_flv(), &server.rtmp_url("live/crowd"));
    wait_published(&server, "live/crowd").await;
    // HTTP/1.0: the body comes unchunked, plain FLV to the end.
    let request = format!("GET /live/crowd.flv HTTP/1.0\r\nHost: {}\r\n\r\n", server.http);
    let until = tokio::time::Instant::now() + Duration::from_secs(14);
    let mut stalled = Vec::new();
    let mut active = Vec::new();
    for i in 0..100 {
        // Stalled readers: a 4 KiB receive buffer and nobody reading, half RTMP, half HTTP-FLV.
        let sock = TcpSocket::new_v4().unwrap();
        if i % 2 == 1 {
            sock.set_recv_buffer_size(4096).unwrap();
        }
        let addr = if i % 4 == 1 { server.rtmp } else { server.http };
        let mut s = sock.connect(addr).await.unwrap();
        match i % 4 {
            1 => {
                let mut c = RtmpClient::connect_socket(s, server.rtmp, "live/crowd", false).await;
                c.wait_for(|e| *e == ClientEvent::Playing).await;
                stalled.push(c.socket);
            }
            3 => {
                s.write_all(request.as_bytes()).await.unwrap();
                stalled.push(s);
            }
            _ => {
                s.write_all(request.as_bytes()).await.unwrap();
                active.push(tokio::spawn(read_flv_video(s, until)));
            }
        }
    }
    let mut frames_seen = Vec::new();
    for (i, a) in active.into_iter().enumerate() {
        let ts = a.await.unwrap();
        // From its first keyframe on, a reader that keeps up sees every frame: 30 fps, so no
        // gap over 100 ms in the stream's time. A skip to the next keyframe would be >= 1 s.
        let gaps: Vec<u32> = ts.windows(2).map(|w| w[1].wrapping_sub(w[0])).filter(|g| *g > 100).collect();
        assert!(gaps.is_empty(), "active reader {i} lost frames: gaps {gaps:?} ms");
        assert!(ts.len() > 150, "active reader {i} got only {} frames", ts.len());
        frames_seen.push(ts.len());
    }
    eprintln!("50 active readers beside 50 stalled: frames each {frames_seen:?}");
    drop(stalled);
    assert_served_size(&server, "live/crowd", (640, 360)).await;
}

/// Sends raw bytes to the HTTP listener; the status of the first response and whether the
/// server then closed the connection (within 5 s), and the whole response text.
async fn http_raw(addr: SocketAddr, request: &[u8]) -> (Option<u16>, bool, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok());
    (status, closed, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn http_heads_bodies_and_names_are_bounded() {
    let server = Server::start();
    let _publisher = publish(test_flv(), &server.rtmp_url("live/http"));
    wait_published(&server, "live/http").await;
    let big = format!("GET /live/http/index.m3u8 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let (status, closed, _) = http_raw(server.http, big.as_bytes()).await;
    assert_eq!((status, closed), (Some(431), true), "a 20 KB request head");
    let many: String = (0..200).map(|i| format!("X-{i}: y\r\n")).collect();
    let (status, _, _) = http_raw(server.http, format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).await;
    assert_eq!(status, Some(431), "200 headers");
    // A body that never comes is not waited for: answered, then the connection is closed.
    let post = b"POST /live/http.flv HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\npartial";
    let (status, closed, _) = http_raw(server.http, post).await;
    assert_eq!((status, closed), (Some(405), true), "POST with a 10 GB body");
    let chunked = b"GET /nothing HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\naaaa";
    let (status, closed, _) = http_raw(server.http, chunked).await;
    assert_eq!((status, closed), (Some(404), true), "GET with an endless chunked body");
    // Names with CR/LF or traversal: 404, and nothing of the name comes back as a header.
    for target in ["/live/a%0d%0aSet-Cookie:%20x=1.flv", "/live/..%2f..%2fetc%2fpasswd.flv", "/../../etc/passwd"] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, _, text) = http_raw(server.http, req.as_bytes()).await;
        assert_eq!(status, Some(404), "{target}");
        assert!(!text.to_ascii_lowercase().contains("set-cookie"), "{target}: header injected: {text}");
    }
    assert_served(&server, "live/http").await;
}

const GET_STUCK: &[u8] = b"GET /live/stuck.flv HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn http_flv_reader_that_takes_nothing_is_disconnected() {
    stalled_http_flv_reader_is_disconnected("[hub]\nreader_write_timeout_ms = 2000\n", GET_STUCK).await;
}

/// The same with the fan-out's write-merge window.
#[tokio::test(flavor = "multi_thread")]
async fn http_flv_reader_that_takes_nothing_is_disconnected_in_merge_mode() {
    let config = "[hub]\nreader_write_timeout_ms = 2000\nwrite_merge_ms = 50\n";
    stalled_http_flv_reader_is_disconnected(config, GET_STUCK).await;
}

/// The same through hyper's HTTP-FLV path (the player's second request on a kept-alive
/// connection), where a watchdog notices.
#[tokio::test(flavor = "multi_thread")]
async fn http_flv_reader_that_takes_nothing_is_disconnected_on_hypers_path() {
    let request = [&b"OPTIONS /live/stuck.flv HTTP/1.1\r\nHost: x\r\n\r\n"[..], GET_STUCK].concat();
    stalled_http_flv_reader_is_disconnected("[hub]\nreader_write_timeout_ms = 2000\n", &request).await;
}

async fn stalled_http_flv_reader_is_disconnected(config: &str, request: &[u8]) {
    let server = Server::with_config(config);
    let _publisher = publish(heavy_flv(), &server.rtmp_url("live/stuck"));
    wait_published(&server, "live/stuck").await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(server.http).await.unwrap();
    s.write_all(request).await.unwrap();
    // Reads nothing for 8 s: the socket fills within a second at 8 Mbit/s, the server gives up
    // 2 s later.
    tokio::time::sleep(Duration::from_secs(8)).await;
    // What was queued drains, then the connection ends; a live one would go on for good.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    assert!(closed_by(&mut s, deadline).await, "a reader that took nothing for 8 s is still served");
    assert_served_size(&server, "live/stuck", (640, 360)).await;
}
