/**
 * Userspace segmentation (GSO) and coalescing (GRO) of TCP/UDP packets for the tunnel.
 *
 * The TUN is opened with `IFF_VNET_HDR` and TSO/CSUM(/USO) offloads, so a read returns a 10-byte
 * `virtio_net_hdr` plus a "super-packet" of up to 64 KB. The underlay carries MTU-sized IP packets,
 * one per UDP datagram:
 *
 * - {@link Segmenter} splits a super-packet into segments the way the kernel's software GSO
 *   (`tcp_gso_segment` / `__udp_gso_segment` + `inet_gso_segment` / `ipv6_gso_segment`) would:
 *   headers copied, IPv4 total length + ID (+1 per segment) + header checksum, IPv6 payload length,
 *   TCP sequence number, FIN/PSH only on the last segment, CWR only on the first; UDP length per
 *   datagram. The L4 checksum is either complete (`"full"`: raw mode, for old Go nodes that write
 *   the packet straight into their TUN) or the CHECKSUM_PARTIAL pseudo-header sum (`"partial"`:
 *   fast mode, the receiver writes the segment with `NEEDS_CSUM` and its kernel finishes it).
 * - {@link Coalescer} does the receiving side: it groups consecutive TCP segments of one flow into a
 *   super-packet and emits it with a `virtio_net_hdr` (`gso_type` TCPV4/TCPV6, `NEEDS_CSUM`), ready
 *   for one TUN write.
 *
 * Hot-path rules: no exceptions on packet contents (results are numeric codes), no per-packet
 * objects (caller-owned arenas and typed arrays, reusable instances). Bulk copies use
 * `copyWithin` when source and destination share an `ArrayBuffer` (zero allocation: put the TUN read
 * buffer / receive buffers and the arena in one `ArrayBuffer`); otherwise each copied chunk costs one
 * short-lived `subarray` view. Checksums come from checksum.ts (the one ones'-complement sum).
 *
 * Full checksums follow the kernel's `skb_checksum_help`: a computed 0 is stored as 0xFFFF
 * (`CSUM_MANGLED_0`) for TCP as well as UDP, so segments are byte-identical to what the kernel emits
 * when it segments and checksums in software.
 *
 * @example
 * ```ts
 * import { SegmentBatch, Segmenter } from "./offload.ts";
 * import { VNET_HDR_LEN, VnetHdr } from "../../ffi/vnet.ts";
 * const seg = new Segmenter();
 * const batch = new SegmentBatch({ mtu: 1400, headroom: 4, capacity: 64, packed: true });
 * const readBuf = new Uint8Array(VNET_HDR_LEN + 65535); // a TUN read: virtio header + super-packet
 * const nread = 1500;
 * const drops = new Float64Array(16);
 * const hdr = new VnetHdr().decode(readBuf, 0);
 * const n = seg.segment(readBuf, VNET_HDR_LEN, nread - VNET_HDR_LEN, hdr, "partial", batch);
 * if (n < 0) drops[-n]++;
 * // else: batch.offsets[seg.first .. seg.first + n) hold the segments, batch.lengths their sizes
 * ```
 * @module
 */

import {
  foldSum,
  IPPROTO_TCP,
  IPPROTO_UDP,
  ipv4HeaderChecksum,
  mangledChecksum,
  onesSum,
  pseudoSum4,
  pseudoSum6,
} from "./checksum.ts";
import { PacketInfo, parsePacket, ParseResult } from "./packet.ts";
// ffi/vnet.ts is pure (plain byte arrays, no Deno.*, no FFI), so the data plane may share it.
import {
  VNET_F_NEEDS_CSUM,
  VNET_GSO_ECN,
  VNET_GSO_NONE,
  VNET_GSO_TCPV4,
  VNET_GSO_TCPV6,
  VNET_GSO_UDP_L4,
  VNET_HDR_LEN,
  VnetHdr,
} from "../../ffi/vnet.ts";

/** TCP flag bits (byte 13 of the TCP header). */
const FIN = 0x01;
const SYN = 0x02;
const RST = 0x04;
const PSH = 0x08;
const ACK = 0x10;
const URG = 0x20;
const CWR = 0x80;

/** Largest IP packet (IPv4 total length, IPv6 40 + payload length) a coalesced super-packet may reach. */
export const MAX_SUPER_PACKET = 65535;

/** Thrown for bad configuration (constructor options); never on the per-packet path. */
export class OffloadConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "OffloadConfigError";
  }
}

// ---------------------------------------------------------------------------------------------
// Byte helpers
// ---------------------------------------------------------------------------------------------

function read16(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}

function write16(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 8;
  b[o + 1] = v;
}

function read32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

function write32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = v >>> 16;
  b[o + 2] = v >>> 8;
  b[o + 3] = v;
}

/**
 * Copies `n` bytes from `src[srcOff..]` to `dst[dstOff..]`. When both views share an ArrayBuffer this
 * is a `copyWithin` on a cached whole-buffer view (no allocation); small copies between different
 * buffers are a byte loop; larger ones make one `subarray` view. The ranges must not overlap.
 */
function copyBytes(src: Uint8Array, srcOff: number, dst: Uint8Array, dstOff: number, n: number): void {
  if (src.buffer === dst.buffer) {
    const s = src.byteOffset + srcOff;
    bytesOf(dst).copyWithin(dst.byteOffset + dstOff, s, s + n);
    return;
  }
  if (n <= 64) {
    for (let i = 0; i < n; i++) dst[dstOff + i] = src[srcOff + i];
    return;
  }
  dst.set(src.subarray(srcOff, srcOff + n), dstOff);
}

