/**
 * The UDP tunnel socket: an FFI `socket()` driven with `recvmmsg`/`sendmmsg` over preallocated
 * batches, with UDP GSO (`UDP_SEGMENT` cmsg per datagram) and UDP GRO (`UDP_GRO` sockopt, segment
 * size read back from a cmsg). Shaped like wireguard-go's batch interfaces: the caller fills slots,
 * one call moves the whole batch.
 *
 * ## Struct layouts (LP64: x86_64 and aarch64; checked by `assertLp64`)
 *
 * | struct (size) | field @ byte offset |
 * |---|---|
 * | `mmsghdr` (64) | `msg_hdr` (msghdr) @0, `unsigned msg_len` @56, pad 4 |
 * | `msghdr` (56) | `void *msg_name` @0, `socklen_t msg_namelen` @8 (+4 pad), `iovec *msg_iov` @16, `size_t msg_iovlen` @24, `void *msg_control` @32, `size_t msg_controllen` @40, `int msg_flags` @48 (+4 pad) |
 * | `iovec` (16) | `void *iov_base` @0, `size_t iov_len` @8 |
 * | `sockaddr_in` (16) | `u16 family=2` (host order) @0, `u16 port` (BE) @2, `u32 addr` (BE) @4, zero @8..15 |
 * | `sockaddr_in6` (28) | `u16 family=10` @0, `u16 port` (BE) @2, `u32 flowinfo` @4, `u8 addr[16]` @8, `u32 scope_id` @24 |
 * | `cmsghdr` (16) | `size_t cmsg_len` @0, `int cmsg_level` @8, `int cmsg_type` @12, data @16; `CMSG_LEN(n) = 16 + n`, `CMSG_SPACE(n) = 16 + align8(n)` |
 * | `pollfd` (8) | `int fd` @0, `short events` @4, `short revents` @6 |
 *
 * Control messages used: send `(SOL_UDP=17, UDP_SEGMENT=103, u16 segment size)`, `cmsg_len` 18,
 * space 24; receive `(SOL_UDP, UDP_GRO=104, int gso_size)`, `cmsg_len` 20, space 24.
 *
 * ## Memory rule (deno-notes §3, the observed heap corruption)
 *
 * Every buffer whose address is written into an `mmsghdr`/`iovec`/`cmsghdr` is an `ArrayBuffer` held
 * by the batch object for its whole life; addresses are taken once, at construction. A batch must
 * stay referenced while a call using it runs (it always is: the calls are synchronous). There is no
 * allocation per datagram in {@link UdpSocket.recvBatch} or {@link UdpSocket.sendBatch}.
 *
 * @example
 * ```ts
 * declare function handle(datagram: Uint8Array, size: number, gsoSize: number): void;
 * const sock = openUdp({ port: 50103, gso: true, gro: true, rcvbuf: 8 << 20 });
 * const rb = new RecvBatch(64, 65535);
 * const n = sock.recvBatch(rb, 100); // wait ≤ 100 ms, then return what arrived
 * for (let i = 0; i < n; i++) handle(rb.bufs[i], rb.sizes[i], rb.gsoSizes[i]);
 * ```
 */

import { Errno, errno, libc, SyscallError } from "./libc.ts";
import { assertLp64, setFdNonBlocking } from "./tun.ts";

/** `sizeof(struct mmsghdr)` on LP64. */
export const MMSGHDR_SIZE = 64;
/** `sizeof(struct msghdr)` on LP64. */
export const MSGHDR_SIZE = 56;
/** `sizeof(struct iovec)` on LP64. */
export const IOVEC_SIZE = 16;
/** `sizeof(struct sockaddr_in)`. */
export const SOCKADDR_IN_SIZE = 16;
/** `sizeof(struct sockaddr_in6)`. */
export const SOCKADDR_IN6_SIZE = 28;
/** `sizeof(struct cmsghdr)` on LP64 (data starts here). */
export const CMSGHDR_SIZE = 16;
/**
 * Most segments one UDP_SEGMENT send may carry on every kernel since 4.18 (newer kernels allow 128).
 * Also bounded by the 64 KiB IP packet: 46 × 1400-byte segments is the most for IPv4.
 */
export const UDP_MAX_SEGMENTS = 64;
/** Most pieces of one gather entry ({@link SendBatch.setGather}): a header and a body per segment. */
export const GATHER_MAX_IOV = 2 * UDP_MAX_SEGMENTS;

const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0x800;
const SOCK_CLOEXEC = 0x80000;
const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
const SO_REUSEPORT = 15;
const SO_SNDBUFFORCE = 32;
const SO_RCVBUFFORCE = 33;
const IPPROTO_IPV6 = 41;
const IPV6_V6ONLY = 26;
const SOL_UDP = 17;
// Path-MTU discovery modes (linux/in.h, linux/in6.h): PROBE sets DF and ignores the cached PMTU.
const PMTU_IPPROTO_IP = 0;
const IP_MTU_DISCOVER = 10;
const IPV6_MTU_DISCOVER = 23;
const PMTUDISC_PROBE = 3;
// INTERFACE: no DF, the interface MTU, ICMP "fragmentation needed" ignored: routers may fragment.
const PMTUDISC_INTERFACE = 4;
const UDP_SEGMENT = 103;
const UDP_GRO = 104;
const MSG_DONTWAIT = 0x40;
const MSG_WAITFORONE = 0x10000;
const POLLIN = 0x1;
const POLLOUT = 0x4;
const EIO = 5;
const EBADF = 9;
const EFAULT = 14;
const ENOTSOCK = 88;

/** `msg_flags` bit: the datagram was longer than the slot and got cut. */
export const MSG_TRUNC = 0x20;
/** `msg_flags` bit: control data was cut (the control slot was too small). */
export const MSG_CTRUNC = 0x08;

// Byte offsets inside an mmsghdr, as indices into a Uint32Array (offset / 4).
const W_NAME = 0; // msg_name (pointer, 2 words)
const W_NAMELEN = 2; // msg_namelen
const W_IOV = 4; // msg_iov (pointer)
const W_IOVLEN = 6; // msg_iovlen (size_t)
const W_CONTROL = 8; // msg_control (pointer)
const W_CONTROLLEN = 10; // msg_controllen (size_t)
const W_FLAGS = 12; // msg_flags
const W_LEN = 14; // msg_len
const HDR_WORDS = MMSGHDR_SIZE / 4;

/** Bytes reserved per slot for a sockaddr (sockaddr_in6 rounded up to 8). */
const NAME_STRIDE = 32;
/** Bytes of control buffer per receive slot (one UDP_GRO cmsg needs 24; room for one more). */
const RECV_CTRL = 64;
/** Bytes of control buffer per send slot: CMSG_SPACE(sizeof(u16)) for UDP_SEGMENT. */
const SEND_CTRL = 24;
const TWO32 = 4294967296;

/** Address of an ArrayBuffer's backing store as a number (user-space addresses fit in 53 bits). */
function addressOf(buf: ArrayBuffer): number {
  const p = Deno.UnsafePointer.of(buf);
  if (p === null) throw new UdpError("cannot take the address of an empty buffer");
  return Number(Deno.UnsafePointer.value(p));
}

/** Stores a pointer as two little-endian 32-bit words. */
function putPtr(w: Uint32Array, i: number, addr: number): void {
  w[i] = addr >>> 0;
  w[i + 1] = (addr / TWO32) >>> 0;
}

/** Byte-swaps a 32-bit value (network order ↔ the little-endian word a Uint32Array sees). */
function bswap32(a: number): number {
  return (((a & 0xff) << 24) | ((a & 0xff00) << 8) | ((a >>> 8) & 0xff00) | (a >>> 24)) >>> 0;
}

/** Invalid UDP options or misuse of a batch (the syscalls themselves fail with `SyscallError`). */
export class UdpError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UdpError";
  }
}

