//! matcher: the table's stream → completed trips filed for the KPI job, open trips filed for
//! the sweeper.
//!
//! A trip is one item, and the ingest write that stores its second half completes it (see
//! [`crate::table`]): exactly one write can, whatever the concurrency, and its stream record
//! carries the whole trip (`NEW_IMAGE`). The matcher therefore reads nothing. For each batch
//! of stream records (the event source mapping passes only `INSERT`/`MODIFY` of trip items;
//! the handler checks again) it takes each trip's latest image in the batch and:
//! - **both halves stored**: the core pairs them, all the batch's trips in one call
//!   (`matching.pair-all`); the trip is filed as settled under its opened hour, and as done,
//!   with its status, under the UTC date the core names; the days whose KPIs the batch's trips
//!   change (`kpi.utc-days-touched`) are marked dirty. Whether a trip counts is the core's
//!   call, here and in the KPI job. A trip the sweeper had orphaned is completed all the same
//!   (a reconciliation);
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
use tripflow_runtime::core::{ClosedTrip, TripEvent, TripFare, TripStatus};
use tripflow_runtime::{CoreError, CoreProvider, TripCore};

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
    /// Every trip closed in the batch, by UTC date of the start.
    pub done: BTreeMap<String, Vec<DoneEntry>>,
    /// The UTC dates whose KPIs the batch's closed trips change: the days to mark dirty.
    pub dirty: Vec<String>,
    /// Every trip completed in the batch, as the core closed it.
    pub closed: Vec<ClosedTrip>,
    /// Completed trips the sweeper had orphaned.
    pub reconciled: usize,
}

/// What the core says about the latest image of each trip in a batch: two calls, whatever the
/// batch's size.
pub fn filing<C: TripCore>(core: &mut C, trips: &[TripItem]) -> Result<Filing, Error> {
    let mut f = Filing::default();
    let mut both: Vec<&TripItem> = Vec::new();
    let mut halves: Vec<(TripEvent, TripEvent)> = Vec::new();
    for t in trips {
        match (&t.start, &t.end) {
            (Some(start), Some(end)) => {
                both.push(t);
                halves.push((start.clone(), end.clone()));
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
    if halves.is_empty() {
        return Ok(f);
    }
    let paired = core.pair_all(&halves)?;
    if paired.len() != both.len() {
        return Err(Error::Core(CoreError::Trapped {
            message: format!(
                "the core paired {} of the batch's {} trips",
                paired.len(),
                both.len()
            ),
            stderr: String::new(),
        }));
    }
    for (t, p) in both.into_iter().zip(paired) {
        f.settled
            .entry(t.opened_hour)
            .or_default()
            .push(t.trip_id.clone());
        if t.orphaned {
            f.reconciled += 1;
        }
        f.done
            .entry(p.utc_day)
            .or_default()
            .push(DoneEntry::from(&p.trip));
        f.closed.push(p.trip);
    }
    let fares: Vec<TripFare> = f.closed.iter().map(TripFare::from).collect();
    f.dirty = core.utc_days_touched(&fares)?;
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
            counters.add("DirtyDaysMarked", f.dirty.len() as f64);
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
    // The dirty days are the UTC dates the core says the batch's trips change.
    futures_util::future::try_join(
        table::add_marks(app, manifest::SWEEP_PK, &hours, budget),
        dirty::mark(app, &f.dirty, budget),
    )
    .await?;
    Ok(())
}

type Filed<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send + 'a>>;

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
fn trip_write(r: &EventRecord) -> Option<Result<TripItem, table::ItemError>> {
    if r.event_name != "INSERT" && r.event_name != "MODIFY" {
        return None;
    }
    // The stream's image as the SDK's item (serde_dynamo, which also reads the image).
    let image = Item::from(r.change.new_image.clone());
    if !table::is_trip(&image) {
        return None;
    }
    Some(table::trip_from_item(&image))
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
        let entry = |id: &str, start: i64, fare, status| DoneEntry {
            trip_id: id.to_owned(),
            start_ns: day + start,
            fare_cents: fare,
            status,
        };
        assert_eq!(
            f.done,
            BTreeMap::from([(
                "2019-03-01".to_owned(),
                vec![
                    entry("done", h, Some(1250), TripStatus::Completed),
                    entry("late", 3 * h, Some(700), TripStatus::Completed),
                    entry("nofare", h, None, TripStatus::NoFare),
                ]
            )])
        );
        assert_eq!(f.dirty, ["2019-03-01"]);
        assert_eq!(f.closed.len(), 3, "no-fare trips close too");
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

    #[test]
    fn a_batch_whose_trips_do_not_count_marks_no_day_dirty() {
        let day = 17_956 * 24 * table::HOUR_NS;
        let trip = TripItem {
            trip_id: "backwards".into(),
            start: Some(half("backwards", EventKind::Start, day + 10, Some(500))),
            end: Some(half("backwards", EventKind::End, day, Some(500))),
            opened_hour: table::hour_of(day),
            orphaned: false,
        };
        let f = filing(&mut NativeCore, &[trip]).unwrap();
        assert_eq!(f.done["2019-03-01"][0].status, TripStatus::Invalid);
        assert!(f.dirty.is_empty(), "{:?}", f.dirty);
    }

    #[test]
    fn done_entries_read_back_as_filed_and_completed_ones_stay_short() {
        // The short form: what every entry filed before 0.6.0 is, and a completed trip now.
        let old: Vec<DoneEntry> = serde_json::from_str(r#"[["a",5,1250]]"#).unwrap();
        assert_eq!(old[0].status, TripStatus::Completed);
        assert_eq!(old[0].fare_cents, Some(1250));
        assert_eq!(serde_json::to_string(&old).unwrap(), r#"[["a",5,1250]]"#);
        let new = DoneEntry {
            trip_id: "b".into(),
            start_ns: 7,
            fare_cents: None,
            status: TripStatus::NoFare,
        };
        let json = serde_json::to_string(&[&new]).unwrap();
        assert_eq!(json, r#"[["b",7,null,"no_fare"]]"#);
        let back: Vec<DoneEntry> = serde_json::from_str(&json).unwrap();
        assert_eq!(back[0], new);
        let bad = serde_json::from_str::<Vec<DoneEntry>>(r#"[["c",7,null,"lost"]]"#);
        assert!(bad.is_err());
    }
}
