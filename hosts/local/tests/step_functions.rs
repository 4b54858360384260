//! The KPI state machine of `deploy/template.yaml`, as deployed (read from the template, its
//! substitutions resolved), on moto's Step Functions interpreter against the real bootstrap
//! processes: a three-year backfill in chunks, at concurrency > 1, through throttling, service
//! errors and killed processes, gives the CLI's bytes; a chunk that fails past its retries fails
//! the execution and leaves the published files as they were; the rerun completes; a scheduled
//! execution publishes the dirty days and clears their markers.
//!
//! Needs the engines installed by `scripts/install-local-aws.sh` (the test command runs it).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{Duration as Span, NaiveDate, NaiveDateTime};
use serde_json::{Value, json};
use tripflow_lambda::Function;
use tripflow_local::runtime_api::BootstrapInvoker;
use tripflow_local::step_functions::{Execution, KpiStateMachine};
use tripflow_local::{Kills, LocalStack, Pipeline, resources, stack};
use tripflow_runtime::{ComponentSource, Limits, Runtime};
use tripflow_store::{Input, InputSource, KpiOptions, ReplayOptions, ReportOptions, StateDir};

mod common;
use common::{bootstrap, shared_part};

const ZONE: &str = "America/New_York";
const FROM: &str = "2017-01-01";
const TO: &str = "2019-12-31";

/// Three years of trips where the answers are easy to get wrong: every day, trips starting a
/// second before and at local midnight in winter (05:00Z) and in summer (04:00Z), so that every
/// chunk boundary has a trip on each side of it; on each DST change, trips around 02:00 local;
/// and a trip that ends the next day. Fares vary by the cent.
fn events() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut n = 0u64;
    let mut trip = |start: NaiveDateTime, minutes: i64, out: &mut Vec<Vec<u8>>| {
        n += 1;
        let fare = format!("{}.{:02}", 3 + n * 7 % 90, n * 13 % 100);
        let stamp = |t: NaiveDateTime| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        out.push(
            json!({"trip_id": format!("sf-{n}"), "event_type": "trip_start", "timestamp": stamp(start)})
                .to_string()
                .into_bytes(),
        );
        out.push(
            json!({"trip_id": format!("sf-{n}"), "event_type": "trip_end",
                   "timestamp": stamp(start + Span::minutes(minutes)), "fare": fare})
            .to_string()
            .into_bytes(),
        );
    };
    let first = NaiveDate::parse_from_str(FROM, "%Y-%m-%d").unwrap();
    let last = NaiveDate::parse_from_str(TO, "%Y-%m-%d").unwrap();
    let mut day = first;
    while day <= last {
        let at = |h: u32, m: u32, s: u32| day.and_hms_opt(h, m, s).unwrap();
        trip(at(3, 59, 59), 12, &mut out);
        trip(at(4, 0, 0), 25, &mut out);
        trip(at(4, 59, 59), 7, &mut out);
        trip(at(5, 0, 0), 31, &mut out);
        day = day.succ_opt().unwrap();
    }
    for dst in [
        "2017-03-12",
        "2017-11-05",
        "2018-03-11",
        "2018-11-04",
        "2019-03-10",
        "2019-11-03",
    ] {
        let day = NaiveDate::parse_from_str(dst, "%Y-%m-%d").unwrap();
        for (h, m) in [(5, 59), (6, 0), (6, 30), (6, 59), (7, 0), (7, 30)] {
            trip(day.and_hms_opt(h, m, 0).unwrap(), 20, &mut out);
        }
    }
    // Starts on 2018-06-30 local, ends on 2018-07-01 UTC.
    trip(
        NaiveDate::from_ymd_opt(2018, 7, 1)
            .unwrap()
            .and_hms_opt(3, 30, 0)
            .unwrap(),
        150,
        &mut out,
    );
    out
}

/// `tripflow replay` of the events, then the KPI CSV of `from..=to` (the whole store without
/// them) and the report page.
struct Cli {
    state: StateDir,
    core: Runtime,
}

