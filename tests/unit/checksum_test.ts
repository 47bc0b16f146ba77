/**
 * Unit tests for src/proxy/checksum.ts: known answers (RFC 1071, a real IPv4 header), agreement
 * with a naive independent reference, and RFC 1624 incremental updates checked by recomputation.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { prng, randomBytes } from "../helpers/packets.ts";
import {
  addrDelta4,
  addrDelta6,
  adjustChecksum,
  completeChecksum,
  delta16,
  foldSum,
  IPPROTO_ICMP,
  IPPROTO_ICMPV6,
  IPPROTO_TCP,
  IPPROTO_UDP,
  ipv4HeaderChecksum,
  l4Checksum4,
  l4Checksum6,
  l4ChecksumFieldOffset,
  onesSum,
  partialChecksum4,
  partialChecksum6,
  pseudoSum4,
  pseudoSum6,
} from "../../src/proxy/checksum.ts";

/** Naive reference sum: 16-bit words of a plain number array plus `init`, folded with a loop. */
function refSum(bytes: number[], init = 0): number {
  let sum = init;
  for (let i = 0; i < bytes.length; i += 2) sum += bytes[i] * 256 + (i + 1 < bytes.length ? bytes[i + 1] : 0);
  while (sum > 0xffff) sum = (sum % 65536) + Math.floor(sum / 65536);
  return sum;
}

/** Naive reference: sum of 16-bit words of a plain number array, folded with a loop, complemented. */
function refChecksum(bytes: number[]): number {
  return 0xffff - refSum(bytes);
}

/** Reference L4 checksum: explicit pseudo-header array + segment with the checksum field zeroed. */
function refL4(src: Uint8Array, dst: Uint8Array, proto: number, seg: Uint8Array, v6: boolean): number {
  const f = proto === IPPROTO_TCP ? 16 : proto === IPPROTO_UDP ? 6 : 2;
  const s = Array.from(seg);
  s[f] = 0;
  s[f + 1] = 0;
  const len = seg.length;
  const pseudo = proto === IPPROTO_ICMP
    ? []
    : v6
    ? [...src, ...dst, (len >>> 24) & 255, (len >>> 16) & 255, (len >>> 8) & 255, len & 255, 0, 0, 0, proto]
    : [...src, ...dst, 0, proto, (len >>> 8) & 255, len & 255];
  const c = refChecksum([...pseudo, ...s]);
  return c === 0 && proto === IPPROTO_UDP ? 0xffff : c;
}

Deno.test("onesSum: RFC 1071 example sums to 0xddf2", () => {
  const b = new Uint8Array([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
  assertEquals(onesSum(b, 0, 8, 0), 0xddf2);
  assertEquals(~onesSum(b, 0, 8, 0) & 0xffff, 0x220d);
});

Deno.test("ipv4HeaderChecksum: known header gives 0xb861, ignoring the field's current value", () => {
  const h = new Uint8Array([
    0x45,
    0x00,
    0x00,
    0x73,
    0x00,
    0x00,
    0x40,
    0x00,
    0x40,
    0x11,
    0xde,
    0xad,
    0xc0,
    0xa8,
    0x00,
    0x01,
    0xc0,
    0xa8,
    0x00,
    0xc7,
  ]);
  assertEquals(ipv4HeaderChecksum(h, 0, 20), 0xb861);
  // At an offset inside a bigger buffer too.
  const big = new Uint8Array(64).fill(0xee);
  big.set(h, 13);
  assertEquals(ipv4HeaderChecksum(big, 13, 20), 0xb861);
});

Deno.test("foldSum: end-around carry", () => {
  assertEquals(foldSum(0), 0);
  assertEquals(foldSum(0xffff), 0xffff);
  assertEquals(foldSum(0x10000), 1);
  assertEquals(foldSum(0x1fffe), 0xffff);
  assertEquals(foldSum(0xffffffff), 0xffff);
});

Deno.test("onesSum: odd lengths, offsets and initial values agree with the naive reference", () => {
  const rnd = prng(1);
  for (let iter = 0; iter < 500; iter++) {
    const n = Math.floor(rnd() * 300);
    const off = Math.floor(rnd() * 5);
    const b = randomBytes(rnd, n + off + 3);
    const init = Math.floor(rnd() * 0x30000);
    const expected = refSum(Array.from(b.subarray(off, off + n)), init);
    assertEquals(onesSum(b, off, n, init), expected, `n=${n} off=${off} init=${init}`);
  }
});

Deno.test("onesSum: very long input (folds while accumulating)", () => {
  const b = new Uint8Array(300001).fill(0xff);
  assertEquals(onesSum(b, 0, b.length, 0), 0xff00); // 150000 words of 0xffff, then 0xff00
  const c = new Uint8Array(262144);
  for (let i = 0; i < c.length; i++) c[i] = i & 0xff;
  assertEquals(onesSum(c, 0, c.length, 0), refSum(Array.from(c)));
});

Deno.test("onesSum: every alignment, view offset, initial near 2^32 and buffer switches", () => {
  const rnd = prng(7);
  const big = randomBytes(rnd, 5000);
  const view = new Uint8Array(big.buffer, 3, 4000); // unaligned byteOffset
  for (let t = 0; t < 400; t++) {
    const off = Math.floor(rnd() * 1000);
    const len = Math.floor(rnd() * 2900);
    const init = Math.floor(rnd() * 0x3ffff);
    assertEquals(onesSum(view, off, len, init), refSum(Array.from(view.subarray(off, off + len)), init));
  }
  assertEquals(onesSum(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff]), 0, 5, 0xffff), 0xff00);
  assertEquals(onesSum(new Uint8Array(10), 0, 10, 0), 0);
  // Ranges longer than one accumulation round (128 KiB) are folded between rounds.
  const huge = randomBytes(rnd, 400_000).fill(0xff, 0, 300_000);
  let ref = 0xfffffff0n; // BigInt reference (initial near 2^32 too)
  for (let i = 1; i < 399_997; i += 2) ref += BigInt((huge[i] << 8) | huge[i + 1]);
  ref += BigInt(huge[399_997] << 8);
  while (ref > 0xffffn) ref = (ref & 0xffffn) + (ref >> 16n);
  assertEquals(onesSum(huge, 1, 399_997, 0xfffffff0), Number(ref));
  // Alternating between several buffers (cache eviction) stays correct.
  const a = randomBytes(rnd, 300), b = randomBytes(rnd, 300), c = randomBytes(rnd, 300);
  for (const x of [a, b, c, a, c, b, a]) {
    assertEquals(onesSum(x, 1, 299, 5), refSum(Array.from(x.subarray(1, 300)), 5));
  }
});

