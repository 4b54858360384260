//! A state directory ([`StateDir`] lists its files): two append-only logs for the hot data,
//! SQLite for the rest, and the in-memory index the replay matches against.
//!
//! The SQLite transaction of a batch is its commit point (see [`crate::log`]); the index
//! ([`crate::index`]) is rebuilt from the logs when a writer opens the store. The SQL the jobs
//! run is here; the schema, and upgrading older stores to it, is [`crate::schema`]; the `meta`
//! table is [`crate::meta`].

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tripflow_runtime::core::{DayTotals, EventKind, TripEvent};

use crate::error::{DbContext, Error, IoContext};
use crate::index::{Fingerprinter, Fp, Index, SNAPSHOT};
use crate::log::{EventLog, Log, TRIP_RECORD, TripLog, TripRecord};
use crate::meta::{Committed, meta, set_meta};
use crate::quarantine::QuarantineRecord;

/// An open state directory:
///
/// | file | holds | written |
/// | --- | --- | --- |
/// | `events.log` | every stored event with its original bytes | per batch, appended |
/// | `trips.log` | every closed trip, 64 bytes each | per batch, appended |
/// | `tripflow.sqlite` | the logs' committed ends and counts, inputs, quarantine, orphans | per batch, a few rows |
/// | `open.snap` | the open trips at the end of the last replay | per replay |
/// | `closed.snap` | the closed trips' sorted index, mapped when a writer opens the store | when the trips closed since are more than a quarter of it |
/// | `lock` | held by the process writing the store | — |
pub struct StateDir {
    path: PathBuf,
    pub(crate) conn: Connection,
    pub(crate) events: EventLog,
    pub(crate) trips: TripLog,
    pub(crate) committed: Committed,
    pub(crate) fingerprints: Fingerprinter,
    /// Built when a job first needs it ([`StateDir::index`]).
    index: Option<Index>,
    /// Held while this process may write (see [`StateDir::lock_for_writing`]).
    lock: Option<File>,
    /// The directory of a [`StateDir::temporary`] store, removed on drop.
    _temp: Option<tempfile::TempDir>,
}

/// What the store holds, for summaries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreTotals {
    /// Stored events.
    pub events: u64,
    /// Trips counted in KPIs.
    pub completed: u64,
    /// Trips whose end is before their start.
    pub invalid: u64,
    /// Trips without any fare.
    pub no_fare: u64,
    /// Trips with one half, orphaned or not.
    pub open: u64,
    /// Open trips the sweep marked as orphans.
    pub orphaned: u64,
    /// Quarantined records.
    pub quarantined: u64,
}

/// What every replay read from one input.
pub(crate) struct SourceCounts {
    /// The input's name.
    pub name: String,
    /// Non-blank records.
    pub records: u64,
    /// Blank lines.
    pub blank: u64,
    /// Exact duplicates.
    pub duplicates: u64,
}

/// Opens the database of the store in `dir`, set up for the jobs.
pub(crate) fn connect(dir: &Path) -> Result<Connection, Error> {
    let db = dir.join("tripflow.sqlite");
    let conn = Connection::open(&db).db(&format!("opening {}", db.display()))?;
    // The batch's transaction is a few rows: a small cache does.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA cache_size = -8192;
         PRAGMA temp_store = MEMORY;",
    )
    .db("configuring the database")?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .db("setting the busy timeout")?;
    Ok(conn)
}

impl StateDir {
    /// The store in `dir` over its database `conn`, whose schema is current (see
    /// [`crate::schema`]); `path` is how the store is named in messages.
    pub(crate) fn assemble(
        path: PathBuf,
        dir: &Path,
        conn: Connection,
        temp: Option<tempfile::TempDir>,
    ) -> Result<StateDir, Error> {
        let committed = Committed::read(&conn)?;
        let key = [
            meta(&conn, "key0")?.unwrap_or(0) as u64,
            meta(&conn, "key1")?.unwrap_or(0) as u64,
        ];
        Ok(StateDir {
            events: EventLog(Log::open(dir, "events.log", committed.events_len)?),
            trips: TripLog(Log::open(dir, "trips.log", committed.trips_len)?),
            path,
            conn,
            committed,
            fingerprints: Fingerprinter::new(key),
            index: None,
            lock: None,
            _temp: temp,
        })
    }

