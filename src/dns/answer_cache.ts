/**
 * Encoded UDP answers to repeated queries, keyed by the query's bytes after its id: the same bytes
 * decode to the same question, flags and EDNS size, so while the table is unchanged the answer
 * dns-packet encoded for them is still right, with only the id to patch. Entries are tied to the
 * table object and its generation; any change of the table makes every entry stale. Only answers
 * that depend on nothing but the table go in (`Resolution.fromTable`), so negative-cache, control
 * plane and upstream answers are always resolved afresh.
 *
 * @example
 * ```ts
 * import { TranslationTable } from "../table/mod.ts";
 * const table = new TranslationTable();
 * const cache = new AnswerCache(1024);
 * const query = new Uint8Array(40);
 * const hit = cache.get(query, query.length, table); // undefined: nothing cached yet
 * ```
 */
import type { Question } from "dns-packet";
import type { NameTable } from "./names.ts";
import type { Resolution } from "./resolver.ts";

/** Longest query (bytes) whose answer is cached. */
export const CACHED_QUERY_MAX = 512;

/** A cached answer. */
export interface CachedAnswer {
  /** The encoded answer; bytes 0–1 (the id) are the first asker's: patch them. */
  readonly bytes: Uint8Array;
  /** For the resolver's counters and the job's interest on every hit. */
  readonly question: Question;
  readonly resolution: Resolution;
  /** TC set (counted as a truncation on every hit). */
  readonly truncated: boolean;
  readonly table: NameTable;
  readonly generation: number;
}

/** Bounded map from query bytes to answers (oldest inserted evicted first). */
export class AnswerCache {
  readonly #cap: number;
  readonly #map = new Map<string, CachedAnswer>();

  constructor(capacity: number) {
    this.#cap = capacity;
  }

  /** Number of entries. */
  get size(): number {
    return this.#map.size;
  }

  /** The key of a query: its bytes after the id, as a string (undefined when too long to cache). */
  static key(query: Uint8Array, len: number): string | undefined {
    if (len < 12 || len > CACHED_QUERY_MAX) return undefined;
    return String.fromCharCode.apply(null, query.subarray(2, len) as unknown as number[]);
  }

  /** The answer cached for `query[0..len)` while `table` is unchanged, or undefined. */
  get(query: Uint8Array, len: number, table: NameTable | undefined): CachedAnswer | undefined {
    if (this.#map.size === 0 || table === undefined) return undefined;
    const k = AnswerCache.key(query, len);
    if (k === undefined) return undefined;
    const e = this.#map.get(k);
    if (e === undefined) return undefined;
    if (e.table !== table || e.generation !== table.generation) {
      this.#map.delete(k);
      return undefined;
    }
    return e;
  }

  /** Remembers an answer (only when `table` has a generation and the answer came from it alone). */
  set(
    query: Uint8Array,
    len: number,
    table: NameTable | undefined,
    e: Omit<CachedAnswer, "table" | "generation" | "truncated">,
  ): void {
    if (table === undefined || table.generation === undefined || e.resolution.fromTable !== true) return;
    const k = AnswerCache.key(query, len);
    if (k === undefined) return;
    if (this.#map.size >= this.#cap && !this.#map.has(k)) this.#map.delete(this.#map.keys().next().value!);
    const truncated = e.bytes.length > 2 && (e.bytes[2] & 0x02) !== 0;
    this.#map.set(k, { ...e, truncated, table, generation: table.generation });
  }

  /** Forgets everything. */
  clear(): void {
    this.#map.clear();
  }
}
