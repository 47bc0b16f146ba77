/**
 * Network-namespace handles through libc: open a namespace by PID or by name, create and delete
 * named namespaces exactly as `ip netns add` / `ip netns del` do, and run a synchronous function
 * inside another namespace on the calling (JS) thread.
 *
 * Only the calling OS thread changes namespace (`setns`/`unshare` are per thread), and every function
 * here restores the original namespace before it returns or throws. Work done inside must be
 * synchronous: async ops may run on other threads or after the switch back.
 *
 * @example
 * ```ts
 * import { closeFd, createNamedNetns, deleteNamedNetns, openNetnsByName } from "./netns.ts";
 * createNamedNetns("demo");
 * const fd = openNetnsByName("demo");
 * // … Netlink.openInNetns(fd) …
 * closeFd(fd);
 * deleteNamedNetns("demo");
 * ```
 */

import { cstr, Errno, errno, libc, strerror } from "./libc.ts";

/** Where named network namespaces are bind-mounted (as iproute2). */
export const NETNS_RUN_DIR = "/run/netns";

const O_RDONLY = 0;
const O_CREAT = 0o100;
const O_EXCL = 0o200;
const O_CLOEXEC = 0o2000000;
const CLONE_NEWNET = 0x40000000;
const MS_BIND = 4096;
const MS_REC = 16384;
const MS_SHARED = 1 << 20;
const MNT_DETACH = 2;
const ESRCH = 3;
const THREAD_NS_PATH = "/proc/thread-self/ns/net";

/** A failed namespace operation; `errno` tells why (ENOENT, EEXIST, EPERM, …). */
export class NetnsError extends Error {
  /** The errno value. */
  readonly errno: number;
  /** What was being done. */
  readonly op: string;
  /** Builds the error for `op` failing with errno `code`, with optional context. */
  constructor(op: string, code: number, detail?: string) {
    super(`${op}: ${detail ? `${detail}: ` : ""}${strerror(code)} (errno ${code})`);
    this.name = "NetnsError";
    this.op = op;
    this.errno = code;
  }
}

/** Throws unless `name` can be a file name under /run/netns (as iproute2 accepts). */
function checkNetnsName(name: string): void {
  if (name.length === 0 || name === "." || name === ".." || name.includes("/") || name.includes("\0")) {
    throw new RangeError(`invalid network namespace name ${JSON.stringify(name)}`);
  }
  if (new TextEncoder().encode(name).length > 255) throw new RangeError("network namespace name too long");
}

function openRead(path: string): number {
  return libc.open(cstr(path), O_RDONLY | O_CLOEXEC, 0);
}

/**
 * Opens the calling thread's current network namespace (`/proc/thread-self/ns/net`).
 * Close the fd with `closeFd`.
 */
export function openCurrentNetns(): number {
  const fd = openRead(THREAD_NS_PATH);
  if (fd < 0) throw new NetnsError(`open ${THREAD_NS_PATH}`, errno());
  return fd;
}

/**
 * Opens `/proc/<pid>/ns/net` (O_RDONLY|O_CLOEXEC) and returns the fd.
 *
 * @example
 * ```ts
 * declare const containerPid: number;
 * const fd = openNetnsByPid(containerPid); // NetnsError (errno ESRCH) if the process is gone
 * closeFd(fd);
 * ```
 */
export function openNetnsByPid(pid: number): number {
  if (!Number.isInteger(pid) || pid <= 0 || pid > 0x7fffffff) {
    throw new RangeError(`PID must be a positive integer, got ${pid}`);
  }
  const path = `/proc/${pid}/ns/net`;
  const fd = openRead(path);
  if (fd < 0) {
    const e = errno();
    if (e === Errno.ENOENT) throw new NetnsError(`open ${path}`, ESRCH, `no process with PID ${pid}`);
    throw new NetnsError(`open ${path}`, e, `network namespace of PID ${pid}`);
  }
  return fd;
}

/** Opens `/run/netns/<name>` (O_RDONLY|O_CLOEXEC) and returns the fd. */
export function openNetnsByName(name: string): number {
  checkNetnsName(name);
  const path = `${NETNS_RUN_DIR}/${name}`;
  const fd = openRead(path);
  if (fd < 0) {
    const e = errno();
    throw new NetnsError(
      `open ${path}`,
      e,
      e === Errno.ENOENT ? `network namespace "${name}" does not exist` : undefined,
    );
  }
  return fd;
}

/** Closes a file descriptor (namespace fd or any other). */
export function closeFd(fd: number): void {
  if (libc.close(fd) !== 0) throw new NetnsError(`close fd ${fd}`, errno());
}

/** setns back to `origFd`; failure leaves the thread in the wrong namespace, so it is reported loudly. */
function restoreNetns(origFd: number): void {
  if (libc.setns(origFd, CLONE_NEWNET) !== 0) {
    throw new NetnsError(
      "setns back to the original network namespace",
      errno(),
      "the calling thread is left in another namespace",
    );
  }
}

