/**
 * An eventfd to wake a Worker that sleeps in `poll()`: the main isolate signals it after posting a
 * message, the Worker sees it readable, drains it and returns to its event loop to take the
 * message. Without it a busy-polling Worker would have to yield to its event loop on a timer,
 * which adds a millisecond to packets that arrive meanwhile.
 *
 * @example
 * ```ts
 * import { Poller } from "./poll.ts";
 * declare const worker: Worker;
 *
 * // main isolate: create it, hand its fd to the Worker, signal after each message
 * const wake = new EventFd();
 * worker.postMessage({ wakeFd: wake.fd });
 * worker.postMessage({ type: "table" });
 * wake.signal();
 *
 * // Worker: wrap the fd, poll it with the packet fds, drain it and yield to take the message
 * const mine = new EventFd(wake.fd);
 * const poller = new Poller([mine.fd]);
 * if (poller.wait(50) > 0 && poller.readable(0)) {
 *   mine.drain();
 *   await new Promise((resolve) => setTimeout(resolve, 0));
 * }
 * ```
 */
import { errno, libc, SyscallError } from "./libc.ts";

const EFD_CLOEXEC = 0o2000000;
const EFD_NONBLOCK = 0o4000;

/** A non-blocking eventfd counter. */
export class EventFd {
  readonly fd: number;
  readonly #one = new Uint8Array(new BigUint64Array([1n]).buffer);
  readonly #scratch = new Uint8Array(8);

  /** Creates a new eventfd, or wraps an existing fd (from another thread). */
  constructor(fd?: number) {
    if (fd !== undefined) {
      this.fd = fd;
      return;
    }
    const r = libc.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (r < 0) throw new SyscallError("eventfd", errno());
    this.fd = r;
  }

  /** Wakes the reader (adds 1 to the counter). */
  signal(): void {
    libc.write(this.fd, this.#one, 8n);
  }

  /** Resets the counter (after a wake-up). */
  drain(): void {
    libc.read(this.fd, this.#scratch, 8n);
  }

  /** Closes the fd. */
  close(): void {
    libc.close(this.fd);
  }
}
