/**
 * CPU affinity of the calling OS thread (`sched_getaffinity` / `sched_setaffinity` with pid 0 act on
 * the calling thread only). A data-plane worker pins its thread to one CPU: a flow's packets then
 * always enter the kernel on one CPU, whose backlog keeps them in order (a thread that wanders
 * between CPUs can overtake its own earlier packets still waiting in another CPU's backlog).
 *
 * @example
 * ```ts
 * import { allowedCpus, pinThread } from "./cpu.ts";
 * const cpus = allowedCpus(); // e.g. [0, 1]
 * pinThread(cpus[1]);
 * ```
 */
import { errno, libc, SyscallError } from "./libc.ts";

const SET_BYTES = 128; // cpu_set_t: 1024 CPUs

/** The CPUs the calling thread may run on, in ascending order. */
export function allowedCpus(): number[] {
  const set = new Uint8Array(SET_BYTES);
  if (libc.sched_getaffinity(0, BigInt(SET_BYTES), set) < 0) {
    throw new SyscallError("sched_getaffinity", errno());
  }
  const out: number[] = [];
  for (let i = 0; i < SET_BYTES * 8; i++) if (set[i >> 3] & (1 << (i & 7))) out.push(i);
  return out;
}

/** Restricts the calling thread to CPU `cpu`. */
export function pinThread(cpu: number): void {
  if (!Number.isInteger(cpu) || cpu < 0 || cpu >= SET_BYTES * 8) throw new RangeError(`no CPU ${cpu}`);
  const set = new Uint8Array(SET_BYTES);
  set[cpu >> 3] |= 1 << (cpu & 7);
  if (libc.sched_setaffinity(0, BigInt(SET_BYTES), set) < 0) {
    throw new SyscallError(`sched_setaffinity(${cpu})`, errno());
  }
}
