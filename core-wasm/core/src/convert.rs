//! Turning trip tables into contract events: NYC TLC trip records ([`nyc_tlc`]), and any CSV
//! with one trip per row through a column mapping ([`mapped_csv`]).
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
    /// A mapped column is not in the header.
    #[error("the header has no column {column:?} (for {flag}); its columns are: {available}")]
    NoSuchColumn {
        /// The column asked for.
        column: String,
        /// The option that named it.
        flag: &'static str,
        /// The header's columns, comma-separated.
        available: String,
    },
    /// The time zone is not an IANA name.
    #[error("unknown time zone {0:?}: use an IANA name such as Europe/Berlin or UTC")]
    UnknownTimeZone(String),
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

    let mut line = String::with_capacity(256);
    let stats = each_row(&mut reader, |row, record| {
        let mut events = 0;
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
            events += 1;
        }
        Ok(events)
    })?;
    output.flush()?;
    Ok(stats)
}

/// Where a trip's end comes from in a mapped CSV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndColumn {
    /// A column with the end time (same formats as the start).
    Time(String),
    /// A column with the trip's duration in seconds (decimals allowed), added to the start.
    DurationSeconds(String),
}

/// Which columns of a CSV hold a trip's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvMapping {
    /// The start time column.
    pub start: String,
    /// The end time or duration column.
    pub end: EndColumn,
    /// The fare column.
    pub fare: String,
    /// The trip id column; `None`: `<prefix>-<row number>`.
    pub id: Option<String>,
    /// Trip id prefix when ids are row numbers.
    pub prefix: String,
    /// IANA zone of times written without an offset.
    pub zone: String,
    /// Field delimiter.
    pub delimiter: u8,
}

/// Converts a CSV with one trip per row into NDJSON events, by `mapping`.
///
/// Times may be local date-times (`YYYY-MM-DD HH:MM[:SS[.fff]]`, with a space or `T`, read in
/// `mapping.zone` as [`local_to_rfc3339`] does), RFC 3339 with an offset (kept as written), or
/// integer Unix seconds; they are written as RFC 3339. An empty end (or duration) cell means the
/// trip has not ended: only its `trip_start` is written, carrying the fare, if any. An empty
/// fare cell writes no fare. Like [`nyc_tlc`], the converter does not judge: a value it cannot
/// read is passed through as text, so the replay rejects it with its reason and keeps the bytes.
pub fn mapped_csv(
    input: impl Read,
    mut output: impl Write,
    mapping: &CsvMapping,
) -> Result<ConvertStats, ConvertError> {
    let tz: Tz = mapping
        .zone
        .parse()
        .map_err(|_| ConvertError::UnknownTimeZone(mapping.zone.clone()))?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(mapping.delimiter)
        .flexible(false)
        .from_reader(input);
    let headers = reader
        .headers()
        .map_err(|source| ConvertError::Csv { row: 0, source })?
        .clone();
    let col = |name: &str, flag: &'static str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| ConvertError::NoSuchColumn {
                column: name.to_owned(),
                flag,
                available: headers.iter().collect::<Vec<_>>().join(", "),
            })
    };
    let start = col(&mapping.start, "--start")?;
    let (end_col, by_duration) = match &mapping.end {
        EndColumn::Time(c) => (col(c, "--end")?, false),
        EndColumn::DurationSeconds(c) => (col(c, "--duration-seconds")?, true),
    };
    let fare = col(&mapping.fare, "--fare")?;
    let id = mapping.id.as_deref().map(|c| col(c, "--id")).transpose()?;

    let mut line = String::with_capacity(256);
    let stats = each_row(&mut reader, |row, record| {
        let cell = |i: usize| record.get(i).unwrap_or("").trim();
        let trip_id = match id {
            Some(i) => cell(i).to_owned(),
            None => format!("{}-{row}", mapping.prefix),
        };
        let start_text = cell(start);
        let start_at = read_time(tz, start_text);
        let end_text = cell(end_col);
        let end_at: Option<String> = if end_text.is_empty() {
            None
        } else {
            Some(if !by_duration {
                read_time(tz, end_text).text(tz)
            } else {
                match (&start_at, duration_ns(end_text)) {
                    (Time::Instant(ns), Some(d)) => match ns.checked_add(d) {
                        Some(end) => Time::Instant(end).text(tz),
                        None => end_text.to_owned(),
                    },
                    // The start cannot be read: the end is rejected with it.
                    (Time::Text(t), _) => t.clone(),
                    (_, None) => end_text.to_owned(),
                }
            })
        };
        let fare_cell = cell(fare);
        let mut write = |kind: &str, ts: &str, with_fare: bool| -> std::io::Result<()> {
            line.clear();
            line.push_str(&format!(
                "{{\"trip_id\":{},\"event_type\":\"{kind}\",\"timestamp\":{}",
                json_str(&trip_id),
                json_str(ts)
            ));
            if with_fare && !fare_cell.is_empty() {
                line.push_str(",\"fare\":");
                line.push_str(&json_scalar(fare_cell));
            }
            line.push_str("}\n");
            output.write_all(line.as_bytes())
        };
        write("trip_start", &start_at.text(tz), end_at.is_none())?;
        if let Some(end) = end_at {
            write("trip_end", &end, true)?;
            return Ok(2);
        }
        Ok(1)
    })?;
    output.flush()?;
    Ok(stats)
}

