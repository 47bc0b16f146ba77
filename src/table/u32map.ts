/**
 * A hash map from uint32 keys to non-negative int32 values (row or group numbers), held in two typed
 * arrays: 8 bytes per slot, load ≤ 1/2, no objects per key and nothing for the garbage collector.
 * Open addressing with linear probing and backward-shift deletion, like {@link V6Map}.
 *
 * @example
 * ```ts
 * const m = new U32Map();
 * m.set(0xc0a80001, 7);
 * m.get(0xc0a80001); // 7
 * m.get(1); // -1
 * ```
 */
import { fmix32 } from "./keys.ts";

/** uint32 → int32 (≥ 0) map; `get` answers -1 for a missing key. */
export class U32Map {
  #keys: Uint32Array;
  #vals: Int32Array;
  #mask: number;
  #size = 0;

  /** Creates an empty map with room for about `capacity` keys before it grows. */
  constructor(capacity = 8) {
    let slots = 16;
    while (slots < capacity * 2) slots *= 2;
    this.#keys = new Uint32Array(slots);
    this.#vals = new Int32Array(slots).fill(-1);
    this.#mask = slots - 1;
  }

  /** Number of keys. */
  get size(): number {
    return this.#size;
  }

  /** The value of `key`, or -1. No allocation. */
  get(key: number): number {
    const K = this.#keys;
    const V = this.#vals;
    const mask = this.#mask;
    key >>>= 0;
    for (let s = fmix32(key) & mask;; s = (s + 1) & mask) {
      const v = V[s];
      if (v < 0) return -1;
      if (K[s] === key) return v;
    }
  }

  /** Sets `key` to `value` (≥ 0), replacing any previous value. */
  set(key: number, value: number): void {
    if (!(value >= 0)) throw new RangeError("U32Map values must be non-negative");
    key >>>= 0;
    const s = this.#find(key);
    if (this.#vals[s] >= 0) {
      this.#vals[s] = value;
      return;
    }
    if ((this.#size + 1) * 2 > this.#vals.length) {
      this.#grow();
      this.set(key, value);
      return;
    }
    this.#keys[s] = key;
    this.#vals[s] = value;
    this.#size++;
  }

  /** Removes `key`; returns whether it was present. */
  delete(key: number): boolean {
    let i = this.#find(key >>> 0);
    const K = this.#keys;
    const V = this.#vals;
    if (V[i] < 0) return false;
    const mask = this.#mask;
    V[i] = -1;
    for (let j = (i + 1) & mask; V[j] >= 0; j = (j + 1) & mask) {
      const home = fmix32(K[j]) & mask;
      const stays = i <= j ? home > i && home <= j : home > i || home <= j;
      if (!stays) {
        K[i] = K[j];
        V[i] = V[j];
        V[j] = -1;
        i = j;
      }
    }
    this.#size--;
    return true;
  }

  /** All values (slot order). */
  *values(): IterableIterator<number> {
    for (const v of this.#vals) if (v >= 0) yield v;
  }

  /** Makes room for `capacity` keys at once (no step-by-step growth while filling). */
  reserve(capacity: number): void {
    while ((capacity + 1) * 2 > this.#vals.length) this.#grow();
  }

  /** Removes everything (and gives the memory back). */
  clear(): void {
    this.#keys = new Uint32Array(16);
    this.#vals = new Int32Array(16).fill(-1);
    this.#mask = 15;
    this.#size = 0;
  }

  #find(key: number): number {
    const K = this.#keys;
    const V = this.#vals;
    const mask = this.#mask;
    for (let s = fmix32(key) & mask;; s = (s + 1) & mask) {
      if (V[s] < 0 || K[s] === key) return s;
    }
  }

  #grow(): void {
    const oldK = this.#keys;
    const oldV = this.#vals;
    const slots = oldV.length * 2;
    this.#keys = new Uint32Array(slots);
    this.#vals = new Int32Array(slots).fill(-1);
    this.#mask = slots - 1;
    for (let s = 0; s < oldV.length; s++) {
      if (oldV[s] < 0) continue;
      const t = this.#find(oldK[s]);
      this.#keys[t] = oldK[s];
      this.#vals[t] = oldV[s];
    }
  }
}
