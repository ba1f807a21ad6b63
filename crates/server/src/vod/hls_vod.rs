//! HLS VOD of recordings and files (RFC 8216): `GET /PATH/index.m3u8?start=T[&end=T]` and
//! `GET /vod/NAME.mp4/index.m3u8` answer a media playlist of type VOD whose fMP4 segments are
//! cut at keyframes (about [`TARGET_SEGMENT_US`], or the GOP when longer), with a
//! discontinuity and a new init segment where codec parameters change (and across gaps
//! between recordings), and PROGRAM-DATE-TIME for recordings.
//!
//! URLs are stateless: a segment's carries its time range (`hls/FROM_TO.m4s`, media µs: UTC
//! for recordings, from the file's start for files), an init segment's the time whose codec
//! parameters it holds (`hls/init_AT.mp4`); both are built on request from a
//! [`super::source::Source`] with the live path's fMP4 muxer, so a segment costs one read of
//! its frames and a thousand viewers keep nothing on the server. The `_` in the names keeps
//! them apart from live HLS segment names (which never have one).
//!
//! Fragment times are the frames' media times in µs (for recordings, µs since the Unix
//! epoch) in each track's timescale: any segment of any playlist of a path lines up with any
//! other without state.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use ferrocast_media::{Frame, Tracks, fmp4, rescale};

use super::mp4_http::MAX_SPAN_US;
use super::source::{Next, Source, SourceError, Span, clock_of};
use super::{FILE_PREFIX, Playback, Target, TargetError};

/// Segments are cut at the first keyframe at least this long after the segment's start.
pub const TARGET_SEGMENT_US: i64 = 4_000_000;

/// Longest segment, in a playlist and in a segment URL: a GOP longer than this is cut
/// without a keyframe (cameras' longest "smart" GOPs are about 10 s). Bounds the frames a
/// segment request holds in memory.
pub const MAX_SEGMENT_US: i64 = 30_000_000;

/// Most bytes of media in one segment: a segment request holds its frames in memory. 30 s
/// at 17 Mbit/s, or a 4 s segment at 130 Mbit/s. The playlist cuts a span of a higher rate
/// shorter ([`longest_segment_us`]); a segment still over it (a burst far above the span's
/// average) is refused (500, logged) rather than held.
pub const MAX_SEGMENT_BYTES: usize = 64 << 20;

/// Most keyframes read from the index for one playlist: a day of a 1 s GOP is 86,400.
const MAX_KEYFRAMES: usize = 1 << 18;

/// Most recording files (spans) in one playlist: a day of 1-minute files. A window with more
/// is listed up to the last of them, and the playlist says so (a comment line and the log):
/// a later `start` lists the rest.
const MAX_SPANS: usize = 1440;

/// Recordings further apart than this are a gap: a discontinuity in the playlist.
const MAX_CONTINUOUS_GAP_US: i64 = 100_000;

/// Most digits of a time in a URL (µs fit in 19).
const MAX_DIGITS: usize = 19;

/// A playback HLS URL, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Request<'a> {
    /// `PREFIX/index.m3u8`.
    Playlist,
    /// `PREFIX/hls/init_AT.mp4`.
    Init(&'a str),
    /// `PREFIX/hls/FROM_TO.m4s`.
    Segment(&'a str, &'a str),
}

/// The prefix (a path or `vod/NAME.mp4`) and what is asked of it.
fn parse(path: &str) -> Option<(&str, Request<'_>)> {
    let path = path.strip_prefix('/')?;
    if let Some(prefix) = path.strip_suffix("/index.m3u8") {
        return Some((prefix, Request::Playlist));
    }
    let (prefix, name) = path.rsplit_once("/hls/")?;
    let digits = |s: &str| !s.is_empty() && s.len() <= MAX_DIGITS + 1 && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(at) = name.strip_prefix("init_").and_then(|n| n.strip_suffix(".mp4")) {
        return digits(at).then_some((prefix, Request::Init(at)));
    }
    let (from, to) = name.strip_suffix(".m4s")?.split_once('_')?;
    (digits(from) && digits(to)).then_some((prefix, Request::Segment(from, to)))
}

