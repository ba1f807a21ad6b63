//! H.265 parameter sets (ITU-T H.265 7.3.2.2) and the HEVCDecoderConfigurationRecord
//! (ISO/IEC 14496-15 8.3.3).

use bytes::Bytes;

use crate::ParamError;
use crate::bits::{BitReader, EndOfData, rbsp};
use crate::check::{Checked, ConfigError, Dropped, check_size};

/// NAL unit types we look at (Table 7-1).
pub mod nal {
    /// First IRAP type (BLA_W_LP); 16..=23 are random access points.
    pub const IRAP_FIRST: u8 = 16;
    /// Last IRAP type (reserved IRAP 23).
    pub const IRAP_LAST: u8 = 23;
    /// Video parameter set.
    pub const VPS: u8 = 32;
    /// Sequence parameter set.
    pub const SPS: u8 = 33;
    /// Picture parameter set.
    pub const PPS: u8 = 34;
    /// Access unit delimiter.
    pub const AUD: u8 = 35;
}

/// The NAL unit type of an H.265 NAL unit.
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| (b >> 1) & 0x3f)
}

/// What the decoder configuration record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HevcConfig {
    /// The 12 bytes of general profile, tier and level (hvcC bytes 1..13).
    pub general_ptl: [u8; 12],
    /// Video parameter sets.
    pub vps: Vec<Bytes>,
    /// Sequence parameter sets.
    pub sps: Vec<Bytes>,
    /// Picture parameter sets.
    pub pps: Vec<Bytes>,
}

impl HevcConfig {
    /// Parses an hvcC record.
    pub fn parse(d: &Bytes) -> Result<HevcConfig, ParamError> {
        if d.len() < 23 {
            return Err(ParamError::Truncated("hvcC"));
        }
        let mut general_ptl = [0u8; 12];
        general_ptl.copy_from_slice(&d[1..13]);
        let mut cfg = HevcConfig { general_ptl, vps: vec![], sps: vec![], pps: vec![] };
        let mut pos = 23;
        for _ in 0..d[22] {
            let h = d.get(pos..pos + 3).ok_or(ParamError::Truncated("hvcC"))?;
            let (t, n) = (h[0] & 0x3f, u16::from_be_bytes([h[1], h[2]]));
            pos += 3;
            for _ in 0..n {
                let l = d.get(pos..pos + 2).ok_or(ParamError::Truncated("hvcC"))?;
                let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
                pos += 2;
                if d.len() < pos + len {
                    return Err(ParamError::Truncated("hvcC"));
                }
                let unit = d.slice(pos..pos + len);
                pos += len;
                match t {
                    nal::VPS => cfg.vps.push(unit),
                    nal::SPS => cfg.sps.push(unit),
                    nal::PPS => cfg.pps.push(unit),
                    _ => {}
                }
            }
        }
        Ok(cfg)
    }

    /// The RFC 6381 codec string (ISO/IEC 14496-15 E.3), e.g. `hvc1.1.6.L60.90`.
    pub fn codec_string(&self) -> String {
        let p = &self.general_ptl;
        let space = ["", "A", "B", "C"][usize::from(p[0] >> 6)];
        let tier = if p[0] & 0x20 != 0 { 'H' } else { 'L' };
        let profile = p[0] & 0x1f;
        let compat = u32::from_be_bytes([p[1], p[2], p[3], p[4]]).reverse_bits();
        let mut s = format!("hvc1.{space}{profile}.{compat:X}.{tier}{}", p[11]);
        let constraints = &p[5..11];
        let keep = constraints.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        for b in &constraints[..keep] {
            s.push_str(&format!(".{b:02X}"));
        }
        s
    }
}

