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

/// Decodes `%XX` escapes (RFC 3986 section 2.1); a `%` not followed by two hex digits stays
/// as it is. Invalid UTF-8 is replaced, never a panic.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits the userinfo off an RTSP URL (RFC 3986 section 3.2.1): `rtsp://user:pass@host/p`
/// gives `rtsp://host/p` and the percent-decoded `(user, pass)` (a missing `:pass` is an
/// empty password). The authority ends at the first `/` after the scheme and the host
/// follows its last `@`, so a raw `@` in a password works too (`rtsp://u:p@ss@h/x`).
pub fn split_userinfo(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..end].rfind('@') else {
        return (url.to_owned(), None);
    };
    let userinfo = &rest[..at];
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    (format!("{scheme}://{}", &rest[at + 1..]), Some((percent_decode(user), percent_decode(password))))
}

/// The authority (`host:port`) of a URL without userinfo, lower-cased, with the RTSP default
/// port 554 written out (RFC 2326 section 3.2), so two spellings of one server compare equal.
pub fn authority(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = &rest[..end];
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h).to_ascii_lowercase();
    // `[v6]:port`, `host:port`, or no port.
    let has_port = match host.rfind(':') {
        Some(i) => !host[i..].contains(']'),
        None => false,
    };
    Some(if has_port { host } else { format!("{host}:554") })
}

/// Resolves an SDP `a=control` against the base URL (RFC 2326 C.1.1): `*` or an empty
/// control is the base itself, an absolute URL is used as it is, and a relative one is
/// appended to the base with one `/` between them. Cameras rely on the append form: Dahua's
/// Content-Base is `rtsp://cam/cam/realmonitor?channel=1&subtype=0/` and its controls
/// `trackID=0` go after the query, which RFC 3986 resolution would drop.
pub fn join_control(base: &str, control: &str) -> String {
    let control = control.trim();
    if control.is_empty() || control == "*" {
        return base.to_owned();
    }
    if control.contains("://") {
        return control.to_owned();
    }
    if let Some(abs_path) = control.strip_prefix('/') {
        // A path-absolute control: the base's scheme and authority, this path.
        if let Some((scheme, rest)) = base.split_once("://") {
            let end = rest.find('/').unwrap_or(rest.len());
            return format!("{scheme}://{}/{abs_path}", &rest[..end]);
        }
    }
    if base.ends_with('/') { format!("{base}{control}") } else { format!("{base}/{control}") }
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

    #[test]
    fn credentials_in_urls() {
        let (u, c) = split_userinfo("rtsp://admin:p%40ss@10.0.0.5:554/Streaming/Channels/101");
        assert_eq!(u, "rtsp://10.0.0.5:554/Streaming/Channels/101");
        assert_eq!(c, Some(("admin".into(), "p@ss".into())));
        // A raw `@` (and `:`) in the password: the host follows the last `@`.
        let (u, c) = split_userinfo("rtsp://admin:p@ss:w@cam/live?x=a@b");
        assert_eq!(u, "rtsp://cam/live?x=a@b");
        assert_eq!(c, Some(("admin".into(), "p@ss:w".into())));
        let (u, c) = split_userinfo("rtsp://us%65r@cam");
        assert_eq!((u.as_str(), c), ("rtsp://cam", Some(("user".into(), String::new()))));
        assert_eq!(split_userinfo("rtsp://cam/a@b"), ("rtsp://cam/a@b".into(), None));
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
        assert_eq!(authority("rtsp://CAM/x"), Some("cam:554".into()));
        assert_eq!(authority("rtsp://cam:554?x"), Some("cam:554".into()));
        assert_eq!(authority("rtsp://[::1]:8554/x"), Some("[::1]:8554".into()));
        assert_eq!(authority("rtsp://[::1]/x"), Some("[::1]:554".into()));
        assert_eq!(authority("nope"), None);
    }

    /// RFC 2326 C.1.1 and what cameras send.
    #[test]
    fn control_resolution() {
        // Hikvision: Content-Base with a trailing slash, `trackID=1`.
        assert_eq!(
            join_control("rtsp://cam/Streaming/Channels/101/", "trackID=1"),
            "rtsp://cam/Streaming/Channels/101/trackID=1"
        );
        assert_eq!(join_control("rtsp://h/live/a", "trackID=1"), "rtsp://h/live/a/trackID=1");
        assert_eq!(join_control("rtsp://h/live/a/", "*"), "rtsp://h/live/a/");
        assert_eq!(join_control("rtsp://h/live/a", ""), "rtsp://h/live/a");
        // Axis: absolute controls.
        assert_eq!(
            join_control("rtsp://cam/axis-media/media.amp", "rtsp://cam/axis-media/media.amp/trackID=1"),
            "rtsp://cam/axis-media/media.amp/trackID=1"
        );
        // Dahua: the base ends after the query.
        assert_eq!(
            join_control("rtsp://cam/cam/realmonitor?channel=1&subtype=0/", "trackID=0"),
            "rtsp://cam/cam/realmonitor?channel=1&subtype=0/trackID=0"
        );
        assert_eq!(join_control("rtsp://cam:554/a/b", "/c/track1"), "rtsp://cam:554/c/track1");
    }
}
