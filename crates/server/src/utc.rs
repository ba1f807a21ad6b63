//! UTC times as the API and recordings write them: RFC 3339 with milliseconds and `Z`
//! (`2026-11-25T10:00:00.000Z`, DESIGN.md "API"), and the same with `-` for `:` in file names.
//! Times are µs since the Unix epoch; dates before 1970 or after 9999 are out of range.

/// The latest time accepted: 9999-12-31T23:59:59.999999Z.
const MAX_UNIX_MICROS: u64 = 253_402_300_799_999_999;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

fn parts(unix_micros: u64) -> (i64, u32, u32, u64, u64, u64, u64) {
    let secs = unix_micros.min(MAX_UNIX_MICROS) / 1_000_000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    (y, m, d, s / 3600, s / 60 % 60, s % 60, unix_micros.min(MAX_UNIX_MICROS) % 1_000_000 / 1000)
}

/// `2026-11-25T10:00:00.000Z`.
pub fn format(unix_micros: u64) -> String {
    let (y, mo, d, h, mi, s, ms) = parts(unix_micros);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// `2026-11-25T10-00-00.000Z`: [`format`] with no `:` (file names on every file system).
pub fn file_stem(unix_micros: u64) -> String {
    let (y, mo, d, h, mi, s, ms) = parts(unix_micros);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}-{mi:02}-{s:02}.{ms:03}Z")
}

/// Why a time did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an RFC 3339 time (like 2026-11-25T10:00:00.000Z): {0:?}")]
pub struct ParseError(String);

/// Parses RFC 3339 (`2026-11-25T10:00:00Z`, optional fraction, `Z` or `±hh:mm`), or a
/// [`file_stem`]; gives µs since the Unix epoch.
pub fn parse(text: &str) -> Result<u64, ParseError> {
    let err = || ParseError(text.chars().take(64).collect());
    let b = text.as_bytes();
    if b.len() < 20 || b.len() > 40 {
        return Err(err());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, ParseError> {
        let s = text.get(r).ok_or_else(err)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        s.parse().map_err(|_| err())
    };
    let time_sep = b[13];
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || !matches!(time_sep, b':' | b'-')
        || b[16] != time_sep
    {
        return Err(err());
    }
    let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return Err(err()),
    };
    if y < 1970 || d == 0 || d > days_in_month || h > 23 || mi > 59 || s > 60 {
        return Err(err());
    }
    let mut i = 19;
    let mut micros = 0u64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 6 {
                micros = micros * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return Err(err());
        }
        micros *= 10u64.pow(6u32.saturating_sub((i - start) as u32));
    }
    let offset_secs: i64 = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return Err(err());
            }
            let o = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' { o } else { -o }
        }
        _ => return Err(err()),
    };
    let secs = days_from_civil(i64::from(y), mo, d) * 86_400 + i64::from(h * 3600 + mi * 60 + s.min(59)) - offset_secs;
    let secs = u64::try_from(secs).map_err(|_| err())?;
    Ok(secs * 1_000_000 + micros)
}

/// A time from a URL's query string: `name=T`, percent-decoding the `:` and `+` clients
/// encode. A `+` of an offset that arrived as a space (a client that form-encodes) is an
/// error that says so, rather than a time off by the offset.
pub fn query_time(query: Option<&str>, name: &str) -> Result<Option<u64>, String> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != name {
            continue;
        }
        if v.len() > 64 {
            return Err(format!("{name}: too long"));
        }
        let v = percent_decode(v).ok_or_else(|| format!("{name}: bad percent-encoding"))?;
        if v.contains(' ') {
            return Err(format!("{name}: a space in the time (a '+' of its offset sent unencoded? send it as %2B)"));
        }
        return parse(&v).map(Some).map_err(|e| format!("{name}: {e}"));
    }
    Ok(None)
}

/// `%XX` decoded (a `+` stays a `+`: it is a time zone's sign here, not a space).
pub fn percent_decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_back() {
        assert_eq!(format(0), "1970-01-01T00:00:00.000Z");
        let t = 1_795_600_000_123_456; // 2026-11-25T...
        let s = format(t);
        assert_eq!(parse(&s), Ok(t / 1000 * 1000));
        assert_eq!(parse(&file_stem(t)), Ok(t / 1000 * 1000));
        assert_eq!(format(parse("2026-11-25T10:00:00.000Z").unwrap()), "2026-11-25T10:00:00.000Z");
        assert_eq!(file_stem(parse("2026-11-25T10:00:00.5Z").unwrap()), "2026-11-25T10-00-00.500Z");
        assert_eq!(parse("2024-02-29T23:59:59.999999Z").map(format), Ok("2024-02-29T23:59:59.999Z".into()));
        assert_eq!(parse("2026-11-25T12:00:00+02:00"), parse("2026-11-25T10:00:00Z"));
        assert_eq!(parse("2026-11-25T08:30:00-01:30"), parse("2026-11-25T10:00:00Z"));
        // Every day of a few centuries round-trips.
        for day in (0..150_000).step_by(7) {
            let t = day * 86_400_000_000 + 3_723_004_000;
            assert_eq!(parse(&format(t)), Ok(t), "{}", format(t));
        }
        assert_eq!(format(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            "",
            "2026-11-25",
            "2026-11-25T10:00:00",
            "2026-13-25T10:00:00Z",
            "2026-02-29T10:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T10:00:00.Z",
            "1969-12-31T23:59:59Z",
            "2026-11-25T10:00:00+2:00",
            "2026-11-25T10:00-00Z",
            "+026-11-25T10:00:00Z",
            "2026-11-25T10:00:00.0000000000000000000000000Z",
            "２０２６-11-25T10:00:00Z",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
