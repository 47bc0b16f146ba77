/**
 * Packet parsing and in-place address rewriting for the data plane.
 *
 * Called once per packet on the hot path, so everything here is pure, allocation-free and never
 * throws on packet contents: the caller owns the bytes (`buf`, `off`, `len`), a reusable
 * {@link PacketInfo} receives the parse, and the result is a numeric {@link ParseResult} that the
 * engine can count per reason. Bytes are read by index only, and never at or beyond `off + len`.
 *
 * Supported: IPv4 (with options) and IPv6 (with hop-by-hop, routing with no segments left,
 * destination-options and fragment extension headers, at most {@link MAX_EXT_HEADERS}); carrying
 * TCP, UDP, ICMP echo request/reply (IPv4) and ICMPv6 echo request/reply.
 *
 * Conventions:
 * - **Ports.** TCP/UDP ports as on the wire. ICMP/ICMPv6 echo: the echo identifier is both
 *   `srcPort` and `dstPort`, so a reply (same identifier) matches the request's flow both ways.
 *   Non-first fragments carry no L4 header: ports are 0.
 * - **Fragments.** IPv4: `isFragment` when MF is set or the offset is non-zero, `isFirstFragment`
 *   when it is a fragment with offset 0 (its L4 header is parsed and must be complete, else
 *   `BAD_FRAGMENT`). IPv6: the fragment header is walked the same way; an atomic fragment (offset 0,
 *   M = 0) is not a fragment. For a non-first fragment the walk stops at the fragment header and
 *   `protocol` is its next header (which must be TCP/UDP/ICMPv6). Rewriting a first fragment
 *   updates the L4 checksum (it covers the whole datagram, whose only changing words are the
 *   pseudo-header's); rewriting a non-first fragment touches addresses and the IPv4 header checksum
 *   only. Reassembly is the engine's business.
 * - **Lengths.** `totalLen` (IPv4 total length, IPv6 40 + payload length) is authoritative: bytes
 *   between `off + totalLen` and `off + len` (link padding) are ignored and should not be forwarded.
 *   IPv6 jumbograms (payload length 0 + jumbo option) are not supported (they fail as
 *   `BAD_EXT_HEADER` / `BAD_L4_HEADER`), nor are IPv4 "BIG TCP" packets with total length 0.
 * - **Source routing.** An IPv6 routing header with segments left > 0 is `UNSUPPORTED_EXT_HEADER`,
 *   an IPv4 LSRR/SSRR option `UNSUPPORTED_IP_OPTION`: the L4 pseudo-header would use the route's
 *   final address, not the IP destination. Other IPv4 options are walked for well-formedness
 *   (`BAD_IP_OPTIONS`) and otherwise left alone.
 * - **Checksums** are not verified by {@link parsePacket} (the receiving kernel does that); the rewrite
 *   keeps a valid checksum valid and an invalid one invalid. Use {@link checksumsValid} when needed.
 *
 * @example
 * ```ts
 * const info = new PacketInfo();
 * const drops = new Uint32Array(PARSE_RESULT_COUNT);
 * function forward(buf: Uint8Array, off: number, len: number, instanceIp: number, chosenNsIp: number): void {
 *   const r = parsePacket(buf, off, len, info);
 *   if (r !== ParseResult.OK) { drops[r]++; return; }
 *   if (info.version === 4) {
 *     rewriteSrc4(buf, info, instanceIp);
 *     rewriteDst4(buf, info, chosenNsIp);
 *   }
 * }
 * ```
 * @module
 */

import {
  addrDelta4,
  addrDelta6,
  adjustChecksum,
  IPPROTO_ICMP,
  IPPROTO_ICMPV6,
  IPPROTO_TCP,
  IPPROTO_UDP,
  ipv4HeaderChecksum,
  l4Checksum4,
  l4Checksum6,
  partialChecksum4,
  partialChecksum6,
} from "./checksum.ts";

export { IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP } from "./checksum.ts";

/**
 * Outcome of {@link parsePacket}: `OK` or why the packet is dropped. Values are small integers
 * (0..{@link PARSE_RESULT_COUNT}-1) so the engine can count drops in a typed array indexed by reason.
 */
