/**
 * Authentication material of the control plane and the MQTT access rules:
 * - per-node MQTT credentials (`mqtt-credentials.json` in the state dir, 0600): the password is 32
 *   random bytes shown once; only its SHA-256 is stored (a random 256-bit secret needs no slow hash);
 * - the HTTP API bearer token (`api-token` in the state dir, 0600, created at first start);
 * - in etcd mode both live in etcd instead ({@link CredentialBackend}; the token file then holds the
 *   cluster's token), so every replica accepts every node and the CLI works against any replica;
 * - the ACL ({@link mayPublish}, {@link maySubscribe}, pure): a node publishes only below
 *   `nodes/<its id>/` (never the control plane's result topics) and subscribes only to
 *   `nodes/<its id>/net/…` and `jobs/<job>/updates_available`.
 *
 * @example
 * ```ts
 * const creds = await CredentialStore.open("/var/lib/netmanager/control");
 * const { password } = await creds.issue("worker1"); // give to the node; never logged
 * creds.verify("worker1", new TextEncoder().encode(password)); // true
 * mayPublish("worker1", "nodes/worker2/net/subnet"); // false
 * ```
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { z } from "zod";
import { WORKER_ID, zodProblems } from "./schemas.ts";
import { writeAtomic } from "./store.ts";
import { REVOCATION_TOPIC } from "../secure/revocation.ts";

/** File of the node credentials inside the control state dir. */
export const CREDENTIALS_FILE_NAME = "mqtt-credentials.json";
/** File of the HTTP API token inside the control state dir. */
export const API_TOKEN_FILE_NAME = "api-token";

/** A credential or token file that cannot be used, or a bad worker id. */
export class AuthError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AuthError";
  }
}

/** A new random secret: 32 bytes, base64url (43 characters). */
export function newSecret(): string {
  return randomBytes(32).toString("base64url");
}

function sha256(data: Uint8Array | string): Buffer {
  return createHash("sha256").update(data).digest();
}

/** Constant-time comparison of two secrets (hashes first, so lengths never leak). */
export function secretEquals(a: Uint8Array | string, b: Uint8Array | string): boolean {
  return timingSafeEqual(sha256(a), sha256(b));
}

const CredentialFileSchema = z.object({
  version: z.literal(1),
  nodes: z.array(z.object({
    worker_id: z.string().regex(WORKER_ID),
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    created: z.string(),
  })),
});

async function dirPath(dir: string, name: string): Promise<string> {
  try {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new AuthError(`cannot create state directory ${dir}: ${(e as Error).message}`);
  }
  return `${dir.replace(/\/+$/, "") || "/"}/${name}`;
}

/** A stored node credential: the SHA-256 (hex) of its password and when it was issued. */
export interface CredentialRecord {
  sha256: string;
  created: string;
}

/** Schema of a {@link CredentialRecord} (as stored in etcd). */
export const CredentialRecordSchema: z.ZodType<CredentialRecord> = z.object({
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  created: z.string(),
}).strict();

/**
 * Where the credentials live when not in a file (etcd mode: shared by every replica). `get` and
 * `workers` read a local copy kept current; `put` and `delete` resolve once stored.
 */
export interface CredentialBackend {
  /** Where (for logs). */
  readonly location: string;
  /** The worker's record, if it has one. */
  get(worker: string): CredentialRecord | undefined;
  /** Every worker with a record. */
  workers(): string[];
  /** Stores (or replaces) the worker's record. */
  put(worker: string, record: CredentialRecord): Promise<void>;
  /** Removes the worker's record. */
  delete(worker: string): Promise<void>;
}

/** The node credentials of the embedded broker (one per worker id). */
export class CredentialStore {
  /** Path of the credential file (etcd mode: where in etcd). */
  readonly path: string;
  readonly #nodes = new Map<string, CredentialRecord>();
  readonly #backend: CredentialBackend | undefined;

  private constructor(path: string, backend?: CredentialBackend) {
    this.path = path;
    this.#backend = backend;
  }

  /**
   * Credentials kept in `backend` (etcd mode). The records of the file in `importDir`, if any,
   * are copied into it where it has none for that worker (a replica that ran embedded before).
   */
  static async shared(backend: CredentialBackend, importDir?: string): Promise<CredentialStore> {
    if (importDir !== undefined) {
      const file = await CredentialStore.open(importDir);
      for (const [worker, rec] of file.#nodes) {
        if (!backend.get(worker)) await backend.put(worker, rec);
      }
    }
    return new CredentialStore(backend.location, backend);
  }

