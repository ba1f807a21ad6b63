//! One viewer's reader over recordings or an MP4 file, by media time in µs: what RTSP
//! playback paces and HLS VOD segments (DESIGN.md "Recordings": playback is a source like any
//! other).
//!
//! Recordings are read part by part from the per-file part tables ([`crate::record::parts`]),
//! files by their sample tables ([`ferrocast_media::mp4_index`]); nothing is read that the
//! viewer does not play, and media data is read only for the batch being handed out. Tables
//! of files that no longer change (MP4 files, closed recording files) are shared between
//! viewers through a small cache keyed by (path, length, mtime) with a bounded total
//! ([`CACHE_BYTES`]): a thousand viewers of one file cost one table and a batch each.
//!
//! Everything here is blocking file I/O: call it from `spawn_blocking`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use ferrocast_media::fmp4::MAX_PART_DATA;
use ferrocast_media::fmp4_read::{self, Layout, MAX_MOOF_SIZE};
use ferrocast_media::mp4_index::{Movie, OpenError, Sample, SampleTable};
use ferrocast_media::{Frame, TrackKind, Tracks, rescale};

use super::{Playback, Target};
use crate::record::Recordings;
use crate::record::index::{Index, Segment};
use crate::record::parts::{self, Part};

/// A file's media, about this long, makes one batch.
pub const BATCH_US: i64 = 1_000_000;

/// Most samples in one batch of a file (a second of 1000 fps video with audio is under this).
pub const MAX_BATCH_SAMPLES: usize = 4096;

/// Most bytes of media data in one batch of a file: a second of 200 Mbit/s.
pub const MAX_BATCH_BYTES: u64 = 25 << 20;

/// Samples closer than this in a file are read with one read (the bytes between are read
/// and dropped): fewer system calls for interleaved files.
const READ_GAP: u64 = 64 << 10;

/// Largest recorded part read at once: the writer's limits (a part's moof and mdat).
pub const MAX_PART_BYTES: u64 = MAX_PART_DATA as u64 + MAX_MOOF_SIZE;

/// Segments listed from the index at once; more are listed as playback reaches them.
const SEGMENT_PAGE: usize = 1024;

/// Most bytes of shared tables kept: sample tables of 24 bytes a sample (a two-hour movie
/// is about 12 MiB) and part tables of recordings (small).
pub const CACHE_BYTES: usize = 256 << 20;

/// Most tables kept, whatever their size.
pub const CACHE_ENTRIES: usize = 4096;

/// Largest init segment of a recording or file read to learn its tracks.
const MAX_INIT_BYTES: u64 = fmp4_read::MAX_INIT_SIZE + 4096;

/// Why playback cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No such file, or no recording in the range asked (404).
    #[error("no recording or file there")]
    NotFound,
    /// The file was deleted (by retention or the API) while it was played.
    #[error("the recording or file was deleted while it was played")]
    Gone,
    /// Reading failed.
    #[error("reading {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// A file that does not parse (damaged, cut short, not MP4).
    #[error("{path}: {what}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The recordings index failed.
    #[error("{0}")]
    Index(String),
}

/// Frames read at once: one recorded part, or about a second of a file, in decode order (both
/// tracks interleaved by time).
#[derive(Debug)]
pub struct Batch {
    /// Codec parameters of these frames when they differ from the previous batch's (always
    /// Some on the first batch after open or seek).
    pub tracks: Option<Arc<Tracks>>,
    /// The frames.
    pub frames: Vec<Timed>,
}

/// A frame and its media times.
#[derive(Debug, Clone)]
pub struct Timed {
    /// Decode time, µs (UTC for recordings, from the file's start for files).
    pub dts_us: i64,
    /// Presentation time, µs.
    pub pts_us: i64,
    /// The frame as read: its dts/pts in the track's timescale (`Tracks`' clock rates).
    pub frame: Arc<Frame>,
}

/// What [`Source::next`] gives.
#[derive(Debug)]
pub enum Next {
    /// More frames.
    Batch(Batch),
    /// The end of the range, the file, or what is recorded so far.
    End,
}

/// A stretch of media with one set of codec parameters: a recording file (clamped to the
/// range) or a whole MP4 file. See [`Source::spans`].
#[derive(Debug, Clone)]
pub struct Span {
    /// First media time, µs.
    pub start_us: i64,
    /// End, µs.
    pub end_us: i64,
    /// Its codec parameters.
    pub tracks: Arc<Tracks>,
}

