#![no_main]
//! A whole server session past a valid handshake: control messages, AMF0 commands, media;
//! every decision accepted so deep states are reached.
use std::time::Instant;

use ferrocast_rtmp::{ServerConfig, ServerEvent, ServerSession};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut s = ServerSession::new(ServerConfig { max_message_len: 1 << 20, ..ServerConfig::default() }, now);
    let mut hs = vec![3u8];
    hs.extend_from_slice(&[0u8; 1536 * 2]);
    if s.handle_input(now, &hs).is_err() {
        return;
    }
    for piece in data.chunks(333) {
        if s.handle_input(now, piece).is_err() {
            return;
        }
        while let Some(ev) = s.poll_event() {
            let r = match ev {
                ServerEvent::Connect { .. } => s.accept_connect(),
                ServerEvent::Publish { stream_id, .. } => s.accept_publish(stream_id),
                ServerEvent::Play { stream_id, .. } => s.accept_play(stream_id),
                _ => Ok(()),
            };
            if r.is_err() {
                return;
            }
        }
        while s.poll_transmit().is_some() {}
    }
    let _ = s.handle_timeout(now + std::time::Duration::from_secs(3600));
});
