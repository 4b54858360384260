//! `tripflow-local`: the tripflow pipeline on local AWS engines (DynamoDB Local, kinesis-mock,
//! moto), with Lambda's event source mappings played by a small poller.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use tripflow_lambda::Function;
use tripflow_local::esm::Invoker;
use tripflow_local::faults::FaultSpec;
use tripflow_local::runtime_api::BootstrapInvoker;
use tripflow_local::{InProcess, Kills, LocalStack, Pipeline, resources, stack, step_functions};
use tripflow_runtime::{ComponentSource, Limits, Runtime};

#[derive(Parser)]
#[command(name = "tripflow-local", version, about, long_about = None)]
struct Cli {
    /// Where scripts/install-local-aws.sh installed the engines (default: $TRIPFLOW_LOCAL_AWS,
    /// else tools/local-aws in this checkout).
    #[arg(long, global = true, value_name = "DIR")]
    tools: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the local stack, create the resources and run the pipeline until Ctrl-C.
    ///
    /// Prints the environment to export in another shell; then `tripflow-local send` puts
    /// events on the stream. Each time the pipeline goes quiet after new events, the KPI job
    /// runs as its schedule runs it in AWS (yesterday, today and every day changed since the
    /// last run), or over --from..--to when given.
    Up {
        #[command(flatten)]
        days: KpiDays,
    },
    /// Put NDJSON events on a Kinesis stream (endpoint and credentials from the standard AWS
    /// environment, e.g. what `up` prints).
    Send {
        /// Stream name.
        #[arg(long, default_value = "tripflow-events")]
        stream: String,
        /// Shuffle the records with this seed.
        #[arg(long)]
        shuffle_seed: Option<u64>,
        /// Send every N-th record twice (0 = never).
        #[arg(long, default_value_t = 0)]
        duplicate_every: usize,
        /// NDJSON files (one event per line).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// One run end to end: start the stack, send FILE, run the pipeline to quiescence, run
    /// the KPI job as its schedule does (every day the events changed, plus yesterday and
    /// today) or over --from..--to, print the combined CSV from S3, and stop.
    ///
    /// With --via-step-functions, the KPI job is an execution of the template's KPI state
    /// machine on moto's Step Functions interpreter, as deployed: plan, one chunk invocation
    /// per --chunk-days days (at most --max-concurrency at once), publish. That is how a
    /// backfill longer than one invocation's 366 days runs, e.g.
    /// `tripflow-local run --bootstrap target/release/tripflow-lambda --via-step-functions
    /// --chunk-days 31 --max-concurrency 4 --from 2017-01-01 --to 2019-12-31 events.ndjson`.
    Run(RunArgs),
    /// Bring back the Kinesis batches the ingest mapping gave up on: read each range described
    /// on the on-failure queue back from the stream and put its records on again (the
    /// pipeline decides them as any record: stored, duplicate or rejected). Ranges past the
    /// stream's retention are listed as gone. Uses the standard AWS environment.
    Redrive {
        /// URL of the on-failure destination queue (the template's StreamFailureQueue).
        #[arg(long, value_name = "URL")]
        queue_url: String,
        /// The event stream.
        #[arg(long, default_value = "tripflow-events")]
        stream: String,
    },
    /// Read a table page by page into the layout of a DynamoDB export to S3 (manifests and
    /// data/*.json.gz), for `tripflow audit` and `tripflow diff`. For a real table, AWS's own
    /// export (`aws dynamodb export-table-to-point-in-time --export-format DYNAMODB_JSON`) is
    /// the way: a point in time, no read units. This paged read is for a small table or a local
    /// one; it is not a snapshot, so run it while the pipeline is quiet. Uses the standard AWS
    /// environment.
    Export {
        /// The pipeline's table (the template's TableName).
        #[arg(long, default_value = "tripflow")]
        table: String,
        /// Scan segments read side by side.
        #[arg(long, default_value_t = tripflow_local::export::SEGMENTS)]
        segments: u32,
        /// A new directory to write the export into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Write every record the pipeline kept instead of storing (the rejected-records queue's
    /// messages, one per record, bytes spilled to S3 fetched inline) as NDJSON, for `tripflow
    /// audit --rejects`. The messages stay on the queue. Uses the standard AWS environment.
    Rejects {
        /// URL of the rejected-records queue (the template's RejectedQueueUrl).
        #[arg(long, value_name = "URL")]
        queue_url: String,
        /// Where to write them.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Measure the ingest bootstrap's cold start: process start → first batch answered.
    ColdStart {
        /// The bootstrap binary.
        #[arg(long)]
        bootstrap: PathBuf,
        /// Component to load (.cwasm or .wasm); default: the one built into the binary.
        #[arg(long)]
        component: Option<PathBuf>,
        /// Runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Measure the ingest and matcher functions' CPU per record: the bootstrap binary as two
    /// processes on the local engines, FILE through Kinesis and the table's stream; with
    /// --seed-script, the seed's Python handlers on the same events in the same run.
    Cpu {
        /// The bootstrap binary (build it with `cargo build --release -p tripflow-lambda`).
        #[arg(long)]
        bootstrap: PathBuf,
        /// The seed's handlers (scripts/peers/seed_pipeline.py), to run side by side.
        #[arg(long, requires = "python")]
        seed_script: Option<PathBuf>,
        /// The Python with boto3 to run the seed with (tools/local-aws/venv/bin/python).
        #[arg(long)]
        python: Option<PathBuf>,
        /// NDJSON events.
        file: PathBuf,
    },
    /// Measure DynamoDB capacity per completed trip for tripflow's table design and the seed's.
    Capacity {
        /// Trips to run through each design.
        #[arg(long, default_value_t = 500)]
        trips: usize,
    },
}

/// The KPI days `up` and `run` compute: the zone, and a manual range or the schedule's window.
#[derive(clap::Args, Debug)]
struct KpiDays {
    /// KPI time zone (IANA).
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// First KPI day (YYYY-MM-DD) of the KPI runs, instead of the days the schedule picks.
    #[arg(long, requires = "to")]
    from: Option<String>,
    /// Last KPI day (YYYY-MM-DD).
    #[arg(long, requires = "from")]
    to: Option<String>,
}

impl KpiDays {
    /// The KPI job's input: the manual range, or what its schedule sends (an EventBridge
    /// Scheduler event has no dates: yesterday, today and every dirty day).
    fn payload(&self) -> serde_json::Value {
        match (&self.from, &self.to) {
            (Some(from), Some(to)) => json!({"from": from, "to": to}),
            _ => json!({}),
        }
    }
}

// What `tripflow-local run` takes (the subcommand's help is the variant's doc comment).
#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    days: KpiDays,
    /// Shuffle the records with this seed.
    #[arg(long)]
    shuffle_seed: Option<u64>,
    /// Send every N-th record twice.
    #[arg(long, default_value_t = 0)]
    duplicate_every: usize,
    /// Run the functions as this bootstrap binary behind a local Runtime API instead of
    /// in this process.
    #[arg(long, value_name = "PATH")]
    bootstrap: Option<PathBuf>,
    /// Inject faults into the functions' AWS requests, e.g.
    /// `throttle=5%,5xx=1%,reset=0.5%,slow=2%,latency=100ms,seed=7` (rates of requests;
    /// 500s and resets strike before or after the request takes effect).
    #[arg(long, value_name = "SPEC", value_parser = parse_faults)]
    faults: Option<FaultSpec>,
    /// Kill one stream invocation in N at a random point (with --bootstrap: SIGKILL the
    /// process, which cold-starts again); the mapping redelivers the same records.
    #[arg(long, value_name = "N")]
    kill_every: Option<u32>,
    /// Run the KPI job as an execution of the KPI state machine (deploy/template.yaml's
    /// KpiStateMachine, on moto's ASL interpreter) instead of one KPI invocation.
    #[arg(long)]
    via_step_functions: bool,
    /// Days per chunk invocation (the execution's chunk_days; default: the template's
    /// KpiChunkDays).
    #[arg(long, value_name = "N", requires = "via_step_functions")]
    chunk_days: Option<u32>,
    /// Chunk invocations at once (the execution's max_concurrency; default: the
    /// template's KpiMaxConcurrency). With --bootstrap, as many KPI processes run.
    #[arg(long, value_name = "N", requires = "via_step_functions")]
    max_concurrency: Option<u32>,
    /// Before stopping, keep what production would hold in this new directory, for `tripflow
    /// audit`: `export/` (the table, read page by page into an export's layout),
    /// `rejects.ndjson` (the kept rejected records) and `daily_trip_kpis.csv` (the published
    /// combined CSV).
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// NDJSON events.
    file: PathBuf,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let tools = cli.tools.unwrap_or_else(stack::tools_dir);
    match cli.command {
        Command::Up { days } => up(&tools, &days).await,
        Command::Send {
            stream,
            shuffle_seed,
            duplicate_every,
            files,
        } => send(&stream, shuffle_seed, duplicate_every, &files).await,
        Command::Redrive { queue_url, stream } => redrive(&queue_url, &stream).await,
        Command::Export {
            table,
            segments,
            out,
        } => {
            let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .load()
                .await;
            let summary = tripflow_local::export::export_table(
                &aws_sdk_dynamodb::Client::new(&sdk),
                &table,
                &out,
                segments,
                tripflow_local::export::ITEMS_PER_FILE,
            )
            .await?;
            println!(
                "exported {} items of {} into {}",
                summary.item_count,
                summary.table_arn,
                out.display()
            );
            Ok(())
        }
        Command::Rejects { queue_url, out } => {
            let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .load()
                .await;
            let kept = tripflow_local::export::kept_rejects(
                &aws_sdk_sqs::Client::new(&sdk),
                &aws_sdk_s3::Client::new(&sdk),
                &queue_url,
            )
            .await?;
            tripflow_store::audit::write_kept(&out, &kept)?;
            println!("{} rejected records into {}", kept.len(), out.display());
            Ok(())
        }
        Command::Run(args) => run_file(&tools, args).await,
        Command::ColdStart {
            bootstrap,
            component,
            runs,
        } => cold_start(&tools, &bootstrap, component, runs).await,
        Command::Cpu {
            bootstrap,
            seed_script,
            python,
            file,
        } => cpu(&tools, &bootstrap, seed_script, python, &file).await,
        Command::Capacity { trips } => {
            let stack = LocalStack::start(&tools).await?;
            let report = tripflow_local::capacity::measure(&stack, trips).await?;
            print!("{report}");
            Ok(())
        }
    }
}

/// `up`: the stack and the pipeline, polling until Ctrl-C; a KPI run after each busy spell.
async fn up(tools: &std::path::Path, days: &KpiDays) -> anyhow::Result<()> {
    // The functions' JSON logs (one line per batch) on stderr.
    tripflow_lambda::init_tracing();
    let stack = LocalStack::start(tools).await?;
    let sdk = stack.sdk_config().await;
    let r = resources::create(&sdk, &stack, 2).await?;
    let core = Arc::new(Runtime::load(
        &ComponentSource::Embedded,
        Limits::default(),
        None,
    )?);
    let env = tripflow_local::function_env(&r, &days.timezone, "24h");
    let mut pipeline = Pipeline::new(&stack, &r, InProcess::new(&stack, core, &env).await?).await;
    println!("# local AWS stack is up; in another shell:");
    for (k, v) in stack.env() {
        println!("export {k}={v}");
    }
    println!(
        "# stream {} table {} bucket {} dlq {}",
        r.stream, r.table, r.bucket, r.dlq_url
    );
    println!("# then: tripflow-local send FILE.ndjson   (Ctrl-C here stops everything)");
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut busy = false;
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            polled = pipeline.poll() => {
                if polled? > 0 {
                    busy = true;
                    continue;
                }
                if busy {
                    let out = pipeline.invoke(Function::Kpi, days.payload()).await?;
                    eprintln!("KPIs written: s3://{}/{} ({} days)", r.bucket, out["combined_key"].as_str().unwrap_or("?"), out["days"]);
                }
                busy = false;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}

/// `send`: NDJSON files onto a stream, partitioned by trip id.
async fn send(
    stream: &str,
    shuffle_seed: Option<u64>,
    duplicate_every: usize,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let client = aws_sdk_kinesis::Client::new(&sdk);
    let mut records = Vec::new();
    for f in files {
        let text = read(f)?;
        records.extend(tripflow_local::records_of(&text));
    }
    let records = tripflow_local::shuffle_with_duplicates(&records, shuffle_seed, duplicate_every);
    tripflow_local::send(&client, stream, &records).await?;
    eprintln!("sent {} records to {stream}", records.len());
    Ok(())
}

/// `redrive`: the batches the ingest mapping gave up on, back onto the stream.
async fn redrive(queue_url: &str, stream: &str) -> anyhow::Result<()> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let report = tripflow_local::redrive::redrive(
        &aws_sdk_sqs::Client::new(&sdk),
        queue_url,
        &aws_sdk_kinesis::Client::new(&sdk),
        stream,
    )
    .await?;
    println!(
        "{} on-failure messages: {} batches redriven, {} records put back on {stream}; {} messages left on the queue (not batches of this stream)",
        report.messages, report.batches, report.records, report.left
    );
    for (shard, first, last, n) in &report.gone {
        println!(
            "GONE: {n} records of {shard} {first}..{last} are past the stream's retention and cannot be redriven"
        );
    }
    if report.gone.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("some records are past the stream's retention (listed above)")
    }
}

/// `run`: a file through the whole pipeline on the local stack; prints the combined CSV.
async fn run_file(tools: &std::path::Path, args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        days,
        shuffle_seed,
        duplicate_every,
        bootstrap,
        faults,
        kill_every,
        via_step_functions,
        chunk_days,
        max_concurrency,
        keep,
        file,
    } = args;
    if let Some(dir) = &keep
        && dir.exists()
    {
        anyhow::bail!(
            "--keep {}: pass a directory that does not exist yet",
            dir.display()
        );
    }
    let kpi = if via_step_functions {
        let mut input = days.payload();
        if let Some(n) = chunk_days {
            input["chunk_days"] = json!(n);
        }
        if let Some(n) = max_concurrency {
            input["max_concurrency"] = json!(n);
        }
        Kpi::StateMachine(input)
    } else {
        Kpi::Invoke(days.payload())
    };
    let text = read(&file)?;
    let records = tripflow_local::shuffle_with_duplicates(
        &tripflow_local::records_of(&text),
        shuffle_seed,
        duplicate_every,
    );
    let mut stack = LocalStack::start(tools).await?;
    let injected = match &faults {
        Some(spec) => Some(stack.inject_faults(spec).await?),
        None => None,
    };
    let sdk = stack.sdk_config().await;
    let r = resources::create(&sdk, &stack, 2).await?;
    let env = tripflow_local::function_env(&r, &days.timezone, "24h");
    // kinesis-mock answers a 500-record PutRecords slowly while the pollers read it (one Node
    // thread): the producer waits for it rather than giving up after the harness's 10 s.
    let producer = aws_sdk_kinesis::Client::from_conf(
        stack
            .kinesis_client(&sdk)
            .config()
            .to_builder()
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            )
            .build(),
    );
    tripflow_local::send(&producer, &r.stream, &records).await?;
    let csv = match bootstrap {
        Some(b) => {
            let mut env = env;
            env.extend(stack.function_env());
            let mut inv = BootstrapInvoker::start(&b, &Function::ALL, &env).await?;
            if let Some(every) = kill_every {
                inv = inv.with_kills(Kills::new(every, 1));
            }
            if via_step_functions {
                // Lambda runs concurrent invocations in as many instances.
                let instances = match max_concurrency {
                    Some(n) => n as usize,
                    None => step_functions::parameter_default(
                        tripflow_local::esm::TEMPLATE,
                        "KpiMaxConcurrency",
                    )
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1),
                };
                inv.scale(Function::Kpi, instances).await?;
            }
            run_pipeline(&stack, &r, inv, &kpi).await?
        }
        None => {
            let core = Arc::new(Runtime::load(
                &ComponentSource::Embedded,
                Limits::default(),
                None,
            )?);
            let mut inv = InProcess::new(&stack, core, &env).await?;
            if let Some(every) = kill_every {
                inv = inv.with_kills(Kills::new(every, 1));
            }
            run_pipeline(&stack, &r, inv, &kpi).await?
        }
    };
    if let Some(counts) = injected {
        eprintln!("faults injected: {counts}");
    }
    let rejected = tripflow_local::export::kept_rejects(
        &stack.sqs_client(&sdk),
        &stack.s3_client(&sdk),
        &r.dlq_url,
    )
    .await?;
    if let Some(dir) = &keep {
        let started = Instant::now();
        let summary = tripflow_local::export::export_table(
            &stack.dynamodb_client(&sdk),
            &r.table,
            &dir.join("export"),
            tripflow_local::export::SEGMENTS,
            tripflow_local::export::ITEMS_PER_FILE,
        )
        .await?;
        tripflow_store::audit::write_kept(&dir.join("rejects.ndjson"), &rejected)?;
        std::fs::write(dir.join("daily_trip_kpis.csv"), &csv)?;
        eprintln!(
            "kept in {}: export/ ({} items, read in {:.1} s), rejects.ndjson, daily_trip_kpis.csv",
            dir.display(),
            summary.item_count,
            started.elapsed().as_secs_f64()
        );
    }
    print!("{csv}");
    eprintln!(
        "{} records sent, {} rejected records on the DLQ",
        records.len(),
        rejected.len()
    );
    Ok(())
}

