/**
 * A minimal io_uring (raw `io_uring_setup`/`io_uring_enter` through libc's `syscall`, the rings
 * mapped with `mmap`): no liburing needed. One ring per data-plane Worker, used from that thread only.
 *
 * Layouts (LP64, little-endian; `include/uapi/linux/io_uring.h`):
 *
 * | struct | size | fields used |
 * |---|---|---|
 * | `io_uring_sqe` | 64 | opcode @0 u8, flags @1 u8, fd @4 i32, off @8 u64, addr @16 u64, len @24 u32, op_flags @28 u32, user_data @32 u64 |
 * | `io_uring_cqe` | 16 | user_data @0 u64, res @8 i32, flags @12 u32 |
 * | `io_uring_params` | 120 | sq_entries @0, cq_entries @4, flags @8, features @20, sq_off @40 (head, tail, ring_mask, ring_entries, flags, dropped, array), cq_off @80 (head, tail, ring_mask, ring_entries, overflow, cqes) |
 * | `io_uring_getevents_arg` | 24 | sigmask @0 u64, sigmask_sz @8 u32, ts @16 u64 |
 *
 * The mapped rings are ArrayBuffers over kernel memory (they do not move); the head/tail words are
 * read and written with Atomics. Every address put into an SQE belongs to an ArrayBuffer the caller
 * keeps alive (and unchanged) until the SQE's completion (the GC hazard of deno-notes.md).
 *
 * @example
 * ```ts
 * import { Op, Ring } from "./uring.ts";
 * const ring = Ring.open(8);
 * ring.prep(Op.NOP, -1, 0, 0, 0, 0, 7);
 * ring.enter(1, 1);
 * while (ring.peek()) {
 *   console.log(ring.cqeData, ring.cqeRes); // 7 0
 *   ring.advance();
 * }
 * ring.close();
 * ```
 * @module
 */
import { errno, libc, SyscallError } from "./libc.ts";

/** System call numbers (the same on x86_64 and aarch64: io_uring came after the unified table). */
export const SYS_IO_URING_SETUP = 425;
export const SYS_IO_URING_ENTER = 426;

/** Opcodes used here. */
export const Op = {
  NOP: 0,
  READV: 1,
  WRITEV: 2,
  POLL_ADD: 6,
  SENDMSG: 9,
  RECVMSG: 10,
  ASYNC_CANCEL: 14,
  READ: 22,
  WRITE: 23,
} as const;

/** SQE flags. */
export const SqeFlag = { IO_LINK: 4, IO_HARDLINK: 8 } as const;

/** Setup flags. */
export const Setup = {
  SUBMIT_ALL: 1 << 7,
  COOP_TASKRUN: 1 << 8,
  /** With COOP_TASKRUN or DEFER_TASKRUN: the kernel sets {@link SqFlag.TASKRUN} when completion work waits. */
  TASKRUN_FLAG: 1 << 9,
  SINGLE_ISSUER: 1 << 12,
  DEFER_TASKRUN: 1 << 13,
} as const;

/** Bits of the SQ ring's flags word (written by the kernel, read in place). */
export const SqFlag = {
  CQ_OVERFLOW: 2,
  /** Completion work waits for an io_uring_enter (rings set up with TASKRUN_FLAG). */
  TASKRUN: 4,
} as const;

const ENTER_GETEVENTS = 1;
const ENTER_EXT_ARG = 8;
const FEAT_SINGLE_MMAP = 1;
const FEAT_EXT_ARG = 1 << 8;
const OFF_SQ_RING = 0;
const OFF_CQ_RING = 0x8000000;
const OFF_SQES = 0x10000000;
const PROT_RW = 0x1 | 0x2;
const MAP_SHARED = 0x01;
const MAP_POPULATE = 0x8000;
const ETIME = 62;
const EINTR = 4;

/** Sizes of the kernel structs. */
export const SQE_SIZE = 64;
export const CQE_SIZE = 16;
export const PARAMS_SIZE = 120;

