//! A batch parsed once and resolved later, its events kept where they were parsed
//! (`batches.batch` in the contract).
//!
//! `events.parse` followed by `matching.resolve` moves every accepted event across the
//! component boundary twice: lifted out whole, then lowered back in. A [`Batch`] keeps the
//! parsed events; the host learns only what it must look up (the trip ids, in one string) and,
//! after [`Batch::resolve`], only what it must write: the events to store and the trips closed,
//! without their trip ids (the host has them). Every list is flat and indexes the accepted
//! events, so no string per event crosses the boundary. The decisions are those of
//! [`crate::parse_batch`] and [`crate::resolve`]: the same functions run.

use crate::event::{Record, read_batch};
use crate::matching::{EventView, outcome, resolve_views};
use crate::types::{Clock, Decision, EventKind, EventRef, Reject, Span, TripStatus};

/// A record that is not an accepted event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Its index among the batch's spans.
    pub line: u32,
    /// Why it was rejected; `None` when it is only white space.
    pub reason: Option<Reject>,
}

/// The trip ids of a batch's accepted events, in one string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TripIds {
    text: String,
    ends: Vec<u32>,
}

impl TripIds {
    /// From the contract's form: the ids one after another and where each ends. `None` when
    /// the ends are not a rising sequence of char boundaries within `text`.
    pub fn new(text: String, ends: Vec<u32>) -> Option<TripIds> {
        let mut start = 0;
        for &end in &ends {
            let end = end as usize;
            // `is_char_boundary` is false past the end too.
            if end < start || !text.is_char_boundary(end) {
                return None;
            }
            start = end;
        }
        Some(TripIds { text, ends })
    }

    fn push(&mut self, id: &str) {
        self.text.push_str(id);
        self.ends.push(self.text.len() as u32);
    }

    /// The trip id of accepted event `i`.
    ///
    /// # Panics
    /// When there is no accepted event `i`.
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    /// How many accepted events there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the batch accepted no event.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The ids in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The contract's form: the ids one after another, and where each ends.
    pub fn into_parts(self) -> (String, Vec<u32>) {
        (self.text, self.ends)
    }
}

impl<'a> FromIterator<&'a str> for TripIds {
    fn from_iter<I: IntoIterator<Item = &'a str>>(ids: I) -> TripIds {
        let mut out = TripIds::default();
        for id in ids {
            out.push(id);
        }
        out
    }
}

/// The outcomes of a batch and the trip ids the host must look up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedBatch {
    /// The records rejected or blank, in span order; every other span is an accepted event,
    /// numbered from 0 in span order.
    pub skipped: Vec<Skipped>,
    /// The trip id of each accepted event, in order (an id repeats when the batch holds
    /// several events of its trip).
    pub trip_ids: TripIds,
}

/// A stored event of one of the batch's trips, as the host looked it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// An accepted event of the same trip.
    pub trip_of: u32,
    /// Start or end.
    pub kind: EventKind,
    /// The event's instant, ns.
    pub timestamp_ns: i64,
    /// The fare, cents.
    pub fare_cents: Option<i64>,
    /// Canonical extra fields.
    pub extras: String,
}

/// An accepted event decided `store`, with what a store writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// The accepted event.
    pub incoming: u32,
    /// Start or end.
    pub kind: EventKind,
    /// The event's instant, ns.
    pub timestamp_ns: i64,
    /// The fare, cents.
    pub fare_cents: Option<i64>,
    /// Canonical extra fields.
    pub extras: String,
}

/// An accepted event that is an identical copy of one stored first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duplicate {
    /// The accepted event.
    pub incoming: u32,
    /// The copy stored first.
    pub first: EventRef,
}

/// An accepted event whose (trip id, event type) was stored first with other content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictingDuplicate {
    /// The accepted event.
    pub incoming: u32,
    /// The copy stored first.
    pub first: EventRef,
    /// What differs.
    pub detail: String,
}

