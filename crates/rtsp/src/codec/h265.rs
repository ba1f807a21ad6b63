//! H.265 over RTP (RFC 7798): single NAL unit packets, aggregation packets (4.4.2) and
//! fragmentation units (4.4.3), without DONL (sprop-max-don-diff = 0).

use bytes::Bytes;
use ferrocast_media::{Frame, avc::nal_units, h265};

use super::nal::{Assembler, remember};
use super::{AccessUnit, DepacketizeError, MAX_RTP_PAYLOAD, MIN_MTU};
use crate::rtp::RtpPacket;

const AP: u8 = 48;
const FU: u8 = 49;

fn parameter_sets(config: &Bytes) -> Vec<Bytes> {
    // Entries shorter than the 2-byte NAL unit header (a hostile hvcC; ingest drops them
    // too) cannot be sent.
    h265::HevcConfig::parse(config)
        .map(|c| c.vps.into_iter().chain(c.sps).chain(c.pps).filter(|n| n.len() >= 2).collect())
        .unwrap_or_default()
}

/// The payloads of a frame's packets. Total on any frame and config: NAL units shorter than
/// their header are skipped, the MTU is taken within [`MIN_MTU`]..=[`MAX_RTP_PAYLOAD`].
pub fn payloads(frame: &Frame, config: &Bytes, mtu: usize) -> Vec<Vec<Bytes>> {
    let mtu = mtu.clamp(MIN_MTU, MAX_RTP_PAYLOAD);
    let mut nals: Vec<Bytes> = Vec::new();
    let has_params = nal_units(&frame.data).any(|n| h265::nal_type(n) == h265::nal::SPS);
    if frame.keyframe && !has_params {
        nals.extend(parameter_sets(config));
    }
    let mut pos = 0;
    for n in nal_units(&frame.data) {
        let start = pos + 4;
        pos = start + n.len();
        if n.len() >= 2 && h265::nal_type(n) != h265::nal::AUD {
            nals.push(frame.data.slice(start..start + n.len()));
        }
    }
    let mut out: Vec<Vec<Bytes>> = Vec::new();
    let mut i = 0;
    while i < nals.len() {
        let mut j = i;
        let mut size = 2;
        while j < nals.len() && size + 2 + nals[j].len() <= mtu {
            size += 2 + nals[j].len();
            j += 1;
        }
        if j - i >= 2 {
            // PayloadHdr: F=0, LayerId and TID of the first unit (4.4.2).
            let mut parts = vec![Bytes::copy_from_slice(&[(nals[i][0] & 0x81) | (AP << 1), nals[i][1]])];
            for n in &nals[i..j] {
                parts.push(Bytes::copy_from_slice(&(n.len() as u16).to_be_bytes()));
                parts.push(n.clone());
            }
            out.push(parts);
            i = j;
            continue;
        }
        let n = &nals[i];
        if n.len() <= mtu {
            out.push(vec![n.clone()]);
        } else {
            let kind = h265::nal_type(n);
            let header = [(n[0] & 0x81) | (FU << 1), n[1]];
            let body = n.slice(2..);
            let chunk = mtu - 3;
            let count = body.len().div_ceil(chunk);
            for k in 0..count {
                let mut fu = kind;
                if k == 0 {
                    fu |= 0x80;
                }
                if k + 1 == count {
                    fu |= 0x40;
                }
                let piece = body.slice(k * chunk..((k + 1) * chunk).min(body.len()));
                out.push(vec![Bytes::copy_from_slice(&[header[0], header[1], fu]), piece]);
            }
        }
        i += 1;
    }
    out
}

/// Reassembles access units.
#[derive(Debug, Default)]
pub struct Depacketizer {
    asm: Assembler,
    vps: Option<Bytes>,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    config_changed: bool,
}

