/**
 * libcrypto's one-shot HMAC and hash (ffi/libcrypto_hmac.ts, the Noise handshake's HKDF) give what
 * node:crypto gives, for BLAKE2s-256 and SHA-256, empty and long keys and inputs.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import crypto from "node:crypto";
import { libcryptoMac } from "../../ffi/libcrypto_hmac.ts";

Deno.test("libcrypto hmac/hash: equal to node:crypto (empty, block-sized and longer keys and inputs)", () => {
  const mac = libcryptoMac();
  assert(mac !== undefined, "libcrypto.so.3 loads here (the daemon's AEAD needs it too)");
  for (const digest of ["blake2s256", "sha256"] as const) {
    for (const kl of [0, 1, 32, 64, 65, 200]) {
      for (const dl of [0, 1, 33, 64, 1000]) {
        const key = new Uint8Array(crypto.randomBytes(kl)), data = new Uint8Array(crypto.randomBytes(dl));
        const want = new Uint8Array(crypto.createHmac(digest, key).update(data).digest());
        assertEquals(mac.hmac(digest, key, data), want, `${digest} hmac key ${kl} data ${dl}`);
        // A view into a larger buffer: its own bytes only.
        const big = new Uint8Array(dl + 8);
        big.set(data, 4);
        assertEquals(mac.hmac(digest, key, big.subarray(4, 4 + dl)), want, `${digest} view`);
      }
    }
    for (const dl of [0, 1, 64, 1000]) {
      const data = new Uint8Array(crypto.randomBytes(dl));
      assertEquals(mac.hash(digest, data), new Uint8Array(crypto.createHash(digest).update(data).digest()));
    }
  }
});
