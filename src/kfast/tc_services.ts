/**
 * Kernel fast path, tc mode, pure part: what lets `nm_kf_out` decide a new flow's first packets itself
 * (bpf/kfast.c `decide`). Two maps, computed from the plan (src/kfast/plan.ts):
 * - `nm_kf_svc`: a ServiceIP (RoundRobin, or an InstanceIP with its one instance) whose candidates all
 *   live on capable peers (a known tunnel port and underlay route each) → the candidates (namespace IP,
 *   InstanceIP, node endpoint, device) and an RR counter the program advances per new flow. A service
 *   with a local candidate, or more than {@link SVC_MAX} candidates, stays on the TUN.
 * - `nm_kf_snat`: a local instance's namespace IP → its InstanceIP (the source the peer sees).
 *
 * The RR counter is the kernel's own: while a ServiceIP is in `nm_kf_svc`, every new TCP (SYN) and UDP
 * flow to it from a local instance is decided there, so the rotation per ServiceIP is the kernel's; the
 * workers' rotation only sees what the program leaves to the TUN (ICMP, fragments, flows opened before
 * the service entered the map) and the two are not merged. Rewriting a service's entry (its candidates
 * changed) restarts its counter at 0.
 *
 * {@link diffEntries} turns the entries in the kernel into the wanted ones by what changed (O(changed)
 * map writes; comparison ignores the counter).
 *
 * @example
 * ```ts
 * import { diffEntries, svcEntriesOf } from "./tc_services.ts";
 * import { parseIPv4 } from "../addr/mod.ts";
 * const plan = {
 *   services: new Map([[parseIPv4("10.30.0.1"), [parseIPv4("10.19.2.2")]]]),
 *   remote: new Map([[parseIPv4("10.19.2.2"), "192.168.1.2"]]),
 *   instances: new Map([[parseIPv4("10.19.2.2"), parseIPv4("10.30.0.12")]]),
 *   snat: new Map<number, number>(),
 * };
 * const want = svcEntriesOf(plan, { localIp: "192.168.1.1", localPort: 50103, peerPort: () => 50103,
 *   ifindexTo: () => 2 });
 * const d = diffEntries(new Map(), want);
 * d.set.length; // 1
 * ```
 */
import { formatIPv4 } from "../addr/mod.ts";
import type { KfastPlan } from "./plan.ts";
import type { TcNodeView } from "./tc_flows.ts";
import { ipKey, u32 } from "./tc_maps.ts";

/** Candidates per ServiceIP the program chooses among (bpf/kfast.c SVC_MAX). */
export const SVC_MAX = 16;
const INST_BYTES = 20;
/** `struct svc_val`. */
export const SVC_BYTES = 16 + SVC_MAX * INST_BYTES;

/** One candidate of a kernel-decided service. */
export interface SvcCandidate {
  /** Namespace IP (the flow's new destination). */
  nsip: string;
  /** Its InstanceIP (the answers' source). */
  iip: string;
  /** Its node's tunnel endpoint and the underlay device towards it. */
  nodeIp: string;
  nodePort: number;
  ifindex: number;
}

/** A kernel-decided service: this node's endpoint and the candidates in table order. */
export interface SvcEntry {
  localIp: string;
  localPort: number;
  candidates: SvcCandidate[];
}

/** Map entries by key (hex of the key bytes) with their key and value bytes. */
export type MapEntries = Map<string, { key: Uint8Array; value: Uint8Array }>;

/** Hex text of bytes (map keys and value comparison). */
export function hexOf(b: Uint8Array, from = 0, to = b.length): string {
  let s = "";
  for (let i = from; i < to; i++) s += b[i].toString(16).padStart(2, "0");
  return s;
}

function port(p: number): number {
  if (!Number.isInteger(p) || p < 0 || p > 65535) throw new RangeError(`port ${p}`);
  return p;
}

/** `struct svc_val` (counter 0). Throws RangeError with no or more than {@link SVC_MAX} candidates. */
export function encodeSvc(s: SvcEntry): Uint8Array {
  if (s.candidates.length === 0 || s.candidates.length > SVC_MAX) {
    throw new RangeError(`${s.candidates.length} candidates`);
  }
  const b = new Uint8Array(SVC_BYTES);
  const v = new DataView(b.buffer);
  v.setUint32(0, s.candidates.length, true);
  b.set(ipKey(s.localIp), 8);
  v.setUint16(12, port(s.localPort), true);
  s.candidates.forEach((c, i) => {
    const at = 16 + i * INST_BYTES;
    b.set(ipKey(c.nsip), at);
    b.set(ipKey(c.iip), at + 4);
    b.set(ipKey(c.nodeIp), at + 8);
    v.setUint16(at + 12, port(c.nodePort), true);
    v.setUint32(at + 16, c.ifindex, true);
  });
  return b;
}

