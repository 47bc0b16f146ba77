/**
 * ipsec-mb's pointer arguments (ffi/ipsec_mb.ts `ptrAt`): each points at the asked offset of the
 * asked memory — through the direct-mapped table's collisions and misses — a range outside the view
 * throws before the library runs, and sealing at thousands of offsets gives libcrypto's bytes.
 */
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { IpsecMbAead, ipsecMbAvailable, ptrAt } from "../../ffi/ipsec_mb.ts";
import { EvpAead } from "../../ffi/libcrypto.ts";

const ignore = !ipsecMbAvailable();
const addr = (p: Deno.PointerValue) => BigInt(Deno.UnsafePointer.value(p));

Deno.test({
  name: "ipsec-mb ptrAt: the asked memory and offset, also for equal offsets of two memories; ranges checked",
  ignore,
  fn() {
    const a = new Uint8Array(1 << 17), b = new Uint8Array(1 << 17);
    const baseA = addr(Deno.UnsafePointer.of(a)), baseB = addr(Deno.UnsafePointer.of(b));
    for (let round = 0; round < 2; round++) {
      for (const off of [0, 1, 16, 1442, 65536, 65536 + 1442, (1 << 17) - 16]) {
        assertEquals(addr(ptrAt(a, off, 16)), baseA + BigInt(off), `a@${off}`);
        assertEquals(addr(ptrAt(b, off, 16)), baseB + BigInt(off), `b@${off}`);
      }
    }
    const sub = a.subarray(100);
    assertEquals(addr(ptrAt(sub, 17, 4)), baseA + 117n, "a view's offset counts from its own start");
    assertThrows(() => ptrAt(a, a.length - 3, 4));
    assertThrows(() => ptrAt(a, -1, 1));
    assertThrows(() => ptrAt(a, 0.5, 1));
  },
});

Deno.test({
  name: "ipsec-mb ptrAt: sealing in place at 6000 offsets of one arena equals libcrypto's bytes at each",
  ignore,
  fn() {
    const key = crypto.getRandomValues(new Uint8Array(32));
    const mb = new IpsecMbAead(key, true), mbOpen = new IpsecMbAead(key, false);
    const evp = new EvpAead("aes-256-gcm", key, true);
    const arena = new Uint8Array(6000 * 61 + 4096);
    const ref = new Uint8Array(200);
    const nonce = new Uint8Array(12);
    try {
      for (let k = 0; k < 6000; k++) {
        const off = k * 61, len = 16 + (k % 100);
        const plain = crypto.getRandomValues(new Uint8Array(16 + len));
        arena.set(plain, off);
        ref.set(plain);
        nonce[0] = k & 0xff;
        nonce[1] = k >>> 8;
        mb.sealAdTo(nonce, arena, off, 16, arena, off + 16, len, arena, off + 16);
        evp.sealAdTo(nonce, ref, 0, 16, ref, 16, len, ref, 16);
        assertEquals(
          arena.subarray(off, off + 32 + len).join(),
          ref.subarray(0, 32 + len).join(),
          `offset ${off}`,
        );
        assert(mbOpen.openAd(nonce, arena, off, 16, arena, off + 16, len), `opens at ${off}`);
        assertEquals(arena.subarray(off + 16, off + 16 + len).join(), plain.subarray(16).join());
      }
    } finally {
      mb.close();
      mbOpen.close();
      evp.close();
    }
  },
});
