/**
 * Merges the counters of several data-plane Workers into one report: sums of the counters, drops
 * by reason, per ServiceIP (by address), and per peer (by endpoint) the sums of its traffic with one view of its state (FAST or
 * JUMBO on when every worker that knows the peer has it on; the smallest RTT known).
 *
 * @example
 * ```ts
 * import { mergeStats } from "./merge_stats.ts";
 * import type { StatsData } from "./messages.ts";
 * declare const a: StatsData, b: StatsData;
 * const all = mergeStats([a, b]);
 * all.tunRx === a.tunRx + b.tunRx; // true
 * ```
 */
import type { StatsData } from "./messages.ts";
import type { PeerStats } from "./peers.ts";
import { mergeServiceTraffic } from "./service_counters.ts";

type Summed = Exclude<
  keyof StatsData,
  "drops" | "peers" | "usedJobs" | "heap" | "workers" | "choices" | "services" | "securePeerDrops"
>;
const SUMMED: Summed[] = [
  "tunRx",
  "tunRxBytes",
  "tunTx",
  "tunTxBytes",
  "udpRx",
  "udpRxBytes",
  "udpTx",
  "udpTxBytes",
  "localHandoff",
  "jumboTx",
  "jumboRx",
  "jumboTxInPlace",
  "parked",
  "released",
  "parkedNow",
  "flows",
];

function minDefined(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined ? b : b === undefined ? a : Math.min(a, b);
}

/** Each worker probes the path itself: the smaller measured MTU is the safe one. */
function mergeMtu(a: PeerStats, b: PeerStats): { mtu?: number; mtuProbed?: boolean } {
  if (a.mtu === undefined || b.mtu === undefined) {
    const one = a.mtu === undefined ? b : a;
    return one.mtu === undefined ? {} : { mtu: one.mtu, mtuProbed: one.mtuProbed === true };
  }
  const mtu = a.mtuProbed === b.mtuProbed ? Math.min(a.mtu, b.mtu) : a.mtuProbed ? a.mtu : b.mtu;
  return { mtu, mtuProbed: a.mtuProbed === true || b.mtuProbed === true };
}

/** Two workers' views of one peer as one. */
function mergePeer(a: PeerStats, b: PeerStats): PeerStats {
  const node = a.node ?? b.node;
  const rttMs = minDefined(a.rttMs, b.rttMs);
  const minRttMs = minDefined(a.minRttMs, b.minRttMs);
  const lastSeen = a.lastSeen === undefined ? b.lastSeen : Math.max(a.lastSeen, b.lastSeen ?? -Infinity);
  return {
    endpoint: a.endpoint,
    ...(node !== undefined ? { node } : {}),
    ...(rttMs !== undefined ? { rttMs } : {}),
    ...(minRttMs !== undefined ? { minRttMs } : {}),
    // A mode is on when every worker that knows the peer uses it (a refusal may reach one of them).
    fast: !a.capsKnown ? b.fast : !b.capsKnown ? a.fast : a.fast && b.fast,
    jumbo: !a.capsKnown ? b.jumbo : !b.capsKnown ? a.jumbo : a.jumbo && b.jumbo,
    // The peer's announcement: any worker that heard it.
    ...(a.kfast || b.kfast ? { kfast: true } : {}),
    jumboRefusals: a.jumboRefusals + b.jumboRefusals,
    capsKnown: a.capsKnown || b.capsKnown,
    txPackets: a.txPackets + b.txPackets,
    txBytes: a.txBytes + b.txBytes,
    rxPackets: a.rxPackets + b.rxPackets,
    rxBytes: a.rxBytes + b.rxBytes,
    drops: a.drops + b.drops,
    probesSent: a.probesSent + b.probesSent,
    probesLost: a.probesLost + b.probesLost,
    // Each worker probes for itself: the smaller measured value is the safe one.
    ...mergeMtu(a, b),
    ...(a.punched || b.punched ? { punched: true } : {}),
    ...(a.ageMs !== undefined || b.ageMs !== undefined
      ? { ageMs: Math.max(a.ageMs ?? 0, b.ageMs ?? 0) }
      : {}),
    ...(a.lastAnswer !== undefined || b.lastAnswer !== undefined
      ? { lastAnswer: Math.max(a.lastAnswer ?? -Infinity, b.lastAnswer ?? -Infinity) }
      : {}),
    ...(lastSeen !== undefined ? { lastSeen } : {}),
    // One worker probes and judges liveness; the others report unknown.
    ...mergeHealth(a, b),
  };
}

function mergeHealth(a: PeerStats, b: PeerStats): Pick<PeerStats, "health" | "downCause" | "downCount"> {
  const judged = a.health === "down" || (a.health === "up" && b.health !== "down") ? a : b;
  return {
    ...(judged.health !== undefined ? { health: judged.health } : {}),
    ...(judged.downCause !== undefined ? { downCause: judged.downCause } : {}),
    downCount: Math.max(a.downCount ?? 0, b.downCount ?? 0),
  };
}

/** One report for all workers (the first report alone is returned as it is). */
export function mergeStats(parts: readonly StatsData[]): StatsData {
  if (parts.length === 1) return parts[0];
  const { choices: _c, securePeerDrops: _s, ...first } = parts[0];
  const out: StatsData = {
    ...first,
    drops: {},
    peers: [],
    usedJobs: [],
    heap: { used: 0, total: 0, external: 0 },
  };
  for (const k of SUMMED) out[k] = 0;
  const peers = new Map<string, PeerStats>();
  const jobs = new Set<string>();
  for (const p of parts) {
    for (const k of SUMMED) out[k] += p[k];
    for (const [r, n] of Object.entries(p.drops)) out.drops[r] = (out.drops[r] ?? 0) + n;
    for (const ps of p.peers) {
      const had = peers.get(ps.endpoint);
      peers.set(ps.endpoint, had ? mergePeer(had, ps) : ps);
    }
    for (const j of p.usedJobs) jobs.add(j);
    if (p.choices) {
      out.choices ??= {};
      for (const [k, n] of Object.entries(p.choices)) out.choices[k] = (out.choices[k] ?? 0) + n;
    }
    if (p.securePeerDrops) {
      out.securePeerDrops ??= {};
      for (const [peer, d] of Object.entries(p.securePeerDrops)) {
        const o = out.securePeerDrops[peer] ??= {};
        for (const [r, n] of Object.entries(d)) o[r] = (o[r] ?? 0) + n;
      }
    }
    out.heap.used += p.heap.used;
    out.heap.total += p.heap.total;
    out.heap.external += p.heap.external;
  }
  out.peers = [...peers.values()];
  out.usedJobs = [...jobs];
  out.services = mergeServiceTraffic(parts.map((p) => p.services ?? []));
  out.workers = parts.map((p) => ({ tunRx: p.tunRx, udpRx: p.udpRx, flows: p.flows }));
  return out;
}
