/**
 * The TUN batch device ({@link TunSeam}) over a TUN opened with `IFF_VNET_HDR` and TSO/CSUM(/USO)
 * offloads. Every read and write carries a 10-byte `virtio_net_hdr`:
 * - a read returns one packet of up to 64 KB (a TCP/UDP super-packet) and its offload metadata
 *   (decoded into {@link VnetTun.meta}); while large packets go as JUMBO messages, reads scatter
 *   straight into the bind's JUMBO layout (readv; {@link ScatterTarget}) and {@link VnetTun.gather}
 *   undoes that for a packet that goes elsewhere;
 * - packets from the tunnel are coalesced (GRO, offload.ts) into super-packets, each checked and
 *   restored once by the {@link Deliverer} and written with one write; single packets up to
 *   {@link COMPLETE_BELOW} bytes get their checksum completed; a reassembled JUMBO packet is written
 *   with writev straight from the receive arena.
 *
 * @example
 * ```ts
 * import { VnetTun } from "./tun_device.ts";
 * import { Counters, Verdict } from "./engine.ts";
 * import { openTun } from "../../ffi/tun.ts";
 * const dev = openTun({ name: "nmdemo0", vnetHdr: true });
 * const tun = new VnetTun(dev, {
 *   mtu: 1450,
 *   counters: new Counters(),
 *   deliverer: { deliver: () => Verdict.TO_TUN },
 * });
 * for (let n = tun.read(); n > 0; n = tun.read()) console.log(n, tun.meta.gsoType);
 * ```
 * @module
 */
import type { TunDevice } from "../../ffi/tun.ts";
import { bufferAddress } from "../../ffi/libc.ts";
import { VNET_F_NEEDS_CSUM, VNET_HDR_LEN, VnetHdr } from "../../ffi/vnet.ts";
import { completeChecksum } from "./checksum.ts";
import { type Counters, Drop, Verdict } from "./engine.ts";
import { Coalescer, CoalesceResult } from "./offload.ts";
import { gatherJumbo } from "./jumbo.ts";
import { FAST_HEADER_LEN, JUMBO_MAX_CHUNKS } from "./wire.ts";
import type { AssembledPacket, Deliverer, ScatterTarget, TunSeam } from "./seams.ts";
import { putIov } from "./iov.ts";

/** The device calls a {@link VnetTun} needs (an FFI {@link TunDevice}). */
export type TunFd = Pick<TunDevice, "fd" | "read" | "readv" | "write" | "writev">;

/**
 * Single (non-GSO) packets up to this size are written to the TUN with a complete checksum: the
 * kernel forwards a CHECKSUM_PARTIAL packet from a TUN measurably slower (request/response latency
 * 2× in the harness), while coalesced super-packets keep the partial sum (no per-byte work in JS).
 */
export const COMPLETE_BELOW = 1600;

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

/** A bind that takes scatter reads (see bind.ts). */
export interface ScatterBind extends ScatterTarget {
  /** Offset in {@link sendArena} of the slot the last scatter read went to. */
  scatterBase(): number;
  readonly sendArena: Uint8Array;
}

/** VnetTun options. */
export interface VnetTunOptions {
  /** Inner MTU (largest packet on the wire). */
  mtu: number;
  /** TUN write errors are counted here. */
  counters: Counters;
  /** Checks and restores packets from the tunnel before they are written (the engine). */
  deliverer: Deliverer;
  /** The read buffer (≥ 10 + 65535 bytes); with `scatter`, the bind's read slot of its send arena. */
  readBuf?: Uint8Array;
  /** The bind whose JUMBO layout large packets are read into. */
  scatter?: ScatterBind;
}

/** The TUN batch device (see the module). */
export class VnetTun implements TunSeam {
  readonly fd: number;
  readonly buf: Uint8Array;
  readonly off = VNET_HDR_LEN;
  readonly meta: VnetHdr = new VnetHdr();
  scattered = false;

  readonly #dev: TunFd;
  readonly #mtu: number;
  readonly #counters: Counters;
  readonly #deliverer: Deliverer;
  readonly #scatter: ScatterBind | undefined;
  #len = 0;
  readonly #coalescer = new Coalescer({ maxPackets: 256, arenaBytes: 4 << 20 });
  readonly #plainOut = new Uint8Array(VNET_HDR_LEN + 65535);
  readonly #plainHdr = new VnetHdr();
  // A reassembled packet is written with writev: its virtio header from `#asmHdrBytes`, its parts
  // from the receive arena (where they arrived) — no copy.
  readonly #asmHdr = new VnetHdr();
  readonly #asmHdrBytes = new Uint8Array(VNET_HDR_LEN);
  readonly #asmHdrAddr: number;
  readonly #asmIov = new Uint8Array((1 + JUMBO_MAX_CHUNKS) * 16);
  readonly #asmIov32 = new Uint32Array(this.#asmIov.buffer);
  #arena: Uint8Array | undefined;
  #arenaAddr = 0;

  constructor(dev: TunFd, opts: VnetTunOptions) {
    this.#dev = dev;
    this.fd = dev.fd;
    this.#mtu = opts.mtu;
    this.#counters = opts.counters;
    this.#deliverer = opts.deliverer;
    this.#scatter = opts.scatter;
    this.buf = opts.readBuf ?? new Uint8Array(VNET_HDR_LEN + 65535);
    this.#asmHdrAddr = bufferAddress(this.#asmHdrBytes);
  }

