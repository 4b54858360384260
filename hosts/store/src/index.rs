//! What the replay looks trips up in, held in memory and rebuilt from the logs.
//!
//! - **Open trips** (one half stored): fingerprint → the half's timestamp, fare, kind and
//!   position in `events.log`. A second half is matched here without touching the disk.
//! - **Closed trips**: the fingerprint's first word → the trip's number in `trips.log`.
//!   Only an event of a trip that is already closed (a late duplicate or conflict) reads the
//!   disk, and that read checks the trip id itself.
//!
//! A trip id never seen costs two hash probes. The open trips are saved to `open.snap` at the end
//! of every replay, the closed ones to `closed.snap` (see [`crate::closed`]) when they have grown;
//! opening a store loads the one, maps the other and applies the logs' tails written after them
//! (everything, if a replay was killed before saving them).
//!
//! Fingerprints are 104 bits of SipHash-1-3's 128-bit output, keyed by a random key chosen when
//! the store is created (so no input can be crafted to collide). Two of n open trips share a
//! fingerprint with probability about n²/2¹⁰⁵ — about 10⁻¹⁸ for ten million at once. A closed
//! trip is found by its first word and then checked against its stored trip id.

use std::alloc::Layout;
use std::hash::{Hash, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global};
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use siphasher::sip128::{Hasher128, SipHasher13};
use tripflow_runtime::core::EventKind;

use crate::closed::ClosedSet;
use crate::error::{Error, IoContext};
use crate::log::{EventLog, TripLog};

/// The bits of a fingerprint's second word that are kept.
const FP_SECOND_WORD: u64 = (1 << 40) - 1;

/// A trip id's 104-bit fingerprint: a first word and the low 40 bits of a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fp(pub [u64; 2]);

impl Hash for Fp {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.0[0]);
    }
}

/// Keys that are already uniform hashes are their own hash.
#[derive(Default)]
pub(crate) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Computes fingerprints with the store's key.
#[derive(Clone, Copy)]
pub(crate) struct Fingerprinter {
    key: [u64; 2],
}

impl Fingerprinter {
    pub fn new(key: [u64; 2]) -> Self {
        Fingerprinter { key }
    }

    /// The fingerprint of `trip_id`: 104 bits of SipHash-1-3's 128 (all the index keeps).
    pub fn of(&self, trip_id: &str) -> Fp {
        let mut h = SipHasher13::new_with_keys(self.key[0], self.key[1]);
        h.write(trip_id.as_bytes());
        let h = h.finish128();
        Fp([h.h1, h.h2 & FP_SECOND_WORD])
    }
}

const END: u64 = 1 << 63;
const HAS_EXTRAS: u64 = 1 << 62;
const HAS_FARE: u64 = 1 << 61;
const ORPHANED: u64 = 1 << 60;
/// The fare does not fit the slot's 32 bits: read it from the log.
const FARE_IN_LOG: u64 = 1 << 59;
const POS: u64 = (1 << 59) - 1;

/// The stored half of an open trip, as the index keeps it: 20 bytes of its 32-byte slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpenHalf {
    pub timestamp_ns: i64,
    /// Position in `events.log`, and the flags above.
    bits: u64,
    fare: i32,
}

impl OpenHalf {
    pub fn new(
        kind: EventKind,
        timestamp_ns: i64,
        fare_cents: Option<i64>,
        has_extras: bool,
        pos: u64,
    ) -> OpenHalf {
        let mut bits = pos & POS;
        if kind == EventKind::End {
            bits |= END;
        }
        if has_extras {
            bits |= HAS_EXTRAS;
        }
        let mut fare = 0;
        if let Some(cents) = fare_cents {
            bits |= HAS_FARE;
            match i32::try_from(cents) {
                Ok(small) => fare = small,
                Err(_) => bits |= FARE_IN_LOG,
            }
        }
        OpenHalf {
            timestamp_ns,
            bits,
            fare,
        }
    }

    /// The same half, its position moved on by `base` (a batch's records are encoded at
    /// positions relative to the batch).
    pub fn shifted(self, base: u64) -> OpenHalf {
        OpenHalf {
            bits: (self.bits & !POS) | ((self.pos() + base) & POS),
            ..self
        }
    }

    pub fn kind(&self) -> EventKind {
        if self.bits & END != 0 {
            EventKind::End
        } else {
            EventKind::Start
        }
    }

    /// The fare, unless it must be read from the event ([`OpenHalf::complete_in_log`]).
    pub fn fare_cents(&self) -> Option<i64> {
        (self.bits & HAS_FARE != 0).then_some(i64::from(self.fare))
    }