// A two-entry cache of a whole-buffer Uint8Array per ArrayBuffer, so copying alternately between a
// source buffer and an arena does not allocate. Module-level state is a cache only.
let cacheBuf0: ArrayBufferLike | null = null;
let cacheU80: Uint8Array = new Uint8Array(0);
let cacheBuf1: ArrayBufferLike | null = null;
let cacheU81: Uint8Array = cacheU80;

function bytesOf(buf: Uint8Array): Uint8Array {
  const b = buf.buffer;
  if (b === cacheBuf0) return cacheU80;
  const u8 = b === cacheBuf1 ? cacheU81 : new Uint8Array(b);
  cacheBuf1 = cacheBuf0;
  cacheU81 = cacheU80;
  cacheBuf0 = b;
  cacheU80 = u8;
  return u8;
}

// ---------------------------------------------------------------------------------------------
// Segmentation
// ---------------------------------------------------------------------------------------------

/**
 * Failure codes of {@link Segmenter.segment} (negative, so a result ≥ 0 is a segment count).
 * `-code` indexes {@link GSO_ERROR_NAMES}; on failure the batch is left unchanged.
 */
export const GsoError = {
  /** The batch has too few free slots or bytes for all segments; flush it and call again. */
  NO_SPACE: -1,
  /** Unknown `gso_type`, obsolete UFO (3), the ECN bit alone or with UDP_L4 (as Linux: -EINVAL). */
  BAD_GSO_TYPE: -2,
  /** `gso_size` 0 with a GSO type. */
  BAD_GSO_SIZE: -3,
  /** `csum_start` outside the packet, below 20, or (GSO) not the parsed L4 header. */
  BAD_CSUM_START: -4,
  /** `csum_offset` running past the packet, or (GSO) not 16 for TCP / 6 for UDP. */
  BAD_CSUM_OFFSET: -5,
  /** `hdr_len` larger than the packet (Linux rejects this on TUN writes too). */
  BAD_HDR_LEN: -6,
  /** The super-packet does not parse (see {@link Segmenter.parseResult}), is a fragment, or its UDP length disagrees with the IP length. */
  BAD_PACKET: -7,
  /** `gso_type` does not match the packet: TCPV4 on non-IPv4-TCP, TCPV6 on non-IPv6-TCP, UDP_L4 on non-UDP. */
  PROTO_MISMATCH: -8,
  /** A segment (headers + `gso_size`, or a non-GSO packet) is larger than the batch's MTU. */
  TOO_BIG: -9,
  /** UDP_L4 without `NEEDS_CSUM` (Linux rejects it). */
  NO_NEEDS_CSUM: -10,
} as const;

/** One of the {@link GsoError} values. */
export type GsoError = (typeof GsoError)[keyof typeof GsoError];

/** Names of the {@link GsoError} codes indexed by `-code` (index 0 is "ok"). */
export const GSO_ERROR_NAMES: readonly string[] = [
  "ok",
  "no_space",
  "bad_gso_type",
  "bad_gso_size",
  "bad_csum_start",
  "bad_csum_offset",
  "bad_hdr_len",
  "bad_packet",
  "proto_mismatch",
  "too_big",
  "no_needs_csum",
];

/** How {@link Segmenter.segment} leaves the L4 checksum of each segment. */
export type SegmentMode = "full" | "partial";

/** Options of a {@link SegmentBatch}. */
export interface SegmentBatchOptions {
  /** Largest IP packet a segment may be (the tunnel's inner MTU), 68..65535. */
  mtu: number;
  /** Bytes reserved before every segment (e.g. 4 for a fast-mode tunnel header). Default 0. */
  headroom?: number;
  /** Most segments the batch holds. Default 64 (or what `buf` holds in slot layout). */
  capacity?: number;
  /**
   * Layout. `false` (default): fixed slots of `headroom + mtu` bytes, segment `i` at
   * `i * slotSize + headroom`. `true`: back to back, each segment right after the previous one's
   * end plus `headroom`, so the segments of one super-packet form one `UDP_SEGMENT` buffer whose
   * datagram size is {@link Segmenter.datagramSize}.
   */
  packed?: boolean;
  /** Arena to write into (default: a new one of `capacity * (headroom + mtu)` bytes). */
  buf?: Uint8Array;
}

/**
 * A caller-owned output arena for segments, reused across batches. Segments are appended by
 * {@link Segmenter.segment} until {@link reset}; segment `i` is the IP packet at
 * `buf[offsets[i] .. offsets[i] + lengths[i])`, with `headroom` free bytes right before it.
 *
 * @example
 * ```ts
 * const batch = new SegmentBatch({ mtu: 1400, headroom: 4, capacity: 128 });
 * // ... segment() a few super-packets, send batch.count datagrams, then:
 * batch.reset();
 * ```
 */
export class SegmentBatch {
  /** The arena. */
  readonly buf: Uint8Array;
  /** Largest segment (IP packet) in bytes. */
  readonly mtu: number;
  /** Free bytes before each segment. */
  readonly headroom: number;
  /** Back-to-back layout (see {@link SegmentBatchOptions.packed}). */
  readonly packed: boolean;
  /** Most segments the batch holds. */
  readonly capacity: number;
  /** Offset in `buf` of each segment's IP header. */
  readonly offsets: Uint32Array;
  /** IP length of each segment. */
  readonly lengths: Uint32Array;
  /** Segments written since the last reset. */
  count = 0;
  /** Bytes of `buf` used since the last reset (headroom included). */
  used = 0;

