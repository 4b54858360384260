//! Real AWS event payloads (`fixtures/aws-events/`): they survive a parse/re-serialise round
//! trip through `aws_lambda_events`, and the matcher ignores everything but INSERTs of event
//! items without calling AWS at all.

use std::path::Path;
use std::sync::Arc;

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::kinesis::KinesisEvent;
use serde_json::Value;
use tripflow_lambda::retry::Budget;
use tripflow_lambda::{App, Config, Function};
use tripflow_runtime::{ComponentSource, Limits, Runtime};

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/aws-events")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Numbers compared by value (AWS writes `1764140400`; a float field re-serialises as
/// `1764140400.0`), and the fields aws_lambda_events writes for absent ones (`null`, an empty
/// `OldImage`/`NewImage`) dropped.
fn normalise(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(_, v)| !v.is_null() && v.as_object().is_none_or(|m| !m.is_empty()))
                .map(|(k, v)| (k.clone(), normalise(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn fixtures_round_trip() {
    let k = fixture("kinesis.json");
    let parsed: KinesisEvent = serde_json::from_value(k.clone()).unwrap();
    assert_eq!(parsed.records.len(), 2);
    assert!(
        parsed.records[0]
            .kinesis
            .data
            .0
            .starts_with(b"{\"trip_id\":\"nyc-1\"")
    );
    let again = serde_json::to_value(&parsed).unwrap();
    let reparsed: KinesisEvent = serde_json::from_value(again.clone()).unwrap();
    assert_eq!(
        serde_json::to_value(&reparsed).unwrap(),
        again,
        "not a fixed point"
    );
    // aws_lambda_events 1.2 writes `approximateArrivalTimestamp` as a string and adds the
    // default `encryptionType`; every other field comes back exactly as AWS sent it.
    let mut expected = k.clone();
    for (r, back) in expected["Records"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(again["Records"].as_array().unwrap())
    {
        let ts = r["kinesis"]["approximateArrivalTimestamp"]
            .as_f64()
            .unwrap();
        assert_eq!(
            back["kinesis"]["approximateArrivalTimestamp"]
                .as_str()
                .unwrap()
                .parse::<f64>()
                .unwrap(),
            ts
        );
        r["kinesis"]["approximateArrivalTimestamp"] =
            back["kinesis"]["approximateArrivalTimestamp"].clone();
        assert_eq!(back["kinesis"]["encryptionType"], "NONE");
        r["kinesis"]["encryptionType"] = "NONE".into();
    }
    assert_eq!(again, expected);
    for name in [
        "dynamodb-insert.json",
        "dynamodb-modify.json",
        "dynamodb-remove.json",
        "dynamodb-ttl-remove.json",
    ] {
        let v = fixture(name);
        let parsed: StreamEvent = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            normalise(&serde_json::to_value(&parsed).unwrap()),
            normalise(&v),
            "{name}"
        );
    }
    let ttl: StreamEvent = serde_json::from_value(fixture("dynamodb-ttl-remove.json")).unwrap();
    assert_eq!(
        ttl.records[0].user_identity.as_ref().unwrap().type_,
        "Service"
    );
}

/// An app whose AWS endpoints refuse connections: any call it makes fails.
async fn offline_app(function: Function) -> App {
    let env = [
        ("_HANDLER", function.name()),
        ("TABLE_NAME", "tripflow"),
        ("DLQ_URL", "http://127.0.0.1:9/queue/rejected"),
        ("BUCKET", "kpi"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = Config::from_map(&env).unwrap();
    let core =
        Arc::new(Runtime::load(&ComponentSource::Embedded, Limits::default(), None).unwrap());
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "x", "x", None, None, "test",
        ))
        .endpoint_url("http://127.0.0.1:9")
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    App::new(config, core, &sdk)
}

fn budget() -> Budget {
    Budget::until(
        std::time::Instant::now() + std::time::Duration::from_secs(5),
        std::time::Duration::from_millis(500),
    )
}

#[tokio::test]
async fn matcher_ignores_removals_and_files_trip_writes() {
    let app = offline_app(Function::Matcher).await;
    for name in ["dynamodb-remove.json", "dynamodb-ttl-remove.json"] {
        let event: StreamEvent = serde_json::from_value(fixture(name)).unwrap();
        let out = tripflow_lambda::matcher::handle(&app, event, &budget())
            .await
            .unwrap();
        assert!(
            out.batch_item_failures.is_empty(),
            "{name} made the matcher work"
        );
    }
    assert_eq!(app.capacity.write_units() + app.capacity.read_units(), 0.0);
    // A first half (INSERT) and the completing write (MODIFY) are filed in DynamoDB — which
    // is offline here — so the batch is reported for redelivery, not dropped.
    for (name, seq) in [
        ("dynamodb-insert.json", "111"),
        ("dynamodb-modify.json", "222"),
    ] {
        let event: StreamEvent = serde_json::from_value(fixture(name)).unwrap();
        let out = tripflow_lambda::matcher::handle(&app, event, &budget())
            .await
            .unwrap();
        assert_eq!(out.batch_item_failures.len(), 1, "{name}");
        assert_eq!(
            out.batch_item_failures[0].item_identifier.as_deref(),
            Some(seq)
        );
    }
}

#[tokio::test]
async fn ingest_reports_the_lowest_unhandled_record_when_aws_is_unreachable() {
    let app = offline_app(Function::Ingest).await;
    let event: KinesisEvent = serde_json::from_value(fixture("kinesis.json")).unwrap();
    let first = event.records[0].kinesis.sequence_number.clone();
    let out = tripflow_lambda::ingest::handle(&app, event, &budget())
        .await
        .unwrap();
    assert_eq!(out.batch_item_failures.len(), 1);
    assert_eq!(
        out.batch_item_failures[0].item_identifier.as_deref(),
        Some(first.as_str())
    );
}
