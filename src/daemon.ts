/**
 * The composition root of a node: wires configuration, environment manager and API; owns start-up
 * (reconcile, node set-up) and shutdown order.
 *
 * @example
 * ```ts
 * import { loadNodeConfig } from "./config/mod.ts";
 * const cfg = await loadNodeConfig({ subnet: "10.18.0.64/26" }); // standalone node
 * const d = await startDaemon({ cfg, socketPath: "/etc/netmanager/netmanager.sock" });
 * await d.stopped; // resolves after SIGTERM/SIGINT handling
 * ```
 */
import { type ApiServer, startApi } from "./api/server.ts";
import type { NodeService, RegisterResult } from "./api/service.ts";
import { formatNodeSubnet, type NodeConfig, type NodeSubnet } from "./config/mod.ts";
import {
  EnvError,
  EnvironmentManager,
  type InstanceAddresses,
  type InstanceKind,
  type InstanceRecord,
  StateStore,
} from "./env/mod.ts";
import { compactHeap } from "./heap.ts";
import { logger, RateLimitedLog } from "./log.ts";
import type { NodeMetrics } from "./proxy/metrics.ts";
import { OnDemand } from "./metrics/on_demand.ts";
import { type Health, type MetricsServer, startMetricsServer } from "./metrics/http.ts";
import { Backoff } from "./control/backoff.ts";
import {
  endpointText,
  parsePortRange,
  parseRelayNotice,
  reflectNowTopic,
  relayNoticeTopic,
  relayRequestTopic,
} from "./path/relay_msg.ts";
import type { RelayAsks } from "./path/relay_watch.ts";
import { RelayHost } from "./path/relay_host.ts";
import { DataPlane, type Resolver } from "./proxy/dataplane.ts";
import type { KfastController } from "./kfast/controller.ts";
// The MQTT client is loaded on the first connect: a standalone or static-table node never needs it.
import type { NodeControl, TableSink } from "./control/client.ts";
import type { RouteContext } from "./control/route_check.ts";
import {
  canonicalIp,
  inPrefix4,
  inPrefix6,
  maskIPv6,
  parseIPv4,
  parseIPv6,
  tryParseIPv4,
  tryParseIPv6,
} from "./addr/mod.ts";
import { loadMqttCredential, parseNodeSubnet } from "./config/mod.ts";
import { TranslationTable } from "./table/table.ts";
import { detectPublicAddress } from "./sys/route.ts";
import { StateLock } from "./sys/lock.ts";
import { VERSION } from "./version.ts";
import { NodeDns } from "./dns/mod.ts";
import { buildNodeReport, REPORT_INTERVAL_MS } from "./control/report.ts";
import { certRequestTopic, certResultTopic, NodeSecurity } from "./secure/node_security.ts";
import { REVOCATION_TOPIC } from "./secure/revocation.ts";

const log = logger("daemon");

/** Re-check interval of an auto-detected public address (Oakestra: 2 minutes). */
export const PUBLIC_ADDRESS_RECHECK_MS = 120_000;
/** How often local instances are checked for a vanished namespace (one netlink link dump). */
const INSTANCE_CHECK_MS = 1000;

/** Options for {@link startDaemon}. */
export interface DaemonOptions {
  cfg: NodeConfig;
  socketPath: string;
  /** Install SIGTERM/SIGINT handlers (the CLI does; tests embedding the daemon may not). */
  handleSignals?: boolean;
  /** Static-table mode: the translation table, loaded from a file (see `loadStaticTable`), not from a cluster. */
  staticTable?: TranslationTable;
}

/** A running daemon. */
export interface Daemon {
  /** Resolves when the daemon has shut down. */
  stopped: Promise<void>;
  /** Shuts down: closes the API, keeps instances' networking, tears down an empty node. */
  stop(): Promise<void>;
}

/** The node: the API's view of it, backed by the environment manager. */
class Node implements NodeService {
  readonly cfg: NodeConfig;
  readonly env: EnvironmentManager;
  readonly startedAt = Date.now();
  workerId: string | undefined;
  publicAddress: string | undefined;
  dataPlane: DataPlane | undefined;
  /** The kernel fast path (issue 16; netcfg `KernelFastPath`), when it runs. */
  kfast: KfastController | undefined;
  /** The cluster connection (cluster mode). */
  control: NodeControl | undefined;
  /** This node relaying for others (netcfg `RelayCandidate`, src/path/relay_host.ts). */
  relayHost: RelayHost | undefined;
  /** The static table until the data plane takes it over. */
  #initialTable: TranslationTable | undefined;
  /** The Prometheus registry, loaded on the first scrape (or at start with a metrics address). */
  readonly metricsRegistry: OnDemand<NodeMetrics>;
  /** ServiceIPs the cluster does not know: warned once per 10 s (a count in between). */
  readonly #unknownIps = new RateLimitedLog((msg, fields) => log.warn(msg, fields));
  /** Service names (DNS on the bridge), once the data plane runs. */
  dns: NodeDns | undefined;
  /** Tunnel identity, certificate and trust (see secure/node_security.ts); set at start. */
  security: NodeSecurity | undefined;
  /** When the last certificate request went out (ms), for pacing. */
  #certAskedAt = 0;
  #registering: Promise<RegisterResult> | undefined;
  /** The last failed `/register` (shown by `status` until one succeeds). */
  #registerError: { at: number; error: string } | undefined;

