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
import { EventFd } from "../../ffi/eventfd.ts";
import { openUdp, udpFromInfo, type UdpInfo, type UdpSocket } from "../../ffi/udp.ts";
import { logger } from "../log.ts";
import { type RelayCounters, type RelayDrop, RelayPairState } from "./relay_core.ts";
import type { RelayFwdCommand, RelayFwdEvent, RelayLocks } from "./relay_fwd.ts";

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
  /** Allocation ports come from this range (inclusive; default: any free port). */
  ports?: readonly [number, number];
  /** An allocation was freed by the relay itself (idle, or a node gone), not by {@link RelayServer.drop}. */
  onFreed?: (a: string, b: string) => void;
}

/**
 * One allocation as the main isolate sees it: who is on which side (a {@link RelayPairState} kept
 * for `sideOf`; the forwarding Worker holds the live one) and the counters it last reported.
 */
interface Pair {
  readonly key: string;
  /** Unique id in the Worker (a pair freed and made again gets a new one). */
  readonly id: string;
  readonly state: RelayPairState;
  readonly ports: [number, number];
  /** Its sockets (owned by the Worker; handed to a new one after a failure). */
  readonly socks: [UdpInfo, UdpInfo];
  /** Each side's lock as last reported (for a restarted Worker). */
  locks: RelayLocks;
  /** Counters of Workers before the current one. */
  base: RelayCounters;
  counters: RelayCounters;
  lastUsed: number;
}

/** Counters of the whole relay (for metrics and the log). */
export interface RelayTotals {
  pairs: number;
  packets: number;
  bytes: number;
  relocks: number;
  drops: Record<RelayDrop, number>;
  /** Times the forwarding Worker failed and was restarted. */
  restarts: number;
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

const EMPTY = (): RelayCounters => ({
  packets: 0,
  bytes: 0,
  relocks: 0,
  drops: { stranger: 0, not_locked: 0, peer_not_locked: 0, rate: 0 },
});

function sumCounters(a: RelayCounters, b: RelayCounters): RelayCounters {
  const drops = { ...a.drops };
  for (const k of Object.keys(b.drops) as RelayDrop[]) drops[k] += b.drops[k];
  return { packets: a.packets + b.packets, bytes: a.bytes + b.bytes, relocks: a.relocks + b.relocks, drops };
}

function bindSocket(host: string, range: readonly [number, number] | undefined): UdpSocket {
  // Non-blocking (the Worker polls them all), GRO on (bursts read as one slot, sent on with GSO).
  const open = (port: number) =>
    openUdp({ bindAddr: host, port, nonBlocking: true, gro: true, rcvbuf: 4 << 20, sndbuf: 4 << 20 });
  if (!range) return open(0);
  // A port of the range (a firewall opens just those): from a random start, the first free one.
  const [lo, hi] = range;
  const n = hi - lo + 1;
  const start = Math.floor(Math.random() * n);
  let last: unknown;
  for (let i = 0; i < n; i++) {
    try {
      return open(lo + (start + i) % n);
    } catch (e) {
      last = e;
    }
  }
  throw new RelayError(`no free UDP port in ${lo}-${hi}: ${(last as Error)?.message ?? "empty range"}`);
}

/** The forwarding Worker's module (a path that also holds from the packaged src/bundle/ chunks). */
function workerModule(): URL {
  return new URL("../path/relay_worker.ts", import.meta.url);
}

/** See the module. */
export class RelayServer {
  readonly address: string;
  readonly #opts: RelayServerOptions;
  readonly #pairs = new Map<string, Pair>();
  /** Freed allocations whose final counters the Worker has not sent yet (id → last reported). */
  readonly #freed = new Map<string, { last: RelayCounters; base: RelayCounters }>();
  /** Counters of freed allocations (so totals only grow). */
  readonly #gone: RelayTotals = { ...EMPTY(), pairs: 0, restarts: 0 };
  readonly #timer: ReturnType<typeof setInterval>;
  #worker: Worker | undefined;
  #wake: EventFd | undefined;
  #crashHook: (() => void) | undefined;
  #restartTimer: ReturnType<typeof setTimeout> | undefined;
  #lastRestart = 0;
  #stopped = false;
  /** How often the forwarding Worker failed and was restarted. */
  restarts = 0;
  #seq = 0;
  #ticks = 0;
  #observedSent = "";
  #ready = Promise.withResolvers<void>();

