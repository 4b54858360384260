//! The store's metadata, in SQLite's `meta` table: the schema version, the fingerprint key, the
//! newest event time, and the logs' committed ends and counts ([`Committed`]).

use rusqlite::{Connection, OptionalExtension, params};
use tripflow_runtime::core::TripStatus;

use crate::error::{DbContext, Error};

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

    pub(crate) fn read(conn: &Connection) -> Result<Committed, Error> {
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
pub(crate) fn meta_or_none(conn: &Connection, key: &str) -> Result<Option<i64>, Error> {
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
