/**
 * Unit tests for src/proxy/raw_partial.ts: a raw IPv4 TCP/UDP packet whose checksum field holds the
 * pseudo-header sum (CHECKSUM_PARTIAL, as a peer's kernel fast path sends it over a veth) is found;
 * full checksums, UDP without a checksum, fragments and truncated packets are not; completing the
 * found one gives the full checksum.
 */
import { assertEquals } from "../helpers/assert.ts";
import { completeChecksum, l4Checksum4, partialChecksum4 } from "../../src/proxy/checksum.ts";
import { partialFieldOffset, rawPartialStart4 } from "../../src/proxy/raw_partial.ts";

function packet(proto: 6 | 17, payload: number): Uint8Array {
  const l4 = (proto === 6 ? 20 : 8) + payload;
  const p = new Uint8Array(20 + l4);
  p.set([
    0x45,
    0,
    (20 + l4) >> 8,
    (20 + l4) & 255,
    0,
    1,
    0x40,
    0,
    64,
    proto,
    0,
    0,
    10,
    30,
    0,
    5,
    10,
    18,
    0,
    66,
  ]);
  p.set([0x9c, 0x40, 0x14, 0x51], 20); // ports 40000 → 5201
  if (proto === 17) p.set([l4 >> 8, l4 & 255], 24);
  else p[32] = 0x50;
  for (let i = 0; i < payload; i++) p[p.length - payload + i] = (i * 37 + 11) & 255;
  return p;
}

function setField(p: Uint8Array, v: number): void {
  const f = 20 + partialFieldOffset(p[9]);
  p[f] = v >> 8;
  p[f + 1] = v & 255;
}

Deno.test("raw_partial: a partial TCP/UDP checksum is found and completes to the full one", () => {
  for (const proto of [6, 17] as const) {
    for (const payload of [0, 1, 37, 1400]) {
      const p = packet(proto, payload);
      const full = l4Checksum4(p, 12, 16, proto, 20, p.length - 20);
      setField(p, full);
      assertEquals(rawPartialStart4(p, 0, p.length), -1, `full checksum ${proto}/${payload}`);
      setField(p, partialChecksum4(p, 12, 16, proto, p.length - 20));
      assertEquals(rawPartialStart4(p, 0, p.length), 20, `partial ${proto}/${payload}`);
      completeChecksum(p, 0, p.length, 20, partialFieldOffset(proto));
      assertEquals(rawPartialStart4(p, 0, p.length), -1);
      const f = 20 + partialFieldOffset(proto);
      assertEquals((p[f] << 8) | p[f + 1], full, `completed ${proto}/${payload}`);
    }
  }
});

Deno.test("raw_partial: UDP without a checksum, fragments, truncated and other protocols are left alone", () => {
  const u = packet(17, 10);
  setField(u, 0);
  assertEquals(rawPartialStart4(u, 0, u.length), -1);
  const t = packet(6, 10);
  setField(t, partialChecksum4(t, 12, 16, 6, t.length - 20));
  const frag = t.slice();
  frag[6] = 0x20; // more fragments
  assertEquals(rawPartialStart4(frag, 0, frag.length), -1);
  assertEquals(rawPartialStart4(t, 0, t.length - 1), -1, "shorter than its total length");
  const icmp = t.slice();
  icmp[9] = 1;
  assertEquals(rawPartialStart4(icmp, 0, icmp.length), -1);
  const at = new Uint8Array(t.length + 7);
  at.set(t, 7);
  assertEquals(rawPartialStart4(at, 7, t.length), 20, "at an offset");
});