/// `cold-start`: process start to first batch answered, over `runs` fresh processes.
async fn cold_start(
    tools: &std::path::Path,
    bootstrap: &std::path::Path,
    component: Option<PathBuf>,
    runs: usize,
) -> anyhow::Result<()> {
    let stack = LocalStack::start(tools).await?;
    let sdk = stack.sdk_config().await;
    let r = resources::create(&sdk, &stack, 1).await?;
    let mut env = tripflow_local::function_env(&r, "UTC", "24h");
    env.extend(stack.env());
    if let Some(c) = &component {
        env.push((
            "COMPONENT_PATH".into(),
            c.canonicalize()?.display().to_string(),
        ));
    }
    let event = json!({"Records": [{
        "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": "t1", "sequenceNumber": "1",
            "data": "eyJ0cmlwX2lkIjoidDEiLCJldmVudF90eXBlIjoidHJpcF9zdGFydCIsInRpbWVzdGFtcCI6IjIwMTktMDMtMDFUMDA6MDA6MDBaIn0=",
            "approximateArrivalTimestamp": 1551398400.0},
        "eventSource": "aws:kinesis", "eventVersion": "1.0", "eventID": "shardId-000000000000:1",
        "eventName": "aws:kinesis:record", "awsRegion": "us-east-1",
        "eventSourceARN": r.stream_arn}]});
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let inv = BootstrapInvoker::start(bootstrap, &[Function::Ingest], &env).await?;
        inv.invoke(Function::Ingest, event.clone())
            .await
            .map_err(anyhow::Error::msg)?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        inv.stop().await;
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "cold start to first batch answered: median {:.1} ms, mean {mean:.1} ms, min {:.1} ms, max {:.1} ms over {runs} runs ({})",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        component.map_or("embedded component".into(), |c| c.display().to_string())
    );
    Ok(())
}

