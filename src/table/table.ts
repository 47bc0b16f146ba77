/**
 * The translation table (reference §3) with O(1) indexes: by ServiceIP (v4 and v6), by namespace IP
 * (v4 and v6), by job name and by node. Every operation validates first and mutates after, so a
 * throwing call changes nothing and the indexes are consistent after every call.
 *
 * The owner (main isolate) applies operations and forwards the same {@link TableDelta} to Workers,
 * which keep a read-only copy built from a {@link TableSnapshot}.
 *
 * IPv6 keys: the v6 indexes are {@link V6Map}s — open-addressing tables holding the 16-byte keys
 * inline in a `Uint32Array`, hashed from the 4 words read straight out of the packet and confirmed by
 * comparing those words: no allocation, no string, no pointer chasing per lookup.
 *
 * @example
 * ```ts
 * import { parseIPv4 } from "../addr/mod.ts";
 * const t = new TranslationTable();
 * t.replaceJob("app.ns.svc.ns", [{
 *   job: "app.ns.svc.ns", instance: 0, nodeIp: "131.1.0.1", nodePort: 50103,
 *   nsip4: parseIPv4("10.18.0.66"),
 *   serviceIps: [{ kind: "RoundRobin", v4: parseIPv4("10.30.0.1") }],
 * }]);
 * t.service4(parseIPv4("10.30.0.1"))?.entries.length; // 1
 * ```
 */
import { equalIPv6, formatIPv6, tryParseIPv4, tryParseIPv6 } from "../addr/mod.ts";
import {
  jobNameProblem,
  KIND_CODE,
  kindOfCode,
  nodeKeyOf,
  type ServiceIp,
  type ServiceIpKind,
  type TableEntry,
  TableError,
  validateEntry,
} from "./entry.ts";
import { V6Map } from "./v6map.ts";

/** The candidates of one ServiceIP address (one family): what the packet path looks up. */
export interface ServiceGroup {
  /** Address family of this group's address. */
  readonly family: 4 | 6;
  /** Stable identity for per-ServiceIP state (balancers): the uint32 for v4, canonical text for v6. */
  readonly key: number | string;
  /** The IPv4 address (v4 groups; 0 for v6 groups). */
  readonly addr4: number;
  /** The IPv6 address (v6 groups only). */
  readonly addr6: Uint8Array | undefined;
  /** Balancing kind (that of the first candidate's matching ServiceIP). */
  readonly kind: ServiceIpKind;
  /** Entries having this address among their ServiceIPs. Live: do not keep across table changes. */
  readonly entries: readonly TableEntry[];
}

interface Group {
  family: 4 | 6;
  key: number | string;
  addr4: number;
  addr6: Uint8Array | undefined;
  kind: ServiceIpKind;
  entries: TableEntry[];
}

/** What an operation changed. */
export interface TableChange {
  /** Entries inserted. */
  readonly added: readonly TableEntry[];
  /** Entry objects no longer in the table (including ones replaced by an equal-looking entry). */
  readonly removed: readonly TableEntry[];
  /**
   * Namespace IPv4s of instances that left: no longer in the table, or now naming a different
   * job/instance/node. Flows pinned to these must go (`FlowTable.dropInstance`).
   */
  readonly gone: readonly number[];
}

/** A change message, applied the same way by the owner and by every Worker copy. */
export type TableDelta =
  | { readonly op: "replaceJob"; readonly job: string; readonly entries: readonly TableEntry[] }
  | { readonly op: "removeJob"; readonly job: string }
  | { readonly op: "removeInstance"; readonly job: string; readonly instance: number }
  | { readonly op: "upsert"; readonly entry: TableEntry }
  | { readonly op: "clear" };

/**
 * Compact, structured-clone friendly form of a whole table (typed arrays + string lists; the typed
 * arrays' buffers may be transferred).
 * - `rows`: 7 uint32 per entry: job index, instance, node-ip index, node port, nsip4,
 *   nsip6 index + 1 (0 = none), ServiceIP count.
 * - `sips`: 4 uint32 per ServiceIP (in entry order): kind code, flags (1 = v4, 2 = v6), v4, v6 index.
 * - `v6`: 16 bytes per IPv6 address referenced by index.
 */
