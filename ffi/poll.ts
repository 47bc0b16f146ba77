/**
 * `poll(2)` over a fixed set of file descriptors, for Worker loops that serve several fds (TUN and
 * UDP socket) with synchronous calls. The pollfd array is preallocated and passed as a `buffer`
 * parameter (safe for the duration of the call).
 *
 * @example
 * ```ts
 * declare const tunFd: number, udpFd: number;
 * declare function drainTun(): void;
 * declare function drainUdp(): void;
 * const p = new Poller([tunFd, udpFd]);
 * if (p.wait(10) > 0 && p.readable(0)) drainTun();
 * if ((await p.waitAsync(-1)) > 0 && p.readable(1)) drainUdp(); // from the main isolate
 * ```
 */
import { errno, libc, SyscallError } from "./libc.ts";

const POLLIN = 0x1;
const POLLERR = 0x8;
const POLLHUP = 0x10;

/** Waits for readability of several fds. */
export class Poller {
  readonly #buf: Uint8Array<ArrayBuffer>;
  readonly #view: DataView;
  readonly #n: number;
  readonly #count: bigint;

  constructor(fds: readonly number[]) {
    this.#n = fds.length;
    this.#count = BigInt(fds.length);
    this.#buf = new Uint8Array(8 * fds.length);
    this.#view = new DataView(this.#buf.buffer);
    fds.forEach((fd, i) => {
      this.#view.setInt32(i * 8, fd, true);
      this.#view.setInt16(i * 8 + 4, POLLIN, true);
    });
  }

  /** Waits up to `timeoutMs` (-1 forever): number of ready fds, 0 on timeout, negative errno on error. */
  wait(timeoutMs: number): number {
    for (let i = 0; i < this.#n; i++) this.#view.setInt16(i * 8 + 6, 0, true);
    const r = libc.poll(this.#buf, this.#count, timeoutMs);
    return r < 0 ? -errno() : r;
  }

  /**
   * Like {@link Poller.wait} but on Deno's blocking thread pool, so the calling isolate's event loop
   * keeps running (one pool hop per call: use it to sleep between drained batches, not per packet).
   * Resolves the number of ready fds, 0 on timeout, -1 on error (errno belongs to the pool thread).
   * The Poller must not be waited on twice at once.
   */
  async waitAsync(timeoutMs: number): Promise<number> {
    for (let i = 0; i < this.#n; i++) this.#view.setInt16(i * 8 + 6, 0, true);
    const r = await libc.poll_async(this.#buf, this.#count, timeoutMs);
    return r < 0 ? -1 : r;
  }

  /** True when fd `i` is readable (or in error/hang-up: a read will tell) after the last wait. */
  readable(i: number): boolean {
    return (this.#view.getInt16(i * 8 + 6, true) & (POLLIN | POLLERR | POLLHUP)) !== 0;
  }
}

const EPOLLIN = 0x1;
const EPOLL_CTL_ADD = 1;
const EPOLL_CLOEXEC = 0o2000000;
/**
 * `struct epoll_event` (u32 events, u64 data) is packed only on x86_64 (12 bytes, data at 4); elsewhere
 * (aarch64) it has natural alignment (16 bytes, data at 8) — a 12-byte layout there would let the
 * kernel write past the buffer.
 */
const PACKED = Deno.build.arch === "x86_64";
const EV = PACKED ? 12 : 16;
const EV_DATA = PACKED ? 4 : 8;

/**
 * The same wait as {@link Poller} over `epoll(7)`: the fds are registered once, so a wait neither
 * copies the pollfd array nor adds (and removes) a wait-queue entry per fd, and after a wake-up only
 * the ready fds are polled again. The data-plane Worker waits once per packet crossing under
 * request/response traffic, on a VM where that kernel work is paid per wake-up.
 *
 * @example
 * ```ts
 * import { EPoller } from "./poll.ts";
 * declare const tunFd: number, udpFd: number;
 * declare function drainTun(): void;
 * const p = new EPoller([tunFd, udpFd]);
 * if (p.wait(10) > 0 && p.readable(0)) drainTun();
 * p.close();
 * ```
 */
export class EPoller {
  /** The epoll instance (closed by {@link EPoller.close}). */
  readonly fd: number;
  readonly #events: Uint8Array<ArrayBuffer>;
  readonly #view: DataView;
  readonly #n: number;
  /** Bit i set: fd i was reported by the last wait (at most 31 fds). */
  #ready = 0;

  constructor(fds: readonly number[]) {
    if (fds.length === 0 || fds.length > 31) throw new RangeError("EPoller: 1 to 31 fds");
    const ep = libc.epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) throw new SyscallError("epoll_create1", errno());
    this.fd = ep;
    this.#n = fds.length;
    this.#events = new Uint8Array(EV * fds.length);
    this.#view = new DataView(this.#events.buffer);
    const ev = new Uint8Array(EV);
    const v = new DataView(ev.buffer);
    fds.forEach((fd, i) => {
      // Level-triggered: a drain that stops early (a read limit) finds the fd ready again.
      v.setUint32(0, EPOLLIN, true);
      v.setUint32(EV_DATA, i, true); // data: the fd's index
      if (libc.epoll_ctl(ep, EPOLL_CTL_ADD, fd, ev) < 0) {
        const code = errno();
        libc.close(ep);
        throw new SyscallError("epoll_ctl", code);
      }
    });
  }

  /** Waits up to `timeoutMs` (-1 forever): number of ready fds, 0 on timeout, negative errno on error. */
  wait(timeoutMs: number): number {
    const r = libc.epoll_wait(this.fd, this.#events, this.#n, timeoutMs);
    let ready = 0;
    for (let k = 0; k < r; k++) ready |= 1 << this.#view.getUint32(k * EV + EV_DATA, true);
    this.#ready = ready;
    return r < 0 ? -errno() : r;
  }

  /** True when fd `i` was reported ready (readable, error or hang-up: a read will tell) by the last wait. */
  readable(i: number): boolean {
    return (this.#ready & (1 << i)) !== 0;
  }

  /** Closes the epoll instance (not the fds it watched). */
  close(): void {
    libc.close(this.fd);
  }
}
