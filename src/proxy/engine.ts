/**
 * The packet-path logic of the ProxyTUN (reference §5.3–§5.6), pure: bytes in, bytes rewritten in
 * place, a verdict out. The packet loop (`loop.ts`) moves packets between the two seams and calls
 * {@link Engine.egress} for packets read from the TUN and {@link Engine.receive} / {@link
 * Engine.deliver} for datagrams read from the tunnel.
 *
 * Egress (an instance sent a packet to a ServiceIP; the kernel routed it into the TUN):
 * - the sender must be a local instance known to the table (its namespace IP); its Instance IP
 *   becomes the new source;
 * - an existing flow (full 5-tuple) keeps its instance; a new flow asks the balancer (round robin,
 *   random, closest, instance) among the ServiceIP's candidates; the chosen namespace IP becomes the
 *   new destination;
 * - the packet goes to the chosen instance's node over UDP, or — same node — straight back into the
 *   TUN after the reply restore below;
 * - a ServiceIP missing from the table never blocks: the packet is parked (bounded per
 *   destination and in total), a miss is reported, and {@link Engine.resolved} releases or drops it.
 * Ingress (a peer node sent us a packet): the source must be a known peer node, the destination an
 * instance of this node; when it is a reply of a flow this node originated, the source becomes the
 * ServiceIP the instance dialled.
 *
 * Results go into a caller-owned, reused {@link PacketResult} (no per-packet objects).
 *
 * @example
 * ```ts
 * import { Engine, PacketResult, Verdict } from "./engine.ts";
 * import { TranslationTable } from "../table/table.ts";
 * import { parsePrefix4, parsePrefix6 } from "../addr/mod.ts";
 * const e = new Engine({
 *   selfIp: "192.0.2.1",
 *   selfPort: 50103,
 *   service4: parsePrefix4("10.30.0.0/16"),
 *   service6: parsePrefix6("fdff::/16"),
 *   subnet4: parsePrefix4("10.18.0.64/26"),
 *   subnet6: parsePrefix6("fc00::100/120"),
 * }, new TranslationTable());
 * const res = new PacketResult();
 * const buf = new Uint8Array(1500); // a packet read from the TUN
 * if (e.egress(buf, 0, 60, performance.now(), false, 0, res) === Verdict.TO_PEER) {
 *   console.log(res.route?.key); // the node to send it to
 * }
 * ```
 */
import { PROBE_FLAG_PMTU } from "../path/pmtu.ts";
import { ReflectClient } from "../path/reflect_client.ts";
import { MSG_REFLECT_REPLY } from "../path/reflect.ts";
import { inPrefix4, inPrefix6, type Prefix4, type Prefix6 } from "../addr/mod.ts";
import type { TableDelta, TranslationTable } from "../table/table.ts";
import type { TableReader } from "../table/shared_view.ts";
import { Balancer, seededRandom, SharedRotation } from "./balance.ts";
import { FlowTable } from "./flows.ts";
import { partialFieldOffset, rawPartialStart4 } from "./raw_partial.ts";
import {
  ipv6Equal,
  ipv6Key,
  PacketInfo,
  PARSE_RESULT_COUNT,
  PARSE_RESULT_NAMES,
  parsePacket,
  ParseResult,
  rewriteDst4,
  rewriteDst6,
  rewriteSrc4,
  rewriteSrc6,
} from "./packet.ts";
import { formatIPv4, formatIPv6, parseIPv4, tryParseIPv4, tryParseIPv6 } from "../addr/mod.ts";
import { type Endpoint, type Peer, type PeerHealthState, PeerTable } from "./peers.ts";
import { PeerHealthArea } from "./peer_health.ts";
import { ServiceCounters, SVC_RX, SVC_TX } from "./service_counters.ts";
import {
  CAP_FAST,
  CAP_JUMBO,
  CAP_KFAST,
  CAP_KTC,
  CAP_LANES,
  CAP_PROBE,
  classify,
  decodeFast,
  decodeHello,
  decodeProbe,
  encodeHello,
  encodeHelloAck,
  encodeProbe,
  FAST_F_NEEDS_CSUM,
  FastHeader,
  HelloMessage,
  isValidNodeId,
  MSG_HELLO,
  ProbeMessage,
  probeToReplyInPlace,
  WireKind,
} from "./wire.ts";

/** What to do with a packet after processing. */
export const Verdict = {
  DROP: 0,
  /** Write it into the TUN (the kernel delivers it to the local instance). */
  TO_TUN: 1,
  /** Send it over UDP to {@link PacketResult.route}. */
  TO_PEER: 2,
  /** Kept by the engine until the destination is resolved. */
  PARKED: 3,
  /** A JUMBO chunk from the known peer {@link PacketResult.peer}, at off/len, to be reassembled. */
  JUMBO: 4,
} as const;
/** A verdict value. */
export type Verdict = typeof Verdict[keyof typeof Verdict];

/** Drop reasons beyond the packet parser's (which come first, by ParseResult value). */
export const Drop = {
  NOT_SERVICE_IP: PARSE_RESULT_COUNT + 0,
  UNKNOWN_SENDER: PARSE_RESULT_COUNT + 1,
  NO_INSTANCE_IP: PARSE_RESULT_COUNT + 2,
  NO_NODE_ROUTE: PARSE_RESULT_COUNT + 3,
  UNKNOWN_PEER: PARSE_RESULT_COUNT + 4,
  NOT_LOCAL_DST: PARSE_RESULT_COUNT + 5,
  PARK_FULL: PARSE_RESULT_COUNT + 6,
  UNRESOLVED: PARSE_RESULT_COUNT + 7,
  NO_CANDIDATE: PARSE_RESULT_COUNT + 8,
  NOT_OURS: PARSE_RESULT_COUNT + 9,
  SEND_ERROR: PARSE_RESULT_COUNT + 10,
  TUN_WRITE_ERROR: PARSE_RESULT_COUNT + 11,
  /** Inside this node's subnet but no instance: the bridge, the subnet broadcast, a free address. */
  TO_BRIDGE: PARSE_RESULT_COUNT + 12,
  TO_BROADCAST: PARSE_RESULT_COUNT + 13,
  NOT_INSTANCE: PARSE_RESULT_COUNT + 14,
  TO_MULTICAST: PARSE_RESULT_COUNT + 15,
  /** A stranger's datagram beyond the caps on parked stranger state (per source, keys, rate). */
  STRANGER_LIMIT: PARSE_RESULT_COUNT + 16,
} as const;

/** Names of all drop reasons, indexed by reason code (parser reasons, then the engine's). */
export const DROP_NAMES: readonly string[] = [
  ...PARSE_RESULT_NAMES.map((n) => n.toLowerCase()),
  "not_service_ip",
  "unknown_sender",
  "no_instance_ip",
  "no_node_route",
  "unknown_peer",
  "not_local_destination",
  "park_full",
  "unresolved",
  "no_candidate",
  "not_ours",
  "send_error",
  "tun_write_error",
  "to_bridge",
  "to_broadcast",
  "not_instance",
  "to_multicast",
  "stranger_limit",
];

/** Where a node is reached. */
export interface NodeRoute {
  key: string;
  family: 4 | 6;
  addr4: number;
  addr6: Uint8Array | undefined;
  port: number;
  /** This node itself: deliver through the TUN, never over UDP. */
  local: boolean;
  /** In-band state of the peer (undefined for the local node). */
  peer: Peer | undefined;
}

/** A control datagram to send (HELLO, HELLO_ACK, PROBE, PROBE_REPLY). */
export interface ControlOut {
  family: 4 | 6;
  addr4: number;
  addr6: Uint8Array | undefined;
  port: number;
  bytes: Uint8Array;
}

