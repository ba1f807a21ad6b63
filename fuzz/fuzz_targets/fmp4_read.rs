#![no_main]
//! Recordings read back: the scan of any bytes, and every part it lists read as frames. What
//! scans is consistent: parts follow each other up to the good length, and the scanner fed
//! piece by piece agrees with the scan of the whole.
use bytes::Bytes;
use ferrocast_media::fmp4_read::{self, Scanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    let Ok(scan) = fmp4_read::scan(&data) else {
        // Bytes that are no recording may still be handed to read_part as a part.
        let _ = fmp4_read::read_part(&Default::default(), &data);
        return;
    };
    let mut at = scan.init_len;
    for p in &scan.parts {
        assert!(p.offset >= at, "parts follow each other (skipped boxes may be between)");
        at = p.offset + p.len;
        let part = data.slice(p.offset as usize..at as usize);
        let frames = fmp4_read::read_part(&scan.layout, &part).expect("a scanned part reads");
        assert_eq!(frames.len() as u64, u64::from(p.video_samples) + u64::from(p.audio_samples));
        let moof = &data[p.offset as usize..(p.offset + p.moof_len) as usize];
        assert_eq!(fmp4_read::part_samples(&scan.layout, moof).map(|s| s.len()), Ok(frames.len()));
    }
    assert_eq!(at, scan.good_len);
    assert!(scan.good_len <= data.len() as u64);
    let mut s = Scanner::new(data.len() as u64);
    while let Some((at, len)) = s.wanted() {
        assert!(at + len as u64 <= data.len() as u64, "reads inside the file");
        s.handle_input(&data[at as usize..at as usize + len]).expect("it scanned whole");
    }
    assert_eq!(s.finish(), Ok(scan));
});