    /// Takes the state directory's lock (once per process), then cuts off what a writer that
    /// stopped before its commit left past the logs' committed ends. Readers (KPIs, report) do
    /// not lock: they read up to the ends they saw committed.
    pub(crate) fn lock_for_writing(&mut self) -> Result<(), Error> {
        if self.lock.is_some() {
            return Ok(());
        }
        let path = self.path.join("lock");
        let file = File::create(&path).io(|| format!("creating {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Busy(format!(
                    "another tripflow process is writing to {}; wait for it to finish, or use \
                     another --state directory",
                    self.path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).io(|| format!("locking {}", path.display()));
            }
        }
        self.lock = Some(file);
        // Re-read under the lock: a writer may have committed since this process opened.
        self.committed = Committed::read(&self.conn)?;
        self.events.0.cut_to(self.committed.events_len)?;
        self.trips.0.cut_to(self.committed.trips_len)?;
        self.index = None;
        Ok(())
    }

    /// The index, built on first use (the caller holds the lock).
    pub(crate) fn index(&mut self) -> Result<&mut Index, Error> {
        if self.index.is_none() {
            let snapshot = match (
                meta(&self.conn, "snap_events")?,
                meta(&self.conn, "snap_trips")?,
            ) {
                (Some(e), Some(t)) => Some((e as u64, t as u64)),
                _ => None,
            };
            let mut index = Index::load(
                &self.path,
                self.fingerprints,
                &self.events,
                &self.trips,
                snapshot,
            )?;
            let mut stmt = self
                .conn
                .prepare("SELECT fp0, fp1 FROM orphans")
                .db("reading orphan marks")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Fp([r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64]))
                })
                .db("reading orphan marks")?;
            for fp in rows {
                index.mark_orphaned(fp.db("reading an orphan mark")?);
            }
            self.index = Some(index);
        }
        Ok(self.index.as_mut().expect("built above"))
    }

    /// The index with the logs it points into, for lookups.
    pub(crate) fn lookup_parts(&mut self) -> Result<(&Index, &EventLog, &TripLog), Error> {
        self.index()?;
        Ok((
            self.index.as_ref().expect("built above"),
            &self.events,
            &self.trips,
        ))
    }

    /// Saves the index's open trips, so the next writer loads them instead of reading the logs.
    pub(crate) fn save_snapshot(&mut self) -> Result<(), Error> {
        let (events, trips) = (self.committed.events_len, self.trips.count());
        let Some(index) = &mut self.index else {
            return Ok(());
        };
        index.save_closed(&self.path, &self.trips)?;
        if meta(&self.conn, "snap_events")? == Some(events as i64)
            && meta(&self.conn, "snap_trips")? == Some(trips as i64)
            && self.path.join(SNAPSHOT).is_file()
        {
            return Ok(());
        }
        index.save_snapshot(&self.path, events, trips)?;
        self.write_transaction(|state| {
            set_meta(&state.conn, "snap_events", events as i64)?;
            set_meta(&state.conn, "snap_trips", trips as i64)
        })
    }

    /// Runs `f` inside one `BEGIN IMMEDIATE` transaction: committed when `f` succeeds, rolled
    /// back when it fails.
    pub(crate) fn write_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut StateDir) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .db("starting a transaction")?;
        match f(self) {
            Ok(value) => {
                self.conn.execute_batch("COMMIT").db("committing")?;
                Ok(value)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The newest event time stored, ns.
    pub fn newest_ns(&self) -> Result<Option<i64>, Error> {
        meta(&self.conn, "newest_ns")
    }

    /// The number `events.log` records input `name` by (added if new, in the caller's
    /// transaction).
    pub(crate) fn input_id(&self, name: &str) -> Result<u32, Error> {
        self.conn
            .prepare_cached("INSERT INTO inputs (name) VALUES (?1) ON CONFLICT (name) DO NOTHING")
            .and_then(|mut s| s.execute([name]))
            .db("recording an input")?;
        self.conn
            .prepare_cached("SELECT id FROM inputs WHERE name = ?1")
            .and_then(|mut s| s.query_row([name], |r| r.get::<_, i64>(0)))
            .map(|id| id as u32)
            .db("reading an input's number")
    }

    /// Counts of what the store holds.
    pub fn totals(&self) -> Result<StoreTotals, Error> {
        let count = |sql: &str| -> Result<u64, Error> {
            self.conn
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .db("counting the store")
        };
        let c = &self.committed;
        let closed = c.completed + c.invalid + c.no_fare;
        Ok(StoreTotals {
            events: c.events,
            completed: c.completed,
            invalid: c.invalid,
            no_fare: c.no_fare,
            // Each closed trip holds two stored events, each open one one.
            open: c.events - 2 * closed,
            orphaned: count("SELECT count(*) FROM orphans")?,
            quarantined: count("SELECT count(*) FROM quarantine")?,
        })
    }

    /// Every input replayed into the store with what was read from it, by name; and whether
    /// the counts go back to the store's creation.
    pub(crate) fn sources(&self) -> Result<(Vec<SourceCounts>, bool), Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, records, blank, duplicates FROM sources ORDER BY name")
            .db("preparing the input listing")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(SourceCounts {
                    name: r.get(0)?,
                    records: r.get::<_, i64>(1)? as u64,
                    blank: r.get::<_, i64>(2)? as u64,
                    duplicates: r.get::<_, i64>(3)? as u64,
                })
            })
            .db("listing inputs")?
            .collect::<Result<Vec<_>, _>>()
            .db("reading an input")?;
        let complete = meta(&self.conn, "sources_complete")? == Some(1);
        Ok((rows, complete))
    }

    /// Rejected records by reason (sorted by reason): `(reason, count, first `examples`
    /// records)`.
    pub(crate) fn quarantine_groups(
        &self,
        examples: usize,
    ) -> Result<Vec<(String, u64, Vec<crate::QuarantineRecord>)>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT reason, count(*) FROM quarantine GROUP BY reason ORDER BY reason")
            .db("preparing the quarantine summary")?;
        let groups: Vec<(String, u64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .db("summarising the quarantine")?
            .collect::<Result<_, _>>()
            .db("reading the quarantine summary")?;
        let mut first = self
            .conn
            .prepare(
                "SELECT source, line, detail, raw FROM quarantine WHERE reason = ?1 ORDER BY id LIMIT ?2",
            )
            .db("preparing the quarantine examples")?;
        let mut out = Vec::with_capacity(groups.len());
        for (reason, count) in groups {
            let records = first
                .query_map(params![reason, examples as i64], |r| {
                    Ok(crate::QuarantineRecord {
                        source: r.get(0)?,
                        line: r.get::<_, i64>(1)? as u64,
                        reason: reason.clone(),
                        detail: r.get(2)?,
                        raw: crate::quarantine::RawBytes(r.get(3)?),
                        first_copy: None,
                    })
                })
                .db("reading quarantine examples")?
                .collect::<Result<Vec<_>, _>>()
                .db("reading a quarantined record")?;
            out.push((reason, count, records));
        }
        Ok(out)
    }

    /// Every stored event (the first copy of each trip id and half), ordered by trip id and
    /// half: what a check of the store against another host compares.
    pub fn events(&self) -> Result<Vec<TripEvent>, Error> {
        let mut all = Vec::with_capacity(self.committed.events as usize);
        self.events.scan(0, |_, e| {
            all.push(TripEvent {
                trip_id: e.trip_id,
                kind: e.kind,
                timestamp_ns: e.timestamp_ns,
                fare_cents: e.fare_cents,
                extras: e.extras,
            });
            Ok(())
        })?;
        all.sort_by(|a, b| {
            (a.trip_id.as_str(), a.kind == EventKind::End)
                .cmp(&(b.trip_id.as_str(), b.kind == EventKind::End))
        });
        Ok(all)
    }

    /// Calls `f` with the closed trips numbered `trips`, in the order they closed.
    pub(crate) fn scan_trips(
        &self,
        trips: std::ops::Range<u64>,
        f: impl FnMut(u64, TripRecord) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.trips.scan(trips, f)
    }

    /// Closed trips this process sees committed.
    pub(crate) fn trip_count(&self) -> u64 {
        self.trips.count()
    }

    /// The per-day totals saved for time zone `zone` and core `core`, and the number of closed
    /// trips they add up (trips `0..n` of `trips.log`); `None` if none are saved.
    pub(crate) fn kpi_totals(
        &self,
        zone: &str,
        core: &str,
    ) -> Result<Option<(u64, Vec<DayTotals>)>, Error> {
        let row = self
            .conn
            .query_row(
                "SELECT trips, totals FROM kpi_totals WHERE zone = ?1 AND core = ?2",
                params![zone, core],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
            )
            .optional();
        let (trips, text) = match row {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(None),
            // A store no KPIs were saved in yet.
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => {
                return Ok(None);
            }
            Err(e) => return Err(e).db("reading saved KPI totals"),
        };
        let totals = text
            .lines()
            .map(day_totals_from_line)
            .collect::<Option<Vec<_>>>();
        Ok(totals
            .filter(|_| trips <= self.trips.count())
            .map(|t| (trips, t)))
    }

    /// Saves `totals`, the per-day totals of closed trips `0..trips` for `zone` and `core`,
    /// unless totals of more trips are saved already.
    pub(crate) fn save_kpi_totals(
        &self,
        zone: &str,
        core: &str,
        trips: u64,
        totals: &[DayTotals],
    ) -> Result<(), Error> {
        let text: String = totals.iter().map(day_totals_line).collect();
        self.conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS kpi_totals (
                   zone TEXT NOT NULL, core TEXT NOT NULL, trips INTEGER NOT NULL,
                   totals TEXT NOT NULL, PRIMARY KEY (zone, core))",
            )
            .db("creating the saved KPI totals")?;
        self.conn
            .execute(
                "INSERT INTO kpi_totals (zone, core, trips, totals) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (zone, core) DO UPDATE SET trips = excluded.trips,
                   totals = excluded.totals WHERE excluded.trips > kpi_totals.trips",
                params![zone, core, trips as i64, text],
            )
            .db("saving KPI totals")?;
        Ok(())
    }

    /// Appends event records encoded by the worker; returns the position of the first.
    pub(crate) fn append_encoded_events(&mut self, records: Vec<u8>) -> u64 {
        self.events.append_encoded(records)
    }

    /// The index, which [`StateDir::index`] has built.
    pub(crate) fn index_ref(&self) -> &Index {
        self.index
            .as_ref()
            .expect("the index is built before it is used")
    }

    /// Appends a closed trip and returns its number.
    pub(crate) fn append_trip(&mut self, t: &TripRecord) -> u64 {
        self.trips.append(t)
    }

    /// Writes both logs' pending records (not yet synced) and returns their ends.
    pub(crate) fn write_logs(&mut self) -> Result<(u64, u64), Error> {
        Ok((
            self.events.0.write_pending()?,
            self.trips.0.write_pending()?,
        ))
    }

    /// Waits for both logs' written records to reach the disk.
    pub(crate) fn sync_logs(&self) -> Result<(), Error> {
        self.events.0.sync()?;
        self.trips.0.sync()
    }

    /// Handles to both logs and a connection of their own to the database, for a thread that
    /// syncs and commits what this one writes.
    pub(crate) fn committer_parts(&self) -> Result<(File, File, Connection), Error> {
        let db = self.path.join("tripflow.sqlite");
        let conn = Connection::open(&db).db(&format!("opening {}", db.display()))?;
        conn.execute_batch("PRAGMA synchronous = NORMAL;")
            .db("configuring the database")?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .db("setting the busy timeout")?;
        Ok((self.events.0.handle()?, self.trips.0.handle()?, conn))
    }

    /// Records what the logs and counts are once the batches written so far have committed.
    pub(crate) fn set_committed(&mut self, c: Committed) {
        debug_assert_eq!(c.trips_len, self.trips.count() * TRIP_RECORD as u64);
        self.committed = c;
    }

    /// After a failure: back to what the database says was committed (the logs cut to it, the
    /// index rebuilt when next needed).
    pub(crate) fn recover(&mut self) -> Result<(), Error> {
        self.committed = Committed::read(&self.conn)?;
        self.events.0.cut_to(self.committed.events_len)?;
        self.trips.0.cut_to(self.committed.trips_len)?;
        self.index = None;
        Ok(())
    }
}

