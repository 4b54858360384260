//! The single-table layout: keys, attributes and indexes, and the codec between items and
//! the core's [`TripEvent`].
//!
//! | item            | `pk`          | `sk`          | written by                 |
//! |-----------------|---------------|---------------|----------------------------|
//! | start event     | `TRIP#<id>`   | `EVENT#start` | ingest (put, once)         |
//! | end event       | `TRIP#<id>`   | `EVENT#end`   | ingest (put, once)         |
//! | watermark       | `META`        | `WATERMARK`   | ingest (newest event time) |
//!
//! The start event's item is also the trip record: completing a trip copies the end's
//! fields onto it in one conditional update (`end_ts`, `end_fare`, `end_extras`) and sets
//! `kpi_pk`, which puts it into the sparse `kpi` index. Start items carry `open_pk` from the
//! moment they are stored until the trip completes or is orphaned, which is the sparse `open`
//! index; an end that arrives before its start is added to `open` by the matcher.
//!
//! Indexes (both sparse; `ts` is the sort key of both):
//! - `kpi`: `kpi_pk` = `DAY#<UTC date of the start>#<00..31>` (the trip id's hash spreads a
//!   day's writes over [`KPI_SHARDS`] keys), projecting the fares and `end_ts`: the KPI job
//!   queries the shards of the UTC days that can hold a local day and never reads raw events.
//! - `open`: `open_pk` = `OPEN#<0..63>` ([`OPEN_BUCKETS`] keys), keys only: the sweeper reads
//!   only what is still open.
//!
//! See the README's "Table design" for the access patterns and their costs.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use tripflow_runtime::core::{EventKind, TripEvent};

/// An item as the SDK carries it.
pub type Item = HashMap<String, AttributeValue>;

/// Partition key attribute.
pub const PK: &str = "pk";
/// Sort key attribute.
pub const SK: &str = "sk";
/// The event's instant, ns since the epoch (number); sort key of both indexes.
pub const TS: &str = "ts";
/// The event's fare in cents (number; absent when the event has none).
pub const FARE: &str = "fare";
/// The event's other fields as canonical JSON (string; absent when none).
pub const EXTRAS: &str = "extras";
/// Start items: `DAY#<UTC date>`, copied into `kpi_pk` on completion.
pub const DAY_KEY: &str = "day_key";
/// Partition key of the `kpi` index, set when the trip completes.
pub const KPI_PK: &str = "kpi_pk";
/// Partition key of the `open` index.
pub const OPEN_PK: &str = "open_pk";
/// The end's fields copied onto the start item on completion.
pub const END_TS: &str = "end_ts";
/// See [`END_TS`].
pub const END_FARE: &str = "end_fare";
/// See [`END_TS`].
pub const END_EXTRAS: &str = "end_extras";
/// When the sweeper orphaned the trip (epoch seconds).
pub const ORPHANED_AT: &str = "orphaned_at";
/// Where the event came from (`<shard id>/<sequence number>`), for tracing a record back.
pub const SOURCE: &str = "src";
/// TTL attribute (epoch seconds), set when `RETENTION_DAYS` is configured.
pub const EXPIRES_AT: &str = "expires_at";
/// `META` item: newest event time seen by ingest (ns).
pub const NEWEST_NS: &str = "newest_ns";

/// Name of the KPI index.
pub const KPI_INDEX: &str = "kpi";
/// Name of the open-trips index.
pub const OPEN_INDEX: &str = "open";
/// Partitions of the open index. Every trip writes it twice (its first half enters, the
/// completion removes it): at 10,000 trips/s that is 20,000 index writes/s, 312.5 per key over
/// 64 keys — under the 500/s this design allows one key (DynamoDB's limit is 1,000 WCU/s).
pub const OPEN_BUCKETS: u32 = 64;

/// Shards of each day in the `kpi` index. Every completed trip writes one index item: at
/// 10,000 completions/s, 312.5 writes/s per key over 32 keys (under 500/s). The KPI job queries
/// a day's shards side by side.
pub const KPI_SHARDS: u32 = 32;

/// `TRIP#<id>`.
pub fn trip_pk(trip_id: &str) -> String {
    format!("TRIP#{trip_id}")
}

/// `EVENT#start` or `EVENT#end`.
pub fn event_sk(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Start => "EVENT#start",
        EventKind::End => "EVENT#end",
    }
}

/// The key of one half of a trip.
pub fn event_key(trip_id: &str, kind: EventKind) -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(trip_pk(trip_id))),
        (SK.to_owned(), AttributeValue::S(event_sk(kind).to_owned())),
    ])
}

/// The key of the watermark item.
pub fn watermark_key() -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S("META".into())),
        (SK.to_owned(), AttributeValue::S("WATERMARK".into())),
    ])
}

