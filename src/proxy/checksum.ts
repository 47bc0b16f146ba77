/**
 * Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624) over byte views.
 *
 * Everything here is pure and allocation-free: plain numbers in, plain numbers out, bytes read by
 * index from a caller-owned `Uint8Array`. Words are big-endian 16-bit values, as on the wire.
 *
 * Vocabulary used throughout:
 * - a **sum** is a ones'-complement sum folded to 16 bits (range 1..0xFFFF for any input that is not
 *   all zero) and NOT complemented;
 * - a **checksum** is the complement of a sum, i.e. the value stored in a header field;
 * - a **partial** field (Linux `CHECKSUM_PARTIAL`, virtio `VIRTIO_NET_HDR_F_NEEDS_CSUM`) holds the
 *   folded, NOT complemented pseudo-header sum; the device (or kernel) adds the payload later.
 *
 * @example
 * ```ts
 * import { adjustChecksum, addrDelta4 } from "./checksum.ts";
 * // The IPv4 header checksum after the source address changed from 10.30.0.1 to 10.19.0.7:
 * const next = adjustChecksum(0xb861, addrDelta4(0x0a1e0001, 0x0a130007), false);
 * ```
 * @module
 */

/** IP protocol number of ICMP (IPv4). */
export const IPPROTO_ICMP = 1;
/** IP protocol number of TCP. */
export const IPPROTO_TCP = 6;
/** IP protocol number of UDP. */
export const IPPROTO_UDP = 17;
/** IP protocol (next header) number of ICMPv6. */
export const IPPROTO_ICMPV6 = 58;

/**
 * Folds a non-negative 32-bit accumulator to a 16-bit ones'-complement sum (end-around carry).
 * Not complemented. `foldSum(0x1fffe) === 0xffff`.
 */
export function foldSum(sum: number): number {
  sum = (sum & 0xffff) + (sum >>> 16);
  return (sum & 0xffff) + (sum >>> 16);
}

// A two-entry cache of a DataView per ArrayBuffer, so summing alternately over a source buffer and an
// arena does not allocate. Module-level state is a cache only (each Worker has its own module instance).
let cacheBuf0: ArrayBufferLike | null = null;
let cacheDv0: DataView = new DataView(new ArrayBuffer(0));
let cacheBuf1: ArrayBufferLike | null = null;
let cacheDv1: DataView = cacheDv0;

function viewOf(buf: Uint8Array): DataView {
  const b = buf.buffer;
  if (b === cacheBuf0) return cacheDv0;
  const dv = b === cacheBuf1 ? cacheDv1 : new DataView(b);
  cacheBuf1 = cacheBuf0;
  cacheDv1 = cacheDv0;
  cacheBuf0 = b;
  cacheDv0 = dv;
  return dv;
}

/**
 * Ones'-complement sum (RFC 1071) of `len` bytes of `buf` from `off`, taken as big-endian 16-bit
 * words (an odd last byte padded with zero), plus `initial`; folded to 16 bits, not complemented.
 * 32-bit words are read through a cached `DataView` and their halves added into two small-integer
 * accumulators (no float math, no allocation), folded every 128 KiB. `initial` must be a
 * non-negative integer below 2^32. The range must lie inside `buf` (not checked).
 *
 * @example
 * ```ts
 * import { onesSum } from "./checksum.ts";
 * const s = onesSum(new Uint8Array([0x45, 0x00, 0x00, 0x73]), 0, 4, 0); // 0x4573
 * ```
 */
export function onesSum(buf: Uint8Array, off: number, len: number, initial: number): number {
  const dv = viewOf(buf);
  let i = buf.byteOffset + off;
  let s = (initial & 0xffff) + (initial >>> 16);
  const end4 = i + (len & ~3);
  while (i < end4) {
    // At most 32 Ki words per round: each accumulator stays below 2^31.
    const stop = end4 - i > 0x20000 ? i + 0x20000 : end4;
    let hi = 0;
    let lo = 0;
    for (; i < stop; i += 4) {
      const w = dv.getUint32(i);
      hi += w >>> 16;
      lo += w & 0xffff;
    }
    s += (hi & 0xffff) + (hi >>> 16) + (lo & 0xffff) + (lo >>> 16);
    s = (s & 0xffff) + (s >>> 16);
  }
  if (len & 2) {
    s += dv.getUint16(i);
    i += 2;
  }
  if (len & 1) s += dv.getUint8(i) << 8;
  s = (s & 0xffff) + (s >>> 16);
  return (s & 0xffff) + (s >>> 16);
}

/**
 * The value a full L4 checksum field gets from the sum over its range the way the kernel's
 * `skb_checksum_help` stores it: complemented, a computed 0 stored as 0xFFFF (`CSUM_MANGLED_0`).
 */
export function mangledChecksum(sum: number): number {
  const c = ~sum & 0xffff;
  return c === 0 ? 0xffff : c;
}

