//! Manifests: what the table's stream said, filed in batches.
//!
//! The matcher reads every write of a trip item from the stream and files it, **one item per
//! matcher batch and key** instead of one index entry per trip:
//!
//! | manifest | `pk`                         | entries                                   | read by     |
//! |----------|------------------------------|-------------------------------------------|-------------|
//! | open     | `OPEN#<hour>#<0..3>`         | `[trip id, event type, ts]`: a first half | sweeper |
//! | settled  | `SETTLED#<hour>#<0..3>`      | `trip id`: completed or orphaned           | sweeper     |
//! | done     | `DONE#<UTC date>#<0..3>`     | a closed trip ([`DoneEntry`]): `[trip id, start ns, fare cents(, status)]` | KPI job |
//! | sweep mark | `SWEEP` / `HOUR#<hour>`     | `marks`: the hour has open entries to sweep | sweeper    |
//!
//! `<hour>` is the trip item's `opened_hour` (the first stored half's hour), so the open entry
//! and the settled entry of one trip meet under one key; `<date>` is the UTC date of the start
//! (the core's `day-of`), the date the KPI job reads for a local day. The sort key names the
//! batch (`<first event id>#<last event id>#<chunk>`), so a redelivered batch rewrites its own
//! manifests with the same bytes, and the shard (`0..3`, a hash of the batch) spreads a busy
//! hour's or day's writes over [`SHARDS`] keys. A trip can be filed more than once (a batch
//! retried in halves files under new names): readers count each trip id once — the entries of
//! one trip are equal, because both halves are write-once.
//!
//! The entries are JSON in one string attribute, at most [`MAX_ITEM_BYTES`] per item; a larger
//! batch is filed in chunks.

use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tripflow_runtime::core::{ClosedTrip, TripStatus};

use crate::retry::Budget;
use crate::{App, Error, table};

/// Keys per hour or day of each kind.
pub const SHARDS: u32 = 4;
/// The entries attribute.
pub const ENTRIES: &str = "entries";
/// The largest entries string one item holds; a larger batch is split.
pub const MAX_ITEM_BYTES: usize = 64 * 1024;

/// A first half waiting for its other half: trip id, which half, its instant (ns).
pub type OpenEntry = (String, String, i64);
/// A closed trip, filed for the KPI job as the core closed it; the KPI job hands it to the core
/// as it is, and the core decides whether it counts. On the wire, a completed trip with a fare
/// (nearly every trip) is `[trip id, start ns, fare cents]`, and any other is `[trip id, start
/// ns, fare cents or null, status]`: the short form keeps a manifest's bytes, and so its write
/// and read units, what they were before the status was filed. Entries filed before contract
/// 0.6.0 were all of the short form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoneEntry {
    /// The trip's id.
    pub trip_id: String,
    /// The start's instant, ns since the epoch.
    pub start_ns: i64,
    /// The trip's fare, cents.
    pub fare_cents: Option<i64>,
    /// How the trip closed.
    pub status: TripStatus,
}

impl From<&ClosedTrip> for DoneEntry {
    fn from(t: &ClosedTrip) -> DoneEntry {
        DoneEntry {
            trip_id: t.trip_id.clone(),
            start_ns: t.start_ns,
            fare_cents: t.fare_cents,
            status: t.status,
        }
    }
}

impl Serialize for DoneEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.status, self.fare_cents) {
            (TripStatus::Completed, Some(fare)) => {
                (&self.trip_id, self.start_ns, fare).serialize(s)
            }
            (status, fare) => (&self.trip_id, self.start_ns, fare, status.as_str()).serialize(s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for DoneEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DoneEntry, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Closed(String, i64, Option<i64>, String),
            Completed(String, i64, i64),
        }
        Ok(match Wire::deserialize(d)? {
            Wire::Closed(trip_id, start_ns, fare_cents, status) => DoneEntry {
                trip_id,
                start_ns,
                fare_cents,
                status: TripStatus::from_str_opt(&status).ok_or_else(|| {
                    serde::de::Error::custom(format!("unknown trip status {status:?}"))
                })?,
            },
            Wire::Completed(trip_id, start_ns, fare) => DoneEntry {
                trip_id,
                start_ns,
                fare_cents: Some(fare),
                status: TripStatus::Completed,
            },
        })
    }
}

/// The kinds of manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// [`OpenEntry`] by opened hour.
    Open,
    /// Trip ids by opened hour.
    Settled,
    /// [`DoneEntry`] by UTC date of the start (`matching.pair-all`'s filing date).
    Done,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Open => "OPEN",
            Kind::Settled => "SETTLED",
            Kind::Done => "DONE",
        }
    }
}

/// `OPEN#<hour>#<shard>` and the like.
pub fn pk(kind: Kind, bucket: &str, shard: u32) -> String {
    format!("{}#{bucket}#{shard}", kind.prefix())
}

