/**
 * The node ↔ cluster MQTT contract (reference §2.2): topic names, zod schemas for every payload the
 * node receives, builders for every payload it sends, and the table-query matching keys of §2.4.
 *
 * Incoming schemas are loose (unknown keys pass) and `host_port` is accepted as a number or a numeric
 * string; outgoing payloads use exactly Oakestra's keys and types (`host_port` as a string).
 *
 * @example
 * ```ts
 * const t = nodeTopics("65f0c0ffee0000000000beef");
 * t.tableQueryRequest; // "nodes/65f0c0ffee0000000000beef/net/tablequery/request"
 * deployedPayload({ job: "a.b.c.d", instance: 0, nsip: "10.18.0.66", nsipv6: "fc00::2",
 *   hostIp: "131.1.0.1", hostPort: 50103 }).host_port; // "50103"
 * ```
 */
import { canonicalIp } from "../addr/canonical.ts";
import { z } from "zod";
import { formatIPv4, formatIPv6, tryParseIPv4, tryParseIPv6 } from "../addr/mod.ts";
import type { QueryResult } from "../table/query_result.ts";

/** The topics one node uses, all derived from its worker id. */
export interface NodeTopics {
  /** node → cluster: `{"METHOD":"GET"}`. */
  readonly subnetRequest: string;
  /** cluster → node: `{"address","addressv6"}`. */
  readonly subnetResult: string;
  /** node → cluster: `{"sname","sip"}`. */
  readonly tableQueryRequest: string;
  /** cluster → node: the §2.3 result. */
  readonly tableQueryResult: string;
  /** node → cluster: a local deployment. */
  readonly serviceDeployed: string;
  /** node → cluster: the node's public address changed. */
  readonly addressChanged: string;
  /** cluster → node (netmanager addition): `{"endpoint":"ip:port"}` to HELLO (hole punching). */
  readonly punch: string;
  /** node → cluster: `{"appname"}`. */
  readonly interestRemove: string;
}

/** Builds the topic set of worker `workerId` (`nodes/<id>/net/...`). */
export function nodeTopics(workerId: string): NodeTopics {
  const p = `nodes/${workerId}/net/`;
  return {
    subnetRequest: `${p}subnet`,
    subnetResult: `${p}subnetwork/result`,
    tableQueryRequest: `${p}tablequery/request`,
    tableQueryResult: `${p}tablequery/result`,
    serviceDeployed: `${p}service/deployed`,
    addressChanged: `${p}service/address-changed`,
    interestRemove: `${p}interest/remove`,
    punch: `${p}punch`,
  };
}

const UPDATES_PREFIX = "jobs/";
const UPDATES_SUFFIX = "/updates_available";

/** `jobs/<job>/updates_available`: where the cluster announces changes of a job. */
export function updatesTopic(job: string): string {
  return `${UPDATES_PREFIX}${job}${UPDATES_SUFFIX}`;
}

/** The job of an `updates_available` topic, or undefined for any other topic. */
export function jobOfUpdatesTopic(topic: string): string | undefined {
  if (!topic.startsWith(UPDATES_PREFIX) || !topic.endsWith(UPDATES_SUFFIX)) return undefined;
  const job = topic.slice(UPDATES_PREFIX.length, topic.length - UPDATES_SUFFIX.length);
  return job === "" || job.includes("/") ? undefined : job;
}

/** Worker ids become topic levels: no wildcards, separators or NUL, not empty. */
export function workerIdProblem(id: string): string | undefined {
  if (id === "") return "worker id is empty";
  if (/[/+#]/.test(id) || id.includes("\0")) return `worker id "${id}" contains one of / + # NUL`;
  return undefined;
}

/** `nodes/<id>/net/subnetwork/result`: `{"address":"10.18.0.64","addressv6":"fc00::"}`. */
export const SubnetResultSchema = z.looseObject({
  address: z.string(),
  addressv6: z.string(),
});

/** `jobs/<job>/updates_available`: `{"type":"DEPLOYMENT"|"UNDEPLOYMENT"}` (other strings tolerated). */
export const UpdateSchema = z.looseObject({ type: z.string() });

/** The node subnet as the cluster assigned it (network addresses, canonical text, no prefix length). */
export interface SubnetAssignment {
  /** IPv4 network of the node's /26, e.g. `10.18.0.64`. */
  readonly v4: string;
  /** IPv6 network of the node's /120, e.g. `fc00::`. */
  readonly v6: string;
}

/** Thrown by {@link parseSubnetResult} for a payload that is not a usable subnet assignment. */
export class PayloadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PayloadError";
  }
}

