//! Progressive MP4 over HTTP with byte ranges: `/PATH/recording.mp4?start=T&end=T` (or
//! `&duration=S`) and `/vod/NAME.mp4`.
//!
//! A recording range is laid out as one MP4 whose moov comes first ([`build`]): the files of
//! the range are read only for their init segments and moofs (the part tables say where the
//! moofs are), never for media data, and the sample tables are built with
//! [`ferrocast_media::mp4_progressive`]. Its mdat is a list of [`Span`]s, each a run of bytes of
//! one recording file; a response (the whole file or one Range) is streamed from the header
//! built in memory and from the files, [`READ_CHUNK`] at a time, read on the blocking pool.
//!
//! The range starts at the video keyframe at or before `start` (so it decodes from its first
//! frame) and ends at the last sample before `end`. Files are stitched in order; a gap between
//! two recordings is closed up (the next file's samples follow at once): players handle empty
//! edits inside a track unevenly, and a continuous timeline keeps seeking simple, at the cost
//! of a wall-clock time that no longer maps linearly onto the file's. When
//! a file's codec parameters differ from the first file's, the range ends before it: one
//! sample entry per track is what every player handles (a second range from there plays on).
//!
//! Each track of an MP4 without edit lists starts at time 0: a track whose first sample in the
//! range comes after the other's (audio a few ms after the keyframe) starts that much early,
//! less than one of its frames; no edit list is written for it either.
//!
//! A `/vod` file whose moov comes first is served as it is; one whose moov comes last, or a
//! fragmented one, is laid out moov first the same way from its sample tables
//! ([`ferrocast_media::mp4_index`], shared with RTSP playback), its media bytes read from the
//! file.
//!
//! A built layout is kept briefly ([`CACHE_TTL`]; [`MAX_CACHED`] layouts, [`MAX_CACHE_BYTES`]):
//! a `<video>` element asks for one URL several times, a Range at a time.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use ferrocast_media::fmp4_read;
use ferrocast_media::mp4_progressive::{Builder, ChunkSample, ProgressiveError};
use ferrocast_media::{TrackKind, Tracks, rescale};
use tracing::{debug, warn};

use super::source::{read_fragment, read_init, start_in};
use super::{FILE_PREFIX, Playback, Target, TargetError};
use crate::record::Recordings;
use crate::record::index::Segment;

/// The file name that asks for a recording as MP4: `/PATH/recording.mp4`.
pub const RECORDING_FILE: &str = "recording.mp4";

/// Longest range of one request (issue 16): a day. Its header is some 6.5 bytes a sample
/// (41 MB at 25 fps with AAC, built in 0.3 s: `mp4_progressive::bench`); longer spans are
/// several requests.
pub const MAX_SPAN_US: u64 = 24 * 3600 * 1_000_000;

/// The range of a request with neither `end` nor `duration`: an hour from `start` (a header
/// of about 1.7 MB at 25 fps with AAC, built in some 15 ms), not the longest allowed: an
/// open-ended URL is what a player or a crawler asks for most, and each new start is a new
/// build. Longer ranges, up to [`MAX_SPAN_US`], are asked for with `end` or `duration`.
pub const DEFAULT_SPAN_US: u64 = 3600 * 1_000_000;

/// Most layouts being built at once (each reads the moofs of its range and holds its header,
/// up to some 41 MB for a day): past it a request is answered 503 with `Retry-After`, not
/// queued, so a burst of distinct ranges costs at most this many builds of memory and CPU.
pub const MAX_BUILDS: usize = 4;

/// One of the [`MAX_BUILDS`] builds under way; released when dropped.
struct BuildPermit;

static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl BuildPermit {
    /// A permit, or None when [`MAX_BUILDS`] builds are under way.
    fn try_acquire() -> Option<BuildPermit> {
        use std::sync::atomic::Ordering;
        BUILDS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_BUILDS).then_some(n + 1)).ok()?;
        Some(BuildPermit)
    }
}

