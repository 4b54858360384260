//! `tripflow audit`: production's own events back through the component, and its published
//! KPIs held against what they mean.
//!
//! The events are the pipeline table's, from an export ([`crate::export`]); the records the
//! pipeline kept instead of storing are the rejected-records queue's messages (a file of
//! [`DlqMessage`]s). Both are replayed, export first, into a temporary store: every exported
//! event must be stored again, and every kept record rejected again for the reason the pipeline
//! gave (a conflicting duplicate conflicts with the stored copy it conflicted with in
//! production). Then the KPIs are recomputed and lined up with the published combined CSV,
//! which the core reads back (`report.read-csv`). The audit is identical when all three agree.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use tripflow_runtime::core::Reason;
use tripflow_runtime::fate::DlqMessage;
use tripflow_runtime::{CoreProvider, TripCore};

use crate::compare::{DayChange, kpi_changes};
use crate::db::StateDir;
use crate::error::{Error, IoContext};
use crate::export::{Export, ManifestSummary};
use crate::input::{Input, InputSource};
use crate::kpi::{KpiOptions, kpi};
use crate::replay::{ReplayOptions, Summary, replay};

/// Kept records that are not replayed, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotReplayed {
    /// Records the pipeline could not store or decide (`store_refused`, `core_failure`): the
    /// pipeline counted them in no KPI, and the audit does not either.
    pub not_decided: BTreeMap<String, u64>,
    /// Records with a line feed inside, which an NDJSON replay would read as several records;
    /// counted under their kept reason.
    pub multi_line: BTreeMap<String, u64>,
}

/// A kept record the replay rejected for another reason, or stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectMismatch {
    /// `<shard id>/<sequence number>`.
    pub record: String,
    /// The pipeline's reason.
    pub kept: String,
    /// The replay's: a reason code, or `stored`.
    pub replayed: String,
}

/// What the audit found.
#[derive(Clone, Debug)]
pub struct AuditReport {
    /// The export's summary manifest.
    pub export: ManifestSummary,
    /// Its data files.
    pub data_files: usize,
    /// Kept records read, by the pipeline's reason.
    pub kept: BTreeMap<String, u64>,
    /// Kept records left out of the replay.
    pub not_replayed: NotReplayed,
    /// The replay of the export's events, then the kept records.
    pub summary: Summary,
    /// Events read from the export (every one must be stored again).
    pub exported_events: u64,
    /// Kept records rejected for another reason than the pipeline's, or stored.
    pub reject_mismatches: Vec<RejectMismatch>,
    /// Days in the published CSV (in range).
    pub published_days: usize,
    /// Days recomputed (in range).
    pub recomputed_days: usize,
    /// Days whose published and recomputed rows differ (`old`: published, `new`: recomputed).
    pub days: Vec<DayChange>,
    /// The recomputed KPI CSV.
    pub recomputed_csv: String,
}

impl AuditReport {
    /// Whether the published KPIs are what the exported events mean, with the same accounting.
    pub fn identical(&self) -> bool {
        self.days.is_empty()
            && self.reject_mismatches.is_empty()
            && self.summary.stored == self.exported_events
    }
}

/// Reads a file of kept records: one DLQ message (JSON) per line; copies of one record (the
/// queue is at-least-once) are kept once.
pub fn read_kept(path: &Path) -> Result<Vec<DlqMessage>, Error> {
    let text = std::fs::read_to_string(path).io(|| {
        format!(
            "cannot read {}: pass the file `tripflow-local rejects` wrote",
            path.display()
        )
    })?;
    let mut by_record: BTreeMap<(String, String), DlqMessage> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let m: DlqMessage = serde_json::from_str(line).map_err(|e| {
            Error::Input(format!(
                "{} line {}: not a rejected-records queue message ({e}); pass the file \
                 `tripflow-local rejects` wrote",
                path.display(),
                n + 1
            ))
        })?;
        by_record.insert((m.shard_id.clone(), m.sequence_number.clone()), m);
    }
    Ok(by_record.into_values().collect())
}