/// A trip the batch closes; its id is the closing event's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The accepted event whose storing closed it.
    pub closed_by: u32,
    /// The outcome.
    pub status: TripStatus,
    /// The start's instant, ns.
    pub start_ns: i64,
    /// The end's instant, ns.
    pub end_ns: i64,
    /// The end's fare, else the start's.
    pub fare_cents: Option<i64>,
}

/// The resolution of a batch: [`crate::resolve`]'s, each accepted event's decision given by the
/// list that names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchResolution {
    /// The accepted events decided `store`, in order.
    pub new_events: Vec<NewEvent>,
    /// The accepted events decided `duplicate`, in order.
    pub duplicates: Vec<Duplicate>,
    /// The accepted events decided `conflicting duplicate`, in order.
    pub conflicts: Vec<ConflictingDuplicate>,
    /// The trips closed, in the order of the events that closed them.
    pub closed: Vec<Closed>,
    /// The accepted events stored whose trips stay open.
    pub opened: Vec<u32>,
    /// The newest event time among the events stored, skewed ones left out.
    pub newest_ns: Option<i64>,
    /// The accepted events stored that are dated past the clock's horizon.
    pub skewed: Vec<u32>,
}

impl BatchResolution {
    /// Each accepted event's decision, in order, as [`crate::resolve`] gives them.
    pub fn decisions(&self) -> Vec<Decision> {
        let accepted = self.new_events.len() + self.duplicates.len() + self.conflicts.len();
        let mut decisions = vec![Decision::Store; accepted];
        for d in &self.duplicates {
            decisions[d.incoming as usize] = Decision::Duplicate(d.first);
        }
        for c in &self.conflicts {
            decisions[c.incoming as usize] =
                Decision::ConflictingDuplicate(crate::types::Conflict {
                    first: c.first,
                    detail: c.detail.clone(),
                });
        }
        decisions
    }

    /// The flat form of `resolution`, the resolution of `incoming` (a host that decided a
    /// batch with `matching.resolve` writes it the same way).
    pub fn from_resolution(
        resolution: crate::types::Resolution,
        incoming: &[crate::types::TripEvent],
    ) -> BatchResolution {
        let closed = resolution
            .closed
            .iter()
            .map(|c| Closed {
                closed_by: c.closed_by,
                status: c.trip.status,
                start_ns: c.trip.start_ns,
                end_ns: c.trip.end_ns,
                fare_cents: c.trip.fare_cents,
            })
            .collect();
        let r = crate::matching::Resolved {
            decisions: resolution.decisions,
            closed: (),
            opened: resolution.opened,
            newest_ns: resolution.newest_ns,
            skewed: resolution.skewed,
        };
        BatchResolution::assemble(r, closed, |i| {
            let e = &incoming[i];
            (e.kind, e.timestamp_ns, e.fare_cents, e.extras.clone())
        })
    }

    /// A resolution with `closed`, each decision filed in its list; `event(i)` gives accepted
    /// event `i` to store.
    fn assemble<C>(
        r: crate::matching::Resolved<C>,
        closed: Vec<Closed>,
        event: impl Fn(usize) -> (EventKind, i64, Option<i64>, String),
    ) -> BatchResolution {
        let mut out = BatchResolution {
            new_events: Vec::with_capacity(r.decisions.len()),
            closed,
            opened: r.opened,
            newest_ns: r.newest_ns,
            skewed: r.skewed,
            ..BatchResolution::default()
        };
        out.file(r.decisions, event);
        out
    }