export interface TableSnapshot {
  /** Format version (1). */
  readonly format: 1;
  /** Distinct job names. */
  readonly jobs: readonly string[];
  /** Distinct node IPs. */
  readonly nodes: readonly string[];
  /** Entry rows, 7 words each. */
  readonly rows: Uint32Array;
  /** ServiceIP rows, 4 words each. */
  readonly sips: Uint32Array;
  /** IPv6 address pool. */
  readonly v6: Uint8Array;
}

const ROW = 7;
const SIP = 4;
const EMPTY: readonly TableEntry[] = Object.freeze([]);

function sameInstance(a: TableEntry, b: TableEntry): boolean {
  return a.job === b.job && a.instance === b.instance && a.nodeIp === b.nodeIp && a.nodePort === b.nodePort;
}

/** The translation table. See the module documentation. */
export class TranslationTable {
  #svc4 = new Map<number, Group>();
  #svc6 = new V6Map<Group>();
  #ns4 = new Map<number, TableEntry>();
  #ns6 = new V6Map<TableEntry>();
  #jobs = new Map<string, TableEntry[]>();
  #nodes = new Map<string, TableEntry[]>();
  #size = 0;

  /** Number of entries. */
  get size(): number {
    return this.#size;
  }

  // ---------------------------------------------------------------- lookups (packet path)

  /** Candidates of a ServiceIPv4 (uint32), or undefined. */
  service4(addr: number): ServiceGroup | undefined {
    return this.#svc4.get(addr);
  }

  /** Candidates of the ServiceIPv6 at `buf[off..off+16]`, or undefined. No allocation. */
  service6(buf: Uint8Array, off = 0): ServiceGroup | undefined {
    return this.#svc6.get(buf, off);
  }

  /** The entry whose namespace IPv4 is `addr`, or undefined. */
  byNsip4(addr: number): TableEntry | undefined {
    return this.#ns4.get(addr);
  }

  /** The entry whose namespace IPv6 is at `buf[off..off+16]`, or undefined. No allocation. */
  byNsip6(buf: Uint8Array, off = 0): TableEntry | undefined {
    return this.#ns6.get(buf, off);
  }

  // ---------------------------------------------------------------- lookups (control path)

  /** Candidates of a ServiceIP given as text (v4 or v6), or undefined (also for malformed text). */
  service(text: string): ServiceGroup | undefined {
    const v4 = tryParseIPv4(text);
    if (v4 !== undefined) return this.service4(v4);
    const v6 = tryParseIPv6(text);
    return v6 === undefined ? undefined : this.service6(v6);
  }

  /** The entry owning a namespace IP given as text, or undefined. */
  byNsip(text: string): TableEntry | undefined {
    const v4 = tryParseIPv4(text);
    if (v4 !== undefined) return this.byNsip4(v4);
    const v6 = tryParseIPv6(text);
    return v6 === undefined ? undefined : this.byNsip6(v6);
  }

  /** Entries of a job (empty when unknown). Live array: copy it to keep it. */
  job(name: string): readonly TableEntry[] {
    return this.#jobs.get(name) ?? EMPTY;
  }

  /** True when the table has entries of `name`. */
  hasJob(name: string): boolean {
    return this.#jobs.has(name);
  }