/**
 * Preallocated receive slots for {@link UdpSocket.recvBatch}: `slots` buffers of `slotSize` bytes and
 * the `mmsghdr`/`iovec`/`sockaddr`/`cmsg` arenas pointing at them.
 *
 * After a receive of `n`, for each `i < n`: `bufs[i].subarray(0, sizes[i])` is the datagram,
 * `families[i]` is 4 or 6, the source is `addrs4[i]` (IPv4 as a uint32, also for v4-mapped sources
 * on a dual-stack socket) or `addrs6[16*i .. 16*i+16]` (+ `scopes[i]`), port `ports[i]`, and
 * `gsoSizes[i] > 0` means GRO coalesced several datagrams of `gsoSizes[i]` bytes (the last may be
 * shorter) into this slot. With GRO on, use `slotSize` ≥ 65535 or coalesced reads are truncated
 * (`msgFlags[i] & MSG_TRUNC`).
 *
 * @example
 * ```ts
 * declare const sock: UdpSocket;
 * const rb = new RecvBatch(64, 2048);
 * const n = sock.recvBatch(rb);
 * for (let i = 0; i < n; i++) console.log(formatIPv4(rb.addrs4[i]), rb.ports[i], rb.sizes[i]);
 * ```
 */
export class RecvBatch {
  /** Number of slots. */
  readonly slots: number;
  /** Bytes per slot buffer. */
  readonly slotSize: number;
  /**
   * The data arena (`slots × slotSize`, then `spareBytes` the caller may use, e.g. to copy received
   * bytes with `copyWithin`); `bufs[i]` are views into it.
   */
  readonly data: Uint8Array<ArrayBuffer>;
  /** Per-slot views of `slotSize` bytes. */
  readonly bufs: Uint8Array<ArrayBuffer>[];
  /** Offset in `data` of the spare bytes (`slots × slotSize`). */
  readonly spareOffset: number;
  /** Bytes received per slot. */
  readonly sizes: Int32Array<ArrayBuffer>;
  /** `msg_flags` per slot (`MSG_TRUNC`, `MSG_CTRUNC`). */
  readonly msgFlags: Int32Array<ArrayBuffer>;
  /** Source address family per slot: 4 or 6 (v4-mapped IPv6 sources are reported as 4). */
  readonly families: Uint8Array<ArrayBuffer>;
  /** IPv4 source per slot as a uint32 (a.b.c.d = a<<24 | b<<16 | c<<8 | d). */
  readonly addrs4: Uint32Array<ArrayBuffer>;
  /** IPv6 source bytes, 16 per slot. */
  readonly addrs6: Uint8Array<ArrayBuffer>;
  /** IPv6 scope id per slot (link-local sources). */
  readonly scopes: Uint32Array<ArrayBuffer>;
  /** Source port per slot. */
  readonly ports: Uint16Array<ArrayBuffer>;
  /** GRO segment size per slot, 0 when the slot holds one plain datagram. */
  readonly gsoSizes: Int32Array<ArrayBuffer>;

  /** Kernel-facing arenas (kept referenced for the object's life; never replace them). */
  readonly hdrs: Uint8Array<ArrayBuffer>;
  private readonly h32: Uint32Array<ArrayBuffer>;
  private readonly n32: Uint32Array<ArrayBuffer>;
  private readonly c32: Int32Array<ArrayBuffer>;
  private readonly a6w: Uint32Array<ArrayBuffer>;
  private readonly keep: ArrayBuffer[];

  constructor(slots: number, slotSize: number, spareBytes = 0) {
    assertLp64();
    if (!Number.isInteger(slots) || slots < 1 || slots > 1024) {
      throw new UdpError("RecvBatch slots must be 1..1024");
    }
    if (!Number.isInteger(slotSize) || slotSize < 1 || slotSize > 1 << 20) {
      throw new UdpError("RecvBatch slotSize must be 1..1048576");
    }
    if (!Number.isInteger(spareBytes) || spareBytes < 0 || spareBytes > 1 << 26) {
      throw new UdpError("RecvBatch spareBytes must be 0..67108864");
    }
    this.slots = slots;
    this.slotSize = slotSize;
    this.spareOffset = slots * slotSize;
    const dataAb = new ArrayBuffer(slots * slotSize + spareBytes);
    const hdrAb = new ArrayBuffer(slots * MMSGHDR_SIZE);
    const iovAb = new ArrayBuffer(slots * IOVEC_SIZE);
    const nameAb = new ArrayBuffer(slots * NAME_STRIDE);
    const ctrlAb = new ArrayBuffer(slots * RECV_CTRL);
    this.keep = [dataAb, hdrAb, iovAb, nameAb, ctrlAb];
    this.data = new Uint8Array(dataAb);
    this.bufs = [];
    for (let i = 0; i < slots; i++) this.bufs.push(new Uint8Array(dataAb, i * slotSize, slotSize));
    this.sizes = new Int32Array(slots);
    this.msgFlags = new Int32Array(slots);
    this.families = new Uint8Array(slots);
    this.addrs4 = new Uint32Array(slots);
    this.addrs6 = new Uint8Array(new ArrayBuffer(slots * 16));
    this.a6w = new Uint32Array(this.addrs6.buffer);
    this.scopes = new Uint32Array(slots);
    this.ports = new Uint16Array(slots);
    this.gsoSizes = new Int32Array(slots);
    this.hdrs = new Uint8Array(hdrAb);
    this.h32 = new Uint32Array(hdrAb);
    this.n32 = new Uint32Array(nameAb);
    this.c32 = new Int32Array(ctrlAb);

    const dataAddr = addressOf(dataAb);
    const iovAddr = addressOf(iovAb);
    const nameAddr = addressOf(nameAb);
    const ctrlAddr = addressOf(ctrlAb);
    const iov32 = new Uint32Array(iovAb);
    for (let i = 0; i < slots; i++) {
      putPtr(iov32, i * 4, dataAddr + i * slotSize);
      iov32[i * 4 + 2] = slotSize;
      const h = i * HDR_WORDS;
      putPtr(this.h32, h + W_NAME, nameAddr + i * NAME_STRIDE);
      putPtr(this.h32, h + W_IOV, iovAddr + i * IOVEC_SIZE);
      this.h32[h + W_IOVLEN] = 1;
      putPtr(this.h32, h + W_CONTROL, ctrlAddr + i * RECV_CTRL);
    }
    this.reset();
  }

  /** Restores the in/out fields (`msg_namelen`, `msg_controllen`) the kernel overwrote. */
  reset(): void {
    const h32 = this.h32;
    for (let i = 0; i < this.slots; i++) {
      const h = i * HDR_WORDS;
      h32[h + W_NAMELEN] = SOCKADDR_IN6_SIZE;
      h32[h + W_CONTROLLEN] = RECV_CTRL;
      h32[h + W_CONTROLLEN + 1] = 0;
    }
  }

