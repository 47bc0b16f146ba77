#!/usr/bin/env bash
# Issue 16 spike, design (b): kernel VXLAN between the two nodes + nftables translation (conntrack DNAT
# ServiceIP -> instance with numgen RR, SNAT to the client's InstanceIP, ct-mark policy routing of replies).
# A slot of shared/bench/harness.sh (see its header); the client dials ServiceIP 10.30.0.1.
set -euo pipefail
n=$OB_NODE
mac_of() { printf '02:4e:%02x:%02x:%02x:%02x' $(echo "$1" | tr . ' '); }
peer_mac=$(mac_of "$OB_PEER_UNDERLAY_IP")
ip link add nmk0 type vxlan id 16 local "$OB_UNDERLAY_IP" dstport 4789 nolearning dev "$OB_UNDERLAY_DEV"
ip link set nmk0 address "$(mac_of "$OB_UNDERLAY_IP")" mtu 1450 up
sysctl -qw net.ipv4.conf.nmk0.rp_filter=0
bridge fdb append "$peer_mac" dev nmk0 dst "$OB_PEER_UNDERLAY_IP"
ip neigh replace 169.254.0.1 lladdr "$peer_mac" dev nmk0 nud permanent
ip route add default via 169.254.0.1 dev nmk0 onlink table 20001
# the VXLAN device routes its outer packet with the inner mark: locally made packets keep the main table
ip rule add fwmark 0x4e4b0001 iif lo lookup main pref 99
ip rule add fwmark 0x4e4b0001 lookup 20001 pref 100
if [[ $n == 1 ]]; then svc_map='10.30.0.1 : 10.19.2.2'; else svc_map='10.30.0.2 : 10.19.1.2'; fi
nft -f - <<NFT
table ip nmkfast {
  map ns2inst { type ipv4_addr : ipv4_addr; elements = { 10.19.1.2 : 10.30.0.11, 10.19.2.2 : 10.30.0.12 } }
  map peer_of { type ipv4_addr : mark; elements = { $OB_PEER_WORKLOAD_IP : 0x4e4b0001 } }
  map mac2mark { type ether_addr : mark; elements = { $peer_mac : 0x4e4b0001 } }
  chain raw_pre { type filter hook prerouting priority raw; policy accept; udp dport 4789 notrack; }
  chain raw_out { type filter hook output priority raw; policy accept; udp dport 4789 notrack; }
  chain pre_nat { type nat hook prerouting priority dstnat; policy accept;
    iifname "$OB_BRIDGE" ip daddr 10.30.0.1 dnat to numgen inc mod 1 map { 0 : 10.19.2.2 }
  }
  chain pre_mark { type filter hook prerouting priority -90; policy accept;
    iifname "nmk0" ct state new ct mark set ether saddr map @mac2mark
    ct direction original ct status dnat meta mark set ip daddr map @peer_of
    ct direction reply ct mark != 0 meta mark set ct mark
  }
  chain post_nat { type nat hook postrouting priority srcnat; policy accept;
    oifname "nmk0" ct status dnat ip saddr @ns2inst snat to ip saddr map @ns2inst
  }
}
NFT
echo 10.30.0.1 > "$OB_TARGET_FILE"
touch "$OB_READY_FILE"
trap 'nft delete table ip nmkfast; ip rule del pref 99; ip rule del pref 100; ip link del nmk0; exit 0' TERM INT
while :; do sleep 1; done
