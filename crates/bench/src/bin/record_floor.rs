//! `record_floor`: what recording costs the kernel alone. It writes N files at a stream's rate,
//! one `write` of a second of bytes per file and second (the recorder writes one 1 s part per
//! stream and second), optionally followed by one `fdatasync` per write (the recorder syncs
//! each part), with the files' seconds spread evenly over each second, for a given time; then
//! it prints its CPU as JSON. Plain `std`: no runtime, no container, no index. A recorder cannot
//! put the same bytes on the disk for less, so this is the floor to compare ferrocast's
//! recording CPU with (`scripts/bench record` runs both, pinned to the same core).
//!
//! ```text
//! record_floor --dir /tmp/x --files 200 --rate 312500 --seconds 20 [--sync] [--threads 16]
//! ```
//!
//! Output, one JSON object on stdout: `cpu_percent_median` (1 s samples of utime+stime, % of
//! one core), `cpu_percent_total` (the whole run), `bytes_written` (by `write`),
//! `io_write_bytes` (`/proc/self/io` write_bytes: what reached the block layer or was dirtied
//! for it), `max_lag_ms` (how late the latest write started against its schedule: the disk or
//! the core did not keep up when it nears a second), `syncs`, `rss_max_kib` (VmHWM).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// USER_HZ on Linux: the unit of utime and stime in /proc/PID/stat.
const CLOCK_TICKS_PER_S: f64 = 100.0;

struct Args {
    dir: PathBuf,
    files: usize,
    /// Bytes per file and second.
    rate: usize,
    seconds: u64,
    sync: bool,
    threads: usize,
}

const USAGE: &str =
    "usage: record_floor --dir DIR [--files 200] [--rate BYTES_PER_S] [--seconds 20] [--sync] [--threads 16]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args { dir: PathBuf::new(), files: 200, rate: 312_500, seconds: 20, sync: false, threads: 16 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        let num = |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(value()?),
            "--files" => a.files = num(value()?)? as usize,
            "--rate" => a.rate = num(value()?)? as usize,
            "--seconds" => a.seconds = num(value()?)?,
            "--threads" => a.threads = num(value()?)? as usize,
            "--sync" => a.sync = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    if a.dir.as_os_str().is_empty() {
        return Err(format!("--dir is needed\n{USAGE}"));
    }
    if a.files == 0 || a.rate == 0 || a.seconds == 0 || a.threads == 0 {
        return Err("--files, --rate, --seconds and --threads must be positive".to_owned());
    }
    Ok(a)
}

/// utime + stime of this process (every thread), in ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// A numeric field of /proc/self/io or /proc/self/status (`file`).
fn proc_field(file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/self/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("record_floor: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> std::io::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    // One second of a stream; every file gets the same bytes (the page cache copies each write).
    let chunk: Arc<Vec<u8>> = Arc::new((0..args.rate).map(|i| (i * 131 % 251) as u8).collect());
    let mut files = Vec::with_capacity(args.files);
    for i in 0..args.files {
        files.push((i, File::create(args.dir.join(format!("floor-{i}.bin")))?));
    }
    let written = Arc::new(AtomicU64::new(0));
    let max_lag_us = Arc::new(AtomicU64::new(0));
    let syncs = Arc::new(AtomicU64::new(0));
    // Thread k writes files k, k + T, ...: enough threads that a sync in progress does not hold
    // the next file's write back (the recorder's writers run on tokio's blocking pool).
    let mut groups: Vec<Vec<(usize, File)>> = (0..args.threads).map(|_| Vec::new()).collect();
    for (i, f) in files {
        groups[i % args.threads].push((i, f));
    }
    let start = Instant::now() + Duration::from_millis(100);
    let (n, seconds, sync) = (args.files as f64, args.seconds, args.sync);
    let mut workers = Vec::new();
    for mut group in groups.into_iter().filter(|g| !g.is_empty()) {
        let (chunk, written, max_lag_us, syncs) = (chunk.clone(), written.clone(), max_lag_us.clone(), syncs.clone());
        workers.push(std::thread::spawn(move || -> std::io::Result<()> {
            for s in 0..seconds {
                for (i, f) in &mut group {
                    // File i's second s is due at s + i/N: the streams' parts spread over the second.
                    let due = start + Duration::from_secs_f64(s as f64 + *i as f64 / n);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    } else {
                        max_lag_us.fetch_max((now - due).as_micros() as u64, Ordering::Relaxed);
                    }
                    f.write_all(&chunk)?;
                    written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    if sync {
                        f.sync_data()?;
                        syncs.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(())
        }));
    }
    // Sample this process's CPU every second, as ferrocast-bench samples a server's.
    let (t0, k0) = (Instant::now(), cpu_ticks());
    let mut samples = Vec::new();
    let mut last = (t0, k0);
    while workers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_secs(1));
        let (t, k) = (Instant::now(), cpu_ticks());
        samples.push((k - last.1) as f64 / CLOCK_TICKS_PER_S / (t - last.0).as_secs_f64() * 100.0);
        last = (t, k);
    }
    for w in workers {
        w.join().map_err(|_| std::io::Error::other("a writer thread panicked"))??;
    }
    let (t1, k1) = (Instant::now(), cpu_ticks());
    let total = (k1 - k0) as f64 / CLOCK_TICKS_PER_S / (t1 - t0).as_secs_f64() * 100.0;
    // The first and last samples hold the start and the end: the median is of the seconds
    // between, as in ferrocast-bench's sampling of a server that runs on.
    let inner = samples.len().saturating_sub(1);
    let mut mid: Vec<f64> = samples.iter().copied().take(inner).skip(1).collect();
    if mid.is_empty() {
        mid = samples;
    }
    println!(
        "{{\"files\": {}, \"rate_bytes_per_s\": {}, \"seconds\": {}, \"sync\": {}, \"threads\": {}, \
         \"cpu_percent_median\": {:.2}, \"cpu_percent_total\": {:.2}, \"bytes_written\": {}, \
         \"io_write_bytes\": {}, \"syncs\": {}, \"max_lag_ms\": {:.1}, \"rss_max_kib\": {}}}",
        args.files,
        args.rate,
        args.seconds,
        args.sync,
        args.threads,
        median(&mut mid),
        total,
        written.load(Ordering::Relaxed),
        proc_field("io", "write_bytes"),
        syncs.load(Ordering::Relaxed),
        max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0,
        proc_field("status", "VmHWM"),
    );
    Ok(())
}
