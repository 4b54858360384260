//! CloudWatch metrics as Embedded Metric Format lines on stdout.
//!
//! Lambda ships stdout to CloudWatch Logs, which turns each EMF line into metrics; no API
//! call, no extra latency. One line per invocation per dimension set.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The namespace of every tripflow metric.
pub const NAMESPACE: &str = "tripflow";

/// Counters of one invocation.
#[derive(Debug, Default)]
pub struct Counters {
    values: BTreeMap<&'static str, f64>,
    by_reason: BTreeMap<String, f64>,
}

impl Counters {
    /// Adds `n` to `name`.
    pub fn add(&mut self, name: &'static str, n: f64) {
        *self.values.entry(name).or_default() += n;
    }

    /// Counts one rejected record with its reason code.
    pub fn rejected(&mut self, reason: &str) {
        self.add("Rejected", 1.0);
        *self.by_reason.entry(reason.to_owned()).or_default() += 1.0;
    }

    /// The value of `name` (0 when never added).
    pub fn get(&self, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(0.0)
    }

    /// Rejections by reason code.
    pub fn by_reason(&self) -> &BTreeMap<String, f64> {
        &self.by_reason
    }

    /// The EMF lines for these counters, `function` as the dimension.
    pub fn emf_lines(&self, function: &str, timestamp_ms: u64) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.values.is_empty() {
            lines.push(emf(
                function,
                timestamp_ms,
                None,
                self.values.iter().map(|(k, v)| (k.to_string(), *v)),
            ));
        }
        for (reason, n) in &self.by_reason {
            lines.push(emf(
                function,
                timestamp_ms,
                Some(reason),
                [("RejectedByReason".to_owned(), *n)].into_iter(),
            ));
        }
        lines
    }

    /// Prints the EMF lines to stdout.
    pub fn emit(&self, function: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for line in self.emf_lines(function, now) {
            println!("{line}");
        }
    }
}

fn emf(
    function: &str,
    timestamp_ms: u64,
    reason: Option<&str>,
    metrics: impl Iterator<Item = (String, f64)>,
) -> String {
    let metrics: Vec<(String, f64)> = metrics.collect();
    let unit = |name: &str| {
        if name.starts_with("Consumed") {
            "None"
        } else {
            "Count"
        }
    };
    let mut dims = vec!["Function"];
    if reason.is_some() {
        dims.push("Reason");
    }
    let mut root = serde_json::json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dims],
                "Metrics": metrics.iter().map(|(n, _)| serde_json::json!({"Name": n, "Unit": unit(n)})).collect::<Vec<_>>(),
            }],
        },
        "Function": function,
    });
    if let Some(r) = reason {
        root["Reason"] = r.into();
    }
    for (n, v) in metrics {
        root[n] = v.into();
    }
    root.to_string()
}

/// The units a response's `ConsumedCapacity` reports (none when it reports nothing).
pub fn units(c: Option<&aws_sdk_dynamodb::types::ConsumedCapacity>) -> Option<f64> {
    c.and_then(|c| c.capacity_units())
}

/// DynamoDB capacity consumed, as reported by `ReturnConsumedCapacity`, summed over a
/// process's lifetime (used by the capacity benchmark and reported in the metrics).
///
/// A conditional write whose condition fails returns no `ConsumedCapacity`, but AWS bills it
/// as a write of the item's size; such writes are counted here as one write unit each
/// (every tripflow item is far below 1 KB).
#[derive(Debug, Default)]
pub struct Capacity {
    write_milli: AtomicU64,
    read_milli: AtomicU64,
    failed_conditions: AtomicU64,
    by_op: Mutex<BTreeMap<&'static str, f64>>,
}

impl Capacity {
    /// Records `units` write units consumed by `op`.
    pub fn write(&self, op: &'static str, units: Option<f64>) {
        let u = units.unwrap_or(0.0);
        self.write_milli
            .fetch_add((u * 1000.0).round() as u64, Ordering::Relaxed);
        self.note(op, u);
    }

    /// Records `units` read units consumed by `op`.
    pub fn read(&self, op: &'static str, units: Option<f64>) {
        let u = units.unwrap_or(0.0);
        self.read_milli
            .fetch_add((u * 1000.0).round() as u64, Ordering::Relaxed);
        self.note(op, u);
    }

    /// Records a conditional write that failed its condition (billed as one write unit).
    pub fn failed_condition(&self, op: &'static str) {
        self.failed_conditions.fetch_add(1, Ordering::Relaxed);
        self.write(op, Some(1.0));
    }

    /// Write units so far.
    pub fn write_units(&self) -> f64 {
        self.write_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Read units so far.
    pub fn read_units(&self) -> f64 {
        self.read_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Conditional writes that failed their condition so far.
    pub fn failed_conditions(&self) -> u64 {
        self.failed_conditions.load(Ordering::Relaxed)
    }

    /// Units by operation name.
    pub fn by_operation(&self) -> BTreeMap<&'static str, f64> {
        self.by_op.lock().expect("capacity by operation").clone()
    }

    fn note(&self, op: &'static str, units: f64) {
        *self
            .by_op
            .lock()
            .expect("capacity by operation")
            .entry(op)
            .or_default() += units;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_line_declares_every_metric_it_carries() {
        let mut c = Counters::default();
        c.add("EventsIn", 3.0);
        c.add("Stored", 2.0);
        c.rejected("bad_fare");
        let lines = c.emf_lines("ingest", 1_700_000_000_000);
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["EventsIn"], 3.0);
        assert_eq!(v["Rejected"], 1.0);
        assert_eq!(v["Function"], "ingest");
        let declared: Vec<_> = v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(declared, ["EventsIn", "Rejected", "Stored"]);
        let r: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(r["Reason"], "bad_fare");
        assert_eq!(
            r["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][1],
            "Reason"
        );
    }

    #[test]
    fn capacity_counts_failed_conditions_as_writes() {
        let c = Capacity::default();
        c.write("put", Some(1.0));
        c.read("get", Some(0.5));
        c.failed_condition("put");
        assert_eq!(c.write_units(), 2.0);
        assert_eq!(c.read_units(), 0.5);
        assert_eq!(c.failed_conditions(), 1);
        assert_eq!(c.by_operation()["put"], 2.0);
    }
}
