//! matcher: the table's stream (INSERTs of event items) → completed trips, exactly once.
//!
//! The event source mapping's filter passes only `INSERT`s of `EVENT#…` items, so the
//! matcher's own updates (MODIFY), deletes and TTL expiries (REMOVE) never reach it; the
//! handler checks again and skips anything else.
//!
//! Both halves of a trip share a partition key, so their stream records are in one shard, in
//! write order, and whichever half is *processed* second finds the first:
//! - **an end** completes the trip with one conditional update of the start item
//!   ([`table::completion`] under [`table::COMPLETE_CONDITION`]): no read. The update returns
//!   the start, and the core pairs the two (`matching.pair`) for the log and the metrics. If
//!   the condition fails because the start is not there yet, the end is added to the open
//!   index; if it fails because the trip is complete, this is a redelivery.
//! - **a start** reads its end (one eventually consistent `GetItem`, ½ read unit) and
//!   completes the trip if the end is already stored (it arrived first). If that read misses
//!   an end written just before, both halves stay in the open index and the sweeper pairs
//!   them with a strongly consistent read before it would orphan either.
//! - both halves in one batch: one update, no read.
//!
//! The conditional update is the exactly-once point: however many invocations race, only one
//! update finds `end_ts` absent.
//!
//! Before the batch is acknowledged, the KPI days its completions touched are marked dirty
//! ([`dirty::mark`]), so the next KPI run republishes them however late the trip completed. A
//! redelivered batch finds its trips complete (the failed condition hands the trip back) and
//! marks their days again, so a mark that failed is never lost.

use std::collections::HashMap;

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnConsumedCapacity, ReturnValue, ReturnValuesOnConditionCheckFailure,
};
use tripflow_runtime::core::{ClosedTrip, EventKind, TripEvent, TripStatus};
use tripflow_runtime::{CoreProvider, TripCore};

use crate::ingest::is_condition_failed;
use crate::metrics::{Counters, units};
use crate::retry::{Budget, describe, retry};
use crate::table::{self, Item};
use crate::{App, Error, dirty};

/// How an attempt to complete a trip ended.
#[derive(Debug)]
pub enum Completion {
    /// This call completed the trip; the core's verdict on it.
    Completed(ClosedTrip),
    /// It was complete already (a redelivery, or the other half's invocation won); the trip
    /// as stored, when the item could be read back.
    AlreadyComplete(Option<ClosedTrip>),
    /// The start is not stored.
    NoStart,
}

impl Completion {
    /// The trip, if it is complete.
    pub fn trip(&self) -> Option<&ClosedTrip> {
        match self {
            Completion::Completed(t) | Completion::AlreadyComplete(Some(t)) => Some(t),
            _ => None,
        }
    }
}