Deno.test("completeChecksum: fills the full checksum of a CHECKSUM_PARTIAL range; 0 is stored as 0xffff", () => {
  const b = new Uint8Array([0, 0, 0x12, 0x34, 0x00, 0x00, 0xab, 0xcd, 0x01]);
  // Range from byte 2, field at 2 + 2: the field (0) is part of the sum, as the kernel does it.
  assertEquals(completeChecksum(b, 0, b.length, 2, 2), true);
  const f = (b[4] << 8) | b[5];
  assertEquals(f, ~refSum([0x12, 0x34, 0, 0, 0xab, 0xcd, 0x01], 0) & 0xffff);
  const z = new Uint8Array([0xff, 0xff, 0x00, 0x00]); // sums to 0xffff: complement 0 → 0xffff
  assertEquals(completeChecksum(z, 0, 4, 0, 2), true);
  assertEquals((z[2] << 8) | z[3], 0xffff);
  assertEquals(completeChecksum(b, 0, b.length, 8, 2), false); // field past the end
});

Deno.test("pseudo-header sums match their definitions", () => {
  const b = new Uint8Array([10, 30, 0, 1, 10, 19, 0, 7]);
  assertEquals(pseudoSum4(b, 0, 4, 6, 1400), 0x0a1e + 0x0001 + 0x0a13 + 0x0007 + 6 + 1400);
  const v6 = new Uint8Array(32);
  v6[0] = 0xfd;
  v6[1] = 0xff;
  v6[15] = 1;
  v6[16] = 0xfd;
  v6[17] = 0xff;
  v6[31] = 2;
  assertEquals(pseudoSum6(v6, 0, 16, 17, 0x12345), 0xfdff * 2 + 1 + 2 + 17 + 0x1 + 0x2345);
  assertEquals(partialChecksum4(b, 0, 4, 6, 1400), foldSum(pseudoSum4(b, 0, 4, 6, 1400)));
  assertEquals(partialChecksum6(v6, 0, 16, 17, 100), foldSum(pseudoSum6(v6, 0, 16, 17, 100)));
});

Deno.test("l4Checksum4/6 agree with the naive reference for TCP, UDP, ICMP, ICMPv6", () => {
  const rnd = prng(2);
  for (let iter = 0; iter < 400; iter++) {
    const v6 = rnd() < 0.5;
    const protos = v6 ? [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6] : [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP];
    const proto = protos[Math.floor(rnd() * 3)];
    const segLen = l4ChecksumFieldOffset(proto) + 2 + Math.floor(rnd() * 200);
    const alen = v6 ? 16 : 4;
    const src = randomBytes(rnd, alen);
    const dst = randomBytes(rnd, alen);
    const seg = randomBytes(rnd, segLen);
    const buf = new Uint8Array(3 + 2 * alen + segLen);
    buf.set(src, 3);
    buf.set(dst, 3 + alen);
    buf.set(seg, 3 + 2 * alen);
    const got = v6
      ? l4Checksum6(buf, 3, 3 + alen, proto, 3 + 2 * alen, segLen)
      : l4Checksum4(buf, 3, 3 + alen, proto, 3 + 2 * alen, segLen);
    assertEquals(got, refL4(src, dst, proto, seg, v6), `v6=${v6} proto=${proto} len=${segLen}`);
  }
});

