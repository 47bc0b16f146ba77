/**
 * JUMBO messages (see wire.ts): a TCP super-packet cut into tagged chunks of one datagram size, so
 * it crosses the tunnel as one UDP GSO send and is written to the receiver's TUN as one
 * super-packet. Neither side touches a per-segment header: the sender copies slices behind 8-byte
 * tags, the receiver copies them back together ({@link JumboAssembler}).
 *
 * Pure and allocation-free on the packet path. Copies use `copyWithin` when source and destination
 * share one ArrayBuffer (the worker lays its arenas out that way), `set` otherwise.
 * @module
 */
import {
  JUMBO_MAX_CHUNKS,
  JUMBO_META_LEN,
  JUMBO_TAG_LEN,
  MIN_IPV4_LEN,
  MIN_IPV6_LEN,
  MSG_JUMBO,
} from "./wire.ts";
import { VNET_GSO_ECN, VNET_GSO_TCPV4, VNET_GSO_TCPV6 } from "../../ffi/vnet.ts";

/** Largest super-packet (IP length) a JUMBO message carries. */
export const JUMBO_MAX_PACKET = 65535;
/** JUMBO flag: the inner L4 checksum is partial (always set by this version's sender). */
export const JUMBO_F_NEEDS_CSUM = 1 << 0;

/** Copies `n` bytes from `src[so..]` to `dst[do..]` (no overlap), without allocating if they share a buffer. */
function copy(src: Uint8Array, so: number, dst: Uint8Array, dOff: number, n: number): void {
  if (src.buffer === dst.buffer && dst.byteOffset === 0 && dst.length === dst.buffer.byteLength) {
    const s = src.byteOffset + so;
    dst.copyWithin(dOff, s, s + n);
  } else {
    dst.set(src.subarray(so, so + n), dOff);
  }
}

/**
 * Number of chunks a `total`-byte super-packet needs with datagrams of `dsize` bytes (tag
 * included), or 0 when it does not make a JUMBO message (fits one datagram, or needs more than
 * {@link JUMBO_MAX_CHUNKS}).
 */
export function jumboChunkCount(total: number, dsize: number): number {
  const first = dsize - JUMBO_TAG_LEN - JUMBO_META_LEN;
  const rest = dsize - JUMBO_TAG_LEN;
  if (first < MIN_IPV6_LEN + 60 || total <= first || total > JUMBO_MAX_PACKET) return 0;
  const n = 1 + Math.ceil((total - first) / rest);
  return n <= JUMBO_MAX_CHUNKS ? n : 0;
}

/** Offload fields of a super-packet (from its virtio header). */
export interface JumboMeta {
  /** virtio `gso_type` (TCPV4 or TCPV6, optionally with the ECN bit). */
  gsoType: number;
  /** virtio `gso_size` (MSS). */
  gsoSize: number;
  /** L4 header offset from the start of the IP packet. */
  csumStart: number;
  /** Checksum field offset within the L4 header. */
  csumOffset: number;
}

/**
 * Writes the JUMBO chunks of the super-packet `arena[srcOff .. srcOff + total)` to
 * `arena[dstOff ..]`: chunk `k` at `dstOff + k * dsize`. Returns the bytes written (all chunks), or
 * 0 when the packet does not make a JUMBO message ({@link jumboChunkCount}). The regions must not
 * overlap. `arena` should be a whole-buffer view (then copies are `copyWithin`).
 */
export function writeJumbo(
  arena: Uint8Array,
  srcOff: number,
  total: number,
  dstOff: number,
  dsize: number,
  msgId: number,
  meta: JumboMeta,
): number {
  const count = jumboChunkCount(total, dsize);
  if (count === 0 || dstOff + total + count * JUMBO_TAG_LEN + JUMBO_META_LEN > arena.length) return 0;
  let s = srcOff;
  let d = dstOff;
  const end = srcOff + total;
  for (let k = 0; k < count; k++) {
    arena[d] = MSG_JUMBO;
    arena[d + 1] = k;
    arena[d + 2] = count;
    arena[d + 3] = JUMBO_F_NEEDS_CSUM;
    arena[d + 4] = msgId >>> 24;
    arena[d + 5] = msgId >>> 16;
    arena[d + 6] = msgId >>> 8;
    arena[d + 7] = msgId;
    d += JUMBO_TAG_LEN;
    let room = dsize - JUMBO_TAG_LEN;
    if (k === 0) {
      arena[d] = meta.gsoType;
      arena[d + 1] = 0;
      arena[d + 2] = meta.gsoSize >>> 8;
      arena[d + 3] = meta.gsoSize;
      arena[d + 4] = meta.csumStart >>> 8;
      arena[d + 5] = meta.csumStart;
      arena[d + 6] = meta.csumOffset >>> 8;
      arena[d + 7] = meta.csumOffset;
      d += JUMBO_META_LEN;
      room -= JUMBO_META_LEN;
    }
    const n = Math.min(room, end - s);
    copy(arena, s, arena, d, n);
    s += n;
    d += n;
  }
  return d - dstOff;
}

