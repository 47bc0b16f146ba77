#!/usr/bin/env bash
# Issue 16 spike, design (a): tc eBPF (clsact) translation + Oakestra raw IP-in-UDP encap/decap on
# 50103, as a slot of shared/bench/harness.sh. Stateless, one ServiceIP (10.30.0.1 → peer workload).
# A measurement, not product code: it compiles tc_ipudp.c when it starts and needs Debian's clang
# (apt-get install -y clang); neither the tests nor bench_overlay.sh run it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
n=$OB_NODE
wlh=ob-w${n}h                                   # host side of the workload veth (bridge port)
mac() { cat "/sys/class/net/$1/address"; }
bytes() { echo "0x${1//:/,0x}"; }
wl_mac=$(ip netns exec "$OB_WORKLOAD_NS" cat /sys/class/net/ob-w${n}c/address)
ping -c1 -W1 "$OB_PEER_UNDERLAY_IP" >/dev/null 2>&1 || true
peer_mac=$(ip neigh show "$OB_PEER_UNDERLAY_IP" dev "$OB_UNDERLAY_DEV" | awk '{print $3}')
h() { echo "H32(${1//./,})"; }
if [[ $n == 1 ]]; then
  defs=(-DMATCH_DST="$(h 10.30.0.1)" -DNEW_DST="$(h "$OB_PEER_WORKLOAD_IP")" -DNEW_SRC="$(h 10.30.0.11)"
        -DRS_FROM="$(h 10.30.0.12)" -DRS_TO="$(h 10.30.0.1)")
else
  defs=(-DMATCH_DST="$(h 10.30.0.11)" -DNEW_DST="$(h "$OB_PEER_WORKLOAD_IP")" -DNEW_SRC="$(h 10.30.0.12)")
fi
obj=$OB_STATE_DIR/tc_ipudp.o
clang -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu -c "$here/tc_ipudp.c" -o "$obj" "${defs[@]}" \
  -DUL_SRC="$(h "$OB_UNDERLAY_IP")" -DUL_DST="$(h "$OB_PEER_UNDERLAY_IP")" \
  -DUL_IFINDEX="$(cat /sys/class/net/$OB_UNDERLAY_DEV/ifindex)" -DWL_IFINDEX="$(cat /sys/class/net/$wlh/ifindex)" \
  -DUL_SRC_MAC_B="$(bytes "$(mac "$OB_UNDERLAY_DEV")")" -DUL_DST_MAC_B="$(bytes "$peer_mac")" \
  -DWL_DST_MAC_B="$(bytes "$wl_mac")" -DWL_SRC_MAC_B="$(bytes "$(mac "$OB_BRIDGE")")"
tc qdisc add dev "$wlh" clsact
tc filter add dev "$wlh" ingress bpf direct-action obj "$obj" sec tc/from_wl
tc qdisc add dev "$OB_UNDERLAY_DEV" clsact
tc filter add dev "$OB_UNDERLAY_DEV" ingress bpf direct-action obj "$obj" sec tc/from_ul
# the workload must resolve the ServiceIP's next hop (its default gateway, the bridge) — already so.
echo 10.30.0.1 > "$OB_TARGET_FILE"
touch "$OB_READY_FILE"
trap 'tc qdisc del dev "$wlh" clsact; tc qdisc del dev "$OB_UNDERLAY_DEV" clsact; exit 0' TERM INT
while :; do sleep 1; done
