//! `tripflow`: replay trip events through the tripflow core component into an embedded store,
//! and compute exact daily fare KPIs — the offline twin of the AWS pipeline, deciding with the
//! same component bytes.

mod compare;
mod output;
mod partition;

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tripflow_runtime::{ComponentSource, CoreProvider, Limits, NativeCore, Runtime, TripCore};
use tripflow_store::{Input, KpiOptions, KpiReport, ReplayOptions, ReportOptions, StateDir};

/// Replay taxi trip events through the tripflow core and compute exact daily fare KPIs.
///
/// Events are NDJSON, one per line: trip_id, event_type (trip_start | trip_end), timestamp
/// (RFC 3339 with offset, or Unix seconds) and fare (decimal, on either half); plain or gzip.
/// The store is a state directory: append-only logs of the stored events (with their original
/// bytes) and of the closed trips, a snapshot of the open trips, and a small SQLite database of
/// the logs' committed ends, the inputs read, the quarantine and the orphans. Replays add to
/// it, and replaying the same events again changes nothing.
#[derive(Parser, Debug)]
#[command(name = "tripflow", version, max_term_width = 100)]
struct Cli {
    /// Run this core component (.wasm, or .cwasm from `tripflow component --precompile`)
    /// instead of the one built into this binary. `tripflow diff` takes it twice: OLD, then
    /// NEW.
    #[arg(long, global = true, value_name = "PATH", action = clap::ArgAction::Append)]
    component: Vec<PathBuf>,

