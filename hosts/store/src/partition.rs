//! A replay cut into the stages a distributed engine runs: the worker side of the Spark host.
//!
//! The Spark job (`hosts/spark`) splits the input as Spark splits work and runs the `tripflow`
//! binary on each piece (`tripflow partition …`); Spark moves the bytes between the stages,
//! shuffles and retries. Every decision is still the core's, and the result is the replay's:
//!
//! 1. **parse** ([`parse_split`]): the lines of one split of one input (a byte range of a plain
//!    file, or a whole gzip file) are parsed by the core in batches, exactly as the replay reads
//!    and parses them (same line reader, same record-size limit, same isolation of records the
//!    core fails on). Rejected records leave as quarantine lines; accepted events leave in one
//!    [`Frame::Events`] per bucket of trip ids, so that every event of a trip meets in one
//!    bucket.
//! 2. **resolve** ([`resolve_bucket`]): a bucket's events, sorted by trip and then by input
//!    position (input index, line), go to `matching.resolve` in batches that hold whole trips.
//!    Since the core decides each trip from its own events in order, that is the decision the
//!    replay makes when it meets the same events one batch at a time. Closed trips are
//!    accumulated into KPI day totals by the core; open trips are kept for the sweep.
//! 3. **sweep** ([`sweep_open`]): with the newest event time of the whole input, the core picks
//!    the orphans among each bucket's open trips, as `tripflow sweep` does after a replay.
//! 4. **finish** ([`finish`]): the buckets' day totals are merged by the core (`kpi.merge`),
//!    finished and rendered; the tallies add up to the replay's [`Summary`].
//!
//! Input positions are global: a split is told how many lines of its input come before it (the
//! host counts them in a first pass), so quarantine lines carry the replay's line numbers and
//! "first copy" means first in the order the inputs were given.
//!
//! Between stages everything travels as [`Frame`]s: a tag, a bucket and a length-prefixed
//! payload. The host never looks inside a payload; it only routes frames by their bucket.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};
use tripflow_runtime::core::batch::{BatchResolution, TripIds};
use tripflow_runtime::core::report::{
    Accounting, Provenance, RejectExample, RejectGroup, ReportRequest,
};
use tripflow_runtime::core::{
    Clock, DayKpi, DayTotals, EventKind, ParseOutcome, Span, TripFare, TripStatus,
};
use tripflow_runtime::fate::{self, Fate, FirstCopy, Line, Lines};
use tripflow_runtime::{CoreError, CoreProvider, TripCore, parse_isolating};

use crate::db::StoreTotals;
use crate::error::{Error, IoContext};
use crate::input::{Batch, LineReader};
use crate::quarantine::{QuarantineRecord, RawBytes};
use crate::replay::{ReplayOptions, Summary};
use crate::report::{EXAMPLES_PER_REASON, shown};

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    /// Accepted events of one bucket, LZ4-compressed (parse → resolve): the bulk of what Spark
    /// shuffles, and JSON events shrink about fourfold, so the boundary moves a quarter of it.
    Events = 1,
    /// Quarantine lines, each with its input position (parse, resolve → the quarantine file).
    Rejects = 2,
    /// A [`Tally`] as JSON (parse, resolve → finish).
    Tally = 3,
    /// KPI day totals as JSON (resolve → finish).
    Totals = 4,
    /// Open trips (resolve → sweep).
    Open = 5,
    /// A sweep's result as JSON (sweep → finish).
    Swept = 6,
    /// The inputs' names as a JSON list (host → resolve), for quarantine lines.
    Names = 7,
}

impl Tag {
    fn from_u8(b: u8) -> Option<Tag> {
        Some(match b {
            1 => Tag::Events,
            2 => Tag::Rejects,
            3 => Tag::Tally,
            4 => Tag::Totals,
            5 => Tag::Open,
            6 => Tag::Swept,
            7 => Tag::Names,
            _ => return None,
        })
    }
}

/// One unit of data between stages: `tag: u8, bucket: u32 LE, len: u64 LE, payload`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub tag: Tag,
    /// The bucket (shuffle partition) the frame goes to.
    pub bucket: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Writes the frame.
    pub fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&[self.tag as u8])?;
        out.write_all(&self.bucket.to_le_bytes())?;
        out.write_all(&(self.payload.len() as u64).to_le_bytes())?;
        out.write_all(&self.payload)
    }

    /// Reads the next frame; `None` at a clean end of the stream.
    pub fn read_from(input: &mut dyn Read) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 13];
        let mut got = 0;
        while got < head.len() {
            match input.read(&mut head[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(bad_frame("the stream ends inside a frame header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let tag = Tag::from_u8(head[0])
            .ok_or_else(|| bad_frame(&format!("unknown frame tag {}", head[0])))?;
        let bucket = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(head[5..13].try_into().expect("8 bytes"));
        let mut payload = Vec::new();
        input.take(len).read_to_end(&mut payload)?;
        if payload.len() as u64 != len {
            return Err(bad_frame("the stream ends inside a frame"));
        }
        Ok(Some(Frame {
            tag,
            bucket,
            payload,
        }))
    }
}

fn bad_frame(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what}: the input is not a stream of tripflow partition frames"),
    )
}

/// Reads every frame of `input`.
pub fn read_frames(input: &mut dyn Read) -> Result<Vec<Frame>, Error> {
    let mut frames = Vec::new();
    while let Some(f) = Frame::read_from(input).io(|| "reading partition frames".to_owned())? {
        frames.push(f);
    }
    Ok(frames)
}

/// The bucket of a trip id among `buckets`: FNV-1a over its bytes, the same on every machine.
/// Which bucket a trip lands in decides nothing; that all of its events land in the same one
/// is what matters.
pub fn bucket_of(trip_id: &str, buckets: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in trip_id.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(buckets.max(1))) as u32
}

