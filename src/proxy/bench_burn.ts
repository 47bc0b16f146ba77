/**
 * A benchmark's stand-in for the AEAD's CPU (issue 11's budget; docs/bench/secure-budget.md): with
 * `NETMANAGER_BENCH_BURN_US="tx,rx"` in its environment, a FAST-mode worker spins `tx` µs after
 * each TUN read of a super-packet (where a secure sender seals the message) and `rx` µs before each
 * reassembled JUMBO packet's TUN write (where a secure receiver has opened it). Plain FAST plus the
 * AEAD's time and nothing else of the secure layer: what a secure path with no overhead besides the
 * cipher would carry. Unset (always, outside the bench slot `nm-fast-aead-cpu`), the worker uses
 * the plain VnetTun and nothing here runs; the daemon checks the value when it starts
 * (src/cli/daemon_run.ts), so a bad one stops it with {@link BenchBurnError}. The TUN that
 * spins: bench_burn_tun.ts.
 *
 * @example
 * ```ts
 * import { parseBenchBurn } from "./bench_burn.ts";
 * console.log(parseBenchBurn("5,4")); // { txUs: 5, rxUs: 4 }
 * console.log(parseBenchBurn(undefined)); // undefined
 * ```
 * @module
 */

/** The environment variable read by {@link benchBurnFromEnv}. */
export const BENCH_BURN_ENV = "NETMANAGER_BENCH_BURN_US";

/** Microseconds to spin per message on each side. */
export interface BenchBurn {
  /** After each TUN read of a super-packet (larger than {@link BURN_MIN_READ} bytes). */
  txUs: number;
  /** Before each reassembled JUMBO packet's TUN write. */
  rxUs: number;
}

/** Reads smaller than this are single packets (ACKs): not burned, as a secure sender's small seals are cheap. */
export const BURN_MIN_READ = 16384;

/** A malformed {@link BENCH_BURN_ENV} value. */
export class BenchBurnError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BenchBurnError";
  }
}

/** Parses `"tx,rx"` (µs, each 0..1000); undefined for an unset or empty value. */
export function parseBenchBurn(value: string | undefined): BenchBurn | undefined {
  if (value === undefined || value.trim() === "") return undefined;
  const parts = value.split(",").map((s) => s.trim());
  const nums = parts.map(Number);
  if (parts.length !== 2 || parts.some((s) => s === "") || nums.some((n) => !(n >= 0 && n <= 1000))) {
    throw new BenchBurnError(
      `${BENCH_BURN_ENV} must be "tx,rx" in microseconds (each 0..1000), not ${JSON.stringify(value)}`,
    );
  }
  return { txUs: nums[0], rxUs: nums[1] };
}

/** {@link parseBenchBurn} of this process's {@link BENCH_BURN_ENV}. */
export function benchBurnFromEnv(): BenchBurn | undefined {
  return parseBenchBurn(Deno.env.get(BENCH_BURN_ENV));
}

/** Spins for `us` microseconds of wall time (the CPU stays busy, as a cipher would keep it). */
export function spin(us: number): void {
  if (us <= 0) return;
  const until = performance.now() + us / 1000;
  while (performance.now() < until) { /* busy */ }
}
