/**
 * The data-plane Worker: owns the TUN and tunnel-socket loops. It polls both fds (and a wake-up
 * eventfd) with synchronous FFI calls and drains each in batches:
 * - TUN → peers: a read returns a virtio header and up to a 64 KB TCP/UDP super-packet (TSO/USO
 *   offloads). The engine rewrites its addresses once; the segmenter cuts it into MTU-sized
 *   packets laid out back to back in one send slot, sent with one `UDP_SEGMENT` (GSO) send —
 *   fully checksummed bare IP packets for Oakestra-compatible peers (raw mode), or with an
 *   8-byte FAST header and partial checksums for netmanager peers (fast mode).
 * - peers → TUN: `recvmmsg` with `UDP_GRO` returns runs of datagrams; each is checked and
 *   restored by the engine, then the coalescer merges consecutive TCP segments back into
 *   super-packets written with one TUN write each.
 * It returns to its event loop only when the main isolate wakes it (table deltas, resolutions),
 * so the packet path never waits on a timer or on the control plane.
 */
import { type TunDevice, tunFromInfo } from "../../ffi/tun.ts";
import { RecvBatch, SendBatch, UDP_MAX_SEGMENTS, udpFromInfo, type UdpSocket } from "../../ffi/udp.ts";
import { Poller } from "../../ffi/poll.ts";
import { EventFd } from "../../ffi/eventfd.ts";

import { SpinPolicy } from "./spin.ts";
import { laneKey } from "./lanes.ts";
import { allowedCpus, pinThread } from "../../ffi/cpu.ts";
import { bufferAddress, libc } from "../../ffi/libc.ts";
import {
  VNET_F_NEEDS_CSUM,
  VNET_GSO_ECN,
  VNET_GSO_TCPV4,
  VNET_GSO_TCPV6,
  VNET_HDR_LEN,
  VnetHdr,
} from "../../ffi/vnet.ts";
import { TranslationTable } from "../table/table.ts";
import { compactHeap } from "../heap.ts";
import { DROP_NAMES, Engine, type ParkedDatagram, Verdict } from "./engine.ts";
import { advanceJumboId, jumboLaneId, type Peer } from "./peers.ts";
import type { FromWorker, StatsData, ToWorker } from "./messages.ts";
import {
  Coalescer,
  CoalesceResult,
  completeChecksum,
  GSO_ERROR_NAMES,
  SegmentBatch,
  Segmenter,
} from "./offload.ts";
import {
  encodeFastHeader,
  FAST_F_NEEDS_CSUM,
  FAST_HEADER_LEN,
  JUMBO_MAX_CHUNKS,
  JUMBO_META_LEN,
  JUMBO_TAG_LEN,
} from "./wire.ts";
import {
  gatherJumbo,
  JUMBO_MAX_PACKET,
  JumboAssembler,
  type JumboMeta,
  JumboResult,
  jumboSliceOffset,
  placeJumbo,
  writeJumbo,
} from "./jumbo.ts";

const BATCH = 32;
/** Largest UDP payload of one (GSO) send: 65535 − IPv4 header − UDP header. */
const MAX_GSO_PAYLOAD = 65507;
const SEND_SLOT = 65535 + 64 * 16 + 1024; // a super-packet's segments with headroom
const RECV_SLOT = 65535;
const YIELD_EVERY_MS = 5000;
/** Table size (entries) from which the Worker compacts its heap after building its copy. */
const COMPACT_AFTER = 1000;
const IDLE_POLL_MS = 50;
const STATS_EVERY_MS = 1000;
const PEER_TICK_MS = 100;

// deno-lint-ignore no-explicit-any
const scope = self as any as {
  postMessage(m: FromWorker): void;
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
};