/** The ring was refused or misused (setup errors carry the errno: EPERM, ENOSYS, ...). */
export class UringError extends Error {
  /** errno of a failed system call (0: a misuse). */
  readonly errno: number;
  constructor(message: string, code = 0) {
    super(message);
    this.name = "UringError";
    this.errno = code;
  }
}

/**
 * Writes one SQE at `index` of `sqes` (a Uint32Array over the SQE array): all 64 bytes, so no field
 * of an earlier use survives. `addr`/`off` are numbers below 2^53 (addresses; -1 for `off` means
 * "the file position", all ones). Pure: the unit tests check the bytes.
 */
export function encodeSqe(
  sqes: Uint32Array,
  index: number,
  op: number,
  fd: number,
  addr: number,
  len: number,
  off: number,
  opFlags: number,
  userData: number,
  flags = 0,
): void {
  if (index < 0 || (index + 1) * (SQE_SIZE / 4) > sqes.length) {
    throw new UringError(`SQE index ${index} outside the ring`);
  }
  if (!Number.isInteger(addr) || addr < 0 || addr > Number.MAX_SAFE_INTEGER) {
    throw new UringError(`SQE addr ${addr} not an address`);
  }
  if (!Number.isInteger(userData) || userData < 0 || userData > 0xffffffff) {
    throw new UringError(`SQE user_data ${userData} outside u32`);
  }
  const w = index * (SQE_SIZE / 4);
  sqes[w] = (op & 0xff) | ((flags & 0xff) << 8); // opcode, flags, ioprio 0
  sqes[w + 1] = fd >>> 0;
  if (off < 0) {
    sqes[w + 2] = 0xffffffff;
    sqes[w + 3] = 0xffffffff;
  } else {
    sqes[w + 2] = off >>> 0;
    sqes[w + 3] = Math.floor(off / 4294967296) >>> 0;
  }
  sqes[w + 4] = addr >>> 0;
  sqes[w + 5] = Math.floor(addr / 4294967296) >>> 0;
  sqes[w + 6] = len >>> 0;
  sqes[w + 7] = opFlags >>> 0;
  sqes[w + 8] = userData >>> 0;
  sqes[w + 9] = 0; // user_data high word
  for (let k = 10; k < 16; k++) sqes[w + k] = 0; // buf_index, personality, file_index, addr3, pad
}

/** Where the kernel put the ring fields (`io_uring_params` after setup). */
export interface RingLayout {
  sqEntries: number;
  cqEntries: number;
  features: number;
  sq: { head: number; tail: number; mask: number; entries: number; flags: number; array: number };
  cq: { head: number; tail: number; mask: number; entries: number; overflow: number; cqes: number };
  /** Bytes to map for the SQ ring and the CQ ring. */
  sqBytes: number;
  cqBytes: number;
}

/** Decodes `io_uring_params` as the kernel filled it (pure; the unit tests feed it bytes). */
export function parseParams(p: Uint8Array): RingLayout {
  if (p.length < PARAMS_SIZE) throw new UringError(`io_uring_params: ${p.length} bytes, need ${PARAMS_SIZE}`);
  const v = new DataView(p.buffer, p.byteOffset, PARAMS_SIZE);
  const u = (o: number) => v.getUint32(o, true);
  const sq = { head: u(40), tail: u(44), mask: u(48), entries: u(52), flags: u(56), array: u(64) };
  const cq = { head: u(80), tail: u(84), mask: u(88), entries: u(92), overflow: u(96), cqes: u(100) };
  const sqEntries = u(0), cqEntries = u(4);
  if (sqEntries === 0 || (sqEntries & (sqEntries - 1)) !== 0 || cqEntries < sqEntries) {
    throw new UringError(`io_uring_params: ${sqEntries} SQ / ${cqEntries} CQ entries`);
  }
  return {
    sqEntries,
    cqEntries,
    features: u(20),
    sq,
    cq,
    sqBytes: sq.array + sqEntries * 4,
    cqBytes: cq.cqes + cqEntries * CQE_SIZE,
  };
}