  constructor(cfg: NodeConfig, env: EnvironmentManager, staticTable?: TranslationTable) {
    this.cfg = cfg;
    this.env = env;
    this.#initialTable = staticTable;
    this.workerId = env.registration.workerId;
    this.metricsRegistry = new OnDemand(async () => {
      const [{ NodeMetrics }, { registerDnsMetrics }] = await Promise.all([
        import("./proxy/metrics.ts"),
        import("./dns/metrics.ts"),
      ]);
      const m = new NodeMetrics({
        dataPlane: () => this.dataPlane?.metricsData(this.control?.rejections.counts),
        registered: () => this.workerId !== undefined,
        clusterConnected: () => this.control?.connected,
        instances: () => this.env.instances().length,
        kernelPath: () => this.kfast?.status().counters,
      });
      registerDnsMetrics(m.registry, () => this.dns);
      return m;
    });
  }

  /** Ready: registered (or standalone with its subnet set up) and the data plane running. */
  health(): Health {
    if (this.workerId === undefined) {
      return { ok: false, reason: "not registered (waiting for POST /register from the node engine)" };
    }
    if (!this.dataPlane) return { ok: false, reason: "data plane not running" };
    if (!this.dataPlane.stats()) return { ok: false, reason: "data plane starting" };
    return { ok: true };
  }

  get mode(): "standalone" | "cluster" {
    return this.cfg.standaloneSubnet ? "standalone" : "cluster";
  }

