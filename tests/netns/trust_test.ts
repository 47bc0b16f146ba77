/**
 * Trust boundaries of the data plane, with real daemons in namespaces (static-table mode):
 * - a datagram from a known peer's underlay address whose inner destination is the node's bridge
 *   address or its subnet broadcast reaches a UDP service on the node when the protection is off
 *   (`NETMANAGER_TEST_INGRESS_ANY=1`, the old behaviour) and is dropped and counted with it on;
 * - a flood from an unknown underlay source with ~100k distinct inner sources (IPv4 and IPv6)
 *   keeps the daemon's RSS within +10 MB;
 * - made-up JUMBO message ids from the real peer's address do not make the node refuse that
 *   peer's JUMBO messages, and real JUMBO traffic keeps flowing.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { isRoot, sh } from "../helpers/netns.ts";
import { nodeSubnet, type QueryResult, tableInstance, TestCluster } from "../helpers/cluster.ts";
import { TOOL } from "../helpers/node.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const WEB = "app.ns.web.ns";
const CLI = "app.ns.cli.ns";
const n1 = nodeSubnet(1);
const n2 = nodeSubnet(2);
const SPOOF = [Deno.execPath(), "run", "-A", new URL("../helpers/spoof.ts", import.meta.url).pathname];

const CLI_ENTRY: QueryResult = {
  app_name: CLI,
  instance_list: [tableInstance({
    n: 0,
    instanceIp: "10.30.0.10",
    instanceIp6: "fdff::10",
    nsip: n1.first4(2),
    nsip6: n1.first6(2),
    hostIp: "192.168.77.1",
  })],
};
const WEB_ENTRY: QueryResult = {
  app_name: WEB,
  instance_list: [tableInstance({
    n: 0,
    instanceIp: "10.30.0.2",
    instanceIp6: "fdff::2",
    nsip: n2.first4(2),
    nsip6: n2.first6(2),
    hostIp: "192.168.77.2",
    rr: { v4: "10.30.0.1", v6: "fdff:2000::1" },
  })],
};

/** Runs `argv` in namespace `ns` (network only) and returns its stdout. */
async function inNet(ns: string, argv: string[]): Promise<string> {
  const o = await new Deno.Command("nsenter", {
    args: [`--net=/run/netns/${ns}`, ...argv],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!o.success) throw new Error(`${argv.join(" ")}: ${new TextDecoder().decode(o.stderr)}`);
  return new TextDecoder().decode(o.stdout);
}

/** The daemon's drop counters (`/status`). */
async function drops(c: TestCluster, i: number): Promise<Record<string, number>> {
  const s = await c.nodes[i - 1].node.api.getJson("/status") as {
    dataPlane?: { drops?: Record<string, number> };
  };
  return s.dataPlane?.drops ?? {};
}

const LISTENER = `
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(("0.0.0.0", 7777))
s.settimeout(3)
print("ready", flush=True)
while True:
    try:
        d, a = s.recvfrom(2000)
    except socket.timeout:
        break
    print(d.decode(), flush=True)
`;

/** Spoofs (from node 2's address) datagrams to node 1's bridge and broadcast; returns what a UDP service on node 1 got. */
async function spoofToNode(c: TestCluster): Promise<string[]> {
  const ns1 = c.nodes[0].node.ns;
  const listener = new Deno.Command("nsenter", {
    args: [`--net=/run/netns/${ns1}`, "python3", "-u", "-c", LISTENER],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const out = listener.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("ready")) {
    const r = await out.read();
    if (r.done) break;
    text += r.value;
  }
  const ns2 = c.nodes[1].node.ns;
  for (const [dst, what] of [[n1.first4(1), "bridge"], ["10.18.0.127", "broadcast"]]) {
    await inNet(ns2, [...SPOOF, "inner", "192.168.77.1", "50103", "10.30.0.2", dst, "7777", what]);
  }
  for (;;) {
    const r = await out.read();
    if (r.done) break;
    text += r.value;
  }
  await listener.status;
  return text.split("\n").filter((l) => l !== "" && l !== "ready");
}

for (const protect of [false, true]) {
  Deno.test({
    name: `trust: a spoofed datagram to the bridge or the subnet broadcast ${
      protect ? "is dropped" : "reaches the node without the protection"
    }`,
    ...opts,
    fn: async () => {
      if (protect) Deno.env.delete("NETMANAGER_TEST_INGRESS_ANY");
      else Deno.env.set("NETMANAGER_TEST_INGRESS_ANY", "1");
      const c = await TestCluster.start(2, [CLI_ENTRY, WEB_ENTRY]);
      Deno.env.delete("NETMANAGER_TEST_INGRESS_ANY");
      try {
        const got = await spoofToNode(c);
        if (!protect) {
          assertEquals(got.sort(), ["bridge", "broadcast"], await c.logs());
          return;
        }
        assertEquals(got, []);
        const d = await waitDrops(c, 1, (d) => (d.to_bridge ?? 0) >= 1 && (d.to_broadcast ?? 0) >= 1);
        assertEquals([d.to_bridge, d.to_broadcast], [1, 1]);
        const metrics = await c.nodes[0].node.api.request("GET", "/metrics");
        assert(metrics.body.includes('netmanager_drops_total{reason="to_bridge"} 1'), metrics.body);
      } finally {
        await c.stop();
      }
    },
  });
}

async function waitDrops(
  c: TestCluster,
  i: number,
  ok: (d: Record<string, number>) => boolean,
): Promise<Record<string, number>> {
  let d: Record<string, number> = {};
  for (let k = 0; k < 40; k++) {
    d = await drops(c, i);
    if (ok(d)) return d;
    await new Promise((r) => setTimeout(r, 100));
  }
  return d;
}

/** VmRSS of process `pid` in KB. */
async function rssKb(pid: number): Promise<number> {
  const s = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(s)?.[1] ?? NaN);
}

Deno.test({
  name:
    "trust: a stranger flood (100k IPv4 and IPv6 inner sources, 64 underlay sources) keeps RSS within +10 MB",
  ...opts,
  fn: async () => {
    // Node 2 is no peer of node 1 (its table names no instance there): everything it sends is a stranger's.
    const c = await TestCluster.start(2, [CLI_ENTRY]);
    try {
      const ns2 = c.nodes[1].node.ns;
      const binds: string[] = [];
      for (let k = 100; k < 164; k++) {
        await sh(["ip", "-n", ns2, "addr", "add", `192.168.77.${k}/24`, "dev", c.nodes[1].ifname]);
        binds.push(`192.168.77.${k}`);
      }
      const pid = c.nodes[0].node.proc!.pid;
      const flood = (s: number, keys: number) =>
        inNet(ns2, [...SPOOF, "flood", "192.168.77.1", "50103", String(s), String(keys), binds.join(",")]);
      await flood(2, 2000); // warm up: the stranger path is compiled, its maps have grown once
      await new Promise((r) => setTimeout(r, 7000)); // parked state expires (6 s)
      const base = await rssKb(pid);
      let peak = base;
      let stop = false;
      const sampler = (async () => {
        while (!stop) {
          peak = Math.max(peak, await rssKb(pid));
          await new Promise((r) => setTimeout(r, 200));
        }
      })();
      const SECONDS = Number(Deno.env.get("NETMANAGER_FLOOD_SECONDS") ?? 15);
      const report = JSON.parse(await flood(SECONDS, 50_000)) as { sent: number; pps: number };
      await new Promise((r) => setTimeout(r, 1000));
      stop = true;
      await sampler;
      const d = await drops(c, 1);
      console.log(
        `stranger flood: ${report.sent} datagrams (${report.pps}/s) over ${SECONDS} s, RSS ${
          (base / 1024).toFixed(1)
        } MB → peak ${(peak / 1024).toFixed(1)} MB; drops ${JSON.stringify(d)}`,
      );
      assert(report.sent >= 100_000, `flood too slow to cover the keys: ${report.sent}`);
      assert((d.stranger_limit ?? 0) > report.sent / 2, JSON.stringify(d));
      assert(peak - base <= 10 * 1024, `RSS grew ${((peak - base) / 1024).toFixed(1)} MB`);
      // The node still works: its table and API answer.
      assertEquals((await c.nodes[0].node.api.getJson("/table") as unknown[]).length, 1);
    } finally {
      await c.stop();
    }
  },
});

interface PeerStat {
  endpoint: string;
  jumbo: boolean;
  jumboRefusals: number;
}

async function peer(c: TestCluster, i: number, endpoint: string): Promise<PeerStat | undefined> {
  const s = await c.nodes[i - 1].node.api.getJson("/status") as {
    dataPlane?: { peers?: PeerStat[]; jumboTx?: number; jumboRx?: number };
  };
  return s.dataPlane?.peers?.find((p) => p.endpoint === endpoint);
}

async function jumboCount(c: TestCluster, i: number, key: "jumboTx" | "jumboRx"): Promise<number> {
  const s = await c.nodes[i - 1].node.api.getJson("/status") as { dataPlane?: Record<string, number> };
  return s.dataPlane?.[key] ?? 0;
}

Deno.test({
  name: "trust: made-up JUMBO message ids from the peer's address do not turn JUMBO off towards it",
  ...opts,
  fn: async () => {
    const c = await TestCluster.start(2, [CLI_ENTRY, WEB_ENTRY]);
    try {
      const cli = await c.deploy(1, CLI, 0);
      await c.deploy(2, WEB, 0, [...TOOL, "servers", "80", "web"]);
      const bulk = async () => {
        const r = await cli.c.exec([...TOOL, "tcp-bulk", "10.30.0.1", "81", "64"]);
        assertEquals(r.code, 0, r.stderr + (await c.logs()));
      };
      // JUMBO in use: node 1 sends TCP super-packets to node 2 as JUMBO messages.
      for (let k = 0; k < 20 && (await jumboCount(c, 2, "jumboRx")) === 0; k++) await bulk();
      assert((await jumboCount(c, 2, "jumboRx")) > 0, "JUMBO messages reached node 2");
      // The attacker (node 1's address, another port) sends JUMBO messages whose ids jump by 64: a
      // consecutive sender that lost 63 of every 64 messages — without the window this refused
      // node 1's JUMBO for 60 s at once.
      const ns1 = c.nodes[0].node.ns;
      for (let round = 0; round < 3; round++) {
        await inNet(ns1, [...SPOOF, "jumbo", "192.168.77.2", "50103", "200", "64"]);
        await bulk();
      }
      const p = await peer(c, 2, "192.168.77.1:50103");
      assert(p, "node 2 knows node 1");
      assertEquals(p.jumboRefusals, 0, JSON.stringify(p));
      assert((await peer(c, 1, "192.168.77.2:50103"))?.jumbo, "node 2 still offers JUMBO to node 1");
      const before = await jumboCount(c, 2, "jumboRx");
      await bulk();
      assert((await jumboCount(c, 2, "jumboRx")) > before, "real JUMBO traffic keeps flowing");
    } finally {
      await c.stop();
    }
  },
});
