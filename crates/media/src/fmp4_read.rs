//! Reading recordings back: fragmented MP4 files (ISO/IEC 14496-12 8.8) as
//! [`crate::fmp4::recording_init`] and [`crate::fmp4::recording_part`] write them, and as other
//! muxers write fragmented files, with `default-base-is-moof` (ffmpeg's `frag_keyframe` and
//! `default_base_moof` flags) or an explicit `base-data-offset` (ffmpeg's `frag_keyframe`
//! alone; [`Scanner`] and [`part_samples_at`] know the moof's offset it needs).
//!
//! [`Scanner`] lists a file's parts (one `moof` + `mdat` each) from the box headers and the
//! moofs alone, asking its caller for the bytes it needs and never for media data; [`scan`]
//! runs it over bytes in memory. A file cut anywhere after its init segment (a crash while
//! writing) scans up to the end of its last complete part, which is not an error; bytes after
//! the parts that are not a part say where they are in [`End::Damaged`]. [`read_part`] gives a
//! part's samples as [`Frame`]s, [`part_samples`] its sample table from the moof alone.
//!
//! Every size, count and offset from the file is checked before it is used, and every
//! allocation is bounded by a named limit: a damaged or hostile file gives an error, never a
//! panic.

use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

pub(crate) mod boxes;
pub(crate) mod init;
mod moof;

pub use boxes::box_header;
use boxes::{be32, be64};
use init::parse_moov;
use moof::{Moof, check_data, parse_moof};

use crate::fmp4::{MAX_PART_DATA, MAX_PART_SAMPLES, TrackTimes};
use crate::{Frame, TrackKind, Tracks};

/// Largest `moov` read. Ours is under 200 KiB even with two codec configurations at
/// [`crate::check::MAX_CONFIG_SIZE`]; ffmpeg's is a few KiB.
pub const MAX_INIT_SIZE: u64 = 1 << 20;

/// Largest `moof` read: a part of [`MAX_PART_SAMPLES`] samples at 16 bytes each is 2 MiB.
pub const MAX_MOOF_SIZE: u64 = 4 << 20;

/// Latest sample time a file may state, in µs from its start (about 285 years): every time
/// read is checked against it (in the track's timescale) so that a hostile `tfdt`, `stts` or
/// duration cannot make a time that wraps or overflows when it is rescaled to µs and added to
/// (a recording's UTC start, about 2^51 µs today, or another time of the file).
pub const MAX_MEDIA_TIME_US: i64 = 1 << 53;

/// [`MAX_MEDIA_TIME_US`] in a timescale's ticks, rounded down (a timescale of 0 counts as 1).
pub fn max_media_ticks(timescale: u32) -> i64 {
    let t = i128::from(MAX_MEDIA_TIME_US) * i128::from(timescale.max(1)) / 1_000_000;
    t.min(i128::from(i64::MAX)) as i64
}

// What the writer writes, the reader reads: samples at 16 bytes plus the boxes around them.
const _: () = assert!(MAX_PART_SAMPLES as u64 * 16 + 4096 <= MAX_MOOF_SIZE);

/// Why a file or a part could not be read. Offsets are from the start of the file for
/// [`scan`] and [`Scanner`], from the start of the part for [`read_part`] and [`part_samples`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The file ends inside its init segment (ftyp and moov): nothing in it can be played.
    #[error("file of {len} bytes ends inside its init segment")]
    IncompleteInit {
        /// Bytes in the file.
        len: u64,
    },
    /// A box breaks a rule of the format.
    #[error("malformed fMP4 at byte {offset}: {rule}")]
    Malformed {
        /// Offset of the box or field.
        offset: u64,
        /// The rule broken.
        rule: &'static str,
    },
    /// A box or count over one of this module's limits.
    #[error("{what} of {len} at byte {offset} is over the limit of {max}")]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Offset of its box.
        offset: u64,
        /// Its size or count.
        len: u64,
        /// The limit ([`MAX_INIT_SIZE`], [`MAX_MOOF_SIZE`], [`MAX_PART_DATA`],
        /// [`MAX_PART_SAMPLES`]).
        max: u64,
    },
    /// Valid MP4 that this reader does not follow.
    #[error("unsupported fMP4 at byte {offset}: {what}")]
    Unsupported {
        /// Offset of the box.
        offset: u64,
        /// What it is.
        what: &'static str,
    },
}

