#![no_main]
//! The chunk decoder with a chunk size from the first bytes, then arbitrary chunks.
use bytes::BytesMut;
use ferrocast_rtmp::chunk::ChunkDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let mut d = ChunkDecoder::new(1 << 20);
    let _ = d.set_chunk_size(u32::from_be_bytes([data[0], data[1], data[2], data[3]]) % 70_000);
    let mut buf = BytesMut::from(&data[4..]);
    while let Ok(Some(_)) = d.decode(&mut buf) {}
});
