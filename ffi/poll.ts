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
import { errno, libc } from "./libc.ts";

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
