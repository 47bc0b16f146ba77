/**
 * The node's Prometheus metrics, exposed by npm `prom-client`: the data plane's families (read
 * from its counter snapshot at scrape time), node state gauges, and the deploy and table-miss
 * latency histograms. Served on the unix socket's `/metrics` and, with `MetricsAddress`, over TCP
 * (see `src/metrics/http.ts`).
 *
 * Families: `netmanager_packets_total` / `netmanager_bytes_total` {direction = tun_rx | tun_tx |
 * udp_rx | udp_tx}, `netmanager_drops_total` {reason}, `netmanager_jumbo_messages_total`
 * {direction}, `netmanager_routes_rejected_total` {reason}, gauges `netmanager_parked_packets`,
 * `netmanager_flows`, `netmanager_table_entries`, `netmanager_peers`, per peer {node (when known),
 * endpoint}: `netmanager_peer_rtt_seconds`, `netmanager_peer_fast`, `netmanager_peer_packets_total` /
 * `netmanager_peer_bytes_total` {direction = tx | rx}, `netmanager_peer_drops_total`,
 * `netmanager_peer_probes_sent_total`, `netmanager_peer_probes_lost_total`, `netmanager_peer_up`
 * (0 while marked down; 1 otherwise, also for a peer whose liveness is unknown — an Oakestra Go node
 * answers no probes — which `netmanager_peer_liveness_known` 0 tells apart), `netmanager_peer_down_total`, `netmanager_peer_secure`; secure
 * tunnel per peer {endpoint}: `netmanager_peer_cert_expiry_timestamp_seconds` {subject},
 * `netmanager_peer_handshake_age_seconds`, `netmanager_peer_rekeys_total`, `netmanager_peer_endpoint_changes_total`, `netmanager_peer_handshake_duration_seconds`,
 * `netmanager_peer_secure_drops_total` {reason};
 * `netmanager_service_choices_total` {service_ip, instance_ip}: new flows per ServiceIP by the chosen
 * instance's namespace IP (at most 4096 pairs per worker, then `other`);
 * per ServiceIP / InstanceIP
 * {service (job name), address, service_instance (InstanceIPs), direction = tx | rx}:
 * `netmanager_service_packets_total`, `netmanager_service_bytes_total`; node state:
 * `netmanager_registered`, `netmanager_cluster_connected`, `netmanager_data_plane_running`,
 * `netmanager_instances`; histograms `netmanager_deploy_duration_seconds` {kind, result} and
 * `netmanager_table_miss_duration_seconds` {result}; plus `netmanager_build_info` and the process
 * metrics.
 *
 * @example
 * ```ts
 * const m = new NodeMetrics({
 *   dataPlane: () => undefined,
 *   registered: () => false,
 *   clusterConnected: () => undefined,
 *   instances: () => 0,
 * });
 * const text = await m.text(); // build info, state gauges, process metrics
 * ```
 * @module
 */
import type { Histogram, Registry } from "prom-client";
import { Histogram as PromHistogram } from "prom-client";
import { newRegistry, type Sample, snapshotCounter, snapshotGauge } from "../metrics/registry.ts";
import type { NamedServiceTraffic } from "./service_counters.ts";

/** A packet and byte count. */
export interface PacketCount {
  /** Packets. */
  readonly packets: number;
  /** Bytes. */
  readonly bytes: number;
}

/** One peer's figures (the shape `PeerTable.stats()` returns). */
export interface PeerMetrics {
  /** Node key `"ip:port"` / `"[ip6]:port"`. */
  readonly endpoint: string;
  /** Node (worker) id, when known. */
  readonly node?: string;
  /** Smoothed RTT in ms, when known. */
  readonly rttMs?: number;
  /** FAST mode on towards this peer. */
  readonly fast: boolean;
  /** Packets sent to it. */
  readonly txPackets: number;
  /** Bytes sent to it. */
  readonly txBytes: number;
  /** Packets received from it. */
  readonly rxPackets: number;
  /** Bytes received from it. */
  readonly rxBytes: number;
  /** Packets to/from it dropped. */
  readonly drops: number;
  /** PROBEs sent. */
  readonly probesSent: number;
  /** PROBEs lost. */
  readonly probesLost: number;
  /** Liveness (`up` / `down` while probed, else `unknown`). */
  readonly health?: "up" | "down" | "unknown";
  /** Reached through a punched NAT mapping. */
  readonly punched?: boolean;
  /** Dialled at this relay endpoint (`endpoint` is then the relay's), for the peer at `relayFor`. */
  readonly via?: string;
  readonly relayFor?: string;
  /** Times marked down. */
  readonly downCount?: number;
  /** Outer path MTU in use towards it (src/path/pmtu.ts). */
  readonly mtu?: number;
}

