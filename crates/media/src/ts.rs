//! MPEG-2 transport stream muxer (ISO/IEC 13818-1) for HLS segments: PAT/PMT, PES with
//! PTS/DTS, PCR on the video PID, continuity counters that carry across segments.

use bytes::{BufMut, BytesMut};

use crate::aac::AudioSpecificConfig;
use crate::avc::nal_units;
use crate::{AudioCodec, Frame, ParamError, TrackInfo, TrackKind, Tracks, VideoCodec, h264, h265, rescale};

/// Transport packet size.
pub const PACKET_SIZE: usize = 188;
const PID_PAT: u16 = 0;
const PID_PMT: u16 = 0x1000;
const PID_VIDEO: u16 = 0x100;
const PID_AUDIO: u16 = 0x101;
/// The MPEG-TS clock.
const CLOCK: u32 = 90_000;
const TS_MASK: i64 = (1 << 33) - 1;

/// CRC-32/MPEG-2 (13818-1 Annex A): polynomial 0x04C11DB7, no reflection.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04c1_1db7 } else { crc << 1 };
        }
    }
    crc
}

struct VideoState {
    codec: VideoCodec,
    clock: u32,
    /// Parameter sets in Annex B, sent before each keyframe that lacks them.
    params: Vec<u8>,
}

struct AudioState {
    codec: AudioCodec,
    clock: u32,
    asc: Option<AudioSpecificConfig>,
}

/// Muxes the frames of one stream into transport packets.
pub struct TsMuxer {
    video: Option<VideoState>,
    audio: Option<AudioState>,
    cc: [u8; 4],
}

impl TsMuxer {
    /// A muxer for these tracks.
    pub fn new(tracks: &Tracks) -> Result<TsMuxer, ParamError> {
        let video = match &tracks.video {
            Some(TrackInfo::Video { codec, config, clock_rate }) => {
                let sets: Vec<bytes::Bytes> = match codec {
                    VideoCodec::H264 => {
                        let c = h264::AvcConfig::parse(config)?;
                        c.sps.into_iter().chain(c.pps).collect()
                    }
                    VideoCodec::H265 => {
                        let c = h265::HevcConfig::parse(config)?;
                        c.vps.into_iter().chain(c.sps).chain(c.pps).collect()
                    }
                };
                let mut params = Vec::new();
                for s in sets {
                    params.extend_from_slice(&[0, 0, 0, 1]);
                    params.extend_from_slice(&s);
                }
                Some(VideoState { codec: *codec, clock: *clock_rate, params })
            }
            _ => None,
        };
        let audio = match &tracks.audio {
            Some(TrackInfo::Audio { codec, config, clock_rate, .. }) => Some(AudioState {
                codec: *codec,
                clock: *clock_rate,
                asc: match codec {
                    AudioCodec::Aac => Some(
                        AudioSpecificConfig::parse(config).map_err(|_| ParamError::Truncated("AudioSpecificConfig"))?,
                    ),
                    _ => None,
                },
            }),
            _ => None,
        };
        // MPEG-TS for HLS carries AAC and MP3; other audio is left out.
        let audio = audio.filter(|a| matches!(a.codec, AudioCodec::Aac | AudioCodec::Mp3));
        Ok(TsMuxer { video, audio, cc: [0; 4] })
    }

    fn pcr_pid(&self) -> u16 {
        if self.video.is_some() { PID_VIDEO } else { PID_AUDIO }
    }

    fn next_cc(&mut self, pid: u16) -> u8 {
        let i = match pid {
            PID_PAT => 0,
            PID_PMT => 1,
            PID_VIDEO => 2,
            _ => 3,
        };
        let c = self.cc[i];
        self.cc[i] = (c + 1) & 0x0f;
        c
    }

