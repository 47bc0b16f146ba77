/**
 * Benchmark (not a test) of the control plane at cluster scale (issue 14): in one run, the embedded
 * mode (one `netmanager control`, SQLite) and the etcd mode (three etcd 3.4 members, two replicas),
 * each loaded by the same generator of many MQTT clients, one per simulated node:
 * 1. every node connects to a broker (etcd mode: the replicas' brokers in turn) and asks for its
 *    subnet, all at once: allocations per second, reply latency, duplicates;
 * 2. the nodes send table queries at a steady total rate for a while (a node asks for a random
 *    one of the registered services' RR IPs): round trip p50/p99, unanswered queries;
 * 3. the control plane's CPU (user + system seconds, and % of one core) and RSS (now and peak);
 *    etcd's members apart.
 * Prints one JSON object with both modes, the ratios and the targets (etcd p99 ≤ 2×
 * embedded, ≥ 500 allocations/s, 1,000 nodes without errors).
 *
 *   deno run -A scripts/bench_scale.ts [--smoke | --quick] [--nodes N] [--rate QPS] [--seconds S]
 *                                      [--only embedded|etcd]
 *
 * Full: 1,000 nodes, 200 queries/s for 60 s per mode (needs a quiet machine). `--quick`: 1,000 nodes,
 * 10 s of queries. `--smoke`: 100 nodes, 3 s (a run that shows it works; numbers are not figures).
 * Root: the script runs itself inside a network namespace of its own (named with the runner's
 * prefix), where everything listens on loopback; the namespace, the processes it starts and their
 * temporary directories are removed at the end, on failure and on SIGINT/SIGTERM.
 */
import mqtt from "mqtt";
import { API_TOKEN_FILE_NAME } from "../src/cluster/auth.ts";
import { namePrefix, onInterrupt } from "./bench_common.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const arg = (name: string) => {
  const k = Deno.args.indexOf(name);
  return k >= 0 ? Deno.args[k + 1] : undefined;
};
const SMOKE = Deno.args.includes("--smoke");
const QUICK = Deno.args.includes("--quick");
const NODES = Number(arg("--nodes") ?? (SMOKE ? 100 : 1000));
const RATE = Number(arg("--rate") ?? (SMOKE ? 50 : 200));
const SECONDS = Number(arg("--seconds") ?? (SMOKE ? 3 : QUICK ? 10 : 60));
const SERVICES = SMOKE ? 10 : 50;
const ONLY = arg("--only");
/** A reply later than this counts as an error. */
const REPLY_LIMIT_MS = 10000;
for (const [k, v] of [["--nodes", NODES], ["--rate", RATE], ["--seconds", SECONDS]] as const) {
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${k} needs a positive number`);
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  return p;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (xs: number[], p: number) =>
  xs.length ? +xs[Math.min(xs.length - 1, Math.floor(xs.length * p))].toFixed(2) : null;

/** A started process whose stderr is kept (the end of it, for error messages). */
class Proc {
  log = "";
  readonly child: Deno.ChildProcess;
  constructor(argv: string[]) {
    const child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      stdout: "null",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    this.child = child;
    (async () => {
      for await (const t of child.stderr.pipeThrough(new TextDecoderStream())) {
        this.log = (this.log + t).slice(-20_000);
      }
    })().catch(() => {});
  }
  get pid(): number {
    return this.child.pid;
  }
  async stop(): Promise<void> {
    try {
      this.child.kill("SIGTERM");
    } catch { /* exited */ }
    const t = setTimeout(() => {
      try {
        this.child.kill("SIGKILL");
      } catch { /* exited */ }
    }, 8000);
    await this.child.status;
    clearTimeout(t);
  }
}

/** CPU seconds (user + system) and RSS / peak RSS (MiB) of a process. */
async function usage(pid: number): Promise<{ cpuS: number; rssMiB: number; peakMiB: number }> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = 100; // USER_HZ on Linux
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const kib = (k: string) => Number(new RegExp(`${k}:\\s+([0-9]+) kB`).exec(status)?.[1] ?? NaN);
  return {
    cpuS: (Number(f[11]) + Number(f[12])) / ticks,
    rssMiB: +(kib("VmRSS") / 1024).toFixed(1),
    peakMiB: +(kib("VmHWM") / 1024).toFixed(1),
  };
}

const running: Proc[] = [];
const dirs: string[] = [];
async function stopAll(): Promise<void> {
  await Promise.all(running.splice(0).map((p) => p.stop()));
  for (const d of dirs.splice(0)) await Deno.remove(d, { recursive: true }).catch(() => {});
}

function startEtcd(dir: string): { endpoints: string; members: Proc[] } {
  const ports = [0, 1, 2].map(() => ({ client: freePort(), peer: freePort() }));
  const initial = ports.map((p, i) => `b${i}=http://127.0.0.1:${p.peer}`).join(",");
  const token = `nmbench-${crypto.randomUUID().slice(0, 8)}`;
  const members = ports.map((p, i) =>
    new Proc([
      "etcd",
      "--name",
      `b${i}`,
      "--data-dir",
      `${dir}/etcd${i}`,
      "--listen-client-urls",
      `http://127.0.0.1:${p.client}`,
      "--advertise-client-urls",
      `http://127.0.0.1:${p.client}`,
      "--listen-peer-urls",
      `http://127.0.0.1:${p.peer}`,
      "--initial-advertise-peer-urls",
      `http://127.0.0.1:${p.peer}`,
      "--initial-cluster",
      initial,
      "--initial-cluster-state",
      "new",
      "--initial-cluster-token",
      token,
      "--log-level",
      "warn",
    ])
  );
  running.push(...members);
  return { endpoints: ports.map((p) => `http://127.0.0.1:${p.client}`).join(","), members };
}