export const ParseResult = {
  /** Parsed; `PacketInfo` is filled. */
  OK: 0,
  /** Fewer bytes than the headers need, or the IP length field exceeds `len`. */
  TRUNCATED: 1,
  /** First nibble is neither 4 nor 6. */
  BAD_VERSION: 2,
  /** IPv4 IHL below 5. */
  BAD_HEADER_LEN: 3,
  /** IPv4 total length below the header length. */
  BAD_TOTAL_LEN: 4,
  /** Upper-layer protocol other than TCP, UDP, ICMP (v4) or ICMPv6 (v6). */
  UNSUPPORTED_PROTO: 5,
  /** IPv6 extension header we do not walk (ESP, AH, mobility, HIP, shim6, experimental) or a routing header with segments left. */
  UNSUPPORTED_EXT_HEADER: 6,
  /** Malformed IPv6 extension header chain (overruns the payload, hop-by-hop not first, two fragment headers). */
  BAD_EXT_HEADER: 7,
  /** More than {@link MAX_EXT_HEADERS} IPv6 extension headers. */
  EXT_HEADER_LIMIT: 8,
  /** L4 header shorter than its minimum or inconsistent (TCP data offset, UDP length). */
  BAD_L4_HEADER: 9,
  /** ICMP/ICMPv6 message other than echo request/reply (errors would need inner-packet translation). */
  UNSUPPORTED_ICMP: 10,
  /** First fragment too short to hold the whole L4 header, or an IPv4 TCP fragment at offset 8 (RFC 1858). */
  BAD_FRAGMENT: 11,
  /** IPv4 loose/strict source route option (the L4 pseudo-header would use the route's final address). */
  UNSUPPORTED_IP_OPTION: 12,
  /** Malformed IPv4 options (an option length below 2 or running past the header). */
  BAD_IP_OPTIONS: 13,
} as const;

/** One of the {@link ParseResult} values. */
export type ParseResult = (typeof ParseResult)[keyof typeof ParseResult];

/** Number of distinct {@link ParseResult} values (size of a per-reason counter array). */
export const PARSE_RESULT_COUNT = 14;

/** Lower-case names of the {@link ParseResult} values, indexed by value (for metrics labels and logs). */
export const PARSE_RESULT_NAMES: readonly string[] = [
  "ok",
  "truncated",
  "bad_version",
  "bad_header_len",
  "bad_total_len",
  "unsupported_proto",
  "unsupported_ext_header",
  "bad_ext_header",
  "ext_header_limit",
  "bad_l4_header",
  "unsupported_icmp",
  "bad_fragment",
  "unsupported_ip_option",
  "bad_ip_options",
];

/** Most IPv6 extension headers {@link parsePacket} walks before giving up with `EXT_HEADER_LIMIT`. */
export const MAX_EXT_HEADERS = 8;

/**
 * The result of {@link parsePacket}, meant to be allocated once per worker and reused for every
 * packet. All offsets are absolute indexes into the buffer that was parsed. Fields keep a fixed
 * numeric/boolean shape so the hot path stays monomorphic.
 */
export class PacketInfo {
  /** 4 or 6 (0 before a successful parse). */
  version = 0;
  /** Offset of the IP header (the `off` given to the parse). */
  off = 0;
  /** IPv4: IHL × 4. IPv6: 40 + all extension headers walked (i.e. `l4Offset - off`). */
  ipHeaderLen = 0;
  /** IPv4 total length; IPv6 40 + payload length. Forward exactly this many bytes. */
  totalLen = 0;
  /** Upper-layer protocol: 6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6. */
  protocol = 0;
  /** Offset of the L4 header (for a non-first fragment: of the fragment's data). */
  l4Offset = 0;
  /** Bytes covered by the L4 checksum: IP payload for TCP/ICMP, the UDP length for UDP; for fragments the bytes in this fragment. */
  l4Len = 0;
  /** Length of the L4 header: TCP data offset × 4, UDP 8, ICMP echo 8; 0 for a non-first fragment. */
  l4HeaderLen = 0;
  /** Offset of the source address (4 or 16 bytes). */
  srcOffset = 0;
  /** Offset of the destination address (4 or 16 bytes). */
  dstOffset = 0;
  /** IPv4 source address as an unsigned 32-bit number (0 for IPv6). Kept current by the rewrites. */
  src4 = 0;
  /** IPv4 destination address as an unsigned 32-bit number (0 for IPv6). Kept current by the rewrites. */
  dst4 = 0;
  /** Source port, or the echo identifier for ICMP echo; 0 for a non-first fragment. */
  srcPort = 0;
  /** Destination port, or the echo identifier for ICMP echo; 0 for a non-first fragment. */
  dstPort = 0;
  /** TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, ...); 0 otherwise. */
  tcpFlags = 0;
  /** ICMP/ICMPv6 type; -1 for other protocols and for non-first fragments. */
  icmpType = -1;
  /** True for any fragment (IPv4 MF or offset ≠ 0; IPv6 fragment header with M or offset ≠ 0). */
  isFragment = false;
  /** True for the fragment with offset 0. */
  isFirstFragment = false;
  /** Fragment offset in bytes (0 when not a fragment). */
  fragOffset = 0;
  /** IPv4 identification (16 bits, always filled) or IPv6 fragment identification (32 bits, fragments only). */
  fragId = 0;
  /**
   * Offset of the L4 checksum field that an address rewrite must adjust, or -1 when there is none:
   * ICMPv4 (no pseudo-header), UDP over IPv4 with checksum 0 (no checksum), non-first fragments.
   */
  l4ChecksumOffset = -1;
}