impl Drop for BuildPermit {
    fn drop(&mut self) {
        BUILDS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Bytes read from a file and handed to the connection at a time: what one response holds in
/// memory besides its layout (a thousand viewers, 64 MB).
pub const READ_CHUNK: usize = 64 << 10;

/// How long a built layout is reused: the requests a `<video>` element makes while it loads
/// and seeks come within seconds; a range still being recorded is rebuilt after it.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
/// Most layouts kept.
pub const MAX_CACHED: usize = 32;
/// Most bytes of layouts kept (headers and span lists); a layout larger than this is built
/// for its request only.
pub const MAX_CACHE_BYTES: usize = 256 << 20;

/// A run of mdat bytes taken from one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Offset in the response's whole file.
    pub out: u64,
    /// Which file ([`Layout::files`]).
    pub file: u32,
    /// Offset in that file.
    pub at: u64,
    /// Bytes.
    pub len: u64,
}

/// A whole response: a header in memory, then spans of files.
#[derive(Debug)]
pub struct Layout {
    /// The first bytes (empty for a file served as it is).
    pub header: Bytes,
    /// The files the spans read.
    pub files: Vec<PathBuf>,
    /// In order, each starting where the previous one ends, the first at `header.len()`.
    pub spans: Vec<Span>,
    /// Bytes in all.
    pub len: u64,
    /// A strong validator (RFC 9110 8.8.3): a client resuming with `If-Range` gets the rest
    /// only if it is still the same sequence of bytes (a range still being recorded grows).
    pub etag: String,
}

impl Layout {
    /// What it holds in memory.
    fn cost(&self) -> usize {
        self.header.len()
            + self.spans.len() * std::mem::size_of::<Span>()
            + self.files.iter().map(|f| f.as_os_str().len() + 32).sum::<usize>()
    }

    /// A file served as it is.
    fn whole_file(path: PathBuf, meta: &std::fs::Metadata) -> Layout {
        use std::os::unix::fs::MetadataExt;
        let len = meta.len();
        let spans = if len > 0 { vec![Span { out: 0, file: 0, at: 0, len }] } else { Vec::new() };
        let etag = format!("\"f{:x}-{:x}-{:x}.{:x}\"", meta.ino(), len, meta.mtime(), meta.mtime_nsec());
        Layout { header: Bytes::new(), files: vec![path], spans, len, etag }
    }
}

/// Why a recording range has no layout.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No recording of the path in the range (404).
    #[error("no recordings in range")]
    NotFound,
    /// No index: still being opened after a start (503, Retry-After), or no recordings at
    /// all (404); [`Playback::index_ready`] tells which.
    #[error("the recordings index is opening")]
    NotReady,
    /// More samples than one file takes (400: ask for less).
    #[error("range too large: {0}")]
    TooLarge(ProgressiveError),
    /// The index or a file could not be read (500).
    #[error("{0}")]
    Failed(String),
}

// ---------------------------------------------------------------------------------------
// Routing

