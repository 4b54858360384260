//! Instants and calendar dates without a clock: strict RFC 3339 parsing into nanoseconds and
//! proleptic Gregorian date arithmetic.

/// Nanoseconds per second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Reads an RFC 3339 timestamp with a mandatory offset (`Z` or `±HH:MM`) into nanoseconds
/// since the Unix epoch. Fractional seconds of any length are kept to the nanosecond (digits
/// past the ninth must be zeros).
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    // Only an error shows the text: a valid timestamp is read without formatting anything.
    let shown = || crate::money::shorten(s);
    let bad = |what: &str| {
        format!(
            "{} is not RFC 3339 ({what}): use e.g. 2019-03-10T03:05:00-04:00 or Unix seconds",
            shown()
        )
    };
    let layout = "expected YYYY-MM-DDTHH:MM:SS followed by Z or ±HH:MM";
    if b.len() < 19 {
        return Err(bad(layout));
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = &b[range];
        part.iter().all(u8::is_ascii_digit).then(|| {
            part.iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |i: usize, c: u8| b[i] == c;
    if !(sep(4, b'-')
        && sep(7, b'-')
        && (b[10] == b'T' || b[10] == b't')
        && sep(13, b':')
        && sep(16, b':'))
    {
        return Err(bad(layout));
    }
    let (Some(year), Some(month), Some(day), Some(hour), Some(min), Some(sec)) = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    ) else {
        return Err(bad("non-digit in date or time"));
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month as u32) {
        return Err(bad("no such date"));
    }
    if hour > 23 || min > 59 || sec > 59 {
        return Err(bad("no such time of day; leap seconds are not accepted"));
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
            } else if b[i] != b'0' {
                return Err(bad("more precise than a nanosecond"));
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return Err(bad("no digits after the decimal point"));
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_secs = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(bad("bad offset"));
            }
            let oh = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let om = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if oh > 23 || om > 59 {
                return Err(bad("bad offset"));
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'-' { -o } else { o }
        }
        [] => return Err(bad("missing offset: add Z or ±HH:MM")),
        _ => return Err(bad("bad offset: use Z or ±HH:MM")),
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    secs_to_nanos(secs)
        .and_then(|n| n.checked_add(nanos))
        .ok_or_else(|| {
            format!(
                "{} is outside the supported range 1677-09-22 to 2262-04-11",
                shown()
            )
        })
}

/// Formats nanoseconds since the epoch as RFC 3339 in UTC (`2019-03-10T07:05:00Z`, with a
/// fraction only when there is one).
pub fn format_rfc3339_utc(ns: i64) -> String {
    let secs = ns.div_euclid(NANOS_PER_SEC);
    let nanos = ns.rem_euclid(NANOS_PER_SEC);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let mut out = format!(
        "{}T{:02}:{:02}:{:02}",
        format_date(days),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Converts whole Unix seconds to nanoseconds, if representable.
pub fn secs_to_nanos(secs: i64) -> Option<i64> {
    secs.checked_mul(NANOS_PER_SEC)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Number of days in a month of a proleptic Gregorian year.
pub fn days_in_month(year: i64, month: u32) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Formats a day count as `YYYY-MM-DD`.
pub fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Reads a strict `YYYY-MM-DD` date into days since 1970-01-01.
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m as u32) {
        return None;
    }
    Some(days_from_civil(y, m as u32, d as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for days in [-719_468, -1, 0, 1, 17_955, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(17_965), "2019-03-10");
        assert_eq!(parse_date("2019-03-10"), Some(17_965));
        assert_eq!(parse_date("2019-02-29"), None);
        assert_eq!(parse_date("2020-02-29"), Some(18_321));
        assert_eq!(parse_date("2019-3-10"), None);
    }

    #[test]
    fn rfc3339_offsets_agree() {
        let z = parse_rfc3339("2019-03-10T07:05:00Z").unwrap();
        assert_eq!(z, 1_552_201_500 * NANOS_PER_SEC);
        assert_eq!(parse_rfc3339("2019-03-10T03:05:00-04:00").unwrap(), z);
        assert_eq!(parse_rfc3339("2019-03-10t12:35:00+05:30").unwrap(), z);
        assert_eq!(
            parse_rfc3339("2019-03-10T07:05:00.5Z").unwrap(),
            z + 500_000_000
        );
        assert_eq!(
            parse_rfc3339("2019-03-10T07:05:00.123456789Z").unwrap(),
            z + 123_456_789
        );
        assert_eq!(
            parse_rfc3339("2019-03-10T07:05:00.1234567890Z").unwrap(),
            z + 123_456_789
        );
        assert_eq!(format_rfc3339_utc(z), "2019-03-10T07:05:00Z");
        assert_eq!(
            format_rfc3339_utc(z + 500_000_000),
            "2019-03-10T07:05:00.5Z"
        );
        assert_eq!(format_rfc3339_utc(-1), "1969-12-31T23:59:59.999999999Z");
        let missing = parse_rfc3339("2019-03-10T07:05:00").unwrap_err();
        assert!(missing.contains("missing offset"), "{missing}");
    }

    #[test]
    fn rfc3339_rejects_what_it_should() {
        for bad in [
            "2019-03-10 07:05:00Z",
            "2019-03-10T07:05:00",
            "2019-03-10T07:05Z",
            "2019-02-29T07:05:00Z",
            "2019-03-10T24:00:00Z",
            "2019-03-10T23:59:60Z",
            "2019-03-10T07:05:00.Z",
            "2019-03-10T07:05:00+0500",
            "2019-03-10T07:05:00.1234567891Z",
            "9999-12-31T23:59:59Z",
            "２019-03-10T07:05:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad} should be rejected");
        }
    }
}
