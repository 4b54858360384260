//! kpi: completed trips of a date range → one CSV per day and the combined CSV in S3.
//!
//! Input: a scheduled run (any payload without dates), which means yesterday and today in
//! `TIMEZONE` plus every local day overlapping a dirty UTC day (see [`crate::dirty`]), or
//! `{"from": "YYYY-MM-DD", "to": "YYYY-MM-DD"}` for a manual run; either whole in one
//! invocation, or as the `plan`, `chunk` and `publish` steps of the KPI state machine, which
//! fans a run of any length out over chunks of days (see [`handle`]).
//!
//! Completed trips are read from the `DONE` manifests the matcher files by the UTC date of the
//! trip's start ([`crate::manifest`]), each trip id counted once. A local day lies within one
//! UTC day either side, so the job reads `from − 1 … to + 1` and never touches raw events or
//! other days; the core assigns each trip to its local day and drops days outside the range
//! (`kpi.accumulate`, `kpi.finish`), and renders the CSV bytes (`kpi.render-csv`).
//!
//! Output: `<KPI_DAILY_PREFIX>date=YYYY-MM-DD/daily_trip_kpis.csv` per day (a partition layout
//! Athena and Glue read directly), and the combined file at `KPI_KEY`, in which only the
//! recomputed days' lines change: lines of other days are kept byte for byte. Next to it, the
//! report page of the combined file (`KPI_KEY` with `.html` for `.csv`), rendered by the core
//! (`report.render-html`) from the rows it reads back from the combined CSV.

use std::collections::{BTreeSet, HashSet};

use chrono::NaiveDate;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tripflow_runtime::core::report::{Provenance, ReportRequest};
use tripflow_runtime::core::{DayKpi, DayTotals, TripFare};
use tripflow_runtime::{CoreProvider, TripCore};

use crate::dirty::Marker;
use crate::manifest::{self, DoneEntry, Kind};
use crate::metrics::Counters;
use crate::retry::{Budget, retry};
use crate::{App, Error, dirty};

/// The longest range one invocation computes: a whole run without the state machine, or one
/// of its chunks.
pub const MAX_DAYS: i64 = 366;
/// The longest range one state-machine execution covers (20 years). What an execution carries
/// from step to step is at most 256 KiB: the chunks, and the dates each chunk published (13
/// bytes a day). A longer republish runs as one execution per 20 years.
pub const MAX_EXECUTION_DAYS: i64 = 7_320;
/// The most chunks one execution fans out to: an inline Map's iterations stay well inside an
/// execution's 25,000 history events.
pub const MAX_CHUNKS: usize = 1_000;
/// Trips handed to the core per `accumulate` call.
const CHUNK: usize = 16_384;
/// Daily objects a publish step reads at once.
const PARALLEL_READS: usize = 16;

/// The days a manual or scheduled run covers, `from..=to`, at most `max_days` long.
fn range(
    app: &App,
    payload: &Value,
    budget: &Budget,
    max_days: i64,
) -> Result<(String, String), Error> {
    let field = |k: &str| payload.get(k).and_then(Value::as_str).map(str::to_owned);
    let (from, to) = match (field("from"), field("to")) {
        (Some(f), Some(t)) => (f, t),
        (Some(d), None) | (None, Some(d)) => (d.clone(), d),
        (None, None) => {
            let now_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            let today = app
                .core_within(budget)
                .session()?
                .day_of(&app.config.timezone, now_ns)?;
            let yesterday = parse_date(&today)?
                .pred_opt()
                .ok_or_else(|| Error::Request("no day before today".into()))?
                .to_string();
            (yesterday, today)
        }
    };
    // The core validates the dates and the order.
    app.core_within(budget)
        .session()?
        .finish(&[], Some(&from), Some(&to))?;
    let days = (parse_date(&to)? - parse_date(&from)?).num_days() + 1;
    if days > max_days {
        return Err(Error::Request(format!(
            "{from}..{to} is {days} days; one {} covers at most {max_days}: split the range",
            if max_days == MAX_DAYS {
                "invocation"
            } else {
                "execution"
            }
        )));
    }
    Ok((from, to))
}

