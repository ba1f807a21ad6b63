//! Reading recordings back: fragmented MP4 files (ISO/IEC 14496-12 8.8) as
//! [`crate::fmp4::recording_init`] and [`crate::fmp4::recording_part`] write them, and as other
//! muxers write fragmented files with `default-base-is-moof` (ffmpeg's `frag_keyframe` and
//! `default_base_moof` flags).
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

use crate::fmp4::{MAX_PART_DATA, MAX_PART_SAMPLES, TrackTimes, rescale_saturating};
use crate::{AudioCodec, Frame, TrackInfo, TrackKind, Tracks, VideoCodec};

/// Largest `moov` read. Ours is under 200 KiB even with two codec configurations at
/// [`crate::check::MAX_CONFIG_SIZE`]; ffmpeg's is a few KiB.
pub const MAX_INIT_SIZE: u64 = 1 << 20;

/// Largest `moof` read: a part of [`MAX_PART_SAMPLES`] samples at 16 bytes each is 2 MiB.
pub const MAX_MOOF_SIZE: u64 = 4 << 20;

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

fn malformed(offset: u64, rule: &'static str) -> ReadError {
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

/// A parsed moof.
#[derive(Debug)]
struct Moof {
    sequence: u32,
    samples: Vec<SampleInfo>,
}

/// The samples of a part from its moof alone (`moof` is the whole box, as [`PartInfo`]'s
/// `offset` and `moof_len` locate it): for building sample tables without reading media data.
/// Samples are in file order: each track's in decode order.
pub fn part_samples(layout: &Layout, moof: &[u8]) -> Result<Vec<SampleInfo>, ReadError> {
    Ok(parse_moof(layout, moof, 0)?.samples)
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

/// Checks that every sample's data lies in the mdat's body, `from..to` from the moof's start.
fn check_data(moof: &Moof, from: u64, to: u64, origin: u64) -> Result<(), ReadError> {
    for s in &moof.samples {
        if s.offset < from || s.offset.saturating_add(u64::from(s.size)) > to {
            return Err(malformed(origin, "sample data outside the mdat after its moof"));
        }
    }
    Ok(())
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
            Some(rescale_saturating(span, layout.get(k)?.timescale, 1000).max(0) as u64)
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

fn be16(d: &[u8], i: usize) -> Option<u16> {
    d.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

fn be32(d: &[u8], i: usize) -> Option<u32> {
    d.get(i..i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be64(d: &[u8], i: usize) -> Option<u64> {
    d.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

/// A box header at the start of `data` (at file offset `at`): type, header length and box
/// size; `None` when `data` is too short to hold it.
fn box_header(data: &[u8], at: u64) -> Result<Option<([u8; 4], u64, u64)>, ReadError> {
    let (Some(size), Some(kind)) = (be32(data, 0), data.get(4..8)) else { return Ok(None) };
    let kind: [u8; 4] = [kind[0], kind[1], kind[2], kind[3]];
    let (header, size) = match size {
        // A box "to the end of the file" has no end to check a cut file against.
        0 => return Err(malformed(at, "box size 0 (to the end of the file)")),
        1 => match be64(data, 8) {
            Some(large) => (16, large),
            None => return Ok(None),
        },
        s => (8, u64::from(s)),
    };
    if size < header {
        return Err(malformed(at, "box size smaller than its header"));
    }
    Ok(Some((kind, header, size)))
}

/// The child boxes of a box body at file offset `origin`: (type, body, body's offset).
fn children(data: &[u8], origin: u64) -> impl Iterator<Item = Result<([u8; 4], &[u8], u64), ReadError>> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= data.len() {
            return None;
        }
        let at = origin + pos as u64;
        let rest = &data[pos..];
        let r = match box_header(rest, at) {
            Err(_) if be32(rest, 0) == Some(0) => {
                // Inside a box, size 0 runs to the end of the parent.
                rest.get(4..8).map(|k| ([k[0], k[1], k[2], k[3]], 8u64, rest.len() as u64))
            }
            Err(e) => {
                pos = data.len();
                return Some(Err(e));
            }
            Ok(h) => h,
        };
        let Some((kind, header, size)) = r.filter(|(_, _, size)| *size <= rest.len() as u64) else {
            pos = data.len();
            return Some(Err(malformed(at, "box past the end of its parent")));
        };
        pos += size as usize;
        Some(Ok((kind, &rest[header as usize..size as usize], at + header)))
    })
}

/// The first child box of this type: (body, body's offset).
fn child<'a>(data: &'a [u8], origin: u64, kind: &[u8; 4]) -> Result<Option<(&'a [u8], u64)>, ReadError> {
    for c in children(data, origin) {
        let (k, body, at) = c?;
        if &k == kind {
            return Ok(Some((body, at)));
        }
    }
    Ok(None)
}

fn need<'a>(data: &'a [u8], origin: u64, kind: &[u8; 4], rule: &'static str) -> Result<(&'a [u8], u64), ReadError> {
    child(data, origin, kind)?.ok_or(malformed(origin, rule))
}

/// The tracks of a moov (body at `origin`) and their layout.
fn parse_moov(moov: &[u8], origin: u64) -> Result<(Tracks, Layout), ReadError> {
    let (mvex, mvex_at) = child(moov, origin, b"mvex")?
        .ok_or(ReadError::Unsupported { offset: origin, what: "a moov without mvex (not fragmented)" })?;
    let mut tracks = Tracks::default();
    let mut layout = Layout::default();
    for c in children(moov, origin) {
        let (kind, body, at) = c?;
        if &kind != b"trak" {
            continue;
        }
        let Some((id, timescale, info)) = parse_trak(body, at)? else { continue };
        let slot = match info.kind() {
            TrackKind::Video => (&mut tracks.video, &mut layout.video),
            TrackKind::Audio => (&mut tracks.audio, &mut layout.audio),
        };
        if slot.0.is_none() {
            *slot.0 = Some(info);
            *slot.1 = Some(TrackLayout { id, timescale, defaults: SampleDefaults::default() });
        }
    }
    if layout.video.is_none() && layout.audio.is_none() {
        return Err(ReadError::Unsupported { offset: origin, what: "no track of a codec ferrocast carries" });
    }
    for c in children(mvex, mvex_at) {
        let (kind, body, at) = c?;
        if &kind != b"trex" {
            continue;
        }
        // Version and flags, track_ID, default_sample_description_index, then the defaults.
        let field = |i| be32(body, i).ok_or(malformed(at, "trex shorter than its fields"));
        let id = field(4)?;
        let defaults = SampleDefaults { duration: field(12)?, size: field(16)?, flags: field(20)? };
        for t in [&mut layout.video, &mut layout.audio].into_iter().flatten() {
            if t.id == id {
                t.defaults = defaults;
            }
        }
    }
    Ok((tracks, layout))
}

/// A track's id, timescale and codec parameters (`clock_rate` = timescale); `None` for a
/// track of a codec ferrocast does not carry.
fn parse_trak(trak: &[u8], origin: u64) -> Result<Option<(u32, u32, TrackInfo)>, ReadError> {
    let (tkhd, tkhd_at) = need(trak, origin, b"tkhd", "trak without tkhd")?;
    let id = match tkhd.first() {
        Some(1) => be32(tkhd, 20),
        _ => be32(tkhd, 12),
    }
    .ok_or(malformed(tkhd_at, "tkhd shorter than its fields"))?;
    let (mdia, mdia_at) = need(trak, origin, b"mdia", "trak without mdia")?;
    let (mdhd, mdhd_at) = need(mdia, mdia_at, b"mdhd", "mdia without mdhd")?;
    let timescale = match mdhd.first() {
        Some(1) => be32(mdhd, 20),
        _ => be32(mdhd, 12),
    }
    .filter(|t| *t > 0)
    .ok_or(malformed(mdhd_at, "mdhd without a timescale"))?;
    let (minf, minf_at) = need(mdia, mdia_at, b"minf", "mdia without minf")?;
    let (stbl, stbl_at) = need(minf, minf_at, b"stbl", "minf without stbl")?;
    let (stsd, stsd_at) = need(stbl, stbl_at, b"stsd", "stbl without stsd")?;
    // Version and flags, entry_count, then the entries; the first one describes the samples.
    let Some(entry) = stsd.get(8..).and_then(|e| children(e, stsd_at + 8).next()) else {
        return Err(malformed(stsd_at, "stsd without a sample entry"));
    };
    let (kind, body, at) = entry?;
    Ok(sample_entry(&kind, body, at, timescale)?.map(|info| (id, timescale, info)))
}

/// The codec parameters of a sample entry ISO/IEC 14496-12 12.1.3, 12.2.3.
fn sample_entry(kind: &[u8; 4], body: &[u8], at: u64, timescale: u32) -> Result<Option<TrackInfo>, ReadError> {
    let video = |codec| -> Result<Option<TrackInfo>, ReadError> {
        // VisualSampleEntry: 78 bytes of fields, then boxes.
        let boxes = body.get(78..).ok_or(malformed(at, "visual sample entry shorter than its fields"))?;
        let config_kind = if codec == VideoCodec::H264 { b"avcC" } else { b"hvcC" };
        let (config, config_at) = need(boxes, at + 78, config_kind, "visual sample entry without avcC/hvcC")?;
        // Frames carry 4-byte NAL unit lengths (ISO/IEC 14496-15 5.3.3.1.2, 8.3.3.1.2).
        if crate::avc::nal_length_size(codec, config).ok() != Some(4) {
            return Err(ReadError::Unsupported { offset: config_at, what: "NAL unit lengths other than 4 bytes" });
        }
        Ok(Some(TrackInfo::Video { codec, config: Bytes::copy_from_slice(config), clock_rate: timescale }))
    };
    match kind {
        b"avc1" | b"avc3" => return video(VideoCodec::H264),
        b"hvc1" | b"hev1" => return video(VideoCodec::H265),
        b"mp4a" | b"Opus" | b"alaw" | b"ulaw" => {}
        _ => return Ok(None),
    }
    // AudioSampleEntry: 28 bytes of fields, then boxes; QuickTime's versions 1 and 2 (as
    // ffmpeg's mov muxer writes) add 16 and 36 bytes.
    let short = || malformed(at, "audio sample entry shorter than its fields");
    let version = be16(body, 8).ok_or_else(short)?;
    let (mut channels, mut rate) =
        (u32::from(be16(body, 16).ok_or_else(short)?), be32(body, 24).ok_or_else(short)? >> 16);
    let boxes_at = match version {
        0 => 28,
        1 => 44,
        2 => {
            let bits = be64(body, 32).ok_or_else(short)?;
            rate = f64::from_bits(bits).clamp(0.0, f64::from(u32::MAX)) as u32;
            channels = be32(body, 40).ok_or_else(short)?;
            64
        }
        _ => return Err(ReadError::Unsupported { offset: at, what: "audio sample entry version over 2" }),
    };
    let boxes = body.get(boxes_at..).ok_or_else(short)?;
    let boxes_origin = at + boxes_at as u64;
    let channels = channels.clamp(1, 255) as u8;
    let rate = if rate == 0 { timescale } else { rate };
    let plain = |codec, sample_rate| TrackInfo::Audio {
        codec,
        config: Bytes::new(),
        sample_rate,
        channels,
        clock_rate: timescale,
    };
    Ok(Some(match kind {
        b"alaw" => plain(AudioCodec::Pcma, rate),
        b"ulaw" => plain(AudioCodec::Pcmu, rate),
        b"Opus" => {
            // OpusSpecificBox: Version 0, OutputChannelCount, ... (Opus in ISOBMFF 4.3.2).
            let (dops, dops_at) = need(boxes, boxes_origin, b"dOps", "Opus sample entry without dOps")?;
            let (Some(0), Some(n)) = (dops.first(), dops.get(1)) else {
                return Err(malformed(dops_at, "dOps of an unknown version or cut short"));
            };
            TrackInfo::Audio {
                codec: AudioCodec::Opus,
                config: Bytes::new(),
                sample_rate: crate::fmp4::OPUS_TIMESCALE,
                channels: (*n).max(1),
                clock_rate: timescale,
            }
        }
        _ => {
            let (esds, esds_at) = need(boxes, boxes_origin, b"esds", "mp4a without esds")?;
            let Some((oti, dsi)) = decoder_config(esds.get(4..).unwrap_or_default()) else {
                return Err(malformed(esds_at, "esds without a DecoderConfigDescriptor"));
            };
            match oti {
                // ISO/IEC 14496-1 Table 5: 0x40 MPEG-4 audio; 0x69, 0x6b MPEG-2/MPEG-1 audio.
                0x40 => {
                    let asc = dsi.ok_or(malformed(esds_at, "AAC esds without an AudioSpecificConfig"))?;
                    crate::aac::track(Bytes::copy_from_slice(asc), timescale)
                        .map_err(|_| malformed(esds_at, "AudioSpecificConfig that does not parse"))?
                }
                0x69 | 0x6b => plain(AudioCodec::Mp3, rate),
                _ => return Ok(None),
            }
        }
    }))
}

/// The objectTypeIndication and DecoderSpecificInfo of an ES_Descriptor
/// (ISO/IEC 14496-1 7.2.6.5, 7.2.6.6).
fn decoder_config(d: &[u8]) -> Option<(u8, Option<&[u8]>)> {
    // Descriptors: tag, then a length in up to four 7-bit groups.
    fn descriptor(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *d.first()?;
        let mut len = 0usize;
        let mut i = 1;
        loop {
            let b = *d.get(i)?;
            len = (len << 7) | usize::from(b & 0x7f);
            i += 1;
            if b & 0x80 == 0 || i > 4 {
                break;
            }
        }
        let body = d.get(i..i.checked_add(len)?)?;
        Some((tag, body, &d[i + len..]))
    }
    let (tag, es, _) = descriptor(d)?;
    if tag != 3 {
        return None;
    }
    let flags = *es.get(2)?;
    let mut skip = 3;
    if flags & 0x80 != 0 {
        skip += 2;
    }
    if flags & 0x40 != 0 {
        skip += 1 + usize::from(*es.get(skip)?);
    }
    if flags & 0x20 != 0 {
        skip += 2;
    }
    let mut d = es.get(skip..)?;
    while !d.is_empty() {
        let (tag, body, rest) = descriptor(d)?;
        if tag == 4 {
            let oti = *body.first()?;
            // DecoderConfigDescriptor: 13 bytes of fields, then DecoderSpecificInfo.
            let dsi = body.get(13..).and_then(descriptor).filter(|(t, _, _)| *t == 5).map(|(_, b, _)| b);
            return Some((oti, dsi));
        }
        d = rest;
    }
    None
}

/// tfhd flags (ISO/IEC 14496-12 8.8.7.1).
const TFHD_BASE_DATA_OFFSET: u32 = 0x00_0001;
const TFHD_SAMPLE_DESCRIPTION_INDEX: u32 = 0x00_0002;
const TFHD_DEFAULT_DURATION: u32 = 0x00_0008;
const TFHD_DEFAULT_SIZE: u32 = 0x00_0010;
const TFHD_DEFAULT_FLAGS: u32 = 0x00_0020;
const TFHD_DEFAULT_BASE_IS_MOOF: u32 = 0x02_0000;
/// trun flags (8.8.8.1).
const TRUN_DATA_OFFSET: u32 = 0x00_0001;
const TRUN_FIRST_SAMPLE_FLAGS: u32 = 0x00_0004;
const TRUN_DURATION: u32 = 0x00_0100;
const TRUN_SIZE: u32 = 0x00_0200;
const TRUN_FLAGS: u32 = 0x00_0400;
const TRUN_CTS: u32 = 0x00_0800;
/// `sample_is_non_sync_sample` in sample flags (8.8.3.1).
const NON_SYNC_BIT: u32 = 0x0001_0000;

/// A whole moof box (at file offset `origin`): its sequence number and the samples of the
/// layout's tracks, offsets from the moof's start.
fn parse_moof(layout: &Layout, moof: &[u8], origin: u64) -> Result<Moof, ReadError> {
    let (kind, header, size) = box_header(moof, origin)?.ok_or(malformed(origin, "moof header cut short"))?;
    if &kind != b"moof" || size != moof.len() as u64 {
        return Err(malformed(origin, "not a whole moof box"));
    }
    let body = &moof[header as usize..];
    let mut sequence = None;
    let mut samples = Vec::new();
    let mut budget = MAX_PART_SAMPLES as u64;
    // Where the previous traf's data ended: the base of a traf that gives none (8.8.7.1).
    let mut data_end = 0u64;
    let mut first_traf = true;
    for c in children(body, origin + header) {
        let (kind, body, at) = c?;
        match &kind {
            b"mfhd" => sequence = Some(be32(body, 4).ok_or(malformed(at, "mfhd shorter than its fields"))?),
            b"traf" => {
                let base = if first_traf { 0 } else { data_end };
                first_traf = false;
                data_end = parse_traf(layout, body, at, base, &mut budget, &mut samples)?;
            }
            _ => {}
        }
    }
    let sequence = sequence.ok_or(malformed(origin, "moof without mfhd"))?;
    Ok(Moof { sequence, samples })
}

/// One traf (body at file offset `origin`): appends its samples and returns where its data
/// ends, from the moof's start.
fn parse_traf(
    layout: &Layout,
    traf: &[u8],
    origin: u64,
    implicit_base: u64,
    budget: &mut u64,
    samples: &mut Vec<SampleInfo>,
) -> Result<u64, ReadError> {
    let (tfhd, tfhd_at) = need(traf, origin, b"tfhd", "traf without tfhd")?;
    let short = |at| malformed(at, "box shorter than its fields");
    let flags = be32(tfhd, 0).ok_or(short(tfhd_at))? & 0xff_ffff;
    let id = be32(tfhd, 4).ok_or(short(tfhd_at))?;
    let track = layout.by_id(id);
    let mut defaults = track.map(|(_, t)| t.defaults).unwrap_or_default();
    let mut pos = 8;
    let mut field = |present: bool| -> Result<Option<u32>, ReadError> {
        if !present {
            return Ok(None);
        }
        let v = be32(tfhd, pos).ok_or(short(tfhd_at))?;
        pos += 4;
        Ok(Some(v))
    };
    if flags & TFHD_BASE_DATA_OFFSET != 0 {
        return Err(ReadError::Unsupported { offset: tfhd_at, what: "an explicit base-data-offset" });
    }
    field(flags & TFHD_SAMPLE_DESCRIPTION_INDEX != 0)?;
    if let Some(d) = field(flags & TFHD_DEFAULT_DURATION != 0)? {
        defaults.duration = d;
    }
    if let Some(s) = field(flags & TFHD_DEFAULT_SIZE != 0)? {
        defaults.size = s;
    }
    if let Some(f) = field(flags & TFHD_DEFAULT_FLAGS != 0)? {
        defaults.flags = f;
    }
    let base = if flags & TFHD_DEFAULT_BASE_IS_MOOF != 0 { 0 } else { implicit_base };
    let mut dts = match (track, child(traf, origin, b"tfdt")?) {
        (_, Some((tfdt, at))) => {
            let t = match tfdt.first() {
                Some(1) => be64(tfdt, 4),
                _ => be32(tfdt, 4).map(u64::from),
            }
            .ok_or(short(at))?;
            i64::try_from(t).map_err(|_| malformed(at, "tfdt past the range of a signed 64-bit time"))?
        }
        (Some(_), None) => {
            return Err(ReadError::Unsupported { offset: origin, what: "a traf without tfdt" });
        }
        (None, None) => 0,
    };
    let mut cursor = base;
    let mut first_run = true;
    for c in children(traf, origin) {
        let (kind, body, at) = c?;
        if &kind != b"trun" {
            continue;
        }
        let flags = be32(body, 0).ok_or(short(at))? & 0xff_ffff;
        let count = u64::from(be32(body, 4).ok_or(short(at))?);
        if count > *budget {
            let max = MAX_PART_SAMPLES as u64;
            return Err(ReadError::TooLarge { what: "samples in a moof", offset: at, len: max - *budget + count, max });
        }
        *budget -= count;
        let mut pos = 8usize;
        if flags & TRUN_DATA_OFFSET != 0 {
            let offset = be32(body, pos).ok_or(short(at))? as i32;
            cursor =
                base.checked_add_signed(i64::from(offset)).ok_or(malformed(at, "trun data offset before the moof"))?;
            pos += 4;
        } else if first_run {
            cursor = base;
        }
        first_run = false;
        let first_flags = if flags & TRUN_FIRST_SAMPLE_FLAGS != 0 {
            let f = be32(body, pos).ok_or(short(at))?;
            pos += 4;
            Some(f)
        } else {
            None
        };
        let present = [TRUN_DURATION, TRUN_SIZE, TRUN_FLAGS, TRUN_CTS].map(|f| flags & f != 0);
        let entry = 4 * present.iter().filter(|p| **p).count();
        let entries = body.get(pos..).ok_or(short(at))?;
        // The entries are in the box: with the budget, this bounds the work.
        if entry > 0 && ((entries.len() / entry) as u64) < count {
            return Err(malformed(at, "trun with more samples than entries"));
        }
        for i in 0..count as usize {
            let mut e = i * entry;
            let mut next = |p: bool| {
                p.then(|| {
                    let v = be32(entries, e).unwrap_or(0);
                    e += 4;
                    v
                })
            };
            let duration = next(present[0]).unwrap_or(defaults.duration);
            let size = next(present[1]).unwrap_or(defaults.size);
            let sample_flags = next(present[2]).or(first_flags.filter(|_| i == 0)).unwrap_or(defaults.flags);
            // Version 0 offsets are unsigned but written signed by some muxers; ffmpeg reads
            // both as signed, and so does this.
            let cts = next(present[3]).map_or(0, |c| i64::from(c as i32));
            if let Some((kind, _)) = track {
                samples.push(SampleInfo {
                    kind,
                    dts,
                    cts,
                    duration,
                    keyframe: sample_flags & NON_SYNC_BIT == 0,
                    offset: cursor,
                    size,
                });
            }
            dts = dts.saturating_add(i64::from(duration));
            cursor = cursor.saturating_add(u64::from(size));
        }
    }
    Ok(cursor)
}
