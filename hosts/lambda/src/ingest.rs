//! ingest: a Kinesis batch → one event item per accepted event; rejects → the SQS DLQ.
//!
//! The whole batch goes to the core in one `events.parse` call, then one `matching.resolve`
//! call sorts out duplicates inside the batch. Each first copy is stored with a conditional
//! put (`attribute_not_exists(pk)`), so a redelivered batch or a producer's duplicate writes
//! nothing; when the condition fails, the stored item comes back with the error and the core
//! decides whether it is the same event (a duplicate) or a different one under the same key
//! (a conflicting duplicate, sent to the DLQ — never overwritten).
//!
//! Failure semantics follow Kinesis checkpointing: if any record cannot be handled within
//! the retry budget, the lowest such record is reported in `batchItemFailures`; Lambda
//! redelivers from it, and DLQ messages are sent only for records before it, so a redelivery
//! never sends the same rejection twice.

use std::collections::BTreeMap;

use aws_lambda_events::event::kinesis::{KinesisEvent, KinesisEventRecord};
use aws_lambda_events::event::streams::{KinesisBatchItemFailure, KinesisEventResponse};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnConsumedCapacity, ReturnValuesOnConditionCheckFailure,
};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use base64::Engine as _;
use serde::Serialize;
use tripflow_runtime::core::{Decision, EventRef, ParseOutcome, Span, TripEvent};
use tripflow_runtime::{CoreProvider, TripCore};

use crate::metrics::{Counters, units};
use crate::retry::{Budget, describe, retry};
use crate::{App, Error, table};

/// Concurrent conditional puts per invocation.
const PUT_CONCURRENCY: usize = 16;

/// A rejected record as sent to the DLQ.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DlqMessage {
    /// Reason code, as in the CLI's quarantine (`bad_fare`, `conflicting_duplicate`, …).
    pub reason: String,
    /// What exactly is wrong.
    pub detail: String,
    /// The record's original bytes, base64.
    pub raw_base64: String,
    /// The Kinesis shard.
    pub shard_id: String,
    /// The record's sequence number in its shard.
    pub sequence_number: String,
    /// The record's partition key.
    pub partition_key: String,
    /// For a conflicting duplicate inside one batch: the sequence number of the copy kept.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_sequence_number: Option<String>,
}

/// What happened to each record.
#[derive(Clone, Debug, PartialEq)]
enum Fate {
    Pending,
    Stored,
    Duplicate,
    Blank,
    Rejected {
        reason: String,
        detail: String,
        first: Option<usize>,
    },
    Failed(String),
}

