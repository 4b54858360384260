//! The pipeline table's trip item: its key, the attributes of each half, and how a stored half
//! reads back as the core's [`TripEvent`].
//!
//! One home for the layout, because two kinds of host read it: the Lambda functions read items
//! through the AWS SDK (`hosts/lambda/src/table`), and the export reader reads them as DynamoDB
//! JSON from a table export (`hosts/store/src/export.rs`). Both hand this module the item's
//! attributes through [`Attributes`], so an attribute renamed here is renamed for both.
//!
//! | attribute                         | type | what                                          |
//! |-----------------------------------|------|-----------------------------------------------|
//! | `pk`                              | S    | `TRIP#<trip id>`                              |
//! | `sk`                              | S    | `TRIP`                                        |
//! | `s_ts` / `e_ts`                   | N    | the start's / end's instant, ns since the epoch |
//! | `s_fare` / `e_fare`               | N    | its fare in cents, when it has one           |
//! | `s_extras` / `e_extras`           | S    | its other fields, canonical JSON, when any   |
//! | `s_src` / `e_src`                 | S    | `<shard id>/<sequence number>` it came from  |
//! | `opened_hour`                     | N    | hour of the first stored half                 |
//! | `orphaned_at`, `expires_at`       | N    | set by the sweeper / for the table's TTL      |

use tripflow_core::{EventKind, TripEvent};

/// Partition key attribute.
pub const PK: &str = "pk";
/// Sort key attribute.
pub const SK: &str = "sk";
/// Sort key of a trip item.
pub const TRIP_SK: &str = "TRIP";
/// What a trip item's partition key starts with, before the trip id.
pub const TRIP_PK_PREFIX: &str = "TRIP#";
/// The hour (UTC, whole hours since the epoch) of the first stored half's instant.
pub const OPENED_HOUR: &str = "opened_hour";
/// When the sweeper orphaned the trip (epoch seconds).
pub const ORPHANED_AT: &str = "orphaned_at";
/// TTL attribute (epoch seconds), set when `RETENTION_DAYS` is configured.
pub const EXPIRES_AT: &str = "expires_at";

/// The attribute names of one half of a trip item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Half {
    /// The event's instant, ns since the epoch (number).
    pub ts: &'static str,
    /// The event's fare in cents (number; absent when the event has none).
    pub fare: &'static str,
    /// The event's other fields as canonical JSON (string; absent when none).
    pub extras: &'static str,
    /// Where the event came from (`<shard id>/<sequence number>`), for tracing a record back
    /// and for recognising a redelivery of the very record that stored it.
    pub src: &'static str,
}

/// The start's attributes.
pub const START: Half = Half {
    ts: "s_ts",
    fare: "s_fare",
    extras: "s_extras",
    src: "s_src",
};
/// The end's attributes.
pub const END: Half = Half {
    ts: "e_ts",
    fare: "e_fare",
    extras: "e_extras",
    src: "e_src",
};

/// The attribute names of `kind`'s half.
pub fn half(kind: EventKind) -> Half {
    match kind {
        EventKind::Start => START,
        EventKind::End => END,
    }
}

/// `TRIP#<id>`.
pub fn trip_pk(trip_id: &str) -> String {
    format!("{TRIP_PK_PREFIX}{trip_id}")
}

