//! The core linked natively: the same library the component is built from, behind the same
//! trait. Used to hold the component to the library in tests and benchmarks.

use tripflow_core::{
    Clock, ClosedTrip, DayKpi, DayTotals, Paired, ParseOutcome, Resolution, Span, TripEvent,
    TripFare,
};

use tripflow_core::batch::{Batch, BatchResolution, ParsedBatch, StoredEvent};
use tripflow_core::report::ReportRequest;

use crate::{CoreError, CoreProvider, TripCore};

/// `tripflow_core` called directly, without wasm.
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeCore;

impl CoreProvider for NativeCore {
    type Session = NativeCore;

    fn session(&self) -> Result<NativeCore, CoreError> {
        Ok(NativeCore)
    }

    fn describe(&self) -> String {
        "native tripflow-core (no component)".to_owned()
    }

    fn fingerprint(&self) -> String {
        "native tripflow-core (no component)".to_owned()
    }
}

impl TripCore for NativeCore {
    fn max_record_bytes(&mut self) -> Result<u32, CoreError> {
        Ok(tripflow_core::MAX_RECORD_BYTES)
    }

    fn parse(&mut self, buffer: &[u8], spans: &[Span]) -> Result<Vec<ParseOutcome>, CoreError> {
        Ok(tripflow_core::parse_batch(buffer, spans))
    }

    fn render(&mut self, events: &[TripEvent]) -> Result<String, CoreError> {
        Ok(tripflow_core::render_records(events))
    }

    fn resolve(
        &mut self,
        incoming: &[TripEvent],
        stored: &[TripEvent],
        clock: Clock,
    ) -> Result<Resolution, CoreError> {
        Ok(tripflow_core::resolve(incoming, stored, clock))
    }

    fn parse_resolve<E: From<CoreError>>(
        &mut self,
        buffer: &[u8],
        spans: &[Span],
        clock: Clock,
        lookup: impl FnOnce(&ParsedBatch) -> Result<Vec<StoredEvent>, E>,
    ) -> Result<(ParsedBatch, BatchResolution), E> {
        let (batch, parsed) = Batch::parse(buffer, spans);
        let stored = lookup(&parsed)?;
        let r = batch.resolve(&stored, clock);
        Ok((parsed, r))
    }

    fn pair(&mut self, start: &TripEvent, end: &TripEvent) -> Result<ClosedTrip, CoreError> {
        Ok(tripflow_core::pair(start, end))
    }

    fn pair_all(&mut self, trips: &[(TripEvent, TripEvent)]) -> Result<Vec<Paired>, CoreError> {
        Ok(tripflow_core::pair_all(trips))
    }

    fn sweep(
        &mut self,
        open: &[i64],
        newest_ns: i64,
        older_than_ns: i64,
    ) -> Result<Vec<u32>, CoreError> {
        Ok(tripflow_core::sweep(open, newest_ns, older_than_ns))
    }

    fn check_time_zone(&mut self, zone: &str) -> Result<(), CoreError> {
        Ok(tripflow_core::check_time_zone(zone)?)
    }

    fn day_of(&mut self, zone: &str, timestamp_ns: i64) -> Result<String, CoreError> {
        Ok(tripflow_core::kpi::day_of(zone, timestamp_ns)?)
    }

    fn accumulate(
        &mut self,
        zone: &str,
        totals: &[DayTotals],
        trips: &[TripFare],
    ) -> Result<Vec<DayTotals>, CoreError> {
        Ok(tripflow_core::accumulate(zone, totals, trips)?)
    }

    fn merge(&mut self, a: &[DayTotals], b: &[DayTotals]) -> Result<Vec<DayTotals>, CoreError> {
        Ok(tripflow_core::merge(a, b)?)
    }

    fn finish(
        &mut self,
        totals: &[DayTotals],
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<DayKpi>, CoreError> {
        Ok(tripflow_core::finish(totals, from, to)?)
    }

    fn render_csv(&mut self, rows: &[DayKpi]) -> Result<String, CoreError> {
        Ok(tripflow_core::render_csv(rows))
    }

    fn utc_days_touched(&mut self, trips: &[TripFare]) -> Result<Vec<String>, CoreError> {
        Ok(tripflow_core::utc_days_touched(trips))
    }

    fn local_days(&mut self, zone: &str, utc_days: &[String]) -> Result<Vec<String>, CoreError> {
        Ok(tripflow_core::local_days(zone, utc_days)?)
    }

    fn read_csv(&mut self, csv: &str) -> Result<Vec<DayKpi>, CoreError> {
        Ok(tripflow_core::report::read_csv(csv)?)
    }

    fn render_html(&mut self, request: &ReportRequest) -> Result<String, CoreError> {
        Ok(tripflow_core::report::render_html(request)?)
    }
}
