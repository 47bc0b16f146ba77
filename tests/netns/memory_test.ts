/**
 * Process-wide memory of a real daemon (standalone mode, own namespace, data plane Worker running):
 * resident size when idle, and what a 10k-entry static table adds — both isolates count, since
 * VmRSS is the whole process. Targets (issue 9): idle ≤ 80 MB; a table entry ≤ 2 KB across both
 * isolates, so 10k entries ≤ +20 MB over idle.
 *
 * With several data-plane workers (`DataPlaneWorkers`, default = CPUs) the table is one: its columns
 * are SharedArrayBuffers the workers read in place (src/table/shared_view.ts). The bounds above are
 * for one worker; the second test measures what each further worker costs (its isolate, and its own
 * per-node state: routes, peers), idle and with the 10k-entry table.
 *
 * Measurement: after /register (which starts the Worker with the table) the daemon settles for 5 s;
 * then VmRSS is read 5 times 400 ms apart and the median taken. The daemons a figure compares run side
 * by side (each in its own namespace), after one warm-up daemon has filled the module cache. The bounds
 * asserted add the
 * run-to-run spread to the measured values. After start-up the daemon releases the deno binary's code
 * pages it no longer runs (src/sys/code_pages.ts; ~20 MB of the binary stay resident, faulted back by
 * what the idle daemon runs) and runs without a copy of V8's builtins per isolate: measured idle
 * 55.6–57.5 MB from the sources (before: 78–81; before the memory work: 89–97 MB), +14.4–15.5 MB for the
 * table as the median of three rounds (before V8's memory-reducing GC after start-up, also in the Worker,
 * and the ServiceIP indexes sized by distinct addresses: +19.0–19.8; before the shared table: +15–21 MB;
 * before the compact one: +122 MB).
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { cleanupAll, isRoot } from "../helpers/netns.ts";
import { TestNode } from "../helpers/node.ts";
import { bigTable } from "../helpers/big_table.ts";
import { bundleWorker, workerStartImports } from "../../scripts/worker_bundle.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const MB = 1024 * 1024;
// Measured idle 55.6–57.5 MB (load average 12–15); the bound is the run-to-run spread (up to ~9 MB
// under load) above that, well under the 80 MB target: a daemon that keeps its start-up code pages
// resident again (~73 MB) fails it.
const IDLE_MAX_MB = 66;
const ENTRIES = 10_000;
const TABLE_MAX_MB = 20 + 1;

interface Sample {
  rssMB: number;
  /** Of it: anonymous memory (heaps) and file pages (the deno binary's code, libraries). */
  anonMB: number;
  fileMB: number;
  workerExternalMB: number;
  entries: number;
}

/**
 * Starts a daemon with `workers` data-plane workers (optionally with a static table), registers,
 * settles, samples; always stops it. Several may run at once: each daemon has its own namespace,
 * environment and state directory, and what is measured is its own VmRSS after start-up (the release
 * of its start-up code pages follows its own start-up and /register, not a clock).
 */
async function measure(workers: number, tableFile?: string): Promise<Sample> {
  const node = await TestNode.startWith({
    extraArgs: tableFile ? ["--static-table", tableFile] : [],
    env: { DataPlaneWorkers: String(workers) },
  });
  try {
    assertEquals((await node.register()).status, 200);
    await new Promise((r) => setTimeout(r, 5000));
    const rss: { all: number; anon: number; file: number }[] = [];
    const mbOf = (status: string, field: string) =>
      Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)![1]) / 1024;
    for (let i = 0; i < 5; i++) {
      const status = await Deno.readTextFile(`/proc/${node.proc!.pid}/status`);
      rss.push({ all: mbOf(status, "VmRSS"), anon: mbOf(status, "RssAnon"), file: mbOf(status, "RssFile") });
      await new Promise((r) => setTimeout(r, 400));
    }
    rss.sort((a, b) => a.all - b.all);
    const st = (await node.api.getJson("/status")) as { dataPlane: { heap: { external: number } } };
    const metrics = (await node.api.request("GET", "/metrics")).body;
    const entries = Number(/^netmanager_table_entries (\d+)/m.exec(metrics)?.[1] ?? -1);
    const { all, anon, file } = rss[2];
    return {
      rssMB: all,
      anonMB: anon,
      fileMB: file,
      workerExternalMB: st.dataPlane.heap.external / MB,
      entries,
    };
  } catch (e) {
    console.error(await node.log());
    throw e;
  } finally {
    await node.stop();
  }
}

