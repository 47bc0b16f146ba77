/**
 * The BPF system calls the data plane needs to spread packets over its workers:
 * - {@link loadSocketFilter}: `bpf(BPF_PROG_LOAD)` of a `BPF_PROG_TYPE_SOCKET_FILTER` program (eBPF
 *   bytecode, 8 bytes per instruction), returning its fd;
 * - {@link setTunSteering}: `TUNSETSTEERINGEBPF` — a multi-queue TUN asks that program which queue
 *   (return value, as u16, modulo the number of queues) a packet goes to;
 * - {@link attachReuseportCbpf}: `SO_ATTACH_REUSEPORT_CBPF` — a classic BPF program (8 bytes per
 *   `struct sock_filter`) picks the socket of a `SO_REUSEPORT` group (index in join order; an index
 *   past the group falls back to the kernel's hash).
 *
 * The programs themselves are pure data built elsewhere (`src/proxy/lanes.ts`). Every fd returned here
 * belongs to the caller, who closes it (`libc.close`) on stop.
 *
 * Layouts (LP64): `union bpf_attr` for BPF_PROG_LOAD: `u32 prog_type` @0, `u32 insn_cnt` @4,
 * `u64 insns` @8, `u64 license` @16, `u32 log_level` @24, `u32 log_size` @28, `u64 log_buf` @32, the
 * rest zero (we pass 128 bytes). `struct sock_fprog`: `u16 len` @0, `struct sock_filter *filter` @8.
 *
 * @example
 * ```ts
 * import { attachReuseportCbpf, loadSocketFilter, setTunSteering } from "./bpf.ts";
 * declare const ebpf: Uint8Array, cbpf: Uint8Array, tunFd: number, sockFd: number;
 * const prog = loadSocketFilter(ebpf);
 * setTunSteering(tunFd, prog);
 * attachReuseportCbpf(sockFd, cbpf);
 * ```
 */
import { bufferAddress, cstr, Errno, errno, libc, SyscallError } from "./libc.ts";
import { assertLp64 } from "./tun.ts";

const BPF_PROG_LOAD = 5n;
const BPF_PROG_TYPE_SOCKET_FILTER = 1;
/** `_IOR('T', 224, int)`. */
export const TUNSETSTEERINGEBPF = 0x800454e0;
const SOL_SOCKET = 1;
/** `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h). */
export const SO_ATTACH_REUSEPORT_CBPF = 51;
const ATTR_SIZE = 128;
const LOG_SIZE = 1 << 20; // a refused tc program's verifier log is long (allocated only on failure)

/** The bpf(2) syscall number of this architecture. */
export function sysBpf(): bigint {
  assertLp64();
  return Deno.build.arch === "x86_64" ? 321n : 280n;
}

/** A `bpf()` call failed; `log` is the verifier's explanation for a refused program when it gave one. */
export class BpfError extends SyscallError {
  readonly log: string;
  constructor(call: string, code: number, log = "") {
    super(call, code);
    this.name = "BpfError";
    this.log = log;
    if (log) this.message += `: ${log.trim().split("\n").slice(-6).join(" | ")}`;
  }
}

/** A program to load: instructions (8 bytes each, map fds already patched in). */
export interface BpfProgSpec {
  /** Object name (≤ 15 bytes of [A-Za-z0-9_.]). */
  name: string;
  /** `BPF_PROG_TYPE_*`. */
  type: number;
  insns: Uint8Array;
  license: string;
  expectedAttachType?: number;
}

/**
 * `bpf(BPF_PROG_LOAD)`; returns the program's fd. A refused program is loaded again with the verifier
 * log on, and its log ends the thrown {@link BpfError}. Layout: prog_type @0, insn_cnt @4, insns @8,
 * license @16, log_level @24, log_size @28, log_buf @32, prog_name @48, expected_attach_type @68.
 */
export function loadProgram(spec: BpfProgSpec): number {
  if (spec.insns.length === 0 || spec.insns.length % 8 !== 0) {
    throw new RangeError("eBPF bytecode: 8 bytes per instruction");
  }
  if (!/^[A-Za-z0-9_.]{0,15}$/.test(spec.name)) {
    throw new RangeError(`bpf object name ${JSON.stringify(spec.name)}`);
  }
  const code = new Uint8Array(spec.insns); // an ArrayBuffer of its own, referenced until the call returns
  const license = cstr(spec.license);
  const attr = new Uint8Array(ATTR_SIZE);
  const v = new DataView(attr.buffer);
  v.setUint32(0, spec.type, true);
  v.setUint32(4, code.length / 8, true);
  v.setBigUint64(8, BigInt(bufferAddress(code)), true);
  v.setBigUint64(16, BigInt(bufferAddress(license)), true);
  attr.set(new TextEncoder().encode(spec.name), 48); // prog_name[16]
  v.setUint32(68, spec.expectedAttachType ?? 0, true);
  const fd = Number(libc.syscall_bpf(sysBpf(), BPF_PROG_LOAD, attr, BigInt(ATTR_SIZE)));
  if (fd >= 0) return fd;
  const first = errno();
  const log = new Uint8Array(LOG_SIZE);
  v.setUint32(24, 1, true);
  v.setUint32(28, LOG_SIZE, true);
  v.setBigUint64(32, BigInt(bufferAddress(log)), true);
  const again = Number(libc.syscall_bpf(sysBpf(), BPF_PROG_LOAD, attr, BigInt(ATTR_SIZE)));
  if (again >= 0) return again; // (a transient failure)
  const end = log.indexOf(0);
  throw new BpfError(
    `bpf(BPF_PROG_LOAD ${spec.name})`,
    first,
    new TextDecoder().decode(log.subarray(0, end < 0 ? 0 : end)),
  );
}

/** Loads eBPF bytecode (`insns.length` a multiple of 8) as a socket-filter program; returns its fd. */
export function loadSocketFilter(insns: Uint8Array, name = "nm_lanes"): number {
  return loadProgram({ name, type: BPF_PROG_TYPE_SOCKET_FILTER, insns, license: "Dual MIT/GPL" });
}

/** Makes a multi-queue TUN choose each packet's queue with program `progFd` (-1 detaches it). */
export function setTunSteering(tunFd: number, progFd: number): void {
  const arg = new Int32Array(2);
  arg[0] = progFd;
  if (libc.ioctl(tunFd, BigInt(TUNSETSTEERINGEBPF), new Uint8Array(arg.buffer)) < 0) {
    throw new SyscallError("TUNSETSTEERINGEBPF", errno());
  }
}

/**
 * Attaches classic BPF `filter` (8 bytes per instruction, ≤ 4096) to the reuseport group of socket
 * `fd` (bound, SO_REUSEPORT): its return value is the index of the socket that gets the datagram.
 */
export function attachReuseportCbpf(fd: number, filter: Uint8Array): void {
  const n = filter.length / 8;
  if (!Number.isInteger(n) || n < 1 || n > 4096) {
    throw new RangeError("cBPF: 1..4096 instructions of 8 bytes");
  }
  const code = new Uint8Array(filter);
  const prog = new Uint8Array(16);
  const v = new DataView(prog.buffer);
  v.setUint16(0, n, true);
  v.setBigUint64(8, BigInt(bufferAddress(code)), true);
  if (libc.setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, prog, prog.length) < 0) {
    const e = errno();
    throw new SyscallError("setsockopt(SO_ATTACH_REUSEPORT_CBPF)", e === 0 ? Errno.EINVAL : e);
  }
}
