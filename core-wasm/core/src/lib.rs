//! All of tripflow's trip logic, as a plain Rust library.
//!
//! This crate is the behaviour behind the WIT contract `tripflow:core@0.7.0`
//! (`wit/tripflow.wit`): `core-wasm/component` exports it as a WASI component, and the hosts
//! run that component. It is also linked natively by tests and benchmarks, which compare the
//! two builds on the same inputs.
//!
//! Nothing here reads a clock, a file or the environment: every answer depends on the
//! arguments alone.

pub mod batch;
pub mod duration;
pub mod event;
mod flat;
pub mod kpi;
pub mod matching;
pub mod money;
pub mod report;
pub mod time;
pub mod types;

#[cfg(feature = "tools")]
pub mod convert;
#[cfg(feature = "tools")]
pub mod generate;

pub use event::{parse_batch, parse_record, render_records};
pub use kpi::{
    Zone, accumulate, day_of, finish, local_days, merge, render_csv, utc_day, utc_days_touched,
};
pub use matching::{pair, pair_all, resolve, sweep};
pub use types::*;

/// The version of the WIT package this library implements.
pub const WIT_PACKAGE: &str = "tripflow:core@0.7.0";

/// Checks a time zone name.
pub fn check_time_zone(zone: &str) -> Result<(), KpiError> {
    Zone::new(zone).map(|_| ())
}
