import { assert, assertEquals, assertMatch, assertRejects, assertThrows } from "../helpers/assert.ts";
import { Buffer } from "node:buffer";
import {
  caKeyId,
  CertError,
  type CertErrorReason,
  decodeCertificate,
  encodeCertificate,
  generateCa,
  MAX_CERT_BYTES,
  signCertificate,
  verifyCertificate,
} from "../../src/secure/cert.ts";
import {
  decodeKey,
  encodeKey,
  generateIdentity,
  IDENTITY_FILE_NAME,
  IdentityError,
  loadOrCreateIdentity,
  x25519PublicKey,
} from "../../src/secure/identity.ts";
import { emptyTrust, TrustStore } from "../../src/secure/trust.ts";

const NOW = 1_800_000_000;

function reasonOf(fn: () => unknown): CertErrorReason {
  const e = assertThrows(fn, CertError) as CertError;
  return e.reason;
}

function fresh(nodeId = "64f1c2aa0d3e4b5f6a7b8c9d") {
  const ca = generateCa("cluster");
  const id = generateIdentity();
  const cert = signCertificate(ca, {
    nodeId,
    publicKey: id.publicKey,
    notBefore: NOW - 300,
    notAfter: NOW + 3600,
  });
  return { ca, id, cert };
}

Deno.test("cert: sign → encode → decode → verify round trip; compact size", () => {
  const { ca, id, cert } = fresh();
  assertEquals(cert.length, 130 + 24);
  assert(cert.length <= 200);
  const c = decodeCertificate(cert);
  assertEquals(c.nodeId, "64f1c2aa0d3e4b5f6a7b8c9d");
  assertEquals(c.publicKey, id.publicKey);
  assertEquals([c.notBefore, c.notAfter], [NOW - 300, NOW + 3600]);
  assertEquals(c.issuerKeyId, ca.keyId);
  assertEquals(c.issuerKeyId, caKeyId(ca.publicKey));
  assertMatch(c.serial, /^[0-9a-f]{16}$/);
  assertEquals(encodeCertificate(c), cert);
  assertEquals(verifyCertificate(cert, [ca.publicKey], NOW).serial, c.serial);
  const store = new TrustStore({
    caPublicKeys: [ca.publicKey],
    revokedSerials: [],
    revokedNodeIds: [],
    generation: 1,
  });
  const v = store.verify(cert, NOW);
  assertEquals(v, {
    nodeId: c.nodeId,
    publicKey: id.publicKey,
    serial: c.serial,
    notAfter: NOW + 3600,
    subject: c.nodeId,
  });
  // The longest id fits MAX_CERT_BYTES; a UTF-8 id round-trips.
  const long = signCertificate(ca, {
    nodeId: "n".repeat(128),
    publicKey: id.publicKey,
    notBefore: 0,
    notAfter: 1,
  });
  assertEquals(long.length, MAX_CERT_BYTES);
  const utf = signCertificate(ca, { nodeId: "knoten-ä", publicKey: id.publicKey, notBefore: 0, notAfter: 1 });
  assertEquals(decodeCertificate(utf).nodeId, "knoten-ä");
});

Deno.test("cert: a snapshot is structured-cloneable and still verifies after the clone", () => {
  const { ca, cert } = fresh();
  const snap = structuredClone({
    caPublicKeys: [ca.publicKey],
    revokedSerials: [],
    revokedNodeIds: [],
    generation: 7,
  });
  const s = new TrustStore(snap);
  assertEquals(s.generation, 7);
  assertEquals(s.verify(cert, NOW).subject, "64f1c2aa0d3e4b5f6a7b8c9d");
});

