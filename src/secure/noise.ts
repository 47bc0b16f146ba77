/**
 * The Noise Protocol Framework (revision 34) handshake state machine, for the tunnel's key exchange:
 * `Noise_XX_25519_ChaChaPoly_BLAKE2s` by default; the tunnel uses `Noise_XX_25519_AESGCM_BLAKE2s` (the patterns NN, XX and IK are implemented; SHA256 as
 * the other hash, AESGCM as the other cipher). Only the framework's composition is written here — the primitives all come from
 * `node:crypto`: X25519, ChaCha20-Poly1305, AES-256-GCM, BLAKE2s/SHA-256 and HMAC (the hash and HMAC from
 * libcrypto's one-shot calls by FFI when it loads: ffi/libcrypto_hmac.ts). The
 * composition is checked byte for byte against cacophony's published test vectors
 * (`tests/unit/noise_test.ts`, `tests/unit/fixtures/noise_cacophony.json`).
 *
 * Why XX for the tunnel: a node learns its peers' underlay addresses from the table, not their static
 * keys, so the initiator cannot know the responder's key in advance (IK needs it). XX exchanges both
 * statics encrypted, each with a payload — here the sender's certificate — and gives mutual
 * authentication and forward secrecy (ephemeral-ephemeral DH) in 1.5 round trips.
 *
 * The control path only (a few handshakes per peer per rekey interval): allocations are fine here.
 * Errors are {@link NoiseError}; a failed decrypt leaves nothing usable (the caller drops the state).
 *
 * @example
 * ```ts
 * import { generateKeyPair, HandshakeState } from "./noise.ts";
 * const a = generateKeyPair(), b = generateKeyPair();
 * const ini = new HandshakeState({ pattern: "XX", initiator: true, s: a });
 * const res = new HandshakeState({ pattern: "XX", initiator: false, s: b });
 * res.readMessage(ini.writeMessage(new Uint8Array(0)));
 * ini.readMessage(res.writeMessage(new TextEncoder().encode("responder cert")));
 * res.readMessage(ini.writeMessage(new TextEncoder().encode("initiator cert")));
 * const [send, recv] = ini.split(); // initiator → responder, responder → initiator
 * console.log(send.length, recv.length, res.remoteStatic?.length); // 32 32 32
 * ```
 * @module
 */
import crypto from "node:crypto";
import { libcryptoMac, type MacDigest } from "../../ffi/libcrypto_hmac.ts";

/** Bytes of an X25519 key and of a DH output. */
export const DHLEN = 32;
/** Bytes of a ChaCha20-Poly1305 tag. */
export const TAGLEN = 16;
/** Bytes of the hash output (BLAKE2s-256 and SHA-256). */
export const HASHLEN = 32;
/** Largest Noise message (spec §3). */
export const MAX_NOISE_MESSAGE = 65535;

/** A handshake failed: bad length, failed authentication, or a call out of order. */
export class NoiseError extends Error {
  /** Creates the error with `message` (what failed). */
  constructor(message: string) {
    super(message);
    this.name = "NoiseError";
  }
}

/** An X25519 key pair as raw bytes. */
export interface KeyPair {
  privateKey: Uint8Array;
  publicKey: Uint8Array;
}

/** Handshake patterns implemented. */
export type NoisePattern = "NN" | "XX" | "IK";
/** Hash functions implemented. */
export type NoiseHash = "BLAKE2s" | "SHA256";

type Token = "e" | "s" | "ee" | "es" | "se" | "ss";

const PATTERNS: Record<NoisePattern, { pre: { initiator: Token[]; responder: Token[] }; msgs: Token[][] }> = {
  NN: { pre: { initiator: [], responder: [] }, msgs: [["e"], ["e", "ee"]] },
  XX: { pre: { initiator: [], responder: [] }, msgs: [["e"], ["e", "ee", "s", "es"], ["s", "se"]] },
  IK: { pre: { initiator: [], responder: ["s"] }, msgs: [["e", "es", "s", "ss"], ["e", "ee", "se"]] },
};

const PKCS8_X25519 = Uint8Array.from([
  0x30,
  0x2e,
  0x02,
  0x01,
  0x00,
  0x30,
  0x05,
  0x06,
  0x03,
  0x2b,
  0x65,
  0x6e,
  0x04,
  0x22,
  0x04,
  0x20,
]);
const SPKI_X25519 = Uint8Array.from([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00]);

