//! Field-by-field conversions between the bindgen types and `tripflow_core`'s.

use crate::bindings::exports::tripflow::core::{
    batches as wb, events as we, kpi as wk, matching as wm, report as wr, types as wt,
};
use tripflow_core as c;

pub(crate) fn span_out(s: &c::Span) -> wt::Span {
    wt::Span {
        offset: s.offset,
        len: s.len,
    }
}

fn kind_out(k: c::EventKind) -> wt::EventKind {
    match k {
        c::EventKind::Start => wt::EventKind::TripStart,
        c::EventKind::End => wt::EventKind::TripEnd,
    }
}

pub(crate) fn event_out(e: &c::TripEvent) -> wt::TripEvent {
    wt::TripEvent {
        trip_id: e.trip_id.clone(),
        kind: kind_out(e.kind),
        timestamp_ns: e.timestamp_ns,
        fare_cents: e.fare_cents,
        extras: e.extras.clone(),
    }
}

fn kind_in(k: wt::EventKind) -> c::EventKind {
    match k {
        wt::EventKind::TripStart => c::EventKind::Start,
        wt::EventKind::TripEnd => c::EventKind::End,
    }
}

pub(crate) fn event_in(e: wt::TripEvent) -> c::TripEvent {
    c::TripEvent {
        trip_id: e.trip_id,
        kind: kind_in(e.kind),
        timestamp_ns: e.timestamp_ns,
        fare_cents: e.fare_cents,
        extras: e.extras,
    }
}

fn reject_in(r: wt::RejectReason) -> c::Reject {
    match r {
        wt::RejectReason::MalformedJson(d) => c::Reject::MalformedJson(d),
        wt::RejectReason::MissingField(d) => c::Reject::MissingField(d),
        wt::RejectReason::BadEventType(d) => c::Reject::BadEventType(d),
        wt::RejectReason::BadTimestamp(d) => c::Reject::BadTimestamp(d),
        wt::RejectReason::BadFare(d) => c::Reject::BadFare(d),
        wt::RejectReason::BadTripId(d) => c::Reject::BadTripId(d),
        wt::RejectReason::TooLarge(d) => c::Reject::TooLarge(d),
        wt::RejectReason::ConflictingDuplicate(d) => c::Reject::ConflictingDuplicate(d),
    }
}

pub(crate) fn parse_outcome_in(o: we::ParseOutcome) -> c::ParseOutcome {
    match o {
        we::ParseOutcome::Accepted(e) => c::ParseOutcome::Accepted(event_in(e)),
        we::ParseOutcome::Rejected(r) => c::ParseOutcome::Rejected(reject_in(r)),
        we::ParseOutcome::Blank => c::ParseOutcome::Blank,
    }
}

/// `None` when the trip id ends do not fit the trip ids.
pub(crate) fn parsed_batch_in(p: wb::ParsedBatch) -> Option<c::batch::ParsedBatch> {
    Some(c::batch::ParsedBatch {
        skipped: p
            .skipped
            .into_iter()
            .map(|s| c::batch::Skipped {
                line: s.line,
                reason: s.reason.map(reject_in),
            })
            .collect(),
        trip_ids: c::batch::TripIds::new(p.trip_ids, p.trip_id_ends)?,
    })
}

pub(crate) fn stored_event_out(e: c::batch::StoredEvent) -> wb::StoredEvent {
    wb::StoredEvent {
        trip_of: e.trip_of,
        kind: kind_out(e.kind),
        timestamp_ns: e.timestamp_ns,
        fare_cents: e.fare_cents,
        extras: e.extras,
    }
}

pub(crate) fn batch_resolution_in(r: wb::BatchResolution) -> c::batch::BatchResolution {
    c::batch::BatchResolution {
        new_events: r
            .new_events
            .into_iter()
            .map(|e| c::batch::NewEvent {
                incoming: e.incoming,
                kind: kind_in(e.kind),
                timestamp_ns: e.timestamp_ns,
                fare_cents: e.fare_cents,
                extras: e.extras,
            })
            .collect(),
        duplicates: r
            .duplicates
            .into_iter()
            .map(|d| c::batch::Duplicate {
                incoming: d.incoming,
                first: ref_in(d.first),
            })
            .collect(),
        conflicts: r
            .conflicts
            .into_iter()
            .map(|d| c::batch::ConflictingDuplicate {
                incoming: d.incoming,
                first: ref_in(d.first),
                detail: d.detail,
            })
            .collect(),
        closed: r
            .closed
            .into_iter()
            .map(|t| c::batch::Closed {
                closed_by: t.closed_by,
                status: status_in(t.status),
                start_ns: t.start_ns,
                end_ns: t.end_ns,
                fare_cents: t.fare_cents,
            })
            .collect(),
        opened: r.opened,
        newest_ns: r.newest_ns,
        skewed: r.skewed,
    }
}

