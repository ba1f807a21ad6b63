//! Fragmented MP4 (ISO/IEC 14496-12, CMAF) for HLS: an init segment (ftyp + moov with
//! avcC/hvcC/esds) and media segments of one moof + mdat with a traf per track.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{AudioCodec, Frame, ParamError, TrackInfo, TrackKind, Tracks, VideoCodec, h264, h265, rescale};

/// Track ids: video 1, audio 2.
const VIDEO_ID: u32 = 1;
const AUDIO_ID: u32 = 2;
/// Video media timescale.
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// Writes a box: size, type, then what `f` appends.
fn bx(out: &mut BytesMut, kind: &[u8; 4], f: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    out.put_slice(kind);
    f(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// A full box: box with version and flags.
fn full(out: &mut BytesMut, kind: &[u8; 4], version: u8, flags: u32, f: impl FnOnce(&mut BytesMut)) {
    bx(out, kind, |o| {
        o.put_u32((u32::from(version) << 24) | (flags & 0xff_ffff));
        f(o);
    })
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// Whether these fMP4 segments carry a track: video, AAC and MP3 (Opus and G.711 are left out).
pub fn carries(track: &TrackInfo) -> bool {
    matches!(track, TrackInfo::Video { .. } | TrackInfo::Audio { codec: AudioCodec::Aac | AudioCodec::Mp3, .. })
}

/// The media timescale of a track in fMP4: 90 kHz for video, the sample rate for audio.
pub fn timescale(track: &TrackInfo) -> u32 {
    match track {
        TrackInfo::Video { .. } => VIDEO_TIMESCALE,
        TrackInfo::Audio { sample_rate, .. } => (*sample_rate).max(1),
    }
}

/// Picture size of a video track, from its SPS.
pub fn dimensions(track: &TrackInfo) -> Option<(u32, u32)> {
    match track {
        TrackInfo::Video { codec: VideoCodec::H264, config, .. } => {
            let c = h264::AvcConfig::parse(config).ok()?;
            h264::sps_dimensions(c.sps.first()?).ok()
        }
        TrackInfo::Video { codec: VideoCodec::H265, config, .. } => {
            let c = h265::HevcConfig::parse(config).ok()?;
            h265::parse_sps(c.sps.first()?).ok().map(|i| (i.width, i.height))
        }
        TrackInfo::Audio { .. } => None,
    }
}

/// The RFC 6381 codec string of a track (`avc1.64001f`, `hvc1.1.6.L93.B0`, `mp4a.40.2`).
pub fn codec_string(track: &TrackInfo) -> Option<String> {
    match track {
        TrackInfo::Video { codec: VideoCodec::H264, config, .. } => {
            Some(h264::AvcConfig::parse(config).ok()?.codec_string())
        }
        TrackInfo::Video { codec: VideoCodec::H265, config, .. } => {
            Some(h265::HevcConfig::parse(config).ok()?.codec_string())
        }
        TrackInfo::Audio { codec: AudioCodec::Aac, config, .. } => {
            let asc = crate::aac::AudioSpecificConfig::parse(config).ok()?;
            Some(format!("mp4a.40.{}", asc.object_type))
        }
        TrackInfo::Audio { codec: AudioCodec::Mp3, .. } => Some("mp4a.40.34".into()),
        TrackInfo::Audio { .. } => None,
    }
}

fn descriptor(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    // Four-byte length form, as most muxers write it.
    let len = body.len() as u32;
    out.put_slice(&[
        0x80 | (len >> 21) as u8 & 0x7f,
        0x80 | (len >> 14) as u8 & 0x7f,
        0x80 | (len >> 7) as u8 & 0x7f,
        len as u8 & 0x7f,
    ]);
    out.put_slice(body);
}

fn sample_entry(out: &mut BytesMut, track: &TrackInfo) -> Result<(), ParamError> {
    match track {
        TrackInfo::Video { codec, config, .. } => {
            let (w, h) = dimensions(track).ok_or(ParamError::Missing("SPS"))?;
            let (kind, cfg_kind) = match codec {
                VideoCodec::H264 => (b"avc1", b"avcC"),
                VideoCodec::H265 => (b"hvc1", b"hvcC"),
            };
            bx(out, kind, |o| {
                o.put_slice(&[0; 6]);
                o.put_u16(1); // data_reference_index
                o.put_slice(&[0; 16]);
                o.put_u16(w as u16);
                o.put_u16(h as u16);
                o.put_u32(0x0048_0000);
                o.put_u32(0x0048_0000);
                o.put_u32(0);
                o.put_u16(1); // frame_count
                o.put_slice(&[0; 32]); // compressorname
                o.put_u16(0x0018);
                o.put_i16(-1);
                bx(o, cfg_kind, |o| o.put_slice(config));
            });
        }
        TrackInfo::Audio { codec, config, sample_rate, channels, .. } => {
            bx(out, b"mp4a", |o| {
                o.put_slice(&[0; 6]);
                o.put_u16(1);
                o.put_slice(&[0; 8]);
                o.put_u16(u16::from(*channels).max(1));
                o.put_u16(16);
                o.put_u32(0);
                o.put_u32(sample_rate.min(&65535) << 16);
                full(o, b"esds", 0, 0, |o| {
                    let oti = if *codec == AudioCodec::Aac { 0x40 } else { 0x6b };
                    let mut dcd = BytesMut::new();
                    dcd.put_slice(&[oti, 0x15, 0, 0, 0]);
                    dcd.put_u32(0);
                    dcd.put_u32(0);
                    if !config.is_empty() {
                        descriptor(&mut dcd, 0x05, config);
                    }
                    let mut es = BytesMut::new();
                    es.put_u16(u16::try_from(AUDIO_ID).unwrap_or(2));
                    es.put_u8(0);
                    descriptor(&mut es, 0x04, &dcd);
                    descriptor(&mut es, 0x06, &[0x02]);
                    descriptor(o, 0x03, &es);
                });
            });
        }
    }
    Ok(())
}

fn trak(out: &mut BytesMut, id: u32, track: &TrackInfo) -> Result<(), ParamError> {
    let mut entry = BytesMut::new();
    sample_entry(&mut entry, track)?;
    let video = track.kind() == TrackKind::Video;
    let (w, h) = dimensions(track).unwrap_or((0, 0));
    bx(out, b"trak", |o| {
        full(o, b"tkhd", 0, 3, |o| {
            o.put_slice(&[0; 8]); // creation, modification
            o.put_u32(id);
            o.put_u32(0);
            o.put_u32(0); // duration
            o.put_slice(&[0; 8]);
            o.put_u16(0); // layer
            o.put_u16(0); // alternate_group
            o.put_u16(if video { 0 } else { 0x0100 }); // volume
            o.put_u16(0);
            for m in MATRIX {
                o.put_u32(m);
            }
            o.put_u32(w << 16);
            o.put_u32(h << 16);
        });
        bx(o, b"mdia", |o| {
            full(o, b"mdhd", 0, 0, |o| {
                o.put_slice(&[0; 8]);
                o.put_u32(timescale(track));
                o.put_u32(0);
                o.put_u16(0x55c4); // language "und"
                o.put_u16(0);
            });
            full(o, b"hdlr", 0, 0, |o| {
                o.put_u32(0);
                o.put_slice(if video { b"vide" } else { b"soun" });
                o.put_slice(&[0; 12]);
                o.put_slice(if video { b"VideoHandler\0" } else { b"SoundHandler\0" });
            });
            bx(o, b"minf", |o| {
                if video {
                    full(o, b"vmhd", 0, 1, |o| o.put_slice(&[0; 8]));
                } else {
                    full(o, b"smhd", 0, 0, |o| o.put_u32(0));
                }
                bx(o, b"dinf", |o| {
                    full(o, b"dref", 0, 0, |o| {
                        o.put_u32(1);
                        full(o, b"url ", 0, 1, |_| {});
                    })
                });
                bx(o, b"stbl", |o| {
                    full(o, b"stsd", 0, 0, |o| {
                        o.put_u32(1);
                        o.put_slice(&entry);
                    });
                    full(o, b"stts", 0, 0, |o| o.put_u32(0));
                    full(o, b"stsc", 0, 0, |o| o.put_u32(0));
                    full(o, b"stsz", 0, 0, |o| o.put_u64(0));
                    full(o, b"stco", 0, 0, |o| o.put_u32(0));
                });
            });
        });
    });
    Ok(())
}

/// The init segment for these tracks.
pub fn init_segment(tracks: &Tracks) -> Result<Bytes, ParamError> {
    let mut out = BytesMut::new();
    bx(&mut out, b"ftyp", |o| {
        o.put_slice(b"iso6");
        o.put_u32(0);
        for b in [b"iso6", b"cmfc", b"mp41"] {
            o.put_slice(b);
        }
    });
    let mut traks = BytesMut::new();
    let mut ids = Vec::new();
    if let Some(v) = &tracks.video {
        trak(&mut traks, VIDEO_ID, v)?;
        ids.push(VIDEO_ID);
    }
    if let Some(a) = tracks.audio.as_ref().filter(|a| carries(a)) {
        trak(&mut traks, AUDIO_ID, a)?;
        ids.push(AUDIO_ID);
    }
    bx(&mut out, b"moov", |o| {
        full(o, b"mvhd", 0, 0, |o| {
            o.put_slice(&[0; 8]);
            o.put_u32(1000);
            o.put_u32(0);
            o.put_u32(0x0001_0000); // rate
            o.put_u16(0x0100); // volume
            o.put_slice(&[0; 10]);
            for m in MATRIX {
                o.put_u32(m);
            }
            o.put_slice(&[0; 24]);
            o.put_u32(3); // next_track_ID
        });
        o.put_slice(&traks);
        bx(o, b"mvex", |o| {
            for id in &ids {
                full(o, b"trex", 0, 0, |o| {
                    o.put_u32(*id);
                    o.put_u32(1);
                    o.put_u32(0);
                    o.put_u32(0);
                    o.put_u32(0);
                });
            }
        });
    });
    Ok(out.freeze())
}

/// One sample of a fragment, in the track's media timescale.
struct Sample<'a> {
    dts: i64,
    duration: u32,
    cts: i32,
    keyframe: bool,
    data: &'a [u8],
}

fn samples<'a>(frames: &'a [&'a Frame], track: &TrackInfo, next_dts: Option<i64>) -> Vec<Sample<'a>> {
    let ts = timescale(track);
    let clock = track.clock_rate();
    let dts: Vec<i64> = frames.iter().map(|f| rescale(f.dts, clock, ts)).collect();
    let default_duration = match track {
        // AAC frames are 1024 samples.
        TrackInfo::Audio { codec: AudioCodec::Aac, .. } => 1024,
        TrackInfo::Audio { .. } => 1152,
        TrackInfo::Video { .. } => ts / 30,
    };
    let next = next_dts.map(|n| rescale(n, clock, ts));
    (0..frames.len())
        .map(|i| {
            let end = dts.get(i + 1).copied().or(next);
            // Saturating: timestamps come from the publisher and may be anywhere in i64.
            let span = |a: i64, b: i64| a.saturating_sub(b).clamp(0, i64::from(u32::MAX)) as u32;
            let duration = match end {
                Some(e) => span(e, dts[i]),
                None if i > 0 => span(dts[i], dts[i - 1]),
                None => default_duration,
            };
            let cts = rescale(frames[i].pts.saturating_sub(frames[i].dts), clock, ts);
            Sample {
                dts: dts[i],
                duration,
                cts: cts.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
                keyframe: frames[i].keyframe,
                data: &frames[i].data,
            }
        })
        .collect()
}

/// A media segment: one moof with a traf per track, then one mdat. `next_*` are the decode
/// times of the first frames after the segment, for exact last-sample durations.
pub fn media_segment(
    sequence: u32,
    tracks: &Tracks,
    frames: &[std::sync::Arc<Frame>],
    next_video_dts: Option<i64>,
    next_audio_dts: Option<i64>,
) -> Bytes {
    let mut parts: Vec<(u32, Vec<Sample<'_>>)> = Vec::new();
    let video: Vec<&Frame> = frames.iter().filter(|f| f.kind == TrackKind::Video).map(|f| &**f).collect();
    let audio: Vec<&Frame> = frames.iter().filter(|f| f.kind == TrackKind::Audio).map(|f| &**f).collect();
    if let (Some(t), false) = (&tracks.video, video.is_empty()) {
        parts.push((VIDEO_ID, samples(&video, t, next_video_dts)));
    }
    if let (Some(t), false) = (tracks.audio.as_ref().filter(|a| carries(a)), audio.is_empty()) {
        parts.push((AUDIO_ID, samples(&audio, t, next_audio_dts)));
    }
    let mut moof = BytesMut::new();
    let mut offset_fields = Vec::new();
    bx(&mut moof, b"moof", |o| {
        full(o, b"mfhd", 0, 0, |o| o.put_u32(sequence));
        for (id, s) in &parts {
            bx(o, b"traf", |o| {
                // default-base-is-moof
                full(o, b"tfhd", 0, 0x02_0000, |o| o.put_u32(*id));
                full(o, b"tfdt", 1, 0, |o| o.put_u64(s.first().map_or(0, |x| x.dts.max(0) as u64)));
                // data-offset, duration, size, flags, composition offsets (signed: version 1)
                full(o, b"trun", 1, 0x0001 | 0x0100 | 0x0200 | 0x0400 | 0x0800, |o| {
                    o.put_u32(s.len() as u32);
                    offset_fields.push(o.len());
                    o.put_u32(0);
                    for x in s {
                        o.put_u32(x.duration);
                        o.put_u32(x.data.len() as u32);
                        let flags = if *id == AUDIO_ID || x.keyframe { 0x0200_0000 } else { 0x0101_0000 };
                        o.put_u32(flags);
                        o.put_i32(x.cts);
                    }
                });
            });
        }
    });
    // Patch data offsets: from the start of moof to each track's bytes in mdat.
    let mut data_pos = moof.len() + 8;
    for ((_, s), field) in parts.iter().zip(offset_fields) {
        moof[field..field + 4].copy_from_slice(&(data_pos as u32).to_be_bytes());
        data_pos += s.iter().map(|x| x.data.len()).sum::<usize>();
    }
    let mdat_len = data_pos - moof.len();
    let mut out = BytesMut::with_capacity(data_pos);
    out.put_slice(&moof);
    out.put_u32(mdat_len as u32);
    out.put_slice(b"mdat");
    for (_, s) in &parts {
        for x in s {
            out.put_slice(x.data);
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Frame;

    fn tracks() -> Tracks {
        let sps = Bytes::from_static(&[
            0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00,
            0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60,
        ]);
        let pps = Bytes::from_static(&[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0]);
        Tracks {
            video: Some(TrackInfo::Video {
                codec: VideoCodec::H264,
                config: h264::build_avcc(&[sps], &[pps]).unwrap(),
                clock_rate: 1000,
            }),
            audio: Some(TrackInfo::Audio {
                codec: AudioCodec::Aac,
                config: Bytes::from_static(&[0x12, 0x10]),
                sample_rate: 0,
                channels: 0,
                clock_rate: 0,
            }),
            metadata: None,
        }
    }

    #[test]
    fn total_on_extreme_timestamps_and_empty_frames() {
        let t = tracks();
        assert!(init_segment(&t).is_ok());
        let extremes = [i64::MIN, -1, 0, 1, i64::MAX];
        let mut frames = Vec::new();
        for (i, dts) in extremes.iter().enumerate() {
            for pts in extremes {
                let kind = if i % 2 == 0 { TrackKind::Video } else { TrackKind::Audio };
                frames.push(Frame::new(kind, *dts, pts, i == 0, Bytes::new()));
            }
        }
        for next in [None, Some(i64::MIN), Some(i64::MAX)] {
            let seg = media_segment(1, &t, &frames, next, next);
            assert_eq!(&seg[4..8], b"moof");
        }
    }

    #[test]
    fn init_segment_of_a_config_without_sps_is_an_error() {
        let mut t = tracks();
        t.video =
            Some(TrackInfo::Video { codec: VideoCodec::H265, config: Bytes::from_static(&[1; 23]), clock_rate: 1 });
        assert!(init_segment(&t).is_err());
        t.video = Some(TrackInfo::Video { codec: VideoCodec::H264, config: Bytes::new(), clock_rate: 1 });
        assert!(init_segment(&t).is_err());
    }
}
