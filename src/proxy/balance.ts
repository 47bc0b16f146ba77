/**
 * Balancing policies: which candidate a NEW flow to a ServiceIP goes to (existing flows stay pinned
 * by the flow table). The policy comes from the ServiceIP's kind (see `ipTypeToKind` in
 * `src/table/entry.ts`, the one place the Oakestra `IpType` mapping lives):
 *
 * - `Instance`: the single candidate (the first one, should there be several).
 * - `RoundRobin`: true rotation per new flow and per ServiceIP. The rotation remembers the namespace
 *   IP it chose last and takes the next larger one (wrapping), so it stays fair when candidates
 *   come and go — no restart, no skipped or doubled instance.
 * - `Random`: uniform choice (Oakestra's behaviour for every kind) from a seeded PRNG passed in.
 * - `Closest`: the lowest RTT to the candidate's node, from `rttOf(nodeKey)`; an unknown RTT ranks
 *   last; ties (within `rttTieMs`) go to the fewest active flows (`loadOf`), then to rotation.
 *
 * Pure: no clock, no I/O; randomness and measurements come in as functions.
 *
 * Candidates are {@link TableEntry} objects by default; the engine balances over table row numbers
 * instead (`Balancer<number>` with `nsip4Of`/`nodeOf` reading the table's columns).
 *
 * @example
 * ```ts
 * import { Balancer, seededRandom } from "./balance.ts";
 * import type { TranslationTable } from "../table/table.ts";
 * declare const rtt: Map<string, number>, table: TranslationTable, dst: number;
 * const b = new Balancer({ random: seededRandom(7), rttOf: (node) => rtt.get(node) });
 * const group = table.service4(dst);
 * const chosen = group && b.choose(group); // a TableEntry
 * ```
 */
import type { ServiceGroup } from "../table/table.ts";
import { nodeKeyOf, type ServiceIpKind, type TableEntry } from "../table/entry.ts";

/**
 * A small seeded PRNG (mulberry32) returning floats in [0, 1).
 *
 * @example
 * ```ts
 * const r = seededRandom(42);
 * r() === seededRandom(42)(); // true
 * ```
 */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Inputs of the policies, for candidates of type `C`. */
export interface BalancerOptions<C = TableEntry> {
  /** Uniform floats in [0, 1) for `Random` (e.g. {@link seededRandom}). */
  readonly random: () => number;
  /** RTT in ms to a node (by node key `"ip:port"`), or undefined when unknown. For `Closest`. */
  readonly rttOf?: (node: string) => number | undefined;
  /** Active flows towards a candidate (e.g. `FlowTable.activeFlows(e.nsip4)`). For `Closest` ties. */
  readonly loadOf?: (candidate: C) => number;
  /** A candidate's namespace IPv4 (rotation order); default `e.nsip4` of a TableEntry. */
  readonly nsip4Of?: (candidate: C) => number;
  /** A candidate's node key (RTT); default `nodeKeyOf` of a TableEntry. */
  readonly nodeOf?: (candidate: C) => string;
  /** RTTs within this many ms of the best count as ties (default 0: exact). */
  readonly rttTieMs?: number;
  /** Bound on remembered rotation positions (default 65536); the least recently used is forgotten. */
  readonly maxServices?: number;
  /**
   * Rotation positions shared with other data-plane workers: a new flow on any worker takes the next
   * instance after the one any worker chose last. Without it each Balancer rotates on its own.
   */
  readonly shared?: SharedRotation;
}

/**
 * Round-robin positions in shared memory, for Balancers in several Workers: per ServiceIP key the
 * namespace IPv4 chosen last, updated with compare-and-swap so two workers choosing at once still
 * take consecutive instances. Open addressing over `slots` (tag, last) pairs of Int32; a slot once
 * claimed stays (a departed ServiceIP's stale position is harmless: rotation resumes after it). When
 * the probe window is full the Balancer falls back to its own position for that key.
 *
 * @example
 * ```ts
 * const buf = SharedRotation.create();
 * const b = new Balancer({ random: Math.random, shared: new SharedRotation(buf) }); // post `buf` to other Workers
 * ```
 */
export class SharedRotation {
  readonly #a: Int32Array<SharedArrayBuffer>;
  readonly #mask: number;

  /** A fresh shared area of `slots` (a power of two) positions. */
  static create(slots = 4096): SharedArrayBuffer {
    if (!Number.isInteger(Math.log2(slots)) || slots < 16) throw new RangeError("slots: a power of two ≥ 16");
    return new SharedArrayBuffer(slots * 8);
  }

  constructor(buf: SharedArrayBuffer) {
    this.#a = new Int32Array(buf);
    this.#mask = (this.#a.length >>> 1) - 1;
  }