  register(clientId: string, clusterAddress: string): Promise<RegisterResult> {
    if (this.workerId !== undefined) {
      if (this.workerId === clientId) return Promise.resolve({ ok: true });
      return Promise.resolve({
        ok: false,
        status: 400,
        error: `already registered as worker ${this.workerId}; refusing ${clientId}`,
      });
    }
    this.#registering ??= this.#register(clientId, clusterAddress).then((r) => {
      this.#registerError = r.ok ? undefined : { at: Date.now(), error: r.error };
      if (!r.ok) {
        log.warn("registration failed; the node stays unregistered until the node engine retries /register", {
          workerId: clientId,
          cluster: clusterAddress || this.cfg.net.ClusterUrl,
          cause: r.error,
        });
      }
      return r;
    }, (e) => {
      this.#registerError = { at: Date.now(), error: e instanceof Error ? e.message : String(e) };
      log.error("registration failed; nothing was kept, a later /register starts over", {
        workerId: clientId,
        cause: e instanceof Error ? e.message : String(e),
      });
      throw e;
    }).finally(() => this.#registering = undefined);
    return this.#registering;
  }

  async #register(clientId: string, clusterAddress: string): Promise<RegisterResult> {
    let subnet = this.cfg.standaloneSubnet;
    const cluster = clusterAddress || this.cfg.net.ClusterUrl;
    if (!subnet) {
      // Cluster mode: connect to the cluster's broker and ask it for this node's subnet.
      if (cluster === "0.0.0.0") {
        return {
          ok: false,
          status: 400,
          error: "no cluster address: /register carried none and ClusterUrl is 0.0.0.0 " +
            "(or start the daemon with --subnet for standalone mode)",
        };
      }
      try {
        await this.connectControl(clientId, cluster);
        const got = await this.control!.requestSubnet();
        subnet = parseNodeSubnet(`${got.v4}/26,${got.v6}/120`);
      } catch (e) {
        await this.control?.close();
        this.control = undefined;
        return { ok: false, status: 503, error: e instanceof Error ? e.message : String(e) };
      }
    }
    try {
      if (!this.env.subnet) await this.env.setupNode(subnet);
      await this.startDataPlane(clientId);
    } catch (e) {
      // Not registered: a later /register starts over (no second broker connection left behind).
      await this.control?.close();
      this.control = undefined;
      throw e;
    }
    this.workerId = clientId;
    this.env.recordRegistration(clientId, clusterAddress || undefined);
    await this.startRelayHost(clientId);
    log.info(
      `STARTUP_CONFIG: Node=${this.publicAddress ?? "unknown"}:${this.cfg.net.NodePublicPort} | ` +
        `Cluster=${cluster}:${this.cfg.net.ClusterMqttPort}`,
    );
    log.info("registered", { workerId: clientId, mode: this.mode, subnet: formatNodeSubnet(subnet) });
    return { ok: true };
  }

  /** Connects to the cluster's MQTT broker (client id = worker id); throws ControlError. */
  async connectControl(workerId: string, host: string): Promise<void> {
    const net = this.cfg.net;
    const sink: TableSink = {
      replaceJob: (job, entries) => this.#applyTable({ op: "replaceJob", job, entries }),
      removeJob: (job) => this.#applyTable({ op: "removeJob", job }),
      hasJob: (job) => this.dataPlane?.table.hasJob(job) ?? false,
    };
    const { ControlError, NodeControl } = await import("./control/client.ts");
    const credentials = await loadMqttCredential(net).catch((e) => {
      throw new ControlError((e as Error).message);
    });
    if (credentials && credentials.username !== workerId) {
      log.warn("the MQTT credential is for another worker id: the broker will refuse it", {
        credential: credentials.username,
        workerId,
        source: credentials.source,
      });
    }
    const clientCert = net.MqttCert !== "" && net.MqttKey !== "";
    this.control = await NodeControl.connect({
      host,
      port: net.ClusterMqttPort,
      workerId,
      tls: clientCert || net.MqttCa !== "" || net.MqttTls
        ? {
          ...(clientCert ? { cert: net.MqttCert, key: net.MqttKey } : {}),
          ...(net.MqttCa ? { ca: net.MqttCa } : {}),
        }
        : undefined,
      ...(credentials
        ? { credentials: { username: credentials.username, password: credentials.password } }
        : {}),
      sink,
      isHosted: (job) => this.env.instances().some((r) => r.job === job),
      hostIp: () => this.publicAddress ?? "",
      hostPort: net.NodePublicPort,
      routeContext: () => this.routeContext(),
      onPunch: (ip, port) => this.dataPlane?.punch(ip, port),
      trustResults: Deno.env.get("NETMANAGER_TEST_TRUST_RESULTS") === "1",
      // Oakestra's 10 s idle expiry of interests; the environment may shorten it (tests).
      interestIdleMs: Number(Deno.env.get("NETMANAGER_INTEREST_IDLE_MS")) || undefined,
    });
    await this.#wireCertificates(workerId);
    await this.control.listen(relayNoticeTopic(workerId), (body) => {
      const n = parseRelayNotice(body);
      if (!n) return void log.warn("ignoring malformed relay notice", { topic: relayNoticeTopic(workerId) });
      const peer = endpointText(n.peer.ip, n.peer.port);
      const via = n.via ? endpointText(n.via.ip, n.via.port) : undefined;
      log.info(via ? "peer relayed: punching failed" : "relay freed: direct path works", {
        peer,
        ...(via ? { via } : {}),
      });
      this.dataPlane?.relay(peer, via);
    });
    // A peer finds us silent at our observed endpoint: our NAT may have moved (roaming).
    await this.control.listen(reflectNowTopic(workerId), () => this.dataPlane?.reflectNow());
  }

  /** Offers this node as a relay (netcfg `RelayCandidate`; needs an IPv4 public address). */
  async startRelayHost(workerId: string): Promise<void> {
    const control = this.control;
    if (!this.cfg.net.RelayCandidate || !control || this.relayHost) return;
    const address = this.publicAddress ?? "";
    if (!/^\d+\.\d+\.\d+\.\d+$/.test(address)) {
      return void log.warn("RelayCandidate needs an IPv4 public address: not offered", {
        publicAddress: address,
      });
    }
    const ports = parsePortRange(this.cfg.net.RelayPorts); // validated with the config
    const host = new RelayHost({
      worker: workerId,
      address,
      bytesPerSec: this.cfg.net.RelayMbit * 125_000,
      ...(ports ? { ports } : {}),
      publish: (topic, body) => control.connected && control.publishJson(topic, body),
    });
    this.relayHost = host;
    await control.listen(host.topic, (body) => void host.handle(body));
    log.info("offering this node as a relay", { address });
  }

  /** Withdraws the relay offer and frees its allocations. */
  async stopRelayHost(): Promise<void> {
    const h = this.relayHost;
    this.relayHost = undefined;
    await h?.stop();
  }

  /** Relay requests (src/path/relay_watch.ts) to the control plane. */
  #askRelay(asks: RelayAsks): void {
    const id = this.workerId;
    if (!this.control?.connected || id === undefined || !this.dataPlane?.observed) return;
    for (const endpoint of asks.request) {
      void this.control.publishJson(relayRequestTopic(id), { endpoint, direct: false });
    }
    for (const endpoint of asks.direct) {
      void this.control.publishJson(relayRequestTopic(id), { endpoint, direct: true });
    }
    for (const endpoint of asks.silent) {
      void this.control.publishJson(relayRequestTopic(id), { endpoint, direct: false, silent: true });
    }
  }

  /** Cluster mode: certificate answers and revocation lists from the control plane; asks for a certificate. */
  async #wireCertificates(workerId: string): Promise<void> {
    const sec = this.security;
    const control = this.control;
    if (!sec || sec.mode === "off" || !control) return;
    await control.listen(certResultTopic(workerId), (body) => void sec.acceptCertResult(body, workerId));
    await control.listen(REVOCATION_TOPIC, (body) => sec.acceptRevocations(body));
    this.checkCertificate(workerId);
  }

  /**
   * Asks the control plane for a certificate when none is held or a third of its validity is left:
   * at most every 5 s, every 60 s after a refusal.
   */
  checkCertificate(workerId = this.workerId): void {
    const sec = this.security;
    if (!sec || !this.control?.connected || workerId === undefined || !sec.needsCertificate()) return;
    const gap = sec.stats.certificatesRefused > 0 ? 60_000 : 5000;
    if (Date.now() - this.#certAskedAt < gap) return;
    this.#certAskedAt = Date.now();
    void this.control.publishJson(certRequestTopic(workerId), sec.certRequest());
  }

  /** What route validation needs to know about this node (see control/route_check.ts). */
  routeContext(): RouteContext {
    const t = this.cfg.tun;
    const subnet = this.env.subnet;
    const table = this.dataPlane?.table;
    const own = canonicalIp(this.publicAddress ?? "");
    return {
      // The TUN's own prefixes (/12 and /7) carry the overlay.
      overlay4: { addr: (parseIPv4(t.TunnelIP) & 0xfff00000) >>> 0, len: 12 },
      overlay6: { addr: maskIPv6(parseIPv6(t.TunNetIPv6), 7), len: 7 },
      service4: this.cfg.serviceRange4,
      service6: this.cfg.serviceRange6,
      ...(subnet ? { subnet4: subnet.v4, subnet6: subnet.v6 } : {}),
      // Behind NAT the table names this node by its observed endpoint (src/path/reflector.ts).
      selfIps: [...(own ? [own] : []), ...(this.dataPlane?.observed ? [this.dataPlane.observed.ip] : [])],
      ...(this.dataPlane?.observed ? { observedPort: this.dataPlane.observed.port } : {}),
      selfPort: this.cfg.net.NodePublicPort,
      isOwnInstance: (job, instance, nsip4) =>
        this.env.instances().some((r) =>
          r.job === job && r.instance === instance && parseIPv4(r.ipv4) === nsip4
        ),
      serviceOwner4: (a) => table?.serviceJobs4(a),
      serviceOwner6: (a) => table?.serviceJobs6(a),
    };
  }

  #applyTable(delta: Parameters<DataPlane["apply"]>[0]): void {
    if (!this.dataPlane) {
      log.warn("table update before the data plane runs: ignored", { op: delta.op });
      return;
    }
    try {
      this.dataPlane.apply(delta);
    } catch (e) {
      log.warn("table update refused", { op: delta.op, error: String(e) });
    }
  }

  /** Re-announces the instances this node hosts (after a restart in cluster mode). */
  reannounce(): void {
    for (const r of this.env.instances()) void this.control?.deployed(r.job, r.instance, r.ipv4, r.ipv6);
  }

  /** Starts the data plane once the node is set up (idempotent). */
  async startDataPlane(nodeId: string): Promise<void> {
    const subnet = this.env.subnet;
    if (this.dataPlane || !subnet) return;
    const table = this.#initialTable ?? new TranslationTable();
    // Misses go to the cluster (cluster mode); with a static table everything known is loaded.
    const resolver: Resolver = {
      resolve: async (ip, from) => {
        let found = false;
        if (this.control) {
          const t0 = performance.now();
          found = await this.control.resolveIp(ip);
          const seconds = (performance.now() - t0) / 1000;
          this.metricsRegistry.record((m) =>
            m.tableMissSeconds.observe({ result: found ? "found" : "not_found" }, seconds)
          );
        }
        if (!found && this.#isServiceIp(ip)) {
          this.#unknownIps.note(
            "unknown_service_ip",
            "traffic to an unknown ServiceIP: dropped (is the service deployed? in its table?)",
            { serviceIp: ip, ...(from !== undefined ? { fromInstance: from } : {}) },
          );
        }
        return found;
      },
    };
    this.kfast = await this.#startKfast();
    this.dataPlane = await DataPlane.start({
      tunName: this.cfg.tun.HostTunnelDeviceName,
      mtu: this.cfg.tun.MTUsize,
      busyPollUs: this.cfg.net.BusyPollMicros,
      ioBackend: this.cfg.net.IoBackend,
      workers: this.cfg.net.DataPlaneWorkers,
      rekeySeconds: this.cfg.net.TunnelRekeySeconds,
      ...(this.security ? { security: this.security.current() } : {}),
      port: this.cfg.tun.TunnelPort,
      table,
      resolver,
      configureTun: (name) => this.env.setupTun(name),
      onUsage: (jobs) => {
        for (const j of jobs) this.control?.touch(j);
      },
      onPeers: (peers) => this.kfast?.onPeers(peers),
      onNewFlows: () => this.kfast?.onNewFlows(),
      onTableChange: () => this.kfast?.onTableChange(),
      engine: {
        selfIp: this.publicAddress ?? "",
        selfPort: this.cfg.net.NodePublicPort,
        nodeId,
        fast: this.cfg.net.FastMode,
        jumbo: this.cfg.net.JumboMode,
        kernelFastPath: this.kfast === undefined ? false : this.kfast.mode === "tc" ? "tc" : true,
        service4: this.cfg.serviceRange4,
        service6: this.cfg.serviceRange6,
        subnet4: subnet.v4,
        subnet6: subnet.v6,
        ingressAnyInSubnet: Deno.env.get("NETMANAGER_TEST_INGRESS_ANY") === "1",
        helloRefreshMs: Number(Deno.env.get("NETMANAGER_TEST_HELLO_REFRESH_MS")) || undefined,
        probeAllPeers: this.cfg.net.ProbePeers,
        peerDownAfterMs: this.cfg.net.PeerDownAfterMs,
        ...this.#reflectorCfg(),
      },
    });
    this.dataPlane.onRelayAsk = (asks) => this.#askRelay(asks);
    this.kfast?.onTableChange(); // a static table is already loaded
    if (this.security) this.dataPlane.setSecurity(this.security.current());
    const crashLane = Deno.env.get("NETMANAGER_TEST_CRASH_WORKER");
    if (crashLane !== undefined) {
      // Tests: SIGUSR2 makes this data-plane worker fail as a crash would (it must come back alone).
      Deno.addSignalListener("SIGUSR2", () => this.dataPlane?.killWorker(Number(crashLane)));
    }
    try {
      this.dns = await NodeDns.start({
        cfg: this.cfg,
        subnet,
        table: () => this.dataPlane?.table,
        source: () => this.control,
      });
    } catch (e) {
      log.warn("service names unavailable", { error: String(e) });
    }
    this.#initialTable = undefined;
    // Start-up (the Workers' isolates, the static table) allocated in bursts: give back what that took.
    await compactHeap();
  }

  /** Starts the kernel fast path when configured (plain tunnels only); a failure only logs. */
  async #startKfast(): Promise<KfastController | undefined> {
    if (!this.cfg.net.KernelFastPath) return undefined;
    if (this.cfg.net.TunnelSecurity !== "off") {
      log.warn("KernelFastPath needs TunnelSecurity off (the kernel path is not encrypted): not started");
      return undefined;
    }
    const ip = this.publicAddress ?? "";
    if (!/^\d+\.\d+\.\d+\.\d+$/.test(ip)) {
      log.warn("KernelFastPath needs an IPv4 public address: not started", { publicAddress: ip });
      return undefined;
    }
    try {
      // Loaded only when configured (the daemon's idle memory).
      const { KfastController } = await import("./kfast/controller.ts");
      return await KfastController.start({
        localIp: ip,
        localPort: this.cfg.net.NodePublicPort,
        bridge: this.cfg.net.BridgeName,
        mtu: this.cfg.tun.MTUsize,
        table: () => this.dataPlane?.table,
        tunFlows: () => this.dataPlane?.flows(4096) ?? Promise.resolve([]),
        mode: this.cfg.net.KernelFastPath === "tc" ? "tc" : "vxlan",
        // Kernel-carried flows keep their jobs' interests alive, as the workers' usage does.
        onKernelUse: (ips) => {
          for (const ip of ips) {
            const a = tryParseIPv4(ip);
            if (a === undefined) continue;
            for (const j of this.dataPlane?.table.serviceJobs4(a) ?? []) this.control?.touch(j);
          }
        },
      });
    } catch (e) {
      log.warn("kernel fast path not started: flows stay on the TUN", { error: String(e) });
      return undefined;
    }
  }

  /** Namespace IPs of local instances last found gone (for the log: once per change). */
  #gone = new Set<string>();

  /**
   * Tells the data plane which local instances' namespaces are gone (their veth vanished with the
   * namespace), so new flows skip them; logs each once. Called every second.
   */
  checkInstances(): void {
    if (!this.dataPlane) return;
    let gone: InstanceRecord[];
    try {
      gone = this.env.goneInstances();
    } catch (e) {
      log.debug("instance check failed", { error: String(e) });
      return;
    }
    const now = new Set(gone.map((r) => r.ipv4));
    for (const r of gone) {
      if (!this.#gone.has(r.ipv4)) {
        log.warn("instance's namespace is gone: new flows skip it while another instance is usable", {
          job: r.job,
          instance: r.instance,
          ip: r.ipv4,
        });
      }
    }
    this.#gone = now;
    this.dataPlane.setDeadLocal([...now].map((ip) => parseIPv4(ip)));
  }

  #isServiceIp(ip: string): boolean {
    const v4 = tryParseIPv4(ip);
    if (v4 !== undefined) return inPrefix4(this.cfg.serviceRange4, v4);
    const v6 = tryParseIPv6(ip);
    return v6 !== undefined && inPrefix6(this.cfg.serviceRange6, v6);
  }

  #requireRegistered(): void {
    if (this.workerId === undefined) throw new EnvError(400, "not registered: call /register first");
  }

  async deploy(
    kind: InstanceKind,
    req: { pid: number; job: string; instance: number; portMappings: string },
  ): Promise<InstanceAddresses> {
    this.#requireRegistered();
    const t0 = performance.now();
    let addrs: InstanceAddresses;
    try {
      addrs = await this.env.setupInstance({
        ...req,
        kind,
        pid: kind === "container" ? req.pid : undefined,
      });
    } catch (e) {
      const seconds = (performance.now() - t0) / 1000;
      this.metricsRegistry.record((m) => m.deploySeconds.observe({ kind, result: "error" }, seconds));
      throw e;
    }
    const seconds = (performance.now() - t0) / 1000;
    this.metricsRegistry.record((m) => m.deploySeconds.observe({ kind, result: "ok" }, seconds));
    // service/deployed, then a refresh by name (how the node learns its own InstanceIP); the
    // NodeEngine need not wait for the cluster.
    void this.control?.deployed(req.job, req.instance, addrs.ipv4, addrs.ipv6);
    return addrs;
  }

  async undeploy(kind: InstanceKind, job: string, instance: number): Promise<void> {
    this.#requireRegistered();
    const removed = await this.env.cleanInstance(kind, job, instance);
    if (!removed) return;
    this.control?.undeployed(job, instance);
    // Its namespace address is gone: stop sending to it at once (peers learn from the cluster).
    const local = this.dataPlane?.table.job(job).find((e) =>
      e.instance === instance && e.nodeIp === this.publicAddress && e.nodePort === this.cfg.net.NodePublicPort
    );
    if (local) this.#applyTable({ op: "removeInstance", job, instance });
  }

  /** Sends the periodic report (version, endpoint, RTT and traffic per peer and per ServiceIP) to the control plane. */
  sendReport(): void {
    if (!this.control || !this.dataPlane || this.workerId === undefined) return;
    this.control.report(buildNodeReport(
      {
        version: VERSION,
        endpoint: `${this.publicAddress ?? ""}:${this.cfg.net.NodePublicPort}`,
        instances: this.env.instances().length,
        uptimeS: (Date.now() - this.startedAt) / 1000,
      },
      this.dataPlane.peers(),
      this.dataPlane.services(),
    ));
  }

  status(): Record<string, unknown> {
    const subnet: NodeSubnet | undefined = this.env.subnet;
    return {
      version: VERSION,
      mode: this.mode,
      registered: this.workerId !== undefined,
      workerId: this.workerId ?? null,
      lastRegisterError: this.#registerError
        ? {
          error: this.#registerError.error,
          secondsAgo: Math.round((Date.now() - this.#registerError.at) / 1000),
        }
        : null,
      subnet: subnet ? formatNodeSubnet(subnet) : null,
      publicAddress: this.publicAddress ?? null,
      publicPort: this.cfg.net.NodePublicPort,
      bridge: this.cfg.net.BridgeName,
      instances: this.env.instances().length,
      pendingRemovals: this.env.pendingRemovals,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      dataPlane: this.dataPlane ? (this.dataPlane.stats() ?? { starting: true }) : null,
      memory: memoryStatus(),
      cluster: this.control
        ? { connected: this.control.connected, interests: this.control.interests() }
        : null,
      peers: this.dataPlane?.peers() ?? [],
      security: this.security
        ? {
          ...this.security.status(),
          peers: this.dataPlane?.securePeers() ?? [],
          handshakeDrops: this.dataPlane?.secureDrops() ?? {},
          endpointChanges: this.dataPlane?.secureEndpointChanges() ?? 0,
          recentHandshakes: this.dataPlane?.secureRecent() ?? [],
        }
        : null,
      services: this.dataPlane?.services() ?? [],
      kernelFastPath: this.kfast?.status() ?? null,
      relayHost: this.relayHost?.totals() ?? null,
      // The tunnel endpoint the control plane's reflector saw (behind NAT: not the announced one).
      ...(this.dataPlane?.observed
        ? { observedEndpoint: `${this.dataPlane.observed.ip}:${this.dataPlane.observed.port}` }
        : {}),
    };
  }

  /** Where the data plane asks for its observed endpoint (src/path/reflect_client.ts), if anywhere. */
  #reflectorCfg(): {
    reflector?: { addr: string; port: number; intervalMs: number };
    natKeepaliveMs: number;
  } {
    const natKeepaliveMs = Number(this.cfg.net.NatKeepaliveSeconds) * 1000;
    const port = Number(this.cfg.net.ReflectorPort);
    if (!port) return { natKeepaliveMs };
    const cluster = (this.env.registration?.clusterAddress || this.cfg.net.ClusterUrl).split(",")[0];
    const addr = this.cfg.net.ReflectorAddress || cluster.replace(/:\d+$/, "");
    return addr !== "0.0.0.0" && tryParseIPv4(addr) !== undefined
      ? { reflector: { addr, port, intervalMs: natKeepaliveMs }, natKeepaliveMs }
      : { natKeepaliveMs };
  }

  table(): unknown[] {
    return this.dataPlane?.rows() ?? [];
  }

  async flows(): Promise<unknown[]> {
    const [tun, kernel] = await Promise.all([
      this.dataPlane?.flows() ?? Promise.resolve([]),
      this.kfast?.flows() ?? Promise.resolve([]),
    ]);
    return [...tun, ...kernel];
  }

  async metrics(): Promise<{ body: string; contentType: string }> {
    const m = await this.metricsRegistry.get();
    return { body: await m.text(), contentType: m.contentType };
  }

  secureRekey(peer?: string): Promise<unknown[]> {
    if (!this.dataPlane) throw new EnvError(409, "no data plane: node not set up");
    return this.dataPlane.secureRekey(peer);
  }

  dnsLookup(name: string, type: string): Promise<unknown> {
    if (!this.dns) throw new EnvError(409, "service names not running: node not set up");
    return this.dns.lookup(name, type);
  }

  instances(): unknown[] {
    return this.env.instances().map((r) => ({
      serviceName: r.job,
      instanceNumber: r.instance,
      kind: r.kind,
      pid: r.pid ?? null,
      netns: r.netns ?? null,
      nsAddress: r.ipv4,
      nsAddressv6: r.ipv6,
      veth: r.hostVeth,
      portMappings: r.ports,
      createdAt: r.createdAt,
    }));
  }
}