  constructor(opts: SegmentBatchOptions) {
    const mtu = opts.mtu;
    const headroom = opts.headroom ?? 0;
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) {
      throw new OffloadConfigError(`SegmentBatch: mtu must be an integer in 68..65535, got ${mtu}`);
    }
    if (!Number.isInteger(headroom) || headroom < 0 || headroom > 1024) {
      throw new OffloadConfigError(`SegmentBatch: headroom must be an integer in 0..1024, got ${headroom}`);
    }
    const slot = headroom + mtu;
    const capacity = opts.capacity ?? (opts.buf ? Math.floor(opts.buf.length / slot) : 64);
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new OffloadConfigError(`SegmentBatch: capacity must be a positive integer, got ${capacity}`);
    }
    const buf = opts.buf ?? new Uint8Array(capacity * slot);
    if (!opts.packed && buf.length < capacity * slot) {
      throw new OffloadConfigError(
        `SegmentBatch: buf of ${buf.length} bytes cannot hold ${capacity} slots of ${slot} bytes`,
      );
    }
    if (buf.length < slot) {
      throw new OffloadConfigError(`SegmentBatch: buf of ${buf.length} bytes cannot hold one segment`);
    }
    this.buf = buf;
    this.mtu = mtu;
    this.headroom = headroom;
    this.packed = opts.packed ?? false;
    this.capacity = capacity;
    this.offsets = new Uint32Array(capacity);
    this.lengths = new Uint32Array(capacity);
  }

  /** Bytes from one slot start to the next in slot layout (`headroom + mtu`). */
  get slotSize(): number {
    return this.headroom + this.mtu;
  }

  /** Forgets all segments (the arena is reused from the start). */
  reset(): void {
    this.count = 0;
    this.used = 0;
  }
}

/**
 * Splits super-packets into MTU-sized segments. One instance per worker; it keeps a reusable
 * {@link PacketInfo} and describes its last successful call in its public fields.
 *
 * @example
 * ```ts
 * import { SegmentBatch, Segmenter } from "./offload.ts";
 * import { VnetHdr } from "../../ffi/vnet.ts";
 * const seg = new Segmenter();
 * const batch = new SegmentBatch({ mtu: 1400, headroom: 0, capacity: 64, packed: true });
 * const buf = new Uint8Array(10 + 1500); // virtio header + packet, as read from the TUN
 * const len = buf.length;
 * const n = seg.segment(buf, 10, len - 10, new VnetHdr().decode(buf, 0), "full", batch);
 * for (let i = seg.first; i < seg.first + n; i++) console.log(batch.offsets[i], batch.lengths[i]);
 * ```
 */
export class Segmenter {
  /** Index in the batch of the first segment written by the last successful call. */
  first = 0;
  /** Segments written by the last successful call. */
  count = 0;
  /** Payload bytes per segment of the last call (all but the last segment carry exactly this). */
  segmentSize = 0;
  /**
   * `headroom + ` IP length of every segment but the last (which may be shorter) of the last call:
   * the `UDP_SEGMENT` size when the batch is packed.
   */
  datagramSize = 0;
  /** The segments of the last call carry a CHECKSUM_PARTIAL L4 field (see csumStart/csumOffset). */
  partial = false;
  /** Offset of the L4 header in each segment (when `partial`), else -1. */
  csumStart = -1;
  /** Offset of the checksum field from `csumStart` (when `partial`), else 0. */
  csumOffset = 0;
  /** The parse result behind the last `BAD_PACKET` (ParseResult.OK otherwise). */
  parseResult: ParseResult = ParseResult.OK;
  private readonly info = new PacketInfo();

