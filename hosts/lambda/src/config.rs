//! Configuration from environment variables, checked once at cold start.
//!
//! A missing or malformed setting fails the cold start with a message that names the variable
//! and says what to set, so a bad deployment shows up in the first invocation's init error
//! instead of as wrong results.

use std::collections::HashMap;

/// Which of the four functions this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    /// Kinesis → table.
    Ingest,
    /// Table stream (INSERTs of events) → completed trips.
    Matcher,
    /// Schedule → KPI CSVs in S3.
    Kpi,
    /// Schedule → orphaned trips.
    Sweeper,
}

impl Function {
    /// Every function, in pipeline order.
    pub const ALL: [Function; 4] = [
        Function::Ingest,
        Function::Matcher,
        Function::Kpi,
        Function::Sweeper,
    ];

    /// The name used as the Lambda handler string, in logs and as the EMF dimension.
    pub fn name(self) -> &'static str {
        match self {
            Function::Ingest => "ingest",
            Function::Matcher => "matcher",
            Function::Kpi => "kpi",
            Function::Sweeper => "sweeper",
        }
    }

    /// The function named `name`.
    pub fn from_name(name: &str) -> Option<Function> {
        Function::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A setting that is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {var}: {message}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// What is wrong and what to set.
    pub message: String,
}