/// A time cell: an instant the converter could read, or the text as written.
enum Time {
    /// ns since the epoch (local date-times and Unix seconds).
    Instant(i64),
    /// Passed on as written: RFC 3339 with an offset, or text the replay will reject.
    Text(String),
}

impl Time {
    /// RFC 3339 with the offset in force in `tz` (fractions of a second only when present).
    fn text(&self, tz: Tz) -> String {
        match self {
            Time::Instant(ns) => tz
                .timestamp_nanos(*ns)
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            Time::Text(t) => t.clone(),
        }
    }
}

/// Reads a time cell: integer Unix seconds, a local date-time in `tz`, or anything else as text.
fn read_time(tz: Tz, text: &str) -> Time {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text
            .parse::<i64>()
            .ok()
            .and_then(crate::time::secs_to_nanos)
        {
            Some(ns) => Time::Instant(ns),
            None => Time::Text(text.to_owned()),
        };
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format)
            && let Some(ns) = local_instant(tz, naive).timestamp_nanos_opt()
        {
            return Time::Instant(ns);
        }
    }
    Time::Text(text.to_owned())
}

/// Seconds with up to nine decimals, as ns; `None` for anything else (negative included).
fn duration_ns(text: &str) -> Option<i64> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || frac.len() > 9
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let frac_ns = format!("{frac:0<9}").parse::<i64>().ok()?;
    whole
        .parse::<i64>()
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(frac_ns)
}

/// Calls `row_events` with each data row (1-based) and its record; it returns how many events
/// it wrote. A CSV error names its row.
fn each_row<R: Read>(
    reader: &mut csv::Reader<R>,
    mut row_events: impl FnMut(u64, &csv::StringRecord) -> Result<u64, ConvertError>,
) -> Result<ConvertStats, ConvertError> {
    let mut stats = ConvertStats::default();
    let mut record = csv::StringRecord::new();
    loop {
        let row = stats.rows + 1;
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Ok(stats),
            Err(source) => return Err(ConvertError::Csv { row, source }),
        }
        stats.rows = row;
        stats.events += row_events(row, &record)?;
    }
}

/// A naive `YYYY-MM-DD HH:MM:SS` local time in `tz` as RFC 3339 with its offset; text that is
/// not such a time is returned unchanged (the replay will reject it as `bad_timestamp`).
pub fn local_to_rfc3339(tz: Tz, text: &str) -> String {
    let Ok(naive) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") else {
        return text.to_owned();
    };
    local_instant(tz, naive).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A local time in `tz`: a time skipped by a DST change is moved forward by the gap, an
