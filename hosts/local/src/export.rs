//! Production's state out, for `tripflow audit` and `tripflow diff`: the table as an export,
//! and the records the pipeline kept instead of storing.
//!
//! - [`export_table`] reads a table page by page (a parallel `Scan`) into the layout of a
//!   DynamoDB export to S3 ([`tripflow_store::export`]), so one reader serves both. AWS's own
//!   export (`ExportTableToPointInTime`) is the way for a real table: it reads a point in time
//!   and spends no read capacity. The paged read is for a small table (it costs a read unit per
//!   4 KB, eventually consistent: about 0.13 units a trip) and for DynamoDB Local, which has no
//!   export. It is not a snapshot: run it while the pipeline is quiet.
//! - [`kept_rejects`] reads every message of the rejected-records queue without taking it
//!   away (each is made visible again at once), keeps one per record (the queue is
//!   at-least-once) and fetches the bytes of records spilled to S3 into the message.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine as _;
use serde_json::{Map, Value, json};
use tripflow_lambda::ingest::DlqMessage;
use tripflow_lambda::retry::Budget;
use tripflow_store::export::{ExportWriter, ManifestSummary};

/// Scan segments a paged export reads side by side, unless told otherwise.
pub const SEGMENTS: u32 = 4;

/// Items per data file of a paged export (AWS writes one or more files per partition).
pub const ITEMS_PER_FILE: usize = 100_000;

/// An SDK attribute as DynamoDB JSON (`{"S":"…"}`, `{"N":"…"}`, …), as an export writes it.
pub fn attribute_json(v: &AttributeValue) -> Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match v {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(_) => json!({ "NULL": true }),
        AttributeValue::B(b) => json!({ "B": b64(b.as_ref()) }),
        AttributeValue::Ss(s) => json!({ "SS": s }),
        AttributeValue::Ns(n) => json!({ "NS": n }),
        AttributeValue::Bs(bs) => {
            json!({ "BS": bs.iter().map(|b| b64(b.as_ref())).collect::<Vec<_>>() })
        }
        AttributeValue::L(l) => json!({ "L": l.iter().map(attribute_json).collect::<Vec<_>>() }),
        AttributeValue::M(m) => json!({ "M": item_json(m) }),
        _ => json!({ "NULL": true }),
    }
}

/// An SDK item as DynamoDB JSON.
pub fn item_json(item: &std::collections::HashMap<String, AttributeValue>) -> Map<String, Value> {
    item.iter()
        .map(|(k, v)| (k.clone(), attribute_json(v)))
        .collect()
}

/// Reads `table` with a parallel scan of `segments` segments into an export in `dir`; returns
/// its summary. A page the SDK's own retries could not read is tried again from the same start
/// key ([`retry`]), so throttling or a lost connection costs time, not items.
pub async fn export_table(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    dir: &Path,
    segments: u32,
    items_per_file: usize,
) -> anyhow::Result<ManifestSummary> {
    let described = retry(&format!("DescribeTable {table}"), || {
        ddb.describe_table().table_name(table).send()
    })
    .await?;
    let arn = described
        .table()
        .and_then(|t| t.table_arn())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("arn:aws:dynamodb:local:000000000000:table/{table}"));
    let export_time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut writer = ExportWriter::create(dir, &arn, &export_time, items_per_file)?;
    let segments = segments.max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Map<String, Value>>>(segments as usize * 2);
    let mut tasks = Vec::new();
    for segment in 0..segments {
        let (ddb, table, tx) = (ddb.clone(), table.to_owned(), tx.clone());
        tasks.push(tokio::spawn(async move {
            scan_segment(&ddb, &table, segment, segments, &tx).await
        }));
    }
    drop(tx);
    while let Some(page) = rx.recv().await {
        for item in &page {
            writer.item(item)?;
        }
    }
    for task in tasks {
        task.await.context("a scan task panicked")??;
    }
    Ok(writer.finish()?)
}

async fn scan_segment(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    segment: u32,
    segments: u32,
    tx: &tokio::sync::mpsc::Sender<Vec<Map<String, Value>>>,
) -> anyhow::Result<()> {
    let mut start: Option<std::collections::HashMap<String, AttributeValue>> = None;
    loop {
        let page = retry(&format!("Scan {table} segment {segment}"), || {
            ddb.scan()
                .table_name(table)
                .segment(segment as i32)
                .total_segments(segments as i32)
                .set_exclusive_start_key(start.clone())
                .send()
        })
        .await?;
        let items: Vec<Map<String, Value>> = page.items().iter().map(item_json).collect();
        if !items.is_empty() && tx.send(items).await.is_err() {
            return Ok(());
        }
        match page.last_evaluated_key() {
            Some(key) if !key.is_empty() => start = Some(key.clone()),
            _ => return Ok(()),
        }
    }
}

/// How long a read hides a message (seconds): after a read whose answer was lost, the reader
/// waits this long for the messages it hid to show again.
const READ_VISIBILITY_S: i32 = 10;

