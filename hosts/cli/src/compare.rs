//! `tripflow audit` and `tripflow diff`: two answers side by side, printed for a person, with an
//! exit status that says whether they agree (0), differ (1), or could not be compared (2).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tripflow_core::money::format_cents;
use tripflow_core::{DayKpi, TripStatus};
use tripflow_runtime::{CoreProvider, TripCore};
use tripflow_store::audit::AuditReport;
use tripflow_store::compare::{Diff, RecordOutcome, TripOutcome};
use tripflow_store::export::{self, Export};
use tripflow_store::{Input, KpiOptions, ReplayOptions, StateDir};

use crate::DaysArg;

/// The exit status when the two sides differ.
const DIFFERENT: i32 = 1;

/// `tripflow audit`.
pub fn audit<P: CoreProvider>(
    core: &P,
    export_dir: &Path,
    published: &Path,
    rejects: Option<&Path>,
    table: Option<&str>,
    days: &DaysArg,
    kpi_out: Option<&Path>,
) -> Result<i32> {
    let export = Export::open(export_dir, table)?;
    let published_csv = std::fs::read_to_string(published).with_context(|| {
        format!(
            "cannot read {}: pass the combined KPI CSV the pipeline published \
             (s3://BUCKET/kpi_results/daily_trip_kpis.csv)",
            published.display()
        )
    })?;
    let kept = match rejects {
        Some(path) => tripflow_store::audit::read_kept(path)?,
        None => Vec::new(),
    };
    eprintln!("tripflow: auditing with {}", core.describe());
    let report =
        tripflow_store::audit::audit(core, &export, &kept, &published_csv, &days.options())
            .with_context(|| format!("auditing {}", published.display()))?;
    if let Some(path) = kpi_out {
        crate::write_file(path, report.recomputed_csv.as_bytes())?;
    }
    print_audit(
        &mut io::stdout().lock(),
        core,
        &report,
        rejects.is_some(),
        days,
    )?;
    Ok(if report.identical() { 0 } else { DIFFERENT })
}

fn print_audit<P: CoreProvider>(
    out: &mut impl Write,
    core: &P,
    r: &AuditReport,
    rejects_given: bool,
    days: &DaysArg,
) -> Result<()> {
    let s = &r.export;
    writeln!(
        out,
        "export     {} of table {}, as of {}: {} items in {} data files",
        s.export_arn.as_deref().unwrap_or("(no export ARN)"),
        s.table_name(),
        s.export_time.as_deref().unwrap_or("?"),
        s.item_count,
        r.data_files
    )?;
    writeln!(out, "core       {}", core.describe())?;
    let stored_note = if r.summary.stored == r.exported_events {
        "every one stored again".to_owned()
    } else {
        format!(
            "only {} stored again: this component rejects or merges stored events",
            r.summary.stored
        )
    };
    writeln!(
        out,
        "events     {} from the export, {stored_note}; trips: {} completed, {} invalid, {} without a fare, {} open",
        r.exported_events,
        r.summary.completed,
        r.summary.invalid,
        r.summary.no_fare,
        r.summary.store.open
    )?;
    if rejects_given {
        let kept: u64 = r.kept.values().sum();
        let by_reason: Vec<String> = r.kept.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let same = if r.reject_mismatches.is_empty() {
            "each replayed one rejected again for the same reason"
        } else {
            "NOT all rejected again for the same reason"
        };
        writeln!(
            out,
            "kept       {kept} rejected records ({}): {same}",
            if by_reason.is_empty() {
                "none".to_owned()
            } else {
                by_reason.join(", ")
            }
        )?;
        for (reason, n) in &r.not_replayed.not_decided {
            writeln!(
                out,
                "           {n} {reason} not replayed: the pipeline decided nothing about them"
            )?;
        }
        for (reason, n) in &r.not_replayed.multi_line {
            writeln!(
                out,
                "           {n} {reason} not replayed: a line feed inside the record"
            )?;
        }
        for m in r.reject_mismatches.iter().take(20) {
            writeln!(
                out,
                "           {}: kept as {}, replayed as {}",
                m.record, m.kept, m.replayed
            )?;
        }
    } else {
        writeln!(
            out,
            "kept       not given (--rejects): the audit covers the stored events only"
        )?;
    }
    let range = match (&days.from, &days.to) {
        (None, None) => String::new(),
        (f, t) => format!(
            " from {} to {}",
            f.as_deref().unwrap_or("the first day"),
            t.as_deref().unwrap_or("the last day")
        ),
    };
    if r.days.is_empty() {
        writeln!(
            out,
            "KPIs       identical: {} days{range}, time zone {}",
            r.recomputed_days, days.timezone
        )?;
    } else {
        writeln!(
            out,
            "KPIs       {} of {} days differ{range} (published {} days, recomputed {}), time zone {}:",
            r.days.len(),
            r.published_days.max(r.recomputed_days),
            r.published_days,
            r.recomputed_days,
            days.timezone
        )?;
        let mut session = core.session()?;
        for d in &r.days {
            print_day(
                out,
                &mut session,
                &d.date,
                [
                    ("published", d.old.as_ref()),
                    ("recomputed", d.new.as_ref()),
                ],
            )?;
        }
    }
    writeln!(
        out,
        "{}",
        if r.identical() {
            "identical"
        } else {
            "DIFFERENT"
        }
    )?;
    Ok(())
}

