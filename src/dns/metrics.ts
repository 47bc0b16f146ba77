/**
 * The DNS families of the node's Prometheus metrics (queries by type, result and source; cache,
 * upstream and packet counters), read from the running {@link NodeDns} at every scrape. Kept apart
 * from `mod.ts` so that serving names never loads the metrics library.
 *
 * @example
 * ```ts
 * import { Registry } from "prom-client";
 * import type { NodeDns } from "./mod.ts";
 * let dns: NodeDns | undefined;
 * registerDnsMetrics(new Registry(), () => dns);
 * ```
 * @module
 */
import type { Registry } from "prom-client";
import { type Sample, snapshotCounter } from "../metrics/registry.ts";
import type { NodeDns } from "./mod.ts";

/**
 * Registers the DNS families with the node's metrics registry; they are read from `current()` at
 * every scrape (no samples while names are not served).
 */
export function registerDnsMetrics(reg: Registry, current: () => NodeDns | undefined): void {
  const read = (f: (d: NodeDns) => Iterable<Sample>) => () => {
    const d = current();
    return d ? [...f(d)] : [];
  };
  const one = (f: (d: NodeDns) => number) => read((d) => [[{}, f(d)] as Sample]);
  snapshotCounter(
    reg,
    "netmanager_dns_queries_total",
    "Questions answered, by type, result and source.",
    ["type", "rcode", "source"],
    read((d) =>
      [...d.resolver.stats.answered].map(([k, v]) => {
        const [type, rcode, source] = k.split("|");
        return [{ type, rcode, source }, v] as Sample;
      })
    ),
  );
  snapshotCounter(
    reg,
    "netmanager_dns_control_queries_total",
    "Table queries by name or IP caused by DNS misses.",
    [],
    one((d) => d.resolver.stats.controlQueries),
  );
  snapshotCounter(
    reg,
    "netmanager_dns_negative_cache_hits_total",
    "Misses answered from the negative cache.",
    [],
    one((d) => d.resolver.stats.negativeHits),
  );
  snapshotCounter(
    reg,
    "netmanager_dns_upstream_forwarded_total",
    "Questions sent to upstream resolvers.",
    [],
    one((d) => d.upstream.stats.forwarded),
  );
  snapshotCounter(
    reg,
    "netmanager_dns_upstream_cache_hits_total",
    "Forwarded names answered from the cache.",
    [],
    one((d) => d.upstream.stats.cacheHits),
  );
  snapshotCounter(
    reg,
    "netmanager_dns_upstream_failures_total",
    "Forwarded names no upstream answered.",
    [],
    one((d) => d.upstream.stats.failures),
  );
  snapshotCounter(
    reg,
    "netmanager_dns_upstream_latency_seconds_total",
    "Upstream round trips, total seconds (divide by netmanager_dns_upstream_round_trips_total).",
    [],
    one((d) => d.upstream.stats.latencyMsSum / 1000),
  );
  snapshotCounter(
    reg,
    "netmanager_dns_upstream_round_trips_total",
    "Upstream round trips.",
    [],
    one((d) => d.upstream.stats.latencyCount),
  );
  snapshotCounter(
    reg,
    "netmanager_dns_packets_total",
    "DNS server packets by outcome.",
    ["outcome"],
    read((d) => {
      const s = d.server?.stats;
      if (!s) return [];
      return Object.entries({
        query_udp: s.queriesUdp,
        query_tcp: s.queriesTcp,
        malformed: s.malformed,
        refused_client: s.refusedClients,
        rate_limited: s.rateLimited,
        truncated: s.truncated,
        answer_cache_hit: s.cacheHits,
      }).map(([outcome, v]) => [{ outcome }, v] as Sample);
    }),
  );
  snapshotCounter(
    reg,
    "netmanager_mdns_packets_total",
    "mDNS responder questions and answers.",
    ["outcome"],
    read((d) => {
      const m = d.mdns?.stats;
      if (!m) return [];
      return Object.entries({
        question: m.questions,
        answered: m.answered,
        malformed: m.malformed,
        refused_client: m.refusedClients,
        rate_limited: m.rateLimited,
      }).map(([outcome, v]) => [{ outcome }, v] as Sample);
    }),
  );
}
