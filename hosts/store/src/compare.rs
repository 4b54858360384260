//! Two answers side by side: published KPI rows against recomputed ones (`tripflow audit`),
//! and two stores that replayed the same events through two components (`tripflow diff`).
//!
//! Nothing here decides about events: the stores hold the cores' decisions, and this module
//! only lines them up by what they are about (a KPI day, an input line, a trip id) and reports
//! where they differ, with the events behind each difference.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::params;
use tripflow_runtime::core::{DayKpi, EventKind, TripStatus};
use tripflow_runtime::{CoreProvider, TripCore};

use crate::db::StateDir;
use crate::error::{DbContext, Error};

/// A KPI day whose rows differ; `None` where one side has no row for the day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DayChange {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// The first side's row (published, or the old component's).
    pub old: Option<DayKpi>,
    /// The second side's row (recomputed, or the new component's).
    pub new: Option<DayKpi>,
}

/// The days whose rows differ between `old` and `new`, by date.
pub fn kpi_changes(old: &[DayKpi], new: &[DayKpi]) -> Vec<DayChange> {
    let mut days: BTreeMap<&str, (Option<&DayKpi>, Option<&DayKpi>)> = BTreeMap::new();
    for r in old {
        days.entry(&r.date).or_default().0 = Some(r);
    }
    for r in new {
        days.entry(&r.date).or_default().1 = Some(r);
    }
    days.into_iter()
        .filter(|(_, (a, b))| a != b)
        .map(|(date, (a, b))| DayChange {
            date: date.to_owned(),
            old: a.cloned(),
            new: b.cloned(),
        })
        .collect()
}

/// What the core decided for one input record, as far as a store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Stored: the first copy of its trip's half.
    Stored,
    /// Rejected, with the reason code and the core's detail.
    Rejected {
        /// The reason code (`bad_fare`, …).
        reason: String,
        /// What exactly was wrong.
        detail: String,
    },
}

/// How a trip stands in a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TripOutcome {
    /// Closed by the core.
    Closed {
        /// Completed, invalid or without a fare.
        status: TripStatus,
        /// The start's instant, ns.
        start_ns: i64,
        /// The end's instant, ns.
        end_ns: i64,
        /// The trip's fare, cents.
        fare_cents: Option<i64>,
    },
    /// One half stored, waiting for the other.
    Open(EventKind),
}

/// A stored or rejected record, with where it came from and its original bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRef {
    /// The input's name.
    pub source: String,
    /// Its 1-based line there.
    pub line: u64,
    /// The original bytes.
    pub raw: Vec<u8>,
}

struct Record {
    outcome: RecordOutcome,
    /// Where a stored record is in `events.log`; the bytes of a rejected one.
    at: Result<u64, Vec<u8>>,
}

struct Trip {
    outcome: Option<TripOutcome>,
    /// Positions of its stored events in `events.log`.
    events: Vec<u64>,
}

/// Every record's and every trip's outcome in one store.
struct Outcomes {
    inputs: HashMap<u32, String>,
    records: HashMap<(String, u64), Record>,
    trips: HashMap<String, Trip>,
}

impl StateDir {
    fn outcomes(&self) -> Result<Outcomes, Error> {
        let inputs: HashMap<u32, String> = self
            .conn
            .prepare("SELECT id, name FROM inputs")
            .db("listing inputs")?
            .query_map([], |r| Ok((r.get::<_, i64>(0)? as u32, r.get(1)?)))
            .db("listing inputs")?
            .collect::<Result<_, _>>()
            .db("reading an input")?;
        let mut records = HashMap::new();
        let mut trips: HashMap<String, Trip> = HashMap::new();
        let mut by_pos: HashMap<u64, String> = HashMap::new();
        self.events.scan(0, |pos, e| {
            let source = inputs.get(&e.source).cloned().unwrap_or_default();
            records.insert(
                (source, e.line),
                Record {
                    outcome: RecordOutcome::Stored,
                    at: Ok(pos),
                },
            );
            let trip = trips.entry(e.trip_id.clone()).or_insert(Trip {
                outcome: Some(TripOutcome::Open(e.kind)),
                events: Vec::new(),
            });
            trip.events.push(pos);
            by_pos.insert(pos, e.trip_id);
            Ok(())
        })?;
        self.scan_trips(0..self.trip_count(), |_, t| {
            if let Some(trip) = by_pos.get(&t.start_pos).and_then(|id| trips.get_mut(id)) {
                trip.outcome = Some(TripOutcome::Closed {
                    status: t.status,
                    start_ns: t.start_ns,
                    end_ns: t.end_ns,
                    fare_cents: t.fare_cents,
                });
            }
            Ok(())
        })?;
        let mut stmt = self
            .conn
            .prepare("SELECT source, line, reason, detail, raw FROM quarantine ORDER BY id")
            .db("reading the quarantine")?;
        let rows = stmt
            .query_map(params![], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })
            .db("reading the quarantine")?;
        for row in rows {
            let (source, line, reason, detail, raw) = row.db("reading a quarantined record")?;
            records.insert(
                (source, line),
                Record {
                    outcome: RecordOutcome::Rejected { reason, detail },
                    at: Err(raw),
                },
            );
        }
        Ok(Outcomes {
            inputs,
            records,
            trips,
        })
    }

    fn record_at(&self, inputs: &HashMap<u32, String>, pos: u64) -> Result<RecordRef, Error> {
        let e = self.events.read(pos)?;
        Ok(RecordRef {
            source: inputs.get(&e.source).cloned().unwrap_or_default(),
            line: e.line,
            raw: e.raw,
        })
    }
}