/// Everything a function reads from its environment.
#[derive(Clone, Debug)]
pub struct Config {
    /// The function to run (`_HANDLER`, which Lambda sets from the function's `Handler`).
    pub function: Function,
    /// The DynamoDB table (`TABLE_NAME`), all functions.
    pub table: String,
    /// SQS queue URL for rejected records (`DLQ_URL`), ingest.
    pub dlq_url: Option<String>,
    /// KPI bucket (`BUCKET`), kpi.
    pub bucket: Option<String>,
    /// Key of the combined CSV (`KPI_KEY`, default `kpi_results/daily_trip_kpis.csv`).
    pub kpi_key: String,
    /// Prefix of the per-day objects (`KPI_DAILY_PREFIX`, default `kpi_daily/`).
    pub kpi_daily_prefix: String,
    /// IANA zone of the KPI days (`TIMEZONE`, default `UTC`), kpi.
    pub timezone: String,
    /// How long a trip may stay open before the sweeper orphans it (`ORPHAN_AFTER`, default
    /// `24h`), sweeper.
    pub orphan_after_ns: i64,
    /// Days after which raw events and trip records expire through the table's TTL
    /// (`RETENTION_DAYS`; unset = kept forever).
    pub retention_days: Option<u32>,
    /// How far an event's clock may run ahead of its Kinesis arrival time before it stops
    /// moving the sweeper's event-time clock (`MAX_CLOCK_SKEW`, default `1h`), ingest.
    pub max_clock_skew_ns: i64,
    /// Largest DLQ message body (`DLQ_MAX_MESSAGE_BYTES`, default 262144, the queue's
    /// `MaximumMessageSize`); a rejected record whose message would be larger has its bytes
    /// spilled to S3 under [`Config::rejected_prefix`], ingest.
    pub dlq_max_message_bytes: usize,
    /// Prefix in `BUCKET` for spilled rejected records (`REJECTED_PREFIX`, default
    /// `rejected/`), ingest.
    pub rejected_prefix: String,
    /// Where the component is (`COMPONENT_PATH`; default: `tripflow.cwasm`, then
    /// `tripflow.wasm` next to the bootstrap, then the component built into the binary).
    pub component_path: Option<String>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_map(&std::env::vars().collect())
    }

    /// Reads settings from `env` (the process environment in production, a map in tests).
    pub fn from_map(env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let get = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let handler = get("_HANDLER")
            .or_else(|| get("TRIPFLOW_FUNCTION"))
            .ok_or_else(|| ConfigError {
                var: "_HANDLER",
                message: "not set: set the function's Handler (or TRIPFLOW_FUNCTION) to one of ingest, matcher, kpi, sweeper".into(),
            })?;
        let function = Function::from_name(&handler).ok_or_else(|| ConfigError {
            var: "_HANDLER",
            message: format!("unknown function {handler:?}: use ingest, matcher, kpi or sweeper"),
        })?;
        let required = |var: &'static str, what: &str| {
            get(var).ok_or_else(|| ConfigError {
                var,
                message: format!("not set: the {} function needs {what}", function.name()),
            })
        };
        let table = required("TABLE_NAME", "the DynamoDB table name")?;
        let dlq_url = match function {
            Function::Ingest => Some(required(
                "DLQ_URL",
                "the SQS queue URL that receives rejected records",
            )?),
            _ => get("DLQ_URL"),
        };
        let bucket = match function {
            Function::Kpi => Some(required("BUCKET", "the S3 bucket for the KPI CSVs")?),
            Function::Ingest => Some(required(
                "BUCKET",
                "the S3 bucket that keeps rejected records too large for an SQS message",
            )?),
            _ => get("BUCKET"),
        };
        let kpi_key = get("KPI_KEY").unwrap_or_else(|| "kpi_results/daily_trip_kpis.csv".into());
        if kpi_key.ends_with('/') {
            return Err(ConfigError {
                var: "KPI_KEY",
                message: format!(
                    "{kpi_key:?} is a prefix: give the object key of the combined CSV"
                ),
            });
        }
        let mut kpi_daily_prefix = get("KPI_DAILY_PREFIX").unwrap_or_else(|| "kpi_daily/".into());
        if !kpi_daily_prefix.ends_with('/') {
            kpi_daily_prefix.push('/');
        }
        let timezone = get("TIMEZONE").unwrap_or_else(|| "UTC".into());
        let orphan_after = get("ORPHAN_AFTER").unwrap_or_else(|| "24h".into());
        let orphan_after_ns = tripflow_runtime::core::duration::parse_duration(&orphan_after)
            .map_err(|message| ConfigError {
                var: "ORPHAN_AFTER",
                message,
            })?;
        let retention_days = get("RETENTION_DAYS")
            .map(|v| {
                v.parse::<u32>()
                    .ok()
                    .filter(|d| *d > 0)
                    .ok_or_else(|| ConfigError {
                        var: "RETENTION_DAYS",
                        message: format!(
                            "{v:?} is not a whole number of days above 0: unset it to keep items forever"
                        ),
                    })
            })
            .transpose()?;
        let max_clock_skew_ns = tripflow_runtime::core::duration::parse_duration(
            &get("MAX_CLOCK_SKEW").unwrap_or_else(|| "1h".into()),
        )
        .map_err(|message| ConfigError {
            var: "MAX_CLOCK_SKEW",
            message,
        })?;
        let dlq_max_message_bytes = match get("DLQ_MAX_MESSAGE_BYTES") {
            None => 262_144,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1024..=1_048_576).contains(n))
                .ok_or_else(|| ConfigError {
                    var: "DLQ_MAX_MESSAGE_BYTES",
                    message: format!(
                        "{v:?} is not a byte count from 1024 to 1048576: set the queue's MaximumMessageSize"
                    ),
                })?,
        };
        let mut rejected_prefix = get("REJECTED_PREFIX").unwrap_or_else(|| "rejected/".into());
        if !rejected_prefix.ends_with('/') {
            rejected_prefix.push('/');
        }
        Ok(Config {
            function,
            max_clock_skew_ns,
            dlq_max_message_bytes,
            rejected_prefix,
            table,
            dlq_url,
            bucket,
            kpi_key,
            kpi_daily_prefix,
            timezone,
            orphan_after_ns,
            retention_days,
            component_path: get("COMPONENT_PATH"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_the_missing_variable() {
        let e = Config::from_map(&env(&[("_HANDLER", "ingest"), ("TABLE_NAME", "t")])).unwrap_err();
        assert_eq!(e.var, "DLQ_URL");
        assert!(e.to_string().contains("ingest function needs"), "{e}");
        let e = Config::from_map(&env(&[
            ("_HANDLER", "ingest"),
            ("TABLE_NAME", "t"),
            ("DLQ_URL", "q"),
        ]))
        .unwrap_err();
        assert_eq!(e.var, "BUCKET");
        let e = Config::from_map(&env(&[("_HANDLER", "kpi"), ("TABLE_NAME", "t")])).unwrap_err();
        assert_eq!(e.var, "BUCKET");
        let e = Config::from_map(&env(&[("_HANDLER", "resize")])).unwrap_err();
        assert!(e.to_string().contains("unknown function \"resize\""), "{e}");
        let e = Config::from_map(&env(&[])).unwrap_err();
        assert_eq!(e.var, "_HANDLER");
    }

    #[test]
    fn rejects_bad_values_and_applies_defaults() {
        let base = [("_HANDLER", "sweeper"), ("TABLE_NAME", "t")];
        let e = Config::from_map(&env(&[base[0], base[1], ("ORPHAN_AFTER", "soon")])).unwrap_err();
        assert_eq!(e.var, "ORPHAN_AFTER");
        let e = Config::from_map(&env(&[base[0], base[1], ("RETENTION_DAYS", "-3")])).unwrap_err();
        assert_eq!(e.var, "RETENTION_DAYS");
        let e = Config::from_map(&env(&[base[0], base[1], ("KPI_KEY", "out/")])).unwrap_err();
        assert_eq!(e.var, "KPI_KEY");
        let e = Config::from_map(&env(&[base[0], base[1], ("MAX_CLOCK_SKEW", "-1h")])).unwrap_err();
        assert_eq!(e.var, "MAX_CLOCK_SKEW");
        let e = Config::from_map(&env(&[base[0], base[1], ("DLQ_MAX_MESSAGE_BYTES", "2MiB")]))
            .unwrap_err();
        assert_eq!(e.var, "DLQ_MAX_MESSAGE_BYTES");
        let c = Config::from_map(&env(&base)).unwrap();
        assert_eq!(c.function, Function::Sweeper);
        assert_eq!(c.orphan_after_ns, 24 * 3_600_000_000_000);
        assert_eq!(c.kpi_key, "kpi_results/daily_trip_kpis.csv");
        assert_eq!(c.kpi_daily_prefix, "kpi_daily/");
        assert_eq!(c.timezone, "UTC");
        assert_eq!(c.retention_days, None);
        assert_eq!(c.max_clock_skew_ns, 3_600_000_000_000);
        assert_eq!(c.dlq_max_message_bytes, 262_144);
        assert_eq!(c.rejected_prefix, "rejected/");
    }
}
