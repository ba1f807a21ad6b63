//! Bad input at the RTSP listener: each case gets the right status code (or is ignored, for
//! stray media) while a normal reader goes on.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw RTSP connection.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    cseq: u32,
}

impl Raw {
    async fn connect(server: &Server) -> Raw {
        Raw { s: TcpStream::connect(server.rtsp).await.unwrap(), buf: Vec::new(), cseq: 0 }
    }

    /// Sends raw bytes and reads one response's status line and headers.
    async fn raw(&mut self, bytes: &[u8]) -> Option<(u16, String)> {
        if self.s.write_all(bytes).await.is_err() {
            return None;
        }
        self.response().await
    }

    async fn response(&mut self) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    let mut b = [0u8; 4096];
                    let n = tokio::time::timeout_at(deadline, self.s.read(&mut b)).await.ok()?.ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&b[..n]);
                }
                self.buf.drain(..end + 4 + len);
                let status = head.split(' ').nth(1)?.parse().ok()?;
                return Some((status, head));
            }
            let mut b = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.s.read(&mut b)).await.ok()?.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&b[..n]);
        }
    }

    async fn request(&mut self, method: &str, url: &str, headers: &str) -> (u16, String) {
        self.cseq += 1;
        let req = format!("{method} {url} RTSP/1.0\r\nCSeq: {}\r\n{headers}\r\n", self.cseq);
        self.raw(req.as_bytes()).await.unwrap_or_else(|| panic!("{method}: connection closed"))
    }

    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(15), self.s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

