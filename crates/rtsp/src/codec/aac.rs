//! AAC over RTP with RFC 3640 (mpeg4-generic, AAC-hbr): AU headers of 13-bit size and 3-bit
//! index, several AUs per packet, and fragmented AUs larger than a packet.

use bytes::{BufMut, Bytes, BytesMut};

use super::{AccessUnit, DepacketizeError, MAX_ACCESS_UNIT_SIZE};
use crate::rtp::RtpPacket;
use crate::sdp::Media;

/// Samples per AAC frame: the RTP timestamp step between AUs of one packet.
const SAMPLES_PER_FRAME: u32 = 1024;

/// Largest AU the AAC-hbr header can describe: AU-size is 13 bits (RFC 3640 3.3.6). A
/// bigger frame (no AAC encoder makes one: 6144 bits per channel) is not sent.
pub const MAX_AU_SIZE: usize = 0x1fff;

/// The payloads for one AU (several when it is larger than the MTU, 3.2.3); none for an AU
/// over [`MAX_AU_SIZE`].
pub fn payloads(au: &Bytes, mtu: usize) -> Vec<Vec<Bytes>> {
    if au.len() > MAX_AU_SIZE {
        return vec![];
    }
    let size = (au.len() as u16) << 3;
    let header = Bytes::copy_from_slice(&[0, 16, (size >> 8) as u8, size as u8]);
    let chunk = mtu.clamp(super::MIN_MTU, super::MAX_RTP_PAYLOAD) - 4;
    if au.len() <= chunk {
        return vec![vec![header, au.clone()]];
    }
    (0..au.len().div_ceil(chunk))
        .map(|k| vec![header.clone(), au.slice(k * chunk..((k + 1) * chunk).min(au.len()))])
        .collect()
}

/// Reassembles AUs.
#[derive(Debug)]
pub struct Depacketizer {
    size_length: u32,
    index_length: u32,
    index_delta_length: u32,
    fragment: Option<(u32, usize, BytesMut)>,
    expected_seq: Option<u16>,
    ready: std::collections::VecDeque<AccessUnit>,
}