  /** Decodes the first `n` slots after the kernel filled them. */
  parse(n: number): void {
    const h32 = this.h32, n32 = this.n32, c32 = this.c32, a6w = this.a6w;
    for (let i = 0; i < n; i++) {
      const h = i * HDR_WORDS;
      this.sizes[i] = h32[h + W_LEN];
      this.msgFlags[i] = h32[h + W_FLAGS] | 0;
      // Source address.
      const w = i * (NAME_STRIDE / 4);
      const first = n32[w];
      this.ports[i] = (((first >>> 16) & 0xff) << 8) | (first >>> 24);
      if ((first & 0xffff) === AF_INET) {
        this.families[i] = 4;
        this.addrs4[i] = bswap32(n32[w + 1]);
      } else if (n32[w + 2] === 0 && n32[w + 3] === 0 && n32[w + 4] === 0xffff0000) {
        this.families[i] = 4; // ::ffff:a.b.c.d on a dual-stack socket
        this.addrs4[i] = bswap32(n32[w + 5]);
      } else {
        this.families[i] = 6;
        this.addrs4[i] = 0;
        const a = i * 4;
        a6w[a] = n32[w + 2];
        a6w[a + 1] = n32[w + 3];
        a6w[a + 2] = n32[w + 4];
        a6w[a + 3] = n32[w + 5];
        this.scopes[i] = n32[w + 6];
      }
      // Control messages: look for (SOL_UDP, UDP_GRO, int gso_size).
      let gso = 0;
      const clen = h32[h + W_CONTROLLEN];
      if (clen >= CMSGHDR_SIZE + 4) {
        const base = i * (RECV_CTRL / 4);
        let off = 0;
        while (off + CMSGHDR_SIZE <= clen) {
          const c = base + (off >>> 2);
          const len = c32[c];
          if (len < CMSGHDR_SIZE) break;
          if (c32[c + 2] === SOL_UDP && c32[c + 3] === UDP_GRO && len >= CMSGHDR_SIZE + 4) gso = c32[c + 4];
          off += (len + 7) & ~7;
        }
      }
      this.gsoSizes[i] = gso;
    }
  }

  /** Number of arenas held for the kernel (for tests of the memory rule). */
  get arenaCount(): number {
    return this.keep.length;
  }
}

/**
 * Preallocated send slots for {@link UdpSocket.sendBatch}. For each slot `i` to send, write the
 * datagram into `bufs[i]` starting at `offsets[i]` (default 0), set `sizes[i]`, the destination with
 * {@link SendBatch.setDst4} / {@link SendBatch.setDst6} / {@link SendBatch.replyTo}, and optionally
 * `segSizes[i]` (> 0: the buffer holds consecutive segments of that size, last one may be shorter,
 * sent with one UDP_SEGMENT GSO send; at most {@link UDP_MAX_SEGMENTS} segments).
 *
 * Per-datagram errors (EMSGSIZE, ENETUNREACH, EPERM from netfilter, …) drop that datagram and are
 * counted in `dropped` / `lastErrno`; the rest of the batch still goes out.
 *
 * @example
 * ```ts
 * declare const sock: UdpSocket;
 * declare const payload: Uint8Array;
 * const sb = new SendBatch(64, 65535);
 * sb.bufs[0].set(payload); sb.sizes[0] = payload.length; sb.setDst4(0, parseIPv4("10.0.0.2"), 50103);
 * sock.sendBatch(sb, 1);
 * ```
 */
export class SendBatch {
  /** Number of slots. */
  readonly slots: number;
  /** Bytes per slot buffer. */
  readonly slotSize: number;
  /** The data arena (`slots × slotSize`); `bufs[i]` are views into it. */
  readonly data: Uint8Array<ArrayBuffer>;
  /** Per-slot views of `slotSize` bytes. */
  readonly bufs: Uint8Array<ArrayBuffer>[];
  /** Start of the datagram inside `bufs[i]` (headroom, wireguard-go's `offset`). */
  readonly offsets: Int32Array<ArrayBuffer>;
  /** Datagram length (all segments together when `segSizes[i] > 0`). */
  readonly sizes: Int32Array<ArrayBuffer>;
  /** GSO segment size, 0 for a plain datagram. */
  readonly segSizes: Uint16Array<ArrayBuffer>;
  /** Destination family per slot (4 or 6; 0 = unset). */
  readonly dstFamilies: Uint8Array<ArrayBuffer>;
  /** IPv4 destination per slot as a uint32. */
  readonly dst4: Uint32Array<ArrayBuffer>;
  /** IPv6 destination bytes, 16 per slot. */
  readonly dst6: Uint8Array<ArrayBuffer>;
  /** IPv6 destination scope id per slot. */
  readonly dstScopes: Uint32Array<ArrayBuffer>;
  /** Destination port per slot. */
  readonly dstPorts: Uint16Array<ArrayBuffer>;
  /** Datagrams dropped because of a per-datagram send error (cumulative). */
  dropped = 0;
  /** errno of the latest dropped datagram (0 if none). */
  lastErrno = 0;
  /** Entries that had to be split in userspace because GSO was refused (EIO) or is off (cumulative). */
  splitSends = 0;

  /** Kernel-facing arenas (kept referenced for the object's life; never replace them). */
  readonly hdrs: Uint8Array<ArrayBuffer>;
  private readonly h32: Uint32Array<ArrayBuffer>;
  private readonly iov32: Uint32Array<ArrayBuffer>;
  private readonly n32: Uint32Array<ArrayBuffer>;
  private readonly ctrl16: Uint16Array<ArrayBuffer>;
  private readonly d6w: Uint32Array<ArrayBuffer>;
  private readonly dataAddr: number;
  private readonly ctrlAddr: number;
  private readonly iovAddr: number;
  private readonly keep: ArrayBuffer[];
  /**
   * Gather entries (see {@link setGather}): per slot, the number of iovecs (0: the slot's own bytes)
   * and, built on first use, {@link GATHER_MAX_IOV} iovecs per slot.
   */
  readonly gathers: Int32Array<ArrayBuffer>;
  private gatherIov?: Uint32Array<ArrayBuffer>;
  private gatherAddr = 0;
  /** The pieces as JS sees them (arena, offset, length), for {@link entryBytes}. */
  private gatherFrom: (SendBatch | undefined)[] = [];
  private gatherAt?: Int32Array<ArrayBuffer>;
  /** Lazily built arena for sending GSO entries segment by segment. */
  private split?: {
    hdrs: Uint8Array<ArrayBuffer>;
    h32: Uint32Array<ArrayBuffer>;
    iov32: Uint32Array<ArrayBuffer>;
    iovAddr: number;
  };

  constructor(slots: number, slotSize: number) {
    assertLp64();
    if (!Number.isInteger(slots) || slots < 1 || slots > 1024) {
      throw new UdpError("SendBatch slots must be 1..1024");
    }
    if (!Number.isInteger(slotSize) || slotSize < 1 || slotSize > 1 << 20) {
      throw new UdpError("SendBatch slotSize must be 1..1048576");
    }
    this.slots = slots;
    this.slotSize = slotSize;
    const dataAb = new ArrayBuffer(slots * slotSize);
    const hdrAb = new ArrayBuffer(slots * MMSGHDR_SIZE);
    const iovAb = new ArrayBuffer(slots * IOVEC_SIZE);
    const nameAb = new ArrayBuffer(slots * NAME_STRIDE);
    const ctrlAb = new ArrayBuffer(slots * SEND_CTRL);
    this.keep = [dataAb, hdrAb, iovAb, nameAb, ctrlAb];
    this.data = new Uint8Array(dataAb);
    this.bufs = [];
    for (let i = 0; i < slots; i++) this.bufs.push(new Uint8Array(dataAb, i * slotSize, slotSize));
    this.offsets = new Int32Array(slots);
    this.sizes = new Int32Array(slots);
    this.segSizes = new Uint16Array(slots);
    this.dstFamilies = new Uint8Array(slots);
    this.dst4 = new Uint32Array(slots);
    this.dst6 = new Uint8Array(new ArrayBuffer(slots * 16));
    this.d6w = new Uint32Array(this.dst6.buffer);
    this.dstScopes = new Uint32Array(slots);
    this.dstPorts = new Uint16Array(slots);
    this.gathers = new Int32Array(slots);
    this.hdrs = new Uint8Array(hdrAb);
    this.h32 = new Uint32Array(hdrAb);
    this.iov32 = new Uint32Array(iovAb);
    this.n32 = new Uint32Array(nameAb);
    this.ctrl16 = new Uint16Array(ctrlAb);

    this.dataAddr = addressOf(dataAb);
    this.ctrlAddr = addressOf(ctrlAb);
    const iovAddr = this.iovAddr = addressOf(iovAb);
    const nameAddr = addressOf(nameAb);
    const c32 = new Uint32Array(ctrlAb);
    for (let i = 0; i < slots; i++) {
      const h = i * HDR_WORDS;
      putPtr(this.h32, h + W_NAME, nameAddr + i * NAME_STRIDE);
      putPtr(this.h32, h + W_IOV, iovAddr + i * IOVEC_SIZE);
      this.h32[h + W_IOVLEN] = 1;
      // Pre-built cmsg: cmsg_len = CMSG_LEN(2) = 18, SOL_UDP, UDP_SEGMENT; the u16 follows at +16.
      const c = i * (SEND_CTRL / 4);
      c32[c] = CMSGHDR_SIZE + 2;
      c32[c + 2] = SOL_UDP;
      c32[c + 3] = UDP_SEGMENT;
    }
  }