/**
 * Runs `fn` with the calling thread inside the network namespace `nsFd` refers to, then switches
 * back, always (also when `fn` throws). `fn` must be synchronous; a returned Promise is an error
 * (its async part would run in the wrong namespace).
 *
 * @example
 * ```ts
 * import { libc } from "./libc.ts";
 * declare const nsFd: number;
 * const sock = withNetns(nsFd, () => libc.socket(16, 3, 0)); // socket lives in that namespace
 * ```
 */
export function withNetns<T>(nsFd: number, fn: () => T): T {
  const orig = openCurrentNetns();
  try {
    if (libc.setns(nsFd, CLONE_NEWNET) !== 0) {
      throw new NetnsError(`setns(fd ${nsFd}, CLONE_NEWNET)`, errno());
    }
    let result: T;
    try {
      result = fn();
    } finally {
      restoreNetns(orig);
    }
    if (typeof (result as { then?: unknown } | null)?.then === "function") {
      throw new TypeError("withNetns: fn must be synchronous (it returned a thenable)");
    }
    return result;
  } finally {
    libc.close(orig);
  }
}

/** mkdir /run/netns and make it a shared mount point, as iproute2's `netns add` does. */
function prepareRunDir(): void {
  const dir = cstr(NETNS_RUN_DIR);
  if (libc.mkdir(dir, 0o755) !== 0) {
    const e = errno();
    if (e !== Errno.EEXIST) throw new NetnsError(`mkdir ${NETNS_RUN_DIR}`, e);
  }
  const none = cstr("none");
  let madeMount = false;
  while (libc.mount(cstr(""), dir, none, BigInt(MS_SHARED | MS_REC), null) !== 0) {
    const e = errno();
    // EINVAL: not a mount point yet. Bind it onto itself once, then retry making it shared.
    if (e !== Errno.EINVAL || madeMount) throw new NetnsError(`make ${NETNS_RUN_DIR} a shared mount`, e);
    if (libc.mount(dir, dir, none, BigInt(MS_BIND | MS_REC), null) !== 0) {
      throw new NetnsError(`bind-mount ${NETNS_RUN_DIR} onto itself`, errno());
    }
    madeMount = true;
  }
}

/**
 * Creates a named network namespace, with the same result as `ip netns add NAME`: prepares
 * /run/netns, creates /run/netns/NAME, `unshare(CLONE_NEWNET)` on this thread, bind-mounts
 * /proc/thread-self/ns/net onto the file and switches the thread back to its original namespace.
 * On any failure the file is removed and the thread is back in its namespace.
 * Throws NetnsError with errno EEXIST if the name is taken.
 */
export function createNamedNetns(name: string): void {
  checkNetnsName(name);
  prepareRunDir();
  const path = `${NETNS_RUN_DIR}/${name}`;
  const cpath = cstr(path);
  const fd = libc.open(cpath, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0);
  if (fd < 0) {
    const e = errno();
    throw new NetnsError(
      `create ${path}`,
      e,
      e === Errno.EEXIST ? `network namespace "${name}" already exists` : undefined,
    );
  }
  libc.close(fd);
  let done = false;
  try {
    const orig = openCurrentNetns();
    try {
      if (libc.unshare(CLONE_NEWNET) !== 0) throw new NetnsError("unshare(CLONE_NEWNET)", errno());
      try {
        if (libc.mount(cstr(THREAD_NS_PATH), cpath, cstr("none"), BigInt(MS_BIND), null) !== 0) {
          throw new NetnsError(`bind-mount ${THREAD_NS_PATH} onto ${path}`, errno());
        }
      } finally {
        restoreNetns(orig);
      }
    } finally {
      libc.close(orig);
    }
    done = true;
  } finally {
    if (!done) {
      libc.umount2(cpath, MNT_DETACH);
      libc.unlink(cpath);
    }
  }
}

/**
 * Deletes a named network namespace like `ip netns del NAME`: lazy unmount (MNT_DETACH) and unlink.
 * The kernel tears the namespace down once nothing else holds it (asynchronously: its links vanish a
 * moment later). Throws NetnsError with errno ENOENT if it does not exist.
 */
export function deleteNamedNetns(name: string): void {
  checkNetnsName(name);
  const path = `${NETNS_RUN_DIR}/${name}`;
  const cpath = cstr(path);
  libc.umount2(cpath, MNT_DETACH); // like iproute2, ignore "not mounted"
  if (libc.unlink(cpath) !== 0) {
    const e = errno();
    throw new NetnsError(
      `remove ${path}`,
      e,
      e === Errno.ENOENT ? `network namespace "${name}" does not exist` : undefined,
    );
  }
}