let engine: Engine | undefined;
let tun: TunDevice | undefined;
let udp: UdpSocket | undefined;
let wake: EventFd | undefined;
let stopping = false;
let crash = false;
let mtu = 1450;
let spinMs = 0;
// The TUN read buffer is one more slot of the send arena, and JUMBO reassembly happens in spare room
// of the receive arena: copies between them are copyWithin on one buffer (no view per copy).
const send = new SendBatch(BATCH + 1, SEND_SLOT);
const tunBuf = send.bufs[BATCH];
const TUN_AT = BATCH * SEND_SLOT;
const JUMBO_SENDERS = 4;
const recv = new RecvBatch(BATCH, RECV_SLOT, JUMBO_SENDERS * JUMBO_MAX_PACKET);
const assembler = new JumboAssembler({
  arena: recv.data,
  base: recv.spareOffset,
  slots: JUMBO_SENDERS,
  prefix: 0, // the virtio header goes out from its own buffer (writev)
  // Lost messages from a peer may make it refuse that peer's JUMBO messages (see PeerTable.noteJumboId).
  onLost: (peer, id) => engine?.peers.noteJumboId(peer as Peer, id, false, performance.now()),
});
// A reassembled packet is written with writev: its virtio header from `jumboHdrBytes`, its parts
// from the receive arena (where they arrived) — no copy.
const jumboHdrBytes = new Uint8Array(VNET_HDR_LEN);
const jumboHdrAddr = bufferAddress(jumboHdrBytes);
const recvAddr = bufferAddress(recv.data);
const jumboIov = new Uint8Array((1 + JUMBO_MAX_CHUNKS) * 16);
const jumboIov32 = new Uint32Array(jumboIov.buffer);
const jumboMeta: JumboMeta = { gsoType: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
const jumboHdr = new VnetHdr();
let jumboTx = 0;
let jumboRx = 0;
let jumboTxInPlace = 0;
// Scatter reads: while large packets go as JUMBO messages, the TUN is read with readv straight into
// the JUMBO layout of send slot `pending` (chunk 0's slice after the virtio header in tunBuf, the
// others in place, tag holes between them), so the sender copies one slice instead of all of them.
// A packet that turns out not to go as JUMBO is gathered back into tunBuf first.
let scatterIovs: Uint8Array[] = [];
let scatterCount = 0;
let scatterReads = false;
/** Send slot the packet in tunBuf continues in (scatter read of a large packet), or -1. */
let scatteredInto = -1;
const vnet = new VnetHdr();
const segmenter = new Segmenter();
let segRaw: SegmentBatch[] = [];
let segFast: SegmentBatch[] = [];
const coalescer = new Coalescer({ maxPackets: 256, arenaBytes: 4 << 20 });
let pending = 0;
/** Lane key (lanes.ts) of each queued send entry, and of the packet being queued. */
const sendKeys = new Int32Array(BATCH + 1);
let curKey = 0;
const gsoDrops = new Float64Array(GSO_ERROR_NAMES.length);
const DROP_SEND = DROP_NAMES.indexOf("send_error");
const DROP_TUN = DROP_NAMES.indexOf("tun_write_error");
/**
 * Single (non-GSO) packets up to this size are written to the TUN with a complete checksum: the
 * kernel forwards a CHECKSUM_PARTIAL packet from a TUN measurably slower (request/response latency
 * 2× in the harness), while coalesced super-packets keep the partial sum (no per-byte work in JS).
 */
const COMPLETE_BELOW = 1600;

/** Completes the checksum of a virtio-framed single packet at `o` (header + packet) if partial. */
function completeSmall(a: Uint8Array, o: number, len: number): boolean {
  if ((a[o] & VNET_F_NEEDS_CSUM) === 0 || a[o + 1] !== 0 || len > COMPLETE_BELOW) {
    return (a[o] & VNET_F_NEEDS_CSUM) !== 0;
  }
  const csumStart = a[o + 6] | (a[o + 7] << 8); // virtio_net_hdr fields are little-endian
  const csumOffset = a[o + 8] | (a[o + 9] << 8);
  if (!completeChecksum(a, o + VNET_HDR_LEN, len - VNET_HDR_LEN, csumStart, csumOffset)) return true;
  a[o] &= ~VNET_F_NEEDS_CSUM;
  return false;
}

function post(m: FromWorker): void {
  scope.postMessage(m);
}

function flushSend(): void {
  if (pending === 0 || !udp) return;
  let stalls = 0;
  while (pending > 0) {
    const r = udp.sendBatch(send, pending);
    // 0: nothing went out (EAGAIN); wait for room a few times before giving the batch up.
    if (r < 0 || (r === 0 && ++stalls > 3)) {
      engine!.counters.drops[DROP_SEND] += pending;
      break;
    }
    if (r < pending) {
      // Socket buffer full (non-blocking): wait for room, then send the rest from the front.
      if (r > 0) compactSend(r, pending);
      pending -= r;
      udp.waitWritable(5);
      continue;
    }
    break;
  }
  pending = 0;
}

function compactSend(from: number, n: number): void {
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
    sendKeys[j] = sendKeys[i];
  }
}

