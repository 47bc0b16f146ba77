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
import dgram from "node:dgram";
import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";
import type { Answer, DecodedPacket, Question } from "dns-packet";
import { logger } from "../log.ts";
import { parseName } from "./names.ts";
import type { NameResolver } from "./resolver.ts";
import { RateLimiter } from "./server.ts";

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
}

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
  readonly #socks: dgram.Socket[] = [];
  readonly #limiter: RateLimiter;

  private constructor(o: MdnsOptions) {
    this.#o = o;
    this.#limiter = new RateLimiter(o.rateLimit ?? 200);
  }

  /** Joins the groups on the bridge; a family that cannot be joined is logged and skipped. */
  static async start(o: MdnsOptions): Promise<MdnsResponder> {
    const m = new MdnsResponder(o);
    await m.#open("udp4").catch((e) => log.warn("mDNS (IPv4) unavailable", { error: String(e) }));
    if (o.v6 !== false) {
      await m.#open("udp6").catch((e) => log.warn("mDNS (IPv6) unavailable", { error: String(e) }));
    }
    return m;
  }

  #open(type: "udp4" | "udp6"): Promise<void> {
    const o = this.#o;
    const sock = dgram.createSocket({ type, reuseAddr: true });
    const group = type === "udp4" ? MDNS_V4 : MDNS_V6;
    return new Promise((resolve, reject) => {
      const failed = (e: Error) => {
        try {
          sock.close();
        } catch { /* already closed */ }
        reject(e);
      };
      sock.once("error", failed);
      // Bound to the group address: unicast to port 5353 on the underlay never reaches this socket.
      sock.bind(MDNS_PORT, type === "udp4" ? MDNS_V4 : "::", () => {
        try {
          if (type === "udp4") {
            sock.addMembership(group, o.bridge4);
            sock.setMulticastInterface(o.bridge4);
          } else {
            sock.addMembership(group, `::%${o.bridgeName}`);
            sock.setMulticastInterface(`::%${o.bridgeName}`);
          }
          sock.setMulticastTTL(255);
          sock.setMulticastLoopback(false);
        } catch (e) {
          sock.close();
          reject(e);
          return;
        }
        sock.removeListener("error", failed);
        sock.on("error", (e: Error) => log.warn("mDNS socket error", { error: e.message }));
        sock.on(
          "message",
          (msg: Buffer, rinfo: dgram.RemoteInfo) => void this.#onMessage(sock, type, msg, rinfo),
        );
        this.#socks.push(sock);
        log.info("mDNS responder listening", { group, bridge: o.bridgeName });
        resolve();
      });
    });
  }

  #admitted(address: string): boolean {
    const [ip, scope] = address.split("%");
    if (this.#o.allowed(ip)) return true;
    // Link-local senders only from the bridge's own scope.
    return /^fe80:/i.test(ip) && scope === this.#o.bridgeName;
  }

  async #onMessage(
    sock: dgram.Socket,
    type: "udp4" | "udp6",
    msg: Buffer,
    rinfo: dgram.RemoteInfo,
  ): Promise<void> {
    if (!this.#admitted(rinfo.address)) {
      this.stats.refusedClients++;
      return;
    }
    if (!this.#limiter.take(rinfo.address)) {
      this.stats.rateLimited++;
      return;
    }
    let p: DecodedPacket;
    try {
      p = dnsPacket.decode(msg);
    } catch {
      this.stats.malformed++;
      return;
    }
    if (p.type !== "query" || (p.questions ?? []).length === 0) return;
    const legacy = rinfo.port !== MDNS_PORT;
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
    const flags = dnsPacket.AUTHORITATIVE_ANSWER;
    if (unicastAnswers.length > 0) {
      // Legacy one-shot queries get the id and question back (§6.7); QU answers look like multicast ones.
      const out = legacy
        ? dnsPacket.encode({
          type: "response",
          id: p.id ?? 0,
          flags,
          questions: asked,
          answers: unicastAnswers,
        })
        : dnsPacket.encode({ type: "response", id: 0, flags, answers: unicastAnswers });
      sock.send(out, rinfo.port, rinfo.address);
      this.stats.answered++;
    }
    if (multicastAnswers.length > 0) {
      const out = dnsPacket.encode({ type: "response", id: 0, flags, answers: multicastAnswers });
      sock.send(out, MDNS_PORT, type === "udp4" ? MDNS_V4 : `${MDNS_V6}%${this.#o.bridgeName}`);
      this.stats.answered++;
    }
  }

  /** Leaves the groups and closes the sockets. */
  async close(): Promise<void> {
    await Promise.all(this.#socks.map((s) =>
      new Promise<void>((r) => {
        try {
          s.close(() => r());
        } catch {
          r();
        }
      })
    ));
    this.#socks.length = 0;
  }
}