/// One attribute of an item, as far as the layout needs to tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attr<'a> {
    /// A string (`S`).
    S(&'a str),
    /// A number (`N`), as its decimal text.
    N(&'a str),
    /// Any other type, by its DynamoDB name (`BOOL`, `L`, `M`, …).
    Other(&'a str),
}

/// An item's attributes, as the layout reads them: implemented over an SDK item by the Lambda
/// functions and over DynamoDB JSON by the export reader. Errors are the problem alone
/// (`s_ts = 1.5 is not a whole number`); the caller names the item.
pub trait Attributes {
    /// The attribute `name`, if the item has it.
    fn attr(&self, name: &str) -> Option<Attr<'_>>;

    /// A string attribute, if present.
    fn string(&self, name: &str) -> Result<Option<&str>, String> {
        match self.attr(name) {
            None => Ok(None),
            Some(Attr::S(s)) => Ok(Some(s)),
            Some(other) => Err(format!("{name} is {other:?}, not a string")),
        }
    }

    /// A whole-number attribute, if present.
    fn number(&self, name: &str) -> Result<Option<i64>, String> {
        match self.attr(name) {
            None => Ok(None),
            Some(Attr::N(n)) => n
                .parse()
                .map(Some)
                .map_err(|_| format!("{name} = {n} is not a whole number")),
            Some(other) => Err(format!("{name} is {other:?}, not a number")),
        }
    }

    /// Whether the item is a trip item, by its sort key.
    fn is_trip(&self) -> bool {
        self.attr(SK) == Some(Attr::S(TRIP_SK))
    }

    /// The trip id the item's key names.
    fn trip_id(&self) -> Result<&str, String> {
        let pk = self.string(PK)?.ok_or("no pk")?;
        let id = pk
            .strip_prefix(TRIP_PK_PREFIX)
            .ok_or("pk is not TRIP#<id>")?;
        if self.string(SK)? != Some(TRIP_SK) {
            return Err("sk is not TRIP".into());
        }
        Ok(id)
    }

    /// The half of `kind` the item holds, with its source (empty when not recorded).
    fn half(&self, kind: EventKind) -> Result<Option<(TripEvent, &str)>, String> {
        let h = half(kind);
        let Some(ts) = self.number(h.ts)? else {
            return Ok(None);
        };
        let event = TripEvent {
            trip_id: self.trip_id()?.to_owned(),
            kind,
            timestamp_ns: ts,
            fare_cents: self.number(h.fare)?,
            extras: self.string(h.extras)?.unwrap_or_default().to_owned(),
        };
        Ok(Some((event, self.string(h.src)?.unwrap_or_default())))
    }

    /// Both stored halves, start first; an error when neither is stored.
    fn events(&self) -> Result<Vec<TripEvent>, String> {
        let mut out = Vec::with_capacity(2);
        for kind in [EventKind::Start, EventKind::End] {
            if let Some((e, _)) = self.half(kind)? {
                out.push(e);
            }
        }
        if out.is_empty() {
            return Err("neither half is stored".into());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map<'a>(HashMap<&'static str, Attr<'a>>);

    impl Attributes for Map<'_> {
        fn attr(&self, name: &str) -> Option<Attr<'_>> {
            self.0.get(name).copied()
        }
    }

    fn reader<'a>(item: &HashMap<&'static str, Attr<'a>>) -> Map<'a> {
        Map(item.clone())
    }

    #[test]
    fn both_halves_read_back_start_first() {
        let item = HashMap::from([
            (PK, Attr::S("TRIP#a#1")),
            (SK, Attr::S(TRIP_SK)),
            ("e_ts", Attr::N("20")),
            ("e_fare", Attr::N("1250")),
            ("s_ts", Attr::N("10")),
            ("s_extras", Attr::S(r#"{"v":1}"#)),
            ("s_src", Attr::S("shardId-0/7")),
        ]);
        let r = reader(&item);
        assert!(r.is_trip());
        let events = r.events().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            (events[0].kind, events[0].timestamp_ns, &*events[0].extras),
            (EventKind::Start, 10, r#"{"v":1}"#)
        );
        assert_eq!(
            (events[1].trip_id.as_str(), events[1].fare_cents),
            ("a#1", Some(1250))
        );
        assert_eq!(r.half(EventKind::Start).unwrap().unwrap().1, "shardId-0/7");
    }

    #[test]
    fn wrong_types_and_keys_are_named() {
        let item = HashMap::from([
            (PK, Attr::S("TRIP#x")),
            (SK, Attr::S(TRIP_SK)),
            ("s_ts", Attr::N("1.5")),
        ]);
        assert!(reader(&item).events().unwrap_err().contains("s_ts = 1.5"));
        let item = HashMap::from([(PK, Attr::S("USER#x")), (SK, Attr::S("TRIP"))]);
        assert_eq!(reader(&item).trip_id().unwrap_err(), "pk is not TRIP#<id>");
        let item = HashMap::from([(PK, Attr::S("TRIP#x")), (SK, Attr::S(TRIP_SK))]);
        assert_eq!(
            reader(&item).events().unwrap_err(),
            "neither half is stored"
        );
        let item = HashMap::from([(PK, Attr::Other("BOOL"))]);
        assert!(
            reader(&item)
                .trip_id()
                .unwrap_err()
                .contains("not a string")
        );
    }
}
