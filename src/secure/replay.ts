/**
 * Anti-replay window for the secure tunnel's 64-bit datagram counters: a sliding bitmap after RFC 6479
 * (a ring of 32-bit blocks; moving forward clears whole blocks, no bit shifting), 4064 counters wide
 * ({@link REPLAY_WINDOW}) — GSO batches reorder little, but datagrams of one sender spread over several
 * receive lanes may.
 *
 * Use it in two steps around authentication: {@link ReplayWindow.check} before decrypting (cheap
 * refusal of stale or seen counters), {@link ReplayWindow.accept} only after the tag verified — a
 * forged datagram must never move the window.
 *
 * Counters are JS numbers: the tunnel's counters stay below 2^53 (a key is retired long before).
 *
 * @example
 * ```ts
 * import { ReplayWindow } from "./replay.ts";
 * const w = new ReplayWindow();
 * console.log(w.check(5) && w.accept(5)); // true
 * console.log(w.check(5)); // false: seen
 * ```
 * @module
 */

const BLOCKS = 128; // a power of two
const BLOCK_BITS = 32;
/** How far below the highest accepted counter a counter may still be accepted (once). */
export const REPLAY_WINDOW: number = (BLOCKS - 1) * BLOCK_BITS;
/** Largest counter accepted (keys are retired long before). */
export const MAX_COUNTER: number = Number.MAX_SAFE_INTEGER;

/** One sliding window (see the module). */
export class ReplayWindow {
  readonly #bits = new Uint32Array(BLOCKS);
  /** Highest counter accepted; -1 before the first. */
  last = -1;

  /** False when `c` is invalid, too old for the window, or already accepted. Changes nothing. */
  check(c: number): boolean {
    if (!Number.isSafeInteger(c) || c < 0) return false;
    if (c > this.last) return true;
    if (this.last - c >= REPLAY_WINDOW) return false;
    const block = Math.floor(c / BLOCK_BITS) % BLOCKS;
    return (this.#bits[block] & (1 << (c % BLOCK_BITS))) === 0;
  }

  /** Marks `c` seen (call after authentication); false, changing nothing, when {@link check} refuses it. */
  accept(c: number): boolean {
    if (!this.check(c)) return false;
    const index = Math.floor(c / BLOCK_BITS);
    if (c > this.last) {
      const current = this.last < 0 ? -1 : Math.floor(this.last / BLOCK_BITS);
      // Blocks the window slides past start empty (at most the whole ring).
      const diff = Math.min(index - current, BLOCKS);
      for (let i = 1; i <= diff; i++) this.#bits[(current + i) % BLOCKS] = 0;
      this.last = c;
    }
    this.#bits[index % BLOCKS] |= 1 << (c % BLOCK_BITS);
    return true;
  }

  /** Forgets everything (a new key). */
  reset(): void {
    this.#bits.fill(0);
    this.last = -1;
  }
}
