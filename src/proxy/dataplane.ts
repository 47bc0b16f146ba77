/**
 * The data plane as the main isolate sees it: opens the TUN and the tunnel socket, starts the
 * Worker, owns the translation table and forwards every change to the Worker, answers the
 * Worker's misses through a {@link Resolver}, and keeps the latest counters for inspection.
 *
 * @example
 * ```ts
 * const dp = await DataPlane.start({ tunName: "goProxyTun", port: 50103, engine, table, resolver });
 * dp.apply({ op: "replaceJob", job, entries });
 * await dp.stop();
 * ```
 */
import { openTun, type TunDevice } from "../../ffi/tun.ts";
import { openUdp, type UdpSocket } from "../../ffi/udp.ts";
import { EventFd } from "../../ffi/eventfd.ts";
import { logger, RateLimitedLog } from "../log.ts";
import { formatIPv4, formatIPv6 } from "../addr/mod.ts";
import { instanceIp4Of, instanceIp6Of, kindToIpType, nodeKeyOf } from "../table/entry.ts";
import type { TableDelta, TranslationTable } from "../table/table.ts";
import type { EngineConfig } from "./engine.ts";
import type { FlowInfo } from "./flows.ts";
import type { FromWorker, StatsData, ToWorker } from "./messages.ts";
import type { DataPlaneMetrics } from "./metrics.ts";
import { type PeerView, PeerWatch } from "./peer_watch.ts";

const log = logger("proxy");

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
  port: number;
  engine: EngineConfig;
  table: TranslationTable;
  resolver: Resolver;
  /** Jobs that carried traffic in the last second (keeps control-plane interests alive). */
  onUsage?: (jobs: string[]) => void;
  /** Called after the TUN exists and before traffic flows: addresses, routes, MTU, up. */
  configureTun: (name: string) => void | Promise<void>;
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

/** The running data plane. */
export class DataPlane {
  readonly table: TranslationTable;
  readonly tun: TunDevice;
  readonly udp: UdpSocket;
  #worker!: Worker;
  readonly #opts: DataPlaneOptions;
  #restarts: number[] = [];
  #stopping = false;
  readonly #wake = new EventFd();
  readonly #posted = new Int32Array(new SharedArrayBuffer(4));
  readonly #resolver: Resolver;
  #stats: StatsData | undefined;
  readonly #peerWatch = new PeerWatch();
  #flowReq = 0;
  readonly #flowWaiters = new Map<number, (f: FlowInfo[]) => void>();
  readonly #stopped = Promise.withResolvers<void>();
  readonly #resolving = new Set<string>();
  readonly #refusals = new RateLimitedLog((msg, fields) => log.warn(msg, fields));

  private constructor(table: TranslationTable, tun: TunDevice, udp: UdpSocket, opts: DataPlaneOptions) {
    this.table = table;
    this.tun = tun;
    this.udp = udp;
    this.#opts = opts;
    this.#resolver = opts.resolver;
  }

  /** Opens the devices, configures the TUN and starts the Worker. */
  static async start(opts: DataPlaneOptions): Promise<DataPlane> {
    const tun = openTun({
      name: opts.tunName,
      vnetHdr: true,
      offloads: { csum: true, tso: true, uso: true },
    });
    let udp: UdpSocket | undefined;
    try {
      await opts.configureTun(tun.name);
      udp = openUdp({ port: opts.port, family: 4, rcvbuf: 8 << 20, sndbuf: 8 << 20, gso: true, gro: true });
    } catch (e) {
      tun.close();
      udp?.close();
      throw e;
    }
    const dp = new DataPlane(opts.table, tun, udp, opts);
    try {
      await dp.#launch();
    } catch (e) {
      // A Worker that never came up: nothing of this data plane may stay open (the TUN would).
      dp.#stopping = true;
      dp.#worker?.terminate();
      udp.close();
      tun.close();
      dp.#wake.close();
      throw e;
    }
    log.info("data plane started", {
      tun: tun.name,
      port: udp.localPort,
      offloads: tun.offloadFlags,
      gso: udp.gso,
      gro: udp.gro,
    });
    return dp;
  }

