//! What the H.264 and H.265 depacketizers share: NAL units assembled into access units at
//! timestamp changes and marker bits, fragments reassembled, and loss handled by dropping the
//! broken unit and waiting for the next keyframe.
//!
//! Which access unit a loss broke: RTP does not say which unit the missing packets belonged
//! to, so the rule is conservative.
//! - A gap while a unit is open (its marker packet not seen) breaks that unit: the missing
//!   packets may be its middle or its end, the marker packet included (RFC 6184 5.1, RFC 7798
//!   4.1: the marker bit is set on the last packet of an access unit).
//! - A gap just before the first packet of a unit may have taken that unit's head: the unit is
//!   kept only when its first slice is the first slice of the picture (H.264
//!   `first_mb_in_slice == 0`, H.265 `first_slice_segment_in_pic_flag`), else it is broken.
//!   A truncated IDR is never passed on as good.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::{AccessUnit, DepacketizeError, MAX_ACCESS_UNIT_SIZE};
use crate::rtp::RtpPacket;

/// Keeps the latest parameter set of a kind, noting a change.
pub(crate) fn remember(slot: &mut Option<Bytes>, nal: &[u8], changed: &mut bool) {
    if slot.as_deref() != Some(nal) {
        *slot = Some(Bytes::copy_from_slice(nal));
        *changed = true;
    }
}

#[derive(Debug, Default)]
pub(crate) struct Assembler {
    au: BytesMut,
    au_time: Option<u32>,
    au_key: bool,
    fragment: Option<BytesMut>,
    expected_seq: Option<u16>,
    broken: bool,
    /// A loss came just before this unit's first packet: its head may be missing.
    head_unknown: bool,
    /// A slice of this unit was seen (the head check is done on the first).
    slice_seen: bool,
    waiting_for_keyframe: bool,
    ready: VecDeque<AccessUnit>,
}

impl Assembler {
    /// Before a packet's payload: checks the sequence and closes the previous access unit if
    /// the timestamp moved on. Returns the loss to report once the payload is handled.
    pub fn begin(&mut self, p: &RtpPacket) -> Option<DepacketizeError> {
        let mut loss = None;
        if let Some(expected) = self.expected_seq
            && expected != p.sequence
        {
            // The unit being assembled has no marker yet: the lost packets may be its middle
            // or its end (the marker packet itself). It is incomplete either way.
            if self.fragment.take().is_some() || self.au_time.is_some() {
                self.broken = true;
            }
            self.waiting_for_keyframe = true;
            loss = Some(DepacketizeError::Loss { expected, got: p.sequence });
        }
        self.expected_seq = Some(p.sequence.wrapping_add(1));
        if self.au_time.is_some_and(|t| t != p.timestamp) {
            // A new timestamp without a marker on the last unit: it ended there (a sender
            // that never sets the marker bit), whole unless a loss broke it above.
            self.fragment = None;
            self.finish();
        }
        if self.au_time.is_none() {
            // This packet opens a unit; after a loss its head may be gone.
            self.head_unknown = loss.is_some();
            self.slice_seen = false;
        }
        self.au_time = Some(p.timestamp);
        loss
    }

    /// After a packet's payload: the marker bit ends the access unit.
    pub fn end(&mut self, p: &RtpPacket) {
        if p.marker {
            self.fragment = None;
            self.finish();
        }
    }

    fn finish(&mut self) {
        let Some(rtp_time) = self.au_time.take() else { return };
        let data = std::mem::take(&mut self.au).freeze();
        let broken = std::mem::take(&mut self.broken);
        let keyframe = std::mem::take(&mut self.au_key);
        self.head_unknown = false;
        self.slice_seen = false;
        if broken || data.is_empty() {
            return;
        }
        if self.waiting_for_keyframe {
            if !keyframe {
                return;
            }
            self.waiting_for_keyframe = false;
        }
        self.ready.push_back(AccessUnit { rtp_time, keyframe, data });
    }

    /// Appends a NAL unit to the access unit. `first_slice` is `None` for a unit that is not a
    /// slice, else whether the slice is the first of its picture (see the module doc).
    pub fn push_unit(&mut self, nal: &[u8], keyframe: bool, first_slice: Option<bool>) -> Result<(), DepacketizeError> {
        if let Some(first) = first_slice
            && !std::mem::replace(&mut self.slice_seen, true)
            && self.head_unknown
            && !first
        {
            // The picture's first slice was in the lost packets.
            self.broken = true;
        }
        if self.au.len() + nal.len() + 4 > MAX_ACCESS_UNIT_SIZE {
            self.broken = true;
            return Err(DepacketizeError::TooLarge);
        }
        self.au_key |= keyframe;
        self.au.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        self.au.extend_from_slice(nal);
        Ok(())
    }

