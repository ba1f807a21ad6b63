//! Turns what an RTMP publisher sends (FLV tag bodies and metadata) into hub tracks and
//! frames.

use ferrocast_media::aac;
use ferrocast_media::avc::{nal_length_size, to_four_byte_lengths};
use ferrocast_media::flv::{self, AudioTag, VideoTag};
use ferrocast_media::{AudioCodec, TrackInfo, TrackKind, Tracks};
use ferrocast_rtmp::{MediaKind, MediaMessage};

use crate::hub::Publisher;

/// RTMP timestamps are milliseconds, for every track.
const RTMP_CLOCK: u32 = 1000;

/// Why a publisher's message was dropped (logged; the session goes on).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Bad FLV body.
    #[error(transparent)]
    Flv(#[from] ferrocast_media::flv::FlvError),
    /// Bad NAL unit framing.
    #[error(transparent)]
    Nal(#[from] ferrocast_media::avc::NalError),
    /// Bad AudioSpecificConfig.
    #[error(transparent)]
    Aac(#[from] ferrocast_media::aac::AacError),
    /// A frame of a codec whose parameters never arrived.
    #[error("{0:?} frame before its sequence header")]
    NoConfig(TrackKind),
}

/// Extends 32-bit RTMP timestamps to 64 bits across wraps (RTMP spec 1.0 5.3.1.3 allows
/// them to wrap after ~49.7 days).
#[derive(Debug, Default)]
struct Unwrap {
    last: Option<u32>,
    high: i64,
}

impl Unwrap {
    fn extend(&mut self, ts: u32) -> i64 {
        if let Some(last) = self.last {
            let back = last.wrapping_sub(ts);
            if ts < last && back > u32::MAX / 2 {
                self.high += 1 << 32;
            } else if ts > last && ts - last > u32::MAX / 2 && self.high > 0 {
                // A late message from before the wrap.
                return self.high - (1 << 32) + i64::from(ts);
            }
        }
        self.last = Some(ts);
        self.high + i64::from(ts)
    }
}

/// Per-publisher ingest state.
#[derive(Debug)]
pub struct RtmpIngest {
    publisher: Publisher,
    tracks: Tracks,
    nal_length_size: usize,
    clock: Unwrap,
}

impl RtmpIngest {
    /// Ingest into `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        RtmpIngest { publisher, tracks: Tracks::default(), nal_length_size: 4, clock: Unwrap::default() }
    }

    /// The path being published.
    pub fn path(&self) -> &str {
        self.publisher.path()
    }

    /// Handles one message from the publisher.
    pub fn handle(&mut self, msg: MediaMessage) -> Result<(), IngestError> {
        let ts = self.clock.extend(msg.timestamp);
        match msg.kind {
            MediaKind::Data => {
                self.tracks.metadata = Some(msg.payload);
                self.publisher.set_tracks(self.tracks.clone());
            }
            MediaKind::Video => match flv::parse_video(&msg.payload)? {
                VideoTag::Config { codec, config } => {
                    self.nal_length_size = nal_length_size(codec, &config)?;
                    self.tracks.video = Some(TrackInfo::Video { codec, config, clock_rate: RTMP_CLOCK });
                    self.publisher.set_tracks(self.tracks.clone());
                }
                VideoTag::Frame { codec, keyframe, cts, data } => {
                    match &self.tracks.video {
                        Some(TrackInfo::Video { codec: c, .. }) if *c == codec => {}
                        _ => return Err(IngestError::NoConfig(TrackKind::Video)),
                    }
                    let data = to_four_byte_lengths(data, self.nal_length_size)?;
                    self.publisher.push(TrackKind::Video, ts, ts + i64::from(cts), keyframe, data);
                }
                VideoTag::Ignored(_) => {}
            },
            MediaKind::Audio => match flv::parse_audio(&msg.payload)? {
                AudioTag::AacConfig(config) => {
                    self.tracks.audio = Some(aac::track(config, RTMP_CLOCK)?);
                    self.publisher.set_tracks(self.tracks.clone());
                }
                AudioTag::AacFrame(data) => {
                    if !matches!(self.tracks.audio, Some(TrackInfo::Audio { codec: AudioCodec::Aac, .. })) {
                        return Err(IngestError::NoConfig(TrackKind::Audio));
                    }
                    self.publisher.push(TrackKind::Audio, ts, ts, true, data);
                }
                AudioTag::Mp3 { sample_rate, channels, data } => {
                    let track = TrackInfo::Audio {
                        codec: AudioCodec::Mp3,
                        config: bytes::Bytes::new(),
                        sample_rate,
                        channels,
                        clock_rate: RTMP_CLOCK,
                    };
                    if self.tracks.audio.as_ref() != Some(&track) {
                        self.tracks.audio = Some(track);
                        self.publisher.set_tracks(self.tracks.clone());
                    }
                    self.publisher.push(TrackKind::Audio, ts, ts, true, data);
                }
                AudioTag::G711 { alaw, data } => {
                    let track = TrackInfo::Audio {
                        codec: if alaw { AudioCodec::Pcma } else { AudioCodec::Pcmu },
                        config: bytes::Bytes::new(),
                        sample_rate: 8000,
                        channels: 1,
                        clock_rate: RTMP_CLOCK,
                    };
                    if self.tracks.audio.as_ref() != Some(&track) {
                        self.tracks.audio = Some(track);
                        self.publisher.set_tracks(self.tracks.clone());
                    }
                    self.publisher.push(TrackKind::Audio, ts, ts, true, data);
                }
                AudioTag::Ignored(_) => {}
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_unwrap_across_32_bits() {
        let mut u = Unwrap::default();
        assert_eq!(u.extend(u32::MAX - 10), i64::from(u32::MAX - 10));
        assert_eq!(u.extend(5), (1i64 << 32) + 5);
        assert_eq!(u.extend(u32::MAX - 2), i64::from(u32::MAX - 2), "late message before the wrap");
        assert_eq!(u.extend(40), (1i64 << 32) + 40);
    }
}
