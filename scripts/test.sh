#!/usr/bin/env bash
# Every check of the project, as CI runs it: formatting, lints, and all tests (unit, property,
# component-vs-native, CLI, and the conformance runner over the freshly built component).
set -euo pipefail
cd "$(dirname "$0")/.."

# rust-toolchain.toml pins the toolchain; make sure its target and tools are present even when
# the toolchain was installed before this checkout existed.
rustup target add wasm32-wasip2 >/dev/null
rustup component add rustfmt clippy >/dev/null

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p tripflow-component --target wasm32-wasip2 --locked -- -D warnings
cargo test --workspace --locked

# The conformance runner as a user runs it: against a component file, not the embedded copy.
cargo run --locked -q -p tripflow -- component --export-wasm target/tripflow-core.wasm
cargo run --locked -q -p tripflow-conformance -- --component target/tripflow-core.wasm
