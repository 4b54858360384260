//! The AWS pipeline end to end on real local engines (DynamoDB Local, kinesis-mock, moto),
//! held to the CLI: the same events give the same KPI bytes, the same rejections, and
//! nothing is lost.
//!
//! Needs the engines installed by `scripts/install-local-aws.sh` (the test command runs it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine as _;
use serde_json::{Value, json};
use tripflow_lambda::Function;
use tripflow_lambda::ingest::DlqMessage;
use tripflow_local::esm::{self, Invoker, Settings};
use tripflow_local::faults::FaultSpec;
use tripflow_local::runtime_api::BootstrapInvoker;
use tripflow_local::{InProcess, Kills, LocalStack, Pipeline, resources, stack};
use tripflow_runtime::core::ParseOutcome;
use tripflow_runtime::{ComponentSource, Limits, Runtime};
use tripflow_store::export::Export;
use tripflow_store::{Input, InputSource, KpiOptions, ReplayOptions, ReportOptions, StateDir};

mod common;
use common::shared_part;

const ZONE: &str = "America/New_York";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What `tripflow replay` + `tripflow kpi` make of files replayed in order into one store: the
/// CSV, the summary, and (reason, raw bytes) of each quarantined record.
struct CliRun {
    csv: String,
    /// `tripflow report` of the store (whole range).
    report: String,
    orphans: usize,
    stored: u64,
    duplicates: u64,
    skewed: u64,
    /// Trips with both halves (completed, invalid or without fare).
    closed: u64,
    rejected: Vec<(String, Vec<u8>)>,
}

fn cli_replay(core: &Runtime, files: &[&Path]) -> CliRun {
    let mut state = StateDir::temporary().unwrap();
    let inputs: Vec<Input> = files
        .iter()
        .enumerate()
        .map(|(i, f)| Input {
            name: format!("events-{i}.ndjson"),
            source: InputSource::File(f.to_path_buf()),
        })
        .collect();
    let mut quarantine = Vec::new();
    let summary = tripflow_store::replay(
        core,
        &mut state,
        &inputs,
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
    let report = tripflow_store::report(
        core,
        &state,
        &ReportOptions {
            kpi: KpiOptions {
                zone: ZONE.into(),
                ..KpiOptions::default()
            },
            host: "tripflow".into(),
        },
    )
    .unwrap();
    let totals = state.totals().unwrap();
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
        report,
        orphans,
        stored: summary.stored,
        duplicates: summary.duplicates,
        skewed: summary.skewed,
        closed: totals.completed + totals.invalid + totals.no_fare,
        rejected,
    }
}

fn write_ndjson(path: &Path, records: &[Vec<u8>]) {
    std::fs::write(
        path,
        records
            .iter()
            .flat_map(|r| r.iter().copied().chain([b'\n']))
            .collect::<Vec<u8>>(),
    )
    .unwrap();
}

/// (reason, bytes) of every DLQ message not in `seen`, sorted; bytes spilled to S3 are fetched.
async fn dlq_records(
    stack: &LocalStack,
    r: &tripflow_local::Resources,
    seen: &mut BTreeSet<(String, String)>,
) -> (Vec<(String, Vec<u8>)>, Vec<DlqMessage>) {
    let messages = dlq(stack, r, seen).await;
    let mut out = Vec::new();
    for m in &messages {
        let raw = m.raw().unwrap();
        assert_eq!(raw.len() as u64, m.raw_len, "{}", m.sequence_number);
        out.push((m.reason.clone(), raw));
    }
    out.sort();
    (out, messages)
}

