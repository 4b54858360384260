//! The store's two append-only logs, the only files the replay's hot path writes.
//!
//! - `events.log`: every stored event (the first copy of each trip half), in arrival order,
//!   with its original bytes and where it was read.
//! - `trips.log`: every closed trip, one fixed-size record each, with the positions of its two
//!   events in `events.log`.
//!
//! A batch's records are written with one positioned write per log, past the committed end;
//! the replay's committer `fdatasync`s the logs and then commits the SQLite transaction that
//! records the new ends, and only then do they count. A process killed in between leaves bytes past the committed end, which the next
//! open cuts off; because the data is on disk before the commit, a commit that survives a power
//! loss never points past what the log holds.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use tripflow_runtime::core::{EventKind, TripStatus};

use crate::error::{Error, IoContext};

/// Bytes of an event record's header (before its three variable-length fields).
const EVENT_HEADER: usize = 44;

/// Bytes of a trip record.
pub(crate) const TRIP_RECORD: usize = 64;

/// One append-only log file: its written length and the bytes of the batch in flight.
pub(crate) struct Log {
    file: File,
    name: &'static str,
    /// Bytes written: the store's committed length, and batches written since whose
    /// transactions are on their way (see `replay`).
    written: u64,
    /// The batch's records, not yet written.
    pending: Vec<u8>,
}

impl Log {
    /// Opens `dir/name`, of which `committed` bytes count. Bytes past them (a writer's batch in
    /// flight, or left by one that stopped before its commit) are ignored; a writer cuts them
    /// off with [`Log::cut_to`].
    pub fn open(dir: &Path, name: &'static str, committed: u64) -> Result<Log, Error> {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .io(|| format!("opening {}", path.display()))?;
        let len = file
            .metadata()
            .io(|| format!("reading {}", path.display()))?
            .len();
        if len < committed {
            return Err(Error::Damaged(format!(
                "{} holds {len} bytes but the store committed {committed}: the file was cut or \
                 replaced outside tripflow; replay the inputs into a new --state directory",
                path.display()
            )));
        }
        Ok(Log {
            file,
            name,
            written: committed,
            pending: Vec::new(),
        })
    }

    /// Cuts off everything past `committed` (the caller holds the store's lock) and makes it the
    /// committed length.
    pub fn cut_to(&mut self, committed: u64) -> Result<(), Error> {
        let len = self
            .file
            .metadata()
            .io(|| format!("reading {}", self.name))?
            .len();
        if len < committed {
            return Err(Error::Damaged(format!(
                "{} holds {len} bytes but the store committed {committed}: the file was cut or \
                 replaced outside tripflow; replay the inputs into a new --state directory",
                self.name
            )));
        }
        if len > committed {
            self.file
                .set_len(committed)
                .io(|| format!("cutting uncommitted bytes off {}", self.name))?;
        }
        self.written = committed;
        self.pending.clear();
        Ok(())
    }

    /// Where the next appended byte goes.
    pub fn end(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Writes the pending bytes after the written end (into the page cache: readable at once,
    /// durable once [`Log::sync`] or a sync of [`Log::handle`] returns); returns the new end.
    pub fn write_pending(&mut self) -> Result<u64, Error> {
        if !self.pending.is_empty() {
            self.file
                .write_all_at(&self.pending, self.written)
                .io(|| format!("writing {}", self.name))?;
            self.written += self.pending.len() as u64;
            self.pending.clear();
        }
        Ok(self.written)
    }

    /// Waits for the written bytes to reach the disk.
    pub fn sync(&self) -> Result<(), Error> {
        self.file
            .sync_data()
            .io(|| format!("syncing {}", self.name))
    }

    /// Another handle to the file, for syncing it from another thread.
    pub fn handle(&self) -> Result<File, Error> {
        self.file
            .try_clone()
            .io(|| format!("opening {}", self.name))
    }

    /// Reads `buf.len()` bytes at `pos`: written ones from the file, later ones from the
    /// pending batch.
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), Error> {
        let in_file = (self.written.saturating_sub(pos) as usize).min(buf.len());
        let (from_file, from_pending) = buf.split_at_mut(in_file);
        if !from_file.is_empty() {
            self.file
                .read_exact_at(from_file, pos)
                .io(|| format!("reading {} at byte {pos}", self.name))?;
        }
        if !from_pending.is_empty() {
            let at = (pos + in_file as u64 - self.written) as usize;
            let bytes = self
                .pending
                .get(at..at + from_pending.len())
                .ok_or_else(|| damaged(self.name, pos))?;
            from_pending.copy_from_slice(bytes);
        }
        Ok(())
    }

    /// A sequential reader of the committed bytes from `from`.
    fn reader(&self, from: u64) -> Result<BufReader<std::io::Take<File>>, Error> {
        let mut file = self
            .file
            .try_clone()
            .io(|| format!("reading {}", self.name))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(from))
            .io(|| format!("reading {}", self.name))?;
        Ok(BufReader::with_capacity(
            1 << 20,
            file.take(self.written - from),
        ))
    }
}

