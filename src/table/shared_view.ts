/**
 * One translation table for every data-plane Worker: a read-only view of the owner's columns, which
 * live in SharedArrayBuffers ({@link TranslationTable.shareLayout}). No Worker holds a copy; a table
 * change is written once, by the owner (main isolate).
 *
 * **Concurrency.** One writer, many readers, per-table seqlock:
 * - The owner changes the arrays in place only between two increments of `hdr[0]` (odd while
 *   writing), and never grows an array half-way through a change: when a change needs more room, it
 *   first copies everything into new buffers and tells the readers (`onLayout`). The old buffers are
 *   never written again, so a reader still on them reads the whole table as it was — consistent, a
 *   moment old, as when each Worker applied deltas from its message queue.
 * - A reader brackets a lookup that must be consistent with {@link readBegin} / {@link readValid} and
 *   starts over when `readValid` says a change overlapped. Reads racing a change may see any mix of
 *   old and new values, so every walk here is bounded (indexes by their slot count, lists by their
 *   capacity) and every array access tolerates garbage (out-of-range reads give `undefined`, coerced);
 *   whatever comes out is thrown away by the failed `readValid`.
 * - Atomics.load/add on `hdr[0]` are sequentially consistent in both isolates, which orders the plain
 *   reads between them against the writer's increments (a JS data race yields some written value,
 *   never undefined behaviour).
 *
 * Strings are not on the packet path: node and job names are kept as short ASCII records (text,
 * generation) and decoded only when a reader asks for a row's node key or job name and its cached
 * text has an older generation.
 *
 * @example
 * ```ts
 * import { parseIPv4 } from "../addr/mod.ts";
 * import { TranslationTable } from "./table.ts";
 * const owner = new TranslationTable();
 * owner.upsert({
 *   job: "app.ns.svc.ns", instance: 0, nodeIp: "131.1.0.1", nodePort: 50103,
 *   nsip4: parseIPv4("10.18.0.66"), serviceIps: [{ kind: "RoundRobin", v4: parseIPv4("10.30.0.1") }],
 * });
 * const view = new SharedTableView(owner.shareLayout()); // in a Worker: from a message
 * let g: number;
 * do {
 *   const v = view.readBegin();
 *   g = view.groupOf4(parseIPv4("10.30.0.1"));
 *   if (view.readValid(v)) break;
 * } while (true);
 * ```
 */
import { formatIPv6 } from "../addr/mod.ts";
import { KIND_CODE, kindOfCode, nodeKey, type ServiceIpKind } from "./entry.ts";
import { u32Lookup } from "./u32map.ts";
import { v6Lookup } from "./v6index.ts";

/** Bytes of a node's IP text record (length byte + ASCII; an IPv6 text is at most 45). */
export const NODE_TEXT = 48;
/** Bytes of a job name record (length byte + ASCII; 4 × 30 + 3 = 123 at most). */
export const JOB_TEXT = 128;

/** Writes `text` (ASCII) as a record of `size` bytes at `buf[at..]`: length, then the characters. */
export function writeText(buf: Uint8Array, at: number, size: number, text: string): void {
  const n = Math.min(text.length, size - 1);
  buf[at] = n;
  for (let i = 0; i < n; i++) buf[at + 1 + i] = text.charCodeAt(i) & 0x7f;
}

function readText(buf: Uint8Array, at: number, size: number): string {
  const n = Math.min(buf[at] | 0, size - 1);
  let s = "";
  for (let i = 0; i < n; i++) s += String.fromCharCode(buf[at + 1 + i] | 0);
  return s;
}

/**
 * The owner's shared arrays (all views of SharedArrayBuffers). Posted to a Worker as is: structured
 * clone shares the buffers.
 */
export interface SharedTableLayout {
  /** Bumped each time the owner moves to new buffers. */
  readonly version: number;
  /** [0]: the seqlock. */
  readonly hdr: Int32Array;
  readonly rJob: Int32Array;
  readonly rInst: Int32Array;
  readonly rNode: Int32Array;
  readonly rNs4: Uint32Array;
  readonly rNs6: Uint32Array;
  readonly rHas6: Uint8Array;
  readonly rSip: Int32Array;
  readonly rNodeNext: Int32Array;
  readonly sRow: Int32Array;
  readonly sKind: Uint8Array;
  readonly sFlags: Uint8Array;
  readonly sV4: Uint32Array;
  readonly sV6: Uint32Array;
  readonly sNext: Int32Array;
  readonly sG4Next: Int32Array;
  readonly sG6Next: Int32Array;
  readonly gFam: Uint8Array;
  readonly gHead: Int32Array;
  readonly gCount: Int32Array;
  readonly ns4K: Uint32Array;
  readonly ns4V: Int32Array;
  readonly ns6K: Uint32Array;
  readonly ns6V: Int32Array;
  readonly svc4K: Uint32Array;
  readonly svc4V: Int32Array;
  readonly svc6K: Uint32Array;
  readonly svc6V: Int32Array;
  readonly nText: Uint8Array;
  readonly nPort: Int32Array;
  readonly nGen: Int32Array;
  readonly nHead: Int32Array;
  readonly nCount: Int32Array;
  readonly jText: Uint8Array;
  readonly jGen: Int32Array;
}

