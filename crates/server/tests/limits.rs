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

#[tokio::test(flavor = "multi_thread")]
async fn connections_per_address_are_capped() {
    let server = Server::with_config("[limits]\nmax_connections_per_ip = 2\n");
    let _a = TcpStream::connect(server.rtmp).await.unwrap();
    let b = TcpStream::connect(server.rtsp).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = TcpStream::connect(server.rtmp).await.unwrap();
    assert!(closed_at_once(&mut c).await, "third connection from one address admitted");
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A freed place is usable: a full RTMP session comes up.
    let mut p = RtmpClient::connect(server.rtmp, "live/x", true).await;
    p.wait_for(|e| *e == ClientEvent::Publishing).await;
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http_status(&server.flv_url("live/one")).await, Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_publisher_is_unpublished() {
    let server = Server::with_config("[limits]\npublisher_idle_timeout_ms = 1000\n[hub]\nrepublish_grace_ms = 0\n");
    let mut p = RtmpClient::connect(server.rtmp, "live/quiet", true).await;
    p.wait_for(|e| *e == ClientEvent::Publishing).await;
    // Sends nothing: cut off after the idle timeout, and the path is free again.
    let start = std::time::Instant::now();
    while p.next_event(Duration::from_secs(10)).await.is_some() {}
    // next_event also gives None after its own 10 s wait: the close must come well before.
    assert!(start.elapsed() < Duration::from_secs(8), "silent publisher kept");
    let mut again = RtmpClient::connect(server.rtmp, "live/quiet", true).await;
    again.wait_for(|e| *e == ClientEvent::Publishing).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_flv_readers_count_against_connection_limits() {
    let server = Server::with_config("[limits]\nmax_connections_per_ip = 2\n");
    let _publisher = publish(test_flv(), &server.rtmp_url("live/h")); // one connection
    wait_published(&server, "live/h").await;
    // wait_published's own HTTP-FLV request holds a place until the server sees it closed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A second: an HTTP-FLV reader that stays.
    let mut reader = TcpStream::connect(server.http).await.unwrap();
    reader.write_all(b"GET /live/h.flv HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut b = [0u8; 32];
    reader.read_exact(&mut b[..12]).await.unwrap();
    assert!(b.starts_with(b"HTTP/1.1 200"));
    assert_eq!(http_status(&server.flv_url("live/h")).await, Some(503), "a third connection from one address");
    drop(reader);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http_status(&server.flv_url("live/h")).await, Some(200), "its place is free again");
}