/// The answer to an HLS VOD request (GET or HEAD), or None when the URL is not one (a live
/// path's playlist has no `start`).
pub async fn respond(playback: &Arc<Playback>, method: &Method, uri: &Uri) -> Option<Response> {
    let (prefix, request) = parse(uri.path())?;
    let is_file = prefix.starts_with(FILE_PREFIX);
    if !is_file && crate::path::validate(prefix).is_err() {
        return None;
    }
    let query = uri.query();
    if request == Request::Playlist && !is_file && matches!(crate::utc::query_time(query, "start"), Ok(None)) {
        // No start: a live playlist.
        return None;
    }
    let head = method == Method::HEAD;
    let (playback, prefix, query) = (playback.clone(), prefix.to_owned(), query.map(str::to_owned));
    let owned = match request {
        Request::Playlist => Owned::Playlist,
        Request::Init(at) => Owned::Init(at.to_owned()),
        Request::Segment(from, to) => Owned::Segment(from.to_owned(), to.to_owned()),
    };
    let answer = tokio::task::spawn_blocking(move || answer(&playback, &prefix, query.as_deref(), owned)).await;
    let mut r = match answer {
        Ok(Ok(a)) => a.into_response(head),
        Ok(Err((status, text))) => text_response(status, text),
        Err(_) => text_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()),
    };
    crate::http::cors(&mut r);
    Some(r)
}

enum Owned {
    Playlist,
    Init(String),
    Segment(String, String),
}

/// A body and how to label it.
struct Answer {
    body: Bytes,
    content_type: &'static str,
    cache: &'static str,
}

impl Answer {
    fn into_response(self, head: bool) -> Response {
        let len = self.body.len();
        let mut r = if head { Response::new(Body::empty()) } else { Response::new(Body::from(self.body)) };
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(self.cache));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        r
    }
}

