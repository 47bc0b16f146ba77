/**
 * Releasing the runtime's start-up code pages (src/sys/code_pages.ts): only the executable's clean
 * read-only mappings are chosen, and releasing them in this very process lowers its resident code
 * while everything keeps running (pages come back from the page cache when used).
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { releasableRanges, releaseCodePages } from "../../src/sys/code_pages.ts";

const EXE = "/opt/deno/deno";
const map = (range: string, perms: string, path: string, fields: Record<string, number>) =>
  `${range} ${perms} 00000000 fe:00 42                         ${path}\n` +
  Object.entries(fields).map(([k, v]) => `${k}:${" ".repeat(14)}${v} kB\n`).join("") +
  "VmFlags: rd ex mr mw me\n";

Deno.test("code pages: only the executable's clean read-only mappings are releasable", () => {
  const smaps = [
    map("1000-3000", "r--p", EXE, { Rss: 8, Private_Dirty: 0, Anonymous: 0 }),
    map("3000-9000", "r-xp", EXE, { Rss: 20, Private_Clean: 4, Private_Dirty: 0, Anonymous: 0 }),
    // relocated (RELRO): read-only now, but its pages were written — copies, not the file's content
    map("9000-a000", "r--p", EXE, { Rss: 4, Private_Dirty: 4, Anonymous: 4 }),
    map("a000-b000", "rw-p", EXE, { Rss: 4, Private_Dirty: 0, Anonymous: 0 }), // writable
    map("10000-11000", "r--p", EXE, { Rss: 4, Private_Dirty: 0, Anonymous: 0, Swap: 4 }), // a COW page swapped
    map("b000-c000", "r-xp", "/usr/lib/x86_64-linux-gnu/libc.so.6", { Rss: 4, Private_Dirty: 0 }),
    map("c000-d000", "r-xp", "", { Rss: 4, Private_Dirty: 0, Anonymous: 0 }), // anonymous code (JIT)
    map("d000-e000", "r-xp", EXE, { Rss: 0, Private_Dirty: 0, Anonymous: 0 }), // nothing resident
    map("e000-f000", "r-xs", EXE, { Rss: 4, Private_Dirty: 0, Anonymous: 0 }), // shared mapping
    map("f000-10000", "r--p", `${EXE} (deleted)`, { Rss: 4, Private_Dirty: 0, Anonymous: 0 }),
    // a binary installed seconds ago: its page-cache pages are dirty (not yet written back) but they
    // are the file's content (ci29 kept ~25 MB of them when this counted as modified)
    map("11000-15000", "r-xp", EXE, { Rss: 16, Private_Dirty: 16, Anonymous: 0 }),
  ].join("");
  assertEquals(releasableRanges(smaps, EXE), [
    { start: 0x1000n, end: 0x3000n, rss: 8 * 1024 },
    { start: 0x3000n, end: 0x9000n, rss: 20 * 1024 },
    { start: 0x11000n, end: 0x15000n, rss: 16 * 1024 },
  ]);
  assertEquals(releasableRanges("", EXE), []);
});

/** Resident kB of this process's mappings of its executable. */
function exeResidentKb(): number {
  const exe = Deno.readLinkSync("/proc/self/exe");
  let kb = 0;
  let ours = false;
  for (const line of Deno.readTextFileSync("/proc/self/smaps").split("\n")) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) ours = head[1] === exe;
    else if (ours && line.startsWith("Rss:")) kb += Number(/(\d+)/.exec(line)![1]);
  }
  return kb;
}

Deno.test("code pages: releasing them in this process lowers its resident code, and it keeps running", () => {
  const before = exeResidentKb();
  const r = releaseCodePages();
  const after = exeResidentKb();
  assert(r.ranges > 0 && r.bytes > 4 * 1024 * 1024, `released ${r.ranges} ranges, ${r.bytes} bytes`);
  assert(after < before - 4 * 1024, `executable resident ${before} kB -> ${after} kB`);
  // Code runs again from the page cache: the runtime (JSON, regex, typed arrays, timers) still works.
  assertEquals(JSON.parse(JSON.stringify({ a: [1, 2, 3] })), { a: [1, 2, 3] });
  assertEquals(new Uint8Array([1, 2, 3]).reduce((a, b) => a + b), 6);
  assert(/^\d+$/.test(String(exeResidentKb())));
});