/// FNV-1a of a trip id: spreads a trip's index entries over partitions, the same way on every
/// write.
fn spread(trip_id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in trip_id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// `OPEN#<n>`: the open-index partition of a trip.
pub fn open_pk(trip_id: &str) -> String {
    format!("OPEN#{}", spread(trip_id) % OPEN_BUCKETS)
}

/// `DAY#<date>#<shard>`: the `kpi`-index partition of a trip that started on UTC `date`.
pub fn kpi_day_pk(date: &str, trip_id: &str) -> String {
    kpi_shard_pk(date, spread(trip_id) % KPI_SHARDS)
}

/// `DAY#<date>#<shard>` for shard `shard` of `date` (`00`…`31`).
pub fn kpi_shard_pk(date: &str, shard: u32) -> String {
    format!("DAY#{date}#{shard:02}")
}

/// `DAY#<date>`.
pub fn day_pk(date: &str) -> String {
    format!("DAY#{date}")
}

/// The item of a newly stored event. `utc_day` is the core's `day-of("UTC", ts)`; it is
/// stored on start items only (the KPI day partition of the trip).
pub fn event_item(
    e: &TripEvent,
    utc_day: Option<&str>,
    source: &str,
    expires_at: Option<i64>,
) -> Item {
    let mut item = event_key(&e.trip_id, e.kind);
    item.insert(TS.into(), AttributeValue::N(e.timestamp_ns.to_string()));
    if let Some(f) = e.fare_cents {
        item.insert(FARE.into(), AttributeValue::N(f.to_string()));
    }
    if !e.extras.is_empty() {
        item.insert(EXTRAS.into(), AttributeValue::S(e.extras.clone()));
    }
    if e.kind == EventKind::Start {
        if let Some(day) = utc_day {
            item.insert(
                DAY_KEY.into(),
                AttributeValue::S(kpi_day_pk(day, &e.trip_id)),
            );
        }
        item.insert(OPEN_PK.into(), AttributeValue::S(open_pk(&e.trip_id)));
    }
    item.insert(SOURCE.into(), AttributeValue::S(source.to_owned()));
    if let Some(t) = expires_at {
        item.insert(EXPIRES_AT.into(), AttributeValue::N(t.to_string()));
    }
    item
}

/// Why an item is not a valid event item.
#[derive(Debug, thiserror::Error)]
#[error("item {key}: {problem}")]
pub struct ItemError {
    key: String,
    problem: String,
}

fn bad(item: &Item, problem: impl Into<String>) -> ItemError {
    let s = |k: &str| match item.get(k) {
        Some(AttributeValue::S(v)) => v.clone(),
        _ => "?".into(),
    };
    ItemError {
        key: format!("{}/{}", s(PK), s(SK)),
        problem: problem.into(),
    }
}

fn string<'a>(item: &'a Item, name: &str) -> Result<Option<&'a str>, ItemError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(s)) => Ok(Some(s)),
        Some(other) => Err(bad(item, format!("{name} is {other:?}, not a string"))),
    }
}

fn number(item: &Item, name: &str) -> Result<Option<i64>, ItemError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(n)) => n
            .parse()
            .map(Some)
            .map_err(|_| bad(item, format!("{name} = {n} is not a whole number"))),
        Some(other) => Err(bad(item, format!("{name} is {other:?}, not a number"))),
    }
}

/// The trip id and half an event item's key names.
pub fn parse_key(item: &Item) -> Result<(String, EventKind), ItemError> {
    let pk = string(item, PK)?.ok_or_else(|| bad(item, "no pk"))?;
    let trip_id = pk
        .strip_prefix("TRIP#")
        .ok_or_else(|| bad(item, "pk is not TRIP#<id>"))?;
    let kind = match string(item, SK)?.ok_or_else(|| bad(item, "no sk"))? {
        "EVENT#start" => EventKind::Start,
        "EVENT#end" => EventKind::End,
        other => return Err(bad(item, format!("sk {other:?} is not an event"))),
    };
    Ok((trip_id.to_owned(), kind))
}

/// The event an event item holds.
pub fn event_from_item(item: &Item) -> Result<TripEvent, ItemError> {
    let (trip_id, kind) = parse_key(item)?;
    Ok(TripEvent {
        trip_id,
        kind,
        timestamp_ns: number(item, TS)?.ok_or_else(|| bad(item, "no ts"))?,
        fare_cents: number(item, FARE)?,
        extras: string(item, EXTRAS)?.unwrap_or_default().to_owned(),
    })
}

/// The end event whose fields a completed start item carries, if it carries them.
pub fn end_from_trip_item(item: &Item) -> Result<Option<TripEvent>, ItemError> {
    let (trip_id, _) = parse_key(item)?;
    let Some(ts) = number(item, END_TS)? else {
        return Ok(None);
    };
    Ok(Some(TripEvent {
        trip_id,
        kind: EventKind::End,
        timestamp_ns: ts,
        fare_cents: number(item, END_FARE)?,
        extras: string(item, END_EXTRAS)?.unwrap_or_default().to_owned(),
    }))
}

