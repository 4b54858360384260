//! Redrive: bring back the Kinesis batches an event source mapping gave up on.
//!
//! When the ingest mapping gives up on a batch (retries or record age exhausted), Lambda sends
//! only a description to the on-failure destination: `KinesisBatchInfo` with the shard and the
//! first and last sequence numbers. The records themselves are still in the stream until its
//! retention ends. Redrive reads each described range back from its shard and puts the records
//! on the stream again; the pipeline then decides them as it decides any record — a record
//! that was stored after all is a duplicate of itself, one that was not is stored now, and a
//! bad one is dead-lettered. Records past the stream's retention are reported exactly (shard,
//! range, how many are gone), never silently skipped.
//!
//! Messages that describe the table stream's batches (`DDBStreamBatchInfo`, the matcher) are
//! left on the queue and reported: the matcher's work is redone by the sweeper's
//! reconciliation, which completes any trip whose two halves are stored.

use anyhow::Context;
use aws_sdk_kinesis::types::ShardIteratorType;
use serde_json::Value;

/// What a redrive did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RedriveReport {
    /// On-failure messages read.
    pub messages: usize,
    /// Kinesis batches redriven.
    pub batches: usize,
    /// Records put back on the stream.
    pub records: usize,
    /// Ranges whose records are no longer in the stream: (shard, first, last, records gone).
    pub gone: Vec<(String, String, String, usize)>,
    /// Messages left on the queue (not Kinesis batches of this stream).
    pub left: usize,
}

/// Redrives every Kinesis batch described on the on-failure queue `url` for `stream`.
pub async fn redrive(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<RedriveReport> {
    let mut report = RedriveReport::default();
    let mut empty = 0;
    while empty < 2 {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(300)
            .wait_time_seconds(0)
            .send()
            .await
            .context("ReceiveMessage from the on-failure queue")?;
        if out.messages().is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in out.messages() {
            report.messages += 1;
            let body: Value = serde_json::from_str(m.body().unwrap_or_default())
                .context("an on-failure message that is not JSON")?;
            let Some(info) = body.get("KinesisBatchInfo") else {
                report.left += 1;
                continue;
            };
            let field = |k: &str| {
                info.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .with_context(|| format!("KinesisBatchInfo without {k}: {info}"))
            };
            let (shard, first, last) = (
                field("shardId")?,
                field("startSequenceNumber")?,
                field("endSequenceNumber")?,
            );
            let size = info.get("batchSize").and_then(Value::as_u64).unwrap_or(0) as usize;
            let records = read_range(kinesis, stream, &shard, &first, &last).await?;
            if records.len() < size {
                report.gone.push((
                    shard.clone(),
                    first.clone(),
                    last.clone(),
                    size - records.len(),
                ));
            }
            crate::send(kinesis, stream, &records).await?;
            report.batches += 1;
            report.records += records.len();
            if let Some(h) = m.receipt_handle() {
                sqs.delete_message()
                    .queue_url(url)
                    .receipt_handle(h)
                    .send()
                    .await
                    .context("DeleteMessage")?;
            }
        }
    }
    Ok(report)
}

/// The records of `shard` from `first` to `last` (inclusive) still in the stream.
async fn read_range(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    shard: &str,
    first: &str,
    last: &str,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let it = kinesis
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
        .starting_sequence_number(first)
        .send()
        .await;
    let mut iterator = match it {
        Ok(out) => out.shard_iterator().map(str::to_owned),
        // Past retention (or a trimmed shard): nothing of the range is left.
        Err(e)
            if e.as_service_error().is_some_and(|s| {
                s.is_resource_not_found_exception() || s.is_invalid_argument_exception()
            }) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e).context("GetShardIterator AT_SEQUENCE_NUMBER"),
    };
    let mut out = Vec::new();
    let mut idle = 0;
    while let Some(i) = iterator.take() {
        let page = kinesis
            .get_records()
            .shard_iterator(i)
            .limit(1000)
            .send()
            .await
            .context("GetRecords")?;
        if page.records().is_empty() {
            idle += 1;
            if idle > 3 {
                break;
            }
        }
        for r in page.records() {
            if seq_cmp(r.sequence_number(), last).is_gt() {
                return Ok(out);
            }
            out.push(r.data().as_ref().to_vec());
        }
        iterator = page.next_shard_iterator().map(str::to_owned);
    }
    Ok(out)
}

/// Orders Kinesis sequence numbers: decimal strings of up to 128 bits' worth of digits and
/// more, so compared by length, then digit by digit.
fn seq_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::seq_cmp;

    #[test]
    fn sequence_numbers_order_numerically() {
        let a = "49680602072552398339791629643671341621052596274470060034";
        let b = "49680602072552398339791629643671341621052596274470060100";
        assert!(seq_cmp(a, b).is_lt() && seq_cmp(b, a).is_gt() && seq_cmp(a, a).is_eq());
        assert!(seq_cmp("99", "100").is_lt());
        assert!(seq_cmp("0100", "100").is_eq());
    }
}