fn parse_date(s: &str) -> Result<NaiveDate, Error> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| Error::Request(format!("bad date {s:?}: use YYYY-MM-DD")))
}

/// The day after `d`.
fn next_day(d: NaiveDate) -> Result<NaiveDate, Error> {
    d.succ_opt()
        .ok_or_else(|| Error::Request(format!("{d} is the last day this calendar has")))
}

/// The day before `d`.
fn previous_day(d: NaiveDate) -> Result<NaiveDate, Error> {
    d.pred_opt()
        .ok_or_else(|| Error::Request(format!("{d} is the first day this calendar has")))
}

/// Dirty days handled by one run at most; the rest wait for the next run (oldest first), so a
/// backfill of years is published over a few runs instead of timing one out.
pub const MAX_DIRTY_DAYS_PER_RUN: usize = 366;
/// Dirty days one scheduled execution of the state machine publishes at most (five years);
/// the markers it carries to its publish step stay well inside the 256 KiB of its state.
pub const MAX_DIRTY_DAYS_PER_EXECUTION: usize = 1_830;

/// What a run recomputes: the local days, and the dirty-day markers it clears once published.
struct Selection {
    from: String,
    to: String,
    days: BTreeSet<NaiveDate>,
    markers: Vec<Marker>,
    deferred: usize,
}

/// A manual run (`from`/`to`) recomputes exactly its range and leaves the markers. A scheduled
/// run (no dates) recomputes yesterday and today in `TIMEZONE` plus every local day that
/// overlaps a dirty UTC day (see [`dirty`]), at most `max_dirty` of them, oldest first.
async fn select(
    app: &App,
    request: &Value,
    budget: &Budget,
    max_days: i64,
    max_dirty: usize,
) -> Result<Selection, Error> {
    let scheduled = request.get("from").is_none() && request.get("to").is_none();
    let (from, to) = range(app, request, budget, max_days)?;
    let mut days: BTreeSet<NaiveDate> = BTreeSet::new();
    let mut d = parse_date(&from)?;
    while d <= parse_date(&to)? {
        days.insert(d);
        d = next_day(d)?;
    }
    let mut markers = if scheduled {
        dirty::pending(app, budget).await?
    } else {
        Vec::new()
    };
    let deferred = markers.len().saturating_sub(max_dirty);
    markers.truncate(max_dirty);
    if !markers.is_empty() {
        let utc: Vec<String> = markers.iter().map(|m| m.utc_day.clone()).collect();
        for local in app
            .core_within(budget)
            .session()?
            .local_days(&app.config.timezone, &utc)?
        {
            days.insert(parse_date(&local)?);
        }
    }
    Ok(Selection {
        from,
        to,
        days,
        markers,
        deferred,
    })
}

/// Handles one invocation. The payload's `step` says which part of a run it is:
///
/// - none: a whole run in this invocation (a manual range of at most [`MAX_DAYS`], or what
///   the schedule sends), as [`whole_run`] describes;
/// - `plan`, `chunk`, `publish`: the steps of the KPI state machine (`KpiStateMachine` in
///   `deploy/template.yaml`), which fans a run of any length out over chunks of days and
///   keeps one writer for the combined CSV. The function decides; the state machine only
///   carries each step's output to the next.
pub async fn handle(app: &App, payload: Value, budget: &Budget) -> Result<Value, Error> {
    match payload.get("step").and_then(Value::as_str) {
        None => whole_run(app, payload, budget).await,
        Some("plan") => plan(app, &payload, budget).await,
        Some("chunk") => chunk(app, &payload, budget).await,
        Some("publish") => publish(app, &payload, budget).await,
        Some(other) => Err(Error::Request(format!(
            "unknown step {other:?}: the KPI state machine's steps are plan, chunk and publish; \
             leave step out for one whole run"
        ))),
    }
}

