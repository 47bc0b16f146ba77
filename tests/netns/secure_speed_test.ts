/**
 * A/B measurement (not a timed test; runs only with `NETMANAGER_SECURE_AB=1`): TCP throughput of one
 * iperf3 stream between two simulated nodes (static table, offline certificates) in FAST mode with
 * `TunnelSecurity: off` and with `require`, in one run, with the daemons' CPU per Gbit/s and their
 * JUMBO/seal counters, each daemon's busiest threads (`threads`: %core, % of the time runnable but
 * waiting for a CPU, sleeps per ms; /proc/<pid>/task) and the machine's idle share. Prints one JSON line per mode and the secure/plain ratio. On a busy machine
 * the absolute numbers move; the ratio of the same run is the figure to compare.
 *
 *   NETMANAGER_SECURE_AB=1 [NETMANAGER_SECURE_AB_SECONDS=5] [NETMANAGER_SECURE_AB_ROUNDS=1] \
 *     [NETMANAGER_SECURE_AB_MAINS=/a/main.ts,/b/main.ts] bash scripts/test.sh tests/netns/secure_speed_test.ts
 *
 * Rounds alternate plain and secure; with several entry files (another checkout's `main.ts`, run
 * as `NETMANAGER_TEST_MAIN`) every round measures the daemons of each, for a before/after on one machine.
 */
import { assert } from "../helpers/assert.ts";
import { cleanupAll, isRoot } from "../helpers/netns.ts";
import { type QueryResult, TestCluster } from "../helpers/cluster.ts";
import {
  offlinePki,
  pkiNodeConfig,
  pkiStateArgs,
  SECURE_CLI,
  SECURE_WEB,
  secureTable,
} from "../helpers/secure_pki.ts";
import { retry } from "../helpers/setup.ts";

const WEB = SECURE_WEB;
const CLI = SECURE_CLI;
const TABLE: QueryResult[] = secureTable(1);