/**
 * One daemon started, registered (its Worker loaded) and stopped before any is measured: a daemon that
 * transpiles the sources itself (a cold cache: this file run alone on a fresh checkout) keeps ~15 MB
 * more (measured 73 MB idle).
 */
async function warmUp(): Promise<void> {
  const node = await TestNode.start();
  try {
    assertEquals((await node.register()).status, 200);
  } finally {
    await node.stop();
  }
}
let warm: Promise<void> | undefined;

/**
 * Measures several daemons at once (the suite's time: each measurement is a 5 s settle and 2 s of
 * samples). The daemons compared run side by side, so a burst of load on the machine moves them alike.
 */
async function measureAll(...specs: [number, string?][]): Promise<Sample[]> {
  if (!Deno.env.get("NETMANAGER_TEST_MAIN")) await (warm ??= warmUp());
  // All settle before the namespaces are swept (a failure must not pull them from under the others).
  const done = await Promise.allSettled(specs.map(([w, f]) => measure(w, f)));
  await cleanupAll();
  return done.map((d) => {
    if (d.status === "rejected") throw d.reason;
    return d.value;
  });
}

/** The middle value (the lower of the two middle ones for an even count). */
function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
}

/**
 * Runs `round` `n` times, one after the other: the daemons a round compares run side by side, so a
 * burst of load on the machine moves all of them (their differences) less than it moves the absolute
 * values. Callers take medians over the rounds.
 */
async function rounds<T>(n: number, round: () => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < n; i++) out.push(await round());
  return out;
}

/**
 * Each further data-plane worker: its isolate (measured +10.3–12.4 MB idle, +11.3–14.8 before the
 * isolates shared V8's builtins; an empty Deno Worker alone is ~7 MB) and, with the 10k-entry table, its
 * own routes and peer state for the table's 200 nodes (+3.1–8.9 MB, ~2.7 MB of it the isolate's heap;
 * ≈ 0 when the same 10k entries name one node; with a copy of the table per worker it was +7.3–13 MB).
 * Each figure is the median of three rounds of four daemons (one round alone once gave +12.0 MB for
 * the table when one sample of four was ~3 MB low); last measured, load average 13: rounds +10.5–12.3
 * idle, +7.3–8.9 for the table, medians +10.9 / +7.8.
 */
const WORKER_IDLE_MAX_MB = 15;
const WORKER_TABLE_MAX_MB = 10;

