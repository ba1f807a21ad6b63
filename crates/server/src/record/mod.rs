//! Recording: every stream whose path's `record` setting is on is written to fMP4 segment
//! files under `[record] dir` (`DIR/PATH/2026-11-25T10-00-00.000Z.mp4`), part by part, with an
//! index of the segments (DESIGN.md "Recordings").
//!
//! The recorder is an ordinary hub reader per stream: it cuts the stream
//! ([`segmenter::Segmenter`]) and hands each step to the stream's writer task through a
//! bounded queue, never waiting on the disk: a disk that stalls or fills up costs recordings,
//! never the publisher or the live readers. The writer appends each part whole and syncs it,
//! so a crash or a power cut leaves every file playable up to its last complete part; at
//! start, files left being written are cut back to it ([`recover`]).

pub mod api;
pub mod disk;
pub mod index;
pub mod parts;
pub mod retention;
pub mod segmenter;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferrocast_media::Tracks;
use ferrocast_media::fmp4::{self, TrackTimes};
use ferrocast_media::fmp4_read;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::clock::unix_micros;
use crate::config::RecordConfig;
use crate::hub::Hub;
use crate::paths::SharedPaths;
use crate::reader::{Reader, ReaderItem};
use disk::{Appender, Disk};
use index::{Index, Segment};
use segmenter::{Segmenter, Settings, Step};

/// Steps queued for a stream's writer: about half a minute of 1 s parts. A disk slower than
/// that loses parts (counted), and the stream's file is closed and reopened at a keyframe.
const QUEUE_STEPS: usize = 32;

/// After a write fails (a full or read-only disk), the next try waits this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How often the retention rules run.
const RETENTION_EVERY: Duration = Duration::from_secs(5);

/// The index file, in the recordings directory: with a `+`, which no stream path has, so that
/// no path's directory can take its name (or its `-wal` and `-shm` files' names).
pub const INDEX_FILE: &str = "index+ferrocast.db";

/// Counters (metrics).
#[derive(Debug, Default)]
pub struct RecordStats {
    /// Bytes written to recording files (init segments and parts).
    pub bytes_written: AtomicU64,
    /// Segments deleted by retention, by [`retention::Reason`] (in [`retention::Reason::ALL`]'s
    /// order), then through the API.
    pub deleted: [AtomicU64; retention::Reason::ALL.len() + 1],
    /// Parts written.
    pub parts_written: AtomicU64,
    /// Parts lost: to a disk that could not keep up, or while no file could be written.
    pub parts_dropped: AtomicU64,
    /// Writes that failed.
    pub write_errors: AtomicU64,
    /// Segments deleted by retention.
    pub segments_deleted: AtomicU64,
    /// Bytes deleted by retention.
    pub bytes_deleted: AtomicU64,
}

impl RecordStats {
    /// Segments deleted, by reason: each retention rule's name, then `api`.
    pub fn deleted_by_reason(&self) -> Vec<(&'static str, u64)> {
        let names = retention::Reason::ALL.iter().map(|r| r.as_str()).chain(["api"]);
        names.zip(&self.deleted).map(|(n, c)| (n, c.load(Ordering::Relaxed))).collect()
    }
}

/// Every recording: the index, the files being written, the settings.
pub struct Recordings {
    config: RecordConfig,
    /// Read when a stream starts and at each retention run: a reload applies to the next
    /// publish.
    paths: SharedPaths,
    disk: Disk,
    index: Mutex<Option<Arc<Index>>>,
    /// When opening the index last failed.
    open_failed: Mutex<Option<std::time::Instant>>,
    /// (path, start) of the segments being written: what retention and the API spare (the
    /// index's flag is for recovery after a crash).
    writing: Mutex<HashSet<(String, u64)>>,
    /// Paths with a recorder.
    active: Mutex<HashSet<String>>,
    /// Set when the server shuts down: recorders close their files.
    closing: tokio::sync::watch::Sender<bool>,
    /// Files completed, for the hooks ([`Recordings::completed`]).
    completed: tokio::sync::broadcast::Sender<SegmentComplete>,
    /// Counters.
    pub stats: RecordStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a recording cannot be deleted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeleteError {
    /// No segment starts at that time.
    #[error("no segment starts at that time")]
    NotFound,
    /// It is being written.
    #[error("the segment is being written")]
    Writing,
    /// The index or the disk failed.
    #[error("{0}")]
    Failed(String),
}

impl Recordings {
    /// Recordings with nothing open yet.
    fn new(config: RecordConfig, paths: impl Into<SharedPaths>, disk: Disk) -> Arc<Recordings> {
        Arc::new(Recordings {
            config,
            paths: paths.into(),
            disk,
            index: Mutex::new(None),
            open_failed: Mutex::new(None),
            writing: Mutex::new(HashSet::new()),
            active: Mutex::new(HashSet::new()),
            closing: tokio::sync::watch::channel(false).0,
            completed: tokio::sync::broadcast::channel(COMPLETED_QUEUE).0,
            stats: RecordStats::default(),
        })
    }

