/**
 * The node's side of endpoint discovery: asks the control plane's reflector (reflect.ts) from the
 * tunnel socket — so the answer is the tunnel's public `ip:port` — every `intervalMs` (25 s, which
 * also keeps a NAT mapping open), every `retryMs` (3 s) while unanswered, and accepts only the reply
 * that echoes the outstanding nonce from the reflector's own address and port. Pure state: the data
 * path sends the bytes {@link ReflectClient.due} returns and feeds replies to {@link ReflectClient.onReply}.
 *
 * @example
 * ```ts
 * import { ReflectClient } from "./reflect_client.ts";
 * const c = new ReflectClient({ addr4: 0xc6336401, port: 50104, nodeId: "worker1" });
 * const req = c.due(0); // a REFLECT to send to 198.51.100.1:50104
 * console.log(req?.length);
 * ```
 * @module
 */
import { decodeReflectReply, encodeReflect } from "./reflect.ts";

/** Options of a {@link ReflectClient}. */
export interface ReflectClientOptions {
  /** The reflector's IPv4 address (uint32) and UDP port. */
  addr4: number;
  port: number;
  /** This node's worker id (sent so the control plane knows whose endpoint it saw). */
  nodeId: string;
  /** Refresh interval once answered (25 000 ms) and retry interval while unanswered (3 000 ms). */
  intervalMs?: number;
  retryMs?: number;
}

/** The node's endpoint discovery state (see the module). */
export class ReflectClient {
  readonly addr4: number;
  readonly port: number;
  /** The endpoint last observed, and when (ms). */
  observedIp: string | undefined = undefined;
  observedPort = 0;
  observedAt: number = -Infinity;
  /** Requests sent, replies accepted, replies refused (wrong source or nonce, malformed). */
  sent = 0;
  accepted = 0;
  refused = 0;
  readonly #nodeId: string;
  readonly #interval: number;
  readonly #retry: number;
  #next = 0;
  #hi = 0;
  #lo = 0;
  #outstanding = false;

  constructor(opts: ReflectClientOptions) {
    this.addr4 = opts.addr4 >>> 0;
    this.port = opts.port;
    this.#nodeId = opts.nodeId;
    this.#interval = opts.intervalMs ?? 25_000;
    this.#retry = opts.retryMs ?? 3_000;
  }

  /** The request to send now, or undefined when none is due. */
  due(now: number): Uint8Array | undefined {
    if (now < this.#next) return undefined;
    const r = crypto.getRandomValues(new Uint32Array(2));
    this.#hi = r[0];
    this.#lo = r[1];
    this.#outstanding = true;
    this.#next = now + this.#retry;
    this.sent++;
    return encodeReflect({ nonceHi: this.#hi, nonceLo: this.#lo, nodeId: this.#nodeId });
  }

  /**
   * A REFLECT_REPLY datagram from `src4:srcPort`. Returns true when it was accepted and the observed
   * endpoint changed (the caller reports it).
   */
  onReply(buf: Uint8Array, off: number, len: number, src4: number, srcPort: number, now: number): boolean {
    const r = decodeReflectReply(buf, off, len);
    if (
      r === undefined || !this.#outstanding || src4 >>> 0 !== this.addr4 || srcPort !== this.port ||
      r.nonceHi !== this.#hi || r.nonceLo !== this.#lo
    ) {
      this.refused++;
      return false;
    }
    this.#outstanding = false;
    this.accepted++;
    this.#next = now + this.#interval;
    const changed = r.ip !== this.observedIp || r.port !== this.observedPort;
    this.observedIp = r.ip;
    this.observedPort = r.port;
    this.observedAt = now;
    return changed;
  }

  /** Ask again now (e.g. the node's addresses changed). */
  refresh(now: number): void {
    this.#next = now;
  }
}
