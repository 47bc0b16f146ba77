/**
 * Trust beyond single certificates: revocation lists (forged, altered, stale), the offline PKI files
 * and CLI flow (ca → show → sign → the node loads them), the control plane's CA (issue, reuse,
 * revoke, lift) and the node's trust state fed by it.
 */
import { assert, assertEquals, assertMatch, assertRejects } from "../helpers/assert.ts";
import { Buffer } from "node:buffer";
import { CertError, decodeCertificate, generateCa, signCertificate } from "../../src/secure/cert.ts";
import { signRevocationList, verifyRevocationList } from "../../src/secure/revocation.ts";
import {
  certFromPem,
  certToPem,
  loadCaKey,
  loadCaPublic,
  TrustFileError,
  writeCa,
} from "../../src/secure/files.ts";
import { encodeKey, generateIdentity, loadOrCreateIdentity } from "../../src/secure/identity.ts";
import { NodeSecurity, SecurityConfigError, type SecuritySettings } from "../../src/secure/node_security.ts";
import { TrustStore } from "../../src/secure/trust.ts";
import { ClusterPki } from "../../src/cluster/pki.ts";
import { mayPublish, maySubscribe } from "../../src/cluster/auth.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

function reason(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert(e instanceof CertError, String(e));
    return e.reason;
  }
  return "none";
}

Deno.test("revocations: signed list verifies; forged, altered, malformed are refused with a reason", () => {
  const ca = generateCa("c");
  const evil = generateCa("evil");
  const list = signRevocationList(ca, {
    sequence: 3,
    issuedAt: 100,
    serials: ["00000000000000aa"],
    nodeIds: ["w2"],
  });
  const wire = JSON.parse(JSON.stringify(list));
  assertEquals(verifyRevocationList(wire, [ca.publicKey]), {
    issuer: ca.keyId,
    sequence: 3,
    issuedAt: 100,
    serials: ["00000000000000aa"],
    nodeIds: ["w2"],
  });
  // Signed by another key but claiming our CA's id → signature; naming its own id → unknown CA.
  const forged = {
    ...signRevocationList(evil, { sequence: 9, issuedAt: 100, serials: [], nodeIds: ["w1"] }),
  };
  assertEquals(reason(() => verifyRevocationList(forged, [ca.publicKey])), "unknown-ca");
  assertEquals(
    reason(() => verifyRevocationList({ ...forged, issuer: ca.keyId }, [ca.publicKey])),
    "signature",
  );
  for (const altered of [{ sequence: 4 }, { node_ids: [] }, { serials: [] }, { issued_at: 101 }]) {
    assertEquals(reason(() => verifyRevocationList({ ...wire, ...altered }, [ca.publicKey])), "signature");
  }
  for (const bad of [null, 3, {}, { ...wire, v: 2 }, { ...wire, extra: 1 }, { ...wire, node_ids: ["a/b"] }]) {
    assertEquals(reason(() => verifyRevocationList(bad, [ca.publicKey])), "malformed");
  }
});

Deno.test("files: CA written 0600 and never overwritten; PEM round trip; foreign/loose files refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ca = generateCa("lab");
    await writeCa(`${dir}/ca`, ca, { notBefore: 0, notAfter: 4_000_000_000 });
    assertEquals((await Deno.stat(`${dir}/ca/ca.key`)).mode! & 0o777, 0o600);
    assertEquals((await loadCaKey(`${dir}/ca`)).privateKey, ca.privateKey);
    assertEquals((await loadCaPublic(`${dir}/ca/ca.json`)).publicKey, ca.publicKey);
    assert(!(await Deno.readTextFile(`${dir}/ca/ca.json`)).includes(encodeKey(ca.privateKey)));
    await assertRejects(
      () => writeCa(`${dir}/ca`, generateCa("x"), { notBefore: 0, notAfter: 1 }),
      TrustFileError,
      "refusing",
    );
    await Deno.chmod(`${dir}/ca/ca.key`, 0o644);
    await assertRejects(() => loadCaKey(`${dir}/ca`), TrustFileError, "chmod 600");
    await assertRejects(() => loadCaPublic(`${dir}/ca/ca.key`), TrustFileError, "not a netmanager CA file");
    const pub = JSON.parse(await Deno.readTextFile(`${dir}/ca/ca.json`));
    await Deno.writeTextFile(`${dir}/bad.json`, JSON.stringify({ ...pub, keyId: "0000000000000000" }));
    await assertRejects(() => loadCaPublic(`${dir}/bad.json`), TrustFileError, "keyId");
    const cert = signCertificate(ca, {
      nodeId: "n1",
      publicKey: generateIdentity().publicKey,
      notBefore: 0,
      notAfter: 9,
    });
    assertEquals(certFromPem(certToPem(cert)), cert);
    let err: unknown;
    try {
      certFromPem("-----BEGIN NETMANAGER CERTIFICATE-----\nAAAA\n-----END NETMANAGER CERTIFICATE-----\n");
    } catch (e) {
      err = e;
    }
    assert(err instanceof CertError && err.reason === "malformed");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}main.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const d = new TextDecoder();
  return { code: o.code, stdout: d.decode(o.stdout), stderr: d.decode(o.stderr) };
}