/**
 * Completes a CHECKSUM_PARTIAL packet in place: the L4 checksum field (at `csumStart +
 * csumOffset` from the packet start) holds the pseudo-header sum; the result is the full checksum
 * (0 stored as 0xFFFF, as `skb_checksum_help` does). Returns false when the offsets do not fit.
 *
 * @example
 * ```ts
 * import { completeChecksum } from "./checksum.ts";
 * const pkt = new Uint8Array(60); // an IPv4/UDP packet whose checksum field holds the pseudo sum
 * const done = completeChecksum(pkt, 0, pkt.length, 20, 6);
 * ```
 */
export function completeChecksum(
  buf: Uint8Array,
  off: number,
  len: number,
  csumStart: number,
  csumOffset: number,
): boolean {
  const field = off + csumStart + csumOffset;
  if (csumStart < 0 || csumStart >= len || field + 2 > off + len) return false;
  const c = mangledChecksum(onesSum(buf, off + csumStart, len - csumStart, 0));
  buf[field] = c >>> 8;
  buf[field + 1] = c & 0xff;
  return true;
}

/**
 * Unfolded sum of the IPv4 pseudo-header (RFC 793/768): source and destination address (read from
 * `buf` at `srcOff` / `dstOff`), zero + protocol, and the upper-layer length. Fold with
 * {@link foldSum} or pass as `initial` to {@link onesSum}.
 */
export function pseudoSum4(
  buf: Uint8Array,
  srcOff: number,
  dstOff: number,
  proto: number,
  l4Len: number,
): number {
  return ((buf[srcOff] << 8) | buf[srcOff + 1]) + ((buf[srcOff + 2] << 8) | buf[srcOff + 3]) +
    ((buf[dstOff] << 8) | buf[dstOff + 1]) + ((buf[dstOff + 2] << 8) | buf[dstOff + 3]) +
    proto + (l4Len & 0xffff);
}

/**
 * Unfolded sum of the IPv6 pseudo-header (RFC 8200 §8.1): 16-byte source and destination address
 * (read from `buf` at `srcOff` / `dstOff`), the 32-bit upper-layer length and the next-header value.
 */
export function pseudoSum6(
  buf: Uint8Array,
  srcOff: number,
  dstOff: number,
  proto: number,
  l4Len: number,
): number {
  let sum = proto + (l4Len >>> 16) + (l4Len & 0xffff);
  for (let i = 0; i < 16; i += 2) {
    sum += ((buf[srcOff + i] << 8) | buf[srcOff + i + 1]) + ((buf[dstOff + i] << 8) | buf[dstOff + i + 1]);
  }
  return sum;
}

/**
 * The IPv4 header checksum of the `headerLen`-byte header at `off`, computed as if the checksum
 * field (bytes 10..11) were zero. Returns the value to store (0..0xFFFE).
 *
 * @example
 * ```ts
 * // 4500 0073 0000 4000 4011 xxxx c0a8 0001 c0a8 00c7  ->  0xb861
 * ```
 */