pub(crate) fn malformed(offset: u64, rule: &'static str) -> ReadError {
    ReadError::Malformed { offset, rule }
}

/// Per-sample values a track's fragments use when they do not give their own (`trex`,
/// ISO/IEC 14496-12 8.8.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SampleDefaults {
    /// `default_sample_duration`.
    pub duration: u32,
    /// `default_sample_size`.
    pub size: u32,
    /// `default_sample_flags`.
    pub flags: u32,
}

/// How one track of a file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackLayout {
    /// `track_ID`.
    pub id: u32,
    /// The media timescale: sample times are in these units.
    pub timescale: u32,
    /// The track's `trex` defaults.
    pub defaults: SampleDefaults,
}

/// How a file's tracks are stored: what [`read_part`] and [`part_samples`] need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    /// The video track, if the file has one this reader knows.
    pub video: Option<TrackLayout>,
    /// The audio track, likewise.
    pub audio: Option<TrackLayout>,
}

impl Layout {
    /// The track of one kind.
    pub fn get(&self, kind: TrackKind) -> Option<&TrackLayout> {
        match kind {
            TrackKind::Video => self.video.as_ref(),
            TrackKind::Audio => self.audio.as_ref(),
        }
    }

    fn by_id(&self, id: u32) -> Option<(TrackKind, &TrackLayout)> {
        [(TrackKind::Video, &self.video), (TrackKind::Audio, &self.audio)]
            .into_iter()
            .find_map(|(k, t)| t.as_ref().filter(|t| t.id == id).map(|t| (k, t)))
    }
}

/// One part of a file: a moof and the mdat after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Offset of its moof in the file.
    pub offset: u64,
    /// Bytes of moof + mdat.
    pub len: u64,
    /// Bytes of the moof: `offset..offset + moof_len` is what [`part_samples`] reads.
    pub moof_len: u64,
    /// The moof's `sequence_number`.
    pub sequence: u32,
    /// Decode time of each track's first sample in this part, in the track's timescale, from
    /// the start of the file (`tfdt`); `None` for a track without samples here.
    pub start: TrackTimes,
    /// Decode time at which each track's last sample here ends (its time plus duration).
    pub end: TrackTimes,
    /// Length of the longest track's samples here (`end - start`), in milliseconds.
    pub duration_ms: u64,
    /// Decode time (video timescale) of the first keyframe here, if any. A keyframe's byte
    /// offset for seeking is its part's `offset`.
    pub keyframe: Option<i64>,
    /// Video samples here.
    pub video_samples: u32,
    /// Audio samples here.
    pub audio_samples: u32,
}

/// How a scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// At the end of the file, after a whole box.
    Clean,
    /// Inside a box: a file cut while being written. Bytes after `good_len` are its tail.
    Truncated,
    /// At bytes after the last good part that are not a part (a damaged file).
    Damaged(ReadError),
}

/// What a file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The tracks of the init segment, each with its timescale as `clock_rate`: the times of
    /// [`PartInfo`] and of the frames [`read_part`] gives are in it.
    pub tracks: Tracks,
    /// Where each track is, for [`read_part`].
    pub layout: Layout,
    /// Bytes of the init segment (ftyp, moov and what is between).
    pub init_len: u64,
    /// The complete parts, in file order.
    pub parts: Vec<PartInfo>,
    /// Bytes up to the end of the last complete part (`init_len` when there is none).
    pub good_len: u64,
    /// How the scan ended.
    pub end: End,
}

impl Scan {
    /// When the file's last sample ends, in milliseconds from the file's start (decode time 0,
    /// the `base` it was written with): the latest end of any track in any part.
    pub fn end_ms(&self) -> u64 {
        let mut end = 0;
        for p in &self.parts {
            for k in [TrackKind::Video, TrackKind::Audio] {
                if let (Some(e), Some(t)) = (p.end.get(k), self.layout.get(k)) {
                    end = end.max(crate::rescale(e, t.timescale, 1000).max(0) as u64);
                }
            }
        }
        end
    }
}

