/**
 * The conversion cache (reference §5.5, redone): one record per flow, found by the full 5-tuple of the
 * packet the local instance sent — (version, protocol, source address, source port, destination
 * address, destination port) — and, for replies arriving back on this node, by the reply's 5-tuple.
 *
 * A flow record holds: the dialled ServiceIP, the chosen instance's namespace IP (new destination), the
 * sender's Instance IP (new source), the target node key, and lastSeen / packets / bytes.
 *
 * Layout: each flow is a fixed record of 24 uint32 words in one `Uint32Array` (hot compare fields
 * first), indexed by a flow id; counters and recency links sit in side arrays. Two open-addressing
 * hash indexes (linear probing, backward-shift deletion, load ≤ 1/2, `[hash, id]` pairs) map a
 * 32-bit hash of the tuple to flow ids, and every hit is confirmed by comparing the record's fields.
 * Hashes are computed from numbers (IPv4) or from words read straight out of the packet bytes (IPv6):
 * a lookup allocates nothing and builds no strings.
 *
 * Reverse key: a reply carries source = the chosen instance's Instance IP (its node rewrote it so),
 * source port = the original destination port, destination = the sender's namespace IP, destination
 * port = the original source port. Keying on all of these (Oakestra keys on ports and nsip only) means
 * two services dialled from the same source port to the same destination port do not collide. Only
 * truly identical reply tuples (the same instance dialled through two ServiceIPs from one socket) are
 * ambiguous: then the newest flow owns the reply mapping.
 *
 * Bounds: the cache grows by doubling up to `maxFlows`; when full, a new flow evicts the least
 * recently used one (counted in `evictions`). Flows also leave by `sweep(now, idleMs)` (idle ones,
 * oldest first, O(evicted)), `dropInstance(nsip4)` / `dropInstances(TableChange.gone)` (the chosen
 * or sending instance left the table) and `remove(id)`. Time is passed in (milliseconds,
 * non-decreasing): the module is pure.
 *
 * @example
 * ```ts
 * declare const proto: number, src: number, sport: number, dst: number, dport: number; // the packet's tuple
 * declare const now: number, packetLength: number;
 * // the balancer's pick for a new flow: chosen, senderIp, replySrc, node, target, sender
 * declare function choose(): Omit<NewFlow4, "proto" | "src" | "sport" | "dst" | "dport">;
 * const flows = new FlowTable({ maxFlows: 65536 });
 * let id = flows.find4(proto, src, sport, dst, dport);
 * if (id < 0) id = flows.add4({ proto, src, sport, dst, dport, ...choose() }, now);
 * flows.touch(id, now, packetLength);
 * // rewrite: dst := flows.chosen4(id), src := flows.senderIp4(id); send to flows.node(id)
 * ```
 */
import { formatIPv4, formatIPv6 } from "../addr/mod.ts";
import { fmix32, KEY_SEED, mix32, word } from "../table/keys.ts";

/** IP protocol number of TCP. */
export const PROTO_TCP = 6;
/** IP protocol number of UDP. */
export const PROTO_UDP = 17;

/** A new IPv4 flow: the packet's tuple as sent by the local instance, and the translation chosen. */
export interface NewFlow4 {
  /** IP protocol (6 TCP, 17 UDP). */
  proto: number;
  /** Packet source: the sender's namespace IPv4. */
  src: number;
  /** Packet source port. */
  sport: number;
  /** Packet destination: the dialled ServiceIP. */
  dst: number;
  /** Packet destination port. */
  dport: number;
  /** The chosen instance's namespace IPv4 (new destination). */
  chosen: number;
  /** The sender's Instance IPv4 (new source). */
  senderIp: number;
  /** Source address replies will carry: the chosen instance's Instance IPv4. */
  replySrc: number;
  /** Node key of the chosen instance's node (`"ip:port"`). */
  node: string;
  /** Identity of the chosen instance (its table entry's nsip4) for `dropInstance` / `activeFlows`. */
  target: number;
  /** Identity of the sending instance (its table entry's nsip4) for `dropInstance`. */
  sender: number;
}