Deno.test(
  {
    name:
      `memory: idle daemon ≤ ${IDLE_MAX_MB} MB (target 80), 10k static-table entries ≤ +20 MB (+ spread), one worker`,
    ...opts,
  },
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmmem-" });
    try {
      const file = `${dir}/table.json`;
      await Deno.writeTextFile(file, JSON.stringify(bigTable(ENTRIES)));
      // Three rounds, the median growth judged (one round alone once gave +21.3 MB at load 6 where
      // the other rounds of this suite gave +19.1–20.1).
      const all = await rounds(3, () => measureAll([1], [1, file]));
      const grows = all.map(([i, f]) => f.rssMB - i.rssMB);
      const grow = median(grows);
      const [idle, full] = all[grows.indexOf(grow)];
      // Idle judged by its median over the rounds too, not by the one round the growth picked.
      const idleMB = median(all.map(([i]) => i.rssMB));
      console.log(
        `idle ${idleMB.toFixed(1)} MB (rounds ${all.map(([i]) => i.rssMB.toFixed(1)).join(" ")}; ` +
          `anon+file ${all.map(([i]) => `${i.anonMB.toFixed(1)}+${i.fileMB.toFixed(1)}`).join(" ")}); ` +
          `${ENTRIES} entries ${full.rssMB.toFixed(1)} MB ` +
          `(+${grow.toFixed(1)} MB, ${Math.round(grow * MB / ENTRIES)} B/entry; rounds ` +
          `${grows.map((g) => `+${g.toFixed(1)}`).join(" ")}); Worker external ` +
          `${idle.workerExternalMB.toFixed(1)} → ${full.workerExternalMB.toFixed(1)} MB`,
      );
      for (const [i, f] of all) {
        assertEquals(i.entries, 0);
        assertEquals(f.entries, ENTRIES, "the table is loaded");
        // The Worker holds no copy: it reads the main isolate's shared buffers (a copy of 10k entries
        // took 2.5–4 MB of the Worker's external memory).
        assert(
          f.workerExternalMB - i.workerExternalMB < 1,
          `the Worker's external memory grew by ${(f.workerExternalMB - i.workerExternalMB).toFixed(1)} MB`,
        );
      }
      assert(
        idleMB <= IDLE_MAX_MB,
        `idle RSS ${idleMB.toFixed(1)} MB > ${IDLE_MAX_MB} MB (median of rounds)`,
      );
      assert(grow <= TABLE_MAX_MB, `${ENTRIES} entries add ${grow.toFixed(1)} MB > ${TABLE_MAX_MB} MB`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test(
  {
    name:
      `memory: a second data-plane worker costs ≤ ${WORKER_IDLE_MAX_MB} MB idle and ≤ 10 MB with 10k entries (no table copy)`,
    ...opts,
  },
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmmem-" });
    try {
      const file = `${dir}/table.json`;
      await Deno.writeTextFile(file, JSON.stringify(bigTable(ENTRIES)));
      // Three rounds of the four daemons; each figure is the median over the rounds of what one round
      // measured (one round alone: a sample 2–4 MB off made a 10k table look 12 MB dearer).
      const r = await rounds(3, async () => {
        const [one, two, twoFull, oneFull] = await measureAll([1], [2], [2, file], [1, file]);
        assertEquals(twoFull.entries, ENTRIES);
        const oneTable = oneFull.rssMB - one.rssMB, twoTable = twoFull.rssMB - two.rssMB;
        console.log(
          `1 worker ${one.rssMB.toFixed(1)} MB (+${oneTable.toFixed(1)} MB for ${ENTRIES}); ` +
            `2 workers ${two.rssMB.toFixed(1)} MB (+${twoTable.toFixed(1)} MB)`,
        );
        return { idle: two.rssMB - one.rssMB, table: twoTable - oneTable };
      });
      const idle = median(r.map((x) => x.idle));
      const table = median(r.map((x) => x.table));
      console.log(`second worker: median +${idle.toFixed(1)} MB idle, +${table.toFixed(1)} MB for the table`);
      assert(idle <= WORKER_IDLE_MAX_MB, `a second worker adds ${idle.toFixed(1)} MB idle`);
      assert(
        table <= WORKER_TABLE_MAX_MB,
        `with ${ENTRIES} entries a second worker adds ${table.toFixed(1)} MB`,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

/**
 * The packaged daemon (scripts/package.sh, scripts/launcher.sh) runs its main program and the Worker
 * minified and split into chunks (each loads only those it imports): measured here with bundles made
 * the same way, three rounds of one and two workers, medians. Measured (2-core machine at load average
 * 9–15, 5 s settle, medians of 3): one worker 48.3–50.4 MB, two 57.6–58.6 MB (single runs 47.7–51.8 /
 * 56.7–60.1; the CI's fresh clone measures ~2 MB more: 51.3–52.0 / 60.4–61.3); ~19 MB of each are the
 * deno binary's code pages the idle daemon runs. With the Worker as one file (eeeb9ca until it was
 * split) the bundler hoisted the lazily loaded handshakes' node:crypto imports into every worker:
 * 51.5–52.1 / 62.5–63.7 here, 54.3–55.2 / 66.0–67.5 in CI. Before the start-up code pages were
 * released: 71.3–72.9 / 79.1–81.8; before the isolates shared V8's builtins, too: 71.7–74.9 /
 * 82.6–84.6 (44–49 MB of code pages). The bounds add ~4 MB (one) and ~3 MB (two) to the CI's figures
 * before that regression. It fails the worker's start-import check always; by RSS, in CI the two-worker
 * bound, here the worker's cost below in 3 of 4 runs (a 3–4 MB step is near this machine's noise).
 */
const PACKAGED_ONE_IDLE_MAX_MB = 56;
const PACKAGED_TWO_IDLE_MAX_MB = 64;
/**
 * The second worker's own cost packaged, the median of the three rounds' differences (each round's
 * two daemons run close together in time): measured 8.2–10.3 MB (single pairs 5.7–10.5; CI ~9.2);
 * with node:crypto in each worker 10.4–12.1 here (pairs 10.0–13.9), 11.7–13.2 in CI; before the
 * shared builtins 8.1–12.1.
 */
const BUNDLE_WORKER_IDLE_MAX_MB = 11.5;
/** 10k entries with two workers: measured +22.5–23.6 MB from the sources, +19.3–23.4 MB packaged. */
const PACKAGED_TWO_TABLE_MAX_MB = 27;

/** Bundles `entry` (relative to the repository) minified with `opts`, as scripts/package.sh does. */
async function bundle(entry: string, ...opts: string[]): Promise<void> {
  const src = new URL(`../../${entry}`, import.meta.url).pathname;
  const b = await new Deno.Command(Deno.execPath(), {
    args: ["bundle", "--quiet", "--minify", ...opts, src],
  })
    .output();
  assertEquals(b.code, 0, new TextDecoder().decode(b.stderr));
}

Deno.test(
  {
    name:
      `memory: as packaged (bundled main and worker) idle ≤ ${PACKAGED_ONE_IDLE_MAX_MB} MB with one worker, ` +
      `≤ ${PACKAGED_TWO_IDLE_MAX_MB} MB with two`,
    ...opts,
  },
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmmem-" });
    try {
      await bundle("main.ts", "--code-splitting", "--outdir", `${dir}/bundle`);
      await bundleWorker(Deno.execPath(), new URL("../../", import.meta.url).pathname, [`${dir}/bundle`]);
      // A worker loads no node: module at start (the handshakes' chunk, with node:crypto, loads on
      // demand). As one file the bundle hoisted hs_host.ts's node:crypto and node:buffer imports: +3–4 MB
      // per worker, which RSS alone tells apart from this machine's noise only in most runs (see above).
      const startImports = await workerStartImports(`${dir}/bundle`);
      assertEquals(startImports, [], `what a worker loads at start`);
      const file = `${dir}/table.json`;
      await Deno.writeTextFile(file, JSON.stringify(bigTable(ENTRIES)));
      // As the launcher does: a daemon that fills the module-analysis cache itself keeps ~20 MB more.
      const warm = await new Deno.Command(Deno.execPath(), {
        args: ["cache", "--quiet", `${dir}/bundle/main.js`],
      }).output();
      assertEquals(warm.code, 0, new TextDecoder().decode(warm.stderr));
      Deno.env.set("NETMANAGER_TEST_MAIN", `${dir}/bundle/main.js`);
      let pairs: { one: number; two: number }[], twoFull: Sample;
      try {
        // Three rounds of one and two workers (medians; a worker's cost from each round's pair).
        const [one, two, full] = await measureAll([1], [2], [2, file]);
        pairs = [{ one: one.rssMB, two: two.rssMB }];
        pairs.push(
          ...await rounds(2, async () => {
            const [a, b] = await measureAll([1], [2]);
            return { one: a.rssMB, two: b.rssMB };
          }),
        );
        twoFull = full;
      } finally {
        Deno.env.delete("NETMANAGER_TEST_MAIN");
      }
      const one = median(pairs.map((p) => p.one));
      const two = median(pairs.map((p) => p.two));
      const worker = median(pairs.map((p) => p.two - p.one));
      const grow = twoFull.rssMB - two;
      const list = (k: "one" | "two") => pairs.map((p) => p[k].toFixed(1)).join(" ");
      console.log(
        `packaged: 1 worker ${one.toFixed(1)} MB, 2 workers ${two.toFixed(1)} MB, second worker ` +
          `+${worker.toFixed(1)} MB (medians of ${list("one")} / ${list("two")}), ` +
          `with ${ENTRIES} entries ${twoFull.rssMB.toFixed(1)} MB (+${grow.toFixed(1)} MB)`,
      );
      assertEquals(twoFull.entries, ENTRIES, "the bundled daemon loads the table");
      // Two workers: each holds its own routes and peer state for the table's nodes (see above).
      assert(grow <= PACKAGED_TWO_TABLE_MAX_MB, `${ENTRIES} entries add ${grow.toFixed(1)} MB (two workers)`);
      assert(
        worker <= BUNDLE_WORKER_IDLE_MAX_MB,
        `a second bundled worker adds ${worker.toFixed(1)} MB idle`,
      );
      assert(one <= PACKAGED_ONE_IDLE_MAX_MB, `one worker idle ${one.toFixed(1)} MB`);
      assert(two <= PACKAGED_TWO_IDLE_MAX_MB, `two workers idle ${two.toFixed(1)} MB`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
