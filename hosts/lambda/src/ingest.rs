//! ingest: a Kinesis batch → each accepted event's half on its trip's item; rejects → the SQS
//! DLQ.
//!
//! The protocol is the replay's, with the store read through conditional writes ([`Plan`]):
//! 1. the whole batch goes to the core in one `events.parse` call (if the core fails on the
//!    batch, record by record, so a record that traps is dead-lettered alone);
//! 2. `matching.resolve` against nothing names each key's first copy in the batch;
//! 3. each first copy is written onto its trip's item with one conditional update that sets
//!    that half's attributes if they are absent ([`table::store_half`]); when the half is
//!    taken the stored item comes back with the failed condition
//!    (`ReturnValuesOnConditionCheckFailure`), so no read is needed. The write that stores a
//!    trip's second half completes the trip; the matcher files it from the stream;
//! 4. one `matching.resolve` of the *whole* batch against the stored copies handed back decides
//!    every record — stored, duplicate or conflicting duplicate — exactly as the replay decides
//!    the same batch against its store, whatever the arrival order.
//!
//! Rejected records go to the DLQ with their bytes, in `SendMessageBatch` calls sized by bytes;
//! a record whose message would not fit `DLQ_MAX_MESSAGE_BYTES` has its bytes spilled to S3
//! and the message points at them. DynamoDB refusing one item (a 4xx) is that record's
//! outcome (`store_refused` on the DLQ), not the batch's.
//!
//! Failure semantics follow Kinesis checkpointing: if any record cannot be handled within
//! the retry budget, the lowest such record is reported in `batchItemFailures`; Lambda
//! redelivers from it, and DLQ messages are sent only for records before it, so a redelivery
//! never sends the same rejection twice.

use aws_lambda_events::event::kinesis::{KinesisEvent, KinesisEventRecord};
use aws_lambda_events::event::streams::{KinesisBatchItemFailure, KinesisEventResponse};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use base64::Engine as _;
use tripflow_runtime::core::{Clock, Decision, Reason, TripEvent};
use tripflow_runtime::fate::{self, FirstCopy, Lines};
use tripflow_runtime::{CoreError, CoreProvider, TripCore, concat_records, parse_isolating};

use crate::metrics::Counters;
use crate::retry::{Budget, describe, retry};
use crate::{App, Error, table};

/// Concurrent conditional writes per invocation.
const PUT_CONCURRENCY: usize = 16;

pub use tripflow_runtime::fate::DlqMessage;

/// What happened to each record.
#[derive(Clone, Debug, PartialEq)]
pub enum Fate {
    /// Not decided yet (only ever seen after the first failure).
    Pending,
    /// Stored: the first copy of its key.
    Stored,
    /// An exact copy of a stored event.
    Duplicate,
    /// Only white space.
    Blank,
    /// Kept on the DLQ with its bytes.
    Rejected {
        /// Reason code, as in the replay's quarantine.
        reason: String,
        /// What exactly is wrong.
        detail: String,
        /// For a conflicting duplicate of an event earlier in this batch: that record.
        first: Option<usize>,
    },
    /// Could not be handled within the invocation: Kinesis redelivers from here.
    Failed(String),
}

pub use crate::table::PutOutcome;

/// The ingest protocol's decisions, with the I/O left to the caller: parse, pick first copies,
/// and after the writes, one resolution of the whole batch against the stored copies the
/// writes handed back. Everything here is a call into the core, and every record's fate comes
/// from [`tripflow_runtime::fate`], as the replay's do; [`handle`] only moves bytes.
pub struct Plan {
    /// One fate per record: pending until [`Plan::settle`].
    pub fates: Vec<Fate>,
    /// `(record index, event)` of every accepted record, in batch order.
    pub accepted: Vec<(usize, TripEvent)>,
    /// Indices into `accepted` of the first copies to write.
    pub first_copies: Vec<usize>,
    /// Each record's parse outcome.
    lines: Lines,
}