impl Cli {
    fn replay(file: &std::path::Path) -> Cli {
        let core = Runtime::load(&ComponentSource::Embedded, Limits::default(), None).unwrap();
        let mut state = StateDir::temporary().unwrap();
        tripflow_store::replay(
            &core,
            &mut state,
            &[Input {
                name: "events.ndjson".into(),
                source: InputSource::File(file.to_path_buf()),
            }],
            &ReplayOptions::default(),
            None,
            &(),
        )
        .unwrap();
        Cli { state, core }
    }

    fn kpi(&self, from: Option<&str>, to: Option<&str>) -> String {
        let options = KpiOptions {
            zone: ZONE.into(),
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
        };
        tripflow_store::kpi(&self.core, &self.state, &options)
            .unwrap()
            .csv
    }

    fn report(&self) -> String {
        tripflow_store::report(
            &self.core,
            &self.state,
            &ReportOptions {
                kpi: KpiOptions {
                    zone: ZONE.into(),
                    ..KpiOptions::default()
                },
                host: "tripflow".into(),
            },
        )
        .unwrap()
    }
}

async fn object(stack: &LocalStack, bucket: &str, key: &str) -> Option<String> {
    let sdk = stack.sdk_config().await;
    tripflow_local::get_object(&stack.s3_client(&sdk), bucket, key)
        .await
        .ok()
        .map(|b| String::from_utf8(b).unwrap())
}

