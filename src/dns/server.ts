/**
 * The node's unicast DNS server: UDP and TCP on the bridge addresses (v4 and v6), answering only
 * clients in the node's instance subnet and the node itself, with a per-client rate limit. Malformed
 * packets are dropped and counted; UDP answers larger than the client allows (512 bytes, or its EDNS
 * size) are truncated with TC so the client retries over TCP. Wire format: npm `dns-packet`.
 *
 * UDP runs on the project's FFI sockets (nonblocking, `recvmmsg`/`sendmmsg` batches of
 * {@link UDP_BATCH}): each wake-up drains what is queued, answers every table hit of the batch at once
 * and sends them with one `sendmmsg`; only misses and forwarded names wait (their answers go out
 * when they settle). Between drains the loop sleeps in `poll` on Deno's blocking thread pool, so the
 * main isolate never blocks. TCP uses `Deno.listen`.
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
import { Buffer } from "node:buffer";
import { dnsCodec, loadDnsCodec } from "./codec.ts";
import type { Answer, DecodedPacket, Packet, Question } from "dns-packet";
import { formatIPv6, MSG_TRUNC, openUdp, type RecvBatch, SendBatch, type UdpSocket } from "../../ffi/udp.ts";
import { UDP_BATCH, UdpLoop } from "./udp_loop.ts";
import { logger } from "../log.ts";
import { type NameResolver, optRecord, type Resolution } from "./resolver.ts";
import { AnswerCache } from "./answer_cache.ts";

const log = logger("dns");

/** Options of {@link DnsServer.start}. */
export interface DnsServerOptions {
  /** Addresses to listen on (the bridge's v4 and v6 address). */
  addresses: readonly string[];
  port: number;
  resolver: NameResolver;
  /** Whether a client address may ask (instance subnet, the node itself). */
  allowed: (ip: string) => boolean;
  /** The same for an IPv4 address as a uint32 (saves formatting it per packet); default via `allowed`. */
  allowed4?: (addr: number) => boolean;
  /** Queries per second per client (bucket of the same size). */
  rateLimit: number;
  /** The receive loop to join (shared with the mDNS responder); default: one of its own. */
  loop?: UdpLoop;
}

