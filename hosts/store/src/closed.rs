//! The closed trips of the index, and `closed.snap`, their saved form.
//!
//! A store's closed trips only grow, and each is looked up only when an event of it arrives
//! again (a late duplicate or a conflict). So a writer that reopens a large store must not pay
//! for reading them all: `closed.snap` holds the sorted array and its directory exactly as they
//! are in memory, and opening maps it read-only. A lookup then reads the pages it touches and no
//! others, and the trips closed after the file was written (at most a quarter of them, see
//! [`ClosedSet::save`]) are read from `trips.log`'s tail.

use std::hash::BuildHasherDefault;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::ptr::NonNull;

use crate::error::{Error, IoContext};
use crate::index::{Identity, Mapped};
use crate::log::TripLog;

/// A vector in [`Mapped`] memory.
type MappedVec<T> = allocator_api2::vec::Vec<T, Mapped>;

/// The file's name in the state directory.
pub(crate) const CLOSED_SNAPSHOT: &str = "closed.snap";

const MAGIC: &[u8; 8] = b"TFCLOS01";
/// Magic, trips covered, directory bits, the first key word of the last trip covered; then
/// zeros up to here, where the array starts (8-byte aligned in a page-aligned mapping).
const HEADER: usize = 64;

/// Closed trips: first fingerprint word → trip number. Most are in one sorted array of
/// `[key, trip]` pairs with a directory on the top bits of the key (a lookup reads one or two
/// cache lines of it); the newest in a small map, merged into the array when it reaches an
/// eighth of it. 16 bytes a trip, and growing never copies the array. The array holds trips
/// `0..n` exactly: trips are added in number order and a merge takes every recent one.
pub(crate) struct ClosedSet {
    /// Sorted by key; keys may repeat.
    sorted: MappedVec<[u64; 2]>,
    /// `sorted[dir[b]..dir[b + 1]]` holds the keys whose top `bits` bits are `b`.
    dir: MappedVec<u32>,
    bits: u32,
    /// The array and directory as `closed.snap` holds them, until the first merge copies them
    /// into `sorted` and `dir`.
    file: Option<FileArray>,
    /// Whether `closed.snap` holds the array as it is now.
    saved: bool,
    recent: hashbrown::HashMap<u64, u64, BuildHasherDefault<Identity>, Mapped>,
    /// Recent trips whose key another recent trip has.
    recent_shared: Vec<(u64, u64)>,
}

impl Default for ClosedSet {
    fn default() -> Self {
        ClosedSet {
            sorted: MappedVec::new_in(Mapped),
            dir: MappedVec::new_in(Mapped),
            bits: 0,
            file: None,
            saved: false,
            recent: hashbrown::HashMap::with_hasher_in(Default::default(), Mapped),
            recent_shared: Vec::new(),
        }
    }
}

impl ClosedSet {
    fn sorted(&self) -> &[[u64; 2]] {
        match &self.file {
            Some(f) => f.sorted(),
            None => &self.sorted,
        }
    }

    fn dir(&self) -> &[u32] {
        match &self.file {
            Some(f) => f.dir(),
            None => &self.dir,
        }
    }

    /// Trips in the sorted array: those numbered below this.
    pub fn merged(&self) -> u64 {
        self.sorted().len() as u64
    }

