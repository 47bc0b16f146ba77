#!/usr/bin/env bash
# Installs netmanager on a node (as root): the binary to /usr/local/bin/netmanager, the configs to
# /etc/netmanager (existing ones are never overwritten), the systemd unit, the state and log dirs.
#   scripts/install.sh [path/to/netmanager-binary]   (default: dist/netmanager-<this arch>)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
arch=$(uname -m)
bin=${1:-"$root/dist/netmanager-${arch}-unknown-linux-gnu"}
[ -f "$bin" ] || { echo "install: $bin not found (build it with scripts/compile.sh)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "install: run as root" >&2; exit 1; }
install -m 0755 "$bin" /usr/local/bin/netmanager
install -d -m 0755 /etc/netmanager /var/log/oakestra
install -d -m 0700 /var/lib/netmanager
for f in netcfg.json tuncfg.json; do
  if [ -e "/etc/netmanager/$f" ]; then echo "install: keeping existing /etc/netmanager/$f" >&2
  else install -m 0644 "$root/config/$f" "/etc/netmanager/$f"; fi
done
install -m 0644 "$root/config/netmanager.service" /etc/systemd/system/netmanager.service
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "install: done. Start with: systemctl start netmanager   (or: netmanager daemon --subnet CIDR for standalone)" >&2
