/**
 * The two seams of the data plane (after wireguard-go's `tun.Device` and `conn.Bind`): the packet
 * loop ({@link PacketLoop} in loop.ts) moves packets between a {@link TunSeam} (the node's side:
 * packets with their offload metadata) and a {@link BindSeam} (the tunnel's side: datagrams to and
 * from peer endpoints), and asks the engine what to do with each. Offloads live inside the seams:
 * the TUN device owns the virtio header, coalescing (GRO), checksum completion, scatter reads and
 * writev; the bind owns sendmmsg/recvmmsg, UDP GSO runs and GRO splitting, segmentation, JUMBO
 * chunking and reassembly, and flush retries.
 *
 * The real implementations are {@link VnetTun} (tun_device.ts) and {@link UdpBind} (bind.ts); the
 * unit tests drive the loop with in-memory ones. An encrypted tunnel would be a layer on a bind, a
 * kernel fast path another implementation of both.
 *
 * Batches: a TUN read(2) returns one packet (with TSO a super-packet of up to 64 KB: the batch is
 * inside it), so the loop drains the TUN packet by packet into the bind's send batch (one
 * `sendmmsg` per batch); the bind receives `recvmmsg` batches of GRO runs; the TUN side batches its
 * writes by coalescing.
 *
 * Hot-path rule for implementations: no per-packet allocation; results go into fields that are
 * read right after the call (the next call overwrites them).
 *
 * @example
 * ```ts
 * import type { BindSeam, TunSeam } from "./seams.ts";
 * function pump(tun: TunSeam, bind: BindSeam): number {
 *   let n = 0;
 *   while (tun.read() > 0) n++; // each packet: tun.buf[tun.off ..], metadata in tun.meta
 *   bind.flush();
 *   return n;
 * }
 * ```
 * @module
 */
import type { VnetHdr } from "../../ffi/vnet.ts";
import type { JumboMeta } from "./jumbo.ts";
import type { Gatherable, PacketResult, Verdict } from "./engine.ts";
import type { Peer } from "./peers.ts";

/** Checks and restores an incoming packet before the TUN device writes it (the engine's `deliver`). */
export interface Deliverer {
  deliver(buf: Uint8Array, off: number, len: number, partial: boolean): Verdict;
}

/** A packet reassembled by a bind, in parts of its receive arena (see {@link BindSeam.reassemble}). */
export interface AssembledPacket {
  /** The arena holding the parts. */
  readonly data: Uint8Array;
  /** Where its first part (the IP header) starts, and its length. */
  readonly offset: number;
  readonly length: number;
  /** The sender's offload fields. */
  readonly meta: JumboMeta;
  /** Number of parts and where they are in `data`. */
  readonly parts: number;
  readonly partOffsets: Int32Array;
  readonly partLengths: Int32Array;
}

/** Where a bind lets the TUN device read large packets straight into its JUMBO layout. */
export interface ScatterTarget {
  /**
   * The iovecs for the next read (slot reserved until the next send), or undefined when reads go
   * to the plain buffer. `scatterCount` iovecs; a packet longer than `scatterFirst` bytes used them.
   */
  scatterIov(): Uint8Array | undefined;
  readonly scatterCount: number;
  readonly scatterFirst: number;
  /** A scattered packet was gathered (it will not go as JUMBO): read plainly again for now. */
  gathered(): void;
}

/** The node's side: a TUN device read and written in batches, offloads inside. */
export interface TunSeam extends Gatherable {
  /** Its fd, for the loop's poll (-1: none). */
  readonly fd: number;
  /** The packet last read: `buf[off .. off + len)`, its offload metadata in `meta`. */
  readonly buf: Uint8Array;
  readonly off: number;
  readonly meta: VnetHdr;
  /** The packet last read is not contiguous yet ({@link gather} makes it so). */
  readonly scattered: boolean;
  /** Reads the next packet; returns its length (0: none ready or an error). */
  read(): number;
  /** Makes the packet last read contiguous at `buf[off ..]` (after a scatter read). */
  gather(): void;
  /**
   * Puts back a parked packet as the packet last read (`bytes`: its metadata's wire form, as the
   * engine parked it, then the packet); returns its length.
   */
  replay(bytes: Uint8Array): number;
  /** Writes the packet last read (`len` bytes, rewritten in place) back into the TUN: same-node hand-off. */
  writeBack(len: number): void;
  /**
   * Queues a packet from the tunnel (not yet checked) for the TUN: coalesced with others of its flow
   * where possible; each is checked with the {@link Deliverer} before it is written. A partial
   * checksum has `csumStart` ≥ 0.
   */
  add(buf: Uint8Array, off: number, len: number, csumStart: number, csumOffset: number): void;
  /**
   * Writes a packet this node made for a local instance (an ICMP error, src/path) now, without the
   * {@link Deliverer}'s checks (which admit tunnel traffic only). Optional: seams without it drop.
   */
  writeLocal?(buf: Uint8Array, off: number, len: number): void;
  /** Checks and writes one packet now, without coalescing. */
  writeOne(buf: Uint8Array, off: number, len: number, csumStart: number, csumOffset: number): void;
  /**
   * Checks a reassembled packet with the {@link Deliverer} and writes it with its metadata, after
   * what {@link add} queued; true when it was written (or the write failed and was counted).
   */
  writeAssembled(p: AssembledPacket): boolean;
  /** Writes out what {@link add} queued. */
  flush(): void;
  /** Adds its drop counts (by name) to `drops`. */
  addDrops(drops: Record<string, number>): void;
}

