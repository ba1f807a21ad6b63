//! Fragmented MP4 (ISO/IEC 14496-12, CMAF) for HLS and for recordings: an init segment
//! (ftyp + moov with mvex) and fragments of one moof + mdat with a traf per track.
//!
//! HLS ([`init_segment`], [`media_segment`]) carries the tracks [`carries`] accepts. A
//! recording ([`recording_init`], then [`recording_part`] after [`recording_part`] appended to
//! the same file) holds every codec the hub carries that MP4 can hold ([`records`]), so a file
//! cut anywhere stays playable up to its last complete part; [`crate::fmp4_read`] reads it back.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::{AudioCodec, Frame, ParamError, TrackInfo, TrackKind, Tracks, VideoCodec, h264, h265, opus, rescale};

/// Track ids: video 1, audio 2.
pub const VIDEO_ID: u32 = 1;
/// The audio track's id.
pub const AUDIO_ID: u32 = 2;
/// Video media timescale.
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// Writes a box: size, type, then what `f` appends.
pub(crate) fn bx(out: &mut BytesMut, kind: &[u8; 4], f: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    out.put_slice(kind);
    f(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// A full box: box with version and flags.
pub(crate) fn full(out: &mut BytesMut, kind: &[u8; 4], version: u8, flags: u32, f: impl FnOnce(&mut BytesMut)) {
    bx(out, kind, |o| {
        o.put_u32((u32::from(version) << 24) | (flags & 0xff_ffff));
        f(o);
    })
}

pub(crate) const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// Whether these fMP4 segments carry a track: video, AAC and MP3 (Opus and G.711 are left out).
pub fn carries(track: &TrackInfo) -> bool {
    matches!(track, TrackInfo::Video { .. } | TrackInfo::Audio { codec: AudioCodec::Aac | AudioCodec::Mp3, .. })
}

/// Whether a recording (fMP4 file) can hold this track: H.264, H.265, AAC, MP3, Opus (mono or
/// stereo: family 0 of "Encapsulation of Opus in ISO Base Media File Format" 4.3.2; RTP carries
/// no channel mapping for more, RFC 7587 7) and G.711 A-law and mu-law.
pub fn records(track: &TrackInfo) -> bool {
    match track {
        TrackInfo::Video { .. } => true,
        TrackInfo::Audio { codec: AudioCodec::Opus, channels, .. } => *channels <= 2,
        TrackInfo::Audio { .. } => true,
    }
}

/// The media timescale of a track in fMP4: 90 kHz for video, 48 kHz for Opus (Opus in ISOBMFF
/// 4.3.1), the sample rate for other audio.
pub fn timescale(track: &TrackInfo) -> u32 {
    match track {
        TrackInfo::Video { .. } => VIDEO_TIMESCALE,
        TrackInfo::Audio { codec: AudioCodec::Opus, .. } => OPUS_TIMESCALE,
        TrackInfo::Audio { sample_rate, .. } => (*sample_rate).max(1),
    }
}

/// Opus's media timescale: its decoders always run at 48 kHz.
pub const OPUS_TIMESCALE: u32 = 48_000;

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

/// The fields of an AudioSampleEntry (ISO/IEC 14496-12 12.2.3) before its boxes, in the
/// version 0 form QuickTime readers (ffmpeg's mov demuxer) also read.
fn audio_entry_fields(o: &mut BytesMut, channels: u16, sample_rate: u32) {
    o.put_slice(&[0; 6]);
    o.put_u16(1); // data_reference_index
    o.put_slice(&[0; 8]); // reserved (QuickTime: version 0, revision, vendor)
    o.put_u16(channels.max(1));
    o.put_u16(16); // samplesize
    o.put_u32(0); // pre_defined, reserved
    // 16.16 fixed point; rates over 65535 Hz are in the codec configuration and mdhd.
    o.put_u32(sample_rate.min(65535) << 16);
}

/// A decoder configuration record with `lengthSizeMinusOne` set to 3: frames carry 4-byte NAL
/// unit lengths whatever the publisher's record said (ingest rewrites the frames, not the
/// record; ISO/IEC 14496-15 5.3.3.1.2, 8.3.3.1.2).
fn with_four_byte_lengths(codec: VideoCodec, config: &[u8]) -> BytesMut {
    let mut c = BytesMut::from(config);
    let at = match codec {
        VideoCodec::H264 => 4,
        VideoCodec::H265 => 21,
    };
    if let Some(b) = c.get_mut(at) {
        *b |= 3;
    }
    c
}

pub(crate) fn sample_entry(out: &mut BytesMut, track: &TrackInfo) -> Result<(), ParamError> {
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
                bx(o, cfg_kind, |o| o.put_slice(&with_four_byte_lengths(*codec, config)));
            });
        }
        TrackInfo::Audio { codec: AudioCodec::Opus, channels, .. } => {
            // "Encapsulation of Opus in ISO Base Media File Format" 4.3: an `Opus` sample entry
            // at 48 kHz with an OpusSpecificBox (a plain box, not a full box).
            let channels = (*channels).clamp(1, 2);
            bx(out, b"Opus", |o| {
                audio_entry_fields(o, u16::from(channels), OPUS_TIMESCALE);
                bx(o, b"dOps", |o| {
                    o.put_u8(0); // Version
                    o.put_u8(channels); // OutputChannelCount
                    o.put_u16(0); // PreSkip: RTP does not carry it (RFC 7587)
                    o.put_u32(OPUS_TIMESCALE); // InputSampleRate (informational)
                    o.put_i16(0); // OutputGain
                    o.put_u8(0); // ChannelMappingFamily 0: one stream, mono or stereo
                });
            });
        }
        TrackInfo::Audio { codec: codec @ (AudioCodec::Pcma | AudioCodec::Pcmu), sample_rate, channels, .. } => {
            // QuickTime's G.711 sample entries, which ffmpeg's mov demuxer maps to pcm_alaw and
            // pcm_mulaw in any brand of file; a sample is one frame of 8-bit codes.
            let kind = if *codec == AudioCodec::Pcma { b"alaw" } else { b"ulaw" };
            bx(out, kind, |o| audio_entry_fields(o, u16::from(*channels), (*sample_rate).max(1)));
        }
        TrackInfo::Audio { codec, config, sample_rate, channels, .. } => {
            bx(out, b"mp4a", |o| {
                audio_entry_fields(o, u16::from(*channels), *sample_rate);
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
    init(tracks, carries, &[b"iso6", b"cmfc", b"mp41"])
}

/// The init segment of a recording: ftyp and a moov with mvex holding the tracks [`records`]
/// accepts (video id 1, audio id 2). An error when no track can be recorded, or when a
/// decoder would lack what it needs first: a video track's SPS (parameter sets that so far came
/// only in band), an AAC track's AudioSpecificConfig (LATM before its in-band configuration).
pub fn recording_init(tracks: &Tracks) -> Result<Bytes, ParamError> {
    let recorded = |t: &Option<TrackInfo>| t.as_ref().is_some_and(records);
    if !recorded(&tracks.video) && !recorded(&tracks.audio) {
        return Err(ParamError::Missing("recordable track"));
    }
    if let Some(TrackInfo::Audio { codec: AudioCodec::Aac, config, .. }) = &tracks.audio
        && config.is_empty()
    {
        return Err(ParamError::Missing("AudioSpecificConfig"));
    }
    // Not `cmfc`: a CMAF track file holds one track (ISO/IEC 23000-19 7.2).
    let opus = matches!(tracks.audio, Some(TrackInfo::Audio { codec: AudioCodec::Opus, .. }));
    init(tracks, records, if opus { &[b"iso6", b"isom", b"mp41", b"Opus"] } else { &[b"iso6", b"isom", b"mp41"] })
}

fn init(tracks: &Tracks, keep: fn(&TrackInfo) -> bool, brands: &[&[u8; 4]]) -> Result<Bytes, ParamError> {
    let mut out = BytesMut::new();
    bx(&mut out, b"ftyp", |o| {
        o.put_slice(brands[0]);
        o.put_u32(0);
        for b in brands {
            o.put_slice(*b);
        }
    });
    let mut traks = BytesMut::new();
    let mut ids = Vec::new();
    if let Some(v) = tracks.video.as_ref().filter(|v| keep(v)) {
        trak(&mut traks, VIDEO_ID, v)?;
        ids.push(VIDEO_ID);
    }
    if let Some(a) = tracks.audio.as_ref().filter(|a| keep(a)) {
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
    frames: &[Arc<Frame>],
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
    let trafs: Vec<(u32, &[Sample<'_>])> = parts.iter().map(|(id, s)| (*id, &s[..])).collect();
    let mut out = BytesMut::new();
    fragment(&mut out, sequence, &trafs);
    out.freeze()
}

/// Appends one fragment: a moof with a traf per track that has samples, then one mdat.
fn fragment(out: &mut BytesMut, sequence: u32, trafs: &[(u32, &[Sample<'_>])]) {
    let trafs: Vec<&(u32, &[Sample<'_>])> = trafs.iter().filter(|(_, s)| !s.is_empty()).collect();
    let mut moof = BytesMut::new();
    let mut offset_fields = Vec::new();
    bx(&mut moof, b"moof", |o| {
        full(o, b"mfhd", 0, 0, |o| o.put_u32(sequence));
        for (id, s) in &trafs {
            bx(o, b"traf", |o| {
                // default-base-is-moof
                full(o, b"tfhd", 0, 0x02_0000, |o| o.put_u32(*id));
                full(o, b"tfdt", 1, 0, |o| o.put_u64(s.first().map_or(0, |x| x.dts.max(0) as u64)));
                // data-offset, duration, size, flags, composition offsets (signed: version 1)
                full(o, b"trun", 1, 0x0001 | 0x0100 | 0x0200 | 0x0400 | 0x0800, |o| {
                    o.put_u32(s.len() as u32);
                    offset_fields.push(o.len());
                    o.put_u32(0);
                    for x in s.iter() {
                        o.put_u32(x.duration);
                        o.put_u32(x.data.len() as u32);
                        let flags = if *id == AUDIO_ID || x.keyframe { SYNC } else { NON_SYNC };
                        o.put_u32(flags);
                        o.put_i32(x.cts);
                    }
                });
            });
        }
    });
    // Patch data offsets: from the start of moof to each track's bytes in mdat.
    let mut data_pos = moof.len() + 8;
    for ((_, s), field) in trafs.iter().zip(offset_fields) {
        moof[field..field + 4].copy_from_slice(&(data_pos as u32).to_be_bytes());
        data_pos += s.iter().map(|x| x.data.len()).sum::<usize>();
    }
    let mdat_len = data_pos - moof.len();
    out.reserve(data_pos);
    out.put_slice(&moof);
    out.put_u32(mdat_len as u32);
    out.put_slice(b"mdat");
    for (_, s) in &trafs {
        for x in s.iter() {
            out.put_slice(x.data);
        }
    }
}

/// Sample flags (ISO/IEC 14496-12 8.8.3.1) of a sync sample: depends on no other.
pub const SYNC: u32 = 0x0200_0000;
/// Sample flags of a sample that is not a sync sample and depends on others.
pub const NON_SYNC: u32 = 0x0101_0000;

/// Decode times of a recording's two tracks, each in that track's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackTimes {
    /// The video track's.
    pub video: Option<i64>,
    /// The audio track's.
    pub audio: Option<i64>,
}

impl TrackTimes {
    /// The time of one track.
    pub fn get(&self, kind: TrackKind) -> Option<i64> {
        match kind {
            TrackKind::Video => self.video,
            TrackKind::Audio => self.audio,
        }
    }

    /// Sets the time of one track.
    pub fn set(&mut self, kind: TrackKind, time: Option<i64>) {
        match kind {
            TrackKind::Video => self.video = time,
            TrackKind::Audio => self.audio = time,
        }
    }
}

/// Most media data in one fragment of a recording. A second of the largest streams is tens of
/// megabytes; the cap keeps every offset in a fragment within the 32 bits of `trun` and `mdat`
/// (a 4 GiB mdat would need a 64-bit box size) and bounds what a reader of the file loads to
/// play one part. [`recording_part`] starts a new fragment rather than pass it.
pub const MAX_PART_DATA: usize = 256 << 20;

/// Most samples in one fragment of a recording (a 1 s part at 60 fps with 48 kHz AAC has
/// about 110). Bounds the moof a reader parses: at 16 bytes a sample, 2 MiB, within
/// [`crate::fmp4_read::MAX_MOOF_SIZE`].
pub const MAX_PART_SAMPLES: usize = 1 << 17;

/// One part of a recording: moof (sequence number `sequence`) + mdat with the frames given.
///
/// `frames` holds both tracks in any interleaving, each track's frames in decode order. Decode
/// times are written relative to `base` (per track, in that track's clock: the decode time the
/// file starts at, so each file's `tfdt` starts near 0 and a track that starts later or pauses
/// keeps its gap); a track without a base is written as it is. `next` holds the decode time of
/// each track's next frame after this part, if known, for exact last-sample durations; else
/// the last sample lasts what its payload holds (G.711, Opus), or as long as the one before
/// it, or a codec's usual frame.
///
/// Frames of tracks [`records`] refuses are left out, and so is a frame over
/// [`MAX_PART_DATA`] (the hub caps frames far below, at [`crate::check::MAX_FRAME_SIZE`]).
/// When the frames pass [`MAX_PART_DATA`] or [`MAX_PART_SAMPLES`], the returned bytes hold more
/// than one fragment, numbered `sequence`, `sequence + 1`, ... (a recorder cutting parts of a
/// second never sees this). Timestamps may be anything in i64: times before `base` are written
/// as `base`, durations and composition offsets saturate to their fields, nothing panics.
pub fn recording_part(
    sequence: u32,
    tracks: &Tracks,
    base: TrackTimes,
    frames: &[Arc<Frame>],
    next: TrackTimes,
) -> Bytes {
    recording_fragments(sequence, tracks, base, frames, next, MAX_PART_DATA, MAX_PART_SAMPLES)
}

fn recording_fragments(
    sequence: u32,
    tracks: &Tracks,
    base: TrackTimes,
    frames: &[Arc<Frame>],
    next: TrackTimes,
    max_data: usize,
    max_samples: usize,
) -> Bytes {
    let track = |kind| match kind {
        TrackKind::Video => tracks.video.as_ref().filter(|t| records(t)),
        TrackKind::Audio => tracks.audio.as_ref().filter(|t| records(t)),
    };
    let kept: Vec<&Frame> =
        frames.iter().map(|f| &**f).filter(|f| track(f.kind).is_some() && f.data.len() <= max_data).collect();
    let of = |kind| -> Vec<Sample<'_>> {
        let frames: Vec<&Frame> = kept.iter().copied().filter(|f| f.kind == kind).collect();
        match track(kind) {
            Some(t) => recording_samples(&frames, t, base.get(kind), next.get(kind)),
            None => Vec::new(),
        }
    };
    let (video, audio) = (of(TrackKind::Video), of(TrackKind::Audio));
    let mut out = BytesMut::new();
    let (mut at, mut v, mut a, mut sequence) = (0, 0, 0, sequence);
    loop {
        // The frames of this fragment, in the order given, up to the caps.
        let (mut nv, mut na, mut data) = (0, 0, 0usize);
        while let Some(f) = kept.get(at) {
            if nv + na > 0 && (nv + na >= max_samples || data + f.data.len() > max_data) {
                break;
            }
            data += f.data.len();
            match f.kind {
                TrackKind::Video => nv += 1,
                TrackKind::Audio => na += 1,
            }
            at += 1;
        }
        fragment(&mut out, sequence, &[(VIDEO_ID, &video[v..v + nv]), (AUDIO_ID, &audio[a..a + na])]);
        (v, a, sequence) = (v + nv, a + na, sequence.wrapping_add(1));
        if at >= kept.len() {
            break;
        }
    }
    out.freeze()
}

/// A recording track's samples: decode times relative to `base` in the track's timescale.
fn recording_samples<'a>(
    frames: &[&'a Frame],
    track: &TrackInfo,
    base: Option<i64>,
    next: Option<i64>,
) -> Vec<Sample<'a>> {
    let ts = timescale(track);
    let clock = track.clock_rate();
    // tfdt is unsigned: a frame before the file's start is written at its start.
    let rel = |t: i64| crate::rescale(t.saturating_sub(base.unwrap_or(0)), clock, ts).max(0);
    let dts: Vec<i64> = frames.iter().map(|f| rel(f.dts)).collect();
    let next = next.map(rel);
    let span = |a: i64, b: i64| a.saturating_sub(b).clamp(0, i64::from(u32::MAX)) as u32;
    (0..frames.len())
        .map(|i| {
            let f = frames[i];
            let duration = match dts.get(i + 1).copied().or(next) {
                Some(end) => span(end, dts[i]),
                None => last_duration(track, f, (i > 0).then(|| span(dts[i], dts[i - 1])), ts),
            };
            let cts = crate::rescale(f.pts.saturating_sub(f.dts), clock, ts);
            Sample {
                dts: dts[i],
                duration,
                cts: cts.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
                keyframe: f.keyframe,
                data: &f.data,
            }
        })
        .collect()
}

/// The duration of a track's last sample when the next frame's time is unknown: what the
/// payload holds when the codec says (G.711: a byte per sample and channel; Opus: its TOC),
/// else as long as the sample before, else the codec's usual frame.
fn last_duration(track: &TrackInfo, frame: &Frame, before: Option<u32>, ts: u32) -> u32 {
    let exact = match track {
        TrackInfo::Audio { codec: AudioCodec::Pcma | AudioCodec::Pcmu, channels, .. } => {
            u32::try_from(frame.data.len() / usize::from((*channels).max(1))).ok()
        }
        TrackInfo::Audio { codec: AudioCodec::Opus, .. } => opus::packet_samples(&frame.data),
        _ => None,
    };
    let usual = match track {
        TrackInfo::Audio { codec: AudioCodec::Aac, .. } => 1024,
        TrackInfo::Audio { codec: AudioCodec::Mp3, .. } => 1152,
        TrackInfo::Audio { codec: AudioCodec::Opus, .. } => 960,
        // 20 ms, the usual RTP packet time (RFC 3551 4.5).
        TrackInfo::Audio { .. } => ts / 50,
        TrackInfo::Video { .. } => ts / 30,
    };
    exact.filter(|d| *d > 0).or(before).unwrap_or(usual)
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

    #[test]
    fn records_every_codec_the_hub_carries() {
        let t = tracks();
        assert!(records(t.video.as_ref().unwrap()) && records(t.audio.as_ref().unwrap()));
        let audio = |codec, channels| TrackInfo::Audio {
            codec,
            config: Bytes::new(),
            sample_rate: 8000,
            channels,
            clock_rate: 8000,
        };
        for codec in [AudioCodec::Aac, AudioCodec::Mp3, AudioCodec::Opus, AudioCodec::Pcma, AudioCodec::Pcmu] {
            assert!(records(&audio(codec, 2)), "{codec:?}");
        }
        // Opus beyond stereo needs a channel mapping table that RTP does not carry.
        assert!(!records(&audio(AudioCodec::Opus, 6)));
        let only = |a| Tracks { video: None, audio: Some(a), metadata: None };
        assert_eq!(recording_init(&only(audio(AudioCodec::Opus, 6))), Err(ParamError::Missing("recordable track")));
        assert_eq!(recording_init(&Tracks::default()), Err(ParamError::Missing("recordable track")));
        assert!(recording_init(&only(audio(AudioCodec::Opus, 2))).is_ok());
        let mut no_sps = t.clone();
        no_sps.video = Some(TrackInfo::Video { codec: VideoCodec::H264, config: Bytes::new(), clock_rate: 1000 });
        assert_eq!(recording_init(&no_sps), Err(ParamError::Missing("SPS")));
        let no_asc = only(TrackInfo::Audio {
            codec: AudioCodec::Aac,
            config: Bytes::new(),
            sample_rate: 44100,
            channels: 2,
            clock_rate: 44100,
        });
        assert_eq!(recording_init(&no_asc), Err(ParamError::Missing("AudioSpecificConfig")));
    }

    /// A publisher's avcC may declare 1- or 2-byte NAL unit lengths; frames are rewritten to
    /// 4-byte lengths at ingest, so the record written says 4.
    #[test]
    fn nal_length_size_is_written_as_four() {
        let mut t = tracks();
        let Some(TrackInfo::Video { config, .. }) = &mut t.video else { unreachable!() };
        let mut c = config.to_vec();
        c[4] = 0xfd;
        *config = Bytes::from(c);
        for init in [recording_init(&t).unwrap(), init_segment(&t).unwrap()] {
            let at = init.windows(4).position(|w| w == b"avcC").unwrap() + 4;
            assert_eq!(init[at + 4], 0xff);
        }
    }

    fn frames(n: usize, len: usize) -> Vec<Arc<Frame>> {
        (0..n)
            .map(|i| {
                let kind = if i % 2 == 0 { TrackKind::Video } else { TrackKind::Audio };
                let dts = if kind == TrackKind::Video { i as i64 * 20 } else { i as i64 * 1024 };
                Frame::new(kind, dts, dts, i % 6 == 0, Bytes::from(vec![i as u8; len]))
            })
            .collect()
    }

    /// Frames past a fragment's caps go to further fragments, numbered on; every frame comes
    /// back, and each track's time runs on across them.
    #[test]
    fn parts_over_the_caps_become_more_fragments() {
        let mut t = tracks();
        if let Some(TrackInfo::Audio { sample_rate, clock_rate, .. }) = &mut t.audio {
            (*sample_rate, *clock_rate) = (44100, 44100);
        }
        let frames = frames(20, 100);
        for (max_data, max_samples, fragments) in [(350, 1000, 7), (10_000, 4, 5), (100, 1, 20), (10_000, 1000, 1)] {
            let mut file = recording_init(&t).unwrap().to_vec();
            let none = TrackTimes::default();
            file.extend_from_slice(&recording_fragments(7, &t, none, &frames, none, max_data, max_samples));
            let scan = crate::fmp4_read::scan(&file).unwrap();
            assert_eq!(scan.parts.len(), fragments, "{max_data} {max_samples}");
            let file = Bytes::from(file);
            let mut back = vec![];
            for (i, p) in scan.parts.iter().enumerate() {
                assert_eq!(p.sequence, 7 + i as u32);
                let part = file.slice(p.offset as usize..(p.offset + p.len) as usize);
                back.extend(crate::fmp4_read::read_part(&scan.layout, &part).unwrap());
            }
            assert_eq!(back.len(), 20);
            for k in [TrackKind::Video, TrackKind::Audio] {
                let times: Vec<i64> = back.iter().filter(|f| f.kind == k).map(|f| f.dts).collect();
                let ts = if k == TrackKind::Video { 90 } else { 1 };
                let want: Vec<i64> = frames.iter().filter(|f| f.kind == k).map(|f| f.dts * ts).collect();
                assert_eq!(times, want, "{k:?}");
                let mut ends = scan.parts.iter().filter_map(|p| Some((p.start.get(k)?, p.end.get(k)?)));
                let mut prev = ends.next().unwrap().1;
                for (start, end) in ends {
                    assert_eq!(start, prev, "{k:?}: a gap between fragments");
                    prev = end;
                }
            }
        }
        // A frame over the data cap is left out; the others are written.
        let mut big = frames.clone();
        big[3] = Frame::new(TrackKind::Audio, 3 * 1024, 3 * 1024, true, Bytes::from(vec![0; 400]));
        let none = TrackTimes::default();
        let part = recording_fragments(1, &t, none, &big, none, 350, 1000);
        let mut file = recording_init(&t).unwrap().to_vec();
        file.extend_from_slice(&part);
        let scan = crate::fmp4_read::scan(&file).unwrap();
        assert_eq!(scan.parts.iter().map(|p| p.video_samples + p.audio_samples).sum::<u32>(), 19);
    }

    /// The last sample's duration when the next frame's time is unknown.
    #[test]
    fn last_sample_durations() {
        let g711 = TrackInfo::Audio {
            codec: AudioCodec::Pcmu,
            config: Bytes::new(),
            sample_rate: 8000,
            channels: 2,
            clock_rate: 8000,
        };
        let opus = TrackInfo::Audio {
            codec: AudioCodec::Opus,
            config: Bytes::new(),
            sample_rate: 48000,
            channels: 2,
            clock_rate: 48000,
        };
        let frame = |data: &'static [u8]| Frame::new(TrackKind::Audio, 0, 0, true, Bytes::from_static(data));
        // G.711: a byte per sample and channel; Opus: its TOC (CELT 10 ms).
        assert_eq!(last_duration(&g711, &frame(&[0; 320]), Some(7), 8000), 160);
        assert_eq!(last_duration(&opus, &frame(&[(18 << 3), 0]), Some(7), 48000), 480);
        // Else as long as the one before, else the codec's frame.
        assert_eq!(last_duration(&opus, &frame(&[]), Some(7), 48000), 7);
        assert_eq!(last_duration(&tracks().audio.unwrap(), &frame(&[1]), None, 44100), 1024);
        assert_eq!(last_duration(&g711, &frame(&[]), None, 8000), 160);
    }
}