function read16(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}

function write16(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 8;
  b[o + 1] = v;
}

/**
 * Reads a big-endian unsigned 32-bit value (an IPv4 address) at `off`.
 *
 * @example
 * ```ts
 * read32(new Uint8Array([10, 30, 0, 1]), 0) === 0x0a1e0001;
 * ```
 */
export function read32(buf: Uint8Array, off: number): number {
  return ((buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]) >>> 0;
}

/** Writes `v` as a big-endian unsigned 32-bit value at `off`. */
export function write32(buf: Uint8Array, off: number, v: number): void {
  buf[off] = v >>> 24;
  buf[off + 1] = v >>> 16;
  buf[off + 2] = v >>> 8;
  buf[off + 3] = v;
}

/** True when the 16 bytes at `a[aOff..]` equal those at `b[bOff..]` (IPv6 address compare). */
export function ipv6Equal(a: Uint8Array, aOff: number, b: Uint8Array, bOff: number): boolean {
  for (let i = 0; i < 16; i++) {
    if (a[aOff + i] !== b[bOff + i]) return false;
  }
  return true;
}

/** Copies the 16 bytes at `src[srcOff..]` to `dst[dstOff..]` (ranges must not partly overlap). */
export function ipv6Copy(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number): void {
  for (let i = 0; i < 16; i++) dst[dstOff + i] = src[srcOff + i];
}

function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/**
 * A 52-bit hash of the IPv6 address at `buf[off..off+16]` as a non-negative integer-valued number,
 * usable as a `Map` key without building a string. Two 32-bit multiply-xorshift lanes with different
 * seeds (murmur3 finalizer) give 32 + 20 bits.
 *
 * **Collisions are possible** (about n²/2^53 for n addresses): a map keyed by this must keep the
 * address bytes in its value and callers must confirm a hit with {@link ipv6Equal}, treating a
 * mismatch as a miss (or chaining colliding entries).
 *
 * @example
 * ```ts
 * interface Entry { addr: Uint8Array } // the full address, to confirm a hit
 * declare const byAddr: Map<number, Entry>; // keyed by ipv6Key(entry.addr, 0)
 * declare const buf: Uint8Array, info: PacketInfo; // a parsed IPv6 packet
 * declare function use(e: Entry): void;
 * const e = byAddr.get(ipv6Key(buf, info.dstOffset));
 * if (e !== undefined && ipv6Equal(e.addr, 0, buf, info.dstOffset)) use(e);
 * ```
 */
export function ipv6Key(buf: Uint8Array, off: number): number {
  let a = 0x3c6ef372;
  let b = 0x1b873593;
  for (let i = 0; i < 16; i += 4) {
    const w = (buf[off + i] << 24) | (buf[off + i + 1] << 16) | (buf[off + i + 2] << 8) | buf[off + i + 3];
    a = Math.imul(a ^ w, 0x9e3779b1);
    a = (a << 13) | (a >>> 19);
    b = Math.imul(b + w, 0xcc9e2d51) ^ (b >>> 15);
    b = (b << 17) | (b >>> 15);
  }
  a = mix32(a ^ 16);
  b = mix32(b ^ 0x7f4a7c15);
  return (a >>> 0) * 0x100000 + (b >>> 12);
}

