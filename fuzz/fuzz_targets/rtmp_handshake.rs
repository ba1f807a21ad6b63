#![no_main]
//! RTMP server and client handshakes on arbitrary bytes.
use bytes::BytesMut;
use ferrocast_rtmp::handshake::{ClientHandshake, ServerHandshake};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut s = ServerHandshake::new();
    let mut buf = BytesMut::from(data);
    for _ in 0..3 {
        if s.process(&mut buf).is_err() {
            break;
        }
    }
    let mut c = ClientHandshake::new();
    c.start();
    let _ = c.process(&mut BytesMut::from(data));
});
