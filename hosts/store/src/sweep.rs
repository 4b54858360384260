//! `sweep`: mark open trips that waited too long for their other half as orphans.
//!
//! Age is measured back from the newest event time in the store, not the wall clock, so a
//! replay of last year's data sweeps the way the live pipeline did.

use rusqlite::params;
use serde::Serialize;
use tripflow_runtime::{CoreProvider, TripCore};

use crate::db::{StateDir, kind_from};
use crate::error::{DbContext, Error};

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
    let mut report = SweepReport {
        newest_ns: state.newest_ns()?,
        ..SweepReport::default()
    };
    let Some(newest) = report.newest_ns else {
        return Ok(report);
    };
    state.write_transaction(|state| {
        let mut last = String::new();
        loop {
            let mut page: Vec<(String, i64, i64)> = Vec::with_capacity(CHUNK);
            {
                let mut stmt = state
                    .conn
                    .prepare_cached(
                        "SELECT trip_id, kind, timestamp_ns FROM open_trips
                         WHERE orphaned_ns IS NULL AND trip_id > ?1 ORDER BY trip_id LIMIT ?2",
                    )
                    .db("preparing the open-trip scan")?;
                let rows = stmt
                    .query_map(params![last, CHUNK as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .db("scanning open trips")?;
                for row in rows {
                    page.push(row.db("reading an open trip")?);
                }
            }
            let Some((id, _, _)) = page.last() else { break };
            last = id.clone();
            let timestamps: Vec<i64> = page.iter().map(|p| p.2).collect();
            let hits = provider
                .session()?
                .sweep(&timestamps, newest, older_than_ns)?;
            report.still_open += (page.len() - hits.len()) as u64;
            let mut mark = state
                .conn
                .prepare_cached("UPDATE open_trips SET orphaned_ns = ?1 WHERE trip_id = ?2")
                .db("preparing the orphan mark")?;
            for i in hits {
                let (trip_id, kind, timestamp_ns) = &page[i as usize];
                mark.execute(params![newest, trip_id])
                    .db("marking an orphan")?;
                report.orphans.push(Orphan {
                    trip_id: trip_id.clone(),
                    has: kind_from(*kind).as_str(),
                    timestamp_ns: *timestamp_ns,
                });
            }
        }
        Ok(())
    })?;
    report.orphaned_total = state.totals()?.orphaned;
    Ok(report)
}