    /// Whether `path` is being recorded now (it has a recorder).
    pub fn is_recording(&self, path: &str) -> bool {
        lock(&self.active).contains(path)
    }

    /// Recording files completed from now on (the "segment complete" hook). Sending never
    /// waits: a listener [`COMPLETED_QUEUE`] events behind loses the oldest.
    pub fn completed(&self) -> tokio::sync::broadcast::Receiver<SegmentComplete> {
        self.completed.subscribe()
    }

    /// The index, if recordings exist or are being made.
    pub fn index(&self) -> Option<Arc<Index>> {
        lock(&self.index).clone()
    }

    /// The index for playback, opened now if recordings exist but the background opener has
    /// not got to it yet (right after a start). Blocking: may open and recover the index.
    pub fn index_now(&self) -> Option<Arc<Index>> {
        if let Some(ix) = self.index() {
            return Some(ix);
        }
        self.config.dir.join(INDEX_FILE).exists().then(|| self.open_index()).flatten()
    }

    /// The settings.
    pub fn config(&self) -> &RecordConfig {
        &self.config
    }

    /// The server shuts down: every recorder writes what it holds, closes its file and stops;
    /// waits for them up to `wait`.
    pub async fn close_all(&self, wait: Duration) {
        self.closing.send_replace(true);
        let deadline = tokio::time::Instant::now() + wait;
        while !lock(&self.active).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The file of a segment.
    fn file(&self, rel: &str) -> PathBuf {
        self.config.dir.join(rel)
    }

    /// Deletes the segment of `path` that starts at `start_us`, unless it is being written.
    pub fn delete(&self, path: &str, start_us: u64) -> Result<Segment, DeleteError> {
        let index = self.index().ok_or(DeleteError::NotFound)?;
        let seg = index
            .list(path, Some(start_us), Some(start_us.saturating_add(1)))
            .map_err(|e| DeleteError::Failed(e.to_string()))?
            .into_iter()
            .find(|s| s.start_us == start_us)
            .ok_or(DeleteError::NotFound)?;
        // The set, not the index's flag: a flag left set by a failed index write must not make
        // a finished segment undeletable.
        if lock(&self.writing).contains(&(seg.path.clone(), seg.start_us)) {
            return Err(DeleteError::Writing);
        }
        self.remove(&index, &seg).map_err(DeleteError::Failed)?;
        self.stats.deleted[retention::Reason::ALL.len()].fetch_add(1, Ordering::Relaxed);
        Ok(seg)
    }

    fn remove(&self, index: &Index, seg: &Segment) -> Result<(), String> {
        self.disk.remove(&self.file(&seg.file)).map_err(|e| format!("deleting {}: {e}", seg.file))?;
        let _ = self.disk.remove(&table_path(&self.file(&seg.file)));
        index.remove(&seg.path, seg.start_us).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Opens the index, rebuilding it from the files when it is missing a directory that has
    /// recordings, or damaged.
    fn open_index(&self) -> Option<Arc<Index>> {
        if let Some(ix) = self.index() {
            return Some(ix);
        }
        // One opener at a time; after a failure, the next try waits RETRY_AFTER and only the
        // first failure is an error in the log.
        let mut failed = lock(&self.open_failed);
        if let Some(ix) = self.index() {
            return Some(ix);
        }
        if failed.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return None;
        }
        match self.try_open_index() {
            Ok(index) => {
                if failed.take().is_some() {
                    info!(dir = %self.config.dir.display(), "recording: the recordings directory is usable again");
                }
                let index = Arc::new(index);
                *lock(&self.index) = Some(index.clone());
                Some(index)
            }
            Err(e) => {
                if failed.is_none() {
                    error!(dir = %self.config.dir.display(), "recording stopped: {e}; trying again every {} s", RETRY_AFTER.as_secs());
                }
                *failed = Some(std::time::Instant::now());
                None
            }
        }
    }

    fn try_open_index(&self) -> Result<Index, String> {
        let dir = &self.config.dir;
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the recordings directory: {e}"))?;
        let file = dir.join(INDEX_FILE);
        let existed = file.exists();
        let index = match Index::open(&file) {
            Ok(ix) if existed => ix,
            Ok(ix) => {
                rebuild(&ix, dir, &self.disk);
                ix
            }
            Err(e) => {
                let aside = dir.join(format!("{INDEX_FILE}.damaged-{}", unix_micros() / 1_000_000));
                warn!(file = %file.display(), "recording: index unusable ({e}); rebuilding it from the files");
                let _ = std::fs::rename(&file, &aside);
                for ext in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(dir.join(format!("{INDEX_FILE}{ext}")));
                }
                let ix = Index::open(&file).map_err(|e| format!("cannot create the index {}: {e}", file.display()))?;
                rebuild(&ix, dir, &self.disk);
                ix
            }
        };
        recover(&index, dir, &self.disk);
        Ok(index)
    }
}

/// Starts recording what the per-path table says; gives what the API serves from.
pub fn start(hub: Arc<Hub>, config: RecordConfig, paths: impl Into<SharedPaths>) -> Arc<Recordings> {
    let rec = Recordings::new(config, paths, Disk::from_env());
    {
        let rec = rec.clone();
        tokio::spawn(async move {
            // The index opens (and recovers what a crash left) at once, then retention runs;
            // a directory that cannot be used is tried again each time. Nothing is created
            // while no path records and no recordings exist (a reload may add one).
            let mut tick = tokio::time::interval(RETENTION_EVERY);
            loop {
                tick.tick().await;
                if rec.index().is_none() && !rec.paths.any(|s| s.record) && !rec.config.dir.join(INDEX_FILE).exists() {
                    continue;
                }
                let r = rec.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if r.open_index().is_some() {
                        apply_retention(&r);
                    }
                })
                .await;
            }
        });
    }
    // Followed even when no path records today: a reload may add one.
    let r = rec.clone();
    hub.on_new_streams(move |hub, path| spawn_stream(hub, &r, path));
    rec
}