  /**
   * Makes entry `i` a gather entry: its datagram(s) are the concatenation of `count` pieces set with
   * {@link setGatherPiece} instead of the slot's bytes (`offsets[i]` is ignored; `sizes[i]` must be
   * the pieces' total). With GSO, every segment must be exactly pieces `2k` and `2k+1` (a header and
   * a body), so a split send (GSO off or refused) sends each segment from its two pieces. A count of
   * 0 makes it a plain entry again.
   */
  setGather(i: number, count: number): void {
    if (!Number.isInteger(count) || count < 0 || count > GATHER_MAX_IOV) {
      throw new UdpError(`gather of ${count} pieces (at most ${GATHER_MAX_IOV})`);
    }
    if (count > 0 && this.gatherIov === undefined) {
      const ab = new ArrayBuffer(this.slots * GATHER_MAX_IOV * IOVEC_SIZE);
      this.keep.push(ab);
      this.gatherIov = new Uint32Array(ab);
      this.gatherAddr = addressOf(ab);
      this.gatherFrom = new Array<SendBatch | undefined>(this.slots * GATHER_MAX_IOV).fill(undefined);
      this.gatherAt = new Int32Array(this.slots * GATHER_MAX_IOV * 2);
    }
    this.gathers[i] = count;
  }

  /**
   * Piece `k` of gather entry `i`: `len` bytes at offset `at` of `from`'s data arena (`from` may be
   * another batch: its arena must stay unchanged until the entry is sent).
   */
  setGatherPiece(i: number, k: number, from: SendBatch, at: number, len: number): void {
    const iov = this.gatherIov;
    if (
      iov === undefined || k < 0 || k >= GATHER_MAX_IOV || at < 0 || len < 0 || at + len > from.data.length
    ) {
      throw new UdpError(
        `gather piece ${k} of entry ${i}: [${at}, +${len}) outside the arena or no gather set`,
      );
    }
    const p = i * GATHER_MAX_IOV + k;
    const v = p * 4;
    putPtr(iov, v, from.dataAddr + at);
    iov[v + 2] = len;
    iov[v + 3] = 0;
    this.gatherFrom[p] = from;
    this.gatherAt![2 * p] = at;
    this.gatherAt![2 * p + 1] = len;
  }

  /**
   * A copy of the bytes entry `i` sends (its slot's, or its gather pieces'), for in-memory sockets
   * and benchmarks; into `into` (from its start) when given.
   */
  entryBytes(i: number, into?: Uint8Array): Uint8Array {
    const g = this.gathers[i];
    if (g === 0) {
      const o = i * this.slotSize + this.offsets[i];
      if (into === undefined) return this.data.slice(o, o + this.sizes[i]);
      into.set(this.data.subarray(o, o + this.sizes[i]));
      return into;
    }
    const out = into ?? new Uint8Array(this.sizes[i]);
    let d = 0;
    for (let k = 0; k < g; k++) {
      const p = i * GATHER_MAX_IOV + k;
      const at = this.gatherAt![2 * p], len = this.gatherAt![2 * p + 1];
      out.set(this.gatherFrom[p]!.data.subarray(at, at + len), d);
      d += len;
    }
    return out;
  }

  /** Copies entry `i`'s gather pieces to entry `j` (moving entries after a partial send). */
  moveGather(i: number, j: number): void {
    const n = this.gathers[i];
    this.gathers[j] = n;
    if (n > 0) {
      const a = i * GATHER_MAX_IOV, b = j * GATHER_MAX_IOV;
      for (let k = 0; k < n; k++) this.gatherFrom[b + k] = this.gatherFrom[a + k];
      this.gatherAt!.copyWithin(2 * b, 2 * a, 2 * (a + n));
      this.gatherIov!.copyWithin(
        j * GATHER_MAX_IOV * 4,
        i * GATHER_MAX_IOV * 4,
        (i * GATHER_MAX_IOV + n) * 4,
      );
    }
  }

  /** Sets slot `i`'s destination to an IPv4 address (uint32) and port. */
  setDst4(i: number, addr: number, port: number): void {
    this.dstFamilies[i] = 4;
    this.dst4[i] = addr;
    this.dstPorts[i] = port;
  }

  /** Sets slot `i`'s destination to the 16 IPv6 bytes at `addr[off..off+16]`, a port and a scope id. */
  setDst6(i: number, addr: Uint8Array, off: number, port: number, scope = 0): void {
    this.dstFamilies[i] = 6;
    const d = i * 16;
    for (let k = 0; k < 16; k++) this.dst6[d + k] = addr[off + k];
    this.dstScopes[i] = scope;
    this.dstPorts[i] = port;
  }

  /** Sets slot `i`'s destination to the source of slot `j` of a receive batch. */
  replyTo(i: number, rb: RecvBatch, j: number): void {
    if (rb.families[j] === 4) {
      this.setDst4(i, rb.addrs4[j], rb.ports[j]);
    } else {
      this.setDst6(i, rb.addrs6, j * 16, rb.ports[j], rb.scopes[j]);
    }
  }

  /**
   * Writes the kernel structs for entries `0..n-1`. Returns true when some entry needs a userspace
   * split (GSO requested while the socket's `gso` is off).
   */
  encode(n: number, sockFamily: 4 | 6, gso: boolean): boolean {
    const h32 = this.h32, iov32 = this.iov32, n32 = this.n32, d6w = this.d6w;
    const slotSize = this.slotSize;
    let needSplit = false;
    for (let i = 0; i < n; i++) {
      const size = this.sizes[i], off = this.offsets[i];
      const fam = this.dstFamilies[i];
      if (fam !== 4 && fam !== 6) throw new UdpError(`SendBatch slot ${i}: destination not set`);
      const h = i * HDR_WORDS;
      const g = this.gathers[i];
      if (g > 0) {
        putPtr(h32, h + W_IOV, this.gatherAddr + i * GATHER_MAX_IOV * IOVEC_SIZE);
        h32[h + W_IOVLEN] = g;
      } else {
        if (size < 0 || off < 0 || off + size > slotSize) {
          throw new UdpError(`SendBatch slot ${i}: offset ${off} + size ${size} outside 0..${slotSize}`);
        }
        const v = i * 4;
        putPtr(iov32, v, this.dataAddr + i * slotSize + off);
        iov32[v + 2] = size;
        iov32[v + 3] = 0;
        putPtr(h32, h + W_IOV, this.iovAddr + i * IOVEC_SIZE);
        h32[h + W_IOVLEN] = 1;
      }

      const w = i * (NAME_STRIDE / 4);
      const port = this.dstPorts[i];
      const portWord = ((port >>> 8) << 16) | ((port & 0xff) << 24);
      if (sockFamily === 4 && fam === 4) {
        n32[w] = AF_INET | portWord;
        n32[w + 1] = bswap32(this.dst4[i]);
        n32[w + 2] = 0;
        n32[w + 3] = 0;
        h32[h + W_NAMELEN] = SOCKADDR_IN_SIZE;
      } else {
        // sockaddr_in6; an IPv4 destination on an IPv6 socket becomes ::ffff:a.b.c.d. (IPv6 on an
        // IPv4 socket is encoded too, and the kernel refuses it with EAFNOSUPPORT → dropped.)
        n32[w] = AF_INET6 | portWord;
        n32[w + 1] = 0;
        if (fam === 4) {
          n32[w + 2] = 0;
          n32[w + 3] = 0;
          n32[w + 4] = 0xffff0000;
          n32[w + 5] = bswap32(this.dst4[i]);
          n32[w + 6] = 0;
        } else {
          const d = i * 4;
          n32[w + 2] = d6w[d];
          n32[w + 3] = d6w[d + 1];
          n32[w + 4] = d6w[d + 2];
          n32[w + 5] = d6w[d + 3];
          n32[w + 6] = this.dstScopes[i];
        }
        h32[h + W_NAMELEN] = SOCKADDR_IN6_SIZE;
      }

      const seg = this.segSizes[i];
      if (seg > 0 && size > seg && gso) {
        this.ctrl16[i * (SEND_CTRL / 2) + 8] = seg;
        putPtr(h32, h + W_CONTROL, this.ctrlAddr + i * SEND_CTRL);
        h32[h + W_CONTROLLEN] = SEND_CTRL;
      } else {
        if (seg > 0 && size > seg) needSplit = true;
        h32[h + W_CONTROL] = 0;
        h32[h + W_CONTROL + 1] = 0;
        h32[h + W_CONTROLLEN] = 0;
      }
      h32[h + W_CONTROLLEN + 1] = 0;
      h32[h + W_FLAGS] = 0;
    }
    return needSplit;
  }