Deno.test("cert: signing refuses bad fields", () => {
  const ca = generateCa("c");
  const pk = generateIdentity().publicKey;
  const ok = { nodeId: "w1", publicKey: pk, notBefore: 10, notAfter: 20 };
  const bad: [string, object][] = [
    ["empty id", { nodeId: "" }],
    ["slash", { nodeId: "a/b" }],
    ["plus", { nodeId: "a+b" }],
    ["hash", { nodeId: "a#" }],
    ["space", { nodeId: "a b" }],
    ["too long", { nodeId: "x".repeat(129) }],
    ["too long in bytes", { nodeId: "ä".repeat(65) }],
    ["short key", { publicKey: new Uint8Array(31) }],
    ["zero key", { publicKey: new Uint8Array(32) }],
    ["reversed validity", { notBefore: 20, notAfter: 10 }],
    ["empty validity", { notBefore: 20, notAfter: 20 }],
    ["negative", { notBefore: -1 }],
    ["fraction", { notAfter: 20.5 }],
    ["serial", { serial: "xyz" }],
  ];
  for (const [what, patch] of bad) {
    assertEquals(reasonOf(() => signCertificate(ca, { ...ok, ...patch })), "malformed", what);
  }
});

Deno.test("cert: every malformed field on decode → CertError with a reason", () => {
  const { ca, cert } = fresh("w1");
  const at = (mutate: (b: Uint8Array) => Uint8Array) =>
    reasonOf(() => decodeCertificate(mutate(cert.slice())));
  assertEquals(at(() => new Uint8Array(0)), "malformed");
  assertEquals(at((b) => b.subarray(0, 9)), "malformed");
  assertEquals(at((b) => b.subarray(0, b.length - 1)), "malformed");
  assertEquals(at((b) => new Uint8Array([...b, 0])), "malformed");
  assertEquals(at((b) => (b[0] = 2, b)), "version");
  assertEquals(at((b) => (b[0] = 0, b)), "version");
  assertEquals(at((b) => (b[9] = 0, b)), "malformed"); // id length 0
  assertEquals(at((b) => (b[9] = 129, b)), "malformed"); // id length above the bound
  assertEquals(at((b) => (b[9] = 3, b)), "malformed"); // length disagrees with the size
  assertEquals(at((b) => (b[10] = 0xff, b)), "malformed"); // not UTF-8
  assertEquals(at((b) => (b[10] = 0x2f, b)), "malformed"); // "/" in the id
  assertEquals(at((b) => (b.fill(0, 12, 44), b)), "malformed"); // all-zero key
  const dv = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset);
  assertEquals(at((b) => (dv(b).setBigUint64(44, 2n ** 60n), b)), "malformed"); // beyond safe integers
  assertEquals(at((b) => (dv(b).setBigUint64(44, BigInt(NOW + 3600)), b)), "malformed"); // notBefore = notAfter
  // Decoding does not check signatures: a tampered but well-formed certificate decodes, and verify refuses it.
  const tampered = cert.slice();
  tampered[20] ^= 1;
  assertEquals(decodeCertificate(tampered).nodeId, "w1");
  assertEquals(reasonOf(() => verifyCertificate(tampered, [ca.publicKey], NOW)), "signature");
});

Deno.test("cert: flipping any single byte never verifies (reason per position)", () => {
  const { ca, cert } = fresh("w1");
  const store = new TrustStore({
    caPublicKeys: [ca.publicKey],
    revokedSerials: [],
    revokedNodeIds: [],
    generation: 1,
  });
  const reasons = new Set<string>();
  for (let i = 0; i < cert.length; i++) {
    for (const bit of [0x01, 0x80]) {
      const b = cert.slice();
      b[i] ^= bit;
      const r = reasonOf(() => store.verify(b, NOW));
      reasons.add(r);
      if (i >= 60 && i < 68) assertEquals(r, "unknown-ca", `issuer byte ${i}`);
      if (i >= 68) assertEquals(r, "signature", `signature byte ${i}`);
    }
  }
  assert(reasons.has("signature") && reasons.has("malformed") && reasons.has("version"), [...reasons].join());
});

