//! The core's own cost, component vs native, with no store behind it: parse + resolve of
//! generated events in 8,192-line batches (each batch a fresh store for the component, as the
//! Lambda functions do; the batch group also with one instance for all, as the replay does),
//! and KPI accumulation of the closed trips.
//!
//! `cargo bench -p tripflow-runtime --bench core`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tripflow_core::generate::{GenerateOptions, generate};
use tripflow_core::{Clock, EventKind, ParseOutcome, Span, TripEvent, TripFare};
use tripflow_runtime::{ComponentSource, CoreProvider, Limits, NativeCore, Runtime, TripCore};

/// Every generated event is far in the past of this arrival time: none is skewed.
const CLOCK: Clock = Clock {
    arrival_ns: i64::MAX,
    max_skew_ns: 0,
};

const LINES_PER_BATCH: usize = 8192;

struct Batch {
    buf: Vec<u8>,
    spans: Vec<Span>,
}

fn batches(trips: u64) -> (Vec<Batch>, u64) {
    let mut data = Vec::new();
    let opts = GenerateOptions {
        trips,
        seed: 1,
        duplicates: 0.05,
        shuffle: true,
        poison: 0.001,
    };
    generate(&opts, &mut data).unwrap();
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let total = lines.len() as u64;
    let batches = lines
        .chunks(LINES_PER_BATCH)
        .map(|chunk| {
            let mut buf = Vec::new();
            let mut spans = Vec::new();
            for line in chunk {
                spans.push(Span {
                    offset: buf.len() as u32,
                    len: line.len() as u32,
                });
                buf.extend_from_slice(line);
            }
            Batch { buf, spans }
        })
        .collect();
    (batches, total)
}

/// Parses and resolves every batch; returns the closed trips' fares.
fn run<P: CoreProvider>(core: &P, batches: &[Batch]) -> Vec<TripFare> {
    let mut fares = Vec::new();
    for b in batches {
        let mut session = core.session().unwrap();
        let events: Vec<_> = session
            .parse(&b.buf, &b.spans)
            .unwrap()
            .into_iter()
            .filter_map(ParseOutcome::into_accepted)
            .collect();
        let r = session.resolve(&events, &[], CLOCK).unwrap();
        fares.extend(r.closed.into_iter().map(|c| TripFare {
            status: c.trip.status,
            start_ns: c.trip.start_ns,
            fare_cents: c.trip.fare_cents,
        }));
    }
    fares
}

/// [`run`] through the batch resource: parse, (no stored events), resolve; a fresh session
/// per batch (as the Lambda functions do) or one for all (as the replay's core threads do).
fn run_batch<P: CoreProvider>(core: &P, batches: &[Batch], fresh: bool) -> Vec<TripFare> {
    let mut fares = Vec::new();
    let mut session = core.session().unwrap();
    for b in batches {
        if fresh {
            session = core.session().unwrap();
        }
        let (_, r) = session
            .parse_resolve::<tripflow_runtime::CoreError>(&b.buf, &b.spans, CLOCK, |_| {
                Ok(Vec::new())
            })
            .unwrap();
        fares.extend(r.closed.into_iter().map(|c| TripFare {
            status: c.status,
            start_ns: c.start_ns,
            fare_cents: c.fare_cents,
        }));
    }
    fares
}

