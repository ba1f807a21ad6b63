#![no_main]
//! Request heads on the raw HLS path (`hls_http`): bytes any client sends before anything is
//! authorized, read with httparse and turned into a request or handed to hyper.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ferrocast::hls_http::wants(data);
});
