//! `kpi`: daily fare KPIs over every closed trip in the store, aggregated and rendered by
//! the core.

use tripflow_runtime::core::{DayKpi, DayTotals, TripFare};
use tripflow_runtime::{CoreProvider, TripCore};

use crate::db::{StateDir, status_from};
use crate::error::{DbContext, Error};

/// Trips handed to the core per call.
const CHUNK: usize = 65_536;

/// Which KPIs to compute.
#[derive(Clone, Debug)]
pub struct KpiOptions {
    /// IANA time zone whose calendar days are the KPI days.
    pub zone: String,
    /// First day to report (`YYYY-MM-DD`), inclusive.
    pub from: Option<String>,
    /// Last day to report (`YYYY-MM-DD`), inclusive.
    pub to: Option<String>,
}

impl Default for KpiOptions {
    fn default() -> Self {
        KpiOptions {
            zone: "UTC".to_owned(),
            from: None,
            to: None,
        }
    }
}

/// The KPIs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KpiReport {
    /// One row per day, by date.
    pub rows: Vec<DayKpi>,
    /// The same rows as the KPI CSV, byte for byte what every host writes.
    pub csv: String,
}

/// Computes the KPIs of every closed trip in `state`.
pub fn kpi<P: CoreProvider>(
    provider: &P,
    state: &StateDir,
    opts: &KpiOptions,
) -> Result<KpiReport, Error> {
    let mut core = provider.session()?;
    core.check_time_zone(&opts.zone)?;
    // Check the range before the scan, so a typo costs nothing.
    core.finish(&[], opts.from.as_deref(), opts.to.as_deref())?;

    let mut totals: Vec<DayTotals> = Vec::new();
    let mut chunk: Vec<TripFare> = Vec::with_capacity(CHUNK);
    let mut stmt = state
        .conn
        .prepare("SELECT status, start_ns, fare_cents FROM trips")
        .db("preparing the trip scan")?;
    let mut rows = stmt.query([]).db("scanning trips")?;
    loop {
        let row = rows.next().db("scanning trips")?;
        if let Some(row) = row {
            chunk.push(TripFare {
                status: status_from(row.get(0).db("reading a trip")?),
                start_ns: row.get(1).db("reading a trip")?,
                fare_cents: row.get(2).db("reading a trip")?,
            });
        }
        if chunk.len() == CHUNK || (row.is_none() && !chunk.is_empty()) {
            totals = provider
                .session()?
                .accumulate(&opts.zone, &totals, &chunk)?;
            chunk.clear();
        }
        if row.is_none() {
            break;
        }
    }
    let mut core = provider.session()?;
    let rows = core.finish(&totals, opts.from.as_deref(), opts.to.as_deref())?;
    let csv = core.render_csv(&rows)?;
    Ok(KpiReport { rows, csv })
}
