//! sweeper: open trips older than `ORPHAN_AFTER` → orphaned, through the `open` index only.
//!
//! "Older" is measured in event time, as the CLI's `tripflow sweep` does: back from the
//! newest event ingest has stored (the watermark item), so replaying old data does not orphan
//! everything and a stalled producer does not orphan trips that are merely waiting. The core
//! (`matching.sweep`) decides which candidates are orphans.
//!
//! Before orphaning a trip the sweeper reads its partition once, strongly consistent: if
//! both halves are stored (the matcher's eventually consistent read missed an end written
//! just before its start) it completes the trip instead; if the trip is complete and only a
//! stale open mark is left, it clears the mark. An orphan is marked with `orphaned_at` and
//! leaves the open index; if its other half arrives later the matcher still completes it.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use serde_json::{Value, json};
use tripflow_runtime::core::{EventKind, TripEvent};
use tripflow_runtime::{CoreProvider, TripCore};

use crate::ingest::is_condition_failed;
use crate::matcher::{Completion, clear_open, complete};
use crate::metrics::{Counters, units};
use crate::retry::{Budget, describe, retry};
use crate::{App, Error, dirty, table};

/// Handles one scheduled run.
pub async fn handle(app: &App, budget: &Budget) -> Result<Value, Error> {
    let Some(newest) = watermark(app, budget).await? else {
        tracing::info!("no events stored yet; nothing to sweep");
        return Ok(json!({"newest_ns": null, "orphaned": 0, "reconciled": 0}));
    };
    let older_than = app.config.orphan_after_ns;
    // The index query narrows to candidates; the core makes the call.
    let cut = newest.saturating_sub(older_than);
    let mut candidates: Vec<(String, EventKind, i64)> = Vec::new();
    for b in 0..table::OPEN_BUCKETS {
        let query = app
            .ddb
            .query()
            .table_name(&app.config.table)
            .index_name(table::OPEN_INDEX)
            .key_condition_expression("#o = :o AND #t <= :cut")
            .expression_attribute_names("#o", table::OPEN_PK)
            .expression_attribute_names("#t", table::TS)
            .expression_attribute_values(":o", AttributeValue::S(format!("OPEN#{b}")))
            .expression_attribute_values(":cut", AttributeValue::N(cut.to_string()));
        for item in app.query_all("sweeper.query", query, budget).await? {
            let (trip_id, kind) = table::parse_key(&item)?;
            let ts = match item.get(table::TS) {
                Some(AttributeValue::N(n)) => n.parse()?,
                _ => return Err(format!("{trip_id}: open item without ts").into()),
            };
            candidates.push((trip_id, kind, ts));
        }
    }
    let timestamps: Vec<i64> = candidates.iter().map(|c| c.2).collect();
    let orphans = app
        .core_within(budget)
        .session()?
        .sweep(&timestamps, newest, older_than)?;

    let mut counters = Counters::default();
    for i in orphans {
        let (trip_id, kind, ts) = &candidates[i as usize];
        // One trip that cannot be settled now (throttling past the budget, an unreadable
        // item) must not keep the others open: it stays in the open index for the next run.
        match settle(app, trip_id, *kind, budget).await {
            Ok(Settled::Completed) => counters.add("Reconciled", 1.0),
            Ok(Settled::StaleMark) => counters.add("StaleOpenMarks", 1.0),
            Ok(Settled::Orphaned) => {
                counters.add("Orphaned", 1.0);
                tracing::info!(trip_id = %trip_id, half = kind.as_str(), timestamp_ns = ts, "trip orphaned");
            }
            Err(why) => {
                counters.add("Unsettled", 1.0);
                tracing::error!(trip_id = %trip_id, error = %why, "open trip not settled; the next sweep tries again");
            }
        }
    }
    app.emit(&counters);
    tracing::info!(
        candidates = candidates.len(),
        orphaned = counters.get("Orphaned"),
        reconciled = counters.get("Reconciled"),
        "sweep"
    );
    Ok(json!({
        "newest_ns": newest,
        "candidates": candidates.len(),
        "orphaned": counters.get("Orphaned") as u64,
        "reconciled": counters.get("Reconciled") as u64,
        "stale_open_marks": counters.get("StaleOpenMarks") as u64,
        "unsettled": counters.get("Unsettled") as u64,
    }))
}

