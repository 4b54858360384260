//! The tripflow core as a WASI component: only the `tripflow:core@0.7.0` export glue.
//!
//! Every function converts the WIT types to `tripflow_core`'s, calls the library and converts
//! the answer back; there is no logic here to test on its own.

#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        world: "core",
        path: "../../wit",
    });
}

use bindings::exports::tripflow::core::events::{self, ParseOutcome};
use bindings::exports::tripflow::core::kpi::{self, DayKpi, DayTotals, KpiError, TripFare};
use bindings::exports::tripflow::core::matching::{
    self, Clock, ClosedTrip, Closing, Conflict, Decision, EventRef, Halves, OpenTrip, Paired,
    Resolution, TripStatus,
};
use bindings::exports::tripflow::core::types::{
    ContractLimits, EventKind, RejectReason, Span, TripEvent,
};
use bindings::exports::tripflow::core::{batches, report};

use tripflow_core as core;

/// The exported component. Only wasm builds export it: the export symbols' names (which
/// contain `:` and `@`) are not valid in a native linker's version script, and a native build
/// of this crate exists only so that `cargo clippy --workspace` checks the glue.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Component;

#[cfg(target_arch = "wasm32")]
bindings::export!(Component with_types_in bindings);

impl events::Guest for Component {
    fn limits() -> ContractLimits {
        ContractLimits {
            max_record_bytes: core::MAX_RECORD_BYTES,
        }
    }

    fn parse(buffer: Vec<u8>, spans: Vec<Span>) -> Vec<ParseOutcome> {
        let spans = spans_in(spans);
        core::parse_batch(&buffer, &spans)
            .into_iter()
            .map(|outcome| match outcome {
                core::ParseOutcome::Accepted(e) => ParseOutcome::Accepted(event_out(e)),
                core::ParseOutcome::Rejected(r) => ParseOutcome::Rejected(reject_out(r)),
                core::ParseOutcome::Blank => ParseOutcome::Blank,
            })
            .collect()
    }

    fn render(events: Vec<TripEvent>) -> String {
        let events: Vec<core::TripEvent> = events.into_iter().map(event_in).collect();
        core::render_records(&events)
    }
}

impl matching::Guest for Component {
    fn resolve(incoming: Vec<TripEvent>, stored: Vec<TripEvent>, clock: Clock) -> Resolution {
        let incoming: Vec<core::TripEvent> = incoming.into_iter().map(event_in).collect();
        let stored: Vec<core::TripEvent> = stored.into_iter().map(event_in).collect();
        let clock = core::Clock {
            arrival_ns: clock.arrival_ns,
            max_skew_ns: clock.max_skew_ns,
        };
        resolution_out(core::resolve(&incoming, &stored, clock))
    }

    fn pair(start: TripEvent, end: TripEvent) -> ClosedTrip {
        closed_out(core::pair(&event_in(start), &event_in(end)))
    }

    fn pair_all(trips: Vec<Halves>) -> Vec<Paired> {
        let trips: Vec<(core::TripEvent, core::TripEvent)> = trips
            .into_iter()
            .map(|h| (event_in(h.start), event_in(h.end)))
            .collect();
        core::pair_all(&trips)
            .into_iter()
            .map(|p| Paired {
                trip: closed_out(p.trip),
                utc_day: p.utc_day,
            })
            .collect()
    }

    fn sweep(open: Vec<OpenTrip>, newest_ns: i64, older_than_ns: i64) -> Vec<u32> {
        let ts: Vec<i64> = open.iter().map(|o| o.timestamp_ns).collect();
        core::sweep(&ts, newest_ns, older_than_ns)
    }
}

impl kpi::Guest for Component {
    fn check_time_zone(zone: String) -> Result<(), KpiError> {
        core::check_time_zone(&zone).map_err(kpi_error_out)
    }

    fn day_of(zone: String, timestamp_ns: i64) -> Result<String, KpiError> {
        core::day_of(&zone, timestamp_ns).map_err(kpi_error_out)
    }

