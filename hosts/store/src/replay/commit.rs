//! Making applied batches durable: the logs synced, then each group of batches recorded in one
//! SQLite transaction.

use std::fs::File;
use std::sync::mpsc;

use rusqlite::{Connection, TransactionBehavior};

use crate::db;
use crate::error::{DbContext, Error, IoContext};

use super::Commit;

/// The committer: for each group of batches queued, syncs the logs (so no commit can point past
/// what they hold after a power loss), then records the group in one transaction.
pub(super) fn commit_all(
    mut conn: Connection,
    events: File,
    trips: File,
    queue: mpsc::Receiver<Commit>,
) -> Result<(), Error> {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        group.extend(queue.try_iter());
        events.sync_data().io(|| "syncing events.log".to_owned())?;
        trips.sync_data().io(|| "syncing trips.log".to_owned())?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db("starting a transaction")?;
        for c in &group {
            db::insert_quarantine(&tx, &c.rejects)?;
            let [records, blank, duplicates] = c.tally;
            db::count_source(&tx, &c.source, records, blank, duplicates)?;
            if let Some(newest) = c.newest_ns {
                db::raise_newest_ns(&tx, newest)?;
            }
            db::unmark_orphans(&tx, &c.unorphaned)?;
        }
        let last = group.last().expect("a group has a first batch");
        last.committed.write(&tx)?;
        tx.commit().db("committing")?;
    }
    Ok(())
}
