//! A state directory ([`StateDir`] lists its files): two append-only logs for the hot data,
//! SQLite for the rest, and the in-memory index the replay matches against.
//!
//! The SQLite transaction of a batch is its commit point (see [`crate::log`]); the index
//! ([`crate::index`]) is rebuilt from the logs when a writer opens the store.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tripflow_runtime::core::{EventKind, TripEvent, TripStatus};

use crate::error::{DbContext, Error, IoContext};
use crate::index::{Fingerprinter, Fp, Index, SNAPSHOT};
use crate::log::{EventLog, Log, TRIP_RECORD, TripLog, TripRecord};

/// The schema version this build reads and writes.
const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
-- Every rejected record, with its original bytes (and the first copy's, for conflicts).
CREATE TABLE IF NOT EXISTS quarantine (
    id        INTEGER PRIMARY KEY,
    source    TEXT NOT NULL,
    line      INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    detail    TEXT NOT NULL,
    raw       BLOB NOT NULL,
    first_raw BLOB
);
-- A record is quarantined once: replaying the same file again does not add its rejects again.
CREATE UNIQUE INDEX IF NOT EXISTS quarantine_once ON quarantine (source, line, raw);
-- What every replay read from each input (re-reads included), for the report's accounting;
-- updated in each batch's transaction.
CREATE TABLE IF NOT EXISTS sources (
    name       TEXT PRIMARY KEY,
    records    INTEGER NOT NULL,
    blank      INTEGER NOT NULL,
    duplicates INTEGER NOT NULL
) WITHOUT ROWID;
-- The inputs events.log records refer to by number.
CREATE TABLE IF NOT EXISTS inputs (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
-- Open trips the sweep marked as orphans, by trip-id fingerprint; a row goes when its trip
-- closes. orphaned_ns is the newest event time when the sweep marked it.
CREATE TABLE IF NOT EXISTS orphans (
    fp0         INTEGER NOT NULL,
    fp1         INTEGER NOT NULL,
    orphaned_ns INTEGER NOT NULL,
    PRIMARY KEY (fp0, fp1)
) WITHOUT ROWID;
";

/// Version 1 stores lack `quarantine_once`; re-replays may have left exact repeats, which
/// the index would refuse.
const MIGRATE_FROM_1: &str = "
DELETE FROM quarantine WHERE id NOT IN (SELECT min(id) FROM quarantine GROUP BY source, line, raw);
UPDATE meta SET value = 2 WHERE key = 'schema_version';
";

/// Version 2 stores did not count records per input: their counts start at the upgrade, so
/// `sources_complete` stays unset and the report says "not counted".
const MIGRATE_FROM_2: &str = "
UPDATE meta SET value = 3 WHERE key = 'schema_version';
";

/// The committed state of the logs and the counts that go with it, as `meta` records them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Committed {
    pub events_len: u64,
    pub events: u64,
    pub trips_len: u64,
    pub completed: u64,
    pub invalid: u64,
    pub no_fare: u64,
}

impl Committed {
    const KEYS: [&str; 6] = [
        "events_len",
        "events",
        "trips_len",
        "completed",
        "invalid",
        "no_fare",
    ];

    fn values(&self) -> [u64; 6] {
        [
            self.events_len,
            self.events,
            self.trips_len,
            self.completed,
            self.invalid,
            self.no_fare,
        ]
    }

    fn read(conn: &Connection) -> Result<Committed, Error> {
        let get = |k: &str| meta(conn, k).map(|v| v.unwrap_or(0) as u64);
        Ok(Committed {
            events_len: get("events_len")?,
            events: get("events")?,
            trips_len: get("trips_len")?,
            completed: get("completed")?,
            invalid: get("invalid")?,
            no_fare: get("no_fare")?,
        })
    }

    /// Records these values (inside the batch's transaction).
    pub fn write(&self, conn: &Connection) -> Result<(), Error> {
        for (k, v) in Self::KEYS.iter().zip(self.values()) {
            set_meta(conn, k, v as i64)?;
        }
        Ok(())
    }

    /// Counts one closed trip.
    pub fn count(&mut self, status: TripStatus) {
        match status {
            TripStatus::Completed => self.completed += 1,
            TripStatus::Invalid => self.invalid += 1,
            TripStatus::NoFare => self.no_fare += 1,
        }
    }
}

/// An open state directory:
///
/// | file | holds | written |
/// | --- | --- | --- |
/// | `events.log` | every stored event with its original bytes | per batch, appended |
/// | `trips.log` | every closed trip, 64 bytes each | per batch, appended |
/// | `tripflow.sqlite` | the logs' committed ends and counts, inputs, quarantine, orphans | per batch, a few rows |
/// | `open.snap` | the open trips at the end of the last replay | per replay |
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

impl StateDir {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<StateDir, Error> {
        std::fs::create_dir_all(dir).io(|| {
            format!(
                "creating the state directory {}: choose a writable place with --state DIR",
                dir.display()
            )
        })?;
        Self::init(dir.to_path_buf(), dir, None)
    }

    /// A store in a fresh temporary directory, removed when it is dropped (for tests and the
    /// conformance runner).
    pub fn temporary() -> Result<StateDir, Error> {
        let temp = tempfile::tempdir().io(|| "creating a temporary state directory".to_owned())?;
        let dir = temp.path().to_path_buf();
        Self::init(dir.clone(), &dir, Some(temp))
    }

    fn init(path: PathBuf, dir: &Path, temp: Option<tempfile::TempDir>) -> Result<StateDir, Error> {
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
        let old = meta_or_none(&conn, "schema_version")?;
        if old == Some(1) {
            conn.execute_batch(MIGRATE_FROM_1)
                .db("migrating the store from schema version 1")?;
        }
        conn.execute_batch(SCHEMA).db("creating the schema")?;
        if matches!(old, Some(1 | 2)) {
            conn.execute_batch(MIGRATE_FROM_2)
                .db("migrating the store from schema version 2")?;
        }
        match meta(&conn, "schema_version")? {
            None => {
                // A store's fingerprint key: random, fixed for its life.
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1),
                     ('sources_complete', 1), ('key0', ?2), ('key1', ?3)",
                    params![SCHEMA_VERSION, random_key() as i64, random_key() as i64],
                )
                .db("writing the schema version")?;
            }
            Some(SCHEMA_VERSION | 3) => {}
            Some(other) => {
                return Err(Error::Damaged(format!(
                    "the store in {} has schema version {other}, this tripflow reads \
                     {SCHEMA_VERSION}; use a new --state directory",
                    path.display()
                )));
            }
        }
        let committed = Committed::read(&conn)?;
        let key = [
            meta(&conn, "key0")?.unwrap_or(0) as u64,
            meta(&conn, "key1")?.unwrap_or(0) as u64,
        ];
        let mut state = StateDir {
            events: EventLog(Log::open(dir, "events.log", committed.events_len)?),
            trips: TripLog(Log::open(dir, "trips.log", committed.trips_len)?),
            path,
            conn,
            committed,
            fingerprints: Fingerprinter::new(key),
            index: None,
            lock: None,
            _temp: temp,
        };
        if meta(&state.conn, "schema_version")? == Some(3) {
            state.lock_for_writing()?;
            crate::migrate::from_3(&mut state)?;
        }
        Ok(state)
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
        let Some(index) = &self.index else {
            return Ok(());
        };
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

    /// Calls `f` with every closed trip, in the order they closed.
    pub(crate) fn scan_trips(
        &self,
        f: impl FnMut(u64, TripRecord) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.trips.scan(0, f)
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

/// 64 random bits (from the standard library's per-process random hash keys).
pub(crate) fn random_key() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u8)
}

/// A `meta` value; `None` if unset.
pub(crate) fn meta(conn: &Connection, key: &str) -> Result<Option<i64>, Error> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
        .db("reading the store's meta")
}

/// Like [`meta`], but `None` also when the store is new (no `meta` table yet).
fn meta_or_none(conn: &Connection, key: &str) -> Result<Option<i64>, Error> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .or_else(|e| match e {
            rusqlite::Error::SqliteFailure(_, Some(ref m)) if m.contains("no such table") => {
                Ok(None)
            }
            e => Err(e),
        })
        .db("reading the schema version")
}

pub(crate) fn set_meta(conn: &Connection, key: &str, value: i64) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute(params![key, value]))
    .db("writing the store's meta")?;
    Ok(())
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
