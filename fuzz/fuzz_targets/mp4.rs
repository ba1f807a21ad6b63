#![no_main]
//! Whole MP4 files: box tree, sample entries, sample tables.
use bytes::Bytes;
use ferrocast_media::mp4;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mp4::read_file(&Bytes::copy_from_slice(data));
});
