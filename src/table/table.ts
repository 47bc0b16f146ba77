/**
 * The translation table (reference §3) with O(1) indexes: by ServiceIP (v4 and v6), by namespace IP
 * (v4 and v6), by job name and by node. Every operation validates first and mutates after, so a
 * throwing call changes nothing and the indexes are consistent after every call.
 *
 * The owner (main isolate) applies operations and forwards the same {@link TableDelta} to Workers,
 * which keep a read-only copy built from a {@link TableSnapshot}.
 *
 * **Storage.** Entries live in columns of typed arrays (struct of arrays), not as objects: a row per
 * entry, a slot per ServiceIP, a group per ServiceIP address; job names and node keys are interned
 * once. The indexes are open-addressing maps over typed arrays ({@link U32Map}, {@link V6Map} with
 * row numbers as values), and a ServiceIP group's candidates are a linked list through the ServiceIP
 * slots. A 10k-entry table takes about 0.5 MB per copy instead of ~20 MB of objects, and nothing in it
 * is traced by the garbage collector.
 *
 * **Two views.** The packet path asks by number: {@link TranslationTable.rowOf4} → row,
 * {@link TranslationTable.groupOf4} → group, then reads columns (`rowNsip4`, `rowInstanceIp4`,
 * `rowNode`, `groupRows`, …) without allocating. Row and group numbers are valid until the next
 * change of the table. The control path and tests ask for objects: `byNsip4`, `service4`, `job`,
 * `entries`, … return freshly built {@link TableEntry} / {@link ServiceGroup} copies (equal, not
 * identical, from call to call).
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
 * const g = t.groupOf4(parseIPv4("10.30.0.1")); // packet path: a group number, -1 when unknown
 * const rows: number[] = [];
 * t.groupRows(g, rows); // 1; rows[0] is the entry's row
 * ```
 */
import { formatIPv6, tryParseIPv4, tryParseIPv6 } from "../addr/mod.ts";
import {
  jobNameProblem,
  KIND_CODE,
  kindOfCode,
  nodeKey,
  type ServiceIp,
  type ServiceIpKind,
  type TableEntry,
  TableError,
  validateEntry,
} from "./entry.ts";
import { word } from "./keys.ts";
import { U32Map } from "./u32map.ts";
import { V6Map } from "./v6map.ts";
import { V6IndexMap } from "./v6index.ts";
import { allocI32, allocU32, allocU8 } from "./u32map.ts";
import { JOB_TEXT, NODE_TEXT, type SharedTableLayout, writeText } from "./shared_view.ts";

/** The candidates of one ServiceIP address (one family), as a copy (control path, tests). */
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
  /** Entries having this address among their ServiceIPs, in insertion order. */
  readonly entries: readonly TableEntry[];
}

/** What an operation changed. */
export interface TableChange {
  /** Number of entries inserted. */
  readonly added: number;
  /** Number of entries no longer in the table (including ones replaced by an equal-looking entry). */
  readonly removed: number;
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
 * - `rows`: 7 uint32 per entry, grouped by job: job index, instance, node-ip index, node port, nsip4,
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
  readonly rows: Uint32Array<ArrayBuffer>;
  /** ServiceIP rows, 4 words each. */
  readonly sips: Uint32Array<ArrayBuffer>;
  /** IPv6 address pool. */
  readonly v6: Uint8Array<ArrayBuffer>;
}

const ROW = 7;
const SIP = 4;
const NONE = -1;
const F4 = 1; // slot has a v4 address
const F6 = 2; // slot has a v6 address
const IN4 = 4; // slot is its entry's member of the v4 group of its address
const IN6 = 8; // … of the v6 group
const INSTANCE = KIND_CODE.Instance;

// Every column is copied into a fresh SharedArrayBuffer: the arrays a reader holds are never
// written again once replaced (see #regrow).
function growI32(a: Int32Array, n: number): Int32Array {
  const b = allocI32(n, true);
  b.set(a.subarray(0, Math.min(a.length, n)));
  return b;
}
function growU32(a: Uint32Array, n: number): Uint32Array {
  const b = allocU32(n, true);
  b.set(a.subarray(0, Math.min(a.length, n)));
  return b;
}
function growU8(a: Uint8Array, n: number): Uint8Array {
  const b = allocU8(n, true);
  b.set(a.subarray(0, Math.min(a.length, n)));
  return b;
}
const EMPTY_I32 = () => allocI32(0, true);

/** A job name or a node key, interned: the entries naming it form a doubly linked list of rows. */
interface Names {
  ids: Map<string, number>;
  name: string[];
  head: number[];
  tail: number[];
  count: number[];
  free: number[];
}

function names(): Names {
  return { ids: new Map(), name: [], head: [], tail: [], count: [], free: [] };
}

