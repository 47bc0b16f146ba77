/**
 * The control plane's state as rows, the unit every store writes (pure): one row per job (without
 * its instances), per instance, per node and per address pool. A change touches only the rows it
 * changed, so a store writes O(changed) bytes, and replicas exchange rows through etcd.
 *
 * | key | value |
 * |---|---|
 * | `job/<id>` | the job document without `instance_list` |
 * | `inst/<id>/<n>` | instance `n` of job `<id>` |
 * | `node/<worker>` | the node and its subnets |
 * | `pool/<name>` | counter and free list of a pool (`subnet4`, `subnet6`, `service4`, `instance6`, `rr6`, `closest6`) |
 *
 * @example
 * ```ts
 * const row = parseRow("node/w1", '{"worker_id":"w1","subnet":"10.18.0.0","subnet_v6":"fc00::"}');
 * row.kind; // "node"
 * rowText(row); // the JSON text again
 * ```
 */
import { z } from "zod";
import type { PoolState } from "./alloc.ts";
import {
  InstanceRecordSchema,
  type JobRecord,
  JobRecordSchema,
  NodeRecordSchema,
  type StateFile,
  zodProblems,
} from "./schemas.ts";
import type { InstanceRecord, NodeRecord } from "./schemas.ts";

/** Names of the address pools. */
export const POOL_NAMES = ["subnet4", "subnet6", "service4", "instance6", "rr6", "closest6"] as const;
/** One address pool's name. */
export type PoolName = typeof POOL_NAMES[number];

/** A job as a row: everything but its instances. */
export type JobRow = Omit<JobRecord, "instance_list">;

/** One row; `value` undefined means the row is absent (deleted). */
export type Row =
  | { kind: "job"; key: string; id: string; value?: JobRow }
  | { kind: "inst"; key: string; id: string; n: number; value?: InstanceRecord }
  | { kind: "node"; key: string; worker: string; value?: NodeRecord }
  | { kind: "pool"; key: string; pool: PoolName; value?: PoolState };

/** A row key or value that is not ours; the message names the key. */
export class RowError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RowError";
  }
}

const JobRowSchema = JobRecordSchema.omit({ instance_list: true }).strict();
const PoolRowSchema = z.object({ next: z.string().regex(/^[0-9]+$/), free: z.array(z.string()) }).strict();

/** Key of a job row. */
export const jobKey = (id: string): string => `job/${id}`;
/** Key of an instance row. */
export const instKey = (id: string, n: number): string => `inst/${id}/${n}`;
/** Key of a node row. */
export const nodeKey = (worker: string): string => `node/${worker}`;
/** Key of a pool row. */
export const poolKey = (pool: PoolName): string => `pool/${pool}`;

