/**
 * Node failover between control-plane replicas, with real processes in namespaces: one etcd
 * member, two `netmanager control --etcd` replicas, two cluster nodes whose `ClusterUrl` lists both
 * replicas (in opposite order, so each replica serves one node). The replica node 1 is connected to
 * is SIGKILLed during a TCP conversation through an RR ServiceIP: node 1 moves to the other replica
 * within 5 s, its new table queries are answered there, and the established conversation never
 * stalls.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { withWorld } from "../helpers/world.ts";
import { isRoot, sh } from "../helpers/netns.ts";
import { selfCommand } from "../../src/sys/process.ts";
import { TOOL } from "../helpers/node.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const ROOT = new URL("../../", import.meta.url).pathname;
const CLIENT = [
  Deno.execPath(),
  "run",
  "-A",
  "--config",
  `${ROOT}deno.json`,
  `${ROOT}tests/helpers/ctl_client.ts`,
];
const ETCD = "192.168.77.200";
const R = ["192.168.77.251", "192.168.77.252"];

async function waitLog(path: string, re: RegExp, ms: number): Promise<RegExpExecArray> {
  const end = Date.now() + ms;
  for (;;) {
    const m = re.exec(await Deno.readTextFile(path).catch(() => ""));
    if (m) return m;
    if (Date.now() > end) {
      throw new Error(
        `no ${re} in ${path} within ${ms} ms:\n${
          (await Deno.readTextFile(path).catch(() => "")).slice(-3000)
        }`,
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

Deno.test({
  name: "control replicas: SIGKILL of a node's replica → the node fails over within 5 s, flows never stall",
  ...opts,
  fn: async () => {
    await withWorld(async (w) => {
      const dir = await w.tempDir("ctl");
      const ens = await w.namespace("etcd");
      await w.attach(ens, "et", ETCD);
      w.spawnIn(ens, [
        "etcd",
        "--name",
        "e1",
        "--data-dir",
        `${dir}/etcd`,
        "--listen-client-urls",
        `http://${ETCD}:2379`,
        "--advertise-client-urls",
        `http://${ETCD}:2379`,
        "--listen-peer-urls",
        `http://127.0.0.1:2380`,
        "--initial-advertise-peer-urls",
        `http://127.0.0.1:2380`,
        "--initial-cluster",
        "e1=http://127.0.0.1:2380",
      ], `${dir}/etcd.log`);
      await waitLog(`${dir}/etcd.log`, /ready to serve client requests/, 20000);
      const replicas = [];
      const rns: string[] = [];
      for (let i = 0; i < 2; i++) {
        const ns = await w.namespace(`r${i + 1}`);
        await w.attach(ns, `r${i + 1}`, R[i]);
        rns.push(ns);
        replicas.push(w.spawnIn(ns, [
          ...selfCommand(),
          "control",
          "--state-dir",
          `${dir}/r${i + 1}`,
          "--etcd",
          `http://${ETCD}:2379`,
          "--cluster-name",
          "fo",
          "--mqtt-allow-anonymous",
          "--http-port",
          "10100",
        ], `${dir}/r${i + 1}.log`));
        await waitLog(`${dir}/r${i + 1}.log`, /control plane started/, 30000);
      }
      const token = (await Deno.readTextFile(`${dir}/r2/api-token`)).trim();
      const api = async (reqs: Array<{ method: string; path: string; body?: unknown }>) =>
        JSON.parse(
          await sh(
            ["ip", "netns", "exec", rns[1], ...CLIENT, "http"],
            JSON.stringify(reqs.map((q) => ({ ...q, url: `http://127.0.0.1:10100${q.path}`, token }))),
          ),
        ) as Array<{ status: number; body: Record<string, unknown> }>;
      const n1 = await w.clusterNode("n1", "192.168.77.1", `${R[0]},${R[1]}`);
      const n2 = await w.clusterNode("n2", "192.168.77.2", `${R[1]},${R[0]}`);
      await waitLog(
        `${n1.dir}/daemon.log`,
        new RegExp(`connected to MQTT broker.*${R[0].replaceAll(".", "\\.")}`),
        5000,
      );
      await waitLog(
        `${n2.dir}/daemon.log`,
        new RegExp(`connected to MQTT broker.*${R[1].replaceAll(".", "\\.")}`),
        5000,
      );

      const web = "app.ns.web.ns";
      const cli = "app.ns.cli.ns";
      const web2 = "app.ns.webb.ns";
      const dd = (name: string) => {
        const [app_name, app_ns, microservice_name, microservice_namespace] = name.split(".");
        return { deployment_descriptor: { app_name, app_ns, microservice_name, microservice_namespace } };
      };
      const made = await api([
        { method: "POST", path: "/api/net/service/deploy", body: { _id: "web", ...dd(web) } },
        { method: "POST", path: "/api/net/service/deploy", body: { _id: "cli", ...dd(cli) } },
        { method: "POST", path: "/api/net/service/deploy", body: { _id: "webb", ...dd(web2) } },
      ]);
      for (const r of made) assertEquals(r.status, 200, JSON.stringify(r.body));
      const rr = made[0].body.RR_ip as string;
      const rr2 = made[2].body.RR_ip as string;
      const inst = await api([
        { method: "POST", path: "/api/net/instance/deploy", body: { _id: "web", instance_number: 0 } },
        { method: "POST", path: "/api/net/instance/deploy", body: { _id: "cli", instance_number: 0 } },
        { method: "POST", path: "/api/net/instance/deploy", body: { _id: "webb", instance_number: 0 } },
      ]);
      for (const r of inst) assertEquals(r.status, 200, JSON.stringify(r.body));
      const s1 = await w.instance("web0", [...TOOL, "servers", "80", "web0"]);
      const s2 = await w.instance("webb0", [...TOOL, "servers", "80", "webb0"]);
      const client = await w.instance("client");
      for (
        const [node, job, pid] of [[n2, web, s1.pid], [n2, web2, s2.pid], [n1, cli, client.pid]] as const
      ) {
        const r = await node.api.post("/container/deploy", {
          pid,
          serviceName: job,
          instanceNumber: 0,
          portMappings: "",
        });
        assertEquals(r.status, 200, r.body);
      }
      // The RR answers through the overlay (n1 asked its replica, r1, for the table).
      const end = Date.now() + 10000;
      let first = "";
      while (Date.now() < end && !first.startsWith("web0")) {
        first = await w.execIn(client, [...TOOL, "tcp-client", rr, "80", "q"]).catch((e) => String(e));
      }
      assertMatch(first, /^web0:/);

      // An established conversation: 80 rounds, 100 ms apart, across the kill.
      const chat = new Deno.Command("nsenter", {
        args: ["-t", String(client.pid), "-n", ...TOOL, "tcp-chat", rr, "80", "80", "100"],
        stdout: "piped",
        stderr: "piped",
      }).output();
      await new Promise((r) => setTimeout(r, 1500));
      const t0 = Date.now();
      Deno.kill(replicas[0].pid, "SIGKILL");
      await waitLog(
        `${n1.dir}/daemon.log`,
        new RegExp(`reconnected to MQTT broker.*${R[1].replaceAll(".", "\\.")}`),
        5000,
      );
      const failoverMs = Date.now() - t0;
      assert(failoverMs <= 5000, `failover took ${failoverMs} ms`);
      console.log(`failover: ${failoverMs} ms`);
      // A new table query from n1 is answered by r2: the second service, never asked before.
      let second = "";
      const end2 = Date.now() + 8000;
      while (Date.now() < end2 && !second.startsWith("webb0")) {
        second = await w.execIn(client, [...TOOL, "tcp-client", rr2, "80", "q"]).catch((e) => String(e));
      }
      assertMatch(second, /^webb0:/);
      const out = await chat;
      const text = new TextDecoder().decode(out.stdout);
      assertEquals(out.code, 0, `conversation stalled: ${new TextDecoder().decode(out.stderr)}`);
      assertEquals(text.trim().split("\n").length, 80, text);
    });
  },
});