    fn section(&mut self, out: &mut BytesMut, pid: u16, section: &[u8]) {
        let start = out.len();
        out.put_u8(0x47);
        out.put_u16(0x4000 | pid);
        let cc = self.next_cc(pid);
        out.put_u8(0x10 | cc);
        out.put_u8(0); // pointer_field
        out.put_slice(section);
        out.put_u32(crc32(section));
        out.resize(start + PACKET_SIZE, 0xff);
    }

    /// Writes PAT and PMT (at the start of every segment, so each can be decoded alone).
    pub fn write_tables(&mut self, out: &mut BytesMut) {
        // PAT: one program, number 1.
        let pat =
            [0x00, 0xb0, 13, 0x00, 0x01, 0xc1, 0x00, 0x00, 0x00, 0x01, 0xe0 | (PID_PMT >> 8) as u8, PID_PMT as u8];
        self.section(out, PID_PAT, &pat);
        let mut streams = Vec::new();
        if let Some(v) = &self.video {
            let st = match v.codec {
                VideoCodec::H264 => 0x1b,
                VideoCodec::H265 => 0x24,
            };
            streams.extend_from_slice(&[st, 0xe0 | (PID_VIDEO >> 8) as u8, PID_VIDEO as u8, 0xf0, 0]);
        }
        if let Some(a) = &self.audio {
            let st = match a.codec {
                AudioCodec::Aac => 0x0f,
                _ => 0x03,
            };
            streams.extend_from_slice(&[st, 0xe0 | (PID_AUDIO >> 8) as u8, PID_AUDIO as u8, 0xf0, 0]);
        }
        let section_length = 9 + streams.len() + 4;
        let pcr = self.pcr_pid();
        let mut pmt = vec![0x02, 0xb0 | (section_length >> 8) as u8, section_length as u8, 0x00, 0x01, 0xc1, 0, 0];
        pmt.extend_from_slice(&[0xe0 | (pcr >> 8) as u8, pcr as u8, 0xf0, 0]);
        pmt.extend_from_slice(&streams);
        self.section(out, PID_PMT, &pmt);
    }

    /// Writes one frame as a PES in transport packets.
    pub fn write_frame(&mut self, frame: &Frame, out: &mut BytesMut) {
        let (pid, stream_id, clock, pes_body) = match frame.kind {
            TrackKind::Video => {
                let Some(v) = &self.video else { return };
                let mut body = Vec::with_capacity(frame.data.len() + v.params.len() + 64);
                let codec = v.codec;
                body.extend_from_slice(access_unit_delimiter(codec));
                let units: Vec<&[u8]> = nal_units(&frame.data).filter(|n| !n.is_empty()).collect();
                if frame.keyframe && !units.iter().any(|n| nal_class(codec, n) == NalClass::ParameterSet) {
                    body.extend_from_slice(&v.params);
                }
                for n in units.iter().filter(|n| nal_class(codec, n) != NalClass::Delimiter) {
                    body.extend_from_slice(&[0, 0, 0, 1]);
                    body.extend_from_slice(n);
                }
                (PID_VIDEO, 0xe0u8, v.clock, body)
            }
            TrackKind::Audio => {
                let Some(a) = &self.audio else { return };
                let mut body = Vec::with_capacity(frame.data.len() + 7);
                if let Some(asc) = &a.asc {
                    body.extend_from_slice(&asc.adts_header(frame.data.len()));
                }
                body.extend_from_slice(&frame.data);
                (PID_AUDIO, 0xc0u8, a.clock, body)
            }
        };
        let dts = rescale(frame.dts, clock, CLOCK) & TS_MASK;
        let pts = rescale(frame.pts, clock, CLOCK) & TS_MASK;
        let with_dts = dts != pts;
        let mut pes = Vec::with_capacity(pes_body.len() + 19);
        pes.extend_from_slice(&[0, 0, 1, stream_id]);
        let header_len = if with_dts { 10 } else { 5 };
        let pes_len = pes_body.len() + 3 + header_len;
        // Video PES may be unbounded (length 0, 2.4.3.7); audio carries its length.
        let len_field = if stream_id == 0xe0 || pes_len > 0xffff { 0 } else { pes_len as u16 };
        pes.extend_from_slice(&len_field.to_be_bytes());
        pes.push(0x80);
        pes.push(if with_dts { 0xc0 } else { 0x80 });
        pes.push(header_len as u8);
        put_ts(&mut pes, if with_dts { 0x3 } else { 0x2 }, pts);
        if with_dts {
            put_ts(&mut pes, 0x1, dts);
        }
        pes.extend_from_slice(&pes_body);
        let pcr = (pid == self.pcr_pid()).then_some(dts);
        let rai = frame.keyframe && (frame.kind == TrackKind::Video || self.video.is_none());
        self.packetize(out, pid, &pes, pcr, rai);
    }

