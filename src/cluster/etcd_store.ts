/**
 * The replicated store: the control plane's rows in etcd, shared by any number of replicas
 * (`netmanager control --etcd …`). Each replica keeps the whole state in memory, follows etcd with
 * a watch, and writes a change as one transaction that compares every row it touches on its
 * revision (or absence) and creates a claim key for every name and address it takes, so two
 * replicas can never give one subnet, address or job name to two owners. A refused transaction is
 * rolled back in memory, the replica waits until its watch shows the competing change, and runs the
 * change again.
 *
 * Layout under the cluster's prefix `P` (default `/netmanager/<cluster>/`):
 *
 * | key | value |
 * |---|---|
 * | `P cluster` | `{"cluster": name, "format": 1}`: whose prefix this is |
 * | `P rows/<row key>` | a state row (rows.ts) |
 * | `P claims/name/<job>`, `P claims/ip/<addr>`, `P claims/subnet/<addr>` | the row key owning it |
 * | `P notice/<job>` | the last update notice of a job: every replica publishes it to its nodes |
 * | `P replicas/<id>`, `P alive/<worker>` | on the replica's lease: replicas up, nodes they serve |
 * | `P interest/<job id>/<worker>` | on the lease of the replica the node asked: its interest in the job |
 * | `P secrets/api-token` | the HTTP API token of every replica (written by the first one) |
 * | `P credentials/<worker>` | a node's MQTT credential (`{sha256, created}`), accepted by every replica |
 *
 * Interests are not part of the job rows here (a job row is written with `interested_nodes: []`);
 * each replica shows a job's interested nodes from the `interest/` keys it watches. When a replica
 * dies its lease expires, and so do the interests of its nodes; they are recorded again on the
 * replica a node fails over to, which it asks again for every job it follows.
 *
 * @example
 * ```ts
 * const store = await EtcdStore.open({ endpoints: ["http://10.0.0.1:2379"], cluster: "edge1" });
 * await store.change((s) => s.nodeSubnet("worker1"));
 * await store.close();
 * ```
 */
import { type Compare, EtcdClient, EtcdError, type EtcdTls, type Op, type WatchEvent } from "./etcd.ts";
import { type ControlStore, StateFileError, stateOfRows, StoreUnavailableError } from "./store.ts";
import type { ClusterState, ClusterStateOptions, UpdateNotice } from "./state.ts";
import { StateError } from "./state.ts";
import { claimsOf, jobKey, parseRow, type Row, RowError, rowsOfStateFile, rowText } from "./rows.ts";
import type { StateFile } from "./schemas.ts";
import { type CredentialBackend, type CredentialRecord, CredentialRecordSchema } from "./auth.ts";
import { logger } from "../log.ts";

const log = logger("control");

/** A cluster name: 1..64 of letters, digits, `.`, `_`, `-`. */
export const CLUSTER_NAME = /^[A-Za-z0-9._-]{1,64}$/;
/** Format of the data under a prefix. */
export const ETCD_FORMAT = 1;
/** TTL of a replica's lease (its `replicas/` and `alive/` keys vanish this long after it died). */
export const LEASE_TTL_S = 10;

/** The default key prefix of a cluster. */
export function defaultPrefix(cluster: string): string {
  return `/netmanager/${cluster}/`;
}

/** Options of {@link EtcdStore.open}. */
export interface EtcdStoreOptions extends ClusterStateOptions {
  /** etcd client URLs (`http://host:2379`). */
  endpoints: readonly string[];
  /** The cluster's name, recorded under the prefix: a replica of another cluster refuses it. */
  cluster: string;
  /** Key prefix (default `/netmanager/<cluster>/`); must start and end with `/`. */
  prefix?: string;
  /** Time limit of one etcd request (default 3000 ms). */
  timeoutMs?: number;
  /** TLS toward etcd (PEM texts). */
  tls?: EtcdTls;
}

interface Cached {
  /** Row text; undefined: deleted (a tombstone, so an older event is never applied again). */
  text: string | undefined;
  mod: number;
}

/** A change waiting to be written. */
interface Queued {
  fn: (s: ClusterState) => unknown;
  updates?: (r: unknown) => readonly UpdateNotice[];
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/** A job row as written to etcd: its interests live in `interest/` keys, not in the row. */
function withoutInterests(row: Row): Row {
  return row.kind === "job" && row.value && row.value.interested_nodes.length
    ? { ...row, value: { ...row.value, interested_nodes: [] } }
    : row;
}

/**
 * An upper bound of the longest list (comparisons, operations, reads) of a batch's transaction,
 * kept as changes join the batch (building the transaction after each one costs O(batch²) parses).
 * A row counts 1 plus the claims it takes and gives up; an instance row 1 more for its job's
 * comparison; a job's notice 1.
 */
class TxnSize {
  total = 0;
  readonly #rows = new Map<string, number>();
  readonly #before = new Map<string, string[]>();
  readonly #parents = new Set<string>();
  readonly #jobs = new Set<string>();
  constructor(private readonly cached: (key: string) => string | undefined) {}

