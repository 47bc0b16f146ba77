/**
 * The control plane's metrics listener (`netmanager control --metrics-addr`): `/metrics` with the
 * cluster's size (nodes, services, instances by state), node reports dropped by cause, the service's broker connection, build
 * info and process metrics; `/healthz` from {@link ControlService.health} (broker and store up).
 *
 * @example
 * ```ts
 * import { startControl } from "./service.ts";
 * const control = await startControl({ stateDir: "/var/lib/netmanager/control" });
 * const m = await startControlMetrics(control, "127.0.0.1:9465");
 * await m.close();
 * ```
 * @module
 */
import type { Registry } from "prom-client";
import { type MetricsServer, startMetricsServer } from "../metrics/http.ts";
import { newRegistry, snapshotCounter, snapshotGauge } from "../metrics/registry.ts";
import type { ControlService } from "./service.ts";
import { isDeployed } from "./state.ts";

/** The control plane's registry, read from `c` at scrape time. */
export function controlRegistry(
  c:
    & Pick<ControlService, "state" | "health">
    & Partial<Pick<ControlService, "reportsDropped" | "relayTotals" | "relayNodes">>,
): Registry {
  const reg = newRegistry("control");
  snapshotGauge(reg, "netmanager_control_nodes", "Nodes registered with the control plane.", [], () => [
    [{}, c.state.nodes().length],
  ]);
  snapshotGauge(reg, "netmanager_control_services", "Services (jobs) known to the control plane.", [], () => [
    [{}, c.state.jobs().length],
  ]);
  snapshotGauge(
    reg,
    "netmanager_control_instances",
    "Instances by state: deployed (running on a node) or scheduled (addresses allocated, not deployed).",
    ["state"],
    () => {
      let deployed = 0;
      let scheduled = 0;
      for (const j of c.state.jobs()) {
        for (const i of j.instance_list) isDeployed(i) ? deployed++ : scheduled++;
      }
      return [[{ state: "deployed" }, deployed], [{ state: "scheduled" }, scheduled]];
    },
  );
  snapshotGauge(
    reg,
    "netmanager_control_ready",
    "1 when the control plane is ready (broker connection up, state saved).",
    [],
    () => [[{}, c.health().ok ? 1 : 0]],
  );
  snapshotCounter(
    reg,
    "netmanager_control_node_reports_dropped_total",
    "Node reports dropped by cause (too_large, not_json, invalid, unknown_node, too_often).",
    ["reason"],
    () => Object.entries(c.reportsDropped ?? {}).map(([reason, n]) => [{ reason }, n] as const),
  );
  // Relay nodes (`RelayCandidate`, src/path/relay_set.ts): one sample per offering node.
  snapshotGauge(
    reg,
    "netmanager_control_relay_node_pairs",
    "Pairs each node offering to relay (RelayCandidate) relays now.",
    ["worker", "address"],
    () => (c.relayNodes?.() ?? []).map((n) => [{ worker: n.worker, address: n.address }, n.pairs] as const),
  );
  // The relay (`--relay`, src/path/relay.ts): absent without one.
  const relay = () => c.relayTotals?.();
  snapshotGauge(
    reg,
    "netmanager_control_relay_allocations",
    "Relay allocations (node pairs relayed) now.",
    [],
    () => {
      const t = relay();
      return t ? [[{}, t.pairs]] : [];
    },
  );
  snapshotCounter(reg, "netmanager_control_relay_packets_total", "Datagrams the relay forwarded.", [], () => {
    const t = relay();
    return t ? [[{}, t.packets]] : [];
  });
  snapshotCounter(
    reg,
    "netmanager_control_relay_bytes_total",
    "UDP payload bytes the relay forwarded.",
    [],
    () => {
      const t = relay();
      return t ? [[{}, t.bytes]] : [];
    },
  );
  snapshotCounter(
    reg,
    "netmanager_control_relay_worker_restarts_total",
    "Times the relay's forwarding Worker failed and was restarted with the allocations.",
    [],
    () => {
      const t = relay();
      return t ? [[{}, t.restarts]] : [];
    },
  );
  snapshotCounter(
    reg,
    "netmanager_control_relay_relocks_total",
    "Times a node's side of an allocation moved to a new source endpoint (NAT restart, roaming).",
    [],
    () => {
      const t = relay();
      return t ? [[{}, t.relocks]] : [];
    },
  );
  snapshotCounter(
    reg,
    "netmanager_control_relay_drops_total",
    "Datagrams the relay dropped: stranger (not the node's locked endpoint), not_locked, peer_not_locked, rate.",
    ["reason"],
    () => Object.entries(relay()?.drops ?? {}).map(([reason, n]) => [{ reason }, n] as const),
  );
  return reg;
}

/** Serves the control plane's `/metrics` and `/healthz` on `address` (`host:port`). */
export function startControlMetrics(
  c:
    & Pick<ControlService, "state" | "health">
    & Partial<Pick<ControlService, "reportsDropped" | "relayTotals" | "relayNodes">>,
  address: string,
): Promise<MetricsServer> {
  return startMetricsServer({ address, registry: controlRegistry(c), health: () => c.health() });
}
