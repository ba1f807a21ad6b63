//! Reader behaviour: end of stream and republish within the grace period, and a stalled
//! reader that must not disturb the publisher or the other readers.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferrocast_media::flv::{self, VideoTag};
use ferrocast_rtmp::MediaKind;
use ferrocast_rtmp::client::ClientEvent;

#[tokio::test(flavor = "multi_thread")]
async fn ffmpeg_reader_carries_on_across_republish() {
    let server = Server::start(); // grace 5 s by default
    let url = server.rtmp_url("live/re");
    let first = publish_args(test_flv(), &url, &["-t", "3"]);
    wait_published(&server, "live/re").await;
    let probe_url = url.clone();
    let reader = tokio::task::spawn_blocking(move || probe(&probe_url, 8));
    // Let the first publisher end by itself, then republish as soon as the server has let the
    // path go (a publish before that is refused with BadName: try again).
    let mut first = first;
    let status = tokio::task::spawn_blocking(move || first.0.wait().unwrap()).await.unwrap();
    assert!(status.success(), "first publisher failed");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut second = loop {
        let mut c = RtmpClient::connect(server.rtmp, "live/re", true).await;
        let seen = c.wait_for(|e| matches!(e, ClientEvent::Status { .. })).await;
        if seen.contains(&ClientEvent::Publishing) {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "the path was never free to republish: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _second = tokio::spawn(async move { second.publish_file(test_flv(), 10).await });
    let p = reader.await.unwrap();
    p.assert_h264_aac(320, 240, 150);
    let video = p.packets_of("video");
    let span = video.last().unwrap().0 - video[0].0;
    assert!(span > 6.0, "reader stopped at the republish: {span:.1} s of video\n{}", p.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_get_stream_eof_then_unpublish_notify_after_grace() {
    let server = Server::with_config("[hub]\nrepublish_grace_ms = 800\n");
    let mut publisher = RtmpClient::connect(server.rtmp, "live/eof", true).await;
    publisher.wait_for(|e| *e == ClientEvent::Publishing).await;
    let data = bytes::Bytes::from(std::fs::read(test_flv()).unwrap());
    let tags = flv::read_file(&data).unwrap();
    for t in tags.iter().take(20) {
        let kind = match t.tag_type {
            8 => MediaKind::Audio,
            9 => MediaKind::Video,
            _ => MediaKind::Data,
        };
        publisher.session.send_media(kind, t.timestamp, &t.body);
    }
    publisher.flush().await;
    wait_published(&server, "live/eof").await;
    let mut player = RtmpClient::connect(server.rtmp, "live/eof", false).await;
    player.wait_for(|e| *e == ClientEvent::Playing).await;
    let flv_url = server.flv_url("live/eof");
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let flv_reader = tokio::spawn(async move {
        // HTTP-FLV: the body ends when the stream does.
        let (host, path) = flv_url.strip_prefix("http://").unwrap().split_once('/').unwrap();
        let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        let mut started_tx = Some(started_tx);
        loop {
            match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return all,
                Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
                Err(_) => panic!("HTTP-FLV body did not end with the stream"),
            }
            // Playing: the FLV header is in.
            if all.windows(3).any(|w| w == b"FLV")
                && let Some(tx) = started_tx.take()
            {
                let _ = tx.send(());
            }
            // The chunked body's terminator.
            if all.ends_with(b"0\r\n\r\n") {
                return all;
            }
        }
    });
    // The HTTP-FLV reader is playing before the publisher goes.
    tokio::time::timeout(Duration::from_secs(20), started).await.expect("HTTP-FLV reader never started").unwrap();
    drop(publisher); // the publisher vanishes
    let seen = player.wait_for(|e| matches!(e, ClientEvent::UserControl { event: 1, .. })).await;
    assert!(!seen.iter().any(|e| matches!(e, ClientEvent::Status { code, .. } if code.contains("Unpublish"))));
    let seen = player.wait_for(|e| matches!(e, ClientEvent::Status { .. })).await;
    assert!(
        matches!(seen.last(), Some(ClientEvent::Status { code, .. }) if code == "NetStream.Play.UnpublishNotify"),
        "{seen:?}"
    );
    assert!(player.next_event(Duration::from_secs(10)).await.is_none(), "connection closed after the stream ended");
    let body = flv_reader.await.unwrap();
    assert!(body.windows(3).any(|w| w == b"FLV"));
}

/// Video frames a client receives: (receive time, dts, keyframe).
async fn read_video(client: &mut RtmpClient, until: Instant, out: &mut Vec<(Instant, u32, bool)>) -> bool {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        match client.next_event(left).await {
            Some(ClientEvent::Media(m)) if m.kind == MediaKind::Video => {
                if let Ok(VideoTag::Frame { keyframe, .. }) = flv::parse_video(&m.payload) {
                    out.push((Instant::now(), m.timestamp, keyframe));
                }
            }
            Some(_) => {}
            None => return Instant::now() >= until, // EOF before the end: disconnected
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_reader_does_not_slow_publisher_or_other_readers() {
    let server = Server::with_config("[hub]\nreader_queue_frames = 256\n");
    let _publisher = publish(heavy_flv(), &server.rtmp_url("live/stall"));
    wait_published(&server, "live/stall").await;

    let rtmp = server.rtmp;
    // Video frames the healthy reader has had, for the stall to last as long as 300 of them.
    let healthy_frames = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = healthy_frames.clone();
    let healthy = tokio::spawn(async move {
        let mut c = RtmpClient::connect(rtmp, "live/stall", false).await;
        c.wait_for(|e| *e == ClientEvent::Playing).await;
        let mut frames = Vec::new();
        // Until the stall is over and a little more: read in steps, counting as it goes.
        let end = Instant::now() + Duration::from_secs(120);
        while Instant::now() < end {
            if !read_video(&mut c, Instant::now() + Duration::from_millis(200), &mut frames).await {
                break;
            }
            counter.store(frames.len(), std::sync::atomic::Ordering::Relaxed);
            if frames.len() >= 480 {
                break;
            }
        }
        frames
    });

    // The stalled reader: a small receive buffer so the stall backs up into the server.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(server.rtmp).await.unwrap();
    let mut stalled = RtmpClient::connect_socket(stream, server.rtmp, "live/stall", false).await;
    stalled.wait_for(|e| *e == ClientEvent::Playing).await;
    let mut before = Vec::new();
    read_video(&mut stalled, Instant::now() + Duration::from_secs(1), &mut before).await;
    // Stops reading for as long as the healthy reader takes to get 300 frames (10 s at 30 fps;
    // counted, not timed), with a guard against a hang.
    let stall_from = healthy_frames.load(std::sync::atomic::Ordering::Relaxed);
    let guard = Instant::now() + Duration::from_secs(60);
    while healthy_frames.load(std::sync::atomic::Ordering::Relaxed) < stall_from + 300 {
        assert!(Instant::now() < guard, "the healthy reader stopped getting frames");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut after = Vec::new();
    let still_connected = read_video(&mut stalled, Instant::now() + Duration::from_secs(4), &mut after).await;

    let frames = healthy.await.unwrap();
    assert!(frames.len() > 300, "healthy reader got only {} frames", frames.len());
    // Every frame: at 30 fps consecutive timestamps are 33-34 ms apart.
    for w in frames.windows(2) {
        let gap = w[1].1.wrapping_sub(w[0].1);
        assert!(gap <= 100, "healthy reader lost frames: dts {} -> {}", w[0].1, w[1].1);
    }
    // The publisher kept real time: stream time advanced with wall time.
    let wall = frames.last().unwrap().0.duration_since(frames[0].0).as_secs_f64();
    let media = f64::from(frames.last().unwrap().1 - frames[0].1) / 1000.0;
    assert!(media > wall * 0.8, "publisher slowed: {media:.1} s of media in {wall:.1} s");

    // The stalled reader was disconnected, or resumed: any jump in its timeline starts at
    // a keyframe.
    let mut all = before;
    all.extend(after.iter().copied());
    let jumps: Vec<usize> = (1..all.len()).filter(|&i| all[i].1.wrapping_sub(all[i - 1].1) > 100).collect();
    for &i in &jumps {
        assert!(all[i].2, "stalled reader resumed on a non-keyframe at dts {}", all[i].1);
    }
    // The heavy stream outgrows socket buffers and the 256-frame ring in 10 s, so the server
    // must have done one or the other.
    assert!(!still_connected || !jumps.is_empty(), "stalled reader neither skipped nor was cut off");
    eprintln!("stalled reader: connected={still_connected} jumps={} frames after={}", jumps.len(), after.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn publisher_timestamp_restart_stays_monotonic_for_readers() {
    let server = Server::start();
    let mut publisher = RtmpClient::connect(server.rtmp, "live/jump", true).await;
    publisher.wait_for(|e| *e == ClientEvent::Publishing).await;
    let file = test_flv().to_path_buf();
    // Two passes over the file, each starting again at timestamp 0: an encoder restart.
    let task = tokio::spawn(async move {
        publisher.publish_file(&file, 1).await;
        publisher.publish_file(&file, 1).await;
        publisher
    });
    wait_published(&server, "live/jump").await;
    let url = server.rtmp_url("live/jump");
    let p = tokio::task::spawn_blocking(move || probe(&url, 6)).await.unwrap();
    p.assert_h264_aac(320, 240, 120);
    let video = p.packets_of("video");
    assert!(video.last().unwrap().0 - video[0].0 > 5.0, "reader went on across the restart");
    task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn rtmp_timestamp_wrap_at_32_bits_stays_monotonic_for_readers() {
    let server = Server::start();
    let mut publisher = RtmpClient::connect(server.rtmp, "live/wrap", true).await;
    publisher.wait_for(|e| *e == ClientEvent::Publishing).await;
    let file = test_flv().to_path_buf();
    // Timestamps start 1.5 s before 2^32 ms and wrap to 0 mid-stream (after ~49.7 days live).
    let task = tokio::spawn(async move {
        publisher.publish_file_from(&file, 2, u32::MAX - 1500).await;
        publisher
    });
    wait_published(&server, "live/wrap").await;
    let probes: Vec<_> = [server.rtmp_url("live/wrap"), server.flv_url("live/wrap")]
        .into_iter()
        .map(|url| tokio::task::spawn_blocking(move || probe(&url, 4)))
        .collect();
    for p in probes {
        let p = p.await.unwrap();
        p.assert_h264_aac(320, 240, 90);
        let video = p.packets_of("video");
        let span = video.last().unwrap().0 - video[0].0;
        assert!((3.0..6.0).contains(&span), "video spans {span} s across the wrap");
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn write_merge_window_sends_frames_in_batches() {
    let server = Server::with_config("[hub]\nwrite_merge_ms = 200\n");
    let _publisher = publish(test_flv(), &server.rtmp_url("live/merge"));
    wait_published(&server, "live/merge").await;
    // Several players, so some start while the fan-out's window is open.
    let mut players = Vec::new();
    for _ in 0..6 {
        let mut c = RtmpClient::connect(server.rtmp, "live/merge", false).await;
        players.push(tokio::spawn(async move {
            c.wait_for(|e| *e == ClientEvent::Playing).await;
            let mut frames = Vec::new();
            read_video(&mut c, Instant::now() + Duration::from_secs(4), &mut frames).await;
            frames
        }));
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    for player in players {
        let frames = player.await.unwrap();
        // Past the GOP cache burst: 30 fps arrive about 6 at a time, not one every 33 ms.
        let live: Vec<_> = frames.iter().skip(40).collect();
        assert!(live.len() > 60, "only {} frames", live.len());
        let together = live.windows(2).filter(|w| w[1].0.duration_since(w[0].0) < Duration::from_millis(10)).count();
        assert!(together * 10 >= live.len() * 6, "{together} of {} frames arrived with the one before", live.len());
        // In order and none missing from the first frame on, through the hand-over from the
        // reader's own start (the GOP cache, its first windows) to the fan-out's windows.
        let dts: Vec<u32> = frames.iter().map(|f| f.1).collect();
        assert!(dts.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] < 100), "frames lost or reordered: {dts:?}");
    }
    // Players are none the wiser, over HTTP-FLV and RTSP (TCP and UDP) alike: the window is
    // the stream's fan-out's.
    let url = server.flv_url("live/merge");
    tokio::task::spawn_blocking(move || probe(&url, 3)).await.unwrap().assert_h264_aac(320, 240, 60);
    for transport in ["tcp", "udp"] {
        let url = server.rtsp_url("live/merge");
        let p =
            tokio::task::spawn_blocking(move || probe_with(&url, 3, &["-rtsp_transport", transport])).await.unwrap();
        p.assert_rtsp("h264", 320, 240, 60);
    }
}
