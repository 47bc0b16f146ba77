/**
 * Persistence of the control plane's state behind one interface, {@link ControlStore}: the
 * embedded default, {@link SqliteStore} (SQLite through Deno's built-in `node:sqlite`, WAL, one
 * transaction per change writing only the rows it changed), and the replicated one on etcd
 * (`etcd_store.ts`). Both hold the live {@link ClusterState} in memory and write {@link Row}s.
 *
 * An older state directory's `control-state.json` (the whole state rewritten on every change) is
 * imported on the first start and renamed to `control-state.json.imported`; it is never deleted.
 *
 * @example
 * ```ts
 * const store = await SqliteStore.open("/var/lib/netmanager/control");
 * const { node } = await store.change((s) => s.nodeSubnet("worker1")); // on disk before it returns
 * console.log(node.subnet);
 * store.close();
 * ```
 */
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { createHash } from "node:crypto";
import { clearImmediate, setImmediate } from "node:timers";
import { ClusterState, type ClusterStateOptions, StateError, type UpdateNotice } from "./state.ts";
import { type StateFile, StateFileSchema, zodProblems } from "./schemas.ts";
import { parseRow, type Row, RowError, rowText, stateFileOfRows } from "./rows.ts";
import { logger } from "../log.ts";

const log = logger("control");

/** File name of the JSON state of older versions (imported once, then renamed). */
export const STATE_FILE_NAME = "control-state.json";
/** File name of the SQLite database inside the state directory. */
export const DB_FILE_NAME = "control-state.db";
/** Schema version of the database (`PRAGMA user_version`). */
export const DB_SCHEMA_VERSION = 1;
/** `PRAGMA application_id` of our databases ("NMCT"): anything else is foreign. */
export const DB_APPLICATION_ID = 0x4e4d4354;
/**
 * The embedded store checkpoints its write-ahead log after this many commits (a commit writes 2-4
 * pages: a log of at most ~16 MB on disk; the store never reads it back at run time). Writes pause
 * during a checkpoint (two syncs), so its requests are the tail: 1000 instead of 300 commits
 * touched 0.17-0.18 % of one-at-a-time allocations instead of 0.58-0.60 %, each checkpoint no
 * longer (issue 14's p99; 10k allocations, busy machine).
 */
export const CHECKPOINT_COMMITS = 1000;

/** The stored state is unusable; the message names the file (or store) and the problem. */
export class StateFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StateFileError";
  }
}

/** The store cannot be written now (etcd unreachable or without quorum); nothing was changed. */
export class StoreUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StoreUnavailableError";
  }
}

/**
 * Where the control plane keeps its state. Every change goes through {@link change}: the function
 * mutates the in-memory state (synchronously), and the rows it changed are written atomically
 * before the promise resolves. Update notices are handed to {@link onUpdate} once written (the
 * etcd store hands them over from its watch, so every replica publishes them).
 */
export interface ControlStore {
  /** The live state (read it; change it only inside {@link change}). */
  readonly state: ClusterState;
  /** Human-readable location: the database path, or the etcd endpoints and prefix. */
  readonly location: string;
  /** Why the last write failed; undefined after a successful one (health checks read it). */
  readonly lastError: string | undefined;
  /**
   * Receives every update notice once it is stored (set by the service before use); `own` is
   * false for a notice of a change another replica made.
   */
  onUpdate: (u: UpdateNotice, own?: boolean) => void;
  /**
   * Runs `fn` on the state and stores what it changed; resolves with its result once stored.
   * `updates` picks the notices to publish from the result. A ClusterError thrown by `fn` is
   * rethrown and nothing is stored.
   */
  change<T>(fn: (s: ClusterState) => T, updates?: (r: T) => readonly UpdateNotice[]): Promise<T>;
  /** Waits for pending writes, then releases the store. Idempotent. */
  close(): Promise<void>;
}