  /** Names of the jobs present. */
  jobs(): string[] {
    return [...this.#jobs.keys()];
  }

  /** Entries hosted by a node, by node key `"ip:port"` / `"[ip6]:port"` (see `nodeKey`). */
  node(key: string): readonly TableEntry[] {
    return this.#nodes.get(key) ?? EMPTY;
  }

  /** Node keys present. */
  nodes(): string[] {
    return [...this.#nodes.keys()];
  }

  /** All entries (grouped by job, in insertion order within a job). */
  *entries(): IterableIterator<TableEntry> {
    for (const list of this.#jobs.values()) yield* list;
  }

  /** All ServiceIP groups (v4 then v6). */
  *services(): IterableIterator<ServiceGroup> {
    yield* this.#svc4.values();
    yield* this.#svc6.values();
  }

  // ---------------------------------------------------------------- operations

  /**
   * Replaces all entries of `job` with `entries` at once (Oakestra's refresh). Entries of other jobs
   * with the same namespace IP (v4 or v6) are replaced too, as Oakestra's insert does.
   * Throws TableError (changing nothing) when an entry is malformed, names another job, or two
   * entries share a namespace IP or an instance number.
   */
  replaceJob(job: string, entries: readonly TableEntry[]): TableChange {
    const seen4 = new Set<number>();
    const seenN = new Set<number>();
    const seen6 = new Set<string>();
    const problem = jobNameProblem(job);
    if (problem) throw new TableError(`replaceJob: ${problem}`);
    for (const e of entries) {
      validateEntry(e, true);
      if (e.job !== job) throw new TableError(`replaceJob("${job}"): entry names job "${e.job}"`);
      if (seen4.has(e.nsip4)) throw new TableError(`replaceJob("${job}"): duplicate nsip4 in entries`);
      if (seenN.has(e.instance)) {
        throw new TableError(`replaceJob("${job}"): duplicate instance number ${e.instance}`);
      }
      seen4.add(e.nsip4);
      seenN.add(e.instance);
      if (e.nsip6) {
        const k = formatIPv6(e.nsip6);
        if (seen6.has(k)) throw new TableError(`replaceJob("${job}"): duplicate nsip6 ${k}`);
        seen6.add(k);
      }
    }
    const old = this.#jobs.get(job) ?? EMPTY;
    const victims = new Set<TableEntry>(old);
    for (const e of entries) this.#conflicts(e, victims);
    return this.#commit(victims, entries);
  }

  /** Removes every entry of `job`. */
  removeJob(job: string): TableChange {
    return this.#commit(new Set(this.#jobs.get(job) ?? EMPTY), EMPTY);
  }

  /** Removes the entry (entries) of instance `instance` of `job`. */
  removeInstance(job: string, instance: number): TableChange {
    const victims = new Set<TableEntry>();
    for (const e of this.#jobs.get(job) ?? EMPTY) if (e.instance === instance) victims.add(e);
    return this.#commit(victims, EMPTY);
  }

  /**
   * Inserts one entry, first removing any entry with the same namespace IPv4 or IPv6 (Oakestra's
   * rule) or the same job and instance number (a migrated instance). Throws TableError when malformed.
   */
  upsert(entry: TableEntry): TableChange {
    validateEntry(entry);
    const victims = new Set<TableEntry>();
    this.#conflicts(entry, victims);
    return this.#commit(victims, [entry]);
  }

  /** Removes everything. */
  clear(): TableChange {
    return this.#commit(new Set(this.entries()), EMPTY);
  }

  /** Applies a delta (as produced by the owner) and returns what changed. */
  apply(delta: TableDelta): TableChange {
    switch (delta.op) {
      case "replaceJob":
        return this.replaceJob(delta.job, delta.entries);
      case "removeJob":
        return this.removeJob(delta.job);
      case "removeInstance":
        return this.removeInstance(delta.job, delta.instance);
      case "upsert":
        return this.upsert(delta.entry);
      case "clear":
        return this.clear();
      default:
        throw new TableError(`unknown table delta op ${JSON.stringify((delta as { op?: unknown }).op)}`);
    }
  }

  /** Collects entries that `e` replaces: same nsip4, same nsip6, or same job + instance. */
  #conflicts(e: TableEntry, into: Set<TableEntry>): void {
    const a = this.#ns4.get(e.nsip4);
    if (a) into.add(a);
    if (e.nsip6) {
      const b = this.byNsip6(e.nsip6);
      if (b) into.add(b);
    }
    for (const x of this.#jobs.get(e.job) ?? EMPTY) if (x.instance === e.instance) into.add(x);
  }

  /** Removes `victims`, inserts `added` (already validated and conflict-free among themselves). */
  #commit(victims: Set<TableEntry>, added: readonly TableEntry[]): TableChange {
    if (victims.size === 0 && added.length === 0) return { added: EMPTY, removed: EMPTY, gone: [] };
    this.#removeAll(victims);
    for (const e of added) this.#insert(e);
    const gone: number[] = [];
    for (const v of victims) {
      const now = this.#ns4.get(v.nsip4);
      if (now === undefined || !sameInstance(now, v)) gone.push(v.nsip4);
    }
    return { added: [...added], removed: [...victims], gone };
  }

  #insert(e: TableEntry): void {
    this.#ns4.set(e.nsip4, e);
    if (e.nsip6) this.#ns6.set(e.nsip6, e);
    const jl = this.#jobs.get(e.job);
    if (jl) jl.push(e);
    else this.#jobs.set(e.job, [e]);
    const nk = nodeKeyOf(e);
    const nl = this.#nodes.get(nk);
    if (nl) nl.push(e);
    else this.#nodes.set(nk, [e]);
    for (const s of e.serviceIps) {
      if (s.v4 !== undefined) this.#addToGroup(this.#group4(s.v4, s.kind), e);
      if (s.v6 !== undefined) this.#addToGroup(this.#group6(s.v6, s.kind), e);
    }
    this.#size++;
  }

  #addToGroup(g: Group, e: TableEntry): void {
    // An entry listing the same address twice joins once.
    if (g.entries[g.entries.length - 1] !== e) g.entries.push(e);
  }

  #group4(addr: number, kind: ServiceIpKind): Group {
    let g = this.#svc4.get(addr);
    if (!g) {
      g = { family: 4, key: addr, addr4: addr, addr6: undefined, kind, entries: [] };
      this.#svc4.set(addr, g);
    }
    return g;
  }