/// Top-level boxes skipped between parts (ISO/IEC 14496-12 8.1.2, 8.16, 8.8.10, 8.8.11, 8.16.5;
/// DASH `emsg`).
const SKIPPED: [&[u8; 4]; 10] =
    [b"free", b"skip", b"styp", b"sidx", b"ssix", b"prft", b"emsg", b"mfra", b"uuid", b"udta"];

#[derive(Debug)]
enum State {
    /// Wants the 8-byte header of the box at `at`, or with `large` (its type) the 64-bit size
    /// after it; `after` is the moof the box follows, when it must be that moof's mdat.
    Header {
        at: u64,
        large: Option<[u8; 4]>,
        after: Option<(u64, Moof)>,
    },
    /// Wants a moov body.
    Moov {
        at: u64,
        len: u64,
        end: u64,
    },
    /// Wants a whole moof.
    Moof {
        at: u64,
        len: u64,
    },
    Done,
}

/// Lists a file's parts from its box headers and moofs, reading nothing else: a sans-IO state
/// machine that says which bytes it wants next.
///
/// ```
/// # use ferrocast_media::fmp4_read::Scanner;
/// # fn read_at(file: &[u8], at: u64, len: usize) -> Vec<u8> { file[at as usize..][..len].to_vec() }
/// # let file: &[u8] = b"";
/// let mut scanner = Scanner::new(file.len() as u64);
/// while let Some((at, len)) = scanner.wanted() {
///     let bytes = read_at(file, at, len); // from disk: a seek and a read
///     if scanner.handle_input(&bytes).is_err() {
///         break;
///     }
/// }
/// let scan = scanner.finish(); // Err: not a recording, or cut inside its init segment
/// # assert!(scan.is_err());
/// ```
#[derive(Debug)]
pub struct Scanner {
    file_len: u64,
    state: State,
    init: Option<(Tracks, Layout, u64)>,
    parts: Vec<PartInfo>,
    good_len: u64,
    end: Option<End>,
    fatal: Option<ReadError>,
}

/// Bytes of a box header, and of the 64-bit size that may follow it.
const HEADER: u64 = 8;

impl Scanner {
    /// A scanner of a file of `file_len` bytes (its size now, for one being written).
    pub fn new(file_len: u64) -> Scanner {
        let mut s = Scanner {
            file_len,
            state: State::Done,
            init: None,
            parts: Vec::new(),
            good_len: 0,
            end: None,
            fatal: None,
        };
        s.goto(0);
        s
    }

    /// The bytes wanted next: `len` bytes at offset `at`, always inside the file; `None` when
    /// the scan is over.
    pub fn wanted(&self) -> Option<(u64, usize)> {
        match &self.state {
            State::Header { at, large, .. } => {
                let at = if large.is_some() { at + HEADER } else { *at };
                Some((at, self.file_len.saturating_sub(at).min(HEADER) as usize))
            }
            State::Moov { at, len, .. } | State::Moof { at, len } => Some((*at, *len as usize)),
            State::Done => None,
        }
    }

