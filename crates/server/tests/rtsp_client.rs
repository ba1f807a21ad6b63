//! Our own RTSP client (crates/rtsp) against the real server: play over TCP and UDP, and
//! publish with ANNOUNCE/RECORD, read back by ffprobe.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use ferrocast_media::flv::{self, AudioTag, VideoTag};
use ferrocast_media::{Frame, TrackInfo, TrackKind, Tracks};
use ferrocast_rtsp::client::{ClientEvent, ClientMode, ClientSession, ClientTransport};
use ferrocast_rtsp::codec::{self, Depacketizer, Packetizer};
use ferrocast_rtsp::rtcp::{self, RtcpPacket};
use ferrocast_rtsp::rtp::RtpPacket;
use ferrocast_rtsp::sdp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

struct Driver {
    socket: TcpStream,
    session: ClientSession,
}

impl Driver {
    async fn flush(&mut self) {
        while let Some(b) = self.session.poll_transmit() {
            self.socket.write_all(&b).await.unwrap();
        }
    }

    async fn next(&mut self) -> Option<ClientEvent> {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(e) = self.session.poll_event() {
                return Some(e);
            }
            self.flush().await;
            let n = tokio::time::timeout(Duration::from_secs(10), self.socket.read(&mut buf)).await.ok()?.ok()?;
            if n == 0 {
                return None;
            }
            self.session.handle_input(Instant::now(), &buf[..n]).unwrap();
        }
    }
}

