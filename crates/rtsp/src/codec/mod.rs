//! RTP payload formats: packetizers (one frame in, RTP packets out, built once per frame and
//! shared by every reader) and depacketizers (`push` packets, `pull` access units) that
//! survive loss by dropping the broken frame and waiting for the next keyframe.

pub mod aac;
pub mod h264;
pub mod h265;
pub mod latm;
mod nal;

use bytes::{BufMut, Bytes, BytesMut};
use ferrocast_media::{AudioCodec, Frame, TrackInfo, VideoCodec, rescale};

use crate::rtp::RtpPacket;

/// Default RTP payload size limit (keeps packets under a 1500-byte Ethernet MTU with IP,
/// UDP and RTP headers and room for tunnels).
pub const DEFAULT_MTU: usize = 1400;
/// Largest RTP payload a packetizer builds: packets are kept as `[u16 length][packet]`
/// records (see [`packets`]) and RTSP interleaved frames have a 16-bit length (RFC 2326
/// 10.12), so a packet with its 12-byte header must fit in 16 bits. A packetizer's MTU is
/// capped to it, and a frame that would need a bigger single packet (an Opus packet over
/// it) is not sent.
pub const MAX_RTP_PAYLOAD: usize = u16::MAX as usize - 12;
/// Smallest MTU a packetizer accepts: room for fragment headers and a useful payload.
pub const MIN_MTU: usize = 64;
/// Largest access unit a depacketizer assembles; a bigger one is dropped. 4K IDR frames at
/// high quality are 1-3 MB.
pub const MAX_ACCESS_UNIT_SIZE: usize = 8 * 1024 * 1024;

/// An access unit reassembled from RTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// RTP timestamp (presentation time, in the RTP clock).
    pub rtp_time: u32,
    /// Random access point.
    pub keyframe: bool,
    /// Video: 4-byte length-prefixed NAL units without parameter sets; audio: the raw frame.
    pub data: Bytes,
}

/// Why a packet or frame was dropped. The stream goes on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DepacketizeError {
    /// A packet is missing inside a fragmented unit: the frame is dropped and video waits for
    /// the next keyframe.
    #[error("packet loss inside a frame (expected seq {expected}, got {got})")]
    Loss {
        /// Expected sequence number.
        expected: u16,
        /// Received.
        got: u16,
    },
    /// A NAL unit or packet type the payload format does not allow or we do not support.
    #[error("unsupported or invalid payload: {0}")]
    Invalid(&'static str),
    /// An access unit over [`MAX_ACCESS_UNIT_SIZE`].
    #[error("access unit over {MAX_ACCESS_UNIT_SIZE} bytes")]
    TooLarge,
}

/// The RTP clock rate of a track as we send it (RFC 6184 8.2.1 and RFC 7798 7.1: 90 kHz video;
/// RFC 3640 and RFC 3551 4.5.14: the sample rate for AAC and G.711; RFC 7587 4.1: 48 kHz
/// Opus), or None for a codec we do not send over RTP.
pub fn rtp_clock_rate(track: &TrackInfo) -> Option<u32> {
    Some(match track {
        TrackInfo::Video { .. } => 90_000,
        TrackInfo::Audio { codec: AudioCodec::Aac, sample_rate, .. } => *sample_rate,
        TrackInfo::Audio { codec: AudioCodec::Opus, .. } => 48_000,
        TrackInfo::Audio { codec: AudioCodec::Pcma | AudioCodec::Pcmu, sample_rate, .. } => *sample_rate,
        TrackInfo::Audio { codec: AudioCodec::Mp3, .. } => return None,
    })
}

/// Packetizer state of one outgoing track.
#[derive(Debug)]
pub struct Packetizer {
    track: TrackInfo,
    payload_type: u8,
    ssrc: u32,
    sequence: u16,
    time_offset: u32,
    mtu: usize,
    /// RTP clock rate.
    pub clock_rate: u32,
    /// Packets and payload octets sent, for sender reports.
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
}

impl Packetizer {
    /// A packetizer for a track, with random initial sequence number, timestamp offset and
    /// SSRC given by the caller (RFC 3550 5.1).
    pub fn new(
        track: &TrackInfo,
        payload_type: u8,
        ssrc: u32,
        sequence: u16,
        time_offset: u32,
        mtu: usize,
    ) -> Option<Packetizer> {
        let clock_rate = rtp_clock_rate(track)?;
        Some(Packetizer {
            track: track.clone(),
            payload_type,
            ssrc,
            sequence,
            time_offset,
            mtu: mtu.clamp(MIN_MTU, MAX_RTP_PAYLOAD),
            clock_rate,
            packets: 0,
            octets: 0,
        })
    }