/**
 * Parses the IP packet at `buf[off..off+len]` into `out` (reused; every field relevant to the
 * packet is overwritten). Returns `ParseResult.OK` or a drop reason; never throws on packet
 * contents and never reads outside `[off, off + len)`. If `off`/`len` do not fit in `buf` the
 * result is `TRUNCATED`.
 *
 * @example
 * ```ts
 * declare const buf: Uint8Array, n: number; // n bytes of an IP packet at buf[0]
 * const info = new PacketInfo();
 * if (parsePacket(buf, 0, n, info) === ParseResult.OK && info.protocol === IPPROTO_TCP) {
 *   console.log(info.srcPort, info.dstPort);
 * }
 * ```
 */
export function parsePacket(buf: Uint8Array, off: number, len: number, out: PacketInfo): ParseResult {
  if (len < 1 || off < 0 || off + len > buf.length) return ParseResult.TRUNCATED;
  const ver = buf[off] >>> 4;
  if (ver === 4) return parse4(buf, off, len, out);
  if (ver === 6) return parse6(buf, off, len, out);
  return ParseResult.BAD_VERSION;
}

function parse4(buf: Uint8Array, off: number, len: number, out: PacketInfo): ParseResult {
  if (len < 20) return ParseResult.TRUNCATED;
  const ihl = (buf[off] & 0x0f) << 2;
  if (ihl < 20) return ParseResult.BAD_HEADER_LEN;
  const total = read16(buf, off + 2);
  if (total < ihl) return ParseResult.BAD_TOTAL_LEN;
  if (total > len) return ParseResult.TRUNCATED;
  const frag = read16(buf, off + 6);
  const fragOff = (frag & 0x1fff) << 3;
  const isFrag = (frag & 0x2000) !== 0 || fragOff !== 0;
  out.version = 4;
  out.off = off;
  out.ipHeaderLen = ihl;
  out.totalLen = total;
  out.protocol = buf[off + 9];
  out.srcOffset = off + 12;
  out.dstOffset = off + 16;
  out.src4 = read32(buf, off + 12);
  out.dst4 = read32(buf, off + 16);
  out.isFragment = isFrag;
  out.isFirstFragment = isFrag && fragOff === 0;
  out.fragOffset = fragOff;
  out.fragId = read16(buf, off + 4);
  out.l4Offset = off + ihl;
  out.l4Len = total - ihl;
  if (ihl > 20) {
    const r = checkOptions4(buf, off + 20, off + ihl);
    if (r !== ParseResult.OK) return r;
  }
  if (fragOff === 8 && out.protocol === IPPROTO_TCP) return ParseResult.BAD_FRAGMENT;
  return parseL4(buf, out, fragOff !== 0);
}

/** Walks IPv4 options in [p, end): rejects source routes and malformed lengths. */
function checkOptions4(buf: Uint8Array, p: number, end: number): ParseResult {
  while (p < end) {
    const t = buf[p];
    if (t === 0) break; // end of option list
    if (t === 1) {
      p++; // no-operation
      continue;
    }
    if (p + 1 >= end) return ParseResult.BAD_IP_OPTIONS;
    const l = buf[p + 1];
    if (l < 2 || p + l > end) return ParseResult.BAD_IP_OPTIONS;
    if (t === 0x83 || t === 0x89) return ParseResult.UNSUPPORTED_IP_OPTION;
    p += l;
  }
  return ParseResult.OK;
}

function isUnsupportedExt(nh: number): boolean {
  // ESP, AH, mobility, HIP, shim6, experimental (RFC 3692/4727).
  return nh === 50 || nh === 51 || nh === 135 || nh === 139 || nh === 140 || nh === 253 || nh === 254;
}