/// The answer to `GET`/`HEAD` of a progressive MP4 URL, or None when `uri` is not one.
pub async fn respond(playback: &Arc<Playback>, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    let path = uri.path().strip_prefix('/')?;
    let head = method == Method::HEAD;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let if_range = headers.get(header::IF_RANGE).map(|v| v.to_str().unwrap_or("?"));
    if let Some(name) = path.strip_prefix(FILE_PREFIX) {
        if !name.to_ascii_lowercase().ends_with(".mp4") {
            return None;
        }
        let (pb, path) = (playback.clone(), path.to_owned());
        let opened = tokio::task::spawn_blocking(move || match pb.target(&path, None) {
            Some(Ok(Target::File(f))) => vod_file(f).map(Some),
            _ => Ok(None),
        })
        .await;
        return Some(match opened {
            Ok(Ok(Some(layout))) => {
                debug!(file = %layout.files[0].display(), len = layout.len, range = range.as_deref(), "vod mp4");
                serve(layout, head, range.as_deref(), if_range)
            }
            Ok(Ok(None)) => text(StatusCode::NOT_FOUND, "not found\n".into()),
            Ok(Err(e)) => {
                warn!("vod mp4: {e}");
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n".into())
            }
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n".into()),
        });
    }
    let stream = path.strip_suffix(RECORDING_FILE)?.strip_suffix('/')?;
    if stream.is_empty() {
        return None;
    }
    let (pb, stream, query) = (playback.clone(), stream.to_owned(), uri.query().map(str::to_owned));
    let built = tokio::task::spawn_blocking(move || recording(&pb, &stream, query.as_deref())).await;
    Some(match built {
        Ok(Ok(layout)) => {
            debug!(len = layout.len, range = range.as_deref(), "recording mp4");
            serve(layout, head, range.as_deref(), if_range)
        }
        Ok(Err((status, msg))) => {
            let mut r = text(status, msg);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            r
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n".into()),
    })
}

/// A `/vod` file as served: the file itself when its moov comes before its media (what a
/// `<video>` element scrubs at once), else (moov last, or fragmented) the same samples laid
/// out moov first, from its sample tables, the media bytes read from the file (cached like
/// recordings' layouts). Blocking.
fn vod_file(file: PathBuf) -> Result<Arc<Layout>, String> {
    let meta = std::fs::metadata(&file).map_err(|e| e.to_string())?;
    if moov_first(&file, meta.len()).map_err(|e| e.to_string())? {
        return Ok(Arc::new(Layout::whole_file(file, &meta)));
    }
    use std::os::unix::fs::MetadataExt;
    // The file as it is now: a changed or replaced file is another key.
    let key = Key {
        dir: file.clone(),
        path: format!("{}.{}:{}", meta.mtime(), meta.mtime_nsec(), meta.ino()),
        start_us: 0,
        end_us: meta.len(),
    };
    if let Some(l) = cache_get(&key) {
        return Ok(l);
    }
    let (_, movie) = super::source::movie(&file).map_err(|e| e.to_string())?;
    let layout = Arc::new(laid_out(&movie, file, &meta).map_err(|e| e.to_string())?);
    cache_put(key, layout.clone());
    Ok(layout)
}

/// Most top-level boxes looked at before a moov, mdat or moof turns up.
const MAX_TOP_LEVEL_BOXES: usize = 64;

/// Whether a file's top-level moov comes before its mdat, with no moof (reads box headers
/// only).
fn moov_first(file: &std::path::Path, len: u64) -> std::io::Result<bool> {
    let f = File::open(file)?;
    let mut at = 0u64;
    let mut moov = false;
    let mut head = [0u8; 16];
    for _ in 0..MAX_TOP_LEVEL_BOXES {
        let n = (len.saturating_sub(at)).min(16) as usize;
        if n < 8 {
            return Ok(false);
        }
        f.read_exact_at(&mut head[..n], at)?;
        let Ok(Some((kind, _, size))) = fmp4_read::box_header(&head[..n], at) else { return Ok(false) };
        match &kind {
            // Fragmented (an empty moov first, then moofs): the moofs hold the tables.
            b"moof" => return Ok(false),
            b"mdat" => return Ok(moov),
            b"moov" => moov = true,
            _ => {}
        }
        if size == 0 {
            return Ok(false);
        }
        at = at.saturating_add(size);
    }
    Ok(false)
}

/// Media time a chunk of one track covers in a file laid out moov first: the samples of about
/// this much time are one run in mdat, then the other track's.
const VOD_CHUNK_US: i64 = 1_000_000;

/// `movie`'s samples laid out moov first, chunks of the two tracks interleaved by time, each
/// sample's bytes taken from `file` where the sample tables say.
fn laid_out(
    movie: &ferrocast_media::mp4_index::Movie,
    file: PathBuf,
    meta: &std::fs::Metadata,
) -> Result<Layout, String> {
    let ts = |k| movie.table(k).map(|t| t.timescale.max(1));
    let mut builder = Builder::new(&movie.tracks, ts(TrackKind::Video), ts(TrackKind::Audio));
    let mut spans: Vec<Span> = Vec::new();
    let mut next = [0usize, 0usize];
    let kinds = [TrackKind::Video, TrackKind::Audio];
    loop {
        // The track whose next sample comes first.
        let pick = (0..2)
            .filter_map(|i| {
                let t = movie.table(kinds[i])?;
                let s = t.samples().get(next[i])?;
                Some((rescale(s.dts, t.timescale.max(1), 1_000_000), i))
            })
            .min();
        let Some((from_us, i)) = pick else { break };
        let t = movie.table(kinds[i]).expect("picked");
        let mut chunk = Vec::new();
        let mut places = Vec::new();
        while let Some(s) = t.samples().get(next[i]) {
            if !chunk.is_empty() && rescale(s.dts, t.timescale.max(1), 1_000_000) >= from_us + VOD_CHUNK_US {
                break;
            }
            let duration = t.duration(next[i]);
            chunk.push(ChunkSample {
                dts: s.dts,
                cts: i64::from(s.cts),
                duration: u32::try_from(duration.max(0)).unwrap_or(u32::MAX),
                size: s.size(),
                keyframe: s.keyframe(),
            });
            places.push((s.offset, u64::from(s.size())));
            next[i] += 1;
        }
        let mut out = builder.push(kinds[i], &chunk).map_err(|e| e.to_string())?;
        for (at, len) in places {
            match spans.last_mut() {
                Some(last) if last.at + last.len == at && last.out + last.len == out => last.len += len,
                _ => spans.push(Span { out, file: 0, at, len }),
            }
            out += len;
        }
    }
    if builder.samples() == 0 {
        return Err("no samples".into());
    }
    let progressive = builder.finish().map_err(|e| e.to_string())?;
    let shift = progressive.header.len() as u64;
    let spans = spans.into_iter().map(|s| Span { out: s.out + shift, ..s }).collect();
    use std::os::unix::fs::MetadataExt;
    let etag = format!("\"p{:x}-{:x}-{:x}.{:x}\"", meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec());
    Ok(Layout { len: progressive.len(), header: progressive.header, files: vec![file], spans, etag })
}

/// The layout of `stream`'s recordings the query asks for (cached), or the status and
/// message of why not. Blocking.
fn recording(pb: &Playback, stream: &str, query: Option<&str>) -> Result<Arc<Layout>, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, format!("{m}\n"));
    let (start_us, end_us) = match pb.target(stream, query) {
        None => return Err(bad("recording.mp4 needs start=T (RFC 3339)".into())),
        Some(Err(TargetError::BadTime(m))) => return Err(bad(m)),
        Some(Err(TargetError::NoFile)) => return Err((StatusCode::NOT_FOUND, "not found\n".into())),
        Some(Ok(Target::Recording { start_us, end_us, .. })) => (start_us, end_us),
        Some(Ok(Target::File(_))) => return Err((StatusCode::NOT_FOUND, "not found\n".into())),
    };
    let duration = query_duration(query).map_err(bad)?;
    let end_us = match (end_us, duration) {
        (Some(_), Some(_)) => return Err(bad("end and duration: give one".into())),
        (Some(e), None) => e,
        (None, Some(d)) => start_us.saturating_add(d),
        (None, None) => start_us.saturating_add(DEFAULT_SPAN_US),
    };
    if end_us - start_us > MAX_SPAN_US {
        return Err(bad(format!("at most {} s per request", MAX_SPAN_US / 1_000_000)));
    }
    let key = Key { dir: pb.recordings.config().dir.clone(), path: stream.to_owned(), start_us, end_us };
    if let Some(l) = cache_get(&key) {
        return Ok(l);
    }
    let Some(_permit) = BuildPermit::try_acquire() else {
        debug!(path = stream, "recording mp4: {MAX_BUILDS} layouts being built; 503");
        return Err((StatusCode::SERVICE_UNAVAILABLE, "busy: too many recordings being laid out\n".into()));
    };
    let began = Instant::now();
    let layout = match build(&pb.recordings, stream, start_us, end_us) {
        Ok(l) => {
            debug!(
                path = stream,
                files = l.files.len(),
                spans = l.spans.len(),
                header = l.header.len(),
                len = l.len,
                took_ms = began.elapsed().as_millis() as u64,
                "recording mp4: laid out"
            );
            Arc::new(l)
        }
        Err(BuildError::NotFound) => return Err((StatusCode::NOT_FOUND, "no recordings in range\n".into())),
        Err(BuildError::NotReady) if pb.index_ready() => {
            return Err((StatusCode::NOT_FOUND, "no recordings in range\n".into()));
        }
        Err(BuildError::NotReady) => {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "the recordings index is opening\n".into()));
        }
        Err(e @ BuildError::TooLarge(_)) => return Err(bad(e.to_string())),
        Err(BuildError::Failed(e)) => {
            warn!(path = stream, "recording mp4: {e}");
            return Err((StatusCode::INTERNAL_SERVER_ERROR, "cannot read the recordings\n".into()));
        }
    };
    cache_put(key, layout.clone());
    Ok(layout)
}

