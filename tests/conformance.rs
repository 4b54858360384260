//! The conformance runner over every fixture case: with the component freshly built from this
//! checkout (what ships), and with the library linked natively (what it was built from).

use std::path::Path;

use tripflow_runtime::{ComponentSource, CoreProvider, Limits, NativeCore, Runtime};

fn check_all<P: CoreProvider>(core: &P) {
    let cases = tripflow_conformance::discover(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cases"),
    )
    .unwrap();
    assert!(
        cases.len() >= 15,
        "the issue asks for at least 15 cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let result = tripflow_conformance::check_case(core, case, false).unwrap();
        if !result.passed() {
            failures.push(format!("{}:\n{}", result.name, result.diffs.join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        core.describe(),
        failures.join("\n")
    );
}

#[test]
fn every_case_passes_with_the_component() {
    check_all(&Runtime::load(&ComponentSource::Embedded, Limits::default(), None).unwrap());
}

#[test]
fn every_case_passes_with_the_native_library() {
    check_all(&NativeCore);
}

#[test]
fn the_nyc_fixture_is_what_convert_makes_of_the_sample() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let csv =
        std::fs::File::open(root.join("fixtures/data/nyc-tlc-trips-2019-03-sample.csv")).unwrap();
    let mut converted = Vec::new();
    let stats = tripflow_core::convert::nyc_tlc(csv, &mut converted, "nyc").unwrap();
    assert_eq!((stats.rows, stats.events), (6_500, 13_000));
    let committed =
        std::fs::read(root.join("fixtures/cases/nyc-tlc-2019-03/input-1.ndjson")).unwrap();
    assert!(
        converted == committed,
        "convert output differs from the committed fixture"
    );
    let kpi = std::fs::read_to_string(root.join("fixtures/cases/nyc-tlc-2019-03/expected/kpi.csv"))
        .unwrap();
    let days = kpi.lines().count() - 1;
    let trips: u64 = kpi
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!((days, trips), (32, 6_490));
}
