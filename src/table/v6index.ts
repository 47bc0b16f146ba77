/**
 * IPv6 address → non-negative int32 (a row or group number), like {@link V6Map} but with the values in
 * an `Int32Array` too, so that both arrays can live in SharedArrayBuffers and be read by other
 * isolates ({@link v6Lookup}). -1 marks an empty slot.
 *
 * @example
 * ```ts
 * import { parseIPv6 } from "../addr/mod.ts";
 * const m = new V6IndexMap(8, true);
 * m.set(parseIPv6("fdff::1"), 3);
 * const { keys, vals } = m.arrays(); // post these to a Worker
 * v6Lookup(keys, vals, parseIPv6("fdff::1"), 0); // 3
 * ```
 */
import { hash4w, slotsFor, staysAfterHole, word } from "./keys.ts";
import { allocI32, allocU32 } from "./u32map.ts";

/**
 * Looks the address at `buf[off..off+16]` up in the arrays of a {@link V6IndexMap}: its value or -1.
 * One pass at most (a reader racing the writer cannot spin). No allocation.
 */
export function v6Lookup(K: Uint32Array, V: Int32Array, buf: Uint8Array, off: number): number {
  const w0 = word(buf, off);
  const w1 = word(buf, off + 4);
  const w2 = word(buf, off + 8);
  const w3 = word(buf, off + 12);
  const mask = V.length - 1;
  for (let s = hash4w(w0, w1, w2, w3) & mask, n = 0; n <= mask; s = (s + 1) & mask, n++) {
    const v = V[s];
    if (v < 0) return -1;
    const b = s << 2;
    if (K[b] === w0 && K[b + 1] === w1 && K[b + 2] === w2 && K[b + 3] === w3) return v;
  }
  return -1;
}

/** IPv6 address → int32 ≥ 0 map; see the module documentation. */
export class V6IndexMap {
  #keys: Uint32Array;
  #vals: Int32Array;
  #mask: number;
  #size = 0;
  readonly #shared: boolean;

  /** An empty map with room for about `capacity` addresses; `shared`: arrays in SharedArrayBuffers. */
  constructor(capacity = 8, shared = false) {
    const slots = slotsFor(capacity);
    this.#shared = shared;
    this.#keys = allocU32(slots * 4, shared);
    this.#vals = allocI32(slots, shared).fill(-1);
    this.#mask = slots - 1;
  }

  /** Number of addresses. */
  get size(): number {
    return this.#size;
  }

  /** The key (4 words per slot) and value arrays; replaced when the map grows. */
  arrays(): { keys: Uint32Array; vals: Int32Array } {
    return { keys: this.#keys, vals: this.#vals };
  }

  /** True when `n` addresses fit without growing. */
  fits(n: number): boolean {
    return (n + 1) * 2 <= this.#vals.length;
  }

  /** A new map (same sharing) with the same contents and room for `capacity` addresses. */
  copy(capacity: number): V6IndexMap {
    const m = new V6IndexMap(Math.max(capacity, this.#size), this.#shared);
    const V = this.#vals;
    for (let s = 0; s < V.length; s++) {
      if (V[s] >= 0) m.#put(this.#keys, s << 2, V[s]);
    }
    return m;
  }

  /** The value of the address at `buf[off..off+16]`, or -1. No allocation. */
  get(buf: Uint8Array, off = 0): number {
    return v6Lookup(this.#keys, this.#vals, buf, off);
  }

  /** Sets the value (≥ 0) of the address at `buf[off..off+16]`. */
  set(buf: Uint8Array, value: number, off = 0): void {
    if (!(value >= 0)) throw new RangeError("V6IndexMap values must be non-negative");
    const w0 = word(buf, off), w1 = word(buf, off + 4), w2 = word(buf, off + 8), w3 = word(buf, off + 12);
    const s = this.#find(w0, w1, w2, w3);
    if (this.#vals[s] >= 0) {
      this.#vals[s] = value;
      return;
    }
    if ((this.#size + 1) * 2 > this.#vals.length) {
      this.#grow();
      this.set(buf, value, off);
      return;
    }
    const b = s << 2;
    this.#keys[b] = w0;
    this.#keys[b + 1] = w1;
    this.#keys[b + 2] = w2;
    this.#keys[b + 3] = w3;
    this.#vals[s] = value;
    this.#size++;
  }

  /** Removes the address; returns whether it was present. */
  delete(buf: Uint8Array, off = 0): boolean {
    let i = this.#find(word(buf, off), word(buf, off + 4), word(buf, off + 8), word(buf, off + 12));
    const K = this.#keys;
    const V = this.#vals;
    if (V[i] < 0) return false;
    const mask = this.#mask;
    V[i] = -1;
    for (let j = (i + 1) & mask; V[j] >= 0; j = (j + 1) & mask) {
      const home = hash4w(K[j << 2], K[(j << 2) + 1], K[(j << 2) + 2], K[(j << 2) + 3]) & mask;
      if (!staysAfterHole(i, j, home)) {
        K.copyWithin(i << 2, j << 2, (j << 2) + 4);
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

  #put(K: Uint32Array, b: number, v: number): void {
    const s = this.#find(K[b], K[b + 1], K[b + 2], K[b + 3]);
    this.#keys.set(K.subarray(b, b + 4), s << 2);
    if (this.#vals[s] < 0) this.#size++;
    this.#vals[s] = v;
  }

  #find(w0: number, w1: number, w2: number, w3: number): number {
    const K = this.#keys;
    const V = this.#vals;
    const mask = this.#mask;
    for (let s = hash4w(w0, w1, w2, w3) & mask;; s = (s + 1) & mask) {
      if (V[s] < 0) return s;
      const b = s << 2;
      if (K[b] === w0 && K[b + 1] === w1 && K[b + 2] === w2 && K[b + 3] === w3) return s;
    }
  }

  #grow(): void {
    const oldK = this.#keys;
    const oldV = this.#vals;
    const slots = oldV.length * 2;
    this.#keys = allocU32(slots * 4, this.#shared);
    this.#vals = allocI32(slots, this.#shared).fill(-1);
    this.#mask = slots - 1;
    this.#size = 0;
    for (let s = 0; s < oldV.length; s++) if (oldV[s] >= 0) this.#put(oldK, s << 2, oldV[s]);
  }
}
