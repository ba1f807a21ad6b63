//! Tables of files that no longer change (MP4 sample tables, closed recordings' part
//! tables), shared between viewers: keyed by (path, length, mtime), least recently used out
//! first, with a bounded total ([`super::CACHE_BYTES`], [`super::CACHE_ENTRIES`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ferrocast_media::mp4_index::Movie;

use super::recording::RecFile;
use super::{CACHE_BYTES, CACHE_ENTRIES, SourceError};

/// What the cache keeps.
#[derive(Clone)]
pub(super) enum Cached {
    Movie(Arc<Movie>),
    Recording(Arc<RecFile>),
}

pub(super) type Key = (PathBuf, u64, Option<SystemTime>);

pub(super) struct Cache {
    pub(super) entries: Vec<(Key, Cached, usize, u64)>,
    pub(super) bytes: usize,
    tick: u64,
}

pub(super) static CACHE: Mutex<Cache> = Mutex::new(Cache { entries: Vec::new(), bytes: 0, tick: 0 });

/// A table from the cache, or built (outside the lock) and kept, the least recently used
/// ones making room.
pub(super) fn cached(
    key: Key,
    build: impl FnOnce() -> Result<(Cached, usize), SourceError>,
) -> Result<Cached, SourceError> {
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

pub(super) fn key_of(path: &Path, meta: &std::fs::Metadata) -> Key {
    (path.to_owned(), meta.len(), meta.modified().ok())
}
