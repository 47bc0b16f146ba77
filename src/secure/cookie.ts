/**
 * Handshake cookies, after WireGuard's (whitepaper §5.4.4–5.4.7), so that an HS_INIT flood costs its
 * target hashes instead of Diffie-Hellman, and spoofed sources cannot starve a real node's handshakes:
 *
 * - Every HS_INIT ends with two MACs: `mac1` = HMAC-SHA256-128 over the message under a key derived
 *   from the cluster CA's public key (only senders that know the cluster get DH work done at all),
 *   and `mac2` = HMAC-SHA256-128 over the message and mac1 under the last *cookie* the responder gave
 *   this sender (zero when it has none).
 * - Under load (the source's or the global HS_INIT budget is spent) the responder answers an INIT
 *   without a valid mac2 with a COOKIE reply instead of doing DH: the cookie is HMAC(secret, source
 *   address and port), the secret random and replaced every {@link COOKIE_SECRET_MS}; the reply is
 *   sealed with AES-256-GCM under a key derived from the CA's public key, with the INIT's mac1 as
 *   associated data (only the sender of that INIT can use it). A sender that receives the reply
 *   proves it owns its address: it resends the INIT with mac2, which the responder answers from a
 *   budget spoofed packets cannot reach.
 *
 * Wire: HS_INIT = its 40 bytes (secure_wire.ts) + mac1 (16) + mac2 (16). A COOKIE reply reuses the
 * HS_RESP type byte with version byte {@link COOKIE_VERSION}: `[0x17][0x81][lane u16][receiver u32]
 * [nonce 12][sealed cookie 16][tag 16]` (52 bytes, smaller than the INIT: no amplification).
 * All MACs and the AEAD are node:crypto's; nothing here is a home-made primitive.
 *
 * @example
 * ```ts
 * import { addMacs, CookieJar, checkMac1, keysForCa, openCookieReply } from "./cookie.ts";
 * const ca = crypto.getRandomValues(new Uint8Array(32));
 * const k = keysForCa(ca);
 * const init = addMacs(new Uint8Array(40).fill(0x16, 0, 1), k.mac1);
 * console.log(checkMac1(init, 0, init.length, [k]) === k); // true
 * const jar = new CookieJar();
 * const reply = jar.reply(init, 0, "10.0.0.1:50103", 0, 7, k, 0);
 * const cookie = openCookieReply(reply, 0, reply.length, k, init.subarray(40, 56))!;
 * const again = addMacs(init.subarray(0, 40), k.mac1, cookie.cookie);
 * console.log(jar.checkMac2(again, 0, "10.0.0.1:50103", 1000), jar.checkMac2(again, 0, "10.0.0.2:50103", 1000)); // true false
 * ```
 * @module
 */
import crypto from "node:crypto";
import { MSG_HS_RESP } from "../proxy/wire.ts";
import { INIT_BODY_LEN, INIT_WIRE_LEN, MAC_LEN } from "./cookie_wire.ts";

export { hasMac2, INIT_BODY_LEN, INIT_WIRE_LEN, MAC_LEN } from "./cookie_wire.ts";

/** Version byte of a COOKIE reply (an HS_RESP type byte with the high bit set in the version). */
export const COOKIE_VERSION = 0x81;
/** A COOKIE reply's length. */
export const COOKIE_REPLY_LEN = 8 + 12 + MAC_LEN + 16;
/** The responder's cookie secret is replaced this often (a cookie stays valid up to twice as long). */
export const COOKIE_SECRET_MS = 120_000;
/** An initiator uses a received cookie this long. */
export const COOKIE_USE_MS = COOKIE_SECRET_MS - 10_000;

/** The keys derived from one CA public key. */
export interface CaMacKeys {
  mac1: Uint8Array;
  cookie: Uint8Array;
}

const sha256 = (...parts: Uint8Array[]): Uint8Array => {
  const h = crypto.createHash("sha256");
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
};

