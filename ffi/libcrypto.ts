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
let sym: Deno.DynamicLibrary<typeof SYMBOLS>["symbols"] | undefined;
function crypto(): Deno.DynamicLibrary<typeof SYMBOLS>["symbols"] {
  if (sym === undefined) {
    lib ??= Deno.dlopen("libcrypto.so.3", SYMBOLS);
    sym = lib.symbols;
  }
  return sym;
}

/** Memories (`ArrayBuffer`s) and views per memory {@link viewAt} keeps at most (then it starts over). */
const MAX_MEMORIES = 16;
const MAX_VIEWS = 4096;
const memViews = new Map<ArrayBufferLike, Map<number, Uint8Array>>();
let lastMem: ArrayBufferLike | undefined;
let lastViews: Map<number, Uint8Array> | undefined;
/**
 * A direct-mapped cache in front of the maps (slot by the absolute offset's bits, checked by memory
 * and offset): the few offsets a data path repeats per message are found without a map lookup. It
 * holds at most {@link FRONT} views (and so their memories) beyond the maps' bounds.
 */
const FRONT = 256;
const frontMem: (ArrayBufferLike | undefined)[] = new Array<ArrayBufferLike | undefined>(FRONT).fill(
  undefined,
);
const frontAbs = new Float64Array(FRONT).fill(-1);
const frontView: (Uint8Array | undefined)[] = new Array<Uint8Array | undefined>(FRONT).fill(undefined);

/**
 * `buf` from `off` on, as a view made once and reused: an FFI `buffer` argument passes only its
 * start address, and a fresh `subarray` per call (2–3 per datagram) cost about as much as the call
 * itself. Views are keyed by the memory and the absolute offset (a batch's slots are views of one
 * memory, and a batch layout repeats few offsets) and shared by every context of the isolate, so
 * their number stays bounded however many sessions there are. Throws when `[off, off+len)` is not
 * inside `buf` (a programming error; libcrypto would read or write past it).
 */
export function viewAt(buf: Uint8Array, off: number, len: number): Uint8Array {
  if (!(off >= 0 && len >= 0 && off + len <= buf.length)) {
    throw new LibcryptoError(`range [${off}, +${len}) outside a ${buf.length}-byte buffer`);
  }
  const mem = buf.buffer;
  const abs = buf.byteOffset + off;
  const h = (abs ^ (abs >>> 8) ^ (abs >>> 16)) & (FRONT - 1);
  if (frontAbs[h] === abs && frontMem[h] === mem) return frontView[h]!;
  let views = mem === lastMem ? lastViews : undefined;
  if (views === undefined) {
    views = memViews.get(mem);
    if (views === undefined) {
      if (memViews.size >= MAX_MEMORIES) memViews.clear();
      views = new Map();
      memViews.set(mem, views);
    }
    lastMem = mem;
    lastViews = views;
  }
  let v = views.get(abs);
  if (v === undefined) {
    if (views.size >= MAX_VIEWS) views.clear();
    v = new Uint8Array(mem, abs);
    views.set(abs, v);
  }
  frontMem[h] = mem;
  frontAbs[h] = abs;
  frontView[h] = v;
  return v;
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
   * (the ranges may be the same, not otherwise overlapping). `ad` whole is the associated data.
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
    this.sealAdTo(nonce, ad, 0, ad.length, src, srcOff, len, dst, dstOff);
  }

  /**
   * {@link sealTo} with the associated data `adBuf[adOff, +adLen)` (e.g. a header already written
   * in `dst`): no view is made per datagram.
   */
  sealAdTo(
    nonce: Uint8Array,
    adBuf: Uint8Array,
    adOff: number,
    adLen: number,
    src: Uint8Array,
    srcOff: number,
    len: number,
    dst: Uint8Array,
    dstOff: number,
  ): void {
    const c = crypto();
    const ctx = this.ctx;
    const outl = this.outl;
    const input = viewAt(src, srcOff, len);
    const ad = viewAt(adBuf, adOff, adLen);
    const out = viewAt(dst, dstOff, len + EVP_TAG_LEN);
    if (
      c.EVP_CipherInit_ex(ctx, null, null, null, nonce, 1) !== 1 ||
      c.EVP_CipherUpdate(ctx, null, outl, ad, adLen) !== 1 ||
      c.EVP_CipherUpdate(ctx, out, outl, input, len) !== 1 ||
      c.EVP_CipherFinal_ex(ctx, this.#scratch, outl) !== 1 ||
      c.EVP_CIPHER_CTX_ctrl(
          ctx,
          EVP_CTRL_AEAD_GET_TAG,
          EVP_TAG_LEN,
          viewAt(dst, dstOff + len, EVP_TAG_LEN),
        ) !== 1
    ) throw new LibcryptoError("seal failed");
  }

  /**
   * Checks the tag at `buf[off+len, +16)` and decrypts `buf[off, off+len)` in place; false (and the
   * bytes are garbage) when the tag does not verify. `ad` whole is the associated data.
   */
  open(nonce: Uint8Array, ad: Uint8Array, buf: Uint8Array, off: number, len: number): boolean {
    return this.openAd(nonce, ad, 0, ad.length, buf, off, len);
  }

  /** {@link open} with the associated data `adBuf[adOff, +adLen)` (e.g. the header before the body in `buf`). */
  openAd(
    nonce: Uint8Array,
    adBuf: Uint8Array,
    adOff: number,
    adLen: number,
    buf: Uint8Array,
    off: number,
    len: number,
  ): boolean {
    const c = crypto();
    const ctx = this.ctx;
    const outl = this.outl;
    const body = viewAt(buf, off, len + EVP_TAG_LEN);
    const tag = viewAt(buf, off + len, EVP_TAG_LEN);
    const ad = viewAt(adBuf, adOff, adLen);
    if (
      c.EVP_CipherInit_ex(ctx, null, null, null, nonce, 0) !== 1 ||
      c.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, EVP_TAG_LEN, tag) !== 1 ||
      c.EVP_CipherUpdate(ctx, null, outl, ad, adLen) !== 1 ||
      c.EVP_CipherUpdate(ctx, body, outl, body, len) !== 1
    ) return false;
    return c.EVP_CipherFinal_ex(ctx, this.#scratch, outl) === 1;
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
      c.EVP_CipherUpdate(ctx, null, this.outl, viewAt(ad, adOff, adLen), adLen) !== 1
    ) throw new LibcryptoError("AEAD begin failed");
  }

  /**
   * Encrypts (or decrypts) the next piece `src[srcOff, srcOff+len)` into `dst[dstOff ..]` (the same
   * place or not overlapping). Opened bytes are unauthenticated until {@link finishOpen} returns true.
   */
  update(src: Uint8Array, srcOff: number, len: number, dst: Uint8Array, dstOff: number): void {
    const input = viewAt(src, srcOff, len);
    const out = src === dst && srcOff === dstOff ? input : viewAt(dst, dstOff, len);
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
          viewAt(dst, tagOff, EVP_TAG_LEN),
        ) !==
        1
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
        viewAt(buf, tagOff, EVP_TAG_LEN),
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