    /// Takes the bytes [`Scanner::wanted`] asked for (fewer when the file turned out shorter).
    /// An error means the file is no recording (or is cut inside its init segment) and ends
    /// the scan; trouble after the init segment ends it with [`End::Damaged`] instead.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), ReadError> {
        let Some((at, len)) = self.wanted() else { return Ok(()) };
        if data.len() < len {
            // The file is shorter than it was said to be: it is being cut or written.
            self.file_len = at + data.len() as u64;
        }
        let data = &data[..len.min(data.len())];
        let r = match std::mem::replace(&mut self.state, State::Done) {
            State::Header { at, large, after } => self.header(at, large, after, data),
            State::Moov { at, len, end } => self.moov(at, len, end, data),
            State::Moof { at, len } => self.moof(at, len, data),
            State::Done => Ok(()),
        };
        if let Err(e) = &r {
            self.fatal = Some(e.clone());
            self.state = State::Done;
        }
        r
    }

    /// The scan: an error when the file is no recording or is cut inside its init segment.
    /// Called before [`Scanner::wanted`] is `None`, the scan so far, ended as truncated.
    pub fn finish(self) -> Result<Scan, ReadError> {
        if let Some(e) = self.fatal {
            return Err(e);
        }
        let Some((tracks, layout, init_len)) = self.init else {
            return Err(ReadError::IncompleteInit { len: self.file_len });
        };
        Ok(Scan {
            tracks,
            layout,
            init_len,
            parts: self.parts,
            good_len: self.good_len.max(init_len),
            end: self.end.unwrap_or(End::Truncated),
        })
    }

    fn goto(&mut self, at: u64) {
        if at >= self.file_len {
            self.stop(End::Clean);
        } else {
            self.state = State::Header { at, large: None, after: None };
        }
    }

    fn stop(&mut self, end: End) {
        self.state = State::Done;
        self.end = Some(end);
    }

    fn damaged(&mut self, e: ReadError) -> Result<(), ReadError> {
        self.stop(End::Damaged(e));
        Ok(())
    }

    /// A file cut here: before the end of the init segment nothing is playable.
    fn truncated(&mut self) -> Result<(), ReadError> {
        if self.init.is_none() {
            return Err(ReadError::IncompleteInit { len: self.file_len });
        }
        self.stop(End::Truncated);
        Ok(())
    }

    /// A box header, read in two steps when it has a 64-bit size, so that nothing after the
    /// header is read.
    fn header(
        &mut self,
        at: u64,
        large: Option<[u8; 4]>,
        after: Option<(u64, Moof)>,
        data: &[u8],
    ) -> Result<(), ReadError> {
        let (kind, header, size) = match large {
            Some(kind) => match be64(data, 0) {
                Some(size) => (kind, 16, size),
                None => return self.truncated(),
            },
            None => {
                let (Some(size), Some(k)) = (be32(data, 0), data.get(4..8)) else { return self.truncated() };
                let kind = [k[0], k[1], k[2], k[3]];
                if size == 1 {
                    self.state = State::Header { at, large: Some(kind), after };
                    return Ok(());
                }
                (kind, 8, u64::from(size))
            }
        };
        let bad = if size == 0 {
            // A box "to the end of the file" has no end to check a cut file against.
            Some(malformed(at, "box size 0 (to the end of the file)"))
        } else if size < header {
            Some(malformed(at, "box size smaller than its header"))
        } else {
            None
        };
        match (bad, after) {
            (Some(e), _) if self.init.is_none() => Err(e),
            (Some(e), _) => self.damaged(e),
            (None, Some((moof_at, moof))) => self.mdat(moof_at, at - moof_at, moof, (kind, header, size)),
            (None, None) => self.top_level(at, kind, header, size),
        }
    }

    /// A top-level box other than a moof's mdat.
    fn top_level(&mut self, at: u64, kind: [u8; 4], header: u64, size: u64) -> Result<(), ReadError> {
        let fits = size <= self.file_len - at;
        let body = size - header;
        if self.init.is_none() {
            match &kind {
                b"ftyp" if at == 0 => {}
                _ if at == 0 => return Err(malformed(0, "a recording starts with an ftyp box")),
                b"moov" => {
                    if body > MAX_INIT_SIZE {
                        return Err(ReadError::TooLarge { what: "moov", offset: at, len: body, max: MAX_INIT_SIZE });
                    }
                    if !fits {
                        return self.truncated();
                    }
                    self.state = State::Moov { at: at + header, len: body, end: at + size };
                    return Ok(());
                }
                k if SKIPPED.contains(&k) => {}
                _ => return Err(malformed(at, "a box other than moov before the moov")),
            }
            if !fits {
                return self.truncated();
            }
            self.goto(at + size);
            return Ok(());
        }
        match &kind {
            b"moof" if size > MAX_MOOF_SIZE => {
                self.stop(End::Damaged(ReadError::TooLarge { what: "moof", offset: at, len: size, max: MAX_MOOF_SIZE }))
            }
            b"moof" if !fits => self.stop(End::Truncated),
            b"moof" => self.state = State::Moof { at, len: size },
            k if SKIPPED.contains(&k) && !fits => self.stop(End::Truncated),
            k if SKIPPED.contains(&k) => self.goto(at + size),
            b"mdat" => self.stop(End::Damaged(malformed(at, "an mdat without a moof before it"))),
            _ => self.stop(End::Damaged(malformed(at, "a box that is not part of a fragment"))),
        }
        Ok(())
    }

    fn moov(&mut self, at: u64, len: u64, end: u64, data: &[u8]) -> Result<(), ReadError> {
        if (data.len() as u64) < len {
            return self.truncated();
        }
        let (tracks, layout) = parse_moov(data, at)?;
        self.init = Some((tracks, layout, end));
        self.good_len = end;
        self.goto(end);
        Ok(())
    }

    fn moof(&mut self, at: u64, len: u64, data: &[u8]) -> Result<(), ReadError> {
        if (data.len() as u64) < len {
            return self.truncated();
        }
        let layout = self.init.as_ref().map(|i| i.1).unwrap_or_default();
        match parse_moof(&layout, data, at) {
            Err(e) => self.stop(End::Damaged(e)),
            Ok(_) if at + len >= self.file_len => self.stop(End::Truncated),
            Ok(moof) => self.state = State::Header { at: at + len, large: None, after: Some((at, moof)) },
        }
        Ok(())
    }

    /// The box after a moof: its mdat.
    fn mdat(&mut self, moof_at: u64, moof_len: u64, moof: Moof, b: ([u8; 4], u64, u64)) -> Result<(), ReadError> {
        let (kind, header, size) = b;
        let at = moof_at + moof_len;
        if &kind != b"mdat" {
            return self.damaged(malformed(at, "a moof not followed by its mdat"));
        }
        if size - header > MAX_PART_DATA as u64 {
            let max = MAX_PART_DATA as u64;
            return self.damaged(ReadError::TooLarge { what: "mdat", offset: at, len: size - header, max });
        }
        if size > self.file_len - at {
            return self.truncated();
        }
        let layout = self.init.as_ref().map(|i| i.1).unwrap_or_default();
        if let Err(e) = check_data(&moof, moof_len + header, moof_len + size, moof_at) {
            return self.damaged(e);
        }
        self.parts.push(part_info(&layout, &moof, moof_at, moof_len, moof_len + size));
        self.good_len = at + size;
        self.goto(at + size);
        Ok(())
    }
}

