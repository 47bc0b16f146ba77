/**
 * Relay benchmark (issue 12), in namespaces: `netmanager control --relay` on an "internet" bridge and
 * three nodes behind NAT routers (the test topology of tests/netns/relay_test.ts):
 *
 * - **punch**: n1 and n3 behind endpoint-independent NATs, cold (never talked): time from the first
 *   echo request of an instance on n1 to n3's instance (every 20 ms) until the first reply (target ≤ 1 s);
 * - **relay**: n1 and n2, n2's router dropping all UDP from the internet but the control plane's
 *   host: time until n1 decides on the relay (`status` shows the peer relayed; target ≤ 3 s) and
 *   until the first echo reply through it; then iperf3 TCP throughput and ping RTT through the relay;
 * - **direct**: n2's router stops dropping: the pair goes direct (relay freed); the same throughput
 *   and RTT again, so relay vs direct come from one run.
 *
 * Prints one JSON object. Needs root and iperf3; numbers mean little on a busy machine (the load
 * average is printed with them).
 *
 *   deno run -A scripts/bench_relay.ts [--quick]
 *
 * Run by `deno task bench` (step `relay`): namespaces carry the runner's prefix, and SIGINT/SIGTERM
 * or the script's own time limit remove everything it started.
 */
import { type SimInstance, type SimNode, World } from "../src/demo/world.ts";
import { mustRun } from "../src/sys/command.ts";
import { TOOL } from "../tests/helpers/node.ts";
import { natRouter } from "../tests/helpers/nat.ts";
import { afterInterrupt, namePrefix, onInterrupt, QUICK, SMOKE } from "./bench_common.ts";

/** The demo world with the runner's namespace prefix, so its clean-up sweep finds leftovers. */
class BenchWorld extends World {
  override readonly prefix: string = namePrefix("r");
}

const CTL = "192.168.77.254";
const SECONDS = SMOKE ? 1 : QUICK ? 3 : 10;

async function until<T>(f: () => Promise<T>, ok: (v: T) => boolean, ms: number, stepMs = 50): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f().catch(() => undefined);
    if (v !== undefined && ok(v)) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

const w = new BenchWorld();
const stopGuard = onInterrupt(() => w.destroy(), (QUICK ? 150 : 300) * 1000);

async function deploy(node: SimNode, inst: SimInstance, job: string): Promise<void> {
  const r = await node.api.post("/container/deploy", {
    pid: inst.pid,
    serviceName: job,
    instanceNumber: 0,
    portMappings: "",
  });
  if (r.status !== 200) throw new Error(r.body);
}

/** One UDP request/answer (the test tool's client: 3 s timeout); the answer's name. */
async function ask(from: SimInstance, host: string): Promise<string> {
  return (await w.execIn(from, [...TOOL, "udp-client", host, "80", "q"])).split(":")[0];
}

/** Milliseconds until the first echo reply from `host` (echo requests every 20 ms, from a cold path). */
async function firstReply(from: SimInstance, host: string, limitS: number): Promise<number> {
  const t0 = Date.now();
  await w.execIn(from, ["ping", "-n", "-q", "-c", "1", "-i", "0.02", "-w", String(limitS), host]);
  return Date.now() - t0;
}

/** iperf3 TCP from `from` to `host` (a server started once in `server`): Gbit/s. */
async function iperf(from: SimInstance, server: SimInstance, host: string): Promise<number> {
  const srv = w.execIn(server, ["iperf3", "-s", "-1", "-p", "5201"]);
  await new Promise((r) => setTimeout(r, 300));
  const out = await w.execIn(from, ["iperf3", "-c", host, "-p", "5201", "-t", String(SECONDS), "-J"]);
  await srv;
  const j = JSON.parse(out) as { end: { sum_received: { bits_per_second: number } } };
  return j.end.sum_received.bits_per_second / 1e9;
}

/** ping RTT (ms) over `n` echoes: average, max and median (the median resists a busy machine's outliers). */
async function ping(
  from: SimInstance,
  host: string,
  n = SMOKE ? 5 : QUICK ? 20 : 100,
): Promise<{ avg: number; max: number; median: number }> {
  const out = await w.execIn(from, ["ping", "-n", "-c", String(n), "-i", "0.02", host]);
  const m = /= ([\d.]+)\/([\d.]+)\/([\d.]+)/.exec(out);
  if (!m) throw new Error(`ping: ${out}`);
  const times = [...out.matchAll(/time=([\d.]+) ms/g)].map((t) => Number(t[1])).sort((x, y) => x - y);
  const median = times.length ? times[Math.floor(times.length / 2)] : Number(m[2]);
  return { avg: Number(m[2]), max: Number(m[3]), median };
}

