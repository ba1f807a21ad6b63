//! AAC over RTP as MP4A-LATM (RFC 6416 6.1, formerly RFC 3016 4.1): the payload is a sequence of
//! LATM `AudioMuxElement`s (ISO/IEC 14496-3 1.7.3), an element larger than a packet split over
//! several packets with the marker bit on the last. GStreamer's `rtpmp4apay` (picked by
//! `rtspclientsink` for AAC), ffmpeg's `-rtpflags latm` and many cameras send it.
//!
//! The `StreamMuxConfig` that says how to read the elements comes from the SDP's `config=`
//! when `cpresent=0`, or in band, at the head of the elements, when `cpresent=1` (the default,
//! RFC 6416 7.1). What ferrocast carries is one program of one layer (one AAC stream) with
//! frame lengths given per frame (`frameLengthType` 0), which is what every sender above makes;
//! anything else is refused with a clear error, never misread.
//!
//! Out come ordinary AAC access units (raw frames) and the stream's AudioSpecificConfig, so
//! every output carries the track as AAC.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::{AccessUnit, DepacketizeError, MAX_ACCESS_UNIT_SIZE};
use crate::rtp::RtpPacket;
use crate::sdp::Media;

/// Why a LATM configuration or element could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LatmError {
    /// The bits ran out at this bit offset.
    #[error("LATM data cut short at bit {0}")]
    Truncated(usize),
    /// A valid configuration ferrocast does not carry (the rule that refused it).
    #[error("LATM configuration not supported: {0}")]
    Unsupported(&'static str),
    /// A value the syntax forbids.
    #[error("invalid LATM data: {0}")]
    Invalid(&'static str),
}

impl From<LatmError> for DepacketizeError {
    fn from(e: LatmError) -> DepacketizeError {
        DepacketizeError::Invalid(match e {
            LatmError::Truncated(_) => "LATM element cut short",
            LatmError::Unsupported(why) | LatmError::Invalid(why) => why,
        })
    }
}

/// A bit reader over a byte slice (most significant bit first).
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn read(&mut self, n: u32) -> Result<u32, LatmError> {
        debug_assert!(n <= 32);
        if self.pos + n as usize > self.data.len() * 8 {
            return Err(LatmError::Truncated(self.pos));
        }
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | u32::from((self.data[self.pos / 8] >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Ok(v)
    }

    fn peek(&self, n: u32) -> Option<u32> {
        Bits { data: self.data, pos: self.pos }.read(n).ok()
    }

    fn flag(&mut self) -> Result<bool, LatmError> {
        Ok(self.read(1)? == 1)
    }

    fn skip(&mut self, n: usize) -> Result<(), LatmError> {
        if self.pos.saturating_add(n) > self.data.len() * 8 {
            return Err(LatmError::Truncated(self.pos));
        }
        self.pos += n;
        Ok(())
    }

    fn remaining(&self) -> usize {
        self.data.len() * 8 - self.pos
    }

    /// `n` bytes from the current position, which need not be byte aligned.
    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, LatmError> {
        if n.saturating_mul(8) > self.remaining() {
            return Err(LatmError::Truncated(self.pos));
        }
        (0..n).map(|_| self.read(8).map(|b| b as u8)).collect()
    }

    /// LatmGetValue() (1.7.3, Table 1.42).
    fn latm_value(&mut self) -> Result<u32, LatmError> {
        let bytes = self.read(2)?;
        let mut v = 0u32;
        for _ in 0..=bytes {
            v = (v << 8) | self.read(8)?;
        }
        Ok(v)
    }
}

/// The bits of `data` from `start` to `end`, as bytes padded with zero bits.
fn copy_bits(data: &[u8], start: usize, end: usize) -> Vec<u8> {
    let mut b = Bits { data, pos: start };
    let mut out = vec![0u8; (end - start).div_ceil(8)];
    for i in 0..end - start {
        if b.read(1).unwrap_or(0) == 1 {
            out[i / 8] |= 0x80 >> (i % 8);
        }
    }
    out
}

fn audio_object_type(b: &mut Bits) -> Result<u32, LatmError> {
    let t = b.read(5)?;
    Ok(if t == 31 { 32 + b.read(6)? } else { t })
}

fn sampling_frequency(b: &mut Bits) -> Result<(), LatmError> {
    if b.read(4)? == 15 {
        b.read(24)?;
    }
    Ok(())
}

/// Reads an AudioSpecificConfig in place (1.6.2.1) to find where it ends: LATM puts it in the
/// middle of a bit stream without its length (with `audioMuxVersion` 0).
fn skip_audio_specific_config(b: &mut Bits) -> Result<(), LatmError> {
    let mut aot = audio_object_type(b)?;
    sampling_frequency(b)?;
    let channels = b.read(4)?;
    let explicit = aot == 5 || aot == 29;
    if explicit {
        // Explicit SBR/PS signalling: the extension rate, then the core object type.
        sampling_frequency(b)?;
        aot = audio_object_type(b)?;
        if aot == 22 {
            b.read(4)?;
        }
    }
    match aot {
        1..=4 | 6 | 7 | 17 | 19..=23 => {
            // GASpecificConfig (4.4.1).
            b.read(1)?; // frameLengthFlag
            if b.flag()? {
                b.read(14)?; // coreCoderDelay
            }
            let extension = b.flag()?;
            if channels == 0 {
                return Err(LatmError::Unsupported("AudioSpecificConfig with a program_config_element"));
            }
            if aot == 6 || aot == 20 {
                b.read(3)?; // layerNr
            }
            if extension {
                if aot == 22 {
                    b.read(16)?; // numOfSubFrame, layer_length
                }
                if matches!(aot, 17 | 19 | 20 | 23) {
                    b.read(3)?; // resilience flags
                }
                b.read(1)?; // extensionFlag3
            }
        }
        _ => return Err(LatmError::Unsupported("audio object type other than AAC")),
    }
    if matches!(aot, 17 | 19..=27 | 39) && b.read(2)? >= 2 {
        return Err(LatmError::Unsupported("AudioSpecificConfig with error protection"));
    }
    // Backward-compatible SBR/PS signalling (1.6.5.2, `syncExtensionType` 0x2b7), as
    // libavcodec's AAC encoder writes it (GStreamer's `avenc_aac`, and so `rtpmp4apay`'s
    // config). What follows an AudioSpecificConfig in a StreamMuxConfig, `frameLengthType` 0
    // then the buffer fullness, starts with bits 000 and cannot be taken for it.
    if !explicit && b.peek(11) == Some(0x2b7) {
        b.read(11)?;
        match audio_object_type(b)? {
            5 => {
                if b.flag()? {
                    sampling_frequency(b)?;
                }
                if b.peek(11) == Some(0x548) {
                    b.read(12)?; // syncExtensionType, psPresentFlag
                }
            }
            22 => {
                if b.flag()? {
                    sampling_frequency(b)?;
                }
                b.read(4)?; // extensionChannelConfiguration
            }
            _ => {}
        }
    }
    Ok(())
}

/// A `StreamMuxConfig` (1.7.3, Table 1.42) of one program, one layer, with its
/// AudioSpecificConfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMuxConfig {
    /// The AudioSpecificConfig, as bytes (padded to a byte boundary).
    pub asc: Bytes,
    /// `numSubFrames`: each element holds this many plus one frames.
    pub num_sub_frames: u8,
    /// `otherDataPresent` with `audioMuxVersion` 0: the bits of other data after the frames.
    other_data_bits: Option<u32>,
}

impl StreamMuxConfig {
    /// Parses the `config=` value of an SDP (its bytes, from hex).
    ///
    /// Quirk (GStreamer 1.22 `rtpmp4apay`, so `rtspclientsink`): its config ends with the
    /// AudioSpecificConfig's own padding, without `frameLengthType`, `latmBufferFullness` and
    /// the two flags after it. A config cut short there reads as `frameLengthType` 0 without
    /// other data or CRC, which is what that payloader sends (libavformat reads it the same
    /// way).
    pub fn parse(data: &[u8]) -> Result<StreamMuxConfig, LatmError> {
        StreamMuxConfig::read(&mut Bits { data, pos: 0 }, true)
    }

    fn read(b: &mut Bits, lenient: bool) -> Result<StreamMuxConfig, LatmError> {
        let version = b.read(1)?;
        if version == 1 && b.flag()? {
            return Err(LatmError::Unsupported("audioMuxVersionA 1"));
        }
        if version == 1 {
            b.latm_value()?; // taraBufferFullness
        }
        if !b.flag()? {
            return Err(LatmError::Unsupported("allStreamsSameTimeFraming 0"));
        }
        let num_sub_frames = b.read(6)? as u8;
        if b.read(4)? != 0 {
            return Err(LatmError::Unsupported("more than one program"));
        }
        if b.read(3)? != 0 {
            return Err(LatmError::Unsupported("more than one layer"));
        }
        let asc = if version == 0 {
            let start = b.pos;
            skip_audio_specific_config(b)?;
            copy_bits(b.data, start, b.pos)
        } else {
            let len = b.latm_value()? as usize;
            let start = b.pos;
            skip_audio_specific_config(b)?;
            let used = b.pos - start;
            if len < used {
                return Err(LatmError::Invalid("ascLen shorter than the AudioSpecificConfig"));
            }
            b.skip(len - used)?; // fill bits
            copy_bits(b.data, start, start + used)
        };
        let other_data_bits = match StreamMuxConfig::read_tail(b, version) {
            Err(LatmError::Truncated(_)) if lenient => None,
            r => r?,
        };
        ferrocast_media::aac::AudioSpecificConfig::parse(&asc)
            .map_err(|_| LatmError::Invalid("AudioSpecificConfig unreadable"))?;
        Ok(StreamMuxConfig { asc: Bytes::from(asc), num_sub_frames, other_data_bits })
    }
}

impl StreamMuxConfig {
    /// What follows the AudioSpecificConfig: the frame length type, other data and CRC.
    fn read_tail(b: &mut Bits, version: u32) -> Result<Option<u32>, LatmError> {
        if b.read(3)? != 0 {
            return Err(LatmError::Unsupported("frameLengthType other than 0"));
        }
        b.read(8)?; // latmBufferFullness
        let other_data_bits = if b.flag()? {
            if version == 1 {
                Some(b.latm_value()?)
            } else {
                let mut bits = 0u32;
                loop {
                    let escape = b.flag()?;
                    bits =
                        bits.checked_mul(256).ok_or(LatmError::Invalid("otherDataLenBits overflows"))? + b.read(8)?;
                    if !escape {
                        break;
                    }
                }
                Some(bits)
            }
        } else {
            None
        };
        if b.flag()? {
            b.read(8)?; // crcCheckSum
        }
        Ok(other_data_bits)
    }
}

/// Parses the hex of an SDP `config=` parameter.
pub fn parse_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.as_bytes()
        .chunks_exact(2)
        .map(|p| std::str::from_utf8(p).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// The `StreamMuxConfig` an SDP media section gives in `config=`, and whether more come in
/// band (`cpresent`, 1 unless said otherwise: RFC 6416 7.1).
pub fn sdp_config(m: &Media) -> (Option<StreamMuxConfig>, bool) {
    let cpresent = m.param("cpresent").is_none_or(|v| v.trim() != "0");
    let config = m.param("config").and_then(parse_hex).and_then(|c| StreamMuxConfig::parse(&c).ok());
    (config, cpresent)
}

/// Reassembles LATM elements from RTP and splits them into AAC frames.
#[derive(Debug)]
pub struct Depacketizer {
    cpresent: bool,
    config: Option<StreamMuxConfig>,
    config_changed: bool,
    clock_rate: u32,
    /// The element (or elements) being assembled, and the RTP time of its first packet.
    element: BytesMut,
    element_time: Option<u32>,
    expected_seq: Option<u16>,
    broken: bool,
    ready: VecDeque<AccessUnit>,
}

/// Frames taken from one assembled payload: more is a hostile packet (each frame of a real
/// one is at least a few bytes; a 64 KiB interleaved packet holds no more than this).
pub const MAX_FRAMES_PER_PAYLOAD: usize = 1024;

impl Depacketizer {
    /// A depacketizer for an `MP4A-LATM` media section.
    pub fn new(m: &Media) -> Depacketizer {
        let (config, cpresent) = sdp_config(m);
        Depacketizer {
            cpresent,
            config,
            config_changed: false,
            clock_rate: m.clock_rate.max(1),
            element: BytesMut::new(),
            element_time: None,
            expected_seq: None,
            broken: false,
            ready: VecDeque::new(),
        }
    }

    /// Feeds one packet (in sequence order). A loss breaks the element it falls in, the loss
    /// of its marker packet included. The packet after a loss opens a new element only if it
    /// has a new timestamp, and that element is kept only if it parses whole.
    pub fn push(&mut self, p: &RtpPacket) -> Result<(), DepacketizeError> {
        let mut result = Ok(());
        if let Some(expected) = self.expected_seq
            && expected != p.sequence
        {
            self.broken = true;
            result = Err(DepacketizeError::Loss { expected, got: p.sequence });
        }
        self.expected_seq = Some(p.sequence.wrapping_add(1));
        if self.element_time.is_some_and(|t| t != p.timestamp) {
            // A new timestamp without a marker: the element ended there (a sender that does
            // not set the marker bit), or its marker packet was lost.
            result = result.and(self.finish());
        }
        if self.element_time.is_none() {
            self.element_time = Some(p.timestamp);
        }
        if !self.broken {
            if self.element.len() + p.payload.len() > MAX_ACCESS_UNIT_SIZE {
                self.element.clear();
                self.broken = true;
                result = result.and(Err(DepacketizeError::TooLarge));
            } else {
                self.element.extend_from_slice(&p.payload);
            }
        }
        if p.marker {
            result = result.and(self.finish());
        }
        result
    }

    /// Ends the element being assembled: split into frames unless broken.
    fn finish(&mut self) -> Result<(), DepacketizeError> {
        let data = std::mem::take(&mut self.element).freeze();
        let time = self.element_time.take();
        let broken = std::mem::take(&mut self.broken);
        match time {
            Some(time) if !broken && !data.is_empty() => self.split(&data, time),
            _ => Ok(()),
        }
    }

    /// Splits assembled AudioMuxElements (1.7.3, Table 1.41) into frames.
    fn split(&mut self, data: &Bytes, time: u32) -> Result<(), DepacketizeError> {
        let mut frames = Vec::new();
        let r = self.split_into(data, time, &mut frames);
        if r.is_ok() {
            // All or nothing: a payload that does not parse whole is not trusted in part.
            self.ready.extend(frames);
        }
        r
    }

    fn split_into(&mut self, data: &Bytes, time: u32, out: &mut Vec<AccessUnit>) -> Result<(), DepacketizeError> {
        let mut b = Bits { data, pos: 0 };
        let mut time = time;
        let mut count = 0usize;
        while b.remaining() >= 8 {
            if self.cpresent && !b.flag()? {
                // useSameStreamMux 0: a (new) configuration precedes the frames.
                let config = StreamMuxConfig::read(&mut b, false)?;
                if self.config.as_ref().is_none_or(|c| c.asc != config.asc) {
                    self.config_changed = true;
                }
                self.config = Some(config);
            }
            let Some(config) = self.config.clone() else {
                return Err(DepacketizeError::Invalid("LATM element before any StreamMuxConfig"));
            };
            let duration = frame_duration(&config.asc, self.clock_rate);
            for _ in 0..=config.num_sub_frames {
                // PayloadLengthInfo (Table 1.44) with frameLengthType 0: bytes until one < 255.
                let mut len = 0usize;
                loop {
                    let tmp = b.read(8)? as usize;
                    len += tmp;
                    if tmp != 255 {
                        break;
                    }
                }
                if len * 8 > b.remaining() {
                    return Err(DepacketizeError::Invalid("LATM frame longer than its element"));
                }
                count += 1;
                if count > MAX_FRAMES_PER_PAYLOAD {
                    return Err(DepacketizeError::Invalid("more LATM frames than any real payload holds"));
                }
                // Byte aligned (cpresent=0, the common case): a slice of the packet, no copy.
                let frame = if b.pos.is_multiple_of(8) {
                    let at = b.pos / 8;
                    b.pos += len * 8;
                    data.slice(at..at + len)
                } else {
                    Bytes::from(b.bytes(len)?)
                };
                if !frame.is_empty() {
                    out.push(AccessUnit { rtp_time: time, keyframe: true, data: frame });
                }
                time = time.wrapping_add(duration);
            }
            if let Some(bits) = config.other_data_bits {
                b.skip(bits as usize)?;
            }
            // ByteAlign().
            b.pos = b.pos.div_ceil(8) * 8;
        }
        Ok(())
    }

    /// The next AAC frame.
    pub fn pull(&mut self) -> Option<AccessUnit> {
        self.ready.pop_front()
    }

    /// The AudioSpecificConfig of a StreamMuxConfig that came in band, once per change.
    pub fn take_new_config(&mut self) -> Option<Bytes> {
        std::mem::take(&mut self.config_changed).then(|| self.config.as_ref().map(|c| c.asc.clone())).flatten()
    }
}

/// One AAC frame's duration in the RTP clock: 1024 samples (960 with `frameLengthFlag`) at
/// the core sampling rate.
fn frame_duration(asc: &[u8], clock_rate: u32) -> u32 {
    let Ok(c) = ferrocast_media::aac::AudioSpecificConfig::parse(asc) else { return 1024 };
    // frameLengthFlag follows the channel configuration; only AAC-LC/Main/SSR/LTP without SBR
    // have it where this reads (enough for the duration; SBR frames are 1024 core samples).
    let samples = if matches!(c.object_type, 1..=4) && frame_length_flag(asc) { 960 } else { 1024 };
    if c.sample_rate == 0 {
        return samples;
    }
    (u64::from(samples) * u64::from(clock_rate) / u64::from(c.sample_rate)).clamp(1, u64::from(u32::MAX)) as u32
}

fn frame_length_flag(asc: &[u8]) -> bool {
    let mut b = Bits { data: asc, pos: 0 };
    let mut flag = || -> Result<bool, LatmError> {
        audio_object_type(&mut b)?;
        sampling_frequency(&mut b)?;
        b.read(4)?;
        b.flag()
    };
    flag().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_packet as packet;

    /// What `ffmpeg -c:a aac -ar 44100 -ac 1 -f rtp -rtpflags latm` announces (ffmpeg 5.1.6).
    const FFMPEG_CONFIG: &str = "400024103fc0";

    fn media(fmtp: &str) -> Media {
        let sdp = format!("m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MP4A-LATM/44100/1\r\na=fmtp:97 {fmtp}\r\n");
        crate::sdp::parse(sdp.as_bytes()).unwrap().media.remove(0)
    }

    /// A cpresent=0 element: PayloadLengthInfo then the frame.
    fn element(frame: &[u8]) -> Vec<u8> {
        let mut out = vec![255u8; frame.len() / 255];
        out.push((frame.len() % 255) as u8);
        out.extend_from_slice(frame);
        out
    }

    #[test]
    fn ffmpeg_stream_mux_config() {
        let c = StreamMuxConfig::parse(&parse_hex(FFMPEG_CONFIG).unwrap()).unwrap();
        // AAC-LC, 44.1 kHz, mono: the AudioSpecificConfig 0x1208.
        assert_eq!(&c.asc[..], &[0x12, 0x08]);
        assert_eq!(c.num_sub_frames, 0);
        assert_eq!(c.other_data_bits, None);
    }

    /// What GStreamer 1.22's `audiotestsrc ! avenc_aac ! rtspclientsink` announces
    /// (testdata/gstreamer1.22_announce_latm.txt): an AudioSpecificConfig with the SBR sync
    /// extension, and nothing after it.
    #[test]
    fn gstreamer_stream_mux_config() {
        let c = StreamMuxConfig::parse(&parse_hex("40002410adca00").unwrap()).unwrap();
        // AAC-LC 44.1 kHz mono, then syncExtensionType 0x2b7, SBR, sbrPresentFlag 0.
        assert_eq!(&c.asc[..], &[0x12, 0x08, 0x56, 0xe5, 0x00]);
        assert_eq!(c.num_sub_frames, 0);
        // In band, the same cut is an error.
        let mut b = Bits { data: &parse_hex("40002410adca00").unwrap(), pos: 0 };
        assert!(matches!(StreamMuxConfig::read(&mut b, false), Err(LatmError::Truncated(_))));
    }

    #[test]
    fn cpresent_0_frames_and_fragments() {
        let mut d = Depacketizer::new(&media(&format!("profile-level-id=41;cpresent=0;config={FFMPEG_CONFIG}")));
        d.push(&packet(1, 1000, true, &element(&[1, 2, 3]))).unwrap();
        assert_eq!(d.pull(), Some(AccessUnit { rtp_time: 1000, keyframe: true, data: Bytes::from_static(&[1, 2, 3]) }));
        // A 600-byte frame in three packets (length 255+255+90).
        let big: Vec<u8> = (0..600).map(|i| i as u8).collect();
        let e = element(&big);
        assert_eq!(&e[..3], &[255, 255, 90]);
        d.push(&packet(2, 2024, false, &e[..200])).unwrap();
        d.push(&packet(3, 2024, false, &e[200..400])).unwrap();
        assert_eq!(d.pull(), None);
        d.push(&packet(4, 2024, true, &e[400..])).unwrap();
        assert_eq!(d.pull().unwrap().data, big);
        assert_eq!(d.take_new_config(), None, "the SDP's config is not news");
    }

    #[test]
    fn loss_inside_an_element_drops_it() {
        let mut d = Depacketizer::new(&media(&format!("cpresent=0;config={FFMPEG_CONFIG}")));
        let big: Vec<u8> = vec![7; 600];
        let e = element(&big);
        d.push(&packet(1, 0, false, &e[..200])).unwrap();
        // seq 2 lost.
        assert_eq!(d.push(&packet(3, 0, true, &e[400..])), Err(DepacketizeError::Loss { expected: 2, got: 3 }));
        assert_eq!(d.pull(), None);
        // The marker packet of the next element lost: the element is dropped, the one after it
        // comes out.
        d.push(&packet(4, 1024, false, &e[..200])).unwrap();
        assert!(d.push(&packet(6, 2048, true, &element(&[9, 9]))).is_err());
        assert_eq!(d.pull().map(|a| (a.rtp_time, a.data.to_vec())), Some((2048, vec![9, 9])));
        assert_eq!(d.pull(), None, "the element that lost its marker packet is dropped");
        // The tail of an element whose head was lost does not parse whole: dropped.
        let e = element(&(0..600).map(|i| i as u8).collect::<Vec<_>>());
        d.push(&packet(7, 3072, false, &e[..200])).unwrap();
        assert!(d.push(&packet(9, 4096, true, &e[400..])).is_err());
        assert_eq!(d.pull(), None);
    }

    /// Bits written most significant first.
    #[derive(Default)]
    struct Writer {
        bits: Vec<bool>,
    }

    impl Writer {
        fn put(&mut self, v: u32, n: u32) {
            for i in (0..n).rev() {
                self.bits.push((v >> i) & 1 == 1);
            }
        }
        fn bytes(&self) -> Vec<u8> {
            self.bits
                .chunks(8)
                .map(|c| c.iter().enumerate().fold(0u8, |a, (i, b)| a | (u8::from(*b) << (7 - i))))
                .collect()
        }
    }

    /// StreamMuxConfig for AAC-LC 48 kHz stereo (ASC 0x1190), `num_sub_frames` + 1 frames.
    fn put_config(w: &mut Writer, num_sub_frames: u32) {
        w.put(0, 1); // audioMuxVersion
        w.put(1, 1); // allStreamsSameTimeFraming
        w.put(num_sub_frames, 6);
        w.put(0, 4); // numProgram
        w.put(0, 3); // numLayer
        w.put(2, 5); // AAC-LC
        w.put(3, 4); // 48 kHz
        w.put(2, 4); // stereo
        w.put(0, 3); // GASpecificConfig flags
        w.put(0, 3); // frameLengthType
        w.put(0xff, 8); // latmBufferFullness
        w.put(0, 1); // otherDataPresent
        w.put(0, 1); // crcCheckPresent
    }

    #[test]
    fn cpresent_1_config_in_band() {
        // No config= in the SDP: it comes in the first element, then useSameStreamMux.
        let mut d = Depacketizer::new(&media("profile-level-id=30"));
        let mut w = Writer::default();
        w.put(0, 1); // useSameStreamMux 0
        put_config(&mut w, 1);
        for frame in [[1u8, 2], [3, 4]] {
            w.put(2, 8);
            for b in frame {
                w.put(u32::from(b), 8);
            }
        }
        d.push(&packet(1, 48_000, true, &w.bytes())).unwrap();
        assert_eq!(d.take_new_config().as_deref(), Some(&[0x11, 0x90][..]));
        let got: Vec<(u32, Vec<u8>)> = std::iter::from_fn(|| d.pull()).map(|a| (a.rtp_time, a.data.to_vec())).collect();
        // The RTP clock is 44100 here, the AAC rate 48000: 1024 samples are 940 RTP units.
        assert_eq!(got, [(48_000, vec![1, 2]), (48_940, vec![3, 4])]);
        let mut w = Writer::default();
        w.put(1, 1); // useSameStreamMux 1
        for _ in 0..2 {
            w.put(1, 8);
            w.put(0x55, 8);
        }
        d.push(&packet(2, 50_000, true, &w.bytes())).unwrap();
        assert_eq!(std::iter::from_fn(|| d.pull()).count(), 2);
        assert_eq!(d.take_new_config(), None);
    }

    #[test]
    fn element_before_any_config_is_an_error() {
        let mut d = Depacketizer::new(&media("cpresent=1"));
        let mut w = Writer::default();
        w.put(1, 1);
        w.put(1, 8);
        w.put(0, 8);
        assert!(d.push(&packet(1, 0, true, &w.bytes())).is_err());
        assert_eq!(d.pull(), None);
    }

    #[test]
    fn unsupported_configs_are_refused() {
        let refuse = |w: Writer| StreamMuxConfig::parse(&w.bytes());
        let mut w = Writer::default();
        w.put(0, 1);
        w.put(0, 1); // allStreamsSameTimeFraming 0
        assert_eq!(refuse(w), Err(LatmError::Unsupported("allStreamsSameTimeFraming 0")));
        let mut w = Writer::default();
        w.put(0b01, 2);
        w.put(0, 6);
        w.put(1, 4); // two programs
        assert_eq!(refuse(w), Err(LatmError::Unsupported("more than one program")));
        assert!(matches!(StreamMuxConfig::parse(&[0x40]), Err(LatmError::Truncated(_))));
    }

    #[test]
    fn frames_per_payload_too_large() {
        // num_sub_frames 63 and many empty frames per element: capped.
        let mut d = Depacketizer::new(&media("cpresent=1"));
        let mut w = Writer::default();
        w.put(0, 1);
        put_config(&mut w, 63);
        for _ in 0..64 {
            w.put(0, 8);
        }
        while !w.bits.len().is_multiple_of(8) {
            w.put(0, 1);
        }
        // Then elements of 64 empty frames each, using the same config.
        for _ in 0..(MAX_FRAMES_PER_PAYLOAD / 64 + 1) {
            w.put(1, 1);
            for _ in 0..64 {
                w.put(0, 8);
            }
            while !w.bits.len().is_multiple_of(8) {
                w.put(0, 1);
            }
        }
        assert_eq!(
            d.push(&packet(1, 0, true, &w.bytes())),
            Err(DepacketizeError::Invalid("more LATM frames than any real payload holds"))
        );
    }

    #[test]
    fn element_too_large() {
        let mut d = Depacketizer::new(&media(&format!("cpresent=0;config={FFMPEG_CONFIG}")));
        let chunk = vec![255u8; 60_000];
        let mut result = Ok(());
        for seq in 0..(MAX_ACCESS_UNIT_SIZE / chunk.len() + 2) as u16 {
            result = result.and(d.push(&packet(seq, 0, false, &chunk)));
        }
        assert_eq!(result, Err(DepacketizeError::TooLarge));
        assert_eq!(d.pull(), None);
    }
}
