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
    /// The payload in ferrocast's form would be over [`crate::check::MAX_FRAME_SIZE`].
    #[error("frame of at least {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes it would take at least.
        len: usize,
        /// [`crate::check::MAX_FRAME_SIZE`].
        max: usize,
    },
}

/// The NAL unit length size (1, 2 or 4 bytes) a configuration record declares:
/// `lengthSizeMinusOne` is in byte 4 of avcC (5.3.3.1.2) and byte 21 of hvcC (8.3.3.1.2).
pub fn nal_length_size(codec: VideoCodec, config: &[u8]) -> Result<usize, NalError> {
    let at = match codec {
        VideoCodec::H264 => 4,
        VideoCodec::H265 => 21,
    };
    let byte = config.get(at).ok_or(NalError::ConfigTooShort { codec, len: config.len() })?;
    Ok(usize::from(byte & 0x3) + 1)
}

/// Rewrites a payload with `from`-byte NAL lengths (1 to 4) into 4-byte lengths
/// (ferrocast's frame form), checking that every length stays inside the payload and that
/// the result is at most [`crate::check::MAX_FRAME_SIZE`]. Returns the payload itself when
/// `from` is already 4.
pub fn to_four_byte_lengths(data: Bytes, from: usize) -> Result<Bytes, NalError> {
    let max = crate::check::MAX_FRAME_SIZE;
    let from = from.clamp(1, 4);
    let mut out = BytesMut::new();
    let mut size = 0usize;
    let mut pos = 0;
    while pos < data.len() {
        let remaining = data.len() - pos;
        if remaining < from {
            return Err(NalError::NalOverrun { offset: pos, len: from, remaining });
        }
        let len = data[pos..pos + from].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        let body = pos + from;
        if data.len() - body < len {
            return Err(NalError::NalOverrun { offset: pos, len, remaining: data.len() - body });
        }
        // Shorter length fields grow the payload (by 3 bytes per unit from 1-byte ones).
        size += 4 + len;
        if size > max {
            return Err(NalError::TooLarge { len: size, max });
        }
        if from != 4 {
            out.put_u32(len as u32);
            out.put_slice(&data[body..body + len]);
        }
        pos = body + len;
    }
    Ok(if from == 4 { data } else { out.freeze() })
}

/// The NAL units of a payload with 4-byte lengths (ferrocast's frame form). Stops at the
/// first malformed length.
pub fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let len = data.get(pos..pos + 4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let body = data.get(pos + 4..pos + 4 + len)?;
        pos += 4 + len;
        Some(body)
    })
}

/// Splits an Annex B byte stream (H.264 Annex B) into NAL units, without start codes.
pub fn split_annexb(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |n| n - 3);
        // A 4-byte start code's leading zero, and trailing_zero_8bits, belong to no NAL unit.
        while end > s && data[end - 1] == 0 {
            end -= 1;
        }
        if end > s {
            out.push(&data[s..end]);
        }
    }
    out
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
    fn annexb_and_length_prefixed_iteration() {
        let annexb = [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 0, 0, 4];
        let nals = split_annexb(&annexb);
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 0, 0, 4][..]]);
        let prefixed = [0, 0, 0, 2, 0x65, 1, 0, 0, 0, 1, 0x41, 0, 0, 0, 9];
        let units: Vec<&[u8]> = nal_units(&prefixed).collect();
        assert_eq!(units, vec![&[0x65, 1][..], &[0x41][..]]);
    }

    #[test]
    fn four_byte_lengths_are_checked_and_not_copied() {
        let good = Bytes::from_static(&[0, 0, 0, 2, 0x65, 0xaa, 0, 0, 0, 0]);
        let out = to_four_byte_lengths(good.clone(), 4).unwrap();
        assert_eq!(out.as_ptr(), good.as_ptr());
        let overrun = Bytes::from_static(&[0, 0, 0, 2, 0x65, 0xaa, 0xff, 0xff, 0xff, 0xff, 0x41]);
        assert_eq!(
            to_four_byte_lengths(overrun, 4),
            Err(NalError::NalOverrun { offset: 6, len: 0xffff_ffff, remaining: 1 })
        );
        let short = Bytes::from_static(&[0, 0, 0, 2, 0x65, 0xaa, 0, 0]);
        assert_eq!(to_four_byte_lengths(short, 4), Err(NalError::NalOverrun { offset: 6, len: 4, remaining: 2 }));
    }

    /// One-byte length fields make a payload up to 4 times larger in 4-byte form: a 16 MiB
    /// RTMP message of empty units would become 64 MiB.
    #[test]
    fn frame_too_large() {
        let max = crate::check::MAX_FRAME_SIZE;
        let zeros = Bytes::from(vec![0u8; max / 4 + 1]);
        assert!(matches!(to_four_byte_lengths(zeros, 1), Err(NalError::TooLarge { .. })));
        let just = Bytes::from(vec![0u8; max / 4]);
        assert_eq!(to_four_byte_lengths(just, 1).unwrap().len(), max / 4 * 4);
        let big = Bytes::from(vec![0u8; max + 1]);
        assert!(matches!(to_four_byte_lengths(big, 4), Err(NalError::TooLarge { .. })));
    }

    #[test]
    fn rewrites_two_byte_lengths() {
        let two = Bytes::from_static(&[0, 2, 0x65, 0xaa, 0, 1, 0x06]);
        let four = to_four_byte_lengths(two, 2).unwrap();
        assert_eq!(&four[..], &[0, 0, 0, 2, 0x65, 0xaa, 0, 0, 0, 1, 0x06]);
        let bad = Bytes::from_static(&[0, 9, 0x65]);
        assert!(matches!(to_four_byte_lengths(bad, 2), Err(NalError::NalOverrun { offset: 0, len: 9, remaining: 1 })));
    }
}