  /**
   * Splits the super-packet `src[off .. off + len)` described by `hdr` (the decoded
   * `virtio_net_hdr` that preceded it) into segments appended to `out`. Returns the number of
   * segments (≥ 1), or a negative {@link GsoError} with `out` unchanged.
   *
   * - TCPV4 / TCPV6 (ECN bit allowed): payload chunks of `gso_size`, headers as the kernel's GSO
   *   writes them; a payload of at most `gso_size` gives one segment (not really GSO, as in Linux).
   * - UDP_L4 (USO, IPv4 or IPv6, `NEEDS_CSUM` required): UDP payload split into `gso_size`
   *   datagrams, each with its own UDP length and checksum, IPv4 ID incremented per datagram.
   * - NONE with `NEEDS_CSUM`: one packet; `"full"` completes the checksum (sum from `csum_start` to
   *   the end, stored at `csum_start + csum_offset`), `"partial"` leaves the field as it is.
   * - NONE without `NEEDS_CSUM`: one packet copied unchanged.
   *
   * `hdr_len` is only a hint from the kernel (`skb_headlen`): it must not exceed the packet, and the
   * real header length is taken from the parse (`csum_start` + TCP data offset / 8 for UDP), which
   * must agree with `csum_start`/`csum_offset` when `NEEDS_CSUM` is set. The input's L4 checksum
   * field is never trusted: every segment's checksum is computed from scratch. The super-packet's
   * IP length field is authoritative (trailing bytes up to `len` are ignored) for GSO types.
   *
   * `parsed`: the packet's parse at `off` when the caller has one (the engine's, after its
   * rewrite), so the packet is not parsed again.
   */
  segment(
    src: Uint8Array,
    off: number,
    len: number,
    hdr: VnetHdr,
    mode: SegmentMode,
    out: SegmentBatch,
    parsed?: PacketInfo,
  ): number {
    const full = mode === "full";
    if (off < 0 || len <= 0 || off + len > src.length) return this.badPacket(ParseResult.TRUNCATED);
    const raw = hdr.gsoType;
    if (raw === VNET_GSO_NONE) return this.single(src, off, len, hdr, full, out);
    const type = raw & ~VNET_GSO_ECN;
    if (type !== VNET_GSO_TCPV4 && type !== VNET_GSO_TCPV6 && type !== VNET_GSO_UDP_L4) {
      return GsoError.BAD_GSO_TYPE;
    }
    if (type === VNET_GSO_UDP_L4 && raw !== type) return GsoError.BAD_GSO_TYPE;
    if (hdr.gsoSize === 0) return GsoError.BAD_GSO_SIZE;
    const needs = (hdr.flags & VNET_F_NEEDS_CSUM) !== 0;
    if (type === VNET_GSO_UDP_L4 && !needs) return GsoError.NO_NEEDS_CSUM;
    if (hdr.hdrLen > len) return GsoError.BAD_HDR_LEN;
    let info = this.info;
    if (parsed !== undefined && parsed.off === off && parsed.version !== 0 && parsed.totalLen <= len) {
      info = parsed;
    } else {
      const r = parsePacket(src, off, len, info);
      if (r !== ParseResult.OK) return this.badPacket(r);
    }
    if (info.isFragment) return this.badPacket(ParseResult.BAD_FRAGMENT);
    const tcp = type !== VNET_GSO_UDP_L4;
    if (tcp) {
      if (info.protocol !== IPPROTO_TCP || info.version !== (type === VNET_GSO_TCPV4 ? 4 : 6)) {
        return GsoError.PROTO_MISMATCH;
      }
    } else if (info.protocol !== IPPROTO_UDP) {
      return GsoError.PROTO_MISMATCH;
    }
    const l4 = info.l4Offset - off;
    const fieldOff = tcp ? 16 : 6;
    if (needs) {
      if (hdr.csumStart !== l4) return GsoError.BAD_CSUM_START;
      if (hdr.csumOffset !== fieldOff) return GsoError.BAD_CSUM_OFFSET;
    }
    const total = info.totalLen;
    if (!tcp && info.l4Len !== total - l4) return this.badPacket(ParseResult.BAD_L4_HEADER);
    const hdrLen = l4 + info.l4HeaderLen;
    const payload = total - hdrLen;
    const mss = payload <= hdr.gsoSize ? payload : hdr.gsoSize;
    if (hdrLen + mss > out.mtu) return GsoError.TOO_BIG;
    const nseg = payload === 0 ? 1 : Math.ceil(payload / mss);
    const headroom = out.headroom;
    if (out.count + nseg > out.capacity) return GsoError.NO_SPACE;
    if (out.packed && out.used + nseg * (headroom + hdrLen) + payload > out.buf.length) {
      return GsoError.NO_SPACE;
    }

    const dst = out.buf;
    const v4 = info.version === 4;
    const ihl = info.ipHeaderLen;
    const proto = info.protocol;
    const pseudo = v4
      ? pseudoSum4(src, info.srcOffset, info.dstOffset, proto, 0)
      : pseudoSum6(src, info.srcOffset, info.dstOffset, proto, 0);
    const id0 = v4 ? read16(src, off + 4) : 0;
    const seq0 = tcp ? read32(src, off + l4 + 4) : 0;
    const flags0 = tcp ? src[off + l4 + 13] : 0;
    const first = out.count;
    let cursor = out.packed ? out.used : out.count * out.slotSize;
    let pay = off + hdrLen;
    for (let k = 0; k < nseg; k++) {
      const n = k === nseg - 1 ? payload - k * mss : mss;
      const segLen = hdrLen + n;
      const p = cursor + headroom;
      copyBytes(src, off, dst, p, hdrLen);
      if (n > 0) copyBytes(src, pay, dst, p + hdrLen, n);
      pay += n;
      if (v4) {
        write16(dst, p + 2, segLen);
        write16(dst, p + 4, (id0 + k) & 0xffff);
        write16(dst, p + 10, ipv4HeaderChecksum(dst, p, ihl));
      } else {
        write16(dst, p + 4, segLen - 40);
      }
      const t = p + l4;
      const l4Len = segLen - l4;
      if (tcp) {
        write32(dst, t + 4, (seq0 + k * mss) >>> 0);
        let f = flags0;
        if (k !== nseg - 1) f &= ~(FIN | PSH);
        if (k !== 0) f &= ~CWR;
        dst[t + 13] = f;
      } else {
        write16(dst, t + 4, l4Len);
      }
      if (full) {
        write16(dst, t + fieldOff, 0);
        write16(dst, t + fieldOff, mangledChecksum(onesSum(dst, t, l4Len, pseudo + l4Len)));
      } else {
        write16(dst, t + fieldOff, foldSum(pseudo + l4Len));
      }
      out.offsets[first + k] = p;
      out.lengths[first + k] = segLen;
      cursor = out.packed ? p + segLen : cursor + out.slotSize;
    }
    out.count = first + nseg;
    out.used = cursor;
    this.first = first;
    this.count = nseg;
    this.segmentSize = mss;
    this.datagramSize = headroom + hdrLen + mss;
    this.partial = !full;
    this.csumStart = full ? -1 : l4;
    this.csumOffset = full ? 0 : fieldOff;
    this.parseResult = ParseResult.OK;
    return nseg;
  }

  private badPacket(r: ParseResult): number {
    this.parseResult = r;
    return GsoError.BAD_PACKET;
  }

