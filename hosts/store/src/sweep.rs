//! `sweep`: mark open trips that waited too long for their other half as orphans.
//!
//! Age is measured back from the newest event time in the store, not the wall clock, so a
//! replay of last year's data sweeps the way the live pipeline did.

use serde::Serialize;
use tripflow_runtime::{CoreProvider, TripCore};

use crate::db::StateDir;
use crate::error::Error;
use crate::index::{Fp, OpenHalf};

/// Open trips handed to the core per call.
const CHUNK: usize = 65_536;

/// An open trip newly marked as orphaned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Orphan {
    /// The trip.
    pub trip_id: String,
    /// The half that arrived (`trip_start` or `trip_end`).
    pub has: &'static str,
    /// That half's timestamp, ns.
    pub timestamp_ns: i64,
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// The newest event time the age was measured from (none: empty store).
    pub newest_ns: Option<i64>,
    /// Trips marked as orphans by this sweep, by trip id.
    pub orphans: Vec<Orphan>,
    /// Open trips left unmarked.
    pub still_open: u64,
    /// Orphans in the store after the sweep (earlier sweeps included).
    pub orphaned_total: u64,
}

/// Marks open trips older than `older_than_ns` as orphans.
pub fn sweep<P: CoreProvider>(
    provider: &P,
    state: &mut StateDir,
    older_than_ns: i64,
) -> Result<SweepReport, Error> {
    state.lock_for_writing()?;
    let mut report = SweepReport {
        newest_ns: state.newest_ns()?,
        ..SweepReport::default()
    };
    let Some(newest) = report.newest_ns else {
        return Ok(report);
    };
    let candidates: Vec<(Fp, OpenHalf)> = state
        .index()?
        .open
        .iter()
        .filter(|(_, half)| !half.orphaned())
        .collect();
    let mut marked = Vec::new();
    for page in candidates.chunks(CHUNK) {
        let timestamps: Vec<i64> = page.iter().map(|(_, h)| h.timestamp_ns).collect();
        let hits = provider
            .session()?
            .sweep(&timestamps, newest, older_than_ns)?;
        report.still_open += (page.len() - hits.len()) as u64;
        for i in hits {
            let (fp, half) = page[i as usize];
            let trip_id = state.events.read(half.pos())?.trip_id;
            marked.push(fp);
            report.orphans.push(Orphan {
                trip_id,
                has: half.kind().as_str(),
                timestamp_ns: half.timestamp_ns,
            });
        }
    }
    state.write_transaction(|state| crate::db::mark_orphans(&state.conn, &marked, newest))?;
    let index = state.index()?;
    for fp in marked {
        index.mark_orphaned(fp);
    }
    report.orphans.sort_by(|a, b| a.trip_id.cmp(&b.trip_id));
    report.orphaned_total = state.totals()?.orphaned;
    Ok(report)
}
