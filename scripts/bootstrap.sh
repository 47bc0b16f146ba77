#!/usr/bin/env bash
# Installs what netmanager's demo and tests need on a fresh Debian machine (run as root):
# Debian packages (iproute2, iptables, mosquitto, iperf3, tcpdump, openssl, dnsutils, dnsmasq-base;
# prometheus for promtool; chromium for the web page test; dbus-daemon, avahi-daemon and avahi-utils
# for the mDNS test; etcd-server and etcd-client for the replicated control plane; jq, sockperf,
# dnsperf, wireguard-go and wireguard-tools for the benchmarks; npm, dpkg-deb, file and
# systemd-analyze for scripts/package.sh and its test; qemu-user with libc6-arm64-cross and
# libgcc-s1-arm64-cross, ~13 MB download / ~110 MB installed, to run the aarch64 release under
# emulation — without binfmt_misc registration, as --no-install-recommends leaves out qemu-user-binfmt;
# systemd-container, ~0.5 MB, for systemd-nspawn: the units' test boots systemd in a container; nftables and
# conntrack for the kernel fast path, KernelFastPath) and Deno from npm at a pinned version into .tools/
# (kept out of the repo root so no package.json sits beside the code).
# Prints the path of the deno binary on its last line.
set -euo pipefail
DENO_VERSION=2.9.6
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"

need=()
for pair in ip:iproute2 iptables:iptables ip6tables:iptables mosquitto:mosquitto iperf3:iperf3 tcpdump:tcpdump \
  unshare:util-linux nsenter:util-linux ping:iputils-ping curl:curl jq:jq sockperf:sockperf setsid:util-linux \
  openssl:openssl npm:npm dpkg-deb:dpkg file:file systemd-analyze:systemd \
  promtool:prometheus dig:dnsutils dnsmasq:dnsmasq-base dnsperf:dnsperf chromium:chromium \
  dbus-daemon:dbus-daemon avahi-daemon:avahi-daemon avahi-resolve:avahi-utils etcd:etcd-server etcdctl:etcd-client \
  qemu-aarch64:qemu-user systemd-nspawn:systemd-container wireguard-go:wireguard-go wg:wireguard-tools \
  nft:nftables conntrack:conntrack; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
# The aarch64 C library qemu-aarch64 loads the aarch64 Deno with (the package test runs that release).
[ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] || need+=(libc6-arm64-cross)
[ -e /usr/aarch64-linux-gnu/lib/libgcc_s.so.1 ] || need+=(libgcc-s1-arm64-cross)
# The secure tunnel's per-datagram AEAD runs in OpenSSL's libcrypto.so.3 by FFI (ffi/libcrypto.ts); the
# openssl package depends on it (libssl3 / libssl3t64).
ls /usr/lib/*/libcrypto.so.3 /lib/*/libcrypto.so.3 >/dev/null 2>&1 || need+=(openssl)
# On x86_64 its AES-256-GCM runs in Intel's ipsec-mb when the CPU has VAES (ffi/ipsec_mb.ts); the tests
# compare both libraries.
if [ "$(uname -m)" = x86_64 ]; then
  ls /usr/lib/*/libIPSec_MB.so.1 >/dev/null 2>&1 || need+=(libipsec-mb1)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >&2
  # avahi-daemon is for the mDNS test only (it runs its own, inside an instance namespace): a system
  # daemon the package may have started would announce this machine on its real network.
  if printf '%s\n' "${need[@]}" | grep -qx avahi-daemon && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now avahi-daemon.socket avahi-daemon.service >&2 2>/dev/null || true
  fi
  # etcd-server's package starts a system member on 127.0.0.1:2379 where systemd runs; the tests start
  # their own members in namespaces, so a system one would only keep a database running.
  if printf '%s\n' "${need[@]}" | grep -qx etcd-server && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now etcd.service >&2 2>/dev/null || true
  fi
fi
# mosquitto's package starts a system broker on 1883; tests start their own brokers on other ports.
# etcd-server (3.4) runs the members of the replicated control plane's tests (a system member is
# disabled above).
# prometheus is installed for promtool only (tests check the metrics with it); its server is not used.

deno="$tools/node_modules/.bin/deno"
if ! [ -x "$deno" ] || ! "$deno" --version 2>/dev/null | grep -q "^deno $DENO_VERSION "; then
  echo "bootstrap: installing deno $DENO_VERSION from npm into $tools" >&2
  mkdir -p "$tools"
  [ -f "$tools/package.json" ] || echo '{"private":true}' > "$tools/package.json"
  (cd "$tools" && npm install --no-audit --no-fund --loglevel=error "deno@$DENO_VERSION" >&2)
fi
# Fetch the locked npm dependencies once (fails if deno.lock does not match deno.json).
(cd "$root" && "$deno" install --frozen >&2)
echo "$deno"
