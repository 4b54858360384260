//! `replay`: push NDJSON events through the core into the store.
//!
//! Per batch of lines: the core parses them and keeps the events; the store's index is asked
//! for what it holds of the batch's trips; the core decides; the decisions are appended to the
//! logs and the batch commits (see [`crate::log`]). The host decides nothing: it stores what
//! the core says to store and quarantines what the core rejects, with the original bytes.
//!
//! By stage, each in its own file, with the records one stage hands the next defined here:
//! - [`read`]: the inputs, batch by batch;
//! - [`decide`]: a worker's batch through the core, and the store's answer to its lookup;
//! - [`apply`]: a decided batch as log records, then appended, in input order;
//! - [`commit`]: groups of applied batches made durable.

mod apply;
mod commit;
mod decide;
mod read;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, mpsc};

use serde::{Deserialize, Serialize};
// `ToStore`: an accepted event the core decided to store (`log::NewEvent` is its record).
use tripflow_runtime::core::batch::{BatchResolution, NewEvent as ToStore, TripIds};
use tripflow_runtime::core::{Clock, DEFAULT_MAX_SKEW_NS, EventKind, Reason, TripStatus};
use tripflow_runtime::fate::{self, Fate, Lines};
use tripflow_runtime::{CoreProvider, TripCore};

use crate::db::{StateDir, StoreTotals};
use crate::error::{Error, IoContext};
use crate::index::{Fp, OpenHalf};
use crate::input::{Batch, Input};
use crate::meta::Committed;
use crate::quarantine::QuarantineRecord;

use apply::{apply, write};
use commit::commit_all;
use decide::{lookup, work};
use read::Reader;

/// Tuning of a replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Most lines handed to the core in one call.
    pub batch_lines: usize,
    /// About the most bytes handed to the core in one call.
    pub batch_bytes: usize,
    /// How far an event's clock may run ahead of the batch's arrival before the event stops
    /// moving the event-time watermark (see `matching.resolve`).
    pub max_skew_ns: i64,
    /// The arrival time of every batch; `None`: the wall clock when the batch is read, the
    /// replay's equivalent of a Kinesis record's arrival time.
    pub arrival_ns: Option<i64>,
    /// Threads running the core, each on its own batch (at least 1). Batches still commit one
    /// at a time, in input order, so the result does not depend on it.
    pub threads: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            batch_lines: 8_192,
            batch_bytes: 8 << 20,
            max_skew_ns: DEFAULT_MAX_SKEW_NS,
            arrival_ns: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        }
    }
}

/// The wall clock, ns since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Told how far a replay has got.
pub trait Progress {
    /// `bytes` more input bytes were consumed.
    fn advance(&self, bytes: u64);
}

impl Progress for () {
    fn advance(&self, _bytes: u64) {}
}

/// What a replay did, and what the store holds afterwards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Records read (non-blank lines).
    pub records: u64,
    /// Blank lines skipped.
    pub blank_lines: u64,
    /// Events stored (first copies).
    pub stored: u64,
    /// Exact duplicates (counted, harmless).
    pub duplicates: u64,
    /// Stored events dated later than their batch's arrival plus the allowed clock skew: kept
    /// and matched, but they do not move the event-time watermark.
    pub skewed: u64,
    /// Rejected records by reason code; every code is listed, zeros included.
    pub rejected: BTreeMap<String, u64>,
    /// Trips this replay completed.
    pub completed: u64,
    /// Trips this replay closed as invalid (end before start).
    pub invalid: u64,
    /// Trips this replay closed without a fare.
    pub no_fare: u64,
    /// The store after the replay.
    #[serde(default)]
    pub store: StoreTotals,
}

impl Summary {
    /// No records yet; every reason code listed with zero.
    pub(crate) fn new() -> Summary {
        Summary {
            rejected: Reason::CORE
                .iter()
                .map(|r| (r.as_str().to_owned(), 0))
                .collect(),
            ..Summary::default()
        }
    }

    /// Adds a batch's counts (not its rejects, which are counted by reason).
    pub(crate) fn add(&mut self, b: &Summary) {
        self.records += b.records;
        self.blank_lines += b.blank_lines;
        self.stored += b.stored;
        self.duplicates += b.duplicates;
        self.skewed += b.skewed;
        self.completed += b.completed;
        self.invalid += b.invalid;
        self.no_fare += b.no_fare;
    }

