#![no_main]
//! The chunk decoder with a chunk size from the first bytes (and, from its top bit, before or
//! after media is allowed), then arbitrary chunks.
use bytes::BytesMut;
use ferrocast_rtmp::chunk::{ChunkDecoder, MAX_BUFFERED_BEFORE_PUBLISH};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let mut d = ChunkDecoder::new(1 << 20);
    let media = data[0] & 0x80 != 0;
    if media {
        d.allow_media();
    }
    let _ = d.set_chunk_size(u32::from_be_bytes([data[0] & 0x7f, data[1], data[2], data[3]]) % 70_000);
    let mut buf = BytesMut::from(&data[4..]);
    while let Ok(Some(_)) = d.decode(&mut buf) {
        assert!(media || d.held() <= MAX_BUFFERED_BEFORE_PUBLISH, "{} bytes held before publish", d.held());
    }
    assert!(media || d.held() <= MAX_BUFFERED_BEFORE_PUBLISH, "{} bytes held before publish", d.held());
});