    fn accumulate(
        zone: String,
        totals: Vec<DayTotals>,
        trips: Vec<TripFare>,
    ) -> Result<Vec<DayTotals>, KpiError> {
        let totals: Vec<core::DayTotals> = totals.into_iter().map(totals_in).collect();
        let trips: Vec<core::TripFare> = trips.into_iter().map(trip_fare_in).collect();
        core::accumulate(&zone, &totals, &trips)
            .map(|v| v.into_iter().map(totals_out).collect())
            .map_err(kpi_error_out)
    }

    fn merge(a: Vec<DayTotals>, b: Vec<DayTotals>) -> Result<Vec<DayTotals>, KpiError> {
        let a: Vec<core::DayTotals> = a.into_iter().map(totals_in).collect();
        let b: Vec<core::DayTotals> = b.into_iter().map(totals_in).collect();
        core::merge(&a, &b)
            .map(|v| v.into_iter().map(totals_out).collect())
            .map_err(kpi_error_out)
    }

    fn finish(
        totals: Vec<DayTotals>,
        from: Option<String>,
        to: Option<String>,
    ) -> Result<Vec<DayKpi>, KpiError> {
        let totals: Vec<core::DayTotals> = totals.into_iter().map(totals_in).collect();
        core::finish(&totals, from.as_deref(), to.as_deref())
            .map(|rows| rows.into_iter().map(kpi_out).collect())
            .map_err(kpi_error_out)
    }

    fn utc_days_touched(trips: Vec<TripFare>) -> Vec<String> {
        let trips: Vec<core::TripFare> = trips.into_iter().map(trip_fare_in).collect();
        core::utc_days_touched(&trips)
    }

    fn local_days(zone: String, utc_days: Vec<String>) -> Result<Vec<String>, KpiError> {
        core::local_days(&zone, &utc_days).map_err(kpi_error_out)
    }

    fn render_csv(rows: Vec<DayKpi>) -> String {
        let rows: Vec<core::DayKpi> = rows.into_iter().map(kpi_in).collect();
        core::render_csv(&rows)
    }
}

impl batches::Guest for Component {
    type Batch = BatchResource;
}

/// The contract's spans as the core's.
fn spans_in(spans: Vec<Span>) -> Vec<core::Span> {
    spans
        .into_iter()
        .map(|s| core::Span {
            offset: s.offset,
            len: s.len,
        })
        .collect()
}

/// `batches.batch`: the core's [`core::batch::Batch`] behind a WIT resource.
struct BatchResource(core::batch::Batch);

impl batches::GuestBatch for BatchResource {
    fn parse(buffer: Vec<u8>, spans: Vec<Span>) -> (batches::Batch, batches::ParsedBatch) {
        let spans = spans_in(spans);
        let (batch, parsed) = core::batch::Batch::parse(&buffer, &spans);
        let (trip_ids, trip_id_ends) = parsed.trip_ids.into_parts();
        let parsed = batches::ParsedBatch {
            skipped: parsed
                .skipped
                .into_iter()
                .map(|s| batches::Skipped {
                    line: s.line,
                    reason: s.reason.map(reject_out),
                })
                .collect(),
            trip_ids,
            trip_id_ends,
        };
        (batches::Batch::new(BatchResource(batch)), parsed)
    }

