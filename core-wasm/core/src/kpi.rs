//! Daily fare KPIs: exact to the cent, bucketed by the local date of each trip's start.
//!
//! Aggregation is incremental and mergeable: hosts keep a short list of [`DayTotals`] and pass
//! it back with each batch of trips, so a KPI job can stream any number of trips through the
//! core without the core holding state between calls.

use std::collections::BTreeMap;

use chrono::{DateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use crate::money::push_cents;
use crate::time::{NANOS_PER_SEC, format_date, parse_date};
use crate::types::{DayKpi, DayTotals, KpiError, TripFare, TripStatus};

/// The CSV header line, without its line ending.
pub const CSV_HEADER: &str = "date,trip_count,total_fare,average_fare,min_fare,max_fare";

/// A checked IANA time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zone(Tz);

impl Zone {
    /// Looks a zone up by its IANA name (`UTC`, `America/New_York`).
    pub fn new(name: &str) -> Result<Zone, KpiError> {
        name.parse::<Tz>().map(Zone).map_err(|_| {
            KpiError::UnknownTimeZone(format!(
                "unknown time zone {name:?}: use an IANA name such as UTC or America/New_York"
            ))
        })
    }

    /// The local calendar day (days since 1970-01-01) of an instant.
    pub fn day_of(self, timestamp_ns: i64) -> i64 {
        let secs = timestamp_ns.div_euclid(NANOS_PER_SEC);
        let offset = match self.0 {
            Tz::UTC | Tz::Etc__UTC => 0,
            tz => DateTime::<Utc>::from_timestamp(secs, 0)
                .map(|t| {
                    i64::from(
                        tz.offset_from_utc_datetime(&t.naive_utc())
                            .fix()
                            .local_minus_utc(),
                    )
                })
                .unwrap_or(0),
        };
        (secs + offset).div_euclid(86_400)
    }
}

/// The KPI day (`YYYY-MM-DD`) of an instant in `zone`.
pub fn day_of(zone: &str, timestamp_ns: i64) -> Result<String, KpiError> {
    Ok(format_date(Zone::new(zone)?.day_of(timestamp_ns)))
}

/// The UTC date (`YYYY-MM-DD`) of an instant.
pub fn utc_day(timestamp_ns: i64) -> String {
    format_date(timestamp_ns.div_euclid(NANOS_PER_DAY))
}

/// The UTC dates (`YYYY-MM-DD`, sorted, distinct) of the starts of the trips among `trips` that
/// count in the KPIs: the days whose KPIs a newly completed trip changes, recorded so that the
/// next KPI run republishes them however late the trip completed. UTC, so that the record does
/// not depend on the KPI time zone, which may change.
pub fn utc_days_touched(trips: &[TripFare]) -> Vec<String> {
    let mut days: Vec<i64> = trips
        .iter()
        .filter(|t| t.status == TripStatus::Completed && t.fare_cents.is_some())
        .map(|t| t.start_ns.div_euclid(NANOS_PER_DAY))
        .collect();
    days.sort_unstable();
    days.dedup();
    days.into_iter().map(format_date).collect()
}

/// The local dates in `zone` (sorted, distinct) that overlap the given UTC dates: the KPI days a
/// run must recompute when trips that start on those UTC dates changed. One UTC date overlaps
/// one or two local dates.
pub fn local_days(zone: &str, utc_days: &[String]) -> Result<Vec<String>, KpiError> {
    let zone = Zone::new(zone)?;
    let mut days = Vec::with_capacity(utc_days.len() * 2);
    for d in utc_days {
        let day = parse_date(d).ok_or_else(|| bad_date(d))?;
        let first = day.checked_mul(NANOS_PER_DAY).ok_or_else(|| bad_date(d))?;
        let last = first
            .checked_add(NANOS_PER_DAY - 1)
            .ok_or_else(|| bad_date(d))?;
        // Local offsets are within ±1 day, so local dates between the two ends are contiguous.
        for local in zone.day_of(first)..=zone.day_of(last) {
            days.push(local);
        }
    }
    days.sort_unstable();
    days.dedup();
    Ok(days.into_iter().map(format_date).collect())
}

const NANOS_PER_DAY: i64 = 86_400 * NANOS_PER_SEC;

/// Running totals of one day, keyed by day number while the core works on them.
#[derive(Clone, Copy, Debug)]
struct Totals {
    count: u64,
    total: i64,
    min: i64,
    max: i64,
}

impl Totals {
    fn of(t: &DayTotals) -> Totals {
        Totals {
            count: t.trip_count,
            total: t.total_cents,
            min: t.min_cents,
            max: t.max_cents,
        }
    }

    fn one(fare: i64) -> Totals {
        Totals {
            count: 1,
            total: fare,
            min: fare,
            max: fare,
        }
    }
}

/// Running totals by day number.
#[derive(Default)]
struct Days(BTreeMap<i64, Totals>);

impl Days {
    /// Reads totals kept by a host.
    fn read(&mut self, totals: &[DayTotals]) -> Result<(), KpiError> {
        for t in totals {
            let day = parse_date(&t.date).ok_or_else(|| bad_date(&t.date))?;
            self.add(day, Totals::of(t))?;
        }
        Ok(())
    }

    /// Adds `more` to the day's totals: counts and sums add (an overflow is an error), minimum
    /// and maximum fold.
    fn add(&mut self, day: i64, more: Totals) -> Result<(), KpiError> {
        let Some(sum) = self.0.get_mut(&day) else {
            self.0.insert(day, more);
            return Ok(());
        };
        let overflow = || {
            KpiError::Overflow(format!(
                "total fare of {} exceeds 64-bit cents",
                format_date(day)
            ))
        };
        sum.count = sum.count.checked_add(more.count).ok_or_else(overflow)?;
        sum.total = sum.total.checked_add(more.total).ok_or_else(overflow)?;
        sum.min = sum.min.min(more.min);
        sum.max = sum.max.max(more.max);
        Ok(())
    }

    fn into_totals(self) -> Vec<DayTotals> {
        self.0
            .into_iter()
            .map(|(day, t)| DayTotals {
                date: format_date(day),
                trip_count: t.count,
                total_cents: t.total,
                min_cents: t.min,
                max_cents: t.max,
            })
            .collect()
    }
}

/// Adds the completed trips among `trips` to `totals`; returns the new totals sorted by date.
pub fn accumulate(
    zone: &str,
    totals: &[DayTotals],
    trips: &[TripFare],
) -> Result<Vec<DayTotals>, KpiError> {
    let zone = Zone::new(zone)?;
    let mut days = Days::default();
    days.read(totals)?;
    for trip in trips {
        let (TripStatus::Completed, Some(fare)) = (trip.status, trip.fare_cents) else {
            continue;
        };
        days.add(zone.day_of(trip.start_ns), Totals::one(fare))?;
    }
    Ok(days.into_totals())
}

/// Merges two lists of running totals (each from [`accumulate`], computed over disjoint sets of
/// trips) into the totals of both sets, sorted by date: how a distributed KPI job combines what
/// its partitions accumulated. Counts and sums add, minimum and maximum take the smaller and the
/// larger, so the result equals accumulating every trip in one list, in any order.
pub fn merge(a: &[DayTotals], b: &[DayTotals]) -> Result<Vec<DayTotals>, KpiError> {
    let mut days = Days::default();
    days.read(a)?;
    days.read(b)?;
    Ok(days.into_totals())
}

/// Final rows for the days in `[from, to]` (inclusive; `None` leaves that end open), by date.
pub fn finish(
    totals: &[DayTotals],
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<DayKpi>, KpiError> {
    let bound = |d: Option<&str>| {
        d.map(|s| parse_date(s).ok_or_else(|| bad_date(s)))
            .transpose()
    };
    let (lo, hi) = (bound(from)?, bound(to)?);
    if let (Some(lo), Some(hi)) = (lo, hi)
        && lo > hi
    {
        return Err(KpiError::BadDate(format!(
            "the range is empty: {} is after {}",
            format_date(lo),
            format_date(hi)
        )));
    }
    let mut rows = Vec::with_capacity(totals.len());
    for t in totals {
        let day = parse_date(&t.date).ok_or_else(|| bad_date(&t.date))?;
        if lo.is_some_and(|lo| day < lo) || hi.is_some_and(|hi| day > hi) || t.trip_count == 0 {
            continue;
        }
        rows.push(DayKpi {
            date: t.date.clone(),
            trip_count: t.trip_count,
            total_cents: t.total_cents,
            average_cents: average_half_even(t.total_cents, t.trip_count),
            min_cents: t.min_cents,
            max_cents: t.max_cents,
        });
    }
    rows.sort_by(|a, b| a.date.cmp(&b.date));
    Ok(rows)
}

/// `total / count` rounded half-to-even to a whole cent.
pub fn average_half_even(total: i64, count: u64) -> i64 {
    let (total, count) = (i128::from(total), i128::from(count));
    let q = total.div_euclid(count);
    let r = total.rem_euclid(count);
    let rounded = match (2 * r).cmp(&count) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    };
    rounded as i64
}

/// The KPI CSV for `rows`, in their order.
pub fn render_csv(rows: &[DayKpi]) -> String {
    let mut out = String::with_capacity(CSV_HEADER.len() + 1 + rows.len() * 64);
    out.push_str(CSV_HEADER);
    out.push('\n');
    for r in rows {
        out.push_str(&r.date);
        out.push(',');
        out.push_str(&r.trip_count.to_string());
        for cents in [r.total_cents, r.average_cents, r.min_cents, r.max_cents] {
            out.push(',');
            push_cents(&mut out, cents);
        }
        out.push('\n');
    }
    out
}

fn bad_date(s: &str) -> KpiError {
    KpiError::BadDate(format!("bad date {s:?}: use YYYY-MM-DD, e.g. 2019-03-10"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;

    fn fare(start: &str, cents: i64) -> TripFare {
        TripFare {
            status: TripStatus::Completed,
            start_ns: parse_rfc3339(start).unwrap(),
            fare_cents: Some(cents),
        }
    }

    #[test]
    fn merging_partials_equals_accumulating_everything() {
        let trips = [
            fare("2019-03-01T10:00:00Z", 250),
            fare("2019-03-01T23:59:59Z", 1_000),
            fare("2019-03-02T00:00:00Z", 75),
            fare("2019-03-01T05:00:00Z", 100),
        ];
        let whole = accumulate("UTC", &[], &trips).unwrap();
        let (left, right) = trips.split_at(2);
        let a = accumulate("UTC", &[], left).unwrap();
        let b = accumulate("UTC", &[], right).unwrap();
        assert_eq!(merge(&a, &b).unwrap(), whole);
        assert_eq!(merge(&b, &a).unwrap(), whole);
        assert_eq!(merge(&whole, &[]).unwrap(), whole);
        let mut big = whole.clone();
        big[0].total_cents = i64::MAX;
        assert!(matches!(merge(&big, &whole), Err(KpiError::Overflow(_))));
    }

    #[test]
    fn touched_days_are_utc_start_dates_of_counted_trips() {
        let mut invalid = fare("2019-03-05T12:00:00Z", 100);
        invalid.status = TripStatus::Invalid;
        let trips = [
            fare("2019-03-02T23:30:00-05:00", 100), // 2019-03-03 in UTC
            fare("2019-03-01T00:00:00Z", 100),
            fare("2019-03-03T01:00:00Z", 100),
            invalid,
        ];
        assert_eq!(utc_days_touched(&trips), ["2019-03-01", "2019-03-03"]);
        assert!(utc_days_touched(&[]).is_empty());
    }

    #[test]
    fn a_utc_day_overlaps_one_or_two_local_days() {
        let days = |zone: &str, utc: &[&str]| {
            let utc: Vec<String> = utc.iter().map(|d| (*d).to_owned()).collect();
            local_days(zone, &utc).unwrap()
        };
        assert_eq!(
            days("UTC", &["2019-03-03", "2019-03-01"]),
            ["2019-03-01", "2019-03-03"]
        );
        assert_eq!(
            days("America/New_York", &["2019-03-03"]),
            ["2019-03-02", "2019-03-03"]
        );
        assert_eq!(
            days("Asia/Tokyo", &["2019-03-03", "2019-03-04"]),
            ["2019-03-03", "2019-03-04", "2019-03-05"]
        );
        assert!(local_days("Mars/Olympus", &[]).is_err());
        assert!(local_days("UTC", &["2019-3-1".to_owned()]).is_err());
    }

    #[test]
    fn half_even() {
        assert_eq!(average_half_even(5, 2), 2); // 2.5 -> 2
        assert_eq!(average_half_even(7, 2), 4); // 3.5 -> 4
        assert_eq!(average_half_even(10, 3), 3);
        assert_eq!(average_half_even(11, 3), 4);
        assert_eq!(average_half_even(0, 1), 0);
    }

    #[test]
    fn days_follow_the_zone_across_dst() {
        let ny = Zone::new("America/New_York").unwrap();
        // 2019-03-10 01:59:59 EST and 03:00:00 EDT are one second apart, same local day.
        let before = parse_rfc3339("2019-03-10T06:59:59Z").unwrap();
        let after = parse_rfc3339("2019-03-10T07:00:00Z").unwrap();
        assert_eq!(format_date(ny.day_of(before)), "2019-03-10");
        assert_eq!(format_date(ny.day_of(after)), "2019-03-10");
        // 23:30 EDT on the 10th is 03:30 UTC on the 11th.
        let late = parse_rfc3339("2019-03-11T03:30:00Z").unwrap();
        assert_eq!(format_date(ny.day_of(late)), "2019-03-10");
        assert_eq!(day_of("UTC", late).unwrap(), "2019-03-11");
        assert!(matches!(
            Zone::new("Mars/Olympus"),
            Err(KpiError::UnknownTimeZone(_))
        ));
    }

    #[test]
    fn totals_merge_and_render() {
        let a = accumulate("UTC", &[], &[fare("2019-03-01T10:00:00Z", 250)]).unwrap();
        let mut skipped = fare("2019-03-01T11:00:00Z", 999_999);
        skipped.status = TripStatus::Invalid;
        let b = accumulate(
            "UTC",
            &a,
            &[
                fare("2019-03-01T11:00:00Z", 0),
                fare("2019-02-28T23:59:59Z", 101),
                skipped,
            ],
        )
        .unwrap();
        let rows = finish(&b, None, None).unwrap();
        assert_eq!(
            render_csv(&rows),
            "date,trip_count,total_fare,average_fare,min_fare,max_fare\n\
             2019-02-28,1,1.01,1.01,1.01,1.01\n\
             2019-03-01,2,2.50,1.25,0.00,2.50\n"
        );
        let only = finish(&b, Some("2019-03-01"), Some("2019-03-01")).unwrap();
        assert_eq!(only.len(), 1);
        assert!(finish(&b, Some("2019-03-02"), Some("2019-03-01")).is_err());
        assert!(finish(&b, Some("03/01/2019"), None).is_err());
        assert_eq!(render_csv(&[]), format!("{CSV_HEADER}\n"));
    }
}
