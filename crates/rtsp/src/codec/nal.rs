//! What the H.264 and H.265 depacketizers share: NAL units assembled into access units at
//! timestamp changes and marker bits, fragments reassembled, and loss handled by dropping the
//! broken unit and waiting for the next keyframe.

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
            // What was being assembled is incomplete.
            if self.fragment.take().is_some() || self.au_time == Some(p.timestamp) {
                self.broken = true;
            }
            self.waiting_for_keyframe = true;
            loss = Some(DepacketizeError::Loss { expected, got: p.sequence });
        }
        self.expected_seq = Some(p.sequence.wrapping_add(1));
        if self.au_time.is_some_and(|t| t != p.timestamp) {
            // A new timestamp without a marker on the last unit: it is complete.
            self.fragment = None;
            self.finish();
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

    /// Appends a NAL unit to the access unit.
    pub fn push_unit(&mut self, nal: &[u8], keyframe: bool) -> Result<(), DepacketizeError> {
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