  #claimsBefore(key: string): string[] {
    let c = this.#before.get(key);
    if (!c) {
      const text = this.cached(key);
      c = text !== undefined ? claimsOf(parseRow(key, text)) : [];
      this.#before.set(key, c);
    }
    return c;
  }

  /** The size with `rows` and `notices` added (not yet kept: see {@link commit}). */
  with(rows: readonly Row[], notices: readonly UpdateNotice[]) {
    let total = this.total;
    const rowCost = new Map<string, number>();
    const parents = new Set<string>();
    const jobs = new Set<string>();
    for (const r of rows) {
      const before = this.#claimsBefore(r.key);
      const after = claimsOf(r);
      const cost = 1 + after.filter((c) => !before.includes(c)).length +
        before.filter((c) => !after.includes(c)).length;
      total += cost - (this.#rows.get(r.key) ?? 0);
      rowCost.set(r.key, cost);
      if (r.kind === "inst" && !this.#parents.has(r.id) && !parents.has(r.id)) {
        parents.add(r.id);
        total++;
      }
    }
    for (const n of notices) {
      if (!this.#jobs.has(n.job) && !jobs.has(n.job)) {
        jobs.add(n.job);
        total++;
      }
    }
    return { total, rowCost, parents, jobs };
  }

  /** Keeps a size from {@link with}. */
  commit(g: ReturnType<TxnSize["with"]>): void {
    this.total = g.total;
    for (const [k, c] of g.rowCost) this.#rows.set(k, c);
    for (const p of g.parents) this.#parents.add(p);
    for (const j of g.jobs) this.#jobs.add(j);
  }
}

/** Most changes in one transaction, and most operations per list (etcd's default limit is 128). */
const MAX_BATCH = 64;
const TXN_LIMIT = 120;
/** How long interest and liveness key writes gather before one transaction carries them. */
export const LEASE_WRITE_WINDOW_MS = 100;

const NOTICE = /^\{"job":"[^"]+","type":"(DEPLOYMENT|UNDEPLOYMENT)","by":"([^"]*)"/;

/** The store. */
export class EtcdStore implements ControlStore {
  readonly state: ClusterState;
  readonly location: string;
  lastError: string | undefined;
  onUpdate: (u: UpdateNotice, own?: boolean) => void = () => {};
  /** Called when a node's credential is revoked (through any replica): close its connections. */
  onCredentialGone: (worker: string) => void = () => {};
  /** This replica's id (random). */
  readonly replicaId: string = crypto.randomUUID().slice(0, 12);
  readonly #etcd: EtcdClient;
  readonly #prefix: string;
  readonly #opts: EtcdStoreOptions;
  readonly #cache = new Map<string, Cached>();
  #reloadRev = 0;
  #appliedRev = 0;
  #lock: Promise<unknown> = Promise.resolve();
  /** Changes waiting for the next transaction, and whether one is being written. */
  readonly #queue: Queued[] = [];
  #draining = false;
  readonly #abort = new AbortController();
  #waiters: Array<() => void> = [];
  #watching: Promise<void> = Promise.resolve();
  #lease: string | undefined;
  #keepalive: ReturnType<typeof setInterval> | undefined;
  readonly #announced = new Set<string>();
  /** Interested workers per job id (every replica's, from the watch). */
  readonly #interests = new Map<string, Set<string>>();
  /** Interest keys (relative) this replica put on its lease (put again on a new lease). */
  readonly #mine = new Set<string>();
  /** Lease-key writes waiting for the next transaction (the last per key), and whether one is sent. */
  readonly #leaseOps = new Map<
    string,
    { on: boolean; waiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> }
  >();
  #leaseWriting = false;
  /** Lease keys of the transaction in flight. */
  readonly #leaseSending = new Set<string>();
  /**
   * Revision of this replica's last write of a lease key, until the watch has passed it: an older
   * event of that key (the echo of a put the node took back since, arriving after the take-back)
   * must not undo what this replica shows.
   */
  readonly #leaseWritten = new Map<string, number>();
  #leaseTimer: ReturnType<typeof setTimeout> | undefined;
  /** Node credentials (shared by every replica), from the watch. */
  readonly #credentials = new Map<string, CredentialRecord>();
  #closed = false;
  /** A change of this replica is between its in-memory step and etcd's answer. */
  #inflight = false;
  /** Watch replies held back meanwhile (applied right after, so they never meet half a change). */
  #deferred: WatchEvent[][] = [];

  private constructor(opts: EtcdStoreOptions, etcd: EtcdClient, prefix: string, state: ClusterState) {
    this.#opts = opts;
    this.#etcd = etcd;
    this.#prefix = prefix;
    this.state = state;
    this.location = `etcd ${etcd.endpoints.join(",")} prefix ${prefix}`;
  }

  /** The etcd client (migration and tests use it). */
  get etcd(): EtcdClient {
    return this.#etcd;
  }

  /** The key prefix. */
  get prefix(): string {
    return this.#prefix;
  }

  /**
   * Connects, claims or checks the prefix for `cluster`, loads the state and starts the watch.
   * Throws StateFileError when the prefix belongs to another cluster or holds rows that are not
   * ours, EtcdError when etcd cannot be reached.
   */
  static async open(opts: EtcdStoreOptions): Promise<EtcdStore> {
    const { etcd, prefix } = await claimPrefix(opts);
    const { state, kvs, revision } = await loadRows(etcd, prefix, opts);
    const store = new EtcdStore(opts, etcd, prefix, state);
    for (const kv of kvs) store.#cache.set(kv.key, { text: kv.value, mod: kv.mod });
    store.#reloadRev = revision;
    store.#appliedRev = revision;
    try {
      await store.#loadInterests();
      await store.#loadCredentials();
    } catch (e) {
      await store.close();
      throw e;
    }
    let created!: () => void;
    const ready = new Promise<void>((r) => created = r);
    store.#watching = store.#watchLoop(created);
    const timer = setTimeout(created, 5000);
    await ready;
    clearTimeout(timer);
    try {
      store.#lease = await etcd.leaseGrant(LEASE_TTL_S);
      await etcd.txn([], [{
        put: { key: `${prefix}replicas/${store.replicaId}`, value: "{}", lease: store.#lease },
      }]);
      store.#keepalive = setInterval(() => store.#renew(), (LEASE_TTL_S * 1000) / 3);
    } catch (e) {
      await store.close();
      throw e;
    }
    log.info("state loaded from etcd", {
      prefix,
      cluster: opts.cluster,
      replica: store.replicaId,
      revision,
      jobs: state.jobs().length,
      nodes: state.nodes().length,
    });
    return store;
  }

  /** Reads every interest key (at least as new as the rows) and shows them on the jobs. */
  async #loadInterests(): Promise<void> {
    const { kvs } = await this.#etcd.rangePrefix(`${this.#prefix}interest/`);
    this.#interests.clear();
    for (const kv of kvs) this.#noteInterest(kv.key, true);
    for (const job of this.state.jobs()) this.#overlay(job._id);
  }

  async #loadCredentials(): Promise<void> {
    const { kvs } = await this.#etcd.rangePrefix(`${this.#prefix}credentials/`);
    this.#credentials.clear();
    for (const kv of kvs) this.#noteCredential(kv.key, kv.value);
  }

  /** Records a `credentials/` key's event (a malformed value is logged and counts as absent). */
  #noteCredential(key: string, value: string | undefined): void {
    const worker = key.slice(this.#prefix.length + 12);
    if (value === undefined) {
      if (this.#credentials.delete(worker)) this.onCredentialGone(worker);
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(value);
    } catch { /* reported below */ }
    const r = CredentialRecordSchema.safeParse(parsed);
    if (r.success) this.#credentials.set(worker, r.data);
    else {
      this.#credentials.delete(worker);
      log.error("ignoring a node credential that is not ours in etcd", { key });
    }
  }

  /**
   * The node credentials kept in etcd, for {@link CredentialStore.shared}: every replica's broker
   * accepts a credential issued through any replica (it learns it from the watch within moments;
   * the replica that issued it at once).
   */
  credentialBackend(): CredentialBackend {
    const key = (w: string) => `${this.#prefix}credentials/${w}`;
    return {
      location: `${this.location} credentials/`,
      get: (w) => this.#credentials.get(w),
      workers: () => [...this.#credentials.keys()],
      put: async (w, rec) => {
        await this.#etcd.txn([], [{ put: { key: key(w), value: JSON.stringify(rec) } }]);
        this.#credentials.set(w, rec);
      },
      delete: async (w) => {
        await this.#etcd.txn([], [{ del: { key: key(w) } }]);
        if (this.#credentials.delete(w)) this.onCredentialGone(w);
      },
    };
  }

  /**
   * The cluster's HTTP API token: the one in etcd, or `mine` when there is none yet (the first
   * replica's token becomes everybody's). Throws EtcdError when etcd cannot be reached.
   */
  async sharedToken(mine: string): Promise<string> {
    const key = `${this.#prefix}secrets/api-token`;
    const r = await this.#etcd.txn([{ key, version: 0 }], [{ put: { key, value: mine } }], [{
      get: { key },
    }]);
    if (r.succeeded) return mine;
    const token = r.read[0]?.value ?? "";
    if (token.length < 16) throw new StateFileError(`${key} in etcd holds no usable token; remove it`);
    return token;
  }

  /**
   * Records an `interest/` key's event; returns its job id when it changed what is known
   * (undefined for a key not ours, or the echo of a write this replica already shows).
   */
  #noteInterest(key: string, present: boolean): string | undefined {
    const m = /^([A-Za-z0-9_-]{1,64})\/([^/+#\s]{1,128})$/.exec(key.slice(this.#prefix.length + 9));
    if (!m) return undefined;
    const [, job, worker] = m;
    let set = this.#interests.get(job);
    if (present) {
      if (set?.has(worker)) return undefined;
      if (!set) this.#interests.set(job, set = new Set());
      set.add(worker);
    } else {
      if (!set?.delete(worker)) return undefined;
      if (!set.size) this.#interests.delete(job);
    }
    return job;
  }

  /**
   * Interests a change made in the state (a node deploying an instance follows its job; a removed
   * node or job follows nothing) become or stop being `interest/` keys.
   */
  #syncInterests(id: string, want: readonly string[]): void {
    const have = this.#interests.get(id) ?? new Set<string>();
    const put = want.filter((w) => !have.has(w));
    const drop = [...have].filter((w) => !want.includes(w));
    for (const [ws, on] of [[put, true], [drop, false]] as const) {
      for (const w of ws) {
        this.interest(id, w, on).catch((e) =>
          log.warn("interest not recorded", { job: id, worker: w, error: (e as Error).message })
        );
      }
    }
  }

  /** Shows job `id`'s interests (from the keys) on its in-memory record. */
  #overlay(id: string): void {
    this.state.setInterested(id, [...(this.#interests.get(id) ?? [])]);
  }

  /**
   * Records (`on`) or drops `worker`'s interest in job `jobId` as a key on this replica's lease:
   * it goes when the replica dies, and the node records it again on the replica it fails over to.
   * Throws StoreUnavailableError when etcd does not take it (the state shows nothing new then).
   */
  async interest(jobId: string, worker: string, on: boolean): Promise<void> {
    if (this.#closed || !this.#lease) throw new StoreUnavailableError("the etcd store is closed");
    const rel = `${jobId}/${worker}`;
    const key = `${this.#prefix}interest/${rel}`;
    const had = this.#interests.get(jobId)?.has(worker) === true;
    if (had === on) return;
    // Shown at once (a second query of the node does not write again); undone when etcd refuses.
    this.#noteInterest(key, on);
    this.#overlay(jobId);
    try {
      await this.#writeLeaseKey(key, on);
      if (on) this.#mine.add(rel);
      else this.#mine.delete(rel);
    } catch (e) {
      this.#noteInterest(key, had);
      this.#overlay(jobId);
      throw new StoreUnavailableError(`interest not recorded: ${(e as Error).message}`);
    }
  }

  /**
   * Queues a put (`{"replica": id}` on this replica's lease) or deletion of an `interest/` or
   * `alive/` key: the writes that arrive while one transaction is in flight go together in the
   * next (a thousand nodes' registrations or first queries are a few etcd writes, not a thousand).
   */
  #writeLeaseKey(key: string, on: boolean): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const queued = this.#leaseOps.get(key);
      if (queued) {
        queued.on = on;
        queued.waiters.push({ resolve, reject });
      } else this.#leaseOps.set(key, { on, waiters: [{ resolve, reject }] });
      // A window first: table queries bring a new interest each (200/s in the benchmark); one
      // transaction per window instead of one per etcd round trip keeps the members' raft and
      // fsync work (which competes with every replica for CPU) small. Nothing waits on these keys
      // but the bookkeeping: a node's answer has gone out before its interest is put.
      if (!this.#leaseWriting && this.#leaseTimer === undefined) this.#leaseFlushIn(LEASE_WRITE_WINDOW_MS);
    });
  }

  #leaseFlushIn(ms: number): void {
    this.#leaseTimer = setTimeout(() => {
      this.#leaseTimer = undefined;
      void this.#flushLeaseKeys();
    }, ms);
  }

