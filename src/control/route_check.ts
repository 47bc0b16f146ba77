/**
 * Route validation: which table entries from the cluster may reach the data plane. A table-query
 * result (or a refresh) comes over MQTT, which on an Oakestra cluster anyone on the network may
 * publish to; an entry is a promise "this instance lives at host_ip:host_port with these
 * addresses", and the data plane acts on it (sends the job's datagrams to `host_ip`, delivers to the
 * namespace IP). So every entry is checked against what this node knows about itself and the
 * addressing plan (reference §6) before it is applied:
 *
 * - `host_ip` must be a unicast underlay address: not loopback, unspecified, multicast, link-local,
 *   broadcast/reserved (240/4), not inside the overlay (10.16.0.0/12, this node's IPv6 subnet, the
 *   IPv6 ServiceIP range) — and not this node's own public address unless the entry is one of this
 *   node's own instances on its own tunnel port;
 * - namespace IPs must lie in the overlay (10.16.0.0/12 / fc00::/7 as configured) outside the
 *   ServiceIP ranges, and one inside this node's own subnet must be an instance this node hosts
 *   (same job, instance number and address);
 * - every ServiceIP (RR, Closest, instance IP) must lie in the ServiceIP ranges and must not be
 *   bound to another job in the table.
 *
 * Pure: the caller passes what it knows about the node in a {@link RouteContext}.
 *
 * @example
 * ```ts
 * import { parseIPv4 } from "../addr/mod.ts";
 * const ctx: RouteContext = {
 *   overlay4: { addr: parseIPv4("10.16.0.0"), len: 12 },
 *   overlay6: { addr: new Uint8Array([0xfc, ...new Array(15).fill(0)]), len: 7 },
 *   service4: { addr: parseIPv4("10.30.0.0"), len: 16 },
 *   service6: { addr: new Uint8Array([0xfd, 0xff, ...new Array(14).fill(0)]), len: 16 },
 *   selfIps: ["131.1.0.1"], selfPort: 50103,
 *   isOwnInstance: () => false, serviceOwner4: () => undefined, serviceOwner6: () => undefined,
 * };
 * const { accepted, rejected } = checkEntries("a.b.c.d", [], ctx);
 * accepted.length + rejected.length; // 0
 * ```
 * @module
 */
import {
  formatIPv4,
  formatIPv6,
  inPrefix4,
  inPrefix6,
  type Prefix4,
  type Prefix6,
  tryParseIPv4,
  tryParseIPv6,
} from "../addr/mod.ts";
import type { TableEntry } from "../table/entry.ts";

/** Why an entry was refused (also the `reason` label of the metric). */
export type RouteRejection =
  | "host_loopback"
  | "host_unspecified"
  | "host_multicast"
  | "host_link_local"
  | "host_broadcast"
  | "host_overlay"
  | "host_self"
  | "nsip_outside_overlay"
  | "nsip_own_subnet"
  | "service_ip_outside_range"
  | "service_ip_taken";

/** What the validator needs to know about this node. */
export interface RouteContext {
  /** The overlay (the TUN's routes): 10.16.0.0/12 and fc00::/7 by default. */
  readonly overlay4: Prefix4;
  readonly overlay6: Prefix6;
  /** The ServiceIP ranges (tuncfg ProxySubnetwork / ProxySubnetworkIPv6). */
  readonly service4: Prefix4;
  readonly service6: Prefix6;
  /** This node's instance subnet, once assigned. */
  readonly subnet4?: Prefix4;
  readonly subnet6?: Prefix6;
  /** This node's public address(es), canonical text ("" entries are ignored). */
  readonly selfIps: readonly string[];
  /** This node's tunnel port. */
  readonly selfPort: number;
  /** Behind NAT: the port of its observed endpoint (whose address is in `selfIps`). */
  readonly observedPort?: number;
  /** True when this node hosts instance `instance` of `job` with namespace IPv4 `nsip4`. */
  isOwnInstance(job: string, instance: number, nsip4: number): boolean;
  /** The job(s) the table binds ServiceIP `addr` to, if any. */
  serviceOwner4(addr: number): readonly string[] | undefined;
  serviceOwner6(addr: Uint8Array): readonly string[] | undefined;
}

/** A refused entry: the cause and a one-line detail for the log. */
export interface RejectedEntry {
  readonly entry: TableEntry;
  readonly cause: RouteRejection;
  readonly detail: string;
}