fn ref_in(r: wm::EventRef) -> c::EventRef {
    match r {
        wm::EventRef::Stored(i) => c::EventRef::Stored(i),
        wm::EventRef::Incoming(i) => c::EventRef::Incoming(i),
    }
}

fn status_in(s: wm::TripStatus) -> c::TripStatus {
    match s {
        wm::TripStatus::Completed => c::TripStatus::Completed,
        wm::TripStatus::Invalid => c::TripStatus::Invalid,
        wm::TripStatus::NoFare => c::TripStatus::NoFare,
    }
}

fn status_out(s: c::TripStatus) -> wm::TripStatus {
    match s {
        c::TripStatus::Completed => wm::TripStatus::Completed,
        c::TripStatus::Invalid => wm::TripStatus::Invalid,
        c::TripStatus::NoFare => wm::TripStatus::NoFare,
    }
}

pub(crate) fn halves_out(start: &c::TripEvent, end: &c::TripEvent) -> wm::Halves {
    wm::Halves {
        start: event_out(start),
        end: event_out(end),
    }
}

pub(crate) fn paired_in(p: wm::Paired) -> c::Paired {
    c::Paired {
        trip: closed_in(p.trip),
        utc_day: p.utc_day,
    }
}

/// The contract's reasons as the core's: the exhaustive match is what ties
/// `tripflow_core::Reason` to the WIT enum `types.reason` (a case added to either side fails to
/// compile here or in the test below).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn reason_in(r: wt::Reason) -> c::Reason {
    match r {
        wt::Reason::MalformedJson => c::Reason::MalformedJson,
        wt::Reason::MissingField => c::Reason::MissingField,
        wt::Reason::BadEventType => c::Reason::BadEventType,
        wt::Reason::BadTimestamp => c::Reason::BadTimestamp,
        wt::Reason::BadFare => c::Reason::BadFare,
        wt::Reason::BadTripId => c::Reason::BadTripId,
        wt::Reason::TooLarge => c::Reason::TooLarge,
        wt::Reason::ConflictingDuplicate => c::Reason::ConflictingDuplicate,
        wt::Reason::CoreFailure => c::Reason::CoreFailure,
        wt::Reason::StoreRefused => c::Reason::StoreRefused,
    }
}

pub(crate) fn closed_in(t: wm::ClosedTrip) -> c::ClosedTrip {
    c::ClosedTrip {
        trip_id: t.trip_id,
        status: status_in(t.status),
        start_ns: t.start_ns,
        end_ns: t.end_ns,
        fare_cents: t.fare_cents,
    }
}

pub(crate) fn resolution_in(r: wm::Resolution) -> c::Resolution {
    c::Resolution {
        decisions: r
            .decisions
            .into_iter()
            .map(|d| match d {
                wm::Decision::Store => c::Decision::Store,
                wm::Decision::Duplicate(r) => c::Decision::Duplicate(ref_in(r)),
                wm::Decision::ConflictingDuplicate(x) => {
                    c::Decision::ConflictingDuplicate(c::Conflict {
                        first: ref_in(x.first),
                        detail: x.detail,
                    })
                }
            })
            .collect(),
        closed: r
            .closed
            .into_iter()
            .map(|x| c::Closing {
                closed_by: x.closed_by,
                trip: closed_in(x.trip),
            })
            .collect(),
        opened: r.opened,
        newest_ns: r.newest_ns,
        skewed: r.skewed,
    }
}

pub(crate) fn clock_out(c: c::Clock) -> wm::Clock {
    wm::Clock {
        arrival_ns: c.arrival_ns,
        max_skew_ns: c.max_skew_ns,
    }
}

