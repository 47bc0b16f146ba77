#!/bin/sh
# netmanager launcher (bin/netmanager of a release): runs the bundled program with the bundled Deno,
# offline: the npm dependencies are in lib/app/node_modules and --cached-only forbids any download.
# The release is never written to; Deno keeps its caches (transpiled code) in DENO_DIR.
set -e
self=$(readlink -f "$0")
top=${self%/bin/*}
if [ -z "${DENO_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ]; then DENO_DIR=/var/cache/netmanager
  else DENO_DIR=${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/netmanager; fi
  export DENO_DIR
fi
export DENO_NO_UPDATE_CHECK=1
# How the program starts itself again (the demo's daemons): through this launcher.
export NETMANAGER_SELF="$self"
# The daemon runs without V8's code cache: the cache (an mmap'd SQLite file and bytecode compiled
# eagerly from it) costs a long-running daemon ~3 MB resident; start-up was not measurably slower.
# Short-lived commands keep it.
# V8 maps its builtins a second time next to each isolate's code (short builtin calls): ~2 MB resident
# per isolate, i.e. the main one and every data-plane Worker. The daemon calls them through the
# binary's single copy instead (--no-short-builtin-calls, as V8 does by itself on hosts with little
# memory): with two Workers idle 79.5 instead of 84.6 MB.
# The daemon runs the minified, chunked bundle (scripts/package.sh): it loads only the code it uses,
# one script per chunk instead of ~200 modules, and is 5-10 MB smaller idle. Other commands run the
# sources.
# The control plane keeps its state in memory and every allocation adds to it: V8 doubles its young
# generation whenever as much as its size survived, up to 3 × 16 MB, which at 50k allocations was
# ~13 MB resident for nothing (issue 14's RSS target); 1 MB semi-spaces keep each scavenge short too.
# --optimize-for-size makes V8 grow the old generation in smaller steps and compact more: at 50k
# allocations through the HTTP API the control plane grew 20.5 instead of 33.4 MiB, p50/p99 unchanged
# (3.43/12.7 vs 3.42/12.8 ms; two more pairs 22.4/29.9 and 22.8/27.2 MiB; run side by side, busy machine).
# scripts/bench_store.ts starts the control plane with the same flag (CONTROL_V8_FLAGS).
daemon_opts=
main="$top/lib/app/main.ts"
case "${1:-}" in
  daemon | debug)
    daemon_opts="--no-code-cache --v8-flags=--no-short-builtin-calls"
    [ -f "$top/lib/app/src/bundle/main.js" ] && main="$top/lib/app/src/bundle/main.js"
    ;;
  control)
    daemon_opts="--v8-flags=--max-semi-space-size=1,--optimize-for-size"
    ;;
esac
if [ "$main" != "$top/lib/app/main.ts" ]; then
  # Fill DENO_DIR's module-analysis cache for the bundle first (0.3 s once warm): a daemon that parses
  # its chunks itself (first start on this machine) keeps ~20 MB more resident for its whole life.
  "$top/lib/deno" cache --quiet --frozen --node-modules-dir=manual --config "$top/lib/app/deno.json" "$main" \
    >/dev/null 2>&1 || true
fi
# shellcheck disable=SC2086 # $daemon_opts is words or none
exec "$top/lib/deno" run --cached-only --frozen --no-prompt --node-modules-dir=manual $daemon_opts \
  --config "$top/lib/app/deno.json" \
  --allow-read --allow-write --allow-net --allow-env --allow-run --allow-ffi --allow-sys \
  "$main" "$@"
