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

/// What a store kept of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kept {
    /// Stored, at this position of `events.log`.
    Stored(u64),
    /// Rejected: an index into [`Outcomes::rejects`].
    Rejected(usize),
}

/// A rejected record as the quarantine keeps it.
struct Reject {
    reason: String,
    detail: String,
    raw: Vec<u8>,
}

/// Every record's and every trip's outcome in one store, compactly: records by (input, line)
/// in order, trips by index with one string per trip id.
struct Outcomes {
    /// Input names by id.
    inputs: HashMap<u32, String>,
    /// Every stored or rejected record by (input id, line), sorted.
    records: Vec<((u32, u64), Kept)>,
    rejects: Vec<Reject>,
    /// Trip ids and their index in `trips`.
    ids: HashMap<String, u32>,
    trips: Vec<TripOutcome>,
}

impl Outcomes {
    fn outcome(&self, kept: Kept) -> RecordOutcome {
        match kept {
            Kept::Stored(_) => RecordOutcome::Stored,
            Kept::Rejected(i) => RecordOutcome::Rejected {
                reason: self.rejects[i].reason.clone(),
                detail: self.rejects[i].detail.clone(),
            },
        }
    }

    fn trip(&self, id: &str) -> Option<&TripOutcome> {
        self.ids.get(id).map(|&i| &self.trips[i as usize])
    }
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
        let by_name: HashMap<&str, u32> = inputs.iter().map(|(id, n)| (n.as_str(), *id)).collect();
        let mut records = Vec::new();
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut trips: Vec<TripOutcome> = Vec::new();
        // (position in events.log, trip index), in log order: sorted by position.
        let mut positions: Vec<(u64, u32)> = Vec::new();
        self.events.scan(0, |pos, e| {
            records.push(((e.source, e.line), Kept::Stored(pos)));
            let idx = match ids.get(e.trip_id.as_str()) {
                Some(&i) => i,
                None => {
                    let i = trips.len() as u32;
                    trips.push(TripOutcome::Open(e.kind));
                    ids.insert(e.trip_id, i);
                    i
                }
            };
            positions.push((pos, idx));
            Ok(())
        })?;
        self.scan_trips(0..self.trip_count(), |_, t| {
            if let Ok(at) = positions.binary_search_by_key(&t.start_pos, |(p, _)| *p) {
                trips[positions[at].1 as usize] = TripOutcome::Closed {
                    status: t.status,
                    start_ns: t.start_ns,
                    end_ns: t.end_ns,
                    fare_cents: t.fare_cents,
                };
            }
            Ok(())
        })?;
        let mut rejects = Vec::new();
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
            let id = by_name.get(source.as_str()).copied().unwrap_or(u32::MAX);
            records.push(((id, line), Kept::Rejected(rejects.len())));
            rejects.push(Reject {
                reason,
                detail,
                raw,
            });
        }
        records.sort_unstable_by_key(|(key, _)| *key);
        Ok(Outcomes {
            inputs,
            records,
            rejects,
            ids,
            trips,
        })
    }

    /// The stored events of the trips in `ids`, in log order.
    fn events_of(
        &self,
        inputs: &HashMap<u32, String>,
        ids: &BTreeSet<&str>,
    ) -> Result<BTreeMap<String, Vec<RecordRef>>, Error> {
        let mut out: BTreeMap<String, Vec<RecordRef>> = BTreeMap::new();
        self.events.scan(0, |_, e| {
            if ids.contains(e.trip_id.as_str()) {
                out.entry(e.trip_id).or_default().push(RecordRef {
                    source: inputs.get(&e.source).cloned().unwrap_or_default(),
                    line: e.line,
                    raw: e.raw,
                });
            }
            Ok(())
        })?;
        Ok(out)
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
    // Records: both lists are sorted by (input, line); the inputs are the same ones in the
    // same order, so their ids agree (checked by name).
    if a.inputs != b.inputs {
        return Err(Error::Input(
            "the two stores did not replay the same inputs in the same order".into(),
        ));
    }
    let mut records = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.records.len() || j < b.records.len() {
        let ka = a.records.get(i).map(|r| r.0);
        let kb = b.records.get(j).map(|r| r.0);
        let (key, ra, rb) = match (ka, kb) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
                (x, Some(a.records[i - 1].1), Some(b.records[j - 1].1))
            }
            (Some(x), y) if y.is_none_or(|y| x < y) => {
                i += 1;
                (x, Some(a.records[i - 1].1), None)
            }
            (_, Some(y)) => {
                j += 1;
                (y, None, Some(b.records[j - 1].1))
            }
            _ => unreachable!("one side has a record"),
        };
        let (oa, ob) = (ra.map(|k| a.outcome(k)), rb.map(|k| b.outcome(k)));
        if oa == ob {
            continue;
        }
        let raw = match (ra, rb) {
            (Some(Kept::Stored(pos)), _) => old.1.events.read(pos)?.raw,
            (_, Some(Kept::Stored(pos))) => new.1.events.read(pos)?.raw,
            (Some(Kept::Rejected(r)), _) => a.rejects[r].raw.clone(),
            (_, Some(Kept::Rejected(r))) => b.rejects[r].raw.clone(),
            (None, None) => Vec::new(),
        };
        records.push(RecordChange {
            record: RecordRef {
                source: a.inputs.get(&key.0).cloned().unwrap_or_default(),
                line: key.1,
                raw,
            },
            old: oa,
            new: ob,
        });
    }

    // Trips, by id.
    let mut changed: BTreeMap<&str, (Option<TripOutcome>, Option<TripOutcome>)> = BTreeMap::new();
    for (id, &ia) in &a.ids {
        let (oa, ob) = (Some(&a.trips[ia as usize]), b.trip(id));
        if oa != ob {
            changed.insert(id, (oa.cloned(), ob.cloned()));
        }
    }
    for id in b.ids.keys() {
        if !a.ids.contains_key(id) {
            changed.insert(id, (None, b.trip(id).cloned()));
        }
    }
    let ids: BTreeSet<&str> = changed.keys().copied().collect();
    let (mut behind_a, mut behind_b) = (BTreeMap::new(), BTreeMap::new());
    if !ids.is_empty() {
        behind_a = old.1.events_of(&a.inputs, &ids)?;
        behind_b = new.1.events_of(&b.inputs, &ids)?;
    }
    let (mut core_a, mut core_b) = (old.0.session()?, new.0.session()?);
    let mut trips = Vec::with_capacity(changed.len());
    for (id, (oa, ob)) in changed {
        // The KPI days it counts on, each side by its own core.
        let mut days = BTreeSet::new();
        if let Some(ns) = completed_start(&oa) {
            days.insert(core_a.day_of(zone, ns)?);
        }
        if let Some(ns) = completed_start(&ob) {
            days.insert(core_b.day_of(zone, ns)?);
        }
        let mut events = behind_a.remove(id).unwrap_or_default();
        for r in behind_b.remove(id).unwrap_or_default() {
            if !events.contains(&r) {
                events.push(r);
            }
        }
        trips.push(TripChange {
            trip_id: id.to_owned(),
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

/// The start of a trip that counts in the KPIs.
fn completed_start(outcome: &Option<TripOutcome>) -> Option<i64> {
    match outcome {
        Some(TripOutcome::Closed {
            status: TripStatus::Completed,
            start_ns,
            ..
        }) => Some(*start_ns),
        _ => None,
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
