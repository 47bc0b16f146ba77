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
 * on the first call only.
 *
 * @example
 * ```ts
 * await compactHeap(); // false when the runtime does not offer it
 * ```
 */

import { mallocTrim } from "../ffi/libc.ts";
import { releaseCodePages } from "./sys/code_pages.ts";

let gc: (() => void) | null | undefined;

/** Runs a full garbage collection of this isolate and trims malloc; false when GC is not available. */
export async function compactHeap(): Promise<boolean> {
  // First: reading the mappings makes garbage, and the collection below runs again the code it needs.
  releaseCodePages();
  if (gc === undefined) {
    try {
      const [{ default: v8 }, { default: vm }] = await Promise.all([import("node:v8"), import("node:vm")]);
      v8.setFlagsFromString("--expose-gc");
      const f: unknown = vm.runInNewContext("gc");
      gc = typeof f === "function" ? f as () => void : null;
    } catch {
      gc = null;
    }
  }
  gc?.();
  mallocTrim();
  return gc !== null;
}
