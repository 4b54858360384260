//! Matching the two halves of a trip, deciding duplicates, and finding orphans.
//!
//! The rules, identical in every host:
//! - the first stored copy of a (trip_id, event_type) wins; an identical later copy is a
//!   duplicate, a different one a conflicting duplicate;
//! - a trip closes when its second half is stored, whatever the arrival order, and since each
//!   half is stored once, it closes exactly once;
//! - resolving a batch gives the same result as resolving its events one at a time;
//! - only events dated no later than the batch's arrival plus the allowed clock skew move the
//!   event-time watermark, so one device with a broken clock cannot orphan every open trip.

use std::collections::HashMap;
use std::fmt::Write;

use foldhash::fast::FixedState;

use crate::money::format_cents;
use crate::time::format_rfc3339_utc;
use crate::types::{
    Clock, ClosedTrip, Closing, Conflict, Decision, EventKind, EventRef, Paired, Resolution,
    TripEvent, TripStatus,
};

/// An event as [`resolve`] reads it, borrowed from wherever the caller keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EventView<'a> {
    pub(crate) trip_id: &'a str,
    pub(crate) kind: EventKind,
    pub(crate) timestamp_ns: i64,
    pub(crate) fare_cents: Option<i64>,
    pub(crate) extras: &'a str,
}

/// What [`resolve_views`] reads an event through.
pub(crate) trait AsView {
    fn as_view(&self) -> EventView<'_>;
}

impl AsView for TripEvent {
    fn as_view(&self) -> EventView<'_> {
        EventView {
            trip_id: &self.trip_id,
            kind: self.kind,
            timestamp_ns: self.timestamp_ns,
            fare_cents: self.fare_cents,
            extras: &self.extras,
        }
    }
}

impl AsView for EventView<'_> {
    fn as_view(&self) -> EventView<'_> {
        *self
    }
}

/// Both halves of a trip as known while a batch is resolved.
#[derive(Default)]
struct Slot<'a> {
    start: Option<(EventRef, EventView<'a>)>,
    end: Option<(EventRef, EventView<'a>)>,
}

impl<'a> Slot<'a> {
    fn half(&mut self, kind: EventKind) -> &mut Option<(EventRef, EventView<'a>)> {
        match kind {
            EventKind::Start => &mut self.start,
            EventKind::End => &mut self.end,
        }
    }
}

/// A [`Resolution`] whose closed trips are `C`: their two halves as [`resolve_views`] finds
/// them (the closing event's index, the start and the end).
pub(crate) struct Resolved<C> {
    pub(crate) decisions: Vec<Decision>,
    pub(crate) closed: C,
    pub(crate) opened: Vec<u32>,
    pub(crate) newest_ns: Option<i64>,
    pub(crate) skewed: Vec<u32>,
}

/// Decides a batch of valid incoming events against the stored events of the same trips.
///
/// `stored` must hold every stored event of every trip id in `incoming` (it may hold more);
/// when it holds two copies of one (trip_id, event_type), the first is the stored one.
/// It does not matter how the host learnt them: read before the batch, or handed back by the
/// conditional writes of the batch's first copies.
pub fn resolve(incoming: &[TripEvent], stored: &[TripEvent], clock: Clock) -> Resolution {
    let r = resolve_views(incoming, stored, clock);
    Resolution {
        decisions: r.decisions,
        closed: r
            .closed
            .into_iter()
            .map(|(closed_by, start, end)| Closing {
                closed_by,
                trip: pair_views(start, end),
            })
            .collect(),
        opened: r.opened,
        newest_ns: r.newest_ns,
        skewed: r.skewed,
    }
}

/// [`resolve`] over borrowed events.
pub(crate) fn resolve_views<'a, I: AsView, S: AsView>(
    incoming: &'a [I],
    stored: &'a [S],
    clock: Clock,
) -> Resolved<Vec<(u32, EventView<'a>, EventView<'a>)>> {
    let horizon = clock.horizon_ns();
    // Each trip's slot, found by its id once per event. The keys are one batch's trip ids (at
    // most the host's batch size, 10,000 records in the Lambda functions), so SipHash's
    // resistance to crafted collisions buys little; a fixed-seed hash costs a fraction of it
    // and keeps the work free of randomness.
    let mut slot_of: HashMap<&str, u32, FixedState> =
        HashMap::with_capacity_and_hasher(incoming.len(), FixedState::default());
    let mut slots: Vec<Slot<'_>> = Vec::with_capacity(incoming.len());
    for (i, event) in stored.iter().enumerate() {
        let event = event.as_view();
        let at = slot_for(&mut slot_of, &mut slots, event.trip_id);
        let half = slots[at].half(event.kind);
        if half.is_none() {
            *half = Some((EventRef::Stored(i as u32), event));
        }
    }

    let mut resolution = Resolved {
        decisions: Vec::with_capacity(incoming.len()),
        closed: Vec::new(),
        opened: Vec::new(),
        newest_ns: None,
        skewed: Vec::new(),
    };
    let mut newly_stored = Vec::new();
    for (i, event) in incoming.iter().enumerate() {
        let event = event.as_view();
        let at = slot_for(&mut slot_of, &mut slots, event.trip_id);
        let slot = &mut slots[at];
        let decision = match slot.half(event.kind) {
            Some((first, earlier)) if *earlier == event => Decision::Duplicate(*first),
            Some((first, earlier)) => Decision::ConflictingDuplicate(Conflict {
                first: *first,
                detail: describe_conflict(earlier, &event),
            }),
            half @ None => {
                *half = Some((EventRef::Incoming(i as u32), event));
                if event.timestamp_ns > horizon {
                    resolution.skewed.push(i as u32);
                } else {
                    resolution.newest_ns = resolution.newest_ns.max(Some(event.timestamp_ns));
                }
                newly_stored.push((i as u32, at));
                if let (Some((_, start)), Some((_, end))) = (slot.start, slot.end) {
                    resolution.closed.push((i as u32, start, end));
                }
                Decision::Store
            }
        };
        resolution.decisions.push(decision);
    }
    resolution.opened = newly_stored
        .into_iter()
        .filter(|&(_, at)| slots[at].start.is_none() || slots[at].end.is_none())
        .map(|(i, _)| i)
        .collect();
    resolution
}

