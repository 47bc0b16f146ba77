/**
 * The daemon's lock on its state directory: an `flock` on `<StateDir>/daemon.lock`, held for the life
 * of the process (the kernel drops it when the process dies, so a crash never leaves a stale lock).
 * The file holds the owner's pid, for the message a second daemon prints.
 *
 * @example
 * ```ts
 * const lock = StateLock.acquire("/var/lib/netmanager"); // throws AlreadyRunningError if held
 * lock.release();
 * ```
 */
import { cstr, Errno, errno, libc, SyscallError } from "../../ffi/libc.ts";

const O_RDWR = 0o2;
const O_CREAT = 0o100;
const O_CLOEXEC = 0o2000000;
const LOCK_EX = 2;
const LOCK_NB = 4;

/** Name of the lock file in the state directory. */
export const LOCK_FILE = "daemon.lock";

/** Another process holds the lock: a daemon already runs on this state directory. */
export class AlreadyRunningError extends Error {
  /** The holder's pid, if it could be read. */
  readonly pid: number | undefined;
  constructor(readonly path: string, pid: number | undefined) {
    super(`a daemon is already running, pid ${pid ?? "unknown"} (it holds ${path})`);
    this.name = "AlreadyRunningError";
    this.pid = pid;
  }
}

/** A held lock on a state directory. */
export class StateLock {
  readonly path: string;
  #fd: number;

  private constructor(path: string, fd: number) {
    this.path = path;
    this.#fd = fd;
  }

  /** Takes the lock without waiting; creates the directory (0700) and file (0600) if missing. */
  static acquire(dir: string): StateLock {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const path = `${dir.replace(/\/+$/, "")}/${LOCK_FILE}`;
    const fd = libc.open(cstr(path), O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
    if (fd < 0) throw new SyscallError(`open ${path}`, errno());
    if (libc.flock(fd, LOCK_EX | LOCK_NB) < 0) {
      const code = errno();
      libc.close(fd);
      if (code === Errno.EAGAIN) throw new AlreadyRunningError(path, readPid(path));
      throw new SyscallError(`flock ${path}`, code);
    }
    // Written through another descriptor: the lock belongs to `fd`'s open file, not to the path.
    Deno.writeTextFileSync(path, `${Deno.pid}\n`);
    return new StateLock(path, fd);
  }

  /** Releases the lock (idempotent); the file stays, empty. */
  release(): void {
    if (this.#fd < 0) return;
    try {
      Deno.writeTextFileSync(this.path, "", { create: false });
    } catch {
      // removed (`netmanager clean`, or the state dir is gone): nothing to empty
    }
    libc.close(this.#fd);
    this.#fd = -1;
  }
}

function readPid(path: string): number | undefined {
  try {
    const n = Number(Deno.readTextFileSync(path).trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}
