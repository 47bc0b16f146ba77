/**
 * No blackholes on the bridge when instances come and go (two simulated nodes, static tables):
 * the bridge keeps its fixed MAC when the port with the lowest MAC leaves, so a neighbour keeps
 * reaching a remote ServiceIP; and an address handed to a new instance right after its previous
 * holder left is reachable at once from the node and through the overlay from another node.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { inNs, isRoot } from "../helpers/netns.ts";
import { nodeSubnet, type QueryResult, type TestCluster } from "../helpers/cluster.ts";
import { clientEntry, eventually, instanceOn, webEntry, withCluster } from "../helpers/setup.ts";
import { TestContainer, TOOL } from "../helpers/node.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const CLI = "app.ns.cli.ns";
const WEB = "app.ns.web.ns";
const SRV = "app.ns.srv.ns";
const n1 = nodeSubnet(1);

const TABLE: QueryResult[] = [
  clientEntry(CLI),
  webEntry(WEB),
  {
    app_name: SRV,
    instance_list: [instanceOn({ n: 0, node: 1, last: 20, slot: 3 })],
  },
];

const withTwoNodes = (fn: (c: TestCluster) => Promise<void>) => withCluster(2, TABLE, fn);

async function bridgeMac(ns: string): Promise<string> {
  const l = JSON.parse(await inNs(ns, ["ip", "-j", "link", "show", "goProxyBridge"])) as Array<
    { address: string }
  >;
  return l[0].address;
}

/** Largest gap between consecutive ping replies (`ping -D` timestamps), start and end included. */
function maxGap(out: string, startS: number, endS: number): number {
  const ts = [...out.matchAll(/^\[(\d+\.\d+)\] .*icmp_seq=\d+/gm)].map((m) => Number(m[1]));
  let gap = 0;
  let prev = startS;
  for (const t of [...ts, endS]) {
    gap = Math.max(gap, t - prev);
    prev = t;
  }
  return gap;
}

Deno.test({
  name:
    "bridge: fixed MAC survives removing the lowest-MAC port; a neighbour reaches a remote ServiceIP without a gap",
  ...opts,
}, async () => {
  await withTwoNodes(async (c) => {
    const node1 = c.nodes[0].node;
    const cli = await c.deploy(1, CLI, 0);
    assertEquals(cli.ipv4, n1.first4(2));
    await c.deploy(2, WEB, 0, [...TOOL, "servers", "80", "web0"]);
    await c.deploy(1, SRV, 0);
    // Make the victim's port the one with the lowest MAC on the bridge.
    const recs = (await node1.api.getJson("/instances")) as Array<{ serviceName: string; veth: string }>;
    const veth = recs.find((r) => r.serviceName === SRV)!.veth;
    await inNs(node1.ns, ["ip", "link", "set", "dev", veth, "address", "00:00:00:00:00:01"]);
    const mac0 = await bridgeMac(node1.ns);
    assert(mac0 !== "00:00:00:00:00:01", "the bridge does not take its ports' MAC");
    assertEquals(parseInt(mac0.slice(0, 2), 16) & 3, 2, "locally administered unicast");
    // The client talks to the remote ServiceIP before, during and after the undeploy.
    // The client resolves its gateway now, so it caches the bridge's current MAC.
    await cli.c.exec(["ip", "neigh", "flush", "all"]);
    await eventually(
      async () => (await cli.c.exec(["ping", "-c", "1", "-W", "1", "10.30.0.1"])).code === 0,
      Boolean,
      8000,
      "the RR ServiceIP answers",
    );
    assertMatch(
      (await cli.c.exec(["ip", "neigh", "show", "10.18.0.65"])).stdout,
      new RegExp(`lladdr ${mac0}`),
    );
    const start = Date.now() / 1000;
    const ping = cli.c.exec(["ping", "-D", "-i", "0.1", "-W", "1", "-w", "5", "10.30.0.1"]);
    await new Promise((r) => setTimeout(r, 1000));
    const u = await node1.api.post("/container/undeploy", { serviceName: SRV, instanceNumber: 0 });
    assertEquals(u.status, 200);
    await node1.settled();
    assertEquals(await bridgeMac(node1.ns), mac0, "bridge MAC unchanged");
    const out = (await ping).stdout;
    const gap = maxGap(out, start, Date.now() / 1000);
    assert(gap < 1, `gap of ${gap.toFixed(2)} s in the replies:\n${out}`);
    // Stable across a restart: the same MAC again.
    await node1.signal("SIGTERM");
    await node1.startDaemon();
    assertEquals(await bridgeMac(node1.ns), mac0);
  });
});