    /// SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The track being packetized.
    pub fn track(&self) -> &TrackInfo {
        &self.track
    }

    /// The random offset added to RTP timestamps.
    pub fn time_offset(&self) -> u32 {
        self.time_offset
    }

    /// The RTP timestamp of a time in the track's clock.
    pub fn rtp_time(&self, ts: i64) -> u32 {
        (rescale(ts, self.track.clock_rate(), self.clock_rate) as u32).wrapping_add(self.time_offset)
    }

    /// Sequence number of the next packet: RTP-Info's `seq` (its `rtptime` is
    /// [`Packetizer::rtp_time`] of the frame that packet will carry).
    pub fn next_sequence(&self) -> u16 {
        self.sequence
    }

    /// The packets of a frame, as `[u16 length][packet]` records in one buffer (see
    /// [`packets`]).
    pub fn packetize(&mut self, frame: &Frame) -> Bytes {
        let rtp_time = self.rtp_time(frame.pts);
        let payloads: Vec<Vec<Bytes>> = match &self.track {
            TrackInfo::Video { codec: VideoCodec::H264, config, .. } => h264::payloads(frame, config, self.mtu),
            TrackInfo::Video { codec: VideoCodec::H265, config, .. } => h265::payloads(frame, config, self.mtu),
            TrackInfo::Audio { codec: AudioCodec::Aac, .. } => aac::payloads(&frame.data, self.mtu),
            // RFC 7587 4.2: one Opus packet per RTP packet (a bigger one cannot be sent).
            TrackInfo::Audio { codec: AudioCodec::Opus, .. } if frame.data.len() > MAX_RTP_PAYLOAD => vec![],
            TrackInfo::Audio { codec: AudioCodec::Opus, .. } => vec![vec![frame.data.clone()]],
            // RFC 3551 4.5.14: G.711 samples, split at the MTU (one byte per sample).
            TrackInfo::Audio { .. } => frame.data.chunks(self.mtu).map(|c| vec![frame.data.slice_ref(c)]).collect(),
        };
        let mut out = BytesMut::with_capacity(frame.data.len() + payloads.len() * 20 + 64);
        let n = payloads.len();
        for (i, parts) in payloads.into_iter().enumerate() {
            let len: usize = 12 + parts.iter().map(Bytes::len).sum::<usize>();
            debug_assert!(len <= usize::from(u16::MAX), "payloads are capped at MAX_RTP_PAYLOAD");
            out.put_u16(len as u16);
            let slices: Vec<&[u8]> = parts.iter().map(|b| &b[..]).collect();
            RtpPacket::write(&mut out, i + 1 == n, self.payload_type, self.sequence, rtp_time, self.ssrc, &slices);
            self.sequence = self.sequence.wrapping_add(1);
            self.packets = self.packets.wrapping_add(1);
            self.octets = self.octets.wrapping_add(len as u32 - 12);
        }
        out.freeze()
    }
}

/// Splits a packetized frame into its RTP packets (slices of the shared buffer).
pub fn packets(buf: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    records(buf).map(|r| buf.slice(r))
}

/// The RTP packets of a packetized frame, borrowed: no reference count taken per packet.
pub fn packet_slices(buf: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    records(buf).map(|r| &buf[r])
}

/// Where each `[u16 length][packet]` record's packet is (a short last one is cut to what
/// is there).
fn records(buf: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_be_bytes([*buf.get(pos)?, *buf.get(pos + 1)?]));
        let r = pos + 2..(pos + 2 + len).min(buf.len());
        pos += 2 + len;
        Some(r)
    })
}

/// Depacketizer of one incoming track.
#[derive(Debug)]
pub enum Depacketizer {
    /// RFC 6184.
    H264(h264::Depacketizer),
    /// RFC 7798.
    H265(h265::Depacketizer),
    /// RFC 3640.
    Aac(aac::Depacketizer),
    /// RFC 6416 (MP4A-LATM): AAC too.
    Latm(latm::Depacketizer),
    /// One frame per packet: Opus (RFC 7587) and G.711 (RFC 3551).
    Whole(std::collections::VecDeque<AccessUnit>),
}