  /** True when entry `i` is a GSO entry (several segments). */
  isGso(i: number): boolean {
    const seg = this.segSizes[i];
    return seg > 0 && this.sizes[i] > seg;
  }

  /**
   * Builds plain `mmsghdr`s for the segments of entry `i` (already encoded) in the split arena,
   * starting at segment `first`; returns how many were built (≤ {@link UDP_MAX_SEGMENTS}).
   */
  buildSplit(i: number, first: number): number {
    if (this.split === undefined) {
      const hAb = new ArrayBuffer(UDP_MAX_SEGMENTS * MMSGHDR_SIZE);
      const vAb = new ArrayBuffer(UDP_MAX_SEGMENTS * IOVEC_SIZE);
      this.keep.push(hAb, vAb);
      const vAddr = addressOf(vAb);
      const split = {
        hdrs: new Uint8Array(hAb),
        h32: new Uint32Array(hAb),
        iov32: new Uint32Array(vAb),
        iovAddr: vAddr,
      };
      for (let k = 0; k < UDP_MAX_SEGMENTS; k++) {
        putPtr(split.h32, k * HDR_WORDS + W_IOV, vAddr + k * IOVEC_SIZE);
        split.h32[k * HDR_WORDS + W_IOVLEN] = 1;
      }
      this.split = split;
    }
    const sp = this.split;
    const seg = this.segSizes[i], size = this.sizes[i];
    const h = i * HDR_WORDS;
    const base = this.dataAddr + i * this.slotSize + this.offsets[i];
    const g = this.gathers[i];
    let k = 0;
    for (let pos = first * seg; pos < size && k < UDP_MAX_SEGMENTS; pos += seg, k++) {
      const sh = k * HDR_WORDS;
      sp.h32[sh + W_NAME] = this.h32[h + W_NAME];
      sp.h32[sh + W_NAME + 1] = this.h32[h + W_NAME + 1];
      sp.h32[sh + W_NAMELEN] = this.h32[h + W_NAMELEN];
      if (g > 0) {
        // Segment s of a gather entry is its pieces 2s and 2s+1 (see setGather).
        const s2 = 2 * (first + k);
        putPtr(sp.h32, sh + W_IOV, this.gatherAddr + (i * GATHER_MAX_IOV + s2) * IOVEC_SIZE);
        sp.h32[sh + W_IOVLEN] = Math.min(2, g - s2);
      } else {
        putPtr(sp.h32, sh + W_IOV, sp.iovAddr + k * IOVEC_SIZE);
        sp.h32[sh + W_IOVLEN] = 1;
        putPtr(sp.iov32, k * 4, base + pos);
        sp.iov32[k * 4 + 2] = Math.min(seg, size - pos);
      }
    }
    return k;
  }

  /** The split arena's header bytes (valid after {@link SendBatch.buildSplit}). */
  splitHdrs(): Uint8Array<ArrayBuffer> {
    if (this.split === undefined) throw new UdpError("split arena not built");
    return this.split.hdrs;
  }

  /** Number of arenas held for the kernel (for tests of the memory rule). */
  get arenaCount(): number {
    return this.keep.length;
  }
}

/** What is needed to use an open socket from another thread (plain data; `postMessage`-able). */
export interface UdpInfo {
  /** The file descriptor (process-wide). */
  fd: number;
  /** Address family of the socket. */
  family: 4 | 6;
  /** True while UDP_SEGMENT sends are used for GSO entries. */
  gso: boolean;
  /** True when UDP_GRO is on (reads may be coalesced; see `RecvBatch.gsoSizes`). */
  gro: boolean;
  /** The bound port. */
  localPort: number;
}

/** Options for {@link openUdp}. */
export interface UdpOptions {
  /** Address to bind (default: any address of the family). IPv6 may carry `%ifname` for a scope. */
  bindAddr?: string;
  /** Port to bind; 0 picks an ephemeral port (see `localPort`). */
  port: number;
  /** Address family; default from `bindAddr` (contains ':' → 6), else 4. */
  family?: 4 | 6;
  /** IPv6 only: also receive/send IPv4 as v4-mapped addresses (IPV6_V6ONLY=0). Default false. */
  dualStack?: boolean;
  /** Receive buffer in bytes; SO_RCVBUFFORCE is tried first (root), then SO_RCVBUF (capped by rmem_max). */
  rcvbuf?: number;
  /** Send buffer in bytes; SO_SNDBUFFORCE first, then SO_SNDBUF. */
  sndbuf?: number;
  /** Use UDP_SEGMENT for GSO entries when the kernel supports it. Default true. */
  gso?: boolean;
  /** Turn on UDP_GRO (coalesced reads; use 64 KiB receive slots). Default false. */
  gro?: boolean;
  /** Open with SOCK_NONBLOCK. Default false (blocking, for Worker loops). */
  nonBlocking?: boolean;
  /** Set SO_REUSEPORT before bind (several sockets sharing one port). Default false. */
  reusePort?: boolean;
  /**
   * Send every datagram with don't-fragment and ignore the kernel's path-MTU cache
   * (`IP_PMTUDISC_PROBE` / `IPV6_PMTUDISC_PROBE`): the caller measures the path itself (in-band
   * probes), and a cached PMTU learnt from ICMP never makes GSO sends fail or fragments probes.
   * Default false (the kernel's default, `IP_PMTUDISC_WANT`).
   */
  pmtuProbe?: boolean;
}

