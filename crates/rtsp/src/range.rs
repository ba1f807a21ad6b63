//! The playback headers of PLAY: `Range` (RFC 2326 12.29) in normal play time (3.6) or
//! absolute time (3.7), and `Scale` (12.34) / `Speed` (12.35), parsed and formatted.

use std::fmt::Write as _;

use thiserror::Error;

/// A Range header value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    /// `npt=START-[END]`: seconds from the beginning of the presentation (`now` starts at
    /// the live point, or where a paused session stands).
    Npt {
        /// None for `now`.
        start: Option<f64>,
        /// The end, when given.
        end: Option<f64>,
    },
    /// `clock=START-[END]`: UTC, in µs since the Unix epoch.
    Clock {
        /// The start.
        start_us: u64,
        /// The end, when given.
        end_us: Option<u64>,
    },
}

/// Why a header value was not understood (answered with 400: RFC 2326 keeps 457 for ranges
/// that parse but fall outside the presentation).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RangeError {
    /// Longer than any valid value.
    #[error("header value longer than {MAX_VALUE_LEN} bytes")]
    TooLong,
    /// Not a range of a unit we read (`smpte` is not supported).
    #[error("range unit not understood: {0:?}")]
    Unit(String),
    /// A time that does not parse.
    #[error("malformed time in {0:?}")]
    Time(String),
    /// A Scale or Speed that is not a finite non-zero number (or, for Speed, not positive).
    #[error("not a valid rate: {0:?}")]
    Rate(String),
}

/// Longest Range, Scale or Speed value read; valid ones are under 80 bytes.
pub const MAX_VALUE_LEN: usize = 256;

/// Largest npt time read, in seconds (about 31,700 years): keeps µs arithmetic in range.
const MAX_NPT_SECONDS: f64 = 1e12;

fn capped(value: &str) -> Result<&str, RangeError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(RangeError::TooLong);
    }
    Ok(value.trim())
}

impl Range {
    /// Parses a Range header value. Only its first range is read, and a `;time=` after it is
    /// ignored (we act on PLAY at once).
    pub fn parse(value: &str) -> Result<Range, RangeError> {
        let value = capped(value)?;
        let first = value.split(';').next().unwrap_or("").trim();
        let bad = || RangeError::Time(value.chars().take(64).collect());
        if let Some(spec) = first.strip_prefix("npt=") {
            let (a, b) = spec.split_once('-').ok_or_else(bad)?;
            let start = match a.trim() {
                "now" => None,
                "" => Some(0.0),
                t => Some(npt_seconds(t).ok_or_else(bad)?),
            };
            let end = match b.trim() {
                "" => None,
                t => Some(npt_seconds(t).ok_or_else(bad)?),
            };
            // An end before the start is a reverse range (ONVIF replay at a negative Scale):
            // the application decides.
            return Ok(Range::Npt { start, end });
        }
        if let Some(spec) = first.strip_prefix("clock=") {
            let (a, b) = spec.split_once('-').ok_or_else(bad)?;
            let start_us = clock_us(a.trim()).ok_or_else(bad)?;
            let end_us = match b.trim() {
                "" => None,
                t => Some(clock_us(t).ok_or_else(bad)?),
            };
            return Ok(Range::Clock { start_us, end_us });
        }
        Err(RangeError::Unit(first.split('=').next().unwrap_or("").chars().take(16).collect()))
    }
}

/// `npt=START-[END]` with millisecond precision.
pub fn format_npt(start_s: f64, end_s: Option<f64>) -> String {
    let mut s = format!("npt={start_s:.3}-");
    if let Some(e) = end_s {
        let _ = write!(s, "{e:.3}");
    }
    s
}

/// `clock=START-[END]` (`YYYYMMDDThhmmss.sssZ`).
pub fn format_clock(start_us: u64, end_us: Option<u64>) -> String {
    let mut s = format!("clock={}-", clock_text(start_us));
    if let Some(e) = end_us {
        s.push_str(&clock_text(e));
    }
    s
}

/// A Scale or Speed value: a finite non-zero number (Speed must be positive; the caller
/// checks).
pub fn parse_rate(value: &str) -> Result<f64, RangeError> {
    let v = capped(value)?;
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x != 0.0 => Ok(x),
        _ => Err(RangeError::Rate(v.chars().take(32).collect())),
    }
}

