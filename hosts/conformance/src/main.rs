//! `tripflow-conformance`: checks a build of the core component against every fixture case.
//!
//! ```text
//! tripflow-conformance                          # the component built into this binary
//! tripflow-conformance --component core.wasm    # any other build
//! BLESS=1 tripflow-conformance                  # rewrite expectations from actual results
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use tripflow_runtime::{ComponentSource, CoreProvider, Limits, NativeCore, Runtime};

/// Run every case under the fixtures against one build of the tripflow core and report
/// pass/fail per case with a diff. Set BLESS=1 to rewrite the expectations.
#[derive(Parser, Debug)]
#[command(name = "tripflow-conformance", version)]
struct Args {
    /// The component to check (.wasm or .cwasm); default: the one built into this binary.
    #[arg(long, value_name = "PATH")]
    component: Option<PathBuf>,
    /// Check the natively linked core library instead of a component.
    #[arg(long, conflicts_with = "component")]
    native: bool,
    /// Folder holding one folder per case.
    #[arg(long, value_name = "DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/cases"))]
    cases: PathBuf,
    /// Only cases whose name contains this.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bless = std::env::var_os("BLESS").is_some_and(|v| v == "1");
    let result = if args.native {
        run(&args, &NativeCore, bless)
    } else {
        let source = args
            .component
            .clone()
            .map_or(ComponentSource::Embedded, ComponentSource::File);
        Runtime::load(&source, Limits::default(), None)
            .map_err(anyhow::Error::from)
            .and_then(|rt| run(&args, &rt, bless))
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run<P: CoreProvider>(args: &Args, core: &P, bless: bool) -> Result<bool> {
    println!("checking {}", core.describe());
    let cases = tripflow_conformance::discover(&args.cases)?;
    let (mut passed, mut failed) = (0, 0);
    for case in cases {
        let name = case
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if args
            .filter
            .as_ref()
            .is_some_and(|f| !name.contains(f.as_str()))
        {
            continue;
        }
        match tripflow_conformance::check_case(core, &case, bless) {
            Ok(r) if r.blessed => {
                println!("BLESSED {name}");
                passed += 1;
            }
            Ok(r) if r.passed() => {
                println!("PASS    {name}");
                passed += 1;
            }
            Ok(r) => {
                println!("FAIL    {name}");
                for d in &r.diffs {
                    println!("{d}");
                }
                failed += 1;
            }
            Err(e) => {
                println!("FAIL    {name}: {e:#}");
                failed += 1;
            }
        }
    }
    println!("conformance: {passed} passed, {failed} failed");
    Ok(failed == 0)
}
