//! A store's schema: creating it, and upgrading an older store to it (schemas 1 and 2 in SQL;
//! schema 3, everything in SQLite, into the logs of schema 4).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use tripflow_runtime::core::{EventKind, TripStatus};

use crate::db::{StateDir, connect};
use crate::error::{DbContext, Error, IoContext};
use crate::index::Fingerprinter;
use crate::log::{NewEvent, TripRecord};
use crate::meta::{Committed, meta, meta_or_none, random_key, set_meta};

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
        let conn = connect(dir)?;
        upgrade(&conn, &path)?;
        let mut state = StateDir::assemble(path, dir, conn, temp)?;
        if meta(&state.conn, "schema_version")? == Some(3) {
            state.lock_for_writing()?;
            from_3(&mut state)?;
        }
        Ok(state)
    }
}

/// Creates the schema of a new store, or brings an older one's SQL up to schema 3 or 4 (3 is
/// then moved into the logs by [`from_3`]); refuses a newer one.
fn upgrade(conn: &Connection, path: &Path) -> Result<(), Error> {
    let old = meta_or_none(conn, "schema_version")?;
    if old == Some(1) {
        conn.execute_batch(MIGRATE_FROM_1)
            .db("migrating the store from schema version 1")?;
    }
    conn.execute_batch(SCHEMA).db("creating the schema")?;
    if matches!(old, Some(1 | 2)) {
        conn.execute_batch(MIGRATE_FROM_2)
            .db("migrating the store from schema version 2")?;
    }
    match meta(conn, "schema_version")? {
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
    Ok(())
}

/// Copies the events (in arrival order, with their bytes), the closed trips and the orphan marks
/// of a schema-3 store into the logs and drops the old tables, in one transaction: a migration
/// that stops half-way leaves a schema-3 store, and the logs' bytes past their committed end
/// are cut off by the next attempt.
pub(crate) fn from_3(state: &mut StateDir) -> Result<(), Error> {
    let key = [random_key(), random_key()];
    state.fingerprints = Fingerprinter::new(key);
    let mut committed = Committed::default();
    state
        .write_transaction(|state| {
            let halves = copy_events(state, &mut committed)?;
            copy_trips(state, &halves, &mut committed)?;
            copy_orphans(state)?;
            (committed.events_len, committed.trips_len) = state.write_logs()?;
            state.sync_logs()?;
            committed.write(&state.conn)?;
            state
                .conn
                .execute_batch(
                    "DROP TABLE events; DROP TABLE event_raw; DROP TABLE trips; DROP TABLE open_trips;",
                )
                .db("dropping the migrated tables")?;
            set_meta(&state.conn, "key0", key[0] as i64)?;
            set_meta(&state.conn, "key1", key[1] as i64)?;
            set_meta(&state.conn, "schema_version", 4)
        })
        .or_else(|e| {
            state.recover()?;
            Err(e)
        })?;
    state.set_committed(committed);
    Ok(())
}

/// Where each trip's halves went in `events.log`, by trip id: `[start, end]`.
type Halves = HashMap<String, [Option<u64>; 2]>;

/// Appends a schema-3 store's events to `events.log`, in arrival order, with their bytes.
fn copy_events(state: &mut StateDir, committed: &mut Committed) -> Result<Halves, Error> {
    let mut halves = Halves::new();
    let mut inputs: HashMap<String, u32> = HashMap::new();
    let mut stmt = state
        .conn
        .prepare(
            "SELECT e.trip_id, e.kind, e.timestamp_ns, e.fare_cents, e.extras, r.raw,
             r.source, r.line FROM events e JOIN event_raw r ON r.id = e.raw_id ORDER BY r.id",
        )
        .db("reading the events to migrate")?;
    let mut rows = stmt.query([]).db("reading the events to migrate")?;
    while let Some(row) = rows.next().db("reading an event to migrate")? {
        let trip_id: String = col(row, 0)?;
        let kind = if col::<i64>(row, 1)? == 0 {
            EventKind::Start
        } else {
            EventKind::End
        };
        let extras: String = col(row, 4)?;
        let raw: Vec<u8> = col(row, 5)?;
        let source: String = col(row, 6)?;
        let source = match inputs.get(&source) {
            Some(id) => *id,
            None => {
                let id = state.input_id(&source)?;
                inputs.insert(source, id);
                id
            }
        };
        let pos = state.events.append(&NewEvent {
            kind,
            timestamp_ns: col(row, 2)?,
            fare_cents: col(row, 3)?,
            source,
            line: col::<i64>(row, 7)? as u64,
            trip_id: &trip_id,
            extras: &extras,
            raw: &raw,
        });
        halves.entry(trip_id).or_default()[(kind == EventKind::End) as usize] = Some(pos);
        committed.events += 1;
    }
    Ok(halves)
}

/// Appends a schema-3 store's closed trips to `trips.log`, in the order of the events that
/// closed them.
fn copy_trips(
    state: &mut StateDir,
    halves: &Halves,
    committed: &mut Committed,
) -> Result<(), Error> {
    let mut closed = Vec::new();
    {
        let mut stmt = state
            .conn
            .prepare("SELECT trip_id, status, start_ns, end_ns, fare_cents FROM trips")
            .db("reading the trips to migrate")?;
        let mut rows = stmt.query([]).db("reading the trips to migrate")?;
        while let Some(row) = rows.next().db("reading a trip to migrate")? {
            let trip_id: String = col(row, 0)?;
            let status = match col::<i64>(row, 1)? {
                0 => TripStatus::Completed,
                1 => TripStatus::Invalid,
                _ => TripStatus::NoFare,
            };
            let [Some(start_pos), Some(end_pos)] =
                halves.get(&trip_id).copied().unwrap_or_default()
            else {
                return Err(Error::Damaged(format!(
                    "the store's trip {trip_id:?} lacks a stored half; replay the inputs \
                     into a new --state directory"
                )));
            };
            closed.push(TripRecord {
                fp: state.fingerprints.of(&trip_id).0,
                status,
                start_ns: col(row, 2)?,
                end_ns: col(row, 3)?,
                fare_cents: col(row, 4)?,
                start_pos,
                end_pos,
            });
            committed.count(status);
        }
    }
    closed.sort_unstable_by_key(TripRecord::closed_at);
    for trip in &closed {
        state.trips.append(trip);
    }
    Ok(())
}

/// Copies a schema-3 store's orphan marks, now by fingerprint.
fn copy_orphans(state: &mut StateDir) -> Result<(), Error> {
    let orphans: Vec<(String, i64)> = state
        .conn
        .prepare("SELECT trip_id, orphaned_ns FROM open_trips WHERE orphaned_ns IS NOT NULL")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()
        })
        .db("reading the orphans to migrate")?;
    for (trip_id, orphaned_ns) in orphans {
        let fp = state.fingerprints.of(&trip_id).0;
        state
            .conn
            .execute(
                "INSERT INTO orphans (fp0, fp1, orphaned_ns) VALUES (?1, ?2, ?3)",
                params![fp[0] as i64, fp[1] as i64, orphaned_ns],
            )
            .db("migrating an orphan mark")?;
    }
    Ok(())
}

