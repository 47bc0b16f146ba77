/**
 * Benchmark (not a test) of the control plane's live state size (issue 14's RSS target): builds a
 * {@link ClusterState} in this process with the allocations of `scripts/bench_store.ts` (a service —
 * RR and Closest IPv4 + IPv6 — then 4 instances — Instance IPv4 + IPv6 — and so on), collects
 * garbage, and prints the heap the state keeps alive, in total and per allocation. Deterministic and
 * cheap, so it can be compared on a busy machine (unlike RSS through the HTTP API).
 *
 *   deno run -A --v8-flags=--expose-gc scripts/bench_state_heap.ts [--allocations N]
 */
import { ClusterState } from "../src/cluster/state.ts";

const k = Deno.args.indexOf("--allocations");
const TOTAL = k >= 0 ? Number(Deno.args[k + 1]) : 50000;
if (!Number.isInteger(TOTAL) || TOTAL <= 0) throw new Error("--allocations needs a positive integer");
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with --v8-flags=--expose-gc");
const heap = () => {
  for (let i = 0; i < 3; i++) gc();
  return Deno.memoryUsage().heapUsed;
};

const h0 = heap();
const state = new ClusterState();
let n = 0;
for (let s = 0; n < TOTAL; s++) {
  const id = `b${s.toString(16).padStart(8, "0")}`;
  state.deployService({
    _id: id,
    app_name: "bench",
    app_ns: "ns",
    microservice_name: id,
    microservice_namespace: "x",
  });
  n++;
  for (let i = 0; i < 4 && n < TOTAL; i++, n++) state.deployInstance(id, i);
}
state.takeChangedKeys();
const h1 = heap();
// The state must stay reachable until after the measurement.
const resolved = state.resolve("10.30.0.5")?.job_name;
console.log(JSON.stringify({
  bench: `live ClusterState after ${TOTAL} allocations (services with RR + Closest, 4 instances each)`,
  jobs: state.jobs().length,
  heapMiB: +((h1 - h0) / 2 ** 20).toFixed(2),
  bytesPerAllocation: Math.round((h1 - h0) / TOTAL),
  check: resolved,
}));
