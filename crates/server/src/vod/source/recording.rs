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
    Got, Inner, MAX_INIT_BYTES, MAX_PART_BYTES, SEGMENT_PAGE, Source, SourceError, Span, Timed, clock_of, io,
    malformed, read_at, read_exact_at,
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
/// boxes up to the end of the moov only (at most [`MAX_INIT_BYTES`]). What RTSP, HLS and the
/// progressive MP4 read of a recording file first.
pub(crate) fn read_init(file: &File, path: &Path) -> Result<(Tracks, Layout), SourceError> {
    let len = file.metadata().map_err(io(path))?.len();
    let mut at = 0u64;
    let mut init_end = None;
    for _ in 0..MAX_INIT_BOXES {
        let head = read_at(file, at, 16).map_err(io(path))?;
        let Ok(Some((kind, _, size))) = fmp4_read::box_header(&head, at) else { break };
        at = at.saturating_add(size);
        if &kind == b"moov" {
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

/// Most boxes before a recording's moov (ftyp, free, ...): each costs a read.
const MAX_INIT_BOXES: usize = 16;

/// One fragment of a recording at `at` (a moof and the mdat after it, inside the first
/// `limit` bytes of the file): the moof's samples (offsets from the moof) and where the
/// fragment's sample data may lie (offsets from the moof: after the mdat's header, to its
/// end). Reads the moof only (at most [`MAX_MOOF_SIZE`]) and the mdat's header.
pub(crate) fn read_fragment(
    file: &File,
    path: &Path,
    at: u64,
    limit: u64,
    layout: &Layout,
) -> Result<(Vec<fmp4_read::SampleInfo>, u64, u64), SourceError> {
    let box_at = |pos: u64| -> Result<([u8; 4], u64, u64), SourceError> {
        let head = read_at(file, pos, 16).map_err(io(path))?;
        let h = fmp4_read::box_header(&head, pos).map_err(|e| malformed(path, e))?;
        h.filter(|(_, _, size)| pos.checked_add(*size).is_some_and(|e| e <= limit))
            .ok_or_else(|| malformed(path, format!("a box at {pos} cut short or past its part")))
    };
    let (kind, _, moof_len) = box_at(at)?;
    if &kind != b"moof" {
        return Err(malformed(path, format!("no moof at {at}")));
    }
    if moof_len > MAX_MOOF_SIZE {
        return Err(malformed(path, format!("moof at {at} over {MAX_MOOF_SIZE} bytes")));
    }
    let moof = read_exact_at(file, path, at, moof_len)?;
    let samples = fmp4_read::part_samples(layout, &moof).map_err(|e| malformed(path, format!("moof at {at}: {e}")))?;
    let (kind, header, mdat_len) = box_at(at + moof_len)?;
    if &kind != b"mdat" {
        return Err(malformed(path, format!("no mdat after the moof at {at}")));
    }
    Ok((samples, moof_len + header, moof_len + mdat_len))
}

/// Where playing from `rel_us` (µs from a recording file's start) starts in the file: the
/// index of the part and the start (µs from the file's start). One rule for RTSP, HLS and
/// the progressive MP4: with video, the part whose first keyframe is the last one at or
/// before the time (the first keyframe when the time is before all), from that keyframe;
/// None when the file has no keyframe (playback starts in a later file). Audio only: the
/// part holding the time (the first part when before all), from the time.
pub(crate) fn start_in(parts: &[Part], rel_us: i64, video: bool) -> Option<(usize, i64)> {
    if video {
        let p = parts::keyframe_at(parts, rel_us)?;
        let i = parts.iter().position(|q| q == p)?;
        return Some((i, p.keyframe_us?));
    }
    let i = parts.partition_point(|p| p.start_us <= rel_us).saturating_sub(1);
    let p = parts.get(i)?;
    Some((i, rel_us.max(p.start_us)))
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
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SourceError::Gone),
            Err(e) => return Err(SourceError::Io { path, error: e }),
        };
        let build = |file: &File| -> Result<(Cached, usize), SourceError> {
            let (tracks, layout) = read_init(file, &path)?;
            let parts = self.rec.parts(seg).ok_or_else(|| {
                if path.exists() { malformed(&path, "no parts can be read") } else { SourceError::Gone }
            })?;
            let f = RecFile { tracks: Arc::new(tracks), layout, parts };
            let bytes = f.memory();
            Ok((Cached::Recording(Arc::new(f)), bytes))
        };
        let value = if seg.writing {
            build(&file)?.0
        } else {
            let meta = file.metadata().map_err(io(&path))?;
            cached(key_of(&path, &meta), || build(&file))?
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
        // The first file of the listed ones with a place to start (see `start_in`).
        for i in 0..self.segs.len() {
            self.cur = None;
            self.pos = (usize::MAX, 0);
            let info = self.file(i)?;
            let seg_start = self.segs[i].start_us as i64;
            let Some((part, rel)) = start_in(&info.parts, at - seg_start, info.layout.video.is_some()) else {
                continue;
            };
            self.pos = (i, part);
            return Ok(Some(seg_start + rel));
        }
        Ok(None)
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
        Ok(frames
            .into_iter()
            .map(|f| {
                let c = clock_of(&info.tracks, f.kind);
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
        let (file, path, info) = self.rec_file(&seg)?;
        let rel = at - seg.start_us as i64;
        let Some(part) = info.parts.iter().find(|p| p.keyframe_us == Some(rel)) else { return Ok(None) };
        // The moof alone, then the keyframe's bytes.
        let limit = part.offset.saturating_add(part.len);
        let (samples, data_from, data_to) = read_fragment(&file, &path, part.offset, limit, &info.layout)?;
        let Some(s) = samples.iter().find(|s| s.kind == TrackKind::Video && s.keyframe) else { return Ok(None) };
        if s.offset < data_from || s.offset.saturating_add(u64::from(s.size)) > data_to {
            return Err(malformed(&path, "a sample outside its part"));
        }
        let data = read_exact_at(&file, &path, part.offset + s.offset, u64::from(s.size))?;
        let clock = clock_of(&info.tracks, TrackKind::Video);
        let base = seg.start_us as i64;
        let frame = Frame::new(TrackKind::Video, s.dts, s.dts + s.cts, true, Bytes::from(data));
        Ok(Some(Timed { dts_us: base + us(s.dts, clock), pts_us: base + us(s.dts + s.cts, clock), frame }))
    }

    pub(super) fn spans(&mut self, max: usize) -> Result<Vec<Span>, SourceError> {
        let index = self.index()?;
        let mut out = Vec::new();
        let mut from = self.from.max(0) as u64;
        let mut after: Option<u64> = None;
        // The index lists SEGMENT_PAGE segments at once: page on until `max` spans.
        while out.len() < max {
            let page = index
                .list_at_most(&self.path, Some(from), self.to.map(|t| t as u64), SEGMENT_PAGE)
                .map_err(|e| SourceError::Index(e.to_string()))?;
            // (The index may drop the first row it counted: one that ends before `from`.)
            let full = page.len() + 1 >= SEGMENT_PAGE;
            let mut last = None;
            for seg in page {
                if after.is_some_and(|a| seg.start_us <= a) {
                    continue;
                }
                last = Some(seg.start_us);
                if out.len() >= max {
                    break;
                }
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
                    let bytes = info
                        .parts
                        .iter()
                        .filter(|p| base + p.end_us > start && base + p.start_us < end)
                        .map(|p| p.len)
                        .sum();
                    out.push(Span { start_us: start, end_us: end, tracks: info.tracks.clone(), bytes });
                }
            }
            match last {
                Some(l) if full => {
                    after = Some(l);
                    from = l.saturating_add(1);
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(i: i64, key: bool) -> Part {
        Part {
            offset: 1000 + i as u64 * 500,
            len: 500,
            start_us: i * 1_000_000,
            end_us: (i + 1) * 1_000_000,
            keyframe_us: key.then_some(i * 1_000_000 + 20),
        }
    }

    /// The one rule RTSP, HLS and the progressive MP4 start by (they differed for a file
    /// without keyframes: RTSP started at its audio, HTTP skipped it).
    #[test]
    fn where_playback_starts_in_a_file() {
        let parts = [part(0, true), part(1, false), part(2, true), part(3, false)];
        // Video: the part of the keyframe at or before, from the keyframe.
        assert_eq!(start_in(&parts, 1_500_000, true), Some((0, 20)));
        assert_eq!(start_in(&parts, 2_000_020, true), Some((2, 2_000_020)));
        assert_eq!(start_in(&parts, 3_900_000, true), Some((2, 2_000_020)));
        assert_eq!(start_in(&parts, -5, true), Some((0, 20)), "before all: the first keyframe");
        // A file with video and no keyframe has no place to start: playback starts later.
        let blind = [part(0, false), part(1, false)];
        assert_eq!(start_in(&blind, 500_000, true), None);
        // Audio only: the part holding the time, from the time.
        assert_eq!(start_in(&blind, 1_500_000, false), Some((1, 1_500_000)));
        assert_eq!(start_in(&blind, -5, false), Some((0, 0)));
        assert_eq!(start_in(&[], 0, false), None);
    }
}
