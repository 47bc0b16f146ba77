/**
 * Translation-table entries (reference §3.1), ServiceIP kinds and the Oakestra `IpType` mapping (§2.3).
 *
 * Entries are plain data (strings, numbers, `Uint8Array`) so they survive `structuredClone` / `postMessage`
 * to a Worker unchanged. Once handed to a table an entry is treated as immutable.
 *
 * @example
 * ```ts
 * import { parseIPv4, parseIPv6 } from "../addr/mod.ts";
 * const e: TableEntry = {
 *   job: "app.ns.svc.ns", instance: 0, nodeIp: "131.1.0.1", nodePort: 50103,
 *   nsip4: parseIPv4("10.18.0.66"), nsip6: parseIPv6("fc00::2"),
 *   serviceIps: [{ kind: "RoundRobin", v4: parseIPv4("10.30.0.1") }],
 * };
 * validateEntry(e); // throws TableError when malformed
 * ```
 */

/** How a ServiceIP balances over its candidates. `Random` is ours; the others exist in Oakestra. */
export type ServiceIpKind = "Instance" | "Closest" | "RoundRobin" | "Random";

/** All kinds, in code order. */
export const SERVICE_IP_KINDS: readonly ServiceIpKind[] = ["Instance", "Closest", "RoundRobin", "Random"];

/**
 * Numeric codes of the kinds. 0..2 are Oakestra's enum (InstanceNumber=0, Closest=1, RoundRobin=2);
 * 3 (Random) is ours.
 */
export const KIND_CODE: Readonly<Record<ServiceIpKind, number>> = {
  Instance: 0,
  Closest: 1,
  RoundRobin: 2,
  Random: 3,
};

/** The kind of a numeric code; unknown codes map to `Instance` like Oakestra's default. */
export function kindOfCode(code: number): ServiceIpKind {
  return SERVICE_IP_KINDS[code] ?? "Instance";
}

/**
 * Maps an Oakestra `IpType` string to a kind — the one place this mapping lives.
 * "RR" → RoundRobin, "Closest" → Closest, "InstanceNumber" → Instance; our own names "RoundRobin",
 * "Instance", "Random" map to themselves; anything else (including the `"instance_ip"` the cluster
 * actually sends) → Instance.
 *
 * @example
 * ```ts
 * ipTypeToKind("RR"); // "RoundRobin"
 * ipTypeToKind("instance_ip"); // "Instance"
 * ```
 */
export function ipTypeToKind(ipType: string): ServiceIpKind {
  switch (ipType) {
    case "RR":
    case "RoundRobin":
      return "RoundRobin";
    case "Closest":
      return "Closest";
    case "Random":
      return "Random";
    default:
      return "Instance";
  }
}

/**
 * The `IpType` string we send for a kind (what the Oakestra cluster sends: "RR", "Closest",
 * "instance_ip"; "Random" for ours, which an old node reads as an instance IP — it balances randomly
 * over every kind anyway).
 */
export function kindToIpType(kind: ServiceIpKind): string {
  switch (kind) {
    case "RoundRobin":
      return "RR";
    case "Closest":
      return "Closest";
    case "Random":
      return "Random";
    case "Instance":
      return "instance_ip";
  }
}

/** One semantic address of an instance: a kind plus its IPv4 and/or IPv6 address. */
export interface ServiceIp {
  /** Balancing kind. */
  readonly kind: ServiceIpKind;
  /** IPv4 address as uint32, when present. */
  readonly v4?: number;
  /** IPv6 address (16 bytes), when present. */
  readonly v6?: Uint8Array;
}

/** One row of the translation table: one instance of one job (reference §3.1). */
export interface TableEntry {
  /** Fully-qualified job name `app.appns.service.servicens`. */
  readonly job: string;
  /** Instance number (≥ 0). */
  readonly instance: number;
  /** Underlay address of the node hosting the instance (canonical text, IPv4 or IPv6). */
  readonly nodeIp: string;
  /** Underlay UDP port of that node (1..65535). */
  readonly nodePort: number;
  /** Namespace IPv4 as uint32 (always present; unique within a table). */
  readonly nsip4: number;
  /** Namespace IPv6 (16 bytes), optional (unikernels report none). */
  readonly nsip6?: Uint8Array;
  /** The instance's ServiceIPs (RR, instance IP, …), in the order received. At least one. */
  readonly serviceIps: readonly ServiceIp[];
}

/** Thrown when an entry, a table operation, a snapshot or a delta is malformed. */
export class TableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TableError";
  }
}

/** One part of a job name. */
export const JOB_PART = /^[a-zA-Z0-9]{1,30}$/;

/**
 * Why `name` is not a valid job name (4 dot-separated alphanumeric parts of 1..30 chars), or
 * undefined when it is.
 */
