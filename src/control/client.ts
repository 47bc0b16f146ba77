/**
 * The node's control-plane client: speaks Oakestra's node ↔ cluster MQTT protocol (reference §2) to
 * the cluster service manager — subnet request, table queries, interests, deployment and address
 * notices — and applies what it learns to the data plane's table through a {@link TableSink}.
 *
 * Differences from the reference NetManager (none visible on the wire):
 * - table queries are coalesced per key (concurrent callers share one request) and a timeout always
 *   clears the pending key (the reference leaves it stuck);
 * - a short negative cache (default 1 s) damps repeated queries for ServiceIPs the cluster says are
 *   unknown, instead of the reference's IP pseudo-interests (which send `interest/remove` for IPs);
 * - on every reconnect it resubscribes, re-announces the instances it hosts (`service/deployed`) and
 *   refreshes every job it is interested in, so updates published while it was offline are not lost;
 * - an update arriving while a refresh of the same job is in flight triggers one more refresh;
 * - a result is applied only when one of this node's queries is waiting for it (the reference also
 *   applies unasked results for jobs it follows), and each entry must pass route validation
 *   (`route_check.ts`): bad entries are dropped, a result with nothing left is refused whole and
 *   its query keeps waiting; every refusal is counted by cause in {@link NodeControl.rejections}.
 *
 * Every incoming payload is validated with zod; malformed ones are logged and ignored. No method
 * throws into mqtt's event loop; only {@link NodeControl.connect} and {@link NodeControl.requestSubnet}
 * reject (with {@link ControlError}).
 *
 * @example
 * ```ts
 * import type { DataPlane } from "../proxy/dataplane.ts";
 * import type { EnvironmentManager } from "../env/mod.ts";
 * declare const dp: DataPlane, env: EnvironmentManager, publicIp: string;
 * const control = await NodeControl.connect({
 *   host: "10.0.0.1", port: 10003, workerId: "65f0c0ffee0000000000beef",
 *   sink: { replaceJob: (j, e) => dp.apply({ op: "replaceJob", job: j, entries: e }),
 *           removeJob: (j) => dp.apply({ op: "removeJob", job: j }), hasJob: (j) => dp.table.hasJob(j) },
 *   isHosted: (job) => env.instances().some((r) => r.job === job), hostIp: () => publicIp, hostPort: 50103,
 * });
 * const subnet = await control.requestSubnet(); // { v4: "10.18.0.64", v6: "fc00::" }
 * const resolver = { resolve: (ip: string) => control.resolveIp(ip) };
 * ```
 */
// mqtt is loaded on the first connect: a standalone node never pays for it (~10 MB resident).
import type { IClientOptions, MqttClient } from "mqtt";
import type { Socket } from "node:net";
import { formatIPv4, formatIPv6, tryParseIPv4, tryParseIPv6 } from "../addr/mod.ts";
import { logger } from "../log.ts";
import { Backoff } from "./backoff.ts";
import type { NodeReport } from "../cluster/report.ts";
import { reportTopic } from "./report.ts";
import { jobNameProblem, type TableEntry } from "../table/entry.ts";
import {
  type ConvertedResult,
  QueryResultError,
  QueryResultSchema,
  toEntries,
} from "../table/query_result.ts";
import {
  addressChangedPayload,
  canonicalIp,
  deployedPayload,
  interestRemovePayload,
  jobOfUpdatesTopic,
  type NodeTopics,
  nodeTopics,
  parseSubnetResult,
  PayloadError,
  resultKeys,
  type SubnetAssignment,
  subnetRequestPayload,
  tableQueryPayload,
  UpdateSchema,
  updatesTopic,
  workerIdProblem,
} from "./payloads.ts";
import { badHost4, badHost6, checkEntries, RateLimitedLog, type RouteContext } from "./route_check.ts";

const log = logger("control");

/** Thrown when the broker cannot be reached, the options are unusable, or the subnet request fails. */
export class ControlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ControlError";
  }
}

/** Where the control plane writes what it learns: implemented by the daemon on the data plane's table. */
export interface TableSink {
  /** Replaces every entry of `job` with `entries` (non-empty). */
  replaceJob(job: string, entries: TableEntry[]): void;
  /** Drops every entry of `job`. */
  removeJob(job: string): void;
  /** True when the table holds at least one entry of `job`. */
  hasJob(job: string): boolean;
}

