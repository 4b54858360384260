#!/usr/bin/env bash
# Reproduces BENCHMARKS.md.
#   scripts/bench.sh replay   the replay next to DuckDB on three shapes (2M and 20M shuffled
#                             events into an empty store; one new day onto 30 days of history),
#                             wall time and peak memory; 1M generated events with the component
#                             vs the same core linked natively; criterion. Needs ~7 GB free
#                             under target/bench (the 20M file is 1.9 GB, its store 3.5 GB)
#   scripts/bench.sh aws      the AWS functions on the local engines next to the seed's design,
#                             same run, same events: DynamoDB units per trip, CPU per record,
#                             cold start
#   scripts/bench.sh spark    the Spark job (local[2]) on the 2M file next to the replay and
#                             DuckDB, same run; per core: local[1] and the replay on one core
#   scripts/bench.sh stepfunctions   the KPI state machine of deploy/template.yaml on moto's
#                             interpreter: a three-year backfill at concurrency 1 and 4, real
#                             bootstrap processes, checked against tripflow kpi
#   scripts/bench.sh audit    production reproduced: the NYC sample and 100,000 generated events
#                             through the pipeline on the local engines, kept (export, kept
#                             rejects, published CSV) and audited; audit and diff timed next to
#                             the replay of the same events (diff on the 2M file too)
#   scripts/bench.sh          all five
# Needs hyperfine and GNU time for the replay part (Debian: hyperfine, time), and the local
# engines (scripts/install-local-aws.sh) for the AWS part.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
work=${BENCH_DIR:-target/bench}
mkdir -p "$work"