impl Depacketizer {
    fn add_nal(&mut self, nal: &[u8]) -> Result<(), DepacketizeError> {
        if nal.len() < 2 {
            return Err(DepacketizeError::Invalid("H.265 NAL unit shorter than its header"));
        }
        if nal[0] & 0x80 != 0 {
            return Err(DepacketizeError::Invalid("forbidden_zero_bit set"));
        }
        match h265::nal_type(nal) {
            h265::nal::VPS => remember(&mut self.vps, nal, &mut self.config_changed),
            h265::nal::SPS => remember(&mut self.sps, nal, &mut self.config_changed),
            h265::nal::PPS => remember(&mut self.pps, nal, &mut self.config_changed),
            h265::nal::AUD => {}
            AP | FU | 50..=63 => return Err(DepacketizeError::Invalid("payload structure type inside a unit")),
            t => {
                let key = (h265::nal::IRAP_FIRST..=h265::nal::IRAP_LAST).contains(&t);
                // VCL units (0-31) start with `first_slice_segment_in_pic_flag` (7.3.6.1).
                let first = (t < 32).then(|| nal.get(2).is_some_and(|b| b & 0x80 != 0));
                return self.asm.push_unit(nal, key, first);
            }
        }
        Ok(())
    }

    /// Feeds one packet.
    pub fn push(&mut self, p: &RtpPacket) -> Result<(), DepacketizeError> {
        let loss = self.asm.begin(p);
        let result = self.payload(p);
        self.asm.end(p);
        match loss {
            Some(l) => Err(l),
            None => result,
        }
    }

    fn payload(&mut self, p: &RtpPacket) -> Result<(), DepacketizeError> {
        let d = &p.payload;
        if d.len() < 3 {
            return Err(DepacketizeError::Invalid("H.265 payload too short"));
        }
        match (d[0] >> 1) & 0x3f {
            0..=47 => self.add_nal(d),
            AP if d.len() < 5 => Err(DepacketizeError::Invalid("aggregation packet without units")),
            AP => {
                let mut pos = 2;
                let mut r = Ok(());
                while pos + 2 <= d.len() {
                    let len = usize::from(u16::from_be_bytes([d[pos], d[pos + 1]]));
                    pos += 2;
                    if pos + len > d.len() {
                        return Err(DepacketizeError::Invalid("AP unit overruns the packet"));
                    }
                    r = r.and(self.add_nal(&d[pos..pos + len]));
                    pos += len;
                }
                r
            }
            FU => {
                let fu = d[2];
                if fu & 0x80 != 0 {
                    self.asm.fragment_start(&[(d[0] & 0x81) | ((fu & 0x3f) << 1), d[1]], &d[3..]);
                } else {
                    self.asm.fragment_continue(&d[3..])?;
                }
                match (fu & 0x40 != 0).then(|| self.asm.fragment_end()).flatten() {
                    Some(nal) => self.add_nal(&nal),
                    None => Ok(()),
                }
            }
            _ => Err(DepacketizeError::Invalid("PACI or reserved H.265 packet type")),
        }
    }

    /// The next complete access unit.
    pub fn pull(&mut self) -> Option<AccessUnit> {
        self.asm.pull()
    }

