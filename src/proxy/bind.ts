/**
 * The tunnel bind ({@link BindSeam}) over a UDP socket driven in batches: `sendmmsg` of send slots,
 * each one datagram or one `UDP_SEGMENT` (GSO) run, and `recvmmsg` with `UDP_GRO` runs split back
 * into datagrams. It lays packets out for the peer's mode:
 * - raw mode (Oakestra-compatible peers): bare IP packets, fully checksummed, one per datagram;
 * - FAST: an 8-byte FAST header before each segment, partial checksums;
 * - JUMBO: a TCP super-packet cut into tagged chunks (jumbo.ts), one GSO run; incoming chunks are
 *   reassembled in spare room of the receive arena.
 * Runs of small datagrams to one endpoint are appended to one GSO send. The TUN read buffer is one
 * more slot of the send arena ({@link UdpBind.readSlot}), so the copies between them are
 * `copyWithin` on one buffer, and large packets can be read straight into their JUMBO layout
 * (scatter reads, {@link ScatterTarget}).
 *
 * @example
 * ```ts
 * import { UdpBind } from "./bind.ts";
 * import { Counters } from "./engine.ts";
 * import { PeerTable } from "./peers.ts";
 * import { openUdp } from "../../ffi/udp.ts";
 * const sock = openUdp({ family: 4, port: 0, bindAddr: "127.0.0.1" });
 * const bind = new UdpBind(sock, { mtu: 1450, counters: new Counters(), peers: new PeerTable({ localCaps: 0 }) });
 * while (bind.recv() > 0) while (bind.next()) console.log(bind.len, bind.port);
 * ```
 * @module
 */
import { RecvBatch, SendBatch, UDP_MAX_SEGMENTS, type UdpSocket } from "../../ffi/udp.ts";
import { bufferAddress } from "../../ffi/libc.ts";
import {
  VNET_F_NEEDS_CSUM,
  VNET_GSO_ECN,
  VNET_GSO_TCPV4,
  VNET_GSO_TCPV6,
  VNET_HDR_LEN,
} from "../../ffi/vnet.ts";
import { type Counters, Drop, type PacketResult } from "./engine.ts";
import { advanceJumboId, jumboLaneId, type Peer, type PeerTable } from "./peers.ts";
import { laneKey } from "./lanes.ts";
import { GSO_ERROR_NAMES, SegmentBatch, Segmenter } from "./offload.ts";
import {
  encodeFastHeader,
  FAST_F_NEEDS_CSUM,
  FAST_HEADER_LEN,
  JUMBO_META_LEN,
  JUMBO_TAG_LEN,
} from "./wire.ts";
import {
  JUMBO_MAX_PACKET,
  JumboAssembler,
  type JumboMeta,
  JumboResult,
  jumboSliceOffset,
  placeJumbo,
  writeJumbo,
} from "./jumbo.ts";
import { JUMBO_MAX_CHUNKS } from "./wire.ts";
import type { AssembledPacket, BindSeam, ScatterTarget, TunSeam } from "./seams.ts";
import { putIov } from "./iov.ts";
import type { SecureLayer } from "../secure/secure_layer.ts";
import { SECURE_OVERHEAD } from "../secure/secure_wire.ts";
import { outerOverhead } from "../path/pmtu.ts";

/** The socket calls a bind needs (an FFI {@link UdpSocket}, or an in-memory one in tests). */
export type DatagramSocket =
  & Pick<UdpSocket, "fd" | "gso" | "sendBatch" | "recvBatch" | "waitWritable">
  & Partial<Pick<UdpSocket, "setDontFragment">>;

/** Bind options. */
export interface UdpBindOptions {
  /** Inner MTU (largest packet on the wire). */
  mtu: number;
  /** Send and receive error counts go here. */
  counters: Counters;
  /** JUMBO message ids seen per peer (lost messages make it refuse a peer's JUMBO). */
  peers: PeerTable;
  /** Messages per sendmmsg/recvmmsg (32). */
  batch?: number;
}