function toTun(buf: Uint8Array, len: number): void {
  if (tun!.write(buf, len) < 0) engine!.counters.drops[DROP_TUN]++;
}

/** Writes one packet the coalescer refused to the TUN behind its own virtio header. */
const plainOut = new Uint8Array(VNET_HDR_LEN + 65535);
const plainHdr = new VnetHdr();
function plainToTun(buf: Uint8Array, off: number, len: number, csumStart: number, csumOffset: number): void {
  plainHdr.clear();
  if (csumStart >= 0) {
    plainHdr.flags = VNET_F_NEEDS_CSUM;
    plainHdr.csumStart = csumStart;
    plainHdr.csumOffset = csumOffset;
  }
  plainHdr.encode(plainOut, 0);
  plainOut.set(buf.subarray(off, off + len), VNET_HDR_LEN);
  toTun(plainOut, VNET_HDR_LEN + len);
}

/** Precomputes, per send slot, the iovecs of a scatter read into its JUMBO layout (if one fits). */
function buildScatterIovs(): void {
  const dsize = FAST_HEADER_LEN + mtu;
  const first = dsize - JUMBO_TAG_LEN - JUMBO_META_LEN;
  const count = 1 + Math.ceil((JUMBO_MAX_PACKET - first) / (dsize - JUMBO_TAG_LEN));
  if (count > JUMBO_MAX_CHUNKS || count * dsize > SEND_SLOT) return; // MTU too small: no scatter reads
  const tunAddr = bufferAddress(tunBuf);
  const dataAddr = bufferAddress(send.data);
  scatterCount = count;
  scatterIovs = [];
  for (let s = 0; s < BATCH; s++) {
    const iov = new Uint8Array(count * 16);
    const w = new Uint32Array(iov.buffer);
    putIov(w, 0, tunAddr, VNET_HDR_LEN + first);
    for (let k = 1; k < count; k++) {
      putIov(w, k, dataAddr + s * SEND_SLOT + jumboSliceOffset(k, dsize), dsize - JUMBO_TAG_LEN);
    }
    scatterIovs.push(iov);
  }
}

/** True when the packet in tunBuf (`len` bytes) is a TCP super-packet whose flow goes to a JUMBO peer. */
function jumboBound(len: number): boolean {
  return jumboShaped() && engine!.routeOfFlow(tunBuf, VNET_HDR_LEN, len)?.peer?.jumbo === true;
}

/** The packet in tunBuf (per `vnet`) can travel as a JUMBO message: a TCP super-packet, GSO on. */
function jumboShaped(): boolean {
  if (!udp!.gso || (vnet.flags & VNET_F_NEEDS_CSUM) === 0) return false;
  const type = vnet.gsoType & ~VNET_GSO_ECN;
  return type === VNET_GSO_TCPV4 || type === VNET_GSO_TCPV6;
}

/** Makes a scattered packet contiguous in tunBuf again. */
function gatherScattered(len: number): void {
  if (scatteredInto < 0) return;
  gatherJumbo(send.data, TUN_AT + VNET_HDR_LEN, len, scatteredInto * SEND_SLOT, FAST_HEADER_LEN + mtu);
  scatteredInto = -1;
}

