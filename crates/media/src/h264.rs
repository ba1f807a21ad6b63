//! H.264 parameter sets (ITU-T H.264 7.3.2.1) and the AVCDecoderConfigurationRecord
//! (ISO/IEC 14496-15 5.3.3).

use bytes::Bytes;

use crate::ParamError;
use crate::bits::{BitReader, EndOfData, rbsp};
use crate::check::{Checked, ConfigError, Dropped, check_size};

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

/// Why an SPS NAL unit is unusable, if it is: ISO/IEC 14496-15 5.3.3.1.2 has
/// `sequenceParameterSetNALUnit` hold an SPS NAL unit of H.264 7.3.2.1.1, whose first three
/// bytes after the header (profile, constraint flags, level) readers copy into codec strings.
pub fn sps_problem(nal: &[u8]) -> Option<&'static str> {
    nal_problem(nal, nal::SPS, 4, "not an SPS NAL unit", "shorter than profile and level")
}

/// Why a PPS NAL unit is unusable, if it is (5.3.3.1.2 `pictureParameterSetNALUnit`,
/// H.264 7.3.2.2: at least the byte that holds `pic_parameter_set_id`).
pub fn pps_problem(nal: &[u8]) -> Option<&'static str> {
    nal_problem(nal, nal::PPS, 2, "not a PPS NAL unit", "no pic_parameter_set_id")
}

fn nal_problem(n: &[u8], kind: u8, min: usize, wrong: &'static str, short: &'static str) -> Option<&'static str> {
    match n.first() {
        None => Some("empty NAL unit"),
        Some(h) if h & 0x80 != 0 => Some("forbidden_zero_bit set"),
        Some(h) if h & 0x1f != kind => Some(wrong),
        Some(_) if n.len() < min => Some(short),
        Some(_) => None,
    }
}

