/**
 * Kernel fast path, pure part: names, marks and the command text (nft, ip, bridge) that programs a
 * {@link PlanDiff}. No I/O here (src/kfast/kernel.ts runs it).
 *
 * Design (measured against tc eBPF in the issue-16 spike, see README "Kernel fast path"): a kernel
 * VXLAN device between netmanager nodes with static FDB/neighbour entries per peer (flannel style),
 * plus one nftables table: conntrack DNAT ServiceIP → candidate (`numgen inc`: RR per new flow), SNAT of
 * the client's namespace IP to its InstanceIP, and a connection mark per peer that policy-routes a
 * flow's packets (and, on the server's node, its replies) into the VXLAN device towards that peer.
 *
 * @example
 * ```ts
 * import { diffPlans, emptyPlan } from "./plan.ts";
 * import { KFAST_TABLE, macOfNode, renderBase, renderDiffNft } from "./render.ts";
 * const base = renderBase({ device: "nmkfast0", bridge: "goProxyBridge", port: 4789 });
 * base.includes(KFAST_TABLE); // true
 * macOfNode("192.168.1.2"); // "02:4e:c0:a8:01:02"
 * renderDiffNft(diffPlans(emptyPlan(), emptyPlan()), () => 1); // "" (nothing to do)
 * ```
 */
import { formatIPv4, parseIPv4 } from "../addr/mod.ts";
import type { PlanDiff } from "./plan.ts";

/** The nftables table (family ip) that holds everything of the fast path. */
export const KFAST_TABLE = "netmanager_kfast";
/** Default name of the VXLAN device. */
export const KFAST_DEVICE = "nmkfast0";
/** VNI of the device (any: both ends are netmanager nodes). */
export const KFAST_VNI = 5010;
/** Marks: the high half says "ours", the low half is the peer's index (1 … 65535). */
export const KFAST_MARK_BASE = 0x4e4b0000;
export const KFAST_MARK_MASK = 0xffff0000;
/** Policy-routing rule priorities: locally made packets (the VXLAN's outer ones) keep main; peers. */
export const KFAST_RULE_PREF_LOCAL = 99;
export const KFAST_RULE_PREF_PEER = 100;

/** Settings of {@link renderBase}. */
export interface BaseSettings {
  device: string;
  /** The instances' bridge: new flows from instances enter here. */
  bridge: string;
  /** UDP port of the VXLAN device (outer datagrams are not connection-tracked). */
  port: number;
}

/** The mark (and routing table id) of peer index `i`. */
export function markOf(i: number): number {
  return (KFAST_MARK_BASE | (i & 0xffff)) >>> 0;
}

/** The next hop (only a neighbour-table key on the device, never on the wire) of peer index `i`. */
export function hopOf(i: number): string {
  return `169.254.${(i >> 8) & 0xff}.${i & 0xff}`;
}

/** The VXLAN device MAC of a node, derived from its underlay IPv4 (both ends compute it alone). */
export function macOfNode(ip: string): string {
  const a = parseIPv4(ip);
  const b = [2, 0x4e, a >>> 24, (a >>> 16) & 0xff, (a >>> 8) & 0xff, a & 0xff];
  return b.map((x) => x.toString(16).padStart(2, "0")).join(":");
}

/** Chain name of a ServiceIP's DNAT. */
export function serviceChain(addr: number): string {
  return `svc_${(addr >>> 0).toString(16).padStart(8, "0")}`;
}

const hex = (n: number) => `0x${(n >>> 0).toString(16)}`;

/** A packet's pin key (protocol . source . port . destination . port), and its reply's. */
const PIN_TUPLE = "meta l4proto . ip saddr . th sport . ip daddr . th dport";
const PIN_REPLY_TUPLE = "meta l4proto . ip daddr . th dport . ip saddr . th sport";