impl Depacketizer {
    /// A depacketizer for a media section's codec.
    pub fn new(track: &TrackInfo, media: &crate::sdp::Media) -> Option<Depacketizer> {
        Some(match track {
            TrackInfo::Video { codec: VideoCodec::H264, .. } => Depacketizer::H264(h264::Depacketizer::default()),
            TrackInfo::Video { codec: VideoCodec::H265, .. } => Depacketizer::H265(h265::Depacketizer::default()),
            TrackInfo::Audio { codec: AudioCodec::Aac, .. } if media.encoding == "MP4A-LATM" => {
                Depacketizer::Latm(latm::Depacketizer::new(media))
            }
            TrackInfo::Audio { codec: AudioCodec::Aac, .. } => Depacketizer::Aac(aac::Depacketizer::new(media)),
            TrackInfo::Audio { codec: AudioCodec::Opus | AudioCodec::Pcma | AudioCodec::Pcmu, .. } => {
                Depacketizer::Whole(Default::default())
            }
            _ => return None,
        })
    }

    /// Feeds one packet (in sequence order).
    pub fn push(&mut self, p: &RtpPacket) -> Result<(), DepacketizeError> {
        match self {
            Depacketizer::H264(d) => d.push(p),
            Depacketizer::H265(d) => d.push(p),
            Depacketizer::Aac(d) => d.push(p),
            Depacketizer::Latm(d) => d.push(p),
            Depacketizer::Whole(q) => {
                if p.payload.is_empty() {
                    return Err(DepacketizeError::Invalid("empty audio payload"));
                }
                // Bounded: the caller pulls after every push.
                if q.len() < 64 {
                    q.push_back(AccessUnit { rtp_time: p.timestamp, keyframe: true, data: p.payload.clone() });
                }
                Ok(())
            }
        }
    }

    /// The next complete access unit.
    pub fn pull(&mut self) -> Option<AccessUnit> {
        match self {
            Depacketizer::H264(d) => d.pull(),
            Depacketizer::H265(d) => d.pull(),
            Depacketizer::Aac(d) => d.pull(),
            Depacketizer::Latm(d) => d.pull(),
            Depacketizer::Whole(q) => q.pop_front(),
        }
    }

    /// New parameter sets seen in band, as a configuration record (avcC, hvcC, or an AAC
    /// AudioSpecificConfig for LATM), once per change.
    pub fn take_new_config(&mut self) -> Option<Bytes> {
        match self {
            Depacketizer::H264(d) => d.take_new_config(),
            Depacketizer::H265(d) => d.take_new_config(),
            Depacketizer::Latm(d) => d.take_new_config(),
            Depacketizer::Aac(_) | Depacketizer::Whole(_) => None,
        }
    }
}

/// Puts UDP packets back in sequence order within a small window (RFC 3550 does not promise
/// order). A packet older than what was released is dropped as late.
#[derive(Debug, Default)]
pub struct Reorder {
    next: Option<u16>,
    held: std::collections::BTreeMap<u16, RtpPacket>,
}

/// Packets held while waiting for a missing one; past this the gap is declared lost.
pub const REORDER_WINDOW: usize = 32;

impl Reorder {
    /// Adds a packet; returns the packets now in order.
    pub fn push(&mut self, p: RtpPacket) -> Vec<RtpPacket> {
        let next = *self.next.get_or_insert(p.sequence);
        let ahead = p.sequence.wrapping_sub(next);
        if ahead >= 0x8000 {
            return Vec::new(); // late or duplicate
        }
        self.held.insert(ahead, p);
        let mut out = Vec::new();
        loop {
            let n = self.next.expect("set");
            let key = self.held.keys().next().copied();
            match key {
                Some(0) => {
                    let p = self.held.remove(&0).expect("present");
                    out.push(p);
                    self.next = Some(n.wrapping_add(1));
                    self.rebase(1);
                }
                Some(k) if self.held.len() > REORDER_WINDOW => {
                    // Give up on the gap.
                    self.next = Some(n.wrapping_add(k));
                    self.rebase(k);
                }
                _ => return out,
            }
        }
    }

