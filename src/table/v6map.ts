/**
 * A hash map keyed by IPv6 addresses, looked up straight from packet bytes without allocating.
 *
 * Open addressing with linear probing (load ≤ 1/2, backward-shift deletion). The 16-byte keys live
 * inline in one `Uint32Array` (4 words per slot), so a lookup reads the packet's 4 words, hashes
 * them, and compares against contiguous memory — no pointer chasing through per-address
 * `Uint8Array` objects, which is what keeps the cost flat at 100k addresses.
 *
 * @example
 * ```ts
 * import { parseIPv6 } from "../addr/mod.ts";
 * const m = new V6Map<string>();
 * m.set(parseIPv6("fdff:2000::1"), "web");
 * const packet = new Uint8Array(40);
 * packet.set(parseIPv6("fdff:2000::1"), 24);
 * m.get(packet, 24); // "web"
 * ```
 */
import { hash4w, slotsFor, staysAfterHole, word } from "./keys.ts";

/** IPv6 address → value map; see the module documentation. Values must not be `undefined`. */
export class V6Map<T> {
  #keys: Uint32Array;
  #vals: (T | undefined)[];
  #mask: number;
  #size = 0;

  /** Creates an empty map with room for about `capacity` addresses before it grows. */
  constructor(capacity = 8) {
    const slots = slotsFor(capacity);
    this.#keys = new Uint32Array(slots * 4);
    this.#vals = new Array<T | undefined>(slots).fill(undefined);
    this.#mask = slots - 1;
  }

  /** Number of addresses in the map. */
  get size(): number {
    return this.#size;
  }

  /** The value for the address at `buf[off..off+16]`, or undefined. No allocation. */
  get(buf: Uint8Array, off = 0): T | undefined {
    const w0 = word(buf, off);
    const w1 = word(buf, off + 4);
    const w2 = word(buf, off + 8);
    const w3 = word(buf, off + 12);
    const K = this.#keys;
    const V = this.#vals;
    const mask = this.#mask;
    for (let s = hash4w(w0, w1, w2, w3) & mask;; s = (s + 1) & mask) {
      const v = V[s];
      if (v === undefined) return undefined;
      const b = s << 2;
      if (K[b] === w0 && K[b + 1] === w1 && K[b + 2] === w2 && K[b + 3] === w3) return v;
    }
  }

  /** True when the address is present. */
  has(buf: Uint8Array, off = 0): boolean {
    return this.get(buf, off) !== undefined;
  }

  /** Sets the value of the address at `buf[off..off+16]` (replacing any previous value). */
  set(buf: Uint8Array, value: T, off = 0): void {
    if (value === undefined) throw new TypeError("V6Map values must not be undefined");
    const s = this.#find(word(buf, off), word(buf, off + 4), word(buf, off + 8), word(buf, off + 12));
    if (this.#vals[s] !== undefined) {
      this.#vals[s] = value;
      return;
    }
    if ((this.#size + 1) * 2 > this.#vals.length) {
      this.#grow();
      this.set(buf, value, off);
      return;
    }
    const b = s << 2;
    this.#keys[b] = word(buf, off);
    this.#keys[b + 1] = word(buf, off + 4);
    this.#keys[b + 2] = word(buf, off + 8);
    this.#keys[b + 3] = word(buf, off + 12);
    this.#vals[s] = value;
    this.#size++;
  }

  /** Removes the address; returns whether it was present. */
  delete(buf: Uint8Array, off = 0): boolean {
    let i = this.#find(word(buf, off), word(buf, off + 4), word(buf, off + 8), word(buf, off + 12));
    const K = this.#keys;
    const V = this.#vals;
    if (V[i] === undefined) return false;
    const mask = this.#mask;
    V[i] = undefined;
    for (let j = (i + 1) & mask; V[j] !== undefined; j = (j + 1) & mask) {
      const home = hash4w(K[j << 2], K[(j << 2) + 1], K[(j << 2) + 2], K[(j << 2) + 3]) & mask;
      if (!staysAfterHole(i, j, home)) {
        K.copyWithin(i << 2, j << 2, (j << 2) + 4);
        V[i] = V[j];
        V[j] = undefined;
        i = j;
      }
    }
    this.#size--;
    return true;
  }

  /** All values (slot order). */
  *values(): IterableIterator<T> {
    for (const v of this.#vals) if (v !== undefined) yield v;
  }

  /** Makes room for `capacity` addresses at once (no step-by-step growth while filling). */
  reserve(capacity: number): void {
    while ((capacity + 1) * 2 > this.#vals.length) this.#grow();
  }

  /** Removes everything. */
  clear(): void {
    this.#vals.fill(undefined);
    this.#size = 0;
  }

  /** Slot holding the key, or the empty slot where it would go. */
  #find(w0: number, w1: number, w2: number, w3: number): number {
    const K = this.#keys;
    const V = this.#vals;
    const mask = this.#mask;
    for (let s = hash4w(w0, w1, w2, w3) & mask;; s = (s + 1) & mask) {
      if (V[s] === undefined) return s;
      const b = s << 2;
      if (K[b] === w0 && K[b + 1] === w1 && K[b + 2] === w2 && K[b + 3] === w3) return s;
    }
  }

  #grow(): void {
    const oldK = this.#keys;
    const oldV = this.#vals;
    const slots = oldV.length * 2;
    this.#keys = new Uint32Array(slots * 4);
    this.#vals = new Array<T | undefined>(slots).fill(undefined);
    this.#mask = slots - 1;
    for (let s = 0; s < oldV.length; s++) {
      const v = oldV[s];
      if (v === undefined) continue;
      const b = s << 2;
      const t = this.#find(oldK[b], oldK[b + 1], oldK[b + 2], oldK[b + 3]);
      this.#keys.set(oldK.subarray(b, b + 4), t << 2);
      this.#vals[t] = v;
    }
  }
}
