/**
 * viewAt (ffi/libcrypto.ts): the views the AEAD bindings pass to the libraries start exactly at the
 * asked offset of the asked memory — also when two memories or two offsets share a slot of its
 * direct-mapped front cache — and a range outside the buffer throws.
 */
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { viewAt } from "../../ffi/libcrypto.ts";

Deno.test("viewAt: the view of the asked memory at the asked offset, through the front cache's collisions", () => {
  const a = new Uint8Array(1 << 18).map((_, i) => i & 0xff);
  const b = new Uint8Array(1 << 18).map((_, i) => (i * 7 + 1) & 0xff);
  // 0 and 0x10100 land in the same front slot ((x ^ x>>>8 ^ x>>>16) & 255); so do equal offsets of a and b.
  const offsets = [0, 0x10100, 17, 65536, 65536 + 17, 1442 * 3];
  for (let round = 0; round < 3; round++) {
    for (const off of offsets) {
      for (const [mem, name] of [[a, "a"], [b, "b"]] as const) {
        const v = viewAt(mem, off, 16);
        assert(v.buffer === mem.buffer, `${name}@${off}: another memory`);
        assertEquals(v.byteOffset, mem.byteOffset + off, `${name}@${off}`);
        assertEquals(v[0], mem[off]);
      }
    }
  }
  // A view into a sub-view counts from the memory's start, not the sub-view's.
  const sub = a.subarray(100);
  const v = viewAt(sub, 17, 4);
  assertEquals(v.byteOffset, 117);
  assertEquals(v[0], a[117]);
  assertThrows(() => viewAt(a, a.length - 3, 4));
  assertThrows(() => viewAt(a, -1, 1));
});