/** Engine configuration (plain data, postMessage-able). */
export interface EngineConfig {
  /** This node's advertised underlay address and port (to recognise its own entries). */
  selfIp: string;
  selfPort: number;
  /** This node's id (worker id), announced in HELLOs. */
  nodeId?: string;
  /** Announce and use FAST mode towards peers that announce it too. */
  fast?: boolean;
  /** With `fast`: announce and use JUMBO messages for TCP super-packets (default true). */
  jumbo?: boolean;
  /** Announce the kernel fast path (CAP_KFAST, or CAP_KTC for "tc"): the main isolate runs it (src/kfast/). */
  kernelFastPath?: boolean | "tc";
  /** ServiceIP ranges. */
  service4: Prefix4;
  service6: Prefix6;
  /** This node's instance subnet (ingress destinations must be inside). */
  subnet4: Prefix4;
  subnet6: Prefix6;
  /**
   * Deliver tunnel packets to any address of this node's subnet (the behaviour before ingress was
   * limited to instances: the bridge and the broadcast address were reachable). Tests only.
   */
  ingressAnyInSubnet?: boolean;
  /** Flow idle timeout (ms). */
  flowIdleMs?: number;
  /** Parked packets per destination / in total. */
  parkPerKey?: number;
  parkTotal?: number;
  /** Bytes parked in total, packets and stranger datagrams together (4 MB). */
  parkBytes?: number;
  /**
   * Stranger state (datagrams from underlay sources that are no known peer, parked while their inner
   * source is resolved): distinct inner sources at once (256), per underlay source (16), datagrams
   * per inner source (8), new inner sources per second (100, also the burst).
   */
  strangerKeys?: number;
  strangerKeysPerSource?: number;
  strangerPerKey?: number;
  strangerRate?: number;
  /** Seed of the random policy. */
  seed?: number;
  /** HELLO refresh interval towards answering peers (30 000 ms; tests shorten it). */
  helloRefreshMs?: number;
  /** HELLO refresh towards punched peers, and towards all while this node is behind NAT (25 000 ms). */
  natKeepaliveMs?: number;
  /** Measure RTT to every peer that can answer PROBEs, not only while the closest policy asks (false). */
  probeAllPeers?: boolean;
  /** With several data-plane workers: this worker's index, echoed by control replies (see `lanes.ts`). */
  laneTag?: number;
  /** With several data-plane workers: the round-robin positions they share ({@link SharedRotation}). */
  rotation?: SharedArrayBuffer;
  /**
   * With several data-plane workers: peer liveness and RTT ({@link PeerHealthArea}); the worker with
   * lane tag 0 probes and publishes there, the others read.
   */
  health?: SharedArrayBuffer;
  /** A probed peer that answers nothing for this long is down: new flows skip it (3000 ms; 0: never). */
  peerDownAfterMs?: number;
  /** PROBE interval per peer (1000 ms). */
  probeIntervalMs?: number;
  /**
   * PROBE interval towards nodes hosting candidates of a Closest ServiceIP (250 ms: with RFC 6298
   * smoothing a changed path moves the choice within ~2 s).
   */
  closestProbeIntervalMs?: number;
  /**
   * Endpoint discovery (src/path/reflect_client.ts): the control plane's reflector, IPv4 and port.
   * Only the worker of lane 0 asks (replies of unknown types are steered to lane 0).
   */
  reflector?: { addr: string; port: number; intervalMs?: number };
}

/** HELLOs and PROBEs of nodes that are no peer yet answered per second (and burst). */
export const STRANGER_CONTROL_RATE = 500;

/** Distinct (ServiceIP, instance) pairs counted in {@link Engine.choices}; beyond, `other`. */
export const MAX_CHOICE_SERIES = 4096;

/** Packet and byte counters. */
export class Counters {
  tunRx = 0;
  tunRxBytes = 0;
  tunTx = 0;
  tunTxBytes = 0;
  udpRx = 0;
  udpRxBytes = 0;
  udpTx = 0;
  udpTxBytes = 0;
  localHandoff = 0;
  parked = 0;
  released = 0;
  readonly drops = new Float64Array(DROP_NAMES.length);
}

/** Something that can make a packet contiguous before the engine copies it (a scatter read). */
export interface Gatherable {
  gather(): void;
}

/**
 * What the engine decided about one packet, filled by {@link Engine.egress} / {@link Engine.receive}
 * into a caller-owned object that is reused for every packet.
 */
export class PacketResult {
  /** The verdict (also the methods' return value). */
  verdict: Verdict = Verdict.DROP;
  /** TO_PEER: where the packet goes. */
  route: NodeRoute | undefined = undefined;
  /**
   * Egress: the parse of the packet as rewritten (offsets, protocol, ports), for the bind to
   * segment it without parsing again. Owned by the engine; valid until its next call.
   */
  info: PacketInfo | undefined = undefined;
  /** Ingress TO_TUN / JUMBO: where the inner packet is (FAST datagrams carry a header before it). */
  off = 0;
  len = 0;
  /** Ingress TO_TUN: its L4 checksum is partial: csum_start and csum_offset, else -1 and 0. */
  csumStart = -1;
  csumOffset = 0;
  /** Ingress: the sending peer (JUMBO: the message's sender, for reassembly). */
  peer: Peer | undefined = undefined;
  /**
   * Set by the caller before egress when the packet is not contiguous yet (a scatter read): the
   * engine gathers it before it keeps a copy (parking). Only headers are read otherwise.
   */
  gather: Gatherable | undefined = undefined;
}

/** A datagram parked until its sender is known (see {@link Engine.resolvedStrangers}). */
export interface ParkedDatagram {
  bytes: Uint8Array;
  family: 4 | 6;
  src4: number;
  src6: Uint8Array | undefined;
  srcPort: number;
}

interface Stranger {
  since: number;
  /** Its underlay source key (see Engine.#strangerSources). */
  source: number;
  items: ParkedDatagram[];
}

/** Keys of IPv6 underlay sources start here (IPv4 keys are < 2^32). */
const V6_SOURCE_BASE = 2 ** 52;

interface Parked {
  family: 4 | 6;
  packets: Uint8Array[];
  since: number;
}

const ZERO6 = new Uint8Array(16);