Deno.test({
  name:
    "neighbours: an address reused at once answers 20 of 20 requests from the node, a neighbour (v4, v6) and a remote node",
  ...opts,
}, async () => {
  await withTwoNodes(async (c) => {
    const node1 = c.nodes[0].node;
    // A neighbour on the same bridge: it learns the address's MAC itself, so only the new
    // instance's announcement (ARP announcement, unsolicited NA) can correct its entry.
    const peer = await c.deploy(1, CLI, 0);
    // From the remote node through the instance's port mapping: node 1 forwards to the address
    // with its own neighbour entry, as it does for overlay traffic. (The overlay path itself is
    // not used here: in static-table mode an undeploy drops the local table entry for good.)
    const node2 = c.nodes[1].node;
    const a = await c.deploy(1, SRV, 0, [...TOOL, "http-server", "80", "A"], "8080:80");
    assertEquals(a.ipv4, n1.first4(3));
    const answered = async (from: "node" | "remote" | "peer", n: number, dst: string, name: string) => {
      const loop = `ok=0; for i in $(seq ${n}); do curl -g -s -m 1 http://${dst}/ | grep -q '^${name}$' && ` +
        `ok=$((ok+1)); done; echo $ok`;
      const out = from === "node"
        ? await inNs(node1.ns, ["sh", "-c", loop])
        : from === "remote"
        ? await inNs(node2.ns, ["sh", "-c", loop])
        : (await peer.c.exec(["sh", "-c", loop])).stdout;
      return Number(out.trim());
    };
    // Both learn A's MAC (the node's neighbour entry for the address).
    await eventually(
      async () => (await answered("node", 1, `${a.ipv4}:80`, "A")) === 1,
      Boolean,
      8000,
      "the node reaches A",
    );
    await eventually(
      async () => (await answered("remote", 1, `${c.nodes[0].ip}:8080`, "A")) === 1,
      Boolean,
      8000,
      "A through its port mapping",
    );
    await eventually(
      async () => (await answered("peer", 1, `${a.ipv4}:80`, "A")) === 1,
      Boolean,
      8000,
      "a neighbour reaches A",
    );
    await eventually(
      async () => (await answered("peer", 1, `[${a.ipv6}]:80`, "A")) === 1,
      Boolean,
      8000,
      "a neighbour reaches A (IPv6)",
    );
    assertMatch(await inNs(node1.ns, ["ip", "neigh", "show", a.ipv4]), /lladdr/);
    assertMatch((await peer.c.exec(["ip", "neigh", "show", a.ipv4])).stdout, /lladdr/);
    // A leaves; B gets the same address at once.
    const u = await node1.api.post("/container/undeploy", { serviceName: SRV, instanceNumber: 0 });
    assertEquals(u.status, 200);
    await node1.settled();
    const b = await TestContainer.start([...TOOL, "http-server", "80", "B"]);
    c.containers.push(b);
    const r = await node1.api.post("/container/deploy", {
      pid: b.pid,
      serviceName: SRV,
      instanceNumber: 0,
      portMappings: "8080:80",
    });
    assertEquals(r.status, 200, r.body);
    assertEquals((r.json as { nsAddress: string }).nsAddress, a.ipv4, "the same address again");
    await a.c.stop();
    // The server in B needs a moment to listen; then every request is answered by B.
    await eventually(
      async () => (await b.exec(["ss", "-ltn"])).stdout.includes(":80 "),
      Boolean,
      8000,
      "B listens",
    );
    assertEquals(await answered("node", 20, `${a.ipv4}:80`, "B"), 20, "from the node");
    assertEquals(await answered("remote", 20, `${c.nodes[0].ip}:8080`, "B"), 20, "from the remote node");
    assertEquals(await answered("peer", 20, `${a.ipv4}:80`, "B"), 20, "from a neighbour (IPv4)");
    assertEquals(await answered("peer", 20, `[${a.ipv6}]:80`, "B"), 20, "from a neighbour (IPv6)");
  });
});