/** A new IPv6 flow; packet addresses are read from `buf` at `srcOff` / `dstOff`. */
export interface NewFlow6 {
  /** IP protocol (6 TCP, 17 UDP). */
  proto: number;
  /** Bytes holding the packet (or any bytes holding both addresses). */
  buf: Uint8Array;
  /** Offset of the source address (the sender's namespace IPv6) in `buf`. */
  srcOff: number;
  /** Packet source port. */
  sport: number;
  /** Offset of the destination address (the dialled ServiceIP) in `buf`. */
  dstOff: number;
  /** Packet destination port. */
  dport: number;
  /** The chosen instance's namespace IPv6 (new destination), 16 bytes. */
  chosen: Uint8Array;
  /** The sender's Instance IPv6 (new source), 16 bytes. */
  senderIp: Uint8Array;
  /** Source address replies will carry: the chosen instance's Instance IPv6, 16 bytes. */
  replySrc: Uint8Array;
  /** Node key of the chosen instance's node. */
  node: string;
  /** Identity of the chosen instance (its table entry's nsip4). */
  target: number;
  /** Identity of the sending instance (its table entry's nsip4). */
  sender: number;
}

/** A flow as plain data (for inspection; allocates). */
export interface FlowInfo {
  /** Flow id. */
  id: number;
  /** 4 or 6. */
  version: 4 | 6;
  /** IP protocol. */
  proto: number;
  /** Sender namespace IP. */
  src: string;
  /** Source port. */
  sport: number;
  /** Dialled ServiceIP. */
  dialled: string;
  /** Destination port. */
  dport: number;
  /** Chosen instance namespace IP. */
  chosen: string;
  /** Sender Instance IP. */
  senderIp: string;
  /** Expected reply source (chosen instance's Instance IP). */
  replySrc: string;
  /** Target node key. */
  node: string;
  /** Time of the last packet (ms). */
  lastSeen: number;
  /** Packets seen. */
  packets: number;
  /** Bytes seen. */
  bytes: number;
}

/** Options of a {@link FlowTable}. */
export interface FlowTableOptions {
  /** Maximum number of flows (default 65536). */
  maxFlows?: number;
  /** Initial capacity before growing (default min(1024, maxFlows)). */
  initialCapacity?: number;
}

// One flow record = S uint32 words, hot compare fields first (array of structs: a lookup touches
// one index line and the first line or two of one record).
const S = 24;
const META = 0; // version << 8 | protocol; 0 = free
const PORTS = 1; // sport << 16 | dport (as sent by the local instance)
const A_SRC = 2; // sender nsip
const A_DIAL = 6; // dialled ServiceIP
const A_REPLY = 10; // reply source (chosen instance's Instance IP)
const A_CHOSEN = 14; // chosen instance nsip
const A_SENDER = 18; // sender Instance IP
const TARGET = 22; // chosen instance identity (nsip4)
const SENDER_ID = 23; // sending instance identity (nsip4)

function hash4(proto: number, a: number, ap: number, b: number, bp: number): number {
  let h = mix32(KEY_SEED, 0x400 | proto);
  h = mix32(h, a);
  h = mix32(h, b);
  h = mix32(h, (ap << 16) | bp);
  return fmix32(h) | 0;
}

function hash6(
  proto: number,
  a0: number,
  a1: number,
  a2: number,
  a3: number,
  ap: number,
  b0: number,
  b1: number,
  b2: number,
  b3: number,
  bp: number,
): number {
  let h = mix32(KEY_SEED, 0x600 | proto);
  h = mix32(h, a0);
  h = mix32(h, a1);
  h = mix32(h, a2);
  h = mix32(h, a3);
  h = mix32(h, b0);
  h = mix32(h, b1);
  h = mix32(h, b2);
  h = mix32(h, b3);
  h = mix32(h, (ap << 16) | bp);
  return fmix32(h) | 0;
}

