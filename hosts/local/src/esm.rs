//! Lambda's event source mappings, played locally: poll the Kinesis shards and the table's
//! stream shards, build the event JSON as AWS delivers it, invoke the function, and act on
//! the answer as the documented stream-source semantics say:
//!
//! - shards are read in order, one batch in flight per shard (parallelization factor 1);
//!   a DynamoDB stream child shard starts only after its parent is finished;
//! - `batchItemFailures`: the records before the lowest reported sequence number are
//!   checkpointed and the batch is retried from it; an empty list (or none) is success; an
//!   identifier that is not in the batch fails the whole batch;
//! - a function error fails the whole batch; with `bisect_on_error` the batch is split in two
//!   and each half retried on its own;
//! - after `max_retry_attempts` retries of a batch (or when its oldest record is older than
//!   `max_record_age`), a description of it goes to the on-failure destination (an SQS queue,
//!   in the shape AWS sends) and the mapping moves past it;
//! - a filter (the same JSON patterns as the template's `FilterCriteria`) drops records before
//!   the batch is built; dropped records are checkpointed.
//!
//! What it does not do: batching windows, tumbling windows, parallelization factors above 1,
//! concurrency between shards (shards are polled one after another).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_dynamodbstreams::types::{AttributeValue as StreamValue, ShardIteratorType};
use base64::Engine as _;
use serde_json::{Value, json};
use tripflow_lambda::Function;

use crate::stack::REGION;

/// Invokes a function with an event, as Lambda's Invoke API does.
pub trait Invoker: Send + Sync {
    /// The function's response, or its error message (a function error).
    fn invoke(
        &self,
        function: Function,
        payload: Value,
    ) -> impl std::future::Future<Output = Result<Value, String>> + Send;
}

/// A shared invoker (the event source mappings and the Lambda endpoint of
/// [`crate::step_functions`] drive the same functions).
impl<I: Invoker> Invoker for std::sync::Arc<I> {
    fn invoke(
        &self,
        function: Function,
        payload: Value,
    ) -> impl std::future::Future<Output = Result<Value, String>> + Send {
        (**self).invoke(function, payload)
    }
}

/// A mapping's settings (the names of `AWS::Lambda::EventSourceMapping`'s properties).
#[derive(Clone, Debug)]
pub struct Settings {
    /// `BatchSize`.
    pub batch_size: usize,
    /// `MaximumRetryAttempts`.
    pub max_retry_attempts: u32,
    /// `BisectBatchOnFunctionError`.
    pub bisect_on_error: bool,
    /// `MaximumRecordAgeInSeconds`.
    pub max_record_age: Duration,
    /// `FilterCriteria` patterns (a record passes if any matches; none = all pass).
    pub filters: Vec<Value>,
    /// `ParallelizationFactor`: concurrent batches per shard, split by partition key (the
    /// order of each key's records is kept).
    pub parallelization_factor: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_size: 100,
            max_retry_attempts: 3,
            bisect_on_error: true,
            max_record_age: Duration::from_secs(3600),
            filters: Vec::new(),
            parallelization_factor: 1,
        }
    }
}

/// The template every deployment is made from, built into this binary: the local mappings take
/// their settings from it, so local and deployed behaviour cannot drift apart.
pub const TEMPLATE: &str = include_str!("../../../deploy/template.yaml");

