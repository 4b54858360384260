//! A model test of the ingest protocol: generated histories — trips whose halves arrive in any
//! order, exact and re-spelt duplicates, conflicting copies, bad records, batches of any size,
//! puts that fail and are redelivered from the failing record, invocations killed after their
//! writes and redelivered whole with the same sequence numbers — run through the replay and
//! through the Lambda ingest's protocol ([`Plan`]), which must decide every record alike and
//! leave the same store behind.
//!
//! Thousands of histories run against an in-memory model of DynamoDB's conditional put (with
//! `ReturnValuesOnConditionCheckFailure`); a few dozen run through the real ingest handler on
//! DynamoDB Local.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};
use tripflow_lambda::Function;
use tripflow_lambda::ingest::{Fate, Plan, PutOutcome};
use tripflow_local::{InProcess, LocalStack, resources, stack};
use tripflow_runtime::core::{Clock, EventKind, TripEvent, TripFare};
use tripflow_runtime::{ComponentSource, CoreProvider, Limits, Runtime, TripCore};
use tripflow_store::{Input, InputSource, KpiOptions, ReplayOptions, StateDir};

/// Far after every generated event: none is skewed.
const CLOCK: Clock = Clock {
    arrival_ns: 4_000_000_000_000_000_000,
    max_skew_ns: 3_600_000_000_000,
};

fn core() -> &'static Arc<Runtime> {
    static CORE: OnceLock<Arc<Runtime>> = OnceLock::new();
    CORE.get_or_init(|| {
        Arc::new(Runtime::load(&ComponentSource::Embedded, Limits::default(), None).unwrap())
    })
}

/// One generated history: the records in arrival order.
#[derive(Clone, Debug)]
struct History {
    records: Vec<Vec<u8>>,
}

/// A half of a trip, as JSON, spelt one of several equivalent ways.
fn half(id: &str, kind: EventKind, minute: u32, fare: Option<u32>, spelling: u8) -> Vec<u8> {
    let ts = format!("2024-05-01T{:02}:{:02}:00Z", 8 + minute / 60, minute % 60);
    let kind = kind.as_str();
    let fare_text = fare.map(|c| format!("{}.{:02}", c / 100, c % 100));
    let v = match (spelling % 3, &fare_text) {
        (0, Some(f)) => json!({"trip_id": id, "event_type": kind, "timestamp": ts, "fare": f}),
        (1, Some(f)) => {
            json!({"fare": f.parse::<f64>().unwrap(), "timestamp": ts, "event_type": kind, "trip_id": id})
        }
        (_, Some(f)) => {
            return format!(
                r#"{{ "trip_id" : "{id}", "event_type":"{kind}", "timestamp":"{ts}", "fare":"{f}" }}"#
            )
            .into_bytes();
        }
        (_, None) => json!({"trip_id": id, "event_type": kind, "timestamp": ts}),
    };
    v.to_string().into_bytes()
}