/// Counts of a stage, added up by [`finish`] into the replay's [`Summary`]: the replay's
/// counts (its `store` stays empty), the trips left open and the newest event time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Records read, stored, duplicates, skewed, rejected by reason, trips closed.
    #[serde(flatten)]
    pub counts: Summary,
    /// Trips left with one half.
    pub open: u64,
    /// The newest event time that may move the watermark.
    pub newest_ns: Option<i64>,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.counts.add(&o.counts);
        for (code, n) in &o.counts.rejected {
            *self.counts.rejected.entry(code.clone()).or_default() += n;
        }
        self.open += o.open;
        self.newest_ns = self.newest_ns.max(o.newest_ns);
    }

    fn reject(&mut self, code: &str) {
        self.counts.records += 1;
        *self.counts.rejected.entry(code.to_owned()).or_default() += 1;
    }

    fn frame(&self, bucket: u32) -> Frame {
        Frame {
            tag: Tag::Tally,
            bucket,
            payload: serde_json::to_vec(self).expect("a tally serialises"),
        }
    }
}

/// One split of one input.
#[derive(Clone, Debug)]
pub struct Split {
    /// The input's index in the order the inputs were given.
    pub input: u32,
    /// The input's name (in quarantine lines).
    pub name: String,
    /// The split's first byte: it holds the lines that start in `start..end`.
    pub start: u64,
    /// The byte after its last (`None`: to the end of the input).
    pub end: Option<u64>,
    /// Line feeds in the input before `start` (the host counts them in a first pass).
    pub newlines_before: u64,
    /// Buckets to spread the trips over.
    pub buckets: u32,
    /// The bucket that receives the split's rejects and counts.
    pub home: u32,
}

/// Flush buffered events once this many bytes wait, so a split's memory stays bounded.
const FLUSH_BYTES: usize = 16 << 20;

/// Parses one split. `reader` yields the input from byte `start - 1` on (from byte 0 when
/// `start` is 0): the byte before the split tells whether the split starts at a line start.
/// Writes [`Frame::Events`] per bucket, then the split's rejects and its [`Tally`].
pub fn parse_split<P: CoreProvider>(
    provider: &P,
    split: &Split,
    mut reader: Box<dyn BufRead + Send>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let max_record_bytes = provider.session()?.max_record_bytes()?;
    let name = &split.name;
    let mut line = split.newlines_before;
    let mut skipped_bytes = 0u64;
    if split.start > 0 {
        let mut before = [0u8; 1];
        reader
            .read_exact(&mut before)
            .io(|| format!("reading {name} at byte {}", split.start - 1))?;
        if before[0] != b'\n' {
            // The split starts inside a line: that line belongs to the split before.
            let mut rest = Vec::new();
            skipped_bytes = reader
                .read_until(b'\n', &mut rest)
                .io(|| format!("reading {name}"))? as u64;
            if rest.last() == Some(&b'\n') {
                line += 1;
            }
        }
    }
    let first = split.start + skipped_bytes;
    let bounded: Box<dyn BufRead + Send> = match split.end {
        Some(end) if first >= end => return finish_split(split, &[], &Tally::default(), out),
        Some(end) => Box::new(UntilLineAt {
            inner: reader,
            pos: first,
            end,
            at_line_start: true,
        }),
        None => reader,
    };
    let mut lines = LineReader::starting_after(bounded, max_record_bytes, line);
    let opts = ReplayOptions::default();
    let mut batch = Batch::default();
    let mut tally = Tally::default();
    let mut rejects: Vec<u8> = Vec::new();
    let mut buckets: Vec<Vec<u8>> = vec![Vec::new(); split.buckets.max(1) as usize];
    let mut buffered = 0usize;
    let mut session = None;
    while lines
        .fill(&mut batch, opts.batch_lines, opts.batch_bytes)
        .io(|| format!("reading {name}"))?
    {
        let Outcomes {
            lines: outcomes,
            trip_ids,
        } = parse(provider, &mut session, &batch)?;
        let mut accepted = 0;
        for (i, outcome) in outcomes.lines.into_iter().enumerate() {
            let (reason, detail) = match outcome {
                Line::Blank => {
                    tally.counts.blank_lines += 1;
                    continue;
                }
                Line::Accepted => {
                    tally.counts.records += 1;
                    let trip_id = trip_ids.get(accepted);
                    accepted += 1;
                    let b = &mut buckets[bucket_of(trip_id, split.buckets) as usize];
                    let before = b.len();
                    encode(b, split.input, batch.lines[i], trip_id, batch.raw(i));
                    buffered += b.len() - before;
                    continue;
                }
                Line::Rejected { reason, detail } => (reason, detail),
            };
            tally.reject(reason.as_str());
            let record = QuarantineRecord {
                source: name.clone(),
                line: batch.lines[i],
                reason: reason.as_str().to_owned(),
                detail,
                raw: RawBytes(batch.raw(i).to_vec()),
                first_copy: None,
            };
            push_reject(&mut rejects, split.input, &record);
        }
        if buffered >= FLUSH_BYTES {
            flush_buckets(&mut buckets, out).io(|| "writing events".to_owned())?;
            buffered = 0;
        }
    }
    flush_buckets(&mut buckets, out).io(|| "writing events".to_owned())?;
    finish_split(split, &rejects, &tally, out)
}

/// The outcome of each line of a batch and the trip ids of the accepted ones.
struct Outcomes {
    lines: Lines,
    trip_ids: TripIds,
}

