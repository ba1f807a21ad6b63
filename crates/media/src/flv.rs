//! FLV tags (Adobe FLV file format spec v10.1, Annex E) and Enhanced RTMP video tags
//! (veovera enhanced-rtmp v1): the bodies RTMP audio/video messages carry, and whole tags for
//! HTTP-FLV.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::{AudioCodec, Frame, TrackInfo, TrackKind, VideoCodec};

/// FLV tag type of audio tags.
pub const TAG_AUDIO: u8 = 8;
/// FLV tag type of video tags.
pub const TAG_VIDEO: u8 = 9;
/// FLV tag type of script data tags.
pub const TAG_SCRIPT: u8 = 18;

/// Legacy FLV video codec id of H.264.
const CODEC_AVC: u8 = 7;
/// Codec id 12: H.265 in legacy FLV, as deployed by Chinese CDNs, SRS and OBS forks before
/// Enhanced RTMP existed. Not in Adobe's spec.
const CODEC_HEVC_LEGACY: u8 = 12;
const FOURCC_HVC1: [u8; 4] = *b"hvc1";
const FOURCC_AVC1: [u8; 4] = *b"avc1";

/// Why an FLV audio or video body was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FlvError {
    /// The body is shorter than its header.
    #[error("{kind:?} tag body truncated: {len} bytes, header needs {need}")]
    Truncated {
        /// Audio or video.
        kind: TrackKind,
        /// Body length.
        len: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// A file that does not start with an FLV header.
    #[error("not an FLV file")]
    NotFlv,
}

/// A parsed FLV video tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoTag {
    /// Decoder configuration (AVC sequence header / Enhanced RTMP SequenceStart).
    Config {
        /// The codec.
        codec: VideoCodec,
        /// avcC or hvcC record.
        config: Bytes,
    },
    /// Coded frame data.
    Frame {
        /// The codec.
        codec: VideoCodec,
        /// IDR / random access point.
        keyframe: bool,
        /// Composition time offset in milliseconds.
        cts: i32,
        /// Length-prefixed NAL units.
        data: Bytes,
    },
    /// End of sequence, command frames, metadata and codecs ferrocast does not carry.
    Ignored(&'static str),
}

/// A parsed FLV audio tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioTag {
    /// AAC AudioSpecificConfig (AAC sequence header).
    AacConfig(Bytes),
    /// A raw AAC access unit.
    AacFrame(Bytes),
    /// An MP3 frame with the sampling rate and channel count the tag header declares.
    Mp3 {
        /// Sampling rate from the header (coarse: FLV only knows 5.5/11/22/44 kHz).
        sample_rate: u32,
        /// 1 or 2.
        channels: u8,
        /// The MP3 frame(s).
        data: Bytes,
    },
    /// G.711 samples (FLV sound formats 7 and 8: 8 kHz).
    G711 {
        /// A-law (else mu-law).
        alaw: bool,
        /// The samples.
        data: Bytes,
    },
    /// Codecs ferrocast does not carry.
    Ignored(&'static str),
}

/// Whether FLV (RTMP, HTTP-FLV) can carry a track's codec. Opus has no legacy FLV id.
pub fn carries(track: &TrackInfo) -> bool {
    !matches!(track, TrackInfo::Audio { codec: AudioCodec::Opus, .. })
}

fn need(kind: TrackKind, body: &Bytes, n: usize) -> Result<(), FlvError> {
    if body.len() < n {
        return Err(FlvError::Truncated { kind, len: body.len(), need: n });
    }
    Ok(())
}

fn si24(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], 0]) >> 8
}