/// Handles one Kinesis batch.
pub async fn handle(
    app: &App,
    event: KinesisEvent,
    budget: &Budget,
) -> Result<KinesisEventResponse, Error> {
    let records = &event.records;
    let wcu_before = app.capacity.write_units();
    let mut counters = Counters::default();
    counters.add("EventsIn", records.len() as f64);

    // One buffer, one parse call.
    let mut buffer = Vec::with_capacity(records.iter().map(|r| r.kinesis.data.0.len()).sum());
    let mut spans = Vec::with_capacity(records.len());
    for r in records {
        spans.push(Span {
            offset: buffer.len() as u32,
            len: r.kinesis.data.0.len() as u32,
        });
        buffer.extend_from_slice(&r.kinesis.data.0);
    }
    let mut core = app.core.session()?;
    let outcomes = core.parse(&buffer, &spans)?;
    drop(core);

    let mut fates = vec![Fate::Pending; records.len()];
    let mut accepted: Vec<(usize, TripEvent)> = Vec::new();
    for (i, o) in outcomes.into_iter().enumerate() {
        match o {
            ParseOutcome::Accepted(e) => accepted.push((i, e)),
            ParseOutcome::Rejected(r) => {
                fates[i] = Fate::Rejected {
                    reason: r.code().to_owned(),
                    detail: r.detail().to_owned(),
                    first: None,
                }
            }
            ParseOutcome::Blank => fates[i] = Fate::Blank,
        }
    }

    // Duplicates inside the batch.
    let events: Vec<TripEvent> = accepted.iter().map(|(_, e)| e.clone()).collect();
    let resolution = app.core.session()?.resolve(&events, &[])?;
    let mut to_store = Vec::new();
    for ((i, e), d) in accepted.iter().zip(&resolution.decisions) {
        match d {
            Decision::Store => to_store.push((*i, e.clone())),
            Decision::Duplicate(_) => fates[*i] = Fate::Duplicate,
            Decision::ConflictingDuplicate(c) => {
                let first = match c.first {
                    EventRef::Incoming(j) | EventRef::Stored(j) => accepted[j as usize].0,
                };
                fates[*i] = Fate::Rejected {
                    reason: "conflicting_duplicate".into(),
                    detail: c.detail.clone(),
                    first: Some(first),
                };
            }
        }
    }

    // Conditional puts; a failed condition hands back what is stored.
    let expires_at = app.config.retention_days.map(|d| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        now + i64::from(d) * 86_400
    });
    let mut utc_days = BTreeMap::new();
    {
        let mut core = app.core.session()?;
        for (i, e) in &to_store {
            if e.kind == tripflow_runtime::core::EventKind::Start {
                utc_days.insert(*i, core.day_of("UTC", e.timestamp_ns)?);
            }
        }
    }
    let mut already: Vec<(usize, TripEvent, TripEvent)> = Vec::new();
    // Newest event time actually stored (not of duplicates or conflicts), for the watermark.
    let mut newest_stored: Option<i64> = None;
    for chunk in to_store.chunks(PUT_CONCURRENCY) {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, e) in chunk.iter().cloned() {
            let item = table::event_item(
                &e,
                utc_days.get(&i).map(String::as_str),
                &source(&records[i]),
                expires_at,
            );
            let (ddb, tbl, budget) = (app.ddb.clone(), app.config.table.clone(), *budget);
            tasks.spawn(async move {
                let r = retry(&budget, "PutItem", || {
                    ddb.put_item()
                        .table_name(&tbl)
                        .set_item(Some(item.clone()))
                        .condition_expression("attribute_not_exists(pk)")
                        .return_values_on_condition_check_failure(
                            ReturnValuesOnConditionCheckFailure::AllOld,
                        )
                        .return_consumed_capacity(ReturnConsumedCapacity::Total)
                        .send()
                })
                .await;
                (i, e, r)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (i, e, r) = joined?;
            match r {
                Ok(out) => {
                    app.capacity
                        .write("ingest.put", units(out.consumed_capacity()));
                    fates[i] = Fate::Stored;
                    newest_stored = newest_stored.max(Some(e.timestamp_ns));
                }
                Err(SdkError::ServiceError(s))
                    if matches!(s.err(), PutItemError::ConditionalCheckFailedException(_)) =>
                {
                    app.capacity.failed_condition("ingest.put");
                    let PutItemError::ConditionalCheckFailedException(c) = s.err() else {
                        unreachable!()
                    };
                    match c.item().map(table::event_from_item) {
                        Some(Ok(stored)) => already.push((i, e, stored)),
                        Some(Err(bad)) => fates[i] = Fate::Failed(bad.to_string()),
                        None => {
                            fates[i] =
                                Fate::Failed("condition failed without the stored item".into())
                        }
                    }
                }
                Err(err) => fates[i] = Fate::Failed(format!("PutItem: {}", describe(&err))),
            }
        }
    }

    // Same key already stored: same event, or a different one?
    if !already.is_empty() {
        let incoming: Vec<TripEvent> = already.iter().map(|(_, e, _)| e.clone()).collect();
        let stored: Vec<TripEvent> = already.iter().map(|(_, _, s)| s.clone()).collect();
        let r = app.core.session()?.resolve(&incoming, &stored)?;
        for ((i, _, _), d) in already.iter().zip(&r.decisions) {
            fates[*i] = match d {
                Decision::Duplicate(_) => Fate::Duplicate,
                Decision::ConflictingDuplicate(c) => Fate::Rejected {
                    reason: "conflicting_duplicate".into(),
                    detail: c.detail.clone(),
                    first: None,
                },
                Decision::Store => Fate::Failed(
                    "the core would store an event whose key is taken; not overwriting".into(),
                ),
            };
        }
    }

    // Rejections to the DLQ, in order, up to the first failure.
    let mut first_failure = fates.iter().position(|f| matches!(f, Fate::Failed(_)));
    let limit = first_failure.unwrap_or(records.len());
    let rejected: Vec<usize> = (0..limit)
        .filter(|i| matches!(fates[*i], Fate::Rejected { .. }))
        .collect();
    if let Some(failed_at) = send_to_dlq(app, records, &fates, &rejected, budget).await {
        first_failure = Some(first_failure.map_or(failed_at, |f| f.min(failed_at)));
    }

    // The watermark: the newest event time stored, for the sweeper.
    if let Some(newest) = newest_stored {
        advance_watermark(app, newest, budget).await;
    }

    let limit = first_failure.unwrap_or(records.len());
    for (i, fate) in fates.iter().enumerate().take(limit) {
        match fate {
            Fate::Stored => counters.add("Stored", 1.0),
            Fate::Duplicate => counters.add("Duplicates", 1.0),
            Fate::Blank => counters.add("Blank", 1.0),
            Fate::Rejected { reason, .. } => counters.rejected(reason),
            Fate::Failed(_) | Fate::Pending => unreachable!("record {i} before the first failure"),
        }
    }
    let mut response = KinesisEventResponse::default();
    if let Some(i) = first_failure {
        let why = match &fates[i] {
            Fate::Failed(w) => w.clone(),
            _ => "the DLQ did not take its rejection".into(),
        };
        tracing::error!(
            sequence_number = %records[i].kinesis.sequence_number,
            redelivered = records.len() - i,
            error = %why,
            "record not handled; Kinesis will redeliver from it"
        );
        counters.add("Failed", (records.len() - i) as f64);
        let mut f = KinesisBatchItemFailure::default();
        f.item_identifier = Some(records[i].kinesis.sequence_number.clone());
        response.batch_item_failures.push(f);
    }
    counters.add(
        "ConsumedWriteUnits",
        app.capacity.write_units() - wcu_before,
    );
    tracing::info!(
        records = records.len(),
        stored = counters.get("Stored"),
        duplicates = counters.get("Duplicates"),
        rejected = counters.get("Rejected"),
        failed = counters.get("Failed"),
        "ingest batch"
    );
    app.emit(&counters);
    Ok(response)
}

