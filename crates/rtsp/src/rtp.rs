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
}
