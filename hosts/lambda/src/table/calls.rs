//! Every call the functions make to the table: each retried within the invocation's budget,
//! its capacity recorded under a name, and its failure an [`Error`] that names the call. The
//! handlers say what to write and read; how is here.

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnConsumedCapacity, ReturnValuesOnConditionCheckFailure,
};
use tripflow_runtime::core::{EventKind, TripEvent};

use super::{
    EXPIRES_AT, Item, NEWEST_NS, ORPHANED_AT, PK, SK, half, store_half, stored_half, trip_key,
    watermark_key,
};
use std::sync::Arc;

use crate::metrics::{Capacity, units};
use crate::retry::{Budget, describe, is_transient, retry};
use crate::{App, Error};

/// The counter attribute of a marker item (dirty days, sweep hours).
pub const MARKS: &str = "marks";

/// How the conditional write of one first copy ended.
#[derive(Clone, Debug)]
pub enum PutOutcome {
    /// Written: this is the stored copy now.
    Stored,
    /// The key holds this very record (same shard and sequence number), written by an earlier
    /// delivery of the batch that was not checkpointed (a killed or timed-out invocation):
    /// counted as stored, as the replay counts the record once.
    StoredBefore,
    /// The key was taken; the stored copy came back with the failed condition.
    Taken(TripEvent),
    /// DynamoDB refused the item itself (a 4xx other than the condition); a per-record
    /// outcome, kept on the DLQ with the service's message. With the contract's record limit
    /// every valid event fits an item, so this is a last line of defence that should never be
    /// taken.
    Refused(String),
    /// Not written within the retry budget (throttling, 5xx, time-outs).
    Failed(String),
}

/// What a write of a trip's half needs: cheap to clone and `'static`, so that the ingest's
/// writes run as tasks of their own, side by side on the runtime's threads.
#[derive(Clone, Debug)]
pub struct HalfWriter {
    ddb: aws_sdk_dynamodb::Client,
    table: String,
    capacity: Arc<Capacity>,
    expires_at: Option<i64>,
}

impl HalfWriter {
    /// The writer of `app`'s table; items it writes expire at `app.expires_at()`.
    pub fn of(app: &App) -> HalfWriter {
        HalfWriter {
            ddb: app.ddb.clone(),
            table: app.config.table.clone(),
            capacity: Arc::clone(&app.capacity),
            expires_at: app.expires_at(),
        }
    }

    /// Stores `e` (the record `source`, `<shard>/<sequence number>`) as its half of its trip's
    /// item, if that half is not stored yet ([`store_half`]); a failed condition hands back the
    /// stored item, so no read is needed to learn what is stored.
    pub async fn write(&self, e: &TripEvent, source: &str, budget: &Budget) -> PutOutcome {
        let store = store_half(e, source, self.expires_at);
        let r = retry(budget, "UpdateItem(half)", || {
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(trip_key(&e.trip_id)))
                .update_expression(&store.update)
                .set_expression_attribute_values(Some(store.values.clone()))
                .condition_expression(&store.condition)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
        })
        .await;
        match r {
            Ok(out) => {
                self.capacity
                    .write("ingest.store", units(out.consumed_capacity()));
                PutOutcome::Stored
            }
            Err(SdkError::ServiceError(s))
                if matches!(s.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
            {
                self.capacity.failed_condition("ingest.store");
                let UpdateItemError::ConditionalCheckFailedException(c) = s.err() else {
                    unreachable!()
                };
                match c.item().map(|item| stored_half(item, e.kind)) {
                    Some(Ok(Some((_, stored_src)))) if stored_src == source => {
                        PutOutcome::StoredBefore
                    }
                    Some(Ok(Some((stored, _)))) => PutOutcome::Taken(stored),
                    Some(Ok(None)) => {
                        PutOutcome::Failed("condition failed but the half is not stored".into())
                    }
                    Some(Err(bad)) => PutOutcome::Failed(bad.to_string()),
                    None => PutOutcome::Failed("condition failed without the stored item".into()),
                }
            }
            Err(err) if !is_transient(&err) && matches!(err, SdkError::ServiceError(_)) => {
                PutOutcome::Refused(format!("DynamoDB refused the item: {}", describe(&err)))
            }
            Err(err) => PutOutcome::Failed(format!("UpdateItem: {}", describe(&err))),
        }
    }
}

