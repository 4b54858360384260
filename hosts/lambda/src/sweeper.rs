//! sweeper: open trips older than `ORPHAN_AFTER` → orphaned, from the open manifests only.
//!
//! "Older" is measured in event time, as the CLI's `tripflow sweep` does: back from the
//! newest event ingest has stored (the watermark item), so replaying old data does not orphan
//! everything and a stalled producer does not orphan trips that are merely waiting. The core
//! (`matching.sweep`) decides which candidates are orphans.
//!
//! The matcher files every first half under the hour it was opened (`OPEN#<hour>`), every
//! completion under the same hour (`SETTLED#<hour>`), and marks the hour (`SWEEP`/`HOUR#…`)
//! after filing ([`crate::manifest`]). A run reads the marks of the hours up to the cut-off's,
//! oldest first, and for each hour its open entries minus its settled ones: the candidates.
//! An orphan is one conditional update (`SET orphaned_at` if the other half is absent and it
//! is not orphaned yet); a trip completed since it was filed fails the condition and is left
//! to the matcher. Orphans are filed as settled too, and an hour whose candidates are all
//! decided has its mark deleted — on the condition that the matcher did not mark it again
//! meanwhile, so an open half filed late into an old hour (late data) is swept by the next run.
//!
//! If an orphan's other half arrives later, its write completes the trip and the matcher
//! files it like any completion (a reconciliation).

use std::collections::HashSet;

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tripflow_runtime::core::EventKind;
use tripflow_runtime::{CoreProvider, TripCore};

use crate::manifest::{self, Kind, OpenEntry};
use crate::metrics::Counters;
use crate::retry::Budget;
use crate::table::Orphaning;
use crate::{App, Error, table};

/// Orphaning writes in flight at once.
const ORPHAN_CONCURRENCY: usize = 16;

/// Hours one run sweeps at most; the rest wait for the next run, oldest first.
pub const MAX_HOURS_PER_RUN: usize = 24 * 31;

/// Handles one scheduled run.
pub async fn handle(app: &App, budget: &Budget) -> Result<Value, Error> {
    let Some(newest) = table::watermark(app, budget).await? else {
        tracing::info!("no events stored yet; nothing to sweep");
        return Ok(json!({"newest_ns": null, "orphaned": 0}));
    };
    let older_than = app.config.orphan_after_ns;
    let cut = newest.saturating_sub(older_than);
    let upto = manifest::hour_sk(table::hour_of(cut));
    let mut marks = table::marks_under(app, manifest::SWEEP_PK, Some(&upto), budget).await?;
    let deferred = marks.len().saturating_sub(MAX_HOURS_PER_RUN);
    marks.truncate(MAX_HOURS_PER_RUN);
    // Unique per run: names this run's settled filings and its orphan marks.
    let run_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);

    let mut counters = Counters::default();
    let mut candidates = 0usize;
    for (sk, marked) in &marks {
        let Some(hour) = manifest::hour_from_sk(sk) else {
            tracing::warn!(sk = %sk, "not a sweep mark; ignored");
            continue;
        };
        // One hour that cannot be swept now must not keep the others open.
        match sweep_hour(app, hour, newest, older_than, run_ns, &mut counters, budget).await {
            Ok((n, all_decided)) => {
                candidates += n;
                if all_decided {
                    table::clear_mark(app, manifest::SWEEP_PK, sk, marked, budget).await?;
                }
            }
            Err(why) => {
                counters.add("UnsweptHours", 1.0);
                tracing::error!(hour, error = %why, "hour not swept; the next sweep tries again");
            }
        }
    }
    app.emit(&counters);
    tracing::info!(
        hours = marks.len(),
        candidates,
        orphaned = counters.get("Orphaned"),
        "sweep"
    );
    Ok(json!({
        "newest_ns": newest,
        "hours": marks.len(),
        "hours_deferred": deferred,
        "candidates": candidates,
        "orphaned": counters.get("Orphaned") as u64,
        "completed_meanwhile": counters.get("CompletedMeanwhile") as u64,
        "already_orphaned": counters.get("AlreadyOrphaned") as u64,
        "unsettled": counters.get("Unsettled") as u64,
    }))
}

/// Sweeps one opened hour: returns its candidates and whether every one was decided.
async fn sweep_hour(
    app: &App,
    hour: i64,
    newest: i64,
    older_than: i64,
    run_ns: i64,
    counters: &mut Counters,
    budget: &Budget,
) -> Result<(usize, bool), Error> {
    let bucket = hour.to_string();
    let (open, settled) = futures_util::future::try_join(
        manifest::read::<OpenEntry>(app, "sweeper.open", Kind::Open, &bucket, budget),
        manifest::read::<String>(app, "sweeper.settled", Kind::Settled, &bucket, budget),
    )
    .await?;
    let settled: HashSet<String> = settled.into_iter().collect();
    let mut seen = HashSet::new();
    let candidates: Vec<&OpenEntry> = open
        .iter()
        .filter(|e| !settled.contains(&e.0) && seen.insert(e.0.as_str()))
        .collect();
    let timestamps: Vec<i64> = candidates.iter().map(|c| c.2).collect();
    let orphans = app
        .core_within(budget)
        .session()?
        .sweep(&timestamps, newest, older_than)?;

    let mut filed = Vec::new();
    let mut undecided = candidates.len() - orphans.len();
    let mut decided = Vec::with_capacity(orphans.len());
    for i in orphans {
        let (trip_id, half, ts) = candidates[i as usize];
        let kind = match half.as_str() {
            "trip_start" => EventKind::Start,
            "trip_end" => EventKind::End,
            other => {
                return Err(Error::Unreadable(format!(
                    "open entry {trip_id}: half {other:?}"
                )));
            }
        };
        decided.push((trip_id, half, *ts, kind));
    }
    // Orphans are written ORPHAN_CONCURRENCY at a time.
    let decided_ref = &decided;
    let mut outcomes = futures_util::stream::iter((0..decided.len()).map(|k| {
        let (trip_id, _, _, kind) = decided_ref[k];
        table::orphan(app, trip_id, kind, run_ns, budget)
    }))
    .buffered(ORPHAN_CONCURRENCY);
    let mut k = 0;
    while let Some(outcome) = outcomes.next().await {
        let (trip_id, half, ts, _) = decided[k];
        k += 1;
        match outcome {
            Ok(Orphaning::Orphaned) => {
                counters.add("Orphaned", 1.0);
                tracing::info!(trip_id = %trip_id, half, timestamp_ns = ts, "trip orphaned");
                filed.push(trip_id.clone());
            }
            Ok(Orphaning::Before) => {
                counters.add("AlreadyOrphaned", 1.0);
                filed.push(trip_id.clone());
            }
            Ok(Orphaning::Completed) => counters.add("CompletedMeanwhile", 1.0),
            Err(why) => {
                undecided += 1;
                counters.add("Unsettled", 1.0);
                tracing::error!(trip_id = %trip_id, error = %why, "open trip not settled; the next sweep tries again");
            }
        }
    }
    manifest::file(
        app,
        Kind::Settled,
        bucket,
        &format!("sweep#{run_ns}"),
        &filed,
        budget,
    )
    .await?;
    Ok((candidates.len(), undecided == 0))
}