/** Result of {@link checkEntries}. */
export interface CheckedEntries {
  readonly accepted: TableEntry[];
  readonly rejected: RejectedEntry[];
}

const P4 = (a: number, len: number): Prefix4 => ({ addr: a >>> 0, len });
const LOOP4 = P4(0x7f000000, 8);
const ZERO4 = P4(0, 8);
const MCAST4 = P4(0xe0000000, 4);
const LINK4 = P4(0xa9fe0000, 16);
const RESERVED4 = P4(0xf0000000, 4); // includes 255.255.255.255

/** Classifies an IPv4 underlay address; undefined when it is an acceptable unicast address. */
export function badHost4(a: number, overlay4?: Prefix4): RouteRejection | undefined {
  if (inPrefix4(ZERO4, a)) return "host_unspecified";
  if (inPrefix4(LOOP4, a)) return "host_loopback";
  if (inPrefix4(MCAST4, a)) return "host_multicast";
  if (inPrefix4(LINK4, a)) return "host_link_local";
  if (inPrefix4(RESERVED4, a)) return "host_broadcast";
  if (overlay4 && inPrefix4(overlay4, a)) return "host_overlay";
  return undefined;
}

/** Classifies an IPv6 underlay address (IPv4-mapped ones as IPv4); undefined when acceptable. */
export function badHost6(a: Uint8Array, overlay4?: Prefix4): RouteRejection | undefined {
  let zeros = true;
  for (let i = 0; i < 10; i++) if (a[i] !== 0) zeros = false;
  if (zeros && a[10] === 0xff && a[11] === 0xff) {
    return badHost4(((a[12] << 24) | (a[13] << 16) | (a[14] << 8) | a[15]) >>> 0, overlay4);
  }
  if (zeros && a[10] === 0 && a[11] === 0 && a[12] === 0 && a[13] === 0 && a[14] === 0) {
    if (a[15] === 0) return "host_unspecified";
    if (a[15] === 1) return "host_loopback";
  }
  if (a[0] === 0xff) return "host_multicast";
  if (a[0] === 0xfe && (a[1] & 0xc0) === 0x80) return "host_link_local";
  return undefined;
}

/** The first problem of one entry of `job`, or undefined when it may be applied. */
export function checkEntry(
  e: TableEntry,
  ctx: RouteContext,
): { cause: RouteRejection; detail: string } | undefined {
  const where = `${e.job}#${e.instance}`;
  const no = (cause: RouteRejection, detail: string) => ({ cause, detail: `${where}: ${detail}` });
  // host_ip
  const h4 = tryParseIPv4(e.nodeIp);
  const h6 = h4 === undefined ? tryParseIPv6(e.nodeIp) : undefined;
  let hostBad: RouteRejection | undefined;
  if (h4 !== undefined) hostBad = badHost4(h4, ctx.overlay4);
  else if (h6 !== undefined) {
    hostBad = badHost6(h6, ctx.overlay4);
    if (
      !hostBad && (inPrefix6(ctx.service6, h6) || (ctx.subnet6 !== undefined && inPrefix6(ctx.subnet6, h6)))
    ) hostBad = "host_overlay";
  } else hostBad = "host_unspecified";
  if (hostBad) return no(hostBad, `host_ip ${e.nodeIp} (${hostBad.slice(5).replace("_", "-")})`);
  const self = ctx.selfIps.some((s) => s !== "" && s === e.nodeIp);
  const inOwn4 = ctx.subnet4 !== undefined && inPrefix4(ctx.subnet4, e.nsip4);
  const inOwn6 = e.nsip6 !== undefined && ctx.subnet6 !== undefined && inPrefix6(ctx.subnet6, e.nsip6);
  const own = (inOwn4 || inOwn6) && ctx.isOwnInstance(e.job, e.instance, e.nsip4);
  // namespace IPs
  if (!inPrefix4(ctx.overlay4, e.nsip4) || inPrefix4(ctx.service4, e.nsip4)) {
    return no("nsip_outside_overlay", `namespace_ip ${formatIPv4(e.nsip4)} outside the overlay`);
  }
  if (e.nsip6 && (!inPrefix6(ctx.overlay6, e.nsip6) || inPrefix6(ctx.service6, e.nsip6))) {
    return no("nsip_outside_overlay", `namespace_ip_v6 ${formatIPv6(e.nsip6)} outside the overlay`);
  }
  if (
    (inOwn4 || inOwn6) && !(own && self && (e.nodePort === ctx.selfPort || e.nodePort === ctx.observedPort))
  ) {
    return no(
      "nsip_own_subnet",
      `namespace IP ${formatIPv4(e.nsip4)} is in this node's subnet but not one of its instances` +
        (own ? ` at ${e.nodeIp}:${e.nodePort}` : ""),
    );
  }
  if (self && !own) return no("host_self", `host_ip ${e.nodeIp} is this node, for a remote instance`);
  // ServiceIPs
  for (const s of e.serviceIps) {
    if (s.v4 !== undefined) {
      if (!inPrefix4(ctx.service4, s.v4)) {
        return no("service_ip_outside_range", `ServiceIP ${formatIPv4(s.v4)} outside the ServiceIP range`);
      }
      const other = ctx.serviceOwner4(s.v4)?.find((j) => j !== e.job);
      if (other !== undefined) {
        return no("service_ip_taken", `ServiceIP ${formatIPv4(s.v4)} is bound to job ${other}`);
      }
    }
    if (s.v6 !== undefined) {
      if (!inPrefix6(ctx.service6, s.v6)) {
        return no("service_ip_outside_range", `ServiceIP ${formatIPv6(s.v6)} outside the ServiceIP range`);
      }
      const other = ctx.serviceOwner6(s.v6)?.find((j) => j !== e.job);
      if (other !== undefined) {
        return no("service_ip_taken", `ServiceIP ${formatIPv6(s.v6)} is bound to job ${other}`);
      }
    }
  }
  return undefined;
}