/**
 * Parses the text of a JSON state file into a state (pure). Throws StateFileError naming `path`.
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

/**
 * Builds a state from stored rows `(key, text)`, checking every row and the whole (pure).
 * Throws StateFileError naming `where`.
 */
export function stateOfRows(
  rows: Iterable<readonly [string, string]>,
  where: string,
  opts: ClusterStateOptions = {},
): ClusterState {
  try {
    const parsed: Row[] = [];
    for (const [k, v] of rows) parsed.push(parseRow(k, v));
    return ClusterState.fromFile(stateFileOfRows(parsed), opts);
  } catch (e) {
    if (e instanceof RowError || e instanceof StateError) {
      throw new StateFileError(`state in ${where} is inconsistent: ${e.message}; fix or move it away`);
    }
    throw e;
  }
}

/** The last write queued per path: writes to one path run one after another, in call order. */
const writesInFlight = new Map<string, Promise<void>>();

/**
 * Writes `text` to `path` atomically: `path.tmp`, fsync, rename over `path`. Concurrent calls for one
 * path run in call order (two at once would share the temporary file, and an earlier snapshot could
 * land last), so the file ends with the text of the last call.
 */
export function writeAtomic(path: string, text: string): Promise<void> {
  const previous = writesInFlight.get(path) ?? Promise.resolve();
  const mine = previous.catch(() => {}).then(() => writeAtomicNow(path, text));
  writesInFlight.set(path, mine);
  const forget = () => {
    if (writesInFlight.get(path) === mine) writesInFlight.delete(path);
  };
  mine.then(forget, forget);
  return mine;
}

async function writeAtomicNow(path: string, text: string): Promise<void> {
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

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new StateFileError(`cannot read ${path}: ${(e as Error).message}`);
  }
}

/** A free name for the imported JSON file: `.imported`, else `.imported.<n>` (nothing is overwritten). */
async function importedName(path: string): Promise<string> {
  for (let n = 0;; n++) {
    const cand = n === 0 ? `${path}.imported` : `${path}.imported.${n}`;
    try {
      await Deno.lstat(cand);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return cand;
      throw e;
    }
  }
}

/** Syncs a file's data to disk (a missing file: nothing to sync). */
async function syncFile(path: string): Promise<void> {
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw e;
  }
  try {
    await f.syncData();
  } finally {
    f.close();
  }
}