/// One whole run in one invocation: every day of the selection computed, written and merged
/// into the combined CSV, and the markers cleared.
async fn whole_run(app: &App, payload: Value, budget: &Budget) -> Result<Value, Error> {
    let rcu_before = app.capacity.read_units();
    let selection = select(app, &payload, budget, MAX_DAYS, MAX_DIRTY_DAYS_PER_RUN).await?;
    let bucket = bucket(app)?;

    // Each run of consecutive days is one range for the core.
    let mut rows: Vec<DayKpi> = Vec::new();
    let mut trips_read = 0u64;
    for (first, last) in consecutive(&selection.days) {
        let (r, n) = compute(app, &app.config.timezone, first, last, budget).await?;
        rows.extend(r);
        trips_read += n;
    }
    let daily = write_daily(app, &bucket, &rows, budget).await?;
    let recomputed: BTreeSet<String> = selection.days.iter().map(NaiveDate::to_string).collect();
    let published =
        publish_rows(app, &bucket, &rows, &recomputed, &selection.markers, budget).await?;

    let mut counters = Counters::default();
    counters.add("KpiTripsRead", trips_read as f64);
    counters.add("DirtyDaysDeferred", selection.deferred as f64);
    counters.add("ConsumedReadUnits", app.capacity.read_units() - rcu_before);
    published.count(&mut counters);
    app.emit(&counters);
    tracing::info!(from = %selection.from, to = %selection.to, days = rows.len(), dirty = selection.markers.len(), deferred = selection.deferred, trips_read, "kpi run");
    let mut out = published.summary(app, &bucket, &selection.from, &selection.to);
    out["dirty_days_deferred"] = json!(selection.deferred);
    out["daily_keys"] = json!(daily);
    Ok(out)
}

/// A number from the request, else from the state machine's defaults, within `1..=max`.
fn setting(payload: &Value, name: &str, max: u64) -> Result<u64, Error> {
    let read = |v: &Value| -> Option<u64> {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
    };
    let given = payload["request"].get(name).filter(|v| !v.is_null());
    let value = match given {
        Some(v) => read(v),
        None => read(&payload["defaults"][name]),
    };
    match value {
        Some(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(Error::Request(format!(
            "{name} must be a whole number from 1 to {max}, not {}",
            given.unwrap_or(&payload["defaults"][name])
        ))),
    }
}

/// `plan`: the execution's input (`request`: `from`/`to`, or nothing for a scheduled run;
/// optional `chunk_days` and `max_concurrency`, else the state machine's `defaults`) → the
/// chunks to compute (consecutive local days, at most `chunk_days` each), the markers the
/// publish step clears, and the Map's concurrency.
async fn plan(app: &App, payload: &Value, budget: &Budget) -> Result<Value, Error> {
    let request = &payload["request"];
    let chunk_days = setting(payload, "chunk_days", MAX_DAYS as u64)?;
    // An inline Map runs at most 40 iterations at once, whatever it is asked for.
    let max_concurrency = setting(payload, "max_concurrency", 40)?;
    let selection = select(
        app,
        request,
        budget,
        MAX_EXECUTION_DAYS,
        MAX_DIRTY_DAYS_PER_EXECUTION,
    )
    .await?;
    let mut chunks = Vec::new();
    for (first, last) in consecutive(&selection.days) {
        let mut start = first;
        while start <= last {
            let end = (start + chrono::Days::new(chunk_days - 1)).min(last);
            chunks.push(json!({"from": start.to_string(), "to": end.to_string()}));
            start = next_day(end)?;
        }
    }
    if chunks.len() > MAX_CHUNKS {
        return Err(Error::Request(format!(
            "{}..{} makes {} chunks of {chunk_days} days; one execution runs at most {MAX_CHUNKS}: \
             raise chunk_days",
            selection.from,
            selection.to,
            chunks.len()
        )));
    }
    let mut counters = Counters::default();
    counters.add("DirtyDaysDeferred", selection.deferred as f64);
    app.emit(&counters);
    tracing::info!(from = %selection.from, to = %selection.to, chunks = chunks.len(), dirty = selection.markers.len(), deferred = selection.deferred, "kpi plan");
    Ok(json!({
        "from": selection.from,
        "to": selection.to,
        "days": selection.days.len(),
        "chunks": chunks,
        "max_concurrency": max_concurrency,
        "markers": selection.markers,
        "dirty_days_deferred": selection.deferred,
    }))
}

/// `chunk`: the KPI rows of the local days `from..=to` written as their daily objects, and
/// nothing else. Returns the range and the dates that have a row (the days with trips).
async fn chunk(app: &App, payload: &Value, budget: &Budget) -> Result<Value, Error> {
    let rcu_before = app.capacity.read_units();
    let (from, to) = range(app, payload, budget, MAX_DAYS)?;
    let bucket = bucket(app)?;
    let (rows, trips_read) = compute(
        app,
        &app.config.timezone,
        parse_date(&from)?,
        parse_date(&to)?,
        budget,
    )
    .await?;
    write_daily(app, &bucket, &rows, budget).await?;
    let mut counters = Counters::default();
    counters.add("KpiTripsRead", trips_read as f64);
    counters.add("ConsumedReadUnits", app.capacity.read_units() - rcu_before);
    app.emit(&counters);
    tracing::info!(from = %from, to = %to, days = rows.len(), trips_read, "kpi chunk");
    Ok(json!({
        "from": from,
        "to": to,
        "days": rows.iter().map(|r| r.date.as_str()).collect::<Vec<_>>(),
        "trips": rows.iter().map(|r| r.trip_count).sum::<u64>(),
    }))
}

/// Chunks that failed past their retries: the execution fails with this, and nothing is
/// published. Reported to Lambda (and so to Step Functions) as the error type `ChunksFailed`.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} of {total} chunks failed past their retries, so nothing was published and no marker \
     was cleared: {}. Fix the cause and start an execution with the same input again",
    failed.len(),
    failed.join("; ")
)]
pub struct ChunksFailed {
    /// Each failed chunk: its range, the error and its cause.
    pub failed: Vec<String>,
    /// Chunks in the execution.
    pub total: usize,
}

