//! The runner binary as a user runs it: against a component *file*, reporting failures with a
//! diff and a failing exit status, and rewriting expectations with `BLESS=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cases() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/cases")
}

fn runner(args: &[&str], bless: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tripflow-conformance"));
    cmd.args(args);
    if bless {
        cmd.env("BLESS", "1");
    } else {
        cmd.env_remove("BLESS");
    }
    cmd.output().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn every_case_passes_against_an_exported_component_file() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("core.wasm");
    std::fs::write(&wasm, tripflow_runtime::EMBEDDED_COMPONENT).unwrap();
    let out = runner(
        &[
            "--component",
            wasm.to_str().unwrap(),
            "--cases",
            cases().to_str().unwrap(),
        ],
        false,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!(
        "sha256:{}",
        tripflow_runtime::sha256_hex(tripflow_runtime::EMBEDDED_COMPONENT)
    )));
    let passed = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(passed >= 15, "{stdout}");
    assert!(
        stdout.contains(&format!("conformance: {passed} passed, 0 failed")),
        "{stdout}"
    );
}

#[test]
fn a_wrong_expectation_fails_with_a_diff_and_bless_rewrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("basic-utc");
    copy_dir(&cases().join("basic-utc"), &case);
    let expected = case.join("expected/kpi.csv");
    let good = std::fs::read_to_string(&expected).unwrap();
    std::fs::write(&expected, good.replace("11.38", "11.37")).unwrap();
    let cases_arg = dir.path().to_str().unwrap();

    let out = runner(&["--cases", cases_arg], false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL    basic-utc"), "{stdout}");
    assert!(
        stdout.contains("-2024-05-01,2,22.75,11.37")
            && stdout.contains("+2024-05-01,2,22.75,11.38"),
        "{stdout}"
    );

    let out = runner(&["--cases", cases_arg], true);
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&expected).unwrap(), good);
    assert!(runner(&["--cases", cases_arg], false).status.success());

    let out = runner(&["--cases", "/no/such/dir"], false);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cases DIR"));
}