    /// Run the core library linked into this binary instead of the component (for
    /// benchmarks and cross-checks; production hosts always run the component).
    #[arg(long, global = true, conflicts_with = "component")]
    native: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Push events from NDJSON files through the core into the store, then print the KPIs.
    Replay(ReplayArgs),
    /// Recompute the KPIs from the store.
    Kpi {
        #[command(flatten)]
        state: StateArg,
        #[command(flatten)]
        days: DaysArg,
        /// Write the KPI CSV to this file (`-` for stdout) instead of printing a table.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Write the KPI report page: one self-contained HTML file (charts, KPI table,
    /// accounting with example rejects, provenance) that opens in any browser, offline.
    Report {
        #[command(flatten)]
        state: StateArg,
        #[command(flatten)]
        days: DaysArg,
        /// Where to write the page.
        #[arg(long, value_name = "FILE.html")]
        out: PathBuf,
    },
    /// Mark open trips that waited too long for their other half as orphans, and list them.
    Sweep {
        #[command(flatten)]
        state: StateArg,
        /// Age, measured back from the newest event in the store, e.g. 6h, 2d, 1h30m.
        #[arg(long, value_name = "DURATION", value_parser = tripflow_store::parse_duration)]
        older_than: i64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check published KPIs against production's own events: replay a DynamoDB export of the
    /// pipeline's table (and the records the pipeline kept) through the component in a
    /// temporary store, and compare the KPIs with the combined CSV the pipeline published.
    ///
    /// Prints "identical", or each day that differs with both rows. Exit status: 0 identical,
    /// 1 different, 2 could not audit (a bad export, file or flag).
    Audit {
        /// The export's directory: the one holding manifest-summary.json, or a copy of the
        /// export prefix with one export under AWSDynamoDB/. `tripflow-local export` writes
        /// one from a table page by page.
        #[arg(value_name = "EXPORT_DIR")]
        export: PathBuf,
        /// The combined KPI CSV the pipeline published (kpi_results/daily_trip_kpis.csv).
        #[arg(long, value_name = "FILE.csv")]
        published: PathBuf,
        /// The rejected records the pipeline kept, one queue message per line (`tripflow-local
        /// rejects` writes them, spilled bytes fetched). Each must be rejected again for the
        /// same reason.
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
        /// Refuse an export of any other table than this one.
        #[arg(long, value_name = "NAME")]
        table: Option<String>,
        #[command(flatten)]
        days: DaysArg,
        /// Also write the recomputed KPI CSV to this file.
        #[arg(long, value_name = "FILE")]
        kpi_out: Option<PathBuf>,
    },
    /// Replay the same events through two components and print each KPI day, trip and record
    /// whose outcome changes, with the events behind it: what a new component would change
    /// before it is deployed.
    ///
    /// `--component OLD --component NEW`, or one `--component NEW` to compare with the
    /// component built into this binary. Exit status: 0 no change, 1 changes, 2 could not
    /// compare.
    Diff {
        /// NDJSON event files (plain or gzip) and DynamoDB export directories, replayed in
        /// order.
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<String>,
        #[command(flatten)]
        days: DaysArg,
        /// Show at most this many days, trips and records of each kind.
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: usize,
    },
    /// Convert other formats into tripflow events (NDJSON on stdout or --out).
    #[command(subcommand)]
    Convert(Convert),
    /// Make realistic synthetic events for tests and benchmarks (NDJSON).
    Generate {
        /// Number of trips (two events each).
        #[arg(long, value_name = "N")]
        trips: u64,
        /// Seed: the same seed gives the same bytes.
        #[arg(long, value_name = "S", default_value_t = 1)]
        seed: u64,
        /// Probability that an event is repeated as an exact duplicate.
        #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = probability)]
        duplicates: f64,
        /// Shuffle all events (otherwise they come in time order).
        #[arg(long)]
        shuffle: bool,
        /// Probability that a bad record follows an event (each rejection reason in turn).
        #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = probability)]
        poison: f64,
        /// Write here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// The stages of a replay as a distributed engine runs them (the Spark host's workers run
    /// these; see hosts/spark and `scripts/tripflow-spark`).
    #[command(subcommand, hide = true)]
    Partition(partition::Stage),
    /// Print the core component's WIT package and sha256, or precompile it.
    Component {
        /// Write the component compiled ahead of time for this host (.cwasm) to this file.
        #[arg(long, value_name = "FILE")]
        precompile: Option<PathBuf>,
        /// Write the component's .wasm bytes to this file.
        #[arg(long, value_name = "FILE")]
        export_wasm: Option<PathBuf>,
    },
}

// What `tripflow replay` takes (the subcommand's help is the variant's doc comment).
#[derive(clap::Args, Debug)]
struct ReplayArgs {
    /// NDJSON event files (plain or gzip), replayed in order; `-` reads standard input. A
    /// directory holding a DynamoDB export of the pipeline's table is read as the events it
    /// stores.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<String>,
    #[command(flatten)]
    state: StateArg,
    /// IANA time zone whose calendar dates are the KPI days.
    #[arg(long, default_value = "UTC", value_name = "ZONE")]
    timezone: String,
    /// Also write the KPI CSV to this file.
    #[arg(long, value_name = "FILE")]
    kpi_out: Option<PathBuf>,
    /// Write this replay's rejected records (reason, detail, original bytes) as NDJSON to
    /// this file. They are always kept in the store too.
    #[arg(long, value_name = "FILE")]
    quarantine: Option<PathBuf>,
    /// Also write the report page of the store after the replay (as `tripflow report`).
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Lines handed to the core per call.
    #[arg(long, default_value_t = 8192, value_name = "N", hide = true)]
    batch_lines: usize,
    /// Threads running the core, each on its own batch; batches still commit one at a
    /// time in input order, so the result is the same for any number [default: the
    /// machine's cores, at most 4].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Events dated more than this after the moment they are read (e.g. 15m, 1h, 2d) are
    /// stored and matched but do not move the event-time clock that `sweep` measures
    /// from, so one device with a broken clock cannot orphan every open trip. The AWS
    /// ingest applies the same rule to each record's Kinesis arrival time.
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = tripflow_store::parse_duration)]
    max_clock_skew: i64,
}

#[derive(Subcommand, Debug)]
enum Convert {
    /// Any CSV with one trip per row: name the columns. Times may be local date-times
    /// (YYYY-MM-DD HH:MM[:SS], read in --timezone), RFC 3339 with an offset, or Unix seconds.
    /// An empty end or duration means the trip has not ended yet (only its start is written).
    #[command(group(clap::ArgGroup::new("trip_end").required(true).args(["end", "duration_seconds"])))]
    Csv {
        /// The CSV file (with a header row).
        #[arg(value_name = "FILE.csv")]
        file: PathBuf,
        /// Column with the trip's start time.
        #[arg(long, value_name = "COL")]
        start: String,
        /// Column with the trip's end time.
        #[arg(long, value_name = "COL")]
        end: Option<String>,
        /// Column with the trip's duration in seconds (instead of --end).
        #[arg(long, value_name = "COL")]
        duration_seconds: Option<String>,
        /// Column with the fare (a decimal, e.g. 12.50).
        #[arg(long, value_name = "COL")]
        fare: String,
        /// Column with the trip id (default: PREFIX-<row number>).
        #[arg(long, value_name = "COL")]
        id: Option<String>,
        /// Trip ids are PREFIX-<row number> when there is no --id.
        #[arg(long, default_value = "trip", value_name = "PREFIX")]
        prefix: String,
        /// IANA time zone of times written without an offset.
        #[arg(long, default_value = "UTC", value_name = "ZONE")]
        timezone: String,
        /// Field delimiter, one character (e.g. ';' or '\t' for a tab).
        #[arg(long, default_value = ",", value_name = "CHAR", value_parser = delimiter)]
        delimiter: u8,
        /// Write here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// NYC TLC trip records (CSV with tpep_pickup_datetime, tpep_dropoff_datetime,
    /// fare_amount in naive New York time) to trip_start/trip_end events with offsets.
    NycTlc {
        /// The TLC CSV file.
        #[arg(value_name = "FILE.csv")]
        file: PathBuf,
        /// Trip ids are PREFIX-<row number>.
        #[arg(long, default_value = "nyc", value_name = "PREFIX")]
        prefix: String,
        /// Write here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// The KPI days: their time zone and range.
#[derive(clap::Args, Debug)]
struct DaysArg {
    /// IANA time zone whose calendar dates are the KPI days.
    #[arg(long, default_value = "UTC", value_name = "ZONE")]
    timezone: String,
    /// First day, YYYY-MM-DD (inclusive; default: the first day with trips).
    #[arg(long, value_name = "DATE")]
    from: Option<String>,
    /// Last day, YYYY-MM-DD (inclusive; default: the last day with trips).
    #[arg(long, value_name = "DATE")]
    to: Option<String>,
}

impl DaysArg {
    fn options(&self) -> KpiOptions {
        KpiOptions {
            zone: self.timezone.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
        }
    }
}

#[derive(clap::Args, Debug)]
struct StateArg {
    /// State directory holding the embedded store.
    #[arg(long = "state", default_value = "tripflow-state", value_name = "DIR")]
    dir: PathBuf,
}

fn delimiter(s: &str) -> Result<u8, String> {
    match s {
        "\\t" | "tab" => Ok(b'\t'),
        _ if s.len() == 1 && s.is_ascii() => Ok(s.as_bytes()[0]),
        _ => Err(format!(
            "{s:?} is not a delimiter: give one ASCII character, e.g. ';', or '\\t' for a tab"
        )),
    }
}

fn probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "{s:?} is not a probability: use a number from 0 to 1, e.g. 0.05"
        )),
    }
}