/// `publish`: the chunks' results (`chunks`: each `{from, to, days}`, or `{from, to, error,
/// cause}` when it failed past its retries) and the plan's `markers` → the combined CSV with
/// every day of every chunk replaced by its daily object, the report page, and the markers
/// cleared. With a failed chunk, nothing is written ([`ChunksFailed`]).
async fn publish(app: &App, payload: &Value, budget: &Budget) -> Result<Value, Error> {
    let results = payload["chunks"]
        .as_array()
        .ok_or_else(|| Error::Request("publish needs chunks: the Map's results".into()))?;
    let failed: Vec<String> = results
        .iter()
        .filter(|c| c.get("error").is_some())
        .map(|c| {
            format!(
                "{}..{} ({}: {})",
                c["from"].as_str().unwrap_or("?"),
                c["to"].as_str().unwrap_or("?"),
                c["error"].as_str().unwrap_or("?"),
                c["cause"].as_str().unwrap_or_default()
            )
        })
        .collect();
    if !failed.is_empty() {
        return Err(ChunksFailed {
            failed,
            total: results.len(),
        }
        .into());
    }
    let markers: Vec<Marker> = serde_json::from_value(payload["markers"].clone())
        .map_err(|e| Error::Request(format!("publish: markers are not the plan's: {e}")))?;
    let bucket = bucket(app)?;
    let mut recomputed = BTreeSet::new();
    let mut keys = Vec::new();
    for c in results {
        let (from, to) = range(app, c, budget, MAX_DAYS)?;
        let mut d = parse_date(&from)?;
        while d <= parse_date(&to)? {
            recomputed.insert(d.to_string());
            d = next_day(d)?;
        }
        for day in c["days"]
            .as_array()
            .ok_or_else(|| Error::Request("publish: a chunk without days".into()))?
        {
            let day = day
                .as_str()
                .ok_or_else(|| Error::Request("publish: a day is not a date".into()))?;
            keys.push(daily_key(app, &parse_date(day)?.to_string()));
        }
    }
    // The rows as the chunks wrote them, read back through the core.
    let texts: Vec<Result<Option<(String, String)>, Error>> =
        futures_util::stream::iter(keys.iter().cloned())
            .map(|key| {
                let bucket = bucket.as_str();
                async move { get(app, bucket, &key, budget).await }
            })
            .buffered(PARALLEL_READS)
            .collect()
            .await;
    let mut core = app.core_within(budget).session()?;
    let mut rows = Vec::with_capacity(keys.len());
    for (key, text) in keys.iter().zip(texts) {
        let (text, _) = text?.ok_or_else(|| {
            Error::Unreadable(format!(
                "s3://{bucket}/{key} is gone: its chunk wrote it; run the execution again"
            ))
        })?;
        rows.extend(core.read_csv(&text)?);
    }
    let from = payload["from"].as_str().unwrap_or_default().to_owned();
    let to = payload["to"].as_str().unwrap_or_default().to_owned();
    let published = publish_rows(app, &bucket, &rows, &recomputed, &markers, budget).await?;
    let mut counters = Counters::default();
    published.count(&mut counters);
    app.emit(&counters);
    tracing::info!(from = %from, to = %to, chunks = results.len(), days = rows.len(), dirty = markers.len(), "kpi publish");
    let mut out = published.summary(app, &bucket, &from, &to);
    out["chunks"] = json!(results.len());
    Ok(out)
}

