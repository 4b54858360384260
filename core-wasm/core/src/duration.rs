//! Human durations for `--older-than`: `90s`, `45m`, `6h`, `2d`, `1w`, or sums like `1h30m`.

/// Nanoseconds in a duration such as `1h30m`; the error says what is accepted.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let help = || {
        format!(
            "invalid duration {text:?}: use a number with a unit s, m, h, d or w, e.g. 90m, 6h, 2d or 1h30m"
        )
    };
    let mut total: i64 = 0;
    let mut number: Option<i64> = None;
    for c in text.trim().chars() {
        if let Some(d) = c.to_digit(10) {
            let n = number
                .unwrap_or(0)
                .checked_mul(10)
                .and_then(|n| n.checked_add(i64::from(d)));
            number = Some(n.ok_or_else(help)?);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(help()),
        };
        let n = number.take().ok_or_else(help)?;
        total = n
            .checked_mul(unit * 1_000_000_000)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(help)?;
    }
    if number.is_some() || text.trim().is_empty() {
        return Err(help());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    const S: i64 = 1_000_000_000;

    #[test]
    fn units_and_sums() {
        assert_eq!(parse_duration("90s"), Ok(90 * S));
        assert_eq!(parse_duration("2h"), Ok(7_200 * S));
        assert_eq!(parse_duration("1h30m"), Ok(5_400 * S));
        assert_eq!(parse_duration("1w1d"), Ok(8 * 86_400 * S));
        for bad in ["", "10", "h", "5x", "-1h", "1.5h", "99999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
