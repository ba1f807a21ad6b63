#![no_main]
//! Server responses (and interleaved frames) into the RTSP client session, play and record.
use ferrocast_rtsp::client::{ClientMode, ClientSession, ClientTransport};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let now = Instant::now();
    let mode = if which & 1 == 0 {
        ClientMode::Play
    } else {
        ClientMode::Record("v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=0\r\n".into())
    };
    let transport = if which & 2 == 0 { ClientTransport::Tcp } else { ClientTransport::Udp };
    let mut c = ClientSession::new("rtsp://127.0.0.1:8554/live/a", mode, transport, vec![(5000, 5001); 4], now);
    for (i, chunk) in rest.chunks(97).enumerate() {
        while c.poll_transmit().is_some() {}
        if c.handle_input(now + Duration::from_millis(i as u64), chunk).is_err() {
            return;
        }
        while c.poll_event().is_some() {}
    }
    c.keep_alive(now + Duration::from_secs(30));
    c.teardown(now + Duration::from_secs(31));
    let _ = c.handle_timeout(now + Duration::from_secs(60));
});
