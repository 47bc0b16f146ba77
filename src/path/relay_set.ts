/**
 * The control plane's relays (issue 12): its own (`netmanager control --relay`, relay.ts) and the
 * nodes that offer themselves (`RelayCandidate`, relay_host.ts). A pair whose punch failed is
 * placed on the control plane's relay when there is one, else on an offering node that is
 * reachable by both: registered, offered within the last 30 s, and not behind NAT (the reflector
 * saw it at the address it offers), the least loaded first. Remote allocations are asked for over
 * MQTT (`serve` → `served`, relay_msg.ts). When a relay node leaves (withdraws its offer, stops
 * offering, is removed) its pairs move to another relay, or back to their direct endpoints when
 * there is none (`onMoved`).
 *
 * @example
 * ```ts
 * import { RelaySet } from "./relay_set.ts";
 * const s = new RelaySet({
 *   observed: () => ({ ip: "198.51.100.3", port: 50103 }),
 *   isNode: () => true,
 *   send: (relay, cmd) => console.log(relay, cmd),
 *   onMoved: () => {},
 * });
 * s.offer("w3", { on: true, address: "198.51.100.3", id: "a" });
 * console.log(s.enabled); // true
 * s.stop();
 * ```
 * @module
 */
import { logger } from "../log.ts";
import { RelayError, type RelayServer } from "./relay.ts";
import type { RelayEndpoint, RelayOffer, RelayServe, RelayServed } from "./relay_msg.ts";
import { RELAY_OFFER_EVERY_MS } from "./relay_msg.ts";

const log = logger("relay");

/** Options of {@link RelaySet}. */
export interface RelaySetOptions {
  /** The control plane's own relay (`--relay`), preferred when present. */
  own?: RelayServer;
  /** A node's tunnel endpoint as the reflector saw it. */
  observed: (worker: string) => { ip: string; port: number } | undefined;
  /** Whether `worker` is a registered node. */
  isNode: (worker: string) => boolean;
  /** Sends a command to relay node `relay` (its `serve` topic). */
  send: (relay: string, cmd: RelayServe) => void;
  /**
   * Pair `a`–`b` moved to another relay (`via[0]` is what `a` dials, `via[1]` `b`'s) or, `via`
   * undefined, lost its relay (both dial each other's own endpoint again).
   */
  onMoved: (a: string, b: string, via: [RelayEndpoint, RelayEndpoint] | undefined) => void;
  /** How long a relay node has to answer a `pair` command (default 3000 ms). */
  answerMs?: number;
}

/** Where a pair is relayed: `relay` "" = the control plane's own. */
interface Placement {
  readonly relay: string;
  readonly a: string;
  readonly b: string;
  readonly address: string;
  readonly ports: [number, number];
}

interface Candidate {
  address: string;
  id: string | undefined;
  at: number;
  /** The observed addresses last sent to it (text), to send only changes. */
  observedSent: string;
}

function pairKey(a: string, b: string): string {
  return a < b ? `${a}\n${b}` : `${b}\n${a}`;
}

/** See the module. */
export class RelaySet {
  readonly #opts: RelaySetOptions;
  readonly #candidates = new Map<string, Candidate>();
  readonly #placed = new Map<string, Placement>();
  /** Pairs being placed (so two requests for one pair make one allocation). */
  readonly #placing = new Map<string, Promise<Placement>>();
  /** Answers awaited from relay nodes: `relay\npairKey` → resolver. */
  readonly #waiting = new Map<string, (r: RelayServed) => void>();
  readonly #timer: ReturnType<typeof setInterval>;

