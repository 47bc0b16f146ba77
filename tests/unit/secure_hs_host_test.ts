/**
 * The handshakes in the tunnel socket's worker (src/secure/hs_host.ts): two hosts complete a
 * handshake and install keys where it ran (the main isolate learns it by message), and the
 * worker-side mac2 decision under load — a cookie one worker gave is good in another worker that got
 * the node's cookie secrets, and not in one with its own secret (what the workers did before the
 * secrets were handed to them: the proven INIT would be refused again).
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { Handshaker, INIT_BURST } from "../../src/secure/handshake.ts";
import { HandshakeHost } from "../../src/secure/hs_host.ts";
import type { HsSetup, HsUp } from "../../src/secure/hs_messages.ts";
import { type CookieSecrets, isCookieReply, newCookieSecret } from "../../src/secure/cookie.ts";
import { unitCa } from "../helpers/secure_unit.ts";
import type { SessionKeys } from "../../src/secure/keys.ts";
import type { NodeCredential } from "../../src/secure/trust.ts";
import { MSG_HS_FINISH, MSG_HS_INIT, MSG_HS_RESP } from "../../src/proxy/wire.ts";

const T0 = 1_800_000_000_000;
const A = "192.168.77.1:50103", B = "192.168.77.2:50103";

function world() {
  const { trust, cred } = unitCa(T0);
  const clock = { now: T0 };
  const setup = (c: NodeCredential, cookieSecrets: CookieSecrets): HsSetup => ({
    credential: c,
    trust,
    rekeyMs: 120_000,
    cookies: true,
    cookieSecrets,
  });
  /** A worker's host: what it sent (endpoint, bytes), posted and installed. */
  const host = (lane: number, s: HsSetup) => {
    const sent: { to: string; bytes: Uint8Array }[] = [];
    const posted: HsUp[] = [];
    const installed: SessionKeys[] = [];
    const h = new HandshakeHost({
      lane,
      warm: false,
      send: (to, bytes) => sent.push({ to, bytes }),
      post: (m) => posted.push(m),
      install: (k) => installed.push(k),
      blocked: () => false,
      now: () => clock.now,
    });
    h.setup(s);
    const deliver = (from: string, bytes: Uint8Array) => {
      assert(h.queue(from, bytes, 0, bytes.length, true), "queued");
      const n = sent.length;
      h.drain();
      return sent.length > n ? sent[sent.length - 1].bytes : undefined;
    };
    return { h, sent, posted, installed, deliver };
  };
  return { trust, clock, cred, setup, host };
}

Deno.test("hs host: two workers' hosts complete a handshake; keys installed where it ran, the result posted", () => {
  const w = world();
  const a = w.host(0, w.setup(w.cred("node-a"), { current: newCookieSecret() }));
  const b = w.host(0, w.setup(w.cred("node-b"), { current: newCookieSecret() }));
  a.h.initiate(B, 3);
  assertEquals(a.sent.length, 1);
  assertEquals(a.sent[0].to, B);
  assertEquals(a.sent[0].bytes[0], MSG_HS_INIT);
  const resp = b.deliver(A, a.sent[0].bytes)!;
  assertEquals(resp[0], MSG_HS_RESP);
  assert(!isCookieReply(resp, 0, resp.length));
  const fin = a.deliver(B, resp)!;
  assertEquals(fin[0], MSG_HS_FINISH);
  assertEquals(a.installed.length, 1, "the initiator's keys, installed before its FINISH went out");
  assertEquals(b.deliver(A, fin), undefined);
  assertEquals(b.installed.length, 1);
  assertEquals(a.installed[0].sendKey, b.installed[0].recvKey);
  assert(a.installed[0].sendCounters instanceof SharedArrayBuffer, "send counters the other workers share");
  const da = a.posted.find((m) => m.type === "secure-hs-done");
  const db = b.posted.find((m) => m.type === "secure-hs-done");
  assert(da?.type === "secure-hs-done" && db?.type === "secure-hs-done");
  assertEquals(da.cert.subject, "node-b");
  assertEquals(db.cert.subject, "node-a");
  assert(da.initiator && !db.initiator);
  assert(
    da.handshakeMs !== undefined && da.handshakeMs >= 0 && da.resp !== undefined,
    "timed on the initiator",
  );
  assert(db.answer !== undefined, "the responder's INIT phase");
});

