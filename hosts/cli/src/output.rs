//! What the CLI shows a person: the replay summary, the KPI table, the sweep report and a
//! progress bar on a terminal.

use std::io::{self, Write};
use std::path::Path;

use tripflow_core::DayKpi;
use tripflow_core::money::format_cents;
use tripflow_core::time::format_rfc3339_utc;
use tripflow_store::{Input, Progress, Summary, SweepReport};

/// Inputs smaller than this replay too fast for a bar to help.
const BAR_THRESHOLD_BYTES: u64 = 16 << 20;

/// A byte-based progress bar on stderr, drawn only on a terminal and for large inputs.
pub struct ProgressBar(Option<indicatif::ProgressBar>);

impl ProgressBar {
    /// A bar for the total size of `inputs` (hidden when unknown or small).
    pub fn for_inputs(inputs: &[Input]) -> ProgressBar {
        let total: Option<u64> = inputs.iter().map(Input::size).sum();
        match total {
            Some(total) if total >= BAR_THRESHOLD_BYTES && crate::stderr_is_terminal() => {
                let style = indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("a valid template");
                ProgressBar(Some(indicatif::ProgressBar::new(total).with_style(style)))
            }
            _ => ProgressBar(None),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Progress for ProgressBar {
    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(bytes);
        }
    }
}

/// The replay summary as aligned text.
pub fn print_summary(
    out: &mut impl Write,
    s: &Summary,
    files: &[String],
    quarantine: Option<&Path>,
) -> io::Result<()> {
    writeln!(
        out,
        "replayed {} file(s): {}",
        files.len(),
        files.join(", ")
    )?;
    writeln!(
        out,
        "  events read       {:>10}  ({} blank lines skipped)",
        s.records, s.blank_lines
    )?;
    writeln!(out, "  stored            {:>10}", s.stored)?;
    writeln!(out, "  duplicates        {:>10}", s.duplicates)?;
    if s.skewed > 0 {
        writeln!(
            out,
            "  clock ahead       {:>10}  (stored; dated past arrival + max clock skew, so not used as the sweep's clock)",
            s.skewed
        )?;
    }
    writeln!(out, "  rejected          {:>10}", s.rejected_total())?;
    for (code, n) in s.rejected.iter().filter(|(_, n)| **n > 0) {
        writeln!(out, "    {code:<20}{n:>8}")?;
    }
    if s.rejected_total() > 0 {
        match quarantine {
            Some(p) => writeln!(
                out,
                "    (records with reasons and original bytes: {})",
                p.display()
            )?,
            None => writeln!(
                out,
                "    (kept in the store; add --quarantine FILE to get them as NDJSON)"
            )?,
        }
    }
    writeln!(
        out,
        "  trips closed      {:>10}  (completed {}, invalid {}, no_fare {})",
        s.completed + s.invalid + s.no_fare,
        s.completed,
        s.invalid,
        s.no_fare
    )?;
    let t = &s.store;
    writeln!(
        out,
        "store now: {} completed, {} invalid, {} no_fare, {} open ({} orphaned), {} quarantined",
        t.completed, t.invalid, t.no_fare, t.open, t.orphaned, t.quarantined
    )
}

/// The KPIs as an aligned table.
pub fn print_kpi_table(out: &mut impl Write, rows: &[DayKpi], zone: &str) -> io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "no completed trips in the store (KPI days in {zone})");
    }
    writeln!(out, "daily fare KPIs (days in {zone})")?;
    writeln!(
        out,
        "{:<10}  {:>7}  {:>12}  {:>8}  {:>8}  {:>10}",
        "date", "trips", "total", "average", "min", "max"
    )?;
    let (mut trips, mut total) = (0u64, 0i64);
    for r in rows {
        writeln!(
            out,
            "{:<10}  {:>7}  {:>12}  {:>8}  {:>8}  {:>10}",
            r.date,
            r.trip_count,
            format_cents(r.total_cents),
            format_cents(r.average_cents),
            format_cents(r.min_cents),
            format_cents(r.max_cents)
        )?;
        trips += r.trip_count;
        total = total.saturating_add(r.total_cents);
    }
    writeln!(
        out,
        "{} days, {} trips, {} total fare",
        rows.len(),
        trips,
        format_cents(total)
    )
}

/// The sweep report.
pub fn print_sweep(out: &mut impl Write, r: &SweepReport) -> io::Result<()> {
    let Some(newest) = r.newest_ns else {
        return writeln!(out, "the store has no events: nothing to sweep");
    };
    writeln!(
        out,
        "newest event: {} ({} ns)",
        format_rfc3339_utc(newest),
        newest
    )?;
    writeln!(out, "orphaned now: {}", r.orphans.len())?;
    for o in &r.orphans {
        writeln!(
            out,
            "  {}  has {} at {}",
            o.trip_id,
            o.has,
            format_rfc3339_utc(o.timestamp_ns)
        )?;
    }
    writeln!(
        out,
        "still open: {}; orphans in the store: {}",
        r.still_open, r.orphaned_total
    )
}
