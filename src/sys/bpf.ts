/**
 * Typed `bpf(2)` calls for the tc kernel fast path (through libc's `syscall`, FFI): maps (create,
 * lookup, update, delete, iterate), program load (with the verifier's log on refusal), tcx attach /
 * detach / query (`BPF_TCX_INGRESS`: no tc, no netlink; the attachment belongs to the device and
 * outlives the process), objects by id (adopting what a previous daemon left) and pinning.
 * Every buffer is checked against the sizes the caller declared; every failure is a {@link BpfError} (ffi/bpf.ts, which also loads programs: `loadProgram`).
 *
 * Layouts of `union bpf_attr` are given per command below (LP64, little-endian).
 *
 * @example
 * ```ts
 * import { BpfMap, BPF_MAP_TYPE_HASH } from "./bpf.ts";
 * const m = BpfMap.create({ name: "demo", type: BPF_MAP_TYPE_HASH, keySize: 4, valueSize: 4, maxEntries: 8 });
 * m.update(new Uint8Array(4), new Uint8Array([1, 0, 0, 0]));
 * console.log(m.lookup(new Uint8Array(4)));
 * m.close();
 * ```
 */
import { bufferAddress, cstr, errno, libc } from "../../ffi/libc.ts";
import { BpfError, sysBpf } from "../../ffi/bpf.ts";

const CMD = {
  MAP_CREATE: 0,
  MAP_LOOKUP_ELEM: 1,
  MAP_UPDATE_ELEM: 2,
  MAP_DELETE_ELEM: 3,
  MAP_GET_NEXT_KEY: 4,
  OBJ_PIN: 6,
  OBJ_GET: 7,
  PROG_ATTACH: 8,
  PROG_DETACH: 9,
  PROG_GET_FD_BY_ID: 13,
  MAP_GET_FD_BY_ID: 14,
  OBJ_GET_INFO_BY_FD: 15,
  PROG_QUERY: 16,
} as const;

/** `BPF_MAP_TYPE_*` used here. */
export const BPF_MAP_TYPE_HASH = 1;
export const BPF_MAP_TYPE_ARRAY = 2;
export const BPF_MAP_TYPE_PERCPU_ARRAY = 6;
/** `BPF_PROG_TYPE_SCHED_CLS` (tc / tcx programs). */
export const BPF_PROG_TYPE_SCHED_CLS = 3;
/** `enum bpf_attach_type` values of tcx (kernel ≥ 6.6). */
export const BPF_TCX_INGRESS = 46;
export const BPF_TCX_EGRESS = 47;
/** Map update flags. */
export const BPF_ANY = 0;

const ATTR = 128;
const ENOENT = 2;
const ENOSPC = 28;

/** Runs `bpf(cmd, attr)`; returns the result (≥ 0) or -errno. */
function call(cmd: number, attr: Uint8Array): number {
  const r = Number(libc.syscall_bpf(sysBpf(), BigInt(cmd), attr, BigInt(attr.length)));
  return r >= 0 ? r : -errno();
}

function mustCall(name: string, cmd: number, attr: Uint8Array): number {
  const r = call(cmd, attr);
  if (r < 0) throw new BpfError(`bpf(${name})`, -r);
  return r;
}

function attr(): [Uint8Array, DataView] {
  const a = new Uint8Array(ATTR);
  return [a, new DataView(a.buffer)];
}

const ptr = (b: Uint8Array): bigint => BigInt(bufferAddress(b));

/** Writes an object name (≤ 15 bytes, [A-Za-z0-9_.]) at `at`. */
function putName(a: Uint8Array, at: number, name: string): void {
  if (!/^[A-Za-z0-9_.]{0,15}$/.test(name)) throw new RangeError(`bpf object name ${JSON.stringify(name)}`);
  a.set(new TextEncoder().encode(name), at);
}

/** The number of possible CPUs (per-CPU map values hold one slot each). */
export function possibleCpus(): number {
  const s = Deno.readTextFileSync("/sys/devices/system/cpu/possible").trim();
  let n = 0;
  for (const part of s.split(",")) {
    const [a, b] = part.split("-").map(Number);
    n += (b ?? a) - a + 1;
  }
  return n;
}

/** Definition of a map to create. */
export interface BpfMapSpec {
  name: string;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags?: number;
}

/** A BPF map by fd (owned: {@link close} it). */
export class BpfMap {
  readonly fd: number;
  readonly spec: BpfMapSpec;
  /** Bytes of a value as user space sees it (× CPUs for per-CPU maps). */
  readonly valueBytes: number;

  private constructor(fd: number, spec: BpfMapSpec) {
    this.fd = fd;
    this.spec = spec;
    this.valueBytes = spec.type === BPF_MAP_TYPE_PERCPU_ARRAY
      ? Math.ceil(spec.valueSize / 8) * 8 * possibleCpus()
      : spec.valueSize;
  }