/// `cpu`: the ingest and matcher bootstraps' CPU per record (and the seed's, side by side).
async fn cpu(
    tools: &std::path::Path,
    bootstrap: &std::path::Path,
    seed_script: Option<PathBuf>,
    python: Option<PathBuf>,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let text = read(file)?;
    let records = tripflow_local::records_of(&text);
    let stack = LocalStack::start(tools).await?;
    let r = tripflow_local::cpu::measure(&stack, bootstrap, &records).await?;
    println!(
        "tripflow ingest:  {:>7.1} us CPU per record ({} records, {:.2} s CPU)",
        r.ingest_us(),
        r.ingest_records,
        r.ingest_cpu_s
    );
    println!(
        "tripflow matcher: {:>7.1} us CPU per record ({} records, {:.2} s CPU)",
        r.matcher_us(),
        r.matcher_records,
        r.matcher_cpu_s
    );
    println!(
        "tripflow: {} events through ingest and matcher in {:.1} s wall",
        r.events, r.wall_s
    );
    if let (Some(script), Some(python)) = (seed_script, python) {
        let seed = tripflow_local::cpu::seed(&stack, &python, &script, file)?;
        let seed_us = seed["lambda1_cpu_us_per_event"]
            .as_f64()
            .context("the seed reported no lambda1_cpu_us_per_event")?;
        println!("seed ingest:      {seed_us:>7.1} us CPU per event ({seed})");
        let ratio = r.ingest_us() / seed_us;
        if ratio >= 1.0 {
            println!(
                "ratio tripflow/seed: {ratio:.2} (tripflow's ingest uses {ratio:.2}x the seed's CPU per event)"
            );
        } else {
            println!(
                "ratio tripflow/seed: {ratio:.2} (tripflow's ingest uses {:.1}x less CPU per event than the seed's)",
                1.0 / ratio
            );
        }
    }
    Ok(())
}

