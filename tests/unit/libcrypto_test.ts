import { assert, assertEquals } from "../helpers/assert.ts";
import { EvpAead } from "../../ffi/libcrypto.ts";
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