  /** gso_type NONE: one packet, checksum completed (full mode) or left as it is. */
  private single(
    src: Uint8Array,
    off: number,
    len: number,
    hdr: VnetHdr,
    full: boolean,
    out: SegmentBatch,
  ): number {
    const needs = (hdr.flags & VNET_F_NEEDS_CSUM) !== 0;
    const start = hdr.csumStart;
    const field = start + hdr.csumOffset;
    if (needs) {
      if (start < 20 || start > len) return GsoError.BAD_CSUM_START;
      if (field + 2 > len) return GsoError.BAD_CSUM_OFFSET;
    }
    if (len > out.mtu) return GsoError.TOO_BIG;
    if (out.count >= out.capacity) return GsoError.NO_SPACE;
    if (out.packed && out.used + out.headroom + len > out.buf.length) return GsoError.NO_SPACE;
    const dst = out.buf;
    const p = (out.packed ? out.used : out.count * out.slotSize) + out.headroom;
    copyBytes(src, off, dst, p, len);
    const partial = needs && !full;
    if (needs && full) {
      // CHECKSUM_PARTIAL: the field holds the pseudo-header sum and is part of the summed range.
      write16(dst, p + field, mangledChecksum(onesSum(dst, p + start, len - start, 0)));
    }
    const i = out.count;
    out.offsets[i] = p;
    out.lengths[i] = len;
    out.count = i + 1;
    out.used = out.packed ? p + len : out.count * out.slotSize;
    this.first = i;
    this.count = 1;
    this.segmentSize = 0;
    this.datagramSize = out.headroom + len;
    this.partial = partial;
    this.csumStart = partial ? start : -1;
    this.csumOffset = partial ? hdr.csumOffset : 0;
    this.parseResult = ParseResult.OK;
    return 1;
  }
}

// ---------------------------------------------------------------------------------------------
// Coalescing
// ---------------------------------------------------------------------------------------------

/** Outcome of {@link Coalescer.add}. */
export const CoalesceResult = {
  /** Accepted as the start of a new output packet. */
  NEW: 0,
  /** Accepted and appended to an earlier packet of the same flow. */
  MERGED: 1,
  /** Not accepted: the batch is full (packets or arena bytes). Call `finish()`, write, add again. */
  FULL: -1,
  /** Not accepted: bad arguments (range outside `buf`, empty, over 65535 bytes, `csumStart`/`csumOffset` outside the packet). */
  INVALID: -2,
} as const;

/** One of the {@link CoalesceResult} values. */
export type CoalesceResult = (typeof CoalesceResult)[keyof typeof CoalesceResult];

/** Options of a {@link Coalescer}. */
export interface CoalescerOptions {
  /** Most input packets per batch. Default 128. */
  maxPackets?: number;
  /**
   * Output arena (receives `virtio_net_hdr` + packet for every output). Default: a new one of
   * `arenaBytes` bytes. Must not overlap the input packets.
   */
  arena?: Uint8Array;
  /** Size of the default arena. Default `maxPackets * (10 + 1500)`, at least 10 + 65535. */
  arenaBytes?: number;
  /**
   * Verify the full TCP checksum of a packet that arrived with a complete checksum before merging
   * it (and of the first packet of a group before the first merge); a mismatch keeps the packet
   * alone, untouched, for the kernel to drop. Default true. With false the sender's checksum is
   * trusted: a corrupted segment would be merged and get a valid checksum from the kernel.
   */
  verifyComplete?: boolean;
}

/**
 * Receive-side TCP coalescing (userspace GRO) for writes to a vnet-header TUN.
 *
 * Packets are {@link add}ed (by reference: their bytes must stay unchanged until {@link finish}),
 * then `finish()` writes every output packet into `arena` as a 10-byte `virtio_net_hdr` followed by
 * the IP packet: output `i` is `arena[offsets[i] .. offsets[i] + lengths[i])`, ready for one TUN
 * write. Outputs stay valid until the next `finish()`.
 *
 * TCP segments coalesce when they belong to the same flow and are consecutive: same addresses and
 * ports, same IP header fields except length, ID and checksum (IPv4 without options; IPv6 without
 * extension headers; IPv4 IDs must increment when DF is clear), a valid IPv4 header checksum, same
 * ACK number, same TCP header length and options, same flags apart from PSH, ACK set and none of
 * SYN/FIN/RST/URG/CWR, `seq` equal to the previous end, a non-empty payload no larger than the first
 * one's (a smaller one ends the group), PSH only on the last, the whole at most
 * {@link MAX_SUPER_PACKET} bytes. A coalesced packet keeps the first segment's headers (PSH added
 * when the last had it), gets the new lengths and IPv4 header checksum, and its TCP field holds the
 * pseudo-header partial sum; its vnet header says `NEEDS_CSUM` and `gso_type` TCPV4/TCPV6 with
 * `gso_size` = the first segment's payload, so the kernel finishes the checksum and can resegment it
 * exactly into the original segments. CWR segments are never coalesced, so `VNET_GSO_ECN` is never needed. Everything else passes through one packet per output with
 * `gso_type` NONE (`NEEDS_CSUM` with the given offsets when it arrived partial). A packet that
 * cannot join its flow's open group closes it, so a flow's packets never overtake each other.
 *
 * Flow lookup is O(1): an open-addressed table keyed by a hash of the 4-tuple, cleared per batch by
 * a generation counter. Nothing is allocated per packet.
 *
 * @example
 * ```ts
 * import { Coalescer, CoalesceResult } from "./offload.ts";
 * const gro = new Coalescer({ maxPackets: 128 });
 * const received: Uint8Array[] = []; // IP packets from the tunnel, complete checksums
 * const write = (bytes: Uint8Array) => console.log(bytes.length); // a TUN write
 * const flush = () => {
 *   const n = gro.finish();
 *   for (let i = 0; i < n; i++) write(gro.arena.subarray(gro.offsets[i], gro.offsets[i] + gro.lengths[i]));
 *   gro.reset();
 * };
 * for (const p of received) {
 *   if (gro.add(p, 0, p.length) === CoalesceResult.FULL) {
 *     flush();
 *     gro.add(p, 0, p.length);
 *   }
 * }
 * flush();
 * ```
 */