  #group6(addr: Uint8Array, kind: ServiceIpKind): Group {
    let g = this.#svc6.get(addr);
    if (!g) {
      g = { family: 6, key: formatIPv6(addr), addr4: 0, addr6: addr, kind, entries: [] };
      this.#svc6.set(addr, g);
    }
    return g;
  }

  /** Removes a set of entries from every index in O(total affected). */
  #removeAll(victims: Set<TableEntry>): void {
    if (victims.size === 0) return;
    const groups = new Set<Group>();
    const jobs = new Set<string>();
    const nodes = new Set<string>();
    for (const e of victims) {
      if (this.#ns4.get(e.nsip4) === e) this.#ns4.delete(e.nsip4);
      if (e.nsip6 && this.#ns6.get(e.nsip6) === e) this.#ns6.delete(e.nsip6);
      jobs.add(e.job);
      nodes.add(nodeKeyOf(e));
      for (const s of e.serviceIps) {
        if (s.v4 !== undefined) {
          const g = this.#svc4.get(s.v4);
          if (g) groups.add(g);
        }
        if (s.v6 !== undefined) {
          const g = this.#svc6.get(s.v6);
          if (g) groups.add(g);
        }
      }
      this.#size--;
    }
    for (const j of jobs) {
      const rest = (this.#jobs.get(j) ?? []).filter((x) => !victims.has(x));
      if (rest.length) this.#jobs.set(j, rest);
      else this.#jobs.delete(j);
    }
    for (const n of nodes) {
      const rest = (this.#nodes.get(n) ?? []).filter((x) => !victims.has(x));
      if (rest.length) this.#nodes.set(n, rest);
      else this.#nodes.delete(n);
    }
    for (const g of groups) {
      g.entries = g.entries.filter((x) => !victims.has(x));
      if (g.entries.length === 0) {
        this.#dropGroup(g);
      } else {
        g.kind = kindFor(g.entries[0], g) ?? g.kind;
      }
    }
  }

  #dropGroup(g: Group): void {
    if (g.family === 4) {
      this.#svc4.delete(g.addr4);
      return;
    }
    this.#svc6.delete(g.addr6 as Uint8Array);
  }

  // ---------------------------------------------------------------- snapshots

  /** The whole table in compact plain-data form (see {@link TableSnapshot}). */
  snapshot(): TableSnapshot {
    const jobs: string[] = [];
    const jobIdx = new Map<string, number>();
    const nodes: string[] = [];
    const nodeIdx = new Map<string, number>();
    const v6: Uint8Array[] = [];
    let nSips = 0;
    for (const e of this.entries()) nSips += e.serviceIps.length;
    const rows = new Uint32Array(this.#size * ROW);
    const sips = new Uint32Array(nSips * SIP);
    let r = 0;
    let s = 0;
    const intern = (list: string[], idx: Map<string, number>, v: string): number => {
      let i = idx.get(v);
      if (i === undefined) {
        i = list.length;
        list.push(v);
        idx.set(v, i);
      }
      return i;
    };
    for (const e of this.entries()) {
      rows[r++] = intern(jobs, jobIdx, e.job);
      rows[r++] = e.instance;
      rows[r++] = intern(nodes, nodeIdx, e.nodeIp);
      rows[r++] = e.nodePort;
      rows[r++] = e.nsip4;
      if (e.nsip6) {
        v6.push(e.nsip6);
        rows[r++] = v6.length;
      } else rows[r++] = 0;
      rows[r++] = e.serviceIps.length;
      for (const sip of e.serviceIps) {
        sips[s++] = KIND_CODE[sip.kind];
        sips[s++] = (sip.v4 !== undefined ? 1 : 0) | (sip.v6 !== undefined ? 2 : 0);
        sips[s++] = sip.v4 ?? 0;
        if (sip.v6 !== undefined) {
          v6.push(sip.v6);
          sips[s++] = v6.length - 1;
        } else sips[s++] = 0;
      }
    }
    const pool = new Uint8Array(v6.length * 16);
    v6.forEach((a, i) => pool.set(a, i * 16));
    return { format: 1, jobs, nodes, rows, sips, v6: pool };
  }

  /**
   * Builds a table from a snapshot (e.g. in a Worker). IPv6 addresses become views into `snap.v6`.
   * Throws TableError when the snapshot is malformed.
   */
  static fromSnapshot(snap: TableSnapshot): TranslationTable {
    if (!snap || snap.format !== 1) throw new TableError("table snapshot: unknown format");
    const { jobs, nodes, rows, sips, v6 } = snap;
    if (!(rows instanceof Uint32Array) || !(sips instanceof Uint32Array) || !(v6 instanceof Uint8Array)) {
      throw new TableError("table snapshot: rows/sips/v6 must be typed arrays");
    }
    if (rows.length % ROW || sips.length % SIP || v6.length % 16) {
      throw new TableError("table snapshot: truncated arrays");
    }
    const nV6 = v6.length / 16;
    const addr6 = (i: number, what: string): Uint8Array => {
      if (i >= nV6) throw new TableError(`table snapshot: ${what} v6 index ${i} out of range`);
      return v6.subarray(i * 16, i * 16 + 16);
    };
    const byJob = new Map<string, TableEntry[]>();
    let s = 0;
    for (let r = 0; r < rows.length; r += ROW) {
      const job = jobs[rows[r]];
      const nodeIp = nodes[rows[r + 2]];
      if (job === undefined || nodeIp === undefined) throw new TableError("table snapshot: bad string index");
      const n = rows[r + 6];
      if (s + n * SIP > sips.length) throw new TableError("table snapshot: ServiceIP rows truncated");
      const serviceIps: ServiceIp[] = [];
      for (let i = 0; i < n; i++, s += SIP) {
        const flags = sips[s + 1];
        serviceIps.push({
          kind: kindOfCode(sips[s]),
          ...(flags & 1 ? { v4: sips[s + 2] } : {}),
          ...(flags & 2 ? { v6: addr6(sips[s + 3], "ServiceIP") } : {}),
        });
      }
      const e: TableEntry = {
        job,
        instance: rows[r + 1],
        nodeIp,
        nodePort: rows[r + 3],
        nsip4: rows[r + 4],
        ...(rows[r + 5] ? { nsip6: addr6(rows[r + 5] - 1, "nsip6") } : {}),
        serviceIps,
      };
      const list = byJob.get(job);
      if (list) list.push(e);
      else byJob.set(job, [e]);
    }
    if (s !== sips.length) throw new TableError("table snapshot: unused ServiceIP rows");
    const t = new TranslationTable();
    for (const [job, list] of byJob) t.replaceJob(job, list);
    return t;
  }
}

function kindFor(e: TableEntry, g: Group): ServiceIpKind | undefined {
  for (const s of e.serviceIps) {
    if (g.family === 4 ? s.v4 === g.addr4 : s.v6 !== undefined && equalIPv6(s.v6, g.addr6 as Uint8Array)) {
      return s.kind;
    }
  }
  return undefined;
}
