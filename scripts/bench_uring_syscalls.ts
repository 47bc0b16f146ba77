/**
 * System calls per request/response exchange of the data plane, epoll vs io_uring (issue 10): two
 * simulated nodes (tests/helpers/cluster.ts, as root), a sockperf ping-pong at a fixed rate between
 * their instances, and `strace -c -f` attached to node 1's daemon for the run. Node 1 makes one
 * out crossing (TUN → tunnel) and one in crossing (tunnel → TUN) per exchange.
 *
 *   flock /work/coord/harness.lock deno run -A scripts/bench_uring_syscalls.ts [seconds] [msgs/s]
 *
 * Prints, per backend, the data-plane system calls per exchange and sockperf's average latency
 * (strace slows every call: compare the counts, not the latencies).
 * @module
 */
import { type QueryResult, TestCluster } from "../tests/helpers/cluster.ts";
import { cleanupAll } from "../tests/helpers/netns.ts";
import { TOOL } from "../tests/helpers/node.ts";
import { clientEntry, instanceOn } from "../tests/helpers/setup.ts";

const STRACE = !Deno.args.includes("--no-strace");
/** Also an iperf3 TCP stream (4 s, no strace): Gbit/s. */
const TCP = Deno.args.includes("--tcp");
const ARGS = Deno.args.filter((a) => !a.startsWith("--"));
const SECS = Number(ARGS[0] ?? 5);
const MPS = Number(ARGS[1] ?? 1000);
const ROUNDS = Number(ARGS[2] ?? 1);
const WEB = "app.ns.web.ns";
const CLI = "app.ns.cli.ns";
const TABLE: QueryResult[] = [clientEntry(CLI), {
  app_name: WEB,
  instance_list: [instanceOn({ n: 0, node: 2, last: 2, rr: { v4: "10.30.0.1", v6: "fdff:2000::1" } })],
}];
const CALLS = [
  "epoll_wait",
  "io_uring_enter",
  "read",
  "readv",
  "write",
  "writev",
  "sendmmsg",
  "recvmmsg",
  "sched_yield",
];

async function measure(backend: "epoll" | "uring"): Promise<Record<string, number>> {
  const c = await TestCluster.start(2, TABLE, [], () => ({ IoBackend: backend, DataPlaneWorkers: 1 }));
  try {
    await c.deploy(1, CLI, 0);
    const srv = await c.deploy(2, WEB, 0, [...TOOL, "servers", "80", "web0"]);
    const sp = new Deno.Command("nsenter", {
      args: ["--net=/proc/" + srv.c.pid + "/ns/net", "sockperf", "server", "-i", "0.0.0.0", "-p", "11111"],
      stdout: "null",
      stderr: "null",
    }).spawn();
    await new Promise((r) => setTimeout(r, 500));
    // Warm-up: peers learned, the flow in place.
    await c.containers[0].exec(["sockperf", "ping-pong", "-i", "10.30.0.2", "-p", "11111", "-t", "1"]);
    const out = `/tmp/uring-strace-${backend}-${Deno.pid}.txt`;
    const st = STRACE
      ? new Deno.Command("strace", {
        args: ["-c", "-f", "-o", out, "-p", String(c.nodes[0].node.proc!.pid)],
        stderr: "null",
      }).spawn()
      : undefined;
    await new Promise((r) => setTimeout(r, 700));
    const r = await c.containers[0].exec([
      "sockperf",
      "ping-pong",
      "-i",
      "10.30.0.2",
      "-p",
      "11111",
      "-t",
      String(SECS),
      "--mps",
      String(MPS),
    ]);
    if (st !== undefined) {
      Deno.kill(st.pid, "SIGINT");
      await st.status;
    }
    sp.kill();
    await sp.status.catch(() => {});
    const sent = Number(/SentMessages=(\d+)/.exec(r.stdout)?.[1] ?? NaN);
    const lat = /avg-latency=([\d.]+)/.exec(r.stdout)?.[1];
    const res: Record<string, number> = { exchanges: sent, avgLatencyUs: Number(lat) };
    if (TCP) {
      const ip = new Deno.Command("nsenter", {
        args: ["--net=/proc/" + srv.c.pid + "/ns/net", "iperf3", "-s", "-1", "-p", "5299"],
        stdout: "null",
        stderr: "null",
      }).spawn();
      await new Promise((r) => setTimeout(r, 300));
      const t = await c.containers[0].exec(["iperf3", "-c", "10.30.0.2", "-p", "5299", "-t", "4", "-f", "g"]);
      res.tcpGbit = Number(/([\d.]+) Gbits\/sec.*receiver/.exec(t.stdout)?.[1] ?? NaN);
      await ip.status.catch(() => {});
    }
    if (st === undefined) return res;
    const table = await Deno.readTextFile(out);
    let total = 0;
    // Rows: % time, seconds, usecs/call, calls, [errors], syscall.
    for (const line of table.split("\n")) {
      const t = line.trim().split(/\s+/);
      const name = t[t.length - 1];
      if (t.length < 5 || !CALLS.includes(name)) continue;
      const n = Number(t[3]);
      res[name] = Number((n / sent).toFixed(2));
      total += n;
    }
    res.dataPlanePerExchange = Number((total / sent).toFixed(2));
    await Deno.remove(out);
    return res;
  } finally {
    await c.stop();
    await cleanupAll();
  }
}

for (let r = 0; r < ROUNDS; r++) {
  for (const b of ["epoll", "uring"] as const) console.log(b, JSON.stringify(await measure(b)));
}