/** utime + stime of a process (all threads), in seconds. */
async function cpuSeconds(pid: number): Promise<number> {
  const f = (await Deno.readTextFile(`/proc/${pid}/stat`)).split(") ")[1].split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

/** utime + stime per thread of a process (tid → [name, seconds, runqueue wait s, voluntary switches]). */
async function threadSeconds(pid: number): Promise<Map<number, [string, number, number, number]>> {
  const out = new Map<number, [string, number, number, number]>();
  for await (const e of Deno.readDir(`/proc/${pid}/task`)) {
    try {
      const raw = await Deno.readTextFile(`/proc/${pid}/task/${e.name}/stat`);
      const name = raw.slice(raw.indexOf("(") + 1, raw.lastIndexOf(")"));
      const f = raw.slice(raw.lastIndexOf(") ") + 2).split(" ");
      const sched = (await Deno.readTextFile(`/proc/${pid}/task/${e.name}/schedstat`)).split(" ");
      const status = await Deno.readTextFile(`/proc/${pid}/task/${e.name}/status`);
      const vol = Number(status.match(/^voluntary_ctxt_switches:\s*(\d+)/m)?.[1] ?? 0);
      out.set(Number(e.name), [name, (Number(f[11]) + Number(f[12])) / 100, Number(sched[1]) / 1e9, vol]);
    } catch { /* the thread ended */ }
  }
  return out;
}

/** Idle CPU seconds of the whole machine (all CPUs; /proc/stat idle + iowait). */
async function machineIdle(): Promise<number> {
  const f = (await Deno.readTextFile("/proc/stat")).split("\n")[0].trim().split(/\s+/);
  return (Number(f[4]) + Number(f[5])) / 100;
}

async function measure(mode: string, seconds: number): Promise<Record<string, unknown>> {
  const dir = await Deno.makeTempDir({ prefix: "nmsecab-" });
  await offlinePki(dir, 2, "ab");
  const c = await TestCluster.start(
    2,
    TABLE,
    [],
    pkiNodeConfig(dir, () => mode),
    undefined,
    pkiStateArgs(dir),
  );
  try {
    await c.deploy(1, CLI, 0);
    await c.deploy(2, WEB, 0, ["iperf3", "-s"]);
    let retransmits = 0;
    let tcp: Record<string, number> = {};
    const iperf = async (secs: number) => {
      // NETMANAGER_SECURE_AB_RATE=2G: a fixed rate (iperf3 -b), so both modes are compared at equal batching.
      const rate = Deno.env.get("NETMANAGER_SECURE_AB_RATE");
      const r = await c.containers[0].exec([
        "iperf3",
        "-c",
        "10.30.0.1",
        "-t",
        String(secs),
        "-J",
        ...(rate ? ["-b", rate] : []),
      ]);
      if (r.code !== 0) throw new Error(`iperf3: ${r.stdout.slice(-500)} ${r.stderr}`);
      const end = JSON.parse(r.stdout).end;
      retransmits = end.sum_sent.retransmits ?? 0;
      const snd = end.streams?.[0]?.sender ?? {};
      tcp = {
        maxCwndKB: Math.round((snd.max_snd_cwnd ?? 0) / 1024),
        meanRttUs: snd.mean_rtt,
        maxRttUs: snd.max_rtt,
      };
      return end.sum_received.bits_per_second / 1e9;
    };
    await retry(() => iperf(1), 20_000); // warm: handshakes, HELLOs, JIT
    const pids = c.nodes.map((n) => n.node.proc!.pid);
    // NETMANAGER_SECURE_AB_PERF=dir: a `perf record -a -g` of the timed transfer per mode (profiling).
    const perfDir = Deno.env.get("NETMANAGER_SECURE_AB_PERF");
    // NETMANAGER_SECURE_AB_STAT=1: system calls and switches of both daemons (`perf stat`), per mode.
    const syscalls = ["sendmmsg", "recvmmsg", "writev", "readv", "write", "read", "epoll_wait"];
    const stat = Deno.env.get("NETMANAGER_SECURE_AB_STAT") === "1";
    const perf = perfDir || stat
      ? new Deno.Command("perf", {
        args: perfDir
          ? [
            "record",
            "-a",
            "-g",
            "-o",
            `${perfDir}/${mode}-${Date.now()}.data`,
            "--",
            "sleep",
            String(seconds),
          ]
          : [
            "stat",
            "-x,",
            "-e",
            ["context-switches", ...syscalls.map((c) => `syscalls:sys_enter_${c}`)].join(","),
            "-p",
            pids.join(","),
            "--",
            "sleep",
            String(seconds),
          ],
        stdout: "null",
        stderr: "piped",
      }).spawn()
      : undefined;
    const idle0 = await machineIdle();
    const cpu0 = await Promise.all(pids.map(cpuSeconds));
    const thr0 = await Promise.all(pids.map(threadSeconds));
    const gbit = await iperf(seconds);
    const cpu1 = await Promise.all(pids.map(cpuSeconds));
    const thr1 = await Promise.all(pids.map(threadSeconds));
    const idle1 = await machineIdle();
    // Per node, the busiest threads: %core, % of the time runnable but waiting for a CPU, sleeps
    // (voluntary switches) per ms — so sender and receiver workers can be compared.
    const threads = thr1.map((t1, i) =>
      [...t1].map(([tid, [name, s, w, v]]) => {
        const t0 = thr0[i].get(tid);
        return [
          name,
          (100 * (s - (t0?.[1] ?? 0))) / seconds,
          (100 * (w - (t0?.[2] ?? 0))) / seconds,
          (v - (t0?.[3] ?? 0)) / (seconds * 1000),
        ] as const;
      }).filter((x) => x[1] >= 1).sort((a, b) => b[1] - a[1])
        .map((x) => `${x[0]}=${Math.round(x[1])}%/wait${Math.round(x[2])}%/sleeps${x[3].toFixed(1)}perMs`)
        .join(" ")
    );
    const perfOut = perf ? new TextDecoder().decode((await perf.output()).stderr) : "";
    const traceDir = Deno.env.get("NETMANAGER_SECURE_AB_TRACE");
    if (traceDir) {
      // NETMANAGER_SECURE_AB_TRACE=dir: `perf trace -s` (system calls per thread, errors) of each node, 2 s more.
      const tr = pids.map((pid, i) =>
        new Deno.Command("perf", {
          args: [
            "trace",
            "-s",
            "--errno-summary",
            "-o",
            `${traceDir}/${mode}-node${i + 1}.txt`,
            "-p",
            String(pid),
            "--",
            "sleep",
            "2",
          ],
          stdout: "null",
          stderr: "null",
        }).spawn()
      );
      await iperf(2);
      await Promise.all(tr.map((t) => t.status));
    }
    const gb = gbit * seconds;
    const perGbit = stat
      ? Object.fromEntries(
        perfOut.split("\n").map((l) => l.split(",")).filter((f) => f.length > 3 && f[0] !== "")
          .map((f) => [f[2].replace("syscalls:sys_enter_", ""), Math.round(Number(f[0]) / gb)]),
      )
      : undefined;
    const cpuPct = cpu1.map((v, i) => (100 * (v - cpu0[i])) / seconds);
    const st = (await c.nodes[0].node.api.getJson("/status")) as Record<string, unknown>;
    const rx = JSON.stringify(await c.nodes[1].node.api.getJson("/status"));
    return {
      mode,
      gbit: +gbit.toFixed(2),
      daemonsCpuPctCore: cpuPct.map((v) => Math.round(v)),
      pctCorePerGbit: +((cpuPct[0] + cpuPct[1]) / gbit).toFixed(1),
      retransmits,
      tcp,
      threads,
      machineIdlePct: Math.round((100 * (idle1 - idle0)) / seconds),
      ...(perGbit ? { perGbit } : {}),
      sender: JSON.stringify(st).match(/"(jumbo[A-Za-z]*|udpTx|tunRx)":\d+/g)?.join(" "),
      receiver: rx.match(/"(jumboRx|udpRx|tunTx)":\d+/g)?.join(" "),
      receiverDrops: rx.match(/"(secure_[a-z_]+|jumbo_[a-z_]+|[a-z_]*lost[a-zA-Z_]*)":\d+/g)?.join(" "),
    };
  } catch (e) {
    console.error(await c.logs());
    throw e;
  } finally {
    await c.stop();
    await cleanupAll();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** The median of `xs`. */
function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

Deno.test({
  name: "secure speed A/B: one TCP stream, FAST plain vs require (measurement, opt-in)",
  ignore: !isRoot || Deno.env.get("NETMANAGER_SECURE_AB") !== "1",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const seconds = Number(Deno.env.get("NETMANAGER_SECURE_AB_SECONDS") ?? 5);
  // Rounds alternate plain and secure (a busy machine's slow phases hit both); the median ratio counts.
  const rounds = Number(Deno.env.get("NETMANAGER_SECURE_AB_ROUNDS") ?? 1);
  // Builds to compare (their main.ts as NETMANAGER_TEST_MAIN, comma-separated; default: this
  // checkout), each measured in every round.
  const selves = (Deno.env.get("NETMANAGER_SECURE_AB_MAINS") ?? "").split(",").filter((x) => x !== "");
  const builds = selves.length > 0 ? selves : [""];
  const ratios = builds.map((): number[] => []);
  for (let r = 0; r < rounds; r++) {
    for (const [b, self] of builds.entries()) {
      if (self !== "") Deno.env.set("NETMANAGER_TEST_MAIN", self);
      const plain = await measure("off", seconds);
      const secure = await measure("require", seconds);
      const ratio = (secure.gbit as number) / (plain.gbit as number);
      ratios[b].push(ratio);
      const tag = { round: r, ...(self !== "" ? { build: self } : {}) };
      console.log(JSON.stringify({ ...tag, ...plain }));
      console.log(JSON.stringify({ ...tag, ...secure }));
      console.log(JSON.stringify({ ...tag, secureOverPlain: +ratio.toFixed(2) }));
    }
  }
  for (const [b, self] of builds.entries()) {
    const m = median(ratios[b]);
    console.log(
      JSON.stringify({
        ...(self !== "" ? { build: self } : {}),
        rounds,
        medianSecureOverPlain: +m.toFixed(2),
      }),
    );
    assert(m > 0);
  }
});
