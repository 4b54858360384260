//! Upgrading a schema-3 store (everything in SQLite) to the logs of schema 4.

use std::collections::HashMap;

use rusqlite::params;
use tripflow_runtime::core::{EventKind, TripStatus};

use crate::db::{Committed, StateDir, random_key, set_meta};
use crate::error::{DbContext, Error};
use crate::index::Fingerprinter;
use crate::log::{NewEvent, TripRecord};

/// Copies the events (in arrival order, with their bytes), the closed trips and the orphan marks
/// of a schema-3 store into the logs and drops the old tables, in one transaction: a migration
/// that stops half-way leaves a schema-3 store, and the logs' bytes past their committed end
/// are cut off by the next attempt.
pub(crate) fn from_3(state: &mut StateDir) -> Result<(), Error> {
    let key = [random_key(), random_key()];
    state.fingerprints = Fingerprinter::new(key);
    let mut committed = Committed::default();
    state.write_transaction(|state| {
        let mut halves: HashMap<String, [Option<u64>; 2]> = HashMap::new();
        let mut inputs: HashMap<String, u32> = HashMap::new();
        let mut closed = Vec::new();
        {
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
        }
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
        // trips.log is in the order of the events that closed the trips.
        closed.sort_unstable_by_key(TripRecord::closed_at);
        for trip in &closed {
            state.trips.append(trip);
        }
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