    fn file(
        &mut self,
        decisions: Vec<Decision>,
        event: impl Fn(usize) -> (EventKind, i64, Option<i64>, String),
    ) {
        for (i, decision) in decisions.into_iter().enumerate() {
            let incoming = i as u32;
            match decision {
                Decision::Store => {
                    let (kind, timestamp_ns, fare_cents, extras) = event(i);
                    self.new_events.push(NewEvent {
                        incoming,
                        kind,
                        timestamp_ns,
                        fare_cents,
                        extras,
                    });
                }
                Decision::Duplicate(first) => self.duplicates.push(Duplicate { incoming, first }),
                Decision::ConflictingDuplicate(c) => self.conflicts.push(ConflictingDuplicate {
                    incoming,
                    first: c.first,
                    detail: c.detail,
                }),
            }
        }
    }
}

/// An accepted event without its trip id (kept in the batch's [`TripIds`]).
#[derive(Debug)]
struct Body {
    kind: EventKind,
    timestamp_ns: i64,
    fare_cents: Option<i64>,
    extras: String,
}

/// Parsed events waiting for the host's lookup.
#[derive(Debug, Default)]
pub struct Batch {
    ids: TripIds,
    events: Vec<Body>,
}

impl Batch {
    /// Parses every span of `buffer` (as [`crate::parse_batch`]).
    pub fn parse(buffer: &[u8], spans: &[Span]) -> (Batch, ParsedBatch) {
        let mut batch = Batch {
            ids: TripIds {
                text: String::with_capacity(spans.len() * 16),
                ends: Vec::with_capacity(spans.len()),
            },
            events: Vec::with_capacity(spans.len()),
        };
        let mut skipped = Vec::new();
        for (line, record) in read_batch(buffer, spans).enumerate() {
            let reason = match record {
                Record::Accepted(e) => {
                    batch.ids.push(&e.trip_id);
                    batch.events.push(Body {
                        kind: e.kind,
                        timestamp_ns: e.timestamp_ns,
                        fare_cents: e.fare_cents,
                        extras: e.extras,
                    });
                    continue;
                }
                Record::Rejected(r) => Some(r),
                Record::Blank => None,
            };
            skipped.push(Skipped {
                line: line as u32,
                reason,
            });
        }
        let parsed = ParsedBatch {
            skipped,
            trip_ids: batch.ids.clone(),
        };
        (batch, parsed)
    }