/// Parses a batch in the worker's instance of the core, through the flat batch resource (no
/// string per event crosses the boundary); when the core fails on the batch, record by record
/// in fresh instances (as the replay does), so only the records it fails on become
/// `core_failure`.
fn parse<P: CoreProvider>(
    provider: &P,
    session: &mut Option<P::Session>,
    batch: &Batch,
) -> Result<Outcomes, Error> {
    let core = match session {
        Some(core) => core,
        None => session.insert(provider.session()?),
    };
    let clock = Clock {
        arrival_ns: 0,
        max_skew_ns: 0,
    };
    if let Ok((parsed, _)) =
        core.parse_resolve::<CoreError>(&batch.buf, &batch.spans, clock, |_| Ok(Vec::new()))
        && let Some(lines) = Lines::from_skipped(batch.spans.len(), parsed.skipped)
        && lines.accepted.len() == parsed.trip_ids.len()
    {
        return Ok(Outcomes {
            lines,
            trip_ids: parsed.trip_ids,
        });
    }
    *session = None;
    let (lines, events) = Lines::from_parsed(parse_isolating(provider, &batch.buf, &batch.spans)?);
    Ok(Outcomes {
        lines,
        trip_ids: events.iter().map(|e| e.trip_id.as_str()).collect(),
    })
}

fn flush_buckets(buckets: &mut [Vec<u8>], out: &mut dyn Write) -> io::Result<()> {
    for (b, events) in buckets.iter_mut().enumerate() {
        if events.is_empty() {
            continue;
        }
        Frame {
            tag: Tag::Events,
            bucket: b as u32,
            payload: lz4_flex::compress_prepend_size(events),
        }
        .write_to(out)?;
        events.clear();
    }
    Ok(())
}

fn finish_split(
    split: &Split,
    rejects: &[u8],
    tally: &Tally,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let home = split.home;
    if !rejects.is_empty() {
        Frame {
            tag: Tag::Rejects,
            bucket: home,
            payload: rejects.to_vec(),
        }
        .write_to(out)
        .io(|| "writing rejects".to_owned())?;
    }
    tally
        .frame(home)
        .write_to(out)
        .io(|| "writing the tally".to_owned())?;
    out.flush().io(|| "writing frames".to_owned())
}

/// A reader that ends after the last line starting before `end` (the line itself is read to
/// its end, past `end` if need be), as a split of a file is read.
struct UntilLineAt {
    inner: Box<dyn BufRead + Send>,
    pos: u64,
    end: u64,
    at_line_start: bool,
}

