//! Turning NYC TLC trip records into contract events.
//!
//! Each CSV row is one trip: the pickup becomes a `trip_start`, the dropoff and
//! `fare_amount` a `trip_end`. TLC times are naive New York wall-clock times; they are given
//! the offset in force at that moment. A time that does not exist (the hour skipped when DST
//! starts) is read with the offset in force just before the change, i.e. moved forward by the
//! gap, as `java.time` does; an ambiguous time takes the earlier (daylight) offset.
//!
//! The converter does not judge the data: a fare or time it cannot convert is passed through
//! as text, so the replay rejects it with a reason and keeps the original bytes.

use std::io::{Read, Write};

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, SecondsFormat, TimeZone};
use chrono_tz::Tz;

/// Why a conversion stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The CSV could not be read.
    #[error("CSV row {row}: {source}")]
    Csv {
        /// 1-based data row (the header is row 0).
        row: u64,
        /// The reader's error.
        source: csv::Error,
    },
    /// A required column is missing from the header.
    #[error("the header has no {0:?} column: is this a TLC yellow/green trip file?")]
    MissingColumn(&'static str),
    /// Writing the events failed.
    #[error("writing events: {0}")]
    Io(#[from] std::io::Error),
}

/// How many rows and events a conversion produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// CSV data rows read.
    pub rows: u64,
    /// Events written (two per row).
    pub events: u64,
}

const PICKUP: &str = "tpep_pickup_datetime";
const DROPOFF: &str = "tpep_dropoff_datetime";
const FARE: &str = "fare_amount";
/// Columns copied into both events as extra fields when present.
const CARRIED: [(&str, &str); 4] = [
    ("VendorID", "vendor_id"),
    ("color", "color"),
    ("PULocationID", "pu_location_id"),
    ("DOLocationID", "do_location_id"),
];

/// Converts TLC CSV from `input` into NDJSON events on `output`. Trip ids are
/// `<prefix>-<row>` with the 1-based data row number.
pub fn nyc_tlc(
    input: impl Read,
    mut output: impl Write,
    prefix: &str,
) -> Result<ConvertStats, ConvertError> {
    let tz = chrono_tz::America::New_York;
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(input);
    let headers = reader
        .headers()
        .map_err(|source| ConvertError::Csv { row: 0, source })?
        .clone();
    let col = |name: &'static str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or(ConvertError::MissingColumn(name))
    };
    let (pickup, dropoff, fare) = (col(PICKUP)?, col(DROPOFF)?, col(FARE)?);
    let carried: Vec<(usize, &str)> = CARRIED
        .iter()
        .filter_map(|(column, key)| headers.iter().position(|h| h == *column).map(|i| (i, *key)))
        .collect();

    let mut stats = ConvertStats::default();
    let mut record = csv::StringRecord::new();
    let mut line = String::with_capacity(256);
    loop {
        let row = stats.rows + 1;
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(source) => return Err(ConvertError::Csv { row, source }),
        }
        stats.rows = row;
        let trip_id = format!("{prefix}-{row:06}");
        let mut extras = String::new();
        for (i, key) in &carried {
            let value = record.get(*i).unwrap_or("");
            extras.push_str(&format!(",{}:{}", json_str(key), json_scalar(value)));
        }
        for (kind, time_col) in [("trip_start", pickup), ("trip_end", dropoff)] {
            line.clear();
            line.push_str(&format!(
                "{{\"trip_id\":{},\"event_type\":\"{kind}\",\"timestamp\":{}",
                json_str(&trip_id),
                json_str(&local_to_rfc3339(tz, record.get(time_col).unwrap_or("")))
            ));
            if kind == "trip_end" {
                line.push_str(",\"fare\":");
                line.push_str(&json_scalar(record.get(fare).unwrap_or("")));
            }
            line.push_str(&extras);
            line.push_str("}\n");
            output.write_all(line.as_bytes())?;
            stats.events += 1;
        }
    }
    output.flush()?;
    Ok(stats)
}

/// A naive `YYYY-MM-DD HH:MM:SS` local time in `tz` as RFC 3339 with its offset; text that is
/// not such a time is returned unchanged (the replay will reject it as `bad_timestamp`).
pub fn local_to_rfc3339(tz: Tz, text: &str) -> String {
    let Ok(naive) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") else {
        return text.to_owned();
    };
    let at: DateTime<Tz> = match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t,
        LocalResult::Ambiguous(earlier, _) => earlier,
        LocalResult::None => {
            let before = tz
                .offset_from_utc_datetime(&(naive - chrono::Duration::days(1)))
                .fix();
            let utc = naive - chrono::Duration::seconds(i64::from(before.local_minus_utc()));
            tz.from_utc_datetime(&utc)
        }
    };
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a str serialises")
}

/// A CSV cell as a JSON number when it is one, else as a JSON string.
fn json_scalar(cell: &str) -> String {
    let digits = cell.strip_prefix('-').unwrap_or(cell);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, "0"));
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let canonical_int = int == "0" || !int.starts_with('0');
    if numeric(int) && numeric(frac) && canonical_int {
        cell.to_owned()
    } else {
        json_str(cell)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_new_york_dst() {
        let ny = chrono_tz::America::New_York;
        assert_eq!(
            local_to_rfc3339(ny, "2019-03-10 01:30:00"),
            "2019-03-10T01:30:00-05:00"
        );
        assert_eq!(
            local_to_rfc3339(ny, "2019-03-10 03:30:00"),
            "2019-03-10T03:30:00-04:00"
        );
        // 02:30 does not exist that night: read as EST, i.e. 03:30 EDT.
        assert_eq!(
            local_to_rfc3339(ny, "2019-03-10 02:30:00"),
            "2019-03-10T03:30:00-04:00"
        );
        // 01:30 happens twice on 2019-11-03: the earlier, daylight one.
        assert_eq!(
            local_to_rfc3339(ny, "2019-11-03 01:30:00"),
            "2019-11-03T01:30:00-04:00"
        );
        assert_eq!(local_to_rfc3339(ny, "03/10/2019"), "03/10/2019");
    }

    #[test]
    fn converts_rows_to_event_pairs() {
        let csv = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,fare_amount,color\n\
                   1,2019-03-23 20:21:09,2019-03-23 20:27:24,7.0,yellow\n\
                   2,2019-03-04 16:11:55,2019-03-04 16:19:00,-5.0,green\n";
        let mut out = Vec::new();
        let stats = nyc_tlc(csv.as_bytes(), &mut out, "nyc").unwrap();
        assert_eq!(stats, ConvertStats { rows: 2, events: 4 });
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"trip_id":"nyc-000001","event_type":"trip_start","timestamp":"2019-03-23T20:21:09-04:00","vendor_id":1,"color":"yellow"}"#
        );
        assert_eq!(
            lines[3],
            r#"{"trip_id":"nyc-000002","event_type":"trip_end","timestamp":"2019-03-04T16:19:00-05:00","fare":-5.0,"vendor_id":2,"color":"green"}"#
        );
    }

    #[test]
    fn missing_columns_are_named() {
        let err = nyc_tlc("a,b\n1,2\n".as_bytes(), Vec::new(), "x").unwrap_err();
        assert!(err.to_string().contains("tpep_pickup_datetime"), "{err}");
    }
}
