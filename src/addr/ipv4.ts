/**
 * IPv4 addresses as unsigned 32-bit numbers: parsing, formatting, prefixes.
 *
 * @example
 * ```ts
 * const a = parseIPv4("10.18.0.64");
 * formatIPv4(a + 1); // "10.18.0.65"
 * ```
 */

/** Thrown for any malformed address or prefix; the message names the bad text. */
export class AddressError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AddressError";
  }
}

const OCTET = /^(0|[1-9][0-9]{0,2})$/;

/** Parses dotted-quad text into a uint32, or returns undefined. Leading zeros are rejected. */
export function tryParseIPv4(text: string): number | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  let value = 0;
  for (const part of parts) {
    if (!OCTET.test(part)) return undefined;
    const n = Number(part);
    if (n > 255) return undefined;
    value = value * 256 + n;
  }
  return value;
}

/** Parses dotted-quad text into a uint32; throws AddressError when malformed. */
export function parseIPv4(text: string): number {
  const v = tryParseIPv4(text);
  if (v === undefined) throw new AddressError(`invalid IPv4 address "${text}"`);
  return v;
}

/** True when `text` is a valid dotted-quad IPv4 address. */
export function isIPv4(text: string): boolean {
  return tryParseIPv4(text) !== undefined;
}

/** Formats a uint32 as dotted-quad text. */
export function formatIPv4(value: number): string {
  const v = value >>> 0;
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

/** The netmask of a prefix length as a uint32 (0 → 0, 32 → 0xffffffff). */
export function maskIPv4(prefixLen: number): number {
  if (!Number.isInteger(prefixLen) || prefixLen < 0 || prefixLen > 32) {
    throw new AddressError(`invalid IPv4 prefix length ${prefixLen}`);
  }
  return prefixLen === 0 ? 0 : (0xffffffff << (32 - prefixLen)) >>> 0;
}

/** Prefix length of a dotted netmask such as "255.255.0.0"; throws when not contiguous. */
export function prefixLenOfMask(mask: string): number {
  const m = parseIPv4(mask);
  for (let len = 0; len <= 32; len++) if (maskIPv4(len) === m) return len;
  throw new AddressError(`netmask "${mask}" is not contiguous`);
}

/** An IPv4 prefix: network address and length. */
export interface Prefix4 {
  /** Network address (host bits zero). */
  addr: number;
  /** Prefix length 0..32. */
  len: number;
}

/**
 * True when `addr` lies inside `prefix` (a length of 0..32, as {@link parsePrefix4} makes it; /0
 * holds every address — a shift by 32 would be a shift by 0 in JS). Cheap enough for the packet path.
 *
 * @example
 * ```ts
 * import { inPrefix4, parseIPv4, parsePrefix4 } from "./ipv4.ts";
 * inPrefix4(parsePrefix4("10.30.0.0/16"), parseIPv4("10.30.1.2")); // true
 * inPrefix4(parsePrefix4("0.0.0.0/0"), parseIPv4("192.0.2.1")); // true
 * ```
 */
export function inPrefix4(prefix: Prefix4, addr: number): boolean {
  const len = prefix.len;
  return len === 0 ? prefix.addr === 0 : ((addr & (0xffffffff << (32 - len))) >>> 0) === prefix.addr;
}

/**
 * Parses "a.b.c.d/len". With `strict` the host bits must be zero; otherwise they are cleared.
 */
export function parsePrefix4(text: string, strict = false): Prefix4 {
  const slash = text.indexOf("/");
  if (slash < 0) throw new AddressError(`invalid IPv4 prefix "${text}": missing /length`);
  const addr = parseIPv4(text.slice(0, slash));
  const lenText = text.slice(slash + 1);
  if (!/^[0-9]{1,2}$/.test(lenText) || Number(lenText) > 32) {
    throw new AddressError(`invalid IPv4 prefix "${text}": bad length`);
  }
  const len = Number(lenText);
  const net = (addr & maskIPv4(len)) >>> 0;
  if (strict && net !== addr) throw new AddressError(`invalid IPv4 prefix "${text}": host bits set`);
  return { addr: net, len };
}

/** Formats a prefix as "a.b.c.d/len". */
export function formatPrefix4(p: Prefix4): string {
  return `${formatIPv4(p.addr)}/${p.len}`;
}

/** Writes the address in network byte order into `buf` at `off`. */
export function writeIPv4(buf: Uint8Array, off: number, value: number): void {
  buf[off] = value >>> 24;
  buf[off + 1] = (value >>> 16) & 255;
  buf[off + 2] = (value >>> 8) & 255;
  buf[off + 3] = value & 255;
}

/** Reads a network-byte-order address from `buf` at `off`. */
export function readIPv4(buf: Uint8Array, off: number): number {
  return ((buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]) >>> 0;
}

/** The address as 4 bytes in network order. */
export function ipv4Bytes(value: number): Uint8Array {
  const b = new Uint8Array(4);
  writeIPv4(b, 0, value);
  return b;
}
