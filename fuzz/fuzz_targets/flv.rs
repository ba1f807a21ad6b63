#![no_main]
//! FLV tag bodies and whole files.
use bytes::Bytes;
use ferrocast_media::flv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let b = Bytes::copy_from_slice(data);
    let _ = flv::parse_video(&b);
    let _ = flv::parse_audio(&b);
    let _ = flv::read_file(&b);
});