fn bench(c: &mut Criterion) {
    let runtime = Runtime::load(&ComponentSource::Embedded, Limits::default(), None).unwrap();
    let (batches, lines) = batches(100_000);
    let fares = run(&NativeCore, &batches);
    assert_eq!(
        run_batch(&runtime, &batches, true),
        fares,
        "the batch resource decides the same"
    );

    let mut group = c.benchmark_group("parse+resolve");
    group.throughput(Throughput::Elements(lines));
    group.sample_size(10);
    group.bench_function("native", |b| {
        b.iter(|| black_box(run(&NativeCore, &batches)))
    });
    group.bench_function("component", |b| {
        b.iter(|| black_box(run(&runtime, &batches)))
    });
    group.finish();

    // The same work as one batch resource (`batches.batch`): the events stay in the guest.
    let mut group = c.benchmark_group("parse+resolve (batch)");
    group.throughput(Throughput::Elements(lines));
    group.sample_size(10);
    group.bench_function("native", |b| {
        b.iter(|| black_box(run_batch(&NativeCore, &batches, true)))
    });
    group.bench_function("component", |b| {
        b.iter(|| black_box(run_batch(&runtime, &batches, true)))
    });
    group.bench_function("component, one instance", |b| {
        b.iter(|| black_box(run_batch(&runtime, &batches, false)))
    });
    group.finish();

    // The two calls apart: where does the component lose time?
    let parsed: Vec<Vec<tripflow_core::TripEvent>> = batches
        .iter()
        .map(|b| {
            NativeCore
                .parse(&b.buf, &b.spans)
                .unwrap()
                .into_iter()
                .filter_map(ParseOutcome::into_accepted)
                .collect()
        })
        .collect();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(lines));
    group.sample_size(10);
    group.bench_function("native", |b| {
        b.iter(|| {
            batches
                .iter()
                .map(|x| NativeCore.parse(&x.buf, &x.spans).unwrap().len())
                .sum::<usize>()
        })
    });
    group.bench_function("component", |b| {
        b.iter(|| {
            batches
                .iter()
                .map(|x| {
                    runtime
                        .session()
                        .unwrap()
                        .parse(&x.buf, &x.spans)
                        .unwrap()
                        .len()
                })
                .sum::<usize>()
        })
    });
    group.finish();
    let mut group = c.benchmark_group("resolve");
    group.throughput(Throughput::Elements(lines));
    group.sample_size(10);
    group.bench_function("native", |b| {
        b.iter(|| {
            parsed
                .iter()
                .map(|e| NativeCore.resolve(e, &[], CLOCK).unwrap().closed.len())
                .sum::<usize>()
        })
    });
    group.bench_function("component", |b| {
        b.iter(|| {
            parsed
                .iter()
                .map(|e| {
                    runtime
                        .session()
                        .unwrap()
                        .resolve(e, &[], CLOCK)
                        .unwrap()
                        .closed
                        .len()
                })
                .sum::<usize>()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("kpi-accumulate");
    group.throughput(Throughput::Elements(fares.len() as u64));
    group.sample_size(10);
    for (name, zone) in [("utc", "UTC"), ("new-york", "America/New_York")] {
        group.bench_function(format!("native/{name}"), |b| {
            b.iter(|| black_box(NativeCore.accumulate(zone, &[], &fares).unwrap()))
        });
        group.bench_function(format!("component/{name}"), |b| {
            b.iter(|| {
                black_box(
                    runtime
                        .session()
                        .unwrap()
                        .accumulate(zone, &[], &fares)
                        .unwrap(),
                )
            })
        });
    }
    group.finish();

    // The matcher's core calls for one stream batch (100 records: about 100 closed trips),
    // in a fresh session as the matcher opens one per batch: before contract 0.6.0 a `pair`
    // and a `day-of` per trip, now one `pair-all` and one `utc-days-touched`.
    let trips: Vec<(TripEvent, TripEvent)> = (0..100)
        .map(|i| {
            let half = |kind, ts: i64, fare| TripEvent {
                trip_id: format!("trip-{i:06}"),
                kind,
                timestamp_ns: ts,
                fare_cents: fare,
                extras: String::new(),
            };
            let start = 1_551_398_400_000_000_000 + i * 60_000_000_000;
            (
                half(EventKind::Start, start, None),
                half(EventKind::End, start + 900_000_000_000, Some(1_250 + i)),
            )
        })
        .collect();
    let mut group = c.benchmark_group("matcher-batch");
    group.throughput(Throughput::Elements(trips.len() as u64));
    group.bench_function("component/pair + day-of per trip", |b| {
        b.iter(|| {
            let mut s = runtime.session().unwrap();
            for (start, end) in &trips {
                let t = s.pair(start, end).unwrap();
                black_box(s.day_of("UTC", t.start_ns).unwrap());
            }
        })
    });
    group.bench_function("component/pair-all + utc-days-touched per batch", |b| {
        b.iter(|| {
            let mut s = runtime.session().unwrap();
            let paired = s.pair_all(&trips).unwrap();
            let fares: Vec<TripFare> = paired.iter().map(|p| TripFare::from(&p.trip)).collect();
            black_box(s.utc_days_touched(&fares).unwrap())
        })
    });
    group.finish();

    c.bench_function("session (fresh store + instance)", |b| {
        b.iter(|| black_box(runtime.session().unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
