/**
 * The data plane as the main isolate sees it: opens the TUN (one queue per worker) and the tunnel
 * sockets (one per worker, SO_REUSEPORT) with the lane steering programs (lanes.ts), starts the
 * Workers, owns the translation table and forwards every change to all of them, answers their misses
 * through a {@link Resolver}, and keeps their merged counters for inspection.
 *
 * @example
 * ```ts
 * import { DataPlane, type Resolver } from "./dataplane.ts";
 * import type { EngineConfig } from "./engine.ts";
 * import type { TranslationTable } from "../table/table.ts";
 * import type { TableEntry } from "../table/entry.ts";
 * declare const engine: EngineConfig, table: TranslationTable, resolver: Resolver, entries: TableEntry[];
 * const dp = await DataPlane.start({
 *   tunName: "goProxyTun", mtu: 1450, port: 50103, workers: 2, engine, table, resolver,
 *   configureTun: () => {}, // addresses, routes, MTU, up
 * });
 * dp.apply({ op: "replaceJob", job: "app.ns.web.ns", entries });
 * await dp.stop();
 * ```
 */
import { openTun, type TunDevice } from "../../ffi/tun.ts";
import { openUdp, type UdpSocket } from "../../ffi/udp.ts";
import { EventFd } from "../../ffi/eventfd.ts";
import { libc } from "../../ffi/libc.ts";
import { attachReuseportCbpf, loadSocketFilter, setTunSteering } from "../../ffi/bpf.ts";
import { MAX_LANES, reuseportProgram, tunSteeringProgram } from "./lanes.ts";
import { SharedRotation } from "./balance.ts";
import { PeerHealthArea } from "./peer_health.ts";
import { mergeStats } from "./merge_stats.ts";
import { type NamedServiceTraffic, nameServiceTraffic } from "./service_counters.ts";
import { logger, RateLimitedLog } from "../log.ts";
import { formatIPv4, formatIPv6 } from "../addr/mod.ts";
import { instanceIp4Of, instanceIp6Of, kindToIpType, nodeKey, nodeKeyOf } from "../table/entry.ts";
import type { TableDelta, TranslationTable } from "../table/table.ts";
import type { EngineConfig } from "./engine.ts";
import type { FlowInfo } from "./flows.ts";
import type { FromWorker, StatsData, ToWorker } from "./messages.ts";
import type { DataPlaneMetrics } from "./metrics.ts";
import { type PeerView, PeerWatch } from "./peer_watch.ts";
import { type RelayAsks, relayStats, RelayWatch, showRelays } from "../path/relay_watch.ts";
import type { SecuritySettings } from "../secure/node_security.ts";
import {
  type HandshakeRecord,
  type RekeyResult,
  SecureDriver,
  type SecurePeerView,
} from "../secure/secure_driver.ts";

const log = logger("proxy");

/**
 * The Worker's module: the minified bundle of worker.ts when the package ships it (`worker.bundle.js`
 * and its chunks, scripts/worker_bundle.ts) — an isolate holding one small module (and one chunk)
 * instead of ~30 TypeScript modules takes ~4 MB less — else worker.ts itself. `NETMANAGER_WORKER_MODULE` names
 * another module (tests measure a fresh bundle with it).
 */
export function workerModule(): string {
  const env = Deno.env.get("NETMANAGER_WORKER_MODULE");
  if (env) return new URL(env, `file://${Deno.cwd()}/`).href;
  const bundle = new URL("./worker.bundle.js", import.meta.url);
  try {
    Deno.statSync(bundle);
    return bundle.href;
  } catch {
    return new URL("./worker.ts", import.meta.url).href;
  }
}

/** Drop reasons that mean someone sent what the node must not take: logged (rate-limited) as they grow. */
const REFUSALS = new Set([
  "to_bridge",
  "to_broadcast",
  "not_instance",
  "to_multicast",
  "not_local_destination",
  "stranger_limit",
  "unknown_peer",
  "jumbo_stray",
  "secure_required",
  "secure_no_session",
  "secure_auth",
  "secure_replay",
  "secure_wrong_source",
  "secure_plain_from_secure_peer",
  "secure_downgrade",
  "secure_refused_peer",
]);