async function etcdHealthy(endpoint: string, members: Proc[]): Promise<void> {
  const end = Date.now() + 30000;
  for (;;) {
    const ok = await fetch(`${endpoint}/health`).then(
      async (r) => ((await r.json()) as { health?: string }).health === "true",
      () => false,
    );
    if (ok) return;
    if (Date.now() > end) throw new Error(`etcd not healthy: ${members.map((m) => m.log).join("\n")}`);
    await sleep(200);
  }
}

interface Replica {
  proc: Proc;
  mqtt: string;
  http: string;
  token: string;
}

async function startReplica(dir: string, etcd?: { endpoints: string; prefix: string }): Promise<Replica> {
  const mqttPort = freePort();
  const httpPort = freePort();
  const proc = new Proc([
    Deno.execPath(),
    "run",
    "-A",
    `${ROOT}main.ts`,
    "control",
    "--state-dir",
    dir,
    "--mqtt-host",
    "127.0.0.1",
    "--mqtt-port",
    String(mqttPort),
    "--mqtt-allow-anonymous",
    "--http-port",
    String(httpPort),
    "--log-level",
    "warn",
    ...(etcd ? ["--etcd", etcd.endpoints, "--etcd-prefix", etcd.prefix, "--cluster-name", "bench"] : []),
  ]);
  running.push(proc);
  const http = `http://127.0.0.1:${httpPort}`;
  const end = Date.now() + 60000;
  for (;;) {
    const token = (await Deno.readTextFile(`${dir}/${API_TOKEN_FILE_NAME}`).catch(() => "")).trim();
    if (token) {
      const ok = await fetch(`${http}/api/net/nodes`, { headers: { authorization: `Bearer ${token}` } })
        .then((r) => r.body?.cancel().then(() => r.ok), () => false);
      if (ok) return { proc, mqtt: `mqtt://127.0.0.1:${mqttPort}`, http, token };
    }
    if (Date.now() > end) throw new Error(`control did not start: ${proc.log.slice(-3000)}`);
    await sleep(100);
  }
}