/// Handles one batch of stream records.
pub async fn handle(
    app: &App,
    event: Event,
    budget: &Budget,
) -> Result<DynamoDbEventResponse, Error> {
    let mut counters = Counters::default();
    // Halves per trip, in the order the trips first appear.
    let mut trips: Vec<(String, Option<TripEvent>, Option<TripEvent>, usize)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, r) in event.records.iter().enumerate() {
        let Some(e) = insert_of_event(r) else {
            counters.add("Skipped", 1.0);
            continue;
        };
        let e = match e {
            Ok(e) => e,
            Err(why) => {
                // Not an item ingest writes; retrying cannot help.
                tracing::error!(event_id = %r.event_id, error = %why, "unreadable event item skipped");
                counters.add("Skipped", 1.0);
                continue;
            }
        };
        counters.add("Inserts", 1.0);
        let slot = *index.entry(e.trip_id.clone()).or_insert_with(|| {
            trips.push((e.trip_id.clone(), None, None, i));
            trips.len() - 1
        });
        match e.kind {
            EventKind::Start => trips[slot].1 = Some(e),
            EventKind::End => trips[slot].2 = Some(e),
        }
    }

    let mut first_failure: Option<usize> = None;
    let mut touched: Vec<ClosedTrip> = Vec::new();
    for (trip_id, start, end, first_record) in &trips {
        let outcome = match (start, end) {
            (Some(_), Some(end)) => complete(app, end, budget).await.map(Some),
            (None, Some(end)) => match complete(app, end, budget).await {
                Ok(Completion::NoStart) => mark_open(app, end, budget).await.map(|_| None),
                other => other.map(Some),
            },
            (Some(start), None) => match read_end(app, start, budget).await {
                Ok(Some((end, end_open))) => {
                    let done = complete(app, &end, budget).await;
                    if end_open && done.is_ok() {
                        clear_open(app, &end, budget).await;
                    }
                    done.map(Some)
                }
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            },
            (None, None) => unreachable!("a trip is recorded with one half at least"),
        };
        if let Ok(Some(c)) = &outcome
            && let Some(t) = c.trip()
        {
            touched.push(t.clone());
        }
        match outcome {
            Ok(Some(Completion::Completed(trip))) => {
                counters.add("TripsCompleted", 1.0);
                counters.add(status_metric(trip.status), 1.0);
            }
            Ok(Some(Completion::AlreadyComplete(_))) => counters.add("AlreadyComplete", 1.0),
            Ok(Some(Completion::NoStart)) | Ok(None) => counters.add("LeftOpen", 1.0),
            Err(why) => {
                tracing::error!(trip_id = %trip_id, error = %why, "trip not matched; the stream will redeliver");
                first_failure = Some(first_failure.map_or(*first_record, |f| f.min(*first_record)));
            }
        }
    }

    // The KPI days these completions changed, before the batch is acknowledged. If marking
    // fails, the whole batch comes back: its trips are found complete and marked again.
    match dirty::mark(app, &touched, budget).await {
        Ok(days) => counters.add("DirtyDaysMarked", days as f64),
        Err(why) => {
            tracing::error!(error = %why, "KPI days not marked dirty; the stream will redeliver");
            first_failure = trips.iter().map(|t| t.3).min();
        }
    }

    let mut response = DynamoDbEventResponse::default();
    if let Some(i) = first_failure {
        let mut f = DynamoDbBatchItemFailure::default();
        f.item_identifier = event.records[i].change.sequence_number.clone();
        response.batch_item_failures.push(f);
        counters.add("Failed", 1.0);
    }
    tracing::info!(
        records = event.records.len(),
        completed = counters.get("TripsCompleted"),
        left_open = counters.get("LeftOpen"),
        already_complete = counters.get("AlreadyComplete"),
        "matcher batch"
    );
    app.emit(&counters);
    Ok(response)
}

fn status_metric(s: TripStatus) -> &'static str {
    match s {
        TripStatus::Completed => "TripsCompletedWithFare",
        TripStatus::Invalid => "TripsInvalid",
        TripStatus::NoFare => "TripsNoFare",
    }
}