/** Largest UDP payload of one (GSO) send: 65535 − IPv4 header − UDP header. */
const MAX_GSO_PAYLOAD = 65507;
const SEND_SLOT = 65535 + 64 * 16 + 1024; // a super-packet's segments with headroom
const RECV_SLOT = 65535;
const JUMBO_SENDERS = 4;

/** The tunnel bind over a UDP socket (see the module). */
export class UdpBind implements BindSeam, ScatterTarget {
  readonly fd: number;
  readonly batchSize: number;
  jumboTx = 0;
  jumboTxInPlace = 0;
  /** The TUN read buffer: the send arena's last slot. */
  readonly readSlot: Uint8Array;
  /** Offset of {@link readSlot} in the send arena. */
  readonly readAt: number;
  scatterCount = 0;
  scatterFirst = 0;
  buf: Uint8Array = new Uint8Array(0);
  off = 0;
  len = 0;
  family: 4 | 6 = 4;
  addr4 = 0;
  addr6: Uint8Array | undefined = undefined;
  port = 0;
  readonly assembled: AssembledPacket;
  runCompleted = false;
  /**
   * The secure tunnel's layer (src/secure/secure_layer.ts), when `TunnelSecurity` is not off: each
   * flush then seals the batch into a second one (allocated on first use) and sends that.
   */
  secure: SecureLayer | undefined = undefined;

  readonly #sock: DatagramSocket;
  readonly #mtu: number;
  readonly #counters: Counters;
  readonly #peers: PeerTable;
  readonly #send: SendBatch;
  readonly #recv: RecvBatch;
  readonly #assembler: JumboAssembler;
  readonly #segmenter = new Segmenter();
  readonly #segRaw: SegmentBatch[];
  readonly #segFast: SegmentBatch[];
  readonly #gsoDrops = new Float64Array(GSO_ERROR_NAMES.length);
  readonly #jumboMeta: JumboMeta = { gsoType: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
  #pending = 0;
  /** Lane key (lanes.ts) of each queued send entry (-1: control), and of the packet being queued. */
  readonly #keys: Int32Array;
  #key = 0;
  /**
   * Per queued entry: > 0 when it begins a JUMBO message of that many bytes, contiguous in its slot
   * (the secure layer then seals it as one AEAD, secure_layer.ts); -1 for the next entries of that
   * message (copies of its tail); 0 otherwise.
   */
  readonly #message: Int32Array;
  /** Node key of each queued send entry's destination (undefined: a control datagram). */
  readonly #peerKeys: (string | undefined)[];
  /**
   * Per queued entry: 1 = send with don't-fragment (control datagrams, peers whose path answered a
   * PMTU probe), 0 = without (raw Oakestra peers and peers not yet probed: a narrower router then
   * fragments the datagram, as the kernel's default did, instead of dropping it).
   */
  readonly #dfs: Uint8Array;
  /** Entries queued without don't-fragment. */
  #noDf = 0;
  /** The socket's current mode (1 = DF), switched only around runs of entries without DF. */
  #sockDf = 1;
  #sealed: SendBatch | undefined = undefined;
  // Scatter reads (see ScatterTarget): per send slot, iovecs of the JUMBO layout of a large packet.
  #scatterIovs: Uint8Array[] = [];
  #scatterReads = false;
  /** The send slot the last scatter read went to. */
  #scatterSlot = -1;
  // Iteration over the received batch (next()).
  #msgs = 0;
  #msg = -1;
  #end = 0;
  #step = 0;
  #at = 0;

