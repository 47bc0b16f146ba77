/**
 * Offset allocator with a FIFO free list: hands out small integer offsets inside a subnet,
 * released ones first (in the order they were released), else the next fresh one, like
 * Oakestra's node allocator. Pure and synchronous, so concurrent deploys on one event loop can
 * never receive the same offset.
 *
 * @example
 * ```ts
 * const a = new OffsetAllocator(2, 62);
 * a.allocate(); // 2
 * a.allocate(); // 3
 * a.release(2);
 * a.allocate(); // 2 (released offsets are reused first), then 4
 * ```
 */

/** Raised when no offset is left. */
export class ExhaustedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ExhaustedError";
  }
}

/** Serializable allocator state. */
export interface AllocatorState {
  first: number;
  last: number;
  next: number;
  free: number[];
}

/** Allocates integer offsets in [first, last]; released ones (FIFO) before fresh ones. */
export class OffsetAllocator {
  readonly first: number;
  readonly last: number;
  #next: number;
  #free: number[] = [];
  #used = new Set<number>();

  constructor(first: number, last: number) {
    if (!Number.isInteger(first) || !Number.isInteger(last) || first > last) {
      throw new RangeError(`invalid allocator range ${first}..${last}`);
    }
    this.first = first;
    this.last = last;
    this.#next = first;
  }

  /** How many offsets are in use. */
  get used(): number {
    return this.#used.size;
  }

  /** How many offsets can still be allocated. */
  get available(): number {
    return this.last - this.first + 1 - this.#used.size;
  }

  /** True when `offset` is currently allocated. */
  isUsed(offset: number): boolean {
    return this.#used.has(offset);
  }

  /** Takes the next offset; throws ExhaustedError when none is left. */
  allocate(): number {
    while (this.#free.length > 0) {
      const n = this.#free.shift()!;
      if (!this.#used.has(n)) {
        this.#used.add(n);
        return n;
      }
    }
    while (this.#next <= this.last) {
      const n = this.#next++;
      if (!this.#used.has(n)) {
        this.#used.add(n);
        return n;
      }
    }
    throw new ExhaustedError(`subnet exhausted: all ${this.last - this.first + 1} addresses are in use`);
  }

  /** Marks a specific offset as used (reconcile after restart); false when out of range or taken. */
  reserve(offset: number): boolean {
    if (!Number.isInteger(offset) || offset < this.first || offset > this.last || this.#used.has(offset)) {
      return false;
    }
    this.#used.add(offset);
    const i = this.#free.indexOf(offset);
    if (i >= 0) this.#free.splice(i, 1);
    return true;
  }

  /** Returns an offset to the pool (no-op for offsets not in use). */
  release(offset: number): void {
    if (!this.#used.delete(offset)) return;
    if (offset < this.#next) this.#free.push(offset);
  }

  /** A copy of the state for persistence. */
  snapshot(): AllocatorState {
    return { first: this.first, last: this.last, next: this.#next, free: [...this.#free] };
  }

  /**
   * Restores counters and free list from a snapshot. Reserve the offsets still in use first: any
   * offset below the counter that is neither reserved nor listed becomes free.
   */
  restore(state: AllocatorState): void {
    if (state.first !== this.first || state.last !== this.last) return;
    this.#next = Math.min(Math.max(state.next, this.first), this.last + 1);
    this.#free = state.free.filter((n) => n >= this.first && n < this.#next && !this.#used.has(n));
    // Offsets handed out before but no longer reserved (their instance vanished) are free again.
    const listed = new Set(this.#free);
    for (let n = this.first; n < this.#next; n++) {
      if (!this.#used.has(n) && !listed.has(n)) this.#free.push(n);
    }
  }
}