/// Every message of the rejected-records queue at `url`, one per record, with the bytes of
/// records spilled to S3 fetched into `raw_base64` (`raw_s3` still says where they were).
///
/// The messages stay on the queue: each is received with a short visibility timeout and made
/// visible again once all are read. A receive whose answer was lost (a timeout, a reset after
/// the request took effect) hides messages whose handles this reader never saw; the queue then
/// reports messages not visible after the read, and the reader waits for them to show and reads
/// the queue again, so no kept record is missed. Copies of one record must be identical (a
/// redelivered send is); copies that differ are an error.
pub async fn kept_rejects(
    sqs: &aws_sdk_sqs::Client,
    s3: &aws_sdk_s3::Client,
    url: &str,
) -> anyhow::Result<Vec<DlqMessage>> {
    for round in 0..6 {
        let (by_record, handles) = read_queue(sqs, url).await?;
        // Visible again, so the queue is as it was.
        for chunk in handles.chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(h)
                        .visibility_timeout(0)
                        .build()
                        .expect("id and receipt handle are set")
                })
                .collect();
            retry("ChangeMessageVisibilityBatch back to 0", || {
                sqs.change_message_visibility_batch()
                    .queue_url(url)
                    .set_entries(Some(entries.clone()))
                    .send()
            })
            .await?;
        }
        let attributes = retry("GetQueueAttributes", || {
            sqs.get_queue_attributes()
                .queue_url(url)
                .attribute_names(
                    aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                )
                .send()
        })
        .await?;
        let hidden: u64 = attributes
            .attributes()
            .and_then(|a| {
                a.get(
                    &aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                )
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if hidden > 0 {
            tracing::warn!(
                round,
                hidden,
                "messages hidden by a read whose answer was lost, or by another reader; reading again once they show"
            );
            tokio::time::sleep(Duration::from_secs(READ_VISIBILITY_S as u64 + 1)).await;
            continue;
        }
        let mut out = Vec::with_capacity(by_record.len());
        for mut m in by_record.into_values() {
            if m.raw_s3.is_some() && m.raw_base64.is_empty() {
                let raw = spilled_raw(s3, &m).await?;
                m.raw_base64 = base64::engine::general_purpose::STANDARD.encode(raw);
            }
            out.push(m);
        }
        return Ok(out);
    }
    anyhow::bail!(
        "{url} kept reporting messages that are not visible: another consumer is reading it; \
         stop it and run this again"
    )
}

/// One pass over the queue: its messages by record, and the receipt handles to release.
async fn read_queue(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
) -> anyhow::Result<(BTreeMap<(String, String), DlqMessage>, Vec<String>)> {
    let mut by_record: BTreeMap<(String, String), DlqMessage> = BTreeMap::new();
    let mut handles = Vec::new();
    let mut empty = 0;
    while empty < 2 {
        let out = retry("ReceiveMessage from the rejected-records queue", || {
            sqs.receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(READ_VISIBILITY_S)
                .wait_time_seconds(0)
                .send()
        })
        .await?;
        if out.messages().is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in out.messages() {
            if let Some(h) = m.receipt_handle() {
                handles.push(h.to_owned());
            }
            let body = m.body().unwrap_or_default();
            let msg: DlqMessage = serde_json::from_str(body).with_context(|| {
                format!(
                    "a message on {url} is not a rejected record: {}",
                    &body[..body.len().min(200)]
                )
            })?;
            let key = (msg.shard_id.clone(), msg.sequence_number.clone());
            if let Some(earlier) = by_record.get(&key)
                && earlier != &msg
            {
                anyhow::bail!(
                    "two different messages for record {}/{} on {url}: {earlier:?} and {msg:?}",
                    key.0,
                    key.1
                );
            }
            by_record.insert(key, msg);
        }
    }
    Ok((by_record, handles))
}

/// How long one call may keep being retried.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// `call` through the functions' retry ([`tripflow_lambda::retry`]): throttling, a 5xx, a
/// timeout or a lost connection costs time, not the read; any other error fails at once.
async fn retry<T, E, F, Fut>(what: &str, call: F) -> anyhow::Result<T>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    let budget = Budget::until(Instant::now() + RETRY_FOR, Duration::ZERO);
    tripflow_lambda::retry::retry(&budget, what, call)
        .await
        .with_context(|| what.to_owned())
}

/// A spilled record's bytes, read whole again after a failure (a connection lost in the middle
/// of the body is not an SDK error the shared retry sees), with the functions' backoff.
async fn spilled_raw(s3: &aws_sdk_s3::Client, m: &DlqMessage) -> anyhow::Result<Vec<u8>> {
    let mut attempt = 0;
    loop {
        match crate::dlq_raw(s3, m).await {
            Ok(raw) => return Ok(raw),
            Err(error) if attempt + 1 < tripflow_lambda::retry::MAX_ATTEMPTS => {
                let wait = tripflow_lambda::retry::backoff(attempt);
                tracing::warn!(%error, attempt, "GetObject of a spilled record: retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => return Err(e.context("GetObject of a spilled record")),
        }
    }
}
