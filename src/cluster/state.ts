/**
 * The control plane's state and every operation on it, pure and synchronous: jobs (services) with
 * their RR and Instance IPs, instances with where they are deployed, nodes with their subnets,
 * interests, and the allocator. No I/O: callers persist {@link ClusterState.toFile} and publish the
 * returned update notices.
 *
 * Every operation validates everything before it changes anything, so a refused request leaves the
 * state exactly as it was. Addresses are stored in canonical form (dotted quad / RFC 5952).
 *
 * References to a job (`ref`) are its id, or its job name: ids never contain a dot and job names
 * always do, so the two can never be confused.
 *
 * @example
 * ```ts
 * const s = new ClusterState();
 * const { job } = s.deployService({ app_name: "a", app_ns: "b", microservice_name: "c", microservice_namespace: "d" });
 * s.deployInstance(job.job_name, 0); // instance 0 gets 10.30.0.1 + fdff::
 * s.nodeSubnet("worker1").node; // { worker_id: "worker1", subnet: "10.18.0.0", subnet_v6: "fc00::" }
 * ```
 */
import {
  Allocator,
  type AllocatorOptions,
  canonicalIp,
  CLOSEST6_RANGE,
  InvalidAddressError,
  RR4_RANGE,
  RR6_RANGE,
  userClosest4,
  userClosest6,
  userRr4,
  userRr6,
} from "./alloc.ts";
import { inPrefix4, inPrefix6, parseIPv4, parseIPv6 } from "../addr/mod.ts";
import type {
  AddressChanged,
  DeployedNotice,
  InstanceRecord,
  JobRecord,
  NodeRecord,
  StateFile,
} from "./schemas.ts";
import { JOB_ID, NAME_PART, RESERVED_IDS } from "./schemas.ts";
import { AddressOwners } from "./owners.ts";

import {
  instKey,
  jobKey,
  jobOfRow,
  type JobRow,
  nodeKey,
  POOL_NAMES,
  poolKey,
  type PoolName as RowPoolName,
  type Row,
  rowOfKey,
} from "./rows.ts";

type PoolName = RowPoolName | "rr4";

/** `IpType` of a Closest ServiceIP entry (the node maps it to its Closest policy, reference §2.3). */
export const CLOSEST = "Closest";

/** What went wrong, for callers that map errors to HTTP statuses. */
export type ClusterErrorKind = "invalid" | "not_found" | "conflict" | "exhausted";

/** A refused operation; nothing was changed. */
export class ClusterError extends Error {
  readonly kind: ClusterErrorKind;
  constructor(kind: ClusterErrorKind, message: string) {
    super(message);
    this.name = "ClusterError";
    this.kind = kind;
  }
}

/** The persisted state is inconsistent (an address used twice, a bad name, …). */
export class StateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StateError";
  }
}

/** A `jobs/<job>/updates_available` notice to publish. */
export interface UpdateNotice {
  job: string;
  type: "DEPLOYMENT" | "UNDEPLOYMENT";
}

/** Input of {@link ClusterState.deployService}. */
export interface ServiceInput {
  /** Job id; generated (24 hex digits) when absent. */
  _id?: string;
  app_name: string;
  app_ns: string;
  microservice_name: string;
  microservice_namespace: string;
  /** User-chosen RR IPv4 (10.30.x.y). */
  rr_ip?: string;
  /** User-chosen RR IPv6 (fdff:2000::/21). */
  rr_ip_v6?: string;
  /**
   * false: no Closest ServiceIP (a present one is released); true or absent: the service has one
   * (absent leaves an existing service as it is unless a Closest IP is given).
   */
  closest?: boolean;
  /** User-chosen Closest IPv4 (10.30.x.y). */
  closest_ip?: string;
  /** User-chosen Closest IPv6 (fdff:1000::/21). */
  closest_ip_v6?: string;
}

/** Options of a {@link ClusterState}. */
export interface ClusterStateOptions extends AllocatorOptions {
  /** Job id generator (default: 24 hex digits shaped like a Mongo ObjectId). */
  newId?: () => string;
}

let idCounter = Math.floor(Math.random() * 0xffffff);

/**
 * A new 24-hex-digit id: 4 bytes of seconds since the epoch, 5 random bytes, a 3-byte counter (the
 * layout of a Mongo ObjectId).
 *
 * @example
 * ```ts
 * newObjectId(); // "6650f1c2a41b9e03d7000001"
 * ```
 */
export function newObjectId(): string {
  const r = new Uint8Array(5);
  crypto.getRandomValues(r);
  idCounter = (idCounter + 1) & 0xffffff;
  const hex = (n: number, digits: number) => n.toString(16).padStart(digits, "0");
  return hex(Math.floor(Date.now() / 1000) >>> 0, 8) + [...r].map((b) => hex(b, 2)).join("") +
    hex(idCounter, 6);
}

/** True when the instance has been reported deployed (namespace IP and host known). */
export function isDeployed(i: InstanceRecord): boolean {
  return !!i.namespace_ip && !!i.host_ip && i.host_port !== undefined;
}

function rrOf(job: JobRecord): { Address: string; Address_v6: string } {
  const rr = job.service_ip_list.find((s) => s.IpType === "RR");
  return rr ?? { Address: "", Address_v6: "" };
}

/** The RR IPv4 and IPv6 of a job. */
export function rrAddresses(job: JobRecord): { rr_ip: string; rr_ip_v6: string } {
  const rr = rrOf(job);
  return { rr_ip: rr.Address, rr_ip_v6: rr.Address_v6 };
}

