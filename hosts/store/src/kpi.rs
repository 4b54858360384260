//! `kpi`: daily fare KPIs over every closed trip in the store, aggregated and rendered by
//! the core.

use tripflow_runtime::core::{DayKpi, DayTotals, TripFare};
use tripflow_runtime::{CoreProvider, TripCore};

use crate::db::StateDir;
use crate::error::Error;

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
    let mut flush = |chunk: &mut Vec<TripFare>| -> Result<(), Error> {
        totals = provider.session()?.accumulate(&opts.zone, &totals, chunk)?;
        chunk.clear();
        Ok(())
    };
    state.scan_trips(|_, t| {
        chunk.push(TripFare {
            status: t.status,
            start_ns: t.start_ns,
            fare_cents: t.fare_cents,
        });
        if chunk.len() == CHUNK {
            flush(&mut chunk)?;
        }
        Ok(())
    })?;
    if !chunk.is_empty() {
        flush(&mut chunk)?;
    }
    let mut core = provider.session()?;
    let rows = core.finish(&totals, opts.from.as_deref(), opts.to.as_deref())?;
    let csv = core.render_csv(&rows)?;
    Ok(KpiReport { rows, csv })
}
