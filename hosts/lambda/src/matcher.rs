//! matcher: the table's stream → completed trips filed for the KPI job, open trips filed for
//! the sweeper.
//!
//! A trip is one item, and the ingest write that stores its second half completes it (see
//! [`crate::table`]): exactly one write can, whatever the concurrency, and its stream record
//! carries the whole trip (`NEW_IMAGE`). The matcher therefore reads nothing. For each batch
//! of stream records (the event source mapping passes only `INSERT`/`MODIFY` of trip items;
//! the handler checks again) it takes each trip's latest image in the batch and:
//! - **both halves stored**: the core pairs them (`matching.pair`); the trip is filed as
//!   settled under its opened hour, and, if it counts in the KPIs, as done under the UTC date
//!   of its start (`kpi.day-of`); the KPI days it touches are marked dirty. A trip the sweeper
//!   had orphaned is completed all the same (a reconciliation);
//! - **one half stored**: filed as open under its opened hour, and the hour is marked for the
//!   sweeper; an image the sweeper's own orphaning wrote is skipped.
//!
//! Each is one manifest item per batch and key ([`crate::manifest`]), written before the batch
//! is acknowledged; if any write fails the whole batch comes back and files the same items
//! again. Both halves of a trip share a partition key, so their stream records are in one
//! shard, in write order: a trip's images never overtake each other.

use std::collections::{BTreeMap, HashMap};

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use aws_sdk_dynamodb::types::AttributeValue;
use tripflow_runtime::core::{ClosedTrip, TripStatus};
use tripflow_runtime::{CoreProvider, TripCore};

use crate::manifest::{self, DoneEntry, Kind, OpenEntry};
use crate::metrics::Counters;
use crate::retry::Budget;
use crate::table::{self, Item, TripItem};
use crate::{App, Error, dirty};

/// What one batch files.
#[derive(Debug, Default, PartialEq)]
pub struct Filing {
    /// Open first halves by opened hour.
    pub open: BTreeMap<i64, Vec<OpenEntry>>,
    /// Completed trip ids by opened hour.
    pub settled: BTreeMap<i64, Vec<String>>,
    /// Trips that count in the KPIs, by UTC date of the start.
    pub done: BTreeMap<String, Vec<DoneEntry>>,
    /// Every trip completed in the batch, as the core closed it.
    pub closed: Vec<ClosedTrip>,
    /// Completed trips the sweeper had orphaned.
    pub reconciled: usize,
}

/// What the core says about the latest image of each trip in a batch.
pub fn filing<C: TripCore>(core: &mut C, trips: &[TripItem]) -> Result<Filing, Error> {
    let mut f = Filing::default();
    for t in trips {
        match (&t.start, &t.end) {
            (Some(start), Some(end)) => {
                let trip = core.pair(start, end)?;
                f.settled
                    .entry(t.opened_hour)
                    .or_default()
                    .push(t.trip_id.clone());
                if t.orphaned {
                    f.reconciled += 1;
                }
                if let (TripStatus::Completed, Some(fare)) = (trip.status, trip.fare_cents) {
                    let day = core.day_of("UTC", trip.start_ns)?;
                    f.done.entry(day).or_default().push((
                        trip.trip_id.clone(),
                        trip.start_ns,
                        fare,
                    ));
                }
                f.closed.push(trip);
            }
            _ if t.orphaned => {} // the sweeper's own write
            (Some(half), None) | (None, Some(half)) => {
                f.open.entry(t.opened_hour).or_default().push((
                    t.trip_id.clone(),
                    half.kind.as_str().to_owned(),
                    half.timestamp_ns,
                ))
            }
            (None, None) => unreachable!("a trip item holds a half at least"),
        }
    }
    Ok(f)
}

