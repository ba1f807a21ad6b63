//! The recordings index at scale (BENCHMARKS.md, eighth round): fills an index file with
//! 1,000,000 ten-minute segments of one path (19 years of one camera) plus 50 other paths of
//! 2,000 segments each, then times what the server asks of it, many times each at random
//! places, and prints a table (median, p99, max) and SQLite's plan of each query.
//!
//! ```text
//! cargo run --release -p ferrocast --example record_index [-- SEGMENTS [DIR [keep]]]
//! ```
//!
//! The file goes in DIR (default: the system's temp dir, on the disk here) and is removed at
//! the end unless `keep` is given. Random places come from a fixed-seed generator: every run asks the same questions.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ferrocast::record::index::{Index, Segment};
use ferrocast::record::retention::{self, Limits};

/// One segment: 10 minutes.
const SEGMENT_US: u64 = 600 * 1_000_000;
/// A 2.6 Mbit/s stream's 10 minutes.
const SEGMENT_BYTES: u64 = 195_000_000;
/// 2020-01-01T00:00:00Z, µs.
const BASE_US: u64 = 1_577_836_800 * 1_000_000;
/// The path with the million segments.
const PATH: &str = "cams/main";
/// Other paths, and segments each.
const OTHER_PATHS: usize = 50;
const OTHER_SEGMENTS: u64 = 2_000;
const HOUR_US: u64 = 3_600 * 1_000_000;
const DAY_US: u64 = 24 * HOUR_US;

/// xorshift64*: fixed-seed randomness without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

fn segment(path: &str, start_us: u64) -> Segment {
    Segment {
        path: path.to_owned(),
        start_us,
        duration_us: SEGMENT_US,
        bytes: SEGMENT_BYTES,
        file: format!("{path}/{}.mp4", ferrocast::utc::file_stem(start_us)),
        writing: false,
    }
}

/// Timings of one operation, µs.
struct Timed {
    name: String,
    samples: Vec<f64>,
    /// Rows per call, on average.
    rows: f64,
}

