//! The init segment: tracks, their timescales and codec parameters from the moov's sample
//! entries, and the `trex` defaults of mvex (ISO/IEC 14496-12 8.3-8.5, 8.8.3).

use bytes::Bytes;

use super::boxes::{be16, be32, be64, child, children, need};
use super::{Layout, ReadError, SampleDefaults, TrackLayout, malformed};
use crate::{AudioCodec, TrackInfo, TrackKind, Tracks, VideoCodec};

/// The tracks of a moov (body at `origin`) and their layout.
pub(super) fn parse_moov(moov: &[u8], origin: u64) -> Result<(Tracks, Layout), ReadError> {
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
pub(crate) fn parse_trak(trak: &[u8], origin: u64) -> Result<Option<(u32, u32, TrackInfo)>, ReadError> {
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
pub(super) fn sample_entry(
    kind: &[u8; 4],
    body: &[u8],
    at: u64,
    timescale: u32,
) -> Result<Option<TrackInfo>, ReadError> {
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
pub(crate) fn decoder_config(d: &[u8]) -> Option<(u8, Option<&[u8]>)> {
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
