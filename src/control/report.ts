/**
 * The node's side of the cluster report (see `cluster/report.ts`): builds the payload from the data
 * plane's peer view and its traffic per ServiceIP (pure). Peers beyond {@link MAX_REPORT_PEERS} are
 * cut, the most recently seen kept; ServiceIPs beyond {@link MAX_REPORT_SERVICES}, the busiest kept; strings are clipped to the schema's bounds, so a report a node builds always passes the
 * control plane's checks.
 *
 * @example
 * ```ts
 * const r = buildNodeReport({ version: "1.0", endpoint: "192.0.2.1:50103", instances: 2, uptimeS: 60 }, []);
 * r.peers.length; // 0
 * ```
 */
import type { NodeReport } from "../cluster/report.ts";
import type { PeerView } from "../proxy/peer_watch.ts";
import type { NamedServiceTraffic } from "../proxy/service_counters.ts";

/** How often a node reports (ms). */
export const REPORT_INTERVAL_MS = 5000;
/** Most peers one report may list. */
export const MAX_REPORT_PEERS = 64;
/** Most ServiceIPs / InstanceIPs one report may list (the busiest are kept). */
export const MAX_REPORT_SERVICES = 64;
/** The topic filter the control plane subscribes for reports. */
export const REPORT_TOPIC_FILTER = "nodes/+/netmanager/report";

/** The report topic of node `worker` (outside `nodes/<id>/net/`: Oakestra's cluster manager never sees it). */
export function reportTopic(worker: string): string {
  return `nodes/${worker}/netmanager/report`;
}

/** This node's facts for a report. */
export interface ReportSelf {
  version: string;
  /** `ip:port` of this node's tunnel. */
  endpoint: string;
  instances: number;
  uptimeS: number;
}

const clip = (s: string, max: number) => s.length > max ? s.slice(0, max) : s;
const whole = (n: number) =>
  Number.isFinite(n) && n > 0 ? Math.min(Math.round(n), Number.MAX_SAFE_INTEGER) : 0;

/** The report payload for `self`, its peers and its traffic per ServiceIP. */
export function buildNodeReport(
  self: ReportSelf,
  peers: readonly PeerView[],
  services: readonly NamedServiceTraffic[] = [],
): NodeReport {
  const busiest = [...services].sort((a, b) => (b.txBytes + b.rxBytes) - (a.txBytes + a.rxBytes))
    .slice(0, MAX_REPORT_SERVICES);
  const recent = [...peers].sort((a, b) => (a.lastSeenAgoS ?? Infinity) - (b.lastSeenAgoS ?? Infinity))
    .slice(0, MAX_REPORT_PEERS);
  return {
    v: 1,
    version: clip(self.version, 64),
    endpoint: clip(self.endpoint, 64),
    instances: whole(self.instances),
    uptime_s: whole(self.uptimeS),
    peers: recent.map((p) => ({
      ...(p.node !== undefined ? { node: clip(p.node, 128) } : {}),
      endpoint: clip(p.endpoint, 64),
      mode: clip(p.mode, 32),
      answering: p.answering,
      ...(p.rttMs !== undefined && Number.isFinite(p.rttMs)
        ? { rtt_ms: Math.min(Math.max(0, p.rttMs), 600_000) }
        : {}),
      ...(p.lastSeenAgoS !== undefined ? { last_seen_s: whole(p.lastSeenAgoS) } : {}),
      tx_packets: whole(p.txPackets),
      rx_packets: whole(p.rxPackets),
      drops: whole(p.drops),
      probes_sent: whole(p.probesSent),
      probes_lost: whole(p.probesLost),
    })),
    services: busiest.map((t) => ({
      service: clip(t.service, 256),
      address: clip(t.address, 64),
      kind: clip(t.kind, 16),
      ...(t.instance !== undefined ? { instance: whole(t.instance) } : {}),
      tx_packets: whole(t.txPackets),
      tx_bytes: whole(t.txBytes),
      rx_packets: whole(t.rxPackets),
      rx_bytes: whole(t.rxBytes),
    })),
  };
}
