/**
 * The control-plane service (`netmanager control`): state store, MQTT broker (embedded aedes, or an
 * external broker as a client only), the node-facing MQTT handlers and the HTTP API, wired together.
 *
 * @example
 * ```ts
 * const c = await startControl({ stateDir: "/tmp/ctl", mqttPort: 0, httpPort: 0, mqttHost: "127.0.0.1" });
 * console.log(c.brokerUrl, c.httpUrl);
 * await c.stop();
 * ```
 */
import mqtt from "mqtt";
import type { IClientOptions } from "mqtt";
import type net from "node:net";
import { type BrokerTls, type EmbeddedBroker, startBroker } from "./broker.ts";
import { CredentialStore, loadOrCreateApiToken, writeApiToken } from "./auth.ts";
import {
  type ControlCore,
  handleNodeMessage,
  NODE_TOPIC_FILTER,
  parseNodeMessage,
  PUNCH_LEAD_MS,
  updatesTopic,
} from "./mqtt.ts";
import { createHttpHandler } from "./http.ts";
import { REPORT_TOPIC_FILTER, ReportStore, workerOfReportTopic } from "./report.ts";
import { clusterView } from "./view.ts";
import { type ClusterState, isDeployed } from "./state.ts";
import { type ControlStore, SqliteStore } from "./store.ts";
import { defaultPrefix, EtcdError, EtcdStore } from "./etcd_store.ts";
import { EtcdClient, type EtcdTls } from "./etcd.ts";
import { logger, RateLimitedLog } from "../log.ts";
import { ClusterPki } from "./pki.ts";
import { CertRequestSchema, certResultTopic } from "../secure/node_security.ts";
import { WORKER_ID } from "./schemas.ts";
import { REVOCATION_TOPIC } from "../secure/revocation.ts";
import { ObservedEndpoints, Reflector } from "../path/reflector.ts";
import { RelayServer, type RelayTotals } from "../path/relay.ts";
import { RelaySet } from "../path/relay_set.ts";
import {
  endpointText,
  parseRelayOffer,
  parseRelayRequest,
  parseRelayServed,
  reflectNowTopic,
  RELAY_OFFER_TOPIC,
  RELAY_REQUEST_TOPIC,
  RELAY_SERVED_TOPIC,
  relayNoticeTopic,
  relayServeTopic,
} from "../path/relay_msg.ts";

const log = logger("control");
const CERT_REQUEST = /^nodes\/([^/]+)\/net\/cert\/request$/;

/** How long a relay request waits for the target's re-checked observed endpoint (roaming). */
const ROAM_WAIT_MS = 700;

/** Default MQTT listener port (Oakestra's cluster broker). */
export const DEFAULT_MQTT_PORT = 10003;
/** Default HTTP API port. */
export const DEFAULT_HTTP_PORT = 10100;
/** Default state directory. */
export const DEFAULT_STATE_DIR = "/var/lib/netmanager/control";

/** Raised when the service cannot start (bad option, port in use, broker unreachable). */
export class ControlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ControlError";
  }
}

