//! The one crate that owns wasmtime.
//!
//! It runs `bindgen!` once for `tripflow:core@0.7.0`, defines the single engine configuration
//! used by every host and by the precompiler, loads a component (`.wasm`, or a precompiled
//! `.cwasm`), builds the [`InstancePre`](wasmtime::component::InstancePre) once, and gives every
//! batch a fresh, bounded [`Store`]: a memory cap and an epoch deadline stop a runaway guest
//! with a clear [`CoreError`] instead of taking the host down.
//!
//! Hosts talk to the core through the [`TripCore`] trait, in `tripflow_core`'s own types. The
//! same trait is implemented natively by [`NativeCore`], which is how tests and benchmarks hold
//! the component to the library it was built from.

mod convert;
pub mod fate;
pub mod item;
mod native;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use native::NativeCore;
pub use tripflow_core as core;
use tripflow_core::batch::{BatchResolution, ParsedBatch, StoredEvent};
use tripflow_core::report::ReportRequest;
use tripflow_core::{
    Clock, ClosedTrip, DayKpi, DayTotals, KpiError, Paired, ParseOutcome, Resolution, Span,
    TripEvent, TripFare,
};

#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "core",
    });
}

/// The component this build of the hosts carries, compiled from `core-wasm/` by `build.rs`.
pub const EMBEDDED_COMPONENT: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tripflow_component.wasm"));

/// The WIT package every loadable component must export.
pub const WIT_PACKAGE: &str = tripflow_core::WIT_PACKAGE;

/// Why the core could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The component could not be read, compiled or linked.
    #[error("loading the component {source_name}: {message}")]
    Load {
        /// Where the component came from.
        source_name: String,
        /// What went wrong, with the wasmtime error chain.
        message: String,
    },
    /// The guest ran past its deadline.
    #[error(
        "the core ran longer than {0:?} on one call and was stopped; split the input into smaller batches or raise the deadline"
    )]
    Timeout(Duration),
    /// The guest tried to grow its memory past the cap.
    #[error("the core needed more than {limit_mib} MiB of memory on one call and was stopped")]
    OutOfMemory {
        /// The cap, MiB.
        limit_mib: usize,
    },
    /// The guest trapped (a bug in the core, or a component that does not match this host).
    #[error("the core failed: {message}{}", if stderr.is_empty() { String::new() } else { format!("\nguest stderr:\n{stderr}") })]
    Trapped {
        /// The trap with its wasm backtrace.
        message: String,
        /// What the guest wrote to stderr (its panic message).
        stderr: String,
    },
    /// The core refused a KPI request.
    #[error(transparent)]
    Kpi(#[from] KpiError),
}