impl Read for UntilLineAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = {
            let available = self.fill_buf()?;
            let n = available.len().min(buf.len());
            buf[..n].copy_from_slice(&available[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for UntilLineAt {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.at_line_start && self.pos >= self.end {
            return Ok(&[]);
        }
        let available = self.inner.fill_buf()?;
        // The last line of the split is the one that starts before `end`: it ends at the first
        // line feed at or after `end - 1`. Hand out nothing past it, whoever reads.
        let from = (self.end - 1).saturating_sub(self.pos);
        let Ok(from) = usize::try_from(from) else {
            return Ok(available);
        };
        if from >= available.len() {
            return Ok(available);
        }
        let cut = available[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(available.len(), |i| from + i + 1);
        Ok(&available[..cut])
    }

    fn consume(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let last = self.inner.fill_buf().map(|b| b.get(n - 1).copied());
        self.at_line_start = matches!(last, Ok(Some(b'\n')));
        self.pos += n as u64;
        self.inner.consume(n);
    }
}

/// An accepted event on its way to its bucket: its position, its trip id and its bytes (the
/// resolve stage parses them again in the guest, through the flat batch resource, rather than
/// lowering a parsed event with its strings into the guest).
fn encode(out: &mut Vec<u8>, input: u32, line: u64, trip_id: &str, raw: &[u8]) {
    out.extend_from_slice(&input.to_le_bytes());
    out.extend_from_slice(&line.to_le_bytes());
    for bytes in [trip_id.as_bytes(), raw] {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
}

/// An event in its bucket: its position, and where its trip id and bytes are in the bucket's
/// decompressed frames.
#[derive(Clone, Copy)]
struct Entry {
    input: u32,
    line: u64,
    frame: u32,
    id: (u32, u32),
    raw: (u32, u32),
}

/// The decompressed frames of a bucket and the events in them.
#[derive(Default)]
struct Bucket {
    frames: Vec<Vec<u8>>,
    entries: Vec<Entry>,
}

impl Bucket {
    fn id(&self, e: &Entry) -> &[u8] {
        &self.frames[e.frame as usize][e.id.0 as usize..(e.id.0 + e.id.1) as usize]
    }

    fn raw(&self, e: &Entry) -> &[u8] {
        &self.frames[e.frame as usize][e.raw.0 as usize..(e.raw.0 + e.raw.1) as usize]
    }

    fn add(&mut self, compressed: &[u8]) -> Result<(), Error> {
        let payload = lz4_flex::decompress_size_prepended(compressed).map_err(|e| {
            Error::Damaged(format!(
                "a frame of events does not decompress ({e}): it was cut or mixed up"
            ))
        })?;
        let frame = self.frames.len() as u32;
        let mut c = Cursor(&payload);
        while !c.0.is_empty() {
            let input = c.u32()?;
            let line = c.u64()?;
            let id_len = c.u32()?;
            let id_at = (payload.len() - c.0.len()) as u32;
            c.take(id_len as usize)?;
            let raw_len = c.u32()?;
            let raw_at = (payload.len() - c.0.len()) as u32;
            c.take(raw_len as usize)?;
            self.entries.push(Entry {
                input,
                line,
                frame,
                id: (id_at, id_len),
                raw: (raw_at, raw_len),
            });
        }
        self.frames.push(payload);
        Ok(())
    }
}

/// A cursor over a payload that fails cleanly on a short one.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Damaged(
                "a partition frame's payload ends early: the frames were cut or mixed up"
                    .to_owned(),
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn i64(&mut self) -> Result<i64, Error> {
        Ok(self.u64()? as i64)
    }
    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, Error> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| {
            Error::Damaged("a partition frame holds a string that is not UTF-8".into())
        })
    }
}

/// Appends a quarantine line with its position: `input: u32, line: u64, len: u32, line bytes`.
fn push_reject(out: &mut Vec<u8>, input: u32, r: &QuarantineRecord) {
    let text = r.to_line();
    out.extend_from_slice(&input.to_le_bytes());
    out.extend_from_slice(&r.line.to_le_bytes());
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Events handed to `matching.resolve` per call (whole trips: a call may hold more when one
/// trip has more copies).
const RESOLVE_BATCH: usize = 8_192;
/// Closed trips handed to `kpi.accumulate` per call.
const ACCUMULATE_CHUNK: usize = 65_536;

/// Resolves one bucket: reads its frames (the inputs' names, its events, and the rejects and
/// tallies of the splits whose home it is) and writes its rejects, its day totals in `zone`,
/// its open trips and its [`Tally`].
pub fn resolve_bucket<P: CoreProvider>(
    provider: &P,
    zone: &str,
    clock: Clock,
    frames: Vec<Frame>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    provider.session()?.check_time_zone(zone)?;
    let Gathered {
        names,
        mut bucket,
        mut tally,
        number,
    } = gather(frames, out)?;
    // Whole trips, each in input order: the order the replay meets its events in.
    let mut entries = std::mem::take(&mut bucket.entries);
    entries.sort_unstable_by(|a, b| {
        (bucket.id(a), a.input, a.line).cmp(&(bucket.id(b), b.input, b.line))
    });
    let mut resolved = Resolved::default();
    let mut session = None;
    let mut buf = Vec::new();
    let mut spans = Vec::new();
    let mut start = 0;
    while start < entries.len() {
        let mut end = (start + RESOLVE_BATCH).min(entries.len());
        while end < entries.len() && bucket.id(&entries[end]) == bucket.id(&entries[end - 1]) {
            end += 1;
        }
        let batch = &entries[start..end];
        buf.clear();
        spans.clear();
        for e in batch {
            let raw = bucket.raw(e);
            spans.push(Span {
                offset: buf.len() as u32,
                len: raw.len() as u32,
            });
            buf.extend_from_slice(raw);
        }
        let r = resolve(provider, &mut session, &buf, &spans, clock)?;
        resolved.add(&bucket, batch, &names, &r, &mut tally)?;
        if resolved.fares.len() >= ACCUMULATE_CHUNK {
            resolved.accumulate(session_of(provider, &mut session)?, zone)?;
        }
        start = end;
    }
    if !resolved.fares.is_empty() {
        resolved.accumulate(session_of(provider, &mut session)?, zone)?;
    }
    resolved.write_to(number, &tally, out)
}

/// A bucket's frames, as the parse stage wrote them.
struct Gathered {
    /// The inputs' names.
    names: Vec<String>,
    bucket: Bucket,
    tally: Tally,
    /// The bucket's number.
    number: u32,
}

/// Reads a bucket's frames; the parse stage's rejects pass straight on to `out`.
fn gather(frames: Vec<Frame>, out: &mut dyn Write) -> Result<Gathered, Error> {
    let mut g = Gathered {
        names: Vec::new(),
        bucket: Bucket::default(),
        tally: Tally::default(),
        number: 0,
    };
    for f in frames {
        g.number = f.bucket;
        match f.tag {
            Tag::Names => {
                g.names = serde_json::from_slice(&f.payload)
                    .map_err(|e| Error::Damaged(format!("the inputs' names: {e}")))?;
            }
            Tag::Events => g.bucket.add(&f.payload)?,
            Tag::Tally => g.tally.add(&read_json::<Tally>(&f.payload, "a tally")?),
            Tag::Rejects => f.write_to(out).io(|| "writing rejects".to_owned())?,
            other => {
                return Err(Error::Damaged(format!(
                    "resolve got a {other:?} frame: it takes names, events, rejects and tallies"
                )));
            }
        }
    }
    Ok(g)
}

/// What a bucket's resolved batches add up to.
#[derive(Default)]
struct Resolved {
    /// Conflicting duplicates, as reject frames' payload.
    rejects: Vec<u8>,
    /// The open trips' stored halves, as an open frame's payload.
    open: Vec<u8>,
    totals: Vec<DayTotals>,
    /// Closed trips not yet accumulated into `totals`.
    fares: Vec<TripFare>,
}

impl Resolved {
    /// Adds one batch's resolution: each event's fate (`tripflow_runtime::fate`), the trips it
    /// closed and the halves it left open.
    fn add(
        &mut self,
        bucket: &Bucket,
        batch: &[Entry],
        names: &[String],
        r: &BatchResolution,
        tally: &mut Tally,
    ) -> Result<(), Error> {
        let fates = fate::fates(&Lines::accepted(batch.len()), &r.decisions())
            .ok_or_else(changed_its_mind)?;
        for (i, f) in fates.into_iter().enumerate() {
            match f {
                Fate::Stored { .. } => tally.counts.stored += 1,
                Fate::Duplicate { .. } => tally.counts.duplicates += 1,
                // Every record here was accepted in the parse stage (and counted there).
                Fate::Blank => return Err(changed_its_mind()),
                Fate::Rejected(rejection) => {
                    let e = &batch[i];
                    let first = match rejection.first {
                        Some(FirstCopy::Record(j)) => Some(bucket.raw(&batch[j]).to_vec()),
                        Some(FirstCopy::Stored(_)) | None => None,
                    };
                    let code = rejection.reason.as_str();
                    *tally.counts.rejected.entry(code.to_owned()).or_default() += 1;
                    let record = QuarantineRecord {
                        source: names.get(e.input as usize).cloned().unwrap_or_default(),
                        line: e.line,
                        reason: code.to_owned(),
                        detail: rejection.detail,
                        raw: RawBytes(bucket.raw(e).to_vec()),
                        first_copy: first.map(RawBytes),
                    };
                    push_reject(&mut self.rejects, e.input, &record);
                }
            }
        }
        for c in &r.closed {
            match c.status {
                TripStatus::Completed => tally.counts.completed += 1,
                TripStatus::Invalid => tally.counts.invalid += 1,
                TripStatus::NoFare => tally.counts.no_fare += 1,
            }
            self.fares.push(TripFare {
                status: c.status,
                start_ns: c.start_ns,
                fare_cents: c.fare_cents,
            });
        }
        // The open trips' stored halves, for the sweep (`new_events` and `opened` are both in
        // the order of the accepted events).
        let mut stored = r.new_events.iter().peekable();
        for &i in &r.opened {
            while stored.next_if(|n| n.incoming < i).is_some() {}
            let Some(half) = stored.next_if(|n| n.incoming == i) else {
                return Err(Error::Damaged(
                    "the core opened a trip with an event it did not store".to_owned(),
                ));
            };
            let id = bucket.id(&batch[i as usize]);
            self.open.push(u8::from(half.kind == EventKind::End));
            self.open
                .extend_from_slice(&half.timestamp_ns.to_le_bytes());
            self.open
                .extend_from_slice(&(id.len() as u32).to_le_bytes());
            self.open.extend_from_slice(id);
        }
        tally.open += r.opened.len() as u64;
        tally.counts.skewed += r.skewed.len() as u64;
        tally.newest_ns = tally.newest_ns.max(r.newest_ns);
        Ok(())
    }

    /// Adds the closed trips gathered so far to the day totals.
    fn accumulate<C: TripCore>(&mut self, core: &mut C, zone: &str) -> Result<(), Error> {
        self.totals = core.accumulate(zone, &self.totals, &self.fares)?;
        self.fares.clear();
        Ok(())
    }

    /// Writes the bucket's frames: rejects, day totals, open trips, the tally.
    fn write_to(self, number: u32, tally: &Tally, out: &mut dyn Write) -> Result<(), Error> {
        let io = |what: &str| format!("writing {what}");
        if !self.rejects.is_empty() {
            Frame {
                tag: Tag::Rejects,
                bucket: number,
                payload: self.rejects,
            }
            .write_to(out)
            .io(|| io("rejects"))?;
        }
        Frame {
            tag: Tag::Totals,
            bucket: number,
            payload: totals_json(&self.totals),
        }
        .write_to(out)
        .io(|| io("day totals"))?;
        if !self.open.is_empty() {
            Frame {
                tag: Tag::Open,
                bucket: number,
                payload: self.open,
            }
            .write_to(out)
            .io(|| io("open trips"))?;
        }
        tally.frame(number).write_to(out).io(|| io("the tally"))?;
        out.flush().io(|| io("frames"))
    }
}

fn session_of<'s, P: CoreProvider>(
    provider: &P,
    session: &'s mut Option<P::Session>,
) -> Result<&'s mut P::Session, Error> {
    Ok(match session {
        Some(core) => core,
        None => session.insert(provider.session()?),
    })
}

/// Resolves whole trips, every copy of them in input order, in one guest (`batches.batch`:
/// parse and resolve, nothing stored before them); if the core fails on the batch, as
/// `events.parse` then `matching.resolve`, which decide the same. Each record was accepted by
/// the parse stage, so each must be accepted again.
fn resolve<P: CoreProvider>(
    provider: &P,
    session: &mut Option<P::Session>,
    buf: &[u8],
    spans: &[Span],
    clock: Clock,
) -> Result<BatchResolution, Error> {
    let core = session_of(provider, session)?;
    let in_guest = core.parse_resolve::<CoreError>(buf, spans, clock, |_| Ok(Vec::new()));
    if let Ok((parsed, r)) = in_guest {
        if parsed.skipped.is_empty() && parsed.trip_ids.len() == spans.len() {
            return Ok(r);
        }
        return Err(changed_its_mind());
    }
    *session = None;
    let mut events = Vec::with_capacity(spans.len());
    for outcome in provider.session()?.parse(buf, spans)? {
        match outcome {
            ParseOutcome::Accepted(e) => events.push(e),
            _ => return Err(changed_its_mind()),
        }
    }
    let r = provider.session()?.resolve(&events, &[], clock)?;
    Ok(BatchResolution::from_resolution(r, &events))
}

fn changed_its_mind() -> Error {
    Error::Damaged(
        "the core rejects at resolve a record it accepted at parse: the stages ran different \
         components; run every stage with the same one"
            .to_owned(),
    )
}

fn read_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Damaged(format!("{what}: {e}")))
}

