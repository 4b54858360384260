#!/usr/bin/env bash
# The Spark host's pinned Python environment: target/tripflow-spark/venv with pyspark, boto3,
# pytest and ruff from hosts/spark/requirements.txt (a no-op when it is up to date). Prints the
# venv's path. Spark itself needs Java 8, 11 or 17 on the PATH.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/tripflow-spark/venv"
requirements="$root/hosts/spark/requirements.txt"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/requirements.txt"; then
  echo "tripflow-spark: installing the pinned pyspark and boto3 into $venv (once)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
  cp "$requirements" "$venv/requirements.txt"
fi
echo "$venv"
