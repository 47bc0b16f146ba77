/**
 * The picture of the cluster the web page shows (`GET /api/net/cluster`), built from the state, the
 * nodes' latest reports and the broker's connections. Pure.
 *
 * A peer in a report is matched to a node by its tunnel endpoint (what the node itself reports, or
 * where its instances run according to the control plane), else by the worker id the peer gave in
 * its HELLO when that is a registered node; peers that match no node (an Oakestra Go node that never
 * reports, a stranger) keep their endpoint as `to` and `known: false`.
 *
 * @example
 * ```ts
 * import { ClusterState } from "./state.ts";
 * import { ReportStore } from "./report.ts";
 * const v = clusterView(new ClusterState(), new ReportStore(), () => undefined, Date.now());
 * v.nodes.length; // 0
 * ```
 */
import type { ClusterState } from "./state.ts";
import { REPORT_INTERVAL_MS, type ReportStore } from "./report.ts";
import { closestAddresses, rrAddresses } from "./state.ts";

/** A node as the page shows it. */
export interface ViewNode {
  worker_id: string;
  subnet: string;
  subnet_v6: string;
  /** Tunnel endpoint `ip:port` (from its report, else where its instances run), or null. */
  endpoint: string | null;
  /** Address the broker sees its MQTT connection from (embedded broker only), or null. */
  observed: string | null;
  /** Its tunnel endpoint as the reflector saw it (src/path/reflector.ts), or null. */
  tunnel_observed?: string | null;
  /** The reflector saw another endpoint than it announces: it is behind NAT (null: unknown). */
  behind_nat?: boolean | null;
  /** Connected to the broker: the embedded broker knows; with an external one, a report in the last 3 periods. */
  connected: boolean;
  /** Version from its report, or null. */
  version: string | null;
  /** Instances it runs (its report), or null. */
  instances: number | null;
  /** Seconds since its last report, or null (no report: an Oakestra Go node never sends one). */
  last_seen_s: number | null;
}

/** Traffic local instances of all reporting nodes sent to (tx) and received from (rx) addresses. */
export interface ViewTraffic {
  tx_packets: number;
  tx_bytes: number;
  rx_packets: number;
  rx_bytes: number;
}

/** An instance of a service. */
export interface ViewInstance {
  instance_number: number;
  instance_ip: string;
  instance_ip_v6: string;
  namespace_ip: string | null;
  namespace_ip_v6: string | null;
  worker_id: string | null;
  host: string | null;
  status: string;
  /** Traffic to and from its InstanceIPs (v4 and v6), summed over the nodes' reports. */
  traffic: ViewTraffic;
}

/** A service (job) with its addresses and instances. */
export interface ViewService {
  _id: string;
  job_name: string;
  rr_ip: string;
  rr_ip_v6: string;
  /** "" when the service has no Closest ServiceIP. */
  closest_ip: string;
  closest_ip_v6: string;
  /** Traffic to and from its ServiceIPs and InstanceIPs, summed over the nodes' reports. */
  traffic: ViewTraffic;
  instances: ViewInstance[];
}

/** What node `from` measured towards a peer. */
export interface ViewLink {
  from: string;
  /** The peer's worker id when `known`, else its endpoint. */
  to: string;
  known: boolean;
  endpoint: string;
  mode: string;
  answering: boolean;
  rtt_ms: number | null;
  last_seen_s: number | null;
  tx_packets: number;
  rx_packets: number;
  drops: number;
  probes_sent: number;
  probes_lost: number;
}

/** The whole picture. */
export interface ClusterView {
  generated_at: string;
  report_interval_s: number;
  nodes: ViewNode[];
  services: ViewService[];
  links: ViewLink[];
}

/** Where the broker sees worker `w` connected from (`ip:port`), undefined when not connected. */
export type ConnectionOf = (worker: string) => { remote: string } | undefined;

/**
 * Builds the view. `connection` is the embedded broker's view of a node's connection, or undefined
 * with an external broker (then "connected" means a fresh report).
 */
