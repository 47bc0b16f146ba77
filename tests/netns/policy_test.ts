/**
 * Policies and inspection on a 3-node overlay (static table): the closest policy prefers the
 * instance on the client's own node and measures RTT to the other candidates' nodes in-band;
 * `netmanager table show` (plain, --json, --flows) and `/metrics` describe what the node does.
 */
import { assertEquals, assertMatch } from "../helpers/assert.ts";
import { cleanupAll, isRoot, run } from "../helpers/netns.ts";
import { nodeSubnet, type QueryResult, TestCluster } from "../helpers/cluster.ts";
import { TOOL } from "../helpers/node.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const ROOT = new URL("../../", import.meta.url).pathname;
const NEAR = "app.ns.near.ns";
const CLI = "app.ns.cli.ns";

function inst(n: number, node: number, k: number, ip: string, closest: string): Record<string, unknown> {
  const s = nodeSubnet(node);
  return {
    instance_number: n,
    instance_ip: ip,
    instance_ip_v6: `fdff::${ip.split(".")[3]}`,
    namespace_ip: s.first4(k),
    namespace_ip_v6: s.first6(k),
    host_ip: `192.168.77.${node}`,
    host_port: "50103",
    service_ip: [
      { IpType: "Closest", Address: closest, Address_v6: "fdff:1000::1" },
      { IpType: "instance_ip", Address: ip, Address_v6: `fdff::${ip.split(".")[3]}` },
    ],
  };
}

const TABLE: QueryResult[] = [
  {
    app_name: CLI,
    instance_list: [{
      instance_number: 0,
      instance_ip: "10.30.0.20",
      instance_ip_v6: "fdff::20",
      namespace_ip: nodeSubnet(1).first4(2),
      namespace_ip_v6: nodeSubnet(1).first6(2),
      host_ip: "192.168.77.1",
      host_port: 50103,
      service_ip: [{ IpType: "instance_ip", Address: "10.30.0.20", Address_v6: "fdff::20" }],
    }],
  },
  {
    app_name: NEAR,
    instance_list: [
      inst(0, 2, 2, "10.30.0.22", "10.30.0.21"),
      inst(1, 1, 3, "10.30.0.23", "10.30.0.21"),
      inst(2, 3, 2, "10.30.0.24", "10.30.0.21"),
    ],
  },
];

Deno.test({
  name: "policy: closest prefers the local instance and probes the other candidates' nodes",
  ...opts,
}, async () => {
  const c = await TestCluster.start(3, TABLE);
  try {
    await c.deploy(1, CLI, 0);
    await c.deploy(2, NEAR, 0, [...TOOL, "servers", "80", "n2"]);
    await c.deploy(1, NEAR, 1, [...TOOL, "servers", "80", "local"]);
    await c.deploy(3, NEAR, 2, [...TOOL, "servers", "80", "n3"]);
    const cli = c.containers[0];
    const ask = async () => {
      const r = await cli.exec([...TOOL, "tcp-client", "10.30.0.21", "80", "q"]);
      if (r.code !== 0) throw new Error(r.stderr);
      return r.stdout.trim();
    };
    let first = "";
    for (let i = 0; i < 40 && !first; i++) {
      first = await ask().catch(() => "");
      if (!first) await new Promise((r) => setTimeout(r, 150));
    }
    assertEquals(first, "local:q");
    for (let i = 0; i < 4; i++) assertEquals(await ask(), "local:q");
    // RTT to the other candidates' nodes is measured in-band (PROBE / PROBE_REPLY).
    let metrics = "";
    for (let i = 0; i < 30; i++) {
      metrics = (await c.nodes[0].node.api.request("GET", "/metrics")).body;
      if (/netmanager_peer_rtt_seconds\{node="worker2"/.test(metrics) && /node="worker3"/.test(metrics)) {
        break;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    assertMatch(
      metrics,
      /netmanager_peer_rtt_seconds\{node="worker2",endpoint="192\.168\.77\.2:50103"\} [0-9.e-]+/,
    );
    assertMatch(metrics, /netmanager_peer_rtt_seconds\{node="worker3"/);
    assertMatch(metrics, /# TYPE netmanager_packets_total counter/);
    assertMatch(metrics, /netmanager_table_entries 4/);
  } catch (e) {
    console.error(await c.logs());
    throw e;
  } finally {
    await c.stop();
    await cleanupAll();
  }
});

Deno.test(
  { name: "cli: table show lists entries, --json, --flows shows live flows with counters", ...opts },
  async () => {
    const two: QueryResult[] = [TABLE[0], { app_name: NEAR, instance_list: [TABLE[1].instance_list[0]] }];
    const c = await TestCluster.start(2, two);
    try {
      await c.deploy(1, CLI, 0);
      await c.deploy(2, NEAR, 0, [...TOOL, "servers", "80", "n2"]);
      const node = c.nodes[0].node;
      const cli = (args: string[]) =>
        run([Deno.execPath(), "run", "-A", `${ROOT}main.ts`, ...args, "--socket", node.socket]);
      const plain = await cli(["table", "show"]);
      assertEquals(plain.code, 0, plain.stderr);
      assertMatch(plain.stdout, /^SERVICE\s+INST\s+SERVICE IPS\s+NS ADDRESS/);
      assertMatch(
        plain.stdout,
        /app\.ns\.near\.ns\s+0\s+Closest:10\.30\.0\.21\/fdff:1000::1 instance_ip:10\.30\.0\.22\/fdff::22\s+10\.18\.0\.130/,
      );
      assertMatch(plain.stdout, /192\.168\.77\.2:50103\s+Closest/);
      const json = JSON.parse((await cli(["table", "show", "--json"])).stdout) as Array<
        { serviceName: string }
      >;
      assertEquals(json.map((r) => r.serviceName).sort(), [CLI, NEAR]);
      let out = "";
      for (let i = 0; i < 40; i++) {
        const r = await c.containers[0].exec([
          ...TOOL,
          "tcp-client",
          "10.30.0.21",
          "80",
          "f",
        ]);
        if (r.code === 0) break;
        await new Promise((r) => setTimeout(r, 150));
      }
      const flows = await cli(["table", "show", "--flows"]);
      out = flows.stdout;
      assertEquals(flows.code, 0, flows.stderr);
      assertMatch(out, /^PROTO\s+SOURCE\s+DESTINATION/);
      assertMatch(
        out,
        /tcp\s+10\.18\.0\.66:\d+\s+10\.30\.0\.21:80\s+10\.18\.0\.130\s+192\.168\.77\.2:50103\s+\d+\s+\d+/,
      );
      const st = await cli(["status", "--json"]);
      assertEquals(JSON.parse(st.stdout).registered, true);
    } catch (e) {
      console.error(await c.logs());
      throw e;
    } finally {
      await c.stop();
      await cleanupAll();
    }
  },
);
