import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import {
  AddressPool,
  Allocator,
  canonicalIp,
  instance6Spec,
  InvalidAddressError,
  PoolExhaustedError,
  rr6Spec,
  service4Spec,
  subnet4Spec,
  subnet6Spec,
  userRr4,
  userRr6,
} from "../../src/cluster/alloc.ts";

/** A pool whose counter is positioned at `addr` (the next allocation returns it). */
function poolAt(pool: AddressPool, addr: string): AddressPool {
  const i = pool.spec.ordinalOf(addr);
  assert(i !== undefined, `${addr} is not in ${pool.spec.name}`);
  pool.restore({ next: i.toString(), free: [] });
  return pool;
}

function take(pool: AddressPool, n: number): string[] {
  return Array.from({ length: n }, () => pool.allocate());
}

Deno.test("alloc: IPv4 node subnets step /26 from 10.18.0.0 with carries (§6.1)", () => {
  assertEquals(take(new AddressPool(subnet4Spec()), 5), [
    "10.18.0.0",
    "10.18.0.64",
    "10.18.0.128",
    "10.18.0.192",
    "10.18.1.0",
  ]);
  assertEquals(take(poolAt(new AddressPool(subnet4Spec()), "10.18.255.192"), 2), [
    "10.18.255.192",
    "10.19.0.0",
  ]);
  assertEquals(take(poolAt(new AddressPool(subnet4Spec()), "10.18.254.128"), 2), [
    "10.18.254.128",
    "10.18.254.192",
  ]);
  assertEquals(subnet4Spec().size, 12288n);
  const last = poolAt(new AddressPool(subnet4Spec()), "10.29.255.192");
  assertEquals(last.allocate(), "10.29.255.192");
  assert(!last.canAllocate());
  assertThrows(() => last.allocate(), PoolExhaustedError, "IPv4 node subnets");
  assertEquals(subnet4Spec().ordinalOf("10.30.0.0"), undefined);
  assertEquals(subnet4Spec().ordinalOf("10.18.0.65"), undefined);
});

Deno.test("alloc: the /26 holding the TUN address 10.19.1.254 is skipped unless disabled", () => {
  assertEquals(take(poolAt(new AddressPool(subnet4Spec()), "10.19.1.128"), 2), ["10.19.1.128", "10.19.2.0"]);
  assertEquals(take(poolAt(new AddressPool(subnet4Spec([])), "10.19.1.128"), 2), [
    "10.19.1.128",
    "10.19.1.192",
  ]);
  // Reserving it explicitly is still possible (e.g. a hand-made state), and releasing never frees it.
  const p = poolAt(new AddressPool(subnet4Spec()), "10.19.1.128");
  take(p, 2);
  p.reserve("10.19.1.192");
  p.release("10.19.1.192");
  assertEquals(p.freeList(), []);
});

Deno.test("alloc: IPv6 node subnets step /120 from fc00:: with carries (§6.2)", () => {
  assertEquals(take(new AddressPool(subnet6Spec()), 3), ["fc00::", "fc00::100", "fc00::200"]);
  assertEquals(take(poolAt(new AddressPool(subnet6Spec()), "fc00::7fff:ffff:ffff:ff00"), 2), [
    "fc00::7fff:ffff:ffff:ff00",
    "fc00::8000:0:0:0",
  ]);
  assertEquals(take(poolAt(new AddressPool(subnet6Spec()), "fc00:0:700:1:ff05:403:2ff:ff00"), 2), [
    "fc00:0:700:1:ff05:403:2ff:ff00",
    "fc00:0:700:1:ff05:403:300:0",
  ]);
  const last = poolAt(new AddressPool(subnet6Spec()), "fdfd:ffff:ffff:ffff:ffff:ffff:ffff:ff00");
  assertEquals(last.allocate(), "fdfd:ffff:ffff:ffff:ffff:ffff:ffff:ff00");
  assertThrows(() => last.allocate(), PoolExhaustedError);
  assertEquals(subnet6Spec().ordinalOf("fdfe::"), undefined);
});

