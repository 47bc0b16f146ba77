#!/usr/bin/env bash
# Builds one self-contained netmanager executable per architecture with `deno compile`:
#   dist/netmanager-x86_64-unknown-linux-gnu, dist/netmanager-aarch64-unknown-linux-gnu
# The version and commit are baked in (scripts/buildinfo.sh). deno compile needs Deno's `denort` runtime,
# which it downloads from dl.deno.land; where that host is unreachable, use scripts/package.sh instead
# (it needs only the npm registry).
# DENORT_BIN: path to a denort runtime to use instead of downloading one (offline builds; only for the
# architecture it was built for). TARGETS: override the list of target triples.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
deno=${DENO:-$(command -v deno || echo "$root/.tools/node_modules/.bin/deno")}
[ -x "$deno" ] || { echo "compile: deno not found (run scripts/bootstrap.sh)" >&2; exit 1; }
targets=${TARGETS:-"x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu"}
# shellcheck source=buildinfo.sh
source "$root/scripts/buildinfo.sh"
version=$NM_VERSION

# Bake the version into a copy of the sources so the work tree stays clean.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -r deno.json deno.lock main.ts src ffi config "$build/"
nm_bake "$build"
# V8 flags baked into the binary. A compiled binary ignores DENO_V8_FLAGS and takes no --v8-flags when
# run (deno's standalone runtime initialises V8 with the flags given here only), so the control plane's
# memory limit (1 MB semi-spaces, as scripts/launcher.sh runs `control`; issue 14's RSS target) is set
# here, for every command of the binary: the daemon's RSS did not change measurably with it (README,
# Memory). tests/unit/control_v8_flags_test.ts checks it against the launcher's. The launcher's
# --optimize-for-size for `control` is left out here: baked in, it would apply to the daemon's data
# plane too, whose speed it was not measured for.
v8_flags=--max-semi-space-size=1
mkdir -p dist
failed=0
for t in $targets; do
  out="$root/dist/netmanager-$t"
  echo "compile: $t → $out (version $version)" >&2
  log=$(mktemp)
  if (cd "$build" && "$deno" compile --frozen -A --v8-flags="$v8_flags" --target "$t" --include config -o "$out" main.ts) >"$log" 2>&1; then
    # A binary for this machine's architecture must actually run (a DENORT_BIN that is the deno CLI
    # instead of the denort runtime produces one that does not).
    if [ "$t" = "$(uname -m)-unknown-linux-gnu" ] && ! "$out" version >/dev/null 2>&1; then
      echo "compile: $out does not run; DENORT_BIN must point to a denort runtime of deno $("$deno" --version | head -1 | cut -d' ' -f2), not the deno CLI" >&2
      rm -f "$out"
      failed=1
      continue
    fi
    echo "compile: ok $(du -h "$out" | cut -f1)" >&2
  else
    if grep -qiE "denort|download|dns error|failed to fetch|connect" "$log"; then
      echo "compile: the Deno runtime (denort) for $t cannot be obtained: this machine cannot download it." >&2
      echo "compile: set DENORT_BIN to a local denort binary for $t, or build where the Deno release host is reachable." >&2
    fi
    sed 's/^/  /' "$log" >&2
    failed=1
  fi
  rm -f "$log"
done
exit $failed
