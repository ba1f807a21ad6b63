//! Routes the HTTP playback URLs: HLS VOD ([`super::hls_vod`]) first, then progressive MP4
//! ([`super::mp4_http`]). Anything else is not playback (None).

use std::sync::Arc;

use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;

use super::Playback;

/// The answer to a playback request (GET or HEAD), or None when it is not one.
pub async fn respond(playback: &Arc<Playback>, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    if let Some(r) = super::hls_vod::respond(playback, method, uri).await {
        return Some(r);
    }
    if let Some(r) = super::mp4_http::respond(playback, method, uri, headers).await {
        return Some(r);
    }
    None
}