/// The entries as items: `(sort key, JSON)` per chunk of at most [`MAX_ITEM_BYTES`].
pub fn chunks<T: Serialize>(batch: &str, entries: &[T]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::from("[");
    for e in entries {
        let json = serde_json::to_string(e).expect("entries serialize");
        if current.len() > 1 && current.len() + json.len() + 2 > MAX_ITEM_BYTES {
            current.push(']');
            out.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&json);
    }
    if current.len() > 1 {
        current.push(']');
        out.push(current);
    }
    out.into_iter()
        .enumerate()
        .map(|(i, json)| (format!("{batch}#{i}"), json))
        .collect()
}

/// Files `entries` under `kind`/`bucket` for the batch named `batch` (idempotent: the same
/// batch writes the same items).
pub async fn file<T: Serialize>(
    app: &App,
    kind: Kind,
    bucket: String,
    batch: &str,
    entries: &[T],
    budget: &Budget,
) -> Result<(), Error> {
    let shard = table::spread(batch) % SHARDS;
    let expires_at = app.expires_at();
    for (sk, json) in chunks(batch, entries) {
        table::put_manifest(
            app,
            (pk(kind, &bucket, shard), sk),
            (ENTRIES, json),
            expires_at,
            budget,
        )
        .await?;
    }
    Ok(())
}

/// Every entry filed under `kind`/`bucket`, its shards read side by side. Entries are
/// returned as filed (a trip may appear more than once).
pub async fn read<T: DeserializeOwned>(
    app: &App,
    op: &'static str,
    kind: Kind,
    bucket: &str,
    budget: &Budget,
) -> Result<Vec<T>, Error> {
    let pages = futures_util::future::try_join_all(
        (0..SHARDS).map(|shard| table::items_under(app, op, pk(kind, bucket, shard), budget)),
    )
    .await?;
    let mut out = Vec::new();
    for item in pages.iter().flatten() {
        let Some(AttributeValue::S(json)) = item.get(ENTRIES) else {
            return Err(Error::Unreadable(format!(
                "{op}: a {} manifest without entries",
                kind.prefix()
            )));
        };
        let entries: Vec<T> = serde_json::from_str(json).map_err(|e| {
            Error::Unreadable(format!(
                "{op}: a {} manifest is not readable: {e}",
                kind.prefix()
            ))
        })?;
        out.extend(entries);
    }
    Ok(out)
}

/// Partition key of the sweep marks.
pub const SWEEP_PK: &str = "SWEEP";

/// `HOUR#<hour + 10⁷, 8 digits>`: sorts as the hours do, before the epoch too.
pub fn hour_sk(hour: i64) -> String {
    format!("HOUR#{:08}", hour + 10_000_000)
}

/// The hour a sweep mark's sort key names.
pub fn hour_from_sk(sk: &str) -> Option<i64> {
    sk.strip_prefix("HOUR#")?
        .parse::<i64>()
        .ok()
        .map(|h| h - 10_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_batches_are_split_and_read_back_whole() {
        let entries: Vec<DoneEntry> = (0..5_000)
            .map(|i| DoneEntry {
                trip_id: format!("trip-{i:06}"),
                start_ns: i * 1_000_000_000,
                fare_cents: Some(1_000 + i),
                status: TripStatus::Completed,
            })
            .collect();
        let items = chunks("a#b", &entries);
        assert!(items.len() > 1, "{} items", items.len());
        let mut back: Vec<DoneEntry> = Vec::new();
        for (i, (sk, json)) in items.iter().enumerate() {
            assert_eq!(sk, &format!("a#b#{i}"));
            assert!(json.len() <= MAX_ITEM_BYTES);
            back.extend(serde_json::from_str::<Vec<DoneEntry>>(json).unwrap());
        }
        assert_eq!(back, entries);
        assert!(chunks::<DoneEntry>("x", &[]).is_empty());
        // Ids with any character survive.
        let odd: Vec<OpenEntry> = vec![("a\t\"b\n".into(), "end".into(), -5)];
        let (_, json) = &chunks("x", &odd)[0];
        assert_eq!(serde_json::from_str::<Vec<OpenEntry>>(json).unwrap(), odd);
    }

    #[test]
    fn hour_keys_sort_as_hours() {
        let hours = [-2_562_047, -1, 0, 1, 431_000, 2_562_047];
        let sks: Vec<String> = hours.iter().map(|h| hour_sk(*h)).collect();
        let mut sorted = sks.clone();
        sorted.sort();
        assert_eq!(sks, sorted);
        for h in hours {
            assert_eq!(hour_from_sk(&hour_sk(h)), Some(h));
        }
        assert_eq!(pk(Kind::Done, "2019-03-01", 7), "DONE#2019-03-01#7");
    }
}