function sha256Sync(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/**
 * Reads the state of an embedded state directory without changing anything (its database, else
 * its `control-state.json`). Throws StateFileError when there is none or it is unusable.
 *
 * @example
 * ```ts
 * const file = await readEmbeddedState("/var/lib/netmanager/control");
 * console.log(file.jobs.length);
 * ```
 */
export async function readEmbeddedState(dir: string): Promise<StateFile> {
  const base = dir.replace(/\/+$/, "") || "/";
  const path = `${base}/${DB_FILE_NAME}`;
  if (await Deno.lstat(path).then(() => true, () => false)) {
    let db: DatabaseSync;
    try {
      db = new DatabaseSync(path, { readOnly: true });
    } catch (e) {
      throw new StateFileError(`cannot open state database ${path}: ${(e as Error).message}`);
    }
    try {
      const app = Number(Object.values(db.prepare("PRAGMA application_id").get() ?? {})[0]);
      if (app !== DB_APPLICATION_ID) throw new StateFileError(`${path} is not a netmanager state database`);
      const rows = db.prepare("SELECT key, value FROM rows").all().map((r) =>
        [String(r.key), String(r.value)] as const
      );
      return stateOfRows(rows, path).toFile();
    } catch (e) {
      if (e instanceof StateFileError) throw e;
      throw new StateFileError(`${path} is not a state database (${(e as Error).message})`);
    } finally {
      db.close();
    }
  }
  const json = `${base}/${STATE_FILE_NAME}`;
  const text = await readOptional(json);
  if (text === undefined) {
    throw new StateFileError(`no state in ${dir} (neither ${DB_FILE_NAME} nor ${STATE_FILE_NAME})`);
  }
  return parseStateText(text, json).toFile();
}

/** Options of {@link SqliteStore.open}. */
export interface SqliteStoreOptions extends ClusterStateOptions {
  /**
   * "full" (default): every change is on disk before it resolves; "normal" survives a crash of the
   * process but may lose the last changes on power loss. Either way SQLite runs with
   * `PRAGMA synchronous = NORMAL` (in WAL mode its commits then write but never sync); "full" syncs
   * the write-ahead log itself, off the event loop (see {@link SqliteStore}).
   */
  synchronous?: "full" | "normal";
  /** Commits between the store's checkpoints (default {@link CHECKPOINT_COMMITS}; tests use fewer). */
  checkpointCommits?: number;
}

/**
 * The embedded store: one SQLite database in the state directory.
 *
 * Durability without blocking the event loop: `node:sqlite` is synchronous, and with
 * `synchronous = FULL` every commit's fsync (milliseconds on a loaded disk) stalled every MQTT
 * answer and HTTP request behind it. Here SQLite commits without syncing (WAL, NORMAL: a commit
 * only writes its frames to the `-wal` file), and the store then syncs that file with Deno's
 * asynchronous `syncData` (a thread of the runtime's pool): a change resolves once a sync that
 * started after its commit has finished, so it is on disk as with FULL. Commits made while a sync
 * runs share the next one (group commit).
 *
 * Checkpoints the same way: SQLite's automatic checkpoint (every ~4 MB of log) synced the log and
 * then the database file on the event loop, inside whichever commit crossed the mark: two syncs,
 * tens of milliseconds on a busy disk, for every request in flight. Here SQLite runs with
 * `synchronous = OFF` and `wal_autocheckpoint = 0`, and every {@link CHECKPOINT_COMMITS} commits
 * the store checkpoints itself, doing what NORMAL would do in order, with the syncs off the event
 * loop: writes pause (changes keep being made in memory and wait, as during a sync), the log is
 * synced, its pages are copied into the database file (a passive checkpoint: writes to the OS,
 * no sync), the database file is synced, writes resume. SQLite reuses the log from its start only
 * at the next write after a complete checkpoint, so no log frame is overwritten before the
 * database holds it on disk. If a sync fails the store falls back to SQLite's own synced
 * checkpoints. Closing sets `synchronous = FULL` first: the checkpoint SQLite makes when the last
 * connection closes (and then deletes the log) is synced.
 */
export class SqliteStore implements ControlStore {
  readonly state: ClusterState;
  /** Path of the database file. */
  readonly path: string;
  lastError: string | undefined;
  onUpdate: (u: UpdateNotice, own?: boolean) => void = () => {};
  readonly #db: DatabaseSync;
  readonly #put: StatementSync;
  readonly #del: StatementSync;
  /** Rows whose last write failed: written again with the next change. */
  readonly #pending = new Set<string>();
  /** Changes made in memory, waiting for the next group commit. */
  readonly #waiting: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  #timer: ReturnType<typeof setImmediate> | undefined;
  #closed = false;
  /** Whether changes resolve only once synced ("full"). */
  readonly #durable: boolean;
  /** Committed changes waiting for the next sync of the log, and the sync under way. */
  #unsynced: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  #syncing: Promise<void> | undefined;
  /** The `-wal` file, opened at the first sync (SQLite creates it on its first write). */
  #wal: Deno.FsFile | undefined;
  /** The database file, opened at the first checkpoint (for its sync). */
  #file: Deno.FsFile | undefined;
  /** Commits since the last checkpoint; the checkpoint under way (writes wait for it). */
  #commits = 0;
  readonly #checkpointCommits: number;
  #checkpointing: Promise<void> | undefined;
  /** False after a failed checkpoint sync: SQLite checkpoints (and syncs) by itself again. */
  #ownCheckpoints = true;

  private constructor(
    path: string,
    db: DatabaseSync,
    state: ClusterState,
    durable: boolean,
    checkpointCommits: number,
  ) {
    this.path = path;
    this.#checkpointCommits = checkpointCommits;
    this.#db = db;
    this.state = state;
    this.#durable = durable;
    this.#put = db.prepare(
      "INSERT INTO rows(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    );
    this.#del = db.prepare("DELETE FROM rows WHERE key = ?");
  }

  get location(): string {
    return this.path;
  }

  /**
   * Opens (creating the directory and database) the store of `dir` and loads its state; imports
   * `control-state.json` into an empty database first. Throws StateFileError for a foreign or
   * inconsistent database or JSON file; nothing is changed then.
   */
  static async open(dir: string, opts: SqliteStoreOptions = {}): Promise<SqliteStore> {
    const every = opts.checkpointCommits;
    if (every !== undefined && !(Number.isInteger(every) && every > 0)) {
      throw new RangeError(`checkpointCommits must be a positive integer, not ${every}`);
    }
    try {
      await Deno.mkdir(dir, { recursive: true });
    } catch (e) {
      throw new StateFileError(`cannot create state directory ${dir}: ${(e as Error).message}`);
    }
    const base = dir.replace(/\/+$/, "") || "/";
    const path = `${base}/${DB_FILE_NAME}`;
    const jsonPath = `${base}/${STATE_FILE_NAME}`;
    const jsonText = await readOptional(jsonPath);
    // Validate the JSON before touching the database: a bad file changes nothing.
    const imported = jsonText === undefined ? undefined : parseStateText(jsonText, jsonPath, opts);
    const existed = await Deno.lstat(path).then(() => true, () => false);
    let db: DatabaseSync;
    try {
      db = new DatabaseSync(path);
    } catch (e) {
      throw new StateFileError(`cannot open state database ${path}: ${(e as Error).message}`);
    }
    try {
      if (!existed) await Deno.chmod(path, 0o600);
      const state = SqliteStore.#prepare(db, path, opts, imported, jsonText);
      const store = new SqliteStore(
        path,
        db,
        state,
        opts.synchronous !== "normal",
        opts.checkpointCommits ?? CHECKPOINT_COMMITS,
      );
      if (jsonText !== undefined) {
        // The imported rows on disk before the JSON file stops being the state (commits never sync).
        await syncFile(`${path}-wal`);
        const to = await importedName(jsonPath);
        await Deno.rename(jsonPath, to);
        log.info("JSON state imported into the database", { from: jsonPath, kept_as: to, db: path });
      }
      log.info("state loaded", { path, jobs: state.jobs().length, nodes: state.nodes().length });
      return store;
    } catch (e) {
      db.close();
      if (e instanceof StateFileError) throw e;
      throw new StateFileError(`state database ${path}: ${(e as Error).message}; fix or move it away`);
    }
  }

  static #prepare(
    db: DatabaseSync,
    path: string,
    opts: SqliteStoreOptions,
    imported: ClusterState | undefined,
    jsonText: string | undefined,
  ): ClusterState {
    const scalar = (sql: string) => Object.values(db.prepare(sql).get() ?? {})[0];
    let version: number;
    let appId: number;
    let tables: number;
    try {
      version = Number(scalar("PRAGMA user_version"));
      appId = Number(scalar("PRAGMA application_id"));
      tables = Number(scalar("SELECT count(*) FROM sqlite_master"));
    } catch (e) {
      throw new StateFileError(
        `${path} is not a state database (${(e as Error).message}); fix or move it away`,
      );
    }
    if (tables > 0 && appId !== DB_APPLICATION_ID) {
      throw new StateFileError(
        `${path} is not a netmanager state database (foreign SQLite file); move it away`,
      );
    }
    if (version > DB_SCHEMA_VERSION) {
      throw new StateFileError(
        `${path} has schema version ${version}, newer than this netmanager's ${DB_SCHEMA_VERSION}; upgrade netmanager`,
      );
    }
    db.exec("PRAGMA journal_mode = WAL");
    // Neither commits nor checkpoints sync on the event loop: "full" syncs the log asynchronously,
    // and the store checkpoints itself with asynchronous syncs (class comment).
    db.exec("PRAGMA synchronous = OFF");
    db.exec("PRAGMA wal_autocheckpoint = 0");
    // Writes touch a few pages (the last leaf of each key range, their parents, the pool rows'
    // leaf); SQLite's default 2 MiB page cache fills with pages read once at start-up and stays
    // resident. 512 KiB holds the pages a change touches many times over.
    db.exec("PRAGMA cache_size = -512");
    db.exec("PRAGMA busy_timeout = 5000");
    if (version === 0) {
      db.exec(`BEGIN IMMEDIATE;
        CREATE TABLE rows (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        PRAGMA application_id = ${DB_APPLICATION_ID};
        PRAGMA user_version = ${DB_SCHEMA_VERSION};
        COMMIT;`);
    }
    const rows = db.prepare("SELECT key, value FROM rows").all().map((r) =>
      [String(r.key), String(r.value)] as const
    );
    const meta = db.prepare("SELECT value FROM meta WHERE key = 'imported_sha256'").get();
    if (imported !== undefined && jsonText !== undefined) {
      if (rows.length > 0) {
        // Imported before, but the rename did not happen (a crash in between): same file → rename only.
        const importedHash = meta ? String(meta.value) : undefined;
        return SqliteStore.#checkReimport(path, rows, jsonText, importedHash, opts);
      }
      const put = db.prepare("INSERT INTO rows(key, value) VALUES (?, ?)");
      db.exec("BEGIN IMMEDIATE");
      try {
        for (const r of imported.rows()) put.run(r.key, rowText(r)!);
        db.prepare("INSERT OR REPLACE INTO meta(key, value) VALUES ('imported_sha256', ?)").run(
          sha256Sync(jsonText),
        );
        db.exec("COMMIT");
      } catch (e) {
        db.exec("ROLLBACK");
        throw e;
      }
      return imported;
    }
    return stateOfRows(rows, path, opts);
  }

  static #checkReimport(
    path: string,
    rows: ReadonlyArray<readonly [string, string]>,
    jsonText: string,
    importedHash: string | undefined,
    opts: ClusterStateOptions,
  ): ClusterState {
    if (importedHash !== sha256Sync(jsonText)) {
      throw new StateFileError(
        `${path} already holds a state and ${STATE_FILE_NAME} beside it is a different one; ` +
          `move one of them away`,
      );
    }
    return stateOfRows(rows, path, opts);
  }

  change<T>(fn: (s: ClusterState) => T, updates?: (r: T) => readonly UpdateNotice[]): Promise<T> {
    if (this.#closed) return Promise.reject(new StateFileError(`state database ${this.path} is closed`));
    let result: T;
    try {
      result = fn(this.state);
    } catch (e) {
      // Even a refused change is written when it marked rows: memory and disk stay equal.
      if (this.state.dirty) this.#schedule();
      return Promise.reject(e);
    }
    this.#schedule();
    return new Promise<T>((resolve, reject) => {
      this.#waiting.push({
        resolve: () => {
          for (const u of updates?.(result) ?? []) this.onUpdate(u);
          resolve(result);
        },
        reject,
      });
    });
  }

  /**
   * Group commit: the changes made until the event loop turns are written in one transaction (one
   * sync to disk for a burst of node registrations); each resolves once it is on disk. An
   * immediate, not `setTimeout(0)`: Deno runs a 0 ms timer 1-2 ms later (p50 2.2 ms inside an
   * HTTP handler, measured), which was most of an allocation's latency (issue 14).
   */
  #schedule(): void {
    this.#timer ??= setImmediate(() => this.#flush());
  }

  #flush(): void {
    if (this.#timer !== undefined) clearImmediate(this.#timer);
    this.#timer = undefined;
    // A checkpoint is under way: its end flushes what waits (the log must not be written meanwhile).
    if (this.#checkpointing) return;
    const waiting = this.#waiting.splice(0);
    if (this.state.dirty || this.#pending.size) {
      this.#write();
      if (
        this.lastError === undefined && this.#ownCheckpoints && ++this.#commits >= this.#checkpointCommits
      ) {
        this.#checkpointing = this.#checkpoint();
      }
    }
    const error = this.lastError;
    if (error !== undefined || !this.#durable) {
      for (const w of waiting) {
        if (error !== undefined) w.reject(new Error(error));
        else w.resolve();
      }
      return;
    }
    this.#unsynced.push(...waiting);
    this.#syncing ??= this.#syncLoop();
  }

  /** Syncs the log until no committed change waits for it; each sync settles the changes before it. */
  async #syncLoop(): Promise<void> {
    while (this.#unsynced.length) {
      const batch = this.#unsynced;
      this.#unsynced = [];
      try {
        this.#wal ??= await Deno.open(`${this.path}-wal`, { read: true });
        await this.#wal.syncData();
      } catch (e) {
        // Committed but maybe not on disk: the caller hears of it (as when a FULL commit failed).
        const message = `cannot sync ${this.path}-wal: ${(e as Error).message}`;
        log.error("cannot save state", { path: this.path, error: message });
        for (const w of batch) w.reject(new Error(message));
        continue;
      }
      for (const w of batch) w.resolve();
    }
    this.#syncing = undefined;
  }

  /**
   * Checkpoints the log with the syncs NORMAL would make, off the event loop (class comment).
   * Called with writes paused (`#checkpointing` set); resumes them at the end.
   */
  async #checkpoint(): Promise<void> {
    this.#commits = 0;
    try {
      // Every committed frame on disk before any page of it is copied into the database file.
      while (this.#syncing) await this.#syncing;
      this.#wal ??= await Deno.open(`${this.path}-wal`, { read: true });
      await this.#wal.syncData();
      this.#db.prepare("PRAGMA wal_checkpoint(PASSIVE)").get();
      // The database file on disk before the next write may start the log over.
      this.#file ??= await Deno.open(this.path, { read: true });
      await this.#file.syncData();
    } catch (e) {
      // Back to SQLite's own synced checkpoints (on the event loop, but safe).
      this.#ownCheckpoints = false;
      log.error("checkpoint failed; SQLite checkpoints by itself from now on", {
        path: this.path,
        error: (e as Error).message,
      });
      try {
        this.#db.exec("PRAGMA synchronous = NORMAL");
        this.#db.exec("PRAGMA wal_autocheckpoint = 1000");
      } catch { /* closed */ }
    } finally {
      this.#checkpointing = undefined;
      if (!this.#closed && (this.#waiting.length || this.state.dirty || this.#pending.size)) this.#schedule();
    }
  }

  #write(): void {
    const keys = new Set(this.#pending);
    for (const k of this.state.takeChangedKeys()) keys.add(k);
    try {
      this.#db.exec("BEGIN IMMEDIATE");
      try {
        for (const k of keys) {
          const text = this.state.rowText(k);
          if (text === undefined) this.#del.run(k);
          else this.#put.run(k, text);
        }
        this.#db.exec("COMMIT");
      } catch (e) {
        this.#db.exec("ROLLBACK");
        throw e;
      }
      this.#pending.clear();
      this.lastError = undefined;
    } catch (e) {
      for (const k of keys) this.#pending.add(k);
      this.lastError = (e as Error).message;
      log.error("cannot save state", { path: this.path, error: this.lastError });
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#checkpointing;
    this.#flush();
    await this.#syncing;
    this.#wal?.close();
    this.#wal = undefined;
    this.#file?.close();
    this.#file = undefined;
    // The checkpoint SQLite makes on closing the last connection (it then deletes the log) syncs.
    try {
      this.#db.exec("PRAGMA synchronous = FULL");
    } catch { /* closing anyway */ }
    this.#db.close();
  }
}
