//! Configured caps: connections overall and per address, streams, readers per stream, and
//! publishers that go silent.

mod common;

use std::time::Duration;

use common::*;
use ferrocast_rtmp::client::ClientEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn closed_at_once(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// Whether the RTMP listener admits a new connection: it answers C0 and C1 with S0, where a
/// refused connection is closed unread. The connection is returned to hold its place.
async fn rtmp_admitted(addr: std::net::SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut c0c1 = vec![3u8];
    c0c1.resize(1 + 1536, 0);
    s.write_all(&c0c1).await.ok()?;
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
        Ok(Ok(1)) => Some(s),
        _ => None,
    }
}

/// Polls `check` until it holds, with a generous guard against a hang.
async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_per_address_are_capped() {
    let server = Server::with_config("[limits]\nmax_connections_per_ip = 2\n");
    // Both admitted once each has had an answer: the RTMP one to its C0 and C1, the RTSP one
    // to OPTIONS.
    let _a = rtmp_admitted(server.rtmp).await.expect("first connection admitted");
    let mut b = TcpStream::connect(server.rtsp).await.unwrap();
    b.write_all(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    b.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"RTSP/1.0 200");
    let mut c = TcpStream::connect(server.rtmp).await.unwrap();
    assert!(closed_at_once(&mut c).await, "third connection from one address admitted");
    drop(b);
    // A freed place is usable once the server has seen the close: a new connection gets its
    // handshake answered.
    wait_until("the closed connection's place freed", || async { rtmp_admitted(server.rtmp).await.is_some() }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_and_readers_are_capped() {
    let server = Server::with_config("[limits]\nmax_streams = 1\nmax_readers_per_stream = 2\n[hls]\nenabled = false\n");
    let _publisher = publish(test_flv(), &server.rtmp_url("live/one"));
    wait_published(&server, "live/one").await;
    let mut second = RtmpClient::connect(server.rtmp, "live/two", true).await;
    let seen = second.wait_for(|e| matches!(e, ClientEvent::Status { .. })).await;
    assert!(
        matches!(seen.last(), Some(ClientEvent::Status { code, .. }) if code == "NetStream.Publish.BadName"),
        "{seen:?}"
    );

    let mut r1 = RtmpClient::connect(server.rtmp, "live/one", false).await;
    r1.wait_for(|e| *e == ClientEvent::Playing).await;
    let mut r2 = RtmpClient::connect(server.rtmp, "live/one", false).await;
    r2.wait_for(|e| *e == ClientEvent::Playing).await;
    let mut r3 = RtmpClient::connect(server.rtmp, "live/one", false).await;
    let seen = r3.wait_for(|e| matches!(e, ClientEvent::Status { level, .. } if level == "error")).await;
    assert!(
        matches!(seen.last(), Some(ClientEvent::Status { code, .. }) if code == "NetStream.Play.Failed"),
        "{seen:?}"
    );
    assert_eq!(http_status(&server.flv_url("live/one")).await, Some(503));
    let mut s = TcpStream::connect(server.rtsp).await.unwrap();
    s.write_all(format!("DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n", server.rtsp_url("live/one")).as_bytes())
        .await
        .unwrap();
    let mut b = [0u8; 64];
    let n = s.read(&mut b).await.unwrap();
    assert!(String::from_utf8_lossy(&b[..n]).starts_with("RTSP/1.0 503"));
    // A reader leaving frees its place.
    drop(r1);
    let url = server.flv_url("live/one");
    wait_until("a reader's place freed", || async { http_status(&url).await == Some(200) }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_publisher_is_unpublished() {
    let server = Server::with_config("[limits]\npublisher_idle_timeout_ms = 1000\n[hub]\nrepublish_grace_ms = 0\n");
    let mut p = RtmpClient::connect(server.rtmp, "live/quiet", true).await;
    p.wait_for(|e| *e == ClientEvent::Publishing).await;
    // Sends nothing (not even acknowledgements): cut off after the idle timeout, and the path
    // is free again. The guard is far above the 1 s timeout; what counts is that the server
    // closes, not when.
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(n) = p.socket.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "silent publisher kept");
    let mut again = RtmpClient::connect(server.rtmp, "live/quiet", true).await;
    again.wait_for(|e| *e == ClientEvent::Publishing).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_flv_readers_count_against_connection_limits() {
    let server = Server::with_config("[limits]\nmax_connections_per_ip = 2\n");
    let _publisher = publish(test_flv(), &server.rtmp_url("live/h")); // one connection
    wait_published(&server, "live/h").await;
    // A second: an HTTP-FLV reader that stays (admitted once the server has seen
    // wait_published's own request closed).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let reader = loop {
        let mut s = TcpStream::connect(server.http).await.unwrap();
        s.write_all(b"GET /live/h.flv HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut b = [0u8; 12];
        if s.read_exact(&mut b).await.is_ok() && b.starts_with(b"HTTP/1.1 200") {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "no HTTP-FLV reader admitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(http_status(&server.flv_url("live/h")).await, Some(503), "a third connection from one address");
    drop(reader);
    let url = server.flv_url("live/h");
    wait_until("its place free again", || async { http_status(&url).await == Some(200) }).await;
}