/**
 * Splits the entries of one result for `job` into those that may be applied and those refused
 * (each with its cause). ServiceIPs are also checked across the result: two instances of the job
 * may share its RR/Closest addresses, but an instance IP names one instance only.
 */
export function checkEntries(job: string, entries: readonly TableEntry[], ctx: RouteContext): CheckedEntries {
  ctx = withOwnerMemo(ctx);
  const accepted: TableEntry[] = [];
  const rejected: RejectedEntry[] = [];
  const instanceIps = new Set<string>();
  for (const e of entries) {
    const p = e.job !== job
      ? { cause: "service_ip_taken" as const, detail: `entry of ${e.job} in ${job}` }
      : checkEntry(e, ctx);
    if (p) {
      rejected.push({ entry: e, cause: p.cause, detail: p.detail });
      continue;
    }
    let dup: string | undefined;
    for (const s of e.serviceIps) {
      if (s.kind !== "Instance") continue;
      for (const k of [s.v4 !== undefined ? formatIPv4(s.v4) : "", s.v6 ? formatIPv6(s.v6) : ""]) {
        if (k !== "" && dup === undefined && instanceIps.has(k)) dup = k;
      }
    }
    if (dup !== undefined) {
      rejected.push({
        entry: e,
        cause: "service_ip_taken",
        detail: `${e.job}#${e.instance}: instance IP ${dup} given to two instances`,
      });
      continue;
    }
    for (const s of e.serviceIps) {
      if (s.kind !== "Instance") continue;
      if (s.v4 !== undefined) instanceIps.add(formatIPv4(s.v4));
      if (s.v6) instanceIps.add(formatIPv6(s.v6));
    }
    accepted.push(e);
  }
  return { accepted, rejected };
}

/**
 * The context with the ServiceIP owner lookups remembered for one result: the instances of a job
 * share its RR/Closest addresses, so without this a result of k instances asks k times per address.
 */
function withOwnerMemo(ctx: RouteContext): RouteContext {
  const v4 = new Map<number, readonly string[] | undefined>();
  const v6 = new Map<string, readonly string[] | undefined>();
  const memo = <K>(
    m: Map<K, readonly string[] | undefined>,
    k: K,
    ask: () => readonly string[] | undefined,
  ) => {
    if (!m.has(k)) m.set(k, ask());
    return m.get(k);
  };
  return {
    ...ctx,
    isOwnInstance: ctx.isOwnInstance.bind(ctx),
    serviceOwner4: (a) => memo(v4, a, () => ctx.serviceOwner4(a)),
    serviceOwner6: (a) => memo(v6, formatIPv6(a), () => ctx.serviceOwner6(a)),
  };
}

export { RateLimitedLog } from "../log.ts";