    fn packetize(&mut self, out: &mut BytesMut, pid: u16, pes: &[u8], pcr: Option<i64>, rai: bool) {
        let mut pos = 0;
        let mut first = true;
        while pos < pes.len() {
            let remaining = pes.len() - pos;
            let af_fixed = if first && pcr.is_some() {
                8
            } else if first && rai {
                2
            } else {
                0
            };
            let space = 184 - af_fixed;
            let take = remaining.min(space);
            let af_len = if take < space || af_fixed > 0 { 184 - take } else { 0 };
            out.put_u8(0x47);
            out.put_u16(if first { 0x4000 } else { 0 } | pid);
            let cc = self.next_cc(pid);
            out.put_u8(if af_len > 0 { 0x30 } else { 0x10 } | cc);
            if af_len > 0 {
                out.put_u8((af_len - 1) as u8);
                if af_len > 1 {
                    let mut flags = 0u8;
                    if first && rai {
                        flags |= 0x40;
                    }
                    if first && pcr.is_some() {
                        flags |= 0x10;
                    }
                    out.put_u8(flags);
                    let mut used = 2;
                    if let (true, Some(p)) = (first, pcr) {
                        // PCR base (33 bits), 6 reserved bits, extension 0.
                        out.put_u32((p >> 1) as u32);
                        out.put_u8((((p & 1) << 7) as u8) | 0x7e);
                        out.put_u8(0);
                        used += 6;
                    }
                    for _ in used..af_len {
                        out.put_u8(0xff);
                    }
                }
            }
            out.put_slice(&pes[pos..pos + take]);
            pos += take;
            first = false;
        }
    }
}

#[derive(PartialEq, Eq)]
enum NalClass {
    ParameterSet,
    Delimiter,
    Other,
}

fn nal_class(codec: VideoCodec, n: &[u8]) -> NalClass {
    match codec {
        VideoCodec::H264 => match n[0] & 0x1f {
            h264::nal::SPS | h264::nal::PPS => NalClass::ParameterSet,
            h264::nal::AUD => NalClass::Delimiter,
            _ => NalClass::Other,
        },
        VideoCodec::H265 => match h265::nal_type(n) {
            h265::nal::VPS..=h265::nal::PPS => NalClass::ParameterSet,
            h265::nal::AUD => NalClass::Delimiter,
            _ => NalClass::Other,
        },
    }
}

/// The access unit delimiter HLS players expect at the start of each video PES (Apple's HLS
/// authoring spec; H.264 7.3.2.4, H.265 7.3.2.5) with "any picture type".
fn access_unit_delimiter(codec: VideoCodec) -> &'static [u8] {
    match codec {
        VideoCodec::H264 => &[0, 0, 0, 1, 0x09, 0xf0],
        VideoCodec::H265 => &[0, 0, 0, 1, 0x46, 0x01, 0x50],
    }
}

