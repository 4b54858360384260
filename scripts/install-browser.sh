#!/usr/bin/env bash
# Installs what the report's browser test (hosts/cli/tests/report.rs) drives: Debian's Chromium
# (/usr/bin/chromium, from the Debian archive) and playwright-core, pinned by
# tools/browser/package-lock.json, into tools/browser/node_modules (git-ignored; playwright-core
# downloads no browser of its own). Idempotent: does nothing when both are present.
set -euo pipefail
cd "$(dirname "$0")/../tools/browser"

if [[ ! -x /usr/bin/chromium ]]; then
    if ! command -v apt-get >/dev/null; then
        echo "error: /usr/bin/chromium not found and apt-get is not available: install Chromium (Debian package chromium) by hand" >&2
        exit 1
    fi
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "error: installing chromium needs root: run 'apt-get install chromium' as root" >&2; exit 1; }
        sudo="sudo"
    fi
    # Refresh the package lists only when the first try fails (a fresh machine may have none).
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
        || { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; }
fi

command -v npm >/dev/null || { echo "error: npm not found: install Node.js 18+ (it drives Chromium)" >&2; exit 1; }
stamp=$(sha256sum package-lock.json | cut -c1-16)
if [[ "$(cat node_modules/.tripflow-stamp 2>/dev/null)" != "$stamp" ]]; then
    npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
    echo "$stamp" >node_modules/.tripflow-stamp
fi
echo "browser ready: $(/usr/bin/chromium --version 2>/dev/null), playwright-core in tools/browser"