/// Completed files queued for a slow listener of [`Recordings::completed`] (the hooks, which
/// take them at once); beyond this the oldest are lost.
pub const COMPLETED_QUEUE: usize = 256;

/// A recording file completed: closed at a segment's end, a republish or the stream's end.
#[derive(Debug, Clone)]
pub struct SegmentComplete {
    /// Its entry in the index (path, start, duration, bytes, file name relative to the
    /// recordings directory).
    pub segment: Segment,
    /// The file as the server opens it (`record.dir` joined).
    pub file: PathBuf,
}

impl Recordings {
    /// After a config reload: every live path that now records and has no recorder gets one
    /// (a recorder running carries on until its stream ends, even if the path no longer
    /// records).
    pub fn follow_live(self: &Arc<Self>, hub: &Arc<Hub>) {
        for path in hub.live_paths() {
            spawn_stream(hub, self, path);
        }
    }
}

/// Removes a path from the streams being recorded when its recorder ends, however it ends.
struct Active {
    rec: Arc<Recordings>,
    path: String,
}

impl Drop for Active {
    fn drop(&mut self) {
        lock(&self.rec.active).remove(&self.path);
    }
}

fn spawn_stream(hub: &Arc<Hub>, rec: &Arc<Recordings>, path: String) {
    if !rec.paths.get(&path).record || crate::path::validate(&path).is_err() || *rec.closing.borrow() {
        return;
    }
    // A stream announced twice is recorded once.
    if !lock(&rec.active).insert(path.clone()) {
        return;
    }
    let active = Active { rec: rec.clone(), path: path.clone() };
    let rec = rec.clone();
    let hub = hub.clone();
    tokio::spawn(async move {
        info!(path, "recording");
        // A recorder that fell a whole ring behind (a stalled task) starts again at the
        // stream's GOP rather than stop recording.
        // The recorder is the server's own reader (a recorded path's source is always on).
        while let Some(sub) = hub.subscribe_internal(&path) {
            let clock = hub.media_clock(&path);
            let reader = Reader::new(hub.clone(), sub);
            if !record_stream(&rec, &path, reader, clock).await {
                break;
            }
            warn!(path, "recording: fell behind the stream; starting again at its last keyframe");
        }
        drop(active);
        debug!(path, "recording: stream ended");
        // Published again while this recorder finished its writes (its announcement found the
        // path still being recorded): record the new publish.
        if hub.is_published(&path) {
            spawn_stream(&hub, &rec, path);
        }
    });
}

