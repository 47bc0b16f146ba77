/**
 * NodeControl against real MQTT brokers — aedes embedded in this process and mosquitto as a child
 * process — on 127.0.0.1 with free ports chosen at run time (no privileges, no namespaces needed).
 * The test plays Oakestra's Python cluster service manager exactly: it subscribes `nodes/+/net/#`,
 * answers subnet requests and table queries with the §2.3 payload (`"IpType":"instance_ip"`, numeric
 * `host_port`, extra keys), stores `service/deployed` reports, and publishes `updates_available`.
 */
import mqtt from "mqtt";
import type { MqttClient } from "mqtt";
import { Aedes } from "aedes";
import net from "node:net";
import { ControlError, type ControlOptions, NodeControl, type TableSink } from "../../src/control/mod.ts";
import { parseIPv4, parsePrefix4, parsePrefix6 } from "../../src/addr/mod.ts";
import type { RouteContext } from "../../src/control/route_check.ts";
import { setLogLevel } from "../../src/log.ts";
import { type TableEntry, TranslationTable } from "../../src/table/mod.ts";
import { assert, assertEquals, assertMatch, assertRejects } from "../helpers/assert.ts";
import { freePort } from "../helpers/netns.ts";

setLogLevel("error");

const ID = "65f0c0ffee0000000000beef";
const HOST_IP = "192.0.2.10";
const HAS_MOSQUITTO = (() => {
  try {
    return new Deno.Command("mosquitto", { args: ["-h"], stdout: "null", stderr: "null" }).outputSync() !==
      undefined;
  } catch {
    return false;
  }
})();

// ------------------------------------------------------------------------------------------- helpers

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function until(cond: () => boolean, what: string, timeoutMs = 4000): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

async function portOpen(port: number): Promise<boolean> {
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port });
    c.close();
    return true;
  } catch {
    return false;
  }
}

/** A broker that can be stopped and started again on the same port. */
interface TestBroker {
  readonly port: number;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** aedes in this process; every start is a fresh broker (a restart forgets all sessions). */
class AedesBroker implements TestBroker {
  readonly port = freePort();
  #broker: Aedes | undefined;
  #server: net.Server | undefined;
  readonly #sockets = new Set<net.Socket>();

  async start(): Promise<void> {
    const broker = await Aedes.createBroker();
    const server = net.createServer({ noDelay: true }, (s) => {
      this.#sockets.add(s);
      s.on("close", () => this.#sockets.delete(s));
      broker.handle(s);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => resolve());
    });
    this.#broker = broker;
    this.#server = server;
  }

  async stop(): Promise<void> {
    const server = this.#server, broker = this.#broker;
    this.#server = undefined;
    this.#broker = undefined;
    if (!server || !broker) return;
    const closed = new Promise<void>((r) => server.close(() => r()));
    for (const s of this.#sockets) s.destroy();
    await closed;
    await new Promise<void>((r) => broker.close(() => r()));
  }
}

/** mosquitto as a child process (killed by PID). */
class MosquittoBroker implements TestBroker {
  readonly port = freePort();
  #child: Deno.ChildProcess | undefined;
  #dir: string | undefined;

  async start(): Promise<void> {
    this.#dir ??= await Deno.makeTempDir({ prefix: "control_mqtt_" });
    const conf = `${this.#dir}/mosquitto.conf`;
    await Deno.writeTextFile(
      conf,
      `listener ${this.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\n` +
        `log_dest none\n`,
    );
    this.#child = new Deno.Command("mosquitto", { args: ["-c", conf], stdout: "null", stderr: "null" })
      .spawn();
    const end = performance.now() + 5000;
    while (!(await portOpen(this.port))) {
      if (performance.now() > end) throw new Error("mosquitto did not start");
      await sleep(20);
    }
  }

  async stop(): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    if (!child) return;
    try {
      Deno.kill(child.pid, "SIGTERM");
    } catch { /* already gone */ }
    await child.status;
  }

  async remove(): Promise<void> {
    await this.stop();
    if (this.#dir) await Deno.remove(this.#dir, { recursive: true });
  }
}

interface Seen {
  topic: string;
  raw: string;
  body: unknown;
}

interface SipEntry {
  IpType: string;
  Address: string;
  Address_v6: string;
}

interface ClusterInstance {
  instance_number: number;
  instance_ip: string;
  instance_ip_v6: string;
  cluster_id: string;
  namespace_ip?: string;
  namespace_ip_v6?: string;
  host_ip?: string;
  host_port?: number;
  worker_id?: string;
}

interface ClusterJob {
  service_ip_list: SipEntry[];
  instance_list: ClusterInstance[];
}

/** Oakestra's cluster service manager, as far as a node can tell (interfaces/mqtt_client.py). */
class FakeCluster {
  readonly seen: Seen[] = [];
  readonly jobs = new Map<string, ClusterJob>();
  /** How subnet requests are answered. */
  subnet: "answer" | "mute" | "malformed" = "answer";
  /** Table queries: answered (after `queryDelayMs`) or ignored. */
  queries: "answer" | "mute" = "answer";
  queryDelayMs = 0;
  subscribed = 0;
  readonly client: MqttClient;

