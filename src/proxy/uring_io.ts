/**
 * The io_uring backend of a data-plane Worker (`IoBackend: "uring"`, issue 10): one system call per
 * crossing instead of three. It sits under the seams, not beside them: {@link UringIo.tun} is the
 * device a {@link VnetTun} reads and writes, {@link UringIo.sock} the socket a {@link UdpBind}
 * sends and receives on, and the UringIo itself is the Worker's poller (wait / readable / close).
 *
 * - A READ stays armed on the TUN queue (into a ring-owned buffer), a RECVMSG on the tunnel socket
 *   (payload into a ring-owned buffer, source and GRO cmsg straight into the bind's receive slot 0)
 *   and a READ on the wake-up eventfd. A completion makes its fd "readable"; the first read or
 *   receive of the drain takes the completed data (a copy: the bind's slots may hold JUMBO parts
 *   until its next receive, and the TUN read buffer is also where parked packets are replayed).
 * - Small sends (≤ {@link DEFER_BYTES}, up to {@link SEND_SLOTS}) and small TUN writes are copied
 *   into ring-owned slots and queued as SENDMSG / WRITE SQEs; the next {@link UringIo.wait}
 *   submits them, re-arms what completed and waits — the single `io_uring_enter` of a crossing.
 * - Larger batches (TCP) keep the direct calls after the first completion (recvmmsg for the rest of
 *   a GRO batch, the TUN drain reads, sendmmsg of GSO runs), after whatever was queued is submitted
 *   (order on the wire and the TUN is kept; a DF switch submits first too). A side in bulk mode (its
 *   last drain found several packets or a super-packet) arms a poll instead of a read, so its drain
 *   reads straight into place, and what it feeds goes out directly, as with epoll.
 *
 * Buffers handed to the kernel are ArrayBuffers owned by the UringIo for its life; {@link close}
 * cancels what is armed, waits for the cancellations and then unmaps and closes the ring.
 *
 * @example
 * ```ts
 * import { UringIo } from "./uring_io.ts";
 * import { openTun } from "../../ffi/tun.ts";
 * import { openUdp } from "../../ffi/udp.ts";
 * import { EventFd } from "../../ffi/eventfd.ts";
 * const io = new UringIo(openTun({ name: "nmdemo0", vnetHdr: true }), openUdp({ family: 4, port: 0 }), new EventFd().fd);
 * if (io.wait(50) > 0 && io.readable(0)) console.log("a TUN packet is in");
 * io.close();
 * ```
 * @module
 */
import { Op, Ring, Setup } from "../../ffi/uring.ts";
import { bufferAddress, Errno, libc } from "../../ffi/libc.ts";
import type { RecvBatch, SendBatch, UdpSocket } from "../../ffi/udp.ts";
import type { TunDevice } from "../../ffi/tun.ts";
import { VNET_HDR_LEN } from "../../ffi/vnet.ts";
import type { TunFd } from "./tun_device.ts";
import type { DatagramSocket } from "./bind.ts";

/** Sends of at most this many bytes are queued on the ring (copied); larger ones go out directly. */
export const DEFER_BYTES = 2048;
/** Ring-owned send slots (and TUN write slots). */
export const SEND_SLOTS = 16;
/** TUN writes of at most this many bytes (virtio header included) are queued on the ring. */
export const DEFER_WRITE_BYTES = 4096;
const RING_ENTRIES = 64;
const RECV_BYTES = 65535;
const TUN_BYTES = VNET_HDR_LEN + 65535;
const MSGHDR = 56;
const MSG_DONTWAIT = 0x40;
const POLLIN = 0x1;
const AF_INET = 2;
const AF_INET6 = 10;
const SOL_UDP = 17;
const UDP_SEGMENT = 103;
const ECANCELED = 125;
/** A completion of this size or with a GRO segment size: bulk traffic, drain the socket directly too. */
const BULK_BYTES = 1600;

/** Setup flags of {@link UringIo} (see its constructor). */
export const DEFAULT_FLAGS = Setup.SUBMIT_ALL | Setup.COOP_TASKRUN | Setup.SINGLE_ISSUER |
  Setup.DEFER_TASKRUN;

