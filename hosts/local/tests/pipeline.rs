//! The AWS pipeline end to end on real local engines (DynamoDB Local, kinesis-mock, moto),
//! held to the CLI: the same events give the same KPI bytes, the same rejections, and
//! nothing is lost.
//!
//! Needs the engines installed by `scripts/install-local-aws.sh` (the test command runs it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use tripflow_lambda::Function;
use tripflow_lambda::ingest::DlqMessage;
use tripflow_local::esm::Invoker;
use tripflow_local::runtime_api::BootstrapInvoker;
use tripflow_local::{InProcess, LocalStack, Pipeline, resources, stack};
use tripflow_runtime::{ComponentSource, Limits, Runtime};
use tripflow_store::{Input, InputSource, KpiOptions, ReplayOptions, StateDir};

const ZONE: &str = "America/New_York";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What `tripflow replay` + `tripflow kpi` make of a file: the CSV, the summary, and
/// (reason, raw bytes) of each quarantined record.
struct CliRun {
    csv: String,
    orphans: usize,
    stored: u64,
    duplicates: u64,
    rejected: Vec<(String, Vec<u8>)>,
}

fn cli_replay(core: &Runtime, file: &Path) -> CliRun {
    let mut state = StateDir::in_memory().unwrap();
    let input = Input {
        name: "events.ndjson".into(),
        source: InputSource::File(file.to_path_buf()),
    };
    let mut quarantine = Vec::new();
    let summary = tripflow_store::replay(
        core,
        &mut state,
        &[input],
        &ReplayOptions::default(),
        Some(&mut quarantine),
        &(),
    )
    .unwrap();
    let kpi = tripflow_store::kpi(
        core,
        &state,
        &KpiOptions {
            zone: ZONE.into(),
            ..KpiOptions::default()
        },
    )
    .unwrap();
    let orphans = tripflow_store::sweep(core, &mut state, 24 * 3_600_000_000_000)
        .unwrap()
        .orphans
        .len();
    let mut rejected: Vec<(String, Vec<u8>)> = String::from_utf8(quarantine)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let raw = match (v.get("raw"), v.get("raw_base64")) {
                (Some(Value::String(s)), _) => s.clone().into_bytes(),
                (_, Some(Value::String(b))) => {
                    base64::engine::general_purpose::STANDARD.decode(b).unwrap()
                }
                _ => panic!("quarantine line without raw bytes: {l}"),
            };
            (v["reason"].as_str().unwrap().to_owned(), raw)
        })
        .collect();
    rejected.sort();
    CliRun {
        csv: kpi.csv,
        orphans,
        stored: summary.stored,
        duplicates: summary.duplicates,
        rejected,
    }
}

async fn dlq(stack: &LocalStack, r: &tripflow_local::Resources) -> Vec<DlqMessage> {
    let sdk = stack.sdk_config().await;
    tripflow_local::drain_queue(&stack.sqs_client(&sdk), &r.dlq_url)
        .await
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect()
}

async fn event_items(stack: &LocalStack, table: &str) -> u64 {
    let sdk = stack.sdk_config().await;
    let ddb = stack.dynamodb_client(&sdk);
    let mut n = 0;
    let mut start = None;
    loop {
        let out = ddb
            .scan()
            .table_name(table)
            .filter_expression("begins_with(sk, :e)")
            .expression_attribute_values(
                ":e",
                aws_sdk_dynamodb::types::AttributeValue::S("EVENT#".into()),
            )
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        n += out.count() as u64;
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            return n;
        }
    }
}

