/**
 * AES-256-GCM through Intel's Multi-Buffer Crypto for IPsec library (`libIPSec_MB.so.1`, Debian
 * package `libipsec-mb1`, x86_64) by FFI: its VAES + VPCLMULQDQ + AVX-512 code, which Debian 12's
 * OpenSSL 3.0 lacks. The bytes are the same AES-256-GCM as {@link EvpAead}'s (the peers need not
 * know which library a node uses); on this project's build machine (AMD EPYC, quiet) a 64 KB
 * message takes 3.7–5.3 µs here against 14–15 µs in libcrypto.
 *
 * The class has {@link EvpAead}'s methods, so the secure layer takes either (src/secure/aead.ts
 * chooses). The expanded key and the running message state live in memory this object owns (one
 * aligned `ArrayBuffer`, wiped on {@link IpsecMbAead.close}).
 *
 * @example
 * ```ts
 * import { IpsecMbAead, ipsecMbAvailable } from "./ipsec_mb.ts";
 * if (ipsecMbAvailable()) {
 *   const key = new Uint8Array(32), nonce = new Uint8Array(12), ad = new Uint8Array(16);
 *   const seal = new IpsecMbAead(key, true), open = new IpsecMbAead(key, false);
 *   const buf = new Uint8Array(100 + 16);
 *   seal.sealAdTo(nonce, ad, 0, 16, buf, 0, 100, buf, 0); // tag at buf[100..116)
 *   console.log(open.openAd(nonce, ad, 0, 16, buf, 0, 100)); // true
 *   seal.close();
 *   open.close();
 * }
 * ```
 * @module
 */

import { type EvpAead, viewAt } from "./libcrypto.ts";

