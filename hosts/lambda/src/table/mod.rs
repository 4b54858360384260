//! The single-table layout: keys, attributes, and the codec between items and the core's
//! [`TripEvent`].
//!
//! | item              | `pk`                      | `sk`                | written by                       |
//! |-------------------|---------------------------|---------------------|----------------------------------|
//! | trip (both halves)| `TRIP#<id>`               | `TRIP`              | ingest, one update per half      |
//! | watermark         | `META`                    | `WATERMARK`         | ingest (newest event time)       |
//! | dirty KPI day     | `DIRTY`                   | `DAY#<UTC date>`    | matcher ([`crate::dirty`])       |
//! | manifests         | `OPEN#…`, `SETTLED#…`, `DONE#…`, `SWEEP` | see [`crate::manifest`] | matcher, sweeper |
//!
//! A trip is **one item**. Each half is stored by one conditional `UpdateItem` that sets that
//! half's attributes (`s_…` for the start, `e_…` for the end) on the condition that they are
//! absent; a failed condition hands back the stored item (`ReturnValuesOnConditionCheckFailure`),
//! which is how ingest learns what is stored without reading. Whichever half is stored second
//! makes the item complete: that write *is* the completion, and exactly one write can be it.
//! Neither write touches an index (the table has none): the matcher files completions and
//! open trips into batched manifests from the table's stream, one item per batch instead of
//! one index entry per trip.
//!
//! The trip item's attributes and how a half reads back are [`tripflow_runtime::item`]'s, shared
//! with the reader of table exports.
//!
//! See the README's "Table design" for the access patterns and their costs. Every call to the
//! table is in [`calls`] (re-exported here).

mod calls;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use tripflow_runtime::core::{EventKind, TripEvent};
use tripflow_runtime::item::{Attr, Attributes};

pub use calls::*;

/// An item as the SDK carries it.
pub type Item = HashMap<String, AttributeValue>;

pub use tripflow_runtime::item::{
    END, EXPIRES_AT, Half, OPENED_HOUR, ORPHANED_AT, PK, SK, START, TRIP_SK, half, trip_pk,
};
/// `META` item: newest event time seen by ingest (ns).
pub const NEWEST_NS: &str = "newest_ns";

/// One hour in ns.
pub const HOUR_NS: i64 = 3_600_000_000_000;

/// The hour (whole hours since the epoch, floored) of an instant.
pub fn hour_of(ts_ns: i64) -> i64 {
    ts_ns.div_euclid(HOUR_NS)
}

/// The key of a trip's item.
pub fn trip_key(trip_id: &str) -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(trip_pk(trip_id))),
        (SK.to_owned(), AttributeValue::S(TRIP_SK.to_owned())),
    ])
}

/// The key of the watermark item.
pub fn watermark_key() -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S("META".into())),
        (SK.to_owned(), AttributeValue::S("WATERMARK".into())),
    ])
}

/// FNV-1a of a string: spreads keys over partitions, the same way on every write.
pub fn spread(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// `DAY#<date>`.
pub fn day_pk(date: &str) -> String {
    format!("DAY#{date}")
}

/// The `UpdateItem` that stores one half: its update expression, values and condition. It
/// succeeds only if that half is not stored yet; `opened_hour` is set by whichever half comes
/// first.
pub struct StoreHalf {
    /// `SET …`.
    pub update: String,
    /// `:…` values.
    pub values: HashMap<String, AttributeValue>,
    /// `attribute_not_exists(<half>_ts)`.
    pub condition: String,
}

/// How to store `e` (from `source`) on its trip's item.
pub fn store_half(e: &TripEvent, source: &str, expires_at: Option<i64>) -> StoreHalf {
    let h = half(e.kind);
    let mut set = vec![
        format!("{} = :ts", h.ts),
        format!("{} = :src", h.src),
        format!("{OPENED_HOUR} = if_not_exists({OPENED_HOUR}, :hour)"),
    ];
    let mut values = HashMap::from([
        (
            ":ts".to_owned(),
            AttributeValue::N(e.timestamp_ns.to_string()),
        ),
        (":src".to_owned(), AttributeValue::S(source.to_owned())),
        (
            ":hour".to_owned(),
            AttributeValue::N(hour_of(e.timestamp_ns).to_string()),
        ),
    ]);
    if let Some(f) = e.fare_cents {
        set.push(format!("{} = :fare", h.fare));
        values.insert(":fare".into(), AttributeValue::N(f.to_string()));
    }
    if !e.extras.is_empty() {
        set.push(format!("{} = :extras", h.extras));
        values.insert(":extras".into(), AttributeValue::S(e.extras.clone()));
    }
    if let Some(t) = expires_at {
        set.push(format!("{EXPIRES_AT} = :exp"));
        values.insert(":exp".into(), AttributeValue::N(t.to_string()));
    }
    StoreHalf {
        update: format!("SET {}", set.join(", ")),
        values,
        condition: format!("attribute_not_exists({})", h.ts),
    }
}

/// Why an item is not a valid trip item.
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

/// An SDK item, read through the layout.
struct Sdk<'a>(&'a Item);

impl Attributes for Sdk<'_> {
    fn attr(&self, name: &str) -> Option<Attr<'_>> {
        self.0.get(name).map(|v| match v {
            AttributeValue::S(s) => Attr::S(s),
            AttributeValue::N(n) => Attr::N(n),
            AttributeValue::Bool(_) => Attr::Other("BOOL"),
            AttributeValue::L(_) => Attr::Other("L"),
            AttributeValue::M(_) => Attr::Other("M"),
            AttributeValue::Null(_) => Attr::Other("NULL"),
            AttributeValue::B(_) => Attr::Other("B"),
            _ => Attr::Other("a set"),
        })
    }
}