fn bucket(app: &App) -> Result<String, Error> {
    app.config.bucket.clone().ok_or_else(|| {
        Error::Config(crate::ConfigError {
            var: "BUCKET",
            message: "is not set: the KPI function writes its CSV and page there".into(),
        })
    })
}

/// A day's object: `<KPI_DAILY_PREFIX>date=YYYY-MM-DD/daily_trip_kpis.csv`.
fn daily_key(app: &App, date: &str) -> String {
    format!(
        "{}date={date}/daily_trip_kpis.csv",
        app.config.kpi_daily_prefix
    )
}

/// Writes one object per row (the day's CSV, rendered by the core). Returns the keys.
async fn write_daily(
    app: &App,
    bucket: &str,
    rows: &[DayKpi],
    budget: &Budget,
) -> Result<Vec<String>, Error> {
    let mut core = app.core_within(budget).session()?;
    let mut daily = Vec::with_capacity(rows.len());
    for row in rows {
        let key = daily_key(app, &row.date);
        let body = core.render_csv(std::slice::from_ref(row))?;
        put(app, bucket, &key, CSV, body, None, budget).await?;
        daily.push(key);
    }
    Ok(daily)
}

/// What [`publish_rows`] did.
struct Published {
    rows: usize,
    trips: u64,
    recomputed: usize,
    markers: Vec<Marker>,
    cleared: usize,
    report_key: String,
}

impl Published {
    fn count(&self, counters: &mut Counters) {
        counters.add("KpiDays", self.rows as f64);
        counters.add("DirtyDaysPublished", self.markers.len() as f64);
    }

    fn summary(&self, app: &App, bucket: &str, from: &str, to: &str) -> Value {
        json!({
            "from": from,
            "to": to,
            "zone": app.config.timezone,
            "recomputed_days": self.recomputed,
            "dirty_days": self.markers.iter().map(|m| m.utc_day.clone()).collect::<Vec<_>>(),
            "dirty_days_cleared": self.cleared,
            "days": self.rows,
            "trips": self.trips,
            "bucket": bucket,
            "combined_key": app.config.kpi_key,
            "report_key": self.report_key,
        })
    }
}