enum Settled {
    Completed,
    StaleMark,
    Orphaned,
}

/// Reads the trip's partition (strongly consistent) and completes, clears or orphans it.
async fn settle(
    app: &App,
    trip_id: &str,
    kind: EventKind,
    budget: &Budget,
) -> Result<Settled, Error> {
    let out = retry(budget, "Query(trip)", || {
        app.ddb
            .query()
            .table_name(&app.config.table)
            .key_condition_expression("pk = :p")
            .expression_attribute_values(":p", AttributeValue::S(table::trip_pk(trip_id)))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await
    .map_err(|e| format!("Query(trip): {}", describe(&e)))?;
    app.capacity
        .read("sweeper.settle", units(out.consumed_capacity()));
    let (mut start, mut end): (Option<(TripEvent, bool)>, Option<TripEvent>) = (None, None);
    for item in out.items() {
        let e = table::event_from_item(item)?;
        match e.kind {
            EventKind::Start => start = Some((e, item.contains_key(table::END_TS))),
            EventKind::End => end = Some(e),
        }
    }
    // A trip completed here (or found complete with a stale open mark) has its KPI day marked
    // dirty *before* its end leaves the open index: if the sweeper dies in between, the next
    // run finds the stale mark again and marks the day again, so no late completion goes
    // unpublished.
    match (start, end) {
        (Some((start, true)), Some(end)) if kind == EventKind::End => {
            let trip = app
                .core_within(budget)
                .session()
                .and_then(|mut c| c.pair(&start, &end))?;
            dirty::mark(app, std::slice::from_ref(&trip), budget).await?;
            clear_open(app, &end, budget).await;
            Ok(Settled::StaleMark)
        }
        (Some((_, false)), Some(end)) => match complete(app, &end, budget).await? {
            done @ (Completion::Completed(_) | Completion::AlreadyComplete(_)) => {
                let trip = done.trip().cloned();
                dirty::mark(app, trip.as_slice(), budget).await?;
                clear_open(app, &end, budget).await;
                Ok(Settled::Completed)
            }
            Completion::NoStart => Err(format!("{trip_id}: start vanished while settling").into()),
        },
        _ => {
            orphan(app, trip_id, kind, budget).await?;
            Ok(Settled::Orphaned)
        }
    }
}

async fn orphan(app: &App, trip_id: &str, kind: EventKind, budget: &Budget) -> Result<(), Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let r = retry(budget, "UpdateItem(orphan)", || {
        app.ddb
            .update_item()
            .table_name(&app.config.table)
            .set_key(Some(table::event_key(trip_id, kind)))
            .update_expression(format!(
                "SET {} = :now REMOVE {}",
                table::ORPHANED_AT,
                table::OPEN_PK
            ))
            .condition_expression(format!(
                "attribute_exists({}) AND attribute_not_exists({})",
                table::OPEN_PK,
                table::END_TS
            ))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await;
    match r {
        Ok(out) => {
            app.capacity
                .write("sweeper.orphan", units(out.consumed_capacity()));
            Ok(())
        }
        // Completed or orphaned meanwhile.
        Err(e) if is_condition_failed(&e) => {
            app.capacity.failed_condition("sweeper.orphan");
            Ok(())
        }
        Err(e) => Err(format!("UpdateItem(orphan): {}", describe(&e)).into()),
    }
}

/// The newest event time ingest has stored.
async fn watermark(app: &App, budget: &Budget) -> Result<Option<i64>, Error> {
    let out = retry(budget, "GetItem(watermark)", || {
        app.ddb
            .get_item()
            .table_name(&app.config.table)
            .set_key(Some(table::watermark_key()))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await
    .map_err(|e| format!("GetItem(watermark): {}", describe(&e)))?;
    app.capacity
        .read("sweeper.watermark", units(out.consumed_capacity()));
    Ok(match out.item().and_then(|i| i.get(table::NEWEST_NS)) {
        Some(AttributeValue::N(n)) => Some(n.parse()?),
        _ => None,
    })
}
