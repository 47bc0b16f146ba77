/**
 * The one binding to libc. Every FFI symbol the project uses is declared here, so the set of
 * native calls is visible in one place.
 *
 * Variadic C functions (`ioctl`, `fcntl`) are bound with fixed signatures per use; that is sound on
 * x86_64 and aarch64 for integer and pointer arguments.
 *
 * @example
 * ```ts
 * import { libc, errno } from "./libc.ts";
 * const fd = libc.socket(16, 3, 0);
 * if (fd < 0) throw new Error(`socket: errno ${errno()}`);
 * ```
 */

const SYMBOLS = {
  open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  // i32 results: an isize result is a BigInt allocated per call; our reads and writes are < 2 GiB.
  // (Counts stay bigint: a number for a usize parameter works but leaves V8's fast call path.)
  read: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  write: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  writev: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  readv: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  /** ioctl with a pointer argument. */
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  /** ioctl with an integer argument. */
  ioctl_int: { name: "ioctl", parameters: ["i32", "u64", "u64"], result: "i32" },
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  /** poll on Deno's blocking thread pool (a Promise): the main isolate waits without stalling. */
  poll_async: { name: "poll", parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  recvfrom: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "buffer"], result: "isize" },
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  recvmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  sendmmsg: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  recvmmsg: { parameters: ["i32", "buffer", "u32", "i32", "buffer"], result: "i32" },
  setns: { parameters: ["i32", "i32"], result: "i32" },
  unshare: { parameters: ["i32"], result: "i32" },
  mount: { parameters: ["buffer", "buffer", "buffer", "u64", "buffer"], result: "i32" },
  umount2: { parameters: ["buffer", "i32"], result: "i32" },
  getpid: { parameters: [], result: "i32" },
  sched_yield: { parameters: [], result: "i32" },
  gettid: { parameters: [], result: "i32" },
  if_nametoindex: { parameters: ["buffer"], result: "u32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
  mkdir: { parameters: ["buffer", "u32"], result: "i32" },
  unlink: { parameters: ["buffer"], result: "i32" },
  flock: { parameters: ["i32", "i32"], result: "i32" },
  // bpf(2) has no glibc wrapper: syscall(SYS_bpf, cmd, attr, size).
  syscall_bpf: { name: "syscall", parameters: ["i64", "i64", "buffer", "u64"], result: "i64" },
  // io_uring (ffi/uring.ts): no glibc wrappers; syscall(nr, ...) with the numbers of ffi/uring.ts.
  syscall_uring_setup: { name: "syscall", parameters: ["i64", "u32", "buffer"], result: "i32" },
  syscall_uring_enter: {
    name: "syscall",
    parameters: ["i64", "i32", "u32", "u32", "u32", "buffer", "usize"],
    result: "i32",
  },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  /** madvise(2): the daemon releases its start-up code pages (src/sys/code_pages.ts). */
  madvise: { parameters: ["usize", "usize", "i32"], result: "i32" },
  // glibc only (absent from musl): optional, so a libc without it still opens.
  malloc_trim: { parameters: ["usize"], result: "i32", optional: true },
} as const satisfies Deno.ForeignLibraryInterface;

let lib: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;
type Symbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/**
 * Lazily opened libc symbols (opening needs --allow-ffi; modules that only import types stay free).
 * Each property starts as a getter that opens the library and then turns every property into the
 * plain function: the data plane's per-packet calls are ordinary property loads (a Proxy trap cost
 * ~0.1–0.3 µs per call, several calls per packet).
 */
export const libc: Symbols = {} as Symbols;
for (const name of Object.keys(SYMBOLS)) {
  Object.defineProperty(libc, name, {
    configurable: true,
    enumerable: true,
    get() {
      lib ??= Deno.dlopen("libc.so.6", SYMBOLS);
      const syms = lib.symbols as Record<string, unknown>;
      for (const n of Object.keys(SYMBOLS)) {
        Object.defineProperty(libc, n, {
          value: syms[n],
          enumerable: true,
          writable: false,
          configurable: false,
        });
      }
      return syms[name];
    },
  });
}

/**
 * Returns the free memory of every malloc arena to the system (glibc `malloc_trim(0)`): memory the
 * runtime freed after a burst (compiler zones, typed arrays) otherwise stays resident in the arenas
 * of the threads that used it. False when the libc has no `malloc_trim`.
 */
export function mallocTrim(): boolean {
  const trim = libc.malloc_trim;
  if (trim === null) return false;
  trim(0n);
  return true;
}

/** This isolate's errno cell: an isolate runs on one thread (the main one, or its Worker's). */
let errnoCell: Deno.UnsafePointerView | undefined;

/** The calling thread's `errno` after a failed libc call. */
export function errno(): number {
  if (errnoCell === undefined) {
    const p = libc.__errno_location();
    if (p === null) return 0;
    errnoCell = new Deno.UnsafePointerView(p);
  }
  return errnoCell.getInt32(0);
}

/** Human-readable text for an errno value. */
export function strerror(code: number): string {
  const p = libc.strerror(code);
  return p === null ? `errno ${code}` : Deno.UnsafePointerView.getCString(p);
}

/** An error from a failed system call, carrying its errno. */
export class SyscallError extends Error {
  /** The errno value. */
  readonly errno: number;
  constructor(call: string, code: number) {
    super(`${call}: ${strerror(code)} (errno ${code})`);
    this.name = "SyscallError";
    this.errno = code;
  }
}

/** NUL-terminated C string in a fresh buffer. */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(s);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** Common errno values. */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EAGAIN: 11,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  EADDRNOTAVAIL: 99,
} as const;

/**
 * The address of `buf[0]` as a number, for iovecs that point into it. The memory of an ArrayBuffer
 * does not move; keep `buf` referenced while the address is in use.
 */
export function bufferAddress(buf: Uint8Array): number {
  const p = Deno.UnsafePointer.of(buf.buffer as ArrayBuffer);
  if (p === null) throw new Error("cannot take the address of an empty buffer");
  return Number(Deno.UnsafePointer.value(p)) + buf.byteOffset;
}