/// A file's bytes, or an error that names it.
fn read(file: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read {}: check the path", file.display()))
}

/// How `run` runs the KPI job.
enum Kpi {
    /// One invocation with this payload.
    Invoke(serde_json::Value),
    /// One execution of the KPI state machine with this input.
    StateMachine(serde_json::Value),
}

async fn run_pipeline<I: Invoker + 'static>(
    stack: &LocalStack,
    r: &tripflow_local::Resources,
    invoker: I,
    kpi: &Kpi,
) -> anyhow::Result<String> {
    let invoker = Arc::new(invoker);
    let mut pipeline = Pipeline::new(stack, r, invoker.clone()).await;
    pipeline.drain().await?;
    match kpi {
        Kpi::Invoke(payload) => {
            pipeline.invoke(Function::Kpi, payload.clone()).await?;
        }
        Kpi::StateMachine(input) => {
            let machine = step_functions::KpiStateMachine::deploy(stack, invoker).await?;
            let execution = machine.execute(input, Duration::from_secs(3600)).await?;
            if execution.status != "SUCCEEDED" {
                anyhow::bail!(
                    "the KPI state machine's execution ended {}: {}: {}",
                    execution.status,
                    execution.error.unwrap_or_default(),
                    execution.cause.unwrap_or_default()
                );
            }
            let output = execution.output.unwrap_or_default();
            let served = &machine.lambda.faults;
            eprintln!(
                "KPI state machine: {} chunks, {} days published, in {:.1} s ({} chunk invocations, {:.1} s in the function, at most {} at once)",
                output["chunks"],
                output["days"],
                execution.elapsed.as_secs_f64(),
                served.served("chunk"),
                served
                    .chunk_busy_us
                    .load(std::sync::atomic::Ordering::Relaxed) as f64
                    / 1e6,
                served
                    .peak_chunks_in_flight
                    .load(std::sync::atomic::Ordering::Relaxed)
            );
        }
    }
    let sdk = stack.sdk_config().await;
    let body = tripflow_local::get_object(
        &stack.s3_client(&sdk),
        &r.bucket,
        "kpi_results/daily_trip_kpis.csv",
    )
    .await?;
    Ok(String::from_utf8(body)?)
}

fn parse_faults(s: &str) -> Result<FaultSpec, String> {
    s.parse()
}
