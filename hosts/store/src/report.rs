//! `report`: the KPI report page of a store, rendered by the core.

use tripflow_runtime::core::report::{
    Accounting, Provenance, RejectExample, RejectGroup, ReportRequest,
};
use tripflow_runtime::{CoreProvider, TripCore};

use crate::db::{SourceCounts, StateDir};
use crate::error::Error;
use crate::kpi::{KpiOptions, kpi};

/// Rejected records shown per reason.
pub const EXAMPLES_PER_REASON: usize = 3;

/// Bytes of a rejected record shown on the page (the store keeps them all).
pub const EXAMPLE_BYTES: usize = 300;

/// What to put on the page.
#[derive(Clone, Debug)]
pub struct ReportOptions {
    /// The KPI days and range, as for [`kpi`].
    pub kpi: KpiOptions,
    /// Who renders the page, e.g. `tripflow 0.1.0`.
    pub host: String,
}

/// The report page of everything in `state`: KPIs of the range, the store's accounting (every
/// replay into it) and the provenance.
pub fn report<P: CoreProvider>(
    provider: &P,
    state: &StateDir,
    opts: &ReportOptions,
) -> Result<String, Error> {
    let kpis = kpi(provider, state, &opts.kpi)?;
    let totals = state.totals()?;
    let (sources, complete) = state.sources()?;
    let sum = |f: fn(&SourceCounts) -> u64| -> Option<u64> {
        complete.then(|| sources.iter().map(f).sum())
    };
    let rejected = state
        .quarantine_groups(EXAMPLES_PER_REASON)?
        .into_iter()
        .map(|(reason, count, records)| RejectGroup {
            reason,
            count,
            examples: records
                .into_iter()
                .map(|r| RejectExample {
                    source: r.source,
                    line: r.line,
                    detail: r.detail,
                    raw: shown(&r.raw.0),
                })
                .collect(),
        })
        .collect();
    let accounting = Accounting {
        records_read: sum(|s| s.records),
        blank_lines: sum(|s| s.blank),
        duplicates: sum(|s| s.duplicates),
        stored_events: totals.events,
        completed: totals.completed,
        invalid: totals.invalid,
        no_fare: totals.no_fare,
        open: totals.open,
        orphaned: totals.orphaned,
        rejected,
    };
    let note = if complete {
        "Everything replayed into this store: records read and duplicates count every replay \
         (a file replayed twice is read twice, and its second reading is all duplicates); each \
         rejected record is kept once, with its original bytes, in the store's quarantine table."
    } else {
        "This store was created by an older tripflow that did not count records read, blank \
         lines or duplicates; the rest covers everything replayed into it."
    };
    let request = ReportRequest {
        zone: opts.kpi.zone.clone(),
        from: opts.kpi.from.clone(),
        to: opts.kpi.to.clone(),
        rows: kpis.rows,
        accounting: Some(accounting),
        provenance: Provenance {
            host: opts.host.clone(),
            component_sha256: provider.fingerprint(),
            inputs: sources.into_iter().map(|s| s.name).collect(),
            accounting_note: note.to_owned(),
        },
    };
    Ok(provider.session()?.render_html(&request)?)
}

/// A record's bytes as text for the page: lossy UTF-8, cut at [`EXAMPLE_BYTES`].
pub(crate) fn shown(raw: &[u8]) -> String {
    let cut = raw.len().min(EXAMPLE_BYTES);
    let mut text = String::from_utf8_lossy(&raw[..cut]).into_owned();
    if cut < raw.len() {
        text.push_str(&format!("… ({} bytes in all)", raw.len()));
    }
    text
}
