//! Dirty KPI days: which days a completion changed, so the next scheduled KPI run republishes
//! them however late the trip completed (a late end, a backlog, a backfill of old files, an
//! orphan that got its other half).
//!
//! The days a matcher batch changes are the UTC dates the core names for the trips it closed
//! (`kpi.utc-days-touched`: the dates of the starts of the trips that count). A
//! marker item per UTC date records it:
//!
//! | item        | `pk`    | `sk`             | attributes                                   |
//! |-------------|---------|------------------|----------------------------------------------|
//! | dirty day   | `DIRTY` | `DAY#<UTC date>` | `marks` (number: `ADD 1` per marking batch)  |
//!
//! Marking is one `UpdateItem` per distinct day per matcher batch (not per trip), and it is
//! done before the batch is acknowledged, so a failed mark is retried with the batch. The KPI
//! job reads the markers (one query), republishes the local days they overlap
//! (`kpi.local-days`), then deletes each marker on the condition that `marks` is still what it
//! read: a day marked again during the run stays dirty for the next run.

use crate::retry::Budget;
use crate::table::{self, add_marks, clear_mark, marks_under};
use crate::{App, Error};

/// Partition key of the markers.
pub const DIRTY_PK: &str = "DIRTY";

/// Marks the UTC dates `days` dirty.
pub async fn mark(app: &App, days: &[String], budget: &Budget) -> Result<(), Error> {
    let sks: Vec<String> = days.iter().map(|d| table::day_pk(d)).collect();
    add_marks(app, DIRTY_PK, &sks, budget).await
}

/// A marker as read: its UTC date and its `marks` counter. A scheduled execution of the KPI
/// state machine carries the markers its plan read to its publish step as JSON.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    /// UTC date, `YYYY-MM-DD`.
    pub utc_day: String,
    /// The counter when read.
    pub marks: String,
}

/// Every marker, oldest day first (strongly consistent).
pub async fn pending(app: &App, budget: &Budget) -> Result<Vec<Marker>, Error> {
    let mut out = Vec::new();
    for (sk, marks) in marks_under(app, DIRTY_PK, None, budget).await? {
        match sk.strip_prefix("DAY#") {
            Some(day) => out.push(Marker {
                utc_day: day.to_owned(),
                marks,
            }),
            None => tracing::warn!(sk = %sk, "not a dirty-day marker; ignored"),
        }
    }
    Ok(out)
}

/// Deletes a marker unless it was marked again since it was read. Returns whether it went.
pub async fn clear(app: &App, m: &Marker, budget: &Budget) -> Result<bool, Error> {
    clear_mark(app, DIRTY_PK, &table::day_pk(&m.utc_day), &m.marks, budget).await
}
