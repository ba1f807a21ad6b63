#![no_main]
//! Authorization headers, stream paths and HTTP (HLS) URLs: text a client controls.
use ferrocast::{hls, path};
use ferrocast_rtsp::auth::{self, Credentials};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let creds = Credentials::parse("user:pass").unwrap();
    let _ = auth::verify(&creds, Some(s), "DESCRIBE", "rtsp://h/live/a", "0123456789abcdef");
    let _ = auth::digest_params(s);
    let _ = path::validate(s);
    if let Some((app, name)) = s.split_once('\n') {
        let _ = path::stream_path(app, name);
    }
    let _ = hls::parse_url(s);
});