/** Registers `SERVICES` services with one instance each through replica `r`; returns their RR IPs. */
async function registerServices(replicas: Replica[]): Promise<string[]> {
  const ips: string[] = [];
  for (let s = 0; s < SERVICES; s++) {
    const r = replicas[s % replicas.length];
    const id = `s${s}`;
    const post = async (path: string, body: unknown) => {
      const res = await fetch(`${r.http}${path}`, {
        method: "POST",
        headers: { authorization: `Bearer ${r.token}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const text = await res.text();
      if (!res.ok) throw new Error(`${path}: ${res.status} ${text}`);
      return JSON.parse(text);
    };
    await post("/api/net/service/deploy", {
      _id: id,
      deployment_descriptor: {
        app_name: "bench",
        app_ns: "ns",
        microservice_name: id,
        microservice_namespace: "x",
      },
    });
    await post("/api/net/instance/deploy", { _id: id, instance_number: 0 });
  }
  const r = replicas[0];
  const jobs = await (await fetch(`${r.http}/api/net/services`, {
    headers: { authorization: `Bearer ${r.token}` },
  })).json() as Array<{ service_ip_list: Array<{ IpType: string; Address: string }> }>;
  for (const j of jobs) ips.push(j.service_ip_list.find((x) => x.IpType === "RR")!.Address);
  if (ips.length !== SERVICES) throw new Error(`registered ${ips.length} services, not ${SERVICES}`);
  return ips;
}

/** One simulated node: an MQTT client with its pending requests. */
interface Node {
  id: string;
  c: mqtt.MqttClient;
  subnet?: (v: string) => void;
  queries: Map<string, Array<(v: string) => void>>;
}

async function connectNodes(replicas: Replica[], tag: string): Promise<Node[]> {
  const nodes: Node[] = [];
  const one = async (i: number) => {
    const id = `${tag}${i}`;
    const c = await mqtt.connectAsync(replicas[i % replicas.length].mqtt, {
      clientId: id,
      reconnectPeriod: 0,
      connectTimeout: 30000,
      keepalive: 60,
    });
    const node: Node = { id, c, queries: new Map() };
    c.on("message", (topic, payload) => {
      const text = payload.toString();
      if (topic.endsWith("/subnetwork/result")) {
        node.subnet?.(text);
        node.subnet = undefined;
      } else if (topic.endsWith("/tablequery/result")) {
        // a result names the asked Service IP among its service IPs: match it to the request
        const q = [...node.queries.keys()].find((ip) => text.includes(`"${ip}"`));
        const waiting = q ? node.queries.get(q) : undefined;
        const resolve = waiting?.shift();
        if (waiting && !waiting.length) node.queries.delete(q!);
        resolve?.(text);
      }
    });
    await c.subscribeAsync({
      [`nodes/${id}/net/subnetwork/result`]: { qos: 1 },
      [`nodes/${id}/net/tablequery/result`]: { qos: 1 },
    });
    nodes[i] = node;
  };
  // a bounded number of connections in flight (a thousand at once only measures the SYN queue)
  let next = 0;
  await Promise.all(Array.from({ length: 50 }, async () => {
    while (next < NODES) await one(next++);
  }));
  return nodes;
}

function withLimit<T>(p: Promise<T>, what: string): Promise<T> {
  let t: ReturnType<typeof setTimeout>;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => t = setTimeout(() => reject(new Error(what)), REPLY_LIMIT_MS)),
  ]).finally(() => clearTimeout(t));
}

/** Every node asks for its subnet at once. */
async function register(nodes: Node[]) {
  const lat: number[] = [];
  const subnets: string[] = [];
  let errors = 0;
  const t0 = performance.now();
  await Promise.all(nodes.map(async (n) => {
    const got = new Promise<string>((r) => n.subnet = r);
    const a = performance.now();
    n.c.publish(`nodes/${n.id}/net/subnet`, JSON.stringify({ METHOD: "GET" }), { qos: 1 });
    try {
      const text = await withLimit(got, "no subnet");
      lat.push(performance.now() - a);
      subnets.push((JSON.parse(text) as { address: string }).address);
    } catch {
      errors++;
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  const duplicates = subnets.length - new Set(subnets).size;
  return {
    nodes: nodes.length,
    seconds: +seconds.toFixed(2),
    allocationsPerSecond: Math.round(subnets.length / seconds),
    latencyMs: { p50: pct(lat, 0.5), p99: pct(lat, 0.99), max: pct(lat, 1) },
    errors,
    duplicates,
  };
}

/** Table queries at `RATE`/s for `SECONDS`, from random nodes for random services. */
async function queries(nodes: Node[], ips: string[]) {
  const lat: number[] = [];
  let errors = 0;
  let wrong = 0;
  const pending: Promise<void>[] = [];
  const total = Math.round(RATE * SECONDS);
  const t0 = performance.now();
  for (let k = 0; k < total; k++) {
    const due = t0 + (k * 1000) / RATE;
    const wait = due - performance.now();
    if (wait > 1) await sleep(wait);
    const n = nodes[Math.floor(Math.random() * nodes.length)];
    const ip = ips[Math.floor(Math.random() * ips.length)];
    const got = new Promise<string>((r) => {
      const l = n.queries.get(ip) ?? [];
      l.push(r);
      n.queries.set(ip, l);
    });
    const a = performance.now();
    n.c.publish(`nodes/${n.id}/net/tablequery/request`, JSON.stringify({ sname: "", sip: ip }), { qos: 1 });
    pending.push(
      withLimit(got, "no answer").then((text) => {
        lat.push(performance.now() - a);
        if (!/"app_name":"bench\.ns\.s[0-9]+\.x"/.test(text)) wrong++;
      }, () => {
        errors++;
      }),
    );
  }
  const sent = (performance.now() - t0) / 1000;
  await Promise.all(pending);
  lat.sort((a, b) => a - b);
  return {
    queries: total,
    offeredPerSecond: RATE,
    achievedPerSecond: Math.round(total / sent),
    roundTripMs: { p50: pct(lat, 0.5), p99: pct(lat, 0.99), max: pct(lat, 1) },
    errors,
    wrongAnswers: wrong,
  };
}

/** One mode: start, load, measure, stop. */
async function runMode(mode: "embedded" | "etcd") {
  const dir = await Deno.makeTempDir({ prefix: `nm-bench-scale-${mode}-` });
  dirs.push(dir);
  let members: Proc[] = [];
  let replicas: Replica[];
  /** etcd's revision (one more per write transaction), or undefined in embedded mode. */
  let revision: () => Promise<number | undefined> = () => Promise.resolve(undefined);
  if (mode === "etcd") {
    const e = startEtcd(dir);
    members = e.members;
    const first = e.endpoints.split(",")[0];
    revision = async () => {
      const r = await fetch(`${first}/v3/kv/range`, {
        method: "POST",
        body: JSON.stringify({ key: "AA==" }),
      });
      return Number(((await r.json()) as { header: { revision: string } }).header.revision);
    };
    await etcdHealthy(e.endpoints.split(",")[0], members);
    const prefix = `/nmbench-${crypto.randomUUID().slice(0, 8)}/`;
    replicas = [];
    for (let i = 0; i < 2; i++) {
      replicas.push(await startReplica(`${dir}/r${i}`, { endpoints: e.endpoints, prefix }));
    }
  } else {
    replicas = [await startReplica(`${dir}/r0`)];
  }
  const ips = await registerServices(replicas);
  const nodes = await connectNodes(replicas, mode === "etcd" ? "e" : "m");
  try {
    const before = await Promise.all(replicas.map((r) => usage(r.proc.pid)));
    const etcdBefore = await Promise.all(members.map((m) => usage(m.pid)));
    const rev0 = await revision();
    const t0 = performance.now();
    const registration = await register(nodes);
    const tq = performance.now();
    const mid = await Promise.all(replicas.map((r) => usage(r.proc.pid)));
    const etcdMid = await Promise.all(members.map((m) => usage(m.pid)));
    const rev1 = await revision();
    const q = await queries(nodes, ips);
    const t1 = performance.now();
    const after = await Promise.all(replicas.map((r) => usage(r.proc.pid)));
    const etcdAfter = await Promise.all(members.map((m) => usage(m.pid)));
    const rev2 = await revision();
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    const cpu = (a: { cpuS: number }[], b: { cpuS: number }[], s: number) => ({
      seconds: +sum(b.map((x, i) => x.cpuS - a[i].cpuS)).toFixed(2),
      percentOfOneCore: +(100 * sum(b.map((x, i) => x.cpuS - a[i].cpuS)) / s).toFixed(1),
    });
    return {
      mode: mode === "etcd" ? "etcd (3 members, 2 replicas)" : "embedded (SQLite, 1 process)",
      services: SERVICES,
      registration,
      tableQueries: q,
      controlPlane: {
        replicas: replicas.length,
        cpuDuringRegistration: cpu(before, mid, (tq - t0) / 1000),
        cpuDuringQueries: cpu(mid, after, (t1 - tq) / 1000),
        rssMiB: after.map((x) => x.rssMiB),
        peakRssMiB: after.map((x) => x.peakMiB),
      },
      ...(members.length
        ? {
          etcd: {
            members: members.length,
            cpu: cpu(etcdBefore, etcdAfter, (t1 - t0) / 1000),
            cpuDuringQueries: cpu(etcdMid, etcdAfter, (t1 - tq) / 1000),
            // write transactions (etcd revisions), which cost every member a raft round and a sync
            writesDuringRegistration: rev1! - rev0!,
            writesDuringQueries: rev2! - rev1!,
            rssMiB: etcdAfter.map((x) => x.rssMiB),
          },
        }
        : {}),
    };
  } finally {
    await Promise.all(nodes.filter(Boolean).map((n) => n.c.endAsync(true).catch(() => {})));
    await stopAll();
  }
}

const INSIDE = Deno.args.includes("--inside");
if (!INSIDE) {
  // Outside: a namespace of our own (its loopback is private: no port shared with anybody), and
  // this script again inside it.
  const ns = namePrefix("s");
  const run = async (argv: string[]) => {
    const r = await new Deno.Command(argv[0], { args: argv.slice(1), stderr: "piped" }).output();
    if (!r.success) throw new Error(`${argv.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
  };
  let child: Deno.ChildProcess | undefined;
  const remove = async () => {
    try {
      child?.kill("SIGTERM");
    } catch { /* exited */ }
    await child?.status;
    await run(["ip", "netns", "del", ns]).catch(() => {});
  };
  const off = onInterrupt(remove, (SMOKE ? 320 : QUICK ? 620 : 1220) * 1000);
  let code = 1;
  try {
    await run(["ip", "netns", "add", ns]);
    await run(["ip", "-n", ns, "link", "set", "lo", "up"]);
    child = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        ns,
        Deno.execPath(),
        "run",
        "-A",
        new URL(import.meta.url).pathname,
        ...Deno.args,
        "--inside",
      ],
    }).spawn();
    code = (await child.status).code;
  } finally {
    off();
    await remove();
  }
  Deno.exit(code);
}

const stopGuard = onInterrupt(stopAll, (SMOKE ? 300 : QUICK ? 600 : 1200) * 1000);
const out: Record<string, unknown> = {
  bench: `control plane at scale: ${NODES} simulated nodes (MQTT clients) registering, then ${RATE} ` +
    `table queries/s for ${SECONDS} s; embedded vs etcd`,
  nodes: NODES,
};
try {
  type Result = Awaited<ReturnType<typeof runMode>>;
  const modes: Partial<Record<"embedded" | "etcd", Result>> = {};
  if (ONLY !== "etcd") modes.embedded = await runMode("embedded");
  if (ONLY !== "embedded") modes.etcd = await runMode("etcd");
  out.embedded = modes.embedded;
  out.etcd = modes.etcd;
  const e = modes.embedded;
  const d = modes.etcd;
  const ratio = e && d && e.tableQueries.roundTripMs.p99 && d.tableQueries.roundTripMs.p99
    ? +(d.tableQueries.roundTripMs.p99 / e.tableQueries.roundTripMs.p99).toFixed(2)
    : null;
  const clean = (r?: Result) =>
    r === undefined ||
    (r.registration.errors === 0 && r.registration.duplicates === 0 && r.tableQueries.errors === 0 &&
      r.tableQueries.wrongAnswers === 0);
  out.etcdP99ToEmbedded = ratio;
  out.targets = {
    etcdP99AtMost2xEmbedded: { target: 2, value: ratio, met: ratio === null ? null : ratio <= 2 },
    allocationsPerSecond: {
      target: 500,
      embedded: e?.registration.allocationsPerSecond ?? null,
      etcd: d?.registration.allocationsPerSecond ?? null,
      met: [e, d].every((r) => !r || r.registration.allocationsPerSecond >= 500),
    },
    nodesWithoutErrors: { target: 1000, nodes: NODES, met: NODES >= 1000 && clean(e) && clean(d) },
  };
} finally {
  stopGuard();
  await stopAll();
}
console.log(JSON.stringify(out, null, 2));
