/**
 * Giving memory back after a burst: the pages of the deno binary's code the process no longer runs
 * (`src/sys/code_pages.ts`: start-up touched ~40 MB, an idle daemon runs ~20), a full, compacting
 * garbage collection of the calling isolate, then glibc's `malloc_trim`, which returns what the runtime
 * freed (compiler zones, typed arrays of every isolate) from the malloc arenas to the system.
 *
 * V8 grows an isolate's young generation (up to 3 × 16 MB) while a burst allocates — loading a
 * 10k-entry static table, a large table-query result — and shrinks it again only when its memory
 * reducer runs, 30 s or more later. The daemon calls {@link compactHeap} once after such a burst so
 * its resident size returns to what it holds. V8's `gc()` is reached the documented Node way
 * (`v8.setFlagsFromString("--expose-gc")`, then `vm.runInNewContext("gc")`); both modules are loaded
 * on the first call only. It is called as `gc({ flavor: "last-resort" })` (V8's
 * `CollectAllAvailableGarbage`): a plain `gc()` collects but keeps the grown young generation
 * committed — after loading a 10k-entry table 32 MB of empty semi-spaces stayed resident, ~20 MB of
 * the table's measured cost; the last-resort flavour shrinks them (same probe: RSS back to +1 MB over
 * before the load, ~0.1 s once).
 *
 * @example
 * ```ts
 * await compactHeap(); // false when the runtime does not offer it
 * ```
 */

import { mallocTrim } from "../ffi/libc.ts";
import { releaseCodePages } from "./sys/code_pages.ts";

/** V8's `gc` extension; the options are ignored by a V8 that predates them (a plain full GC then). */
type GcFn = (
  opts?: { type?: "major" | "minor"; execution?: "sync" | "async"; flavor?: "regular" | "last-resort" },
) => unknown;

let gc: GcFn | null | undefined;

/** Runs a full garbage collection of this isolate and trims malloc; false when GC is not available. */
export async function compactHeap(): Promise<boolean> {
  // First: reading the mappings makes garbage, and the collection below runs again the code it needs.
  releaseCodePages();
  return await compactIsolate();
}

/**
 * The isolate part of {@link compactHeap} (no code pages): a full, memory-reducing collection of the
 * calling isolate, then `malloc_trim`. A data-plane Worker calls it once after its start-up burst.
 */
export async function compactIsolate(): Promise<boolean> {
  if (gc === undefined) {
    try {
      const [{ default: v8 }, { default: vm }] = await Promise.all([import("node:v8"), import("node:vm")]);
      v8.setFlagsFromString("--expose-gc");
      const f: unknown = vm.runInNewContext("gc");
      gc = typeof f === "function" ? f as GcFn : null;
    } catch {
      gc = null;
    }
  }
  // "last-resort": also gives back the young generation's semi-spaces (a plain gc() keeps them).
  gc?.({ type: "major", execution: "sync", flavor: "last-resort" });
  mallocTrim();
  return gc !== null;
}