/// `duration=S` (seconds, decimal) in µs: None when absent.
fn query_duration(query: Option<&str>) -> Result<Option<u64>, String> {
    let Some(v) = query.into_iter().flat_map(|q| q.split('&')).find_map(|p| p.strip_prefix("duration=")) else {
        return Ok(None);
    };
    let secs: f64 = v.parse().ok().filter(|s: &f64| s.is_finite() && *s > 0.0).ok_or("duration: seconds > 0")?;
    if secs * 1e6 > MAX_SPAN_US as f64 {
        return Err(format!("duration: at most {} s per request", MAX_SPAN_US / 1_000_000));
    }
    Ok(Some((secs * 1e6) as u64))
}

// ---------------------------------------------------------------------------------------
// Responses

fn text(status: StatusCode, msg: String) -> Response {
    let mut r = Response::new(Body::from(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    crate::http::cors(&mut r);
    r
}

/// What a Range header asks of a resource of `len` bytes (RFC 9110 14.1.2, 14.2).
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// No Range, or one this server ignores (not `bytes=`, not parsable): the whole resource.
    Whole,
    /// Inclusive offsets (of several ranges, the first).
    Part(u64, u64),
    /// No byte of it exists (416).
    Unsatisfiable,
}

fn ranged(value: Option<&str>, len: u64) -> Ranged {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")).and_then(|v| v.split(',').next()) else {
        return Ranged::Whole;
    };
    let Some((a, b)) = spec.trim().split_once('-') else { return Ranged::Whole };
    let num = |s: &str| s.trim().parse::<u64>().ok();
    if a.trim().is_empty() {
        // A suffix: the last N bytes.
        return match num(b) {
            None => Ranged::Whole,
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if len == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part(len.saturating_sub(n), len - 1),
        };
    }
    let Some(first) = num(a) else { return Ranged::Whole };
    let last = if b.trim().is_empty() {
        u64::MAX
    } else {
        match num(b) {
            Some(l) if l >= first => l,
            _ => return Ranged::Whole,
        }
    };
    if first >= len { Ranged::Unsatisfiable } else { Ranged::Part(first, last.min(len - 1)) }
}