  constructor(sock: DatagramSocket, opts: UdpBindOptions) {
    this.#sock = sock;
    this.fd = sock.fd;
    this.#mtu = opts.mtu;
    this.#counters = opts.counters;
    this.#peers = opts.peers;
    const batch = opts.batch ?? 32;
    this.batchSize = batch;
    this.#send = new SendBatch(batch + 1, SEND_SLOT);
    this.#keys = new Int32Array(batch + 1);
    this.#message = new Int32Array(batch + 1);
    this.#peerKeys = new Array<string | undefined>(batch + 1).fill(undefined);
    this.#dfs = new Uint8Array(batch + 1).fill(1);
    sock.setDontFragment?.(true); // a restarted lane's socket may have been left without DF
    this.readSlot = this.#send.bufs[batch];
    this.readAt = batch * SEND_SLOT;
    this.#recv = new RecvBatch(batch, RECV_SLOT, JUMBO_SENDERS * JUMBO_MAX_PACKET);
    const peers = this.#peers;
    this.#assembler = new JumboAssembler({
      arena: this.#recv.data,
      base: this.#recv.spareOffset,
      slots: JUMBO_SENDERS,
      prefix: 0, // the virtio header goes out from its own buffer (writev)
      // Lost messages from a peer may make it refuse that peer's JUMBO messages (see PeerTable.noteJumboId).
      onLost: (peer, id) => peers.noteJumboId(peer as Peer, id, false, performance.now()),
    });
    const a = this.#assembler;
    const data = this.#recv.data;
    this.assembled = {
      data,
      get offset() {
        return a.outOffset;
      },
      get length() {
        return a.outLength;
      },
      meta: a.outMeta,
      get parts() {
        return a.outParts;
      },
      partOffsets: a.outPartOffsets,
      partLengths: a.outPartLengths,
    };
    const mtu = this.#mtu;
    this.#segRaw = this.#send.bufs.map((b) =>
      new SegmentBatch({ mtu, headroom: 0, packed: true, buf: b, capacity: 64 })
    );
    this.#segFast = this.#send.bufs.map((b) =>
      new SegmentBatch({ mtu, headroom: FAST_HEADER_LEN, packed: true, buf: b, capacity: 64 })
    );
    this.#buildScatterIovs();
  }

  /** Precomputes, per send slot, the iovecs of a scatter read into its JUMBO layout (if one fits). */
  #buildScatterIovs(): void {
    const dsize = FAST_HEADER_LEN + this.#mtu;
    const first = dsize - JUMBO_TAG_LEN - JUMBO_META_LEN;
    const count = 1 + Math.ceil((JUMBO_MAX_PACKET - first) / (dsize - JUMBO_TAG_LEN));
    if (count > JUMBO_MAX_CHUNKS || count * dsize > SEND_SLOT) return; // MTU too small: no scatter reads
    const readAddr = bufferAddress(this.readSlot);
    const dataAddr = bufferAddress(this.#send.data);
    this.scatterCount = count;
    this.scatterFirst = first;
    for (let s = 0; s < this.batchSize; s++) {
      const iov = new Uint8Array(count * 16);
      const w = new Uint32Array(iov.buffer);
      putIov(w, 0, readAddr, VNET_HDR_LEN + first);
      for (let k = 1; k < count; k++) {
        putIov(w, k, dataAddr + s * SEND_SLOT + jumboSliceOffset(k, dsize), dsize - JUMBO_TAG_LEN);
      }
      this.#scatterIovs.push(iov);
    }
  }

  scatterIov(): Uint8Array | undefined {
    if (!this.#scatterReads) return undefined;
    if (this.#pending > this.batchSize - 2) this.flush(); // the read goes to slot `pending`: keep it free
    this.#scatterSlot = this.#pending;
    return this.#scatterIovs[this.#pending];
  }

  gathered(): void {
    this.#scatterReads = false;
  }

  /** Where the packet of a scatter read continues (the send slot's offset), for the TUN's gather. */
  scatterBase(): number {
    return this.#scatterSlot * SEND_SLOT;
  }

  /** The send arena (the TUN read buffer is its last slot). */
  get sendArena(): Uint8Array {
    return this.#send.data;
  }

  /** The packet can travel as a JUMBO message: a TCP super-packet, GSO on. */
  #jumboShaped(pkt: TunSeam): boolean {
    const m = pkt.meta;
    if (!this.#sock.gso || (m.flags & VNET_F_NEEDS_CSUM) === 0) return false;
    const type = m.gsoType & ~VNET_GSO_ECN;
    return type === VNET_GSO_TCPV4 || type === VNET_GSO_TCPV6;
  }

  send(pkt: TunSeam, len: number, res: PacketResult): void {
    const route = res.route!;
    const peer = route.peer;
    if (this.#pending > this.batchSize - 2) this.flush(); // a super-packet may need two entries
    const slot = this.#pending;
    const send = this.#send;
    // The receiver steers each datagram to one of its workers by this key (lanes.ts): one GSO send
    // (one skb at the receiver, steered by its first datagram) carries datagrams of one key only.
    const key = this.#key = laneKey(pkt.buf, pkt.off, len);
    // The one JUMBO decision: the peer takes JUMBO messages and this is a TCP super-packet.
    if (peer?.jumbo === true && this.#jumboShaped(pkt)) {
      const m = this.#jumboMeta;
      const v = pkt.meta;
      m.gsoType = v.gsoType;
      m.gsoSize = v.gsoSize;
      m.csumStart = v.csumStart;
      m.csumOffset = v.csumOffset;
      // Chunks fill the peer's probed path (src/path/pmtu.ts), at most the configured MTU's size.
      const full = FAST_HEADER_LEN + this.#mtu;
      // A sealed datagram carries the secure envelope too (src/secure/secure_wire.ts).
      const sec = this.secure;
      const sealed = sec !== undefined && sec.active && sec.ring.has(peer.key) ? SECURE_OVERHEAD : 0;
      const fits = peer.path.mtu - outerOverhead(peer.family) - sealed;
      const dsize = fits < full ? fits : full;
      const at = slot * SEND_SLOT;
      const shared = pkt.buf.buffer === send.data.buffer;
      const inPlace = pkt.scattered && shared && this.#scatterSlot === slot && dsize === full;
      if (pkt.scattered && !inPlace) pkt.gather();
      let from = pkt.buf.byteOffset - send.data.byteOffset + pkt.off;
      if (!shared) {
        // A TUN side with its own buffer (tests): the packet comes into the read slot first.
        this.readSlot.set(pkt.buf.subarray(pkt.off, pkt.off + len), VNET_HDR_LEN);
        from = this.readAt + VNET_HDR_LEN;
      }
      // Lane-tagged ids (CAP_LANES) let the receiver steer chunks that carry no inner header.
      const id = jumboLaneId(peer, key);
      const used = inPlace
        ? placeJumbo(send.data, from, len, at, dsize, id, m)
        : writeJumbo(send.data, from, len, at, dsize, id, m);
      if (used > 0) {
        if (inPlace) this.jumboTxInPlace++;
        this.#scatterReads = this.#scatterIovs.length > 0;
        advanceJumboId(peer, key); // consecutive per stream: gaps show lost messages
        this.jumboTx++;
        this.#queueRun(slot, 0, used, dsize, Math.ceil(used / dsize), res, used);
        return;
      }
    }
    if (pkt.scattered) pkt.gather(); // (not expected: a scattered packet is a JUMBO-sized one)
    if (len > FAST_HEADER_LEN + this.#mtu) this.#scatterReads = false; // large packets go segmented now
    const fast = peer?.fast === true;
    const seg = (fast ? this.#segFast : this.#segRaw)[slot];
    seg.reset();
    const sg = this.#segmenter;
    const n = sg.segment(pkt.buf, pkt.off, len, pkt.meta, fast ? "partial" : "full", seg, res.info);
    if (n < 0) {
      this.#gsoDrops[-n]++;
      return;
    }
    const head = fast ? FAST_HEADER_LEN : 0;
    if (fast) {
      const flags = sg.partial ? FAST_F_NEEDS_CSUM : 0;
      const cs = sg.partial ? sg.csumStart : 0;
      const co = sg.partial ? sg.csumOffset : 0;
      for (let k = 0; k < n; k++) encodeFastHeader(seg.buf, seg.offsets[k] - head, flags, cs, co);
    }
    const start = seg.offsets[0] - head;
    if (
      n === 1 && slot > 0 && this.#keys[slot - 1] === key &&
      this.#append(slot - 1, slot * SEND_SLOT + start, seg.used - start, res)
    ) {
      return;
    }
    this.#queueRun(slot, start, seg.used, sg.datagramSize, n, res);
  }

  /**
   * Appends a single datagram (`size` bytes at `send.data[from..]`) to send entry `p` when it goes to
   * the same peer and can carry it as one more GSO segment (no larger than the entry's segments, the
   * entry not already ending in a shorter one, within the size and count limits). Runs of small
   * packets to one peer (UDP request streams, TCP ACKs) then cost the kernel one skb per run on both
   * nodes instead of one per packet; the datagrams on the wire are the same.
   */
  #append(p: number, from: number, size: number, res: PacketResult): boolean {
    if (this.#message[p] !== 0) return false; // a JUMBO message's entry stays the message alone
    const send = this.#send;
    const route = res.route!;
    if (route.family === 4) {
      if (send.dstFamilies[p] !== 4 || send.dst4[p] !== route.addr4) return false;
    } else {
      if (send.dstFamilies[p] !== 6) return false;
      const a = route.addr6!;
      for (let k = 0; k < 16; k++) if (send.dst6[p * 16 + k] !== a[k]) return false;
    }
    if (send.dstPorts[p] !== route.port) return false;
    const have = send.sizes[p];
    const seg = send.segSizes[p] > 0 ? send.segSizes[p] : have;
    const end = send.offsets[p] + have;
    if (
      size > seg || have % seg !== 0 || have + size > MAX_GSO_PAYLOAD || have / seg >= UDP_MAX_SEGMENTS ||
      end + size > SEND_SLOT
    ) {
      return false;
    }
    send.data.copyWithin(p * SEND_SLOT + end, from, from + size);
    send.sizes[p] = have + size;
    send.segSizes[p] = seg;
    return true;
  }

  /**
   * Queues the `n` datagrams of `dsize` bytes (the last may be shorter) at `bufs[slot][start .. end)`
   * to `res.route`. One UDP_SEGMENT send carries at most 65507 bytes of UDP payload (one IPv4
   * datagram before segmentation), so a 64 KB super-packet's datagrams may need a second entry (a
   * copy of the tail into the next slot).
   */
  #queueRun(
    slot: number,
    start: number,
    end: number,
    dsize: number,
    n: number,
    res: PacketResult,
    message = 0,
  ): void {
    const send = this.#send;
    const route = res.route!;
    const perSend = n > 1 ? Math.max(1, Math.floor(MAX_GSO_PAYLOAD / dsize)) : 1;
    for (let k = 0; k < n; k += perSend) {
      const i = this.#pending;
      const from = start + k * dsize;
      const to = Math.min(end, from + perSend * dsize);
      if (i !== slot) {
        send.data.copyWithin(i * SEND_SLOT + from, slot * SEND_SLOT + from, slot * SEND_SLOT + to);
      }
      send.offsets[i] = from;
      send.sizes[i] = to - from;
      send.segSizes[i] = to - from > dsize ? dsize : 0;
      this.#keys[i] = this.#key;
      this.#message[i] = message > 0 ? (k === 0 && i === slot ? message : -1) : 0;
      this.#peerKeys[i] = route.key;
      const df = route.peer?.path.probed === true ? 1 : 0;
      this.#dfs[i] = df;
      if (df === 0) this.#noDf++;
      if (route.family === 4) send.setDst4(i, route.addr4, route.port);
      else send.setDst6(i, route.addr6!, 0, route.port);
      this.#pending++;
    }
    if (this.#pending >= this.batchSize) this.flush();
  }

  sendRaw(
    bytes: Uint8Array,
    family: 4 | 6,
    addr4: number,
    addr6: Uint8Array | undefined,
    port: number,
  ): void {
    const send = this.#send;
    const i = this.#pending;
    send.bufs[i].set(bytes);
    send.offsets[i] = 0;
    send.segSizes[i] = 0;
    send.sizes[i] = bytes.length;
    this.#keys[i] = -1;
    this.#message[i] = 0;
    this.#peerKeys[i] = undefined;
    this.#dfs[i] = 1; // PMTU probes must keep DF
    if (family === 4) send.setDst4(i, addr4, port);
    else send.setDst6(i, addr6!, 0, port);
    if (++this.#pending === this.batchSize) this.flush();
  }

  flush(): void {
    const layer = this.secure;
    const wall = layer !== undefined && layer.active && this.#pending > 0 ? Date.now() : 0;
    if (wall > 0 && layer!.needsSealing(this.#pending, this.#peerKeys, this.#keys, wall)) {
      // 2 entries per queued one at most, and a last slot for the headers of messages sealed whole.
      const out = this.#sealed ??= new SendBatch(2 * (this.batchSize + 1) + 1, SEND_SLOT);
      const n = layer!.sealBatch(
        this.#send,
        this.#pending,
        this.#peerKeys,
        this.#keys,
        out,
        MAX_GSO_PAYLOAD,
        wall,
        this.#message,
      );
      this.#pending = 0;
      this.#noDf = 0;
      this.#setDf(1);
      this.#sendSealed(out, n);
      return;
    }
    const dfs = this.#dfs;
    const mixed = this.#noDf > 0 && this.#sock.setDontFragment !== undefined;
    this.#noDf = 0;
    while (this.#pending > 0) {
      // Runs of entries with the same DF state go out in turn, the socket switched between them.
      let run = this.#pending;
      if (mixed) {
        const df = dfs[0];
        run = 1;
        while (run < this.#pending && dfs[run] === df) run++;
        this.#setDf(df);
      }
      if (!this.#sendFront(run)) break;
    }
    if (mixed) this.#setDf(1);
    this.#pending = 0;
  }

  /** Switches the socket's DF mode when it differs (see {@link DatagramSocket}). */
  #setDf(df: number): void {
    if (this.#sockDf === df) return;
    this.#sock.setDontFragment?.(df === 1);
    this.#sockDf = df;
  }

  /** Sends the first `run` queued entries and moves the rest to the front; false on a fatal error. */
  #sendFront(run: number): boolean {
    let stalls = 0;
    let left = run;
    while (left > 0) {
      const r = this.#sock.sendBatch(this.#send, left);
      // 0: nothing went out (EAGAIN); wait for room a few times before giving the batch up.
      if (r < 0 || (r === 0 && ++stalls > 3)) {
        this.#counters.drops[Drop.SEND_ERROR] += this.#pending;
        return false;
      }
      // Socket buffer full (non-blocking): wait for room, then send the rest from the front.
      if (r > 0 && r < this.#pending) this.#compact(r, this.#pending);
      this.#pending -= r;
      left -= r;
      if (left > 0) this.#sock.waitWritable(5);
    }
    return true;
  }

  /** Sends `n` entries of the sealed batch, as {@link flush} does the plain one. */
  #sendSealed(out: SendBatch, n: number): void {
    let stalls = 0;
    while (n > 0) {
      const r = this.#sock.sendBatch(out, n);
      if (r < 0 || (r === 0 && ++stalls > 3)) {
        this.#counters.drops[Drop.SEND_ERROR] += n;
        return;
      }
      if (r >= n) return;
      if (r > 0) {
        for (let i = r; i < n; i++) {
          const j = i - r;
          out.data.copyWithin(j * SEND_SLOT, i * SEND_SLOT, i * SEND_SLOT + out.offsets[i] + out.sizes[i]);
          out.offsets[j] = out.offsets[i];
          out.sizes[j] = out.sizes[i];
          out.segSizes[j] = out.segSizes[i];
          out.dstFamilies[j] = out.dstFamilies[i];
          out.dst4[j] = out.dst4[i];
          out.dst6.copyWithin(j * 16, i * 16, i * 16 + 16);
          out.dstScopes[j] = out.dstScopes[i];
          out.dstPorts[j] = out.dstPorts[i];
          out.moveGather(i, j);
        }
      }
      n -= r;
      this.#sock.waitWritable(5);
    }
  }

  #compact(from: number, n: number): void {
    const send = this.#send;
    for (let i = from; i < n; i++) {
      const j = i - from;
      const o = send.offsets[i];
      send.data.copyWithin(j * SEND_SLOT + o, i * SEND_SLOT + o, i * SEND_SLOT + o + send.sizes[i]);
      send.offsets[j] = o;
      send.sizes[j] = send.sizes[i];
      send.segSizes[j] = send.segSizes[i];
      send.dstFamilies[j] = send.dstFamilies[i];
      send.dst4[j] = send.dst4[i];
      send.dst6.copyWithin(j * 16, i * 16, i * 16 + 16);
      send.dstPorts[j] = send.dstPorts[i];
      this.#keys[j] = this.#keys[i];
      this.#message[j] = 0; // (only its own bytes moved: the secure layer seals it part by part)
      this.#peerKeys[j] = this.#peerKeys[i];
      this.#dfs[j] = this.#dfs[i];
    }
  }

  recv(): number {
    // Parts of JUMBO messages still in progress leave the receive slots before they are reused.
    this.#assembler.spill();
    const c = this.#sock.recvBatch(this.#recv, 0);
    this.#msgs = c > 0 ? c : 0;
    this.#msg = -1;
    this.#at = 0;
    this.#end = 0;
    return this.#msgs;
  }

  next(): boolean {
    const r = this.#recv;
    this.#at += this.#step;
    if (this.#at >= this.#end) {
      if (++this.#msg >= this.#msgs) return false;
      const i = this.#msg;
      this.buf = r.bufs[i];
      this.#end = r.sizes[i];
      this.#step = r.gsoSizes[i] > 0 ? r.gsoSizes[i] : this.#end;
      this.#at = 0;
      this.family = r.families[i] === 4 ? 4 : 6;
      this.addr4 = r.addrs4[i];
      this.addr6 = this.family === 6 ? r.addrs6.subarray(i * 16, i * 16 + 16) : undefined;
      this.port = r.ports[i];
      if (this.#end <= 0) return this.next();
    }
    this.off = this.#at;
    this.len = Math.min(this.#step, this.#end - this.#at);
    return true;
  }

  /** Segment size of the receive entry last stepped into (its GRO segment size, or its length). */
  get step(): number {
    return this.#step;
  }

  /** Datagrams of a full {@link step} after the one last stepped to, in the same receive entry. */
  runAfter(): number {
    const rest = this.#end - this.#at - this.#step;
    return rest >= this.#step && this.#step > 0 ? Math.floor(rest / this.#step) : 0;
  }

  /** Steps over the next `n` datagrams of the entry (the secure layer took them with the last one). */
  skip(n: number): void {
    if (n > 0) this.#at += n * this.#step;
  }

  /** The datagram last stepped to is now `buf[off .. off+len)` (the secure layer opened it in place). */
  narrow(off: number, len: number): void {
    this.off = off;
    this.len = len;
  }

  reassemble(peer: Peer, now: number): boolean {
    const a = this.#assembler;
    if (a.add(peer, this.buf, this.off, this.len) !== JumboResult.COMPLETE) return false;
    this.#peers.noteJumboId(peer, a.outId, true, now);
    return true;
  }

  reassembleRun(peer: Peer, now: number): number {
    const more = this.runAfter();
    if (more === 0) return 0;
    const a = this.#assembler;
    const n = a.addRun(peer, this.buf, this.#at + this.#step, this.#step, more);
    if (n > 0) {
      this.#at += n * this.#step;
      this.off = this.#at;
      this.len = this.#step;
    }
    const done = a.runResult === JumboResult.COMPLETE;
    this.runCompleted = done;
    if (done) this.#peers.noteJumboId(peer, a.outId, true, now);
    return n;
  }

  reassembleParts(peer: Peer, off: number, stride: number, n: number, now: number): number {
    const a = this.#assembler;
    const taken = a.addRun(peer, this.buf, off, stride, n);
    const done = taken > 0 && a.runResult === JumboResult.COMPLETE;
    this.runCompleted = done;
    if (done) this.#peers.noteJumboId(peer, a.outId, true, now);
    return taken;
  }

  addDrops(drops: Record<string, number>): void {
    this.#gsoDrops.forEach((v, i) => {
      if (v > 0) drops[`gso_${GSO_ERROR_NAMES[i]}`] = v;
    });
    const send = this.#send;
    if (send.dropped > 0) drops[`send_errno_${send.lastErrno}`] = send.dropped;
    const sealed = this.#sealed;
    if (sealed !== undefined && sealed.dropped > 0) {
      const k = `send_errno_${sealed.lastErrno}`;
      drops[k] = (drops[k] ?? 0) + sealed.dropped;
    }
    const a = this.#assembler;
    if (a.malformed > 0) drops.jumbo_malformed = a.malformed;
    if (a.strays > 0) drops.jumbo_stray = a.strays;
  }
}
