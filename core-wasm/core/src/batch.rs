//! A batch parsed once and resolved later, its events kept where they were parsed.
//!
//! `events.parse` followed by `matching.resolve` moves every accepted event across the
//! component boundary twice: lifted out whole, then lowered back in. A [`Batch`] keeps the
//! parsed events; the host learns only what it must look up (the distinct trip ids) and, after
//! [`Batch::resolve`], only what it must write (the events to store, without their trip id
//! strings again: the host has them). The decisions are those of [`crate::parse_batch`] and [`crate::resolve`]:
//! the same functions run.

use crate::matching::resolve;
use crate::types::{Clock, EventKind, ParseOutcome, Reject, Resolution, Span, TripEvent};

/// What became of one record, without the event itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A valid event (the next of [`ParsedBatch::trip_ids`] is its trip's id).
    Accepted,
    /// Rejected, and why.
    Rejected(Reject),
    /// Only white space.
    Blank,
}

/// The outcomes of a batch and the trip ids the host must look up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedBatch {
    /// One per span, in order.
    pub outcomes: Vec<Parsed>,
    /// The trip id of each accepted event, in order (an id repeats when the batch holds
    /// several events of its trip).
    pub trip_ids: Vec<String>,
}

/// An accepted event decided `store`, with what a store writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// Index among the accepted events (the order of the resolution's decisions and of
    /// [`ParsedBatch::trip_ids`]).
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

/// The resolution of a batch and the events to store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchResolution {
    /// As [`crate::resolve`] over the accepted events, in order.
    pub resolution: Resolution,
    /// The events decided `store`, in order.
    pub new_events: Vec<NewEvent>,
}

/// Parsed events waiting for the host's lookup.
#[derive(Debug, Default)]
pub struct Batch {
    /// The accepted events, in order.
    events: Vec<TripEvent>,
}

impl Batch {
    /// Parses every span of `buffer` (as [`crate::parse_batch`]).
    pub fn parse(buffer: &[u8], spans: &[Span]) -> (Batch, ParsedBatch) {
        let mut events = Vec::with_capacity(spans.len());
        let mut outcomes = Vec::with_capacity(spans.len());
        for outcome in crate::event::parse_batch_iter(buffer, spans) {
            outcomes.push(match outcome {
                ParseOutcome::Accepted(e) => {
                    events.push(e);
                    Parsed::Accepted
                }
                ParseOutcome::Rejected(r) => Parsed::Rejected(r),
                ParseOutcome::Blank => Parsed::Blank,
            });
        }
        let trip_ids = events.iter().map(|e| e.trip_id.clone()).collect();
        (Batch { events }, ParsedBatch { outcomes, trip_ids })
    }

    /// Resolves the accepted events against `stored` (as [`crate::resolve`]).
    pub fn resolve(&self, stored: &[TripEvent], clock: Clock) -> BatchResolution {
        let resolution = resolve(&self.events, stored, clock);
        let new_events = resolution
            .decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| matches!(d, crate::types::Decision::Store))
            .map(|(i, _)| {
                let e = &self.events[i];
                NewEvent {
                    incoming: i as u32,
                    kind: e.kind,
                    timestamp_ns: e.timestamp_ns,
                    fare_cents: e.fare_cents,
                    extras: e.extras.clone(),
                }
            })
            .collect();
        BatchResolution {
            resolution,
            new_events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Decision;

    #[test]
    fn a_batch_decides_as_parse_then_resolve() {
        let lines: [&[u8]; 6] = [
            br#"{"trip_id":"b","event_type":"trip_start","timestamp":"2019-03-01T10:00:00Z"}"#,
            b"  ",
            br#"{"trip_id":"a","event_type":"trip_end","timestamp":"2019-03-01T10:30:00Z","fare":7}"#,
            br#"{"trip_id":"b","event_type":"trip_end","timestamp":"2019-03-01T10:20:00Z","fare":5}"#,
            br#"{"trip_id":"b","event_type":"trip_end","timestamp":"2019-03-01T10:20:00Z","fare":5}"#,
            b"{",
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
        assert_eq!(parsed.trip_ids, ["b", "a", "b", "b"]);
        assert_eq!(parsed.outcomes[0], Parsed::Accepted);
        assert_eq!(parsed.outcomes[1], Parsed::Blank);
        assert_eq!(parsed.outcomes[2], Parsed::Accepted);
        assert!(matches!(
            parsed.outcomes[5],
            Parsed::Rejected(Reject::MalformedJson(_))
        ));

        // A stored start of `a`: the batch's end closes it.
        let stored = vec![TripEvent {
            trip_id: "a".into(),
            kind: EventKind::Start,
            timestamp_ns: 1_551_434_400_000_000_000,
            fare_cents: None,
            extras: String::new(),
        }];
        let r = batch.resolve(&stored, clock);
        let incoming: Vec<TripEvent> = crate::parse_batch(&buf, &spans)
            .into_iter()
            .filter_map(ParseOutcome::into_accepted)
            .collect();
        assert_eq!(r.resolution, resolve(&incoming, &stored, clock));
        assert_eq!(
            r.resolution.decisions[3],
            Decision::Duplicate(crate::types::EventRef::Incoming(2))
        );
        let stores: Vec<u32> = r.new_events.iter().map(|e| e.incoming).collect();
        assert_eq!(stores, [0, 1, 2]);
        assert_eq!(r.new_events[1].fare_cents, Some(700));
    }
}
