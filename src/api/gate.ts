/**
 * The guard in front of the API server: `Deno.serve` has no request-size limit, no timeout for a
 * request that arrives slowly (or never completes) and no connection cap, so the public unix
 * socket is served here and every connection is relayed byte for byte to the HTTP server on a
 * private socket. The gate only follows request framing (end of the head, Content-Length) to apply
 * limits; parsing stays with the HTTP server. Per connection:
 *
 * - a request (head and body) must arrive within `requestTimeoutMs` of its first byte → else 408;
 * - a connection with no request in progress is closed after `idleTimeoutMs`;
 * - a head over `maxHeadBytes` → 431; a body over `maxBodyBytes` (by Content-Length) → 413 before
 *   any of it is read; chunked bodies → 411 (the NodeEngine always sends a length);
 * - at most `maxConnections` at once: a new connection evicts the oldest one that is not waiting
 *   for an answer (slow or idle clients cannot lock `/status` out), or gets 503 when every
 *   connection is waiting for one.
 *
 * @example
 * ```ts
 * const gate = startGate({ path: "/etc/netmanager/netmanager.sock", upstream: "/run/nm/inner.sock" });
 * await gate.close();
 * ```
 */
import { logger } from "../log.ts";

const log = logger("api");

/** Limits of the gate (defaults in {@link DEFAULT_LIMITS}). */
export interface GateLimits {
  maxBodyBytes: number;
  maxHeadBytes: number;
  requestTimeoutMs: number;
  idleTimeoutMs: number;
  maxConnections: number;
}

/** 1 MB bodies, 16 KiB heads, 10 s per request, 30 s idle, 128 connections. */
export const DEFAULT_LIMITS: GateLimits = {
  maxBodyBytes: 1 << 20,
  maxHeadBytes: 16 << 10,
  requestTimeoutMs: 10_000,
  idleTimeoutMs: 30_000,
  maxConnections: 128,
};

/** Options for {@link startGate}. */
export interface GateOptions {
  /** The public socket path (created here). */
  path: string;
  /** The HTTP server's private socket. */
  upstream: string;
  limits?: Partial<GateLimits>;
}

/** A running gate. */
export interface Gate {
  /** Connections open now. */
  readonly connections: number;
  close(): Promise<void>;
}

const HEAD_END = new Uint8Array([13, 10, 13, 10]);

/** Index just past the first CRLFCRLF in `buf[0..len)`, or -1. */
export function headEnd(buf: Uint8Array, len: number): number {
  outer: for (let i = 0; i + 4 <= len; i++) {
    for (let j = 0; j < 4; j++) if (buf[i + j] !== HEAD_END[j]) continue outer;
    return i + 4;
  }
  return -1;
}

/** What the gate needs from a request head: its body length, or why it refuses it. */
export function bodyLength(head: string): { length: number } | { refuse: 400 | 411 } {
  if (/^transfer-encoding\s*:/im.test(head)) return { refuse: 411 };
  const all = [...head.matchAll(/^content-length\s*:\s*(\S*)\s*$/gim)].map((m) => m[1]);
  if (all.length === 0) return { length: 0 };
  if (new Set(all).size !== 1 || !/^\d{1,15}$/.test(all[0])) return { refuse: 400 };
  return { length: Number(all[0]) };
}

const REASONS: Record<number, string> = {
  400: "Bad Request",
  408: "Request Timeout",
  411: "Length Required",
  413: "Content Too Large",
  431: "Request Header Fields Too Large",
  503: "Service Unavailable",
};

