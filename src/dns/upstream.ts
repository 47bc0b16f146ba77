/**
 * Forwarding of names outside the service suffix to upstream resolvers over UDP, with a bounded cache
 * of answers (by name, type and class; kept for the answer's smallest TTL, at most 300 s).
 *
 * Each forward uses a fresh socket (random source port) and a random id, and accepts only an answer
 * from the resolver asked with that id and question: an off-path forger cannot fill the cache easily.
 *
 * @example
 * ```ts
 * const up = new Upstream({ servers: [{ ip: "192.0.2.53", port: 53 }] });
 * const r = await up.resolve({ name: "example.com", type: "A", class: "IN" });
 * r?.rcode; // "NOERROR"
 * ```
 */
import dgram from "node:dgram";
import net from "node:net";
import { Buffer } from "node:buffer";
import { dnsCodec, loadDnsCodec } from "./codec.ts";
import type { Answer, DecodedPacket, Question } from "dns-packet";
import { parseResolvConf, parseUpstreams, type UpstreamServer } from "./upstream_list.ts";
import { optRecord } from "./resolver.ts";

export { parseResolvConf, parseUpstreams, type UpstreamServer };

/** Options of {@link Upstream}. */
export interface UpstreamOptions {
  servers: readonly UpstreamServer[];
  /** Per-server timeout (ms), default 1500. */
  timeoutMs?: number;
  /** Cache capacity (answers), default 1000. */
  cacheSize?: number;
}

/** What an upstream answered (the parts we relay). */
export interface UpstreamAnswer {
  readonly rcode: string;
  readonly answers: Answer[];
  readonly authorities: Answer[];
  /** True when served from the cache. */
  readonly cached: boolean;
  /** The upstream's answer was cut (TC) and could not be had whole over TCP: pass TC on, never cache. */
  readonly truncated?: true;
}

/** Counters of the forwarder. */
export interface UpstreamStats {
  forwarded: number;
  cacheHits: number;
  failures: number;
  /** Sum and count of upstream round trips (ms), for the mean. */
  latencyMsSum: number;
  latencyCount: number;
}

interface Cached {
  until: number;
  rcode: string;
  answers: Answer[];
  authorities: Answer[];
}

const MAX_TTL = 300;
const NEG_TTL = 5;

/** The forwarder. */
export class Upstream {
  readonly stats: UpstreamStats = {
    forwarded: 0,
    cacheHits: 0,
    failures: 0,
    latencyMsSum: 0,
    latencyCount: 0,
  };
  readonly #servers: readonly UpstreamServer[];
  readonly #timeoutMs: number;
  readonly #cacheSize: number;
  readonly #cache = new Map<string, Cached>();
  readonly #inflight = new Map<string, Promise<UpstreamAnswer | undefined>>();

  constructor(opts: UpstreamOptions) {
    this.#servers = opts.servers;
    this.#timeoutMs = opts.timeoutMs ?? 1500;
    this.#cacheSize = opts.cacheSize ?? 1000;
  }

  /** Number of cached answers. */
  get cacheSize(): number {
    return this.#cache.size;
  }

  /** The answer to `q` (cache, else the servers in order), or undefined when none answered. */
  resolve(q: Question): Promise<UpstreamAnswer | undefined> {
    const key = `${q.name.toLowerCase()}|${q.type}|${q.class ?? "IN"}`;
    const c = this.#cache.get(key);
    if (c) {
      if (Date.now() < c.until) {
        this.stats.cacheHits++;
        return Promise.resolve({
          rcode: c.rcode,
          answers: c.answers,
          authorities: c.authorities,
          cached: true,
        });
      }
      this.#cache.delete(key);
    }
    let p = this.#inflight.get(key);
    if (!p) {
      p = this.#ask(q, key).finally(() => this.#inflight.delete(key));
      this.#inflight.set(key, p);
    }
    return p;
  }

