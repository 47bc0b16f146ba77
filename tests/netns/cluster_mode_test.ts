/**
 * Cluster mode end to end: `netmanager control` (embedded broker, and mosquitto as an external
 * broker) with three nodes whose daemons register over MQTT. Registration and subnets, reachability
 * through RR ServiceIPs and InstanceIPs across nodes, undeploy propagation, interest expiry,
 * restarts of a node daemon, of the control plane and of the broker during traffic.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { isRoot } from "../helpers/netns.ts";
import { type SimInstance, type SimNode, World } from "../../src/demo/world.ts";
import { TOOL } from "../helpers/node.ts";
import { eventually } from "../helpers/setup.ts";
import { addWebAndClient, ask, CLI, deploy, threeNodes, WEB, withWorld } from "../helpers/world.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };

interface Setup {
  w: World;
  nodes: SimNode[];
  client: SimInstance;
  rr: string;
  iip: string[];
}

async function setup(w: World, broker: "embedded" | "mosquitto", env?: string): Promise<Setup> {
  if (env) Deno.env.set("NETMANAGER_INTEREST_IDLE_MS", env);
  else Deno.env.delete("NETMANAGER_INTEREST_IDLE_MS");
  const { nodes } = await threeNodes(w, { broker });
  const iip = await addWebAndClient(w);
  const svc = JSON.parse(await w.ctl(["service", "ls", "--json"])) as Array<Record<string, unknown>>;
  const rr =
    ((svc.find((s) => s.job_name === WEB)!.service_ip_list) as Array<{ Address: string }>)[0].Address;
  const s1 = await w.instance("web0", [...TOOL, "servers", "80", "web0"]);
  const s2 = await w.instance("web1", [...TOOL, "servers", "80", "web1"]);
  const client = await w.instance("client");
  await deploy(nodes[1], WEB, 0, s1.pid);
  await deploy(nodes[2], WEB, 1, s2.pid);
  await deploy(nodes[0], CLI, 0, client.pid);
  return { w, nodes, client, rr, iip };
}

async function run(broker: "embedded" | "mosquitto", fn: (s: Setup) => Promise<void>, env?: string) {
  try {
    await withWorld(async (w) => await fn(await setup(w, broker, env)));
  } finally {
    Deno.env.delete("NETMANAGER_INTEREST_IDLE_MS");
  }
}

for (const broker of ["embedded", "mosquitto"] as const) {
  Deno.test({
    name:
      `cluster (${broker} broker): subnets over MQTT, RR and InstanceIP across nodes, undeploy within 1 s`,
    ...opts,
  }, async () => {
    await run(broker, async (s) => {
      const subnets = await Promise.all(
        s.nodes.map(async (n) => ((await n.api.getJson("/status")) as { subnet: string }).subnet),
      );
      assertEquals(new Set(subnets).size, 3);
      for (const sub of subnets) assertMatch(sub, /^10\.18\.\d+\.\d+\/26,fc00:[0-9a-f:]*\/120$/);
      const seq: string[] = [];
      for (let k = 0; k < 4; k++) {
        seq.push(await eventually(() => ask(s.client, s.rr), (v) => v.startsWith("web")));
      }
      for (let k = 1; k < seq.length; k++) assert(seq[k] !== seq[k - 1], `round robin alternates: ${seq}`);
      assertEquals(await ask(s.client, s.iip[1]), "web1");
      assertEquals(await ask(s.client, s.iip[0], "udp-client"), "web0");
      // undeploy web0: the NodeEngine on n2 and the control plane; n1's table follows within 1 s
      await s.nodes[1].api.post("/container/undeploy", { serviceName: WEB, instanceNumber: 0 });
      // The clock starts when the control plane has taken the removal (the CLI's own start-up, seconds on
      // a loaded machine, is not the propagation this measures).
      await s.w.ctl(["instance", "rm", WEB, "0"]);
      const t0 = Date.now();
      await eventually(
        () =>
          s.nodes[0].api.getJson("/table") as Promise<Array<{ serviceName: string; instanceNumber: number }>>,
        (rows) => !rows.some((r) => r.serviceName === WEB && r.instanceNumber === 0),
        1000,
      );
      assert(Date.now() - t0 < 1000, `propagation took ${Date.now() - t0} ms`);
      for (let k = 0; k < 3; k++) assertEquals(await ask(s.client, s.rr), "web1");
    });
  });
}

Deno.test({
  name: "cluster: restarts — node daemon, control plane (state kept), broker during an established flow",
  ...opts,
}, async () => {
  await run("mosquitto", async (s) => {
    await eventually(() => ask(s.client, s.rr), (v) => v.startsWith("web"));
    // what must survive a control-plane restart: jobs, ids and every address
    const addresses = async () =>
      (JSON.parse(await s.w.ctl(["service", "ls", "--json"])) as Array<Record<string, unknown>>).map((j) => ({
        id: j._id,
        job: j.job_name,
        sips: j.service_ip_list,
        inst: (j.instance_list as Array<Record<string, unknown>>).map((
          i,
        ) => [i.instance_number, i.instance_ip, i.instance_ip_v6]),
      }));
    const before = await addresses();
    // a long-lived TCP connection from the client to web1's InstanceIP: 40 rounds, 100 ms apart
    const chat = new Deno.Command("nsenter", {
      args: ["-t", String(s.client.pid), "-n", ...TOOL, "tcp-chat", s.iip[1], "80", "40", "100"],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    await new Promise((r) => setTimeout(r, 500));
    await s.w.stopBroker();
    await new Promise((r) => setTimeout(r, 1000));
    await s.w.startBroker();
    const out = await chat.output();
    const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    assertEquals(lines.length, 40, "every round answered while the broker restarted");
    assertEquals(lines[39], "web1:m39");
    // control plane restart: same services and addresses; a new instance still propagates
    await s.w.stopControl();
    await s.w.startControl();
    assertEquals(await addresses(), before);
    // node daemon restart (n1, the client's node): flows resume through its re-read state
    await s.w.stopDaemon(s.nodes[0]);
    await s.w.startDaemon(s.nodes[0]);
    const st = (await s.nodes[0].api.getJson("/status")) as { registered: boolean; instances: number };
    assertEquals([st.registered, st.instances], [true, 1]);
    await eventually(() => ask(s.client, s.iip[0]), (v) => v === "web0", 15000);
    await eventually(() => ask(s.client, s.rr), (v) => v.startsWith("web"), 15000);
  });
});

Deno.test({
  name: "cluster: an idle interest expires (job leaves the table) unless the job is hosted",
  ...opts,
}, async () => {
  await run("embedded", async (s) => {
    await eventually(() => ask(s.client, s.rr), (v) => v.startsWith("web"));
    const has = async (n: SimNode, job: string) =>
      ((await n.api.getJson("/table")) as Array<{ serviceName: string }>).some((r) => r.serviceName === job);
    assert(await has(s.nodes[0], WEB));
    // idle expiry is 1.5 s here (NETMANAGER_INTEREST_IDLE_MS), flows idle after the request
    await eventually(() => has(s.nodes[0], WEB), (v) => v === false, 10000);
    assert(await has(s.nodes[0], CLI), "the hosted job stays");
    // and the next request resolves it again through a table query
    assert((await eventually(() => ask(s.client, s.rr), (v) => v.startsWith("web"))).startsWith("web"));
  }, "1500");
});