/** Outcome of {@link JumboAssembler.add}. */
export const JumboResult = {
  /** Accepted; the message is not complete yet. */
  PENDING: 0,
  /** Accepted and the message is complete: see the `out*` fields. */
  COMPLETE: 1,
  /** Not accepted (malformed, out of order, unknown message, or a chunk of a dropped message). */
  DROPPED: 2,
} as const;
/** A {@link JumboResult} value. */
export type JumboResult = typeof JumboResult[keyof typeof JumboResult];

/** Options of a {@link JumboAssembler}. */
export interface JumboAssemblerOptions {
  /** Whole-buffer view of the ArrayBuffer holding the assembly slots (and ideally the received datagrams). */
  arena: Uint8Array;
  /** Offset of the first assembly slot in `arena`. */
  base: number;
  /** Number of senders assembled at once (one slot each; the least recently used is reused). */
  slots: number;
  /** Free bytes before each assembled packet (room for a virtio header). */
  prefix: number;
}

/**
 * Reassembles JUMBO messages, one in progress per sender (`key`, any object identifying the peer).
 * Chunks must arrive in order; a gap, a malformed chunk or a new message before the end drops the
 * message in progress (counted in {@link incomplete} / {@link malformed}). On
 * {@link JumboResult.COMPLETE}, slot {@link outSlot} holds the packet at
 * `arena[outOffset .. outOffset + outLength)` with `prefix` free bytes before it, until the next
 * `add` for the same sender.
 */
export class JumboAssembler {
  /** Bytes per slot: prefix + the largest packet. */
  readonly slotBytes: number;
  /** Messages assembled completely. */
  completed = 0;
  /** Messages dropped unfinished (lost or reordered chunk, sender reused the slot). */
  incomplete = 0;
  /** Chunks dropped as malformed (bad tag or offload fields, wrong size, length mismatch). */
  malformed = 0;
  /** Slot of the last completed message. */
  outSlot = 0;
  /** Offset in the arena of the last completed packet. */
  outOffset = 0;
  /** Length of the last completed packet. */
  outLength = 0;
  /** Offload fields of the last completed packet. */
  readonly outMeta: JumboMeta = { gsoType: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };

  readonly #arena: Uint8Array;
  readonly #base: number;
  readonly #prefix: number;
  readonly #keys: (object | null)[];
  readonly #id: Uint32Array;
  readonly #next: Int32Array; // next chunk index; 0 = nothing in progress
  readonly #count: Int32Array;
  readonly #dsize: Int32Array;
  readonly #filled: Int32Array;
  readonly #used: Float64Array;
  readonly #meta: Int32Array; // gsoType, gsoSize, csumStart, csumOffset per slot
  #tick = 0;

  constructor(opts: JumboAssemblerOptions) {
    const { arena, base, slots, prefix } = opts;
    this.slotBytes = prefix + JUMBO_MAX_PACKET;
    if (!Number.isInteger(slots) || slots < 1 || slots > 256) throw new RangeError("slots must be 1..256");
    if (!Number.isInteger(base) || base < 0 || base + slots * this.slotBytes > arena.length) {
      throw new RangeError(`arena too small for ${slots} assembly slots at ${base}`);
    }
    this.#arena = arena;
    this.#base = base;
    this.#prefix = prefix;
    this.#keys = new Array<object | null>(slots).fill(null);
    this.#id = new Uint32Array(slots);
    this.#next = new Int32Array(slots);
    this.#count = new Int32Array(slots);
    this.#dsize = new Int32Array(slots);
    this.#filled = new Int32Array(slots);
    this.#used = new Float64Array(slots);
    this.#meta = new Int32Array(slots * 4);
  }