/// Handles one batch of stream records.
pub async fn handle(
    app: &App,
    event: Event,
    budget: &Budget,
) -> Result<DynamoDbEventResponse, Error> {
    let mut counters = Counters::default();
    // The latest image of each trip, in the order the trips first appear.
    let mut trips: Vec<TripItem> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for r in &event.records {
        match trip_write(r) {
            None => counters.add("Skipped", 1.0),
            Some(Err(why)) => {
                // Not an item ingest writes; retrying cannot help.
                tracing::error!(event_id = %r.event_id, error = %why, "unreadable trip item skipped");
                counters.add("Skipped", 1.0);
            }
            Some(Ok(t)) => {
                counters.add("Writes", 1.0);
                match index.get(&t.trip_id) {
                    Some(&i) => trips[i] = t,
                    None => {
                        index.insert(t.trip_id.clone(), trips.len());
                        trips.push(t);
                    }
                }
            }
        }
    }
    if trips.is_empty() {
        app.emit(&counters);
        return Ok(DynamoDbEventResponse::default());
    }
    let batch = format!(
        "{}#{}",
        event.records[0].event_id,
        event.records[event.records.len() - 1].event_id
    );

    let result = async {
        let f = filing(&mut app.core_within(budget).session()?, &trips)?;
        file_all(app, &batch, &f, budget).await?;
        Ok::<_, Error>(f)
    }
    .await;
    let mut response = DynamoDbEventResponse::default();
    match result {
        Ok(f) => {
            counters.add("TripsCompleted", f.closed.len() as f64);
            for t in &f.closed {
                counters.add(status_metric(t.status), 1.0);
            }
            counters.add("Reconciled", f.reconciled as f64);
            counters.add(
                "LeftOpen",
                f.open.values().map(Vec::len).sum::<usize>() as f64,
            );
            counters.add("DirtyDaysMarked", f.done.len() as f64);
        }
        Err(why) => {
            // Everything filed is filed again under the same names.
            tracing::error!(error = %why, "batch not filed; the stream will redeliver");
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = event.records[0].change.sequence_number.clone();
            response.batch_item_failures.push(failure);
            counters.add("Failed", 1.0);
        }
    }
    tracing::info!(
        records = event.records.len(),
        completed = counters.get("TripsCompleted"),
        left_open = counters.get("LeftOpen"),
        "matcher batch"
    );
    app.emit(&counters);
    Ok(response)
}

/// Writes a batch's manifests side by side, then its sweep marks and dirty days: a mark is
/// only ever seen after what it points at is stored, so a reader that deletes the marks it
/// read (if unchanged) never drops an entry filed after it looked.
async fn file_all(app: &App, batch: &str, f: &Filing, budget: &Budget) -> Result<(), Error> {
    let mut writes = Vec::new();
    for (hour, entries) in &f.open {
        writes.push(filed(
            app,
            Kind::Open,
            hour.to_string(),
            batch,
            entries,
            budget,
        ));
    }
    for (hour, entries) in &f.settled {
        writes.push(filed(
            app,
            Kind::Settled,
            hour.to_string(),
            batch,
            entries,
            budget,
        ));
    }
    for (day, entries) in &f.done {
        writes.push(filed(app, Kind::Done, day.clone(), batch, entries, budget));
    }
    futures_util::future::try_join_all(writes).await?;
    let hours: Vec<String> = f.open.keys().map(|h| manifest::hour_sk(*h)).collect();
    // The dirty days are the done manifests' dates: the UTC dates of the starts of the trips
    // that count, as the core's `day-of` named them.
    let days: Vec<String> = f.done.keys().map(|d| table::day_pk(d)).collect();
    futures_util::future::try_join(
        dirty::add_marks(app, manifest::SWEEP_PK, &hours, budget),
        dirty::add_marks(app, dirty::DIRTY_PK, &days, budget),
    )
    .await?;
    Ok(())
}

type Filed<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

/// One [`manifest::file`] call, boxed so calls for different entry types run side by side.
fn filed<'a, T: serde::Serialize + Sync>(
    app: &'a App,
    kind: Kind,
    bucket: String,
    batch: &'a str,
    entries: &'a [T],
    budget: &'a Budget,
) -> Filed<'a> {
    Box::pin(manifest::file(app, kind, bucket, batch, entries, budget))
}

fn status_metric(s: TripStatus) -> &'static str {
    match s {
        TripStatus::Completed => "TripsCompletedWithFare",
        TripStatus::Invalid => "TripsInvalid",
        TripStatus::NoFare => "TripsNoFare",
    }
}

/// The trip item an `INSERT`/`MODIFY` record carries, or `None` for anything else.
fn trip_write(r: &EventRecord) -> Option<Result<TripItem, String>> {
    if r.event_name != "INSERT" && r.event_name != "MODIFY" {
        return None;
    }
    let image: Item = match item_from_stream(&r.change.new_image) {
        Ok(i) => i,
        Err(e) => return Some(Err(e)),
    };
    if !table::is_trip(&image) {
        return None;
    }
    Some(table::trip_from_item(&image).map_err(|e| e.to_string()))
}

/// A stream image (DynamoDB JSON) as an SDK item.
pub fn item_from_stream<T: serde::Serialize>(image: &T) -> Result<Item, String> {
    let v = serde_json::to_value(image).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("the image is not an object")?;
    obj.iter()
        .map(|(k, v)| Ok((k.clone(), attribute_from_json(v)?)))
        .collect()
}

