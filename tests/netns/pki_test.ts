/**
 * Tunnel trust with real processes in namespaces:
 *
 * - `netmanager control` + 2 cluster nodes: each node gets a certificate signed by the cluster CA
 *   (checked here with src/secure), the identity and CA keys are 0600 and appear in no log; a forged
 *   revocation list (another key, claiming the cluster CA's id) reaches the nodes and is ignored and
 *   counted; `control node rm` → the other node's trust snapshot lists the node as revoked within 10 s.
 * - Offline: `cert ca` → `cert show` → `cert sign` → a node configured with the files loads them; a
 *   certificate for another key stops the daemon before it touches anything.
 */
import { Buffer } from "node:buffer";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { withWorld } from "../helpers/world.ts";
import { isRoot } from "../helpers/netns.ts";
import { hasEtcd, startEtcd } from "../helpers/etcd.ts";
import { World } from "../../src/demo/world.ts";
import { selfCommand } from "../../src/sys/process.ts";
import { runTool } from "../../src/sys/command.ts";
import { loadCaPublic, loadCertFile } from "../../src/secure/files.ts";
import { TrustStore } from "../../src/secure/trust.ts";
import { decodeCertificate } from "../../src/secure/cert.ts";

const opts = { ignore: !isRoot, sanitizeOps: false, sanitizeResources: false };
const ROOT = new URL("../../", import.meta.url).pathname;
const CTL = "192.168.77.250";

interface SecurityStatus {
  mode: string;
  publicKey: string;
  certificate: { subject: string; serial: string; notAfter: string; source: string } | null;
  ca: { keyId: string } | null;
  trust: { generation: number; revokedSerials: string[]; revokedNodeIds: string[] };
  stats: Record<string, number>;
}

/**
 * From an attacker namespace on the underlay (192.168.77.66), publishes a revocation list signed by
 * its own key under the cluster CA's id `keyId`, revoking `victim` (with broker credentials if given).
 */
async function publishForged(w: World, keyId: string, victim: string, credentials: string[] = []) {
  const ans = await w.namespace("att");
  await w.attach(ans, "a", "192.168.77.66");
  return await runTool("ip", [
    "netns",
    "exec",
    ans,
    Deno.execPath(),
    "run",
    "-A",
    "--config",
    `${ROOT}deno.json`,
    `${ROOT}tests/helpers/forge_revocations.ts`,
    `mqtt://${CTL}:10003`,
    keyId,
    victim,
    ...credentials,
  ]);
}

/** Node n`i + 1`'s security status (by name: nodes started side by side are in `w.nodes` as they came up). */
async function security(w: World, i: number): Promise<SecurityStatus> {
  const s = await w.nodes.find((n) => n.name === `n${i + 1}`)!.api.getJson("/status") as {
    security: SecurityStatus;
  };
  return s.security;
}

