//! `replay`: push NDJSON events through the core into the store.
//!
//! Per batch of lines, inside one write transaction: the core parses them and keeps the
//! events; the store is asked for what it holds of the batch's trips; the core decides; the
//! decisions are written and the transaction commits. The host decides nothing: it stores what the core says
//! to store and quarantines what the core rejects, with the original bytes.

use std::collections::BTreeMap;
use std::io::Write;

use rusqlite::params;
use serde::Serialize;
use tripflow_runtime::core::batch::Parsed;
use tripflow_runtime::core::{
    Clock, DEFAULT_MAX_SKEW_NS, Decision, EventRef, ParseOutcome, Reject, Resolution, TripEvent,
    TripStatus,
};
use tripflow_runtime::{CORE_FAILURE, CoreProvider, TripCore, parse_isolating};

use crate::db::{StateDir, StoreTotals, kind_to, status_to};
use crate::error::{DbContext, Error, IoContext};
use crate::input::{Batch, Input, LineReader};
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
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            batch_lines: 65_536,
            batch_bytes: 8 << 20,
            max_skew_ns: DEFAULT_MAX_SKEW_NS,
            arrival_ns: None,
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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
    pub store: StoreTotals,
}

impl Summary {
    fn new() -> Summary {
        Summary {
            rejected: Reject::CODES.iter().map(|c| ((*c).to_owned(), 0)).collect(),
            ..Summary::default()
        }
    }

