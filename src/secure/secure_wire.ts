/**
 * Codecs of the secure tunnel's datagrams (types 0x16..0x19 in the in-band range, table in
 * src/proxy/wire.ts). Pure and bounds-checked: decoders return false on anything malformed and never
 * throw; encoders throw {@link WireError} on a programming error (small buffer, field out of range).
 *
 * - Handshake messages carry a 4-byte *sender index* (the sender's handle for the session; the peer
 *   writes it as *receiver index* into every later message, as in WireGuard) and the lane key of the
 *   datagram that started the handshake (cleartext, so the receiver's reuseport steering keeps working;
 *   handshakes run on one place anyway).
 * - SECURE data: `[0x19][flags 0][lane key u16][receiver index u32][counter u64]`, the sealed datagram,
 *   the tag. The 16-byte header is the associated data; the AEAD nonce is 4 zero bytes and the counter
 *   (Noise's AESGCM nonce). The counter's top byte is the sending worker's lane ({@link counterLane}):
 *   each worker counts in its own space, so nonces never repeat across workers, and the receiver keeps
 *   one replay window per sending lane.
 * - SECURE message parts (flags {@link SECURE_F_PART} | index, {@link SECURE_F_LAST} on the last): one
 *   AEAD over the datagrams of a JUMBO message (its chunks must all arrive anyway). Every part carries
 *   the same header fields (one counter per message) with its index in the flags; the parts' bytes
 *   are one ciphertext stream, the associated data is part 0's header and the tag follows the last
 *   part only — 16 bytes per datagram, 32 on the last.
 *
 * @example
 * ```ts
 * import { decodeSecureHeader, SECURE_HEADER_LEN, SecureHeader, writeSecureHeader } from "./secure_wire.ts";
 * const buf = new Uint8Array(64);
 * writeSecureHeader(buf, 0, 0x1234, 7, 1, 42);
 * const h = new SecureHeader();
 * console.log(decodeSecureHeader(buf, 0, 64, h), h.receiver, h.lane, h.counterLo, SECURE_HEADER_LEN); // true 7 4660 42 16
 * ```
 * @module
 */
import { MSG_HS_FINISH, MSG_HS_INIT, MSG_HS_RESP, MSG_SECURE, WireError } from "../proxy/wire.ts";

/**
 * Version byte of the handshake messages. 2: SECURE data may come in parts (a JUMBO message sealed
 * as one AEAD), which version 1 refuses — so mixed versions fail the handshake (raw in `prefer`,
 * refused and counted in `require`) instead of losing every JUMBO message silently.
 */
export const SECURE_VERSION = 2;
/** Header of HS_INIT. */
export const HS_INIT_HEADER_LEN = 8;
/** Header of HS_RESP and HS_FINISH. */
export const HS_REPLY_HEADER_LEN = 12;
/** Noise XX message 1: the initiator's ephemeral key, empty payload. */
export const HS_INIT_NOISE_LEN = 32;
/** Longest certificate a handshake may carry. */
export const MAX_CERT_LEN = 512;
/** Longest handshake datagram accepted (HS_RESP with the longest certificate). */
export const MAX_HANDSHAKE_LEN: number = HS_REPLY_HEADER_LEN + 32 + 48 + MAX_CERT_LEN + 16;
/** Header of SECURE data. */
export const SECURE_HEADER_LEN = 16;
/** AEAD tag after SECURE data. */
export const SECURE_TAG_LEN = 16;
/** Bytes SECURE data adds to the datagram it seals. */
export const SECURE_OVERHEAD: number = SECURE_HEADER_LEN + SECURE_TAG_LEN;
/** SECURE flags: the datagram is part `flags & SECURE_PART_INDEX` of a message sealed as one. */
export const SECURE_F_PART = 0x80;
/** SECURE flags: the last part (the tag follows it). */
export const SECURE_F_LAST = 0x40;
/** SECURE flags: the part's index (0..63, as JUMBO chunks). */
export const SECURE_PART_INDEX = 0x3f;

/** A decoded handshake header; reuse one instance. */
export class HandshakeHeader {
  /** {@link MSG_HS_INIT}, {@link MSG_HS_RESP} or {@link MSG_HS_FINISH}. */
  type = 0;
  lane = 0;
  sender = 0;
  /** 0 in HS_INIT. */
  receiver = 0;
  /** Where the Noise message starts and its length. */
  noiseOffset = 0;
  noiseLength = 0;
}