Deno.test("cert CLI offline flow: ca → show → sign → inspect → the node loads the files; exit statuses", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ca = await cli(["cert", "ca", "--out", `${dir}/ca`, "--name", "lab", "--days", "10"]);
    assertEquals(ca.code, 0, ca.stderr);
    assertEquals((await Deno.stat(`${dir}/ca/ca.key`)).mode! & 0o777, 0o600);
    const show = await cli(["cert", "show", "--state-dir", `${dir}/state`]);
    assertEquals(show.code, 0, show.stderr);
    const key = show.stdout.trim();
    assertMatch(key, /^[A-Za-z0-9+/]{43}=$/);
    assertEquals((await cli(["cert", "show", "--state-dir", `${dir}/state`])).stdout.trim(), key); // stable
    const sign = await cli([
      "cert",
      "sign",
      "--ca",
      `${dir}/ca`,
      "--node-id",
      "node1",
      "--public-key",
      key,
      "--out",
      `${dir}/n1.crt`,
      "--days",
      "30",
    ]);
    assertEquals(sign.code, 0, sign.stderr);
    const insp = await cli(["cert", "inspect", `${dir}/n1.crt`, "--ca", `${dir}/ca/ca.json`, "--json"]);
    assertEquals(insp.code, 0, insp.stderr);
    const v = JSON.parse(insp.stdout);
    assertEquals([v.subject, v.publicKey], ["node1", key]);
    assertMatch(v.verification, /^valid/);
    // CA capped validity: 30 days asked, the CA lives 10.
    assert(Date.parse(v.notAfter) <= Date.now() + 10 * 86400_000 + 60_000);
    // The node loads them as netcfg.json names them.
    const settings: SecuritySettings[] = [];
    const sec = await NodeSecurity.load({
      mode: "require",
      stateDir: `${dir}/state`,
      certFile: `${dir}/n1.crt`,
      caFile: `${dir}/ca/ca.json`,
      onChange: (s) => settings.push(s),
    });
    const cur = sec.current();
    assert(cur.credential !== undefined);
    assertEquals(encodeKey(cur.credential.identity.publicKey), key);
    assertEquals(
      new TrustStore(cur.trust).verify(cur.credential.certificate, Math.floor(Date.now() / 1000)).nodeId,
      "node1",
    );
    assert(!sec.needsCertificate());
    // Errors: usage 2, runtime 1; a certificate for another node's key stops the node with the reason.
    assertEquals(
      (await cli([
        "cert",
        "sign",
        "--ca",
        `${dir}/ca`,
        "--node-id",
        "a b",
        "--public-key",
        key,
        "--out",
        `${dir}/x`,
      ])).code,
      2,
    );
    assertEquals(
      (await cli([
        "cert",
        "sign",
        "--ca",
        `${dir}/ca`,
        "--node-id",
        "n",
        "--public-key",
        "nope",
        "--out",
        `${dir}/x`,
      ])).code,
      2,
    );
    // The node refuses a trust setup that does not fit (error naming why), before touching anything.
    const refused = (stateDir: string, certFile: string, caFile: string, why: string) =>
      assertRejects(
        () => NodeSecurity.load({ mode: "prefer", stateDir, certFile, caFile }),
        SecurityConfigError,
        why,
      );
    assertEquals((await cli(["cert", "ca", "--out", `${dir}/ca`])).code, 1);
    assertEquals((await cli(["cert", "inspect", `${dir}/missing`])).code, 1);
    assertEquals((await cli(["cert", "bogus"])).code, 2);
    await cli(["cert", "ca", "--out", `${dir}/other`]);
    assertEquals((await cli(["cert", "inspect", `${dir}/n1.crt`, "--ca", `${dir}/other/ca.json`])).code, 1);
    await refused(`${dir}/state2`, `${dir}/n1.crt`, `${dir}/ca/ca.json`, "another key");
    await refused(`${dir}/state`, `${dir}/n1.crt`, `${dir}/other/ca.json`, "unknown-ca");
    await refused(`${dir}/state`, `${dir}/n1.crt`, "", "needs TunnelCaFile");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cluster PKI → node trust: issue, reuse, key check, revoke by list (forged/stale ignored), lift", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const pki = await ClusterPki.open(`${dir}/control`);
    assertEquals((await Deno.stat(`${dir}/control/tunnel-ca/ca.key`)).mode! & 0o777, 0o600);
    const again = await ClusterPki.open(`${dir}/control`);
    assertEquals(again.ca.keyId, pki.ca.keyId); // kept across restarts
    const changes: SecuritySettings[] = [];
    const sec = await NodeSecurity.load({
      mode: "prefer",
      stateDir: `${dir}/w1`,
      certFile: "",
      caFile: "",
      onChange: (s) => changes.push(s),
    });
    assert(sec.needsCertificate() && sec.current().credential === undefined);
    const req = sec.certRequest();
    const answer = await pki.issue("w1", req.public_key);
    assert("certificate" in answer);
    // A certificate for another id or another key is refused.
    assert(!(await sec.acceptCertResult(answer, "w9")));
    const other = await pki.issue("w1", encodeKey(generateIdentity().publicKey));
    assert(!(await sec.acceptCertResult(other, "w1")));
    assert(!(await sec.acceptCertResult({ certificate: "AAAA", ca_public_key: "x" }, "w1")));
    assert(await sec.acceptCertResult(answer, "w1"));
    assertEquals(changes.length, 1);
    const cred = sec.current().credential!;
    const serial = decodeCertificate(cred.certificate).serial;
    assert(!sec.needsCertificate());
    // Same key again: the same certificate.
    const reuse = await pki.issue("w1", req.public_key);
    assert("certificate" in reuse && reuse.certificate === answer.certificate);
    // Kept in StateDir: a restart starts with it.
    const restarted = await NodeSecurity.load({
      mode: "prefer",
      stateDir: `${dir}/w1`,
      certFile: "",
      caFile: "",
    });
    assertEquals(restarted.current().credential?.certificate, cred.certificate);

    // Revocation: the list is applied; the other node's store refuses w1's certificate.
    const list = await pki.revoke("w1");
    const peer = await NodeSecurity.load({
      mode: "require",
      stateDir: `${dir}/w2`,
      certFile: "",
      caFile: "",
    });
    assert(await peer.acceptCertResult(await pki.issue("w2", peer.certRequest().public_key), "w2"));
    const before = peer.current().trust;
    assertEquals(new TrustStore(before).verify(cred.certificate, Math.floor(Date.now() / 1000)).nodeId, "w1");
    assertEquals(peer.acceptRevocations(JSON.parse(JSON.stringify(list))), "accepted");
    const after = peer.current().trust;
    assert(after.generation > before.generation);
    assertEquals(after.revokedNodeIds, ["w1"]);
    assert(after.revokedSerials.includes(serial));
    assertEquals(
      reason(() => new TrustStore(after).verify(cred.certificate, Math.floor(Date.now() / 1000))),
      "revoked",
    );
    // Forged (another CA) and stale (older sequence) lists change nothing and are counted.
    const evil = generateCa("evil");
    const forged = signRevocationList(evil, { sequence: 99, issuedAt: 1, serials: [], nodeIds: ["w2"] });
    assertEquals(peer.acceptRevocations({ ...forged, issuer: pki.ca.keyId }), "forged");
    assertEquals(peer.acceptRevocations(forged), "forged");
    assertEquals(peer.stats.revocationListsForged, 2);
    const lifted = await pki.unrevoke("w1");
    assert(lifted);
    assertEquals(peer.acceptRevocations(lifted), "accepted");
    assertEquals(peer.current().trust.revokedNodeIds, []);
    assert(peer.current().trust.revokedSerials.includes(serial)); // old serials stay revoked
    assertEquals(peer.acceptRevocations(list), "stale");
    assertEquals(peer.stats.revocationListsStale, 1);
    // A revoked id gets no certificate until lifted.
    await pki.revoke("w3");
    const refused = await pki.issue("w3", req.public_key);
    assert("error" in refused);
    assertMatch(refused.error, /revoked/);
    // The private key appears nowhere in status.
    assert(
      !JSON.stringify(sec.status()).includes(encodeKey((await loadOrCreateIdentity(`${dir}/w1`)).privateKey)),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ACL: nodes read the revocation list but never publish it, nor another node's certificate result", () => {
  assert(maySubscribe("w1", "netmanager/trust/revocations"));
  assert(!mayPublish("w1", "netmanager/trust/revocations"));
  assert(mayPublish("w1", "nodes/w1/net/cert/request"));
  assert(!mayPublish("w1", "nodes/w1/net/cert/result"));
  assert(!mayPublish("w1", "nodes/w2/net/cert/request"));
  assert(maySubscribe("w1", "nodes/w1/net/cert/result"));
  assert(!maySubscribe("w1", "nodes/w2/net/cert/result"));
  assert(!maySubscribe("w1", "netmanager/#"));
});

