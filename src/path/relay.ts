/**
 * The relay (`netmanager control --relay`, issue 12): UDP allocations between pairs of registered
 * nodes whose punch failed. Each allocation has one socket per side (see relay_core.ts for who may
 * use it); a datagram on A's port goes out unchanged from B's port to B's locked endpoint and back,
 * so each node simply sees the other at an endpoint on the relay host. Allocations are idempotent
 * per pair, dropped when a direct path works again (the node says so) and after `idleMs` without
 * traffic.
 *
 * @example
 * ```ts
 * import { RelayServer } from "./relay.ts";
 * const r = new RelayServer({ address: "127.0.0.1", observedIp: () => undefined });
 * const a = await r.pair("w1", "w2");
 * console.log(r.viaFor("w1", "w2")?.port === a.ports[0]);
 * r.stop();
 * ```
 * @module
 */
import dgram from "node:dgram";
import { logger } from "../log.ts";
import { type RelayCounters, type RelayDrop, RelayPairState } from "./relay_core.ts";

const log = logger("relay");

/** Options of {@link RelayServer}. */
export interface RelayServerOptions {
  /** The address nodes dial the relay at (put into their table results). */
  address: string;
  /** Bind address (default 0.0.0.0). */
  host?: string;
  /** A node's public address as the reflector saw it. */
  observedIp: (worker: string) => string | undefined;
  /** Whether `worker` is still a registered node (a removed node's allocations are freed). */
  isNode?: (worker: string) => boolean;
  /** Per-node rate in bytes per second (default 125 000 000 = 1 Gbit/s). */
  bytesPerSec?: number;
  /** An allocation without traffic this long is freed (default 600 000 ms). */
  idleMs?: number;
  /** Most allocations at once (default 1024: 2048 sockets). */
  maxPairs?: number;
}

/** One allocation: its state and its two sockets. */
interface Pair {
  readonly key: string;
  readonly state: RelayPairState;
  readonly socks: [dgram.Socket, dgram.Socket];
  readonly ports: [number, number];
}

/** Counters of the whole relay (for metrics and the log). */
export interface RelayTotals {
  pairs: number;
  packets: number;
  bytes: number;
  relocks: number;
  drops: Record<RelayDrop, number>;
}

/** Thrown when an allocation cannot be made. */
export class RelayError extends Error {
  /** Creates the error with `message` (what is wrong). */
  constructor(message: string) {
    super(message);
    this.name = "RelayError";
  }
}

function pairKey(a: string, b: string): string {
  return a < b ? `${a}\n${b}` : `${b}\n${a}`;
}

function bindSocket(host: string): Promise<dgram.Socket> {
  const s = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
  return new Promise((resolve, reject) => {
    s.once("error", reject);
    s.bind(0, host, () => {
      s.off("error", reject);
      s.on("error", (e) => log.warn("relay socket error", { error: String(e) }));
      resolve(s);
    });
  });
}