/// The operations of the core, in `tripflow_core` types.
///
/// A value is one *session*: with the component it is one fresh store, to be used for one
/// batch and dropped.
pub trait TripCore {
    /// See `events.limits`: records longer than this are `too_large`.
    fn max_record_bytes(&mut self) -> Result<u32, CoreError>;
    /// See `events.parse`.
    fn parse(&mut self, buffer: &[u8], spans: &[Span]) -> Result<Vec<ParseOutcome>, CoreError>;
    /// `events.render`: the events as NDJSON records `parse` reads back as the same events.
    fn render(&mut self, events: &[TripEvent]) -> Result<String, CoreError>;
    /// See `matching.resolve`.
    fn resolve(
        &mut self,
        incoming: &[TripEvent],
        stored: &[TripEvent],
        clock: Clock,
    ) -> Result<Resolution, CoreError>;
    /// See `batches.batch`: parses a batch, asks `lookup` for the stored events of its trip
    /// ids, and resolves the batch against them; the parsed events stay in the core between the
    /// two steps. Decides as [`TripCore::parse`] then [`TripCore::resolve`] over the accepted
    /// events; the resolution's `EventRef::Stored` indexes what `lookup` returned.
    fn parse_resolve<E: From<CoreError>>(
        &mut self,
        buffer: &[u8],
        spans: &[Span],
        clock: Clock,
        lookup: impl FnOnce(&ParsedBatch) -> Result<Vec<StoredEvent>, E>,
    ) -> Result<(ParsedBatch, BatchResolution), E>;
    /// See `matching.pair`: the closed trip a start and an end make.
    fn pair(&mut self, start: &TripEvent, end: &TripEvent) -> Result<ClosedTrip, CoreError>;
    /// See `matching.pair-all`: [`TripCore::pair`] of every trip's `(start, end)`, each with the
    /// UTC date a host files it under.
    fn pair_all(&mut self, trips: &[(TripEvent, TripEvent)]) -> Result<Vec<Paired>, CoreError>;
    /// See `matching.sweep`; `open` holds the timestamp of each open trip's stored half.
    fn sweep(
        &mut self,
        open: &[i64],
        newest_ns: i64,
        older_than_ns: i64,
    ) -> Result<Vec<u32>, CoreError>;
    /// See `kpi.check-time-zone`.
    fn check_time_zone(&mut self, zone: &str) -> Result<(), CoreError>;
    /// See `kpi.day-of`: the calendar day (`YYYY-MM-DD`) of an instant in `zone`.
    fn day_of(&mut self, zone: &str, timestamp_ns: i64) -> Result<String, CoreError>;
    /// See `kpi.accumulate`.
    fn accumulate(
        &mut self,
        zone: &str,
        totals: &[DayTotals],
        trips: &[TripFare],
    ) -> Result<Vec<DayTotals>, CoreError>;
    /// See `kpi.merge`.
    fn merge(&mut self, a: &[DayTotals], b: &[DayTotals]) -> Result<Vec<DayTotals>, CoreError>;
    /// See `kpi.finish`.
    fn finish(
        &mut self,
        totals: &[DayTotals],
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<DayKpi>, CoreError>;
    /// See `kpi.render-csv`.
    fn render_csv(&mut self, rows: &[DayKpi]) -> Result<String, CoreError>;
    /// See `kpi.utc-days-touched`: the UTC dates whose KPIs these trips change.
    fn utc_days_touched(&mut self, trips: &[TripFare]) -> Result<Vec<String>, CoreError>;
    /// See `kpi.local-days`: the local dates in `zone` that overlap these UTC dates.
    fn local_days(&mut self, zone: &str, utc_days: &[String]) -> Result<Vec<String>, CoreError>;
    /// See `report.read-csv`: KPI rows back from a KPI CSV.
    fn read_csv(&mut self, csv: &str) -> Result<Vec<DayKpi>, CoreError>;
    /// See `report.render-html`: the report page.
    fn render_html(&mut self, request: &ReportRequest) -> Result<String, CoreError>;
}

/// Something that opens [`TripCore`] sessions: the component ([`Runtime`]) or the library
/// ([`NativeCore`]).
pub trait CoreProvider: Send + Sync {
    /// The session type.
    type Session: TripCore;
    /// A fresh session.
    fn session(&self) -> Result<Self::Session, CoreError>;
    /// A one-line description for logs: what runs, and its sha256 for a component.
    fn describe(&self) -> String;
    /// What decides, for provenance: the component's sha256 (lowercase hex), or a description
    /// of a core that is not a component.
    fn fingerprint(&self) -> String;
}

/// Limits applied to every session.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest linear memory a guest may grow to.
    pub memory_bytes: usize,
    /// Longest one call into the guest may run.
    pub call_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 1 << 30,
            call_deadline: Duration::from_secs(60),
        }
    }
}

/// Deadline of instantiating the component in a fresh store.
const INSTANTIATE_DEADLINE: Duration = Duration::from_secs(10);

/// Epoch ticks per second (the deadline's resolution).
const TICKS_PER_SEC: u64 = 100;

