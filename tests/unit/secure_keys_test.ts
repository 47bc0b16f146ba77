import { assert, assertEquals } from "../helpers/assert.ts";
import { KeyRing, newSendCounters, OpenResult, type SessionKeys } from "../../src/secure/keys.ts";
import { SECURE_HEADER_LEN, SECURE_OVERHEAD } from "../../src/secure/secure_wire.ts";

const NOW = 1_000_000;
function pairKeys(aIndex = 11, bIndex = 22, created = NOW): [SessionKeys, SessionKeys] {
  const k1 = crypto.getRandomValues(new Uint8Array(32)), k2 = crypto.getRandomValues(new Uint8Array(32));
  const t = { createdMs: created, sendUntilMs: created + 120_000, expiresMs: created + 180_000 };
  return [
    { peer: "B", localIndex: aIndex, remoteIndex: bIndex, sendKey: k1, recvKey: k2, ...t },
    { peer: "A", localIndex: bIndex, remoteIndex: aIndex, sendKey: k2, recvKey: k1, ...t },
  ];
}

function datagram(text: string): { buf: Uint8Array; len: number } {
  const body = new TextEncoder().encode(text);
  const buf = new Uint8Array(body.length + SECURE_OVERHEAD);
  buf.set(body, SECURE_HEADER_LEN);
  return { buf, len: body.length };
}

Deno.test("secure keys: sealed datagrams open once at the peer, the marker never in clear", () => {
  const [ka, kb] = pairKeys();
  const a = new KeyRing(0), b = new KeyRing(0);
  a.install(ka);
  b.install(kb);
  const { buf, len } = datagram("MARKER-payload-0123456789");
  const n = a.seal("B", buf, 0, len, 0xbeef, NOW);
  assertEquals(n, len + SECURE_OVERHEAD);
  assert(!new TextDecoder().decode(buf).includes("MARKER"));
  assertEquals((buf[2] << 8) | buf[3], 0xbeef); // the lane key stays in clear for steering
  const copy = buf.slice();
  assertEquals(b.open(buf, 0, n, NOW), len);
  assertEquals(b.peer, "A");
  assertEquals(new TextDecoder().decode(buf.subarray(16, 16 + len)), "MARKER-payload-0123456789");
  assertEquals(b.open(copy.slice(), 0, n, NOW), OpenResult.REPLAY);
  // Replies flow the other way with the other key.
  const r = datagram("reply");
  const rn = b.seal("A", r.buf, 0, r.len, 1, NOW);
  assertEquals(a.open(r.buf, 0, rn, NOW), r.len);
  a.close();
  b.close();
});

Deno.test("secure keys: any change to header, body or tag fails authentication and moves no window", () => {
  const [ka, kb] = pairKeys();
  const a = new KeyRing(0), b = new KeyRing(0);
  a.install(ka);
  b.install(kb);
  const { buf, len } = datagram("some inner datagram bytes");
  const n = a.seal("B", buf, 0, len, 7, NOW);
  for (const at of [2, 3, 9, 15, 16, n - 17, n - 1]) {
    const bad = buf.slice();
    bad[at] ^= 0x01;
    const r = b.open(bad, 0, n, NOW);
    assert(r === OpenResult.AUTH || r === OpenResult.REPLAY, `byte ${at}: ${r}`);
  }
  const badIndex = buf.slice();
  badIndex[7] ^= 1;
  assertEquals(b.open(badIndex, 0, n, NOW), OpenResult.NO_SESSION);
  assertEquals(b.open(buf, 0, 20, NOW), OpenResult.MALFORMED);
  // The untouched original still opens: forgeries did not mark its counter.
  assertEquals(b.open(buf, 0, n, NOW), len);
  a.close();
  b.close();
});