/// Scans a whole file (or the first bytes of one) held in memory: see [`Scanner`].
pub fn scan(data: &[u8]) -> Result<Scan, ReadError> {
    let mut s = Scanner::new(data.len() as u64);
    while let Some((at, len)) = s.wanted() {
        let bytes = usize::try_from(at).ok().and_then(|at| data.get(at..at.saturating_add(len))).unwrap_or_default();
        s.handle_input(bytes)?;
    }
    s.finish()
}

/// One sample of a part, from its moof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleInfo {
    /// Its track.
    pub kind: TrackKind,
    /// Decode time in the track's timescale, from the start of the file.
    pub dts: i64,
    /// Composition offset (`pts - dts`).
    pub cts: i64,
    /// Duration in the track's timescale.
    pub duration: u32,
    /// A sync sample (`sample_is_non_sync_sample` clear).
    pub keyframe: bool,
    /// Offset of its data from the start of the part (the moof).
    pub offset: u64,
    /// Bytes of data.
    pub size: u32,
}

/// The samples of a part from its moof alone (`moof` is the whole box, as [`PartInfo`]'s
/// `offset` and `moof_len` locate it): for building sample tables without reading media data.
/// Samples are in file order: each track's in decode order.
pub fn part_samples(layout: &Layout, moof: &[u8]) -> Result<Vec<SampleInfo>, ReadError> {
    Ok(parse_moof(layout, moof, 0)?.samples)
}

/// As [`part_samples`], for a moof at file offset `at`: needed for fragments whose `tfhd`
/// gives an explicit `base-data-offset` (a file offset, as ffmpeg writes without
/// `default_base_moof`); sample offsets are still from the moof's start.
pub fn part_samples_at(layout: &Layout, moof: &[u8], at: u64) -> Result<Vec<SampleInfo>, ReadError> {
    Ok(parse_moof(layout, moof, at)?.samples)
}