/// [`DayTotals`] as it travels between stages.
#[derive(Serialize, Deserialize)]
struct TotalsRow {
    date: String,
    trip_count: u64,
    total_cents: i64,
    min_cents: i64,
    max_cents: i64,
}

fn totals_json(totals: &[DayTotals]) -> Vec<u8> {
    let rows: Vec<TotalsRow> = totals
        .iter()
        .map(|t| TotalsRow {
            date: t.date.clone(),
            trip_count: t.trip_count,
            total_cents: t.total_cents,
            min_cents: t.min_cents,
            max_cents: t.max_cents,
        })
        .collect();
    serde_json::to_vec(&rows).expect("totals serialise")
}

fn totals_from_json(bytes: &[u8]) -> Result<Vec<DayTotals>, Error> {
    let rows: Vec<TotalsRow> = read_json(bytes, "day totals")?;
    Ok(rows
        .into_iter()
        .map(|r| DayTotals {
            date: r.date,
            trip_count: r.trip_count,
            total_cents: r.total_cents,
            min_cents: r.min_cents,
            max_cents: r.max_cents,
        })
        .collect())
}

/// A sweep of some buckets' open trips.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Swept {
    /// Orphans: trip id, the half it has, that half's timestamp.
    pub orphans: Vec<(String, String, i64)>,
    /// Open trips left unmarked.
    pub still_open: u64,
}