/// One viewer's reader over recordings or a file, by media time in µs (UTC µs for recordings,
/// µs from the file's start for files). Blocking file I/O: call from spawn_blocking.
pub struct Source {
    tracks: Arc<Tracks>,
    start_us: i64,
    inner: Inner,
    /// The tracks the last batch was given with; None: the next batch states them.
    sent: Option<Arc<Tracks>>,
    /// Frames before this time are dropped (after a seek into a part).
    skip_before: Option<i64>,
    /// The end was reached.
    finished: bool,
}

/// What a reader read: the tracks of the frames, the frames, and whether nothing follows.
type Got = (Arc<Tracks>, Vec<Timed>, bool);

enum Inner {
    Rec(Box<RecSource>),
    File(Box<FileSource>),
}

impl Source {
    /// A reader of `target`, positioned at its start.
    pub fn open(playback: &Playback, target: &Target) -> Result<Source, SourceError> {
        match target {
            Target::File(path) => FileSource::open(path),
            Target::Recording { path, start_us, end_us } => {
                RecSource::open(playback.recordings.clone(), path, clamp_us(*start_us), end_us.map(clamp_us))
            }
        }
    }

    /// Codec parameters of where playback starts: for SDP / init.
    pub fn tracks(&self) -> &Arc<Tracks> {
        &self.tracks
    }

    /// The first media time: the requested start clamped to what exists; 0 for files.
    pub fn start_us(&self) -> i64 {
        self.start_us
    }

    /// The end: the requested end clamped to what exists; None when no end was asked and the
    /// path still records.
    pub fn end_us(&self) -> Option<i64> {
        match &self.inner {
            Inner::File(f) => Some(f.end_us),
            Inner::Rec(r) => r.end_us(),
        }
    }

    /// True for recordings (positions are UTC).
    pub fn is_clock(&self) -> bool {
        matches!(self.inner, Inner::Rec(_))
    }

    /// Positions at the last video keyframe at or before `at_us` (the first one when before
    /// all; audio-only: at `at_us`); returns that time, None at or after the end. A time in a
    /// gap between recordings positions at the first keyframe after the gap.
    pub fn seek(&mut self, at_us: i64) -> Result<Option<i64>, SourceError> {
        if self.end_us().is_some_and(|e| at_us >= e) {
            return Ok(None);
        }
        let at = at_us.max(self.start_us);
        let r = match &mut self.inner {
            Inner::File(f) => f.seek(at),
            Inner::Rec(r) => r.seek(at)?,
        };
        self.sent = None;
        self.finished = r.is_none();
        self.skip_before = r;
        Ok(r)
    }

    /// The next batch from the position. Crosses file boundaries and skips gaps between
    /// recordings; stops at the end. Open-ended recordings: parts written meanwhile are read
    /// (the writing file's part table and the index are read again when the known parts run
    /// out); End when it reaches the part being written (a later call goes on with the parts
    /// written since, if any).
    #[allow(clippy::should_implement_trait)] // The API the RTSP driver codes against.
    pub fn next(&mut self) -> Result<Next, SourceError> {
        loop {
            if self.finished {
                return Ok(Next::End);
            }
            let got = match &mut self.inner {
                Inner::File(f) => f.next()?,
                Inner::Rec(r) => r.next()?,
            };
            let Some((tracks, mut frames, last)) = got else {
                // At the part being written (no end: the path records), a later call reads
                // what was written meanwhile; otherwise the end is final.
                self.finished = self.end_us().is_some();
                return Ok(Next::End);
            };
            if let Some(skip) = self.skip_before {
                frames.retain(|f| f.dts_us >= skip);
                if !frames.is_empty() {
                    self.skip_before = None;
                }
            }
            if let Some(end) = self.end_us() {
                let before = frames.len();
                frames.retain(|f| f.dts_us < end);
                if frames.len() < before {
                    self.finished = true;
                }
            }
            self.finished |= last;
            if frames.is_empty() {
                continue;
            }
            let changed = self.sent.as_deref() != Some(&*tracks);
            if changed {
                self.sent = Some(tracks.clone());
            }
            return Ok(Next::Batch(Batch { tracks: changed.then_some(tracks), frames }));
        }
    }

    /// Times of video keyframes in [from_us, to_us), at most `max`, from the index (recordings:
    /// the part tables' keyframe times; files: the sync-sample table) without reading media.
    pub fn keyframes(&mut self, from_us: i64, to_us: i64, max: usize) -> Result<Vec<i64>, SourceError> {
        match &mut self.inner {
            Inner::File(f) => Ok(f.keyframes(from_us, to_us, max)),
            Inner::Rec(r) => r.keyframes(from_us, to_us, max),
        }
    }

