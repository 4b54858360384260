//! `replay`: push NDJSON events through the core into the store.
//!
//! Per batch of lines: the core parses them and keeps the events; the store's index is asked
//! for what it holds of the batch's trips; the core decides; the decisions are appended to the
//! logs and the batch commits (see [`crate::log`]). The host decides nothing: it stores what
//! the core says to store and quarantines what the core rejects, with the original bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::hash::BuildHasherDefault;
use std::io::Write;
use std::sync::{Arc, mpsc};

use rusqlite::{Connection, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
// `ToStore`: an accepted event the core decided to store (`log::NewEvent` is its record).
use tripflow_runtime::core::batch::{BatchResolution, NewEvent as ToStore, StoredEvent, TripIds};
use tripflow_runtime::core::{
    Clock, DEFAULT_MAX_SKEW_NS, EventKind, Reason, TripEvent, TripStatus,
};
use tripflow_runtime::fate::{self, Fate, FirstCopy, Lines};
use tripflow_runtime::{CoreProvider, TripCore, parse_isolating};

use crate::db::{Committed, StateDir, StoreTotals, count_source};
use crate::error::{DbContext, Error, IoContext};
use crate::index::{Fingerprinter, Fp, Identity, OpenHalf};
use crate::input::{Batch, Input, LineReader};
use crate::log::{NewEvent, TripRecord, encode_event};
use crate::quarantine::{QuarantineRecord, RawBytes};

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
        let mut reader = Reader {
            inputs,
            ids,
            next_input: 0,
            lines: None,
            max_record_bytes,
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

/// An open input's lines.
type InputLines = LineReader<Box<dyn std::io::BufRead + Send>>;

/// The inputs, read batch by batch.
struct Reader<'a> {
    inputs: &'a [Input],
    /// Each input's number in `events.log`.
    ids: Vec<u32>,
    next_input: usize,
    /// The input being read: its index, its number in `events.log`, its lines.
    lines: Option<(usize, u32, InputLines)>,
    max_record_bytes: u32,
}

impl Reader<'_> {
    /// Fills `batch` with the next lines; returns the input's index and number, or `None` at the
    /// end of the last input.
    fn next(
        &mut self,
        batch: &mut Batch,
        opts: &ReplayOptions,
    ) -> Result<Option<(usize, u32)>, Error> {
        loop {
            if let Some((i, id, lines)) = &mut self.lines {
                let name = &self.inputs[*i].name;
                if lines
                    .fill(batch, opts.batch_lines, opts.batch_bytes)
                    .io(|| format!("reading {name}"))?
                {
                    return Ok(Some((*i, *id)));
                }
                self.lines = None;
            }
            let Some(input) = self.inputs.get(self.next_input) else {
                return Ok(None);
            };
            let id = self.ids[self.next_input];
            let lines = LineReader::new(input.open()?, self.max_record_bytes);
            self.lines = Some((self.next_input, id, lines));
            self.next_input += 1;
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

/// A worker: batches in, prepared batches out, until the queue closes.
fn work<P: CoreProvider>(
    provider: &P,
    fingerprints: Fingerprinter,
    queue: mpsc::Receiver<Job>,
    to_main: mpsc::Sender<Message>,
) {
    // One instance of the core serves the worker's batches (a batch's events live in a resource
    // dropped after it), so the guest's memory is set up once rather than per batch; any failure
    // discards the instance and the next batch gets a fresh one.
    let mut session = None;
    for job in queue {
        // A panic here would leave the other threads waiting for this batch: it becomes the
        // batch's error instead, which stops the replay.
        let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decide(provider, &mut session, fingerprints, &job, &to_main)
                .and_then(|(decided, stored_pos)| prepare(&job, &decided, &stored_pos))
        }))
        .unwrap_or_else(|panic| {
            session = None;
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::Panicked(what))
        });
        let seq = job.seq;
        if to_main
            .send(Message::Done(Box::new(Done { seq, job, prepared })))
            .is_err()
        {
            return;
        }
    }
}