fn session_of(head: &str) -> String {
    head.lines().find_map(|l| l.strip_prefix("Session: ")).unwrap().split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_codes_for_bad_requests_while_a_reader_goes_on() {
    let server = Server::start();
    let _publisher = publish(test_flv(), &server.rtmp_url("live/ok"));
    wait_published(&server, "live/ok").await;
    let url = server.rtsp_url("live/ok");
    let reader_url = url.clone();
    let reader = tokio::task::spawn_blocking(move || probe_with(&reader_url, 6, &["-rtsp_transport", "tcp"]));

    // Garbage, an over-long request line, an over-large header block: status, then close.
    for (bytes, want) in [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\r\n\r\n".to_vec(), 400),
        ([b"OPTIONS rtsp://h/".to_vec(), vec![b'a'; 9000], b" RTSP/1.0\r\n\r\n".to_vec()].concat(), 414),
        (
            [
                b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n".to_vec(),
                b"X-Pad: 0123456789012345678901234567890123456789\r\n".repeat(1500),
                b"\r\n".to_vec(),
            ]
            .concat(),
            413,
        ),
        (b"OPTIONS * RTSP/1.0\r\nContent-Length: 999999999\r\n\r\n".to_vec(), 413),
    ] {
        let mut c = Raw::connect(&server).await;
        let (status, _) = c.raw(&bytes).await.expect("a status before closing");
        assert_eq!(status, want);
        assert!(c.closed().await, "closed after {want}");
    }

    let mut c = Raw::connect(&server).await;
    assert_eq!(c.request("FOO", &url, "").await.0, 501, "unknown method");
    assert_eq!(c.request("OPTIONS", &url, "").await.0, 200, "the connection survives a 501");
    assert_eq!(c.request("PLAY", &url, "Session: 12345678\r\n").await.0, 454, "unknown session");
    assert_eq!(c.request("PLAY", &url, "").await.0, 455, "PLAY before SETUP");
    assert_eq!(c.request("RECORD", &url, "").await.0, 455, "RECORD before SETUP");
    assert_eq!(c.request("DESCRIBE", &server.rtsp_url("live/none"), "").await.0, 404);
    assert_eq!(
        c.request("SETUP", &format!("{url}/trackID=7"), "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n").await.0,
        404,
        "unknown track"
    );
    assert_eq!(
        c.request("SETUP", &format!("{url}/trackID=0"), "Transport: RAW/RAW/UDP;unicast;client_port=5000-5001\r\n")
            .await
            .0,
        461
    );
    assert_eq!(c.request("SETUP", &format!("{url}/trackID=0"), "").await.0, 461, "no Transport header");
    assert_eq!(
        c.request("SETUP", &url, "Transport: RTP/AVP/TCP;unicast\r\n").await.0,
        459,
        "aggregate SETUP of two tracks"
    );
    assert_eq!(
        c.request("SET_PARAMETER", &url, "Content-Type: text/parameters\r\nContent-Length: 9\r\n\r\nfoo: bar\n")
            .await
            .0,
        451
    );
    assert_eq!(c.request("GET_PARAMETER", &url, "").await.0, 200);
    assert_eq!(c.request("REDIRECT", &url, "").await.0, 405);
    let (status, head) =
        c.request("SETUP", &format!("{url}/trackID=0"), "Transport: RTP/AVP/TCP;unicast;interleaved=6-7\r\n").await;
    assert_eq!(status, 200);
    assert!(head.contains("interleaved=6-7"), "the client's channels: {head}");
    let id = session_of(&head);
    assert_eq!(
        c.request(
            "SETUP",
            &format!("{url}/trackID=0"),
            &format!("Session: {id}\r\nTransport: RTP/AVP/TCP;unicast;interleaved=8-9\r\n")
        )
        .await
        .0,
        455,
        "same track twice"
    );
    // Interleaved data on channels never set up, and bogus RTCP: ignored.
    assert!(c.s.write_all(b"$\x09\x00\x04abcd$\x07\x00\x02\xff\xff").await.is_ok());
    assert_eq!(c.request("OPTIONS", &url, "").await.0, 200, "survives stray interleaved data");
    assert_eq!(c.request("TEARDOWN", &url, &format!("Session: {id}\r\n")).await.0, 200);

    // ANNOUNCE on a busy path, with a malformed SDP, and without SDP.
    let sdp = "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:streamid=0\r\n";
    let announce = |len: usize| format!("Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n");
    let mut c = Raw::connect(&server).await;
    assert_eq!(c.request("ANNOUNCE", &url, &format!("{}{sdp}", announce(sdp.len()))).await.0, 503, "busy path");
    assert_eq!(c.request("ANNOUNCE", &server.rtsp_url("live/bad"), &format!("{}garbage", announce(7))).await.0, 400);
    assert_eq!(c.request("ANNOUNCE", &server.rtsp_url("live/bad"), "").await.0, 400);

    // A publisher sending truncated RTP and nonsense NAL types: dropped, nothing breaks.
    let pub_url = server.rtsp_url("live/junk");
    let (status, head) = c.request("ANNOUNCE", &pub_url, &format!("{}{sdp}", announce(sdp.len()))).await;
    assert_eq!(status, 200);
    let id = session_of(&head);
    let (status, _) = c
        .request(
            "SETUP",
            &format!("{pub_url}/streamid=0"),
            &format!("Session: {id}\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\n"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(c.request("RECORD", &pub_url, &format!("Session: {id}\r\n")).await.0, 200);
    let mut junk = Vec::new();
    for p in [
        &[0x80u8, 96, 0][..],
        &[0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0x1f, 1][..],
        &[0x80, 96, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1, 0x1c][..],
        &[0x40; 20][..],
    ] {
        junk.extend_from_slice(&[b'$', 0, 0, p.len() as u8]);
        junk.extend_from_slice(p);
    }
    c.s.write_all(&junk).await.unwrap();
    assert_eq!(c.request("OPTIONS", &url, "").await.0, 200, "publisher connection survives junk RTP");

    reader.await.unwrap().assert_rtsp("h264", 320, 240, 150);
}

/// Interleaved bytes that arrive within `window`.
async fn interleaved_bytes(c: &mut Raw, window: Duration) -> usize {
    let mut total = c.buf.len();
    c.buf.clear();
    let deadline = tokio::time::Instant::now() + window;
    let mut b = [0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, c.s.read(&mut b)).await {
        if n == 0 {
            break;
        }
        total += n;
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_stops_media_and_play_resumes() {
    let server = Server::start();
    let _publisher = publish(test_flv(), &server.rtmp_url("live/pause"));
    wait_published(&server, "live/pause").await;
    let url = server.rtsp_url("live/pause");
    let mut c = Raw::connect(&server).await;
    let (status, head) =
        c.request("SETUP", &format!("{url}/trackID=0"), "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n").await;
    assert_eq!(status, 200);
    let id = session_of(&head);
    assert_eq!(c.request("PLAY", &url, &format!("Session: {id}\r\n")).await.0, 200);
    assert!(interleaved_bytes(&mut c, Duration::from_secs(1)).await > 10_000, "media flows");
    // PAUSE's answer may sit behind media already queued: read up to it.
    c.cseq += 1;
    c.s.write_all(format!("PAUSE {url} RTSP/1.0\r\nCSeq: {}\r\nSession: {id}\r\n\r\n", c.cseq).as_bytes())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut b = [0u8; 65536];
    while !seen.windows(15).any(|w| w == b"RTSP/1.0 200 OK") {
        let n = tokio::time::timeout(Duration::from_secs(10), c.s.read(&mut b)).await.unwrap().unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&b[..n]);
    }
    // Drain what was in flight, then silence.
    interleaved_bytes(&mut c, Duration::from_millis(500)).await;
    assert_eq!(interleaved_bytes(&mut c, Duration::from_secs(1)).await, 0, "no media while paused");
    c.cseq += 1;
    c.s.write_all(format!("PLAY {url} RTSP/1.0\r\nCSeq: {}\r\nSession: {id}\r\n\r\n", c.cseq).as_bytes())
        .await
        .unwrap();
    assert!(interleaved_bytes(&mut c, Duration::from_secs(2)).await > 10_000, "media resumes");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_session_times_out() {
    let server = Server::with_config("[rtsp]\nsession_timeout_ms = 1000\n");
    let _publisher = publish(test_flv(), &server.rtmp_url("live/idle"));
    wait_published(&server, "live/idle").await;
    let url = server.rtsp_url("live/idle");
    let mut c = Raw::connect(&server).await;
    let (status, _) =
        c.request("SETUP", &format!("{url}/trackID=0"), "Transport: RTP/AVP;unicast;client_port=40000-40001\r\n").await;
    assert_eq!(status, 200);
    assert!(c.closed().await, "session freed after the timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn moved_path_answers_301_with_location() {
    let server = Server::with_config("[rtsp.redirects]\n\"live/old\" = \"rtsp://other.example:8554/live/new\"\n");
    let mut c = Raw::connect(&server).await;
    let (status, head) = c.request("DESCRIBE", &server.rtsp_url("live/old"), "").await;
    assert_eq!(status, 301);
    assert!(head.contains("Location: rtsp://other.example:8554/live/new"), "{head}");
    assert_eq!(c.request("DESCRIBE", &server.rtsp_url("live/other"), "").await.0, 404);
}