export class Coalescer {
  /** Output arena: `virtio_net_hdr` + packet per output. */
  readonly arena: Uint8Array;
  /** Start of output `i` (its vnet header) in `arena`. */
  readonly offsets: Uint32Array;
  /** Bytes of output `i`: 10 + IP length (one TUN write). */
  readonly lengths: Uint32Array;
  /** Most input packets per batch. */
  readonly maxPackets: number;
  /** Whether complete checksums are verified before merging. */
  readonly verifyComplete: boolean;
  /** Outputs written by the last `finish()`. */
  count = 0;
  /** Input packets added since the last `finish()`. */
  packets = 0;
  /** Of those, how many were merged into an earlier packet. */
  merged = 0;

  // Input packets.
  private readonly pBuf: (Uint8Array | null)[];
  private readonly pOff: Int32Array;
  private readonly pLen: Int32Array;
  private readonly pNext: Int32Array;
  private readonly pCsumStart: Int32Array;
  private readonly pCsumOffset: Int32Array;
  // Groups (output packets), in arrival order of their first packet.
  private groups = 0;
  private readonly gHead: Int32Array;
  private readonly gTail: Int32Array;
  private readonly gCount: Int32Array;
  private readonly gSeq: Uint32Array;
  private readonly gSegSize: Int32Array;
  private readonly gTotal: Int32Array;
  private readonly gL4: Int32Array;
  private readonly gHdrLen: Int32Array;
  /** Bit 0: open; bit 1: IPv6; bit 2: last had PSH; bit 3: head checksum verified. */
  private readonly gState: Uint8Array;
  // Flow table.
  private gen = 1;
  private readonly tMask: number;
  private readonly tGen: Uint32Array;
  private readonly tHash: Int32Array;
  private readonly tGroup: Int32Array;
  private reserved = 0;
  private readonly info = new PacketInfo();
  private readonly vh = new VnetHdr();

  constructor(opts: CoalescerOptions = {}) {
    const max = opts.maxPackets ?? 128;
    if (!Number.isInteger(max) || max < 1 || max > 65536) {
      throw new OffloadConfigError(`Coalescer: maxPackets must be an integer in 1..65536, got ${max}`);
    }
    const minArena = VNET_HDR_LEN + MAX_SUPER_PACKET;
    const bytes = opts.arenaBytes ?? Math.max(minArena, max * (VNET_HDR_LEN + 1500));
    const arena = opts.arena ?? new Uint8Array(bytes);
    if (arena.length < minArena) {
      throw new OffloadConfigError(
        `Coalescer: arena must hold at least ${minArena} bytes, got ${arena.length}`,
      );
    }
    this.arena = arena;
    this.maxPackets = max;
    this.verifyComplete = opts.verifyComplete ?? true;
    this.offsets = new Uint32Array(max);
    this.lengths = new Uint32Array(max);
    this.pBuf = new Array<Uint8Array | null>(max).fill(null);
    this.pOff = new Int32Array(max);
    this.pLen = new Int32Array(max);
    this.pNext = new Int32Array(max);
    this.pCsumStart = new Int32Array(max);
    this.pCsumOffset = new Int32Array(max);
    this.gHead = new Int32Array(max);
    this.gTail = new Int32Array(max);
    this.gCount = new Int32Array(max);
    this.gSeq = new Uint32Array(max);
    this.gSegSize = new Int32Array(max);
    this.gTotal = new Int32Array(max);
    this.gL4 = new Int32Array(max);
    this.gHdrLen = new Int32Array(max);
    this.gState = new Uint8Array(max);
    let size = 64;
    while (size < max * 4) size *= 2;
    this.tMask = size - 1;
    this.tGen = new Uint32Array(size);
    this.tHash = new Int32Array(size);
    this.tGroup = new Int32Array(size);
  }