const hmac16 = (key: Uint8Array, ...parts: Uint8Array[]): Uint8Array => {
  const h = crypto.createHmac("sha256", key);
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest()).subarray(0, MAC_LEN);
};

const enc = new TextEncoder();
const L_MAC1 = enc.encode("netmanager mac1 v1");
const L_COOKIE = enc.encode("netmanager cookie v1");

/** The MAC and cookie-sealing keys of the cluster whose CA public key is `ca`. */
export function keysForCa(ca: Uint8Array): CaMacKeys {
  return { mac1: sha256(L_MAC1, ca), cookie: sha256(L_COOKIE, ca) };
}

/** The 72-byte HS_INIT: `body` (40 bytes), mac1 under `mac1Key`, mac2 under `cookie` (zeros without). */
export function addMacs(body: Uint8Array, mac1Key: Uint8Array, cookie?: Uint8Array): Uint8Array {
  if (body.length !== INIT_BODY_LEN) throw new RangeError(`HS_INIT body of ${body.length} bytes`);
  const out = new Uint8Array(INIT_WIRE_LEN);
  out.set(body);
  out.set(hmac16(mac1Key, body), INIT_BODY_LEN);
  if (cookie) out.set(hmac16(cookie, out.subarray(0, INIT_BODY_LEN + MAC_LEN)), INIT_BODY_LEN + MAC_LEN);
  return out;
}

/** Constant-time comparison of two 16-byte MACs. */
function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

/**
 * The CA keys whose mac1 the HS_INIT `buf[off .. off+len)` carries, or undefined (wrong length or no
 * key matches).
 */
export function checkMac1(
  buf: Uint8Array,
  off: number,
  len: number,
  keys: CaMacKeys[],
): CaMacKeys | undefined {
  if (len !== INIT_WIRE_LEN || off < 0 || off + len > buf.length) return undefined;
  const body = buf.subarray(off, off + INIT_BODY_LEN);
  const mac1 = buf.subarray(off + INIT_BODY_LEN, off + INIT_BODY_LEN + MAC_LEN);
  for (const k of keys) if (same(hmac16(k.mac1, body), mac1)) return k;
  return undefined;
}

/** True when `buf[off]` starts a COOKIE reply (an HS_RESP type byte with {@link COOKIE_VERSION}). */
export function isCookieReply(buf: Uint8Array, off: number, len: number): boolean {
  return len >= 2 && buf[off] === MSG_HS_RESP && buf[off + 1] === COOKIE_VERSION;
}

/**
 * Cookie secrets handed to a {@link CookieJar} from outside: every data-plane worker checks mac2 with
 * the same secrets (the main isolate rotates them and posts them to all), so a cookie one worker gave
 * is good in any other.
 */
export interface CookieSecrets {
  current: Uint8Array;
  /** The one before (cookies given under it stay good until the next rotation). */
  previous?: Uint8Array;
}

/** A fresh random cookie secret (32 bytes). */
export function newCookieSecret(): Uint8Array {
  return crypto.randomBytes(32);
}

/** The responder's side: its rotating secret, cookies and mac2 checks (see the module). */
export class CookieJar {
  #secret: Uint8Array = crypto.randomBytes(32);
  #previous: Uint8Array | undefined;
  #atMs = -Infinity;
  /** Secrets set from outside ({@link setSecrets}): their owner rotates them, not this jar. */
  #external = false;

  /** Uses `s` from now on (and stops rotating on its own). */
  setSecrets(s: CookieSecrets): void {
    this.#secret = s.current;
    this.#previous = s.previous;
    this.#external = true;
  }

  #rotate(nowMs: number): void {
    if (this.#external || nowMs - this.#atMs < COOKIE_SECRET_MS) return;
    // A long gap: both secrets are stale.
    this.#previous = nowMs - this.#atMs < 2 * COOKIE_SECRET_MS ? this.#secret : undefined;
    this.#secret = crypto.randomBytes(32);
    this.#atMs = nowMs;
  }

