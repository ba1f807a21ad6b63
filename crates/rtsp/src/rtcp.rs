//! RTCP (RFC 3550 section 6): sender and receiver reports, BYE, and the receiver statistics
//! that fill a report block (Appendix A.3 loss, A.8 jitter).

use bytes::{BufMut, Bytes, BytesMut};

/// Packet types.
pub const SR: u8 = 200;
/// Receiver report.
pub const RR: u8 = 201;
/// Source description.
pub const SDES: u8 = 202;
/// Goodbye.
pub const BYE: u8 = 203;

/// A reception report block (6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source reported on.
    pub ssrc: u32,
    /// Fraction lost since the last report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24 bits, signed).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the last SR's NTP time.
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// A parsed RTCP packet of a compound packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    /// Sender report.
    SenderReport {
        /// Sender SSRC.
        ssrc: u32,
        /// NTP timestamp (64 bits).
        ntp: u64,
        /// RTP timestamp of the same instant.
        rtp_time: u32,
        /// Packets sent.
        packets: u32,
        /// Payload octets sent.
        octets: u32,
        /// Report blocks.
        reports: Vec<ReportBlock>,
    },
    /// Receiver report.
    ReceiverReport {
        /// Reporter SSRC.
        ssrc: u32,
        /// Report blocks.
        reports: Vec<ReportBlock>,
    },
    /// Goodbye.
    Bye {
        /// Sources leaving.
        sources: Vec<u32>,
    },
    /// Any other type (SDES, APP, feedback).
    Other(u8),
}

/// Why an RTCP packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed RTCP at byte {0}")]
pub struct RtcpError(pub usize);

fn u32_at(d: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]])
}

fn blocks(d: &[u8], at: usize, count: usize) -> Vec<ReportBlock> {
    (0..count)
        .map(|k| {
            let b = at + 24 * k;
            let lost = u32_at(d, b + 4) & 0x00ff_ffff;
            ReportBlock {
                ssrc: u32_at(d, b),
                fraction_lost: d[b + 4],
                cumulative_lost: ((lost << 8) as i32) >> 8,
                highest_seq: u32_at(d, b + 8),
                jitter: u32_at(d, b + 12),
                last_sr: u32_at(d, b + 16),
                delay_since_last_sr: u32_at(d, b + 20),
            }
        })
        .collect()
}

/// Parses a compound RTCP packet.
pub fn parse(d: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 4 <= d.len() {
        if d[pos] >> 6 != 2 {
            return Err(RtcpError(pos));
        }
        let count = usize::from(d[pos] & 0x1f);
        let pt = d[pos + 1];
        let len = 4 * (usize::from(u16::from_be_bytes([d[pos + 2], d[pos + 3]])) + 1);
        if pos + len > d.len() {
            return Err(RtcpError(pos));
        }
        let p = &d[pos..pos + len];
        out.push(match pt {
            SR if len >= 28 + 24 * count => RtcpPacket::SenderReport {
                ssrc: u32_at(p, 4),
                ntp: (u64::from(u32_at(p, 8)) << 32) | u64::from(u32_at(p, 12)),
                rtp_time: u32_at(p, 16),
                packets: u32_at(p, 20),
                octets: u32_at(p, 24),
                reports: blocks(p, 28, count),
            },
            RR if len >= 8 + 24 * count => {
                RtcpPacket::ReceiverReport { ssrc: u32_at(p, 4), reports: blocks(p, 8, count) }
            }
            BYE if len >= 4 + 4 * count => {
                RtcpPacket::Bye { sources: (0..count).map(|k| u32_at(p, 4 + 4 * k)).collect() }
            }
            SR | RR | BYE => return Err(RtcpError(pos)),
            other => RtcpPacket::Other(other),
        });
        pos += len;
    }
    if pos != d.len() {
        return Err(RtcpError(pos));
    }
    Ok(out)
}

fn put_block(out: &mut BytesMut, b: &ReportBlock) {
    out.put_u32(b.ssrc);
    out.put_u32((u32::from(b.fraction_lost) << 24) | (b.cumulative_lost as u32 & 0x00ff_ffff));
    out.put_u32(b.highest_seq);
    out.put_u32(b.jitter);
    out.put_u32(b.last_sr);
    out.put_u32(b.delay_since_last_sr);
}

