/**
 * In-memory implementations of the data plane's seams, for unit tests of the packet loop without
 * root: {@link MemoryTun} is a TUN side (packets in with their offload metadata, packets out as
 * written), {@link MemoryBind} a tunnel side without offloads, and {@link MemoryWire} an in-memory
 * UDP socket pair under the real bind (so segmentation, GSO runs, GRO splitting and JUMBO
 * chunking/reassembly are the real code).
 */
import { VNET_HDR_LEN, VnetHdr } from "../../ffi/vnet.ts";
import type { RecvBatch, SendBatch } from "../../ffi/udp.ts";
import { type PacketResult, Verdict } from "../../src/proxy/engine.ts";
import type { DatagramSocket } from "../../src/proxy/bind.ts";
import type { Peer } from "../../src/proxy/peers.ts";
import type { AssembledPacket, BindSeam, Deliverer, TunSeam } from "../../src/proxy/seams.ts";

/** A packet the loop wrote into the (memory) TUN. */
export interface Written {
  bytes: Uint8Array;
  flags: number;
  gsoType: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
}

/** A TUN side in memory: {@link push} packets for the loop to read; {@link written} what it wrote. */
export class MemoryTun implements TunSeam {
  readonly fd = -1;
  readonly buf = new Uint8Array(VNET_HDR_LEN + 65535);
  readonly off = VNET_HDR_LEN;
  readonly meta = new VnetHdr();
  readonly scattered = false;
  readonly inbox: Uint8Array[] = [];
  readonly written: Written[] = [];
  /** read() calls, the empty ones included (each would be a syscall on a real TUN). */
  reads = 0;
  #queued: { bytes: Uint8Array; csumStart: number; csumOffset: number }[] = [];
  deliverer: Deliverer;

  constructor(deliverer: Deliverer) {
    this.deliverer = deliverer;
  }

  /** Queues a packet to be read, with its offload metadata. */
  push(pkt: Uint8Array, meta: Partial<VnetHdr> = {}): void {
    const h = Object.assign(new VnetHdr(), meta);
    const b = new Uint8Array(VNET_HDR_LEN + pkt.length);
    h.encode(b, 0);
    b.set(pkt, VNET_HDR_LEN);
    this.inbox.push(b);
  }

  read(): number {
    this.reads++;
    const b = this.inbox.shift();
    if (b === undefined) return 0;
    return this.replay(b);
  }

  gather(): void {}

  replay(bytes: Uint8Array): number {
    this.buf.set(bytes);
    this.meta.decode(this.buf, 0);
    return bytes.length - VNET_HDR_LEN;
  }

  #out(bytes: Uint8Array, h: VnetHdr): void {
    this.written.push({
      bytes,
      flags: h.flags,
      gsoType: h.gsoType,
      gsoSize: h.gsoSize,
      csumStart: h.csumStart,
      csumOffset: h.csumOffset,
    });
  }

  writeBack(len: number): void {
    this.#out(this.buf.slice(VNET_HDR_LEN, VNET_HDR_LEN + len), this.meta);
  }

  add(buf: Uint8Array, off: number, len: number, csumStart: number, csumOffset: number): void {
    this.#queued.push({ bytes: buf.slice(off, off + len), csumStart, csumOffset });
  }

  writeOne(buf: Uint8Array, off: number, len: number, csumStart: number, csumOffset: number): void {
    const b = buf.slice(off, off + len);
    if (this.deliverer.deliver(b, 0, len, csumStart >= 0) !== Verdict.TO_TUN) return;
    const h = new VnetHdr();
    if (csumStart >= 0) Object.assign(h, { flags: 1, csumStart, csumOffset });
    this.#out(b, h);
  }

  writeAssembled(p: AssembledPacket): boolean {
    this.flush();
    const b = new Uint8Array(p.length);
    let at = 0;
    for (let k = 0; k < p.parts; k++) {
      b.set(p.data.subarray(p.partOffsets[k], p.partOffsets[k] + p.partLengths[k]), at);
      at += p.partLengths[k];
    }
    if (at !== p.length) throw new Error(`parts hold ${at} bytes, the packet ${p.length}`);
    if (this.deliverer.deliver(b, 0, b.length, true) !== Verdict.TO_TUN) return false;
    const h = Object.assign(new VnetHdr(), { flags: 1, ...p.meta });
    this.#out(b, h);
    return true;
  }

  flush(): void {
    const q = this.#queued;
    this.#queued = [];
    for (const d of q) this.writeOne(d.bytes, 0, d.bytes.length, d.csumStart, d.csumOffset);
  }

  addDrops(_drops: Record<string, number>): void {}
}

interface Datagram {
  bytes: Uint8Array;
  src4: number;
  port: number;
}

/** One end of an in-memory UDP link (IPv4) for a real {@link UdpBind}. */
export class MemoryWire implements DatagramSocket {
  readonly fd = -1;
  gso = true;
  /** Merge runs of equal-sized datagrams from one source into one GRO message. */
  gro = false;
  readonly addr4: number;
  readonly port: number;
  peer: MemoryWire | undefined;
  readonly inbox: Datagram[] = [];
  /** Every datagram sent: its size and destination. */
  readonly sent: { size: number; dst4: number; port: number }[] = [];
  /** sendmmsg calls and GSO entries seen. */
  sends = 0;
  gsoEntries = 0;