/// Shared between a stream's recorder and its writer.
#[derive(Default)]
struct Signals {
    /// Wall-clock ms after which the writer wants a new file (0: none wanted).
    reopen_at_ms: AtomicU64,
}

/// Records until the stream ends; true when the reader fell too far behind instead.
async fn record_stream(
    rec: &Arc<Recordings>,
    path: &str,
    mut reader: Reader,
    clock: Option<Arc<crate::clock::MediaClock>>,
) -> bool {
    let settings = Settings {
        segment_us: rec.config.segment_duration_ms.saturating_mul(1000),
        part_us: rec.config.part_duration_ms.saturating_mul(1000),
    };
    let mut seg = Segmenter::new(settings);
    let (tx, rx) = mpsc::channel::<Step>(QUEUE_STEPS);
    let signals = Arc::new(Signals::default());
    let writer = tokio::spawn(write_steps(rec.clone(), path.to_owned(), rx, signals.clone()));
    let mut out = Vec::new();
    let mut dropping = false;
    let mut too_slow = false;
    let mut closing = rec.closing.subscribe();
    loop {
        let item = tokio::select! {
            item = reader.next() => item,
            _ = closing.wait_for(|c| *c) => ReaderItem::Ended,
        };
        let mut done = false;
        match item {
            ReaderItem::Tracks(t) => seg.set_tracks(&t, &mut out),
            ReaderItem::Frame(f) => {
                let wanted = signals.reopen_at_ms.load(Ordering::Relaxed);
                if wanted != 0 && unix_micros() / 1000 >= wanted {
                    signals.reopen_at_ms.store(0, Ordering::Relaxed);
                    seg.close(&mut out);
                }
                let mapping = clock.as_ref().and_then(|c| c.mapping());
                seg.push(&f, mapping, unix_micros(), &mut out);
            }
            ReaderItem::Republished => seg.close(&mut out),
            ReaderItem::Unpublished => {}
            ReaderItem::Ended => {
                seg.close(&mut out);
                done = true;
            }
            ReaderItem::TooSlow => {
                too_slow = true;
                seg.close(&mut out);
                done = true;
            }
        }
        for step in out.drain(..) {
            let is_part = matches!(step, Step::Part { .. });
            if dropping && !matches!(step, Step::Open { .. }) {
                rec.stats.parts_dropped.fetch_add(u64::from(is_part), Ordering::Relaxed);
                continue;
            }
            dropping = false;
            match tx.try_send(step) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    rec.stats.parts_dropped.fetch_add(u64::from(is_part), Ordering::Relaxed);
                    warn!(path, "recording: the disk does not keep up; parts lost, a new file at the next keyframe");
                    dropping = true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => done = true,
            }
        }
        if dropping {
            // What the segmenter holds now goes nowhere: start over at a keyframe.
            seg.close(&mut Vec::new());
        }
        if done {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
    too_slow
}

/// The file a writer has open.
struct OpenFile {
    appender: Appender,
    segment: Segment,
    tracks: Arc<Tracks>,
    base: TrackTimes,
    /// Its table of parts (`STEM.idx`); None once writing it failed (it is rebuilt from the
    /// file when needed).
    table: Option<std::fs::File>,
    /// How its tracks are stored (to read back the parts it writes).
    layout: fmp4_read::Layout,
}

/// A stream's writer: the blocking side.
struct Writer {
    rec: Arc<Recordings>,
    path: String,
    file: Option<OpenFile>,
    /// The last write failed: one error logged until it works again.
    failing: bool,
}

async fn write_steps(rec: Arc<Recordings>, path: String, mut rx: mpsc::Receiver<Step>, signals: Arc<Signals>) {
    // Behind a mutex rather than moved into each blocking call: a panic in one step leaves the
    // writer here, to close its file and go on.
    let writer = Arc::new(Mutex::new(Writer { rec, path: path.clone(), file: None, failing: false }));
    while let Some(step) = rx.recv().await {
        let (w, signals) = (writer.clone(), signals.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || lock(&w).apply(step, &signals)).await {
            error!(path, "recording: a write failed unexpectedly ({e}); the file is closed");
            let w = writer.clone();
            let _ = tokio::task::spawn_blocking(move || lock(&w).finish()).await;
        }
    }
    let _ = tokio::task::spawn_blocking(move || lock(&writer).finish()).await;
}

impl Writer {
    fn apply(&mut self, step: Step, signals: &Signals) {
        let Some(index) = self.rec.open_index() else {
            if matches!(step, Step::Open { .. }) {
                self.failed("the recordings directory is not usable (see the error above)", signals);
            }
            return;
        };
        match step {
            Step::Open { tracks, base, start_unix_us } => {
                self.finish();
                if let Err(e) = self.open(&index, tracks, base, start_unix_us) {
                    self.failed(&e, signals);
                }
            }
            Step::Part { sequence, frames, next, .. } => {
                let Some(f) = &mut self.file else {
                    // No file after a failure: the part is lost until the next one opens.
                    self.rec.stats.parts_dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let data = fmp4::recording_part(sequence, &f.tracks, f.base, &frames, next);
                let offset = f.appender.len();
                let r = f.appender.append(&data).and_then(|()| f.appender.sync());
                match r {
                    Ok(()) => {
                        // The part as written says what the file now holds (the same reading as
                        // a scan of the file after a crash).
                        let part = part_entry(&f.layout, &data, offset, f.segment.duration_us);
                        if let Some(t) = &mut f.table
                            && std::io::Write::write_all(t, &parts::encode(&part)).is_err()
                        {
                            f.table = None;
                        }
                        f.segment.bytes = f.appender.len();
                        f.segment.duration_us = part.end_us.max(0) as u64;
                        self.rec.stats.bytes_written.fetch_add(data.len() as u64, Ordering::Relaxed);
                        self.rec.stats.parts_written.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = index.put(&f.segment) {
                            warn!(path = self.path, "recording: {e}");
                        }
                        if self.failing {
                            self.failing = false;
                            info!(path = self.path, "recording: writing again");
                        }
                    }
                    Err(e) => {
                        let e = format!("writing {}: {e}", f.segment.file);
                        self.finish();
                        self.failed(&e, signals);
                    }
                }
            }
            Step::Close => self.finish(),
        }
    }

    fn open(&mut self, index: &Index, tracks: Arc<Tracks>, base: TrackTimes, start_unix_us: u64) -> Result<(), String> {
        let init = fmp4::recording_init(&tracks).map_err(|e| format!("cannot record these tracks: {e}"))?;
        let mut start = start_unix_us / 1000 * 1000;
        // A file of that name already (a republish in the same millisecond): the next one.
        let (appender, rel) = loop {
            let rel = format!("{}/{}.mp4", self.path, crate::utc::file_stem(start));
            match self.rec.disk.create(&self.rec.file(&rel)) {
                Ok(a) => break (a, rel),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => start += 1000,
                Err(e) => return Err(format!("creating {rel}: {e}")),
            }
        };
        let segment =
            Segment { path: self.path.clone(), start_us: start, duration_us: 0, bytes: 0, file: rel, writing: true };
        let file = self.rec.file(&segment.file);
        // Nothing is left behind unindexed when a step fails.
        let undo = |e: String| {
            let _ = self.rec.disk.remove(&file);
            let _ = self.rec.disk.remove(&table_path(&file));
            e
        };
        let layout = fmp4_read::scan(&init)
            .map(|s| s.layout)
            .map_err(|e| undo(format!("reading back the init segment: {e}")))?;
        let table = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(table_path(&file))
            .and_then(|mut t| std::io::Write::write_all(&mut t, parts::header()).map(|()| t))
            .ok();
        let mut f = OpenFile { appender, segment, tracks, base, table, layout };
        if let Err(e) = f.appender.append(&init).and_then(|()| f.appender.sync()) {
            return Err(undo(format!("writing {}: {e}", f.segment.file)));
        }
        f.segment.bytes = f.appender.len();
        self.rec.stats.bytes_written.fetch_add(init.len() as u64, Ordering::Relaxed);
        index.put(&f.segment).map_err(|e| undo(e.to_string()))?;
        lock(&self.rec.writing).insert((self.path.clone(), start));
        debug!(path = self.path, file = f.segment.file, "recording: new file");
        self.file = Some(f);
        Ok(())
    }

    fn failed(&mut self, e: &str, signals: &Signals) {
        self.rec.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        if !self.failing {
            error!(path = self.path, "recording stopped: {e}; trying again every {} s", RETRY_AFTER.as_secs());
        } else {
            debug!(path = self.path, "recording: {e}");
        }
        self.failing = true;
        signals.reopen_at_ms.store(unix_micros() / 1000 + RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
    }

    /// Completes the open file.
    fn finish(&mut self) {
        let Some(mut f) = self.file.take() else { return };
        let _ = f.appender.sync();
        f.segment.writing = false;
        lock(&self.rec.writing).remove(&(self.path.clone(), f.segment.start_us));
        if let Some(index) = self.rec.index()
            && let Err(e) = index.put(&f.segment)
        {
            warn!(path = self.path, "recording: {e}");
        }
        if f.segment.duration_us == 0 {
            // Nothing but the init segment: not a recording.
            if let Some(index) = self.rec.index() {
                let _ = self.rec.remove(&index, &f.segment);
            }
        } else {
            let file = self.rec.file(&f.segment.file);
            let _ = self.rec.completed.send(SegmentComplete { segment: f.segment, file });
        }
    }
}

/// The table of parts beside a recording file.
pub fn table_path(file: &Path) -> PathBuf {
    file.with_extension("idx")
}

/// The table entry of a part just written (`data`, at `offset`), read from its moof; `end_us`
/// is where the file ended before it.
fn part_entry(layout: &fmp4_read::Layout, data: &[u8], offset: u64, end_us: u64) -> parts::Part {
    let moof_len = data.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let samples = data.get(..moof_len).and_then(|m| fmp4_read::part_samples(layout, m).ok()).unwrap_or_default();
    let us = |s: &fmp4_read::SampleInfo, t: i64| {
        let timescale = layout.get(s.kind).map_or(1000, |l| l.timescale.max(1));
        ferrocast_media::rescale(t, timescale, 1_000_000)
    };
    parts::Part {
        offset,
        len: data.len() as u64,
        start_us: samples.iter().map(|s| us(s, s.dts)).min().unwrap_or(end_us as i64),
        end_us: samples.iter().map(|s| us(s, s.dts + i64::from(s.duration))).max().unwrap_or(0).max(end_us as i64),
        keyframe_us: samples
            .iter()
            .find(|s| s.kind == ferrocast_media::TrackKind::Video && s.keyframe)
            .map(|s| us(s, s.dts)),
    }
}

impl Recordings {
    /// The parts of a segment: its table, or (missing, damaged or short of what the file
    /// holds) a scan of the file, written back as its table.
    pub fn parts(&self, seg: &Segment) -> Option<Vec<parts::Part>> {
        let file = self.file(&seg.file);
        let table = std::fs::read(table_path(&file)).ok().and_then(|t| parts::decode(&t));
        if let Some(t) = table
            && (seg.writing || t.last().is_some_and(|p| p.offset + p.len >= seg.bytes))
        {
            return Some(t);
        }
        let Ok(Inspected::Recording(_, _, scan)) = inspect(&file) else { return None };
        let found = parts::from_scan(&scan);
        let mut bytes = parts::header().to_vec();
        for p in &found {
            bytes.extend_from_slice(&parts::encode(p));
        }
        let _ = std::fs::write(table_path(&file), bytes);
        Some(found)
    }

    /// Where playing `path` from wall-clock time `at_us` starts: the segment holding it and the
    /// part with the last keyframe at or before it.
    pub fn keyframe_at(&self, path: &str, at_us: u64) -> Option<(Segment, parts::Part)> {
        let seg = self.index()?.at(path, at_us).ok()??;
        let parts = self.parts(&seg)?;
        let part = *parts::keyframe_at(&parts, at_us.saturating_sub(seg.start_us) as i64)?;
        Some((seg, part))
    }
}

/// Runs the retention rules once: deletes what they say, oldest first, logged and counted.
fn apply_retention(rec: &Recordings) {
    let Some(index) = rec.index() else { return };
    let c = &rec.config;
    let nonzero = |v: u64| (v > 0).then_some(v);
    let limits = |path: &str| {
        let s = rec.paths.get(path);
        retention::Limits {
            max_age_us: nonzero(s.record_max_age_ms.unwrap_or(c.max_age_ms)).map(|ms| ms.saturating_mul(1000)),
            max_bytes: s.record_max_bytes.and_then(nonzero),
        }
    };
    let free = match rec.disk.free_bytes(&c.dir) {
        Ok(f) => Some(f),
        Err(e) => {
            debug!(dir = %c.dir.display(), "recording: free space unknown: {e}");
            None
        }
    };
    let plan = match retention::plan(&index, unix_micros(), limits, nonzero(c.max_bytes), free, c.min_free_bytes) {
        Ok(p) => p,
        Err(e) => {
            warn!("recording retention: {e}");
            return;
        }
    };
    for (seg, reason) in plan {
        if lock(&rec.writing).contains(&(seg.path.clone(), seg.start_us)) {
            continue;
        }
        match rec.remove(&index, &seg) {
            Ok(()) => {
                rec.stats.segments_deleted.fetch_add(1, Ordering::Relaxed);
                rec.stats.deleted[reason as usize].fetch_add(1, Ordering::Relaxed);
                rec.stats.bytes_deleted.fetch_add(seg.bytes, Ordering::Relaxed);
                info!(path = seg.path, file = seg.file, bytes = seg.bytes, ?reason, "recording: deleted by retention");
            }
            Err(e) => warn!(path = seg.path, "recording retention: {e}"),
        }
    }
}

/// What a recording file holds.
enum Inspected {
    /// Its complete length, its media duration (µs), and the scan.
    Recording(u64, u64, Box<fmp4_read::Scan>),
    /// Not a recording: no init segment of ours, or one cut short (a file created just
    /// before a crash).
    NotRecording(String),
}

/// Reads a file's box headers and moofs. An error is a file that could not be read (I/O,
/// permissions): nothing is decided about it.
fn inspect(file: &Path) -> std::io::Result<Inspected> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    let mut scanner = fmp4_read::Scanner::new(len);
    while let Some((at, want)) = scanner.wanted() {
        let mut buf = vec![0; want];
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut buf)?;
        if scanner.handle_input(&buf).is_err() {
            break;
        }
    }
    let scan = match scanner.finish() {
        Ok(s) => s,
        Err(e) => return Ok(Inspected::NotRecording(e.to_string())),
    };
    let timescale = |t: Option<&ferrocast_media::TrackInfo>| t.map_or(1000, |t| t.clock_rate().max(1));
    let (tv, ta) = (timescale(scan.tracks.video.as_ref()), timescale(scan.tracks.audio.as_ref()));
    let end_us = scan
        .parts
        .iter()
        .flat_map(|p| {
            [
                p.end.video.map(|e| ferrocast_media::rescale(e, tv, 1_000_000)),
                p.end.audio.map(|e| ferrocast_media::rescale(e, ta, 1_000_000)),
            ]
        })
        .flatten()
        .max()
        .unwrap_or(0);
    Ok(Inspected::Recording(scan.good_len, end_us.max(0) as u64, Box::new(scan)))
}

/// Cuts a recording back to its complete parts and writes its table; the segment as it now
/// is.
fn settle_file(
    mut seg: Segment,
    file: &Path,
    good: u64,
    duration: u64,
    scan: &fmp4_read::Scan,
    disk: &Disk,
) -> Segment {
    let len = std::fs::metadata(file).map_or(good, |m| m.len());
    if len > good {
        match disk.truncate(file, good) {
            Ok(()) => info!(
                file = seg.file,
                cut = len - good,
                "recording: cut a file back to its last complete part (left by a crash, or damaged)"
            ),
            Err(e) => warn!(file = seg.file, "recording: cannot cut a damaged tail: {e}"),
        }
    }
    seg.bytes = good;
    seg.duration_us = duration;
    seg.writing = false;
    let mut table = parts::header().to_vec();
    for p in parts::from_scan(scan) {
        table.extend_from_slice(&parts::encode(&p));
    }
    let _ = std::fs::write(table_path(file), table);
    seg
}

/// After a crash: the files the index says were being written are cut back to their last
/// complete part and their sizes and durations set from what they hold. One that holds no
/// complete part (created just before the crash) is removed; one that cannot be read is left
/// as it is, logged.
pub fn recover(index: &Index, dir: &Path, disk: &Disk) {
    let Ok(open) = index.writing() else { return };
    for seg in open {
        let file = dir.join(&seg.file);
        match inspect(&file) {
            Ok(Inspected::Recording(good, duration, scan)) if duration > 0 => {
                let seg = settle_file(seg, &file, good, duration, &scan, disk);
                let _ = index.put(&seg);
            }
            Ok(_) => {
                debug!(file = seg.file, "recording: a file left by a crash before its first part; removed");
                let _ = disk.remove(&file);
                let _ = disk.remove(&table_path(&file));
                let _ = index.remove(&seg.path, seg.start_us);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = index.remove(&seg.path, seg.start_us);
            }
            Err(e) => {
                warn!(file = seg.file, "recording: cannot read a file left by a crash ({e}); left as it is");
                let _ = index.put(&Segment { writing: false, ..seg });
            }
        }
    }
}

/// Rebuilds the index from the files under `dir`: every `PATH/STEM.mp4` that is a recording
/// (with at least one complete part), cut back to its complete parts. Nothing is deleted.
pub fn rebuild(index: &Index, dir: &Path, disk: &Disk) {
    let mut found = Vec::new();
    let mut skipped = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                stack.push(p);
                continue;
            }
            let (Some(stem), Some("mp4")) =
                (p.file_stem().and_then(|s| s.to_str()), p.extension().and_then(|s| s.to_str()))
            else {
                continue;
            };
            let (Ok(start), Ok(rel)) = (crate::utc::parse(stem), p.strip_prefix(dir)) else { continue };
            let Some(rel) = rel.to_str().map(str::to_owned) else { continue };
            let Some(path) = rel.rsplit_once('/').map(|(p, _)| p.to_owned()) else { continue };
            if crate::path::validate(&path).is_err() {
                continue;
            }
            let seg = Segment { path, start_us: start, duration_us: 0, bytes: 0, file: rel, writing: false };
            match inspect(&p) {
                Ok(Inspected::Recording(good, duration, scan)) if duration > 0 => {
                    found.push(settle_file(seg, &p, good, duration, &scan, disk));
                }
                Ok(Inspected::Recording(..)) => skipped += 1,
                Ok(Inspected::NotRecording(why)) => {
                    debug!(file = seg.file, "recording: not indexed: {why}");
                    skipped += 1;
                }
                Err(e) => {
                    warn!(file = seg.file, "recording: not indexed, cannot read it: {e}");
                    skipped += 1;
                }
            }
        }
    }
    info!(dir = %dir.display(), files = found.len(), skipped, "recording: index rebuilt from the files");
    let _ = index.put_many(&found);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferrocast_media::{Frame, TrackInfo, TrackKind, VideoCodec};

    pub(crate) fn recordings(dir: &Path) -> Arc<Recordings> {
        Recordings::new(
            RecordConfig { dir: dir.to_owned(), ..RecordConfig::default() },
            crate::paths::PathTable::default(),
            Disk::default(),
        )
    }

    /// A file written step by step (1 s parts, a keyframe every 2 s), then looked up by
    /// time: from its table, and from a scan of the file once the table is gone.
    #[test]
    fn written_files_are_found_by_keyframe() {
        let dir = std::env::temp_dir().join(format!("fc-rec-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rec = recordings(&dir);
        let sps = Bytes::from_static(&[
            0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00,
            0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60,
        ]);
        let pps = Bytes::from_static(&[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0]);
        let tracks = Arc::new(Tracks {
            video: Some(TrackInfo::Video {
                codec: VideoCodec::H264,
                config: ferrocast_media::h264::build_avcc(&[sps], &[pps]).unwrap(),
                clock_rate: 1000,
            }),
            ..Tracks::default()
        });
        let signals = Signals::default();
        let mut w = Writer { rec: rec.clone(), path: "cams/a".into(), file: None, failing: false };
        let start = 1_800_000_000_000_000;
        w.apply(
            Step::Open { tracks, base: TrackTimes { video: Some(0), audio: None }, start_unix_us: start },
            &signals,
        );
        for part in 0..6u32 {
            let frames: Vec<Arc<Frame>> = (0..25)
                .map(|i| {
                    let t = i64::from(part) * 1000 + i * 40;
                    Frame::new(TrackKind::Video, t, t, t % 2000 == 0, Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]))
                })
                .collect();
            w.apply(
                Step::Part {
                    sequence: part + 1,
                    frames,
                    next: TrackTimes::default(),
                    file_duration_us: u64::from(part + 1) * 1_000_000,
                },
                &signals,
            );
        }
        w.apply(Step::Close, &signals);
        let (seg, part) = rec.keyframe_at("cams/a", start + 3_500_000).expect("found");
        assert_eq!((seg.start_us, seg.duration_us, seg.writing), (start, 6_000_000, false));
        assert_eq!(part.keyframe_us, Some(2_000_000), "the keyframe at 2 s starts play at 3.5 s");
        let table = table_path(&rec.file(&seg.file));
        let written = std::fs::read(&table).unwrap();
        std::fs::remove_file(&table).unwrap();
        assert_eq!(rec.keyframe_at("cams/a", start + 5_999_000).map(|p| p.1.keyframe_us), Some(Some(4_000_000)));
        assert_eq!(std::fs::read(&table).unwrap(), written, "the table is rebuilt from the file as it was written");
        assert!(rec.keyframe_at("cams/a", start + 7_000_000).is_none(), "after the recording");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
