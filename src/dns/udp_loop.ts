/**
 * The receive loop of the node's DNS sockets (unicast server and mDNS responder) on the project's
 * FFI UDP sockets, in the main isolate: one `poll` over all of them sleeps on Deno's blocking thread
 * pool (one pool thread however many sockets), and each wake-up drains the readable sockets with
 * `recvmmsg` batches handed to their owners synchronously (an owner answers the whole batch before
 * the next receive reuses it). An eventfd brings the loop back when a socket is added or the loop
 * closes; the loop owns the sockets and closes them only after it has left `poll`.
 *
 * @example
 * ```ts
 * import { openUdp } from "../../ffi/udp.ts";
 * const loop = new UdpLoop();
 * loop.add(openUdp({ bindAddr: "127.0.0.1", port: 0, nonBlocking: true }), (sock, rb, n) => {
 *   for (let i = 0; i < n; i++) console.log(rb.sizes[i]);
 * });
 * await loop.close();
 * ```
 */
import { RecvBatch, type UdpSocket } from "../../ffi/udp.ts";
import { Poller } from "../../ffi/poll.ts";
import { EventFd } from "../../ffi/eventfd.ts";
import { logger } from "../log.ts";

const log = logger("dns");

/** Datagrams per `recvmmsg`. */
export const UDP_BATCH = 64;
/** Bytes per receive slot (longer datagrams arrive cut, `MSG_TRUNC`). */
export const UDP_SLOT = 4096;
/** Full batches drained from one socket per wake-up before the event loop gets a turn. */
const DRAIN_ROUNDS = 8;

/** Handles `n` received datagrams of `rb` (slots 0..n-1) from `sock`, synchronously. */
export type BatchHandler = (sock: UdpSocket, rb: RecvBatch, n: number) => void;

/** Options of a {@link UdpLoop}. */
export interface UdpLoopOptions {
  /**
   * Awaited once before the first datagram is read (datagrams wait in the socket meanwhile): loads
   * what the handlers need only when some socket is first asked something.
   */
  prepare?: () => Promise<unknown>;
}

/** See the module documentation. */
export class UdpLoop {
  readonly #socks: { sock: UdpSocket; handler: BatchHandler }[] = [];
  readonly #prepare: (() => Promise<unknown>) | undefined;
  #prepared: boolean;
  #wake: EventFd | undefined;
  #rb: RecvBatch | undefined;
  #loop: Promise<void> | undefined;
  #closed = false;

  constructor(opts: UdpLoopOptions = {}) {
    this.#prepare = opts.prepare;
    this.#prepared = !opts.prepare;
  }

  /** Serves `sock` (nonblocking) from now on; the loop closes it in {@link close}. */
  add(sock: UdpSocket, handler: BatchHandler): void {
    if (this.#closed) {
      sock.close();
      return;
    }
    this.#wake ??= new EventFd();
    this.#socks.push({ sock, handler });
    this.#loop ??= this.#run();
    this.#wake.signal();
  }

  /** Number of sockets served. */
  get size(): number {
    return this.#socks.length;
  }

  async #run(): Promise<void> {
    const wake = this.#wake!;
    const rb = this.#rb ??= new RecvBatch(UDP_BATCH, UDP_SLOT);
    let socks: { sock: UdpSocket; handler: BatchHandler }[] = [];
    let poller = new Poller([wake.fd]);
    let ready: boolean[] = [];
    while (!this.#closed) {
      if (socks.length !== this.#socks.length) {
        socks = [...this.#socks];
        poller = new Poller([wake.fd, ...socks.map((s) => s.sock.fd)]);
        // Drain new sockets once before sleeping (before preparation, poll tells when to start).
        ready = socks.map(() => this.#prepared);
      }
      if (!this.#prepared && ready.some(Boolean)) {
        await this.#prepare!().catch((e) =>
          log.error("DNS: preparing the receive path failed", { error: String(e) })
        );
        this.#prepared = true;
      }
      for (let k = 0; k < socks.length && !this.#closed; k++) {
        if (!ready[k]) continue;
        const { sock, handler } = socks[k];
        for (let round = 0; round < DRAIN_ROUNDS && !this.#closed; round++) {
          const n = sock.recvBatch(rb);
          if (n < 0) {
            log.warn("DNS UDP receive failed", { errno: -n });
            break;
          }
          if (n === 0) break;
          try {
            handler(sock, rb, n);
          } catch (e) {
            log.warn("DNS UDP batch failed", { error: String(e) });
          }
          if (n < UDP_BATCH) break;
        }
      }
      if (this.#closed) break;
      // Returns at once when more is queued: the event loop (MQTT, API, deferred answers) ran meanwhile.
      if ((await poller.waitAsync(-1)) < 0) {
        await new Promise((r) => setTimeout(r, 10));
        ready = socks.map(() => true);
        continue;
      }
      if (poller.readable(0)) wake.drain();
      ready = socks.map((_, k) => poller.readable(k + 1));
    }
  }

  /** Stops the loop, then closes every socket. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Let the loop leave poll before the fds are closed (no fd number reuse under a poll).
    this.#wake?.signal();
    await this.#loop;
    for (const s of this.#socks) s.sock.close();
    this.#socks.length = 0;
    this.#wake?.close();
    this.#wake = undefined;
  }
}
