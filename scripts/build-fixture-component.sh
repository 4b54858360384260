#!/usr/bin/env bash
# Builds the test fixture component: the core with one deliberately changed rule (a trip whose
# fare is over 100.00 is `invalid`; feature `fixture-fare-cap`), for the tests of `tripflow diff`.
# It never ships. Prints the path of the .wasm. Its own target directory, so it never replaces
# the component the hosts embed.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${TRIPFLOW_FIXTURE_TARGET_DIR:-target/fixture-component}"
cargo build --quiet --locked --package tripflow-component --target wasm32-wasip2 \
    --profile component --features fixture-fare-cap --target-dir "$target_dir" >&2
echo "$target_dir/wasm32-wasip2/component/tripflow_component.wasm"
