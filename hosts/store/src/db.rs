//! The SQLite database inside a state directory: schema, and the few queries the jobs need.
//!
//! Every table is keyed for the lookups the jobs make (`events` by trip id, `open_trips` for
//! the sweep) and `WITHOUT ROWID`, so a lookup is one B-tree descent.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tripflow_runtime::core::{EventKind, TripEvent, TripStatus};

use crate::error::{DbContext, Error, IoContext};

/// The schema version this build reads and writes.
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
-- First stored copy of each (trip_id, kind); kind 0 = trip_start, 1 = trip_end. Kept small
-- (the original bytes live in event_raw) because every incoming event looks its trip up here.
CREATE TABLE IF NOT EXISTS events (
    trip_id      TEXT NOT NULL,
    kind         INTEGER NOT NULL,
    timestamp_ns INTEGER NOT NULL,
    fare_cents   INTEGER,
    extras       TEXT NOT NULL,
    raw_id       INTEGER NOT NULL,
    PRIMARY KEY (trip_id, kind)
) WITHOUT ROWID;
-- Original bytes and position of each stored event, appended in arrival order.
CREATE TABLE IF NOT EXISTS event_raw (
    id     INTEGER PRIMARY KEY,
    raw    BLOB NOT NULL,
    source TEXT NOT NULL,
    line   INTEGER NOT NULL
);
-- Trips with both halves; status 0 = completed, 1 = invalid, 2 = no_fare.
CREATE TABLE IF NOT EXISTS trips (
    trip_id    TEXT PRIMARY KEY,
    status     INTEGER NOT NULL,
    start_ns   INTEGER NOT NULL,
    end_ns     INTEGER NOT NULL,
    fare_cents INTEGER
) WITHOUT ROWID;
-- Trips with one half; orphaned_ns is the newest event time when the sweep marked it.
CREATE TABLE IF NOT EXISTS open_trips (
    trip_id      TEXT PRIMARY KEY,
    kind         INTEGER NOT NULL,
    timestamp_ns INTEGER NOT NULL,
    orphaned_ns  INTEGER
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

/// An open state directory.
pub struct StateDir {
    path: PathBuf,
    pub(crate) conn: Connection,
}

/// What the store holds, for summaries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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
        let db = dir.join("tripflow.sqlite");
        let conn = Connection::open(&db).db(&format!("opening {}", db.display()))?;
        Self::init(dir.to_path_buf(), conn)
    }

    /// A store that lives in memory only (for tests and the conformance runner).
    pub fn in_memory() -> Result<StateDir, Error> {
        let conn = Connection::open_in_memory().db("opening an in-memory database")?;
        Self::init(PathBuf::from(":memory:"), conn)
    }

    fn init(path: PathBuf, conn: Connection) -> Result<StateDir, Error> {
        // A 64 MiB page cache: the replay writes each batch's keys in sorted order, so it
        // touches pages in order and the operating system's cache serves the rest; a larger
        // cache measured slower (more dirty pages to sort at each commit) and costs memory.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA cache_size = -65536;
             PRAGMA wal_autocheckpoint = 65536;
             PRAGMA temp_store = MEMORY;",
        )
        .db("configuring the database")?;
        let old: Option<i64> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .or_else(|e| match e {
                // A new store: no meta table yet.
                rusqlite::Error::SqliteFailure(_, Some(ref m)) if m.contains("no such table") => {
                    Ok(None)
                }
                e => Err(e),
            })
            .db("reading the schema version")?;
        if old == Some(1) {
            conn.execute_batch(MIGRATE_FROM_1)
                .db("migrating the store from schema version 1")?;
        }
        conn.execute_batch(SCHEMA).db("creating the schema")?;
        if matches!(old, Some(1 | 2)) {
            conn.execute_batch(MIGRATE_FROM_2)
                .db("migrating the store from schema version 2")?;
        }
        let version: Option<i64> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .db("reading the schema version")?;
        match version {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1), ('sources_complete', 1)",
                    [SCHEMA_VERSION],
                )
                .db("writing the schema version")?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(Error::Db {
                    what: format!(
                        "the store in {} has schema version {other}, this tripflow reads {SCHEMA_VERSION}; use a new --state directory",
                        path.display()
                    ),
                    source: rusqlite::Error::InvalidQuery,
                });
            }
        }
        Ok(StateDir { path, conn })
    }

    /// Runs `f` inside one `BEGIN IMMEDIATE` transaction: committed when `f` succeeds, rolled
    /// back when it fails. Taking the write lock up front means the reads `f` makes cannot be
    /// invalidated by a concurrent writer (another `tripflow` on the same state directory).
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

    /// The directory (or `:memory:`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The newest event time stored, ns.
    pub fn newest_ns(&self) -> Result<Option<i64>, Error> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'newest_ns'", [], |r| {
                r.get(0)
            })
            .optional()
            .db("reading the newest event time")
    }

    /// Counts of what the store holds.
    pub fn totals(&self) -> Result<StoreTotals, Error> {
        let count = |sql: &str| -> Result<u64, Error> {
            self.conn
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .db("counting the store")
        };
        Ok(StoreTotals {
            events: count("SELECT count(*) FROM events")?,
            completed: count("SELECT count(*) FROM trips WHERE status = 0")?,
            invalid: count("SELECT count(*) FROM trips WHERE status = 1")?,
            no_fare: count("SELECT count(*) FROM trips WHERE status = 2")?,
            open: count("SELECT count(*) FROM open_trips")?,
            orphaned: count("SELECT count(*) FROM open_trips WHERE orphaned_ns IS NOT NULL")?,
            quarantined: count("SELECT count(*) FROM quarantine")?,
        })
    }

    /// Adds a batch's counts to its input's row in `sources`.
    pub(crate) fn count_source(
        &self,
        name: &str,
        records: u64,
        blank: u64,
        duplicates: u64,
    ) -> Result<(), Error> {
        self.conn
            .prepare_cached(
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
        let complete = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'sources_complete'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .db("reading the store's meta")?
            == Some(1);
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

    /// Appends every stored event of `trip_id` to `out`.
    pub(crate) fn stored_events(
        &self,
        trip_id: &str,
        out: &mut Vec<TripEvent>,
    ) -> Result<(), Error> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT kind, timestamp_ns, fare_cents, extras FROM events WHERE trip_id = ?1",
            )
            .db("preparing the event lookup")?;
        let rows = stmt
            .query_map([trip_id], |r| {
                Ok(TripEvent {
                    trip_id: trip_id.to_owned(),
                    kind: kind_from(r.get(0)?),
                    timestamp_ns: r.get(1)?,
                    fare_cents: r.get(2)?,
                    extras: r.get(3)?,
                })
            })
            .db("looking up stored events")?;
        for row in rows {
            out.push(row.db("reading a stored event")?);
        }
        Ok(())
    }

    /// Every stored event (the first copy of each trip id and half), ordered by trip id and
    /// half: what a check of the store against another host compares.
    pub fn events(&self) -> Result<Vec<TripEvent>, Error> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT trip_id, kind, timestamp_ns, fare_cents, extras FROM events ORDER BY trip_id, kind",
            )
            .db("preparing the event listing")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(TripEvent {
                    trip_id: r.get(0)?,
                    kind: kind_from(r.get(1)?),
                    timestamp_ns: r.get(2)?,
                    fare_cents: r.get(3)?,
                    extras: r.get(4)?,
                })
            })
            .db("listing stored events")?;
        rows.map(|r| r.db("reading a stored event")).collect()
    }

    /// The original bytes of a stored event.
    pub(crate) fn stored_raw(&self, trip_id: &str, kind: EventKind) -> Result<Vec<u8>, Error> {
        self.conn
            .query_row(
                "SELECT r.raw FROM events e JOIN event_raw r ON r.id = e.raw_id
                 WHERE e.trip_id = ?1 AND e.kind = ?2",
                params![trip_id, kind_to(kind)],
                |r| r.get(0),
            )
            .db("reading a stored event's bytes")
    }
}

pub(crate) fn kind_to(kind: EventKind) -> i64 {
    match kind {
        EventKind::Start => 0,
        EventKind::End => 1,
    }
}

pub(crate) fn kind_from(n: i64) -> EventKind {
    if n == 0 {
        EventKind::Start
    } else {
        EventKind::End
    }
}

pub(crate) fn status_to(s: TripStatus) -> i64 {
    match s {
        TripStatus::Completed => 0,
        TripStatus::Invalid => 1,
        TripStatus::NoFare => 2,
    }
}

pub(crate) fn status_from(n: i64) -> TripStatus {
    match n {
        0 => TripStatus::Completed,
        1 => TripStatus::Invalid,
        _ => TripStatus::NoFare,
    }
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
        state
            .conn
            .execute(
                "UPDATE meta SET value = 99 WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        drop(state);
        let err = StateDir::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }
}