Deno.test("secure keys: two workers sharing one key never repeat a counter; windows are per sending lane", () => {
  const [ka, kb] = pairKeys();
  const w0 = new KeyRing(0), w1 = new KeyRing(1), rx = new KeyRing(0);
  w0.install(ka);
  w1.install(ka);
  rx.install(kb);
  const sent: Uint8Array[] = [];
  for (let i = 0; i < 50; i++) {
    for (const w of [w0, w1]) {
      const { buf, len } = datagram(`m${i}`);
      w.seal("B", buf, 0, len, 0, NOW);
      sent.push(buf);
    }
  }
  const nonces = new Set(sent.map((b) => b.subarray(8, 16).join()));
  assertEquals(nonces.size, sent.length);
  // Lane 1's datagrams first, then lane 0's (as if steered to this worker late): all accepted.
  for (const b of [...sent.filter((_, i) => i % 2 === 1), ...sent.filter((_, i) => i % 2 === 0)]) {
    assert(rx.open(b, 0, b.length, NOW) > 0);
  }
  w0.close();
  w1.close();
  rx.close();
});

Deno.test("secure keys: rekey hand-over keeps the previous session for in-flight datagrams, then expires it", () => {
  const [ka, kb] = pairKeys(1, 2, NOW);
  const [ka2, kb2] = pairKeys(3, 4, NOW + 120_000);
  const a = new KeyRing(0), b = new KeyRing(0);
  a.install(ka);
  b.install(kb);
  const old = datagram("in flight");
  const oldN = a.seal("B", old.buf, 0, old.len, 0, NOW + 119_000);
  assert(!a.wantsRekey.has("B"));
  const late = datagram("late");
  a.seal("B", late.buf, 0, late.len, 0, NOW + 120_500);
  assert(a.wantsRekey.has("B"), "send lifetime passed: asks for a rekey");
  a.install(ka2);
  b.install(kb2);
  assert(!a.wantsRekey.has("B"));
  const fresh = datagram("new key");
  const fn = a.seal("B", fresh.buf, 0, fresh.len, 0, NOW + 121_000);
  assertEquals((fresh.buf[4] << 24 | fresh.buf[5] << 16 | fresh.buf[6] << 8 | fresh.buf[7]) >>> 0, 4);
  assertEquals(b.open(fresh.buf, 0, fn, NOW + 121_000), fresh.len);
  assertEquals(b.open(old.buf, 0, oldN, NOW + 121_000), old.len);
  b.expire(NOW + 180_000);
  assertEquals(b.size, 1);
  assertEquals(b.open(late.buf, 0, late.buf.length, NOW + 180_000), OpenResult.NO_SESSION);
  b.removePeer("A");
  assertEquals(b.size, 0);
  assert(!a.canSend("C", NOW));
  assertEquals(a.seal("C", fresh.buf, 0, 1, 0, NOW), -1);
  a.close();
  b.close();
});

Deno.test("secure keys: a restarted worker continues its lane's shared counter and opens nothing of the old session", () => {
  const [ka, kb] = pairKeys();
  ka.sendCounters = newSendCounters();
  const a = new KeyRing(3), b = new KeyRing(0);
  a.install(ka);
  b.install(kb);
  for (let i = 0; i < 5; i++) {
    const d = datagram(`before ${i}`);
    assertEquals(b.open(d.buf, 0, a.seal("B", d.buf, 0, d.len, 1, NOW), NOW), d.len);
  }
  // The worker of lane 3 restarts: a new ring gets the same keys (and counters), send-only.
  const again = new KeyRing(3);
  again.install(ka, true);
  const d = datagram("after the restart");
  assertEquals(
    b.open(d.buf, 0, again.seal("B", d.buf, 0, d.len, 1, NOW), NOW),
    d.len,
    "not a replay at the peer",
  );
  // Without the shared counters the restarted ring would start at 0 again: the peer refuses that.
  const [kc, kd] = pairKeys(33, 44);
  const c = new KeyRing(3), e = new KeyRing(0);
  c.install(kc);
  e.install(kd);
  const first = datagram("x");
  e.open(first.buf, 0, c.seal("B", first.buf, 0, first.len, 1, NOW), NOW);
  const fresh = new KeyRing(3);
  fresh.install(kc);
  const dup = datagram("y");
  assertEquals(e.open(dup.buf, 0, fresh.seal("B", dup.buf, 0, dup.len, 1, NOW), NOW), OpenResult.REPLAY);
  // The restarted ring opens nothing of the old session (its replay windows are gone).
  const r = datagram("reply");
  assertEquals(again.open(r.buf, 0, b.seal("A", r.buf, 0, r.len, 1, NOW), NOW), OpenResult.EXPIRED);
});
