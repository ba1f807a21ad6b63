//! The per-file table of a recording: where each part starts in the file, the media time it
//! covers and its first keyframe, written beside the file (`STEM.idx`) as parts are written,
//! and rebuilt from the file's moofs when missing or short ([`from_scan`]). Seeking,
//! fast-forward and progressive-MP4 building read it without reading media data.
//!
//! Format: the magic `FCIDX001`, then one 40-byte record per part, big-endian: moof offset
//! (u64), part length (u64), start, end and first keyframe time (i64 µs from the file's
//! start; -1: no keyframe).

use ferrocast_media::fmp4_read::Scan;
use ferrocast_media::rescale;

/// The first bytes of a table.
const MAGIC: &[u8; 8] = b"FCIDX001";
/// Bytes per record.
const RECORD: usize = 40;

/// One part of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Offset of its moof in the file.
    pub offset: u64,
    /// Bytes of moof + mdat.
    pub len: u64,
    /// Media time of its first sample, µs from the file's start.
    pub start_us: i64,
    /// Media time at which its last sample ends, µs from the file's start.
    pub end_us: i64,
    /// Media time of its first keyframe, µs from the file's start.
    pub keyframe_us: Option<i64>,
}

/// The magic a new table starts with.
pub fn header() -> &'static [u8] {
    MAGIC
}

/// One record.
pub fn encode(p: &Part) -> [u8; RECORD] {
    let mut b = [0u8; RECORD];
    b[0..8].copy_from_slice(&p.offset.to_be_bytes());
    b[8..16].copy_from_slice(&p.len.to_be_bytes());
    b[16..24].copy_from_slice(&p.start_us.to_be_bytes());
    b[24..32].copy_from_slice(&p.end_us.to_be_bytes());
    b[32..40].copy_from_slice(&p.keyframe_us.unwrap_or(-1).to_be_bytes());
    b
}

/// The parts of a table; None when it is not one. A record cut short (a crash while it was
/// written) is left out.
pub fn decode(data: &[u8]) -> Option<Vec<Part>> {
    let body = data.strip_prefix(MAGIC.as_slice())?;
    let i64_at = |r: &[u8], at: usize| i64::from_be_bytes(r[at..at + 8].try_into().unwrap_or_default());
    Some(
        body.chunks_exact(RECORD)
            .map(|r| Part {
                offset: i64_at(r, 0) as u64,
                len: i64_at(r, 8) as u64,
                start_us: i64_at(r, 16),
                end_us: i64_at(r, 24),
                keyframe_us: Some(i64_at(r, 32)).filter(|k| *k >= 0),
            })
            .collect(),
    )
}

/// The parts a scan of the file found.
pub fn from_scan(scan: &Scan) -> Vec<Part> {
    let ts = |t: Option<&ferrocast_media::TrackInfo>| t.map_or(1000, |t| t.clock_rate().max(1));
    let (tv, ta) = (ts(scan.tracks.video.as_ref()), ts(scan.tracks.audio.as_ref()));
    let us = |t: Option<i64>, clock: u32| t.map(|t| rescale(t, clock, 1_000_000));
    scan.parts
        .iter()
        .map(|p| Part {
            offset: p.offset,
            len: p.len,
            start_us: [us(p.start.video, tv), us(p.start.audio, ta)].into_iter().flatten().min().unwrap_or(0),
            end_us: [us(p.end.video, tv), us(p.end.audio, ta)].into_iter().flatten().max().unwrap_or(0),
            keyframe_us: us(p.keyframe, tv),
        })
        .collect()
}

/// The part whose first keyframe is the last one at or before `at_us` (µs from the file's
/// start): where playing from `at_us` starts. The first part with a keyframe when `at_us` is
/// before all.
pub fn keyframe_at(parts: &[Part], at_us: i64) -> Option<&Part> {
    let keyed: Vec<&Part> = parts.iter().filter(|p| p.keyframe_us.is_some()).collect();
    let i = keyed.partition_point(|p| p.keyframe_us.unwrap_or(i64::MAX) <= at_us);
    keyed.get(i.saturating_sub(1)).copied()
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

    #[test]
    fn round_trips_and_finds_keyframes() {
        let parts: Vec<Part> = (0..10).map(|i| part(i, i % 2 == 0)).collect();
        let mut table = header().to_vec();
        for p in &parts {
            table.extend_from_slice(&encode(p));
        }
        // A record cut short is left out.
        table.extend_from_slice(&encode(&part(10, true))[..17]);
        assert_eq!(decode(&table), Some(parts.clone()));
        assert_eq!(decode(b"garbage"), None);
        assert_eq!(keyframe_at(&parts, 3_500_000).map(|p| p.start_us), Some(2_000_000));
        assert_eq!(keyframe_at(&parts, 4_000_020).map(|p| p.start_us), Some(4_000_000));
        assert_eq!(keyframe_at(&parts, -5).map(|p| p.start_us), Some(0), "before all: the first");
        assert_eq!(keyframe_at(&parts, i64::MAX).map(|p| p.start_us), Some(8_000_000));
        assert_eq!(keyframe_at(&[], 0), None);
    }
}