/// The start of a trip without a valid end in `lines` (the sample's ends with negative fares
/// are rejected), and the first completed trip's start.
fn open_and_closed_start(lines: &[Vec<u8>]) -> (Value, Value) {
    let events: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    let ends: std::collections::HashSet<&str> = events
        .iter()
        .filter(|e| e["event_type"] == "trip_end" && !e["fare"].to_string().contains('-'))
        .filter_map(|e| e["trip_id"].as_str())
        .collect();
    let starts = || events.iter().filter(|e| e["event_type"] == "trip_start");
    let open = starts()
        .find(|e| !ends.contains(e["trip_id"].as_str().unwrap()))
        .expect("the sample has open trips")
        .clone();
    let closed = starts()
        .find(|e| ends.contains(e["trip_id"].as_str().unwrap()))
        .unwrap()
        .clone();
    (open, closed)
}

/// The DLQ's messages not in `seen` (then added to it), one per rejected record, read as
/// `tripflow-local rejects` reads them: they stay on the queue, spilled bytes are fetched
/// inline, and copies of one record (SQS delivers at least once, and a send whose answer was
/// lost, or an invocation killed after sending, is sent again) are one; copies that differ are
/// an error.
async fn dlq(
    stack: &LocalStack,
    r: &tripflow_local::Resources,
    seen: &mut BTreeSet<(String, String)>,
) -> Vec<DlqMessage> {
    let sdk = stack.sdk_config().await;
    tripflow_local::export::kept_rejects(
        &stack.sqs_client(&sdk),
        &stack.s3_client(&sdk),
        &r.dlq_url,
    )
    .await
    .unwrap()
    .into_iter()
    .filter(|m| seen.insert((m.shard_id.clone(), m.sequence_number.clone())))
    .collect()
}

/// The combined KPI CSV the KPI job wrote to S3.
async fn combined_csv(stack: &LocalStack, r: &tripflow_local::Resources) -> String {
    let sdk = stack.sdk_config().await;
    let body = tripflow_local::get_object(
        &stack.s3_client(&sdk),
        &r.bucket,
        "kpi_results/daily_trip_kpis.csv",
    )
    .await
    .unwrap();
    String::from_utf8(body).unwrap()
}

/// The report page the KPI job published next to the combined CSV.
async fn published_report(stack: &LocalStack, r: &tripflow_local::Resources) -> String {
    let sdk = stack.sdk_config().await;
    let body = tripflow_local::get_object(
        &stack.s3_client(&sdk),
        &r.bucket,
        "kpi_results/daily_trip_kpis.html",
    )
    .await
    .unwrap();
    String::from_utf8(body).unwrap()
}

/// The published page is the CLI's for the same events, apart from what only one host knows.
async fn assert_report_is_the_clis(
    stack: &LocalStack,
    r: &tripflow_local::Resources,
    cli: &CliRun,
) {
    let page = published_report(stack, r).await;
    assert_eq!(shared_part(&page), shared_part(&cli.report));
    assert!(
        page.contains("dynamodb://") && page.contains("CloudWatch"),
        "host fields"
    );
    assert!(cli.report.contains("id=\"accounting-table\""));
}

/// Stored events: the halves on the trip items.
async fn event_items(stack: &LocalStack, table: &str) -> u64 {
    count_items(
        stack,
        table,
        "sk = :e AND attribute_exists(s_ts)",
        Some("TRIP"),
    )
    .await
        + count_items(
            stack,
            table,
            "sk = :e AND attribute_exists(e_ts)",
            Some("TRIP"),
        )
        .await
}

/// Trip items that hold both halves: completed trips.
async fn completed_items(stack: &LocalStack, table: &str) -> u64 {
    count_items(
        stack,
        table,
        "sk = :e AND attribute_exists(s_ts) AND attribute_exists(e_ts)",
        Some("TRIP"),
    )
    .await
}