/// The engine configuration shared by every host and by the precompiler: a `.cwasm` only
/// loads into an engine configured the same way.
pub fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // `perf record` can name guest functions when wasmtime writes /tmp/perf-PID.map.
    if std::env::var_os("TRIPFLOW_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config
}

/// Compiles a `.wasm` component ahead of time into `.cwasm` bytes for [`Runtime::load`].
pub fn precompile(wasm: &[u8]) -> Result<Vec<u8>, CoreError> {
    let engine = Engine::new(&engine_config()).map_err(|e| load_error("engine", e))?;
    engine
        .precompile_component(wasm)
        .map_err(|e| load_error("precompile", e))
}

/// Where a component comes from.
#[derive(Clone, Debug)]
pub enum ComponentSource {
    /// The component embedded in this binary.
    Embedded,
    /// A `.wasm` component or a `.cwasm` made by [`precompile`] with this runtime version.
    File(PathBuf),
}

/// Identity of a loaded component.
#[derive(Clone, Debug)]
pub struct ComponentInfo {
    /// `embedded` or the file's path.
    pub source: String,
    /// sha256 of the component file's bytes, lowercase hex.
    pub sha256: String,
    /// Whether it was loaded from precompiled code.
    pub precompiled: bool,
}

/// A loaded component, ready to open sessions.
pub struct Runtime {
    engine: Engine,
    pre: bindings::CorePre<Host>,
    info: ComponentInfo,
    limits: Limits,
    ticker: Arc<AtomicBool>,
}

impl Runtime {
    /// Loads a component, compiling it unless it is precompiled. With `cache_dir`, compiled code
    /// is kept there keyed by the component's sha256 and the engine's compatibility hash, so
    /// later loads skip compilation.
    pub fn load(
        source: &ComponentSource,
        limits: Limits,
        cache_dir: Option<&Path>,
    ) -> Result<Runtime, CoreError> {
        let engine = Engine::new(&engine_config()).map_err(|e| load_error("engine", e))?;
        let (name, bytes) = match source {
            ComponentSource::Embedded => ("embedded".to_owned(), EMBEDDED_COMPONENT.to_vec()),
            ComponentSource::File(path) => {
                let bytes = std::fs::read(path).map_err(|e| CoreError::Load {
                    source_name: path.display().to_string(),
                    message: format!("{e}: pass --component with a readable .wasm or .cwasm file"),
                })?;
                (path.display().to_string(), bytes)
            }
        };
        let sha256 = hex(&Sha256::digest(&bytes));
        let precompiled = Engine::detect_precompiled(&bytes).is_some();
        let component = if precompiled {
            // SAFETY: `.cwasm` files are only trusted when they are produced by `precompile`
            // for this engine configuration; wasmtime checks the version and configuration.
            unsafe { Component::deserialize(&engine, &bytes) }.map_err(|e| load_error(&name, e))?
        } else {
            compile_cached(&engine, &bytes, &sha256, cache_dir).map_err(|e| load_error(&name, e))?
        };
        let mut linker = Linker::<Host>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| load_error(&name, e))?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| load_error(&name, e))?;
        let pre = bindings::CorePre::new(instance_pre).map_err(|e| {
            load_error(
                &name,
                e.context(format!(
                    "the component does not export the {WIT_PACKAGE} world `core`"
                )),
            )
        })?;

        let ticker = Arc::new(AtomicBool::new(true));
        let (running, ticking) = (ticker.clone(), engine.weak());
        std::thread::Builder::new()
            .name("tripflow-epoch".into())
            .spawn(move || {
                while running.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1000 / TICKS_PER_SEC));
                    match ticking.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| CoreError::Load {
                source_name: name.clone(),
                message: format!("starting the deadline thread: {e}"),
            })?;

        Ok(Runtime {
            engine,
            pre,
            info: ComponentInfo {
                source: name,
                sha256,
                precompiled,
            },
            limits,
            ticker,
        })
    }

    /// The loaded component's identity.
    pub fn info(&self) -> &ComponentInfo {
        &self.info
    }

    /// The engine (shared by every session of this runtime).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.store(false, Ordering::Relaxed);
    }
}