    /// Trip numbers that may be the closed trip of key `lo`.
    pub fn candidates(&self, lo: u64) -> impl Iterator<Item = u64> + '_ {
        let sorted = self.sorted();
        let range = if sorted.is_empty() {
            0..0
        } else {
            let dir = self.dir();
            let b = (lo >> (64 - self.bits)) as usize;
            dir[b] as usize..dir[b + 1] as usize
        };
        let sorted = sorted[range]
            .iter()
            .filter(move |[k, _]| *k == lo)
            .map(|[_, n]| *n);
        self.recent
            .get(&lo)
            .copied()
            .into_iter()
            .chain(sorted)
            .chain(
                self.recent_shared
                    .iter()
                    .filter(move |(k, _)| *k == lo)
                    .map(|(_, n)| *n),
            )
    }

    /// Adds trip number `trip` (the next one: trips are added in number order).
    pub fn insert(&mut self, lo: u64, trip: u64) {
        match self.recent.get(&lo) {
            Some(&other) if other != trip => self.recent_shared.push((lo, trip)),
            Some(_) => {}
            None => {
                self.recent.insert(lo, trip);
            }
        }
        if self.recent.len() + self.recent_shared.len() > (self.sorted().len() / 8).max(1 << 16) {
            self.merge();
        }
    }

    /// Moves the recent trips into the sorted array: sorted among themselves, then merged in
    /// place from the back (the array grows by their number, nothing more). An array still
    /// mapped from `closed.snap` is copied into memory first.
    fn merge(&mut self) {
        let mut add =
            MappedVec::with_capacity_in(self.recent.len() + self.recent_shared.len(), Mapped);
        add.extend(self.recent.drain().map(|(k, n)| [k, n]));
        add.extend(self.recent_shared.drain(..).map(|(k, n)| [k, n]));
        add.sort_unstable();
        self.recent.shrink_to(1 << 16);
        if let Some(file) = self.file.take() {
            self.sorted = MappedVec::with_capacity_in(file.sorted().len() + add.len(), Mapped);
            self.sorted.extend_from_slice(file.sorted());
        }
        self.saved = false;
        let old = self.sorted.len();
        self.sorted.reserve_exact(add.len());
        self.sorted.resize(old + add.len(), [0, 0]);
        let (mut i, mut j, mut k) = (old, add.len(), old + add.len());
        while j > 0 {
            k -= 1;
            if i > 0 && self.sorted[i - 1] > add[j - 1] {
                i -= 1;
                self.sorted[k] = self.sorted[i];
            } else {
                j -= 1;
                self.sorted[k] = add[j];
            }
        }
        // About four keys a directory entry.
        self.bits = (usize::BITS - self.sorted.len().leading_zeros())
            .saturating_sub(2)
            .clamp(1, 24);
        let buckets = 1usize << self.bits;
        self.dir.clear();
        self.dir.reserve_exact(buckets + 1);
        let mut at = 0usize;
        for b in 0..buckets {
            while at < self.sorted.len() && ((self.sorted[at][0] >> (64 - self.bits)) as usize) < b
            {
                at += 1;
            }
            self.dir.push(at as u32);
        }
        self.dir.push(self.sorted.len() as u32);
    }

    /// Writes the sorted array to `closed.snap` in `dir` (beside, synced, then renamed over),
    /// unless the file already holds it. `trips` is the log the array's trips are in.
    ///
    /// The recent trips are merged first when they are more than a quarter of the array, so the
    /// next writer reads at most that much of `trips.log`'s tail (about 20 ms for a million
    /// trips, measured), and a store that grows by 3% a day rewrites the file (16 bytes a trip,
    /// synced) about once a week rather than every day.
    pub fn save(&mut self, dir: &Path, trips: &TripLog) -> Result<(), Error> {
        if self.recent.len() + self.recent_shared.len() > (self.sorted().len() / 4).max(1 << 12) {
            self.merge();
        }
        let n = self.sorted().len() as u64;
        if self.saved || n == 0 {
            return Ok(());
        }
        let last_key = trips.read(n - 1)?.fp[0];
        let tmp = dir.join("closed.snap.tmp");
        let what = || format!("writing {}", tmp.display());
        let file = std::fs::File::create(&tmp).io(what)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        for (i, word) in [n, u64::from(self.bits), last_key].into_iter().enumerate() {
            header[8 + 8 * i..16 + 8 * i].copy_from_slice(&word.to_le_bytes());
        }
        out.write_all(&header).io(what)?;
        for [k, t] in self.sorted() {
            out.write_all(&k.to_le_bytes()).io(what)?;
            out.write_all(&t.to_le_bytes()).io(what)?;
        }
        for d in self.dir() {
            out.write_all(&d.to_le_bytes()).io(what)?;
        }
        let file = out.into_inner().map_err(|e| e.into_error()).io(what)?;
        file.sync_all().io(what)?;
        std::fs::rename(&tmp, dir.join(CLOSED_SNAPSHOT)).io(what)?;
        self.saved = true;
        Ok(())
    }

    /// The set saved in `dir`'s `closed.snap`, mapped, if the file is whole and belongs to
    /// `trips` and covers no more than `most` trips; `None` otherwise (the caller then reads
    /// `trips.log`). The file checks itself against the log: its length against the trip
    /// count it names, and its last trip's key against that trip's record.
    pub fn open(dir: &Path, trips: &TripLog, most: u64) -> Result<Option<ClosedSet>, Error> {
        if cfg!(target_endian = "big") {
            return Ok(None);
        }
        let path = dir.join(CLOSED_SNAPSHOT);
        let Some(file) = FileArray::map(&path)? else {
            return Ok(None);
        };
        let n = file.sorted().len() as u64;
        if n == 0 || n > most || n > trips.count() || trips.read(n - 1)?.fp[0] != file.last_key {
            return Ok(None);
        }
        Ok(Some(ClosedSet {
            bits: file.bits,
            file: Some(file),
            saved: true,
            ..ClosedSet::default()
        }))
    }
}