/// The one writer of the combined CSV: `rows` replace the `recomputed` days (a recomputed day
/// without a row has no trips and loses its line), the other days' lines are kept byte for
/// byte. Written on the condition that it is still the version read (If-Match), so a
/// concurrent writer's days are never lost: on a conflict it is read and merged again. Then
/// the report page, then the markers read for this run are cleared, unless marked again
/// meanwhile.
async fn publish_rows(
    app: &App,
    bucket: &str,
    rows: &[DayKpi],
    recomputed: &BTreeSet<String>,
    markers: &[Marker],
    budget: &Budget,
) -> Result<Published, Error> {
    let mut core = app.core_within(budget).session()?;
    let mut attempt = 0;
    let published = loop {
        let previous = get(app, bucket, &app.config.kpi_key, budget).await?;
        let combined = merge(
            previous.as_ref().map(|(text, _)| text.as_str()),
            rows,
            recomputed,
            &mut core,
        )?;
        let expect = Some(previous.as_ref().map(|(_, etag)| etag.as_str()));
        match put(
            app,
            bucket,
            &app.config.kpi_key,
            CSV,
            combined.clone(),
            expect,
            budget,
        )
        .await
        {
            Ok(()) => break combined,
            Err(Put::Conflict) if attempt < 5 => {
                attempt += 1;
                tracing::warn!(
                    attempt,
                    "the combined CSV changed while this run merged it; merging again"
                );
            }
            Err(e) => return Err(e.into()),
        }
    };
    let report_key = publish_report(app, bucket, published, budget).await?;
    let mut cleared = 0;
    for m in markers {
        if dirty::clear(app, m, budget).await? {
            cleared += 1;
        }
    }
    Ok(Published {
        rows: rows.len(),
        trips: rows.iter().map(|r| r.trip_count).sum(),
        recomputed: recomputed.len(),
        markers: markers.to_vec(),
        cleared,
        report_key,
    })
}

/// Content types of what the job writes.
const CSV: &str = "text/csv; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// The report page's key: the combined CSV's, with `.html` for its extension.
pub fn report_key(kpi_key: &str) -> String {
    let stem = kpi_key.strip_suffix(".csv").unwrap_or(kpi_key);
    format!("{stem}.html")
}

/// Publishes the report page of `combined` (the combined CSV this run wrote) next to it, and
/// makes sure the last page written is that of the last CSV written: after its put, the CSV is
/// read again, and if a concurrent run replaced it meanwhile, that run's CSV is rendered and
/// published too. Returns the page's key.
async fn publish_report(
    app: &App,
    bucket: &str,
    mut combined: String,
    budget: &Budget,
) -> Result<String, Error> {
    let key = report_key(&app.config.kpi_key);
    for _ in 0..5 {
        let mut core = app.core_within(budget).session()?;
        let rows = core.read_csv(&combined)?;
        let page = core.render_html(&report_request(app, bucket, rows))?;
        put(app, bucket, &key, HTML, page, None, budget).await?;
        match get(app, bucket, &app.config.kpi_key, budget).await? {
            Some((now, _)) if now != combined => combined = now,
            _ => return Ok(key),
        }
    }
    Err(Error::Contended(
        "the combined CSV kept changing while this run published its report page".into(),
    ))
}

/// The page request for the combined CSV's rows: every day it holds. Only the provenance's
/// host and inputs and the accounting note differ from the CLI's page of the same events; the
/// pipeline's accounting lives in CloudWatch, not in a table the KPI job reads.
pub fn report_request(app: &App, bucket: &str, rows: Vec<DayKpi>) -> ReportRequest {
    ReportRequest {
        zone: app.config.timezone.clone(),
        from: None,
        to: None,
        rows,
        accounting: None,
        provenance: Provenance {
            host: concat!("tripflow KPI function ", env!("CARGO_PKG_VERSION")).to_owned(),
            component_sha256: app.core.fingerprint(),
            inputs: vec![
                format!("dynamodb://{}/DONE manifests", app.config.table),
                format!("s3://{bucket}/{}", app.config.kpi_key),
            ],
            accounting_note: "The pipeline counts events in, stored, duplicates, rejected by \
                reason, trips completed and orphaned as CloudWatch metrics: see the stack's \
                dashboard (tripflow-<stack name>). Rejected records, with their original bytes, \
                are in the dead-letter queue."
                .to_owned(),
        },
    }
}

