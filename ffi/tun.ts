/**
 * TUN devices: open `/dev/net/tun`, attach a named IP-level interface (`IFF_TUN | IFF_NO_PI`), and
 * optionally turn on the `virtio_net_hdr` prefix (`IFF_VNET_HDR`) with kernel offloads
 * (`TUNSETOFFLOAD`: checksum, TCP segmentation TSO4/TSO6, UDP segmentation USO4/USO6).
 *
 * The interface is created in the network namespace of the **calling OS thread** (see
 * deno-notes §5: `setns` moves one thread). Address, MTU and link state are not set here.
 *
 * The hot path (`read`, `write`, `wait`) is synchronous and never throws; the only allocation is the
 * small BigInt length that `write` hands to FFI (`usize`). It returns a byte count or a negative errno (`-Errno.EAGAIN` when a non-blocking device has nothing to read).
 * Packet loops belong in Workers (deno-notes §2); hand the device to one with `info()` +
 * `tunFromInfo()` (a file descriptor is valid in every thread of the process).
 *
 * ioctl codes (`<linux/if_tun.h>`, `_IOW('T', n, int)`): TUNSETIFF 0x400454CA, TUNSETOFFLOAD
 * 0x400454D0, TUNSETVNETHDRSZ 0x400454D8. `struct ifreq` is 40 bytes: `ifr_name[16]` then
 * `ifr_flags` (int16 LE) at offset 16, the rest zero.
 *
 * @example
 * ```ts
 * import { VNET_HDR_LEN } from "./vnet.ts";
 * const tun = openTun({ name: "goProxyTun", vnetHdr: true });
 * const buf = new Uint8Array(65536 + VNET_HDR_LEN);
 * const n = tun.read(buf); // 10-byte virtio_net_hdr, then the IP packet
 * if (n > 0) tun.write(buf, n);
 * tun.close();
 * ```
 */

import { Errno, errno, libc, SyscallError } from "./libc.ts";
import { VNET_HDR_LEN } from "./vnet.ts";

/** `ifr_flags`: IP-level device (no Ethernet header). */
export const IFF_TUN = 0x0001;
/** `ifr_flags`: multi-queue device (each open + TUNSETIFF adds a queue). */
export const IFF_MULTI_QUEUE = 0x0100;
/** `ifr_flags`: no 4-byte packet-information prefix. */
export const IFF_NO_PI = 0x1000;
/** `ifr_flags`: every packet is prefixed by a `virtio_net_hdr`. */
export const IFF_VNET_HDR = 0x4000;

/** TUNSETOFFLOAD bit: userspace accepts packets with a partial checksum (CHECKSUM_PARTIAL). */
export const TUN_F_CSUM = 0x01;
/** TUNSETOFFLOAD bit: IPv4 TCP super-packets (needs CSUM). */
export const TUN_F_TSO4 = 0x02;
/** TUNSETOFFLOAD bit: IPv6 TCP super-packets (needs CSUM). */
export const TUN_F_TSO6 = 0x04;
/** TUNSETOFFLOAD bit: TSO with ECN. */
export const TUN_F_TSO_ECN = 0x08;
/** TUNSETOFFLOAD bit: IPv4 UDP super-packets (USO; needs CSUM and USO6 together; Linux ≥ 6.2). */
export const TUN_F_USO4 = 0x20;
/** TUNSETOFFLOAD bit: IPv6 UDP super-packets (USO; needs CSUM and USO4 together; Linux ≥ 6.2). */
export const TUN_F_USO6 = 0x40;

/** `_IOW('T', 202, int)`: attach the fd to a (new or existing) interface. */
export const TUNSETIFF = 0x400454ca;
/** `_IOW('T', 208, unsigned int)`: set offload flags (integer argument). */
export const TUNSETOFFLOAD = 0x400454d0;
/** `_IOW('T', 216, int)`: size of the vnet header (pointer to int). */
export const TUNSETVNETHDRSZ = 0x400454d8;

const O_RDWR = 0x2;
const O_NONBLOCK = 0x800;
const O_CLOEXEC = 0x80000;
const F_GETFL = 3;
const F_SETFL = 4;
const POLLIN = 0x1;
const IFNAMSIZ = 16;
const IFREQ_SIZE = 40;

