//! DynamoDB capacity per completed trip, measured with `ReturnConsumedCapacity` on DynamoDB
//! Local: tripflow's table design (through the real ingest and matcher handlers) against the
//! seed design (PK `TRIP#<id>`, SK `<timestamp>`; per trip put + put + query + update +
//! delete), in one run on one engine.
//!
//! Traffic is what production sees: each trip's start arrives in an earlier batch than its
//! end. A write whose condition fails is counted as one write unit (AWS bills it; DynamoDB
//! Local reports nothing for it).

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
    /// tripflow.
    pub tripflow: Units,
    /// The seed.
    pub seed: Units,
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
            "{:<10} {:>8} {:>8} {:>16}",
            "design", "WCU", "RCU", "KPI run RCU"
        )?;
        for (name, u) in [("tripflow", &self.tripflow), ("seed", &self.seed)] {
            writeln!(
                f,
                "{:<10} {:>8.3} {:>8.3} {:>16.4}",
                name, u.write, u.read, u.kpi_read
            )?;
        }
        for (name, u) in [("tripflow", &self.tripflow), ("seed", &self.seed)] {
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
        let t0 = base + (i as i64) * 37;
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

/// Runs both designs on `stack`.
pub async fn measure(stack: &LocalStack, trips: usize) -> anyhow::Result<Report> {
    let sdk = stack.sdk_config().await;
    let r = resources::create(&sdk, stack, 1).await?;
    let core = Arc::new(Runtime::load(
        &ComponentSource::Embedded,
        Limits::default(),
        None,
    )?);
    let env = crate::function_env(&r, "UTC", "24h");
    let mut pipeline = Pipeline::new(stack, &r, InProcess::new(stack, core, &env).await?).await;
    let kinesis = stack.kinesis_client(&sdk);
    let (starts, ends) = events(trips);
    crate::send(&kinesis, &r.stream, &starts).await?;
    pipeline.drain().await?;
    crate::send(&kinesis, &r.stream, &ends).await?;
    pipeline.drain().await?;
    let (ingest, matcher) = (
        pipeline.invoker.app(Function::Ingest),
        pipeline.invoker.app(Function::Matcher),
    );
    let n = trips as f64;
    let mut by_operation = BTreeMap::new();
    for app in [ingest, matcher] {
        for (op, u) in app.capacity.by_operation() {
            *by_operation.entry(op.to_owned()).or_insert(0.0) += u / n;
        }
    }
    let kpi = pipeline.invoker.app(Function::Kpi);
    let before = kpi.capacity.read_units();
    pipeline
        .invoke(
            Function::Kpi,
            json!({"from": "2019-03-01", "to": "2019-03-02"}),
        )
        .await?;
    let tripflow = Units {
        write: (ingest.capacity.write_units() + matcher.capacity.write_units()) / n,
        read: (ingest.capacity.read_units() + matcher.capacity.read_units()) / n,
        by_operation,
        kpi_read: (kpi.capacity.read_units() - before) / n,
    };
    let seed = seed_design(stack, &sdk, trips).await?;
    Ok(Report {
        trips,
        tripflow,
        seed,
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