  /**
   * Adds the IP packet `buf[off .. off + len)` to the batch. `csumStart ≥ 0` says it arrived with a
   * CHECKSUM_PARTIAL L4 field at `csumStart + csumOffset` (fast mode); `csumStart < 0` that its
   * checksums are complete (raw mode). The bytes are read again by {@link finish}; do not change or
   * reuse them before. Returns a {@link CoalesceResult}.
   */
  add(buf: Uint8Array, off: number, len: number, csumStart = -1, csumOffset = 0): CoalesceResult {
    if (off < 0 || len <= 0 || len > MAX_SUPER_PACKET || off + len > buf.length) {
      return CoalesceResult.INVALID;
    }
    const partial = csumStart >= 0;
    if (partial && (csumOffset < 0 || csumStart + csumOffset + 2 > len)) return CoalesceResult.INVALID;
    if (this.packets >= this.maxPackets) return CoalesceResult.FULL;
    const info = this.info;
    let ipLen = len;
    let tcp = false;
    let candidate = false;
    let hash = 0;
    let payload = 0;
    if (parsePacket(buf, off, len, info) === ParseResult.OK) {
      ipLen = info.totalLen;
      if (info.protocol === IPPROTO_TCP && !info.isFragment) {
        tcp = true;
        hash = flowHash(buf, info);
        const l4 = info.l4Offset - off;
        payload = ipLen - l4 - info.l4HeaderLen;
        const f = info.tcpFlags;
        candidate = payload > 0 && (f & ACK) !== 0 && (f & (SYN | FIN | RST | URG | CWR)) === 0 &&
          (info.version === 4
            ? l4 === 20 && read16(buf, off + 10) === ipv4HeaderChecksum(buf, off, 20)
            : l4 === 40) &&
          (!partial || (csumStart === l4 && csumOffset === 16));
      }
    }
    const p = this.packets;
    let slot = -1;
    if (tcp) {
      const found = this.lookup(hash, buf, info);
      slot = found >= 0 ? found : ~found;
      if (found >= 0) {
        const g = this.tGroup[slot];
        if (candidate && (this.gState[g] & 1) !== 0) {
          if (this.reserved + payload > this.arena.length) return CoalesceResult.FULL;
          if (this.canAppend(g, buf, off, info, payload, partial)) {
            this.append(g, p, buf, off, ipLen, payload, (info.tcpFlags & PSH) !== 0);
            return CoalesceResult.MERGED;
          }
        }
        this.gState[g] &= ~1; // a packet that cannot join closes the group (keeps the flow in order)
      }
    }
    if (this.reserved + VNET_HDR_LEN + ipLen > this.arena.length) return CoalesceResult.FULL;
    // New group.
    const g = this.groups++;
    this.pBuf[p] = buf;
    this.pOff[p] = off;
    this.pLen[p] = ipLen;
    this.pNext[p] = -1;
    this.pCsumStart[p] = csumStart;
    this.pCsumOffset[p] = csumOffset;
    this.packets = p + 1;
    this.reserved += VNET_HDR_LEN + ipLen;
    this.gHead[g] = p;
    this.gTail[g] = p;
    this.gCount[g] = 1;
    this.gState[g] = 0;
    if (candidate) {
      const l4 = info.l4Offset - off;
      const psh = (info.tcpFlags & PSH) !== 0;
      this.gSeq[g] = (read32(buf, info.l4Offset + 4) + payload) >>> 0;
      this.gSegSize[g] = payload;
      this.gTotal[g] = ipLen;
      this.gL4[g] = l4;
      this.gHdrLen[g] = l4 + info.l4HeaderLen;
      // A complete head is verified lazily, on the first merge (most singles never need it).
      this.gState[g] = (psh ? 4 : 1) | (info.version === 6 ? 2 : 0) | (partial ? 8 : 0);
      this.tGen[slot] = this.gen;
      this.tHash[slot] = hash;
      this.tGroup[slot] = g;
    }
    return CoalesceResult.NEW;
  }

  /**
   * Writes every output packet of the batch into `arena` (vnet header + packet), fills
   * `offsets`/`lengths`/`count` and starts a new batch. Returns the number of outputs.
   */
  finish(): number {
    const arena = this.arena;
    const vh = this.vh;
    let cursor = 0;
    for (let g = 0; g < this.groups; g++) {
      const h = this.gHead[g];
      const hb = this.pBuf[h] as Uint8Array;
      const hOff = this.pOff[h];
      const start = cursor + VNET_HDR_LEN;
      copyBytes(hb, hOff, arena, start, this.pLen[h]);
      vh.clear();
      let total = this.pLen[h];
      if (this.gCount[g] > 1) {
        const hdrLen = this.gHdrLen[g];
        for (let m = this.pNext[h]; m >= 0; m = this.pNext[m]) {
          const n = this.pLen[m] - hdrLen;
          copyBytes(this.pBuf[m] as Uint8Array, this.pOff[m] + hdrLen, arena, start + total, n);
          total += n;
        }
        const v6 = (this.gState[g] & 2) !== 0;
        const l4 = this.gL4[g];
        const t = start + l4;
        let pseudo: number;
        if (v6) {
          write16(arena, start + 4, total - 40);
          pseudo = pseudoSum6(arena, start + 8, start + 24, IPPROTO_TCP, total - l4);
        } else {
          write16(arena, start + 2, total);
          write16(arena, start + 10, ipv4HeaderChecksum(arena, start, 20));
          pseudo = pseudoSum4(arena, start + 12, start + 16, IPPROTO_TCP, total - l4);
        }
        if ((this.gState[g] & 4) !== 0) arena[t + 13] |= PSH;
        write16(arena, t + 16, foldSum(pseudo));
        vh.flags = VNET_F_NEEDS_CSUM;
        vh.gsoType = v6 ? VNET_GSO_TCPV6 : VNET_GSO_TCPV4;
        vh.hdrLen = hdrLen;
        vh.gsoSize = this.gSegSize[g];
        vh.csumStart = l4;
        vh.csumOffset = 16;
      } else if (this.pCsumStart[h] >= 0) {
        vh.flags = VNET_F_NEEDS_CSUM;
        vh.csumStart = this.pCsumStart[h];
        vh.csumOffset = this.pCsumOffset[h];
      }
      vh.encode(arena, cursor);
      this.offsets[g] = cursor;
      this.lengths[g] = VNET_HDR_LEN + total;
      cursor = start + total;
    }
    this.count = this.groups;
    this.clearInputs();
    return this.count;
  }

  /** Drops the current batch's inputs without writing anything (outputs of the last finish stay). */
  reset(): void {
    this.clearInputs();
  }

  private clearInputs(): void {
    for (let p = 0; p < this.packets; p++) this.pBuf[p] = null;
    this.packets = 0;
    this.merged = 0;
    this.groups = 0;
    this.reserved = 0;
    this.gen = (this.gen + 1) >>> 0;
    if (this.gen === 0) {
      this.tGen.fill(0);
      this.gen = 1;
    }
  }

  /** Slot of the flow's entry, or `~slot` of the empty slot where it would go. */
  private lookup(hash: number, buf: Uint8Array, info: PacketInfo): number {
    const mask = this.tMask;
    let i = hash & mask;
    while (this.tGen[i] === this.gen) {
      if (this.tHash[i] === hash && this.sameFlow(this.tGroup[i], buf, info)) return i;
      i = (i + 1) & mask;
    }
    return ~i;
  }

