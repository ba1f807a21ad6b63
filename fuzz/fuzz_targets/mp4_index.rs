#![no_main]
//! MP4 files by index: any bytes give an error or tables whose samples all lie in the file,
//! in decode order per track, and the index fed by reads agrees with the one of the whole.
use ferrocast_media::mp4_index::{self, Movie};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(movie) = mp4_index::index(data) else { return };
    for table in [&movie.video, &movie.audio].into_iter().flatten() {
        let mut last = i64::MIN;
        for s in table.samples() {
            assert!(s.offset + u64::from(s.size()) <= data.len() as u64, "samples lie in the file");
            assert!(s.dts >= last || movie.fragmented, "decode order");
            last = s.dts;
        }
    }
    let read = |at: u64, len: usize| -> Result<Vec<u8>, ()> {
        assert!(at <= data.len() as u64);
        Ok(data[at as usize..(at as usize).saturating_add(len).min(data.len())].to_vec())
    };
    assert_eq!(Movie::open(data.len() as u64, read).ok(), Some(movie));
});
