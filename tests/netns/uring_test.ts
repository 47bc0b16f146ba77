/**
 * The io_uring data-plane backend (`IoBackend: "uring"`, issue 10) between simulated nodes: round
 * robin TCP/UDP alternation (v4 and v6), bulk TCP and a UDP burst byte-exact, the rings really in
 * use (an `anon_inode:[io_uring]` fd per Worker), and a crashed Worker's ring closed with it (the
 * daemon's fd count is back where it was after the restart).
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { type QueryResult, TestCluster } from "../helpers/cluster.ts";
import { TOOL } from "../helpers/node.ts";
import {
  clientEntry,
  firstClient,
  instanceOn,
  retry as retryFor,
  WEB_RR,
  withCluster as withClusterOf,
} from "../helpers/setup.ts";

const retry = <T>(fn: () => Promise<T>): Promise<T> => retryFor(fn, 8000, 150);
const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const WEB = "app.ns.web.ns";
const CLI = "app.ns.cli.ns";
const TABLE: QueryResult[] = [
  clientEntry(CLI),
  {
    app_name: WEB,
    instance_list: [
      instanceOn({ n: 0, node: 2, last: 2, rr: WEB_RR }),
      instanceOn({ n: 1, node: 3, last: 3, rr: WEB_RR }),
    ],
  },
];
const WORKERS = 2;

const client = firstClient;

/** The daemon's open fds: all of them, and its io_uring instances. */
async function fds(pid: number): Promise<{ all: number; rings: number }> {
  let all = 0, rings = 0;
  for await (const e of Deno.readDir(`/proc/${pid}/fd`)) {
    all++;
    try {
      if ((await Deno.readLink(`/proc/${pid}/fd/${e.name}`)) === "anon_inode:[io_uring]") rings++;
    } catch { /* closed meanwhile */ }
  }
  return { all, rings };
}

function withCluster(fn: (c: TestCluster) => Promise<void>): Promise<void> {
  return withClusterOf(3, TABLE, async (c) => {
    await c.deploy(1, CLI, 0);
    await c.deploy(2, WEB, 0, [...TOOL, "servers", "80", "web0"]);
    await c.deploy(3, WEB, 1, [...TOOL, "servers", "80", "web1"]);
    await fn(c);
  }, { cfgFor: () => ({ IoBackend: "uring", DataPlaneWorkers: WORKERS }) });
}

Deno.test({
  name: "uring: round robin alternates (TCP, UDP, v4, v6); bulk TCP and a UDP burst arrive byte-exact",
  ...opts,
}, async () => {
  Deno.env.set("NETMANAGER_TEST_CRASH_WORKER", "0"); // SIGUSR2 crashes lane 0 (the daemons inherit it)
  try {
    await withCluster(async (c) => {
      const first = await retry(() => client(c, "tcp-client", "10.30.0.1", 80, "a"));
      assertMatch(first, /^web[01]:a$/);
      const seq = [first.split(":")[0]];
      for (let i = 0; i < 5; i++) {
        seq.push((await client(c, "tcp-client", "10.30.0.1", 80, "b")).split(":")[0]);
      }
      for (let i = 1; i < seq.length; i++) assert(seq[i] !== seq[i - 1], `TCP round robin: ${seq}`);
      const udp: string[] = [];
      for (let i = 0; i < 4; i++) {
        udp.push((await client(c, "udp-client", "10.30.0.1", 80, "u")).split(":")[0]);
      }
      for (let i = 1; i < udp.length; i++) assert(udp[i] !== udp[i - 1], `UDP round robin: ${udp}`);
      const v6: string[] = [];
      for (let i = 0; i < 4; i++) {
        v6.push((await retry(() => client(c, "tcp-client", "fdff:2000::1", 80, "s"))).split(":")[0]);
      }
      for (let i = 1; i < v6.length; i++) assert(v6[i] !== v6[i - 1], `v6 round robin: ${v6}`);

      // Every Worker of every node runs on a ring (not the epoll fallback).
      for (const n of c.nodes) {
        assertEquals((await fds(n.node.proc!.pid)).rings, WORKERS, "one io_uring per data-plane Worker");
        assert(!/io_uring unavailable/.test(await n.node.log()), "no epoll fallback");
      }

      // Byte-exact: 200 back-to-back datagrams echoed intact, and 12 MiB of TCP each way verified by
      // the sink (v4 and v6), through the armed reads and the direct drains behind them.
      for (const host of ["10.30.0.2", "fdff::2"]) {
        const b = await c.containers[0].exec([...TOOL, "udp-burst", host, "80", "200"]);
        assertEquals(b.code, 0, `burst to ${host}: ${b.stdout} ${b.stderr}`);
        const r = await c.containers[0].exec([...TOOL, "tcp-bulk", host, "81", "12"]);
        assertEquals(r.code, 0, `bulk to ${host}: ${r.stdout} ${r.stderr}`);
      }
      await new Promise((r) => setTimeout(r, 1300)); // counters arrive about once a second
      const st = await c.nodes[0].node.api.getJson("/status") as {
        dataPlane: { udpTxBytes: number; drops: Record<string, number> };
      };
      assert(st.dataPlane.udpTxBytes > 24 << 20, JSON.stringify(st.dataPlane));
      for (const k of Object.keys(st.dataPlane.drops)) {
        assert(!k.startsWith("uring_"), JSON.stringify(st.dataPlane));
      }

      // A crashed Worker closes its ring; the restarted one opens one: the daemon's fds are as before.
      const pid = c.nodes[1].node.proc!.pid;
      const before = await fds(pid);
      Deno.kill(pid, "SIGUSR2");
      await new Promise((r) => setTimeout(r, 1500));
      assertEquals(await retry(() => client(c, "tcp-client", "10.30.0.2", 80, "again")), "web0:again");
      const after = await fds(pid);
      assert(
        /data-plane worker failed/.test(await c.nodes[1].node.log()),
        "node 2's worker did not crash and restart",
      );
      assertEquals(after, before, "no fd leaked by the restart");
    });
  } finally {
    Deno.env.delete("NETMANAGER_TEST_CRASH_WORKER");
  }
});

