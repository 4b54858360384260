//! tripflow's embedded store and the jobs that run the core over it.
//!
//! The store is a state directory: append-only logs of events and closed trips, an index of
//! them the replay keeps in memory, and a SQLite database for the rest ([`StateDir`] lists the
//! files). The jobs — [`replay`], [`kpi`], [`sweep`], [`report`] — are the offline twin of the AWS pipeline: they read input, ask a
//! [`CoreProvider`](tripflow_runtime::CoreProvider) (the component, or the native library)
//! what to do, and perform only the I/O. The CLI and the conformance runner both use them, so
//! a conformance pass is a statement about the CLI too.

pub mod audit;
mod closed;
pub mod compare;
mod db;
mod error;
pub mod export;
mod index;
mod input;
mod kpi;
mod log;
mod meta;
pub mod partition;
mod quarantine;
mod replay;
mod report;
mod schema;
mod sweep;

pub use db::{StateDir, StoreTotals};
pub use error::Error;
pub use input::{Input, InputSource, gunzip_if_compressed};
pub use kpi::{KpiOptions, KpiReport, kpi};
pub use quarantine::QuarantineRecord;
pub use replay::{Progress, ReplayOptions, Summary, replay};
pub use report::{ReportOptions, report};
pub use sweep::{Orphan, SweepReport, sweep};
pub use tripflow_runtime::core::duration::parse_duration;
