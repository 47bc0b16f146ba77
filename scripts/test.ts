/**
 * Runs the whole test suite (`deno test -A` on tests/) and ends with the plain summary line
 * `N passed, M failed[, K skipped]` that CI readers understand; exits non-zero on any failure.
 * Extra arguments are passed to one `deno test` (e.g. a file filter).
 *
 * The whole suite (no arguments) runs the type check with every JSDoc example (`scripts/check.ts`);
 * it counts as one test, so a broken example fails the suite. Each netns test file runs as its own
 * `deno test --no-check` (the unit tests as one); these and the type check run `NETMANAGER_TEST_JOBS`
 * (default 2) at a time, longest first, plus `NETMANAGER_TEST_LIGHT_JOBS` (default 1) lanes for the
 * files that mostly wait, the timing-sensitive files alone at the end (`scripts/test_plan.ts`). Each
 * file's output is printed in one piece when it ends, with its seconds and CPU seconds; the last line
 * before the summary is the suite's wall and CPU time.
 */
import { typeCheck } from "./check.ts";
import { findHarness } from "./bench.ts";
import { TEST_CACHE_ENV } from "../tests/helpers/release.ts";
import {
  addRun,
  closingLine,
  type PlannedRun,
  planRuns,
  type Summary,
  summaryOf,
  takeRun,
} from "./test_plan.ts";

const whole = Deno.args.length === 0;
const started = Date.now();
// Things several test files build the same way (the release packages) are built once per run here.
const cache = await Deno.makeTempDir({ prefix: "nmtest-cache-" });
const env = { NO_COLOR: "1", [TEST_CACHE_ENV]: cache };
let total: Summary = { passed: 0, failed: 0, ignored: 0 };
const seconds = (t0: number) => `${((Date.now() - t0) / 1000).toFixed(0)} s`;

/**
 * CPU seconds (user + system) of this runner's children reaped so far (/proc/self/stat cutime + cstime,
 * in USER_HZ = 100 ticks): a child's share is the growth between its end and the previous end (a child
 * is counted when it is reaped, with the children it reaped — the daemons of a test file).
 */
function childCpu(): number {
  const stat = Deno.readTextFileSync("/proc/self/stat");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // f[0] is field 3 (state)
  return (Number(f[13]) + Number(f[14])) / 100;
}
let cpuSeen = childCpu();
/** CPU seconds of the children reaped since the last call (normally just the run that ended). */
function cpuSince(): string {
  const now = childCpu();
  const d = now - cpuSeen;
  cpuSeen = now;
  return `CPU ${d.toFixed(0)} s`;
}

/** One `deno test` streaming to our stdout (a filtered run: the old single-process behaviour). */
async function streamed(args: string[]): Promise<void> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", "--no-prompt", ...args],
    stdout: "piped",
    stderr: "inherit",
    env,
  }).spawn();
  let tail = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    await Deno.stdout.write(chunk);
    tail = (tail + decoder.decode(chunk, { stream: true })).slice(-4000);
  }
  const { code } = await child.status;
  const s = summaryOf(tail);
  if (!s) console.error(`test runner: deno test printed no summary (exit code ${code})`);
  total = addRun(total, s, code);
}

/** The whole suite's type check (every file and JSDoc example), lint and format check: three tests of the suite. */
async function checkRun(): Promise<void> {
  const t0 = Date.now();
  const ok = await typeCheck();
  console.log(`type check (deno check --doc) ... ${ok ? "ok" : "FAILED"} (${seconds(t0)}, ${cpuSince()})`);
  count(ok);
  const root = new URL("..", import.meta.url).pathname;
  for (const args of [["lint"], ["fmt", "--check"]]) {
    const t1 = Date.now();
    const out = await new Deno.Command(Deno.execPath(), {
      args,
      cwd: root,
      env,
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    if (!out.success) await Deno.stderr.write(out.stderr); // what is wrong, file and line
    console.log(`deno ${args.join(" ")} ... ${out.success ? "ok" : "FAILED"} (${seconds(t1)})`);
    count(out.success);
  }
}

/** Adds one test's outcome to the suite's total. */
function count(ok: boolean): void {
  total = { ...total, passed: total.passed + (ok ? 1 : 0), failed: total.failed + (ok ? 0 : 1) };
}

/** One planned run, its whole output printed when it ends (files running at once never interleave). */
async function buffered(run: PlannedRun): Promise<void> {
  if (run.typeCheck) return await checkRun();
  const t0 = Date.now();
  // The whole suite's type check (a job of its own) covers every test file: no second check per process.
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", "--no-prompt", "--no-check", ...run.files],
    stdout: "piped",
    stderr: "piped",
    env,
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  await Deno.stdout.write(out.stdout);
  await Deno.stderr.write(out.stderr);
  const s = summaryOf(text);
  if (!s) {
    console.error(
      `test runner: ${run.files.join(" ")}: deno test printed no summary (exit code ${out.code})`,
    );
  }
  console.log(`(${run.files.join(" ")}: ${seconds(t0)}, ${cpuSince()})`);
  total = addRun(total, s, out.code);
}

/** Netns test files (sorted), relative to the repository. */
async function netnsFiles(): Promise<string[]> {
  const files: string[] = [];
  for await (const e of Deno.readDir("tests/netns")) {
    if (e.isFile && e.name.endsWith("_test.ts")) files.push(`tests/netns/${e.name}`);
  }
  return files.sort();
}

try {
  if (!whole) {
    await streamed(Deno.args);
  } else {
    const jobs = Math.max(1, Number(Deno.env.get("NETMANAGER_TEST_JOBS") ?? 2) || 1);
    // The type check runs in a lane like a test file (the netns files run with --no-check).
    const harness = findHarness().path !== null;
    const runs = planRuns(await netnsFiles(), { typeCheck: true, harness });
    // Plus NETMANAGER_TEST_LIGHT_JOBS (default 1) lanes that take only the files that mostly wait.
    const lightJobs = Math.max(0, Number(Deno.env.get("NETMANAGER_TEST_LIGHT_JOBS") ?? 1) || 0);
    const queue = runs.filter((r) => !r.solo);
    const lane = (light: boolean) => async () => {
      for (let r = takeRun(queue, light); r; r = takeRun(queue, light)) await buffered(r);
    };
    await Promise.all([
      ...Array.from({ length: jobs }, lane(false)),
      ...Array.from({ length: lightJobs }, lane(true)),
    ]);
    for (const r of runs.filter((r) => r.solo)) await buffered(r);
  }
} finally {
  await Deno.remove(cache, { recursive: true }).catch(() => {});
}
if (whole) console.log(`(suite: ${seconds(started)}, CPU ${childCpu().toFixed(0)} s)`);
console.log(closingLine(total));
Deno.exit(total.failed > 0 ? 1 : 0);
