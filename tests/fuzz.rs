//! A short run of the parser fuzzer in the test command: mutated records through the component
//! and the native library must agree and never trap or panic. The long run is
//! `cargo run --release --example fuzz -- --inputs 10000000` (see BENCHMARKS.md).

mod fuzz_harness;

use std::path::Path;

#[test]
fn mutated_records_parse_alike_in_the_component_and_natively() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = tempfile::tempdir().unwrap();
    let report = fuzz_harness::run(
        &root.join("fixtures/fuzz/corpus"),
        found.path(),
        100_000,
        4096,
        0x7219,
    );
    assert_eq!(report.inputs, 100_000);
    assert!(
        report.findings.is_empty(),
        "the builds disagree or fail on: {:?}",
        report.findings
    );
    // The mutations reach both sides of the parser.
    assert!(
        report.accepted > 1_000 && report.rejected > 10_000,
        "{report:?}"
    );
}