function closestOf(job: { service_ip_list: JobRecord["service_ip_list"] }) {
  return job.service_ip_list.find((s) => s.IpType === CLOSEST);
}

/**
 * The Closest ServiceIPs of a job ("" when it has none).
 *
 * @example
 * ```ts
 * declare const job: Parameters<typeof closestAddresses>[0];
 * closestAddresses(job); // e.g. { closest_ip: "10.30.0.1", closest_ip_v6: "fdff:1000::" }
 * ```
 */
export function closestAddresses(job: JobRecord): { closest_ip: string; closest_ip_v6: string } {
  const c = closestOf(job);
  return { closest_ip: c?.Address ?? "", closest_ip_v6: c?.Address_v6 ?? "" };
}

/** Every service address of a job's `service_ip_list` (RR and Closest, v4 and v6). */
function jobAddresses(job: { service_ip_list: JobRecord["service_ip_list"] }): string[] {
  return job.service_ip_list.flatMap((s) => [s.Address, s.Address_v6]);
}

/**
 * Checks a job's `service_ip_list`: exactly one RR entry, at most one Closest entry (none when
 * `no_closest`), each with both addresses, nothing else. Throws StateError naming `where`.
 */
function checkServiceIps(
  job: { service_ip_list: JobRecord["service_ip_list"]; no_closest?: boolean },
  where: string,
): void {
  const list = job.service_ip_list;
  const rr = list.filter((s) => s.IpType === "RR");
  const cl = list.filter((s) => s.IpType === CLOSEST);
  if (rr.length !== 1 || cl.length > 1 || rr.length + cl.length !== list.length) {
    throw new StateError(`${where}: service_ip_list must hold one RR entry and at most one Closest entry`);
  }
  if (list.some((s) => !s.Address || !s.Address_v6)) {
    throw new StateError(`${where}: a service_ip_list entry lacks an address`);
  }
  if (cl.length && job.no_closest) throw new StateError(`${where}: no_closest but a Closest entry`);
}

/**
 * A new instance list with `inst` in its place by number. Always a fresh array of exactly the
 * needed length: `push` grows a small array to 17 slots, ~150 bytes wasted per job at 50k
 * allocations (issue 14's memory target).
 */
function withInstance(list: readonly InstanceRecord[], inst: InstanceRecord): InstanceRecord[] {
  let k = list.length;
  while (k > 0 && list[k - 1].instance_number > inst.instance_number) k--;
  const out = new Array<InstanceRecord>(list.length + 1);
  for (let i = 0; i < k; i++) out[i] = list[i];
  out[k] = inst;
  for (let i = k; i < list.length; i++) out[i + 1] = list[i];
  return out;
}

function clearDeployment(i: InstanceRecord): void {
  delete i.namespace_ip;
  delete i.namespace_ip_v6;
  delete i.host_ip;
  delete i.host_port;
  delete i.worker_id;
  delete i.status;
}

/** The owner index of the service addresses of `alloc`'s pools. */
function ownersOf(alloc: Allocator): AddressOwners {
  return new AddressOwners([alloc.service4.spec, alloc.instance6.spec, alloc.rr6.spec, alloc.closest6.spec]);
}

/** The control plane's state. */
export class ClusterState {
  #alloc: Allocator;
  readonly #newId: () => string;
  #jobs = new Map<string, JobRecord>();
  #byName = new Map<string, string>();
  /** Service addresses (RR, Closest and Instance IPs, v4 and v6) → job id. */
  #owners: AddressOwners;
  #nodes = new Map<string, NodeRecord>();
  /** Keys of the rows changed since the last {@link takeChanges}. */
  readonly #dirty = new Set<string>();

  constructor(opts: ClusterStateOptions = {}) {
    this.#alloc = new Allocator(opts);
    this.#owners = ownersOf(this.#alloc);
    this.#newId = opts.newId ?? newObjectId;
  }

  /** The allocator (read it; do not allocate behind the state's back). */
  get allocator(): Allocator {
    return this.#alloc;
  }