/// A record whose outcome differs; `None`: neither stored nor rejected (an exact duplicate,
/// or blank).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordChange {
    /// The record.
    pub record: RecordRef,
    /// With the old component.
    pub old: Option<RecordOutcome>,
    /// With the new one.
    pub new: Option<RecordOutcome>,
}

/// A trip whose outcome differs; `None`: the trip has no stored event on that side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TripChange {
    /// The trip id.
    pub trip_id: String,
    /// With the old component.
    pub old: Option<TripOutcome>,
    /// With the new one.
    pub new: Option<TripOutcome>,
    /// The KPI days it counts on, on either side.
    pub days: BTreeSet<String>,
    /// Its stored events, on either side (the old side's first).
    pub events: Vec<RecordRef>,
}

/// What changes from one component to another on the same events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// KPI days whose rows change.
    pub days: Vec<DayChange>,
    /// Records decided differently, by source and line.
    pub records: Vec<RecordChange>,
    /// Trips that turn out differently, by trip id.
    pub trips: Vec<TripChange>,
}

impl Diff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.days.is_empty() && self.records.is_empty() && self.trips.is_empty()
    }
}

/// Compares two stores that replayed the same inputs in the same order, `old` through one
/// component and `new` through another, and their KPI rows (`old_rows`, `new_rows`) in `zone`.
/// Each side's KPI days of a trip are its own core's (`kpi.day-of`).
pub fn diff<A: CoreProvider, B: CoreProvider>(
    old: (&A, &StateDir, &[DayKpi]),
    new: (&B, &StateDir, &[DayKpi]),
    zone: &str,
) -> Result<Diff, Error> {
    let (a, b) = (old.1.outcomes()?, new.1.outcomes()?);
    let mut records = Vec::new();
    let keys: BTreeSet<&(String, u64)> = a.records.keys().chain(b.records.keys()).collect();
    for key in keys {
        let (ra, rb) = (a.records.get(key), b.records.get(key));
        let (oa, ob) = (ra.map(|r| &r.outcome), rb.map(|r| &r.outcome));
        if oa == ob {
            continue;
        }
        let raw = match ra.or(rb).map(|r| &r.at) {
            Some(Ok(pos)) => {
                let store = if ra.is_some() { old.1 } else { new.1 };
                let inputs = if ra.is_some() { &a.inputs } else { &b.inputs };
                store.record_at(inputs, *pos)?.raw
            }
            Some(Err(raw)) => raw.clone(),
            None => Vec::new(),
        };
        records.push(RecordChange {
            record: RecordRef {
                source: key.0.clone(),
                line: key.1,
                raw,
            },
            old: oa.cloned(),
            new: ob.cloned(),
        });
    }

    let mut trips = Vec::new();
    let (mut core_a, mut core_b) = (old.0.session()?, new.0.session()?);
    let ids: BTreeSet<&String> = a.trips.keys().chain(b.trips.keys()).collect();
    for id in ids {
        let (ta, tb) = (a.trips.get(id), b.trips.get(id));
        let (oa, ob) = (
            ta.and_then(|t| t.outcome.clone()),
            tb.and_then(|t| t.outcome.clone()),
        );
        if oa == ob {
            continue;
        }
        let mut days = BTreeSet::new();
        for (outcome, core) in [
            (&oa, &mut core_a as &mut dyn DayOf),
            (&ob, &mut core_b as &mut dyn DayOf),
        ] {
            if let Some(TripOutcome::Closed {
                status: TripStatus::Completed,
                start_ns,
                ..
            }) = outcome
            {
                days.insert(core.day_of(zone, *start_ns)?);
            }
        }
        let mut events = Vec::new();
        for (t, store, inputs) in [(ta, old.1, &a.inputs), (tb, new.1, &b.inputs)] {
            for pos in t.map(|t| t.events.as_slice()).unwrap_or_default() {
                let r = store.record_at(inputs, *pos)?;
                if !events.contains(&r) {
                    events.push(r);
                }
            }
        }
        trips.push(TripChange {
            trip_id: id.clone(),
            old: oa,
            new: ob,
            days,
            events,
        });
    }
    Ok(Diff {
        days: kpi_changes(old.2, new.2),
        records,
        trips,
    })
}

/// `kpi.day-of` of either side's core session.
trait DayOf {
    fn day_of(&mut self, zone: &str, ns: i64) -> Result<String, Error>;
}

impl<T: TripCore> DayOf for T {
    fn day_of(&mut self, zone: &str, ns: i64) -> Result<String, Error> {
        Ok(TripCore::day_of(self, zone, ns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(date: &str, trips: u64) -> DayKpi {
        DayKpi {
            date: date.into(),
            trip_count: trips,
            total_cents: 100 * trips as i64,
            average_cents: 100,
            min_cents: 100,
            max_cents: 100,
        }
    }

    #[test]
    fn days_are_lined_up_by_date() {
        let old = [
            row("2019-01-01", 1),
            row("2019-01-02", 2),
            row("2019-01-03", 3),
        ];
        let new = [
            row("2019-01-02", 2),
            row("2019-01-03", 4),
            row("2019-01-04", 1),
        ];
        let changes = kpi_changes(&old, &new);
        let dates: Vec<(&str, bool, bool)> = changes
            .iter()
            .map(|c| (c.date.as_str(), c.old.is_some(), c.new.is_some()))
            .collect();
        assert_eq!(
            dates,
            [
                ("2019-01-01", true, false),
                ("2019-01-03", true, true),
                ("2019-01-04", false, true)
            ]
        );
        assert!(kpi_changes(&old, &old).is_empty());
    }
}