fn main() {
    keep_batch_buffers_in_the_heap();
    let cli = Cli::parse();
    // `audit` and `diff` say "different" with 1, as diff(1) and cmp(1) do; their errors are 2.
    let error_status = match cli.command {
        Command::Audit { .. } | Command::Diff { .. } => 2,
        _ => 1,
    };
    match run(cli) {
        Ok(0) => {}
        Ok(status) => std::process::exit(status),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(error_status);
        }
    }
}

/// glibc's malloc gives a freed block over its thresholds back to the kernel (128 KiB to
/// start with, adjusted as blocks are freed, and trimmed per thread arena), so the replay's
/// per-batch buffers, about 1 MiB each on three threads, kept landing on fresh pages: 135,000
/// page faults for 2M events, 6.3 s of system time for 10M. Fixed thresholds of 4 MiB (a batch
/// of typical events needs a fraction of it; larger buffers are still mapped and unmapped) and
/// 8 MiB keep them in the heap: 52,000 faults, 3.1 s, and the 10M replay's peak RSS within
/// 1.5 MB of what it was (BENCHMARKS.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_batch_buffers_in_the_heap() {
    // SAFETY: mallopt only sets malloc's parameters; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_batch_buffers_in_the_heap() {}

fn run(cli: Cli) -> Result<i32> {
    if cli.component.len() > 1 && !matches!(cli.command, Command::Diff { .. }) {
        bail!(
            "--component is given {} times; only `tripflow diff` takes two (OLD, then NEW)",
            cli.component.len()
        );
    }
    match &cli.command {
        Command::Convert(Convert::NycTlc { file, prefix, out }) => {
            let input = File::open(file).with_context(|| {
                format!(
                    "cannot read {}: pass the path of a TLC trip CSV",
                    file.display()
                )
            })?;
            let stats = with_output(out.as_deref(), |w| {
                tripflow_core::convert::nyc_tlc(io::BufReader::new(input), w, prefix)
                    .with_context(|| format!("converting {}", file.display()))
            })?;
            eprintln!(
                "tripflow: converted {} rows into {} events",
                stats.rows, stats.events
            );
            Ok(0)
        }
        Command::Convert(Convert::Csv {
            file,
            start,
            end,
            duration_seconds,
            fare,
            id,
            prefix,
            timezone,
            delimiter,
            out,
        }) => {
            use tripflow_core::convert::{CsvMapping, EndColumn};
            let mapping = CsvMapping {
                start: start.clone(),
                end: match (end, duration_seconds) {
                    (Some(c), _) => EndColumn::Time(c.clone()),
                    (None, Some(c)) => EndColumn::DurationSeconds(c.clone()),
                    (None, None) => unreachable!("clap requires --end or --duration-seconds"),
                },
                fare: fare.clone(),
                id: id.clone(),
                prefix: prefix.clone(),
                zone: timezone.clone(),
                delimiter: *delimiter,
            };
            let input = File::open(file).with_context(|| {
                format!(
                    "cannot read {}: pass the path of a CSV of trips",
                    file.display()
                )
            })?;
            let stats = with_output(out.as_deref(), |w| {
                tripflow_core::convert::mapped_csv(io::BufReader::new(input), w, &mapping)
                    .with_context(|| format!("converting {}", file.display()))
            })?;
            eprintln!(
                "tripflow: converted {} rows into {} events",
                stats.rows, stats.events
            );
            Ok(0)
        }
        Command::Generate {
            trips,
            seed,
            duplicates,
            shuffle,
            poison,
            out,
        } => {
            let opts = tripflow_core::generate::GenerateOptions {
                trips: *trips,
                seed: *seed,
                duplicates: *duplicates,
                shuffle: *shuffle,
                poison: *poison,
            };
            let stats = with_output(out.as_deref(), |w| {
                tripflow_core::generate::generate(&opts, w).context("writing generated events")
            })?;
            eprintln!(
                "tripflow: generated {} lines ({} duplicates, {} poison)",
                stats.lines, stats.duplicates, stats.poison
            );
            Ok(0)
        }
        Command::Diff {
            inputs,
            days,
            limit,
        } => {
            if cli.native {
                bail!("`tripflow diff` compares components: pass --component, not --native");
            }
            let (old, new) = match cli.component.as_slice() {
                [new] => (
                    ComponentSource::Embedded,
                    ComponentSource::File(new.clone()),
                ),
                [old, new] => (
                    ComponentSource::File(old.clone()),
                    ComponentSource::File(new.clone()),
                ),
                _ => bail!(
                    "`tripflow diff` needs the component to check: --component NEW (compared \
                     with the built-in one), or --component OLD --component NEW"
                ),
            };
            let old = Runtime::load(&old, Limits::default(), cache_dir().as_deref())?;
            let new = Runtime::load(&new, Limits::default(), cache_dir().as_deref())?;
            compare::diff(&old, &new, inputs, days, *limit)
        }
        _ if cli.native => dispatch(&cli, &NativeCore),
        _ => {
            let source = match cli.component.first() {
                Some(path) => ComponentSource::File(path.clone()),
                None => ComponentSource::Embedded,
            };
            let runtime = Runtime::load(&source, Limits::default(), cache_dir().as_deref())?;
            dispatch(&cli, &runtime)
        }
    }
}