pub(crate) fn trip_fare_out(t: &c::TripFare) -> wk::TripFare {
    wk::TripFare {
        status: status_out(t.status),
        start_ns: t.start_ns,
        fare_cents: t.fare_cents,
    }
}

pub(crate) fn totals_out(t: &c::DayTotals) -> wk::DayTotals {
    wk::DayTotals {
        date: t.date.clone(),
        trip_count: t.trip_count,
        total_cents: t.total_cents,
        min_cents: t.min_cents,
        max_cents: t.max_cents,
    }
}

pub(crate) fn totals_in(t: wk::DayTotals) -> c::DayTotals {
    c::DayTotals {
        date: t.date,
        trip_count: t.trip_count,
        total_cents: t.total_cents,
        min_cents: t.min_cents,
        max_cents: t.max_cents,
    }
}

pub(crate) fn kpi_out(r: &c::DayKpi) -> wk::DayKpi {
    wk::DayKpi {
        date: r.date.clone(),
        trip_count: r.trip_count,
        total_cents: r.total_cents,
        average_cents: r.average_cents,
        min_cents: r.min_cents,
        max_cents: r.max_cents,
    }
}

pub(crate) fn kpi_in(r: wk::DayKpi) -> c::DayKpi {
    c::DayKpi {
        date: r.date,
        trip_count: r.trip_count,
        total_cents: r.total_cents,
        average_cents: r.average_cents,
        min_cents: r.min_cents,
        max_cents: r.max_cents,
    }
}

pub(crate) fn kpi_error_in(e: wk::KpiError) -> c::KpiError {
    match e {
        wk::KpiError::UnknownTimeZone(d) => c::KpiError::UnknownTimeZone(d),
        wk::KpiError::BadDate(d) => c::KpiError::BadDate(d),
        wk::KpiError::Overflow(d) => c::KpiError::Overflow(d),
    }
}

pub(crate) fn report_out(r: &c::report::ReportRequest) -> wr::ReportRequest {
    wr::ReportRequest {
        zone: r.zone.clone(),
        from: r.from.clone(),
        to: r.to.clone(),
        rows: r.rows.iter().map(kpi_out).collect(),
        accounting: r.accounting.as_ref().map(|a| wr::Accounting {
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
                .iter()
                .map(|g| wr::RejectGroup {
                    reason: g.reason.clone(),
                    count: g.count,
                    examples: g
                        .examples
                        .iter()
                        .map(|e| wr::RejectExample {
                            source: e.source.clone(),
                            line: e.line,
                            detail: e.detail.clone(),
                            raw: e.raw.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }),
        provenance: wr::Provenance {
            host: r.provenance.host.clone(),
            component_sha256: r.provenance.component_sha256.clone(),
            inputs: r.provenance.inputs.clone(),
            accounting_note: r.provenance.accounting_note.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case of the WIT enum `types.reason`, in the contract's order, is the core's reason
    /// at the same place, and its code is the case's WIT name with `_` for `-`.
    #[test]
    fn reasons_are_the_contracts() {
        let wit = include_str!("../../../wit/tripflow.wit");
        let body = wit
            .split("enum reason {")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .expect("wit/tripflow.wit declares `enum reason`");
        let cases: Vec<&str> = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("//"))
            .map(|l| l.trim_end_matches(','))
            .collect();
        let wt_cases = [
            wt::Reason::MalformedJson,
            wt::Reason::MissingField,
            wt::Reason::BadEventType,
            wt::Reason::BadTimestamp,
            wt::Reason::BadFare,
            wt::Reason::BadTripId,
            wt::Reason::TooLarge,
            wt::Reason::ConflictingDuplicate,
            wt::Reason::CoreFailure,
            wt::Reason::StoreRefused,
        ];
        assert_eq!(cases.len(), c::Reason::ALL.len(), "{cases:?}");
        for ((case, w), core) in cases.iter().zip(wt_cases).zip(c::Reason::ALL) {
            assert_eq!(reason_in(w), core);
            assert_eq!(core.as_str(), case.replace('-', "_"));
            assert_eq!(c::Reason::from_code(core.as_str()), Some(core));
        }
        let rejects = c::Reason::ALL
            .iter()
            .filter(|r| c::Reason::CORE.contains(r));
        assert_eq!(rejects.count(), 8);
    }
}