  /** Loads `<dir>/mqtt-credentials.json` (missing: none yet). Throws AuthError when unusable. */
  static async open(dir: string): Promise<CredentialStore> {
    const store = new CredentialStore(await dirPath(dir, CREDENTIALS_FILE_NAME));
    let text: string;
    try {
      text = await Deno.readTextFile(store.path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return store;
      throw new AuthError(`cannot read ${store.path}: ${(e as Error).message}`);
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new AuthError(`${store.path} is not valid JSON (${(e as Error).message}); fix or move it away`);
    }
    const r = CredentialFileSchema.safeParse(value);
    if (!r.success) throw new AuthError(`${store.path} is invalid: ${zodProblems(r.error)}`);
    for (const n of r.data.nodes) store.#nodes.set(n.worker_id, { sha256: n.sha256, created: n.created });
    await Deno.chmod(store.path, 0o600);
    return store;
  }

  /** Worker ids that have a credential. */
  workers(): string[] {
    if (this.#backend) return this.#backend.workers().sort();
    return [...this.#nodes.keys()].sort();
  }

  /** True when `worker` has a credential. */
  has(worker: string): boolean {
    return this.#backend ? this.#backend.get(worker) !== undefined : this.#nodes.has(worker);
  }

  /**
   * Creates (or replaces: rotation) the credential of `worker` and saves before returning it.
   * The returned password is the only copy.
   */
  async issue(worker: string): Promise<{ username: string; password: string; replaced: boolean }> {
    if (!WORKER_ID.test(worker)) throw new AuthError(`bad worker id "${worker}" (no / + # or spaces)`);
    const password = newSecret();
    if (this.#backend) {
      const replaced = this.#backend.get(worker) !== undefined;
      await this.#backend.put(worker, {
        sha256: sha256(password).toString("hex"),
        created: new Date().toISOString(),
      });
      return { username: worker, password, replaced };
    }
    const replaced = this.#nodes.has(worker);
    const before = this.#nodes.get(worker);
    this.#nodes.set(worker, { sha256: sha256(password).toString("hex"), created: new Date().toISOString() });
    try {
      await this.#save();
    } catch (e) {
      if (before) this.#nodes.set(worker, before);
      else this.#nodes.delete(worker);
      throw e;
    }
    return { username: worker, password, replaced };
  }

  /** Removes the credential of `worker`; false when it had none. */
  async revoke(worker: string): Promise<boolean> {
    if (this.#backend) {
      if (!this.#backend.get(worker)) return false;
      await this.#backend.delete(worker);
      return true;
    }
    const before = this.#nodes.get(worker);
    if (!before) return false;
    this.#nodes.delete(worker);
    try {
      await this.#save();
    } catch (e) {
      this.#nodes.set(worker, before);
      throw e;
    }
    return true;
  }

  /** True when `password` is the current credential of `worker` (constant time). */
  verify(worker: string, password: Uint8Array | string): boolean {
    const n = this.#backend ? this.#backend.get(worker) : this.#nodes.get(worker);
    if (!n) return false;
    return timingSafeEqual(sha256(password), Buffer.from(n.sha256, "hex"));
  }

  async #save(): Promise<void> {
    const nodes = [...this.#nodes].map(([worker_id, v]) => ({ worker_id, ...v }));
    await writeAtomic(this.path, JSON.stringify({ version: 1, nodes }, null, 1) + "\n");
  }
}

/**
 * Reads the API token of `dir` (`api-token`), creating it (0600) at first start. A token file
 * readable by others is tightened to 0600. Throws AuthError when it cannot be read or made.
 */
export async function loadOrCreateApiToken(
  dir: string,
): Promise<{ token: string; path: string; created: boolean }> {
  const path = await dirPath(dir, API_TOKEN_FILE_NAME);
  try {
    const token = (await Deno.readTextFile(path)).trim();
    if (token.length < 16) throw new AuthError(`${path}: token shorter than 16 characters; remove the file`);
    if (((await Deno.stat(path)).mode ?? 0) & 0o077) await Deno.chmod(path, 0o600);
    return { token, path, created: false };
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      if (e instanceof AuthError) throw e;
      throw new AuthError(`cannot read API token ${path}: ${(e as Error).message}`);
    }
  }
  const token = newSecret();
  try {
    await writeAtomic(path, token + "\n");
  } catch (e) {
    throw new AuthError(`cannot write API token ${path}: ${(e as Error).message}`);
  }
  return { token, path, created: true };
}

/** Replaces the API token file of `dir` (0600) with `token` (etcd mode: the cluster's token). */
export async function writeApiToken(dir: string, token: string): Promise<string> {
  const path = await dirPath(dir, API_TOKEN_FILE_NAME);
  try {
    await writeAtomic(path, token + "\n");
  } catch (e) {
    throw new AuthError(`cannot write API token ${path}: ${(e as Error).message}`);
  }
  return path;
}

/** Reads an API token from a file (what the `control` CLI does); throws AuthError. */
export async function readApiToken(path: string): Promise<string> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new AuthError(`cannot read the API token ${path}: ${(e as Error).message}`);
  }
  const token = text.trim();
  if (!token) throw new AuthError(`API token file ${path} is empty`);
  return token;
}

/** Result topics only the control plane publishes (a node publishing them would forge replies). */
const RESULT_SUFFIXES = new Set([
  "net/subnetwork/result",
  "net/tablequery/result",
  "net/cert/result",
  "net/punch",
  "net/relay",
  "net/relay/serve",
  "net/reflect",
]);

/**
 * True when node `worker` may publish on `topic`: below `nodes/<worker>/`, except the control
 * plane's result topics.
 *
 * @example
 * ```ts
 * mayPublish("w1", "nodes/w1/net/tablequery/request"); // true
 * mayPublish("w1", "nodes/w1/net/tablequery/result"); // false
 * ```
 */
export function mayPublish(worker: string, topic: string): boolean {
  const prefix = `nodes/${worker}/`;
  if (!topic.startsWith(prefix)) return false;
  return !RESULT_SUFFIXES.has(topic.slice(prefix.length));
}

/**
 * True when node `worker` may subscribe `filter`: `nodes/<worker>/net/…` or
 * `jobs/<job or +>/updates_available`.
 *
 * @example
 * ```ts
 * maySubscribe("w1", "jobs/+/updates_available"); // true
 * maySubscribe("w1", "nodes/+/net/#"); // false
 * ```
 */
export function maySubscribe(worker: string, filter: string): boolean {
  if (filter.startsWith(`nodes/${worker}/net/`)) return true;
  if (filter === REVOCATION_TOPIC) return true; // the CA-signed revocation list (only the control plane publishes)
  const m = /^jobs\/([^/]+)\/updates_available$/.exec(filter);
  return m !== null && (m[1] === "+" || !/[+#]/.test(m[1]));
}