/// Adds a batch's counts to its input's row in `sources`.
pub(crate) fn count_source(
    conn: &Connection,
    name: &str,
    records: u64,
    blank: u64,
    duplicates: u64,
) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO sources (name, records, blank, duplicates) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET records = records + excluded.records,
         blank = blank + excluded.blank, duplicates = duplicates + excluded.duplicates",
    )
    .and_then(|mut s| {
        s.execute(params![
            name,
            records as i64,
            blank as i64,
            duplicates as i64
        ])
    })
    .db("counting the input's records")?;
    Ok(())
}

/// Quarantines rejected records; a record already quarantined (same input, line and bytes) is
/// kept once.
pub(crate) fn insert_quarantine(
    conn: &Connection,
    rejects: &[QuarantineRecord],
) -> Result<(), Error> {
    let mut insert = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO quarantine (source, line, reason, detail, raw, first_raw)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .db("preparing the quarantine insert")?;
    for r in rejects {
        insert
            .execute(params![
                r.source,
                r.line as i64,
                r.reason,
                r.detail,
                r.raw.0,
                r.first_copy.as_ref().map(|f| &f.0)
            ])
            .db("quarantining a record")?;
    }
    Ok(())
}

/// Raises the newest event time seen to `newest` (never lowers it).
pub(crate) fn raise_newest_ns(conn: &Connection, newest: i64) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('newest_ns', ?1)
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
    )
    .and_then(|mut s| s.execute([newest]))
    .db("recording the newest event time")?;
    Ok(())
}