/** Queues the translated packet in `tunBuf` for the engine's route: one JUMBO message or segments. */
function queueToPeer(len: number): void {
  const e = engine!;
  const route = e.out!;
  if (pending > BATCH - 2) flushSend(); // a super-packet may need two entries
  const slot = pending;
  const peer = route.peer;
  // The receiver steers each datagram to a worker by this key (lanes.ts): one send carries one key.
  curKey = laneKey(tunBuf, VNET_HDR_LEN, len);
  if (peer?.jumbo === true && jumboShaped()) {
    jumboMeta.gsoType = vnet.gsoType;
    jumboMeta.gsoSize = vnet.gsoSize;
    jumboMeta.csumStart = vnet.csumStart;
    jumboMeta.csumOffset = vnet.csumOffset;
    const dsize = FAST_HEADER_LEN + mtu;
    const at = slot * SEND_SLOT;
    const inPlace = scatteredInto === slot;
    // Lane-tagged ids let the receiver steer chunks without an inner header (CAP_LANES).
    const id = jumboLaneId(peer, curKey);
    const used = inPlace
      ? placeJumbo(send.data, TUN_AT + VNET_HDR_LEN, len, at, dsize, id, jumboMeta)
      : writeJumbo(send.data, TUN_AT + VNET_HDR_LEN, len, at, dsize, id, jumboMeta);
    if (inPlace && used > 0) jumboTxInPlace++;
    scatteredInto = -1;
    if (used > 0) {
      scatterReads = scatterIovs.length > 0;
      advanceJumboId(peer, curKey);
      jumboTx++;
      queueRun(slot, 0, used, dsize, Math.ceil(used / dsize));
      return;
    }
  }
  gatherScattered(len); // (not expected: a scattered packet was checked to be JUMBO-bound)
  if (len > FAST_HEADER_LEN + mtu) scatterReads = false; // large packets go segmented now
  const fast = route.peer?.fast === true;
  const seg = (fast ? segFast : segRaw)[slot];
  seg.reset();
  const n = segmenter.segment(tunBuf, VNET_HDR_LEN, len, vnet, fast ? "partial" : "full", seg);
  if (n < 0) {
    gsoDrops[-n]++;
    return;
  }
  const head = fast ? FAST_HEADER_LEN : 0;
  if (fast) {
    const flags = segmenter.partial ? FAST_F_NEEDS_CSUM : 0;
    const cs = segmenter.partial ? segmenter.csumStart : 0;
    const co = segmenter.partial ? segmenter.csumOffset : 0;
    for (let k = 0; k < n; k++) encodeFastHeader(seg.buf, seg.offsets[k] - head, flags, cs, co);
  }
  const start = seg.offsets[0] - head;
  if (
    n === 1 && slot > 0 && sendKeys[slot - 1] === curKey &&
    appendDatagram(slot - 1, slot * SEND_SLOT + start, seg.used - start)
  ) return;
  queueRun(slot, start, seg.used, segmenter.datagramSize, n);
}

/**
 * Appends a single datagram (`size` bytes at `send.data[from..]`) to send entry `p` when it goes to
 * the same peer and can carry it as one more GSO segment (no larger than the entry's segments, the
 * entry not already ending in a shorter one, within the size and count limits). Runs of small
 * packets to one peer (UDP request streams, TCP ACKs) then cost the kernel one skb per run on both
 * nodes instead of one per packet; the datagrams on the wire are the same.
 */
function appendDatagram(p: number, from: number, size: number): boolean {
  const route = engine!.out!;
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
 * to the engine's route. One UDP_SEGMENT send carries at most 65507 bytes of UDP payload (one IPv4
 * datagram before segmentation), so a 64 KB super-packet's datagrams may need a second entry (a
 * copy of the tail into the next slot).
 */
