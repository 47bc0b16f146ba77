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
import { fmix32, slotsFor, staysAfterHole } from "./keys.ts";

/** A typed array of `n` elements, in a SharedArrayBuffer when `shared` (readable from Workers). */
export function allocU32(n: number, shared: boolean): Uint32Array {
  return shared ? new Uint32Array(new SharedArrayBuffer(n * 4)) : new Uint32Array(n);
}
/** Like {@link allocU32}, for int32. */
export function allocI32(n: number, shared: boolean): Int32Array {
  return shared ? new Int32Array(new SharedArrayBuffer(n * 4)) : new Int32Array(n);
}
/** Like {@link allocU32}, for bytes. */
export function allocU8(n: number, shared: boolean): Uint8Array {
  return shared ? new Uint8Array(new SharedArrayBuffer(n)) : new Uint8Array(n);
}

/**
 * Looks `key` up in the arrays of a {@link U32Map} (e.g. shared with another isolate): the value, or
 * -1. At most one pass over the slots, so a map changing underneath (a reader racing the writer, whose
 * answer the reader then discards) cannot make it spin.
 */
export function u32Lookup(K: Uint32Array, V: Int32Array, key: number): number {
  const mask = V.length - 1;
  key >>>= 0;
  for (let s = fmix32(key) & mask, n = 0; n <= mask; s = (s + 1) & mask, n++) {
    const v = V[s];
    if (v < 0) return -1;
    if (K[s] === key) return v;
  }
  return -1;
}

/** uint32 → int32 (≥ 0) map; `get` answers -1 for a missing key. */
export class U32Map {
  #keys: Uint32Array;
  #vals: Int32Array;
  #mask: number;
  #size = 0;
  readonly #shared: boolean;

  /**
   * Creates an empty map with room for about `capacity` keys before it grows; with `shared` its
   * arrays are in SharedArrayBuffers (see {@link arrays}).
   */
  constructor(capacity = 8, shared = false) {
    const slots = slotsFor(capacity);
    this.#shared = shared;
    this.#keys = allocU32(slots, shared);
    this.#vals = allocI32(slots, shared).fill(-1);
    this.#mask = slots - 1;
  }

  /** The key and value arrays (for {@link u32Lookup} in another isolate); replaced when the map grows. */
  arrays(): { keys: Uint32Array; vals: Int32Array } {
    return { keys: this.#keys, vals: this.#vals };
  }

  /** True when `n` keys fit without growing. */
  fits(n: number): boolean {
    return (n + 1) * 2 <= this.#vals.length;
  }

  /** A new map (same sharing) with the same keys and room for `capacity` keys. */
  copy(capacity: number): U32Map {
    const m = new U32Map(Math.max(capacity, this.#size), this.#shared);
    const K = this.#keys;
    const V = this.#vals;
    for (let s = 0; s < V.length; s++) if (V[s] >= 0) m.set(K[s], V[s]);
    return m;
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
      if (!staysAfterHole(i, j, home)) {
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
    this.#keys = allocU32(16, this.#shared);
    this.#vals = allocI32(16, this.#shared).fill(-1);
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
    this.#keys = allocU32(slots, this.#shared);
    this.#vals = allocI32(slots, this.#shared).fill(-1);
    this.#mask = slots - 1;
    for (let s = 0; s < oldV.length; s++) {
      if (oldV[s] < 0) continue;
      const t = this.#find(oldK[s]);
      this.#keys[t] = oldK[s];
      this.#vals[t] = oldV[s];
    }
  }
}
