//! MP4 files by index (ISO/IEC 14496-12): the tracks and, per track, a compact sample table
//! (decode time, composition offset, sync flag, file offset and size of every sample), read
//! from the `moov` (progressive files, moov before or after the mdat) or from the moov and
//! the `moof`s (fragmented files, as ffmpeg writes them with `frag_keyframe+empty_moov` and
//! as ferrocast records), without reading media data. Samples are then read by offset, by
//! the caller ([`Movie::open`] asks for the bytes it needs, as [`crate::fmp4_read::Scanner`]
//! does): one table serves any number of readers at independent positions.
//!
//! H.264, H.265 and AAC tracks (and what [`crate::fmp4_read`] knows) are read, the first of
//! each kind; others are skipped. Edit lists are not applied: times are the tracks' decode
//! times from 0. Every size, count and offset from the file is checked against the file and
//! against a named limit before it is used: a damaged or hostile file gives an error, never a
//! panic or an allocation it does not pay for with its own bytes.

use thiserror::Error;

use crate::fmp4_read::boxes::{be32, be64, box_header, child, children, need};
use crate::fmp4_read::init::parse_trak;
use crate::fmp4_read::{self, ReadError, malformed};
use crate::{TrackInfo, TrackKind, Tracks};

/// Largest `moov` read: a two-hour movie's sample tables are a few MiB; 64 MiB is a day of
/// video and audio with room to spare, and bounds what one file can make us read at once.
pub const MAX_MOOV_SIZE: u64 = 64 << 20;

/// Most samples of one track: 24 h of 48 kHz AAC (1024 samples a frame) is 4.05 million; a
/// table of this many samples takes 96 MiB ([`SAMPLE_BYTES`] each).
pub const MAX_TRACK_SAMPLES: usize = 1 << 22;

/// Bytes of file each sample needs at least: a table of N samples is only built from a file
/// of 4N bytes (what a progressive file's `stsz` entries cost; no real media comes close: an
/// AAC frame is over 100 bytes). Bounds a table's memory to 6 times the file's length, even
/// for fragments whose samples take their sizes from defaults.
pub const MIN_FILE_BYTES_PER_SAMPLE: u64 = 4;

/// Most top-level boxes walked before the moov of a progressive file: they have a handful
/// (ftyp, free, mdat, moov, udta); each costs a read.
pub const MAX_TOP_LEVEL_BOXES: usize = 1024;

/// Largest sample: what a frame may be anywhere in ferrocast.
pub const MAX_SAMPLE_SIZE: u32 = crate::check::MAX_FRAME_SIZE as u32;

/// Bytes a sample takes in a [`SampleTable`].
pub const SAMPLE_BYTES: usize = std::mem::size_of::<Sample>();
const _: () = assert!(SAMPLE_BYTES == 24);

/// Why a file could not be indexed.
#[derive(Debug, Error)]
pub enum OpenError<E> {
    /// Reading the file failed.
    #[error("reading: {0}")]
    Read(E),
    /// The file is not an MP4 file this reader follows.
    #[error(transparent)]
    Format(#[from] ReadError),
}

/// One sample: 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Offset of its data in the file.
    pub offset: u64,
    /// Decode time in the track's timescale, from the track's start.
    pub dts: i64,
    /// Composition offset (`pts - dts`).
    pub cts: i32,
    /// Size in the low 31 bits, sync sample in the top bit.
    size_key: u32,
}

const KEY_BIT: u32 = 1 << 31;

impl Sample {
    fn new(offset: u64, dts: i64, cts: i32, size: u32, keyframe: bool) -> Sample {
        Sample { offset, dts, cts, size_key: size | if keyframe { KEY_BIT } else { 0 } }
    }

    /// Bytes of data.
    pub fn size(&self) -> u32 {
        self.size_key & !KEY_BIT
    }

    /// A sync sample (every audio sample is one).
    pub fn keyframe(&self) -> bool {
        self.size_key & KEY_BIT != 0
    }

    /// Presentation time.
    pub fn pts(&self) -> i64 {
        self.dts.saturating_add(i64::from(self.cts))
    }
}