/// Marks the orphans among the open trips of `frames` ([`Tag::Open`]), measured back from
/// `newest_ns`, the newest event time of the whole input; writes one [`Tag::Swept`] frame.
pub fn sweep_open<P: CoreProvider>(
    provider: &P,
    newest_ns: i64,
    older_than_ns: i64,
    frames: Vec<Frame>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let mut core = provider.session()?;
    let mut swept = Swept::default();
    let mut bucket = 0;
    for f in frames.into_iter().filter(|f| f.tag == Tag::Open) {
        bucket = f.bucket;
        let mut trips = Vec::new();
        let mut c = Cursor(&f.payload);
        while !c.0.is_empty() {
            let end = c.u8()? == 1;
            let ts = c.i64()?;
            trips.push((c.string()?, end, ts));
        }
        let timestamps: Vec<i64> = trips.iter().map(|t| t.2).collect();
        let hits = core.sweep(&timestamps, newest_ns, older_than_ns)?;
        swept.still_open += (trips.len() - hits.len()) as u64;
        for i in hits {
            let (id, end, ts) = &trips[i as usize];
            let kind = if *end {
                EventKind::End
            } else {
                EventKind::Start
            };
            swept
                .orphans
                .push((id.clone(), kind.as_str().to_owned(), *ts));
        }
    }
    Frame {
        tag: Tag::Swept,
        bucket,
        payload: serde_json::to_vec(&swept).expect("a sweep serialises"),
    }
    .write_to(out)
    .and_then(|()| out.flush())
    .io(|| "writing the sweep".to_owned())
}

/// What [`finish`] needs besides the frames.
#[derive(Clone, Debug)]
pub struct FinishOptions {
    /// KPI time zone.
    pub zone: String,
    /// First KPI day, inclusive.
    pub from: Option<String>,
    /// Last KPI day, inclusive.
    pub to: Option<String>,
    /// The inputs' names, in order.
    pub inputs: Vec<String>,
    /// Who renders the report page, e.g. `tripflow-spark 0.1.0`.
    pub host: String,
    /// Whether the open trips were swept (then orphans count in the store totals).
    pub swept: bool,
}

/// Everything a distributed replay produced, as the replay and `kpi` would show it.
#[derive(Clone, Debug)]
pub struct Finished {
    /// The replay's summary (`tripflow replay --json`).
    pub summary: Summary,
    /// The KPI rows.
    pub rows: Vec<DayKpi>,
    /// The KPI CSV (`tripflow kpi --out`).
    pub csv: String,
    /// What the report page shows (`report.render-html` renders it).
    pub request: ReportRequest,
    /// The sweep, as `tripflow sweep --json` shows it, when one ran.
    pub sweep: Option<crate::SweepReport>,
}

/// Adds up the stages: merges the day totals (`kpi.merge`), finishes and renders the KPIs,
/// builds the replay's summary, and the report page's request with the accounting, taking the
/// examples of each reject reason from `quarantine` (the quarantine lines in input order).
pub fn finish<P: CoreProvider>(
    provider: &P,
    frames: Vec<Frame>,
    quarantine: &mut dyn BufRead,
    opts: &FinishOptions,
) -> Result<Finished, Error> {
    let mut core = provider.session()?;
    core.check_time_zone(&opts.zone)?;
    core.finish(&[], opts.from.as_deref(), opts.to.as_deref())?;
    let mut totals: Vec<DayTotals> = Vec::new();
    let mut tally = Tally::default();
    let mut sweep: Option<crate::SweepReport> = opts.swept.then(crate::SweepReport::default);
    for f in frames {
        match f.tag {
            Tag::Totals => totals = core.merge(&totals, &totals_from_json(&f.payload)?)?,
            Tag::Tally => tally.add(&read_json::<Tally>(&f.payload, "a tally")?),
            Tag::Swept => {
                let s: Swept = read_json(&f.payload, "a sweep")?;
                let report = sweep.get_or_insert_with(crate::SweepReport::default);
                report.still_open += s.still_open;
                for (trip_id, has, timestamp_ns) in s.orphans {
                    report.orphans.push(crate::Orphan {
                        trip_id,
                        has: if has == EventKind::End.as_str() {
                            EventKind::End.as_str()
                        } else {
                            EventKind::Start.as_str()
                        },
                        timestamp_ns,
                    });
                }
            }
            other => {
                return Err(Error::Damaged(format!(
                    "finish got a {other:?} frame: it takes day totals, tallies and sweeps"
                )));
            }
        }
    }
    let rows = core.finish(&totals, opts.from.as_deref(), opts.to.as_deref())?;
    let csv = core.render_csv(&rows)?;
    let orphaned = sweep.as_ref().map_or(0, |s| s.orphans.len() as u64);
    if let Some(s) = &mut sweep {
        s.newest_ns = tally.newest_ns;
        s.orphans.sort_by(|a, b| a.trip_id.cmp(&b.trip_id));
        s.orphaned_total = orphaned;
    }
    let (groups, quarantined) = quarantine_groups(quarantine, &opts.inputs)?;
    let mut summary = Summary::new();
    summary.add(&tally.counts);
    for (code, n) in &tally.counts.rejected {
        *summary.rejected.entry(code.clone()).or_default() += n;
    }
    summary.store = StoreTotals {
        events: summary.stored,
        completed: summary.completed,
        invalid: summary.invalid,
        no_fare: summary.no_fare,
        open: tally.open,
        orphaned,
        quarantined,
    };
    let accounting = Accounting {
        records_read: Some(summary.records),
        blank_lines: Some(summary.blank_lines),
        duplicates: Some(summary.duplicates),
        stored_events: summary.stored,
        completed: summary.completed,
        invalid: summary.invalid,
        no_fare: summary.no_fare,
        open: tally.open,
        orphaned,
        rejected: groups,
    };
    let request = ReportRequest {
        zone: opts.zone.clone(),
        from: opts.from.clone(),
        to: opts.to.clone(),
        rows: rows.clone(),
        accounting: Some(accounting),
        provenance: Provenance {
            host: opts.host.clone(),
            component_sha256: provider.fingerprint(),
            inputs: opts.inputs.clone(),
            accounting_note: "Everything this job read, as one replay of the inputs in the order \
                given would count it: records read and duplicates count every input (an input \
                given twice is read twice); each rejected record is kept once, with its \
                original bytes, in the quarantine output."
                .to_owned(),
        },
    };
    Ok(Finished {
        summary,
        rows,
        csv,
        request,
        sweep,
    })
}