function hash6w(proto: number, w: Uint32Array, a: number, ap: number, b: number, bp: number): number {
  return hash6(proto, w[a], w[a + 1], w[a + 2], w[a + 3], ap, w[b], w[b + 1], w[b + 2], w[b + 3], bp);
}

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** Thrown for invalid flow-table arguments. */
export class FlowError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FlowError";
  }
}

/** The conversion cache. See the module documentation. */
export class FlowTable {
  readonly #max: number;
  #cap = 0;
  #size = 0;
  #evictions = 0;
  // per flow
  #rec = new Uint32Array(0);
  #lastSeen = new Float64Array(0);
  #packets = new Float64Array(0);
  #bytes = new Float64Array(0);
  #fwdHash = new Int32Array(0);
  #revHash = new Int32Array(0);
  #revOwned = new Uint8Array(0);
  #prev = new Int32Array(0);
  #next = new Int32Array(0);
  #node: string[] = [];
  #head = -1; // least recently used
  #tail = -1; // most recently used
  #free = -1;
  // indexes: [hash, id] pairs, id -1 = empty
  #mask = 0;
  #fwd = new Int32Array(0);
  #rev = new Int32Array(0);
  // instance identity → active flow count
  readonly #load = new Map<number, number>();

  #added = 0;

  constructor(opts: FlowTableOptions = {}) {
    const max = opts.maxFlows ?? 65536;
    if (!Number.isInteger(max) || max < 1 || max > 1 << 24) {
      throw new FlowError(`maxFlows ${max} not in 1..2^24`);
    }
    this.#max = max;
    const init = Math.min(max, Math.max(1, opts.initialCapacity ?? 1024));
    this.#resize(init);
  }

  /** Flows added since the table was made (the kernel fast path looks for new flows when it grows). */
  get added(): number {
    return this.#added;
  }

  /** Number of live flows. */
  get size(): number {
    return this.#size;
  }

  /** Current capacity (grows by doubling up to `maxFlows`). */
  get capacity(): number {
    return this.#cap;
  }

  /** The bound on live flows. */
  get maxFlows(): number {
    return this.#max;
  }

  /** Flows evicted (least recently used) because the table was full. */
  get evictions(): number {
    return this.#evictions;
  }

  // ------------------------------------------------------------------ lookups (packet path)

  /** Flow id for an outgoing IPv4 packet's tuple (src = sender nsip, dst = dialled IP), or -1. */
  find4(proto: number, srcAddr: number, sport: number, dstAddr: number, dport: number): number {
    const src = srcAddr >>> 0;
    const dst = dstAddr >>> 0;
    const meta = 0x400 | proto;
    const ports = ((sport << 16) | dport) >>> 0;
    const h = hash4(proto, src, sport, dst, dport);
    const X = this.#fwd;
    const R = this.#rec;
    const mask = this.#mask;
    for (let s = h & mask;; s = (s + 1) & mask) {
      const id = X[2 * s + 1];
      if (id < 0) return -1;
      if (X[2 * s] === h) {
        const b = id * S;
        if (R[b] === meta && R[b + PORTS] === ports && R[b + A_SRC] === src && R[b + A_DIAL] === dst) {
          return id;
        }
      }
    }
  }

