//! AAC AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1).

use thiserror::Error;

/// Sampling frequencies by `samplingFrequencyIndex` (ISO/IEC 14496-3 Table 1.18).
const SAMPLE_RATES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/// The fields of an AudioSpecificConfig that ferrocast uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    /// Audio object type (2 = AAC-LC).
    pub object_type: u8,
    /// Sampling rate in Hz.
    pub sample_rate: u32,
    /// Channel configuration (1 = mono, 2 = stereo, ...).
    pub channels: u8,
    /// `samplingFrequencyIndex` (15 = explicit rate).
    pub frequency_index: u8,
}

/// Why an AudioSpecificConfig could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AacError {
    /// Fewer bytes than the fields need.
    #[error("AudioSpecificConfig truncated at bit {0}")]
    Truncated(usize),
    /// A reserved sampling frequency index.
    #[error("AudioSpecificConfig: reserved sampling frequency index {0}")]
    BadSampleRate(u8),
    /// An explicit sampling frequency of 0 Hz (1.6.2.1 `samplingFrequency`): every
    /// timestamp conversion to the track's clock would divide by it.
    #[error("AudioSpecificConfig: sampling frequency 0")]
    ZeroSampleRate,
    /// Audio object type 0, "Null" (Table 1.17): no decoder exists for it.
    #[error("AudioSpecificConfig: audio object type 0 (Null)")]
    NullObjectType,
    /// Over [`crate::check::MAX_CONFIG_SIZE`].
    #[error("AudioSpecificConfig of {0} bytes is over the size limit")]
    TooLarge(usize),
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn read(&mut self, n: usize) -> Result<u32, AacError> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8).ok_or(AacError::Truncated(self.pos))?;
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Ok(v)
    }
}

impl AudioSpecificConfig {
    /// Parses the leading fields of an AudioSpecificConfig.
    pub fn parse(data: &[u8]) -> Result<Self, AacError> {
        let mut b = Bits { data, pos: 0 };
        let mut object_type = b.read(5)? as u8;
        if object_type == 31 {
            object_type = 32 + b.read(6)? as u8;
        }
        let index = b.read(4)? as u8;
        let sample_rate = match index {
            15 => b.read(24)?,
            i => *SAMPLE_RATES.get(usize::from(i)).ok_or(AacError::BadSampleRate(i))?,
        };
        let channels = b.read(4)? as u8;
        Ok(AudioSpecificConfig { object_type, sample_rate, channels, frequency_index: index })
    }
}

impl AudioSpecificConfig {
    /// The 7-byte ADTS header (ISO/IEC 13818-7 6.2, no CRC) for a raw frame of
    /// `payload_len` bytes. Object types beyond what ADTS's 2-bit profile can say (SBR, PS)
    /// are signalled as AAC-LC, as encoders do for HE-AAC in ADTS.
    pub fn adts_header(&self, payload_len: usize) -> [u8; 7] {
        let profile = if (1..=4).contains(&self.object_type) { self.object_type - 1 } else { 1 };
        let index = if self.frequency_index >= 13 { 4 } else { self.frequency_index };
        let len = payload_len.saturating_add(7).min(0x1fff) as u32;
        let ch = self.channels & 7;
        [
            0xff,
            0xf1,
            (profile << 6) | (index << 2) | (ch >> 2),
            ((ch & 3) << 6) | (len >> 11) as u8,
            (len >> 3) as u8,
            (((len & 7) << 5) as u8) | 0x1f,
            0xfc,
        ]
    }
}

/// The track an AudioSpecificConfig describes, timestamps in `clock_rate` Hz. This is the
/// check every AAC configuration from a publisher goes through (RTMP sequence headers, SDP
/// `config=`): besides parsing, it refuses what no output can carry (object type 0, a 0 Hz
/// sampling frequency, a config over [`crate::check::MAX_CONFIG_SIZE`]).
pub fn track(config: bytes::Bytes, clock_rate: u32) -> Result<crate::TrackInfo, AacError> {
    if config.len() > crate::check::MAX_CONFIG_SIZE {
        return Err(AacError::TooLarge(config.len()));
    }
    let asc = AudioSpecificConfig::parse(&config)?;
    if asc.object_type == 0 {
        return Err(AacError::NullObjectType);
    }
    if asc.sample_rate == 0 {
        return Err(AacError::ZeroSampleRate);
    }
    Ok(crate::TrackInfo::Audio {
        codec: crate::AudioCodec::Aac,
        config,
        sample_rate: asc.sample_rate,
        channels: asc.channels,
        clock_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ffmpeg_aac_lc_44100_stereo() {
        // What `ffmpeg -c:a aac -ar 44100 -ac 2` puts in its FLV sequence header.
        let asc = AudioSpecificConfig::parse(&[0x12, 0x10]).unwrap();
        assert_eq!(asc, AudioSpecificConfig { object_type: 2, sample_rate: 44100, channels: 2, frequency_index: 4 });
    }

    #[test]
    fn adts_header_fields() {
        let asc = AudioSpecificConfig::parse(&[0x12, 0x10]).unwrap();
        // LC, 44.1 kHz, stereo, 100 + 7 bytes.
        assert_eq!(asc.adts_header(100), [0xff, 0xf1, 0x50, 0x80, 0x0d, 0x7f, 0xfc]);
    }

    #[test]
    fn unusable_configs_are_refused() {
        let t = |c: &'static [u8]| track(bytes::Bytes::from_static(c), 1000);
        assert!(t(&[0x12, 0x10]).is_ok());
        // Object type 0, 44.1 kHz.
        assert_eq!(t(&[0x02, 0x10]), Err(AacError::NullObjectType));
        // AAC-LC, explicit frequency (index 15) of 0 Hz, stereo.
        assert_eq!(t(&[0x17, 0x80, 0x00, 0x00, 0x10]), Err(AacError::ZeroSampleRate));
        assert_eq!(t(&[]), Err(AacError::Truncated(0)));
    }

    #[test]
    fn config_too_large() {
        let big = bytes::Bytes::from(vec![0x12; crate::check::MAX_CONFIG_SIZE + 1]);
        assert_eq!(track(big, 1000), Err(AacError::TooLarge(crate::check::MAX_CONFIG_SIZE + 1)));
    }

    #[test]
    fn adts_header_of_an_oversized_frame_does_not_overflow() {
        let asc = AudioSpecificConfig::parse(&[0x12, 0x10]).unwrap();
        let h = asc.adts_header(usize::MAX - 3);
        assert_eq!(h[..2], [0xff, 0xf1]);
    }

    #[test]
    fn truncated_and_reserved_are_errors() {
        assert_eq!(AudioSpecificConfig::parse(&[0x12]), Err(AacError::Truncated(8)));
        assert_eq!(AudioSpecificConfig::parse(&[0x16, 0x90]), Err(AacError::BadSampleRate(13)));
    }
}