export function clusterView(
  state: ClusterState,
  reports: ReportStore,
  connection: ConnectionOf | undefined,
  now: number,
  tunnelObserved?: (worker: string) => { ip: string; port: number } | undefined,
): ClusterView {
  const endpointOwner = new Map<string, string>();
  const hostOf = new Map<string, string>();
  for (const job of state.jobs()) {
    for (const i of job.instance_list) {
      if (i.worker_id && i.host_ip && i.host_port) {
        const ep = endpointText(i.host_ip, i.host_port);
        hostOf.set(i.worker_id, ep);
        endpointOwner.set(ep, i.worker_id);
      }
    }
  }
  const registered = new Set(state.nodes().map((n) => n.worker_id));
  for (const w of registered) {
    const r = reports.get(w);
    if (r && r.report.endpoint) endpointOwner.set(r.report.endpoint, w);
  }
  const nodes: ViewNode[] = state.nodes().map((n) => {
    const r = reports.get(n.worker_id);
    const age = r ? Math.max(0, Math.round((now - r.at) / 1000)) : null;
    const conn = connection?.(n.worker_id);
    const fresh = age !== null && age * 1000 <= 3 * REPORT_INTERVAL_MS;
    return {
      worker_id: n.worker_id,
      subnet: n.subnet,
      subnet_v6: n.subnet_v6,
      endpoint: r?.report.endpoint || hostOf.get(n.worker_id) || null,
      observed: conn?.remote ?? null,
      ...tunnelFields(r?.report.endpoint || hostOf.get(n.worker_id) || null, tunnelObserved?.(n.worker_id)),
      connected: connection ? conn !== undefined : fresh,
      version: r?.report.version ?? null,
      instances: r?.report.instances ?? null,
      last_seen_s: age,
    };
  });
  const links: ViewLink[] = [];
  for (const n of nodes) {
    const r = reports.get(n.worker_id);
    if (!r) continue;
    for (const p of r.report.peers) {
      const owner = endpointOwner.get(p.endpoint) ??
        (p.node !== undefined && registered.has(p.node) ? p.node : undefined);
      links.push({
        from: n.worker_id,
        to: owner ?? p.endpoint,
        known: owner !== undefined,
        endpoint: p.endpoint,
        mode: p.mode,
        answering: p.answering,
        rtt_ms: p.rtt_ms ?? null,
        last_seen_s: p.last_seen_s ?? null,
        tx_packets: p.tx_packets,
        rx_packets: p.rx_packets,
        drops: p.drops,
        probes_sent: p.probes_sent,
        probes_lost: p.probes_lost,
      });
    }
  }
  // Traffic by address over the registered nodes' reports.
  const byAddress = new Map<string, ViewTraffic>();
  for (const w of registered) {
    for (const t of reports.get(w)?.report.services ?? []) {
      const had = byAddress.get(t.address) ?? zeroTraffic();
      had.tx_packets += t.tx_packets;
      had.tx_bytes += t.tx_bytes;
      had.rx_packets += t.rx_packets;
      had.rx_bytes += t.rx_bytes;
      byAddress.set(t.address, had);
    }
  }
  const trafficOf = (addrs: readonly string[]): ViewTraffic => {
    const sum = zeroTraffic();
    for (const a of new Set(addrs)) {
      const t = a ? byAddress.get(a) : undefined;
      if (!t) continue;
      sum.tx_packets += t.tx_packets;
      sum.tx_bytes += t.tx_bytes;
      sum.rx_packets += t.rx_packets;
      sum.rx_bytes += t.rx_bytes;
    }
    return sum;
  };
  const services: ViewService[] = state.jobs().map((job) => {
    const rr = rrAddresses(job);
    const closest = closestAddresses(job);
    const instanceIps = job.instance_list.flatMap((i) => [i.instance_ip, i.instance_ip_v6]);
    return {
      _id: job._id,
      job_name: job.job_name,
      rr_ip: rr.rr_ip,
      rr_ip_v6: rr.rr_ip_v6,
      ...closest,
      traffic: trafficOf([
        rr.rr_ip,
        rr.rr_ip_v6,
        closest.closest_ip,
        closest.closest_ip_v6,
        ...instanceIps,
      ]),
      instances: job.instance_list.map((i) => ({
        instance_number: i.instance_number,
        instance_ip: i.instance_ip,
        instance_ip_v6: i.instance_ip_v6,
        namespace_ip: i.namespace_ip ?? null,
        namespace_ip_v6: i.namespace_ip_v6 ?? null,
        worker_id: i.worker_id ?? null,
        host: i.host_ip && i.host_port ? endpointText(i.host_ip, i.host_port) : null,
        status: i.status ?? (i.worker_id ? "deployed" : "allocated"),
        traffic: trafficOf([i.instance_ip, i.instance_ip_v6]),
      })),
    };
  });
  return {
    generated_at: new Date(now).toISOString(),
    report_interval_s: REPORT_INTERVAL_MS / 1000,
    nodes,
    services,
    links,
  };
}

function zeroTraffic(): ViewTraffic {
  return { tx_packets: 0, tx_bytes: 0, rx_packets: 0, rx_bytes: 0 };
}

function tunnelFields(
  announced: string | null,
  seen: { ip: string; port: number } | undefined,
): { tunnel_observed: string | null; behind_nat: boolean | null } {
  if (seen === undefined) return { tunnel_observed: null, behind_nat: null };
  const t = endpointText(seen.ip, seen.port);
  return { tunnel_observed: t, behind_nat: announced === null ? null : announced !== t };
}

function endpointText(ip: string, port: number): string {
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}