/// Plays with our client; returns (video frames depacketized, first is keyframe, sender
/// reports seen).
async fn play(server: &Server, path: &str, transport: ClientTransport) -> (usize, bool, usize) {
    let mut udp = Vec::new();
    let mut ports = Vec::new();
    if transport == ClientTransport::Udp {
        for _ in 0..2 {
            let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let rtcp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            ports.push((rtp.local_addr().unwrap().port(), rtcp.local_addr().unwrap().port()));
            udp.push((rtp, rtcp));
        }
    }
    let socket = TcpStream::connect(server.rtsp).await.unwrap();
    let session = ClientSession::new(&server.rtsp_url(path), ClientMode::Play, transport, ports, Instant::now());
    let mut d = Driver { socket, session };
    let mut described = None;
    loop {
        match d.next().await.expect("session ended early") {
            ClientEvent::Described(s) => described = Some(s),
            ClientEvent::Started => break,
            ClientEvent::Failed { method, status } => panic!("{method:?} failed: {status}"),
            _ => {}
        }
    }
    let sdp = described.unwrap();
    let video = sdp::track_info(&sdp.media[0]).unwrap();
    let mut depack = Depacketizer::new(&video, &sdp.media[0]).unwrap();
    let (mut frames, mut first_key, mut reports) = (0, None, 0);
    let mut on_rtp = |packet: Bytes, frames: &mut usize, first_key: &mut Option<bool>| {
        let p = RtpPacket::parse(packet).unwrap();
        let _ = depack.push(&p);
        while let Some(au) = depack.pull() {
            first_key.get_or_insert(au.keyframe);
            *frames += 1;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        if transport == ClientTransport::Tcp {
            match d.next().await.expect("media") {
                ClientEvent::Rtp { track: 0, packet } => on_rtp(packet, &mut frames, &mut first_key),
                ClientEvent::Rtcp { packet, .. } => {
                    reports += rtcp::parse(&packet)
                        .unwrap()
                        .iter()
                        .filter(|p| matches!(p, RtcpPacket::SenderReport { .. }))
                        .count();
                }
                _ => {}
            }
        } else {
            let mut buf = [0u8; 65536];
            let mut buf2 = [0u8; 2048];
            tokio::select! {
                r = udp[0].0.recv(&mut buf) => on_rtp(Bytes::copy_from_slice(&buf[..r.unwrap()]), &mut frames, &mut first_key),
                r = udp[0].1.recv(&mut buf2) => {
                    let n = r.unwrap();
                    reports += rtcp::parse(&buf2[..n]).unwrap().iter().filter(|p| matches!(p, RtcpPacket::SenderReport { .. })).count();
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
    d.session.teardown(Instant::now());
    d.flush().await;
    (frames, first_key.unwrap_or(false), reports)
}

#[tokio::test(flavor = "multi_thread")]
async fn own_client_plays_over_tcp_and_udp() {
    let server = Server::start();
    let _publisher = publish(test_flv(), &server.rtmp_url("live/own"));
    wait_published(&server, "live/own").await;
    for transport in [ClientTransport::Tcp, ClientTransport::Udp] {
        let (frames, first_key, reports) = play(&server, "live/own", transport).await;
        assert!(frames > 60, "{transport:?}: {frames} frames");
        assert!(first_key, "{transport:?}: starts on a keyframe");
        assert!(reports >= 1, "{transport:?}: a sender report before media");
    }
}

/// The test FLV as frames and tracks (RTMP clock: ms).
fn flv_frames() -> (Tracks, Vec<std::sync::Arc<Frame>>) {
    let data = Bytes::from(std::fs::read(test_flv()).unwrap());
    let mut tracks = Tracks::default();
    let mut frames = Vec::new();
    for t in flv::read_file(&data).unwrap() {
        let ts = i64::from(t.timestamp);
        match t.tag_type {
            9 => match flv::parse_video(&t.body).unwrap() {
                VideoTag::Config { codec, config } => {
                    tracks.video = Some(TrackInfo::Video { codec, config, clock_rate: 1000 })
                }
                VideoTag::Frame { keyframe, cts, data, .. } => {
                    frames.push(Frame::new(TrackKind::Video, ts, ts + i64::from(cts), keyframe, data))
                }
                VideoTag::Ignored(_) => {}
            },
            8 => match flv::parse_audio(&t.body).unwrap() {
                AudioTag::AacConfig(config) => tracks.audio = Some(ferrocast_media::aac::track(config, 1000).unwrap()),
                AudioTag::AacFrame(data) => frames.push(Frame::new(TrackKind::Audio, ts, ts, true, data)),
                _ => {}
            },
            _ => {}
        }
    }
    (tracks, frames)
}

#[tokio::test(flavor = "multi_thread")]
async fn own_client_records_and_ffprobe_reads_rtmp() {
    record_then_read("own/rec", (100, 5), (200, 9)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rtp_sequence_and_timestamp_wraps_stay_monotonic_for_readers() {
    // Timestamps wrap 2.5 s in (video 90 kHz, audio 44.1 kHz), sequence numbers after about
    // 100 packets, while the reader reads from 1.5 s to 4.5 s: it must not notice.
    record_then_read("own/wrap", (65_436, u32::MAX - 225_000), (65_436, u32::MAX - 110_250)).await;
}

/// Publishes the test file twice over with our RTSP client (TCP), RTP sequence numbers and
/// timestamp offsets as given per track, while ffprobe reads the path over RTMP.
async fn record_then_read(path: &str, (video_seq, video_offset): (u16, u32), (audio_seq, audio_offset): (u16, u32)) {
    let server = Server::start();
    let (tracks, frames) = flv_frames();
    let (text, _) = sdp::describe(&tracks, "127.0.0.1", "0.0.0.0");
    let socket = TcpStream::connect(server.rtsp).await.unwrap();
    let session = ClientSession::new(
        &server.rtsp_url(path),
        ClientMode::Record(text),
        ClientTransport::Tcp,
        vec![],
        Instant::now(),
    );
    let mut d = Driver { socket, session };
    loop {
        match d.next().await.expect("session ended early") {
            ClientEvent::Started => break,
            ClientEvent::Failed { method, status } => panic!("{method:?} failed: {status}"),
            _ => {}
        }
    }
    let mut video = Packetizer::new(tracks.video.as_ref().unwrap(), 96, 1, video_seq, video_offset, 1400).unwrap();
    let mut audio = Packetizer::new(tracks.audio.as_ref().unwrap(), 97, 2, audio_seq, audio_offset, 1400).unwrap();
    let url = server.rtmp_url(path);
    let reader = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::spawn_blocking(move || probe(&url, 3)).await.unwrap()
    });
    let start = tokio::time::Instant::now();
    for loop_no in 0..2i64 {
        let span = 4100;
        for f in &frames {
            let f = Frame::new(f.kind, f.dts + loop_no * span, f.pts + loop_no * span, f.keyframe, f.data.clone());
            tokio::time::sleep_until(start + Duration::from_millis(f.dts as u64)).await;
            let (track, p) = match f.kind {
                TrackKind::Video => (0, video.packetize(&f)),
                TrackKind::Audio => (1, audio.packetize(&f)),
            };
            for pkt in codec::packets(&p) {
                d.session.send_rtp(track, &pkt);
            }
            d.flush().await;
        }
    }
    let p = reader.await.unwrap();
    p.assert_h264_aac(320, 240, 60);
    let video = p.packets_of("video");
    let span = video.last().unwrap().0 - video[0].0;
    assert!((2.0..5.0).contains(&span), "video spans {span} s");
}