function parse6(buf: Uint8Array, off: number, len: number, out: PacketInfo): ParseResult {
  if (len < 40) return ParseResult.TRUNCATED;
  const total = 40 + read16(buf, off + 4);
  if (total > len) return ParseResult.TRUNCATED;
  const end = off + total;
  let nh = buf[off + 6];
  let p = off + 40;
  let count = 0;
  let isFrag = false;
  let fragOff = 0;
  let fragId = 0;
  let sawFrag = false;
  while (nh !== IPPROTO_TCP && nh !== IPPROTO_UDP && nh !== IPPROTO_ICMPV6) {
    if (nh === 0 || nh === 43 || nh === 60) {
      if (nh === 0 && p !== off + 40) return ParseResult.BAD_EXT_HEADER;
      if (p + 8 > end) return ParseResult.BAD_EXT_HEADER;
      const hl = (buf[p + 1] + 1) << 3;
      if (p + hl > end) return ParseResult.BAD_EXT_HEADER;
      if (nh === 43 && buf[p + 3] !== 0) return ParseResult.UNSUPPORTED_EXT_HEADER;
      nh = buf[p];
      p += hl;
    } else if (nh === 44) {
      if (sawFrag || p + 8 > end) return ParseResult.BAD_EXT_HEADER;
      sawFrag = true;
      const f = read16(buf, p + 2);
      fragOff = f & 0xfff8;
      fragId = read32(buf, p + 4);
      isFrag = fragOff !== 0 || (f & 1) !== 0;
      nh = buf[p];
      p += 8;
      if (fragOff !== 0) {
        // Non-first fragment: the rest is opaque payload.
        if (nh !== IPPROTO_TCP && nh !== IPPROTO_UDP && nh !== IPPROTO_ICMPV6) {
          return nh === 0 || nh === 43 || nh === 44 || nh === 60 || isUnsupportedExt(nh)
            ? ParseResult.UNSUPPORTED_EXT_HEADER
            : ParseResult.UNSUPPORTED_PROTO;
        }
        break;
      }
    } else {
      return isUnsupportedExt(nh) ? ParseResult.UNSUPPORTED_EXT_HEADER : ParseResult.UNSUPPORTED_PROTO;
    }
    if (++count > MAX_EXT_HEADERS) return ParseResult.EXT_HEADER_LIMIT;
  }
  out.version = 6;
  out.off = off;
  out.ipHeaderLen = p - off;
  out.totalLen = total;
  out.protocol = nh;
  out.srcOffset = off + 8;
  out.dstOffset = off + 24;
  out.src4 = 0;
  out.dst4 = 0;
  out.isFragment = isFrag;
  out.isFirstFragment = isFrag && fragOff === 0;
  out.fragOffset = fragOff;
  out.fragId = fragId;
  out.l4Offset = p;
  out.l4Len = end - p;
  return parseL4(buf, out, fragOff !== 0);
}

/** Fills the L4 part of `out` (protocol, l4Offset, l4Len, version, isFragment already set). */
function parseL4(buf: Uint8Array, out: PacketInfo, nonFirst: boolean): ParseResult {
  const proto = out.protocol;
  const v4 = out.version === 4;
  if (
    !(proto === IPPROTO_TCP || proto === IPPROTO_UDP ||
      (v4 ? proto === IPPROTO_ICMP : proto === IPPROTO_ICMPV6))
  ) {
    return ParseResult.UNSUPPORTED_PROTO;
  }
  out.tcpFlags = 0;
  out.icmpType = -1;
  if (nonFirst) {
    out.srcPort = 0;
    out.dstPort = 0;
    out.l4HeaderLen = 0;
    out.l4ChecksumOffset = -1;
    return ParseResult.OK;
  }
  const l4 = out.l4Offset;
  const l4Len = out.l4Len;
  const short = out.isFragment ? ParseResult.BAD_FRAGMENT : ParseResult.BAD_L4_HEADER;
  if (proto === IPPROTO_TCP) {
    if (l4Len < 20) return short;
    const doff = (buf[l4 + 12] >>> 4) << 2;
    if (doff < 20) return ParseResult.BAD_L4_HEADER;
    if (doff > l4Len) return short;
    out.srcPort = read16(buf, l4);
    out.dstPort = read16(buf, l4 + 2);
    out.tcpFlags = buf[l4 + 13];
    out.l4HeaderLen = doff;
    out.l4ChecksumOffset = l4 + 16;
    return ParseResult.OK;
  }
  if (l4Len < 8) return short;
  if (proto === IPPROTO_UDP) {
    const udpLen = read16(buf, l4 + 4);
    if (udpLen < 8) return ParseResult.BAD_L4_HEADER;
    if (!out.isFragment) {
      if (udpLen > l4Len) return ParseResult.BAD_L4_HEADER;
      out.l4Len = udpLen;
    }
    out.srcPort = read16(buf, l4);
    out.dstPort = read16(buf, l4 + 2);
    out.l4HeaderLen = 8;
    out.l4ChecksumOffset = v4 && buf[l4 + 6] === 0 && buf[l4 + 7] === 0 ? -1 : l4 + 6;
    return ParseResult.OK;
  }
  // ICMP (v4) or ICMPv6: echo request/reply only.
  const type = buf[l4];
  if (v4 ? type !== 8 && type !== 0 : type !== 128 && type !== 129) return ParseResult.UNSUPPORTED_ICMP;
  const id = read16(buf, l4 + 4);
  out.icmpType = type;
  out.srcPort = id;
  out.dstPort = id;
  out.l4HeaderLen = 8;
  out.l4ChecksumOffset = v4 ? -1 : l4 + 2;
  return ParseResult.OK;
}