    /// Resolves the accepted events against `stored` (as [`crate::resolve`]).
    ///
    /// # Panics
    /// When a stored event's `trip_of` names no accepted event.
    pub fn resolve(&self, stored: &[StoredEvent], clock: Clock) -> BatchResolution {
        let incoming: Vec<EventView<'_>> = self
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| EventView {
                trip_id: self.ids.get(i),
                kind: e.kind,
                timestamp_ns: e.timestamp_ns,
                fare_cents: e.fare_cents,
                extras: &e.extras,
            })
            .collect();
        let stored: Vec<EventView<'_>> = stored
            .iter()
            .map(|e| EventView {
                trip_id: self.ids.get(e.trip_of as usize),
                kind: e.kind,
                timestamp_ns: e.timestamp_ns,
                fare_cents: e.fare_cents,
                extras: &e.extras,
            })
            .collect();
        let r = resolve_views(&incoming, &stored, clock);
        let closed = r
            .closed
            .iter()
            .map(|(closed_by, start, end)| {
                let (status, fare_cents) = outcome(start, end);
                Closed {
                    closed_by: *closed_by,
                    status,
                    start_ns: start.timestamp_ns,
                    end_ns: end.timestamp_ns,
                    fare_cents,
                }
            })
            .collect();
        let r = crate::matching::Resolved {
            decisions: r.decisions,
            closed: (),
            opened: r.opened,
            newest_ns: r.newest_ns,
            skewed: r.skewed,
        };
        BatchResolution::assemble(r, closed, |i| {
            let e = &self.events[i];
            (e.kind, e.timestamp_ns, e.fare_cents, e.extras.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ParseOutcome, TripEvent};
    use crate::{parse_batch, resolve};

    #[test]
    fn a_batch_decides_as_parse_then_resolve() {
        let lines: [&[u8]; 7] = [
            br#"{"trip_id":"b","event_type":"trip_start","timestamp":"2019-03-01T10:00:00Z"}"#,
            b"  ",
            br#"{"trip_id":"a","event_type":"trip_end","timestamp":"2019-03-01T10:30:00Z","fare":7}"#,
            br#"{"trip_id":"b","event_type":"trip_end","timestamp":"2019-03-01T10:20:00Z","fare":5}"#,
            br#"{"trip_id":"b","event_type":"trip_end","timestamp":"2019-03-01T10:20:00Z","fare":5}"#,
            b"{",
            br#"{"trip_id":"\u00e9","event_type":"trip_end","timestamp":0,"fare":6}"#,
        ];
        let mut buf = Vec::new();
        let mut spans = Vec::new();
        for l in lines {
            spans.push(Span {
                offset: buf.len() as u32,
                len: l.len() as u32,
            });
            buf.extend_from_slice(l);
        }
        let clock = Clock {
            arrival_ns: i64::MAX,
            max_skew_ns: 0,
        };
        let (batch, parsed) = Batch::parse(&buf, &spans);
        assert_eq!(
            parsed.trip_ids.iter().collect::<Vec<_>>(),
            ["b", "a", "b", "b", "é"]
        );
        assert_eq!(parsed.skipped.len(), 2);
        assert_eq!(
            parsed.skipped[0],
            Skipped {
                line: 1,
                reason: None
            }
        );
        assert_eq!(parsed.skipped[1].line, 5);
        assert!(matches!(
            parsed.skipped[1].reason,
            Some(Reject::MalformedJson(_))
        ));
        let (text, ends) = parsed.trip_ids.clone().into_parts();
        assert_eq!(TripIds::new(text, ends), Some(parsed.trip_ids.clone()));
        assert_eq!(
            TripIds::new("é".into(), vec![1]),
            None,
            "not a char boundary"
        );
        assert_eq!(TripIds::new("ab".into(), vec![2, 1]), None, "falling");

        // Stored: a start of `a`, which the batch's end closes, and the end of `é` with
        // another fare, which the batch's end conflicts with.
        let stored = [
            StoredEvent {
                trip_of: 1,
                kind: EventKind::Start,
                timestamp_ns: 1_551_434_400_000_000_000,
                fare_cents: None,
                extras: String::new(),
            },
            StoredEvent {
                trip_of: 4,
                kind: EventKind::End,
                timestamp_ns: 0,
                fare_cents: Some(900),
                extras: String::new(),
            },
        ];
        let r = batch.resolve(&stored, clock);
        let incoming: Vec<TripEvent> = parse_batch(&buf, &spans)
            .into_iter()
            .filter_map(ParseOutcome::into_accepted)
            .collect();
        let as_events: Vec<TripEvent> = stored
            .iter()
            .map(|s| TripEvent {
                trip_id: parsed.trip_ids.get(s.trip_of as usize).to_owned(),
                kind: s.kind,
                timestamp_ns: s.timestamp_ns,
                fare_cents: s.fare_cents,
                extras: s.extras.clone(),
            })
            .collect();
        let reference = resolve(&incoming, &as_events, clock);
        assert_eq!(r.decisions(), reference.decisions);
        assert_eq!(r, BatchResolution::from_resolution(reference, &incoming));
        assert_eq!(r.closed.len(), 2, "a by the stored start, b in the batch");
        assert_eq!(
            r.duplicates,
            [Duplicate {
                incoming: 3,
                first: EventRef::Incoming(2)
            }]
        );
        assert_eq!(r.conflicts.len(), 1);
        assert_eq!(r.conflicts[0].first, EventRef::Stored(1));
        let stores: Vec<u32> = r.new_events.iter().map(|e| e.incoming).collect();
        assert_eq!(stores, [0, 1, 2]);
        assert_eq!(r.new_events[1].fare_cents, Some(700));
    }
}