  private constructor(client: MqttClient) {
    this.client = client;
  }

  static async start(port: number): Promise<FakeCluster> {
    // paho-like: no client id of its own, clean session, subscribe in on_connect.
    const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
      reconnectPeriod: 50,
      resubscribe: false,
      keepalive: 5,
    });
    const c = new FakeCluster(client);
    client.on("connect", () => {
      client.subscribeAsync("nodes/+/net/#", { qos: 1 }).then(() => c.subscribed++, () => {});
    });
    client.on("error", () => {});
    client.on("message", (topic: string, payload: Uint8Array) => c.#onMessage(topic, payload));
    await until(() => c.subscribed > 0, "fake cluster subscribed");
    return c;
  }

  close(): Promise<void> {
    return this.client.endAsync(true);
  }

  /** Messages from nodes whose topic ends with `suffix`. */
  msgs(suffix: string): Seen[] {
    return this.seen.filter((m) => m.topic.endsWith(suffix));
  }

  queriesFor(key: { sip?: string; sname?: string }): number {
    return this.msgs("/tablequery/request").filter((m) => {
      const b = m.body as { sip: string; sname: string };
      return key.sip !== undefined ? b.sip === key.sip : b.sname === key.sname;
    }).length;
  }

  publish(topic: string, body: unknown): Promise<unknown> {
    return this.client.publishAsync(topic, typeof body === "string" ? body : JSON.stringify(body), {
      qos: 1,
    });
  }

  publishUpdate(job: string, type = "DEPLOYMENT"): Promise<unknown> {
    return this.publish(`jobs/${job}/updates_available`, { type });
  }

  #onMessage(topic: string, payload: Uint8Array): void {
    const raw = new TextDecoder().decode(payload);
    let body: unknown;
    try {
      body = JSON.parse(raw);
    } catch {
      body = undefined;
    }
    this.seen.push({ topic, raw, body });
    const parts = topic.split("/");
    const clientId = parts[1];
    const p = (body ?? {}) as Record<string, unknown>;
    if (/^nodes\/.*\/net\/tablequery\/request/.test(topic)) this.#tableQuery(clientId, p);
    else if (/^nodes\/.*\/net\/service\/deployed/.test(topic)) this.#deployed(clientId, p);
    else if (/^nodes\/.*\/net\/subnet/.test(topic) && p.METHOD === "GET") this.#subnet(clientId);
  }

  #subnet(clientId: string): void {
    if (this.subnet === "mute") return;
    const body = this.subnet === "answer"
      ? { address: "10.18.0.64", addressv6: "fc00::" }
      : { address: "", addressv6: "fc00::" };
    void this.publish(`nodes/${clientId}/net/subnetwork/result`, body);
  }

  #deployed(clientId: string, p: Record<string, unknown>): void {
    const job = this.jobs.get(String(p.appname));
    const inst = job?.instance_list.find((i) => i.instance_number === p.instance_number);
    if (!inst) return; // the cluster logs an error and discards it
    inst.namespace_ip = String(p.nsip);
    inst.namespace_ip_v6 = String(p.nsipv6);
    inst.host_ip = String(p.host_ip);
    inst.host_port = parseInt(String(p.host_port));
    inst.worker_id = clientId;
  }

  #findByIp(ip: string): string | undefined {
    for (const [name, j] of this.jobs) {
      if (j.service_ip_list.some((s) => s.Address === ip || s.Address_v6 === ip)) return name;
      if (j.instance_list.some((i) => i.instance_ip === ip || i.instance_ip_v6 === ip)) return name;
    }
    return undefined;
  }

  #tableQuery(clientId: string, p: Record<string, unknown>): void {
    if (this.queries === "mute") return;
    const sname = typeof p.sname === "string" ? p.sname : "";
    const sip = typeof p.sip === "string" ? p.sip : "";
    let serviceName = sname;
    let queryKey = "";
    let job: ClusterJob | undefined;
    if (sip !== "") {
      queryKey = sip;
      const name = this.#findByIp(sip);
      if (name) {
        serviceName = name;
        job = this.jobs.get(name);
      }
    } else if (sname !== "") {
      queryKey = sname;
      job = this.jobs.get(sname);
    }
    // format_instance_response: service_ip = copy of the job's list + this instance's instance_ip.
    const instanceList = (job?.instance_list ?? []).map((i) => ({
      ...structuredClone(i),
      service_ip: [
        ...structuredClone(job!.service_ip_list),
        { IpType: "instance_ip", Address: i.instance_ip, Address_v6: i.instance_ip_v6 },
      ],
    }));
    const result = { app_name: serviceName, instance_list: instanceList, query_key: queryKey };
    const send = () => void this.publish(`nodes/${clientId}/net/tablequery/result`, result);
    if (this.queryDelayMs > 0) setTimeout(send, this.queryDelayMs);
    else send();
  }

  /** Adds a job with RR `10.30.<n>.1` and instances `10.30.<n>.<2+k>` placed on `host`. */
  addJob(name: string, n: number, instances: number, host = "192.0.2.20"): void {
    this.jobs.set(name, {
      service_ip_list: [{ IpType: "RR", Address: `10.30.${n}.1`, Address_v6: `fdff:2000::${n}:1` }],
      instance_list: [],
    });
    for (let k = 0; k < instances; k++) this.addInstance(name, n, k, host);
  }

  addInstance(name: string, n: number, k: number, host = "192.0.2.20", deployed = true): void {
    const j = this.jobs.get(name)!;
    j.instance_list.push({
      instance_number: k,
      instance_ip: `10.30.${n}.${2 + k}`,
      instance_ip_v6: `fdff::${n}:${2 + k}`,
      cluster_id: "6600c0ffee00000000000001",
      ...(deployed
        ? {
          namespace_ip: `10.18.${n}.${66 + k}`,
          namespace_ip_v6: `fc00::${n}:${2 + k}`,
          host_ip: host,
          host_port: 50103,
          worker_id: "65f0c0ffee00000000000099",
        }
        : {}),
    });
  }
}

