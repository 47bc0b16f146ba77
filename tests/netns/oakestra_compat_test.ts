/**
 * Our node against a cluster that speaks exactly like Oakestra's Python cluster manager (played by
 * tests/helpers/fake_cluster.ts over a real mosquitto): registration with a Mongo-style worker id,
 * the subnet reply, `service/deployed` with `host_port` as a string, table queries answered with
 * `"IpType":"instance_ip"` and numeric `host_port`, traffic through the RR ServiceIP resolved on a
 * miss, a service name resolved through a table query by `sname` — and malformed payloads ignored.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { withWorld } from "../helpers/world.ts";
import { isRoot } from "../helpers/netns.ts";
import { TOOL } from "../helpers/node.ts";
import { oakestraInstance } from "../helpers/setup.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const HERE = new URL("../helpers/", import.meta.url).pathname;

/** An instance with the keys Oakestra's cluster manager adds (cluster and worker ids). */
function instance(n: number, nsip: string, nsip6: string, host: string, iip: string, rr?: string) {
  return {
    ...oakestraInstance(n, nsip, nsip6, host, iip, rr),
    cluster_id: "64a1b2c3d4e5f60718293a00",
    worker_id: "w",
  };
}

Deno.test(
  { name: "oakestra: our node with an Oakestra-speaking cluster manager (exact payloads)", ...opts },
  async () => {
    await withWorld(async (w) => {
      const { dir } = await w.brokerOnly("192.168.77.254");
      const jobs = [
        {
          app_name: "demo.demo.cli.default",
          instance_list: [instance(0, "10.18.0.66", "fc00::102", "192.168.77.1", "10.30.0.10")],
        },
        {
          app_name: "demo.demo.web.default",
          instance_list: [instance(0, "10.18.0.130", "fc00::202", "192.168.77.2", "10.30.0.2", "10.30.0.1")],
        },
        {
          app_name: "demo.demo.db.default",
          instance_list: [instance(0, "10.18.0.131", "fc00::203", "192.168.77.2", "10.30.0.20")],
        },
      ];
      await Deno.writeTextFile(`${dir}/jobs.json`, JSON.stringify(jobs));
      const log = `${dir}/fake.log`;
      w.spawnNextToBroker([
        Deno.execPath(),
        "run",
        "-A",
        `${HERE}fake_cluster.ts`,
        "mqtt://127.0.0.1:10003",
        `${dir}/jobs.json`,
      ], log);
      const messages = async () =>
        (await Deno.readTextFile(log).catch(() => "")).split("\n").filter((l) => l.startsWith("{")).map((l) =>
          JSON.parse(l) as { topic?: string; payload?: string; event?: string }
        );
      for (let i = 0; i < 100 && !(await messages()).some((m) => m.event === "connected"); i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
      const n1 = await w.clusterNode("n1", "192.168.77.1", "192.168.77.254", "64a1b2c3d4e5f60718293a4b");
      const n2 = await w.clusterNode("n2", "192.168.77.2", "192.168.77.254", "64a1b2c3d4e5f60718293a4c");
      assertEquals(
        (await n1.api.getJson("/status") as { subnet: string }).subnet,
        "10.18.0.64/26,fc00::100/120",
      );
      const subnetReq = (await messages()).find((m) =>
        m.topic === "nodes/64a1b2c3d4e5f60718293a4b/net/subnet"
      );
      assertEquals(JSON.parse(subnetReq!.payload!), { METHOD: "GET" });

      const web = await w.instance("web", [...TOOL, "servers", "80", "web"]);
      const cli = await w.instance("cli");
      let r = await n2.api.post("/container/deploy", {
        pid: web.pid,
        serviceName: "demo.demo.web.default",
        instanceNumber: 0,
        portMappings: "",
      });
      assertEquals(r.status, 200, r.body);
      r = await n1.api.post("/container/deploy", {
        pid: cli.pid,
        serviceName: "demo.demo.cli.default",
        instanceNumber: 0,
        portMappings: "",
      });
      assertEquals(r.status, 200, r.body);
      let deployed: { topic?: string; payload?: string } | undefined;
      for (let i = 0; i < 50 && !deployed; i++) {
        deployed = (await messages()).find((m) =>
          m.topic === "nodes/64a1b2c3d4e5f60718293a4b/net/service/deployed"
        );
        if (!deployed) await new Promise((r) => setTimeout(r, 100));
      }
      assertEquals(JSON.parse(deployed!.payload!), {
        appname: "demo.demo.cli.default",
        status: "DEPLOYED",
        instance_number: 0,
        nsip: "10.18.0.66",
        nsipv6: "fc00::102",
        host_port: "50103",
        host_ip: "192.168.77.1",
      });
      // the client dials the RR ServiceIP: a miss on n1 (query by sip), a stranger on n2 (query for the client's InstanceIP)
      let answer = "";
      for (let i = 0; i < 40 && answer !== "web:q"; i++) {
        const c = await new Deno.Command("nsenter", {
          args: ["-t", String(cli.pid), "-n", ...TOOL, "tcp-client", "10.30.0.1", "80", "q"],
          stdout: "piped",
          stderr: "null",
        }).output();
        answer = new TextDecoder().decode(c.stdout).trim();
      }
      assertEquals(answer, "web:q");
      const queries = (await messages()).filter((m) => m.topic?.endsWith("/tablequery/request")).map((m) =>
        JSON.parse(m.payload!)
      );
      assert(queries.some((q) => q.sip === "10.30.0.1" && q.sname === ""), JSON.stringify(queries));
      assert(
        queries.some((q) => q.sname === "demo.demo.cli.default" && q.sip === ""),
        JSON.stringify(queries),
      );
      // service names under this cluster manager: a name miss on n1 becomes a query by sname
      const dig = (name: string) =>
        w.execIn(cli, [
          "dig",
          "@10.18.0.65",
          "+tries=1",
          "+timeout=2",
          "+noall",
          "+answer",
          "+comments",
          name,
        ]);
      const byName = await dig("instance-0.db.default.demo.demo.local");
      assert(/status: NOERROR/.test(byName) && /\sA\s+10\.30\.0\.20$/m.test(byName), byName);
      assert(/status: NXDOMAIN/.test(await dig("nosuch.default.demo.demo.local")));
      assert(
        (await messages()).some((m) =>
          m.topic?.endsWith("/tablequery/request") && JSON.parse(m.payload!).sname === "demo.demo.db.default"
        ),
      );
      // the malformed payloads the fake published did no harm
      for (const n of [n1, n2]) {
        assertEquals(
          (await n.api.getJson("/status") as { registered: boolean }).registered,
          true,
        );
      }
    }, 1500);
  },
);
