/**
 * The relay's decisions (issue 12), pure: when two registered nodes cannot punch a path between
 * them (symmetric NAT, UDP blocked) the control plane gives the pair an allocation — one UDP port
 * per side on the relay host. Node A dials its port as if it were B, node B its own as if it were
 * A; the relay forwards each datagram unchanged (opaque: SECURE 0x19 stays sealed end to end) from
 * the other side's port, so neither data plane needs a new wire format.
 *
 * A side is **locked** to one source `ip:port` by a HELLO or HELLO_ACK (0x10/0x11, sent in clear
 * before any session) carrying that side's node id from the address the reflector observed for it
 * (its NAT's public address); only datagrams from the locked endpoint are forwarded. A later HELLO
 * from the node at its (new) observed address moves the lock (roaming: a NAT that restarted or
 * moved). Anything else is dropped and counted: no open relay for strangers. Each node has a
 * token bucket in bytes per second across its allocations.
 *
 * @example
 * ```ts
 * import { RelayPairState } from "./relay_core.ts";
 * const p = new RelayPairState("w1", "w2", { observedIp: () => "203.0.113.7", bytesPerSec: 1e6 });
 * const v = p.decide(0, new Uint8Array([0x14]), "203.0.113.7", 40000, 0);
 * console.log(v.forward ? "forward" : v.drop); // "not_locked": w1 sent no HELLO yet
 * ```
 * @module
 */
import { decodeHello, HelloMessage } from "../proxy/wire.ts";

/** Why the relay dropped a datagram. */
export type RelayDrop = "stranger" | "not_locked" | "peer_not_locked" | "rate";

/** What to do with one datagram that arrived on a side's port. */
export type RelayVerdict =
  | { readonly forward: { readonly ip: string; readonly port: number }; readonly drop?: undefined }
  | { readonly forward?: undefined; readonly drop: RelayDrop };

/** Options of {@link RelayPairState}. */
export interface RelayPairOptions {
  /** A node's public address as the reflector saw it (undefined: unknown, the node cannot lock). */
  observedIp: (worker: string) => string | undefined;
  /** Per-node rate (bytes per second; the burst is one second's worth). */
  bytesPerSec: number;
  /** Shared per-node buckets (one per worker across all its allocations). */
  buckets?: Map<string, { tokens: number; at: number }>;
}

/** One side of an allocation: whose it is and where it is locked. */
export interface RelaySide {
  readonly worker: string;
  ip: string | undefined;
  port: number;
}

/** Counters of an allocation. */
export interface RelayCounters {
  packets: number;
  bytes: number;
  drops: Record<RelayDrop, number>;
  /** Lock changes after the first (roaming). */
  relocks: number;
}

/** An allocation's state between nodes `a` (side 0) and `b` (side 1). See the module. */
export class RelayPairState {
  readonly sides: [RelaySide, RelaySide];
  readonly counters: RelayCounters = {
    packets: 0,
    bytes: 0,
    drops: { stranger: 0, not_locked: 0, peer_not_locked: 0, rate: 0 },
    relocks: 0,
  };
  /** Last forwarded datagram (ms), for idle expiry. */
  lastUsed: number;
  readonly #opts: RelayPairOptions;
  readonly #buckets: Map<string, { tokens: number; at: number }>;
  readonly #hello = new HelloMessage();

  constructor(a: string, b: string, opts: RelayPairOptions, now = 0) {
    this.sides = [{ worker: a, ip: undefined, port: 0 }, { worker: b, ip: undefined, port: 0 }];
    this.#opts = opts;
    this.#buckets = opts.buckets ?? new Map();
    this.lastUsed = now;
  }

  /** The side of `worker`, or -1. */
  sideOf(worker: string): 0 | 1 | -1 {
    return this.sides[0].worker === worker ? 0 : this.sides[1].worker === worker ? 1 : -1;
  }

  #take(worker: string, bytes: number, now: number): boolean {
    const rate = this.#opts.bytesPerSec;
    let b = this.#buckets.get(worker);
    if (b === undefined) {
      b = { tokens: rate, at: now };
      this.#buckets.set(worker, b);
    }
    b.tokens = Math.min(rate, b.tokens + (now - b.at) * rate / 1000);
    b.at = now;
    if (b.tokens < bytes) return false;
    b.tokens -= bytes;
    return true;
  }

  /**
   * Decides about datagram `data` that arrived on side `side`'s port from `ip:port` at `now` (ms).
   * A GRO-coalesced read passes its first datagram as `data`, all its bytes as `bytes` and the
   * number of datagrams as `count` (the batch is one sender's, so one verdict covers it).
   */
  decide(
    side: 0 | 1,
    data: Uint8Array,
    ip: string,
    port: number,
    now: number,
    bytes: number = data.length,
    count = 1,
  ): RelayVerdict {
    const me = this.sides[side];
    const other = this.sides[1 - side];
    if (me.ip !== ip || me.port !== port) {
      // Only the node itself, from the address the reflector saw, with its id in a HELLO, may (re)lock.
      const seen = this.#opts.observedIp(me.worker);
      const hello = decodeHello(data, 0, data.length, this.#hello) && this.#hello.nodeId === me.worker;
      if (seen === undefined || seen !== ip || !hello) {
        return this.#drop(me.ip === undefined ? "not_locked" : "stranger");
      }
      if (me.ip !== undefined) this.counters.relocks++;
      me.ip = ip;
      me.port = port;
    }
    if (other.ip === undefined) return this.#drop("peer_not_locked");
    if (!this.#take(me.worker, bytes, now)) return this.#drop("rate");
    this.counters.packets += count;
    this.counters.bytes += bytes;
    this.lastUsed = now;
    return { forward: { ip: other.ip, port: other.port } };
  }

  #drop(why: RelayDrop): RelayVerdict {
    this.counters.drops[why]++;
    return { drop: why };
  }
}
