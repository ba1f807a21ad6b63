#![no_main]
//! The configuration loader on arbitrary text.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ferrocast::config::Config::parse(text);
    }
});
