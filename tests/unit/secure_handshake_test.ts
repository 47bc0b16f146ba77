import { assert, assertEquals } from "../helpers/assert.ts";
import {
  GLOBAL_INIT_PER_SECOND,
  Handshaker,
  INIT_BURST,
  PENDING_MS,
  STRANGER_PENDING,
} from "../../src/secure/handshake.ts";
import { KeyRing } from "../../src/secure/keys.ts";
import { leadsRekey, REKEY_FOLLOWER_GRACE_MS } from "../../src/secure/rekey.ts";
import { type CaKey, generateCa, signCertificate } from "../../src/secure/cert.ts";
import { generateIdentity, type NodeIdentity } from "../../src/secure/identity.ts";
import { unitCa } from "../helpers/secure_unit.ts";
import type { NodeCredential } from "../../src/secure/trust.ts";
import { encodeHandshake, SECURE_HEADER_LEN, SECURE_OVERHEAD } from "../../src/secure/secure_wire.ts";
import { MSG_HS_INIT } from "../../src/proxy/wire.ts";
import { addMacs, COOKIE_REPLY_LEN, isCookieReply, keysForCa } from "../../src/secure/cookie.ts";

const T0 = 1_800_000_000_000; // ms
const sec = (ms: number) => Math.floor(ms / 1000);

function world() {
  const { ca, trust } = unitCa(T0);
  const clock = { now: T0 };
  const cred = (
    id: string,
    o: { ca?: CaKey; identity?: NodeIdentity; keyOf?: NodeIdentity; notAfter?: number } = {},
  ) => {
    const identity = o.identity ?? generateIdentity();
    const certificate = signCertificate(o.ca ?? ca, {
      nodeId: id,
      publicKey: (o.keyOf ?? identity).publicKey,
      notBefore: sec(T0) - 60,
      notAfter: o.notAfter ?? sec(T0) + 86400,
    });
    return { identity, certificate } satisfies NodeCredential;
  };
  const node = (c: NodeCredential, rekeyMs?: number) =>
    new Handshaker({ credential: c, trust, rekeyMs, now: () => clock.now });
  return { ca, trust, clock, cred, node };
}

function run(a: Handshaker, b: Handshaker, aName = "A", bName = "B") {
  const m1 = a.initiate(bName, 5);
  assert(m1, "HS_INIT");
  const r2 = b.handle(aName, m1, 0, m1.length);
  if (!r2.reply) return { a: undefined, b: undefined };
  const r3 = a.handle(bName, r2.reply, 0, r2.reply.length);
  if (!r3.reply) return { a: r3.established, b: undefined };
  const r4 = b.handle(aName, r3.reply, 0, r3.reply.length);
  return { a: r3.established, b: r4.established };
}

Deno.test("handshake: two certified nodes agree on keys; data sealed by one opens at the other", () => {
  const w = world();
  const a = w.node(w.cred("node-a")), b = w.node(w.cred("node-b"));
  const { a: ka, b: kb } = run(a, b);
  assert(ka && kb);
  assertEquals(ka.localIndex, kb.remoteIndex);
  assertEquals(kb.localIndex, ka.remoteIndex);
  assertEquals(ka.sendKey.join(), kb.recvKey.join());
  assertEquals(a.peerState("B")?.cert?.subject, "node-b");
  assertEquals(b.peerState("A")?.cert?.subject, "node-a");
  const ra = new KeyRing(0), rb = new KeyRing(1);
  ra.install(ka);
  rb.install(kb);
  const buf = new Uint8Array(100 + SECURE_OVERHEAD);
  buf.fill(7, SECURE_HEADER_LEN, SECURE_HEADER_LEN + 100);
  const n = ra.seal("B", buf, 0, 100, 0, T0);
  assertEquals(rb.open(buf, 0, n, T0), 100);
  ra.close();
  rb.close();
});

