/**
 * Metrics built on first use. The Prometheus library costs the daemon ~7 MB resident once loaded,
 * so it is loaded when `/metrics` is first asked for (or at start when a metrics address is set).
 * Observations made before then (deploy and table-miss latencies) are queued and replayed into the
 * registry when it is built, so no sample is lost; a full queue builds it at once.
 *
 * @example
 * ```ts
 * const m = new OnDemand(async () => ({ seen: [] as number[] }));
 * m.record((x) => x.seen.push(3)); // queued: nothing built yet
 * const built = await m.get(); // built; the queued observation replayed
 * console.log(built.seen); // [3]
 * ```
 * @module
 */

/** A value built by an async `build()` on first {@link OnDemand.get}, with queued observations. */
export class OnDemand<M> {
  readonly #build: () => Promise<M>;
  readonly #maxPending: number;
  #value: M | undefined;
  #building: Promise<M> | undefined;
  #pending: Array<(m: M) => void> = [];

  /** `build` makes the value; at most `maxPending` observations wait for it. */
  constructor(build: () => Promise<M>, maxPending = 4096) {
    this.#build = build;
    this.#maxPending = maxPending;
  }

  /** Applies `observe` now if the value exists, else queues it (a full queue starts the build). */
  record(observe: (m: M) => void): void {
    if (this.#value !== undefined) return observe(this.#value);
    this.#pending.push(observe);
    if (this.#pending.length >= this.#maxPending) void this.get();
  }

  /** The value, built on the first call (concurrent callers share one build). */
  get(): Promise<M> {
    this.#building ??= this.#build().then((m) => {
      for (const observe of this.#pending) observe(m);
      this.#pending = [];
      this.#value = m;
      return m;
    });
    return this.#building;
  }
}