/** The data plane's figures, summed over workers. */
export interface DataPlaneMetrics {
  /** Read from the TUN. */
  readonly tunRx: PacketCount;
  /** Written to the TUN. */
  readonly tunTx: PacketCount;
  /** Received from peers over UDP. */
  readonly udpRx: PacketCount;
  /** Sent to peers over UDP. */
  readonly udpTx: PacketCount;
  /** Dropped packets by reason (label value), in output order. */
  readonly drops: Readonly<Record<string, number>>;
  /** Packets parked now, waiting for a table answer. */
  readonly parkedPackets: number;
  /** Active flows. */
  readonly flows: number;
  /** Translation table entries. */
  readonly tableEntries: number;
  /** Peers. */
  readonly peers: readonly PeerMetrics[];
  /** Per ServiceIP / InstanceIP traffic, named (see service_counters.ts). */
  readonly services?: readonly NamedServiceTraffic[];
  /** JUMBO messages (whole TCP super-packets) sent and received. */
  readonly jumbo?: { readonly tx: number; readonly rx: number };
  /** New flows per `"<service ip> <instance ns ip>"`, cumulative. */
  readonly choices?: Readonly<Record<string, number>>;
  /** Table-query results and entries the control plane refused, by cause (see control/route_check.ts). */
  readonly routesRejected?: Readonly<Record<string, number>>;
  /** Secure-tunnel state of the peers that completed a handshake or were refused (src/secure/secure_driver.ts). */
  readonly securePeers?: readonly {
    readonly endpoint: string;
    readonly state: "secure" | "refused";
    readonly subject?: string;
    /** Unix seconds. */
    readonly certNotAfter?: number;
    readonly lastHandshakeAgeSeconds?: number;
    readonly rekeys?: number;
    /** Duration of the last handshake this node initiated with the peer. */
    readonly handshakeSeconds?: number;
    /** Times its session followed it to another endpoint (roaming, NAT rebinding). */
    readonly endpointChanges?: number;
  }[];
  /** Secure-tunnel drops per peer endpoint and reason (replayed, forged, plain from a secure peer). */
  readonly securePeerDrops?: Readonly<Record<string, Readonly<Record<string, number>>>>;
}

/** Where {@link NodeMetrics} reads the node's state at scrape time. */
export interface NodeMetricsSource {
  /** The data plane's figures, or undefined while it is not running. */
  dataPlane(): DataPlaneMetrics | undefined;
  /** Registered (a worker id is set). */
  registered(): boolean;
  /** Connected to the cluster's broker; undefined when there is no cluster connection (standalone). */
  clusterConnected(): boolean | undefined;
  /** Instances deployed on this node. */
  instances(): number;
  /** The kernel fast path's counters (src/kfast/), when it runs: into (tx) and out of (rx) its device. */
  kernelPath?(): { tx: PacketCount; rx: PacketCount } | undefined;
}

function peerLabels(p: PeerMetrics, extra?: Record<string, string>): Record<string, string> {
  return { ...(p.node !== undefined ? { node: p.node } : {}), endpoint: p.endpoint, ...extra };
}

const DIRECTIONS = ["tun_rx", "tun_tx", "udp_rx", "udp_tx"] as const;

/** Latency buckets (seconds) for deploys: namespace and veth set-up takes tens of milliseconds. */
const DEPLOY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Latency buckets (seconds) for table misses: one MQTT round trip to the cluster. */
const MISS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** The node's metrics registry. See the module documentation. */
export class NodeMetrics {
  /** The prom-client registry (served as is). */
  readonly registry: Registry;
  /** Deploy latency {kind = container | unikernel, result = ok | error}. */
  readonly deploySeconds: Histogram<"kind" | "result">;
  /** Table-miss latency: asking the cluster for an unknown address {result = found | not_found}. */
  readonly tableMissSeconds: Histogram<"result">;