/** Options of {@link startControl}. */
export interface ControlOptions {
  /** Directory of the state file (created when missing). */
  stateDir: string;
  /** Embedded broker bind address (default 0.0.0.0). Ignored with `broker`. */
  mqttHost?: string;
  /** Embedded broker port (default 10003; 0 = any free port). Ignored with `broker`. */
  mqttPort?: number;
  /** External broker URL (`mqtt://host:port`, `tcp://…`, `mqtts://…`): no embedded broker then. */
  broker?: string;
  /**
   * HTTP API bind address (default 127.0.0.1). Any other address requires `httpTls`: the bearer
   * token must not cross a network in clear text.
   */
  httpHost?: string;
  /** Certificate and key (PEM file paths) of the HTTP API: https. */
  httpTls?: { cert: string; key: string };
  /** Embedded broker: accept clients without credentials and apply no ACL (labs only; default false). */
  allowAnonymous?: boolean;
  /**
   * Embedded broker: TLS listener (PEM file paths). With `clientCa`, nodes may authenticate with a
   * client certificate whose CN is their worker id.
   */
  mqttTls?: { cert: string; key: string; clientCa?: string };
  /** External broker: the control plane's username and password. */
  brokerCredentials?: { username: string; password: string };
  /** External broker: CA file that signs its certificate (`mqtts://`; default: the system CAs). */
  brokerCa?: string;
  /** HTTP API port (default 10100; 0 = any free port). */
  httpPort?: number;
  /** IPv4 addresses whose /26 is never a node subnet (default ["10.19.1.254"], the TUN address). */
  avoidSubnet4?: string[];
  /**
   * Embedded store: "full" (default) syncs every change to disk before it is answered; "normal"
   * survives a crash of the process but may lose the last changes on power loss (faster).
   */
  stateSync?: "full" | "normal";
  /**
   * Replicated mode: the state lives in etcd under the cluster's prefix, shared with every other
   * replica (see etcd_store.ts); the state dir keeps only this replica's token and credentials.
   */
  etcd?: {
    endpoints: string[];
    cluster: string;
    prefix?: string;
    /** PEM file paths: CA of the members, client certificate and key (`https://` endpoints). */
    tls?: { ca?: string; cert?: string; key?: string };
  };
  /** How long to wait for the first broker connection (default 10 000 ms). */
  brokerConnectTimeoutMs?: number;
  /**
   * Endpoint reflector (src/path/reflector.ts): UDP port (the CLI's default 50104; 0 = any free
   * port) and bind address (default 0.0.0.0). Off when `reflectorPort` is undefined.
   */
  reflectorPort?: number;
  reflectorHost?: string;
  /** The reflector's port was not asked for explicitly: when it is in use, warn and run without it. */
  reflectorOptional?: boolean;
  /**
   * Relay (src/path/relay.ts, needs the reflector): pairs of nodes whose punch failed are relayed
   * through this host, which nodes dial at `address`; `mbitPerNode` caps each node (default 1000).
   */
  relay?: { address: string; mbitPerNode?: number };
}

/** A running control service. */
export interface ControlService {
  /** Port of the broker used (embedded listener, or the external URL's port). */
  readonly mqttPort: number;
  /** Port of the HTTP API. */
  readonly httpPort: number;
  /** URL the service's own MQTT client connected to. */
  readonly brokerUrl: string;
  /** Base URL of the HTTP API (with a connectable host when bound to a wildcard). */
  readonly httpUrl: string;
  /** Where the state is kept: the SQLite database path, or the etcd endpoints and key prefix. */
  readonly statePath: string;
  /** Path of the HTTP API token file (0600). */
  readonly tokenPath: string;
  /** Path of the node credential file of the embedded broker (0600). */
  readonly credentialsPath: string;
  /** The live state (read only). */
  readonly state: ClusterState;
  /** Node reports dropped so far, by cause (live). */
  readonly reportsDropped: Readonly<Record<string, number>>;
  /** Tunnel endpoints the reflector observed per node (live), and its port (undefined: off). */
  readonly observed: ObservedEndpoints;
  readonly reflectorPort: number | undefined;
  /** The relay's counters (undefined: no relay). */
  relayTotals(): RelayTotals | undefined;
  /** Nodes offering to relay (`RelayCandidate`), their address and how many pairs each relays now. */
  relayNodes(): Array<{ worker: string; address: string; pairs: number }>;
  /** Ready: the service's broker connection is up and the last state save worked. */
  health(): { ok: true } | { ok: false; reason: string };
  /** Stops HTTP, saves, disconnects from the broker, stops the embedded broker. Idempotent. */
  stop(): Promise<void>;
}

/** Normalises a broker URL (`tcp://` → `mqtt://`, `tls://`/`ssl://` → `mqtts://`); throws ControlError. */
export function brokerUrlOf(text: string): string {
  let u: URL;
  try {
    u = new URL(text.includes("://") ? text : `mqtt://${text}`);
  } catch {
    throw new ControlError(`invalid broker URL "${text}" (expected mqtt://host:port)`);
  }
  const proto =
    { "mqtt:": "mqtt:", "tcp:": "mqtt:", "mqtts:": "mqtts:", "tls:": "mqtts:", "ssl:": "mqtts:" }[u.protocol];
  if (!proto || !u.hostname) {
    throw new ControlError(`invalid broker URL "${text}" (expected mqtt://host:port)`);
  }
  const port = u.port || (proto === "mqtt:" ? "1883" : "8883");
  const host = u.hostname.includes(":") && !u.hostname.startsWith("[") ? `[${u.hostname}]` : u.hostname;
  return `${proto}//${host}:${port}`;
}

