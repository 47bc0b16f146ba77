#!/usr/bin/env bash
# The demo on a fresh Debian machine, as root: installs what is missing, then runs `netmanager demo`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
deno=$(bash "$root/scripts/bootstrap.sh" | tail -n 1)
cd "$root"
exec "$deno" run -A main.ts demo "$@"