interface Mapping {
  ptr: Deno.PointerObject;
  bytes: number;
}

function map(fd: number, bytes: number, offset: number): Mapping {
  const p = libc.mmap(null, BigInt(bytes), PROT_RW, MAP_SHARED | MAP_POPULATE, fd, BigInt(offset));
  if (p === null || Deno.UnsafePointer.value(p) === 0xffffffffffffffffn) {
    throw new UringError(`mmap of the ring (offset ${offset.toString(16)})`, errno());
  }
  return { ptr: p, bytes };
}

/** One io_uring instance (see the module). */
export class Ring {
  /** The ring's fd (closed by {@link close}). */
  readonly fd: number;
  /** SQ entries. */
  readonly entries: number;
  /** Setup flags the kernel accepted. */
  readonly flags: number;
  /** The last completion {@link peek} found: its user data, result (bytes or -errno) and flags. */
  cqeData = 0;
  cqeRes = 0;
  cqeFlags = 0;
  /** io_uring_enter calls made (tests and the bench count system calls per exchange). */
  enters = 0;
  /**
   * True when a completion can be seen by plain loads ({@link pending}), without a system call per
   * look: completions are posted as they happen (neither COOP_TASKRUN nor DEFER_TASKRUN), or the
   * kernel flags completion work that waits for an enter (TASKRUN_FLAG).
   */
  readonly watchable: boolean;

  readonly #maps: Mapping[] = [];
  readonly #sqHead: Uint32Array;
  readonly #sqTail: Uint32Array;
  readonly #sqMask: number;
  readonly #sqFlags: Uint32Array;
  readonly #sqes: Uint32Array;
  readonly #cqHead: Uint32Array;
  readonly #cqTail: Uint32Array;
  readonly #cqMask: number;
  readonly #cqes: Int32Array;
  readonly #cqes32: Uint32Array;
  /** Our copy of the SQ tail (published on enter) and the entries prepared since the last enter. */
  #tail: number;
  #queued = 0;
  #closed = false;
  readonly #arg = new Uint8Array(24);
  readonly #ts = new Uint8Array(16);
  readonly #tsView = new DataView(this.#ts.buffer);
  readonly #hasExtArg: boolean;