/// The samples of one track, in decode order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleTable {
    /// The track's timescale: sample times are in it.
    pub timescale: u32,
    samples: Vec<Sample>,
    /// When the last sample ends.
    end: i64,
}

impl SampleTable {
    /// The samples.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Decode time at which the last sample ends (its time plus its duration).
    pub fn end(&self) -> i64 {
        self.end
    }

    /// How long sample `i` lasts.
    pub fn duration(&self, i: usize) -> i64 {
        let next = self.samples.get(i + 1).map_or(self.end, |s| s.dts);
        self.samples.get(i).map_or(0, |s| next.saturating_sub(s.dts).max(0))
    }

    /// The index of the first sample whose decode time is at or after `dts`.
    pub fn first_at_or_after(&self, dts: i64) -> usize {
        self.samples.partition_point(|s| s.dts < dts)
    }

    /// The last sync sample at or before `dts` (the first sync sample when `dts` is before
    /// all); None without sync samples.
    pub fn sync_at_or_before(&self, dts: i64) -> Option<usize> {
        let upto = self.samples.partition_point(|s| s.dts <= dts);
        self.samples[..upto]
            .iter()
            .rposition(Sample::keyframe)
            .or_else(|| self.samples.iter().position(Sample::keyframe))
    }

    /// Bytes this table holds in memory.
    pub fn memory(&self) -> usize {
        self.samples.capacity() * SAMPLE_BYTES + std::mem::size_of::<SampleTable>()
    }
}

/// A file's tracks and sample tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movie {
    /// Codec parameters; each track's `clock_rate` is its timescale.
    pub tracks: Tracks,
    /// The video track's samples.
    pub video: Option<SampleTable>,
    /// The audio track's samples.
    pub audio: Option<SampleTable>,
    /// Read from movie fragments.
    pub fragmented: bool,
}

impl Movie {
    /// The table of one kind.
    pub fn table(&self, kind: TrackKind) -> Option<&SampleTable> {
        match kind {
            TrackKind::Video => self.video.as_ref(),
            TrackKind::Audio => self.audio.as_ref(),
        }
    }

    /// Bytes the tables hold in memory.
    pub fn memory(&self) -> usize {
        [&self.video, &self.audio].into_iter().flatten().map(SampleTable::memory).sum::<usize>() + 1024
    }

    /// Indexes a file of `file_len` bytes; `read_at(offset, len)` gives `len` bytes at
    /// `offset` (fewer only at the end of the file) and is only asked for box headers, the
    /// moov and (fragmented files) the moofs, never for media data.
    pub fn open<E>(
        file_len: u64,
        mut read_at: impl FnMut(u64, usize) -> Result<Vec<u8>, E>,
    ) -> Result<Movie, OpenError<E>> {
        let mut at = 0u64;
        for _ in 0..MAX_TOP_LEVEL_BOXES {
            if at >= file_len {
                break;
            }
            let head = read_at(at, file_len.saturating_sub(at).min(16) as usize).map_err(OpenError::Read)?;
            let (kind, header, size) = match be32(&head, 0) {
                // Size 0: the last box, to the end of the file (an mdat, from some writers).
                Some(0) => {
                    let kind = head.get(4..8).ok_or(malformed(at, "box header cut short"))?;
                    ([kind[0], kind[1], kind[2], kind[3]], 8, file_len - at)
                }
                _ => box_header(&head, at)?.ok_or(malformed(at, "box header cut short"))?,
            };
            if size > file_len - at {
                return Err(malformed(at, "box past the end of the file (cut short?)").into());
            }
            match &kind {
                b"moov" => {
                    let body = size - header;
                    if body > MAX_MOOV_SIZE {
                        let e = ReadError::TooLarge { what: "moov", offset: at, len: body, max: MAX_MOOV_SIZE };
                        return Err(e.into());
                    }
                    let moov = read_at(at + header, body as usize).map_err(OpenError::Read)?;
                    if (moov.len() as u64) < body {
                        return Err(malformed(at, "moov cut short").into());
                    }
                    if child(&moov, at + header, b"mvex")?.is_some() {
                        return fragmented(file_len, read_at);
                    }
                    return progressive(&moov, at + header, file_len);
                }
                b"moof" => return Err(malformed(at, "a moof before the moov").into()),
                _ => at += size,
            }
        }
        Err(malformed(at, "no moov box").into())
    }
}