/// A KPI row as its CSV line (the core renders it), or why there is none.
/// A KPI day, then its two rows under their labels, aligned.
fn print_day(
    out: &mut impl Write,
    core: &mut impl TripCore,
    date: &str,
    rows: [(&str, Option<&DayKpi>); 2],
) -> Result<()> {
    writeln!(out, "  {date}")?;
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 2;
    for (label, row) in rows {
        writeln!(out, "    {label:<width$}{}", row_text(core, row)?)?;
    }
    Ok(())
}

fn row_text(core: &mut impl TripCore, row: Option<&DayKpi>) -> Result<String> {
    Ok(match row {
        None => "(no row)".to_owned(),
        Some(r) => {
            let csv = core.render_csv(std::slice::from_ref(r))?;
            csv.lines().nth(1).unwrap_or_default().to_owned()
        }
    })
}

/// The inputs named on the command line: an export's data files for a directory holding one,
/// else a file (`-`: standard input), each checked to open.
pub fn inputs_of(args: &[String]) -> Result<Vec<Input>> {
    let mut inputs = Vec::new();
    for arg in args {
        let path = PathBuf::from(arg);
        if path.is_dir() {
            if !export::is_export(&path) {
                anyhow::bail!(
                    "{arg} is a directory without a DynamoDB export: pass NDJSON files, or the \
                     directory of an export (holding {})",
                    export::SUMMARY
                );
            }
            inputs.extend(Export::open(&path, None)?.inputs());
        } else {
            let input = Input::from_arg(arg);
            input.open()?;
            inputs.push(input);
        }
    }
    Ok(inputs)
}

/// Replays `inputs` into a temporary store through `core` and computes the KPIs.
fn replay_through<P: CoreProvider>(
    core: &P,
    inputs: &[Input],
    kpi: &KpiOptions,
) -> Result<(StateDir, Vec<DayKpi>, u64)> {
    let mut state = StateDir::temporary()?;
    let summary = tripflow_store::replay(
        core,
        &mut state,
        inputs,
        &ReplayOptions::default(),
        None,
        &(),
    )?;
    let rows = tripflow_store::kpi(core, &state, kpi)?.rows;
    Ok((state, rows, summary.records))
}

