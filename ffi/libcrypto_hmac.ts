/**
 * One-shot HMAC and hash through OpenSSL's libcrypto (`libcrypto.so.3`) by FFI, for the Noise
 * handshake's HKDF and transcript hash (src/secure/noise.ts): a BLAKE2s-256 HMAC is one FFI call
 * (~12 µs here) where `node:crypto`'s `createHmac` builds an object per call (~65 µs) — a handshake
 * side runs 12 of them on its critical path. {@link libcryptoMac} is undefined when the library
 * cannot be loaded (no `libssl3`, no FFI permission): the caller keeps `node:crypto`.
 *
 * @example
 * ```ts
 * import { libcryptoMac } from "./libcrypto_hmac.ts";
 * const mac = libcryptoMac();
 * if (mac) console.log(mac.hmac("blake2s256", new Uint8Array(32), new Uint8Array(3)).length); // 32
 * ```
 * @module
 */

const SYMBOLS = {
  EVP_blake2s256: { parameters: [], result: "pointer" },
  EVP_sha256: { parameters: [], result: "pointer" },
  HMAC: {
    parameters: ["pointer", "buffer", "i32", "buffer", "usize", "buffer", "buffer"],
    result: "pointer",
  },
  EVP_Digest: { parameters: ["buffer", "usize", "buffer", "buffer", "pointer", "pointer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The digests bound here (their output is 32 bytes). */
export type MacDigest = "blake2s256" | "sha256";

/** A libcrypto HMAC or digest call failed (a programming error, not bad input). */
export class LibcryptoMacError extends Error {
  /** Creates the error with `message`. */
  constructor(message: string) {
    super(message);
    this.name = "LibcryptoMacError";
  }
}

/** HMAC and hash with a 32-byte output, by libcrypto (see the module). */
export interface LibcryptoMac {
  /** HMAC-`digest`(`key`, `data`): a fresh 32-byte array. */
  hmac(digest: MacDigest, key: Uint8Array, data: Uint8Array): Uint8Array;
  /** `digest`(`data`): a fresh 32-byte array. */
  hash(digest: MacDigest, data: Uint8Array): Uint8Array;
}

let loaded: LibcryptoMac | null | undefined;

/** The libcrypto HMAC and hash, loaded once; undefined when libcrypto is not available here. */
export function libcryptoMac(): LibcryptoMac | undefined {
  if (loaded === undefined) {
    try {
      const s = Deno.dlopen("libcrypto.so.3", SYMBOLS).symbols;
      const mds = { blake2s256: s.EVP_blake2s256(), sha256: s.EVP_sha256() };
      if (mds.blake2s256 === null || mds.sha256 === null) throw new LibcryptoMacError("no digest");
      const len = new Uint32Array(1);
      const lenBytes = new Uint8Array(len.buffer);
      // (An empty input: a 1-byte array, length 0 — FFI passes a null pointer for an empty buffer.)
      const one = new Uint8Array(1);
      const nonEmpty = (x: Uint8Array) => (x.length > 0 ? x : one);
      loaded = {
        hmac(digest, key, data) {
          const out = new Uint8Array(32);
          const k = nonEmpty(key), d = nonEmpty(data);
          if (
            s.HMAC(mds[digest], k, key.length, d, BigInt(data.length), out, lenBytes) === null ||
            len[0] !== 32
          ) {
            throw new LibcryptoMacError(`HMAC(${digest}) failed`);
          }
          return out;
        },
        hash(digest, data) {
          const out = new Uint8Array(32);
          if (
            s.EVP_Digest(nonEmpty(data), BigInt(data.length), out, lenBytes, mds[digest], null) !== 1 ||
            len[0] !== 32
          ) {
            throw new LibcryptoMacError(`EVP_Digest(${digest}) failed`);
          }
          return out;
        },
      };
    } catch {
      loaded = null;
    }
  }
  return loaded ?? undefined;
}
