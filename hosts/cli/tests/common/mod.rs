//! What the CLI's test binaries share: running `tripflow` as a user would.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn nyc_events() -> PathBuf {
    fixtures().join("cases/nyc-tlc-2019-03/input-1.ndjson")
}

/// Runs `tripflow` in `dir` without a compile cache (tests must not write to $HOME).
pub fn tripflow(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tripflow"))
        .args(args)
        .current_dir(dir)
        .env("TRIPFLOW_CACHE_DIR", dir.join("cache"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

pub fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure, got success");
    String::from_utf8(out.stderr.clone()).unwrap()
}
