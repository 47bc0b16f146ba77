/**
 * The suite runner's plan (pure; `scripts/test.ts` does the I/O): which `deno test` runs the whole
 * suite is split into, in which order, and how their closing lines add up to `N passed, M failed[, K
 * skipped]`.
 *
 * Each netns test file is its own `deno test` process (its own environment: several files set
 * `Deno.env` for the daemons they start) and the unit tests are one; up to `jobs` run at once, the
 * longest first, and one more lane runs only the files that mostly wait ({@link LIGHT}, {@link takeRun}). The whole suite's type check is one more job among them (it held both lanes back
 * when it ran first, alone). Files whose assertions are about time or load on a quiet machine run afterwards,
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

/** One `deno test` process of the suite, or its type check. */
export interface PlannedRun {
  /** Files (or directories) given to `deno test` (none for the type check). */
  files: string[];
  /** The type check with every JSDoc example (`scripts/check.ts`), not a `deno test`. */
  typeCheck?: boolean;
  /** Runs alone, after the parallel part. */
  solo: boolean;
  /** Mostly waits (see {@link LIGHT}): may also run in the extra light lane. */
  light: boolean;
  /** Expected seconds (for ordering). */
  weight: number;
}

/**
 * Seconds each slow file (≥ 10 s) took in the last fresh-clone suite run (ci25, 20261207, two lanes, nothing
 * beside it; files not listed count {@link DEFAULT_WEIGHT}). A run at load ~10 took 2.2× the
 * quiet figures (median; 0.6–6.4× per file). Only the order depends on it: a stale figure costs balance,
 * never a test.
 */
export const WEIGHTS: Readonly<Record<string, number>> = {
  "tests/netns/secure_test.ts": 209,
  "tests/netns/bench_runner_test.ts": 103,
  "tests/netns/package_test.ts": 100,
  "tests/netns/memory_test.ts": 96,
  "tests/netns/relay_test.ts": 91,
  "tests/netns/secure_hs_time_test.ts": 67,
  "tests/netns/rebind_test.ts": 63,
  "tests/netns/trust_test.ts": 63,
  "tests/netns/kfast_tc_talk_test.ts": 61,
  "tests/netns/cluster_mode_test.ts": 59,
  "tests/netns/health_test.ts": 50,
  "tests/netns/lifecycle_test.ts": 46,
  "tests/netns/dns_test.ts": 43,
  "tests/netns/control_etcd_test.ts": 40,
  "tests/unit/": 73,
  "tests/netns/web_test.ts": 35,
  "tests/netns/ops_logs_test.ts": 33,
  "tests/netns/kfast_tc_mode_test.ts": 31,
  "tests/netns/kfast_test.ts": 31,
  "tests/netns/overlay_test.ts": 31,
  "tests/netns/kfast_tc_rx_test.ts": 30,
  "tests/netns/daemon_test.ts": 29,
  "tests/netns/kfast_tc_first_test.ts": 28,
  "tests/netns/ops_test.ts": 27,
  "tests/netns/nat_test.ts": 25,
  "tests/netns/uring_test.ts": 24,
  "tests/netns/kernel_interest_test.ts": 22,
  "tests/netns/control_etcd_interest_test.ts": 21,
  "tests/netns/pki_test.ts": 21,
  "tests/netns/control_mqtt_test.ts": 19,
  "tests/netns/closest_test.ts": 18,
  "tests/netns/systemd_test.ts": 18,
  "tests/netns/control_failover_test.ts": 16,
  "tests/netns/cores_test.ts": 16,
  "tests/netns/pmtu_test.ts": 16,
  "tests/netns/cluster_control_test.ts": 15,
  "tests/netns/neighbour_test.ts": 13,
  "tests/netns/control_auth_test.ts": 11,
};

/**
 * Seconds the type check (`scripts/check.ts`, every file and JSDoc example) takes: 100 s in the run at
 * load ~10, so ~45 s quiet.
 */
export const TYPE_CHECK_WEIGHT = 45;

/** Seconds assumed for a file not in {@link WEIGHTS}. */
export const DEFAULT_WEIGHT = 8;

/**
 * Files run alone: they measure time or throughput against thresholds meant for a quiet machine (a
 * 200 MiB transfer that must move onto the kernel path while it runs, an undeploy that must reach every
 * worker within 1 s). Not here: the memory test (RSS; its bounds were set at load 12–15, and it starts
 * one daemon before it measures, so none of its daemons transpiles a cold cache) and the benchmark
 * runner's smoke test (every step ends in ≤ 1/5 of its time limit, also at load 4) unless
 * {@link SOLO_WITH_HARNESS}.
 */