fn progressive<E>(moov: &[u8], origin: u64, file_len: u64) -> Result<Movie, OpenError<E>> {
    let mut movie = Movie { tracks: Tracks::default(), video: None, audio: None, fragmented: false };
    for c in children(moov, origin) {
        let (kind, trak, at) = c?;
        if &kind != b"trak" {
            continue;
        }
        let Some((_, timescale, info)) = parse_trak(trak, at)? else { continue };
        let (slot, table) = match info.kind() {
            TrackKind::Video => (&mut movie.tracks.video, &mut movie.video),
            TrackKind::Audio => (&mut movie.tracks.audio, &mut movie.audio),
        };
        if slot.is_some() {
            continue;
        }
        let (mdia, mdia_at) = need(trak, at, b"mdia", "trak without mdia")?;
        let (minf, minf_at) = need(mdia, mdia_at, b"minf", "mdia without minf")?;
        let (stbl, stbl_at) = need(minf, minf_at, b"stbl", "minf without stbl")?;
        *table = Some(sample_table(stbl, stbl_at, timescale, info.kind(), file_len)?);
        *slot = Some(info);
    }
    if movie.tracks.video.is_none() && movie.tracks.audio.is_none() {
        return Err(ReadError::Unsupported { offset: origin, what: "no track of a codec ferrocast carries" }.into());
    }
    Ok(movie)
}

/// A full box's table: the entry count after `skip` bytes (version, flags, fields) and the
/// entries of `size` bytes each, checked to be in the box.
fn entries(body: &[u8], at: u64, skip: usize, size: usize) -> Result<(usize, &[u8]), ReadError> {
    let short = malformed(at, "sample table shorter than its entry count says");
    let count = be32(body, skip).ok_or(short.clone())? as usize;
    let rest = body.get(skip + 4..).ok_or(short.clone())?;
    if rest.len() / size < count {
        return Err(short);
    }
    Ok((count, &rest[..count * size]))
}

fn pairs(e: &[u8]) -> impl Iterator<Item = (u32, u32)> + '_ {
    e.chunks_exact(8).map(|c| (be32(c, 0).unwrap_or(0), be32(c, 4).unwrap_or(0)))
}

