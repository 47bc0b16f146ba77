/**
 * When the data-plane loop should busy-poll instead of sleeping in poll(2). Pure: the loop reports
 * what it did, the policy answers; time is passed in (ms).
 *
 * Busy-polling saves the thread wake-up (tens of µs on a VM whose idle vCPU halts) for the next
 * packet of a request/response exchange. It only pays when each wake-up handles about one packet:
 * under load packets come in batches anyway, and a spinning thread takes the CPU that the workloads
 * and the kernel's packet work need. So the policy spins
 * - only within `spinMs` after the last packet,
 * - only when, in the previous window, wake-ups averaged fewer than `maxPacketsPerWake` packets
 *   and packet work took less than `maxWorkShare` of the time,
 * - for at most `budget` of each window (the rest of the time the loop sleeps).
 * @module
 */

/** Options of a {@link SpinPolicy}. */
export interface SpinPolicyOptions {
  /** Busy-poll this long after the last packet (0 disables spinning). */
  spinMs: number;
  /** Accounting window. Default 100 ms. */
  windowMs?: number;
  /** Most of each window that may be spent spinning. Default 0.5. */
  budget?: number;
  /** No spinning after a window in which packet work took more than this share. Default 0.5. */
  maxWorkShare?: number;
  /** No spinning after a window whose wake-ups handled this many packets or more on average. Default 1.5. */
  maxPacketsPerWake?: number;
}

/**
 * @example
 * ```ts
 * import { Poller } from "../../ffi/poll.ts";
 * declare const poller: Poller;
 * declare function drain(): number; // handles what is readable, returns the packet count
 * const spin = new SpinPolicy({ spinMs: 0.1 });
 * const t = performance.now();
 * if (poller.wait(spin.shouldSpin(t) ? 0 : 50) > 0) {
 *   const start = performance.now();
 *   const packets = drain();
 *   const now = performance.now();
 *   spin.active(now, now - start, packets);
 * } else spin.idle(performance.now() - t);
 * ```
 */
export class SpinPolicy {
  readonly #spinMs: number;
  readonly #windowMs: number;
  readonly #budget: number;
  readonly #maxWork: number;
  readonly #maxPkts: number;
  #windowStart = -Infinity;
  #spun = 0;
  #worked = 0;
  #wakes = 0;
  #packets = 0;
  #allowed = true;
  #lastActive = -Infinity;
  #spinning = false;

  constructor(opts: SpinPolicyOptions) {
    this.#spinMs = Math.max(0, opts.spinMs);
    this.#windowMs = opts.windowMs ?? 100;
    this.#budget = opts.budget ?? 0.5;
    this.#maxWork = opts.maxWorkShare ?? 0.5;
    this.#maxPkts = opts.maxPacketsPerWake ?? 1.5;
  }

  /** Whether the next poll should not sleep. */
  shouldSpin(now: number): boolean {
    if (this.#spinMs === 0) return (this.#spinning = false);
    if (now - this.#windowStart >= this.#windowMs) {
      const span = Number.isFinite(this.#windowStart) ? now - this.#windowStart : this.#windowMs;
      this.#allowed = this.#worked <= this.#maxWork * span &&
        (this.#wakes === 0 || this.#packets / this.#wakes < this.#maxPkts);
      this.#windowStart = now;
      this.#spun =
        this.#worked =
        this.#wakes =
        this.#packets =
          0;
    }
    this.#spinning = this.#allowed && now - this.#lastActive < this.#spinMs &&
      this.#spun < this.#budget * this.#windowMs;
    return this.#spinning;
  }

  /** The poll found work: `packets` handled in `workMs`, finishing at `now`. */
  active(now: number, workMs: number, packets: number): void {
    this.#lastActive = now;
    this.#worked += workMs;
    this.#wakes++;
    this.#packets += packets;
  }

  /** The poll found nothing after `ms` (counted against the budget when it was a spin). */
  idle(ms: number): void {
    if (this.#spinning) this.#spun += ms;
  }
}

/**
 * How many packets the next TUN drain reads. A TUN read returns one packet, so a drain ends with a
 * read that finds the queue empty — one more syscall per wake-up (≈ 4 µs on a VM whose syscalls
 * trap to the hypervisor, a tenth of a request/response hop). When the last full drain found a
 * single packet (request/response traffic), the next drain reads one packet and sends it at once;
 * the poll that follows returns at once if more came. A drain that starts within `burstGapMs` of
 * the previous one (packets were queued) reads until the queue is empty again.
 *
 * @example
 * ```ts
 * import { ReadPolicy } from "./spin.ts";
 * declare function drainTun(now: number, max: number): number; // returns the packets read
 * const reads = new ReadPolicy();
 * const now = performance.now();
 * const max = reads.limit(now);
 * reads.done(now, drainTun(now, max), max);
 * ```
 */
export class ReadPolicy {
  /** Reads of a full drain. */
  readonly full: number;
  readonly #gap: number;
  #single = false;
  #last = -Infinity;

  constructor(full = 512, burstGapMs = 0.05) {
    this.full = full;
    this.#gap = burstGapMs;
  }

  /** Packets the drain starting at `now` may read. */
  limit(now: number): number {
    return this.#single && now - this.#last >= this.#gap ? 1 : this.full;
  }

  /** The drain that started at `now` with limit `max` read `read` packets. */
  done(now: number, read: number, max: number): void {
    if (read === 0) return; // a spurious wake-up says nothing
    this.#last = now;
    // A full drain that found one packet: request/response. A one-packet drain keeps the mode
    // (a burst behind it shows as the next drain coming soon).
    if (max > 1) this.#single = read === 1;
  }
}
