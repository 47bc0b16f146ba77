/**
 * JUMBO messages (see wire.ts): a TCP super-packet cut into tagged chunks of one datagram size, so
 * it crosses the tunnel as one UDP GSO send and is written to the receiver's TUN as one
 * super-packet. Neither side touches a per-segment header: the sender copies slices behind 8-byte
 * tags, the receiver copies them back together ({@link JumboAssembler}).
 *
 * Pure and allocation-free on the packet path. Copies use `copyWithin` when source and destination
 * share one ArrayBuffer (the bind lays its arenas out that way, bind.ts), `set` otherwise.
 * @module
 */
import {
  FAST_HEADER_LEN,
  JUMBO_MAX_CHUNKS,
  JUMBO_META_LEN,
  JUMBO_TAG_LEN,
  MIN_IPV6_LEN,
  MSG_JUMBO,
} from "./wire.ts";
import { SECURE_HEADER_LEN } from "../secure/secure_wire.ts";
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

/** Largest UDP payload of one UDP_SEGMENT send: 65535 − IPv4 header − UDP header. */
const MAX_GSO_PAYLOAD = 65507;

/** Options of {@link jumboTsoSegs}. */
export interface JumboTsoOptions {
  /**
   * MTU of the node's TUN, which sizes the chunks (FAST header + MTU per datagram, bind.ts); default
   * the link's MTU (they differ only when `TUN_MTU_SIZE` sets the bridge's).
   */
  tunMtu?: number;
  /**
   * The messages may be sealed (`TunnelSecurity` not off): each datagram of a sealed message goes out
   * {@link SECURE_HEADER_LEN} bytes longer in its GSO send (secure_layer.ts), so fewer fit one send. A
   * cap for sealed messages also fits plain ones (a `prefer` node's raw peers).
   */
  secure?: boolean;
}

/**
 * The TSO segment count (`gso_max_segs`) for an instance's link of MTU `mtu` at which every TCP
 * super-packet it sends makes a JUMBO message of full-MTU chunks that fits one UDP GSO send (one
 * skb on both nodes' UDP paths, one GRO entry at the receiver): with the kernel's 64 KB default a
 * message needs 45 datagrams at MTU 1450, one more than a send carries, so a second skb of one
 * datagram followed each. With `secure` the count is that of a sealed message's send (at TUN MTU
 * 1468, MTUsize 1500: 44 chunks, 43 sealed datagrams a send, so the plain cap 45 would cost a second
 * send). Undefined when no cap below the 64 KB default does that.
 *
 * (A sealed message whose last chunk is within 16 bytes of a full one still takes a second send:
 * the tag makes its last datagram longer than the others, secure_layer.ts; no cap avoids that.)
 *
 * @example
 * ```ts
 * import { jumboTsoSegs } from "./jumbo.ts";
 * console.log(jumboTsoSegs(1450), jumboTsoSegs(1468), jumboTsoSegs(1468, { secure: true })); // 45 45 44
 * ```
 */