Deno.test("handshake: foreign CA, expired certificate, revoked node, and a certificate for another key are refused", () => {
  const w = world();
  const good = w.node(w.cred("node-b"));
  const other = generateCa("other");
  const cases: [string, NodeCredential][] = [
    ["hs_cert_unknown-ca", w.cred("x", { ca: other })],
    ["hs_cert_expired", w.cred("x", { notAfter: sec(T0) - 1 })],
    ["hs_cert_key_mismatch", w.cred("x", { keyOf: generateIdentity() })],
  ];
  for (const [reason, c] of cases) {
    w.clock.now += 1000; // the initiator's retry spacing
    const bad = w.node(c);
    // The initiator holds keys after message 2 (as in WireGuard); the responder refuses at message 3.
    const { b } = run(bad, good, "X", "B");
    assert(b === undefined, reason);
    assertEquals(good.peerState("X"), undefined);
    assertEquals(good.drops[reason], 1, reason);
    // And as initiator the good node refuses the bad responder's certificate.
    const r = run(good, bad, "B", "X");
    assert(r.a === undefined && r.b === undefined);
  }
  // Revoked in the verifier's snapshot.
  const c = w.cred("node-r");
  const revoked = w.node(c);
  const strict = new Handshaker({
    credential: w.cred("node-s"),
    trust: { ...w.trust, revokedNodeIds: ["node-r"], generation: 2 },
    now: () => w.clock.now,
  });
  assertEquals(run(revoked, strict, "R", "S").b, undefined);
  assertEquals(strict.drops["hs_cert_revoked"], 1);
  assertEquals(strict.pending, 0);
});

Deno.test("handshake: malformed, tampered and unexpected datagrams only count", () => {
  const w = world();
  const a = w.node(w.cred("a")), b = w.node(w.cred("b"));
  for (
    const junk of [
      new Uint8Array(0),
      Uint8Array.of(0x16),
      new Uint8Array(40).fill(0x16),
      Uint8Array.of(0x17, 1, 0, 0),
    ]
  ) {
    assertEquals(b.handle("A", junk, 0, junk.length), {});
  }
  assert((b.drops["hs_malformed"] ?? 0) >= 3);
  const m1 = a.initiate("B", 0)!;
  const r2 = b.handle("A", m1, 0, m1.length).reply!;
  // A reply from the wrong endpoint, and a flipped byte, end nothing but count.
  assertEquals(a.handle("C", r2, 0, r2.length), {});
  assertEquals(a.drops["hs_unknown_index"], 1);
  const bad = r2.slice();
  bad[bad.length - 3] ^= 1;
  assertEquals(a.handle("B", bad, 0, bad.length), {});
  assertEquals(a.drops["hs_noise"], 1);
  // The handshake state died with the failure: the genuine reply now finds no index.
  assertEquals(a.handle("B", r2, 0, r2.length), {});
  assertEquals(a.drops["hs_unknown_index"], 2);
  // Random bytes in every handshake type never throw.
  for (let i = 0; i < 300; i++) {
    const r = crypto.getRandomValues(new Uint8Array(1 + (i % 200)));
    r[0] = 0x16 + (i % 3);
    r[1] = 1;
    b.handle("A", r, 0, r.length);
  }
  assertEquals(b.peerState("A"), undefined);
});

Deno.test("handshake: HS_INIT floods are rate-limited per peer and stale pending states expire", () => {
  const w = world();
  const a = w.node(w.cred("a")), b = w.node(w.cred("b"));
  let answered = 0, cookies = 0;
  for (let i = 0; i < 50; i++) {
    w.clock.now += 1; // initiate()'s retry spacing is the initiator's business; flood the responder
    const init = new Handshaker({ credential: w.cred("a"), trust: w.trust, now: () => w.clock.now }).initiate(
      "B",
      0,
    )!;
    const r = b.handle("A", init, 0, init.length).reply;
    if (r && isCookieReply(r, 0, r.length)) cookies++;
    else if (r) answered++;
  }
  // Over the budget the INITs get a cookie (hashes, no DH) instead of an answer.
  assertEquals(answered, INIT_BURST);
  assertEquals(cookies, 50 - INIT_BURST);
  assertEquals(b.drops["hs_cookie_sent"], 50 - INIT_BURST);
  assertEquals(b.pending, INIT_BURST);
  w.clock.now += PENDING_MS + 1000;
  const { a: ka, b: kb } = run(a, b); // tokens refilled; old pending states gone
  assert(ka && kb);
  assertEquals(b.pending, 0);
});

