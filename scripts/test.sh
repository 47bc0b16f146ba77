#!/usr/bin/env bash
# The full test suite on a fresh Debian machine, as root: installs what is missing, then runs
# every test and ends with "N passed, M failed[, K skipped]".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
deno=$(bash "$root/scripts/bootstrap.sh" | tail -n 1)
cd "$root"
exec "$deno" run -A scripts/test.ts "$@"