/// `closed.snap` mapped read-only. The file is never written in place (a new one is renamed
/// over it), so the mapping sees the same bytes for as long as it lives.
struct FileArray {
    base: NonNull<u8>,
    len: usize,
    entries: usize,
    bits: u32,
    last_key: u64,
}

// SAFETY: the mapping is read-only and owned by this value alone.
unsafe impl Send for FileArray {}
// SAFETY: as above; shared references only read.
unsafe impl Sync for FileArray {}

impl FileArray {
    /// Maps `path`; `None` if it is missing, or not a whole `closed.snap`.
    fn map(path: &Path) -> Result<Option<FileArray>, Error> {
        let what = || format!("reading {}", path.display());
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).io(what),
        };
        let len = file.metadata().io(what)?.len() as usize;
        if len < HEADER {
            return Ok(None);
        }
        // SAFETY: a private read-only mapping of an open file's `len` bytes, no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).io(what);
        }
        let base = NonNull::new(p.cast::<u8>()).expect("mmap succeeded");
        // SAFETY: the mapping is `len >= HEADER` bytes.
        let header = unsafe { std::slice::from_raw_parts(base.as_ptr(), HEADER) };
        let word = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap());
        let (entries, bits, last_key) = (word(8) as usize, word(16), word(24));
        let mut mapped = FileArray {
            base,
            len,
            entries: 0,
            bits: bits as u32,
            last_key,
        };
        let whole = &header[..8] == MAGIC
            && (1..=24).contains(&bits)
            && entries
                .checked_mul(16)
                .and_then(|a| a.checked_add(HEADER + 4 * ((1 << bits) + 1)))
                == Some(len);
        if !whole {
            return Ok(None);
        }
        mapped.entries = entries;
        Ok(Some(mapped))
    }

    fn sorted(&self) -> &[[u64; 2]] {
        // SAFETY: `map` checked that the file holds `entries` pairs after the header; the
        // mapping is page-aligned, so they are 8-byte aligned; the target is little-endian.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(HEADER).cast::<[u64; 2]>(),
                self.entries,
            )
        }
    }

    fn dir(&self) -> &[u32] {
        // SAFETY: `map` checked that the directory's `2^bits + 1` entries end the file; they
        // start 4-byte aligned (the header and pairs are multiples of 8 bytes).
        unsafe {
            std::slice::from_raw_parts(
                self.base
                    .as_ptr()
                    .add(HEADER + 16 * self.entries)
                    .cast::<u32>(),
                (1 << self.bits) + 1,
            )
        }
    }
}

impl Drop for FileArray {
    fn drop(&mut self) {
        // SAFETY: mapped by `map` with this length; the slices borrowed from it are gone.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closed_set_finds_every_trip_across_merges() {
        let mut set = ClosedSet::default();
        let key = |n: u64| n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let n = 300_000u64;
        for t in 0..n {
            set.insert(key(t), t);
        }
        // Several merges happened, and some trips are still recent.
        assert!(set.sorted().len() > 200_000 && !set.recent.is_empty());
        assert!(set.sorted().windows(2).all(|w| w[0] <= w[1]));
        for t in (0..n).step_by(7) {
            assert_eq!(set.candidates(key(t)).collect::<Vec<_>>(), [t]);
        }
        assert_eq!(set.candidates(key(n)).count(), 0);
        // A key shared by two trips (the same low word) gives both.
        set.insert(key(3), n);
        let mut both: Vec<u64> = set.candidates(key(3)).collect();
        both.sort();
        assert_eq!(both, [3, n]);
    }