impl Plan {
    /// Parses the batch (a record the core fails on is isolated and rejected alone) and asks
    /// the core which copies come first. `max_record_bytes` is the component's limit.
    pub fn new<P: CoreProvider>(
        core: &P,
        records: &[&[u8]],
        max_record_bytes: u32,
        clock: Clock,
    ) -> Result<Plan, CoreError> {
        // As the replay does, pass at most one byte past the contract's limit of each record
        // (its original bytes still go to the DLQ whole).
        let (buffer, spans) =
            concat_records(records.iter().copied(), max_record_bytes as usize + 1);
        let (lines, events) = Lines::from_parsed(parse_isolating(core, &buffer, &spans)?);
        let first = core.session()?.resolve(&events, &[], clock)?;
        let first_copies = first
            .decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| matches!(d, Decision::Store))
            .map(|(i, _)| i)
            .collect();
        Ok(Plan {
            fates: vec![Fate::Pending; records.len()],
            accepted: lines.accepted.iter().copied().zip(events).collect(),
            first_copies,
            lines,
        })
    }

    /// Decides every accepted record from how the writes of the first copies ended (`puts`,
    /// one per `first_copies` entry): one `matching.resolve` of the whole batch against the
    /// stored copies the failed conditions handed back, exactly as the replay resolves a batch
    /// against what its store holds. Returns the resolution's watermark candidate and the
    /// number of events whose clock ran ahead.
    pub fn settle<P: CoreProvider>(
        &mut self,
        core: &P,
        puts: &[PutOutcome],
        clock: Clock,
    ) -> Result<Settled, CoreError> {
        assert_eq!(puts.len(), self.first_copies.len(), "one outcome per write");
        let mut stored = Vec::new();
        let mut written = vec![false; self.accepted.len()];
        // The fate of a first copy that DynamoDB refused or that was not written in time.
        let mut not_written: Vec<Option<Fate>> = vec![None; self.accepted.len()];
        for (&a, put) in self.first_copies.iter().zip(puts) {
            match put {
                PutOutcome::Stored | PutOutcome::StoredBefore => written[a] = true,
                PutOutcome::Taken(copy) => stored.push(copy.clone()),
                PutOutcome::Refused(why) => {
                    not_written[a] = Some(Fate::Rejected {
                        reason: Reason::StoreRefused.as_str().to_owned(),
                        detail: why.clone(),
                        first: None,
                    })
                }
                PutOutcome::Failed(why) => not_written[a] = Some(Fate::Failed(why.clone())),
            }
        }
        let events: Vec<TripEvent> = self.accepted.iter().map(|(_, e)| e.clone()).collect();
        let r = core.session()?.resolve(&events, &stored, clock)?;
        let fates = fate::fates(&self.lines, &r.decisions).ok_or_else(|| CoreError::Trapped {
            message: format!(
                "the core decided {} events of a batch with {} accepted",
                r.decisions.len(),
                events.len()
            ),
            stderr: String::new(),
        })?;
        self.fates = fates
            .into_iter()
            .map(|f| match f {
                fate::Fate::Blank => Fate::Blank,
                fate::Fate::Rejected(r) => Fate::Rejected {
                    reason: r.reason.as_str().to_owned(),
                    detail: r.detail,
                    first: match r.first {
                        Some(FirstCopy::Record(j)) => Some(j),
                        Some(FirstCopy::Stored(_)) | None => None,
                    },
                },
                fate::Fate::Stored { event } if not_written[event as usize].is_some() => {
                    not_written[event as usize].take().expect("checked")
                }
                fate::Fate::Stored { event } if written[event as usize] => Fate::Stored,
                fate::Fate::Stored { .. } => Fate::Failed(
                    "the core would store an event that was not written; redelivering".into(),
                ),
                fate::Fate::Duplicate { .. } => Fate::Duplicate,
            })
            .collect();
        Ok(Settled {
            newest_ns: r.newest_ns,
            skewed: r.skewed.len(),
        })
    }
}

/// What a settled batch says beyond the fates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The newest event time that may move the watermark (the core's rule).
    pub newest_ns: Option<i64>,
    /// Stored events whose clock ran ahead of their arrival by more than the allowed skew.
    pub skewed: usize,
}