/** The translation table. See the module documentation. */
export class TranslationTable {
  // Rows: one per entry. A free row has job -1; free rows chain through #rJobNext.
  #rowCap = 0;
  #rowHi = 0;
  #rowFree = NONE;
  #rJob: Int32Array = EMPTY_I32();
  #rInst: Int32Array = EMPTY_I32();
  #rNode: Int32Array = EMPTY_I32();
  #rNs4: Uint32Array = allocU32(0, true);
  #rNs6: Uint32Array = allocU32(0, true); // 4 words per row
  #rHas6: Uint8Array = allocU8(0, true);
  #rSip: Int32Array = EMPTY_I32(); // first ServiceIP slot
  #rNSip: Int32Array = EMPTY_I32();
  #rJobNext: Int32Array = EMPTY_I32();
  #rJobPrev: Int32Array = EMPTY_I32();
  #rNodeNext: Int32Array = EMPTY_I32();
  #rNodePrev: Int32Array = EMPTY_I32();
  // ServiceIP slots: per entry a chain through #sNext (free slots chain the same way).
  #sipCap = 0;
  #sipHi = 0;
  #sipFree = NONE;
  #sRow: Int32Array = EMPTY_I32();
  #sKind: Uint8Array = allocU8(0, true);
  #sFlags: Uint8Array = allocU8(0, true);
  #sV4: Uint32Array = allocU32(0, true);
  #sV6: Uint32Array = allocU32(0, true); // 4 words per slot
  #sNext: Int32Array = EMPTY_I32();
  #sG4Next: Int32Array = EMPTY_I32();
  #sG4Prev: Int32Array = EMPTY_I32();
  #sG6Next: Int32Array = EMPTY_I32();
  #sG6Prev: Int32Array = EMPTY_I32();
  // Groups: one per ServiceIP address; the members are slots (IN4/IN6), linked in insertion order;
  // the address is read from a member slot.
  #grpCap = 0;
  #grpHi = 0;
  #grpFree = NONE;
  #gFam: Uint8Array = allocU8(0, true); // 4, 6, or 0 when free
  #gHead: Int32Array = EMPTY_I32(); // first member slot (next free group when free)
  #gTail: Int32Array = EMPTY_I32();
  #gCount: Int32Array = EMPTY_I32();
  // Indexes.
  #ns4 = new U32Map(8, true);
  #ns6 = new V6IndexMap(8, true);
  #svc4 = new U32Map(8, true);
  #svc6 = new V6IndexMap(8, true);
  #jobs = names();
  #nodes = names();
  #nodeIp: string[] = [];
  #nodePort: number[] = [];
  // What a reader in another isolate needs of the interned names: per node id its IP text, port,
  // first row and entry count; per job id its name; each with a generation bumped when the id is
  // given to a new name (a reader's decoded-text cache compares it).
  #nodeCap = 0;
  #jobCap = 0;
  #nText: Uint8Array = allocU8(0, true);
  #nPort: Int32Array = EMPTY_I32();
  #nGen: Int32Array = EMPTY_I32();
  #nHead: Int32Array = EMPTY_I32();
  #nCount: Int32Array = EMPTY_I32();
  #jText: Uint8Array = allocU8(0, true);
  #jGen: Int32Array = EMPTY_I32();
  #sipUsed = 0;
  #grpUsed = 0;
  /** [0]: seqlock, odd while a change is being written in place (readers in other isolates retry). */
  readonly #hdr = allocI32(4, true);
  #layout = 0;
  #size = 0;
  #generation = 0;
  /**
   * Called after the columns moved to new (larger) SharedArrayBuffers: readers in other isolates need
   * {@link shareLayout} again. Until they have it they read the old arrays, which keep the whole table
   * as it was before (never written again).
   */
  onLayout: (() => void) | undefined;
  readonly #scratch = new Uint8Array(16);
  readonly #scratch6 = new Uint8Array(16);

  /** Bumped by every change (caches of answers derived from the table compare it). */
  get generation(): number {
    return this.#generation;
  }

  /** Number of entries. */
  get size(): number {
    return this.#size;
  }

  // ---------------------------------------------------------------- packet path (numbers)

  /** Row of the entry whose namespace IPv4 is `addr`, or -1. */
  rowOf4(addr: number): number {
    return this.#ns4.get(addr);
  }

  /** Row of the entry whose namespace IPv6 is at `buf[off..off+16]`, or -1. No allocation. */
  rowOf6(buf: Uint8Array, off = 0): number {
    return this.#ns6.get(buf, off);
  }

  /** Group of the ServiceIPv4 `addr`, or -1. */
  groupOf4(addr: number): number {
    return this.#svc4.get(addr);
  }

  /** Group of the ServiceIPv6 at `buf[off..off+16]`, or -1. No allocation. */
  groupOf6(buf: Uint8Array, off = 0): number {
    return this.#svc6.get(buf, off);
  }