  /**
   * Rebuilds a state from a parsed state file. Throws StateError when it is inconsistent (bad
   * names, malformed addresses, an address used twice, a bad counter).
   */
  static fromFile(file: StateFile, opts: ClusterStateOptions = {}): ClusterState {
    const s = new ClusterState(opts);
    try {
      s.#alloc.restore(file.pools);
    } catch (e) {
      throw new StateError(`pools: ${(e as Error).message}`);
    }
    // Reserving after restoring also drops used addresses from the free lists.
    const claim = (pool: PoolName, addr: string, where: string) => {
      const c = canonicalIp(addr);
      if (c === undefined || c !== addr) {
        throw new StateError(`${where}: "${addr}" is not a canonical IP address`);
      }
      const ok = pool === "rr4"
        ? inPrefix4(RR4_RANGE, parseIPv4(c))
        : pool === "rr6"
        ? inPrefix6(RR6_RANGE, parseIPv6(c))
        : pool === "closest6"
        ? inPrefix6(CLOSEST6_RANGE, parseIPv6(c))
        : s.#alloc[pool].spec.ordinalOf(c) !== undefined;
      if (!ok) throw new StateError(`${where}: ${c} is outside its range`);
      const real = pool === "rr4" ? "service4" : pool;
      if (!s.#alloc[real].reserve(c)) throw new StateError(`${where}: address ${c} is used twice`);
    };
    for (const [k, n] of file.nodes.entries()) {
      const where = `nodes[${k}] (${n.worker_id})`;
      if (s.#nodes.has(n.worker_id)) throw new StateError(`${where}: worker listed twice`);
      claim("subnet4", n.subnet, `${where}.subnet`);
      claim("subnet6", n.subnet_v6, `${where}.subnet_v6`);
      s.#nodes.set(n.worker_id, structuredClone(n));
    }
    for (const [k, j] of file.jobs.entries()) {
      const where = `jobs[${k}] (${j._id})`;
      if (!JOB_ID.test(j._id)) throw new StateError(`${where}: bad id`);
      if (s.#jobs.has(j._id)) throw new StateError(`${where}: id listed twice`);
      const parts = j.job_name.split(".");
      if (parts.length !== 4 || !parts.every((p) => NAME_PART.test(p))) {
        throw new StateError(`${where}: bad job name "${j.job_name}"`);
      }
      if (s.#byName.has(j.job_name)) throw new StateError(`${where}: job name ${j.job_name} listed twice`);
      checkServiceIps(j, where);
      const rr = rrOf(j);
      claim("rr4", rr.Address, `${where}.RR`);
      claim("rr6", rr.Address_v6, `${where}.RR_v6`);
      const cl = closestOf(j);
      if (cl) {
        claim("rr4", cl.Address, `${where}.Closest`);
        claim("closest6", cl.Address_v6, `${where}.Closest_v6`);
      }
      const numbers = new Set<number>();
      for (const i of j.instance_list) {
        const w = `${where}.instance ${i.instance_number}`;
        if (numbers.has(i.instance_number)) throw new StateError(`${w}: listed twice`);
        numbers.add(i.instance_number);
        claim("service4", i.instance_ip, `${w}.instance_ip`);
        claim("instance6", i.instance_ip_v6, `${w}.instance_ip_v6`);
      }
      const job = structuredClone(j);
      s.#jobs.set(job._id, job);
      s.#byName.set(job.job_name, job._id);
      s.#own(job);
    }
    return s;
  }

  /** The persistable form (deep copy). */
  toFile(): StateFile {
    return {
      version: 1,
      jobs: [...this.#jobs.values()].map((j) => structuredClone(j)),
      nodes: [...this.#nodes.values()].map((n) => structuredClone(n)),
      pools: this.#alloc.snapshot(),
    };
  }

  #own(job: JobRecord): void {
    for (const a of jobAddresses(job)) this.#owners.set(a, job._id);
    for (const i of job.instance_list) {
      this.#owners.set(i.instance_ip, job._id);
      this.#owners.set(i.instance_ip_v6, job._id);
    }
  }

  /**
   * All jobs by name (live records: do not mutate). Sorted, so that every store (whose rows come
   * back in key order after a restart) and every replica lists them alike.
   */
  jobs(): readonly JobRecord[] {
    return [...this.#jobs.values()].sort((a, b) =>
      a.job_name < b.job_name ? -1 : a.job_name > b.job_name ? 1 : 0
    );
  }

  /** All registered nodes by worker id (live records: do not mutate); sorted like {@link jobs}. */
  nodes(): readonly NodeRecord[] {
    return [...this.#nodes.values()].sort((a, b) =>
      a.worker_id < b.worker_id ? -1 : a.worker_id > b.worker_id ? 1 : 0
    );
  }

  /** The node record of a worker, if registered. */
  node(workerId: string): NodeRecord | undefined {
    return this.#nodes.get(workerId);
  }

  /** A job by id or job name, or undefined. */
  job(ref: string): JobRecord | undefined {
    const byId = this.#jobs.get(ref);
    if (byId) return byId;
    const id = this.#byName.get(ref);
    return id === undefined ? undefined : this.#jobs.get(id);
  }

  /** A job by id or job name; throws ClusterError("not_found"). */
  findJob(ref: string): JobRecord {
    const j = this.job(ref);
    if (!j) throw new ClusterError("not_found", `no service with id or name "${ref}"`);
    return j;
  }

  /**
   * Resolves a table-query key: an IP (RR or Instance IP, v4 or v6, any spelling) or a job name.
   *
   * @example
   * ```ts
   * declare const state: ClusterState;
   * state.resolve("FDFF:2000::0"); // the job whose RR IPv6 is fdff:2000::
   * ```
   */
  resolve(key: string): JobRecord | undefined {
    const ip = canonicalIp(key.trim());
    if (ip !== undefined) {
      const id = this.#owners.get(ip);
      return id === undefined ? undefined : this.#jobs.get(id);
    }
    const id = this.#byName.get(key);
    return id === undefined ? undefined : this.#jobs.get(id);
  }

  // -------------------------------------------------------------------------------------------
  // Nodes

  /**
   * The subnets of a worker: its existing ones when it registered before (same worker id), else a
   * fresh (or released) /26 + /120. Throws ClusterError("exhausted").
   */
  nodeSubnet(workerId: string): { node: NodeRecord; created: boolean } {
    const known = this.#nodes.get(workerId);
    if (known) return { node: known, created: false };
    if (!this.#alloc.subnet4.canAllocate()) {
      throw new ClusterError("exhausted", `${this.#alloc.subnet4.spec.name} exhausted: no subnet left`);
    }
    if (!this.#alloc.subnet6.canAllocate()) {
      throw new ClusterError("exhausted", `${this.#alloc.subnet6.spec.name} exhausted: no subnet left`);
    }
    const node: NodeRecord = {
      worker_id: workerId,
      subnet: this.#pool("subnet4").allocate(),
      subnet_v6: this.#pool("subnet6").allocate(),
    };
    this.#nodes.set(workerId, node);
    this.#dirty.add(nodeKey(workerId));
    return { node, created: true };
  }

  /**
   * Deregisters a worker: releases its subnets, marks its instances as not deployed and drops its
   * interests. Returns an UNDEPLOYMENT notice per job that lost an instance.
   */
  removeNode(
    workerId: string,
  ): { node: NodeRecord; cleared: { job: string; instance_number: number }[]; updates: UpdateNotice[] } {
    const node = this.#nodes.get(workerId);
    if (!node) throw new ClusterError("not_found", `no node with worker id "${workerId}"`);
    this.#nodes.delete(workerId);
    this.#dirty.add(nodeKey(workerId));
    this.#pool("subnet4").release(node.subnet);
    this.#pool("subnet6").release(node.subnet_v6);
    const cleared: { job: string; instance_number: number }[] = [];
    const updates: UpdateNotice[] = [];
    for (const job of this.#jobs.values()) {
      let touched = false;
      for (const i of job.instance_list) {
        if (i.worker_id === workerId) {
          clearDeployment(i);
          this.#dirty.add(instKey(job._id, i.instance_number));
          cleared.push({ job: job.job_name, instance_number: i.instance_number });
          touched = true;
        }
      }
      if (job.interested_nodes.includes(workerId)) {
        job.interested_nodes = job.interested_nodes.filter((w) => w !== workerId);
        this.#dirty.add(jobKey(job._id));
      }
      if (touched) updates.push({ job: job.job_name, type: "UNDEPLOYMENT" });
    }
    return { node, cleared, updates };
  }

  // -------------------------------------------------------------------------------------------
  // Services and instances

  /**
   * Registers a service (job) and gives it RR IPs and a Closest ServiceIP pair, user-chosen or
   * allocated (`closest: false`: none). Deploying an existing id again is idempotent; with other
   * user-chosen addresses it moves the job to them, and `closest` adds or releases its Closest IPs.
   * Throws ClusterError: "invalid" (names, ranges, one address twice), "conflict" (name or address
   * used by another job, id registered under another name), "exhausted".
   */
  deployService(input: ServiceInput): { job: JobRecord; created: boolean; updates: UpdateNotice[] } {
    const parts = [input.app_name, input.app_ns, input.microservice_name, input.microservice_namespace];
    const fields = ["app_name", "app_ns", "microservice_name", "microservice_namespace"];
    parts.forEach((p, k) => {
      if (!NAME_PART.test(p)) {
        throw new ClusterError("invalid", `${fields[k]} "${p}" must be 1..30 letters or digits`);
      }
    });
    if (input._id !== undefined && (!JOB_ID.test(input._id) || RESERVED_IDS.includes(input._id))) {
      throw new ClusterError(
        "invalid",
        `_id "${input._id}" must be 1..64 of A-Z a-z 0-9 _ - and not a reserved word`,
      );
    }
    const jobName = parts.join(".");
    let rr4: string | undefined;
    let rr6: string | undefined;
    let c4: string | undefined;
    let c6: string | undefined;
    try {
      if (input.rr_ip !== undefined) rr4 = userRr4(input.rr_ip);
      if (input.rr_ip_v6 !== undefined) rr6 = userRr6(input.rr_ip_v6);
      if (input.closest_ip !== undefined) c4 = userClosest4(input.closest_ip);
      if (input.closest_ip_v6 !== undefined) c6 = userClosest6(input.closest_ip_v6);
    } catch (e) {
      if (e instanceof InvalidAddressError) throw new ClusterError("invalid", e.message);
      throw e;
    }
    if (input.closest === false && (c4 !== undefined || c6 !== undefined)) {
      throw new ClusterError("invalid", "a Closest IP was given for a service without Closest IPs");
    }
    const existing = input._id !== undefined ? this.#jobs.get(input._id) : undefined;
    if (existing && existing.job_name !== jobName) {
      throw new ClusterError(
        "conflict",
        `id ${existing._id} is already the service ${existing.job_name}; remove it first`,
      );
    }
    const nameOwner = this.#byName.get(jobName);
    if (nameOwner !== undefined && nameOwner !== input._id) {
      if (input._id === undefined) {
        // No id given: the same name means the same service (idempotent).
        return this.deployService({ ...input, _id: nameOwner });
      }
      throw new ClusterError("conflict", `service ${jobName} already exists with id ${nameOwner}`);
    }
    // The wanted addresses: given ones, else the current ones, else "allocate" (undefined).
    const curRr = existing ? rrOf(existing) : undefined;
    const curC = existing ? closestOf(existing) : undefined;
    const wantClosest = input.closest === false
      ? false
      : existing && input.closest === undefined && c4 === undefined && c6 === undefined
      ? curC !== undefined
      : true;
    rr4 ??= curRr?.Address;
    rr6 ??= curRr?.Address_v6;
    if (wantClosest) {
      c4 ??= curC?.Address;
      c6 ??= curC?.Address_v6;
    }
    const given = [rr4, rr6, ...(wantClosest ? [c4, c6] : [])].filter((a): a is string => a !== undefined);
    if (new Set(given).size !== given.length) {
      throw new ClusterError("invalid", "the RR and Closest IPs of a service must all differ");
    }
    for (const addr of given) {
      const owner = this.#owners.get(addr);
      if (owner !== undefined && owner !== existing?._id) {
        const other = this.#jobs.get(owner);
        throw new ClusterError("conflict", `${addr} is already used by ${other ? other.job_name : owner}`);
      }
      // An instance IP of the job itself cannot become one of its service IPs either.
      if (existing && owner === existing._id && !jobAddresses(existing).includes(addr)) {
        throw new ClusterError("conflict", `${addr} is already an instance IP of ${existing.job_name}`);
      }
    }
    const need4 = (rr4 === undefined ? 1 : 0) + (wantClosest && c4 === undefined ? 1 : 0);
    if (!this.#alloc.service4.canAllocateMany(need4)) {
      throw new ClusterError("exhausted", `${this.#alloc.service4.spec.name} exhausted: no address left`);
    }
    if (rr6 === undefined && !this.#alloc.rr6.canAllocate()) {
      throw new ClusterError("exhausted", `${this.#alloc.rr6.spec.name} exhausted: no address left`);
    }
    if (wantClosest && c6 === undefined && !this.#alloc.closest6.canAllocate()) {
      throw new ClusterError("exhausted", `${this.#alloc.closest6.spec.name} exhausted: no address left`);
    }
    // Everything is checked: release what the job stops using first (a swap reserves it again).
    const id = existing?._id ?? this.#freshId(input._id);
    const before = existing ? jobAddresses(existing) : [];
    const keep = new Set(given);
    if (existing) {
      const release = (pool: "service4" | "rr6" | "closest6", addr: string | undefined) => {
        if (addr === undefined || keep.has(addr)) return;
        this.#pool(pool).release(addr);
        this.#owners.delete(addr);
      };
      release("service4", curRr?.Address);
      release("rr6", curRr?.Address_v6);
      release("service4", curC?.Address);
      release("closest6", curC?.Address_v6);
    }
    const take = (pool: "service4" | "rr6" | "closest6", addr: string | undefined): string => {
      const a = addr ?? this.#pool(pool).allocate();
      if (addr !== undefined && !before.includes(addr)) this.#pool(pool).reserve(addr);
      this.#owners.set(a, id);
      return a;
    };
    const rrEntry = { IpType: "RR", Address: take("service4", rr4), Address_v6: take("rr6", rr6) };
    // Literal arrays of exact length (a push would grow it to 17 slots; see withInstance).
    const list: JobRecord["service_ip_list"] = wantClosest
      ? [rrEntry, { IpType: CLOSEST, Address: take("service4", c4), Address_v6: take("closest6", c6) }]
      : [rrEntry];
    if (existing) {
      const changed = JSON.stringify(list) !== JSON.stringify(existing.service_ip_list) ||
        (existing.no_closest === true) === wantClosest;
      if (!changed) return { job: existing, created: false, updates: [] };
      existing.service_ip_list = list;
      if (wantClosest) delete existing.no_closest;
      else existing.no_closest = true;
      this.#dirty.add(jobKey(id));
      return { job: existing, created: false, updates: [{ job: jobName, type: "DEPLOYMENT" }] };
    }
    // Literals, not a spread (see deployInstance).
    const job: JobRecord = wantClosest
      ? { _id: id, job_name: jobName, service_ip_list: list, instance_list: [], interested_nodes: [] }
      : {
        _id: id,
        job_name: jobName,
        service_ip_list: list,
        instance_list: [],
        interested_nodes: [],
        no_closest: true,
      };
    this.#jobs.set(id, job);
    this.#byName.set(jobName, id);
    this.#dirty.add(jobKey(id));
    return { job, created: true, updates: [] };
  }

  #freshId(given: string | undefined): string {
    if (given !== undefined) return given;
    let id: string;
    do id = this.#newId(); while (this.#jobs.has(id));
    return id;
  }

  /**
   * Gives every service that has neither a Closest ServiceIP nor `no_closest` (state written before
   * Closest IPs existed) a Closest IPv4 and IPv6; nothing else changes. Returns the job names and a
   * DEPLOYMENT notice per job (interested nodes fetch the new entry). Stops at an exhausted pool
   * (`exhausted` names it); the jobs done so far keep their addresses.
   */
  addMissingClosest(): { jobs: string[]; updates: UpdateNotice[]; exhausted?: string } {
    const jobs: string[] = [];
    for (const job of this.#jobs.values()) {
      if (job.no_closest || closestOf(job)) continue;
      for (const pool of ["service4", "closest6"] as const) {
        if (!this.#alloc[pool].canAllocate()) {
          return { jobs, updates: jobs.map((j) => ({ job: j, type: "DEPLOYMENT" })), exhausted: pool };
        }
      }
      const c = {
        IpType: CLOSEST,
        Address: this.#pool("service4").allocate(),
        Address_v6: this.#pool("closest6").allocate(),
      };
      job.service_ip_list = [...job.service_ip_list, c];
      this.#owners.set(c.Address, job._id);
      this.#owners.set(c.Address_v6, job._id);
      this.#dirty.add(jobKey(job._id));
      jobs.push(job.job_name);
    }
    return { jobs, updates: jobs.map((j) => ({ job: j, type: "DEPLOYMENT" })) };
  }

  /**
   * Gives instance `n` of a job its Instance IPs (v4 from the shared Service IP pool, v6 from
   * fdff::). Idempotent: an existing instance keeps its addresses (its `cluster_id` is updated when
   * given).
   */
  deployInstance(
    ref: string,
    n: number,
    clusterId?: string,
  ): { job: JobRecord; instance: InstanceRecord; created: boolean } {
    if (!Number.isInteger(n) || n < 0 || n > 0x7fffffff) {
      throw new ClusterError("invalid", `instance_number ${n} must be an integer 0..2147483647`);
    }
    const job = this.findJob(ref);
    const known = job.instance_list.find((i) => i.instance_number === n);
    if (known) {
      if (clusterId && known.cluster_id !== clusterId) {
        known.cluster_id = clusterId;
        this.#dirty.add(instKey(job._id, n));
      }
      return { job, instance: known, created: false };
    }
    if (!this.#alloc.service4.canAllocate()) {
      throw new ClusterError("exhausted", `${this.#alloc.service4.spec.name} exhausted: no address left`);
    }
    if (!this.#alloc.instance6.canAllocate()) {
      throw new ClusterError("exhausted", `${this.#alloc.instance6.spec.name} exhausted: no address left`);
    }
    // Two literals, not a spread of an optional part: a spread builds the object by copying, into
    // a larger backing store than a literal's fixed shape (measured: scripts/bench_state_heap.ts).
    const ip = this.#pool("service4").allocate();
    const ip6 = this.#pool("instance6").allocate();
    const instance: InstanceRecord = clusterId
      ? { instance_number: n, instance_ip: ip, instance_ip_v6: ip6, cluster_id: clusterId }
      : { instance_number: n, instance_ip: ip, instance_ip_v6: ip6 };
    job.instance_list = withInstance(job.instance_list, instance);
    this.#dirty.add(instKey(job._id, n));
    this.#owners.set(instance.instance_ip, job._id);
    this.#owners.set(instance.instance_ip_v6, job._id);
    return { job, instance, created: true };
  }

  #releaseInstance(i: InstanceRecord): void {
    this.#pool("service4").release(i.instance_ip);
    this.#pool("instance6").release(i.instance_ip_v6);
    this.#owners.delete(i.instance_ip);
    this.#owners.delete(i.instance_ip_v6);
  }

  /**
   * Removes instance `n` of a job (`-1`: all instances) and releases its Instance IPs. Returns an
   * UNDEPLOYMENT notice for the job.
   */
  removeInstance(
    ref: string,
    n: number,
  ): { job: JobRecord; removed: InstanceRecord[]; updates: UpdateNotice[] } {
    const job = this.findJob(ref);
    if (!Number.isInteger(n) || n < -1) {
      throw new ClusterError("invalid", `instance number ${n} must be ≥ -1`);
    }
    const removed = job.instance_list.filter((i) => n === -1 || i.instance_number === n);
    if (n !== -1 && removed.length === 0) {
      throw new ClusterError("not_found", `service ${job.job_name} has no instance ${n}`);
    }
    job.instance_list = job.instance_list.filter((i) => !removed.includes(i));
    for (const i of removed) {
      this.#releaseInstance(i);
      this.#dirty.add(instKey(job._id, i.instance_number));
    }
    return { job, removed, updates: removed.length ? [{ job: job.job_name, type: "UNDEPLOYMENT" }] : [] };
  }

  /**
   * Removes a service and releases its RR and Closest IPs. Refused ("invalid") while instances remain, unless
   * `force` (then their Instance IPs are released too). Returns an UNDEPLOYMENT notice.
   */
  removeService(ref: string, force = false): { job: JobRecord; updates: UpdateNotice[] } {
    const job = this.findJob(ref);
    if (job.instance_list.length > 0 && !force) {
      throw new ClusterError(
        "invalid",
        `service ${job.job_name} still has ${job.instance_list.length} instance(s); remove them first or force`,
      );
    }
    for (const i of job.instance_list) {
      this.#releaseInstance(i);
      this.#dirty.add(instKey(job._id, i.instance_number));
    }
    this.#dirty.add(jobKey(job._id));
    const rr = rrOf(job);
    this.#pool("service4").release(rr.Address);
    this.#pool("rr6").release(rr.Address_v6);
    const c = closestOf(job);
    if (c) {
      this.#pool("service4").release(c.Address);
      this.#pool("closest6").release(c.Address_v6);
    }
    for (const a of jobAddresses(job)) this.#owners.delete(a);
    this.#jobs.delete(job._id);
    this.#byName.delete(job.job_name);
    return { job, updates: [{ job: job.job_name, type: "UNDEPLOYMENT" }] };
  }

  // -------------------------------------------------------------------------------------------
  // Node notices

  /**
   * `service/deployed` from `workerId`: stores namespace IPs, host and worker on the instance and
   * registers the worker's interest (a node always follows the jobs it hosts). Throws
   * ClusterError("not_found") for an unknown job or instance (nothing is created from a notice).
   */
  markDeployed(
    workerId: string,
    notice: DeployedNotice,
  ): { job: JobRecord; instance: InstanceRecord; updates: UpdateNotice[] } {
    const job = this.#jobs.get(this.#byName.get(notice.appname) ?? "");
    if (!job) throw new ClusterError("not_found", `unknown service ${notice.appname}`);
    const inst = job.instance_list.find((i) => i.instance_number === notice.instance_number);
    if (!inst) {
      throw new ClusterError(
        "not_found",
        `service ${job.job_name} has no instance ${notice.instance_number}`,
      );
    }
    inst.namespace_ip = notice.nsip;
    if (notice.nsipv6 !== undefined) inst.namespace_ip_v6 = notice.nsipv6;
    else delete inst.namespace_ip_v6;
    inst.host_ip = notice.host_ip;
    inst.host_port = notice.host_port;
    inst.worker_id = workerId;
    inst.status = notice.status || "DEPLOYED";
    this.#dirty.add(instKey(job._id, inst.instance_number));
    this.addInterest(job, workerId);
    return { job, instance: inst, updates: [{ job: job.job_name, type: "DEPLOYMENT" }] };
  }

  /**
   * `service/address-changed` from `workerId`: the node's public address changed. Updates the named
   * instance and every other instance deployed on that worker. Returns a DEPLOYMENT notice per
   * job that changed.
   */
  addressChanged(workerId: string, notice: AddressChanged): { updates: UpdateNotice[] } {
    const named = notice.appname ? this.#jobs.get(this.#byName.get(notice.appname) ?? "") : undefined;
    const updates: UpdateNotice[] = [];
    for (const job of this.#jobs.values()) {
      let changed = false;
      for (const i of job.instance_list) {
        const isNamed = job === named && i.instance_number === notice.instance_number && isDeployed(i);
        if (!isNamed && i.worker_id !== workerId) continue;
        if (i.host_ip === notice.host_ip && i.host_port === notice.host_port && i.worker_id === workerId) {
          continue;
        }
        i.host_ip = notice.host_ip;
        i.host_port = notice.host_port;
        i.worker_id = workerId;
        this.#dirty.add(instKey(job._id, i.instance_number));
        changed = true;
      }
      if (changed) updates.push({ job: job.job_name, type: "DEPLOYMENT" });
    }
    return { updates };
  }

  /** Adds `workerId` to the job's interested nodes; true when it was not there yet. */
  addInterest(job: JobRecord, workerId: string): boolean {
    if (job.interested_nodes.includes(workerId)) return false;
    job.interested_nodes = [...job.interested_nodes, workerId];
    this.#dirty.add(jobKey(job._id));
    return true;
  }

  /**
   * Sets the job's interested nodes as kept outside its row (etcd mode: interests live on the
   * replicas' leases); not a change of any row. False when there is no job `id`.
   */
  setInterested(id: string, workers: readonly string[]): boolean {
    const job = this.#jobs.get(id);
    if (!job) return false;
    job.interested_nodes = [...workers].sort();
    return true;
  }

  /**
   * `interest/remove`: drops `workerId` from the interested nodes of the job named `key`; true when
   * something changed. A Service IP as key (the node's IP pseudo-interest, reference §2.5) matches
   * nothing, as in the reference: the node removes its job interest with the job name.
   */
  removeInterest(key: string, workerId: string): boolean {
    const job = this.#jobs.get(this.#byName.get(key) ?? "");
    if (!job || !job.interested_nodes.includes(workerId)) return false;
    job.interested_nodes = job.interested_nodes.filter((w) => w !== workerId);
    this.#dirty.add(jobKey(job._id));
    return true;
  }

  /** `addInterest` by job name or id; false when the job is unknown or the worker already follows it. */
  addInterestIn(ref: string, workerId: string): boolean {
    const job = this.job(ref);
    return job ? this.addInterest(job, workerId) : false;
  }

  // -------------------------------------------------------------------------------------------
  // Rows (what stores persist and replicas exchange; see rows.ts)

  #pool(name: RowPoolName) {
    this.#dirty.add(poolKey(name));
    return this.#alloc[name];
  }

  /** The current value of a row (value undefined when absent). Throws RowError for a bad key. */
  row(key: string): Row {
    const r = rowOfKey(key);
    switch (r.kind) {
      case "job": {
        const j = this.#jobs.get(r.id);
        if (!j) return r;
        const { instance_list: _, ...rest } = j;
        return { ...r, value: structuredClone(rest) };
      }
      case "inst": {
        const i = this.#jobs.get(r.id)?.instance_list.find((x) => x.instance_number === r.n);
        return i ? { ...r, value: structuredClone(i) } : r;
      }
      case "node": {
        const n = this.#nodes.get(r.worker);
        return n ? { ...r, value: structuredClone(n) } : r;
      }
      case "pool":
        return { ...r, value: this.#alloc[r.pool].snapshot() };
    }
  }

  /** Every present row. */
  rows(): Row[] {
    const keys: string[] = [];
    for (const j of this.#jobs.values()) {
      keys.push(jobKey(j._id));
      for (const i of j.instance_list) keys.push(instKey(j._id, i.instance_number));
    }
    for (const w of this.#nodes.keys()) keys.push(nodeKey(w));
    for (const p of POOL_NAMES) keys.push(poolKey(p));
    return keys.map((k) => this.row(k));
  }

  /** True when rows changed since the last {@link takeChanges}. */
  get dirty(): boolean {
    return this.#dirty.size > 0;
  }

  /** The rows changed since the last call, with their current values; forgets them. */
  takeChanges(): Row[] {
    const out = [...this.#dirty].map((k) => this.row(k));
    this.#dirty.clear();
    return out;
  }

  /** The keys of the rows changed since the last call (no values: see {@link rowText}); forgets them. */
  takeChangedKeys(): string[] {
    const out = [...this.#dirty];
    this.#dirty.clear();
    return out;
  }

  /**
   * The stored text of a row's current value (undefined when absent), the same text as
   * `rowText(row(key))` without copying the record first: a store writing every change calls it
   * per changed row, and the deep copies were most of the garbage per request. Throws RowError for
   * a bad key.
   */
  rowText(key: string): string | undefined {
    const r = rowOfKey(key);
    switch (r.kind) {
      case "job": {
        const j = this.#jobs.get(r.id);
        if (!j) return undefined;
        const { instance_list: _, ...rest } = j;
        return JSON.stringify(rest);
      }
      case "inst": {
        const i = this.#jobs.get(r.id)?.instance_list.find((x) => x.instance_number === r.n);
        return i ? JSON.stringify(i) : undefined;
      }
      case "node": {
        const n = this.#nodes.get(r.worker);
        return n ? JSON.stringify(n) : undefined;
      }
      case "pool":
        return JSON.stringify(this.#alloc[r.pool].snapshot());
    }
  }

  /** Takes over everything of `other` (a reload of the whole state); `other` must not be used after. */
  adopt(other: ClusterState): void {
    this.#alloc = other.#alloc;
    this.#jobs = other.#jobs;
    this.#byName = other.#byName;
    this.#owners = other.#owners;
    this.#nodes = other.#nodes;
    this.#dirty.clear();
  }

  /** Forgets the changed-row marks without returning them (after the rows were reapplied). */
  discardChanges(): void {
    this.#dirty.clear();
  }

  #forgetJob(job: JobRecord): void {
    const rr = rrOf(job);
    this.#alloc.service4.forget(rr.Address);
    this.#alloc.rr6.forget(rr.Address_v6);
    const c = closestOf(job);
    if (c) {
      this.#alloc.service4.forget(c.Address);
      this.#alloc.closest6.forget(c.Address_v6);
    }
    for (const a of jobAddresses(job)) {
      if (this.#owners.get(a) === job._id) this.#owners.delete(a);
    }
  }

  #claimRow(
    pool: "service4" | "rr6" | "closest6" | "instance6" | "subnet4" | "subnet6",
    addr: string,
    key: string,
  ) {
    if (!this.#alloc[pool].reserve(addr)) throw new StateError(`row ${key}: address ${addr} is used twice`);
  }

  /**
   * Applies rows written elsewhere (another replica, or the store after a refused write) to this
   * state, keeping every index right: instances and nodes removed first, then jobs, then added
   * instances and nodes, pools last. Throws StateError when the rows contradict the state (an
   * address used twice, an instance without its job); the caller then reloads everything.
   */
  applyRows(rows: readonly Row[]): void {
    const order = (r: Row) =>
      r.value === undefined
        ? (r.kind === "inst" ? 0 : r.kind === "node" ? 1 : r.kind === "job" ? 2 : 5)
        : (r.kind === "job" ? 3 : r.kind === "pool" ? 5 : 4);
    for (const r of [...rows].sort((a, b) => order(a) - order(b))) {
      switch (r.kind) {
        case "inst": {
          const job = this.#jobs.get(r.id);
          const old = job?.instance_list.find((i) => i.instance_number === r.n);
          if (old) {
            this.#alloc.service4.forget(old.instance_ip);
            this.#alloc.instance6.forget(old.instance_ip_v6);
            this.#owners.delete(old.instance_ip);
            this.#owners.delete(old.instance_ip_v6);
            job!.instance_list = job!.instance_list.filter((i) => i !== old);
          }
          if (r.value === undefined) break;
          if (!job) throw new StateError(`row ${r.key}: its job ${r.id} does not exist`);
          const inst = structuredClone(r.value);
          this.#claimRow("service4", inst.instance_ip, r.key);
          this.#claimRow("instance6", inst.instance_ip_v6, r.key);
          job.instance_list = withInstance(job.instance_list, inst);
          this.#owners.set(inst.instance_ip, job._id);
          this.#owners.set(inst.instance_ip_v6, job._id);
          break;
        }
        case "node": {
          const old = this.#nodes.get(r.worker);
          if (old) {
            this.#alloc.subnet4.forget(old.subnet);
            this.#alloc.subnet6.forget(old.subnet_v6);
            this.#nodes.delete(r.worker);
          }
          if (r.value === undefined) break;
          this.#claimRow("subnet4", r.value.subnet, r.key);
          this.#claimRow("subnet6", r.value.subnet_v6, r.key);
          this.#nodes.set(r.worker, structuredClone(r.value));
          break;
        }
        case "job": {
          const old = this.#jobs.get(r.id);
          if (r.value === undefined) {
            if (!old) break;
            for (const i of old.instance_list) {
              this.#alloc.service4.forget(i.instance_ip);
              this.#alloc.instance6.forget(i.instance_ip_v6);
              this.#owners.delete(i.instance_ip);
              this.#owners.delete(i.instance_ip_v6);
            }
            this.#forgetJob(old);
            this.#jobs.delete(r.id);
            this.#byName.delete(old.job_name);
            break;
          }
          const v = r.value as JobRow;
          checkServiceIps(v, `row ${r.key}`);
          const rr = rrOf({ ...v, instance_list: [] });
          const cl = closestOf(v);
          const owner = this.#byName.get(v.job_name);
          if (owner !== undefined && owner !== r.id) {
            throw new StateError(`row ${r.key}: job name ${v.job_name} belongs to ${owner}`);
          }
          if (old) {
            this.#forgetJob(old);
            this.#byName.delete(old.job_name);
          }
          this.#claimRow("service4", rr.Address, r.key);
          this.#claimRow("rr6", rr.Address_v6, r.key);
          if (cl) {
            this.#claimRow("service4", cl.Address, r.key);
            this.#claimRow("closest6", cl.Address_v6, r.key);
          }
          const job = jobOfRow(v, old ? old.instance_list : []);
          this.#jobs.set(r.id, job);
          this.#byName.set(job.job_name, r.id);
          for (const a of jobAddresses(job)) this.#owners.set(a, r.id);
          break;
        }
        case "pool":
          this.#alloc[r.pool].restore(r.value ?? { next: "0", free: [] });
          break;
      }
    }
  }
}