  constructor(opts: RelayServerOptions) {
    this.address = opts.address;
    this.#opts = opts;
    this.#timer = setInterval(() => {
      this.#syncObserved();
      if (++this.#ticks % 20 === 0) this.#expire(Date.now());
    }, 500);
    Deno.unrefTimer(this.#timer as unknown as number);
    this.#start(); // the Worker's start-up (module load) is not paid by the first allocation
    if (Deno.env.get("NETMANAGER_TEST_RELAY_CRASH") === "1") {
      // Test hook: SIGUSR2 makes the forwarding Worker throw (as a bug would); it is restarted.
      this.#crashHook = () => this.#worker?.postMessage({ type: "crash" } satisfies RelayFwdCommand);
      Deno.addSignalListener("SIGUSR2", this.#crashHook);
    }
  }

  /** Starts the forwarding Worker and hands it every current allocation (a restart: with its locks). */
  #start(): void {
    this.#wake = new EventFd();
    const w = new Worker(workerModule(), { type: "module" });
    w.onmessage = (ev: MessageEvent<RelayFwdEvent>) => {
      if (this.#worker === w) this.#event(ev.data);
    };
    w.onerror = (ev) => {
      ev.preventDefault();
      if (this.#worker === w) this.#failed(w, ev.message);
    };
    this.#worker = w;
    w.postMessage(
      {
        type: "init",
        wakeFd: this.#wake.fd,
        bytesPerSec: this.#opts.bytesPerSec ?? 125_000_000,
      } satisfies RelayFwdCommand,
    );
    for (const p of this.#pairs.values()) {
      p.base = p.counters; // the new Worker counts from zero
      this.#post(this.#addCommand(p));
    }
    this.#observedSent = "";
    this.#syncObserved();
  }

  /**
   * The Worker failed (an uncaught error): it is ended and a new one takes over the same sockets
   * (the allocations' ports stay, so the nodes notice nothing but a short gap) with each side's
   * last reported lock. At most one restart a second.
   */
  #failed(w: Worker, message: string): void {
    log.error("relay forwarding worker failed; restarting it", { message, allocations: this.#pairs.size });
    w.terminate();
    const wake = this.#wake;
    this.#worker = undefined;
    this.#wake = undefined;
    // Allocations being freed when it failed: their final counters will not come (and whether it
    // closed their sockets is unknown — they are left alone rather than risk closing a reused fd).
    this.#freed.clear();
    this.restarts++;
    const wait = Math.max(0, this.#lastRestart + 1000 - Date.now());
    this.#restartTimer = setTimeout(() => {
      this.#restartTimer = undefined;
      wake?.close();
      if (this.#stopped) return;
      this.#lastRestart = Date.now();
      this.#start();
    }, wait);
  }

  #addCommand(p: Pair): RelayFwdCommand {
    const [a, b] = p.state.sides;
    const observed: Record<string, string> = {};
    for (const w of [a.worker, b.worker]) {
      const ip = this.#opts.observedIp(w);
      if (ip !== undefined) observed[w] = ip;
    }
    return { type: "add", key: p.id, a: a.worker, b: b.worker, socks: p.socks, observed, locks: p.locks };
  }

  #post(c: RelayFwdCommand): void {
    if (!this.#worker) return; // restarting: #start hands over the current allocations
    this.#worker.postMessage(c);
    this.#wake!.signal();
  }

  /** Resolves once the forwarding Worker runs (allocations made before are served from then on). */
  ready(): Promise<void> {
    return this.#ready.promise;
  }

  #event(e: RelayFwdEvent): void {
    if (e.type === "ready") {
      this.#ready.resolve();
    } else if (e.type === "stats") {
      for (const p of this.#pairs.values()) {
        const s = e.pairs[p.id];
        if (s) {
          p.counters = sumCounters(p.base, s.counters);
          p.lastUsed = s.lastUsed;
          p.locks = s.locks;
        }
      }
    } else if (e.type === "removed") {
      const freed = this.#freed.get(e.key);
      if (!freed) return;
      this.#freed.delete(e.key);
      // Add what happened between the last report and the removal.
      this.#add(this.#gone, sumCounters(freed.base, e.counters));
      this.#sub(this.#gone, freed.last);
    } else if (e.type === "error") {
      log.error("relay forwarding worker", { message: e.message });
    }
  }

  /** The reflector saw a node at a new address: the Worker learns it now, not within 500 ms. */
  observedChanged(): void {
    this.#syncObserved();
  }

  /** Tells the Worker the reflector's view of the nodes with allocations, when it changed. */
  #syncObserved(): void {
    if (this.#pairs.size === 0) return;
    const observed: Record<string, string> = {};
    for (const p of this.#pairs.values()) {
      for (const s of p.state.sides) {
        const ip = this.#opts.observedIp(s.worker);
        if (ip !== undefined) observed[s.worker] = ip;
      }
    }
    const text = JSON.stringify(observed);
    if (text === this.#observedSent) return;
    this.#observedSent = text;
    this.#post({ type: "observed", observed });
  }

  /** The allocation between `a` and `b` (made when missing): `ports[0]` is `a`'s, `ports[1]` `b`'s. */
  // deno-lint-ignore require-await
  async pair(a: string, b: string): Promise<{ ports: [number, number]; created: boolean }> {
    if (a === b) throw new RelayError(`cannot relay node ${a} to itself`);
    const key = pairKey(a, b);
    const order = (p: Pair) =>
      p.state.sideOf(a) === 0 ? p.ports : [p.ports[1], p.ports[0]] as [number, number];
    const have = this.#pairs.get(key);
    if (have) return { ports: order(have), created: false };
    if (this.#pairs.size >= (this.#opts.maxPairs ?? 1024)) {
      throw new RelayError(`relay full (${this.#pairs.size} allocations)`);
    }
    return { ports: order(this.#open(key, a, b)), created: true };
  }

  #open(key: string, a: string, b: string): Pair {
    const host = this.#opts.host ?? "0.0.0.0";
    const s0 = bindSocket(host, this.#opts.ports);
    let s1: UdpSocket;
    try {
      s1 = bindSocket(host, this.#opts.ports);
    } catch (e) {
      s0.close();
      throw e;
    }
    const state = new RelayPairState(a, b, { observedIp: () => undefined, bytesPerSec: 1 });
    const id = `${key}\n${++this.#seq}`;
    const p: Pair = {
      key,
      id,
      state,
      ports: [s0.localPort, s1.localPort],
      socks: [s0.info(), s1.info()],
      locks: [null, null],
      base: EMPTY(),
      counters: EMPTY(),
      lastUsed: Date.now(),
    };
    // The Worker owns the sockets from here on (it closes them when the allocation is freed).
    this.#pairs.set(key, p);
    this.#post(this.#addCommand(p));
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
    this.#add(this.#gone, p.counters);
    this.#gone.pairs++;
    if (this.#worker) {
      this.#freed.set(p.id, { last: p.counters, base: p.base });
      this.#post({ type: "remove", key: p.id });
    } else {
      // Restarting: no Worker owns its sockets now.
      for (const i of p.socks) udpFromInfo(i).close();
    }
    log.info("relay allocation freed", {
      nodes: `${p.state.sides[0].worker} ${p.state.sides[1].worker}`,
      packets: p.counters.packets,
    });
  }

  #add(t: RelayTotals, c: RelayCounters): void {
    t.packets += c.packets;
    t.bytes += c.bytes;
    t.relocks += c.relocks;
    for (const k of Object.keys(c.drops) as RelayDrop[]) t.drops[k] += c.drops[k];
  }

  #sub(t: RelayTotals, c: RelayCounters): void {
    t.packets -= c.packets;
    t.bytes -= c.bytes;
    t.relocks -= c.relocks;
    for (const k of Object.keys(c.drops) as RelayDrop[]) t.drops[k] -= c.drops[k];
  }

  #expire(now: number): void {
    const idle = this.#opts.idleMs ?? 600_000;
    const isNode = this.#opts.isNode ?? (() => true);
    for (const p of [...this.#pairs.values()]) {
      const gone = !isNode(p.state.sides[0].worker) || !isNode(p.state.sides[1].worker);
      if (gone || now - p.lastUsed > idle) {
        this.#free(p);
        this.#opts.onFreed?.(p.state.sides[0].worker, p.state.sides[1].worker);
      }
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

  /**
   * Totals over all allocations, current and freed (`pairs`: current ones). The forwarding Worker
   * reports its counters every 100 ms while they change, so these lag by up to that.
   */
  totals(): RelayTotals {
    const t: RelayTotals = {
      ...this.#gone,
      drops: { ...this.#gone.drops },
      pairs: this.#pairs.size,
      restarts: this.restarts,
    };
    for (const p of this.#pairs.values()) this.#add(t, p.counters);
    return t;
  }

  /** Frees every allocation and stops the forwarding Worker (it closes the sockets). */
  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
    clearTimeout(this.#restartTimer);
    if (this.#crashHook) Deno.removeSignalListener("SIGUSR2", this.#crashHook);
    for (const p of [...this.#pairs.values()]) this.#free(p);
    if (this.#worker) {
      this.#post({ type: "stop" });
      this.#worker = undefined;
    }
  }
}