/** A UDP socket driven in batches. */
export interface UdpSocket extends UdpInfo {
  /** Receive buffer size the kernel reports (SO_RCVBUF; the kernel doubles the request). */
  readonly rcvbuf: number;
  /** Send buffer size the kernel reports (SO_SNDBUF). */
  readonly sndbuf: number;
  /**
   * Receives up to `batch.slots` datagrams with one `recvmmsg` and decodes sizes, sources and GRO
   * segment sizes into the batch. Without `timeoutMs` a blocking socket waits for the first datagram
   * (MSG_WAITFORONE) then takes what is queued; with `timeoutMs` (≥ 0) it waits at most that long
   * (poll) and returns 0 on timeout, so a Worker loop can check a stop flag. Returns the count, 0 when
   * nothing arrived (timeout, EAGAIN, EINTR), or a negative errno. Never allocates.
   */
  recvBatch(batch: RecvBatch, timeoutMs?: number): number;
  /**
   * Sends entries `0..n-1` of `batch` with `sendmmsg` (GSO entries with a UDP_SEGMENT cmsg, or split
   * in userspace when GSO is off or was refused with EIO). Returns the number of entries consumed
   * (sent, or dropped on a per-datagram error — see `batch.dropped`); less than `n` only when a
   * non-blocking socket would block (entries from the result on are unsent); a negative errno on a
   * fatal error (EBADF, ENOTSOCK, EFAULT). Never allocates except on partial sends.
   */
  sendBatch(batch: SendBatch, n: number): number;
  /** Waits up to `timeoutMs` (-1 forever) for readability: 1 ready, 0 timeout, negative errno. */
  wait(timeoutMs: number): number;
  /** Waits until the socket has send-buffer room (POLLOUT): 1 ready, 0 timeout, -errno. */
  waitWritable(timeoutMs: number): number;
  /** Switches O_NONBLOCK on or off (affects every thread using the fd). */
  setNonBlocking(on: boolean): void;
  /**
   * Switches the path-MTU mode of later sends: `true` = `IP_PMTUDISC_PROBE` (DF set, the kernel's
   * PMTU cache ignored), `false` = `IP_PMTUDISC_INTERFACE` (no DF, so a narrower router fragments;
   * still the interface MTU, so GSO sends never fail on a cached PMTU). Affects every thread using
   * the fd. Returns 0 or a negative errno.
   */
  setDontFragment(df: boolean): number;
  /** Plain data describing this socket, for {@link udpFromInfo} in a Worker. */
  info(): UdpInfo;
  /** Closes the fd (idempotent). */
  close(): void;
}

class Udp implements UdpSocket {
  fd: number;
  readonly family: 4 | 6;
  gso: boolean;
  readonly gro: boolean;
  readonly localPort: number;
  readonly rcvbuf: number;
  readonly sndbuf: number;
  readonly #pollfd: Int32Array<ArrayBuffer>;
  readonly #pollBytes: Uint8Array<ArrayBuffer>;

  constructor(info: UdpInfo, rcvbuf: number, sndbuf: number) {
    this.fd = info.fd;
    this.family = info.family;
    this.gso = info.gso;
    this.gro = info.gro;
    this.localPort = info.localPort;
    this.rcvbuf = rcvbuf;
    this.sndbuf = sndbuf;
    const ab = new ArrayBuffer(8);
    this.#pollfd = new Int32Array(ab);
    this.#pollBytes = new Uint8Array(ab);
    this.#pollfd[0] = info.fd;
  }

  recvBatch(batch: RecvBatch, timeoutMs?: number): number {
    batch.reset();
    const blocking = timeoutMs === undefined || timeoutMs < 0;
    let r = libc.recvmmsg(this.fd, batch.hdrs, batch.slots, blocking ? MSG_WAITFORONE : MSG_DONTWAIT, null);
    if (r < 0) {
      let e = errno();
      if (e === Errno.EAGAIN && !blocking) {
        const p = this.wait(timeoutMs);
        if (p <= 0) return p === -Errno.EINTR ? 0 : p;
        batch.reset();
        r = libc.recvmmsg(this.fd, batch.hdrs, batch.slots, MSG_DONTWAIT, null);
        if (r < 0) e = errno();
      }
      if (r < 0) return e === Errno.EAGAIN || e === Errno.EINTR ? 0 : -e;
    }
    batch.parse(r);
    return r;
  }

  sendBatch(batch: SendBatch, n: number): number {
    if (n <= 0) return 0;
    if (n > batch.slots) throw new UdpError(`sendBatch: n=${n} exceeds the batch's ${batch.slots} slots`);
    const needSplit = batch.encode(n, this.family, this.gso);
    if (!needSplit) return this.#sendRange(batch, 0, n);
    let i = 0;
    while (i < n) {
      if (batch.isGso(i)) {
        const r = this.#sendSplit(batch, i);
        if (r < 0) return r === -Errno.EAGAIN ? i : r;
        i++;
        continue;
      }
      let j = i + 1;
      while (j < n && !batch.isGso(j)) j++;
      const r = this.#sendRange(batch, i, j);
      if (r !== j) return r;
      i = j;
    }
    return n;
  }

