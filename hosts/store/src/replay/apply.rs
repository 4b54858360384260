//! Applying a decided batch: its records encoded on the worker ([`prepare`]), then appended to
//! the logs and the index on the applying thread, in input order ([`apply`], [`write`]).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::mpsc;

use tripflow_runtime::fate::{Fate, FirstCopy};

use crate::db::StateDir;
use crate::error::Error;
use crate::index::{Fp, Identity, OpenHalf};
use crate::log::{NewEvent, TripRecord, encode_event};
use crate::quarantine::{QuarantineRecord, RawBytes};

use super::{
    Closing, Commit, Decided, EventKind, Job, Prepared, Reason, Summary, ToStore, TripStatus,
};

/// Tallies a batch's decisions, collects its rejects and encodes its records (on the worker).
pub(super) fn prepare(job: &Job, decided: &Decided, stored_pos: &[u64]) -> Result<Prepared, Error> {
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
pub(super) fn apply(
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
pub(super) fn write(
    state: &mut StateDir,
    mut commit: Commit,
    to_committer: &mpsc::SyncSender<Commit>,
) -> Result<(), Error> {
    (commit.committed.events_len, commit.committed.trips_len) = state.write_logs()?;
    state.set_committed(commit.committed);
    to_committer.send(commit).map_err(|_| Error::Stopped)
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
