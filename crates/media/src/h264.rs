//! H.264 parameter sets (ITU-T H.264 7.3.2.1) and the AVCDecoderConfigurationRecord
//! (ISO/IEC 14496-15 5.3.3).

use bytes::Bytes;

use crate::ParamError;
use crate::bits::{BitReader, EndOfData, rbsp};

/// NAL unit types we look at (Table 7-1).
pub mod nal {
    /// Coded slice of an IDR picture.
    pub const IDR: u8 = 5;
    /// Supplemental enhancement information.
    pub const SEI: u8 = 6;
    /// Sequence parameter set.
    pub const SPS: u8 = 7;
    /// Picture parameter set.
    pub const PPS: u8 = 8;
    /// Access unit delimiter.
    pub const AUD: u8 = 9;
}

/// What the decoder configuration record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    /// `AVCProfileIndication`, compatibility and `AVCLevelIndication`: the RFC 6381 codec
    /// string digits.
    pub profile_compat_level: [u8; 3],
    /// Sequence parameter sets.
    pub sps: Vec<Bytes>,
    /// Picture parameter sets.
    pub pps: Vec<Bytes>,
}

fn take<'a>(d: &'a Bytes, pos: &mut usize, n: usize) -> Result<&'a [u8], ParamError> {
    let s = d.get(*pos..*pos + n).ok_or(ParamError::Truncated("avcC"))?;
    *pos += n;
    Ok(s)
}

impl AvcConfig {
    /// Parses an avcC record.
    pub fn parse(d: &Bytes) -> Result<AvcConfig, ParamError> {
        let mut pos = 0;
        let head = take(d, &mut pos, 6)?;
        let profile_compat_level = [head[1], head[2], head[3]];
        let sets = |count: usize, pos: &mut usize| -> Result<Vec<Bytes>, ParamError> {
            let mut v = Vec::new();
            for _ in 0..count {
                let l = take(d, pos, 2)?;
                let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
                let start = *pos;
                take(d, pos, len)?;
                v.push(d.slice(start..start + len));
            }
            Ok(v)
        };
        let sps = sets(usize::from(head[5] & 0x1f), &mut pos)?;
        let n_pps = take(d, &mut pos, 1)?[0];
        let pps = sets(usize::from(n_pps), &mut pos)?;
        Ok(AvcConfig { profile_compat_level, sps, pps })
    }

    /// The RFC 6381 codec string, e.g. `avc1.64001f`.
    pub fn codec_string(&self) -> String {
        let [p, c, l] = self.profile_compat_level;
        format!("avc1.{p:02x}{c:02x}{l:02x}")
    }
}

/// Builds an avcC record from SPS and PPS NAL units (4-byte NAL lengths).
pub fn build_avcc(sps: &[Bytes], pps: &[Bytes]) -> Result<Bytes, ParamError> {
    let first = sps.first().ok_or(ParamError::Missing("SPS"))?;
    if first.len() < 4 {
        return Err(ParamError::Truncated("SPS"));
    }
    let mut out = vec![1, first[1], first[2], first[3], 0xff, 0xe0 | sps.len().min(31) as u8];
    for s in sps.iter().take(31) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    out.push(pps.len().min(255) as u8);
    for p in pps.iter().take(255) {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
    Ok(Bytes::from(out))
}

/// Picture size from a sequence parameter set NAL unit (with its header byte).
pub fn sps_dimensions(sps: &[u8]) -> Result<(u32, u32), ParamError> {
    parse_sps(&rbsp(sps.get(1..).unwrap_or_default())).map_err(|_| ParamError::Truncated("SPS"))
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), EndOfData> {
    let (mut last, mut next) = (8i32, 8i32);
    for _ in 0..size {
        if next != 0 {
            let delta = r.se()?;
            next = (last + delta + 256) % 256;
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

fn parse_sps(d: &[u8]) -> Result<(u32, u32), EndOfData> {
    let mut r = BitReader::new(d);
    let profile_idc = r.bits(8)?;
    r.skip(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    if [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135].contains(&profile_idc) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bit()?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? {
            for i in 0..if chroma_format_idc == 3 { 12 } else { 8 } {
                if r.bit()? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            for _ in 0..n.min(255) {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let w_mbs = r.ue()? + 1;
    let h_units = r.ue()? + 1;
    let frame_mbs_only = r.bit()?;
    if !frame_mbs_only {
        r.bit()?;
    }
    r.bit()?; // direct_8x8_inference_flag
    let (mut cl, mut cr, mut ct, mut cb) = (0, 0, 0, 0);
    if r.bit()? {
        cl = r.ue()?;
        cr = r.ue()?;
        ct = r.ue()?;
        cb = r.ue()?;
    }
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let (sub_w, sub_h) = match chroma_format_idc {
        0 => (1, 1),
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let crop_x = if chroma_format_idc == 0 { 1 } else { sub_w };
    let crop_y = (if chroma_format_idc == 0 { 1 } else { sub_h }) * field_factor;
    let width = (w_mbs * 16).saturating_sub((cl + cr) * crop_x);
    let height = (h_units * 16 * field_factor).saturating_sub((ct + cb) * crop_y);
    Ok((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPS of `ffmpeg -f lavfi -i testsrc2=size=320x240 -c:v libx264 -profile:v high`.
    const X264_320X240_HIGH: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00,
        0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60,
    ];

    #[test]
    fn x264_high_profile_dimensions() {
        assert_eq!(sps_dimensions(X264_320X240_HIGH), Ok((320, 240)));
    }

    #[test]
    fn avcc_round_trip_and_codec_string() {
        let sps = Bytes::from_static(X264_320X240_HIGH);
        let pps = Bytes::from_static(&[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0]);
        let avcc = build_avcc(std::slice::from_ref(&sps), std::slice::from_ref(&pps)).unwrap();
        let cfg = AvcConfig::parse(&avcc).unwrap();
        assert_eq!(cfg.sps, vec![sps]);
        assert_eq!(cfg.pps, vec![pps]);
        assert_eq!(cfg.codec_string(), "avc1.64000d");
        assert!(AvcConfig::parse(&avcc.slice(..avcc.len() - 2)).is_err());
    }
}