/**
 * Answers a table miss: makes sure the table holds the ServiceIP (applying deltas through the data
 * plane) and resolves true, or resolves false when it is unknown. Must always settle (timeouts).
 * `from` names the local instance (`job#n`) whose packet missed, when known (for the warning).
 */
export interface Resolver {
  resolve(serviceIp: string, from?: string): Promise<boolean>;
}

/** Options for {@link DataPlane.start}. */
export interface DataPlaneOptions {
  tunName: string;
  /** Inner MTU: the TUN's MTU, the largest packet sent over the tunnel. */
  mtu: number;
  /** Busy-poll after traffic (µs; 0 = never), see the Worker. */
  busyPollUs?: number;
  /** The Workers' I/O backend (config `IoBackend`; default epoll). */
  ioBackend?: "epoll" | "uring";
  /** Packet workers, 1, 2, 4 or 8 (default 1): one TUN queue and one tunnel socket each (see `lanes.ts`). */
  workers?: number;
  port: number;
  engine: EngineConfig;
  table: TranslationTable;
  resolver: Resolver;
  /** Jobs that carried traffic in the last second (keeps control-plane interests alive). */
  onUsage?: (jobs: string[]) => void;
  /** Called after the TUN exists and before traffic flows: addresses, routes, MTU, up. */
  configureTun: (name: string) => void | Promise<void>;
  /** Secure sessions' rekey interval (s; netcfg `TunnelRekeySeconds`, default 120). */
  rekeySeconds?: number;
  /**
   * Tunnel security at start (as {@link DataPlane.setSecurity}): the Workers then load and warm their
   * handshakes before they report ready, so a peer's first HS_INIT waits in the socket and is answered
   * warm instead of being lost to a Worker without handshakes (issue 11: first handshake time).
   */
  security?: SecuritySettings;
  /** The workers' merged peer view, every second (the kernel fast path follows its capable peers). */
  onPeers?: (peers: StatsData["peers"]) => void;
  /** A worker saw new flows (at most every 100 ms per worker; the kernel fast path moves them soon). */
  onNewFlows?: () => void;
  /** The table changed (after every applied delta). */
  onTableChange?: () => void;
}

/** A row of `table show`. */
export interface TableRow {
  serviceName: string;
  instanceNumber: number;
  serviceIPs: Array<{ kind: string; ipv4?: string; ipv6?: string }>;
  instanceIP?: string;
  nsAddress: string;
  nsAddressv6?: string;
  node: string;
  policy: string;
}

/** One worker's lane: its TUN queue and tunnel socket (kept open across restarts), its Worker. */
interface Lane {
  readonly index: number;
  readonly tun: TunDevice;
  readonly udp: UdpSocket;
  readonly wake: EventFd;
  readonly posted: Int32Array<SharedArrayBuffer>;
  worker?: Worker;
  restarts: number[];
  stats?: StatsData;
  /** Resolved when this lane's Worker has stopped (or gave up restarting). */
  stopped: PromiseWithResolvers<void>;
}

