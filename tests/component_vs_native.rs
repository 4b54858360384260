//! The component, run through the runtime crate, must give byte-identical results to the
//! library linked natively, on generated data with duplicates, poison and any order; and a
//! shuffled, duplicated copy of an input must give the same KPI CSV bytes. The report page is
//! the same bytes too, apart from the core's own fingerprint. The number of replay threads
//! changes nothing either.

use std::path::Path;

use proptest::prelude::*;
use tripflow_core::DayKpi;
use tripflow_core::generate::{GenerateOptions, generate};
use tripflow_runtime::{ComponentSource, CoreProvider, Limits, NativeCore, Runtime, TripCore};
use tripflow_store::{
    Input, InputSource, KpiOptions, ReplayOptions, ReportOptions, StateDir, Summary,
};

struct Outcome {
    summary: Summary,
    quarantine: Vec<u8>,
    csv: String,
    /// The report page, with the core's fingerprint (sha256 or "native") taken out.
    report: String,
    /// The KPI rows read back from the CSV by the core.
    rows_from_csv: Vec<DayKpi>,
    rows: Vec<DayKpi>,
    /// Every stored event, by trip id and half.
    events: Vec<tripflow_core::TripEvent>,
}

fn replay<P: CoreProvider>(
    core: &P,
    file: &Path,
    batch_lines: usize,
    threads: usize,
    zone: &str,
) -> Outcome {
    let mut state = StateDir::temporary().unwrap();
    let input = Input {
        name: "events.ndjson".into(),
        source: InputSource::File(file.to_path_buf()),
    };
    let opts = ReplayOptions {
        batch_lines,
        threads,
        ..ReplayOptions::default()
    };
    let mut quarantine = Vec::new();
    let summary = tripflow_store::replay(
        core,
        &mut state,
        &[input],
        &opts,
        Some(&mut quarantine),
        &(),
    )
    .unwrap();
    let kpi = tripflow_store::kpi(
        core,
        &state,
        &KpiOptions {
            zone: zone.into(),
            ..KpiOptions::default()
        },
    )
    .unwrap();
    let report = tripflow_store::report(
        core,
        &state,
        &ReportOptions {
            kpi: KpiOptions {
                zone: zone.into(),
                ..KpiOptions::default()
            },
            host: "test".into(),
        },
    )
    .unwrap()
    .replace(&core.fingerprint(), "<core>");
    let rows_from_csv = core.session().unwrap().read_csv(&kpi.csv).unwrap();
    Outcome {
        summary,
        quarantine,
        csv: kpi.csv,
        report,
        rows_from_csv,
        rows: kpi.rows,
        events: state.events().unwrap(),
    }
}

fn generated(dir: &Path, name: &str, opts: &GenerateOptions) -> std::path::PathBuf {
    let path = dir.join(name);
    generate(opts, std::fs::File::create(&path).unwrap()).unwrap();
    path
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn component_equals_native_and_order_does_not_matter(
        seed in any::<u64>(),
        trips in 1u64..400,
        batch_lines in 1usize..300,
        threads in 1usize..5,
        zone in prop::sample::select(vec!["UTC", "America/New_York", "Australia/Lord_Howe"]),
    ) {
        let runtime = Runtime::load(&ComponentSource::Embedded, Limits::default(), None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let plain = GenerateOptions { trips, seed, duplicates: 0.0, shuffle: false, poison: 0.05 };
        let messy = GenerateOptions { duplicates: 0.3, shuffle: true, ..plain.clone() };
        let plain_file = generated(dir.path(), "plain.ndjson", &plain);
        let messy_file = generated(dir.path(), "messy.ndjson", &messy);

        let wasm = replay(&runtime, &messy_file, batch_lines, threads, zone);
        let native = replay(&NativeCore, &messy_file, batch_lines, 1, zone);
        prop_assert_eq!(&wasm.summary, &native.summary);
        prop_assert_eq!(&wasm.quarantine, &native.quarantine);
        prop_assert_eq!(&wasm.csv, &native.csv);
        prop_assert_eq!(&wasm.report, &native.report);
        prop_assert_eq!(&wasm.events, &native.events);
        prop_assert_eq!(&wasm.rows_from_csv, &wasm.rows, "read-csv inverts render-csv");

        let ordered = replay(&runtime, &plain_file, 8192, 2, zone);
        prop_assert_eq!(&ordered.csv, &wasm.csv, "shuffling and duplicating changed the KPI bytes");
        prop_assert_eq!(ordered.summary.store.completed, trips);
        // Nothing is lost: every record read is stored, a duplicate, or rejected.
        let s = &wasm.summary;
        prop_assert_eq!(s.records, s.stored + s.duplicates + s.rejected_total());
        prop_assert_eq!(s.rejected_total() as usize, wasm.quarantine.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count());
        prop_assert_eq!(wasm.summary.completed, trips);
    }
}
