/**
 * Cheap numeric keys for the packet path: murmur3-style 32-bit mixing over words read straight from
 * packet bytes, without allocating. A key is a hash, not an identity: every user confirms a hit by
 * comparing the bytes (see `equalIPv6` in `src/addr`).
 *
 * Keys are folded to 30 bits so they are always V8 small integers (Smis): `Map.get` with such a
 * key never boxes a heap number.
 *
 * @example
 * ```ts
 * import { parseIPv6 } from "../addr/mod.ts";
 * const a = parseIPv6("fdff:2000::1");
 * const packet = new Uint8Array(40);
 * packet.set(a, 24); // IPv6 destination
 * v6Key(packet, 24) === v6Key(a); // true
 * ```
 */

/** Reads a big-endian uint32 from `b` at `off` (no bounds checks; the caller guarantees 4 bytes). */
export function word(b: Uint8Array, off: number): number {
  return ((b[off] << 24) | (b[off + 1] << 16) | (b[off + 2] << 8) | b[off + 3]) >>> 0;
}

/** One murmur3 body step: mixes the 32-bit word `k` into the running hash `h` (int32 arithmetic). */
export function mix32(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/** murmur3 finaliser: avalanches `h`; returns a uint32. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Seed used by the table's keys (any constant; keys are never exchanged between processes). */
export const KEY_SEED = 0x5eed1e55;

/** Hash of an IPv6 address given as its four big-endian words (the home slot of V6Map and V6IndexMap). */
export function hash4w(w0: number, w1: number, w2: number, w3: number): number {
  let h = mix32(KEY_SEED, w0);
  h = mix32(h, w1);
  h = mix32(h, w2);
  h = mix32(h, w3);
  return fmix32(h ^ 16);
}

/** Slots (a power of two, ≥ 16) of an open-addressing map with room for `capacity` keys at load ≤ 1/2. */
export function slotsFor(capacity: number): number {
  let slots = 16;
  while (slots < capacity * 2) slots *= 2;
  return slots;
}

/**
 * Backward-shift deletion: whether the key in slot `j`, whose home slot is `home`, stays where it is
 * after slot `i` (earlier in the same probe run, wrapping around) was emptied; if not, it moves to `i`.
 */
export function staysAfterHole(i: number, j: number, home: number): boolean {
  return i <= j ? home > i && home <= j : home > i || home <= j;
}

/**
 * 30-bit key of the 16-byte IPv6 address at `buf[off..off+16]`. Equal addresses give equal keys;
 * different addresses may collide, so confirm with a byte compare.
 */
export function v6Key(buf: Uint8Array, off = 0): number {
  let h = KEY_SEED;
  h = mix32(h, word(buf, off));
  h = mix32(h, word(buf, off + 4));
  h = mix32(h, word(buf, off + 8));
  h = mix32(h, word(buf, off + 12));
  return fmix32(h ^ 16) >>> 2;
}