impl Settings {
    /// The settings of the event source of the function whose `Handler` is `handler` in a SAM
    /// template (`Events.<name>.Properties`): `BatchSize`, `MaximumRetryAttempts`,
    /// `BisectBatchOnFunctionError`, `MaximumRecordAgeInSeconds` and `FilterCriteria`.
    pub fn from_template(template: &str, handler: &str) -> anyhow::Result<Settings> {
        use anyhow::Context as _;
        let doc: serde_yaml::Value =
            serde_yaml::from_str(template).context("reading the template")?;
        let function = doc["Resources"]
            .as_mapping()
            .context("the template has no Resources")?
            .values()
            .find(|r| r["Properties"]["Handler"].as_str() == Some(handler))
            .with_context(|| format!("no function with Handler {handler} in the template"))?;
        let props = function["Properties"]["Events"]
            .as_mapping()
            .and_then(|events| {
                events
                    .values()
                    .find(|e| matches!(e["Type"].as_str(), Some("Kinesis" | "DynamoDB")))
            })
            .map(|e| &e["Properties"])
            .with_context(|| format!("function {handler} has no stream event source"))?;
        let number = |name: &str| {
            props[name]
                .as_i64()
                .with_context(|| format!("{handler}: {name} is not set to a number"))
        };
        // -1 means "until the record expires from the stream" for both limits.
        let unlimited = |n: i64| if n < 0 { None } else { Some(n as u64) };
        let filters = match props["FilterCriteria"]["Filters"].as_sequence() {
            None => Vec::new(),
            Some(list) => list
                .iter()
                .map(|f| {
                    let text = f["Pattern"]
                        .as_str()
                        .context("a filter without a Pattern")?;
                    serde_json::from_str(text).context("a filter Pattern that is not JSON")
                })
                .collect::<anyhow::Result<_>>()?,
        };
        Ok(Settings {
            batch_size: number("BatchSize")? as usize,
            max_retry_attempts: unlimited(number("MaximumRetryAttempts")?)
                .map_or(u32::MAX, |n| n as u32),
            bisect_on_error: props["BisectBatchOnFunctionError"]
                .as_bool()
                .unwrap_or(false),
            max_record_age: unlimited(number("MaximumRecordAgeInSeconds")?)
                .map_or(Duration::MAX, Duration::from_secs),
            filters,
            parallelization_factor: props["ParallelizationFactor"].as_u64().unwrap_or(1).max(1)
                as usize,
        })
    }
}

/// What a mapping did so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records delivered in batches (retries count again).
    pub delivered: u64,
    /// Invocations.
    pub invocations: u64,
    /// Records dropped by the filter.
    pub filtered: u64,
    /// Records given up on and described to the on-failure destination.
    pub discarded: u64,
    /// Retries (partial or whole).
    pub retries: u64,
}

impl Stats {
    fn absorb(&mut self, o: &Stats) {
        self.delivered += o.delivered;
        self.invocations += o.invocations;
        self.filtered += o.filtered;
        self.discarded += o.discarded;
        self.retries += o.retries;
    }
}