/// The reject groups of the report page from the quarantine lines in input order: per reason,
/// how many distinct records (a record is kept once per input name, line and bytes, as the
/// store keeps it) and the first few; and the number of distinct records.
fn quarantine_groups(
    quarantine: &mut dyn BufRead,
    inputs: &[String],
) -> Result<(Vec<RejectGroup>, u64), Error> {
    #[derive(Deserialize)]
    struct Line {
        source: String,
        line: u64,
        reason: String,
        detail: String,
        raw: Option<String>,
        raw_base64: Option<String>,
    }
    let mut groups: BTreeMap<String, RejectGroup> = BTreeMap::new();
    // Two lines of one input are two records; the same record twice needs an input named twice.
    let mut names = HashSet::new();
    let repeated: HashSet<&str> = inputs
        .iter()
        .filter(|n| !names.insert(n.as_str()))
        .map(String::as_str)
        .collect();
    let mut seen: HashSet<(String, u64, Vec<u8>)> = HashSet::new();
    let mut total = 0u64;
    let mut text = Vec::new();
    loop {
        text.clear();
        if quarantine
            .read_until(b'\n', &mut text)
            .io(|| "reading the quarantine lines".to_owned())?
            == 0
        {
            break;
        }
        let l: Line = read_json(&text, "a quarantine line")?;
        let raw = match (l.raw, l.raw_base64) {
            (Some(text), _) => text.into_bytes(),
            (None, Some(b64)) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| Error::Damaged(format!("a quarantine line's raw_base64: {e}")))?
            }
            (None, None) => Vec::new(),
        };
        if repeated.contains(l.source.as_str())
            && !seen.insert((l.source.clone(), l.line, raw.clone()))
        {
            continue;
        }
        total += 1;
        let g = groups
            .entry(l.reason.clone())
            .or_insert_with(|| RejectGroup {
                reason: l.reason.clone(),
                count: 0,
                examples: Vec::new(),
            });
        g.count += 1;
        if g.examples.len() < EXAMPLES_PER_REASON {
            g.examples.push(RejectExample {
                source: l.source,
                line: l.line,
                detail: l.detail,
                raw: shown(&raw),
            });
        }
    }
    Ok((groups.into_values().collect(), total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripflow_runtime::NativeCore;

    /// What a set of splits of `data` yields: each accepted event's (line, trip id) and each
    /// reject's line, in input order.
    fn split_and_parse(data: &[u8], cuts: &[u64]) -> (Vec<(u64, String)>, Vec<u64>, Tally) {
        let mut bounds = vec![0u64];
        bounds.extend(
            cuts.iter()
                .copied()
                .filter(|&c| c > 0 && c < data.len() as u64),
        );
        bounds.sort_unstable();
        bounds.dedup();
        let mut events = Vec::new();
        let mut rejects = Vec::new();
        let mut tally = Tally::default();
        for (k, &start) in bounds.iter().enumerate() {
            let end = bounds.get(k + 1).copied();
            let split = Split {
                input: 0,
                name: "in".into(),
                start,
                end,
                newlines_before: data[..start as usize]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count() as u64,
                buckets: 3,
                home: 0,
            };
            let from = start.saturating_sub(1) as usize;
            let reader: Box<dyn BufRead + Send> = Box::new(io::Cursor::new(data[from..].to_vec()));
            let mut out = Vec::new();
            parse_split(&NativeCore, &split, reader, &mut out).unwrap();
            for f in read_frames(&mut &out[..]).unwrap() {
                match f.tag {
                    Tag::Events => {
                        let mut got = Bucket::default();
                        got.add(&f.payload).unwrap();
                        for e in &got.entries {
                            let id = String::from_utf8(got.id(e).to_vec()).unwrap();
                            assert_eq!(bucket_of(&id, 3), f.bucket);
                            events.push((e.line, id));
                        }
                    }
                    Tag::Rejects => {
                        let mut c = Cursor(&f.payload);
                        while !c.0.is_empty() {
                            c.u32().unwrap();
                            rejects.push(c.u64().unwrap());
                            c.bytes().unwrap();
                        }
                    }
                    Tag::Tally => tally.add(&read_json(&f.payload, "tally").unwrap()),
                    other => panic!("parse wrote {other:?}"),
                }
            }
        }
        events.sort();
        (events, rejects, tally)
    }

    fn sample(too_large: bool) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(
            b"\xef\xbb\xbf{\"trip_id\":\"a\",\"event_type\":\"trip_start\",\"timestamp\":1}\r\n",
        );
        data.extend_from_slice(b"\n\n");
        for i in 0..40 {
            let line = format!(
                "{{\"trip_id\":\"t{i}\",\"event_type\":\"trip_end\",\"timestamp\":{i},\"fare\":1}}\n"
            );
            data.extend_from_slice(line.as_bytes());
            if i % 7 == 0 {
                data.extend_from_slice(b"not json\n");
            }
        }
        if too_large {
            data.extend_from_slice(&vec![b'x'; MAX_LINE]);
            data.push(b'\n');
        }
        data.extend_from_slice(
            b"{\"trip_id\":\"last\",\"event_type\":\"trip_start\",\"timestamp\":5}",
        );
        data
    }

    /// Cuts right after each line feed and right before it.
    fn at_line_feeds(data: &[u8]) -> Vec<u64> {
        (0..data.len())
            .filter(|&i| data[i] == b'\n')
            .flat_map(|i| [i as u64, i as u64 + 1])
            .collect()
    }

    /// Cuts `data` every `step` bytes for each step, then at and around every line feed: each
    /// set of splits must read what the whole input reads.
    fn assert_every_cut(data: &[u8], whole: &(Vec<(u64, String)>, Vec<u64>, Tally), steps: &[u64]) {
        let len = data.len() as u64;
        for &step in steps {
            let cuts: Vec<u64> = (1..len).step_by(step as usize).collect();
            assert_eq!(
                &split_and_parse(data, &cuts),
                whole,
                "cut every {step} bytes"
            );
        }
        assert_eq!(&split_and_parse(data, &at_line_feeds(data)), whole);
    }

    #[test]
    fn any_cut_of_an_input_reads_each_line_once_with_its_line_number() {
        let data = sample(false);
        let whole = split_and_parse(&data, &[]);
        assert_eq!(whole.0.len(), 42);
        assert_eq!(whole.0[0], (1, "a".to_owned()));
        assert_eq!(whole.1.len(), 6);
        assert_eq!(whole.2.counts.blank_lines, 2);
        let len = data.len() as u64;
        assert_every_cut(&data, &whole, &[1, 2, 3, 7, 40, 97, 500, len / 3, len - 1]);
    }

    #[test]
    fn a_record_over_the_limit_is_read_whole_by_the_split_it_starts_in() {
        let data = sample(true);
        let whole = split_and_parse(&data, &[]);
        assert_eq!(whole.2.counts.rejected["too_large"], 1);
        assert_eq!(whole.0.len(), 42);
        let len = data.len() as u64;
        assert_every_cut(&data, &whole, &[4096, 65_536, len / 3]);
    }

    #[test]
    fn a_split_read_whole_holds_exactly_its_lines() {
        // Through `Read` as well as `read_until`: no byte of the next split's lines.
        let data = b"aa\nbbbb\ncc\n\ndddddd\ne".to_vec();
        for start in 0..data.len() {
            for end in start + 1..=data.len() {
                let line_start = |p: usize| p == 0 || data[p - 1] == b'\n';
                let first = (start..data.len()).find(|&p| line_start(p));
                let expected: Vec<u8> = match first {
                    Some(f) if f < end => {
                        let last = (f..end).filter(|&p| line_start(p)).max().unwrap();
                        let stop = data[last..]
                            .iter()
                            .position(|&b| b == b'\n')
                            .map_or(data.len(), |i| last + i + 1);
                        data[f..stop].to_vec()
                    }
                    _ => Vec::new(),
                };
                let Some(f) = first.filter(|&f| f < end) else {
                    continue;
                };
                let mut r = UntilLineAt {
                    inner: Box::new(io::Cursor::new(data[f..].to_vec())),
                    pos: f as u64,
                    end: end as u64,
                    at_line_start: true,
                };
                let mut got = Vec::new();
                r.read_to_end(&mut got).unwrap();
                assert_eq!(got, expected, "split {start}..{end}");
            }
        }
    }

    const MAX_LINE: usize = tripflow_runtime::core::MAX_RECORD_BYTES as usize + 10;

    #[test]
    fn frames_round_trip_and_a_cut_stream_is_an_error() {
        let f = Frame {
            tag: Tag::Totals,
            bucket: 7,
            payload: b"[]".to_vec(),
        };
        let mut bytes = Vec::new();
        f.write_to(&mut bytes).unwrap();
        f.write_to(&mut bytes).unwrap();
        assert_eq!(read_frames(&mut &bytes[..]).unwrap(), vec![f.clone(), f]);
        assert!(read_frames(&mut &bytes[..bytes.len() - 1]).is_err());
        assert!(read_frames(&mut &[9u8, 0, 0][..]).is_err());
    }

    #[test]
    fn buckets_are_stable() {
        // The bucket decides where a trip meets its other half: it must not change between
        // builds or machines.
        assert_eq!(bucket_of("nyc-000001", 16), bucket_of("nyc-000001", 16));
        assert_eq!(bucket_of("", 4), (0xcbf2_9ce4_8422_2325u64 % 4) as u32);
        assert_eq!(bucket_of("t1", 1), 0);
    }
}