/// The index in `slots` of `trip_id`'s slot, a new one the first time the id is seen.
fn slot_for<'a>(
    slot_of: &mut HashMap<&'a str, u32, FixedState>,
    slots: &mut Vec<Slot<'a>>,
    trip_id: &'a str,
) -> usize {
    let next = slots.len() as u32;
    let at = *slot_of.entry(trip_id).or_insert(next);
    if at == next {
        slots.push(Slot::default());
    }
    at as usize
}

/// Closes a trip from its two halves.
///
/// End before start makes it `invalid` (checked first); otherwise the fare is the end's,
/// else the start's, and a trip with neither is `no_fare`.
pub fn pair(start: &TripEvent, end: &TripEvent) -> ClosedTrip {
    pair_views(start.as_view(), end.as_view())
}

/// [`pair`] of every trip's two halves, in order, each with the UTC date of its start: the
/// date a host files the trip under for a KPI job (see `kpi.local-days` for the local days one
/// such date overlaps).
pub fn pair_all(trips: &[(TripEvent, TripEvent)]) -> Vec<Paired> {
    trips
        .iter()
        .map(|(start, end)| {
            let trip = pair(start, end);
            let utc_day = crate::kpi::utc_day(trip.start_ns);
            Paired { trip, utc_day }
        })
        .collect()
}

fn pair_views(start: EventView<'_>, end: EventView<'_>) -> ClosedTrip {
    let (status, fare_cents) = outcome(&start, &end);
    ClosedTrip {
        trip_id: start.trip_id.to_owned(),
        status,
        start_ns: start.timestamp_ns,
        end_ns: end.timestamp_ns,
        fare_cents,
    }
}

/// A closed trip's status and fare (see [`pair`]).
pub(crate) fn outcome(start: &EventView<'_>, end: &EventView<'_>) -> (TripStatus, Option<i64>) {
    let fare_cents = end.fare_cents.or(start.fare_cents);
    let status = if end.timestamp_ns < start.timestamp_ns {
        TripStatus::Invalid
    } else if cfg!(feature = "fixture-fare-cap") && fare_cents.is_some_and(|f| f > 10_000) {
        // The test fixture's changed rule (never in a shipped build).
        TripStatus::Invalid
    } else if fare_cents.is_none() {
        TripStatus::NoFare
    } else {
        TripStatus::Completed
    };
    (status, fare_cents)
}

/// Indices of the open trips (given by the timestamp of their one stored half) that are older
/// than `older_than_ns` measured back from `newest_ns`.
pub fn sweep(open_timestamps: &[i64], newest_ns: i64, older_than_ns: i64) -> Vec<u32> {
    let cutoff = newest_ns.saturating_sub(older_than_ns);
    open_timestamps
        .iter()
        .enumerate()
        .filter(|(_, ts)| **ts < cutoff)
        .map(|(i, _)| i as u32)
        .collect()
}