/** The RR counter of a `struct svc_val` (how many flows the program decided since it was written). */
export function svcCounter(b: Uint8Array): number {
  if (b.length !== SVC_BYTES) throw new RangeError("svc value size");
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(4, true);
}

/** The plan's parts {@link svcEntriesOf} reads. */
export type SvcPlanView = Pick<KfastPlan, "services" | "remote" | "instances" | "snat">;

/**
 * The `nm_kf_svc` entries of `plan`: every service whose candidates are all remote, with a known
 * InstanceIP, tunnel port and route each (at most {@link SVC_MAX}).
 */
export function svcEntriesOf(plan: SvcPlanView, node: TcNodeView): MapEntries {
  const out: MapEntries = new Map();
  for (const [addr, cands] of plan.services) {
    if (cands.length === 0 || cands.length > SVC_MAX) continue;
    const candidates: SvcCandidate[] = [];
    for (const c of cands) {
      const nodeIp = plan.remote.get(c);
      const iip = plan.instances.get(c);
      if (nodeIp === undefined || iip === undefined) break; // local (or unknown): the TUN decides
      const nodePort = node.peerPort(nodeIp);
      const ifindex = node.ifindexTo(nodeIp);
      if (nodePort === undefined || ifindex === undefined) break;
      candidates.push({ nsip: formatIPv4(c), iip: formatIPv4(iip), nodeIp, nodePort, ifindex });
    }
    if (candidates.length !== cands.length) continue;
    const key = ipKey(formatIPv4(addr));
    out.set(hexOf(key), {
      key,
      value: encodeSvc({ localIp: node.localIp, localPort: node.localPort, candidates }),
    });
  }
  return out;
}

/** The `nm_kf_snat` entries of `plan` (local namespace IP → InstanceIP). */
export function snatEntriesOf(plan: SvcPlanView): MapEntries {
  const out: MapEntries = new Map();
  for (const [nsip, iip] of plan.snat) {
    const key = ipKey(formatIPv4(nsip));
    const value = ipKey(formatIPv4(iip));
    out.set(hexOf(key), { key, value });
  }
  return out;
}

/** The writes that turn `have` into `want`. */
export interface EntryDiff {
  set: { key: Uint8Array; value: Uint8Array }[];
  gone: Uint8Array[];
}

/**
 * What to write and delete (pure, O(entries) compare, O(changed) writes). Values compare without a
 * `struct svc_val`'s RR counter (bytes 4..8), so a running rotation is not reset by a rewrite of the same.
 */
export function diffEntries(have: MapEntries, want: MapEntries): EntryDiff {
  const same = (a: Uint8Array, b: Uint8Array) => {
    if (a.length !== b.length) return false;
    const skip = a.length === SVC_BYTES;
    for (let i = 0; i < a.length; i++) {
      if (skip && i >= 4 && i < 8) continue;
      if (a[i] !== b[i]) return false;
    }
    return true;
  };
  const set: EntryDiff["set"] = [];
  const gone: Uint8Array[] = [];
  for (const [k, w] of want) {
    const h = have.get(k);
    if (!h || !same(h.value, w.value)) set.push(w);
  }
  for (const [k, h] of have) if (!want.has(k)) gone.push(h.key);
  return { set, gone };
}

/** Reads a map's entries (start-up: what a previous daemon left). */
export function readEntries(m: { entries(): Iterable<[Uint8Array, Uint8Array]> }): MapEntries {
  const out: MapEntries = new Map();
  for (const [key, value] of m.entries()) out.set(hexOf(key), { key, value });
  return out;
}

/** Index of the per-CPU counter of flows the program decided itself (bpf/kfast.c STAT_DECIDED). */
export const STAT_DECIDED = 7;
/** The stats map key of {@link STAT_DECIDED}. */
export const STAT_DECIDED_KEY: Uint8Array = u32(STAT_DECIDED);