  /** `BPF_MAP_CREATE`: map_type @0, key_size @4, value_size @8, max_entries @12, map_flags @16, map_name @28. */
  static create(spec: BpfMapSpec): BpfMap {
    const [a, v] = attr();
    v.setUint32(0, spec.type, true);
    v.setUint32(4, spec.keySize, true);
    v.setUint32(8, spec.valueSize, true);
    v.setUint32(12, spec.maxEntries, true);
    v.setUint32(16, spec.flags ?? 0, true);
    putName(a, 28, spec.name);
    return new BpfMap(mustCall(`MAP_CREATE ${spec.name}`, CMD.MAP_CREATE, a), spec);
  }

  /** Wraps an fd from {@link mapFdById} / {@link objGet}; checks it matches `spec`. */
  static adopt(fd: number, spec: BpfMapSpec): BpfMap {
    const info = mapInfo(fd);
    if (
      info.type !== spec.type || info.keySize !== spec.keySize || info.valueSize !== spec.valueSize ||
      info.maxEntries !== spec.maxEntries
    ) {
      libc.close(fd);
      throw new BpfError(`adopt map ${spec.name}: different layout`, 22);
    }
    return new BpfMap(fd, spec);
  }

  #key(k: Uint8Array): Uint8Array {
    if (k.length !== this.spec.keySize) throw new RangeError(`${this.spec.name}: key of ${k.length} bytes`);
    return k;
  }

  /** Map elem attr: map_fd @0, key @8, value / next_key @16, flags @24. */
  #elem(k: Uint8Array, val: Uint8Array | null, flags = 0): Uint8Array {
    const [a, v] = attr();
    v.setUint32(0, this.fd, true);
    v.setBigUint64(8, ptr(k), true);
    if (val) v.setBigUint64(16, ptr(val), true);
    v.setBigUint64(24, BigInt(flags), true);
    return a;
  }

  /** The value of `key`, or undefined when absent. */
  lookup(key: Uint8Array): Uint8Array | undefined {
    const out = new Uint8Array(this.valueBytes);
    const r = call(CMD.MAP_LOOKUP_ELEM, this.#elem(this.#key(key), out));
    if (r === -ENOENT) return undefined;
    if (r < 0) throw new BpfError(`bpf(MAP_LOOKUP_ELEM ${this.spec.name})`, -r);
    return out;
  }

  /** Sets `key` to `value` (BPF_ANY by default). */
  update(key: Uint8Array, value: Uint8Array, flags = BPF_ANY): void {
    if (value.length !== this.valueBytes) {
      throw new RangeError(`${this.spec.name}: value of ${value.length} bytes (expected ${this.valueBytes})`);
    }
    const r = call(CMD.MAP_UPDATE_ELEM, this.#elem(this.#key(key), value, flags));
    if (r < 0) throw new BpfError(`bpf(MAP_UPDATE_ELEM ${this.spec.name})`, -r === ENOSPC ? ENOSPC : -r);
  }

  /** Deletes `key`; false when it was absent. */
  delete(key: Uint8Array): boolean {
    const r = call(CMD.MAP_DELETE_ELEM, this.#elem(this.#key(key), null));
    if (r === -ENOENT) return false;
    if (r < 0) throw new BpfError(`bpf(MAP_DELETE_ELEM ${this.spec.name})`, -r);
    return true;
  }

  /** Every key (a snapshot; entries may change meanwhile). */
  keys(): Uint8Array[] {
    const out: Uint8Array[] = [];
    let prev: Uint8Array | null = null;
    for (;;) {
      const next = new Uint8Array(this.spec.keySize);
      const [a, v] = attr();
      v.setUint32(0, this.fd, true);
      if (prev) v.setBigUint64(8, ptr(prev), true);
      v.setBigUint64(16, ptr(next), true);
      const r = call(CMD.MAP_GET_NEXT_KEY, a);
      if (r === -ENOENT) return out;
      if (r < 0) throw new BpfError(`bpf(MAP_GET_NEXT_KEY ${this.spec.name})`, -r);
      out.push(next);
      prev = next;
    }
  }

  /** Every entry (key, value). */
  *entries(): Generator<[Uint8Array, Uint8Array]> {
    for (const k of this.keys()) {
      const val = this.lookup(k);
      if (val) yield [k, val];
    }
  }

  close(): void {
    libc.close(this.fd);
  }
}

/** `BPF_PROG_ATTACH` / `DETACH` (tcx): target_ifindex @0, attach_bpf_fd @4, attach_type @8, flags @12. */
export function tcxAttach(ifindex: number, progFd: number, attachType = BPF_TCX_INGRESS): void {
  const [a, v] = attr();
  v.setUint32(0, ifindex, true);
  v.setUint32(4, progFd, true);
  v.setUint32(8, attachType, true);
  mustCall(`PROG_ATTACH tcx ifindex ${ifindex}`, CMD.PROG_ATTACH, a);
}

/** Detaches program `progFd` from the device's tcx hook; false when it was not attached. */
export function tcxDetach(ifindex: number, progFd: number, attachType = BPF_TCX_INGRESS): boolean {
  const [a, v] = attr();
  v.setUint32(0, ifindex, true);
  v.setUint32(4, progFd, true);
  v.setUint32(8, attachType, true);
  const r = call(CMD.PROG_DETACH, a);
  if (r === -ENOENT) return false;
  if (r < 0) throw new BpfError(`bpf(PROG_DETACH tcx ifindex ${ifindex})`, -r);
  return true;
}

/**
 * `BPF_PROG_QUERY` (tcx): target_ifindex @0, attach_type @4, prog_ids @16, prog_cnt @24. The ids of
 * the programs attached to the device's hook (empty for a device without any, or gone).
 */
export function tcxQuery(ifindex: number, attachType = BPF_TCX_INGRESS): number[] {
  const ids = new Uint32Array(64);
  const bytes = new Uint8Array(ids.buffer);
  const [a, v] = attr();
  v.setUint32(0, ifindex, true);
  v.setUint32(4, attachType, true);
  v.setBigUint64(16, ptr(bytes), true);
  v.setUint32(24, ids.length, true);
  const r = call(CMD.PROG_QUERY, a);
  if (r === -ENOENT || r === -19 /* ENODEV */) return [];
  if (r < 0) throw new BpfError(`bpf(PROG_QUERY ifindex ${ifindex})`, -r);
  return [...ids.subarray(0, Math.min(ids.length, v.getUint32(24, true)))];
}

function fdById(cmd: number, name: string, id: number): number | undefined {
  const [a, v] = attr();
  v.setUint32(0, id, true);
  const r = call(cmd, a);
  if (r === -ENOENT) return undefined;
  if (r < 0) throw new BpfError(`bpf(${name} ${id})`, -r);
  return r;
}

/** An fd of the program with this id (undefined when gone). */
export function progFdById(id: number): number | undefined {
  return fdById(CMD.PROG_GET_FD_BY_ID, "PROG_GET_FD_BY_ID", id);
}

/** An fd of the map with this id (undefined when gone). */
export function mapFdById(id: number): number | undefined {
  return fdById(CMD.MAP_GET_FD_BY_ID, "MAP_GET_FD_BY_ID", id);
}

function objInfo(fd: number, info: Uint8Array): DataView {
  const [a, v] = attr();
  v.setUint32(0, fd, true);
  v.setUint32(4, info.length, true);
  v.setBigUint64(8, ptr(info), true);
  mustCall("OBJ_GET_INFO_BY_FD", CMD.OBJ_GET_INFO_BY_FD, a);
  return new DataView(info.buffer);
}

function nameAt(b: Uint8Array, at: number): string {
  const s = b.subarray(at, at + 16);
  const end = s.indexOf(0);
  return new TextDecoder().decode(s.subarray(0, end < 0 ? 16 : end));
}

/** A loaded program's id, name and map ids (`struct bpf_prog_info`: id @4, nr_map_ids @52, map_ids @56, name @64). */
export function progInfo(fd: number): { id: number; name: string; mapIds: number[] } {
  const ids = new Uint32Array(32);
  const info = new Uint8Array(232);
  const dv = new DataView(info.buffer);
  dv.setUint32(52, ids.length, true);
  dv.setBigUint64(56, ptr(new Uint8Array(ids.buffer)), true);
  const v = objInfo(fd, info);
  const n = Math.min(ids.length, v.getUint32(52, true));
  return { id: v.getUint32(4, true), name: nameAt(info, 64), mapIds: [...ids.subarray(0, n)] };
}

/** A map's layout and name (`struct bpf_map_info`: type @0, id @4, key @8, value @12, max @16, name @24). */
export function mapInfo(fd: number): {
  id: number;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  name: string;
} {
  const info = new Uint8Array(96);
  const v = objInfo(fd, info);
  return {
    type: v.getUint32(0, true),
    id: v.getUint32(4, true),
    keySize: v.getUint32(8, true),
    valueSize: v.getUint32(12, true),
    maxEntries: v.getUint32(16, true),
    name: nameAt(info, 24),
  };
}

/** `BPF_OBJ_PIN`: pathname @0, bpf_fd @8 (the path must be on a mounted bpffs). */
export function objPin(fd: number, path: string): void {
  const p = cstr(path);
  const [a, v] = attr();
  v.setBigUint64(0, ptr(p), true);
  v.setUint32(8, fd, true);
  mustCall(`OBJ_PIN ${path}`, CMD.OBJ_PIN, a);
}

/** `BPF_OBJ_GET`: an fd of the object pinned at `path` (undefined when nothing is). */
export function objGet(path: string): number | undefined {
  const p = cstr(path);
  const [a, v] = attr();
  v.setBigUint64(0, ptr(p), true);
  const r = call(CMD.OBJ_GET, a);
  if (r === -ENOENT) return undefined;
  if (r < 0) throw new BpfError(`bpf(OBJ_GET ${path})`, -r);
  return r;
}

/** Closes an fd returned here. */
export function closeFd(fd: number): void {
  libc.close(fd);
}