/// The whole layout or the part a Range asks for; HEAD without a body. A Range with an
/// `If-Range` other than the layout's ETag (or a date: no Last-Modified here) is answered
/// with the whole (RFC 9110 13.1.5).
fn serve(layout: Arc<Layout>, head: bool, range: Option<&str>, if_range: Option<&str>) -> Response {
    let len = layout.len;
    let range = range.filter(|_| if_range.is_none_or(|v| v.trim() == layout.etag));
    let (status, from, to) = match ranged(range, len) {
        Ranged::Whole => (StatusCode::OK, 0, len),
        Ranged::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        Ranged::Unsatisfiable => {
            let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n".into());
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let etag = HeaderValue::from_str(&layout.etag).ok();
    let body = if head || from == to { Body::empty() } else { Body::from_stream(body_stream(layout, from, to)) };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    crate::http::cors(&mut r);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(to - from));
    if let Some(v) = etag {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {from}-{}/{len}", to - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    r
}

/// Where a body is: the next offset, the end, and the file open last.
struct Reader {
    layout: Arc<Layout>,
    pos: u64,
    end: u64,
    open: Option<(u32, File)>,
}

/// Bytes `from..to` of a layout, [`READ_CHUNK`] at a time; reads run on the blocking pool. A
/// file that cannot be read (deleted, cut short) ends the body with an error: the client sees
/// a connection closed before Content-Length, never wrong bytes.
fn body_stream(
    layout: Arc<Layout>,
    from: u64,
    to: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let reader = Reader { layout, pos: from, end: to, open: None };
    futures_util::stream::unfold(Some(reader), |r| async move {
        let mut r = r?;
        if r.pos >= r.end {
            return None;
        }
        let header_len = r.layout.header.len() as u64;
        if r.pos < header_len {
            let to = r.end.min(header_len);
            let b = r.layout.header.slice(r.pos as usize..to as usize);
            r.pos = to;
            return Some((Ok(b), Some(r)));
        }
        let next = tokio::task::spawn_blocking(move || {
            let out = read_chunk(&mut r);
            (out, r)
        })
        .await;
        match next {
            Ok((Ok(b), r)) => Some((Ok(b), Some(r))),
            Ok((Err(e), r)) => {
                warn!(at = r.pos, "progressive mp4: {e}");
                Some((Err(e), None))
            }
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    })
}

/// The next piece of the body at `r.pos` (past the header): at most [`READ_CHUNK`] bytes from
/// one span. Blocking.
fn read_chunk(r: &mut Reader) -> std::io::Result<Bytes> {
    let spans = &r.layout.spans;
    let i = spans.partition_point(|s| s.out + s.len <= r.pos);
    let span = spans.get(i).filter(|s| s.out <= r.pos).ok_or_else(|| std::io::Error::other("offset in no span"))?;
    let within = r.pos - span.out;
    let n = (span.len - within).min(r.end - r.pos).min(READ_CHUNK as u64) as usize;
    if r.open.as_ref().is_none_or(|(f, _)| *f != span.file) {
        let path = &r.layout.files[span.file as usize];
        r.open = Some((span.file, File::open(path)?));
    }
    let Some((_, file)) = &r.open else { return Err(std::io::Error::other("no file")) };
    let mut buf = vec![0; n];
    file.read_exact_at(&mut buf, span.at + within)?;
    r.pos += n as u64;
    Ok(Bytes::from(buf))
}

// ---------------------------------------------------------------------------------------
// The cache

#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    dir: PathBuf,
    path: String,
    start_us: u64,
    end_us: u64,
}

struct Cache {
    entries: VecDeque<(Key, Instant, Arc<Layout>)>,
    bytes: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache { entries: VecDeque::new(), bytes: 0 });

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cache {
    fn expire(&mut self, now: Instant) {
        while let Some((_, at, l)) = self.entries.front() {
            if now.duration_since(*at) < CACHE_TTL && self.entries.len() <= MAX_CACHED && self.bytes <= MAX_CACHE_BYTES
            {
                break;
            }
            self.bytes -= l.cost();
            self.entries.pop_front();
        }
    }
}

fn cache_get(key: &Key) -> Option<Arc<Layout>> {
    let mut c = cache();
    c.expire(Instant::now());
    c.entries.iter().find(|(k, _, _)| k == key).map(|(_, _, l)| l.clone())
}

fn cache_put(key: Key, layout: Arc<Layout>) {
    let cost = layout.cost();
    if cost > MAX_CACHE_BYTES {
        return;
    }
    let mut c = cache();
    c.bytes += cost;
    c.entries.push_back((key, Instant::now(), layout));
    c.expire(Instant::now());
}

// ---------------------------------------------------------------------------------------
// Building a recording's layout

/// Builds the layout of `path`'s recordings from `start_us` to `end_us` (UTC µs). Blocking:
/// the index, and per file its init segment and moofs.
pub fn build(rec: &Recordings, path: &str, start_us: u64, end_us: u64) -> Result<Layout, BuildError> {
    // No index: it opens in the background after a start (the caller tells that from no
    // recordings at all with `Playback::index_ready`).
    let Some(index) = rec.index_now() else { return Err(BuildError::NotReady) };
    let segments = index.list(path, Some(start_us), Some(end_us)).map_err(|e| BuildError::Failed(e.to_string()))?;
    let dir = &rec.config().dir;
    let mut stitch: Option<Stitch> = None;
    let mut prev: Option<(u64, u64)> = None; // (start_us, media end µs) of the previous file
    let mut damaged = None;
    for seg in &segments {
        let Some(parts) = rec.parts(seg) else {
            warn!(file = seg.file, "recording mp4: no parts; the range ends before it");
            damaged = Some(format!("{}: no parts", seg.file));
            break;
        };
        let file_path = dir.join(&seg.file);
        let opened = File::open(&file_path).and_then(|f| f.metadata().map(|m| (m.len(), f)));
        let (file_len, file) = match opened {
            Ok(x) => x,
            Err(e) => {
                warn!(file = seg.file, "recording mp4: {e}; the range ends before it");
                damaged = Some(format!("{}: {e}", seg.file));
                break;
            }
        };
        let (tracks, layout) = match read_init(&file, &file_path) {
            Ok(s) => s,
            Err(e) => {
                warn!(file = seg.file, "recording mp4: {e}; the range ends before it");
                damaged = Some(format!("{}: {e}", seg.file));
                break;
            }
        };
        let st = match &mut stitch {
            None => {
                let Some(s) = Stitch::first(seg, &parts, &tracks, &layout, start_us) else { continue };
                stitch.insert(s)
            }
            Some(st) => {
                if !same_codecs(&st.tracks, &tracks) {
                    debug!(file = seg.file, "recording mp4: codec parameters change; the range ends before it");
                    break;
                }
                // Close up a gap after the previous file.
                if let Some((p_start, p_end)) = prev {
                    let gap = seg.start_us.saturating_sub(p_start + p_end);
                    st.removed_us += gap;
                }
                st
            }
        };
        let file_no = st.files.len() as u32;
        let end_in_file = end_us as i64 - seg.start_us as i64;
        let base = st.base(seg);
        let ok = st.add_file(&file, &file_path, file_len, file_no, &parts, &layout, base, end_in_file);
        st.files.push(file_path);
        prev = Some((seg.start_us, parts.last().map_or(0, |p| p.end_us.max(0) as u64)));
        match ok {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                warn!(file = seg.file, "recording mp4: {e}; the range ends there");
                damaged = Some(format!("{}: {e}", seg.file));
                break;
            }
        }
    }
    // A damaged file ends the range; with nothing before it, the range is an error.
    let nothing = |damaged: Option<String>| damaged.map_or(BuildError::NotFound, BuildError::Failed);
    let Some(st) = stitch else { return Err(nothing(damaged)) };
    if st.builder.samples() == 0 {
        return Err(nothing(damaged));
    }
    let progressive = st.builder.finish().map_err(BuildError::TooLarge)?;
    let shift = progressive.header.len() as u64;
    let spans = st.spans.into_iter().map(|s| Span { out: s.out + shift, ..s }).collect();
    // The header fixes every sample's size and place; the files they come from are named.
    let mut hash = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&progressive.header, &mut hash);
    std::hash::Hash::hash(&st.files, &mut hash);
    let etag = format!("\"r{:x}-{:016x}\"", progressive.len(), std::hash::Hasher::finish(&hash));
    Ok(Layout { len: progressive.len(), header: progressive.header, files: st.files, spans, etag })
}