/** See the module. */
export class RelayServer {
  readonly address: string;
  readonly #opts: RelayServerOptions;
  readonly #pairs = new Map<string, Pair>();
  readonly #pending = new Map<string, Promise<Pair>>();
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  /** Counters of freed allocations (so totals only grow). */
  readonly #gone: RelayTotals = {
    pairs: 0,
    packets: 0,
    bytes: 0,
    relocks: 0,
    drops: { stranger: 0, not_locked: 0, peer_not_locked: 0, rate: 0 },
  };
  readonly #timer: ReturnType<typeof setInterval>;

  constructor(opts: RelayServerOptions) {
    this.address = opts.address;
    this.#opts = opts;
    this.#timer = setInterval(() => this.#expire(Date.now()), 10_000);
    Deno.unrefTimer(this.#timer as unknown as number);
  }

  /** The allocation between `a` and `b` (made when missing): `ports[0]` is `a`'s, `ports[1]` `b`'s. */
  async pair(a: string, b: string): Promise<{ ports: [number, number]; created: boolean }> {
    if (a === b) throw new RelayError(`cannot relay node ${a} to itself`);
    const key = pairKey(a, b);
    const have = this.#pairs.get(key);
    const order = (p: Pair) =>
      p.state.sideOf(a) === 0 ? p.ports : [p.ports[1], p.ports[0]] as [number, number];
    if (have) return { ports: order(have), created: false };
    let pending = this.#pending.get(key);
    if (!pending) {
      if (this.#pairs.size >= (this.#opts.maxPairs ?? 1024)) {
        throw new RelayError(`relay full (${this.#pairs.size} allocations)`);
      }
      pending = this.#open(key, a, b).finally(() => this.#pending.delete(key));
      this.#pending.set(key, pending);
    }
    return { ports: order(await pending), created: true };
  }

  async #open(key: string, a: string, b: string): Promise<Pair> {
    const host = this.#opts.host ?? "0.0.0.0";
    const s0 = await bindSocket(host);
    const s1 = await bindSocket(host).catch((e) => {
      s0.close();
      throw e;
    });
    const state = new RelayPairState(a, b, {
      observedIp: this.#opts.observedIp,
      bytesPerSec: this.#opts.bytesPerSec ?? 125_000_000,
      buckets: this.#buckets,
    }, Date.now());
    const socks: [dgram.Socket, dgram.Socket] = [s0, s1];
    const p: Pair = { key, state, socks, ports: [s0.address().port, s1.address().port] };
    for (const side of [0, 1] as const) {
      const out = socks[1 - side];
      socks[side].on("message", (msg, r) => {
        const ip = r.address.startsWith("::ffff:") ? r.address.slice(7) : r.address;
        const v = state.decide(side, msg, ip, r.port, Date.now());
        if (v.forward) out.send(msg, v.forward.port, v.forward.ip);
      });
    }
    this.#pairs.set(key, p);
    log.info("relay allocation", { nodes: `${a} ${b}`, ports: `${p.ports[0]} ${p.ports[1]}` });
    return p;
  }

  /** The endpoint `asker` dials to reach `target` through the relay, when they have an allocation. */
  viaFor(asker: string, target: string): { ip: string; port: number } | undefined {
    const p = this.#pairs.get(pairKey(asker, target));
    if (!p) return undefined;
    const side = p.state.sideOf(asker);
    return side === -1 ? undefined : { ip: this.address, port: p.ports[side] };
  }

  /** The nodes `worker` has allocations with. */
  partnersOf(worker: string): string[] {
    const out: string[] = [];
    for (const p of this.#pairs.values()) {
      const s = p.state.sideOf(worker);
      if (s >= 0) out.push(p.state.sides[1 - s].worker);
    }
    return out;
  }

  /** Frees the allocation between `a` and `b`; true when there was one. */
  drop(a: string, b: string): boolean {
    const p = this.#pairs.get(pairKey(a, b));
    if (!p) return false;
    this.#free(p);
    return true;
  }

  #free(p: Pair): void {
    this.#pairs.delete(p.key);
    this.#add(this.#gone, p.state.counters);
    this.#gone.pairs++;
    for (const s of p.socks) {
      try {
        s.close();
      } catch { /* closed */ }
    }
    log.info("relay allocation freed", {
      nodes: `${p.state.sides[0].worker} ${p.state.sides[1].worker}`,
      packets: p.state.counters.packets,
    });
  }

  #add(t: RelayTotals, c: RelayCounters): void {
    t.packets += c.packets;
    t.bytes += c.bytes;
    t.relocks += c.relocks;
    for (const k of Object.keys(c.drops) as RelayDrop[]) t.drops[k] += c.drops[k];
  }

  #expire(now: number): void {
    const idle = this.#opts.idleMs ?? 600_000;
    const isNode = this.#opts.isNode ?? (() => true);
    for (const p of [...this.#pairs.values()]) {
      const gone = !isNode(p.state.sides[0].worker) || !isNode(p.state.sides[1].worker);
      if (gone || now - p.state.lastUsed > idle) this.#free(p);
    }
  }

  /** Frees every allocation of `worker` (removed from the cluster); how many there were. */
  forget(worker: string): number {
    let n = 0;
    for (const p of [...this.#pairs.values()]) {
      if (p.state.sideOf(worker) !== -1) {
        this.#free(p);
        n++;
      }
    }
    return n;
  }

  /** Totals over all allocations, current and freed (`pairs`: current ones). */
  totals(): RelayTotals {
    const t: RelayTotals = { ...this.#gone, drops: { ...this.#gone.drops }, pairs: this.#pairs.size };
    for (const p of this.#pairs.values()) this.#add(t, p.state.counters);
    return t;
  }

  /** Closes every socket. */
  stop(): void {
    clearInterval(this.#timer);
    for (const p of [...this.#pairs.values()]) this.#free(p);
  }
}
