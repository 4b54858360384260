//! The conformance runner: every case under `fixtures/cases` against one build of the core.
//!
//! A case is a folder:
//!
//! ```text
//! case.json              optional: {"description", "timezone", "sweep_older_than", "kpi_from", "kpi_to"}
//! input-1.ndjson ...     replayed in name order, one `replay` each, into one fresh store
//! expected/kpi.csv       the KPI CSV, byte for byte
//! expected/quarantine.tsv  one line per rejected record: source:line <TAB> reason <TAB> detail
//! expected/summary.json  each replay's counts, the sweep's orphans and the final store counts
//! ```
//!
//! The runner drives the same jobs as the `tripflow` CLI (`tripflow_store`), so a passing case
//! is a statement about the CLI with that component. `BLESS=1` rewrites the expectations from
//! the actual results; review the diff before committing it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::json;
use similar::TextDiff;
use tripflow_runtime::CoreProvider;
use tripflow_store::{Input, KpiOptions, ReplayOptions, StateDir};

/// The optional `case.json`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseConfig {
    /// What the case shows.
    #[serde(default)]
    pub description: String,
    /// KPI time zone (default UTC).
    pub timezone: Option<String>,
    /// Run a sweep with this `--older-than` after the replays.
    pub sweep_older_than: Option<String>,
    /// KPI range start.
    pub kpi_from: Option<String>,
    /// KPI range end.
    pub kpi_to: Option<String>,
    /// Lines per core call (default: the CLI's); small values exercise batch boundaries.
    pub batch_lines: Option<usize>,
}

/// The three results a case checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actual {
    /// `kpi.csv`.
    pub kpi_csv: String,
    /// `quarantine.tsv`.
    pub quarantine: String,
    /// `summary.json`.
    pub summary: String,
}

impl Actual {
    fn files(&self) -> [(&'static str, &str); 3] {
        [
            ("kpi.csv", &self.kpi_csv),
            ("quarantine.tsv", &self.quarantine),
            ("summary.json", &self.summary),
        ]
    }
}

/// How one case went.
#[derive(Debug)]
pub struct CaseResult {
    /// The case folder's name.
    pub name: String,
    /// Unified diffs of each expectation that did not match (empty: pass).
    pub diffs: Vec<String>,
    /// Whether the expectations were rewritten.
    pub blessed: bool,
}

impl CaseResult {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.diffs.is_empty()
    }
}

/// The case folders under `dir`, by name.
pub fn discover(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "cannot read the cases folder {}: pass --cases DIR",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    if cases.is_empty() {
        bail!("no cases in {}", dir.display());
    }
    Ok(cases)
}

/// Runs one case and compares (or, with `bless`, rewrites) its expectations.
pub fn check_case<P: CoreProvider>(core: &P, case: &Path, bless: bool) -> Result<CaseResult> {
    let name = case
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let actual = run_case(core, case).with_context(|| format!("case {name}"))?;
    let expected_dir = case.join("expected");
    let mut diffs = Vec::new();
    for (file, text) in actual.files() {
        let path = expected_dir.join(file);
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != text {
            let diff = TextDiff::from_lines(expected.as_str(), text)
                .unified_diff()
                .context_radius(2)
                .header(&format!("expected/{file}"), &format!("actual/{file}"))
                .to_string();
            diffs.push(diff);
        }
    }
    if bless && !diffs.is_empty() {
        std::fs::create_dir_all(&expected_dir)?;
        for (file, text) in actual.files() {
            std::fs::write(expected_dir.join(file), text)?;
        }
        return Ok(CaseResult {
            name,
            diffs: Vec::new(),
            blessed: true,
        });
    }
    Ok(CaseResult {
        name,
        diffs,
        blessed: false,
    })
}

/// Runs a case into a fresh store and renders what it checks.
pub fn run_case<P: CoreProvider>(core: &P, case: &Path) -> Result<Actual> {
    let config: CaseConfig = match std::fs::read(case.join("case.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).context("reading case.json")?,
        Err(_) => CaseConfig::default(),
    };
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(case)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with("input") && n.ends_with(".ndjson")
        })
        .collect();
    inputs.sort();
    if inputs.is_empty() {
        bail!("no input*.ndjson files");
    }

    let dir = tempfile::tempdir()?;
    let mut state = StateDir::open(dir.path())?;
    let opts = ReplayOptions {
        batch_lines: config
            .batch_lines
            .unwrap_or(ReplayOptions::default().batch_lines),
        ..ReplayOptions::default()
    };
    let mut quarantine = Vec::new();
    let mut replays = Vec::new();
    for path in &inputs {
        let input = Input {
            name: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            source: tripflow_store::InputSource::File(path.clone()),
        };
        let mut records = Vec::new();
        let summary =
            tripflow_store::replay(core, &mut state, &[input], &opts, Some(&mut records), &())?;
        for line in records.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line)?;
            quarantine.push(format!(
                "{}:{}\t{}\t{}\n",
                v["source"].as_str().unwrap_or_default(),
                v["line"],
                v["reason"].as_str().unwrap_or_default(),
                v["detail"].as_str().unwrap_or_default()
            ));
        }
        let mut counts = serde_json::to_value(&summary)?;
        if let Some(obj) = counts.as_object_mut() {
            obj.remove("store");
            if let Some(rejected) = obj.get_mut("rejected").and_then(|r| r.as_object_mut()) {
                rejected.retain(|_, n| n.as_u64() != Some(0));
            }
        }
        replays.push(json!({ "file": path.file_name().unwrap_or_default().to_string_lossy(), "counts": counts }));
    }

    let sweep = match &config.sweep_older_than {
        Some(text) => {
            let older = tripflow_store::parse_duration(text).map_err(anyhow::Error::msg)?;
            let report = tripflow_store::sweep(core, &mut state, older)?;
            json!({ "older_than": text, "orphans": report.orphans, "still_open": report.still_open })
        }
        None => serde_json::Value::Null,
    };
    let kpi = tripflow_store::kpi(
        core,
        &state,
        &KpiOptions {
            zone: config.timezone.clone().unwrap_or_else(|| "UTC".to_owned()),
            from: config.kpi_from.clone(),
            to: config.kpi_to.clone(),
        },
    )?;
    let mut summary = json!({ "replays": replays, "store": state.totals()? });
    if !sweep.is_null() {
        summary["sweep"] = sweep;
    }
    Ok(Actual {
        kpi_csv: kpi.csv,
        quarantine: quarantine.concat(),
        summary: format!("{}\n", serde_json::to_string_pretty(&summary)?),
    })
}

/// The test fixture component: the core with one deliberately changed rule (a trip whose fare
/// is over 100.00 is `invalid`), for the tests of `tripflow diff`. `$TRIPFLOW_FIXTURE_COMPONENT`
/// when set (the test command builds it once), else built now by
/// `scripts/build-fixture-component.sh` into its own target directory.
pub fn changed_rule_component() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TRIPFLOW_FIXTURE_COMPONENT") {
        return Ok(PathBuf::from(path));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(repo.join("scripts/build-fixture-component.sh"))
        .current_dir(&repo);
    // A nested cargo must not inherit the outer build's settings.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .output()
        .context("running scripts/build-fixture-component.sh")?;
    if !out.status.success() {
        bail!(
            "building the fixture component failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = String::from_utf8(out.stdout)?.trim().to_owned();
    Ok(repo.join(path))
}