/// A sender report followed by an SDES CNAME (RFC 3550 6.1: compound packets carry one).
pub fn sender_report(ssrc: u32, ntp: u64, rtp_time: u32, packets: u32, octets: u32, cname: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(0x80);
    out.put_u8(SR);
    out.put_u16(6);
    out.put_u32(ssrc);
    out.put_u64(ntp);
    out.put_u32(rtp_time);
    out.put_u32(packets);
    out.put_u32(octets);
    put_sdes(&mut out, ssrc, cname);
    out.freeze()
}

/// A receiver report with one block, and an SDES CNAME.
pub fn receiver_report(ssrc: u32, block: &ReportBlock, cname: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(0x81);
    out.put_u8(RR);
    out.put_u16(7);
    out.put_u32(ssrc);
    put_block(&mut out, block);
    put_sdes(&mut out, ssrc, cname);
    out.freeze()
}

/// A BYE for one source, as a compound packet led by an empty receiver report (RFC 3550 6.1:
/// every compound packet starts with SR or RR). Quirk: ffmpeg (5.1, `rtp_parse_one_packet`)
/// drops any RTCP packet under 12 bytes, so a lone 8-byte BYE never ended its playback.
pub fn bye(ssrc: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(16);
    out.put_u8(0x80);
    out.put_u8(RR);
    out.put_u16(1);
    out.put_u32(ssrc);
    out.put_u8(0x81);
    out.put_u8(BYE);
    out.put_u16(1);
    out.put_u32(ssrc);
    out.freeze()
}

fn put_sdes(out: &mut BytesMut, ssrc: u32, cname: &str) {
    let name = &cname.as_bytes()[..cname.len().min(255)];
    // ssrc + CNAME item (type, len, text) + END, padded to 32 bits.
    let item = 4 + 2 + name.len() + 1;
    let padded = item.div_ceil(4) * 4;
    out.put_u8(0x81);
    out.put_u8(SDES);
    out.put_u16((padded / 4) as u16);
    out.put_u32(ssrc);
    out.put_u8(1);
    out.put_u8(name.len() as u8);
    out.put_slice(name);
    for _ in 0..(padded - item + 1) {
        out.put_u8(0);
    }
}

/// NTP time (RFC 5905 64-bit format) of a Unix time in microseconds.
pub fn ntp_from_unix_micros(micros: u64) -> u64 {
    let secs = micros / 1_000_000 + 2_208_988_800;
    let frac = ((micros % 1_000_000) << 32) / 1_000_000;
    (secs << 32) | frac
}

/// What a receiver knows about one source (RFC 3550 A.1, A.3, A.8).
#[derive(Debug, Clone, Default)]
pub struct ReceiverStats {
    ssrc: u32,
    started: bool,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    transit: Option<i64>,
    jitter: f64,
    last_sr: u32,
    last_sr_at_micros: Option<u64>,
}