  /** Creates the registry reading from `src`. */
  constructor(src: NodeMetricsSource) {
    const reg = newRegistry("node");
    this.registry = reg;
    const dp = () => src.dataPlane();
    const each = <T>(f: (m: DataPlaneMetrics) => Iterable<T>): T[] => {
      const m = dp();
      return m ? [...f(m)] : [];
    };
    const one = (f: (m: DataPlaneMetrics) => number): Sample[] => each((m) => [[{}, f(m)] as Sample]);

    snapshotCounter(
      reg,
      "netmanager_packets_total",
      "Packets handled by the data plane, by direction.",
      ["direction"],
      () => each((m) => DIRECTIONS.map((d) => [{ direction: d }, pc(m, d).packets] as Sample)),
    );
    snapshotCounter(
      reg,
      "netmanager_bytes_total",
      "Bytes handled by the data plane, by direction.",
      ["direction"],
      () => each((m) => DIRECTIONS.map((d) => [{ direction: d }, pc(m, d).bytes] as Sample)),
    );
    const kp = (f: (c: PacketCount) => number): Sample[] => {
      const k = src.kernelPath?.();
      return k ? [[{ direction: "tx" }, f(k.tx)] as Sample, [{ direction: "rx" }, f(k.rx)] as Sample] : [];
    };
    snapshotCounter(
      reg,
      "netmanager_kernel_path_packets_total",
      "Packets the kernel fast path carried (KernelFastPath), into (tx) and out of (rx) its device.",
      ["direction"],
      () => kp((c) => c.packets),
    );
    snapshotCounter(
      reg,
      "netmanager_kernel_path_bytes_total",
      "Bytes the kernel fast path carried (KernelFastPath), into (tx) and out of (rx) its device.",
      ["direction"],
      () => kp((c) => c.bytes),
    );
    snapshotCounter(
      reg,
      "netmanager_drops_total",
      "Packets dropped, by reason.",
      ["reason"],
      () => each((m) => Object.entries(m.drops).map(([reason, v]) => [{ reason }, v] as Sample)),
    );
    snapshotCounter(
      reg,
      "netmanager_jumbo_messages_total",
      "TCP super-packets carried as one JUMBO message.",
      ["direction"],
      () =>
        each((m) =>
          m.jumbo
            ? [[{ direction: "tx" }, m.jumbo.tx] as Sample, [{ direction: "rx" }, m.jumbo.rx] as Sample]
            : []
        ),
    );
    snapshotCounter(
      reg,
      "netmanager_routes_rejected_total",
      "Table-query results and entries refused before reaching the data plane, by reason.",
      ["reason"],
      () =>
        each((m) => Object.entries(m.routesRejected ?? {}).map(([reason, v]) => [{ reason }, v] as Sample)),
    );
    const svcLabels = (s: NamedServiceTraffic, direction: string): Record<string, string> => ({
      service: s.service,
      address: s.address,
      ...(s.instance !== undefined ? { service_instance: String(s.instance) } : {}),
      direction,
    });
    const SL = ["service", "address", "service_instance", "direction"];
    snapshotCounter(
      reg,
      "netmanager_service_packets_total",
      "Packets local instances sent to a ServiceIP or InstanceIP (tx) and received from one (rx).",
      SL,
      () =>
        each((m) =>
          (m.services ?? []).flatMap((s) => [
            [svcLabels(s, "tx"), s.txPackets] as Sample,
            [svcLabels(s, "rx"), s.rxPackets] as Sample,
          ])
        ),
    );
    snapshotCounter(
      reg,
      "netmanager_service_bytes_total",
      "Bytes (IP packets) local instances sent to a ServiceIP or InstanceIP (tx) and received from one (rx).",
      SL,
      () =>
        each((m) =>
          (m.services ?? []).flatMap((s) => [
            [svcLabels(s, "tx"), s.txBytes] as Sample,
            [svcLabels(s, "rx"), s.rxBytes] as Sample,
          ])
        ),
    );
    snapshotGauge(
      reg,
      "netmanager_parked_packets",
      "Packets parked waiting for a table answer.",
      [],
      () => one((m) => m.parkedPackets),
    );
    snapshotGauge(
      reg,
      "netmanager_flows",
      "Active flows in the conversion cache.",
      [],
      () => one((m) => m.flows),
    );
    snapshotGauge(
      reg,
      "netmanager_table_entries",
      "Entries in the translation table.",
      [],
      () => one((m) => m.tableEntries),
    );
    snapshotGauge(reg, "netmanager_peers", "Known peer nodes.", [], () => one((m) => m.peers.length));

    const peers = <T>(f: (p: PeerMetrics) => Iterable<T>): T[] =>
      each((m) => m.peers.flatMap((p) => [...f(p)]));
    const PL = ["node", "endpoint"];
    const PLD = ["node", "endpoint", "direction"];
    snapshotGauge(
      reg,
      "netmanager_peer_rtt_seconds",
      "Smoothed round-trip time to a peer node.",
      PL,
      () => peers((p) => p.rttMs !== undefined ? [[peerLabels(p), p.rttMs / 1000] as Sample] : []),
    );
    const secureOf = (m: DataPlaneMetrics, endpoint: string) =>
      m.securePeers?.find((s) => s.endpoint === endpoint);
    snapshotGauge(
      reg,
      "netmanager_peer_secure",
      "1 when the tunnel to a peer node is sealed (secure session), 0 when raw or refused.",
      PL,
      () =>
        each((m) =>
          m.peers.map((p) => [peerLabels(p), secureOf(m, p.endpoint)?.state === "secure" ? 1 : 0] as Sample)
        ),
    );
    const secure = <T>(f: (s: NonNullable<DataPlaneMetrics["securePeers"]>[number]) => T[]): T[] =>
      each((m) => (m.securePeers ?? []).flatMap(f));
    snapshotGauge(
      reg,
      "netmanager_peer_cert_expiry_timestamp_seconds",
      "When the certificate a peer node proved expires (Unix time), by subject.",
      ["endpoint", "subject"],
      () =>
        secure((s) =>
          s.certNotAfter !== undefined
            ? [[{ endpoint: s.endpoint, subject: s.subject ?? "" }, s.certNotAfter] as Sample]
            : []
        ),
    );
    snapshotGauge(
      reg,
      "netmanager_peer_handshake_age_seconds",
      "Seconds since the last completed handshake with a peer node.",
      ["endpoint"],
      () =>
        secure((s) =>
          s.lastHandshakeAgeSeconds !== undefined
            ? [[{ endpoint: s.endpoint }, s.lastHandshakeAgeSeconds] as Sample]
            : []
        ),
    );
    snapshotCounter(
      reg,
      "netmanager_peer_rekeys_total",
      "Handshakes completed with a peer node after the first.",
      ["endpoint"],
      () => secure((s) => s.rekeys !== undefined ? [[{ endpoint: s.endpoint }, s.rekeys] as Sample] : []),
    );
    snapshotGauge(
      reg,
      "netmanager_peer_handshake_duration_seconds",
      "Duration of the last handshake this node initiated with a peer node (first HS_INIT sent to keys installed).",
      ["endpoint"],
      () =>
        secure((s) =>
          s.handshakeSeconds !== undefined ? [[{ endpoint: s.endpoint }, s.handshakeSeconds] as Sample] : []
        ),
    );
    snapshotCounter(
      reg,
      "netmanager_peer_endpoint_changes_total",
      "Times a peer node's secure session followed it to another endpoint (a datagram that authenticated came from there: roaming, NAT rebinding).",
      ["endpoint"],
      () =>
        secure((s) =>
          s.endpointChanges !== undefined ? [[{ endpoint: s.endpoint }, s.endpointChanges] as Sample] : []
        ),
    );
    snapshotCounter(
      reg,
      "netmanager_peer_secure_drops_total",
      "Secure-tunnel datagrams from a peer node dropped, by reason (secure_replay, secure_auth, secure_expired, secure_plain_from_secure_peer).",
      ["endpoint", "reason"],
      () =>
        each((m) =>
          Object.entries(m.securePeerDrops ?? {}).flatMap(([endpoint, d]) =>
            Object.entries(d).map(([reason, n]) => [{ endpoint, reason }, n] as Sample)
          )
        ),
    );
    snapshotGauge(
      reg,
      "netmanager_peer_fast",
      "1 when FAST mode is on towards a peer node.",
      PL,
      () => peers((p) => [[peerLabels(p), p.fast ? 1 : 0] as Sample]),
    );
    snapshotCounter(
      reg,
      "netmanager_peer_packets_total",
      "Packets exchanged with a peer node, by direction.",
      PLD,
      () =>
        peers((p) => [
          [peerLabels(p, { direction: "tx" }), p.txPackets] as Sample,
          [peerLabels(p, { direction: "rx" }), p.rxPackets] as Sample,
        ]),
    );
    snapshotCounter(
      reg,
      "netmanager_peer_bytes_total",
      "Bytes exchanged with a peer node, by direction.",
      PLD,
      () =>
        peers((p) => [
          [peerLabels(p, { direction: "tx" }), p.txBytes] as Sample,
          [peerLabels(p, { direction: "rx" }), p.rxBytes] as Sample,
        ]),
    );
    snapshotCounter(
      reg,
      "netmanager_peer_drops_total",
      "Packets to or from a peer node that were dropped.",
      PL,
      () => peers((p) => [[peerLabels(p), p.drops] as Sample]),
    );
    snapshotCounter(
      reg,
      "netmanager_peer_probes_sent_total",
      "RTT probes sent to a peer node.",
      PL,
      () => peers((p) => [[peerLabels(p), p.probesSent] as Sample]),
    );
    snapshotCounter(
      reg,
      "netmanager_peer_probes_lost_total",
      "RTT probes to a peer node that went unanswered.",
      PL,
      () => peers((p) => [[peerLabels(p), p.probesLost] as Sample]),
    );
    snapshotGauge(
      reg,
      "netmanager_peer_up",
      "0 while a peer node is marked down (no answer to probes); 1 otherwise, also when its liveness is unknown.",
      PL,
      () => peers((p) => [[peerLabels(p), p.health === "down" ? 0 : 1] as Sample]),
    );
    snapshotGauge(
      reg,
      "netmanager_peer_liveness_known",
      "1 when a peer node answers probes (its liveness is judged); 0 for one that never did (e.g. an Oakestra Go node).",
      PL,
      () => peers((p) => [[peerLabels(p), p.health === "up" || p.health === "down" ? 1 : 0] as Sample]),
    );
    snapshotCounter(
      reg,
      "netmanager_peer_down_total",
      "Times a peer node was marked down.",
      PL,
      () => peers((p) => [[peerLabels(p), p.downCount ?? 0] as Sample]),
    );
    snapshotCounter(
      reg,
      "netmanager_service_choices_total",
      "New flows to a ServiceIP, by the instance (namespace IP) the balancer chose.",
      ["service_ip", "instance_ip"],
      () =>
        each((m) =>
          Object.entries(m.choices ?? {}).map(([k, n]) => {
            const [service_ip, instance_ip] = k.split(" ");
            return [{ service_ip, instance_ip }, n] as Sample;
          })
        ),
    );
    snapshotGauge(
      reg,
      "netmanager_peer_path",
      "1 per peer node and how it is reached: path direct | punched | relayed (via: the relay endpoint dialled).",
      ["node", "endpoint", "path", "via"],
      () =>
        peers((p) => [[{
          ...(p.node !== undefined ? { node: p.node } : {}),
          endpoint: p.relayFor ?? p.endpoint,
          path: p.via !== undefined ? "relayed" : p.punched ? "punched" : "direct",
          via: p.via ?? "",
        }, 1] as Sample]),
    );
    snapshotGauge(
      reg,
      "netmanager_peer_path_mtu_bytes",
      "Path MTU towards a peer node (outer IP packet bytes), probed in-band; 1500 until measured.",
      PL,
      () => peers((p) => p.mtu === undefined ? [] : [[peerLabels(p), p.mtu] as Sample]),
    );

    snapshotGauge(
      reg,
      "netmanager_registered",
      "1 when the node is registered (has a worker id).",
      [],
      () => [[{}, src.registered() ? 1 : 0]],
    );
    snapshotGauge(
      reg,
      "netmanager_cluster_connected",
      "1 while connected to the cluster's MQTT broker (absent without a cluster connection).",
      [],
      () => {
        const c = src.clusterConnected();
        return c === undefined ? [] : [[{}, c ? 1 : 0]];
      },
    );
    snapshotGauge(
      reg,
      "netmanager_data_plane_running",
      "1 while the data plane forwards packets.",
      [],
      () => [[{}, dp() ? 1 : 0]],
    );
    snapshotGauge(
      reg,
      "netmanager_instances",
      "Instances deployed on this node.",
      [],
      () => [[{}, src.instances()]],
    );

    this.deploySeconds = new PromHistogram({
      name: "netmanager_deploy_duration_seconds",
      help: "Time to set up an instance's networking (deploy request to answer).",
      labelNames: ["kind", "result"] as const,
      buckets: DEPLOY_BUCKETS,
      registers: [reg],
    });
    this.tableMissSeconds = new PromHistogram({
      name: "netmanager_table_miss_duration_seconds",
      help: "Time to resolve an address missing from the table by asking the cluster.",
      labelNames: ["result"] as const,
      buckets: MISS_BUCKETS,
      registers: [reg],
    });
  }

  /** The exposition text. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Content type of {@link NodeMetrics.text}. */
  get contentType(): string {
    return this.registry.contentType;
  }
}

function pc(m: DataPlaneMetrics, d: typeof DIRECTIONS[number]): PacketCount {
  return d === "tun_rx" ? m.tunRx : d === "tun_tx" ? m.tunTx : d === "udp_rx" ? m.udpRx : m.udpTx;
}