    /// An hvcC built from in-band VPS/SPS/PPS, once per change.
    pub fn take_new_config(&mut self) -> Option<Bytes> {
        if !self.config_changed {
            return None;
        }
        let (vps, sps, pps) = (self.vps.clone()?, self.sps.clone()?, self.pps.clone()?);
        self.config_changed = false;
        h265::build_hvcc(&[vps], &[sps], &[pps]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocast_media::TrackKind;

    fn hex(s: &str) -> Bytes {
        Bytes::from((0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<_>>())
    }

    fn config() -> Bytes {
        h265::build_hvcc(
            &[hex("40010c01ffff01600000030090000003000003003c959809")],
            &[hex("42010101600000030090000003000003003ca00a080f165959a4932bc05a020000030002000003003c10")],
            &[hex("4401c172b46240")],
        )
        .unwrap()
    }

    #[test]
    fn idr_round_trip_with_ap_and_fu() {
        let mut idr = vec![0x26, 0x01];
        idr.extend((0..6000u32).map(|i| (i % 251) as u8));
        let mut data = (idr.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(&idr);
        let f = Frame::new(TrackKind::Video, 0, 0, true, Bytes::from(data));
        let p = payloads(&f, &config(), 1400);
        assert_eq!((p[0][0][0] >> 1) & 0x3f, AP);
        let n = p.len();
        let mut d = Depacketizer::default();
        for (i, parts) in p.into_iter().enumerate() {
            let pkt = RtpPacket {
                marker: i + 1 == n,
                payload_type: 96,
                sequence: i as u16,
                timestamp: 1,
                ssrc: 1,
                payload: Bytes::from(parts.concat()),
            };
            assert!(pkt.payload.len() <= 1400);
            d.push(&pkt).unwrap();
        }
        let au = d.pull().unwrap();
        assert!(au.keyframe);
        assert_eq!(nal_units(&au.data).collect::<Vec<_>>(), vec![&idr[..]]);
        assert_eq!(d.take_new_config(), Some(config()));
    }

    /// Parameter sets shorter than the NAL unit header in an hvcC used to panic the AP
    /// header (`nals[i][1]`).
    #[test]
    fn short_parameter_sets_in_config_do_not_panic() {
        let good = config();
        let mut bad = good[..22].to_vec();
        bad.push(good[22] + 1);
        bad.extend_from_slice(&[0x80 | 32, 0, 2, 0, 0, 0, 1, 0x40]); // VPS array: empty, 1 byte
        bad.extend_from_slice(&good[23..]);
        let bad = Bytes::from(bad);
        let f = Frame::new(TrackKind::Video, 0, 0, true, Bytes::from_static(&[0, 0, 0, 3, 0x26, 1, 9]));
        assert_eq!(payloads(&f, &bad, 1400), payloads(&f, &good, 1400));
    }

    #[test]
    fn total_on_hostile_frames_and_mtus() {
        let nals = |units: &[&[u8]]| {
            let mut d = Vec::new();
            for u in units {
                d.extend_from_slice(&(u.len() as u32).to_be_bytes());
                d.extend_from_slice(u);
            }
            Bytes::from(d)
        };
        let frames = [
            Bytes::new(),
            nals(&[&[], &[0x26], &[0x26, 1]]),
            Bytes::from_static(&[0, 0, 0, 2, 0x26, 1, 0xff, 0xff, 0xff, 0xff, 1]),
            nals(&[&vec![0x26; 70_000]]),
        ];
        for data in frames {
            let f = Frame::new(TrackKind::Video, 0, 0, true, data);
            for mtu in [0, 1, 2, 3, 100, 1400, 65_535, usize::MAX] {
                for p in payloads(&f, &config(), mtu) {
                    let len: usize = p.iter().map(Bytes::len).sum();
                    assert!((2..=crate::codec::MAX_RTP_PAYLOAD).contains(&len), "{len} for mtu {mtu}");
                }
                for bad in [Bytes::new(), Bytes::from_static(&[1; 30])] {
                    let _ = payloads(&f, &bad, mtu);
                }
            }
        }
    }

    #[test]
    fn bad_payloads_are_errors() {
        for payload in [&[0x60, 1, 0][..], &[0x80, 1, 2][..], &[0x62, 1][..], &[0x60, 1, 0xff, 0xff, 9]] {
            let mut d = Depacketizer::default();
            let p = RtpPacket {
                marker: true,
                payload_type: 96,
                sequence: 0,
                timestamp: 0,
                ssrc: 1,
                payload: Bytes::copy_from_slice(payload),
            };
            assert!(d.push(&p).is_err(), "{payload:?}");
        }
    }
}
