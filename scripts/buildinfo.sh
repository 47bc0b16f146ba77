# Sourced by scripts/package.sh and scripts/compile.sh: what is being built, and how to bake it in.
#   NM_VERSION  the tag (v1.2.3 → 1.2.3) when HEAD is tagged, else <src/version.ts VERSION>+g<commit>,
#               with ".dirty" when tracked files are modified; NETMANAGER_VERSION in the environment wins.
#   NM_COMMIT   short commit hash (+"-dirty"), "unknown" outside git.
#   DENO_VERSION  the Deno the project is pinned to (from scripts/bootstrap.sh).
#   nm_bake DIR   rewrites DIR/src/version.ts (a copy of the sources) with NM_VERSION and NM_COMMIT.
# shellcheck shell=bash
nm_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DENO_VERSION=$(sed -n 's/^DENO_VERSION=//p' "$nm_root/scripts/bootstrap.sh")
NM_COMMIT=$(git -C "$nm_root" rev-parse --short HEAD 2>/dev/null || echo unknown)
nm_dirty=""
if [ "$NM_COMMIT" != unknown ] && [ -n "$(git -C "$nm_root" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  nm_dirty=1
  NM_COMMIT="$NM_COMMIT-dirty"
fi
if [ -n "${NETMANAGER_VERSION:-}" ]; then
  NM_VERSION=$NETMANAGER_VERSION
elif tag=$(git -C "$nm_root" describe --tags --exact-match 2>/dev/null); then
  NM_VERSION=${tag#v}${nm_dirty:+.dirty}
else
  NM_VERSION="$(sed -n 's/^export const VERSION = "\(.*\)";/\1/p' "$nm_root/src/version.ts")"
  [ "$NM_COMMIT" = unknown ] || NM_VERSION="$NM_VERSION+g${NM_COMMIT%-dirty}${nm_dirty:+.dirty}"
fi
if ! [[ $NM_VERSION =~ ^[0-9][0-9A-Za-z.+~-]*$ ]]; then
  echo "buildinfo: version \"$NM_VERSION\" must start with a digit and use only 0-9 A-Z a-z . + ~ -" >&2
  exit 1
fi

nm_bake() {
  sed -i -e "s/^export const VERSION = \".*\";/export const VERSION = \"${NM_VERSION}\";/" \
    -e "s/^export const COMMIT = \".*\";/export const COMMIT = \"${NM_COMMIT}\";/" "$1/src/version.ts"
  grep -q "VERSION = \"${NM_VERSION}\"" "$1/src/version.ts" && grep -q "COMMIT = \"${NM_COMMIT}\"" "$1/src/version.ts" || {
    echo "buildinfo: could not bake the version into $1/src/version.ts" >&2
    return 1
  }
}
