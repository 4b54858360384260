#!/usr/bin/env bash
# Coverage-guided fuzzing of the record parser with cargo-fuzz (libFuzzer + AddressSanitizer).
# cargo-fuzz needs nightly compiler flags; this machine has one stable toolchain, so the build
# runs with RUSTC_BOOTSTRAP=1. Seeds from fixtures/fuzz/corpus; a crash is written to
# fuzz/artifacts/parse_record/ — keep it in fixtures/fuzz/found/ with the fix.
#
#   scripts/fuzz.sh [RUNS]          default 10000000
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10000000}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
mkdir -p fuzz/corpus/parse_record
python3 - <<'PY'
import hashlib, pathlib
for line in pathlib.Path("fixtures/fuzz/corpus/seeds.ndjson").read_bytes().split(b"\n"):
    if line:
        pathlib.Path("fuzz/corpus/parse_record", hashlib.sha1(line).hexdigest()).write_bytes(line)
PY
cd fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run -O parse_record -- -runs="$runs" -max_len=4096 -print_final_stats=1