/**
 * What the data plane reads of a table: implemented by the owner's {@link TranslationTable} (whose
 * reads never race) and by {@link SharedTableView} in Workers. Row and group numbers are valid inside
 * one `readBegin`/`readValid` bracket.
 */
export interface TableReader {
  /** Changes whenever the table changes (caches keyed by group or row numbers compare it). */
  readonly generation: number;
  readBegin(): number;
  readValid(begin: number): boolean;
  rowOf4(addr: number): number;
  rowOf6(buf: Uint8Array, off?: number): number;
  groupOf4(addr: number): number;
  groupOf6(buf: Uint8Array, off?: number): number;
  groupKind(g: number): ServiceIpKind;
  groupKey(g: number): number | string;
  groupRows(g: number, out: number[]): number;
  rowNsip4(row: number): number;
  rowNsip6(row: number, out: Uint8Array, off?: number): boolean;
  rowInstanceIp4(row: number): number;
  rowInstanceIp6(row: number, out: Uint8Array, off?: number): boolean;
  rowNode(row: number): string;
  rowJob(row: number): string;
  rowInstance(row: number): number;
  nodes(): string[];
  nodeEndpoint(key: string): { ip: string; port: number } | undefined;
  nodeHasKind(key: string, kind: ServiceIpKind): boolean;
  nodeRows(key: string): number[];
  readonly size: number;
}

const NONE = -1;
const F4 = 1;
const F6 = 2;
const INSTANCE = KIND_CODE.Instance;
/** Spins on an odd seqlock before sleeping briefly (a change takes microseconds). */
const SPINS = 1000;

/** A Worker's view of the shared table; see the module documentation. */
export class SharedTableView implements TableReader {
  #L: SharedTableLayout;
  #hdr: Int32Array;
  // Decoded names by id, valid while the id's generation is unchanged.
  #nodeKey: string[] = [];
  #nodeIp: string[] = [];
  #nodeGen: number[] = [];
  #jobName: string[] = [];
  #jobGen: number[] = [];
  readonly #scratch = new Uint8Array(16);
  readonly #ids = new Map<string, number>();

  /** A view of `layout` (as returned by `TranslationTable.shareLayout`, possibly through postMessage). */
  constructor(layout: SharedTableLayout) {
    this.#L = layout;
    this.#hdr = layout.hdr;
  }

  /** Moves to the owner's new buffers (after its table grew or was cleared). */
  attach(layout: SharedTableLayout): void {
    this.#L = layout;
    this.#hdr = layout.hdr;
    this.#nodeKey = [];
    this.#nodeIp = [];
    this.#nodeGen = [];
    this.#jobName = [];
    this.#jobGen = [];
    this.#ids.clear();
  }

  /** Layout version in use. */
  get version(): number {
    return this.#L.version;
  }

  /**
   * Changes with every change of the owner's table: the seqlock counter, combined with the layout
   * version (a move to new buffers starts a new counter).
   */
  get generation(): number {
    return this.#L.version * 0x1_0000_0000 + Atomics.load(this.#hdr, 0);
  }

  /** Starts a consistent read: waits while the owner is writing; returns the token for {@link readValid}. */
  readBegin(): number {
    const h = this.#hdr;
    let v = Atomics.load(h, 0);
    for (let i = 0; v & 1; i++) {
      if (i > SPINS) Atomics.wait(h, 0, v, 1);
      v = Atomics.load(h, 0);
    }
    return v;
  }

