/**
 * Kernel fast path (issue 16), pure part: which ServiceIPs the kernel carries and how, computed from
 * the translation table and the set of peers that announced the capability, and the difference
 * between two such plans as the commands that turn one into the other (O(changed)).
 *
 * A ServiceIP (IPv4, `RoundRobin` or `Instance`) goes to the kernel only when every one of its
 * candidates is on this node or on a kernel-fast peer: its RR rotation is then the kernel's
 * (`numgen inc`, per new flow) and no candidate needs the userspace path. Anything else (Closest,
 * Random, IPv6, Oakestra Go peers, peers without the bit, peers down) stays on the TUN.
 *
 * @example
 * ```ts
 * import { diffPlans, emptyPlan, planKfast } from "./plan.ts";
 * import { parseIPv4 } from "../addr/mod.ts";
 * import type { TableEntry } from "../table/entry.ts";
 * const e: TableEntry = {
 *   job: "a.b.c.d", instance: 0, nodeIp: "192.168.1.2", nodePort: 50103, nsip4: parseIPv4("10.19.2.2"),
 *   serviceIps: [{ kind: "RoundRobin", v4: parseIPv4("10.30.0.1") }, { kind: "Instance", v4: parseIPv4("10.30.0.12") }],
 * };
 * const plan = planKfast({ entries: [e], isLocal: () => false, peers: new Set(["192.168.1.2"]) });
 * const d = diffPlans(emptyPlan(), plan);
 * d.servicesSet.length; // 2 (the RR ServiceIP and the InstanceIP)
 * ```
 */
import type { ServiceIpKind, TableEntry } from "../table/entry.ts";
import { instanceIp4Of } from "../table/entry.ts";

/** What the kernel carries. Addresses are IPv4 as uint32. */
export interface KfastPlan {
  /** ServiceIP → its candidates' namespace IPs, in table order (the numgen map's order). */
  readonly services: ReadonlyMap<number, readonly number[]>;
  /** Local instance namespace IP → its InstanceIP (source NAT of flows the kernel carries). */
  readonly snat: ReadonlyMap<number, number>;
  /** Remote candidate namespace IP → the peer node (underlay IP) hosting it. */
  readonly remote: ReadonlyMap<number, string>;
  /** Kernel-fast peers (underlay IPv4 text), sorted. */
  readonly peers: readonly string[];
  /** Candidate namespace IP → its InstanceIP (the tc mode restores replies from it). */
  readonly instances: ReadonlyMap<number, number>;
  /**
   * Every remote instance of the table (namespace IP → node), carried or not: the tc mode keeps a
   * running flow while its instance exists, also when its node stops answering (kernel state works).
   */
  readonly nodes: ReadonlyMap<number, string>;
}

/** Input of {@link planKfast}. */
export interface PlanInput {
  /** Every table entry. */
  readonly entries: Iterable<TableEntry>;
  /** Is this entry on this node? */
  readonly isLocal: (e: TableEntry) => boolean;
  /** Peers (underlay IPv4 text) that announced the capability, with us, and are not down. */
  readonly peers: ReadonlySet<string>;
}

/** A plan that programs nothing. */
export function emptyPlan(): KfastPlan {
  return {
    services: new Map(),
    snat: new Map(),
    remote: new Map(),
    peers: [],
    instances: new Map(),
    nodes: new Map(),
  };
}

const KERNEL_KINDS: ReadonlySet<ServiceIpKind> = new Set<ServiceIpKind>(["RoundRobin", "Instance"]);

