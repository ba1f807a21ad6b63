//! Reading MP4 files (ISO/IEC 14496-12, the ISO base media file format): each track's codec
//! parameters and its samples as [`Frame`]s, for publishing a file (`ferrocast-bench`) and,
//! later, on-demand playback.
//!
//! Files with complete sample tables in `moov` only (what ffmpeg and cameras write by
//! default); fragmented files are refused. H.264, H.265 and AAC tracks are read, others
//! skipped. Every size, count and offset from the file is checked against the file before it
//! is used: a damaged or hostile file gives an error, never a panic or an allocation it does
//! not pay for with its own bytes.

use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use crate::{Frame, TrackInfo, TrackKind, VideoCodec};

/// Why a file could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Mp4Error {
    /// No `moov` box.
    #[error("not an MP4 file (no moov box)")]
    NoMoov,
    /// A box that is cut short or contradicts itself.
    #[error("malformed MP4: {0}")]
    Malformed(&'static str),
    /// Samples in movie fragments (`moof`), which this reader does not follow.
    #[error("fragmented MP4 is not supported")]
    Fragmented,
}

/// One track of a file.
#[derive(Debug)]
pub struct Mp4Track {
    /// Codec parameters; timestamps are in the track's timescale (its `clock_rate`).
    pub info: TrackInfo,
    /// The samples in decode order. Video data is length-prefixed NAL units (4-byte lengths).
    pub frames: Vec<Arc<Frame>>,
}

/// The H.264, H.265 and AAC tracks of a whole file held in memory.
pub fn read_file(data: &Bytes) -> Result<Vec<Mp4Track>, Mp4Error> {
    let mut moov = None;
    for b in boxes(data) {
        let (kind, body) = b?;
        match &kind {
            b"moov" => moov = Some(body),
            b"moof" => return Err(Mp4Error::Fragmented),
            _ => {}
        }
    }
    let moov = moov.ok_or(Mp4Error::NoMoov)?;
    let mut tracks = Vec::new();
    for b in boxes(moov) {
        let (kind, body) = b?;
        match &kind {
            b"mvex" => return Err(Mp4Error::Fragmented),
            b"trak" => {
                if let Some(t) = read_track(data, body)? {
                    tracks.push(t);
                }
            }
            _ => {}
        }
    }
    Ok(tracks)
}

/// The boxes in `data`: (type, body).
fn boxes(data: &[u8]) -> impl Iterator<Item = Result<([u8; 4], &[u8]), Mp4Error>> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let r = (|| {
            let size = u32_at(rest, 0).ok_or(Mp4Error::Malformed("box header"))? as u64;
            let kind: [u8; 4] =
                rest.get(4..8).and_then(|k| k.try_into().ok()).ok_or(Mp4Error::Malformed("box header"))?;
            let (header, size) = match size {
                0 => (8, rest.len() as u64),
                1 => (16, u64_at(rest, 8).ok_or(Mp4Error::Malformed("box header"))?),
                s => (8, s),
            };
            if size < header || size > rest.len() as u64 {
                return Err(Mp4Error::Malformed("box size"));
            }
            let body = &rest[header as usize..size as usize];
            rest = &rest[size as usize..];
            Ok((kind, body))
        })();
        if r.is_err() {
            rest = &[];
        }
        Some(r)
    })
}

/// The body of the first child box of this type.
fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Result<Option<&'a [u8]>, Mp4Error> {
    for b in boxes(data) {
        let (k, body) = b?;
        if &k == kind {
            return Ok(Some(body));
        }
    }
    Ok(None)
}

fn need<'a>(data: &'a [u8], kind: &[u8; 4], what: &'static str) -> Result<&'a [u8], Mp4Error> {
    child(data, kind)?.ok_or(Mp4Error::Malformed(what))
}

