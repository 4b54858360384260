//! Realistic synthetic trip events for tests and benchmarks, reproducible from a seed.
//!
//! Trips start across March 2019 (UTC), last 2-60 minutes and cost a metered fare of
//! 2.50 + 2.50/mile. Timestamps and fares are written in every form the contract accepts
//! (RFC 3339 with `Z` or an offset, Unix seconds; numbers and strings), so the parser's every
//! path is exercised. Options add exact duplicates, shuffle the stream and mix in poison
//! records (one of each rejection reason in turn).

use std::io::{self, Write};

use crate::money::format_cents;
use crate::time::civil_from_days;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Number of trips (two events each).
    pub trips: u64,
    /// Seed of the deterministic generator.
    pub seed: u64,
    /// Probability that an event is emitted a second time, identically.
    pub duplicates: f64,
    /// Shuffle all events; otherwise they come in time order.
    pub shuffle: bool,
    /// Probability that a poison record is inserted after an event.
    pub poison: f64,
}

/// What was generated.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GenerateStats {
    /// Lines written.
    pub lines: u64,
    /// Exact duplicate lines among them.
    pub duplicates: u64,
    /// Poison lines among them.
    pub poison: u64,
}

/// SplitMix64: tiny, fast, and stable across versions (unlike a library RNG's stream).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// 2019-03-01T00:00:00Z in Unix seconds.
const MARCH_2019: i64 = 1_551_398_400;

const POISON: [&str; 7] = [
    r#"{"trip_id":"poison","event_type":"trip_start","#,
    r#"{"event_type":"trip_start","timestamp":0}"#,
    r#"{"trip_id":"poison","event_type":"trip_pause","timestamp":0}"#,
    r#"{"trip_id":"poison","event_type":"trip_end","timestamp":"31/03/2019 10:00"}"#,
    r#"{"trip_id":"poison","event_type":"trip_end","timestamp":0,"fare":"12.345"}"#,
    r#"{"trip_id":"","event_type":"trip_end","timestamp":0}"#,
    "not json at all",
];

/// Writes the events of `opts` as NDJSON to `out`.
pub fn generate(opts: &GenerateOptions, mut out: impl Write) -> io::Result<GenerateStats> {
    let mut rng = SplitMix64::new(opts.seed);
    let mut events: Vec<(i64, String)> = Vec::with_capacity(opts.trips as usize * 2);
    for i in 0..opts.trips {
        let start = MARCH_2019 + rng.below(31 * 86_400) as i64;
        let minutes = 2 + rng.below(58) as i64;
        let end = start + minutes * 60 + rng.below(60) as i64;
        let miles_hundredths = minutes * (8 + rng.below(30) as i64);
        let fare = 250 + miles_hundredths * 250 / 100;
        let id = format!("g{}-{i}", opts.seed);
        let extra = match rng.below(4) {
            0 => format!(r#","vendor_id":{}"#, 1 + rng.below(2)),
            1 => r#","meta":{"source":"generator","v":1}"#.to_owned(),
            _ => String::new(),
        };
        let start_fare = if rng.chance(0.1) {
            format!(r#","fare":{}"#, format_cents(fare))
        } else {
            String::new()
        };
        events.push((
            start,
            format!(
                r#"{{"trip_id":"{id}","event_type":"trip_start","timestamp":{}{start_fare}{extra}}}"#,
                timestamp(&mut rng, start)
            ),
        ));
        let fare_text = if rng.chance(0.5) {
            format_cents(fare)
        } else {
            format!("\"{}\"", format_cents(fare))
        };
        events.push((
            end,
            format!(
                r#"{{"trip_id":"{id}","event_type":"trip_end","timestamp":{},"fare":{fare_text}{extra}}}"#,
                timestamp(&mut rng, end)
            ),
        ));
    }
    if opts.shuffle {
        for i in (1..events.len()).rev() {
            events.swap(i, rng.below(i as u64 + 1) as usize);
        }
    } else {
        events.sort_by_key(|(t, _)| *t);
    }

    let mut stats = GenerateStats::default();
    let mut out = io::BufWriter::with_capacity(1 << 16, &mut out);
    let mut poison_kind = 0;
    for (_, line) in &events {
        writeln!(out, "{line}")?;
        stats.lines += 1;
        if rng.chance(opts.duplicates) {
            writeln!(out, "{line}")?;
            stats.lines += 1;
            stats.duplicates += 1;
        }
        if rng.chance(opts.poison) {
            writeln!(out, "{}", POISON[poison_kind % POISON.len()])?;
            poison_kind += 1;
            stats.lines += 1;
            stats.poison += 1;
        }
    }
    out.flush()?;
    Ok(stats)
}

/// One of the accepted spellings of an instant given in Unix seconds.
fn timestamp(rng: &mut SplitMix64, secs: i64) -> String {
    match rng.below(3) {
        0 => secs.to_string(),
        1 => format!("\"{}Z\"", civil(secs)),
        _ => format!("\"{}-04:00\"", civil(secs - 4 * 3600)),
    }
}

fn civil(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ParseOutcome, parse_record};

    #[test]
    fn same_seed_same_bytes_and_all_valid() {
        let opts = GenerateOptions {
            trips: 200,
            seed: 7,
            duplicates: 0.0,
            shuffle: true,
            poison: 0.0,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        generate(&opts, &mut a).unwrap();
        generate(&opts, &mut b).unwrap();
        assert_eq!(a, b);
        for line in a.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            assert!(
                matches!(parse_record(line), ParseOutcome::Accepted(_)),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn poison_is_rejected_and_counted() {
        let opts = GenerateOptions {
            trips: 100,
            seed: 1,
            duplicates: 0.2,
            shuffle: false,
            poison: 0.1,
        };
        let mut out = Vec::new();
        let stats = generate(&opts, &mut out).unwrap();
        let rejected = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter(|l| matches!(parse_record(l), ParseOutcome::Rejected(_)))
            .count() as u64;
        assert_eq!(rejected, stats.poison);
        assert!(stats.duplicates > 0 && stats.poison > 0);
        assert_eq!(stats.lines, 200 + stats.duplicates + stats.poison);
    }
}