/** The running data plane. */
export class DataPlane {
  readonly table: TranslationTable;
  /** The TUN (queue 0 of a multi-queue TUN with several workers). */
  readonly tun: TunDevice;
  /** The tunnel socket of worker 0. */
  readonly udp: UdpSocket;
  readonly #lanes: Lane[];
  #security: SecuritySettings | undefined;
  /** The BPF program steering the TUN's queues (-1 with one worker); closed on stop. */
  readonly #steerFd: number;
  /** Round-robin positions shared by the workers. */
  readonly #rotation = SharedRotation.create();
  /** Peer liveness and RTT, published by worker 0 (the only one that probes), read by the others. */
  readonly #health = PeerHealthArea.create();
  /** Local instances whose namespace is gone (namespace IPv4s), as last sent to the workers. */
  #deadLocal: number[] = [];
  readonly #opts: DataPlaneOptions;
  #stopping = false;
  readonly #resolver: Resolver;
  #stats: StatsData | undefined;
  readonly #peerWatch = new PeerWatch();
  /** Relaying (src/path/relay_watch.ts): when to ask the control plane, which peers go through a relay. */
  readonly relayWatch = new RelayWatch();
  /** Where relay requests go (set in cluster mode). */
  onRelayAsk: ((asks: RelayAsks) => void) | undefined = undefined;
  #relayPunchAt = 0;
  #flowReq = 0;
  readonly #flowWaiters = new Map<
    number,
    { parts: FlowInfo[][]; left: number; done: (f: FlowInfo[]) => void }
  >();
  readonly #resolving = new Set<string>();
  readonly #refusals = new RateLimitedLog((msg, fields) => log.warn(msg, fields));
  readonly #secure = new SecureDriver({
    broadcast: (m) => this.#broadcast(m),
    toLane0: (m) => this.#post(this.#lanes[0], m),
    toOthers: (m) => {
      for (const l of this.#lanes) if (l.index !== 0) this.#post(l, m);
    },
    knownPeers: () => {
      const self = nodeKey(this.#selfIp, this.#opts.engine.selfPort);
      return this.table.nodes().filter((k) => k !== self);
    },
  });
  #selfIp = "";
  private constructor(table: TranslationTable, lanes: Lane[], steerFd: number, opts: DataPlaneOptions) {
    this.table = table;
    // The table moved to new shared buffers (grew, cleared): every Worker reads from those now.
    table.onLayout = () => this.#broadcast({ type: "layout", layout: table.shareLayout() });
    this.#lanes = lanes;
    this.tun = lanes[0].tun;
    this.udp = lanes[0].udp;
    this.#steerFd = steerFd;
    this.#opts = opts;
    if (opts.rekeySeconds !== undefined) this.#secure.rekeyMs = opts.rekeySeconds * 1000;
    this.#resolver = opts.resolver;
    this.#selfIp = opts.engine.selfIp;
  }

  /** Number of packet workers (lanes). */
  get workers(): number {
    return this.#lanes.length;
  }