/** The per-node packet logic. */
export class Engine {
  readonly cfg: EngineConfig;
  /** The owner's table (tests, one isolate) or a Worker's view of the shared one. */
  readonly table: TableReader;
  readonly flows: FlowTable;
  /** Balances over table rows (see {@link TranslationTable.groupRows}). */
  readonly balancer: Balancer<number>;
  readonly counters: Counters = new Counters();
  /** Packets and bytes per ServiceIP / InstanceIP (see service_counters.ts). */
  readonly services: ServiceCounters;
  /** The result filled when a caller passes none (tests, one-off calls). */
  readonly result: PacketResult = new PacketResult();
  /** ServiceIPs (text) that missed and must be resolved by the control plane; drained by the caller. */
  readonly misses: string[] = [];
  /** The local instance (`job#n`) whose packet caused a miss in {@link misses}, for the warning. */
  readonly missSources: Map<string, string> = new Map();
  /** Endpoint discovery, when configured; {@link observedChanged} tells the loop to report it. */
  readonly reflect: ReflectClient | undefined;
  observedChanged = false;
  /** Peers: in-band state (capabilities, RTT for the closest policy), known-sender check. */
  readonly peers: PeerTable;
  /** Control datagrams to send; drained by the caller. */
  readonly control: ControlOut[] = [];
  readonly #info = new PacketInfo();
  readonly #routes = new Map<string, NodeRoute>();
  /** This worker probes the peers (the only one, or lane 0); others read {@link #health}. */
  readonly #prober: boolean;
  readonly #health: PeerHealthArea | undefined;
  /** Namespace IPv4s of local instances whose namespace is gone (skipped for new flows). */
  #dead4 = new Set<number>();
  /**
   * New flows per ServiceIP and chosen instance: `"<service ip> <instance ns ip>"` → count
   * (cumulative, at most {@link MAX_CHOICE_SERIES} keys, then `"other other"`).
   */
  readonly choices: Map<string, number> = new Map();
  /** Node keys hosting candidates of Closest ServiceIPs: their RTT is kept measured. */
  #closestNodes: string[] = [];
  /** The result object of the call in progress. */
  #res: PacketResult = this.result;
  readonly #fast = new FastHeader();
  /** Bytes before the packet that belong to it (a virtio header): parked with it. */
  #prefix = 0;
  readonly #hello = new HelloMessage();
  readonly #probe = new ProbeMessage();
  readonly #parked = new Map<number | string, Parked>();
  readonly #strangers = new Map<string, Stranger>();
  /** Stranger keys per underlay source (IPv4 address, or V6_SOURCE_BASE + 52-bit IPv6 hash). */
  readonly #strangerSources = new Map<number, number>();
  readonly #strangerKeys: number;
  readonly #strangerKeysPerSource: number;
  readonly #strangerPerKey: number;
  readonly #strangerRate: number;
  #strangerTokens: number;
  #strangerTokensAt = 0;
  /** Token bucket of answers to strangers' HELLOs and PROBEs ({@link STRANGER_CONTROL_RATE} per second). */
  #strangerCtlTokens = STRANGER_CONTROL_RATE;
  #strangerCtlAt = 0;
  #parkedTotal = 0;
  #parkedBytes = 0;
  readonly #parkBytes: number;
  readonly #idleMs: number;
  readonly #parkPerKey: number;
  readonly #parkTotal: number;
  readonly #scratch6 = new Uint8Array(16);
  /** Namespace IPs of this node's instances (table entries on the local route): ingress destinations. */
  #local4 = new Set<number>();
  #local6 = new Map<number, Uint8Array[]>();
  /** A new flow's candidate rows, and its sender's / chosen instance's IPv6 addresses. */
  readonly #cands: number[] = [];
  readonly #sender6 = new Uint8Array(16);
  readonly #chosen6 = new Uint8Array(16);
  readonly #reply6 = new Uint8Array(16);

  constructor(cfg: EngineConfig, table: TableReader) {
    this.cfg = cfg;
    this.table = table;
    this.services = new ServiceCounters(table);
    this.flows = new FlowTable({ maxFlows: 65536 });
    this.#prober = cfg.laneTag === undefined || cfg.laneTag === 0;
    this.#health = cfg.health ? new PeerHealthArea(cfg.health) : undefined;
    const rf = cfg.reflector;
    const a4 = rf ? tryParseIPv4(rf.addr) : undefined;
    this.reflect = rf && a4 !== undefined && (cfg.laneTag ?? 0) === 0 && isValidNodeId(cfg.nodeId ?? "")
      ? new ReflectClient({ addr4: a4, port: rf.port, nodeId: cfg.nodeId ?? "", intervalMs: rf.intervalMs })
      : undefined;
    this.peers = new PeerTable({
      localCaps: CAP_PROBE | (cfg.kernelFastPath === "tc" ? CAP_KTC : cfg.kernelFastPath ? CAP_KFAST : 0) |
        (cfg.fast ? CAP_FAST | (cfg.jumbo === false ? 0 : CAP_JUMBO | CAP_LANES) : 0),
      ...(cfg.helloRefreshMs ? { helloRefreshMs: cfg.helloRefreshMs } : {}),
      ...(cfg.natKeepaliveMs ? { natKeepaliveMs: cfg.natKeepaliveMs } : {}),
      probeAlways: cfg.probeAllPeers === true,
      ...(cfg.laneTag !== undefined ? { laneTag: cfg.laneTag, jumboGaps: false } : {}),
      probe: this.#prober || this.#health === undefined,
      downAfterMs: cfg.peerDownAfterMs ?? 3000,
      probeIntervalMs: cfg.probeIntervalMs ?? 1000,
      leasedProbeIntervalMs: cfg.closestProbeIntervalMs ?? 250,
      // A down peer is probed at least every 2 s, so it is seen up again quickly.
      probeMaxIntervalMs: 2000,
    });
    if (rf && a4 !== undefined) this.peers.setNotPeer(a4, rf.port);
    const health = this.#health;
    const ownRtt = !this.#prober && health !== undefined
      ? (node: string) => health.rttMs(node)
      : (node: string) => this.peers.rttOfNode(node);
    this.balancer = new Balancer<number>({
      random: seededRandom(cfg.seed ?? (Date.now() & 0x7fffffff)),
      // The local node is the closest of all; others by measured RTT.
      rttOf: (node) => this.#routes.get(node)?.local ? 0 : ownRtt(node),
      usable: (row) => this.#usable(row),
      loadOf: (row) => this.flows.activeFlows(this.table.rowNsip4(row)),
      nsip4Of: (row) => this.table.rowNsip4(row),
      nodeOf: (row) => this.table.rowNode(row),
      ...(cfg.rotation ? { shared: new SharedRotation(cfg.rotation) } : {}),
    });
    this.#idleMs = cfg.flowIdleMs ?? 300_000;
    this.#parkPerKey = cfg.parkPerKey ?? 32;
    this.#parkTotal = cfg.parkTotal ?? 1024;
    this.#parkBytes = cfg.parkBytes ?? 4 << 20;
    this.#strangerKeys = cfg.strangerKeys ?? 256;
    this.#strangerKeysPerSource = cfg.strangerKeysPerSource ?? 16;
    this.#strangerPerKey = Math.min(this.#parkPerKey, cfg.strangerPerKey ?? 8);
    this.#strangerRate = cfg.strangerRate ?? 100;
    this.#strangerTokens = this.#strangerRate;
    this.#rebuildRoutes();
  }

  /** Applies a table change (from the main isolate) and drops flows of instances that left. */
  applyDelta(delta: TableDelta, now = 0): void {
    const t = this.table as Partial<Pick<TranslationTable, "apply">>;
    if (!t.apply) throw new Error("applyDelta needs the table's owner (a Worker gets tableChanged)");
    this.tableChanged(t.apply(delta).gone, now);
  }

  /**
   * The shared table changed (the owner applied a delta): drops flows of instances that left (namespace
   * IPv4s) and rebuilds the node routes.
   */
  tableChanged(gone: readonly number[], now = 0): void {
    if (gone.length > 0) this.flows.dropInstances(gone);
    this.#rebuildRoutes(now);
  }

  /**
   * This node's advertised address changed: entries naming the new address are this node's (local
   * delivery), the old address becomes an ordinary peer.
   */
  setSelf(ip: string, now = 0): void {
    this.cfg.selfIp = ip;
    this.#rebuildRoutes(now);
  }

  /**
   * Local instances whose namespace is gone (by namespace IPv4): new flows skip them while another
   * candidate is usable. Replaces the previous set.
   */
  setDeadLocal(nsip4s: readonly number[]): void {
    this.#dead4 = new Set(nsip4s);
  }

  /** Whether a candidate row may take a new flow: its node is not down, its local namespace alive. */
  #usable(row: number): boolean {
    const t = this.table;
    const node = t.rowNode(row);
    const r = this.#routes.get(node);
    if (r === undefined) return true;
    if (r.local) return this.#dead4.size === 0 || !this.#dead4.has(t.rowNsip4(row));
    if (this.#prober || this.#health === undefined) return r.peer?.down !== true;
    return !this.#health.isDown(node);
  }