Deno.test("l4Checksum: unknown protocol, wrong family or too-short segment give -1", () => {
  const b = new Uint8Array(64);
  assertEquals(l4Checksum4(b, 0, 4, 47, 8, 20), -1);
  assertEquals(l4Checksum4(b, 0, 4, IPPROTO_ICMPV6, 8, 20), -1);
  assertEquals(l4Checksum6(b, 0, 16, IPPROTO_ICMP, 32, 20), -1);
  assertEquals(l4Checksum4(b, 0, 4, IPPROTO_TCP, 8, 17), -1);
  assertEquals(l4ChecksumFieldOffset(132), -1);
});

Deno.test("UDP: a computed checksum of 0 is transmitted as 0xFFFF", () => {
  // Build a UDP segment, then choose its last word so the sum becomes 0xFFFF (checksum 0).
  const buf = new Uint8Array(8 + 12);
  buf.set([192, 168, 0, 1, 192, 168, 0, 2], 0);
  buf.set([0x30, 0x39, 0x00, 0x35, 0x00, 0x0c, 0, 0, 0xab, 0xcd, 0, 0], 8);
  const c = l4Checksum4(buf, 0, 4, IPPROTO_UDP, 8, 12);
  buf[18] = c >>> 8;
  buf[19] = c & 0xff;
  assertEquals(l4Checksum4(buf, 0, 4, IPPROTO_UDP, 8, 12), 0xffff);
  // The same bytes as TCP-like data: ICMP would give 0 (no substitution).
  assertEquals(refL4(buf.subarray(0, 4), buf.subarray(4, 8), IPPROTO_UDP, buf.subarray(8), false), 0xffff);
});

Deno.test("adjustChecksum: incremental word changes equal full recomputation (IPv4 headers)", () => {
  const rnd = prng(3);
  for (let iter = 0; iter < 3000; iter++) {
    const h = randomBytes(rnd, 20);
    h[0] = 0x45;
    const c0 = ipv4HeaderChecksum(h, 0, 20);
    h[10] = c0 >>> 8;
    h[11] = c0 & 0xff;
    // Change one random word other than the checksum (sometimes to the same value, or to 0/0xffff).
    let w = Math.floor(rnd() * 10);
    if (w === 5) w = 6;
    const old = (h[w * 2] << 8) | h[w * 2 + 1];
    const r = rnd();
    const nw = r < 0.1 ? old : r < 0.2 ? 0 : r < 0.3 ? 0xffff : Math.floor(rnd() * 0x10000);
    h[w * 2] = nw >>> 8;
    h[w * 2 + 1] = nw & 0xff;
    const inc = adjustChecksum(c0, delta16(old, nw), false);
    assertEquals(inc, ipv4HeaderChecksum(h, 0, 20), `iter ${iter}`);
  }
});

Deno.test("adjustChecksum: address deltas (v4 and v6) equal full recomputation", () => {
  const rnd = prng(4);
  for (let iter = 0; iter < 2000; iter++) {
    const v6 = rnd() < 0.5;
    const alen = v6 ? 16 : 4;
    const segLen = 20 + Math.floor(rnd() * 60);
    const buf = randomBytes(rnd, 2 * alen + segLen);
    const proto = IPPROTO_TCP;
    const calc = () =>
      v6 ? l4Checksum6(buf, 0, 16, proto, 32, segLen) : l4Checksum4(buf, 0, 4, proto, 8, segLen);
    const c0 = calc();
    const partial0 = v6
      ? partialChecksum6(buf, 0, 16, proto, segLen)
      : partialChecksum4(buf, 0, 4, proto, segLen);
    const newAddr = randomBytes(rnd, alen);
    const which = rnd() < 0.5 ? 0 : alen;
    let delta: number;
    if (v6) {
      delta = addrDelta6(buf, which, newAddr, 0);
    } else {
      const oldV = ((buf[which] << 24) | (buf[which + 1] << 16) | (buf[which + 2] << 8) | buf[which + 3]) >>>
        0;
      const newV = ((newAddr[0] << 24) | (newAddr[1] << 16) | (newAddr[2] << 8) | newAddr[3]) >>> 0;
      delta = addrDelta4(oldV, newV);
    }
    buf.set(newAddr, which);
    assertEquals(adjustChecksum(c0, delta, false), calc(), `full iter ${iter}`);
    const partial1 = v6
      ? partialChecksum6(buf, 0, 16, proto, segLen)
      : partialChecksum4(buf, 0, 4, proto, segLen);
    assertEquals(adjustChecksum(partial0, delta, true), partial1, `partial iter ${iter}`);
  }
});

Deno.test("delta helpers: unchanged values add ones'-complement zero", () => {
  assertEquals(delta16(0x1234, 0x1234), 0xffff);
  assertEquals(addrDelta4(0x0a1e0001, 0x0a1e0001), 0x1fffe);
  const a = new Uint8Array(16).fill(7);
  assertEquals(addrDelta6(a, 0, a, 0), 8 * 0xffff);
  // Adding a ones'-complement zero leaves a non-zero checksum unchanged.
  assertEquals(adjustChecksum(0x1234, addrDelta4(5, 5), false), 0x1234);
  assertEquals(adjustChecksum(0x1234, addrDelta4(5, 5), true), 0x1234);
  assert(adjustChecksum(0, 0x1fffe, false) === 0);
});