function queueRun(slot: number, start: number, end: number, dsize: number, n: number): void {
  const route = engine!.out!;
  const perSend = n > 1 ? Math.max(1, Math.floor(MAX_GSO_PAYLOAD / dsize)) : 1;
  for (let k = 0; k < n; k += perSend) {
    const i = pending;
    const from = start + k * dsize;
    const to = Math.min(end, from + perSend * dsize);
    if (i !== slot) {
      send.data.copyWithin(i * SEND_SLOT + from, slot * SEND_SLOT + from, slot * SEND_SLOT + to);
    }
    send.offsets[i] = from;
    send.sizes[i] = to - from;
    send.segSizes[i] = to - from > dsize ? dsize : 0;
    sendKeys[i] = curKey;
    if (route.family === 4) send.setDst4(i, route.addr4, route.port);
    else send.setDst6(i, route.addr6!, 0, route.port);
    pending++;
  }
  if (pending >= BATCH) flushSend();
}

function egress(n: number, now: number): void {
  vnet.decode(tunBuf, 0);
  const partial = (vnet.flags & VNET_F_NEEDS_CSUM) !== 0;
  const len = n - VNET_HDR_LEN;
  // A scattered packet stays so only when its flow already goes to a JUMBO peer; anything else
  // (a new flow, parking, same-node delivery, segmenting) needs it contiguous.
  if (scatteredInto >= 0 && !jumboBound(len)) {
    gatherScattered(len);
    scatterReads = false;
  }
  const v = engine!.egress(tunBuf, VNET_HDR_LEN, len, now, partial, VNET_HDR_LEN);
  if (v === Verdict.TO_PEER) queueToPeer(len);
  else if (v === Verdict.TO_TUN) {
    completeSmall(tunBuf, 0, n); // same node: the virtio header still applies
    toTun(tunBuf, n);
  }
}

function drainTun(now: number): void {
  for (let k = 0; k < 512; k++) {
    let n: number;
    if (scatterReads) {
      if (pending > BATCH - 2) flushSend(); // the read goes to slot `pending`, which must stay free
      n = tun!.readv(scatterIovs[pending], scatterCount);
      scatteredInto = n - VNET_HDR_LEN > FAST_HEADER_LEN + mtu - JUMBO_TAG_LEN - JUMBO_META_LEN
        ? pending
        : -1;
    } else {
      n = tun!.read(tunBuf);
      scatteredInto = -1;
    }
    if (n <= VNET_HDR_LEN) break;
    egress(n, now);
  }
  scatteredInto = -1;
  flushSend();
  reportMisses();
}

/** Writes the coalesced packets: each is checked and restored once, then written with its header. */
function flushCoalescer(): void {
  const e = engine!;
  const n = coalescer.finish();
  const a = coalescer.arena;
  for (let j = 0; j < n; j++) {
    const o = coalescer.offsets[j];
    const len = coalescer.lengths[j];
    const partial = completeSmall(a, o, len);
    if (e.deliver(a, o + VNET_HDR_LEN, len - VNET_HDR_LEN, partial) === Verdict.TO_TUN) {
      toTun(o === 0 ? a : a.subarray(o), len);
    }
  }
  coalescer.reset();
}

/**
 * Adds a JUMBO chunk to its sender's message; a complete super-packet is checked and restored once
 * and written to the TUN behind a virtio header that carries the sender's offload fields.
 */
function jumboIn(b: Uint8Array, o: number, len: number, now: number): void {
  const e = engine!;
  if (assembler.add(e.pktPeer!, b, o, len) !== JumboResult.COMPLETE) return;
  e.peers.noteJumboId(e.pktPeer!, assembler.outId, true, now);
  flushCoalescer(); // packets of the same flow received before it go first
  const at = assembler.outOffset;
  const total = assembler.outLength;
  const m = assembler.outMeta;
  const a = recv.data;
  if (e.deliver(a, at, total, true) !== Verdict.TO_TUN) return;
  const h = jumboHdr;
  h.clear();
  h.flags = VNET_F_NEEDS_CSUM;
  h.gsoType = m.gsoType;
  h.gsoSize = m.gsoSize;
  h.csumStart = m.csumStart;
  h.csumOffset = m.csumOffset;
  h.hdrLen = m.csumStart + ((a[at + m.csumStart + 12] >>> 4) << 2);
  h.encode(jumboHdrBytes, 0);
  putIov(jumboIov32, 0, jumboHdrAddr, VNET_HDR_LEN);
  const parts = assembler.outParts;
  for (let k = 0; k < parts; k++) {
    putIov(jumboIov32, k + 1, recvAddr + assembler.outPartOffsets[k], assembler.outPartLengths[k]);
  }
  jumboRx++;
  if (tun!.writev(jumboIov, parts + 1) < 0) e.counters.drops[DROP_TUN]++;
}