impl CoreProvider for Runtime {
    type Session = WasmSession;

    fn session(&self) -> Result<WasmSession, CoreError> {
        let stderr = MemoryOutputPipe::new(64 * 1024);
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        let host = Host {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                max_bytes: self.limits.memory_bytes,
                exceeded: false,
            },
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limiter);
        store.epoch_deadline_trap();
        // Instantiation runs the guest's start-up code only; it gets its own, fixed deadline so
        // that a tight per-call deadline measures the calls, not the set-up.
        store.set_epoch_deadline(deadline_ticks(INSTANTIATE_DEADLINE));
        let core = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| CoreError::Trapped {
                message: format!("instantiating: {e:?}"),
                stderr: String::new(),
            })?;
        Ok(WasmSession {
            store,
            core,
            stderr,
            limits: self.limits.clone(),
        })
    }

    fn fingerprint(&self) -> String {
        self.info.sha256.clone()
    }

    fn describe(&self) -> String {
        format!(
            "component {} sha256:{}{}",
            self.info.source,
            self.info.sha256,
            if self.info.precompiled {
                " (precompiled)"
            } else {
                ""
            }
        )
    }
}

impl Runtime {
    /// This runtime with every call of its sessions limited to at most `deadline` (and never
    /// longer than the runtime's own limit): a Lambda handler passes the time its invocation
    /// has left, so a runaway call is stopped with an error the handler can still report
    /// before Lambda kills the process.
    pub fn bounded(&self, deadline: Duration) -> Bounded<'_> {
        Bounded {
            runtime: self,
            deadline: deadline.max(Duration::from_millis(10)),
        }
    }
}

/// A [`Runtime`] whose sessions have a shorter call deadline; see [`Runtime::bounded`].
pub struct Bounded<'a> {
    runtime: &'a Runtime,
    deadline: Duration,
}

impl CoreProvider for Bounded<'_> {
    type Session = WasmSession;

    fn session(&self) -> Result<WasmSession, CoreError> {
        let mut s = self.runtime.session()?;
        s.limits.call_deadline = s.limits.call_deadline.min(self.deadline);
        Ok(s)
    }

    fn fingerprint(&self) -> String {
        self.runtime.fingerprint()
    }

    fn describe(&self) -> String {
        self.runtime.describe()
    }
}

/// `records` one after another in one buffer, with each record's span in it: the form
/// `events.parse` takes a batch in. A record longer than `limit` bytes is cut to its first
/// `limit`: with `limit` one past the contract's `max-record-bytes`, the core still calls it
/// too large, and a record of any size costs the guest the same.
pub fn concat_records<'a>(
    records: impl IntoIterator<Item = &'a [u8]>,
    limit: usize,
) -> (Vec<u8>, Vec<Span>) {
    let mut buffer = Vec::new();
    let mut spans = Vec::new();
    for r in records {
        let r = &r[..r.len().min(limit)];
        spans.push(Span {
            offset: buffer.len() as u32,
            len: r.len() as u32,
        });
        buffer.extend_from_slice(r);
    }
    (buffer, spans)
}

/// What became of one record when a batch was parsed with [`parse_isolating`].
pub type Parsed = Result<ParseOutcome, CoreError>;