/// The start half from a start item projected into the `kpi` index (keys, `ts`, `fare`).
pub fn start_from_kpi_item(item: &Item) -> Result<TripEvent, ItemError> {
    event_from_item(item)
}

/// The completion update: copies `end` onto the start item, moves the trip from the open
/// index to the KPI index. Applied with [`COMPLETE_CONDITION`], it succeeds at most once per
/// trip whatever the concurrency.
pub fn completion(end: &TripEvent) -> (String, HashMap<String, AttributeValue>) {
    let mut set = vec![
        format!("{END_TS} = :end_ts"),
        format!("{KPI_PK} = {DAY_KEY}"),
    ];
    let mut values = HashMap::from([(
        ":end_ts".to_owned(),
        AttributeValue::N(end.timestamp_ns.to_string()),
    )]);
    if let Some(f) = end.fare_cents {
        set.push(format!("{END_FARE} = :end_fare"));
        values.insert(":end_fare".into(), AttributeValue::N(f.to_string()));
    }
    if !end.extras.is_empty() {
        set.push(format!("{END_EXTRAS} = :end_extras"));
        values.insert(":end_extras".into(), AttributeValue::S(end.extras.clone()));
    }
    (
        format!("SET {} REMOVE {OPEN_PK}, {ORPHANED_AT}", set.join(", ")),
        values,
    )
}

/// The start exists and is not complete yet.
pub const COMPLETE_CONDITION: &str = "attribute_exists(pk) AND attribute_not_exists(end_ts)";

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, fare: Option<i64>, extras: &str) -> TripEvent {
        TripEvent {
            trip_id: "t#1".into(),
            kind,
            timestamp_ns: 1_551_398_400_123_456_789,
            fare_cents: fare,
            extras: extras.into(),
        }
    }

    #[test]
    fn event_items_round_trip() {
        for e in [
            ev(EventKind::Start, Some(1250), r#"{"vendor":"1"}"#),
            ev(EventKind::End, None, ""),
            ev(EventKind::End, Some(-5), ""),
        ] {
            let item = event_item(&e, Some("2019-03-01"), "shardId-0/1", Some(9));
            assert_eq!(event_from_item(&item).unwrap(), e);
            assert_eq!(
                item.contains_key(OPEN_PK),
                e.kind == EventKind::Start,
                "only starts enter the open index at ingest"
            );
        }
        let start = event_item(
            &ev(EventKind::Start, None, ""),
            Some("2019-03-01"),
            "s",
            None,
        );
        assert_eq!(
            start[DAY_KEY],
            AttributeValue::S(kpi_day_pk("2019-03-01", "t#1"))
        );
        let AttributeValue::S(key) = &start[DAY_KEY] else {
            panic!()
        };
        assert!(key.starts_with("DAY#2019-03-01#") && key.len() == "DAY#2019-03-01#00".len());
        assert!(!start.contains_key(EXPIRES_AT));
    }

    #[test]
    fn malformed_items_are_named() {
        let mut item = event_item(&ev(EventKind::Start, None, ""), None, "s", None);
        item.insert(TS.into(), AttributeValue::S("soon".into()));
        let e = event_from_item(&item).unwrap_err().to_string();
        assert!(
            e.contains("TRIP#t#1/EVENT#start") && e.contains("ts"),
            "{e}"
        );
        item.insert(SK.into(), AttributeValue::S("TRIP".into()));
        assert!(parse_key(&item).is_err());
    }

    #[test]
    fn open_partitions_are_spread_and_stable() {
        let parts: std::collections::HashSet<_> =
            (0..200).map(|i| open_pk(&format!("trip-{i}"))).collect();
        assert_eq!(parts.len(), OPEN_BUCKETS as usize);
        assert_eq!(open_pk("nyc-1"), open_pk("nyc-1"));
        let shards: std::collections::HashSet<_> = (0..2_000)
            .map(|i| kpi_day_pk("2019-03-01", &format!("trip-{i}")))
            .collect();
        assert_eq!(shards.len(), KPI_SHARDS as usize);
    }

    #[test]
    fn completion_copies_the_end_and_moves_indexes() {
        let (expr, values) = completion(&ev(EventKind::End, Some(990), "{}"));
        assert!(
            expr.starts_with("SET end_ts = :end_ts, kpi_pk = day_key"),
            "{expr}"
        );
        assert!(expr.ends_with("REMOVE open_pk, orphaned_at"), "{expr}");
        assert_eq!(values[":end_fare"], AttributeValue::N("990".into()));
        let (expr, values) = completion(&ev(EventKind::End, None, ""));
        assert!(!expr.contains("end_fare") && !values.contains_key(":end_fare"));
    }
}