/** Applies an address delta to the IPv4 header checksum (v4 only) and the L4 checksum field. */
function applyDelta(buf: Uint8Array, info: PacketInfo, delta: number, partial: boolean): void {
  if (info.version === 4) {
    const h = info.off + 10;
    write16(buf, h, adjustChecksum(read16(buf, h), delta, false));
  }
  const c = info.l4ChecksumOffset;
  if (c >= 0) {
    let v = adjustChecksum(read16(buf, c), delta, partial);
    if (v === 0 && !partial && info.protocol === IPPROTO_UDP) v = 0xffff;
    write16(buf, c, v);
  }
}

/**
 * Replaces the IPv4 source address of a parsed packet with `addr` (uint32) in place, updating the
 * IPv4 header checksum and, where the L4 checksum covers the pseudo-header (TCP, UDP with a
 * checksum, not for non-first fragments), the L4 checksum, incrementally (RFC 1624).
 *
 * `partial`: the L4 field holds a CHECKSUM_PARTIAL pseudo-header sum (virtio `NEEDS_CSUM`), not a
 * checksum; it is updated with the same arithmetic, uncomplemented.
 * `info` must come from a successful {@link parsePacket} of this buffer with `version === 4`.
 *
 * @example
 * ```ts
 * declare const buf: Uint8Array, info: PacketInfo; // an IPv4 packet parsed into info
 * rewriteSrc4(buf, info, 0x0a130007); // 10.19.0.7
 * ```
 */
export function rewriteSrc4(buf: Uint8Array, info: PacketInfo, addr: number, partial = false): void {
  const o = info.srcOffset;
  const old = read32(buf, o);
  write32(buf, o, addr);
  info.src4 = addr >>> 0;
  applyDelta(buf, info, addrDelta4(old, addr), partial);
}

/** As {@link rewriteSrc4}, for the IPv4 destination address. */
export function rewriteDst4(buf: Uint8Array, info: PacketInfo, addr: number, partial = false): void {
  const o = info.dstOffset;
  const old = read32(buf, o);
  write32(buf, o, addr);
  info.dst4 = addr >>> 0;
  applyDelta(buf, info, addrDelta4(old, addr), partial);
}

/**
 * Replaces both IPv4 addresses with one checksum update each (cheaper than two calls).
 * Same contract as {@link rewriteSrc4}.
 */
export function rewriteAddrs4(
  buf: Uint8Array,
  info: PacketInfo,
  src: number,
  dst: number,
  partial = false,
): void {
  const so = info.srcOffset;
  const dO = info.dstOffset;
  const delta = addrDelta4(read32(buf, so), src) + addrDelta4(read32(buf, dO), dst);
  write32(buf, so, src);
  write32(buf, dO, dst);
  info.src4 = src >>> 0;
  info.dst4 = dst >>> 0;
  applyDelta(buf, info, delta, partial);
}

/**
 * Replaces the IPv6 source address of a parsed packet with the 16 bytes at `addr[addrOff..]`, in
 * place, updating the TCP/UDP/ICMPv6 checksum incrementally (IPv6 has no header checksum; non-first
 * fragments have no L4 checksum to update). `partial` as for {@link rewriteSrc4}.
 * `addr` must not be a partly overlapping range of `buf`.
 *
 * @example
 * ```ts
 * declare const buf: Uint8Array, info: PacketInfo; // an IPv6 packet parsed into info
 * declare const instanceIp6: Uint8Array; // 16 bytes
 * rewriteSrc6(buf, info, instanceIp6, 0);
 * ```
 */