    /// The video keyframe at `at_us` (a time from `keyframes`) read alone.
    pub fn keyframe(&mut self, at_us: i64) -> Result<Option<Timed>, SourceError> {
        match &mut self.inner {
            Inner::File(f) => f.keyframe(at_us),
            Inner::Rec(r) => r.keyframe(at_us),
        }
    }

    /// The stretches of the range with one set of codec parameters each, in order, at most
    /// `max`: one per recording file (clamped to the range; gaps lie between them), one for a
    /// file. What HLS VOD cuts its playlist by.
    pub fn spans(&mut self, max: usize) -> Result<Vec<Span>, SourceError> {
        match &mut self.inner {
            Inner::File(f) => Ok(vec![Span { start_us: 0, end_us: f.end_us, tracks: f.tracks.clone() }]),
            Inner::Rec(r) => r.spans(max),
        }
    }
}

// What the RTSP driver needs: a source moves into a blocking task and back.
const _: fn() = || {
    fn send<T: Send + 'static>() {}
    send::<Source>();
};

/// A UTC time in µs as the signed times of this module.
fn clamp_us(t: u64) -> i64 {
    t.min(i64::MAX as u64) as i64
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            SourceError::Gone
        } else {
            SourceError::Io { path: path.to_owned(), error }
        }
    }
}

fn malformed(path: &Path, what: impl std::fmt::Display) -> SourceError {
    SourceError::Malformed { path: path.to_owned(), what: what.to_string() }
}

/// Memory reserved ahead of a read: a length from a damaged table or box costs only the
/// bytes that are really there.
const READ_RESERVE: usize = 4 << 20;

/// `len` bytes at `at` (fewer at the end of the file).
fn read_at(file: &mut File, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(at))?;
    let mut buf = Vec::with_capacity(len.min(READ_RESERVE));
    file.take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Exactly `len` bytes at `at`: a file that is now shorter was cut or deleted.
fn read_exact_at(file: &mut File, path: &Path, at: u64, len: u64) -> Result<Vec<u8>, SourceError> {
    let buf = read_at(file, at, len as usize).map_err(io(path))?;
    if (buf.len() as u64) < len {
        if !path.exists() {
            return Err(SourceError::Gone);
        }
        return Err(malformed(path, format!("cut short: {len} bytes at {at} are not all there")));
    }
    Ok(buf)
}

// ---- the shared table cache ----

/// What the cache keeps.
#[derive(Clone)]
enum Cached {
    Movie(Arc<Movie>),
    Recording(Arc<RecFile>),
}

type Key = (PathBuf, u64, Option<SystemTime>);

struct Cache {
    entries: Vec<(Key, Cached, usize, u64)>,
    bytes: usize,
    tick: u64,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache { entries: Vec::new(), bytes: 0, tick: 0 });

/// A table from the cache, or built (outside the lock) and kept, the least recently used
/// ones making room.
fn cached(key: Key, build: impl FnOnce() -> Result<(Cached, usize), SourceError>) -> Result<Cached, SourceError> {
    {
        let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        c.tick += 1;
        let tick = c.tick;
        if let Some(e) = c.entries.iter_mut().find(|e| e.0 == key) {
            e.3 = tick;
            return Ok(e.1.clone());
        }
    }
    let (value, bytes) = build()?;
    if bytes > CACHE_BYTES / 4 {
        return Ok(value);
    }
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if c.entries.iter().any(|e| e.0 == key) {
        return Ok(value);
    }
    while !c.entries.is_empty() && (c.bytes + bytes > CACHE_BYTES || c.entries.len() >= CACHE_ENTRIES) {
        let oldest = c.entries.iter().enumerate().min_by_key(|(_, e)| e.3).map_or(0, |(i, _)| i);
        let gone = c.entries.swap_remove(oldest);
        c.bytes -= gone.2;
    }
    c.tick += 1;
    let tick = c.tick;
    c.entries.push((key, value.clone(), bytes, tick));
    c.bytes += bytes;
    Ok(value)
}

fn key_of(path: &Path, meta: &std::fs::Metadata) -> Key {
    (path.to_owned(), meta.len(), meta.modified().ok())
}

// ---- MP4 files ----

struct FileSource {
    path: PathBuf,
    file: File,
    movie: Arc<Movie>,
    tracks: Arc<Tracks>,
    end_us: i64,
    /// Next sample of each track (video, audio).
    next: [usize; 2],
}

fn us(t: i64, timescale: u32) -> i64 {
    rescale(t, timescale, 1_000_000)
}

