/**
 * Endpoint following (roaming, NAT rebinding): a datagram that authenticates under a peer's session
 * from a new source moves the peer there; replayed, forged and plain datagrams never do.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { SendBatch } from "../../ffi/udp.ts";
import { Inbound, SecureLayer, SecureMode } from "../../src/secure/secure_layer.ts";
import type { SessionKeys } from "../../src/secure/keys.ts";
import { parseEndpoint, PeerTable } from "../../src/proxy/peers.ts";
import { parseIPv4 } from "../../src/addr/mod.ts";

const A = "10.0.0.1:50103";

/** Layer `b` with a session with A (prefer), and `n` datagrams A sealed for it. */
function pair(n: number): { now: number; b: SecureLayer; d: Uint8Array[] } {
  const now = Date.now();
  const k1 = crypto.getRandomValues(new Uint8Array(32)), k2 = crypto.getRandomValues(new Uint8Array(32));
  const t = { createdMs: now, sendUntilMs: now + 120_000, expiresMs: now + 180_000 };
  const ka: SessionKeys = {
    peer: "10.0.0.2:50103",
    localIndex: 1,
    remoteIndex: 2,
    sendKey: k1,
    recvKey: k2,
    ...t,
  };
  const kb: SessionKeys = { peer: A, localIndex: 2, remoteIndex: 1, sendKey: k2, recvKey: k1, ...t };
  const a = new SecureLayer({ lane: 0, post: () => {} });
  const b = new SecureLayer({ lane: 0, post: () => {} });
  a.setMode(SecureMode.PREFER);
  b.setMode(SecureMode.PREFER);
  a.install(ka);
  b.install(kb);
  const d: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    const src = new SendBatch(2, 4096);
    src.bufs[0].fill(0x45, 0, 100);
    src.offsets[0] = 0;
    src.sizes[0] = 100;
    src.segSizes[0] = 0;
    src.setDst4(0, 0x0a000002, 50103);
    const dst = new SendBatch(4, 4096);
    a.sealBatch(src, 1, ["10.0.0.2:50103"], Int32Array.of(7), dst, 65507, now);
    d.push(dst.bufs[0].slice(0, dst.sizes[0]));
  }
  return { now, b, d };
}

Deno.test("rebind: an authenticated datagram from a new source follows the peer; replayed, forged, plain ones do not", () => {
  const { now, b, d } = pair(3);
  const moved: string[] = [];
  b.follow = (p) => (moved.push(p), true);
  // From A's own endpoint: nothing moves.
  assertEquals(b.inbound(d[0].slice(), 0, d[0].length, A, () => A, now, true), Inbound.OPENED);
  assertEquals(moved, []);
  // Replayed from a new source (a stranger's address): refused, nothing moves.
  assertEquals(
    b.inbound(d[0].slice(), 0, d[0].length, undefined, () => "10.9.9.9:1", now, false),
    Inbound.DONE,
  );
  // Forged (a fresh counter, a broken tag): refused, nothing moves.
  const forged = d[1].slice();
  forged[12] ^= 0x40;
  forged[forged.length - 1] ^= 1;
  assertEquals(b.inbound(forged, 0, forged.length, undefined, () => "10.9.9.9:1", now, false), Inbound.DONE);
  // Plain data from the new source: not ours to judge here (the engine's stranger path), nothing moves.
  const raw = new Uint8Array(40);
  raw[0] = 0x45;
  assertEquals(b.inbound(raw, 0, 40, undefined, () => "10.9.9.9:1", now, false), Inbound.PASS);
  assertEquals(moved, []);
  // Genuine and fresh, from the new source (A's NAT mapping moved): followed, delivered as A's.
  assertEquals(
    b.inbound(d[1].slice(), 0, d[1].length, undefined, () => "10.9.9.9:1", now, false),
    Inbound.OPENED,
  );
  assertEquals(moved, [A]);
  assertEquals(b.peer, A);
  // From A's address on another port (matched by address only): followed too.
  assertEquals(
    b.inbound(d[2].slice(), 0, d[2].length, A, () => "10.0.0.1:40000", now, false),
    Inbound.OPENED,
  );
  assertEquals(moved, [A, A]);
});

Deno.test("rebind: a datagram from exactly another peer's endpoint is refused, not followed", () => {
  const { now, b, d } = pair(1);
  const moved: string[] = [];
  b.follow = (p) => (moved.push(p), true);
  assertEquals(b.inbound(d[0].slice(), 0, d[0].length, "10.0.0.3:50103", () => "x", now, true), Inbound.DONE);
  assertEquals(moved, []);
  const drops: Record<string, number> = {};
  b.addDrops(drops);
  assertEquals(drops.secure_wrong_source, 1);
});

Deno.test("rebind: without the check (followUnauthenticated) a replayed datagram moves the peer", () => {
  const { now, b, d } = pair(1);
  const moved: string[] = [];
  b.follow = (p) => (moved.push(p), true);
  assertEquals(b.inbound(d[0].slice(), 0, d[0].length, A, () => A, now, true), Inbound.OPENED);
  b.followUnauthenticated = true;
  assertEquals(
    b.inbound(d[0].slice(), 0, d[0].length, undefined, () => "10.6.6.6:1", now, false),
    Inbound.DONE,
  );
  assertEquals(moved, [A], "the replay was refused, but the peer had already been moved");
});

Deno.test("rebind: a followed peer is found at its new endpoint and reached there; moving back restores it", () => {
  const t = new PeerTable({ matchSourcePort: true });
  const p = t.addKey(A, 0);
  const q = t.addKey("10.0.0.3:50103", 0);
  assert(t.follow(p, parseEndpoint("192.0.2.7:40001")));
  assertEquals(t.follow(p, parseEndpoint("192.0.2.7:40001")), false, "already there");
  assertEquals(t.lookup4(parseIPv4("192.0.2.7"), 40001), p);
  assertEquals(t.lookup4(parseIPv4("10.0.0.1"), 50103), p, "still found at its key's endpoint");
  assert(p.isAt4(parseIPv4("192.0.2.7"), 40001) && !p.isAt4(parseIPv4("10.0.0.1"), 50103));
  assertEquals(t.stats(0).find((s) => s.endpoint === A)?.at, "192.0.2.7:40001");
  assertEquals(t.lookup4(parseIPv4("10.0.0.3"), 50103), q);
  assert(t.follow(p, parseEndpoint(A)));
  assertEquals(t.lookup4(parseIPv4("192.0.2.7"), 40001), undefined, "the old alias is gone");
  assertEquals(p.endpointChanges, 2);
  t.follow(p, parseEndpoint("192.0.2.8:40002"));
  t.remove(A);
  assertEquals(t.lookup4(parseIPv4("192.0.2.8"), 40002), undefined, "a removed peer's alias is gone");
});