async fn dirty_markers(stack: &LocalStack, table: &str) -> usize {
    let sdk = stack.sdk_config().await;
    let out = stack
        .dynamodb_client(&sdk)
        .query()
        .table_name(table)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(
            ":p",
            aws_sdk_dynamodb::types::AttributeValue::S("DIRTY".into()),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    out.items().len()
}

fn succeeded(e: &Execution) -> &Value {
    assert_eq!(e.status, "SUCCEEDED", "{e:?}");
    e.output.as_ref().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_year_backfill_through_the_state_machine_is_the_clis() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let records = events();
    std::fs::write(&file, records.join(&b'\n')).unwrap();
    let cli = Cli::replay(&file);

    let stack = LocalStack::start(&stack::tools_dir()).await.unwrap();
    let sdk = stack.sdk_config().await;
    let r = resources::create(&sdk, &stack, 2).await.unwrap();
    let mut env = tripflow_local::function_env(&r, ZONE, "24h");
    env.extend(stack.function_env());
    // Every KPI invocation in 23 SIGKILLs the KPI processes a few ms in; four of them serve
    // the Map's concurrent chunks.
    let inv = BootstrapInvoker::start(&bootstrap(), &Function::ALL, &env)
        .await
        .unwrap()
        .with_kills(
            Kills::new(23, 11)
                .of(&[Function::Kpi])
                .within(Duration::from_millis(20)),
        );
    inv.scale(Function::Kpi, 4).await.unwrap();
    let inv = Arc::new(inv);
    let mut pipeline = Pipeline::new(&stack, &r, inv.clone()).await;
    tripflow_local::send(&stack.kinesis_client(&sdk), &r.stream, &records)
        .await
        .unwrap();
    pipeline.drain().await.unwrap();

    let machine = KpiStateMachine::deploy(&stack, inv.clone()).await.unwrap();
    let faults = &machine.lambda.faults;
    let limit = Duration::from_secs(600);
    let combined = || object(&stack, &r.bucket, "kpi_results/daily_trip_kpis.csv");
    let page = || object(&stack, &r.bucket, "kpi_results/daily_trip_kpis.html");

    // 0. A bad input fails in Plan, at once (not retried), saying what to set; nothing written.
    let e = machine
        .execute(&json!({"from": FROM, "to": TO, "chunk_days": 0}), limit)
        .await
        .unwrap();
    assert_eq!(e.status, "FAILED", "{e:?}");
    assert_eq!(e.error.as_deref(), Some("TripflowError"), "{e:?}");
    let cause = e.cause.unwrap_or_default();
    assert!(
        cause.contains("chunk_days must be a whole number from 1 to 366, not 0"),
        "{cause}"
    );
    assert_eq!(faults.served("plan"), 1);
    assert_eq!(combined().await, None);

    // 1. The first year, one chunk at a time, 30 days a chunk.
    let first_year =
        json!({"from": FROM, "to": "2017-12-31", "chunk_days": 30, "max_concurrency": 1});
    let e = machine.execute(&first_year, limit).await.unwrap();
    assert_eq!(succeeded(&e)["chunks"], 13);
    let year_one = combined().await.unwrap();
    assert_eq!(year_one, cli.kpi(Some(FROM), Some("2017-12-31")));
    let year_one_page = page().await.unwrap();
    println!(
        "one year, 13 chunks at concurrency 1: {:.1} s",
        e.elapsed.as_secs_f64()
    );

    // 2. Three years in 45-day chunks, four at once, while every invocation of the chunk that
    // holds 2018-06-15 fails with a 500: past its retries the execution fails naming it, and
    // the combined CSV and its page are untouched.
    let backfill = json!({"from": FROM, "to": TO, "chunk_days": 45, "max_concurrency": 4});
    *faults.failing_day.lock().unwrap() = Some("2018-06-15".into());
    let e = machine.execute(&backfill, limit).await.unwrap();
    assert_eq!(e.status, "FAILED", "{e:?}");
    assert_eq!(e.error.as_deref(), Some("ChunksFailed"), "{e:?}");
    // The twelfth chunk of 45 days from 2017-01-01 holds 2018-06-15.
    let cause = e.cause.clone().unwrap_or_default();
    assert!(
        cause.contains("2018-05-11..2018-06-24 (Lambda.ServiceException")
            && cause.contains("1 of 25 chunks failed"),
        "{cause}"
    );
    let retried = faults.errors.load(Ordering::Relaxed);
    assert!(retried >= 5, "the failing chunk was tried {retried} times");
    assert_eq!(combined().await.unwrap(), year_one);
    assert_eq!(page().await.unwrap(), year_one_page);

    // 3. The same input again, the chunk healed, through throttling, 500s and killed
    // processes: it completes, and the three years are the CLI's bytes.
    *faults.failing_day.lock().unwrap() = None;
    faults.throttle_every.store(5, Ordering::Relaxed);
    faults.error_every.store(9, Ordering::Relaxed);
    let e = machine.execute(&backfill, limit).await.unwrap();
    let out = succeeded(&e);
    assert_eq!(out["chunks"], 25);
    assert_eq!(combined().await.unwrap(), cli.kpi(Some(FROM), Some(TO)));
    println!(
        "three years, 25 chunks at concurrency 4 under faults: {:.1} s",
        e.elapsed.as_secs_f64()
    );
    let peak = faults.peak_chunks_in_flight.load(Ordering::Relaxed);
    assert!(peak > 1, "chunks ran one at a time (peak {peak})");

    // 4. What the hourly schedule starts: every dirty day (here, all of them, including the
    // local 2016-12-31 of the first trips) is published and its marker cleared; the combined
    // CSV and its page are then the CLI's for the whole store.
    assert!(dirty_markers(&stack, &r.table).await > 1000);
    let e = machine
        .execute(&json!({"max_concurrency": 4}), limit)
        .await
        .unwrap();
    let out = succeeded(&e);
    assert!(out["dirty_days_cleared"].as_u64().unwrap() > 1000, "{out}");
    assert_eq!(dirty_markers(&stack, &r.table).await, 0);
    let everything = combined().await.unwrap();
    assert_eq!(everything, cli.kpi(None, None));
    assert!(everything.contains("\n2016-12-31,"));
    assert_eq!(
        shared_part(&page().await.unwrap()),
        shared_part(&cli.report())
    );

    // 5. Running a finished backfill again changes nothing.
    let e = machine.execute(&backfill, limit).await.unwrap();
    succeeded(&e);
    assert_eq!(combined().await.unwrap(), everything);

    let throttled = faults.throttled.load(Ordering::Relaxed);
    let killed = inv.kills().unwrap().killed.load(Ordering::Relaxed);
    println!(
        "chunk invocations {}, throttled {throttled}, 500s {}, KPI processes killed {killed}, peak concurrency {peak}",
        faults.served("chunk"),
        faults.errors.load(Ordering::Relaxed)
    );
    assert!(throttled >= 1 && killed >= 1, "the faults struck");
    inv.stop().await;
}