export function ipv4HeaderChecksum(buf: Uint8Array, off: number, headerLen: number): number {
  // At most 30 words: a plain loop beats the general sum's set-up on a header this short.
  let s = 0;
  for (let i = 0; i < headerLen; i += 2) if (i !== 10) s += (buf[off + i] << 8) | buf[off + i + 1];
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/**
 * Offset of the checksum field inside an upper-layer header for `proto`
 * (TCP 16, UDP 6, ICMP/ICMPv6 2), or -1 for protocols this module does not know.
 */
export function l4ChecksumFieldOffset(proto: number): number {
  switch (proto) {
    case IPPROTO_TCP:
      return 16;
    case IPPROTO_UDP:
      return 6;
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6:
      return 2;
    default:
      return -1;
  }
}

/** Sum of the L4 segment skipping its checksum field, added to `initial`; folded. */
function segmentSum(
  buf: Uint8Array,
  l4Off: number,
  l4Len: number,
  fieldOff: number,
  initial: number,
): number {
  // fieldOff is even, so splitting around it keeps word alignment.
  const head = onesSum(buf, l4Off, fieldOff, initial);
  return onesSum(buf, l4Off + fieldOff + 2, l4Len - fieldOff - 2, head);
}

/** Applies the transmit rules: complement; UDP sends a computed 0 as 0xFFFF (RFC 768). */
function finish(sum: number, proto: number): number {
  const c = ~sum & 0xffff;
  return c === 0 && proto === IPPROTO_UDP ? 0xffff : c;
}

/**
 * Full checksum of an upper-layer segment carried in IPv4: TCP and UDP include the pseudo-header,
 * ICMP (protocol 1) does not. The segment's own checksum field is treated as zero. Returns the
 * value to store (UDP: 0 is returned as 0xFFFF), or -1 for an unknown protocol or a segment too
 * short to hold its checksum field.
 *
 * @param buf bytes holding the whole packet
 * @param srcOff offset of the 4-byte source address
 * @param dstOff offset of the 4-byte destination address
 * @param proto IP protocol number
 * @param l4Off offset of the upper-layer header
 * @param l4Len bytes covered by the checksum (TCP/ICMP: IP payload; UDP: the UDP length field)
 */
export function l4Checksum4(
  buf: Uint8Array,
  srcOff: number,
  dstOff: number,
  proto: number,
  l4Off: number,
  l4Len: number,
): number {
  const f = l4ChecksumFieldOffset(proto);
  if (f < 0 || proto === IPPROTO_ICMPV6 || l4Len < f + 2) return -1;
  const init = proto === IPPROTO_ICMP ? 0 : pseudoSum4(buf, srcOff, dstOff, proto, l4Len);
  return finish(segmentSum(buf, l4Off, l4Len, f, init), proto);
}

/**
 * Full checksum of an upper-layer segment (TCP, UDP, ICMPv6) carried in IPv6, pseudo-header
 * included, the checksum field treated as zero. Returns the value to store (UDP: 0 → 0xFFFF), or
 * -1 for other protocols or a segment too short to hold its checksum field.
 * Parameters as for {@link l4Checksum4} but with 16-byte addresses.
 */
export function l4Checksum6(
  buf: Uint8Array,
  srcOff: number,
  dstOff: number,
  proto: number,
  l4Off: number,
  l4Len: number,
): number {
  const f = l4ChecksumFieldOffset(proto);
  if (f < 0 || proto === IPPROTO_ICMP || l4Len < f + 2) return -1;
  return finish(segmentSum(buf, l4Off, l4Len, f, pseudoSum6(buf, srcOff, dstOff, proto, l4Len)), proto);
}

/**
 * The value a CHECKSUM_PARTIAL packet carries in its L4 checksum field for IPv4: the folded,
 * not complemented pseudo-header sum.
 */
export function partialChecksum4(
  buf: Uint8Array,
  srcOff: number,
  dstOff: number,
  proto: number,
  l4Len: number,
): number {
  return foldSum(pseudoSum4(buf, srcOff, dstOff, proto, l4Len));
}

/** As {@link partialChecksum4}, for IPv6 (16-byte addresses, 32-bit length). */
export function partialChecksum6(
  buf: Uint8Array,
  srcOff: number,
  dstOff: number,
  proto: number,
  l4Len: number,
): number {
  return foldSum(pseudoSum6(buf, srcOff, dstOff, proto, l4Len));
}

/**
 * RFC 1624 eqn. 3 incremental update: returns the new field value after words covered by the
 * checksum changed, where `delta` is the unfolded sum over the changed words of `~old + new`
 * (see {@link addrDelta4}, {@link delta16}). `delta` must be below 2^31.
 *
 * With `partial = false` the field is a complemented checksum: `HC' = ~(~HC + delta)`; the result is
 * never 0xFFFF unless it is for UDP, which the caller handles (a UDP result of 0 must be sent as
 * 0xFFFF). With `partial = true` the field holds a folded, not complemented sum (CHECKSUM_PARTIAL):
 * `S' = S + delta`, folded.
 *
 * @example
 * ```ts
 * const hc = adjustChecksum(0xb861, delta16(0x0073, 0x0074), false); // total length grew by one
 * ```
 */
export function adjustChecksum(field: number, delta: number, partial: boolean): number {
  let s = (partial ? field : ~field & 0xffff) + delta;
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  return partial ? s : ~s & 0xffff;
}

/** The incremental-update delta (`~old + new`) for one 16-bit word changing from `oldWord` to `newWord`. */
export function delta16(oldWord: number, newWord: number): number {
  return (~oldWord & 0xffff) + (newWord & 0xffff);
}

/** The incremental-update delta for a 32-bit value (e.g. an IPv4 address) changing from `oldV` to `newV`. */
export function addrDelta4(oldV: number, newV: number): number {
  return (~oldV >>> 16 & 0xffff) + (~oldV & 0xffff) + (newV >>> 16 & 0xffff) + (newV & 0xffff);
}

/**
 * The incremental-update delta for a 16-byte IPv6 address changing from the bytes at
 * `oldBuf[oldOff..+16]` to those at `newBuf[newOff..+16]`.
 */
export function addrDelta6(oldBuf: Uint8Array, oldOff: number, newBuf: Uint8Array, newOff: number): number {
  let d = 0;
  for (let i = 0; i < 16; i += 2) {
    d += (~((oldBuf[oldOff + i] << 8) | oldBuf[oldOff + i + 1]) & 0xffff) +
      ((newBuf[newOff + i] << 8) | newBuf[newOff + i + 1]);
  }
  return d;
}
