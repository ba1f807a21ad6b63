//! Request URIs (RFC 2326 section 3.2) and control URLs (RFC 2326 C.1.1): the stream path a
//! request names, and which media of a session description a SETUP names.

use crate::sdp::Sdp;

/// The path part of an RTSP URL (`rtsp://host:port/APP/STREAM?query` gives `APP/STREAM`).
pub fn path(uri: &str) -> &str {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i + 1..]);
    path.split(['?', '#']).next().unwrap_or("").trim_end_matches('/')
}

/// The query of an RTSP URL (`rtsp://h/PATH?start=T` gives `start=T`), if any.
pub fn query(uri: &str) -> Option<&str> {
    let q = uri.split_once('?')?.1;
    Some(q.split('#').next().unwrap_or(""))
}

/// The URL without its query and fragment, and without a trailing `/`.
pub fn without_query(uri: &str) -> &str {
    uri.split(['?', '#']).next().unwrap_or("").trim_end_matches('/')
}

/// Splits a SETUP URL into the stream path and the track part (`trackID=1`, `streamid=0`).
pub fn split_control(uri: &str) -> (&str, Option<&str>) {
    let p = path(uri);
    match p.rsplit_once('/') {
        // `trackID=1`, `streamid=0`: a name, `=`, a number (what our SDPs write). A last
        // segment that merely starts with "track" or "stream" is a path's own (a file
        // `vod/stream1.mp4`).
        Some((base, last)) if last.split_once('=').is_some_and(|(_, n)| n.parse::<usize>().is_ok()) => {
            (base, Some(last))
        }
        _ => (p, None),
    }
}

/// The media of `sdp` a SETUP of `uri` names: the index of its `m=` line (every media line
/// counts, supported or not). An absolute `a=control` must equal the URI; a relative one the
/// last segment of the URI's path; a media without `a=control` is addressed by the aggregate
/// URL (RFC 2326 C.1.1).
pub fn media_for_control(sdp: &Sdp, uri: &str) -> Option<usize> {
    let (_, control) = split_control(uri);
    // The last segment of the URI's path, whatever it looks like (`audio`, `media0`, ...):
    // the publisher wrote the control itself.
    let last = path(uri).rsplit_once('/').map(|(_, l)| l);
    sdp.media.iter().position(|m| match (&m.control, control) {
        (Some(c), _) if c.contains("://") => uri.trim_end_matches('/') == c.trim_end_matches('/'),
        (Some(c), _) if last.is_some_and(|l| l == c.trim_matches('/')) => true,
        (None, None) => true,
        _ => false,
    })
}

/// The track a SETUP of a stream we describe names: `trackID=N` (or any `name=N`) gives N.
pub fn described_track(control: &str) -> Option<usize> {
    control.rsplit_once('=').and_then(|(_, n)| n.parse::<usize>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_controls() {
        assert_eq!(path("rtsp://h:8554/live/cam1"), "live/cam1");
        assert_eq!(path("rtsp://h/live/cam1/?x=1"), "live/cam1");
        assert_eq!(path("rtsp://h"), "");
        assert_eq!(split_control("rtsp://h/live/cam1/trackID=1"), ("live/cam1", Some("trackID=1")));
        assert_eq!(split_control("rtsp://h/live/cam1/streamid=0"), ("live/cam1", Some("streamid=0")));
        assert_eq!(split_control("rtsp://h/live/cam1"), ("live/cam1", None));
        assert_eq!(split_control("rtsp://h/vod/stream1.mp4"), ("vod/stream1.mp4", None));
        assert_eq!(split_control("rtsp://h/vod/track.mp4/trackID=1"), ("vod/track.mp4", Some("trackID=1")));
        assert_eq!(described_track("trackID=1"), Some(1));
        assert_eq!(described_track("trackID=x"), None);
        let abs = "rtsp://h:1/cams/a/trackID=1?start=2026-11-25T10:00:00Z";
        assert_eq!(split_control(abs), ("cams/a", Some("trackID=1")));
        assert_eq!(query(abs), Some("start=2026-11-25T10:00:00Z"));
        assert_eq!(query("rtsp://h/a"), None);
        assert_eq!(without_query("rtsp://h/cams/a/?start=1"), "rtsp://h/cams/a");
    }

    /// Every m= line counts, also one we cannot carry: the index is the SDP's.
    #[test]
    fn media_index_counts_every_media_line() {
        let sdp = crate::sdp::parse(
            b"v=0\r\ns=x\r\nm=application 0 RTP/AVP 107\r\na=control:streamid=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:streamid=1\r\nm=audio 0 RTP/AVP 0\r\na=control:rtsp://h/live/a/audio\r\n",
        )
        .unwrap();
        assert_eq!(media_for_control(&sdp, "rtsp://h/live/a/streamid=1"), Some(1));
        assert_eq!(media_for_control(&sdp, "rtsp://h/live/a/streamid=0"), Some(0));
        assert_eq!(media_for_control(&sdp, "rtsp://h/live/a/audio/"), Some(2));
        assert_eq!(media_for_control(&sdp, "rtsp://h/live/a/streamid=7"), None);
        assert_eq!(media_for_control(&sdp, "rtsp://h/live/a"), None);
    }
}