/// Checks an AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1): bad SPS and PPS
/// entries are dropped (the record is rebuilt without them, anything after the PPS array
/// kept as received); a record that is truncated, too large, or has no usable SPS or PPS
/// left is refused.
pub fn check_avcc(d: &Bytes) -> Result<Checked<Bytes>, ConfigError> {
    const WHAT: &str = "avcC";
    check_size(WHAT, d)?;
    let truncated = |offset| ConfigError::Truncated { what: WHAT, offset };
    if d.len() < 6 {
        return Err(truncated(d.len()));
    }
    let mut pos = 6;
    let mut dropped = Vec::new();
    let mut array = |count: usize, pos: &mut usize, what: &'static str, problem: fn(&[u8]) -> Option<&'static str>| {
        let mut kept = Vec::new();
        for index in 0..count {
            let l = d.get(*pos..*pos + 2).ok_or(truncated(*pos))?;
            let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
            let unit = d.get(*pos + 2..*pos + 2 + len).ok_or(truncated(*pos))?;
            match problem(unit) {
                Some(why) => dropped.push(Dropped { what, index, why }),
                None => kept.push(d.slice(*pos + 2..*pos + 2 + len)),
            }
            *pos += 2 + len;
        }
        Ok::<_, ConfigError>(kept)
    };
    // 5.3.3.1.1: numOfSequenceParameterSets is 5 bits, numOfPictureParameterSets 8.
    let sps = array(usize::from(d[5] & 0x1f), &mut pos, "SPS", sps_problem)?;
    let n_pps = *d.get(pos).ok_or(truncated(pos))?;
    pos += 1;
    let pps = array(usize::from(n_pps), &mut pos, "PPS", pps_problem)?;
    if sps.is_empty() {
        return Err(ConfigError::Missing { what: WHAT, missing: "SPS" });
    }
    if pps.is_empty() {
        return Err(ConfigError::Missing { what: WHAT, missing: "PPS" });
    }
    if dropped.is_empty() {
        return Ok(Checked { value: d.clone(), dropped });
    }
    let mut out = d[..5].to_vec();
    out.push(0xe0 | sps.len() as u8);
    for s in &sps {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    out.push(pps.len() as u8);
    for p in &pps {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&d[pos..]);
    Ok(Checked { value: Bytes::from(out), dropped })
}

/// Builds an avcC record from SPS and PPS NAL units (4-byte NAL lengths). Units a record
/// cannot hold (over 16 bits of length, past 31 SPS or 255 PPS) are left out; the profile
/// comes from the first SPS long enough to have one, so one bad unit from an SDP or the
/// stream does not hide good ones: [`check_avcc`] then drops the bad ones, with a warning.
pub fn build_avcc(sps: &[Bytes], pps: &[Bytes]) -> Result<Bytes, ParamError> {
    let fits = |s: &&Bytes| s.len() <= usize::from(u16::MAX);
    let sps: Vec<&Bytes> = sps.iter().filter(fits).take(31).collect();
    let pps: Vec<&Bytes> = pps.iter().filter(fits).take(255).collect();
    if sps.is_empty() {
        return Err(ParamError::Missing("SPS"));
    }
    let first = sps.iter().find(|s| s.len() >= 4).ok_or(ParamError::Truncated("SPS"))?;
    let mut out = vec![1, first[1], first[2], first[3], 0xff, 0xe0 | sps.len() as u8];
    for s in &sps {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    out.push(pps.len() as u8);
    for p in &pps {
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
            // 7.4.2.1.1: delta_scale is in -128..=127; a larger one must not overflow.
            let delta = i64::from(r.se()?);
            next = (i64::from(last) + delta + 256).rem_euclid(256) as i32;
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
    // In u64: a hostile SPS can code any 32-bit value in these fields.
    let (w_mbs, h_units) = (u64::from(w_mbs), u64::from(h_units));
    let (cl, cr, ct, cb) = (u64::from(cl), u64::from(cr), u64::from(ct), u64::from(cb));
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
    Ok((u32::try_from(width).unwrap_or(u32::MAX), u32::try_from(height).unwrap_or(u32::MAX)))
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

    const PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];

    /// An avcC with these SPS and PPS entries, as received (no checks).
    fn raw_avcc(sps: &[&[u8]], pps: &[&[u8]], tail: &[u8]) -> Bytes {
        let mut out = vec![1, 0x64, 0, 0x0d, 0xff, 0xe0 | sps.len() as u8];
        for s in sps {
            out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            out.extend_from_slice(s);
        }
        out.push(pps.len() as u8);
        for p in pps {
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(p);
        }
        out.extend_from_slice(tail);
        Bytes::from(out)
    }

    #[test]
    fn good_avcc_passes_unchanged() {
        let avcc = raw_avcc(&[X264_320X240_HIGH], &[PPS], &[0xfd, 0xf8, 0xf8, 0]);
        let c = check_avcc(&avcc).unwrap();
        assert!(c.dropped.is_empty());
        assert_eq!(c.value.as_ptr(), avcc.as_ptr(), "no copy when nothing is dropped");
    }

    /// Issue 14: an RTMP publisher's record with a zero-length SPS entry, then the real SPS.
    #[test]
    fn zero_length_sps_entry_is_dropped() {
        let avcc = raw_avcc(&[&[], X264_320X240_HIGH], &[PPS], &[0xfd, 0xf8, 0xf8, 0]);
        let c = check_avcc(&avcc).unwrap();
        assert_eq!(c.dropped, vec![Dropped { what: "SPS", index: 0, why: "empty NAL unit" }]);
        assert_eq!(c.value, raw_avcc(&[X264_320X240_HIGH], &[PPS], &[0xfd, 0xf8, 0xf8, 0]));
        let cfg = AvcConfig::parse(&c.value).unwrap();
        assert_eq!(cfg.sps, vec![Bytes::from_static(X264_320X240_HIGH)]);
    }

    #[test]
    fn bad_entries_of_each_kind_are_dropped() {
        let avcc = raw_avcc(
            &[&[0x67, 0x64], &[0xe7, 0x64, 0, 0x0d], PPS, X264_320X240_HIGH],
            &[&[0x68], X264_320X240_HIGH, PPS],
            &[],
        );
        let c = check_avcc(&avcc).unwrap();
        let why: Vec<_> = c.dropped.iter().map(|d| (d.what, d.index, d.why)).collect();
        assert_eq!(
            why,
            [
                ("SPS", 0, "shorter than profile and level"),
                ("SPS", 1, "forbidden_zero_bit set"),
                ("SPS", 2, "not an SPS NAL unit"),
                ("PPS", 0, "no pic_parameter_set_id"),
                ("PPS", 1, "not a PPS NAL unit"),
            ]
        );
        assert_eq!(c.value, raw_avcc(&[X264_320X240_HIGH], &[PPS], &[]));
    }

    #[test]
    fn avcc_with_nothing_usable_is_refused() {
        let missing = |m| Err(ConfigError::Missing { what: "avcC", missing: m });
        assert_eq!(check_avcc(&raw_avcc(&[&[]], &[PPS], &[])), missing("SPS"));
        assert_eq!(check_avcc(&raw_avcc(&[X264_320X240_HIGH], &[&[]], &[])), missing("PPS"));
        assert_eq!(check_avcc(&raw_avcc(&[], &[], &[])), missing("SPS"));
    }

    #[test]
    fn truncated_avcc_is_refused() {
        let avcc = raw_avcc(&[X264_320X240_HIGH], &[PPS], &[]);
        for cut in [0, 5, 7, 20, avcc.len() - 7, avcc.len() - 1] {
            assert!(
                matches!(check_avcc(&avcc.slice(..cut)), Err(ConfigError::Truncated { what: "avcC", .. })),
                "cut at {cut}"
            );
        }
    }

    /// An SDP `sprop-parameter-sets` whose first SPS is cut short: the good one still makes
    /// the record, and the check drops the bad one.
    #[test]
    fn build_avcc_skips_a_short_first_sps() {
        let sps = [Bytes::from_static(&[0x67, 0x42]), Bytes::from_static(X264_320X240_HIGH)];
        let avcc = build_avcc(&sps, &[Bytes::from_static(PPS)]).unwrap();
        assert_eq!(avcc[1..4], X264_320X240_HIGH[1..4]);
        let c = check_avcc(&avcc).unwrap();
        assert_eq!(c.dropped.len(), 1);
        assert_eq!(AvcConfig::parse(&c.value).unwrap().sps, vec![Bytes::from_static(X264_320X240_HIGH)]);
        let huge = Bytes::from(vec![0x67; 70_000]);
        let avcc = build_avcc(&[huge, sps[1].clone()], &[Bytes::from_static(PPS)]).unwrap();
        assert_eq!(AvcConfig::parse(&avcc).unwrap().sps.len(), 1, "a unit over 16 bits is left out");
        assert_eq!(build_avcc(&[sps[0].clone()], &[]), Err(ParamError::Truncated("SPS")));
    }

    #[test]
    fn avcc_too_large() {
        let mut big = raw_avcc(&[X264_320X240_HIGH], &[PPS], &[]).to_vec();
        big.resize(crate::check::MAX_CONFIG_SIZE + 1, 0);
        assert!(matches!(check_avcc(&Bytes::from(big)), Err(ConfigError::TooLarge { what: "avcC", .. })));
    }

    /// A baseline SPS whose picture size and cropping fields code 32-bit values.
    #[test]
    fn sps_with_huge_fields_does_not_overflow() {
        let mut bits = String::from("01000010000000000001111011"); // profile 66, level 30, ue 0, ue 0
        bits.push_str("011"); // pic_order_cnt_type 2
        bits.push('1'); // max_num_ref_frames 0
        bits.push('0'); // gaps
        let huge = format!("{}1{}", "0".repeat(31), "1".repeat(31)); // ue = 2^32 - 2
        bits.push_str(&huge); // pic_width_in_mbs_minus1
        bits.push_str(&huge); // pic_height_in_map_units_minus1
        bits.push('0'); // frame_mbs_only_flag 0
        bits.push('0'); // mb_adaptive_frame_field_flag
        bits.push('1'); // direct_8x8_inference_flag
        bits.push('1'); // frame_cropping_flag
        for _ in 0..4 {
            bits.push_str(&huge);
        }
        bits.push('1');
        while !bits.len().is_multiple_of(8) {
            bits.push('0');
        }
        let mut sps = vec![0x67];
        sps.extend((0..bits.len()).step_by(8).map(|i| u8::from_str_radix(&bits[i..i + 8], 2).unwrap()));
        assert_eq!(sps_dimensions(&sps), Ok((0, 0)));
    }

    #[test]
    fn scaling_list_with_huge_delta_does_not_overflow() {
        // High profile, chroma 1, depths 0, no bypass, scaling matrix present, list 0 present,
        // delta_scale of 2^31 - 1.
        let mut bits = String::from("011001000000000000011110"); // profile 100, level 30
        bits.push('1'); // seq_parameter_set_id 0
        bits.push_str("010"); // chroma_format_idc 1
        bits.push_str("11"); // bit depths 0, 0
        bits.push('0'); // qpprime bypass
        bits.push('1'); // seq_scaling_matrix_present_flag
        bits.push('1'); // list 0 present
        bits.push_str(&format!("{}1{}0", "0".repeat(31), "1".repeat(30))); // ue 2^32 - 3: se 2^31 - 1
        while !bits.len().is_multiple_of(8) {
            bits.push('0');
        }
        let mut sps = vec![0x67];
        sps.extend((0..bits.len()).step_by(8).map(|i| u8::from_str_radix(&bits[i..i + 8], 2).unwrap()));
        assert!(sps_dimensions(&sps).is_err(), "runs out of data, without overflowing");
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
