#!/usr/bin/env bash
# Every check of the project, as CI runs it: formatting, lints, the CloudFormation linter on
# the SAM template, and all tests (unit, property, component-vs-native, CLI, the conformance
# runner over the freshly built component, the report page in headless Chromium, and the AWS
# pipeline end to end on DynamoDB Local, kinesis-mock and moto, which
# scripts/install-local-aws.sh installs first).
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean build and the tests take about 7 GB (target/, the local engines, the browser); say so
# up front rather than failing mid-build with "No space left on device".
free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ "$free_kb" -lt $((8 * 1024 * 1024)) ]; then
  echo "warning: $((free_kb / 1024 / 1024)) GB free on this disk; a clean build and the tests need about 7 GB" >&2
fi

# rust-toolchain.toml pins the toolchain; make sure its target and tools are present even when
# the toolchain was installed before this checkout existed.
rustup target add wasm32-wasip2 >/dev/null
rustup component add rustfmt clippy >/dev/null

# The local AWS engines and cfn-lint (pinned, into tools/local-aws; a no-op when present).
scripts/install-local-aws.sh
# Debian's Chromium and playwright-core for the report's browser test (a no-op when present).
scripts/install-browser.sh
# The Spark host's pinned pyspark, boto3, pytest and ruff (a no-op when present).
spark_venv=$(scripts/install-spark.sh)

cargo fmt --all -- --check
tools/local-aws/venv/bin/cfn-lint deploy/template.yaml
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p tripflow-component --target wasm32-wasip2 --locked -- -D warnings
"$spark_venv/bin/ruff" check hosts/spark
"$spark_venv/bin/ruff" format --check hosts/spark
# Includes the conformance runner binary against an exported component file
# (hosts/conformance/tests/runner.rs) and over the embedded one (tests/conformance.rs).
# The test fixture component with a deliberately changed rule, for the tests of `tripflow diff`.
TRIPFLOW_FIXTURE_COMPONENT="$PWD/$(scripts/build-fixture-component.sh)"
export TRIPFLOW_FIXTURE_COMPONENT
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# The Spark host on real Spark (local[2]) against the replay, with the tripflow binary the
# tests above built; moto's server stands in for S3.
spark_log=$(mktemp)
trap 'rm -f "$log" "$spark_log"' EXIT
(cd hosts/spark && TRIPFLOW_BIN="$PWD/../../target/debug/tripflow" \
  "$spark_venv/bin/python" -m pytest -q -p no:cacheprovider tests) 2>&1 | tee "$spark_log"
# cargo prints one summary per test binary (the last is often an empty doc-test run), pytest
# one line; close with the total so a reader of the last line sees what ran.
awk '/^test result:/ { p += $4; f += $6 }
     /^[0-9]+ (passed|failed)/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log" "$spark_log"
