/**
 * The suite runner's plan (pure; `scripts/test.ts` does the I/O): which `deno test` runs the whole
 * suite is split into, in which order, and how their closing lines add up to `N passed, M failed[, K
 * skipped]`.
 *
 * Each netns test file is its own `deno test` process (its own environment: several files set
 * `Deno.env` for the daemons they start) and the unit tests are one; up to `jobs` run at once, the
 * longest first. Files whose assertions are about time or load on a quiet machine run afterwards,
 * one at a time ({@link SOLO}). Parallel files do not share resources: every namespace and interface
 * carries a per-process prefix (tests/helpers/netns.ts), servers listen inside those namespaces, and
 * the release packages are built once under a lock (tests/helpers/release.ts).
 *
 * @example
 * ```ts
 * import { planRuns, summaryOf } from "./test_plan.ts";
 * const runs = planRuns(["tests/netns/a_test.ts", "tests/netns/secure_test.ts"]);
 * console.log(runs.map((r) => r.files.join(" "))); // secure_test first: it takes longest
 * console.log(summaryOf("ok | 3 passed (2 steps) | 0 failed | 1 ignored (29ms)")); // { passed: 3, … }
 * ```
 */

/** One `deno test` process of the suite. */
export interface PlannedRun {
  /** Files (or directories) given to `deno test`. */
  files: string[];
  /** Runs alone, after the parallel part. */
  solo: boolean;
  /** Expected seconds (for ordering). */
  weight: number;
}

/**
 * Seconds each slow file took in the last serial suite run (/work/coord/ci5.log, rounded; files not
 * listed count {@link DEFAULT_WEIGHT}). Only the order depends on it: a stale figure costs balance,
 * never a test.
 */
export const WEIGHTS: Readonly<Record<string, number>> = {
  "tests/netns/secure_test.ts": 190,
  "tests/netns/bench_runner_test.ts": 100,
  "tests/netns/memory_test.ts": 75,
  "tests/netns/package_test.ts": 75,
  "tests/netns/control_etcd_test.ts": 65,
  "tests/netns/trust_test.ts": 65,
  "tests/netns/relay_test.ts": 60,
  "tests/netns/health_test.ts": 45,
  "tests/netns/cluster_mode_test.ts": 42,
  "tests/netns/overlay_test.ts": 40,
  "tests/netns/lifecycle_test.ts": 33,
  "tests/netns/dns_test.ts": 30,
  "tests/netns/kfast_test.ts": 30,
  "tests/netns/ops_logs_test.ts": 28,
  "tests/netns/nat_test.ts": 25,
  "tests/netns/web_test.ts": 25,
  "tests/netns/ops_test.ts": 23,
  "tests/netns/cores_test.ts": 22,
  "tests/netns/kernel_interest_test.ts": 25,
  "tests/netns/kfast_tc_talk_test.ts": 60,
  "tests/unit/": 30,
};

/** Seconds assumed for a file not in {@link WEIGHTS}. */
export const DEFAULT_WEIGHT = 8;

/**
 * Files run alone: they measure time or throughput against thresholds meant for a quiet machine
 * (every benchmark's smoke run within its time limit, a 200 MiB transfer that must move onto the
 * kernel path while it runs, an undeploy that must reach every worker within 1 s), and the memory test:
 * its daemons' RSS must not include the transpiler's work of a cold cache (it ran first, 90 MB idle).
 */
export const SOLO: ReadonlySet<string> = new Set([
  "tests/netns/bench_runner_test.ts",
  "tests/netns/kfast_test.ts",
  "tests/netns/cores_test.ts",
  "tests/netns/memory_test.ts",
]);

/** The runs for these netns files plus the unit tests (`unitDir`, one run), longest first. */
export function planRuns(netnsFiles: readonly string[], unitDir = "tests/unit/"): PlannedRun[] {
  const runs: PlannedRun[] = [...netnsFiles, unitDir].map((f) => ({
    files: [f],
    solo: SOLO.has(f),
    weight: WEIGHTS[f] ?? DEFAULT_WEIGHT,
  }));
  // Parallel part longest first (the last to start are the short ones: the lanes end together).
  return runs.sort((a, b) => Number(a.solo) - Number(b.solo) || b.weight - a.weight);
}

/** Counts from one `deno test` closing line. */
export interface Summary {
  passed: number;
  failed: number;
  ignored: number;
}

/**
 * The last closing line of `deno test` in `text` ("ok | 3 passed (2 steps) | 0 failed | 1 ignored
 * (29ms)" or "FAILED | …"), or undefined when there is none (the process died or hung).
 */
export function summaryOf(text: string): Summary | undefined {
  const m = [
    ...text.matchAll(/(?:ok|FAILED) \| (\d+) passed[^|]*\| (\d+) failed[^|\n]*(?:\| (\d+) ignored)?/g),
  ]
    .pop();
  if (!m) return undefined;
  return { passed: Number(m[1]), failed: Number(m[2]), ignored: Number(m[3] ?? 0) };
}

/**
 * Adds a run's result to the totals: no closing line counts as one failure, as does a non-zero exit
 * with no failed test (a crash after the tests, a leak check).
 */
export function addRun(total: Summary, summary: Summary | undefined, code: number): Summary {
  if (!summary) return { ...total, failed: total.failed + 1 };
  const extra = code !== 0 && summary.failed === 0 ? 1 : 0;
  return {
    passed: total.passed + summary.passed,
    failed: total.failed + summary.failed + extra,
    ignored: total.ignored + summary.ignored,
  };
}

/** The suite's closing line: `N passed, M failed[, K skipped]`. */
export function closingLine(t: Summary): string {
  return `${t.passed} passed, ${t.failed} failed${t.ignored > 0 ? `, ${t.ignored} skipped` : ""}`;
}
