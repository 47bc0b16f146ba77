/**
 * The node's name resolver: one question in, the records and where they came from out. Service names
 * are answered from the translation table; a job the table lacks is asked of the control plane by name
 * (one query per name however many clients ask at once), then answered from the table again; other
 * names go to the upstream resolvers. Used by the unicast DNS server, the mDNS responder and
 * `netmanager dns lookup`.
 *
 * @example
 * ```ts
 * import { TranslationTable } from "../table/mod.ts";
 * const table = new TranslationTable();
 * const r = new NameResolver({ suffix: "local", ttl: 5, table: () => table });
 * const res = await r.resolve({ name: "web.default.shop.prod.local", type: "A", class: "IN" });
 * res.rcode; // "NXDOMAIN" (no control plane, not in the table)
 * ```
 */
import type { Answer, Question } from "dns-packet";
import { answerName, type NameQType, type NameTable, parseName } from "./names.ts";
import type { Upstream } from "./upstream.ts";
import { logEnabled, logger } from "../log.ts";

const log = logger("dns");

/** How the control plane answered a by-name query. */
export type JobLookup = "found" | "empty" | "unknown" | "unavailable";

/** The control plane, as the resolver needs it. */
export interface NameSource {
  /** Table query by name; on "found" the job is in the table afterwards. */
  lookupJob(job: string): Promise<JobLookup>;
  /** Table query by ServiceIP; true when the table now holds it. */
  resolveIp(ip: string): Promise<boolean>;
  /** A name of `job` was answered from the table: keeps the node's interest in the job alive. */
  touch?(job: string): void;
}

/** Where an answer came from. */
export type AnswerSource = "table" | "control" | "negative" | "upstream" | "upstream-cache" | "none";

/** A resolution. */
export interface Resolution {
  readonly rcode: "NOERROR" | "NXDOMAIN" | "SERVFAIL" | "REFUSED" | string;
  readonly answers: Answer[];
  readonly authorities: Answer[];
  /** True for names under the suffix and our reverse names (we are the authority). */
  readonly authoritative: boolean;
  readonly source: AnswerSource;
  /**
   * Set when the answer follows from the table's contents alone (not from the clock, the control
   * plane's presence or an upstream): it stays right until the table changes.
   */
  readonly fromTable?: true;
  /** The job whose interest this answer keeps alive (a name of the job answered from the table). */
  readonly job?: string;
  /** An upstream's answer that is only part of the whole (TC passed on). */
  readonly truncated?: true;
}

/** Options of {@link NameResolver}. */
export interface ResolverOptions {
  /** Normalized suffix (see normalizeSuffix). */
  suffix: string;
  /** TTL of answers and of negative answers (seconds). */
  ttl: number;
  /** The current table (undefined before the data plane runs). */
  table: () => NameTable | undefined;
  /** The control plane (undefined in standalone mode / before registration). */
  source?: () => NameSource | undefined;
  /** Forwarder for names outside the suffix (undefined: REFUSED). */
  upstream?: Upstream;
  /** Whether an address is in the ServiceIP ranges (reverse names of those are ours). */
  isServiceIp?: (ip: string) => boolean;
}

/** Counters by question type and result. */
export interface ResolverStats {
  /** `type|rcode|source` → count. */
  answered: Map<string, number>;
  controlQueries: number;
  negativeHits: number;
}

const NEG_CAP = 10000;
const COUNTED_TYPES = new Set([
  "A",
  "AAAA",
  "PTR",
  "ANY",
  "TXT",
  "SRV",
  "MX",
  "CNAME",
  "NS",
  "SOA",
  "HTTPS",
  "SVCB",
]);

/** The resolver. See the module documentation. */
export class NameResolver {
  readonly stats: ResolverStats = { answered: new Map(), controlQueries: 0, negativeHits: 0 };
  readonly #o: ResolverOptions;
  /** Jobs the control plane did not know (or knew without instances) → until (ms) and which. */
  readonly #negative = new Map<string, { until: number; kind: "unknown" | "empty" }>();
  readonly #misses = new Map<string, Promise<JobLookup>>();

  constructor(opts: ResolverOptions) {
    this.#o = opts;
  }

  /** The suffix served. */
  get suffix(): string {
    return this.#o.suffix;
  }

