/**
 * The control plane end to end on loopback (no privileges needed): the service with its embedded
 * broker and with a real mosquitto, nodes played by npm:mqtt clients that speak exactly like
 * Oakestra's Go NetManager (topics, payloads, QoS 1, client id = worker id), the HTTP API, restarts
 * with the same state directory, malformed input. Also the CLI as subprocesses.
 */
import mqtt from "mqtt";
import type net from "node:net";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { freePort } from "../helpers/netns.ts";
import { hasEtcd, startEtcd } from "../helpers/etcd.ts";
import { SqliteStore, startControl } from "../../src/cluster/mod.ts";
import { QueryResultSchema, toEntries } from "../../src/table/query_result.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const WEB = "shop.prod.web.v1";
const DB = "shop.prod.db.v1";
const WEB_ID = "6650f1c2a41b9e03d7000001";

// ---------------------------------------------------------------------------------------------
// helpers

function hasMosquitto(): boolean {
  try {
    return Deno.statSync("/usr/sbin/mosquitto").isFile;
  } catch {
    return false;
  }
}

/** A mosquitto child process on 127.0.0.1:<port> (default: a free one); stopped by PID. */
async function startMosquitto(
  dir: string,
  port = freePort(),
): Promise<{ url: string; stop: () => Promise<void> }> {
  const conf = `${dir}/mosquitto.conf`;
  await Deno.writeTextFile(
    conf,
    `listener ${port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\n`,
  );
  const child = new Deno.Command("/usr/sbin/mosquitto", {
    args: ["-c", conf],
    stdout: "null",
    stderr: "piped",
  })
    .spawn();
  const stop = async () => {
    try {
      Deno.kill(child.pid, "SIGTERM");
    } catch { /* already gone */ }
    await child.stderr.cancel().catch(() => {});
    await child.status;
  };
  for (let k = 0; k < 100; k++) {
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      c.close();
      return { url: `mqtt://127.0.0.1:${port}`, stop };
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  await stop();
  throw new Error("mosquitto did not start");
}

interface Msg {
  topic: string;
  payload: Record<string, unknown>;
}

/** A node as Oakestra's NetManager behaves on MQTT. */
class FakeNode {
  readonly id: string;
  readonly client: mqtt.MqttClient;
  readonly #inbox: Msg[] = [];
  #notify: (() => void) | undefined;

  private constructor(id: string, client: mqtt.MqttClient) {
    this.id = id;
    this.client = client;
    client.on("message", (topic, payload) => {
      let value: Record<string, unknown>;
      try {
        value = JSON.parse(new TextDecoder().decode(payload));
      } catch {
        value = { raw: new TextDecoder().decode(payload) };
      }
      this.#inbox.push({ topic, payload: value });
      this.#notify?.();
    });
  }

  static async connect(
    url: string,
    id: string,
    cred?: { username: string; password: string },
  ): Promise<FakeNode> {
    const client = await mqtt.connectAsync(url, {
      ...(cred ?? {}),
      clientId: id,
      clean: true,
      keepalive: 30,
      reconnectPeriod: 0,
    });
    (client.stream as unknown as net.Socket).setNoDelay?.(true);
    const n = new FakeNode(id, client);
    await client.subscribeAsync(
      [`nodes/${id}/net/subnetwork/result`, `nodes/${id}/net/tablequery/result`],
      { qos: 1 },
    );
    return n;
  }

  /** Waits for (and consumes) the first message matching `pred`. */
  async expect(pred: (m: Msg) => boolean, what: string, timeoutMs = 5000): Promise<Msg> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const k = this.#inbox.findIndex(pred);
      if (k >= 0) return this.#inbox.splice(k, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `${this.id}: no ${what} within ${timeoutMs} ms; inbox ${JSON.stringify(this.#inbox)}`,
        );
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.#notify = () => {
          clearTimeout(t);
          r();
        };
      });
    }
  }

  async publish(suffix: string, payload: unknown): Promise<void> {
    const text = typeof payload === "string" || payload instanceof Uint8Array
      ? payload
      : JSON.stringify(payload);
    await this.client.publishAsync(`nodes/${this.id}/net/${suffix}`, text as string, { qos: 1 });
  }

  async subnet(): Promise<Record<string, unknown>> {
    await this.publish("subnet", { METHOD: "GET" });
    return (await this.expect((m) => m.topic.endsWith("/subnetwork/result"), "subnet result")).payload;
  }

  async query(sname: string, sip: string): Promise<Record<string, unknown>> {
    await this.publish("tablequery/request", { sname, sip });
    const key = sip + sname;
    return (await this.expect(
      (m) => m.topic.endsWith("/tablequery/result") && m.payload.query_key === key,
      `table query result for ${key}`,
    )).payload;
  }

  async follow(job: string): Promise<void> {
    await this.client.subscribeAsync(`jobs/${job}/updates_available`, { qos: 1 });
  }

  async update(job: string, type: string): Promise<void> {
    await this.expect(
      (m) => m.topic === `jobs/${job}/updates_available` && m.payload.type === type,
      `${type} update for ${job}`,
    );
  }

  deployed(job: string, n: number, nsip: string, nsipv6: string, hostIp: string, hostPort: string | number) {
    return this.publish("service/deployed", {
      appname: job,
      status: "DEPLOYED",
      instance_number: n,
      nsip,
      nsipv6,
      host_port: hostPort,
      host_ip: hostIp,
    });
  }

  async close(): Promise<void> {
    await this.client.endAsync().catch(() => {});
  }
}

