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
 *   last. With hysteresis: the node chosen last per ServiceIP stays preferred until another is better
 *   by `switchRatio` (10 %) *and* `switchMinMs` (0.2 ms) — two near-equal nodes do not make new flows
 *   flap — or until it leaves, becomes unusable or its RTT unknown; a node with RTT 0 (the local one)
 *   wins at once. Candidates on the preferred node (and any within `rttTieMs` of it) are ties: the
 *   fewest active flows (`loadOf`) win, then rotation.
 *
 * **Health.** With `usable`, candidates it rejects (on a peer node marked down, a local instance
 * whose namespace is gone) are skipped by every policy while any candidate is usable; when none is,
 * all are tried as before (the caller cannot do better than guess).
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
  /** RTTs within this many ms of the preferred node's count as ties (default 0: exact). */
  readonly rttTieMs?: number;
  /** Closest: switch the preferred node only for one this much better, relatively (default 0.1). */
  readonly switchRatio?: number;
  /** Closest: …and by at least this many ms (default 0.2). */
  readonly switchMinMs?: number;
  /** False for a candidate that must not take new flows while another can (default: all usable). */
  readonly usable?: (candidate: C) => boolean;
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
  readonly #ratio: number;
  readonly #minSwitch: number;
  readonly #usable: ((candidate: C) => boolean) | undefined;
  readonly #max: number;
  readonly #shared: SharedRotation | undefined;
  /** ServiceIP key → nsip4 chosen last by rotation. */
  readonly #last = new Map<number | string, number>();
  /** ServiceIP key → the node Closest prefers (hysteresis), least recently used first. */
  readonly #pref = new Map<number | string, string>();
  /** The usable candidates of the choice in progress (reused). */
  readonly #up: C[] = [];
  /** Candidates that were skipped as unusable (for inspection and tests). */
  skipped = 0;

  constructor(opts: BalancerOptions<C>) {
    this.#random = opts.random;
    this.#rttOf = opts.rttOf ?? (() => undefined);
    this.#loadOf = opts.loadOf;
    this.#ns = opts.nsip4Of ?? ((e) => (e as TableEntry).nsip4);
    this.#node = opts.nodeOf ?? ((e) => nodeKeyOf(e as TableEntry));
    this.#tie = Math.max(0, opts.rttTieMs ?? 0);
    this.#ratio = Math.min(1, Math.max(0, opts.switchRatio ?? 0.1));
    this.#minSwitch = Math.max(0, opts.switchMinMs ?? 0.2);
    this.#usable = opts.usable;
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
    const usable = this.#usable;
    if (usable !== undefined && n > 1 && kind !== "Instance") {
      const up = this.#up;
      up.length = 0;
      for (let i = 0; i < n; i++) if (usable(candidates[i])) up.push(candidates[i]);
      // Skip the unusable ones while any other is usable; none usable: try them all, as before.
      if (up.length > 0 && up.length < n) {
        this.skipped += n - up.length;
        candidates = up;
        n = up.length;
      }
    }
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
    this.#pref.delete(key);
  }

  /** The node Closest currently prefers for ServiceIP `key`, if any. */
  preferred(key: number | string): string | undefined {
    return this.#pref.get(key);
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
    let best = -1;
    for (let i = 0; i < n; i++) {
      const r = this.#rttOf(this.#node(cands[i]));
      rtts[i] = r === undefined || !Number.isFinite(r) || r < 0 ? Infinity : r;
      if (best < 0 || rtts[i] < rtts[best]) best = i;
    }
    const ref = this.#preferredNode(key, cands, n, rtts, best);
    let refRtt = Infinity;
    for (let i = 0; i < n; i++) if (this.#node(cands[i]) === ref && rtts[i] < refRtt) refRtt = rtts[i];
    // Ties: the preferred node's candidates (and exact-RTT equals); nothing known at all: everyone.
    let tied: C[] = [];
    for (let i = 0; i < n; i++) {
      if (
        this.#node(cands[i]) === ref || (refRtt < Infinity && Math.abs(rtts[i] - refRtt) <= this.#tie) ||
        rtts[best] === Infinity
      ) tied.push(cands[i]);
    }
    const loadOf = this.#loadOf;
    if (tied.length > 1 && loadOf) {
      const loads = tied.map((c) => loadOf(c));
      let least = Infinity;
      for (const l of loads) if (l < least) least = l;
      tied = tied.filter((_, i) => loads[i] === least);
    }
    const chosen = tied.length > 1 ? this.#rotate(key, tied, tied.length) : tied[0];
    if (tied.length === 1) this.#remember(key, this.#ns(chosen));
    this.#prefer(key, rtts[best] === Infinity ? undefined : ref);
    return chosen;
  }

  /**
   * The node new flows of `key` should go to: the one preferred so far unless it left, or another is
   * better by the switch margin (or is the local node, RTT 0), or its RTT became unknown while
   * another's is known.
   */
  #preferredNode(
    key: number | string,
    cands: readonly C[],
    n: number,
    rtts: Float64Array,
    best: number,
  ): string | undefined {
    const bestNode = rtts[best] === Infinity ? undefined : this.#node(cands[best]);
    const pref = this.#pref.get(key);
    if (pref === undefined) return bestNode;
    let prefRtt = Infinity;
    let present = false;
    for (let i = 0; i < n; i++) {
      if (this.#node(cands[i]) !== pref) continue;
      present = true;
      if (rtts[i] < prefRtt) prefRtt = rtts[i];
    }
    if (!present) return bestNode;
    if (prefRtt === Infinity) return bestNode ?? pref;
    return shouldSwitch(prefRtt, rtts[best], this.#ratio, this.#minSwitch) ? bestNode : pref;
  }

  #prefer(key: number | string, node: string | undefined): void {
    if (node === undefined) return;
    if (!this.#pref.delete(key) && this.#pref.size >= this.#max) {
      const oldest = this.#pref.keys().next();
      if (!oldest.done) this.#pref.delete(oldest.value);
    }
    this.#pref.set(key, node);
  }
}

/**
 * Closest's hysteresis: leave a node measured at `currentMs` for one at `candidateMs` only when the
 * latter is better by `ratio` (relative) and by `minMs`, or is the local node (0 ms).
 *
 * @example
 * ```ts
 * shouldSwitch(10, 8.9, 0.1, 0.2); // true: 11 % and 1.1 ms better
 * shouldSwitch(1, 0.95, 0.1, 0.2); // false: only 5 %
 * shouldSwitch(0.15, 0, 0.1, 0.2); // true: the local node
 * ```
 */
export function shouldSwitch(currentMs: number, candidateMs: number, ratio = 0.1, minMs = 0.2): boolean {
  if (!(candidateMs < currentMs)) return false;
  if (candidateMs === 0) return true;
  return candidateMs <= currentMs * (1 - ratio) && currentMs - candidateMs >= minMs;
}