/// Delivers each shard's (or shard part's) records concurrently, as Lambda runs one
/// invocation per shard at a time and shards side by side.
async fn handle_all<I: Invoker>(
    invoker: &I,
    settings: &Settings,
    stats: &mut Stats,
    on_failure: &OnFailure,
    work: Vec<(SourceInfo, Vec<(String, Value)>)>,
) -> anyhow::Result<()> {
    let results =
        futures_util::future::join_all(work.into_iter().map(|(info, events)| async move {
            let mut s = Stats::default();
            let r = handle(invoker, settings, &mut s, on_failure, &info, events).await;
            (s, r)
        }))
        .await;
    let mut first_error = None;
    for (s, r) in results {
        stats.absorb(&s);
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// One record, as delivered: its sequence number, when it arrived, and its event JSON.
#[derive(Clone, Debug)]
struct Delivered {
    seq: String,
    arrived: Instant,
    json: Value,
}

/// The outcome of invoking with a batch.
enum Outcome {
    Done,
    /// Retry from this index of the batch.
    RetryFrom(usize),
    FunctionError(String),
}

/// A stretch of records the mapping gave up on, and why.
type GivenUp = (Vec<Delivered>, &'static str);

/// Sends a batch to `function` until it is handled or given up on; returns what was given
/// up on, for the on-failure destination.
async fn deliver<I: Invoker>(
    invoker: &I,
    function: Function,
    settings: &Settings,
    stats: &mut Stats,
    source: &SourceInfo,
    batch: Vec<Delivered>,
) -> Vec<GivenUp> {
    let mut given_up = Vec::new();
    // (records, retries so far)
    let mut work: Vec<(Vec<Delivered>, u32)> = vec![(batch, 0)];
    while let Some((records, attempts)) = work.pop() {
        if records.is_empty() {
            continue;
        }
        let too_old = records[0].arrived.elapsed() > settings.max_record_age;
        if too_old || attempts > settings.max_retry_attempts {
            stats.discarded += records.len() as u64;
            let why = if too_old {
                "RecordAgeExceeded"
            } else {
                "RetryAttemptsExhausted"
            };
            given_up.push((records, why));
            continue;
        }
        stats.invocations += 1;
        stats.delivered += records.len() as u64;
        let payload = source.event(&records);
        let outcome = match invoker.invoke(function, payload).await {
            Err(e) => Outcome::FunctionError(e),
            Ok(resp) => match failures(&resp) {
                None => Outcome::Done,
                Some(ids) => {
                    let positions: Option<Vec<usize>> = ids
                        .iter()
                        .map(|id| records.iter().position(|r| &r.seq == id))
                        .collect();
                    match positions.and_then(|p| p.into_iter().min()) {
                        Some(i) => Outcome::RetryFrom(i),
                        None => Outcome::FunctionError(format!(
                            "batchItemFailures names records not in the batch: {ids:?}"
                        )),
                    }
                }
            },
        };
        match outcome {
            Outcome::Done => {}
            Outcome::RetryFrom(i) => {
                stats.retries += 1;
                work.push((records[i..].to_vec(), attempts + 1));
            }
            Outcome::FunctionError(e) => {
                stats.retries += 1;
                tracing::warn!(function = function.name(), error = %e, records = records.len(), "function error");
                if settings.bisect_on_error && records.len() > 1 {
                    let mid = records.len() / 2;
                    let (a, b) = records.split_at(mid);
                    // Second half after the first: order within the shard is kept.
                    work.push((b.to_vec(), attempts + 1));
                    work.push((a.to_vec(), attempts + 1));
                } else {
                    work.push((records, attempts + 1));
                }
            }
        }
    }
    given_up
}

/// One shard's read, the same for both sources: drops what the filter rejects (checkpointed
/// like delivered records), delivers the rest, and describes what was given up to the
/// on-failure destination.
async fn handle<I: Invoker>(
    invoker: &I,
    settings: &Settings,
    stats: &mut Stats,
    on_failure: &OnFailure,
    info: &SourceInfo,
    events: Vec<(String, Value)>,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(events.len());
    for (seq, json) in events {
        if settings.filters.is_empty() || settings.filters.iter().any(|f| matches(f, &json)) {
            batch.push(Delivered {
                seq,
                arrived: Instant::now(),
                json,
            });
        } else {
            stats.filtered += 1;
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    for (records, why) in deliver(invoker, info.function, settings, stats, info, batch).await {
        on_failure.send(info, &records, why).await?;
    }
    Ok(())
}

/// The sequence numbers in a response's `batchItemFailures`, or `None` when it reports none.
fn failures(resp: &Value) -> Option<Vec<String>> {
    let list = resp.get("batchItemFailures")?.as_array()?;
    if list.is_empty() {
        return None;
    }
    Some(
        list.iter()
            .map(|f| {
                f.get("itemIdentifier")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            })
            .collect(),
    )
}

/// Whether `record` matches a Lambda filter `pattern`: every key of the pattern must be
/// present; an array leaf lists accepted values (strings, numbers, `{"prefix": "…"}`,
/// `{"exists": bool}`).
pub fn matches(pattern: &Value, record: &Value) -> bool {
    let Some(p) = pattern.as_object() else {
        return false;
    };
    p.iter().all(|(k, want)| {
        let got = record.get(k);
        match want {
            Value::Object(_) => got.is_some_and(|g| matches(want, g)),
            Value::Array(options) => options.iter().any(|o| match (o, got) {
                (Value::Object(rule), got) => {
                    if let Some(prefix) = rule.get("prefix").and_then(Value::as_str) {
                        got.and_then(Value::as_str)
                            .is_some_and(|s| s.starts_with(prefix))
                    } else if let Some(exists) = rule.get("exists").and_then(Value::as_bool) {
                        got.is_some() == exists
                    } else {
                        false
                    }
                }
                (value, Some(g)) => value == g,
                (_, None) => false,
            }),
            _ => false,
        }
    })
}

/// Where given-up batches are described.
pub struct OnFailure {
    /// SQS client.
    pub sqs: aws_sdk_sqs::Client,
    /// Queue URL.
    pub url: String,
}

impl OnFailure {
    async fn send(
        &self,
        source: &SourceInfo,
        records: &[Delivered],
        condition: &str,
    ) -> anyhow::Result<()> {
        let key = match source.kind {
            SourceKind::Kinesis => "KinesisBatchInfo",
            SourceKind::DynamoDb => "DDBStreamBatchInfo",
        };
        let body = json!({
            "requestContext": {"condition": condition, "functionArn": format!("arn:aws:lambda:{REGION}:000000000000:function:tripflow-{}", source.function.name())},
            key: {
                "shardId": source.shard_id,
                "startSequenceNumber": records.first().map(|r| r.seq.clone()),
                "endSequenceNumber": records.last().map(|r| r.seq.clone()),
                "batchSize": records.len(),
                "streamArn": source.arn,
            },
        });
        self.sqs
            .send_message()
            .queue_url(&self.url)
            .message_body(body.to_string())
            .send()
            .await
            .context("sending to the on-failure destination")?;
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum SourceKind {
    Kinesis,
    DynamoDb,
}

#[derive(Clone)]
struct SourceInfo {
    kind: SourceKind,
    function: Function,
    arn: String,
    shard_id: String,
}

impl SourceInfo {
    fn event(&self, records: &[Delivered]) -> Value {
        json!({"Records": records.iter().map(|r| r.json.clone()).collect::<Vec<_>>()})
    }
}

/// A Kinesis stream → function mapping.
pub struct KinesisMapping {
    client: aws_sdk_kinesis::Client,
    stream: String,
    arn: String,
    function: Function,
    settings: Settings,
    iterators: HashMap<String, Option<String>>,
    /// What it did.
    pub stats: Stats,
}

impl KinesisMapping {
    /// A mapping from the start of every shard of `stream` (`TRIM_HORIZON`).
    pub fn new(
        client: aws_sdk_kinesis::Client,
        stream: &str,
        arn: &str,
        function: Function,
        settings: Settings,
    ) -> Self {
        KinesisMapping {
            client,
            stream: stream.into(),
            arn: arn.into(),
            function,
            settings,
            iterators: HashMap::new(),
            stats: Stats::default(),
        }
    }

    /// One pass over the shards: at most one batch per shard. Returns the records read.
    pub async fn poll<I: Invoker>(
        &mut self,
        invoker: &I,
        on_failure: &OnFailure,
    ) -> anyhow::Result<usize> {
        let shards = self
            .client
            .list_shards()
            .stream_name(&self.stream)
            .send()
            .await
            .context("ListShards")?;
        let mut read = 0;
        let mut work = Vec::new();
        for shard in shards.shards() {
            let id = shard.shard_id().to_owned();
            if !self.iterators.contains_key(&id) {
                let it = self
                    .client
                    .get_shard_iterator()
                    .stream_name(&self.stream)
                    .shard_id(&id)
                    .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
                    .send()
                    .await
                    .context("GetShardIterator")?;
                self.iterators
                    .insert(id.clone(), it.shard_iterator().map(str::to_owned));
            }
            let Some(Some(iterator)) = self.iterators.get(&id).cloned() else {
                continue;
            };
            let out = self
                .client
                .get_records()
                .shard_iterator(iterator)
                .limit(self.settings.batch_size as i32)
                .send()
                .await
                .context("GetRecords")?;
            self.iterators
                .insert(id.clone(), out.next_shard_iterator().map(str::to_owned));
            let events = out
                .records()
                .iter()
                .map(|r| {
                    let arrival = r
                        .approximate_arrival_timestamp()
                        .map(|t| t.as_secs_f64())
                        .unwrap_or(0.0);
                    let event = json!({
                        "kinesis": {
                            "kinesisSchemaVersion": "1.0",
                            "partitionKey": r.partition_key(),
                            "sequenceNumber": r.sequence_number(),
                            "data": base64::engine::general_purpose::STANDARD.encode(r.data().as_ref()),
                            "approximateArrivalTimestamp": arrival,
                        },
                        "eventSource": "aws:kinesis",
                        "eventVersion": "1.0",
                        "eventID": format!("{id}:{}", r.sequence_number()),
                        "eventName": "aws:kinesis:record",
                        "invokeIdentityArn": format!("arn:aws:iam::000000000000:role/tripflow-{}", self.function.name()),
                        "awsRegion": REGION,
                        "eventSourceARN": self.arn,
                    });
                    (r.sequence_number().to_owned(), event)
                })
                .collect();
            read += out.records().len();
            let info = SourceInfo {
                kind: SourceKind::Kinesis,
                function: self.function,
                arn: self.arn.clone(),
                shard_id: id.clone(),
            };
            work.push((info, events));
        }
        handle_all(invoker, &self.settings, &mut self.stats, on_failure, work).await?;
        Ok(read)
    }
}

/// A DynamoDB stream → function mapping.
pub struct DynamoDbMapping {
    client: aws_sdk_dynamodbstreams::Client,
    arn: String,
    function: Function,
    settings: Settings,
    iterators: HashMap<String, Option<String>>,
    finished: HashSet<String>,
    /// What it did.
    pub stats: Stats,
}

impl DynamoDbMapping {
    /// A mapping from the start of the stream `arn` (`TRIM_HORIZON`).
    pub fn new(
        client: aws_sdk_dynamodbstreams::Client,
        arn: &str,
        function: Function,
        settings: Settings,
    ) -> Self {
        DynamoDbMapping {
            client,
            arn: arn.into(),
            function,
            settings,
            iterators: HashMap::new(),
            finished: HashSet::new(),
            stats: Stats::default(),
        }
    }

    /// One pass over the shards whose parents are finished: at most one batch per shard.
    pub async fn poll<I: Invoker>(
        &mut self,
        invoker: &I,
        on_failure: &OnFailure,
    ) -> anyhow::Result<usize> {
        let desc = self
            .client
            .describe_stream()
            .stream_arn(&self.arn)
            .send()
            .await
            .context("DescribeStream")?;
        let shards: Vec<(String, Option<String>)> = desc
            .stream_description()
            .map(|d| {
                d.shards()
                    .iter()
                    .filter_map(|s| {
                        Some((
                            s.shard_id()?.to_owned(),
                            s.parent_shard_id().map(str::to_owned),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let known: HashSet<&String> = shards.iter().map(|(id, _)| id).collect();
        let mut read = 0;
        let mut work = Vec::new();
        // A child is read only after its parent was finished in an earlier pass, so a parent's
        // last batch and a child's first are never delivered side by side.
        let finished_before = self.finished.clone();
        for (id, parent) in &shards {
            if self.finished.contains(id) {
                continue;
            }
            if let Some(p) = parent
                && known.contains(p)
                && !finished_before.contains(p)
            {
                continue;
            }
            if !self.iterators.contains_key(id) {
                let it = self
                    .client
                    .get_shard_iterator()
                    .stream_arn(&self.arn)
                    .shard_id(id)
                    .shard_iterator_type(ShardIteratorType::TrimHorizon)
                    .send()
                    .await
                    .context("GetShardIterator")?;
                self.iterators
                    .insert(id.clone(), it.shard_iterator().map(str::to_owned));
            }
            let Some(Some(iterator)) = self.iterators.get(id).cloned() else {
                self.finished.insert(id.clone());
                continue;
            };
            let out = self
                .client
                .get_records()
                .shard_iterator(iterator)
                .limit(self.settings.batch_size as i32)
                .send()
                .await
                .context("GetRecords")?;
            let next = out.next_shard_iterator().map(str::to_owned);
            if next.is_none() {
                self.finished.insert(id.clone());
            }
            self.iterators.insert(id.clone(), next);
            let events = out
                .records()
                .iter()
                .map(|r| {
                    let event = stream_record_json(r, &self.arn);
                    let seq = event["dynamodb"]["SequenceNumber"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    (seq, event)
                })
                .collect();
            read += out.records().len();
            let info = SourceInfo {
                kind: SourceKind::DynamoDb,
                function: self.function,
                arn: self.arn.clone(),
                shard_id: id.clone(),
            };
            for part in split_by_key(events, self.settings.parallelization_factor) {
                work.push((info.clone(), part));
            }
        }
        handle_all(invoker, &self.settings, &mut self.stats, on_failure, work).await?;
        Ok(read)
    }
}

/// A shard's records in `factor` parts by a hash of each record's partition key, each part in
/// shard order: what `ParallelizationFactor` does.
fn split_by_key(events: Vec<(String, Value)>, factor: usize) -> Vec<Vec<(String, Value)>> {
    let n = factor.max(1) as u64;
    let mut parts: Vec<Vec<(String, Value)>> = vec![Vec::new(); n as usize];
    for (seq, event) in events {
        // The table's partition key (`pk`): both halves of a trip stay in one part, in order.
        let keys = &event["dynamodb"]["Keys"];
        let key = keys.get("pk").unwrap_or(keys).to_string();
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        parts[(h % n) as usize].push((seq, event));
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// A DynamoDB Streams record as Lambda delivers it.
fn stream_record_json(r: &aws_sdk_dynamodbstreams::types::Record, arn: &str) -> Value {
    let mut dynamodb = serde_json::Map::new();
    if let Some(s) = r.dynamodb() {
        if let Some(t) = s.approximate_creation_date_time() {
            dynamodb.insert("ApproximateCreationDateTime".into(), json!(t.secs()));
        }
        if let Some(k) = s.keys() {
            dynamodb.insert("Keys".into(), image_json(k));
        }
        if let Some(i) = s.new_image() {
            dynamodb.insert("NewImage".into(), image_json(i));
        }
        if let Some(i) = s.old_image() {
            dynamodb.insert("OldImage".into(), image_json(i));
        }
        if let Some(n) = s.sequence_number() {
            dynamodb.insert("SequenceNumber".into(), json!(n));
        }
        if let Some(n) = s.size_bytes() {
            dynamodb.insert("SizeBytes".into(), json!(n));
        }
        if let Some(v) = s.stream_view_type() {
            dynamodb.insert("StreamViewType".into(), json!(v.as_str()));
        }
    }
    let mut event = json!({
        "eventID": r.event_id(),
        "eventName": r.event_name().map(|n| n.as_str()),
        "eventVersion": r.event_version().unwrap_or("1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": REGION,
        "dynamodb": dynamodb,
        "eventSourceARN": arn,
    });
    if let Some(u) = r.user_identity() {
        event["userIdentity"] = json!({"type": u.r#type(), "principalId": u.principal_id()});
    }
    event
}

/// A stream image as DynamoDB JSON (`{"attr": {"S": "…"}}`), as Lambda delivers it.
fn image_json(item: &HashMap<String, StreamValue>) -> Value {
    serde_json::to_value(serde_dynamo::Item::from(item.clone()))
        .expect("an item serialises as DynamoDB JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_images_are_dynamodb_json() {
        let item = HashMap::from([
            ("s".to_owned(), StreamValue::S("x".into())),
            ("n".to_owned(), StreamValue::N("1".into())),
            (
                "b".to_owned(),
                StreamValue::B(aws_sdk_dynamodbstreams::primitives::Blob::new(
                    b"hi".to_vec(),
                )),
            ),
            ("t".to_owned(), StreamValue::Bool(true)),
            ("z".to_owned(), StreamValue::Null(true)),
            (
                "l".to_owned(),
                StreamValue::L(vec![StreamValue::S("a".into())]),
            ),
            (
                "m".to_owned(),
                StreamValue::M(HashMap::from([(
                    "k".to_owned(),
                    StreamValue::N("2".into()),
                )])),
            ),
        ]);
        assert_eq!(
            image_json(&item),
            json!({"s": {"S": "x"}, "n": {"N": "1"}, "b": {"B": "aGk="}, "t": {"BOOL": true},
                   "z": {"NULL": true}, "l": {"L": [{"S": "a"}]}, "m": {"M": {"k": {"N": "2"}}}})
        );
    }

    #[test]
    fn settings_come_from_the_deployed_template() {
        let ingest = Settings::from_template(TEMPLATE, "ingest").unwrap();
        assert_eq!(ingest.batch_size, 500);
        assert!(ingest.bisect_on_error && ingest.filters.is_empty());
        assert_eq!(ingest.max_retry_attempts, u32::MAX, "retried until expiry");
        assert_eq!(ingest.parallelization_factor, 1);
        let matcher = Settings::from_template(TEMPLATE, "matcher").unwrap();
        assert_eq!(matcher.batch_size, 100);
        assert_eq!(matcher.max_record_age, Duration::MAX);
        assert_eq!(matcher.parallelization_factor, 4);
        assert_eq!(matcher.filters.len(), 1);
        // The template's filter passes writes of trip items only: no manifests, markers,
        // watermark or TTL deletions.
        let rec = |name: &str, sk: &str| json!({"eventName": name, "dynamodb": {"Keys": {"pk": {"S": "TRIP#1"}, "sk": {"S": sk}}}});
        assert!(matches(&matcher.filters[0], &rec("INSERT", "TRIP")));
        assert!(matches(&matcher.filters[0], &rec("MODIFY", "TRIP")));
        assert!(!matches(
            &matcher.filters[0],
            &rec("INSERT", "DAY#2019-03-01")
        ));
        assert!(!matches(&matcher.filters[0], &rec("MODIFY", "TRIPS")));
        assert!(!matches(&matcher.filters[0], &rec("REMOVE", "TRIP")));
        let err = Settings::from_template(TEMPLATE, "kpi").unwrap_err();
        assert!(err.to_string().contains("no stream event source"), "{err}");
    }

    #[test]
    fn a_parallelization_factor_keeps_each_keys_order() {
        let ev = |seq: u32, pk: &str| {
            (
                seq.to_string(),
                json!({"dynamodb": {"Keys": {"pk": {"S": pk}, "sk": {"S": format!("EVENT#{seq}")}}}}),
            )
        };
        let events: Vec<_> = (0..40).map(|i| ev(i, &format!("TRIP#{}", i % 7))).collect();
        let parts = split_by_key(events, 4);
        assert!(parts.len() > 1 && parts.len() <= 4);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 40);
        for part in &parts {
            let seqs: Vec<u32> = part.iter().map(|(s, _)| s.parse().unwrap()).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
            let pks: HashSet<String> = part
                .iter()
                .map(|(_, e)| e["dynamodb"]["Keys"]["pk"].to_string())
                .collect();
            for other in parts.iter().filter(|p| !std::ptr::eq(*p, part)) {
                assert!(
                    other
                        .iter()
                        .all(|(_, e)| !pks.contains(&e["dynamodb"]["Keys"]["pk"].to_string()))
                );
            }
        }
    }

    #[test]
    fn filter_patterns_follow_lambda_semantics() {
        let insert_of_event = json!({"eventName": ["INSERT"], "dynamodb": {"Keys": {"sk": {"S": [{"prefix": "EVENT#"}]}}}});
        let rec = |name: &str, sk: &str| json!({"eventName": name, "dynamodb": {"Keys": {"pk": {"S": "TRIP#1"}, "sk": {"S": sk}}}});
        assert!(matches(&insert_of_event, &rec("INSERT", "EVENT#start")));
        assert!(!matches(&insert_of_event, &rec("MODIFY", "EVENT#start")));
        assert!(!matches(&insert_of_event, &rec("REMOVE", "EVENT#end")));
        assert!(!matches(&insert_of_event, &rec("INSERT", "WATERMARK")));
        let exists = json!({"userIdentity": [{"exists": false}]});
        assert!(matches(&exists, &rec("REMOVE", "x")));
        assert!(!matches(
            &exists,
            &json!({"userIdentity": {"type": "Service"}})
        ));
    }

    /// Records every batch it is invoked with and answers by a rule.
    struct Scripted<F: Fn(&[String], usize) -> Result<Value, String> + Send + Sync> {
        answer: F,
        calls: std::sync::Mutex<Vec<Vec<String>>>,
    }

    impl<F: Fn(&[String], usize) -> Result<Value, String> + Send + Sync> Invoker for Scripted<F> {
        async fn invoke(&self, _: Function, payload: Value) -> Result<Value, String> {
            let seqs: Vec<String> = payload["Records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["seq"].as_str().unwrap().to_owned())
                .collect();
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(seqs.clone());
                calls.len()
            };
            (self.answer)(&seqs, n)
        }
    }

    fn batch(n: usize) -> Vec<Delivered> {
        (1..=n)
            .map(|i| Delivered {
                seq: i.to_string(),
                arrived: Instant::now(),
                json: json!({"seq": i.to_string()}),
            })
            .collect()
    }

    fn info() -> SourceInfo {
        SourceInfo {
            kind: SourceKind::Kinesis,
            function: Function::Ingest,
            arn: "arn:aws:kinesis:us-east-1:000000000000:stream/s".into(),
            shard_id: "shardId-000000000000".into(),
        }
    }

    async fn run<F: Fn(&[String], usize) -> Result<Value, String> + Send + Sync>(
        settings: Settings,
        records: usize,
        answer: F,
    ) -> (Vec<Vec<String>>, Vec<GivenUp>, Stats) {
        let inv = Scripted {
            answer,
            calls: std::sync::Mutex::new(Vec::new()),
        };
        let mut stats = Stats::default();
        let given_up = deliver(
            &inv,
            Function::Ingest,
            &settings,
            &mut stats,
            &info(),
            batch(records),
        )
        .await;
        (inv.calls.into_inner().unwrap(), given_up, stats)
    }

    fn seqs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn partial_failure_retries_from_the_lowest_reported_record() {
        let (calls, given_up, _) = run(Settings::default(), 5, |seqs, n| {
            Ok(if n == 1 {
                json!({"batchItemFailures": [{"itemIdentifier": "4"}, {"itemIdentifier": "3"}]})
            } else {
                assert_eq!(seqs, ["3", "4", "5"]);
                json!({"batchItemFailures": []})
            })
        })
        .await;
        assert_eq!(
            calls,
            [seqs(&["1", "2", "3", "4", "5"]), seqs(&["3", "4", "5"])]
        );
        assert!(given_up.is_empty());
    }

    #[tokio::test]
    async fn an_unknown_identifier_fails_the_whole_batch() {
        let (calls, _, _) = run(Settings::default(), 2, |_, n| {
            Ok(if n == 1 {
                json!({"batchItemFailures": [{"itemIdentifier": "999"}]})
            } else {
                json!({})
            })
        })
        .await;
        // Bisected, like any function error: each half on its own.
        assert_eq!(calls, [seqs(&["1", "2"]), seqs(&["1"]), seqs(&["2"])]);
    }

    #[tokio::test]
    async fn bisect_isolates_a_poison_record_and_gives_up_on_it_alone() {
        let settings = Settings {
            max_retry_attempts: 3,
            ..Settings::default()
        };
        let (calls, given_up, stats) = run(settings, 8, |seqs, _| {
            if seqs.iter().any(|s| s == "6") {
                Err("boom".into())
            } else {
                Ok(json!({}))
            }
        })
        .await;
        assert_eq!(given_up.len(), 1);
        assert_eq!(
            given_up[0]
                .0
                .iter()
                .map(|r| r.seq.as_str())
                .collect::<Vec<_>>(),
            ["6"]
        );
        assert_eq!(given_up[0].1, "RetryAttemptsExhausted");
        assert_eq!(stats.discarded, 1);
        // Every other record was handled, in order within the shard.
        let handled: Vec<String> = calls
            .iter()
            .filter(|c| !c.contains(&"6".to_owned()))
            .flatten()
            .cloned()
            .collect();
        assert_eq!(handled, seqs(&["1", "2", "3", "4", "5", "7", "8"]));
        // 8 → 4+4 → 2+2 → 1+1: three bisections reach the poison record, then retries end.
        assert_eq!(calls.iter().filter(|c| c.as_slice() == ["6"]).count(), 1);
    }

    #[tokio::test]
    async fn without_bisect_the_batch_is_retried_whole_then_given_up() {
        let settings = Settings {
            max_retry_attempts: 2,
            bisect_on_error: false,
            ..Settings::default()
        };
        let (calls, given_up, _) = run(settings, 3, |_, _| Err("down".into())).await;
        assert_eq!(calls.len(), 3, "the first attempt and two retries");
        assert_eq!(given_up.len(), 1);
        assert_eq!(given_up[0].0.len(), 3);
    }

    #[test]
    fn failures_are_read_as_lambda_reads_them() {
        assert_eq!(failures(&json!({"batchItemFailures": []})), None);
        assert_eq!(failures(&json!({})), None);
        assert_eq!(
            failures(
                &json!({"batchItemFailures": [{"itemIdentifier": "7"}, {"itemIdentifier": "5"}]})
            ),
            Some(vec!["7".into(), "5".into()])
        );
    }
}