/// Parses a batch in one call; if the core fails on the batch as a whole (a trap, its memory
/// cap or its deadline), parses it again record by record in fresh sessions, so that only the
/// records the core itself fails on come back as errors and every other record gets its
/// outcome. The hosts keep each failed record, with the error, like a rejected one.
pub fn parse_isolating<P: CoreProvider>(
    provider: &P,
    buffer: &[u8],
    spans: &[Span],
) -> Result<Vec<Parsed>, CoreError> {
    let whole = match provider.session()?.parse(buffer, spans) {
        Ok(outcomes) => return Ok(outcomes.into_iter().map(Ok).collect()),
        Err(e) => e,
    };
    if spans.len() == 1 {
        return Ok(vec![Err(whole)]);
    }
    let mut out = Vec::with_capacity(spans.len());
    for span in spans {
        // Hand over only the record's bytes, so a record is judged in as little memory as it
        // needs (a span outside the buffer is passed as it is, for the core to report).
        let (start, end) = (
            span.offset as usize,
            span.offset as usize + span.len as usize,
        );
        let one = match buffer.get(start..end) {
            Some(record) => provider.session()?.parse(
                record,
                &[Span {
                    offset: 0,
                    len: span.len,
                }],
            ),
            None => provider
                .session()?
                .parse(buffer, std::slice::from_ref(span)),
        };
        out.push(one.and_then(|mut v| {
            v.pop().ok_or_else(|| CoreError::Trapped {
                message: "the core returned no outcome for the record".to_owned(),
                stderr: String::new(),
            })
        }));
    }
    Ok(out)
}

fn deadline_ticks(d: Duration) -> u64 {
    (d.as_millis() as u64 * TICKS_PER_SEC).div_ceil(1000).max(1)
}

/// One fresh store with an instance of the core.
pub struct WasmSession {
    store: Store<Host>,
    core: bindings::Core,
    stderr: MemoryOutputPipe,
    limits: Limits,
}

impl WasmSession {
    /// Runs one call with a fresh deadline and turns a trap into a [`CoreError`].
    fn call<R>(
        &mut self,
        f: impl FnOnce(&bindings::Core, &mut Store<Host>) -> wasmtime::Result<R>,
    ) -> Result<R, CoreError> {
        self.store
            .set_epoch_deadline(deadline_ticks(self.limits.call_deadline));
        f(&self.core, &mut self.store).map_err(|e| self.classify(e))
    }

    fn classify(&mut self, e: wasmtime::Error) -> CoreError {
        if self.store.data().limiter.exceeded {
            return CoreError::OutOfMemory {
                limit_mib: self.limits.memory_bytes >> 20,
            };
        }
        if matches!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            return CoreError::Timeout(self.limits.call_deadline);
        }
        CoreError::Trapped {
            message: format!("{e:?}"),
            stderr: String::from_utf8_lossy(&self.stderr.contents()).into_owned(),
        }
    }
}

impl TripCore for WasmSession {
    fn max_record_bytes(&mut self) -> Result<u32, CoreError> {
        let limits = self.call(|c, s| c.tripflow_core_events().call_limits(s))?;
        Ok(limits.max_record_bytes)
    }

    fn parse(&mut self, buffer: &[u8], spans: &[Span]) -> Result<Vec<ParseOutcome>, CoreError> {
        let spans: Vec<_> = spans.iter().map(convert::span_out).collect();
        let out = self.call(|c, s| c.tripflow_core_events().call_parse(s, buffer, &spans))?;
        Ok(out.into_iter().map(convert::parse_outcome_in).collect())
    }

    fn render(&mut self, events: &[TripEvent]) -> Result<String, CoreError> {
        let events: Vec<_> = events.iter().map(convert::event_out).collect();
        self.call(|c, s| c.tripflow_core_events().call_render(s, &events))
    }

    fn resolve(
        &mut self,
        incoming: &[TripEvent],
        stored: &[TripEvent],
        clock: Clock,
    ) -> Result<Resolution, CoreError> {
        let incoming: Vec<_> = incoming.iter().map(convert::event_out).collect();
        let stored: Vec<_> = stored.iter().map(convert::event_out).collect();
        let clock = convert::clock_out(clock);
        let r = self.call(|c, s| {
            c.tripflow_core_matching()
                .call_resolve(s, &incoming, &stored, clock)
        })?;
        Ok(convert::resolution_in(r))
    }