async function until<T>(
  what: string,
  ms: number,
  f: () => Promise<T | undefined> | T | undefined,
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await Promise.resolve().then(f).catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Every spelling of a 32-byte secret a log could carry. */
function spellings(b64: string): string[] {
  const raw = Buffer.from(b64, "base64");
  return [b64, raw.toString("base64url"), raw.toString("hex")];
}

Deno.test({
  name:
    "PKI via netmanager control: certificates for 2 nodes, keys 0600 and never logged, forged list ignored, node rm revokes in ≤ 10 s",
  ...opts,
  fn: async () => {
    await withWorld(async (w) => {
      const dir = await w.tempDir("pki");
      const cns = await w.namespace("ctl");
      await w.attach(cns, "c", CTL);
      // Anonymous broker (labs only): lets the forger below publish at all, so the nodes' signature
      // check is what stops it (with credentials the broker's ACL refuses it first: unit-tested).
      w.spawnIn(cns, [
        ...selfCommand(),
        "control",
        "--state-dir",
        `${dir}/ctl`,
        "--mqtt-allow-anonymous",
        "--mqtt-port",
        "10003",
      ], `${dir}/control.log`);
      await until(
        "control plane",
        30000,
        async () =>
          /control plane started/.test(await Deno.readTextFile(`${dir}/control.log`)) ? true : undefined,
      );
      const [n1, n2] = await Promise.all([1, 2].map((i) => w.clusterNode(`n${i}`, `192.168.77.${i}`, CTL)));
      const ids = [`${w.prefix}-n1`, `${w.prefix}-n2`];
      const t0 = Date.now();
      const secs = await Promise.all([0, 1].map((i) =>
        until(`certificate of n${i + 1}`, 15000, async () => {
          const s = await security(w, i);
          return s.certificate ? s : undefined;
        })
      ));
      console.log(`certificates on both nodes ${Date.now() - t0} ms after registration`);

      // Each certificate: signed by the cluster CA, for the node's id and its own public key.
      const ca = await loadCaPublic(`${dir}/ctl/tunnel-ca/ca.json`);
      const store = new TrustStore({
        caPublicKeys: [ca.publicKey],
        revokedSerials: [],
        revokedNodeIds: [],
        generation: 1,
      });
      const now = Math.floor(Date.now() / 1000);
      const serials: string[] = [];
      for (const [i, node] of [n1, n2].entries()) {
        const cert = await loadCertFile(`${node.dir}/state/tunnel-cert.pem`);
        const v = store.verify(cert, now);
        assertEquals(v.nodeId, ids[i]);
        assertEquals(Buffer.from(v.publicKey).toString("base64"), secs[i].publicKey);
        assertEquals(secs[i].certificate!.serial, v.serial);
        assertEquals(secs[i].ca!.keyId, ca.keyId);
        assert(
          v.notAfter - now > 29 * 86400 && v.notAfter - now <= 30 * 86400,
          `validity ${v.notAfter - now}`,
        );
        serials.push(v.serial);
        assertEquals((await Deno.stat(`${node.dir}/state/tunnel-identity.json`)).mode! & 0o777, 0o600);
      }
      assertEquals((await Deno.stat(`${dir}/ctl/tunnel-ca/ca.key`)).mode! & 0o777, 0o600);
      assertEquals((await Deno.stat(`${dir}/ctl/tunnel-certs.json`)).mode! & 0o777, 0o600);

      // A forged list: its own key, the cluster CA's id, sequence 1e6, revoking n2.
      const forged = await publishForged(w, ca.keyId, ids[1]);
      assertEquals(forged.stdout.trim(), "published", forged.stderr);
      await until(
        "forged list counted on n1",
        5000,
        async () => (await security(w, 0)).stats.revocationListsForged >= 1 ? true : undefined,
      );
      const afterForge = await security(w, 0);
      assertEquals(afterForge.trust.revokedNodeIds, []);
      assertEquals(afterForge.trust.revokedSerials, []);

      // control node rm n2 → n1's trust snapshot revokes n2 (its id and serial) within 10 s.
      const genBefore = afterForge.trust.generation;
      const t1 = Date.now();
      const rm = await runTool("ip", [
        "netns",
        "exec",
        cns,
        ...selfCommand(),
        "control",
        "node",
        "rm",
        ids[1],
        "--state-dir",
        `${dir}/ctl`,
      ]);
      assertEquals(rm.code, 0, rm.stderr);
      const revoked = await until("revocation on n1", 10000, async () => {
        const s = await security(w, 0);
        return s.trust.revokedNodeIds.includes(ids[1]) ? s : undefined;
      });
      const ms = Date.now() - t1;
      console.log(
        `node rm (CLI started) → revoked on n1 after ${ms} ms (trust generation ${genBefore} → ${revoked.trust.generation})`,
      );
      assert(ms <= 10000);
      assert(revoked.trust.generation > genBefore);
      assert(revoked.trust.revokedSerials.includes(serials[1]));
      assert(!revoked.trust.revokedNodeIds.includes(ids[0]));
      // n1's own snapshot now refuses n2's certificate.
      const snap = new TrustStore({
        caPublicKeys: [ca.publicKey],
        revokedSerials: revoked.trust.revokedSerials,
        revokedNodeIds: revoked.trust.revokedNodeIds,
        generation: revoked.trust.generation,
      });
      let reason = "";
      try {
        snap.verify(await loadCertFile(`${n2.dir}/state/tunnel-cert.pem`), now);
      } catch (e) {
        reason = (e as { reason?: string }).reason ?? String(e);
      }
      assertEquals(reason, "revoked");

      // `control node add` lifts the id's revocation (its old serial stays revoked).
      const add = await runTool("ip", [
        "netns",
        "exec",
        cns,
        ...selfCommand(),
        "control",
        "node",
        "add",
        ids[1],
        "--out",
        `${dir}/n2-cred.json`,
        "--state-dir",
        `${dir}/ctl`,
      ]);
      assertEquals(add.code, 0, add.stderr);
      const lifted = await until("lifted on n1", 10000, async () => {
        const s = await security(w, 0);
        return s.trust.revokedNodeIds.length === 0 ? s : undefined;
      });
      assert(lifted.trust.revokedSerials.includes(serials[1]));

      // The private keys appear in no log (nodes' and control plane's), in any spelling.
      const logs = [
        await Deno.readTextFile(`${dir}/control.log`),
        await Deno.readTextFile(`${n1.dir}/daemon.log`),
        await Deno.readTextFile(`${n2.dir}/daemon.log`),
      ].join("\n");
      assertMatch(logs, /tunnel certificate received/); // the logs are the right ones
      const secrets = [
        JSON.parse(await Deno.readTextFile(`${n1.dir}/state/tunnel-identity.json`)).privateKey,
        JSON.parse(await Deno.readTextFile(`${n2.dir}/state/tunnel-identity.json`)).privateKey,
        JSON.parse(await Deno.readTextFile(`${dir}/ctl/tunnel-ca/ca.key`)).privateKey,
      ];
      for (const s of secrets) {
        for (const form of spellings(s)) assert(!logs.includes(form), "a private key is in a log");
      }
      // Nor in status output.
      const status = JSON.stringify(await n1.api.getJson("/status"));
      for (const form of spellings(secrets[0])) assert(!status.includes(form));

      // `netmanager clean` drops the cached certificate, keeps the identity (offline certificates bind it).
      await w.stopDaemon(n1);
      const clean = await runTool("ip", [
        "netns",
        "exec",
        n1.ns,
        ...selfCommand(),
        "clean",
        "--cfg",
        `${n1.dir}/netcfg.json`,
        "--state-dir",
        `${n1.dir}/state`,
        "--socket",
        n1.socket,
      ]);
      assertEquals(clean.code, 0, clean.stderr);
      const left = [...Deno.readDirSync(`${n1.dir}/state`)].map((e) => e.name).sort();
      assert(!left.includes("tunnel-cert.pem") && !left.includes("tunnel-ca.json"), left.join());
      assert(left.includes("tunnel-identity.json"), left.join());
    });
  },
});

Deno.test({
  name:
    "PKI offline: cert ca → show → sign; the node loads the files; a foreign certificate stops the daemon",
  ...opts,
  fn: async () => {
    await withWorld(async (w) => {
      const dir = await w.tempDir("off");
      const cli = async (args: string[]) => {
        const r = await runTool(selfCommand()[0], [...selfCommand().slice(1), ...args]);
        assertEquals(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
        return r.stdout.trim();
      };
      await cli(["cert", "ca", "--out", `${dir}/ca`, "--name", "lab"]);
      const key = await cli(["cert", "show", "--state-dir", `${dir}/state`]);
      await cli([
        "cert",
        "sign",
        "--ca",
        `${dir}/ca`,
        "--node-id",
        "lab-node-1",
        "--public-key",
        key,
        "--out",
        `${dir}/node.crt`,
      ]);
      const base = JSON.parse(await Deno.readTextFile(`${ROOT}config/netcfg.json`));
      await Deno.writeTextFile(
        `${dir}/netcfg.json`,
        JSON.stringify({
          ...base,
          TunnelSecurity: "require",
          TunnelCertFile: `${dir}/node.crt`,
          TunnelCaFile: `${dir}/ca/ca.json`,
        }),
      );
      await w.node("n1", "10.18.0.64/26", ["--cfg", `${dir}/netcfg.json`, "--state-dir", `${dir}/state`]);
      const s = await security(w, 0);
      assertEquals(s.mode, "require");
      assertEquals(s.publicKey, key);
      assertEquals(s.certificate?.subject, "lab-node-1");
      assertEquals(s.certificate?.source, `${dir}/node.crt`);
      assertEquals(s.certificate?.serial, decodeCertificate(await loadCertFile(`${dir}/node.crt`)).serial);
      assertEquals(s.ca?.keyId, (await loadCaPublic(`${dir}/ca/ca.json`)).keyId);

      // The same certificate for another node's state (another key): the daemon refuses to start.
      const ns = await w.namespace("bad");
      const bad = await runTool("ip", [
        "netns",
        "exec",
        ns,
        ...selfCommand(),
        "daemon",
        "--subnet",
        "10.18.0.128/26",
        "--cfg",
        `${dir}/netcfg.json`,
        "--tuncfg",
        `${ROOT}config/tuncfg.json`,
        "--state-dir",
        `${dir}/state2`,
        "--socket",
        `${dir}/bad.sock`,
      ]);
      assertEquals(bad.code, 1, bad.stderr);
      assertMatch(bad.stderr, /is for another key/);
      const links = (await runTool("ip", ["-n", ns, "-o", "link"])).stdout;
      assert(!/goProxy/.test(links), `the refused daemon created links: ${links}`);
    });
  },
});

Deno.test({
  name:
    "PKI behind mosquitto with passwords + config/mosquitto/acl: certificates flow, a node cannot publish a revocation list, node rm revokes",
  ...opts,
  fn: async () => {
    await withWorld(async (w) => {
      await w.control(CTL, { broker: "mosquitto" });
      const [n1] = await Promise.all([1, 2].map((i) => w.clusterNode(`n${i}`, `192.168.77.${i}`, CTL)));
      const ids = [`${w.prefix}-n1`, `${w.prefix}-n2`];
      await Promise.all(
        [0, 1].map((i) =>
          until(
            `certificate of n${i + 1}`,
            15000,
            async () => (await security(w, i)).certificate ?? undefined,
          )
        ),
      );
      const ca = await loadCaPublic(`${w.controlStateDir}/tunnel-ca/ca.json`);
      assertEquals((await security(w, 0)).ca?.keyId, ca.keyId);
      // An authenticated client (its own credential) tries to publish a forged list: the ACL drops it.
      const dir = await w.tempDir("att");
      await w.nodeCredential("attacker", dir);
      const cred = JSON.parse(await Deno.readTextFile(`${dir}/mqtt-credential.json`));
      const forged = await publishForged(w, ca.keyId, ids[1], [cred.username, cred.password]);
      assertEquals(forged.code, 0, forged.stderr);
      await new Promise((r) => setTimeout(r, 1500));
      const s1 = await security(w, 0);
      assertEquals(s1.stats.revocationListsForged, 0); // never delivered
      assertEquals(s1.trust.revokedNodeIds, []);
      // The retained list is still the control plane's: node rm is applied on n1 within 10 s.
      const t = Date.now();
      await w.ctl(["node", "rm", ids[1]]);
      await until(
        "revocation on n1",
        10000,
        async () => (await security(w, 0)).trust.revokedNodeIds.includes(ids[1]) ? true : undefined,
      );
      console.log(`mosquitto: node rm → revoked on n1 after ${Date.now() - t} ms`);
      assertMatch(await Deno.readTextFile(`${n1.dir}/daemon.log`), /revocation list applied/);
    });
  },
});

Deno.test({
  name:
    "PKI with etcd replicas: one CA for both, a node rm through one replica reaches the other's broker in ≤ 10 s",
  ignore: !hasEtcd(),
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const { startControl } = await import("../../src/cluster/mod.ts");
    const mqtt = (await import("mqtt")).default;
    const dir = await Deno.makeTempDir({ prefix: "nmpki-" });
    const etcd = await startEtcd(dir);
    const url = etcd.url;
    const replicas: Array<Awaited<ReturnType<typeof startControl>>> = [];
    const clients: Array<import("mqtt").MqttClient> = [];
    try {
      for (const i of [1, 2]) {
        replicas.push(
          await startControl({
            stateDir: `${dir}/r${i}`,
            etcd: { endpoints: [url], cluster: "pki" },
            mqttHost: "127.0.0.1",
            mqttPort: 0,
            httpPort: 0,
            allowAnonymous: true,
          }),
        );
      }
      // A node on each replica's broker asks for a certificate for the same key.
      const key = Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64");
      const answers: Array<Record<string, unknown>> = [];
      const lists: Array<{ sequence: number; node_ids: string[] }> = [];
      for (const [i, r] of replicas.entries()) {
        const c = await mqtt.connectAsync(r.brokerUrl, { clientId: `w${i}`, reconnectPeriod: 0 });
        clients.push(c);
        c.on("message", (topic, payload) => {
          const v = JSON.parse(new TextDecoder().decode(payload));
          if (topic === "netmanager/trust/revocations") {
            if (i === 1) lists.push(v);
          } else answers.push(v);
        });
        await c.subscribeAsync([`nodes/w${i}/net/cert/result`, "netmanager/trust/revocations"]);
        await c.publishAsync(`nodes/w${i}/net/cert/request`, JSON.stringify({ public_key: key }), { qos: 1 });
      }
      await until("certificates", 10000, () => answers.length === 2 ? true : undefined);
      assertEquals(answers[0].ca_public_key, answers[1].ca_public_key); // one CA for the cluster
      // w0 registers (subnet) through replica 1 and is removed through replica 1's HTTP API.
      await clients[0].publishAsync("nodes/w0/net/subnet", JSON.stringify({ METHOD: "GET" }), { qos: 1 });
      await until("w0 registered", 10000, () => replicas[0].state.node("w0") ? true : undefined);
      const token = (await Deno.readTextFile(replicas[0].tokenPath)).trim();
      const t = Date.now();
      const rm = await fetch(`${replicas[0].httpUrl}/api/net/node/w0`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${token}` },
      });
      assertEquals(rm.status, 200, await rm.text());
      const got = await until(
        "revocation on replica 2's broker",
        10000,
        () => lists.find((l) => l.node_ids.includes("w0")),
      );
      console.log(`etcd: node rm on replica 1 → list on replica 2's broker after ${Date.now() - t} ms`);
      assert(got.sequence >= 1);
      // Replica 2 refuses w0 a certificate now (the revocation is shared).
      answers.length = 0;
      await clients[1].subscribeAsync("nodes/w0/net/cert/result");
      const probe = await mqtt.connectAsync(replicas[1].brokerUrl, { clientId: "w0", reconnectPeriod: 0 });
      clients.push(probe);
      await probe.subscribeAsync("nodes/w0/net/cert/result");
      probe.on("message", (_t, p) => answers.push(JSON.parse(new TextDecoder().decode(p))));
      await probe.publishAsync("nodes/w0/net/cert/request", JSON.stringify({ public_key: key }), { qos: 1 });
      const refused = await until("refusal", 10000, () => answers.find((a) => "error" in a));
      assertMatch(String(refused.error), /revoked/);
    } finally {
      for (const c of clients) await c.endAsync(true).catch(() => {});
      for (const r of replicas) await r.stop();
      await etcd.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
