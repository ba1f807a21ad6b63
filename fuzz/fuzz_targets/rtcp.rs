#![no_main]
//! Compound RTCP packets.
use ferrocast_rtsp::rtcp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rtcp::parse(data);
});