    /// Whether the event has more than the slot holds — fields besides the known ones, or a
    /// fare beyond 32 bits — so the lookup reads it from the log.
    pub fn complete_in_log(&self) -> bool {
        self.bits & (HAS_EXTRAS | FARE_IN_LOG) != 0
    }

    pub fn orphaned(&self) -> bool {
        self.bits & ORPHANED != 0
    }

    pub fn pos(&self) -> u64 {
        self.bits & POS
    }
}

/// Shards of the open-trip map: each grows and shrinks on its own, so a resize never holds two
/// copies of the whole map.
const SHARDS: usize = 256;

/// One open trip: 32 bytes. Of the fingerprint's 104 bits, 8 are the shard it is in.
#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    key0: u64,
    timestamp_ns: i64,
    bits: u64,
    key1: u32,
    fare: i32,
}

/// Open trips by fingerprint.
pub(crate) struct OpenSet {
    shards: Vec<HashTable<Slot, Mapped>>,
}

impl Default for OpenSet {
    fn default() -> Self {
        OpenSet {
            shards: (0..SHARDS).map(|_| HashTable::new_in(Mapped)).collect(),
        }
    }
}

/// Memory for the index: blocks of 64 KiB and more are mapped, grown (without copying) and
/// unmapped on their own. The tables grow and shrink as trips open and close; from malloc's heap, the memory of a
/// shrunk table would mostly stay with the process (glibc also raises its own mapping threshold
/// each time a mapped block is freed), so a replay's resident set would stay at its peak of
/// open trips. Measured on 10M shuffled events: 338 MiB peak from the heap, see BENCHMARKS.md.
#[derive(Clone, Copy)]
pub(crate) struct Mapped;

const MAPPED_FROM: usize = 64 << 10;

// SAFETY: blocks below `MAPPED_FROM` come from and go back to `Global`; larger ones are fresh
// anonymous mappings (page-aligned, which covers any alignment a table asks for), grown with
// `mremap` and unmapped with the size they were last mapped with (`grow` and `deallocate` get
// the layout the block has). Which of the two a block is follows from its layout alone.
unsafe impl Allocator for Mapped {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() < MAPPED_FROM || layout.align() > 4096 {
            return Global.allocate(layout);
        }
        // SAFETY: a private anonymous mapping of a non-zero length, no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(AllocError);
        }
        let p = NonNull::new(p.cast::<u8>()).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.size() < MAPPED_FROM || new.align() > 4096 || old.align() > 4096 {
            let grown = self.allocate(new)?;
            // SAFETY: the old block is valid for `old.size()` bytes, the new one for at least
            // that many, and they do not overlap; the old one is then given back with its
            // layout.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr.as_ptr(), grown.as_ptr().cast(), old.size());
                self.deallocate(ptr, old);
            }
            return Ok(grown);
        }
        // SAFETY: `ptr` was mapped by `allocate` with `old.size()` bytes; the kernel moves the
        // pages (no copy) if the mapping cannot grow in place.
        let p = unsafe {
            libc::mremap(
                ptr.as_ptr().cast(),
                old.size(),
                new.size(),
                libc::MREMAP_MAYMOVE,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(AllocError);
        }
        let p = NonNull::new(p.cast::<u8>()).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, new.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() < MAPPED_FROM || layout.align() > 4096 {
            // SAFETY: allocated by `Global` with this layout (see `allocate`).
            unsafe { Global.deallocate(ptr, layout) };
        } else {
            // SAFETY: mapped by `allocate` with this length, and no longer used.
            unsafe { libc::munmap(ptr.as_ptr().cast(), layout.size()) };
        }
    }
}

/// Where `fp` lives: shard (bits 32–39 of the second word), first word, low 32 bits of the
/// second.
fn place(fp: &Fp) -> (usize, u64, u32) {
    ((fp.0[1] >> 32) as usize % SHARDS, fp.0[0], fp.0[1] as u32)
}

impl OpenSet {
    pub fn len(&self) -> usize {
        self.shards.iter().map(HashTable::len).sum()
    }

    pub fn get(&self, fp: &Fp) -> Option<OpenHalf> {
        let (shard, k0, k1) = place(fp);
        self.shards[shard]
            .find(k0, |s| s.key0 == k0 && s.key1 == k1)
            .map(|s| OpenHalf {
                timestamp_ns: s.timestamp_ns,
                bits: s.bits,
                fare: s.fare,
            })
    }

    pub fn insert(&mut self, fp: Fp, half: OpenHalf) {
        let (shard, k0, k1) = place(&fp);
        let slot = Slot {
            key0: k0,
            timestamp_ns: half.timestamp_ns,
            bits: half.bits,
            key1: k1,
            fare: half.fare,
        };
        match self.shards[shard].entry(k0, |s| s.key0 == k0 && s.key1 == k1, |s| s.key0) {
            Entry::Occupied(mut e) => *e.get_mut() = slot,
            Entry::Vacant(e) => {
                e.insert(slot);
            }
        }
    }

