/**
 * Kernel fast path, pure part: which running TUN flows move onto the kernel path (issue 16, gap 1).
 *
 * A flow that began on the TUN has a connection-tracking entry without NAT, so the kernel would keep
 * routing it to the TUN for life. Once its ServiceIP is kernel-carried, the node pins it (an nft map
 * element: protocol . source . source port . ServiceIP . port → the instance the workers chose) and
 * deletes its un-NATed conntrack entry: the flow's next packet is a new entry for the kernel, which
 * the pin translates to the same instance (src/kfast/kernel.ts `move`). A flow is moved once the
 * workers saw it active between two looks (its packet count grew), so idle and ended flows stay.
 *
 * @example
 * ```ts
 * import { pinKey, selectMoves } from "./move.ts";
 * import { parseIPv4 } from "../addr/mod.ts";
 * const services = new Map([[parseIPv4("10.30.0.1"), [parseIPv4("10.18.0.66")]]]);
 * const f = { version: 4, proto: 6, src: "10.18.0.2", sport: 40000, dialled: "10.30.0.1", dport: 80,
 *   chosen: "10.18.0.66", packets: 10 } as const;
 * const first = selectMoves([f], services, new Map(), new Set());
 * first.moves.length; // 0 (seen once: not yet known to be active)
 * const second = selectMoves([{ ...f, packets: 12 }], services, first.seen, new Set());
 * pinKey(second.moves[0]); // "6 . 10.18.0.2 . 40000 . 10.30.0.1 . 80"
 * ```
 */
import { formatIPv4, tryParseIPv4 } from "../addr/mod.ts";

/** A flow pinned to an instance. Addresses are IPv4 as uint32. */
export interface Pin {
  /** IP protocol (6 TCP, 17 UDP). */
  proto: number;
  /** Sender namespace IP and port. */
  src: number;
  sport: number;
  /** Dialled ServiceIP and port. */
  dst: number;
  dport: number;
  /** The instance the workers chose (namespace IP). */
  chosen: number;
}

/** The fields of a worker flow row this module reads (src/proxy/flows.ts `FlowInfo`). */
export interface TunFlow {
  version: 4 | 6;
  proto: number;
  src: string;
  sport: number;
  dialled: string;
  dport: number;
  chosen: string;
  packets: number;
}

/** Result of {@link selectMoves}. */
export interface MoveSelection {
  /** Flows to move now. */
  moves: Pin[];
  /** Packet counts of the kernel-carried services' TUN flows (the next call's `seen`). */
  seen: Map<string, number>;
}

/** The nft map key of a pin (also its identity). */
export function pinKey(p: Omit<Pin, "chosen">): string {
  return `${p.proto} . ${formatIPv4(p.src)} . ${p.sport} . ${formatIPv4(p.dst)} . ${p.dport}`;
}

/**
 * The TUN flows to move: IPv4 TCP/UDP flows to a kernel-carried ServiceIP whose chosen instance is
 * one of that service's kernel candidates, active since the last look (`seen`), not yet pinned.
 */
export function selectMoves(
  flows: Iterable<TunFlow>,
  services: ReadonlyMap<number, readonly number[]>,
  seen: ReadonlyMap<string, number>,
  pinned: ReadonlySet<string>,
): MoveSelection {
  const moves: Pin[] = [];
  const next = new Map<string, number>();
  for (const f of flows) {
    if (f.version !== 4 || (f.proto !== 6 && f.proto !== 17)) continue;
    const dst = tryParseIPv4(f.dialled);
    const src = tryParseIPv4(f.src);
    const chosen = tryParseIPv4(f.chosen);
    if (dst === undefined || src === undefined || chosen === undefined) continue;
    if (!services.get(dst >>> 0)?.includes(chosen >>> 0)) continue;
    const p: Pin = {
      proto: f.proto,
      src: src >>> 0,
      sport: f.sport,
      dst: dst >>> 0,
      dport: f.dport,
      chosen: chosen >>> 0,
    };
    const key = pinKey(p);
    next.set(key, f.packets);
    const before = seen.get(key);
    if (before !== undefined && f.packets > before && !pinned.has(key)) moves.push(p);
  }
  return { moves, seen: next };
}
