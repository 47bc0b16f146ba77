/**
 * Which job owns each service address (RR, Closest and Instance IPs), kept by ordinal (pure).
 *
 * A `Map` from address text to job id cost ~30 bytes per address in hash table (issue 14: 3.5 MB
 * of the control plane's heap at 50k allocations). Every address the allocator hands out is an
 * ordinal of its pool, so the owner is a slot of a dense array per pool, indexed by ordinal, that
 * holds the job's id string (shared with the job record: 4 bytes per slot). Addresses outside the
 * numbering (user-chosen ones beyond it, e.g. 10.30.0.255) or at huge ordinals go to a small map.
 *
 * @example
 * ```ts
 * import { instance6Spec, service4Spec } from "./alloc.ts";
 * const owners = new AddressOwners([service4Spec(), instance6Spec()]);
 * owners.set("10.30.0.7", "job1");
 * owners.get("10.30.0.7"); // "job1"
 * owners.delete("10.30.0.7");
 * ```
 */
import type { PoolSpec } from "./alloc.ts";

/** Ordinals from this on are kept in the map (a dense array up to it costs ≤ 16 MiB per pool). */
const DENSE_ORDINALS = 1n << 22n;

/** Job ids of the service addresses, by pool and ordinal. */
export class AddressOwners {
  readonly #v4: Array<{ spec: PoolSpec; slots: Array<string | undefined> }>;
  readonly #v6: Array<{ spec: PoolSpec; slots: Array<string | undefined> }>;
  readonly #other = new Map<string, string>();
  #size = 0;

  /** `pools`: the numberings whose addresses are kept by ordinal (their ranges must not overlap). */
  constructor(pools: readonly PoolSpec[]) {
    this.#v4 = [];
    this.#v6 = [];
    for (const spec of pools) {
      (spec.at(0n).includes(":") ? this.#v6 : this.#v4).push({ spec, slots: [] });
    }
  }

  /** Number of addresses with an owner. */
  get size(): number {
    return this.#size;
  }

  /** The pool slots and ordinal of a canonical address, if it is kept by ordinal. */
  #slot(addr: string): { slots: Array<string | undefined>; k: number } | undefined {
    for (const p of addr.includes(":") ? this.#v6 : this.#v4) {
      const i = p.spec.ordinalOf(addr);
      if (i !== undefined) return i < DENSE_ORDINALS ? { slots: p.slots, k: Number(i) } : undefined;
    }
    return undefined;
  }

  /** The job id owning the canonical address `addr`, if any. */
  get(addr: string): string | undefined {
    const s = this.#slot(addr);
    return s === undefined ? this.#other.get(addr) : s.slots[s.k];
  }

  /** Gives `addr` (canonical) to job `id`. */
  set(addr: string, id: string): void {
    const s = this.#slot(addr);
    if (s === undefined) {
      if (!this.#other.has(addr)) this.#size++;
      this.#other.set(addr, id);
      return;
    }
    const { slots, k } = s;
    // Grown by pushing: an array assigned far beyond its end turns into a slow dictionary.
    while (slots.length <= k) slots.push(undefined);
    if (slots[k] === undefined) this.#size++;
    slots[k] = id;
  }

  /** Removes the owner of `addr`; false when it had none. */
  delete(addr: string): boolean {
    const s = this.#slot(addr);
    if (s === undefined) {
      if (!this.#other.delete(addr)) return false;
    } else {
      if (s.k >= s.slots.length || s.slots[s.k] === undefined) return false;
      s.slots[s.k] = undefined;
    }
    this.#size--;
    return true;
  }
}