/** A TableSink over a real TranslationTable that records every call. */
class RecordingSink implements TableSink {
  readonly table = new TranslationTable();
  readonly ops: string[] = [];
  replaceJob(job: string, entries: TableEntry[]): void {
    this.ops.push(`replace ${job} ${entries.length}`);
    this.table.replaceJob(job, entries);
  }
  removeJob(job: string): void {
    this.ops.push(`remove ${job}`);
    this.table.removeJob(job);
  }
  hasJob(job: string): boolean {
    return this.table.hasJob(job);
  }
}

interface World {
  broker: TestBroker;
  cluster: FakeCluster;
  sink: RecordingSink;
  hostedJobs: Set<string>;
  control: NodeControl;
}

type Kind = "aedes" | "mosquitto";

async function withWorld(
  kind: Kind,
  opts: Partial<ControlOptions>,
  fn: (w: World) => Promise<void>,
): Promise<void> {
  const broker = kind === "aedes" ? new AedesBroker() : new MosquittoBroker();
  let cluster: FakeCluster | undefined;
  let control: NodeControl | undefined;
  try {
    await broker.start();
    cluster = await FakeCluster.start(broker.port);
    const sink = new RecordingSink();
    const hostedJobs = new Set<string>();
    control = await NodeControl.connect({
      host: "127.0.0.1",
      port: broker.port,
      workerId: ID,
      sink,
      isHosted: (j) => hostedJobs.has(j),
      hostIp: () => HOST_IP,
      hostPort: 50103,
      queryTimeoutMs: 400,
      interestIdleMs: 400,
      subnetTimeoutMs: 400,
      connectTimeoutMs: 3000,
      reconnectPeriodMs: 100,
      resyncDelayMs: 300,
      ...opts,
    });
    await fn({ broker, cluster, sink, hostedJobs, control });
  } finally {
    await control?.close();
    await cluster?.close();
    if (broker instanceof MosquittoBroker) await broker.remove();
    else await broker.stop();
  }
}

const J1 = "app1.ns.web.ns";
const J2 = "app2.ns.db.ns";
const J3 = "app3.ns.cache.ns";

// --------------------------------------------------------------------------------------------- tests