Deno.test("alloc: Service IPs v4 count 0..253 per octet, never .254/.255 (§6.1)", () => {
  assertEquals(take(new AddressPool(service4Spec()), 2), ["10.30.0.0", "10.30.0.1"]);
  assertEquals(take(poolAt(new AddressPool(service4Spec()), "10.30.0.253"), 2), ["10.30.0.253", "10.30.1.0"]);
  assertEquals(service4Spec().size, 64516n);
  for (const bad of ["10.30.0.254", "10.30.0.255", "10.30.254.0", "10.30.255.1", "10.31.0.0"]) {
    assertEquals(service4Spec().ordinalOf(bad), undefined, bad);
  }
  const last = poolAt(new AddressPool(service4Spec()), "10.30.253.253");
  assertEquals(last.allocate(), "10.30.253.253");
  assertThrows(() => last.allocate(), PoolExhaustedError, "Service IPs");
});

Deno.test("alloc: Instance IPv6 from fdff::, low 80 bits, then block fdff:800:: (§6.2)", () => {
  assertEquals(take(new AddressPool(instance6Spec()), 2), ["fdff::", "fdff::1"]);
  assertEquals(take(poolAt(new AddressPool(instance6Spec()), "fdff::2:0:101"), 2), [
    "fdff::2:0:101",
    "fdff::2:0:102",
  ]);
  assertEquals(take(poolAt(new AddressPool(instance6Spec()), "fdff::ffff:ffff:ffff:ffff:ffff"), 3), [
    "fdff::ffff:ffff:ffff:ffff:ffff",
    "fdff:800::",
    "fdff:800::1",
  ]);
  assertEquals(instance6Spec().ordinalOf("fdff:0:1::"), undefined); // beyond the low 80 bits of block 1
});

Deno.test("alloc: RR IPv6 from fdff:2000::, exhausted after the low 80 bits", () => {
  assertEquals(take(new AddressPool(rr6Spec()), 2), ["fdff:2000::", "fdff:2000::1"]);
  const last = poolAt(new AddressPool(rr6Spec()), "fdff:2000:0:ffff:ffff:ffff:ffff:ffff");
  assertEquals(last.allocate(), "fdff:2000:0:ffff:ffff:ffff:ffff:ffff");
  assertThrows(() => last.allocate(), PoolExhaustedError, "RR IPs");
});

Deno.test("alloc: released addresses are reused first, oldest release first (FIFO)", () => {
  const p = new AddressPool(service4Spec());
  assertEquals(take(p, 4), ["10.30.0.0", "10.30.0.1", "10.30.0.2", "10.30.0.3"]);
  p.release("10.30.0.2");
  p.release("10.30.0.0");
  p.release("10.30.0.0"); // double release: no-op
  p.release("10.30.9.9"); // never handed out: no-op
  assertEquals(p.freeList(), ["10.30.0.2", "10.30.0.0"]);
  assertEquals(take(p, 3), ["10.30.0.2", "10.30.0.0", "10.30.0.4"]);
  assertEquals(p.used, 5);
});

Deno.test("alloc: reserved addresses are skipped by the counter and leave the free list", () => {
  const p = new AddressPool(service4Spec());
  assert(p.reserve("10.30.0.1"));
  assert(!p.reserve("10.30.0.1"));
  assertEquals(take(p, 2), ["10.30.0.0", "10.30.0.2"]);
  p.release("10.30.0.0");
  assert(p.reserve("10.30.0.0")); // taken from the free list by a user choice
  assertEquals(p.freeList(), []);
  assertEquals(p.allocate(), "10.30.0.3");
  // A reserved address ahead of the counter, released, is simply handed out in order later.
  assert(p.reserve("10.30.0.5"));
  p.release("10.30.0.5");
  assertEquals(p.freeList(), []);
  assertEquals(take(p, 2), ["10.30.0.4", "10.30.0.5"]);
  // User RR IPs outside the generated numbering (10.30.x.254) can be held and released too.
  assert(p.reserve("10.30.0.254"));
  assert(p.isUsed("10.30.0.254"));
  p.release("10.30.0.254");
  assert(!p.isUsed("10.30.0.254"));
  assertEquals(p.freeList(), []);
});

