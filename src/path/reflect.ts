/**
 * Endpoint discovery wire format (issue 12): a node sends a REFLECT request from its tunnel socket
 * to the control plane's reflector (UDP, default port {@link REFLECTOR_PORT}); the reflector answers
 * with the source address and port it saw — the node's endpoint as the rest of the internet sees it
 * (behind NAT: the router's public address and the mapped port). First bytes continue wire.ts's
 * `0x1T` scheme, so old nodes drop them:
 *
 * | byte | message | layout (big-endian) | size |
 * |---|---|---|---|
 * | 0x1C | REFLECT | `[0x1C][version u8][reserved u16 = 0][nonce hi u32][nonce lo u32][id len u8][id…]` | 13 + id |
 * | 0x1D | REFLECT_REPLY | `[0x1D][version u8][port u16][nonce hi u32][nonce lo u32][family u8 = 4 or 6][address 4 or 16]` | 17 or 29 |
 *
 * The reply echoes the request's random nonce: a node accepts only the reply to its outstanding
 * request, from the reflector's address. Pure and bounds-checked; decoders return undefined on
 * anything malformed (never throw on datagram contents).
 *
 * @example
 * ```ts
 * import { decodeReflectReply, encodeReflect, encodeReflectReply } from "./reflect.ts";
 * const req = encodeReflect({ nonceHi: 1, nonceLo: 2, nodeId: "worker1" });
 * const rep = encodeReflectReply({ nonceHi: 1, nonceLo: 2, ip: "203.0.113.7", port: 40000 });
 * decodeReflectReply(rep, 0, rep.length)?.port === 40000;
 * ```
 * @module
 */
import { formatIPv4, formatIPv6, tryParseIPv4, tryParseIPv6 } from "../addr/mod.ts";
import { isValidNodeId, MAX_NODE_ID_LEN, WireError } from "../proxy/wire.ts";

/** First byte of a REFLECT request. */
export const MSG_REFLECT = 0x1c;
/** First byte of a REFLECT_REPLY. */
export const MSG_REFLECT_REPLY = 0x1d;
/** Default reflector UDP port on the control plane's host. */
export const REFLECTOR_PORT = 50104;
/** Fixed part of a REFLECT before the node id. */
export const REFLECT_FIXED_LEN = 13;
const VERSION = 1;

/** A REFLECT request. */
export interface ReflectRequest {
  readonly nonceHi: number;
  readonly nonceLo: number;
  /** The sender's worker id (wire.ts rules: ≤ 64 printable ASCII). */
  readonly nodeId: string;
}

/** A REFLECT_REPLY: the endpoint the reflector saw. */
export interface ReflectReply {
  readonly nonceHi: number;
  readonly nonceLo: number;
  /** Observed source address (text) and port. */
  readonly ip: string;
  readonly port: number;
}

function u32(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new WireError(`${what} must be uint32: ${v}`);
  return v;
}

function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = v >>> 16;
  b[o + 2] = v >>> 8;
  b[o + 3] = v;
}

function get32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

/** Encodes a REFLECT request; throws {@link WireError} on a bad field. */
export function encodeReflect(r: ReflectRequest): Uint8Array {
  if (!isValidNodeId(r.nodeId)) throw new WireError(`bad node id for REFLECT: "${r.nodeId}"`);
  const out = new Uint8Array(REFLECT_FIXED_LEN + r.nodeId.length);
  out[0] = MSG_REFLECT;
  out[1] = VERSION;
  put32(out, 4, u32(r.nonceHi, "nonce"));
  put32(out, 8, u32(r.nonceLo, "nonce"));
  out[12] = r.nodeId.length;
  for (let i = 0; i < r.nodeId.length; i++) out[13 + i] = r.nodeId.charCodeAt(i);
  return out;
}

/** Decodes a REFLECT request at `b[off .. off+len)`; undefined when malformed. */
export function decodeReflect(b: Uint8Array, off: number, len: number): ReflectRequest | undefined {
  if (off < 0 || len < REFLECT_FIXED_LEN || off + len > b.length) return undefined;
  if (b[off] !== MSG_REFLECT || b[off + 1] < 1) return undefined;
  const n = b[off + 12];
  if (n > MAX_NODE_ID_LEN || len < REFLECT_FIXED_LEN + n) return undefined;
  let id = "";
  for (let i = 0; i < n; i++) {
    const c = b[off + 13 + i];
    if (c < 0x21 || c > 0x7e) return undefined;
    id += String.fromCharCode(c);
  }
  return { nonceHi: get32(b, off + 4), nonceLo: get32(b, off + 8), nodeId: id };
}

/** Encodes a REFLECT_REPLY; throws {@link WireError} on a bad address or port. */
export function encodeReflectReply(r: ReflectReply): Uint8Array {
  if (!Number.isInteger(r.port) || r.port < 1 || r.port > 65535) throw new WireError(`bad port ${r.port}`);
  const v6 = r.ip.includes(":");
  const out = new Uint8Array(13 + (v6 ? 16 : 4));
  out[0] = MSG_REFLECT_REPLY;
  out[1] = VERSION;
  out[2] = r.port >>> 8;
  out[3] = r.port;
  put32(out, 4, u32(r.nonceHi, "nonce"));
  put32(out, 8, u32(r.nonceLo, "nonce"));
  out[12] = v6 ? 6 : 4;
  if (v6) {
    const a = tryParseIPv6(r.ip);
    if (!a) throw new WireError(`bad IPv6 address ${r.ip}`);
    out.set(a, 13);
  } else {
    const a = tryParseIPv4(r.ip);
    if (a === undefined) throw new WireError(`bad IPv4 address ${r.ip}`);
    put32(out, 13, a);
  }
  return out;
}

/** Decodes a REFLECT_REPLY at `b[off .. off+len)`; undefined when malformed. */
export function decodeReflectReply(b: Uint8Array, off: number, len: number): ReflectReply | undefined {
  if (off < 0 || len < 17 || off + len > b.length) return undefined;
  if (b[off] !== MSG_REFLECT_REPLY || b[off + 1] < 1) return undefined;
  const port = (b[off + 2] << 8) | b[off + 3];
  if (port === 0) return undefined;
  const fam = b[off + 12];
  let ip: string;
  if (fam === 4) ip = formatIPv4(get32(b, off + 13));
  else if (fam === 6 && len >= 29) ip = formatIPv6(b, off + 13);
  else return undefined;
  return { nonceHi: get32(b, off + 4), nonceLo: get32(b, off + 8), ip, port };
}