  /** Liveness of the peer at node key `key` as this worker sees it (own probes or the prober's). */
  peerHealth(key: string): PeerHealthState {
    if (!this.#prober && this.#health !== undefined) return this.#health.state(key);
    const p = this.peers.get(key);
    return p === undefined ? "unknown" : this.peers.healthOf(p);
  }

  #observedSelf = "";
  /** Hole punching: endpoints (node keys) to keep HELLOing although no table entry names them, until when (ms). */
  readonly #punch = new Map<string, { until: number; rx: number }>();

  /**
   * Hole punching (issue 12): a node behind NAT is told that `key` ("ip:port", another node's
   * observed endpoint) wants to reach it; HELLOs to it open this side's NAT mapping and keep it
   * open (the HELLO refresh) for `forMs`, and longer while the table names it.
   */
  punch(key: string, now: number, forMs = 300_000): void {
    const had = this.#punch.get(key);
    this.#punch.set(key, { until: now + forMs, rx: had?.rx ?? 0 });
    if (!had) this.#rebuildRoutes(now);
    // Asked again (a relayed peer's own endpoint, src/path/relay_watch.ts): try now, not after a backoff.
    const p = had ? this.peers.get(key) : undefined;
    if (p && !p.helloOutstanding && p.nextHelloAt > now) p.nextHelloAt = now;
  }

  /** Stops HELLOing punch target `key` (a freed relay endpoint); the table may still name it. */
  unpunch(key: string, now: number): void {
    if (!this.#punch.delete(key)) return;
    const p = this.peers.get(key);
    if (p) p.punched = false;
    this.#rebuildRoutes(now);
  }

  /** Drops expired punch targets (from the 1 s housekeeping). */
  #expirePunch(now: number): void {
    let changed = false;
    for (const [k, t] of this.#punch) {
      // Data from it (beyond HELLO/PROBE answers, which come anyway) extends the keepalive.
      const rx = this.peers.get(k)?.rxPackets ?? 0;
      if (rx > t.rx) {
        t.rx = rx;
        t.until = Math.max(t.until, now + 120_000);
      } else if (t.until < now) {
        this.#punch.delete(k);
        changed = true;
      }
    }
    if (changed) this.#rebuildRoutes(now);
  }

  /**
   * This node's tunnel endpoint as the control plane's reflector saw it (behind NAT: the router's):
   * table entries naming it are this node's own, like those naming the announced address.
   */
  setObservedSelf(ip: string, port: number, now = 0): void {
    const key = `${ip}:${port}`;
    if (key === this.#observedSelf) return;
    this.#observedSelf = key;
    // Behind NAT (observed ≠ announced): every peer's HELLO refresh keeps the mapping open.
    this.peers.behindNat = ip !== this.cfg.selfIp || port !== this.cfg.selfPort;
    this.#rebuildRoutes(now);
  }

  /** Peers followed to another endpoint (node key → where it is reached; see {@link follow}). */
  readonly #moved = new Map<string, Endpoint>();

  /** Route of a node key, if known. */
  route(key: string): NodeRoute | undefined {
    return this.#routes.get(key);
  }

  #rebuildRoutes(now = 0): void {
    const t = this.table;
    let v: number;
    do {
      v = t.readBegin();
      this.#readRoutes();
    } while (!t.readValid(v)); // a change overlapped: read again
    const remote: string[] = [];
    for (const r of this.#routes.values()) if (!r.local) remote.push(r.key);
    // Hole punching: endpoints to keep HELLOing although no table entry names them yet.
    for (const k of this.#punch.keys()) if (!remote.includes(k)) remote.push(k);
    const sync = this.peers.sync(remote, now);
    for (const p of sync.removed) this.#moved.delete(p.key);
    for (const p of sync.added) {
      const ep = this.#moved.get(p.key);
      if (ep !== undefined) this.peers.follow(p, ep);
    }
    if (this.#prober && this.#health) {
      for (const p of sync.removed) this.#health.publish(p.key, "unknown", undefined);
    }
    for (const k of this.#punch.keys()) {
      const p = this.peers.get(k);
      if (p) p.punched = true;
    }
    for (const r of this.#routes.values()) {
      if (r.local) continue;
      r.peer = this.peers.get(r.key);
      if (r.peer !== undefined && r.peer.at.key !== r.key) this.#routeTo(r, r.peer.at);
    }
  }

  /**
   * `peer`'s secure session authenticated a datagram from `ep`, another endpoint than where it was
   * reached (roaming, NAT rebinding): everything to it goes there from now on (see PeerTable.follow).
   * Returns false when nothing changed (already there, or not a peer of this table).
   */
  follow(peer: Peer, ep: Endpoint): boolean {
    this.#noteMoved(peer.key, ep);
    if (!this.peers.follow(peer, ep)) return false;
    const r = this.#routes.get(peer.key);
    if (r !== undefined && !r.local) this.#routeTo(r, ep);
    return true;
  }

  /**
   * The same by node key, also for a node that is no peer here yet (a restarted worker's first
   * table): applied when the table makes it one.
   */
  followKey(key: string, ep: Endpoint): void {
    const p = this.peers.get(key);
    if (p !== undefined) this.follow(p, ep);
    else this.#noteMoved(key, ep);
  }

  #noteMoved(key: string, ep: Endpoint): void {
    if (ep.key === key) this.#moved.delete(key);
    else if (this.#moved.size < 4096 || this.#moved.has(key)) this.#moved.set(key, ep);
  }

  #routeTo(r: NodeRoute, ep: Endpoint): void {
    r.family = ep.family;
    r.addr4 = ep.ip4;
    r.addr6 = ep.ip6;
    r.port = ep.port;
  }

  /** The routes, closest nodes and local instance addresses as the table has them (no side effects). */
  #readRoutes(): void {
    this.#routes.clear();
    const closest = new Set<string>();
    const local4 = new Set<number>();
    const local6 = new Map<number, Uint8Array[]>();
    for (const key of this.table.nodes()) {
      const e = this.table.nodeEndpoint(key);
      if (!e) continue;
      const local = (e.ip === this.cfg.selfIp && e.port === this.cfg.selfPort) ||
        (this.#observedSelf !== "" && `${e.ip}:${e.port}` === this.#observedSelf);
      const v6 = e.ip.includes(":") ? tryParseIPv6(e.ip) : undefined;
      const r: NodeRoute = {
        key,
        family: v6 ? 6 : 4,
        addr4: v6 ? 0 : parseIPv4(e.ip),
        addr6: v6,
        port: e.port,
        local,
        peer: undefined,
      };
      this.#routes.set(key, r);
      if (!local && this.table.nodeHasKind(key, "Closest")) closest.add(key);
      if (local) {
        for (const row of this.table.nodeRows(key)) {
          local4.add(this.table.rowNsip4(row));
          const a6 = new Uint8Array(16);
          if (this.table.rowNsip6(row, a6)) {
            const k = ipv6Key(a6, 0);
            const b = local6.get(k);
            if (b) b.push(a6);
            else local6.set(k, [a6]);
          }
        }
      }
    }
    this.#local4 = local4;
    this.#local6 = local6;
    this.#closestNodes = [...closest];
  }

  #drop(reason: number): Verdict {
    this.counters.drops[reason]++;
    return Verdict.DROP;
  }

  /**
   * Processes a packet read from the TUN (`len` bytes at `off`). With `partial` the L4 checksum
   * field holds a partial sum (CHECKSUM_PARTIAL) and is updated as such. `prefix` bytes before
   * `off` (a virtio header) are kept with the packet if it is parked. The packet is parsed once:
   * `res.info` carries the parse on; TO_PEER sets `res.route`.
   */
  egress(
    buf: Uint8Array,
    off: number,
    len: number,
    now: number,
    partial = false,
    prefix = 0,
    res: PacketResult = this.result,
  ): Verdict {
    this.#prefix = prefix;
    this.#res = res;
    res.route = undefined;
    const info = this.#info;
    res.info = info;
    const r = parsePacket(buf, off, len, info);
    if (r !== ParseResult.OK) return res.verdict = this.#drop(r);
    const c = this.counters;
    c.tunRx++;
    c.tunRxBytes += len;
    return res.verdict = info.version === 4
      ? this.#egress4(buf, off, info.totalLen, now, partial)
      : this.#egress6(buf, off, info.totalLen, now, partial);
  }

  #egress4(buf: Uint8Array, off: number, len: number, now: number, partial: boolean): Verdict {
    const info = this.#info;
    const dst = info.dst4;
    if (!inPrefix4(this.cfg.service4, dst)) return this.#drop(Drop.NOT_SERVICE_IP);
    const flows = this.flows;
    let id = flows.find4(info.protocol, info.src4, info.srcPort, dst, info.dstPort);
    while (id < 0) {
      // The table may be shared with a writer in another isolate: read everything a new flow needs,
      // then act only if no change overlapped the reads (else read again).
      const t = this.table;
      const v = t.readBegin();
      const sender = t.rowOf4(info.src4);
      const senderIp = sender < 0 ? -1 : t.rowInstanceIp4(sender);
      const group = senderIp < 0 ? -1 : t.groupOf4(dst);
      const chosen = group < 0 ? -1 : this.#choose(group);
      const inst = chosen < 0 ? -1 : t.rowInstanceIp4(chosen);
      const target = chosen < 0 ? 0 : t.rowNsip4(chosen);
      const node = chosen < 0 ? "" : t.rowNode(chosen);
      const senderNs = sender < 0 ? 0 : t.rowNsip4(sender);
      if (!t.readValid(v)) continue;
      if (sender < 0) return this.#drop(Drop.UNKNOWN_SENDER);
      if (senderIp < 0) return this.#drop(Drop.NO_INSTANCE_IP);
      if (group < 0) {
        return this.#park(dst, 4, buf, off, len, now, sender);
      }
      if (chosen < 0) return this.#drop(Drop.NO_CANDIDATE);
      id = flows.add4({
        proto: info.protocol,
        src: info.src4,
        sport: info.srcPort,
        dst,
        dport: info.dstPort,
        chosen: target,
        senderIp,
        replySrc: inst < 0 ? dst : inst,
        node,
        target,
        sender: senderNs,
      }, now);
    }
    flows.touch(id, now, len);
    const route = this.#routes.get(flows.node(id));
    if (!route) return this.#drop(Drop.NO_NODE_ROUTE);
    this.services.add4(dst, len, SVC_TX);
    rewriteSrc4(buf, info, flows.senderIp4(id), partial);
    rewriteDst4(buf, info, flows.chosen4(id), partial);
    info.src4 = flows.senderIp4(id);
    info.dst4 = flows.chosen4(id);
    return this.#deliver(route, buf, off, len, partial);
  }