Deno.test("handshake: rekey after the interval gives new keys; revocation cuts the live session", () => {
  const w = world();
  const ca = w.cred("a"), cb = w.cred("node-b");
  const a = w.node(ca, 5_000), b = w.node(cb, 5_000);
  const first = run(a, b);
  assert(first.a && first.b);
  assertEquals(a.due(), []);
  w.clock.now += 5_000;
  assertEquals(a.due(), ["B"]); // the initiator first
  // (and the pair's leader — the lower static key — whichever side initiated)
  assertEquals(b.due(), leadsRekey(cb.identity.publicKey, ca.identity.publicKey) ? ["A"] : []);
  const second = run(a, b);
  assert(second.a && second.b);
  assert(second.a.sendKey.join() !== first.a.sendKey.join());
  assertEquals(a.peerState("B")?.rekeys, 1);
  assertEquals(a.peerState("B")?.indexes.length, 2); // previous session kept for in-flight datagrams
  assertEquals(a.due(), []);
  const cut = a.setTrust({ ...w.trust, revokedNodeIds: ["node-b"], generation: 2 });
  assertEquals(cut, ["B"]);
  assertEquals(a.peerState("B"), undefined);
  assertEquals(run(a, b).a, undefined); // and B cannot come back
});

Deno.test("handshake: crossing handshakes (both sides initiate at once) leave the pair's leader rekeying on time", () => {
  const w = world();
  const ca = w.cred("a"), cb = w.cred("node-b");
  const a = w.node(ca, 5_000), b = w.node(cb, 5_000);
  // Both INITs cross; each side answers the other's and completes its own first (RESP before FINISH).
  const ia = a.initiate("B", 0)!, ib = b.initiate("A", 0)!;
  const ra = b.handle("A", ia, 0, ia.length, true).reply!, rb = a.handle("B", ib, 0, ib.length, true).reply!;
  const fa = a.handle("B", ra, 0, ra.length, true), fb = b.handle("A", rb, 0, rb.length, true);
  assert(fa.established && fb.established && fa.reply && fb.reply);
  assert(b.handle("A", fa.reply, 0, fa.reply.length, true).established);
  assert(a.handle("B", fb.reply, 0, fb.reply.length, true).established);
  // Each side's last session is the other's: neither is its initiator.
  assertEquals([a.peerState("B")?.initiator, b.peerState("A")?.initiator], [false, false]);
  assertEquals([a.peerState("B")?.rekeys, b.peerState("A")?.rekeys], [1, 1]);
  w.clock.now += 5_000;
  // On time, the leader (the lower static key) alone — before, neither until 10 s later (every 15 s).
  const aLeads = leadsRekey(ca.identity.publicKey, cb.identity.publicKey);
  assertEquals(aLeads, !leadsRekey(cb.identity.publicKey, ca.identity.publicKey));
  assertEquals([a.due(), b.due()], aLeads ? [["B"], []] : [[], ["A"]]);
  w.clock.now += REKEY_FOLLOWER_GRACE_MS;
  assertEquals([a.due(), b.due()], [["B"], ["A"]]); // the other one if the leader did not
});

Deno.test("handshake: a peer that answers several of our INITs at once (queued while it started) makes one session", () => {
  const w = world();
  const a = w.node(w.cred("a")), b = w.node(w.cred("node-b"));
  const inits: Uint8Array[] = [];
  for (let i = 0; i < 3; i++) {
    inits.push(a.initiate("B", 0, 200)!); // the first INIT and the short retries (a peer not up yet)
    w.clock.now += 250;
  }
  assertEquals(a.pending, 3);
  const resps = inits.map((m) => b.handle("A", m, 0, m.length, true).reply!);
  const first = a.handle("B", resps[0], 0, resps[0].length, true);
  assert(first.established && first.reply);
  assertEquals(a.pending, 0, "the other INITs are superseded");
  for (const r of resps.slice(1)) {
    const out = a.handle("B", r, 0, r.length, true);
    assertEquals([out.established, out.reply], [undefined, undefined]);
    assert(!a.expects("B", r, 0, r.length), "refused before the layer's budget too");
  }
  assertEquals(a.peerState("B")?.rekeys, 0); // before: 2 (three sessions at once)
  assert(b.handle("A", first.reply, 0, first.reply.length, true).established);
  assertEquals(b.peerState("A")?.rekeys, 0);
  assertEquals(b.pending, 2); // the unanswered ones expire (PENDING_MS); the responder never installed them
});

