/**
 * Messages between the main isolate (table owner, control plane) and the data-plane Worker.
 * Plain data only (structured clone).
 */
import type { TableDelta } from "../table/table.ts";
import type { SharedTableLayout } from "../table/shared_view.ts";
import type { TunInfo } from "../../ffi/tun.ts";
import type { UdpInfo } from "../../ffi/udp.ts";
import type { EngineConfig } from "./engine.ts";
import type { FlowInfo } from "./flows.ts";
import type { PeerStats } from "./peers.ts";
import type { ServiceTraffic } from "./service_counters.ts";
import type { SessionKeys } from "../secure/keys.ts";
import type { SecureMode, SecureUp } from "../secure/secure_layer.ts";
import type { HsDown, HsSetup, HsUp } from "../secure/hs_messages.ts";

/** The secure tunnel's state a (re)started Worker begins with. */
export interface SecureInit {
  mode: SecureMode;
  keys: SessionKeys[];
  blocked: string[];
  /** A restarted Worker: `keys` may seal but not open (its replay windows are lost; peers are rekeyed). */
  sendOnly?: boolean;
  /** Peers followed to another endpoint (peer key → endpoint key; see `secure-moved`). */
  moved?: [string, string][];
  /** The node's handshakes run in the worker (absent: none yet, no certificate). */
  hs?: HsSetup;
}

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
  /** Secure tunnel drops per peer (endpoint → reason → count): replayed, forged, plain from a secure peer. */
  securePeerDrops?: Record<string, Record<string, number>>;
  /** Packets and bytes per ServiceIP / InstanceIP that carried traffic (by address). */
  services?: ServiceTraffic[];
  /** Jobs whose instances carried traffic since the previous report. */
  usedJobs: string[];
  /** The Worker isolate's V8 heap (bytes): used, total (committed), external (typed arrays, …). */
  heap: { used: number; total: number; external: number };
  /** New flows per ServiceIP and chosen instance, cumulative: `"<service ip> <instance ns ip>"` → count. */
  choices?: Record<string, number>;
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
    /** How the Worker waits and moves packets (config `IoBackend`). */
    ioBackend?: "epoll" | "uring";
    engine: EngineConfig;
    /** The main isolate's table, shared (read in place, never copied). */
    table: SharedTableLayout;
    /** The secure tunnel (absent: off). */
    secure?: SecureInit;
  }
  /** The shared table changed: drop flows to these namespace IPv4s, rebuild the node routes. */
  | { type: "table"; gone: number[] }
  /** The shared table moved to new buffers (it grew or was cleared). */
  | { type: "layout"; layout: SharedTableLayout }
  /** The secure tunnel's mode changed. */
  | { type: "secure-mode"; mode: SecureMode }
  /** Sessions established: install their keys. */
  | { type: "secure-keys"; keys: SessionKeys[] }
  /** Remove these peers' keys (`forget`: the peer left, not a downgrade when it is raw later). */
  | { type: "secure-remove"; peers: string[]; forget: boolean }
  /** Peers refused (certificate refused or revoked): nothing plain with them either while `blocked`. */
  | { type: "secure-block"; peers: string[]; blocked: boolean }
  /**
   * A peer's secure session authenticated a datagram from another endpoint (roaming, NAT
   * rebinding; one worker saw it): send to it there from now on.
   */
  | { type: "secure-moved"; peer: string; endpoint: string }
  /** Send a handshake datagram (worker 0 sends the main isolate's). */
  | { type: "secure-send"; bytes: Uint8Array; family: 4 | 6; addr4: number; addr6?: Uint8Array; port: number }
  /** The node's handshakes (hs_host.ts). */
  | HsDown
  /** Tests (an engine owning its table in one isolate): apply a delta. */
  | { type: "delta"; delta: TableDelta }
  | { type: "resolved"; addr: string; ok: boolean }
  | { type: "self"; ip: string }
  /** The tunnel's observed public endpoint: table entries naming it are this node's too (behind NAT). */
  | { type: "observedSelf"; ip: string; port: number }
  /** Ask the reflector for the observed endpoint now (a peer finds us silent: our NAT may have moved). */
  | { type: "reflectNow" }
  /**
   * Hole punching: HELLO this endpoint ("ip:port") to open and keep open our NAT mapping towards it;
   * `stop`: no longer (a freed relay endpoint).
   */
  | { type: "punch"; key: string; stop?: boolean }
  | { type: "flows"; id: number; limit: number }
  /** Local instances whose namespace is gone (namespace IPv4s as uint32): skipped for new flows. */
  | { type: "deadLocal"; nsip4s: number[] }
  /** Tests: end the packet loop with an error, as a crash would (the main isolate restarts the Worker). */
  | { type: "crash" }
  | { type: "stop" };

/** Worker → main. */
export type FromWorker =
  | { type: "ready" }
  | { type: "miss"; addr: string; from?: string }
  | { type: "stats"; stats: StatsData }
  /** The worker's flow table gained flows since its last peer tick (at most every 100 ms). */
  | { type: "newFlows" }
  | { type: "flows"; id: number; flows: FlowInfo[] }
  | { type: "stopped" }
  | SecureUp
  | HsUp
  /** The tunnel's public endpoint as the control plane's reflector saw it (src/path/reflect_client.ts). */
  | { type: "observed"; ip: string; port: number }
  /** The I/O backend the Worker runs (`reason`: why io_uring was not used). */
  | { type: "io"; backend: "epoll" | "uring"; reason?: string }
  /** `fatal`: the packet loop has stopped (the main isolate starts a new Worker). */
  | { type: "error"; message: string; fatal: boolean };