  /**
   * Opens the devices — with several workers a multi-queue TUN (one queue each, steered by lane) and
   * one tunnel socket each on the same port (SO_REUSEPORT, steered by lane) — configures the TUN and
   * starts the Workers.
   */
  static async start(opts: DataPlaneOptions): Promise<DataPlane> {
    const n = opts.workers ?? 1;
    if (!Number.isInteger(n) || n < 1 || n > MAX_LANES || (n & (n - 1)) !== 0) {
      throw new RangeError(`data-plane workers must be 1, 2, 4 or 8, got ${n}`);
    }
    const tuns: TunDevice[] = [];
    const udps: UdpSocket[] = [];
    const wakes: EventFd[] = [];
    let steerFd = -1;
    const closeAll = () => {
      for (const u of udps) u.close();
      for (const t of tuns) t.close();
      for (const w of wakes) w.close();
      if (steerFd >= 0) libc.close(steerFd);
    };
    try {
      for (let i = 0; i < n; i++) {
        tuns.push(openTun({
          name: i === 0 ? opts.tunName : tuns[0].name,
          vnetHdr: true,
          offloads: { csum: true, tso: true, uso: true },
          multiQueue: n > 1,
        }));
      }
      if (n > 1) {
        steerFd = loadSocketFilter(tunSteeringProgram());
        setTunSteering(tuns[0].fd, steerFd);
      }
      await opts.configureTun(tuns[0].name);
      for (let i = 0; i < n; i++) {
        udps.push(openUdp({
          port: i === 0 ? opts.port : udps[0].localPort,
          family: 4,
          rcvbuf: 8 << 20,
          sndbuf: 8 << 20,
          gso: true,
          gro: true,
          reusePort: n > 1,
          pmtuProbe: true, // DF on, kernel PMTU cache off: src/path/pmtu.ts measures each peer's path
        }));
        if (i === 0 && n > 1) attachReuseportCbpf(udps[0].fd, reuseportProgram(n));
        wakes.push(new EventFd());
      }
    } catch (e) {
      closeAll();
      throw e;
    }
    const lanes: Lane[] = tuns.map((tun, index) => ({
      index,
      tun,
      udp: udps[index],
      wake: wakes[index],
      posted: new Int32Array(new SharedArrayBuffer(4)),
      restarts: [],
      stopped: Promise.withResolvers<void>(),
    }));
    const dp = new DataPlane(opts.table, lanes, steerFd, opts);
    if (opts.security) dp.setSecurity(opts.security);
    try {
      await Promise.all(lanes.map((l) => dp.#launch(l)));
    } catch (e) {
      // A Worker that never came up: nothing of this data plane may stay open (the TUN would).
      dp.#stopping = true;
      for (const l of lanes) l.worker?.terminate();
      closeAll();
      throw e;
    }
    log.info("data plane started", {
      tun: tuns[0].name,
      port: udps[0].localPort,
      workers: n,
      offloads: tuns[0].offloadFlags,
      gso: udps[0].gso,
      gro: udps[0].gro,
    });
    return dp;
  }

  /**
   * Starts lane `l`'s Worker on its open devices with the current table. A Worker that dies later is
   * started again (at most 5 times a minute per lane) on the same TUN queue and socket: the other
   * lanes, the table and the routes are untouched; only its own flows are lost, and new packets
   * start new flows.
   */
  async #launch(l: Lane): Promise<void> {
    const opts = this.#opts;
    const worker = new Worker(workerModule(), { type: "module" });
    l.worker = worker;
    const ready = Promise.withResolvers<void>();
    let up = false;
    const died = (why: string) => {
      if (l.worker !== worker) return;
      log.error("data-plane worker failed", { worker: l.index, message: why });
      if (!up) {
        ready.reject(new Error(why));
        return;
      }
      worker.terminate();
      if (this.#stopping) {
        l.stopped.resolve();
        return;
      }
      const now = Date.now();
      l.restarts = l.restarts.filter((t) => now - t < 60_000);
      if (l.restarts.length >= 5) {
        log.error("data-plane worker keeps failing: not restarting it again", { worker: l.index });
        l.stopped.resolve();
        return;
      }
      l.restarts.push(now);
      setTimeout(() => {
        if (!this.#stopping) {
          this.#launch(l).catch((e) => log.error("restart failed", { worker: l.index, error: String(e) }));
        }
      }, 500);
    };
    worker.onmessage = (ev: MessageEvent<FromWorker>) => {
      const m = ev.data;
      switch (m.type) {
        case "ready":
          up = true;
          ready.resolve();
          break;
        case "miss":
          this.#onMiss(m.addr, m.from);
          break;
        case "stats":
          l.stats = m.stats;
          this.#onStats();
          break;
        case "newFlows":
          this.#opts.onNewFlows?.();
          break;
        case "observed":
          if (this.observed?.ip !== m.ip || this.observed?.port !== m.port) {
            log.info("tunnel endpoint observed by the control plane", {
              endpoint: `${m.ip}:${m.port}`,
              ...(this.observed ? { was: `${this.observed.ip}:${this.observed.port}` } : {}),
            });
          }
          this.observed = { ip: m.ip, port: m.port, at: Date.now() };
          this.#broadcast({ type: "observedSelf", ip: m.ip, port: m.port });
          break;
        case "flows": {
          const w = this.#flowWaiters.get(m.id);
          if (!w) break;
          w.parts.push(m.flows);
          if (--w.left === 0) {
            this.#flowWaiters.delete(m.id);
            w.done(w.parts.flat());
          }
          break;
        }
        case "stopped":
          l.stopped.resolve();
          break;
        case "secure-hs-done":
        case "secure-hs-refused":
        case "secure-hs-drops":
        case "secure-hs-ready":
        case "secure-want":
        case "secure-rekey":
        case "secure-moved":
          this.#secure.onWorker(m);
          break;
        case "io":
          if (m.reason !== undefined) {
            log.warn("io_uring unavailable: the data plane uses epoll", {
              worker: l.index,
              reason: m.reason,
            });
          } else log.info("data-plane I/O backend", { worker: l.index, backend: m.backend });
          break;
        case "error":
          if (m.fatal) died(m.message);
          else {log.warn("data-plane worker could not handle a message", {
              worker: l.index,
              message: m.message,
            });}
          break;
      }
    };
    worker.onerror = (e) => {
      e.preventDefault();
      died(e.message);
    };
    Atomics.store(l.posted, 0, 0); // the new Worker counts from zero
    const many = this.#lanes.length > 1;
    const secure = this.#secure.init(l.restarts.length > 0); // a restart: send-only keys, peers rekeyed
    this.#post(l, {
      type: "init",
      tun: l.tun.info(),
      udp: l.udp.info(),
      wakeFd: l.wake.fd,
      posted: l.posted.buffer,
      mtu: opts.mtu,
      busyPollUs: opts.busyPollUs ?? 0,
      ioBackend: opts.ioBackend ?? "epoll",
      engine: many
        ? { ...opts.engine, laneTag: l.index, rotation: this.#rotation, health: this.#health }
        : opts.engine,
      table: this.table.shareLayout(),
      ...(secure ? { secure } : {}),
    });
    if (this.#deadLocal.length > 0) this.#post(l, { type: "deadLocal", nsip4s: this.#deadLocal });
    await ready.promise;
  }

  /** Merges the lanes' latest counters and acts on them (refusal logs, peer changes, usage). */
  #onStats(): void {
    const parts = this.#lanes.map((l) => l.stats).filter((s): s is StatsData => s !== undefined);
    if (parts.length === 0) return;
    const merged = mergeStats(parts);
    this.#noteRefusals(this.#stats?.drops, merged.drops);
    this.#notePeers(merged.peers);
    this.#noteRelays(merged.peers);
    this.#opts.onPeers?.(merged.peers);
    this.#stats = { ...merged, peers: relayStats(merged.peers, this.relayWatch) };
    if (merged.usedJobs.length > 0) this.#opts.onUsage?.(merged.usedJobs);
    for (const l of this.#lanes) if (l.stats) l.stats = { ...l.stats, usedJobs: [] }; // reported once
  }

  /** Posts to every lane's Worker. */
  #broadcast(m: ToWorker): void {
    for (const l of this.#lanes) this.#post(l, m);
  }

  /** Posts to a lane's Worker; `transfer` hands buffers over instead of copying them (a table snapshot). */
  #post(l: Lane, m: ToWorker, transfer: Transferable[] = []): void {
    if (!l.worker) return;
    if (m.type !== "init") Atomics.add(l.posted, 0, 1);
    l.worker.postMessage(m, transfer);
    l.wake.signal();
  }

