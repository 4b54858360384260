//! `tripflow partition …`: the stages of a replay as a distributed engine runs them, one process
//! per piece of work (the Spark host's workers). Frames in on stdin, frames out on stdout; see
//! `tripflow_store::partition` for the stages and the frame format.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use tripflow_runtime::core::Clock;
use tripflow_runtime::{CoreProvider, TripCore};
use tripflow_store::export;
use tripflow_store::partition::{self, FinishOptions, Split};

/// The stages (internal: the Spark host runs them; people run `scripts/tripflow-spark`).
#[derive(Subcommand, Debug)]
pub enum Stage {
    /// Parse one split of one input; write its events by bucket, its rejects and its counts.
    Parse {
        /// The input's index in the order the inputs were given.
        #[arg(long, value_name = "I")]
        input_index: u32,
        /// The input's name, as quarantine lines show it.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// The split's first byte.
        #[arg(long, default_value_t = 0, value_name = "BYTE")]
        start: u64,
        /// The byte after the split (default: the end of the input).
        #[arg(long, value_name = "BYTE")]
        end: Option<u64>,
        /// Line feeds in the input before --start.
        #[arg(long, default_value_t = 0, value_name = "N")]
        newlines_before: u64,
        /// Buckets to spread the trips over.
        #[arg(long, value_name = "N")]
        buckets: u32,
        /// The bucket that receives this split's rejects and counts.
        #[arg(long, default_value_t = 0, value_name = "B")]
        home: u32,
        /// The input is a data file of a table export: its line of `manifest-files.json`
        /// (JSON), which its bytes are checked against before the core renders its trip items
        /// as events. The whole file is one split.
        #[arg(long, value_name = "JSON")]
        export_entry: Option<String>,
        /// The input file; `-` reads standard input, which must then begin at byte
        /// max(--start − 1, 0).
        #[arg(value_name = "FILE")]
        file: String,
    },
    /// Read and check a table export's manifests in DIR (the data files may be elsewhere);
    /// print one JSON line per data file: its path under the export and its manifest line.
    ExportFiles {
        /// Refuse an export of any other table.
        #[arg(long, value_name = "NAME")]
        table: Option<String>,
        /// The directory holding the manifests (manifest-summary.json, manifest-files.json
        /// and their .checksum files).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Resolve one bucket: frames on stdin (names, events, rejects, tallies).
    Resolve {
        /// IANA time zone of the KPI days.
        #[arg(long, value_name = "ZONE")]
        timezone: String,
        /// The arrival time of every event, ns since the epoch (the job's start).
        #[arg(long, value_name = "NS", allow_negative_numbers = true)]
        arrival_ns: i64,
        /// As `tripflow replay --max-clock-skew`.
        #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = tripflow_store::parse_duration)]
        max_clock_skew: i64,
    },
    /// Mark the orphans among open trips (frames on stdin).
    Sweep {
        /// The newest event time of the whole input, ns.
        #[arg(long, value_name = "NS", allow_negative_numbers = true)]
        newest_ns: i64,
        /// As `tripflow sweep --older-than`.
        #[arg(long, value_name = "DURATION", value_parser = tripflow_store::parse_duration)]
        older_than: i64,
    },
    /// Add everything up (frames on stdin): KPIs, report page, summary.
    Finish {
        /// IANA time zone of the KPI days.
        #[arg(long, value_name = "ZONE")]
        timezone: String,
        /// First KPI day, YYYY-MM-DD.
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        /// Last KPI day, YYYY-MM-DD.
        #[arg(long, value_name = "DATE")]
        to: Option<String>,
        /// The quarantine lines, in input order.
        #[arg(long, value_name = "FILE")]
        quarantine: PathBuf,
        /// Write the KPI CSV here.
        #[arg(long, value_name = "FILE")]
        kpi_out: Option<PathBuf>,
        /// Write the report page here.
        #[arg(long, value_name = "FILE.html")]
        report: Option<PathBuf>,
        /// Write the pipeline's S3 layout under this directory: `kpi_daily/date=…/…csv`, the
        /// combined `kpi_results/daily_trip_kpis.csv` (merged into --previous-combined) and
        /// its page.
        #[arg(long, value_name = "DIR")]
        layout: Option<PathBuf>,
        /// The combined CSV already published, whose other days are kept.
        #[arg(long, value_name = "FILE", requires = "layout")]
        previous_combined: Option<PathBuf>,
        /// Write the sweep (as `tripflow sweep --json`) here.
        #[arg(long, value_name = "FILE")]
        sweep_out: Option<PathBuf>,
        /// Whether the open trips were swept.
        #[arg(long)]
        swept: bool,
        /// The inputs' names, in order.
        #[arg(long = "input", value_name = "NAME")]
        inputs: Vec<String>,
        /// Who renders the page.
        #[arg(long, default_value = concat!("tripflow-spark ", env!("CARGO_PKG_VERSION")))]
        host: String,
    },
}

/// Runs a stage with `core`.
pub fn run<P: CoreProvider>(stage: &Stage, core: &P) -> Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    match stage {
        Stage::Parse {
            input_index,
            name,
            start,
            end,
            newlines_before,
            buckets,
            home,
            export_entry,
            file,
        } => {
            if *buckets == 0 {
                bail!("--buckets must be at least 1");
            }
            let split = Split {
                input: *input_index,
                name: name.clone(),
                start: *start,
                end: *end,
                newlines_before: *newlines_before,
                buckets: *buckets,
                home: *home,
            };
            let reader = open_split(file, *start)?;
            if export_entry.is_some() && (*start != 0 || end.is_some()) {
                bail!("a data file of a table export is one split: no --start or --end");
            }
            let reader: Box<dyn BufRead + Send> = if let Some(entry) = export_entry {
                let entry: export::ManifestFile = serde_json::from_str(entry)
                    .with_context(|| format!("--export-entry {entry:?} is not a manifest line"))?;
                let (ndjson, _) = export::render_data_reader(core, name, reader, &entry)?;
                Box::new(io::Cursor::new(ndjson))
            } else if *start == 0 && end.is_none() {
                tripflow_store::gunzip_if_compressed(reader)
                    .with_context(|| format!("reading {name}"))?
            } else {
                reader
            };
            partition::parse_split(core, &split, reader, &mut out)?;
        }
        Stage::ExportFiles { table, dir } => {
            let export = export::Export::open_manifests(dir, table.as_deref())?;
            // Paths under DIR, which may hold the export in AWSDynamoDB/<export id>/.
            let under = export.dir.strip_prefix(dir).unwrap_or(Path::new(""));
            for f in &export.manifest.files {
                let path = under.join(f.relative_path());
                let line = serde_json::json!({ "path": path, "entry": f });
                writeln!(out, "{line}")?;
            }
        }
        Stage::Resolve {
            timezone,
            arrival_ns,
            max_clock_skew,
        } => {
            let frames = partition::read_frames(&mut io::stdin().lock())?;
            let clock = Clock {
                arrival_ns: *arrival_ns,
                max_skew_ns: *max_clock_skew,
            };
            partition::resolve_bucket(core, timezone, clock, frames, &mut out)?;
        }
        Stage::Sweep {
            newest_ns,
            older_than,
        } => {
            let frames = partition::read_frames(&mut io::stdin().lock())?;
            partition::sweep_open(core, *newest_ns, *older_than, frames, &mut out)?;
        }
        Stage::Finish {
            timezone,
            from,
            to,
            quarantine,
            kpi_out,
            report,
            layout,
            previous_combined,
            sweep_out,
            swept,
            inputs,
            host,
        } => {
            let frames = partition::read_frames(&mut io::stdin().lock())?;
            let mut lines = BufReader::new(File::open(quarantine).with_context(|| {
                format!("cannot read the quarantine lines {}", quarantine.display())
            })?);
            let opts = FinishOptions {
                zone: timezone.clone(),
                from: from.clone(),
                to: to.clone(),
                inputs: inputs.clone(),
                host: host.clone(),
                swept: *swept,
            };
            let done = partition::finish(core, frames, &mut lines, &opts)?;
            if let Some(path) = kpi_out {
                write(path, done.csv.as_bytes())?;
            }
            let page = match (report, layout) {
                (None, None) => String::new(),
                _ => core.session()?.render_html(&done.request)?,
            };
            if let Some(path) = report {
                write(path, page.as_bytes())?;
            }
            if let (Some(path), Some(sweep)) = (sweep_out, &done.sweep) {
                write(path, &serde_json::to_vec_pretty(sweep)?)?;
            }
            if let Some(dir) = layout {
                let previous = previous_combined
                    .as_ref()
                    .map(|p| {
                        std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))
                    })
                    .transpose()?;
                write_layout(core, dir, &done, &page, previous.as_deref(), &opts)?;
            }
            serde_json::to_writer_pretty(&mut out, &done.summary)?;
            writeln!(out)?;
        }
    }
    out.flush().context("writing to stdout")
}