/// `<shard id>/<sequence number>` of a record.
fn source(r: &KinesisEventRecord) -> String {
    format!("{}/{}", shard_id(r), r.kinesis.sequence_number)
}

/// The shard id from the record's event id (`shardId-000000000000:4954…`).
pub fn shard_id(r: &KinesisEventRecord) -> String {
    r.event_id
        .as_deref()
        .and_then(|id| id.split_once(':').map(|(s, _)| s.to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

/// Sends the rejections at `indices` to the DLQ; returns the first index that could not be
/// sent within the budget (nothing after it is sent).
async fn send_to_dlq(
    app: &App,
    records: &[KinesisEventRecord],
    fates: &[Fate],
    indices: &[usize],
    budget: &Budget,
) -> Option<usize> {
    let url = app.config.dlq_url.as_deref()?;
    for chunk in indices.chunks(10) {
        let mut pending: Vec<usize> = chunk.to_vec();
        let mut attempt = 0;
        while !pending.is_empty() {
            let entries: Vec<SendMessageBatchRequestEntry> = pending
                .iter()
                .map(|&i| {
                    let Fate::Rejected {
                        reason,
                        detail,
                        first,
                    } = &fates[i]
                    else {
                        unreachable!()
                    };
                    let r = &records[i];
                    let msg = DlqMessage {
                        reason: reason.clone(),
                        detail: detail.clone(),
                        raw_base64: base64::engine::general_purpose::STANDARD
                            .encode(&r.kinesis.data.0),
                        shard_id: shard_id(r),
                        sequence_number: r.kinesis.sequence_number.clone(),
                        partition_key: r.kinesis.partition_key.clone(),
                        first_sequence_number: first
                            .map(|f| records[f].kinesis.sequence_number.clone()),
                    };
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(serde_json::to_string(&msg).expect("DLQ messages serialise"))
                        .build()
                        .expect("id and body are set")
                })
                .collect();
            let sent = retry(budget, "SendMessageBatch", || {
                app.sqs
                    .send_message_batch()
                    .queue_url(url)
                    .set_entries(Some(entries.clone()))
                    .send()
            })
            .await;
            match sent {
                Ok(out) => {
                    // Entries SQS did not take are retried on their own, with backoff.
                    let failed: Vec<usize> = out
                        .failed()
                        .iter()
                        .filter_map(|f| f.id().parse().ok())
                        .collect();
                    pending.retain(|i| failed.contains(i));
                }
                Err(e) => {
                    tracing::error!(error = %describe(&e), "DLQ send failed");
                    return pending.iter().min().copied();
                }
            }
            if !pending.is_empty() {
                let wait = crate::retry::backoff(attempt);
                attempt += 1;
                if attempt >= crate::retry::MAX_ATTEMPTS || budget.remaining() <= wait {
                    return pending.iter().min().copied();
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
    None
}

async fn advance_watermark(app: &App, newest: i64, budget: &Budget) {
    let r = retry(budget, "UpdateItem(watermark)", || {
        app.ddb
            .update_item()
            .table_name(&app.config.table)
            .set_key(Some(table::watermark_key()))
            .update_expression(format!("SET {} = :n", table::NEWEST_NS))
            .condition_expression(format!(
                "attribute_not_exists({0}) OR {0} < :n",
                table::NEWEST_NS
            ))
            .expression_attribute_values(":n", AttributeValue::N(newest.to_string()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    })
    .await;
    match r {
        Ok(out) => app
            .capacity
            .write("ingest.watermark", units(out.consumed_capacity())),
        Err(e) if is_condition_failed(&e) => app.capacity.failed_condition("ingest.watermark"),
        // Only the sweeper's timing depends on it; the next batch moves it again.
        Err(e) => tracing::warn!(error = %describe(&e), "watermark not advanced"),
    }
}

/// Whether an error is a failed condition.
pub fn is_condition_failed<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> bool {
    matches!(e, SdkError::ServiceError(s) if s.err().code() == Some("ConditionalCheckFailedException"))
}