fn dispatch<P: CoreProvider>(cli: &Cli, core: &P) -> Result<i32> {
    match &cli.command {
        Command::Audit {
            export,
            published,
            rejects,
            table,
            days,
            kpi_out,
        } => compare::audit(
            core,
            export,
            published,
            rejects.as_deref(),
            table.as_deref(),
            days,
            kpi_out.as_deref(),
        ),
        Command::Diff { .. } => unreachable!("diff loads its own two components"),
        Command::Replay(args) => replay(core, args).map(|()| 0),
        Command::Kpi { state, days, out } => {
            let state_dir = open_existing(&state.dir)?;
            let report = tripflow_store::kpi(core, &state_dir, &days.options())?;
            match out {
                Some(path) if path.as_os_str() != "-" => write_kpi_csv(path, &report, core)?,
                Some(_) => {
                    eprintln!("tripflow: KPIs computed with {}", core.describe());
                    io::stdout().lock().write_all(report.csv.as_bytes())?
                }
                None => {
                    eprintln!("tripflow: KPIs computed with {}", core.describe());
                    output::print_kpi_table(&mut io::stdout().lock(), &report.rows, &days.timezone)?
                }
            }
            Ok(0)
        }
        Command::Report { state, days, out } => {
            let state_dir = open_existing(&state.dir)?;
            write_report(out, core, &state_dir, days.options()).map(|()| 0)
        }
        Command::Sweep {
            state,
            older_than,
            json,
        } => {
            let mut state_dir = open_existing(&state.dir)?;
            let report = tripflow_store::sweep(core, &mut state_dir, *older_than)?;
            eprintln!("tripflow: swept with {}", core.describe());
            let mut stdout = io::stdout().lock();
            if *json {
                serde_json::to_writer_pretty(&mut stdout, &report)?;
                writeln!(stdout)?;
            } else {
                output::print_sweep(&mut stdout, &report)?;
            }
            Ok(0)
        }
        Command::Component {
            precompile,
            export_wasm,
        } => component(cli, core, precompile.as_deref(), export_wasm.as_deref()).map(|()| 0),
        Command::Partition(stage) => partition::run(stage, core).map(|()| 0),
        Command::Convert(_) | Command::Generate { .. } => {
            unreachable!("handled before loading the core")
        }
    }
}