/** Offloads to request (only with `vnetHdr`). Each defaults to true; TSO and USO need CSUM. */
export interface TunOffloadOptions {
  /** Partial checksums (TUN_F_CSUM). */
  csum?: boolean;
  /** TCP segmentation offload, IPv4 and IPv6 (TUN_F_TSO4 | TUN_F_TSO6). */
  tso?: boolean;
  /** UDP segmentation offload, IPv4 and IPv6 (TUN_F_USO4 | TUN_F_USO6). */
  uso?: boolean;
}

/** Options for {@link openTun}. */
export interface TunOptions {
  /** Interface name (≤ 15 bytes); `%d` lets the kernel pick a number, e.g. `"tun%d"`. */
  name: string;
  /** Prefix every packet with a 10-byte `virtio_net_hdr` (IFF_VNET_HDR). Default false. */
  vnetHdr?: boolean;
  /** Offloads to probe (requires `vnetHdr`). Default: all when `vnetHdr`, none otherwise. */
  offloads?: TunOffloadOptions;
  /** Open with O_NONBLOCK: `read` returns `-EAGAIN` when no packet is queued. Default false. */
  nonBlocking?: boolean;
  /** Create/attach a queue of a multi-queue device (IFF_MULTI_QUEUE). Default false. */
  multiQueue?: boolean;
}

/** What is needed to use an open TUN from another thread (plain data; `postMessage`-able). */
export interface TunInfo {
  /** The file descriptor (process-wide). */
  fd: number;
  /** The interface name the kernel gave the device. */
  name: string;
  /** True when every packet carries a `virtio_net_hdr` of {@link VNET_HDR_LEN} bytes. */
  vnetHdr: boolean;
  /** TUN_F_* bits the kernel accepted (0 without `vnetHdr`). */
  offloadFlags: number;
}

/** An open TUN device. */
export interface TunDevice extends TunInfo {
  /**
   * Reads one packet (with its vnet header when `vnetHdr`) into `buf`. Returns the byte count, or a
   * negative errno (`-EAGAIN` when non-blocking and empty). Never throws; allocation-free when the
   * same buffer is passed again.
   * With TSO/USO a packet can be up to 64 KiB + header: size `buf` accordingly.
   */
  read(buf: Uint8Array): number;
  /** Writes the first `len` bytes of `buf` as one packet. Returns `len` or a negative errno. */
  write(buf: Uint8Array, len: number): number;
  /**
   * Writes one packet gathered from `count` iovecs (`struct iovec` array in `iov`, see
   * {@link bufferAddress}): the virtio header and the packet's pieces. Bytes written or -errno.
   */
  writev(iov: Uint8Array, count: number): number;
  /** Reads one packet scattered over `count` iovecs (see {@link writev}). Bytes read or -errno. */
  readv(iov: Uint8Array, count: number): number;
  /**
   * Waits up to `timeoutMs` (-1: forever) until a packet can be read. Returns 1 when readable,
   * 0 on timeout, a negative errno on error (`-EINTR` possible).
   */
  wait(timeoutMs: number): number;
  /** Switches O_NONBLOCK on or off (it is a property of the fd, so it affects every thread). */
  setNonBlocking(on: boolean): void;
  /** Plain data describing this device, for {@link tunFromInfo} in a Worker. */
  info(): TunInfo;
  /** Closes the fd (idempotent). The interface disappears with the last fd unless persistent. */
  close(): void;
}

/** Invalid TUN options (the syscalls themselves fail with `SyscallError`). */
export class TunError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TunError";
  }
}

class Tun implements TunDevice {
  fd: number;
  readonly name: string;
  readonly vnetHdr: boolean;
  readonly offloadFlags: number;
  /** struct pollfd { int fd; short events; short revents; } reused by `wait`. */
  readonly #pollfd: Int32Array<ArrayBuffer>;
  readonly #pollBytes: Uint8Array<ArrayBuffer>;
  /** The last read buffer and its length as the BigInt the FFI `usize` needs (saves a BigInt per read). */
  #lastBuf: Uint8Array | null = null;
  #lastLen = 0n;