  #slotOf(key: object): number {
    const keys = this.#keys;
    let free = -1;
    let oldest = 0;
    for (let i = 0; i < keys.length; i++) {
      if (keys[i] === key) return i;
      if (keys[i] === null && free < 0) free = i;
      if (this.#used[i] < this.#used[oldest]) oldest = i;
    }
    const s = free >= 0 ? free : oldest;
    if (this.#next[s] !== 0) this.incomplete++;
    keys[s] = key;
    this.#next[s] = 0;
    return s;
  }

  /** Forgets a sender's message in progress (e.g. the peer went away). */
  forget(key: object): void {
    const i = this.#keys.indexOf(key);
    if (i < 0) return;
    if (this.#next[i] !== 0) this.incomplete++;
    this.#keys[i] = null;
    this.#next[i] = 0;
  }

  #malformed(s: number): JumboResult {
    this.malformed++;
    if (this.#next[s] !== 0) this.incomplete++;
    this.#next[s] = 0;
    return JumboResult.DROPPED;
  }

  /** Adds the JUMBO chunk `buf[off .. off + len)` from sender `key`. */
  add(key: object, buf: Uint8Array, off: number, len: number): JumboResult {
    if (off < 0 || len < JUMBO_TAG_LEN + 1 || off + len > buf.length || buf[off] !== MSG_JUMBO) {
      this.malformed++;
      return JumboResult.DROPPED;
    }
    const s = this.#slotOf(key);
    this.#used[s] = ++this.#tick;
    const idx = buf[off + 1];
    const count = buf[off + 2];
    const flags = buf[off + 3];
    const id = ((buf[off + 4] << 24) | (buf[off + 5] << 16) | (buf[off + 6] << 8) | buf[off + 7]) >>> 0;
    if (count < 2 || count > JUMBO_MAX_CHUNKS || idx >= count || flags !== JUMBO_F_NEEDS_CSUM) {
      return this.#malformed(s);
    }
    const slotOff = this.#base + s * this.slotBytes + this.#prefix;
    if (idx === 0) {
      if (this.#next[s] !== 0) this.incomplete++;
      this.#next[s] = 0;
      if (len < JUMBO_TAG_LEN + JUMBO_META_LEN + MIN_IPV4_LEN) return this.#malformed(s);
      const m = off + JUMBO_TAG_LEN;
      const type = buf[m] & ~VNET_GSO_ECN;
      const gsoSize = (buf[m + 2] << 8) | buf[m + 3];
      if ((type !== VNET_GSO_TCPV4 && type !== VNET_GSO_TCPV6) || buf[m + 1] !== 0 || gsoSize === 0) {
        return this.#malformed(s);
      }
      const meta = s * 4;
      this.#meta[meta] = buf[m];
      this.#meta[meta + 1] = gsoSize;
      this.#meta[meta + 2] = (buf[m + 4] << 8) | buf[m + 5];
      this.#meta[meta + 3] = (buf[m + 6] << 8) | buf[m + 7];
      const n = len - JUMBO_TAG_LEN - JUMBO_META_LEN;
      copy(buf, m + JUMBO_META_LEN, this.#arena, slotOff, n);
      this.#id[s] = id;
      this.#count[s] = count;
      this.#dsize[s] = len;
      this.#filled[s] = n;
      this.#next[s] = 1;
      return JumboResult.PENDING;
    }
    if (this.#next[s] === 0 || this.#id[s] !== id || this.#count[s] !== count || idx !== this.#next[s]) {
      // A chunk of a message we do not have (its start was lost) or out of order.
      if (this.#next[s] !== 0) this.incomplete++;
      this.#next[s] = 0;
      return JumboResult.DROPPED;
    }
    const last = idx === count - 1;
    if (last ? len > this.#dsize[s] : len !== this.#dsize[s]) return this.#malformed(s);
    const n = len - JUMBO_TAG_LEN;
    const filled = this.#filled[s];
    if (filled + n > JUMBO_MAX_PACKET) return this.#malformed(s);
    copy(buf, off + JUMBO_TAG_LEN, this.#arena, slotOff + filled, n);
    this.#filled[s] = filled + n;
    if (!last) {
      this.#next[s] = idx + 1;
      return JumboResult.PENDING;
    }
    this.#next[s] = 0;
    const total = filled + n;
    // The IP header must announce exactly the bytes that arrived.
    const a = this.#arena;
    const v = a[slotOff] >>> 4;
    const ipLen = v === 4
      ? (a[slotOff + 2] << 8) | a[slotOff + 3]
      : v === 6
      ? 40 + ((a[slotOff + 4] << 8) | a[slotOff + 5])
      : -1;
    if (ipLen !== total) return this.#malformed(s);
    const meta = s * 4;
    const want = v === 4 ? VNET_GSO_TCPV4 : VNET_GSO_TCPV6;
    if ((this.#meta[meta] & ~VNET_GSO_ECN) !== want) return this.#malformed(s);
    this.outSlot = s;
    this.outOffset = slotOff;
    this.outLength = total;
    this.outMeta.gsoType = this.#meta[meta];
    this.outMeta.gsoSize = this.#meta[meta + 1];
    this.outMeta.csumStart = this.#meta[meta + 2];
    this.outMeta.csumOffset = this.#meta[meta + 3];
    this.completed++;
    return JumboResult.COMPLETE;
  }
}
