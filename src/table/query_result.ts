/**
 * The MQTT table-query result (reference §2.3) and the static table file (a JSON array of such
 * results, `netmanager daemon --static-table FILE`): zod schemas and conversion to table entries.
 *
 * The schema checks only the shape, loosely (unknown keys pass, IP fields may be missing or `null`),
 * so that one bad instance cannot sink the others: {@link toEntries} then applies the validity rules of
 * §3.3 per instance — without the mandatory-IPv6 quirk (`"<nil>"`, `""` or a missing IPv6 counts as
 * absent) — and reports every dropped instance with the field and the reason.
 *
 * @example
 * ```ts
 * import { TranslationTable } from "./table.ts";
 * const table = new TranslationTable();
 * const payload = await Deno.readTextFile("result.json"); // an MQTT table-query result
 * const r = parseQueryResult(JSON.parse(payload)); // throws QueryResultError on a bad shape or job name
 * for (const d of r.dropped) console.warn(d.message);
 * table.replaceJob(r.job, r.entries);
 * ```
 */
import { z } from "zod";
import { formatIPv4, formatIPv6, tryParseIPv4, tryParseIPv6 } from "../addr/mod.ts";
import { ipTypeToKind, jobNameProblem, type ServiceIp, type TableEntry } from "./entry.ts";
import type { TranslationTable } from "./table.ts";
import { V6Map } from "./v6map.ts";

/** Thrown when a table-query result (or static table) must be rejected as a whole. */
export class QueryResultError extends Error {
  /** The offending field path (e.g. `app_name`), when known. */
  readonly field: string;
  /** The reason without the field. */
  readonly reason: string;
  constructor(field: string, reason: string) {
    super(field ? `${field}: ${reason}` : reason);
    this.name = "QueryResultError";
    this.field = field;
    this.reason = reason;
  }
}

/** Thrown when a static table file is not valid; the message names the array index and field. */
export class StaticTableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StaticTableError";
  }
}

const optText = z.string().nullish();

/** A `service_ip[]` element: `{IpType, Address, Address_v6}` (extra keys ignored). */
export const ServiceIpSchema = z.looseObject({
  IpType: z.string(),
  Address: optText,
  Address_v6: optText,
});

/** `host_port`: a JSON number or a numeric string (nodes send strings, the cluster numbers). */
export const HostPortSchema = z.union([z.number(), z.string()]);

/** One element of `instance_list` (extra keys such as `cluster_id`, `worker_id` pass through). */
export const InstanceSchema = z.looseObject({
  instance_number: z.union([z.number(), z.string()]),
  instance_ip: optText,
  instance_ip_v6: optText,
  namespace_ip: optText,
  namespace_ip_v6: optText,
  host_ip: optText,
  host_port: HostPortSchema.nullish(),
  service_ip: z.array(ServiceIpSchema).nullish(),
});

/** The table-query result published on `nodes/<id>/net/tablequery/result`. */
export const QueryResultSchema = z.looseObject({
  app_name: z.string(),
  query_key: z.string().nullish(),
  instance_list: z.array(InstanceSchema).nullish(),
});

/** Parsed (shape-checked) table-query result. */
export type QueryResult = z.infer<typeof QueryResultSchema>;
/** Parsed instance element. */
export type QueryInstance = z.infer<typeof InstanceSchema>;

/** The static table file: a JSON array of table-query results. */
export const StaticTableSchema = z.array(QueryResultSchema);

/** An instance left out of the table, and why. */
export interface DroppedInstance {
  /** Index in `instance_list`. */
  readonly index: number;
  /** Its `instance_number`, when readable. */
  readonly instance: number | undefined;
  /** The offending field (e.g. `namespace_ip`). */
  readonly field: string;
  /** What is wrong with it. */
  readonly reason: string;
  /** Human-readable one-liner: `instance_list[2] (instance 1): namespace_ip: missing`. */
  readonly message: string;
}

/** The entries of a result, plus what was dropped or skipped. */
export interface ConvertedResult {
  /** The job name (`app_name`). */
  readonly job: string;
  /** `query_key` as received (the ServiceIP or name asked), or "". */
  readonly queryKey: string;
  /** Valid entries, ready for `TranslationTable.replaceJob(job, entries)`. */
  readonly entries: TableEntry[];
  /** For each entry, its index in `instance_list`. */
  readonly sources: number[];
  /** Instances dropped by the validity rules. */
  readonly dropped: DroppedInstance[];
  /** Non-fatal notes: `service_ip` elements skipped because of a malformed address. */
  readonly notes: string[];
}

