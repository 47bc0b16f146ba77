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