  private constructor(fd: number, layout: RingLayout, flags: number) {
    this.fd = fd;
    this.flags = flags;
    this.entries = layout.sqEntries;
    this.#hasExtArg = (layout.features & FEAT_EXT_ARG) !== 0;
    this.watchable = (flags & Setup.TASKRUN_FLAG) !== 0 ||
      (flags & (Setup.COOP_TASKRUN | Setup.DEFER_TASKRUN)) === 0;
    try {
      const single = (layout.features & FEAT_SINGLE_MMAP) !== 0;
      const sqBytes = single ? Math.max(layout.sqBytes, layout.cqBytes) : layout.sqBytes;
      const sqMap = map(fd, sqBytes, OFF_SQ_RING);
      this.#maps.push(sqMap);
      const cqMap = single ? sqMap : map(fd, layout.cqBytes, OFF_CQ_RING);
      if (!single) this.#maps.push(cqMap);
      const sqeMap = map(fd, layout.sqEntries * SQE_SIZE, OFF_SQES);
      this.#maps.push(sqeMap);
      const sqAb = Deno.UnsafePointerView.getArrayBuffer(sqMap.ptr, sqMap.bytes);
      const cqAb = Deno.UnsafePointerView.getArrayBuffer(cqMap.ptr, cqMap.bytes);
      const sqeAb = Deno.UnsafePointerView.getArrayBuffer(sqeMap.ptr, sqeMap.bytes);
      this.#sqHead = new Uint32Array(sqAb, layout.sq.head, 1);
      this.#sqTail = new Uint32Array(sqAb, layout.sq.tail, 1);
      this.#sqMask = new Uint32Array(sqAb, layout.sq.mask, 1)[0];
      this.#sqFlags = new Uint32Array(sqAb, layout.sq.flags, 1);
      // The SQ index array maps ring slot i to SQE i, once (no IORING_SETUP_NO_SQARRAY needed).
      const array = new Uint32Array(sqAb, layout.sq.array, layout.sqEntries);
      for (let i = 0; i < layout.sqEntries; i++) array[i] = i;
      this.#sqes = new Uint32Array(sqeAb);
      this.#cqHead = new Uint32Array(cqAb, layout.cq.head, 1);
      this.#cqTail = new Uint32Array(cqAb, layout.cq.tail, 1);
      this.#cqMask = new Uint32Array(cqAb, layout.cq.mask, 1)[0];
      this.#cqes = new Int32Array(cqAb, layout.cq.cqes, layout.cqEntries * (CQE_SIZE / 4));
      this.#cqes32 = new Uint32Array(cqAb, layout.cq.cqes, layout.cqEntries * (CQE_SIZE / 4));
      this.#tail = Atomics.load(this.#sqTail, 0);
      // getevents_arg.ts → the timespec (both buffers live as long as the ring).
      const tsAddr = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#ts)));
      const a = new DataView(this.#arg.buffer);
      a.setUint32(16, tsAddr >>> 0, true);
      a.setUint32(20, Math.floor(tsAddr / 4294967296), true);
    } catch (e) {
      this.#unmap();
      libc.close(fd);
      throw e;
    }
  }

  /**
   * Sets up a ring of `entries` SQEs (a power of two, 1..4096) with `flags` ({@link Setup}); when the
   * kernel refuses the flags (EINVAL: older kernel) it retries without them. Throws a
   * {@link UringError} carrying the errno when io_uring is unavailable (ENOSYS, EPERM: disabled).
   */
  static open(entries: number, flags: number = Setup.SUBMIT_ALL): Ring {
    if (!Number.isInteger(entries) || entries < 1 || entries > 4096 || (entries & (entries - 1)) !== 0) {
      throw new UringError(`ring entries ${entries}: a power of two, 1..4096`);
    }
    let f = flags;
    for (;;) {
      const params = new Uint8Array(PARAMS_SIZE);
      new DataView(params.buffer).setUint32(8, f, true);
      const fd = libc.syscall_uring_setup(BigInt(SYS_IO_URING_SETUP), entries, params);
      if (fd >= 0) return new Ring(fd, parseParams(params), f);
      const code = errno();
      if (code === 22 && f !== 0) {
        f = 0; // EINVAL: flags this kernel does not know
        continue;
      }
      throw new UringError(`io_uring_setup: errno ${code}`, code);
    }
  }

  /** SQEs prepared and not yet submitted. */
  get queued(): number {
    return this.#queued;
  }

  /** Free SQ slots. */
  get space(): number {
    return this.entries - (this.#tail - Atomics.load(this.#sqHead, 0));
  }

  /**
   * Prepares one SQE (see {@link encodeSqe}); false when the SQ is full (submit first). It goes to
   * the kernel with the next {@link enter}.
   */
  prep(
    op: number,
    fd: number,
    addr: number,
    len: number,
    off: number,
    opFlags: number,
    userData: number,
    flags = 0,
  ): boolean {
    if (this.#closed) throw new UringError("ring closed");
    if (this.space <= 0) return false;
    encodeSqe(this.#sqes, this.#tail & this.#sqMask, op, fd, addr, len, off, opFlags, userData, flags);
    this.#tail = (this.#tail + 1) >>> 0;
    this.#queued++;
    return true;
  }

  /**
   * Submits what {@link prep} queued and waits for `minComplete` completions, at most `timeoutMs`
   * (-1: no limit; ignored when `minComplete` is 0). Returns the SQEs submitted, 0 when the wait
   * timed out or was interrupted, or -errno. One system call — none when there is nothing to submit
   * and nothing to wait for. `getEvents` with `minComplete` 0: only runs the completions' deferred
   * work (a ring set up with DEFER_TASKRUN posts completions only inside io_uring_enter).
   */
  enter(toSubmit: number, minComplete: number, timeoutMs = -1, getEvents = minComplete > 0): number {
    if (this.#closed) throw new UringError("ring closed");
    if (toSubmit > this.#queued) toSubmit = this.#queued;
    Atomics.store(this.#sqTail, 0, this.#tail); // publish the SQEs (release)
    if (toSubmit === 0 && !getEvents) return 0;
    let flags = getEvents ? ENTER_GETEVENTS : 0;
    let arg: Uint8Array | null = null;
    let argSize = 0n;
    if (minComplete > 0) {
      if (timeoutMs >= 0 && this.#hasExtArg) {
        const t = this.#tsView;
        t.setBigInt64(0, BigInt(Math.floor(timeoutMs / 1000)), true);
        t.setBigInt64(8, BigInt(Math.round((timeoutMs % 1000) * 1e6)), true);
        flags |= ENTER_EXT_ARG;
        arg = this.#arg;
        argSize = 24n;
      }
    }
    this.enters++;
    const r = libc.syscall_uring_enter(
      BigInt(SYS_IO_URING_ENTER),
      this.fd,
      toSubmit,
      minComplete,
      flags,
      arg,
      argSize,
    );
    if (r >= 0) {
      this.#queued -= r;
      return r;
    }
    const code = errno();
    if (code === ETIME || code === EINTR) {
      // The SQEs were still consumed when a wait timed out (SUBMIT_ALL): count what the kernel took.
      this.#queued = this.#tail - Atomics.load(this.#sqHead, 0);
      return 0;
    }
    return -code;
  }

  /**
   * True when a completion is in the CQ ring or (TASKRUN_FLAG) completion work waits for an enter:
   * plain loads of the mapped rings, no system call (see {@link watchable}).
   */
  pending(): boolean {
    return !this.#closed && (this.#cqHead[0] !== Atomics.load(this.#cqTail, 0) || this.taskrun);
  }

  /** True when the kernel flagged completion work that waits for an enter (TASKRUN_FLAG rings). */
  get taskrun(): boolean {
    return !this.#closed && (Atomics.load(this.#sqFlags, 0) & SqFlag.TASKRUN) !== 0;
  }

  /** Submits everything prepared without waiting. */
  submit(): number {
    return this.#queued > 0 ? this.enter(this.#queued, 0) : 0;
  }

  /** True when a completion is ready; its fields are then in {@link cqeData}/{@link cqeRes}/{@link cqeFlags}. */
  peek(): boolean {
    if (this.#closed) return false;
    const head = this.#cqHead[0];
    if (head === Atomics.load(this.#cqTail, 0)) return false; // acquire: the CQE's bytes are written
    const w = (head & this.#cqMask) * (CQE_SIZE / 4);
    this.cqeData = this.#cqes32[w];
    this.cqeRes = this.#cqes[w + 2];
    this.cqeFlags = this.#cqes32[w + 3];
    return true;
  }

  /** Consumes the completion {@link peek} found. */
  advance(): void {
    Atomics.store(this.#cqHead, 0, (this.#cqHead[0] + 1) >>> 0);
  }

  #unmap(): void {
    for (const m of this.#maps.splice(0)) libc.munmap(m.ptr, BigInt(m.bytes));
  }

  /**
   * Unmaps the rings and closes the fd: the kernel cancels what is still armed (so buffers handed
   * to it may be freed after this returns). Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#unmap();
    libc.close(this.fd);
  }
}

/** True when this process may use io_uring (a ring can be set up); the reason when not. */
export function uringAvailable(): { ok: true } | { ok: false; reason: string; errno: number } {
  try {
    Ring.open(2).close();
    return { ok: true };
  } catch (e) {
    const code = e instanceof UringError || e instanceof SyscallError ? e.errno : 0;
    return { ok: false, reason: String((e as Error).message), errno: code };
  }
}