    /// All rejected records.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Replays `inputs` in order into `state`; rejected records are also written to `quarantine`.
///
/// Three kinds of thread share the work:
/// - `opts.threads` workers each take a batch, parse it in their own instance of the core, ask
///   the store what it holds of the batch's trips, resolve, and encode the batch's records;
/// - this thread reads the input, answers the lookups and applies the batches to the logs and
///   the index, one at a time and in input order: a batch's lookup is answered only after the
///   batch before it has been applied, so every batch is decided against exactly the store an
///   unthreaded replay would show it;
/// - a committer syncs the logs and commits the batches' transactions, in the same order,
///   several at a time when they queue up (group commit).
///
/// What is committed is always the store after some prefix of the batches; a failure anywhere
/// stops the replay and leaves the store at the last commit.
pub fn replay<P: CoreProvider>(
    provider: &P,
    state: &mut StateDir,
    inputs: &[Input],
    opts: &ReplayOptions,
    quarantine: Option<&mut dyn Write>,
    progress: &dyn Progress,
) -> Result<Summary, Error> {
    state.lock_for_writing()?;
    state.index()?;
    let mut summary = Summary::new();
    // The core decides what is too large; the reader only needs to know how much to pass on.
    let max_record_bytes = provider.session()?.max_record_bytes()?;
    let ids = state.write_transaction(|s| {
        inputs
            .iter()
            .map(|i| s.input_id(&i.name))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let (events_file, trips_file, conn) = state.committer_parts()?;
    let outcome = std::thread::scope(|scope| {
        let (to_committer, commits) = mpsc::sync_channel::<Commit>(16);
        let committer = std::thread::Builder::new()
            .name("tripflow-commit".into())
            .spawn_scoped(scope, move || {
                commit_all(conn, events_file, trips_file, commits)
            })
            .io(|| "starting the committing thread".to_owned())?;
        let render = |path: &std::path::Path, entry: &crate::export::ManifestFile| {
            crate::export::render_data_path(provider, path, entry).map(|(ndjson, _)| ndjson)
        };
        let mut reader = Reader {
            inputs,
            ids,
            next_input: 0,
            lines: None,
            max_record_bytes,
            render: &render,
        };
        let run = Pipeline {
            provider,
            opts,
            inputs,
            to_committer,
        }
        .run(
            scope,
            state,
            &mut reader,
            &mut summary,
            quarantine,
            progress,
        );
        let committed = committer.join().unwrap_or_else(|_| Err(Error::Stopped));
        match (run, committed) {
            (Err(Error::Stopped), Err(e)) | (Ok(()), Err(e)) | (Err(e), _) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        }
    });
    if let Err(e) = outcome {
        state.recover()?;
        return Err(e);
    }
    state.save_snapshot()?;
    summary.store = state.totals()?;
    Ok(summary)
}

/// What the applying thread needs besides the store.
struct Pipeline<'a, P> {
    provider: &'a P,
    opts: &'a ReplayOptions,
    inputs: &'a [Input],
    to_committer: mpsc::SyncSender<Commit>,
}

impl<'a, P: CoreProvider> Pipeline<'a, P> {
    /// Runs the workers and applies their batches until the input ends or something fails.
    fn run<'scope>(
        self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        state: &mut StateDir,
        reader: &mut Reader<'_>,
        summary: &mut Summary,
        mut quarantine: Option<&mut dyn Write>,
        progress: &dyn Progress,
    ) -> Result<(), Error>
    where
        'a: 'scope,
    {
        let threads = self.opts.threads.max(1);
        let fingerprints = state.fingerprints;
        let (to_main, from_workers) = mpsc::channel::<Message>();
        let mut workers = Vec::with_capacity(threads);
        for n in 0..threads {
            let (jobs, queue) = mpsc::channel::<Job>();
            let to_main = to_main.clone();
            let provider = self.provider;
            std::thread::Builder::new()
                .name(format!("tripflow-core-{n}"))
                .spawn_scoped(scope, move || work(provider, fingerprints, queue, to_main))
                .io(|| "starting a core thread".to_owned())?;
            workers.push(jobs);
        }
        drop(to_main);

        let mut spare: Vec<Batch> = Vec::new();
        let (mut dispatched, mut applied) = (0u64, 0u64);
        let mut lookups: BTreeMap<u64, Lookup> = BTreeMap::new();
        let mut done: BTreeMap<u64, Box<Done>> = BTreeMap::new();
        loop {
            // Two batches per worker in flight: one it works on, one queued.
            while dispatched - applied < 2 * threads as u64 {
                let mut batch = spare.pop().unwrap_or_default();
                let Some((input, source)) = reader.next(&mut batch, self.opts)? else {
                    break;
                };
                let job = Job {
                    seq: dispatched,
                    name: self.inputs[input].name.clone(),
                    source,
                    batch,
                    clock: Clock {
                        arrival_ns: self.opts.arrival_ns.unwrap_or_else(now_ns),
                        max_skew_ns: self.opts.max_skew_ns,
                    },
                };
                workers[(dispatched % threads as u64) as usize]
                    .send(job)
                    .map_err(|_| Error::Stopped)?;
                dispatched += 1;
            }
            if dispatched == applied {
                if let Some(out) = quarantine {
                    out.flush()
                        .io(|| "writing the quarantine file".to_owned())?;
                }
                return Ok(());
            }
            match from_workers.recv() {
                Ok(Message::Lookup(l)) => {
                    lookups.insert(l.seq, l);
                }
                Ok(Message::Done(d)) => {
                    done.insert(d.seq, d);
                }
                // Every worker has gone: one panicked (the scope re-raises it).
                Err(_) => return Err(Error::Stopped),
            }
            loop {
                if let Some(l) = lookups.remove(&applied) {
                    l.answer(state);
                }
                let Some(d) = done.remove(&applied) else {
                    break;
                };
                let Done { job, prepared, .. } = *d;
                let (rejects, commit) = apply(state, &job, prepared?, summary)?;
                applied += 1;
                // The next batch's lookup needs only the index (reads of this batch's records
                // are served from the logs' pending bytes): answer it before the writes.
                if let Some(l) = lookups.remove(&applied) {
                    l.answer(state);
                }
                write(state, commit, &self.to_committer)?;
                if let Some(out) = quarantine.as_deref_mut() {
                    for r in &rejects {
                        out.write_all(r.to_line().as_bytes())
                            .io(|| "writing the quarantine file".to_owned())?;
                    }
                }
                progress.advance(job.batch.bytes_read);
                spare.push(job.batch);
            }
        }
    }
}

/// A batch for a worker.
struct Job {
    /// Its place in the input order.
    seq: u64,
    /// Its input's name, and that input's number in `events.log`.
    name: String,
    source: u32,
    batch: Batch,
    clock: Clock,
}

/// What a worker tells the committing thread.
enum Message {
    Lookup(Lookup),
    Done(Box<Done>),
}

/// "What does the store hold of these trips?" — answered once the batch before has committed.
struct Lookup {
    seq: u64,
    /// One per accepted event.
    fps: Arc<Vec<Fp>>,
    reply: mpsc::SyncSender<Result<Vec<Hit>, Error>>,
}

impl Lookup {
    /// Answers from the store as it is now (a worker that has gone is no error here).
    fn answer(self, state: &mut StateDir) {
        let _ = self.reply.send(lookup(state, &self.fps));
    }
}

/// A batch decided and ready to commit.
struct Done {
    seq: u64,
    job: Job,
    prepared: Result<Prepared, Error>,
}

/// A stored event of one of a batch's trips.
struct Hit {
    /// The accepted event of the batch whose trip it is.
    incoming: u32,
    kind: EventKind,
    timestamp_ns: i64,
    fare_cents: Option<i64>,
    extras: String,
    /// Its position in `events.log`.
    pos: u64,
    /// Its trip id as stored, when it was read from the log (a closed trip's event): the worker
    /// checks it is the batch's.
    trip_id: Option<String>,
}

/// The core's decisions on a batch.
struct Decided {
    /// One per line.
    fates: Vec<Fate>,
    /// For each accepted event, its trip id and its fingerprint.
    trip_ids: TripIds,
    fps: Arc<Vec<Fp>>,
    /// For each accepted event decided `store`, the event; `None` for the others.
    incoming: Vec<Option<ToStore>>,
    /// The rest of the resolution (its `new_events` are in `incoming`).
    resolution: BatchResolution,
}

impl Decided {
    /// Puts a batch's resolution in the shape [`prepare`] reads; `None` when it does not fit
    /// the batch's accepted events (a component that breaks the contract).
    fn new(
        lines: Lines,
        trip_ids: TripIds,
        fps: Arc<Vec<Fp>>,
        mut resolution: BatchResolution,
    ) -> Option<Decided> {
        if lines.accepted.len() != trip_ids.len() {
            return None;
        }
        let fates = fate::fates(&lines, &resolution.decisions())?;
        let mut incoming: Vec<Option<ToStore>> = (0..trip_ids.len()).map(|_| None).collect();
        for e in std::mem::take(&mut resolution.new_events) {
            let i = e.incoming as usize;
            *incoming.get_mut(i)? = Some(e);
        }
        Some(Decided {
            fates,
            trip_ids,
            fps,
            incoming,
            resolution,
        })
    }
}

/// A batch's records, ready to append: everything but what only the store knows (where the
/// batch starts in `events.log`, and where the open halves its trips close against are).
struct Prepared {
    /// Counts of the batch (not its rejects, counted by reason from `rejects`).
    tally: Summary,
    /// Its rejected records, in line order.
    rejects: Vec<QuarantineRecord>,
    /// Conflicting duplicates whose first copy is in the store: index into `rejects`, and the
    /// first copy's position in `events.log`.
    first_copies: Vec<(usize, u64)>,
    /// The stored events' records, positions relative to the batch's start.
    events: Vec<u8>,
    /// The trips the batch closes.
    closed: Vec<Closing>,
    /// Halves stored by the batch whose trips stay open (positions relative).
    opened: Vec<(Fp, OpenHalf)>,
    newest_ns: Option<i64>,
}

/// A trip a batch closes; a half's position is `None` when it is the open half in the index.
struct Closing {
    fp: Fp,
    status: TripStatus,
    start_ns: i64,
    end_ns: i64,
    fare_cents: Option<i64>,
    start: Option<u64>,
    end: Option<u64>,
}

/// A batch's transaction: what the database records of it.
struct Commit {
    /// The log ends and counts after the batch.
    committed: Committed,
    /// The input, and the batch's records, blank lines and duplicates read from it.
    source: String,
    tally: [u64; 3],
    rejects: Vec<QuarantineRecord>,
    newest_ns: Option<i64>,
    /// Orphans the batch closed.
    unorphaned: Vec<Fp>,
}