impl Depacketizer {
    /// A depacketizer with the AU header layout of the media's fmtp.
    pub fn new(m: &Media) -> Depacketizer {
        let p = |k: &str, d: u32| m.param(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        Depacketizer {
            size_length: p("sizelength", 13).min(16),
            index_length: p("indexlength", 3).min(16),
            index_delta_length: p("indexdeltalength", 3).min(16),
            fragment: None,
            expected_seq: None,
            ready: Default::default(),
        }
    }

    /// Feeds one packet.
    pub fn push(&mut self, p: &RtpPacket) -> Result<(), DepacketizeError> {
        let lost = self.expected_seq.is_some_and(|e| e != p.sequence);
        self.expected_seq = Some(p.sequence.wrapping_add(1));
        if lost && self.fragment.take().is_some() {
            return Err(DepacketizeError::Loss { expected: p.sequence, got: p.sequence });
        }
        let d = &p.payload;
        if d.len() < 2 {
            return Err(DepacketizeError::Invalid("AAC payload without AU-headers-length"));
        }
        let header_bits = usize::from(u16::from_be_bytes([d[0], d[1]]));
        let header_bytes = header_bits.div_ceil(8);
        if 2 + header_bytes > d.len() {
            return Err(DepacketizeError::Invalid("AU headers overrun the packet"));
        }
        let per = (self.size_length + self.index_length) as usize;
        let mut sizes = Vec::new();
        let mut bit = 0usize;
        let h = &d[2..2 + header_bytes];
        let read = |bit: usize, n: u32| -> u32 {
            (0..n as usize).fold(0u32, |acc, i| {
                let b = bit + i;
                (acc << 1) | u32::from((h[b / 8] >> (7 - b % 8)) & 1)
            })
        };
        while bit + per <= header_bits && per > 0 {
            sizes.push(read(bit, self.size_length) as usize);
            bit += per;
            if sizes.len() == 1 {
                // Later headers use the index-delta length.
                let _ = self.index_delta_length;
            }
        }
        if sizes.is_empty() {
            return Err(DepacketizeError::Invalid("no AU header"));
        }
        let mut pos = 2 + header_bytes;
        let data = &p.payload;
        if sizes.len() == 1 && sizes[0] > data.len() - pos {
            // A fragment of a large AU (3.2.3): accumulate until the marker.
            let (_, want, buf) = self.fragment.get_or_insert_with(|| {
                (p.timestamp, sizes[0], BytesMut::with_capacity(sizes[0].min(MAX_ACCESS_UNIT_SIZE)))
            });
            buf.put_slice(&data[pos..]);
            if buf.len() > MAX_ACCESS_UNIT_SIZE {
                self.fragment = None;
                return Err(DepacketizeError::TooLarge);
            }
            if p.marker || buf.len() >= *want {
                let (t, want, b) = self.fragment.take().expect("present");
                if b.len() != want {
                    return Err(DepacketizeError::Invalid("fragmented AU shorter or longer than its header says"));
                }
                self.ready.push_back(AccessUnit { rtp_time: t, keyframe: true, data: b.freeze() });
            }
            return Ok(());
        }
        for (i, size) in sizes.into_iter().enumerate() {
            if pos + size > data.len() {
                return Err(DepacketizeError::Invalid("AU overruns the packet"));
            }
            let rtp_time = p.timestamp.wrapping_add(i as u32 * SAMPLES_PER_FRAME);
            self.ready.push_back(AccessUnit { rtp_time, keyframe: true, data: data.slice(pos..pos + size) });
            pos += size;
        }
        Ok(())
    }

    /// The next AU.
    pub fn pull(&mut self) -> Option<AccessUnit> {
        self.ready.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media() -> Media {
        crate::sdp::parse(b"m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/44100/2\r\na=fmtp:97 mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1210\r\n").unwrap().media.remove(0)
    }

    #[test]
    fn several_aus_in_one_packet() {
        // Two AUs of 3 and 2 bytes: AU-headers-length 32 bits.
        let payload = [0, 32, 0, 3 << 3, 0, 2 << 3, 1, 2, 3, 4, 5];
        let p = RtpPacket {
            marker: true,
            payload_type: 97,
            sequence: 1,
            timestamp: 1000,
            ssrc: 1,
            payload: Bytes::copy_from_slice(&payload),
        };
        let mut d = Depacketizer::new(&media());
        d.push(&p).unwrap();
        assert_eq!(
            d.pull().unwrap(),
            AccessUnit { rtp_time: 1000, keyframe: true, data: Bytes::from_static(&[1, 2, 3]) }
        );
        assert_eq!(d.pull().unwrap(), AccessUnit { rtp_time: 2024, keyframe: true, data: Bytes::from_static(&[4, 5]) });
    }

    #[test]
    fn round_trip_and_fragmented_au() {
        for len in [300usize, 3000] {
            let au = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>());
            let parts = payloads(&au, 1400);
            let n = parts.len();
            let mut d = Depacketizer::new(&media());
            for (i, p) in parts.into_iter().enumerate() {
                let pkt = RtpPacket {
                    marker: i + 1 == n,
                    payload_type: 97,
                    sequence: i as u16,
                    timestamp: 5,
                    ssrc: 1,
                    payload: Bytes::from(p.concat()),
                };
                d.push(&pkt).unwrap();
            }
            assert_eq!(d.pull().unwrap().data, au);
        }
    }

    #[test]
    fn truncated_headers_are_errors() {
        let mut d = Depacketizer::new(&media());
        for payload in [&[0u8][..], &[0, 64, 0][..], &[0, 16, 0, 200 << 3, 1]] {
            let p = RtpPacket {
                marker: true,
                payload_type: 97,
                sequence: 0,
                timestamp: 0,
                ssrc: 1,
                payload: Bytes::copy_from_slice(payload),
            };
            let _ = d.push(&p);
        }
        // 200-byte AU claimed with one byte present is treated as a fragment, never output.
        assert!(d.pull().is_none());
    }
}
