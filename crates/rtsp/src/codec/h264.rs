//! H.264 over RTP (RFC 6184): single NAL unit packets, STAP-A (5.7.1) and FU-A (5.8), in
//! non-interleaved mode (packetization-mode=1).

use bytes::Bytes;
use ferrocast_media::{Frame, avc::nal_units, h264};

use super::nal::{Assembler, remember};
use super::{AccessUnit, DepacketizeError, MAX_RTP_PAYLOAD, MIN_MTU};
use crate::rtp::RtpPacket;

const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// Parameter sets from a record, to send in band before keyframes (so UDP viewers can join
/// at any keyframe).
fn parameter_sets(config: &Bytes) -> Vec<Bytes> {
    // Empty entries (a hostile avcC; ingest drops them too) have no header to send.
    h264::AvcConfig::parse(config)
        .map(|c| c.sps.into_iter().chain(c.pps).filter(|n| !n.is_empty()).collect())
        .unwrap_or_default()
}

/// The payloads of a frame's packets, each as slices to concatenate. Total on any frame and
/// config: empty NAL units are skipped, the MTU is taken within
/// [`MIN_MTU`]..=[`MAX_RTP_PAYLOAD`].
pub fn payloads(frame: &Frame, config: &Bytes, mtu: usize) -> Vec<Vec<Bytes>> {
    let mtu = mtu.clamp(MIN_MTU, MAX_RTP_PAYLOAD);
    let mut nals: Vec<Bytes> = Vec::new();
    let has_params = nal_units(&frame.data).any(|n| matches!(n.first().map(|b| b & 0x1f), Some(h264::nal::SPS)));
    if frame.keyframe && !has_params {
        nals.extend(parameter_sets(config));
    }
    let mut pos = 0;
    for n in nal_units(&frame.data) {
        let start = pos + 4;
        pos = start + n.len();
        if !n.is_empty() && n[0] & 0x1f != h264::nal::AUD {
            nals.push(frame.data.slice(start..start + n.len()));
        }
    }
    let mut out: Vec<Vec<Bytes>> = Vec::new();
    let mut i = 0;
    while i < nals.len() {
        // Aggregate small NAL units (parameter sets, SEI) into a STAP-A.
        let mut j = i;
        let mut size = 1;
        while j < nals.len() && size + 2 + nals[j].len() <= mtu {
            size += 2 + nals[j].len();
            j += 1;
        }
        if j - i >= 2 {
            let nri = nals[i..j].iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
            let mut parts = vec![Bytes::copy_from_slice(&[nri | STAP_A])];
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
            let indicator = (n[0] & 0xe0) | FU_A;
            let kind = n[0] & 0x1f;
            let body = n.slice(1..);
            let chunk = mtu - 2;
            let count = body.len().div_ceil(chunk);
            for k in 0..count {
                let mut header = kind;
                if k == 0 {
                    header |= 0x80;
                }
                if k + 1 == count {
                    header |= 0x40;
                }
                let piece = body.slice(k * chunk..((k + 1) * chunk).min(body.len()));
                out.push(vec![Bytes::copy_from_slice(&[indicator, header]), piece]);
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
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    config_changed: bool,
}

impl Depacketizer {
    fn add_nal(&mut self, nal: &[u8]) -> Result<(), DepacketizeError> {
        let Some(&h) = nal.first() else { return Ok(()) };
        match h & 0x1f {
            h264::nal::SPS => remember(&mut self.sps, nal, &mut self.config_changed),
            h264::nal::PPS => remember(&mut self.pps, nal, &mut self.config_changed),
            h264::nal::AUD => {}
            0 | 30 | 31 => return Err(DepacketizeError::Invalid("reserved H.264 NAL unit type")),
            // Slices (7.3.3): `first_mb_in_slice` is ue(v), 0 is the single bit 1.
            kind @ (1 | 2 | 5) => {
                return self.asm.push_unit(
                    nal,
                    kind == h264::nal::IDR,
                    Some(nal.get(1).is_some_and(|b| b & 0x80 != 0)),
                );
            }
            kind => return self.asm.push_unit(nal, kind == h264::nal::IDR, None),
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
        let Some(&h) = d.first() else { return Err(DepacketizeError::Invalid("empty payload")) };
        match h & 0x1f {
            1..=23 => self.add_nal(d),
            STAP_A => {
                let mut pos = 1;
                let mut r = Ok(());
                while pos + 2 <= d.len() {
                    let len = usize::from(u16::from_be_bytes([d[pos], d[pos + 1]]));
                    pos += 2;
                    if pos + len > d.len() {
                        return Err(DepacketizeError::Invalid("STAP-A unit overruns the packet"));
                    }
                    r = r.and(self.add_nal(&d[pos..pos + len]));
                    pos += len;
                }
                r
            }
            FU_A => {
                if d.len() < 3 {
                    return Err(DepacketizeError::Invalid("FU-A too short"));
                }
                let (indicator, header) = (d[0], d[1]);
                if header & 0x80 != 0 {
                    self.asm.fragment_start(&[(indicator & 0xe0) | (header & 0x1f)], &d[2..]);
                } else {
                    self.asm.fragment_continue(&d[2..])?;
                }
                match (header & 0x40 != 0).then(|| self.asm.fragment_end()).flatten() {
                    Some(nal) => self.add_nal(&nal),
                    None => Ok(()),
                }
            }
            _ => Err(DepacketizeError::Invalid("STAP-B, MTAP, FU-B or reserved packet type")),
        }
    }

    /// The next complete access unit.
    pub fn pull(&mut self) -> Option<AccessUnit> {
        self.asm.pull()
    }

    /// An avcC built from in-band SPS/PPS, once per change.
    pub fn take_new_config(&mut self) -> Option<Bytes> {
        if !self.config_changed {
            return None;
        }
        let (sps, pps) = (self.sps.clone()?, self.pps.clone()?);
        self.config_changed = false;
        h264::build_avcc(&[sps], &[pps]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocast_media::TrackKind;

    fn config() -> Bytes {
        let sps = Bytes::from_static(&[
            0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00,
            0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60,
        ]);
        h264::build_avcc(&[sps], &[Bytes::from_static(&[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0])]).unwrap()
    }

    fn frame(nals: &[&[u8]], key: bool) -> std::sync::Arc<Frame> {
        let mut d = Vec::new();
        for n in nals {
            d.extend_from_slice(&(n.len() as u32).to_be_bytes());
            d.extend_from_slice(n);
        }
        Frame::new(TrackKind::Video, 0, 0, key, Bytes::from(d))
    }

    fn to_packets(f: &Frame, mtu: usize, seq0: u16) -> Vec<RtpPacket> {
        let p = payloads(f, &config(), mtu);
        let n = p.len();
        p.into_iter()
            .enumerate()
            .map(|(i, parts)| RtpPacket {
                marker: i + 1 == n,
                payload_type: 96,
                sequence: seq0.wrapping_add(i as u16),
                timestamp: 9000,
                ssrc: 1,
                payload: Bytes::from(parts.concat()),
            })
            .collect()
    }

    #[test]
    fn large_idr_goes_fu_a_with_parameter_sets_in_stap_a() {
        let mut idr = vec![0x65];
        idr.extend((0..5000u32).map(|i| i as u8));
        let f = frame(&[&[0x06, 5, 1, 0x80], &idr], true);
        let pk = to_packets(&f, 1400, 100);
        assert_eq!(pk[0].payload[0] & 0x1f, STAP_A, "SPS, PPS and SEI aggregated");
        assert!(pk[1..].iter().all(|p| p.payload[0] & 0x1f == FU_A));
        assert!(pk.iter().all(|p| p.payload.len() <= 1400));
        let mut d = Depacketizer::default();
        for p in &pk {
            d.push(p).unwrap();
        }
        let au = d.pull().unwrap();
        assert!(au.keyframe);
        let units: Vec<&[u8]> = nal_units(&au.data).collect();
        assert_eq!(units, vec![&[0x06, 5, 1, 0x80][..], &idr[..]]);
        assert_eq!(d.take_new_config(), Some(config()));
    }

    /// Issue 14: an avcC with an SPS entry of length 0 before the real SPS (as a hostile RTMP
    /// publisher sent it) panicked here with an index out of bounds.
    #[test]
    fn zero_length_sps_entry_in_config_does_not_panic() {
        let good = config();
        let mut bad = good[..5].to_vec();
        bad.push(0xe2);
        bad.extend_from_slice(&[0, 0]);
        bad.extend_from_slice(&good[6..]);
        let bad = Bytes::from(bad);
        let f = frame(&[&[0x65, 1, 2, 3]], true);
        let p = payloads(&f, &bad, 1400);
        assert_eq!(p, payloads(&f, &good, 1400), "the empty entry is skipped");
        assert_eq!(p[0][0][0] & 0x1f, STAP_A);
    }

    #[test]
    fn total_on_hostile_frames_and_mtus() {
        let frames = [
            Frame::new(TrackKind::Video, 0, 0, true, Bytes::new()),
            frame(&[&[], &[], &[0x65]], true),
            // A length that overruns the payload: units up to it are sent.
            Frame::new(
                TrackKind::Video,
                0,
                0,
                true,
                Bytes::from_static(&[0, 0, 0, 1, 0x41, 0xff, 0xff, 0xff, 0xff, 1]),
            ),
            frame(&[&vec![0x65; 70_000]], false),
            frame(&[&[0x41u8; 10][..]; 100], false),
        ];
        for f in &frames {
            for mtu in [0, 1, 2, 3, 100, 1400, 65_535, usize::MAX] {
                for p in payloads(f, &config(), mtu) {
                    let len: usize = p.iter().map(Bytes::len).sum();
                    assert!(len <= MAX_RTP_PAYLOAD.max(mtu.min(MAX_RTP_PAYLOAD)), "{len} for mtu {mtu}");
                    assert!(len > 0);
                }
                for bad in [Bytes::new(), Bytes::from_static(&[1, 2, 3, 4, 5, 0xff]), Bytes::from_static(&[1; 9])] {
                    let _ = payloads(f, &bad, mtu);
                }
            }
        }
        let p = payloads(&frames[3], &config(), 0);
        assert!(p.iter().all(|p| p.iter().map(Bytes::len).sum::<usize>() <= MIN_MTU));
    }

    #[test]
    fn small_frame_is_a_single_nal_packet() {
        let f = frame(&[&[0x41, 0x9a, 1, 2]], false);
        let pk = to_packets(&f, 1400, 0);
        assert_eq!(pk.len(), 1);
        assert_eq!(&pk[0].payload[..], &[0x41, 0x9a, 1, 2]);
    }

    #[test]
    fn loss_in_fu_drops_frame_and_waits_for_keyframe() {
        let mut big = vec![0x65];
        big.extend(std::iter::repeat_n(7u8, 4000));
        let key = to_packets(&frame(&[&big], true), 1000, 0);
        let mut d = Depacketizer::default();
        for (i, p) in key.iter().enumerate() {
            if i == 2 {
                continue; // lost
            }
            let _ = d.push(p);
        }
        assert_eq!(d.pull(), None, "broken keyframe dropped");
        let mut p = to_packets(&frame(&[&[0x41, 1]], false), 1000, key.len() as u16)[0].clone();
        p.timestamp = 12000;
        d.push(&p).unwrap();
        assert_eq!(d.pull(), None, "non-keyframes wait for a keyframe");
        let mut k2 = to_packets(&frame(&[&big], true), 1000, key.len() as u16 + 1);
        for p in &mut k2 {
            p.timestamp = 15000;
            d.push(p).unwrap();
        }
        assert!(d.pull().unwrap().keyframe);
    }

    #[test]
    fn nonsense_nal_types_are_errors_not_panics() {
        let mut d = Depacketizer::default();
        for payload in [&[0x1f, 1][..], &[0x1c][..], &[0x18, 0xff, 0xff, 1][..], &[][..], &[0x19, 0, 0]] {
            let p = RtpPacket {
                marker: true,
                payload_type: 96,
                sequence: 0,
                timestamp: 0,
                ssrc: 1,
                payload: Bytes::copy_from_slice(payload),
            };
            d = Depacketizer::default();
            assert!(d.push(&p).is_err(), "{payload:?}");
        }
        assert_eq!(d.pull(), None);
    }
}
