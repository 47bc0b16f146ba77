/**
 * System calls per request/response exchange of the data plane, epoll vs io_uring (issue 10): two
 * simulated nodes (tests/helpers/cluster.ts, as root), a sockperf ping-pong at a fixed rate between
 * their instances, and `strace -c -f` attached to node 1's daemon for the run. Node 1 makes one
 * out crossing (TUN → tunnel) and one in crossing (tunnel → TUN) per exchange.
 *
 *   flock /work/coord/harness.lock deno run -A scripts/bench_uring_syscalls.ts [seconds] [msgs/s] [rounds]
 *     [--no-strace] [--variants=epoll,uring,uring-spin,...] [--spin US]
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
const TCP = Deno.args.includes("--tcp") || Deno.args.includes("--tcp-strace");
/** strace -c on the TCP sender's node during the iperf3 run (it slows it: for the call mix only). */
const TCP_STRACE = Deno.args.includes("--tcp-strace");
/** Also an iperf3 UDP flood of 64-byte datagrams (2 s): received share and the nodes' drops. */
const UDP = Deno.args.includes("--udp");
const ARGS = Deno.args.filter((a, i) => !a.startsWith("--") && Deno.args[i - 1] !== "--spin");
const SECS = Number(ARGS[0] ?? 5);
const MPS = ARGS[1] ?? "1000"; // or "max": back to back (as the harness's RR)
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

/** CPU seconds (user + system, all threads) of the daemons so far. */
async function cpu(c: TestCluster): Promise<number> {
  let t = 0;
  for (const n of c.nodes) {
    const f = (await Deno.readTextFile(`/proc/${n.node.proc!.pid}/stat`)).split(") ")[1].split(" ");
    t += (Number(f[11]) + Number(f[12])) / 100; // utime, stime (fields 14, 15) in clock ticks
  }
  return t;
}

/**
 * The variants (`--variants a,b`, default epoll,uring): backend, BusyPollMicros (`--spin US`, default
 * 200) and io_uring setup flags for the spin experiments of issue 10.
 * - `uring-spin`: the ring watched in memory (TASKRUN_FLAG: deferred completion work flagged);
 * - `uring-spin-ipi`: no COOP/DEFER_TASKRUN (completions posted by an interrupt of the spinning thread);
 * - `epoll-spin`: BusyPollMicros with epoll (a call per look).
 */
const VARIANTS: Record<string, { backend: "epoll" | "uring"; spin: boolean; flags?: number }> = {
  epoll: { backend: "epoll", spin: false },
  uring: { backend: "uring", spin: false },
  "epoll-spin": { backend: "epoll", spin: true },
  "uring-spin": { backend: "uring", spin: true },
  "uring-spin-ipi": { backend: "uring", spin: true, flags: 0x80 | 0x1000 },
};
const spinAt = Deno.args.indexOf("--spin");
const SPIN_US = spinAt >= 0 ? Number(Deno.args[spinAt + 1]) : 200;
if (!Number.isInteger(SPIN_US) || SPIN_US < 1) throw new Error("--spin US: a whole number of µs ≥ 1");
const PICKED = (Deno.args.find((a) => a.startsWith("--variants="))?.slice(11) ?? "epoll,uring").split(",");

async function measure(variant: string): Promise<Record<string, number>> {
  const v = VARIANTS[variant];
  if (v === undefined) throw new Error(`variant ${variant}: one of ${Object.keys(VARIANTS)}`);
  const backend = variant;
  if (v.flags !== undefined) Deno.env.set("NETMANAGER_URING_FLAGS", String(v.flags));
  else Deno.env.delete("NETMANAGER_URING_FLAGS");
  const c = await TestCluster.start(
    2,
    TABLE,
    [],
    () => ({
      IoBackend: v.backend,
      DataPlaneWorkers: Number(Deno.env.get("NM_WORKERS") ?? 1),
      BusyPollMicros: v.spin ? SPIN_US : 0,
    }),
  );
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
    const cpu0 = await cpu(c);
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
      MPS,
    ]);
    if (st !== undefined) {
      Deno.kill(st.pid, "SIGINT");
      await st.status;
    }
    sp.kill();
    await sp.status.catch(() => {});
    const sent = Number(/SentMessages=(\d+)/.exec(r.stdout)?.[1] ?? NaN);
    const lat = /avg-latency=([\d.]+)/.exec(r.stdout)?.[1];
    const rrCpu = await cpu(c) - cpu0;
    const res: Record<string, number> = {
      exchanges: sent,
      avgLatencyUs: Number(lat),
      // Both daemons' CPU per exchange (µs; with strace attached this includes its traps).
      cpuUsPerExchange: Math.round(rrCpu * 1e6 / sent),
    };
    if (TCP) {
      const ip = new Deno.Command("nsenter", {
        args: ["--net=/proc/" + srv.c.pid + "/ns/net", "iperf3", "-s", "-1", "-p", "5299"],
        stdout: "null",
        stderr: "null",
      }).spawn();
      await new Promise((r) => setTimeout(r, 300));
      const tout = `/tmp/uring-strace-tcp-${backend}-${Deno.pid}.txt`;
      const ts = TCP_STRACE
        ? new Deno.Command("strace", {
          args: ["-c", "-f", "-o", tout, "-p", String(c.nodes[0].node.proc!.pid)],
          stderr: "null",
        }).spawn()
        : undefined;
      const c0 = await cpu(c);
      const t = await c.containers[0].exec(["iperf3", "-c", "10.30.0.2", "-p", "5299", "-t", "4", "-f", "g"]);
      const used = await cpu(c) - c0;
      res.tcpGbit = Number(/([\d.]+) Gbits\/sec.*receiver/.exec(t.stdout)?.[1] ?? NaN);
      // Both daemons' CPU (% of a core) per Gbit/s.
      res.tcpCpuPctPerGbit = Math.round(used / 4 * 100 / res.tcpGbit);
      await ip.status.catch(() => {});
      if (ts !== undefined) {
        Deno.kill(ts.pid, "SIGINT");
        await ts.status;
        console.log(
          backend,
          "TCP sender node:\n" + (await Deno.readTextFile(tout)).split("\n").slice(0, 14).join("\n"),
        );
        await Deno.remove(tout);
      }
    }
    if (UDP) {
      const ip = new Deno.Command("nsenter", {
        args: ["--net=/proc/" + srv.c.pid + "/ns/net", "iperf3", "-s", "-1", "-p", "5298"],
        stdout: "null",
        stderr: "null",
      }).spawn();
      await new Promise((r) => setTimeout(r, 300));
      const u = await c.containers[0].exec(
        ["iperf3", "-c", "10.30.0.2", "-p", "5298", "-u", "-b", "0", "-l", "64", "-t", "2", "-J"],
      );
      await ip.status.catch(() => {});
      const e = JSON.parse(u.stdout).end;
      res.udpSent = e.sum_sent.packets;
      res.udpReceived = e.sum_received.packets;
      await new Promise((r) => setTimeout(r, 1200));
      for (const [i, n] of c.nodes.entries()) {
        const st = await n.node.api.getJson("/status") as { dataPlane: { drops: Record<string, number> } };
        console.log(backend, `node ${i + 1} drops`, JSON.stringify(st.dataPlane.drops));
      }
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
  for (const b of PICKED) console.log(b, JSON.stringify(await measure(b)));
}