    pub fn remove(&mut self, fp: &Fp) {
        let (shard, k0, k1) = place(fp);
        let table = &mut self.shards[shard];
        if let Ok(e) = table.find_entry(k0, |s| s.key0 == k0 && s.key1 == k1) {
            e.remove();
            // Give memory back as trips close: below half full, the table is rebuilt a quarter
            // larger than what it holds.
            if table.capacity() > 64 && table.len() * 2 < table.capacity() {
                table.shrink_to(table.len() + table.len() / 4, |s| s.key0);
            }
        }
    }

    fn mark(&mut self, fp: &Fp, flag: u64) {
        let (shard, k0, k1) = place(fp);
        if let Some(s) = self.shards[shard].find_mut(k0, |s| s.key0 == k0 && s.key1 == k1) {
            s.bits |= flag;
        }
    }

    /// Every open trip, with its fingerprint.
    pub fn iter(&self) -> impl Iterator<Item = (Fp, OpenHalf)> + '_ {
        self.shards.iter().enumerate().flat_map(|(shard, table)| {
            table.iter().map(move |s| {
                (
                    Fp([s.key0, ((shard as u64) << 32) | u64::from(s.key1)]),
                    OpenHalf {
                        timestamp_ns: s.timestamp_ns,
                        bits: s.bits,
                        fare: s.fare,
                    },
                )
            })
        })
    }
}

/// The in-memory index of a store.
#[derive(Default)]
pub(crate) struct Index {
    pub open: OpenSet,
    closed: ClosedSet,
}

impl Index {
    /// Trip numbers of closed trips that may be `fp` (check the trip record's fingerprint).
    pub fn closed_candidates(&self, fp: Fp) -> impl Iterator<Item = u64> + '_ {
        self.closed.candidates(fp.0[0])
    }

    pub fn add_closed(&mut self, fp: Fp, trip: u64) {
        self.closed.insert(fp.0[0], trip);
    }

    pub fn mark_orphaned(&mut self, fp: Fp) {
        self.open.mark(&fp, ORPHANED);
    }

    /// Builds the index of `events` and `trips`, starting from the snapshot in `dir` if it is the
    /// one the store recorded (`snapshot`: the log ends it was taken at).
    pub fn load(
        dir: &Path,
        fingerprints: Fingerprinter,
        events: &EventLog,
        trips: &TripLog,
        snapshot: Option<(u64, u64)>,
    ) -> Result<Index, Error> {
        let mut index = Index::default();
        let (mut events_from, mut trips_from) = (0, 0);
        if let Some((e, t)) = snapshot
            && let Some(open) = read_snapshot(&dir.join(SNAPSHOT), e, t)?
        {
            index.open = open;
            (events_from, trips_from) = (e, t);
        }
        // The closed trips: those `closed.snap` holds, mapped, then the rest up to the
        // snapshot's end from `trips.log`.
        if let Some(closed) = ClosedSet::open(dir, trips, trips_from)? {
            index.closed = closed;
        }
        trips.scan(index.closed.merged()..trips_from, |n, t| {
            index.add_closed(Fp(t.fp), n);
            Ok(())
        })?;
        // The logs after the snapshot, merged in the order they were written: trips.log is in
        // the order of the events that closed them, so an event either opens a trip or is the
        // closing event of the next trip. The open set never holds more than it did then.
        let mut closing = trips.reader(trips_from)?;
        let mut next = closing.next()?;
        events.scan(events_from, |pos, e| {
            while let Some((n, t)) = next.filter(|(_, t)| t.closed_at() <= pos) {
                let fp = Fp(t.fp);
                index.open.remove(&fp);
                index.add_closed(fp, n);
                next = closing.next()?;
                if t.closed_at() == pos {
                    return Ok(());
                }
            }
            let half = OpenHalf::new(
                e.kind,
                e.timestamp_ns,
                e.fare_cents,
                !e.extras.is_empty(),
                pos,
            );
            index.open.insert(fingerprints.of(&e.trip_id), half);
            Ok(())
        })?;
        if let Some((n, _)) = next {
            return Err(Error::Damaged(format!(
                "trips.log's trip {n} was closed by an event events.log does not hold; replay \
                 the inputs into a new --state directory"
            )));
        }
        Ok(index)
    }

    /// Saves the closed trips to `closed.snap` in `dir`, unless it holds them already.
    pub fn save_closed(&mut self, dir: &Path, trips: &TripLog) -> Result<(), Error> {
        self.closed.save(dir, trips)
    }

    /// Saves the open trips (without orphan marks, which the store keeps) as the snapshot of
    /// log ends `(events, trips)`: written beside, synced, then renamed over the old one.
    pub fn save_snapshot(&self, dir: &Path, events: u64, trips: u64) -> Result<(), Error> {
        let tmp = dir.join("open.snap.tmp");
        let what = || format!("writing {}", tmp.display());
        let file = std::fs::File::create(&tmp).io(what)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(SNAPSHOT_MAGIC).io(what)?;
        for n in [events, trips, self.open.len() as u64] {
            out.write_all(&n.to_le_bytes()).io(what)?;
        }
        for (fp, half) in self.open.iter() {
            let mut rec = [0u8; 32];
            rec[0..8].copy_from_slice(&fp.0[0].to_le_bytes());
            rec[8..16].copy_from_slice(&fp.0[1].to_le_bytes());
            rec[16..24].copy_from_slice(&half.timestamp_ns.to_le_bytes());
            rec[24..32].copy_from_slice(&(half.bits & !ORPHANED).to_le_bytes());
            out.write_all(&rec).io(what)?;
            out.write_all(&half.fare.to_le_bytes()).io(what)?;
        }
        let file = out.into_inner().map_err(|e| e.into_error()).io(what)?;
        file.sync_all().io(what)?;
        std::fs::rename(&tmp, dir.join(SNAPSHOT)).io(what)?;
        Ok(())
    }
}