/// A rate as a header value: up to three decimals, no trailing zeros (`4`, `0.5`, `-2`).
pub fn format_rate(rate: f64) -> String {
    let s = format!("{rate:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

/// `12.5`, `0`, or `hh:mm:ss[.fraction]` (RFC 2326 3.6).
fn npt_seconds(t: &str) -> Option<f64> {
    let parts: Vec<&str> = t.split(':').collect();
    let number = |s: &str| -> Option<f64> {
        let ok = !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit() || c == b'.');
        ok.then(|| s.parse::<f64>().ok()).flatten()
    };
    let secs = match parts.as_slice() {
        [s] => number(s)?,
        [h, m, s] => {
            let (h, m, s) = (number(h)?, number(m)?, number(s)?);
            if m >= 60.0 || s >= 60.0 || h.fract() != 0.0 || m.fract() != 0.0 {
                return None;
            }
            h * 3600.0 + m * 60.0 + s
        }
        _ => return None,
    };
    (secs.is_finite() && secs <= MAX_NPT_SECONDS).then_some(secs)
}

/// `YYYYMMDDThhmmss[.fraction]Z` (RFC 2326 3.7, ISO 8601 basic format, UTC) in µs.
fn clock_us(t: &str) -> Option<u64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let (whole, frac) = time.split_once('.').unwrap_or((time, ""));
    let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    if date.len() != 8 || whole.len() != 6 || !digits(date) || !digits(whole) || !digits(frac) || frac.len() > 9 {
        return None;
    }
    let n = |s: &str| s.parse::<i64>().ok();
    let (y, mo, d) = (n(&date[0..4])?, n(&date[4..6])?, n(&date[6..8])?);
    let (h, mi, s) = (n(&whole[0..2])?, n(&whole[2..4])?, n(&whole[4..6])?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let micros = if frac.is_empty() { 0 } else { n(&format!("{frac:0<6}")[..6])? };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    u64::try_from(secs).ok()?.checked_mul(1_000_000)?.checked_add(micros as u64)
}

fn clock_text(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    format!("{y:04}{mo:02}{d:02}T{:02}{:02}{:02}.{:03}Z", r / 3600, r / 60 % 60, r % 60, us / 1000 % 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the civil-from-days algorithm,
/// inverted).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npt_ranges() {
        assert_eq!(Range::parse("npt=5-"), Ok(Range::Npt { start: Some(5.0), end: None }));
        assert_eq!(Range::parse("npt=0.000-30.5"), Ok(Range::Npt { start: Some(0.0), end: Some(30.5) }));
        assert_eq!(Range::parse("npt=now-"), Ok(Range::Npt { start: None, end: None }));
        assert_eq!(Range::parse("npt=-20"), Ok(Range::Npt { start: Some(0.0), end: Some(20.0) }));
        assert_eq!(Range::parse("npt=00:01:02.5-"), Ok(Range::Npt { start: Some(62.5), end: None }));
        assert_eq!(Range::parse(" npt=12-;time=19970123T143720Z"), Ok(Range::Npt { start: Some(12.0), end: None }));
        assert_eq!(Range::parse("npt=20-5"), Ok(Range::Npt { start: Some(20.0), end: Some(5.0) }), "reverse");
        for bad in ["npt=", "npt=x-", "npt=5-y", "npt=-1-", "npt=1e400-", "npt=00:61:00-", "npt=nan-", "npt=inf-"] {
            assert!(Range::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Range::parse("smpte=0:10:20-"), Err(RangeError::Unit("smpte".into())));
        assert_eq!(Range::parse(&"n".repeat(300)), Err(RangeError::TooLong));
        assert_eq!(format_npt(12.3456, None), "npt=12.346-");
        assert_eq!(format_npt(0.0, Some(30.1)), "npt=0.000-30.100");
    }

    #[test]
    fn clock_ranges_round_trip() {
        // 2026-11-25T10:00:00Z is 1,795,600,800 s after the epoch.
        let t = 1_795_600_800_000_000;
        assert_eq!(Range::parse("clock=20261125T100000Z-"), Ok(Range::Clock { start_us: t, end_us: None }));
        assert_eq!(
            Range::parse("clock=20261125T100000.25Z-20261125T100030Z"),
            Ok(Range::Clock { start_us: t + 250_000, end_us: Some(t + 30_000_000) })
        );
        assert_eq!(format_clock(t + 250_000, Some(t + 30_000_000)), "clock=20261125T100000.250Z-20261125T100030.000Z");
        for us in [0, t, t + 999_000, 951_782_400_000_000 /* 2000-02-29 */] {
            let text = format_clock(us, None);
            assert_eq!(Range::parse(&text), Ok(Range::Clock { start_us: us, end_us: None }), "{text}");
        }
        for bad in [
            "clock=20261125T100000-",
            "clock=2026112T100000Z-",
            "clock=20261325T100000Z-",
            "clock=20261125T250000Z-",
            "clock=20261125T100000.x Z-",
        ] {
            assert!(Range::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("4"), Ok(4.0));
        assert_eq!(parse_rate(" -2.0 "), Ok(-2.0));
        for bad in ["0", "x", "inf", "NaN", ""] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(format_rate(4.0), "4");
        assert_eq!(format_rate(0.5), "0.5");
        assert_eq!(format_rate(-2.0), "-2");
    }
}