    fn rebase(&mut self, by: u16) {
        let held = std::mem::take(&mut self.held);
        self.held = held.into_iter().map(|(k, v)| (k.wrapping_sub(by), v)).collect();
    }
}

/// An RTP packet of payload type 97 from SSRC 1: the depacketizers' tests feed these.
#[cfg(test)]
pub(crate) fn test_packet(sequence: u16, timestamp: u32, marker: bool, payload: &[u8]) -> RtpPacket {
    RtpPacket { marker, payload_type: 97, sequence, timestamp, ssrc: 1, payload: Bytes::copy_from_slice(payload) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16) -> RtpPacket {
        RtpPacket { marker: false, payload_type: 96, sequence: seq, timestamp: 0, ssrc: 1, payload: Bytes::new() }
    }

    #[test]
    fn packetizers_are_total_on_hostile_frames_and_tracks() {
        use ferrocast_media::TrackKind;
        let audio = |codec, config: &'static [u8], sample_rate| TrackInfo::Audio {
            codec,
            config: Bytes::from_static(config),
            sample_rate,
            channels: 0,
            clock_rate: 0,
        };
        let tracks = [
            audio(AudioCodec::Aac, &[0x12, 0x10], 0),
            audio(AudioCodec::Aac, &[], 44100),
            audio(AudioCodec::Opus, &[], 48000),
            audio(AudioCodec::Pcma, &[], 0),
            audio(AudioCodec::Pcmu, &[], 8000),
            TrackInfo::Video { codec: VideoCodec::H264, config: Bytes::new(), clock_rate: 0 },
            TrackInfo::Video { codec: VideoCodec::H265, config: Bytes::from_static(&[0; 3]), clock_rate: 1 },
        ];
        let sizes = [0, 1, 8191, 8192, MAX_RTP_PAYLOAD, MAX_RTP_PAYLOAD + 1, 200_000];
        for track in &tracks {
            for mtu in [0, 1400, usize::MAX] {
                let mut p = Packetizer::new(track, 96, 1, 0, 0, mtu).unwrap();
                for (i, size) in sizes.iter().enumerate() {
                    let kind = track.kind();
                    let f =
                        Frame::new(kind, i64::MAX - i as i64, i64::MIN + i as i64, true, Bytes::from(vec![0; *size]));
                    let buf = p.packetize(&f);
                    let total: usize = packets(&buf).map(|pk| pk.len() + 2).sum();
                    assert_eq!(total, buf.len(), "records frame the buffer exactly ({track:?}, {size})");
                }
            }
        }
        // Opus: one packet per frame, and none for a frame that cannot fit one.
        let mut opus = Packetizer::new(&tracks[2], 97, 1, 0, 0, 1400).unwrap();
        let f = |n| Frame::new(TrackKind::Audio, 0, 0, true, Bytes::from(vec![0; n]));
        assert_eq!(packets(&opus.packetize(&f(MAX_RTP_PAYLOAD))).count(), 1);
        assert_eq!(packets(&opus.packetize(&f(MAX_RTP_PAYLOAD + 1))).count(), 0);
        // AAC: an AU over the 13-bit AU-size is not sent.
        let mut aac = Packetizer::new(&tracks[0], 97, 1, 0, 0, 1400).unwrap();
        assert_eq!(packets(&aac.packetize(&f(aac::MAX_AU_SIZE))).count(), 6);
        assert_eq!(packets(&aac.packetize(&f(aac::MAX_AU_SIZE + 1))).count(), 0);
    }

    #[test]
    fn reorder_window() {
        let mut r = Reorder::default();
        let seqs = |v: Vec<RtpPacket>| v.iter().map(|p| p.sequence).collect::<Vec<_>>();
        assert_eq!(seqs(r.push(pkt(65534))), [65534]);
        assert_eq!(seqs(r.push(pkt(0))), Vec::<u16>::new());
        assert_eq!(seqs(r.push(pkt(65535))), [65535, 0]);
        assert_eq!(seqs(r.push(pkt(65530))), Vec::<u16>::new(), "late packets are dropped");
        // A lost packet (1) is skipped once the window fills.
        let mut got = Vec::new();
        for s in 2..(2 + REORDER_WINDOW as u16 + 1) {
            got.extend(seqs(r.push(pkt(s))));
        }
        assert_eq!(got.first(), Some(&2));
        assert_eq!(got.len(), REORDER_WINDOW + 1);
    }
}