/// Items matching a scan filter (`:e` bound to `value`, when given).
async fn count_items(stack: &LocalStack, table: &str, filter: &str, value: Option<&str>) -> u64 {
    let sdk = stack.sdk_config().await;
    let ddb = stack.dynamodb_client(&sdk);
    let mut n = 0;
    let mut start = None;
    loop {
        let out = ddb
            .scan()
            .table_name(table)
            .filter_expression(filter)
            .set_expression_attribute_values(value.map(|v| {
                HashMap::from([(
                    ":e".to_owned(),
                    aws_sdk_dynamodb::types::AttributeValue::S(v.to_owned()),
                )])
            }))
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

/// The NYC sample, shuffled with duplicates and with the records the production path used to
/// decide differently from the replay, through the pipeline in two rounds; after each, the
/// KPI job runs as its schedule does (no dates), and everything is held to the CLI:
///
/// - a large valid trip (a 150 KB `trip_start`) is counted by both; a 600 KB one is
///   `too_large` in both, and its bytes reach the DLQ through S3;
/// - one event dated 2200 is stored and matched but moves no clock: the sweeper orphans what
///   it orphans without it;
/// - the scheduled run publishes every day of this 2019 backfill (dirty days), and after a late
///   end arrives in round two, republishes its day;
/// - a later batch holding a conflicting copy of a stored start and then an exact copy of it
///   gives one conflicting duplicate and one duplicate, as the replay does;
/// - a redelivered stretch changes nothing;
///
/// and all of it with faults on: the functions' requests go through fault proxies (throttling,
/// 500s and resets, some after the request took effect, latency, and requests held past the
/// client's attempt timeout that still land after the retry), about one stream
/// invocation in 25 of each stream function is killed at a random point and redelivered with the same sequence
/// numbers, shards are polled side by side and the table stream with a parallelization
/// factor of 4, so matcher invocations overlap. Every trip is completed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nyc_sample_through_the_pipeline_equals_the_cli_replay() {
    let text = std::fs::read(repo().join("fixtures/cases/nyc-tlc-2019-03/input-1.ndjson")).unwrap();
    let mut lines = tripflow_local::records_of(&text);
    let (open, closed) = open_and_closed_start(&lines);
    let big = |id: &str, bytes: usize| {
        json!({"trip_id": id, "event_type": "trip_start", "timestamp": "2019-03-15T12:00:00Z",
               "notes": "x".repeat(bytes)})
        .to_string()
        .into_bytes()
    };
    let clock_2200 =
        br#"{"trip_id":"clock-2200","event_type":"trip_start","timestamp":"2200-01-01T00:00:00Z"}"#;
    lines.extend([
        big("large-valid", 150_000),
        json!({"trip_id": "large-valid", "event_type": "trip_end", "timestamp": "2019-03-15T12:30:00Z", "fare": "31.40"})
            .to_string()
            .into_bytes(),
        big("too-large", 600_000),
        clock_2200.to_vec(),
    ]);
    // Shuffled, every 7th record twice.
    let records = tripflow_local::shuffle_with_duplicates(&lines, Some(2019), 7);
    assert!(records.len() > lines.len());
    // Round two: a conflicting copy then an exact copy of a stored start, and a late end.
    let mut conflicting = closed.clone();
    conflicting["fare"] = json!("999.99");
    let mut late_end = open.clone();
    late_end["event_type"] = json!("trip_end");
    late_end["fare"] = json!("10.00");
    let round2: Vec<Vec<u8>> = [conflicting, closed.clone(), late_end]
        .iter()
        .map(|v| v.to_string().into_bytes())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (file1, file2) = (
        dir.path().join("sent-1.ndjson"),
        dir.path().join("sent-2.ndjson"),
    );
    write_ndjson(&file1, &records);
    write_ndjson(&file2, &round2);

    let core =
        Arc::new(Runtime::load(&ComponentSource::Embedded, Limits::default(), None).unwrap());
    let cli1 = cli_replay(&core, &[&file1]);
    let cli12 = cli_replay(&core, &[&file1, &file2]);
    assert_eq!(cli1.skewed, 1, "the 2200 event");
    assert_ne!(cli1.csv, cli12.csv, "the late end changes a day");
    let too_large: Vec<usize> = cli1
        .rejected
        .iter()
        .filter(|(reason, _)| reason == "too_large")
        .map(|(_, raw)| raw.len())
        .collect();
    assert!(
        !too_large.is_empty() && too_large.iter().all(|n| *n > 600_000),
        "only the 600 KB record is too large: {too_large:?}"
    );
    // Without the bad clock the sweep orphans as many: one event cannot move the clock.
    let without = dir.path().join("without-2200.ndjson");
    write_ndjson(
        &without,
        &records
            .iter()
            .filter(|r| r.as_slice() != clock_2200)
            .cloned()
            .collect::<Vec<_>>(),
    );
    let unskewed = cli_replay(&core, &[&without, &file2]);
    assert_eq!(cli12.orphans, unskewed.orphans);
    assert!(cli12.orphans > 0);

    let mut stack = LocalStack::start(&stack::tools_dir()).await.unwrap();
    let spec: FaultSpec =
        "throttle=6%,5xx=1.5%,reset=1%,slow=2%,latency=40ms,timeout=0.05%,hang=1500ms,seed=2019"
            .parse()
            .unwrap();
    let faults = stack.inject_faults(&spec).await.unwrap();
    let sdk = stack.sdk_config().await;
    let r = resources::create(&sdk, &stack, 2).await.unwrap();
    let env = tripflow_local::function_env(&r, ZONE, "24h");
    let functions = InProcess::new(&stack, core.clone(), &env)
        .await
        .unwrap()
        .with_kills(Kills::new(25, 2019));
    let mut pipeline = Pipeline::new(&stack, &r, functions).await;
    tripflow_local::send(&stack.kinesis_client(&sdk), &r.stream, &records)
        .await
        .unwrap();
    pipeline.drain().await.unwrap();

    // The scheduled run (no dates) publishes every day of the backfill.
    let out = pipeline.invoke(Function::Kpi, json!({})).await.unwrap();
    assert_eq!(out["days"], cli1.csv.lines().count() - 1, "{out}");
    let s3 = stack.s3_client(&sdk);
    let combined = || combined_csv(&stack, &r);
    assert_eq!(
        combined().await,
        cli1.csv,
        "the S3 KPI object differs from the CLI's"
    );
    // One object per day, each the header and that day's line.
    let header = cli1.csv.lines().next().unwrap();
    for line in cli1.csv.lines().skip(1).take(3) {
        let key = format!("kpi_daily/date={}/daily_trip_kpis.csv", &line[..10]);
        let day = tripflow_local::get_object(&s3, &r.bucket, &key)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(day).unwrap(),
            format!("{header}\n{line}\n")
        );
    }
    // Published days are clean: the next scheduled run has nothing dirty.
    let quiet = pipeline.invoke(Function::Kpi, json!({})).await.unwrap();
    assert_eq!(quiet["dirty_days"], json!([]), "{quiet}");

    // The DLQ holds what the CLI quarantines: same reasons, same bytes.
    let mut seen = BTreeSet::new();
    let (rejected, messages) = dlq_records(&stack, &r, &mut seen).await;
    assert!(!rejected.is_empty(), "the sample has negative fares");
    assert_eq!(rejected, cli1.rejected);
    assert!(
        messages
            .iter()
            .all(|m| m.shard_id.starts_with("shardId-") && !m.sequence_number.is_empty())
    );
    assert!(
        messages
            .iter()
            .any(|m| m.reason == "too_large" && m.raw_s3.is_some()),
        "the 600 KB record's bytes are spilled to S3"
    );

    // Nothing lost: in = stored + duplicates + rejected, and each equals the CLI's count.
    let stored = event_items(&stack, &r.table).await;
    assert_eq!(stored, cli1.stored);
    assert_eq!(
        records.len() as u64,
        stored + cli1.duplicates + rejected.len() as u64
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
    pipeline.invoke(Function::Kpi, json!({})).await.unwrap();
    assert_eq!(combined().await, cli1.csv);
    assert_report_is_the_clis(&stack, &r, &cli1).await;
    assert_eq!(event_items(&stack, &r.table).await, stored);
    let bad_again = again
        .iter()
        .filter(|rec| cli1.rejected.iter().any(|(_, raw)| raw == *rec))
        .count();
    assert_eq!(dlq(&stack, &r, &mut seen).await.len(), bad_again);

    // Round two: decided as the replay decides it, and the late day republished.
    tripflow_local::send(&stack.kinesis_client(&sdk), &r.stream, &round2)
        .await
        .unwrap();
    pipeline.drain().await.unwrap();
    let out = pipeline.invoke(Function::Kpi, json!({})).await.unwrap();
    assert_eq!(combined().await, cli12.csv, "{out}");
    assert_report_is_the_clis(&stack, &r, &cli12).await;
    assert_eq!(out["report_key"], "kpi_results/daily_trip_kpis.html");
    let (rejected2, _) = dlq_records(&stack, &r, &mut seen).await;
    assert_eq!(
        rejected2,
        [("conflicting_duplicate".to_owned(), round2[0].clone())],
        "the conflicting copy only; its exact twin is a duplicate"
    );
    assert_eq!(event_items(&stack, &r.table).await, cli12.stored);
    assert_eq!(cli12.stored, cli1.stored + 1, "only the late end is new");

    // Every trip completed exactly once: one completion stored per closed trip, whatever was
    // retried, redelivered or killed on the way.
    assert_eq!(completed_items(&stack, &r.table).await, cli12.closed);

    // The sweeper orphans what `tripflow sweep --older-than 24h` orphans, 2200 or not.
    let sweep = pipeline.invoke(Function::Sweeper, json!({})).await.unwrap();
    assert_eq!(sweep["orphaned"], cli12.orphans, "{sweep}");
    let failures = tripflow_local::drain_queue(&stack.sqs_client(&sdk), &r.on_failure_url)
        .await
        .unwrap();
    assert!(failures.is_empty(), "{failures:?}");

    // Production reproduced: the table read out into an export's layout by a paged scan through
    // the fault proxies (throttling, 5xx, resets, held requests), the kept rejects read off the
    // queue (spilled bytes fetched), and the published KPIs audited against both.
    let export_dir = dir.path().join("export");
    let exported = tripflow_local::export::export_table(
        &stack.function_dynamodb_client(&sdk),
        &r.table,
        &export_dir,
        4,
        1_000,
    )
    .await
    .unwrap();
    let kept = tripflow_local::export::kept_rejects(
        &stack.function_sqs_client(&sdk),
        &stack.function_s3_client(&sdk),
        &r.dlq_url,
    )
    .await
    .unwrap();
    assert_eq!(kept.len(), seen.len(), "every kept record, once");
    let export = Export::open(&export_dir, Some(&r.table)).unwrap();
    assert_eq!(export.manifest.summary.item_count, exported.item_count);
    assert!(
        export.manifest.files.len() > 3,
        "{:?}",
        export.manifest.files
    );
    let opts = KpiOptions {
        zone: ZONE.into(),
        ..KpiOptions::default()
    };
    let published = combined().await;
    let audit = tripflow_store::audit::audit(&*core, &export, &kept, &published, &opts).unwrap();
    println!(
        "audit of the exported table: {} events, {} kept records, {} days, identical: {}",
        audit.exported_events,
        kept.len(),
        audit.recomputed_days,
        audit.identical()
    );
    assert!(audit.identical(), "{audit:?}");
    assert_eq!(audit.exported_events, cli12.stored);
    assert_eq!(
        audit.summary.store.completed + audit.summary.store.invalid + audit.summary.store.no_fare,
        cli12.closed
    );
    assert_eq!(audit.summary.rejected_total(), kept.len() as u64);
    assert_eq!(audit.recomputed_csv, cli12.csv);

    // One stored fare changed behind the pipeline's back: the audit names that day only.
    let mut changed_day = String::new();
    if let ParseOutcome::Accepted(start) =
        tripflow_runtime::core::parse_record(closed.to_string().as_bytes())
    {
        changed_day = tripflow_runtime::core::day_of(ZONE, start.timestamp_ns).unwrap();
        stack
            .dynamodb_client(&sdk)
            .update_item()
            .table_name(&r.table)
            .set_key(Some(tripflow_lambda::table::trip_key(&start.trip_id)))
            .update_expression("SET e_fare = e_fare + :cent")
            .expression_attribute_values(":cent", AttributeValue::N("1".into()))
            .send()
            .await
            .unwrap();
    }
    let tampered = dir.path().join("export-tampered");
    tripflow_local::export::export_table(
        &stack.dynamodb_client(&sdk),
        &r.table,
        &tampered,
        2,
        1_000,
    )
    .await
    .unwrap();
    let audit = tripflow_store::audit::audit(
        &*core,
        &Export::open(&tampered, None).unwrap(),
        &kept,
        &published,
        &opts,
    )
    .unwrap();
    assert!(!audit.identical());
    let days: Vec<&str> = audit.days.iter().map(|d| d.date.as_str()).collect();
    assert_eq!(days, [changed_day.as_str()]);
    let (was, now) = (
        audit.days[0].old.as_ref().unwrap(),
        audit.days[0].new.as_ref().unwrap(),
    );
    assert_eq!(now.total_cents, was.total_cents + 1);

    // The fixture with a changed rule (fares over 100.00 are invalid), diffed against the
    // current component on the untouched export: exactly the days of such trips change.
    let fixture = Runtime::load(
        &ComponentSource::File(tripflow_conformance::changed_rule_component().unwrap()),
        Limits::default(),
        None,
    )
    .unwrap();
    let kpi = KpiOptions {
        zone: ZONE.into(),
        ..KpiOptions::default()
    };
    let through = |core: &Runtime| {
        let mut state = StateDir::temporary().unwrap();
        tripflow_store::replay(
            core,
            &mut state,
            &export.inputs(),
            &ReplayOptions::default(),
            None,
            &(),
        )
        .unwrap();
        let rows = tripflow_store::kpi(core, &state, &kpi).unwrap().rows;
        (state, rows)
    };
    let (old_state, old_rows) = through(&core);
    let (new_state, new_rows) = through(&fixture);
    let diff = tripflow_store::compare::diff(
        (&*core, &old_state, &old_rows),
        (&fixture, &new_state, &new_rows),
        ZONE,
    )
    .unwrap();
    let mut first: HashMap<(String, bool), tripflow_runtime::core::TripEvent> = HashMap::new();
    for rec in records.iter().chain(&round2) {
        if let ParseOutcome::Accepted(e) = tripflow_runtime::core::parse_record(rec) {
            first
                .entry((
                    e.trip_id.clone(),
                    e.kind == tripflow_runtime::core::EventKind::End,
                ))
                .or_insert(e);
        }
    }
    let mut expected = BTreeSet::new();
    for ((id, is_end), end) in &first {
        if !is_end {
            continue;
        }
        if let Some(start) = first.get(&(id.clone(), false)) {
            let fare = end.fare_cents.or(start.fare_cents);
            if end.timestamp_ns >= start.timestamp_ns && fare.is_some_and(|f| f > 10_000) {
                expected.insert(tripflow_runtime::core::day_of(ZONE, start.timestamp_ns).unwrap());
            }
        }
    }
    let changed: BTreeSet<String> = diff.days.iter().map(|d| d.date.clone()).collect();
    assert!(!expected.is_empty());
    assert_eq!(changed, expected);
    assert!(diff.records.is_empty());
    assert!(
        diff.trips
            .iter()
            .all(|t| !t.events.is_empty() && !t.days.is_empty())
    );

    // The faults were real, of every kind.
    let kills = pipeline.invoker.kills().unwrap();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    println!("faults injected: {faults}");
    println!(
        "invocations: {} stream invocations, {} killed; ingest mapping {:?}; matcher mapping {:?}",
        n(&kills.invocations),
        n(&kills.killed),
        pipeline.ingest.stats,
        pipeline.matcher.stats
    );
    assert!(
        n(&faults.throttled) * 100 >= n(&faults.requests) * 4,
        "{faults}"
    );
    assert!(
        n(&faults.errors_after) > 0 && n(&faults.resets_after) > 0,
        "{faults}"
    );
    assert!(n(&kills.killed) > 0);
    assert!(pipeline.ingest.stats.retries > 0 && pipeline.matcher.stats.retries > 0);
    assert!(pipeline.ingest.stats.retries + pipeline.matcher.stats.retries >= n(&kills.killed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_binary_runs_through_the_runtime_api() {
    let bootstrap = common::bootstrap();
    let stack = LocalStack::start(&stack::tools_dir()).await.unwrap();
    let sdk = stack.sdk_config().await;
    let r = resources::create(&sdk, &stack, 1).await.unwrap();
    let mut env = tripflow_local::function_env(&r, "UTC", "1h");
    env.extend(stack.function_env());

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

    // The whole pipeline as real processes: ingest, matcher, kpi, sweeper; every other stream
    // invocation's process is SIGKILLed a few ms in and a new one cold-starts.
    let inv = BootstrapInvoker::start(&bootstrap, &Function::ALL, &env)
        .await
        .unwrap()
        .with_kills(Kills::new(2, 5).within(Duration::from_millis(3)));
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
    let csv = combined_csv(&stack, &r).await;
    assert_eq!(
        csv,
        "date,trip_count,total_fare,average_fare,min_fare,max_fare\n2019-03-01,2,19.75,9.88,7.25,12.50\n"
    );
    let reasons: BTreeMap<String, usize> =
        dlq(&stack, &r, &mut BTreeSet::new())
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
    let killed = pipeline
        .invoker
        .kills()
        .unwrap()
        .killed
        .load(std::sync::atomic::Ordering::Relaxed);
    println!("bootstrap processes SIGKILLed mid-invocation: {killed}");
    assert!(killed >= 1);
    pipeline.invoker.stop().await;
}

/// A batch the ingest mapping really gave up on (every request of the functions throttled, one
/// retry allowed) reaches the on-failure queue as a description only; `redrive` reads its range
/// back from the stream and puts it on again, and the pipeline then ends as if nothing had
/// failed: the same KPIs, the bad record on the DLQ. On the same stack, an orphan whose other
/// half arrives later is published by the next scheduled KPI run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_given_up_on_is_redriven_from_the_stream() {
    let mut stack = LocalStack::start(&stack::tools_dir()).await.unwrap();
    let sdk = stack.sdk_config().await;
    let r = resources::create(&sdk, &stack, 1).await.unwrap();
    let env = tripflow_local::function_env(&r, "UTC", "24h");
    let core =
        Arc::new(Runtime::load(&ComponentSource::Embedded, Limits::default(), None).unwrap());
    stack
        .inject_faults(&"throttle=100%".parse().unwrap())
        .await
        .unwrap();
    let broken = InProcess::new(&stack, core.clone(), &env).await.unwrap();
    let mut ingest = Settings::from_template(esm::TEMPLATE, "ingest").unwrap();
    ingest.max_retry_attempts = 1;
    let matcher = Settings::from_template(esm::TEMPLATE, "matcher").unwrap();
    let mut pipeline = Pipeline::with_settings(&stack, &r, broken, ingest, matcher).await;
    let records: Vec<Vec<u8>> = [
        json!({"trip_id": "r-1", "event_type": "trip_start", "timestamp": "2019-03-01T10:00:00Z"}),
        json!({"trip_id": "r-1", "event_type": "trip_end", "timestamp": "2019-03-01T10:20:00Z", "fare": "12.50"}),
        json!({"trip_id": "r-2", "event_type": "trip_end", "timestamp": "2019-03-01T10:30:00Z", "fare": 7.25}),
        json!({"trip_id": "r-2", "event_type": "trip_start", "timestamp": "2019-03-01T10:05:00Z"}),
        json!({"trip_id": "r-3", "event_type": "trip_end", "timestamp": "2019-03-01T12:00:00Z", "fare": "-3"}),
    ]
    .iter()
    .map(|e| e.to_string().into_bytes())
    .collect();
    tripflow_local::send(&stack.kinesis_client(&sdk), &r.stream, &records)
        .await
        .unwrap();
    pipeline.drain().await.unwrap();
    assert_eq!(pipeline.ingest.stats.discarded, records.len() as u64);
    assert_eq!(event_items(&stack, &r.table).await, 0);

    // The outage ends; the mapping has moved on past the batch it gave up.
    stack.clear_faults();
    pipeline.invoker = InProcess::new(&stack, core.clone(), &env).await.unwrap();
    pipeline.drain().await.unwrap();
    assert_eq!(
        event_items(&stack, &r.table).await,
        0,
        "nothing comes back by itself"
    );

    let report = tripflow_local::redrive::redrive(
        &stack.sqs_client(&sdk),
        &r.on_failure_url,
        &stack.kinesis_client(&sdk),
        &r.stream,
    )
    .await
    .unwrap();
    assert_eq!(report.records, records.len(), "{report:?}");
    assert!(report.gone.is_empty() && report.left == 0, "{report:?}");
    pipeline.drain().await.unwrap();
    pipeline.invoke(Function::Kpi, json!({})).await.unwrap();
    let csv = combined_csv(&stack, &r).await;
    assert_eq!(
        csv,
        "date,trip_count,total_fare,average_fare,min_fare,max_fare\n2019-03-01,2,19.75,9.88,7.25,12.50\n"
    );
    let (rejected, _) = dlq_records(&stack, &r, &mut BTreeSet::new()).await;
    assert_eq!(rejected, [("bad_fare".to_owned(), records[4].clone())]);
    assert_eq!(event_items(&stack, &r.table).await, 4);
    let left = tripflow_local::drain_queue(&stack.sqs_client(&sdk), &r.on_failure_url)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");

    // An orphan that gets its other half is a late completion too: the sweeper orphans a
    // start whose end is missing, the end then arrives, and the next scheduled KPI run
    // publishes its day.
    let late = |id: &str, kind: &str, ts: &str, fare: Option<&str>| {
        let mut e = json!({"trip_id": id, "event_type": kind, "timestamp": ts});
        if let Some(f) = fare {
            e["fare"] = f.into();
        }
        e.to_string().into_bytes()
    };
    let start = late("late", "trip_start", "2019-03-05T10:00:00Z", None);
    let end = late("late", "trip_end", "2019-03-05T10:20:00Z", Some("20.00"));
    let clock = late("clock", "trip_start", "2019-03-07T12:00:00Z", None); // moves the watermark
    tripflow_local::send(&stack.kinesis_client(&sdk), &r.stream, &[start, clock])
        .await
        .unwrap();
    pipeline.drain().await.unwrap();
    let sweep = pipeline.invoke(Function::Sweeper, json!({})).await.unwrap();
    assert_eq!(sweep["orphaned"], 1, "{sweep}");
    let again = pipeline.invoke(Function::Sweeper, json!({})).await.unwrap();
    assert_eq!(again["orphaned"], 0, "an orphan is orphaned once: {again}");
    pipeline.invoke(Function::Kpi, json!({})).await.unwrap();
    tripflow_local::send(&stack.kinesis_client(&sdk), &r.stream, &[end])
        .await
        .unwrap();
    pipeline.drain().await.unwrap();
    let kpi = pipeline.invoke(Function::Kpi, json!({})).await.unwrap();
    assert_eq!(kpi["dirty_days"], json!(["2019-03-05"]), "{kpi}");
    let csv = combined_csv(&stack, &r).await;
    assert!(
        csv.ends_with("2019-03-01,2,19.75,9.88,7.25,12.50\n2019-03-05,1,20.00,20.00,20.00,20.00\n"),
        "{csv}"
    );
}