/// What [`ask`] answers: the stored events, their positions in `events.log`, and the
/// fingerprint of each id asked about.
type Looked = (Vec<StoredEvent>, Vec<u64>, Arc<Vec<Fp>>);

/// Asks the committing thread for the stored events of `ids`' trips.
fn ask(
    to_main: &mpsc::Sender<Message>,
    seq: u64,
    fingerprints: Fingerprinter,
    ids: &TripIds,
) -> Result<Looked, Error> {
    let fps: Arc<Vec<Fp>> = Arc::new(ids.iter().map(|id| fingerprints.of(id)).collect());
    let (reply, answer) = mpsc::sync_channel(1);
    let gone = || Error::Stopped;
    to_main
        .send(Message::Lookup(Lookup {
            seq,
            fps: Arc::clone(&fps),
            reply,
        }))
        .map_err(|_| gone())?;
    let hits = answer.recv().map_err(|_| gone())??;
    let (mut stored, mut pos) = (
        Vec::with_capacity(hits.len()),
        Vec::with_capacity(hits.len()),
    );
    for h in hits {
        if let Some(read) = h.trip_id {
            let id = ids.get(h.incoming as usize);
            if read != id {
                return Err(Error::Damaged(format!(
                    "trip ids {id:?} and {read:?} share a fingerprint; replay the inputs into a \
                     new --state directory (it gets a new fingerprint key)"
                )));
            }
        }
        stored.push(StoredEvent {
            trip_of: h.incoming,
            kind: h.kind,
            timestamp_ns: h.timestamp_ns,
            fare_cents: h.fare_cents,
            extras: h.extras,
        });
        pos.push(h.pos);
    }
    Ok((stored, pos, fps))
}