  /** Writes one transaction of waiting keys; more waiting keys go one window after it started. */
  async #flushLeaseKeys(): Promise<void> {
    this.#leaseWriting = true;
    const started = Date.now();
    const batch = [...this.#leaseOps].slice(0, TXN_LIMIT);
    try {
      for (const [key] of batch) {
        this.#leaseOps.delete(key);
        this.#leaseSending.add(key);
      }
      const value = JSON.stringify({ replica: this.replicaId });
      const { revision } = await this.#etcd.txn(
        [],
        batch.map(([key, q]): Op => q.on ? { put: { key, value, lease: this.#lease! } } : { del: { key } }),
      );
      if (revision > this.#appliedRev) { for (const [key] of batch) this.#leaseWritten.set(key, revision); }
      for (const [, q] of batch) for (const w of q.waiters) w.resolve();
    } catch (e) {
      for (const [, q] of batch) for (const w of q.waiters) w.reject(e);
    } finally {
      for (const [key] of batch) this.#leaseSending.delete(key);
      if (this.#leaseWritten.size > 4096) this.#pruneLeaseWritten();
      this.#leaseWriting = false;
      if (this.#leaseOps.size && !this.#closed) {
        // A full transaction left more: at once; else at most one transaction per window, also
        // when etcd answers slower than that (a loaded machine), where it would run back to back.
        const full = batch.length >= TXN_LIMIT;
        this.#leaseFlushIn(full ? 0 : Math.max(0, started + LEASE_WRITE_WINDOW_MS - Date.now()));
      }
    }
  }

  /** Forgets the write revisions the watch has passed (a deletion of an absent key has no event). */
  #pruneLeaseWritten(): void {
    for (const [key, rev] of this.#leaseWritten) if (rev <= this.#appliedRev) this.#leaseWritten.delete(key);
  }

  /**
   * True when an `interest/` event is older than what this replica shows of that key: a write of
   * the key is queued or in flight here (it is newer than any event the watch brings now), or the
   * event's revision is not after this replica's last write of it (the race seen once in the
   * control tests: a node's put echoed back after it took the interest back showed it again).
   */
  #staleLeaseEvent(key: string, modRevision: number): boolean {
    if (this.#leaseOps.has(key) || this.#leaseSending.has(key)) return true;
    const written = this.#leaseWritten.get(key);
    if (written === undefined) return false;
    if (modRevision >= written) this.#leaseWritten.delete(key); // the watch is past it now
    return modRevision <= written;
  }

  async #renew(): Promise<void> {
    if (!this.#lease || this.#closed) return;
    try {
      if (await this.#etcd.leaseKeepAlive(this.#lease)) return;
      // Expired (etcd was away longer than the TTL): a new lease, and announce again.
      this.#lease = await this.#etcd.leaseGrant(LEASE_TTL_S);
      this.#announced.clear();
      await this.#etcd.txn([], [{
        put: { key: `${this.#prefix}replicas/${this.replicaId}`, value: "{}", lease: this.#lease },
      }]);
      // The interests recorded here went with the old lease: put them on the new one.
      const mine = [...this.#mine];
      for (let i = 0; i < mine.length; i += TXN_LIMIT) {
        await this.#etcd.txn(
          [],
          mine.slice(i, i + TXN_LIMIT).map((rel) => ({
            put: {
              key: `${this.#prefix}interest/${rel}`,
              value: JSON.stringify({ replica: this.replicaId }),
              lease: this.#lease!,
            },
          })),
        );
      }
    } catch (e) {
      log.warn("etcd lease not renewed", { error: (e as Error).message });
    }
  }

  /**
   * Records that `worker` is served by this replica (`alive/<worker>` on its lease, so it vanishes
   * when the replica dies). Best effort; failures are logged.
   */
  nodeSeen(worker: string): void {
    if (this.#announced.has(worker) || !this.#lease || this.#closed) return;
    this.#announced.add(worker);
    this.#writeLeaseKey(`${this.#prefix}alive/${worker}`, true).catch((e) => {
      this.#announced.delete(worker);
      log.warn("node liveness not recorded", { worker, error: (e as Error).message });
    });
  }

  async #watchLoop(created: () => void): Promise<void> {
    const signal = this.#abort.signal;
    while (!signal.aborted) {
      const r = await this.#etcd.watch(
        this.#prefix,
        this.#appliedRev + 1,
        (events) => this.#inflight ? this.#deferred.push(events) : this.#onEvents(events),
        signal,
        created,
      );
      if (signal.aborted) return;
      if (r === "compacted") {
        await this.#reload().catch((e) => log.error("state reload failed", { error: (e as Error).message }));
      } else {
        await new Promise((res) => setTimeout(res, 250));
      }
    }
  }

