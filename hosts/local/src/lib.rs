//! The tripflow pipeline on real local AWS engines.
//!
//! [`LocalStack`] starts DynamoDB Local, kinesis-mock and moto; [`resources::create`] makes the
//! stream, table, bucket and queues; [`esm`] plays Lambda's event source mappings;
//! [`Pipeline`] wires them to the four functions — in this process ([`InProcess`]) or as real
//! bootstrap processes behind a local Runtime API ([`runtime_api::BootstrapInvoker`]);
//! [`step_functions`] runs the template's KPI state machine on moto's ASL interpreter against
//! them; [`export`] reads the table and the kept rejects back out for `tripflow audit`.

pub mod capacity;
pub mod cpu;
pub mod esm;
pub mod export;
pub mod faults;
pub mod redrive;
pub mod resources;
pub mod runtime_api;
pub mod stack;
pub mod step_functions;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use serde_json::Value;
use tripflow_lambda::{App, Config, Function};
use tripflow_runtime::core::ParseOutcome;
use tripflow_runtime::{NativeCore, Runtime, TripCore, concat_records};

use crate::esm::{DynamoDbMapping, Invoker, KinesisMapping, OnFailure, Settings};
pub use crate::resources::Resources;
pub use crate::stack::LocalStack;

/// The four functions' configuration for these resources.
pub fn function_env(r: &Resources, timezone: &str, orphan_after: &str) -> Vec<(String, String)> {
    [
        ("TABLE_NAME", r.table.as_str()),
        ("DLQ_URL", &r.dlq_url),
        ("BUCKET", &r.bucket),
        ("TIMEZONE", timezone),
        ("ORPHAN_AFTER", orphan_after),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The functions running in this process, sharing one loaded component.
pub struct InProcess {
    apps: HashMap<&'static str, Arc<App>>,
    kills: Option<Kills>,
}

/// Invocations killed at a random point, as Lambda kills a function that runs out of time or
/// memory, or crashes: whatever it had written stays written, it answers nothing, and the
/// event source mapping sends the same records again.
pub struct Kills {
    /// One invocation in `every` of each function is killed.
    pub every: u32,
    rng: std::sync::Mutex<fastrand::Rng>,
    per_function: std::sync::Mutex<HashMap<&'static str, u64>>,
    within: Duration,
    functions: Vec<Function>,
    /// Invocations so far.
    pub invocations: std::sync::atomic::AtomicU64,
    /// Invocations killed before they answered.
    pub killed: std::sync::atomic::AtomicU64,
}

impl Kills {
    /// Kills the invocations `every/2`, `every/2 + every`, … of each function, each at a
    /// point drawn from `seed`.
    pub fn new(every: u32, seed: u64) -> Kills {
        Kills {
            every: every.max(1),
            rng: std::sync::Mutex::new(fastrand::Rng::with_seed(seed)),
            per_function: Default::default(),
            within: Duration::from_millis(100),
            functions: vec![Function::Ingest, Function::Matcher],
            invocations: Default::default(),
            killed: Default::default(),
        }
    }

    /// Kills at most `within` into an invocation (default 100 ms).
    pub fn within(mut self, within: Duration) -> Kills {
        self.within = within;
        self
    }

    /// Kills invocations of `functions` (default: the stream functions, ingest and matcher).
    pub fn of(mut self, functions: &[Function]) -> Kills {
        self.functions = functions.to_vec();
        self
    }

    /// When to kill this invocation of `function`, if it is to be killed: up to 100 ms in,
    /// which is inside most invocations here (one DynamoDB round trip is a few ms); one that
    /// answers sooner survives.
    pub(crate) fn next(&self, function: Function) -> Option<Duration> {
        use std::sync::atomic::Ordering;
        if !self.functions.contains(&function) {
            return None;
        }
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let n = {
            let mut counts = self.per_function.lock().expect("the kill counts");
            let n = counts.entry(function.name()).or_default();
            *n += 1;
            *n
        };
        let every = u64::from(self.every);
        (n % every == every / 2).then(|| {
            let mut rng = self.rng.lock().expect("the kill rng");
            Duration::from_micros(rng.u64(0..=self.within.as_micros() as u64))
        })
    }
}

impl InProcess {
    /// One [`App`] per function, configured from `env`, with clients for `stack`.
    pub async fn new(
        stack: &LocalStack,
        core: Arc<Runtime>,
        env: &[(String, String)],
    ) -> anyhow::Result<InProcess> {
        let sdk = stack.sdk_config().await;
        let mut apps = HashMap::new();
        for f in Function::ALL {
            let mut map: HashMap<String, String> = env.iter().cloned().collect();
            map.insert("_HANDLER".into(), f.name().into());
            let config = Config::from_map(&map)?;
            let mut app = App::with_clients(
                config,
                core.clone(),
                stack.function_dynamodb_client(&sdk),
                stack.function_s3_client(&sdk),
                stack.function_sqs_client(&sdk),
            );
            app.emit_metrics = false;
            apps.insert(f.name(), Arc::new(app));
        }
        Ok(InProcess { apps, kills: None })
    }

    /// Kills invocations at random points (see [`Kills`]).
    pub fn with_kills(mut self, kills: Kills) -> InProcess {
        self.kills = Some(kills);
        self
    }

    /// The kills so far, if kills are on.
    pub fn kills(&self) -> Option<&Kills> {
        self.kills.as_ref()
    }

    /// The app of `function`.
    pub fn app(&self, function: Function) -> &App {
        &self.apps[function.name()]
    }
}

impl Invoker for InProcess {
    async fn invoke(&self, function: Function, payload: Value) -> Result<Value, String> {
        let deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            + 60_000;
        let run = self.apps[function.name()].invoke(payload, deadline);
        match self.kills.as_ref().and_then(|k| k.next(function)) {
            Some(after) => match tokio::time::timeout(after, run).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => {
                    let kills = self.kills.as_ref().expect("kills are on");
                    kills
                        .killed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Err(format!(
                        "killed {} ms into the invocation",
                        after.as_millis()
                    ))
                }
            },
            None => run.await.map_err(|e| e.to_string()),
        }
    }
}

/// The stream → ingest and table stream → matcher mappings, driven by an [`Invoker`].
pub struct Pipeline<I: Invoker> {
    /// The functions.
    pub invoker: I,
    /// Kinesis → ingest.
    pub ingest: KinesisMapping,
    /// Table stream → matcher.
    pub matcher: DynamoDbMapping,
    on_failure: OnFailure,
}

impl<I: Invoker> Pipeline<I> {
    /// Mappings as `deploy/template.yaml` configures them (read from the copy built into
    /// this binary, so local and deployed settings are the same).
    pub async fn new(stack: &LocalStack, r: &Resources, invoker: I) -> Pipeline<I> {
        let setting = |f: Function| {
            Settings::from_template(esm::TEMPLATE, f.name())
                .expect("deploy/template.yaml configures both stream event sources")
        };
        Pipeline::with_settings(
            stack,
            r,
            invoker,
            setting(Function::Ingest),
            setting(Function::Matcher),
        )
        .await
    }

    /// Mappings with other settings (a test that needs a mapping to give up, say).
    pub async fn with_settings(
        stack: &LocalStack,
        r: &Resources,
        invoker: I,
        ingest: Settings,
        matcher: Settings,
    ) -> Pipeline<I> {
        let sdk = stack.sdk_config().await;
        let ingest = KinesisMapping::new(
            stack.kinesis_client(&sdk),
            &r.stream,
            &r.stream_arn,
            Function::Ingest,
            ingest,
        );
        let matcher = DynamoDbMapping::new(
            stack.streams_client(&sdk),
            &r.table_stream_arn,
            Function::Matcher,
            matcher,
        );
        Pipeline {
            invoker,
            ingest,
            matcher,
            on_failure: OnFailure {
                sqs: stack.sqs_client(&sdk),
                url: r.on_failure_url.clone(),
            },
        }
    }

    /// One poll of every shard of both sources, side by side (ingest and matcher
    /// invocations overlap, as in Lambda); the records read.
    pub async fn poll(&mut self) -> anyhow::Result<usize> {
        let (a, b) = tokio::try_join!(
            self.ingest.poll(&self.invoker, &self.on_failure),
            self.matcher.poll(&self.invoker, &self.on_failure)
        )?;
        Ok(a + b)
    }

    /// Polls until two passes in a row read nothing: every record sent so far is handled.
    pub async fn drain(&mut self) -> anyhow::Result<()> {
        let mut quiet = 0;
        while quiet < 2 {
            if self.poll().await? == 0 {
                quiet += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else {
                quiet = 0;
            }
        }
        Ok(())
    }

    /// Invokes a scheduled function (kpi, sweeper) with `payload`.
    pub async fn invoke(&self, f: Function, payload: Value) -> anyhow::Result<Value> {
        self.invoker
            .invoke(f, payload)
            .await
            .map_err(|e| anyhow::anyhow!("{} failed: {e}", f.name()))
    }
}

/// Puts `records` on `stream`, partitioned by trip id (a record without one — it will be
/// rejected — by its own bytes), in `PutRecords` calls of up to 500, resending what Kinesis
/// did not take. Order within a partition key is kept.
pub async fn send(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    records: &[Vec<u8>],
) -> anyhow::Result<()> {
    for chunk in records.chunks(500) {
        let keys = partition_keys(chunk);
        let mut pending: Vec<(&Vec<u8>, &String)> = chunk.iter().zip(&keys).collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            let entries = pending
                .iter()
                .map(|(r, key)| {
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(r.as_slice()))
                        .partition_key(key.as_str())
                        .build()
                        .expect("data and key are set")
                })
                .collect();
            let out = client
                .put_records()
                .stream_name(stream)
                .set_records(Some(entries))
                .send()
                .await
                .context("PutRecords")?;
            let failed: Vec<(&Vec<u8>, &String)> = out
                .records()
                .iter()
                .zip(&pending)
                .filter(|(r, _)| r.error_code().is_some())
                .map(|(_, p)| *p)
                .collect();
            if failed.len() == pending.len() && attempt > 8 {
                anyhow::bail!("Kinesis refused {} records 8 times in a row", failed.len());
            }
            pending = failed;
            attempt += 1;
            if !pending.is_empty() {
                tokio::time::sleep(tripflow_lambda::retry::backoff(attempt)).await;
            }
        }
    }
    Ok(())
}