/// The event an INSERT record carries, or `None` for anything the matcher does not handle.
fn insert_of_event(r: &EventRecord) -> Option<Result<TripEvent, String>> {
    if r.event_name != "INSERT" {
        return None;
    }
    let image = match item_from_stream(&r.change.new_image) {
        Ok(i) => i,
        Err(e) => return Some(Err(e)),
    };
    match image.get(table::SK) {
        Some(AttributeValue::S(sk)) if sk.starts_with("EVENT#") => {}
        _ => return None,
    }
    Some(table::event_from_item(&image).map_err(|e| e.to_string()))
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

/// Completes the trip of `end` with one conditional update of its start item.
pub async fn complete(app: &App, end: &TripEvent, budget: &Budget) -> Result<Completion, String> {
    let (expr, values) = table::completion(end);
    let r = retry(budget, "UpdateItem(complete)", || {
        app.ddb
            .update_item()
            .table_name(&app.config.table)
            .set_key(Some(table::event_key(&end.trip_id, EventKind::Start)))
            .update_expression(&expr)
            .condition_expression(table::COMPLETE_CONDITION)
            .set_expression_attribute_values(Some(values.clone()))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await;
    match r {
        Ok(out) => {
            app.capacity
                .write("matcher.complete", units(out.consumed_capacity()));
            let start = out
                .attributes()
                .ok_or("the update returned no item")
                .and_then(|i| {
                    table::event_from_item(i).map_err(|_| "the start item is unreadable")
                })?;
            let trip = app
                .core_within(budget)
                .session()
                .and_then(|mut c| c.pair(&start, end))
                .map_err(|e| e.to_string())?;
            tracing::debug!(trip_id = %trip.trip_id, status = trip.status.as_str(), "trip completed");
            Ok(Completion::Completed(trip))
        }
        Err(SdkError::ServiceError(s))
            if matches!(s.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
        {
            app.capacity.failed_condition("matcher.complete");
            let UpdateItemError::ConditionalCheckFailedException(c) = s.err() else {
                unreachable!()
            };
            Ok(match c.item() {
                Some(item) => Completion::AlreadyComplete(stored_trip(app, item, budget)),
                None => Completion::NoStart,
            })
        }
        Err(e) => Err(format!("UpdateItem(complete): {}", describe(&e))),
    }
}

/// The closed trip a completed start item holds, as the core pairs it.
fn stored_trip(app: &App, item: &Item, budget: &Budget) -> Option<ClosedTrip> {
    let start = table::event_from_item(item).ok()?;
    let end = table::end_from_trip_item(item).ok()??;
    app.core_within(budget)
        .session()
        .and_then(|mut c| c.pair(&start, &end))
        .ok()
}

/// The stored end of `start`'s trip (eventually consistent) and whether it is in the open
/// index.
async fn read_end(
    app: &App,
    start: &TripEvent,
    budget: &Budget,
) -> Result<Option<(TripEvent, bool)>, String> {
    let out = retry(budget, "GetItem(end)", || {
        app.ddb
            .get_item()
            .table_name(&app.config.table)
            .set_key(Some(table::event_key(&start.trip_id, EventKind::End)))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await
    .map_err(|e| format!("GetItem(end): {}", describe(&e)))?;
    app.capacity
        .read("matcher.read_end", units(out.consumed_capacity()));
    match out.item() {
        None => Ok(None),
        Some(item) => {
            let end = table::event_from_item(item).map_err(|e| e.to_string())?;
            Ok(Some((end, item.contains_key(table::OPEN_PK))))
        }
    }
}

/// Adds an end whose start is not stored to the open index.
async fn mark_open(app: &App, end: &TripEvent, budget: &Budget) -> Result<(), String> {
    let r = retry(budget, "UpdateItem(open)", || {
        app.ddb
            .update_item()
            .table_name(&app.config.table)
            .set_key(Some(table::event_key(&end.trip_id, EventKind::End)))
            .update_expression(format!("SET {} = :o", table::OPEN_PK))
            .condition_expression(format!(
                "attribute_exists(pk) AND attribute_not_exists({})",
                table::OPEN_PK
            ))
            .expression_attribute_values(":o", AttributeValue::S(table::open_pk(&end.trip_id)))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await;
    match r {
        Ok(out) => {
            app.capacity
                .write("matcher.mark_open", units(out.consumed_capacity()));
            Ok(())
        }
        Err(e) if is_condition_failed(&e) => {
            app.capacity.failed_condition("matcher.mark_open");
            Ok(())
        }
        Err(e) => Err(format!("UpdateItem(open): {}", describe(&e))),
    }
}

/// Takes an end out of the open index once its trip is complete (best effort: the sweeper
/// clears what this misses).
pub async fn clear_open(app: &App, half: &TripEvent, budget: &Budget) {
    let r = retry(budget, "UpdateItem(clear open)", || {
        app.ddb
            .update_item()
            .table_name(&app.config.table)
            .set_key(Some(table::event_key(&half.trip_id, half.kind)))
            .update_expression(format!("REMOVE {}", table::OPEN_PK))
            .condition_expression("attribute_exists(pk)")
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await;
    match r {
        Ok(out) => app
            .capacity
            .write("matcher.clear_open", units(out.consumed_capacity())),
        Err(e) => {
            tracing::warn!(trip_id = %half.trip_id, error = %describe(&e), "open mark not cleared")
        }
    }
}