/** True for a value meaning "no address": missing, null, "", or Go's `"<nil>"`. */
export function isAbsentAddress(v: string | null | undefined): boolean {
  return v === undefined || v === null || v === "" || v === "<nil>";
}

class Drop extends Error {
  constructor(readonly field: string, readonly reason: string) {
    super(reason);
  }
}

function intOf(v: number | string, field: string, min: number, max: number): number {
  const n = typeof v === "number" ? v : /^\s*[0-9]+\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n)) throw new Drop(field, `${JSON.stringify(v)} is not an integer`);
  if (n < min || n > max) throw new Drop(field, `${n} out of range ${min}..${max}`);
  return n;
}

function v4Of(v: string | null | undefined, field: string, required: boolean): number | undefined {
  if (isAbsentAddress(v)) {
    if (required) throw new Drop(field, "missing");
    return undefined;
  }
  const a = tryParseIPv4(v as string);
  if (a === undefined) throw new Drop(field, `"${v}" is not an IPv4 address`);
  return a;
}

function v6Of(v: string | null | undefined, field: string): Uint8Array | undefined {
  if (isAbsentAddress(v)) return undefined;
  const a = tryParseIPv6(v as string);
  if (a === undefined) throw new Drop(field, `"${v}" is not an IPv6 address`);
  return a;
}

function convertInstance(
  job: string,
  inst: QueryInstance,
  notes: string[],
  where: string,
): TableEntry {
  const instance = intOf(inst.instance_number, "instance_number", 0, 0x7fffffff);
  const nsip4 = v4Of(inst.namespace_ip, "namespace_ip", true) as number;
  const nsip6 = v6Of(inst.namespace_ip_v6, "namespace_ip_v6");
  if (isAbsentAddress(inst.host_ip)) throw new Drop("host_ip", "missing");
  const h4 = tryParseIPv4(inst.host_ip as string);
  const h6 = h4 === undefined ? tryParseIPv6(inst.host_ip as string) : undefined;
  if (h4 === undefined && h6 === undefined) {
    throw new Drop("host_ip", `"${inst.host_ip}" is not an IP address`);
  }
  const nodeIp = h4 !== undefined ? formatIPv4(h4) : formatIPv6(h6 as Uint8Array);
  if (inst.host_port === undefined || inst.host_port === null) throw new Drop("host_port", "missing");
  const nodePort = intOf(inst.host_port, "host_port", 1, 65535);
  const serviceIps: ServiceIp[] = [];
  (inst.service_ip ?? []).forEach((s, i) => {
    try {
      const v4 = v4Of(s.Address, "Address", false);
      const v6 = v6Of(s.Address_v6, "Address_v6");
      if (v4 === undefined && v6 === undefined) {
        notes.push(`${where}.service_ip[${i}]: no address, skipped`);
        return;
      }
      serviceIps.push({
        kind: ipTypeToKind(s.IpType),
        ...(v4 !== undefined ? { v4 } : {}),
        ...(v6 ? { v6 } : {}),
      });
    } catch (e) {
      if (!(e instanceof Drop)) throw e;
      notes.push(`${where}.service_ip[${i}].${e.field}: ${e.reason}, skipped`);
    }
  });
  // The cluster always appends the instance IP to service_ip; fall back to the instance-level fields.
  if (!serviceIps.some((s) => s.kind === "Instance")) {
    try {
      const v4 = v4Of(inst.instance_ip, "instance_ip", false);
      const v6 = v6Of(inst.instance_ip_v6, "instance_ip_v6");
      if (v4 !== undefined || v6 !== undefined) {
        serviceIps.push({ kind: "Instance", ...(v4 !== undefined ? { v4 } : {}), ...(v6 ? { v6 } : {}) });
      }
    } catch (e) {
      if (!(e instanceof Drop)) throw e;
      notes.push(`${where}.${e.field}: ${e.reason}, ignored`);
    }
  }
  if (serviceIps.length === 0) throw new Drop("service_ip", "no usable ServiceIP");
  return {
    job,
    instance,
    nodeIp,
    nodePort,
    nsip4,
    ...(nsip6 ? { nsip6 } : {}),
    serviceIps,
  };
}

/**
 * Converts a shape-checked result into table entries. Throws QueryResultError when the job name is
 * not 4 alphanumeric parts of 1..30 characters (an empty `app_name` means resolution failed). Invalid
 * instances are dropped individually and listed in `dropped`; duplicates of an instance number or
 * namespace IP keep the first occurrence.
 */
