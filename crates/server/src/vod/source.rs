//! One viewer's reader over recordings or an MP4 file, by media time in µs: what RTSP
//! playback paces and HLS VOD segments (DESIGN.md "Recordings": playback is a source like any
//! other).
//!
//! Recordings are read part by part from the per-file part tables ([`crate::record::parts`]),
//! files by their sample tables ([`ferrocast_media::mp4_index`]); nothing is read that the
//! viewer does not play, and media data is read only for the batch being handed out. Tables
//! of files that no longer change (MP4 files, closed recording files) are shared between
//! viewers, keyed by (path, length, mtime): built once however many viewers ask at once,
//! shared while anyone holds them, and the recently used kept in a cache with a bounded
//! total ([`CACHE_BYTES`]): a thousand viewers of one file cost one table and a batch each
//! (a batch: at most [`MAX_BATCH_BYTES`] of samples and [`MAX_BATCH_GAP_BYTES`] between).
//!
//! Everything here is blocking file I/O: call it from `spawn_blocking`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferrocast_media::fmp4::MAX_PART_DATA;
use ferrocast_media::fmp4_read::{self, MAX_MOOF_SIZE};
use ferrocast_media::{Frame, TrackKind, Tracks};

use super::{Playback, Target};

/// A file's media, about this long, makes one batch.
pub const BATCH_US: i64 = 1_000_000;

/// Most samples in one batch of a file (a second of 1000 fps video with audio is under this).
pub const MAX_BATCH_SAMPLES: usize = 4096;

/// Most bytes of media data in one batch of a file: a second of 200 Mbit/s.
pub const MAX_BATCH_BYTES: u64 = 25 << 20;

/// Samples closer than this in a file are read with one read (the bytes between are read
/// and dropped): fewer system calls for interleaved files.
const READ_GAP: u64 = 64 << 10;

/// Most bytes between samples read (and held until the batch is dropped) in one batch: a
/// sparse file (other tracks, or damage, between the samples) costs at most this beyond the
/// samples' own [`MAX_BATCH_BYTES`]; past it, samples are read one by one.
pub const MAX_BATCH_GAP_BYTES: u64 = 4 << 20;

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
    /// Bytes of media in it, about (recordings: the parts it overlaps; files: the samples):
    /// what HLS VOD bounds its segments' bytes by.
    pub bytes: u64,
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
            Inner::File(f) => {
                Ok(vec![Span { start_us: 0, end_us: f.end_us, tracks: f.tracks.clone(), bytes: f.bytes() }])
            }
            Inner::Rec(r) => r.spans(max),
        }
    }
}

// What the RTSP driver needs: a source moves into a blocking task and back.
const _: fn() = || {
    fn send<T: Send + 'static>() {}
    send::<Source>();
};

/// The clock rate of a track of one kind (its timescale in a recording or file); 1000 for a
/// kind the tracks do not have (never used: a file's samples are of its tracks).
pub(crate) fn clock_of(tracks: &Tracks, kind: TrackKind) -> u32 {
    match kind {
        TrackKind::Video => tracks.video.as_ref(),
        TrackKind::Audio => tracks.audio.as_ref(),
    }
    .map_or(1000, |t| t.clock_rate().max(1))
}

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
fn read_at(mut file: &File, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(at))?;
    let mut buf = Vec::with_capacity(len.min(READ_RESERVE));
    file.take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Exactly `len` bytes at `at`: a file that is now shorter was cut or deleted.
fn read_exact_at(file: &File, path: &Path, at: u64, len: u64) -> Result<Vec<u8>, SourceError> {
    let buf = read_at(file, at, len as usize).map_err(io(path))?;
    if (buf.len() as u64) < len {
        if !path.exists() {
            return Err(SourceError::Gone);
        }
        return Err(malformed(path, format!("cut short: {len} bytes at {at} are not all there")));
    }
    Ok(buf)
}

mod cache;
mod file;
mod recording;

use file::FileSource;
pub(crate) use file::movie;
use recording::RecSource;
pub(crate) use recording::{read_fragment, read_init, start_in};

#[cfg(test)]
mod tests {
    use super::cache::{CACHE, Cached, cached};
    use super::*;
    use ferrocast_media::mp4_index::Movie;
    use std::path::PathBuf;

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

    /// Viewers starting together on one file: one build, one table (finding: tables were
    /// built outside the lock, once per viewer).
    #[test]
    fn viewers_starting_together_share_one_build() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let key = (PathBuf::from("/cache-test/together.mp4"), 7, None);
        let builds = AtomicUsize::new(0);
        let start = std::sync::Barrier::new(8);
        let got: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        let c = cached(key.clone(), || {
                            builds.fetch_add(1, Ordering::SeqCst);
                            // A build takes a while (reading a moov): the others arrive meanwhile.
                            std::thread::sleep(std::time::Duration::from_millis(200));
                            Ok((movie(), 1000))
                        })
                        .unwrap();
                        ptr(&c) as usize
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1, "one build for eight viewers");
        assert!(got.iter().all(|p| *p == got[0]), "one table");
        // A failed build is not remembered: the next viewer builds.
        let key = (PathBuf::from("/cache-test/fails.mp4"), 7, None);
        assert!(cached(key.clone(), || Err(SourceError::NotFound)).is_err());
        assert!(cached(key, || Ok((movie(), 10))).is_ok());
    }

    /// A table too big to keep (a long file) is still one table while anyone holds it.
    #[test]
    fn a_table_too_big_to_keep_is_shared_while_held() {
        let key = (PathBuf::from("/cache-test/long.mp4"), 9, None);
        let mut builds = 0;
        let mut open = || {
            cached(key.clone(), || {
                builds += 1;
                Ok((movie(), CACHE_BYTES))
            })
            .unwrap()
        };
        let a = open();
        let b = open();
        assert_eq!(ptr(&a), ptr(&b), "a second viewer shares the first one's table");
        drop((a, b));
        let c = open();
        drop(c);
        assert_eq!(builds, 2, "built again only once nobody held it");
        assert!(!CACHE.lock().unwrap().entries.iter().any(|e| e.0 == key), "never kept");
    }
}