  #egress6(buf: Uint8Array, off: number, len: number, now: number, partial: boolean): Verdict {
    const info = this.#info;
    const dOff = info.dstOffset;
    if (!inPrefix6(this.cfg.service6, buf, dOff)) return this.#drop(Drop.NOT_SERVICE_IP);
    const flows = this.flows;
    let id = flows.find6(info.protocol, buf, info.srcOffset, info.srcPort, dOff, info.dstPort);
    while (id < 0) {
      // As in #egress4: act on the reads only if no change of a shared table overlapped them.
      const t = this.table;
      const v = t.readBegin();
      const reply = this.#reply6;
      const sender = t.rowOf6(buf, info.srcOffset);
      const senderIp = sender >= 0 && t.rowInstanceIp6(sender, this.#sender6);
      const group = senderIp ? t.groupOf6(buf, dOff) : -1;
      const chosen = group < 0 ? -1 : this.#choose(group);
      const has6 = chosen >= 0 && t.rowNsip6(chosen, this.#chosen6);
      if (has6 && !t.rowInstanceIp6(chosen, reply)) reply.set(buf.subarray(dOff, dOff + 16));
      const node = has6 ? t.rowNode(chosen) : "";
      const target = has6 ? t.rowNsip4(chosen) : 0;
      const senderNs = sender < 0 ? 0 : t.rowNsip4(sender);
      if (!t.readValid(v)) continue;
      if (sender < 0) return this.#drop(Drop.UNKNOWN_SENDER);
      if (!senderIp) return this.#drop(Drop.NO_INSTANCE_IP);
      if (group < 0) {
        return this.#park(formatIPv6(buf, dOff), 6, buf, off, len, now, sender);
      }
      if (!has6) return this.#drop(Drop.NO_CANDIDATE);
      id = flows.add6({
        proto: info.protocol,
        buf,
        srcOff: info.srcOffset,
        sport: info.srcPort,
        dstOff: dOff,
        dport: info.dstPort,
        chosen: this.#chosen6,
        senderIp: this.#sender6,
        replySrc: reply,
        node,
        target,
        sender: senderNs,
      }, now);
    }
    flows.touch(id, now, len);
    const route = this.#routes.get(flows.node(id));
    if (!route) return this.#drop(Drop.NO_NODE_ROUTE);
    this.services.add6(buf, dOff, len, SVC_TX);
    const s = this.#scratch6;
    flows.writeSenderIp6(id, s, 0);
    rewriteSrc6(buf, info, s, 0, partial);
    flows.writeChosen6(id, s, 0);
    rewriteDst6(buf, info, s, 0, partial);
    return this.#deliver(route, buf, off, len, partial);
  }

  /** The row a new flow to ServiceIP group `g` goes to, by the group's policy; -1 when none. */
  #choose(g: number): number {
    const t = this.table;
    const n = t.groupRows(g, this.#cands);
    const key = t.groupKey(g);
    const row = this.balancer.chooseFrom(t.groupKind(g), key, this.#cands, n) ?? -1;
    if (row >= 0) this.#countChoice(key, row);
    return row;
  }

  #countChoice(key: number | string, row: number): void {
    let k = `${typeof key === "number" ? formatIPv4(key) : key} ${formatIPv4(this.table.rowNsip4(row))}`;
    const c = this.choices;
    const had = c.get(k);
    if (had === undefined && c.size >= MAX_CHOICE_SERIES) k = "other other";
    c.set(k, (c.get(k) ?? 0) + 1);
  }

  #deliver(route: NodeRoute, buf: Uint8Array, off: number, len: number, partial: boolean): Verdict {
    if (route.local) {
      // Same node: never over UDP. The packet is now what the destination node would receive.
      this.counters.localHandoff++;
      return this.#restoreReply(buf, off, len, partial);
    }
    this.#res.route = route;
    this.counters.udpTx++;
    this.counters.udpTxBytes += len;
    if (route.peer) this.peers.noteTx(route.peer, len);
    return Verdict.TO_PEER;
  }

  /**
   * Processes a datagram from the tunnel socket: {@link receive} then {@link deliver}. For single
   * packets only: a JUMBO chunk needs the bind's reassembly and is dropped here.
   */
  ingress(
    buf: Uint8Array,
    off: number,
    len: number,
    family: 4 | 6,
    src4: number,
    src6: Uint8Array | undefined,
    srcPort: number,
    now: number,
    res: PacketResult = this.result,
  ): Verdict {
    if (this.receive(buf, off, len, family, src4, src6, srcPort, now, res) !== Verdict.TO_TUN) {
      return Verdict.DROP;
    }
    return this.deliver(buf, res.off, res.len, res.csumStart >= 0);
  }