const SUFFIX = "vaes_avx512";
const SYMBOLS = {
  pre: { name: `aes_gcm_pre_256_${SUFFIX}`, parameters: ["buffer", "buffer"], result: "void" },
  init: {
    name: `aes_gcm_init_256_${SUFFIX}`,
    parameters: ["buffer", "buffer", "buffer", "buffer", "u64"],
    result: "void",
  },
  encUpdate: {
    name: `aes_gcm_enc_256_update_${SUFFIX}`,
    parameters: ["buffer", "buffer", "buffer", "buffer", "u64"],
    result: "void",
  },
  encFinal: {
    name: `aes_gcm_enc_256_finalize_${SUFFIX}`,
    parameters: ["buffer", "buffer", "buffer", "u64"],
    result: "void",
  },
  decUpdate: {
    name: `aes_gcm_dec_256_update_${SUFFIX}`,
    parameters: ["buffer", "buffer", "buffer", "buffer", "u64"],
    result: "void",
  },
  decFinal: {
    name: `aes_gcm_dec_256_finalize_${SUFFIX}`,
    parameters: ["buffer", "buffer", "buffer", "u64"],
    result: "void",
  },
  enc: {
    name: `aes_gcm_enc_256_${SUFFIX}`,
    parameters: ["buffer", "buffer", "buffer", "buffer", "u64", "buffer", "buffer", "u64", "buffer", "u64"],
    result: "void",
  },
  dec: {
    name: `aes_gcm_dec_256_${SUFFIX}`,
    parameters: ["buffer", "buffer", "buffer", "buffer", "u64", "buffer", "buffer", "u64", "buffer", "u64"],
    result: "void",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** `sizeof(struct gcm_key_data)` in ipsec-mb 1.x (expanded keys + 48 hash-key powers), 64-byte aligned. */
const KEY_DATA_LEN = 1008;
/** `sizeof(struct gcm_context_data)`. */
const CTX_LEN = 88;
const TAG_LEN = 16;
/** The tag length as the library's `uint64_t` argument (bigint keeps V8's fast call path). */
const TAG_LEN_ARG = 16n;
/** The associated data the secure layer passes (its 16-byte header), as the `u64` argument (no BigInt per call). */
const AD_LEN_16 = 16n;
/** CPU features the VAES AVX-512 code needs (/proc/cpuinfo flag names). */
const CPU_FLAGS = ["avx512f", "avx512bw", "avx512vl", "vaes", "vpclmulqdq"];

/** The library is missing, the CPU lacks the features or the known-answer test failed. */
export class IpsecMbError extends Error {
  /** Creates the error with `message`. */
  constructor(message: string) {
    super(message);
    this.name = "IpsecMbError";
  }
}

let sym: Deno.DynamicLibrary<typeof SYMBOLS>["symbols"] | undefined;
let unavailable: string | undefined;

function symbols(): Deno.DynamicLibrary<typeof SYMBOLS>["symbols"] {
  if (sym !== undefined) return sym;
  if (unavailable !== undefined) throw new IpsecMbError(unavailable);
  const why = probe();
  if (why !== undefined) {
    unavailable = why;
    throw new IpsecMbError(why);
  }
  return sym!;
}

/** Loads the library if the CPU can run its VAES code; undefined when usable, else the reason. */
function probe(): string | undefined {
  if (Deno.build.arch !== "x86_64") return "ipsec-mb: x86_64 only";
  let flags: Set<string>;
  try {
    const info = Deno.readTextFileSync("/proc/cpuinfo");
    flags = new Set((/^flags\s*:(.*)$/m.exec(info)?.[1] ?? "").trim().split(/\s+/));
  } catch (e) {
    return `ipsec-mb: cannot read /proc/cpuinfo (${e instanceof Error ? e.message : e})`;
  }
  const missing = CPU_FLAGS.filter((f) => !flags.has(f));
  if (missing.length > 0) return `ipsec-mb: the CPU lacks ${missing.join(", ")}`;
  try {
    sym = Deno.dlopen("libIPSec_MB.so.1", SYMBOLS).symbols;
  } catch (e) {
    return `ipsec-mb: ${e instanceof Error ? e.message : e}`;
  }
  if (!knownAnswer()) {
    sym = undefined;
    return "ipsec-mb: known-answer test failed";
  }
  return undefined;
}

const hex = (s: string) => Uint8Array.from(s.match(/../g)!, (b) => parseInt(b, 16));

/** The AES-256 GCM test case 16 of McGrew & Viega's GCM specification (key, IV, AAD, 60-byte text). */
function knownAnswer(): boolean {
  const key = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
  const iv = hex("cafebabefacedbaddecaf888");
  const ad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
  const plain = hex(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72" +
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
  );
  const want = hex(
    "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa" +
      "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662" +
      "76fc6ece0f4e1768cddf8853bb2d551b",
  );
  const a = new IpsecMbAead(key, true);
  const b = new IpsecMbAead(key, false);
  try {
    const buf = new Uint8Array(plain.length + TAG_LEN);
    buf.set(plain);
    a.sealAdTo(iv, ad, 0, ad.length, buf, 0, plain.length, buf, 0);
    if (buf.join() !== want.join()) return false;
    return b.openAd(iv, ad, 0, ad.length, buf, 0, plain.length) &&
      buf.subarray(0, plain.length).join() === plain.join();
  } finally {
    a.close();
    b.close();
  }
}

/**
 * Whether AES-256-GCM runs through ipsec-mb here (library present, CPU with VAES + AVX-512, the
 * known-answer test passed); {@link ipsecMbUnavailable} says why not.
 */
export function ipsecMbAvailable(): boolean {
  try {
    symbols();
    return true;
  } catch (e) {
    if (e instanceof IpsecMbError) return false;
    throw e;
  }
}

/** Why {@link ipsecMbAvailable} is false (undefined when it is true or was not asked yet). */
export function ipsecMbUnavailable(): string | undefined {
  return unavailable;
}

// Tags go through the context's own 16 bytes (copied in JS): a view at each message's tag offset
// (it moves with the message's length) would be a new view per message in viewAt's cache.

/** Throws unless `buf[off, +16)` is inside `buf` (as viewAt would for a view there). */
function checkTagRange(buf: Uint8Array, off: number): void {
  if (!(off >= 0 && off + TAG_LEN <= buf.length)) {
    throw new IpsecMbError(`tag range [${off}, +${TAG_LEN}) outside a ${buf.length}-byte buffer`);
  }
}

/** Copies the 16-byte `tag` to `dst[off ..]` (range checked). */
function putTag(tag: Uint8Array, dst: Uint8Array, off: number): void {
  checkTagRange(dst, off);
  for (let i = 0; i < TAG_LEN; i++) dst[off + i] = tag[i];
}

/** Compares two 16-byte tags without an early exit. */
function tagsEqual(a: Uint8Array, b: Uint8Array, bOff: number): boolean {
  let diff = 0;
  for (let i = 0; i < TAG_LEN; i++) diff |= a[i] ^ b[bOff + i];
  return diff === 0;
}

/**
 * One direction's AES-256-GCM with its key expanded (see the module); the same methods, arguments
 * and in-place rules as {@link EvpAead}. Views into caller buffers come from
 * libcrypto.ts's `viewAt` (made once per memory and offset, every range checked).
 */
export class IpsecMbAead
  implements
    Pick<EvpAead, "sealAdTo" | "openAd" | "begin" | "update" | "finishSeal" | "finishOpen" | "close"> {
  /** Owns the expanded key and the message state (kept referenced: the library holds no copy). */
  readonly #mem: ArrayBuffer;
  readonly #keyData: Uint8Array;
  readonly #ctx: Uint8Array;
  readonly #tag = new Uint8Array(TAG_LEN);
  readonly #encrypt: boolean;
  #closed = false;

  /** A context with the 32-byte `key`, sealing when `encrypt`, else opening. */
  constructor(key: Uint8Array, encrypt: boolean) {
    if (key.length !== 32) throw new IpsecMbError("key must be 32 bytes");
    const s = sym ?? symbols();
    this.#mem = new ArrayBuffer(KEY_DATA_LEN + CTX_LEN + 64);
    const base = Deno.UnsafePointer.value(Deno.UnsafePointer.of(new Uint8Array(this.#mem)));
    const pad = (64 - Number(BigInt(base) % 64n)) % 64;
    this.#keyData = new Uint8Array(this.#mem, pad, KEY_DATA_LEN);
    this.#ctx = new Uint8Array(this.#mem, pad + KEY_DATA_LEN, CTX_LEN);
    this.#encrypt = encrypt;
    s.pre(key, this.#keyData);
  }

  /** Encrypts `src[srcOff, +len)` into `dst[dstOff, +len)` and writes the tag after it; AD `adBuf[adOff, +adLen)`. */
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
    this.#usable(true);
    if (nonce.length !== 12) throw new IpsecMbError("nonce must be 12 bytes");
    const out = viewAt(dst, dstOff, len + TAG_LEN);
    sym!.enc(
      this.#keyData,
      this.#ctx,
      out,
      src === dst && srcOff === dstOff ? out : viewAt(src, srcOff, len), // (in place: one view)
      BigInt(len),
      nonce,
      viewAt(adBuf, adOff, adLen),
      adLen === 16 ? AD_LEN_16 : BigInt(adLen),
      this.#tag,
      TAG_LEN_ARG,
    );
    putTag(this.#tag, dst, dstOff + len);
  }

  /** Checks the tag at `buf[off+len, +16)` and decrypts `buf[off, +len)` in place; false when it does not verify. */
  openAd(
    nonce: Uint8Array,
    adBuf: Uint8Array,
    adOff: number,
    adLen: number,
    buf: Uint8Array,
    off: number,
    len: number,
  ): boolean {
    this.#usable(false);
    if (nonce.length !== 12) throw new IpsecMbError("nonce must be 12 bytes");
    const body = viewAt(buf, off, len + TAG_LEN);
    sym!.dec(
      this.#keyData,
      this.#ctx,
      body,
      body,
      BigInt(len),
      nonce,
      viewAt(adBuf, adOff, adLen),
      adLen === 16 ? AD_LEN_16 : BigInt(adLen),
      this.#tag,
      TAG_LEN_ARG,
    );
    return tagsEqual(this.#tag, buf, off + len);
  }

  /** Starts a message sealed or opened in pieces: the nonce and the associated data `ad[adOff, +adLen)`. */
  begin(nonce: Uint8Array, ad: Uint8Array, adOff: number, adLen: number): void {
    this.#usable(this.#encrypt);
    if (nonce.length !== 12) throw new IpsecMbError("nonce must be 12 bytes");
    sym!.init(
      this.#keyData,
      this.#ctx,
      nonce,
      viewAt(ad, adOff, adLen),
      adLen === 16 ? AD_LEN_16 : BigInt(adLen),
    );
  }

  /** The next piece `src[srcOff, +len)` into `dst[dstOff ..]` (the same place or not overlapping). */
  update(src: Uint8Array, srcOff: number, len: number, dst: Uint8Array, dstOff: number): void {
    this.#usable(this.#encrypt);
    const input = viewAt(src, srcOff, len);
    const out = src === dst && srcOff === dstOff ? input : viewAt(dst, dstOff, len);
    if (this.#encrypt) sym!.encUpdate(this.#keyData, this.#ctx, out, input, BigInt(len));
    else sym!.decUpdate(this.#keyData, this.#ctx, out, input, BigInt(len));
  }

  /** Ends a sealed message: writes the tag at `dst[tagOff, +16)`. */
  finishSeal(dst: Uint8Array, tagOff: number): void {
    this.#usable(true);
    checkTagRange(dst, tagOff);
    sym!.encFinal(this.#keyData, this.#ctx, this.#tag, TAG_LEN_ARG);
    putTag(this.#tag, dst, tagOff);
  }

  /** Ends an opened message: true when the tag at `buf[tagOff, +16)` verifies everything since {@link begin}. */
  finishOpen(buf: Uint8Array, tagOff: number): boolean {
    this.#usable(false);
    checkTagRange(buf, tagOff);
    sym!.decFinal(this.#keyData, this.#ctx, this.#tag, TAG_LEN_ARG);
    return tagsEqual(this.#tag, buf, tagOff);
  }

  /** Wipes the expanded key and the message state. */
  close(): void {
    new Uint8Array(this.#mem).fill(0);
    this.#closed = true;
  }

  #usable(encrypt: boolean): void {
    if (this.#closed) throw new IpsecMbError("context closed");
    if (encrypt !== this.#encrypt) {
      throw new IpsecMbError(encrypt ? "an opening context cannot seal" : "a sealing context cannot open");
    }
  }
}