function errorResponse(status: number, error: string): Uint8Array {
  const body = JSON.stringify({ error });
  return new TextEncoder().encode(
    `HTTP/1.1 ${status} ${REASONS[status]}\r\ncontent-type: application/json\r\n` +
      `content-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
  );
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
}

type Phase = "idle" | "head" | "body" | "waiting";

/** One client connection and its relay to the HTTP server. */
class Relay {
  readonly client: Deno.UnixConn;
  upstream: Deno.UnixConn | undefined;
  phase: Phase = "idle";
  closed = false;
  readonly #limits: GateLimits;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #head = new Uint8Array(0);
  #bodyLeft = 0;
  #draining = false;

  constructor(client: Deno.UnixConn, limits: GateLimits) {
    this.client = client;
    this.#limits = limits;
  }

  /** Runs until either side closes. */
  async run(upstreamPath: string): Promise<void> {
    this.#setPhase("idle");
    try {
      this.upstream = await Deno.connect({ transport: "unix", path: upstreamPath });
    } catch (e) {
      await this.refuse(503, `API server unreachable: ${(e as Error).message}`);
      return;
    }
    await Promise.all([this.#fromClient(), this.#fromServer()]);
    this.close();
  }

  #setPhase(p: Phase): void {
    this.phase = p;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (p === "idle") {
      this.#timer = setTimeout(() => this.close(), this.#limits.idleTimeoutMs);
    } else if (p === "head") {
      const ms = this.#limits.requestTimeoutMs;
      this.#timer = setTimeout(
        () => void this.refuse(408, `request not complete within ${ms} ms`),
        ms,
      );
    }
    // "body" keeps the deadline of its head: only "head" starts one.
  }

  /**
   * Answers with an error of the gate's own and closes the connection. With `drainMs` (only from
   * the client reader) the rest of what the client sends is read and dropped for that long first:
   * a client still writing its body then reads the answer instead of a connection reset.
   */
  async refuse(status: number, error: string, drainMs = 0): Promise<void> {
    if (this.closed) return;
    log.warn("API request refused", { status, error });
    // Only when no answer of the server is under way (a half-written response would be corrupted).
    if (this.phase !== "waiting") {
      await Promise.race([
        writeAll(this.client, errorResponse(status, error)).catch(() => {}),
        new Promise((r) => setTimeout(r, 1000)),
      ]);
    }
    if (drainMs > 0) {
      this.#draining = true;
      try {
        this.upstream?.close();
      } catch {
        // already closed
      }
      this.upstream = undefined;
      const timer = setTimeout(() => this.close(), drainMs);
      const sink = new Uint8Array(64 * 1024);
      try {
        while (!this.closed && (await this.client.read(sink)) !== null) {
          // dropped
        }
      } catch {
        // closed by the timer
      }
      clearTimeout(timer);
    }
    this.close();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    for (const c of [this.client, this.upstream]) {
      try {
        c?.close();
      } catch {
        // already closed
      }
    }
  }

  async #fromClient(): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await this.client.read(buf);
        if (n === null) break;
        if (!(await this.#feed(buf.subarray(0, n)))) return;
      }
      await this.upstream!.closeWrite().catch(() => {});
    } catch {
      this.close();
    }
  }

  /** Follows the framing of client bytes and relays them; false once the connection is refused. */
  async #feed(data: Uint8Array): Promise<boolean> {
    while (data.length > 0) {
      if (this.phase === "body") {
        const take = Math.min(this.#bodyLeft, data.length);
        await writeAll(this.upstream!, data.subarray(0, take));
        this.#bodyLeft -= take;
        data = data.subarray(take);
        if (this.#bodyLeft === 0) this.#setPhase("waiting");
        continue;
      }
      if (this.phase !== "head") this.#setPhase("head");
      const joined = new Uint8Array(this.#head.length + data.length);
      joined.set(this.#head);
      joined.set(data, this.#head.length);
      const end = headEnd(joined, joined.length);
      if (end < 0) {
        if (joined.length > this.#limits.maxHeadBytes) {
          await this.refuse(431, `request head over ${this.#limits.maxHeadBytes} bytes`);
          return false;
        }
        this.#head = joined;
        return true;
      }
      if (end > this.#limits.maxHeadBytes) {
        await this.refuse(431, `request head over ${this.#limits.maxHeadBytes} bytes`);
        return false;
      }
      const head = new TextDecoder("latin1").decode(joined.subarray(0, end));
      const len = bodyLength(head);
      if ("refuse" in len) {
        await this.refuse(
          len.refuse,
          len.refuse === 411 ? "chunked bodies are not accepted: send Content-Length" : "bad Content-Length",
        );
        return false;
      }
      if (len.length > this.#limits.maxBodyBytes) {
        await this.refuse(
          413,
          `request body of ${len.length} bytes is over the ${this.#limits.maxBodyBytes} limit`,
          2000,
        );
        return false;
      }
      this.#head = new Uint8Array(0);
      await writeAll(this.upstream!, joined.subarray(0, end));
      data = joined.subarray(end);
      this.#bodyLeft = len.length;
      if (len.length === 0) this.#setPhase("waiting");
      else this.phase = "body";
    }
    return true;
  }

  async #fromServer(): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await this.upstream!.read(buf);
        if (n === null) break;
        await writeAll(this.client, buf.subarray(0, n));
        if (this.phase === "waiting") this.#setPhase("idle");
      }
    } catch {
      // either side went away
    }
    if (!this.#draining) this.close();
  }
}

/** Serves the public socket `opts.path` and relays to `opts.upstream` within the limits. */
export function startGate(opts: GateOptions): Gate {
  const limits = { ...DEFAULT_LIMITS, ...opts.limits };
  const listener = Deno.listen({ transport: "unix", path: opts.path });
  const relays = new Set<Relay>();
  const loop = (async () => {
    for (;;) {
      let conn: Deno.UnixConn;
      try {
        conn = await listener.accept();
      } catch {
        return; // listener closed
      }
      const relay = new Relay(conn, limits);
      if (relays.size >= limits.maxConnections) {
        // Evict the oldest connection that is not waiting for an answer (Sets keep insertion order).
        const victim = [...relays].find((r) => r.phase !== "waiting");
        if (victim) {
          void victim.refuse(503, "connection closed to make room (too many connections)");
          relays.delete(victim);
        } else {
          void relay.refuse(503, `too many connections (${limits.maxConnections} waiting for answers)`);
          continue;
        }
      }
      relays.add(relay);
      relay.run(opts.upstream).catch(() => relay.close()).finally(() => relays.delete(relay));
    }
  })();
  return {
    get connections() {
      return relays.size;
    },
    close: async () => {
      try {
        listener.close();
      } catch {
        // already closed
      }
      for (const r of relays) r.close();
      await loop;
    },
  };
}