    /// The first fragment of a NAL unit: its reconstructed header and first bytes.
    pub fn fragment_start(&mut self, header: &[u8], body: &[u8]) {
        let mut f = BytesMut::with_capacity((header.len() + body.len()) * 4);
        f.extend_from_slice(header);
        f.extend_from_slice(body);
        self.fragment = Some(f);
    }

    /// A later fragment. A fragment whose start was never seen marks the unit broken.
    pub fn fragment_continue(&mut self, body: &[u8]) -> Result<(), DepacketizeError> {
        let Some(f) = self.fragment.as_mut() else {
            self.broken = true;
            return Ok(());
        };
        if f.len() + body.len() > MAX_ACCESS_UNIT_SIZE {
            self.fragment = None;
            self.broken = true;
            return Err(DepacketizeError::TooLarge);
        }
        f.extend_from_slice(body);
        Ok(())
    }

    /// The completed NAL unit at the last fragment.
    pub fn fragment_end(&mut self) -> Option<BytesMut> {
        self.fragment.take()
    }

    /// The next complete access unit.
    pub fn pull(&mut self) -> Option<AccessUnit> {
        self.ready.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::h264::Depacketizer;
    use crate::rtp::RtpPacket;

    /// An IDR in three slices, one single-NAL-unit packet each (as cameras send multi-slice
    /// pictures), the marker on the last; then a P picture in one packet.
    fn stream() -> Vec<RtpPacket> {
        let pkt = |seq: u16, ts: u32, marker: bool, nal: &[u8]| RtpPacket {
            marker,
            payload_type: 96,
            sequence: seq,
            timestamp: ts,
            ssrc: 1,
            payload: Bytes::copy_from_slice(nal),
        };
        vec![
            // first_mb_in_slice: 0 (bit 1), then 1 (bits 010), then 2 (bits 011).
            pkt(10, 3000, false, &[0x65, 0x88, 1, 1]),
            pkt(11, 3000, false, &[0x65, 0x40, 2, 2]),
            pkt(12, 3000, true, &[0x65, 0x60, 3, 3]),
            pkt(13, 6000, true, &[0x41, 0x9a, 4]),
        ]
    }

    fn run(lost: &[u16]) -> Vec<(u32, bool, usize)> {
        let mut d = Depacketizer::default();
        // A whole P picture first, so that the depacketizer has a previous unit.
        let mut first = stream()[3].clone();
        first.sequence = 9;
        first.timestamp = 0;
        let _ = d.push(&first);
        let mut out = Vec::new();
        while let Some(au) = d.pull() {
            out.push((au.rtp_time, au.keyframe, au.data.len()));
        }
        for p in stream().iter().filter(|p| !lost.contains(&p.sequence)) {
            let _ = d.push(p);
            while let Some(au) = d.pull() {
                out.push((au.rtp_time, au.keyframe, au.data.len()));
            }
        }
        out
    }

    #[test]
    fn whole_stream_passes() {
        assert_eq!(run(&[]), [(0, false, 7), (3000, true, 24), (6000, false, 7)]);
    }

    #[test]
    fn loss_of_the_marker_packet_breaks_the_unit() {
        // The IDR's last slice is lost: it must not go out truncated, and the P picture after
        // it waits for the next keyframe.
        assert_eq!(run(&[12]), [(0, false, 7)]);
    }

    #[test]
    fn loss_inside_the_unit_breaks_it() {
        assert_eq!(run(&[11]), [(0, false, 7)]);
    }

    #[test]
    fn loss_of_the_first_packet_breaks_the_unit() {
        // The gap is just before the IDR's second slice: its first slice is gone.
        assert_eq!(run(&[10]), [(0, false, 7)]);
    }

    #[test]
    fn loss_of_a_whole_unit_keeps_the_next_whole_keyframe() {
        // The P picture before the IDR is lost whole: the IDR starts with its first slice.
        let mut d = Depacketizer::default();
        let mut p = stream()[3].clone();
        p.sequence = 8;
        p.timestamp = 0;
        d.push(&p).unwrap();
        assert!(d.pull().is_some());
        // seq 9 (another P picture) lost.
        let mut got = Vec::new();
        for p in stream() {
            let _ = d.push(&p);
            while let Some(au) = d.pull() {
                got.push((au.rtp_time, au.keyframe));
            }
        }
        assert_eq!(got, [(3000, true), (6000, false)]);
    }

    #[test]
    fn sender_without_marker_bits() {
        // Units end at the timestamp change; no loss, nothing dropped.
        let mut d = Depacketizer::default();
        let mut got = Vec::new();
        for mut p in stream() {
            p.marker = false;
            d.push(&p).unwrap();
            while let Some(au) = d.pull() {
                got.push(au.rtp_time);
            }
        }
        assert_eq!(got, [3000]);
    }
}