  /** sendmmsg over encoded entries `from..to-1`; returns `to`, the first unsent index, or -errno. */
  #sendRange(b: SendBatch, from: number, to: number): number {
    let i = from;
    while (i < to) {
      const r = libc.sendmmsg(this.fd, i === 0 ? b.hdrs : b.hdrs.subarray(i * MMSGHDR_SIZE), to - i, 0);
      if (r > 0) {
        i += r;
        continue;
      }
      const e = r < 0 ? errno() : Errno.EAGAIN;
      if (e === Errno.EINTR) continue;
      if (e === Errno.EAGAIN) return i;
      if (e === EBADF || e === ENOTSOCK || e === EFAULT) return -e;
      if (e === EIO && b.isGso(i)) {
        // GSO refused (before Linux 6.11: egress without checksum offload; always: xfrm routes):
        // stop using GSO on this socket and send this entry (and later ones in the batch, which fail
        // the same way) segment by segment, as wireguard-go does.
        this.gso = false;
        const s = this.#sendSplit(b, i);
        if (s < 0 && s !== -Errno.EAGAIN) return s;
        i++;
        continue;
      }
      b.dropped++;
      b.lastErrno = e;
      i++;
    }
    return to;
  }

  /** Sends GSO entry `i` as separate datagrams; 0 or -errno (EAGAIN / fatal). */
  #sendSplit(b: SendBatch, i: number): number {
    b.splitSends++;
    const total = Math.ceil(b.sizes[i] / b.segSizes[i]);
    let seg = 0;
    while (seg < total) {
      const k = b.buildSplit(i, seg);
      const hdrs = b.splitHdrs();
      let sent = 0;
      while (sent < k) {
        const r = libc.sendmmsg(this.fd, sent === 0 ? hdrs : hdrs.subarray(sent * MMSGHDR_SIZE), k - sent, 0);
        if (r > 0) {
          sent += r;
          continue;
        }
        const e = r < 0 ? errno() : Errno.EAGAIN;
        if (e === Errno.EINTR) continue;
        if (e === Errno.EAGAIN || e === EBADF || e === ENOTSOCK || e === EFAULT) {
          b.dropped += total - seg - sent;
          b.lastErrno = e;
          return -e;
        }
        b.dropped++;
        b.lastErrno = e;
        sent++;
      }
      seg += k;
    }
    return 0;
  }

  wait(timeoutMs: number): number {
    this.#pollfd[1] = POLLIN;
    const r = libc.poll(this.#pollBytes, 1n, timeoutMs);
    if (r < 0) return -errno();
    return r > 0 ? 1 : 0;
  }

  setDontFragment(df: boolean): number {
    const [level, name] = this.family === 4
      ? [PMTU_IPPROTO_IP, IP_MTU_DISCOVER]
      : [IPPROTO_IPV6, IPV6_MTU_DISCOVER];
    return setInt(this.fd, level, name, df ? PMTUDISC_PROBE : PMTUDISC_INTERFACE) < 0 ? -errno() : 0;
  }

  waitWritable(timeoutMs: number): number {
    this.#pollfd[1] = POLLOUT;
    const r = libc.poll(this.#pollBytes, 1n, timeoutMs);
    this.#pollfd[1] = POLLIN;
    if (r < 0) return -errno();
    return r > 0 ? 1 : 0;
  }

  setNonBlocking(on: boolean): void {
    setFdNonBlocking(this.fd, on);
  }

  info(): UdpInfo {
    return { fd: this.fd, family: this.family, gso: this.gso, gro: this.gro, localPort: this.localPort };
  }

  close(): void {
    if (this.fd >= 0) {
      libc.close(this.fd);
      this.fd = -1;
      this.#pollfd[0] = -1;
    }
  }
}

function setInt(fd: number, level: number, name: number, value: number): number {
  const v = new Int32Array(new ArrayBuffer(8));
  v[0] = value;
  return libc.setsockopt(fd, level, name, new Uint8Array(v.buffer, 0, 4), 4);
}

function getInt(fd: number, level: number, name: number): number | undefined {
  const ab = new ArrayBuffer(16);
  const v = new Int32Array(ab);
  v[2] = 4; // socklen_t in/out
  const r = libc.getsockopt(fd, level, name, new Uint8Array(ab, 0, 4), new Uint8Array(ab, 8, 4));
  return r < 0 ? undefined : v[0];
}

/** Encodes a sockaddr for `bind`. */
function sockaddr(family: 4 | 6, addr: string | undefined, port: number): Uint8Array<ArrayBuffer> {
  if (family === 4) {
    const sa = new Uint8Array(new ArrayBuffer(SOCKADDR_IN_SIZE));
    const a = addr === undefined ? 0 : parseIPv4(addr);
    sa[0] = AF_INET;
    sa[2] = port >>> 8;
    sa[3] = port & 0xff;
    sa[4] = a >>> 24;
    sa[5] = (a >>> 16) & 0xff;
    sa[6] = (a >>> 8) & 0xff;
    sa[7] = a & 0xff;
    return sa;
  }
  const sa = new Uint8Array(new ArrayBuffer(SOCKADDR_IN6_SIZE));
  sa[0] = AF_INET6;
  sa[2] = port >>> 8;
  sa[3] = port & 0xff;
  if (addr !== undefined) {
    const pct = addr.indexOf("%");
    const host = pct < 0 ? addr : addr.slice(0, pct);
    sa.set(parseIPv6(host), 8);
    if (pct >= 0) {
      const zone = addr.slice(pct + 1);
      const idx = /^\d+$/.test(zone)
        ? Number(zone)
        : libc.if_nametoindex(new TextEncoder().encode(zone + "\0"));
      if (idx === 0) throw new UdpError(`unknown interface "${zone}" in ${addr}`);
      new DataView(sa.buffer).setUint32(24, idx, true);
    }
  }
  return sa;
}

/**
 * Opens, configures and binds a UDP socket (in the calling thread's network namespace).
 * Throws `SyscallError` when a required syscall fails and `UdpError` for invalid options.
 * GSO is probed with `getsockopt(SOL_UDP, UDP_SEGMENT)`; `gso` is false when the kernel lacks it or
 * `opts.gso === false`.
 *
 * @example
 * ```ts
 * const sock = openUdp({ bindAddr: "::", port: 50103, dualStack: true, rcvbuf: 8 << 20, gro: true });
 * console.log(sock.localPort, sock.gso, sock.gro, sock.rcvbuf);
 * ```
 */
export function openUdp(opts: UdpOptions): UdpSocket {
  assertLp64();
  const family: 4 | 6 = opts.family ?? (opts.bindAddr?.includes(":") ? 6 : 4);
  if (family !== 4 && family !== 6) throw new UdpError(`family must be 4 or 6, got ${family}`);
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    throw new UdpError(`port must be 0..65535, got ${opts.port}`);
  }
  if (opts.dualStack && family !== 6) throw new UdpError("dualStack needs family 6");
  const bindSa = sockaddr(family, opts.bindAddr, opts.port); // validates the address before socket()

  const type = SOCK_DGRAM | SOCK_CLOEXEC | (opts.nonBlocking ? SOCK_NONBLOCK : 0);
  const fd = libc.socket(family === 4 ? AF_INET : AF_INET6, type, 0);
  if (fd < 0) throw new SyscallError("socket(udp)", errno());
  try {
    if (family === 6 && setInt(fd, IPPROTO_IPV6, IPV6_V6ONLY, opts.dualStack ? 0 : 1) < 0) {
      throw new SyscallError("setsockopt(IPV6_V6ONLY)", errno());
    }
    if (opts.reusePort && setInt(fd, SOL_SOCKET, SO_REUSEPORT, 1) < 0) {
      throw new SyscallError("setsockopt(SO_REUSEPORT)", errno());
    }
    if (opts.rcvbuf !== undefined) {
      if (
        setInt(fd, SOL_SOCKET, SO_RCVBUFFORCE, opts.rcvbuf) < 0 &&
        setInt(fd, SOL_SOCKET, SO_RCVBUF, opts.rcvbuf) < 0
      ) {
        throw new SyscallError("setsockopt(SO_RCVBUF)", errno());
      }
    }
    if (opts.sndbuf !== undefined) {
      if (
        setInt(fd, SOL_SOCKET, SO_SNDBUFFORCE, opts.sndbuf) < 0 &&
        setInt(fd, SOL_SOCKET, SO_SNDBUF, opts.sndbuf) < 0
      ) {
        throw new SyscallError("setsockopt(SO_SNDBUF)", errno());
      }
    }
    if (opts.pmtuProbe) {
      const [level, name] = family === 4
        ? [PMTU_IPPROTO_IP, IP_MTU_DISCOVER]
        : [IPPROTO_IPV6, IPV6_MTU_DISCOVER];
      if (setInt(fd, level, name, PMTUDISC_PROBE) < 0) {
        throw new SyscallError("setsockopt(MTU_DISCOVER)", errno());
      }
    }
    const gso = (opts.gso ?? true) && getInt(fd, SOL_UDP, UDP_SEGMENT) !== undefined;
    let gro = false;
    if (opts.gro) {
      if (setInt(fd, SOL_UDP, UDP_GRO, 1) < 0) throw new SyscallError("setsockopt(UDP_GRO)", errno());
      gro = true;
    }
    if (libc.bind(fd, bindSa, bindSa.length) < 0) {
      throw new SyscallError(
        `bind(${opts.bindAddr ?? (family === 4 ? "0.0.0.0" : "::")}:${opts.port})`,
        errno(),
      );
    }
    const name = new Uint8Array(new ArrayBuffer(SOCKADDR_IN6_SIZE + 4));
    const nameLen = new Uint32Array(new ArrayBuffer(8));
    nameLen[0] = SOCKADDR_IN6_SIZE;
    if (libc.getsockname(fd, name, new Uint8Array(nameLen.buffer, 0, 4)) < 0) {
      throw new SyscallError("getsockname", errno());
    }
    const localPort = (name[2] << 8) | name[3];
    const rcvbuf = getInt(fd, SOL_SOCKET, SO_RCVBUF) ?? 0;
    const sndbuf = getInt(fd, SOL_SOCKET, SO_SNDBUF) ?? 0;
    return new Udp({ fd, family, gso, gro, localPort }, rcvbuf, sndbuf);
  } catch (e) {
    libc.close(fd);
    throw e;
  }
}

/**
 * Wraps an already open socket fd (from {@link UdpSocket.info}, typically received by a Worker).
 * The wrapper's `close()` closes the shared fd: let exactly one owner close it.
 */
export function udpFromInfo(info: UdpInfo): UdpSocket {
  assertLp64();
  const rcvbuf = getInt(info.fd, SOL_SOCKET, SO_RCVBUF) ?? 0;
  const sndbuf = getInt(info.fd, SOL_SOCKET, SO_SNDBUF) ?? 0;
  return new Udp(info, rcvbuf, sndbuf);
}

/** Parses dotted-quad IPv4 into a uint32; throws `UdpError` on bad input. */
export function parseIPv4(s: string): number {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (m === null) throw new UdpError(`invalid IPv4 address "${s}"`);
  let v = 0;
  for (let k = 1; k <= 4; k++) {
    const b = Number(m[k]);
    if (b > 255) throw new UdpError(`invalid IPv4 address "${s}"`);
    v = v * 256 + b;
  }
  return v;
}