  async #ask(q: Question, key: string): Promise<UpstreamAnswer | undefined> {
    await loadDnsCodec();
    for (const s of this.#servers) {
      this.stats.forwarded++;
      const t0 = performance.now();
      let r = await this.#askOne(s, q).catch(() => undefined);
      if (!r) continue;
      // A truncated UDP answer is partial: ask the same server over TCP for all of it.
      let truncated = false;
      if (r.flag_tc) {
        const whole = await this.#askOneTcp(s, q).catch(() => undefined);
        if (whole && !whole.flag_tc) r = whole;
        else truncated = true;
      }
      this.stats.latencyMsSum += performance.now() - t0;
      this.stats.latencyCount++;
      const rcode = r.rcode ?? "NOERROR";
      const answers = (r.answers ?? []).filter((a) => a.type !== "OPT");
      const authorities = r.authorities ?? [];
      if (truncated) return { rcode, answers, authorities, cached: false, truncated: true };
      if (rcode === "NOERROR" || rcode === "NXDOMAIN") {
        const ttls = [...answers, ...authorities].map((a) => ("ttl" in a ? a.ttl ?? 0 : 0));
        const ttl = Math.min(MAX_TTL, ttls.length ? Math.min(...ttls) : NEG_TTL);
        if (ttl > 0) {
          if (this.#cache.size >= this.#cacheSize) this.#cache.delete(this.#cache.keys().next().value!);
          this.#cache.set(key, { until: Date.now() + ttl * 1000, rcode, answers, authorities });
        }
      }
      return { rcode, answers, authorities, cached: false };
    }
    this.stats.failures++;
    return undefined;
  }

  /** One question over TCP (RFC 7766 framing), for answers too large for UDP. */
  #askOneTcp(s: UpstreamServer, q: Question): Promise<Reply | undefined> {
    const id = crypto.getRandomValues(new Uint16Array(1))[0];
    const query = dnsCodec().streamEncode({
      type: "query",
      id,
      flags: dnsCodec().RECURSION_DESIRED,
      questions: [q],
    });
    return new Promise((resolve) => {
      const sock = net.connect({ host: s.ip, port: s.port });
      let got = Buffer.alloc(0);
      const done = (r: Reply | undefined) => {
        clearTimeout(timer);
        sock.destroy();
        resolve(r);
      };
      const timer = setTimeout(() => done(undefined), this.#timeoutMs);
      sock.on("error", () => done(undefined));
      sock.on("connect", () => sock.write(query));
      sock.on("data", (chunk: Buffer) => {
        got = Buffer.concat([got, chunk]);
        if (got.length > 65537) return done(undefined);
        if (got.length < 2 || got.length < 2 + got.readUInt16BE(0)) return;
        done(matching(got.subarray(2, 2 + got.readUInt16BE(0)), id, q));
      });
      sock.on("end", () => done(undefined));
    });
  }

  #askOne(s: UpstreamServer, q: Question): Promise<Reply | undefined> {
    const v6 = s.ip.includes(":");
    const sock = dgram.createSocket(v6 ? "udp6" : "udp4");
    const id = crypto.getRandomValues(new Uint16Array(1))[0];
    const query = dnsCodec().encode({
      type: "query",
      id,
      flags: dnsCodec().RECURSION_DESIRED,
      questions: [q],
      additionals: [optRecord(1232)],
    });
    return new Promise((resolve) => {
      const done = (r: Reply | undefined) => {
        clearTimeout(timer);
        sock.removeAllListeners("message");
        try {
          sock.close();
        } catch { /* already closed */ }
        resolve(r);
      };
      const timer = setTimeout(() => done(undefined), this.#timeoutMs);
      sock.on("error", () => done(undefined));
      sock.on("message", (msg: Buffer, rinfo: dgram.RemoteInfo) => {
        if (rinfo.address !== s.ip || rinfo.port !== s.port) return;
        const p = matching(msg, id, q);
        if (p) done(p);
      });
      sock.send(query, s.port, s.ip, (err) => {
        if (err) done(undefined);
      });
    });
  }
}

type Reply = DecodedPacket & { rcode?: string; flag_tc?: boolean };

/** The decoded response if it answers query `id` for `q`'s name, else undefined. */
function matching(msg: Uint8Array, id: number, q: Question): Reply | undefined {
  let p: Reply;
  try {
    p = dnsCodec().decode(Buffer.from(msg)) as Reply;
  } catch {
    return undefined;
  }
  const pq = p.questions?.[0];
  if (p.id !== id || p.type !== "response" || !pq || pq.name.toLowerCase() !== q.name.toLowerCase()) {
    return undefined;
  }
  return p;
}