export function jobNameProblem(name: string): string | undefined {
  if (name === "") return "empty job name";
  const parts = name.split(".");
  if (parts.length !== 4) return `job name "${name}" must have 4 dot-separated parts, has ${parts.length}`;
  for (const p of parts) {
    if (!JOB_PART.test(p)) return `job name "${name}": part "${p}" is not 1..30 alphanumeric characters`;
  }
  return undefined;
}

/** True when `name` is a valid job name. */
export function isJobName(name: string): boolean {
  return jobNameProblem(name) === undefined;
}

/** The 4 parts of a job name (Appname, Appns, Servicename, Servicenamespace). */
export function jobParts(name: string): { app: string; appNs: string; service: string; serviceNs: string } {
  const [app = "", appNs = "", service = "", serviceNs = ""] = name.split(".");
  return { app, appNs, service, serviceNs };
}

const isU32 = (v: unknown): v is number =>
  typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
const isV6 = (v: unknown): v is Uint8Array => v instanceof Uint8Array && v.length === 16;

function invalid(e: TableEntry, why: string): never {
  throw new TableError(`entry ${e?.job}#${e?.instance}: ${why}`);
}

/**
 * Throws TableError unless `e` is a well-formed entry (types, ranges, job name, ≥ 1 ServiceIP).
 * `jobChecked` skips the job-name check when the caller has already validated that name.
 */
export function validateEntry(e: TableEntry, jobChecked = false): void {
  // No closure per call: a Worker validates every row of a 10k-entry snapshot.
  if (typeof e.job !== "string") invalid(e, "job is not a string");
  if (!jobChecked) {
    const problem = jobNameProblem(e.job);
    if (problem) invalid(e, problem);
  }
  if (!Number.isInteger(e.instance) || e.instance < 0) invalid(e, "bad instance number");
  if (typeof e.nodeIp !== "string" || e.nodeIp === "") invalid(e, "missing node ip");
  if (!Number.isInteger(e.nodePort) || e.nodePort < 1 || e.nodePort > 65535) {
    invalid(e, `node port ${e.nodePort} out of range 1..65535`);
  }
  if (!isU32(e.nsip4)) invalid(e, "nsip4 is not a uint32");
  if (e.nsip6 !== undefined && !isV6(e.nsip6)) invalid(e, "nsip6 is not 16 bytes");
  if (!Array.isArray(e.serviceIps) || e.serviceIps.length === 0) invalid(e, "needs at least one ServiceIP");
  const list = e.serviceIps as readonly ServiceIp[];
  for (let i = 0; i < list.length; i++) {
    const s = list[i];
    if (typeof KIND_CODE[s.kind] !== "number") invalid(e, `unknown ServiceIP kind ${s.kind}`);
    if (s.v4 === undefined && s.v6 === undefined) invalid(e, "ServiceIP without address");
    if (s.v4 !== undefined && !isU32(s.v4)) invalid(e, "ServiceIP v4 is not a uint32");
    if (s.v6 !== undefined && !isV6(s.v6)) invalid(e, "ServiceIP v6 is not 16 bytes");
  }
}

/**
 * The key naming a node's tunnel endpoint: `"ip:port"` for IPv4, `"[ip]:port"` for IPv6.
 *
 * @example
 * ```ts
 * nodeKey("131.1.0.1", 50103); // "131.1.0.1:50103"
 * ```
 */
export function nodeKey(ip: string, port: number): string {
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/** The node key of an entry. */
export function nodeKeyOf(e: TableEntry): string {
  return nodeKey(e.nodeIp, e.nodePort);
}

/**
 * The entry's own Instance IP: its first ServiceIP of kind Instance (Oakestra's rule for the sender's
 * source address), or undefined.
 */
export function instanceIpOf(e: TableEntry): ServiceIp | undefined {
  const list = e.serviceIps;
  for (let i = 0; i < list.length; i++) if (list[i].kind === "Instance") return list[i];
  return undefined;
}

/** The entry's Instance IPv4 (first Instance-kind ServiceIP with a v4 address), or undefined. */
export function instanceIp4Of(e: TableEntry): number | undefined {
  const list = e.serviceIps;
  for (let i = 0; i < list.length; i++) {
    const s = list[i];
    if (s.kind === "Instance" && s.v4 !== undefined) return s.v4;
  }
  return undefined;
}

/** The entry's Instance IPv6 (first Instance-kind ServiceIP with a v6 address), or undefined. */
export function instanceIp6Of(e: TableEntry): Uint8Array | undefined {
  const list = e.serviceIps;
  for (let i = 0; i < list.length; i++) {
    const s = list[i];
    if (s.kind === "Instance" && s.v6 !== undefined) return s.v6;
  }
  return undefined;
}
