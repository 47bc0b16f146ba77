/**
 * Letting go of the runtime's start-up code. The deno binary is ~90 MB of read-only mappings; start-up
 * (argument parsing, module loading and resolution, permissions, the isolates' bootstrap) touches
 * ~40 MB of them, and those pages stay in the process's resident set for its whole life although an
 * idle daemon runs a small part of them (its event loop, timers, the interpreter and the GC).
 *
 * {@link releaseCodePages} drops this process's mappings of those pages (`madvise(MADV_DONTNEED)`) for
 * the mappings of the executable that are read-only and hold no private (modified) page: their content
 * is the file's, so nothing is lost — a page needed again is mapped back from the page cache on its
 * next use (a minor fault, once). Writable mappings, relocated (RELRO) pages and anything not from the
 * executable are never touched.
 *
 * @example
 * ```ts
 * const r = releaseCodePages(); // after start-up
 * console.log(`${(r.bytes / 1048576).toFixed(1)} MB of code pages released`);
 * ```
 */

import { errno, libc } from "../../ffi/libc.ts";

const MADV_DONTNEED = 4;
/**
 * smaps fields that show a page whose content is not the file's: a written page of a private mapping
 * is a copy-on-write anonymous page (possibly swapped out). Not `Private_Dirty`: it also counts page-cache
 * pages not yet written back — the whole binary for ~30 s after it was installed — which are the
 * file's content (ci29 kept ~25 MB of them resident for that).
 */
const MODIFIED = new Set(["Anonymous", "Swap"]);

/** One mapping of `/proc/<pid>/smaps` that may be released. */
export interface CodeRange {
  start: bigint;
  end: bigint;
  /** Resident bytes when read. */
  rss: number;
}

/**
 * The mappings of `exe` in `smaps` text that are safe to release: private, not writable, and with no
 * anonymous or swapped page (only then is every page the file's content; a dirty page-cache page is).
 *
 * @example
 * ```ts
 * const text = "55d0-55e0 r-xp 00000000 fe:00 1 /usr/bin/deno\nRss: 8 kB\nPrivate_Dirty: 0 kB\nAnonymous: 0 kB\n";
 * releasableRanges(text, "/usr/bin/deno"); // [{ start: 0x55d0n, end: 0x55e0n, rss: 8192 }]
 * ```
 */
export function releasableRanges(smaps: string, exe: string): CodeRange[] {
  const out: CodeRange[] = [];
  let cur: { start: bigint; end: bigint; ok: boolean; rss: number } | undefined;
  const finish = () => {
    if (cur?.ok && cur.rss > 0) out.push({ start: cur.start, end: cur.end, rss: cur.rss });
    cur = undefined;
  };
  for (const line of smaps.split("\n")) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      finish();
      const [, a, b, perms, path] = head;
      cur = {
        start: BigInt(`0x${a}`),
        end: BigInt(`0x${b}`),
        ok: path === exe && perms[0] === "r" && perms[1] === "-" && perms[3] === "p",
        rss: 0,
      };
      continue;
    }
    if (!cur?.ok) continue;
    const field = /^(\w+):\s+(\d+) kB/.exec(line);
    if (!field) continue;
    const kb = Number(field[2]);
    if (field[1] === "Rss") cur.rss = kb * 1024;
    // A modified (copy-on-write: anonymous, possibly swapped out) page would lose its content: the
    // mapping is kept.
    else if (MODIFIED.has(field[1]) && kb !== 0) cur.ok = false;
  }
  finish();
  return out;
}

/** What {@link releaseCodePages} did. */
export interface ReleaseResult {
  /** Mappings released. */
  ranges: number;
  /** Their resident bytes before. */
  bytes: number;
}

/**
 * Releases this process's resident pages of the executable's clean read-only mappings (see the
 * module doc). Linux only; returns zeros where `/proc/self/smaps` cannot be read, and when the
 * environment sets `NETMANAGER_KEEP_CODE_PAGES=1` (to compare).
 */
export function releaseCodePages(): ReleaseResult {
  let smaps: string;
  let exe: string;
  try {
    if (Deno.env.get("NETMANAGER_KEEP_CODE_PAGES") === "1") return { ranges: 0, bytes: 0 };
    smaps = Deno.readTextFileSync("/proc/self/smaps");
    exe = Deno.readLinkSync("/proc/self/exe");
  } catch {
    return { ranges: 0, bytes: 0 };
  }
  let ranges = 0;
  let bytes = 0;
  for (const r of releasableRanges(smaps, exe)) {
    if (libc.madvise(r.start, r.end - r.start, MADV_DONTNEED) !== 0) {
      throw new Error(`madvise(MADV_DONTNEED) of the executable's code: errno ${errno()}`);
    }
    ranges++;
    bytes += r.rss;
  }
  return { ranges, bytes };
}