  /** The cookie of `source` (an endpoint key, `ip:port`) under the current secret. */
  cookieFor(source: string, nowMs: number): Uint8Array {
    this.#rotate(nowMs);
    return hmac16(this.#secret, enc.encode(source));
  }

  /** True when the HS_INIT at `buf[off ..]` (72 bytes, mac1 checked) carries a valid mac2 for `source`. */
  checkMac2(buf: Uint8Array, off: number, source: string, nowMs: number): boolean {
    this.#rotate(nowMs);
    const signed = buf.subarray(off, off + INIT_BODY_LEN + MAC_LEN);
    const mac2 = buf.subarray(off + INIT_BODY_LEN + MAC_LEN, off + INIT_WIRE_LEN);
    const src = enc.encode(source);
    for (const s of this.#previous ? [this.#secret, this.#previous] : [this.#secret]) {
      if (same(hmac16(hmac16(s, src), signed), mac2)) return true;
    }
    return false;
  }

  /**
   * The COOKIE reply to the HS_INIT at `buf[off ..]` from `source`: sent back with the INIT's lane
   * and sender index, sealed under `keys` (the CA keys its mac1 matched), bound to its mac1.
   */
  reply(
    buf: Uint8Array,
    off: number,
    source: string,
    lane: number,
    sender: number,
    keys: CaMacKeys,
    nowMs: number,
  ): Uint8Array {
    const out = new Uint8Array(COOKIE_REPLY_LEN);
    out[0] = MSG_HS_RESP;
    out[1] = COOKIE_VERSION;
    out[2] = lane >>> 8;
    out[3] = lane;
    new DataView(out.buffer).setUint32(4, sender);
    const nonce = crypto.randomBytes(12);
    out.set(nonce, 8);
    const c = crypto.createCipheriv("aes-256-gcm", keys.cookie, nonce, { authTagLength: 16 });
    c.setAAD(buf.subarray(off + INIT_BODY_LEN, off + INIT_BODY_LEN + MAC_LEN));
    out.set(new Uint8Array(c.update(this.cookieFor(source, nowMs))), 20);
    c.final();
    out.set(new Uint8Array(c.getAuthTag()), 20 + MAC_LEN);
    return out;
  }
}

/**
 * Opens a COOKIE reply `buf[off .. off+len)` sealed under `keys` for the INIT whose mac1 is `mac1`:
 * its receiver index (the INIT's sender index) and the cookie, or undefined (malformed, or not
 * sealed for that INIT).
 */
export function openCookieReply(
  buf: Uint8Array,
  off: number,
  len: number,
  keys: CaMacKeys,
  mac1: Uint8Array,
): { receiver: number; cookie: Uint8Array } | undefined {
  if (len !== COOKIE_REPLY_LEN || off < 0 || off + len > buf.length || !isCookieReply(buf, off, len)) {
    return undefined;
  }
  try {
    const d = crypto.createDecipheriv("aes-256-gcm", keys.cookie, buf.subarray(off + 8, off + 20), {
      authTagLength: 16,
    });
    d.setAAD(mac1);
    d.setAuthTag(buf.subarray(off + 20 + MAC_LEN, off + COOKIE_REPLY_LEN));
    const cookie = new Uint8Array(d.update(buf.subarray(off + 20, off + 20 + MAC_LEN)));
    d.final();
    const receiver = new DataView(buf.buffer, buf.byteOffset + off + 4, 4).getUint32(0);
    return { receiver, cookie };
  } catch {
    return undefined;
  }
}

/** Receiver index of a COOKIE reply (its length checked by the caller). */
export function cookieReceiver(buf: Uint8Array, off: number): number {
  return ((buf[off + 4] << 24) | (buf[off + 5] << 16) | (buf[off + 6] << 8) | buf[off + 7]) >>> 0;
}
