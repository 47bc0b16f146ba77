#!/usr/bin/env bash
# Builds release packages that install and run offline, per architecture, with no network access
# beyond the npm registry (Deno comes from npm too):
#   dist/netmanager-<version>-linux-<arch>.tar.gz   unpack anywhere, run bin/netmanager, or ./install.sh
#   dist/netmanager_<version>_<debarch>.deb          dpkg -i (installs under /usr, units in /lib/systemd)
# Each holds the Deno runtime of its architecture (npm @deno/linux-<x64|arm64>-glibc at the pinned
# version), the program with the version baked in and its npm dependencies (lib/app/node_modules; run
# with --cached-only), the bin/netmanager launcher, configs and systemd units.
#   scripts/package.sh [--arch x86_64|aarch64|all] [--no-deb] [--out DIR]
# Downloads are cached in .cache/ (NETMANAGER_CACHE): a second build needs no network at all.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=buildinfo.sh
source "$root/scripts/buildinfo.sh"

archs="x86_64 aarch64"
deb=1
out="$root/dist"
while [ $# -gt 0 ]; do
  case $1 in
    --arch) [ "${2:-}" = all ] && archs="x86_64 aarch64" || archs=${2:-}; shift 2 ;;
    --no-deb) deb=""; shift ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "package: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for a in $archs; do
  case $a in x86_64 | aarch64) ;; *) echo "package: unknown architecture $a (x86_64, aarch64)" >&2; exit 2 ;; esac
done

deno=${DENO:-$(command -v deno || echo "$root/.tools/node_modules/.bin/deno")}
[ -x "$deno" ] || { echo "package: deno not found (run scripts/bootstrap.sh)" >&2; exit 1; }
# The cache below is written by this deno and read by the bundled one: they must be the same version.
host_deno=$("$deno" --version | head -1 | cut -d' ' -f2)
[ "$host_deno" = "$DENO_VERSION" ] || {
  echo "package: deno $host_deno found, the project is pinned to $DENO_VERSION (run scripts/bootstrap.sh)" >&2
  exit 1
}
for tool in npm tar gzip; do
  command -v "$tool" >/dev/null || { echo "package: $tool is needed (scripts/bootstrap.sh)" >&2; exit 1; }