/// Parses a video tag body: legacy (codec 7 and 12) or Enhanced RTMP (`IsExHeader`).
pub fn parse_video(body: &Bytes) -> Result<VideoTag, FlvError> {
    let k = TrackKind::Video;
    need(k, body, 1)?;
    let b0 = body[0];
    if b0 & 0x80 != 0 {
        // Enhanced RTMP: [IsExHeader:1][FrameType:3][PacketType:4][FourCC:32]...
        need(k, body, 5)?;
        let frame_type = (b0 >> 4) & 0x7;
        let packet_type = b0 & 0x0f;
        let codec = match [body[1], body[2], body[3], body[4]] {
            FOURCC_HVC1 => VideoCodec::H265,
            FOURCC_AVC1 => VideoCodec::H264,
            _ => return Ok(VideoTag::Ignored("unsupported Enhanced RTMP FourCC")),
        };
        if frame_type == 5 {
            return Ok(VideoTag::Ignored("video command frame"));
        }
        return Ok(match packet_type {
            0 => VideoTag::Config { codec, config: body.slice(5..) },
            1 => {
                need(k, body, 8)?;
                VideoTag::Frame { codec, keyframe: frame_type == 1, cts: si24(&body[5..8]), data: body.slice(8..) }
            }
            3 => VideoTag::Frame { codec, keyframe: frame_type == 1, cts: 0, data: body.slice(5..) },
            2 => VideoTag::Ignored("end of sequence"),
            _ => VideoTag::Ignored("unsupported Enhanced RTMP packet type"),
        });
    }
    let frame_type = b0 >> 4;
    let codec = match b0 & 0x0f {
        CODEC_AVC => VideoCodec::H264,
        CODEC_HEVC_LEGACY => VideoCodec::H265,
        _ => return Ok(VideoTag::Ignored("unsupported FLV video codec")),
    };
    if frame_type == 5 {
        return Ok(VideoTag::Ignored("video command frame"));
    }
    need(k, body, 5)?;
    Ok(match body[1] {
        0 => VideoTag::Config { codec, config: body.slice(5..) },
        1 => VideoTag::Frame { codec, keyframe: frame_type == 1, cts: si24(&body[2..5]), data: body.slice(5..) },
        _ => VideoTag::Ignored("end of sequence"),
    })
}

/// Parses an audio tag body.
pub fn parse_audio(body: &Bytes) -> Result<AudioTag, FlvError> {
    let k = TrackKind::Audio;
    need(k, body, 1)?;
    let b0 = body[0];
    match b0 >> 4 {
        10 => {
            need(k, body, 2)?;
            Ok(match body[1] {
                0 => AudioTag::AacConfig(body.slice(2..)),
                _ => AudioTag::AacFrame(body.slice(2..)),
            })
        }
        2 | 14 => Ok(AudioTag::Mp3 {
            sample_rate: if b0 >> 4 == 14 { 8000 } else { [5512, 11025, 22050, 44100][usize::from((b0 >> 2) & 3)] },
            channels: if b0 & 1 == 1 { 2 } else { 1 },
            data: body.slice(1..),
        }),
        7 | 8 => Ok(AudioTag::G711 { alaw: b0 >> 4 == 7, data: body.slice(1..) }),
        _ => Ok(AudioTag::Ignored("unsupported FLV audio codec")),
    }
}

fn mp3_flags(sample_rate: u32, channels: u8) -> u8 {
    let rate = match sample_rate {
        0..=8000 => 0,
        8001..=11025 => 1,
        11026..=22050 => 2,
        _ => 3,
    };
    (2 << 4) | (rate << 2) | (1 << 1) | u8::from(channels > 1)
}

/// Builds the sequence-header body of a track (AVC/AAC sequence header; Enhanced RTMP
/// SequenceStart for H.265), or `None` for codecs that have none (MP3).
pub fn config_body(track: &TrackInfo) -> Option<Bytes> {
    let mut out = BytesMut::new();
    match track {
        TrackInfo::Video { codec: VideoCodec::H264, config, .. } => {
            out.put_slice(&[0x10 | CODEC_AVC, 0, 0, 0, 0]);
            out.put_slice(config);
        }
        TrackInfo::Video { codec: VideoCodec::H265, config, .. } => {
            out.put_u8(0x80 | 0x10);
            out.put_slice(&FOURCC_HVC1);
            out.put_slice(config);
        }
        TrackInfo::Audio { codec: AudioCodec::Aac, config, .. } => {
            out.put_slice(&[0xaf, 0]);
            out.put_slice(config);
        }
        TrackInfo::Audio { .. } => return None,
    }
    Some(out.freeze())
}