  /** The slot of `key` (claimed on first use), or -1 when none is free nearby. */
  slot(key: number | string): number {
    let tag: number;
    if (typeof key === "number") tag = key | 0;
    else {
      tag = 0x811c9dc5; // FNV-1a
      for (let i = 0; i < key.length; i++) tag = Math.imul(tag ^ key.charCodeAt(i), 0x01000193);
    }
    if (tag === 0) tag = 1; // 0 marks a free slot
    let h = Math.imul(tag, 0x9e3779b1) >>> 0;
    for (let k = 0; k < 32; k++, h++) {
      const i = (h & this.#mask) << 1;
      const old = Atomics.compareExchange(this.#a, i, 0, tag);
      if (old === 0 || old === tag) return i;
    }
    return -1;
  }

  /** The namespace IPv4 chosen last at `slot`, or -1. */
  last(slot: number): number {
    const v = Atomics.load(this.#a, slot + 1);
    return v === 0 ? -1 : v >>> 0;
  }

  /** Sets the position to `next` if it is still `expected` (-1: none); false when another worker was first. */
  swap(slot: number, expected: number, next: number): boolean {
    const want = expected < 0 ? 0 : expected | 0;
    return Atomics.compareExchange(this.#a, slot + 1, want, next | 0) === want;
  }

  /** Sets the position unconditionally. */
  set(slot: number, next: number): void {
    Atomics.store(this.#a, slot + 1, next | 0);
  }
}

/** Chooses a candidate for a new flow. See the module documentation. */
export class Balancer<C = TableEntry> {
  readonly #random: () => number;
  readonly #rttOf: (node: string) => number | undefined;
  readonly #loadOf: ((candidate: C) => number) | undefined;
  readonly #ns: (candidate: C) => number;
  readonly #node: (candidate: C) => string;
  readonly #tie: number;
  readonly #max: number;
  readonly #shared: SharedRotation | undefined;
  /** ServiceIP key → nsip4 chosen last by rotation. */
  readonly #last = new Map<number | string, number>();

  constructor(opts: BalancerOptions<C>) {
    this.#random = opts.random;
    this.#rttOf = opts.rttOf ?? (() => undefined);
    this.#loadOf = opts.loadOf;
    this.#ns = opts.nsip4Of ?? ((e) => (e as TableEntry).nsip4);
    this.#node = opts.nodeOf ?? ((e) => nodeKeyOf(e as TableEntry));
    this.#tie = Math.max(0, opts.rttTieMs ?? 0);
    this.#max = Math.max(1, opts.maxServices ?? 65536);
    this.#shared = opts.shared;
  }

  /** Chooses among a ServiceIP group's candidates by the group's kind; undefined when none. */
  choose(group: ServiceGroup): C | undefined {
    return this.chooseFrom(group.kind, group.key, group.entries as unknown as readonly C[]);
  }

  /**
   * Chooses among the first `n` of `candidates` (default all) with policy `kind`; `key` names the
   * ServiceIP (rotation state).
   */
  chooseFrom(
    kind: ServiceIpKind,
    key: number | string,
    candidates: readonly C[],
    n: number = candidates.length,
  ): C | undefined {
    if (n === 0) return undefined;
    if (n === 1) {
      if (kind === "RoundRobin" || kind === "Closest") this.#remember(key, this.#ns(candidates[0]));
      return candidates[0];
    }
    switch (kind) {
      case "Instance":
        return candidates[0];
      case "Random":
        return candidates[Math.min(n - 1, Math.floor(this.#random() * n))];
      case "RoundRobin":
        return this.#rotate(key, candidates, n);
      case "Closest":
        return this.#closest(key, candidates, n);
    }
  }

  /** Forgets the rotation position of a ServiceIP (e.g. when it leaves the table). */
  forget(key: number | string): void {
    this.#last.delete(key);
  }

  /** Number of ServiceIPs with a remembered rotation position. */
  get tracked(): number {
    return this.#last.size;
  }

  #remember(key: number | string, nsip4: number): void {
    // Re-inserting keeps the Map in least-recently-used order, so the bound forgets the stalest.
    if (!this.#last.delete(key) && this.#last.size >= this.#max) {
      const oldest = this.#last.keys().next();
      if (!oldest.done) this.#last.delete(oldest.value);
    }
    this.#last.set(key, nsip4);
    const sh = this.#shared;
    if (sh) {
      const slot = sh.slot(key);
      if (slot >= 0) sh.set(slot, nsip4);
    }
  }

  /** The candidate with the smallest nsip4 greater than the last chosen one, else the smallest. */
  #rotate(key: number | string, cands: readonly C[], n: number): C {
    const sh = this.#shared;
    const slot = sh ? sh.slot(key) : -1;
    if (sh && slot >= 0) {
      // Shared: retry until our compare-and-swap wins (another worker may have chosen meanwhile).
      for (let tries = 0; tries < 64; tries++) {
        const last = sh.last(slot);
        const chosen = this.#after(last, cands, n);
        if (sh.swap(slot, last, this.#ns(chosen))) return chosen;
      }
    }
    const chosen = this.#after(this.#last.get(key) ?? -1, cands, n);
    this.#remember(key, this.#ns(chosen));
    return chosen;
  }

  #after(last: number, cands: readonly C[], n: number): C {
    const ns = this.#ns;
    let next = -1;
    let first = 0;
    for (let i = 0; i < n; i++) {
      const a = ns(cands[i]);
      if (a < ns(cands[first])) first = i;
      if (a > last && (next < 0 || a < ns(cands[next]))) next = i;
    }
    return cands[next < 0 ? first : next];
  }

  #closest(key: number | string, cands: readonly C[], n: number): C {
    const rtts = new Float64Array(n);
    let best = Infinity;
    for (let i = 0; i < n; i++) {
      const r = this.#rttOf(this.#node(cands[i]));
      rtts[i] = r === undefined || !Number.isFinite(r) || r < 0 ? Infinity : r;
      if (rtts[i] < best) best = rtts[i];
    }
    // Unknown RTTs rank last: they tie only when nothing is known at all.
    let tied: C[] = [];
    for (let i = 0; i < n; i++) if (best === Infinity || rtts[i] <= best + this.#tie) tied.push(cands[i]);
    const loadOf = this.#loadOf;
    if (tied.length > 1 && loadOf) {
      const loads = tied.map((c) => loadOf(c));
      let least = Infinity;
      for (const l of loads) if (l < least) least = l;
      tied = tied.filter((_, i) => loads[i] === least);
    }
    if (tied.length > 1) return this.#rotate(key, tied, tied.length);
    this.#remember(key, this.#ns(tied[0]));
    return tied[0];
  }
}