    fn parse_resolve<E: From<CoreError>>(
        &mut self,
        buffer: &[u8],
        spans: &[Span],
        clock: Clock,
        lookup: impl FnOnce(&ParsedBatch) -> Result<Vec<StoredEvent>, E>,
    ) -> Result<(ParsedBatch, BatchResolution), E> {
        let spans: Vec<_> = spans.iter().map(convert::span_out).collect();
        let (batch, parsed) = self.call(|c, s| {
            c.tripflow_core_batches()
                .batch()
                .call_parse(s, buffer, &spans)
        })?;
        let parsed = convert::parsed_batch_in(parsed).ok_or_else(|| CoreError::Trapped {
            message: "batch.parse answered trip id ends that do not fit its trip ids: the \
                      component breaks the contract"
                .into(),
            stderr: String::new(),
        })?;
        let lowered: Vec<_> = lookup(&parsed)?
            .into_iter()
            .map(convert::stored_event_out)
            .collect();
        let clock = convert::clock_out(clock);
        let r = self.call(|c, s| {
            let r = c
                .tripflow_core_batches()
                .batch()
                .call_resolve(&mut *s, batch, &lowered, clock)?;
            batch.resource_drop(s)?;
            Ok(r)
        })?;
        Ok((parsed, convert::batch_resolution_in(r)))
    }

    fn pair(&mut self, start: &TripEvent, end: &TripEvent) -> Result<ClosedTrip, CoreError> {
        let (start, end) = (convert::event_out(start), convert::event_out(end));
        let t = self.call(|c, s| c.tripflow_core_matching().call_pair(s, &start, &end))?;
        Ok(convert::closed_in(t))
    }

    fn pair_all(&mut self, trips: &[(TripEvent, TripEvent)]) -> Result<Vec<Paired>, CoreError> {
        let trips: Vec<_> = trips
            .iter()
            .map(|(start, end)| convert::halves_out(start, end))
            .collect();
        let paired = self.call(|c, s| c.tripflow_core_matching().call_pair_all(s, &trips))?;
        Ok(paired.into_iter().map(convert::paired_in).collect())
    }

    fn sweep(
        &mut self,
        open: &[i64],
        newest_ns: i64,
        older_than_ns: i64,
    ) -> Result<Vec<u32>, CoreError> {
        let open: Vec<_> = open
            .iter()
            .map(
                |&timestamp_ns| bindings::exports::tripflow::core::matching::OpenTrip {
                    timestamp_ns,
                },
            )
            .collect();
        self.call(|c, s| {
            c.tripflow_core_matching()
                .call_sweep(s, &open, newest_ns, older_than_ns)
        })
    }

    fn check_time_zone(&mut self, zone: &str) -> Result<(), CoreError> {
        let r = self.call(|c, s| c.tripflow_core_kpi().call_check_time_zone(s, zone))?;
        r.map_err(|e| CoreError::Kpi(convert::kpi_error_in(e)))
    }

    fn day_of(&mut self, zone: &str, timestamp_ns: i64) -> Result<String, CoreError> {
        let r = self.call(|c, s| c.tripflow_core_kpi().call_day_of(s, zone, timestamp_ns))?;
        r.map_err(|e| CoreError::Kpi(convert::kpi_error_in(e)))
    }

    fn accumulate(
        &mut self,
        zone: &str,
        totals: &[DayTotals],
        trips: &[TripFare],
    ) -> Result<Vec<DayTotals>, CoreError> {
        let totals: Vec<_> = totals.iter().map(convert::totals_out).collect();
        let trips: Vec<_> = trips.iter().map(convert::trip_fare_out).collect();
        let r = self.call(|c, s| {
            c.tripflow_core_kpi()
                .call_accumulate(s, zone, &totals, &trips)
        })?;
        r.map(|v| v.into_iter().map(convert::totals_in).collect())
            .map_err(|e| CoreError::Kpi(convert::kpi_error_in(e)))
    }

