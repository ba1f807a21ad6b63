//! Playlist text (RFC 8216 section 4).

use std::fmt::Write;

use crate::segmenter::{Segmenter, Variant};

/// Formats Unix milliseconds as RFC 3339 (`2026-11-25T21:00:00.000Z`), the form of
/// EXT-X-PROGRAM-DATE-TIME (RFC 8216 4.3.2.6).
pub fn format_date_time(unix_ms: i64) -> String {
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s, ms) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

impl Segmenter {
    fn version(&self) -> u8 {
        match self.variant() {
            Variant::MpegTs => 3,
            // EXT-X-MAP with EXT-X-I-FRAMES-ONLY absent needs version 6; fMP4 needs 7.
            Variant::Fmp4 => 7,
        }
    }

    /// The media playlist, or `None` before the first segment.
    pub fn media_playlist(&self) -> Option<String> {
        let window = self.window();
        let first = window.first()?;
        let mut p = String::with_capacity(256 + window.len() * 96);
        let _ = writeln!(p, "#EXTM3U");
        let _ = writeln!(p, "#EXT-X-VERSION:{}", self.version());
        let _ = writeln!(p, "#EXT-X-TARGETDURATION:{}", self.target_duration_secs());
        let _ = writeln!(p, "#EXT-X-MEDIA-SEQUENCE:{}", first.sequence);
        let _ = writeln!(p, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", self.discontinuity_sequence());
        let mut map = None;
        for s in window {
            if s.discontinuity {
                let _ = writeln!(p, "#EXT-X-DISCONTINUITY");
            }
            if let Some(init) = &s.init_name
                && map != Some(init)
            {
                let _ = writeln!(p, "#EXT-X-MAP:URI=\"{init}\"");
                map = Some(init);
            }
            let _ = writeln!(p, "#EXT-X-PROGRAM-DATE-TIME:{}", format_date_time(s.wall_clock_ms));
            let _ = writeln!(p, "#EXTINF:{:.3},", s.duration_ms as f64 / 1000.0);
            let _ = writeln!(p, "{}", s.name);
        }
        if self.is_finished() {
            let _ = writeln!(p, "#EXT-X-ENDLIST");
        }
        Some(p)
    }

    /// The multivariant playlist (one variant: this stream), or `None` before the first
    /// segment.
    pub fn multivariant_playlist(&self, media_uri: &str) -> Option<String> {
        let window = self.window();
        window.first()?;
        let peak =
            window.iter().map(|s| (s.data.len() as u64 * 8 * 1000).div_ceil(s.duration_ms.max(1))).max().unwrap_or(0);
        let total: u64 = window.iter().map(|s| s.data.len() as u64 * 8).sum();
        let dur: u64 = window.iter().map(|s| s.duration_ms).sum();
        let average = (total * 1000).div_ceil(dur.max(1));
        let mut attrs = format!("BANDWIDTH={peak},AVERAGE-BANDWIDTH={average}");
        let codecs = self.codecs();
        if !codecs.is_empty() {
            let _ = write!(attrs, ",CODECS=\"{}\"", codecs.join(","));
        }
        if let Some((w, h)) = self.resolution() {
            let _ = write!(attrs, ",RESOLUTION={w}x{h}");
        }
        Some(format!(
            "#EXTM3U\n#EXT-X-VERSION:{}\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:{attrs}\n{media_uri}\n",
            self.version()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_date_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_date_time(1_795_640_400_123), "2026-11-25T21:00:00.123Z");
        assert_eq!(format_date_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