/** Sets `struct iovec` `i` in `w` (a pointer as two little-endian words, then the length). */
function putIov(w: Uint32Array, i: number, addr: number, len: number): void {
  w[i * 4] = addr >>> 0;
  w[i * 4 + 1] = (addr / 0x100000000) >>> 0;
  w[i * 4 + 2] = len;
  w[i * 4 + 3] = 0;
}

function drainUdp(now: number): void {
  const e = engine!;
  for (let k = 0; k < 16; k++) {
    const c = udp!.recvBatch(recv, 0);
    if (c <= 0) break;
    for (let i = 0; i < c; i++) {
      const b = recv.bufs[i];
      const total = recv.sizes[i];
      const step = recv.gsoSizes[i] > 0 ? recv.gsoSizes[i] : total;
      const fam = recv.families[i] === 4 ? 4 : 6;
      const a6 = fam === 6 ? recv.addrs6.subarray(i * 16, i * 16 + 16) : undefined;
      for (let o = 0; o < total; o += step) {
        const dl = Math.min(step, total - o);
        const v = e.receive(b, o, dl, fam, recv.addrs4[i], a6, recv.ports[i], now);
        if (v === Verdict.JUMBO) {
          jumboIn(b, o, dl, now);
          continue;
        }
        if (v !== Verdict.TO_TUN) continue;
        let r = coalescer.add(b, e.pktOff, e.pktLen, e.pktCsumStart, e.pktCsumOffset);
        if (r === CoalesceResult.FULL) {
          flushCoalescer();
          r = coalescer.add(b, e.pktOff, e.pktLen, e.pktCsumStart, e.pktCsumOffset);
        }
        if (
          r === CoalesceResult.INVALID &&
          e.deliver(b, e.pktOff, e.pktLen, e.pktCsumStart >= 0) === Verdict.TO_TUN
        ) {
          plainToTun(b, e.pktOff, e.pktLen, e.pktCsumStart, e.pktCsumOffset);
        }
      }
    }
    flushCoalescer(); // before the next recvBatch reuses the buffers
    assembler.spill();
    if (c < BATCH) break;
  }
  sendControl();
  reportMisses();
}

/** Sends queued HELLO/PROBE datagrams and replies. */
function sendControl(): void {
  const q = engine!.control;
  while (q.length > 0) {
    const m = q.shift()!;
    const i = pending;
    send.bufs[i].set(m.bytes);
    send.offsets[i] = 0;
    send.segSizes[i] = 0;
    send.sizes[i] = m.bytes.length;
    sendKeys[i] = -1;
    if (m.family === 4) send.setDst4(i, m.addr4, m.port);
    else send.setDst6(i, m.addr6!, 0, m.port);
    if (++pending === BATCH) flushSend();
  }
  flushSend();
}

function reportMisses(): void {
  const m = engine!.misses;
  const from = engine!.missSources;
  while (m.length > 0) {
    const addr = m.shift()!;
    const src = from.get(addr);
    from.delete(addr);
    post({ type: "miss", addr, ...(src !== undefined ? { from: src } : {}) });
  }
}

function replay(packets: Uint8Array[]): void {
  const now = performance.now();
  for (const p of packets) {
    tunBuf.set(p); // parked with its virtio header
    egress(p.length, now);
  }
  flushSend();
  reportMisses();
}

let lastUsage = 0;