/** Counters of the server. */
export interface DnsServerStats {
  queriesUdp: number;
  queriesTcp: number;
  malformed: number;
  refusedClients: number;
  rateLimited: number;
  truncated: number;
  /** UDP queries answered from the cache of encoded answers. */
  cacheHits: number;
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
/** Largest UDP answer we send (EDNS sizes are capped to it). */
const UDP_ANSWER_MAX = 4096;
const UDP_RCVBUF = 1 << 20;
/** Encoded answers kept for repeated queries. */
const ANSWER_CACHE = 1024;

/** A per-client token bucket (bounded number of clients). */
export class RateLimiter {
  readonly #rate: number;
  readonly #buckets = new Map<string | number, { tokens: number; at: number }>();
  constructor(perSecond: number) {
    this.#rate = perSecond;
  }
  /** True when `client` (an address as text, or an IPv4 address as a uint32) may send one more query now. */
  take(client: string | number, now = performance.now()): boolean {
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

/** A decoded query, ready to be answered (see {@link parseQuery}). */
export interface ParsedQuery {
  readonly id: number;
  /** The RD bit of the query (echoed). */
  readonly rd: number;
  readonly question: Question;
  /** The client's EDNS UDP size, or undefined without an OPT record. */
  readonly ednsSize: number | undefined;
}

/**
 * Decodes a query: the query to answer, an immediate answer (FORMERR, NOTIMP), or undefined when the
 * packet is dropped (malformed, not a query; counted in `stats.malformed`).
 */
export function parseQuery(buf: Uint8Array, stats?: DnsServerStats): ParsedQuery | Uint8Array | undefined {
  let q: DecodedPacket & { opcode?: string };
  try {
    q = dnsCodec().decode(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength));
  } catch {
    if (stats) stats.malformed++;
    return undefined;
  }
  if (q.type !== "query") {
    if (stats) stats.malformed++;
    return undefined;
  }
  const questions = q.questions ?? [];
  const rd = q.flags !== undefined ? q.flags & dnsCodec().RECURSION_DESIRED : 0;
  const id = q.id ?? 0;
  if (q.opcode !== "QUERY" || questions.length !== 1) {
    const rcode = q.opcode !== "QUERY" ? RCODE.NOTIMP : RCODE.FORMERR;
    return dnsCodec().encode({ type: "response", id, questions: questions.slice(0, 1), flags: rd | rcode });
  }
  const opt = (q.additionals ?? []).find((a) => a.type === "OPT") as { udpPayloadSize?: number } | undefined;
  const ednsSize = opt ? opt.udpPayloadSize ?? 512 : undefined;
  const question = questions[0];
  // Only strings and numbers are kept: nothing refers to `buf` (a reused receive slot) afterwards.
  return { id, rd, question: { name: question.name, type: question.type, class: question.class }, ednsSize };
}

/**
 * The answer to a parsed query. `maxUdp` undefined = TCP (no size limit but 65535); over UDP an
 * answer larger than the client allows (512, or its EDNS size up to `maxUdp`) is cut to header and
 * question with TC set.
 */
export function encodeAnswer(
  p: ParsedQuery,
  r: Resolution,
  maxUdp: number | undefined,
  stats?: DnsServerStats,
): Uint8Array {
  const base = { type: "response" as const, id: p.id, questions: [p.question] };
  let flags = p.rd | dnsCodec().RECURSION_AVAILABLE | (RCODE[r.rcode] ?? RCODE.SERVFAIL);
  if (r.authoritative) flags |= dnsCodec().AUTHORITATIVE_ANSWER;
  if (r.truncated) flags |= dnsCodec().TRUNCATED_RESPONSE; // the upstream's answer is partial
  const additionals: Answer[] = p.ednsSize !== undefined ? [optRecord(1232)] : [];
  const pkt: Packet = { ...base, flags, answers: r.answers, authorities: r.authorities, additionals };
  let out: Uint8Array;
  try {
    out = dnsCodec().encode(pkt);
  } catch {
    // An upstream record we cannot re-encode: fail that question only.
    return dnsCodec().encode({ ...base, flags: p.rd | RCODE.SERVFAIL });
  }
  const limit = maxUdp === undefined
    ? 65535
    : Math.max(512, Math.min(maxUdp, p.ednsSize !== undefined ? Math.min(p.ednsSize, 4096) : 512));
  if (out.length > limit) {
    if (stats && maxUdp !== undefined) stats.truncated++;
    // Truncated: header and question only, TC set; the client retries over TCP.
    return dnsCodec().encode({ ...base, flags: flags | dnsCodec().TRUNCATED_RESPONSE, additionals });
  }
  return out;
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
  await loadDnsCodec();
  const p = parseQuery(buf, stats);
  if (p === undefined || p instanceof Uint8Array) return p;
  return encodeAnswer(p, await resolver.resolve(p.question), maxUdp, stats);
}

let prepared: Promise<void> | undefined;

/**
 * Loads the DNS codec and runs one made-up query through decoding and encoding, so the first
 * client's query does not pay for compiling that code (measured: tens of ms on a busy machine).
 * Done when the node is first asked a name (not at start: an idle node carries no DNS codec). Once.
 */
export function prepareDnsServer(suffix: string): Promise<void> {
  return prepared ??= loadDnsCodec().then(() => warmUp(suffix));
}

function warmUp(suffix: string): void {
  const q = dnsCodec().encode({
    type: "query",
    id: 0,
    flags: dnsCodec().RECURSION_DESIRED,
    questions: [{ name: `warm-up.${suffix}`, type: "A", class: "IN" }],
    additionals: [optRecord(1232)],
  });
  const p = parseQuery(q);
  if (p === undefined || p instanceof Uint8Array) return;
  const answer: Answer = { name: p.question.name, type: "A", ttl: 1, class: "IN", data: "192.0.2.1" };
  encodeAnswer(p, {
    rcode: "NOERROR",
    answers: [answer],
    authorities: [],
    authoritative: true,
    source: "none",
  }, 512);
}

/** Where a deferred UDP answer goes (copied out of the receive batch). */
interface ReplyTo {
  family: number;
  addr4: number;
  addr6: Uint8Array;
  scope: number;
  port: number;
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
    cacheHits: 0,
  };
  readonly #o: DnsServerOptions;
  readonly #udp: UdpSocket[] = [];
  readonly #loop: UdpLoop;
  readonly #ownLoop: boolean;
  readonly #tcp: Deno.TcpListener[] = [];
  readonly #conns = new Set<Deno.TcpConn>();
  readonly #limiter: RateLimiter;
  readonly #cache = new AnswerCache(ANSWER_CACHE);
  readonly #allowed4: (addr: number) => boolean;
  readonly #bound = new Set<string>();
  readonly #retries = new Set<ReturnType<typeof setTimeout>>();
  /** Shared by every socket: a batch is received, answered and sent with no await in between. */
  #sb: SendBatch | undefined;
  #closed = false;

  private constructor(o: DnsServerOptions) {
    this.#o = o;
    this.#limiter = new RateLimiter(o.rateLimit);
    this.#loop = o.loop ?? new UdpLoop({ prepare: () => prepareDnsServer(o.resolver.suffix) });
    this.#ownLoop = o.loop === undefined;
    this.#allowed4 = o.allowed4 ??
      ((a) => o.allowed(`${a >>> 24}.${(a >>> 16) & 0xff}.${(a >>> 8) & 0xff}.${a & 0xff}`));
  }

  /**
   * Listens on every address (UDP and TCP). An address that cannot be bound yet (an IPv6 address
   * still tentative while the bridge has no carrier, a port in use) is retried every second in the
   * background; {@link listening} tells which are bound.
   */
  static start(o: DnsServerOptions): Promise<DnsServer> {
    const s = new DnsServer(o);
    for (const addr of o.addresses) s.#bind(addr, true);
    return Promise.resolve(s);
  }