/// A stored event as `events.log` keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EventRecord {
    pub kind: EventKind,
    pub timestamp_ns: i64,
    pub fare_cents: Option<i64>,
    /// The input it was read from (`inputs` table).
    pub source: u32,
    /// Its 1-based line there.
    pub line: u64,
    pub trip_id: String,
    pub extras: String,
    /// The original bytes.
    pub raw: Vec<u8>,
}

/// The fields of an event record, borrowed, for appending.
pub(crate) struct NewEvent<'a> {
    pub kind: EventKind,
    pub timestamp_ns: i64,
    pub fare_cents: Option<i64>,
    pub source: u32,
    pub line: u64,
    pub trip_id: &'a str,
    pub extras: &'a str,
    pub raw: &'a [u8],
}

/// `events.log`.
pub(crate) struct EventLog(pub Log);

/// Appends an event record to `out`; returns where in `out` it starts.
///
/// Layout, little-endian: `u32` length of the rest, `u8` kind, `u8` has-fare, `u16` trip-id
/// length, `u32` source, `u64` line, `i64` timestamp, `i64` fare, `u32` extras length, `u32` raw
/// length, then the trip id, the extras and the raw bytes.
pub(crate) fn encode_event(out: &mut Vec<u8>, e: &NewEvent<'_>) -> u64 {
    let pos = out.len() as u64;
    let body = EVENT_HEADER - 4 + e.trip_id.len() + e.extras.len() + e.raw.len();
    out.reserve(body + 4);
    out.extend_from_slice(&(body as u32).to_le_bytes());
    out.push(kind_code(e.kind));
    out.push(e.fare_cents.is_some() as u8);
    out.extend_from_slice(&(e.trip_id.len() as u16).to_le_bytes());
    out.extend_from_slice(&e.source.to_le_bytes());
    out.extend_from_slice(&e.line.to_le_bytes());
    out.extend_from_slice(&e.timestamp_ns.to_le_bytes());
    out.extend_from_slice(&e.fare_cents.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&(e.extras.len() as u32).to_le_bytes());
    out.extend_from_slice(&(e.raw.len() as u32).to_le_bytes());
    out.extend_from_slice(e.trip_id.as_bytes());
    out.extend_from_slice(e.extras.as_bytes());
    out.extend_from_slice(e.raw);
    pos
}

impl EventLog {
    /// Appends an event to the batch in flight; returns its position.
    pub fn append(&mut self, e: &NewEvent<'_>) -> u64 {
        self.0.written + encode_event(&mut self.0.pending, e)
    }

    /// Appends records [`encode_event`] wrote to a buffer of their own; returns the position of
    /// the buffer's first byte.
    pub fn append_encoded(&mut self, records: Vec<u8>) -> u64 {
        let base = self.0.end();
        if self.0.pending.is_empty() {
            self.0.pending = records;
        } else {
            self.0.pending.extend_from_slice(&records);
        }
        base
    }

    /// The committed event at `pos`.
    pub fn read(&self, pos: u64) -> Result<EventRecord, Error> {
        let mut len = [0u8; 4];
        self.0.read_at(pos, &mut len)?;
        let mut record = vec![0u8; 4 + u32::from_le_bytes(len) as usize];
        self.0.read_at(pos, &mut record)?;
        decode_event(&record).ok_or_else(|| damaged(self.0.name, pos))
    }

    /// Calls `f(position, event)` for every committed event from `from`, in log order.
    pub fn scan(
        &self,
        from: u64,
        mut f: impl FnMut(u64, EventRecord) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut reader = self.0.reader(from)?;
        let mut pos = from;
        let mut record = Vec::new();
        while pos < self.0.written {
            let mut len = [0u8; 4];
            reader
                .read_exact(&mut len)
                .io(|| format!("reading {}", self.0.name))?;
            let n = u32::from_le_bytes(len) as usize;
            record.clear();
            record.extend_from_slice(&len);
            record.resize(4 + n, 0);
            reader
                .read_exact(&mut record[4..])
                .io(|| format!("reading {}", self.0.name))?;
            let event = decode_event(&record).ok_or_else(|| damaged(self.0.name, pos))?;
            f(pos, event)?;
            pos += 4 + n as u64;
        }
        Ok(())
    }
}

