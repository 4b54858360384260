//! The pipeline's resources, created on the local engines as `deploy/template.yaml` creates
//! them in AWS: the stream, the table (stream, TTL, no secondary index), the KPI bucket,
//! the DLQ and the event source mappings' on-failure queue.

use std::time::Duration;

use anyhow::Context;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType, TimeToLiveSpecification,
};
use tripflow_lambda::table;

/// Names of the created resources.
#[derive(Clone, Debug)]
pub struct Resources {
    /// Kinesis stream.
    pub stream: String,
    /// Its ARN.
    pub stream_arn: String,
    /// DynamoDB table.
    pub table: String,
    /// The table's stream ARN.
    pub table_stream_arn: String,
    /// KPI bucket.
    pub bucket: String,
    /// Rejected records.
    pub dlq_url: String,
    /// Batches the event source mappings gave up on.
    pub on_failure_url: String,
}

/// Creates everything, `shards` Kinesis shards.
pub async fn create(
    sdk: &aws_config::SdkConfig,
    stack: &crate::LocalStack,
    shards: i32,
) -> anyhow::Result<Resources> {
    create_named(sdk, stack, shards, "tripflow").await
}

/// Creates everything under names that start with `name` (several pipelines on one stack).
pub async fn create_named(
    sdk: &aws_config::SdkConfig,
    stack: &crate::LocalStack,
    shards: i32,
    name: &str,
) -> anyhow::Result<Resources> {
    let kinesis = stack.kinesis_client(sdk);
    let ddb = stack.dynamodb_client(sdk);
    let s3 = stack.s3_client(sdk);
    let sqs = stack.sqs_client(sdk);
    let (stream, tbl, bucket) = (&format!("{name}-events"), name, &format!("{name}-kpi"));

    kinesis
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await
        .context("CreateStream")?;
    let stream_arn = loop {
        let d = kinesis
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .context("DescribeStreamSummary")?;
        let s = d.stream_description_summary().context("no summary")?;
        if s.stream_status().as_str() == "ACTIVE" {
            break s.stream_arn().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let out = ddb
        .create_table()
        .table_name(tbl)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(table_attributes()))
        .key_schema(key(table::PK, KeyType::Hash))
        .key_schema(key(table::SK, KeyType::Range))
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewImage)
                .build()?,
        )
        .send()
        .await
        .context("CreateTable")?;
    let table_stream_arn = out
        .table_description()
        .and_then(|d| d.latest_stream_arn())
        .context("the table has no stream")?
        .to_owned();
    ddb.update_time_to_live()
        .table_name(tbl)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(table::EXPIRES_AT)
                .build()?,
        )
        .send()
        .await
        .context("UpdateTimeToLive")?;

    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .context("CreateBucket")?;
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{name}-rejected"))
        .send()
        .await
        .context("CreateQueue")?
        .queue_url()
        .context("no queue url")?
        .to_owned();
    let on_failure_url = sqs
        .create_queue()
        .queue_name(format!("{name}-esm-failures"))
        .send()
        .await
        .context("CreateQueue")?
        .queue_url()
        .context("no queue url")?
        .to_owned();
    Ok(Resources {
        stream: stream.into(),
        stream_arn,
        table: tbl.into(),
        table_stream_arn,
        bucket: bucket.into(),
        dlq_url,
        on_failure_url,
    })
}

fn key(name: &str, t: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(t)
        .build()
        .expect("name and type are set")
}

fn attr(name: &str, t: ScalarAttributeType) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(t)
        .build()
        .expect("name and type are set")
}

/// The key attributes of the table (it has no secondary index).
pub fn table_attributes() -> Vec<AttributeDefinition> {
    vec![
        attr(table::PK, ScalarAttributeType::S),
        attr(table::SK, ScalarAttributeType::S),
    ]
}