/** Options of {@link NodeControl.connect}. */
export interface ControlOptions {
  /**
   * Broker host (the cluster orchestrator), or several, comma-separated (control-plane replicas):
   * the client connects to the first and, when the connection is lost, tries the next ones in turn
   * (all on `port`), resubscribing and re-announcing as after any reconnect.
   */
  host: string;
  /** Broker port (Oakestra: 10003). */
  port: number;
  /** Worker id: MQTT client id and the `<id>` of `nodes/<id>/net/...`. */
  workerId: string;
  /**
   * `mqtts://`: optional client certificate and key (PEM file paths; the broker may take the
   * certificate's CN as the node's identity) and a CA file to trust (default: the system CAs).
   */
  tls?: { cert?: string; key?: string; ca?: string };
  /** Username (= worker id) and password for the broker; never logged. */
  credentials?: { username: string; password: string };
  /** The table to keep up to date. */
  sink: TableSink;
  /** True for jobs with an instance on this node (their interests never expire). */
  isHosted: (job: string) => boolean;
  /** This node's current public address (`host_ip` of `service/deployed`). */
  hostIp: () => string;
  /** This node's public tunnel port (`host_port`, sent as a string). */
  hostPort: number;
  /**
   * What the node knows about itself for route validation (see route_check.ts); called per result.
   * Without it entries are applied unchecked (tests of the protocol only).
   */
  routeContext?: () => RouteContext;
  /** Hole punching (issue 12): the control plane asks this node to HELLO another node's endpoint. */
  onPunch?: (ip: string, port: number) => void;
  /**
   * Accept unsolicited results for followed jobs and skip route validation: the behaviour before
   * both existed. Tests only (they show the attacks the checks stop).
   */
  trustResults?: boolean;
  /** Table-query timeout (5000 ms). */
  queryTimeoutMs?: number;
  /** Interest idle expiry (10000 ms). */
  interestIdleMs?: number;
  /** Subnet request timeout (10000 ms). */
  subnetTimeoutMs?: number;
  /** How long {@link NodeControl.connect} keeps trying to reach the broker (10000 ms). */
  connectTimeoutMs?: number;
  /** PUBACK / SUBACK wait (5000 ms); a late ack is logged, never thrown. */
  ackTimeoutMs?: number;
  /** How long a ServiceIP the cluster reported unknown is answered "unknown" without asking (1000 ms; 0 = off). */
  negativeTtlMs?: number;
  /** MQTT keepalive in seconds (30, as the reference). */
  keepaliveS?: number;
  /** First delay between reconnect attempts (1000 ms); it doubles (with ±20 % jitter) up to 60 s. */
  reconnectPeriodMs?: number;
  /**
   * After a reconnect, how long to wait before re-announcing and refreshing (2000 ms). After a broker
   * restart the cluster service manager reconnects on its own back-off (paho, ≥ 1 s); messages
   * published before it has resubscribed would be lost. Resubscribing is never delayed.
   */
  resyncDelayMs?: number;
}

/** Counters for inspection and tests. */
export interface ControlStats {
  /** Table-query requests published. */
  queriesSent: number;
  /** Calls that joined a query already in flight. */
  queriesCoalesced: number;
  /** Queries that timed out. */
  queryTimeouts: number;
  /** Table-query results received (valid shape). */
  resultsReceived: number;
  /** Incoming payloads dropped as malformed. */
  malformed: number;
  /** Updates received on `jobs/<job>/updates_available`. */
  updates: number;
  /** Interests expired (interest/remove published). */
  interestsExpired: number;
  /** Successful (re)connects. */
  connects: number;
  /** Results ignored because no query of this node was waiting for them. */
  unsolicited: number;
  /** Results refused as a whole (every entry failed validation). */
  resultsRefused: number;
}

/** An instance this node hosts, as announced in `service/deployed`. */
export interface HostedInstance {
  readonly job: string;
  readonly instance: number;
  readonly nsip: string;
  readonly nsipv6: string;
}

type Outcome =
  | { kind: "answer"; conv: ConvertedResult | undefined; reason: string }
  | { kind: "timeout" }
  | { kind: "failed"; reason: string };

interface Pending {
  readonly id: string;
  readonly type: "ip" | "name";
  readonly key: string;
  readonly done: Promise<Outcome>;
  readonly settle: (o: Outcome) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

interface Interest {
  lastUsed: number;
}

interface Refresh {
  again: boolean;
  done: Promise<boolean>;
}

const now = () => performance.now();
const decoder = new TextDecoder();

/** Races `p` against a timer; resolves `undefined` on timeout (the timer is always cleared). */
function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function entriesHaveIp(entries: readonly TableEntry[], ip: string): boolean {
  for (const e of entries) {
    for (const s of e.serviceIps) {
      if (s.v4 !== undefined && formatIPv4(s.v4) === ip) return true;
      if (s.v6 !== undefined && formatIPv6(s.v6) === ip) return true;
    }
  }
  return false;
}

/** The node's MQTT control-plane client. Create with {@link NodeControl.connect}. */
export class NodeControl {
  /** Counters (live). */
  readonly stats: ControlStats = {
    queriesSent: 0,
    queriesCoalesced: 0,
    queryTimeouts: 0,
    resultsReceived: 0,
    malformed: 0,
    updates: 0,
    interestsExpired: 0,
    connects: 0,
    unsolicited: 0,
    resultsRefused: 0,
  };
  /** Refused routes and results, counted by cause (`unsolicited`, `host_loopback`, …), logged rate-limited. */
  readonly rejections = new RateLimitedLog((msg, fields) => log.warn(msg, fields));
  readonly #client: MqttClient;
  readonly #topics: NodeTopics;
  readonly #onPunch: ((ip: string, port: number) => void) | undefined;
  readonly #opts: ControlOptions;
  readonly #queryTimeoutMs: number;
  readonly #idleMs: number;
  readonly #subnetTimeoutMs: number;
  readonly #ackTimeoutMs: number;
  readonly #negativeTtlMs: number;
  readonly #resyncDelayMs: number;
  readonly #pending = new Map<string, Pending>();
  readonly #interests = new Map<string, Interest>();
  readonly #hosted = new Map<string, HostedInstance>();
  readonly #negative = new Map<string, number>();
  readonly #refreshing = new Map<string, Refresh>();
  #subnetWaiter: ((payload: unknown) => void) | undefined;
  /** Extra topics (ours, e.g. certificates and revocations) and their handlers: see {@link listen}. */
  readonly #extra = new Map<string, (body: unknown) => void>();
  #sweep: ReturnType<typeof setInterval> | undefined;
  #resyncTimer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  #resync: Promise<void> = Promise.resolve();