replay() {
  command -v hyperfine >/dev/null || { echo "install hyperfine (apt-get install hyperfine)"; exit 1; }
  [ -x /usr/bin/time ] || { echo "install GNU time (apt-get install time)"; exit 1; }
  cargo build --release --locked -q -p tripflow
  local bin=target/release/tripflow
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

  # DuckDB, what an analyst would pick instead (scripts/peers/README.md), side by side with
  # tripflow in one run on three shapes of work.
  local venv=target/peers-venv py=target/peers-venv/bin/python
  [ -x "$py" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r scripts/peers/requirements.txt
  [ -f "$work/ev2m.ndjson" ] || python3 scripts/peers/gen_events.py 1000000 "$work/ev2m.ndjson"
  [ -f "$work/ev20m.ndjson" ] || python3 scripts/peers/gen_events.py 10000000 "$work/ev20m.ndjson"

  echo "== full, 2M events (1M trips, 30 days, shuffled): fresh state, KPIs at the end"
  hyperfine --runs 5 --export-markdown "$work/full-2m.md" \
    --prepare "rm -rf $work/state-2m && sync" \
    -n "tripflow replay" "$bin replay --state $work/state-2m $work/ev2m.ndjson" \
    -n "tripflow --native replay" "$bin --native replay --state $work/state-2m $work/ev2m.ndjson" \
    -n "tripflow replay --threads 1" "$bin replay --threads 1 --state $work/state-2m $work/ev2m.ndjson" \
    -n "duckdb, 2 threads" "$py scripts/peers/duckdb_kpis.py $work/ev2m.ndjson 2"
  echo "== full, 20M events (10M trips, 30 days, shuffled)"
  hyperfine --runs 2 --export-markdown "$work/full-20m.md" \
    --prepare "rm -rf $work/state-20m && sync" \
    -n "tripflow replay" "$bin replay --state $work/state-20m $work/ev20m.ndjson" \
    -n "tripflow --native replay" "$bin --native replay --state $work/state-20m $work/ev20m.ndjson" \
    -n "duckdb, 2 threads" "$py scripts/peers/duckdb_kpis.py $work/ev20m.ndjson 2"
  echo "== peak memory, full (GNU time)"
  for n in 2m 20m; do
    rm -rf "$work/state-$n"
    /usr/bin/time -f "tripflow replay, $n: peak RSS %M KiB, %e s" $bin replay --state "$work/state-$n" "$work/ev$n.ndjson" >/dev/null
    /usr/bin/time -f "duckdb, $n: peak RSS %M KiB, %e s" "$py" scripts/peers/duckdb_kpis.py "$work/ev$n.ndjson" 2 >/dev/null
  done
  # The same 20M store reopened by a writer: the closed trips are mapped from closed.snap.
  /usr/bin/time -f "reopen the 20M store for writing, replay nothing: %M KiB, %e s" \
    $bin replay --state "$work/state-20m" /dev/null >/dev/null
  rm -rf "$work/state-20m"

  echo "== incremental: 30 days loaded, one more day arrives (scripts/peers/gen_next_day.py)"
  mkdir -p "$work/inc"
  [ -f "$work/inc/day31.ndjson" ] ||
    python3 scripts/peers/gen_next_day.py "$work/ev2m.ndjson" "$work/inc/history.ndjson" "$work/inc/day31.ndjson"
  rm -rf "$work/state-hist" "$work/hist.duckdb"
  $bin replay --state "$work/state-hist" "$work/inc/history.ndjson" >/dev/null
  "$py" scripts/peers/duckdb_incremental.py "$work/hist.duckdb" load "$work/inc/history.ndjson" >/dev/null
  # Each run starts from the loaded history, copied and synced (so no run flushes the copy).
  hyperfine --runs 10 --export-markdown "$work/incremental.md" \
    --prepare "rm -rf $work/state-inc $work/inc.duckdb && cp -r $work/state-hist $work/state-inc && cp $work/hist.duckdb $work/inc.duckdb && sync" \
    -n "tripflow replay of the day onto the store, KPIs of all days" \
    "$bin replay --state $work/state-inc --kpi-out $work/inc-tripflow.csv $work/inc/day31.ndjson" \
    -n "duckdb, persistent database: insert the day, recompute the touched days" \
    "$py scripts/peers/duckdb_incremental.py $work/inc.duckdb add $work/inc/day31.ndjson --csv $work/inc-duckdb.csv" \
    -n "duckdb, recompute from all files" \
    "$py scripts/peers/duckdb_kpis.py '$work/inc/*.ndjson' 2"
  cmp "$work/inc-tripflow.csv" "$work/inc-duckdb.csv" && echo "incremental: tripflow's KPI CSV == DuckDB's"
  # Where the new day's time goes: the replay alone, then kpi with the saved totals.
  rm -rf "$work/state-inc" && cp -r "$work/state-hist" "$work/state-inc" && sync
  /usr/bin/time -f "the day's replay: %e s, %U s user, %S s system, peak RSS %M KiB" \
    $bin replay --state "$work/state-inc" "$work/inc/day31.ndjson" >/dev/null
  /usr/bin/time -f "kpi after it: %e s, peak RSS %M KiB" $bin kpi --state "$work/state-inc" >/dev/null

  cargo bench --locked -p tripflow-runtime --bench core
}

aws() {
  scripts/install-local-aws.sh >/dev/null
  # The deployable artifact: the bootstrap and the component precompiled for its wasmtime.
  scripts/package-lambda.sh >/dev/null
  cargo build --release --locked -q -p tripflow -p tripflow-local
  local local=target/release/tripflow-local python=tools/local-aws/venv/bin/python
  # 10,000 generated trips (20,000 events, time order) for both designs.
  [ -f "$work/aws-20k.ndjson" ] || target/release/tripflow generate --trips 10000 --seed 7 --out "$work/aws-20k.ndjson"

  echo "== DynamoDB units per completed trip: tripflow (in order, out of order, duplicates) and the seed"
  $local capacity --trips 2000
  echo "== CPU per record: tripflow's ingest and matcher bootstraps, and the seed's ingest handler, same events"
  $local cpu --bootstrap dist/lambda/bootstrap --seed-script scripts/peers/seed_pipeline.py \
    --python "$python" "$work/aws-20k.ndjson"
  echo "== cold start, process start to first batch answered (precompiled component)"
  $local cold-start --bootstrap dist/lambda/bootstrap --component dist/lambda/tripflow.cwasm --runs 21
}

spark() {
  command -v hyperfine >/dev/null || { echo "install hyperfine (apt-get install hyperfine)"; exit 1; }
  cargo build --release --locked -q -p tripflow
  local bin=target/release/tripflow venv
  venv=$(scripts/install-spark.sh)
  export TRIPFLOW_CACHE_DIR="$work/cache" TRIPFLOW_BIN="$bin"
  local pvenv=target/peers-venv
  [ -x "$pvenv/bin/python" ] || python3 -m venv "$pvenv"
  "$pvenv/bin/pip" install -q -r scripts/peers/requirements.txt
  [ -f "$work/ev2m.ndjson" ] || python3 scripts/peers/gen_events.py 1000000 "$work/ev2m.ndjson"
  $bin component >/dev/null
  # Whole commands, JVM start included: what a user waits for.
  hyperfine --runs 3 --export-markdown "$work/spark-2m.md" \
    --prepare "rm -rf $work/state-2m" \
    -n "tripflow replay + kpi, 2M events" "$bin replay --state $work/state-2m --kpi-out $work/replay-2m.csv $work/ev2m.ndjson" \
    -n "tripflow-spark kpis, local[2], 4 partitions" "scripts/tripflow-spark kpis --master 'local[2]' --partitions 4 --kpi-out $work/spark-2m.csv $work/ev2m.ndjson" \
    -n "duckdb, 2 threads" "$pvenv/bin/python scripts/peers/duckdb_kpis.py $work/ev2m.ndjson 2"
  cmp "$work/replay-2m.csv" "$work/spark-2m.csv" && echo "spark CSV == replay CSV"
  # Per core: both pinned to one CPU; the job's own time (its log line) leaves the JVM's start out.
  echo "== one core: the replay (taskset -c 0)"
  rm -rf "$work/state-2m"
  /usr/bin/time -f "replay on one core: %e s wall, %U s user, %S s system, peak RSS %M KiB" \
    taskset -c 0 $bin replay --state "$work/state-2m" "$work/ev2m.ndjson" >/dev/null
  echo "== one core: the Spark job, local[1] (taskset -c 0)"
  taskset -c 0 scripts/tripflow-spark kpis --master 'local[1]' --partitions 4 \
    --kpi-out "$work/spark-2m-1core.csv" "$work/ev2m.ndjson" 2>&1 >/dev/null | grep "done in"
  # The same job twice in one JVM on one core: the second run is warm (Python workers started,
  # JIT compiled), as a long job's later stages are.
  echo "== one core, warm: the job run twice in one Spark session, local[1] (taskset -c 0)"
  PYTHONPATH=hosts/spark PYSPARK_PYTHON="$venv/bin/python" taskset -c 0 "$venv/bin/python" - "$work/ev2m.ndjson" <<'PY' 2>&1 | grep "done in"
import os, sys
from pyspark.sql import SparkSession
from tripflow_spark import job
spark = (SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
for _ in range(2):
    job.run(spark, job.Options(inputs=[sys.argv[1]], binary=os.environ["TRIPFLOW_BIN"], partitions=4))
spark.stop()
PY
  # Peak memory of one resolve worker on a bucket of the 2M file (4 buckets, so 1/4 of it).
  $bin partition parse --input-index 0 --name ev2m --buckets 4 "$work/ev2m.ndjson" > "$work/parsed.bin"
  python3 - "$work/parsed.bin" "$work/bucket0.bin" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
names = b'["ev2m"]'
out = [struct.pack("<BIQ", 7, 0, len(names)) + names]
i = 0
while i < len(data):
    tag, bucket, n = struct.unpack_from("<BIQ", data, i)
    if bucket == 0:
        out.append(data[i : i + 13 + n])
    i += 13 + n
open(sys.argv[2], "wb").write(b"".join(out))
PY
  /usr/bin/time -f "parse worker, whole 2M file (one split): %e s, peak RSS %M KiB" \
    $bin partition parse --input-index 0 --name ev2m --buckets 4 "$work/ev2m.ndjson" >/dev/null
  /usr/bin/time -f "resolve worker, one of 4 buckets ($(du -h "$work/bucket0.bin" | cut -f1) of frames): %e s, peak RSS %M KiB" \
    $bin partition resolve --timezone UTC --arrival-ns "$(date +%s%N)" < "$work/bucket0.bin" >/dev/null
}

stepfunctions() {
  cargo build --release --locked -q -p tripflow -p tripflow-lambda -p tripflow-local
  # 20 trips a day for three years (2024-01-01 .. 2026-12-30, UTC starts), shuffled: kinesis-mock
  # takes minutes per 100,000 records, and the execution's time does not depend on the stream.
  [ -f "$work/3y.ndjson" ] || python3 scripts/peers/gen_events.py 21900 "$work/3y.ndjson" 1095
  for c in 1 4; do
    echo "== KPI state machine, 31-day chunks, max_concurrency $c"
    target/release/tripflow-local run --timezone America/New_York \
      --bootstrap target/release/tripflow-lambda --via-step-functions --chunk-days 31 \
      --max-concurrency "$c" --from 2024-01-01 --to 2026-12-31 "$work/3y.ndjson" \
      2>&1 >"$work/sfn-$c.csv" | grep -E "KPI state machine|records sent"
  done
  rm -rf "$work/state-3y"
  target/release/tripflow replay --state "$work/state-3y" "$work/3y.ndjson" >/dev/null
  target/release/tripflow kpi --state "$work/state-3y" --timezone America/New_York \
    --from 2024-01-01 --to 2026-12-31 --out "$work/kpi-3y.csv" 2>/dev/null
  cmp "$work/sfn-1.csv" "$work/kpi-3y.csv" && cmp "$work/sfn-4.csv" "$work/kpi-3y.csv" &&
    echo "both executions' combined CSV == tripflow kpi"
}

audit() {
  command -v hyperfine >/dev/null || { echo "install hyperfine (apt-get install hyperfine)"; exit 1; }
  cargo build --release --locked -q -p tripflow -p tripflow-local
  local bin=$PWD/target/release/tripflow
  export TRIPFLOW_CACHE_DIR="$PWD/$work/cache"
  local fixture
  fixture=$PWD/$(scripts/build-fixture-component.sh)
  $bin component --export-wasm "$work/current.wasm" >/dev/null
  $bin --component "$fixture" component >/dev/null # the compile cache, for both
  $bin --component "$work/current.wasm" component >/dev/null
  [ -f "$work/100k-pipeline.ndjson" ] || $bin generate --trips 50000 --seed 22 --duplicates 0.02 \
    --shuffle --poison 0.001 --out "$work/100k-pipeline.ndjson"
  [ -f "$work/ev2m.ndjson" ] || python3 scripts/peers/gen_events.py 1000000 "$work/ev2m.ndjson"

  # Through the pipeline (in-process functions, DynamoDB Local, kinesis-mock, moto), kept as
  # production would hold it; kinesis-mock takes minutes per 100,000 records.
  # The NYC sample shuffled, every 7th record twice, KPI days in New York; the generated file
  # as it is (shuffled, 2% duplicates, 0.1% bad records), KPI days in UTC.
  local name input zone send
  for name in nyc 100k; do
    if [ "$name" = nyc ]; then
      input=fixtures/cases/nyc-tlc-2019-03/input-1.ndjson zone=America/New_York
      send="--shuffle-seed 1 --duplicate-every 7"
    else
      input=$work/100k-pipeline.ndjson zone=UTC send=""
    fi
    if [ ! -d "$work/keep-$name" ]; then
      # shellcheck disable=SC2086 # $send is two flags or none
      /usr/bin/time -f "pipeline run $name: %e s" target/release/tripflow-local run \
        --timezone $zone $send --keep "$work/keep-$name" "$input" >/dev/null
    fi
    echo "== audit of the $name pipeline run"
    (cd "$work/keep-$name" && $bin audit export --published daily_trip_kpis.csv \
      --rejects rejects.ndjson --table tripflow --timezone $zone)
    # Baseline: what the audit does, by hand from the same NDJSON the pipeline was sent.
    hyperfine --runs 5 --export-markdown "$work/audit-$name.md" \
      --prepare "rm -rf $work/state-audit" \
      -n "tripflow audit (export + kept rejects)" \
      "cd $work/keep-$name && $bin audit export --published daily_trip_kpis.csv --rejects rejects.ndjson --timezone $zone" \
      -n "tripflow replay + kpi of the sent NDJSON" \
      "$bin replay --state $work/state-audit --timezone $zone $input && $bin kpi --state $work/state-audit --timezone $zone --out /dev/null"
  done
  echo "== diff, 2M events: the built-in component against the changed-rule fixture"
  hyperfine --runs 3 --export-markdown "$work/diff-2m.md" \
    --prepare "rm -rf $work/state-a $work/state-b" \
    -n "tripflow diff" \
    "$bin diff --component $work/current.wasm --component $fixture $work/ev2m.ndjson >/dev/null || test \$? = 1" \
    -n "two tripflow replays (baseline)" \
    "$bin --component $work/current.wasm replay --state $work/state-a $work/ev2m.ndjson >/dev/null && $bin --component $fixture replay --state $work/state-b $work/ev2m.ndjson >/dev/null"
  /usr/bin/time -f "diff 2M: %e s, peak RSS %M KiB" \
    $bin diff --component "$work/current.wasm" --component "$fixture" "$work/ev2m.ndjson" \
    --limit 3 | tail -1 || true
}

case $what in
  audit) audit ;;
  replay) replay ;;
  stepfunctions) stepfunctions ;;
  aws) aws ;;
  spark) spark ;;
  all) replay; aws; spark; stepfunctions; audit ;;
  *) echo "usage: scripts/bench.sh [replay|aws|spark|stepfunctions|audit|all]" >&2; exit 2 ;;
esac