/// Column `i` of a row being migrated.
fn col<T: rusqlite::types::FromSql>(row: &rusqlite::Row<'_>, i: usize) -> Result<T, Error> {
    row.get(i).db("reading a row to migrate")
}

#[cfg(test)]
mod tests {
    use tripflow_runtime::NativeCore;

    use crate::{Input, InputSource, KpiOptions, ReplayOptions, StateDir, StoreTotals};

    /// The tables of a schema-3 store, as tripflow 0.1 before the logs created them.
    const SCHEMA_3: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    trip_id      TEXT NOT NULL,
    kind         INTEGER NOT NULL,
    timestamp_ns INTEGER NOT NULL,
    fare_cents   INTEGER,
    extras       TEXT NOT NULL,
    raw_id       INTEGER NOT NULL,
    PRIMARY KEY (trip_id, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_raw (
    id     INTEGER PRIMARY KEY,
    raw    BLOB NOT NULL,
    source TEXT NOT NULL,
    line   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS trips (
    trip_id    TEXT PRIMARY KEY,
    status     INTEGER NOT NULL,
    start_ns   INTEGER NOT NULL,
    end_ns     INTEGER NOT NULL,
    fare_cents INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS open_trips (
    trip_id      TEXT PRIMARY KEY,
    kind         INTEGER NOT NULL,
    timestamp_ns INTEGER NOT NULL,
    orphaned_ns  INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    id        INTEGER PRIMARY KEY,
    source    TEXT NOT NULL,
    line      INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    detail    TEXT NOT NULL,
    raw       BLOB NOT NULL,
    first_raw BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS quarantine_once ON quarantine (source, line, raw);
CREATE TABLE IF NOT EXISTS sources (
    name       TEXT PRIMARY KEY,
    records    INTEGER NOT NULL,
    blank      INTEGER NOT NULL,
    duplicates INTEGER NOT NULL
) WITHOUT ROWID;
";

    #[test]
    fn a_schema_3_store_is_migrated_with_its_events_trips_and_orphans() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = rusqlite::Connection::open(dir.path().join("tripflow.sqlite")).unwrap();
            conn.execute_batch(SCHEMA_3).unwrap();
            conn.execute_batch(
                r#"
                INSERT INTO meta VALUES ('schema_version', 3), ('sources_complete', 1),
                    ('newest_ns', 1704074400000000000);
                INSERT INTO event_raw VALUES
                    (1, CAST('{"trip_id":"a","event_type":"trip_start","timestamp":"2024-01-01T00:00:00Z"}' AS BLOB), 'old.ndjson', 1),
                    (2, CAST('{"trip_id":"b","event_type":"trip_start","timestamp":"2024-01-01T01:00:00Z"}' AS BLOB), 'old.ndjson', 2),
                    (3, CAST('{"trip_id":"a","event_type":"trip_end","timestamp":"2024-01-01T00:30:00Z","fare":12.5}' AS BLOB), 'old.ndjson', 3);
                INSERT INTO events VALUES
                    ('a', 0, 1704067200000000000, NULL, '', 1),
                    ('b', 0, 1704070800000000000, NULL, '', 2),
                    ('a', 1, 1704069000000000000, 1250, '', 3);
                INSERT INTO trips VALUES ('a', 0, 1704067200000000000, 1704069000000000000, 1250);
                INSERT INTO open_trips VALUES ('b', 0, 1704070800000000000, 1704074400000000000);
                INSERT INTO quarantine (source, line, reason, detail, raw) VALUES
                    ('old.ndjson', 4, 'bad_fare', 'fare is negative', CAST('{}' AS BLOB));
                INSERT INTO sources VALUES ('old.ndjson', 4, 0, 0);
                "#,
            )
            .unwrap();
        }
        let mut state = StateDir::open(dir.path()).unwrap();
        let totals = StoreTotals {
            events: 3,
            completed: 1,
            invalid: 0,
            no_fare: 0,
            open: 1,
            orphaned: 1,
            quarantined: 1,
        };
        assert_eq!(state.totals().unwrap(), totals);
        let ids: Vec<(String, i64)> = state
            .events()
            .unwrap()
            .into_iter()
            .map(|e| (e.trip_id, e.timestamp_ns))
            .collect();
        assert_eq!(
            ids,
            [
                ("a".into(), 1704067200000000000),
                ("a".into(), 1704069000000000000),
                ("b".into(), 1704070800000000000),
            ]
        );
        let kpi = crate::kpi(&NativeCore, &state, &KpiOptions::default()).unwrap();
        assert!(
            kpi.csv
                .ends_with("\n2024-01-01,1,12.50,12.50,12.50,12.50\n"),
            "{}",
            kpi.csv
        );

        // The migrated store goes on: b's end closes the orphan, a's start again is a
        // duplicate found through the closed trip's events in the log.
        let more = dir.path().join("more.ndjson");
        std::fs::write(
            &more,
            concat!(
                r#"{"trip_id":"b","event_type":"trip_end","timestamp":"2024-01-01T01:20:00Z","fare":7}"#,
                "\n",
                r#"{"trip_id":"a","event_type":"trip_start","timestamp":"2024-01-01T00:00:00Z"}"#,
                "\n",
            ),
        )
        .unwrap();
        let input = Input {
            name: "more.ndjson".into(),
            source: InputSource::File(more),
        };
        let summary = crate::replay(
            &NativeCore,
            &mut state,
            &[input],
            &ReplayOptions::default(),
            None,
            &(),
        )
        .unwrap();
        assert_eq!((summary.completed, summary.duplicates), (1, 1));
        let after = state.totals().unwrap();
        assert_eq!((after.completed, after.open, after.orphaned), (2, 0, 0));
        drop(state);
        // And it reopens as a schema-4 store.
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.totals().unwrap().events, 4);
    }
}
