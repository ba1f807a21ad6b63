//! Tables of files that no longer change (MP4 sample tables, closed recordings' part
//! tables), shared between viewers: keyed by (path, length, mtime).
//!
//! One build per key: the first viewer to ask builds the table, viewers asking meanwhile wait
//! for it and share it (a thousand viewers starting together cost one build and one table).
//! Every table handed out stays shared for as long as anyone holds it (a weak registry),
//! whatever its size; besides, the most recently used ones are kept when nobody holds them,
//! least recently used out first, with a bounded total ([`super::CACHE_BYTES`],
//! [`super::CACHE_ENTRIES`]; a table over a quarter of it is shared but not kept).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
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

/// A table handed out, as long as someone holds it.
enum Held {
    Movie(Weak<Movie>),
    Recording(Weak<RecFile>),
}

impl Cached {
    fn downgrade(&self) -> Held {
        match self {
            Cached::Movie(m) => Held::Movie(Arc::downgrade(m)),
            Cached::Recording(r) => Held::Recording(Arc::downgrade(r)),
        }
    }
}

impl Held {
    fn upgrade(&self) -> Option<Cached> {
        match self {
            Held::Movie(m) => m.upgrade().map(Cached::Movie),
            Held::Recording(r) => r.upgrade().map(Cached::Recording),
        }
    }
}

/// A build under way: its outcome once done (None: it failed, the next asker builds).
#[derive(Default)]
struct Pending {
    done: Mutex<Option<Option<Cached>>>,
    ready: Condvar,
}

impl Pending {
    fn finish(&self, value: Option<Cached>) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        self.ready.notify_all();
    }

    fn wait(&self) -> Option<Cached> {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = done.as_ref() {
                return v.clone();
            }
            done = self.ready.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What the registry knows of a key.
enum Slot {
    Building(Arc<Pending>),
    Held(Held),
}

pub(super) type Key = (PathBuf, u64, Option<SystemTime>);

pub(super) struct Cache {
    /// Kept strongly, least recently used out first: (key, table, bytes, last use).
    pub(super) entries: Vec<(Key, Cached, usize, u64)>,
    pub(super) bytes: usize,
    tick: u64,
    /// Builds under way and tables handed out (weakly): one build and one table per key.
    registry: Option<HashMap<Key, Slot>>,
}

pub(super) static CACHE: Mutex<Cache> = Mutex::new(Cache { entries: Vec::new(), bytes: 0, tick: 0, registry: None });

fn lock() -> std::sync::MutexGuard<'static, Cache> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks a build failed if it ends without a table (an error, or a panic): waiters go on.
struct Building {
    key: Option<Key>,
    pending: Arc<Pending>,
}

impl Drop for Building {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut c = lock();
            let registry = c.registry.get_or_insert_with(HashMap::new);
            if matches!(registry.get(&key), Some(Slot::Building(p)) if Arc::ptr_eq(p, &self.pending)) {
                registry.remove(&key);
            }
            drop(c);
            self.pending.finish(None);
        }
    }
}

/// A table from the cache, or from a viewer holding it, or the one being built by another
/// viewer (waited for), or built here (outside the lock) and shared.
pub(super) fn cached(
    key: Key,
    build: impl FnOnce() -> Result<(Cached, usize), SourceError>,
) -> Result<Cached, SourceError> {
    let mut build = Some(build);
    loop {
        let pending = {
            let mut c = lock();
            c.tick += 1;
            let tick = c.tick;
            if let Some(e) = c.entries.iter_mut().find(|e| e.0 == key) {
                e.3 = tick;
                return Ok(e.1.clone());
            }
            let registry = c.registry.get_or_insert_with(HashMap::new);
            let held = match registry.get(&key) {
                Some(Slot::Held(h)) => h.upgrade(),
                _ => None,
            };
            if let Some(v) = held {
                return Ok(v);
            }
            match registry.get(&key) {
                Some(Slot::Building(p)) => Err(p.clone()),
                _ => {
                    let p = Arc::new(Pending::default());
                    registry.insert(key.clone(), Slot::Building(p.clone()));
                    Ok(p)
                }
            }
        };
        let pending = match pending {
            Ok(mine) => mine,
            Err(theirs) => {
                if let Some(v) = theirs.wait() {
                    return Ok(v);
                }
                // Their build failed: try ours.
                continue;
            }
        };
        let mut guard = Building { key: Some(key.clone()), pending: pending.clone() };
        let Some(build) = build.take() else { return Err(SourceError::NotFound) };
        let (value, bytes) = build()?;
        guard.key = None;
        let mut c = lock();
        let registry = c.registry.get_or_insert_with(HashMap::new);
        // Forget tables nobody holds any more.
        registry.retain(|_, s| match s {
            Slot::Building(_) => true,
            Slot::Held(h) => h.upgrade().is_some(),
        });
        registry.insert(key.clone(), Slot::Held(value.downgrade()));
        if bytes <= CACHE_BYTES / 4 && !c.entries.iter().any(|e| e.0 == key) {
            while !c.entries.is_empty() && (c.bytes + bytes > CACHE_BYTES || c.entries.len() >= CACHE_ENTRIES) {
                let oldest = c.entries.iter().enumerate().min_by_key(|(_, e)| e.3).map_or(0, |(i, _)| i);
                let gone = c.entries.swap_remove(oldest);
                c.bytes -= gone.2;
            }
            c.tick += 1;
            let tick = c.tick;
            c.entries.push((key, value.clone(), bytes, tick));
            c.bytes += bytes;
        }
        drop(c);
        pending.finish(Some(value.clone()));
        return Ok(value);
    }
}

pub(super) fn key_of(path: &Path, meta: &std::fs::Metadata) -> Key {
    (path.to_owned(), meta.len(), meta.modified().ok())
}