    fn merge(&mut self, a: &[DayTotals], b: &[DayTotals]) -> Result<Vec<DayTotals>, CoreError> {
        let a: Vec<_> = a.iter().map(convert::totals_out).collect();
        let b: Vec<_> = b.iter().map(convert::totals_out).collect();
        let r = self.call(|c, s| c.tripflow_core_kpi().call_merge(s, &a, &b))?;
        r.map(|v| v.into_iter().map(convert::totals_in).collect())
            .map_err(|e| CoreError::Kpi(convert::kpi_error_in(e)))
    }

    fn finish(
        &mut self,
        totals: &[DayTotals],
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<DayKpi>, CoreError> {
        let totals: Vec<_> = totals.iter().map(convert::totals_out).collect();
        let r = self.call(|c, s| c.tripflow_core_kpi().call_finish(s, &totals, from, to))?;
        r.map(|v| v.into_iter().map(convert::kpi_in).collect())
            .map_err(|e| CoreError::Kpi(convert::kpi_error_in(e)))
    }

    fn render_csv(&mut self, rows: &[DayKpi]) -> Result<String, CoreError> {
        let rows: Vec<_> = rows.iter().map(convert::kpi_out).collect();
        self.call(|c, s| c.tripflow_core_kpi().call_render_csv(s, &rows))
    }

    fn utc_days_touched(&mut self, trips: &[TripFare]) -> Result<Vec<String>, CoreError> {
        let trips: Vec<_> = trips.iter().map(convert::trip_fare_out).collect();
        self.call(|c, s| c.tripflow_core_kpi().call_utc_days_touched(s, &trips))
    }

    fn local_days(&mut self, zone: &str, utc_days: &[String]) -> Result<Vec<String>, CoreError> {
        let r = self.call(|c, s| c.tripflow_core_kpi().call_local_days(s, zone, utc_days))?;
        r.map_err(|e| CoreError::Kpi(convert::kpi_error_in(e)))
    }

    fn read_csv(&mut self, csv: &str) -> Result<Vec<DayKpi>, CoreError> {
        let r = self.call(|c, s| c.tripflow_core_report().call_read_csv(s, csv))?;
        r.map(|v| v.into_iter().map(convert::kpi_in).collect())
            .map_err(|e| CoreError::Kpi(convert::kpi_error_in(e)))
    }

    fn render_html(&mut self, request: &ReportRequest) -> Result<String, CoreError> {
        let request = convert::report_out(request);
        let r = self.call(|c, s| c.tripflow_core_report().call_render_html(s, &request))?;
        r.map_err(|e| CoreError::Kpi(convert::kpi_error_in(e)))
    }
}

/// Per-store host state: WASI (stderr only) and the memory limiter.
struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers that it did, so the error can say so.
struct Limiter {
    max_bytes: usize,
    exceeded: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exceeded = true;
            wasmtime::bail!("memory limit of {} MiB reached", self.max_bytes >> 20);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

fn compile_cached(
    engine: &Engine,
    wasm: &[u8],
    sha256: &str,
    cache_dir: Option<&Path>,
) -> wasmtime::Result<Component> {
    let Some(dir) = cache_dir else {
        return Component::new(engine, wasm);
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let path = dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()));
    if path.is_file() {
        // SAFETY: the file was written below by this function, from a component compiled by an
        // engine with the same compatibility hash; a damaged file fails to deserialize.
        if let Ok(component) = unsafe { Component::deserialize_file(engine, &path) } {
            return Ok(component);
        }
    }
    let component = Component::new(engine, wasm)?;
    // The cache is an optimisation: failing to write it must not fail the load.
    if let Ok(bytes) = component.serialize()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(component)
}

fn load_error(name: &str, e: wasmtime::Error) -> CoreError {
    CoreError::Load {
        source_name: name.to_owned(),
        message: format!("{e:?}"),
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// sha256 of bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}
