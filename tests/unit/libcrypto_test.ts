import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { EvpAead, LibcryptoError } from "../../ffi/libcrypto.ts";
import { aeadDecrypt, aeadEncrypt, type NoiseCipher, noiseNonce } from "../../src/secure/noise.ts";

const PAIRS: [NoiseCipher, "chacha20-poly1305" | "aes-256-gcm"][] = [
  ["ChaChaPoly", "chacha20-poly1305"],
  ["AESGCM", "aes-256-gcm"],
];

for (const [noise, evp] of PAIRS) {
  Deno.test(`libcrypto: ${evp} by FFI (context reused) matches node:crypto, in place, and refuses tampering`, () => {
    const key = crypto.getRandomValues(new Uint8Array(32));
    const seal = new EvpAead(evp, key, true);
    const open = new EvpAead(evp, key, false);
    try {
      for (const [i, size] of [1, 1400, 65519].entries()) {
        const plain = crypto.getRandomValues(new Uint8Array(size));
        const ad = crypto.getRandomValues(new Uint8Array(16));
        const n = BigInt(i * 1000 + 3);
        const nonce = noiseNonce(noise, n);
        const buf = new Uint8Array(size + 16);
        buf.set(plain);
        seal.seal(nonce, ad, buf, 0, size);
        assertEquals(buf.join(), aeadEncrypt(key, n, ad, plain, noise).join());
        const copy = buf.slice();
        assert(open.open(nonce, ad, copy, 0, size));
        assertEquals(copy.subarray(0, size).join(), plain.join());
        assertEquals(aeadDecrypt(key, n, ad, buf, noise).join(), plain.join());
        for (const at of [0, size - 1, size, size + 15]) {
          const bad = buf.slice();
          bad[at] ^= 0x80;
          assert(!open.open(nonce, ad, bad, 0, size), `flipped byte ${at} accepted`);
        }
        const wrongAd = ad.slice();
        wrongAd[0] ^= 1;
        assert(!open.open(nonce, wrongAd, buf.slice(), 0, size));
        assert(!open.open(noiseNonce(noise, n + 1n), ad, buf.slice(), 0, size));
        // The context still works after a refusal.
        assert(open.open(nonce, ad, buf.slice(), 0, size));
      }
    } finally {
      seal.close();
      open.close();
    }
  });
}

Deno.test("libcrypto: pieces at many offsets of one memory (a batch's slot views) match separate buffers; out of range throws", () => {
  const key = crypto.getRandomValues(new Uint8Array(32));
  const seal = new EvpAead("aes-256-gcm", key, true);
  const open = new EvpAead("aes-256-gcm", key, false);
  const ref = new EvpAead("aes-256-gcm", key, true);
  try {
    // Two slots of one memory, as a send batch's `bufs[i]` views: the context's reused views are
    // keyed by the memory and the absolute offset, so a slot never gets another slot's bytes.
    const mem = new ArrayBuffer(2 * 4096);
    const slots = [new Uint8Array(mem, 0, 4096), new Uint8Array(mem, 4096, 4096)];
    const ad = crypto.getRandomValues(new Uint8Array(16));
    for (let round = 0; round < 3; round++) {
      for (const [s, slot] of slots.entries()) {
        const sizes = [1426, 700 + s * 13, 1];
        const plain = sizes.map((n) => crypto.getRandomValues(new Uint8Array(n)));
        let at = 0;
        for (const p of plain) {
          slot.set(p, at + 16);
          at += 16 + p.length;
        }
        const nonce = new Uint8Array(12);
        nonce[11] = round * 2 + s;
        seal.begin(nonce, ad, 0, 16);
        at = 0;
        for (const p of plain) {
          seal.update(slot, at + 16, p.length, slot, at + 16);
          at += 16 + p.length;
        }
        seal.finishSeal(slot, at);
        // The same message sealed from separate, fresh buffers.
        const whole = new Uint8Array(sizes.reduce((a, b) => a + b) + 16);
        let w = 0;
        for (const p of plain) {
          whole.set(p, w);
          w += p.length;
        }
        ref.begin(nonce, ad, 0, 16);
        ref.update(whole, 0, w, whole, 0);
        ref.finishSeal(whole, w);
        at = 0;
        w = 0;
        for (const p of plain) {
          assertEquals(
            slot.subarray(at + 16, at + 16 + p.length).join(),
            whole.subarray(w, w + p.length).join(),
          );
          at += 16 + p.length;
          w += p.length;
        }
        assertEquals(slot.subarray(at, at + 16).join(), whole.subarray(w, w + 16).join());
        assert(open.open(nonce, ad, whole, 0, w));
        assertEquals(whole.subarray(0, plain[0].length).join(), plain[0].join());
      }
    }
    // A range past the buffer's end is a programming error, refused before libcrypto reads it.
    const small = new Uint8Array(100);
    assertThrows(() => seal.seal(new Uint8Array(12), ad, small, 0, 90), LibcryptoError);
    assertThrows(() => seal.update(small, 50, 60, small, 50), LibcryptoError);
    assertThrows(() => open.open(new Uint8Array(12), ad, small, -1, 10), LibcryptoError);
  } finally {
    seal.close();
    open.close();
    ref.close();
  }
});