/** CPU seconds (user + system, all threads) of a process so far. */
async function cpuSeconds(pid: number): Promise<number> {
  const f = (await Deno.readTextFile(`/proc/${pid}/stat`)).split(") ")[1].split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

/** Voluntary context switches (sleeps) of all of a process's threads so far. */
async function sleeps(pid: number): Promise<number> {
  let n = 0;
  for await (const t of Deno.readDir(`/proc/${pid}/task`)) {
    try {
      const s = await Deno.readTextFile(`/proc/${pid}/task/${t.name}/status`);
      n += Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(s)?.[1] ?? 0);
    } catch { /* the thread ended */ }
  }
  return n;
}

const SPIN_TABLE: QueryResult[] = [clientEntry(CLI), {
  app_name: WEB,
  instance_list: [instanceOn({ n: 0, node: 2, last: 2, rr: WEB_RR })],
}];
const SPIN_US = Number(Deno.env.get("NM_TEST_SPIN_US") ?? 1000);

Deno.test({
  name:
    "uring spin (BusyPollMicros): request/response carried intact by a Worker watching its ring; idle, it sleeps",
  ...opts,
}, async () => {
  await withClusterOf(2, SPIN_TABLE, async (c) => {
    await c.deploy(1, CLI, 0);
    const srv = await c.deploy(2, WEB, 0, [...TOOL, "servers", "80", "web0"]);
    const inSrv = (args: string[]) =>
      new Deno.Command("nsenter", {
        args: ["--net=/proc/" + srv.c.pid + "/ns/net", ...args],
        stdout: "null",
        stderr: "null",
      }).spawn();
    const sp = inSrv(["sockperf", "server", "-i", "0.0.0.0", "-p", "11111"]);
    const mirror = inSrv([...TOOL, "tcp-mirror", "7000"]);
    try {
      assertEquals(await retry(() => client(c, "udp-client", "10.30.0.1", 80, "warm")), "web0:warm");
      const pid = c.nodes[0].node.proc!.pid;
      // UDP request/response back to back: every request answered (sockperf numbers its messages).
      const s0 = await sleeps(pid);
      const r = await c.containers[0].exec([
        "sockperf",
        "ping-pong",
        "-i",
        "10.30.0.2",
        "-p",
        "11111",
        "-t",
        "2",
      ]);
      const s1 = await sleeps(pid);
      assertEquals(r.code, 0, r.stderr);
      const sent = Number(/SentMessages=(\d+)/.exec(r.stdout)?.[1] ?? NaN);
      const got = Number(/ReceivedMessages=(\d+)/.exec(r.stdout)?.[1] ?? NaN);
      assert(sent > 200, `exchanges: ${r.stdout}`); // (813 in a run at load 4: 1.1 ms each)
      assert(got >= sent - 2, `answered ${got} of ${sent}`);
      // TCP request/response byte-exact (random messages, every 4th 1400 bytes), back to back.
      const t = await retry(async () => {
        const x = await c.containers[0].exec([...TOOL, "tcp-talk", "10.30.0.2", "7000", "2000", "0", "1400"]);
        if (x.code !== 0) throw new Error(x.stderr);
        return x.stdout.trim();
      });
      assertEquals(t, "talked 2000");
      // The Worker watched its ring instead of sleeping per crossing: node 1 makes two crossings per
      // exchange, each a sleep (a wake-up) without spinning (2.06 per exchange; 0.25-0.56 spinning).
      const perExchange = (s1 - s0) / sent;
      console.log(`spin ${SPIN_US} µs: ${sent} exchanges, ${perExchange.toFixed(2)} sleeps per exchange`);
      if (SPIN_US > 0) {
        assert(perExchange < 1.2, `${perExchange.toFixed(2)} sleeps per exchange: not spinning`);
      }
      // Idle: back to sleeping in io_uring_enter (~0 CPU; a spinning Worker takes half a core).
      await new Promise((r) => setTimeout(r, 500));
      const c0 = await cpuSeconds(pid), w0 = performance.now();
      await new Promise((r) => setTimeout(r, 2000));
      const idle = (await cpuSeconds(pid) - c0) / ((performance.now() - w0) / 1000);
      console.log(`idle: ${(idle * 100).toFixed(1)} % of a core`);
      assert(idle < 0.08, `idle daemon at ${(idle * 100).toFixed(1)} % of a core`);
    } finally {
      for (const p of [sp, mirror]) {
        try {
          p.kill();
        } catch { /* ended */ }
        await p.status.catch(() => {});
      }
    }
  }, { cfgFor: () => ({ IoBackend: "uring", DataPlaneWorkers: 1, BusyPollMicros: SPIN_US }) });
});