/// `tripflow diff`.
pub fn diff<A: CoreProvider, B: CoreProvider>(
    old: &A,
    new: &B,
    args: &[String],
    days: &DaysArg,
    limit: usize,
) -> Result<i32> {
    let inputs = inputs_of(args)?;
    let opts = days.options();
    new.session()?.check_time_zone(&opts.zone)?;
    let (old_state, old_rows, records) = replay_through(old, &inputs, &opts)?;
    let (new_state, new_rows, _) = replay_through(new, &inputs, &opts)?;
    let diff = tripflow_store::compare::diff(
        (old, &old_state, &old_rows),
        (new, &new_state, &new_rows),
        &opts.zone,
    )?;
    let mut out = io::stdout().lock();
    writeln!(out, "old        {}", old.describe())?;
    writeln!(out, "new        {}", new.describe())?;
    writeln!(
        out,
        "inputs     {records} records from {} input(s), time zone {}",
        inputs.len(),
        opts.zone
    )?;
    print_diff(&mut out, new, &diff, limit)?;
    Ok(if diff.is_empty() { 0 } else { DIFFERENT })
}

fn print_diff<P: CoreProvider>(
    out: &mut impl Write,
    core: &P,
    d: &Diff,
    limit: usize,
) -> Result<()> {
    let mut session = core.session()?;
    writeln!(out, "KPI days that change: {}", d.days.len())?;
    for day in d.days.iter().take(limit) {
        print_day(
            out,
            &mut session,
            &day.date,
            [("old", day.old.as_ref()), ("new", day.new.as_ref())],
        )?;
        let behind: Vec<&str> = d
            .trips
            .iter()
            .filter(|t| t.days.contains(&day.date))
            .map(|t| t.trip_id.as_str())
            .collect();
        let shown: Vec<&str> = behind.iter().take(limit).copied().collect();
        writeln!(
            out,
            "    trips behind it ({}): {}{}",
            behind.len(),
            shown.join(", "),
            if behind.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        )?;
    }
    more(out, d.days.len(), limit)?;
    writeln!(out, "trips that change: {}", d.trips.len())?;
    for t in d.trips.iter().take(limit) {
        writeln!(
            out,
            "  {}: {} → {}",
            t.trip_id,
            trip_text(t.old.as_ref()),
            trip_text(t.new.as_ref())
        )?;
        for e in &t.events {
            writeln!(
                out,
                "    {}:{}  {}",
                e.source,
                e.line,
                String::from_utf8_lossy(&e.raw)
            )?;
        }
    }
    more(out, d.trips.len(), limit)?;
    writeln!(out, "records decided differently: {}", d.records.len())?;
    for r in d.records.iter().take(limit) {
        writeln!(
            out,
            "  {}:{}: {} → {}",
            r.record.source,
            r.record.line,
            record_text(r.old.as_ref()),
            record_text(r.new.as_ref())
        )?;
        writeln!(out, "    {}", String::from_utf8_lossy(&r.record.raw))?;
    }
    more(out, d.records.len(), limit)?;
    writeln!(
        out,
        "{}",
        if d.is_empty() {
            "no change".to_owned()
        } else {
            format!(
                "CHANGED: {} KPI days, {} trips, {} records",
                d.days.len(),
                d.trips.len(),
                d.records.len()
            )
        }
    )?;
    Ok(())
}

fn more(out: &mut impl Write, n: usize, limit: usize) -> io::Result<()> {
    if n > limit {
        writeln!(out, "  … and {} more (--limit)", n - limit)?;
    }
    Ok(())
}

fn trip_text(t: Option<&TripOutcome>) -> String {
    match t {
        None => "no stored event".to_owned(),
        Some(TripOutcome::Open(kind)) => format!("open (only its {})", kind.as_str()),
        Some(TripOutcome::Closed {
            status, fare_cents, ..
        }) => {
            let fare = fare_cents.map_or("no fare".to_owned(), format_cents);
            match status {
                TripStatus::Completed => format!("completed, fare {fare}"),
                other => format!("{}, fare {fare}", other.as_str()),
            }
        }
    }
}

fn record_text(r: Option<&RecordOutcome>) -> String {
    match r {
        None => "a duplicate".to_owned(),
        Some(RecordOutcome::Stored) => "stored".to_owned(),
        Some(RecordOutcome::Rejected { reason, detail }) => format!("{reason} ({detail})"),
    }
}