  constructor(addr4: number, port: number) {
    this.addr4 = addr4;
    this.port = port;
  }

  /** Two ends wired to each other. */
  static pair(a4: number, b4: number, port = 50103): [MemoryWire, MemoryWire] {
    const a = new MemoryWire(a4, port);
    const b = new MemoryWire(b4, port);
    a.peer = b;
    b.peer = a;
    return [a, b];
  }

  sendBatch(b: SendBatch, n: number): number {
    this.sends++;
    for (let i = 0; i < n; i++) {
      const entry = b.entryBytes(i); // (a gather entry's pieces, or the slot's bytes)
      const size = b.sizes[i];
      const seg = b.segSizes[i] > 0 ? b.segSizes[i] : size;
      if (b.segSizes[i] > 0) this.gsoEntries++;
      if (b.dstFamilies[i] !== 4) throw new Error("MemoryWire carries IPv4 only");
      for (let o = 0; o < size; o += seg) {
        const bytes = entry.slice(o, Math.min(size, o + seg));
        this.sent.push({ size: bytes.length, dst4: b.dst4[i], port: b.dstPorts[i] });
        if (this.peer && b.dst4[i] === this.peer.addr4) {
          this.peer.inbox.push({ bytes, src4: this.addr4, port: this.port });
        }
      }
    }
    return n;
  }

  recvBatch(b: RecvBatch, _timeoutMs?: number): number {
    let i = 0;
    while (i < b.slots && this.inbox.length > 0) {
      const first = this.inbox.shift()!;
      const slot = b.bufs[i];
      slot.set(first.bytes);
      let size = first.bytes.length;
      let gso = 0;
      // GRO: equal-sized datagrams from one source, the last may be shorter.
      while (this.gro && this.inbox.length > 0) {
        const d = this.inbox[0];
        if (d.src4 !== first.src4 || d.bytes.length > first.bytes.length) break;
        if (size % first.bytes.length !== 0 || size + d.bytes.length > slot.length) break;
        slot.set(d.bytes, size);
        size += d.bytes.length;
        gso = first.bytes.length;
        this.inbox.shift();
      }
      b.sizes[i] = size;
      b.gsoSizes[i] = gso;
      b.families[i] = 4;
      b.addrs4[i] = first.src4;
      b.ports[i] = first.port;
      i++;
    }
    return i;
  }

  waitWritable(_timeoutMs: number): number {
    return 1;
  }
}

/**
 * A tunnel side in memory that implements the bind seam itself (no offloads: one raw datagram per
 * packet, no JUMBO): shows the loop needs nothing but the seam interfaces.
 */
export class MemoryBind implements BindSeam {
  readonly fd = -1;
  readonly batchSize = 32;
  readonly jumboTx = 0;
  readonly jumboTxInPlace = 0;
  readonly addr4Self: number;
  peer: MemoryBind | undefined;
  readonly inbox: Datagram[] = [];
  /** Datagrams flushed, in order. */
  readonly sent: { bytes: Uint8Array; dst4: number; port: number }[] = [];
  #queue: { bytes: Uint8Array; dst4: number; port: number }[] = [];
  #batch: Datagram[] = [];
  #i = -1;
  buf: Uint8Array = new Uint8Array(0);
  off = 0;
  len = 0;
  readonly family = 4;
  addr4 = 0;
  readonly addr6 = undefined;
  port = 0;
  readonly assembled: AssembledPacket = {
    data: new Uint8Array(0),
    offset: 0,
    length: 0,
    meta: { gsoType: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 },
    parts: 0,
    partOffsets: new Int32Array(0),
    partLengths: new Int32Array(0),
  };

  constructor(addr4: number) {
    this.addr4Self = addr4;
  }

  send(pkt: TunSeam, len: number, res: PacketResult): void {
    const r = res.route!;
    this.#queue.push({ bytes: pkt.buf.slice(pkt.off, pkt.off + len), dst4: r.addr4, port: r.port });
  }

  sendRaw(
    bytes: Uint8Array,
    _family: 4 | 6,
    addr4: number,
    _addr6: Uint8Array | undefined,
    port: number,
  ): void {
    this.#queue.push({ bytes: bytes.slice(), dst4: addr4, port });
  }

  flush(): void {
    for (const d of this.#queue) {
      this.sent.push(d);
      if (this.peer && d.dst4 === this.peer.addr4Self) {
        this.peer.inbox.push({ bytes: d.bytes, src4: this.addr4Self, port: d.port });
      }
    }
    this.#queue = [];
  }

  recv(): number {
    this.#batch = this.inbox.splice(0, this.batchSize);
    this.#i = -1;
    return this.#batch.length;
  }

  next(): boolean {
    const d = this.#batch[++this.#i];
    if (d === undefined) return false;
    this.buf = d.bytes;
    this.off = 0;
    this.len = d.bytes.length;
    this.addr4 = d.src4;
    this.port = d.port;
    return true;
  }

  narrow(off: number, len: number): void {
    this.off = off;
    this.len = len;
  }

  /** One datagram per receive entry here: no runs. */
  get step(): number {
    return this.len;
  }

  runAfter(): number {
    return 0;
  }

  skip(_n: number): void {}

  reassemble(_peer: Peer, _now: number): boolean {
    return false;
  }

  readonly runCompleted = false;

  reassembleRun(_peer: Peer, _now: number): number {
    return 0;
  }

  addDrops(_drops: Record<string, number>): void {}
}