  /**
   * Starts a Worker on the open devices with the current table. A Worker that dies later is
   * started again (at most 5 times a minute): the devices, the table and the routes survive;
   * only its flows are lost, and new packets start new flows.
   */
  async #launch(): Promise<void> {
    const opts = this.#opts;
    const worker = new Worker(new URL("./worker.ts", import.meta.url).href, { type: "module" });
    this.#worker = worker;
    const ready = Promise.withResolvers<void>();
    let up = false;
    const died = (why: string) => {
      if (this.#worker !== worker) return;
      log.error("data-plane worker failed", { message: why });
      if (!up) {
        ready.reject(new Error(why));
        return;
      }
      worker.terminate();
      if (this.#stopping) {
        this.#stopped.resolve();
        return;
      }
      const now = Date.now();
      this.#restarts = this.#restarts.filter((t) => now - t < 60_000);
      if (this.#restarts.length >= 5) {
        log.error("data-plane worker keeps failing: not restarting it again");
        this.#stopped.resolve();
        return;
      }
      this.#restarts.push(now);
      setTimeout(() => {
        if (!this.#stopping) this.#launch().catch((e) => log.error("restart failed", { error: String(e) }));
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
          this.#noteRefusals(this.#stats?.drops, m.stats.drops);
          this.#notePeers(m.stats.peers);
          this.#stats = m.stats;
          if (m.stats.usedJobs.length > 0) opts.onUsage?.(m.stats.usedJobs);
          break;
        case "flows":
          this.#flowWaiters.get(m.id)?.(m.flows);
          this.#flowWaiters.delete(m.id);
          break;
        case "stopped":
          this.#stopped.resolve();
          break;
        case "error":
          if (m.fatal) died(m.message);
          else log.warn("data-plane worker could not handle a message", { message: m.message });
          break;
      }
    };
    worker.onerror = (e) => {
      e.preventDefault();
      died(e.message);
    };
    Atomics.store(this.#posted, 0, 0); // the new Worker counts from zero
    const table = this.table.snapshot();
    this.#post({
      type: "init",
      tun: this.tun.info(),
      udp: this.udp.info(),
      wakeFd: this.#wake.fd,
      posted: this.#posted.buffer as SharedArrayBuffer,
      mtu: opts.mtu,
      busyPollUs: opts.busyPollUs ?? 0,
      engine: opts.engine,
      table,
    }, [table.rows.buffer, table.sips.buffer, table.v6.buffer]);
    await ready.promise;
  }

  /** Posts to the Worker; `transfer` hands buffers over instead of copying them (a table snapshot). */
  #post(m: ToWorker, transfer: Transferable[] = []): void {
    if (m.type !== "init") Atomics.add(this.#posted, 0, 1);
    this.#worker.postMessage(m, transfer);
    this.#wake.signal();
  }

  /** Applies a table change here and in the Worker. Throws (changing nothing) on an invalid delta. */
  apply(delta: TableDelta): void {
    this.table.apply(delta);
    this.#post({ type: "delta", delta });
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
      this.#post({ type: "resolved", addr, ok });
    });
  }

  /** Logs peers that stop answering or come back, and wire-mode changes. */
  #notePeers(peers: StatsData["peers"]): void {
    for (const e of this.#peerWatch.update(peers, Date.now())) {
      const who = { ...(e.node !== undefined ? { node: e.node } : {}), endpoint: e.endpoint };
      if (e.kind === "silent") {
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

  /** Peers with their wire mode, RTT, last-seen age and drops (for `status` / `peers`). */
  peers(): PeerView[] {
    return this.#peerWatch.view(Date.now());
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

  /** This node's public address changed (its own table entries now name the new one). */
  setSelf(ip: string): void {
    this.#post({ type: "self", ip });
  }

  /** The latest counters from the Worker (about once a second). */
  stats(): StatsData | undefined {
    return this.#stats;
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
      drops: s.drops,
      parkedPackets: s.parkedNow,
      flows: s.flows,
      tableEntries: this.table.size,
      peers: s.peers,
      jumbo: { tx: s.jumboTx, rx: s.jumboRx },
      ...(routesRejected ? { routesRejected } : {}),
    };
  }

  /** Live flows (asks the Worker). */
  flows(limit = 1000): Promise<FlowInfo[]> {
    const id = ++this.#flowReq;
    const p = new Promise<FlowInfo[]>((resolve) => {
      this.#flowWaiters.set(id, resolve);
      setTimeout(() => {
        if (this.#flowWaiters.delete(id)) resolve([]);
      }, 2000);
    });
    this.#post({ type: "flows", id, limit });
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

  /** Stops the Worker and closes the devices (the TUN and its routes disappear). */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#post({ type: "stop" });
    await Promise.race([this.#stopped.promise, new Promise((r) => setTimeout(r, 2000))]);
    this.#worker.terminate();
    this.udp.close();
    this.tun.close();
    this.#wake.close();
  }
}
