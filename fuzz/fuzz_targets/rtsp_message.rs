#![no_main]
//! RTSP requests, responses and interleaved frames from one stream of bytes.
use bytes::BytesMut;
use ferrocast_rtsp::message;
use ferrocast_rtsp::transport::Transport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(m)) = message::decode(&mut buf) {
        if let message::Message::Request(r) = m {
            if let Some(t) = r.headers.get("Transport") {
                let _ = Transport::parse_header(t, |_| true);
            }
            let _ = r.session();
            let _ = r.encode();
        }
    }
});