  constructor(opts: RelaySetOptions) {
    this.#opts = opts;
    this.#timer = setInterval(() => this.sweep(Date.now()), 2000);
    Deno.unrefTimer(this.#timer as unknown as number);
  }

  /** Whether any relay can be used now (own, or an offering node). */
  get enabled(): boolean {
    return this.#opts.own !== undefined || this.#candidates.size > 0;
  }

  /** The offering nodes with their address and how many pairs each relays. */
  candidates(): Array<{ worker: string; address: string; pairs: number }> {
    return [...this.#candidates].map(([worker, c]) => ({
      worker,
      address: c.address,
      pairs: this.#load(worker),
    }));
  }

  #load(relay: string): number {
    let n = 0;
    for (const p of this.#placed.values()) if (p.relay === relay) n++;
    return n;
  }

  /** A node's offer (or withdrawal). */
  offer(worker: string, o: RelayOffer, now = Date.now()): void {
    if (!o.on || o.address === undefined) {
      if (this.#candidates.has(worker)) this.#leave(worker, "withdrawn");
      return;
    }
    if (!this.#opts.isNode(worker)) return;
    let c = this.#candidates.get(worker);
    if (c && c.id !== o.id) {
      this.#leave(worker, "restarted"); // its allocations are gone: its pairs are placed again
      c = undefined;
    }
    if (c) {
      c.at = now;
      c.address = o.address;
    } else {
      this.#candidates.set(worker, { address: o.address, id: o.id, at: now, observedSent: "" });
      log.info("relay node offered", { worker, address: o.address });
    }
  }

  /** A relay node's answer. */
  served(relay: string, r: RelayServed): void {
    const key = pairKey(r.a, r.b);
    if ("freed" in r) {
      const p = this.#placed.get(key);
      if (p?.relay !== relay) return;
      this.#placed.delete(key);
      this.#opts.onMoved(p.a, p.b, undefined);
      return;
    }
    const w = this.#waiting.get(`${relay}\n${key}`);
    if (w) w(r);
    else if ("ports" in r && this.#placed.get(key)?.relay !== relay) {
      this.#opts.send(relay, { op: "drop", a: r.a, b: r.b }); // too late: not used
    }
  }

  /** Whether relay node `w` is still there: offered lately and registered. */
  #alive(w: string, now: number): boolean {
    const c = this.#candidates.get(w);
    return c !== undefined && now - c.at <= 3 * RELAY_OFFER_EVERY_MS && this.#opts.isNode(w);
  }

  /** Whether `w` may take a pair now: alive and seen by the reflector at its address (not behind NAT). */
  #usable(w: string, now: number): boolean {
    return this.#alive(w, now) && this.#opts.observed(w)?.ip === this.#candidates.get(w)!.address;
  }

  /** The endpoints `a` and `b` dial, once placed (made when missing). Throws {@link RelayError}. */
  async pair(a: string, b: string): Promise<{ via: [RelayEndpoint, RelayEndpoint]; created: boolean }> {
    if (a === b) throw new RelayError(`cannot relay node ${a} to itself`);
    const key = pairKey(a, b);
    let p = this.#placed.get(key);
    let created = false;
    if (!p) {
      let placing = this.#placing.get(key);
      if (!placing) {
        placing = this.#place(a, b, new Set()).finally(() => this.#placing.delete(key));
        this.#placing.set(key, placing);
        created = true;
      }
      p = await placing;
    }
    return { via: this.#viaOf(p, a, b), created };
  }

  #viaOf(p: Placement, a: string, b: string): [RelayEndpoint, RelayEndpoint] {
    const e = (port: number) => ({ ip: p.address, port });
    return p.a === a && p.b === b ? [e(p.ports[0]), e(p.ports[1])] : [e(p.ports[1]), e(p.ports[0])];
  }

  async #place(a: string, b: string, skip: Set<string>): Promise<Placement> {
    const key = pairKey(a, b);
    const own = this.#opts.own;
    if (own) {
      const { ports } = await own.pair(a, b);
      const p = { relay: "", a, b, address: own.address, ports };
      this.#placed.set(key, p);
      return p;
    }
    const now = Date.now();
    const order = [...this.#candidates.keys()]
      .filter((w) => w !== a && w !== b && !skip.has(w) && this.#usable(w, now))
      .sort((x, y) => this.#load(x) - this.#load(y));
    for (const relay of order) {
      const address = this.#candidates.get(relay)!.address;
      const observed: Record<string, string> = {};
      for (const w of [a, b]) {
        const o = this.#opts.observed(w);
        if (o) observed[w] = o.ip;
      }
      const answer = await this.#ask(relay, key, { op: "pair", a, b, observed });
      if (answer && "ports" in answer && this.#candidates.has(relay)) {
        const ports: [number, number] = answer.a === a ? answer.ports : [answer.ports[1], answer.ports[0]];
        const p = { relay, a, b, address, ports };
        this.#placed.set(key, p);
        log.info("pair relayed by a node", { nodes: `${a} ${b}`, relay, address });
        return p;
      }
      log.warn("relay node did not take the pair", {
        relay,
        nodes: `${a} ${b}`,
        reason: answer && "error" in answer ? answer.error : "no answer",
      });
    }
    throw new RelayError(`no relay for ${a} and ${b} (no --relay, no reachable relay node)`);
  }

  #ask(relay: string, key: string, cmd: RelayServe): Promise<RelayServed | undefined> {
    const id = `${relay}\n${key}`;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(id);
        resolve(undefined);
      }, this.#opts.answerMs ?? 3000);
      this.#waiting.set(id, (r) => {
        clearTimeout(timer);
        this.#waiting.delete(id);
        resolve(r);
      });
      this.#opts.send(relay, cmd);
    });
  }

  /** The endpoint `asker` dials to reach `target` through a relay, when relayed. */
  viaFor(asker: string, target: string): RelayEndpoint | undefined {
    const p = this.#placed.get(pairKey(asker, target));
    return p ? this.#viaOf(p, asker, target)[0] : undefined;
  }

  /** The nodes `worker` is relayed with. */
  partnersOf(worker: string): string[] {
    const out: string[] = [];
    for (const p of this.#placed.values()) {
      if (p.a === worker) out.push(p.b);
      else if (p.b === worker) out.push(p.a);
    }
    return out;
  }

  /** Frees the pair's relay; true when it had one. */
  drop(a: string, b: string): boolean {
    const key = pairKey(a, b);
    const p = this.#placed.get(key);
    if (!p) return false;
    this.#placed.delete(key);
    if (p.relay === "") this.#opts.own?.drop(a, b);
    else this.#opts.send(p.relay, { op: "drop", a, b });
    return true;
  }

  /** A node's observed endpoint changed: relays holding its pairs learn it now. */
  observedChanged(): void {
    this.#opts.own?.observedChanged();
    for (const [relay, c] of this.#candidates) {
      const observed: Record<string, string> = {};
      for (const p of this.#placed.values()) {
        if (p.relay !== relay) continue;
        for (const w of [p.a, p.b]) {
          const o = this.#opts.observed(w);
          if (o) observed[w] = o.ip;
        }
      }
      const text = JSON.stringify(observed);
      if (text === c.observedSent || text === "{}") continue;
      c.observedSent = text;
      this.#opts.send(relay, { op: "observed", observed });
    }
  }

  /** A node was removed: its pairs are freed; a relay node's pairs move. */
  forget(worker: string): void {
    if (this.#candidates.has(worker)) this.#leave(worker, "removed");
    for (const other of this.partnersOf(worker)) this.drop(worker, other);
    this.#opts.own?.forget(worker);
  }

  /** Relay nodes that stopped offering leave; addresses are kept current. */
  sweep(now: number): void {
    for (const w of [...this.#candidates.keys()]) {
      if (!this.#alive(w, now)) this.#leave(w, "stale");
    }
    this.observedChanged();
  }

  /** Relay node `relay` leaves: each of its pairs goes to another relay, or back to direct. */
  #leave(relay: string, why: string): void {
    this.#candidates.delete(relay);
    const moving = [...this.#placed.values()].filter((p) => p.relay === relay);
    log.info("relay node left", { worker: relay, why, pairs: moving.length });
    for (const p of moving) {
      this.#placed.delete(pairKey(p.a, p.b));
      if (why === "withdrawn") this.#opts.send(relay, { op: "drop", a: p.a, b: p.b });
      this.pair(p.a, p.b).then(
        (r) => this.#opts.onMoved(p.a, p.b, r.via),
        () => this.#opts.onMoved(p.a, p.b, undefined),
      );
    }
  }

  /** Stops the sweep (the own relay is stopped by its owner). */
  stop(): void {
    clearInterval(this.#timer);
  }
}