/// Same tracks with the same codec parameters.
fn same_codecs(a: &Tracks, b: &Tracks) -> bool {
    a.video == b.video && a.audio == b.audio
}

/// A layout being stitched from files.
struct Stitch {
    tracks: Tracks,
    builder: Builder,
    files: Vec<PathBuf>,
    /// Offsets from the start of mdat's data until `finish`.
    spans: Vec<Span>,
    /// UTC µs of the output's time 0 (the first keyframe).
    t0_us: u64,
    /// Gaps closed up so far, µs.
    removed_us: u64,
    /// Until the first file is added: the offset of the part to start at and the start
    /// (the keyframe's decode time), µs from the file's start.
    first: Option<(u64, i64)>,
    /// Video and audio timescales (1 for a track the files do not have).
    timescales: (u32, u32),
}

impl Stitch {
    /// Starts at the first file with a place to start from `start_us` (the rule of
    /// [`start_in`], as RTSP and HLS start): None when the file has none.
    fn first(
        seg: &Segment,
        parts: &[crate::record::parts::Part],
        tracks: &Tracks,
        layout: &fmp4_read::Layout,
        start_us: u64,
    ) -> Option<Stitch> {
        let at = start_us as i64 - seg.start_us as i64;
        let ts = |k| layout.get(k).map(|t| t.timescale.max(1));
        let (tv, ta) = (ts(TrackKind::Video), ts(TrackKind::Audio));
        let (i, key_us) = start_in(parts, at, layout.video.is_some())?;
        Some(Stitch {
            tracks: tracks.clone(),
            builder: Builder::new(tracks, tv, ta),
            files: Vec::new(),
            spans: Vec::new(),
            t0_us: seg.start_us.saturating_add_signed(key_us),
            removed_us: 0,
            first: Some((parts[i].offset, key_us)),
            timescales: (tv.unwrap_or(1), ta.unwrap_or(1)),
        })
    }

