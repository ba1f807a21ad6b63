//! HTTP-FLV has one player path and two ways to the socket (README): the first request on a
//! connection is answered `Connection: close` with the body delimited by the close; a `.flv`
//! request after another on a kept-alive connection gets a chunked body. Both must carry the
//! same FLV: header, sequence headers, then frames from a keyframe on, timestamps in order;
//! and both refuse the same way.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use ferrocast_media::flv::{self, VideoTag};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Video tags to read before checking.
const VIDEO_TAGS: usize = 60;

/// Sends `request`, returns the head of the last response (lowercased) and its body bytes
/// (de-chunked if chunked) once the body holds `VIDEO_TAGS` video tags, or the stream closes.
async fn fetch(addr: std::net::SocketAddr, request: &[u8], skip_responses: usize) -> (String, Bytes) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let guard = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((head, body)) = split(&raw, skip_responses) {
            let whole = match content_length(&head) {
                Some(len) => body.len() >= len,
                None => flv_video_tags(&body) >= VIDEO_TAGS,
            };
            if whole {
                return (head, body);
            }
        }
        let n = match tokio::time::timeout_at(guard, s.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => panic!("no whole answer in 30 s: {}", String::from_utf8_lossy(&raw)),
        };
        if n == 0 {
            let (head, body) = split(&raw, skip_responses).expect("a whole response head");
            return (head, body);
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().unwrap())
}

/// The head (lowercased) and body so far of the response after `skip` whole ones with
/// `Content-Length` bodies.
fn split(raw: &[u8], skip: usize) -> Option<(String, Bytes)> {
    let mut rest = raw;
    for i in 0..=skip {
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&rest[..end]).to_lowercase();
        let body = &rest[end..];
        if i < skip {
            rest = body.get(content_length(&head).unwrap_or(0)..)?;
            continue;
        }
        let body = if head.contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_vec() };
        return Some((head, Bytes::from(body)));
    }
    None
}

/// The data of the whole chunks in `b` (RFC 9112 section 7.1).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        let Some(data) = b.get(eol + 2..eol + 2 + size) else { break };
        out.extend_from_slice(data);
        b = &b[(eol + 4 + size).min(b.len())..];
        if size == 0 {
            break;
        }
    }
    out
}

fn flv_video_tags(body: &Bytes) -> usize {
    flv::read_file(body).map_or(0, |tags| tags.iter().filter(|t| t.tag_type == 9).count())
}

/// The FLV a player gets is playable from its first tags on.
fn assert_playable(what: &str, body: &Bytes) {
    let tags = flv::read_file(body).unwrap_or_else(|e| panic!("{what}: not FLV: {e:?}"));
    let video: Vec<_> = tags.iter().filter(|t| t.tag_type == 9).collect();
    assert!(video.len() >= VIDEO_TAGS, "{what}: {} video tags", video.len());
    assert!(matches!(flv::parse_video(&video[0].body), Ok(VideoTag::Config { .. })), "{what}: sequence header first");
    assert!(
        matches!(flv::parse_video(&video[1].body), Ok(VideoTag::Frame { keyframe: true, .. })),
        "{what}: a keyframe first"
    );
    assert!(tags.iter().any(|t| t.tag_type == 8), "{what}: audio");
    let ts: Vec<u32> = video.iter().skip(1).map(|t| t.timestamp).collect();
    assert!(ts.windows(2).all(|w| w[1] >= w[0]), "{what}: video timestamps go back: {ts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn first_request_and_kept_alive_request_play_the_same_flv() {
    let server = Server::with_config("[hls]\nenabled = false\n");
    let _publisher = publish(test_flv(), &server.rtmp_url("live/p"));
    wait_published(&server, "live/p").await;

    let (head, body) = fetch(server.http, b"GET /live/p.flv HTTP/1.1\r\nHost: x\r\n\r\n", 0).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close") && !head.contains("transfer-encoding"), "{head}");
    assert_playable("first request", &body);

    let request = b"GET /live/p/none HTTP/1.1\r\nHost: x\r\n\r\nGET /live/p.flv HTTP/1.1\r\nHost: x\r\n\r\n";
    let (head, body) = fetch(server.http, request, 1).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked") && !head.contains("connection: close"), "{head}");
    assert!(head.contains("content-type: video/x-flv") && head.contains("access-control-allow-origin: *"), "{head}");
    assert_playable("after another request", &body);
}

#[tokio::test(flavor = "multi_thread")]
async fn both_ways_refuse_alike() {
    let server =
        Server::with_config("[hub]\nplay_wait_ms = 0\n[limits]\nmax_readers_per_stream = 1\n[hls]\nenabled = false\n");
    let first = |p: &str| format!("GET /{p}.flv HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
    let after = |p: &str| format!("OPTIONS / HTTP/1.1\r\nHost: x\r\n\r\nGET /{p}.flv HTTP/1.1\r\nHost: x\r\n\r\n");
    for (request, skip) in [(first("live/none"), 0), (after("live/none").into_bytes(), 1)] {
        let (head, body) = fetch(server.http, &request, skip).await;
        assert!(head.starts_with("http/1.1 404"), "{head}");
        assert_eq!(&body[..], b"stream not found\n");
    }
    let _publisher = publish(test_flv(), &server.rtmp_url("live/one"));
    wait_published(&server, "live/one").await;
    // The one reader allowed (wait_published's is gone once the server has seen it close).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let _reader = loop {
        let mut s = TcpStream::connect(server.http).await.unwrap();
        s.write_all(&first("live/one")).await.unwrap();
        let mut b = [0u8; 12];
        if s.read_exact(&mut b).await.is_ok() && b.starts_with(b"HTTP/1.1 200") {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "no reader admitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (request, skip) in [(first("live/one"), 0), (after("live/one").into_bytes(), 1)] {
        let (head, body) = fetch(server.http, &request, skip).await;
        assert!(head.starts_with("http/1.1 503"), "{head}");
        assert_eq!(&body[..], b"stream at its reader limit\n");
    }
}