    /// All rejected records.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Replays `inputs` in order into `state`; rejected records are also written to `quarantine`.
pub fn replay<P: CoreProvider>(
    provider: &P,
    state: &mut StateDir,
    inputs: &[Input],
    opts: &ReplayOptions,
    mut quarantine: Option<&mut dyn Write>,
    progress: &dyn Progress,
) -> Result<Summary, Error> {
    state
        .conn
        .busy_timeout(std::time::Duration::from_secs(30))
        .db("setting the busy timeout")?;
    let mut summary = Summary::new();
    let mut batch = Batch::default();
    // The core decides what is too large; the reader only needs to know how much to pass on.
    let max_record_bytes = provider.session()?.max_record_bytes()?;
    for input in inputs {
        let mut lines = LineReader::new(input.open()?, max_record_bytes);
        while lines
            .fill(&mut batch, opts.batch_lines, opts.batch_bytes)
            .io(|| format!("reading {}", input.name))?
        {
            let clock = Clock {
                arrival_ns: opts.arrival_ns.unwrap_or_else(now_ns),
                max_skew_ns: opts.max_skew_ns,
            };
            let rejects = apply_batch(provider, state, input, &batch, clock, &mut summary)?;
            if let Some(out) = quarantine.as_deref_mut() {
                for r in &rejects {
                    out.write_all(r.to_line().as_bytes())
                        .io(|| "writing the quarantine file".to_owned())?;
                }
            }
            progress.advance(batch.bytes_read);
        }
    }
    if let Some(out) = quarantine {
        out.flush()
            .io(|| "writing the quarantine file".to_owned())?;
    }
    summary.store = state.totals()?;
    Ok(summary)
}

/// Runs one batch through the core and the store in one transaction; returns its quarantine
/// records in line order.
///
/// The core parses the batch and keeps its events (`batches.batch`) while the store looks up
/// the stored events of the batch's trips; then it resolves, and only the events to store come
/// back. If the core fails on the batch, the batch is run again the older way, parse (record by
/// record, isolating the records the core fails on) then resolve, which decides the same.
fn apply_batch<P: CoreProvider>(
    provider: &P,
    state: &mut StateDir,
    input: &Input,
    batch: &Batch,
    clock: Clock,
    summary: &mut Summary,
) -> Result<Vec<QuarantineRecord>, Error> {
    let (records_before, blank_before, duplicates_before) =
        (summary.records, summary.blank_lines, summary.duplicates);
    let rejects = state.write_transaction(|state| {
        let decided = match decide_in_core(provider, state, batch, clock) {
            Err(Error::Core(_)) => decide_isolating(provider, state, batch, clock)?,
            other => other?,
        };
        let mut rejects = Vec::new();
        for (i, outcome) in decided.outcomes.iter().enumerate() {
            match outcome {
                Outcome::Blank => summary.blank_lines += 1,
                Outcome::Accepted => summary.records += 1,
                Outcome::Rejected(code, detail) => {
                    summary.records += 1;
                    rejects.push(quarantine_record(input, batch, i, code, detail, None));
                }
            }
        }
        let resolution = &decided.resolution;
        summary.skewed += resolution.skewed.len() as u64;
        write_resolution(state, input, batch, &decided, &mut rejects, summary)?;
        rejects.sort_by_key(|r| r.line);
        write_quarantine(state, &rejects)?;
        state.count_source(
            &input.name,
            summary.records - records_before,
            summary.blank_lines - blank_before,
            summary.duplicates - duplicates_before,
        )?;
        if let Some(newest) = resolution.newest_ns {
            state
                .conn
                .prepare_cached(
                    "INSERT INTO meta (key, value) VALUES ('newest_ns', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                )
                .and_then(|mut s| s.execute([newest]))
                .db("recording the newest event time")?;
        }
        Ok(rejects)
    })?;
    for r in &rejects {
        *summary.rejected.entry(r.reason.clone()).or_default() += 1;
    }
    Ok(rejects)
}

/// What became of one line of a batch.
enum Outcome {
    Blank,
    Accepted,
    /// Reason code and detail.
    Rejected(String, String),
}

/// The core's decisions on a batch, in the shape the store writes.
struct Decided {
    /// One per line.
    outcomes: Vec<Outcome>,
    /// For each accepted event (the resolution's `incoming`), its line in the batch.
    incoming_span: Vec<usize>,
    /// For each accepted event decided `store`, the event; `None` for the others.
    incoming: Vec<Option<TripEvent>>,
    /// What the store held of the batch's trips (what `EventRef::Stored` indexes).
    stored: Vec<TripEvent>,
    resolution: Resolution,
}

/// Looks up the stored events of `ids`, visiting the B-tree in key order (neighbouring
/// lookups then share pages).
fn lookup(state: &StateDir, mut ids: Vec<&str>) -> Result<Vec<TripEvent>, Error> {
    ids.sort_unstable();
    ids.dedup();
    let mut stored = Vec::new();
    for id in ids {
        state.stored_events(id, &mut stored)?;
    }
    Ok(stored)
}

/// The batch in one guest: parse, look up, resolve (`batches.batch`).
fn decide_in_core<P: CoreProvider>(
    provider: &P,
    state: &StateDir,
    batch: &Batch,
    clock: Clock,
) -> Result<Decided, Error> {
    let (parsed, stored, r) =
        provider
            .session()?
            .parse_resolve::<Error>(&batch.buf, &batch.spans, clock, |parsed| {
                lookup(state, parsed.trip_ids.iter().map(String::as_str).collect())
            })?;
    let mut outcomes = Vec::with_capacity(parsed.outcomes.len());
    let mut incoming_span = Vec::with_capacity(parsed.outcomes.len());
    for (i, o) in parsed.outcomes.into_iter().enumerate() {
        outcomes.push(match o {
            Parsed::Accepted => {
                incoming_span.push(i);
                Outcome::Accepted
            }
            Parsed::Rejected(reject) => {
                Outcome::Rejected(reject.code().to_owned(), reject.detail().to_owned())
            }
            Parsed::Blank => Outcome::Blank,
        });
    }
    let mut trip_ids: Vec<Option<String>> = parsed.trip_ids.into_iter().map(Some).collect();
    let mut incoming: Vec<Option<TripEvent>> = vec![None; incoming_span.len()];
    for e in r.new_events {
        let i = e.incoming as usize;
        incoming[i] = Some(TripEvent {
            trip_id: trip_ids[i].take().unwrap_or_default(),
            kind: e.kind,
            timestamp_ns: e.timestamp_ns,
            fare_cents: e.fare_cents,
            extras: e.extras,
        });
    }
    Ok(Decided {
        outcomes,
        incoming_span,
        incoming,
        stored,
        resolution: r.resolution,
    })
}

/// The batch the older way: parse (isolating the records the core fails on), look up, resolve.
fn decide_isolating<P: CoreProvider>(
    provider: &P,
    state: &StateDir,
    batch: &Batch,
    clock: Clock,
) -> Result<Decided, Error> {
    let parsed = parse_isolating(provider, &batch.buf, &batch.spans)?;
    let mut outcomes = Vec::with_capacity(parsed.len());
    let mut events: Vec<TripEvent> = Vec::with_capacity(parsed.len());
    let mut incoming_span = Vec::with_capacity(parsed.len());
    for (i, outcome) in parsed.into_iter().enumerate() {
        outcomes.push(match outcome {
            Ok(ParseOutcome::Blank) => Outcome::Blank,
            Ok(ParseOutcome::Accepted(event)) => {
                events.push(event);
                incoming_span.push(i);
                Outcome::Accepted
            }
            Ok(ParseOutcome::Rejected(reject)) => {
                Outcome::Rejected(reject.code().to_owned(), reject.detail().to_owned())
            }
            Err(failure) => Outcome::Rejected(CORE_FAILURE.to_owned(), failure.to_string()),
        });
    }
    let stored = lookup(state, events.iter().map(|e| e.trip_id.as_str()).collect())?;
    let resolution = provider.session()?.resolve(&events, &stored, clock)?;
    let incoming = events
        .into_iter()
        .zip(&resolution.decisions)
        .map(|(e, d)| matches!(d, Decision::Store).then_some(e))
        .collect();
    Ok(Decided {
        outcomes,
        incoming_span,
        incoming,
        stored,
        resolution,
    })
}

fn write_resolution(
    state: &StateDir,
    input: &Input,
    batch: &Batch,
    decided: &Decided,
    rejects: &mut Vec<QuarantineRecord>,
    summary: &mut Summary,
) -> Result<(), Error> {
    let (incoming, incoming_span, stored, resolution) = (
        &decided.incoming,
        &decided.incoming_span,
        &decided.stored,
        &decided.resolution,
    );
    let new_event = |i: usize| -> &TripEvent {
        incoming[i]
            .as_ref()
            .expect("every event decided `store` is handed back")
    };
    let conn = &state.conn;
    let mut insert_raw = conn
        .prepare_cached("INSERT INTO event_raw (raw, source, line) VALUES (?1, ?2, ?3)")
        .db("preparing the raw event insert")?;
    let mut insert_event = conn
        .prepare_cached(
            "INSERT INTO events (trip_id, kind, timestamp_ns, fare_cents, extras, raw_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .db("preparing the event insert")?;
    // Insert in key order (decisions do not depend on it): far fewer B-tree pages touched.
    let mut order: Vec<usize> = (0..incoming.len()).collect();
    order.sort_unstable_by(|&a, &b| {
        let id = |i: usize| incoming[i].as_ref().map(|e| e.trip_id.as_str());
        id(a).cmp(&id(b))
    });
    for i in order {
        let span = incoming_span[i];
        match &resolution.decisions[i] {
            Decision::Store => {
                let e = new_event(i);
                let raw_id = insert_raw
                    .insert(params![
                        batch.raw(span),
                        input.name,
                        batch.lines[span] as i64
                    ])
                    .db("storing an event's bytes")?;
                insert_event
                    .execute(params![
                        e.trip_id,
                        kind_to(e.kind),
                        e.timestamp_ns,
                        e.fare_cents,
                        e.extras,
                        raw_id
                    ])
                    .db("storing an event")?;
                summary.stored += 1;
            }
            Decision::Duplicate(_) => summary.duplicates += 1,
            Decision::ConflictingDuplicate(conflict) => {
                let first = match conflict.first {
                    EventRef::Incoming(j) => batch.raw(incoming_span[j as usize]).to_vec(),
                    EventRef::Stored(j) => {
                        let s = &stored[j as usize];
                        state.stored_raw(&s.trip_id, s.kind)?
                    }
                };
                rejects.push(quarantine_record(
                    input,
                    batch,
                    span,
                    "conflicting_duplicate",
                    &conflict.detail,
                    Some(first),
                ));
            }
        }
    }

    let mut insert_trip = conn
        .prepare_cached(
            "INSERT INTO trips (trip_id, status, start_ns, end_ns, fare_cents) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .db("preparing the trip insert")?;
    let mut close_open = conn
        .prepare_cached("DELETE FROM open_trips WHERE trip_id = ?1")
        .db("preparing the open-trip delete")?;
    let mut closed: Vec<_> = resolution.closed.iter().collect();
    closed.sort_unstable_by(|a, b| a.trip.trip_id.cmp(&b.trip.trip_id));
    for closing in closed {
        let t = &closing.trip;
        insert_trip
            .execute(params![
                t.trip_id,
                status_to(t.status),
                t.start_ns,
                t.end_ns,
                t.fare_cents
            ])
            .db("storing a closed trip")?;
        close_open
            .execute([&t.trip_id])
            .db("closing an open trip")?;
        match t.status {
            TripStatus::Completed => summary.completed += 1,
            TripStatus::Invalid => summary.invalid += 1,
            TripStatus::NoFare => summary.no_fare += 1,
        }
    }

    let mut open = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO open_trips (trip_id, kind, timestamp_ns, orphaned_ns) VALUES (?1, ?2, ?3, NULL)",
        )
        .db("preparing the open-trip insert")?;
    let mut opened = resolution.opened.clone();
    opened.sort_unstable_by(|&a, &b| {
        new_event(a as usize)
            .trip_id
            .cmp(&new_event(b as usize).trip_id)
    });
    for i in opened {
        let e = new_event(i as usize);
        open.execute(params![e.trip_id, kind_to(e.kind), e.timestamp_ns])
            .db("recording an open trip")?;
    }
    Ok(())
}

fn write_quarantine(state: &StateDir, rejects: &[QuarantineRecord]) -> Result<(), Error> {
    let mut insert = state
        .conn
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
    input: &Input,
    batch: &Batch,
    span: usize,
    reason: &str,
    detail: &str,
    first: Option<Vec<u8>>,
) -> QuarantineRecord {
    QuarantineRecord {
        source: input.name.clone(),
        line: batch.lines[span],
        reason: reason.to_owned(),
        detail: detail.to_owned(),
        raw: RawBytes(batch.raw(span).to_vec()),
        first_copy: first.map(RawBytes),
    }
}
