//! Exact money: fares are read from their decimal text into whole cents, never through a
//! binary float, and written back with exactly two decimals.

/// The largest fare the contract accepts: 1,000,000.00.
pub const MAX_FARE_CENTS: i64 = 100_000_000;

/// Reads a fare written as a plain decimal (`12`, `12.5`, `12.50`, `0.07`) into cents.
///
/// Digits past the second decimal are accepted only when they are zeros (`12.500`), since
/// the value is then still exact to the cent. The error says what is wrong and what would be
/// accepted.
pub fn parse_fare(text: &str) -> Result<i64, String> {
    // Only an error shows the fare: a valid one is read without formatting anything.
    let shown = || shorten(text);
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !plain(int_part) || frac_part.is_some_and(|f| !plain(f)) {
        let numeric_with_exponent = body.bytes().any(|b| b.is_ascii_digit())
            && body.bytes().any(|b| b == b'e' || b == b'E')
            && body
                .bytes()
                .all(|b| b.is_ascii_digit() || b"eE.+-".contains(&b));
        let hint = if numeric_with_exponent {
            ": write it without an exponent, e.g. 1250.00"
        } else {
            ": expected a plain decimal such as 12.50"
        };
        return Err(format!("fare {} is not a decimal number{hint}", shown()));
    }
    let frac = frac_part.unwrap_or("");
    let (cents_digits, rest) = frac.split_at(frac.len().min(2));
    if rest.bytes().any(|b| b != b'0') {
        return Err(format!(
            "fare {} has {} decimals: at most 2 allowed",
            shown(),
            frac.len()
        ));
    }
    let too_big = || format!("fare {} is over the maximum of 1000000.00", shown());
    let mut units: i64 = 0;
    for b in int_part.bytes() {
        units = units
            .checked_mul(10)
            .and_then(|u| u.checked_add(i64::from(b - b'0')))
            .filter(|u| *u <= MAX_FARE_CENTS / 100)
            .ok_or_else(too_big)?;
    }
    let mut cents = 0i64;
    for (i, b) in cents_digits.bytes().enumerate() {
        cents += i64::from(b - b'0') * if i == 0 { 10 } else { 1 };
    }
    let total = units * 100 + cents;
    if total > MAX_FARE_CENTS {
        return Err(too_big());
    }
    if negative && total != 0 {
        return Err(format!(
            "fare {} is negative: fares must be 0 or more",
            shown()
        ));
    }
    Ok(total)
}

/// Formats cents with exactly two decimals: `1250` → `12.50`, `-5` → `-0.05`.
pub fn format_cents(cents: i64) -> String {
    let mut out = String::with_capacity(12);
    push_cents(&mut out, cents);
    out
}

/// Appends `cents` formatted like [`format_cents`] to `out`.
pub fn push_cents(out: &mut String, cents: i64) {
    use std::fmt::Write;
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    let _ = write!(out, "{sign}{}.{:02}", abs / 100, abs % 100);
}

/// JSON text as it was written, cut short if it is long, for an error message.
pub(crate) fn shorten_raw(text: &str) -> String {
    const MAX: usize = 40;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head}…")
    }
}

/// A value quoted for an error message, cut short if it is long.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 40;
    if text.chars().count() <= MAX {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head:?}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_decimals_exactly() {
        assert_eq!(parse_fare("0"), Ok(0));
        assert_eq!(parse_fare("7.0"), Ok(700));
        assert_eq!(parse_fare("12.5"), Ok(1250));
        assert_eq!(parse_fare("12.50"), Ok(1250));
        assert_eq!(parse_fare("12.500"), Ok(1250));
        assert_eq!(parse_fare("0.07"), Ok(7));
        assert_eq!(parse_fare("0.1"), Ok(10));
        assert_eq!(parse_fare("-0.00"), Ok(0));
        assert_eq!(parse_fare("1000000.00"), Ok(MAX_FARE_CENTS));
        assert_eq!(parse_fare("0000000000000000000000012.34"), Ok(1234));
    }

    #[test]
    fn rejects_with_a_reason() {
        let err = parse_fare("12.345").unwrap_err();
        assert!(err.contains("has 3 decimals: at most 2 allowed"), "{err}");
        assert!(parse_fare("-1.00").unwrap_err().contains("negative"));
        assert!(parse_fare("1000000.01").unwrap_err().contains("maximum"));
        assert!(
            parse_fare("99999999999999999999999")
                .unwrap_err()
                .contains("maximum")
        );
        assert!(parse_fare("1e2").unwrap_err().contains("exponent"));
        assert!(!parse_fare("twelve").unwrap_err().contains("exponent"));
        for bad in ["", ".", "1.", ".5", "+1", " 1", "1,5", "abc", "--1"] {
            assert!(parse_fare(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formats_two_decimals() {
        assert_eq!(format_cents(0), "0.00");
        assert_eq!(format_cents(5), "0.05");
        assert_eq!(format_cents(1250), "12.50");
        assert_eq!(format_cents(-5), "-0.05");
        assert_eq!(format_cents(MAX_FARE_CENTS), "1000000.00");
    }
}
