/**
 * The mDNS responder (RFC 6762) on the node's bridge: answers questions for service names on
 * 224.0.0.251 / ff02::fb port 5353, joined on the bridge only. Multicast questions get a multicast
 * answer; questions with the QU bit, and one-shot queries from an ordinary port (§6.7), get a
 * unicast answer. Names it does not know, and names outside the suffix, get no answer (mDNS has no
 * negative answers); nothing is forwarded. Only senders in the instance subnet (or the bridge's
 * link-local scope) are answered.
 *
 * @example
 * ```ts
 * import { TranslationTable } from "../table/mod.ts";
 * import { NameResolver } from "./resolver.ts";
 * const table = new TranslationTable();
 * const resolver = new NameResolver({ suffix: "local", ttl: 5, table: () => table });
 * const m = await MdnsResponder.start({ bridge4: "10.18.0.65", bridgeName: "goProxyBridge", resolver, allowed: () => true });
 * await m.close();
 * ```
 */
import { Buffer } from "node:buffer";
import { dnsCodec, loadDnsCodec } from "./codec.ts";
import type { Answer, DecodedPacket, Question } from "dns-packet";
import {
  formatIPv4,
  formatIPv6,
  MSG_TRUNC,
  openMulticastUdp,
  parseIPv4,
  parseIPv6,
  type RecvBatch,
  SendBatch,
  type UdpSocket,
} from "../../ffi/udp.ts";
import { libc } from "../../ffi/libc.ts";
import { logger } from "../log.ts";
import { parseName } from "./names.ts";
import type { NameResolver } from "./resolver.ts";
import { RateLimiter } from "./server.ts";
import { UdpLoop } from "./udp_loop.ts";

const log = logger("mdns");

/** mDNS group addresses and port. */
export const MDNS_V4 = "224.0.0.251";
export const MDNS_V6 = "ff02::fb";
export const MDNS_PORT = 5353;
/** Legacy (one-shot) unicast answers carry at most this TTL (RFC 6762 §6.7). */
const LEGACY_TTL = 10;

/** Options of {@link MdnsResponder.start}. */
export interface MdnsOptions {
  bridge4: string;
  /** Bridge interface name (v6 membership and scope). */
  bridgeName: string;
  resolver: NameResolver;
  allowed: (ip: string) => boolean;
  /** Also answer on ff02::fb (default true). */
  v6?: boolean;
  /** Packets per second per sender (default 200). */
  rateLimit?: number;
  /** The receive loop to join (shared with the DNS server); default: one of its own. */
  loop?: UdpLoop;
}

/** Where an answer goes: the asker (unicast) or the group. */
interface Peer {
  family: 4 | 6;
  addr4: number;
  addr6: Uint8Array;
  scope: number;
  port: number;
}

const GROUP4 = parseIPv4("224.0.0.251");
const GROUP6 = parseIPv6("ff02::fb");
/** Largest answer we send (RFC 6762 §17 allows up to 9000 bytes). */
const ANSWER_MAX = 9000;

/** Counters of the responder. */
export interface MdnsStats {
  questions: number;
  answered: number;
  malformed: number;
  refusedClients: number;
  rateLimited: number;
}

/** One question as asked over mDNS: the question (class IN) and whether its QU bit was set. */
export function mdnsQuestion(q: Question): { q: Question; qu: boolean } | undefined {
  const c = q.class as string | undefined;
  // dns-packet leaves the QU bit in the class: IN|QU decodes as "UNKNOWN_32769".
  if (c === undefined || c === "IN") return { q: { ...q, class: "IN" }, qu: false };
  if (c === "UNKNOWN_32769") return { q: { ...q, class: "IN" }, qu: true };
  return undefined;
}

/** The responder. */
export class MdnsResponder {
  readonly stats: MdnsStats = { questions: 0, answered: 0, malformed: 0, refusedClients: 0, rateLimited: 0 };
  readonly #o: MdnsOptions;
  readonly #limiter: RateLimiter;
  readonly #loop: UdpLoop;
  readonly #ownLoop: boolean;
  readonly #ifindex: number;
  readonly #sb = new SendBatch(1, ANSWER_MAX);
  #closed = false;

  private constructor(o: MdnsOptions) {
    this.#o = o;
    this.#limiter = new RateLimiter(o.rateLimit ?? 200);
    this.#loop = o.loop ?? new UdpLoop({ prepare: loadDnsCodec });
    this.#ownLoop = o.loop === undefined;
    this.#ifindex = libc.if_nametoindex(new TextEncoder().encode(o.bridgeName + "\0"));
  }

  /** Joins the groups on the bridge; a family that cannot be joined is logged and skipped. */
  static start(o: MdnsOptions): Promise<MdnsResponder> {
    const m = new MdnsResponder(o);
    m.#open(4);
    if (o.v6 !== false) m.#open(6);
    return Promise.resolve(m);
  }