/** Receives again datagrams whose sender became known (one by one, no coalescing). */
function replayIn(items: ParkedDatagram[]): void {
  const e = engine!;
  const now = performance.now();
  for (const d of items) {
    if (e.receive(d.bytes, 0, d.bytes.length, d.family, d.src4, d.src6, d.srcPort, now) !== Verdict.TO_TUN) {
      continue;
    }
    if (e.deliver(d.bytes, e.pktOff, e.pktLen, e.pktCsumStart >= 0) === Verdict.TO_TUN) {
      plainToTun(d.bytes, e.pktOff, e.pktLen, e.pktCsumStart, e.pktCsumOffset);
    }
  }
  sendControl();
}

function stats(): StatsData {
  const e = engine!;
  const c = e.counters;
  const drops: Record<string, number> = {};
  c.drops.forEach((v, i) => {
    if (v > 0) drops[DROP_NAMES[i]] = v;
  });
  gsoDrops.forEach((v, i) => {
    if (v > 0) drops[`gso_${GSO_ERROR_NAMES[i]}`] = v;
  });
  if (send.dropped > 0) drops[`send_errno_${send.lastErrno}`] = send.dropped;
  // Judged against each peer's window of message ids (made-up ids do not count).
  if (e.peers.jumboLost > 0) drops.jumbo_lost = e.peers.jumboLost;
  if (assembler.malformed > 0) drops.jumbo_malformed = assembler.malformed;
  if (assembler.strays > 0) drops.jumbo_stray = assembler.strays;
  return {
    tunRx: c.tunRx,
    tunRxBytes: c.tunRxBytes,
    tunTx: c.tunTx,
    tunTxBytes: c.tunTxBytes,
    udpRx: c.udpRx,
    udpRxBytes: c.udpRxBytes,
    udpTx: c.udpTx,
    udpTxBytes: c.udpTxBytes,
    localHandoff: c.localHandoff,
    jumboTx,
    jumboRx,
    jumboTxInPlace,
    parked: c.parked,
    released: c.released,
    parkedNow: e.parkedNow,
    flows: e.flows.size,
    drops,
    peers: e.peers.stats(performance.now()),
    usedJobs: usage(),
    heap: isolateHeap(),
  };
}

/** This isolate's heap figures (Deno.memoryUsage's heap fields are per isolate; rss is the process's). */
function isolateHeap(): StatsData["heap"] {
  const m = Deno.memoryUsage();
  return { used: m.heapUsed, total: m.heapTotal, external: m.external };
}

function usage(): string[] {
  const now = performance.now();
  const jobs = engine!.usedJobs(lastUsage);
  lastUsage = now;
  return jobs;
}

/**
 * Returns to the event loop so queued messages run. A MessageChannel round trip takes ~20 µs in a
 * Worker where `setTimeout(0)` takes ~2 ms; `posted` (a counter the main isolate bumps before each
 * postMessage) tells when every message has been handled, with a timer as the fallback.
 */
const channel = new MessageChannel();
let channelWaiter: (() => void) | undefined;
channel.port1.onmessage = () => channelWaiter?.();
const yieldFast = () =>
  new Promise<void>((r) => {
    channelWaiter = r;
    channel.port2.postMessage(0);
  });
let posted: Int32Array | undefined;
let handled = 0;
async function yieldNow(): Promise<void> {
  for (let k = 0; k < 50; k++) {
    await yieldFast();
    if (!posted || Atomics.load(posted, 0) <= handled) return;
  }
  await new Promise<void>((r) => setTimeout(r, 0));
}

