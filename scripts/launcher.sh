#!/bin/sh
# netmanager launcher (bin/netmanager of a release): runs the bundled program with the bundled Deno,
# offline: every npm dependency is in lib/deno-dir, and --cached-only forbids any download.
set -e
self=$(readlink -f "$0")
top=${self%/bin/*}
export DENO_DIR="$top/lib/deno-dir"
export DENO_NO_UPDATE_CHECK=1
# How the program starts itself again (the demo's daemons): through this launcher.
export NETMANAGER_SELF="$self"
exec "$top/lib/deno" run --cached-only --frozen --no-prompt --config "$top/lib/app/deno.json" \
  --allow-read --allow-write --allow-net --allow-env --allow-run --allow-ffi --allow-sys \
  "$top/lib/app/main.ts" "$@"
