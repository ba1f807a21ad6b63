//! Movie fragments: the samples of a moof's track fragments (ISO/IEC 14496-12 8.8.4-8.8.12).

use super::boxes::{be32, be64, box_header, child, children, need};
use super::{Layout, ReadError, SampleInfo, malformed, max_media_ticks};
use crate::fmp4::MAX_PART_SAMPLES;

/// A parsed moof.
#[derive(Debug)]
pub(super) struct Moof {
    pub(super) sequence: u32,
    pub(super) samples: Vec<SampleInfo>,
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
pub(super) fn parse_moof(layout: &Layout, moof: &[u8], origin: u64) -> Result<Moof, ReadError> {
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
                data_end = parse_traf(layout, body, at, origin, base, &mut budget, &mut samples)?;
            }
            _ => {}
        }
    }
    let sequence = sequence.ok_or(malformed(origin, "moof without mfhd"))?;
    Ok(Moof { sequence, samples })
}

/// One traf (body at file offset `origin`): appends its samples and returns where its data
/// ends, from the moof's start.
pub(super) fn parse_traf(
    layout: &Layout,
    traf: &[u8],
    origin: u64,
    moof_at: u64,
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
    // An explicit base-data-offset is a file offset (8.8.7.1): ffmpeg writes one unless told
    // `default_base_moof`. Kept relative to the moof, as every other offset here.
    let explicit_base = if flags & TFHD_BASE_DATA_OFFSET != 0 {
        let b = be64(tfhd, pos).ok_or(short(tfhd_at))?;
        pos += 8;
        Some(b.checked_sub(moof_at).ok_or(malformed(tfhd_at, "base-data-offset before its moof"))?)
    } else {
        None
    };
    let mut field = |present: bool| -> Result<Option<u32>, ReadError> {
        if !present {
            return Ok(None);
        }
        let v = be32(tfhd, pos).ok_or(short(tfhd_at))?;
        pos += 4;
        Ok(Some(v))
    };
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
    let base = match explicit_base {
        Some(b) => b,
        None if flags & TFHD_DEFAULT_BASE_IS_MOOF != 0 => 0,
        None => implicit_base,
    };
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
    // Times stay under MAX_MEDIA_TIME_US (in this track's ticks): see its doc.
    let max_ticks = max_media_ticks(track.map_or(1, |(_, t)| t.timescale));
    if track.is_some() && dts > max_ticks {
        return Err(malformed(origin, "tfdt past the latest time a file may state"));
    }
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
                if dts.saturating_add(i64::from(duration)) > max_ticks {
                    return Err(malformed(at, "a sample past the latest time a file may state"));
                }
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

/// Checks that every sample's data lies in the mdat's body, `from..to` from the moof's start.
pub(super) fn check_data(moof: &Moof, from: u64, to: u64, origin: u64) -> Result<(), ReadError> {
    for s in &moof.samples {
        if s.offset < from || s.offset.saturating_add(u64::from(s.size)) > to {
            return Err(malformed(origin, "sample data outside the mdat after its moof"));
        }
    }
    Ok(())
}
