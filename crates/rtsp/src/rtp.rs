//! RTP packets (RFC 3550 section 5.1).

use bytes::{BufMut, Bytes, BytesMut};

/// Why a packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RtpError {
    /// Shorter than its header says.
    #[error("RTP packet truncated ({0} bytes)")]
    Truncated(usize),
    /// Version other than 2.
    #[error("RTP version {0}")]
    Version(u8),
}

/// A parsed RTP packet; the payload shares the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Timestamp.
    pub timestamp: u32,
    /// Synchronization source.
    pub ssrc: u32,
    /// The payload (after CSRCs, extension and without padding).
    pub payload: Bytes,
}

impl RtpPacket {
    /// Parses a packet.
    pub fn parse(data: Bytes) -> Result<RtpPacket, RtpError> {
        let n = data.len();
        if n < 12 {
            return Err(RtpError::Truncated(n));
        }
        let version = data[0] >> 6;
        if version != 2 {
            return Err(RtpError::Version(version));
        }
        let padding = data[0] & 0x20 != 0;
        let extension = data[0] & 0x10 != 0;
        let csrcs = usize::from(data[0] & 0x0f);
        let mut start = 12 + 4 * csrcs;
        if extension {
            if n < start + 4 {
                return Err(RtpError::Truncated(n));
            }
            let words = usize::from(u16::from_be_bytes([data[start + 2], data[start + 3]]));
            start += 4 + 4 * words;
        }
        let mut end = n;
        if padding {
            let pad = usize::from(data[n - 1]);
            end = n.checked_sub(pad).ok_or(RtpError::Truncated(n))?;
        }
        if start > end {
            return Err(RtpError::Truncated(n));
        }
        Ok(RtpPacket {
            marker: data[1] & 0x80 != 0,
            payload_type: data[1] & 0x7f,
            sequence: u16::from_be_bytes([data[2], data[3]]),
            timestamp: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
            payload: data.slice(start..end),
        })
    }

    /// Writes the 12-byte header then `payload`.
    pub fn write(
        out: &mut BytesMut,
        marker: bool,
        payload_type: u8,
        sequence: u16,
        timestamp: u32,
        ssrc: u32,
        payload: &[&[u8]],
    ) {
        out.put_u8(0x80);
        out.put_u8((u8::from(marker) << 7) | (payload_type & 0x7f));
        out.put_u16(sequence);
        out.put_u32(timestamp);
        out.put_u32(ssrc);
        for p in payload {
            out.put_slice(p);
        }
    }
}

/// The header-extension profile of ONVIF replay (ONVIF Streaming Specification 6.3).
pub const ONVIF_REPLAY_PROFILE: u16 = 0xABAC;

/// The ONVIF replay extension's body (ONVIF Streaming Specification 6.3): the frame's
/// absolute time as an NTP timestamp, then the C (clean point: the first packet of a
/// keyframe), E (end of a contiguous section) and D (discontinuity: the first packet after
/// a seek or gap) flags, and the low byte of the PLAY request's CSeq.
pub fn onvif_replay_extension(ntp: u64, clean_point: bool, end: bool, discontinuity: bool, cseq: u8) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&ntp.to_be_bytes());
    b[8] = (u8::from(clean_point) << 7) | (u8::from(end) << 6) | (u8::from(discontinuity) << 5);
    b[9] = cseq;
    b
}

/// `packet` (a whole RTP packet without CSRCs or an extension, as our packetizers write them)
/// with a header extension (RFC 3550 5.3.1) of `profile` and `body` (a whole number of 32-bit
/// words) inserted after the fixed header; None when the packet is not such a packet or the
/// body is not word-sized.
pub fn with_header_extension(packet: &[u8], profile: u16, body: &[u8]) -> Option<Bytes> {
    if packet.len() < 12
        || packet[0] & 0x1f != 0
        || !body.len().is_multiple_of(4)
        || body.len() / 4 > usize::from(u16::MAX)
    {
        return None;
    }
    let mut out = BytesMut::with_capacity(packet.len() + 4 + body.len());
    out.put_u8(packet[0] | 0x10);
    out.put_slice(&packet[1..12]);
    out.put_u16(profile);
    out.put_u16((body.len() / 4) as u16);
    out.put_slice(body);
    out.put_slice(&packet[12..]);
    Some(out.freeze())
}

/// Most packets in one segmented UDP send (`UDP_SEGMENT`; the kernel's `UDP_MAX_SEGMENTS` is
/// 64 on older kernels).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Most bytes in one segmented UDP send: the payload of one IP datagram.
pub const GSO_MAX_BYTES: usize = 65_000;

/// How many packets, from the first, one segmented send (GSO) can carry: all of the first's
/// size, the last of them possibly shorter, at most [`GSO_MAX_SEGMENTS`] packets and
/// [`GSO_MAX_BYTES`] bytes. The server's sends and ferrocast-floor's share it.
pub fn gso_run_len<P: AsRef<[u8]>>(packets: &[P]) -> usize {
    let Some(first) = packets.first() else { return 0 };
    let size = first.as_ref().len();
    let mut n = 1;
    let mut total = size;
    while n < packets.len().min(GSO_MAX_SEGMENTS) {
        let len = packets[n].as_ref().len();
        if len > size || len == 0 || total + len > GSO_MAX_BYTES {
            break;
        }
        n += 1;
        total += len;
        if len < size {
            break;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_extension_padding() {
        let mut b = BytesMut::new();
        RtpPacket::write(&mut b, true, 96, 65535, 0xdead_beef, 7, &[b"abc"]);
        let p = RtpPacket::parse(b.freeze()).unwrap();
        assert_eq!(
            (p.marker, p.payload_type, p.sequence, p.timestamp, p.ssrc, &p.payload[..]),
            (true, 96, 65535, 0xdead_beef, 7, &b"abc"[..])
        );
        // Extension of one word and two bytes of padding.
        let raw = [0xb0, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xbe, 0xde, 0, 1, 1, 2, 3, 4, b'x', 0, 2];
        assert_eq!(&RtpPacket::parse(Bytes::copy_from_slice(&raw)).unwrap().payload[..], b"x");
        assert_eq!(RtpPacket::parse(Bytes::from_static(&[0x80, 0, 0])), Err(RtpError::Truncated(3)));
        assert_eq!(RtpPacket::parse(Bytes::from_static(&[0x40; 12])), Err(RtpError::Version(1)));
        assert!(RtpPacket::parse(Bytes::from_static(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 99])).is_err());
        assert!(RtpPacket::parse(Bytes::from_static(&[0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])).is_err());
    }

    #[test]
    fn onvif_extension_is_inserted_after_the_header() {
        let mut b = BytesMut::new();
        RtpPacket::write(&mut b, true, 96, 9, 1234, 7, &[b"payload"]);
        let ext = onvif_replay_extension(0x0102_0304_0506_0708, true, false, true, 5);
        let p = with_header_extension(&b, ONVIF_REPLAY_PROFILE, &ext).unwrap();
        assert_eq!(&p[12..16], &[0xab, 0xac, 0, 3]);
        assert_eq!(&p[16..24], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p[24], 0b1010_0000);
        assert_eq!(p[25], 5);
        let parsed = RtpPacket::parse(p).unwrap();
        assert_eq!((&parsed.payload[..], parsed.sequence, parsed.timestamp), (&b"payload"[..], 9, 1234));
        assert_eq!(with_header_extension(&b[..11], ONVIF_REPLAY_PROFILE, &ext), None);
        assert_eq!(with_header_extension(&b, ONVIF_REPLAY_PROFILE, &ext[..5]), None);
    }
}