async function http(
  base: string,
  method: string,
  path: string,
  body?: unknown,
  token?: string,
): Promise<{ status: number; json: Record<string, unknown> & unknown[] }> {
  const res = await fetch(base + path, {
    method,
    ...(token !== undefined ? { headers: { authorization: `Bearer ${token}` } } : {}),
    ...(body !== undefined ? { body: typeof body === "string" ? body : JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, json: JSON.parse(text) };
}

/** Asserts the table-query result is accepted by our node's parser with no instance dropped. */
function checkResult(r: Record<string, unknown>, job: string, instances: number): void {
  const conv = toEntries(QueryResultSchema.parse(r));
  assertEquals(conv.job, job);
  assertEquals(conv.dropped, []);
  assertEquals(conv.entries.length, instances);
}

// ---------------------------------------------------------------------------------------------
// the scenario, once per broker

async function scenario(
  external: (() => Promise<{ url: string; stop: () => Promise<void> }>) | undefined,
  etcd?: string,
) {
  const dir = await Deno.makeTempDir({ prefix: "nmctl-it-" });
  const stateDir = `${dir}/state`;
  const nodes: FakeNode[] = [];
  let broker: { url: string; stop: () => Promise<void> } | undefined;
  let ctl: Awaited<ReturnType<typeof startControl>> | undefined;
  const start = () =>
    startControl({
      stateDir,
      mqttHost: "127.0.0.1",
      mqttPort: 0,
      httpPort: 0,
      ...(broker ? { broker: broker.url } : {}),
      ...(etcd ? { etcd: { endpoints: [etcd], cluster: cluster } } : {}),
    });
  const cluster = `it${crypto.randomUUID().slice(0, 8)}`;
  const api = async (method: string, path: string, body?: unknown) =>
    http(ctl!.httpUrl, method, path, body, (await Deno.readTextFile(ctl!.tokenPath)).trim());
  const node = async (id: string) => {
    // The embedded broker wants each node's own credential (issued over the API); this mosquitto is open.
    let cred: { username: string; password: string } | undefined;
    if (!broker) {
      const r = await api("POST", `/api/net/node/${id}/credential`);
      assertEquals(r.status, 200, JSON.stringify(r.json));
      cred = { username: String(r.json.username), password: String(r.json.password) };
    }
    const n = await FakeNode.connect(broker ? broker.url : ctl!.brokerUrl, id, cred);
    nodes.push(n);
    return n;
  };
  try {
    if (external) broker = await external();
    ctl = await start();

    // Subnets: /26 + /120 in order; the same worker gets its subnet again.
    const w1 = await node("w1");
    const w2 = await node("w2");
    assertEquals(await w1.subnet(), { address: "10.18.0.0", addressv6: "fc00::" });
    assertEquals(await w2.subnet(), { address: "10.18.0.64", addressv6: "fc00::100" });
    assertEquals(await w1.subnet(), { address: "10.18.0.0", addressv6: "fc00::" });

    // Services and instances over HTTP (root service manager style).
    let r = await api("POST", "/api/net/service/deploy", {
      _id: WEB_ID,
      deployment_descriptor: {
        app_name: "shop",
        app_ns: "prod",
        microservice_name: "web",
        microservice_namespace: "v1",
        image: "nginx",
        Closest_ip: "10.30.200.1",
        Closest_ip_v6: "FDFF:1000::0:7",
      },
    });
    assertEquals(r.status, 200);
    assertEquals([
      r.json._id,
      r.json.job_name,
      r.json.RR_ip,
      r.json.RR_ip_v6,
      r.json.Closest_ip,
      r.json.Closest_ip_v6,
    ], [
      WEB_ID,
      WEB,
      "10.30.0.0",
      "fdff:2000::",
      "10.30.200.1",
      "fdff:1000::7",
    ]);
    r = await api("POST", "/api/net/service/deploy", {
      deployment_descriptor: {
        app_name: "shop",
        app_ns: "prod",
        microservice_name: "db",
        microservice_namespace: "v1",
        RR_ip: "10.30.5.5",
        RR_ip_v6: "FDFF:2000::55",
        closest: false,
      },
    });
    assertEquals(r.status, 200);
    assertEquals([r.json.Closest_ip, r.json.Closest_ip_v6, (r.json.service_ip_list as unknown[]).length], [
      "",
      "",
      1,
    ]);
    const dbId = r.json._id as string;
    assertMatch(dbId, /^[0-9a-f]{24}$/);
    assertEquals([r.json.RR_ip, r.json.RR_ip_v6], ["10.30.5.5", "fdff:2000::55"]);
    r = await api("POST", "/api/net/instance/deploy", { _id: WEB_ID, instance_number: 0, cluster_id: "c1" });
    assertEquals([r.status, r.json.instance_ip, r.json.instance_ip_v6, r.json.job_name], [
      200,
      "10.30.0.1",
      "fdff::",
      WEB,
    ]);
    r = await api("POST", "/api/net/instance/deploy", { _id: WEB, instance_number: 1 });
    assertEquals([r.status, r.json.instance_ip, r.json.instance_ip_v6], [200, "10.30.0.2", "fdff::1"]);
    r = await api("POST", "/api/net/instance/deploy", { _id: dbId, instance_number: 0 });
    assertEquals([r.status, r.json.instance_ip, r.json.instance_ip_v6], [200, "10.30.0.3", "fdff::2"]);

    // Nodes report deployments (host_port as a string, as the Go NetManager sends it, or a number).
    await w2.follow(WEB);
    await w2.follow(DB);
    await w1.deployed(WEB, 0, "10.18.0.2", "fc00::2", "127.0.0.11", "50103");
    await w2.update(WEB, "DEPLOYMENT");
    await w2.deployed(WEB, 1, "10.18.0.66", "fc00::102", "127.0.0.12", 50103);
    await w2.update(WEB, "DEPLOYMENT");
    await w2.deployed(DB, 0, "10.18.0.67", "fc00::103", "127.0.0.12", "50103");
    await w2.update(DB, "DEPLOYMENT");

    // Table queries by RR IP, by IPv6 in any spelling, by Instance IP, by name; unknown keys.
    let q = await w2.query("", "10.30.0.0");
    assertEquals(q.app_name, WEB);
    checkResult(q, WEB, 2);
    assertEquals((q.instance_list as unknown[])[0], {
      instance_number: 0,
      instance_ip: "10.30.0.1",
      instance_ip_v6: "fdff::",
      namespace_ip: "10.18.0.2",
      namespace_ip_v6: "fc00::2",
      host_ip: "127.0.0.11",
      host_port: 50103,
      worker_id: "w1",
      cluster_id: "c1",
      service_ip: [
        { IpType: "RR", Address: "10.30.0.0", Address_v6: "fdff:2000::" },
        { IpType: "Closest", Address: "10.30.200.1", Address_v6: "fdff:1000::7" },
        { IpType: "instance_ip", Address: "10.30.0.1", Address_v6: "fdff::" },
      ],
    });
    q = await w2.query("", "fdff:1000::7"); // by the Closest IP
    assertEquals(q.app_name, WEB);
    q = await w2.query("", "FDFF:2000:0::0");
    assertEquals([q.app_name, q.query_key], [WEB, "FDFF:2000:0::0"]);
    q = await w2.query("", "10.30.0.2");
    assertEquals(q.app_name, WEB);
    q = await w2.query("", "fdff::55".replace("::", ":2000::"));
    assertEquals(q.app_name, DB);
    q = await w1.query(DB, "");
    checkResult(q, DB, 1);
    assertEquals(((q.instance_list as Record<string, unknown>[])[0].service_ip as unknown[])[0], {
      IpType: "RR",
      Address: "10.30.5.5",
      Address_v6: "fdff:2000::55",
    });
    assertEquals(await w2.query("", "10.30.99.99"), {
      app_name: "",
      query_key: "10.30.99.99",
      instance_list: [],
    });
    assertEquals(await w2.query("no.such.job.here", ""), {
      app_name: "",
      query_key: "no.such.job.here",
      instance_list: [],
    });

    // Interests: the deploying node and the querying node; interest/remove.
    r = await api("GET", `/api/net/service/${WEB}`);
    assertEquals(r.json.interested_nodes, ["w1", "w2"]);
    await w2.publish("interest/remove", { appname: WEB });
    await w2.query("", "10.30.99.98"); // a round trip: the removal was handled before it
    r = await api("GET", `/api/net/service/${WEB_ID}`);
    assertEquals(r.json.interested_nodes, ["w1"]);

    // Malformed MQTT payloads: ignored, nothing changes, the service keeps answering.
    const before = JSON.stringify([
      (await api("GET", "/api/net/services")).json,
      (await api("GET", "/api/net/nodes")).json,
    ]);
    await w1.publish("subnet", "garbage{");
    await w1.publish("subnet", { METHOD: "PUT" });
    await w1.publish("subnet", new Uint8Array([0xff, 0x00, 0xfe]));
    await w1.publish("service/deployed", {
      appname: WEB,
      instance_number: 0,
      nsip: "x",
      host_ip: "1.2.3.4",
      host_port: "1",
    });
    await w1.publish("service/deployed", {
      appname: WEB,
      instance_number: 0,
      nsip: "10.18.0.9",
      host_ip: "1.2.3.4",
      host_port: "http",
    });
    await w1.deployed("no.such.job.x", 0, "10.18.0.9", "", "1.2.3.4", "1");
    await w1.deployed(WEB, 9, "10.18.0.9", "", "1.2.3.4", "1");
    await w1.publish("tablequery/request", { sname: "", sip: "" });
    await w1.publish("tablequery/request", "[1,2,3]");
    await w1.publish("interest/remove", {});
    await w1.publish("service/address-changed", { host_ip: "nope", host_port: "1" });
    await w1.publish("service/undeployed", { appname: WEB });
    // (the embedded broker refuses a node publishing a result at all: tests/netns/control_auth_test.ts)
    if (broker) await w1.publish("subnetwork/result", { address: "1.2.3.4" });
    assertEquals((await w1.query("", "10.30.99.97")).app_name, "");
    const after = JSON.stringify([
      (await api("GET", "/api/net/services")).json,
      (await api("GET", "/api/net/nodes")).json,
    ]);
    assertEquals(after, before);

    // Bad HTTP bodies: 400 (or 404/409/405) with a reason, nothing changes.
    const d = { app_name: "shop", app_ns: "prod", microservice_name: "x", microservice_namespace: "v1" };
    const bad: Array<[string, string, unknown, number]> = [
      ["POST", "/api/net/service/deploy", "{not json", 400],
      ["POST", "/api/net/service/deploy", {}, 400],
      ["POST", "/api/net/service/deploy", { deployment_descriptor: { ...d, app_name: "app-" } }, 400],
      ["POST", "/api/net/service/deploy", { deployment_descriptor: { ...d, microservice_name: "" } }, 400],
      ["POST", "/api/net/service/deploy", { deployment_descriptor: { ...d, RR_ip: "10.20.0.1" } }, 400],
      ["POST", "/api/net/service/deploy", { deployment_descriptor: { ...d, RR_ip_v6: "fdff:1000::1" } }, 400],
      ["POST", "/api/net/service/deploy", { deployment_descriptor: { ...d, RR_ip: "10.30.5.5" } }, 409],
      ["POST", "/api/net/service/deploy", { deployment_descriptor: { ...d, RR_ip: "10.30.0.1" } }, 409],
      [
        "POST",
        "/api/net/service/deploy",
        { deployment_descriptor: { ...d, Closest_ip: "10.30.200.1" } },
        409,
      ],
      [
        "POST",
        "/api/net/service/deploy",
        { deployment_descriptor: { ...d, Closest_ip_v6: "fdff:2000::9" } },
        400,
      ],
      ["POST", "/api/net/service/deploy", { deployment_descriptor: { ...d, closest: "no" } }, 400],
      ["POST", "/api/net/service/deploy", { _id: "a.b", deployment_descriptor: d }, 400],
      ["POST", "/api/net/service/deploy", { _id: WEB_ID, deployment_descriptor: d }, 409],
      ["POST", "/api/net/instance/deploy", { _id: "nope", instance_number: 0 }, 404],
      ["POST", "/api/net/instance/deploy", { _id: WEB_ID, instance_number: -1 }, 400],
      ["POST", "/api/net/instance/deploy", { _id: WEB_ID, instance_number: "x" }, 400],
      ["POST", "/api/net/instance/deploy", { instance_number: 3 }, 400],
      ["DELETE", `/api/net/service/${WEB_ID}`, undefined, 400],
      ["DELETE", "/api/net/service/nope", undefined, 404],
      ["DELETE", `/api/net/${WEB}/7`, undefined, 404],
      ["DELETE", "/api/net/node/w9", undefined, 404],
      ["GET", "/api/net/whatever", undefined, 404],
      ["PUT", "/api/net/services", undefined, 405],
    ];
    for (const [method, path, body, status] of bad) {
      const res = await api(method, path, body);
      assertEquals(
        res.status,
        status,
        `${method} ${path} ${JSON.stringify(body)}: ${JSON.stringify(res.json)}`,
      );
      assert(typeof res.json.error === "string" && res.json.error.length > 0);
    }
    const afterBad = JSON.stringify([
      (await api("GET", "/api/net/services")).json,
      (await api("GET", "/api/net/nodes")).json,
    ]);
    assertEquals(afterBad, before);

    // Undeploy: UNDEPLOYMENT pushed, the Instance IPs are released and reused.
    r = await api("DELETE", `/api/net/${WEB}/1`);
    assertEquals([r.status, (r.json.removed as Record<string, unknown>[])[0].instance_ip], [
      200,
      "10.30.0.2",
    ]);
    await w2.update(WEB, "UNDEPLOYMENT");
    checkResult(await w2.query(WEB, ""), WEB, 1);
    r = await api("POST", "/api/net/instance/deploy", { _id: WEB, instance_number: 5 });
    assertEquals([r.json.instance_ip, r.json.instance_ip_v6], ["10.30.0.2", "fdff::1"]);

    // Address change of w1: host updated, DEPLOYMENT pushed.
    await w1.publish("service/address-changed", {
      appname: WEB,
      status: "",
      instance_number: 0,
      nsip: "",
      nsipv6: "",
      host_port: "50110",
      host_ip: "127.0.0.21",
    });
    await w2.update(WEB, "DEPLOYMENT");
    q = await w2.query(WEB, "");
    const i0 = (q.instance_list as Record<string, unknown>[])[0];
    assertEquals([i0.host_ip, i0.host_port], ["127.0.0.21", 50110]);

    // Restart with the same state directory: everything is kept (on etcd but the interests: they
    // live on the replica's lease and go with it; nodes ask again after they reconnect).
    const services = async () => {
      const l = (await api("GET", "/api/net/services")).json as Array<Record<string, unknown>>;
      return etcd ? l.map((j) => ({ ...j, interested_nodes: [] })) : l;
    };
    const kept = JSON.stringify([await services(), (await api("GET", "/api/net/nodes")).json]);
    const queryBefore = await w2.query(WEB, "");
    if (!broker) {
      for (const n of nodes.splice(0)) await n.close(); // the embedded broker goes away with the service
    }
    await ctl.stop();
    ctl = await start();
    const again = JSON.stringify([await services(), (await api("GET", "/api/net/nodes")).json]);
    assertEquals(again, kept);
    if (broker) {
      // With an external broker, nodes stay connected and are answered by the new instance.
      assertEquals(await w2.query(WEB, ""), queryBefore);
      for (const n of nodes.splice(0)) await n.close();
    }
    const w1b = await node("w1");
    const w3 = await node("w3");
    const f = await node("follower");
    assertEquals(await w1b.subnet(), { address: "10.18.0.0", addressv6: "fc00::" });
    assertEquals(await w3.subnet(), { address: "10.18.0.128", addressv6: "fc00::200" });
    assertEquals(await w3.query(WEB, ""), { ...queryBefore });
    await f.follow(WEB);
    await f.follow(DB);

    // Node deregistration: subnet released (and reused), its instances undeployed.
    r = await api("DELETE", "/api/net/node/w1");
    assertEquals([r.status, r.json.subnet, r.json.cleared], [200, "10.18.0.0", [{
      job: WEB,
      instance_number: 0,
    }]]);
    await f.update(WEB, "UNDEPLOYMENT");
    checkResult(await w3.query(WEB, ""), WEB, 0);
    const w4 = await node("w4");
    assertEquals(await w4.subnet(), { address: "10.18.0.0", addressv6: "fc00::" });

    // Service removal: refused with instances, forced; its RR IP becomes free for another service.
    r = await api("DELETE", `/api/net/service/${dbId}`);
    assertEquals(r.status, 400);
    r = await api("DELETE", `/api/net/service/${dbId}?force=1`);
    assertEquals([r.status, r.json.job_name], [200, DB]);
    await f.update(DB, "UNDEPLOYMENT");
    assertEquals((await w3.query("", "10.30.5.5")).app_name, "");
    r = await api("POST", "/api/net/service/deploy", { deployment_descriptor: { ...d, RR_ip: "10.30.5.5" } });
    assertEquals([r.status, r.json.RR_ip], [200, "10.30.5.5"]);
    r = await api("GET", "/api/net/nodes");
    assertEquals((r.json as unknown as Record<string, unknown>[]).map((n) => [n.worker_id, n.subnet]), [
      ["w2", "10.18.0.64"],
      ["w3", "10.18.0.128"],
      ["w4", "10.18.0.0"],
    ]);
  } finally {
    for (const n of nodes) await n.close();
    await ctl?.stop();
    await broker?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

Deno.test({
  name: "control: embedded broker — subnets, deploy, table queries, updates, interests, restart, bad input",
  fn: () => scenario(undefined),
});

Deno.test({
  name: "control: external mosquitto broker — same scenario, nodes stay connected across a restart",
  ignore: !hasMosquitto(),
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmctl-mosq-" });
    try {
      await scenario(() => startMosquitto(dir));
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "control on etcd (a replica): the same Oakestra-payload scenario, restart included",
  ignore: !hasEtcd(),
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmctl-etcd-" });
    const etcd = await startEtcd(dir);
    try {
      await scenario(undefined, etcd.url);
    } finally {
      await etcd.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name:
    "control on etcd: two replicas sharing one mosquitto answer each request once, publish each notice once",
  ignore: !hasEtcd() || !hasMosquitto(),
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmctl-share-" });
    const etcd = await startEtcd(dir);
    const broker = await startMosquitto(dir);
    const ctls: Awaited<ReturnType<typeof startControl>>[] = [];
    const nodes: FakeNode[] = [];
    try {
      const cluster = `sh${crypto.randomUUID().slice(0, 8)}`;
      for (const k of [0, 1]) {
        ctls.push(
          await startControl({
            stateDir: `${dir}/r${k}`,
            broker: broker.url,
            httpPort: 0,
            etcd: { endpoints: [etcd.url], cluster },
          }),
        );
      }
      const api = async (k: number, method: string, path: string, body?: unknown) =>
        http(ctls[k].httpUrl, method, path, body, (await Deno.readTextFile(ctls[k].tokenPath)).trim());
      const w1 = await FakeNode.connect(broker.url, "w1");
      const f = await FakeNode.connect(broker.url, "f");
      nodes.push(w1, f);
      const never = async (n: FakeNode, pred: (m: Msg) => boolean, what: string) => {
        const extra = await n.expect(pred, what, 700).then((m) => m, () => undefined);
        assertEquals(extra, undefined, `${what} arrived twice`);
      };
      assertEquals(await w1.subnet(), { address: "10.18.0.0", addressv6: "fc00::" });
      await never(w1, (m) => m.topic.endsWith("/subnetwork/result"), "subnet result");
      let r = await api(0, "POST", "/api/net/service/deploy", {
        _id: WEB_ID,
        deployment_descriptor: {
          app_name: "shop",
          app_ns: "prod",
          microservice_name: "web",
          microservice_namespace: "v1",
        },
      });
      assertEquals(r.status, 200, JSON.stringify(r.json));
      r = await api(1, "POST", "/api/net/instance/deploy", { _id: WEB_ID, instance_number: 0 });
      assertEquals(r.status, 200, JSON.stringify(r.json));
      for (let k = 0; k < 10; k++) {
        const q = await w1.query(WEB, "");
        assertEquals(q.app_name, WEB);
      }
      await never(w1, (m) => m.topic.endsWith("/tablequery/result"), "table query result");
      await f.follow(WEB);
      r = await api(1, "DELETE", `/api/net/${WEB_ID}/0`);
      assertEquals(r.status, 200, JSON.stringify(r.json));
      await f.update(WEB, "UNDEPLOYMENT");
      await never(f, (m) => m.topic === `jobs/${WEB}/updates_available`, "update notice");
    } finally {
      for (const n of nodes) await n.close();
      for (const c of ctls) await c.stop();
      await broker.stop();
      await etcd.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "control: the service reconnects and resubscribes when the external broker restarts",
  ignore: !hasMosquitto(),
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmctl-reconn-" });
    const port = freePort();
    let broker = await startMosquitto(dir, port);
    let ctl: Awaited<ReturnType<typeof startControl>> | undefined;
    const nodes: FakeNode[] = [];
    try {
      ctl = await startControl({ stateDir: `${dir}/state`, broker: `tcp://127.0.0.1:${port}`, httpPort: 0 });
      assertEquals(ctl.brokerUrl, `mqtt://127.0.0.1:${port}`);
      assertEquals(ctl.mqttPort, port);
      const a = await FakeNode.connect(broker.url, "wa");
      nodes.push(a);
      assertEquals(await a.subnet(), { address: "10.18.0.0", addressv6: "fc00::" });
      await a.close();
      await broker.stop();
      broker = await startMosquitto(dir, port);
      // The service reconnects within its 1 s reconnect period and subscribes again.
      const b = await FakeNode.connect(broker.url, "wb");
      nodes.push(b);
      let answer: Record<string, unknown> | undefined;
      for (let k = 0; k < 20 && !answer; k++) {
        await b.publish("subnet", { METHOD: "GET" });
        answer = await b.expect((m) => m.topic.endsWith("/subnetwork/result"), "subnet result", 500).then(
          (m) => m.payload,
          () => undefined,
        );
      }
      assertEquals(answer, { address: "10.18.0.64", addressv6: "fc00::100" });
    } finally {
      for (const n of nodes) await n.close();
      await ctl?.stop();
      await broker.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "control: a busy port, an unreachable broker and a corrupt state file fail start-up cleanly",
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmctl-fail-" });
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    try {
      const busy = (l.addr as Deno.NetAddr).port;
      let e = await startControl({ stateDir: `${dir}/a`, mqttHost: "127.0.0.1", mqttPort: busy, httpPort: 0 })
        .then(
          () => undefined,
          (x: Error) => x,
        );
      assert(e && e.message.includes("cannot listen for MQTT"), String(e));
      e = await startControl({ stateDir: `${dir}/a`, mqttHost: "127.0.0.1", mqttPort: 0, httpPort: busy })
        .then(
          () => undefined,
          (x: Error) => x,
        );
      assert(e && e.message.includes("cannot serve HTTP"), String(e));
      const dead = freePort();
      e = await startControl({
        stateDir: `${dir}/a`,
        broker: `mqtt://127.0.0.1:${dead}`,
        httpPort: 0,
        brokerConnectTimeoutMs: 1500,
      }).then(() => undefined, (x: Error) => x);
      assert(e && e.message.includes("cannot connect to MQTT broker"), String(e));
      await Deno.mkdir(`${dir}/b`);
      await Deno.writeTextFile(`${dir}/b/control-state.json`, '{"version":1,"jobs":[');
      e = await startControl({ stateDir: `${dir}/b`, mqttHost: "127.0.0.1", mqttPort: 0, httpPort: 0 }).then(
        () => undefined,
        (x: Error) => x,
      );
      assert(e && e.message.includes("not valid JSON"), String(e));
      assertEquals(await Deno.readTextFile(`${dir}/b/control-state.json`), '{"version":1,"jobs":[');
      // Ports are free again after the failures: a normal start works.
      const ok = await startControl({
        stateDir: `${dir}/a`,
        mqttHost: "127.0.0.1",
        mqttPort: 0,
        httpPort: 0,
      });
      await ok.stop();
    } finally {
      l.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

// ---------------------------------------------------------------------------------------------
// the CLI

async function cli(
  script: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", `${ROOT}deno.json`, script, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test({
  name: "control: CLI — service runs until SIGTERM, client subcommands call the API, errors are one line",
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmctl-cli-" });
    const script = `${dir}/cli.ts`;
    await Deno.writeTextFile(
      script,
      `import { Command } from "@commander-js/extra-typings";\n` +
        `import { controlCmd } from "${ROOT}src/cli/control.ts";\n` +
        `await new Command("netmanager").enablePositionalOptions().addCommand(controlCmd())` +
        `.parseAsync(Deno.args, { from: "user" });\n`,
    );
    const svc = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--config",
        `${ROOT}deno.json`,
        script,
        "control",
        "--state-dir",
        `${dir}/state`,
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        "0",
        "--http-port",
        "0",
      ],
      stdout: "null",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    let log = "";
    const reader = svc.stderr.pipeThrough(new TextDecoderStream()).getReader();
    const drained = (async () => {
      while (true) {
        const { value, done } = await reader.read();
        if (done) return;
        log += value;
      }
    })();
    try {
      let port = 0;
      for (let k = 0; k < 300 && !port; k++) {
        const m = /control plane started .*"http":"127\.0\.0\.1:([0-9]+)"/.exec(log);
        if (m) port = Number(m[1]);
        else await new Promise((r) => setTimeout(r, 50));
      }
      assert(port > 0, `service did not start: ${log}`);
      const api = ["--api", `http://127.0.0.1:${port}`, "--state-dir", `${dir}/state`];
      let r = await cli(script, [
        "control",
        "service",
        "add",
        WEB,
        "--rr-ip",
        "10.30.1.1",
        "--closest-ip",
        "10.30.1.2",
        "--closest-ip6",
        "fdff:1000::12",
        "--id",
        WEB_ID,
        ...api,
      ]);
      assertEquals([r.code, r.stdout.trim()], [
        0,
        `added: ${WEB} id ${WEB_ID} RR 10.30.1.1 fdff:2000:: Closest 10.30.1.2 fdff:1000::12`,
      ]);
      r = await cli(script, ["control", "instance", "add", WEB, "0", ...api]);
      assertEquals([r.code, r.stdout.trim()], [0, `added: ${WEB}#0 10.30.0.0 fdff::`]);
      r = await cli(script, ["control", "service", "ls", "--json", ...api]);
      assertEquals(r.code, 0);
      const ls = JSON.parse(r.stdout) as Array<Record<string, unknown>>;
      assertEquals(ls.map((j) => [j._id, j.job_name, j.RR_ip]), [[WEB_ID, WEB, "10.30.1.1"]]);
      r = await cli(script, ["control", "service", "ls", ...api]);
      assertMatch(r.stdout, /ID\s+JOB\s+RR\s+RR6\s+CLOSEST\s+CLOSEST6\s+DEPLOYED\s+INTERESTED/);
      assertMatch(
        r.stdout,
        new RegExp(
          `${WEB_ID}\\s+${
            WEB.replaceAll(".", "\\.")
          }\\s+10\\.30\\.1\\.1\\s+fdff:2000::\\s+10\\.30\\.1\\.2\\s+fdff:1000::12\\s+0/1`,
        ),
      );
      // Errors: one line on stderr, exit 1.
      for (
        const args of [
          ["control", "service", "add", "shop.prod.x.v1", "--rr-ip", "10.30.1.1", ...api],
          ["control", "service", "add", "bad-name", ...api],
          ["control", "service", "rm", WEB, ...api],
          ["control", "instance", "add", WEB, "x", ...api],
          ["control", "node", "rm", "w9", ...api],
          ["control", "node", "ls", "--api", `http://127.0.0.1:${freePort()}`],
        ]
      ) {
        r = await cli(script, args);
        assertEquals(r.code, 1, `${args.join(" ")}: ${r.stdout} ${r.stderr}`);
        const lines = r.stderr.trim().split("\n");
        assertEquals(lines.length, 1, r.stderr);
        assertMatch(lines[0], /^netmanager: /);
      }
      r = await cli(script, ["control", "instance", "rm", WEB_ID, "0", ...api]);
      assertEquals([r.code, r.stdout.trim()], [0, `removed: ${WEB} instance(s) 0`]);
      r = await cli(script, ["control", "service", "rm", WEB, ...api]);
      assertEquals([r.code, r.stdout.trim()], [0, `removed: ${WEB} id ${WEB_ID}`]);
      r = await cli(script, ["control", "node", "ls", ...api]);
      assertEquals([r.code, r.stdout.trim()], [0, "WORKER  SUBNET  SUBNET6  INSTANCES  OBSERVED"]);
      Deno.kill(svc.pid, "SIGTERM");
      const status = await svc.status;
      assertEquals(status.code, 0, log);
      assertMatch(log, /control plane stopped/);
      const stored = await SqliteStore.open(`${dir}/state`);
      const state = stored.state.toFile();
      await stored.close();
      assertEquals(state.jobs, []);
      assertEquals(state.pools.service4.free, ["10.30.0.0"]);
    } finally {
      try {
        Deno.kill(svc.pid, "SIGKILL");
      } catch { /* exited */ }
      await svc.status;
      await drained.catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