/** Computes the plan (pure, O(entries)). */
export function planKfast(input: PlanInput): KfastPlan {
  const groups = new Map<number, { kind: ServiceIpKind; rows: TableEntry[] }>();
  const snat = new Map<number, number>();
  const nodes = new Map<number, string>();
  for (const e of input.entries) {
    const local = input.isLocal(e);
    if (!local && e.nsip4 !== 0) nodes.set(e.nsip4 >>> 0, e.nodeIp);
    if (local && e.nsip4 !== 0) {
      const inst = instanceIp4Of(e);
      if (inst !== undefined) snat.set(e.nsip4 >>> 0, inst >>> 0);
    }
    for (const s of e.serviceIps) {
      if (s.v4 === undefined) continue;
      let g = groups.get(s.v4 >>> 0);
      // A group's kind is that of its first candidate's matching ServiceIP (as the table's).
      if (!g) groups.set(s.v4 >>> 0, g = { kind: s.kind, rows: [] });
      g.rows.push(e);
    }
  }
  const services = new Map<number, number[]>();
  const remote = new Map<number, string>();
  const instances = new Map<number, number>();
  for (const [addr, g] of groups) {
    if (!KERNEL_KINDS.has(g.kind) || g.rows.length === 0) continue;
    if (g.kind === "Instance" && g.rows.length !== 1) continue;
    let ok = true;
    for (const e of g.rows) {
      if (e.nsip4 === 0 || !(input.isLocal(e) || input.peers.has(e.nodeIp))) ok = false;
    }
    if (!ok) continue;
    services.set(addr, g.rows.map((e) => e.nsip4 >>> 0));
    for (const e of g.rows) {
      if (!input.isLocal(e)) remote.set(e.nsip4 >>> 0, e.nodeIp);
      const inst = instanceIp4Of(e);
      if (inst !== undefined) instances.set(e.nsip4 >>> 0, inst >>> 0);
    }
  }
  // Every capable peer, used or not: its flows to our instances come back through its own entry.
  return { services, snat, remote, peers: [...input.peers].sort(), instances, nodes };
}

/** What changed between two plans. */
export interface PlanDiff {
  /** Services added or whose candidates changed (address, new candidates). */
  readonly servicesSet: Array<[number, readonly number[]]>;
  /** Services no longer carried. */
  readonly servicesGone: number[];
  /** Map elements to add; a changed one is also in the `…Gone` list (removed first). */
  readonly snatSet: Array<[number, number]>;
  readonly snatGone: number[];
  readonly remoteSet: Array<[number, string]>;
  readonly remoteGone: number[];
  readonly peersAdded: string[];
  readonly peersGone: string[];
  /**
   * Namespace IPs whose kernel flows must be cut now: candidates that left every service, or moved
   * to another node (their connection-tracking entries still point at them).
   */
  readonly cut: number[];
}

function sameList(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** The changes from `a` to `b` (pure). */
export function diffPlans(a: KfastPlan, b: KfastPlan): PlanDiff {
  const servicesSet: Array<[number, readonly number[]]> = [];
  const servicesGone: number[] = [];
  for (const [k, v] of b.services) {
    const old = a.services.get(k);
    if (!old || !sameList(old, v)) servicesSet.push([k, v]);
  }
  for (const k of a.services.keys()) if (!b.services.has(k)) servicesGone.push(k);
  const snatSet: Array<[number, number]> = [];
  const snatGone: number[] = [];
  // A changed value is a removal and an addition (nft cannot replace a map element in place).
  for (const [k, v] of b.snat) {
    const old = a.snat.get(k);
    if (old !== v) snatSet.push([k, v]);
    if (old !== undefined && old !== v) snatGone.push(k);
  }
  for (const k of a.snat.keys()) if (!b.snat.has(k)) snatGone.push(k);
  const remoteSet: Array<[number, string]> = [];
  const remoteGone: number[] = [];
  for (const [k, v] of b.remote) {
    const old = a.remote.get(k);
    if (old !== v) remoteSet.push([k, v]);
    if (old !== undefined && old !== v) remoteGone.push(k);
  }
  for (const k of a.remote.keys()) if (!b.remote.has(k)) remoteGone.push(k);
  const pa = new Set(a.peers);
  const pb = new Set(b.peers);
  const targets = (p: KfastPlan) => {
    const s = new Set<number>();
    for (const v of p.services.values()) for (const t of v) s.add(t);
    return s;
  };
  const ta = targets(a);
  const tb = targets(b);
  const cut = new Set<number>();
  for (const t of ta) if (!tb.has(t)) cut.add(t);
  for (const [k, v] of b.remote) if (a.remote.has(k) && a.remote.get(k) !== v) cut.add(k);
  return {
    servicesSet,
    servicesGone,
    snatSet,
    snatGone,
    remoteSet,
    remoteGone,
    peersAdded: b.peers.filter((p) => !pa.has(p)),
    peersGone: a.peers.filter((p) => !pb.has(p)),
    cut: [...cut],
  };
}

/** True when the diff changes nothing. */
export function emptyDiff(d: PlanDiff): boolean {
  return d.servicesSet.length + d.servicesGone.length + d.snatSet.length + d.snatGone.length +
      d.remoteSet.length + d.remoteGone.length + d.peersAdded.length + d.peersGone.length + d.cut.length ===
    0;
}