/// Builds the tag body of a frame of `track`.
pub fn frame_body(track: &TrackInfo, frame: &Frame) -> Bytes {
    let mut out = BytesMut::with_capacity(frame.data.len() + 8);
    // FLV composition offsets are milliseconds.
    // Saturating: timestamps come from the publisher and may be anywhere in i64.
    let cts = track.to_ms(frame.pts.saturating_sub(frame.dts)).clamp(-(1 << 23), (1 << 23) - 1) as i32;
    let frame_type: u8 = if frame.keyframe { 1 } else { 2 };
    match track {
        TrackInfo::Video { codec: VideoCodec::H264, .. } => {
            out.put_u8(frame_type << 4 | CODEC_AVC);
            out.put_u8(1);
            out.put_slice(&cts.to_be_bytes()[1..]);
        }
        TrackInfo::Video { codec: VideoCodec::H265, .. } => {
            // CodedFramesX (3) saves the offset when it is zero.
            let packet_type = if cts == 0 { 3 } else { 1 };
            out.put_u8(0x80 | frame_type << 4 | packet_type);
            out.put_slice(&FOURCC_HVC1);
            if cts != 0 {
                out.put_slice(&cts.to_be_bytes()[1..]);
            }
        }
        TrackInfo::Audio { codec: AudioCodec::Aac, .. } => out.put_slice(&[0xaf, 1]),
        TrackInfo::Audio { codec: AudioCodec::Mp3, sample_rate, channels, .. } => {
            out.put_u8(mp3_flags(*sample_rate, *channels))
        }
        // 16-bit sample size and rate index 0, as ffmpeg writes G.711 (always 8 kHz).
        TrackInfo::Audio { codec: AudioCodec::Pcma, channels, .. } => {
            out.put_u8((7 << 4) | (1 << 1) | u8::from(*channels > 1))
        }
        TrackInfo::Audio { codec: AudioCodec::Pcmu, channels, .. } => {
            out.put_u8((8 << 4) | (1 << 1) | u8::from(*channels > 1))
        }
        // Not carried (see `carries`): an empty body.
        TrackInfo::Audio { codec: AudioCodec::Opus, .. } => return Bytes::new(),
    }
    out.put_slice(&frame.data);
    out.freeze()
}

/// The 13 bytes that open an FLV stream: the header and `PreviousTagSize0`.
pub fn file_header(has_audio: bool, has_video: bool) -> Bytes {
    let flags = (u8::from(has_audio) << 2) | u8::from(has_video);
    Bytes::copy_from_slice(&[b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0])
}

/// Wraps a body in an FLV tag: 11-byte header, body, 4-byte previous tag size.
/// `timestamp` is in milliseconds; FLV keeps its low 32 bits.
pub fn tag(tag_type: u8, timestamp: i64, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 15);
    let ts = timestamp as u32;
    let len = body.len() as u32;
    out.put_u8(tag_type);
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_slice(&ts.to_be_bytes()[1..]);
    out.put_u8((ts >> 24) as u8);
    out.put_slice(&[0, 0, 0]);
    out.put_slice(body);
    out.put_u32(len + 11);
    out.freeze()
}

/// A tag read from an FLV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTag {
    /// 8 audio, 9 video, 18 script.
    pub tag_type: u8,
    /// Timestamp in ms.
    pub timestamp: u32,
    /// The tag body.
    pub body: Bytes,
}