  /** Applies a table change here and in every Worker. Throws (changing nothing) on an invalid delta. */
  apply(delta: TableDelta): void {
    // Written once, in the shared buffers every Worker reads; they only drop flows and re-route.
    const { gone } = this.table.apply(delta);
    this.#broadcast({ type: "table", gone: [...gone] });
    this.#opts.onTableChange?.();
  }

  #onMiss(addr: string, from?: string): void {
    if (this.#resolving.has(addr)) return;
    this.#resolving.add(addr);
    const t0 = performance.now();
    this.#resolver.resolve(addr, from).then(
      (ok) => ok,
      (e) => {
        log.warn("resolution failed", { addr, error: String(e) });
        return false;
      },
    ).then((ok) => {
      log.debug("miss resolved", { addr, ok, ms: +(performance.now() - t0).toFixed(2) });
      this.#resolving.delete(addr);
      this.#broadcast({ type: "resolved", addr, ok }); // any worker may have parked packets for it
    });
  }

  /** Logs peers that stop answering or come back, and wire-mode changes. */
  #notePeers(peers: StatsData["peers"]): void {
    for (const e of this.#peerWatch.update(peers, Date.now())) {
      const who = { ...(e.node !== undefined ? { node: e.node } : {}), endpoint: e.endpoint };
      if (e.kind === "down") {
        log.warn("peer down: new flows skip its instances while another candidate is up", {
          ...who,
          cause: e.cause,
        });
      } else if (e.kind === "up") {
        log.info("peer up again: new flows may go to it", {
          ...who,
          downSeconds: Math.round(e.downForMs / 1000),
        });
      } else if (e.kind === "silent") {
        log.warn("peer stopped answering HELLOs: its traffic falls back to raw mode; still retrying", {
          ...who,
          ...(e.lastSeenAgoMs !== undefined
            ? { lastSeenSecondsAgo: Math.round(e.lastSeenAgoMs / 1000) }
            : {}),
        });
      } else if (e.kind === "back") {
        log.info("peer answering again", {
          ...who,
          silentSeconds: Math.round(e.silentForMs / 1000),
          mode: e.mode,
        });
      } else {
        log.info("wire mode changed", { ...who, from: e.from, to: e.to });
      }
    }
  }

  /** Punch failures ask for a relay; relayed peers keep their relay port and own endpoint HELLOed. */
  #noteRelays(peers: StatsData["peers"]): void {
    const now = Date.now();
    const asks = this.relayWatch.update(peers, now);
    if (asks.request.length > 0 || asks.direct.length > 0 || asks.silent.length > 0) this.onRelayAsk?.(asks);
    if (now - this.#relayPunchAt < 15_000) return;
    this.#relayPunchAt = now;
    for (const [peer, via] of this.relayWatch.relays()) {
      this.#broadcast({ type: "punch", key: via });
      this.#broadcast({ type: "punch", key: peer });
    }
  }

  /**
   * The control plane relays the peer at `peer` ("ip:port") through `via` (undefined: freed). The
   * relay port is HELLOed at once (opening our NAT mapping and locking the relay's side), the peer's
   * own endpoint too (so a punch that works later is noticed).
   */
  relay(peer: string, via: string | undefined): void {
    const old = this.relayWatch.viaOf(peer);
    this.relayWatch.setRelay(peer, via);
    if (old !== undefined && old !== via) this.#broadcast({ type: "punch", key: old, stop: true });
    if (via !== undefined) this.#broadcast({ type: "punch", key: via });
    this.#broadcast({ type: "punch", key: peer });
  }

  /** Asks the reflector for this node's observed endpoint now (roaming: a peer finds us silent). */
  reflectNow(): void {
    this.#broadcast({ type: "reflectNow" });
  }

  /** Peers with their wire mode, RTT, last-seen age and drops (for `status` / `peers`). */
  /** The tunnel's endpoint as the control plane's reflector last saw it (src/path/reflect_client.ts). */
  observed: { ip: string; port: number; at: number } | undefined = undefined;

  /** Hole punching: every worker HELLOs `ip:port` (another node's observed endpoint) for a while. */
  punch(ip: string, port: number): void {
    this.#broadcast({ type: "punch", key: ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}` });
  }

  peers(): PeerView[] {
    return showRelays(this.#peerWatch.view(Date.now()), this.relayWatch);
  }

  /** Logs refused tunnel traffic by reason, once per reason per 10 s (the counters are in the metrics). */
  #noteRefusals(before: Record<string, number> | undefined, now: Record<string, number>): void {
    for (const reason in now) {
      if (!REFUSALS.has(reason)) continue;
      const n = now[reason] - (before?.[reason] ?? 0);
      if (n > 0) {
        this.#refusals.note(
          reason,
          "tunnel datagrams refused",
          { reason, total: now[reason] },
          performance.now(),
          n,
        );
      }
    }
  }

  /**
   * Local instances whose namespace is gone (by namespace IPv4): the workers skip them for new flows
   * while another candidate is usable. Sent only when the set changes.
   */
  setDeadLocal(nsip4s: readonly number[]): void {
    const next = [...nsip4s].sort((a, b) => a - b);
    if (next.length === this.#deadLocal.length && next.every((v, i) => v === this.#deadLocal[i])) return;
    this.#deadLocal = next;
    this.#broadcast({ type: "deadLocal", nsip4s: next });
  }

  /**
   * Tunnel security settings (mode, own credential, trust snapshot); called at start and on every
   * credential or trust update. The handshakes run here (src/secure/secure_driver.ts); the workers
   * get the mode and every session's keys by message.
   */
  setSecurity(s: SecuritySettings): void {
    this.#security = s;
    this.#secure.set(s);
  }

  /** The last settings given to {@link setSecurity}. */
  get security(): SecuritySettings | undefined {
    return this.#security;
  }

  /** Per-peer secure-tunnel state (secure with certificate subject and expiry, or refused). */
  securePeers(): SecurePeerView[] {
    const drops = this.#stats?.securePeerDrops;
    const views = this.#secure.peers();
    if (!drops) return views;
    return views.map((v) => (drops[v.endpoint] ? { ...v, drops: drops[v.endpoint] } : v));
  }

  /** Times a peer's secure session followed it to another endpoint (all peers). */
  secureEndpointChanges(): number {
    return this.#secure.endpointChanges;
  }

  /** Rekeys the secure sessions with `peer` (or all) now; resolves with each handshake's time (see SecureDriver.rekey). */
  secureRekey(peer?: string): Promise<RekeyResult[]> {
    return this.#secure.rekey(peer);
  }

  /** The last handshakes completed, with each side's time (oldest first). */
  secureRecent(): HandshakeRecord[] {
    return this.#secure.recent();
  }

  /** Handshake drops by reason. */
  secureDrops(): Record<string, number> {
    return this.#secure.drops();
  }

  /** This node's public address changed (its own table entries now name the new one). */
  setSelf(ip: string): void {
    this.#selfIp = ip;
    this.#broadcast({ type: "self", ip });
  }

  /** The latest counters of all Workers, merged (about once a second). */
  stats(): StatsData | undefined {
    return this.#stats;
  }

  /** Packets and bytes per ServiceIP / InstanceIP, named from the table (for `status`, reports). */
  services(): NamedServiceTraffic[] {
    return nameServiceTraffic(this.#stats?.services ?? [], this.table);
  }

  /** The data plane's figures for the metrics (and the control plane's refused routes, by cause). */
  metricsData(routesRejected?: Readonly<Record<string, number>>): DataPlaneMetrics | undefined {
    const s = this.#stats;
    if (!s) return undefined;
    return {
      tunRx: { packets: s.tunRx, bytes: s.tunRxBytes },
      tunTx: { packets: s.tunTx, bytes: s.tunTxBytes },
      udpRx: { packets: s.udpRx, bytes: s.udpRxBytes },
      udpTx: { packets: s.udpTx, bytes: s.udpTxBytes },
      drops: { ...s.drops, ...this.#secure.drops() },
      securePeers: this.#secure.metrics(),
      ...(s.securePeerDrops ? { securePeerDrops: s.securePeerDrops } : {}),
      parkedPackets: s.parkedNow,
      flows: s.flows,
      tableEntries: this.table.size,
      peers: s.peers,
      services: this.services(),
      jumbo: { tx: s.jumboTx, rx: s.jumboRx },
      ...(s.choices ? { choices: s.choices } : {}),
      ...(routesRejected ? { routesRejected } : {}),
    };
  }

  /** Live flows of all Workers (each is asked; one that does not answer in 2 s is left out). */
  flows(limit = 1000): Promise<FlowInfo[]> {
    const id = ++this.#flowReq;
    const p = new Promise<FlowInfo[]>((resolve) => {
      const done = (f: FlowInfo[]) => resolve(f.slice(0, limit));
      const w = { parts: [] as FlowInfo[][], left: this.#lanes.length, done };
      this.#flowWaiters.set(id, w);
      setTimeout(() => {
        if (this.#flowWaiters.delete(id)) done(w.parts.flat());
      }, 2000);
    });
    this.#broadcast({ type: "flows", id, limit });
    return p;
  }

  /** Table rows for inspection. */
  rows(): TableRow[] {
    return [...this.table.entries()].map((e) => {
      const inst4 = instanceIp4Of(e);
      const inst6 = instanceIp6Of(e);
      return {
        serviceName: e.job,
        instanceNumber: e.instance,
        serviceIPs: e.serviceIps.map((s) => ({
          kind: kindToIpType(s.kind),
          ipv4: s.v4 !== undefined ? formatIPv4(s.v4) : undefined,
          ipv6: s.v6 ? formatIPv6(s.v6) : undefined,
        })),
        instanceIP: inst4 !== undefined ? formatIPv4(inst4) : inst6 ? formatIPv6(inst6) : undefined,
        nsAddress: formatIPv4(e.nsip4),
        nsAddressv6: e.nsip6 ? formatIPv6(e.nsip6) : undefined,
        node: nodeKeyOf(e),
        policy: e.serviceIps.find((s) => s.kind !== "Instance")?.kind ?? "Instance",
      };
    });
  }

  /**
   * Stops the Workers and closes every device they used — TUN queues, sockets, wake-up fds and the
   * steering program (the TUN and its routes disappear).
   */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#secure.stop();
    this.#broadcast({ type: "stop" });
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.all(this.#lanes.map((l) => l.stopped.promise)),
      new Promise((r) => timer = setTimeout(r, 2000)),
    ]);
    clearTimeout(timer);
    for (const l of this.#lanes) {
      l.worker?.terminate();
      l.udp.close();
      l.tun.close();
      l.wake.close();
    }
    if (this.#steerFd >= 0) libc.close(this.#steerFd);
  }

  /** Ends lane `index`'s Worker as if it had crashed (tests: it must come back without the others noticing). */
  killWorker(index: number): void {
    const w = this.#lanes[index]?.worker;
    if (!w) throw new RangeError(`no data-plane worker ${index}`);
    this.#post(this.#lanes[index], { type: "crash" });
  }
}