/** Formats a uint32 IPv4 address as a dotted quad. */
export function formatIPv4(a: number): string {
  return `${a >>> 24}.${(a >>> 16) & 0xff}.${(a >>> 8) & 0xff}.${a & 0xff}`;
}

/** Parses an IPv6 address (with `::` and an optional dotted IPv4 tail) into 16 bytes. */
export function parseIPv6(s: string): Uint8Array<ArrayBuffer> {
  const bad = (): UdpError => new UdpError(`invalid IPv6 address "${s}"`);
  const out = new Uint8Array(16);
  const halves = s.split("::");
  if (halves.length > 2) throw bad();
  const parse = (part: string): number[] => {
    if (part === "") return [];
    const groups: number[] = [];
    const items = part.split(":");
    for (let k = 0; k < items.length; k++) {
      const it = items[k];
      if (k === items.length - 1 && it.includes(".")) {
        const v4 = parseIPv4(it);
        groups.push(v4 >>> 16, v4 & 0xffff);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(it)) throw bad();
        groups.push(parseInt(it, 16));
      }
    }
    return groups;
  };
  const head = parse(halves[0]);
  const tail = halves.length === 2 ? parse(halves[1]) : [];
  if (halves.length === 1 ? head.length !== 8 : head.length + tail.length > 7) throw bad();
  const groups = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  for (let k = 0; k < 8; k++) {
    out[2 * k] = groups[k] >>> 8;
    out[2 * k + 1] = groups[k] & 0xff;
  }
  return out;
}

/** Formats 16 IPv6 bytes at `off` (RFC 5952: lower case, longest zero run as `::`). */
export function formatIPv6(b: Uint8Array, off = 0): string {
  const g: number[] = [];
  for (let k = 0; k < 8; k++) g.push((b[off + 2 * k] << 8) | b[off + 2 * k + 1]);
  let bestStart = -1, bestLen = 0;
  for (let k = 0; k < 8;) {
    if (g[k] !== 0) {
      k++;
      continue;
    }
    let e = k;
    while (e < 8 && g[e] === 0) e++;
    if (e - k > bestLen && e - k >= 2) {
      bestStart = k;
      bestLen = e - k;
    }
    k = e;
  }
  const hex = (xs: number[]): string => xs.map((x) => x.toString(16)).join(":");
  if (bestStart < 0) return hex(g);
  return `${hex(g.slice(0, bestStart))}::${hex(g.slice(bestStart + bestLen))}`;
}

// ------------------------------------------------------------------------------------------------
// Multicast sockets (mDNS). Added for the DNS work; nothing above changed.

const SO_REUSEADDR = 2;
const SO_BINDTODEVICE = 25;
const IPPROTO_IP = 0;
const IP_MULTICAST_IF = 32;
const IP_MULTICAST_TTL = 33;
const IP_MULTICAST_LOOP = 34;
const IP_ADD_MEMBERSHIP = 35;
const IPV6_MULTICAST_IF = 17;
const IPV6_MULTICAST_HOPS = 18;
const IPV6_MULTICAST_LOOP = 19;
const IPV6_ADD_MEMBERSHIP = 20;

/** Options for {@link openMulticastUdp}. */
export interface MulticastOptions {
  /** The group (e.g. 224.0.0.251 or ff02::fb); its family is the socket's. */
  group: string;
  port: number;
  /** The one interface: joined there, sent from there, and (SO_BINDTODEVICE) received only there. */
  ifname: string;
  /** Bind to the group address (v4: unicast to the port is not received) instead of any address. */
  bindGroup?: boolean;
  /** TTL / hop limit of multicast sends (default 255, as mDNS requires). */
  hops?: number;
  /** Receive our own multicast sends (default false). */
  loop?: boolean;
  /** Open with SOCK_NONBLOCK (default false). */
  nonBlocking?: boolean;
}

/**
 * Opens a UDP socket joined to a multicast group on one interface (SO_REUSEADDR, so it shares the
 * port with other responders; SO_BINDTODEVICE, so nothing from another interface reaches it), with
 * multicast sends leaving through that interface. IPv6 sockets are v6-only. Throws `SyscallError` or
 * `UdpError` (unknown interface, bad group).
 *
 * @example
 * ```ts
 * const m = openMulticastUdp({ group: "224.0.0.251", port: 5353, ifname: "goProxyBridge", bindGroup: true });
 * m.close();
 * ```
 */
export function openMulticastUdp(opts: MulticastOptions): UdpSocket {
  assertLp64();
  const family: 4 | 6 = opts.group.includes(":") ? 6 : 4;
  const ifindex = libc.if_nametoindex(new TextEncoder().encode(opts.ifname + "\0"));
  if (ifindex === 0) throw new UdpError(`unknown interface "${opts.ifname}"`);
  const bindSa = sockaddr(
    family,
    opts.bindGroup ? (family === 6 ? `${opts.group}%${ifindex}` : opts.group) : undefined,
    opts.port,
  );
  const type = SOCK_DGRAM | SOCK_CLOEXEC | (opts.nonBlocking ? SOCK_NONBLOCK : 0);
  const fd = libc.socket(family === 4 ? AF_INET : AF_INET6, type, 0);
  if (fd < 0) throw new SyscallError("socket(udp)", errno());
  const must = (r: number, what: string) => {
    if (r < 0) throw new SyscallError(`setsockopt(${what})`, errno());
  };
  try {
    must(setInt(fd, SOL_SOCKET, SO_REUSEADDR, 1), "SO_REUSEADDR");
    const dev = new TextEncoder().encode(opts.ifname + "\0");
    must(libc.setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, dev, dev.length), "SO_BINDTODEVICE");
    const hops = opts.hops ?? 255;
    if (family === 4) {
      const group = parseIPv4(opts.group);
      // struct ip_mreqn { in_addr imr_multiaddr; in_addr imr_address; int imr_ifindex; }
      const mreqn = new Uint8Array(new ArrayBuffer(12));
      const dv = new DataView(mreqn.buffer);
      dv.setUint32(0, group, false);
      dv.setInt32(8, ifindex, true);
      must(libc.setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, mreqn, 12), "IP_ADD_MEMBERSHIP");
      must(libc.setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, mreqn, 12), "IP_MULTICAST_IF");
      must(setInt(fd, IPPROTO_IP, IP_MULTICAST_TTL, hops), "IP_MULTICAST_TTL");
      must(setInt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, opts.loop ? 1 : 0), "IP_MULTICAST_LOOP");
    } else {
      must(setInt(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1), "IPV6_V6ONLY");
      // struct ipv6_mreq { in6_addr ipv6mr_multiaddr; unsigned ipv6mr_interface; }
      const mreq = new Uint8Array(new ArrayBuffer(20));
      mreq.set(parseIPv6(opts.group), 0);
      new DataView(mreq.buffer).setUint32(16, ifindex, true);
      must(libc.setsockopt(fd, IPPROTO_IPV6, IPV6_ADD_MEMBERSHIP, mreq, 20), "IPV6_ADD_MEMBERSHIP");
      must(setInt(fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, ifindex), "IPV6_MULTICAST_IF");
      must(setInt(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, hops), "IPV6_MULTICAST_HOPS");
      must(setInt(fd, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, opts.loop ? 1 : 0), "IPV6_MULTICAST_LOOP");
    }
    if (libc.bind(fd, bindSa, bindSa.length) < 0) {
      throw new SyscallError(`bind(${opts.bindGroup ? opts.group : "any"}:${opts.port})`, errno());
    }
    return udpFromInfo({ fd, family, gso: false, gro: false, localPort: opts.port });
  } catch (e) {
    libc.close(fd);
    throw e;
  }
}
