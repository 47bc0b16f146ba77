/**
 * Who rekeys a session in the main isolate's scheduler (src/secure/secure_driver.ts): after crossing
 * handshakes each side's last session is the other's (`initiator: false` on both) — before, both then
 * waited the rekey interval + 10 s (rekeys every 15 s at 5 s: the secure_test flood flake); now the
 * pair's leader (the lower static key, src/secure/rekey.ts) asks for the rekey on time and the other
 * side 10 s later. The initiator of a session rekeys on time as before.
 */
import { assertEquals } from "../helpers/assert.ts";
import { SecureDriver } from "../../src/secure/secure_driver.ts";
import { leadsRekey, REKEY_FOLLOWER_GRACE_MS } from "../../src/secure/rekey.ts";
import { unitCa } from "../helpers/secure_unit.ts";
import type { ToWorker } from "../../src/proxy/messages.ts";
import type { NodeCredential, VerifiedCert } from "../../src/secure/trust.ts";

const PEER = "192.168.77.2:50103";
const REKEY_MS = 5_000;

/** A driver for `own` with one session with a peer of key `peerKey` made `ageMs` ago (`initiator`): asked to rekey now? */
function asksRekey(own: NodeCredential, peerKey: Uint8Array, initiator: boolean, ageMs: number): boolean {
  const { trust } = unitCa();
  const lane0: ToWorker[] = [];
  const d = new SecureDriver({ broadcast: () => {}, toLane0: (m) => lane0.push(m), rekeyMs: REKEY_MS });
  d.set({ mode: "require", credential: own, trust });
  const now = Date.now();
  const cert: VerifiedCert = {
    nodeId: "node-2",
    publicKey: peerKey,
    serial: "1",
    notAfter: 4e9,
    subject: "node-2",
  };
  d.onWorker({
    type: "secure-hs-done",
    keys: {
      peer: PEER,
      localIndex: 1,
      remoteIndex: 2,
      sendKey: new Uint8Array(32),
      recvKey: new Uint8Array(32),
      createdMs: now - ageMs,
      sendUntilMs: now + 60_000,
      expiresMs: now + 90_000,
    },
    cert,
    initiator,
  });
  lane0.length = 0;
  d.tick();
  d.stop();
  return lane0.some((m) => m.type === "secure-initiate" && m.peer === PEER);
}

Deno.test("secure driver: after crossing handshakes (neither side's last session its own) the pair's leader rekeys on time, the other 10 s later", () => {
  const { cred } = unitCa();
  const a = cred("node-1"), b = cred("node-2");
  const [lead, follow] = leadsRekey(a.identity.publicKey, b.identity.publicKey) ? [a, b] : [b, a];
  const age = REKEY_MS + 100;
  // Neither initiated its current session (crossing): the leader asks on time (before: neither did).
  assertEquals(asksRekey(lead, follow.identity.publicKey, false, age), true);
  assertEquals(asksRekey(follow, lead.identity.publicKey, false, age), false);
  assertEquals(asksRekey(follow, lead.identity.publicKey, false, age + REKEY_FOLLOWER_GRACE_MS), true);
  // The initiator of its session rekeys on time, leader or not; nobody before the interval.
  assertEquals(asksRekey(follow, lead.identity.publicKey, true, age), true);
  assertEquals(asksRekey(lead, follow.identity.publicKey, true, REKEY_MS - 1000), false);
});