async function relayed(n: SimNode): Promise<boolean> {
  const st = (await n.api.getJson("/status")) as { peers: Array<{ path?: string }> };
  return st.peers.some((p) => p.path === "relayed");
}

try {
  await w.control(CTL, { args: ["--relay", "--relay-address", CTL] });
  const n1 = await w.clusterNode(
    "n1",
    "10.97.0.2",
    CTL,
    undefined,
    await natRouter(w, "1", "eim", "192.168.77.101", "10.97.0", CTL),
  );
  const n2 = await w.clusterNode(
    "n2",
    "10.98.0.2",
    CTL,
    undefined,
    await natRouter(w, "2", "block", "192.168.77.102", "10.98.0", CTL),
  );
  const n3 = await w.clusterNode(
    "n3",
    "10.99.0.2",
    CTL,
    undefined,
    await natRouter(w, "3", "eim", "192.168.77.103", "10.99.0", CTL),
  );
  for (const n of [n1, n2, n3]) {
    await until(
      () => n.api.getJson("/status") as Promise<{ observedEndpoint?: string }>,
      (s) => s.observedEndpoint !== undefined,
      15000,
      100,
    );
  }
  const jobs = ["app.ns.bra.ns", "app.ns.brb.ns", "app.ns.brc.ns"];
  const iips: string[] = [];
  for (const j of jobs) {
    await w.ctl(["service", "add", j]);
    iips.push((await w.ctl(["instance", "add", j, "0"])).split(" ").at(-2)!);
  }
  const a = await w.instance("a0", [...TOOL, "servers", "80", "a0"]);
  const b = await w.instance("b0", [...TOOL, "servers", "80", "b0"]);
  const c = await w.instance("c0", [...TOOL, "servers", "80", "c0"]);
  await deploy(n1, a, jobs[0]);
  await deploy(n2, b, jobs[1]);
  await deploy(n3, c, jobs[2]);
  await new Promise((r) => setTimeout(r, 1000));
  const load = () => Deno.readTextFile("/proc/loadavg").then((s) => s.split(" ").slice(0, 3).join(" "));
  const loadBefore = await load();

  // Punch: n1 → n3, both behind endpoint-independent NAT, cold: echo requests until the first reply.
  const punchMs = await firstReply(a, iips[2], 20);
  if ((await ask(a, iips[2])) !== "c0") throw new Error("n1 → n3: no UDP answer after the punch");

  // Relay: n1 → n2 (UDP blocked at n2's router): decision (status shows it), and the first reply.
  let t0 = Date.now();
  const answer = firstReply(a, iips[1], 30);
  await until(() => relayed(n1), (v) => v, 30000, 50);
  const decideMs = Date.now() - t0;
  const relayFirstMs = await answer;
  const relayPing = await ping(a, iips[1]);
  const relayGbit = await iperf(a, b, iips[1]);

  // Direct: n2's router stops dropping UDP; the pair goes direct (relay freed).
  await mustRun("ip", ["netns", "exec", `${w.prefix}nat2`, "iptables", "-F", "FORWARD"]);
  t0 = Date.now();
  await until(() => relayed(n1), (v) => !v, 60000, 200);
  const directAfterMs = Date.now() - t0;
  await until(() => ask(a, iips[1]), (v) => v === "b0", 10000, 0);
  const directPing = await ping(a, iips[1]);
  const directGbit = await iperf(a, b, iips[1]);

  console.log(JSON.stringify(
    {
      load: { before: loadBefore, after: await load() },
      seconds: SECONDS,
      punch_ms: punchMs,
      relay_decide_ms: decideMs,
      relay_first_answer_ms: relayFirstMs,
      direct_again_ms: directAfterMs,
      relay: {
        gbit: relayGbit,
        rtt_avg_ms: relayPing.avg,
        rtt_max_ms: relayPing.max,
        rtt_median_ms: relayPing.median,
      },
      direct: {
        gbit: directGbit,
        rtt_avg_ms: directPing.avg,
        rtt_max_ms: directPing.max,
        rtt_median_ms: directPing.median,
      },
      added_rtt_ms: relayPing.avg - directPing.avg,
      added_rtt_median_ms: relayPing.median - directPing.median,
      throughput_ratio: relayGbit / directGbit,
    },
    null,
    1,
  ));
} finally {
  await afterInterrupt();
  stopGuard();
  const left = await w.destroy();
  if (left.length) console.error(`left behind: ${left.join(", ")}`);
}
