//! Real client bytes, captured on loopback in front of ferrocast, fed to the server session.

use std::time::Instant;

use ferrocast_rtmp::MediaKind;
use ferrocast_rtmp::handshake::HandshakeKind;
use ferrocast_rtmp::server::{ServerConfig, ServerEvent, ServerSession};

fn run(capture: &[u8]) -> (ServerSession, Vec<ServerEvent>) {
    let now = Instant::now();
    let mut s = ServerSession::new(ServerConfig::default(), now);
    let mut events = Vec::new();
    // Feed in odd-sized pieces, as TCP would.
    for piece in capture.chunks(777) {
        s.handle_input(now, piece).unwrap();
        while let Some(ev) = s.poll_event() {
            match &ev {
                ServerEvent::Connect { .. } => s.accept_connect().unwrap(),
                ServerEvent::Publish { stream_id, .. } => s.accept_publish(*stream_id).unwrap(),
                ServerEvent::Play { stream_id, .. } => s.accept_play(*stream_id).unwrap(),
                _ => {}
            }
            events.push(ev);
        }
        while s.poll_transmit().is_some() {}
    }
    (s, events)
}

/// `ffmpeg -re -i in.flv -c copy -f flv rtmp://127.0.0.1/live/cam1` (ffmpeg 5.1.6, Debian 12):
/// the first 12,000 bytes it sent.
#[test]
fn ffmpeg_5_1_publish() {
    let (s, events) = run(include_bytes!("../testdata/ffmpeg5.1_publish_start.bin"));
    assert_eq!(s.handshake_kind(), Some(HandshakeKind::Digest));
    assert!(
        matches!(&events[0], ServerEvent::Connect { app, tc_url: Some(tc), .. } if app == "live" && tc.ends_with("/live"))
    );
    assert!(
        events.iter().any(|e| matches!(e, ServerEvent::Publish { name, kind, .. } if name == "cam1" && kind == "live"))
    );
    let media: Vec<MediaKind> = events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Media(m) => Some(m.kind),
            _ => None,
        })
        .collect();
    assert_eq!(media[0], MediaKind::Data, "onMetaData first");
    assert!(media.contains(&MediaKind::Video) && media.contains(&MediaKind::Audio));
}

/// `ffprobe rtmp://127.0.0.1/live/cam1` (ffmpeg 5.1.6): connect, createStream, play.
#[test]
fn ffprobe_5_1_play() {
    let (s, events) = run(include_bytes!("../testdata/ffprobe5.1_play_start.bin"));
    assert_eq!(s.handshake_kind(), Some(HandshakeKind::Digest));
    assert!(events.iter().any(|e| matches!(e, ServerEvent::Play { name, .. } if name == "cam1")), "{events:?}");
}
