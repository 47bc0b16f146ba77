import { assert, assertEquals } from "../helpers/assert.ts";
import { Handshaker } from "../../src/secure/handshake.ts";
import { generateCa, signCertificate } from "../../src/secure/cert.ts";
import { generateIdentity } from "../../src/secure/identity.ts";
import type { NodeCredential, TrustSnapshot } from "../../src/secure/trust.ts";
import { encodeHandshake } from "../../src/secure/secure_wire.ts";
import { MSG_HS_FINISH, MSG_HS_INIT, MSG_HS_RESP } from "../../src/proxy/wire.ts";
import { addMacs, isCookieReply, keysForCa } from "../../src/secure/cookie.ts";

const ca = generateCa("cluster");
const trust: TrustSnapshot = {
  caPublicKeys: [ca.publicKey],
  revokedSerials: [],
  revokedNodeIds: [],
  generation: 1,
};
const now = Math.floor(Date.now() / 1000);
const cred = (id: string): NodeCredential => {
  const identity = generateIdentity();
  return {
    identity,
    certificate: signCertificate(ca, {
      nodeId: id,
      publicKey: identity.publicKey,
      notBefore: now - 60,
      notAfter: now + 3600,
    }),
  };
};
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
  // Forged RESP/FINISH with random receiver indexes: refused; an INIT (and anything malformed) is not its business.
  const noise = new Uint8Array(48);
  for (const t of [MSG_HS_RESP, MSG_HS_FINISH]) {
    const d = encodeHandshake(t, 0, 5, 0x12345678, noise);
    assertEquals(a.expects("B", d, 0, d.length), false);
  }
  const init = spoofedInit(7);
  assert(a.expects("B", init, 0, init.length));
  assert(a.expects("B", new Uint8Array([MSG_HS_RESP]), 0, 1));
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