/// The input from byte `max(start − 1, 0)` on.
fn open_split(file: &str, start: u64) -> Result<Box<dyn BufRead + Send>> {
    if file == "-" {
        return Ok(Box::new(BufReader::with_capacity(1 << 20, io::stdin())));
    }
    let mut f = File::open(file).with_context(|| format!("cannot read {file}: check the path"))?;
    f.seek(SeekFrom::Start(start.saturating_sub(1)))
        .with_context(|| format!("seeking in {file}"))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
}

/// The pipeline's layout of the KPIs, as the KPI function publishes them: one object per day,
/// the combined CSV (days of `previous` outside the range this job computed are kept) and its
/// report page.
fn write_layout<P: CoreProvider>(
    core: &P,
    dir: &Path,
    done: &partition::Finished,
    page: &str,
    previous: Option<&str>,
    opts: &FinishOptions,
) -> Result<()> {
    let mut session = core.session()?;
    for row in &done.rows {
        let day = dir.join(format!("kpi_daily/date={}", row.date));
        std::fs::create_dir_all(&day).with_context(|| format!("creating {}", day.display()))?;
        write(
            &day.join("daily_trip_kpis.csv"),
            session.render_csv(std::slice::from_ref(row))?.as_bytes(),
        )?;
    }
    // The days this job owns: its range, or the first to the last day it found trips on.
    let first = opts
        .from
        .clone()
        .or_else(|| done.rows.first().map(|r| r.date.clone()));
    let last = opts
        .to
        .clone()
        .or_else(|| done.rows.last().map(|r| r.date.clone()));
    let mut rows = match previous {
        Some(text) => session.read_csv(text)?,
        None => Vec::new(),
    };
    rows.retain(|r| {
        let inside = first.as_deref().is_some_and(|f| r.date.as_str() >= f)
            && last.as_deref().is_some_and(|l| r.date.as_str() <= l);
        !inside
    });
    rows.extend(done.rows.iter().cloned());
    rows.sort_by(|a, b| a.date.cmp(&b.date));
    let combined = session.render_csv(&rows)?;
    let results = dir.join("kpi_results");
    std::fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    write(&results.join("daily_trip_kpis.csv"), combined.as_bytes())?;
    // The page of the combined file: every day it holds. With days published before, the
    // accounting would cover only some of them, so the page then shows none, as the KPI
    // function's page does.
    let page = if previous.is_some() {
        let mut request = done.request.clone();
        request.rows = rows;
        request.from = None;
        request.to = None;
        request.accounting = None;
        request.provenance.accounting_note = "Days computed by this backfill are merged into a \
            combined file published before; the backfill's own accounting is in its summary."
            .to_owned();
        session.render_html(&request)?
    } else {
        page.to_owned()
    };
    write(&results.join("daily_trip_kpis.html"), page.as_bytes())?;
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| {
        format!(
            "cannot write {}: check the directory exists and is writable",
            path.display()
        )
    })
}
