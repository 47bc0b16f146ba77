/**
 * Authentication and authorization of the control channel, against real brokers on loopback: the
 * embedded broker of `netmanager control` (aedes over TCP and TLS), mosquitto with the documented
 * password file + ACL (config/mosquitto/acl), and the HTTP API with its bearer token. Every attack
 * is also run with the protection off, to show the test can fail.
 */
import mqtt from "mqtt";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { freePort } from "../helpers/netns.ts";
import { ControlClient, type ControlService, newSecret, startControl } from "../../src/cluster/mod.ts";
import { loadMqttCredential } from "../../src/config/mod.ts";
import { NodeControl } from "../../src/control/mod.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

const HAS_MOSQUITTO = (() => {
  try {
    return Deno.statSync("/usr/sbin/mosquitto").isFile && Deno.statSync("/usr/bin/mosquitto_passwd").isFile;
  } catch {
    return false;
  }
})();
const HAS_OPENSSL = new Deno.Command("openssl", { args: ["version"], stdout: "null", stderr: "null" })
  .outputSync().success;

async function run(cmd: string, args: string[]): Promise<void> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!r.success) throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
}

type Cred = { username: string; password: string };

/** Connects an MQTT client; resolves the client, or the CONNACK refusal code / error text. */
async function tryConnect(
  url: string,
  opts: mqtt.IClientOptions,
): Promise<{ client?: mqtt.MqttClient; refused?: number | string }> {
  try {
    const client = await mqtt.connectAsync(url, {
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: 3000,
      ...opts,
    });
    return { client };
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    return { refused: typeof code === "number" ? code : String((e as Error).message) };
  }
}

/** Collects the messages a client receives. */
function inbox(c: mqtt.MqttClient): Array<{ topic: string; payload: string }> {
  const got: Array<{ topic: string; payload: string }> = [];
  c.on("message", (topic, payload) => got.push({ topic, payload: new TextDecoder().decode(payload) }));
  return got;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond: () => boolean, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await sleep(20);
  }
  return cond();
}

const FORGED = JSON.stringify({
  app_name: "app.ns.web.ns",
  query_key: "10.30.0.9",
  instance_list: [{
    instance_number: 0,
    instance_ip: "10.30.0.9",
    instance_ip_v6: "fdff::9",
    namespace_ip: "10.18.0.70",
    namespace_ip_v6: "fc00::170",
    host_ip: "192.0.2.66", // the attacker
    host_port: 50103,
    service_ip: [{ IpType: "instance_ip", Address: "10.30.0.9", Address_v6: "fdff::9" }],
  }],
});

/**
 * The attack of issue 9 by node `w2` (its own valid credential) against node `w1`: subscribe to
 * w1's results and to everything, publish a forged table-query result and a subnet request for w1.
 * Returns what succeeded.
 */
async function attack(url: string, creds: { w1: Cred; w2: Cred }, extra: mqtt.IClientOptions = {}) {
  const victim = (await tryConnect(url, { ...extra, ...creds.w1, clientId: "w1" })).client!;
  assert(victim, "the victim connects with its credential");
  const got = inbox(victim);
  const grantedVictim = await victim.subscribeAsync("nodes/w1/net/tablequery/result", { qos: 1 });
  assertEquals(grantedVictim.map((g) => g.qos), [1]);
  const attacker = (await tryConnect(url, { ...extra, ...creds.w2, clientId: "w2" })).client!;
  assert(attacker, "the attacker connects with its own credential");
  const spied = inbox(attacker);
  // mqtt.js rejects a SUBACK with 0x80 in it; the packet says what was granted.
  const granted = await attacker.subscribeAsync(
    ["nodes/w1/net/tablequery/result", "nodes/+/net/#"],
    { qos: 1 },
  ).then((g) => g.map((x) => x.qos), (e: { packet?: { granted?: number[] } }) => e.packet?.granted ?? [128]);
  const subscribedOther = granted.some((q) => q !== 128);
  // The victim's own traffic (its request, and with a control plane the reply) is what a spy would see.
  await victim.publishAsync("nodes/w1/net/subnet", JSON.stringify({ METHOD: "GET" }), { qos: 1 });
  // QoS 0: the broker may drop the connection on a refused publish; a QoS 1 PUBACK would never come.
  attacker.publish("nodes/w1/net/tablequery/result", FORGED, { qos: 0 });
  attacker.publish("nodes/w1/net/subnet", JSON.stringify({ METHOD: "GET" }), { qos: 0 });
  const forged = await waitFor(() => got.some((m) => m.payload === FORGED), 1500);
  const spiedOnVictim = spied.some((m) => m.topic.startsWith("nodes/w1/"));
  await attacker.endAsync(true).catch(() => {});
  // The same forgery as a last will, published by the broker when the attacker vanishes.
  const WILL = FORGED.replace("192.0.2.66", "192.0.2.67");
  const willer = (await tryConnect(url, {
    ...extra,
    ...creds.w2,
    clientId: "w2",
    will: {
      topic: "nodes/w1/net/tablequery/result",
      payload: WILL,
      qos: 0,
      retain: false,
    },
  })).client!;
  assert(willer, "the attacker connects again with a will");
  (willer.stream as unknown as { destroy(): void }).destroy(); // no DISCONNECT: the will is due
  const forgedByWill = await waitFor(() => got.some((m) => m.payload === WILL), 1500);
  await willer.endAsync(true).catch(() => {});
  await victim.endAsync(true);
  return { subscribedOther, forged, spiedOnVictim, forgedByWill };
}