Deno.test("hs host: under load a cookie from one worker proves the source in another worker with the node's secrets", () => {
  const w = world();
  const credB = w.cred("node-b");
  const shared = { current: newCookieSecret() };
  const w0 = w.host(0, w.setup(credB, shared));
  const w1 = w.host(1, w.setup(credB, shared));
  // A worker that made up its own secret (as each did before the main isolate handed them out).
  const own = w.host(2, w.setup(credB, { current: newCookieSecret() }));
  const a = new Handshaker({ credential: w.cred("node-a"), trust: w.trust, now: () => w.clock.now });
  // Spend A's INIT budget in every worker (the clock stands still: no refill).
  for (const x of [w0, w1, own]) {
    for (let i = 0; i < INIT_BURST; i++) {
      const m = a.initiate(`fill-${x.h === w0.h ? 0 : x.h === w1.h ? 1 : 2}-${i}`, 0)!;
      const r = x.deliver(A, m)!;
      assertEquals(r[0], MSG_HS_RESP);
      assert(!isCookieReply(r, 0, r.length), "within the budget: answered");
    }
  }
  // Over the budget: worker 0 answers with a cookie (hashes, no DH).
  const init = a.initiate(B, 0)!;
  const cookie = w0.deliver(A, init)!;
  assert(isCookieReply(cookie, 0, cookie.length), "a cookie, not a RESP");
  assertEquals(w0.h.drops().hs_cookie_sent, 1);
  const proven = a.handle(B, cookie, 0, cookie.length, true).reply!;
  assertEquals(proven[0], MSG_HS_INIT);
  // The worker without the node's secrets cannot check the mac2: one more cookie, no handshake.
  const refused = own.deliver(A, proven)!;
  assert(isCookieReply(refused, 0, refused.length), "own secret: the proof is not recognised");
  // From another source address the mac2 proves nothing either (the cookie is bound to A's address).
  for (let i = 0; i < INIT_BURST; i++) w1.deliver("192.168.77.9:50103", a.initiate(`x-${i}`, 0)!);
  const spoofed = w1.deliver("192.168.77.9:50103", proven)!;
  assert(isCookieReply(spoofed, 0, spoofed.length), "another source: a cookie");
  // Worker 1 (the node's secrets) checks the mac2 and does the handshake, which completes there.
  const resp = w1.deliver(A, proven)!;
  assertEquals(resp[0], MSG_HS_RESP);
  assert(!isCookieReply(resp, 0, resp.length), "proven: answered");
  const fin = a.handle(B, resp, 0, resp.length, true);
  assert(fin.established && fin.reply);
  w1.deliver(A, fin.reply);
  assertEquals(w1.installed.length, 1);
  assertEquals(w1.installed[0].recvKey, fin.established.sendKey);
  // After the node rotates its secret once, the cookie is still good; after twice, not.
  w1.h.onMessage({ type: "secure-hs-cookie", secrets: { current: newCookieSecret() } });
  const stale = w1.deliver(A, proven)!;
  assert(isCookieReply(stale, 0, stale.length), "a cookie of a secret rotated out is refused");
});

Deno.test("hs host: a handshake is timed from its own HS_INIT, also when a retry went out meanwhile (the RESP to the first one)", async () => {
  const w = world();
  const a = w.host(0, w.setup(w.cred("node-a"), { current: newCookieSecret() }));
  const b = w.host(0, w.setup(w.cred("node-b"), { current: newCookieSecret() }));
  a.h.initiate(B, 0);
  const first = a.sent[0].bytes;
  await new Promise((r) => setTimeout(r, 40));
  w.clock.now += 1100; // past the retry gate: a second INIT (the first looked lost)
  a.h.initiate(B, 0);
  assertEquals(a.sent.length, 2, "retry sent");
  // The first INIT was not lost after all: its RESP completes the handshake.
  const resp = b.deliver(A, first)!;
  a.deliver(B, resp);
  const done = a.posted.find((m) => m.type === "secure-hs-done");
  assert(done?.type === "secure-hs-done" && done.handshakeMs !== undefined, "timed");
  // Measured from the first INIT (≥ 40 ms ago), not from the retry (before: keyed by peer, ~0 ms).
  assert(done.handshakeMs >= 39, `handshakeMs ${done.handshakeMs}`);
  assertEquals(done.attempt?.inits, 2);
});

Deno.test("hs host: a short retry asked for after the session completed here (the main isolate not told yet) sends nothing; a rekey does", () => {
  const w = world();
  const a = w.host(0, w.setup(w.cred("node-a"), { current: newCookieSecret() }));
  const b = w.host(0, w.setup(w.cred("node-b"), { current: newCookieSecret() }));
  a.h.initiate(B, 0, true);
  const fin = a.deliver(B, b.deliver(A, a.sent[0].bytes)!)!;
  b.deliver(A, fin);
  assertEquals([a.installed.length, b.installed.length], [1, 1]);
  w.clock.now += 250; // the main isolate's 250 ms retry, asked before it learned of the session
  const n = a.sent.length;
  a.h.initiate(B, 0, true);
  assertEquals(a.sent.length, n, "no INIT: the session is there (before: a second handshake)");
  w.clock.now += 5_000;
  a.h.initiate(B, 0); // a rekey
  assertEquals(a.sent.length, n + 1);
  assertEquals(a.sent[n].bytes[0], MSG_HS_INIT);
});