  /** Addresses bound (UDP and TCP). */
  get listening(): string[] {
    return [...this.#bound];
  }

  #bind(addr: string, first: boolean): void {
    if (this.#closed) return;
    let udp: UdpSocket | undefined;
    try {
      udp = openUdp({
        bindAddr: addr,
        port: this.#o.port,
        nonBlocking: true,
        gso: false,
        rcvbuf: UDP_RCVBUF,
      });
      this.#listenTcp(addr);
      this.#udp.push(udp);
      this.#sb ??= new SendBatch(UDP_BATCH, UDP_ANSWER_MAX);
      this.#loop.add(udp, (sock, rb, n) => this.#answerBatch(sock, rb, n));
      this.#bound.add(addr);
      log.info("DNS server listening", {
        address: addr,
        port: this.#o.port,
        suffix: this.#o.resolver.suffix,
      });
    } catch (e) {
      // A failed bind (UDP or TCP) leaves nothing open, or every retry would leak a socket.
      udp?.close();
      if (first) {
        log.warn("DNS server cannot listen yet; retrying", {
          address: addr,
          port: this.#o.port,
          error: e instanceof Error ? e.message : String(e),
        });
      }
      const t = setTimeout(() => {
        this.#retries.delete(t);
        this.#bind(addr, false);
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

  /** Answers the `n` datagrams of the receive batch: hits at once (one sendmmsg), the rest when they settle. */
  #answerBatch(sock: UdpSocket, rb: RecvBatch, n: number): void {
    if (this.#closed) return;
    const sb = this.#sb!;
    const table = this.#o.resolver.table; // unchanged during the batch (no await in it)
    let out = 0;
    for (let i = 0; i < n; i++) {
      let ok: boolean;
      if (rb.families[i] === 4) {
        const a = rb.addrs4[i];
        ok = this.#allowed4(a);
        if (!ok) this.stats.refusedClients++;
        else if (!(ok = this.#limiter.take(a))) this.stats.rateLimited++;
      } else {
        ok = this.#admit(formatIPv6(rb.addrs6, i * 16));
      }
      if (!ok) continue; // no answer at all: no open resolver, no amplification
      this.stats.queriesUdp++;
      if (rb.msgFlags[i] & MSG_TRUNC) {
        this.stats.malformed++;
        continue;
      }
      const qbuf = rb.bufs[i], len = rb.sizes[i];
      const hit = this.#cache.get(qbuf, len, table);
      if (hit !== undefined) {
        const slot = sb.bufs[out];
        slot.set(hit.bytes);
        slot[0] = qbuf[0]; // the asker's id
        slot[1] = qbuf[1];
        sb.sizes[out] = hit.bytes.length;
        sb.replyTo(out, rb, i);
        out++;
        this.stats.cacheHits++;
        if (hit.truncated) this.stats.truncated++;
        this.#o.resolver.replay(hit.question, hit.resolution);
        continue;
      }
      const p = parseQuery(qbuf.subarray(0, len), this.stats);
      if (p === undefined) continue;
      let answer: Uint8Array;
      if (p instanceof Uint8Array) answer = p;
      else {
        const r = this.#o.resolver.resolveSync(p.question);
        if (r === undefined) {
          this.#defer(sock, p, {
            family: rb.families[i],
            addr4: rb.addrs4[i],
            addr6: rb.addrs6.slice(i * 16, i * 16 + 16),
            scope: rb.scopes[i],
            port: rb.ports[i],
          });
          continue;
        }
        answer = encodeAnswer(p, r, UDP_ANSWER_MAX, this.stats);
        this.#cache.set(qbuf, len, table, {
          bytes: new Uint8Array(answer),
          question: p.question,
          resolution: r,
        });
      }
      sb.bufs[out].set(answer);
      sb.sizes[out] = answer.length;
      sb.replyTo(out, rb, i);
      out++;
    }
    if (out > 0) sock.sendBatch(sb, out); // a full send buffer drops the rest: the clients retry
  }

  /** Answers a query that waits for the control plane or an upstream. */
  #defer(sock: UdpSocket, p: ParsedQuery, to: ReplyTo): void {
    this.#o.resolver.resolve(p.question).then((r) => {
      if (this.#closed || sock.fd < 0) return;
      const answer = encodeAnswer(p, r, UDP_ANSWER_MAX, this.stats);
      // Between batches (no await inside one), so the shared send batch is free.
      const sb = this.#sb!;
      sb.bufs[0].set(answer);
      sb.sizes[0] = answer.length;
      if (to.family === 4) sb.setDst4(0, to.addr4, to.port);
      else sb.setDst6(0, to.addr6, 0, to.port, to.scope);
      sock.sendBatch(sb, 1);
    }).catch((e) => log.warn("DNS answer failed", { error: String(e) }));
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
    await prepareDnsServer(this.#o.resolver.suffix);
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
    // The loop owns the UDP sockets: a shared one closes them when its owner (NodeDns) closes it.
    if (this.#ownLoop) await this.#loop.close();
    this.#udp.length = 0;
  }
}