    fn resolve(&self, stored: Vec<batches::StoredEvent>, clock: Clock) -> batches::BatchResolution {
        let stored: Vec<core::batch::StoredEvent> = stored
            .into_iter()
            .map(|e| core::batch::StoredEvent {
                trip_of: e.trip_of,
                kind: kind_in(e.kind),
                timestamp_ns: e.timestamp_ns,
                fare_cents: e.fare_cents,
                extras: e.extras,
            })
            .collect();
        let r = self.0.resolve(
            &stored,
            core::Clock {
                arrival_ns: clock.arrival_ns,
                max_skew_ns: clock.max_skew_ns,
            },
        );
        batches::BatchResolution {
            new_events: r
                .new_events
                .into_iter()
                .map(|e| batches::NewEvent {
                    incoming: e.incoming,
                    kind: kind_out(e.kind),
                    timestamp_ns: e.timestamp_ns,
                    fare_cents: e.fare_cents,
                    extras: e.extras,
                })
                .collect(),
            duplicates: r
                .duplicates
                .into_iter()
                .map(|d| batches::Duplicate {
                    incoming: d.incoming,
                    first: ref_out(d.first),
                })
                .collect(),
            conflicts: r
                .conflicts
                .into_iter()
                .map(|c| batches::ConflictingDuplicate {
                    incoming: c.incoming,
                    first: ref_out(c.first),
                    detail: c.detail,
                })
                .collect(),
            closed: r
                .closed
                .into_iter()
                .map(|c| batches::Closed {
                    closed_by: c.closed_by,
                    status: status_out(c.status),
                    start_ns: c.start_ns,
                    end_ns: c.end_ns,
                    fare_cents: c.fare_cents,
                })
                .collect(),
            opened: r.opened,
            newest_ns: r.newest_ns,
            skewed: r.skewed,
        }
    }
}

impl report::Guest for Component {
    fn read_csv(csv: String) -> Result<Vec<DayKpi>, KpiError> {
        core::report::read_csv(&csv)
            .map(|rows| rows.into_iter().map(kpi_out).collect())
            .map_err(kpi_error_out)
    }

    fn render_html(request: report::ReportRequest) -> Result<String, KpiError> {
        let p = request.provenance;
        let request = core::report::ReportRequest {
            zone: request.zone,
            from: request.from,
            to: request.to,
            rows: request.rows.into_iter().map(kpi_in).collect(),
            accounting: request.accounting.map(|a| core::report::Accounting {
                records_read: a.records_read,
                blank_lines: a.blank_lines,
                duplicates: a.duplicates,
                stored_events: a.stored_events,
                completed: a.completed,
                invalid: a.invalid,
                no_fare: a.no_fare,
                open: a.open,
                orphaned: a.orphaned,
                rejected: a
                    .rejected
                    .into_iter()
                    .map(|g| core::report::RejectGroup {
                        reason: g.reason,
                        count: g.count,
                        examples: g
                            .examples
                            .into_iter()
                            .map(|e| core::report::RejectExample {
                                source: e.source,
                                line: e.line,
                                detail: e.detail,
                                raw: e.raw,
                            })
                            .collect(),
                    })
                    .collect(),
            }),
            provenance: core::report::Provenance {
                host: p.host,
                component_sha256: p.component_sha256,
                inputs: p.inputs,
                accounting_note: p.accounting_note,
            },
        };
        core::report::render_html(&request).map_err(kpi_error_out)
    }
}

fn resolution_out(r: core::Resolution) -> Resolution {
    Resolution {
        decisions: r.decisions.into_iter().map(decision_out).collect(),
        closed: r
            .closed
            .into_iter()
            .map(|c| Closing {
                closed_by: c.closed_by,
                trip: closed_out(c.trip),
            })
            .collect(),
        opened: r.opened,
        newest_ns: r.newest_ns,
        skewed: r.skewed,
    }
}

fn kind_out(k: core::EventKind) -> EventKind {
    match k {
        core::EventKind::Start => EventKind::TripStart,
        core::EventKind::End => EventKind::TripEnd,
    }
}

fn event_out(e: core::TripEvent) -> TripEvent {
    TripEvent {
        trip_id: e.trip_id,
        kind: kind_out(e.kind),
        timestamp_ns: e.timestamp_ns,
        fare_cents: e.fare_cents,
        extras: e.extras,
    }
}

fn kind_in(k: EventKind) -> core::EventKind {
    match k {
        EventKind::TripStart => core::EventKind::Start,
        EventKind::TripEnd => core::EventKind::End,
    }
}

fn event_in(e: TripEvent) -> core::TripEvent {
    core::TripEvent {
        trip_id: e.trip_id,
        kind: kind_in(e.kind),
        timestamp_ns: e.timestamp_ns,
        fare_cents: e.fare_cents,
        extras: e.extras,
    }
}