  /** Balancing kind of a group (that of its first candidate's matching ServiceIP). */
  groupKind(g: number): ServiceIpKind {
    return kindOfCode(this.#sKind[this.#gHead[g]]);
  }

  /** Identity of a group for per-ServiceIP state: the uint32 (v4) or the canonical text (v6). */
  groupKey(g: number): number | string {
    // A group's address is that of any member slot: the head's.
    const h = this.#gHead[g];
    if (this.#gFam[g] === 4) return this.#sV4[h];
    this.#words6(this.#sV6, h << 2, this.#scratch, 0);
    return formatIPv6(this.#scratch);
  }

  /** Number of candidates of a group. */
  groupSize(g: number): number {
    return this.#gCount[g];
  }

  /** Writes the rows of a group's candidates (insertion order) into `out`; returns their number. */
  groupRows(g: number, out: number[]): number {
    const v4 = this.#gFam[g] === 4;
    const next = v4 ? this.#sG4Next : this.#sG6Next;
    let n = 0;
    for (let s = this.#gHead[g]; s !== NONE; s = next[s]) out[n++] = this.#sRow[s];
    return n;
  }

  /** Namespace IPv4 of a row. */
  rowNsip4(row: number): number {
    return this.#rNs4[row];
  }

  /** Writes the namespace IPv6 of a row to `out[off..off+16]`; false (nothing written) when it has none. */
  rowNsip6(row: number, out: Uint8Array, off = 0): boolean {
    if (!this.#rHas6[row]) return false;
    this.#words6(this.#rNs6, row << 2, out, off);
    return true;
  }

  /** The row's Instance IPv4 (its first Instance-kind ServiceIP with a v4 address), or -1. */
  rowInstanceIp4(row: number): number {
    for (let s = this.#rSip[row]; s !== NONE; s = this.#sNext[s]) {
      if (this.#sKind[s] === INSTANCE && (this.#sFlags[s] & F4)) return this.#sV4[s];
    }
    return NONE;
  }

  /** Writes the row's Instance IPv6 (first Instance-kind ServiceIP with a v6) to `out`; false when none. */
  rowInstanceIp6(row: number, out: Uint8Array, off = 0): boolean {
    for (let s = this.#rSip[row]; s !== NONE; s = this.#sNext[s]) {
      if (this.#sKind[s] === INSTANCE && (this.#sFlags[s] & F6)) {
        this.#words6(this.#sV6, s << 2, out, off);
        return true;
      }
    }
    return false;
  }

  /** Node key (`"ip:port"`, see `nodeKey`) of a row. */
  rowNode(row: number): string {
    return this.#nodes.name[this.#rNode[row]];
  }

  /** Job name of a row. */
  rowJob(row: number): string {
    return this.#jobs.name[this.#rJob[row]];
  }

  /** Instance number of a row. */
  rowInstance(row: number): number {
    return this.#rInst[row];
  }

  /** The entry at a row, as a new object. */
  entryAt(row: number): TableEntry {
    const serviceIps: ServiceIp[] = [];
    for (let s = this.#rSip[row]; s !== NONE; s = this.#sNext[s]) {
      const f = this.#sFlags[s];
      const sip: { kind: ServiceIpKind; v4?: number; v6?: Uint8Array } = { kind: kindOfCode(this.#sKind[s]) };
      if (f & F4) sip.v4 = this.#sV4[s];
      if (f & F6) sip.v6 = this.#words6(this.#sV6, s << 2, new Uint8Array(16), 0);
      serviceIps.push(sip);
    }
    const node = this.#rNode[row];
    const e: {
      job: string;
      instance: number;
      nodeIp: string;
      nodePort: number;
      nsip4: number;
      nsip6?: Uint8Array;
      serviceIps: ServiceIp[];
    } = {
      job: this.#jobs.name[this.#rJob[row]],
      instance: this.#rInst[row],
      nodeIp: this.#nodeIp[node],
      nodePort: this.#nodePort[node],
      nsip4: this.#rNs4[row],
    } as typeof e;
    if (this.#rHas6[row]) e.nsip6 = this.#words6(this.#rNs6, row << 2, new Uint8Array(16), 0);
    e.serviceIps = serviceIps;
    return e;
  }

  /** Underlay address and port of a node key, or undefined when no entry names it. */
  nodeEndpoint(key: string): { ip: string; port: number } | undefined {
    const id = this.#nodes.ids.get(key);
    return id === undefined ? undefined : { ip: this.#nodeIp[id], port: this.#nodePort[id] };
  }

  /** True when an entry on node `key` has a ServiceIP of `kind`. */
  nodeHasKind(key: string, kind: ServiceIpKind): boolean {
    const id = this.#nodes.ids.get(key);
    if (id === undefined) return false;
    const code = KIND_CODE[kind];
    for (let r = this.#nodes.head[id]; r !== NONE; r = this.#rNodeNext[r]) {
      for (let s = this.#rSip[r]; s !== NONE; s = this.#sNext[s]) if (this.#sKind[s] === code) return true;
    }
    return false;
  }

  // ---------------------------------------------------------------- control path (copies)

  /**
   * The distinct jobs bound to ServiceIPv4 `addr` (usually one), or undefined when it is unknown.
   * Reads the columns without copying the group's entries.
   */
  serviceJobs4(addr: number): string[] | undefined {
    const g = this.#svc4.get(addr);
    return g === NONE ? undefined : this.#groupJobs(g);
  }

  /** The distinct jobs bound to the ServiceIPv6 at `buf[off..off+16]`, or undefined. */
  serviceJobs6(buf: Uint8Array, off = 0): string[] | undefined {
    const g = this.#svc6.get(buf, off);
    return g === NONE ? undefined : this.#groupJobs(g);
  }

  #groupJobs(g: number): string[] {
    const next = this.#gFam[g] === 4 ? this.#sG4Next : this.#sG6Next;
    const jobs: string[] = [];
    for (let s = this.#gHead[g]; s !== NONE; s = next[s]) {
      const j = this.rowJob(this.#sRow[s]);
      if (!jobs.includes(j)) jobs.push(j);
    }
    return jobs;
  }

  /** Candidates of a ServiceIPv4 (uint32), or undefined. */
  service4(addr: number): ServiceGroup | undefined {
    const g = this.#svc4.get(addr);
    return g === NONE ? undefined : this.#groupCopy(g);
  }

  /** Candidates of the ServiceIPv6 at `buf[off..off+16]`, or undefined. */
  service6(buf: Uint8Array, off = 0): ServiceGroup | undefined {
    const g = this.#svc6.get(buf, off);
    return g === NONE ? undefined : this.#groupCopy(g);
  }

  /** The entry whose namespace IPv4 is `addr`, or undefined. */
  byNsip4(addr: number): TableEntry | undefined {
    const r = this.#ns4.get(addr);
    return r === NONE ? undefined : this.entryAt(r);
  }

  /** The entry whose namespace IPv6 is at `buf[off..off+16]`, or undefined. */
  byNsip6(buf: Uint8Array, off = 0): TableEntry | undefined {
    const r = this.#ns6.get(buf, off);
    return r === NONE ? undefined : this.entryAt(r);
  }

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

  /** Entries of a job (empty when unknown), in insertion order. */
  job(name: string): TableEntry[] {
    const id = this.#jobs.ids.get(name);
    const out: TableEntry[] = [];
    if (id === undefined) return out;
    for (let r = this.#jobs.head[id]; r !== NONE; r = this.#rJobNext[r]) out.push(this.entryAt(r));
    return out;
  }

  /** True when the table has entries of `name`. */
  hasJob(name: string): boolean {
    return this.#jobs.ids.has(name);
  }

  /** Number of entries of a job. */
  jobSize(name: string): number {
    const id = this.#jobs.ids.get(name);
    return id === undefined ? 0 : this.#jobs.count[id];
  }

  /** Names of the jobs present. */
  jobs(): string[] {
    return [...this.#jobs.ids.keys()];
  }

  /** Entries hosted by a node, by node key `"ip:port"` / `"[ip6]:port"` (see `nodeKey`). */
  node(key: string): TableEntry[] {
    const id = this.#nodes.ids.get(key);
    const out: TableEntry[] = [];
    if (id === undefined) return out;
    for (let r = this.#nodes.head[id]; r !== NONE; r = this.#rNodeNext[r]) out.push(this.entryAt(r));
    return out;
  }

  /** Node keys present. */
  nodes(): string[] {
    return [...this.#nodes.ids.keys()];
  }

  /** All entries (grouped by job, in insertion order within a job). */
  *entries(): IterableIterator<TableEntry> {
    for (const id of this.#jobs.ids.values()) {
      for (let r = this.#jobs.head[id]; r !== NONE; r = this.#rJobNext[r]) yield this.entryAt(r);
    }
  }

  /** All ServiceIP groups (v4 then v6). */
  *services(): IterableIterator<ServiceGroup> {
    for (const g of this.#svc4.values()) yield this.#groupCopy(g);
    for (const g of this.#svc6.values()) yield this.#groupCopy(g);
  }

  #groupCopy(g: number): ServiceGroup {
    const rows: number[] = [];
    const n = this.groupRows(g, rows);
    const entries: TableEntry[] = [];
    for (let i = 0; i < n; i++) entries.push(this.entryAt(rows[i]));
    const v4 = this.#gFam[g] === 4;
    return {
      family: v4 ? 4 : 6,
      key: this.groupKey(g),
      addr4: v4 ? this.#sV4[this.#gHead[g]] : 0,
      addr6: v4 ? undefined : this.#words6(this.#sV6, this.#gHead[g] << 2, new Uint8Array(16), 0),
      kind: this.groupKind(g),
      entries,
    };
  }

  // ---------------------------------------------------------------- operations

  /**
   * Makes room for `entries` entries with `serviceIps` ServiceIPs in all, so that loading a known
   * amount (a snapshot, a static table) allocates each column once instead of doubling it.
   * `addresses`: at most how many distinct ServiceIP addresses of one family they add (the ServiceIP
   * indexes and groups are sized by it; default `serviceIps`, but a round-robin address shared by a
   * job's instances is one key: the 10k-entry test table needs 12.5k, not 20k — ~1 MB less).
   */
  reserve(entries: number, serviceIps = entries * 2, jobs = 0, addresses = serviceIps): void {
    const rows = this.#size + entries;
    const sips = this.#sipUsed + serviceIps;
    const svc = Math.max(this.#svc4.size, this.#svc6.size) + addresses;
    const jobCap = this.#jobs.name.length + jobs;
    if (
      rows <= this.#rowCap && sips <= this.#sipCap && jobCap <= this.#jobCap && this.#ns4.fits(rows) &&
      this.#ns6.fits(rows) && this.#svc4.fits(svc) && this.#svc6.fits(svc)
    ) return;
    const nodes = Math.max(this.#nodeCap, this.#nodes.name.length + Math.min(entries, 256));
    this.#regrow(rows, sips, this.#grpUsed + 2 * addresses, nodes, jobCap, svc);
  }

  /**
   * Replaces all entries of `job` with `entries` at once (Oakestra's refresh). Entries of other jobs
   * with the same namespace IP (v4 or v6) are replaced too, as Oakestra's insert does.
   * Throws TableError (changing nothing) when an entry is malformed, names another job, or two
   * entries share a namespace IP or an instance number.
   */
  replaceJob(job: string, entries: readonly TableEntry[]): TableChange {
    const problem = jobNameProblem(job);
    if (problem) throw new TableError(`replaceJob: ${problem}`);
    const seen4 = new Set<number>();
    const seenN = new Set<number>();
    const seen6 = new V6Map<true>();
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
        if (seen6.has(e.nsip6)) {
          throw new TableError(`replaceJob("${job}"): duplicate nsip6 ${formatIPv6(e.nsip6)}`);
        }
        seen6.set(e.nsip6, true);
      }
    }
    const victims = new Set<number>();
    const id = this.#jobs.ids.get(job);
    if (id !== undefined) {
      for (let r = this.#jobs.head[id]; r !== NONE; r = this.#rJobNext[r]) victims.add(r);
    }
    // The job's own rows are victims already: only namespace-IP conflicts remain to collect.
    for (const e of entries) this.#conflicts(e, victims, false);
    return this.#commit(victims, entries);
  }

  /** Removes every entry of `job`. */
  removeJob(job: string): TableChange {
    const victims = new Set<number>();
    const id = this.#jobs.ids.get(job);
    if (id !== undefined) {
      for (let r = this.#jobs.head[id]; r !== NONE; r = this.#rJobNext[r]) victims.add(r);
    }
    return this.#commit(victims, []);
  }

  /** Removes the entry (entries) of instance `instance` of `job`. */
  removeInstance(job: string, instance: number): TableChange {
    const victims = new Set<number>();
    const id = this.#jobs.ids.get(job);
    if (id !== undefined) {
      for (let r = this.#jobs.head[id]; r !== NONE; r = this.#rJobNext[r]) {
        if (this.#rInst[r] === instance) victims.add(r);
      }
    }
    return this.#commit(victims, []);
  }

  /**
   * Inserts one entry, first removing any entry with the same namespace IPv4 or IPv6 (Oakestra's
   * rule) or the same job and instance number (a migrated instance). Throws TableError when malformed.
   */
  upsert(entry: TableEntry): TableChange {
    validateEntry(entry);
    const victims = new Set<number>();
    this.#conflicts(entry, victims, true);
    return this.#commit(victims, [entry]);
  }

  /** Removes everything. */
  clear(): TableChange {
    const removed = this.#size;
    this.#generation++;
    const gone: number[] = [];
    for (const r of this.#ns4.values()) gone.push(this.#rNs4[r]);
    this.#reset();
    return { added: 0, removed, gone };
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

  /** Collects rows that `e` replaces: same nsip4, same nsip6, or (with `sameInstance`) same job + instance. */
  #conflicts(e: TableEntry, into: Set<number>, sameInstance: boolean): void {
    const a = this.#ns4.get(e.nsip4);
    if (a !== NONE) into.add(a);
    if (e.nsip6) {
      const b = this.#ns6.get(e.nsip6);
      if (b !== NONE) into.add(b);
    }
    if (!sameInstance) return;
    const id = this.#jobs.ids.get(e.job);
    if (id === undefined) return;
    for (let r = this.#jobs.head[id]; r !== NONE; r = this.#rJobNext[r]) {
      if (this.#rInst[r] === e.instance) into.add(r);
    }
  }

  /** Removes `victims`, inserts `added` (already validated and conflict-free among themselves). */
  #commit(victims: Set<number>, added: readonly TableEntry[]): TableChange {
    if (victims.size === 0 && added.length === 0) return { added: 0, removed: 0, gone: [] };
    let sips = 0;
    for (let i = 0; i < added.length; i++) sips += added[i].serviceIps.length;
    this.#ensure(added.length, sips);
    // Seqlock: odd while the shared arrays change in place; readers elsewhere retry (SharedTableView).
    Atomics.add(this.#hdr, 0, 1);
    try {
      return this.#mutate(victims, added);
    } finally {
      Atomics.add(this.#hdr, 0, 1);
    }
  }

  #mutate(victims: Set<number>, added: readonly TableEntry[]): TableChange {
    this.#generation++;
    // What each victim was, to tell afterwards whether its namespace IP now names another instance.
    const was: { nsip4: number; job: string; instance: number; node: string }[] = [];
    for (const r of victims) {
      was.push({
        nsip4: this.#rNs4[r],
        job: this.rowJob(r),
        instance: this.#rInst[r],
        node: this.rowNode(r),
      });
    }
    for (const r of victims) this.#remove(r);
    for (const e of added) this.#insert(e);
    const gone: number[] = [];
    for (const v of was) {
      const now = this.#ns4.get(v.nsip4);
      if (
        now === NONE || this.rowJob(now) !== v.job || this.#rInst[now] !== v.instance ||
        this.rowNode(now) !== v.node
      ) gone.push(v.nsip4);
    }
    return { added: added.length, removed: victims.size, gone };
  }

  #insert(e: TableEntry): void {
    // (A change through #commit has made room already; a table being built here may grow.)
    const jobFresh = !this.#jobs.ids.has(e.job);
    const nk = nodeKey(e.nodeIp, e.nodePort);
    const fresh = !this.#nodes.ids.has(nk);
    const full = (t: Names, cap: number) => t.free.length === 0 && t.name.length >= cap;
    if ((jobFresh && full(this.#jobs, this.#jobCap)) || (fresh && full(this.#nodes, this.#nodeCap))) {
      this.#regrow(this.#rowCap, this.#sipCap, this.#grpCap, this.#nodeCap * 2 + 64, this.#jobCap * 2 + 64);
    }
    const row = this.#allocRow();
    const job = this.#link(this.#jobs, e.job, row, this.#rJobNext, this.#rJobPrev);
    if (jobFresh) {
      writeText(this.#jText, job * JOB_TEXT, JOB_TEXT, e.job);
      Atomics.add(this.#jGen, job, 1); // after the text: a reader seeing the new generation sees it
    }
    const node = this.#link(this.#nodes, nk, row, this.#rNodeNext, this.#rNodePrev);
    if (fresh) {
      this.#nodeIp[node] = e.nodeIp;
      this.#nodePort[node] = e.nodePort;
      writeText(this.#nText, node * NODE_TEXT, NODE_TEXT, e.nodeIp);
      this.#nPort[node] = e.nodePort;
      Atomics.add(this.#nGen, node, 1);
    }
    this.#nHead[node] = this.#nodes.head[node];
    this.#nCount[node] = this.#nodes.count[node];
    this.#rJob[row] = job;
    this.#rNode[row] = node;
    this.#rInst[row] = e.instance;
    this.#rNs4[row] = e.nsip4;
    this.#ns4.set(e.nsip4, row);
    if (e.nsip6) {
      this.#rHas6[row] = 1;
      this.#putWords(this.#rNs6, row << 2, e.nsip6);
      this.#ns6.set(e.nsip6, row);
    } else this.#rHas6[row] = 0;
    let last = NONE;
    const list = e.serviceIps;
    for (let i = 0; i < list.length; i++) {
      const sip = list[i];
      const s = this.#allocSip();
      this.#sRow[s] = row;
      this.#sKind[s] = KIND_CODE[sip.kind];
      this.#sNext[s] = NONE;
      let f = 0;
      if (sip.v4 !== undefined) {
        f |= F4;
        this.#sV4[s] = sip.v4;
        let g = this.#svc4.get(sip.v4);
        if (g === NONE) {
          g = this.#allocGroup(4);
          this.#svc4.set(sip.v4, g);
        }
        // An entry listing the same address twice joins once.
        const tail = this.#gTail[g];
        if (tail === NONE || this.#sRow[tail] !== row) {
          f |= IN4;
          this.#join(g, s, this.#sG4Next, this.#sG4Prev);
        }
      } else this.#sV4[s] = 0;
      if (sip.v6 !== undefined) {
        f |= F6;
        this.#putWords(this.#sV6, s << 2, sip.v6);
        let g = this.#svc6.get(sip.v6);
        if (g === NONE) {
          g = this.#allocGroup(6);
          this.#svc6.set(sip.v6, g);
        }
        const tail = this.#gTail[g];
        if (tail === NONE || this.#sRow[tail] !== row) {
          f |= IN6;
          this.#join(g, s, this.#sG6Next, this.#sG6Prev);
        }
      }
      this.#sFlags[s] = f;
      if (last === NONE) this.#rSip[row] = s;
      else this.#sNext[last] = s;
      last = s;
    }
    if (last === NONE) this.#rSip[row] = NONE;
    this.#rNSip[row] = e.serviceIps.length;
    this.#size++;
  }

  #remove(row: number): void {
    const n4 = this.#rNs4[row];
    if (this.#ns4.get(n4) === row) this.#ns4.delete(n4);
    if (this.#rHas6[row]) {
      const a = this.#words6(this.#rNs6, row << 2, this.#scratch, 0);
      if (this.#ns6.get(a) === row) this.#ns6.delete(a);
    }
    this.#unlink(this.#jobs, this.#rJob[row], row, this.#rJobNext, this.#rJobPrev);
    const node = this.#rNode[row];
    this.#unlink(this.#nodes, node, row, this.#rNodeNext, this.#rNodePrev);
    this.#nHead[node] = this.#nodes.count[node] > 0 ? this.#nodes.head[node] : NONE;
    this.#nCount[node] = this.#nodes.count[node];
    for (let s = this.#rSip[row]; s !== NONE;) {
      const f = this.#sFlags[s];
      if (f & IN4) this.#leave(this.#svc4.get(this.#sV4[s]), s, this.#sG4Next, this.#sG4Prev);
      if (f & IN6) {
        const a = this.#words6(this.#sV6, s << 2, this.#scratch, 0);
        this.#leave(this.#svc6.get(a), s, this.#sG6Next, this.#sG6Prev);
      }
      const next = this.#sNext[s];
      this.#sFlags[s] = 0;
      this.#sNext[s] = this.#sipFree;
      this.#sipFree = s;
      this.#sipUsed--;
      s = next;
    }
    this.#rJob[row] = NONE;
    this.#rJobNext[row] = this.#rowFree;
    this.#rowFree = row;
    this.#size--;
  }

  /** Appends slot `s` to group `g`'s member list. */
  #join(g: number, s: number, next: Int32Array, prev: Int32Array): void {
    const tail = this.#gTail[g];
    prev[s] = tail;
    next[s] = NONE;
    if (tail === NONE) this.#gHead[g] = s;
    else next[tail] = s;
    this.#gTail[g] = s;
    this.#gCount[g]++;
  }

  /** Takes slot `s` out of group `g`; drops the group when it empties. */
  #leave(g: number, s: number, next: Int32Array, prev: Int32Array): void {
    const p = prev[s];
    const n = next[s];
    if (p === NONE) this.#gHead[g] = n;
    else next[p] = n;
    if (n === NONE) this.#gTail[g] = p;
    else prev[n] = p;
    if (--this.#gCount[g] > 0) return;
    // The last member leaves: its slot still holds the group's address.
    if (this.#gFam[g] === 4) this.#svc4.delete(this.#sV4[s]);
    else this.#svc6.delete(this.#words6(this.#sV6, s << 2, this.#scratch6, 0));
    this.#gFam[g] = 0;
    this.#gHead[g] = this.#grpFree;
    this.#grpFree = g;
    this.#grpUsed--;
  }

  /** Interns `name` and appends `row` to its list; returns the name's id. */
  #link(t: Names, name: string, row: number, next: Int32Array, prev: Int32Array): number {
    let id = t.ids.get(name);
    if (id === undefined) {
      id = t.free.pop() ?? t.name.length;
      t.ids.set(name, id);
      t.name[id] = name;
      t.head[id] = NONE;
      t.tail[id] = NONE;
      t.count[id] = 0;
    }
    const tail = t.tail[id];
    prev[row] = tail;
    next[row] = NONE;
    if (tail === NONE) t.head[id] = row;
    else next[tail] = row;
    t.tail[id] = row;
    t.count[id]++;
    return id;
  }

  /** Takes `row` out of name `id`'s list; forgets the name when no row is left. */
  #unlink(t: Names, id: number, row: number, next: Int32Array, prev: Int32Array): void {
    const p = prev[row];
    const n = next[row];
    if (p === NONE) t.head[id] = n;
    else next[p] = n;
    if (n === NONE) t.tail[id] = p;
    else prev[n] = p;
    if (--t.count[id] > 0) return;
    t.ids.delete(t.name[id]);
    t.name[id] = "";
    t.free.push(id);
  }

  #allocRow(): number {
    if (this.#rowFree !== NONE) {
      const r = this.#rowFree;
      this.#rowFree = this.#rJobNext[r];
      return r;
    }
    if (this.#rowHi === this.#rowCap) this.#growRows(Math.max(16, this.#rowCap * 2));
    return this.#rowHi++;
  }

  #growRows(n: number): void {
    if (n > this.#rowCap) this.#regrow(n, this.#sipCap, this.#grpCap, this.#nodeCap, this.#jobCap);
  }

  #allocSip(): number {
    this.#sipUsed++;
    if (this.#sipFree !== NONE) {
      const s = this.#sipFree;
      this.#sipFree = this.#sNext[s];
      return s;
    }
    if (this.#sipHi === this.#sipCap) this.#growSips(Math.max(16, this.#sipCap * 2));
    return this.#sipHi++;
  }

  #growSips(n: number): void {
    if (n > this.#sipCap) this.#regrow(this.#rowCap, n, this.#grpCap, this.#nodeCap, this.#jobCap);
  }

  #allocGroup(family: 4 | 6): number {
    let g: number;
    this.#grpUsed++;
    if (this.#grpFree !== NONE) {
      g = this.#grpFree;
      this.#grpFree = this.#gHead[g];
    } else {
      if (this.#grpHi === this.#grpCap) {
        this.#regrow(this.#rowCap, this.#sipCap, Math.max(16, this.#grpCap * 2), this.#nodeCap, this.#jobCap);
      }
      g = this.#grpHi++;
    }
    this.#gFam[g] = family;
    this.#gHead[g] = NONE;
    this.#gTail[g] = NONE;
    this.#gCount[g] = 0;
    return g;
  }

  /**
   * Makes sure a change adding `rows` entries with `sips` ServiceIPs changes the arrays in place only
   * (no column and no index grows half-way through it): otherwise moves everything first.
   */
  #ensure(rows: number, sips: number): void {
    const needRows = this.#size + rows;
    const needSips = this.#sipUsed + sips;
    const needGrp = this.#grpUsed + 2 * sips; // a ServiceIP with both addresses joins two groups
    const needSvc = Math.max(this.#svc4.size, this.#svc6.size) + sips; // one key per map each
    const needNodes = this.#nodes.name.length + rows;
    const needJobs = this.#jobs.name.length + (rows > 0 ? 1 : 0); // a change adds entries of one job
    if (
      needRows <= this.#rowCap && needSips <= this.#sipCap && needGrp <= this.#grpCap &&
      needNodes <= this.#nodeCap && needJobs <= this.#jobCap && this.#ns4.fits(needRows) &&
      this.#ns6.fits(needRows) && this.#svc4.fits(needSvc) && this.#svc6.fits(needSvc)
    ) return;
    const dbl = (need: number, cap: number) => need <= cap ? cap : Math.max(16, cap * 2, need);
    this.#regrow(
      dbl(needRows, this.#rowCap),
      dbl(needSips, this.#sipCap),
      dbl(needGrp, this.#grpCap),
      dbl(needNodes, this.#nodeCap),
      dbl(needJobs, this.#jobCap),
      needSvc * 2,
    );
  }

  /**
   * Copies every shared array (columns, indexes, name pools) into new SharedArrayBuffers of the given
   * capacities. The old ones are left exactly as they were: a reader still holding them sees the
   * table before this change until it takes the new layout ({@link onLayout}).
   */
  #regrow(rows: number, sips: number, groups: number, nodes: number, jobs: number, svc = 0): void {
    rows = Math.max(rows, this.#rowCap);
    sips = Math.max(sips, this.#sipCap);
    groups = Math.max(groups, this.#grpCap);
    nodes = Math.max(nodes, this.#nodeCap);
    jobs = Math.max(jobs, this.#jobCap);
    this.#rJob = growI32(this.#rJob, rows);
    this.#rInst = growI32(this.#rInst, rows);
    this.#rNode = growI32(this.#rNode, rows);
    this.#rNs4 = growU32(this.#rNs4, rows);
    this.#rNs6 = growU32(this.#rNs6, rows * 4);
    this.#rHas6 = growU8(this.#rHas6, rows);
    this.#rSip = growI32(this.#rSip, rows);
    this.#rNSip = growI32(this.#rNSip, rows);
    this.#rJobNext = growI32(this.#rJobNext, rows);
    this.#rJobPrev = growI32(this.#rJobPrev, rows);
    this.#rNodeNext = growI32(this.#rNodeNext, rows);
    this.#rNodePrev = growI32(this.#rNodePrev, rows);
    this.#rowCap = rows;
    this.#sRow = growI32(this.#sRow, sips);
    this.#sKind = growU8(this.#sKind, sips);
    this.#sFlags = growU8(this.#sFlags, sips);
    this.#sV4 = growU32(this.#sV4, sips);
    this.#sV6 = growU32(this.#sV6, sips * 4);
    this.#sNext = growI32(this.#sNext, sips);
    this.#sG4Next = growI32(this.#sG4Next, sips);
    this.#sG4Prev = growI32(this.#sG4Prev, sips);
    this.#sG6Next = growI32(this.#sG6Next, sips);
    this.#sG6Prev = growI32(this.#sG6Prev, sips);
    this.#sipCap = sips;
    this.#gFam = growU8(this.#gFam, groups);
    this.#gHead = growI32(this.#gHead, groups);
    this.#gTail = growI32(this.#gTail, groups);
    this.#gCount = growI32(this.#gCount, groups);
    this.#grpCap = groups;
    this.#nText = growU8(this.#nText, nodes * NODE_TEXT);
    this.#nPort = growI32(this.#nPort, nodes);
    this.#nGen = growI32(this.#nGen, nodes);
    this.#nHead = growI32(this.#nHead, nodes);
    this.#nCount = growI32(this.#nCount, nodes);
    this.#nodeCap = nodes;
    this.#jText = growU8(this.#jText, jobs * JOB_TEXT);
    this.#jGen = growI32(this.#jGen, jobs);
    this.#jobCap = jobs;
    this.#ns4 = this.#ns4.copy(rows + 1);
    this.#ns6 = this.#ns6.copy(rows + 1);
    // Each ServiceIP index only as large as its own keys need (they are most of the bytes).
    this.#svc4 = this.#svc4.copy(Math.max(svc, this.#svc4.size * 2) + 1);
    this.#svc6 = this.#svc6.copy(Math.max(svc, this.#svc6.size * 2) + 1);
    this.#layout++;
    this.onLayout?.();
  }

  /**
   * The shared arrays as they are now, to post to a Worker (structured clone shares
   * SharedArrayBuffers, it does not copy them): read there with `SharedTableView`. Valid until
   * {@link onLayout} is called.
   */
  shareLayout(): SharedTableLayout {
    const ns4 = this.#ns4.arrays();
    const ns6 = this.#ns6.arrays();
    const svc4 = this.#svc4.arrays();
    const svc6 = this.#svc6.arrays();
    return {
      version: this.#layout,
      hdr: this.#hdr,
      rJob: this.#rJob,
      rInst: this.#rInst,
      rNode: this.#rNode,
      rNs4: this.#rNs4,
      rNs6: this.#rNs6,
      rHas6: this.#rHas6,
      rSip: this.#rSip,
      rNodeNext: this.#rNodeNext,
      sRow: this.#sRow,
      sKind: this.#sKind,
      sFlags: this.#sFlags,
      sV4: this.#sV4,
      sV6: this.#sV6,
      sNext: this.#sNext,
      sG4Next: this.#sG4Next,
      sG6Next: this.#sG6Next,
      gFam: this.#gFam,
      gHead: this.#gHead,
      gCount: this.#gCount,
      ns4K: ns4.keys,
      ns4V: ns4.vals,
      ns6K: ns6.keys,
      ns6V: ns6.vals,
      svc4K: svc4.keys,
      svc4V: svc4.vals,
      svc6K: svc6.keys,
      svc6V: svc6.vals,
      nText: this.#nText,
      nPort: this.#nPort,
      nGen: this.#nGen,
      nHead: this.#nHead,
      nCount: this.#nCount,
      jText: this.#jText,
      jGen: this.#jGen,
    };
  }

  /** Readers in this isolate never race the writer: a read needs no check (see `SharedTableView`). */
  readBegin(): number {
    return 0;
  }

  /** Always true here (the owner's reads cannot be torn). */
  readValid(_begin: number): boolean {
    return true;
  }

  /** Rows of the entries hosted by node `key` (insertion order). */
  nodeRows(key: string): number[] {
    const id = this.#nodes.ids.get(key);
    const out: number[] = [];
    if (id === undefined) return out;
    for (let r = this.#nodes.head[id]; r !== NONE; r = this.#rNodeNext[r]) out.push(r);
    return out;
  }

  #reset(): void {
    this.#rowCap =
      this.#rowHi =
      this.#sipCap =
      this.#sipHi =
      this.#grpCap =
      this.#grpHi =
        0;
    this.#nodeCap =
      this.#jobCap =
      this.#sipUsed =
      this.#grpUsed =
        0;
    this.#rowFree = this.#sipFree = this.#grpFree = NONE;
    const e32 = EMPTY_I32();
    const eU32 = allocU32(0, true);
    const eU8 = allocU8(0, true);
    this.#rJob =
      this.#rInst =
      this.#rNode =
      this.#rSip =
      this.#rNSip =
        e32;
    this.#rJobNext =
      this.#rJobPrev =
      this.#rNodeNext =
      this.#rNodePrev =
        e32;
    this.#rNs4 = this.#rNs6 = eU32;
    this.#rHas6 = eU8;
    this.#sRow =
      this.#sNext =
      this.#sG4Next =
      this.#sG4Prev =
      this.#sG6Next =
      this.#sG6Prev =
        e32;
    this.#sKind = this.#sFlags = eU8;
    this.#sV4 = this.#sV6 = eU32;
    this.#gFam = eU8;
    this.#gHead = this.#gTail = this.#gCount = e32;
    this.#nText = this.#jText = eU8;
    this.#nPort =
      this.#nGen =
      this.#nHead =
      this.#nCount =
      this.#jGen =
        e32;
    this.#ns4 = new U32Map(8, true);
    this.#ns6 = new V6IndexMap(8, true);
    this.#svc4 = new U32Map(8, true);
    this.#svc6 = new V6IndexMap(8, true);
    this.#jobs = names();
    this.#nodes = names();
    this.#nodeIp = [];
    this.#nodePort = [];
    this.#size = 0;
    this.#layout++;
    this.onLayout?.();
  }

  /** Stores the 16 bytes of `a` as 4 big-endian words at `W[at..at+4]`. */
  #putWords(W: Uint32Array, at: number, a: Uint8Array): void {
    W[at] = word(a, 0);
    W[at + 1] = word(a, 4);
    W[at + 2] = word(a, 8);
    W[at + 3] = word(a, 12);
  }

  /** Writes the 4 words at `W[at..at+4]` as 16 bytes to `out[off..]`; returns `out`. */
  #words6(W: Uint32Array, at: number, out: Uint8Array, off: number): Uint8Array {
    for (let i = 0; i < 4; i++) {
      const w = W[at + i];
      out[off + 4 * i] = w >>> 24;
      out[off + 4 * i + 1] = (w >>> 16) & 255;
      out[off + 4 * i + 2] = (w >>> 8) & 255;
      out[off + 4 * i + 3] = w & 255;
    }
    return out;
  }

  // ---------------------------------------------------------------- snapshots

  /** The whole table in compact plain-data form (see {@link TableSnapshot}). */
  snapshot(): TableSnapshot {
    const jobs: string[] = [];
    const nodes: string[] = [];
    const nodeIdx = new Map<string, number>();
    let nSips = 0;
    let nV6 = 0;
    for (const id of this.#jobs.ids.values()) {
      for (let r = this.#jobs.head[id]; r !== NONE; r = this.#rJobNext[r]) {
        nSips += this.#rNSip[r];
        if (this.#rHas6[r]) nV6++;
        for (let s = this.#rSip[r]; s !== NONE; s = this.#sNext[s]) if (this.#sFlags[s] & F6) nV6++;
      }
    }
    const rows = new Uint32Array(this.#size * ROW);
    const sips = new Uint32Array(nSips * SIP);
    const pool = new Uint8Array(nV6 * 16);
    let r = 0;
    let s = 0;
    let v = 0;
    for (const [job, id] of this.#jobs.ids) {
      const j = jobs.length;
      jobs.push(job);
      for (let row = this.#jobs.head[id]; row !== NONE; row = this.#rJobNext[row]) {
        const ip = this.#nodeIp[this.#rNode[row]];
        let ni = nodeIdx.get(ip);
        if (ni === undefined) {
          ni = nodes.length;
          nodes.push(ip);
          nodeIdx.set(ip, ni);
        }
        rows[r++] = j;
        rows[r++] = this.#rInst[row];
        rows[r++] = ni;
        rows[r++] = this.#nodePort[this.#rNode[row]];
        rows[r++] = this.#rNs4[row];
        if (this.#rHas6[row]) {
          this.#words6(this.#rNs6, row << 2, pool, v * 16);
          rows[r++] = ++v;
        } else rows[r++] = 0;
        rows[r++] = this.#rNSip[row];
        for (let q = this.#rSip[row]; q !== NONE; q = this.#sNext[q]) {
          const f = this.#sFlags[q];
          sips[s++] = this.#sKind[q];
          sips[s++] = f & (F4 | F6);
          sips[s++] = f & F4 ? this.#sV4[q] : 0;
          if (f & F6) {
            this.#words6(this.#sV6, q << 2, pool, v * 16);
            sips[s++] = v++;
          } else sips[s++] = 0;
        }
      }
    }
    return { format: 1, jobs, nodes, rows, sips, v6: pool };
  }

  /**
   * Builds a table from a snapshot (e.g. in a Worker): a job's rows must be contiguous (as
   * {@link snapshot} writes them). Every row is validated like an inserted entry. Throws TableError
   * when the snapshot is malformed.
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
    const addr6 = (i: number, into: Uint8Array, what: string): Uint8Array => {
      if (i >= nV6) throw new TableError(`table snapshot: ${what} v6 index ${i} out of range`);
      for (let k = 0, at = i * 16; k < 16; k++) into[k] = v6[at + k]; // no view object per address
      return into;
    };
    // One reused entry (and ServiceIP objects and address buffers) carries every row into the
    // columns: a Worker loading 10k entries allocates nothing per row.
    const t = new TranslationTable();
    t.reserve(rows.length / ROW, sips.length / SIP);
    const sipPool: { kind: ServiceIpKind; v4?: number; v6?: Uint8Array }[] = [];
    const v6Pool: Uint8Array[] = [];
    const serviceIps: ServiceIp[] = [];
    const nsip6 = new Uint8Array(16);
    const e = {
      job: "",
      instance: 0,
      nodeIp: "",
      nodePort: 0,
      nsip4: 0,
      nsip6: undefined as Uint8Array | undefined,
      serviceIps,
    };
    const done = new Set<number>();
    const seenN = new Set<number>();
    let current = -1;
    let s = 0;
    for (let r = 0; r < rows.length; r += ROW) {
      const j = rows[r];
      const job = jobs[j];
      const nodeIp = nodes[rows[r + 2]];
      if (job === undefined || nodeIp === undefined) throw new TableError("table snapshot: bad string index");
      if (j !== current) {
        if (done.has(j)) throw new TableError(`table snapshot: rows of job ${job} are not contiguous`);
        const problem = jobNameProblem(job);
        if (problem) throw new TableError(`table snapshot: ${problem}`);
        done.add(j);
        seenN.clear();
        current = j;
      }
      const n = rows[r + 6];
      if (s + n * SIP > sips.length) throw new TableError("table snapshot: ServiceIP rows truncated");
      serviceIps.length = n;
      for (let i = 0; i < n; i++, s += SIP) {
        const flags = sips[s + 1];
        const sip = sipPool[i] ??= { kind: "Instance" };
        sip.kind = kindOfCode(sips[s]);
        sip.v4 = flags & F4 ? sips[s + 2] : undefined;
        sip.v6 = flags & F6 ? addr6(sips[s + 3], v6Pool[i] ??= new Uint8Array(16), "ServiceIP") : undefined;
        serviceIps[i] = sip;
      }
      e.job = job;
      e.instance = rows[r + 1];
      e.nodeIp = nodeIp;
      e.nodePort = rows[r + 3];
      e.nsip4 = rows[r + 4];
      e.nsip6 = rows[r + 5] ? addr6(rows[r + 5] - 1, nsip6, "nsip6") : undefined;
      validateEntry(e, true);
      if (seenN.has(e.instance)) {
        throw new TableError(`table snapshot: duplicate instance ${job}#${e.instance}`);
      }
      if (t.#ns4.get(e.nsip4) !== NONE || (e.nsip6 && t.#ns6.get(e.nsip6) !== NONE)) {
        throw new TableError(`table snapshot: namespace IP of ${job}#${e.instance} used twice`);
      }
      seenN.add(e.instance);
      t.#insert(e);
    }
    if (s !== sips.length) throw new TableError("table snapshot: unused ServiceIP rows");
    return t;
  }
}