fn date_range(csv: &str) -> (String, String) {
    let dates: Vec<&str> = csv.lines().skip(1).map(|l| &l[..10]).collect();
    (dates[0].to_owned(), dates[dates.len() - 1].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nyc_sample_through_the_pipeline_equals_the_cli_replay() {
    let text = std::fs::read(repo().join("fixtures/cases/nyc-tlc-2019-03/input-1.ndjson")).unwrap();
    let lines = tripflow_local::records_of(&text);
    // Shuffled, every 7th record twice.
    let records = tripflow_local::shuffle_with_duplicates(&lines, Some(2019), 7);
    assert!(records.len() > lines.len());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sent.ndjson");
    std::fs::write(
        &file,
        records
            .iter()
            .flat_map(|r| r.iter().copied().chain([b'\n']))
            .collect::<Vec<u8>>(),
    )
    .unwrap();

    let core =
        Arc::new(Runtime::load(&ComponentSource::Embedded, Limits::default(), None).unwrap());
    let cli = cli_replay(&core, &file);

    let stack = LocalStack::start(&stack::tools_dir()).await.unwrap();
    let sdk = stack.sdk_config().await;
    let r = resources::create(&sdk, &stack, 2).await.unwrap();
    let env = tripflow_local::function_env(&r, ZONE, "24h");
    let mut pipeline = Pipeline::new(
        &stack,
        &r,
        InProcess::new(&stack, core.clone(), &env).await.unwrap(),
    )
    .await;
    tripflow_local::send(&stack.kinesis_client(&sdk), &r.stream, &records)
        .await
        .unwrap();
    pipeline.drain().await.unwrap();

    let (from, to) = date_range(&cli.csv);
    let out = pipeline
        .invoke(Function::Kpi, json!({"from": from, "to": to}))
        .await
        .unwrap();
    assert_eq!(out["days"], cli.csv.lines().count() - 1, "{out}");
    let s3 = stack.s3_client(&sdk);
    let combined = tripflow_local::get_object(&s3, &r.bucket, "kpi_results/daily_trip_kpis.csv")
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(combined).unwrap(),
        cli.csv,
        "the S3 KPI object differs from the CLI's"
    );
    // One object per day, each the header and that day's line.
    let header = cli.csv.lines().next().unwrap();
    for line in cli.csv.lines().skip(1).take(3) {
        let key = format!("kpi_daily/date={}/daily_trip_kpis.csv", &line[..10]);
        let day = tripflow_local::get_object(&s3, &r.bucket, &key)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(day).unwrap(),
            format!("{header}\n{line}\n")
        );
    }

    // The DLQ holds what the CLI quarantines: same reasons, same bytes.
    let messages = dlq(&stack, &r).await;
    let mut rejected: Vec<(String, Vec<u8>)> = messages
        .iter()
        .map(|m| {
            (
                m.reason.clone(),
                base64::engine::general_purpose::STANDARD
                    .decode(&m.raw_base64)
                    .unwrap(),
            )
        })
        .collect();
    rejected.sort();
    assert!(!rejected.is_empty(), "the sample has negative fares");
    assert_eq!(rejected, cli.rejected);
    assert!(
        messages
            .iter()
            .all(|m| m.shard_id.starts_with("shardId-") && !m.sequence_number.is_empty())
    );

    // Nothing lost: in = stored + duplicates + rejected, and each equals the CLI's count.
    let stored = event_items(&stack, &r.table).await;
    assert_eq!(stored, cli.stored);
    assert_eq!(
        records.len() as u64,
        stored + cli.duplicates + rejected.len() as u64
    );
    assert_eq!(
        pipeline.ingest.stats.discarded + pipeline.matcher.stats.discarded,
        0
    );
    let failures = tripflow_local::drain_queue(&stack.sqs_client(&sdk), &r.on_failure_url)
        .await
        .unwrap();
    assert!(failures.is_empty(), "{failures:?}");

    // A redelivered stretch changes nothing and rejects again only its own bad records.
    let again: Vec<Vec<u8>> = records[..300].to_vec();
    tripflow_local::send(&stack.kinesis_client(&sdk), &r.stream, &again)
        .await
        .unwrap();
    pipeline.drain().await.unwrap();
    pipeline
        .invoke(Function::Kpi, json!({"from": from, "to": to}))
        .await
        .unwrap();
    let combined = tripflow_local::get_object(&s3, &r.bucket, "kpi_results/daily_trip_kpis.csv")
        .await
        .unwrap();
    assert_eq!(String::from_utf8(combined).unwrap(), cli.csv);
    assert_eq!(event_items(&stack, &r.table).await, stored);
    let bad_again = again
        .iter()
        .filter(|rec| cli.rejected.iter().any(|(_, raw)| raw == *rec))
        .count();
    assert_eq!(dlq(&stack, &r).await.len(), bad_again);

    // The sweeper orphans what `tripflow sweep --older-than 24h` orphans.
    let sweep = pipeline.invoke(Function::Sweeper, json!({})).await.unwrap();
    assert_eq!(sweep["orphaned"], cli.orphans, "{sweep}");
    assert_eq!(sweep["reconciled"], 0, "{sweep}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_binary_runs_through_the_runtime_api() {
    let bootstrap = std::env::var_os("TRIPFLOW_BOOTSTRAP")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // cargo builds tripflow-lambda's binary for that crate's integration tests, next to
            // this test's own directory (target/<profile>/).
            let exe = std::env::current_exe().unwrap();
            exe.parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("tripflow-lambda")
        });
    assert!(
        bootstrap.exists(),
        "{} is missing: run `cargo build -p tripflow-lambda` or set TRIPFLOW_BOOTSTRAP",
        bootstrap.display()
    );
    let stack = LocalStack::start(&stack::tools_dir()).await.unwrap();
    let sdk = stack.sdk_config().await;
    let r = resources::create(&sdk, &stack, 1).await.unwrap();
    let mut env = tripflow_local::function_env(&r, "UTC", "1h");
    env.extend(stack.env());

    // A bad setting fails the cold start, reported to the Runtime API, naming the variable.
    let mut bad = env.clone();
    bad.retain(|(k, _)| k != "DLQ_URL");
    let inv = BootstrapInvoker::start(&bootstrap, &[Function::Ingest], &bad)
        .await
        .unwrap();
    let err = inv
        .invoke(Function::Ingest, json!({"Records": []}))
        .await
        .unwrap_err();
    let init = inv
        .api(Function::Ingest)
        .unwrap()
        .init_error()
        .await
        .unwrap_or_default();
    assert!(
        err.contains("init error") && init.contains("DLQ_URL"),
        "{err} / {init}"
    );
    inv.stop().await;

    // The whole pipeline as real processes: ingest, matcher, kpi, sweeper.
    let inv = BootstrapInvoker::start(&bootstrap, &Function::ALL, &env)
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(&stack, &r, inv).await;
    let events = [
        json!({"trip_id": "b-1", "event_type": "trip_start", "timestamp": "2019-03-01T10:00:00Z"}),
        json!({"trip_id": "b-1", "event_type": "trip_end", "timestamp": "2019-03-01T10:20:00Z", "fare": "12.50"}),
        json!({"trip_id": "b-2", "event_type": "trip_end", "timestamp": "2019-03-01T10:30:00Z", "fare": 7.25}),
        json!({"trip_id": "b-2", "event_type": "trip_start", "timestamp": "2019-03-01T10:05:00Z"}),
        json!({"trip_id": "b-3", "event_type": "trip_start", "timestamp": "2019-03-01T08:00:00Z"}),
        json!({"trip_id": "b-4", "event_type": "trip_end", "timestamp": "2019-03-01T12:00:00Z", "fare": "-3"}),
    ];
    let mut records: Vec<Vec<u8>> = events.iter().map(|e| e.to_string().into_bytes()).collect();
    records.push(b"{not json".to_vec());
    tripflow_local::send(&stack.kinesis_client(&sdk), &r.stream, &records)
        .await
        .unwrap();
    pipeline.drain().await.unwrap();
    pipeline
        .invoke(
            Function::Kpi,
            json!({"from": "2019-03-01", "to": "2019-03-01"}),
        )
        .await
        .unwrap();
    let csv = tripflow_local::get_object(
        &stack.s3_client(&sdk),
        &r.bucket,
        "kpi_results/daily_trip_kpis.csv",
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8(csv).unwrap(),
        "date,trip_count,total_fare,average_fare,min_fare,max_fare\n2019-03-01,2,19.75,9.88,7.25,12.50\n"
    );
    let reasons: BTreeMap<String, usize> =
        dlq(&stack, &r)
            .await
            .iter()
            .fold(BTreeMap::new(), |mut m, d| {
                *m.entry(d.reason.clone()).or_default() += 1;
                m
            });
    assert_eq!(
        reasons,
        BTreeMap::from([("bad_fare".into(), 1), ("malformed_json".into(), 1)])
    );
    // b-3 started at 08:00; the newest stored event is 10:30; ORPHAN_AFTER is 1h.
    let sweep = pipeline.invoke(Function::Sweeper, json!({})).await.unwrap();
    assert_eq!(sweep["orphaned"], 1, "{sweep}");
    pipeline.invoker.stop().await;
}
