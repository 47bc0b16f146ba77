/**
 * Kernel fast path: which dialled ServiceIPs the kernel carried traffic to since the last look (pure).
 *
 * A job's table entries stay on a node while its interest is used (src/control/client.ts: idle for
 * 10 s → interest/remove, the job leaves the table). The workers report use from the packets they
 * see; a flow the kernel carries never reaches them, so without this its job would expire while the
 * flow runs, and the table change would cut the flow (its conntrack entries deleted). The controller
 * reads the kernel's flows every few seconds and counts a ServiceIP as used when one of its flows is
 * new or moved bytes (or the kernel keeps no byte counts).
 *
 * @example
 * ```ts
 * import { kernelUse } from "./usage.ts";
 * import type { KernelFlow } from "./conntrack.ts";
 * const f: KernelFlow = { path: "kernel", version: 4, proto: 6, src: "10.18.0.2", sport: 40000,
 *   dialled: "10.30.0.1", dport: 80, chosen: "10.18.0.66", senderIp: "10.30.0.6", node: "", packets: 9, bytes: 900 };
 * const first = kernelUse([f], new Map());
 * first.used; // ["10.30.0.1"] (a new flow)
 * kernelUse([f], first.bytes).used; // [] (no bytes since)
 * ```
 */
import type { KernelFlow } from "./conntrack.ts";

/** Result of {@link kernelUse}. */
export interface KernelUse {
  /** Dialled ServiceIPs (dotted) with traffic since the last look, each once. */
  used: string[];
  /** Byte counts per flow now (the next call's `last`). */
  bytes: Map<string, number>;
}

/** The ServiceIPs whose kernel flows are new or moved bytes since `last` (byte counts per flow). */
export function kernelUse(flows: Iterable<KernelFlow>, last: ReadonlyMap<string, number>): KernelUse {
  const used = new Set<string>();
  const bytes = new Map<string, number>();
  for (const f of flows) {
    const key = `${f.proto} ${f.src} ${f.sport} ${f.dialled} ${f.dport}`;
    bytes.set(key, f.bytes);
    // bytes 0: no conntrack accounting, only the entry's presence says the flow lives.
    if (f.bytes === 0 || last.get(key) !== f.bytes) used.add(f.dialled);
  }
  return { used: [...used], bytes };
}