/// `(first, last)` of each run of consecutive days.
pub fn consecutive(days: &BTreeSet<NaiveDate>) -> Vec<(NaiveDate, NaiveDate)> {
    let mut out: Vec<(NaiveDate, NaiveDate)> = Vec::new();
    for &d in days {
        match out.last_mut() {
            Some((_, last)) if last.succ_opt() == Some(d) => *last = d,
            _ => out.push((d, d)),
        }
    }
    out
}

/// The KPI rows of the local days `from..=to`, and the trips read for them.
async fn compute(
    app: &App,
    zone: &str,
    from: NaiveDate,
    to: NaiveDate,
    budget: &Budget,
) -> Result<(Vec<DayKpi>, u64), Error> {
    // Every closed trip whose start's UTC date can be a local day in the range; the core's
    // `accumulate` decides which of them count.
    let first = previous_day(from)?;
    let last = next_day(to)?;
    let mut totals: Vec<DayTotals> = Vec::new();
    let mut chunk: Vec<TripFare> = Vec::with_capacity(CHUNK);
    let mut trips_read = 0u64;
    let mut day = first;
    while day <= last {
        let entries: Vec<DoneEntry> =
            manifest::read(app, "kpi.done", Kind::Done, &day.to_string(), budget).await?;
        // A trip filed twice (a retried matcher batch) counts once; all its filings are under
        // its start's date, so one day's ids are enough to tell.
        let mut seen: HashSet<String> = HashSet::with_capacity(entries.len());
        for entry in entries {
            if !seen.insert(entry.trip_id) {
                continue;
            }
            chunk.push(TripFare {
                status: entry.status,
                start_ns: entry.start_ns,
                fare_cents: entry.fare_cents,
            });
            trips_read += 1;
            if chunk.len() == CHUNK {
                totals = app
                    .core_within(budget)
                    .session()?
                    .accumulate(zone, &totals, &chunk)?;
                chunk.clear();
            }
        }
        day = next_day(day)?;
    }
    if !chunk.is_empty() {
        totals = app
            .core_within(budget)
            .session()?
            .accumulate(zone, &totals, &chunk)?;
    }
    let rows = app.core_within(budget).session()?.finish(
        &totals,
        Some(&from.to_string()),
        Some(&to.to_string()),
    )?;
    Ok((rows, trips_read))
}

/// The combined CSV: by date, the rows of `previous` for days not in `recomputed` and `rows`,
/// read and rendered by the core (`report.read-csv`, `kpi.render-csv`).
pub fn merge<C: TripCore>(
    previous: Option<&str>,
    rows: &[DayKpi],
    recomputed: &BTreeSet<String>,
    core: &mut C,
) -> Result<String, Error> {
    let mut merged: Vec<DayKpi> = match previous {
        Some(csv) => core
            .read_csv(csv)
            .map_err(|e| {
                Error::Unreadable(format!(
                    "the existing combined CSV cannot be read ({e}): move it away or set KPI_KEY"
                ))
            })?
            .into_iter()
            .filter(|row| !recomputed.contains(&row.date))
            .collect(),
        None => Vec::new(),
    };
    merged.extend(rows.iter().cloned());
    merged.sort_by(|a, b| a.date.cmp(&b.date));
    Ok(core.render_csv(&merged)?)
}

/// Why a put did not happen.
#[derive(Debug)]
enum Put {
    /// The object is no longer the version the write was conditional on.
    Conflict,
    /// Anything else.
    Failed(Error),
}

impl From<Put> for Error {
    fn from(p: Put) -> Error {
        match p {
            Put::Conflict => {
                Error::Contended("the combined CSV kept changing while this run merged it".into())
            }
            Put::Failed(e) => e,
        }
    }
}