  read(): number {
    const sc = this.#scatter;
    const iov = sc?.scatterIov();
    let n: number;
    if (iov !== undefined) {
      n = this.#dev.readv(iov, sc!.scatterCount);
      this.scattered = n - VNET_HDR_LEN > sc!.scatterFirst;
    } else {
      n = this.#dev.read(this.buf);
      this.scattered = false;
    }
    if (n <= VNET_HDR_LEN) {
      this.scattered = false;
      return 0;
    }
    this.meta.decode(this.buf, 0);
    return this.#len = n - VNET_HDR_LEN;
  }

  gather(): void {
    if (!this.scattered) return;
    const sc = this.#scatter!;
    const b = this.buf;
    gatherJumbo(
      sc.sendArena,
      b.byteOffset + VNET_HDR_LEN,
      this.#len,
      sc.scatterBase(),
      FAST_HEADER_LEN + this.#mtu,
    );
    this.scattered = false;
    sc.gathered();
  }

  replay(bytes: Uint8Array): number {
    this.scattered = false;
    this.buf.set(bytes); // parked with its virtio header
    this.meta.decode(this.buf, 0);
    return this.#len = bytes.length - VNET_HDR_LEN;
  }

  writeBack(len: number): void {
    this.gather();
    const n = VNET_HDR_LEN + len;
    completeSmall(this.buf, 0, n); // same node: the virtio header still applies
    this.#write(this.buf, n);
  }

  #write(buf: Uint8Array, len: number): void {
    if (this.#dev.write(buf, len) < 0) this.#counters.drops[Drop.TUN_WRITE_ERROR]++;
  }

  add(buf: Uint8Array, off: number, len: number, csumStart: number, csumOffset: number): void {
    const c = this.#coalescer;
    let r = c.add(buf, off, len, csumStart, csumOffset);
    if (r === CoalesceResult.FULL) {
      this.flush();
      r = c.add(buf, off, len, csumStart, csumOffset);
    }
    if (r === CoalesceResult.INVALID) this.writeOne(buf, off, len, csumStart, csumOffset);
  }

  writeLocal(buf: Uint8Array, off: number, len: number): void {
    const h = this.#plainHdr;
    h.clear();
    const out = this.#plainOut;
    h.encode(out, 0);
    out.set(buf.subarray(off, off + len), VNET_HDR_LEN);
    this.#write(out, VNET_HDR_LEN + len);
  }

  writeOne(buf: Uint8Array, off: number, len: number, csumStart: number, csumOffset: number): void {
    if (this.#deliverer.deliver(buf, off, len, csumStart >= 0) !== Verdict.TO_TUN) return;
    const h = this.#plainHdr;
    h.clear();
    if (csumStart >= 0) {
      h.flags = VNET_F_NEEDS_CSUM;
      h.csumStart = csumStart;
      h.csumOffset = csumOffset;
    }
    const out = this.#plainOut;
    h.encode(out, 0);
    out.set(buf.subarray(off, off + len), VNET_HDR_LEN);
    this.#write(out, VNET_HDR_LEN + len);
  }

  /** Writes the coalesced packets: each is checked and restored once, then written with its header. */
  flush(): void {
    const c = this.#coalescer;
    const n = c.finish();
    const a = c.arena;
    const d = this.#deliverer;
    for (let j = 0; j < n; j++) {
      const o = c.offsets[j];
      const len = c.lengths[j];
      const partial = completeSmall(a, o, len);
      if (d.deliver(a, o + VNET_HDR_LEN, len - VNET_HDR_LEN, partial) === Verdict.TO_TUN) {
        this.#write(o === 0 ? a : a.subarray(o), len);
      }
    }
    c.reset();
  }

  writeAssembled(p: AssembledPacket): boolean {
    this.flush(); // packets of the same flow received before it go first
    const a = p.data;
    const at = p.offset;
    const m = p.meta;
    if (this.#deliverer.deliver(a, at, p.length, true) !== Verdict.TO_TUN) return false;
    const h = this.#asmHdr;
    h.clear();
    h.flags = VNET_F_NEEDS_CSUM;
    h.gsoType = m.gsoType;
    h.gsoSize = m.gsoSize;
    h.csumStart = m.csumStart;
    h.csumOffset = m.csumOffset;
    h.hdrLen = m.csumStart + ((a[at + m.csumStart + 12] >>> 4) << 2);
    h.encode(this.#asmHdrBytes, 0);
    if (a !== this.#arena) {
      this.#arena = a;
      this.#arenaAddr = bufferAddress(a);
    }
    const w = this.#asmIov32;
    putIov(w, 0, this.#asmHdrAddr, VNET_HDR_LEN);
    const parts = p.parts;
    for (let k = 0; k < parts; k++) putIov(w, k + 1, this.#arenaAddr + p.partOffsets[k], p.partLengths[k]);
    if (this.#dev.writev(this.#asmIov, parts + 1) < 0) this.#counters.drops[Drop.TUN_WRITE_ERROR]++;
    return true;
  }

  addDrops(_drops: Record<string, number>): void {
    // TUN write errors are counted with the engine's drops (tun_write_error).
  }
}