Deno.test({
  name:
    "auth: embedded broker — credentials required, one node cannot act as another; open with --mqtt-allow-anonymous",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmauth-" });
    let ctl: ControlService | undefined;
    const start = (allowAnonymous: boolean) =>
      startControl({ stateDir: dir, mqttHost: "127.0.0.1", mqttPort: 0, httpPort: 0, allowAnonymous });
    try {
      ctl = await start(false);
      const token = (await Deno.readTextFile(ctl.tokenPath)).trim();
      const api = new ControlClient(ctl.httpUrl, { token });
      const w1 = await api.issueCredential("w1");
      const w2 = await api.issueCredential("w2");
      const creds = {
        w1: { username: "w1", password: w1.password },
        w2: { username: "w2", password: w2.password },
      };
      // stored 0600, only a hash of the password
      assertEquals((await Deno.stat(ctl.credentialsPath)).mode! & 0o777, 0o600);
      assertEquals((await Deno.stat(ctl.tokenPath)).mode! & 0o777, 0o600);
      assert(!(await Deno.readTextFile(ctl.credentialsPath)).includes(w1.password));
      const url = ctl.brokerUrl;

      // Who may connect.
      assertEquals((await tryConnect(url, { clientId: "w1" })).refused, 5, "anonymous");
      assertEquals((await tryConnect(url, { clientId: "w1", username: "w1", password: "nope" })).refused, 4);
      assertEquals(
        (await tryConnect(url, { clientId: "w2", ...creds.w1 })).refused,
        2,
        "w1's credential as w2",
      );

      // The legitimate exchange works: w1 gets its subnet.
      const ok = (await tryConnect(url, { clientId: "w1", ...creds.w1 })).client!;
      const okBox = inbox(ok);
      await ok.subscribeAsync("nodes/w1/net/subnetwork/result", { qos: 1 });
      await ok.subscribeAsync("jobs/+/updates_available", { qos: 1 });
      await ok.publishAsync("nodes/w1/net/subnet", JSON.stringify({ METHOD: "GET" }), { qos: 1 });
      assert(await waitFor(() => okBox.some((m) => m.topic === "nodes/w1/net/subnetwork/result")));
      await ok.endAsync();

      // The attack is refused.
      const denied = await attack(url, creds);
      assertEquals(denied, {
        subscribedOther: false,
        forged: false,
        spiedOnVictim: false,
        forgedByWill: false,
      });
      assertEquals(ctl.state.node("w1")?.subnet, "10.18.0.0"); // only w1 itself registered it
      assertEquals(ctl.state.nodes().length, 1);

      // The node client of the daemon connects with its credential file (0600 required).
      const nodeDir = `${dir}/node`;
      await Deno.mkdir(nodeDir);
      const file = `${nodeDir}/mqtt-credential.json`;
      await Deno.writeTextFile(file, JSON.stringify(creds.w2), { mode: 0o644 });
      await Deno.chmod(file, 0o644);
      const cfg = { MqttUsername: "", MqttPassword: "", MqttCredentialFile: "", StateDir: nodeDir };
      const loose = await loadMqttCredential(cfg).then(() => "", (e: Error) => e.message);
      assertMatch(loose, /accessible by group or others.*chmod 600/);
      await Deno.chmod(file, 0o600);
      const cred = (await loadMqttCredential(cfg))!;
      const port = Number(new URL(url).port);
      const nodeOpts = {
        host: "127.0.0.1",
        port,
        workerId: "w2",
        sink: { replaceJob: () => {}, removeJob: () => {}, hasJob: () => false },
        isHosted: () => false,
        hostIp: () => "127.0.0.1",
        hostPort: 50103,
        connectTimeoutMs: 3000,
      };
      const node = await NodeControl.connect({ ...nodeOpts, credentials: cred });
      assertEquals((await node.requestSubnet()).v4, "10.18.0.64");
      // Revoking closes its connection and the credential no longer works.
      await api.revokeCredential("w2");
      assert(await waitFor(() => !node.connected), "revoked node disconnected");
      await node.close();
      const again = await NodeControl.connect({ ...nodeOpts, credentials: cred }).then(
        () => "",
        (e) => String(e),
      );
      assertMatch(again, /refused the connection/);
      const w2b = await api.issueCredential("w2"); // a fresh one for the next round
      creds.w2.password = w2b.password;
      await ctl.stop();

      // With --mqtt-allow-anonymous the same attack succeeds (the protection is what stops it).
      ctl = await start(true);
      const open = ctl.brokerUrl;
      const anon = await tryConnect(open, { clientId: "anyone" });
      assert(anon.client, "anonymous client accepted");
      await anon.client.endAsync();
      const succeeded = await attack(open, creds);
      assertEquals(succeeded, {
        subscribedOther: true,
        forged: true,
        spiedOnVictim: true,
        forgedByWill: true,
      });
    } finally {
      await ctl?.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

/** mosquitto on a free loopback port with `conf` lines; stopped by PID. */
async function mosquitto(dir: string, lines: string[]) {
  const port = freePort();
  const conf = `${dir}/mosquitto-${port}.conf`;
  await Deno.writeTextFile(
    conf,
    [`listener ${port} 127.0.0.1`, "persistence false", ...lines].join("\n") + "\n",
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
    } catch { /* gone */ }
    await child.stderr.cancel().catch(() => {});
    await child.status;
  };
  for (let k = 0; k < 100; k++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return { url: `mqtt://127.0.0.1:${port}`, stop };
    } catch {
      await sleep(50);
    }
  }
  await stop();
  throw new Error("mosquitto did not start");
}

Deno.test({
  name:
    "auth: mosquitto with the documented password file and ACL denies the same attack; open mosquitto does not",
  ignore: !HAS_MOSQUITTO,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmauth-mq-" });
    await Deno.chmod(dir, 0o711); // mosquitto started as root reads its files as user mosquitto
    const stops: Array<() => Promise<void>> = [];
    let ctl: ControlService | undefined;
    try {
      const pw = { control: newSecret(), w1: newSecret(), w2: newSecret() };
      const passwd = `${dir}/passwd`;
      await Deno.writeTextFile(passwd, "", { mode: 0o600 });
      await run("mosquitto_passwd", ["-b", passwd, "netmanager-control", pw.control]);
      await run("mosquitto_passwd", ["-b", passwd, "w1", pw.w1]);
      await run("mosquitto_passwd", ["-b", passwd, "w2", pw.w2]);
      await Deno.copyFile(`${ROOT}config/mosquitto/acl`, `${dir}/acl`);
      await run("chown", ["mosquitto", passwd, `${dir}/acl`]);
      const secured = await mosquitto(dir, [
        "allow_anonymous false",
        `password_file ${passwd}`,
        `acl_file ${dir}/acl`,
        "use_username_as_clientid true",
      ]);
      stops.push(secured.stop);
      const creds = { w1: { username: "w1", password: pw.w1 }, w2: { username: "w2", password: pw.w2 } };

      // The control plane connects with its own user; a node still gets its subnet through the ACL.
      ctl = await startControl({
        stateDir: `${dir}/state`,
        broker: secured.url,
        brokerCredentials: { username: "netmanager-control", password: pw.control },
        httpPort: 0,
      });
      assertEquals((await tryConnect(secured.url, { clientId: "x" })).refused, 5, "anonymous");
      const ok = (await tryConnect(secured.url, { clientId: "w1", ...creds.w1 })).client!;
      const okBox = inbox(ok);
      await ok.subscribeAsync("nodes/w1/net/subnetwork/result", { qos: 1 });
      await ok.publishAsync("nodes/w1/net/subnet", JSON.stringify({ METHOD: "GET" }), { qos: 1 });
      assert(await waitFor(() => okBox.some((m) => m.topic === "nodes/w1/net/subnetwork/result")));
      await ok.endAsync();

      // (mosquitto 2.0 grants a denied v3.1.1 subscription, then delivers nothing on it)
      const denied = await attack(secured.url, creds);
      assertEquals([denied.forged, denied.spiedOnVictim, denied.forgedByWill], [false, false, false]);
      assertEquals(ctl.state.nodes().map((n) => n.worker_id), ["w1"]);
      await ctl.stop();
      ctl = undefined;

      // Without the ACL (mosquitto's default, Oakestra's setup) the attack goes through.
      const open = await mosquitto(dir, ["allow_anonymous true"]);
      stops.push(open.stop);
      const succeeded = await attack(open.url, creds);
      assertEquals(succeeded, {
        subscribedOther: true,
        forged: true,
        spiedOnVictim: true,
        forgedByWill: true,
      });
    } finally {
      await ctl?.stop();
      for (const s of stops) await s();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

/** A CA, a server certificate for 127.0.0.1 and client certificates (CN = worker id). */
async function makePki(dir: string) {
  const key = (
    name: string,
  ) => [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    `${dir}/${name}.key`,
  ];
  await run("openssl", [
    "req",
    "-x509",
    ...key("ca"),
    "-out",
    `${dir}/ca.crt`,
    "-days",
    "1",
    "-subj",
    "/CN=test-ca",
  ]);
  const signed = async (name: string, cn: string, ext?: string) => {
    await run("openssl", ["req", ...key(name), "-out", `${dir}/${name}.csr`, "-subj", `/CN=${cn}`]);
    const extArgs: string[] = [];
    if (ext) {
      await Deno.writeTextFile(`${dir}/${name}.ext`, ext);
      extArgs.push("-extfile", `${dir}/${name}.ext`);
    }
    await run("openssl", [
      "x509",
      "-req",
      "-in",
      `${dir}/${name}.csr`,
      "-CA",
      `${dir}/ca.crt`,
      "-CAkey",
      `${dir}/ca.key`,
      "-CAcreateserial",
      "-out",
      `${dir}/${name}.crt`,
      "-days",
      "1",
      ...extArgs,
    ]);
  };
  await signed("server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  await signed("w1", "w1");
  // Self-signed, not by the CA: must not be an identity.
  await run("openssl", [
    "req",
    "-x509",
    ...key("rogue"),
    "-out",
    `${dir}/rogue.crt`,
    "-days",
    "1",
    "-subj",
    "/CN=w1",
  ]);
  return dir;
}

Deno.test({
  name:
    "auth: TLS listener — a client certificate's CN is the node identity (mTLS), passwords over TLS, no plain TCP",
  ignore: !HAS_OPENSSL,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmauth-tls-" });
    let ctl: ControlService | undefined;
    const nodes: NodeControl[] = [];
    try {
      const pki = await makePki(dir);
      ctl = await startControl({
        stateDir: `${dir}/state`,
        mqttHost: "127.0.0.1",
        mqttPort: 0,
        httpPort: 0,
        mqttTls: { cert: `${pki}/server.crt`, key: `${pki}/server.key`, clientCa: `${pki}/ca.crt` },
      });
      assertMatch(ctl.brokerUrl, /^mqtts:/);
      const port = ctl.mqttPort;
      const base = {
        host: "127.0.0.1",
        port,
        sink: { replaceJob: () => {}, removeJob: () => {}, hasJob: () => false },
        isHosted: () => false,
        hostIp: () => "127.0.0.1",
        hostPort: 50103,
        connectTimeoutMs: 3000,
      };
      // The daemon's client with MqttCert/MqttKey/MqttCa and no username (Oakestra's mTLS setup).
      const n1 = await NodeControl.connect({
        ...base,
        workerId: "w1",
        tls: { cert: `${pki}/w1.crt`, key: `${pki}/w1.key`, ca: `${pki}/ca.crt` },
      });
      nodes.push(n1);
      assertEquals((await n1.requestSubnet()).v4, "10.18.0.0");

      const tlsOpts = (name: string) => ({
        ca: Deno.readTextFileSync(`${pki}/ca.crt`),
        cert: Deno.readTextFileSync(`${pki}/${name}.crt`),
        key: Deno.readTextFileSync(`${pki}/${name}.key`),
      });
      const url = `mqtts://127.0.0.1:${port}`;
      // w1's certificate cannot be used as w2; a self-signed certificate with CN=w1 is no identity.
      assertEquals((await tryConnect(url, { clientId: "w2", ...tlsOpts("w1") })).refused, 2);
      assertEquals((await tryConnect(url, { clientId: "w1", ...tlsOpts("rogue") })).refused, 5);
      // A certified node still obeys the ACL.
      const c1 = (await tryConnect(url, { clientId: "w1", ...tlsOpts("w1") })).client!;
      const g = await c1.subscribeAsync("nodes/w2/net/tablequery/result").then(
        (x) => x.map((y) => y.qos),
        (e: { packet?: { granted?: number[] } }) => e.packet?.granted,
      );
      assertEquals(g, [128]);
      await c1.endAsync(true);
      // Passwords work over TLS (server verified with the CA only).
      const api = new ControlClient(ctl.httpUrl, { token: (await Deno.readTextFile(ctl.tokenPath)).trim() });
      const w2 = await api.issueCredential("w2");
      const n2 = await NodeControl.connect({
        ...base,
        workerId: "w2",
        tls: { ca: `${pki}/ca.crt` },
        credentials: { username: "w2", password: w2.password },
      });
      nodes.push(n2);
      assertEquals((await n2.requestSubnet()).v4, "10.18.0.64");
      // Plain MQTT on the TLS port gets nowhere.
      const plain = await tryConnect(`mqtt://127.0.0.1:${port}`, {
        clientId: "w2",
        username: "w2",
        password: w2.password,
        connectTimeout: 1000,
      });
      assert(plain.client === undefined, "plain TCP refused");
    } finally {
      for (const n of nodes) await n.close();
      await ctl?.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name:
    "auth: HTTP API — 401 without or with a wrong token, 200 with it; non-loopback without TLS refuses to start; https",
  ignore: !HAS_OPENSSL,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmauth-http-" });
    let ctl: ControlService | undefined;
    try {
      ctl = await startControl({ stateDir: `${dir}/s`, mqttHost: "127.0.0.1", mqttPort: 0, httpPort: 0 });
      const token = (await Deno.readTextFile(ctl.tokenPath)).trim();
      assert(token.length >= 40);
      const call = async (headers: Record<string, string>, method = "GET", path = "/api/net/nodes") => {
        const r = await fetch(ctl!.httpUrl + path, { method, headers });
        return { status: r.status, body: await r.text() };
      };
      let r = await call({});
      assertEquals(r.status, 401, r.body);
      assertMatch(r.body, /missing bearer token/);
      assertEquals((await call({ authorization: "Bearer wrong-token" })).status, 401);
      assertEquals((await call({ authorization: `Basic ${token}` })).status, 401);
      // Refused requests change nothing.
      assertEquals((await call({}, "POST", "/api/net/node/w9/credential")).status, 401);
      assertEquals((await call({}, "DELETE", "/api/net/node/w9")).status, 401);
      r = await call({ authorization: `Bearer ${token}` });
      assertEquals([r.status, r.body.trim()], [200, "[]"]);
      assertEquals(
        (await call({ authorization: `Bearer ${token}` }, "DELETE", "/api/net/node/w9/credential")).status,
        404,
      );
      await ctl.stop();
      // Same state dir: same token.
      ctl = await startControl({ stateDir: `${dir}/s`, mqttHost: "127.0.0.1", mqttPort: 0, httpPort: 0 });
      assertEquals((await call({ authorization: `Bearer ${token}` })).status, 200);
      await ctl.stop();
      ctl = undefined;

      // Not loopback and no TLS: refused before anything listens.
      const e = await startControl({ stateDir: `${dir}/t`, mqttPort: 0, httpPort: 0, httpHost: "0.0.0.0" })
        .then(
          () => "started",
          (x: Error) => x.message,
        );
      assertMatch(e, /refusing to serve the HTTP API on 0\.0\.0\.0 without TLS/);

      // With TLS the API speaks https; the CLI client trusts a private CA with caCert.
      const pki = await makePki(`${dir}`);
      ctl = await startControl({
        stateDir: `${dir}/u`,
        mqttHost: "127.0.0.1",
        mqttPort: 0,
        httpPort: 0,
        httpTls: { cert: `${pki}/server.crt`, key: `${pki}/server.key` },
      });
      assertMatch(ctl.httpUrl, /^https:\/\/127\.0\.0\.1:/);
      const api = new ControlClient(ctl.httpUrl, {
        token: (await Deno.readTextFile(ctl.tokenPath)).trim(),
        caCert: await Deno.readTextFile(`${pki}/ca.crt`),
      });
      assertEquals(await api.nodes(), []);
      const noToken = new ControlClient(ctl.httpUrl, { caCert: await Deno.readTextFile(`${pki}/ca.crt`) });
      const err = await noToken.nodes().then(() => 0, (x: { status: number }) => x.status);
      assertEquals(err, 401);
      api.close();
      noToken.close();
    } finally {
      await ctl?.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

async function cli(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", `${ROOT}deno.json`, `${ROOT}main.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test({
  name:
    "auth: CLI — node add prints or writes (0600) a working credential, revoke, token sources; 0.0.0.0 without TLS exits",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nmauth-cli-" });
    let ctl: ControlService | undefined;
    try {
      let r = await cli(["control", "--state-dir", `${dir}/x`, "--mqtt-port", "0", "--http-host", "0.0.0.0"]);
      assertEquals(r.code, 1, r.stderr);
      assertMatch(r.stderr, /^netmanager: refusing to serve the HTTP API on 0\.0\.0\.0 without TLS/);
      ctl = await startControl({ stateDir: `${dir}/s`, mqttHost: "127.0.0.1", mqttPort: 0, httpPort: 0 });
      const api = ["--api", ctl.httpUrl];
      // token from the state dir
      r = await cli([
        "control",
        "node",
        "add",
        "w1",
        "--out",
        `${dir}/w1.json`,
        ...api,
        "--state-dir",
        `${dir}/s`,
      ]);
      assertEquals([r.code, r.stdout.trim()], [
        0,
        `created: MQTT credential of w1 written to ${dir}/w1.json (0600)`,
      ]);
      assertEquals((await Deno.stat(`${dir}/w1.json`)).mode! & 0o777, 0o600);
      const cred = JSON.parse(await Deno.readTextFile(`${dir}/w1.json`)) as Cred;
      const ok = await tryConnect(ctl.brokerUrl, { clientId: "w1", ...cred });
      assert(ok.client, `the written credential works: ${ok.refused}`);
      await ok.client.endAsync();
      // token from the environment; printed as JSON; replaces the old one
      const token = (await Deno.readTextFile(ctl.tokenPath)).trim();
      r = await cli(["control", "node", "add", "w1", ...api, "--state-dir", `${dir}/nowhere`], {
        NETMANAGER_CONTROL_TOKEN: token,
      });
      assertEquals(r.code, 0, r.stderr);
      const printed = JSON.parse(r.stdout) as Cred;
      assertEquals(printed.username, "w1");
      assertEquals((await tryConnect(ctl.brokerUrl, { clientId: "w1", ...cred })).refused, 4, "old one void");
      // token from a file; revoke
      await Deno.writeTextFile(`${dir}/tok`, token + "\n", { mode: 0o600 });
      r = await cli(["control", "node", "revoke", "w1", ...api, "--token-file", `${dir}/tok`]);
      assertEquals([r.code, r.stdout.trim()], [0, "revoked: MQTT credential of w1"]);
      assertEquals((await tryConnect(ctl.brokerUrl, { clientId: "w1", ...printed })).refused, 4);
      // no token: one clear line
      r = await cli(["control", "node", "ls", ...api, "--state-dir", `${dir}/nowhere`]);
      assertEquals(r.code, 1);
      assertMatch(r.stderr.trim(), /^netmanager: cannot read the API token .*nowhere\/api-token/);
      await Deno.writeTextFile(`${dir}/bad`, "not-the-token-at-all\n");
      r = await cli(["control", "node", "ls", ...api, "--token-file", `${dir}/bad`]);
      assertEquals(r.code, 1);
      assertMatch(r.stderr.trim(), /^netmanager: GET \/api\/net\/nodes: 401 wrong bearer token$/);
    } finally {
      await ctl?.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