/// µs as a track's time, rounded down: the sample "at or before" a time is never after it.
fn ticks_floor(t_us: i64, timescale: u32) -> i64 {
    (i128::from(t_us) * i128::from(timescale)).div_euclid(1_000_000) as i64
}

impl FileSource {
    fn open(path: &Path) -> Result<Source, SourceError> {
        let mut file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SourceError::NotFound,
            _ => SourceError::Io { path: path.to_owned(), error: e },
        })?;
        let meta = file.metadata().map_err(io(path))?;
        let len = meta.len();
        let movie = match cached(key_of(path, &meta), || {
            let movie = Movie::open(len, |at, n| read_at(&mut file, at, n)).map_err(|e| match e {
                OpenError::Read(e) => io(path)(e),
                OpenError::Format(e) => malformed(path, e),
            })?;
            let bytes = movie.memory();
            Ok((Cached::Movie(Arc::new(movie)), bytes))
        })? {
            Cached::Movie(m) => m,
            Cached::Recording(_) => return Err(malformed(path, "not an MP4 file")),
        };
        let end_us = [&movie.video, &movie.audio].into_iter().flatten().map(|t| us(t.end(), t.timescale)).max();
        let tracks = Arc::new(movie.tracks.clone());
        let f = FileSource {
            path: path.to_owned(),
            file,
            movie,
            tracks: tracks.clone(),
            end_us: end_us.unwrap_or(0),
            next: [0, 0],
        };
        let mut s = Source {
            tracks,
            start_us: 0,
            inner: Inner::File(Box::new(f)),
            sent: None,
            skip_before: None,
            finished: false,
        };
        s.seek(0)?;
        Ok(s)
    }

    fn table(&self, k: usize) -> Option<&SampleTable> {
        if k == 0 { self.movie.video.as_ref() } else { self.movie.audio.as_ref() }
    }

    fn seek(&mut self, at: i64) -> Option<i64> {
        let t = match self.movie.video.as_ref().filter(|v| !v.samples().is_empty()) {
            Some(v) => {
                let i = v.sync_at_or_before(ticks_floor(at, v.timescale)).unwrap_or(0);
                self.next[0] = i;
                us(v.samples()[i].dts, v.timescale)
            }
            None => at,
        };
        if let Some(a) = &self.movie.audio {
            self.next[1] = a.first_at_or_after(ticks_floor(t, a.timescale));
        }
        Some(t)
    }

    /// The next sample of the two tracks in time order: (track, index, dts µs).
    fn peek(&self) -> Option<(usize, usize, i64)> {
        (0..2)
            .filter_map(|k| {
                let t = self.table(k)?;
                let s = t.samples().get(self.next[k])?;
                Some((k, self.next[k], us(s.dts, t.timescale)))
            })
            .min_by_key(|x| (x.2, x.0))
    }

    fn next(&mut self) -> Result<Option<Got>, SourceError> {
        if !self.path.exists() {
            return Err(SourceError::Gone);
        }
        let mut picked: Vec<(usize, usize)> = Vec::new();
        let mut bytes = 0u64;
        let mut first = None;
        while let Some((k, i, t)) = self.peek() {
            let first = *first.get_or_insert(t);
            let size = u64::from(self.table(k).map_or(0, |tb| tb.samples()[i].size()));
            if !picked.is_empty()
                && (t - first >= BATCH_US || picked.len() >= MAX_BATCH_SAMPLES || bytes + size > MAX_BATCH_BYTES)
            {
                break;
            }
            picked.push((k, i));
            bytes += size;
            self.next[k] += 1;
        }
        if picked.is_empty() {
            return Ok(None);
        }
        // Read in file order, samples close together with one read.
        let samples: Vec<(usize, Sample, u32)> =
            picked.iter().filter_map(|&(k, i)| self.table(k).map(|t| (k, t.samples()[i], t.timescale))).collect();
        let mut order: Vec<usize> = (0..samples.len()).collect();
        order.sort_by_key(|&j| samples[j].1.offset);
        let mut data: Vec<Bytes> = vec![Bytes::new(); samples.len()];
        let mut g = 0;
        while g < order.len() {
            let s0 = samples[order[g]].1;
            let start = s0.offset;
            let mut end = start + u64::from(s0.size());
            let mut h = g + 1;
            while let Some(&j) = order.get(h) {
                let s = samples[j].1;
                let e = s.offset + u64::from(s.size());
                if s.offset > end + READ_GAP || e - start > MAX_BATCH_BYTES {
                    break;
                }
                end = end.max(e);
                h += 1;
            }
            let buf = Bytes::from(read_exact_at(&mut self.file, &self.path, start, end - start)?);
            for &j in &order[g..h] {
                let s = samples[j].1;
                let at = (s.offset - start) as usize;
                data[j] = buf.slice(at..at + s.size() as usize);
            }
            g = h;
        }
        let frames = samples
            .iter()
            .zip(data)
            .map(|(&(k, s, ts), data)| {
                let kind = if k == 0 { TrackKind::Video } else { TrackKind::Audio };
                let frame = Frame::new(kind, s.dts, s.pts(), s.keyframe(), data);
                Timed { dts_us: us(s.dts, ts), pts_us: us(s.pts(), ts), frame }
            })
            .collect();
        let last = self.peek().is_none();
        Ok(Some((self.tracks.clone(), frames, last)))
    }

    fn keyframes(&self, from: i64, to: i64, max: usize) -> Vec<i64> {
        let Some(v) = &self.movie.video else { return Vec::new() };
        let i = v.first_at_or_after(ticks_floor(from, v.timescale));
        v.samples()[i..]
            .iter()
            .map(|s| (s, us(s.dts, v.timescale)))
            .filter(|(s, t)| s.keyframe() && *t >= from)
            .take_while(|(_, t)| *t < to)
            .map(|(_, t)| t)
            .take(max)
            .collect()
    }

    fn keyframe(&mut self, at: i64) -> Result<Option<Timed>, SourceError> {
        let Some(v) = &self.movie.video else { return Ok(None) };
        let i = v.first_at_or_after(ticks_floor(at, v.timescale));
        let Some(s) = v.samples().get(i).copied().filter(|s| s.keyframe()) else { return Ok(None) };
        let ts = v.timescale;
        let data = read_exact_at(&mut self.file, &self.path, s.offset, u64::from(s.size()))?;
        let frame = Frame::new(TrackKind::Video, s.dts, s.pts(), true, Bytes::from(data));
        Ok(Some(Timed { dts_us: us(s.dts, ts), pts_us: us(s.pts(), ts), frame }))
    }
}

