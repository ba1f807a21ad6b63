//! Length-prefixed NAL unit payloads and the decoder configuration records of H.264 and
//! H.265 (ISO/IEC 14496-15).

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::VideoCodec;

/// Errors reading NAL unit payloads or configuration records.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NalError {
    /// The configuration record is shorter than its fixed fields.
    #[error("{codec:?} decoder configuration record too short ({len} bytes)")]
    ConfigTooShort {
        /// Codec of the record.
        codec: VideoCodec,
        /// Its length.
        len: usize,
    },
    /// A NAL unit length runs past the end of the payload.
    #[error("NAL unit at offset {offset} claims {len} bytes, {remaining} remain")]
    NalOverrun {
        /// Offset of the length field.
        offset: usize,
        /// The claimed length.
        len: usize,
        /// Bytes left after the length field.
        remaining: usize,
    },
}

/// The NAL unit length size (1, 2 or 4 bytes) a configuration record declares:
/// `lengthSizeMinusOne` is in byte 4 of avcC (5.3.3.1.2) and byte 21 of hvcC (8.3.3.1.2).
pub fn nal_length_size(codec: VideoCodec, config: &[u8]) -> Result<usize, NalError> {
    let at = match codec {
        VideoCodec::H264 => 4,
        VideoCodec::H265 => 21,
    };
    let byte = config.get(at).ok_or(NalError::ConfigTooShort {
        codec,
        len: config.len(),
    })?;
    Ok(usize::from(byte & 0x3) + 1)
}

/// Rewrites a payload with `from`-byte NAL lengths into 4-byte lengths (ferrocast's frame
/// form). Returns the payload unchanged when `from` is already 4.
pub fn to_four_byte_lengths(data: Bytes, from: usize) -> Result<Bytes, NalError> {
    if from == 4 {
        return Ok(data);
    }
    let mut out = BytesMut::with_capacity(data.len() + data.len() / 8 + 8);
    let mut pos = 0;
    while pos < data.len() {
        let remaining = data.len() - pos;
        if remaining < from {
            return Err(NalError::NalOverrun {
                offset: pos,
                len: from,
                remaining,
            });
        }
        let len = data[pos..pos + from]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        let body = pos + from;
        if data.len() - body < len {
            return Err(NalError::NalOverrun {
                offset: pos,
                len,
                remaining: data.len() - body,
            });
        }
        out.put_u32(len as u32);
        out.put_slice(&data[body..body + len]);
        pos = body + len;
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_size_from_records() {
        let avcc = [1, 0x64, 0, 0x1f, 0xff, 0xe1];
        assert_eq!(nal_length_size(VideoCodec::H264, &avcc), Ok(4));
        let mut hvcc = [0u8; 23];
        hvcc[21] = 0xfc | 0x01;
        assert_eq!(nal_length_size(VideoCodec::H265, &hvcc), Ok(2));
        assert!(nal_length_size(VideoCodec::H265, &avcc).is_err());
    }

    #[test]
    fn rewrites_two_byte_lengths() {
        let two = Bytes::from_static(&[0, 2, 0x65, 0xaa, 0, 1, 0x06]);
        let four = to_four_byte_lengths(two, 2).unwrap();
        assert_eq!(&four[..], &[0, 0, 0, 2, 0x65, 0xaa, 0, 0, 0, 1, 0x06]);
        let bad = Bytes::from_static(&[0, 9, 0x65]);
        assert!(matches!(
            to_four_byte_lengths(bad, 2),
            Err(NalError::NalOverrun {
                offset: 0,
                len: 9,
                remaining: 1
            })
        ));
    }
}