  constructor(info: TunInfo) {
    this.fd = info.fd;
    this.name = info.name;
    this.vnetHdr = info.vnetHdr;
    this.offloadFlags = info.offloadFlags;
    const ab = new ArrayBuffer(8);
    this.#pollfd = new Int32Array(ab);
    this.#pollBytes = new Uint8Array(ab);
    this.#pollfd[0] = info.fd;
    this.#pollfd[1] = POLLIN; // events = POLLIN, revents = 0
  }

  read(buf: Uint8Array): number {
    if (buf !== this.#lastBuf) {
      this.#lastBuf = buf;
      this.#lastLen = BigInt(buf.length);
    }
    const r = libc.read(this.fd, buf, this.#lastLen);
    return r >= 0 ? r : -errno();
  }

  readv(iov: Uint8Array, count: number): number {
    const r = libc.readv(this.fd, iov, count);
    return r >= 0 ? r : -errno();
  }

  writev(iov: Uint8Array, count: number): number {
    const r = libc.writev(this.fd, iov, count);
    return r >= 0 ? r : -errno();
  }

  write(buf: Uint8Array, len: number): number {
    if (len > buf.length || len < 0) return -Errno.EINVAL;
    const r = libc.write(this.fd, buf, BigInt(len));
    return r >= 0 ? r : -errno();
  }

  wait(timeoutMs: number): number {
    this.#pollfd[1] = POLLIN;
    const r = libc.poll(this.#pollBytes, 1n, timeoutMs);
    if (r < 0) return -errno();
    return r > 0 ? 1 : 0;
  }

  setNonBlocking(on: boolean): void {
    setFdNonBlocking(this.fd, on);
  }

  info(): TunInfo {
    return { fd: this.fd, name: this.name, vnetHdr: this.vnetHdr, offloadFlags: this.offloadFlags };
  }

  close(): void {
    if (this.fd >= 0) {
      libc.close(this.fd);
      this.fd = -1;
      this.#pollfd[0] = -1;
    }
  }
}

/** Sets or clears O_NONBLOCK on a file descriptor. */
export function setFdNonBlocking(fd: number, on: boolean): void {
  const fl = libc.fcntl(fd, F_GETFL, 0);
  if (fl < 0) throw new SyscallError("fcntl(F_GETFL)", errno());
  const next = on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK;
  if (next !== fl && libc.fcntl(fd, F_SETFL, next) < 0) throw new SyscallError("fcntl(F_SETFL)", errno());
}

/** The offload sets tried in order: everything requested, then without USO, TSO, CSUM. */
function offloadCandidates(o: TunOffloadOptions): number[] {
  const csum = o.csum ?? true;
  const tso = csum && (o.tso ?? true);
  const uso = csum && (o.uso ?? true);
  const full = (csum ? TUN_F_CSUM : 0) | (tso ? TUN_F_TSO4 | TUN_F_TSO6 : 0) |
    (uso ? TUN_F_USO4 | TUN_F_USO6 : 0);
  const out: number[] = [];
  for (
    const c of [
      full,
      full & ~(TUN_F_USO4 | TUN_F_USO6),
      full & ~(TUN_F_USO4 | TUN_F_USO6 | TUN_F_TSO4 | TUN_F_TSO6),
      0,
    ]
  ) if (!out.includes(c)) out.push(c);
  return out;
}

/** Names of the TUN_F_* bits set in `flags`, e.g. `["csum","tso4","tso6"]` (for logs and status). */
export function describeOffloads(flags: number): string[] {
  const names: [number, string][] = [
    [TUN_F_CSUM, "csum"],
    [TUN_F_TSO4, "tso4"],
    [TUN_F_TSO6, "tso6"],
    [TUN_F_TSO_ECN, "tso_ecn"],
    [TUN_F_USO4, "uso4"],
    [TUN_F_USO6, "uso6"],
  ];
  return names.filter(([bit]) => (flags & bit) !== 0).map(([, n]) => n);
}

/**
 * Opens a TUN device in the calling thread's network namespace.
 *
 * Offload probing (with `vnetHdr`): TUNSETOFFLOAD is tried with CSUM|TSO4|TSO6|USO4|USO6 (as far as
 * requested); on EINVAL USO is dropped, then TSO, then CSUM. `offloadFlags` records what the kernel
 * accepted. Throws `SyscallError` when a syscall fails (e.g. EPERM without CAP_NET_ADMIN, EBUSY when
 * an existing device has other flags) and `TunError` for invalid options.
 */
export function openTun(opts: TunOptions): TunDevice {
  assertLp64();
  const vnet = opts.vnetHdr ?? false;
  const nameBytes = new TextEncoder().encode(opts.name);
  if (nameBytes.length === 0 || nameBytes.length >= IFNAMSIZ) {
    throw new TunError(`TUN name "${opts.name}" must be 1..${IFNAMSIZ - 1} bytes`);
  }
  if (!vnet && opts.offloads !== undefined) {
    throw new TunError("TUN offloads need vnetHdr: true (the kernel reports them in the virtio_net_hdr)");
  }
  const path = new TextEncoder().encode("/dev/net/tun\0");
  const fd = libc.open(path, O_RDWR | O_CLOEXEC | (opts.nonBlocking ? O_NONBLOCK : 0), 0);
  if (fd < 0) throw new SyscallError("open(/dev/net/tun)", errno());
  try {
    const ifr = new Uint8Array(new ArrayBuffer(IFREQ_SIZE));
    ifr.set(nameBytes, 0);
    const flags = IFF_TUN | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0) | (opts.multiQueue ? IFF_MULTI_QUEUE : 0);
    ifr[16] = flags & 0xff;
    ifr[17] = flags >>> 8;
    if (libc.ioctl(fd, BigInt(TUNSETIFF), ifr) < 0) {
      throw new SyscallError(`TUNSETIFF(${opts.name})`, errno());
    }
    const end = ifr.indexOf(0);
    const name = new TextDecoder().decode(ifr.subarray(0, end < 0 || end > IFNAMSIZ ? IFNAMSIZ : end));

    let offloadFlags = 0;
    if (vnet) {
      const sz = new Int32Array(new ArrayBuffer(8));
      sz[0] = VNET_HDR_LEN;
      if (libc.ioctl(fd, BigInt(TUNSETVNETHDRSZ), new Uint8Array(sz.buffer)) < 0) {
        throw new SyscallError("TUNSETVNETHDRSZ", errno());
      }
      let accepted = -1;
      for (const cand of offloadCandidates(opts.offloads ?? {})) {
        if (libc.ioctl_int(fd, BigInt(TUNSETOFFLOAD), BigInt(cand)) === 0) {
          accepted = cand;
          break;
        }
        const e = errno();
        if (e !== Errno.EINVAL) throw new SyscallError(`TUNSETOFFLOAD(0x${cand.toString(16)})`, e);
      }
      if (accepted < 0) throw new SyscallError("TUNSETOFFLOAD(0)", Errno.EINVAL);
      offloadFlags = accepted;
    }
    return new Tun({ fd, name, vnetHdr: vnet, offloadFlags });
  } catch (e) {
    libc.close(fd);
    throw e;
  }
}

/**
 * Wraps an already open TUN fd (from {@link TunDevice.info}, typically received by a Worker).
 * The wrapper's `close()` closes the shared fd: let exactly one owner close it.
 *
 * @example
 * ```ts
 * // worker.ts — a module Worker; the main thread posts it `tun.info()`
 * declare const self: { onmessage: ((e: MessageEvent<TunInfo>) => void) | null }; // the worker's global scope
 * self.onmessage = (e: MessageEvent<TunInfo>) => {
 *   const tun = tunFromInfo(e.data);
 *   const buf = new Uint8Array(65546);
 *   for (;;) if (tun.read(buf) < 0) break;
 * };
 * ```
 */
export function tunFromInfo(info: TunInfo): TunDevice {
  assertLp64();
  return new Tun(info);
}

/** The process runs on an architecture whose C struct layouts we have not written down. */
export class UnsupportedArchError extends Error {
  constructor(arch: string) {
    super(
      `unsupported architecture ${arch}: the ffi struct layouts assume LP64 little-endian (x86_64, aarch64)`,
    );
    this.name = "UnsupportedArchError";
  }
}

/** Throws {@link UnsupportedArchError} unless on x86_64 or aarch64 (same LP64 little-endian layouts). */
export function assertLp64(): void {
  const arch = Deno.build.arch;
  if (arch !== "x86_64" && arch !== "aarch64") throw new UnsupportedArchError(arch);
}
