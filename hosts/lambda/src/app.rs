//! What a function keeps between invocations ([`App`]): its settings, the core, the AWS
//! clients and the capacity it consumed; and how a cold start loads the component.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use tripflow_runtime::{ComponentSource, CoreError, Limits, Runtime};

use crate::config::Config;
use crate::metrics::{self, Capacity};
use crate::retry;

/// Everything a function keeps between invocations.
pub struct App {
    /// Settings, checked at cold start.
    pub config: Config,
    /// The core component (shared when several functions run in one process, as locally).
    pub core: Arc<Runtime>,
    /// DynamoDB.
    pub ddb: aws_sdk_dynamodb::Client,
    /// S3 (kpi).
    pub s3: aws_sdk_s3::Client,
    /// SQS (ingest's dead-letter queue).
    pub sqs: aws_sdk_sqs::Client,
    /// DynamoDB capacity consumed by this process (shared with the tasks that write for it).
    pub capacity: Arc<Capacity>,
    /// Whether metrics go to stdout as EMF lines (Lambda's log pipeline); off when several
    /// functions share a process and its stdout, as locally.
    pub emit_metrics: bool,
    /// The loaded component's record limit, asked once (`events.limits`).
    record_limit: std::sync::OnceLock<u32>,
}

/// How the component was found and loaded, for the cold-start log line.
#[derive(Clone, Debug)]
pub struct ComponentReport {
    /// The file loaded, or `embedded`.
    pub loaded: String,
    /// Whether it was precompiled (`.cwasm`).
    pub precompiled: bool,
    /// sha256 of the component's `.wasm` bytes (the identity the conformance runner and the
    /// CLI print), when known.
    pub wasm_sha256: Option<String>,
    /// Time to read, deserialize or compile, and link it.
    pub load_ms: f64,
}

/// The guest's limits inside a function of `memory_mb` MiB: at most half of the function's
/// memory (and at most the runtime's default of 1 GiB), so a runaway guest is stopped by its
/// own cap with an error the handler reports, not by Lambda killing the process. Each call's
/// deadline is the invocation's remaining time (see [`tripflow_runtime::Runtime::bounded`]).
pub fn guest_limits(memory_mb: Option<usize>) -> Limits {
    let default = Limits::default();
    Limits {
        memory_bytes: memory_mb.map_or(default.memory_bytes, |mb| {
            (mb << 20).div_ceil(2).min(default.memory_bytes)
        }),
        ..default
    }
}

/// Loads the component: `COMPONENT_PATH`, else `tripflow.cwasm` then `tripflow.wasm` next to
/// the executable (in Lambda: `$LAMBDA_TASK_ROOT`), else the one built into this binary. A
/// `.cwasm` that this wasmtime cannot load (built by another version) falls back to the
/// `.wasm` with a warning instead of failing the cold start.
pub fn load_component(config: &Config) -> Result<(Runtime, ComponentReport), CoreError> {
    let started = Instant::now();
    let limits = guest_limits(
        std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
            .ok()
            .and_then(|m| m.trim().parse().ok()),
    );
    let dir = std::env::var_os("LAMBDA_TASK_ROOT")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
        });
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = &config.component_path {
        candidates.push(PathBuf::from(p));
    } else if let Some(dir) = &dir {
        candidates.push(dir.join("tripflow.cwasm"));
        candidates.push(dir.join("tripflow.wasm"));
    }
    let explicit = config.component_path.is_some();
    let mut last_err = None;
    for path in candidates.iter().filter(|p| explicit || p.exists()) {
        match Runtime::load(&ComponentSource::File(path.clone()), limits.clone(), None) {
            Ok(rt) => {
                let precompiled = rt.info().precompiled;
                let wasm_sha256 = if precompiled {
                    std::fs::read(path.with_extension("wasm"))
                        .ok()
                        .map(|b| tripflow_runtime::sha256_hex(&b))
                } else {
                    Some(rt.info().sha256.clone())
                };
                let report = ComponentReport {
                    loaded: path.display().to_string(),
                    precompiled,
                    wasm_sha256,
                    load_ms: started.elapsed().as_secs_f64() * 1e3,
                };
                return Ok((rt, report));
            }
            Err(e) if !explicit => {
                tracing::warn!(path = %path.display(), error = %e, "component not usable, trying the next one");
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = last_err
        && candidates.iter().all(|p| p.exists())
    {
        return Err(e);
    }
    let rt = Runtime::load(&ComponentSource::Embedded, limits, None)?;
    let report = ComponentReport {
        loaded: "embedded".into(),
        precompiled: false,
        wasm_sha256: Some(rt.info().sha256.clone()),
        load_ms: started.elapsed().as_secs_f64() * 1e3,
    };
    Ok((rt, report))
}

/// The SDK configuration: the standard chain (region, credentials, `AWS_ENDPOINT_URL*`), with
/// the SDK's own retries off — [`retry`] owns retrying, within the invocation's deadline — and
/// [`timeouts`], so no call can hang past the function's deadline.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts())
        .load()
        .await
}

/// Time limits of every SDK call: 2 s to connect, 10 s per attempt. An attempt that times out
/// is a transient error, retried by [`retry`] while the invocation's budget allows; the budget
/// keeps a reserve of at least a tenth of the function's timeout, which is longer than one
/// attempt for the template's timeouts (60 s and 300 s).
pub fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .operation_attempt_timeout(std::time::Duration::from_secs(10))
        .build()
}

