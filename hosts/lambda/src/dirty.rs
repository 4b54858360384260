//! Dirty KPI days: which days a completion changed, so the next scheduled KPI run republishes
//! them however late the trip completed (a late end, a backlog, a backfill of old files, a
//! reconciliation by the sweeper, an orphan that got its other half).
//!
//! The core decides which days a set of completed trips touches (`kpi.utc-days-touched`: the
//! UTC dates of their starts, the partitions of the `kpi` index); a marker item per UTC date
//! records it:
//!
//! | item        | `pk`    | `sk`             | attributes                                   |
//! |-------------|---------|------------------|----------------------------------------------|
//! | dirty day   | `DIRTY` | `DAY#<UTC date>` | `marks` (number: `ADD 1` per marking batch)  |
//!
//! Marking is one `UpdateItem` per distinct day per matcher batch (not per trip), and it is
//! done before the batch is acknowledged, so a failed mark is retried with the batch. The KPI
//! job reads the markers (one query), republishes the local days they overlap
//! (`kpi.local-days`), then deletes each marker on the condition that `marks` is still what it
//! read: a day marked again during the run stays dirty for the next run.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use tripflow_runtime::core::{ClosedTrip, TripFare};
use tripflow_runtime::{CoreProvider, TripCore};

use crate::App;
use crate::ingest::is_condition_failed;
use crate::metrics::units;
use crate::retry::{Budget, describe, retry};
use crate::table::{self, Item};

/// Partition key of the markers.
pub const DIRTY_PK: &str = "DIRTY";
/// The marker counter attribute.
pub const MARKS: &str = "marks";

fn key(utc_day: &str) -> Item {
    Item::from([
        (table::PK.to_owned(), AttributeValue::S(DIRTY_PK.into())),
        (
            table::SK.to_owned(),
            AttributeValue::S(table::day_pk(utc_day)),
        ),
    ])
}

/// Marks the days the `trips` touch (the core decides which); returns how many were marked.
pub async fn mark(app: &App, trips: &[ClosedTrip], budget: &Budget) -> Result<usize, String> {
    if trips.is_empty() {
        return Ok(0);
    }
    let fares: Vec<TripFare> = trips.iter().map(TripFare::from).collect();
    let days = app
        .core_within(budget)
        .session()
        .and_then(|mut c| c.utc_days_touched(&fares))
        .map_err(|e| e.to_string())?;
    for day in &days {
        let out = retry(budget, "UpdateItem(dirty)", || {
            app.ddb
                .update_item()
                .table_name(&app.config.table)
                .set_key(Some(key(day)))
                .update_expression(format!("ADD {MARKS} :one"))
                .expression_attribute_values(":one", AttributeValue::N("1".into()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
        })
        .await
        .map_err(|e| format!("UpdateItem(dirty {day}): {}", describe(&e)))?;
        app.capacity
            .write("dirty.mark", units(out.consumed_capacity()));
    }
    Ok(days.len())
}

/// A marker as read: its UTC date and its `marks` counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// UTC date, `YYYY-MM-DD`.
    pub utc_day: String,
    /// The counter when read.
    pub marks: String,
}

/// Every marker, oldest day first (strongly consistent).
pub async fn pending(app: &App, budget: &Budget) -> Result<Vec<Marker>, String> {
    let query = app
        .ddb
        .query()
        .table_name(&app.config.table)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", AttributeValue::S(DIRTY_PK.into()))
        .consistent_read(true);
    let mut out = Vec::new();
    for item in app.query_all("dirty.pending", query, budget).await? {
        let day = match item.get(table::SK) {
            Some(AttributeValue::S(sk)) => sk.strip_prefix("DAY#").map(str::to_owned),
            _ => None,
        };
        let marks = match item.get(MARKS) {
            Some(AttributeValue::N(n)) => Some(n.clone()),
            _ => None,
        };
        match (day, marks) {
            (Some(utc_day), Some(marks)) => out.push(Marker { utc_day, marks }),
            _ => tracing::warn!(item = ?item, "not a dirty-day marker; ignored"),
        }
    }
    Ok(out)
}

/// Deletes a marker unless it was marked again since it was read. Returns whether it went.
pub async fn clear(app: &App, m: &Marker, budget: &Budget) -> Result<bool, String> {
    let r = retry(budget, "DeleteItem(dirty)", || {
        app.ddb
            .delete_item()
            .table_name(&app.config.table)
            .set_key(Some(key(&m.utc_day)))
            .condition_expression(format!("{MARKS} = :m"))
            .expression_attribute_values(":m", AttributeValue::N(m.marks.clone()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await;
    match r {
        Ok(out) => {
            app.capacity
                .write("dirty.clear", units(out.consumed_capacity()));
            Ok(true)
        }
        Err(e) if is_condition_failed(&e) => {
            app.capacity.failed_condition("dirty.clear");
            Ok(false)
        }
        Err(e) => Err(format!("DeleteItem(dirty {}): {}", m.utc_day, describe(&e))),
    }
}
