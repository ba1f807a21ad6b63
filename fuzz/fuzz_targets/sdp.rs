#![no_main]
//! SDP parsing and the codec parameters drawn from it.
use ferrocast_rtsp::sdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = sdp::parse(data) {
        for m in &s.media {
            if let Some(t) = sdp::track_info(m) {
                let _ = ferrocast_media::fmp4::codec_string(&t);
                let _ = ferrocast_media::fmp4::dimensions(&t);
            }
        }
    }
});