impl App {
    /// The core with each call limited to the time the invocation has left: a runaway call is
    /// stopped with an error the handler reports, before Lambda kills the process.
    pub fn core_within(&self, budget: &retry::Budget) -> tripflow_runtime::Bounded<'_> {
        self.core.bounded(budget.remaining())
    }

    /// The TTL (`expires_at`, epoch seconds) of an item written now: `RETENTION_DAYS` from now,
    /// or `None` when items are kept.
    pub fn expires_at(&self) -> Option<i64> {
        self.config.retention_days.map(|d| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            now + i64::from(d) * 86_400
        })
    }

    /// The component's `max-record-bytes`, asked of it once per process.
    pub fn record_limit(&self) -> Result<u32, CoreError> {
        if let Some(n) = self.record_limit.get() {
            return Ok(*n);
        }
        let n = tripflow_runtime::TripCore::max_record_bytes(
            &mut tripflow_runtime::CoreProvider::session(&*self.core)?,
        )?;
        Ok(*self.record_limit.get_or_init(|| n))
    }

    /// Builds the clients once from `sdk`.
    pub fn new(config: Config, core: Arc<Runtime>, sdk: &SdkConfig) -> App {
        let s3 = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(std::env::var_os("AWS_S3_FORCE_PATH_STYLE").is_some())
            .build();
        App::with_clients(
            config,
            core,
            aws_sdk_dynamodb::Client::new(sdk),
            aws_sdk_s3::Client::from_conf(s3),
            aws_sdk_sqs::Client::new(sdk),
        )
    }

    /// Uses the given clients (e.g. pointed at local engines).
    pub fn with_clients(
        config: Config,
        core: Arc<Runtime>,
        ddb: aws_sdk_dynamodb::Client,
        s3: aws_sdk_s3::Client,
        sqs: aws_sdk_sqs::Client,
    ) -> App {
        App {
            config,
            core,
            ddb,
            s3,
            sqs,
            capacity: Arc::default(),
            emit_metrics: true,
            record_limit: std::sync::OnceLock::new(),
        }
    }

    /// Publishes an invocation's counters (EMF on stdout), unless turned off.
    pub fn emit(&self, counters: &metrics::Counters) {
        if self.emit_metrics {
            counters.emit(self.config.function.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_gets_half_the_function_memory_at_most_1_gib() {
        assert_eq!(guest_limits(Some(1024)).memory_bytes, 512 << 20);
        assert_eq!(guest_limits(Some(128)).memory_bytes, 64 << 20);
        assert_eq!(guest_limits(Some(10_240)).memory_bytes, 1 << 30);
        assert_eq!(
            guest_limits(None).memory_bytes,
            Limits::default().memory_bytes
        );
    }
}