/// Writes `kept` as the file [`read_kept`] reads: one DLQ message (JSON) per line.
pub fn write_kept(path: &Path, kept: &[DlqMessage]) -> Result<(), Error> {
    let mut text = Vec::new();
    for m in kept {
        serde_json::to_writer(&mut text, m).expect("a DLQ message serialises");
        text.push(b'\n');
    }
    std::fs::write(path, text).io(|| format!("cannot write {}", path.display()))
}

/// Audits `published_csv` (the combined KPI CSV) against the events of `export` and the
/// records the pipeline kept, through `provider`, in a temporary store.
pub fn audit<P: CoreProvider>(
    provider: &P,
    export: &Export,
    kept: &[DlqMessage],
    published_csv: &str,
    opts: &KpiOptions,
) -> Result<AuditReport, Error> {
    let mut core = provider.session()?;
    core.check_time_zone(&opts.zone)?;
    // The published CSV is read by the core before any work, so a wrong file costs nothing.
    let mut published = core.read_csv(published_csv)?;

    let mut state = StateDir::temporary()?;
    let mut inputs = export.inputs();
    let mut kept_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut not_replayed = NotReplayed::default();
    let mut replayed: Vec<&DlqMessage> = Vec::new();
    let mut lines = Vec::new();
    for m in kept {
        *kept_counts.entry(m.reason.clone()).or_default() += 1;
        let decided = Reason::from_code(&m.reason).is_some_and(|r| Reason::CORE.contains(&r));
        if !decided {
            *not_replayed
                .not_decided
                .entry(m.reason.clone())
                .or_default() += 1;
            continue;
        }
        let raw = m.raw().map_err(Error::Input)?;
        if raw.contains(&b'\n') {
            *not_replayed.multi_line.entry(m.reason.clone()).or_default() += 1;
            continue;
        }
        lines.extend_from_slice(&raw);
        lines.push(b'\n');
        replayed.push(m);
    }
    let kept_file = tempfile::NamedTempFile::new_in(state.path())
        .io(|| "creating a file for the kept records".to_owned())?;
    kept_file
        .as_file()
        .write_all(&lines)
        .io(|| "writing the kept records".to_owned())?;
    const KEPT: &str = "kept records";
    if !replayed.is_empty() {
        inputs.push(Input {
            name: KEPT.to_owned(),
            source: InputSource::File(kept_file.path().to_path_buf()),
        });
    }

    let summary = replay(
        provider,
        &mut state,
        &inputs,
        &ReplayOptions::default(),
        None,
        &(),
    )?;
    let exported_events = summary.records - replayed.len() as u64;

    // Each kept record's fate in the replay: its line in the quarantine, or stored.
    let fates = state.quarantine_reasons(KEPT)?;
    let reject_mismatches = replayed
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let got = fates.get(&(i as u64 + 1)).map_or("stored", String::as_str);
            (got != m.reason).then(|| RejectMismatch {
                record: format!("{}/{}", m.shard_id, m.sequence_number),
                kept: m.reason.clone(),
                replayed: got.to_owned(),
            })
        })
        .collect();

    // The core keeps the recomputed rows to the range; the published ones are kept to it here.
    let kpis = kpi(provider, &state, opts)?;
    published.retain(|r| {
        opts.from.as_deref().is_none_or(|f| r.date.as_str() >= f)
            && opts.to.as_deref().is_none_or(|t| r.date.as_str() <= t)
    });
    let recomputed = &kpis.rows;
    Ok(AuditReport {
        export: export.manifest.summary.clone(),
        data_files: export.manifest.files.len(),
        kept: kept_counts,
        not_replayed,
        exported_events,
        reject_mismatches,
        published_days: published.len(),
        recomputed_days: recomputed.len(),
        days: kpi_changes(&published, recomputed),
        summary,
        recomputed_csv: kpis.csv,
    })
}

impl StateDir {
    /// The reason of every quarantined record of input `source`, by line.
    fn quarantine_reasons(&self, source: &str) -> Result<BTreeMap<u64, String>, Error> {
        use crate::error::DbContext;
        let mut stmt = self
            .conn
            .prepare("SELECT line, reason FROM quarantine WHERE source = ?1")
            .db("reading the quarantine")?;
        let rows: BTreeMap<u64, String> = stmt
            .query_map([source], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
            .db("reading the quarantine")?
            .collect::<Result<_, _>>()
            .db("reading a quarantined record")?;
        Ok(rows)
    }
}