Deno.test("alloc: canAllocate changes nothing; snapshot/restore round trip", () => {
  const a = new Allocator();
  take(a.service4, 3);
  a.service4.release("10.30.0.1");
  take(a.subnet4, 2);
  assert(a.service4.canAllocate());
  const snap = a.snapshot();
  assertEquals(snap.service4, { next: "3", free: ["10.30.0.1"] });
  assertEquals(snap.subnet4, { next: "2", free: [] });
  const b = new Allocator();
  b.service4.reserve("10.30.0.0");
  b.service4.reserve("10.30.0.2");
  b.restore(snap);
  assertEquals(take(b.service4, 2), ["10.30.0.1", "10.30.0.3"]);
  assertThrows(() => b.restore({ ...snap, rr6: { next: "-1", free: [] } }), InvalidAddressError);
  assertThrows(() => b.restore({ ...snap, service4: { next: "64517", free: [] } }), InvalidAddressError);
});

Deno.test("alloc: user-chosen RR addresses are validated and canonicalised", () => {
  assertEquals(userRr4("10.30.0.1"), "10.30.0.1");
  assertEquals(userRr4(" 10.30.200.254 "), "10.30.200.254");
  for (const bad of ["10.20.0.1", "173.30.0.1", "10.30.0", "10.30.0.01", "x"]) {
    assertThrows(() => userRr4(bad), InvalidAddressError, "RR_ip");
  }
  assertEquals(userRr6("fdff:2000::1337"), "fdff:2000::1337");
  assertEquals(userRr6("FDFF:2000:0:0::1337"), "fdff:2000::1337");
  assertEquals(userRr6("fdff:27ff::1"), "fdff:27ff::1");
  for (const bad of ["fdff:1000::1337", "2001:db80::1337", "fdff:2800::1", "fdff::1", "10.30.0.1", "zz::"]) {
    assertThrows(() => userRr6(bad), InvalidAddressError, "RR_ip_v6");
  }
  assertEquals(canonicalIp("FDFF:0:0::01"), "fdff::1");
  assertEquals(canonicalIp("10.30.0.1"), "10.30.0.1");
  assertEquals(canonicalIp("a.b.c.d"), undefined);
});

Deno.test("alloc: addresses in use are tracked alike in the bitmap, beyond it and outside the numbering", () => {
  const p = new AddressPool(rr6Spec());
  const near = "fdff:2000::5"; // ordinal 5: bitmap
  const far = "fdff:2000::1:0:0"; // ordinal 2^32: beyond the bitmap
  const outside = "fdff:2001::7"; // in fdff:2000::/21 but not numbered (user-chosen)
  for (const a of [near, far, outside]) {
    assert(!p.isUsed(a));
    assert(p.reserve(a));
    assert(!p.reserve(a), `${a} reserved twice`);
    assert(p.isUsed(a));
  }
  assertEquals(p.used, 3);
  // The counter skips the reserved ordinal 5.
  assertEquals(Array.from({ length: 6 }, () => p.allocate()), [
    "fdff:2000::",
    "fdff:2000::1",
    "fdff:2000::2",
    "fdff:2000::3",
    "fdff:2000::4",
    "fdff:2000::6",
  ]);
  assertEquals(p.used, 9);
  p.release(near);
  p.release(far); // ahead of the counter: just unused
  p.release(outside);
  assertEquals(p.used, 6);
  assert(!p.isUsed(near) && !p.isUsed(far) && !p.isUsed(outside));
  assertEquals(p.freeList(), [near]);
  assertEquals(p.allocate(), near);
  // Growth of the bitmap far beyond its first kilobyte keeps earlier marks.
  const big = new AddressPool(instance6Spec());
  for (let i = 0; i < 20_000; i++) big.allocate();
  assertEquals(big.used, 20_000);
  assert(big.isUsed("fdff::") && big.isUsed("fdff::4e1f") && !big.isUsed("fdff::4e20"));
});
