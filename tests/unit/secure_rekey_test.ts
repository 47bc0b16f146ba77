/**
 * An operator's rekey (`POST /secure/rekey`, `netmanager peers rekey`): two nodes' schedulers
 * (SecureDriver) wired to their handshake hosts (the workers' part) and to each other in process —
 * a fresh handshake between running nodes resolves with its time, the responder records its own,
 * errors for no session and for security off — and the trust store's cache of certificates whose
 * signature verified (validity and the signature of other bytes still checked).
 */
import { assert, assertEquals, assertRejects } from "../helpers/assert.ts";
import { HandshakeHost } from "../../src/secure/hs_host.ts";
import type { HsDown } from "../../src/secure/hs_messages.ts";
import { RekeyError, SecureDriver } from "../../src/secure/secure_driver.ts";
import type { ToWorker } from "../../src/proxy/messages.ts";
import { unitCa } from "../helpers/secure_unit.ts";
import { TrustStore } from "../../src/secure/trust.ts";
import { CertError } from "../../src/secure/cert.ts";

const A = "192.168.77.1:50103", B = "192.168.77.2:50103";
const HS_DOWN = new Set(["secure-hs-setup", "secure-hs-cookie", "secure-initiate", "secure-hs-forget"]);

/** Two nodes: each a driver and the host of its tunnel socket's worker; datagrams delivered in a microtask. */
function pair() {
  const { trust, cred } = unitCa();
  const nodes: { d: SecureDriver; h: HandshakeHost }[] = [];
  const make = (self: string, other: string, id: string, i: number) => {
    const h: HandshakeHost = new HandshakeHost({
      lane: 0,
      warm: false,
      send: (_to, bytes) =>
        queueMicrotask(() => {
          const peer = nodes[1 - i].h;
          if (peer.queue(self, bytes, 0, bytes.length, true)) peer.drain();
        }),
      post: (m) => d.onWorker(m),
      install: () => {},
      blocked: () => false,
    });
    const toLane0 = (m: ToWorker) => {
      if (HS_DOWN.has(m.type)) h.onMessage(m as HsDown);
    };
    const d: SecureDriver = new SecureDriver({
      broadcast: toLane0,
      toLane0,
      toOthers: () => {},
      knownPeers: () => [other],
    });
    nodes.push({ d, h });
    return () => d.set({ mode: "require", credential: cred(id), trust });
  };
  const startA = make(A, B, "node-a", 0), startB = make(B, A, "node-b", 1);
  startA();
  startB();
  return nodes;
}

async function until(f: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 10));
  }
}

Deno.test("rekey: a fresh handshake between running nodes resolves with its time; the responder records its side", async () => {
  const [a, b] = pair();
  try {
    await until(() =>
      a.d.peers().some((p) => p.state === "secure") && b.d.peers().some((p) => p.state === "secure")
    );
    const before = a.d.peers().find((p) => p.endpoint === B)!.rekeys ?? 0;
    const times: number[] = [];
    for (let i = 0; i < 3; i++) {
      // Back to back (within RETRY_MS of the previous INIT): the operator's rekey is sent anyway.
      const r = await a.d.rekey(B);
      assertEquals(r.length, 1);
      assertEquals(r[0].peer, B);
      assertEquals(r[0].subject, "node-b");
      assert(r[0].error === undefined && typeof r[0].handshakeMs === "number", JSON.stringify(r));
      times.push(r[0].handshakeMs!);
    }
    assertEquals(a.d.peers().find((p) => p.endpoint === B)!.rekeys, before + 3);
    const seen = b.d.recent().filter((x) => x.role === "responder" && x.peer === A);
    assert(seen.length >= 3, JSON.stringify(b.d.recent()));
    assert(seen.slice(-3).every((x) => typeof x.ms === "number" && x.ms >= 0), JSON.stringify(seen));
    const mine = a.d.recent().filter((x) => x.role === "initiator" && x.peer === B).slice(-3);
    assertEquals(mine.map((x) => x.ms), times);
    // Every peer at once (here: one).
    assertEquals((await a.d.rekey()).map((x) => x.peer), [B]);
  } finally {
    a.d.stop();
    b.d.stop();
  }
});

Deno.test("rekey: no session with the peer → 404; tunnel security off → 409; an unanswered one times out", async () => {
  const [a, b] = pair();
  try {
    await until(() => a.d.peers().some((p) => p.state === "secure"));
    const e = await assertRejects(() => a.d.rekey("10.9.9.9:50103"), RekeyError);
    assertEquals((e as RekeyError).status, 404);
    // The peer stops answering (its handshakes off): the rekey gives up after the wait.
    b.h.setup(undefined);
    const r = await a.d.rekey(B, 200);
    assertEquals(r, [{ peer: B, error: "timeout" }]);
    const off = new SecureDriver({ broadcast: () => {}, toLane0: () => {} });
    const e2 = await assertRejects(() => off.rekey(), RekeyError);
    assertEquals((e2 as RekeyError).status, 409);
  } finally {
    a.d.stop();
    b.d.stop();
  }
});

/** The reason a certificate check refused with (CertError), or "" when it did not throw. */
function refusal(check: () => unknown): string {
  try {
    check();
    return "";
  } catch (e) {
    return e instanceof CertError ? e.reason : String(e);
  }
}

Deno.test("trust store: a certificate's signature is checked once per store; validity and other bytes every time", () => {
  const now = Date.now();
  const { trust, cred } = unitCa(now);
  const store = new TrustStore(trust);
  const cert = cred("node-a").certificate;
  const s = Math.floor(now / 1000);
  assertEquals(store.verify(cert, s).nodeId, "node-a");
  assertEquals(store.verify(cert.slice(), s).nodeId, "node-a"); // the same bytes elsewhere: kept
  // Past its validity: refused although its signature was checked before.
  assertEquals(refusal(() => store.verify(cert, s + 2 * 86400)), "expired");
  // Other bytes (a flipped signature bit) are checked, not taken for the kept certificate.
  const forged = cert.slice();
  forged[forged.length - 1] ^= 1;
  assertEquals(refusal(() => store.verify(forged, s)), "signature");
  // Revocation: checked on every verify.
  const sn = store.verify(cert, s).serial;
  const revoked = new TrustStore({ ...trust, revokedSerials: [sn], generation: 2 });
  assertEquals(refusal(() => revoked.verify(cert, s)), "revoked");
});