Deno.test("cert: wrong CA, expired, not yet valid, revoked by serial and by node id", () => {
  const { ca, cert } = fresh("w1");
  const other = generateCa("other");
  assertEquals(reasonOf(() => verifyCertificate(cert, [other.publicKey], NOW)), "unknown-ca");
  assertEquals(reasonOf(() => verifyCertificate(cert, [], NOW)), "unknown-ca");
  // A CA whose key id collides cannot forge: same id, other key → signature.
  const forged = signCertificate(other, {
    nodeId: "w1",
    publicKey: generateIdentity().publicKey,
    notBefore: 0,
    notAfter: NOW * 2,
  });
  const f = forged.slice();
  f.set(Buffer.from(ca.keyId, "hex"), f.length - 72);
  assertEquals(reasonOf(() => verifyCertificate(f, [ca.publicKey], NOW)), "signature");
  const s = (rs: string[], rn: string[]) =>
    new TrustStore({
      caPublicKeys: [other.publicKey, ca.publicKey],
      revokedSerials: rs,
      revokedNodeIds: rn,
      generation: 2,
    });
  assertEquals(s([], []).verify(cert, NOW - 300).nodeId, "w1"); // notBefore inclusive
  assertEquals(reasonOf(() => s([], []).verify(cert, NOW - 301)), "not-yet-valid");
  assertEquals(reasonOf(() => s([], []).verify(cert, NOW + 3600)), "expired"); // notAfter exclusive
  const serial = decodeCertificate(cert).serial;
  assertEquals(reasonOf(() => s([serial], []).verify(cert, NOW)), "revoked");
  assertEquals(reasonOf(() => s([], ["w1"]).verify(cert, NOW)), "revoked");
  const v = s([], []).verify(cert, NOW);
  assert(s(["0000000000000000", serial], []).isRevoked(v));
  assert(s([], ["w1"]).isRevoked(v));
  assert(!s(["0000000000000000"], ["w2"]).isRevoked(v));
  assertEquals(reasonOf(() => new TrustStore(emptyTrust()).verify(cert, NOW)), "unknown-ca");
});

Deno.test("identity: created 0600 at first start, the same on reload; base64 keys round trip", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const a = await loadOrCreateIdentity(`${dir}/state`);
    assert(a.created);
    assertEquals(a.path, `${dir}/state/${IDENTITY_FILE_NAME}`);
    assertEquals((await Deno.stat(a.path)).mode! & 0o777, 0o600);
    assertEquals(a.privateKey.length, 32);
    assertEquals(x25519PublicKey(a.privateKey), a.publicKey);
    const b = await loadOrCreateIdentity(`${dir}/state/`);
    assert(!b.created);
    assertEquals([b.privateKey, b.publicKey], [a.privateKey, a.publicKey]);
    assertEquals(decodeKey(encodeKey(a.publicKey)), a.publicKey);
    assertEquals(encodeKey(a.publicKey).length, 44);
    assertThrows(() => decodeKey("abc"), IdentityError, "32 bytes");
    assertThrows(() => decodeKey(encodeKey(new Uint8Array(31))), IdentityError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("identity: group-readable, foreign or mismatched files are refused without echoing the key", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const a = await loadOrCreateIdentity(dir);
    const priv = encodeKey(a.privateKey);
    await Deno.chmod(a.path, 0o640);
    await assertRejects(() => loadOrCreateIdentity(dir), IdentityError, "chmod 600");
    await Deno.chmod(a.path, 0o600);
    const other = generateIdentity();
    await Deno.writeTextFile(
      a.path,
      JSON.stringify({
        kind: "netmanager-tunnel-identity",
        v: 1,
        privateKey: priv,
        publicKey: encodeKey(other.publicKey),
      }),
    );
    await assertRejects(() => loadOrCreateIdentity(dir), IdentityError, "does not match");
    await Deno.writeTextFile(a.path, `{"privateKey": "${priv}"`);
    const e = await loadOrCreateIdentity(dir).then(() => undefined, (err: Error) => err);
    assert(e instanceof IdentityError);
    assert(!e.message.includes(priv), "the private key must not appear in errors");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