/// The snapshot's file name.
pub(crate) const SNAPSHOT: &str = "open.snap";

const SNAPSHOT_MAGIC: &[u8; 8] = b"TFOPEN02";

/// The open trips of the snapshot at `path`, if it is the one taken at log ends
/// `(events, trips)`; `None` if it is missing or another one (then the logs are read whole).
fn read_snapshot(path: &Path, events: u64, trips: u64) -> Result<Option<OpenSet>, Error> {
    let what = || format!("reading {}", path.display());
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).io(what),
    };
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; 32];
    if input.read_exact(&mut header).is_err() || &header[..8] != SNAPSHOT_MAGIC {
        return Ok(None);
    }
    let word = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap());
    if (word(8), word(16)) != (events, trips) {
        return Ok(None);
    }
    let count = word(24) as usize;
    let mut open = OpenSet::default();
    let mut rec = [0u8; 36];
    for _ in 0..count {
        input.read_exact(&mut rec).io(what)?;
        let w = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().unwrap());
        open.insert(
            Fp([w(0), w(8)]),
            OpenHalf {
                timestamp_ns: w(16) as i64,
                bits: w(24),
                fare: i32::from_le_bytes(rec[32..36].try_into().unwrap()),
            },
        );
    }
    Ok(Some(open))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_keyed_and_stable() {
        let a = Fingerprinter::new([1, 2]);
        let b = Fingerprinter::new([1, 3]);
        assert_eq!(a.of("t1"), a.of("t1"));
        assert_ne!(a.of("t1"), a.of("t2"));
        assert_ne!(a.of("t1"), b.of("t1"));
        // The value is part of the on-disk format (trips.log, open.snap, orphan marks): it
        // must never change.
        assert_eq!(
            Fingerprinter::new([1, 2]).of("t1"),
            Fp([8863138833806753134, 283998379022])
        );
    }

    #[test]
    fn open_halves_pack_their_fields() {
        let h = OpenHalf::new(EventKind::End, -1, Some(0), true, POS);
        assert_eq!(h.kind(), EventKind::End);
        assert_eq!(h.fare_cents(), Some(0));
        assert!(h.complete_in_log() && !h.orphaned());
        let big = OpenHalf::new(EventKind::End, -1, Some(1 << 40), false, 3);
        assert!(big.complete_in_log());
        assert_eq!(h.pos(), POS);
        let h = OpenHalf::new(EventKind::Start, 5, None, false, 17);
        assert_eq!(
            (h.kind(), h.fare_cents(), h.pos()),
            (EventKind::Start, None, 17)
        );
    }

    #[test]
    fn closed_trips_sharing_a_low_word_are_all_candidates() {
        let mut index = Index::default();
        index.add_closed(Fp([7, 1]), 0);
        index.add_closed(Fp([7, 2]), 5);
        index.add_closed(Fp([8, 2]), 6);
        let mut c: Vec<u64> = index.closed_candidates(Fp([7, 9])).collect();
        c.sort();
        assert_eq!(c, [0, 5]);
        assert_eq!(index.closed_candidates(Fp([9, 9])).count(), 0);
    }
}
