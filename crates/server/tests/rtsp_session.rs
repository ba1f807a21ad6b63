//! The RTSP server session as clients meet it: an independent client (retina, the Rust RTSP
//! client behind Moonfire NVR) plays over TCP and UDP, PAUSE of a RECORD session, and the
//! RTP-Info of PLAY responses.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use retina::client::{PlayOptions, SessionOptions, SetupOptions, TcpTransportOptions, Transport, UdpTransportOptions};
use retina::codec::CodecItem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Guard against a hang; never a pass/fail condition on its own.
const GUARD: Duration = Duration::from_secs(30);

/// Plays `url` with retina; returns the frames seen per stream once every stream has some.
async fn retina_play(url: &str, transport: Transport) -> Vec<usize> {
    let url = url::Url::parse(url).unwrap();
    let mut session = retina::client::Session::describe(url, SessionOptions::default()).await.expect("DESCRIBE");
    let n = session.streams().len();
    assert!(n >= 2, "two tracks expected, got {n}");
    for i in 0..n {
        session.setup(i, SetupOptions::default().transport(transport.clone())).await.expect("SETUP");
    }
    // The default policy: retina insists on RTP-Info (seq, rtptime) for every stream.
    let playing = session.play(PlayOptions::default()).await.expect("PLAY");
    let mut demuxed = playing.demuxed().expect("demuxed");
    let mut frames = vec![0usize; n];
    while frames.iter().any(|f| *f < 5) {
        match demuxed.next().await {
            Some(Ok(CodecItem::VideoFrame(f))) => frames[f.stream_id()] += 1,
            Some(Ok(CodecItem::AudioFrame(f))) => frames[f.stream_id()] += 1,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("retina: {e}"),
            None => panic!("stream ended after {frames:?}"),
        }
    }
    frames
}

/// A free pair of adjacent UDP ports (RTP even, RTCP next): retina, like RFC 3550 section 11,
/// expects `server_port` to be such a pair (the server's defaults, 8000-8001, are).
fn adjacent_udp_ports() -> (u16, u16) {
    for _ in 0..100 {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if !p.is_multiple_of(2) || p == u16::MAX {
            continue;
        }
        if std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return (p, p + 1);
        }
    }
    panic!("no adjacent pair of free UDP ports");
}

#[tokio::test(flavor = "multi_thread")]
async fn retina_plays_every_track_over_tcp_and_udp() {
    let (rtp, rtcp) = adjacent_udp_ports();
    let server = Server::with_config(&format!("[rtsp]\nrtp_port = {rtp}\nrtcp_port = {rtcp}\n"));
    let _publisher = publish(test_flv(), &server.rtmp_url("live/retina"));
    wait_published(&server, "live/retina").await;
    let url = server.rtsp_url("live/retina");
    for transport in [Transport::Tcp(TcpTransportOptions::default()), Transport::Udp(UdpTransportOptions::default())] {
        let name = transport.to_string();
        let frames = tokio::time::timeout(GUARD, retina_play(&url, transport)).await.expect("retina hung");
        assert!(frames.iter().all(|f| *f >= 5), "{name}: {frames:?}");
    }
}

/// One request on a raw connection; the response head and body.
async fn request(c: &mut TcpStream, req: &str) -> String {
    c.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if buf.len() >= end + 4 + len {
                return head;
            }
        }
        let n = tokio::time::timeout(GUARD, c.read(&mut chunk)).await.expect("no answer").unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn session_of(head: &str) -> String {
    let v = head.lines().find_map(|l| l.strip_prefix("Session: ")).expect("Session header");
    v.split(';').next().unwrap().to_owned()
}

/// RFC 2326 10.6: PAUSE of a recording is either honoured or refused; ferrocast refuses it
/// with 455 (it cannot ask the publisher to hold its media), never answers 200 and ignores it.
#[tokio::test(flavor = "multi_thread")]
async fn pause_of_a_record_session_is_refused_with_455() {
    let server = Server::start();
    let mut c = TcpStream::connect(server.rtsp).await.unwrap();
    let url = server.rtsp_url("rec/pause");
    let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/44100/2\r\na=fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1210\r\na=control:trackID=0\r\n";
    let head = request(
        &mut c,
        &format!(
            "ANNOUNCE {url} RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ),
    )
    .await;
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");
    let head = request(
        &mut c,
        &format!("SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");
    let session = session_of(&head);
    let head = request(&mut c, &format!("RECORD {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n")).await;
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");
    let head = request(&mut c, &format!("PAUSE {url} RTSP/1.0\r\nCSeq: 4\r\nSession: {session}\r\n\r\n")).await;
    assert!(head.starts_with("RTSP/1.0 455"), "{head}");
    // The session goes on: a keep-alive is still answered.
    let head = request(&mut c, &format!("GET_PARAMETER {url} RTSP/1.0\r\nCSeq: 5\r\nSession: {session}\r\n\r\n")).await;
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");
}