  #onEvents(events: readonly WatchEvent[]): void {
    const rows: Row[] = [];
    const notices: Array<UpdateNotice & { own: boolean }> = [];
    const rowsPrefix = `${this.#prefix}rows/`;
    const noticePrefix = `${this.#prefix}notice/`;
    const interestPrefix = `${this.#prefix}interest/`;
    const interested = new Set<string>();
    for (const e of events) {
      if (e.modRevision <= this.#reloadRev) continue;
      if (e.modRevision > this.#appliedRev) this.#appliedRev = e.modRevision;
      if (e.key.startsWith(rowsPrefix)) {
        const k = e.key.slice(rowsPrefix.length);
        const c = this.#cache.get(k);
        if (c && c.mod >= e.modRevision) continue;
        this.#cache.set(k, { text: e.value, mod: e.modRevision });
        try {
          rows.push(parseRow(k, e.value));
        } catch (err) {
          log.error("ignoring a row that is not ours in etcd", { key: e.key, error: (err as Error).message });
        }
      } else if (e.key.startsWith(`${this.#prefix}credentials/`)) {
        this.#noteCredential(e.key, e.value);
      } else if (e.key.startsWith(interestPrefix)) {
        if (this.#staleLeaseEvent(e.key, e.modRevision)) continue;
        const job = this.#noteInterest(e.key, e.value !== undefined);
        if (job) interested.add(job);
      } else if (e.key.startsWith(noticePrefix) && e.value !== undefined) {
        const m = NOTICE.exec(e.value);
        if (m) {
          const job = e.key.slice(noticePrefix.length);
          notices.push({ job, type: m[1] as UpdateNotice["type"], own: m[2] === this.replicaId });
        }
      }
    }
    if (rows.length) {
      try {
        this.state.applyRows(rows);
      } catch (err) {
        log.warn("replicated change does not fit the local state; reloading", {
          error: (err as Error).message,
        });
        void this.#reload().catch((e) => log.error("state reload failed", { error: (e as Error).message }));
      }
    }
    for (const r of rows) if (r.kind === "job") interested.add(r.id);
    for (const id of interested) this.#overlay(id);
    for (const n of notices) this.onUpdate({ job: n.job, type: n.type }, n.own);
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  /** Reads every row again and replaces the local state (after a compaction or a contradiction). */
  async #reload(): Promise<void> {
    const { state, kvs, revision } = await loadRows(this.#etcd, this.#prefix, this.#opts);
    this.state.adopt(state);
    this.#cache.clear();
    for (const kv of kvs) this.#cache.set(kv.key, { text: kv.value, mod: kv.mod });
    this.#reloadRev = revision;
    if (revision > this.#appliedRev) this.#appliedRev = revision;
    await this.#loadInterests();
    await this.#loadCredentials();
    log.info("state reloaded from etcd", { revision, jobs: this.state.jobs().length });
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  /** Resolves once `cond` holds (checked after every watch reply), or after `ms` (false then). */
  async #until(cond: () => boolean, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 100));
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return true;
  }

  /** Puts the rows back to what etcd last showed. */
  async #rollback(rows: readonly Row[]): Promise<void> {
    try {
      this.state.applyRows(rows.map((r) => parseRow(r.key, this.#cache.get(r.key)?.text)));
      for (const r of rows) if (r.kind === "job") this.#overlay(r.id);
    } catch (e) {
      if (!(e instanceof StateError || e instanceof RowError)) throw e;
      await this.#reload();
    }
    this.state.discardChanges();
  }

  /** Ends the in-flight step: rolls `back` (if given) to what etcd showed, then applies held-back replies. */
  async #settle(back: readonly Row[] | undefined): Promise<void> {
    try {
      if (back) await this.#rollback(back);
    } finally {
      this.#inflight = false;
      const held = this.#deferred;
      this.#deferred = [];
      for (const events of held) this.#onEvents(events);
    }
  }

  change<T>(fn: (s: ClusterState) => T, updates?: (r: T) => readonly UpdateNotice[]): Promise<T> {
    if (this.#closed) return Promise.reject(new StoreUnavailableError("the etcd store is closed"));
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({
        fn,
        updates: updates as Queued["updates"],
        resolve: resolve as (v: unknown) => void,
        reject,
      });
      if (!this.#draining) this.#lock = this.#drain();
    });
  }

  /**
   * Writes the queued changes: the changes that arrive while a transaction is in flight go together
   * in the next one (one etcd round trip for many allocations, within etcd's 128 operations).
   */
  async #drain(): Promise<void> {
    this.#draining = true;
    try {
      while (this.#queue.length) {
        const batch = this.#queue.splice(0, MAX_BATCH);
        if (this.#closed) {
          for (const q of batch) q.reject(new StoreUnavailableError("the etcd store is closed"));
          continue;
        }
        const later = await this.#batch(batch);
        this.#queue.unshift(...later);
      }
    } finally {
      this.#draining = false;
    }
  }

  /** Puts rows `changed` (taken after a refused step) back to what the batch or etcd had. */
  #undo(changed: readonly Row[], batch: ReadonlyMap<string, Row>): void {
    if (!changed.length) return;
    try {
      this.state.applyRows(
        changed.map((r) => batch.get(r.key) ?? parseRow(r.key, this.#cache.get(r.key)?.text)),
      );
      for (const r of changed) if (r.kind === "job") this.#overlay(r.id);
    } catch (e) {
      if (!(e instanceof StateError || e instanceof RowError)) throw e;
      throw new StoreUnavailableError(`local state inconsistent after a refused change: ${e.message}`);
    }
    this.state.discardChanges();
  }

  /**
   * Runs a batch of changes as one transaction; returns the changes left for the next batch (the
   * transaction was full). Each change's promise settles here.
   */
  async #batch(batch: Queued[]): Promise<Queued[]> {
    for (let attempt = 0;; attempt++) {
      this.#inflight = true;
      const merged = new Map<string, Row>();
      const notices = new Map<string, UpdateNotice>();
      const size = new TxnSize((key) => this.#cache.get(key)?.text);
      const done: Array<{ q: Queued; result: unknown }> = [];
      let later: Queued[] = [];
      for (let i = 0; i < batch.length; i++) {
        const q = batch[i];
        let result: unknown;
        try {
          result = q.fn(this.state);
        } catch (e) {
          try {
            this.#undo(this.state.takeChanges(), merged);
          } catch (u) {
            await this.#settle([...merged.values()]).catch(() => {});
            for (const d of batch) d.reject(u);
            return [];
          }
          q.reject(e);
          batch.splice(i--, 1);
          continue;
        }
        const rows = this.state.takeChanges();
        // Right after the change (before anything else can touch the interests): what it did to
        // a job's interested nodes becomes interest keys.
        for (const r of rows) {
          if (r.kind === "job") this.#syncInterests(r.id, r.value?.interested_nodes ?? []);
        }
        const mine = q.updates?.(result) ?? [];
        const grown = size.with(rows, mine);
        if (done.length && grown.total > TXN_LIMIT) {
          this.#undo(rows, merged);
          later = batch.slice(i);
          break;
        }
        size.commit(grown);
        for (const r of rows) merged.set(r.key, r);
        for (const n of mine) notices.set(n.job, n);
        done.push({ q, result });
      }
      if (merged.size === 0 && notices.size === 0) {
        await this.#settle(undefined);
        for (const d of done) d.q.resolve(d.result);
        return later;
      }
      const rows = [...merged.values()];
      const { compare, ops, reads } = this.#txnOf(rows, [...notices.values()]);
      let r;
      try {
        r = await this.#etcd.txn(compare, ops, reads);
      } catch (e) {
        await this.#settle(rows);
        this.lastError = (e as Error).message;
        const err = new StoreUnavailableError(
          `state store unavailable, nothing changed: ${(e as Error).message}`,
        );
        for (const d of done) d.q.reject(err);
        return later;
      }
      this.lastError = undefined;
      if (r.succeeded) {
        // Every row of the transaction has its revision: the next change compares on it at once
        // (the watch's copy of these events is then recognised as known and skipped).
        for (const row of rows) {
          this.#cache.set(row.key, { text: rowText(withoutInterests(row)), mod: r.revision });
        }
        await this.#settle(undefined);
        for (const d of done) d.q.resolve(d.result);
        return later;
      }
      await this.#settle(rows);
      if (attempt >= 30) {
        const err = new StoreUnavailableError("too many concurrent changes from other replicas; try again");
        for (const d of done) d.q.reject(err);
        return later;
      }
      // Wait until the watch shows what made the comparison fail, then run the changes again.
      const want = Math.max(0, ...r.read.map((kv) => kv.modRevision));
      const gone = rows.filter((x) => this.#cache.get(x.key)?.text !== undefined).map((x) => x.key)
        .filter((k) => !r.read.some((kv) => kv.key === `${this.#prefix}rows/${k}`));
      const ok = await this.#until(
        () => this.#appliedRev >= want && gone.every((k) => this.#cache.get(k)?.text === undefined),
        3000,
      );
      if (!ok) await this.#reload().catch(() => {});
      batch = [...done.map((d) => d.q), ...later];
    }
  }

  #txnOf(
    rowsIn: readonly Row[],
    notices: readonly UpdateNotice[],
  ): { compare: Compare[]; ops: Op[]; reads: Op[] } {
    const P = this.#prefix;
    const rows = rowsIn.map(withoutInterests);
    const compare: Compare[] = [];
    const ops: Op[] = [];
    const reads: Op[] = [];
    const keys = new Set(rows.map((r) => r.key));
    const parents = new Set<string>();
    // Claims taken and given up by these rows: one given up by a row and taken by another in the
    // same transaction (release and reuse) is one put, guarded by the old owner's comparison.
    const taken = new Map<string, string>();
    const released = new Set<string>();
    for (const row of rows) {
      const k = `${P}rows/${row.key}`;
      const c = this.#cache.get(row.key);
      compare.push(c?.text !== undefined ? { key: k, modRevision: c.mod } : { key: k, version: 0 });
      reads.push({ get: { key: k } });
      const text = rowText(row);
      ops.push(text === undefined ? { del: { key: k } } : { put: { key: k, value: text } });
      const before = c?.text !== undefined ? claimsOf(parseRow(row.key, c.text)) : [];
      const after = claimsOf(row);
      for (const cl of after) if (!before.includes(cl)) taken.set(cl, row.key);
      for (const cl of before) if (!after.includes(cl)) released.add(cl);
      // An instance is only written while its job is what this replica saw.
      if (row.kind === "inst" && !keys.has(jobKey(row.id))) parents.add(jobKey(row.id));
    }
    for (const [cl, owner] of taken) {
      if (!released.has(cl)) {
        compare.push({ key: `${P}claims/${cl}`, version: 0 });
        reads.push({ get: { key: `${P}claims/${cl}` } });
      }
      ops.push({ put: { key: `${P}claims/${cl}`, value: owner } });
    }
    for (const cl of released) if (!taken.has(cl)) ops.push({ del: { key: `${P}claims/${cl}` } });
    for (const p of parents) {
      const c = this.#cache.get(p);
      const k = `${P}rows/${p}`;
      compare.push(c?.text !== undefined ? { key: k, modRevision: c.mod } : { key: k, version: 0 });
      reads.push({ get: { key: k } });
    }
    for (const n of notices) {
      ops.push({
        put: {
          key: `${P}notice/${n.job}`,
          value: JSON.stringify({ job: n.job, type: n.type, by: this.replicaId, at: Date.now() }),
        },
      });
    }
    return { compare, ops, reads };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#lock;
    this.#abort.abort();
    if (this.#keepalive !== undefined) clearInterval(this.#keepalive);
    // The lease is revoked below: keys still waiting for their window would go with it at once,
    // so they count as written and gone (no error logged for every node at shutdown).
    if (this.#leaseTimer !== undefined) clearTimeout(this.#leaseTimer);
    this.#leaseTimer = undefined;
    for (const [, q] of this.#leaseOps) for (const w of q.waiters) w.resolve();
    this.#leaseOps.clear();
    await this.#watching.catch(() => {});
    if (this.#lease) await this.#etcd.leaseRevoke(this.#lease);
    this.#etcd.close();
  }
}

/** Checks the prefix is this cluster's, claiming it when empty. Throws StateFileError / EtcdError. */
async function claimPrefix(opts: EtcdStoreOptions): Promise<{ etcd: EtcdClient; prefix: string }> {
  if (!CLUSTER_NAME.test(opts.cluster)) {
    throw new StateFileError(`cluster name "${opts.cluster}" must be 1..64 of A-Z a-z 0-9 . _ -`);
  }
  const prefix = opts.prefix ?? defaultPrefix(opts.cluster);
  if (!/^\/[\x21-\x7e]*\/$/.test(prefix) || prefix.length > 200) {
    throw new StateFileError(
      `etcd prefix "${prefix}" must start and end with "/" (printable ASCII, no spaces)`,
    );
  }
  const etcd = new EtcdClient(opts.endpoints, {
    ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    ...(opts.tls ? { tls: opts.tls } : {}),
  });
  const key = `${prefix}cluster`;
  const mine = JSON.stringify({ cluster: opts.cluster, format: ETCD_FORMAT });
  const r = await etcd.txn([{ key, version: 0 }], [{ put: { key, value: mine } }], [{ get: { key } }]);
  if (!r.succeeded) {
    const text = r.read[0]?.value ?? "";
    let other: { cluster?: unknown; format?: unknown } = {};
    try {
      other = JSON.parse(text);
    } catch { /* reported below */ }
    if (typeof other.cluster !== "string") {
      throw new StateFileError(
        `etcd prefix ${prefix} holds foreign data (${key} = ${text.slice(0, 80)}); refusing`,
      );
    }
    if (other.cluster !== opts.cluster) {
      throw new StateFileError(
        `etcd prefix ${prefix} belongs to cluster "${other.cluster}", not "${opts.cluster}"; refusing ` +
          `(give this cluster its own --etcd-prefix, or the right --cluster-name)`,
      );
    }
    if (other.format !== ETCD_FORMAT) {
      throw new StateFileError(
        `etcd prefix ${prefix} has format ${other.format}, not ${ETCD_FORMAT}; upgrade netmanager`,
      );
    }
  }
  return { etcd, prefix };
}

async function loadRows(etcd: EtcdClient, prefix: string, opts: ClusterStateOptions) {
  const { kvs, revision } = await etcd.rangePrefix(`${prefix}rows/`);
  const pairs = kvs.map((kv) => [kv.key.slice(prefix.length + 5), kv.value] as const);
  const state = stateOfRows(pairs, `etcd ${prefix}rows/`, opts);
  return {
    state,
    revision,
    kvs: kvs.map((kv, i) => ({ key: pairs[i][0], value: kv.value, mod: kv.modRevision })),
  };
}

/** Result of {@link migrateToEtcd}. */
export interface MigrateResult {
  /** Rows written now. */
  written: number;
  /** Rows already present with the same value (an earlier run). */
  present: number;
}

/**
 * Copies an embedded state into an etcd prefix (claimed for `cluster`). Idempotent: rows already
 * there with the same value are skipped, so running it twice changes nothing. Refuses (nothing
 * more written) when the prefix already holds a different state. Batches stay under etcd's
 * default limit of 128 operations per transaction.
 */
export async function migrateToEtcd(file: StateFile, opts: EtcdStoreOptions): Promise<MigrateResult> {
  const { etcd, prefix } = await claimPrefix(opts);
  const existing = await etcd.rangePrefix(`${prefix}rows/`);
  const have = new Map(existing.kvs.map((kv) => [kv.key.slice(prefix.length + 5), kv.value]));
  const rows = rowsOfStateFile(file);
  const want = new Map(rows.map((r) => [r.key, rowText(r)!]));
  const differ = [...have].filter(([k, v]) => want.get(k) !== v).map(([k]) => k);
  if (differ.length) {
    throw new StateFileError(
      `etcd prefix ${prefix} already holds a different state (${differ.slice(0, 5).join(", ")}` +
        `${differ.length > 5 ? ", …" : ""}); refusing to mix two states`,
    );
  }
  let written = 0;
  const todo = rows.filter((r) => !have.has(r.key));
  // Pools last: a half-done run leaves rows whose pools a rerun completes.
  todo.sort((a, b) => Number(a.kind === "pool") - Number(b.kind === "pool"));
  let batch: { compare: Compare[]; ops: Op[] } = { compare: [], ops: [] };
  const flush = async () => {
    if (!batch.ops.length) return;
    const r = await etcd.txn(batch.compare, batch.ops);
    if (!r.succeeded) {
      throw new StateFileError(`etcd prefix ${prefix} changed during the migration; run it again`);
    }
    batch = { compare: [], ops: [] };
  };
  for (const r of todo) {
    const k = `${prefix}rows/${r.key}`;
    const claims = claimsOf(r);
    if (batch.ops.length + 1 + claims.length > 120) await flush();
    batch.compare.push({ key: k, version: 0 });
    batch.ops.push({ put: { key: k, value: rowText(r)! } });
    for (const cl of claims) batch.ops.push({ put: { key: `${prefix}claims/${cl}`, value: r.key } });
    written++;
  }
  await flush();
  return { written, present: rows.length - written };
}

export { EtcdError };