/// Reads the tags of a whole FLV file; stops at the first truncated tag.
pub fn read_file(data: &Bytes) -> Result<Vec<FileTag>, FlvError> {
    if data.len() < 13 || &data[..3] != b"FLV" {
        return Err(FlvError::NotFlv);
    }
    let header_len = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
    let mut pos = header_len.max(9) + 4;
    let mut tags = Vec::new();
    while pos + 11 <= data.len() {
        let h = &data[pos..pos + 11];
        let size = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
        let timestamp = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let end = pos + 11 + size;
        if end > data.len() {
            break;
        }
        tags.push(FileTag { tag_type: h[0] & 0x1f, timestamp, body: data.slice(pos + 11..end) });
        pos = end + 4;
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h264() -> TrackInfo {
        TrackInfo::Video {
            codec: VideoCodec::H264,
            config: Bytes::from_static(&[1, 0x64, 0, 0x1f, 0xff]),
            clock_rate: 1000,
        }
    }

    #[test]
    fn legacy_avc_round_trip_keeps_negative_cts() {
        let f = Frame::new(TrackKind::Video, 1000, 967, false, Bytes::from_static(&[0, 0, 0, 1, 0x41]));
        let body = frame_body(&h264(), &f);
        assert_eq!(
            parse_video(&body).unwrap(),
            VideoTag::Frame { codec: VideoCodec::H264, keyframe: false, cts: -33, data: f.data.clone() }
        );
        let cfg = config_body(&h264()).unwrap();
        assert!(matches!(parse_video(&cfg).unwrap(), VideoTag::Config { codec: VideoCodec::H264, .. }));
    }

    #[test]
    fn hevc_enhanced_and_codec12_both_parse() {
        let track =
            TrackInfo::Video { codec: VideoCodec::H265, config: Bytes::from_static(&[1; 23]), clock_rate: 1000 };
        for cts in [0, 66] {
            let f = Frame::new(TrackKind::Video, 0, cts, true, Bytes::from_static(&[0, 0, 0, 1, 0x26]));
            let body = frame_body(&track, &f);
            assert_eq!(
                parse_video(&body).unwrap(),
                VideoTag::Frame { codec: VideoCodec::H265, keyframe: true, cts: cts as i32, data: f.data.clone() }
            );
        }
        // Codec id 12 as SRS and OBS forks send it.
        let legacy = Bytes::from_static(&[0x1c, 1, 0, 0, 0x21, 0, 0, 0, 1, 0x26]);
        assert!(matches!(
            parse_video(&legacy).unwrap(),
            VideoTag::Frame { codec: VideoCodec::H265, keyframe: true, cts: 33, .. }
        ));
    }

    #[test]
    fn truncated_bodies_are_errors() {
        assert!(parse_video(&Bytes::new()).is_err());
        assert!(parse_video(&Bytes::from_static(&[0x17, 1])).is_err());
        assert!(parse_video(&Bytes::from_static(&[0x91, b'h', b'v'])).is_err());
        assert!(parse_audio(&Bytes::from_static(&[0xaf])).is_err());
    }

    #[test]
    fn file_round_trip() {
        let mut file = file_header(true, false).to_vec();
        file.extend_from_slice(&tag(TAG_AUDIO, 23, &[0xaf, 1, 9]));
        file.extend_from_slice(&tag(TAG_AUDIO, 46, &[0xaf, 1]));
        file.extend_from_slice(&[8, 0, 0, 99]); // truncated
        let tags = read_file(&Bytes::from(file)).unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!((tags[1].timestamp, &tags[1].body[..]), (46, &[0xaf, 1][..]));
        assert_eq!(read_file(&Bytes::from_static(b"GIF89a.......")), Err(FlvError::NotFlv));
    }

    #[test]
    fn frame_bodies_are_total_on_extreme_timestamps_and_tracks() {
        let tracks = [
            h264(),
            TrackInfo::Video { codec: VideoCodec::H265, config: Bytes::new(), clock_rate: 0 },
            TrackInfo::Audio {
                codec: AudioCodec::Mp3,
                config: Bytes::new(),
                sample_rate: 0,
                channels: 0,
                clock_rate: 0,
            },
            TrackInfo::Audio {
                codec: AudioCodec::Aac,
                config: Bytes::new(),
                sample_rate: 0,
                channels: 9,
                clock_rate: 1,
            },
        ];
        for t in &tracks {
            for (dts, pts) in [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN), (0, 0)] {
                let f = Frame::new(t.kind(), dts, pts, true, Bytes::new());
                let body = frame_body(t, &f);
                assert!(!body.is_empty());
                assert_eq!(tag(TAG_VIDEO, dts, &body).len(), body.len() + 15);
            }
            let _ = config_body(t);
        }
    }

    #[test]
    fn tag_layout() {
        let t = tag(TAG_AUDIO, 0x0123_4567, &[0xaf, 1, 9]);
        assert_eq!(&t[..], &[8, 0, 0, 3, 0x23, 0x45, 0x67, 0x01, 0, 0, 0, 0xaf, 1, 9, 0, 0, 0, 14]);
    }
}