  private sameFlow(g: number, buf: Uint8Array, info: PacketInfo): boolean {
    const h = this.gHead[g];
    const hb = this.pBuf[h] as Uint8Array;
    const ho = this.pOff[h];
    const v6 = (this.gState[g] & 2) !== 0;
    if (v6 !== (info.version === 6)) return false;
    const a = info.srcOffset;
    const ha = ho + (v6 ? 8 : 12);
    const n = v6 ? 32 : 8;
    for (let i = 0; i < n; i++) if (hb[ha + i] !== buf[a + i]) return false;
    const t = info.l4Offset;
    const ht = ho + this.gL4[g];
    return hb[ht] === buf[t] && hb[ht + 1] === buf[t + 1] && hb[ht + 2] === buf[t + 2] &&
      hb[ht + 3] === buf[t + 3];
  }

  /** The coalescing rules between group `g` (open, same flow) and the candidate packet. */
  private canAppend(
    g: number,
    buf: Uint8Array,
    off: number,
    info: PacketInfo,
    payload: number,
    partial: boolean,
  ): boolean {
    const h = this.gHead[g];
    const hb = this.pBuf[h] as Uint8Array;
    const ho = this.pOff[h];
    const l4 = this.gL4[g];
    if (info.l4Offset - off !== l4) return false;
    if (payload > this.gSegSize[g] || this.gTotal[g] + payload > MAX_SUPER_PACKET) return false;
    const t = info.l4Offset;
    const ht = ho + l4;
    if (read32(buf, t + 4) !== this.gSeq[g]) return false;
    // IP header: everything but lengths, ID and checksum.
    if (l4 === 20) {
      if (
        hb[ho] !== buf[off] || hb[ho + 1] !== buf[off + 1] || hb[ho + 6] !== buf[off + 6] ||
        hb[ho + 7] !== buf[off + 7] || hb[ho + 8] !== buf[off + 8] || hb[ho + 9] !== buf[off + 9]
      ) {
        return false;
      }
      // Without DF the IDs must count up (the kernel's resegmentation will number them so).
      if (
        (buf[off + 6] & 0x40) === 0 &&
        read16(buf, off + 4) !== ((read16(hb, ho + 4) + this.gCount[g]) & 0xffff)
      ) {
        return false;
      }
    } else {
      for (let i = 0; i < 4; i++) if (hb[ho + i] !== buf[off + i]) return false;
      if (hb[ho + 6] !== buf[off + 6] || hb[ho + 7] !== buf[off + 7]) return false;
    }
    // TCP: ACK number, data offset byte, flags but PSH, options.
    for (let i = 8; i < 13; i++) if (hb[ht + i] !== buf[t + i]) return false;
    if (((hb[ht + 13] ^ buf[t + 13]) & ~PSH) !== 0) return false;
    const thl = this.gHdrLen[g] - l4;
    for (let i = 20; i < thl; i++) if (hb[ht + i] !== buf[t + i]) return false;
    if (this.verifyComplete) {
      if ((this.gState[g] & 8) === 0) {
        if (!this.l4Valid(hb, ho, null)) {
          this.gState[g] &= ~1;
          return false;
        }
        this.gState[g] |= 8;
      }
      if (!partial && !this.l4Valid(buf, off, info)) return false;
    }
    return true;
  }

  private append(
    g: number,
    p: number,
    buf: Uint8Array,
    off: number,
    ipLen: number,
    payload: number,
    psh: boolean,
  ): void {
    this.pBuf[p] = buf;
    this.pOff[p] = off;
    this.pLen[p] = ipLen;
    this.pNext[p] = -1;
    this.pCsumStart[p] = -1;
    this.pCsumOffset[p] = 0;
    this.pNext[this.gTail[g]] = p;
    this.gTail[g] = p;
    this.gCount[g]++;
    this.gSeq[g] = (this.gSeq[g] + payload) >>> 0;
    this.gTotal[g] += payload;
    if (psh || payload < this.gSegSize[g]) this.gState[g] &= ~1;
    if (psh) this.gState[g] |= 4;
    this.packets = p + 1;
    this.merged++;
    this.reserved += payload;
  }

  /**
   * True when the complete TCP checksum of the packet at `buf[off..]` verifies. With `info` null the
   * packet is a group head (IPv4 without options or IPv6 without extension headers, already parsed).
   */
  private l4Valid(buf: Uint8Array, off: number, info: PacketInfo | null): boolean {
    if (info !== null && !(info.version === 4 ? info.l4Offset - off === 20 : info.l4Offset - off === 40)) {
      return false;
    }
    const v4 = (buf[off] >>> 4) === 4;
    const l4 = v4 ? 20 : 40;
    const total = v4 ? read16(buf, off + 2) : 40 + read16(buf, off + 4);
    const tcpLen = total - l4;
    const pseudo = v4
      ? pseudoSum4(buf, off + 12, off + 16, IPPROTO_TCP, tcpLen)
      : pseudoSum6(buf, off + 8, off + 24, IPPROTO_TCP, tcpLen);
    return onesSum(buf, off + l4, tcpLen, pseudo) === 0xffff;
  }
}

function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/** Hash of the TCP 4-tuple (addresses and ports) of a parsed packet. */
function flowHash(buf: Uint8Array, info: PacketInfo): number {
  let h = info.version;
  const n = info.version === 4 ? 8 : 32;
  const a = info.srcOffset;
  for (let i = 0; i < n; i += 4) h = mix32(h ^ read32(buf, a + i)) + i;
  return mix32(h ^ read32(buf, info.l4Offset));
}