  /** Flow id for an outgoing IPv6 packet, addresses read from `buf` at `srcOff` / `dstOff`, or -1. */
  find6(
    proto: number,
    buf: Uint8Array,
    srcOff: number,
    sport: number,
    dstOff: number,
    dport: number,
  ): number {
    const s0 = word(buf, srcOff);
    const s1 = word(buf, srcOff + 4);
    const s2 = word(buf, srcOff + 8);
    const s3 = word(buf, srcOff + 12);
    const d0 = word(buf, dstOff);
    const d1 = word(buf, dstOff + 4);
    const d2 = word(buf, dstOff + 8);
    const d3 = word(buf, dstOff + 12);
    const meta = 0x600 | proto;
    const ports = ((sport << 16) | dport) >>> 0;
    const h = hash6(proto, s0, s1, s2, s3, sport, d0, d1, d2, d3, dport);
    const X = this.#fwd;
    const R = this.#rec;
    const mask = this.#mask;
    for (let s = h & mask;; s = (s + 1) & mask) {
      const id = X[2 * s + 1];
      if (id < 0) return -1;
      if (X[2 * s] === h) {
        const b = id * S;
        if (
          R[b] === meta && R[b + PORTS] === ports &&
          R[b + A_SRC] === s0 && R[b + A_SRC + 1] === s1 && R[b + A_SRC + 2] === s2 &&
          R[b + A_SRC + 3] === s3 &&
          R[b + A_DIAL] === d0 && R[b + A_DIAL + 1] === d1 && R[b + A_DIAL + 2] === d2 &&
          R[b + A_DIAL + 3] === d3
        ) return id;
      }
    }
  }

  /**
   * Flow id for an incoming IPv4 reply (src = remote Instance IP, dst = local sender nsip), or -1.
   * On a hit, restore the source with `dialled4(id)`.
   */
  findReply4(proto: number, srcAddr: number, sport: number, dstAddr: number, dport: number): number {
    const src = srcAddr >>> 0;
    const dst = dstAddr >>> 0;
    const meta = 0x400 | proto;
    const ports = ((dport << 16) | sport) >>> 0; // the flow's own (sport, dport)
    const h = hash4(proto, src, sport, dst, dport);
    const X = this.#rev;
    const R = this.#rec;
    const mask = this.#mask;
    for (let s = h & mask;; s = (s + 1) & mask) {
      const id = X[2 * s + 1];
      if (id < 0) return -1;
      if (X[2 * s] === h) {
        const b = id * S;
        if (R[b] === meta && R[b + PORTS] === ports && R[b + A_REPLY] === src && R[b + A_SRC] === dst) {
          return id;
        }
      }
    }
  }

  /** Flow id for an incoming IPv6 reply, addresses read from `buf`, or -1. */
  findReply6(
    proto: number,
    buf: Uint8Array,
    srcOff: number,
    sport: number,
    dstOff: number,
    dport: number,
  ): number {
    const s0 = word(buf, srcOff);
    const s1 = word(buf, srcOff + 4);
    const s2 = word(buf, srcOff + 8);
    const s3 = word(buf, srcOff + 12);
    const d0 = word(buf, dstOff);
    const d1 = word(buf, dstOff + 4);
    const d2 = word(buf, dstOff + 8);
    const d3 = word(buf, dstOff + 12);
    const meta = 0x600 | proto;
    const ports = ((dport << 16) | sport) >>> 0; // the flow's own (sport, dport)
    const h = hash6(proto, s0, s1, s2, s3, sport, d0, d1, d2, d3, dport);
    const X = this.#rev;
    const R = this.#rec;
    const mask = this.#mask;
    for (let s = h & mask;; s = (s + 1) & mask) {
      const id = X[2 * s + 1];
      if (id < 0) return -1;
      if (X[2 * s] === h) {
        const b = id * S;
        if (
          R[b] === meta && R[b + PORTS] === ports &&
          R[b + A_REPLY] === s0 && R[b + A_REPLY + 1] === s1 && R[b + A_REPLY + 2] === s2 &&
          R[b + A_REPLY + 3] === s3 &&
          R[b + A_SRC] === d0 && R[b + A_SRC + 1] === d1 && R[b + A_SRC + 2] === d2 && R[b + A_SRC + 3] === d3
        ) return id;
      }
    }
  }

