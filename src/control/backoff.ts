/**
 * Exponential back-off with jitter for reconnect attempts: the delay doubles from `baseMs` up to
 * `maxMs`, each one spread by ±`jitter` so that many nodes losing the same broker do not retry in
 * step. Pure apart from the random source, which can be injected.
 *
 * @example
 * ```ts
 * const b = new Backoff({ baseMs: 1000, maxMs: 60_000, random: () => 0.5 });
 * b.next(); // 1000
 * b.next(); // 2000
 * b.reset();
 * ```
 * @module
 */

/** Options of {@link Backoff}. */
export interface BackoffOptions {
  /** First delay (ms). */
  baseMs: number;
  /** Largest delay before jitter (ms). */
  maxMs: number;
  /** Relative spread of each delay, 0..1 (default 0.2: ±20 %). */
  jitter?: number;
  /** Uniform random number in [0, 1) (default Math.random). */
  random?: () => number;
}

/** See the module documentation. */
export class Backoff {
  readonly #base: number;
  readonly #max: number;
  readonly #jitter: number;
  readonly #random: () => number;
  #attempt = 0;

  /** Creates a back-off starting at `opts.baseMs`. */
  constructor(opts: BackoffOptions) {
    this.#base = Math.max(1, opts.baseMs);
    this.#max = Math.max(this.#base, opts.maxMs);
    this.#jitter = Math.min(1, Math.max(0, opts.jitter ?? 0.2));
    this.#random = opts.random ?? Math.random;
  }

  /** Attempts since the last reset. */
  get attempt(): number {
    return this.#attempt;
  }

  /** The delay before the next attempt (ms), and counts the attempt. */
  next(): number {
    const raw = Math.min(this.#max, this.#base * 2 ** Math.min(this.#attempt, 30));
    this.#attempt++;
    const spread = raw * this.#jitter * (2 * this.#random() - 1);
    return Math.max(1, Math.round(raw + spread));
  }

  /** Back to the first delay (after a success). */
  reset(): void {
    this.#attempt = 0;
  }
}