/**
 * Setup flags for spin mode (`BusyPollMicros` > 0): the default's, and the kernel flags completion
 * work in the SQ ring's flags word, so that {@link UringIo.spin} watches memory instead of entering.
 */
export const SPIN_FLAGS = DEFAULT_FLAGS | Setup.TASKRUN_FLAG;

/** What a completion was for: low byte of its user data (the slot is in the next byte). */
export const Tag = { TUN: 1, SOCK: 2, WAKE: 3, SEND: 4, WRITE: 5, SOCK_POLL: 6, CANCEL: 7 } as const;

/** User data of an SQE: tag and slot (pure). */
export function userData(tag: number, slot = 0): number {
  if (tag < 0 || tag > 255 || slot < 0 || slot > 255) throw new RangeError(`tag ${tag} / slot ${slot}`);
  return tag | (slot << 8);
}

/** Error counts of the ring's own operations (names as in the stats' drops). */
export interface UringDrops {
  uring_send_error: number;
  uring_tun_write_error: number;
  uring_recv_error: number;
  uring_tun_read_error: number;
}

/**
 * Writes a sockaddr for destination `i` of `b` (as {@link SendBatch.encode} does) into `out` at
 * `o`; returns its length. An IPv4 destination on an IPv6 socket becomes ::ffff:a.b.c.d.
 */
export function putSockaddr(out: DataView, o: number, b: SendBatch, i: number, sockFamily: 4 | 6): number {
  const port = b.dstPorts[i];
  for (let k = 0; k < 28; k++) out.setUint8(o + k, 0);
  out.setUint16(o + 2, port, false);
  if (sockFamily === 4 && b.dstFamilies[i] === 4) {
    out.setUint16(o, AF_INET, true);
    out.setUint32(o + 4, b.dst4[i], false);
    return 16;
  }
  out.setUint16(o, AF_INET6, true);
  if (b.dstFamilies[i] === 4) {
    out.setUint16(o + 18, 0xffff, false);
    out.setUint32(o + 20, b.dst4[i], false);
  } else {
    for (let k = 0; k < 16; k++) out.setUint8(o + 8 + k, b.dst6[i * 16 + k]);
    out.setUint32(o + 24, b.dstScopes[i], true);
  }
  return 28;
}

function putPtr(v: DataView, o: number, addr: number): void {
  v.setUint32(o, addr >>> 0, true);
  v.setUint32(o + 4, Math.floor(addr / 4294967296), true);
}

/** The io_uring backend (see the module). */
export class UringIo {
  readonly ring: Ring;
  /** The TUN device for the {@link VnetTun} (completed reads first, queued small writes). */
  readonly tun: TunFd;
  /** The socket for the {@link UdpBind} (completed receives first, queued small sends). */
  readonly sock: DatagramSocket;
  readonly drops: UringDrops = {
    uring_send_error: 0,
    uring_tun_write_error: 0,
    uring_recv_error: 0,
    uring_tun_read_error: 0,
  };
  /** Sends and TUN writes that went through the ring (tests, bench). */
  deferredSends = 0;
  deferredWrites = 0;

