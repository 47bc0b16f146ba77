/**
 * The node subnet: an IPv4 prefix (normally /26) and an IPv6 prefix (normally /120), with the
 * address plan of reference §6: network+1 is the bridge/gateway, instances get network+2 upwards.
 *
 * @example
 * ```ts
 * import { formatIPv4 } from "../addr/mod.ts";
 * const s = parseNodeSubnet("10.18.0.64/26,fc00::100/120");
 * formatIPv4(s.gateway4); // "10.18.0.65"
 * ```
 */
import {
  addIPv6,
  AddressError,
  formatPrefix4,
  formatPrefix6,
  parsePrefix4,
  parsePrefix6,
  type Prefix4,
  type Prefix6,
} from "../addr/mod.ts";

/** A node's instance subnet in both families. */
export interface NodeSubnet {
  v4: Prefix4;
  v6: Prefix6;
  /** Bridge address (network + 1). */
  gateway4: number;
  gateway6: Uint8Array;
  /** Instance offsets run from 2 to lastOffset (inclusive). */
  lastOffset: number;
}

/** Builds the subnet plan from the two prefixes; throws AddressError for unusable sizes. */
export function nodeSubnet(v4: Prefix4, v6: Prefix6): NodeSubnet {
  if (v4.len < 16 || v4.len > 29) throw new AddressError(`IPv4 node subnet must be /16../29, got /${v4.len}`);
  if (v6.len < 96 || v6.len > 125) {
    throw new AddressError(`IPv6 node subnet must be /96../125, got /${v6.len}`);
  }
  const last4 = 2 ** (32 - v4.len) - 2; // last usable before broadcast
  const last6 = 2 ** (128 - v6.len) - 1;
  return {
    v4,
    v6,
    gateway4: v4.addr + 1,
    gateway6: addIPv6(v6.addr, 1),
    lastOffset: Math.min(last4, last6),
  };
}

/**
 * Parses `CIDR4[,CIDR6]` (the `--subnet` flag). Without an IPv6 part a unique /120 is derived from
 * the IPv4 network (fc00:: + network·256), so two nodes with different IPv4 subnets never share one.
 */
export function parseNodeSubnet(text: string): NodeSubnet {
  const [a, b, extra] = text.split(",").map((s) => s.trim());
  if (extra !== undefined || !a) throw new AddressError(`invalid subnet "${text}": expected CIDR4[,CIDR6]`);
  const v4 = parsePrefix4(a, true);
  const v6 = b
    ? parsePrefix6(b, true)
    : { addr: addIPv6(new Uint8Array([0xfc, ...new Array(15).fill(0)]), v4.addr * 256), len: 120 };
  return nodeSubnet(v4, v6);
}

/** Human-readable "10.18.0.64/26,fc00::100/120". */
export function formatNodeSubnet(s: NodeSubnet): string {
  return `${formatPrefix4(s.v4)},${formatPrefix6(s.v6)}`;
}

/** The IPv4 address of instance offset `k`. */
export function instanceAddr4(s: NodeSubnet, k: number): number {
  return s.v4.addr + k;
}

/** The IPv6 address of instance offset `k`. */
export function instanceAddr6(s: NodeSubnet, k: number): Uint8Array {
  return addIPv6(s.v6.addr, k);
}
