/**
 * Persistence of the control plane's state: one JSON file (`control-state.json`) in the state
 * directory, written atomically (temporary file, fsync, rename) after every change and loaded at
 * start. A file that cannot be read, parsed or trusted is a clear error and is never overwritten.
 *
 * @example
 * ```ts
 * const { store, state } = await StateStore.open("/var/lib/netmanager/control");
 * state.nodeSubnet("worker1");
 * await store.save(); // on disk before we answer
 * ```
 */
import { ClusterState, type ClusterStateOptions, StateError } from "./state.ts";
import { StateFileSchema, zodProblems } from "./schemas.ts";
import { logger } from "../log.ts";

const log = logger("control");

/** File name of the state inside the state directory. */
export const STATE_FILE_NAME = "control-state.json";

/** The state file exists but is unusable; the message names the file and the problem. */
export class StateFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StateFileError";
  }
}

/**
 * Parses the text of a state file into a state (pure). Throws StateFileError naming `path`.
 *
 * @example
 * ```ts
 * const p = `/var/lib/netmanager/${STATE_FILE_NAME}`;
 * const state = parseStateText(await Deno.readTextFile(p), p);
 * ```
 */
export function parseStateText(text: string, path: string, opts: ClusterStateOptions = {}): ClusterState {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new StateFileError(
      `state file ${path} is not valid JSON (${(e as Error).message}); fix or move it away`,
    );
  }
  const r = StateFileSchema.safeParse(value);
  if (!r.success) {
    throw new StateFileError(`state file ${path} is invalid: ${zodProblems(r.error)}; fix or move it away`);
  }
  try {
    return ClusterState.fromFile(r.data, opts);
  } catch (e) {
    if (e instanceof StateError) {
      throw new StateFileError(`state file ${path} is inconsistent: ${e.message}; fix or move it away`);
    }
    throw e;
  }
}

/** Writes `text` to `path` atomically: `path.tmp`, fsync, rename over `path`. */
export async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp`;
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true, mode: 0o600 });
  try {
    const data = new TextEncoder().encode(text);
    let off = 0;
    while (off < data.length) off += await f.write(data.subarray(off));
    await f.syncData();
  } finally {
    f.close();
  }
  await Deno.chmod(tmp, 0o600); // a leftover temporary file keeps its old mode
  await Deno.rename(tmp, path);
}

/** The state file of one control service, with serialized, coalescing saves. */
export class StateStore {
  /** Why the last save failed; undefined after a successful one (health checks read it). */
  lastError: string | undefined;
  /** Path of the state file. */
  readonly path: string;
  readonly #state: ClusterState;
  #chain: Promise<void> = Promise.resolve();
  #wanted = 0;
  #written = 0;

  private constructor(path: string, state: ClusterState) {
    this.path = path;
    this.#state = state;
  }

  /**
   * Opens (creating the directory) and loads the state of `dir`; a missing file gives an empty
   * state. Throws StateFileError when the file exists but is unusable.
   */
  static async open(
    dir: string,
    opts: ClusterStateOptions = {},
  ): Promise<{ store: StateStore; state: ClusterState }> {
    try {
      await Deno.mkdir(dir, { recursive: true });
    } catch (e) {
      throw new StateFileError(`cannot create state directory ${dir}: ${(e as Error).message}`);
    }
    const path = `${dir.replace(/\/+$/, "") || "/"}/${STATE_FILE_NAME}`;
    let text: string | undefined;
    try {
      text = await Deno.readTextFile(path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        throw new StateFileError(`cannot read state file ${path}: ${(e as Error).message}`);
      }
    }
    const state = text === undefined ? new ClusterState(opts) : parseStateText(text, path, opts);
    if (text !== undefined) {
      log.info("state loaded", { path, jobs: state.jobs().length, nodes: state.nodes().length });
    }
    return { store: new StateStore(path, state), state };
  }

  /**
   * Writes the current state. Saves are serialized; a save requested while another is running is
   * merged into the next write. Resolves when a write that includes every change made before the
   * call is on disk; rejects when that write failed.
   */
  save(): Promise<void> {
    const want = ++this.#wanted;
    const run = this.#chain.then(async () => {
      if (this.#written >= want) return;
      const version = this.#wanted;
      const text = JSON.stringify(this.#state.toFile(), null, 1) + "\n";
      await writeAtomic(this.path, text);
      this.#written = version;
      this.lastError = undefined;
    });
    this.#chain = run.catch((e) => {
      this.lastError = (e as Error).message;
      log.error("cannot save state", { path: this.path, error: (e as Error).message });
    });
    return run;
  }

  /** Waits for pending saves (errors were reported to their callers). */
  async flush(): Promise<void> {
    await this.#chain;
  }
}
