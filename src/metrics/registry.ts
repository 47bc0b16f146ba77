/**
 * Shared pieces of the Prometheus metrics (exposition by npm `prom-client`): a registry with
 * `netmanager_build_info` and the process metrics, and counters fed from snapshots.
 *
 * The node's data plane keeps its own plain counters (in a Worker) and the control plane its state;
 * both are read at scrape time, so the counters here are set from snapshots in `collect()` rather
 * than incremented where things happen.
 *
 * @example
 * ```ts
 * const reg = newRegistry("node");
 * const c = snapshotCounter(reg, "netmanager_demo_total", "Demo.", [], () => [[{}, 3]]);
 * const text = await reg.metrics(); // serve with reg.contentType
 * ```
 * @module
 */
import { Counter, Gauge, Registry } from "prom-client";
// prom-client's own collectors of the process metrics we publish, one by one (see newRegistry).
import processCpuTotal from "prom-client/lib/metrics/processCpuTotal.js";
import processStartTime from "prom-client/lib/metrics/processStartTime.js";
import osMemoryHeap from "prom-client/lib/metrics/osMemoryHeap.js";
import processOpenFileDescriptors from "prom-client/lib/metrics/processOpenFileDescriptors.js";
import processMaxFileDescriptors from "prom-client/lib/metrics/processMaxFileDescriptors.js";
import heapSizeAndUsed from "prom-client/lib/metrics/heapSizeAndUsed.js";
import { VERSION } from "../version.ts";

/** A prom-client collector module: registers its metrics in the registry given. */
type Collector = (registry: Registry, config: Record<string, unknown>) => void;
const PROCESS_COLLECTORS: readonly Collector[] = [
  processCpuTotal,
  processStartTime,
  osMemoryHeap,
  processOpenFileDescriptors,
  processMaxFileDescriptors,
  heapSizeAndUsed,
];

/** Default metrics of prom-client that hold under Deno (process CPU, memory, fds, V8 heap). */
const PROCESS_METRIC = /^(process_|nodejs_heap_size_|nodejs_external_memory_bytes)/;

/**
 * A fresh registry with `netmanager_build_info{version,deno,component}` (always 1) and the process
 * metrics. The event-loop lag and active-handle collectors of prom-client read Node internals that
 * Deno only stubs (lag `NaN`, handles 0), so they are left out rather than published wrong — and not
 * started at all: `collectDefaultMetrics` starts every collector, and the event-loop lag one runs a
 * `monitorEventLoopDelay` histogram (sampling every 10 ms for the process's life) whose native
 * buckets grew to 12 MiB resident in the control plane under load (issue 14's RSS target).
 */
export function newRegistry(component: "node" | "control"): Registry {
  const reg = new Registry();
  const info = new Gauge({
    name: "netmanager_build_info",
    help: "Build information; the value is always 1.",
    labelNames: ["version", "deno", "component"] as const,
    registers: [reg],
  });
  info.set({ version: VERSION, deno: Deno.version.deno, component }, 1);
  const defaults = new Registry();
  for (const c of PROCESS_COLLECTORS) c(defaults, {});
  for (const { name } of defaults.getMetricsAsArray()) {
    const m = defaults.getSingleMetric(name);
    if (m && PROCESS_METRIC.test(name)) reg.registerMetric(m);
  }
  return reg;
}

/** A label set and a value. */
export type Sample = readonly [Readonly<Record<string, string>>, number];

/**
 * Registers a counter whose samples are read from `read()` at every scrape (values must be ≥ 0;
 * label sets not returned disappear, e.g. a forgotten peer).
 */
export function snapshotCounter(
  reg: Registry,
  name: string,
  help: string,
  labelNames: readonly string[],
  read: () => Iterable<Sample>,
): Counter<string> {
  return new Counter({
    name,
    help,
    labelNames,
    registers: [reg],
    collect() {
      this.reset();
      for (const [labels, v] of read()) {
        if (Number.isFinite(v) && v >= 0) this.inc(labels, v);
      }
    },
  });
}

/** Like {@link snapshotCounter} for a gauge (any finite value; no sample when `read()` gives none). */
export function snapshotGauge(
  reg: Registry,
  name: string,
  help: string,
  labelNames: readonly string[],
  read: () => Iterable<Sample>,
): Gauge<string> {
  return new Gauge({
    name,
    help,
    labelNames,
    registers: [reg],
    collect() {
      this.reset();
      let n = 0;
      for (const [labels, v] of read()) {
        if (Number.isFinite(v)) this.set(labels, v), n++;
      }
      // An unlabelled gauge would print 0 after reset(); nothing to report means no sample.
      if (n === 0 && labelNames.length === 0) this.remove({});
    },
  });
}