fn reject_out(r: core::Reject) -> RejectReason {
    match r {
        core::Reject::MalformedJson(d) => RejectReason::MalformedJson(d),
        core::Reject::MissingField(d) => RejectReason::MissingField(d),
        core::Reject::BadEventType(d) => RejectReason::BadEventType(d),
        core::Reject::BadTimestamp(d) => RejectReason::BadTimestamp(d),
        core::Reject::BadFare(d) => RejectReason::BadFare(d),
        core::Reject::BadTripId(d) => RejectReason::BadTripId(d),
        core::Reject::TooLarge(d) => RejectReason::TooLarge(d),
        core::Reject::ConflictingDuplicate(d) => RejectReason::ConflictingDuplicate(d),
    }
}

fn ref_out(r: core::EventRef) -> EventRef {
    match r {
        core::EventRef::Stored(i) => EventRef::Stored(i),
        core::EventRef::Incoming(i) => EventRef::Incoming(i),
    }
}

fn decision_out(d: core::Decision) -> Decision {
    match d {
        core::Decision::Store => Decision::Store,
        core::Decision::Duplicate(r) => Decision::Duplicate(ref_out(r)),
        core::Decision::ConflictingDuplicate(c) => Decision::ConflictingDuplicate(Conflict {
            first: ref_out(c.first),
            detail: c.detail,
        }),
    }
}

fn status_out(s: core::TripStatus) -> TripStatus {
    match s {
        core::TripStatus::Completed => TripStatus::Completed,
        core::TripStatus::Invalid => TripStatus::Invalid,
        core::TripStatus::NoFare => TripStatus::NoFare,
    }
}

fn status_in(s: TripStatus) -> core::TripStatus {
    match s {
        TripStatus::Completed => core::TripStatus::Completed,
        TripStatus::Invalid => core::TripStatus::Invalid,
        TripStatus::NoFare => core::TripStatus::NoFare,
    }
}

fn closed_out(t: core::ClosedTrip) -> ClosedTrip {
    ClosedTrip {
        trip_id: t.trip_id,
        status: status_out(t.status),
        start_ns: t.start_ns,
        end_ns: t.end_ns,
        fare_cents: t.fare_cents,
    }
}

fn trip_fare_in(t: TripFare) -> core::TripFare {
    core::TripFare {
        status: status_in(t.status),
        start_ns: t.start_ns,
        fare_cents: t.fare_cents,
    }
}

fn totals_in(t: DayTotals) -> core::DayTotals {
    core::DayTotals {
        date: t.date,
        trip_count: t.trip_count,
        total_cents: t.total_cents,
        min_cents: t.min_cents,
        max_cents: t.max_cents,
    }
}

fn totals_out(t: core::DayTotals) -> DayTotals {
    DayTotals {
        date: t.date,
        trip_count: t.trip_count,
        total_cents: t.total_cents,
        min_cents: t.min_cents,
        max_cents: t.max_cents,
    }
}

fn kpi_in(r: DayKpi) -> core::DayKpi {
    core::DayKpi {
        date: r.date,
        trip_count: r.trip_count,
        total_cents: r.total_cents,
        average_cents: r.average_cents,
        min_cents: r.min_cents,
        max_cents: r.max_cents,
    }
}

fn kpi_out(r: core::DayKpi) -> DayKpi {
    DayKpi {
        date: r.date,
        trip_count: r.trip_count,
        total_cents: r.total_cents,
        average_cents: r.average_cents,
        min_cents: r.min_cents,
        max_cents: r.max_cents,
    }
}

fn kpi_error_out(e: core::KpiError) -> KpiError {
    match e {
        core::KpiError::UnknownTimeZone(d) => KpiError::UnknownTimeZone(d),
        core::KpiError::BadDate(d) => KpiError::BadDate(d),
        core::KpiError::Overflow(d) => KpiError::Overflow(d),
    }
}