  /** Resolves one question. Never rejects. */
  async resolve(q: Question): Promise<Resolution> {
    const now = this.resolveSync(q);
    if (now !== undefined) return now;
    const r = await this.#resolve(q).catch((): Resolution => ({
      rcode: "SERVFAIL",
      answers: [],
      authorities: [],
      authoritative: false,
      source: "none",
    }));
    this.#count(q, r);
    return r;
  }

  /**
   * Resolves `q` at once when that needs no waiting (table hits, names the table says do not exist,
   * negative-cache hits, refusals) and counts it like {@link resolve}; undefined when the answer
   * needs the control plane or an upstream (then call {@link resolve}). Lets the UDP server answer a
   * whole batch of hits without a promise per query.
   */
  resolveSync(q: Question): Resolution | undefined {
    let r: Resolution | undefined;
    try {
      r = this.#resolveNow(q);
    } catch {
      r = { rcode: "SERVFAIL", answers: [], authorities: [], authoritative: false, source: "none" };
    }
    if (r !== undefined) this.#count(q, r);
    return r;
  }

  /**
   * Accounts for `r`, an answer to `q` given again from a cache of encoded answers: counts it and
   * keeps its job's interest alive, as resolving it would have.
   */
  replay(q: Question, r: Resolution): void {
    if (r.job !== undefined) this.#o.source?.()?.touch?.(r.job);
    this.#count(q, r);
  }

  /** The table answers come from now (for caches of them). */
  get table(): NameTable | undefined {
    return this.#o.table();
  }

  #count(q: Question, r: Resolution): void {
    // Bounded label values: an attacker picks the type, not the metric's cardinality.
    const type = COUNTED_TYPES.has(q.type as string) ? q.type : "OTHER";
    const k = `${type}|${r.rcode}|${r.source}`;
    this.stats.answered.set(k, (this.stats.answered.get(k) ?? 0) + 1);
  }

  /** The synchronous part of {@link #resolve}; undefined when it would have to wait. */
  #resolveNow(q: Question): Resolution | undefined {
    const o = this.#o;
    if ((q.class ?? "IN") !== "IN" && q.class !== "ANY") return this.#refused();
    const parsed = parseName(q.name, o.suffix);
    const t = o.table();
    if (t === undefined) {
      if (parsed.form === "outside") return undefined;
      return { rcode: "SERVFAIL", answers: [], authorities: [], authoritative: false, source: "none" };
    }
    const a = answerName(t, parsed, qtypeOf(q), o.suffix, q.name, o.isServiceIp);
    switch (a.kind) {
      case "records":
        if (parsed.form === "service" || parsed.form === "closest" || parsed.form === "instance") {
          o.source?.()?.touch?.(parsed.job);
          return { ...this.#records(a.records, "table"), fromTable: true, job: parsed.job };
        }
        return { ...this.#records(a.records, "table"), fromTable: true };
      case "nxdomain":
        return { ...this.#nx("table"), fromTable: true };
      case "outside":
        return o.upstream ? undefined : this.#refused();
      case "miss-ip":
        return o.source?.() ? undefined : this.#nx("table");
      case "miss": {
        const neg = this.#negative.get(a.job);
        if (neg && Date.now() < neg.until) {
          this.stats.negativeHits++;
          return neg.kind === "empty" ? this.#records([], "negative") : this.#nx("negative");
        }
        return o.source?.() ? undefined : this.#nx("table");
      }
    }
  }

  /** Answers only from the table (no control plane, no upstream); undefined when that is not enough. */
  resolveLocal(q: Question): Resolution | undefined {
    const table = this.#o.table();
    if (!table) return undefined;
    const parsed = parseName(q.name, this.#o.suffix);
    const a = answerName(table, parsed, qtypeOf(q), this.#o.suffix, q.name, this.#o.isServiceIp);
    if (a.kind === "records") return this.#records(a.records, "table");
    if (a.kind === "nxdomain") return this.#nx("table");
    return undefined;
  }

  async #resolve(q: Question): Promise<Resolution> {
    const o = this.#o;
    if ((q.class ?? "IN") !== "IN" && q.class !== "ANY") return this.#refused();
    const parsed = parseName(q.name, o.suffix);
    const qtype = qtypeOf(q);
    const ask = () => {
      const t = o.table();
      return t ? answerName(t, parsed, qtype, o.suffix, q.name, o.isServiceIp) : undefined;
    };
    let a = ask();
    if (a === undefined) {
      // No table yet: nothing of ours resolves, but other names can still be forwarded.
      if (parsed.form === "outside") return await this.#forward(q);
      return { rcode: "SERVFAIL", answers: [], authorities: [], authoritative: false, source: "none" };
    }
    switch (a.kind) {
      case "records":
        if (parsed.form === "service" || parsed.form === "closest" || parsed.form === "instance") {
          o.source?.()?.touch?.(parsed.job);
        }
        return this.#records(a.records, "table");
      case "nxdomain":
        return this.#nx("table");
      case "outside":
        return await this.#forward(q);
      case "miss-ip": {
        const src = o.source?.();
        if (!src) return this.#nx("table");
        this.stats.controlQueries++;
        await src.resolveIp(a.ip);
        a = ask();
        if (a?.kind === "records") return this.#records(a.records, "control");
        return this.#nx("control");
      }
      case "miss": {
        const job = a.job;
        const neg = this.#negative.get(job);
        if (neg && Date.now() < neg.until) {
          this.stats.negativeHits++;
          return neg.kind === "empty" ? this.#records([], "negative") : this.#nx("negative");
        }
        if (neg) this.#negative.delete(job);
        const src = o.source?.();
        if (!src) return this.#nx("table");
        const got = await this.#lookup(src, job);
        if (got === "found") {
          a = ask();
          if (a?.kind === "records") return this.#records(a.records, "control");
          if (a?.kind === "nxdomain") return this.#nx("control");
          // Gone again already: treat as empty.
          return this.#records([], "control");
        }
        if (got === "unavailable") {
          return { rcode: "SERVFAIL", answers: [], authorities: [], authoritative: false, source: "control" };
        }
        this.#remember(job, got);
        return got === "empty" ? this.#records([], "control") : this.#nx("control");
      }
    }
  }

  #lookup(src: NameSource, job: string): Promise<JobLookup> {
    let p = this.#misses.get(job);
    if (!p) {
      this.stats.controlQueries++;
      const t0 = performance.now();
      p = src.lookupJob(job).catch((): JobLookup => "unavailable").finally(() => {
        this.#misses.delete(job);
        if (logEnabled("debug")) {
          log.debug("name looked up in the control plane", { job, ms: +(performance.now() - t0).toFixed(2) });
        }
      });
      this.#misses.set(job, p);
    }
    return p;
  }

  #remember(job: string, kind: "unknown" | "empty"): void {
    if (this.#o.ttl <= 0) return;
    if (this.#negative.size >= NEG_CAP) this.#negative.delete(this.#negative.keys().next().value!);
    this.#negative.set(job, { until: Date.now() + this.#o.ttl * 1000, kind });
  }

  async #forward(q: Question): Promise<Resolution> {
    const up = this.#o.upstream;
    if (!up) return this.#refused();
    const r = await up.resolve(q);
    if (!r) {
      return { rcode: "SERVFAIL", answers: [], authorities: [], authoritative: false, source: "upstream" };
    }
    return {
      rcode: r.rcode,
      answers: r.answers,
      authorities: r.authorities,
      authoritative: false,
      source: r.cached ? "upstream-cache" : "upstream",
      ...(r.truncated ? { truncated: true as const } : {}),
    };
  }

  #records(
    records: readonly { name: string; type: "A" | "AAAA" | "PTR"; data: string }[],
    source: AnswerSource,
  ) {
    const ttl = this.#o.ttl;
    const answers: Answer[] = records.map((r) => ({
      name: r.name,
      type: r.type,
      ttl,
      class: "IN",
      data: r.data,
    }));
    return {
      rcode: "NOERROR",
      answers,
      // NOERROR without data: the SOA tells caches how long to remember it (RFC 2308).
      authorities: answers.length === 0 ? [this.#soa()] : [],
      authoritative: true,
      source,
    };
  }

  #nx(source: AnswerSource): Resolution {
    return { rcode: "NXDOMAIN", answers: [], authorities: [this.#soa()], authoritative: true, source };
  }

  #refused(): Resolution {
    return { rcode: "REFUSED", answers: [], authorities: [], authoritative: false, source: "none" };
  }

  #soa(): Answer {
    const s = this.#o.suffix;
    const ttl = this.#o.ttl;
    return {
      name: s,
      type: "SOA",
      ttl,
      class: "IN",
      data: {
        mname: `ns.${s}`,
        rname: `hostmaster.${s}`,
        serial: 1,
        refresh: 3600,
        retry: 600,
        expire: 86400,
        minimum: ttl,
      },
    };
  }
}

/** The question type as {@link answerName} wants it. */
export function qtypeOf(q: Question): NameQType {
  const t = q.type as string;
  return t === "A" || t === "AAAA" || t === "PTR" || t === "ANY" ? t : "other";
}

/** An EDNS OPT record announcing `size` bytes of UDP payload. */
export function optRecord(size: number): Answer {
  return {
    type: "OPT",
    name: ".",
    udpPayloadSize: size,
    extendedRcode: 0,
    ednsVersion: 0,
    flags: 0,
    flag_do: false,
    options: [],
  };
}
