/**
 * The control plane's endpoint reflector (`netmanager control`, UDP port 50104 by default): answers
 * each valid REFLECT request (reflect.ts) from a registered node with the source address and port it
 * came from, and records them as that node's observed endpoint ({@link ObservedEndpoints}). Bounded:
 * requests from ids that are not registered nodes get no answer and change nothing, each source
 * address has a token bucket (10 per second), and the per-source state is capped.
 *
 * @example
 * ```ts
 * import { ObservedEndpoints, Reflector } from "./reflector.ts";
 * const seen = new ObservedEndpoints();
 * const r = await Reflector.start({ port: 0, host: "127.0.0.1", isNode: () => true, observed: seen });
 * console.log(r.port);
 * r.stop();
 * ```
 * @module
 */
import dgram from "node:dgram";
import { decodeReflect, encodeReflectReply } from "./reflect.ts";
import { logger } from "../log.ts";

const log = logger("reflector");

/** A node's endpoint as the reflector saw it. */
export interface ObservedEndpoint {
  readonly ip: string;
  readonly port: number;
  /** Wall-clock ms of the last request. */
  readonly at: number;
}

/** Observed endpoints per worker id (soft state: nodes refresh it; entries expire after `ttlMs`). */
export class ObservedEndpoints {
  readonly #byNode = new Map<string, ObservedEndpoint>();
  readonly #ttlMs: number;

  constructor(ttlMs = 120_000) {
    this.#ttlMs = ttlMs;
  }

  /** Records `nodeId`'s endpoint; true when it changed (or is new). */
  set(nodeId: string, ip: string, port: number, now: number = Date.now()): boolean {
    const had = this.get(nodeId, now);
    this.#byNode.set(nodeId, { ip, port, at: now });
    return had === undefined || had.ip !== ip || had.port !== port;
  }

  /** `nodeId`'s observed endpoint, unless expired. */
  get(nodeId: string, now: number = Date.now()): ObservedEndpoint | undefined {
    const e = this.#byNode.get(nodeId);
    if (e === undefined) return undefined;
    if (now - e.at > this.#ttlMs) {
      this.#byNode.delete(nodeId);
      return undefined;
    }
    return e;
  }

  /** Forgets a node (removed from the cluster). */
  delete(nodeId: string): void {
    this.#byNode.delete(nodeId);
  }
}

/** Options of {@link Reflector.start}. */
export interface ReflectorOptions {
  /** UDP port (0: any free port). */
  port: number;
  /** Bind address (default 0.0.0.0). */
  host?: string;
  /** Whether `nodeId` is a registered node (only those are answered). */
  isNode: (nodeId: string) => boolean;
  /** Where observed endpoints go. */
  observed: ObservedEndpoints;
  /** Called when a node's observed endpoint changed. */
  onChange?: (nodeId: string, ep: ObservedEndpoint) => void;
  /** Requests per second per source address (10; also the burst). */
  ratePerSource?: number;
}

const MAX_SOURCES = 4096;

/** The reflector (see the module). */
export class Reflector {
  /** Requests answered, refused (unknown node, rate), malformed. */
  answered = 0;
  refused = 0;
  malformed = 0;
  readonly #sock: dgram.Socket;
  readonly #opts: ReflectorOptions;
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  #port = 0;

  private constructor(sock: dgram.Socket, opts: ReflectorOptions) {
    this.#sock = sock;
    this.#opts = opts;
  }

  /** Binds the socket and starts answering. */
  static start(opts: ReflectorOptions): Promise<Reflector> {
    const host = opts.host ?? "0.0.0.0";
    const sock = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
    const r = new Reflector(sock, opts);
    return new Promise((resolve, reject) => {
      sock.once("error", reject);
      sock.bind(opts.port, host, () => {
        sock.off("error", reject);
        sock.on("error", (e) => log.warn("reflector socket error", { error: String(e) }));
        r.#port = sock.address().port;
        sock.on("message", (msg, rinfo) => r.#handle(msg, rinfo.address, rinfo.port));
        resolve(r);
      });
    });
  }

  /** The bound port. */
  get port(): number {
    return this.#port;
  }

  #take(ip: string, now: number): boolean {
    const rate = this.#opts.ratePerSource ?? 10;
    let b = this.#buckets.get(ip);
    if (b === undefined) {
      if (this.#buckets.size >= MAX_SOURCES) this.#buckets.clear(); // bounded; a flood resets it
      b = { tokens: rate, at: now };
      this.#buckets.set(ip, b);
    }
    b.tokens = Math.min(rate, b.tokens + (now - b.at) * rate / 1000);
    b.at = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  #handle(msg: Uint8Array, ip: string, port: number): void {
    const req = decodeReflect(msg, 0, msg.length);
    if (req === undefined) {
      this.malformed++;
      return;
    }
    const now = Date.now();
    if (!this.#take(ip, now) || !this.#opts.isNode(req.nodeId)) {
      this.refused++;
      return;
    }
    const addr = ip.startsWith("::ffff:") ? ip.slice(7) : ip;
    if (this.#opts.observed.set(req.nodeId, addr, port, now)) {
      const ep = this.#opts.observed.get(req.nodeId, now)!;
      log.info("node endpoint observed", { node: req.nodeId, endpoint: `${addr}:${port}` });
      this.#opts.onChange?.(req.nodeId, ep);
    }
    const reply = encodeReflectReply({ nonceHi: req.nonceHi, nonceLo: req.nonceLo, ip: addr, port });
    this.#sock.send(reply, port, ip);
    this.answered++;
  }

  /** Closes the socket. */
  stop(): void {
    try {
      this.#sock.close();
    } catch { /* closed */ }
  }
}
