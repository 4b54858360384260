//! DynamoDB capacity per completed trip, measured with `ReturnConsumedCapacity` on DynamoDB
//! Local: tripflow's table design (through the real ingest and matcher handlers) against the
//! seed design (PK `TRIP#<id>`, SK `<timestamp>`; per trip put + put + query + update +
//! delete), in one run on one engine.
//!
//! Traffic shapes, each on fresh resources: **in order** (what production mostly sees: each
//! trip's start arrives in an earlier batch than its end), **out of order** (every end before
//! its start) and **duplicates** (in order, every event sent twice). tripflow's figures include
//! the ingest and matcher functions and one sweeper run (`ORPHAN_AFTER` 1 h, so it reads the
//! manifests of every hour but the last); the KPI run is reported apart, per trip read. A
//! write whose condition fails is counted as one write unit (AWS bills it; DynamoDB Local
//! reports nothing for it).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ReturnConsumedCapacity, ScalarAttributeType,
};
use serde_json::json;
use tripflow_lambda::Function;
use tripflow_runtime::{ComponentSource, Limits, Runtime};

use crate::{InProcess, LocalStack, Pipeline, resources};

/// Units per trip of one design.
#[derive(Clone, Debug, Default)]
pub struct Units {
    /// Write units per completed trip.
    pub write: f64,
    /// Read units per completed trip.
    pub read: f64,
    /// Units per trip by operation.
    pub by_operation: BTreeMap<String, f64>,
    /// Read units per trip of one KPI run over every trip.
    pub kpi_read: f64,
}

/// Both designs.
#[derive(Clone, Debug)]
pub struct Report {
    /// Trips per design.
    pub trips: usize,
    /// tripflow, in-order traffic.
    pub tripflow: Units,
    /// tripflow, every end before its start.
    pub out_of_order: Units,
    /// tripflow, in order, every event twice.
    pub duplicates: Units,
    /// The seed, in-order traffic.
    pub seed: Units,
}

/// How the events of the trips arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// All starts, then all ends.
    InOrder,
    /// All ends, then all starts.
    OutOfOrder,
    /// In order, each batch sent twice.
    Duplicates,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "DynamoDB capacity per completed trip ({} trips each, DynamoDB Local, ReturnConsumedCapacity)",
            self.trips
        )?;
        writeln!(
            f,
            "{:<26} {:>8} {:>8} {:>16}",
            "design, traffic", "WCU", "RCU", "KPI run RCU"
        )?;
        let rows = [
            ("tripflow, in order", &self.tripflow),
            ("tripflow, out of order", &self.out_of_order),
            ("tripflow, every event x2", &self.duplicates),
            ("seed, in order", &self.seed),
        ];
        for (name, u) in rows {
            writeln!(
                f,
                "{:<26} {:>8.3} {:>8.3} {:>16.4}",
                name, u.write, u.read, u.kpi_read
            )?;
        }
        for (name, u) in rows {
            let ops: Vec<String> = u
                .by_operation
                .iter()
                .map(|(k, v)| format!("{k} {v:.3}"))
                .collect();
            writeln!(f, "{name} by operation: {}", ops.join(", "))?;
        }
        Ok(())
    }
}