/// Each record's partition key: its trip id as the core reads it (`events.parse`), so both
/// halves of a trip share a shard; a record the core rejects, by a hash of its bytes.
pub fn partition_keys(records: &[Vec<u8>]) -> Vec<String> {
    let (buffer, spans) = concat_records(records.iter().map(Vec::as_slice), usize::MAX);
    let outcomes = NativeCore.parse(&buffer, &spans).unwrap_or_default();
    records
        .iter()
        .enumerate()
        .map(|(i, r)| match outcomes.get(i) {
            Some(ParseOutcome::Accepted(e)) => e.trip_id.clone(),
            _ => format!("unparsable-{:016x}", fnv(r)),
        })
        .collect()
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The non-blank lines of an NDJSON file, each as a record.
pub fn records_of(text: &[u8]) -> Vec<Vec<u8>> {
    text.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(<[u8]>::to_vec)
        .collect()
}

/// `records` with every `every`-th record sent twice (0 = none), shuffled when `seed` is given.
pub fn shuffle_with_duplicates(
    records: &[Vec<u8>],
    seed: Option<u64>,
    every: usize,
) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(records.len() + records.len() / every.max(1));
    for (i, r) in records.iter().enumerate() {
        out.push(r.clone());
        if every > 0 && i % every == 0 {
            out.push(r.clone());
        }
    }
    if let Some(seed) = seed {
        fastrand::Rng::with_seed(seed).shuffle(&mut out);
    }
    out
}