/** The whole table, empty of elements (nft -f text; replaces any earlier one atomically). */
export function renderBase(s: BaseSettings): string {
  const t = KFAST_TABLE;
  return [
    `table ip ${t}`,
    `delete table ip ${t}`,
    `table ip ${t} {`,
    `  set svc_addrs { type ipv4_addr; }`,
    `  set peer_ips { type ipv4_addr; }`,
    `  map svc { type ipv4_addr : verdict; }`,
    `  map snat4 { type ipv4_addr : ipv4_addr; }`,
    `  map peer_of { type ipv4_addr : mark; }`,
    `  map mac_mark { type ether_addr : mark; }`,
    // Running TUN flows moved onto the kernel path: their instance, fixed (src/kfast/move.ts).
    `  map pin4 { type inet_proto . ipv4_addr . inet_service . ipv4_addr . inet_service : ipv4_addr; }`,
    // Packets and bytes the kernel path carried (status → kernelFastPath.counters).
    `  counter tx { }`,
    `  counter rx { }`,
    `  chain fwd_count { type filter hook forward priority filter; policy accept;`,
    `    oifname "${s.device}" counter name tx`,
    `    iifname "${s.device}" counter name rx`,
    `  }`,
    // The VXLAN datagrams themselves need no connection tracking.
    `  chain raw_pre { type filter hook prerouting priority raw; policy accept;`,
    `    ip saddr @peer_ips udp dport ${s.port} notrack`,
    `  }`,
    `  chain raw_out { type filter hook output priority raw; policy accept;`,
    `    ip daddr @peer_ips udp dport ${s.port} notrack`,
    `  }`,
    `  chain pre_nat { type nat hook prerouting priority dstnat; policy accept;`,
    `    iifname "${s.bridge}" ${PIN_TUPLE} @pin4 ct mark set ${
      hex(KFAST_MARK_BASE)
    } dnat to ${PIN_TUPLE} map @pin4`,
    `    iifname "${s.bridge}" ip daddr vmap @svc`,
    `  }`,
    `  chain pre_mark { type filter hook prerouting priority dstnat + 10; policy accept;`,
    // A late reply of a moved flow (from the TUN) must not open an entry that clashes with the
    // kernel's: dropped (TCP retransmits it on the kernel path).
    `    iifname != "${s.bridge}" ct state new ${PIN_REPLY_TUPLE} @pin4 drop`,
    // A flow a peer's node sent us through the device: remember the peer, for its replies. Also for
    // an entry the TUN opened (a flow the peer moved onto the kernel path): its replies follow.
    `    iifname "${s.device}" ct mark and ${hex(KFAST_MARK_MASK)} != ${
      hex(KFAST_MARK_BASE)
    } ct mark set ether saddr map @mac_mark`,
    `    ct direction original ct status dnat meta mark set ip daddr map @peer_of`,
    `    ct direction reply ct mark and ${hex(KFAST_MARK_MASK)} == ${
      hex(KFAST_MARK_BASE)
    } meta mark set ct mark`,
    `  }`,
    `  chain post_nat { type nat hook postrouting priority srcnat; policy accept;`,
    `    ct status dnat ct original ip daddr @svc_addrs ip saddr @snat4 snat to ip saddr map @snat4`,
    `  }`,
    `}`,
    "",
  ].join("\n");
}

/** The nft commands of a diff ("" when nothing in nft changes). `indexOf` gives a peer's index. */
export function renderDiffNft(d: PlanDiff, indexOf: (peer: string) => number): string {
  const t = `ip ${KFAST_TABLE}`;
  const out: string[] = [];
  for (const a of d.servicesGone) {
    const ip = formatIPv4(a);
    out.push(`delete element ${t} svc { ${ip} }`, `delete element ${t} svc_addrs { ${ip} }`);
    out.push(`delete chain ${t} ${serviceChain(a)}`);
  }
  for (const [a, targets] of d.servicesSet) {
    const ip = formatIPv4(a);
    const c = serviceChain(a);
    const map = targets.map((x, i) => `${i} : ${formatIPv4(x)}`).join(", ");
    out.push(`add chain ${t} ${c}`, `flush chain ${t} ${c}`);
    out.push(
      `add rule ${t} ${c} ct mark set ${
        hex(KFAST_MARK_BASE)
      } dnat to numgen inc mod ${targets.length} map { ${map} }`,
    );
    out.push(`add element ${t} svc { ${ip} : jump ${c} }`, `add element ${t} svc_addrs { ${ip} }`);
  }
  for (const a of d.snatGone) out.push(`delete element ${t} snat4 { ${formatIPv4(a)} }`);
  for (const [a, v] of d.snatSet) {
    out.push(`add element ${t} snat4 { ${formatIPv4(a)} : ${formatIPv4(v)} }`);
  }
  for (const a of d.remoteGone) out.push(`delete element ${t} peer_of { ${formatIPv4(a)} }`);
  for (const [a, p] of d.remoteSet) {
    out.push(`add element ${t} peer_of { ${formatIPv4(a)} : ${hex(markOf(indexOf(p)))} }`);
  }
  for (const p of d.peersGone) {
    out.push(`delete element ${t} mac_mark { ${macOfNode(p)} }`, `delete element ${t} peer_ips { ${p} }`);
  }
  for (const p of d.peersAdded) {
    out.push(`add element ${t} mac_mark { ${macOfNode(p)} : ${hex(markOf(indexOf(p)))} }`);
    out.push(`add element ${t} peer_ips { ${p} }`);
  }
  return out.length === 0 ? "" : out.join("\n") + "\n";
}
