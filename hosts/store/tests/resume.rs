//! A store carries on from where the last writer left it, whichever way it gets there: from the
//! open-trip snapshot a replay saves, or from the logs alone (the snapshot lost, or never written
//! because the replay was killed). Every way ends in the same store as one replay of everything.

use std::path::Path;

use tripflow_core::generate::{GenerateOptions, generate};
use tripflow_runtime::NativeCore;
use tripflow_store::{Input, InputSource, KpiOptions, ReplayOptions, StateDir, StoreTotals};

fn input(path: &Path) -> Input {
    Input {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        source: InputSource::File(path.to_path_buf()),
    }
}

fn replay(state: &mut StateDir, files: &[&Path], threads: usize) -> tripflow_store::Summary {
    let inputs: Vec<Input> = files.iter().map(|f| input(f)).collect();
    let opts = ReplayOptions {
        batch_lines: 97,
        threads,
        arrival_ns: Some(1_900_000_000_000_000_000),
        ..ReplayOptions::default()
    };
    tripflow_store::replay(&NativeCore, state, &inputs, &opts, None, &()).unwrap()
}

/// The events `opts` generates, as NDJSON text.
fn generated(opts: GenerateOptions) -> String {
    let mut events = Vec::new();
    generate(&opts, &mut events).unwrap();
    String::from_utf8(events).unwrap()
}

/// What must match: the counts, every stored event, and the KPI bytes.
fn fingerprint(state: &StateDir) -> (StoreTotals, Vec<tripflow_runtime::core::TripEvent>, String) {
    let csv = tripflow_store::kpi(&NativeCore, state, &KpiOptions::default())
        .unwrap()
        .csv;
    (state.totals().unwrap(), state.events().unwrap(), csv)
}

#[test]
fn a_store_resumes_alike_from_its_snapshot_from_its_logs_and_in_one_go() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = generated(GenerateOptions {
        trips: 3_000,
        seed: 11,
        duplicates: 0.05,
        shuffle: true,
        poison: 0.01,
    });
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = (d.join("first.ndjson"), d.join("second.ndjson"));
    let half = lines.len() / 2;
    std::fs::write(&first, lines[..half].join("\n") + "\n").unwrap();
    std::fs::write(&second, lines[half..].join("\n") + "\n").unwrap();

    // In one go, with three threads.
    let mut whole = StateDir::open(&d.join("whole")).unwrap();
    replay(&mut whole, &[&first, &second], 3);
    let expected = fingerprint(&whole);
    assert!(expected.0.completed > 2_500);

    // Two replays: the second loads the snapshot the first saved.
    let mut resumed = StateDir::open(&d.join("resumed")).unwrap();
    replay(&mut resumed, &[&first], 2);
    assert!(d.join("resumed/open.snap").is_file());
    drop(resumed);
    let mut resumed = StateDir::open(&d.join("resumed")).unwrap();
    replay(&mut resumed, &[&second], 1);
    assert_eq!(fingerprint(&resumed), expected);

    // Two replays, the snapshot lost in between: the second reads the logs.
    let mut rebuilt = StateDir::open(&d.join("rebuilt")).unwrap();
    replay(&mut rebuilt, &[&first], 2);
    drop(rebuilt);
    std::fs::remove_file(d.join("rebuilt/open.snap")).unwrap();
    let mut rebuilt = StateDir::open(&d.join("rebuilt")).unwrap();
    replay(&mut rebuilt, &[&second], 2);
    assert_eq!(fingerprint(&rebuilt), expected);

    // A sweep between the two marks orphans, which the second replay closes: their marks go.
    let mut swept = StateDir::open(&d.join("swept")).unwrap();
    replay(&mut swept, &[&first], 2);
    let sweep = tripflow_store::sweep(&NativeCore, &mut swept, 0).unwrap();
    assert!(sweep.orphaned_total > 0);
    drop(swept);
    let mut swept = StateDir::open(&d.join("swept")).unwrap();
    replay(&mut swept, &[&second], 2);
    assert_eq!(fingerprint(&swept), expected);
    assert_eq!(expected.0.orphaned, 0);
}

/// The native core under a component's name: a sha256 is what lets `kpi` save its totals.
struct Named {
    sessions: std::sync::atomic::AtomicUsize,
}

impl tripflow_runtime::CoreProvider for Named {
    type Session = NativeCore;

    fn session(&self) -> Result<NativeCore, tripflow_runtime::CoreError> {
        self.sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(NativeCore)
    }

    fn describe(&self) -> String {
        "the native core, named as a component".to_owned()
    }

    fn fingerprint(&self) -> String {
        "ab".repeat(32)
    }
}

#[test]
fn a_new_day_onto_a_large_store_maps_its_closed_trips_and_adds_to_its_saved_kpis() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = generated(GenerateOptions {
        trips: 80_000,
        seed: 5,
        duplicates: 0.01,
        shuffle: false,
        poison: 0.001,
    });
    let lines: Vec<&str> = text.lines().collect();
    let (history, day) = (d.join("history.ndjson"), d.join("day.ndjson"));
    let cut = lines.len() * 97 / 100;
    // The day also brings back some of history's events (a producer's retries).
    let day_lines: Vec<&str> = lines[cut..]
        .iter()
        .chain(&lines[cut - 500..cut])
        .copied()
        .collect();
    std::fs::write(&history, lines[..cut].join("\n") + "\n").unwrap();
    std::fs::write(&day, day_lines.join("\n") + "\n").unwrap();

    let mut whole = StateDir::open(&d.join("whole")).unwrap();
    replay(&mut whole, &[&history, &day], 2);
    let expected = fingerprint(&whole);

    let named = Named {
        sessions: Default::default(),
    };
    let kpis = |state: &StateDir, zone: &str| {
        let opts = KpiOptions {
            zone: zone.to_owned(),
            ..KpiOptions::default()
        };
        tripflow_store::kpi(&named, state, &opts).unwrap().csv
    };
    let mut state = StateDir::open(&d.join("state")).unwrap();
    replay(&mut state, &[&history], 2);
    // More than 65,536 trips closed: the closed trips' sorted array was saved.
    assert!(d.join("state/closed.snap").is_file());
    // Totals saved for UTC, after the history.
    kpis(&state, "UTC");
    drop(state);

    let inode = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(d.join("state/closed.snap"))
            .unwrap()
            .ino()
    };
    let saved = inode();

    let mut state = StateDir::open(&d.join("state")).unwrap();
    let summary = replay(&mut state, &[&day], 1);
    assert!(
        summary.duplicates >= 500,
        "history's events come back as duplicates"
    );
    // The file was mapped and still holds the array (the day added less than a quarter to
    // it): not rewritten. A set rebuilt from trips.log would have been saved anew.
    assert_eq!(inode(), saved);
    // The saved UTC totals plus the day's trips, and a zone never asked for, from scratch.
    assert_eq!(kpis(&state, "UTC"), expected.2);
    assert_eq!(fingerprint(&state), expected);
    let paris = |state: &StateDir| {
        let opts = KpiOptions {
            zone: "Europe/Paris".to_owned(),
            ..KpiOptions::default()
        };
        tripflow_store::kpi(&NativeCore, state, &opts).unwrap().csv
    };
    assert_eq!(kpis(&state, "Europe/Paris"), paris(&whole));
    // Nothing closed since: the saved totals are the answer, without a trip added up (one
    // session checks the zone and range, one finishes; none accumulates).
    let before = named.sessions.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(kpis(&state, "UTC"), expected.2);
    assert_eq!(
        named.sessions.load(std::sync::atomic::Ordering::Relaxed) - before,
        2
    );
}
