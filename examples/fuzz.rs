//! The parser fuzzer, long run: `cargo run --release --example fuzz -- [--inputs N] [--seed S]`.
//! Mutates `fixtures/fuzz/corpus/`, runs every input through the embedded component and the
//! native library, and writes any input on which they disagree, trap or panic to
//! `fixtures/fuzz/found/` (kept there as fixtures; `cargo test --test fuzz` replays them).

#[path = "../tests/fuzz_harness/mod.rs"]
mod fuzz_harness;

use std::path::Path;
use std::time::Instant;

fn main() {
    let mut inputs: u64 = 10_000_000;
    let mut seed: u64 = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{name} needs a whole number, e.g. {name} 1000000");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--inputs" => inputs = value("--inputs"),
            "--seed" => seed = value("--seed"),
            other => {
                eprintln!("unknown argument {other:?}: use --inputs N and --seed S");
                std::process::exit(2)
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("fixtures/fuzz/corpus");
    let started = Instant::now();
    let report = fuzz_harness::run(
        &corpus,
        &root.join("fixtures/fuzz/found"),
        inputs,
        8192,
        seed,
    );
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz: {} inputs in {secs:.1} s ({:.0}/s), seed {seed}, corpus {} records: {} accepted, {} rejected, {} findings",
        report.inputs,
        report.inputs as f64 / secs,
        fuzz_harness::corpus(&corpus).len(),
        report.accepted,
        report.rejected,
        report.findings.len()
    );
    for f in &report.findings {
        println!("  {}", f.display());
    }
    if !report.findings.is_empty() {
        std::process::exit(1);
    }
}
