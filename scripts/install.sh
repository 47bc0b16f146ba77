#!/usr/bin/env bash
# Installs, upgrades or removes netmanager on a node (as root). No network needed.
#   install.sh [--prefix P] [--destdir D] [SOURCE]      install, or upgrade an existing install
#   install.sh --uninstall [--purge] [--prefix P] [--destdir D]
# SOURCE: a release archive (netmanager-<version>-linux-<arch>.tar.gz from scripts/package.sh), an
# unpacked release directory, or a single executable from scripts/compile.sh. Default: the release this
# script is part of, else the newest dist/ archive for this machine, else dist/netmanager-<arch>-unknown-linux-gnu.
# Layout (P=/usr/local): P/lib/netmanager (the release), P/bin/netmanager, /etc/netmanager (configs, never
# overwritten), /etc/systemd/system/netmanager{,-control}.service, /var/lib/netmanager (state, 0700).
# An upgrade replaces the program and units, keeps configs and state, and restarts the services that run.
# --uninstall keeps /etc/netmanager and /var/lib/netmanager; --purge removes them too (after
# `netmanager clean` has removed the node's networking). --destdir installs into another root (packaging,
# tests): nothing is started, stopped or cleaned then.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=/usr/local
destdir=""
mode=install
purge=""
src=""
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --uninstall) mode=uninstall; shift ;;
    --purge) purge=1; shift ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "install: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [ -z "$src" ] || { echo "install: one SOURCE only" >&2; exit 2; }; src=$1; shift ;;
  esac
