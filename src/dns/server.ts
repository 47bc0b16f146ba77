/**
 * The node's unicast DNS server: UDP and TCP on the bridge addresses (v4 and v6), answering only
 * clients in the node's instance subnet and the node itself, with a per-client rate limit. Malformed
 * packets are dropped and counted; UDP answers larger than the client allows (512 bytes, or its EDNS
 * size) are truncated with TC so the client retries over TCP. Wire format: npm `dns-packet`.
 *
 * @example
 * ```ts
 * import { TranslationTable } from "../table/mod.ts";
 * import { NameResolver } from "./resolver.ts";
 * const table = new TranslationTable();
 * const resolver = new NameResolver({ suffix: "local", ttl: 5, table: () => table });
 * const srv = await DnsServer.start({ addresses: ["10.18.0.65"], port: 53, resolver, allowed: () => true, rateLimit: 1000 });
 * await srv.close();
 * ```
 */
import dgram from "node:dgram";
import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";
import type { Answer, DecodedPacket, Packet, Question } from "dns-packet";
import { logger } from "../log.ts";
import { type NameResolver, optRecord } from "./resolver.ts";

const log = logger("dns");

/** Options of {@link DnsServer.start}. */
export interface DnsServerOptions {
  /** Addresses to listen on (the bridge's v4 and v6 address). */
  addresses: readonly string[];
  port: number;
  resolver: NameResolver;
  /** Whether a client address may ask (instance subnet, the node itself). */
  allowed: (ip: string) => boolean;
  /** Queries per second per client (bucket of the same size). */
  rateLimit: number;
}

/** Counters of the server. */
export interface DnsServerStats {
  queriesUdp: number;
  queriesTcp: number;
  malformed: number;
  refusedClients: number;
  rateLimited: number;
  truncated: number;
}

const RCODE: Record<string, number> = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
};
const MAX_TCP_CONNS = 64;
const TCP_IDLE_MS = 10_000;
const MAX_CLIENTS = 4096;

