//! Checks of the codec configurations a publisher sends, before any reader sees them.
//!
//! A configuration record (avcC, hvcC) holds parameter sets that every output repeats: RTP
//! packetizers send them in band before keyframes, MPEG-TS before each IDR, fMP4 and FLV in
//! their headers. One bad entry (a zero-length SPS, a PPS under an SPS type) would reach every
//! reader, so ingest runs each configuration through [`check_track`]: bad entries are dropped
//! (and named in [`Checked::dropped`] so the caller logs them once), and a configuration with
//! nothing usable left is refused with a [`ConfigError`], so readers keep the last good one.

use std::fmt;

use thiserror::Error;

use crate::{AudioCodec, TrackInfo, VideoCodec, aac, h264, h265};

/// Largest codec configuration accepted. Real ones are under 1 KiB (an avcC with one SPS and
/// one PPS is ~40 bytes, an hvcC with SEI arrays a few hundred); every reader receives it on
/// joining and RTP/MPEG-TS repeat its parameter sets before every keyframe, so a 16 MiB one
/// from an RTMP message would be amplified per reader and per GOP.
pub const MAX_CONFIG_SIZE: usize = 64 * 1024;

/// Largest frame payload a stream carries. FLV tags and RTMP messages have 24-bit lengths
/// (FLV spec 10.1 E.4.1 `DataSize`, RTMP 1.0 5.3.1.2.1 `message length`) and the tag header
/// of a frame adds at most 8 bytes, so a bigger frame cannot be sent to FLV or RTMP readers.
/// 4K IDR frames at high quality are 1-3 MB.
pub const MAX_FRAME_SIZE: usize = 0xff_ffff - 16;

/// Why a codec configuration was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Over [`MAX_CONFIG_SIZE`].
    #[error("{what} of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Which configuration.
        what: &'static str,
        /// Its length.
        len: usize,
        /// [`MAX_CONFIG_SIZE`].
        max: usize,
    },
    /// A record ends inside a field.
    #[error("{what} truncated at byte {offset}")]
    Truncated {
        /// Which record.
        what: &'static str,
        /// Offset of the field that runs past the end.
        offset: usize,
    },
    /// No usable entry of a kind the codec needs is left after dropping the bad ones.
    #[error("{what} has no usable {missing}")]
    Missing {
        /// Which record.
        what: &'static str,
        /// The parameter set missing.
        missing: &'static str,
    },
    /// A bad AudioSpecificConfig.
    #[error(transparent)]
    Aac(#[from] aac::AacError),
}

/// An entry of a configuration record that was dropped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The kind of entry (`SPS`, `PPS`, `VPS`, ...).
    pub what: &'static str,
    /// Its index among the entries of its array.
    pub index: usize,
    /// The rule it broke.
    pub why: &'static str,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} #{} ({})", self.what, self.index, self.why)
    }
}

/// A configuration that passed: the usable part (the original bytes when nothing was dropped)
/// and what was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<T> {
    /// What to carry.
    pub value: T,
    /// Entries that were dropped, to log once.
    pub dropped: Vec<Dropped>,
}

/// Checks a track's codec configuration ([`h264::check_avcc`], [`h265::check_hvcc`],
/// [`aac::track`]) and returns the track with the usable configuration. An empty video
/// configuration (parameter sets only in band, as some cameras send them) passes as it is.
pub fn check_track(track: TrackInfo) -> Result<Checked<TrackInfo>, ConfigError> {
    match track {
        TrackInfo::Video { ref config, .. } if config.is_empty() => Ok(Checked { value: track, dropped: vec![] }),
        TrackInfo::Video { codec, config, clock_rate } => {
            let c = match codec {
                VideoCodec::H264 => h264::check_avcc(&config)?,
                VideoCodec::H265 => h265::check_hvcc(&config)?,
            };
            Ok(Checked { value: TrackInfo::Video { codec, config: c.value, clock_rate }, dropped: c.dropped })
        }
        TrackInfo::Audio { codec: AudioCodec::Aac, config, clock_rate, .. } => {
            Ok(Checked { value: aac::track(config, clock_rate)?, dropped: vec![] })
        }
        TrackInfo::Audio { .. } => Ok(Checked { value: track, dropped: vec![] }),
    }
}

/// Refuses a configuration over [`MAX_CONFIG_SIZE`].
pub(crate) fn check_size(what: &'static str, config: &[u8]) -> Result<(), ConfigError> {
    if config.len() > MAX_CONFIG_SIZE {
        return Err(ConfigError::TooLarge { what, len: config.len(), max: MAX_CONFIG_SIZE });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn config_too_large() {
        let config = Bytes::from(vec![1u8; MAX_CONFIG_SIZE + 1]);
        for codec in [VideoCodec::H264, VideoCodec::H265] {
            let t = TrackInfo::Video { codec, config: config.clone(), clock_rate: 1000 };
            assert!(matches!(check_track(t), Err(ConfigError::TooLarge { len, .. }) if len == MAX_CONFIG_SIZE + 1));
        }
        let t = TrackInfo::Audio { codec: AudioCodec::Aac, config, sample_rate: 0, channels: 0, clock_rate: 1000 };
        assert!(matches!(check_track(t), Err(ConfigError::Aac(aac::AacError::TooLarge(_)))));
    }

    #[test]
    fn empty_video_config_waits_for_in_band_parameters() {
        let t = TrackInfo::Video { codec: VideoCodec::H265, config: Bytes::new(), clock_rate: 90000 };
        assert_eq!(check_track(t.clone()), Ok(Checked { value: t, dropped: vec![] }));
    }

    #[test]
    fn dropped_entries_name_themselves() {
        let d = Dropped { what: "SPS", index: 0, why: "empty NAL unit" };
        assert_eq!(d.to_string(), "SPS #0 (empty NAL unit)");
    }
}