  #open(family: 4 | 6): void {
    const group = family === 4 ? MDNS_V4 : MDNS_V6;
    try {
      // Bound to the bridge (SO_BINDTODEVICE): nothing from the underlay reaches it. The IPv4 socket is
      // bound to the group address too, so unicast to port 5353 of the bridge address is not answered.
      const sock = openMulticastUdp({
        group,
        port: MDNS_PORT,
        ifname: this.#o.bridgeName,
        bindGroup: family === 4,
        nonBlocking: true,
      });
      this.#loop.add(sock, (s, rb, n) => this.#onBatch(s, rb, n));
      log.info("mDNS responder listening", { group, bridge: this.#o.bridgeName });
    } catch (e) {
      log.warn(`mDNS (IPv${family}) unavailable`, { error: String(e) });
    }
  }

  /** Takes a batch: checks and copies each datagram out (the batch is reused), answers asynchronously. */
  #onBatch(sock: UdpSocket, rb: RecvBatch, n: number): void {
    if (this.#closed) return;
    for (let i = 0; i < n; i++) {
      const fam = rb.families[i] === 4 ? 4 : 6;
      const ip = fam === 4 ? formatIPv4(rb.addrs4[i]) : formatIPv6(rb.addrs6, i * 16);
      // Link-local senders only from the bridge itself (their scope is the interface they came in on).
      const ok = this.#o.allowed(ip) ||
        (fam === 6 && /^fe[89ab]/i.test(ip) && rb.scopes[i] === this.#ifindex);
      if (!ok) {
        this.stats.refusedClients++;
        continue;
      }
      if (!this.#limiter.take(ip)) {
        this.stats.rateLimited++;
        continue;
      }
      if (rb.msgFlags[i] & MSG_TRUNC) {
        this.stats.malformed++;
        continue;
      }
      const msg = Buffer.from(rb.bufs[i].slice(0, rb.sizes[i]));
      const from: Peer = {
        family: fam,
        addr4: rb.addrs4[i],
        addr6: rb.addrs6.slice(i * 16, i * 16 + 16),
        scope: rb.scopes[i],
        port: rb.ports[i],
      };
      this.#onMessage(sock, msg, from).catch((e) => log.warn("mDNS answer failed", { error: String(e) }));
    }
  }

  async #onMessage(sock: UdpSocket, msg: Buffer, from: Peer): Promise<void> {
    let p: DecodedPacket;
    try {
      p = dnsCodec().decode(msg);
    } catch {
      this.stats.malformed++;
      return;
    }
    if (p.type !== "query" || (p.questions ?? []).length === 0) return;
    const legacy = from.port !== MDNS_PORT;
    const unicastAnswers: Answer[] = [];
    const multicastAnswers: Answer[] = [];
    const asked: Question[] = [];
    for (const raw of (p.questions ?? []).slice(0, 16)) {
      this.stats.questions++;
      const mq = mdnsQuestion(raw);
      if (!mq) continue;
      const form = parseName(mq.q.name, this.#o.resolver.suffix).form;
      if (form === "outside" || form === "invalid") continue; // never forward, never deny
      const r = await this.#o.resolver.resolve(mq.q);
      if (r.rcode !== "NOERROR" || r.answers.length === 0) continue;
      asked.push(mq.q);
      for (const a of r.answers) {
        const ttl = legacy
          ? Math.min(LEGACY_TTL, "ttl" in a ? a.ttl ?? 0 : 0)
          : ("ttl" in a ? a.ttl : undefined);
        const rec = { ...a, ttl, ...(legacy ? {} : { flush: true }) } as Answer;
        (legacy || mq.qu ? unicastAnswers : multicastAnswers).push(rec);
      }
    }
    const flags = dnsCodec().AUTHORITATIVE_ANSWER;
    if (unicastAnswers.length > 0) {
      // Legacy one-shot queries get the id and question back (§6.7); QU answers look like multicast ones.
      const out = legacy
        ? dnsCodec().encode({
          type: "response",
          id: p.id ?? 0,
          flags,
          questions: asked,
          answers: unicastAnswers,
        })
        : dnsCodec().encode({ type: "response", id: 0, flags, answers: unicastAnswers });
      if (this.#send(sock, out, from)) this.stats.answered++;
    }
    if (multicastAnswers.length > 0) {
      const out = dnsCodec().encode({ type: "response", id: 0, flags, answers: multicastAnswers });
      const group: Peer = sock.family === 4
        ? { family: 4, addr4: GROUP4, addr6: GROUP6, scope: 0, port: MDNS_PORT }
        : { family: 6, addr4: 0, addr6: GROUP6, scope: this.#ifindex, port: MDNS_PORT };
      if (this.#send(sock, out, group)) this.stats.answered++;
    }
  }

  /** Sends one datagram (synchronously: the one-slot batch is free between sends). */
  #send(sock: UdpSocket, out: Uint8Array, to: Peer): boolean {
    if (this.#closed || sock.fd < 0 || out.length > ANSWER_MAX) return false;
    const sb = this.#sb;
    sb.bufs[0].set(out);
    sb.sizes[0] = out.length;
    if (to.family === 4) sb.setDst4(0, to.addr4, to.port);
    else sb.setDst6(0, to.addr6, 0, to.port, to.scope);
    return sock.sendBatch(sb, 1) === 1;
  }

  /** Leaves the groups and closes the sockets (with its own loop; a shared loop's owner closes that). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ownLoop) await this.#loop.close();
  }
}
