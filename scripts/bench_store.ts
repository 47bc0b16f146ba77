/**
 * Benchmark (not a test) of the control plane's state store under many allocations through the
 * HTTP API (issue 14's targets: allocation p99 ≤ 5 ms, RSS growth ≤ 30 MB at 50k allocations).
 * Starts `netmanager control` (embedded SQLite store, loopback only) in a temporary state
 * directory, then registers services and instances one request at a time: every request allocates
 * addresses (a service its RR IPv4 + IPv6, an instance its Instance IPv4 + IPv6). Prints one JSON
 * object: latency p50/p99/max per allocation, allocations per second, the service's RSS before and
 * after, the database size.
 *
 *   deno run -A scripts/bench_store.ts [--quick] [--allocations N] [--etcd URL] [--control-v8-flags F]
 *                                      [--breakdown]
 *
 * `--quick`: 5,000 allocations. `--etcd URL`: the replicated store on that etcd instead (a fresh
 * key prefix per run, removed afterwards).
 */
import { API_TOKEN_FILE_NAME } from "../src/cluster/auth.ts";
import { QUICK, SMOKE } from "./bench_common.ts";
import { EtcdClient } from "../src/cluster/etcd.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const arg = (name: string) => {
  const k = Deno.args.indexOf(name);
  return k >= 0 ? Deno.args[k + 1] : undefined;
};
const TOTAL = Number(arg("--allocations") ?? (SMOKE ? 500 : QUICK ? 5000 : 50000));
const ETCD = arg("--etcd");
/**
 * `--breakdown`: the RSS growth split by kind (smaps_rollup: anonymous = V8 heap + malloc; V8's heap
 * from the service's metrics listener, which this starts), to see where the memory goes.
 */
const BREAKDOWN = Deno.args.includes("--breakdown");
const INSTANCES_PER_SERVICE = 4;
/**
 * V8 flags the release's launcher (scripts/launcher.sh) runs `netmanager control` with: the
 * control plane is measured as it runs. `--control-v8-flags ""` measures without.
 */
const CONTROL_V8_FLAGS = arg("--control-v8-flags") ?? "--max-semi-space-size=1,--optimize-for-size";

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  return p;
}

async function rssKiB(pid: number): Promise<number> {
  const m = /VmRSS:\s+([0-9]+) kB/.exec(await Deno.readTextFile(`/proc/${pid}/status`));
  return m ? Number(m[1]) : NaN;
}

/** Resident kB by kind from smaps_rollup (anonymous = V8 heap + malloc; file = code, mapped files). */
async function smaps(pid: number): Promise<Record<string, number>> {
  const t = await Deno.readTextFile(`/proc/${pid}/smaps_rollup`);
  const out: Record<string, number> = {};
  for (const k of ["Rss", "Anonymous", "Shared_Clean", "Private_Clean", "Private_Dirty"]) {
    const m = new RegExp(`^${k}:\\s+([0-9]+) kB`, "m").exec(t);
    if (m) out[k] = Number(m[1]);
  }
  return out;
}

/** V8 heap numbers of the service's metrics listener (prom-client's default metrics). */
async function heapStats(port: number): Promise<Record<string, number>> {
  const text = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text());
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^(nodejs_heap_size_\w+|nodejs_external_memory_bytes)\s+([0-9.e+]+)$/gm)) {
    out[m[1]] = Number(m[2]);
  }
  return out;
}

/** Both of the above, for `--breakdown`. */
async function memory(pid: number): Promise<Record<string, number>> {
  return { ...await smaps(pid), ...await heapStats(metricsPort) };
}

const pct = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor(xs.length * p))];