for (const kind of ["aedes", "mosquitto"] as const) {
  const ignore = kind === "mosquitto" && !HAS_MOSQUITTO;
  const t = (name: string, fn: () => Promise<void>) =>
    Deno.test({ name: `control over ${kind}: ${name}`, ignore, fn });

  t("subnet request answered", () =>
    withWorld(kind, {}, async ({ cluster, control }) => {
      const s = await control.requestSubnet();
      assertEquals(s, { v4: "10.18.0.64", v6: "fc00::" });
      const req = cluster.msgs("/net/subnet");
      assertEquals(req.length, 1);
      assertEquals(req[0].topic, `nodes/${ID}/net/subnet`);
      assertEquals(req[0].raw, `{"METHOD":"GET"}`);
      assert(control.connected);
    }));

  t(
    "subnet request without answer fails clearly within the timeout",
    () =>
      withWorld(kind, { subnetTimeoutMs: 300 }, async ({ cluster, control }) => {
        cluster.subnet = "mute";
        const t0 = performance.now();
        const e = await assertRejects(() => control.requestSubnet(), ControlError, "no valid subnet");
        const took = performance.now() - t0;
        assert(took >= 290 && took < 1000, `took ${took} ms`);
        assertMatch(e.message, /300 ms/);
        // An invalid answer is ignored and named in the error.
        cluster.subnet = "malformed";
        await assertRejects(() => control.requestSubnet(), ControlError, "last answer");
        // And a good one afterwards still works.
        cluster.subnet = "answer";
        assertEquals((await control.requestSubnet()).v4, "10.18.0.64");
      }),
  );

  t(
    "concurrent resolveIp for one ServiceIP share one request; result applied and interest registered",
    () =>
      withWorld(kind, {}, async ({ cluster, sink, control }) => {
        cluster.addJob(J1, 1, 2);
        cluster.queryDelayMs = 100;
        const first = Array.from({ length: 10 }, () => control.resolveIp("10.30.1.1"));
        await sleep(30);
        const later = Array.from({ length: 5 }, () => control.resolveIp("10.30.1.1"));
        const all = await Promise.all([...first, ...later]);
        assert(all.every((x) => x === true), JSON.stringify(all));
        assertEquals(cluster.queriesFor({ sip: "10.30.1.1" }), 1);
        assertEquals(cluster.msgs("/tablequery/request")[0].raw, `{"sname":"","sip":"10.30.1.1"}`);
        assertEquals(control.stats.queriesCoalesced, 14);
        assertEquals(sink.ops, [`replace ${J1} 2`]);
        // Entries carry the RR and the instance IP ("instance_ip" → Instance kind), numeric host_port.
        const g = sink.table.service4(parseIPv4("10.30.1.1"))!;
        assertEquals(g.kind, "RoundRobin");
        assertEquals(g.entries.length, 2);
        const inst = sink.table.service4(parseIPv4("10.30.1.3"))!;
        assertEquals(inst.kind, "Instance");
        assertEquals(inst.entries[0].nodePort, 50103);
        assertEquals(control.interests(), [J1]);
        // The instance IP of the same job resolves from the result too (v6 as well, any spelling).
        cluster.queryDelayMs = 0;
        assert(await control.resolveIp("FDFF::1:2"));
        assertEquals(cluster.queriesFor({ sip: "fdff::1:2" }), 1);
      }),
  );

  t(
    "unknown ServiceIP resolves false; a timeout clears the key so the next query is sent",
    () =>
      withWorld(kind, { negativeTtlMs: 200 }, async ({ cluster, control }) => {
        assertEquals(await control.resolveIp("10.30.9.9"), false); // cluster: app_name "" → unknown
        assertEquals(await control.resolveIp("10.30.9.9"), false); // negative cache: not asked again
        assertEquals(cluster.queriesFor({ sip: "10.30.9.9" }), 1);
        await sleep(250);
        assertEquals(await control.resolveIp("10.30.9.9"), false);
        assertEquals(cluster.queriesFor({ sip: "10.30.9.9" }), 2);

        cluster.addJob(J1, 1, 1);
        cluster.queries = "mute";
        const t0 = performance.now();
        const [a, b] = await Promise.all([control.resolveIp("10.30.1.1"), control.resolveIp("10.30.1.1")]);
        const took = performance.now() - t0;
        assertEquals([a, b], [false, false]);
        assert(took >= 390 && took < 1200, `took ${took} ms`);
        assertEquals(cluster.queriesFor({ sip: "10.30.1.1" }), 1);
        assertEquals(control.stats.queryTimeouts, 1);
        cluster.queries = "answer";
        assertEquals(await control.resolveIp("10.30.1.1"), true); // not stuck
        assertEquals(cluster.queriesFor({ sip: "10.30.1.1" }), 2);
      }),
  );

  t(
    "updates_available → refresh by name → sink updated (deploy, undeploy, gone)",
    () =>
      withWorld(kind, { interestIdleMs: 5000 }, async ({ cluster, sink, control }) => {
        cluster.addJob(J1, 1, 1);
        assert(await control.resolveIp("10.30.1.1"));
        assertEquals(sink.table.job(J1).length, 1);

        cluster.addInstance(J1, 1, 1);
        await cluster.publishUpdate(J1, "DEPLOYMENT");
        await until(() => sink.table.job(J1).length === 2, "second instance in the table");
        assertEquals(cluster.queriesFor({ sname: J1 }), 1);
        assertEquals(cluster.msgs("/tablequery/request").at(-1)!.raw, `{"sname":"${J1}","sip":""}`);

        cluster.jobs.get(J1)!.instance_list.shift();
        await cluster.publishUpdate(J1, "UNDEPLOYMENT");
        await until(() => sink.table.job(J1).length === 1, "instance 0 gone");
        assertEquals(sink.table.job(J1)[0].instance, 1);

        cluster.jobs.get(J1)!.instance_list.length = 0;
        await cluster.publishUpdate(J1, "UNDEPLOYMENT");
        await until(() => !sink.table.hasJob(J1), "job removed");
        assertEquals(sink.ops.at(-1), `remove ${J1}`);

        // Updates for jobs without interest are ignored.
        cluster.addJob(J2, 2, 1);
        await cluster.publishUpdate(J2);
        await sleep(100);
        assertEquals(cluster.queriesFor({ sname: J2 }), 0);
        assertEquals(control.stats.updates >= 3, true);
      }),
  );

  t(
    "idle interests expire: interest/remove, unsubscribe, removed from the sink; not hosted or touched ones",
    () =>
      withWorld(kind, { interestIdleMs: 300 }, async ({ cluster, sink, control, hostedJobs }) => {
        cluster.addJob(J1, 1, 1);
        cluster.addJob(J2, 2, 1);
        cluster.addJob(J3, 3, 1);
        hostedJobs.add(J2);
        assert(await control.resolveIp("10.30.1.1"));
        // J1's last use was its query (just now): the other queries may be slow on a busy machine.
        const t0 = performance.now();
        assert(await control.resolveIp("10.30.2.1"));
        assert(await control.resolveIp("10.30.3.1"));
        const toucher = setInterval(() => control.touch(J3), 50);
        try {
          await until(() => !sink.table.hasJob(J1), "J1 expired", 2000);
          const took = performance.now() - t0;
          assert(took >= 250, `expired after ${took} ms`);
          await until(() => cluster.msgs("/interest/remove").length === 1, "interest/remove");
          const rm = cluster.msgs("/interest/remove")[0];
          assertEquals(rm.topic, `nodes/${ID}/net/interest/remove`);
          assertEquals(rm.raw, `{"appname":"${J1}"}`);
          await sleep(700); // > 2 idle periods
          assert(sink.table.hasJob(J2), "hosted job kept");
          assert(sink.table.hasJob(J3), "touched job kept");
          assertEquals(cluster.msgs("/interest/remove").length, 1);
          assertEquals(control.interests().sort(), [J2, J3].sort());
        } finally {
          clearInterval(toucher);
        }
        // Unsubscribed: an update for J1 no longer triggers a query.
        await cluster.publishUpdate(J1);
        await sleep(150);
        assertEquals(cluster.queriesFor({ sname: J1 }), 0);
        // J3 expires once no longer touched.
        await until(() => !sink.table.hasJob(J3), "J3 expired", 2000);
        await until(() => cluster.msgs("/interest/remove").length === 2, "second interest/remove");
        assertEquals((cluster.msgs("/interest/remove")[1].body as { appname: string }).appname, J3);
        assert(sink.table.hasJob(J2));
      }),
  );

  t(
    "deployed publishes the exact payload, refreshes by name and keeps the job",
    () =>
      withWorld(kind, { interestIdleMs: 300 }, async ({ cluster, sink, control }) => {
        cluster.addJob(J1, 1, 0);
        cluster.addInstance(J1, 1, 0, "", false); // scheduled, not yet deployed: no nsip at the cluster
        const ok = await control.deployed(J1, 0, "10.18.0.66", "fc00::2");
        assert(ok);
        const d = cluster.msgs("/service/deployed");
        assertEquals(d.length, 1);
        assertEquals(d[0].topic, `nodes/${ID}/net/service/deployed`);
        assertEquals(
          d[0].raw,
          `{"appname":"${J1}","status":"DEPLOYED","instance_number":0,"nsip":"10.18.0.66","nsipv6":"fc00::2",` +
            `"host_port":"50103","host_ip":"${HOST_IP}"}`,
        );
        assertEquals(cluster.queriesFor({ sname: J1 }), 1);
        // The node learned its own instance's Instance IP.
        const e = sink.table.byNsip("10.18.0.66")!;
        assertEquals(e.job, J1);
        assertEquals(e.nodeIp, HOST_IP);
        assert(sink.table.service4(parseIPv4("10.30.1.2")) !== undefined);
        assertEquals(control.interests(), [J1]);
        assertEquals(control.hosted(), [{ job: J1, instance: 0, nsip: "10.18.0.66", nsipv6: "fc00::2" }]);
        // Hosted: never expires.
        await sleep(800);
        assert(sink.table.hasJob(J1));
        assertEquals(cluster.msgs("/interest/remove").length, 0);
        // Address change: one address-changed per hosted instance, host_port as string.
        await control.addressChanged(HOST_IP, "192.0.2.11");
        const ac = cluster.msgs("/service/address-changed");
        assertEquals(ac.length, 1);
        assertEquals(
          ac[0].raw,
          `{"appname":"${J1}","status":"","instance_number":0,"nsip":"","nsipv6":"","host_port":"50103",` +
            `"host_ip":"192.0.2.11"}`,
        );
        // Undeployed: the interest ages like any other and expires.
        control.undeployed(J1, 0);
        assertEquals(control.hosted(), []);
        await until(
          () => cluster.msgs("/interest/remove").length === 1,
          "interest/remove after undeploy",
          2000,
        );
        assert(!sink.table.hasJob(J1));
      }),
  );

  t(
    "reconnect after a broker restart: resubscribed, re-announced, interests refreshed",
    () =>
      withWorld(kind, { interestIdleMs: 10000 }, async ({ broker, cluster, sink, control }) => {
        cluster.addJob(J1, 1, 0);
        cluster.addInstance(J1, 1, 0, "", false);
        cluster.addJob(J2, 2, 1);
        assert(await control.deployed(J1, 0, "10.18.0.66", "fc00::2"));
        assert(await control.resolveIp("10.30.2.1"));
        assertEquals(sink.table.job(J2).length, 1);
        const subs = cluster.subscribed;

        await broker.stop();
        await until(() => !control.connected, "node noticed the broker is gone");
        // Changes at the cluster while the node is offline (their updates_available would be lost).
        cluster.addInstance(J2, 2, 1);
        assertEquals(await control.resolveIp("10.30.7.7"), false); // offline: fails fast, no hang
        await broker.start();
        await until(() => cluster.subscribed > subs, "cluster resubscribed");
        await until(() => control.connected && control.stats.connects === 2, "node reconnected");
        await control.whenSynced();

        await until(() => cluster.msgs("/service/deployed").length === 2, "re-announced");
        assertEquals(cluster.msgs("/service/deployed")[1].raw, cluster.msgs("/service/deployed")[0].raw);
        await until(() => sink.table.job(J2).length === 2, "J2 refreshed with the offline change");
        assertEquals(cluster.queriesFor({ sname: J2 }), 1);
        assertEquals(cluster.queriesFor({ sname: J1 }), 2);
        // Resubscribed: updates arrive again.
        cluster.addInstance(J2, 2, 2);
        await cluster.publishUpdate(J2);
        await until(() => sink.table.job(J2).length === 3, "update after reconnect");
        // Table queries work again.
        cluster.addJob(J3, 3, 1);
        assert(await control.resolveIp("10.30.3.1"));
      }),
  );

  t(
    "route validation: unasked results ignored; a result with only bad entries is refused and the query waits on",
    () => {
      // This node: 10.18.200.0/26 at HOST_IP; the cluster's instances live on 192.0.2.20.
      const ctx = (sink: RecordingSink): RouteContext => ({
        overlay4: parsePrefix4("10.16.0.0/12"),
        overlay6: parsePrefix6("fc00::/7"),
        service4: parsePrefix4("10.30.0.0/16"),
        service6: parsePrefix6("fdff::/16"),
        subnet4: parsePrefix4("10.18.200.0/26"),
        subnet6: parsePrefix6("fc00::c800:0/120"),
        selfIps: [HOST_IP],
        selfPort: 50103,
        isOwnInstance: () => false,
        serviceOwner4: (a) => sink.table.service4(a)?.entries.map((e) => e.job),
        serviceOwner6: (a) => sink.table.service6(a)?.entries.map((e) => e.job),
      });
      let sinkRef: RecordingSink | undefined;
      return withWorld(
        kind,
        { queryTimeoutMs: 2000, interestIdleMs: 10000, routeContext: () => ctx(sinkRef!) },
        async ({ cluster, sink, control }) => {
          sinkRef = sink;
          const res = `nodes/${ID}/net/tablequery/result`;
          cluster.addJob(J1, 1, 2);
          const hostile = (over: Record<string, unknown>) => ({
            app_name: J1,
            query_key: "10.30.1.1",
            instance_list: cluster.jobs.get(J1)!.instance_list.map((i) => ({
              ...i,
              service_ip: [...cluster.jobs.get(J1)!.service_ip_list],
              ...over,
            })),
          });
          // Nobody asked: ignored, even for a job this node is about to follow.
          await cluster.publish(res, hostile({ host_ip: "192.0.2.66" }));
          // The cluster answers late; a forged answer with only bad entries comes first.
          cluster.queryDelayMs = 300;
          const p = control.resolveIp("10.30.1.1");
          await until(() => cluster.queriesFor({ sip: "10.30.1.1" }) === 1, "query sent");
          await cluster.publish(res, hostile({ host_ip: "127.0.0.1" }));
          await cluster.publish(res, hostile({ namespace_ip: "10.18.200.5" }));
          assert(await p, "the real answer still resolves the query");
          assertEquals(sink.ops, [`replace ${J1} 2`]);
          assert(sink.table.job(J1).every((e) => e.nodeIp === "192.0.2.20"));
          assertEquals(control.stats.unsolicited, 1);
          assertEquals(control.stats.resultsRefused, 2);
          // (the second instance claiming the same namespace IP is already dropped as a duplicate)
          assertEquals(control.rejections.counts, { unsolicited: 1, host_loopback: 2, nsip_own_subnet: 1 });
          // Per entry: a refresh answer with one bad instance applies the good one.
          cluster.queryDelayMs = 0;
          cluster.jobs.get(J1)!.instance_list[1].host_ip = "224.0.0.1";
          await sleep(200); // the subscription to J1's updates follows the answer
          await cluster.publishUpdate(J1);
          await until(() => sink.ops.length === 2, "refresh applied");
          assertEquals(sink.ops[1], `replace ${J1} 1`);
          assertEquals(control.rejections.counts.host_multicast, 1);
          // A ServiceIP bound to another job is refused for the newcomer.
          cluster.addJob(J2, 2, 1);
          cluster.jobs.get(J2)!.service_ip_list[0].Address = "10.30.1.1";
          assertEquals(await control.resolveIp("10.30.2.2"), false);
          assertEquals(control.rejections.counts.service_ip_taken, 1);
          assert(!sink.table.hasJob(J2));
        },
      );
    },
  );

  t(
    "malformed payloads are ignored; lenient where the contract allows",
    () =>
      withWorld(kind, { queryTimeoutMs: 1500, interestIdleMs: 10000 }, async ({ cluster, sink, control }) => {
        cluster.addJob(J1, 1, 1);
        assert(await control.resolveIp("10.30.1.1")); // interest in J1: its updates reach the node
        cluster.jobs.clear();
        sink.ops.length = 0;
        const res = `nodes/${ID}/net/tablequery/result`;
        await cluster.publish(res, "not json {");
        await cluster.publish(res, { app_name: 5 });
        await cluster.publish(res, [1, 2]);
        await cluster.publish(res, { app_name: "bad name", query_key: "", instance_list: [] });
        await cluster.publish(`nodes/${ID}/net/subnetwork/result`, { address: "x" });
        await cluster.publish(`jobs/${J1}/updates_available`, "[");
        await cluster.publish(`jobs/${J1}/updates_available`, { nope: 1 });
        await cluster.publishUpdate(J1, "DEPLOYMENT"); // a good one after the bad ones: still served
        await until(() => cluster.queriesFor({ sname: J1 }) === 1, "update still handled");
        await until(() => sink.ops.length === 1, "refresh applied");
        assertEquals(sink.ops, [`remove ${J1}`]); // the cluster forgot J1: empty answer by name
        assertEquals(control.stats.malformed, 6);
        assert(control.connected);

        // A malformed answer naming our query_key releases the waiter at once (not after the timeout).
        cluster.queries = "mute";
        const t0 = performance.now();
        const p = control.resolveIp("10.30.5.1");
        await until(() => cluster.queriesFor({ sip: "10.30.5.1" }) === 1, "query sent");
        await cluster.publish(res, { app_name: null, query_key: "10.30.5.1", instance_list: [] });
        assertEquals(await p, false);
        assert(performance.now() - t0 < 1000);

        // host_port as a numeric string, unknown keys, an undeployed instance and a bad one are fine.
        const p2 = control.resolveIp("10.30.6.1");
        await until(() => cluster.queriesFor({ sip: "10.30.6.1" }) === 1, "query sent");
        await cluster.publish(res, {
          app_name: J2,
          query_key: "10.30.6.1",
          extra: { anything: true },
          instance_list: [
            {
              instance_number: 0,
              instance_ip: "10.30.6.2",
              instance_ip_v6: "fdff::6:2",
              namespace_ip: "10.18.6.66",
              namespace_ip_v6: "fc00::6:2",
              host_ip: "192.0.2.30",
              host_port: "50103",
              cluster_id: "c",
              worker_id: "w",
              new_field: [1],
              service_ip: [
                { IpType: "RR", Address: "10.30.6.1", Address_v6: "fdff:2000::6:1", Note: "x" },
                { IpType: "instance_ip", Address: "10.30.6.2", Address_v6: "fdff::6:2" },
              ],
            },
            { instance_number: 1, instance_ip: "10.30.6.3", cluster_id: "c" }, // scheduled, not deployed
            { instance_number: 2, namespace_ip: "nope", host_ip: "192.0.2.30", host_port: 1 },
          ],
        });
        assertEquals(await p2, true);
        assertEquals(sink.table.job(J2).length, 1);
        assertEquals(sink.table.job(J2)[0].nodePort, 50103);
      }),
  );
}