/// One DynamoDB-JSON attribute value (`{"S": "x"}`, `{"N": "1"}`, …) as an SDK value.
pub fn attribute_from_json(v: &serde_json::Value) -> Result<AttributeValue, String> {
    let obj = v
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| format!("{v} is not a DynamoDB JSON value"))?;
    let (tag, inner) = obj.iter().next().expect("one entry");
    let text = |x: &serde_json::Value| {
        x.as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{tag} value {x} is not a string"))
    };
    let list = |x: &serde_json::Value| {
        x.as_array()
            .ok_or_else(|| format!("{tag} value {x} is not a list"))
            .and_then(|a| a.iter().map(text).collect::<Result<Vec<_>, _>>())
    };
    use base64::Engine as _;
    let b64 = |s: String| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(aws_sdk_dynamodb::primitives::Blob::new)
            .map_err(|e| e.to_string())
    };
    Ok(match tag.as_str() {
        "S" => AttributeValue::S(text(inner)?),
        "N" => AttributeValue::N(text(inner)?),
        "B" => AttributeValue::B(b64(text(inner)?)?),
        "BOOL" => AttributeValue::Bool(inner.as_bool().ok_or("BOOL is not a boolean")?),
        "NULL" => AttributeValue::Null(true),
        "SS" => AttributeValue::Ss(list(inner)?),
        "NS" => AttributeValue::Ns(list(inner)?),
        "BS" => AttributeValue::Bs(
            list(inner)?
                .into_iter()
                .map(b64)
                .collect::<Result<_, _>>()?,
        ),
        "L" => AttributeValue::L(
            inner
                .as_array()
                .ok_or("L is not a list")?
                .iter()
                .map(attribute_from_json)
                .collect::<Result<_, _>>()?,
        ),
        "M" => AttributeValue::M(
            inner
                .as_object()
                .ok_or("M is not an object")?
                .iter()
                .map(|(k, v)| Ok((k.clone(), attribute_from_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => return Err(format!("unknown DynamoDB type {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripflow_runtime::NativeCore;
    use tripflow_runtime::core::{EventKind, TripEvent};

    fn half(id: &str, kind: EventKind, ts: i64, fare: Option<i64>) -> TripEvent {
        TripEvent {
            trip_id: id.into(),
            kind,
            timestamp_ns: ts,
            fare_cents: fare,
            extras: String::new(),
        }
    }

    #[test]
    fn complete_open_and_orphaned_images_are_filed_apart() {
        let h = table::HOUR_NS;
        let day = 17_956 * 24 * h; // 2019-03-01T00:00Z
        let trip = |id: &str, s: Option<i64>, e: Option<(i64, Option<i64>)>, orphaned| TripItem {
            trip_id: id.into(),
            start: s.map(|ts| half(id, EventKind::Start, day + ts, None)),
            end: e.map(|(ts, fare)| half(id, EventKind::End, day + ts, fare)),
            opened_hour: table::hour_of(day + s.or(e.map(|x| x.0)).unwrap()),
            orphaned,
        };
        let trips = [
            trip("done", Some(h), Some((2 * h, Some(1250))), false),
            trip("late", Some(3 * h), Some((4 * h, Some(700))), true),
            trip("nofare", Some(h), Some((2 * h, None)), false),
            trip("open", Some(5 * h), None, false),
            trip("end-first", None, Some((6 * h, Some(1))), false),
            trip("gone", Some(7 * h), None, true),
        ];
        let f = filing(&mut NativeCore, &trips).unwrap();
        let hour0 = table::hour_of(day);
        assert_eq!(
            f.done,
            BTreeMap::from([(
                "2019-03-01".to_owned(),
                vec![
                    ("done".to_owned(), day + h, 1250),
                    ("late".to_owned(), day + 3 * h, 700)
                ]
            )])
        );
        assert_eq!(
            f.closed.len(),
            3,
            "no-fare trips close too, and are not filed as done"
        );
        assert_eq!(f.reconciled, 1);
        assert_eq!(f.settled[&(hour0 + 1)], ["done", "nofare"]);
        assert_eq!(f.settled[&(hour0 + 3)], ["late"]);
        assert_eq!(
            f.open,
            BTreeMap::from([
                (
                    hour0 + 5,
                    vec![("open".to_owned(), "trip_start".to_owned(), day + 5 * h)]
                ),
                (
                    hour0 + 6,
                    vec![("end-first".to_owned(), "trip_end".to_owned(), day + 6 * h)]
                ),
            ])
        );
    }
}
