//! Order, duplication and batching must not change anything the core decides.
//!
//! A set of trips is turned into events, shuffled, partly duplicated and cut into random
//! batches; the batches are resolved against a simulated store exactly as a host does. The
//! closed trips and the KPI CSV must equal those computed directly from the trips.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use tripflow_core::{
    Clock, ClosedTrip, Decision, EventKind, TripEvent, TripFare, TripStatus, accumulate, finish,
    render_csv, resolve,
};

#[derive(Clone, Debug)]
struct Trip {
    start: i64,
    duration: i64,
    start_fare: Option<i64>,
    end_fare: Option<i64>,
}

fn trips() -> impl Strategy<Value = Vec<Trip>> {
    prop::collection::vec(
        (
            0i64..5 * 86_400,
            -600i64..7_200,
            prop::option::weighted(0.2, 0i64..=tripflow_core::money::MAX_FARE_CENTS),
            prop::option::weighted(0.9, 0i64..=tripflow_core::money::MAX_FARE_CENTS),
        )
            .prop_map(|(start, duration, start_fare, end_fare)| Trip {
                start,
                duration,
                start_fare,
                end_fare,
            }),
        1..60,
    )
}

const NS: i64 = 1_000_000_000;

fn events(trips: &[Trip]) -> Vec<TripEvent> {
    trips
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            let id = format!("trip-{i}");
            [
                TripEvent {
                    trip_id: id.clone(),
                    kind: EventKind::Start,
                    timestamp_ns: t.start * NS,
                    fare_cents: t.start_fare,
                    extras: String::new(),
                },
                TripEvent {
                    trip_id: id,
                    kind: EventKind::End,
                    timestamp_ns: (t.start + t.duration) * NS,
                    fare_cents: t.end_fare,
                    extras: String::new(),
                },
            ]
        })
        .collect()
}

/// What the trips must come to, computed without the matcher.
fn expected(trips: &[Trip]) -> BTreeMap<String, (TripStatus, Option<i64>)> {
    trips
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let fare = t.end_fare.or(t.start_fare);
            let status = if t.duration < 0 {
                TripStatus::Invalid
            } else if fare.is_none() {
                TripStatus::NoFare
            } else {
                TripStatus::Completed
            };
            (format!("trip-{i}"), (status, fare))
        })
        .collect()
}

/// Resolves `stream` in batches of the given sizes against a simulated store.
fn run(stream: &[TripEvent], batch_sizes: &[usize]) -> Vec<ClosedTrip> {
    let mut store: HashMap<(String, EventKind), TripEvent> = HashMap::new();
    let mut closed = Vec::new();
    let mut rest = stream;
    let mut sizes = batch_sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        let stored: Vec<TripEvent> = store
            .values()
            .filter(|e| batch.iter().any(|b| b.trip_id == e.trip_id))
            .cloned()
            .collect();
        let clock = Clock {
            arrival_ns: i64::MAX,
            max_skew_ns: 0,
        };
        let r = resolve(batch, &stored, clock);
        for (e, d) in batch.iter().zip(&r.decisions) {
            match d {
                Decision::Store => {
                    assert!(
                        store
                            .insert((e.trip_id.clone(), e.kind), e.clone())
                            .is_none()
                    );
                }
                Decision::Duplicate(_) => {}
                Decision::ConflictingDuplicate(c) => panic!("no conflicts expected: {c:?}"),
            }
        }
        closed.extend(r.closed.into_iter().map(|c| c.trip));
    }
    closed.sort_by(|a, b| a.trip_id.cmp(&b.trip_id));
    closed
}

fn csv(closed: &[ClosedTrip], zone: &str) -> String {
    let fares: Vec<TripFare> = closed.iter().map(TripFare::from).collect();
    // Aggregate in two halves to exercise merging running totals.
    let (a, b) = fares.split_at(fares.len() / 2);
    let totals = accumulate(zone, &accumulate(zone, &[], a).unwrap(), b).unwrap();
    render_csv(&finish(&totals, None, None).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn order_duplicates_and_batches_do_not_matter(
        trips in trips(),
        seed in any::<u64>(),
        dup_every in 1usize..6,
        batch_sizes in prop::collection::vec(1usize..17, 1..5),
    ) {
        let mut stream = events(&trips);
        let ordered = run(&stream, &[usize::MAX]);
        // Duplicate some events, then shuffle deterministically from the seed.
        let dups: Vec<TripEvent> = stream.iter().step_by(dup_every).cloned().collect();
        stream.extend(dups);
        let mut rng = tripflow_core::generate::SplitMix64::new(seed);
        for i in (1..stream.len()).rev() {
            stream.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let shuffled = run(&stream, &batch_sizes);

        prop_assert_eq!(&shuffled, &ordered);
        let want = expected(&trips);
        prop_assert_eq!(shuffled.len(), want.len(), "every trip closes exactly once");
        for t in &shuffled {
            prop_assert_eq!(want[&t.trip_id], (t.status, t.fare_cents));
        }
        for zone in ["UTC", "America/New_York", "Asia/Kolkata"] {
            prop_assert_eq!(csv(&shuffled, zone), csv(&ordered, zone));
        }
    }

    #[test]
    fn parsing_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = tripflow_core::parse_record(&bytes);
    }
}