Deno.test("handshake: strangers that drain the global HS_INIT budget and the pending room leave the table's nodes theirs", () => {
  const w = world();
  const b = w.node(w.cred("b"));
  let answered = 0;
  for (let i = 0; i < 2000; i++) {
    w.clock.now += 1;
    // The attacker knows the cluster (mac1 is keyed by the CA's public key): the worst case.
    const init = addMacs(
      encodeHandshake(MSG_HS_INIT, 0, i + 1, 0, crypto.getRandomValues(new Uint8Array(32))),
      keysForCa(w.trust.caPublicKeys[0]).mac1,
    );
    const r = b.handle(`10.9.${i >> 8}.${i & 255}:50103`, init, 0, init.length).reply;
    if (r && !isCookieReply(r, 0, r.length)) answered++;
  }
  // Bounded by the strangers' global budget (2 s of refill on top of a full bucket) and their pending room.
  assert(answered <= Math.min(STRANGER_PENDING, GLOBAL_INIT_PER_SECOND * 3), `answered ${answered}`);
  assert((b.drops["hs_cookie_sent"] ?? 0) + (b.drops["hs_pending_full"] ?? 0) > 0);
  const a = w.node(w.cred("a"));
  const m1 = a.initiate("B", 0)!;
  const c = b.handle("A2", m1, 0, m1.length).reply;
  assert(!c || isCookieReply(c, 0, c.length), "a stranger's INIT now gets a cookie at most");
  const r2 = b.handle("A", m1, 0, m1.length, true);
  assert(r2.reply, "a table node's INIT is answered");
  const r3 = a.handle("B", r2.reply, 0, r2.reply.length);
  assert(r3.established && r3.reply);
  assert(b.handle("A", r3.reply, 0, r3.reply.length, true).established);
});

Deno.test("handshake: INITs without the cluster's mac1 cost one hash and change nothing", () => {
  const w = world();
  const b = w.node(w.cred("b"));
  const other = keysForCa(generateCa("other").publicKey);
  const body = encodeHandshake(MSG_HS_INIT, 0, 9, 0, crypto.getRandomValues(new Uint8Array(32)));
  for (const init of [body, addMacs(body, other.mac1)]) {
    assertEquals(b.handle("A", init, 0, init.length), {});
  }
  assertEquals(b.drops, { hs_malformed: 1, hs_mac1: 1 });
  assertEquals(b.pending, 0);
});

Deno.test("handshake: a flood spoofing a node's address spends its budget; the node proves its address with the cookie and completes", () => {
  for (const cookies of [true, false]) {
    const w = world();
    const ca = w.trust.caPublicKeys[0];
    const b = new Handshaker({ credential: w.cred("b"), trust: w.trust, now: () => w.clock.now, cookies });
    const a = w.node(w.cred("a"));
    // 300 INITs with valid mac1 "from" A's address (the attacker cannot receive what is sent there).
    let cookieReplies = 0;
    for (let i = 0; i < 300; i++) {
      const init = addMacs(
        encodeHandshake(MSG_HS_INIT, 0, 1000 + i, 0, crypto.getRandomValues(new Uint8Array(32))),
        keysForCa(ca).mac1,
      );
      const r = b.handle("A", init, 0, init.length, true).reply;
      if (r && isCookieReply(r, 0, r.length)) {
        cookieReplies++;
        // Delivered to the real A: not for one of its INITs, dropped there.
        assertEquals(a.handle("B", r, 0, r.length), {});
      }
    }
    const m1 = a.initiate("B", 0)!;
    const r1 = b.handle("A", m1, 0, m1.length, true).reply;
    if (!cookies) {
      assertEquals(cookieReplies, 0);
      assertEquals(r1, undefined, "without cookies the real node is starved");
      continue;
    }
    assert(cookieReplies > 250, `cookie replies ${cookieReplies}`);
    assert(r1 && isCookieReply(r1, 0, r1.length) && r1.length === COOKIE_REPLY_LEN && r1.length < m1.length);
    // A resends its INIT with mac2; B answers it from the proven budget.
    const m1b = a.handle("B", r1, 0, r1.length).reply!;
    assertEquals(a.handle("B", r1, 0, r1.length), {}, "a cookie reply is used once");
    const r2 = b.handle("A", m1b, 0, m1b.length, true).reply!;
    assert(!isCookieReply(r2, 0, r2.length));
    const r3 = a.handle("B", r2, 0, r2.length);
    assert(r3.established && r3.reply);
    assert(b.handle("A", r3.reply, 0, r3.reply.length, true).established);
    // Later INITs of A carry the cookie's mac2 at once.
    w.clock.now += 2000;
    const again = a.initiate("B", 0)!;
    assert(again.subarray(56).some((x) => x !== 0), "mac2 set");
  }
});
