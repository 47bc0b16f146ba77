/**
 * Benchmark (not a test) of the embedded store's writes as the event loop sees them (issue 14): in
 * one process, `--allocations` service registrations (each allocates an RR IPv4 + IPv6 and a
 * Closest pair) through `SqliteStore.change`, first one at a time, then `--concurrency` at once,
 * while a probe timer measures how late the event loop runs it (the delay an MQTT answer or HTTP
 * request would see). Prints one JSON object: change latency p50/p99/max, changes per second,
 * event-loop delay p50/p99/max, RSS growth, for each phase.
 *
 *   deno run -A scripts/bench_store_loop.ts [--allocations N] [--concurrency C] [--sync full|normal]
 *                                           [--dir D]
 *
 * `--dir`: where the database goes (default: a temporary directory, removed afterwards): put it on
 * the disk whose syncs you want to measure.
 */
import { SqliteStore } from "../src/cluster/store.ts";

const arg = (name: string) => {
  const k = Deno.args.indexOf(name);
  return k >= 0 ? Deno.args[k + 1] : undefined;
};
const TOTAL = Number(arg("--allocations") ?? 5000);
const CONCURRENCY = Number(arg("--concurrency") ?? 32);
const SYNC = arg("--sync") ?? "full";
if (!Number.isInteger(TOTAL) || TOTAL <= 0) throw new Error("--allocations needs a positive integer");
if (!Number.isInteger(CONCURRENCY) || CONCURRENCY <= 0) {
  throw new Error("--concurrency needs a positive integer");
}
if (SYNC !== "full" && SYNC !== "normal") throw new Error("--sync is full or normal");

const pct = (xs: number[], p: number) =>
  xs.length ? +xs[Math.min(xs.length - 1, Math.floor(xs.length * p))].toFixed(2) : null;
const stats = (xs: number[]) => {
  xs.sort((a, b) => a - b);
  return { p50: pct(xs, 0.5), p99: pct(xs, 0.99), max: pct(xs, 1) };
};
const rssMiB = () => +(Deno.memoryUsage().rss / 2 ** 20).toFixed(1);

const given = arg("--dir");
const dir = given ?? await Deno.makeTempDir({ prefix: "nm-bench-store-loop-" });
const store = await SqliteStore.open(`${dir}/state`, { synchronous: SYNC });
let n = 0;
const one = async (lat: number[]) => {
  const i = n++;
  const a = performance.now();
  await store.change((s) =>
    s.deployService({
      _id: `b${i}`,
      app_name: "bench",
      app_ns: "ns",
      microservice_name: `s${i}`,
      microservice_namespace: "x",
    })
  );
  lat.push(performance.now() - a);
};

/** Runs `count` changes, `parallel` at a time, with the event-loop probe running. */
async function phase(count: number, parallel: number) {
  const lat: number[] = [];
  const lag: number[] = [];
  let running = true;
  const probe = (async () => {
    while (running) {
      const t = performance.now();
      await new Promise((r) => setTimeout(r, 1));
      lag.push(Math.max(0, performance.now() - t - 1));
    }
  })();
  const rss0 = rssMiB();
  const t0 = performance.now();
  const end = n + count;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (n < end) await one(lat);
  }));
  const seconds = (performance.now() - t0) / 1000;
  running = false;
  await probe;
  return {
    changes: count,
    concurrency: parallel,
    perSecond: Math.round(count / seconds),
    changeMs: stats(lat),
    eventLoopDelayMs: stats(lag),
    rssGrowthMiB: +(rssMiB() - rss0).toFixed(1),
  };
}

try {
  const serial = await phase(TOTAL, 1);
  const concurrent = await phase(TOTAL, CONCURRENCY);
  console.log(JSON.stringify(
    {
      bench: `embedded store, in-process: ${TOTAL} service registrations one at a time, then ${TOTAL} ` +
        `with ${CONCURRENCY} at once; --sync ${SYNC}`,
      serial,
      concurrent,
    },
    null,
    2,
  ));
} finally {
  await store.close();
  if (given === undefined) await Deno.remove(dir, { recursive: true });
}