const dir = await Deno.makeTempDir({ prefix: "nm-bench-store-" });
const httpPort = freePort();
const metricsPort = freePort();
const prefix = `/nmbench-${crypto.randomUUID().slice(0, 8)}/`;
const svc = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "-A",
    ...(CONTROL_V8_FLAGS ? [`--v8-flags=${CONTROL_V8_FLAGS}`] : []),
    `${ROOT}main.ts`,
    "control",
    "--state-dir",
    dir,
    "--mqtt-host",
    "127.0.0.1",
    "--mqtt-port",
    "0",
    "--http-port",
    String(httpPort),
    "--log-level",
    "warn",
    ...(BREAKDOWN ? ["--metrics-addr", `127.0.0.1:${metricsPort}`] : []),
    ...(ETCD ? ["--etcd", ETCD, "--etcd-prefix", prefix, "--cluster-name", "bench"] : []),
  ],
  stdout: "null",
  stderr: "piped",
}).spawn();
const errText = svc.stderr.pipeThrough(new TextDecoderStream()).getReader();
let errLog = "";
(async () => {
  for (;;) {
    const r = await errText.read();
    if (r.done) return;
    errLog += r.value;
  }
})();
try {
  const base = `http://127.0.0.1:${httpPort}`;
  let token = "";
  for (let k = 0; k < 200 && !token; k++) {
    token = (await Deno.readTextFile(`${dir}/${API_TOKEN_FILE_NAME}`).catch(() => "")).trim();
    if (token) {
      const ok = await fetch(`${base}/api/net/nodes`, { headers: { authorization: `Bearer ${token}` } })
        .then((r) => r.body?.cancel().then(() => r.ok), () => false);
      if (!ok) token = "";
    }
    if (!token) await new Promise((r) => setTimeout(r, 100));
  }
  if (!token) throw new Error(`control service did not start: ${errLog}`);
  const post = async (path: string, body: unknown) => {
    const r = await fetch(`${base}${path}`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`${path}: ${r.status} ${text}`);
  };
  const warm = Math.min(500, TOTAL / 10);
  const lat: number[] = [];
  let rss0 = 0;
  let mem0: Record<string, number> = {};
  let n = 0;
  let t0 = 0;
  for (let s = 0; n < TOTAL + warm; s++) {
    const id = `b${s.toString(16).padStart(8, "0")}`;
    const calls: Array<[string, unknown]> = [[
      "/api/net/service/deploy",
      {
        _id: id,
        deployment_descriptor: {
          app_name: "bench",
          app_ns: "ns",
          microservice_name: id,
          microservice_namespace: "x",
        },
      },
    ]];
    for (let i = 0; i < INSTANCES_PER_SERVICE; i++) {
      calls.push(["/api/net/instance/deploy", { _id: id, instance_number: i }]);
    }
    for (const [path, body] of calls) {
      if (n === warm) {
        rss0 = await rssKiB(svc.pid);
        if (BREAKDOWN) mem0 = await memory(svc.pid);
        t0 = performance.now();
      }
      const a = performance.now();
      await post(path, body);
      if (n >= warm) lat.push(performance.now() - a);
      n++;
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  const rss1 = await rssKiB(svc.pid);
  const mem1 = BREAKDOWN ? await memory(svc.pid) : {};
  // Growth per kind, MiB (smaps in kB, heap metrics in bytes).
  const memoryGrowthMiB = Object.fromEntries(
    Object.keys(mem1).map((k) => [
      k,
      +((mem1[k] - (mem0[k] ?? 0)) / (k.startsWith("nodejs") ? 2 ** 20 : 1024)).toFixed(1),
    ]),
  );
  lat.sort((a, b) => a - b);
  const dbBytes = ETCD ? undefined : (await Deno.stat(`${dir}/control-state.db`)).size +
    ((await Deno.stat(`${dir}/control-state.db-wal`).catch(() => ({ size: 0 }))).size);
  console.log(JSON.stringify({
    bench: `control-plane store: ${TOTAL} allocations through the HTTP API, one at a time`,
    store: ETCD ? `etcd ${ETCD}` : "sqlite",
    controlV8Flags: CONTROL_V8_FLAGS,
    allocations: lat.length,
    latencyMs: {
      p50: +pct(lat, 0.5).toFixed(3),
      p99: +pct(lat, 0.99).toFixed(3),
      max: +lat[lat.length - 1].toFixed(3),
    },
    allocationsPerSecond: Math.round(lat.length / seconds),
    rssMiB: {
      before: +(rss0 / 1024).toFixed(1),
      after: +(rss1 / 1024).toFixed(1),
      growth: +((rss1 - rss0) / 1024).toFixed(1),
    },
    ...(BREAKDOWN ? { memoryGrowthMiB } : {}),
    ...(dbBytes !== undefined ? { databaseMiB: +(dbBytes / 2 ** 20).toFixed(2) } : {}),
    targets: { p99Ms: 5, rssGrowthMiB: 30 },
  }));
} finally {
  try {
    svc.kill("SIGTERM");
  } catch { /* exited */ }
  await svc.status;
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  if (ETCD) {
    await new EtcdClient(ETCD.split(",")).txn([], [{ del: { key: prefix, prefix: true } }]).catch((e) =>
      console.error(`bench: could not remove ${prefix}: ${e.message}`)
    );
  }
}
