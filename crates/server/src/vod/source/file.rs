//! An MP4 file read by its sample tables: about a second a batch, samples close together in
//! the file read with one read.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ferrocast_media::mp4_index::{Movie, OpenError, Sample, SampleTable};
use ferrocast_media::{Frame, TrackKind, Tracks, rescale};

use super::cache::{Cached, cached, key_of};
use super::{
    BATCH_US, Got, Inner, MAX_BATCH_BYTES, MAX_BATCH_GAP_BYTES, MAX_BATCH_SAMPLES, READ_GAP, Source, SourceError,
    Timed, io, malformed, read_at, read_exact_at,
};

pub(super) struct FileSource {
    path: PathBuf,
    file: File,
    movie: Arc<Movie>,
    pub(super) tracks: Arc<Tracks>,
    pub(super) end_us: i64,
    /// Next sample of each track (video, audio).
    next: [usize; 2],
}

pub(super) fn us(t: i64, timescale: u32) -> i64 {
    rescale(t, timescale, 1_000_000)
}

/// µs as a track's time, rounded down: the sample "at or before" a time is never after it.
/// Saturates (a client's seek to a far time never wraps).
pub(super) fn ticks_floor(t_us: i64, timescale: u32) -> i64 {
    let t = (i128::from(t_us) * i128::from(timescale)).div_euclid(1_000_000);
    t.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// A file opened with its tracks and sample tables (from the shared cache).
pub(crate) fn movie(path: &Path) -> Result<(File, Arc<Movie>), SourceError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SourceError::NotFound,
        _ => SourceError::Io { path: path.to_owned(), error: e },
    })?;
    let meta = file.metadata().map_err(io(path))?;
    let len = meta.len();
    let movie = match cached(key_of(path, &meta), || {
        let movie = Movie::open(len, |at, n| read_at(&file, at, n)).map_err(|e| match e {
            OpenError::Read(e) => io(path)(e),
            OpenError::Format(e) => malformed(path, e),
        })?;
        let bytes = movie.memory();
        Ok((Cached::Movie(Arc::new(movie)), bytes))
    })? {
        Cached::Movie(m) => m,
        Cached::Recording(_) => return Err(malformed(path, "not an MP4 file")),
    };
    Ok((file, movie))
}

impl FileSource {
    pub(super) fn open(path: &Path) -> Result<Source, SourceError> {
        let (file, movie) = movie(path)?;
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

    /// Bytes of all its samples.
    pub(super) fn bytes(&self) -> u64 {
        [&self.movie.video, &self.movie.audio]
            .into_iter()
            .flatten()
            .flat_map(|t| t.samples())
            .map(|s| u64::from(s.size()))
            .sum()
    }

    pub(super) fn table(&self, k: usize) -> Option<&SampleTable> {
        if k == 0 { self.movie.video.as_ref() } else { self.movie.audio.as_ref() }
    }

    pub(super) fn seek(&mut self, at: i64) -> Option<i64> {
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
    pub(super) fn peek(&self) -> Option<(usize, usize, i64)> {
        (0..2)
            .filter_map(|k| {
                let t = self.table(k)?;
                let s = t.samples().get(self.next[k])?;
                Some((k, self.next[k], us(s.dts, t.timescale)))
            })
            .min_by_key(|x| (x.2, x.0))
    }

    pub(super) fn next(&mut self) -> Result<Option<Got>, SourceError> {
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
                && (t.saturating_sub(first) >= BATCH_US
                    || picked.len() >= MAX_BATCH_SAMPLES
                    || bytes + size > MAX_BATCH_BYTES)
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
        let sorted: Vec<(u64, u32)> = order.iter().map(|&j| (samples[j].1.offset, samples[j].1.size())).collect();
        for (start, end, range) in plan_reads(&sorted) {
            let buf = Bytes::from(read_exact_at(&self.file, &self.path, start, end - start)?);
            for &j in &order[range] {
                let s = samples[j].1;
                let at = (s.offset - start) as usize;
                data[j] = buf.slice(at..at + s.size() as usize);
            }
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

    pub(super) fn keyframes(&self, from: i64, to: i64, max: usize) -> Vec<i64> {
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

    pub(super) fn keyframe(&mut self, at: i64) -> Result<Option<Timed>, SourceError> {
        let Some(v) = &self.movie.video else { return Ok(None) };
        let i = v.first_at_or_after(ticks_floor(at, v.timescale));
        let Some(s) = v.samples().get(i).copied().filter(|s| s.keyframe()) else { return Ok(None) };
        let ts = v.timescale;
        let data = read_exact_at(&self.file, &self.path, s.offset, u64::from(s.size()))?;
        let frame = Frame::new(TrackKind::Video, s.dts, s.pts(), true, Bytes::from(data));
        Ok(Some(Timed { dts_us: us(s.dts, ts), pts_us: us(s.pts(), ts), frame }))
    }
}

/// The reads of a batch whose samples are `sorted` (offset, size) by offset: (start, end,
/// the samples it covers). Samples closer than [`READ_GAP`] are read together, as long as
/// the bytes between them, over the whole batch, stay under [`MAX_BATCH_GAP_BYTES`] and one
/// read under [`MAX_BATCH_BYTES`]: a batch reads at most its samples' bytes and that much
/// more, however sparse the file.
pub(super) fn plan_reads(sorted: &[(u64, u32)]) -> Vec<(u64, u64, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut gaps = 0u64;
    let mut g = 0;
    while let Some(&(start, size)) = sorted.get(g) {
        let mut end = start.saturating_add(u64::from(size));
        let mut h = g + 1;
        while let Some(&(at, size)) = sorted.get(h) {
            let e = at.saturating_add(u64::from(size));
            let gap = at.saturating_sub(end);
            if gap > READ_GAP || gaps + gap > MAX_BATCH_GAP_BYTES || e.saturating_sub(start) > MAX_BATCH_BYTES {
                break;
            }
            gaps += gap;
            end = end.max(e);
            h += 1;
        }
        out.push((start, end, g..h));
        g = h;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vod::source::MAX_BATCH_SAMPLES;

    /// A sparse file (finding: gaps of up to 64 KiB merged for 4096 samples read 256 MiB for
    /// 4 MiB of samples): a batch reads its samples and at most MAX_BATCH_GAP_BYTES more.
    #[test]
    fn a_sparse_batch_reads_a_bounded_number_of_bytes() {
        let sorted: Vec<(u64, u32)> = (0..MAX_BATCH_SAMPLES as u64).map(|i| (i * (READ_GAP + 1024), 1024)).collect();
        let reads = plan_reads(&sorted);
        let read: u64 = reads.iter().map(|(a, b, _)| b - a).sum();
        let samples: u64 = sorted.iter().map(|s| u64::from(s.1)).sum();
        assert!(read <= samples + MAX_BATCH_GAP_BYTES, "{read} bytes read for {samples}");
        // 4 MiB of samples 64 KiB apart: 260 MiB read without the bound.
        assert!(read <= 8 << 20, "{read} bytes read for {samples}");
        // Every sample is in exactly one read, inside it.
        let mut next = 0;
        for (a, b, r) in &reads {
            assert_eq!(r.start, next);
            next = r.end;
            for &(at, size) in &sorted[r.clone()] {
                assert!(at >= *a && at + u64::from(size) <= *b);
            }
        }
        assert_eq!(next, sorted.len());
        // Interleaved samples close together are still read at once.
        let dense: Vec<(u64, u32)> = (0..100u64).map(|i| (i * 1100, 1000)).collect();
        assert_eq!(plan_reads(&dense).len(), 1);
    }
}
