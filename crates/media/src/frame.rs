//! Frames (one access unit of one track) and the codec parameters that describe a track.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// Which kind of track a frame belongs to. ferrocast carries at most one of each per stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// The video track.
    Video,
    /// The audio track.
    Audio,
}

/// Video codecs ferrocast carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// H.264 / AVC. Frames are length-prefixed NAL units (4-byte lengths).
    H264,
    /// H.265 / HEVC. Frames are length-prefixed NAL units (4-byte lengths).
    H265,
}

/// Audio codecs ferrocast carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    /// AAC; frames are raw access units (no ADTS header).
    Aac,
    /// MPEG-1/2 Layer III; frames are passed through as received.
    Mp3,
    /// Opus (RFC 6716); frames are Opus packets. Carried over RTSP; FLV/HLS readers skip it.
    Opus,
    /// G.711 A-law (PCMA); frames are 8-bit samples.
    Pcma,
    /// G.711 mu-law (PCMU); frames are 8-bit samples.
    Pcmu,
}

/// The parameters a decoder needs before the first frame of a track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackInfo {
    /// A video track.
    Video {
        /// The codec.
        codec: VideoCodec,
        /// AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3) or
        /// HEVCDecoderConfigurationRecord (8.3.3), exactly as received.
        config: Bytes,
        /// Clock of this track's frame timestamps, in Hz (1000 for RTMP, 90000 for RTP).
        clock_rate: u32,
    },
    /// An audio track.
    Audio {
        /// The codec.
        codec: AudioCodec,
        /// AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1) for AAC, empty for MP3.
        config: Bytes,
        /// Sampling rate in Hz.
        sample_rate: u32,
        /// Number of channels.
        channels: u8,
        /// Clock of this track's frame timestamps, in Hz (1000 for RTMP, the sample rate for
        /// RTP).
        clock_rate: u32,
    },
}

/// Converts a timestamp between clocks, rounding to nearest, without overflow: a result
/// beyond `i64` saturates at `i64::MIN` / `i64::MAX` (never wraps; a time from a file is
/// bounded before it gets here, see [`crate::fmp4_read::MAX_MEDIA_TIME_US`]).
pub fn rescale(ts: i64, from: u32, to: u32) -> i64 {
    if from == to || from == 0 {
        return ts;
    }
    let num = i128::from(ts) * i128::from(to);
    let den = i128::from(from);
    let r = if num >= 0 { (num + den / 2) / den } else { (num - den / 2) / den };
    r.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

impl TrackInfo {
    /// The clock of this track's timestamps, in Hz.
    pub fn clock_rate(&self) -> u32 {
        match self {
            TrackInfo::Video { clock_rate, .. } | TrackInfo::Audio { clock_rate, .. } => *clock_rate,
        }
    }

    /// A timestamp of this track in milliseconds.
    pub fn to_ms(&self, ts: i64) -> i64 {
        rescale(ts, self.clock_rate(), 1000)
    }

    /// The kind of track this describes.
    pub fn kind(&self) -> TrackKind {
        match self {
            TrackInfo::Video { .. } => TrackKind::Video,
            TrackInfo::Audio { .. } => TrackKind::Audio,
        }
    }
}

/// Everything a new reader must receive before frames: codec parameters per track and the
/// publisher's metadata. A change of any part is a new `Tracks` value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracks {
    /// Video track parameters, once known.
    pub video: Option<TrackInfo>,
    /// Audio track parameters, once known.
    pub audio: Option<TrackInfo>,
    /// The publisher's `onMetaData` as an AMF0 script-data body (`"onMetaData"`, then the
    /// object), as carried in an FLV script tag.
    pub metadata: Option<Bytes>,
}

/// The wire forms of a frame that are built once and shared by every reader of that output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Wire {
    /// A complete FLV tag (header, body, previous-tag-size).
    FlvTag = 0,
    /// The RTMP chunks of the frame's audio/video message on the shared play stream.
    RtmpChunks = 1,
    /// The RTP packets of the frame, as `[u16 length][packet]` records.
    Rtp = 2,
}

const WIRE_SLOTS: usize = 3;

/// One access unit of one track.
///
/// Timestamps are in the track's clock (milliseconds for streams published over RTMP) and are
/// 64-bit, carried as received apart from explicit, documented corrections made by the hub.
#[derive(Debug)]
pub struct Frame {
    /// The track this frame belongs to.
    pub kind: TrackKind,
    /// Decode timestamp.
    pub dts: i64,
    /// Presentation timestamp (`pts - dts` is the composition offset of B-frames).
    pub pts: i64,
    /// True for a random access point (IDR for video; every audio frame).
    pub keyframe: bool,
    /// The payload: length-prefixed (4 bytes) NAL units for H.264/H.265, a raw access unit for
    /// audio.
    pub data: Bytes,
    wire: [OnceLock<Bytes>; WIRE_SLOTS],
}

impl Frame {
    /// Makes a frame.
    pub fn new(kind: TrackKind, dts: i64, pts: i64, keyframe: bool, data: Bytes) -> Arc<Frame> {
        Arc::new(Frame { kind, dts, pts, keyframe, data, wire: Default::default() })
    }

    /// Composition offset (`pts - dts`).
    pub fn cts(&self) -> i64 {
        self.pts - self.dts
    }

    /// The frame's wire form for `wire`, built by `build` on first use and shared afterwards.
    pub fn wire(&self, wire: Wire, build: impl FnOnce(&Frame) -> Bytes) -> Bytes {
        self.wire[wire as usize].get_or_init(|| build(self)).clone()
    }

    /// The frame's wire form for `wire`, if it was built.
    pub fn built(&self, wire: Wire) -> Option<Bytes> {
        self.wire[wire as usize].get().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescale_rounds_and_keeps_sign() {
        assert_eq!(rescale(1000, 1000, 90000), 90000);
        assert_eq!(rescale(3003, 90000, 1000), 33);
        assert_eq!(rescale(-3003, 90000, 1000), -33);
        assert_eq!(rescale(i64::MAX / 200, 1000, 90000), i64::MAX / 200 * 90);
        // Beyond i64: saturates, never wraps (a file's time in seconds as µs, say).
        assert_eq!(rescale(i64::MAX / 2, 1000, 90000), i64::MAX);
        assert_eq!(rescale(i64::MIN / 2, 1, 1_000_000), i64::MIN);
        assert_eq!(rescale(i64::MAX, 1, 1_000_000), i64::MAX);
    }

    #[test]
    fn wire_form_is_built_once_and_shared() {
        let f = Frame::new(TrackKind::Audio, 0, 0, true, Bytes::from_static(b"x"));
        let mut builds = 0;
        let a = f.wire(Wire::FlvTag, |_| {
            builds += 1;
            Bytes::from(vec![1, 2, 3])
        });
        let b = f.wire(Wire::FlvTag, |_| unreachable!("built twice"));
        assert_eq!(builds, 1);
        assert_eq!(a.as_ptr(), b.as_ptr(), "readers must share one buffer");
        assert_eq!(f.built(Wire::FlvTag).map(|c| c.as_ptr()), Some(a.as_ptr()));
        assert_eq!(f.built(Wire::Rtp), None);
    }
}
