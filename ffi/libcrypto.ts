/**
 * AEAD through OpenSSL's libcrypto (`libcrypto.so.3`, Debian package `libssl3`/`libssl3t64`) by FFI,
 * for the tunnel's per-datagram encryption: one `EVP_CIPHER_CTX` per direction keeps the key
 * schedule; each datagram only sets its nonce, so a seal or open is 5 FFI calls and no allocation
 * (node:crypto's `createCipheriv` builds a context, a KeyObject and Buffers per datagram).
 * In-place: the plaintext buffer becomes the ciphertext and the tag goes after it.
 *
 * @example
 * ```ts
 * import { EvpAead } from "./libcrypto.ts";
 * const key = new Uint8Array(32), nonce = new Uint8Array(12), ad = new Uint8Array(16);
 * const seal = new EvpAead("chacha20-poly1305", key, true);
 * const open = new EvpAead("chacha20-poly1305", key, false);
 * const buf = new Uint8Array(100 + 16);
 * seal.seal(nonce, ad, buf, 0, 100); // buf[0..100) encrypted, tag at buf[100..116)
 * console.log(open.open(nonce, ad, buf, 0, 100)); // true
 * seal.close();
 * open.close();
 * ```
 * @module
 */

const SYMBOLS = {
  EVP_CIPHER_CTX_new: { parameters: [], result: "pointer" },
  EVP_CIPHER_CTX_free: { parameters: ["pointer"], result: "void" },
  EVP_chacha20_poly1305: { parameters: [], result: "pointer" },
  EVP_aes_256_gcm: { parameters: [], result: "pointer" },
  EVP_CipherInit_ex: {
    parameters: ["pointer", "pointer", "pointer", "buffer", "buffer", "i32"],
    result: "i32",
  },
  EVP_CipherUpdate: { parameters: ["pointer", "buffer", "buffer", "buffer", "i32"], result: "i32" },
  EVP_CipherFinal_ex: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  EVP_CIPHER_CTX_ctrl: { parameters: ["pointer", "i32", "i32", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

const EVP_CTRL_AEAD_GET_TAG = 0x10;
const EVP_CTRL_AEAD_SET_TAG = 0x11;
/** Bytes of the AEAD tag. */
export const EVP_TAG_LEN = 16;

let lib: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;
function crypto(): Deno.DynamicLibrary<typeof SYMBOLS>["symbols"] {
  lib ??= Deno.dlopen("libcrypto.so.3", SYMBOLS);
  return lib.symbols;
}

/** A libcrypto call failed (a programming error or a missing library, not a bad datagram). */
export class LibcryptoError extends Error {
  /** Creates the error with `message`. */
  constructor(message: string) {
    super(message);
    this.name = "LibcryptoError";
  }
}

/** The AEADs bound here. */
export type EvpAeadName = "chacha20-poly1305" | "aes-256-gcm";

/** One direction's AEAD context with its key set (see the module). */
export class EvpAead {
  private ctx: Deno.PointerValue;
  private readonly outl = new Int32Array(1);
  /** Output of the final call (GCM writes nothing there). */
  readonly #scratch = new Uint8Array(16);

  /** A context for `name` with the 32-byte `key`, sealing when `encrypt`, else opening. */
  constructor(name: EvpAeadName, key: Uint8Array, encrypt: boolean) {
    if (key.length !== 32) throw new LibcryptoError("key must be 32 bytes");
    const c = crypto();
    this.ctx = c.EVP_CIPHER_CTX_new();
    if (this.ctx === null) throw new LibcryptoError("EVP_CIPHER_CTX_new failed");
    const cipher = name === "chacha20-poly1305" ? c.EVP_chacha20_poly1305() : c.EVP_aes_256_gcm();
    if (c.EVP_CipherInit_ex(this.ctx, cipher, null, key, null, encrypt ? 1 : 0) !== 1) {
      this.close();
      throw new LibcryptoError(`EVP_CipherInit_ex(${name}) failed`);
    }
  }

  /** Encrypts `buf[off, off+len)` in place and writes the tag at `buf[off+len, +16)`. */
  seal(nonce: Uint8Array, ad: Uint8Array, buf: Uint8Array, off: number, len: number): void {
    this.sealTo(nonce, ad, buf, off, len, buf, off);
  }

  /**
   * Encrypts `src[srcOff, srcOff+len)` into `dst[dstOff, dstOff+len)` and writes the tag after it
   * (the ranges may be the same, not otherwise overlapping).
   */
  sealTo(
    nonce: Uint8Array,
    ad: Uint8Array,
    src: Uint8Array,
    srcOff: number,
    len: number,
    dst: Uint8Array,
    dstOff: number,
  ): void {
    const c = crypto();
    const ctx = this.ctx;
    const input = src.subarray(srcOff, srcOff + len);
    const out = dst.subarray(dstOff, dstOff + len + EVP_TAG_LEN);
    if (
      c.EVP_CipherInit_ex(ctx, null, null, null, nonce, 1) !== 1 ||
      c.EVP_CipherUpdate(ctx, null, this.outl, ad, ad.length) !== 1 ||
      c.EVP_CipherUpdate(ctx, out, this.outl, input, len) !== 1 ||
      c.EVP_CipherFinal_ex(ctx, out, this.outl) !== 1 ||
      c.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, EVP_TAG_LEN, out.subarray(len)) !== 1
    ) throw new LibcryptoError("seal failed");
  }

  /**
   * Checks the tag at `buf[off+len, +16)` and decrypts `buf[off, off+len)` in place; false (and the
   * bytes are garbage) when the tag does not verify.
   */
  open(nonce: Uint8Array, ad: Uint8Array, buf: Uint8Array, off: number, len: number): boolean {
    const c = crypto();
    const ctx = this.ctx;
    const body = buf.subarray(off, off + len);
    if (
      c.EVP_CipherInit_ex(ctx, null, null, null, nonce, 0) !== 1 ||
      c.EVP_CIPHER_CTX_ctrl(
          ctx,
          EVP_CTRL_AEAD_SET_TAG,
          EVP_TAG_LEN,
          buf.subarray(off + len, off + len + 16),
        ) !==
        1 ||
      c.EVP_CipherUpdate(ctx, null, this.outl, ad, ad.length) !== 1 ||
      c.EVP_CipherUpdate(ctx, body, this.outl, body, len) !== 1
    ) return false;
    return c.EVP_CipherFinal_ex(ctx, body, this.outl) === 1;
  }

  /**
   * Starts a message sealed or opened in pieces (one AEAD over many datagrams, e.g. a JUMBO
   * message): sets the nonce and the associated data. Then {@link update} per piece, in order, and
   * {@link finishSeal} or {@link finishOpen}.
   */
  begin(nonce: Uint8Array, ad: Uint8Array, adOff: number, adLen: number): void {
    const c = crypto();
    const ctx = this.ctx;
    if (
      c.EVP_CipherInit_ex(ctx, null, null, null, nonce, -1) !== 1 ||
      c.EVP_CipherUpdate(ctx, null, this.outl, ad.subarray(adOff, adOff + adLen), adLen) !== 1
    ) throw new LibcryptoError("AEAD begin failed");
  }

  /**
   * Encrypts (or decrypts) the next piece `src[srcOff, srcOff+len)` into `dst[dstOff ..]` (the same
   * place or not overlapping). Opened bytes are unauthenticated until {@link finishOpen} returns true.
   */
  update(src: Uint8Array, srcOff: number, len: number, dst: Uint8Array, dstOff: number): void {
    const input = src.subarray(srcOff, srcOff + len);
    const out = src === dst && srcOff === dstOff ? input : dst.subarray(dstOff, dstOff + len);
    if (crypto().EVP_CipherUpdate(this.ctx, out, this.outl, input, len) !== 1) {
      throw new LibcryptoError("AEAD update failed");
    }
  }

  /** Ends a sealed message: writes the tag at `dst[tagOff, +16)`. */
  finishSeal(dst: Uint8Array, tagOff: number): void {
    const c = crypto();
    if (
      c.EVP_CipherFinal_ex(this.ctx, this.#scratch, this.outl) !== 1 ||
      c.EVP_CIPHER_CTX_ctrl(
          this.ctx,
          EVP_CTRL_AEAD_GET_TAG,
          EVP_TAG_LEN,
          dst.subarray(tagOff, tagOff + 16),
        ) !== 1
    ) throw new LibcryptoError("AEAD finish failed");
  }

  /** Ends an opened message: true when the tag at `buf[tagOff, +16)` verifies everything since {@link begin}. */
  finishOpen(buf: Uint8Array, tagOff: number): boolean {
    const c = crypto();
    if (
      c.EVP_CIPHER_CTX_ctrl(
        this.ctx,
        EVP_CTRL_AEAD_SET_TAG,
        EVP_TAG_LEN,
        buf.subarray(tagOff, tagOff + 16),
      ) !== 1
    ) return false;
    return c.EVP_CipherFinal_ex(this.ctx, this.#scratch, this.outl) === 1;
  }

  /** Frees the context (the key schedule is wiped by OpenSSL). */
  close(): void {
    if (this.ctx !== null) crypto().EVP_CIPHER_CTX_free(this.ctx);
    this.ctx = null;
  }
}