impl ReceiverStats {
    /// Counts a packet that arrived at `arrival` (in the stream's clock units).
    pub fn on_packet(&mut self, ssrc: u32, seq: u16, rtp_time: u32, arrival: u32) {
        if !self.started || ssrc != self.ssrc {
            *self = ReceiverStats {
                ssrc,
                started: true,
                base_seq: u32::from(seq),
                max_seq: seq,
                ..ReceiverStats::default()
            };
        }
        let delta = seq.wrapping_sub(self.max_seq);
        if delta < 0x8000 && delta != 0 {
            if seq < self.max_seq {
                self.cycles += 1 << 16;
            }
            self.max_seq = seq;
        }
        self.received += 1;
        let transit = i64::from(arrival.wrapping_sub(rtp_time) as i32);
        if let Some(prev) = self.transit {
            let d = (transit - prev).abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.transit = Some(transit);
    }

    /// Notes a sender report (for LSR/DLSR).
    pub fn on_sender_report(&mut self, ntp: u64, now_micros: u64) {
        self.last_sr = (ntp >> 16) as u32;
        self.last_sr_at_micros = Some(now_micros);
    }

    /// Extended highest sequence number.
    pub fn extended_max(&self) -> u32 {
        self.cycles + u32::from(self.max_seq)
    }

    /// Packets lost so far (may be negative with duplicates).
    pub fn cumulative_lost(&self) -> i64 {
        let expected = i64::from(self.extended_max()) - i64::from(self.base_seq) + 1;
        expected - i64::from(self.received)
    }

    /// A report block for now; advances the interval counters.
    pub fn report(&mut self, now_micros: u64) -> ReportBlock {
        let expected = self.extended_max().wrapping_sub(self.base_seq).wrapping_add(1);
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        ReportBlock {
            ssrc: self.ssrc,
            fraction_lost,
            cumulative_lost: self.cumulative_lost().clamp(-(1 << 23), (1 << 23) - 1) as i32,
            highest_seq: self.extended_max(),
            jitter: self.jitter as u32,
            last_sr: self.last_sr,
            delay_since_last_sr: self
                .last_sr_at_micros
                .map_or(0, |t| ((now_micros.saturating_sub(t)) * 65536 / 1_000_000) as u32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sr_and_rr_round_trip() {
        let sr = sender_report(0x1234, 0xaabb_ccdd_0011_2233, 9000, 10, 1000, "ferrocast");
        let p = parse(&sr).unwrap();
        assert!(matches!(
            p[0],
            RtcpPacket::SenderReport {
                ssrc: 0x1234,
                ntp: 0xaabb_ccdd_0011_2233,
                rtp_time: 9000,
                packets: 10,
                octets: 1000,
                ..
            }
        ));
        assert_eq!(p[1], RtcpPacket::Other(SDES));
        let block = ReportBlock {
            ssrc: 9,
            fraction_lost: 64,
            cumulative_lost: -3,
            highest_seq: 70_000,
            jitter: 12,
            last_sr: 5,
            delay_since_last_sr: 6,
        };
        let rr = receiver_report(1, &block, "x");
        assert_eq!(parse(&rr).unwrap()[0], RtcpPacket::ReceiverReport { ssrc: 1, reports: vec![block] });
        let b = bye(7);
        assert_eq!(b.len(), 16, "ffmpeg reads no RTCP packet under 12 bytes");
        assert!(parse(&b).unwrap().contains(&RtcpPacket::Bye { sources: vec![7] }), "{:?}", parse(&b));
    }

    #[test]
    fn malformed() {
        assert!(parse(&[0x80, 200, 0, 6, 0, 0]).is_err());
        assert!(parse(&[0x40, 200, 0, 0]).is_err());
        assert!(parse(&[0x81, 201, 0, 1, 0, 0, 0, 1]).is_err(), "count says one block, none present");
    }

    #[test]
    fn loss_and_jitter_statistics() {
        let mut s = ReceiverStats::default();
        // 100 packets, seq wrapping, every 10th lost, constant transit: no jitter.
        for i in 0..100u32 {
            if i % 10 == 5 {
                continue;
            }
            let seq = (65_500 + i) as u16;
            s.on_packet(42, seq, i * 3000, i * 3000 + 500);
        }
        let r = s.report(0);
        assert_eq!(r.cumulative_lost, 10);
        assert_eq!(r.fraction_lost, (10 * 256 / 100) as u8);
        assert_eq!(r.highest_seq, 65_536 + ((65_500 + 99) % 65_536));
        assert_eq!(r.jitter, 0);
        // Transit varying by 160 units each packet gives jitter approaching 160.
        let mut s = ReceiverStats::default();
        for i in 0..200u32 {
            s.on_packet(1, i as u16, i * 3000, i * 3000 + if i % 2 == 0 { 0 } else { 160 });
        }
        let j = s.report(0).jitter;
        assert!((150..=160).contains(&j), "{j}");
    }

    #[test]
    fn ntp_epoch() {
        assert_eq!(ntp_from_unix_micros(0) >> 32, 2_208_988_800);
        assert_eq!(ntp_from_unix_micros(500_000) & 0xffff_ffff, 1 << 31);
    }
}