  private constructor(client: MqttClient, opts: ControlOptions) {
    this.#client = client;
    this.#opts = opts;
    this.#topics = nodeTopics(opts.workerId);
    this.#onPunch = opts.onPunch;
    this.#queryTimeoutMs = opts.queryTimeoutMs ?? 5000;
    this.#idleMs = opts.interestIdleMs ?? 10000;
    this.#subnetTimeoutMs = opts.subnetTimeoutMs ?? 10000;
    this.#ackTimeoutMs = opts.ackTimeoutMs ?? 5000;
    this.#negativeTtlMs = opts.negativeTtlMs ?? 1000;
    this.#resyncDelayMs = opts.resyncDelayMs ?? 2000;
  }

  /**
   * Connects to `tcp://host:port` (`mqtts://` with `tls`), client id = worker id, clean session,
   * and subscribes the node's result topics. Keeps retrying for `connectTimeoutMs`; then rejects
   * with ControlError naming the broker and the last error. A broker refusing the connection
   * (CONNACK error, e.g. not authorized) rejects at once.
   */
  static async connect(opts: ControlOptions): Promise<NodeControl> {
    const problem = workerIdProblem(opts.workerId);
    if (problem) throw new ControlError(problem);
    if (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 65535) {
      throw new ControlError(`invalid MQTT port ${opts.port}`);
    }
    if (!Number.isInteger(opts.hostPort) || opts.hostPort < 1 || opts.hostPort > 65535) {
      throw new ControlError(`invalid host port ${opts.hostPort}`);
    }
    const protocol = opts.tls ? "mqtts" : "mqtt";
    const hosts = opts.host.split(",").map((h) => h.trim()).filter((h) => h !== "");
    if (hosts.length === 0) throw new ControlError(`no broker host in "${opts.host}"`);
    const urlOf = (h: string) => `${protocol}://${h.includes(":") ? `[${h}]` : h}:${opts.port}`;
    const url = hosts.map(urlOf).join(",");
    const timeoutMs = opts.connectTimeoutMs ?? 10000;
    const clientOpts: IClientOptions = {
      clientId: opts.workerId,
      clean: true,
      protocolVersion: 4,
      keepalive: opts.keepaliveS ?? 30,
      reconnectPeriod: opts.reconnectPeriodMs ?? 1000,
      connectTimeout: Math.min(timeoutMs, 30000),
      resubscribe: false, // done by #onConnect, together with the re-announce
      queueQoSZero: false,
      // Several brokers: mqtt.js moves to the next one on every new connection attempt.
      ...(hosts.length > 1 ? { servers: hosts.map((host) => ({ host, port: opts.port, protocol })) } : {}),
    };
    if (opts.credentials) {
      clientOpts.username = opts.credentials.username;
      clientOpts.password = opts.credentials.password;
    }
    if (opts.tls) {
      if ((opts.tls.cert === undefined) !== (opts.tls.key === undefined)) {
        throw new ControlError("MQTT TLS: a client certificate needs its key and vice versa");
      }
      try {
        if (opts.tls.cert) clientOpts.cert = await Deno.readTextFile(opts.tls.cert);
        if (opts.tls.key) clientOpts.key = await Deno.readTextFile(opts.tls.key);
        if (opts.tls.ca) clientOpts.ca = await Deno.readTextFile(opts.tls.ca);
      } catch (e) {
        throw new ControlError(`cannot read MQTT TLS files: ${errText(e)}`);
      }
    }
    const { default: mqtt } = await import("mqtt");
    const client = mqtt.connect(urlOf(hosts[0]), clientOpts);
    const current = () =>
      hosts.length > 1 ? urlOf(String(client.options.hostname ?? client.options.host)) : url;
    const control = new NodeControl(client, opts);
    let lastError = "no answer";
    const first = Promise.withResolvers<void>();
    // Reconnects back off exponentially with jitter; the loss is logged once, then one line per
    // attempt only while the delay grows (1, 2, 4 … 60 s), not one per second.
    const backoff = new Backoff({ baseMs: clientOpts.reconnectPeriod ?? 1000, maxMs: 60_000 });
    let downSince = 0;
    /** Attempts since the last connect: with several brokers, each is tried once before backing off. */
    let roundAttempt = 0;
    client.on("connect", () => {
      control.stats.connects++;
      roundAttempt = 0;
      const again = control.stats.connects > 1;
      client.options.reconnectPeriod = clientOpts.reconnectPeriod;
      backoff.reset();
      if (again) {
        log.info("reconnected to MQTT broker", {
          url: current(),
          downSeconds: +((performance.now() - downSince) / 1000).toFixed(1),
        });
      }
      control.#resync = control.#onConnect(again).then(first.resolve, (e) => {
        log.error("resync after connect failed", { error: errText(e) });
        first.resolve();
      });
    });
    client.on("error", (e: Error & { code?: unknown }) => {
      lastError = errText(e);
      if (typeof e.code === "number") {
        // A CONNACK refusal: retrying will not help.
        first.reject(new ControlError(`MQTT broker ${url} refused the connection: ${lastError}`));
      }
      // While reconnecting every attempt fails the same way: the back-off lines carry the error.
      if (control.stats.connects > 0 && !client.reconnecting) log.warn("MQTT error", { error: lastError });
    });
    client.on("offline", () => {
      if (control.stats.connects === 0 || control.#closed) return;
      downSince = performance.now();
      backoff.reset();
      log.warn("MQTT connection lost; forwarding continues with the table held, reconnecting", {
        url: current(),
        error: lastError,
        retryInMs: client.options.reconnectPeriod,
      });
    });
    // mqtt.js reads reconnectPeriod each time it schedules the next attempt (after this one fails).
    client.on("reconnect", () => {
      if (control.stats.connects === 0 || control.#closed) return;
      roundAttempt++;
      const delay = roundAttempt % hosts.length !== 0 ? (clientOpts.reconnectPeriod ?? 1000) : backoff.next();
      client.options.reconnectPeriod = delay;
      if (backoff.attempt <= 6 || backoff.attempt % 10 === 0) {
        log.warn("MQTT broker unreachable; backing off", {
          url,
          error: lastError,
          attempt: backoff.attempt,
          downSeconds: Math.round((performance.now() - downSince) / 1000),
          nextRetryInMs: delay,
        });
      }
    });
    client.on("message", (topic: string, payload: Uint8Array) => control.#onMessage(topic, payload));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new ControlError(`cannot reach MQTT broker ${url} within ${timeoutMs} ms: ${lastError}`),
          ),
        timeoutMs,
      );
    });
    try {
      await Promise.race([first.promise, timeout]);
    } catch (e) {
      control.#closed = true;
      await client.endAsync(true).catch(() => {});
      throw e;
    } finally {
      clearTimeout(timer);
    }
    const period = Math.max(20, Math.min(1000, Math.floor(control.#idleMs / 5)));
    control.#sweep = setInterval(() => control.#expireInterests(), period);
    log.info("connected to MQTT broker", {
      url: current(),
      clientId: opts.workerId,
      auth: opts.credentials ? "password" : opts.tls?.cert ? "client certificate" : "none",
    });
    return control;
  }

  /** True while the MQTT connection is up. */
  get connected(): boolean {
    return this.#client.connected && !this.#closed;
  }

  /** Jobs this node is currently interested in (subscribed to their updates). */
  interests(): string[] {
    return [...this.#interests.keys()];
  }

  /** The instances this node announced as hosted (re-announced on reconnect). */
  hosted(): HostedInstance[] {
    return [...this.#hosted.values()];
  }

  /**
   * Asks the cluster for this node's subnet (`nodes/<id>/net/subnet {"METHOD":"GET"}`) and waits for
   * a valid `subnetwork/result`. Malformed answers are logged and ignored; the request is sent again
   * after a reconnect. Rejects with ControlError after `subnetTimeoutMs`.
   */
  async requestSubnet(): Promise<SubnetAssignment> {
    if (this.#closed) throw new ControlError("control plane is closed");
    if (this.#subnetWaiter) throw new ControlError("a subnet request is already in flight");
    const d = Promise.withResolvers<SubnetAssignment>();
    let lastProblem = "";
    this.#subnetWaiter = (payload) => {
      try {
        d.resolve(parseSubnetResult(payload));
      } catch (e) {
        if (!(e instanceof PayloadError)) throw e;
        lastProblem = e.message;
        this.stats.malformed++;
        log.warn("ignoring subnet result", { error: e.message });
      }
    };
    try {
      void this.#publish(this.#topics.subnetRequest, subnetRequestPayload());
      const r = await withTimeout(d.promise, this.#subnetTimeoutMs);
      if (r === undefined) {
        throw new ControlError(
          `no valid subnet from the cluster within ${this.#subnetTimeoutMs} ms` +
            (lastProblem
              ? ` (last answer: ${lastProblem})`
              : this.connected
              ? ""
              : " (broker not connected)"),
        );
      }
      log.info("subnet assigned", { v4: r.v4, v6: r.v6 });
      return r;
    } finally {
      this.#subnetWaiter = undefined;
    }
  }

  /**
   * The data plane's resolver: makes sure the table holds ServiceIP `ip`. Sends a table query by
   * `sip` (coalesced with any query in flight for the same key), applies the result to the sink,
   * registers interest in the job, and resolves true when the table now has `ip`. Never rejects:
   * timeouts, disconnection and unknown IPs resolve false.
   */
  async resolveIp(ip: string): Promise<boolean> {
    const key = canonicalIp(ip);
    if (key === undefined) {
      log.warn("resolveIp: not an IP address", { ip });
      return false;
    }
    const until = this.#negative.get(key);
    if (until !== undefined) {
      if (now() < until) return false;
      this.#negative.delete(key);
    }
    const o = await this.#query("ip", key);
    if (o.kind !== "answer") return false;
    const conv = o.conv;
    if (conv && entriesHaveIp(conv.entries, key)) return this.#sinkHas(conv.job);
    if (this.#negativeTtlMs > 0) this.#negative.set(key, now() + this.#negativeTtlMs);
    log.debug("ServiceIP unknown to the cluster", { ip: key, reason: o.reason });
    return false;
  }

  /**
   * Forced table query by name: replaces the job's entries (or removes the job when the answer has
   * no usable instance). Resolves true when the table now holds the job; false on timeout,
   * disconnection or an empty answer. Never rejects.
   */
  async refreshJob(job: string): Promise<boolean> {
    const problem = jobNameProblem(job);
    if (problem) {
      log.warn("refreshJob: invalid job name", { job, problem });
      return false;
    }
    const o = await this.#query("name", job);
    if (o.kind === "timeout") log.warn("table query timed out", { job, timeoutMs: this.#queryTimeoutMs });
    else if (o.kind === "failed") log.warn("table query not sent", { job, reason: o.reason });
    if (o.kind !== "answer") return false;
    return this.#sinkHas(job);
  }

  /**
   * A name lookup (DNS): a table query by name sharing any query in flight for the job. "found" when
   * the table now holds the job, "empty" when the cluster knows the job without instances (the node
   * then follows its updates, so a deployment shows without asking again), "unknown" when the cluster
   * does not know it, "unavailable" on timeout or disconnection. Never rejects.
   */
  async lookupJob(job: string): Promise<"found" | "empty" | "unknown" | "unavailable"> {
    if (jobNameProblem(job)) return "unknown";
    const o = await this.#query("name", job);
    if (o.kind !== "answer") return "unavailable";
    if (this.#sinkHas(job)) {
      void this.#ensureInterest(job);
      return "found";
    }
    if (o.conv?.job === job) {
      void this.#ensureInterest(job);
      return "empty";
    }
    return "unknown";
  }

  /**
   * A local instance was deployed: records it (re-announced on reconnect), publishes
   * `service/deployed` (`host_port` as a string, `host_ip` from `hostIp()`), registers interest in
   * the job and refreshes it by name — how the node learns its own instance's Instance IP. Resolves
   * with the refresh's result; never rejects (the daemon may fire and forget).
   */
  async deployed(job: string, instance: number, nsip: string, nsipv6: string): Promise<boolean> {
    const problem = jobNameProblem(job);
    if (problem || !Number.isInteger(instance) || instance < 0) {
      log.warn("deployed: invalid job/instance, nothing announced", { job, instance, problem });
      return false;
    }
    const h: HostedInstance = { job, instance, nsip, nsipv6 };
    this.#hosted.set(`${job}#${instance}`, h);
    await this.#announce(h);
    await this.#ensureInterest(job);
    return await this.#refresh(job);
  }

  /** A local instance was undeployed: forget it (Oakestra sends no MQTT message for this). */
  undeployed(job: string, instance: number): void {
    this.#hosted.delete(`${job}#${instance}`);
    const i = this.#interests.get(job);
    if (i) i.lastUsed = now(); // from now on it ages like any other interest
  }

  /** Usage of `job` seen on the packet path: keeps its interest alive. Cheap (one map lookup). */
  touch(job: string): void {
    const i = this.#interests.get(job);
    if (i) i.lastUsed = now();
  }

  /**
   * The node's public address changed: publishes `service/address-changed` (new `host_ip`, the
   * public port, empty status/nsips) for every hosted instance. Never rejects.
   */
  async addressChanged(oldIp: string, newIp: string): Promise<void> {
    log.info("public address changed", { from: oldIp, to: newIp, instances: this.#hosted.size });
    await Promise.all(
      [...this.#hosted.values()].map((h) =>
        this.#publish(
          this.#topics.addressChanged,
          addressChangedPayload({
            job: h.job,
            instance: h.instance,
            hostIp: newIp,
            hostPort: this.#opts.hostPort,
          }),
        )
      ),
    );
  }

  /**
   * Publishes this node's report (`nodes/<id>/netmanager/report`, QoS 0: the next one replaces a lost
   * one; see cluster/report.ts). False while disconnected or closed; errors are only logged.
   */
  report(body: NodeReport): boolean {
    if (this.#closed || !this.#client.connected) return false;
    this.#client.publish(
      reportTopic(this.#opts.workerId),
      JSON.stringify(body),
      { qos: 0, retain: false },
      (e) => {
        if (e) log.debug("report not sent", { error: errText(e) });
      },
    );
    return true;
  }

  /**
   * Subscribes one more topic (also after every reconnect) and hands its JSON payloads to `handler`
   * (netmanager's own topics: tunnel certificates, revocation lists). Non-JSON payloads are counted
   * as malformed and dropped, as everywhere else.
   */
  async listen(topic: string, handler: (body: unknown) => void): Promise<boolean> {
    this.#extra.set(topic, handler);
    if (!this.#client.connected) return false; // subscribed by the next connect
    return await this.#subscribe([topic]);
  }

  /** Publishes a JSON payload (QoS 1) on one of this node's topics; false when not sent. */
  publishJson(topic: string, body: unknown): Promise<boolean> {
    return this.#publish(topic, body);
  }

  /** Stops timers, settles every pending query (false) and disconnects. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#sweep);
    clearTimeout(this.#resyncTimer);
    for (const p of [...this.#pending.values()]) this.#finish(p, { kind: "failed", reason: "closed" });
    const graceful = await withTimeout(this.#client.endAsync(false).then(() => true), 1000);
    if (!graceful) await this.#client.endAsync(true).catch(() => {});
    log.info("MQTT client closed");
  }

  // ---------------------------------------------------------------------------------------------

  /** (Re)subscribes everything; after a reconnect also re-announces and refreshes. */
  async #onConnect(again: boolean): Promise<void> {
    const sock = this.#client.stream as unknown as Partial<Socket> | undefined;
    if (sock && typeof sock.setNoDelay === "function") sock.setNoDelay(true);
    const topics = [
      this.#topics.tableQueryResult,
      this.#topics.subnetResult,
      ...this.#extra.keys(),
      ...(this.#onPunch ? [this.#topics.punch] : []),
      ...[...this.#interests.keys()].map(updatesTopic),
    ];
    await this.#subscribe(topics);
    if (!again) return;
    if (this.#resyncDelayMs > 0) {
      await new Promise<void>((resolve) => {
        clearTimeout(this.#resyncTimer);
        this.#resyncTimer = setTimeout(resolve, this.#resyncDelayMs);
      });
    }
    if (this.#closed || !this.#client.connected) return;
    log.info("resync after reconnect", { hosted: this.#hosted.size, interests: this.#interests.size });
    if (this.#subnetWaiter) void this.#publish(this.#topics.subnetRequest, subnetRequestPayload());
    await Promise.all([...this.#hosted.values()].map((h) => this.#announce(h)));
    for (const job of this.#interests.keys()) void this.#refresh(job);
  }

  async #subscribe(topics: string[]): Promise<boolean> {
    if (topics.length === 0 || this.#closed) return true;
    const map: Record<string, { qos: 1 }> = {};
    for (const t of topics) map[t] = { qos: 1 };
    try {
      const granted = await withTimeout(this.#client.subscribeAsync(map), this.#ackTimeoutMs);
      if (granted === undefined) {
        log.warn("SUBACK not received in time", { topics, timeoutMs: this.#ackTimeoutMs });
        return false;
      }
      const refused = granted.filter((g) => g.qos === 128).map((g) => g.topic);
      if (refused.length) log.warn("broker refused subscriptions", { topics: refused });
      return refused.length === 0;
    } catch (e) {
      log.warn("subscribe failed", { topics, error: errText(e) });
      return false;
    }
  }

  async #unsubscribe(topic: string): Promise<void> {
    if (this.#closed || !this.#client.connected) return;
    try {
      const r = await withTimeout(this.#client.unsubscribeAsync(topic), this.#ackTimeoutMs);
      if (r === undefined) log.warn("UNSUBACK not received in time", { topic });
    } catch (e) {
      log.warn("unsubscribe failed", { topic, error: errText(e) });
    }
  }

  /**
   * Publishes JSON with QoS 1, retain false, waiting ≤ ackTimeoutMs for the PUBACK. Errors are only
   * logged. While disconnected nothing is sent (what matters is replayed by the reconnect resync).
   */
  async #publish(topic: string, body: unknown): Promise<boolean> {
    if (this.#closed) return false;
    if (!this.#client.connected) {
      log.warn("not connected; message not sent", { topic });
      return false;
    }
    try {
      const r = await withTimeout(
        this.#client.publishAsync(topic, JSON.stringify(body), { qos: 1, retain: false }).then(() => true),
        this.#ackTimeoutMs,
      );
      if (r === undefined) log.warn("PUBACK not received in time", { topic, timeoutMs: this.#ackTimeoutMs });
      return r === true;
    } catch (e) {
      log.warn("publish failed", { topic, error: errText(e) });
      return false;
    }
  }

  #announce(h: HostedInstance): Promise<boolean> {
    let hostIp: string;
    try {
      hostIp = this.#opts.hostIp();
    } catch (e) {
      log.warn("hostIp() failed; service/deployed not sent", { job: h.job, error: errText(e) });
      return Promise.resolve(false);
    }
    return this.#publish(
      this.#topics.serviceDeployed,
      deployedPayload({
        job: h.job,
        instance: h.instance,
        nsip: h.nsip,
        nsipv6: h.nsipv6,
        hostIp,
        hostPort: this.#opts.hostPort,
      }),
    );
  }

  /** Sends (or joins) a table query; always settles: answer, timeout or failure. */
  #query(type: "ip" | "name", key: string): Promise<Outcome> {
    const id = `${type}:${key}`;
    const existing = this.#pending.get(id);
    if (existing) {
      this.stats.queriesCoalesced++;
      return existing.done;
    }
    if (this.#closed) return Promise.resolve({ kind: "failed", reason: "closed" });
    if (!this.#client.connected) return Promise.resolve({ kind: "failed", reason: "not connected" });
    const d = Promise.withResolvers<Outcome>();
    const p: Pending = { id, type, key, done: d.promise, settle: d.resolve, timer: undefined };
    p.timer = setTimeout(() => {
      this.stats.queryTimeouts++;
      this.#finish(p, { kind: "timeout" });
    }, this.#queryTimeoutMs);
    this.#pending.set(id, p);
    this.stats.queriesSent++;
    const body = tableQueryPayload(type === "ip" ? { sip: key } : { sname: key });
    this.#client.publishAsync(this.#topics.tableQueryRequest, JSON.stringify(body), { qos: 1, retain: false })
      .catch((e) => this.#finish(p, { kind: "failed", reason: `publish failed: ${errText(e)}` }));
    return d.promise;
  }

  /** Settles a pending query and clears its key (only if it is still the registered one). */
  #finish(p: Pending, o: Outcome): void {
    clearTimeout(p.timer);
    if (this.#pending.get(p.id) === p) this.#pending.delete(p.id);
    p.settle(o);
  }

  #onMessage(topic: string, payload: Uint8Array): void {
    try {
      let body: unknown;
      try {
        body = JSON.parse(decoder.decode(payload));
      } catch (e) {
        this.stats.malformed++;
        log.warn("ignoring non-JSON MQTT payload", { topic, error: errText(e) });
        return;
      }
      if (topic === this.#topics.tableQueryResult) return this.#onQueryResult(body);
      if (topic === this.#topics.punch) {
        const ep = parsePunch(body);
        if (ep === undefined) {
          this.stats.malformed++;
          log.warn("ignoring malformed punch request", { topic });
        } else this.#onPunch?.(ep.ip, ep.port);
        return;
      }
      const extra = this.#extra.get(topic);
      if (extra) return extra(body);
      if (topic === this.#topics.subnetResult) {
        if (this.#subnetWaiter) this.#subnetWaiter(body);
        else log.debug("unsolicited subnet result ignored");
        return;
      }
      const job = jobOfUpdatesTopic(topic);
      if (job !== undefined) return this.#onUpdate(job, body);
      log.debug("message on unexpected topic ignored", { topic });
    } catch (e) {
      // Never let anything escape into mqtt's event loop.
      log.error("error handling MQTT message", { topic, error: errText(e) });
    }
  }

  #onQueryResult(body: unknown): void {
    const shape = QueryResultSchema.safeParse(body);
    if (!shape.success) {
      this.stats.malformed++;
      // Release whoever asked for query_key, if we can read it: the answer is "unknown".
      const qk = typeof body === "object" && body !== null
        ? (body as Record<string, unknown>).query_key
        : undefined;
      const reason = `malformed table query result: ${shape.error.issues[0]?.message ?? "invalid"}`;
      log.warn("ignoring malformed table query result", { queryKey: qk, error: reason });
      if (typeof qk === "string" && qk !== "") {
        const ip = canonicalIp(qk);
        const p = this.#pending.get(ip ? `ip:${ip}` : `name:${qk}`);
        if (p) this.#finish(p, { kind: "answer", conv: undefined, reason });
      }
      return;
    }
    this.stats.resultsReceived++;
    const keys = resultKeys(shape.data);
    const waiters: Pending[] = [];
    for (const n of keys.names) {
      const p = this.#pending.get(`name:${n}`);
      if (p) waiters.push(p);
    }
    for (const ip of keys.ips) {
      const p = this.#pending.get(`ip:${ip}`);
      if (p) waiters.push(p);
    }
    let conv: ConvertedResult | undefined;
    let reason = "";
    try {
      conv = toEntries(shape.data);
    } catch (e) {
      if (!(e instanceof QueryResultError)) throw e;
      reason = e.message;
    }
    if (!conv && shape.data.app_name !== "") {
      // A job name that can never be valid: refuse it for everyone who asked.
      this.stats.malformed++;
      log.warn("rejected table query result", { error: reason });
    } else if (waiters.length === 0 && this.#opts.trustResults && conv && this.#interests.has(conv.job)) {
      this.#apply(conv, waiters); // the old behaviour (tests only)
      return;
    } else if (waiters.length === 0) {
      // Results only ever answer queries (reference §2.4): nobody asked, so nobody gets to change the table.
      this.stats.unsolicited++;
      this.rejections.note("unsolicited", "ignoring a table query result nobody asked for", {
        job: shape.data.app_name,
        queryKey: shape.data.query_key ?? "",
      });
      return;
    } else if (conv) {
      for (const d of conv.dropped) {
        log.debug("instance left out of the table", { job: conv.job, why: d.message });
      }
      for (const n of conv.notes) log.debug("table query note", { job: conv.job, note: n });
      conv = this.#validate(conv);
      // Refused whole: whoever asked keeps waiting for an answer that holds (until the timeout).
      if (!conv) return;
      this.#apply(conv, waiters);
    }
    for (const w of waiters) this.#finish(w, { kind: "answer", conv, reason });
  }

  /**
   * Drops the entries that fail route validation (per entry: the others are applied). When a
   * non-empty answer loses every entry the result is refused as a whole (undefined): the table keeps
   * what it has rather than forgetting the job on the word of a payload that is wrong throughout,
   * and the query stays pending, so a forged answer racing the cluster's cannot swallow the real one.
   */
  #validate(conv: ConvertedResult): ConvertedResult | undefined {
    const ctxOf = this.#opts.routeContext;
    if (!ctxOf || this.#opts.trustResults || conv.entries.length === 0) return conv;
    let ctx: RouteContext;
    try {
      ctx = ctxOf();
    } catch (e) {
      log.error("route context unavailable; result refused", { job: conv.job, error: errText(e) });
      return undefined;
    }
    const { accepted, rejected } = checkEntries(conv.job, conv.entries, ctx);
    if (rejected.length === 0) return conv;
    for (const r of rejected) {
      this.rejections.note(r.cause, "table entry refused", { job: conv.job, detail: r.detail });
    }
    if (accepted.length === 0) {
      this.stats.resultsRefused++;
      return undefined;
    }
    return { ...conv, entries: accepted, sources: [] };
  }

  /** Applies an answered result to the sink: an answer by name (or about a job we follow) is the whole truth. */
  #apply(conv: ConvertedResult, waiters: Pending[]): void {
    const job = conv.job;
    const byName = waiters.some((w) => w.type === "name");
    const byIp = waiters.some((w) => w.type === "ip");
    const has = conv.entries.length > 0;
    try {
      if (byName || this.#interests.has(job)) {
        if (has) this.#opts.sink.replaceJob(job, conv.entries);
        else this.#opts.sink.removeJob(job);
      } else if (has) {
        this.#opts.sink.replaceJob(job, conv.entries);
      }
    } catch (e) {
      log.error("table sink rejected an update", { job, error: errText(e) });
      return;
    }
    if (has) {
      // The cluster now knows instances of this job: forget "unknown" answers for its addresses.
      for (const e of conv.entries) {
        for (const sip of e.serviceIps) {
          if (sip.v4 !== undefined) this.#negative.delete(formatIPv4(sip.v4));
          if (sip.v6 !== undefined) this.#negative.delete(formatIPv6(sip.v6));
        }
      }
    }
    // Follow the job even when none of its instances is deployed yet: the deployment is pushed
    // (updates_available) instead of waiting for the negative cache to expire.
    if (byIp && job) void this.#ensureInterest(job);
  }

  #onUpdate(job: string, body: unknown): void {
    const u = UpdateSchema.safeParse(body);
    if (!u.success) {
      this.stats.malformed++;
      log.warn("ignoring malformed update", { job });
      return;
    }
    this.stats.updates++;
    if (!this.#interests.has(job)) {
      log.debug("update for a job without interest ignored", { job });
      return;
    }
    log.debug("update available", { job, type: u.data.type });
    void this.#refresh(job);
  }

  /** Refreshes `job`, coalescing with a refresh in flight (which then runs once more). */
  #refresh(job: string): Promise<boolean> {
    const r = this.#refreshing.get(job);
    if (r) {
      r.again = true;
      return r.done;
    }
    const entry: Refresh = { again: false, done: Promise.resolve(false) };
    entry.done = (async () => {
      let ok = false;
      try {
        do {
          entry.again = false;
          ok = await this.refreshJob(job);
        } while (entry.again && !this.#closed);
      } finally {
        this.#refreshing.delete(job);
      }
      return ok;
    })();
    this.#refreshing.set(job, entry);
    return entry.done;
  }

  async #ensureInterest(job: string): Promise<void> {
    const i = this.#interests.get(job);
    if (i) {
      i.lastUsed = now();
      return;
    }
    this.#interests.set(job, { lastUsed: now() });
    log.debug("interest registered", { job });
    if (this.#client.connected) await this.#subscribe([updatesTopic(job)]);
  }

  #isHosted(job: string): boolean {
    for (const h of this.#hosted.values()) if (h.job === job) return true;
    try {
      return this.#opts.isHosted(job);
    } catch (e) {
      log.warn("isHosted failed", { job, error: errText(e) });
      return true; // keep the interest rather than drop a job that may be ours
    }
  }

  #expireInterests(): void {
    // Offline, nothing expires: interest/remove could not be sent, and touch() cannot tell usage apart.
    if (this.#closed || !this.#client.connected) return;
    const t = now();
    for (const [job, i] of this.#interests) {
      if (t - i.lastUsed < this.#idleMs) continue;
      if (this.#isHosted(job)) {
        i.lastUsed = t;
        continue;
      }
      if (this.#refreshing.has(job)) continue;
      this.#interests.delete(job);
      this.stats.interestsExpired++;
      log.debug("interest expired", { job, idleMs: Math.round(t - i.lastUsed) });
      void this.#publish(this.#topics.interestRemove, interestRemovePayload(job));
      void this.#unsubscribe(updatesTopic(job));
      try {
        this.#opts.sink.removeJob(job);
      } catch (e) {
        log.error("table sink failed to remove a job", { job, error: errText(e) });
      }
    }
    if (this.#negative.size > 0) {
      for (const [ip, until] of this.#negative) if (t >= until) this.#negative.delete(ip);
    }
  }

  #sinkHas(job: string): boolean {
    try {
      return this.#opts.sink.hasJob(job);
    } catch (e) {
      log.warn("table sink hasJob failed", { job, error: errText(e) });
      return false;
    }
  }

  /** Resolves when the latest connect's resubscribe (and, after a reconnect, re-announce) is done. */
  whenSynced(): Promise<void> {
    return this.#resync;
  }
}

/** A punch request's `{"endpoint":"ip:port"}` (IPv6 as `[ip]:port`), validated; undefined when malformed. */
export function parsePunch(body: unknown): { ip: string; port: number } | undefined {
  if (typeof body !== "object" || body === null) return undefined;
  const ep = (body as { endpoint?: unknown }).endpoint;
  if (typeof ep !== "string" || ep.length > 64) return undefined;
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):([0-9]{1,5})$/.exec(ep);
  if (!m) return undefined;
  const ip = m[1] ?? m[2];
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  // Only a unicast underlay address (as for a table result's host_ip): never loopback, multicast, …
  if (m[1] !== undefined) {
    const a6 = tryParseIPv6(ip);
    if (a6 === undefined || badHost6(a6) !== undefined) return undefined;
  } else {
    const a4 = tryParseIPv4(ip);
    if (a4 === undefined || badHost4(a4) !== undefined) return undefined;
  }
  return { ip, port };
}