Deno.test({
  name: "control: broker unreachable → ControlError within the connect timeout",
  fn: async () => {
    const port = freePort(); // nothing listens there
    const t0 = performance.now();
    const e = await assertRejects(
      () =>
        NodeControl.connect({
          host: "127.0.0.1",
          port,
          workerId: ID,
          sink: new RecordingSink(),
          isHosted: () => false,
          hostIp: () => HOST_IP,
          hostPort: 50103,
          connectTimeoutMs: 500,
          reconnectPeriodMs: 100,
        }),
      ControlError,
      `cannot reach MQTT broker mqtt://127.0.0.1:${port} within 500 ms`,
    );
    const took = performance.now() - t0;
    assert(took >= 490 && took < 1500, `took ${took} ms`);
    assertMatch(e.message, /ECONNREFUSED/);
    // Bad options are refused before connecting.
    await assertRejects(
      () =>
        NodeControl.connect({
          host: "127.0.0.1",
          port,
          workerId: "a/b",
          sink: new RecordingSink(),
          isHosted: () => false,
          hostIp: () => HOST_IP,
          hostPort: 50103,
        }),
      ControlError,
      "worker id",
    );
  },
});

const HAS_OPENSSL = (() => {
  try {
    return new Deno.Command("openssl", { args: ["version"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
})();

async function run(cmd: string, args: string[], cwd: string): Promise<void> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "null", stderr: "piped" }).output();
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

/** A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (EC P-256, 1 day). */
async function makeCerts(dir: string): Promise<void> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await run("openssl", [
    "req",
    "-x509",
    ...ec,
    "-keyout",
    "ca.key",
    "-out",
    "ca.crt",
    "-days",
    "1",
    "-subj",
    "/CN=test-ca",
  ], dir);
  await Deno.writeTextFile(`${dir}/san.ext`, "subjectAltName=IP:127.0.0.1\n");
  for (const [name, cn, ext] of [["server", "127.0.0.1", true], ["client", ID, false]] as const) {
    await run("openssl", [
      "req",
      ...ec,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.csr`,
      "-subj",
      `/CN=${cn}`,
    ], dir);
    await run("openssl", [
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.crt",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      `${name}.crt`,
      "-days",
      "1",
      ...(ext ? ["-extfile", "san.ext"] : []),
    ], dir);
  }
}

Deno.test({
  name:
    "control over mosquitto: mTLS (MqttCert/MqttKey) → mqtts; untrusted server or missing files → ControlError",
  ignore: !HAS_MOSQUITTO || !HAS_OPENSSL,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "control_tls_" });
    const tlsPort = freePort();
    const plainPort = freePort();
    let child: Deno.ChildProcess | undefined;
    let cluster: FakeCluster | undefined;
    let control: NodeControl | undefined;
    try {
      await makeCerts(dir);
      // mosquitto started as root drops to its own user before reading the key files.
      await Deno.chmod(dir, 0o755);
      for (const f of ["ca.crt", "server.crt", "server.key"]) await Deno.chmod(`${dir}/${f}`, 0o644);
      await Deno.writeTextFile(
        `${dir}/mosquitto.conf`,
        [
          `allow_anonymous true`,
          `persistence false`,
          `log_dest none`,
          `set_tcp_nodelay true`,
          `listener ${tlsPort} 127.0.0.1`,
          `cafile ${dir}/ca.crt`,
          `certfile ${dir}/server.crt`,
          `keyfile ${dir}/server.key`,
          `require_certificate true`,
          `use_identity_as_username true`,
          `listener ${plainPort} 127.0.0.1`,
          ``,
        ].join("\n"),
      );
      child = new Deno.Command("mosquitto", {
        args: ["-c", `${dir}/mosquitto.conf`],
        stdout: "null",
        stderr: "null",
      })
        .spawn();
      const end = performance.now() + 5000;
      while (!(await portOpen(tlsPort)) || !(await portOpen(plainPort))) {
        if (performance.now() > end) throw new Error("mosquitto did not start");
        await sleep(20);
      }
      cluster = await FakeCluster.start(plainPort);
      const base = {
        host: "127.0.0.1",
        port: tlsPort,
        workerId: ID,
        sink: new RecordingSink(),
        isHosted: () => false,
        hostIp: () => HOST_IP,
        hostPort: 50103,
        connectTimeoutMs: 3000,
        reconnectPeriodMs: 100,
      };
      control = await NodeControl.connect({
        ...base,
        tls: { cert: `${dir}/client.crt`, key: `${dir}/client.key`, ca: `${dir}/ca.crt` },
      });
      assertEquals(await control.requestSubnet(), { v4: "10.18.0.64", v6: "fc00::" });
      assertEquals(cluster.msgs("/net/subnet")[0].topic, `nodes/${ID}/net/subnet`);
      await control.close();
      control = undefined;

      // The server's CA is not in the system pool: verification fails, clearly and in time.
      const e = await assertRejects(
        () =>
          NodeControl.connect({
            ...base,
            connectTimeoutMs: 800,
            tls: { cert: `${dir}/client.crt`, key: `${dir}/client.key` },
          }),
        ControlError,
        `cannot reach MQTT broker mqtts://127.0.0.1:${tlsPort} within 800 ms`,
      );
      assertMatch(e.message, /cert|issuer|verify|unknown/i);
      await assertRejects(
        () => NodeControl.connect({ ...base, tls: { cert: `${dir}/nope.crt`, key: `${dir}/client.key` } }),
        ControlError,
        "cannot read MQTT TLS files",
      );
    } finally {
      await control?.close();
      await cluster?.close();
      if (child) {
        try {
          Deno.kill(child.pid, "SIGTERM");
        } catch { /* gone */ }
        await child.status;
      }
      await Deno.remove(dir, { recursive: true });
    }
  },
});