fn events(trips: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let base = 1_551_398_400i64; // 2019-03-01T00:00:00Z
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    for i in 0..trips {
        // Spread over one UTC day, whatever the count.
        let t0 = base + (i as i64) * 80_000 / trips.max(1) as i64;
        let ts = |s: i64| {
            chrono::DateTime::from_timestamp(s, 0)
                .expect("in range")
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        starts.push(json!({"trip_id": format!("cap-{i}"), "event_type": "trip_start", "timestamp": ts(t0), "vendor_id": 2}).to_string().into_bytes());
        ends.push(json!({"trip_id": format!("cap-{i}"), "event_type": "trip_end", "timestamp": ts(t0 + 900), "fare": format!("{}.{:02}", 5 + i % 40, i % 100), "vendor_id": 2}).to_string().into_bytes());
    }
    (starts, ends)
}

/// Runs both designs on `stack`, tripflow under each [`Traffic`].
pub async fn measure(stack: &LocalStack, trips: usize) -> anyhow::Result<Report> {
    let sdk = stack.sdk_config().await;
    Ok(Report {
        trips,
        tripflow: tripflow_design(stack, trips, Traffic::InOrder).await?,
        out_of_order: tripflow_design(stack, trips, Traffic::OutOfOrder).await?,
        duplicates: tripflow_design(stack, trips, Traffic::Duplicates).await?,
        seed: seed_design(stack, &sdk, trips).await?,
    })
}

/// tripflow's units per trip under `traffic`, on fresh resources.
pub async fn tripflow_design(
    stack: &LocalStack,
    trips: usize,
    traffic: Traffic,
) -> anyhow::Result<Units> {
    let sdk = stack.sdk_config().await;
    let name = match traffic {
        Traffic::InOrder => "cap-in-order",
        Traffic::OutOfOrder => "cap-out-of-order",
        Traffic::Duplicates => "cap-duplicates",
    };
    let r = resources::create_named(&sdk, stack, 1, name).await?;
    let core = Arc::new(Runtime::load(
        &ComponentSource::Embedded,
        Limits::default(),
        None,
    )?);
    let env = crate::function_env(&r, "UTC", "1h");
    let mut pipeline = Pipeline::new(stack, &r, InProcess::new(stack, core, &env).await?).await;
    let kinesis = stack.kinesis_client(&sdk);
    let (starts, ends) = events(trips);
    let rounds: Vec<&[Vec<u8>]> = match traffic {
        Traffic::InOrder => vec![&starts, &ends],
        Traffic::OutOfOrder => vec![&ends, &starts],
        Traffic::Duplicates => vec![&starts, &starts, &ends, &ends],
    };
    for round in rounds {
        crate::send(&kinesis, &r.stream, round).await?;
        pipeline.drain().await?;
    }
    pipeline.invoke(Function::Sweeper, json!({})).await?;
    let apps =
        [Function::Ingest, Function::Matcher, Function::Sweeper].map(|f| pipeline.invoker.app(f));
    let n = trips as f64;
    let mut by_operation = BTreeMap::new();
    for app in apps {
        for (op, u) in app.capacity.by_operation() {
            *by_operation.entry(op.to_owned()).or_insert(0.0) += u / n;
        }
    }
    let kpi = pipeline.invoker.app(Function::Kpi);
    let before = kpi.capacity.read_units();
    let out = pipeline
        .invoke(
            Function::Kpi,
            json!({"from": "2019-03-01", "to": "2019-03-02"}),
        )
        .await?;
    anyhow::ensure!(
        out["trips"] == trips,
        "the KPI run counted {} trips, not {trips}: {out}",
        out["trips"]
    );
    Ok(Units {
        write: apps.iter().map(|a| a.capacity.write_units()).sum::<f64>() / n,
        read: apps.iter().map(|a| a.capacity.read_units()).sum::<f64>() / n,
        by_operation,
        kpi_read: (kpi.capacity.read_units() - before) / n,
    })
}

async fn seed_design(
    stack: &LocalStack,
    sdk: &aws_config::SdkConfig,
    trips: usize,
) -> anyhow::Result<Units> {
    let ddb = stack.dynamodb_client(sdk);
    let table = "seed-trips";
    let key = |n: &str, t| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .expect("complete")
    };
    let attr = |n: &str, t| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(t)
            .build()
            .expect("complete")
    };
    ddb.create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("PK", KeyType::Hash))
        .key_schema(key("SK", KeyType::Range))
        .attribute_definitions(attr("PK", ScalarAttributeType::S))
        .attribute_definitions(attr("SK", ScalarAttributeType::S))
        .send()
        .await?;
    let mut units: HashMap<&str, (f64, bool)> = HashMap::new();
    let mut add =
        |op: &'static str, c: Option<&aws_sdk_dynamodb::types::ConsumedCapacity>, write: bool| {
            let e = units.entry(op).or_insert((0.0, write));
            e.0 += c.and_then(|c| c.capacity_units()).unwrap_or(0.0);
        };
    let base = 1_551_398_400_000i64;
    for i in 0..trips {
        let pk = AttributeValue::S(format!("TRIP#cap-{i}"));
        let (t0, t1) = (base + i as i64 * 37_000, base + i as i64 * 37_000 + 900_000);
        for (sk, kind) in [(t0, "trip_start"), (t1, "trip_end")] {
            let out = ddb
                .put_item()
                .table_name(table)
                .item("PK", pk.clone())
                .item("SK", AttributeValue::S(sk.to_string()))
                .item("event_type", AttributeValue::S(kind.into()))
                .item("fare", AttributeValue::N("12.50".into()))
                .item("vendor_id", AttributeValue::N("2".into()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await?;
            add("put", out.consumed_capacity(), true);
        }
        let out = ddb
            .query()
            .table_name(table)
            .key_condition_expression("PK = :p")
            .expression_attribute_values(":p", pk.clone())
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await?;
        add("query", out.consumed_capacity(), false);
        let out = ddb
            .update_item()
            .table_name(table)
            .key("PK", pk.clone())
            .key("SK", AttributeValue::S(t1.to_string()))
            .update_expression("SET #s = :c, trip_fare = :f")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":c", AttributeValue::S("COMPLETED".into()))
            .expression_attribute_values(":f", AttributeValue::N("12.50".into()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await?;
        add("update", out.consumed_capacity(), true);
        let out = ddb
            .delete_item()
            .table_name(table)
            .key("PK", pk.clone())
            .key("SK", AttributeValue::S(t0.to_string()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await?;
        add("delete", out.consumed_capacity(), true);
    }
    // The seed's KPI job scans the table.
    let mut kpi_read = 0.0;
    let mut start = None;
    loop {
        let out = ddb
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await?;
        kpi_read += out
            .consumed_capacity()
            .and_then(|c| c.capacity_units())
            .unwrap_or(0.0);
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            break;
        }
    }
    let n = trips as f64;
    Ok(Units {
        write: units.values().filter(|u| u.1).map(|u| u.0).sum::<f64>() / n,
        read: units.values().filter(|u| !u.1).map(|u| u.0).sum::<f64>() / n,
        by_operation: units
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.0 / n))
            .collect(),
        kpi_read: kpi_read / n,
    })
}