/** A per-client token bucket (bounded number of clients). */
export class RateLimiter {
  readonly #rate: number;
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  constructor(perSecond: number) {
    this.#rate = perSecond;
  }
  /** True when `client` may send one more query now. */
  take(client: string, now = performance.now()): boolean {
    let b = this.#buckets.get(client);
    if (!b) {
      if (this.#buckets.size >= MAX_CLIENTS) this.#buckets.delete(this.#buckets.keys().next().value!);
      b = { tokens: this.#rate, at: now };
      this.#buckets.set(client, b);
    }
    b.tokens = Math.min(this.#rate, b.tokens + ((now - b.at) / 1000) * this.#rate);
    b.at = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}

/**
 * The response to a query buffer, or undefined when the packet is dropped (malformed, not a query).
 * `maxUdp` undefined = TCP (no size limit but 65535).
 */
export async function respond(
  resolver: NameResolver,
  buf: Uint8Array,
  maxUdp: number | undefined,
  stats?: DnsServerStats,
): Promise<Uint8Array | undefined> {
  let q: DecodedPacket & { opcode?: string };
  try {
    q = dnsPacket.decode(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength));
  } catch {
    if (stats) stats.malformed++;
    return undefined;
  }
  if (q.type !== "query") {
    if (stats) stats.malformed++;
    return undefined;
  }
  const questions = q.questions ?? [];
  const rd = q.flags !== undefined ? q.flags & dnsPacket.RECURSION_DESIRED : 0;
  const base = { type: "response" as const, id: q.id ?? 0, questions };
  if (q.opcode !== "QUERY" || questions.length !== 1) {
    const rcode = q.opcode !== "QUERY" ? RCODE.NOTIMP : RCODE.FORMERR;
    return dnsPacket.encode({ ...base, questions: questions.slice(0, 1), flags: rd | rcode });
  }
  const question: Question = questions[0];
  const opt = (q.additionals ?? []).find((a) => a.type === "OPT") as { udpPayloadSize?: number } | undefined;
  const r = await resolver.resolve(question);
  let flags = rd | dnsPacket.RECURSION_AVAILABLE | (RCODE[r.rcode] ?? RCODE.SERVFAIL);
  if (r.authoritative) flags |= dnsPacket.AUTHORITATIVE_ANSWER;
  const additionals: Answer[] = opt ? [optRecord(1232)] : [];
  const pkt: Packet = { ...base, flags, answers: r.answers, authorities: r.authorities, additionals };
  let out: Uint8Array;
  try {
    out = dnsPacket.encode(pkt);
  } catch {
    // An upstream record we cannot re-encode: fail that question only.
    return dnsPacket.encode({ ...base, flags: rd | RCODE.SERVFAIL });
  }
  const limit = maxUdp === undefined
    ? 65535
    : Math.max(512, Math.min(maxUdp, opt ? Math.min(opt.udpPayloadSize ?? 512, 4096) : 512));
  if (out.length > limit) {
    if (stats && maxUdp !== undefined) stats.truncated++;
    // Truncated: header and question only, TC set; the client retries over TCP.
    return dnsPacket.encode({ ...base, flags: flags | dnsPacket.TRUNCATED_RESPONSE, additionals });
  }
  return out;
}

/** The running server. */
export class DnsServer {
  readonly stats: DnsServerStats = {
    queriesUdp: 0,
    queriesTcp: 0,
    malformed: 0,
    refusedClients: 0,
    rateLimited: 0,
    truncated: 0,
  };
  readonly #o: DnsServerOptions;
  readonly #udp: dgram.Socket[] = [];
  readonly #tcp: Deno.TcpListener[] = [];
  readonly #conns = new Set<Deno.TcpConn>();
  readonly #limiter: RateLimiter;
  readonly #bound = new Set<string>();
  readonly #retries = new Set<ReturnType<typeof setTimeout>>();
  #closed = false;

  private constructor(o: DnsServerOptions) {
    this.#o = o;
    this.#limiter = new RateLimiter(o.rateLimit);
  }

  /**
   * Listens on every address (UDP and TCP). An address that cannot be bound yet (an IPv6 address
   * still tentative while the bridge has no carrier, a port in use) is retried every second in the
   * background; {@link listening} tells which are bound.
   */
  static async start(o: DnsServerOptions): Promise<DnsServer> {
    const s = new DnsServer(o);
    for (const addr of o.addresses) await s.#bind(addr, true);
    return s;
  }

  /** Addresses bound (UDP and TCP). */
  get listening(): string[] {
    return [...this.#bound];
  }

  async #bind(addr: string, first: boolean): Promise<void> {
    if (this.#closed) return;
    let udp: dgram.Socket | undefined;
    try {
      udp = await this.#listenUdp(addr);
      if (this.#closed) {
        // close() ran while this retry was binding: nothing may be left open after it.
        this.#udp.splice(this.#udp.indexOf(udp), 1);
        udp.close();
        return;
      }
      this.#listenTcp(addr);
      this.#bound.add(addr);
      log.info("DNS server listening", {
        address: addr,
        port: this.#o.port,
        suffix: this.#o.resolver.suffix,
      });
    } catch (e) {
      if (udp) {
        this.#udp.splice(this.#udp.indexOf(udp), 1);
        udp.close();
      }
      if (first) {
        log.warn("DNS server cannot listen yet; retrying", {
          address: addr,
          port: this.#o.port,
          error: e instanceof Error ? e.message : String(e),
        });
      }
      const t = setTimeout(() => {
        this.#retries.delete(t);
        void this.#bind(addr, false);
      }, 1000);
      this.#retries.add(t);
    }
  }

  #admit(ip: string): boolean {
    if (!this.#o.allowed(ip)) {
      this.stats.refusedClients++;
      return false;
    }
    if (!this.#limiter.take(ip)) {
      this.stats.rateLimited++;
      return false;
    }
    return true;
  }

  #listenUdp(addr: string): Promise<dgram.Socket> {
    const sock = dgram.createSocket({ type: addr.includes(":") ? "udp6" : "udp4" });
    this.#udp.push(sock);
    sock.on("message", (msg: Buffer, rinfo: dgram.RemoteInfo) => {
      const ip = rinfo.address.replace(/^::ffff:/, "");
      if (!this.#admit(ip)) return; // no answer at all: no open resolver, no amplification
      this.stats.queriesUdp++;
      respond(this.#o.resolver, msg, 4096, this.stats).then((out) => {
        if (out && !this.#closed) sock.send(out, rinfo.port, rinfo.address);
      }).catch((e) => log.warn("DNS answer failed", { error: String(e) }));
    });
    return new Promise((resolve, reject) => {
      const failed = (e: Error) => {
        // A failed bind leaves the socket open: release it, or every retry would leak one.
        this.#udp.splice(this.#udp.indexOf(sock), 1);
        try {
          sock.close();
        } catch { /* already closed */ }
        reject(e);
      };
      sock.once("error", failed);
      sock.bind(this.#o.port, addr, () => {
        sock.removeListener("error", failed);
        sock.on("error", (e: Error) => log.warn("DNS UDP socket error", { error: e.message }));
        resolve(sock);
      });
    });
  }

  #listenTcp(addr: string): void {
    const l = Deno.listen({ hostname: addr, port: this.#o.port, transport: "tcp" });
    this.#tcp.push(l);
    (async () => {
      for await (const conn of l) {
        const ip = (conn.remoteAddr as Deno.NetAddr).hostname.replace(/^::ffff:/, "");
        if (this.#conns.size >= MAX_TCP_CONNS || !this.#o.allowed(ip)) {
          if (!this.#o.allowed(ip)) this.stats.refusedClients++;
          conn.close();
          continue;
        }
        this.#conns.add(conn);
        this.#serveTcp(conn, ip).finally(() => {
          this.#conns.delete(conn);
          try {
            conn.close();
          } catch { /* closed */ }
        });
      }
    })().catch(() => {});
  }

  async #serveTcp(conn: Deno.TcpConn, ip: string): Promise<void> {
    let buf = new Uint8Array(0);
    const chunk = new Uint8Array(65537);
    for (;;) {
      let idle: ReturnType<typeof setTimeout> | undefined;
      const n = await Promise.race([
        conn.read(chunk),
        new Promise<null>((r) => idle = setTimeout(() => r(null), TCP_IDLE_MS)),
      ]).catch(() => null);
      clearTimeout(idle);
      if (n === null || this.#closed) return;
      const next = new Uint8Array(buf.length + n);
      next.set(buf);
      next.set(chunk.subarray(0, n), buf.length);
      buf = next;
      while (buf.length >= 2) {
        const len = (buf[0] << 8) | buf[1];
        if (buf.length < 2 + len) break;
        const msg = buf.slice(2, 2 + len);
        buf = buf.slice(2 + len);
        if (!this.#admit(ip)) continue;
        this.stats.queriesTcp++;
        const out = await respond(this.#o.resolver, msg, undefined, this.stats);
        if (!out) return; // malformed over TCP: the stream cannot be trusted further
        const framed = new Uint8Array(out.length + 2);
        framed[0] = out.length >> 8;
        framed[1] = out.length & 0xff;
        framed.set(out, 2);
        let off = 0;
        while (off < framed.length) off += await conn.write(framed.subarray(off));
      }
      if (buf.length > 65537) return;
    }
  }

  /** Stops listening and closes open connections. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#retries) clearTimeout(t);
    for (const l of this.#tcp) {
      try {
        l.close();
      } catch { /* closed */ }
    }
    for (const c of this.#conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await Promise.all(this.#udp.map((s) =>
      new Promise<void>((r) => {
        try {
          s.close(() => r());
        } catch {
          r();
        }
      })
    ));
  }
}
