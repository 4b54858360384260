#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: replay of 1M generated events with the component vs the same core
# linked natively (hyperfine, same session), peak memory at 100k and 1M events, and the
# criterion benchmark of the core alone. Needs hyperfine and GNU time (Debian: hyperfine, time).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || { echo "install hyperfine (apt-get install hyperfine)"; exit 1; }
[ -x /usr/bin/time ] || { echo "install GNU time (apt-get install time)"; exit 1; }

cargo build --release --locked -q -p tripflow
bin=target/release/tripflow
work=${BENCH_DIR:-target/bench}
mkdir -p "$work"
export TRIPFLOW_CACHE_DIR="$work/cache"

# 500,000 trips = 1,000,000 events in time order, plus 1% exact duplicates.
[ -f "$work/1m.ndjson" ] || $bin generate --trips 500000 --seed 7 --duplicates 0.01 --out "$work/1m.ndjson"
[ -f "$work/100k.ndjson" ] || $bin generate --trips 50000 --seed 7 --duplicates 0.01 --out "$work/100k.ndjson"
[ -f "$work/2m.ndjson" ] || $bin generate --trips 1000000 --seed 7 --duplicates 0.01 --out "$work/2m.ndjson"
[ -f "$work/1m-shuffled.ndjson" ] || $bin generate --trips 500000 --seed 7 --duplicates 0.01 --shuffle --out "$work/1m-shuffled.ndjson"
$bin component >/dev/null # fills the compile cache so no run pays for compilation

hyperfine --runs 3 --export-markdown "$work/replay-1m.md" \
  --prepare "rm -rf $work/state-*" \
  -n "component 1m" "$bin replay --state $work/state-wasm $work/1m.ndjson" \
  -n "native 1m" "$bin --native replay --state $work/state-native $work/1m.ndjson"

for input in 100k 1m 2m 1m-shuffled; do
  rm -rf "$work/state-mem"
  /usr/bin/time -f "peak RSS $input: %M KiB, %e s" $bin replay --state "$work/state-mem" "$work/$input.ndjson" >/dev/null
done

cargo bench --locked -p tripflow-runtime --bench core