function connectableHost(host: string): string {
  if (host === "0.0.0.0" || host === "") return "127.0.0.1";
  if (host === "::" || host === "[::]") return "[::1]";
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

function checkPort(name: string, p: number): number {
  if (!Number.isInteger(p) || p < 0 || p > 65535) {
    throw new ControlError(`${name} ${p} is not a port (0..65535)`);
  }
  return p;
}

function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127\.[0-9]+\.[0-9]+\.[0-9]+$/.test(h);
}

async function readPem(what: string, path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    throw new ControlError(`cannot read ${what} ${path}: ${(e as Error).message}`);
  }
}

/** How the control plane's own client reaches the broker. */
type BrokerLink =
  | { kind: "internal"; broker: EmbeddedBroker }
  | { kind: "url"; url: string; options: IClientOptions };

async function connectClient(
  link: BrokerLink,
  timeoutMs: number,
  filter: string = NODE_TOPIC_FILTER,
): Promise<mqtt.MqttClient> {
  const url = link.kind === "url" ? link.url : "in-process embedded broker";
  const options: IClientOptions = {
    clientId: `netmanager-control-${crypto.randomUUID().slice(0, 8)}`,
    clean: true,
    keepalive: 5,
    reconnectPeriod: 1000,
    connectTimeout: Math.min(timeoutMs, 30_000),
    ...(link.kind === "url" ? link.options : {}),
  };
  const client = link.kind === "internal"
    ? new mqtt.MqttClient(() => link.broker.connectInternal(), options)
    : mqtt.connect(link.url, options);
  client.on("connect", () => {
    (client.stream as unknown as net.Socket).setNoDelay?.(true);
  });
  let lastError = "";
  const onError = (e: Error) => {
    lastError = e.message;
  };
  client.on("error", onError);
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(lastError || `no connection within ${timeoutMs} ms`)),
        timeoutMs,
      );
      client.once("connect", () => {
        clearTimeout(timer);
        resolve();
      });
    });
    await client.subscribeAsync({ [filter]: { qos: 1 }, [REPORT_TOPIC_FILTER]: { qos: 0 } });
  } catch (e) {
    client.end(true);
    throw new ControlError(`cannot connect to MQTT broker ${url}: ${(e as Error).message}`);
  }
  client.off("error", onError);
  client.on("error", (e) => log.warn("mqtt error", { error: e.message }));
  client.on("offline", () => log.warn("mqtt connection lost; reconnecting", { broker: url }));
  // Subscriptions are renewed on every reconnect (clean session).
  client.on("connect", (ack) => {
    if (ack.sessionPresent) return;
    client.subscribe({ [filter]: { qos: 1 }, [REPORT_TOPIC_FILTER]: { qos: 0 } }, (err) => {
      if (err) log.error("resubscribe failed", { error: err.message });
      else log.info("mqtt reconnected", { broker: url });
    });
  });
  return client;
}

/**
 * Starts the control service: loads the state, starts (or connects to) the broker, subscribes
 * `nodes/+/net/#` and serves the HTTP API. Throws StateFileError for an unusable state file and
 * ControlError when a port cannot be bound or the broker cannot be reached; nothing is left running
 * on failure.
 */
