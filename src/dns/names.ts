/**
 * Service names (pure): the DNS forms of Oakestra job names and their answers from a translation table.
 *
 * With suffix `local` and job `app.appns.service.servicens`:
 * - `service.servicens.app.appns.local` → the job's round-robin ServiceIPs (A/AAAA);
 * - `closest.service.servicens.app.appns.local` → its Closest ServiceIPs;
 * - `instance-N.service.servicens.app.appns.local` → the Instance IPs of instance N;
 * - the reverse names (`in-addr.arpa`, `ip6.arpa`) of ServiceIPs and Instance IPs → those names.
 *
 * Names are case-insensitive. A service name whose job is not in the table is a *miss* (the caller asks
 * the control plane); a known job without the asked record type is NOERROR with no records; a malformed
 * name under the suffix, or an instance number the job does not have, is NXDOMAIN.
 *
 * @example
 * ```ts
 * import { TranslationTable } from "../table/mod.ts";
 * const t = new TranslationTable();
 * const q = parseName("web.default.shop.prod.local", "local"); // { form: "service", job: "shop.prod.web.default" }
 * const a = answerName(t, q, "A", "local"); // { kind: "miss", job: "shop.prod.web.default" }
 * ```
 */
import { formatIPv4, formatIPv6, tryParseIPv4, tryParseIPv6 } from "../addr/mod.ts";
import { JOB_PART, type ServiceIpKind, type TableEntry } from "../table/entry.ts";
import type { ServiceGroup } from "../table/table.ts";

/** Default TTL of answers (seconds): short, so undeploys show quickly. */
export const DEFAULT_TTL = 5;

/** A parsed query name. */
export type ParsedName =
  /** `service.servicens.app.appns.<suffix>` (or with `closest.` in front). */
  | { readonly form: "service" | "closest"; readonly job: string }
  /** `instance-N.service.servicens.app.appns.<suffix>`. */
  | { readonly form: "instance"; readonly job: string; readonly instance: number }
  /** A reverse name of an IPv4/IPv6 address (canonical text). */
  | { readonly form: "reverse"; readonly ip: string }
  /** Under the suffix but no valid service name: NXDOMAIN. */
  | { readonly form: "invalid" }
  /** Not ours: forward it. */
  | { readonly form: "outside" };

/** Thrown for a suffix that is not a valid DNS name. */
export class NameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NameError";
  }
}

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const INSTANCE = /^instance-(0|[1-9][0-9]{0,8})$/;

/**
 * The canonical form of a suffix (lowercase, no leading/trailing dot); throws NameError when invalid.
 *
 * @example
 * ```ts
 * normalizeSuffix("Cluster.Local."); // "cluster.local"
 * ```
 */
export function normalizeSuffix(suffix: string): string {
  const s = suffix.toLowerCase().replace(/^\.+|\.+$/g, "");
  if (s === "" || s.length > 200 || !s.split(".").every((l) => LABEL.test(l))) {
    throw new NameError(`DNS suffix "${suffix}" is not a valid domain name`);
  }
  return s;
}