function rd32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}
function wr32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = v >>> 16;
  b[o + 2] = v >>> 8;
  b[o + 3] = v;
}
function isU32(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

/** True when `b` is one of the three handshake types. */
export function isHandshakeType(b: number): boolean {
  return b === MSG_HS_INIT || b === MSG_HS_RESP || b === MSG_HS_FINISH;
}

/**
 * Decodes a handshake datagram's header into `out`; false when it is not one, has another version,
 * or its length is impossible for its type (HS_INIT exactly 40 bytes; replies at most
 * {@link MAX_HANDSHAKE_LEN}).
 */
export function decodeHandshake(buf: Uint8Array, off: number, len: number, out: HandshakeHeader): boolean {
  if (!Number.isInteger(off) || !Number.isInteger(len) || off < 0 || len < 1 || off + len > buf.length) {
    return false;
  }
  const t = buf[off];
  if (!isHandshakeType(t) || len < HS_INIT_HEADER_LEN || buf[off + 1] !== SECURE_VERSION) return false;
  out.type = t;
  out.lane = (buf[off + 2] << 8) | buf[off + 3];
  out.sender = rd32(buf, off + 4);
  if (t === MSG_HS_INIT) {
    if (len !== HS_INIT_HEADER_LEN + HS_INIT_NOISE_LEN) return false;
    out.receiver = 0;
    out.noiseOffset = off + HS_INIT_HEADER_LEN;
  } else {
    // The smallest reply: Noise's static key (48) and an empty payload's tag (16); message 2 adds 32.
    const min = HS_REPLY_HEADER_LEN + (t === MSG_HS_RESP ? 32 : 0) + 48 + 16;
    if (len < min || len > MAX_HANDSHAKE_LEN) return false;
    out.receiver = rd32(buf, off + 8);
    out.noiseOffset = off + HS_REPLY_HEADER_LEN;
  }
  out.noiseLength = off + len - out.noiseOffset;
  return true;
}

/** A handshake datagram: the header (`receiver` ignored for HS_INIT) then the Noise message. */
export function encodeHandshake(
  type: number,
  lane: number,
  sender: number,
  receiver: number,
  noise: Uint8Array,
): Uint8Array {
  if (!isHandshakeType(type)) throw new WireError(`not a handshake type: ${type}`);
  if (!isU32(sender) || !isU32(receiver) || !Number.isInteger(lane) || lane < 0 || lane > 0xffff) {
    throw new WireError("handshake field out of range");
  }
  const head = type === MSG_HS_INIT ? HS_INIT_HEADER_LEN : HS_REPLY_HEADER_LEN;
  const out = new Uint8Array(head + noise.length);
  out[0] = type;
  out[1] = SECURE_VERSION;
  out[2] = lane >>> 8;
  out[3] = lane;
  wr32(out, 4, sender);
  if (type !== MSG_HS_INIT) wr32(out, 8, receiver);
  out.set(noise, head);
  if (out.length > MAX_HANDSHAKE_LEN) throw new WireError(`handshake of ${out.length} bytes is too long`);
  return out;
}

/** A decoded SECURE data header; reuse one instance. */
export class SecureHeader {
  /** 0 (a datagram sealed on its own) or {@link SECURE_F_PART} with the index and maybe {@link SECURE_F_LAST}. */
  flags = 0;
  lane = 0;
  receiver = 0;
  /** Counter high 32 bits (top byte: the sending lane) and low 32 bits. */
  counterHi = 0;
  counterLo = 0;
}

/** The sending lane in a counter's high word. */
export function counterLane(counterHi: number): number {
  return counterHi >>> 24;
}

/** The per-lane message number of a counter (< 2^56; as a number, exact below 2^53). */
export function counterValue(counterHi: number, counterLo: number): number {
  return (counterHi & 0xffffff) * 0x100000000 + counterLo;
}

/**
 * Decodes a SECURE data header; false when the datagram is not SECURE data, has unknown flags, or is
 * too short to hold a header, at least one byte and a tag (a part that is not the last: no tag).
 */
export function decodeSecureHeader(buf: Uint8Array, off: number, len: number, out: SecureHeader): boolean {
  if (!Number.isInteger(off) || !Number.isInteger(len) || off < 0 || off + len > buf.length) return false;
  if (buf[off] !== MSG_SECURE) return false;
  const f = buf[off + 1];
  const min = (f & SECURE_F_PART) === 0 || (f & SECURE_F_LAST) !== 0
    ? SECURE_OVERHEAD + 1
    : SECURE_HEADER_LEN + 1;
  if (len < min || (f !== 0 && (f & SECURE_F_PART) === 0)) return false;
  out.flags = f;
  out.lane = (buf[off + 2] << 8) | buf[off + 3];
  out.receiver = rd32(buf, off + 4);
  out.counterHi = rd32(buf, off + 8);
  out.counterLo = rd32(buf, off + 12);
  return true;
}

/** Writes a SECURE data header at `buf[off .. off+16)`. */
export function writeSecureHeader(
  buf: Uint8Array,
  off: number,
  lane: number,
  receiver: number,
  counterHi: number,
  counterLo: number,
  flags = 0,
): void {
  if (!Number.isInteger(off) || off < 0 || off + SECURE_HEADER_LEN > buf.length) {
    throw new WireError(`SECURE header needs 16 bytes at ${off}, buffer has ${buf.length}`);
  }
  buf[off] = MSG_SECURE;
  buf[off + 1] = flags;
  buf[off + 2] = lane >>> 8;
  buf[off + 3] = lane;
  wr32(buf, off + 4, receiver);
  wr32(buf, off + 8, counterHi);
  wr32(buf, off + 12, counterLo);
}