/// A track's samples from its sample table boxes (ISO/IEC 14496-12 8.6.1-8.7.5).
fn sample_table(
    stbl: &[u8],
    origin: u64,
    timescale: u32,
    kind: TrackKind,
    file_len: u64,
) -> Result<SampleTable, ReadError> {
    if child(stbl, origin, b"stz2")?.is_some() {
        return Err(ReadError::Unsupported { offset: origin, what: "compact sample sizes (stz2)" });
    }
    let (stsz, stsz_at) = need(stbl, origin, b"stsz", "stbl without stsz")?;
    let fixed = be32(stsz, 4).ok_or(malformed(stsz_at, "stsz shorter than its fields"))?;
    let (count, sizes) = if fixed == 0 {
        entries(stsz, stsz_at, 8, 4)?
    } else {
        let count = be32(stsz, 8).ok_or(malformed(stsz_at, "stsz shorter than its fields"))? as usize;
        // Every sample's bytes are in the file.
        if count as u64 > file_len / u64::from(fixed) {
            return Err(malformed(stsz_at, "more samples than the file has bytes for"));
        }
        (count, &[][..])
    };
    if count > MAX_TRACK_SAMPLES {
        let max = MAX_TRACK_SAMPLES as u64;
        return Err(ReadError::TooLarge { what: "samples in a track", offset: stsz_at, len: count as u64, max });
    }
    if count as u64 > file_len / MIN_FILE_BYTES_PER_SAMPLE {
        return Err(malformed(stsz_at, "more samples than the file has bytes for"));
    }
    let (stts, stts_at) = need(stbl, origin, b"stts", "stbl without stts")?;
    let (_, stts) = entries(stts, stts_at, 4, 8)?;
    let ctts = match child(stbl, origin, b"ctts")? {
        Some((c, at)) => Some(entries(c, at, 4, 8)?.1),
        None => None,
    };
    let stss = match child(stbl, origin, b"stss")? {
        Some((s, at)) => Some(entries(s, at, 4, 4)?.1),
        None => None,
    };
    let (stsc, stsc_at) = need(stbl, origin, b"stsc", "stbl without stsc")?;
    let (_, stsc) = entries(stsc, stsc_at, 4, 12)?;
    let (chunks, wide) = match child(stbl, origin, b"stco")? {
        Some((c, at)) => (entries(c, at, 4, 4)?.1, false),
        None => {
            let (c, at) = need(stbl, origin, b"co64", "stbl without stco or co64")?;
            (entries(c, at, 4, 8)?.1, true)
        }
    };
    let n_chunks = chunks.len() / if wide { 8 } else { 4 };
    let chunk_offset =
        |c: usize| if wide { be64(chunks, c * 8).unwrap_or(0) } else { u64::from(be32(chunks, c * 4).unwrap_or(0)) };
    // Run-length tables, walked one sample at a time.
    let mut deltas = pairs(stts).flat_map(|(n, d)| std::iter::repeat_n(d, n as usize));
    let mut offsets = ctts.map(|c| pairs(c).flat_map(|(n, o)| std::iter::repeat_n(o, n as usize)));
    let mut syncs = stss.map(|s| s.chunks_exact(4).map(|c| be32(c, 0).unwrap_or(0)).peekable());
    let runs: Vec<(u32, u32)> =
        stsc.chunks_exact(12).map(|c| (be32(c, 0).unwrap_or(0), be32(c, 4).unwrap_or(0))).collect();
    let max_ticks = fmp4_read::max_media_ticks(timescale);
    let mut run = 0usize;
    let mut samples: Vec<Sample> = Vec::new();
    let mut dts = 0i64;
    let mut last_delta = 0i64;
    for c in 0..n_chunks {
        if samples.len() >= count {
            break;
        }
        let chunk = c as u64 + 1;
        while runs.get(run + 1).is_some_and(|r| u64::from(r.0) <= chunk) {
            run += 1;
        }
        let per_chunk = runs.get(run).filter(|r| u64::from(r.0) <= chunk).map_or(0, |r| r.1);
        let mut at = chunk_offset(c);
        for _ in 0..per_chunk {
            let i = samples.len();
            if i >= count {
                break;
            }
            let size = if fixed == 0 { be32(sizes, i * 4).unwrap_or(0) } else { fixed };
            if size > MAX_SAMPLE_SIZE {
                let max = u64::from(MAX_SAMPLE_SIZE);
                return Err(ReadError::TooLarge { what: "sample", offset: stsz_at, len: u64::from(size), max });
            }
            let end = at.checked_add(u64::from(size)).filter(|e| *e <= file_len);
            let Some(end) = end else { return Err(malformed(origin, "sample data outside the file")) };
            let number = i as u32 + 1;
            let keyframe = kind == TrackKind::Audio
                || match &mut syncs {
                    None => true,
                    Some(s) => {
                        while s.next_if(|n| *n < number).is_some() {}
                        s.next_if_eq(&number).is_some()
                    }
                };
            // Version 1 offsets are signed; version 0 ones are read signed too (as ffmpeg does).
            let cts = offsets.as_mut().and_then(Iterator::next).map_or(0, |o| o as i32);
            samples.push(Sample::new(at, dts, cts, size, keyframe));
            let delta = deltas.next().map(i64::from);
            last_delta = delta.unwrap_or(last_delta);
            dts = dts.saturating_add(last_delta);
            // Durations add up to at most 2^54 ticks (2^22 samples of 2^32): in seconds,
            // past what µs can hold. See MAX_MEDIA_TIME_US.
            if dts > max_ticks {
                return Err(malformed(origin, "sample times past the latest time a file may state"));
            }
            at = end;
        }
    }
    if samples.len() < count {
        return Err(malformed(origin, "fewer samples in chunks than in stsz"));
    }
    samples.shrink_to_fit();
    Ok(SampleTable { timescale, samples, end: dts })
}

