/**
 * IPv6 addresses as 16-byte arrays: parsing (incl. embedded IPv4), RFC 5952 formatting, prefixes.
 *
 * @example
 * ```ts
 * const a = parseIPv6("fc00::");
 * a[15] = 2;
 * formatIPv6(a); // "fc00::2"
 * ```
 */
import { AddressError, tryParseIPv4 } from "./ipv4.ts";

/** Parses IPv6 text into 16 bytes, or returns undefined. Zone ids are rejected. */
export function tryParseIPv6(text: string): Uint8Array | undefined {
  if (text.length < 2 || text.length > 45 || text.includes("%")) return undefined;
  let head = text;
  let tail = "";
  const dbl = text.indexOf("::");
  if (dbl >= 0) {
    if (text.indexOf("::", dbl + 1) >= 0) return undefined;
    head = text.slice(0, dbl);
    tail = text.slice(dbl + 2);
  }
  const groups = (s: string): number[] | undefined => {
    if (s === "") return [];
    const out: number[] = [];
    const parts = s.split(":");
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i];
      if (i === parts.length - 1 && p.includes(".")) {
        const v4 = tryParseIPv4(p);
        if (v4 === undefined) return undefined;
        out.push(v4 >>> 16, v4 & 0xffff);
        continue;
      }
      if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return undefined;
      out.push(parseInt(p, 16));
    }
    return out;
  };
  const h = groups(head);
  const t = groups(tail);
  if (h === undefined || t === undefined) return undefined;
  if (head.includes(".") && dbl >= 0) return undefined; // embedded v4 only at the very end
  const total = h.length + t.length;
  if (dbl >= 0 ? total > 7 : total !== 8) return undefined;
  const all = [...h, ...new Array<number>(8 - total).fill(0), ...t];
  const out = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    out[2 * i] = all[i] >>> 8;
    out[2 * i + 1] = all[i] & 255;
  }
  return out;
}

/** Parses IPv6 text into 16 bytes; throws AddressError when malformed. */
export function parseIPv6(text: string): Uint8Array {
  const v = tryParseIPv6(text);
  if (v === undefined) throw new AddressError(`invalid IPv6 address "${text}"`);
  return v;
}

/** True when `text` is a valid IPv6 address. */
export function isIPv6(text: string): boolean {
  return tryParseIPv6(text) !== undefined;
}

/** Formats 16 bytes (at `off`) in RFC 5952 canonical form. */
export function formatIPv6(bytes: Uint8Array, off = 0): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((bytes[off + 2 * i] << 8) | bytes[off + 2 * i + 1]);
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(":");
  if (bestStart < 0) return hex(g);
  return `${hex(g.slice(0, bestStart))}::${hex(g.slice(bestStart + bestLen))}`;
}

/** Canonical (RFC 5952) text of an IPv6 address given as text; throws when malformed. */
export function canonicalIPv6(text: string): string {
  return formatIPv6(parseIPv6(text));
}

/** An IPv6 prefix. */
export interface Prefix6 {
  /** Network address (host bits zero), 16 bytes. */
  addr: Uint8Array;
  /** Prefix length 0..128. */
  len: number;
}

/** Clears the host bits of `addr` beyond `len`, returning a new array. */
export function maskIPv6(addr: Uint8Array, len: number): Uint8Array {
  const out = addr.slice(0, 16);
  for (let bit = len; bit < 128; bit++) out[bit >> 3] &= ~(0x80 >> (bit & 7));
  return out;
}

/** True when the two 16-byte addresses are equal. */
export function equalIPv6(a: Uint8Array, b: Uint8Array, aOff = 0, bOff = 0): boolean {
  for (let i = 0; i < 16; i++) if (a[aOff + i] !== b[bOff + i]) return false;
  return true;
}

/** True when `addr` (at `off`) lies inside `prefix`. */
export function inPrefix6(prefix: Prefix6, addr: Uint8Array, off = 0): boolean {
  const full = prefix.len >> 3;
  for (let i = 0; i < full; i++) if (addr[off + i] !== prefix.addr[i]) return false;
  const rest = prefix.len & 7;
  if (rest === 0) return true;
  const m = (0xff << (8 - rest)) & 0xff;
  return (addr[off + full] & m) === prefix.addr[full];
}

/** Parses "addr/len". With `strict` the host bits must be zero; otherwise they are cleared. */
export function parsePrefix6(text: string, strict = false): Prefix6 {
  const slash = text.indexOf("/");
  if (slash < 0) throw new AddressError(`invalid IPv6 prefix "${text}": missing /length`);
  const addr = parseIPv6(text.slice(0, slash));
  const lenText = text.slice(slash + 1);
  if (!/^[0-9]{1,3}$/.test(lenText) || Number(lenText) > 128) {
    throw new AddressError(`invalid IPv6 prefix "${text}": bad length`);
  }
  const len = Number(lenText);
  const net = maskIPv6(addr, len);
  if (strict && !equalIPv6(net, addr)) throw new AddressError(`invalid IPv6 prefix "${text}": host bits set`);
  return { addr: net, len };
}

/** Formats a prefix as "addr/len". */
export function formatPrefix6(p: Prefix6): string {
  return `${formatIPv6(p.addr)}/${p.len}`;
}

/** Returns `base` plus a small non-negative offset (carrying across bytes), as a new array. */
export function addIPv6(base: Uint8Array, offset: number): Uint8Array {
  const out = base.slice(0, 16);
  let carry = offset;
  for (let i = 15; i >= 0 && carry > 0; i--) {
    const sum = out[i] + (carry % 256);
    out[i] = sum & 255;
    carry = Math.floor(carry / 256) + (sum >> 8);
  }
  if (carry > 0) throw new AddressError("IPv6 address overflow");
  return out;
}