fn history() -> impl Strategy<Value = History> {
    // Per trip: which halves exist, their minutes and fares, how many exact copies (re-spelt),
    // and whether a conflicting copy of one half exists.
    let trip = (
        0u8..4,    // 0: both halves, 1: start only, 2: end only, 3: both
        0u32..600, // start minute
        0u32..120, // duration (end = start + this − 20: some ends come before starts)
        prop::option::of(0u32..5_000),
        prop::option::of(0u32..5_000),
        0usize..3,     // exact copies
        any::<bool>(), // a conflicting copy
        any::<u8>(),   // spellings
    );
    (
        prop::collection::vec(trip, 1..10),
        0usize..3,        // bad records
        any::<u64>(),     // shuffle seed
    )
        .prop_map(|(trips, bad, seed)| {
            let mut records = Vec::new();
            for (n, (shape, start, dur, sfare, efare, copies, conflict, sp)) in
                trips.into_iter().enumerate()
            {
                let id = format!("t{n}");
                let end = (start + dur).saturating_sub(20);
                let mut halves = Vec::new();
                if shape != 2 {
                    halves.push((EventKind::Start, start, sfare));
                }
                if shape != 1 {
                    halves.push((EventKind::End, end, efare));
                }
                for (k, (kind, minute, fare)) in halves.iter().enumerate() {
                    records.push(half(&id, *kind, *minute, *fare, sp));
                    for c in 0..copies {
                        records.push(half(&id, *kind, *minute, *fare, sp.wrapping_add(c as u8 + 1)));
                    }
                    if conflict && k == 0 {
                        records.push(half(&id, *kind, *minute, Some(fare.unwrap_or(0) + 1), sp));
                    }
                }
            }
            for b in 0..bad {
                records.push(format!(r#"{{"trip_id":"bad{b}","event_type":"trip_end","timestamp":"2024-05-01T09:00:00Z","fare":"-1"}}"#).into_bytes());
            }
            fastrand::Rng::with_seed(seed).shuffle(&mut records);
            History { records }
        })
}

/// What a history leaves behind, in terms both hosts can state.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// (record index, reason) of every rejected record.
    rejected: Vec<(usize, String)>,
    stored: u64,
    duplicates: u64,
    /// (trip id, kind) → the stored event.
    events: BTreeMap<(String, EventKind), TripEvent>,
    csv: String,
}

/// The replay's outcome: the records as one NDJSON file, in lines-per-call batches.
fn replay(h: &History, batch_lines: usize) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("h.ndjson");
    let mut text = Vec::new();
    for r in &h.records {
        text.extend_from_slice(r);
        text.push(b'\n');
    }
    std::fs::write(&file, text).unwrap();
    let mut state = StateDir::temporary().unwrap();
    let mut quarantine = Vec::new();
    let summary = tripflow_store::replay(
        &**core(),
        &mut state,
        &[Input {
            name: "h".into(),
            source: InputSource::File(file),
        }],
        &ReplayOptions {
            batch_lines,
            arrival_ns: Some(CLOCK.arrival_ns),
            max_skew_ns: CLOCK.max_skew_ns,
            ..ReplayOptions::default()
        },
        Some(&mut quarantine),
        &(),
    )
    .unwrap();
    let rejected = String::from_utf8(quarantine)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["line"].as_u64().unwrap() as usize - 1,
                v["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let csv = tripflow_store::kpi(&**core(), &state, &KpiOptions::default())
        .unwrap()
        .csv;
    let events = state
        .events()
        .unwrap()
        .into_iter()
        .map(|e| ((e.trip_id.clone(), e.kind), e))
        .collect();
    Outcome {
        rejected,
        stored: summary.stored,
        duplicates: summary.duplicates,
        events,
        csv,
    }
}

/// What the generated histories exercised, summed over every case.
static STATS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
const RECORDS: usize = 0;
const DELIVERIES: usize = 1;
const KILLED: usize = 2;
const FAILED_PUTS: usize = 3;
const REDELIVERED: usize = 4;
const CONFLICTS: usize = 5;
const DUPLICATES: usize = 6;

fn count(what: usize, n: u64) {
    STATS[what].fetch_add(n, Ordering::Relaxed);
}

/// DynamoDB's conditional put, in memory: `attribute_not_exists(pk)` with the stored item
/// handed back on a failed condition.
#[derive(Default)]
struct Table {
    items: HashMap<(String, EventKind), (TripEvent, usize)>,
}

impl Table {
    fn put(&mut self, e: &TripEvent, record: usize) -> PutOutcome {
        match self.items.get(&(e.trip_id.clone(), e.kind)) {
            Some((_, by)) if *by == record => PutOutcome::StoredBefore,
            Some((stored, _)) => PutOutcome::Taken(stored.clone()),
            None => {
                self.items
                    .insert((e.trip_id.clone(), e.kind), (e.clone(), record));
                PutOutcome::Stored
            }
        }
    }
}

/// The KPI CSV of a table of events, as the matcher and the KPI job compute it: each trip
/// with both halves paired by the core, completed ones accumulated.
fn table_csv(events: &BTreeMap<(String, EventKind), TripEvent>) -> String {
    let mut c = core().session().unwrap();
    let mut fares = Vec::new();
    for ((id, kind), start) in events {
        if *kind != EventKind::Start {
            continue;
        }
        if let Some(end) = events.get(&(id.clone(), EventKind::End)) {
            let t = c.pair(start, end).unwrap();
            fares.push(TripFare {
                status: t.status,
                start_ns: t.start_ns,
                fare_cents: t.fare_cents,
            });
        }
    }
    let totals = c.accumulate("UTC", &[], &fares).unwrap();
    let rows = c.finish(&totals, None, None).unwrap();
    c.render_csv(&rows).unwrap()
}

/// The Lambda ingest's outcome: batches of `sizes`, each put failing with `fail_per_mille`,
/// each invocation killed after its writes with `kill_per_mille` (redelivered whole).
fn lambda(
    h: &History,
    sizes: &[usize],
    fail_per_mille: u32,
    kill_per_mille: u32,
    seed: u64,
) -> Outcome {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut table = Table::default();
    let mut fates: Vec<Option<Fate>> = vec![None; h.records.len()];
    let mut pos = 0;
    let mut sizes = sizes.iter().cycle();
    let mut deliveries = 0;
    while pos < h.records.len() {
        deliveries += 1;
        assert!(deliveries < 10_000, "no progress");
        let end = (pos + sizes.next().unwrap().max(&1)).min(h.records.len());
        count(DELIVERIES, 1);

        let records: Vec<&[u8]> = h.records[pos..end].iter().map(Vec::as_slice).collect();
        let mut plan = Plan::new(
            &**core(),
            &records,
            core().session().unwrap().max_record_bytes().unwrap(),
            CLOCK,
        )
        .unwrap();
        let puts: Vec<PutOutcome> = plan
            .first_copies
            .iter()
            .map(|&a| {
                let (i, e) = &plan.accepted[a];
                if rng.u32(0..1000) < fail_per_mille {
                    count(FAILED_PUTS, 1);
                    PutOutcome::Failed("ProvisionedThroughputExceededException".into())
                } else {
                    table.put(e, pos + i)
                }
            })
            .collect();
        plan.settle(&**core(), &puts, CLOCK).unwrap();
        if rng.u32(0..1000) < kill_per_mille {
            count(KILLED, 1);
            count(REDELIVERED, records.len() as u64);
            continue; // killed before it answered: the same records come again
        }
        let failed = plan.fates.iter().position(|f| matches!(f, Fate::Failed(_)));
        let done = failed.unwrap_or(records.len());
        count(REDELIVERED, (records.len() - done) as u64);
        for (k, f) in plan.fates.into_iter().take(done).enumerate() {
            fates[pos + k] = Some(f);
        }
        pos += done;
    }
    let mut out = Outcome {
        rejected: Vec::new(),
        stored: 0,
        duplicates: 0,
        events: table.items.into_iter().map(|(k, (e, _))| (k, e)).collect(),
        csv: String::new(),
    };
    for (i, f) in fates.into_iter().enumerate() {
        match f.unwrap() {
            Fate::Stored => out.stored += 1,
            Fate::Duplicate => out.duplicates += 1,
            Fate::Rejected { reason, .. } => out.rejected.push((i, reason)),
            other => panic!("record {i}: {other:?}"),
        }
    }
    count(RECORDS, h.records.len() as u64);
    count(DUPLICATES, out.duplicates);
    count(
        CONFLICTS,
        out.rejected
            .iter()
            .filter(|(_, r)| r == "conflicting_duplicate")
            .count() as u64,
    );
    out.csv = table_csv(&out.events);
    out
}

/// Any history, any batching, any faults: the Lambda protocol decides as the replay.
#[test]
fn lambda_ingest_decides_as_the_replay() {
    const CASES: u32 = 2_000;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: CASES,
        ..ProptestConfig::default()
    });
    let strategy = (
        history(),
        1usize..9,
        prop::collection::vec(1usize..9, 1..4),
        prop_oneof![Just(0u32), 1u32..300],
        prop_oneof![Just(0u32), 1u32..300],
        any::<u64>(),
    );
    runner
        .run(&strategy, |(h, batch_lines, sizes, fail, kill, seed)| {
            let want = replay(&h, batch_lines);
            let got = lambda(&h, &sizes, fail, kill, seed);
            prop_assert_eq!(&got.rejected, &want.rejected);
            prop_assert_eq!(got.stored, want.stored);
            prop_assert_eq!(got.duplicates, want.duplicates);
            prop_assert_eq!(&got.events, &want.events);
            prop_assert_eq!(&got.csv, &want.csv);
            prop_assert_eq!(
                h.records.len() as u64,
                got.stored + got.duplicates + got.rejected.len() as u64
            );
            Ok(())
        })
        .unwrap();
    let n = |i: usize| STATS[i].load(Ordering::Relaxed);
    println!(
        "model: {CASES} histories, {} records, {} deliveries, {} killed and redelivered whole, {} puts failed, {} records redelivered, {} exact duplicates, {} conflicting copies",
        n(RECORDS),
        n(DELIVERIES),
        n(KILLED),
        n(FAILED_PUTS),
        n(REDELIVERED),
        n(DUPLICATES),
        n(CONFLICTS)
    );
}