/// Marks open trips as orphans, as of the newest event time `orphaned_ns`.
pub(crate) fn mark_orphans(conn: &Connection, fps: &[Fp], orphaned_ns: i64) -> Result<(), Error> {
    let mut mark = conn
        .prepare_cached("INSERT INTO orphans (fp0, fp1, orphaned_ns) VALUES (?1, ?2, ?3)")
        .db("preparing the orphan mark")?;
    for fp in fps {
        mark.execute(params![fp.0[0] as i64, fp.0[1] as i64, orphaned_ns])
            .db("marking an orphan")?;
    }
    Ok(())
}

/// Clears the orphan marks of trips that closed.
pub(crate) fn unmark_orphans(conn: &Connection, fps: &[Fp]) -> Result<(), Error> {
    let mut unmark = conn
        .prepare_cached("DELETE FROM orphans WHERE fp0 = ?1 AND fp1 = ?2")
        .db("preparing the orphan unmark")?;
    for fp in fps {
        unmark
            .execute(params![fp.0[0] as i64, fp.0[1] as i64])
            .db("clearing an orphan mark")?;
    }
    Ok(())
}

/// One day's totals as `kpi_totals` keeps them: `date count total min max`, cents.
fn day_totals_line(t: &DayTotals) -> String {
    format!(
        "{} {} {} {} {}\n",
        t.date, t.trip_count, t.total_cents, t.min_cents, t.max_cents
    )
}

fn day_totals_from_line(line: &str) -> Option<DayTotals> {
    let mut f = line.split(' ');
    let t = DayTotals {
        date: f.next()?.to_owned(),
        trip_count: f.next()?.parse().ok()?,
        total_cents: f.next()?.parse().ok()?,
        min_cents: f.next()?.parse().ok()?,
        max_cents: f.next()?.parse().ok()?,
    };
    f.next().is_none().then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.totals().unwrap(), StoreTotals::default());
        assert_eq!(state.newest_ns().unwrap(), None);
        drop(state);
        StateDir::open(dir.path()).unwrap();
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        set_meta(&state.conn, "schema_version", 99).unwrap();
        drop(state);
        let err = StateDir::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }

    #[test]
    fn one_writer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = StateDir::open(dir.path()).unwrap();
        first.lock_for_writing().unwrap();
        let mut second = StateDir::open(dir.path()).unwrap();
        let err = second.lock_for_writing().err().unwrap().to_string();
        assert!(err.contains("another tripflow process"), "{err}");
        drop(first);
        second.lock_for_writing().unwrap();
    }
}