done
[ -z "$deb" ] || command -v dpkg-deb >/dev/null || {
  echo "package: dpkg-deb is needed for the .deb (apt-get install dpkg), or pass --no-deb" >&2
  exit 1
}
cache=${NETMANAGER_CACHE:-$root/.cache}
mkdir -p "$cache" "$out"
work=$(mktemp -d)
jobs_pids=()
# on any exit: stop the architectures' builds still running (an error or a signal), then the work dir
cleanup() {
  local p
  for p in "${jobs_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# Reproducible archives: file times are the commit's.
epoch=$(git log -1 --format=%ct 2>/dev/null || date +%s)

# 1. The program, with version and commit baked in (shared by every architecture).
app="$work/app"
mkdir -p "$app"
cp -r deno.json deno.lock main.ts src ffi config "$app/"
nm_bake "$app"
# The daemon's main program minified and split into chunks (src/bundle/main.js; the launcher runs it
# for daemon/debug): the daemon loads only the chunks it imports (not the CLI, the control plane, the
# MQTT client until used) and one script per chunk instead of ~200 TypeScript modules — idle ~5-10 MB
# less resident. src/bundle/ is at the depth of the sources, so that the paths the code forms from
# import.meta.url (../../config/, ../../main.ts) name the same files.
"$deno" bundle --quiet --minify --code-splitting --outdir "$app/src/bundle" "$app/main.ts"
# The data-plane Worker minified (src/proxy/dataplane.ts loads ./worker.bundle.js when present): each
# worker isolate then holds ~4 MB less than with its ~30 TypeScript modules. Split into chunks too, so
# that what it loads on demand (the handshakes, with node:crypto: ~3-4 MB per isolate) stays out of
# the workers of a node without tunnel security (scripts/worker_bundle.ts). Its files go next to the
# sources and next to the main program's chunks (names carry their content's hash; a clash fails).
"$deno" run -A "$root/scripts/worker_bundle.ts" "$app" "$app/src/proxy" "$app/src/bundle"

# 2. Its npm dependencies, installed into lib/app/node_modules from the locked versions (downloads are
# cached), then checked without network and with an empty DENO_DIR, as the launcher runs it (a root
# build runs that check in an empty network namespace): a missing package fails here, not on a node.
(cd "$app" && DENO_DIR="$cache/deno-dir" "$deno" install --quiet --frozen --node-modules-dir=auto)
offline=()
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then offline=(unshare -n); fi
(cd / && DENO_DIR="$work/deno-dir" "${offline[@]}" "$deno" run --quiet --cached-only --frozen --no-prompt \
  --node-modules-dir=manual --config "$app/deno.json" -A "$app/main.ts" version >/dev/null) || {
  echo "package: the program does not run from its own node_modules (see above)" >&2
  exit 1
}
(cd / && DENO_DIR="$work/deno-dir" "${offline[@]}" "$deno" run --quiet --cached-only --frozen --no-prompt \
  --node-modules-dir=manual --config "$app/deno.json" -A "$app/src/bundle/main.js" version >/dev/null) || {
  echo "package: the bundled program does not run offline (see above)" >&2
  exit 1
}
rm -rf "$work/deno-dir"

# The Deno runtime for an architecture, from npm (integrity checked by npm), cached.
deno_runtime() { # <npm arch> <dest>
  local pkg="@deno/linux-$1-glibc" tgz="$cache/deno-linux-$1-glibc-$DENO_VERSION.tgz"
  if ! [ -s "$tgz" ]; then
    echo "package: fetching $pkg@$DENO_VERSION from npm" >&2
    (cd "$cache" && npm pack --silent "$pkg@$DENO_VERSION" >/dev/null)
  fi
  mkdir "$work/rt-$1"
  tar -xzf "$tgz" -C "$work/rt-$1" package/deno
  mv "$work/rt-$1/package/deno" "$2"
  chmod 0755 "$2"
  rm -rf "$work/rt-$1"
}

# One architecture's archive and .deb. The architectures build side by side (each in its own
# directories under $work; gzip is single-threaded): the same bytes as one after another.
build_arch() { # <arch>
  local arch=$1 npm_arch deb_arch name tree tar_opts deb_version d size recommends debfile u
  case $arch in
    x86_64) npm_arch=x64 deb_arch=amd64 ;;
    aarch64) npm_arch=arm64 deb_arch=arm64 ;;
  esac
  name="netmanager-$NM_VERSION-linux-$arch"
  tree="$work/$name"
  mkdir -p "$tree/bin" "$tree/lib" "$tree/config" "$tree/systemd"
  install -m 0755 "$root/scripts/launcher.sh" "$tree/bin/netmanager"
  deno_runtime "$npm_arch" "$tree/lib/deno"
  cp -r "$app" "$tree/lib/app"
  install -m 0644 config/netcfg.json config/tuncfg.json config/netmanager.env config/control.env "$tree/config/"
  install -m 0644 config/netmanager.service config/netmanager-control.service "$tree/systemd/"
  install -m 0755 scripts/install.sh "$tree/install.sh"
  install -m 0644 README.md "$tree/README.md"
  printf 'version=%s\ncommit=%s\narch=%s\ndeno=%s\n' "$NM_VERSION" "$NM_COMMIT" "$arch" "$DENO_VERSION" \
    >"$tree/BUILD_INFO"
  tar_opts=(--sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch")
  tar "${tar_opts[@]}" -C "$work" -cf - "$name" | gzip -6 -n >"$out/$name.tar.gz"
  echo "package: $out/$name.tar.gz ($(du -h "$out/$name.tar.gz" | cut -f1))" >&2

  if [ -n "$deb" ]; then
    # The same tree under /usr/lib/netmanager, /usr/bin/netmanager → it, units in /lib/systemd/system,
    # configs in /etc/netmanager as conffiles.
    deb_version=$(printf '%s' "$NM_VERSION" | tr '-' '~')
    d="$work/deb-$arch"
    mkdir -p "$d/DEBIAN" "$d/usr/lib" "$d/usr/bin" "$d/lib/systemd/system" "$d/etc/netmanager" \
      "$d/usr/share/doc/netmanager"
    cp -a "$tree" "$d/usr/lib/netmanager"
    rm "$d/usr/lib/netmanager/install.sh" # dpkg owns these files
    ln -s ../lib/netmanager/bin/netmanager "$d/usr/bin/netmanager"
    for u in netmanager.service netmanager-control.service; do
      sed -e 's|/usr/local/bin/netmanager|/usr/bin/netmanager|g' \
        -e 's|/usr/local/share/doc/netmanager|/usr/share/doc/netmanager|g' "config/$u" >"$d/lib/systemd/system/$u"
    done
    install -m 0644 config/netcfg.json config/tuncfg.json config/netmanager.env config/control.env "$d/etc/netmanager/"
    install -m 0644 README.md "$d/usr/share/doc/netmanager/README.md"
    (cd "$d" && find etc -type f | sed 's|^|/|' | sort) >"$d/DEBIAN/conffiles"
    install -m 0755 scripts/deb/postinst scripts/deb/prerm scripts/deb/postrm "$d/DEBIAN/"
    size=$(du -sk --exclude=DEBIAN "$d" | cut -f1)
    # ipsec-mb (x86_64 only) runs the secure tunnel's AES-GCM 3-4x faster than libcrypto where the CPU
    # has VAES (src/secure/aead.ts); without it the node uses libcrypto.
    recommends="systemd"
    [ "$deb_arch" = amd64 ] && recommends="systemd, libipsec-mb1"
    cat >"$d/DEBIAN/control" <<EOF
Package: netmanager
Version: $deb_version
Architecture: $deb_arch
Maintainer: netmanager maintainers <netmanager@localhost>
Installed-Size: $size
Depends: libc6, iproute2, iptables
Recommends: $recommends
Section: net
Priority: optional
Homepage: https://www.oakestra.io
Description: node network manager for edge orchestration (Oakestra-compatible)
 Drop-in replacement for Oakestra's NetManager: the same unix-socket API, MQTT
 topics and IP-in-UDP tunnel. Bundles the Deno runtime and all dependencies:
 installs and runs without network access. Also contains the cluster control
 plane (netmanager-control.service).
EOF
    debfile="$out/netmanager_${deb_version}_${deb_arch}.deb"
    find "$d" -exec touch -h -d "@$epoch" {} +
    dpkg-deb --root-owner-group -Zgzip -z6 --build "$d" "$debfile" >/dev/null
    echo "package: $debfile ($(du -h "$debfile" | cut -f1))" >&2
  fi
  rm -rf "$tree" "$work/deb-$arch"
}

for arch in $archs; do
  (set -euo pipefail; build_arch "$arch") &
  jobs_pids+=($!)
done
failed=0
for p in "${jobs_pids[@]}"; do wait "$p" || failed=1; done
jobs_pids=()
if [ "$failed" = 1 ]; then
  echo "package: an architecture's build failed (see above)" >&2
  exit 1
fi
