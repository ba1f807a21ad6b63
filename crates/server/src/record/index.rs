//! The list of recorded segments (DESIGN.md "Recordings"): one SQLite table, written as
//! segments open and grow, and always rebuildable from the files themselves
//! ([`super::recover`]). Per-segment details (parts, keyframes) live beside each file.
//!
//! Every query is indexed by (path, start): finding the segments of a window, or the one
//! holding a time, takes the same few page reads with a million segments as with ten. Byte
//! totals for retention are kept in memory, not summed over the table.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

/// The schema version in `PRAGMA user_version`; another is rebuilt from the files.
const SCHEMA_VERSION: i64 = 1;

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The stream path it records.
    pub path: String,
    /// Wall-clock time of its first frame, µs since the Unix epoch.
    pub start_us: u64,
    /// Media duration so far, µs.
    pub duration_us: u64,
    /// File size so far.
    pub bytes: u64,
    /// File name, relative to the recordings directory.
    pub file: String,
    /// Still being written.
    pub writing: bool,
}

impl Segment {
    /// Wall-clock time of its end, µs.
    pub fn end_us(&self) -> u64 {
        self.start_us.saturating_add(self.duration_us)
    }
}

/// Why the index failed.
#[derive(Debug, thiserror::Error)]
#[error("recording index: {0}")]
pub struct IndexError(#[from] rusqlite::Error);

/// The segment list.
pub struct Index {
    db: Mutex<Db>,
}

struct Db {
    conn: Connection,
    /// Bytes per path.
    totals: HashMap<String, u64>,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Segment> {
    Ok(Segment {
        path: r.get(0)?,
        start_us: r.get::<_, i64>(1)? as u64,
        duration_us: r.get::<_, i64>(2)? as u64,
        bytes: r.get::<_, i64>(3)? as u64,
        file: r.get(4)?,
        writing: r.get(5)?,
    })
}

const COLUMNS: &str = "path, start_us, duration_us, bytes, file, writing";

/// SQLite's integers are i64: times and sizes beyond it are clamped (they cannot occur).
fn int(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl Index {
    /// Opens (or creates) the index at `file`. An index of another schema version, or one
    /// SQLite finds damaged, is an error: the caller rebuilds it from the files.
    pub fn open(file: &Path) -> Result<Index, IndexError> {
        Index::with(Connection::open(file)?)
    }

    /// An index in memory (tests, benchmarks).
    pub fn in_memory() -> Result<Index, IndexError> {
        Index::with(Connection::open_in_memory()?)
    }

    fn with(conn: Connection) -> Result<Index, IndexError> {
        // WAL: a crash loses at most the last transactions, never the file; NORMAL sync is
        // safe with WAL (what is lost on power cut is rebuilt from the files).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 0 {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS segments (
                    path TEXT NOT NULL,
                    start_us INTEGER NOT NULL,
                    duration_us INTEGER NOT NULL,
                    bytes INTEGER NOT NULL,
                    file TEXT NOT NULL,
                    writing INTEGER NOT NULL,
                    PRIMARY KEY (path, start_us)
                ) WITHOUT ROWID;
                CREATE INDEX IF NOT EXISTS segments_by_start ON segments (start_us);",
            )?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        } else if version != SCHEMA_VERSION {
            return Err(IndexError(rusqlite::Error::InvalidParameterName(format!(
                "schema version {version}, expected {SCHEMA_VERSION}"
            ))));
        }
        let mut totals = HashMap::new();
        {
            let mut q = conn.prepare("SELECT path, SUM(bytes) FROM segments GROUP BY path")?;
            let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
            for r in rows {
                let (p, b) = r?;
                totals.insert(p, b);
            }
        }
        Ok(Index { db: Mutex::new(Db { conn, totals }) })
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a segment, or replaces the one of the same path and start.
    pub fn put(&self, s: &Segment) -> Result<(), IndexError> {
        let mut db = self.db();
        // Prepared once per connection: this runs after every part of every recording.
        let old: Option<i64> = db
            .conn
            .prepare_cached("SELECT bytes FROM segments WHERE path = ?1 AND start_us = ?2")?
            .query_row(params![s.path, int(s.start_us)], |r| r.get(0))
            .optional()?;
        db.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO segments (path, start_us, duration_us, bytes, file, writing)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![s.path, int(s.start_us), int(s.duration_us), int(s.bytes), s.file, s.writing])?;
        let total = db.totals.entry(s.path.clone()).or_default();
        *total = total.saturating_sub(old.unwrap_or(0) as u64).saturating_add(s.bytes);
        Ok(())
    }

    /// Removes a segment; false when there was none.
    pub fn remove(&self, path: &str, start_us: u64) -> Result<bool, IndexError> {
        let mut db = self.db();
        let bytes: Option<i64> = db
            .conn
            .query_row(
                "DELETE FROM segments WHERE path = ?1 AND start_us = ?2 RETURNING bytes",
                params![path, int(start_us)],
                |r| r.get(0),
            )
            .optional()?;
        let Some(bytes) = bytes else { return Ok(false) };
        if let Some(t) = db.totals.get_mut(path) {
            *t = t.saturating_sub(bytes as u64);
            if *t == 0
                && !db.conn.query_row("SELECT EXISTS (SELECT 1 FROM segments WHERE path = ?1)", [path], |r| {
                    r.get::<_, bool>(0)
                })?
            {
                db.totals.remove(path);
            }
        }
        Ok(true)
    }

    /// Paths with segments, sorted.
    pub fn paths(&self) -> Vec<String> {
        let mut p: Vec<String> = self.db().totals.keys().cloned().collect();
        p.sort();
        p
    }

    /// Bytes of a path's segments, or of all.
    pub fn total_bytes(&self, path: Option<&str>) -> u64 {
        let db = self.db();
        match path {
            Some(p) => db.totals.get(p).copied().unwrap_or(0),
            None => db.totals.values().sum(),
        }
    }

    /// The segments of `path` that overlap `[from, to)` (µs), oldest first; all without bounds.
    pub fn list(&self, path: &str, from_us: Option<u64>, to_us: Option<u64>) -> Result<Vec<Segment>, IndexError> {
        self.list_at_most(path, from_us, to_us, usize::MAX)
    }

    /// As [`Index::list`], the first `limit` segments only.
    pub fn list_at_most(
        &self,
        path: &str,
        from_us: Option<u64>,
        to_us: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Segment>, IndexError> {
        let db = self.db();
        // The first segment is the last one starting at or before `from` (it may reach into
        // the window), then every one starting before `to`.
        let first = match from_us {
            Some(from) => db
                .conn
                .query_row(
                    "SELECT start_us FROM segments WHERE path = ?1 AND start_us <= ?2 ORDER BY start_us DESC LIMIT 1",
                    params![path, int(from)],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?
                .unwrap_or(int(from)),
            None => 0,
        };
        let to = to_us.map_or(i64::MAX, int);
        let mut q = db.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM segments WHERE path = ?1 AND start_us >= ?2 AND start_us < ?3 ORDER BY start_us LIMIT ?4"
        ))?;
        let rows = q.query_map(params![path, first, to, int(limit as u64)], row)?;
        let from = from_us.unwrap_or(0);
        let mut out = Vec::new();
        for r in rows {
            let s = r?;
            if s.end_us() > from || s.start_us >= from {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The segment of `path` holding time `at_us`: the last one starting at or before it, if
    /// it reaches that far.
    pub fn at(&self, path: &str, at_us: u64) -> Result<Option<Segment>, IndexError> {
        let db = self.db();
        let s = db
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM segments WHERE path = ?1 AND start_us <= ?2 ORDER BY start_us DESC LIMIT 1"
            ))?
            .query_row(params![path, int(at_us)], row)
            .optional()?;
        Ok(s.filter(|s| s.end_us() > at_us || s.start_us == at_us))
    }

    /// The oldest segments not being written, of `path` or of every path, oldest first.
    pub fn oldest(&self, path: Option<&str>, limit: usize) -> Result<Vec<Segment>, IndexError> {
        let db = self.db();
        let limit = int(limit as u64);
        let out = match path {
            Some(p) => db
                .conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM segments WHERE path = ?1 AND writing = 0 ORDER BY start_us LIMIT ?2"
                ))?
                .query_map(params![p, limit], row)?
                .collect::<Result<Vec<_>, _>>()?,
            None => db
                .conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM segments WHERE writing = 0 ORDER BY start_us LIMIT ?1"
                ))?
                .query_map(params![limit], row)?
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(out)
    }

    /// The oldest segments not being written after `after` (start, path), of `path` or of
    /// every path, in (start, path) order: pages through them without reading again what came
    /// before.
    pub fn oldest_after(
        &self,
        path: Option<&str>,
        after: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<Vec<Segment>, IndexError> {
        let db = self.db();
        let limit = int(limit as u64);
        let (start, after_path) = after.map_or((-1, ""), |(s, p)| (int(s), p));
        let out = match path {
            Some(p) => db
                .conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM segments WHERE path = ?1 AND writing = 0 AND start_us > ?2
                     ORDER BY start_us LIMIT ?3"
                ))?
                .query_map(params![p, start, limit], row)?
                .collect::<Result<Vec<_>, _>>()?,
            None => db
                .conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM segments WHERE writing = 0 AND (start_us > ?1 OR (start_us = ?1 AND path > ?2))
                     ORDER BY start_us, path LIMIT ?3"
                ))?
                .query_map(params![start, after_path, limit], row)?
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(out)
    }

    /// Segments marked as being written (after a crash: their files need checking).
    pub fn writing(&self) -> Result<Vec<Segment>, IndexError> {
        let db = self.db();
        let mut q = db.conn.prepare(&format!("SELECT {COLUMNS} FROM segments WHERE writing = 1"))?;
        let rows = q.query_map([], row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Adds many segments in one transaction (rebuilds, benchmarks).
    pub fn put_many(&self, segments: &[Segment]) -> Result<(), IndexError> {
        let mut db = self.db();
        let db = &mut *db;
        let tx = db.conn.transaction()?;
        {
            let mut q = tx.prepare(
                "INSERT OR REPLACE INTO segments (path, start_us, duration_us, bytes, file, writing)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for s in segments {
                q.execute(params![s.path, int(s.start_us), int(s.duration_us), int(s.bytes), s.file, s.writing])?;
            }
        }
        tx.commit()?;
        drop(db.totals.drain());
        let mut q = db.conn.prepare("SELECT path, SUM(bytes) FROM segments GROUP BY path")?;
        let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
        for r in rows {
            let (p, b) = r?;
            db.totals.insert(p, b);
        }
        Ok(())
    }
}

/// Runs of segments no more than `max_gap_us` apart: (start, end) in µs.
pub fn spans(segments: &[Segment], max_gap_us: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for s in segments {
        match out.last_mut() {
            Some(last) if s.start_us <= last.1.saturating_add(max_gap_us) => last.1 = last.1.max(s.end_us()),
            _ => out.push((s.start_us, s.end_us())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(path: &str, start_s: u64, dur_s: u64) -> Segment {
        Segment {
            path: path.into(),
            start_us: start_s * 1_000_000,
            duration_us: dur_s * 1_000_000,
            bytes: dur_s * 1000,
            file: format!("{path}/{start_s}.mp4"),
            writing: false,
        }
    }

    #[test]
    fn lists_windows_finds_times_and_keeps_totals() {
        let ix = Index::in_memory().unwrap();
        for i in 0..10 {
            ix.put(&seg("cams/a", i * 600, 600)).unwrap();
        }
        // A gap, then two more.
        ix.put(&seg("cams/a", 7_000, 600)).unwrap();
        ix.put(&seg("cams/a", 7_600, 600)).unwrap();
        ix.put(&seg("cams/b", 0, 10)).unwrap();
        assert_eq!(ix.paths(), ["cams/a", "cams/b"]);
        assert_eq!(ix.total_bytes(Some("cams/a")), 12 * 600_000);
        assert_eq!(ix.total_bytes(None), 12 * 600_000 + 10_000);
        let all = ix.list("cams/a", None, None).unwrap();
        assert_eq!(all.len(), 12);
        let first = ix.list_at_most("cams/a", None, None, 5).unwrap();
        assert_eq!(first[..], all[..5], "the first ones");
        let rest = ix.list_at_most("cams/a", Some(all[5].start_us), None, 100).unwrap();
        assert_eq!(rest[..], all[5..], "paged on from the next start");
        assert_eq!(spans(&all, 1_000_000), [(0, 6_000_000_000), (7_000_000_000, 8_200_000_000)]);
        // A window starting inside a segment includes it.
        let w = ix.list("cams/a", Some(650_000_000), Some(1_300_000_000)).unwrap();
        assert_eq!(w.iter().map(|s| s.start_us / 1_000_000).collect::<Vec<_>>(), [600, 1200]);
        // A window in the gap has nothing.
        assert!(ix.list("cams/a", Some(6_100_000_000), Some(6_900_000_000)).unwrap().is_empty());
        assert_eq!(ix.at("cams/a", 1_234_000_000).unwrap().map(|s| s.start_us), Some(1_200_000_000));
        assert_eq!(ix.at("cams/a", 6_500_000_000).unwrap(), None, "in the gap");
        // Growing a segment replaces its bytes in the totals.
        let mut s = seg("cams/b", 0, 10);
        s.bytes = 50_000;
        ix.put(&s).unwrap();
        assert_eq!(ix.total_bytes(Some("cams/b")), 50_000);
        assert!(ix.remove("cams/b", 0).unwrap());
        assert!(!ix.remove("cams/b", 0).unwrap());
        assert_eq!(ix.paths(), ["cams/a"]);
        assert_eq!(ix.oldest(None, 2).unwrap().iter().map(|s| s.start_us).collect::<Vec<_>>(), [0, 600_000_000]);
    }

    #[test]
    fn survives_reopening_and_refuses_another_schema() {
        let dir = std::env::temp_dir().join(format!("fc-index-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("index.db");
        let _ = std::fs::remove_file(&file);
        {
            let ix = Index::open(&file).unwrap();
            ix.put(&Segment { writing: true, ..seg("x/y", 5, 5) }).unwrap();
        }
        let ix = Index::open(&file).unwrap();
        assert_eq!(ix.writing().unwrap().len(), 1);
        assert_eq!(ix.total_bytes(None), 5000);
        drop(ix);
        Connection::open(&file).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(Index::open(&file).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