/// Raises the watermark (the newest event time stored) to `newest`; a newer one stays.
pub async fn raise_watermark(app: &App, newest: i64, budget: &Budget) -> Result<(), Error> {
    let r = retry(budget, "UpdateItem(watermark)", || {
        app.ddb
            .update_item()
            .table_name(&app.config.table)
            .set_key(Some(watermark_key()))
            .update_expression(format!("SET {NEWEST_NS} = :n"))
            .condition_expression(format!(
                "attribute_not_exists({NEWEST_NS}) OR {NEWEST_NS} < :n"
            ))
            .expression_attribute_values(":n", AttributeValue::N(newest.to_string()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await;
    match r {
        Ok(out) => {
            app.capacity
                .write("ingest.watermark", units(out.consumed_capacity()));
            Ok(())
        }
        Err(e) if is_condition_failed(&e) => {
            app.capacity.failed_condition("ingest.watermark");
            Ok(())
        }
        Err(e) => Err(Error::aws("UpdateItem(watermark)", &e)),
    }
}

/// The watermark: the newest event time ingest has stored, if any (strongly consistent).
pub async fn watermark(app: &App, budget: &Budget) -> Result<Option<i64>, Error> {
    let out = retry(budget, "GetItem(watermark)", || {
        app.ddb
            .get_item()
            .table_name(&app.config.table)
            .set_key(Some(watermark_key()))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await
    .map_err(|e| Error::aws("GetItem(watermark)", &e))?;
    app.capacity
        .read("sweeper.watermark", units(out.consumed_capacity()));
    match out.item().and_then(|i| i.get(NEWEST_NS)) {
        Some(AttributeValue::N(n)) => n
            .parse()
            .map(Some)
            .map_err(|_| Error::Unreadable(format!("the watermark item's {NEWEST_NS} is {n:?}"))),
        _ => Ok(None),
    }
}

/// Marks an orphan: `SET orphaned_at = run_ns` on the trip's item, if it exists, its other
/// half is absent and it is not orphaned yet.
pub async fn orphan(
    app: &App,
    trip_id: &str,
    kind: EventKind,
    run_ns: i64,
    budget: &Budget,
) -> Result<Orphaning, Error> {
    let other = half(kind.other()).ts;
    let r = retry(budget, "UpdateItem(orphan)", || {
        app.ddb
            .update_item()
            .table_name(&app.config.table)
            .set_key(Some(trip_key(trip_id)))
            .update_expression(format!("SET {ORPHANED_AT} = :run"))
            .condition_expression(format!(
                "attribute_exists(pk) AND attribute_not_exists({other}) AND attribute_not_exists({ORPHANED_AT})"
            ))
            .expression_attribute_values(":run", AttributeValue::N(run_ns.to_string()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await;
    match r {
        Ok(out) => {
            app.capacity
                .write("sweeper.orphan", units(out.consumed_capacity()));
            Ok(Orphaning::Orphaned)
        }
        Err(SdkError::ServiceError(s))
            if matches!(s.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
        {
            app.capacity.failed_condition("sweeper.orphan");
            let UpdateItemError::ConditionalCheckFailedException(c) = s.err() else {
                unreachable!()
            };
            let Some(item) = c.item() else {
                return Err(Error::Unreadable(format!(
                    "{trip_id}: filed as open but not stored (expired?)"
                )));
            };
            if item.contains_key(other) {
                Ok(Orphaning::Completed)
            } else if item.get(ORPHANED_AT) == Some(&AttributeValue::N(run_ns.to_string())) {
                // This run's own write, whose response was lost.
                Ok(Orphaning::Orphaned)
            } else {
                Ok(Orphaning::Before)
            }
        }
        Err(e) => Err(Error::aws("UpdateItem(orphan)", &e)),
    }
}

/// How [`orphan`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orphaning {
    /// This run orphaned it.
    Orphaned,
    /// An earlier run did.
    Before,
    /// Its other half is stored: the matcher files it.
    Completed,
}

/// `ADD marks 1` on each `pk`/`sk` marker: dirty days (`DIRTY`/`DAY#<date>`) and the
/// sweeper's hours (`SWEEP`/`HOUR#…`).
pub async fn add_marks(app: &App, pk: &str, sks: &[String], budget: &Budget) -> Result<(), Error> {
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
        .map_err(|e| Error::aws(format!("UpdateItem(mark {pk}/{sk})"), &e))?;
        app.capacity
            .write("marks.add", units(out.consumed_capacity()));
    }
    Ok(())
}

/// `(sort key, marks)` of every marker under `pk` (with `upto`, only sort keys ≤ it), in
/// sort-key order, strongly consistent.
pub async fn marks_under(
    app: &App,
    pk: &str,
    upto: Option<&str>,
    budget: &Budget,
) -> Result<Vec<(String, String)>, Error> {
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
    for item in query_all(app, "marks.pending", query, budget).await? {
        match (item.get(SK), item.get(MARKS)) {
            (Some(AttributeValue::S(sk)), Some(AttributeValue::N(n))) => {
                out.push((sk.clone(), n.clone()))
            }
            _ => tracing::warn!(item = ?item, "not a marker; ignored"),
        }
    }
    Ok(out)
}

/// Deletes the `pk`/`sk` marker if its `marks` is still `marks`. Returns whether it went.
pub async fn clear_mark(
    app: &App,
    pk: &str,
    sk: &str,
    marks: &str,
    budget: &Budget,
) -> Result<bool, Error> {
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
        Err(e) => Err(Error::aws(format!("DeleteItem(mark {pk}/{sk})"), &e)),
    }
}

/// Writes a manifest item (`pk`, `sk`, `attribute` = `json`), expiring at `expires_at`.
pub async fn put_manifest(
    app: &App,
    (pk, sk): (String, String),
    (attribute, json): (&str, String),
    expires_at: Option<i64>,
    budget: &Budget,
) -> Result<(), Error> {
    let mut item = key(&pk, &sk);
    item.insert(attribute.to_owned(), AttributeValue::S(json));
    if let Some(t) = expires_at {
        item.insert(EXPIRES_AT.into(), AttributeValue::N(t.to_string()));
    }
    let out = retry(budget, "PutItem(manifest)", || {
        app.ddb
            .put_item()
            .table_name(&app.config.table)
            .set_item(Some(item.clone()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await
    .map_err(|e| Error::aws(format!("PutItem(manifest {pk})"), &e))?;
    app.capacity
        .write("manifest.file", units(out.consumed_capacity()));
    Ok(())
}

/// Every item under `pk`, strongly consistent; the read units are recorded under `op`.
pub async fn items_under(
    app: &App,
    op: &'static str,
    pk: String,
    budget: &Budget,
) -> Result<Vec<Item>, Error> {
    let query = app
        .ddb
        .query()
        .table_name(&app.config.table)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", AttributeValue::S(pk))
        // A mark is written after what it points at; a strongly consistent read sees it.
        .consistent_read(true);
    query_all(app, op, query, budget).await
}

/// Every item a query returns, page after page, each page retried within `budget`; the read
/// units are recorded under `op`, which also names the call in errors.
async fn query_all(
    app: &App,
    op: &'static str,
    query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
    budget: &Budget,
) -> Result<Vec<Item>, Error> {
    let mut items = Vec::new();
    let mut start_key = None;
    loop {
        let page = retry(budget, op, || {
            query
                .clone()
                .set_exclusive_start_key(start_key.clone())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
        })
        .await
        .map_err(|e| Error::aws(op, &e))?;
        app.capacity.read(op, units(page.consumed_capacity()));
        items.extend(page.items().iter().cloned());
        start_key = page.last_evaluated_key().cloned();
        if start_key.is_none() {
            return Ok(items);
        }
    }
}

/// The key of a `pk`/`sk` item.
fn key(pk: &str, sk: &str) -> Item {
    Item::from([
        (PK.to_owned(), AttributeValue::S(pk.into())),
        (SK.to_owned(), AttributeValue::S(sk.into())),
    ])
}

/// Whether an error is a failed condition.
pub fn is_condition_failed<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> bool {
    matches!(e, SdkError::ServiceError(s) if s.err().code() == Some("ConditionalCheckFailedException"))
}
