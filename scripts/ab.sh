#!/usr/bin/env bash
# A/B of two builds in one run, for a change that must not cost speed:
#   scripts/ab.sh BASE [RUNS]
# builds BASE (any git revision) in a worktree under target/ab/, and this checkout as it is,
# then runs, interleaved, on the same inputs:
#   - the replay of the 2M-event file (hyperfine), with both KPI CSVs and summaries compared;
#   - tripflow-local capacity --trips 2000 (DynamoDB units per trip);
#   - tripflow-local cpu on 10,000 generated trips, RUNS times each (default 3): the ingest and
#     matcher bootstraps' CPU per record, whose run-to-run spread on this machine is ~10%.
# Needs hyperfine and GNU time (Debian: hyperfine, time) and the local engines
# (scripts/install-local-aws.sh). BASE's build takes a second target directory (~5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: scripts/ab.sh BASE [RUNS]}
runs=${2:-3}
work=target/ab
mkdir -p "$work"
command -v hyperfine >/dev/null || { echo "install hyperfine (apt-get install hyperfine)"; exit 1; }

rev=$(git rev-parse --short "$base")
if [ ! -d "$work/base-$rev" ]; then
  git worktree add --detach "$work/base-$rev" "$rev" >/dev/null
fi
for side in "base-$rev" head; do
  dir=$([ "$side" = head ] && echo . || echo "$work/$side")
  (cd "$dir" && CARGO_TARGET_DIR="$PWD/target" cargo build --release --locked -q \
    -p tripflow -p tripflow-lambda -p tripflow-local)
  mkdir -p "$work/bin-$side"
  cp "$dir/target/release/tripflow" "$dir/target/release/tripflow-local" "$work/bin-$side/"
  cp "$dir/target/release/tripflow-lambda" "$work/bin-$side/bootstrap"
  strip "$work/bin-$side/bootstrap"
done
a="$work/bin-base-$rev" b="$work/bin-head"

ev=target/bench/ev2m.ndjson
[ -f "$ev" ] || python3 scripts/peers/gen_events.py 1000000 "$ev"
trips=target/bench/aws-20k.ndjson
[ -f "$trips" ] || "$b/tripflow" generate --trips 10000 --seed 7 --out "$trips"

echo "== replay of $ev: $rev against this checkout"
hyperfine --runs 5 --warmup 1 --prepare "rm -rf $work/state" \
  -n "$rev" "$a/tripflow replay --state $work/state $ev" \
  -n "this checkout" "$b/tripflow replay --state $work/state $ev"
for side in "$a" "$b"; do
  rm -rf "$work/state"
  /usr/bin/time -f "$side: peak RSS %M KiB" "$side/tripflow" replay --json --state "$work/state" \
    --kpi-out "$side/kpi.csv" "$ev" >"$side/summary.json"
done
rm -rf "$work/state"
cmp "$a/kpi.csv" "$b/kpi.csv" && echo "KPI CSVs identical"
cmp "$a/summary.json" "$b/summary.json" && echo "replay summaries identical"

echo "== DynamoDB units per trip"
for side in "$a" "$b"; do echo "-- $side"; "$side/tripflow-local" capacity --trips 2000; done

echo "== CPU per record, $runs runs each, interleaved"
for i in $(seq "$runs"); do
  for side in "$a" "$b"; do
    echo "-- $side run $i"
    "$side/tripflow-local" cpu --bootstrap "$side/bootstrap" "$trips" | grep "us CPU"
  done
done