export async function startControl(opts: ControlOptions): Promise<ControlService> {
  const mqttHost = opts.mqttHost ?? "0.0.0.0";
  const mqttPortOpt = checkPort("MQTT port", opts.mqttPort ?? DEFAULT_MQTT_PORT);
  const httpHost = opts.httpHost ?? "127.0.0.1";
  const httpPortOpt = checkPort("HTTP port", opts.httpPort ?? DEFAULT_HTTP_PORT);
  const external = opts.broker !== undefined ? brokerUrlOf(opts.broker) : undefined;
  if (!isLoopback(httpHost) && !opts.httpTls) {
    throw new ControlError(
      `refusing to serve the HTTP API on ${httpHost} without TLS (its bearer token would cross the ` +
        `network in clear text): give --http-tls-cert and --http-tls-key, or keep --http-host 127.0.0.1`,
    );
  }
  const httpTls = opts.httpTls
    ? {
      cert: await readPem("HTTP TLS certificate", opts.httpTls.cert),
      key: await readPem("HTTP TLS key", opts.httpTls.key),
    }
    : undefined;
  let mqttTls: BrokerTls | undefined;
  if (opts.mqttTls && !external) {
    mqttTls = {
      cert: await readPem("MQTT TLS certificate", opts.mqttTls.cert),
      key: await readPem("MQTT TLS key", opts.mqttTls.key),
      ...(opts.mqttTls.clientCa ? { clientCa: await readPem("MQTT client CA", opts.mqttTls.clientCa) } : {}),
    };
  }
  const brokerCa = opts.brokerCa ? await readPem("broker CA", opts.brokerCa) : undefined;

  let store: ControlStore;
  let tls: EtcdTls | undefined;
  if (opts.etcd) {
    await Deno.mkdir(opts.stateDir, { recursive: true }).catch((e) => {
      throw new ControlError(`cannot create state directory ${opts.stateDir}: ${e.message}`);
    });
    const t = opts.etcd.tls;
    tls = t
      ? {
        ...(t.ca !== undefined ? { ca: await readPem("etcd CA", t.ca) } : {}),
        ...(t.cert !== undefined ? { cert: await readPem("etcd client certificate", t.cert) } : {}),
        ...(t.key !== undefined ? { key: await readPem("etcd client key", t.key) } : {}),
      }
      : undefined;
    store = await EtcdStore.open({
      ...opts.etcd,
      ...(tls ? { tls } : {}),
      avoidSubnet4: opts.avoidSubnet4,
    }).catch((e) => {
      if (e instanceof EtcdError) throw new ControlError(`cannot use etcd: ${e.message}`);
      throw e;
    });
  } else {
    store = await SqliteStore.open(opts.stateDir, {
      avoidSubnet4: opts.avoidSubnet4,
      ...(opts.stateSync ? { synchronous: opts.stateSync } : {}),
    });
  }
  const state = store.state;
  let creds: CredentialStore;
  let apiToken: { token: string; path: string; created: boolean };
  try {
    apiToken = await loadOrCreateApiToken(opts.stateDir);
    if (store instanceof EtcdStore) {
      // One token and one set of node credentials for every replica, kept in etcd; this host's
      // token file holds the cluster's token (so the CLI works here against any replica).
      creds = await CredentialStore.shared(store.credentialBackend(), opts.stateDir);
      const token = await store.sharedToken(apiToken.token);
      if (token !== apiToken.token) {
        apiToken = { token, path: await writeApiToken(opts.stateDir, token), created: false };
        log.info("HTTP API token of the cluster written", { path: apiToken.path });
      }
    } else {
      creds = await CredentialStore.open(opts.stateDir);
    }
  } catch (e) {
    await store.close();
    if (e instanceof EtcdError) throw new ControlError(`cannot use etcd: ${e.message}`);
    throw e;
  }
  // The cluster CA: in the state dir, or in etcd (shared by every replica) under a prefix of its own.
  const pki = await ClusterPki.open(
    opts.stateDir,
    opts.etcd
      ? {
        etcd: new EtcdClient(opts.etcd.endpoints, tls ? { tls } : {}),
        etcdPrefix: `${(opts.etcd.prefix ?? defaultPrefix(opts.etcd.cluster)).replace(/\/$/, "")}-pki/`,
      }
      : {},
  ).catch(async (e) => {
    await store.close();
    throw new ControlError(`cannot use the cluster CA: ${(e as Error).message}`);
  });
  if (apiToken.created) log.info("HTTP API token created", { path: apiToken.path });

  let broker: EmbeddedBroker | undefined;
  let client: mqtt.MqttClient | undefined;
  let server: Deno.HttpServer<Deno.NetAddr> | undefined;
  let revocationTimer: ReturnType<typeof setInterval> | undefined;
  let reflector: Reflector | undefined;
  let relay: RelayServer | undefined;
  let relaySet: RelaySet | undefined;
  const cleanup = async () => {
    clearInterval(revocationTimer);
    reflector?.stop();
    relaySet?.stop();
    relay?.stop();
    if (server) await server.shutdown().catch(() => {});
    if (client) await client.endAsync().catch(() => {});
    if (broker) await broker.stop().catch(() => {});
    await store.close();
  };
  try {
    let url: string;
    let link: BrokerLink;
    if (external) {
      url = external;
      link = {
        kind: "url",
        url,
        options: {
          ...(opts.brokerCredentials ?? {}),
          ...(brokerCa ? { ca: brokerCa } : {}),
        },
      };
    } else {
      broker = await startBroker({
        host: mqttHost,
        port: mqttPortOpt,
        auth: {
          allowAnonymous: opts.allowAnonymous === true,
          verify: (u, p) => creds.verify(u, p),
        },
        ...(mqttTls ? { tls: mqttTls } : {}),
      }).catch((e) => {
        throw new ControlError((e as Error).message);
      });
      url = `${mqttTls ? "mqtts" : "mqtt"}://${connectableHost(mqttHost)}:${broker.port}`;
      link = { kind: "internal", broker };
    }
    // Replicas sharing one external broker: each node message goes to one of them (MQTT shared
    // subscription); the replica that made a change publishes its notice.
    const shared = opts.etcd !== undefined && external !== undefined;
    const filter = shared
      ? `$share/netmanager-${opts.etcd!.cluster}/${NODE_TOPIC_FILTER}`
      : NODE_TOPIC_FILTER;
    client = await connectClient(link, opts.brokerConnectTimeoutMs ?? 10_000, filter);
    const mq = client;

    const publish = (topic: string, payload: unknown) => {
      mq.publish(topic, JSON.stringify(payload), { qos: 1 }, (err) => {
        if (err) log.warn("publish failed", { topic, error: err.message });
      });
    };
    // The CA-signed revocation list, retained: a node gets it on every subscribe. Published again
    // every 30 s in case a broker without persistence restarted (nodes ignore an unchanged list).
    // In etcd mode another replica may have changed it: its sequence is checked every 2 s.
    let published = -1;
    let ticks = 0;
    const publishRevocations = async (given?: Awaited<ReturnType<ClusterPki["list"]>>) => {
      const list = given ?? await pki.list();
      published = Math.max(published, list.sequence);
      mq.publish(REVOCATION_TOPIC, JSON.stringify(list), { qos: 1, retain: true }, (err) => {
        if (err) log.warn("publish failed", { topic: REVOCATION_TOPIC, error: err.message });
      });
    };
    await publishRevocations();
    revocationTimer = setInterval(async () => {
      try {
        ticks++;
        if (ticks % 15 === 0 || (opts.etcd && await pki.sequence() !== published)) await publishRevocations();
      } catch (e) {
        log.warn("revocation list not published", { error: (e as Error).message });
      }
    }, 2000);
    const certRequest = async (worker: string, payload: Uint8Array) => {
      let body: unknown;
      try {
        body = JSON.parse(new TextDecoder().decode(payload));
      } catch {
        body = undefined;
      }
      const r = CertRequestSchema.safeParse(body);
      const answer = r.success
        ? await pki.issue(worker, r.data.public_key)
        : { error: 'expected {"public_key": "<base64 X25519 key>"}' };
      if ("error" in answer) log.warn("tunnel certificate refused", { worker, reason: answer.error });
      publish(certResultTopic(worker), answer);
    };
    store.onUpdate = (u, own) => {
      if (!shared || own !== false) publish(updatesTopic(u.job), { type: u.type });
    };
    const observed = new ObservedEndpoints();
    if (opts.relay) {
      if (opts.reflectorPort === undefined) {
        throw new ControlError("the relay needs the reflector (--reflector-port)");
      }
      relay = new RelayServer({
        address: opts.relay.address,
        host: opts.reflectorHost ?? "0.0.0.0",
        observedIp: (w) => observed.get(w)?.ip,
        isNode: (w) => state.node(w) !== undefined,
        bytesPerSec: (opts.relay.mbitPerNode ?? 1000) * 125_000,
        onFreed: (a, b) => relaySet?.served("", { a, b, freed: true }),
      });
    }
    // Relays: ours (when --relay) and the nodes that offer themselves (RelayCandidate).
    const relays = new RelaySet({
      ...(relay ? { own: relay } : {}),
      observed: (w) => observed.get(w),
      isNode: (w) => state.node(w) !== undefined,
      send: (r, cmd) => publish(relayServeTopic(r), cmd),
      onMoved: (a, b, via) => {
        const pa = observed.get(a), pb = observed.get(b);
        if (!pa || !pb) return;
        log.info(via ? "relayed pair moved to another relay" : "relayed pair lost its relay", {
          nodes: `${a} ${b}`,
        });
        publish(relayNoticeTopic(a), {
          peer: endpointText(pb.ip, pb.port),
          via: via ? endpointText(via[0].ip, via[0].port) : "",
        });
        publish(relayNoticeTopic(b), {
          peer: endpointText(pa.ip, pa.port),
          via: via ? endpointText(via[1].ip, via[1].port) : "",
        });
        notifyJobsOn(a);
        notifyJobsOn(b);
      },
    });
    relaySet = relays;
    const core: ControlCore = {
      state,
      change: (fn, updates) => store.change(fn, updates),
      publish,
      tunnelObserved: (w) => observed.get(w),
      relayVia: (asker: string, target: string) => relays.viaFor(asker, target),
      ...(store instanceof EtcdStore
        ? { interest: (job: string, worker: string, on: boolean) => store.interest(job, worker, on) }
        : {}),
    };
    // State from before Closest ServiceIPs: every service gets its pair now (others unchanged);
    // interested nodes are told to fetch the new entries. Replicas racing here agree through etcd.
    const migrated = await store.change((s) => s.addMissingClosest(), (r) => r.updates);
    if (migrated.jobs.length) log.info("Closest ServiceIPs added", { jobs: migrated.jobs.length });
    if (migrated.exhausted) {
      log.warn("Closest ServiceIPs not added to every service: pool exhausted", { pool: migrated.exhausted });
    }
    // Jobs running on `w`: their interested nodes re-fetch (and get the endpoint meant for them).
    const notifyJobsOn = (w: string) => {
      for (const job of state.jobs()) {
        if (job.instance_list.some((i) => i.worker_id === w && isDeployed(i))) {
          publish(updatesTopic(job.job_name), { type: "DEPLOYMENT" });
        }
      }
    };
    // Which registered node dials from `ip:port` (its observed endpoint) or announced it.
    const nodeAt = (ip: string, port: number): string | undefined => {
      for (const n of state.nodes()) {
        const o = observed.get(n.worker_id);
        if (o && o.ip === ip && o.port === port) return n.worker_id;
      }
      return undefined;
    };
    // A node's punch towards `endpoint` failed (relay us) or works again (free the relay).
    // Whether `w`'s observed endpoint moves away from `from` within ROAM_WAIT_MS (after a re-check).
    const roamed = async (w: string, from: { ip: string; port: number }) => {
      for (const end = Date.now() + ROAM_WAIT_MS; Date.now() < end;) {
        const o = observed.get(w);
        if (o && (o.ip !== from.ip || o.port !== from.port)) return true;
        await new Promise((res) => setTimeout(res, 50));
      }
      return false;
    };
    const relayRequest = async (r: RelaySet, worker: string, payload: Uint8Array) => {
      let body: unknown;
      try {
        body = JSON.parse(new TextDecoder().decode(payload));
      } catch {
        body = undefined;
      }
      const req = parseRelayRequest(body);
      const self = observed.get(worker);
      if (!req || state.node(worker) === undefined || self === undefined) {
        log.warn("ignoring relay request", {
          worker,
          reason: req ? "not a registered node seen by the reflector" : "malformed",
        });
        return;
      }
      const other = nodeAt(req.endpoint.ip, req.endpoint.port);
      if (other === undefined || other === worker) return; // not a netmanager node seen by the reflector
      const peerOf = (w: string) => {
        const o = observed.get(w)!;
        return endpointText(o.ip, o.port);
      };
      if (req.direct) {
        if (!r.drop(worker, other)) return;
        log.info("relay freed: direct path works", { nodes: `${worker} ${other}` });
        publish(relayNoticeTopic(worker), { peer: peerOf(other), via: "" });
        publish(relayNoticeTopic(other), { peer: peerOf(worker), via: "" });
      } else {
        if (!r.viaFor(worker, other)) {
          // Roaming: `other` may have moved (its NAT got a new address or port) — it asks the
          // reflector again now instead of in up to 25 s; if it moved, the reflector's onChange makes
          // its peers re-fetch the new endpoint. A peer that fell silent is only checked (no relay);
          // a failed punch is relayed at once (waiting here would delay every relay decision).
          publish(reflectNowTopic(other), {});
          if (req.silent && await roamed(other, req.endpoint)) {
            log.info("peer moved: its new endpoint is followed", { worker: other, asker: worker });
          }
        }
        if (!r.enabled || req.silent) return;
        const { via, created } = await r.pair(worker, other);
        if (created) log.info("relaying: punch failed", { nodes: `${worker} ${other}` });
        publish(relayNoticeTopic(worker), { peer: peerOf(other), via: endpointText(via[0].ip, via[0].port) });
        publish(relayNoticeTopic(other), { peer: peerOf(worker), via: endpointText(via[1].ip, via[1].port) });
        if (!created) return;
        // Give both a moment to HELLO their relay port (locking it) before they re-fetch.
        await new Promise((res) => setTimeout(res, PUNCH_LEAD_MS));
      }
      notifyJobsOn(worker);
      notifyJobsOn(other);
    };
    const parseJson = (payload: Uint8Array): unknown => {
      try {
        return JSON.parse(new TextDecoder().decode(payload));
      } catch {
        return undefined;
      }
    };
    const reports = new ReportStore();
    // A bad report is logged once per cause per 10 s (a node cannot flood the log).
    const refusedReports = new RateLimitedLog((msg, fields) => log.warn(msg, fields));
    mq.on("message", (topic, payload) => {
      const reporter = workerOfReportTopic(topic);
      if (reporter !== undefined) {
        const r = reports.accept(reporter, payload, Date.now(), (w) => state.node(w) !== undefined);
        if (!r.ok) {
          refusedReports.note(r.reason, "node report dropped", {
            worker: reporter,
            reason: r.reason,
            problem: r.problem,
          });
        }
        return;
      }
      const cert = CERT_REQUEST.exec(topic);
      if (cert) {
        if (WORKER_ID.test(cert[1])) {
          void certRequest(cert[1], payload).catch((e) =>
            log.error("tunnel certificate failed", { worker: cert[1], error: (e as Error).message })
          );
        }
        return;
      }
      const offer = RELAY_OFFER_TOPIC.exec(topic);
      if (offer) {
        const o = parseRelayOffer(parseJson(payload));
        if (o) relays.offer(offer[1], o);
        else log.warn("ignoring malformed relay offer", { worker: offer[1] });
        return;
      }
      const served = RELAY_SERVED_TOPIC.exec(topic);
      if (served) {
        const r = parseRelayServed(parseJson(payload));
        if (r) relays.served(served[1], r);
        else log.warn("ignoring malformed relay answer", { worker: served[1] });
        return;
      }
      const rq = RELAY_REQUEST_TOPIC.exec(topic);
      if (rq) {
        if (relays.enabled || reflector) {
          void relayRequest(relays, rq[1], payload).catch((e) =>
            log.warn("relay request failed", { worker: rq[1], error: (e as Error).message })
          );
        }
        return;
      }
      const msg = parseNodeMessage(topic, payload);
      if (msg.kind === "subnet" && store instanceof EtcdStore) store.nodeSeen(msg.worker);
      void handleNodeMessage(core, msg);
    });

    if (opts.reflectorPort !== undefined) {
      try {
        reflector = await Reflector.start({
          port: checkPort("reflector port", opts.reflectorPort),
          host: opts.reflectorHost ?? "0.0.0.0",
          isNode: (w) => state.node(w) !== undefined,
          observed,
          // Peers must dial the new endpoint: interested nodes re-fetch the jobs running there; a
          // relayed node HELLOs its relay ports again at once (its side re-locks from the new address).
          onChange: (w) => {
            notifyJobsOn(w);
            relays.observedChanged();
            for (const o of relays.partnersOf(w)) {
              const via = relays.viaFor(w, o);
              const po = observed.get(o);
              if (via && po) {
                publish(relayNoticeTopic(w), {
                  peer: endpointText(po.ip, po.port),
                  via: endpointText(via.ip, via.port),
                });
              }
            }
          },
        });
      } catch (e) {
        const why = `cannot serve the reflector on UDP ${opts.reflectorPort}: ${(e as Error).message}`;
        if (!opts.reflectorOptional) throw new ControlError(why);
        log.warn(`${why}; running without it (nodes behind NAT cannot learn their endpoint here)`, {
          hint: "give --reflector-port PORT (or 0 to turn it off)",
        });
      }
    }
    const embedded = broker;
    if (store instanceof EtcdStore) store.onCredentialGone = (w) => embedded?.disconnect(w);
    const handler = createHttpHandler(core, {
      tunnelObserved: (w) => observed.get(w),
      token: apiToken.token,
      credentials: creds,
      onRevoke: (worker) => embedded?.disconnect(worker),
      onNodeRemoved: async (worker) => {
        relays.forget(worker); // no relaying for a removed node, not even until the next sweep
        await publishRevocations(await pki.revoke(worker));
      },
      onCredentialIssued: async (worker) => {
        const list = await pki.unrevoke(worker);
        if (list) await publishRevocations(list);
      },
      view: () => {
        reports.prune((w) => state.node(w) !== undefined);
        return clusterView(
          state,
          reports,
          embedded ? (w) => embedded.connection(w) : undefined,
          Date.now(),
          (w) => observed.get(w),
        );
      },
    });
    try {
      server = Deno.serve({
        hostname: httpHost,
        port: httpPortOpt,
        onListen: () => {},
        ...(httpTls ?? {}),
      }, handler);
    } catch (e) {
      throw new ControlError(`cannot serve HTTP on ${httpHost}:${httpPortOpt}: ${(e as Error).message}`);
    }
    const httpPort = server.addr.port;
    const mqttPort = broker ? broker.port : Number(new URL(url).port);
    const httpUrl = `${httpTls ? "https" : "http"}://${connectableHost(httpHost)}:${httpPort}`;
    log.info("control plane started", {
      broker: external ? external : `embedded ${mqttHost}:${mqttPort}`,
      http: `${httpHost}:${httpPort}`,
      http_tls: httpTls !== undefined,
      mqtt_auth: external ? "external broker" : opts.allowAnonymous ? "ANONYMOUS ALLOWED" : "required",
      node_credentials: creds.workers().length,
      state: store.location,
      jobs: state.jobs().length,
      nodes: state.nodes().length,
    });

    let stopping: Promise<void> | undefined;
    return {
      mqttPort,
      httpPort,
      brokerUrl: url,
      httpUrl,
      statePath: store.location,
      tokenPath: apiToken.path,
      credentialsPath: creds.path,
      state,
      reportsDropped: reports.refused,
      observed,
      reflectorPort: reflector?.port,
      relayTotals: () => relay?.totals(),
      relayNodes: () => relays.candidates(),
      health() {
        if (!mq.connected) return { ok: false, reason: `not connected to the MQTT broker ${url}` };
        if (store.lastError) return { ok: false, reason: `cannot save state: ${store.lastError}` };
        return { ok: true };
      },
      stop() {
        stopping ??= (async () => {
          clearInterval(revocationTimer);
          reflector?.stop();
          relays.stop();
          relay?.stop();
          await server!.shutdown().catch(() => {});
          await mq.endAsync().catch(() => {});
          if (broker) await broker.stop();
          await store.close();
          log.info("control plane stopped");
        })();
        return stopping;
      },
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