/// ambiguous one takes the earlier offset.
fn local_instant(tz: Tz, naive: NaiveDateTime) -> DateTime<Tz> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t,
        LocalResult::Ambiguous(earlier, _) => earlier,
        LocalResult::None => {
            let before = tz
                .offset_from_utc_datetime(&(naive - chrono::Duration::days(1)))
                .fix();
            let utc = naive - chrono::Duration::seconds(i64::from(before.local_minus_utc()));
            tz.from_utc_datetime(&utc)
        }
    }
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

    fn mapping(end: EndColumn) -> CsvMapping {
        CsvMapping {
            start: "started_at".into(),
            end,
            fare: "price".into(),
            id: None,
            prefix: "row".into(),
            zone: "Europe/Berlin".into(),
            delimiter: b',',
        }
    }

    fn convert(csv: &str, m: &CsvMapping) -> Vec<String> {
        let mut out = Vec::new();
        mapped_csv(csv.as_bytes(), &mut out, m).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn mapped_local_times_unix_seconds_and_open_trips() {
        let m = mapping(EndColumn::Time("ended_at".into()));
        let lines = convert(
            "started_at,ended_at,price\n\
             2024-03-31 01:50:00,2024-03-31 02:10,12.5\n\
             1711846200,,7\n\
             2024-03-31T03:00:00+02:00,yesterday,\n",
            &m,
        );
        assert_eq!(
            lines,
            [
                // 02:10 does not exist in Berlin that night: moved forward by the gap.
                r#"{"trip_id":"row-1","event_type":"trip_start","timestamp":"2024-03-31T01:50:00+01:00"}"#,
                r#"{"trip_id":"row-1","event_type":"trip_end","timestamp":"2024-03-31T03:10:00+02:00","fare":12.5}"#,
                // No end yet: the start carries the fare.
                r#"{"trip_id":"row-2","event_type":"trip_start","timestamp":"2024-03-31T01:50:00+01:00","fare":7}"#,
                // Passed through for the replay to judge; no fare cell, no fare.
                r#"{"trip_id":"row-3","event_type":"trip_start","timestamp":"2024-03-31T03:00:00+02:00"}"#,
                r#"{"trip_id":"row-3","event_type":"trip_end","timestamp":"yesterday"}"#,
            ]
        );
    }

    #[test]
    fn mapped_durations_ids_and_delimiters() {
        let mut m = mapping(EndColumn::DurationSeconds("secs".into()));
        m.id = Some("ride".into());
        m.delimiter = b';';
        m.zone = "UTC".into();
        let lines = convert(
            "ride;started_at;secs;price\n\
             a-1;2024-01-01 10:00:00;90.25;4.10\n\
             a-2;bad;60;4\n\
             a-3;1704103200;-5;4\n",
            &m,
        );
        assert_eq!(
            lines,
            [
                r#"{"trip_id":"a-1","event_type":"trip_start","timestamp":"2024-01-01T10:00:00Z"}"#,
                r#"{"trip_id":"a-1","event_type":"trip_end","timestamp":"2024-01-01T10:01:30.250Z","fare":4.10}"#,
                r#"{"trip_id":"a-2","event_type":"trip_start","timestamp":"bad"}"#,
                r#"{"trip_id":"a-2","event_type":"trip_end","timestamp":"bad","fare":4}"#,
                r#"{"trip_id":"a-3","event_type":"trip_start","timestamp":"2024-01-01T10:00:00Z"}"#,
                r#"{"trip_id":"a-3","event_type":"trip_end","timestamp":"-5","fare":4}"#,
            ]
        );
    }

    #[test]
    fn mapped_columns_and_zones_are_checked() {
        let m = mapping(EndColumn::Time("ended".into()));
        let err = mapped_csv("started_at,ended_at,price\n".as_bytes(), Vec::new(), &m)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"ended\" (for --end)") && err.contains("ended_at"),
            "{err}"
        );
        let mut m = mapping(EndColumn::Time("ended_at".into()));
        m.zone = "Mars/Base".into();
        let err = mapped_csv("started_at,ended_at,price\n".as_bytes(), Vec::new(), &m)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Mars/Base"), "{err}");
    }

    #[test]
    fn missing_columns_are_named() {
        let err = nyc_tlc("a,b\n1,2\n".as_bytes(), Vec::new(), "x").unwrap_err();
        assert!(err.to_string().contains("tpep_pickup_datetime"), "{err}");
    }
}
