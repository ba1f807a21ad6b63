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

/// The AU header layout of a stream (RFC 3640 3.2.1.1, 4.1), from its fmtp. Each field is
/// present when its length is not zero.
#[derive(Debug, Clone, Copy)]
struct Layout {
    size_length: u32,
    /// The first AU header's AU-Index.
    index_length: u32,
    /// Every later header's AU-Index-delta (3.2.1.1: "the AU-Index-delta field ... in all
    /// AU-headers except the first").
    index_delta_length: u32,
    cts_delta_length: u32,
    dts_delta_length: u32,
    random_access_indication: bool,
    stream_state_indication: u32,
    auxiliary_data_size_length: u32,
    /// RTP time between consecutive AUs (`constantduration`, else 1024 samples).
    duration: u32,
}

/// Reads `n` bits (at most 32) from `bit` on; `None` past the end.
fn read_bits(d: &[u8], bit: usize, n: u32) -> Option<u32> {
    let end = bit.checked_add(n as usize)?;
    if end > d.len() * 8 {
        return None;
    }
    Some((bit..end).fold(0u32, |acc, b| (acc << 1) | u32::from((d[b / 8] >> (7 - b % 8)) & 1)))
}

/// Most AU headers read from one packet: a 1500-byte packet holds no more real AUs. More is a
/// hostile packet (each header could be 1 bit long with all lengths 0 but one).
pub const MAX_AUS_PER_PACKET: usize = 512;

/// Reassembles AUs.
#[derive(Debug)]
pub struct Depacketizer {
    layout: Layout,
    /// (RTP time, AU size from its header, bytes so far) of a fragmented AU (3.2.3).
    fragment: Option<(u32, usize, BytesMut)>,
    expected_seq: Option<u16>,
    ready: std::collections::VecDeque<AccessUnit>,
}

impl Depacketizer {
    /// A depacketizer with the AU header layout of the media's fmtp. Lengths are capped at 32
    /// bits, the widest field RFC 3640 gives any of them. AAC-hbr's values (3.3.6) are the
    /// defaults of the size and index lengths: some senders leave them out.
    pub fn new(m: &Media) -> Depacketizer {
        let p = |k: &str, d: u32| m.param(k).and_then(|v| v.parse().ok()).unwrap_or(d).min(32);
        Depacketizer {
            layout: Layout {
                size_length: p("sizelength", 13),
                index_length: p("indexlength", 3),
                index_delta_length: p("indexdeltalength", 3),
                cts_delta_length: p("ctsdeltalength", 0),
                dts_delta_length: p("dtsdeltalength", 0),
                random_access_indication: p("randomaccessindication", 0) != 0,
                stream_state_indication: p("streamstateindication", 0),
                auxiliary_data_size_length: p("auxiliarydatasizelength", 0),
                duration: m.param("constantduration").and_then(|v| v.parse().ok()).unwrap_or(SAMPLES_PER_FRAME),
            },
            fragment: None,
            expected_seq: None,
            ready: Default::default(),
        }
    }

    /// Feeds one packet. A loss drops a fragmented AU in progress and is reported after the
    /// packet itself was used.
    pub fn push(&mut self, p: &RtpPacket) -> Result<(), DepacketizeError> {
        let mut loss = None;
        if let Some(expected) = self.expected_seq
            && expected != p.sequence
        {
            self.fragment = None;
            loss = Some(DepacketizeError::Loss { expected, got: p.sequence });
        }
        self.expected_seq = Some(p.sequence.wrapping_add(1));
        if self.fragment.as_ref().is_some_and(|(t, _, _)| *t != p.timestamp) {
            // A new AU before the fragmented one was whole: it is broken.
            self.fragment = None;
        }
        let result = self.payload(p);
        match loss {
            Some(l) => Err(l),
            None => result,
        }
    }

