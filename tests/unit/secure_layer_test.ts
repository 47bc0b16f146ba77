import { assert, assertEquals } from "../helpers/assert.ts";
import { SendBatch } from "../../ffi/udp.ts";
import { Inbound, SecureLayer, SecureMode, type SecureUp } from "../../src/secure/secure_layer.ts";
import type { SessionKeys } from "../../src/secure/keys.ts";
import { SECURE_OVERHEAD } from "../../src/secure/secure_wire.ts";

const SLOT = 70_000;
const MAX = 65507;

function keys(now: number): [SessionKeys, SessionKeys] {
  const k1 = crypto.getRandomValues(new Uint8Array(32)), k2 = crypto.getRandomValues(new Uint8Array(32));
  const t = { createdMs: now, sendUntilMs: now + 120_000, expiresMs: now + 180_000 };
  return [
    { peer: "10.0.0.2:50103", localIndex: 1, remoteIndex: 2, sendKey: k1, recvKey: k2, ...t },
    { peer: "10.0.0.1:50103", localIndex: 2, remoteIndex: 1, sendKey: k2, recvKey: k1, ...t },
  ];
}

/** A send batch with one GSO run of `n` datagrams of `seg` bytes (the last `last`) to peer B, and one control datagram. */
function batch(
  seg: number,
  n: number,
  last: number,
): { src: SendBatch; peers: (string | undefined)[]; lanes: Int32Array } {
  const src = new SendBatch(4, SLOT);
  const size = seg * (n - 1) + last;
  for (let i = 0; i < size; i++) src.bufs[0][i] = (i * 7 + (i / seg | 0)) & 0xff;
  src.offsets[0] = 0;
  src.sizes[0] = size;
  src.segSizes[0] = n > 1 ? seg : 0;
  src.setDst4(0, 0x0a000002, 50103);
  src.bufs[1].set([0x10, 1, 2, 3]);
  src.offsets[1] = 0;
  src.sizes[1] = 4;
  src.segSizes[1] = 0;
  src.setDst4(1, 0x0a000002, 50103);
  return { src, peers: ["10.0.0.2:50103", undefined], lanes: Int32Array.of(0x1234, -1) };
}

Deno.test("secure layer: a 45-datagram GSO run is sealed datagram by datagram, split to fit a send, and opens in order", () => {
  const now = Date.now();
  const [ka, kb] = keys(now);
  const up: SecureUp[] = [];
  const a = new SecureLayer({ lane: 1, post: (m) => up.push(m) });
  const b = new SecureLayer({ lane: 0, post: (m) => up.push(m) });
  a.setMode(SecureMode.REQUIRE);
  b.setMode(SecureMode.REQUIRE);
  a.install(ka);
  b.install(kb);
  const seg = 1458, n = 45, last = 700;
  const { src, peers, lanes } = batch(seg, n, last);
  const dst = new SendBatch(8, SLOT);
  assert(a.needsSealing(2, peers, lanes, now));
  const out = a.sealBatch(src, 2, peers, lanes, dst, MAX, now);
  assertEquals(out, 3, "the run needs two sends (45 × 1490 > 65507), then the control datagram");
  assertEquals(dst.segSizes[0], seg + SECURE_OVERHEAD);
  assert(dst.sizes[0] <= MAX && dst.sizes[1] <= MAX);
  assertEquals(dst.sizes[0] + dst.sizes[1], seg * (n - 1) + last + n * SECURE_OVERHEAD);
  assertEquals(Array.from(dst.bufs[2].subarray(0, 4)), [0x10, 1, 2, 3], "control datagram unchanged");
  assertEquals(dst.dst4[1], 0x0a000002);
  // Open every datagram at the peer, in order: the original bytes come back.
  let k = 0;
  for (let e = 0; e < 2; e++) {
    const s = dst.segSizes[e] || dst.sizes[e];
    for (let at = 0; at < dst.sizes[e]; at += s) {
      const len = Math.min(s, dst.sizes[e] - at);
      const buf = dst.bufs[e];
      assertEquals((buf[at + 2] << 8) | buf[at + 3], 0x1234, "cleartext lane key");
      const r = b.inbound(buf, at, len, "10.0.0.1:50103", () => "x", now);
      assertEquals(r, Inbound.OPENED);
      assertEquals(b.peer, "10.0.0.1:50103");
      const want = src.bufs[0].subarray(k * seg, k * seg + b.innerLen);
      assertEquals(buf.subarray(at + 16, at + 16 + b.innerLen).join(), want.join(), `datagram ${k}`);
      k++;
    }
  }
  assertEquals(k, n);
  assertEquals(b.opened, n);
});

