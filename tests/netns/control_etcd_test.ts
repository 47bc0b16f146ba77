/**
 * The replicated control plane, with real processes in namespaces: three etcd 3.4 members (one
 * namespace each) and two `netmanager control --etcd` replicas (one namespace each) on one bridge.
 * One etcd cluster is shared by the steps:
 * - 200 service registrations, then 60 instance deploys, at once over both replicas → every
 *   address unique, both replicas agree;
 * - a change made through one replica is published by the other to its own nodes (watch);
 * - one API token and one set of node credentials for every replica (kept in etcd): a credential
 *   issued through one replica is accepted by another's broker, and refused there once revoked;
 * - a node's interest in a job and its liveness live on the lease of the replica it asked: they
 *   expire when that replica is killed and are recorded again on the replica the node asks next;
 * - one member of three stopped: nothing visible; two: allocations refuse clearly (503), known
 *   entries still resolve over MQTT, and everything works again when they return;
 * - everything stopped and started again: the same subnets and addresses;
 * - migration of an embedded state directory (twice: the second run changes nothing);
 * - a replica started against another cluster's prefix refuses to start.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { eventually } from "../helpers/setup.ts";
import { replicaArgv } from "../helpers/etcd.ts";
import { cleanupAll, createNs, isRoot, sh } from "../helpers/netns.ts";
import { SqliteStore } from "../../src/cluster/store.ts";
import type { JobRecord, NodeRecord } from "../../src/cluster/schemas.ts";

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
const NET = "192.168.88";
const MEMBERS = [11, 12, 13].map((i) => `${NET}.${i}`);
const ENDPOINTS = MEMBERS.map((ip) => `http://${ip}:2379`).join(",");
const HTTP_PORT = 10100;
const MQTT_PORT = 10003;

/** A process in a namespace whose stderr (and stdout) is kept. */
class Proc {
  log = "";
  readonly child: Deno.ChildProcess;
  readonly done: Promise<Deno.CommandStatus>;
  constructor(ns: string, argv: string[], env: Record<string, string> = {}) {
    this.child = new Deno.Command("ip", {
      args: ["netns", "exec", ns, ...argv],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", ...env },
    }).spawn();
    const drain = async (s: ReadableStream<Uint8Array>) => {
      for await (const t of s.pipeThrough(new TextDecoderStream())) this.log = (this.log + t).slice(-200_000);
    };
    const a = drain(this.child.stdout);
    const b = drain(this.child.stderr);
    this.done = this.child.status.then(async (st) => {
      await Promise.all([a, b]).catch(() => {});
      return st;
    });
  }
  async waitFor(re: RegExp, ms = 30000): Promise<RegExpExecArray> {
    const end = Date.now() + ms;
    for (;;) {
      const m = re.exec(this.log);
      if (m) return m;
      if (Date.now() > end) throw new Error(`no ${re} within ${ms} ms; log:\n${this.log.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  kill(sig: Deno.Signal): void {
    try {
      this.child.kill(sig);
    } catch { /* exited */ }
  }
  async stop(): Promise<void> {
    this.kill("SIGTERM");
    const t = setTimeout(() => this.kill("SIGKILL"), 8000);
    await this.done;
    clearTimeout(t);
  }
}

interface World {
  dir: string;
  ns: Record<string, string>;
  etcd: (Proc | undefined)[];
  replicas: (Proc | undefined)[];
  tokens: string[];
}

function startMember(w: World, i: number): Proc {
  const name = `e${i + 1}`;
  const ip = MEMBERS[i];
  return new Proc(w.ns[name], [
    "etcd",
    "--name",
    name,
    "--data-dir",
    `${w.dir}/${name}`,
    "--listen-client-urls",
    `http://${ip}:2379`,
    "--advertise-client-urls",
    `http://${ip}:2379`,
    "--listen-peer-urls",
    `http://${ip}:2380`,
    "--initial-advertise-peer-urls",
    `http://${ip}:2380`,
    "--initial-cluster",
    MEMBERS.map((m, k) => `e${k + 1}=http://${m}:2380`).join(","),
    "--initial-cluster-state",
    "new",
    "--initial-cluster-token",
    "nmtest",
    "--heartbeat-interval",
    "50",
    "--election-timeout",
    "500",
  ]);
}

function startReplica(w: World, i: number, extra: string[] = []): Proc {
  return new Proc(
    w.ns[`r${i + 1}`],
    replicaArgv({
      stateDir: `${w.dir}/r${i + 1}`,
      endpoints: ENDPOINTS,
      cluster: "t1",
      mqttPort: MQTT_PORT,
      httpPort: HTTP_PORT,
      extra,
    }),
  );
}

async function client(ns: string, args: string[], stdin?: string): Promise<string> {
  return await sh(["ip", "netns", "exec", ns, ...CLIENT, ...args], stdin);
}

type Reply = { status: number; body: unknown };

/** Sends requests at once to replica `i` (inside its namespace). */
async function http(
  w: World,
  i: number,
  reqs: Array<{ method: string; path: string; body?: unknown }>,
): Promise<Reply[]> {
  const out = await client(
    w.ns[`r${i + 1}`],
    ["http"],
    JSON.stringify(reqs.map((q) => ({
      method: q.method,
      url: `http://127.0.0.1:${HTTP_PORT}${q.path}`,
      token: w.tokens[i],
      ...(q.body !== undefined ? { body: q.body } : {}),
    }))),
  );
  return JSON.parse(out);
}

async function services(w: World, i: number): Promise<JobRecord[]> {
  const [r] = await http(w, i, [{ method: "GET", path: "/api/net/services" }]);
  assertEquals(r.status, 200, JSON.stringify(r.body));
  return (r.body as JobRecord[]).sort((a, b) => a._id < b._id ? -1 : 1);
}

async function nodes(w: World, i: number): Promise<NodeRecord[]> {
  const [r] = await http(w, i, [{ method: "GET", path: "/api/net/nodes" }]);
  assertEquals(r.status, 200, JSON.stringify(r.body));
  return (r.body as NodeRecord[]).sort((a, b) => a.worker_id < b.worker_id ? -1 : 1);
}

async function startReplicas(w: World): Promise<void> {
  for (let i = 0; i < 2; i++) {
    w.replicas[i] = startReplica(w, i);
    await w.replicas[i]!.waitFor(/control plane started/);
    w.tokens[i] = (await Deno.readTextFile(`${w.dir}/r${i + 1}/api-token`)).trim();
  }
}

async function etcdHealthy(w: World): Promise<void> {
  const end = Date.now() + 30000;
  for (;;) {
    const r = JSON.parse(
      await client(
        w.ns.r1,
        ["http"],
        JSON.stringify([{ method: "GET", url: `http://${MEMBERS[0]}:2379/health`, token: "" }]),
      ),
    ) as Reply[];
    if (r[0].status === 200 && (r[0].body as { health?: string }).health === "true") return;
    if (Date.now() > end) throw new Error(`etcd not healthy: ${JSON.stringify(r)}`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

const svcBody = (k: number) => ({
  _id: `job${k}`,
  deployment_descriptor: {
    app_name: "app",
    app_ns: "ns",
    microservice_name: `svc${k}`,
    microservice_namespace: "x",
  },
});

Deno.test({
  name: "control on etcd: 3 members, 2 replicas — unique addresses, notices, quorum loss, restart, migration",
  ...opts,
  fn: async (t) => {
    const w: World = {
      dir: await Deno.makeTempDir({ prefix: "nmctl-etcd-" }),
      ns: {},
      etcd: [],
      replicas: [],
      tokens: [],
    };
    try {
      const hub = await createNs("hub");
      await sh(["ip", "-n", hub, "link", "add", "br0", "type", "bridge"]);
      await sh(["ip", "-n", hub, "link", "set", "br0", "up"]);
      const addrs: Record<string, string> = {
        e1: MEMBERS[0],
        e2: MEMBERS[1],
        e3: MEMBERS[2],
        r1: `${NET}.21`,
        r2: `${NET}.22`,
      };
      for (const [name, ip] of Object.entries(addrs)) {
        const ns = await createNs(name);
        w.ns[name] = ns;
        await sh([
          "ip",
          "link",
          "add",
          "eth0",
          "netns",
          ns,
          "type",
          "veth",
          "peer",
          "name",
          `p${name}`,
          "netns",
          hub,
        ]);
        await sh(["ip", "-n", hub, "link", "set", `p${name}`, "master", "br0", "up"]);
        await sh(["ip", "-n", ns, "addr", "add", `${ip}/24`, "dev", "eth0"]);
        await sh(["ip", "-n", ns, "link", "set", "eth0", "up"]);
      }
      for (let i = 0; i < 3; i++) w.etcd[i] = startMember(w, i);
      await etcdHealthy(w);
      await startReplicas(w);

      await t.step(
        "200 registrations, then 60 deploys, at once over two replicas: addresses unique, replicas agree",
        async () => {
          const reqs = (from: number) =>
            Array.from(
              { length: 100 },
              (_, k) => ({ method: "POST", path: "/api/net/service/deploy", body: svcBody(from + k) }),
            );
          const [a, b] = await Promise.all([http(w, 0, reqs(0)), http(w, 1, reqs(100))]);
          for (const r of [...a, ...b]) assertEquals(r.status, 200, JSON.stringify(r.body));
          const inst = (from: number) =>
            Array.from({ length: 30 }, (_, k) => ({
              method: "POST",
              path: "/api/net/instance/deploy",
              body: { _id: `job${(from + k) % 60}`, instance_number: 0 },
            }));
          const [c, d] = await Promise.all([http(w, 0, inst(30)), http(w, 1, inst(0))]);
          for (const r of [...c, ...d]) assertEquals(r.status, 200, JSON.stringify(r.body));
          const s1 = await services(w, 0);
          const s2 = await services(w, 1);
          assertEquals(s1.length, 200);
          assertEquals(JSON.stringify(s2), JSON.stringify(s1), "replicas disagree");
          // RR and Closest IPs of every service, Instance IPs of every instance: all distinct.
          for (const j of s1) assertEquals(j.service_ip_list.map((x) => x.IpType), ["RR", "Closest"]);
          const addrs = s1.flatMap((j) => [
            ...j.service_ip_list.flatMap((x) => [x.Address, x.Address_v6]),
            ...j.instance_list.flatMap((i) => [i.instance_ip, i.instance_ip_v6]),
          ]);
          assertEquals(addrs.length, 920);
          assertEquals(new Set(addrs).size, 920, "an address was given twice");
        },
      );

      await t.step("a change through replica 1 is published by replica 2 to its own nodes", async () => {
        const watcher = new Proc(w.ns.r2, [
          ...CLIENT,
          "watch",
          `mqtt://127.0.0.1:${MQTT_PORT}`,
          "jobs/+/updates_available",
          "1",
          "10000",
        ]);
        await watcher.waitFor(/subscribed/);
        const [r] = await http(w, 0, [{ method: "DELETE", path: "/api/net/job7/0" }]);
        assertEquals(r.status, 200, JSON.stringify(r.body));
        assertEquals((await watcher.done).code, 0, watcher.log);
        assertMatch(watcher.log, /"topic":"jobs\/app\.ns\.svc7\.x\/updates_available".*UNDEPLOYMENT/);
      });

      await t.step(
        "one API token and one set of node credentials for every replica, kept in etcd",
        async () => {
          assertEquals(w.tokens[1], w.tokens[0], "both replicas' token files hold the cluster's token");
          // A third replica that requires node credentials (no anonymous clients).
          const p = new Proc(
            w.ns.r2,
            replicaArgv({
              stateDir: `${w.dir}/r3`,
              endpoints: ENDPOINTS,
              cluster: "t1",
              mqttPort: 10006,
              httpPort: 10103,
              anonymous: false,
            }),
          );
          try {
            await p.waitFor(/control plane started/);
            assertEquals((await Deno.readTextFile(`${w.dir}/r3/api-token`)).trim(), w.tokens[0]);
            const call = async (port: number, method: string, path: string) =>
              (JSON.parse(
                await client(
                  w.ns.r2,
                  ["http"],
                  JSON.stringify([{ method, url: `http://127.0.0.1:${port}${path}`, token: w.tokens[0] }]),
                ),
              ) as Reply[])[0];
            // The cluster's token works on the new replica (the CLI there reads the same file).
            assertEquals((await call(10103, "GET", "/api/net/nodes")).status, 200);
            // A credential issued through replica 1 ...
            const issued = await http(w, 0, [{ method: "POST", path: "/api/net/node/wsec/credential" }]);
            assertEquals(issued[0].status, 200, JSON.stringify(issued[0].body));
            const pw = (issued[0].body as { password: string }).password;
            const rr = (await services(w, 0)).find((j) => j._id === "job6")!.service_ip_list[0].Address;
            // ... is accepted by replica 3's broker (it learns it from its watch within moments).
            const q = await eventually(
              () => client(w.ns.r2, ["query", `mqtt://wsec:${pw}@127.0.0.1:10006`, "wsec", rr, "3000"]),
              (out) => out.includes("app.ns.svc6.x"),
              10000,
            );
            assertMatch(q, /"app_name":"app\.ns\.svc6\.x"/);
            // A wrong password is refused there.
            const bad = await client(w.ns.r2, [
              "query",
              `mqtt://wsec:x${pw}@127.0.0.1:10006`,
              "wsec",
              rr,
              "3000",
            ])
              .then(() => "accepted", (e) => String(e));
            assertMatch(bad, /bad username or password|Not authorized|refused|exit/i);
            // Revoked through replica 2: replica 3 refuses it too.
            const revoked = await http(w, 1, [{ method: "DELETE", path: "/api/net/node/wsec/credential" }]);
            assertEquals(revoked[0].status, 200, JSON.stringify(revoked[0].body));
            await eventually(
              () =>
                client(w.ns.r2, ["query", `mqtt://wsec:${pw}@127.0.0.1:10006`, "wsec", rr, "3000"])
                  .then(() => "accepted", () => "refused"),
              (r) => r === "refused",
              10000,
            );
          } finally {
            await p.stop();
          }
        },
      );

      await t.step(
        "interests and liveness live on the replica's lease: gone when it is killed, recorded again on the next one",
        async () => {
          const P = "/netmanager/t1/";
          const keys = async (sub: string) => {
            const r = JSON.parse(
              await sh([
                "ip",
                "netns",
                "exec",
                w.ns.r2,
                "curl",
                "-s",
                `${MEMBERS[0]}:2379/v3/kv/range`,
                "-d",
                JSON.stringify({ key: btoa(`${P}${sub}`), range_end: btoa(`${P}${sub}\xff`) }),
              ]),
            ) as { kvs?: Array<{ key: string; value: string; lease?: string }> };
            return (r.kvs ?? []).map((kv) => ({
              key: atob(kv.key),
              value: atob(kv.value),
              lease: kv.lease ?? "0",
            }));
          };
          const interestedIn5 = async (i: number) =>
            (await services(w, i)).find((j) => j._id === "job5")!.interested_nodes;
          const rr = (await services(w, 0)).find((j) => j._id === "job5")!.service_ip_list[0].Address;
          const broker = `mqtt://127.0.0.1:${MQTT_PORT}`;
          // A node asks replica 1: its interest is a key on replica 1's lease, not in the job's row.
          const q = JSON.parse(await client(w.ns.r1, ["query", broker, "wi1", rr, "5000"]));
          assertEquals(q.app_name, "app.ns.svc5.x");
          // ... and its liveness (it asks for its subnet) on the same lease.
          await client(w.ns.r1, ["publish", broker, "nodes/wi1/net/subnet", '{"METHOD":"GET"}']);
          const [key] = await eventually(() => keys("interest/"), (k) => k.length === 1, 5000);
          assertEquals(key.key, `${P}interest/job5/wi1`);
          const owner = (JSON.parse(key.value) as { replica: string }).replica;
          const replicas = await keys("replicas/");
          assertEquals(replicas.find((r) => r.key === `${P}replicas/${owner}`)?.lease, key.lease);
          assert(key.lease !== "0", "the interest is on a lease");
          const [alive] = await eventually(() => keys("alive/wi1"), (k) => k.length === 1, 5000);
          assertEquals(alive.lease, key.lease, "liveness on the same lease");
          const row = (await keys("rows/job/job5"))[0];
          assertEquals(JSON.parse(row.value).interested_nodes, [], "the interest is not in the job row");
          assertEquals(await interestedIn5(0), ["wi1"]);
          await eventually(() => interestedIn5(1), (l) => l.length === 1 && l[0] === "wi1", 5000);
          // Replica 1 dies: its lease expires (TTL 10 s), the interest with it, on replica 2 too.
          w.replicas[0]!.kill("SIGKILL");
          await w.replicas[0]!.done;
          w.replicas[0] = undefined;
          await eventually(() => interestedIn5(1), (l) => l.length === 0, 20000);
          assertEquals(await keys("interest/"), []);
          assertEquals(await keys("alive/wi1"), []);
          // The node fails over to replica 2 and asks again (as it does for every job it follows).
          await client(w.ns.r2, ["query", broker, "wi1", rr, "5000"]);
          assertEquals(await interestedIn5(1), ["wi1"]);
          const [again] = await eventually(() => keys("interest/"), (k) => k.length === 1, 5000);
          assert(again.lease !== "0" && again.lease !== key.lease, "on replica 2's lease");
          await client(w.ns.r2, ["publish", broker, "nodes/wi1/net/subnet", '{"METHOD":"GET"}']);
          const [alive2] = await eventually(() => keys("alive/wi1"), (k) => k.length === 1, 5000);
          assertEquals(alive2.lease, again.lease);
          // interest/remove drops it.
          await client(w.ns.r2, [
            "publish",
            broker,
            "nodes/wi1/net/interest/remove",
            '{"appname":"app.ns.svc5.x"}',
          ]);
          await eventually(() => keys("interest/"), (k) => k.length === 0, 5000);
          assertEquals(await interestedIn5(1), []);
          w.replicas[0] = startReplica(w, 0);
          await w.replicas[0].waitFor(/control plane started/);
        },
      );

      await t.step(
        "one etcd member stopped: nothing visible; two: allocations refused, queries answered; back: works",
        async () => {
          await w.etcd[2]!.stop();
          w.etcd[2] = undefined;
          let [r] = await http(w, 0, [{
            method: "POST",
            path: "/api/net/service/deploy",
            body: svcBody(300),
          }]);
          assertEquals(r.status, 200, JSON.stringify(r.body));
          [r] = await http(w, 1, [{
            method: "POST",
            path: "/api/net/instance/deploy",
            body: { _id: "job300", instance_number: 0 },
          }]);
          assertEquals(r.status, 200, JSON.stringify(r.body));
          await w.etcd[1]!.stop();
          w.etcd[1] = undefined;
          const t0 = Date.now();
          [r] = await http(w, 1, [{ method: "POST", path: "/api/net/service/deploy", body: svcBody(301) }]);
          assertEquals(r.status, 503, JSON.stringify(r.body));
          assertMatch(JSON.stringify(r.body), /state store unavailable, nothing changed/);
          assert(Date.now() - t0 < 15000, `refusal took ${Date.now() - t0} ms`);
          // Known entries still resolve from the replica's copy, over MQTT and HTTP.
          const rr = (await services(w, 0)).find((j) => j._id === "job300")!.service_ip_list[0].Address;
          const q = JSON.parse(
            await client(w.ns.r1, ["query", `mqtt://127.0.0.1:${MQTT_PORT}`, "wq", rr, "5000"]),
          );
          assertEquals(q.app_name, "app.ns.svc300.x");
          // Back: both members return, allocations work again and the refused one left nothing.
          w.etcd[1] = startMember(w, 1);
          w.etcd[2] = startMember(w, 2);
          await etcdHealthy(w);
          const end = Date.now() + 20000;
          for (;;) {
            [r] = await http(w, 1, [{ method: "POST", path: "/api/net/service/deploy", body: svcBody(301) }]);
            if (r.status === 200 || Date.now() > end) break;
            await new Promise((res) => setTimeout(res, 300));
          }
          assertEquals(r.status, 200, JSON.stringify(r.body));
          // Replica 0 learns replica 1's change from its etcd watch: within moments, not at once.
          const s = await eventually(() => services(w, 0), (l) => l.length === 202, 5000);
          const all = s.flatMap((
            j,
          ) => [j.service_ip_list[0].Address, ...j.instance_list.map((i) => i.instance_ip)]);
          assertEquals(new Set(all).size, all.length);
        },
      );

      await t.step(
        "everything stopped and started again: the same services, subnets and addresses",
        async () => {
          // Interests live on the replicas' leases and go with them (nodes ask again when they
          // reconnect): everything else comes back.
          const noInterests = (l: JobRecord[]) =>
            JSON.stringify(l.map((j) => ({ ...j, interested_nodes: [] })));
          const before = noInterests(await services(w, 0));
          const beforeNodes = JSON.stringify(await nodes(w, 0));
          for (const p of w.replicas) await p?.stop();
          for (const p of w.etcd) await p?.stop();
          for (let i = 0; i < 3; i++) w.etcd[i] = startMember(w, i);
          await etcdHealthy(w);
          await startReplicas(w);
          assertEquals(noInterests(await services(w, 0)), before);
          assertEquals(noInterests(await services(w, 1)), before);
          assertEquals(JSON.stringify(await nodes(w, 1)), beforeNodes);
        },
      );

      await t.step(
        "migration of an embedded state dir from before Closest IPs; a second run changes nothing",
        async () => {
          // The state file as written before Closest ServiceIPs existed (no closest6 pool, RR only).
          const src = `${w.dir}/embedded`;
          await Deno.mkdir(src, { recursive: true });
          const old = {
            version: 1,
            jobs: [{
              _id: "m1",
              job_name: "m.m.m.m",
              service_ip_list: [{ IpType: "RR", Address: "10.30.9.9", Address_v6: "fdff:2000::" }],
              instance_list: [{ instance_number: 0, instance_ip: "10.30.0.0", instance_ip_v6: "fdff::" }],
              interested_nodes: [],
            }],
            nodes: [{ worker_id: "wm1", subnet: "10.18.0.0", subnet_v6: "fc00::" }],
            pools: {
              subnet4: { next: "1", free: [] },
              subnet6: { next: "1", free: [] },
              service4: { next: "1", free: [] },
              instance6: { next: "1", free: [] },
              rr6: { next: "1", free: [] },
            },
          };
          await Deno.writeTextFile(`${src}/control-state.json`, JSON.stringify(old));
          const store = await SqliteStore.open(src); // imports the JSON file unchanged
          const want = store.state.toFile();
          await store.close();
          assertEquals(want.jobs, old.jobs);
          const migrate = (cluster: string) =>
            sh([
              "ip",
              "netns",
              "exec",
              w.ns.r1,
              Deno.execPath(),
              "run",
              "-A",
              "--config",
              `${ROOT}deno.json`,
              `${ROOT}main.ts`,
              "control",
              "migrate",
              "--from",
              src,
              "--to",
              ENDPOINTS,
              "--cluster-name",
              cluster,
            ]);
          assertMatch(
            await migrate("m"),
            /migrated: 1 service\(s\), 1 node\(s\): [0-9]+ row\(s\) written, 0 already there/,
          );
          assertMatch(await migrate("m"), /: 0 row\(s\) written, [0-9]+ already there/);
          // A replica of cluster m serves exactly the migrated state.
          const p = new Proc(
            w.ns.r1,
            replicaArgv({
              stateDir: `${w.dir}/rm`,
              endpoints: ENDPOINTS,
              cluster: "m",
              mqttPort: 10004,
              httpPort: 10101,
            }),
          );
          try {
            await p.waitFor(/control plane started/);
            const token = (await Deno.readTextFile(`${w.dir}/rm/api-token`)).trim();
            const out = JSON.parse(
              await client(
                w.ns.r1,
                ["http"],
                JSON.stringify([
                  { method: "GET", url: "http://127.0.0.1:10101/api/net/services", token },
                  {
                    method: "POST",
                    url: "http://127.0.0.1:10101/api/net/instance/deploy",
                    token,
                    body: { _id: "m1", instance_number: 1 },
                  },
                ]),
              ),
            ) as Reply[];
            const jobs = out[0].body as JobRecord[];
            assertEquals(
              jobs.map((j) => [j._id, j.service_ip_list[0].Address, j.instance_list[0].instance_ip]),
              [
                ["m1", "10.30.9.9", want.jobs[0].instance_list[0].instance_ip],
              ],
            );
            // The replica gave the migrated service its Closest IPs on start (nothing else changed)...
            assertEquals(jobs[0].service_ip_list, [
              old.jobs[0].service_ip_list[0],
              { IpType: "Closest", Address: "10.30.0.1", Address_v6: "fdff:1000::" },
            ]);
            // ...with etcd claim keys for them, owned by the job row.
            for (const ip of ["10.30.0.1", "fdff:1000::"]) {
              const key = btoa(`/netmanager/m/claims/ip/${ip}`);
              const got = JSON.parse(
                await sh([
                  "ip",
                  "netns",
                  "exec",
                  w.ns.r1,
                  "curl",
                  "-s",
                  `${MEMBERS[0]}:2379/v3/kv/range`,
                  "-d",
                  JSON.stringify({ key }),
                ]),
              ) as { kvs?: Array<{ value: string }> };
              assertEquals(got.kvs?.map((kv) => atob(kv.value)), ["job/m1"], `claim of ${ip}`);
            }
            // The allocator continues where the embedded one stopped.
            assertEquals(out[1].status, 200);
            assertEquals((out[1].body as { instance_ip: string }).instance_ip, "10.30.0.2");
          } finally {
            await p.stop();
          }
          // The first cluster's state is untouched by the migration.
          assertEquals((await services(w, 0)).length, 202);
        },
      );

      await t.step("a replica started against another cluster's prefix refuses", async () => {
        const p = startReplica(w, 0, [
          "--etcd-prefix",
          "/netmanager/m/",
          "--http-port",
          "10102",
          "--mqtt-port",
          "10005",
        ]);
        const st = await p.done;
        assertEquals(st.code, 1, p.log);
        assertMatch(p.log, /etcd prefix \/netmanager\/m\/ belongs to cluster "m", not "t1"; refusing/);
      });
    } finally {
      for (const p of w.replicas) p?.kill("SIGKILL");
      for (const p of w.etcd) p?.kill("SIGKILL");
      await Promise.all([...w.replicas, ...w.etcd].map((p) => p?.done));
      await cleanupAll();
      await Deno.remove(w.dir, { recursive: true }).catch(() => {});
    }
  },
});