Deno.test("status view: the security line names the certificate, or says there is none", async () => {
  const { formatStatus } = await import("../../src/cli/views.ts");
  const base = { mode: "cluster", registered: true, workerId: "w1", peers: [], uptimeSeconds: 1 };
  const withCert = formatStatus({
    ...base,
    security: {
      mode: "require",
      certificate: { subject: "w1", serial: "00000000000000aa", notAfter: "2027-01-01T00:00:00.000Z" },
      trust: { revokedNodeIds: ["w3"] },
    },
  });
  assertMatch(
    withCert,
    /^security\s+require, certificate w1 serial 00000000000000aa until 2027-01-01T00:00:00.000Z, 1 node\(s\) revoked$/m,
  );
  assertMatch(
    formatStatus({ ...base, security: { mode: "prefer", certificate: null } }),
    /^security\s+prefer, NO certificate yet$/m,
  );
  assertMatch(formatStatus({ ...base, security: { mode: "off", certificate: null } }), /^security\s+off$/m);
});

Deno.test("renewal: the node asks again when a third of the validity is left; the CA re-signs past half", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const pki = await ClusterPki.open(`${dir}/control`);
    const sec = await NodeSecurity.load({ mode: "prefer", stateDir: `${dir}/w1`, certFile: "", caFile: "" });
    const key = sec.certRequest().public_key;
    const first = await pki.issue("w1", key);
    assert("certificate" in first && (await sec.acceptCertResult(first, "w1")));
    const now = Math.floor(Date.now() / 1000);
    const day = 86400;
    assert(!sec.needsCertificate(now + 19 * day));
    assert(sec.needsCertificate(now + 21 * day)); // 30 days − 1/3 = 20 days (+ 5 min backdating)
    const early = await pki.issue("w1", key, now + 10 * day);
    assert("certificate" in early && early.certificate === first.certificate); // more than half left: the same
    const late = await pki.issue("w1", key, now + 16 * day);
    assert("certificate" in late && late.certificate !== first.certificate);
    const renewed = decodeCertificate(new Uint8Array(Buffer.from(late.certificate, "base64")));
    assertEquals(renewed.notAfter, now + 16 * day + 30 * day);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pinning: with TunnelCaFile a cluster node accepts only that CA's certificate", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const pki = await ClusterPki.open(`${dir}/control`);
    const other = generateCa("other");
    await writeCa(`${dir}/other`, other, { notBefore: 0, notAfter: 4_000_000_000 });
    const pinnedOther = await NodeSecurity.load({
      mode: "require",
      stateDir: `${dir}/w1`,
      certFile: "",
      caFile: `${dir}/other/ca.json`,
    });
    const a = await pki.issue("w1", pinnedOther.certRequest().public_key);
    assert(!(await pinnedOther.acceptCertResult(a, "w1")));
    assertMatch(String(pinnedOther.status().lastRefusal), /not the pinned TunnelCaFile CA/);
    const pinnedRight = await NodeSecurity.load({
      mode: "require",
      stateDir: `${dir}/w1`,
      certFile: "",
      caFile: `${dir}/control/tunnel-ca/ca.json`,
    });
    assert(await pinnedRight.acceptCertResult(a, "w1"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