/// The batch's arrival time: the latest approximate arrival timestamp of its records.
pub fn arrival_ns(records: &[KinesisEventRecord]) -> i64 {
    records
        .iter()
        .filter_map(|r| {
            r.kinesis
                .approximate_arrival_timestamp
                .0
                .timestamp_nanos_opt()
        })
        .max()
        .unwrap_or_else(now_ns)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
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

    let clock = Clock {
        arrival_ns: arrival_ns(records),
        max_skew_ns: app.config.max_clock_skew_ns,
    };
    let core = app.core.bounded(budget.remaining());
    let bytes: Vec<&[u8]> = records
        .iter()
        .map(|r| r.kinesis.data.0.as_slice())
        .collect();
    let mut plan = Plan::new(&core, &bytes, app.record_limit()?, clock)?;

    let puts = write_first_copies(app, records, &plan, budget).await?;
    let settled = plan.settle(&core, &puts, clock)?;
    let fates = plan.fates;

    // Rejections to the DLQ, in order, up to the first failure.
    let mut first_failure = fates.iter().position(|f| matches!(f, Fate::Failed(_)));
    let limit = first_failure.unwrap_or(records.len());
    let rejected: Vec<usize> = (0..limit)
        .filter(|i| matches!(fates[*i], Fate::Rejected { .. }))
        .collect();
    if let Some(failed_at) = send_to_dlq(app, records, &fates, &rejected, budget).await {
        first_failure = Some(first_failure.map_or(failed_at, |f| f.min(failed_at)));
    }

    // The watermark: the newest event time the core lets move it, for the sweeper.
    if let Some(newest) = settled.newest_ns
        && let Err(e) = table::raise_watermark(app, newest, budget).await
    {
        // Only the sweeper's timing depends on it; the next batch moves it again.
        tracing::warn!(error = %e, "watermark not advanced");
    }
    if settled.skewed > 0 {
        counters.add("ClockAhead", settled.skewed as f64);
        tracing::warn!(
            events = settled.skewed,
            arrival_ns = clock.arrival_ns,
            "events dated past their arrival plus MAX_CLOCK_SKEW: stored, but not used as the sweeper's clock"
        );
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

/// The DLQ message of rejected record `i`; `spilled` is where its bytes went when they are too
/// large for a message.
fn dlq_message(
    records: &[KinesisEventRecord],
    fates: &[Fate],
    i: usize,
    spilled: Option<String>,
) -> DlqMessage {
    let Fate::Rejected {
        reason,
        detail,
        first,
    } = &fates[i]
    else {
        unreachable!("only rejected records are dead-lettered")
    };
    let r = &records[i];
    DlqMessage {
        reason: reason.clone(),
        detail: detail.clone(),
        raw_base64: match spilled {
            Some(_) => String::new(),
            None => base64::engine::general_purpose::STANDARD.encode(&r.kinesis.data.0),
        },
        raw_s3: spilled,
        raw_len: r.kinesis.data.0.len() as u64,
        shard_id: shard_id(r),
        sequence_number: r.kinesis.sequence_number.clone(),
        partition_key: r.kinesis.partition_key.clone(),
        first_sequence_number: first.map(|f| records[f].kinesis.sequence_number.clone()),
    }
}

/// Groups messages, in order, into `SendMessageBatch` calls of at most 10 entries and
/// `max_bytes` of bodies (SQS limits a batch's total payload like one message's).
pub fn dlq_batches(bodies: &[(usize, String)], max_bytes: usize) -> Vec<&[(usize, String)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (k, (_, body)) in bodies.iter().enumerate() {
        if k > start && (k - start == 10 || size + body.len() > max_bytes) {
            out.push(&bodies[start..k]);
            start = k;
            size = 0;
        }
        size += body.len();
    }
    if start < bodies.len() {
        out.push(&bodies[start..]);
    }
    out
}

/// Sends the rejections at `indices` to the DLQ, spilling the bytes of a record whose message
/// would exceed `DLQ_MAX_MESSAGE_BYTES` to S3 (`s3://BUCKET/REJECTED_PREFIX<shard>/<sequence>`,
/// named by the record so a redelivery rewrites the same object). Returns the first index that
/// could not be kept within the budget (nothing after it is sent).
async fn send_to_dlq(
    app: &App,
    records: &[KinesisEventRecord],
    fates: &[Fate],
    indices: &[usize],
    budget: &Budget,
) -> Option<usize> {
    let url = app.config.dlq_url.as_deref()?;
    let max = app.config.dlq_max_message_bytes;
    let mut bodies: Vec<(usize, String)> = Vec::with_capacity(indices.len());
    for &i in indices {
        let msg = dlq_message(records, fates, i, None);
        let mut body = serde_json::to_string(&msg).expect("DLQ messages serialise");
        if body.len() > max {
            let r = &records[i];
            let Some(bucket) = app.config.bucket.as_deref() else {
                tracing::error!("a rejected record needs spilling to S3 but BUCKET is not set");
                return Some(i);
            };
            let key = format!(
                "{}{}/{}",
                app.config.rejected_prefix,
                shard_id(r),
                r.kinesis.sequence_number
            );
            let put = retry(budget, "PutObject(rejected)", || {
                app.s3
                    .put_object()
                    .bucket(bucket)
                    .key(&key)
                    .content_type("application/octet-stream")
                    .body(r.kinesis.data.0.clone().into())
                    .send()
            })
            .await;
            if let Err(e) = put {
                tracing::error!(error = %describe(&e), key = %key, "rejected record not spilled to S3");
                return Some(i);
            }
            let uri = format!("s3://{bucket}/{key}");
            body = serde_json::to_string(&dlq_message(records, fates, i, Some(uri)))
                .expect("DLQ messages serialise");
        }
        bodies.push((i, body));
    }
    for batch in dlq_batches(&bodies, max) {
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            let entries: Vec<SendMessageBatchRequestEntry> = pending
                .iter()
                .map(|&k| {
                    SendMessageBatchRequestEntry::builder()
                        .id(k.to_string())
                        .message_body(&batch[k].1)
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
                    // Entries SQS did not take are retried on their own, with backoff; one it
                    // refuses as the sender's fault will not get better by waiting.
                    if let Some(f) = out.failed().iter().find(|f| f.sender_fault()) {
                        tracing::error!(code = %f.code(), message = ?f.message(), "SQS refused a DLQ message");
                    }
                    let failed: Vec<usize> = out
                        .failed()
                        .iter()
                        .filter_map(|f| f.id().parse().ok())
                        .collect();
                    pending.retain(|k| failed.contains(k));
                }
                Err(e) => {
                    tracing::error!(error = %describe(&e), "DLQ send failed");
                    return pending.iter().map(|&k| batch[k].0).min();
                }
            }
            if !pending.is_empty() {
                let wait = crate::retry::backoff(attempt);
                attempt += 1;
                if attempt >= crate::retry::MAX_ATTEMPTS || budget.remaining() <= wait {
                    return pending.iter().map(|&k| batch[k].0).min();
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
    None
}

/// Writes the plan's first copies, `PUT_CONCURRENCY` tasks at a time: one outcome per first
/// copy, in order.
async fn write_first_copies(
    app: &App,
    records: &[KinesisEventRecord],
    plan: &Plan,
    budget: &Budget,
) -> Result<Vec<PutOutcome>, Error> {
    let writer = table::HalfWriter::of(app);
    let mut puts: Vec<Option<PutOutcome>> = vec![None; plan.first_copies.len()];
    let writes: Vec<(usize, TripEvent, String)> = plan
        .first_copies
        .iter()
        .enumerate()
        .map(|(k, &a)| {
            let (i, e) = &plan.accepted[a];
            (k, e.clone(), source(&records[*i]))
        })
        .collect();
    for chunk in writes.chunks(PUT_CONCURRENCY) {
        let mut tasks = tokio::task::JoinSet::new();
        for (k, e, src) in chunk.iter().cloned() {
            let (writer, budget) = (writer.clone(), *budget);
            tasks.spawn(async move { (k, writer.write(&e, &src, &budget).await) });
        }
        while let Some(joined) = tasks.join_next().await {
            let (k, put) = joined?;
            puts[k] = Some(put);
        }
    }
    Ok(puts
        .into_iter()
        .map(|p| p.expect("every write reports"))
        .collect())
}