export function jumboTsoSegs(mtu: number, opts: JumboTsoOptions = {}): number | undefined {
  const tun = opts.tunMtu ?? mtu;
  const ok = (m: number) => Number.isInteger(m) && m >= 576 && m <= 9000;
  if (!ok(mtu) || !ok(tun)) return undefined;
  const dsize = FAST_HEADER_LEN + tun; // a chunk, tag included (bind.ts)
  const sent = dsize + (opts.secure === true ? SECURE_HEADER_LEN : 0); // as it goes in the GSO send
  const perSend = Math.min(JUMBO_MAX_CHUNKS, Math.floor(MAX_GSO_PAYLOAD / sent));
  const room = perSend * (dsize - JUMBO_TAG_LEN) - JUMBO_META_LEN; // chunk 0 carries the offload fields too
  // A TSO packet of n segments: its first segment ≤ mtu with the headers, each further one's
  // payload (MSS) ≤ mtu − 40 (IPv4 and TCP headers at least).
  const n = 1 + Math.floor((room - mtu) / (mtu - 40));
  if (n < 2 || mtu + (n - 1) * (mtu - 40) >= JUMBO_MAX_PACKET) return undefined;
  return n;
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

function writeTag(b: Uint8Array, d: number, k: number, count: number, msgId: number): void {
  b[d] = MSG_JUMBO;
  b[d + 1] = k;
  b[d + 2] = count;
  b[d + 3] = JUMBO_F_NEEDS_CSUM;
  b[d + 4] = msgId >>> 24;
  b[d + 5] = msgId >>> 16;
  b[d + 6] = msgId >>> 8;
  b[d + 7] = msgId;
}

function writeMeta(b: Uint8Array, d: number, meta: JumboMeta): void {
  b[d] = meta.gsoType;
  b[d + 1] = 0;
  b[d + 2] = meta.gsoSize >>> 8;
  b[d + 3] = meta.gsoSize;
  b[d + 4] = meta.csumStart >>> 8;
  b[d + 5] = meta.csumStart;
  b[d + 6] = meta.csumOffset >>> 8;
  b[d + 7] = meta.csumOffset;
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
    writeTag(arena, d, k, count, msgId);
    d += JUMBO_TAG_LEN;
    let room = dsize - JUMBO_TAG_LEN;
    if (k === 0) {
      writeMeta(arena, d, meta);
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
  /** Free bytes before each assembly slot's packet (room for a virtio header). */
  prefix: number;
  /**
   * Called with the sender's key and the message id for each of its messages dropped unfinished.
   * (Messages never seen at all show as gaps between the ids of completed ones, {@link outId}; the
   * owner judges both against its window of the sender's ids, so made-up ids cannot count as loss.)
   */
  onLost?: (key: object, id: number) => void;
}

/** Smallest chunk-0 slice: room for the largest IP + TCP headers, so the headers are contiguous. */
const MIN_FIRST_SLICE = 120;

/**
 * Reassembles JUMBO messages, one in progress per sender (`key`, any object identifying the peer).
 * Chunks must arrive in order; a gap, a malformed chunk or a new message before the end drops the
 * message in progress (counted in {@link lost} / {@link malformed}).
 *
 * Slices are not copied while they stay where they arrived: a chunk inside `arena` (the receive
 * arena) is recorded as a part (offset, length). Before the receive buffers are reused, the caller
 * must {@link spill} — the parts of unfinished messages are then copied into their sender's slot.
 * Chunks outside `arena` are copied into the slot at once. On {@link JumboResult.COMPLETE} the packet
 * is the concatenation of parts `outPartOffsets[0..outParts)` / `outPartLengths` (offsets into
 * `arena`; the first holds the IP and TCP headers), valid until the next `add` or `spill`.
 */
export class JumboAssembler {
  /** Bytes per slot: prefix + the largest packet. */
  readonly slotBytes: number;
  /** Messages assembled completely. */
  completed = 0;
  /**
   * Messages lost: dropped unfinished (lost or reordered chunk, the slot reused for another sender)
   * or missing from a sender's consecutive message ids.
   */
  lost = 0;
  /** Chunks dropped as malformed (bad tag or offload fields, wrong size, length mismatch). */
  malformed = 0;
  /** Chunks of a message not in progress (its start was lost, or made up): dropped, the message in progress kept. */
  strays = 0;
  /** Message id of the last completed packet. */
  outId = 0;
  /** Messages that had to be copied because they spanned receive batches. */
  spilled = 0;
  /** Result of the last datagram {@link addRun} took (PENDING when none completed or was dropped). */
  runResult: JumboResult = JumboResult.PENDING;
  /** Offset in the arena of the last completed packet's first part (its IP header). */
  outOffset = 0;
  /** Length of the last completed packet. */
  outLength = 0;
  /** Number of parts of the last completed packet. */
  outParts = 0;
  /** Arena offsets of its parts. */
  readonly outPartOffsets: Int32Array;
  /** Lengths of its parts. */
  readonly outPartLengths: Int32Array;
  /** Offload fields of the last completed packet. */
  readonly outMeta: JumboMeta = { gsoType: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };

  readonly #arena: Uint8Array;
  readonly #whole: boolean;
  readonly #base: number;
  readonly #prefix: number;
  readonly #onLost?: (key: object, id: number) => void;
  readonly #keys: (object | null)[];
  readonly #id: Uint32Array;
  readonly #next: Int32Array; // next chunk index; 0 = nothing in progress
  readonly #count: Int32Array;
  readonly #dsize: Int32Array;
  readonly #filled: Int32Array;
  readonly #used: Float64Array;
  readonly #meta: Int32Array; // gsoType, gsoSize, csumStart, csumOffset per slot
  readonly #nparts: Int32Array;
  readonly #pOff: Int32Array; // JUMBO_MAX_CHUNKS per slot
  readonly #pLen: Int32Array;
  #tick = 0;

  constructor(opts: JumboAssemblerOptions) {
    const { arena, base, slots, prefix } = opts;
    this.slotBytes = prefix + JUMBO_MAX_PACKET;
    if (!Number.isInteger(slots) || slots < 1 || slots > 256) throw new RangeError("slots must be 1..256");
    if (!Number.isInteger(base) || base < 0 || base + slots * this.slotBytes > arena.length) {
      throw new RangeError(`arena too small for ${slots} assembly slots at ${base}`);
    }
    this.#arena = arena;
    this.#whole = arena.byteOffset === 0 && arena.length === arena.buffer.byteLength;
    this.#base = base;
    this.#prefix = prefix;
    this.#onLost = opts.onLost;
    this.#keys = new Array<object | null>(slots).fill(null);
    this.#id = new Uint32Array(slots);
    this.#next = new Int32Array(slots);
    this.#count = new Int32Array(slots);
    this.#dsize = new Int32Array(slots);
    this.#filled = new Int32Array(slots);
    this.#used = new Float64Array(slots);
    this.#meta = new Int32Array(slots * 4);
    this.#nparts = new Int32Array(slots);
    this.#pOff = new Int32Array(slots * JUMBO_MAX_CHUNKS);
    this.#pLen = new Int32Array(slots * JUMBO_MAX_CHUNKS);
    this.outPartOffsets = new Int32Array(JUMBO_MAX_CHUNKS);
    this.outPartLengths = new Int32Array(JUMBO_MAX_CHUNKS);
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
    if (this.#next[s] !== 0) this.#lost(s);
    keys[s] = key;
    this.#next[s] = 0;
    return s;
  }

  /** A malformed chunk; it breaks the message in progress only when it carries that message's id. */
  #malformed(s: number, id: number): JumboResult {
    this.malformed++;
    if (this.#next[s] !== 0 && this.#id[s] === id) {
      this.#lost(s);
      this.#next[s] = 0;
    }
    return JumboResult.DROPPED;
  }

  /** The message that just ended does not hold together (its id then shows as a gap to the owner). */
  #malformed2(_s: number): JumboResult {
    this.malformed++;
    return JumboResult.DROPPED;
  }

  /** Counts slot `s`'s unfinished message as lost and tells the owner. */
  #lost(s: number): void {
    this.lost++;
    const key = this.#keys[s];
    if (key !== null) this.#onLost?.(key, this.#id[s]);
  }

  #slotStart(s: number): number {
    return this.#base + s * this.slotBytes + this.#prefix;
  }

  /** Records (or copies, when `buf` is not the arena) `n` bytes at `buf[from..]` as the next part. */
  #part(s: number, buf: Uint8Array, from: number, n: number): void {
    let at: number;
    if (this.#whole && buf.buffer === this.#arena.buffer) {
      at = buf.byteOffset + from;
    } else {
      at = this.#slotStart(s) + this.#filled[s];
      copy(buf, from, this.#arena, at, n);
    }
    const k = s * JUMBO_MAX_CHUNKS + this.#nparts[s];
    const prev = k - 1;
    if (this.#nparts[s] > 0 && this.#pOff[prev] + this.#pLen[prev] === at) {
      this.#pLen[prev] += n; // adjacent (copied) bytes: one part
    } else {
      this.#pOff[k] = at;
      this.#pLen[k] = n;
      this.#nparts[s]++;
    }
    this.#filled[s] += n;
  }

  /**
   * Copies the parts of every unfinished message into its sender's slot, so the receive buffers
   * they point into may be reused. Call before each new receive.
   */
  spill(): void {
    for (let s = 0; s < this.#keys.length; s++) {
      if (this.#next[s] === 0) continue;
      const start = this.#slotStart(s);
      const base = s * JUMBO_MAX_CHUNKS;
      const n = this.#nparts[s];
      if (n === 1 && this.#pOff[base] === start) continue; // already in the slot
      let at = start;
      for (let k = 0; k < n; k++) {
        const o = this.#pOff[base + k], l = this.#pLen[base + k];
        if (o !== at) this.#arena.copyWithin(at, o, o + l);
        at += l;
      }
      this.#pOff[base] = start;
      this.#pLen[base] = at - start;
      this.#nparts[s] = 1;
      this.spilled++;
    }
  }

  /**
   * Adds up to `n` datagrams of `step` bytes each at `buf[off + i * step]` from sender `key`: the
   * rest of one receive run (a UDP GRO entry: one source, one datagram size), so the per-datagram
   * work the caller would do (peer lookup, classification) is done once for the run. The middle
   * chunks of the message in progress take a short path here (tag compared with the message's);
   * anything else goes through {@link add}. Stops before the first datagram that is not a JUMBO
   * chunk, and after one that completes a message or is dropped. Returns the datagrams taken;
   * {@link runResult} is the result of the last one taken.
   */
  addRun(key: object, buf: Uint8Array, off: number, step: number, n: number): number {
    let r: JumboResult = JumboResult.PENDING;
    let taken = 0;
    if (off < 0 || step < JUMBO_TAG_LEN + 1 || n <= 0 || off + n * step > buf.length) {
      this.runResult = r;
      return 0;
    }
    let s = -1;
    // Chunks in the arena (the bind's receive entries) are recorded where they are.
    const here = this.#whole && buf.buffer === this.#arena.buffer ? buf.byteOffset : -1;
    const slice = step - JUMBO_TAG_LEN;
    for (; taken < n; taken++) {
      const o = off + taken * step;
      if (buf[o] !== MSG_JUMBO) break;
      if (s < 0) s = this.#slotOf(key);
      const next = this.#next[s];
      const idx = buf[o + 1];
      const sid = this.#id[s];
      if (
        next !== 0 && idx === next && idx < this.#count[s] - 1 && buf[o + 2] === this.#count[s] &&
        buf[o + 3] === JUMBO_F_NEEDS_CSUM && step === this.#dsize[s] &&
        buf[o + 4] === sid >>> 24 && buf[o + 5] === ((sid >>> 16) & 0xff) &&
        buf[o + 6] === ((sid >>> 8) & 0xff) && buf[o + 7] === (sid & 0xff) &&
        this.#filled[s] + slice <= JUMBO_MAX_PACKET
      ) {
        // A middle chunk of the message in progress, in order and of its size.
        this.#used[s] = ++this.#tick;
        const np = this.#nparts[s];
        if (here >= 0 && np > 0) {
          const k = s * JUMBO_MAX_CHUNKS + np;
          this.#pOff[k] = here + o + JUMBO_TAG_LEN;
          this.#pLen[k] = slice;
          this.#nparts[s] = np + 1;
          this.#filled[s] += slice;
        } else {
          this.#part(s, buf, o + JUMBO_TAG_LEN, slice);
        }
        this.#next[s] = idx + 1;
        continue;
      }
      r = this.add(key, buf, o, step);
      if (r !== JumboResult.PENDING) {
        taken++;
        break;
      }
    }
    this.runResult = r;
    return taken;
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
      return this.#malformed(s, id);
    }
    if (idx === 0) {
      // Checked whole before it replaces the message in progress (a bad chunk 0 must not cost it).
      if (len < JUMBO_TAG_LEN + JUMBO_META_LEN + MIN_FIRST_SLICE) return this.#malformed(s, id);
      const m = off + JUMBO_TAG_LEN;
      const type = buf[m] & ~VNET_GSO_ECN;
      const gsoSize = (buf[m + 2] << 8) | buf[m + 3];
      if ((type !== VNET_GSO_TCPV4 && type !== VNET_GSO_TCPV6) || buf[m + 1] !== 0 || gsoSize === 0) {
        return this.#malformed(s, id);
      }
      // The TCP header (at the checksum offsets) must lie in chunk 0's slice.
      const l4 = (buf[m + 4] << 8) | buf[m + 5];
      const field = (buf[m + 6] << 8) | buf[m + 7];
      if (l4 < 20 || l4 + 20 > len - JUMBO_TAG_LEN - JUMBO_META_LEN || field !== 16) {
        return this.#malformed(s, id);
      }
      if (this.#next[s] !== 0) this.#lost(s);
      const meta = s * 4;
      this.#meta[meta] = buf[m];
      this.#meta[meta + 1] = gsoSize;
      this.#meta[meta + 2] = l4;
      this.#meta[meta + 3] = field;
      this.#id[s] = id;
      this.#count[s] = count;
      this.#dsize[s] = len;
      this.#filled[s] = 0;
      this.#nparts[s] = 0;
      this.#part(s, buf, m + JUMBO_META_LEN, len - JUMBO_TAG_LEN - JUMBO_META_LEN);
      this.#next[s] = 1;
      return JumboResult.PENDING;
    }
    if (this.#next[s] === 0 || this.#id[s] !== id) {
      // A chunk of a message we do not have (its start was lost, or it is made up): the message in
      // progress, if any, is not its business.
      this.strays++;
      return JumboResult.DROPPED;
    }
    if (this.#count[s] !== count || idx !== this.#next[s]) {
      // Out of order or repeated: the message cannot complete.
      this.#lost(s);
      this.#next[s] = 0;
      return JumboResult.DROPPED;
    }
    const last = idx === count - 1;
    if (last ? len > this.#dsize[s] : len !== this.#dsize[s]) return this.#malformed(s, id);
    const n = len - JUMBO_TAG_LEN;
    if (this.#filled[s] + n > JUMBO_MAX_PACKET) return this.#malformed(s, id);
    this.#part(s, buf, off + JUMBO_TAG_LEN, n);
    if (!last) {
      this.#next[s] = idx + 1;
      return JumboResult.PENDING;
    }
    this.#next[s] = 0;
    const total = this.#filled[s];
    const base = s * JUMBO_MAX_CHUNKS;
    const head = this.#pOff[base];
    // The IP header must announce exactly the bytes that arrived.
    const a = this.#arena;
    const v = a[head] >>> 4;
    const ipLen = v === 4
      ? (a[head + 2] << 8) | a[head + 3]
      : v === 6
      ? 40 + ((a[head + 4] << 8) | a[head + 5])
      : -1;
    if (ipLen !== total) return this.#malformed2(s);
    const meta = s * 4;
    const want = v === 4 ? VNET_GSO_TCPV4 : VNET_GSO_TCPV6;
    if ((this.#meta[meta] & ~VNET_GSO_ECN) !== want) return this.#malformed2(s);
    if (this.#meta[meta + 2] < (v === 4 ? 20 : 40)) return this.#malformed2(s); // TCP behind the IP header
    const parts = this.#nparts[s];
    for (let k = 0; k < parts; k++) {
      this.outPartOffsets[k] = this.#pOff[base + k];
      this.outPartLengths[k] = this.#pLen[base + k];
    }
    this.outParts = parts;
    this.outOffset = head;
    this.outLength = total;
    this.outMeta.gsoType = this.#meta[meta];
    this.outMeta.gsoSize = this.#meta[meta + 1];
    this.outMeta.csumStart = this.#meta[meta + 2];
    this.outMeta.csumOffset = this.#meta[meta + 3];
    this.outId = this.#id[s];
    this.completed++;
    return JumboResult.COMPLETE;
  }
}

/**
 * For a packet read straight into the JUMBO layout at `arena[at ..]` (chunk `k`'s slice at
 * `at + k * dsize + 8`, chunk 0's at `at + 16` — see {@link jumboSliceOffset}) except that chunk 0's
 * slice is at `arena[firstAt ..]`: writes the tags and offload fields around the slices and copies
 * chunk 0's slice into place. Returns the bytes of the message (as {@link writeJumbo}), or 0 when
 * the packet does not make a JUMBO message.
 */
export function placeJumbo(
  arena: Uint8Array,
  firstAt: number,
  total: number,
  at: number,
  dsize: number,
  msgId: number,
  meta: JumboMeta,
): number {
  const count = jumboChunkCount(total, dsize);
  if (count === 0 || at + count * dsize > arena.length) return 0;
  writeTag(arena, at, 0, count, msgId);
  writeMeta(arena, at + JUMBO_TAG_LEN, meta);
  copy(arena, firstAt, arena, at + JUMBO_TAG_LEN + JUMBO_META_LEN, dsize - JUMBO_TAG_LEN - JUMBO_META_LEN);
  for (let k = 1; k < count; k++) writeTag(arena, at + k * dsize, k, count, msgId);
  return total + count * JUMBO_TAG_LEN + JUMBO_META_LEN;
}

/** Offset from the message start of chunk `k`'s slice in the JUMBO layout. */
export function jumboSliceOffset(k: number, dsize: number): number {
  return k === 0 ? JUMBO_TAG_LEN + JUMBO_META_LEN : k * dsize + JUMBO_TAG_LEN;
}

/**
 * The reverse for a packet that will not go as JUMBO after all: appends the slices of chunks 1..
 * (from the layout at `arena[at ..]`) to chunk 0's slice at `arena[firstAt ..]`, making the packet
 * contiguous there. `total` is the packet's length.
 */
export function gatherJumbo(
  arena: Uint8Array,
  firstAt: number,
  total: number,
  at: number,
  dsize: number,
): void {
  const first = dsize - JUMBO_TAG_LEN - JUMBO_META_LEN;
  const rest = dsize - JUMBO_TAG_LEN;
  let d = firstAt + first;
  for (let k = 1, left = total - first; left > 0; k++) {
    const n = Math.min(rest, left);
    copy(arena, at + jumboSliceOffset(k, dsize), arena, d, n);
    d += n;
    left -= n;
  }
}