export function toEntries(result: QueryResult): ConvertedResult {
  const job = result.app_name;
  const problem = jobNameProblem(job);
  if (problem) {
    throw new QueryResultError("app_name", job === "" ? "empty (resolution failed)" : problem);
  }
  const entries: TableEntry[] = [];
  const sources: number[] = [];
  const dropped: DroppedInstance[] = [];
  const notes: string[] = [];
  const seenN = new Set<number>();
  const seen4 = new Set<number>();
  const seen6 = new Set<string>();
  (result.instance_list ?? []).forEach((inst, index) => {
    const where = `instance_list[${index}]`;
    const n = typeof inst.instance_number === "number" ? inst.instance_number : Number(inst.instance_number);
    const instance = Number.isInteger(n) ? n : undefined;
    const drop = (field: string, reason: string) =>
      dropped.push({
        index,
        instance,
        field,
        reason,
        message: `${where}${instance !== undefined ? ` (instance ${instance})` : ""}: ${field}: ${reason}`,
      });
    try {
      const e = convertInstance(job, inst, notes, where);
      const k6 = e.nsip6 ? formatIPv6(e.nsip6) : "";
      if (seenN.has(e.instance)) return drop("instance_number", `duplicate instance number ${e.instance}`);
      if (seen4.has(e.nsip4)) return drop("namespace_ip", `duplicate namespace IP ${formatIPv4(e.nsip4)}`);
      if (k6 && seen6.has(k6)) return drop("namespace_ip_v6", `duplicate namespace IP ${k6}`);
      seenN.add(e.instance);
      seen4.add(e.nsip4);
      if (k6) seen6.add(k6);
      entries.push(e);
      sources.push(index);
    } catch (e) {
      if (!(e instanceof Drop)) throw e;
      drop(e.field, e.reason);
    }
  });
  return { job, queryKey: result.query_key ?? "", entries, sources, dropped, notes };
}

function pathText(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out === "" ? String(p) : `.${String(p)}`;
  return out;
}

function issuesText(error: z.ZodError): string {
  return error.issues.map((i) => `${pathText(i.path) || "(root)"}: ${i.message}`).join("; ");
}

/**
 * Shape-checks a decoded MQTT payload and converts it (see {@link toEntries}).
 * Throws QueryResultError naming the bad field.
 */
export function parseQueryResult(payload: unknown): ConvertedResult {
  const r = QueryResultSchema.safeParse(payload);
  if (!r.success) throw new QueryResultError("", `invalid table query result: ${issuesText(r.error)}`);
  return toEntries(r.data);
}

/** A static table, merged per job. */
export interface StaticTable {
  /** Jobs with their entries, in file order of first appearance. */
  readonly jobs: { job: string; entries: TableEntry[] }[];
  /** Total number of entries. */
  readonly size: number;
}

/** `[i].instance_list[k]` packed into one number (cheap to keep for every entry of a big file). */
const where = (i: number, k: number) => i * 2 ** 24 + k;
const whereText = (w: number) => `[${Math.floor(w / 2 ** 24)}].instance_list[${w % 2 ** 24}]`;

/**
 * Validates a decoded static table file (JSON array of table-query results) strictly, one result at
 * a time, and hands each result's entries to `sink` as soon as that result is checked (so a large
 * file never exists as one big set of entry objects). Any invalid instance, bad job name or a
 * namespace IP used twice is a StaticTableError naming the array index and field, e.g.
 * `static table [1].instance_list[0].host_port: "x" is not an integer`; results before it have
 * already reached `sink`.
 */
