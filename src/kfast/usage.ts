/**
 * Kernel fast path: which ServiceIPs the kernel carried traffic for since the last look (pure).
 *
 * A job's table entries stay on a node while its interest is used (src/control/client.ts: idle for
 * 10 s → interest/remove, the job leaves the table). The workers report use from the packets they
 * see; a flow the kernel carries never reaches them, so without this the jobs under a running kernel
 * flow expired — on the client's node (the dialled service: the table change cut the flow) and on the
 * server's (the client's job, dialled by the replies: the client's node stopped being a peer, and its
 * marked flows were removed). The controller reads our connection-tracking entries every few seconds
 * and counts an address as used when one of its flows is new or moved bytes (or the kernel keeps no
 * byte counts): for a flow this node sent (mark {@link KFAST_MARK_BASE}) the dialled ServiceIP, for one
 * a peer sent us (that peer's mark) the sender's InstanceIP.
 *
 * @example
 * ```ts
 * import { kernelUse, parseUseFlows } from "./usage.ts";
 * const line = "tcp 6 431999 ESTABLISHED src=10.18.0.2 dst=10.30.0.1 sport=40000 dport=80 packets=3 " +
 *   "bytes=180 src=10.18.0.66 dst=10.30.0.10 sport=80 dport=40000 packets=2 bytes=120 [ASSURED] " +
 *   "mark=1313538048 use=1";
 * const first = kernelUse(parseUseFlows(line), new Map());
 * first.used; // ["10.30.0.1"] (a new flow)
 * kernelUse(parseUseFlows(line), first.bytes).used; // [] (no bytes since)
 * ```
 */
import { KFAST_MARK_BASE, KFAST_MARK_MASK } from "./render.ts";

/** One of our connection-tracking entries, as far as use goes. */
export interface UseFlow {
  /** The entry's original tuple (its identity). */
  key: string;
  /** The address whose jobs it uses (dialled ServiceIP, or the peer's sender InstanceIP). */
  addr: string;
  /** Bytes both ways (0 without connection-tracking accounting). */
  bytes: number;
}

/** Parses `conntrack -L` text: the entries marked as the kernel path's (ours or a peer's). */
export function parseUseFlows(text: string): UseFlow[] {
  const out: UseFlow[] = [];
  for (const line of text.split("\n")) {
    const m = /\bmark=(\d+)/.exec(line);
    if (!m) continue;
    const mark = Number(m[1]);
    if (((mark & KFAST_MARK_MASK) >>> 0) !== KFAST_MARK_BASE) continue;
    const first = new Map<string, string>();
    let bytes = 0;
    let seenBytes = 0;
    for (const w of line.trim().split(/\s+/)) {
      const i = w.indexOf("=");
      if (i <= 0) continue;
      const k = w.slice(0, i), v = w.slice(i + 1);
      if (k === "bytes" && seenBytes++ < 2) bytes += Number(v) || 0;
      if (!first.has(k)) first.set(k, v);
    }
    const src = first.get("src"), dst = first.get("dst");
    if (!src || !dst) continue;
    const key = `${line.trim().split(/\s+/)[1]} ${src} ${first.get("sport")} ${dst} ${first.get("dport")}`;
    out.push({ key, addr: mark === KFAST_MARK_BASE ? dst : src, bytes });
  }
  return out;
}

/** Result of {@link kernelUse}. */
export interface KernelUse {
  /** Addresses (dotted) with traffic since the last look, each once. */
  used: string[];
  /** Byte counts per flow now (the next call's `last`). */
  bytes: Map<string, number>;
}

/** The addresses whose flows are new or moved bytes since `last` (byte counts per flow key). */
export function kernelUse(flows: Iterable<UseFlow>, last: ReadonlyMap<string, number>): KernelUse {
  const used = new Set<string>();
  const bytes = new Map<string, number>();
  for (const f of flows) {
    bytes.set(f.key, f.bytes);
    // bytes 0: no conntrack accounting, only the entry's presence says the flow lives.
    if (f.bytes === 0 || last.get(f.key) !== f.bytes) used.add(f.addr);
  }
  return { used: [...used], bytes };
}
