/**
 * The JSON that `deno task bench` (scripts/bench.ts) writes, as zod schemas: the run header
 * (date, commit, machine, whether it was quiet) and one record per benchmark step with its status
 * and headline figures. The runner validates its own output with it before writing; tests and
 * anyone reading an old run can do the same.
 *
 * @example
 * ```ts
 * import { BenchRun } from "./bench_schema.ts";
 * const text = '{"schema":"netmanager-bench/1"}';
 * const r = BenchRun.safeParse(JSON.parse(text));
 * if (!r.success) console.error(r.error.message);
 * ```
 */
import { z } from "zod";

const num = z.number().finite();

/** One headline number of a benchmark, with its range over repetitions and a ratio where one applies. */
export const Figure = z.object({
  /** e.g. `nm-fast tcp1` or `deploy p50`. */
  name: z.string().min(1),
  value: num.nullable(),
  unit: z.string(),
  /** Smallest and largest sample over the repetitions (absent when the benchmark gives none). */
  min: num.nullable().optional(),
  max: num.nullable().optional(),
  /** `value` divided by the same figure of `ratioTo` (e.g. kernel VXLAN). */
  ratio: num.nullable().optional(),
  ratioTo: z.string().optional(),
});
/** See {@link Figure}. */
export type Figure = z.infer<typeof Figure>;

/**
 * What became of a step: `ok`; `failed` (non-zero exit or malformed output); `timeout` (killed at
 * its time limit); `skipped` (not applicable here: no root, no harness, or left out by a flag);
 * `interrupted` (SIGINT/SIGTERM to the runner while it ran); `not-run` (after an interruption).
 */
export const StepStatus = z.enum(["ok", "failed", "timeout", "skipped", "interrupted", "not-run"]);
/** See {@link StepStatus}. */
export type StepStatus = z.infer<typeof StepStatus>;

/** One benchmark step of a run. */
export const StepResult = z.object({
  name: z.string().min(1),
  kind: z.enum(["dataplane", "control", "deploy", "micro", "injected"]),
  description: z.string(),
  status: StepStatus,
  /** Why it failed or was skipped. */
  reason: z.string().optional(),
  command: z.array(z.string()),
  timeoutMs: num,
  startedAt: z.string().nullable(),
  durationMs: num.nullable(),
  exitCode: z.number().int().nullable(),
  /** Machine CPU busy % (all cores, 1 s) just before the step. */
  busyBeforePct: num.nullable(),
  figures: z.array(Figure),
  /** The benchmark's own JSON output, as it printed it. */
  output: z.unknown().optional(),
  /** Its stderr, in this file next to the JSON. */
  log: z.string().nullable(),
});
/** See {@link StepResult}. */
export type StepResult = z.infer<typeof StepResult>;

/** A look at how busy the machine is. */
export const LoadSample = z.object({
  at: z.string(),
  loadAvg1: num,
  /** CPU busy % (user+nice+system+irq+softirq+steal) of all cores over the sample. */
  busyPct: num,
  /** Time the hypervisor gave to others (steal) in % of all cores over the sample. */
  stealPct: num,
});
/** See {@link LoadSample}. */
export type LoadSample = z.infer<typeof LoadSample>;

/** The whole run. */
export const BenchRun = z.object({
  schema: z.literal("netmanager-bench/1"),
  /** Run id: UTC start time and commit, e.g. `20261205T2101Z-1f78d3d`. */
  run: z.string().min(1),
  mode: z.enum(["full", "quick", "smoke"]),
  startedAt: z.string(),
  finishedAt: z.string(),
  commit: z.string(),
  dirty: z.boolean(),
  machine: z.object({
    cpuModel: z.string(),
    cores: z.number().int().positive(),
    kernel: z.string(),
    memTotalMiB: num.nullable(),
    deno: z.string(),
  }),
  quiet: z.object({
    before: LoadSample,
    after: LoadSample.nullable(),
    /** True when both samples were under the thresholds in `rule`. */
    quiet: z.boolean(),
    rule: z.string(),
  }),
  harness: z.string().nullable(),
  interrupted: z.boolean(),
  steps: z.array(StepResult),
  summary: z.object({
    ok: z.number().int(),
    failed: z.number().int(),
    skipped: z.number().int(),
  }),
});
/** See {@link BenchRun}. */
export type BenchRun = z.infer<typeof BenchRun>;