async function loop(): Promise<void> {
  const poller = new Poller([tun!.fd, udp!.fd, wake!.fd]);
  let lastYield = performance.now();
  let lastStats = lastYield;
  let lastPeerTick = 0;
  const spin = new SpinPolicy({ spinMs });
  const c = engine!.counters;
  while (!stopping) {
    if (crash) throw new Error("data-plane worker crash requested");
    const t = performance.now();
    const spinning = spin.shouldSpin(t);
    // A blocking poll returns at once when something is ready: no extra zero-timeout poll after work.
    const r = poller.wait(spinning ? 0 : IDLE_POLL_MS);
    // A spinning thread steps aside for any runnable thread on its CPU (the workload or the other
    // end of the path may be waiting for exactly this CPU), then looks again.
    if (spinning && r === 0) libc.sched_yield();
    const now = performance.now();
    let woken = false;
    if (r > 0) {
      const before = c.tunRx + c.udpRx;
      let busy = false;
      if (poller.readable(0)) {
        drainTun(now);
        busy = true;
      }
      if (poller.readable(1)) {
        drainUdp(now);
        busy = true;
      }
      if (poller.readable(2)) {
        wake!.drain();
        woken = true;
      }
      if (busy) {
        const end = performance.now();
        spin.active(end, end - now, c.tunRx + c.udpRx - before);
      }
    } else {
      spin.idle(now - t);
    }
    if (now - lastPeerTick > PEER_TICK_MS) {
      engine!.peerTick(now);
      sendControl();
      lastPeerTick = now;
    }
    if (now - lastStats > STATS_EVERY_MS) {
      engine!.tick(now);
      post({ type: "stats", stats: stats() });
      lastStats = now;
    }
    if (woken || (posted && Atomics.load(posted, 0) > handled) || now - lastYield > YIELD_EVERY_MS) {
      await yieldNow();
      lastYield = performance.now();
    }
  }
  post({ type: "stats", stats: stats() });
  post({ type: "stopped" });
  self.close();
}

scope.onmessage = (ev: MessageEvent<ToWorker>) => {
  const m = ev.data;
  if (m.type !== "init") handled++;
  try {
    switch (m.type) {
      case "init": {
        engine = new Engine(m.engine, TranslationTable.fromSnapshot(m.table));
        tun = tunFromInfo(m.tun);
        if (!tun.vnetHdr) throw new Error("the data plane needs a TUN with IFF_VNET_HDR");
        udp = udpFromInfo(m.udp);
        wake = new EventFd(m.wakeFd);
        posted = new Int32Array(m.posted);
        mtu = m.mtu;
        spinMs = m.busyPollUs / 1000;
        buildScatterIovs();
        segRaw = send.bufs.map((b) =>
          new SegmentBatch({ mtu, headroom: 0, packed: true, buf: b, capacity: 64 })
        );
        segFast = send.bufs.map((b) =>
          new SegmentBatch({ mtu, headroom: FAST_HEADER_LEN, packed: true, buf: b, capacity: 64 })
        );
        tun.setNonBlocking(true);
        udp.setNonBlocking(true);
        if (m.lane !== undefined) {
          // One core per worker: a flow's packets enter the kernel on one CPU, so they stay in order.
          const cpus = allowedCpus();
          pinThread(cpus[m.lane % cpus.length]);
        }
        // Building a large table grew this isolate's young generation: give it back before the loop
        // (a small table is not worth loading the GC hook for).
        (engine.table.size >= COMPACT_AFTER ? compactHeap() : Promise.resolve(false)).finally(() => {
          post({ type: "ready" });
          loop().catch((e) => post({ type: "error", message: String(e?.stack ?? e), fatal: true }));
        });
        break;
      }
      case "delta":
        engine?.applyDelta(m.delta, performance.now());
        break;
      case "resolved":
        if (engine) {
          replay(engine.resolved(m.addr, m.ok));
          replayIn(engine.resolvedStrangers(m.addr, m.ok));
        }
        break;
      case "self":
        engine?.setSelf(m.ip, performance.now());
        break;
      case "flows": {
        const e = engine;
        const out = e ? [...e.flows.ids()].slice(0, m.limit).map((id) => e.flows.info(id)) : [];
        post({ type: "flows", id: m.id, flows: out });
        break;
      }
      case "stop":
        stopping = true;
        break;
      case "crash":
        crash = true;
        break;
    }
  } catch (e) {
    // A failed init is fatal; any other message that fails leaves the loop running.
    post({ type: "error", message: String((e as Error)?.stack ?? e), fatal: m.type === "init" });
  }
};
