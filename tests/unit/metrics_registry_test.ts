/**
 * The shared metrics registry (src/metrics/registry.ts) publishes the process metrics without
 * starting prom-client's event-loop lag monitor: `collectDefaultMetrics` enabled a
 * `monitorEventLoopDelay` histogram for the process's life whose native buckets grew to 12 MiB
 * resident in the control plane under load (issue 14), for metrics we never published.
 */
import perfHooks from "node:perf_hooks";
import { assertEquals } from "../helpers/assert.ts";
import { newRegistry } from "../../src/metrics/registry.ts";

const PUBLISHED = [
  "netmanager_build_info",
  "nodejs_external_memory_bytes",
  "nodejs_heap_size_total_bytes",
  "nodejs_heap_size_used_bytes",
  "process_cpu_seconds_total",
  "process_cpu_system_seconds_total",
  "process_cpu_user_seconds_total",
  "process_heap_bytes",
  "process_max_fds",
  "process_open_fds",
  "process_resident_memory_bytes",
  "process_start_time_seconds",
  "process_virtual_memory_bytes",
];

Deno.test("metrics registry: the process metrics, and no event-loop delay histogram started", async () => {
  // Count the histograms created behind the registry's back (prom-client requires the same module).
  const hooks = perfHooks as { monitorEventLoopDelay: typeof perfHooks.monitorEventLoopDelay };
  const original = hooks.monitorEventLoopDelay;
  let started = 0;
  hooks.monitorEventLoopDelay = (...args) => {
    started++;
    return original(...args);
  };
  try {
    const reg = newRegistry("control");
    assertEquals(reg.getMetricsAsArray().map((m) => m.name).sort(), PUBLISHED);
    const text = await reg.metrics();
    for (const name of ["process_resident_memory_bytes", "nodejs_heap_size_used_bytes", "process_open_fds"]) {
      const v = Number(new RegExp(`^${name} ([0-9.e+]+)$`, "m").exec(text)?.[1]);
      assertEquals(v > 0, true, `${name}: ${v}`);
    }
    assertEquals(started, 0, "newRegistry started a monitorEventLoopDelay histogram");
  } finally {
    hooks.monitorEventLoopDelay = original;
  }
});