fn u32_at(d: &[u8], i: usize) -> Option<u32> {
    d.get(i..i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(d: &[u8], i: usize) -> Option<u64> {
    d.get(i..i + 8).map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
}

/// A full box's table: the entry count after version and flags, and the entries, each
/// `size` bytes, checked to be in the box.
fn table<'a>(body: &'a [u8], header: usize, size: usize, what: &'static str) -> Result<(usize, &'a [u8]), Mp4Error> {
    let count = u32_at(body, header).ok_or(Mp4Error::Malformed(what))? as usize;
    let start = header + 4;
    let len = count.checked_mul(size).ok_or(Mp4Error::Malformed(what))?;
    let entries = body.get(start..start + len).ok_or(Mp4Error::Malformed(what))?;
    Ok((count, entries))
}

fn read_track(file: &Bytes, trak: &[u8]) -> Result<Option<Mp4Track>, Mp4Error> {
    let mdia = need(trak, b"mdia", "trak without mdia")?;
    let mdhd = need(mdia, b"mdhd", "mdia without mdhd")?;
    let timescale = match mdhd.first() {
        Some(1) => u32_at(mdhd, 20),
        _ => u32_at(mdhd, 12),
    }
    .filter(|t| *t > 0)
    .ok_or(Mp4Error::Malformed("mdhd timescale"))?;
    let stbl = need(need(mdia, b"minf", "mdia without minf")?, b"stbl", "minf without stbl")?;
    let stsd = need(stbl, b"stsd", "stbl without stsd")?;
    let Some(info) = sample_entry(stsd.get(8..).ok_or(Mp4Error::Malformed("stsd"))?, timescale)? else {
        return Ok(None);
    };
    let frames = samples(file, stbl, info.kind())?;
    Ok(Some(Mp4Track { info, frames }))
}

/// The codec parameters of a track's first sample entry, if it is one this reader knows.
fn sample_entry(entries: &[u8], timescale: u32) -> Result<Option<TrackInfo>, Mp4Error> {
    let Some(entry) = boxes(entries).next() else { return Ok(None) };
    let (kind, body) = entry?;
    let video = |codec, config_box: &[u8; 4]| -> Result<Option<TrackInfo>, Mp4Error> {
        // VisualSampleEntry: 78 bytes of fields, then boxes (ISO/IEC 14496-12 12.1.3).
        let config = need(
            body.get(78..).ok_or(Mp4Error::Malformed("visual sample entry"))?,
            config_box,
            "no codec configuration",
        )?;
        // The NAL unit length size: frames here carry 4-byte lengths.
        let length_size = match codec {
            VideoCodec::H264 => config.get(4).map(|b| (b & 3) + 1),
            VideoCodec::H265 => config.get(21).map(|b| (b & 3) + 1),
        };
        if length_size != Some(4) {
            return Err(Mp4Error::Malformed("NAL unit length size other than 4"));
        }
        Ok(Some(TrackInfo::Video { codec, config: Bytes::copy_from_slice(config), clock_rate: timescale }))
    };
    match &kind {
        b"avc1" | b"avc3" => video(VideoCodec::H264, b"avcC"),
        b"hvc1" | b"hev1" => video(VideoCodec::H265, b"hvcC"),
        b"mp4a" => {
            // AudioSampleEntry: 28 bytes of fields, then boxes (12.2.3).
            let esds =
                need(body.get(28..).ok_or(Mp4Error::Malformed("audio sample entry"))?, b"esds", "mp4a without esds")?;
            let Some(asc) = decoder_specific_info(esds.get(4..).unwrap_or_default()) else {
                return Err(Mp4Error::Malformed("esds without an AudioSpecificConfig"));
            };
            let track = crate::aac::track(Bytes::copy_from_slice(asc), timescale);
            Ok(Some(track.map_err(|_| Mp4Error::Malformed("AudioSpecificConfig"))?))
        }
        _ => Ok(None),
    }
}

/// The DecoderSpecificInfo inside an ES_Descriptor (ISO/IEC 14496-1 7.2.6.5): the same
/// reading as fragmented files get.
fn decoder_specific_info(d: &[u8]) -> Option<&[u8]> {
    crate::fmp4_read::decoder_config(d).and_then(|(_, dsi)| dsi)
}

/// A track's samples from its sample table (ISO/IEC 14496-12 8.6-8.7).
fn samples(file: &Bytes, stbl: &[u8], kind: TrackKind) -> Result<Vec<Arc<Frame>>, Mp4Error> {
    let stsz = need(stbl, b"stsz", "stbl without stsz")?;
    let fixed = u32_at(stsz, 4).ok_or(Mp4Error::Malformed("stsz"))?;
    let (count, sizes) = if fixed == 0 {
        table(stsz, 8, 4, "stsz")?
    } else {
        (u32_at(stsz, 8).ok_or(Mp4Error::Malformed("stsz"))? as usize, &[][..])
    };
    // Every sample has at least one byte in the file, so the file bounds the count.
    if count > file.len() {
        return Err(Mp4Error::Malformed("more samples than bytes"));
    }
    let size_of = |i: usize| if fixed == 0 { u32_at(sizes, i * 4).unwrap_or(0) } else { fixed };
    let (_, stts) = table(need(stbl, b"stts", "stbl without stts")?, 4, 8, "stts")?;
    let ctts = match child(stbl, b"ctts")? {
        Some(c) => Some(table(c, 4, 8, "ctts")?.1),
        None => None,
    };
    let sync = match child(stbl, b"stss")? {
        Some(s) => Some(table(s, 4, 4, "stss")?.1),
        None => None,
    };
    let (_, stsc) = table(need(stbl, b"stsc", "stbl without stsc")?, 4, 12, "stsc")?;
    let offsets: Vec<u64> = if let Some(co) = child(stbl, b"stco")? {
        let (_, e) = table(co, 4, 4, "stco")?;
        e.chunks_exact(4).map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))).collect()
    } else {
        let (_, e) = table(need(stbl, b"co64", "stbl without stco or co64")?, 4, 8, "co64")?;
        e.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default())).collect()
    };
    // Runs of (count, value) entries, walked one sample at a time.
    let runs = |t: &[u8]| -> Vec<(u32, u32)> {
        t.chunks_exact(8)
            .map(|c| (u32::from_be_bytes([c[0], c[1], c[2], c[3]]), u32::from_be_bytes([c[4], c[5], c[6], c[7]])))
            .collect()
    };
    let mut deltas = runs(stts).into_iter().flat_map(|(n, d)| std::iter::repeat_n(d, n as usize));
    let mut offsets_cts = ctts.map(|c| runs(c).into_iter().flat_map(|(n, o)| std::iter::repeat_n(o, n as usize)));
    let mut syncs = sync.map(|s| s.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).peekable());
    let chunk_runs: Vec<(u32, u32)> = stsc
        .chunks_exact(12)
        .map(|c| (u32::from_be_bytes([c[0], c[1], c[2], c[3]]), u32::from_be_bytes([c[4], c[5], c[6], c[7]])))
        .collect();
    let mut frames = Vec::with_capacity(count.min(1 << 16));
    let mut dts: i64 = 0;
    let mut sample = 0usize;
    for (c, &offset) in offsets.iter().enumerate() {
        let chunk = c as u64 + 1;
        let per_chunk = chunk_runs.iter().rev().find(|(first, _)| u64::from(*first) <= chunk).map_or(0, |r| r.1);
        let mut at = offset;
        for _ in 0..per_chunk {
            if sample >= count {
                break;
            }
            let size = u64::from(size_of(sample));
            let end = at
                .checked_add(size)
                .filter(|e| *e <= file.len() as u64)
                .ok_or(Mp4Error::Malformed("sample outside the file"))?;
            let data = file.slice(at as usize..end as usize);
            at = end;
            let number = sample as u32 + 1;
            let keyframe = match &mut syncs {
                None => true,
                Some(s) => {
                    while s.next_if(|n| *n < number).is_some() {}
                    s.next_if_eq(&number).is_some()
                }
            };
            // Version 1 offsets are signed; version 0 ones are small enough either way.
            let cts = offsets_cts.as_mut().and_then(Iterator::next).map_or(0, |o| i64::from(o as i32));
            let keyframe = keyframe || kind == TrackKind::Audio;
            frames.push(Frame::new(kind, dts, dts + cts, keyframe, data));
            dts += i64::from(deltas.next().unwrap_or(0));
            sample += 1;
        }
    }
    if sample < count {
        return Err(Mp4Error::Malformed("fewer samples in chunks than in stsz"));
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn bad_files_are_errors() {
        assert_eq!(read_file(&Bytes::from_static(b"")).unwrap_err(), Mp4Error::NoMoov);
        assert_eq!(read_file(&Bytes::from_static(b"\0\0\0\x20ftypisom")).unwrap_err(), Mp4Error::Malformed("box size"));
        let moof = mp4_box(b"moof", &[]);
        assert_eq!(read_file(&Bytes::from(moof)).unwrap_err(), Mp4Error::Fragmented);
        // A sample table that claims four billion samples in a tiny file.
        let stsz = mp4_box(b"stsz", &[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        let stbl = mp4_box(b"stbl", &[mp4_box(b"stsd", &[0; 8]), stsz].concat());
        assert!(samples(&Bytes::new(), &stbl[8..], TrackKind::Video).is_err());
    }

    #[test]
    fn no_box_past_its_parent() {
        let mut v = mp4_box(b"moov", &mp4_box(b"trak", &[]));
        v[3] = 0xff; // moov claims more than the file
        assert!(read_file(&Bytes::from(v)).is_err());
    }
}