/** Process memory (bytes): resident set, and the main isolate's V8 heap (the Worker's is in `dataPlane.heap`). */
function memoryStatus(): Record<string, number> {
  const m = Deno.memoryUsage();
  return { rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external };
}

/**
 * Starts the node daemon; throws (before serving) on bad state or an unusable socket, and
 * `AlreadyRunningError` (sys/lock.ts) before touching anything when another daemon holds the state directory.
 */
export async function startDaemon(opts: DaemonOptions): Promise<Daemon> {
  // First of all: a second daemon on the same state would adopt the first one's instances.
  const lock = StateLock.acquire(opts.cfg.net.StateDir);
  try {
    const d = await startLocked(opts);
    return { stopped: d.stopped.finally(() => lock.release()), stop: d.stop };
  } catch (e) {
    lock.release();
    throw e;
  }
}

async function startLocked(opts: DaemonOptions): Promise<Daemon> {
  const { cfg, handleSignals } = opts;
  for (const n of cfg.notes) log.info(n);
  for (const w of cfg.warnings) log.warn(w);
  const env = new EnvironmentManager({ cfg, store: new StateStore(cfg.net.StateDir) });
  const node = new Node(cfg, env, opts.staticTable);
  // Before anything changes on the system: a broken trust setup (unreadable or foreign certificate)
  // stops the start with its reason.
  node.security = await NodeSecurity.load({
    mode: cfg.net.TunnelSecurity,
    stateDir: cfg.net.StateDir,
    certFile: cfg.net.TunnelCertFile,
    caFile: cfg.net.TunnelCaFile,
    onChange: (s) => node.dataPlane?.setSecurity(s),
  });

  const detect = async () => {
    if (cfg.net.NodePublicAddress !== "0.0.0.0") return cfg.net.NodePublicAddress;
    return await detectPublicAddress(cfg.net.DefaultInterface, [
      cfg.net.BridgeName,
      cfg.tun.HostTunnelDeviceName,
    ]);
  };
  node.publicAddress = await detect();
  if (!node.publicAddress) log.warn("no public address found (no default route, no global address)");

  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let stopped = false;
  // Reconcile what a previous run left: standalone nodes set up at once; a registered node with a
  // recorded subnet comes back with it so its instances keep working.
  const startSubnet = cfg.standaloneSubnet ?? (node.workerId ? env.recordedSubnet : undefined);
  if (startSubnet) await env.setupNode(startSubnet);
  if (startSubnet && node.workerId) {
    await node.startDataPlane(node.workerId);
    const cluster = env.registration.clusterAddress || cfg.net.ClusterUrl;
    if (!cfg.standaloneSubnet && cluster !== "0.0.0.0") {
      // Cluster mode after a restart: reconnect and re-announce what this node hosts. The broker
      // may be down: the node keeps forwarding with what it has and retries in the background.
      const backoff = new Backoff({ baseMs: 5000, maxMs: 120_000 });
      const connect = async (): Promise<void> => {
        try {
          await node.connectControl(node.workerId!, cluster);
          node.reannounce();
          await node.startRelayHost(node.workerId!);
          if (backoff.attempt > 0) log.info("cluster reachable again", { attempts: backoff.attempt });
        } catch (e) {
          const delay = backoff.next();
          // Exponential back-off with jitter: one line per attempt while the delay grows, then every 10th.
          if (backoff.attempt <= 6 || backoff.attempt % 10 === 0) {
            log.warn("cluster unreachable after restart; forwarding continues with the recorded state", {
              cause: e instanceof Error && e.name === "ControlError" ? e.message : String(e),
              attempt: backoff.attempt,
              nextRetryInMs: delay,
            });
          }
          if (!stopped) retryTimer = setTimeout(connect, delay);
        }
      };
      void connect();
    }
  }

  let api: ApiServer;
  /** Start-up failed after the node came up: stop everything it started (DNS, cluster link, data plane). */
  const abortStart = async () => {
    stopped = true;
    if (retryTimer !== undefined) clearTimeout(retryTimer);
    await node.dns?.close();
    await node.stopRelayHost();
    await node.control?.close();
    await node.dataPlane?.stop();
    await node.kfast?.stop();
    await env.shutdown();
  };
  try {
    api = await startApi({ path: opts.socketPath, node });
  } catch (e) {
    await abortStart();
    throw e;
  }

  let metricsServer: MetricsServer | undefined;
  if (cfg.net.MetricsAddress !== "") {
    try {
      metricsServer = await startMetricsServer({
        address: cfg.net.MetricsAddress,
        registry: (await node.metricsRegistry.get()).registry,
        health: () => node.health(),
      });
    } catch (e) {
      await api.close();
      await abortStart();
      throw e;
    }
  }

  let timer: ReturnType<typeof setInterval> | undefined;
  if (cfg.net.NodePublicAddress === "0.0.0.0") {
    timer = setInterval(async () => {
      const now = await detect();
      if (now && now !== node.publicAddress) {
        log.info("public address changed", { old: node.publicAddress, new: now });
        const old = node.publicAddress;
        node.publicAddress = now;
        node.dataPlane?.setSelf(now);
        if (old) void node.control?.addressChanged(old, now);
      }
    }, PUBLIC_ADDRESS_RECHECK_MS);
  }

  // Cluster mode: the periodic report for the control plane's web page (see control/report.ts).
  // (NETMANAGER_REPORT_INTERVAL_MS shortens it for tests; never below the control plane's 1 s gap.)
  const reportTimer = setInterval(
    () => node.sendReport(),
    Math.max(1000, Number(Deno.env.get("NETMANAGER_REPORT_INTERVAL_MS")) || REPORT_INTERVAL_MS),
  );

  // Tunnel certificate renewal (cluster mode): asked for when missing or a third of its validity is left.
  const certTimer = setInterval(
    () => node.checkCertificate(),
    Math.max(200, Number(Deno.env.get("NETMANAGER_CERT_CHECK_MS")) || 5000),
  );
  // Local instances whose namespace went away: new flows skip them (see Node.checkInstances).
  const instanceTimer = setInterval(() => node.checkInstances(), INSTANCE_CHECK_MS);

  const done = Promise.withResolvers<void>();
  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      log.info("shutting down");
      stopped = true;
      if (timer !== undefined) clearInterval(timer);
      clearInterval(reportTimer);
      clearInterval(certTimer);
      clearInterval(instanceTimer);
      if (retryTimer !== undefined) clearTimeout(retryTimer);
      await api.close();
      await metricsServer?.close();
      await node.dns?.close();
      await node.stopRelayHost();
      await node.control?.close();
      await node.dataPlane?.stop();
      await node.kfast?.stop();
      await env.shutdown();
      if (handleSignals) {
        Deno.removeSignalListener("SIGTERM", stop);
        Deno.removeSignalListener("SIGINT", stop);
      }
      done.resolve();
    })();
    return stopping;
  };
  if (handleSignals) {
    Deno.addSignalListener("SIGTERM", stop);
    Deno.addSignalListener("SIGINT", stop);
  }
  log.info("netmanager started", { version: VERSION, mode: node.mode, socket: opts.socketPath });
  // Start-up (a static table above all) allocated in bursts: give the young generation back now.
  await compactHeap();
  return { stopped: done.promise, stop };
}
