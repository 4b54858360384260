//! `kpi`: daily fare KPIs over every closed trip in the store, aggregated and rendered by
//! the core.

use tripflow_runtime::core::{DayKpi, TripFare};
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
///
/// The per-day totals are saved in the store with the number of closed trips they add up, under
/// the time zone and the component's sha256, so the next run only adds the trips closed since.
/// That is exact: `trips.log` is append-only and a closed trip never changes, the totals are
/// integer counts and sums of cents with a minimum and a maximum (their order does not matter),
/// and a different zone or component finds no saved totals and adds up every trip. A core that
/// is not a component (`--native`) has no sha256 and saves nothing.
pub fn kpi<P: CoreProvider>(
    provider: &P,
    state: &StateDir,
    opts: &KpiOptions,
) -> Result<KpiReport, Error> {
    let mut core = provider.session()?;
    core.check_time_zone(&opts.zone)?;
    // Check the range before the scan, so a typo costs nothing.
    core.finish(&[], opts.from.as_deref(), opts.to.as_deref())?;

    let component = Some(provider.fingerprint()).filter(|f| is_sha256(f));
    let end = state.trip_count();
    let (from, mut totals) = match &component {
        Some(sha) => state.kpi_totals(&opts.zone, sha)?.unwrap_or_default(),
        None => (0, Vec::new()),
    };
    let mut chunk: Vec<TripFare> = Vec::with_capacity(CHUNK);
    let mut flush = |chunk: &mut Vec<TripFare>| -> Result<(), Error> {
        totals = provider.session()?.accumulate(&opts.zone, &totals, chunk)?;
        chunk.clear();
        Ok(())
    };
    state.scan_trips(from..end, |_, t| {
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
    if let Some(sha) = &component
        && end > from
    {
        // Saving is an optimisation: a store that cannot take it (read-only, busy) costs the
        // next run a longer scan, and the answer is the same.
        let _ = state.save_kpi_totals(&opts.zone, sha, end, &totals);
    }
    let mut core = provider.session()?;
    let rows = core.finish(&totals, opts.from.as_deref(), opts.to.as_deref())?;
    let csv = core.render_csv(&rows)?;
    Ok(KpiReport { rows, csv })
}

/// Whether `s` is a sha256 in lowercase hex (what a component's fingerprint is).
fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
