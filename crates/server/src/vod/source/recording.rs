//! Recordings read part by part from the per-file part tables, across files and gaps, and
//! through parts written meanwhile.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ferrocast_media::fmp4_read::{self, Layout, MAX_MOOF_SIZE};
use ferrocast_media::{Frame, TrackKind, Tracks};

use super::cache::{Cached, cached, key_of};
use super::file::us;
use super::{
    Got, Inner, MAX_INIT_BYTES, MAX_PART_BYTES, SEGMENT_PAGE, Source, SourceError, Span, Timed, io, malformed, read_at,
    read_exact_at,
};
use crate::record::Recordings;
use crate::record::index::{Index, Segment};
use crate::record::parts::{self, Part};

/// What playback needs of one recording file: its tracks and layout, and its parts.
pub(super) struct RecFile {
    tracks: Arc<Tracks>,
    layout: Layout,
    parts: Vec<Part>,
}

impl RecFile {
    pub(super) fn memory(&self) -> usize {
        self.parts.capacity() * std::mem::size_of::<Part>() + 4096
    }
}

/// The init segment of a recording: its tracks and layout, read by the scanner from the
/// boxes up to the end of the moov only.
pub(super) fn read_init(file: &mut File, path: &Path) -> Result<(Tracks, Layout), SourceError> {
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

pub(super) struct RecSource {
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
    pub(super) fn index(&self) -> Result<Arc<Index>, SourceError> {
        self.rec.index_now().ok_or(SourceError::NotFound)
    }

    pub(super) fn open(rec: Arc<Recordings>, path: &str, from: i64, to: Option<i64>) -> Result<Source, SourceError> {
        let index = rec.index_now().ok_or(SourceError::NotFound)?;
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

    pub(super) fn end_us(&self) -> Option<i64> {
        let recorded = self.last.end_us() as i64;
        match self.to {
            Some(to) if self.last.writing => Some(to),
            Some(to) => Some(to.min(recorded)),
            None if self.last.writing => None,
            None => Some(recorded),
        }
    }

    /// The segment's table and tracks, shared when the file is closed.
    pub(super) fn rec_file(&self, seg: &Segment) -> Result<(File, PathBuf, Arc<RecFile>), SourceError> {
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
    pub(super) fn file(&mut self, i: usize) -> Result<Arc<RecFile>, SourceError> {
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

    pub(super) fn seek(&mut self, at: i64) -> Result<Option<i64>, SourceError> {
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
    pub(super) fn more_segments(&mut self) -> Result<bool, SourceError> {
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
    pub(super) fn refresh(&self, seg: &Segment) -> Result<Option<Segment>, SourceError> {
        let index = self.index()?;
        let now = index
            .list_at_most(&self.path, Some(seg.start_us), Some(seg.start_us + 1), 4)
            .map_err(|e| SourceError::Index(e.to_string()))?;
        Ok(now.into_iter().find(|s| s.start_us == seg.start_us))
    }

    pub(super) fn next(&mut self) -> Result<Option<Got>, SourceError> {
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

    pub(super) fn read_part(&mut self, seg: &Segment, info: &RecFile, part: &Part) -> Result<Vec<Timed>, SourceError> {
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

    pub(super) fn keyframes(&mut self, from: i64, to: i64, max: usize) -> Result<Vec<i64>, SourceError> {
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

    pub(super) fn keyframe(&mut self, at: i64) -> Result<Option<Timed>, SourceError> {
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

    pub(super) fn spans(&mut self, max: usize) -> Result<Vec<Span>, SourceError> {
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