    fn payload(&mut self, p: &RtpPacket) -> Result<(), DepacketizeError> {
        let d = &p.payload;
        let l = self.layout;
        let header_bits = usize::from(u16::from_be_bytes([
            *d.first().ok_or(DepacketizeError::Invalid("AAC payload without AU-headers-length"))?,
            *d.get(1).ok_or(DepacketizeError::Invalid("AAC payload without AU-headers-length"))?,
        ]));
        let header_bytes = header_bits.div_ceil(8);
        if 2 + header_bytes > d.len() {
            return Err(DepacketizeError::Invalid("AU headers overrun the packet"));
        }
        let h = &d[2..2 + header_bytes];
        // (size, serial number) of each AU (3.2.1.1).
        let mut aus: Vec<(usize, u32)> = Vec::new();
        let mut bit = 0usize;
        let mut index = 0u32;
        while bit < header_bits {
            if aus.len() >= MAX_AUS_PER_PACKET {
                return Err(DepacketizeError::Invalid("more AU headers than any real packet holds"));
            }
            let first = aus.is_empty();
            let start = bit;
            let mut field = |n: u32| -> Result<u32, DepacketizeError> {
                let v = read_bits(h, bit, n)
                    .filter(|_| bit + n as usize <= header_bits)
                    .ok_or(DepacketizeError::Invalid("AU header cut short"))?;
                bit += n as usize;
                Ok(v)
            };
            let size = field(l.size_length)? as usize;
            if first {
                index = field(l.index_length)?;
            } else {
                index = index.wrapping_add(field(l.index_delta_length)?).wrapping_add(1);
            }
            // CTS-flag and DTS-flag, each followed by its delta when set.
            for len in [l.cts_delta_length, l.dts_delta_length] {
                if len > 0 && field(1)? == 1 {
                    field(len)?;
                }
            }
            if l.random_access_indication {
                field(1)?;
            }
            field(l.stream_state_indication)?;
            if bit == start {
                return Err(DepacketizeError::Invalid("AU headers of zero bits"));
            }
            aus.push((size, index));
        }
        if aus.is_empty() {
            return Err(DepacketizeError::Invalid("no AU header"));
        }
        let mut pos = 2 + header_bytes;
        if l.auxiliary_data_size_length > 0 {
            // The auxiliary section (3.2.2) is skipped: its size, then its bits.
            let aux_bits = read_bits(&d[pos..], 0, l.auxiliary_data_size_length)
                .ok_or(DepacketizeError::Invalid("auxiliary section cut short"))? as usize;
            pos += (l.auxiliary_data_size_length as usize + aux_bits).div_ceil(8);
            if pos > d.len() {
                return Err(DepacketizeError::Invalid("auxiliary section overruns the packet"));
            }
        }
        let rest = d.len() - pos;
        if aus.len() == 1 && (aus[0].0 > rest || self.fragment.is_some()) {
            // A fragment of a large AU (3.2.3): every fragment carries the whole AU's size;
            // accumulate until that size is reached (or the marker).
            let want = aus[0].0;
            if want > MAX_ACCESS_UNIT_SIZE {
                self.fragment = None;
                return Err(DepacketizeError::TooLarge);
            }
            let (_, w, buf) =
                self.fragment.get_or_insert_with(|| (p.timestamp, want, BytesMut::with_capacity(want.min(64 * 1024))));
            if *w != want {
                self.fragment = None;
                return Err(DepacketizeError::Invalid("fragments of one AU disagree on its size"));
            }
            if buf.len() + rest > want {
                self.fragment = None;
                return Err(DepacketizeError::Invalid("fragmented AU longer than its header says"));
            }
            buf.put_slice(&d[pos..]);
            if buf.len() == want {
                let (t, _, b) = self.fragment.take().expect("present");
                self.ready.push_back(AccessUnit { rtp_time: t, keyframe: true, data: b.freeze() });
            } else if p.marker {
                self.fragment = None;
                return Err(DepacketizeError::Invalid("fragmented AU shorter than its header says"));
            }
            return Ok(());
        }
        let first_index = aus[0].1;
        for (size, index) in aus {
            if pos + size > d.len() {
                return Err(DepacketizeError::Invalid("AU overruns the packet"));
            }
            // 3.2.3.2: the RTP timestamp is the first AU's; later ones follow by serial number.
            let rtp_time = p.timestamp.wrapping_add(index.wrapping_sub(first_index).wrapping_mul(l.duration));
            self.ready.push_back(AccessUnit { rtp_time, keyframe: true, data: d.slice(pos..pos + size) });
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
    use crate::codec::test_packet as packet;

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

    fn media_with(fmtp: &str) -> Media {
        let sdp = format!("m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\na=fmtp:97 {fmtp}\r\n");
        crate::sdp::parse(sdp.as_bytes()).unwrap().media.remove(0)
    }

    #[test]
    fn later_headers_use_the_index_delta_length() {
        // sizelength=13, indexlength=3, indexdeltalength=2: headers of 16 then 15 bits.
        // AU 1: size 3, index 0; AU 2: size 2, delta 0 (the next AU); AU 3: size 1, delta 1
        // (one AU skipped: interleaving).
        let mut bits = String::new();
        bits += &format!("{:013b}{:03b}", 3, 0);
        bits += &format!("{:013b}{:02b}", 2, 0);
        bits += &format!("{:013b}{:02b}", 1, 1);
        let n = bits.len();
        while !bits.len().is_multiple_of(8) {
            bits.push('0');
        }
        let mut payload = vec![0, n as u8];
        payload
            .extend(bits.as_bytes().chunks(8).map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap()));
        payload.extend([1, 2, 3, 4, 5, 6]);
        let mut d =
            Depacketizer::new(&media_with("mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=2;config=1190"));
        d.push(&packet(0, 1000, true, &payload)).unwrap();
        let got: Vec<(u32, Vec<u8>)> = std::iter::from_fn(|| d.pull()).map(|a| (a.rtp_time, a.data.to_vec())).collect();
        assert_eq!(got, [(1000, vec![1, 2, 3]), (2024, vec![4, 5]), (4072, vec![6])]);
    }

    #[test]
    fn loss_reports_the_expected_sequence_and_drops_the_fragment() {
        let au = Bytes::from(vec![9u8; 3000]);
        let parts = payloads(&au, 1400);
        assert_eq!(parts.len(), 3);
        let mut d = Depacketizer::new(&media());
        d.push(&packet(7, 50, false, &parts[0].concat())).unwrap();
        // Seq 8 lost.
        assert_eq!(
            d.push(&packet(9, 50, true, &parts[2].concat())),
            Err(DepacketizeError::Loss { expected: 8, got: 9 })
        );
        assert_eq!(d.pull(), None, "the broken AU is dropped");
        // The packet after a loss is used: a whole AU at once.
        d.push(&packet(10, 2098, true, &payloads(&Bytes::from_static(&[1, 2]), 1400)[0].concat())).unwrap();
        assert_eq!(d.pull().map(|a| a.rtp_time), Some(2098));
    }

    #[test]
    fn loss_of_the_last_fragment_drops_the_au() {
        let parts = payloads(&Bytes::from(vec![9u8; 3000]), 1400);
        let mut d = Depacketizer::new(&media());
        d.push(&packet(1, 50, false, &parts[0].concat())).unwrap();
        d.push(&packet(2, 50, false, &parts[1].concat())).unwrap();
        // Seq 3, the marker packet, lost; the next AU comes.
        let next = payloads(&Bytes::from_static(&[1, 2]), 1400)[0].concat();
        assert!(d.push(&packet(4, 1074, true, &next)).is_err());
        let got: Vec<u32> = std::iter::from_fn(|| d.pull()).map(|a| a.rtp_time).collect();
        assert_eq!(got, [1074]);
    }

    #[test]
    fn aus_per_packet_too_large() {
        // 16-bit headers of size 0: more than MAX_AUS_PER_PACKET of them.
        let n = MAX_AUS_PER_PACKET + 1;
        let bits = (n * 16) as u16;
        let mut payload = bits.to_be_bytes().to_vec();
        payload.extend(std::iter::repeat_n(0u8, n * 2));
        let mut d = Depacketizer::new(&media());
        assert!(matches!(d.push(&packet(0, 0, true, &payload)), Err(DepacketizeError::Invalid(_))));
        assert_eq!(d.pull(), None);
    }

    #[test]
    fn fragment_too_large() {
        let size = (MAX_ACCESS_UNIT_SIZE + 1) as u32;
        // sizelength=32 so the header can claim it.
        let mut payload = vec![0, 35];
        payload.extend(((size as u64) << 8).to_be_bytes()[3..8].iter());
        payload.extend([0u8; 100]);
        let mut d = Depacketizer::new(&media_with("mode=AAC-hbr;sizelength=32;indexlength=3;indexdeltalength=3"));
        assert_eq!(d.push(&packet(0, 0, false, &payload)), Err(DepacketizeError::TooLarge));
    }
}