fn describe_conflict(first: &EventView<'_>, copy: &EventView<'_>) -> String {
    let mut out = format!(
        "{} of trip {:?} was already stored with different content:",
        first.kind.as_str(),
        first.trip_id
    );
    if first.timestamp_ns != copy.timestamp_ns {
        let _ = write!(
            out,
            " timestamp stored {}, this copy {};",
            format_rfc3339_utc(first.timestamp_ns),
            format_rfc3339_utc(copy.timestamp_ns)
        );
    }
    if first.fare_cents != copy.fare_cents {
        let show = |f: Option<i64>| f.map_or_else(|| "none".to_owned(), format_cents);
        let _ = write!(
            out,
            " fare stored {}, this copy {};",
            show(first.fare_cents),
            show(copy.fare_cents)
        );
    }
    if first.extras != copy.extras {
        let show = |e: &str| {
            if e.is_empty() {
                "{}".to_owned()
            } else {
                e.to_owned()
            }
        };
        let _ = write!(
            out,
            " other fields stored {}, this copy {};",
            show(first.extras),
            show(copy.extras)
        );
    }
    out.pop();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, kind: EventKind, secs: i64, fare: Option<i64>) -> TripEvent {
        TripEvent {
            trip_id: id.into(),
            kind,
            timestamp_ns: secs * 1_000_000_000,
            fare_cents: fare,
            extras: String::new(),
        }
    }
    use EventKind::{End, Start};

    const CLOCK: Clock = Clock {
        arrival_ns: 1_000_000_000_000,
        max_skew_ns: 0,
    };

    #[test]
    fn end_before_start_in_one_batch_closes_once() {
        let incoming = [ev("a", End, 20, Some(500)), ev("a", Start, 10, None)];
        let r = resolve(&incoming, &[], CLOCK);
        assert_eq!(r.decisions, [Decision::Store, Decision::Store]);
        assert_eq!(r.closed.len(), 1);
        assert_eq!(r.closed[0].closed_by, 1);
        assert_eq!(r.closed[0].trip.status, TripStatus::Completed);
        assert_eq!(r.closed[0].trip.fare_cents, Some(500));
        assert!(r.opened.is_empty());
        assert_eq!(r.newest_ns, Some(20_000_000_000));
    }

    #[test]
    fn closes_against_the_store_and_never_twice() {
        let stored = [ev("a", Start, 10, Some(100))];
        let r = resolve(&[ev("a", End, 30, None)], &stored, CLOCK);
        assert_eq!(r.closed[0].trip.fare_cents, Some(100));
        let both = [ev("a", Start, 10, Some(100)), ev("a", End, 30, None)];
        let again = resolve(
            &[ev("a", End, 30, None), ev("a", Start, 10, Some(100))],
            &both,
            CLOCK,
        );
        assert_eq!(
            again.decisions,
            [
                Decision::Duplicate(EventRef::Stored(1)),
                Decision::Duplicate(EventRef::Stored(0))
            ]
        );
        assert!(again.closed.is_empty());
        assert_eq!(again.newest_ns, None);
    }

    #[test]
    fn conflicts_name_the_difference_and_the_first_copy() {
        let incoming = [ev("a", End, 30, Some(100)), ev("a", End, 30, Some(200))];
        let r = resolve(&incoming, &[], CLOCK);
        let Decision::ConflictingDuplicate(c) = &r.decisions[1] else {
            panic!("{:?}", r.decisions)
        };
        assert_eq!(c.first, EventRef::Incoming(0));
        assert!(
            c.detail.contains("fare stored 1.00, this copy 2.00"),
            "{}",
            c.detail
        );
        assert_eq!(r.opened, [0]);
    }

    #[test]
    fn a_clock_far_ahead_stores_and_matches_but_does_not_move_the_watermark() {
        let clock = Clock {
            arrival_ns: 100_000_000_000,
            max_skew_ns: 10_000_000_000,
        };
        let incoming = [
            ev("a", Start, 50, Some(100)),
            ev("b", Start, 7_258_118_400, Some(100)), // 2200-01-01
            ev("b", End, 7_258_118_500, None),
            ev("c", Start, 110, None), // exactly at the horizon: moves it
        ];
        let r = resolve(&incoming, &[], clock);
        assert!(r.decisions.iter().all(|d| *d == Decision::Store));
        assert_eq!(r.skewed, [1, 2]);
        assert_eq!(r.closed.len(), 1, "a skewed trip still completes");
        assert_eq!(r.newest_ns, Some(110_000_000_000));
    }

    #[test]
    fn statuses() {
        let t = pair(&ev("a", Start, 10, None), &ev("a", End, 5, Some(1)));
        assert_eq!(t.status, TripStatus::Invalid);
        let t = pair(&ev("a", Start, 10, None), &ev("a", End, 10, None));
        assert_eq!(t.status, TripStatus::NoFare);
        let t = pair(&ev("a", Start, 10, Some(7)), &ev("a", End, 10, Some(9)));
        assert_eq!((t.status, t.fare_cents), (TripStatus::Completed, Some(9)));
    }

    #[test]
    fn sweep_is_relative_to_the_newest_event() {
        assert_eq!(sweep(&[0, 50, 89, 90, 100], 100, 10), [0, 1, 2]);
        assert_eq!(sweep(&[i64::MIN], i64::MIN, 10), Vec::<u32>::new());
    }
}