fn fragmented<E>(
    file_len: u64,
    mut read_at: impl FnMut(u64, usize) -> Result<Vec<u8>, E>,
) -> Result<Movie, OpenError<E>> {
    let mut scanner = fmp4_read::Scanner::new(file_len);
    while let Some((at, len)) = scanner.wanted() {
        let data = read_at(at, len).map_err(OpenError::Read)?;
        scanner.handle_input(&data)?;
    }
    let scan = scanner.finish()?;
    let mut tables: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    let mut ends = [0i64; 2];
    for p in &scan.parts {
        let moof = read_at(p.offset, p.moof_len as usize).map_err(OpenError::Read)?;
        for s in fmp4_read::part_samples_at(&scan.layout, &moof, p.offset)? {
            let k = usize::from(s.kind == TrackKind::Audio);
            if (tables[0].len() + tables[1].len()) as u64 >= file_len / MIN_FILE_BYTES_PER_SAMPLE {
                return Err(malformed(p.offset, "more samples than the file has bytes for").into());
            }
            if tables[k].len() >= MAX_TRACK_SAMPLES {
                let max = MAX_TRACK_SAMPLES as u64;
                return Err(
                    ReadError::TooLarge { what: "samples in a track", offset: p.offset, len: max + 1, max }.into()
                );
            }
            let keyframe = s.keyframe || s.kind == TrackKind::Audio;
            let cts = s.cts.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
            if s.size > MAX_SAMPLE_SIZE {
                let max = u64::from(MAX_SAMPLE_SIZE);
                return Err(
                    ReadError::TooLarge { what: "sample", offset: p.offset, len: u64::from(s.size), max }.into()
                );
            }
            tables[k].push(Sample::new(p.offset + s.offset, s.dts, cts, s.size, keyframe));
            ends[k] = ends[k].max(s.dts.saturating_add(i64::from(s.duration)));
        }
    }
    let [video, audio] = tables;
    let table = |samples: Vec<Sample>, end: i64, t: &Option<TrackInfo>| {
        t.as_ref().map(|t| SampleTable { timescale: t.clock_rate(), samples, end })
    };
    Ok(Movie {
        video: table(video, ends[0], &scan.tracks.video),
        audio: table(audio, ends[1], &scan.tracks.audio),
        tracks: scan.tracks,
        fragmented: true,
    })
}