done
[ -z "$purge" ] || [ "$mode" = uninstall ] || { echo "install: --purge goes with --uninstall" >&2; exit 2; }
case $prefix in /*) ;; *) echo "install: --prefix must be absolute" >&2; exit 2 ;; esac
[ -z "$destdir" ] || destdir=$(mkdir -p "$destdir" && cd "$destdir" && pwd)
[ -n "$destdir" ] || [ "$(id -u)" = 0 ] || { echo "install: run as root" >&2; exit 1; }

D=$destdir
libdir="$prefix/lib/netmanager"
bin="$prefix/bin/netmanager"
units="/etc/systemd/system"
services=(netmanager.service netmanager-control.service)
# systemctl only for the real root of a machine that runs systemd.
systemd() { [ -z "$D" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }
say() { echo "install: $*" >&2; }

if [ "$mode" = uninstall ]; then
  if systemd; then
    for s in "${services[@]}"; do systemctl disable --now "$s" 2>/dev/null || true; done
  fi
  if [ -n "$purge" ] && [ -z "$D" ] && [ -x "$bin" ] && [ -d /var/lib/netmanager ]; then
    say "removing the node's networking (netmanager clean)"
    "$bin" clean --cfg /etc/netmanager/netcfg.json --tuncfg /etc/netmanager/tuncfg.json ||
      say "netmanager clean failed; removing the files anyway"
  fi
  rm -f "$D$units/netmanager.service" "$D$units/netmanager-control.service"
  rm -f "$D$bin"
  rm -rf "$D$libdir" "$D/var/cache/netmanager"
  if [ -n "$purge" ]; then
    rm -rf "$D/etc/netmanager" "$D/var/lib/netmanager"
    say "removed netmanager, its configs and its state"
  else
    say "removed netmanager; kept /etc/netmanager and /var/lib/netmanager (--purge removes them)"
  fi
  if systemd; then systemctl daemon-reload; fi
  exit 0
fi

# Find what to install: a release tree (unpacked here if an archive) or a compiled binary.
arch=$(uname -m)
if [ -z "$src" ]; then
  if [ -x "$here/bin/netmanager" ] && [ -x "$here/lib/deno" ]; then
    src=$here
  else
    repo=$(cd "$here/.." && pwd)
    src=$(ls -t "$repo"/dist/netmanager-*-linux-"$arch".tar.gz 2>/dev/null | head -1 || true)
    [ -n "$src" ] || src="$repo/dist/netmanager-$arch-unknown-linux-gnu"
  fi
fi
[ -e "$src" ] || { say "$src not found (build it with scripts/package.sh or scripts/compile.sh)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tree=""
if [ -d "$src" ]; then
  tree=$(cd "$src" && pwd)
elif tar -tzf "$src" >/dev/null 2>&1; then
  tar -xzf "$src" -C "$tmp"
  tree=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -1)
fi
if [ -n "$tree" ]; then
  [ -x "$tree/bin/netmanager" ] && [ -x "$tree/lib/deno" ] && [ -f "$tree/BUILD_INFO" ] ||
    { say "$src is not a netmanager release (no bin/netmanager, lib/deno, BUILD_INFO)"; exit 1; }
  rel_arch=$(sed -n 's/^arch=//p' "$tree/BUILD_INFO")
  [ "$rel_arch" = "$arch" ] || [ -n "$D" ] || { say "$src is for $rel_arch, this machine is $arch"; exit 1; }
  new_version=$(sed -n 's/^version=//p' "$tree/BUILD_INFO")
  config_src="$tree/config"
  unit_src="$tree/systemd"
else
  [ "$(head -c 4 "$src" | od -An -c | tr -d ' ')" = '177ELF' ] ||
    { say "$src is neither a release archive or directory nor an executable"; exit 1; }
  new_version=$("$src" --version 2>/dev/null | head -1 || true)
  new_version=${new_version:-"(compiled binary)"}
  if [ -d "$here/systemd" ]; then # this script in a release: its configs and units
    config_src="$here/config"
    unit_src="$here/systemd"
  else # this script in the repository
    config_src="$here/../config"
    unit_src="$here/../config"
  fi
fi

old_version=""
if [ -f "$D$libdir/BUILD_INFO" ]; then old_version=$(sed -n 's/^version=//p' "$D$libdir/BUILD_INFO")
elif [ -x "$D$bin" ] && [ -z "$D" ]; then
  old_version=$("$bin" --version 2>/dev/null | head -1 || true)
  old_version=${old_version:-unknown}
fi
[ -z "$old_version" ] || say "upgrading $old_version → $new_version"

# The program: the new release goes in beside the old one, then takes its place.
install -d -m 0755 "$D$prefix/bin" "$D$prefix/lib"
rm -rf "$D$libdir.new" "$D$libdir.old"
if [ -n "$tree" ]; then
  cp -a "$tree" "$D$libdir.new"
  [ ! -e "$D$libdir" ] || mv "$D$libdir" "$D$libdir.old"
  mv "$D$libdir.new" "$D$libdir"
  rm -rf "$D$libdir.old"
  ln -sfn ../lib/netmanager/bin/netmanager "$D$bin"
else
  rm -rf "$D$libdir" "$D$bin"
  install -m 0755 "$src" "$D$bin"
fi

# Configs: installed once, never overwritten. State: kept.
install -d -m 0755 "$D/etc/netmanager"
install -d -m 0700 "$D/var/lib/netmanager"
for f in netcfg.json tuncfg.json netmanager.env control.env; do
  if [ -e "$D/etc/netmanager/$f" ]; then say "keeping /etc/netmanager/$f"
  elif [ -f "$config_src/$f" ]; then install -m 0644 "$config_src/$f" "$D/etc/netmanager/$f"; fi
done

# Units, pointing at this prefix (local changes belong in drop-ins: systemctl edit netmanager).
install -d -m 0755 "$D$units"
for u in "${services[@]}"; do
  sed -e "s|/usr/local/bin/netmanager|$bin|g" -e "s|/usr/local/share/doc/netmanager/README.md|$libdir/README.md|g" \
    "$unit_src/$u" >"$D$units/$u.tmp"
  chmod 0644 "$D$units/$u.tmp"
  mv "$D$units/$u.tmp" "$D$units/$u"
done

if systemd; then
  systemctl daemon-reload
  for s in "${services[@]}"; do
    if systemctl is-active --quiet "$s"; then
      say "restarting $s"
      systemctl restart "$s"
    fi
  done
fi
say "installed netmanager $new_version: $D$bin"
[ -n "$old_version" ] || say "next: edit /etc/netmanager/netcfg.json, then: systemctl enable --now netmanager"