fn decode_event(r: &[u8]) -> Option<EventRecord> {
    if r.len() < EVENT_HEADER {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(r[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap());
    let kind = kind_from_code(r[4])?;
    let has_fare = r[5] == 1;
    let id_len = u16::from_le_bytes([r[6], r[7]]) as usize;
    let (extras_len, raw_len) = (u32_at(36) as usize, u32_at(40) as usize);
    if r.len() != EVENT_HEADER + id_len + extras_len + raw_len {
        return None;
    }
    let id_end = EVENT_HEADER + id_len;
    let extras_end = id_end + extras_len;
    Some(EventRecord {
        kind,
        timestamp_ns: u64_at(20) as i64,
        fare_cents: has_fare.then(|| u64_at(28) as i64),
        source: u32_at(8),
        line: u64_at(12),
        trip_id: String::from_utf8(r[EVENT_HEADER..id_end].to_vec()).ok()?,
        extras: String::from_utf8(r[id_end..extras_end].to_vec()).ok()?,
        raw: r[extras_end..].to_vec(),
    })
}

/// A closed trip as `trips.log` keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TripRecord {
    /// The trip id's fingerprint (see `index::Fp`).
    pub fp: [u64; 2],
    pub status: TripStatus,
    pub start_ns: i64,
    pub end_ns: i64,
    pub fare_cents: Option<i64>,
    /// Positions of the start and end events in `events.log`.
    pub start_pos: u64,
    pub end_pos: u64,
}

impl TripRecord {
    /// Where the event that closed the trip (the later of its two) is in `events.log`.
    /// `trips.log` is in the order of this position.
    pub fn closed_at(&self) -> u64 {
        self.start_pos.max(self.end_pos)
    }

    /// Layout, little-endian, 64 bytes: fingerprint (2 × `u64`), `u8` status, `u8` has-fare,
    /// 6 bytes zero, `i64` start, `i64` end, `i64` fare, `u64` start position, `u64` end
    /// position.
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.fp[0].to_le_bytes());
        out.extend_from_slice(&self.fp[1].to_le_bytes());
        out.push(status_code(self.status));
        out.push(self.fare_cents.is_some() as u8);
        out.extend_from_slice(&[0; 6]);
        out.extend_from_slice(&self.start_ns.to_le_bytes());
        out.extend_from_slice(&self.end_ns.to_le_bytes());
        out.extend_from_slice(&self.fare_cents.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&self.start_pos.to_le_bytes());
        out.extend_from_slice(&self.end_pos.to_le_bytes());
    }

    fn decode(r: &[u8]) -> Option<TripRecord> {
        let u64_at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap());
        Some(TripRecord {
            fp: [u64_at(0), u64_at(8)],
            status: status_from_code(r[16])?,
            start_ns: u64_at(24) as i64,
            end_ns: u64_at(32) as i64,
            fare_cents: (r[17] == 1).then(|| u64_at(40) as i64),
            start_pos: u64_at(48),
            end_pos: u64_at(56),
        })
    }
}

/// `trips.log`.
pub(crate) struct TripLog(pub Log);

impl TripLog {
    /// Committed trips.
    pub fn count(&self) -> u64 {
        self.0.written / TRIP_RECORD as u64
    }

    /// Appends a trip to the batch in flight; returns its number.
    pub fn append(&mut self, t: &TripRecord) -> u64 {
        let n = self.0.end() / TRIP_RECORD as u64;
        t.encode(&mut self.0.pending);
        n
    }

    /// Committed trip number `n`.
    pub fn read(&self, n: u64) -> Result<TripRecord, Error> {
        let mut r = [0u8; TRIP_RECORD];
        let pos = n * TRIP_RECORD as u64;
        self.0.read_at(pos, &mut r)?;
        TripRecord::decode(&r).ok_or_else(|| damaged(self.0.name, pos))
    }

    /// Calls `f(number, trip)` for the committed trips numbered `range`, in log order.
    pub fn scan(
        &self,
        range: std::ops::Range<u64>,
        mut f: impl FnMut(u64, TripRecord) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut trips = self.reader(range.start)?;
        while let Some((n, trip)) = trips.next()?.filter(|(n, _)| *n < range.end) {
            f(n, trip)?;
        }
        Ok(())
    }

    /// The committed trips from number `from`, one at a time.
    pub fn reader(&self, from: u64) -> Result<TripReader, Error> {
        Ok(TripReader {
            reader: self.0.reader(from * TRIP_RECORD as u64)?,
            next: from,
            end: self.count(),
            name: self.0.name,
        })
    }
}

/// Reads `trips.log` in order (see [`TripLog::reader`]).
pub(crate) struct TripReader {
    reader: BufReader<std::io::Take<File>>,
    next: u64,
    end: u64,
    name: &'static str,
}