  /**
   * First half of ingress, per datagram: the source must be a known peer (its address; see
   * PeerTable); a bare IP packet (raw mode) or a FAST datagram yields TO_TUN with the packet at
   * `res.off`/`res.len` and its checksum state in `res.csumStart`/`res.csumOffset` — not yet
   * checked or restored, so runs of segments can be coalesced first and {@link deliver}ed once. A
   * JUMBO chunk yields {@link Verdict.JUMBO} with its sender in `res.peer`, for reassembly.
   * In-band messages are answered through {@link control}.
   */
  receive(
    buf: Uint8Array,
    off: number,
    len: number,
    family: 4 | 6,
    src4: number,
    src6: Uint8Array | undefined,
    srcPort: number,
    now: number,
    res: PacketResult = this.result,
  ): Verdict {
    const peer = family === 4 ? this.peers.lookup4(src4, srcPort) : this.peers.lookup6(src6!, 0, srcPort);
    res.peer = peer;
    res.route = undefined;
    if (peer === undefined) {
      return res.verdict = this.#strangerIn(buf, off, len, family, src4, src6, srcPort, now);
    }
    const kind = classify(buf, off, len);
    if (kind === WireKind.JUMBO) {
      res.off = off;
      res.len = len;
      this.counters.udpRx++;
      this.counters.udpRxBytes += len;
      this.peers.noteRx(peer, len, now);
      return res.verdict = Verdict.JUMBO;
    }
    if (kind === WireKind.FAST) {
      const f = this.#fast;
      if (!decodeFast(buf, off, len, f)) return res.verdict = this.#drop(Drop.NOT_OURS);
      res.off = f.packetOffset;
      res.len = f.packetLength;
      const partial = (f.flags & FAST_F_NEEDS_CSUM) !== 0;
      res.csumStart = partial ? f.csumStart : -1;
      res.csumOffset = partial ? f.csumOffset : 0;
    } else if (kind === WireKind.RAW_V4 || kind === WireKind.RAW_V6) {
      res.off = off;
      res.len = len;
      // A peer's kernel fast path may send a partial checksum (src/proxy/raw_partial.ts).
      const cs = kind === WireKind.RAW_V4 ? rawPartialStart4(buf, off, len) : -1;
      res.csumStart = cs;
      res.csumOffset = cs < 0 ? 0 : partialFieldOffset(buf[off + 9]);
    } else {
      this.#controlIn(kind, buf, off, len, peer, family, src4, src6, srcPort, now);
      return res.verdict = Verdict.DROP;
    }
    this.counters.udpRx++;
    this.counters.udpRxBytes += len;
    this.peers.noteRx(peer, len, now);
    return res.verdict = Verdict.TO_TUN;
  }

  /**
   * Counts `datagrams` JUMBO chunks (`bytes` in all) that the bind took from `peer` after one that
   * {@link receive} classified (the rest of its receive run, see BindSeam.reassembleRun).
   */
  receivedRun(peer: Peer, datagrams: number, bytes: number, now: number): void {
    this.counters.udpRx += datagrams;
    this.counters.udpRxBytes += bytes;
    this.peers.noteRx(peer, bytes, now, datagrams);
  }

