//! The tripflow Lambda functions: thin I/O hosts around the core component.
//!
//! One bootstrap binary serves all four functions; the function's `Handler` setting (which
//! Lambda passes as `_HANDLER`) picks one of [`Function`]. At cold start the process reads and
//! checks its [`Config`], loads the component once (precompiled `tripflow.cwasm`, else
//! `tripflow.wasm`, else the component built into the binary) and creates the SDK clients
//! once. Every decision — what an event is, whether it is a duplicate, how two halves make a
//! trip, which trips are orphans, what a day's KPIs are and their CSV bytes — is the core's;
//! the handlers in [`ingest`], [`matcher`], [`kpi`] and [`sweeper`] only move data.
//!
//! This file is the dispatcher: the cold start, then each invocation to its function's
//! handler. What the handlers share is [`App`] ([`app`]); what they fail with is [`Error`];
//! every call to the table goes through [`table`].

pub mod app;
pub mod config;
pub mod dirty;
mod error;
pub mod ingest;
pub mod kpi;
pub mod manifest;
pub mod matcher;
pub mod metrics;
pub mod retry;
pub mod sweeper;
pub mod table;

use std::sync::Arc;
use std::time::Instant;

pub use app::{App, ComponentReport, guest_limits, load_component, sdk_config, timeouts};
pub use config::{Config, ConfigError, Function};
pub use error::Error;
pub use metrics::Capacity;
use tripflow_runtime::Runtime;

impl App {
    /// Runs this process's function on one invocation's payload. `deadline_ms` is the Lambda
    /// deadline (ms since the Unix epoch).
    pub async fn invoke(
        &self,
        payload: serde_json::Value,
        deadline_ms: u64,
    ) -> Result<serde_json::Value, Error> {
        let budget = retry::Budget::from_epoch_ms(deadline_ms);
        let out = match self.config.function {
            Function::Ingest => serde_json::to_value(
                ingest::handle(self, serde_json::from_value(payload)?, &budget).await?,
            )?,
            Function::Matcher => serde_json::to_value(
                matcher::handle(self, serde_json::from_value(payload)?, &budget).await?,
            )?,
            Function::Kpi => kpi::handle(self, payload, &budget).await?,
            Function::Sweeper => sweeper::handle(self, &budget).await?,
        };
        Ok(out)
    }
}

type ColdStart = (Config, Runtime, ComponentReport);

fn cold_start() -> Result<ColdStart, (&'static str, Error)> {
    let config = Config::from_env().map_err(|e| ("Runtime.ConfigError", e.into()))?;
    let (core, report) =
        load_component(&config).map_err(|e| ("Runtime.ComponentError", e.into()))?;
    if config.function == Function::Kpi {
        use tripflow_runtime::{CoreProvider, TripCore};
        core.session()
            .and_then(|mut s| s.check_time_zone(&config.timezone))
            .map_err(|e| {
                let e = ConfigError {
                    var: "TIMEZONE",
                    message: e.to_string(),
                };
                ("Runtime.ConfigError", Error::from(e))
            })?;
    }
    Ok((config, core, report))
}

/// Posts a cold-start failure to `POST /2018-06-01/runtime/init/error` (best effort).
fn report_init_error(kind: &str, message: &str) {
    use std::io::Write;
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        return;
    };
    let body = serde_json::json!({"errorType": kind, "errorMessage": message}).to_string();
    let request = format!(
        "POST /2018-06-01/runtime/init/error HTTP/1.1\r\nHost: {api}\r\nLambda-Runtime-Function-Error-Type: {kind}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Ok(mut s) = std::net::TcpStream::connect(&api) {
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        let _ = s.write_all(request.as_bytes());
        let _ = std::io::Read::read(&mut s, &mut [0u8; 256]);
    }
}

/// Installs JSON logging: one object per line, with the invocation's request id (from the
/// runtime's span) on every line. `RUST_LOG` / `AWS_LAMBDA_LOG_LEVEL` set the level.
pub fn init_tracing() {
    let level = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL"))
        .unwrap_or_else(|_| "info".into())
        .to_lowercase();
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(false)
        .without_time()
        .with_writer(std::io::stderr)
        .try_init();
}

/// The bootstrap's `main`: configuration, component, clients, then the runtime loop. A
/// cold-start failure is logged and reported to the Runtime API's init-error endpoint, so
/// Lambda shows the message (which names the bad setting) as the function's init error.
pub async fn run() -> Result<(), Error> {
    let started = Instant::now();
    init_tracing();
    let (config, core, report) = match cold_start() {
        Ok(parts) => parts,
        Err((kind, e)) => {
            tracing::error!(error = %e, "cold start failed");
            report_init_error(kind, &e.to_string());
            return Err(e);
        }
    };
    let sdk = sdk_config().await;
    let app = Arc::new(App::new(config, Arc::new(core), &sdk));
    tracing::info!(
        function = app.config.function.name(),
        component = %report.loaded,
        precompiled = report.precompiled,
        component_sha256 = report.wasm_sha256.as_deref().unwrap_or("unknown"),
        component_load_ms = report.load_ms,
        init_ms = started.elapsed().as_secs_f64() * 1e3,
        "cold start"
    );
    lambda_runtime::run(lambda_runtime::service_fn(
        move |ev: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let app = app.clone();
            async move {
                app.invoke(ev.payload, ev.context.deadline)
                    .await
                    .map_err(lambda_runtime::Diagnostic::from)
            }
        },
    ))
    .await
    .map_err(Error::Runtime)
}
