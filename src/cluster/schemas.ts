/**
 * zod schemas of everything that enters the control plane: MQTT payloads from nodes (reference
 * §2.2), HTTP bodies (§7.2, root service manager style) and the persisted state file. Pure.
 *
 * Payload schemas are loose (unknown keys pass, as nodes may add keys) but check every field the
 * control plane uses: addresses must parse, ports and instance numbers must be integers in range.
 *
 * @example
 * ```ts
 * declare const text: string; // an MQTT payload from a node
 * const r = DeployedNoticeSchema.safeParse(JSON.parse(text));
 * if (r.success) console.log(r.data.host_port); // a number, even when the node sent "50103"
 * ```
 */
import { z } from "zod";
import { canonicalIp } from "./alloc.ts";
import { isAbsentAddress } from "../table/query_result.ts";
import { tryParseIPv4, tryParseIPv6 } from "../addr/mod.ts";

/** One part of a job name: 1..30 ASCII letters or digits. */
export const NAME_PART = /^[A-Za-z0-9]{1,30}$/;

/**
 * A job id: 1..64 of `[A-Za-z0-9_-]` (a Mongo ObjectId is 24 hex digits). Ids never contain a dot,
 * so they cannot be confused with job names, which always do.
 */
export const JOB_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** Ids that would shadow fixed HTTP routes (`/api/net/service/…`, `/api/net/node/…`). */
export const RESERVED_IDS: readonly string[] = [
  "service",
  "services",
  "instance",
  "node",
  "nodes",
  "subnet",
  "interest",
  "cluster",
  "deployment",
  "job",
  "pubnet",
];

