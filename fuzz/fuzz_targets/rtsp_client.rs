#![no_main]
//! Server responses (and interleaved frames) into the RTSP client session, play and record,
//! over TCP, UDP and multicast, with credentials (so 401 challenges are answered) and the
//! clock moving (so keep-alives and answer deadlines fire).
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
    let transport = match (which >> 1) % 3 {
        0 => ClientTransport::Tcp,
        1 => ClientTransport::Udp,
        _ => ClientTransport::Multicast,
    };
    let url = if which & 8 == 0 { "rtsp://u:p%40ss@127.0.0.1:8554/live/a" } else { "rtsp://127.0.0.1:8554/live/a" };
    let mut c = ClientSession::new(url, mode, transport, vec![(5000, 5001); 4], now);
    for (i, chunk) in rest.chunks(97).enumerate() {
        let t = now + Duration::from_secs(i as u64);
        while c.poll_transmit().is_some() {}
        if c.handle_input(t, chunk).is_err() || c.handle_timeout(t).is_err() {
            return;
        }
        while c.poll_event().is_some() {}
        let _ = c.poll_timeout();
        c.send_rtcp(i % 20, chunk);
    }
    c.keep_alive(now + Duration::from_secs(300));
    c.teardown(now + Duration::from_secs(301));
    let _ = c.handle_timeout(now + Duration::from_secs(400));
});