/// Writes an object; with `expect`, only if it is still that version: `Some(etag)` (If-Match)
/// or `None` (If-None-Match: it must not exist yet).
async fn put(
    app: &App,
    bucket: &str,
    key: &str,
    content_type: &str,
    body: String,
    expect: Option<Option<&str>>,
    budget: &Budget,
) -> Result<(), Put> {
    let r = retry(budget, "PutObject", || {
        let req = app
            .s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(body.clone().into_bytes().into());
        let req = match expect {
            None => req,
            Some(Some(etag)) => req.if_match(etag),
            Some(None) => req.if_none_match("*"),
        };
        req.send()
    })
    .await;
    match r {
        Ok(_) => Ok(()),
        Err(aws_sdk_s3::error::SdkError::ServiceError(s))
            if matches!(s.raw().status().as_u16(), 409 | 412) =>
        {
            Err(Put::Conflict)
        }
        Err(e) => Err(Put::Failed(Error::aws(
            format!("PutObject s3://{bucket}/{key}"),
            &e,
        ))),
    }
}

/// An object's text and ETag, or `None` when it does not exist.
async fn get(
    app: &App,
    bucket: &str,
    key: &str,
    budget: &Budget,
) -> Result<Option<(String, String)>, Error> {
    let r = retry(budget, "GetObject", || {
        app.s3.get_object().bucket(bucket).key(key).send()
    })
    .await;
    match r {
        Ok(out) => {
            let etag = out.e_tag().unwrap_or_default().to_owned();
            let bytes = out
                .body
                .collect()
                .await
                .map_err(|e| Error::Aws {
                    call: format!("GetObject s3://{bucket}/{key}"),
                    error: e.to_string(),
                })?
                .into_bytes();
            let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                Error::Unreadable(format!(
                    "s3://{bucket}/{key} is not UTF-8 text: move it away or set KPI_KEY"
                ))
            })?;
            Ok(Some((text, etag)))
        }
        Err(aws_sdk_s3::error::SdkError::ServiceError(s)) if s.err().is_no_such_key() => Ok(None),
        Err(e) => Err(Error::aws(format!("GetObject s3://{bucket}/{key}"), &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripflow_runtime::NativeCore;

    fn days(d: &[&str]) -> BTreeSet<String> {
        d.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn consecutive_days_make_one_range() {
        let d = |s: &str| parse_date(s).unwrap();
        let set: BTreeSet<NaiveDate> = ["2019-03-01", "2019-03-02", "2019-03-05", "2018-12-31"]
            .iter()
            .map(|s| d(s))
            .collect();
        assert_eq!(
            consecutive(&set),
            [
                (d("2018-12-31"), d("2018-12-31")),
                (d("2019-03-01"), d("2019-03-02")),
                (d("2019-03-05"), d("2019-03-05"))
            ]
        );
        assert!(consecutive(&BTreeSet::new()).is_empty());
    }

    fn row(date: &str, n: u64) -> DayKpi {
        DayKpi {
            date: date.into(),
            trip_count: n,
            total_cents: 100 * n as i64,
            average_cents: 100,
            min_cents: 100,
            max_cents: 100,
        }
    }

    #[test]
    fn merge_replaces_only_recomputed_days() {
        let mut core = NativeCore;
        let before = core
            .render_csv(&[
                row("2019-03-01", 1),
                row("2019-03-02", 2),
                row("2019-03-04", 4),
            ])
            .unwrap();
        let merged = merge(
            Some(&before),
            &[row("2019-03-02", 20), row("2019-03-03", 3)],
            &days(&["2019-03-02", "2019-03-03"]),
            &mut core,
        )
        .unwrap();
        let expected = core
            .render_csv(&[
                row("2019-03-01", 1),
                row("2019-03-02", 20),
                row("2019-03-03", 3),
                row("2019-03-04", 4),
            ])
            .unwrap();
        assert_eq!(merged, expected);
        // No previous file: just the rows.
        let fresh = merge(
            None,
            &[row("2019-03-02", 2)],
            &days(&["2019-03-01", "2019-03-02"]),
            &mut core,
        )
        .unwrap();
        assert_eq!(fresh, core.render_csv(&[row("2019-03-02", 2)]).unwrap());
        // A foreign file is not silently overwritten.
        assert!(merge(Some("a,b\n1,2\n"), &[], &days(&["2019-03-01"]), &mut core).is_err());
    }
}