// ---- recordings ----

/// What playback needs of one recording file: its tracks and layout, and its parts.
struct RecFile {
    tracks: Arc<Tracks>,
    layout: Layout,
    parts: Vec<Part>,
}

impl RecFile {
    fn memory(&self) -> usize {
        self.parts.capacity() * std::mem::size_of::<Part>() + 4096
    }
}

/// The init segment of a recording: its tracks and layout, read by the scanner from the
/// boxes up to the end of the moov only.
fn read_init(file: &mut File, path: &Path) -> Result<(Tracks, Layout), SourceError> {
    let len = file.metadata().map_err(io(path))?.len();
    let mut at = 0u64;
    let mut init_end = None;
    for _ in 0..16 {
        let head = read_at(file, at, 16).map_err(io(path))?;
        let (Some(size), Some(kind)) =
            (head.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])), head.get(4..8))
        else {
            break;
        };
        let size = if size == 1 {
            head.get(8..16).map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
        } else {
            u64::from(size)
        };
        if size < 8 {
            break;
        }
        at = at.saturating_add(size);
        if kind == b"moov" {
            init_end = Some(at);
            break;
        }
    }
    let end =
        init_end.filter(|e| *e <= len && *e <= MAX_INIT_BYTES).ok_or_else(|| malformed(path, "no init segment"))?;
    let mut scanner = fmp4_read::Scanner::new(end);
    while let Some((at, want)) = scanner.wanted() {
        let data = read_at(file, at, want).map_err(io(path))?;
        scanner.handle_input(&data).map_err(|e| malformed(path, e))?;
    }
    let scan = scanner.finish().map_err(|e| malformed(path, e))?;
    Ok((scan.tracks, scan.layout))
}

struct RecSource {
    rec: Arc<Recordings>,
    dir: PathBuf,
    path: String,
    from: i64,
    to: Option<i64>,
    /// Segments from the one being played on, as far as listed.
    segs: Vec<Segment>,
    /// Where the next batch comes from: (segment in `segs`, part in its file).
    pos: (usize, usize),
    /// The open file of `segs[pos.0]`.
    cur: Option<(File, PathBuf, Arc<RecFile>)>,
    /// The last segment of the path when opened (its end; whether it is written).
    last: Segment,
}

impl RecSource {
    fn index(&self) -> Result<Arc<Index>, SourceError> {
        self.rec.index().ok_or(SourceError::NotFound)
    }

