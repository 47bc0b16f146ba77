import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import {
  addIPv6,
  AddressError,
  canonicalIPv6,
  ExhaustedError,
  formatIPv4,
  formatIPv6,
  inPrefix4,
  inPrefix6,
  maskIPv4,
  OffsetAllocator,
  parseIPv4,
  parseIPv6,
  parsePrefix4,
  parsePrefix6,
  prefixLenOfMask,
  tryParseIPv4,
  tryParseIPv6,
} from "../../src/addr/mod.ts";

Deno.test("ipv4 parse/format round trip and rejects", () => {
  assertEquals(formatIPv4(parseIPv4("10.18.0.64")), "10.18.0.64");
  assertEquals(parseIPv4("255.255.255.255"), 0xffffffff);
  for (const bad of ["", "1.2.3", "1.2.3.4.5", "256.0.0.1", "01.2.3.4", "a.b.c.d", "1.2.3.-1", " 1.2.3.4"]) {
    assertEquals(tryParseIPv4(bad), undefined, bad);
  }
  assertThrows(() => parseIPv4("10.0.0"), AddressError);
});

Deno.test("ipv4 masks and prefixes", () => {
  assertEquals(maskIPv4(26), 0xffffffc0);
  assertEquals(maskIPv4(0), 0);
  assertEquals(prefixLenOfMask("255.255.0.0"), 16);
  assertThrows(() => prefixLenOfMask("255.0.255.0"));
  const p = parsePrefix4("10.16.0.0/12");
  assert(inPrefix4(p, parseIPv4("10.30.1.2")));
  assert(!inPrefix4(p, parseIPv4("10.32.0.1")));
  assertEquals(parsePrefix4("10.18.0.70/26").addr, parseIPv4("10.18.0.64"));
  assertThrows(() => parsePrefix4("10.18.0.70/26", true), AddressError);
  assertThrows(() => parsePrefix4("10.18.0.0/33"), AddressError);
});

Deno.test("inPrefix4: /0 holds every address, /32 exactly one (a shift by 32 is a shift by 0 in JS)", () => {
  const all = parsePrefix4("0.0.0.0/0");
  for (const a of ["0.0.0.0", "10.30.0.1", "192.0.2.1", "255.255.255.255"]) {
    assert(inPrefix4(all, parseIPv4(a)), a);
  }
  const one = parsePrefix4("10.30.0.1/32");
  assert(inPrefix4(one, parseIPv4("10.30.0.1")));
  assert(!inPrefix4(one, parseIPv4("10.30.0.0")));
  assert(inPrefix4(parsePrefix4("128.0.0.0/1"), parseIPv4("200.1.1.1")));
  assert(!inPrefix4(parsePrefix4("128.0.0.0/1"), parseIPv4("127.1.1.1")));
});

Deno.test("ipv6 parse and RFC 5952 formatting", () => {
  assertEquals(canonicalIPv6("fc00:0:0:0:0:0:0:0"), "fc00::");
  assertEquals(canonicalIPv6("FDFF:2000::0001"), "fdff:2000::1");
  assertEquals(canonicalIPv6("fdff::2:0:101"), "fdff::2:0:101");
  assertEquals(canonicalIPv6("2001:db8:0:0:1:0:0:1"), "2001:db8::1:0:0:1");
  assertEquals(canonicalIPv6("::ffff:10.1.2.3"), "::ffff:a01:203");
  assertEquals(canonicalIPv6("1:2:3:4:5:6:7:8"), "1:2:3:4:5:6:7:8");
  assertEquals(canonicalIPv6("1:0:3:4:5:6:7:8"), "1:0:3:4:5:6:7:8");
  for (
    const bad of ["", ":", "1::2::3", "12345::", "1:2:3:4:5:6:7:8:9", "g::1", "fe80::1%eth0", "1:2:3:4:5:6:7"]
  ) {
    assertEquals(tryParseIPv6(bad), undefined, bad);
  }
});

Deno.test("ipv6 prefixes and addition", () => {
  const p = parsePrefix6("fdff::/16");
  assert(inPrefix6(p, parseIPv6("fdff:2000::1")));
  assert(!inPrefix6(p, parseIPv6("fdfe::1")));
  const p7 = parsePrefix6("fc00::/7");
  assert(inPrefix6(p7, parseIPv6("fd12::1")));
  assert(!inPrefix6(p7, parseIPv6("fe00::1")));
  assertEquals(formatIPv6(addIPv6(parseIPv6("fc00::"), 257)), "fc00::101");
  assertThrows(() => parsePrefix6("fc00::1/120", true), AddressError);
});

Deno.test("allocator: FIFO reuse of released offsets first, then fresh, exhaustion, reserve", () => {
  const a = new OffsetAllocator(2, 5);
  assertEquals([a.allocate(), a.allocate()], [2, 3]);
  a.release(2);
  assertEquals(a.allocate(), 2);
  assertEquals(a.allocate(), 4);
  assertEquals(a.allocate(), 5);
  assertThrows(() => a.allocate(), ExhaustedError, "subnet exhausted");
  a.release(4);
  a.release(3);
  assertEquals([a.allocate(), a.allocate()], [4, 3]);
  a.release(9); // not in use: ignored
  assertThrows(() => a.allocate(), ExhaustedError);
  const b = new OffsetAllocator(2, 62);
  assert(b.reserve(10));
  assert(!b.reserve(10));
  assert(!b.reserve(63));
  const got = new Set<number>();
  for (let i = 0; i < 60; i++) got.add(b.allocate());
  assertEquals(got.size, 60);
  assert(!got.has(10));
  assertThrows(() => b.allocate(), ExhaustedError);
});

Deno.test("allocator snapshot/restore keeps counters and free list", () => {
  const a = new OffsetAllocator(2, 62);
  for (let i = 0; i < 5; i++) a.allocate();
  a.release(3);
  const snap = a.snapshot();
  const b = new OffsetAllocator(2, 62);
  for (const n of [2, 4, 5, 6]) b.reserve(n);
  b.restore(snap);
  assertEquals(b.allocate(), 3, "the released offset comes back first");
  assertEquals(b.allocate(), 7);
  // An offset recorded as used but not re-reserved (its instance vanished) is free again.
  const c = new OffsetAllocator(2, 62);
  for (const n of [2, 4, 5]) c.reserve(n);
  c.restore(snap);
  assertEquals([c.allocate(), c.allocate(), c.allocate()], [3, 6, 7]);
});