impl TripReader {
    /// The next trip and its number; `None` after the last committed one.
    pub fn next(&mut self) -> Result<Option<(u64, TripRecord)>, Error> {
        if self.next == self.end {
            return Ok(None);
        }
        let mut r = [0u8; TRIP_RECORD];
        self.reader
            .read_exact(&mut r)
            .io(|| format!("reading {}", self.name))?;
        let n = self.next;
        let trip =
            TripRecord::decode(&r).ok_or_else(|| damaged(self.name, n * TRIP_RECORD as u64))?;
        self.next += 1;
        Ok(Some((n, trip)))
    }
}

fn damaged(name: &str, pos: u64) -> Error {
    Error::Damaged(format!(
        "{name} holds an unreadable record at byte {pos}; replay the inputs into a new --state \
         directory"
    ))
}

pub(crate) fn kind_code(kind: EventKind) -> u8 {
    match kind {
        EventKind::Start => 0,
        EventKind::End => 1,
    }
}

pub(crate) fn kind_from_code(n: u8) -> Option<EventKind> {
    match n {
        0 => Some(EventKind::Start),
        1 => Some(EventKind::End),
        _ => None,
    }
}

fn status_code(s: TripStatus) -> u8 {
    match s {
        TripStatus::Completed => 0,
        TripStatus::Invalid => 1,
        TripStatus::NoFare => 2,
    }
}

fn status_from_code(n: u8) -> Option<TripStatus> {
    match n {
        0 => Some(TripStatus::Completed),
        1 => Some(TripStatus::Invalid),
        2 => Some(TripStatus::NoFare),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, raw: &[u8]) -> NewEvent<'static> {
        NewEvent {
            kind: EventKind::End,
            timestamp_ns: -5,
            fare_cents: Some(1234),
            source: 3,
            line: 9,
            trip_id: Box::leak(id.to_owned().into_boxed_str()),
            extras: "{\"a\":1}",
            raw: Box::leak(raw.to_vec().into_boxed_slice()),
        }
    }

    #[test]
    fn events_round_trip_and_uncommitted_bytes_are_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog(Log::open(dir.path(), "events.log", 0).unwrap());
        let a = log.append(&event("a", b"{raw a}"));
        let b = log.append(&event("bb", &[0xff, 0]));
        let committed = log.0.write_pending().unwrap();
        assert_eq!((a, b), (0, 4 + 40 + 1 + 7 + 7));
        // A batch written but never committed: a killed process.
        log.append(&event("c", b"lost"));
        log.0.write_pending().unwrap();
        drop(log);

        let mut log = EventLog(Log::open(dir.path(), "events.log", committed).unwrap());
        log.0.cut_to(committed).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("events.log"))
                .unwrap()
                .len(),
            committed
        );
        // A record appended but not yet written is read from the pending batch.
        let pending = log.append(&event("p", b"pending"));
        assert_eq!(log.read(pending).unwrap().raw, b"pending");
        log.0.pending.clear();
        let read = log.read(b).unwrap();
        assert_eq!(
            (read.trip_id.as_str(), &read.raw[..]),
            ("bb", &[0xff, 0][..])
        );
        assert_eq!(read.fare_cents, Some(1234));
        let mut seen = Vec::new();
        log.scan(0, |pos, e| {
            seen.push((pos, e.trip_id));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [(a, "a".to_owned()), (b, "bb".to_owned())]);
    }

    #[test]
    fn a_log_shorter_than_committed_is_damage_not_silence() {
        let dir = tempfile::tempdir().unwrap();
        let err = Log::open(dir.path(), "trips.log", 64).err().unwrap();
        assert!(err.to_string().contains("new --state directory"), "{err}");
    }

    #[test]
    fn trips_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = TripLog(Log::open(dir.path(), "trips.log", 0).unwrap());
        let t = TripRecord {
            fp: [1, u64::MAX],
            status: TripStatus::NoFare,
            start_ns: i64::MIN,
            end_ns: 7,
            fare_cents: None,
            start_pos: 10,
            end_pos: 20,
        };
        assert_eq!(log.append(&t), 0);
        assert_eq!(
            log.append(&TripRecord {
                fare_cents: Some(-3),
                ..t
            }),
            1
        );
        log.0.write_pending().unwrap();
        assert_eq!(log.count(), 2);
        assert_eq!(log.read(0).unwrap(), t);
        let mut all = Vec::new();
        log.scan(1..2, |n, t| {
            all.push((n, t.fare_cents));
            Ok(())
        })
        .unwrap();
        assert_eq!(all, [(1, Some(-3))]);
    }
}
