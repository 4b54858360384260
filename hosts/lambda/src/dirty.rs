//! Dirty KPI days: which days a completion changed, so the next scheduled KPI run republishes
//! them however late the trip completed (a late end, a backlog, a backfill of old files, an
//! orphan that got its other half).
//!
//! The days a matcher batch changes are the dates of the `DONE` manifests it files: the UTC
//! dates of the starts of the trips that count, as the core's `kpi.day-of` names them. A
//! marker item per UTC date records it:
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

use crate::App;
use crate::ingest::is_condition_failed;
use crate::metrics::units;
use crate::retry::{Budget, describe, retry};
use crate::table::{self, Item};

/// Partition key of the markers.
pub const DIRTY_PK: &str = "DIRTY";
/// The marker counter attribute.
pub const MARKS: &str = "marks";

fn key(pk: &str, sk: &str) -> Item {
    Item::from([
        (table::PK.to_owned(), AttributeValue::S(pk.into())),
        (table::SK.to_owned(), AttributeValue::S(sk.into())),
    ])
}

/// `ADD marks 1` on each `pk`/`sk` marker: dirty days (`DIRTY`/`DAY#<date>`) and the
/// sweeper's hours (`SWEEP`/`HOUR#…`).
pub async fn add_marks(app: &App, pk: &str, sks: &[String], budget: &Budget) -> Result<(), String> {
    for sk in sks {
        let out = retry(budget, "UpdateItem(mark)", || {
            app.ddb
                .update_item()
                .table_name(&app.config.table)
                .set_key(Some(key(pk, sk)))
                .update_expression(format!("ADD {MARKS} :one"))
                .expression_attribute_values(":one", AttributeValue::N("1".into()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
        })
        .await
        .map_err(|e| format!("UpdateItem(mark {pk}/{sk}): {}", describe(&e)))?;
        app.capacity
            .write("marks.add", units(out.consumed_capacity()));
    }
    Ok(())
}

/// A marker as read: its UTC date and its `marks` counter. A scheduled execution of the KPI
/// state machine carries the markers its plan read to its publish step as JSON.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    /// UTC date, `YYYY-MM-DD`.
    pub utc_day: String,
    /// The counter when read.
    pub marks: String,
}

/// Every marker, oldest day first (strongly consistent).
pub async fn pending(app: &App, budget: &Budget) -> Result<Vec<Marker>, String> {
    let mut out = Vec::new();
    for (sk, marks) in marks_under(app, DIRTY_PK, None, budget).await? {
        match sk.strip_prefix("DAY#") {
            Some(day) => out.push(Marker {
                utc_day: day.to_owned(),
                marks,
            }),
            None => tracing::warn!(sk = %sk, "not a dirty-day marker; ignored"),
        }
    }
    Ok(out)
}

/// `(sort key, marks)` of every marker under `pk` (with `upto`, only sort keys ≤ it), in
/// sort-key order, strongly consistent.
pub async fn marks_under(
    app: &App,
    pk: &str,
    upto: Option<&str>,
    budget: &Budget,
) -> Result<Vec<(String, String)>, String> {
    let query = app
        .ddb
        .query()
        .table_name(&app.config.table)
        .expression_attribute_values(":p", AttributeValue::S(pk.into()))
        .consistent_read(true);
    let query = match upto {
        Some(upto) => query
            .key_condition_expression("pk = :p AND sk <= :u")
            .expression_attribute_values(":u", AttributeValue::S(upto.into())),
        None => query.key_condition_expression("pk = :p"),
    };
    let mut out = Vec::new();
    for item in app.query_all("marks.pending", query, budget).await? {
        match (item.get(table::SK), item.get(MARKS)) {
            (Some(AttributeValue::S(sk)), Some(AttributeValue::N(n))) => {
                out.push((sk.clone(), n.clone()))
            }
            _ => tracing::warn!(item = ?item, "not a marker; ignored"),
        }
    }
    Ok(out)
}

/// Deletes a marker unless it was marked again since it was read. Returns whether it went.
pub async fn clear(app: &App, m: &Marker, budget: &Budget) -> Result<bool, String> {
    clear_mark(app, DIRTY_PK, &table::day_pk(&m.utc_day), &m.marks, budget).await
}

/// Deletes the `pk`/`sk` marker if its `marks` is still `marks`. Returns whether it went.
pub async fn clear_mark(
    app: &App,
    pk: &str,
    sk: &str,
    marks: &str,
    budget: &Budget,
) -> Result<bool, String> {
    let r = retry(budget, "DeleteItem(mark)", || {
        app.ddb
            .delete_item()
            .table_name(&app.config.table)
            .set_key(Some(key(pk, sk)))
            .condition_expression(format!("{MARKS} = :m"))
            .expression_attribute_values(":m", AttributeValue::N(marks.to_owned()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await;
    match r {
        Ok(out) => {
            app.capacity
                .write("marks.clear", units(out.consumed_capacity()));
            Ok(true)
        }
        Err(e) if is_condition_failed(&e) => {
            app.capacity.failed_condition("marks.clear");
            Ok(false)
        }
        Err(e) => Err(format!("DeleteItem(mark {pk}/{sk}): {}", describe(&e))),
    }
}