/// What the store holds of the trips of `fps` (one per accepted event of a batch), each trip
/// once: a open trip's half from the index, a closed trip's two events from the log.
fn lookup(state: &mut StateDir, fps: &[Fp]) -> Result<Vec<Hit>, Error> {
    let (index, events, trips) = state.lookup_parts()?;
    let mut seen: HashSet<Fp, BuildHasherDefault<Identity>> =
        HashSet::with_capacity_and_hasher(fps.len(), Default::default());
    let mut hits = Vec::new();
    for (i, &fp) in fps.iter().enumerate() {
        if !seen.insert(fp) {
            continue;
        }
        if let Some(half) = index.open.get(&fp) {
            let (fare_cents, extras) = if half.complete_in_log() {
                let e = events.read(half.pos())?;
                (e.fare_cents, e.extras)
            } else {
                (half.fare_cents(), String::new())
            };
            hits.push(Hit {
                incoming: i as u32,
                kind: half.kind(),
                timestamp_ns: half.timestamp_ns,
                fare_cents,
                extras,
                pos: half.pos(),
                trip_id: None,
            });
            continue;
        }
        for n in index.closed_candidates(fp) {
            let trip = trips.read(n)?;
            if trip.fp != fp.0 {
                continue;
            }
            for pos in [trip.start_pos, trip.end_pos] {
                let e = events.read(pos)?;
                hits.push(Hit {
                    incoming: i as u32,
                    kind: e.kind,
                    timestamp_ns: e.timestamp_ns,
                    fare_cents: e.fare_cents,
                    extras: e.extras,
                    pos,
                    trip_id: Some(e.trip_id),
                });
            }
            break;
        }
    }
    Ok(hits)
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

/// Decides a batch in one guest (`batches.batch`: parse, look up, resolve); if the core fails on
/// it, the older way, which decides the same: parse (record by record, isolating the records
/// the core fails on), look up, resolve. Returns the decisions and the position in `events.log`
/// of each stored event the resolution's `EventRef::Stored` indexes.
fn decide<P: CoreProvider>(
    provider: &P,
    session: &mut Option<P::Session>,
    fingerprints: Fingerprinter,
    job: &Job,
    to_main: &mpsc::Sender<Message>,
) -> Result<(Decided, Vec<u64>), Error> {
    let batch = &job.batch;
    let mut looked = (Arc::default(), Vec::new());
    let core = match session {
        Some(core) => core,
        None => session.insert(provider.session()?),
    };
    let in_core = core.parse_resolve::<Error>(&batch.buf, &batch.spans, job.clock, |parsed| {
        let (stored, pos, fps) = ask(to_main, job.seq, fingerprints, &parsed.trip_ids)?;
        looked = (fps, pos);
        Ok(stored)
    });
    let decided = match in_core {
        Ok((parsed, r)) => {
            Lines::from_skipped(batch.spans.len(), parsed.skipped).and_then(|lines| {
                let fps = std::mem::take(&mut looked.0);
                Decided::new(lines, parsed.trip_ids, fps, r)
            })
        }
        Err(Error::Core(_)) => None,
        Err(e) => {
            *session = None;
            return Err(e);
        }
    };
    match decided {
        Some(decided) => Ok((decided, looked.1)),
        None => {
            *session = None;
            decide_isolating(provider, fingerprints, job, to_main)
        }
    }
}

/// See [`decide`].
fn decide_isolating<P: CoreProvider>(
    provider: &P,
    fingerprints: Fingerprinter,
    job: &Job,
    to_main: &mpsc::Sender<Message>,
) -> Result<(Decided, Vec<u64>), Error> {
    let batch = &job.batch;
    let (lines, events) = Lines::from_parsed(parse_isolating(provider, &batch.buf, &batch.spans)?);
    let trip_ids: TripIds = events.iter().map(|e| e.trip_id.as_str()).collect();
    let (stored, stored_pos, fps) = ask(to_main, job.seq, fingerprints, &trip_ids)?;
    let stored: Vec<TripEvent> = stored
        .into_iter()
        .map(|s| TripEvent {
            trip_id: trip_ids.get(s.trip_of as usize).to_owned(),
            kind: s.kind,
            timestamp_ns: s.timestamp_ns,
            fare_cents: s.fare_cents,
            extras: s.extras,
        })
        .collect();
    let resolution = provider.session()?.resolve(&events, &stored, job.clock)?;
    let resolution = BatchResolution::from_resolution(resolution, &events);
    let decided = Decided::new(lines, trip_ids, fps, resolution)
        .expect("a resolution of the events parsed fits them");
    Ok((decided, stored_pos))
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

/// Tallies a batch's decisions, collects its rejects and encodes its records (on the worker).
fn prepare(job: &Job, decided: &Decided, stored_pos: &[u64]) -> Result<Prepared, Error> {
    let batch = &job.batch;
    let (incoming, resolution) = (&decided.incoming, &decided.resolution);
    let new_event = |i: usize| -> &ToStore {
        incoming[i]
            .as_ref()
            .expect("every event decided `store` is handed back")
    };
    let mut p = Prepared {
        tally: Summary::default(),
        rejects: Vec::new(),
        first_copies: Vec::new(),
        events: Vec::new(),
        closed: Vec::with_capacity(resolution.closed.len()),
        opened: Vec::with_capacity(resolution.opened.len()),
        newest_ns: resolution.newest_ns,
    };
    p.tally.skewed = resolution.skewed.len() as u64;
    // Where each event stored by this batch goes, by trip and half: a trip that closes within
    // the batch finds its first half here.
    let mut here: HashMap<(Fp, bool), u64, BuildHasherDefault<Identity>> = HashMap::default();
    let mut pos_of = vec![0u64; incoming.len()];
    for (line, fate) in decided.fates.iter().enumerate() {
        if *fate == Fate::Blank {
            p.tally.blank_lines += 1;
            continue;
        }
        p.tally.records += 1;
        match fate {
            Fate::Blank => {}
            Fate::Stored { event } => {
                let i = *event as usize;
                let e = new_event(i);
                let pos = encode_event(
                    &mut p.events,
                    &NewEvent {
                        kind: e.kind,
                        timestamp_ns: e.timestamp_ns,
                        fare_cents: e.fare_cents,
                        source: job.source,
                        line: batch.lines[line],
                        trip_id: decided.trip_ids.get(i),
                        extras: &e.extras,
                        raw: batch.raw(line),
                    },
                );
                pos_of[i] = pos;
                here.insert((decided.fps[i], e.kind == EventKind::End), pos);
                p.tally.stored += 1;
            }
            Fate::Duplicate { .. } => p.tally.duplicates += 1,
            Fate::Rejected(r) => {
                let first = match r.first {
                    Some(FirstCopy::Record(j)) => Some(batch.raw(j).to_vec()),
                    Some(FirstCopy::Stored(j)) => {
                        p.first_copies
                            .push((p.rejects.len(), stored_pos[j as usize]));
                        None
                    }
                    None => None,
                };
                p.rejects
                    .push(quarantine_record(job, line, r.reason, &r.detail, first));
            }
        }
    }
    for closing in &resolution.closed {
        let c = closing.closed_by as usize;
        let fp = decided.fps[c];
        let closer_is_end = new_event(c).kind == EventKind::End;
        let earlier = here.get(&(fp, !closer_is_end)).copied();
        let (start, end) = if closer_is_end {
            (earlier, Some(pos_of[c]))
        } else {
            (Some(pos_of[c]), earlier)
        };
        let t = closing;
        match t.status {
            TripStatus::Completed => p.tally.completed += 1,
            TripStatus::Invalid => p.tally.invalid += 1,
            TripStatus::NoFare => p.tally.no_fare += 1,
        }
        p.closed.push(Closing {
            fp,
            status: t.status,
            start_ns: t.start_ns,
            end_ns: t.end_ns,
            fare_cents: t.fare_cents,
            start,
            end,
        });
    }
    for &i in &resolution.opened {
        let i = i as usize;
        let e = new_event(i);
        p.opened.push((
            decided.fps[i],
            OpenHalf::new(
                e.kind,
                e.timestamp_ns,
                e.fare_cents,
                !e.extras.is_empty(),
                pos_of[i],
            ),
        ));
    }
    Ok(p)
}

/// Applies a prepared batch (on the applying thread): fills in the first copies of conflicts,
/// appends its events and closed trips to the logs (pending, see [`write`]) and updates the
/// index. Returns the batch's rejects in line order and its transaction, without the log ends.
fn apply(
    state: &mut StateDir,
    job: &Job,
    mut p: Prepared,
    summary: &mut Summary,
) -> Result<(Vec<QuarantineRecord>, Commit), Error> {
    for &(r, pos) in &p.first_copies {
        p.rejects[r].first_copy = Some(RawBytes(state.events.read(pos)?.raw));
    }
    p.rejects.sort_by_key(|r| r.line);
    let base = state.append_encoded_events(std::mem::take(&mut p.events));
    let mut committed = state.committed;
    committed.events += p.tally.stored;
    let mut unorphaned = Vec::new();
    let mut closed = Vec::with_capacity(p.closed.len());
    for c in &p.closed {
        let mut stored_half = || -> u64 {
            let half = state
                .index_ref()
                .open
                .get(&c.fp)
                .expect("a trip closes against its stored open half");
            if half.orphaned() {
                unorphaned.push(c.fp);
            }
            half.pos()
        };
        let (start_pos, end_pos) = match (c.start, c.end) {
            (Some(s), Some(e)) => (base + s, base + e),
            (Some(s), None) => (base + s, stored_half()),
            (None, Some(e)) => (stored_half(), base + e),
            (None, None) => unreachable!("the closing half is in the batch"),
        };
        let trip = state.append_trip(&TripRecord {
            fp: c.fp.0,
            status: c.status,
            start_ns: c.start_ns,
            end_ns: c.end_ns,
            fare_cents: c.fare_cents,
            start_pos,
            end_pos,
        });
        committed.count(c.status);
        closed.push((c.fp, trip));
    }
    let commit = Commit {
        committed,
        source: job.name.clone(),
        tally: [p.tally.records, p.tally.blank_lines, p.tally.duplicates],
        rejects: p.rejects.clone(),
        newest_ns: p.newest_ns,
        unorphaned,
    };
    let index = state.index()?;
    for (fp, half) in p.opened {
        index.open.insert(fp, half.shifted(base));
    }
    for (fp, trip) in closed {
        index.open.remove(&fp);
        index.add_closed(fp, trip);
    }
    summary.add(&p.tally);
    for r in &p.rejects {
        *summary.rejected.entry(r.reason.clone()).or_default() += 1;
    }
    Ok((p.rejects, commit))
}

/// Writes an applied batch's pending log records and hands its transaction, with the new log
/// ends, to the committer.
fn write(
    state: &mut StateDir,
    mut commit: Commit,
    to_committer: &mpsc::SyncSender<Commit>,
) -> Result<(), Error> {
    (commit.committed.events_len, commit.committed.trips_len) = state.write_logs()?;
    state.set_committed(commit.committed);
    to_committer.send(commit).map_err(|_| Error::Stopped)
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

/// The committer: for each group of batches queued, syncs the logs (so no commit can point past
/// what they hold after a power loss), then records the group in one transaction.
fn commit_all(
    mut conn: Connection,
    events: File,
    trips: File,
    queue: mpsc::Receiver<Commit>,
) -> Result<(), Error> {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        group.extend(queue.try_iter());
        events.sync_data().io(|| "syncing events.log".to_owned())?;
        trips.sync_data().io(|| "syncing trips.log".to_owned())?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db("starting a transaction")?;
        for c in &group {
            write_quarantine(&tx, &c.rejects)?;
            let [records, blank, duplicates] = c.tally;
            count_source(&tx, &c.source, records, blank, duplicates)?;
            if let Some(newest) = c.newest_ns {
                tx.prepare_cached(
                    "INSERT INTO meta (key, value) VALUES ('newest_ns', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                )
                .and_then(|mut s| s.execute([newest]))
                .db("recording the newest event time")?;
            }
            let mut unmark = tx
                .prepare_cached("DELETE FROM orphans WHERE fp0 = ?1 AND fp1 = ?2")
                .db("preparing the orphan unmark")?;
            for fp in &c.unorphaned {
                unmark
                    .execute(params![fp.0[0] as i64, fp.0[1] as i64])
                    .db("clearing an orphan mark")?;
            }
        }
        let last = group.last().expect("a group has a first batch");
        last.committed.write(&tx)?;
        tx.commit().db("committing")?;
    }
    Ok(())
}

fn write_quarantine(conn: &Connection, rejects: &[QuarantineRecord]) -> Result<(), Error> {
    let mut insert = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO quarantine (source, line, reason, detail, raw, first_raw) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .db("preparing the quarantine insert")?;
    for r in rejects {
        insert
            .execute(params![
                r.source,
                r.line as i64,
                r.reason,
                r.detail,
                r.raw.0,
                r.first_copy.as_ref().map(|f| &f.0)
            ])
            .db("quarantining a record")?;
    }
    Ok(())
}

fn quarantine_record(
    job: &Job,
    span: usize,
    reason: Reason,
    detail: &str,
    first: Option<Vec<u8>>,
) -> QuarantineRecord {
    QuarantineRecord {
        source: job.name.clone(),
        line: job.batch.lines[span],
        reason: reason.as_str().to_owned(),
        detail: detail.to_owned(),
        raw: RawBytes(job.batch.raw(span).to_vec()),
        first_copy: first.map(RawBytes),
    }
}