    fn open(rec: Arc<Recordings>, path: &str, from: i64, to: Option<i64>) -> Result<Source, SourceError> {
        let index = rec.index().ok_or(SourceError::NotFound)?;
        let list = |from: i64| {
            index
                .list_at_most(path, Some(from as u64), to.map(|t| t as u64), SEGMENT_PAGE)
                .map_err(|e| SourceError::Index(e.to_string()))
        };
        let segs = list(from)?;
        let Some(first) = segs.first().cloned() else { return Err(SourceError::NotFound) };
        // The last segment of the range: listed page by page.
        let mut last = segs.last().cloned().unwrap_or_else(|| first.clone());
        let mut page = segs.len();
        while page == SEGMENT_PAGE {
            let more = list(last.start_us as i64 + 1)?;
            page = more.len();
            match more.into_iter().rfind(|s| s.start_us > last.start_us) {
                Some(s) => last = s,
                None => break,
            }
        }
        let start_us = from.max(first.start_us as i64);
        let mut r = RecSource {
            dir: rec.config().dir.clone(),
            rec,
            path: path.to_owned(),
            from: start_us,
            to,
            segs,
            pos: (0, 0),
            cur: None,
            last,
        };
        let tracks = r.file(0)?.tracks.clone();
        let mut s =
            Source { tracks, start_us, inner: Inner::Rec(Box::new(r)), sent: None, skip_before: None, finished: false };
        s.seek(start_us)?;
        Ok(s)
    }

    fn end_us(&self) -> Option<i64> {
        let recorded = self.last.end_us() as i64;
        match self.to {
            Some(to) if self.last.writing => Some(to),
            Some(to) => Some(to.min(recorded)),
            None if self.last.writing => None,
            None => Some(recorded),
        }
    }