/// `tripflow replay`: the inputs into the store, then the KPIs (and the report page).
fn replay<P: CoreProvider>(core: &P, args: &ReplayArgs) -> Result<()> {
    let ReplayArgs {
        files,
        state,
        timezone,
        kpi_out,
        quarantine,
        report: report_out,
        json,
        batch_lines,
        threads,
        max_clock_skew,
    } = args;
    core.session()?.check_time_zone(timezone)?;
    let inputs: Vec<Input> = compare::inputs_of(files)?;
    if *batch_lines == 0 {
        bail!("--batch-lines must be at least 1");
    }
    if *threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let mut state_dir = StateDir::open(&state.dir)?;
    let mut quarantine_file = quarantine
        .as_ref()
        .map(|p| create(p).map(BufWriter::new))
        .transpose()?;
    eprintln!("tripflow: replaying with {}", core.describe());
    let progress = output::ProgressBar::for_inputs(&inputs);
    let opts = ReplayOptions {
        batch_lines: *batch_lines,
        max_skew_ns: *max_clock_skew,
        threads: threads.unwrap_or(ReplayOptions::default().threads),
        ..ReplayOptions::default()
    };
    let summary = tripflow_store::replay(
        core,
        &mut state_dir,
        &inputs,
        &opts,
        quarantine_file.as_mut().map(|f| f as &mut dyn Write),
        &progress,
    )?;
    progress.finish();
    let report = tripflow_store::kpi(
        core,
        &state_dir,
        &KpiOptions {
            zone: timezone.clone(),
            ..KpiOptions::default()
        },
    )?;
    if let Some(path) = kpi_out {
        write_kpi_csv(path, &report, core)?;
    }
    if let Some(path) = report_out {
        let opts = KpiOptions {
            zone: timezone.clone(),
            ..KpiOptions::default()
        };
        write_report(path, core, &state_dir, opts)?;
    }
    let mut stdout = io::stdout().lock();
    if *json {
        serde_json::to_writer_pretty(&mut stdout, &summary)?;
        writeln!(stdout)?;
    } else {
        output::print_summary(&mut stdout, &summary, files, quarantine.as_deref())?;
        writeln!(stdout)?;
        output::print_kpi_table(&mut stdout, &report.rows, timezone)?;
    }
    Ok(())
}

