//! CPU per record of the real functions: the bootstrap binary runs the ingest and the matcher
//! as two processes behind the local Runtime API, the events go through Kinesis and the
//! table's stream on the local engines, and each process's CPU time (user + system, all
//! threads, from `/proc/<pid>/stat`) over the run is divided by the records its mapping
//! delivered. Start-up is excluded: both processes answer one empty batch before the clock
//! starts.
//!
//! The seed's Python handlers can be run in the same session on the same DynamoDB Local and the
//! same events (`scripts/peers/seed_pipeline.py`), so the two figures are comparable.

use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};
use tripflow_lambda::Function;

use crate::esm::Invoker as _;
use crate::runtime_api::BootstrapInvoker;
use crate::{LocalStack, Pipeline, resources};

/// What one run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuReport {
    /// Events sent.
    pub events: usize,
    /// Records the ingest mapping delivered.
    pub ingest_records: u64,
    /// The ingest process's CPU seconds over the run.
    pub ingest_cpu_s: f64,
    /// Records the matcher mapping delivered (after its filter).
    pub matcher_records: u64,
    /// The matcher process's CPU seconds over the run.
    pub matcher_cpu_s: f64,
    /// Wall-clock seconds from the first record sent to the pipeline going quiet.
    pub wall_s: f64,
}

impl CpuReport {
    /// Ingest CPU µs per record.
    pub fn ingest_us(&self) -> f64 {
        self.ingest_cpu_s * 1e6 / self.ingest_records.max(1) as f64
    }

    /// Matcher CPU µs per record.
    pub fn matcher_us(&self) -> f64 {
        self.matcher_cpu_s * 1e6 / self.matcher_records.max(1) as f64
    }
}

/// CPU seconds (user + system, every thread, dead ones included) of process `pid`.
pub fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (Linux only)"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/pid/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the command name, in clock
    // ticks of USER_HZ, which Linux fixes at 100 on x86_64 and arm64.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// Runs `records` through the ingest and matcher bootstrap processes on `stack`.
pub async fn measure(
    stack: &LocalStack,
    bootstrap: &Path,
    records: &[Vec<u8>],
) -> anyhow::Result<CpuReport> {
    let sdk = stack.sdk_config().await;
    let r = resources::create_named(&sdk, stack, 1, "cpu").await?;
    let mut env = crate::function_env(&r, "UTC", "24h");
    env.extend(stack.function_env());
    let inv =
        BootstrapInvoker::start(bootstrap, &[Function::Ingest, Function::Matcher], &env).await?;
    // Cold starts happen here, outside the measurement.
    for f in [Function::Ingest, Function::Matcher] {
        inv.invoke(f, json!({"Records": []}))
            .await
            .map_err(|e| anyhow::anyhow!("warming up {}: {e}", f.name()))?;
    }
    let pids = (
        inv.pid(Function::Ingest)
            .await
            .context("no ingest process")?,
        inv.pid(Function::Matcher)
            .await
            .context("no matcher process")?,
    );
    let before = (process_cpu_seconds(pids.0)?, process_cpu_seconds(pids.1)?);
    let mut pipeline = Pipeline::new(stack, &r, inv).await;
    let started = std::time::Instant::now();
    crate::send(&stack.kinesis_client(&sdk), &r.stream, records).await?;
    pipeline.drain().await?;
    let wall_s = started.elapsed().as_secs_f64();
    let after = (process_cpu_seconds(pids.0)?, process_cpu_seconds(pids.1)?);
    let report = CpuReport {
        events: records.len(),
        ingest_records: pipeline.ingest.stats.delivered,
        ingest_cpu_s: after.0 - before.0,
        matcher_records: pipeline.matcher.stats.delivered,
        matcher_cpu_s: after.1 - before.1,
        wall_s,
    };
    pipeline.invoker.stop().await;
    Ok(report)
}

/// Runs the seed's handlers (`seed_pipeline.py ENDPOINT FILE`) with `python` on the stack's
/// DynamoDB Local; their JSON report.
pub fn seed(
    stack: &LocalStack,
    python: &Path,
    script: &Path,
    file: &Path,
) -> anyhow::Result<Value> {
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&stack.dynamodb)
        .arg(file)
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the seed's handlers failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("the seed printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("the seed printed {line:?}"))
}
