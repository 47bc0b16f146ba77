#!/usr/bin/env bash
# The reference C relay (relay.c, a measuring tool: docs/bench/ceiling.md) as a slot of
# shared/bench/harness.sh; bench_overlay.sh registers it as c-relay and c-relay-gcm (CEILING_AEAD=1):
#   NM_BENCH_PATHS=vxlan,nm-fast,c-relay bash scripts/bench_overlay.sh --quick
# Runs inside the harness's host namespace, in the foreground. Builds relay.c with gcc into
# $OB_STATE_DIR (CEILING_SPIN=1: the relay's --spin diagnostic, slot c-relay-spin), starts it on TUN crN, routes the peer's workload subnet into it (the client dials
# the peer workload directly: no ServiceIP translation), caps the workload veth's TSO segments like
# bench_slot.sh does for netmanager (one super-packet = one UDP GSO send), and on TERM stops the relay
# and removes the route (the TUN goes with the process).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$OB_STATE_DIR
bin=$dir/relay
# The build needs gcc and libcrypto's headers (Debian: gcc, libssl-dev), as wireguard-go's slot installs its package.
command -v gcc >/dev/null && [[ -f /usr/include/openssl/evp.h ]] ||
  apt-get install -y -qq gcc libssl-dev >/dev/null
[[ -x $bin && $bin -nt $here/relay.c ]] || gcc -O2 -Wall -Wextra -o "$bin" "$here/relay.c" -lcrypto
dev=cr$OB_NODE
opts=()
[[ ${CEILING_AEAD:-0} == 1 ]] && opts=(--aead)
[[ ${CEILING_SPIN:-0} == 1 ]] && opts+=(--spin) # diagnostic: never sleeps (c-relay-spin)
"$bin" --tun "$dev" --mtu "$OB_OVERLAY_MTU" --local "$OB_UNDERLAY_IP" --peer "$OB_PEER_UNDERLAY_IP" \
  --port "${CEILING_PORT:-50999}" --node "$OB_NODE" "${opts[@]}" 2>"$dir/relay.log" &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  ip route del "$OB_PEER_POD_CIDR" dev "$dev" 2>/dev/null || true
}
trap 'cleanup; exit 0' TERM INT
for _ in $(seq 50); do ip link show "$dev" >/dev/null 2>&1 && break; sleep 0.05; done
ip link set "$dev" mtu "$OB_OVERLAY_MTU" txqueuelen 10000 up
ip route add "$OB_PEER_POD_CIDR" dev "$dev"
# TSO segments per super-packet so that virtio header + packet (+ tag) fit the 65507 / (MTU + 8)
# datagrams of one GSO send (MTU 1450: 45, as netmanager's jumboTsoSegs gives); MSS with timestamps.
mss=$((OB_OVERLAY_MTU - 52))
segs=$((((65507 / (OB_OVERLAY_MTU + 8)) * OB_OVERLAY_MTU - 10 - 16 - 52) / mss))
for l in $(ip -n "$OB_WORKLOAD_NS" -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1); do
  ip -n "$OB_WORKLOAD_NS" link set dev "$l" gso_max_segs "$segs" || true
done
touch "$OB_READY_FILE"
wait "$pid"