/** The tunnel's side: datagrams to and from peer endpoints, in batches, offloads inside. */
export interface BindSeam {
  /** Its fd, for the loop's poll (-1: none). */
  readonly fd: number;
  /** Messages one {@link recv} takes at most (a shorter batch means the socket is drained). */
  readonly batchSize: number;
  /** JUMBO messages sent, of those read straight into their layout, and reassembled. */
  readonly jumboTx: number;
  readonly jumboTxInPlace: number;
  /**
   * Queues the packet the engine sent to a peer (`res.route`, parse in `res.info`) from the TUN
   * side's last read: as one JUMBO message, or segmented into datagrams for the peer's mode.
   */
  send(pkt: TunSeam, len: number, res: PacketResult): void;
  /** Queues one datagram as it is (in-band control messages). */
  sendRaw(bytes: Uint8Array, family: 4 | 6, addr4: number, addr6: Uint8Array | undefined, port: number): void;
  /** Sends everything queued (retrying while the socket buffer is full, then counting drops). */
  flush(): void;
  /** Receives a batch of messages; returns their number (0: none). Datagrams then come from {@link next}. */
  recv(): number;
  /**
   * Steps to the next datagram of the batch (GRO runs split): true with it in `buf[off .. off +
   * len)` from `family`/`addr4`/`addr6`/`port`; false at the end.
   */
  next(): boolean;
  readonly buf: Uint8Array;
  readonly off: number;
  readonly len: number;
  /**
   * The datagram last stepped to is now `buf[off .. off+len)`: the secure layer opened it in place
   * and the inner datagram goes on (to the engine and {@link reassemble}).
   */
  narrow(off: number, len: number): void;
  /** Segment size of the receive entry last stepped into (its GRO segment size, or its length). */
  readonly step: number;
  /** Datagrams of a full {@link step} after the one last stepped to, in the same receive entry (a GRO run). */
  runAfter(): number;
  /** Steps over the next `n` datagrams of the entry (the secure layer took them with the last one). */
  skip(n: number): void;
  readonly family: 4 | 6;
  readonly addr4: number;
  readonly addr6: Uint8Array | undefined;
  readonly port: number;
  /** Adds the JUMBO chunk just received from `peer`; true when it completed a packet, see {@link assembled}. */
  reassemble(peer: Peer, now: number): boolean;
  /**
   * After {@link reassemble} of a chunk that did not complete a packet: adds the JUMBO chunks that
   * follow it in the same receive entry (a GRO run: same source, same size) from `peer` without a
   * step and an engine call each, stopping before a datagram that is not a chunk and after one that
   * completes a packet ({@link runCompleted}) or is dropped. Returns the datagrams taken (0: none;
   * the caller counts them as received from `peer`); the bind then stands on the last one taken.
   */
  reassembleRun(peer: Peer, now: number): number;
  /**
   * The same for `n` JUMBO chunks of `stride` bytes each at `buf[off + k·stride ..]` of the entry
   * last stepped into — the parts of a sealed message that the secure layer opened together and
   * laid out back to back (SecureLayer.openRun) — without moving the bind. Optional: without it the
   * loop hands such parts over one by one.
   */
  reassembleParts?(peer: Peer, off: number, stride: number, n: number, now: number): number;
  /** The last {@link reassembleRun} (or {@link reassembleParts}) ended with a completed packet ({@link assembled}). */
  readonly runCompleted: boolean;
  readonly assembled: AssembledPacket;
  /** Adds its drop counts (by name) to `drops`. */
  addDrops(drops: Record<string, number>): void;
}
