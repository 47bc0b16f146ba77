/**
 * Kernel fast path: the flows the kernel carries for this node's instances, parsed from
 * `conntrack -L` (pure; the kernel's connection-tracking entries marked as ours, with the packet
 * and byte counters that `nf_conntrack_acct` keeps), for `table show --flows`.
 *
 * @example
 * ```ts
 * import { parseKernelFlows } from "./conntrack.ts";
 * const line = "tcp 6 431999 ESTABLISHED src=10.18.0.2 dst=10.30.0.1 sport=40000 dport=80 packets=3 " +
 *   "bytes=180 src=10.18.0.66 dst=10.30.0.10 sport=80 dport=40000 packets=2 bytes=120 [ASSURED] " +
 *   "mark=1313538048 use=1";
 * parseKernelFlows(line, () => "192.168.77.2:50103")[0].chosen; // "10.18.0.66"
 * ```
 */
import { KFAST_MARK_BASE } from "./render.ts";

/** A flow the kernel carries (the shape of a userspace flow row, plus `path`). */
export interface KernelFlow {
  path: "kernel";
  version: 4;
  proto: number;
  /** Sender namespace IP and port. */
  src: string;
  sport: number;
  /** Dialled ServiceIP and port. */
  dialled: string;
  dport: number;
  /** Chosen instance namespace IP. */
  chosen: string;
  /** Sender InstanceIP (source NAT). */
  senderIp: string;
  /** Node key of the chosen instance ("" when unknown). */
  node: string;
  /** Packets and bytes both ways (0 without connection-tracking accounting). */
  packets: number;
  bytes: number;
}

/**
 * Parses `conntrack -L` text: the flows this node originated through the fast path (mark
 * {@link KFAST_MARK_BASE} exactly; flows a peer sent us carry that peer's mark and are its flows).
 * `nodeOf` names the node of a chosen namespace IP. Malformed lines are skipped.
 */
export function parseKernelFlows(text: string, nodeOf: (nsip: string) => string): KernelFlow[] {
  const out: KernelFlow[] = [];
  for (const line of text.split("\n")) {
    const m = /\bmark=(\d+)/.exec(line);
    if (!m || Number(m[1]) !== KFAST_MARK_BASE) continue;
    const words = line.trim().split(/\s+/);
    const proto = Number(words[1]);
    const kv = words.filter((w) => w.includes("=")).map((w) => w.split("=", 2) as [string, string]);
    // Two tuples: the original direction's keys first, then the reply's.
    const first = new Map<string, string>();
    const second = new Map<string, string>();
    for (const [k, v] of kv) (first.has(k) ? second : first).set(k, v);
    const src = first.get("src");
    const dst = first.get("dst");
    const chosen = second.get("src");
    const senderIp = second.get("dst");
    if (!src || !dst || !chosen || !senderIp || !Number.isInteger(proto)) continue;
    out.push({
      path: "kernel",
      version: 4,
      proto,
      src,
      sport: Number(first.get("sport") ?? 0),
      dialled: dst,
      dport: Number(first.get("dport") ?? 0),
      chosen,
      senderIp,
      node: nodeOf(chosen),
      packets: Number(first.get("packets") ?? 0) + Number(second.get("packets") ?? 0),
      bytes: Number(first.get("bytes") ?? 0) + Number(second.get("bytes") ?? 0),
    });
  }
  return out;
}
