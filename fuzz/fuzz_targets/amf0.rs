#![no_main]
//! AMF0 decoding; what decodes must re-encode and decode to the same values.
use ferrocast_rtmp::amf0;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = amf0::decode_all(data) {
        let again = amf0::encode_all(&values);
        let back = amf0::decode_all(&again).expect("our own encoding decodes");
        // NaN numbers compare unequal; compare the encodings instead.
        assert_eq!(amf0::encode_all(&back), again);
    }
});