/** A worker (node) id as it appears in a topic: non-empty, no `/`, `+`, `#`. */
export const WORKER_ID = /^[^/+#\s]{1,128}$/;

/** An integer in [min, max], given as a JSON number or a decimal string (nodes send strings). */
export function intLike(min: number, max: number) {
  return z.union([z.number(), z.string().regex(/^\s*-?[0-9]{1,10}\s*$/, "not an integer")])
    .transform((v) => Number(v))
    .pipe(z.number().int().min(min).max(max));
}

const ipv4Text = z.string().refine((s) => tryParseIPv4(s) !== undefined, "not an IPv4 address");
/** IPv4 or IPv6 text, canonicalised. */
const ipText = z.string().transform((s, ctx) => {
  const c = canonicalIp(s.trim());
  if (c === undefined) {
    ctx.addIssue({ code: "custom", message: "not an IP address" });
    return z.NEVER;
  }
  return c;
});
/** IPv6 text (canonicalised) or absent (missing, null, "", "<nil>") → undefined. */
const optIpv6Text = z.string().nullish().transform((s, ctx) => {
  if (isAbsentAddress(s)) return undefined;
  const b = tryParseIPv6((s as string).trim());
  if (b === undefined) {
    ctx.addIssue({ code: "custom", message: "not an IPv6 address" });
    return z.NEVER;
  }
  return canonicalIp((s as string).trim());
});

/** `nodes/<id>/net/subnet`: `{"METHOD":"GET"}`. */
export const SubnetRequestSchema = z.looseObject({ METHOD: z.literal("GET") });

/**
 * `nodes/<id>/net/tablequery/request`: `{"sname": job name or "", "sip": ip or ""}`; one of them
 * non-empty (when both are, `sip` wins, as in the reference).
 */
export const TableQueryRequestSchema = z.looseObject({
  sname: z.string().nullish().transform((s) => s ?? ""),
  sip: z.string().nullish().transform((s) => s ?? ""),
}).refine((r) => r.sname !== "" || r.sip !== "", "sname and sip are both empty");

/**
 * `nodes/<id>/net/service/deployed`: the node deployed an instance. `host_port` may be a number or a
 * numeric string; `nsipv6` may be empty (IPv4-only instance).
 */
export const DeployedNoticeSchema = z.looseObject({
  appname: z.string().min(1),
  status: z.string().nullish(),
  instance_number: intLike(0, 0x7fffffff),
  nsip: ipv4Text,
  nsipv6: optIpv6Text,
  host_ip: ipText,
  host_port: intLike(1, 65535),
});

/** `nodes/<id>/net/service/address-changed`: same struct, `host_ip`/`host_port` are the new values. */
export const AddressChangedSchema = z.looseObject({
  appname: z.string().nullish(),
  instance_number: intLike(-1, 0x7fffffff).nullish(),
  host_ip: ipText,
  host_port: intLike(1, 65535),
});

/** `nodes/<id>/net/interest/remove`: `{"appname": job name or a Service IP string}`. */
export const InterestRemoveSchema = z.looseObject({ appname: z.string().min(1) });

/** Parsed `service/deployed` payload. */
export type DeployedNotice = z.infer<typeof DeployedNoticeSchema>;
/** Parsed `service/address-changed` payload. */
export type AddressChanged = z.infer<typeof AddressChangedSchema>;

const namePart = z.string().regex(NAME_PART, "must be 1..30 letters or digits");
const optAddr = z.string().nullish().transform((
  s,
) => (s === null || s === undefined || s.trim() === "" ? undefined : s));

/**
 * `POST /api/net/service/deploy` body: `{"_id"?, "deployment_descriptor": {app_name, app_ns,
 * microservice_name, microservice_namespace, RR_ip?, RR_ip_v6?, Closest_ip?, Closest_ip_v6?,
 * closest?}}` (`closest: false`: no Closest ServiceIP). The SLA form `addresses: {rr_ip, rr_ip_v6,
 * closest_ip, closest_ip_v6}` is accepted too; other descriptor keys are ignored.
 */
export const ServiceDeployBodySchema = z.object({
  _id: z.string().regex(JOB_ID, "must be 1..64 of A-Z a-z 0-9 _ -").refine(
    (s) => !RESERVED_IDS.includes(s),
    "is a reserved word",
  ).optional(),
  deployment_descriptor: z.looseObject({
    app_name: namePart,
    app_ns: namePart,
    microservice_name: namePart,
    microservice_namespace: namePart,
    RR_ip: optAddr,
    RR_ip_v6: optAddr,
    Closest_ip: optAddr,
    Closest_ip_v6: optAddr,
    closest: z.boolean().optional(),
    addresses: z.looseObject({
      rr_ip: optAddr,
      rr_ip_v6: optAddr,
      closest_ip: optAddr,
      closest_ip_v6: optAddr,
    }).nullish(),
  }),
});

/** `POST /api/net/instance/deploy` body: `{"_id": id or job name, "instance_number", "cluster_id"?}`. */
export const InstanceDeployBodySchema = z.object({
  _id: z.string().min(1),
  instance_number: intLike(0, 0x7fffffff),
  cluster_id: z.string().nullish(),
});

// ---------------------------------------------------------------------------------------------
// The state file

/** `service_ip_list[]` element as stored and sent. */
export const ServiceIpRecordSchema = z.object({
  IpType: z.string(),
  Address: z.string(),
  Address_v6: z.string(),
});

/** One instance of a job as stored. Deployment fields are absent until the node reports it. */
export const InstanceRecordSchema = z.object({
  instance_number: z.number().int().min(0),
  instance_ip: z.string(),
  instance_ip_v6: z.string(),
  cluster_id: z.string().optional(),
  namespace_ip: z.string().optional(),
  namespace_ip_v6: z.string().optional(),
  host_ip: z.string().optional(),
  host_port: z.number().int().optional(),
  worker_id: z.string().optional(),
  status: z.string().optional(),
});

/** A job (service) as stored (the cluster service manager's document, §7.1). */
export const JobRecordSchema = z.object({
  _id: z.string(),
  job_name: z.string(),
  service_ip_list: z.array(ServiceIpRecordSchema),
  instance_list: z.array(InstanceRecordSchema),
  interested_nodes: z.array(z.string()),
  /** True when the service was added without a Closest ServiceIP (absent: it has one). */
  no_closest: z.boolean().optional(),
});

/** A registered node and its subnets. */
export const NodeRecordSchema = z.object({
  worker_id: z.string(),
  subnet: z.string(),
  subnet_v6: z.string(),
});

const PoolStateSchema = z.object({ next: z.string().regex(/^[0-9]+$/), free: z.array(z.string()) });

/** The whole persisted state (version 1). */
export const StateFileSchema = z.object({
  version: z.literal(1),
  jobs: z.array(JobRecordSchema),
  nodes: z.array(NodeRecordSchema),
  pools: z.object({
    subnet4: PoolStateSchema,
    subnet6: PoolStateSchema,
    service4: PoolStateSchema,
    instance6: PoolStateSchema,
    rr6: PoolStateSchema,
    // Absent in state written before Closest ServiceIPs existed: an empty pool.
    closest6: PoolStateSchema.default({ next: "0", free: [] }),
  }),
});

/** Stored instance. */
export type InstanceRecord = z.infer<typeof InstanceRecordSchema>;
/** Stored job. */
export type JobRecord = z.infer<typeof JobRecordSchema>;
/** Stored node. */
export type NodeRecord = z.infer<typeof NodeRecordSchema>;
/** The persisted state. */
export type StateFile = z.infer<typeof StateFileSchema>;

function pathText(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out === "" ? String(p) : `.${String(p)}`;
  return out;
}

/**
 * One line naming every problem of a zod error: `deployment_descriptor.app_name: must be …`.
 *
 * @example
 * ```ts
 * const r = InterestRemoveSchema.safeParse({});
 * if (!r.success) zodProblems(r.error); // "appname: Invalid input: expected string, received undefined"
 * ```
 */
export function zodProblems(error: z.ZodError): string {
  return error.issues.map((i) => `${pathText(i.path) || "(body)"}: ${i.message}`).join("; ");
}