  /** True when no change overlapped the reads since `readBegin` returned `begin`. */
  readValid(begin: number): boolean {
    return Atomics.load(this.#hdr, 0) === begin;
  }

  /** Number of entries (counted over the node lists; for status, not the packet path). */
  get size(): number {
    const c = this.#L.nCount;
    let n = 0;
    for (let i = 0; i < c.length; i++) n += c[i] | 0;
    return n;
  }

  rowOf4(addr: number): number {
    return u32Lookup(this.#L.ns4K, this.#L.ns4V, addr);
  }

  rowOf6(buf: Uint8Array, off = 0): number {
    return v6Lookup(this.#L.ns6K, this.#L.ns6V, buf, off);
  }

  groupOf4(addr: number): number {
    return u32Lookup(this.#L.svc4K, this.#L.svc4V, addr);
  }

  groupOf6(buf: Uint8Array, off = 0): number {
    return v6Lookup(this.#L.svc6K, this.#L.svc6V, buf, off);
  }

  groupKind(g: number): ServiceIpKind {
    const L = this.#L;
    return kindOfCode(L.sKind[L.gHead[g] | 0] | 0);
  }

  groupKey(g: number): number | string {
    const L = this.#L;
    const h = L.gHead[g] | 0;
    if (L.gFam[g] === 4) return L.sV4[h] >>> 0;
    words6(L.sV6, h << 2, this.#scratch, 0);
    return formatIPv6(this.#scratch);
  }

  groupRows(g: number, out: number[]): number {
    const L = this.#L;
    const next = L.gFam[g] === 4 ? L.sG4Next : L.sG6Next;
    const cap = L.sRow.length;
    let n = 0;
    for (let s = L.gHead[g] ?? NONE; s !== NONE && s !== undefined && n < cap; s = next[s]) {
      out[n++] = L.sRow[s] | 0;
    }
    return n;
  }

  rowNsip4(row: number): number {
    return this.#L.rNs4[row] >>> 0;
  }

  rowNsip6(row: number, out: Uint8Array, off = 0): boolean {
    const L = this.#L;
    if (!L.rHas6[row]) return false;
    words6(L.rNs6, row << 2, out, off);
    return true;
  }

  rowInstanceIp4(row: number): number {
    const L = this.#L;
    const cap = L.sRow.length;
    let n = 0;
    for (let s = L.rSip[row] ?? NONE; s !== NONE && s !== undefined && n < cap; s = L.sNext[s], n++) {
      if (L.sKind[s] === INSTANCE && (L.sFlags[s] & F4)) return L.sV4[s] >>> 0;
    }
    return NONE;
  }

  rowInstanceIp6(row: number, out: Uint8Array, off = 0): boolean {
    const L = this.#L;
    const cap = L.sRow.length;
    let n = 0;
    for (let s = L.rSip[row] ?? NONE; s !== NONE && s !== undefined && n < cap; s = L.sNext[s], n++) {
      if (L.sKind[s] === INSTANCE && (L.sFlags[s] & F6)) {
        words6(L.sV6, s << 2, out, off);
        return true;
      }
    }
    return false;
  }

  rowNode(row: number): string {
    return this.#node(this.#L.rNode[row] | 0);
  }

  rowJob(row: number): string {
    const L = this.#L;
    const id = L.rJob[row] | 0;
    if (id < 0 || id >= L.jGen.length) return "";
    const g = Atomics.load(L.jGen, id);
    if (this.#jobGen[id] !== g) {
      this.#jobName[id] = readText(L.jText, id * JOB_TEXT, JOB_TEXT);
      this.#jobGen[id] = g;
    }
    return this.#jobName[id];
  }

  rowInstance(row: number): number {
    return this.#L.rInst[row] | 0;
  }

  /** Key of node id `id` (decoded once per generation). */
  #node(id: number): string {
    const L = this.#L;
    if (id < 0 || id >= L.nGen.length) return "";
    const g = Atomics.load(L.nGen, id);
    if (this.#nodeGen[id] !== g) {
      const ip = readText(L.nText, id * NODE_TEXT, NODE_TEXT);
      this.#nodeIp[id] = ip;
      this.#nodeKey[id] = nodeKey(ip, L.nPort[id] | 0);
      this.#nodeGen[id] = g;
    }
    return this.#nodeKey[id];
  }

  #nodeId(key: string): number {
    const c = this.#L.nCount;
    // The ids seen by the last nodes() (re-routing asks about each of them), checked; else a scan.
    const hint = this.#ids.get(key);
    if (hint !== undefined && c[hint] > 0 && this.#node(hint) === key) return hint;
    for (let id = 0; id < c.length; id++) if (c[id] > 0 && this.#node(id) === key) return id;
    return NONE;
  }

  nodes(): string[] {
    const c = this.#L.nCount;
    const out: string[] = [];
    this.#ids.clear();
    for (let id = 0; id < c.length; id++) {
      if (!(c[id] > 0)) continue;
      const key = this.#node(id);
      out.push(key);
      this.#ids.set(key, id);
    }
    return out;
  }

  nodeEndpoint(key: string): { ip: string; port: number } | undefined {
    const id = this.#nodeId(key);
    return id === NONE ? undefined : { ip: this.#nodeIp[id], port: this.#L.nPort[id] | 0 };
  }

  nodeHasKind(key: string, kind: ServiceIpKind): boolean {
    const code = KIND_CODE[kind];
    for (const r of this.nodeRows(key)) {
      const L = this.#L;
      let n = 0;
      for (
        let s = L.rSip[r] ?? NONE;
        s !== NONE && s !== undefined && n < L.sRow.length;
        s = L.sNext[s], n++
      ) {
        if (L.sKind[s] === code) return true;
      }
    }
    return false;
  }

  nodeRows(key: string): number[] {
    const id = this.#nodeId(key);
    const out: number[] = [];
    if (id === NONE) return out;
    const L = this.#L;
    const cap = L.rNodeNext.length;
    for (let r = L.nHead[id] ?? NONE; r !== NONE && r !== undefined && out.length < cap; r = L.rNodeNext[r]) {
      out.push(r);
    }
    return out;
  }
}

/** Writes the 4 words at `W[at..at+4]` as 16 bytes to `out[off..]`. */
function words6(W: Uint32Array, at: number, out: Uint8Array, off: number): void {
  for (let i = 0; i < 4; i++) {
    const w = W[at + i] | 0;
    out[off + 4 * i] = w >>> 24;
    out[off + 4 * i + 1] = (w >>> 16) & 255;
    out[off + 4 * i + 2] = (w >>> 8) & 255;
    out[off + 4 * i + 3] = w & 255;
  }
}