    /// A trips log of `n` trips whose first key word is `key(trip)`.
    fn trips_log(dir: &Path, n: u64, key: impl Fn(u64) -> u64) -> TripLog {
        use crate::log::{Log, TripRecord};
        use tripflow_runtime::core::TripStatus;
        let mut log = TripLog(Log::open(dir, "trips.log", 0).unwrap());
        for t in 0..n {
            log.append(&TripRecord {
                fp: [key(t), 0],
                status: TripStatus::Completed,
                start_ns: 0,
                end_ns: 0,
                fare_cents: Some(1),
                start_pos: t,
                end_pos: t,
            });
        }
        log.0.write_pending().unwrap();
        log
    }

    #[test]
    fn a_saved_set_maps_back_and_keeps_growing() {
        let dir = tempfile::tempdir().unwrap();
        let key = |n: u64| n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let n = 200_000u64;
        let trips = trips_log(dir.path(), n, key);
        let mut set = ClosedSet::default();
        for t in 0..n {
            set.insert(key(t), t);
        }
        let merged = set.merged();
        assert!(merged > 0 && merged < n, "some trips merged, some recent");
        set.save(dir.path(), &trips).unwrap();

        let mut back = ClosedSet::open(dir.path(), &trips, n)
            .unwrap()
            .expect("whole");
        assert!(back.file.is_some() && back.merged() == merged);
        for t in merged..n {
            back.insert(key(t), t);
        }
        for t in (0..n).step_by(3) {
            assert_eq!(back.candidates(key(t)).collect::<Vec<_>>(), [t]);
        }
        // Saving an unchanged mapped array writes nothing; a merge copies it out of the file.
        back.save(dir.path(), &trips).unwrap();
        back.merge();
        assert!(back.file.is_none() && back.merged() == n && !back.saved);
        for t in (1..n).step_by(5) {
            assert_eq!(back.candidates(key(t)).collect::<Vec<_>>(), [t]);
        }
    }

    #[test]
    fn a_file_that_is_not_this_logs_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let key = |n: u64| n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let trips = trips_log(dir.path(), 70_000, key);
        let mut set = ClosedSet::default();
        for t in 0..70_000 {
            set.insert(key(t), t);
        }
        set.save(dir.path(), &trips).unwrap();
        let covered = set.merged();
        assert!(
            ClosedSet::open(dir.path(), &trips, covered)
                .unwrap()
                .is_some()
        );
        // It covers more trips than the caller's snapshot: the logs decide.
        assert!(
            ClosedSet::open(dir.path(), &trips, covered - 1)
                .unwrap()
                .is_none()
        );
        // Another store's log (other keys).
        let other = tempfile::tempdir().unwrap();
        let their = trips_log(other.path(), 70_000, |n| n);
        std::fs::copy(
            dir.path().join(CLOSED_SNAPSHOT),
            other.path().join(CLOSED_SNAPSHOT),
        )
        .unwrap();
        assert!(
            ClosedSet::open(other.path(), &their, 70_000)
                .unwrap()
                .is_none()
        );
        // Cut short, or not one at all.
        let path = dir.path().join(CLOSED_SNAPSHOT);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(
            ClosedSet::open(dir.path(), &trips, covered)
                .unwrap()
                .is_none()
        );
        std::fs::write(&path, b"TFOPEN02").unwrap();
        assert!(
            ClosedSet::open(dir.path(), &trips, covered)
                .unwrap()
                .is_none()
        );
        std::fs::remove_file(&path).unwrap();
        assert!(
            ClosedSet::open(dir.path(), &trips, covered)
                .unwrap()
                .is_none()
        );
    }
}
