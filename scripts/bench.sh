#!/usr/bin/env bash
# Every benchmark in one command on a fresh Debian machine, as root: installs what is missing
# (scripts/bootstrap.sh), then runs scripts/bench.ts with the given flags (--quick, --smoke, --only …;
# see its header). Writes bench-results/<run>/bench.json and bench.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
deno=$(bash "$root/scripts/bootstrap.sh" | tail -n 1)
cd "$root"
exec "$deno" run -A scripts/bench.ts "$@"
