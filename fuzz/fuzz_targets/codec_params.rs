#![no_main]
//! Codec parameter parsing: avcC, hvcC, SPS (H.264 and H.265), AudioSpecificConfig; and the
//! ingest checks, whose output must always parse with every entry usable.
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
    if let Ok(c) = h264::check_avcc(&b) {
        let p = h264::AvcConfig::parse(&c.value).expect("a checked avcC parses");
        assert!(p.sps.iter().all(|s| h264::sps_problem(s).is_none()) && !p.sps.is_empty());
        assert!(p.pps.iter().all(|s| h264::pps_problem(s).is_none()) && !p.pps.is_empty());
    }
    if let Ok(c) = h265::check_hvcc(&b) {
        let p = h265::HevcConfig::parse(&c.value).expect("a checked hvcC parses");
        assert!(!p.vps.is_empty() && !p.sps.is_empty() && !p.pps.is_empty());
        assert!(p.sps.iter().all(|s| h265::entry_problem(h265::nal::SPS, s).is_none()));
    }
    if let Ok(ferrocast_media::TrackInfo::Audio { sample_rate, .. }) = aac::track(b.clone(), 1000) {
        assert!(sample_rate > 0);
    }
    let units: Vec<Bytes> = b.chunks(7).map(Bytes::copy_from_slice).collect();
    if let Ok(avcc) = h264::build_avcc(&units, &units) {
        h264::AvcConfig::parse(&avcc).expect("a built avcC parses");
    }
    let _ = h265::build_hvcc(&units, &units, &units);
    let _ = ferrocast_media::avc::to_four_byte_lengths(b.clone(), 2);
    let _ = ferrocast_media::avc::to_four_byte_lengths(b, 4);
});