  /**
   * A datagram from an underlay address that is not a known peer. A node learns its peers from the
   * table, and a node serving a new client has no entry of the client's job yet: so a packet whose
   * inner source is a ServiceIP (the sender's InstanceIP) is parked and that IP is resolved like a
   * miss; it is accepted only if the answer lists the sender's address as the instance's node.
   * Anything else is dropped as an unknown peer.
   */
  #strangerIn(
    buf: Uint8Array,
    off: number,
    len: number,
    family: 4 | 6,
    src4: number,
    src6: Uint8Array | undefined,
    srcPort: number,
    now: number,
  ): Verdict {
    if (buf[off] === MSG_REFLECT_REPLY && this.reflect !== undefined && family === 4) {
      if (this.reflect.onReply(buf, off, len, src4, srcPort, now)) this.observedChanged = true;
      return Verdict.DROP;
    }
    const kind = classify(buf, off, len);
    if (kind === WireKind.HELLO || kind === WireKind.PROBE) {
      return this.#strangerControl(kind, buf, off, len, family, src4, src6, srcPort, now);
    }
    let pOff = off;
    let pLen = len;
    if (kind === WireKind.FAST) {
      if (!decodeFast(buf, off, len, this.#fast)) return this.#drop(Drop.UNKNOWN_PEER);
      pOff = this.#fast.packetOffset;
      pLen = this.#fast.packetLength;
    } else if (kind !== WireKind.RAW_V4 && kind !== WireKind.RAW_V6) {
      return this.#drop(Drop.UNKNOWN_PEER);
    }
    const info = this.#info;
    if (parsePacket(buf, pOff, pLen, info) !== ParseResult.OK) return this.#drop(Drop.UNKNOWN_PEER);
    if (info.version === 4) {
      if (!inPrefix4(this.cfg.service4, info.src4)) return this.#drop(Drop.UNKNOWN_PEER);
    } else if (!inPrefix6(this.cfg.service6, buf, info.srcOffset)) {
      return this.#drop(Drop.UNKNOWN_PEER);
    }
    const src = family === 4 ? src4 : V6_SOURCE_BASE + ipv6Key(src6!, 0);
    if (
      !this.#strangerSources.has(src) &&
      (this.#strangers.size >= this.#strangerKeys || !this.#strangerTokenReady(now))
    ) {
      return this.#drop(Drop.STRANGER_LIMIT); // cheap: no key text is built for a source without state
    }
    const key = info.version === 4 ? formatIPv4(info.src4) : formatIPv6(buf, info.srcOffset);
    let p = this.#strangers.get(key);
    if (!p) {
      // A new inner source to resolve: bounded per underlay source, in number and in rate, so a
      // flood of made-up sources costs counters, not memory or control-plane queries.
      const perSource = this.#strangerSources.get(src) ?? 0;
      if (
        this.#strangers.size >= this.#strangerKeys || perSource >= this.#strangerKeysPerSource ||
        !this.#strangerToken(now)
      ) {
        return this.#drop(Drop.STRANGER_LIMIT);
      }
      p = { since: now, source: src, items: [] };
      this.#strangers.set(key, p);
      this.#strangerSources.set(src, perSource + 1);
      this.misses.push(key);
    }
    if (
      p.items.length >= this.#strangerPerKey || this.#parkedTotal >= this.#parkTotal ||
      this.#parkedBytes + len > this.#parkBytes
    ) {
      return this.#drop(Drop.PARK_FULL);
    }
    p.items.push({ bytes: buf.slice(off, off + len), family, src4, src6: src6?.slice(), srcPort });
    this.#parkedTotal++;
    this.#parkedBytes += len;
    this.counters.parked++;
    return Verdict.PARKED;
  }

  /** Refills the new-stranger budget (strangerRate per second, burst the same); true when a token is there. */
  #strangerTokenReady(now: number): boolean {
    const rate = this.#strangerRate;
    if (now > this.#strangerTokensAt) {
      this.#strangerTokens = Math.min(
        rate,
        this.#strangerTokens + (now - this.#strangerTokensAt) * rate / 1000,
      );
      this.#strangerTokensAt = now;
    }
    return this.#strangerTokens >= 1;
  }

  /** Takes a token of the new-stranger budget. */
  #strangerToken(now: number): boolean {
    if (!this.#strangerTokenReady(now)) return false;
    this.#strangerTokens--;
    return true;
  }

  /** Forgets stranger state `p` (already removed from the map): its parked bytes and its source's count. */
  #forgetStranger(p: Stranger): void {
    this.#parkedTotal -= p.items.length;
    for (const d of p.items) this.#parkedBytes -= d.bytes.length;
    const n = (this.#strangerSources.get(p.source) ?? 1) - 1;
    if (n <= 0) this.#strangerSources.delete(p.source);
    else this.#strangerSources.set(p.source, n);
  }

  /**
   * Datagrams parked by {@link receive} from a not-yet-known sender whose inner source `addr` was
   * being resolved: returned for another {@link receive} when the table now names the sender as a
   * peer; dropped (as unknown peers) otherwise.
   */
  resolvedStrangers(addr: string, ok: boolean): ParkedDatagram[] {
    const v6 = addr.includes(":") ? tryParseIPv6(addr) : undefined;
    const key = v6 ? formatIPv6(v6) : addr;
    const p = this.#strangers.get(key);
    if (!p) return [];
    this.#strangers.delete(key);
    this.#forgetStranger(p);
    const back = ok
      ? p.items.filter((d) =>
        (d.family === 4
          ? this.peers.lookup4(d.src4, d.srcPort)
          : this.peers.lookup6(d.src6!, 0, d.srcPort)) !==
          undefined
      )
      : [];
    this.counters.drops[Drop.UNKNOWN_PEER] += p.items.length - back.length;
    this.counters.released += back.length;
    return back;
  }

  /**
   * Second half of ingress, per (possibly coalesced) packet: parses it, checks the destination is
   * an instance of this node, and restores the dialled ServiceIP as source on replies of flows
   * this node originated. With `partial` the L4 checksum is a partial sum.
   */
  deliver(buf: Uint8Array, off: number, len: number, partial: boolean): Verdict {
    const info = this.#info;
    const r = parsePacket(buf, off, len, info);
    if (r !== ParseResult.OK) return this.#drop(r);
    return this.#restoreReply(buf, off, info.totalLen, partial);
  }

  #controlIn(
    kind: WireKind,
    buf: Uint8Array,
    off: number,
    len: number,
    peer: Peer,
    family: 4 | 6,
    src4: number,
    src6: Uint8Array | undefined,
    srcPort: number,
    now: number,
  ): void {
    const reply = (bytes: Uint8Array) =>
      this.control.push({ family, addr4: src4, addr6: src6?.slice(), port: srcPort, bytes });
    switch (kind) {
      case WireKind.HELLO:
        if (decodeHello(buf, off, len, this.#hello) && this.peers.onHello(peer, this.#hello, now)) {
          const out = new Uint8Array(96);
          const n = encodeHelloAck(out, 0, {
            caps: this.peers.capsFor(peer, now),
            nonceHi: this.#hello.nonceHi,
            nonceLo: this.#hello.nonceLo,
            hostPort: this.cfg.selfPort,
            nodeId: this.cfg.nodeId ?? "",
          });
          reply(out.subarray(0, n));
        }
        return;
      case WireKind.HELLO_ACK:
        if (decodeHello(buf, off, len, this.#hello)) this.peers.onHelloAck(peer, this.#hello, now);
        return;
      case WireKind.PROBE: {
        const copy = buf.slice(off, off + len);
        if (probeToReplyInPlace(copy, 0, len)) reply(copy);
        return;
      }
      case WireKind.PROBE_REPLY:
        if (!decodeProbe(buf, off, len, this.#probe)) return;
        // Padded path-MTU probes are judged by their size (src/path/pmtu.ts), not as RTT samples.
        if ((buf[off + 1] & PROBE_FLAG_PMTU) !== 0) peer.path.onReply(this.#probe.seq, len, family, now);
        else this.peers.onProbeReply(peer, this.#probe, now);
        return;
      default:
        this.#drop(Drop.NOT_OURS);
    }
  }

  /**
   * A HELLO or PROBE from a node that is no peer yet (it knows us from its table, we do not know it
   * from ours: e.g. a client's node, before its first flow reaches us). Answered without keeping any
   * state — a HELLO_ACK without CAP_JUMBO (its JUMBO messages would be dropped until it is a peer;
   * our own HELLO announces JUMBO once it is), a PROBE echoed — so it can measure RTT and liveness
   * before any flow. Same size as the question (no amplification) and rate-limited.
   */
  #strangerControl(
    kind: WireKind,
    buf: Uint8Array,
    off: number,
    len: number,
    family: 4 | 6,
    src4: number,
    src6: Uint8Array | undefined,
    srcPort: number,
    now: number,
  ): Verdict {
    const elapsed = now - this.#strangerCtlAt;
    if (elapsed > 0) {
      this.#strangerCtlTokens = Math.min(
        STRANGER_CONTROL_RATE,
        this.#strangerCtlTokens + elapsed * STRANGER_CONTROL_RATE / 1000,
      );
      this.#strangerCtlAt = now;
    }
    if (this.#strangerCtlTokens < 1) return this.#drop(Drop.STRANGER_LIMIT);
    this.#strangerCtlTokens--;
    let bytes: Uint8Array | undefined;
    if (kind === WireKind.HELLO) {
      if (decodeHello(buf, off, len, this.#hello) && this.#hello.type === MSG_HELLO) {
        const out = new Uint8Array(96);
        const n = encodeHelloAck(out, 0, {
          caps: (this.peers.localCaps & ~CAP_JUMBO) >>> 0,
          nonceHi: this.#hello.nonceHi,
          nonceLo: this.#hello.nonceLo,
          hostPort: this.cfg.selfPort,
          nodeId: this.cfg.nodeId ?? "",
        });
        bytes = out.subarray(0, n);
      }
    } else {
      const copy = buf.slice(off, off + len);
      if (probeToReplyInPlace(copy, 0, len)) bytes = copy;
    }
    if (bytes === undefined) return this.#drop(Drop.UNKNOWN_PEER);
    this.control.push({ family, addr4: src4, addr6: src6?.slice(), port: srcPort, bytes });
    return Verdict.DROP;
  }

  /** Runs the peers' schedule (HELLO, PROBE) and queues what is due in {@link control}. */
  peerTick(now: number): void {
    for (const key of this.#closestNodes) {
      const p = this.peers.get(key);
      if (p) this.peers.requestRtt(p, now);
    }
    const to = (p: Peer, bytes: Uint8Array) =>
      this.control.push({ family: p.at.family, addr4: p.at.ip4, addr6: p.at.ip6, port: p.at.port, bytes });
    const health = this.#prober ? this.#health : undefined;
    this.peers.tick(now, {
      hello: (p, hi, lo) => {
        const out = new Uint8Array(96);
        const n = encodeHello(out, 0, {
          caps: this.peers.capsFor(p, now),
          nonceHi: hi,
          nonceLo: lo,
          hostPort: this.cfg.selfPort,
          nodeId: this.cfg.nodeId ?? "",
        });
        to(p, out.subarray(0, n));
      },
      probe: (p, seq, us) => {
        const out = new Uint8Array(16);
        to(p, out.subarray(0, encodeProbe(out, 0, seq, us)));
      },
    });
    if (health) {
      for (const p of this.peers.peers()) {
        health.publish(p.key, this.peers.healthOf(p), this.peers.rttOf(p, now));
      }
    }
    this.#probePaths(now, to);
    const req = this.reflect?.due(now);
    if (req !== undefined) {
      this.control.push({
        family: 4,
        addr4: this.reflect!.addr4,
        addr6: undefined,
        port: this.reflect!.port,
        bytes: req,
      });
    }
  }

  /** Path-MTU probes (src/path/pmtu.ts) to every peer that answers PROBEs. */
  #probePaths(now: number, to: (p: Peer, bytes: Uint8Array) => void): void {
    const lane = this.cfg.laneTag ?? 0;
    for (const p of this.peers.peers()) {
      if (!p.capsKnown || (p.remoteCaps & CAP_PROBE) === 0) continue;
      p.path.noteLosses(p.probesLost + p.jumboLostTotal, now);
      p.path.tick(now, p.family, lane, (seq, payload) => {
        const out = new Uint8Array(payload); // zero padding after the 16-byte PROBE
        encodeProbe(out, 0, seq, now * 1000);
        out[1] = PROBE_FLAG_PMTU;
        to(p, out);
      });
    }
  }

  /** Destination must be a local instance; replies of our flows get the dialled ServiceIP back. */
  #restoreReply(buf: Uint8Array, _off: number, len: number, partial: boolean): Verdict {
    const info = this.#info;
    const flows = this.flows;
    if (info.version === 4) {
      if (!inPrefix4(this.cfg.subnet4, info.dst4)) {
        return this.#drop((info.dst4 >>> 28) === 0xe ? Drop.TO_MULTICAST : Drop.NOT_LOCAL_DST);
      }
      if (!this.#local4.has(info.dst4) && !this.cfg.ingressAnyInSubnet) return this.#notInstance4(info.dst4);
      const id = flows.findReply4(info.protocol, info.src4, info.srcPort, info.dst4, info.dstPort);
      let src = info.src4;
      if (id >= 0) {
        const dialled = flows.dialled4(id);
        if (dialled !== src) rewriteSrc4(buf, info, dialled, partial);
        src = dialled;
      }
      this.services.add4(src, len, SVC_RX);
    } else {
      if (!inPrefix6(this.cfg.subnet6, buf, info.dstOffset)) {
        return this.#drop(buf[info.dstOffset] === 0xff ? Drop.TO_MULTICAST : Drop.NOT_LOCAL_DST);
      }
      if (!this.#isLocal6(buf, info.dstOffset) && !this.cfg.ingressAnyInSubnet) {
        return this.#drop(this.#isGateway6(buf, info.dstOffset) ? Drop.TO_BRIDGE : Drop.NOT_INSTANCE);
      }
      const id = flows.findReply6(
        info.protocol,
        buf,
        info.srcOffset,
        info.srcPort,
        info.dstOffset,
        info.dstPort,
      );
      if (id >= 0) {
        const s = this.#scratch6;
        flows.writeDialled6(id, s, 0);
        rewriteSrc6(buf, info, s, 0, partial);
      }
      this.services.add6(buf, info.srcOffset, len, SVC_RX);
    }
    this.counters.tunTx++;
    this.counters.tunTxBytes += len;
    return Verdict.TO_TUN;
  }

  /** Why a packet to `dst` in our subnet but to no instance is dropped (off the hot path). */
  #notInstance4(dst: number): Verdict {
    const sub = this.cfg.subnet4;
    const host = (dst - sub.addr) >>> 0;
    const last = sub.len >= 32 ? 0 : (2 ** (32 - sub.len)) - 1;
    return this.#drop(
      host === 1 ? Drop.TO_BRIDGE : host === last || host === 0 ? Drop.TO_BROADCAST : Drop.NOT_INSTANCE,
    );
  }

  #isLocal6(buf: Uint8Array, off: number): boolean {
    const b = this.#local6.get(ipv6Key(buf, off));
    if (b === undefined) return false;
    for (let i = 0; i < b.length; i++) if (ipv6Equal(b[i], 0, buf, off)) return true;
    return false;
  }

  /** The bridge's IPv6 address (subnet + 1). */
  #isGateway6(buf: Uint8Array, off: number): boolean {
    const a = this.cfg.subnet6.addr;
    for (let i = 0; i < 15; i++) if (buf[off + i] !== a[i]) return false;
    return buf[off + 15] === a[15] + 1;
  }

  #park(
    key: number | string,
    family: 4 | 6,
    buf: Uint8Array,
    off: number,
    len: number,
    now: number,
    fromRow = -1,
  ): Verdict {
    const bytes = len + this.#prefix;
    let p = this.#parked.get(key);
    const full = this.#parkedTotal >= this.#parkTotal || this.#parkedBytes + bytes > this.#parkBytes;
    // A full park still reports a new ServiceIP's miss (once: an empty entry remembers it), so one
    // sender's unresolvable addresses do not hold back everybody else's resolution. Entries are
    // bounded like packets.
    if (full && (p || this.#parked.size >= this.#parkTotal)) return this.#drop(Drop.PARK_FULL);
    if (!p) {
      p = { family, packets: [], since: now };
      this.#parked.set(key, p);
      const addr = typeof key === "number" ? formatIPv4(key) : key;
      this.misses.push(addr);
      // The sending instance, as text only for a new miss (not per parked packet).
      if (fromRow >= 0) {
        this.missSources.set(addr, `${this.table.rowJob(fromRow)}#${this.table.rowInstance(fromRow)}`);
      }
    }
    if (full || p.packets.length >= this.#parkPerKey) return this.#drop(Drop.PARK_FULL);
    this.#res.gather?.gather(); // a scatter read: the copy needs the whole packet
    p.packets.push(buf.slice(off - this.#prefix, off + len));
    this.#parkedTotal++;
    this.#parkedBytes += bytes;
    this.counters.parked++;
    return Verdict.PARKED;
  }

  /** Number of packets currently parked. */
  get parkedNow(): number {
    return this.#parkedTotal;
  }

  /**
   * The control plane answered a miss for `addr` (after applying any table deltas): returns the
   * parked packets (each with the prefix it was parked with) to process again with
   * {@link egress}, or drops them when `ok` is false.
   */
  resolved(addr: string, ok: boolean): Uint8Array[] {
    const v4 = addr.includes(":") ? undefined : parseIPv4(addr);
    const key = v4 ?? formatIPv6(tryParseIPv6(addr) ?? ZERO6);
    const p = this.#parked.get(key);
    if (!p) return [];
    this.#parked.delete(key);
    this.#parkedTotal -= p.packets.length;
    for (const b of p.packets) this.#parkedBytes -= b.length;
    if (!ok) {
      this.counters.drops[Drop.UNRESOLVED] += p.packets.length;
      return [];
    }
    this.counters.released += p.packets.length;
    return p.packets;
  }

  /**
   * Jobs whose instances carried traffic since `since` (ms): the control plane keeps its interest
   * in them alive (Oakestra's per-packet usage events, computed once a second from the flows).
   */
  usedJobs(since: number): string[] {
    const out = new Set<string>();
    const flows = this.flows;
    const t = this.table;
    let v: number;
    do {
      v = t.readBegin();
      out.clear();
      for (const id of flows.ids()) {
        if (flows.lastSeen(id) < since) continue;
        const row = t.rowOf4(flows.target(id));
        if (row >= 0) out.add(t.rowJob(row));
      }
    } while (!t.readValid(v));
    return [...out];
  }

  /** Housekeeping: idle flows leave; parked packets older than `parkMs` are dropped. */
  tick(now: number, parkMs = 6000): void {
    this.flows.sweep(now, this.#idleMs);
    if (this.#punch.size > 0) this.#expirePunch(now);
    for (const [key, p] of this.#strangers) {
      if (now - p.since > parkMs) {
        this.#strangers.delete(key);
        this.#forgetStranger(p);
        this.counters.drops[Drop.UNKNOWN_PEER] += p.items.length;
      }
    }
    for (const [key, p] of this.#parked) {
      if (now - p.since > parkMs) {
        this.#parked.delete(key);
        this.#parkedTotal -= p.packets.length;
        for (const b of p.packets) this.#parkedBytes -= b.length;
        this.counters.drops[Drop.UNRESOLVED] += p.packets.length;
      }
    }
  }
}
