//! Deciding a batch: a worker parses it in the core, asks the applying thread what the store
//! holds of its trips, and has the core resolve it against that.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, mpsc};

use tripflow_runtime::core::TripEvent;
use tripflow_runtime::core::batch::{BatchResolution, StoredEvent, TripIds};
use tripflow_runtime::fate::Lines;
use tripflow_runtime::{CoreProvider, TripCore, parse_isolating};

use crate::db::StateDir;
use crate::error::Error;
use crate::index::{Fingerprinter, Fp, Identity};

use super::apply::prepare;
use super::{Decided, Done, Hit, Job, Lookup, Message};

/// A worker: batches in, prepared batches out, until the queue closes.
pub(super) fn work<P: CoreProvider>(
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
pub(super) fn lookup(state: &mut StateDir, fps: &[Fp]) -> Result<Vec<Hit>, Error> {
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