fn put_ts(out: &mut Vec<u8>, prefix: u8, ts: i64) {
    out.push((prefix << 4) | (((ts >> 30) & 0x7) << 1) as u8 | 1);
    out.extend_from_slice(&((((ts >> 15) & 0x7fff) << 1 | 1) as u16).to_be_bytes());
    out.extend_from_slice(&((((ts & 0x7fff) << 1) | 1) as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

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
                sample_rate: 44100,
                channels: 2,
                clock_rate: 1000,
            }),
            metadata: None,
        }
    }

    #[test]
    fn total_on_hostile_frames_and_timestamps() {
        let mut t = tracks();
        // An avcC with an empty SPS entry before the real one (as checked ingest would not
        // let through, but the muxer must not rely on it).
        let TrackInfo::Video { config, .. } = t.video.as_ref().unwrap() else { unreachable!() };
        let mut bad = config[..5].to_vec();
        bad.push(0xe2);
        bad.extend_from_slice(&[0, 0]);
        bad.extend_from_slice(&config[6..]);
        t.video = Some(TrackInfo::Video { codec: VideoCodec::H264, config: Bytes::from(bad), clock_rate: 0 });
        let mut m = TsMuxer::new(&t).unwrap();
        let mut out = BytesMut::new();
        let payloads = [
            Bytes::new(),
            Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0]),
            Bytes::from_static(&[0, 0, 0, 1, 0x65, 0xff, 0xff, 0xff, 0xff]),
            Bytes::from(vec![0u8; 70_000]),
        ];
        for data in payloads {
            for (dts, pts) in [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN), (0, 0)] {
                for kind in [TrackKind::Video, TrackKind::Audio] {
                    m.write_frame(&Frame::new(kind, dts, pts, true, data.clone()), &mut out);
                }
            }
        }
        assert_eq!(out.len() % PACKET_SIZE, 0);
    }

    #[test]
    fn crc_of_known_pat() {
        // The PAT ffmpeg writes for program 1 / PMT PID 0x1000 ends in 2a b1 04 b2.
        let pat = [0x00, 0xb0, 0x0d, 0x00, 0x01, 0xc1, 0x00, 0x00, 0x00, 0x01, 0xf0, 0x00];
        assert_eq!(crc32(&pat), 0x2ab104b2);
    }

    #[test]
    fn packets_are_aligned_with_clean_continuity() {
        let mut m = TsMuxer::new(&tracks()).unwrap();
        let mut out = BytesMut::new();
        m.write_tables(&mut out);
        let mut idr = vec![0, 0, 0x03, 0xe8, 0x65];
        idr.extend(std::iter::repeat_n(0xab, 999));
        m.write_frame(&Frame::new(TrackKind::Video, 0, 66, true, Bytes::from(idr)), &mut out);
        m.write_frame(&Frame::new(TrackKind::Audio, 10, 10, true, Bytes::from_static(&[1, 2, 3])), &mut out);
        assert_eq!(out.len() % PACKET_SIZE, 0);
        let mut cc: std::collections::HashMap<u16, u8> = Default::default();
        for p in out.chunks(PACKET_SIZE) {
            assert_eq!(p[0], 0x47);
            let pid = u16::from_be_bytes([p[1] & 0x1f, p[2]]);
            let c = p[3] & 0x0f;
            if let Some(prev) = cc.insert(pid, c) {
                assert_eq!(c, (prev + 1) & 0xf, "pid {pid:#x}");
            }
        }
        // The first video packet: PUSI, random access and a PCR.
        let v = out.chunks(PACKET_SIZE).find(|p| u16::from_be_bytes([p[1] & 0x1f, p[2]]) == PID_VIDEO).unwrap();
        assert_eq!(v[1] & 0x40, 0x40);
        assert_eq!(v[5] & 0x50, 0x50);
        // SPS/PPS were inserted before the IDR.
        let payload: Vec<u8> = out.to_vec();
        assert!(payload.windows(5).any(|w| w == [0, 0, 0, 1, 0x67]));
    }
}