/// The trip id a trip item's key names.
pub fn trip_id(item: &Item) -> Result<String, ItemError> {
    Sdk(item)
        .trip_id()
        .map(str::to_owned)
        .map_err(|p| bad(item, p))
}

/// Whether an item is a trip item (by its key).
pub fn is_trip(item: &Item) -> bool {
    Sdk(item).is_trip()
}

/// The half of `kind` a trip item holds, with its source.
pub fn stored_half(item: &Item, kind: EventKind) -> Result<Option<(TripEvent, String)>, ItemError> {
    Sdk(item)
        .half(kind)
        .map(|h| h.map(|(e, src)| (e, src.to_owned())))
        .map_err(|p| bad(item, p))
}

/// A trip item, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct TripItem {
    /// The trip id.
    pub trip_id: String,
    /// The stored start.
    pub start: Option<TripEvent>,
    /// The stored end.
    pub end: Option<TripEvent>,
    /// See [`OPENED_HOUR`].
    pub opened_hour: i64,
    /// Whether the sweeper orphaned it.
    pub orphaned: bool,
}

/// Decodes a trip item.
pub fn trip_from_item(item: &Item) -> Result<TripItem, ItemError> {
    let start = stored_half(item, EventKind::Start)?.map(|(e, _)| e);
    let end = stored_half(item, EventKind::End)?.map(|(e, _)| e);
    if start.is_none() && end.is_none() {
        return Err(bad(item, "neither half is stored"));
    }
    Ok(TripItem {
        trip_id: trip_id(item)?,
        opened_hour: Sdk(item)
            .number(OPENED_HOUR)
            .map_err(|p| bad(item, p))?
            .ok_or_else(|| bad(item, "no opened_hour"))?,
        orphaned: item.contains_key(ORPHANED_AT),
        start,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, ts: i64, fare: Option<i64>, extras: &str) -> TripEvent {
        TripEvent {
            trip_id: "t#1".into(),
            kind,
            timestamp_ns: ts,
            fare_cents: fare,
            extras: extras.into(),
        }
    }

    /// Applies a `store_half` update the way DynamoDB would (SET, `if_not_exists`).
    fn apply(item: &mut Item, e: &TripEvent, src: &str) {
        let s = store_half(e, src, Some(9));
        assert_eq!(
            s.condition,
            format!("attribute_not_exists({})", half(e.kind).ts)
        );
        assert!(
            !item.contains_key(half(e.kind).ts),
            "the condition would fail"
        );
        if item.is_empty() {
            item.extend(trip_key(&e.trip_id));
        }
        // Assignments are separated by ", " outside parentheses.
        let mut assignments: Vec<String> = Vec::new();
        for piece in s.update.trim_start_matches("SET ").split(", ") {
            match assignments.last_mut() {
                Some(open) if open.matches('(').count() > open.matches(')').count() => {
                    open.push_str(", ");
                    open.push_str(piece);
                }
                _ => assignments.push(piece.to_owned()),
            }
        }
        for assignment in &assignments {
            let (name, value) = assignment.split_once(" = ").unwrap();
            if let Some(rest) = value.strip_prefix("if_not_exists(") {
                let placeholder = rest.split(", ").nth(1).unwrap().trim_end_matches(')');
                if !item.contains_key(name) {
                    item.insert(name.into(), s.values[placeholder].clone());
                }
            } else {
                item.insert(name.into(), s.values[value].clone());
            }
        }
    }

    #[test]
    fn both_halves_share_one_item_and_round_trip() {
        let start = ev(
            EventKind::Start,
            3 * HOUR_NS + 5,
            Some(1250),
            r#"{"vendor":"1"}"#,
        );
        let end = ev(EventKind::End, 5 * HOUR_NS, None, "");
        let mut item = Item::new();
        apply(&mut item, &end, "shardId-0/2");
        let open = trip_from_item(&item).unwrap();
        assert_eq!((open.start.as_ref(), open.end.as_ref()), (None, Some(&end)));
        assert_eq!(open.opened_hour, 5);
        apply(&mut item, &start, "shardId-0/1");
        let done = trip_from_item(&item).unwrap();
        assert_eq!(
            (done.start.as_ref(), done.end.as_ref()),
            (Some(&start), Some(&end))
        );
        assert_eq!(done.opened_hour, 5, "the first half's hour stays");
        assert_eq!(
            stored_half(&item, EventKind::Start).unwrap().unwrap().1,
            "shardId-0/1"
        );
        assert_eq!(item[EXPIRES_AT], AttributeValue::N("9".into()));
        assert!(is_trip(&item) && !is_trip(&watermark_key()));
    }

    #[test]
    fn hours_floor_before_the_epoch() {
        assert_eq!(hour_of(0), 0);
        assert_eq!(hour_of(HOUR_NS - 1), 0);
        assert_eq!(hour_of(-1), -1);
    }

    #[test]
    fn malformed_items_are_named() {
        let mut item = Item::new();
        apply(&mut item, &ev(EventKind::Start, 1, None, ""), "s");
        item.insert(START.ts.into(), AttributeValue::S("soon".into()));
        let e = trip_from_item(&item).unwrap_err().to_string();
        assert!(e.contains("TRIP#t#1/TRIP") && e.contains("s_ts"), "{e}");
        item.insert(SK.into(), AttributeValue::S("EVENT".into()));
        assert!(trip_id(&item).is_err());
        let empty = trip_key("x");
        assert!(trip_from_item(&empty).is_err());
    }
}