/// Why a NAL unit in an hvcC array of `array_type` is unusable, if it is (ISO/IEC 14496-15
/// 8.3.3.1.2: each `nalUnit` is a NAL unit of the type its array declares, with the 2-byte
/// header of H.265 7.3.1.2; parameter sets have at least their id after it).
pub fn entry_problem(array_type: u8, n: &[u8]) -> Option<&'static str> {
    if n.is_empty() {
        return Some("empty NAL unit");
    }
    if n.len() < 2 {
        return Some("shorter than the NAL unit header");
    }
    if n[0] & 0x80 != 0 {
        return Some("forbidden_zero_bit set");
    }
    if nal_type(n) != array_type {
        return Some("NAL unit type differs from its array's");
    }
    if (nal::VPS..=nal::PPS).contains(&array_type) && n.len() < 3 {
        return Some("no parameter set id");
    }
    None
}

/// Checks an HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1): bad entries are
/// dropped (and arrays left empty with them), the record rebuilt without them; a record that
/// is truncated, too large, or has no usable VPS, SPS or PPS left is refused.
pub fn check_hvcc(d: &Bytes) -> Result<Checked<Bytes>, ConfigError> {
    const WHAT: &str = "hvcC";
    check_size(WHAT, d)?;
    let truncated = |offset| ConfigError::Truncated { what: WHAT, offset };
    // 8.3.3.1.1: 22 bytes of fixed fields, then numOfArrays.
    let arrays = *d.get(22).ok_or(truncated(d.len()))?;
    let mut pos = 23;
    let mut dropped = Vec::new();
    let mut kept: Vec<(u8, Vec<Bytes>)> = Vec::new();
    let mut found = [false; 3];
    for _ in 0..arrays {
        let h = d.get(pos..pos + 3).ok_or(truncated(pos))?;
        let (head, t, n) = (h[0], h[0] & 0x3f, u16::from_be_bytes([h[1], h[2]]));
        pos += 3;
        let mut units = Vec::new();
        for index in 0..usize::from(n) {
            let l = d.get(pos..pos + 2).ok_or(truncated(pos))?;
            let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
            let unit = d.get(pos + 2..pos + 2 + len).ok_or(truncated(pos))?;
            let what = match t {
                nal::VPS => "VPS",
                nal::SPS => "SPS",
                nal::PPS => "PPS",
                _ => "NAL unit",
            };
            match entry_problem(t, unit) {
                Some(why) => dropped.push(Dropped { what, index, why }),
                None => units.push(d.slice(pos + 2..pos + 2 + len)),
            }
            pos += 2 + len;
        }
        if (nal::VPS..=nal::PPS).contains(&t) && !units.is_empty() {
            found[usize::from(t - nal::VPS)] = true;
        }
        if !units.is_empty() {
            kept.push((head, units));
        }
    }
    for (i, missing) in ["VPS", "SPS", "PPS"].into_iter().enumerate() {
        if !found[i] {
            return Err(ConfigError::Missing { what: WHAT, missing });
        }
    }
    if dropped.is_empty() {
        return Ok(Checked { value: d.clone(), dropped });
    }
    let mut out = d[..22].to_vec();
    out.push(kept.len() as u8);
    for (head, units) in &kept {
        out.push(*head);
        out.extend_from_slice(&(units.len() as u16).to_be_bytes());
        for u in units {
            out.extend_from_slice(&(u.len() as u16).to_be_bytes());
            out.extend_from_slice(u);
        }
    }
    out.extend_from_slice(&d[pos..]);
    Ok(Checked { value: Bytes::from(out), dropped })
}

/// What ferrocast reads from an SPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    /// Luma width after the conformance window.
    pub width: u32,
    /// Luma height after the conformance window.
    pub height: u32,
    /// `chroma_format_idc`.
    pub chroma_format_idc: u32,
    /// `bit_depth_luma_minus8`.
    pub bit_depth_luma_minus8: u32,
    /// `bit_depth_chroma_minus8`.
    pub bit_depth_chroma_minus8: u32,
}

/// Parses an SPS NAL unit (with its 2-byte header).
pub fn parse_sps(sps: &[u8]) -> Result<SpsInfo, ParamError> {
    parse_sps_rbsp(&rbsp(sps.get(2..).unwrap_or_default())).map_err(|_| ParamError::Truncated("SPS"))
}

