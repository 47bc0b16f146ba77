/**
 * Messages between the main isolate (table owner, control plane) and the data-plane Worker.
 * Plain data only (structured clone).
 */
import type { TableDelta, TableSnapshot } from "../table/table.ts";
import type { TunInfo } from "../../ffi/tun.ts";
import type { UdpInfo } from "../../ffi/udp.ts";
import type { EngineConfig } from "./engine.ts";
import type { FlowInfo } from "./flows.ts";
import type { PeerStats } from "./peers.ts";

/** Counters as sent by the Worker. */
export interface StatsData {
  tunRx: number;
  tunRxBytes: number;
  tunTx: number;
  tunTxBytes: number;
  udpRx: number;
  udpRxBytes: number;
  udpTx: number;
  udpTxBytes: number;
  localHandoff: number;
  /** JUMBO messages sent / reassembled and written to the TUN. */
  jumboTx: number;
  jumboRx: number;
  /** Of jumboTx, those read straight into the JUMBO layout (scatter reads). */
  jumboTxInPlace: number;
  parked: number;
  released: number;
  parkedNow: number;
  flows: number;
  /** Drop counts by reason name (only non-zero ones). */
  drops: Record<string, number>;
  /** Peer nodes: in-band state, RTT, counters. */
  peers: PeerStats[];
  /** Jobs whose instances carried traffic since the previous report. */
  usedJobs: string[];
  /** The Worker isolate's V8 heap (bytes): used, total (committed), external (typed arrays, …). */
  heap: { used: number; total: number; external: number };
  /** In a merged report of several workers: each worker's packets from the TUN / tunnel and flows. */
  workers?: Array<{ tunRx: number; udpRx: number; flows: number }>;
}

/** Main → Worker. */
export type ToWorker =
  | {
    type: "init";
    tun: TunInfo;
    udp: UdpInfo;
    wakeFd: number;
    /** Int32 counter of messages posted after init (SharedArrayBuffer). */
    posted: SharedArrayBuffer;
    /** Inner MTU (largest packet on the wire). */
    mtu: number;
    /** Busy-poll this long after traffic before sleeping in poll (0: never). */
    busyPollUs: number;
    engine: EngineConfig;
    table: TableSnapshot;
  }
  | { type: "delta"; delta: TableDelta }
  | { type: "resolved"; addr: string; ok: boolean }
  | { type: "self"; ip: string }
  /** The tunnel's observed public endpoint: table entries naming it are this node's too (behind NAT). */
  | { type: "observedSelf"; ip: string; port: number }
  /** Hole punching: HELLO this endpoint ("ip:port") to open and keep open our NAT mapping towards it. */
  | { type: "punch"; key: string }
  | { type: "flows"; id: number; limit: number }
  /** Tests: end the packet loop with an error, as a crash would (the main isolate restarts the Worker). */
  | { type: "crash" }
  | { type: "stop" };

/** Worker → main. */
export type FromWorker =
  | { type: "ready" }
  | { type: "miss"; addr: string; from?: string }
  | { type: "stats"; stats: StatsData }
  | { type: "flows"; id: number; flows: FlowInfo[] }
  | { type: "stopped" }
  /** The tunnel's public endpoint as the control plane's reflector saw it (src/path/reflect_client.ts). */
  | { type: "observed"; ip: string; port: number }
  /** `fatal`: the packet loop has stopped (the main isolate starts a new Worker). */
  | { type: "error"; message: string; fatal: boolean };