impl Timed {
    fn at(&self, q: f64) -> f64 {
        let mut v = self.samples.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}

/// Runs `f` `reps` times (after a few untimed warm-ups); `f` returns the rows it got.
fn time(name: &str, reps: usize, mut f: impl FnMut() -> usize) -> Timed {
    for _ in 0..reps.min(10) {
        f();
    }
    let mut samples = Vec::with_capacity(reps);
    let mut rows = 0;
    for _ in 0..reps {
        let t = Instant::now();
        rows += f();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Timed { name: name.to_owned(), samples, rows: rows as f64 / reps.max(1) as f64 }
}

fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 { format!("{:.0} ms", us / 1000.0) } else { format!("{us:.1} µs") }
}

/// SQLite's plan for `sql` on the index file (the queries are index.rs's, copied).
fn plan(file: &Path, sql: &str) -> String {
    let conn = rusqlite::Connection::open(file).expect("open the index for EXPLAIN");
    let mut q = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("EXPLAIN");
    let rows = q.query_map([], |r| r.get::<_, String>(3)).expect("EXPLAIN rows");
    rows.map(|r| r.unwrap_or_default()).collect::<Vec<_>>().join("; ")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(1_000_000, |a| a.parse().expect("SEGMENTS: a number"));
    let dir: PathBuf = args.next().map_or_else(std::env::temp_dir, PathBuf::from);
    // `keep`: leave the filled index in place (to serve it: `[record] dir` = that directory).
    let keep = args.next().is_some_and(|a| a == "keep");
    let dir = dir.join(format!("ferrocast-record-index-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the directory");
    let file = dir.join("index.db");
    let end_us = BASE_US + n * SEGMENT_US;

    // Fill: the million, then the others, spread over the same years, in one transaction.
    let t = Instant::now();
    let mut all: Vec<Segment> = (0..n).map(|i| segment(PATH, BASE_US + i * SEGMENT_US)).collect();
    let step = (end_us - BASE_US) / OTHER_SEGMENTS;
    for p in 0..OTHER_PATHS {
        let path = format!("cams/other-{p:02}");
        all.extend((0..OTHER_SEGMENTS).map(|i| segment(&path, BASE_US + i * step + p as u64 * 1_000_000)));
    }
    // The newest segment of the big path is being written, as a live camera's is.
    if let Some(last) = all.get_mut(n as usize - 1) {
        last.writing = true;
    }
    let total = all.len();
    {
        let index = Index::open(&file).expect("open the index");
        index.put_many(&all).expect("fill the index");
    }
    let fill = t.elapsed();
    drop(all);
    let size: u64 =
        std::fs::read_dir(&dir).expect("list").flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
    println!(
        "index: {total} segments ({n} of {PATH}, {OTHER_PATHS} other paths x {OTHER_SEGMENTS}), {:.1} MiB on disk in {}, filled in {:.1} s",
        size as f64 / (1 << 20) as f64,
        dir.display(),
        fill.as_secs_f64()
    );

    let mut rng = Rng(0x5eed_f00d_1234_5678);
    let mut results = Vec::new();
    // Startup: opening the filled file sums the bytes per path (a scan of every row).
    results.push(time("Index::open (sums bytes per path)", 5, || {
        let ix = Index::open(&file).expect("reopen");
        ix.paths().len()
    }));
    let index = Index::open(&file).expect("reopen");
    assert_eq!(index.total_bytes(Some(PATH)), n * SEGMENT_BYTES, "totals after reopening");

    let span = end_us - BASE_US;
    results.push(time("list(path, from, from + 1 h)", 10_000, || {
        let from = rng.range(BASE_US, end_us - HOUR_US);
        index.list(PATH, Some(from), Some(from + HOUR_US)).expect("list").len()
    }));
    results.push(time("list(path, from, from + 1 day)", 2_000, || {
        let from = rng.range(BASE_US, end_us - DAY_US);
        index.list(PATH, Some(from), Some(from + DAY_US)).expect("list").len()
    }));
    results.push(time("list(other path, from, from + 1 day)", 2_000, || {
        let from = rng.range(BASE_US, end_us - DAY_US);
        let p = format!("cams/other-{:02}", rng.range(0, OTHER_PATHS as u64));
        index.list(&p, Some(from), Some(from + DAY_US)).expect("list").len()
    }));
    results.push(time("at(path, t)", 10_000, || {
        let t = BASE_US + rng.next() % span;
        usize::from(index.at(PATH, t).expect("at").is_some())
    }));
    results.push(time("oldest(None, 256)", 1_000, || index.oldest(None, 256).expect("oldest").len()));
    results.push(time("oldest(Some(path), 256)", 1_000, || index.oldest(Some(PATH), 256).expect("oldest").len()));
    // A retention pass that deletes nothing (no limits, plenty of free space): what the server
    // does every 5 s.
    results.push(time("retention::plan, nothing to delete", 200, || {
        retention::plan(&index, end_us, |_| Limits::default(), None, Some(u64::MAX / 2), 1 << 30).expect("plan").len()
    }));
    // A retention pass with K segments of the big path past its age limit (lowered, or after a
    // long stop): the plan pages through them with `oldest(path, consumed + 256)`.
    for k in [5_000u64, 10_000, 20_000] {
        let cutoff = BASE_US + k * SEGMENT_US + SEGMENT_US;
        let limits = |p: &str| Limits { max_age_us: (p == PATH).then_some(end_us - cutoff), max_bytes: None };
        results.push(time(&format!("retention::plan, {k} segments past max_age"), 3, || {
            retention::plan(&index, end_us, limits, None, Some(u64::MAX / 2), 1 << 30).expect("plan").len()
        }));
    }
    // The writer's update after every part: the segment being written grows.
    let mut live = segment(PATH, end_us - SEGMENT_US);
    live.writing = true;
    results.push(time("put (the live segment grows, per part)", 2_000, || {
        live.bytes += 325_000;
        index.put(&live).expect("put");
        1
    }));
    // For comparison, the same two statements as `put` (index.rs prepares both on every
    // call) with statements prepared once, on a second connection to the file.
    {
        use rusqlite::{OptionalExtension, params};
        let conn = rusqlite::Connection::open(&file).expect("second connection");
        conn.pragma_update(None, "synchronous", "NORMAL").expect("synchronous");
        let mut s = segment(PATH, end_us - 2 * SEGMENT_US);
        results.push(time("put's statements, prepared once (comparison)", 2_000, || {
            s.bytes += 325_000;
            let _old: Option<i64> = conn
                .prepare_cached("SELECT bytes FROM segments WHERE path = ?1 AND start_us = ?2")
                .and_then(|mut q| q.query_row(params![s.path, s.start_us as i64], |r| r.get(0)).optional())
                .expect("select");
            conn.prepare_cached(
                "INSERT OR REPLACE INTO segments (path, start_us, duration_us, bytes, file, writing)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut q| {
                q.execute(params![s.path, s.start_us as i64, s.duration_us as i64, s.bytes as i64, s.file, s.writing])
            })
            .expect("insert");
            1
        }));
    }
    // Retention deleting the oldest, one by one (put back afterwards, untimed).
    let mut victims: Vec<Segment> = index.oldest(Some(PATH), 1_000).expect("oldest");
    let mut removed = Vec::new();
    results.push(time("remove (retention, the oldest)", victims.len().min(1_000) - 10, || {
        let s = victims.remove(0);
        let ok = index.remove(&s.path, s.start_us).expect("remove");
        removed.push(s);
        usize::from(ok)
    }));
    index.put_many(&removed).expect("put the removed back");
    // The API without a window lists every segment of the path.
    results
        .push(time("list(path, None, None): every segment", 3, || index.list(PATH, None, None).expect("list").len()));

    println!();
    println!("| operation | repetitions | rows per call | median | p99 | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in &results {
        println!(
            "| `{}` | {} | {:.1} | {} | {} | {} |",
            r.name,
            r.samples.len(),
            r.rows,
            fmt_us(r.at(0.5)),
            fmt_us(r.at(0.99)),
            fmt_us(r.at(1.0))
        );
    }

    println!();
    println!("Query plans (index.rs's statements):");
    for (what, sql) in [
        (
            "list: first segment",
            "SELECT start_us FROM segments WHERE path = 'cams/main' AND start_us <= 0 ORDER BY start_us DESC LIMIT 1",
        ),
        (
            "list: the window",
            "SELECT path, start_us, duration_us, bytes, file, writing FROM segments WHERE path = 'cams/main' AND start_us >= 0 AND start_us < 1 ORDER BY start_us",
        ),
        (
            "at",
            "SELECT path, start_us, duration_us, bytes, file, writing FROM segments WHERE path = 'cams/main' AND start_us <= 0 ORDER BY start_us DESC LIMIT 1",
        ),
        (
            "oldest(None)",
            "SELECT path, start_us, duration_us, bytes, file, writing FROM segments WHERE writing = 0 ORDER BY start_us LIMIT 256",
        ),
        (
            "oldest(Some)",
            "SELECT path, start_us, duration_us, bytes, file, writing FROM segments WHERE path = 'cams/main' AND writing = 0 ORDER BY start_us LIMIT 256",
        ),
        ("open: totals", "SELECT path, SUM(bytes) FROM segments GROUP BY path"),
    ] {
        println!("- {what}: {}", plan(&file, sql));
    }
    drop(index);
    if keep {
        println!("kept: {}", file.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