  readonly #dev: TunDevice;
  readonly #udp: UdpSocket;
  readonly #wakeFd: number;
  // Ring-owned memory (addresses taken once; alive as long as this object).
  readonly #tunBuf = new Uint8Array(TUN_BYTES);
  readonly #tunAddr: number;
  readonly #recvBuf = new Uint8Array(RECV_BYTES);
  readonly #recvHdr = new Uint8Array(MSGHDR + 16); // msghdr, then its iovec
  readonly #recvHdrView = new DataView(this.#recvHdr.buffer);
  readonly #recvHdrAddr: number;
  readonly #sendData = new Uint8Array(SEND_SLOTS * DEFER_BYTES);
  readonly #sendDataAddr: number;
  /** Per send slot: msghdr (56) + iovec (16) + sockaddr (32) + cmsg (24) = 128 bytes. */
  readonly #sendMeta = new Uint8Array(SEND_SLOTS * 128);
  readonly #sendMetaView = new DataView(this.#sendMeta.buffer);
  readonly #sendMetaAddr: number;
  readonly #writeData = new Uint8Array(SEND_SLOTS * DEFER_WRITE_BYTES);
  readonly #writeDataAddr: number;
  /** Busy bits of the send / write slots (set when queued, cleared by their completion). */
  #sendBusy = 0;
  #writeBusy = 0;
  /** Sends / writes queued since the last submit (they must reach the kernel before direct calls). */
  #unsubmitted = 0;
  // Armed reads and their completions.
  #tunArmed = false;
  #tunReady = false;
  /** The TUN's armed op is a poll (bulk: the drain reads straight into place, no copy). */
  #tunPolled = false;
  /** Bulk traffic seen by the last drain of each side: arm a poll instead of the read/receive. */
  #tunBulk = false;
  #sockBulk = false;
  #tunReads = 0;
  #bigRead = false;
  #tunRes = 0;
  #sockArmed = false;
  #sockReady = false;
  #sockRes = 0;
  #sockPolled = false;
  #wakeArmed = false;
  #woken = false;
  /** The bind's receive batch (known at its first receive) and its slot 0 / rest views. */
  #batch: RecvBatch | undefined;
  #batchH32: Uint32Array | undefined;
  #batchRest: Uint8Array | undefined;
  #ready = 0;
  #closed = false;
  /** DEFER_TASKRUN: completions appear only inside io_uring_enter (a look costs a call). */
  readonly #deferred: boolean;

