#![no_main]
//! Codec parameter parsing: avcC, hvcC, SPS (H.264 and H.265), AudioSpecificConfig.
use bytes::Bytes;
use ferrocast_media::{aac, h264, h265};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let b = Bytes::copy_from_slice(data);
    if let Ok(c) = h264::AvcConfig::parse(&b) {
        let _ = c.codec_string();
    }
    if let Ok(c) = h265::HevcConfig::parse(&b) {
        let _ = c.codec_string();
    }
    let _ = h264::sps_dimensions(data);
    let _ = h265::parse_sps(data);
    let _ = aac::AudioSpecificConfig::parse(data);
    let _ = ferrocast_media::avc::to_four_byte_lengths(b, 2);
});
