//! A structured, mutational fuzzer for record parsing: the component against the library it was
//! built from.
//!
//! No nightly toolchain can be installed here, so this is not coverage-guided (cargo-fuzz needs
//! nightly's sanitizer coverage). It mutates a checked-in corpus of real and edge-case records
//! (`fixtures/fuzz/corpus/`) with the mutations that matter to a JSON event parser — byte flips,
//! insertions, deletions, splices of two records, and tokens that stress number, string,
//! timestamp and structure handling — and checks, batch by batch, that:
//! - the component answers (no trap: a panic in the guest is a trap), and the native library
//!   does not panic;
//! - both give the same outcome for every record;
//! - the accepted events resolve to the same decisions in both.
//!
//! Inputs that break any of this are written to `fixtures/fuzz/found/` to be kept as fixtures.

use std::path::{Path, PathBuf};

use tripflow_runtime::core::{Clock, ParseOutcome, Span};
use tripflow_runtime::{ComponentSource, CoreProvider, Limits, NativeCore, Runtime, TripCore};

/// Tokens a mutation may insert.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\\u0000",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b" ",
    b"\t",
    b"\r",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xc3\xa9",
    b"\xf0\x9f\x9a\x95",
    b"null",
    b"true",
    b"-0",
    b"0.0",
    b"1e3",
    b"1E-2",
    b"12.345",
    b"12.50",
    b"999999999999999999999",
    b"-1",
    b"1000000.00",
    b"1000000.01",
    b"\"trip_id\":",
    b"\"event_type\":",
    b"\"timestamp\":",
    b"\"fare\":",
    b"\"trip_start\"",
    b"\"trip_end\"",
    b"2019-03-10T02:30:00-05:00",
    b"Z",
    b"+14:00",
    b"-00:00",
    b"T",
    b"t",
    b"z",
    b"60",
    b"23:59:60",
    b"1677-09-21T00:12:43Z",
    b"2262-04-11T23:47:16.854775807Z",
    b"9223372036854775807",
    b".000000001",
];

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Inputs run through both builds.
    pub inputs: u64,
    /// Inputs accepted as events.
    pub accepted: u64,
    /// Inputs rejected (by reason, summed).
    pub rejected: u64,
    /// Inputs on which the builds disagreed, trapped or panicked (each saved under `found/`).
    pub findings: Vec<PathBuf>,
}

/// The corpus records.
pub fn corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        out.extend(
            bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    out
}

fn mutate(rng: &mut fastrand::Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut r = corpus[rng.usize(..corpus.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        let at = rng.usize(..=r.len());
        match rng.u8(..7) {
            0 if !r.is_empty() => {
                let i = rng.usize(..r.len());
                r[i] ^= 1 << rng.u8(..8);
            }
            1 => r.insert(at, rng.u8(..)),
            2 if !r.is_empty() => {
                let end = (at + rng.usize(1..8)).min(r.len());
                let start = at.min(end);
                r.drain(start..end);
            }
            3 => {
                let t = TOKENS[rng.usize(..TOKENS.len())];
                r.splice(at..at, t.iter().copied());
            }
            4 => {
                let other = &corpus[rng.usize(..corpus.len())];
                let cut = rng.usize(..=other.len());
                r.truncate(at);
                r.extend_from_slice(&other[cut..]);
            }
            5 if !r.is_empty() => {
                // Replace a run of digits or letters with a token.
                let i = rng.usize(..r.len());
                let mut j = i;
                while j < r.len() && r[j].is_ascii_alphanumeric() {
                    j += 1;
                }
                let t = TOKENS[rng.usize(..TOKENS.len())];
                r.splice(i..j, t.iter().copied());
            }
            _ => {
                if !r.is_empty() {
                    let i = rng.usize(..r.len());
                    let end = (i + rng.usize(1..16)).min(r.len());
                    let piece = r[i..end].to_vec();
                    r.splice(at.min(r.len())..at.min(r.len()), piece);
                }
            }
        }
    }
    // Records are lines: a newline would split it in any host.
    r.retain(|b| *b != b'\n');
    r
}

/// Runs `inputs` mutated records, in batches of `batch`, through the embedded component and
/// the native library; findings are saved under `found`.
pub fn run(corpus_dir: &Path, found: &Path, inputs: u64, batch: usize, seed: u64) -> Report {
    let corpus = corpus(corpus_dir);
    assert!(!corpus.is_empty(), "no corpus in {}", corpus_dir.display());
    let rt = Runtime::load(&ComponentSource::Embedded, Limits::default(), None)
        .expect("the embedded component loads");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut report = Report::default();
    while report.inputs < inputs {
        let n = batch.min((inputs - report.inputs) as usize);
        let records: Vec<Vec<u8>> = (0..n).map(|_| mutate(&mut rng, &corpus)).collect();
        check(&rt, &records, found, &mut report);
    }
    report
}

/// One batch through both builds: outcomes, then the accepted events' decisions.
fn check(rt: &Runtime, records: &[Vec<u8>], found: &Path, report: &mut Report) {
    let clock = Clock {
        arrival_ns: 1_800_000_000_000_000_000,
        max_skew_ns: 3_600_000_000_000,
    };
    let mut buf = Vec::new();
    let mut spans = Vec::with_capacity(records.len());
    for r in records {
        spans.push(Span {
            offset: buf.len() as u32,
            len: r.len() as u32,
        });
        buf.extend_from_slice(r);
    }
    let native = std::panic::catch_unwind(|| NativeCore.session().unwrap().parse(&buf, &spans));
    let wasm = rt.session().and_then(|mut s| s.parse(&buf, &spans));
    let same = matches!((&native, &wasm), (Ok(Ok(a)), Ok(b)) if a == b);
    if !same {
        // Find the records responsible, one by one, and keep them.
        for r in records {
            let one = [Span {
                offset: 0,
                len: r.len() as u32,
            }];
            let native = std::panic::catch_unwind(|| NativeCore.session().unwrap().parse(r, &one));
            let wasm = rt.session().and_then(|mut s| s.parse(r, &one));
            if !matches!((&native, &wasm), (Ok(Ok(a)), Ok(b)) if a == b) {
                report.findings.push(save(found, r));
            }
        }
    }
    if let (Ok(Ok(outcomes)), Ok(_)) = (&native, &wasm) {
        let events: Vec<_> = outcomes
            .iter()
            .filter_map(|o| match o {
                ParseOutcome::Accepted(e) => Some(e.clone()),
                _ => None,
            })
            .collect();
        report.accepted += events.len() as u64;
        report.rejected += outcomes
            .iter()
            .filter(|o| matches!(o, ParseOutcome::Rejected(_)))
            .count() as u64;
        let a = NativeCore.session().unwrap().resolve(&events, &[], clock);
        let b = rt
            .session()
            .and_then(|mut s| s.resolve(&events, &[], clock));
        if !matches!((&a, &b), (Ok(a), Ok(b)) if a == b) {
            for r in records {
                report.findings.push(save(found, r));
            }
        }
    }
    report.inputs += records.len() as u64;
}

fn save(dir: &Path, record: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let name = format!("{}.ndjson", tripflow_runtime::sha256_hex(record));
    let path = dir.join(name);
    let mut line = record.to_vec();
    line.push(b'\n');
    let _ = std::fs::write(&path, line);
    path
}
