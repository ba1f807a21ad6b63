//! Opus packets (RFC 6716): how much audio one packet holds, from its TOC byte.

/// Longest audio an Opus packet may hold: 120 ms at 48 kHz (RFC 6716 3.2.5, rule R5).
pub const MAX_PACKET_SAMPLES: u32 = 5760;

/// The number of 48 kHz samples an Opus packet decodes to, from its TOC byte and, for code 3
/// packets, its frame count byte (RFC 6716 3.1 and 3.2.5). `None` for a packet that breaks
/// those rules (empty, no frame count, over 120 ms).
pub fn packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // 3.1, Table 2: frame sizes of the SILK-only, hybrid and CELT-only configurations.
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        // 3.2.5: the frame count M is the low 6 bits of the second byte, and is not 0.
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    let samples = frame * frames;
    (frames > 0 && samples <= MAX_PACKET_SAMPLES).then_some(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_from_the_toc() {
        // libopus's default: CELT-only fullband 20 ms (config 31), one frame.
        assert_eq!(packet_samples(&[0xf8, 0xff]), Some(960));
        // SILK-only narrowband 60 ms (config 3), two frames of equal size.
        assert_eq!(packet_samples(&[(3 << 3) | 1]), Some(5760));
        // Hybrid SWB 10 ms (config 12), code 3 with 3 frames.
        assert_eq!(packet_samples(&[(12 << 3) | 3, 3]), Some(1440));
        // CELT 2.5 ms (config 16), code 3 with 48 frames.
        assert_eq!(packet_samples(&[(16 << 3) | 3, 48]), Some(5760));
    }

    #[test]
    fn packets_breaking_the_rules_have_no_duration() {
        assert_eq!(packet_samples(&[]), None);
        // Code 3 without its frame count byte, with zero frames, and over 120 ms.
        assert_eq!(packet_samples(&[0xfb]), None);
        assert_eq!(packet_samples(&[0xfb, 0]), None);
        assert_eq!(packet_samples(&[(16 << 3) | 3, 49]), None);
        assert_eq!(packet_samples(&[(3 << 3) | 3, 3]), None);
    }
}