fn text_response(status: StatusCode, text: String) -> Response {
    let mut r = Response::new(Body::from(format!("{text}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

type Failure = (StatusCode, String);

fn bad(text: impl Into<String>) -> Failure {
    (StatusCode::BAD_REQUEST, text.into())
}

fn source_failure(e: SourceError) -> Failure {
    match e {
        SourceError::NotFound | SourceError::Gone => (StatusCode::NOT_FOUND, "no recording or file there".into()),
        e => {
            tracing::warn!("hls vod: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "the recording or file cannot be read".into())
        }
    }
}

fn time(digits: &str, what: &str) -> Result<u64, Failure> {
    digits.parse::<u64>().ok().filter(|t| *t <= i64::MAX as u64).ok_or_else(|| bad(format!("{what}: not a time in µs")))
}

/// Blocking: the file system and the index.
fn answer(playback: &Playback, prefix: &str, query: Option<&str>, request: Owned) -> Result<Answer, Failure> {
    let is_file = prefix.starts_with(FILE_PREFIX);
    let file = || -> Result<Target, Failure> {
        match playback.target(prefix, None) {
            Some(Ok(t)) => Ok(t),
            _ => Err((StatusCode::NOT_FOUND, "no such file".into())),
        }
    };
    let recording =
        |start: u64, end: Option<u64>| Target::Recording { path: prefix.to_owned(), start_us: start, end_us: end };
    match request {
        Owned::Playlist => {
            let target = if is_file {
                file()?
            } else {
                match playback.target(prefix, query) {
                    Some(Ok(Target::Recording { path, start_us, end_us })) => {
                        if end_us.is_some_and(|e| e - start_us > MAX_SPAN_US) {
                            return Err(bad(format!("end: more than {} h after start", MAX_SPAN_US / 3_600_000_000)));
                        }
                        Target::Recording { path, start_us, end_us }
                    }
                    Some(Ok(t)) => t,
                    Some(Err(TargetError::BadTime(e))) => return Err(bad(e)),
                    Some(Err(TargetError::NoFile)) | None => return Err((StatusCode::NOT_FOUND, "not found".into())),
                }
            };
            let open_ended = matches!(target, Target::Recording { end_us: None, .. });
            let target = match target {
                Target::Recording { path, start_us, end_us: None } => {
                    Target::Recording { path, start_us, end_us: Some(start_us.saturating_add(MAX_SPAN_US)) }
                }
                t => t,
            };
            let mut source = Source::open(playback, &target).map_err(source_failure)?;
            let text = playlist(&mut source, matches!(target, Target::Recording { .. }))?;
            let cache = if open_ended { "no-cache" } else { "max-age=10" };
            Ok(Answer { body: Bytes::from(text), content_type: "application/vnd.apple.mpegurl", cache })
        }
        Owned::Init(at) => {
            let at = time(&at, "init")?;
            let target = if is_file { file()? } else { recording(at, Some(at.saturating_add(1))) };
            let source = Source::open(playback, &target).map_err(source_failure)?;
            let init = fmp4::init_segment(source.tracks())
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("no init segment: {e}")))?;
            Ok(Answer { body: init, content_type: "video/mp4", cache: "max-age=3600" })
        }
        Owned::Segment(from, to) => {
            let (from, to) = (time(&from, "segment start")?, time(&to, "segment end")?);
            if to <= from {
                return Err(bad("segment: its end is not after its start"));
            }
            if to - from > MAX_SEGMENT_US as u64 {
                return Err(bad(format!("segment: longer than {} s", MAX_SEGMENT_US / 1_000_000)));
            }
            let target = if is_file { file()? } else { recording(from, Some(to)) };
            let mut source = Source::open(playback, &target).map_err(source_failure)?;
            let body = segment(&mut source, from as i64, to as i64)?;
            Ok(Answer { body, content_type: "video/iso.segment", cache: "max-age=3600" })
        }
    }
}

/// One playlist segment: media time range.
struct Cut {
    from: i64,
    to: i64,
    /// A discontinuity before it; with the init segment's time when the codec parameters
    /// change there.
    discontinuity: bool,
    map: Option<i64>,
    /// It starts with a keyframe (or has no video): decodable alone.
    keyed: bool,
}

/// Cuts spans into segments at keyframes.
fn cuts(source: &mut Source, spans: &[Span]) -> Result<Vec<Cut>, Failure> {
    let mut out: Vec<Cut> = Vec::new();
    let mut prev: Option<&Span> = None;
    for (i, span) in spans.iter().enumerate() {
        // The first segment starts at the keyframe at or before the window's start.
        let start = if i == 0 {
            source.seek(span.start_us).map_err(source_failure)?.unwrap_or(span.start_us)
        } else {
            span.start_us
        };
        let keys = if span.tracks.video.is_some() {
            source.keyframes(start, span.end_us, MAX_KEYFRAMES).map_err(source_failure)?
        } else {
            // Audio only: every frame is a keyframe; cut at the target duration.
            (1..).map(|i| start + i * TARGET_SEGMENT_US).take_while(|t| *t < span.end_us).collect()
        };
        let (discontinuity, map) = match prev {
            None => (false, Some(start)),
            Some(p) if p.tracks != span.tracks => (true, Some(start)),
            Some(p) => (start - p.end_us > MAX_CONTINUOUS_GAP_US, None),
        };
        let video = span.tracks.video.is_some();
        // The span's start is a keyframe when it is the one seeked to, or one of the index's.
        let start_keyed = !video || i == 0 || keys.first() == Some(&start);
        let mut bounds = vec![start];
        for k in keys {
            let last = *bounds.last().unwrap_or(&start);
            if k - last >= TARGET_SEGMENT_US {
                bounds.push(k);
            }
        }
        bounds.push(span.end_us);
        let longest = longest_segment_us(span.bytes, span.end_us - span.start_us);
        let mut first = true;
        for (j, w) in bounds.windows(2).enumerate() {
            let (mut a, b) = (w[0], w[1]);
            // Bounds after the first are keyframes; a cut forced inside a long GOP is not.
            let mut keyed = if j == 0 { start_keyed } else { true };
            while a < b {
                let e = b.min(a + longest);
                out.push(Cut {
                    from: a,
                    to: e,
                    discontinuity: first && discontinuity,
                    map: if first { map } else { None },
                    keyed,
                });
                first = false;
                keyed = !video;
                a = e;
            }
        }
        prev = Some(span);
    }
    Ok(out)
}

/// The longest segment of a span of `bytes` over `duration_us`: [`MAX_SEGMENT_US`], or
/// shorter where the span's average rate would make a segment of it over half of
/// [`MAX_SEGMENT_BYTES`] (half: room for a GOP above the average), at least a second. The
/// playlist cuts by it, so that what it lists is served (a segment over the bytes is
/// refused).
fn longest_segment_us(bytes: u64, duration_us: i64) -> i64 {
    if duration_us <= 0 || bytes == 0 {
        return MAX_SEGMENT_US;
    }
    let budget = (MAX_SEGMENT_BYTES / 2) as u128;
    let fits = budget * duration_us as u128 / u128::from(bytes);
    (fits.min(MAX_SEGMENT_US as u128) as i64).max(1_000_000)
}

/// The media playlist of a source.
fn playlist(source: &mut Source, clock: bool) -> Result<String, Failure> {
    let mut spans = source.spans(MAX_SPANS + 1).map_err(source_failure)?;
    let truncated = spans.len() > MAX_SPANS;
    if truncated {
        spans.truncate(MAX_SPANS);
        tracing::warn!(
            "hls vod: a window of more than {MAX_SPANS} recording files; listed to {}",
            crate::utc::format(spans.last().map_or(0, |s| s.end_us.max(0) as u64))
        );
    }
    let cuts = cuts(source, &spans)?;
    if cuts.is_empty() {
        return Err((StatusCode::NOT_FOUND, "nothing recorded there".into()));
    }
    let target = cuts.iter().map(|c| (c.to - c.from + 999_999) / 1_000_000).max().unwrap_or(1).max(1);
    let mut s = String::with_capacity(64 * cuts.len() + 256);
    s.push_str("#EXTM3U\n#EXT-X-VERSION:7\n");
    s.push_str(&format!("#EXT-X-TARGETDURATION:{target}\n"));
    s.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-MEDIA-SEQUENCE:0\n");
    // Only when every segment starts with a keyframe (RFC 8216 4.3.5.1): a GOP longer than
    // MAX_SEGMENT_US is cut inside.
    if cuts.iter().all(|c| c.keyed) {
        s.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
    }
    if truncated {
        s.push_str(&format!("# ferrocast: more than {MAX_SPANS} recording files in the window; listed to the last of them, a later start lists the rest\n"));
    }
    for c in &cuts {
        if c.discontinuity {
            s.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if let Some(at) = c.map {
            s.push_str(&format!("#EXT-X-MAP:URI=\"hls/init_{}.mp4\"\n", at.max(0)));
        }
        if clock {
            s.push_str(&format!("#EXT-X-PROGRAM-DATE-TIME:{}\n", crate::utc::format(c.from.max(0) as u64)));
        }
        let d = (c.to - c.from) as f64 / 1e6;
        s.push_str(&format!("#EXTINF:{d:.6},\nhls/{}_{}.m4s\n", c.from.max(0), c.to.max(0)));
    }
    s.push_str("#EXT-X-ENDLIST\n");
    Ok(s)
}

/// The fMP4 media segment of the frames of [from, to).
fn segment(source: &mut Source, from: i64, to: i64) -> Result<Bytes, Failure> {
    source.seek(from).map_err(source_failure)?;
    let mut tracks: Option<Arc<Tracks>> = None;
    let mut frames: Vec<Arc<Frame>> = Vec::new();
    let mut bytes = 0usize;
    'read: loop {
        match source.next().map_err(source_failure)? {
            Next::End => break,
            Next::Batch(b) => {
                if let Some(t) = b.tracks {
                    if tracks.as_ref().is_some_and(|x| *x != t) && !frames.is_empty() {
                        // Other codec parameters: the playlist cuts there.
                        break 'read;
                    }
                    tracks = Some(t);
                }
                let Some(t) = &tracks else { continue };
                for f in b.frames {
                    if f.dts_us >= to {
                        break 'read;
                    }
                    if f.dts_us < from {
                        continue;
                    }
                    bytes += f.frame.data.len();
                    if bytes > MAX_SEGMENT_BYTES {
                        tracing::warn!("hls vod: a segment of {from}..{to} µs over {MAX_SEGMENT_BYTES} bytes: refused");
                        return Err((
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("segment over {MAX_SEGMENT_BYTES} bytes"),
                        ));
                    }
                    let clock = clock_of(t, f.frame.kind);
                    let dts = rescale(f.dts_us, 1_000_000, clock);
                    let pts = rescale(f.pts_us, 1_000_000, clock);
                    frames.push(Frame::new(f.frame.kind, dts, pts, f.frame.keyframe, f.frame.data.clone()));
                }
            }
        }
    }
    let Some(tracks) = tracks else { return Err((StatusCode::NOT_FOUND, "nothing recorded there".into())) };
    if frames.is_empty() {
        return Err((StatusCode::NOT_FOUND, "nothing recorded there".into()));
    }
    let sequence = (from / 1_000_000) as u32;
    Ok(fmp4::media_segment(sequence, &tracks, &frames, None, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_bounded_by_bytes_too() {
        // A camera at 4 Mbit/s: 30 s segments (15 MB) fit.
        assert_eq!(longest_segment_us(500_000 * 3600, 3_600_000_000), MAX_SEGMENT_US);
        // At 100 Mbit/s (12.5 MB/s) a 30 s segment would be 375 MB: cut at 2.56 s.
        let l = longest_segment_us(12_500_000 * 60, 60_000_000);
        assert!(l < MAX_SEGMENT_US && l as u128 * 12_500_000 <= (MAX_SEGMENT_BYTES as u128 / 2) * 1_000_000, "{l}");
        // Never below a second, nothing to go by: the time bound.
        assert_eq!(longest_segment_us(u64::MAX, 1_000_000), 1_000_000);
        assert_eq!(longest_segment_us(0, 1_000_000), MAX_SEGMENT_US);
        assert_eq!(longest_segment_us(10, 0), MAX_SEGMENT_US);
    }

    #[test]
    fn urls() {
        assert_eq!(parse("/cams/a/index.m3u8"), Some(("cams/a", Request::Playlist)));
        assert_eq!(parse("/vod/x.mp4/index.m3u8"), Some(("vod/x.mp4", Request::Playlist)));
        assert_eq!(parse("/cams/a/hls/12_34.m4s"), Some(("cams/a", Request::Segment("12", "34"))));
        assert_eq!(parse("/cams/a/hls/init_12.mp4"), Some(("cams/a", Request::Init("12"))));
        for bad in [
            "/cams/a/hls/12-34.m4s",
            "/cams/a/hls/12_34_5.m4s",
            "/cams/a/hls/_34.m4s",
            "/cams/a/hls/-1_34.m4s",
            "/cams/a/hls/init_.mp4",
            "/cams/a/hls/init_x.mp4",
            "/cams/a/hls/123456789012345678901_1.m4s",
            "/cams/a/media.m3u8",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        // Live segment names never have a `_`: the two never meet.
        assert!(crate::hls::parse_url("/cams/a/hls/12_34.m4s").is_none());
    }
}