    /// Per track, what is added to a file's decode times to place them on the output.
    fn base(&self, seg: &Segment) -> (i64, i64) {
        let out_us = seg.start_us as i64 - self.t0_us as i64 - self.removed_us as i64;
        (rescale(out_us, 1_000_000, self.timescales.0), rescale(out_us, 1_000_000, self.timescales.1))
    }

    /// Adds a file's samples up to `end_in_file` (µs from its start). False when the range
    /// ends in it.
    #[allow(clippy::too_many_arguments)]
    fn add_file(
        &mut self,
        file: &File,
        path: &std::path::Path,
        file_len: u64,
        file_no: u32,
        parts: &[crate::record::parts::Part],
        layout: &fmp4_read::Layout,
        base: (i64, i64),
        end_in_file: i64,
    ) -> Result<bool, String> {
        let first = self.first.take();
        let (tv, ta) = self.timescales;
        // In the first file: nothing before the keyframe's part, and of each track nothing
        // before the keyframe's time.
        let (from_offset, from_v, from_a) = match first {
            Some((offset, key_us)) => (offset, rescale(key_us, 1_000_000, tv), rescale(key_us, 1_000_000, ta)),
            None => (0, i64::MIN, i64::MIN),
        };
        let mut first_key = first.is_some() && layout.video.is_some();
        for part in parts.iter().filter(|p| p.offset >= from_offset) {
            if part.start_us >= end_in_file {
                return Ok(false);
            }
            let mut at = part.offset;
            let part_end = part.offset.saturating_add(part.len).min(file_len);
            while at < part_end {
                let (samples, data_from, data_to) =
                    read_fragment(file, path, at, file_len, layout).map_err(|e| e.to_string())?;
                let mut chunk: Vec<ChunkSample> = Vec::new();
                let mut chunk_kind = TrackKind::Video;
                let mut chunk_at = 0u64; // offset of the chunk's data from the moof
                let mut chunk_end = 0u64;
                for s in &samples {
                    let (ts, from, b) = match s.kind {
                        TrackKind::Video => (tv, from_v, base.0),
                        TrackKind::Audio => (ta, from_a, base.1),
                    };
                    if s.dts < from || rescale(s.dts, ts, 1_000_000) >= end_in_file {
                        continue;
                    }
                    if s.kind == TrackKind::Video && first_key {
                        // The range starts with the keyframe itself.
                        if !s.keyframe {
                            continue;
                        }
                        first_key = false;
                    }
                    let end =
                        s.offset.checked_add(u64::from(s.size)).filter(|e| *e <= data_to && s.offset >= data_from);
                    let Some(end) = end else { return Err(format!("a sample outside its mdat in the part at {at}")) };
                    if !chunk.is_empty() && (s.kind != chunk_kind || s.offset != chunk_end) {
                        self.push(chunk_kind, &chunk, file_no, at + chunk_at)?;
                        chunk.clear();
                    }
                    if chunk.is_empty() {
                        (chunk_kind, chunk_at) = (s.kind, s.offset);
                    }
                    chunk_end = end;
                    chunk.push(ChunkSample {
                        dts: s.dts.saturating_add(b),
                        cts: s.cts,
                        duration: s.duration,
                        size: s.size,
                        keyframe: s.keyframe,
                    });
                }
                if !chunk.is_empty() {
                    self.push(chunk_kind, &chunk, file_no, at + chunk_at)?;
                }
                at += data_to;
            }
        }
        Ok(true)
    }