function cat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * Parsed private keys by their bytes' array: the node's static key and a handshake's ephemeral one are
 * used in several DHs (parsing the DER each time cost ~30–70 µs of a handshake's ~1 ms). Weak: an
 * entry lives as long as the key's array.
 */
const parsed = new WeakMap<Uint8Array, crypto.KeyObject>();

function privateKeyObject(priv: Uint8Array): crypto.KeyObject {
  if (priv.length !== DHLEN) throw new NoiseError(`X25519 private key must be ${DHLEN} bytes`);
  let k = parsed.get(priv);
  if (k === undefined) {
    k = crypto.createPrivateKey({ key: Buffer.from(cat(PKCS8_X25519, priv)), format: "der", type: "pkcs8" });
    parsed.set(priv, k);
  }
  return k;
}

/** The X25519 public key of the raw private key `priv` (32 bytes). */
export function publicKeyOf(priv: Uint8Array): Uint8Array {
  const der = crypto.createPublicKey(privateKeyObject(priv)).export({ format: "der", type: "spki" });
  return new Uint8Array(der.subarray(der.length - DHLEN));
}

/** A fresh random X25519 key pair. */
export function generateKeyPair(): KeyPair {
  const privateKey = new Uint8Array(crypto.randomBytes(DHLEN));
  return { privateKey, publicKey: publicKeyOf(privateKey) };
}

/** X25519(priv, pub); throws {@link NoiseError} for a low-order public key (all-zero output). */
export function dh(priv: Uint8Array, pub: Uint8Array): Uint8Array {
  if (pub.length !== DHLEN) throw new NoiseError(`X25519 public key must be ${DHLEN} bytes`);
  let out: Uint8Array;
  try {
    const publicKey = crypto.createPublicKey({
      key: Buffer.from(cat(SPKI_X25519, pub)),
      format: "der",
      type: "spki",
    });
    out = new Uint8Array(crypto.diffieHellman({ privateKey: privateKeyObject(priv), publicKey }));
  } catch (e) {
    throw new NoiseError(`X25519 failed: ${(e as Error).message}`);
  }
  let acc = 0;
  for (const b of out) acc |= b;
  if (acc === 0) throw new NoiseError("X25519 gave the all-zero output (low-order public key)");
  return out;
}

/** Cipher functions implemented: ChaCha20-Poly1305 and AES-256-GCM. */
export type NoiseCipher = "ChaChaPoly" | "AESGCM";

/**
 * The 12-byte nonce of a Noise cipher: 4 zero bytes, then the 64-bit counter — little-endian for
 * ChaChaPoly (as WireGuard), big-endian for AESGCM (spec §12).
 */
export function noiseNonce(cipher: NoiseCipher, n: bigint, out: Uint8Array = new Uint8Array(12)): Uint8Array {
  out.fill(0, 0, 4);
  new DataView(out.buffer, out.byteOffset, 12).setBigUint64(4, n, cipher === "ChaChaPoly");
  return out;
}

const CIPHER_ALGO = { ChaChaPoly: "chacha20-poly1305", AESGCM: "aes-256-gcm" } as const;

/** AEAD seal with Noise's nonce for `n`: ciphertext ‖ tag. */
export function aeadEncrypt(
  k: Uint8Array,
  n: bigint,
  ad: Uint8Array,
  plaintext: Uint8Array,
  cipher: NoiseCipher = "ChaChaPoly",
): Uint8Array {
  const c = crypto.createCipheriv(CIPHER_ALGO[cipher] as "aes-256-gcm", k, noiseNonce(cipher, n), {
    authTagLength: TAGLEN,
  });
  c.setAAD(ad, { plaintextLength: plaintext.length });
  const body = c.update(plaintext);
  c.final();
  return cat(body, c.getAuthTag());
}

/** AEAD open; throws {@link NoiseError} when the tag does not verify. */
export function aeadDecrypt(
  k: Uint8Array,
  n: bigint,
  ad: Uint8Array,
  ciphertext: Uint8Array,
  cipher: NoiseCipher = "ChaChaPoly",
): Uint8Array {
  if (ciphertext.length < TAGLEN) throw new NoiseError("ciphertext shorter than its tag");
  const body = ciphertext.subarray(0, ciphertext.length - TAGLEN);
  try {
    const d = crypto.createDecipheriv(CIPHER_ALGO[cipher] as "aes-256-gcm", k, noiseNonce(cipher, n), {
      authTagLength: TAGLEN,
    });
    d.setAAD(ad, { plaintextLength: body.length });
    d.setAuthTag(ciphertext.subarray(ciphertext.length - TAGLEN));
    const out = d.update(body);
    d.final();
    return new Uint8Array(out);
  } catch {
    throw new NoiseError("decryption failed (bad tag)");
  }
}

const HASH_ALGO: Record<NoiseHash, MacDigest> = { BLAKE2s: "blake2s256", SHA256: "sha256" };

/**
 * HMAC and hash by libcrypto's one-shot calls when it loads (ffi/libcrypto_hmac.ts: ~5× cheaper than
 * `createHmac` here, 12 HMACs a handshake side); `NETMANAGER_NOISE_MAC=node` keeps `node:crypto`.
 */
const ffiMac = (() => {
  try {
    if (Deno.env.get("NETMANAGER_NOISE_MAC") === "node") return undefined;
  } catch {
    // (no env permission: the default)
  }
  return libcryptoMac();
})();

class Symmetric {
  ck: Uint8Array;
  h: Uint8Array;
  k: Uint8Array | undefined = undefined;
  n = 0n;
  constructor(readonly algo: MacDigest, readonly cipher: NoiseCipher, protocolName: string) {
    const name = new TextEncoder().encode(protocolName);
    this.h = name.length <= HASHLEN ? cat(name, new Uint8Array(HASHLEN - name.length)) : this.hash(name);
    this.ck = this.h;
  }
  hash(data: Uint8Array): Uint8Array {
    if (ffiMac) return ffiMac.hash(this.algo, data);
    return new Uint8Array(crypto.createHash(this.algo).update(data).digest());
  }
  hmac(key: Uint8Array, data: Uint8Array): Uint8Array {
    if (ffiMac) return ffiMac.hmac(this.algo, key, data);
    return new Uint8Array(crypto.createHmac(this.algo, key).update(data).digest());
  }
  /** Noise HKDF with two outputs. */
  hkdf2(ck: Uint8Array, ikm: Uint8Array): [Uint8Array, Uint8Array] {
    const tk = this.hmac(ck, ikm);
    const o1 = this.hmac(tk, Uint8Array.of(1));
    const o2 = this.hmac(tk, cat(o1, Uint8Array.of(2)));
    return [o1, o2];
  }
  mixHash(data: Uint8Array): void {
    this.h = this.hash(cat(this.h, data));
  }
  mixKey(ikm: Uint8Array): void {
    const [ck, k] = this.hkdf2(this.ck, ikm);
    this.ck = ck;
    this.k = k.subarray(0, 32);
    this.n = 0n;
  }
  encryptAndHash(p: Uint8Array): Uint8Array {
    let c = p;
    if (this.k) {
      c = aeadEncrypt(this.k, this.n, this.h, p, this.cipher);
      this.n++;
    }
    this.mixHash(c);
    return c;
  }
  decryptAndHash(c: Uint8Array): Uint8Array {
    let p = c;
    if (this.k) {
      p = aeadDecrypt(this.k, this.n, this.h, c, this.cipher);
      this.n++;
    }
    this.mixHash(c);
    return p;
  }
}

/** Options of a {@link HandshakeState}. */
export interface HandshakeOptions {
  pattern: NoisePattern;
  initiator: boolean;
  /** Hash function (default BLAKE2s). */
  hash?: NoiseHash;
  /** Cipher function (default ChaChaPoly). */
  cipher?: NoiseCipher;
  prologue?: Uint8Array;
  /** Our static key pair (XX, IK). */
  s?: KeyPair;
  /** Our ephemeral key pair — only test vectors fix it; otherwise generated per handshake. */
  e?: KeyPair;
  /** The responder's static public key, known in advance (IK initiator). */
  rs?: Uint8Array;
}

/**
 * One handshake (spec §5.3). Call {@link writeMessage}/{@link readMessage} in the pattern's order, then
 * {@link split} for the transport keys. Any thrown error leaves the state unusable.
 */
export class HandshakeState {
  readonly protocolName: string;
  private readonly sym: Symmetric;
  private readonly initiator: boolean;
  private readonly msgs: Token[][];
  private step = 0;
  private failed = false;
  private s: KeyPair | undefined;
  private e: KeyPair | undefined;
  private rs: Uint8Array | undefined;
  private re: Uint8Array | undefined;

  /** Starts a handshake (see {@link HandshakeOptions}). */
  constructor(o: HandshakeOptions) {
    const hash = o.hash ?? "BLAKE2s";
    const cipher = o.cipher ?? "ChaChaPoly";
    this.protocolName = `Noise_${o.pattern}_25519_${cipher}_${hash}`;
    this.sym = new Symmetric(HASH_ALGO[hash], cipher, this.protocolName);
    this.initiator = o.initiator;
    this.s = o.s;
    this.e = o.e;
    this.rs = o.rs;
    const p = PATTERNS[o.pattern];
    this.msgs = p.msgs;
    this.sym.mixHash(o.prologue ?? new Uint8Array(0));
    for (const [side, tokens] of [["i", p.pre.initiator], ["r", p.pre.responder]] as const) {
      for (const t of tokens) {
        // Pre-message keys: ours when we are that side, else the peer's (known in advance).
        const mine = (side === "i") === this.initiator;
        const key = t === "s" ? (mine ? this.s?.publicKey : this.rs) : undefined;
        if (!key) {
          throw new NoiseError(`pattern ${o.pattern} needs the ${mine ? "local" : "remote"} static key`);
        }
        this.sym.mixHash(key);
      }
    }
    if (p.msgs.flat().includes("s") && !this.s) {
      throw new NoiseError(`pattern ${o.pattern} needs a local static key`);
    }
  }

  /** True when it is our turn to write. */
  get writing(): boolean {
    return (this.step % 2 === 0) === this.initiator;
  }
  /** True after the last message. */
  get complete(): boolean {
    return this.step >= this.msgs.length;
  }
  /** The peer's static public key, once learnt. */
  get remoteStatic(): Uint8Array | undefined {
    return this.rs;
  }
  /** The handshake hash (channel binding), final after the last message. */
  get handshakeHash(): Uint8Array {
    return this.sym.h;
  }

  private check(write: boolean): Token[] {
    if (this.failed) throw new NoiseError("handshake already failed");
    if (this.complete) throw new NoiseError("handshake already complete");
    if (this.writing !== write) {
      throw new NoiseError(write ? "not our turn to write" : "not our turn to read");
    }
    return this.msgs[this.step];
  }

  private dhToken(t: Token): void {
    const ours = (t === "ee" || t === "ss") ? t : (this.initiator ? t : (t === "es" ? "se" : "es"));
    // ours[0] names our key, ours[1] the peer's ("es" from the initiator: our e, their s).
    const local = ours[0] === "e" ? this.e : this.s;
    const remote = ours[1] === "e" ? this.re : this.rs;
    if (!local || !remote) throw new NoiseError(`missing key for ${t}`);
    this.sym.mixKey(dh(local.privateKey, remote));
  }

  /** Writes the next handshake message carrying `payload`. */
  writeMessage(payload: Uint8Array): Uint8Array {
    const tokens = this.check(true);
    try {
      const out: Uint8Array[] = [];
      for (const t of tokens) {
        if (t === "e") {
          this.e ??= generateKeyPair();
          out.push(this.e.publicKey);
          this.sym.mixHash(this.e.publicKey);
        } else if (t === "s") {
          out.push(this.sym.encryptAndHash(this.s!.publicKey));
        } else this.dhToken(t);
      }
      out.push(this.sym.encryptAndHash(payload));
      const msg = cat(...out);
      if (msg.length > MAX_NOISE_MESSAGE) throw new NoiseError("message too long");
      this.step++;
      return msg;
    } catch (e) {
      this.failed = true;
      throw e instanceof NoiseError ? e : new NoiseError((e as Error).message);
    }
  }

  /** Reads the peer's next handshake message; returns its payload. Throws {@link NoiseError} on any fault. */
  readMessage(msg: Uint8Array): Uint8Array {
    const tokens = this.check(false);
    try {
      if (msg.length > MAX_NOISE_MESSAGE) throw new NoiseError("message too long");
      let o = 0;
      const take = (n: number): Uint8Array => {
        if (o + n > msg.length) throw new NoiseError("handshake message too short");
        const b = msg.slice(o, o + n);
        o += n;
        return b;
      };
      for (const t of tokens) {
        if (t === "e") {
          this.re = take(DHLEN);
          this.sym.mixHash(this.re);
        } else if (t === "s") {
          this.rs = this.sym.decryptAndHash(take(this.sym.k ? DHLEN + TAGLEN : DHLEN));
        } else this.dhToken(t);
      }
      const payload = this.sym.decryptAndHash(msg.slice(o));
      this.step++;
      return payload;
    } catch (e) {
      this.failed = true;
      throw e instanceof NoiseError ? e : new NoiseError((e as Error).message);
    }
  }

  /**
   * The transport keys after the last message: `[initiator→responder, responder→initiator]` (32 bytes
   * each). The state's own secrets are then dropped.
   */
  split(): [Uint8Array, Uint8Array] {
    if (!this.complete || this.failed) throw new NoiseError("handshake not complete");
    const [k1, k2] = this.sym.hkdf2(this.sym.ck, new Uint8Array(0));
    this.e = undefined;
    return [k1, k2];
  }
}