  /**
   * `flags`: io_uring setup flags. Default: completions' work runs only inside io_uring_enter
   * (DEFER_TASKRUN, with SINGLE_ISSUER: the Worker's thread alone uses the ring) — no interrupt of
   * a busy loop per completion (an IPI, which traps on this PVM guest); on a kernel without them
   * (< 6.1) the ring is set up without flags. {@link SPIN_FLAGS} for spin mode.
   */
  constructor(dev: TunDevice, udp: UdpSocket, wakeFd: number, flags: number = DEFAULT_FLAGS) {
    this.ring = Ring.open(RING_ENTRIES, flags);
    this.#deferred = (this.ring.flags & Setup.DEFER_TASKRUN) !== 0;
    this.#dev = dev;
    this.#udp = udp;
    this.#wakeFd = wakeFd;
    this.#tunAddr = bufferAddress(this.#tunBuf);
    this.#recvHdrAddr = bufferAddress(this.#recvHdr);
    this.#sendDataAddr = bufferAddress(this.#sendData);
    this.#sendMetaAddr = bufferAddress(this.#sendMeta);
    this.#writeDataAddr = bufferAddress(this.#writeData);
    // The receive msghdr's iovec: the ring's payload buffer.
    const v = this.#recvHdrView;
    putPtr(v, 16, this.#recvHdrAddr + MSGHDR);
    v.setUint32(24, 1, true);
    putPtr(v, MSGHDR, bufferAddress(this.#recvBuf));
    v.setUint32(MSGHDR + 8, RECV_BYTES, true);
    // Send slots: msghdr → its iovec, sockaddr; the iovec → the slot's data.
    const m = this.#sendMetaView;
    for (let s = 0; s < SEND_SLOTS; s++) {
      const o = s * 128, a = this.#sendMetaAddr + o;
      putPtr(m, o, a + 72); // msg_name
      putPtr(m, o + 16, a + MSGHDR); // msg_iov
      m.setUint32(o + 24, 1, true);
      putPtr(m, o + MSGHDR, this.#sendDataAddr + s * DEFER_BYTES);
      // cmsg (SOL_UDP, UDP_SEGMENT, u16): cmsg_len 18; used only for a GSO entry.
      m.setUint32(o + 104, 18, true);
      m.setUint32(o + 112, SOL_UDP, true);
      m.setUint32(o + 116, UDP_SEGMENT, true);
    }
    this.tun = this.#tunSide();
    this.sock = this.#sockSide();
  }

  // ---- the Worker's poller ----

  /**
   * Re-arms what completed, submits the queued sends and writes, and waits up to `timeoutMs` for a
   * completion (0: only looks). Returns the number of ready fds (TUN 0, socket 1, wake-up 2).
   */
  wait(timeoutMs: number): number {
    const ring = this.ring;
    if (this.#tunReads > 0 || this.#bigRead) {
      // Several packets in one drain, or a super-packet: bulk; one small packet: request/response.
      this.#tunBulk = this.#tunReads > 1 || this.#bigRead;
      this.#tunReads = 0;
      this.#bigRead = false;
    }
    if (!this.#tunArmed && !this.#tunReady) {
      // Bulk: readiness, then the drain's reads go straight into place (scatter reads, no copy).
      this.#tunPolled = this.#tunBulk;
      this.#tunArmed = (this.#tunBulk
        ? ring.prep(Op.POLL_ADD, this.#dev.fd, 0, 0, 0, POLLIN, Tag.TUN)
        : ring.prep(Op.READ, this.#dev.fd, this.#tunAddr, TUN_BYTES, -1, 0, Tag.TUN)) || this.#full();
    }
    if (!this.#sockArmed && !this.#sockReady) this.#armSock();
    if (!this.#wakeArmed) {
      // Readiness only: the Worker reads the counter (EventFd.drain) as with epoll.
      this.#wakeArmed = ring.prep(Op.POLL_ADD, this.#wakeFd, 0, 0, 0, POLLIN, Tag.WAKE) || this.#full();
    }
    // The queued sends and writes mostly complete inside this call: their completions must not end
    // the wait (a second enter per crossing), so wait for one completion more than they make.
    const sends = this.#unsubmitted;
    this.#unsubmitted = 0;
    const have = this.#tunReady || this.#sockReady || ring.peek();
    // A look: a watchable ring (spin mode) needs a call only to submit or to run flagged completion
    // work; the default ring (DEFER_TASKRUN, nothing flagged) always enters to run it.
    const r = have || timeoutMs === 0
      ? ring.enter(ring.queued, 0, 0, this.#deferred && (!ring.watchable || ring.taskrun))
      : ring.enter(ring.queued, 1 + sends, timeoutMs);
    if (r < 0 && r !== -Errno.EAGAIN) throw new Error(`io_uring_enter: errno ${-r}`);
    this.#reap();
    let ready = 0, n = 0;
    if (this.#tunReady) (ready |= 1), n++;
    if (this.#sockReady) (ready |= 2), n++;
    if (this.#woken) {
      this.#woken = false;
      ready |= 4;
      n++;
    }
    this.#ready = ready;
    return n;
  }

  /**
   * Busy-polls up to `maxMs` (spin mode, issue 10): submits and re-arms as {@link wait}(0) does, then
   * watches the mapped rings with plain loads — the CQ tail and the kernel's TASKRUN flag — and
   * enters only when one moved (to run the flagged completion work, or to re-arm). Returns as
   * {@link wait}: 0 when nothing came within `maxMs`. On a ring that is not {@link Ring.watchable}
   * it is one {@link wait}(0).
   */
  spin(maxMs: number): number {
    const n = this.wait(0);
    const ring = this.ring;
    if (n > 0 || !ring.watchable) return n;
    this.spins++;
    const end = performance.now() + maxMs;
    for (let k = 1;; k++) {
      if (ring.pending()) {
        const m = this.wait(0);
        if (m > 0) {
          this.spinFound++;
          return m;
        }
      }
      // A clock read costs more than a look: every 256 looks (a few µs).
      if ((k & 255) === 0 && performance.now() >= end) return 0;
    }
  }

  /** Spin calls that watched the ring, and those that found a completion while watching (tests, bench). */
  spins = 0;
  spinFound = 0;

  /** True when fd `i` (0 TUN, 1 socket, 2 wake-up) has a completion after the last {@link wait}. */
  readable(i: number): boolean {
    return (this.#ready & (1 << i)) !== 0;
  }

  /** SQ full: submit and try again (not expected: 64 entries for 3 armed ops and 2 × 16 slots). */
  #full(): boolean {
    throw new Error("io_uring: submission queue full");
  }

  #armSock(): void {
    const b = this.#batch;
    const ring = this.ring;
    if (b === undefined || this.#sockBulk) {
      // The bind's receive batch is not known before its first receive, or bulk traffic: readiness,
      // then recvmmsg straight into the batch (no copy).
      this.#sockArmed = ring.prep(Op.POLL_ADD, this.#udp.fd, 0, 0, 0, POLLIN, Tag.SOCK_POLL) || this.#full();
      return;
    }
    const v = this.#recvHdrView;
    const h = this.#batchH32!;
    // Source address and cmsgs go straight into the bind's slot 0 (parsed from there).
    v.setUint32(0, h[0], true);
    v.setUint32(4, h[1], true);
    v.setUint32(8, 28, true); // msg_namelen: sockaddr_in6
    v.setUint32(32, h[8], true);
    v.setUint32(36, h[9], true);
    v.setUint32(40, this.#ctrlLen, true);
    v.setUint32(44, 0, true);
    v.setUint32(48, 0, true);
    this.#sockArmed = ring.prep(Op.RECVMSG, this.#udp.fd, this.#recvHdrAddr, 1, 0, 0, Tag.SOCK) ||
      this.#full();
  }

  #ctrlLen = 64;

  #reap(): void {
    const ring = this.ring;
    while (ring.peek()) {
      const d = ring.cqeData, res = ring.cqeRes;
      ring.advance();
      const tag = d & 0xff, slot = (d >>> 8) & 0xff;
      switch (tag) {
        case Tag.TUN:
          this.#tunArmed = false;
          if (res === -ECANCELED) break;
          if (this.#tunPolled) this.#tunReady = res > 0;
          else if (res > 0) {
            this.#tunReady = true;
            this.#tunRes = res;
          } else if (res !== -Errno.EAGAIN) this.drops.uring_tun_read_error++;
          break;
        case Tag.SOCK:
          this.#sockArmed = false;
          if (res === -ECANCELED) break;
          if (res >= 0) {
            this.#sockReady = true;
            this.#sockRes = res;
          } else if (res !== -Errno.EAGAIN) this.drops.uring_recv_error++;
          break;
        case Tag.SOCK_POLL:
          this.#sockArmed = false;
          if (res > 0) {
            this.#sockReady = true;
            this.#sockPolled = true;
          }
          break;
        case Tag.WAKE:
          this.#wakeArmed = false;
          if (res !== -ECANCELED) this.#woken = true;
          break;
        case Tag.SEND:
          this.#sendBusy &= ~(1 << slot);
          if (res < 0) this.drops.uring_send_error++;
          break;
        case Tag.WRITE:
          this.#writeBusy &= ~(1 << slot);
          if (res < 0) this.drops.uring_tun_write_error++;
          break;
      }
    }
  }

  /** Sends and writes queued on the ring reach the kernel now (before a direct call on the same fd). */
  #submitQueued(): void {
    if (this.#unsubmitted === 0) return;
    this.#unsubmitted = 0;
    this.ring.enter(this.ring.queued, 0);
    this.#reap();
  }

  /** A free slot of `busy` (−1: none; reaps completions first when all are taken). */
  #slot(busy: number): number {
    for (let s = 0; s < SEND_SLOTS; s++) if ((busy & (1 << s)) === 0) return s;
    return -1;
  }

  // ---- the TUN side ----

  #tunSide(): TunFd {
    const dev = this.#dev;
    return {
      fd: dev.fd,
      read: (buf: Uint8Array): number => {
        if (this.#tunReady && !this.#tunPolled) return this.#takeTun(buf, undefined, 0);
        this.#tunReady = false;
        if (this.#tunArmed) return -Errno.EAGAIN; // the armed read gets the next packet
        const n = dev.read(buf);
        if (n > 0) this.#tunReads++;
        if (n > BULK_BYTES) this.#bigRead = true;
        return n;
      },
      readv: (iov: Uint8Array, count: number): number => {
        if (this.#tunReady && !this.#tunPolled) return this.#takeTun(undefined, iov, count);
        this.#tunReady = false;
        if (this.#tunArmed) return -Errno.EAGAIN;
        const n = dev.readv(iov, count);
        if (n > 0) this.#tunReads++;
        if (n > BULK_BYTES) this.#bigRead = true;
        return n;
      },
      write: (buf: Uint8Array, len: number): number => {
        // Queued only for request/response traffic: under a flood from the tunnel the writes go
        // directly, as with epoll (the queue would only add copies and submits).
        if (!this.#sockBulk && len <= DEFER_WRITE_BYTES && len > 0 && len <= buf.length && !this.#closed) {
          const s = this.#slot(this.#writeBusy);
          if (s >= 0 && this.ring.space > 0) {
            this.#writeData.set(buf.subarray(0, len), s * DEFER_WRITE_BYTES);
            this.ring.prep(
              Op.WRITE,
              dev.fd,
              this.#writeDataAddr + s * DEFER_WRITE_BYTES,
              len,
              -1,
              0,
              userData(Tag.WRITE, s),
            );
            this.#writeBusy |= 1 << s;
            this.#unsubmitted++;
            this.deferredWrites++;
            return len;
          }
        }
        this.#submitQueued();
        return dev.write(buf, len);
      },
      writev: (iov: Uint8Array, count: number): number => {
        this.#submitQueued();
        return dev.writev(iov, count);
      },
    };
  }

  /** The completed TUN read into `buf`, or scattered over `iov` (addresses inside one arena: see below). */
  #takeTun(buf: Uint8Array | undefined, iov: Uint8Array | undefined, count: number): number {
    this.#tunReady = false;
    const n = this.#tunRes;
    if (n > BULK_BYTES) this.#bigRead = true;
    this.#tunReads++;
    const src = this.#tunBuf;
    if (buf !== undefined) {
      if (n > buf.length) {
        this.drops.uring_tun_read_error++;
        return -Errno.EINVAL;
      }
      buf.set(src.subarray(0, n));
      return n;
    }
    // Scatter reads point into the bind's send arena (its TUN read slot and JUMBO layout).
    const arena = this.#scatterArena;
    if (arena === undefined) return -Errno.EINVAL;
    let v = this.#iovViews.get(iov!);
    if (v === undefined) {
      v = new DataView(iov!.buffer, iov!.byteOffset, iov!.byteLength);
      this.#iovViews.set(iov!, v); // the bind's scatter iovecs: one fixed array per send slot
    }
    if (count * 16 > v.byteLength) return -Errno.EINVAL;
    let done = 0;
    for (let k = 0; k < count && done < n; k++) {
      const at = v.getUint32(k * 16, true) + v.getUint32(k * 16 + 4, true) * 4294967296 - this.#scatterAddr;
      const len = Math.min(v.getUint32(k * 16 + 8, true), n - done);
      if (at < 0 || at + len > arena.length) {
        this.drops.uring_tun_read_error++;
        return -Errno.EINVAL;
      }
      arena.set(src.subarray(done, done + len), at);
      done += len;
    }
    return done;
  }

  readonly #iovViews = new Map<Uint8Array, DataView>();
  #scatterArena: Uint8Array | undefined;
  #scatterAddr = 0;

  /** The arena the TUN's scatter reads point into (the bind's send arena), for completed reads. */
  setScatterArena(arena: Uint8Array): void {
    this.#scatterArena = arena;
    this.#scatterAddr = bufferAddress(arena);
  }

  // ---- the socket side ----

  #sockSide(): DatagramSocket {
    const udp = this.#udp;
    return {
      fd: udp.fd,
      get gso() {
        return udp.gso;
      },
      sendBatch: (batch: SendBatch, n: number): number => this.#send(batch, n),
      recvBatch: (batch: RecvBatch, timeoutMs?: number): number => this.#recv(batch, timeoutMs),
      waitWritable: (timeoutMs: number): number => {
        this.#submitQueued();
        return udp.waitWritable(timeoutMs);
      },
      setDontFragment: (df: boolean): number => {
        this.#submitQueued(); // queued datagrams go with the mode they were queued under
        return udp.setDontFragment(df);
      },
    };
  }

  #send(b: SendBatch, n: number): number {
    if (n <= 0) return 0;
    let free = 0;
    for (let s = 0; s < SEND_SLOTS; s++) if ((this.#sendBusy & (1 << s)) === 0) free++;
    // Queued only when the TUN side is not in bulk mode (as for the TUN writes above).
    let small = !this.#tunBulk && n <= free && n < this.ring.space && !this.#closed;
    for (let i = 0; small && i < n; i++) {
      if (b.sizes[i] > DEFER_BYTES || b.sizes[i] <= 0) small = false;
      else if (b.isGso(i) && !this.#udp.gso) small = false;
    }
    if (!small) {
      this.#submitQueued();
      return this.#udp.sendBatch(b, n);
    }
    const m = this.#sendMetaView;
    for (let i = 0; i < n; i++) {
      const s = this.#slot(this.#sendBusy);
      const o = s * 128;
      b.entryBytes(i, this.#sendData.subarray(s * DEFER_BYTES, (s + 1) * DEFER_BYTES));
      m.setUint32(o + MSGHDR + 8, b.sizes[i], true); // iov_len
      m.setUint32(o + 8, putSockaddr(m, o + 72, b, i, this.#udp.family), true);
      if (b.isGso(i)) {
        m.setUint16(o + 120, b.segSizes[i], true);
        putPtr(m, o + 32, this.#sendMetaAddr + o + 104);
        m.setUint32(o + 40, 24, true);
      } else {
        putPtr(m, o + 32, 0);
        m.setUint32(o + 40, 0, true);
      }
      m.setUint32(o + 44, 0, true);
      m.setUint32(o + 48, 0, true);
      this.ring.prep(Op.SENDMSG, this.#udp.fd, this.#sendMetaAddr + o, 1, 0, 0, userData(Tag.SEND, s));
      this.#sendBusy |= 1 << s;
      this.#unsubmitted++;
      this.deferredSends++;
    }
    return n;
  }

  #recv(batch: RecvBatch, timeoutMs: number | undefined): number {
    if (this.#batch !== batch) this.#learn(batch);
    // Sends queued by the TUN drain before this receive (TCP ACKs under load) go now, not after it.
    this.#submitQueued();
    if (this.#sockReady && !this.#sockPolled) {
      this.#sockReady = false;
      const res = this.#sockRes;
      batch.reset();
      batch.bufs[0].set(this.#recvBuf.subarray(0, res));
      const v = this.#recvHdrView;
      const h = this.#batchH32!;
      h[2] = v.getUint32(8, true); // msg_namelen
      h[10] = v.getUint32(40, true); // msg_controllen
      h[11] = 0;
      h[12] = v.getUint32(48, true); // msg_flags
      h[14] = res; // msg_len
      let n = 1;
      // Bulk traffic: the rest of the socket's queue with one direct recvmmsg (no armed receive now).
      if ((res > BULK_BYTES || h[10] > 0) && batch.slots > 1) {
        const r = libc.recvmmsg(this.#udp.fd, this.#batchRest!, batch.slots - 1, MSG_DONTWAIT, null);
        if (r > 0) n += r;
        this.#sockBulk = true;
      }
      batch.parse(n);
      return n;
    }
    if (this.#sockReady) this.#sockReady = this.#sockPolled = false; // readiness: receive directly
    else if (this.#sockArmed) return 0; // the armed receive gets the next datagram
    const c = this.#udp.recvBatch(batch, timeoutMs);
    // Back to armed receives when a drain finds single small datagrams (request/response).
    if (c === 1) this.#sockBulk = batch.sizes[0] > BULK_BYTES || batch.gsoSizes[0] > 0;
    else if (c > 1) this.#sockBulk = true;
    return c;
  }

  #learn(batch: RecvBatch): void {
    this.#batch = batch;
    this.#batchH32 = new Uint32Array(batch.hdrs.buffer, batch.hdrs.byteOffset, batch.hdrs.length / 4);
    this.#batchRest = batch.hdrs.subarray(64);
    batch.reset();
    this.#ctrlLen = this.#batchH32[10];
  }

  /**
   * Cancels the armed operations, waits (≤ 200 ms) until the kernel is done with every buffer it was
   * handed, then unmaps and closes the ring. The TUN device, socket and eventfd stay open (the
   * Worker's owner closes them). Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const ring = this.ring;
    try {
      // IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_ANY: every request of the ring.
      ring.prep(Op.ASYNC_CANCEL, -1, 0, 0, 0, 1 | 8, Tag.CANCEL);
      const end = performance.now() + 200;
      ring.enter(ring.queued, 0);
      this.#reap();
      while (this.#inFlight() && performance.now() < end) {
        ring.enter(0, 1, 20);
        this.#reap();
      }
    } finally {
      ring.close();
    }
  }

  #inFlight(): boolean {
    return this.#tunArmed || this.#sockArmed || this.#wakeArmed || this.#sendBusy !== 0 ||
      this.#writeBusy !== 0;
  }
}