export const SOLO: ReadonlySet<string> = new Set([
  "tests/netns/kfast_test.ts",
  "tests/netns/cores_test.ts",
]);

/**
 * Also alone when the shared data-plane harness is found (a checkout beside `shared/`, not CI's fresh
 * clone): the benchmark runner's smoke run then includes the overlay benchmark — throughput runs in
 * the harness's fixed namespaces, which must be the only ones on the machine.
 */
export const SOLO_WITH_HARNESS: ReadonlySet<string> = new Set(["tests/netns/bench_runner_test.ts"]);

/**
 * Files that mostly wait — timeouts, back-off and expiry windows, a broker's answers — and use a small
 * share of a core while they run, with no bound on their own timing that load could break. Measured
 * alone (CPU = user + system, daemons included, over wall time; 20261207, load 2-5): ops_logs 0.23,
 * control_mqtt 0.12, control_etcd_interest 0.15, control_auth 0.34, ops 0.40, kernel_interest 0.52,
 * cluster_control 0.55, oakestra_compat 0.53, memory 0.40 (settle windows; its package build included) —
 * 0.37 of a core on average over their ~250 s. Besides the
 * `jobs` lanes that take any file, the suite runs one more lane that takes only these: the two vCPUs sat
 * a third idle with two lanes (ci25: 1233 CPU-s in 897 s) and a typical file uses 0.55-0.85 of a core, so
 * these overlap the heavy files instead of queueing behind them. Not here though they wait much: files
 * with a bound on time (relay's 15 s roaming, control_failover's 5 s, secure_hs_time's handshake
 * medians, uring's sleeps per exchange) or near saturation (≥ 0.6).
 */
export const LIGHT: ReadonlySet<string> = new Set([
  "tests/netns/ops_logs_test.ts",
  "tests/netns/control_mqtt_test.ts",
  "tests/netns/control_etcd_interest_test.ts",
  "tests/netns/control_auth_test.ts",
  "tests/netns/ops_test.ts",
  "tests/netns/kernel_interest_test.ts",
  "tests/netns/cluster_control_test.ts",
  "tests/netns/oakestra_compat_test.ts",
  // RSS, not time: its bounds were set at load 12-15 (it passed alone at load 4: idle 60.7 of 66 MB, table
  // +15.3 of 20, second worker +11.7 of 15, packaged 49.4 of 56 / 59.7 of 64).
  "tests/netns/memory_test.ts",
]);

/** What else {@link planRuns} plans for. */
export interface PlanOptions {
  /** The unit tests' directory (one run). */
  unitDir?: string;
  /** The whole suite's type check as one more run. */
  typeCheck?: boolean;
  /** The shared benchmark harness was found ({@link SOLO_WITH_HARNESS}). */
  harness?: boolean;
}

/**
 * The runs for these netns files plus the unit tests (one run) and, with `typeCheck`, the type check;
 * the parallel part longest first, then the files run alone.
 */
export function planRuns(netnsFiles: readonly string[], opts: PlanOptions = {}): PlannedRun[] {
  const unitDir = opts.unitDir ?? "tests/unit/";
  const runs: PlannedRun[] = [...netnsFiles, unitDir].map((f) => ({
    files: [f],
    // Not `--parallel` for the unit files: its test modules share one process (file descriptors, the
    // environment), and lock_test once failed beside another module (Dec 7).
    solo: SOLO.has(f) || (opts.harness === true && SOLO_WITH_HARNESS.has(f)),
    light: LIGHT.has(f),
    weight: WEIGHTS[f] ?? DEFAULT_WEIGHT,
  }));
  if (opts.typeCheck) {
    runs.push({ files: [], typeCheck: true, solo: false, light: false, weight: TYPE_CHECK_WEIGHT });
  }
  // Parallel part longest first (the last to start are the short ones: the lanes end together).
  return runs.sort((a, b) => Number(a.solo) - Number(b.solo) || b.weight - a.weight);
}

/**
 * Takes the next run for a lane from `queue` (the parallel part, longest first) and removes it: a light
 * lane only a {@link LIGHT} run, any other lane the first run that is not light, or a light one once
 * none other is left (light files wait for the light lane while heavy work remains).
 */
export function takeRun(queue: PlannedRun[], lightLane: boolean): PlannedRun | undefined {
  let i = queue.findIndex((r) => r.light === lightLane);
  if (i < 0 && !lightLane && queue.length > 0) i = 0;
  return i < 0 ? undefined : queue.splice(i, 1)[0];
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