/// A few dozen histories through the real ingest handler on DynamoDB Local (and moto's SQS),
/// each in one batch delivered twice with the same sequence numbers (the second delivery is
/// what Lambda sends after a killed invocation): the DLQ's (record, reason) list and the
/// stored items equal the replay's, and the redelivery adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_through_the_real_ingest_on_dynamodb_local() {
    let stack = LocalStack::start(&stack::tools_dir()).await.unwrap();
    let sdk = stack.sdk_config().await;
    let r = resources::create(&sdk, &stack, 1).await.unwrap();
    let env = tripflow_local::function_env(&r, "UTC", "24h");
    let apps = InProcess::new(&stack, core().clone(), &env).await.unwrap();
    let app = apps.app(Function::Ingest);
    let sqs = stack.sqs_client(&sdk);
    let ddb = stack.dynamodb_client(&sdk);

    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = history();
    let mut exercised = 0;
    for n in 0..36 {
        let h = strategy.new_tree(&mut runner).unwrap().current();
        // Each history's trips under their own ids, so they share the table without meeting.
        let h = History {
            records: h
                .records
                .iter()
                .map(|r| {
                    String::from_utf8(r.clone())
                        .unwrap()
                        .replace("\"t", &format!("\"h{n}t"))
                        .replace("\"bad", &format!("\"h{n}bad"))
                        .into_bytes()
                })
                .collect(),
        };
        let want = replay(&h, 8192);
        let event = kinesis_event(&h.records, n);
        let deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 60_000;
        for delivery in 0..2 {
            let answer = app.invoke(event.clone(), deadline).await.unwrap();
            assert_eq!(
                answer["batchItemFailures"],
                json!([]),
                "history {n}, delivery {delivery}"
            );
        }
        // The DLQ: both deliveries' rejections, each (record, reason) twice.
        let bodies = tripflow_local::drain_queue(&sqs, &r.dlq_url).await.unwrap();
        let mut dlq: Vec<(usize, String)> = bodies
            .iter()
            .map(|b| {
                let m: tripflow_lambda::ingest::DlqMessage = serde_json::from_str(b).unwrap();
                let seq: usize = m.sequence_number.parse().unwrap();
                (seq, m.reason)
            })
            .collect();
        dlq.sort();
        let mut twice: Vec<(usize, String)> = want
            .rejected
            .iter()
            .flat_map(|x| [x.clone(), x.clone()])
            .collect();
        twice.sort();
        assert_eq!(dlq, twice, "history {n}");
        // The table holds the replay's first copies.
        let mut items = BTreeMap::new();
        let mut start = None;
        loop {
            let out = ddb
                .scan()
                .table_name(&r.table)
                .filter_expression("begins_with(pk, :p)")
                .expression_attribute_values(
                    ":p",
                    aws_sdk_dynamodb::types::AttributeValue::S(format!("TRIP#h{n}")),
                )
                .set_exclusive_start_key(start)
                .send()
                .await
                .unwrap();
            for item in out.items() {
                for kind in [EventKind::Start, EventKind::End] {
                    if let Some((e, _)) = tripflow_lambda::table::stored_half(item, kind).unwrap() {
                        items.insert((e.trip_id.clone(), e.kind), e);
                    }
                }
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        assert_eq!(items, want.events, "history {n}");
        assert_eq!(items.len() as u64, want.stored, "history {n}");
        exercised += h.records.len();
    }
    println!("36 histories, {exercised} records, each delivered twice, on DynamoDB Local");
}

/// A Kinesis event of `records` on one shard, sequence numbers = record indices.
fn kinesis_event(records: &[Vec<u8>], n: usize) -> Value {
    let arrival = CLOCK.arrival_ns as f64 / 1e9;
    let recs: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": format!("h{n}"),
                    "sequenceNumber": i.to_string(),
                    "data": base64::engine::general_purpose::STANDARD.encode(r),
                    "approximateArrivalTimestamp": arrival,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": format!("shardId-000000000000:{i}"),
                "eventName": "aws:kinesis:record",
                "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/tripflow-events",
            })
        })
        .collect();
    json!({ "Records": recs })
}