  /** Records a packet of flow `id` at time `now` (ms): lastSeen, counters, recency. */
  touch(id: number, now: number, bytes: number): void {
    if (this.#rec[id * S + META] === 0) return; // not live (or out of range)
    this.#lastSeen[id] = now;
    this.#packets[id]++;
    this.#bytes[id] += bytes;
    if (this.#tail !== id) {
      this.#unlink(id);
      this.#linkTail(id);
    }
  }

  // ------------------------------------------------------------------ accessors

  /** 4 or 6 (0 when `id` is not live). */
  version(id: number): number {
    return this.#rec[id * S + META] >>> 8;
  }

  /** Chosen instance's namespace IPv4 (new destination). */
  chosen4(id: number): number {
    return this.#rec[id * S + A_CHOSEN];
  }

  /** The dialled ServiceIPv4 (the source to restore on replies). */
  dialled4(id: number): number {
    return this.#rec[id * S + A_DIAL];
  }

  /** The sender's Instance IPv4 (new source). */
  senderIp4(id: number): number {
    return this.#rec[id * S + A_SENDER];
  }

  /** Writes the chosen instance's namespace IPv6 into `out` at `off`. */
  writeChosen6(id: number, out: Uint8Array, off: number): void {
    write6(this.#rec, id * S + A_CHOSEN, out, off);
  }

  /** Writes the dialled ServiceIPv6 into `out` at `off`. */
  writeDialled6(id: number, out: Uint8Array, off: number): void {
    write6(this.#rec, id * S + A_DIAL, out, off);
  }

  /** Writes the sender's Instance IPv6 into `out` at `off`. */
  writeSenderIp6(id: number, out: Uint8Array, off: number): void {
    write6(this.#rec, id * S + A_SENDER, out, off);
  }

  /** Target node key of flow `id`. */
  node(id: number): string {
    return this.#node[id];
  }

  /** Identity (nsip4) of the chosen instance of flow `id`. */
  target(id: number): number {
    return this.#rec[id * S + TARGET];
  }

  /** Time of the last packet of flow `id`. */
  lastSeen(id: number): number {
    return this.#lastSeen[id];
  }

  /** Packets counted on flow `id`. */
  packets(id: number): number {
    return this.#packets[id];
  }

  /** Bytes counted on flow `id`. */
  bytes(id: number): number {
    return this.#bytes[id];
  }

  /** Live flows whose chosen instance is `target` (an entry's nsip4). */
  activeFlows(target: number): number {
    return this.#load.get(target >>> 0) ?? 0;
  }

  /** Live flow ids, least recently used first. */
  *ids(): IterableIterator<number> {
    for (let id = this.#head; id >= 0;) {
      const next = this.#next[id];
      yield id;
      id = next;
    }
  }

  /** Flow `id` as plain data (allocates; for inspection). */
  info(id: number): FlowInfo {
    const v = this.version(id);
    if (v !== 4 && v !== 6) throw new FlowError(`flow ${id} is not live`);
    const R = this.#rec;
    const text = (base: number) => {
      if (v === 4) return formatIPv4(R[base]);
      const b = new Uint8Array(16);
      write6(R, base, b, 0);
      return formatIPv6(b);
    };
    const b = id * S;
    return {
      id,
      version: v,
      proto: R[b + META] & 255,
      src: text(b + A_SRC),
      sport: R[b + PORTS] >>> 16,
      dialled: text(b + A_DIAL),
      dport: R[b + PORTS] & 0xffff,
      chosen: text(b + A_CHOSEN),
      senderIp: text(b + A_SENDER),
      replySrc: text(b + A_REPLY),
      node: this.#node[id],
      lastSeen: this.#lastSeen[id],
      packets: this.#packets[id],
      bytes: this.#bytes[id],
    };
  }

  // ------------------------------------------------------------------ insertion

  /**
   * Adds an IPv4 flow (replacing one with the same tuple; evicting the least recently used flow when
   * full) and returns its id. Counters start at 0; `lastSeen` = `now`.
   */
  add4(f: NewFlow4, now: number): number {
    checkTuple(f.proto, f.sport, f.dport);
    const old = this.find4(f.proto, f.src, f.sport, f.dst, f.dport);
    if (old >= 0) this.remove(old);
    const id = this.#alloc();
    const b = id * S;
    const R = this.#rec;
    R.fill(0, b, b + S);
    R[b + META] = 0x400 | f.proto;
    R[b + A_SRC] = f.src >>> 0;
    R[b + A_DIAL] = f.dst >>> 0;
    R[b + A_REPLY] = f.replySrc >>> 0;
    R[b + A_CHOSEN] = f.chosen >>> 0;
    R[b + A_SENDER] = f.senderIp >>> 0;
    this.#fill(id, f.sport, f.dport, f.node, f.target, f.sender, now);
    this.#fwdHash[id] = hash4(f.proto, R[b + A_SRC], f.sport, R[b + A_DIAL], f.dport);
    this.#revHash[id] = hash4(f.proto, R[b + A_REPLY], f.dport, R[b + A_SRC], f.sport);
    this.#index(id);
    return id;
  }

  /** Adds an IPv6 flow; see {@link add4}. */
  add6(f: NewFlow6, now: number): number {
    checkTuple(f.proto, f.sport, f.dport);
    for (
      const [name, a] of [["chosen", f.chosen], ["senderIp", f.senderIp], ["replySrc", f.replySrc]] as const
    ) {
      if (a.length < 16) throw new FlowError(`add6: ${name} must be 16 bytes`);
    }
    if (f.srcOff < 0 || f.dstOff < 0 || f.srcOff + 16 > f.buf.length || f.dstOff + 16 > f.buf.length) {
      throw new FlowError("add6: address offsets outside buf");
    }
    const old = this.find6(f.proto, f.buf, f.srcOff, f.sport, f.dstOff, f.dport);
    if (old >= 0) this.remove(old);
    const id = this.#alloc();
    const b = id * S;
    const R = this.#rec;
    R.fill(0, b, b + S);
    R[b + META] = 0x600 | f.proto;
    read6(R, b + A_SRC, f.buf, f.srcOff);
    read6(R, b + A_DIAL, f.buf, f.dstOff);
    read6(R, b + A_REPLY, f.replySrc, 0);
    read6(R, b + A_CHOSEN, f.chosen, 0);
    read6(R, b + A_SENDER, f.senderIp, 0);
    this.#fill(id, f.sport, f.dport, f.node, f.target, f.sender, now);
    this.#fwdHash[id] = hash6w(f.proto, R, b + A_SRC, f.sport, b + A_DIAL, f.dport);
    this.#revHash[id] = hash6w(f.proto, R, b + A_REPLY, f.dport, b + A_SRC, f.sport);
    this.#index(id);
    return id;
  }

  // ------------------------------------------------------------------ removal

  /** Removes flow `id` (no-op when not live). */
  remove(id: number): void {
    if (!(id >= 0 && id < this.#cap) || this.#rec[id * S + META] === 0) return;
    unindex(this.#fwd, this.#mask, this.#fwdHash[id], id);
    if (this.#revOwned[id]) unindex(this.#rev, this.#mask, this.#revHash[id], id);
    this.#unlink(id);
    const t = this.#rec[id * S + TARGET];
    const n = (this.#load.get(t) ?? 1) - 1;
    if (n > 0) this.#load.set(t, n);
    else this.#load.delete(t);
    this.#rec[id * S + META] = 0;
    this.#revOwned[id] = 0;
    this.#node[id] = "";
    this.#next[id] = this.#free;
    this.#free = id;
    this.#size--;
  }

  /** Removes flows idle for more than `idleMs` at time `now`; returns how many. O(removed). */
  sweep(now: number, idleMs: number): number {
    let n = 0;
    while (this.#head >= 0 && now - this.#lastSeen[this.#head] > idleMs) {
      this.remove(this.#head);
      n++;
    }
    return n;
  }

  /**
   * Removes the flows of an instance that left the table: those whose chosen instance or whose
   * sending instance is `nsip4` (a table entry's identity); returns how many. O(flows).
   */
  dropInstance(nsip4: number): number {
    return this.dropInstances([nsip4]);
  }

  /**
   * {@link dropInstance} for several instances in one pass (e.g. `TableChange.gone`); returns how
   * many flows were removed. O(flows).
   */
  dropInstances(nsip4s: readonly number[]): number {
    if (nsip4s.length === 0 || this.#size === 0) return 0;
    const set = new Set<number>();
    for (const k of nsip4s) set.add(k >>> 0);
    const R = this.#rec;
    let n = 0;
    for (let id = this.#head; id >= 0;) {
      const next = this.#next[id];
      if (set.has(R[id * S + TARGET]) || set.has(R[id * S + SENDER_ID])) {
        this.remove(id);
        n++;
      }
      id = next;
    }
    return n;
  }

  /** Removes every flow. */
  clear(): void {
    while (this.#head >= 0) this.remove(this.#head);
  }

  // ------------------------------------------------------------------ internals

  #fill(
    id: number,
    sport: number,
    dport: number,
    node: string,
    target: number,
    sender: number,
    now: number,
  ): void {
    const b = id * S;
    this.#rec[b + PORTS] = ((sport << 16) | dport) >>> 0;
    this.#rec[b + TARGET] = target >>> 0;
    this.#rec[b + SENDER_ID] = sender >>> 0;
    this.#node[id] = node;
    this.#lastSeen[id] = now;
    this.#packets[id] = 0;
    this.#bytes[id] = 0;
    this.#load.set(target >>> 0, (this.#load.get(target >>> 0) ?? 0) + 1);
    this.#linkTail(id);
  }

  /** Takes a free id, evicting the least recently used flow or growing first when needed. */
  #alloc(): number {
    this.#added++;
    if (this.#size >= this.#max) {
      this.remove(this.#head);
      this.#evictions++;
    } else if (this.#free < 0) {
      this.#resize(Math.min(this.#max, this.#cap * 2));
    }
    const id = this.#free;
    this.#free = this.#next[id];
    this.#size++;
    return id;
  }

  #index(id: number): void {
    insertSlot(this.#fwd, this.#mask, this.#fwdHash[id], id);
    // The reply tuple may already belong to another flow (the same instance reached through two
    // ServiceIPs from one socket): the newest flow takes the mapping over.
    const h = this.#revHash[id];
    const X = this.#rev;
    const R = this.#rec;
    const mask = this.#mask;
    const b = id * S;
    for (let s = h & mask;; s = (s + 1) & mask) {
      const o = X[2 * s + 1];
      if (o < 0) {
        X[2 * s] = h;
        X[2 * s + 1] = id;
        break;
      }
      const c = o * S;
      if (
        X[2 * s] === h && R[c + META] === R[b + META] && R[c + PORTS] === R[b + PORTS] &&
        eqW(R, c + A_REPLY, b + A_REPLY) && eqW(R, c + A_SRC, b + A_SRC)
      ) {
        this.#revOwned[o] = 0;
        X[2 * s + 1] = id;
        break;
      }
    }
    this.#revOwned[id] = 1;
  }

  #unlink(id: number): void {
    const p = this.#prev[id];
    const n = this.#next[id];
    if (p >= 0) this.#next[p] = n;
    else this.#head = n;
    if (n >= 0) this.#prev[n] = p;
    else this.#tail = p;
    this.#prev[id] = -1;
    this.#next[id] = -1;
  }

  #linkTail(id: number): void {
    this.#prev[id] = this.#tail;
    this.#next[id] = -1;
    if (this.#tail >= 0) this.#next[this.#tail] = id;
    else this.#head = id;
    this.#tail = id;
  }

  /** Grows the per-flow arrays to `cap` and rebuilds both indexes (ids are kept). */
  #resize(cap: number): void {
    const old = this.#cap;
    const grow = <T extends Uint8Array | Uint32Array | Int32Array | Float64Array>(
      a: T,
      n: number,
      make: (n: number) => T,
    ): T => {
      const b = make(n);
      b.set(a);
      return b;
    };
    this.#rec = grow(this.#rec, cap * S, (n) => new Uint32Array(n));
    this.#lastSeen = grow(this.#lastSeen, cap, (n) => new Float64Array(n));
    this.#packets = grow(this.#packets, cap, (n) => new Float64Array(n));
    this.#bytes = grow(this.#bytes, cap, (n) => new Float64Array(n));
    this.#fwdHash = grow(this.#fwdHash, cap, (n) => new Int32Array(n));
    this.#revHash = grow(this.#revHash, cap, (n) => new Int32Array(n));
    this.#revOwned = grow(this.#revOwned, cap, (n) => new Uint8Array(n));
    this.#prev = grow(this.#prev, cap, (n) => new Int32Array(n));
    this.#next = grow(this.#next, cap, (n) => new Int32Array(n));
    for (let id = old; id < cap; id++) this.#node.push("");
    // New ids go on the free list, lowest first.
    for (let id = cap - 1; id >= old; id--) {
      this.#prev[id] = -1;
      this.#next[id] = this.#free;
      this.#free = id;
    }
    this.#cap = cap;
    const slots = nextPow2(cap * 2);
    this.#mask = slots - 1;
    this.#fwd = new Int32Array(slots * 2);
    this.#rev = new Int32Array(slots * 2);
    for (let s = 0; s < slots; s++) {
      this.#fwd[2 * s + 1] = -1;
      this.#rev[2 * s + 1] = -1;
    }
    for (let id = this.#head; id >= 0; id = this.#next[id]) {
      insertSlot(this.#fwd, this.#mask, this.#fwdHash[id], id);
      if (this.#revOwned[id]) insertSlot(this.#rev, this.#mask, this.#revHash[id], id);
    }
  }
}

function checkTuple(proto: number, sport: number, dport: number): void {
  if (!(Number.isInteger(proto) && proto >= 0 && proto <= 255)) throw new FlowError(`bad protocol ${proto}`);
  for (const p of [sport, dport]) {
    if (!(Number.isInteger(p) && p >= 0 && p <= 65535)) {
      throw new FlowError(`port ${p} out of range 0..65535`);
    }
  }
}

function insertSlot(X: Int32Array, mask: number, h: number, id: number): void {
  let s = h & mask;
  while (X[2 * s + 1] >= 0) s = (s + 1) & mask;
  X[2 * s] = h;
  X[2 * s + 1] = id;
}

/** Deletes the slot holding `id` (found by probing from `h`) with backward-shift deletion. */
function unindex(X: Int32Array, mask: number, h: number, id: number): void {
  let i = h & mask;
  while (X[2 * i + 1] !== id) {
    if (X[2 * i + 1] < 0) return; // not present
    i = (i + 1) & mask;
  }
  X[2 * i + 1] = -1;
  for (let j = (i + 1) & mask; X[2 * j + 1] >= 0; j = (j + 1) & mask) {
    const home = X[2 * j] & mask;
    // Move j into the hole at i unless its home lies cyclically in (i, j].
    const stays = i <= j ? home > i && home <= j : home > i || home <= j;
    if (!stays) {
      X[2 * i] = X[2 * j];
      X[2 * i + 1] = X[2 * j + 1];
      X[2 * j + 1] = -1;
      i = j;
    }
  }
}

function eqW(R: Uint32Array, a: number, b: number): boolean {
  return R[a] === R[b] && R[a + 1] === R[b + 1] && R[a + 2] === R[b + 2] && R[a + 3] === R[b + 3];
}

function read6(R: Uint32Array, base: number, buf: Uint8Array, off: number): void {
  R[base] = word(buf, off);
  R[base + 1] = word(buf, off + 4);
  R[base + 2] = word(buf, off + 8);
  R[base + 3] = word(buf, off + 12);
}

function write6(R: Uint32Array, base: number, out: Uint8Array, off: number): void {
  for (let i = 0; i < 4; i++) {
    const w = R[base + i];
    out[off + 4 * i] = w >>> 24;
    out[off + 4 * i + 1] = (w >>> 16) & 255;
    out[off + 4 * i + 2] = (w >>> 8) & 255;
    out[off + 4 * i + 3] = w & 255;
  }
}