/// Indexes a whole file held in memory: see [`Movie::open`].
pub fn index(data: &[u8]) -> Result<Movie, ReadError> {
    Movie::open(data.len() as u64, |at, len| {
        let at = usize::try_from(at).unwrap_or(usize::MAX).min(data.len());
        Ok::<_, std::convert::Infallible>(data[at..at.saturating_add(len).min(data.len())].to_vec())
    })
    .map_err(|e| match e {
        OpenError::Format(e) => e,
        OpenError::Read(never) => match never {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(index(b"").is_err());
        assert!(index(b"\0\0\0\x20ftypisom").is_err(), "a box past the end");
        assert!(index(&bx(b"moof", &[])).is_err());
        // A moov that claims more than the limit is refused before it is read.
        let mut big = 16u32.to_be_bytes().to_vec();
        big[..4].copy_from_slice(&1u32.to_be_bytes());
        big.extend_from_slice(b"moov");
        big.extend_from_slice(&(MAX_MOOV_SIZE + 100).to_be_bytes());
        let read = |at: u64, len: usize| -> Result<Vec<u8>, ()> {
            assert!(at == 0 && len <= 16, "only the header is read");
            Ok(big[..len.min(big.len())].to_vec())
        };
        assert!(matches!(
            Movie::open(MAX_MOOV_SIZE + 116, read),
            Err(OpenError::Format(ReadError::TooLarge { what: "moov", .. }))
        ));
    }

    #[test]
    fn counts_are_checked_against_the_bytes() {
        // A sample table that claims four billion samples in a tiny file.
        let stsz = bx(b"stsz", &[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        let stbl = [bx(b"stsd", &[0; 8]), stsz].concat();
        assert!(sample_table(&stbl, 0, 1000, TrackKind::Video, 100).is_err());
        // A fixed size: the count is bounded by the file.
        let stsz = bx(b"stsz", &[0, 0, 0, 0, 0, 0, 0, 1, 0x10, 0, 0, 0]);
        let stbl = [bx(b"stsd", &[0; 8]), stsz].concat();
        assert!(sample_table(&stbl, 0, 1000, TrackKind::Video, 100).is_err());
        // Sizes of one byte: a table of N samples needs 4N bytes of file.
        let stsz = bx(b"stsz", &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 100]);
        let stbl = [bx(b"stsd", &[0; 8]), stsz].concat();
        assert!(matches!(sample_table(&stbl, 0, 1000, TrackKind::Video, 399), Err(ReadError::Malformed { .. })));
    }

    #[test]
    fn a_table_from_boxes() {
        // Three samples of 10, 20, 30 bytes in two chunks (2 + 1), durations 100, sync: 1, 3.
        let be = |v: &[u32]| v.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
        let stbl = [
            bx(b"stsz", &be(&[0, 0, 3, 10, 20, 30])),
            bx(b"stts", &be(&[0, 1, 3, 100])),
            bx(b"ctts", &be(&[0, 2, 1, 200, 2, 0])),
            bx(b"stss", &be(&[0, 2, 1, 3])),
            bx(b"stsc", &be(&[0, 2, 1, 2, 1, 2, 1, 1])),
            bx(b"stco", &be(&[0, 2, 1000, 2000])),
        ]
        .concat();
        let t = sample_table(&stbl, 0, 1000, TrackKind::Video, 5000).unwrap();
        let s = t.samples();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].offset, s[1].offset, s[2].offset), (1000, 1010, 2000));
        assert_eq!((s[0].size(), s[2].size()), (10, 30));
        assert_eq!((s[0].dts, s[2].dts, t.end()), (0, 200, 300));
        assert_eq!((s[0].pts(), s[1].pts()), (200, 100));
        assert_eq!(s.iter().map(Sample::keyframe).collect::<Vec<_>>(), [true, false, true]);
        assert_eq!(t.sync_at_or_before(150), Some(0));
        assert_eq!(t.sync_at_or_before(250), Some(2));
        assert_eq!(t.sync_at_or_before(-5), Some(0));
        assert_eq!(t.first_at_or_after(101), 2);
        assert_eq!(t.duration(2), 100);
        // The same file cut before the last sample's data: an error.
        assert!(sample_table(&stbl, 0, 1000, TrackKind::Video, 2010).is_err());
    }

    #[test]
    fn times_past_the_latest_a_file_may_state() {
        // Samples of up to 2^32 - 1 ticks each at a timescale of 1 (seconds): a few million
        // of them are past what µs hold in an i64; refused as soon as the sum passes
        // MAX_MEDIA_TIME_US (three samples here).
        let be = |v: &[u32]| v.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
        let stbl = |delta: u32| {
            [
                bx(b"stsz", &be(&[0, 1, 3])),
                bx(b"stts", &be(&[0, 1, 3, delta])),
                bx(b"stsc", &be(&[0, 1, 1, 3, 1])),
                bx(b"stco", &be(&[0, 1, 0])),
            ]
            .concat()
        };
        let max = fmp4_read::max_media_ticks(1);
        assert_eq!(max, fmp4_read::MAX_MEDIA_TIME_US / 1_000_000);
        let ok = sample_table(&stbl((max / 3) as u32), 0, 1, TrackKind::Audio, 100).unwrap();
        assert_eq!(ok.end(), max / 3 * 3);
        assert!(matches!(
            sample_table(&stbl((max / 3 + 1) as u32), 0, 1, TrackKind::Audio, 100),
            Err(ReadError::Malformed { .. })
        ));
        assert!(sample_table(&stbl(u32::MAX), 0, 1, TrackKind::Audio, 100).is_err());
    }
}