/// The samples of one part (moof + mdat, as [`PartInfo`] locates it) as frames, in the
/// layout's timescales, ordered by decode time across tracks (each track's in decode order).
/// Frame data shares `part`'s buffer.
pub fn read_part(layout: &Layout, part: &Bytes) -> Result<Vec<Arc<Frame>>, ReadError> {
    let (kind, _, moof_len) = box_header(part, 0)?.ok_or(malformed(0, "a part starts with a moof header"))?;
    if &kind != b"moof" {
        return Err(malformed(0, "a part starts with a moof"));
    }
    if moof_len > MAX_MOOF_SIZE {
        return Err(ReadError::TooLarge { what: "moof", offset: 0, len: moof_len, max: MAX_MOOF_SIZE });
    }
    let moof_bytes = part.get(..moof_len as usize).ok_or(malformed(0, "moof past the end of the part"))?;
    let moof = parse_moof(layout, moof_bytes, 0)?;
    let rest = &part[moof_len as usize..];
    let (kind, header, size) = box_header(rest, moof_len)?.ok_or(malformed(moof_len, "no mdat after the moof"))?;
    if &kind != b"mdat" {
        return Err(malformed(moof_len, "a moof not followed by its mdat"));
    }
    if size > rest.len() as u64 {
        return Err(malformed(moof_len, "mdat past the end of the part"));
    }
    if size - header > MAX_PART_DATA as u64 {
        return Err(ReadError::TooLarge {
            what: "mdat",
            offset: moof_len,
            len: size - header,
            max: MAX_PART_DATA as u64,
        });
    }
    check_data(&moof, moof_len + header, moof_len + size, 0)?;
    let frame = |s: &SampleInfo| {
        let at = s.offset as usize;
        let data = part.slice(at..at + s.size as usize);
        Frame::new(s.kind, s.dts, s.dts.saturating_add(s.cts), s.keyframe, data)
    };
    // Each track's samples in file order, merged by decode time.
    let (video, audio): (Vec<&SampleInfo>, Vec<&SampleInfo>) =
        moof.samples.iter().partition(|s| s.kind == TrackKind::Video);
    let scale = |k| i128::from(layout.get(k).map_or(1, |t| t.timescale.max(1)));
    let (vs, as_) = (scale(TrackKind::Video), scale(TrackKind::Audio));
    let mut frames = Vec::with_capacity(moof.samples.len());
    let (mut v, mut a) = (video.iter().peekable(), audio.iter().peekable());
    loop {
        let take_video = match (v.peek(), a.peek()) {
            (Some(x), Some(y)) => i128::from(x.dts) * as_ <= i128::from(y.dts) * vs,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let s = if take_video { v.next() } else { a.next() };
        frames.extend(s.map(|s| frame(s)));
    }
    Ok(frames)
}

fn part_info(layout: &Layout, moof: &Moof, offset: u64, moof_len: u64, len: u64) -> PartInfo {
    let mut start = TrackTimes::default();
    let mut end = TrackTimes::default();
    let mut keyframe = None;
    let (mut video_samples, mut audio_samples) = (0u32, 0u32);
    for s in &moof.samples {
        if start.get(s.kind).is_none() {
            start.set(s.kind, Some(s.dts));
        }
        let e = s.dts.saturating_add(i64::from(s.duration));
        end.set(s.kind, Some(end.get(s.kind).map_or(e, |x| x.max(e))));
        match s.kind {
            TrackKind::Video => video_samples += 1,
            TrackKind::Audio => audio_samples += 1,
        }
        if s.kind == TrackKind::Video && s.keyframe && keyframe.is_none() {
            keyframe = Some(s.dts);
        }
    }
    let duration_ms = [TrackKind::Video, TrackKind::Audio]
        .into_iter()
        .filter_map(|k| {
            let span = end.get(k)?.saturating_sub(start.get(k)?);
            Some(crate::rescale(span, layout.get(k)?.timescale, 1000).max(0) as u64)
        })
        .max()
        .unwrap_or(0);
    PartInfo {
        offset,
        len,
        moof_len,
        sequence: moof.sequence,
        start,
        end,
        duration_ms,
        keyframe,
        video_samples,
        audio_samples,
    }
}