/** The kind and identity of a key (value absent); throws RowError for a key that is not a row. */
export function rowOfKey(key: string): Row {
  let m = /^job\/([A-Za-z0-9_-]{1,64})$/.exec(key);
  if (m) return { kind: "job", key, id: m[1] };
  m = /^inst\/([A-Za-z0-9_-]{1,64})\/(0|[1-9][0-9]{0,9})$/.exec(key);
  if (m && Number(m[2]) <= 0x7fffffff) return { kind: "inst", key, id: m[1], n: Number(m[2]) };
  m = /^node\/([^/+#\s]{1,128})$/.exec(key);
  if (m) return { kind: "node", key, worker: m[1] };
  m = /^pool\/([a-z0-9]+)$/.exec(key);
  if (m && (POOL_NAMES as readonly string[]).includes(m[1])) {
    return { kind: "pool", key, pool: m[1] as PoolName };
  }
  throw new RowError(`"${key}" is not a state row key`);
}

/**
 * Parses a stored row (`text` undefined: deleted). Throws RowError when the key or value is not a
 * valid row, or the value names another row than its key.
 */
export function parseRow(key: string, text: string | undefined): Row {
  const row = rowOfKey(key);
  if (text === undefined) return row;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new RowError(`row ${key}: not JSON (${(e as Error).message})`);
  }
  const bad = (err: z.ZodError) => new RowError(`row ${key}: ${zodProblems(err)}`);
  switch (row.kind) {
    case "job": {
      const r = JobRowSchema.safeParse(value);
      if (!r.success) throw bad(r.error);
      if (r.data._id !== row.id) throw new RowError(`row ${key}: _id is "${r.data._id}"`);
      return { ...row, value: r.data };
    }
    case "inst": {
      const r = InstanceRecordSchema.strict().safeParse(value);
      if (!r.success) throw bad(r.error);
      if (r.data.instance_number !== row.n) {
        throw new RowError(`row ${key}: instance_number is ${r.data.instance_number}`);
      }
      return { ...row, value: r.data };
    }
    case "node": {
      const r = NodeRecordSchema.strict().safeParse(value);
      if (!r.success) throw bad(r.error);
      if (r.data.worker_id !== row.worker) {
        throw new RowError(`row ${key}: worker_id is "${r.data.worker_id}"`);
      }
      return { ...row, value: r.data };
    }
    case "pool": {
      const r = PoolRowSchema.safeParse(value);
      if (!r.success) throw bad(r.error);
      return { ...row, value: r.data };
    }
  }
}

/** The stored text of a row's value, or undefined when the row is absent. */
export function rowText(row: Row): string | undefined {
  return row.value === undefined ? undefined : JSON.stringify(row.value);
}

/** The job document of a job row with `instances` (fields in the stored document's order). */
export function jobOfRow(row: JobRow, instances: InstanceRecord[]): JobRecord {
  const { _id, job_name, service_ip_list, interested_nodes, ...rest } = structuredClone(row);
  return { _id, job_name, service_ip_list, instance_list: instances, interested_nodes, ...rest };
}

/**
 * Assembles a state file from rows (instances go to their job; a pool without a row starts empty).
 * Throws RowError for an instance without its job.
 */
export function stateFileOfRows(rows: Iterable<Row>): StateFile {
  const jobs = new Map<string, JobRecord>();
  const insts: Array<{ id: string; value: InstanceRecord; key: string }> = [];
  const nodes: NodeRecord[] = [];
  const pools: Partial<Record<PoolName, PoolState>> = {};
  for (const r of rows) {
    if (r.value === undefined) continue;
    if (r.kind === "job") jobs.set(r.id, jobOfRow(r.value, []));
    else if (r.kind === "inst") insts.push({ id: r.id, value: r.value, key: r.key });
    else if (r.kind === "node") nodes.push(structuredClone(r.value));
    else pools[r.pool] = structuredClone(r.value);
  }
  for (const i of insts) {
    const j = jobs.get(i.id);
    if (!j) throw new RowError(`row ${i.key}: its job ${i.id} does not exist`);
    j.instance_list.push(structuredClone(i.value));
  }
  for (const j of jobs.values()) j.instance_list.sort((a, b) => a.instance_number - b.instance_number);
  // A pool never changed has no row yet: counter 0, nothing released (used addresses are skipped).
  const empty = { next: "0", free: [] };
  return {
    version: 1,
    jobs: [...jobs.values()],
    nodes,
    pools: {
      subnet4: pools.subnet4 ?? empty,
      subnet6: pools.subnet6 ?? { ...empty },
      service4: pools.service4 ?? { ...empty },
      instance6: pools.instance6 ?? { ...empty },
      rr6: pools.rr6 ?? { ...empty },
      closest6: pools.closest6 ?? { ...empty },
    },
  };
}

/** Every row of a state file (jobs, instances, nodes, pools). */
export function rowsOfStateFile(file: StateFile): Row[] {
  const rows: Row[] = [];
  for (const j of file.jobs) {
    const { instance_list, ...job } = structuredClone(j);
    rows.push({ kind: "job", key: jobKey(j._id), id: j._id, value: job });
    for (const i of instance_list) {
      rows.push({
        kind: "inst",
        key: instKey(j._id, i.instance_number),
        id: j._id,
        n: i.instance_number,
        value: i,
      });
    }
  }
  for (const n of file.nodes) {
    rows.push({ kind: "node", key: nodeKey(n.worker_id), worker: n.worker_id, value: structuredClone(n) });
  }
  for (const p of POOL_NAMES) {
    rows.push({ kind: "pool", key: poolKey(p), pool: p, value: { ...file.pools[p] } });
  }
  return rows;
}

/**
 * The names a row claims exclusively (a job's name and RR and Closest IPs, an instance's IPs, a node's
 * subnets): a replicated store refuses a change that would give one name to two rows.
 *
 * @example
 * ```ts
 * claimsOf(parseRow("node/w1", '{"worker_id":"w1","subnet":"10.18.0.0","subnet_v6":"fc00::"}'));
 * // ["subnet/10.18.0.0", "subnet/fc00::"]
 * ```
 */
export function claimsOf(row: Row): string[] {
  const v = row.value;
  if (v === undefined) return [];
  switch (row.kind) {
    case "job": {
      const job = v as JobRow;
      return [
        `name/${job.job_name}`,
        ...job.service_ip_list.flatMap((s) => [`ip/${s.Address}`, `ip/${s.Address_v6}`]),
      ];
    }
    case "inst": {
      const i = v as InstanceRecord;
      return [`ip/${i.instance_ip}`, `ip/${i.instance_ip_v6}`];
    }
    case "node": {
      const n = v as NodeRecord;
      return [`subnet/${n.subnet}`, `subnet/${n.subnet_v6}`];
    }
    case "pool":
      return [];
  }
}
