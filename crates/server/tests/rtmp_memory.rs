//! Memory an RTMP connection can make the server hold before anyone authenticated it
//! (issue 14, section 3): 200 connections each fill every chunk stream with partial messages
//! and send the largest command allowed, an AMF0 array of one-byte nulls, while a normal
//! reader keeps playing. The server's own peak RSS (VmHWM of the spawned process, not of this
//! test process) must stay under 100 MB.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use ferrocast_rtmp::MediaKind;
use ferrocast_rtmp::chunk::{MAX_BUFFERED_BEFORE_PUBLISH, MAX_CHUNK_STREAMS, MAX_COMMAND_MESSAGE_LEN, encode_message};
use ferrocast_rtmp::client::ClientEvent;
use ferrocast_rtmp::message::type_id;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections in the attack.
const ATTACKERS: usize = 200;
/// The server's peak RSS must stay under this.
const MAX_SERVER_RSS_KB: u64 = 100 * 1024;

/// VmHWM (peak resident set) of a process, in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What one attacker sends after the handshake: on `streams` chunk streams, a command message
/// of the largest allowed length with its last chunk missing; then, on the next stream, the
/// largest allowed command whole: a strict array of one-byte nulls, which AMF0 decoding would
/// turn into 56-byte values.
fn attack_bytes(streams: usize) -> (Arc<Vec<u8>>, Arc<Vec<u8>>) {
    let len = MAX_COMMAND_MESSAGE_LEN as usize;
    let mut partials = BytesMut::new();
    // Chunk stream ids 3..: 2 is the control stream, which real clients keep for control.
    for csid in 3..3 + streams as u32 {
        let mut one = BytesMut::new();
        encode_message(&mut one, csid, 0, type_id::COMMAND_AMF0, 0, &vec![0u8; len], 128);
        // Without its last chunk (chunks are 128 bytes; the basic header of a fmt 3 chunk takes
        // one byte for ids up to 63, two above).
        let last = (len - 1) % 128 + 1 + if csid < 64 { 1 } else { 2 };
        one.truncate(one.len() - last);
        partials.extend_from_slice(&one);
    }
    let mut bomb = vec![0x0a];
    let count = len - 5;
    bomb.extend_from_slice(&(count as u32).to_be_bytes());
    bomb.resize(len, 0x05);
    let mut command = BytesMut::new();
    encode_message(&mut command, 3 + streams as u32, 0, type_id::COMMAND_AMF0, 0, &bomb, 128);
    (Arc::new(partials.to_vec()), Arc::new(command.to_vec()))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_unauthenticated_connections_stay_under_100_mb() {
    // A long handshake timeout: the attackers hold what they sent for the whole test. All 200
    // are admitted (the default per-address cap is 200, and the publisher and reader come from
    // the same address).
    let server = Server::with_config(
        "[rtmp]\nhandshake_timeout_ms = 120000\n[limits]\nmax_connections_per_ip = 1000\n[hls]\nenabled = false\n",
    );
    let pid = server.proc.0.id();
    let _publisher = publish(test_flv(), &server.rtmp_url("live/mem"));
    wait_published(&server, "live/mem").await;

    // The normal reader: counts the video frames it gets.
    let frames = Arc::new(AtomicUsize::new(0));
    let mut reader = RtmpClient::connect(server.rtmp, "live/mem", false).await;
    reader.wait_for(|e| *e == ClientEvent::Playing).await;
    let counter = frames.clone();
    let reading = tokio::spawn(async move {
        while let Some(ev) = reader.next_event(Duration::from_secs(30)).await {
            if matches!(ev, ClientEvent::Media(m) if m.kind == MediaKind::Video) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let before_attack = peak_rss_kb(pid);

    // Half the attackers use every chunk stream there is; the other half as many as keep the
    // connection open (within the bytes a connection may hold before publishing), so their
    // command is decoded too.
    let every = attack_bytes(MAX_CHUNK_STREAMS - 1);
    // (The partial messages, the command as it arrives, and a little undecoded input.)
    let held = MAX_BUFFERED_BEFORE_PUBLISH / MAX_COMMAND_MESSAGE_LEN as usize - 2;
    let within = attack_bytes(held);
    let barrier = Arc::new(tokio::sync::Barrier::new(ATTACKERS));
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        let (partials, command) = if i % 2 == 0 { &every } else { &within };
        let (partials, command, barrier) = (partials.clone(), command.clone(), barrier.clone());
        let addr = server.rtmp;
        attackers.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            // C0, C1 and C2 of a simple handshake (zeros: no digest).
            let mut hs = vec![3u8];
            hs.resize(1 + 1536 * 2, 0);
            let sent = async {
                s.write_all(&hs).await?;
                s.write_all(&partials).await
            }
            .await;
            // Every connection has sent what it holds before any sends the command.
            barrier.wait().await;
            if sent.is_ok() {
                let _ = s.write_all(&command).await;
            }
            // Read until the server closes (or the guard against a hang runs out).
            let mut buf = vec![0u8; 16 * 1024];
            let _ = tokio::time::timeout(Duration::from_secs(60), async {
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }));
    }
    for a in attackers {
        a.await.unwrap();
    }
    let peak = peak_rss_kb(pid);
    eprintln!("server VmHWM: {before_attack} kB before the attack, {peak} kB after");

    // The reader still gets frames after the attack.
    let seen = frames.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while frames.load(Ordering::Relaxed) < seen + 30 {
        assert!(tokio::time::Instant::now() < deadline, "the reader stopped getting frames");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!reading.is_finished(), "the reader was disconnected");
    assert!(peak < MAX_SERVER_RSS_KB, "server peak RSS {peak} kB (limit {MAX_SERVER_RSS_KB} kB)");
}
