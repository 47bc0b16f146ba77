import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { IpsecMbAead, ipsecMbAvailable, IpsecMbError } from "../../ffi/ipsec_mb.ts";
import { EvpAead } from "../../ffi/libcrypto.ts";

// CI installs libipsec-mb1 on x86_64 (scripts/bootstrap.sh); the build machine's CPU has VAES.
const ignore = !ipsecMbAvailable();

Deno.test({
  name: "ipsec-mb: AES-256-GCM equals libcrypto's bytes (whole and in pieces), opens both, refuses tampering",
  ignore,
  fn() {
    const key = crypto.getRandomValues(new Uint8Array(32));
    const mb = new IpsecMbAead(key, true), mbOpen = new IpsecMbAead(key, false);
    const evp = new EvpAead("aes-256-gcm", key, true), evpOpen = new EvpAead("aes-256-gcm", key, false);
    try {
      for (const size of [0, 1, 15, 16, 17, 255, 1426, 4097, 65519]) {
        const plain = crypto.getRandomValues(new Uint8Array(size));
        const nonce = crypto.getRandomValues(new Uint8Array(12));
        const mem = new Uint8Array(24 + size + 16);
        mem.set(crypto.getRandomValues(new Uint8Array(24)));
        mem.set(plain, 24);
        const ref = mem.slice();
        mb.sealAdTo(nonce, mem, 0, 24, mem, 24, size, mem, 24);
        evp.sealAdTo(nonce, ref, 0, 24, ref, 24, size, ref, 24);
        assertEquals(mem.join(), ref.join(), `${size} bytes sealed differently`);
        // Sealed in pieces (a JUMBO message's parts) gives the same bytes as in one call.
        const parts = mem.slice(0, 24);
        const pieces = new Uint8Array(24 + size + 16);
        pieces.set(parts);
        pieces.set(plain, 24);
        mb.begin(nonce, pieces, 0, 24);
        for (let at = 0; at < size; at += 1000) {
          mb.update(pieces, 24 + at, Math.min(1000, size - at), pieces, 24 + at);
        }
        mb.finishSeal(pieces, 24 + size);
        assertEquals(pieces.join(), ref.join(), `${size} bytes sealed in pieces differently`);
        // Each library opens what the other sealed; pieces open too.
        const a = ref.slice(), b = mem.slice(), c = mem.slice();
        assert(mbOpen.openAd(nonce, a, 0, 24, a, 24, size));
        assert(evpOpen.openAd(nonce, b, 0, 24, b, 24, size));
        assertEquals(a.subarray(24, 24 + size).join(), plain.join());
        assertEquals(b.subarray(24, 24 + size).join(), plain.join());
        mbOpen.begin(nonce, c, 0, 24);
        for (let at = 0; at < size; at += 1426) {
          mbOpen.update(c, 24 + at, Math.min(1426, size - at), c, 24 + at);
        }
        assert(mbOpen.finishOpen(c, 24 + size));
        assertEquals(c.subarray(24, 24 + size).join(), plain.join());
        for (const at of [0, 23, 24, 24 + size - 1, 24 + size, 24 + size + 15]) {
          const bad = mem.slice();
          bad[at] ^= 0x40;
          assert(
            !mbOpen.openAd(nonce, bad, 0, 24, bad, 24, size),
            `${size} bytes: flipped byte ${at} accepted`,
          );
        }
        const otherNonce = nonce.slice();
        otherNonce[11] ^= 1;
        assert(!mbOpen.openAd(otherNonce, mem.slice(), 0, 24, mem.slice(), 24, size));
        // Still opens after refusals.
        const again = mem.slice();
        assert(mbOpen.openAd(nonce, again, 0, 24, again, 24, size));
      }
    } finally {
      mb.close();
      mbOpen.close();
      evp.close();
      evpOpen.close();
    }
  },
});

Deno.test({
  name: "ipsec-mb: bad arguments throw before the library runs; a closed context refuses",
  ignore,
  fn() {
    const key = new Uint8Array(32);
    assertThrows(() => new IpsecMbAead(new Uint8Array(16), true), IpsecMbError, "32 bytes");
    const seal = new IpsecMbAead(key, true);
    const buf = new Uint8Array(64);
    assertThrows(() => seal.sealAdTo(new Uint8Array(12), buf, 0, 16, buf, 16, 40, buf, 16), Error, "outside");
    assertThrows(
      () => seal.sealAdTo(new Uint8Array(8), buf, 0, 16, buf, 16, 8, buf, 16),
      IpsecMbError,
      "nonce",
    );
    assertThrows(() => seal.openAd(new Uint8Array(12), buf, 0, 16, buf, 16, 8), IpsecMbError, "cannot open");
    seal.close();
    assertThrows(
      () => seal.sealAdTo(new Uint8Array(12), buf, 0, 16, buf, 16, 8, buf, 16),
      IpsecMbError,
      "closed",
    );
  },
});

Deno.test("aead: NETMANAGER_AEAD picks the library in a fresh isolate; a bad value is refused by name", async () => {
  const src = new URL("../../src/secure/aead.ts", import.meta.url).href;
  const run = async (value: string) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", `import { aeadBackend } from "${src}"; console.log(aeadBackend());`],
      env: { NETMANAGER_AEAD: value },
      stdout: "piped",
      stderr: "piped",
    }).output();
    return {
      code: out.code,
      text: new TextDecoder().decode(out.stdout).trim() + new TextDecoder().decode(out.stderr),
    };
  };
  assertEquals((await run("libcrypto")).text, "libcrypto");
  assertEquals((await run("auto")).text, ignore ? "libcrypto" : "ipsec-mb");
  const bad = await run("aes-ni");
  assert(bad.code !== 0 && bad.text.includes("NETMANAGER_AEAD must be"), bad.text);
});