    /// The segment's table and tracks, shared when the file is closed.
    fn rec_file(&self, seg: &Segment) -> Result<(File, PathBuf, Arc<RecFile>), SourceError> {
        let path = self.dir.join(&seg.file);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SourceError::Gone),
            Err(e) => return Err(SourceError::Io { path, error: e }),
        };
        let build = |file: &mut File| -> Result<(Cached, usize), SourceError> {
            let (tracks, layout) = read_init(file, &path)?;
            let parts = self.rec.parts(seg).ok_or_else(|| {
                if path.exists() { malformed(&path, "no parts can be read") } else { SourceError::Gone }
            })?;
            let f = RecFile { tracks: Arc::new(tracks), layout, parts };
            let bytes = f.memory();
            Ok((Cached::Recording(Arc::new(f)), bytes))
        };
        let value = if seg.writing {
            build(&mut file)?.0
        } else {
            let meta = file.metadata().map_err(io(&path))?;
            cached(key_of(&path, &meta), || build(&mut file))?
        };
        match value {
            Cached::Recording(r) => Ok((file, path, r)),
            Cached::Movie(_) => Err(malformed(&path, "not a recording")),
        }
    }

    /// The file of `segs[i]`, opened as the current one.
    fn file(&mut self, i: usize) -> Result<Arc<RecFile>, SourceError> {
        if let (Some(c), true) = (&self.cur, self.pos.0 == i) {
            return Ok(c.2.clone());
        }
        let seg = self.segs.get(i).cloned().ok_or(SourceError::NotFound)?;
        let c = self.rec_file(&seg)?;
        let info = c.2.clone();
        self.cur = Some(c);
        self.pos = (i, 0);
        Ok(info)
    }

    fn seek(&mut self, at: i64) -> Result<Option<i64>, SourceError> {
        let index = self.index()?;
        let segs = index
            .list_at_most(&self.path, Some(at as u64), self.to.map(|t| t as u64), SEGMENT_PAGE)
            .map_err(|e| SourceError::Index(e.to_string()))?;
        if segs.is_empty() {
            return Ok(None);
        }
        self.segs = segs;
        self.cur = None;
        self.pos = (usize::MAX, 0);
        let info = self.file(0)?;
        let seg_start = self.segs[0].start_us as i64;
        let rel = at - seg_start;
        let (part, time) = match parts::keyframe_at(&info.parts, rel) {
            Some(p) => (p, seg_start + p.keyframe_us.unwrap_or(p.start_us)),
            // Audio only: the part holding the time.
            None => match info.parts.iter().rev().find(|p| p.start_us <= rel).or(info.parts.first()) {
                Some(p) => (p, at.max(seg_start + p.start_us)),
                None => return Ok(Some(at)),
            },
        };
        let i = info.parts.iter().position(|p| p == part).unwrap_or(0);
        self.pos = (0, i);
        Ok(Some(time))
    }

    /// Segments after the listed ones, from the index; false when there are none.
    fn more_segments(&mut self) -> Result<bool, SourceError> {
        let Some(after) = self.segs.last().cloned() else { return Ok(false) };
        let index = self.index()?;
        let more = index
            .list_at_most(&self.path, Some(after.start_us + 1), self.to.map(|t| t as u64), SEGMENT_PAGE)
            .map_err(|e| SourceError::Index(e.to_string()))?;
        let more: Vec<Segment> = more.into_iter().filter(|s| s.start_us > after.start_us).collect();
        if more.is_empty() {
            return Ok(false);
        }
        // Keep what is played from on; drop what is behind.
        let done = self.pos.0.min(self.segs.len());
        self.segs.drain(..done);
        self.pos.0 -= done;
        self.segs.extend(more);
        if let Some(l) = self.segs.last()
            && l.start_us >= self.last.start_us
        {
            self.last = l.clone();
        }
        Ok(true)
    }

    /// The segment `seg` as the index has it now (None: deleted).
    fn refresh(&self, seg: &Segment) -> Result<Option<Segment>, SourceError> {
        let index = self.index()?;
        let now = index
            .list_at_most(&self.path, Some(seg.start_us), Some(seg.start_us + 1), 4)
            .map_err(|e| SourceError::Index(e.to_string()))?;
        Ok(now.into_iter().find(|s| s.start_us == seg.start_us))
    }

    fn next(&mut self) -> Result<Option<Got>, SourceError> {
        loop {
            let (si, pi) = self.pos;
            if si >= self.segs.len() {
                if self.more_segments()? {
                    continue;
                }
                return Ok(None);
            }
            let info = self.file(si)?;
            let seg = self.segs[si].clone();
            if let Some(&part) = info.parts.get(pi) {
                self.pos.1 += 1;
                let frames = self.read_part(&seg, &info, &part)?;
                return Ok(Some((info.tracks.clone(), frames, false)));
            }
            // The known parts ran out: a file being written may have more now.
            if seg.writing {
                let Some(now) = self.refresh(&seg)? else { return Err(SourceError::Gone) };
                let (file, path, fresh) = self.rec_file(&now)?;
                let grew = fresh.parts.len() > pi;
                self.segs[si] = now.clone();
                if now.start_us == self.last.start_us {
                    self.last = now.clone();
                }
                self.cur = Some((file, path, fresh));
                self.pos = (si, pi);
                if grew || !now.writing {
                    if !grew {
                        self.pos = (si + 1, 0);
                        self.cur = None;
                    }
                    continue;
                }
                // Reached the part being written.
                return Ok(None);
            }
            self.pos = (si + 1, 0);
            self.cur = None;
        }
    }

    fn read_part(&mut self, seg: &Segment, info: &RecFile, part: &Part) -> Result<Vec<Timed>, SourceError> {
        let Some((file, path, _)) = &mut self.cur else { return Err(SourceError::NotFound) };
        if !path.exists() {
            return Err(SourceError::Gone);
        }
        if part.len > MAX_PART_BYTES {
            return Err(malformed(path, format!("a part of {} bytes (over {MAX_PART_BYTES})", part.len)));
        }
        let data = Bytes::from(read_exact_at(file, path, part.offset, part.len)?);
        let frames = fmp4_read::read_part(&info.layout, &data).map_err(|e| malformed(path, e))?;
        let base = seg.start_us as i64;
        let clock = |k: TrackKind| {
            match k {
                TrackKind::Video => info.tracks.video.as_ref(),
                TrackKind::Audio => info.tracks.audio.as_ref(),
            }
            .map_or(1000, |t| t.clock_rate().max(1))
        };
        Ok(frames
            .into_iter()
            .map(|f| {
                let c = clock(f.kind);
                Timed { dts_us: base + us(f.dts, c), pts_us: base + us(f.pts, c), frame: f }
            })
            .collect())
    }

    fn keyframes(&mut self, from: i64, to: i64, max: usize) -> Result<Vec<i64>, SourceError> {
        let index = self.index()?;
        let segs = index
            .list_at_most(&self.path, Some(from.max(0) as u64), Some(to.max(0) as u64), SEGMENT_PAGE)
            .map_err(|e| SourceError::Index(e.to_string()))?;
        let mut out = Vec::new();
        for seg in segs {
            let (_, _, info) = match self.rec_file(&seg) {
                Ok(f) => f,
                Err(SourceError::Gone) => continue,
                Err(e) => return Err(e),
            };
            for p in &info.parts {
                let Some(k) = p.keyframe_us else { continue };
                let t = seg.start_us as i64 + k;
                if t >= from && t < to && out.len() < max {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }

    fn keyframe(&mut self, at: i64) -> Result<Option<Timed>, SourceError> {
        let index = self.index()?;
        let Some(seg) = index.at(&self.path, at.max(0) as u64).map_err(|e| SourceError::Index(e.to_string()))? else {
            return Ok(None);
        };
        let (mut file, path, info) = self.rec_file(&seg)?;
        let rel = at - seg.start_us as i64;
        let Some(part) = info.parts.iter().find(|p| p.keyframe_us == Some(rel)) else { return Ok(None) };
        // The moof alone, then the keyframe's bytes.
        let head = read_exact_at(&mut file, &path, part.offset, 8)?;
        let moof_len = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        if moof_len > MAX_MOOF_SIZE.min(part.len) || moof_len < 8 {
            return Err(malformed(&path, "a part whose moof does not fit it"));
        }
        let moof = read_exact_at(&mut file, &path, part.offset, moof_len)?;
        let samples = fmp4_read::part_samples(&info.layout, &moof).map_err(|e| malformed(&path, e))?;
        let Some(s) = samples.iter().find(|s| s.kind == TrackKind::Video && s.keyframe) else { return Ok(None) };
        if s.offset.saturating_add(u64::from(s.size)) > part.len {
            return Err(malformed(&path, "a sample outside its part"));
        }
        let data = read_exact_at(&mut file, &path, part.offset + s.offset, u64::from(s.size))?;
        let clock = info.tracks.video.as_ref().map_or(90_000, |t| t.clock_rate().max(1));
        let base = seg.start_us as i64;
        let frame = Frame::new(TrackKind::Video, s.dts, s.dts + s.cts, true, Bytes::from(data));
        Ok(Some(Timed { dts_us: base + us(s.dts, clock), pts_us: base + us(s.dts + s.cts, clock), frame }))
    }

    fn spans(&mut self, max: usize) -> Result<Vec<Span>, SourceError> {
        let index = self.index()?;
        let segs = index
            .list_at_most(&self.path, Some(self.from as u64), self.to.map(|t| t as u64), max.min(SEGMENT_PAGE))
            .map_err(|e| SourceError::Index(e.to_string()))?;
        let mut out = Vec::new();
        for seg in segs {
            let (_, _, info) = match self.rec_file(&seg) {
                Ok(f) => f,
                Err(SourceError::Gone) => continue,
                Err(e) => return Err(e),
            };
            let base = seg.start_us as i64;
            let Some(first) = info.parts.first() else { continue };
            let end = info.parts.iter().map(|p| p.end_us).max().unwrap_or(0);
            let start = (base + first.start_us).max(self.from);
            let end = (base + end).min(self.to.unwrap_or(i64::MAX));
            if end > start {
                out.push(Span { start_us: start, end_us: end, tracks: info.tracks.clone() });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn movie() -> Cached {
        Cached::Movie(Arc::new(Movie { tracks: Tracks::default(), video: None, audio: None, fragmented: false }))
    }

    fn ptr(c: &Cached) -> *const () {
        match c {
            Cached::Movie(m) => Arc::as_ptr(m).cast(),
            Cached::Recording(r) => Arc::as_ptr(r).cast(),
        }
    }

    #[test]
    fn tables_are_shared_and_the_cache_stays_bounded() {
        let key = |i: usize| (PathBuf::from(format!("/cache-test/{i}.mp4")), i as u64, None);
        let mut builds = 0;
        let a = cached(key(0), || {
            builds += 1;
            Ok((movie(), 1000))
        })
        .unwrap();
        let b = cached(key(0), || {
            builds += 1;
            Ok((movie(), 1000))
        })
        .unwrap();
        assert_eq!(builds, 1, "built once");
        assert_eq!(ptr(&a), ptr(&b), "two viewers of one file share its table");
        // Another length or mtime is another file.
        let c = cached((key(0).0, 1, None), || Ok((movie(), 1000))).unwrap();
        assert_ne!(ptr(&a), ptr(&c));
        // Many large tables: the total stays under the bound, the newest are kept.
        for i in 1..40 {
            cached(key(i), || Ok((movie(), CACHE_BYTES / 8))).unwrap();
            let c = CACHE.lock().unwrap();
            assert!(c.bytes <= CACHE_BYTES && c.entries.len() <= CACHE_ENTRIES, "{} bytes", c.bytes);
        }
        assert!(CACHE.lock().unwrap().entries.iter().any(|e| e.0 == key(39)));
        // A table over a quarter of the bound is used but not kept.
        cached(key(100), || Ok((movie(), CACHE_BYTES / 2))).unwrap();
        assert!(!CACHE.lock().unwrap().entries.iter().any(|e| e.0 == key(100)));
    }
}