export function forEachStaticResult(
  value: unknown,
  sink: (job: string, entries: TableEntry[]) => void,
): number {
  if (!Array.isArray(value)) {
    const r = StaticTableSchema.safeParse(value);
    throw new StaticTableError(`static table ${r.success ? "(root): not an array" : issuesText(r.error)}`);
  }
  const owner4 = new Map<number, number>();
  const owner6 = new V6Map<number>();
  const ownerN = new Map<string, number>();
  let size = 0;
  value.forEach((item, i) => {
    const parsed = QueryResultSchema.safeParse(item);
    if (!parsed.success) {
      throw new StaticTableError(`static table [${i}].${issuesText(parsed.error)}`.replace("].(root)", "]"));
    }
    let conv: ConvertedResult;
    try {
      conv = toEntries(parsed.data);
    } catch (e) {
      if (e instanceof QueryResultError) {
        throw new StaticTableError(`static table [${i}].${e.field}: ${e.reason}`);
      }
      throw e;
    }
    const bad = conv.dropped[0];
    if (bad) {
      throw new StaticTableError(
        `static table [${i}].instance_list[${bad.index}].${bad.field}: ${bad.reason}`,
      );
    }
    if (conv.notes.length) throw new StaticTableError(`static table [${i}].${conv.notes[0]}`);
    conv.entries.forEach((e, k) => {
      const here = where(i, conv.sources[k]);
      const at = `static table ${whereText(here)}`;
      const k4 = e.nsip4;
      const kN = `${e.job}#${e.instance}`;
      const o4 = owner4.get(k4);
      if (o4 !== undefined) {
        throw new StaticTableError(`${at}.namespace_ip: ${formatIPv4(k4)} already used by ${whereText(o4)}`);
      }
      const oN = ownerN.get(kN);
      if (oN !== undefined) {
        throw new StaticTableError(
          `${at}.instance_number: instance ${e.instance} of ${e.job} already defined by ${whereText(oN)}`,
        );
      }
      if (e.nsip6) {
        const o6 = owner6.get(e.nsip6);
        if (o6 !== undefined) {
          throw new StaticTableError(
            `${at}.namespace_ip_v6: ${formatIPv6(e.nsip6)} already used by ${whereText(o6)}`,
          );
        }
        owner6.set(e.nsip6, here);
      }
      owner4.set(k4, here);
      ownerN.set(kN, here);
    });
    size += conv.entries.length;
    if (conv.entries.length > 0) sink(conv.job, conv.entries);
  });
  return size;
}

/**
 * Validates a decoded static table file strictly (see {@link forEachStaticResult}) and returns its
 * entries merged per job.
 */
export function parseStaticTable(value: unknown): StaticTable {
  const byJob = new Map<string, TableEntry[]>();
  const size = forEachStaticResult(value, (job, entries) => {
    const list = byJob.get(job);
    if (list) list.push(...entries);
    else byJob.set(job, entries);
  });
  return { jobs: [...byJob].map(([job, entries]) => ({ job, entries })), size };
}

/**
 * Validates a decoded static table file strictly (see {@link forEachStaticResult}) and loads it
 * into `table`, result by result (results of the same job are merged). Returns the number of
 * entries. On an error `table` holds a part of the file: load into a fresh table and drop it then.
 *
 * @example
 * ```ts
 * import { TranslationTable } from "./table.ts";
 * const t = new TranslationTable();
 * const text = await Deno.readTextFile("table.json");
 * loadStaticTable(JSON.parse(text), t); // throws StaticTableError naming the index and field
 * ```
 */
export function loadStaticTable(value: unknown, table: TranslationTable): number {
  // Size the table once from the (not yet validated) file: a hint only, capped.
  if (Array.isArray(value)) {
    let entries = 0;
    let sips = 0;
    // Distinct address texts per family: an upper bound of the distinct addresses (one text each).
    const a4 = new Set<unknown>();
    const a6 = new Set<unknown>();
    let largest = 0;
    for (const r of value) {
      const list = (r as { instance_list?: unknown } | null)?.instance_list;
      if (!Array.isArray(list)) continue;
      entries += list.length;
      const before = sips;
      for (const i of list) {
        const s = (i as { service_ip?: unknown } | null)?.service_ip;
        if (!Array.isArray(s)) {
          sips++;
          continue;
        }
        sips += s.length;
        for (const x of s) {
          const ip = x as { Address?: unknown; Address_v6?: unknown } | null;
          a4.add(ip?.Address);
          a6.add(ip?.Address_v6);
        }
      }
      largest = Math.max(largest, sips - before);
    }
    // Plus the largest result's: each change checks room for all of its ServiceIPs as new addresses
    // (without it the last result of the test table doubled the indexes it fits in exactly).
    const addresses = Math.min(Math.max(a4.size, a6.size) + largest, sips, 1 << 22);
    table.reserve(
      Math.min(entries, 1 << 20),
      Math.min(sips, 1 << 22),
      Math.min(value.length, 1 << 20),
      addresses,
    );
  }
  return forEachStaticResult(value, (job, entries) => {
    table.replaceJob(job, table.hasJob(job) ? [...table.job(job), ...entries] : entries);
  });
}

/** Parses the text of a static table file (JSON), then {@link parseStaticTable}. */
export function parseStaticTableText(text: string): StaticTable {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new StaticTableError(`static table is not valid JSON: ${(e as Error).message}`);
  }
  return parseStaticTable(value);
}
