import { assert, assertEquals } from "../helpers/assert.ts";
import { Handshaker } from "../../src/secure/handshake.ts";
import { unitCa } from "../helpers/secure_unit.ts";
import type { NodeCredential } from "../../src/secure/trust.ts";
import { encodeHandshake } from "../../src/secure/secure_wire.ts";
import { MSG_HS_FINISH, MSG_HS_INIT, MSG_HS_RESP } from "../../src/proxy/wire.ts";
import { addMacs, CookieJar, isCookieReply, keysForCa } from "../../src/secure/cookie.ts";
import { HandshakeHost, HS_QUEUE_MAX } from "../../src/secure/hs_host.ts";
import type { HsSetup, HsUp } from "../../src/secure/hs_messages.ts";

const { ca, trust, cred } = unitCa();
const spoofedInit = (sender: number) =>
  addMacs(
    encodeHandshake(MSG_HS_INIT, 0, sender, 0, crypto.getRandomValues(new Uint8Array(32))),
    keysForCa(ca.publicKey).mac1,
  );

Deno.test("handshake expects: replies to no handshake of ours are refused before any budget; our own pass, once", () => {
  const a = new Handshaker({ credential: cred("a"), trust }),
    b = new Handshaker({ credential: cred("b"), trust });
  // B under a flood spoofing A: its cookie replies reach the real A, which started no such handshake.
  let reflected = 0;
  for (let i = 0; i < 100; i++) {
    const init = spoofedInit(1000 + i);
    const r = b.handle("A", init, 0, init.length, true).reply;
    if (r && isCookieReply(r, 0, r.length)) {
      reflected++;
      assertEquals(a.expects("B", r, 0, r.length), false);
    }
  }
  assert(reflected > 50, `cookie replies ${reflected}`);
  assertEquals(a.drops.hs_unknown_index, reflected);
  // Forged RESP/FINISH with random receiver indexes and malformed replies: refused; an INIT is not its business.
  const noise = new Uint8Array(48);
  for (const t of [MSG_HS_RESP, MSG_HS_FINISH]) {
    const d = encodeHandshake(t, 0, 5, 0x12345678, noise);
    assertEquals(a.expects("B", d, 0, d.length), false);
  }
  const init = spoofedInit(7);
  assert(a.expects("B", init, 0, init.length));
  assertEquals(a.expects("B", new Uint8Array([MSG_HS_RESP]), 0, 1), false, "malformed");
  // A's own handshake: the cookie reply B sends for it passes (once), as do the RESP and FINISH.
  const m1 = a.initiate("B", 0)!;
  const c1 = b.handle("A", m1, 0, m1.length, true).reply!;
  assert(isCookieReply(c1, 0, c1.length));
  assert(a.expects("B", c1, 0, c1.length));
  assertEquals(a.expects("C", c1, 0, c1.length), false, "from another address");
  const m1b = a.handle("B", c1, 0, c1.length).reply!;
  assertEquals(a.expects("B", c1, 0, c1.length), false, "a pending INIT takes one cookie reply");
  const resp = b.handle("A", m1b, 0, m1b.length, true).reply!;
  assert(a.expects("B", resp, 0, resp.length));
  assertEquals(b.expects("A", resp, 0, resp.length), false, "B started nothing: a RESP is not for it");
  const r = a.handle("B", resp, 0, resp.length);
  assert(r.established && r.reply);
  assert(b.expects("A", r.reply, 0, r.reply.length));
  assert(b.handle("A", r.reply, 0, r.reply.length, true).established);
  assertEquals(a.expects("B", resp, 0, resp.length), false, "the handshake is over");
});

Deno.test("handshake host: a reply to our handshake is queued and handled ahead of a full INIT queue; mac2 INITs keep room", () => {
  const secrets = { current: crypto.getRandomValues(new Uint8Array(32)) };
  const setup = (c: NodeCredential): HsSetup => ({
    credential: c,
    trust,
    rekeyMs: 120_000,
    cookies: true,
    cookieSecrets: secrets,
  });
  const sent: Uint8Array[] = [];
  const posted: HsUp[] = [];
  const host = (to: Uint8Array[], up: HsUp[]) =>
    new HandshakeHost({
      lane: 0,
      warm: false,
      send: (_e, b) => to.push(b),
      post: (m) => up.push(m),
      install: () => {},
      blocked: () => false,
    });
  const a = host(sent, posted);
  a.setup(setup(cred("a")));
  const b = new Handshaker({ credential: cred("b"), trust });
  a.initiate("B", 0);
  const m1 = sent.pop()!;
  const resp = b.handle("A", m1, 0, m1.length, true).reply!;
  // A flood spoofing B fills A's INIT queue (no mac2: its share, not the mac2 room).
  let taken = 0;
  for (let i = 0; i < 300; i++) {
    const init = spoofedInit(2000 + i);
    if (a.queue("B", init, 0, init.length, true)) taken++;
  }
  assertEquals(taken, HS_QUEUE_MAX - 32);
  // B's own INIT with the cookie A gave it (hs_mac2_test: garbage in mac2 finds no room).
  const jar = new CookieJar();
  jar.setSecrets(secrets);
  const withMac2 = addMacs(
    spoofedInit(9).subarray(0, 40),
    keysForCa(ca.publicKey).mac1,
    jar.cookieFor("B", Date.now()),
  );
  assert(a.queue("B", withMac2, 0, withMac2.length, true), "an INIT with a valid mac2 still finds room");
  assert(a.expects("B", resp, 0, resp.length));
  assert(a.queue("B", resp, 0, resp.length, true), "the reply is taken");
  a.drain();
  assert(
    posted.some((m) => m.type === "secure-hs-done"),
    "established in the first drain, before the flood's INITs",
  );
});