    /// One chunk whose data is at `file_at` in file `file_no`.
    fn push(&mut self, kind: TrackKind, chunk: &[ChunkSample], file_no: u32, file_at: u64) -> Result<(), String> {
        let out = self.builder.push(kind, chunk).map_err(|e| e.to_string())?;
        let len: u64 = chunk.iter().map(|s| u64::from(s.size)).sum();
        match self.spans.last_mut() {
            Some(last) if last.file == file_no && last.at + last.len == file_at && last.out + last.len == out => {
                last.len += len;
            }
            _ => self.spans.push(Span { out, file: file_no, at: file_at, len }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use Ranged::*;
        assert_eq!(ranged(None, 1000), Whole);
        assert_eq!(ranged(Some("bytes=0-99"), 1000), Part(0, 99));
        assert_eq!(ranged(Some("bytes=900-"), 1000), Part(900, 999));
        assert_eq!(ranged(Some("bytes=-100"), 1000), Part(900, 999));
        assert_eq!(ranged(Some("bytes=-5000"), 1000), Part(0, 999));
        assert_eq!(ranged(Some("bytes=990-2000"), 1000), Part(990, 999));
        assert_eq!(ranged(Some("bytes=0-0,5-9"), 1000), Part(0, 0));
        assert_eq!(ranged(Some("bytes=1000-"), 1000), Unsatisfiable);
        assert_eq!(ranged(Some("bytes=-0"), 1000), Unsatisfiable);
        assert_eq!(ranged(Some("bytes=5-1"), 1000), Whole, "invalid: ignored (RFC 9110 14.2)");
        assert_eq!(ranged(Some("items=0-1"), 1000), Whole);
        assert_eq!(ranged(Some("bytes=x-"), 1000), Whole);
        assert_eq!(ranged(Some("bytes=0-18446744073709551615"), 1000), Part(0, 999));
    }

    #[test]
    fn durations() {
        assert_eq!(query_duration(None), Ok(None));
        assert_eq!(query_duration(Some("start=x&duration=1.5")), Ok(Some(1_500_000)));
        assert!(query_duration(Some("duration=0")).is_err());
        assert!(query_duration(Some("duration=-1")).is_err());
        assert!(query_duration(Some("duration=NaN")).is_err());
        assert!(query_duration(Some("duration=86401")).is_err());
        assert_eq!(query_duration(Some("duration=86400")), Ok(Some(MAX_SPAN_US)));
    }

    #[test]
    fn builds_at_once_are_bounded() {
        let permits: Vec<BuildPermit> = std::iter::from_fn(BuildPermit::try_acquire).take(MAX_BUILDS + 1).collect();
        assert_eq!(permits.len(), MAX_BUILDS, "no more than MAX_BUILDS at once");
        assert!(BuildPermit::try_acquire().is_none());
        drop(permits);
        assert!(BuildPermit::try_acquire().is_some(), "released when done");
    }

    #[test]
    fn the_cache_is_bounded() {
        let layout = |n: usize| {
            Arc::new(Layout {
                header: Bytes::from(vec![0; n]),
                files: Vec::new(),
                spans: Vec::new(),
                len: n as u64,
                etag: String::new(),
            })
        };
        let key =
            |i: u64| Key { dir: PathBuf::from("/nowhere-cache-test"), path: "p".into(), start_us: i, end_us: i + 1 };
        for i in 0..(MAX_CACHED as u64 + 5) {
            cache_put(key(i), layout(10));
        }
        assert!(cache().entries.len() <= MAX_CACHED);
        assert!(cache_get(&key(0)).is_none(), "the oldest left first");
        assert!(cache_get(&key(MAX_CACHED as u64 + 4)).is_some());
        cache_put(key(1000), layout(MAX_CACHE_BYTES + 1));
        assert!(cache_get(&key(1000)).is_none(), "too large to keep");
        assert!(cache().bytes <= MAX_CACHE_BYTES);
    }
}