fn parse_sps_rbsp(d: &[u8]) -> Result<SpsInfo, EndOfData> {
    let mut r = BitReader::new(d);
    r.skip(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = r.bits(3)? as usize;
    r.skip(1)?; // sps_temporal_id_nesting_flag
    // profile_tier_level(1, max_sub_layers_minus1), 7.3.3
    r.skip(96)?;
    let mut present = [(false, false); 8];
    for p in present.iter_mut().take(max_sub_layers_minus1) {
        *p = (r.bit()?, r.bit()?);
    }
    if max_sub_layers_minus1 > 0 {
        r.skip(2 * (8 - max_sub_layers_minus1))?;
    }
    for (profile, level) in present.iter().take(max_sub_layers_minus1) {
        if *profile {
            r.skip(88)?;
        }
        if *level {
            r.skip(8)?;
        }
    }
    r.ue()?; // sps_seq_parameter_set_id
    let chroma_format_idc = r.ue()?;
    if chroma_format_idc == 3 {
        r.bit()?;
    }
    let mut width = r.ue()?;
    let mut height = r.ue()?;
    if r.bit()? {
        let (sub_w, sub_h) = match chroma_format_idc {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        // In u64: a hostile SPS can code any 32-bit value in these fields.
        let (l, rr, t, b) = (u64::from(r.ue()?), u64::from(r.ue()?), u64::from(r.ue()?), u64::from(r.ue()?));
        width = u64::from(width).saturating_sub(sub_w * (l + rr)) as u32;
        height = u64::from(height).saturating_sub(sub_h * (t + b)) as u32;
    }
    let bit_depth_luma_minus8 = r.ue()?;
    let bit_depth_chroma_minus8 = r.ue()?;
    Ok(SpsInfo { width, height, chroma_format_idc, bit_depth_luma_minus8, bit_depth_chroma_minus8 })
}

/// Builds an hvcC record (4-byte NAL lengths) from parameter sets.
pub fn build_hvcc(vps: &[Bytes], sps: &[Bytes], pps: &[Bytes]) -> Result<Bytes, ParamError> {
    // Units a record cannot hold (over 16 bits of length) are left out; the fields come from
    // the first SPS that parses, so one bad unit does not hide good ones: [`check_hvcc`]
    // then drops the bad ones, with a warning.
    let fits = |v: &[Bytes]| -> Vec<Bytes> {
        v.iter().filter(|u| u.len() <= usize::from(u16::MAX)).take(usize::from(u16::MAX)).cloned().collect()
    };
    let (vps, sps, pps) = (fits(vps), fits(sps), fits(pps));
    let (vps, sps, pps) = (&vps[..], &sps[..], &pps[..]);
    if sps.is_empty() {
        return Err(ParamError::Missing("SPS"));
    }
    let (first, info) =
        sps.iter().find_map(|s| parse_sps(s).ok().map(|i| (s, i))).ok_or(ParamError::Truncated("SPS"))?;
    let body = rbsp(&first[2..]);
    let ptl = body.get(1..13).ok_or(ParamError::Truncated("SPS"))?;
    let mut out = vec![1];
    out.extend_from_slice(ptl);
    out.extend_from_slice(&[
        0xf0,
        0x00, // min_spatial_segmentation_idc
        0xfc, // parallelismType
        0xfc | (info.chroma_format_idc as u8 & 3),
        0xf8 | (info.bit_depth_luma_minus8 as u8 & 7),
        0xf8 | (info.bit_depth_chroma_minus8 as u8 & 7),
        0,
        0,    // avgFrameRate
        0x0f, // constantFrameRate 0, numTemporalLayers 1, temporalIdNested 1, lengthSizeMinusOne 3
    ]);
    let arrays = [(nal::VPS, vps), (nal::SPS, sps), (nal::PPS, pps)];
    out.push(arrays.iter().filter(|(_, v)| !v.is_empty()).count() as u8);
    for (t, units) in arrays {
        if units.is_empty() {
            continue;
        }
        out.push(0x80 | t);
        out.extend_from_slice(&(units.len() as u16).to_be_bytes());
        for u in units {
            out.extend_from_slice(&(u.len() as u16).to_be_bytes());
            out.extend_from_slice(u);
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        Bytes::from((0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<_>>())
    }

    /// Parameter sets of `ffmpeg -f lavfi -i testsrc2=size=320x240 -c:v libx265` (x265 3.5).
    fn x265_320x240() -> (Bytes, Bytes, Bytes) {
        (
            hex("40010c01ffff01600000030090000003000003003c959809"),
            hex("42010101600000030090000003000003003ca00a080f165959a4932bc05a020000030002000003003c10"),
            hex("4401c172b46240"),
        )
    }

    /// An hvcC with the fixed fields of the x265 record and these arrays, as received.
    fn raw_hvcc(arrays: &[(u8, &[&[u8]])]) -> Bytes {
        let (vps, sps, pps) = x265_320x240();
        let good = build_hvcc(&[vps], &[sps], &[pps]).unwrap();
        let mut out = good[..22].to_vec();
        out.push(arrays.len() as u8);
        for (t, units) in arrays {
            out.push(0x80 | t);
            out.extend_from_slice(&(units.len() as u16).to_be_bytes());
            for u in *units {
                out.extend_from_slice(&(u.len() as u16).to_be_bytes());
                out.extend_from_slice(u);
            }
        }
        Bytes::from(out)
    }

    #[test]
    fn good_hvcc_passes_unchanged() {
        let (vps, sps, pps) = x265_320x240();
        let hvcc = build_hvcc(&[vps], &[sps], &[pps]).unwrap();
        let c = check_hvcc(&hvcc).unwrap();
        assert!(c.dropped.is_empty());
        assert_eq!(c.value, hvcc);
    }

    #[test]
    fn bad_hvcc_entries_are_dropped() {
        let (vps, sps, pps) = x265_320x240();
        let hvcc = raw_hvcc(&[
            (nal::VPS, &[&[], &vps]),
            (nal::SPS, &[&[0x42], &pps, &sps]),
            (nal::PPS, &[&[0xc4, 0x01, 0xc1], &[0x44, 0x01], &pps]),
            (39, &[&[]]),
        ]);
        let c = check_hvcc(&hvcc).unwrap();
        let why: Vec<_> = c.dropped.iter().map(|d| (d.what, d.index, d.why)).collect();
        assert_eq!(
            why,
            [
                ("VPS", 0, "empty NAL unit"),
                ("SPS", 0, "shorter than the NAL unit header"),
                ("SPS", 1, "NAL unit type differs from its array's"),
                ("PPS", 0, "forbidden_zero_bit set"),
                ("PPS", 1, "no parameter set id"),
                ("NAL unit", 0, "empty NAL unit"),
            ]
        );
        assert_eq!(c.value, raw_hvcc(&[(nal::VPS, &[&vps]), (nal::SPS, &[&sps]), (nal::PPS, &[&pps])]));
        let cfg = HevcConfig::parse(&c.value).unwrap();
        assert_eq!((cfg.vps, cfg.sps, cfg.pps), (vec![vps], vec![sps], vec![pps]));
    }

    #[test]
    fn hvcc_with_nothing_usable_is_refused() {
        let (vps, sps, pps) = x265_320x240();
        let missing = |m| Err(ConfigError::Missing { what: "hvcC", missing: m });
        assert_eq!(check_hvcc(&raw_hvcc(&[(nal::SPS, &[&sps]), (nal::PPS, &[&pps])])), missing("VPS"));
        assert_eq!(
            check_hvcc(&raw_hvcc(&[(nal::VPS, &[&vps]), (nal::SPS, &[&[]]), (nal::PPS, &[&pps])])),
            missing("SPS")
        );
        assert_eq!(check_hvcc(&raw_hvcc(&[(nal::VPS, &[&vps]), (nal::SPS, &[&sps])])), missing("PPS"));
    }

    #[test]
    fn truncated_hvcc_is_refused() {
        let (vps, sps, pps) = x265_320x240();
        let hvcc = build_hvcc(&[vps], &[sps], &[pps]).unwrap();
        for cut in [0, 22, 24, 27, hvcc.len() - 1] {
            assert!(
                matches!(check_hvcc(&hvcc.slice(..cut)), Err(ConfigError::Truncated { what: "hvcC", .. })),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn build_hvcc_skips_an_sps_that_does_not_parse() {
        let (vps, sps, pps) = x265_320x240();
        let bad = Bytes::from_static(&[0x42, 0x01]);
        let hvcc =
            build_hvcc(std::slice::from_ref(&vps), &[bad.clone(), sps.clone()], std::slice::from_ref(&pps)).unwrap();
        let c = check_hvcc(&hvcc).unwrap();
        assert_eq!(c.dropped.len(), 1);
        assert_eq!(HevcConfig::parse(&c.value).unwrap().sps, vec![sps]);
        assert_eq!(build_hvcc(&[vps], &[bad], &[pps]), Err(ParamError::Truncated("SPS")));
    }

    #[test]
    fn hvcc_too_large() {
        let mut big = vec![0u8; crate::check::MAX_CONFIG_SIZE + 1];
        big[0] = 1;
        assert!(matches!(check_hvcc(&Bytes::from(big)), Err(ConfigError::TooLarge { what: "hvcC", .. })));
    }

    /// The x265 SPS with its conformance window offsets recoded as 32-bit values.
    #[test]
    fn sps_with_huge_conformance_window_does_not_overflow() {
        let (_, sps, _) = x265_320x240();
        let body = rbsp(&sps[2..]);
        // Up to conformance_window_flag of the x265 SPS: 4+3+1 bits, 96 of
        // profile_tier_level, ue 0 (id), ue 1 (chroma 4:2:0), ue 320, ue 240; then the flag set.
        let mut bits: String = body.iter().map(|b| format!("{b:08b}")).collect();
        let head = 8 + 96 + 1 + 3 + 17 + 15;
        let huge = format!("{}1{}", "0".repeat(31), "1".repeat(31));
        bits.truncate(head);
        bits.push('1'); // conformance_window_flag
        for _ in 0..4 {
            bits.push_str(&huge);
        }
        bits.push_str("11"); // bit depths
        while !bits.len().is_multiple_of(8) {
            bits.push('0');
        }
        let mut nal = sps[..2].to_vec();
        nal.extend((0..bits.len()).step_by(8).map(|i| u8::from_str_radix(&bits[i..i + 8], 2).unwrap()));
        let info = parse_sps(&nal).unwrap();
        assert_eq!((info.width, info.height), (0, 0));
    }

    #[test]
    fn x265_sps_and_record() {
        let (vps, sps, pps) = x265_320x240();
        let info = parse_sps(&sps).unwrap();
        assert_eq!((info.width, info.height, info.chroma_format_idc), (320, 240, 1));
        let hvcc =
            build_hvcc(std::slice::from_ref(&vps), std::slice::from_ref(&sps), std::slice::from_ref(&pps)).unwrap();
        assert_eq!(crate::avc::nal_length_size(crate::VideoCodec::H265, &hvcc), Ok(4));
        let cfg = HevcConfig::parse(&hvcc).unwrap();
        assert_eq!((&cfg.vps, &cfg.sps, &cfg.pps), (&vec![vps], &vec![sps], &vec![pps]));
        assert_eq!(cfg.codec_string(), "hvc1.1.6.L60.90");
        assert!(HevcConfig::parse(&hvcc.slice(..30)).is_err());
    }
}