/** Validates a decoded subnet result; throws PayloadError naming the bad field. */
export function parseSubnetResult(payload: unknown): SubnetAssignment {
  const r = SubnetResultSchema.safeParse(payload);
  if (!r.success) {
    throw new PayloadError(
      `invalid subnet result: ${r.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`)}`,
    );
  }
  const v4 = tryParseIPv4(r.data.address);
  if (v4 === undefined) {
    throw new PayloadError(`invalid subnet result: address "${r.data.address}" is not IPv4`);
  }
  const v6 = tryParseIPv6(r.data.addressv6);
  if (v6 === undefined) {
    throw new PayloadError(`invalid subnet result: addressv6 "${r.data.addressv6}" is not IPv6`);
  }
  return { v4: formatIPv4(v4), v6: formatIPv6(v6) };
}

/** `{"METHOD":"GET"}`. */
export function subnetRequestPayload(): { METHOD: "GET" } {
  return { METHOD: "GET" };
}

/** A table query: exactly one of `sname` / `sip` is non-empty. */
export function tableQueryPayload(q: { sname?: string; sip?: string }): { sname: string; sip: string } {
  return { sname: q.sname ?? "", sip: q.sip ?? "" };
}

/** What a node reports about one of its instances. */
export interface DeployedNotice {
  job: string;
  instance: number;
  nsip: string;
  nsipv6: string;
  hostIp: string;
  hostPort: number;
}

/** The `service/deployed` / `service/address-changed` payload, keys and types exactly as Oakestra's. */
export interface DeployedPayload {
  appname: string;
  status: string;
  instance_number: number;
  nsip: string;
  nsipv6: string;
  host_port: string;
  host_ip: string;
}

/** `service/deployed`: status "DEPLOYED", `host_port` as a string. */
export function deployedPayload(n: DeployedNotice): DeployedPayload {
  return {
    appname: n.job,
    status: "DEPLOYED",
    instance_number: n.instance,
    nsip: n.nsip,
    nsipv6: n.nsipv6,
    host_port: String(n.hostPort),
    host_ip: n.hostIp,
  };
}

/** `service/address-changed`: same struct, `status`/`nsip`/`nsipv6` empty, the new host address. */
export function addressChangedPayload(
  n: { job: string; instance: number; hostIp: string; hostPort: number },
): DeployedPayload {
  return {
    appname: n.job,
    status: "",
    instance_number: n.instance,
    nsip: "",
    nsipv6: "",
    host_port: String(n.hostPort),
    host_ip: n.hostIp,
  };
}

/** `interest/remove`: `{"appname":job}`. */
export function interestRemovePayload(job: string): { appname: string } {
  return { appname: job };
}

/** The keys a table-query result answers (reference §2.4). */
export interface ResultKeys {
  /** Names: `app_name` and a `query_key` that is not an address. */
  readonly names: Set<string>;
  /** Addresses (canonical): a `query_key` that is one, and every service/instance IP in the list. */
  readonly ips: Set<string>;
}

/**
 * The waiters a result releases: by name `app_name` (and `query_key`); by address `query_key` and
 * every `Address` / `Address_v6` of every instance's `service_ip` (plus `instance_ip(_v6)`).
 */
export function resultKeys(r: QueryResult): ResultKeys {
  const names = new Set<string>();
  const ips = new Set<string>();
  if (r.app_name) names.add(r.app_name);
  const qk = r.query_key ?? "";
  if (qk) {
    const ip = canonicalIp(qk);
    if (ip) ips.add(ip);
    else names.add(qk);
  }
  for (const inst of r.instance_list ?? []) {
    for (const s of inst.service_ip ?? []) {
      for (const a of [s.Address, s.Address_v6]) {
        const ip = canonicalIp(a);
        if (ip) ips.add(ip);
      }
    }
    for (const a of [inst.instance_ip, inst.instance_ip_v6]) {
      const ip = canonicalIp(a);
      if (ip) ips.add(ip);
    }
  }
  return { names, ips };
}

export { canonicalIp };