/// `tripflow component`: the contract and the component's sha256; writes the component out, or
/// precompiled for this host.
fn component<P: CoreProvider>(
    cli: &Cli,
    core: &P,
    precompile: Option<&Path>,
    export_wasm: Option<&Path>,
) -> Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "package  {}", tripflow_runtime::WIT_PACKAGE)?;
    writeln!(stdout, "runs     {}", core.describe())?;
    let wasm = match cli.component.first() {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => tripflow_runtime::EMBEDDED_COMPONENT.to_vec(),
    };
    if let Some(path) = export_wasm {
        write_file(path, &wasm)?;
        writeln!(stdout, "wrote    {}", path.display())?;
    }
    if let Some(path) = precompile {
        write_file(path, &tripflow_runtime::precompile(&wasm)?)?;
        writeln!(
            stdout,
            "wrote    {} (precompiled for this host)",
            path.display()
        )?;
    }
    Ok(())
}

/// Writes the KPI CSV and logs which core produced it.
fn write_kpi_csv<P: CoreProvider>(path: &Path, report: &KpiReport, core: &P) -> Result<()> {
    write_file(path, report.csv.as_bytes())?;
    eprintln!(
        "tripflow: wrote {} ({} days) with {}",
        path.display(),
        report.rows.len(),
        core.describe()
    );
    Ok(())
}

/// Renders the store's report page to `path` and logs which core rendered it.
fn write_report<P: CoreProvider>(
    path: &Path,
    core: &P,
    state: &StateDir,
    kpi: KpiOptions,
) -> Result<()> {
    let opts = ReportOptions {
        kpi,
        host: concat!("tripflow ", env!("CARGO_PKG_VERSION")).to_owned(),
    };
    let html = tripflow_store::report(core, state, &opts)?;
    write_file(path, html.as_bytes())?;
    eprintln!(
        "tripflow: wrote the report {} ({} KiB) with {}",
        path.display(),
        html.len().div_ceil(1024),
        core.describe()
    );
    Ok(())
}

/// A store that must already exist (kpi and sweep read what replay wrote).
fn open_existing(dir: &Path) -> Result<StateDir> {
    if !dir.join("tripflow.sqlite").is_file() {
        bail!(
            "no tripflow store in {}: run `tripflow replay --state {} FILE...` first, or pass --state DIR",
            dir.display(),
            dir.display()
        );
    }
    Ok(StateDir::open(dir)?)
}

fn create(path: &Path) -> Result<File> {
    File::create(path).with_context(|| {
        format!(
            "cannot write {}: check the directory exists and is writable",
            path.display()
        )
    })
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| {
        format!(
            "cannot write {}: check the directory exists and is writable",
            path.display()
        )
    })
}

fn with_output<T>(out: Option<&Path>, f: impl FnOnce(&mut dyn Write) -> Result<T>) -> Result<T> {
    match out {
        Some(path) => {
            let mut w = BufWriter::new(create(path)?);
            let v = f(&mut w)?;
            w.flush()
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(v)
        }
        None => {
            let stdout = io::stdout();
            let mut w = BufWriter::new(stdout.lock());
            let v = f(&mut w)?;
            w.flush().context("writing to stdout")?;
            Ok(v)
        }
    }
}

/// Where compiled components are cached: `$TRIPFLOW_CACHE_DIR`, else the XDG cache directory.
/// An empty `TRIPFLOW_CACHE_DIR` turns the cache off.
fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TRIPFLOW_CACHE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("tripflow"))
}

/// Whether progress should be drawn.
pub(crate) fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn probabilities_are_checked() {
        assert_eq!(probability("0.25"), Ok(0.25));
        assert!(probability("2").is_err());
        assert!(probability("x").is_err());
    }
}
