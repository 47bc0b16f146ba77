/**
 * zod schemas for the unix-socket API bodies, with the exact keys the Oakestra NodeEngine sends
 * (reference §1.2). Keys are matched case-insensitively, as Go's JSON decoder does.
 */
import { z } from "zod";

const nonNegInt = (name: string) =>
  z.number({ error: `${name} must be a number` }).int(`${name} must be an integer`).min(
    0,
    `${name} must be ≥ 0`,
  );

/** `POST /register`. */
export const RegisterBody = z.object({
  client_id: z.string({ error: "client_id must be a string" }).min(1, "client_id must not be empty")
    .max(128, "client_id is too long").regex(/^[A-Za-z0-9_.:-]+$/, "client_id has invalid characters"),
  cluster_address: z.string({ error: "cluster_address must be a string" }).max(255)
    .regex(
      /^([A-Za-z0-9.:_-]+(,[A-Za-z0-9.:_-]+)*)?$/,
      "cluster_address must be a host name or an IP address (several: comma-separated)",
    ).default(""),
});

/** `POST /container/deploy` and `/unikernel/deploy`. */
export const DeployBody = z.object({
  pid: z.number({ error: "pid must be a number" }).int("pid must be an integer").min(0, "pid must be ≥ 0")
    .max(4194304, "pid is out of range"),
  serviceName: z.string({ error: "serviceName must be a string" }).min(1, "serviceName must not be empty")
    .max(128, "serviceName is too long"),
  instanceNumber: nonNegInt("instanceNumber"),
  portMappings: z.string({ error: "portMappings must be a string" }).max(4096).default(""),
});

/** `POST /container/undeploy`, `/docker/undeploy`, `/unikernel/undeploy` (pid/portMappings ignored). */
export const UndeployBody = z.object({
  serviceName: z.string({ error: "serviceName must be a string" }).min(1, "serviceName must not be empty")
    .max(128, "serviceName is too long"),
  instanceNumber: nonNegInt("instanceNumber"),
  pid: z.number().int().optional(),
  portMappings: z.string().optional(),
});

/** `POST /secure/rekey`: the peer (`ip:port`, as status names it) whose session to rekey; absent: every peer. */
export const RekeyBody = z.object({
  peer: z.string({ error: "peer must be a string" }).min(1, "peer must not be empty").max(
    64,
    "peer is too long",
  )
    .optional(),
});

/** Maps keys of `raw` onto the schema's spelling when they match case-insensitively. */
export function normalizeKeys(raw: unknown, keys: readonly string[]): unknown {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) return raw;
  const byLower = new Map(keys.map((k) => [k.toLowerCase(), k]));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
    out[byLower.get(k.toLowerCase()) ?? k] = v;
  }
  return out;
}