/// A record the core itself fails on (here: a valid 190 KB record does not fit a 2 MiB guest
/// memory cap, which small records do) costs that record only: the ingest handler on DynamoDB
/// Local stores the others and dead-letters it as `core_failure` with its bytes, and the
/// replay quarantines it alike. (Before, the whole batch failed and was retried forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_traps_the_core_is_dead_lettered_alone() {
    let limits = Limits {
        memory_bytes: 2 << 20,
        ..Limits::default()
    };
    let small = Arc::new(Runtime::load(&ComponentSource::Embedded, limits, None).unwrap());
    let big = format!(
        r#"{{"trip_id":"huge","event_type":"trip_start","timestamp":"2024-05-01T08:00:00Z","pad":"{}"}}"#,
        "x".repeat(190_000)
    )
    .into_bytes();
    let h = History {
        records: vec![
            half("trap-a", EventKind::Start, 0, Some(500), 0),
            big.clone(),
            half("trap-a", EventKind::End, 10, Some(700), 0),
        ],
    };

    // The replay, with the same cap.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("h.ndjson");
    std::fs::write(&file, h.records.join(&b"\n"[..])).unwrap();
    let mut state = StateDir::temporary().unwrap();
    let mut quarantine = Vec::new();
    let summary = tripflow_store::replay(
        &*small,
        &mut state,
        &[Input {
            name: "h".into(),
            source: InputSource::File(file),
        }],
        &ReplayOptions::default(),
        Some(&mut quarantine),
        &(),
    )
    .unwrap();
    assert_eq!((summary.stored, summary.completed), (2, 1));
    assert_eq!(summary.rejected["core_failure"], 1);

    // The ingest handler, with the same cap.
    let stack = LocalStack::start(&stack::tools_dir()).await.unwrap();
    let sdk = stack.sdk_config().await;
    let r = resources::create(&sdk, &stack, 1).await.unwrap();
    let env = tripflow_local::function_env(&r, "UTC", "24h");
    let apps = InProcess::new(&stack, small.clone(), &env).await.unwrap();
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    let answer = apps
        .app(Function::Ingest)
        .invoke(kinesis_event(&h.records, 0), deadline)
        .await
        .unwrap();
    assert_eq!(answer["batchItemFailures"], json!([]), "the batch goes on");
    let bodies = tripflow_local::drain_queue(&stack.sqs_client(&sdk), &r.dlq_url)
        .await
        .unwrap();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let m: tripflow_lambda::ingest::DlqMessage = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(
        (m.reason.as_str(), m.sequence_number.as_str()),
        ("core_failure", "1")
    );
    assert!(m.detail.contains("memory"), "{}", m.detail);
    let raw = tripflow_local::dlq_raw(&stack.s3_client(&sdk), &m)
        .await
        .unwrap();
    assert_eq!(raw, big);
    let stored = stack
        .dynamodb_client(&sdk)
        .scan()
        .table_name(&r.table)
        .filter_expression("pk = :p AND attribute_exists(s_ts) AND attribute_exists(e_ts)")
        .expression_attribute_values(
            ":p",
            aws_sdk_dynamodb::types::AttributeValue::S("TRIP#trap-a".into()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stored.count(), 1, "both halves of trap-a on its one item");
}