/// Every message on `queue`, received until it is empty and deleted.
pub async fn drain_queue(sqs: &aws_sdk_sqs::Client, queue: &str) -> anyhow::Result<Vec<String>> {
    let mut bodies = Vec::new();
    let mut empty = 0;
    while empty < 2 {
        let out = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .context("ReceiveMessage")?;
        let msgs = out.messages();
        if msgs.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in msgs {
            bodies.push(m.body().unwrap_or_default().to_owned());
            if let Some(h) = m.receipt_handle() {
                sqs.delete_message()
                    .queue_url(queue)
                    .receipt_handle(h)
                    .send()
                    .await
                    .context("DeleteMessage")?;
            }
        }
    }
    Ok(bodies)
}

/// The original bytes of a dead-lettered record: from the message, or from S3 when the
/// record was too large for one (`raw_s3`).
pub async fn dlq_raw(
    s3: &aws_sdk_s3::Client,
    m: &tripflow_lambda::ingest::DlqMessage,
) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    match &m.raw_s3 {
        Some(uri) => {
            let (bucket, key) = uri
                .strip_prefix("s3://")
                .and_then(|p| p.split_once('/'))
                .with_context(|| format!("{uri} is not an s3://bucket/key address"))?;
            get_object(s3, bucket, key).await
        }
        None => Ok(base64::engine::general_purpose::STANDARD.decode(&m.raw_base64)?),
    }
}

/// An object's bytes.
pub async fn get_object(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> anyhow::Result<Vec<u8>> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .with_context(|| format!("GetObject s3://{bucket}/{key}"))?;
    Ok(out.body.collect().await?.into_bytes().to_vec())
}