Deno.test("secure layer: require drops plain data and sends nothing without a session; prefer passes raw peers through", () => {
  const now = Date.now();
  const up: SecureUp[] = [];
  const l = new SecureLayer({ lane: 0, post: (m) => up.push(m) });
  l.setMode(SecureMode.REQUIRE);
  const raw = new Uint8Array(40);
  raw[0] = 0x45;
  const fast = new Uint8Array(48);
  fast[0] = 0x14;
  const hello = Uint8Array.of(0x10, 1, 0x4e, 0x4d);
  assertEquals(l.inbound(raw, 0, 40, "p", () => "p", now), Inbound.DONE);
  assertEquals(l.inbound(fast, 0, 48, "p", () => "p", now), Inbound.DONE);
  assertEquals(l.inbound(hello, 0, 4, "p", () => "p", now), Inbound.PASS);
  const hs = new Uint8Array(40);
  hs[0] = 0x16;
  assertEquals(l.inbound(hs, 0, 40, undefined, () => "1.2.3.4:50103", now), Inbound.DONE);
  assert(up.some((m) => m.type === "secure-hs" && m.peer === "1.2.3.4:50103"));
  const { src, peers, lanes } = batch(1000, 3, 500);
  const dst = new SendBatch(8, SLOT);
  assertEquals(l.sealBatch(src, 2, peers, lanes, dst, MAX, now), 1, "only the control datagram goes");
  assert(up.some((m) => m.type === "secure-want" && m.peer === "10.0.0.2:50103"));
  const drops: Record<string, number> = {};
  l.addDrops(drops);
  assertEquals(drops.secure_required, 2);
  assertEquals(drops.secure_no_session, 3);

  const p = new SecureLayer({ lane: 0, post: () => {} });
  p.setMode(SecureMode.PREFER);
  assertEquals(p.inbound(raw, 0, 40, "p", () => "p", now), Inbound.PASS);
  assert(!p.needsSealing(2, peers, lanes, now), "raw peers: the batch goes as it is");
  p.blocked.add("10.0.0.2:50103");
  assert(p.needsSealing(2, peers, lanes, now));
  assertEquals(
    p.sealBatch(src, 2, peers, lanes, dst, MAX, now),
    1,
    "a refused peer gets nothing, raw included",
  );
  assertEquals(p.inbound(raw, 0, 40, "10.0.0.2:50103", () => "x", now), Inbound.DONE);
});

/** Two layers in prefer with a session between them, and one datagram `a` sealed for `b`. */
function sealedPair(): { now: number; b: SecureLayer; d: Uint8Array } {
  const now = Date.now();
  const [ka, kb] = keys(now);
  const a = new SecureLayer({ lane: 0, post: () => {} });
  const b = new SecureLayer({ lane: 0, post: () => {} });
  a.setMode(SecureMode.PREFER);
  b.setMode(SecureMode.PREFER);
  a.install(ka);
  b.install(kb);
  const { src, peers, lanes } = batch(100, 1, 100);
  const dst = new SendBatch(8, SLOT);
  a.sealBatch(src, 1, peers, lanes, dst, MAX, now);
  return { now, b, d: dst.bufs[0].slice(0, dst.sizes[0]) };
}

Deno.test("secure layer: a session's datagram arriving from another peer's address is refused", () => {
  const { now, b, d } = sealedPair();
  assertEquals(b.inbound(d.slice(), 0, d.length, "10.0.0.9:50103", () => "x", now), Inbound.DONE);
  const drops: Record<string, number> = {};
  b.addDrops(drops);
  assertEquals(drops.secure_wrong_source, 1);
  // Plain data from the peer that has a session: refused in prefer too.
  const raw = new Uint8Array(40);
  raw[0] = 0x45;
  assertEquals(b.inbound(raw, 0, 40, "10.0.0.1:50103", () => "x", now), Inbound.DONE);
});

Deno.test("secure layer: replayed, forged and plain datagrams are counted per peer, accepted ones are not", () => {
  const { now, b, d } = sealedPair();
  const A = "10.0.0.1:50103";
  assertEquals(b.inbound(d.slice(), 0, d.length, A, () => A, now), Inbound.OPENED);
  assertEquals(b.peerDrops(), undefined, "an accepted datagram counts nothing");
  assertEquals(b.inbound(d.slice(), 0, d.length, A, () => A, now), Inbound.DONE); // replayed
  assertEquals(b.inbound(d.slice(), 0, d.length, A, () => A, now), Inbound.DONE);
  const forged = d.slice();
  forged[forged.length - 1] ^= 1;
  forged[12] ^= 0x40; // a fresh counter, so the window lets it through to the tag check
  assertEquals(b.inbound(forged, 0, forged.length, A, () => A, now), Inbound.DONE);
  const raw = new Uint8Array(40);
  raw[0] = 0x45;
  assertEquals(b.inbound(raw, 0, 40, A, () => A, now), Inbound.DONE);
  assertEquals(b.peerDrops(), {
    [A]: { secure_replay: 2, secure_auth: 1, secure_plain_from_secure_peer: 1 },
  });
  // A datagram for no session names no peer.
  const stray = d.slice();
  stray[4] ^= 0xff;
  assertEquals(b.inbound(stray, 0, stray.length, undefined, () => "10.0.0.9:1", now), Inbound.DONE);
  assertEquals(Object.keys(b.peerDrops() ?? {}), [A]);
});