/** Lowercase name without the trailing dot. */
function canonicalName(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

/**
 * Parses a query name against `suffix` (already normalized). Case-insensitive.
 *
 * @example
 * ```ts
 * parseName("instance-2.Web.default.shop.prod.local.", "local"); // { form: "instance", job: "shop.prod.web.default", instance: 2 }
 * parseName("example.com", "local"); // { form: "outside" }
 * ```
 */
export function parseName(name: string, suffix: string): ParsedName {
  const n = canonicalName(name);
  if (n.endsWith(".in-addr.arpa") || n.endsWith(".ip6.arpa")) {
    const ip = parseReverse(n);
    return ip === undefined ? { form: "outside" } : { form: "reverse", ip };
  }
  if (n !== suffix && !n.endsWith(`.${suffix}`)) return { form: "outside" };
  const labels = n === suffix ? [] : n.slice(0, n.length - suffix.length - 1).split(".");
  if (labels.length === 0) return { form: "invalid" };
  let form: "service" | "closest" | "instance" = "service";
  let instance = 0;
  if (labels.length === 5) {
    const m = INSTANCE.exec(labels[0]);
    if (labels[0] === "closest") form = "closest";
    else if (m) {
      form = "instance";
      instance = Number(m[1]);
    } else return { form: "invalid" };
    labels.shift();
  }
  if (labels.length !== 4 || !labels.every((l) => JOB_PART.test(l))) return { form: "invalid" };
  const [service, serviceNs, app, appNs] = labels;
  const job = `${app}.${appNs}.${service}.${serviceNs}`;
  return form === "instance" ? { form, job, instance } : { form, job };
}

/**
 * The address of a reverse name (`d.c.b.a.in-addr.arpa`, 32 nibbles `.ip6.arpa`), or undefined.
 *
 * @example
 * ```ts
 * parseReverse("1.0.30.10.in-addr.arpa"); // "10.30.0.1"
 * ```
 */
export function parseReverse(name: string): string | undefined {
  const n = canonicalName(name);
  if (n.endsWith(".in-addr.arpa")) {
    const parts = n.slice(0, -".in-addr.arpa".length).split(".");
    if (parts.length !== 4) return undefined;
    const v = tryParseIPv4(parts.reverse().join("."));
    return v === undefined ? undefined : formatIPv4(v);
  }
  if (n.endsWith(".ip6.arpa")) {
    const nib = n.slice(0, -".ip6.arpa".length).split(".");
    if (nib.length !== 32 || !nib.every((x) => /^[0-9a-f]$/.test(x))) return undefined;
    const hex = nib.reverse().join("");
    const v = tryParseIPv6(hex.match(/.{4}/g)!.join(":"));
    return v === undefined ? undefined : formatIPv6(v);
  }
  return undefined;
}

/**
 * The reverse name of an address (text).
 *
 * @example
 * ```ts
 * reverseName("10.30.0.1"); // "1.0.30.10.in-addr.arpa"
 * ```
 */
export function reverseName(ip: string): string {
  const v4 = tryParseIPv4(ip);
  if (v4 !== undefined) return `${formatIPv4(v4).split(".").reverse().join(".")}.in-addr.arpa`;
  const v6 = tryParseIPv6(ip);
  if (v6 === undefined) throw new NameError(`"${ip}" is not an IP address`);
  const nibbles: string[] = [];
  for (const b of v6) nibbles.push((b >> 4).toString(16), (b & 15).toString(16));
  return `${nibbles.reverse().join(".")}.ip6.arpa`;
}

/**
 * The DNS name of a job (service form), optionally with a `closest` or `instance-N` label in front.
 *
 * @example
 * ```ts
 * serviceName("shop.prod.web.default", "local"); // "web.default.shop.prod.local"
 * serviceName("shop.prod.web.default", "local", 3); // "instance-3.web.default.shop.prod.local"
 * ```
 */
export function serviceName(job: string, suffix: string, prefix?: "closest" | number): string {
  const [app, appNs, service, serviceNs] = job.toLowerCase().split(".");
  const base = `${service}.${serviceNs}.${app}.${appNs}.${suffix}`;
  if (prefix === undefined) return base;
  return prefix === "closest" ? `closest.${base}` : `instance-${prefix}.${base}`;
}

/** The read side of a translation table that names need (its public API). */
export interface NameTable {
  job(name: string): readonly TableEntry[];
  jobs(): string[];
  service(text: string): ServiceGroup | undefined;
  /** Changes with every change of the table; without it answers are never cached. */
  readonly generation?: number;
}

/**
 * The job of `name` in the table: exact first, then case-insensitively (job names keep their case in
 * the table, DNS names do not). Undefined when absent.
 */
export function findJob(table: NameTable, name: string): string | undefined {
  if (table.job(name).length > 0) return name;
  const lower = name.toLowerCase();
  for (const j of table.jobs()) if (j.toLowerCase() === lower) return j;
  return undefined;
}

/** One answer record. */
export interface NameRecord {
  readonly name: string;
  readonly type: "A" | "AAAA" | "PTR";
  /** Address text (A/AAAA) or target name (PTR). */
  readonly data: string;
}

/** The table's answer to a parsed name. */
export type NameAnswer =
  /** The name exists; `records` may be empty (NOERROR, no data). */
  | { readonly kind: "records"; readonly records: readonly NameRecord[] }
  /** The name does not exist. */
  | { readonly kind: "nxdomain" }
  /** The job is not in the table: ask the control plane (by name), then answer again. */
  | { readonly kind: "miss"; readonly job: string }
  /** A reverse name of an address the table does not know: ask the control plane by IP, then again. */
  | { readonly kind: "miss-ip"; readonly ip: string }
  /** Not ours (forward). */
  | { readonly kind: "outside" };

const KINDS: Record<"service" | "closest" | "instance", readonly ServiceIpKind[]> = {
  // Our Random ServiceIPs balance like RR: the service name covers both.
  service: ["RoundRobin", "Random"],
  closest: ["Closest"],
  instance: ["Instance"],
};

/** Record type of a question this module answers, or "other" (answered NOERROR/empty on our names). */
export type NameQType = "A" | "AAAA" | "PTR" | "ANY" | "other";

/**
 * Answers `q` (asked as `qname`, echoed in the records) from the table.
 * `isServiceIp(ip)` tells whether a reverse-name address is in the ServiceIP ranges (then an unknown
 * one is a miss by IP; other addresses are forwarded).
 */
export function answerName(
  table: NameTable,
  q: ParsedName,
  qtype: NameQType,
  suffix: string,
  qname = "",
  isServiceIp: (ip: string) => boolean = () => false,
): NameAnswer {
  switch (q.form) {
    case "outside":
      return { kind: "outside" };
    case "invalid":
      return { kind: "nxdomain" };
    case "reverse": {
      const g = table.service(q.ip);
      const e = g?.entries[0];
      if (!g || !e) return isServiceIp(q.ip) ? { kind: "miss-ip", ip: q.ip } : { kind: "outside" };
      if (qtype !== "PTR" && qtype !== "ANY") return { kind: "records", records: [] };
      const target = g.kind === "Instance"
        ? serviceName(e.job, suffix, e.instance)
        : serviceName(e.job, suffix, g.kind === "Closest" ? "closest" : undefined);
      return { kind: "records", records: [{ name: qname, type: "PTR", data: target }] };
    }
    default: {
      const job = findJob(table, q.job);
      if (job === undefined) return { kind: "miss", job: q.job };
      let entries = table.job(job);
      if (q.form === "instance") {
        const inst = q.instance;
        entries = entries.filter((e) => e.instance === inst);
        if (entries.length === 0) return { kind: "nxdomain" };
      }
      if (qtype !== "A" && qtype !== "AAAA" && qtype !== "ANY") return { kind: "records", records: [] };
      const kinds = KINDS[q.form];
      const seen = new Set<string>();
      const records: NameRecord[] = [];
      for (const e of entries) {
        for (const s of e.serviceIps) {
          if (!kinds.includes(s.kind)) continue;
          if (s.v4 !== undefined && qtype !== "AAAA") add(records, seen, qname, "A", formatIPv4(s.v4));
          if (s.v6 !== undefined && qtype !== "A") add(records, seen, qname, "AAAA", formatIPv6(s.v6));
        }
      }
      return { kind: "records", records };
    }
  }
}

function add(out: NameRecord[], seen: Set<string>, name: string, type: "A" | "AAAA", data: string): void {
  if (seen.has(data)) return;
  seen.add(data);
  out.push({ name, type, data });
}