export function rewriteSrc6(
  buf: Uint8Array,
  info: PacketInfo,
  addr: Uint8Array,
  addrOff: number,
  partial = false,
): void {
  const o = info.srcOffset;
  const delta = addrDelta6(buf, o, addr, addrOff);
  ipv6Copy(buf, o, addr, addrOff);
  applyDelta(buf, info, delta, partial);
}

/** As {@link rewriteSrc6}, for the IPv6 destination address. */
export function rewriteDst6(
  buf: Uint8Array,
  info: PacketInfo,
  addr: Uint8Array,
  addrOff: number,
  partial = false,
): void {
  const o = info.dstOffset;
  const delta = addrDelta6(buf, o, addr, addrOff);
  ipv6Copy(buf, o, addr, addrOff);
  applyDelta(buf, info, delta, partial);
}

/**
 * The IPv4 header checksum the parsed packet should carry (full recomputation), or -1 for IPv6.
 */
export function computeIpHeaderChecksum(buf: Uint8Array, info: PacketInfo): number {
  return info.version === 4 ? ipv4HeaderChecksum(buf, info.off, info.ipHeaderLen) : -1;
}

/**
 * The L4 checksum the parsed packet should carry, by full recomputation over pseudo-header and
 * segment (ICMPv4: segment only; UDP: 0 is returned as 0xFFFF). With `partial`, the
 * CHECKSUM_PARTIAL value instead (pseudo-header sum; -1 for ICMPv4). Returns -1 for fragments
 * (the checksum covers the reassembled datagram).
 */
export function computeL4Checksum(buf: Uint8Array, info: PacketInfo, partial = false): number {
  if (info.isFragment) return -1;
  const p = info.protocol;
  if (info.version === 4) {
    if (partial) {
      return p === IPPROTO_ICMP ? -1 : partialChecksum4(buf, info.srcOffset, info.dstOffset, p, info.l4Len);
    }
    return l4Checksum4(buf, info.srcOffset, info.dstOffset, p, info.l4Offset, info.l4Len);
  }
  if (partial) return partialChecksum6(buf, info.srcOffset, info.dstOffset, p, info.l4Len);
  return l4Checksum6(buf, info.srcOffset, info.dstOffset, p, info.l4Offset, info.l4Len);
}

function l4FieldOffset(info: PacketInfo): number {
  const p = info.protocol;
  return info.l4Offset + (p === IPPROTO_TCP ? 16 : p === IPPROTO_UDP ? 6 : 2);
}

/**
 * Recomputes and writes every checksum of a parsed packet: the IPv4 header checksum, and the L4
 * checksum unless the packet is a fragment or UDP/IPv4 with checksum 0 (which stays 0). With
 * `partial`, writes the CHECKSUM_PARTIAL pseudo-header sum into the TCP/UDP/ICMPv6 field instead.
 * Not for the per-packet path (it touches every byte); for building packets and for repairs.
 */
export function fixChecksums(buf: Uint8Array, info: PacketInfo, partial = false): void {
  if (info.version === 4) write16(buf, info.off + 10, ipv4HeaderChecksum(buf, info.off, info.ipHeaderLen));
  if (info.isFragment) return;
  const udp4NoSum = info.version === 4 && info.protocol === IPPROTO_UDP && info.l4ChecksumOffset < 0;
  if (udp4NoSum) return;
  const c = computeL4Checksum(buf, info, partial);
  if (c >= 0) write16(buf, l4FieldOffset(info), c);
}

/**
 * True when the parsed packet's checksums are correct: the IPv4 header checksum, and the L4
 * checksum of a non-fragment (UDP/IPv4 with checksum 0 counts as correct). With `partial`, the L4
 * field must hold the CHECKSUM_PARTIAL pseudo-header sum. Full recomputation; not for the hot path.
 */
export function checksumsValid(buf: Uint8Array, info: PacketInfo, partial = false): boolean {
  if (
    info.version === 4 && read16(buf, info.off + 10) !== ipv4HeaderChecksum(buf, info.off, info.ipHeaderLen)
  ) {
    return false;
  }
  if (info.isFragment) return true;
  if (info.version === 4 && info.protocol === IPPROTO_UDP && info.l4ChecksumOffset < 0) return true;
  const c = computeL4Checksum(buf, info, partial);
  return c >= 0 && read16(buf, l4FieldOffset(info)) === c;
}
