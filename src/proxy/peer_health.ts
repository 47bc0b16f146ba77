/**
 * Peer liveness and RTT shared by the data-plane workers. One worker (the prober, lane 0) probes
 * every peer and publishes what it learns here after each schedule run; the others read it when
 * they balance a new flow. So a peer gets one PROBE stream per node, not one per worker, and every
 * worker skips the same down peers and sees the same RTTs.
 *
 * Layout: open addressing over `slots` records of four Int32 — tag (FNV-1a of the node key, never
 * 0), state (0 unknown, 1 up, 2 down), smoothed RTT in µs (-1 unknown), spare. Written and read with
 * `Atomics` (each field on its own; a reader may see a state and an RTT from two consecutive
 * publications, which is harmless). Two node keys with the same 32-bit tag would share a record
 * (odds ~n²/2^33 for n peers); a peer missing from the area (full probe window) reads as unknown.
 *
 * @example
 * ```ts
 * import { PeerHealthArea } from "./peer_health.ts";
 * const buf = PeerHealthArea.create();
 * const writer = new PeerHealthArea(buf); // the prober
 * writer.publish("10.0.0.2:50103", "down", 1.5);
 * const reader = new PeerHealthArea(buf); // another worker (post `buf` to it)
 * reader.isDown("10.0.0.2:50103"); // true
 * ```
 * @module
 */
import type { PeerHealthState } from "./peers.ts";

const FIELDS = 4;
const PROBE_WINDOW = 32;

function tagOf(key: string): number {
  let tag = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) tag = Math.imul(tag ^ key.charCodeAt(i), 0x01000193);
  return tag === 0 ? 1 : tag;
}

/** See the module documentation. */
export class PeerHealthArea {
  readonly #a: Int32Array<SharedArrayBuffer>;
  readonly #mask: number;
  /** Node key → record index (-1: not found yet), cached: keys are few and long-lived. */
  readonly #index = new Map<string, number>();

  /** A fresh area of `slots` (a power of two ≥ 16) records. */
  static create(slots = 4096): SharedArrayBuffer {
    if (!Number.isInteger(Math.log2(slots)) || slots < 16) throw new RangeError("slots: a power of two ≥ 16");
    return new SharedArrayBuffer(slots * FIELDS * 4);
  }

  /** Views `buf` (from {@link create}). */
  constructor(buf: SharedArrayBuffer) {
    this.#a = new Int32Array(buf);
    this.#mask = this.#a.length / FIELDS - 1;
  }

  /** The record of `key`, claimed when `claim`; -1 when absent (or no room). */
  #find(key: string, claim: boolean): number {
    const cached = this.#index.get(key);
    if (cached !== undefined && cached >= 0) return cached;
    const tag = tagOf(key);
    let h = Math.imul(tag, 0x9e3779b1) >>> 0;
    for (let k = 0; k < PROBE_WINDOW; k++, h++) {
      const i = (h & this.#mask) * FIELDS;
      const old = claim ? Atomics.compareExchange(this.#a, i, 0, tag) : Atomics.load(this.#a, i);
      if (old === tag || (claim && old === 0)) {
        if (this.#index.size > 65536) this.#index.clear();
        this.#index.set(key, i);
        return i;
      }
      if (old === 0) return -1;
    }
    return -1;
  }

  /** Publishes a peer's state and smoothed RTT (ms; undefined when unknown). The prober only. */
  publish(key: string, state: PeerHealthState, rttMs: number | undefined): void {
    const i = this.#find(key, true);
    if (i < 0) return;
    Atomics.store(this.#a, i + 2, rttMs === undefined ? -1 : Math.min(0x7fffffff, Math.round(rttMs * 1000)));
    Atomics.store(this.#a, i + 1, state === "down" ? 2 : state === "up" ? 1 : 0);
  }

  /** The published state of `key` (unknown when never published). */
  state(key: string): PeerHealthState {
    const i = this.#find(key, false);
    if (i < 0) return "unknown";
    const s = Atomics.load(this.#a, i + 1);
    return s === 2 ? "down" : s === 1 ? "up" : "unknown";
  }

  /** True when `key` was published down. */
  isDown(key: string): boolean {
    const i = this.#find(key, false);
    return i >= 0 && Atomics.load(this.#a, i + 1) === 2;
  }

  /** The published smoothed RTT of `key` (ms), or undefined. */
  rttMs(key: string): number | undefined {
    const i = this.#find(key, false);
    if (i < 0) return undefined;
    const us = Atomics.load(this.#a, i + 2);
    return us < 0 ? undefined : us / 1000;
  }
}
